"""The model families we run, one module each (``emo.py``, ``hallo.py``, ``echomimic.py``, ...).

Each module defines ``FAMILY`` (a :class:`~emo_model.families.base.Family`): its named configs and preset,
the quirks of its original inference code, how its files are recognised and where they come from. This
package collects them; generic code asks it and never names a family. Adding a family = one module here
(listed in :data:`MODULES`) plus its parity fixtures, tests and docs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache
from typing import Any

from ..configs import EMOConfig
from .base import Family, OriginalCode, ParityHarness, PartFiles, SpeechEmotionFiles

# The emotion choice that classifies the driving audio with the family's own audio-emotion classifier.
AUTO_EMOTION = "auto"

# Order matters where two families share a network (the first one's name is what the tensors alone say).
MODULES = ("emo", "hallo", "hallo2", "v_express", "echomimic_v2", "echomimic", "memo")

__all__ = ["AUTO_EMOTION", "CONFIGS", "FAMILIES", "Family", "OriginalCode", "ParityHarness", "PartFiles", "SpeechEmotionFiles",
           "emotion_class", "emotion_names",
           "family_of", "get_config", "get_family", "published_labels", "quoted_presets", "supported_files",
           "upgrade_config_dict"]


@lru_cache(maxsize=1)
def _families() -> tuple[Family, ...]:
    return tuple(importlib.import_module(f"{__name__}.{m}").FAMILY for m in MODULES)


class _Configs(Mapping):
    """name -> config factory, over every family's named configs (read on first use)."""

    @staticmethod
    @lru_cache(maxsize=1)
    def _all() -> dict[str, Callable[[], EMOConfig]]:
        out: dict[str, Callable[[], EMOConfig]] = {}
        for fam in _families():
            for name, factory in fam.configs.items():
                if name in out:
                    raise RuntimeError(f"config name {name!r} is defined by two families")
                out[name] = factory
        return out

    def __getitem__(self, key: str) -> Callable[[], EMOConfig]:
        return self._all()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


CONFIGS: Mapping[str, Callable[[], EMOConfig]] = _Configs()


class _Families:
    def __iter__(self) -> Iterator[Family]:
        return iter(_families())

    def __len__(self) -> int:
        return len(_families())


FAMILIES = _Families()


def get_config(name: str) -> EMOConfig:
    try:
        factory = CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown config {name!r}; choose one of {sorted(CONFIGS)}") from None
    return factory()


def get_family(name: str) -> Family:
    """The family named ``name`` (the value of ``EMOConfig.family``)."""
    for fam in _families():
        if fam.name == name:
            return fam
    raise KeyError(f"unknown family {name!r}; choose one of {[f.name for f in _families()]}")


def family_of(config: EMOConfig) -> Family | None:
    """The family a config belongs to (None for a family this version does not know)."""
    return next((f for f in _families() if f.name == config.family), None)


def upgrade_config_dict(data: dict[str, Any]) -> dict[str, Any]:
    """Config JSON written before a field rename, with the fields under their current names (in place)."""
    for fam in _families():
        for old, new in fam.renamed_config_fields.items():
            *parents, old_key = old.split(".")
            *new_parents, new_key = new.split(".")
            node = data
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and old_key in node and parents == new_parents:
                node.setdefault(new_key, node.pop(old_key))
    return data


def supported_files() -> str:
    """What every family loads from, in one phrase (each family's ``files``)."""
    kinds = list(dict.fromkeys(fam.files for fam in _families()))
    return ", ".join(kinds[:-1]) + " or " + kinds[-1] if len(kinds) > 1 else kinds[0]


def published_labels() -> str:
    """'Hallo, EchoMimic v1': the families whose original weights are published."""
    return ", ".join(fam.label for fam in _families() if fam.original is not None)


def quoted_presets(field: Callable[[EMOConfig], Any], values: bool = True) -> str:
    """'EMO 30, Hallo 25, EchoMimic 24, demo 25': a preset value per quoted config, for widget tooltips.

    ``field`` returns None where a config has no such value (skipped); ``values=False`` lists the family labels
    of the configs with a value instead."""
    parts = []
    for fam in _families():
        seen = []
        for name, label in fam.quoted_configs.items():
            value = field(get_config(name))
            if value is None or value in seen:  # a variant with the family's value says nothing new
                continue
            seen.append(value)
            if not values:
                parts.append(fam.label)
            else:
                parts.append(f"{label} {value:g}" if isinstance(value, float) else f"{label} {value}")
    return ", ".join(dict.fromkeys(parts))


def emotion_names() -> tuple[str, ...]:
    """Every emotion name some family's emotion audio modules know (the choices of an "emotion" widget)."""
    return tuple(dict.fromkeys(name for fam in _families() for name in fam.emotions))


def emotion_class(config: EMOConfig, choice: str | int) -> int:
    """The class index of an emotion choice (a name of the config's family, or an index) for ``config``.

    Raises ValueError (one line: what, the allowed values) for a model without emotion classes or an unknown choice."""
    classes = config.backbone.emotion_classes if config.backbone.emotion_audio_modules else 0
    fam = family_of(config)
    names = fam.emotions if fam is not None else ()
    if not classes:
        raise ValueError(f"{config.name} has no emotion-conditioned audio modules; leave the emotion choice on the preset")
    text = str(choice).strip().lower()
    if text.isdigit() and int(text) < classes:
        return int(text)
    if text in names:
        return names.index(text)
    allowed = ", ".join(names) if names else "no names"
    raise ValueError(f"emotion {choice!r} is not one of {config.name}'s classes: {allowed} (or an index 0..{classes - 1})")

"""Matching a checkpoint's tensor names and shapes against the known architectures, and reporting the differences by module."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from ..configs import EMOConfig
from ..families import CONFIGS, get_config
from ..network.model import EMOModel
from .files import (
    LDM_UNET_PREFIX,
    _shapes,
)

# EMOModel's sub-modules (the key prefixes of a whole-model state dict).
MODEL_MODULES = ("reference_unet", "denoising_unet", "face_locator", "audioproj", "imageproj", "speed_encoder")


def module_group(key: str) -> str:
    """The module a key is reported under: the sub-model, or one block's motion / audio modules."""
    parts = key.split(".")
    for kind in ("motion_modules", "audio_modules"):
        if kind in parts:
            return ".".join(parts[: parts.index(kind) + 1])
    return parts[0]


@dataclass
class MatchReport:
    """How a checkpoint's tensors (in model naming) line up with a model's state dict."""

    matched: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)  # (file, model)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def errors(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.mismatched)

    def lines(self) -> list[str]:
        """One line per (problem, module group)."""
        out = []
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected), ("wrong shape", list(self.mismatched))):
            groups: dict[str, list[str]] = defaultdict(list)
            for key in keys:
                groups[module_group(key)].append(key)
            for group, members in groups.items():
                shown = [self._describe(k) for k in members[:3]]
                more = f", +{len(members) - 3} more" if len(members) > 3 else ""
                out.append(f"{label} {group}: {len(members)} tensor{'s' if len(members) > 1 else ''} ({', '.join(shown)}{more})")
        return out

    def summary(self, limit: int = 4) -> str:
        lines = self.lines()
        more = f"; and {len(lines) - limit} more groups" if len(lines) > limit else ""
        return "; ".join(lines[:limit]) + more

    def _describe(self, key: str) -> str:
        if key in self.mismatched:
            got, want = self.mismatched[key]
            return f"{key} {list(got)} in the file, {list(want)} in the model"
        return key


def compare_shapes(found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]) -> MatchReport:
    report = MatchReport()
    for key, shape in found.items():
        want = expected.get(key)
        if want is None:
            report.unexpected.append(key)
        elif tuple(want) != tuple(shape):
            report.mismatched[key] = (tuple(shape), tuple(want))
        else:
            report.matched += 1
    report.missing = [key for key in expected if key not in found]
    return report


def model_shapes(config: EMOConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ``EMOModel(config).state_dict()``, from a meta-device build (cached)."""
    return dict(_model_shapes(config.to_json()))


@lru_cache(maxsize=16)
def _model_shapes(config_json: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = EMOModel(EMOConfig.from_json(config_json))
    return _shapes(model.state_dict())


@lru_cache(maxsize=1)
def _architectures() -> tuple[str, ...]:
    """Names of the named configs with distinct architectures (a config that differs only in its preset or family is skipped)."""
    names, seen = [], []
    for name in CONFIGS:
        arch = _architecture(get_config(name))
        if arch not in seen:
            seen.append(arch)
            names.append(name)
    return tuple(names)


def closest_config(found: Mapping[str, tuple[int, ...]]) -> tuple[str, MatchReport]:
    """The named config whose layout equals ``found``, else the one that explains most of it."""
    fits = []
    for name in _architectures():
        report = compare_shapes(found, model_shapes(get_config(name)))
        if report.complete:
            return name, report
        fits.append((name, report))
    return max(fits, key=lambda fit: (fit[1].matched, -fit[1].errors))


# Key prefixes of well-known checkpoints that are not EMO-family models, for clearer errors.
_OTHER_KINDS = (
    ("add_embedding.", "an SDXL UNet"),
    (LDM_UNET_PREFIX, "a Stable Diffusion checkpoint (an SD1.5 one initialises training: load_sd15_unet_weights)"),
    ("decoder.up", "a VAE (load_vae)"),
    ("wav2vec2.", "a wav2vec2 audio encoder"),
    ("encoder.blocks.", "a whisper audio encoder"),
)


def _looks_like(keys: Iterable[str]) -> str:
    """ "; it looks like <what>" for checkpoints of well-known other kinds, else ""."""
    keys = list(keys)
    return next((f"; it looks like {what}" for prefix, what in _OTHER_KINDS if any(k.startswith(prefix) for k in keys)), "")


def _architecture(config: EMOConfig) -> EMOConfig:
    return dataclasses.replace(config, name="", family="", preset=None)

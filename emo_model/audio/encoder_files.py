"""Reading an audio encoder's files: a folder or one file, its config, its state dict matched strictly to the model."""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .signal import AudioError

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _locate(path: Path, what: str) -> tuple[Path, Path | None]:
    """(weights file, HF folder or None) for a folder or a single file."""
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise AudioError(f"'{path}' has no config.json; a {what} folder needs config.json and weights.")
        for name in _WEIGHT_FILES:
            if (path / name).is_file():
                return path / name, path
        raise AudioError(f"'{path}' has no weights; expected one of {', '.join(_WEIGHT_FILES)}.")
    if path.is_file():
        return path, None
    raise AudioError(f"{what} checkpoint not found: '{path}'. Put it in models/audio_encoders/ or pass its path.")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AudioError(f"could not read '{path}' as JSON ({exc}).") from exc


def _read_config(config_class, path: Path):
    """A transformers config from ``path``, refusing files written for another architecture."""
    data = _read_json(path)
    model_type = data.get("model_type", config_class.model_type)
    if model_type != config_class.model_type:
        raise AudioError(f"'{path}' describes a {model_type} model, not {config_class.model_type}.")
    return config_class.from_dict(data)


def _instantiate(model_class: type[nn.Module], config, convert, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Build ``model_class(config)`` on the meta device (no random init) and adopt the checkpoint's tensors."""
    with torch.device("meta"):
        model = model_class(config)
    model.load_state_dict(convert(state_dict, model), assign=True)
    return model


def _read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], Mapping | None]:
    """(tensors, OpenAI whisper ``dims`` or None) from a safetensors file or a tensors-only pickle."""
    if path.suffix == ".safetensors":
        try:
            return load_file(path), None
        except (SafetensorError, OSError) as exc:
            raise AudioError(f"'{path.name}' is not a readable safetensors file ({exc}).") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise AudioError(
            f"refused to load '{path.name}': it holds Python objects other than tensors, which could run code. "
            "Use a .safetensors file or a plain state dict."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise AudioError(f"'{path.name}' is not a readable PyTorch checkpoint ({exc}).") from exc
    dims = obj.get("dims") if isinstance(obj, Mapping) else None
    for key in ("model_state_dict", "state_dict"):
        if isinstance(obj, Mapping) and key in obj:
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise AudioError(f"'{path.name}' is not a state dict of tensors.")
    return dict(obj), dims


def _under(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The keys under ``prefix`` with it removed, if any key has it; otherwise everything unchanged."""
    if not any(key.startswith(prefix) for key in state_dict):
        return dict(state_dict)
    return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}


def _match(state_dict: dict[str, torch.Tensor], model: nn.Module, what: str) -> dict[str, torch.Tensor]:
    """Check keys and shapes against ``model`` and raise one AudioError naming every difference."""
    expected = model.state_dict()
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    wrong = [
        f"{key} {tuple(state_dict[key].shape)} != {tuple(expected[key].shape)}"
        for key in sorted(expected.keys() & state_dict.keys())
        if state_dict[key].shape != expected[key].shape
    ]
    if missing or unexpected or wrong:
        parts = [
            f"{label} ({len(keys)}): {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        ]
        raise AudioError(f"the {what} checkpoint does not fit the architecture; " + "; ".join(parts))
    return state_dict

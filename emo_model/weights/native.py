"""The native checkpoint format: one .safetensors with the model's tensors and its config in the metadata."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from ..network.model import EMOModel

NATIVE_FORMAT_VERSION = 1


FORMAT_VERSION_KEY = "emo_format_version"
DISTILL_TEACHER_KEY = "emo_distill_teacher"  # a distilled student's teacher (file name), written by train --stage distill


CONFIG_KEY = "emo_config"


PRESET_KEY = "emo_preset"


VAE_CONFIG_KEY = "emo_vae_config"


VAE_PREFIX = "vae."


_RESERVED_METADATA = {"format", FORMAT_VERSION_KEY, CONFIG_KEY, PRESET_KEY, VAE_CONFIG_KEY}


def save_native(
    model: EMOModel,
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    metadata: Mapping[str, str] | None = None,
    vae: AutoencoderKL | None = None,
) -> Path:
    """Write ``model`` (and optionally the ``vae`` it was trained with) as one native ``.safetensors``.

    ``dtype`` converts floating-point tensors (None keeps them); ``metadata`` adds string entries
    (the reserved keys are ours). The file is written next to ``path`` and renamed into place, so an
    interrupted save never leaves a half-written checkpoint. Format: see the module docstring.
    """
    path = Path(path)
    extra = dict(metadata or {})
    clash = _RESERVED_METADATA & extra.keys()
    if clash:
        raise ValueError(f"metadata keys {sorted(clash)} are reserved for the native format")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        raise ValueError("safetensors metadata must map strings to strings")
    state = dict(model.state_dict())
    if vae is not None:
        state.update({VAE_PREFIX + k: v for k, v in vae.state_dict().items()})
    tensors = {}
    for key, tensor in state.items():
        if tensor.is_meta:
            raise ValueError(f"{key} is on the meta device; load or initialise the model before saving")
        convert = dtype is not None and tensor.is_floating_point()
        tensors[key] = tensor.to(device="cpu", dtype=dtype if convert else None).contiguous()  # no copy if already so
    header = {
        "format": "pt",
        FORMAT_VERSION_KEY: str(NATIVE_FORMAT_VERSION),
        CONFIG_KEY: model.config.to_json(),
        PRESET_KEY: model.config.name,
        **({VAE_CONFIG_KEY: vae.to_json_string()} if vae is not None else {}),
        **extra,
    }
    partial = path.with_name(f".{path.name}.partial")
    try:
        save_file(tensors, str(partial), metadata=header)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def native_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a ``.safetensors`` file's header ({} for anything else, or a header that cannot be read)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return {}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, RuntimeError):
        return {}

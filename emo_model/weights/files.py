"""Reading weight files safely: safetensors, or torch.load(weights_only=True) of pickles; nothing in a file runs code."""

from __future__ import annotations

import itertools
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
LDM_UNET_PREFIX = "model.diffusion_model."  # the UNet inside a single-file Stable Diffusion checkpoint


class WeightsError(ValueError):
    """A checkpoint cannot be used as asked. The message (one line) says why and what to do."""


@dataclass(eq=False)
class TensorFile:
    """The tensors of one checkpoint file, memory-mapped: nothing is read until a tensor's data is used.

    Tests build these from meta tensors (``torch.empty(shape, device="meta")``) to run full-size
    layouts through the same detection and loading code as real files.
    """

    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The file name; a diffusers model folder's weights are named with their folder (``unet/diffusion_pytorch_model...``)."""
        if self.path.name in DIFFUSERS_WEIGHTS and self.path.parent.name:
            return f"{self.path.parent.name}/{self.path.name}"
        return self.path.name


CheckpointInput = str | os.PathLike | TensorFile


def open_tensors(path: str | os.PathLike) -> TensorFile:
    """Open one checkpoint file (safetensors metadata included). Raises :class:`WeightsError`."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot be read ({exc.strerror})") from None
    if path.suffix.lower() == ".safetensors" or head[8:9] == b"{":  # u64 header length, then the JSON header
        return _open_safetensors(path)
    return _open_pickle(path)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of one file (memory-mapped), wrappers removed. Raises :class:`WeightsError`."""
    return open_tensors(path).tensors


def _open_safetensors(path: Path) -> TensorFile:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except (SafetensorError, OSError) as exc:
        raise WeightsError(
            f"{path}: not a readable safetensors file ({exc}); it is truncated or damaged, download it again"
        ) from None
    return TensorFile(path, tensors, metadata)


def _open_pickle(path: Path) -> TensorFile:
    try:
        if zipfile.is_zipfile(path):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        else:  # legacy format (or damaged): cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            raise WeightsError(
                f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)}); it is truncated or damaged"
            ) from None
        raise WeightsError(_unsafe_pickle_message(path, exc)) from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, IndexError, struct.error) as exc:  # damaged bytes
        raise WeightsError(
            f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)}); it is truncated or damaged"
        ) from None
    return TensorFile(path, _unwrap_state_dict(path, obj))


def _unsafe_pickle_message(path: Path, exc: Exception) -> str:
    found = re.search(r"GLOBAL (\S+)", str(exc))
    needs = f"the Python object {found.group(1)}" if found else "Python objects other than tensors"
    return (
        f"{path} refused: rebuilding it needs {needs}, so loading it would execute code stored in the file. "
        "If you trust its source, load it once in a trusted environment with a full unpickler (weights_only "
        "off), save its tensors with safetensors.torch.save_file and use that .safetensors file"
    )


def _unwrap_state_dict(path: Path, obj: object) -> dict[str, torch.Tensor]:
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in ("state_dict", "module", "model") if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightsError(f"{path}: not a state dict of tensors (entry {key!r} is a {type(value).__name__})")
    return dict(obj)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _shapes(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(t.shape) for key, t in tensors.items()}


def _materialise(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    """A copy of a (memory-mapped) tensor in fresh memory on ``device``, floating point in ``dtype`` if given."""
    return tensor.to(device=device, dtype=dtype if dtype is not None and tensor.is_floating_point() else None, copy=True)


DIFFUSERS_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
)


def _assert_materialised(module: torch.nn.Module) -> None:
    left = [n for n, t in itertools.chain(module.named_parameters(), module.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"{len(left)} tensors were left on the meta device after loading, e.g. {left[:3]}")

"""Helpers shared by the parity harnesses (no project code and no original code here).

The harnesses run inside an ORIGINAL repository's venv (its pinned diffusers / transformers), so this
module only needs torch and numpy. It is never imported by ``emo_model``.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import sys
import types

import numpy as np
import torch


def stub_xformers() -> None:
    """The originals import xformers at module level but use it only when explicitly enabled."""
    if "xformers" in sys.modules:
        return
    import diffusers  # noqa: F401  (import first: it probes for xformers with find_spec)

    x = types.ModuleType("xformers")
    x.__spec__ = importlib.machinery.ModuleSpec("xformers", None)
    x.ops = types.ModuleType("xformers.ops")
    sys.modules["xformers"] = x
    sys.modules["xformers.ops"] = x.ops


def patch_checkpoint() -> None:
    """torch>=2.4 wants ``use_reentrant`` spelled out; the originals call checkpoint() without it.
    Under no_grad the forward values are the same either way (checkpoint only changes backward)."""
    import torch.utils.checkpoint as cp

    orig = cp.checkpoint

    def checkpoint(fn, *args, use_reentrant=None, **kw):
        return orig(fn, *args, use_reentrant=False if use_reentrant is None else use_reentrant, **kw)

    cp.checkpoint = checkpoint


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int, scale: float = 1.0) -> None:
    """Every parameter random (zero-initialised layers too, so every branch contributes).
    >=2-D: N(0, scale^2 / fan_in); 1-D '*weight' (norm scales): 1 + 0.1 N; 1-D bias: 0.05 N. Buffers untouched."""
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=g) * (scale / fan_in**0.5))
        elif name.endswith("weight"):
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.05 * torch.randn(p.shape, generator=g))


def hash_uniform(count: int, seed: int) -> np.ndarray:
    """``count`` values uniform in [-1, 1) from a counter hash (splitmix64 of ``seed`` and the index).

    Independent of any library's random generator, so a test can regenerate the exact same weights
    instead of storing them (see :func:`hashed_state_dict`)."""
    with np.errstate(over="ignore"):
        z = np.arange(count, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 52) - 1.0


def hashed_tensors(spec: list[tuple[str, list[int]]], seed: int):
    """Yields ``(name, fp32 tensor)`` for ``[(name, shape), ...]`` one at a time: >=2-D uniform with variance
    1/fan_in, 1-D names ending in 'weight' 1 + 0.1 u, other 1-D 0.05 u; tensor k uses seed ``seed * 100003 + k``."""
    for k, (name, shape) in enumerate(spec):
        n = int(np.prod(shape)) if shape else 1
        u = hash_uniform(n, seed * 100003 + k)
        if len(shape) >= 2:
            v = u * np.sqrt(3.0 / (n // shape[0]))
        elif name.endswith("weight"):
            v = 1 + 0.1 * u
        else:
            v = 0.05 * u
        yield name, torch.from_numpy(v.astype(np.float32)).reshape(shape)


def hashed_state_dict(spec: list[tuple[str, list[int]]], seed: int) -> dict[str, torch.Tensor]:
    """All of :func:`hashed_tensors` as a dict."""
    return dict(hashed_tensors(spec, seed))


def digest(tensors) -> str:
    """sha256 over the names and fp32 bytes, in order (proves two sides hold the same weights).
    ``tensors``: a dict, or an iterable of ``(name, tensor)`` pairs (read one at a time)."""
    h = hashlib.sha256()
    for name, t in tensors.items() if isinstance(tensors, dict) else tensors:
        h.update(name.encode())
        h.update(t.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def write_hashed_safetensors(path: str, spec: list[tuple[str, list[int]]], seed: int) -> str:
    """Writes :func:`hashed_state_dict` of ``spec`` as an fp32 safetensors file one tensor at a time (a full-size
    UNet never sits in memory twice) and returns its :func:`digest`."""
    import json
    import struct

    header, offset = {}, 0
    for name, shape in spec:
        size = 4 * (int(np.prod(shape)) if shape else 1)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    h = hashlib.sha256()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for name, t in hashed_tensors(spec, seed):
            data = t.numpy().tobytes()
            h.update(name.encode())
            h.update(data)
            fh.write(data)
    return h.hexdigest()


# ---- added for the Hallo harness ------------------------------------------------------------------


class _Dummy:
    """Stands in for any class / function of a stubbed package; fails loudly if actually called."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, item):
        return _Dummy(f"{self._name}.{item}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"stubbed {self._name} was called: the parity harness must inject this component")

    def __mro_entries__(self, bases):  # allows `class X(stubbed.Base)`
        return (object,)


class _StubModule(types.ModuleType):
    def __getattr__(self, item):
        if item.startswith("__"):
            raise AttributeError(item)
        return _Dummy(f"{self.__name__}.{item}")


class _StubFinder(importlib.machinery.PathFinder):
    roots: set = set()

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname.split(".")[0] in cls.roots:
            return importlib.machinery.ModuleSpec(fullname, _StubLoader(), is_package=True)
        return None


class _StubLoader:
    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def stub_packages(*roots: str) -> list[str]:
    """Make ``import root`` / ``from root.x import Y`` succeed for packages that are not installed and whose
    components the harness injects instead (face detection, video IO, vocal separation). Returns the stubbed roots."""
    import importlib.util

    missing = [r for r in roots if importlib.util.find_spec(r) is None]
    if missing:
        _StubFinder.roots |= set(missing)
        if _StubFinder not in sys.meta_path:
            sys.meta_path.insert(0, _StubFinder)
    return missing


def package_versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = "not installed"
    return out


def synthetic_speech(num_samples: int, sample_rate: int = 16000) -> np.ndarray:
    """A closed-form voiced signal (float32): harmonics of a gliding 110-190 Hz pitch under a syllable-rate
    envelope, with pauses. No random generator, so a test can make the same waveform instead of storing it."""
    t = np.arange(num_samples, dtype=np.float64) / sample_rate
    pitch = 150 + 40 * np.sin(2 * np.pi * 0.7 * t) * np.cos(2 * np.pi * 0.13 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voiced = sum(np.sin(k * phase + 0.3 * k) / k for k in range(1, 16))
    syllables = np.clip(np.sin(2 * np.pi * 3.1 * t) * np.sin(2 * np.pi * 0.37 * t + 1.0), 0, None)
    hiss = 0.05 * np.sin(2 * np.pi * 3700 * t + 5 * np.sin(2 * np.pi * 91 * t))
    return (0.4 * syllables * voiced + hiss * (syllables > 0.5)).astype(np.float32)

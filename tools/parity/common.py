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


# ---- shared by the EchoMimic harnesses (v1: echomimic_original.py, v2: echomimic_v2_original.py) -----------------


def patch_reference_control(control_cls, bank_dtype=None) -> None:
    """EchoMimic's ``ReferenceAttentionControl`` on a CPU: its CFG mask built on the CPU (``register_reference_hooks``
    defaults to cuda) and, with ``bank_dtype`` (a callable giving the dtype of the run under way), the reference bank
    kept in that dtype instead of ``update``'s own cast to fp16."""
    hooks = control_cls.register_reference_hooks
    hooks.__defaults__ = tuple(torch.device("cpu") if isinstance(d, torch.device) else d for d in hooks.__defaults__)
    if bank_dtype is None:
        return
    update = control_cls.update

    def update_in_run_dtype(self, writer, do_classifier_free_guidance=False, dtype=torch.float16):
        return update(self, writer, do_classifier_free_guidance=do_classifier_free_guidance, dtype=bank_dtype())

    control_cls.update = update_in_run_dtype


class _NotOnTheCpu:
    """``torch`` as whisper's ``transcribe`` module sees it, except that ``torch.device("cpu")`` matches no model: it
    then keeps its default fp16 (``decode_options fp16=True``), as on the GPU the originals' scripts use, instead of
    falling back to fp32 on a CPU."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def device(*a, **kw):
        return "not-the-cpu"


def whisper_as_on_a_gpu(module: str = "src.models.whisper.whisper.transcribe") -> None:
    """Whisper's ``transcribe`` (EchoMimic's copy, imported) runs in half as on a GPU (:class:`_NotOnTheCpu`)."""
    sys.modules[module].torch = _NotOnTheCpu()  # the module (its package exports the function)


def write_part_files(parts: dict, seed_base: int, work: str | None):
    """The model's files in the originals' ``.pth`` format (``torch.save`` of a dict): ``parts`` is file name ->
    (module, which of its state-dict keys the file holds); file i's parameters are :func:`hashed_state_dict` with seed
    ``seed_base + i``, its other tensors (buffers) the module's own. Each module is loaded with its files' values. Writes
    to ``work`` (None: nothing written, no digests). Returns (per file: seed, keys with their source, sha256; the buffers
    as ``"<file>:<key>"``)."""
    import os

    file_specs, buffers, loaded = {}, {}, {id(m): set() for m, _ in parts.values()}
    for i, (fname, (module, keep)) in enumerate(parts.items()):  # one file at a time (full size: ~3 GB each)
        params = dict(module.named_parameters())
        state = {k: v for k, v in module.state_dict().items() if keep(k)}
        spec = [(k, list(v.shape)) for k, v in state.items() if k in params]
        seed = seed_base + i
        values = hashed_state_dict(spec, seed)
        for k, v in state.items():
            if k not in params:
                buffers[fname + ":" + k] = v.contiguous().clone()
        sd = {k: values[k] if k in values else v.clone() for k, v in state.items()}  # the file's key order
        file_specs[fname] = {"seed": seed,
                             "keys": [[k, list(v.shape), "hash" if k in values else "buffer"] for k, v in state.items()],
                             "sha256": "" if work is None else digest(sd)}
        if work is not None:
            torch.save(sd, os.path.join(work, fname))
        module.load_state_dict(sd, strict=False)
        loaded[id(module)] |= set(sd)
        del sd, values, state
    for module, _ in parts.values():
        assert loaded[id(module)] == set(module.state_dict()), "the files do not cover the module"
    return file_specs, buffers


def save_or_check_assets(out_dir: str, assets: str | None, buffers: dict, vae) -> None:
    """The fixture's buffers.safetensors and vae/ written to ``out_dir``, or, with ``assets`` (another fixture of the
    same weights), checked to be what this run would write: a shared file must not drift."""
    import os

    from diffusers import AutoencoderKL
    from safetensors.torch import load_file, save_file

    if not assets:
        save_file(buffers, os.path.join(out_dir, "buffers.safetensors"))
        vae.save_pretrained(os.path.join(out_dir, "vae"), safe_serialization=True)
        return
    theirs = load_file(os.path.join(assets, "buffers.safetensors"))
    vae_theirs = AutoencoderKL.from_pretrained(os.path.join(assets, "vae")).state_dict()
    if set(theirs) != set(buffers) or any(not torch.equal(theirs[k], buffers[k]) for k in buffers) or any(
            not torch.equal(v, vae_theirs[k]) for k, v in vae.state_dict().items()):
        raise SystemExit(f"--assets {assets}: its buffers / vae differ from this run's (another --seed?)")


def tiny_whisper(dims_cls, whisper_cls, seed: int, full: bool = False):
    """EchoMimic's whisper copy at width 384 (whisper-tiny's; ``audio2feature`` reshapes to 384), 2 blocks (full: 4
    blocks of 6 heads, whisper-tiny's encoder) with :func:`hashed_state_dict` weights: (dims, key/shape spec, state)."""
    dims = dims_cls(n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6 if full else 2,
                    n_audio_layer=4 if full else 2, n_vocab=16, n_text_ctx=8, n_text_state=8, n_text_head=1, n_text_layer=1)
    spec = [(k, list(v.shape)) for k, v in whisper_cls(dims).state_dict().items()]
    return dims, spec, hashed_state_dict(spec, seed)

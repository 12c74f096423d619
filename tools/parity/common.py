"""Helpers shared by the parity harnesses (run in an ORIGINAL repository's venv; never imported by emo_model).

No original code lives here: the harnesses import the originals from a checkout given on the command line.
"""
from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import sys
import types

import torch


def stub_xformers() -> None:
    """The originals import xformers at module level but only use it when explicitly enabled."""
    if "xformers" in sys.modules:
        return
    import diffusers  # noqa: F401  (import first: it probes for xformers with find_spec)

    x = types.ModuleType("xformers")
    x.__spec__ = importlib.machinery.ModuleSpec("xformers", None)
    x.ops = types.ModuleType("xformers.ops")
    sys.modules["xformers"] = x
    sys.modules["xformers.ops"] = x.ops


class _Dummy:
    """Stands in for any class / function of a stubbed package; fails loudly if actually used."""

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


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots: set[str]):
        self.roots = roots

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def stub_packages(*roots: str) -> None:
    """Make ``import root`` / ``from root.x import Y`` succeed for packages the harness does not use
    (face detection, video IO, vocal separation): the components they provide are injected instead."""
    missing = set()
    for root in roots:
        try:
            __import__(root)
        except Exception:  # noqa: BLE001  (not installed or broken: stub it)
            sys.modules.pop(root, None)
            missing.add(root)
    if missing:
        sys.meta_path.insert(0, _StubFinder(missing))


def patch_checkpoint() -> None:
    """torch>=2.4 wants use_reentrant spelled out; the originals call checkpoint() without it.
    Under no_grad the forward values are the same either way (checkpointing only changes backward)."""
    import torch.utils.checkpoint as cp

    orig = cp.checkpoint
    if getattr(orig, "_parity_patched", False):
        return

    def checkpoint(fn, *args, use_reentrant=None, **kw):
        return orig(fn, *args, use_reentrant=False if use_reentrant is None else use_reentrant, **kw)

    checkpoint._parity_patched = True
    cp.checkpoint = checkpoint
    torch.utils.checkpoint.checkpoint = checkpoint


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int, scale: float = 1.0) -> None:
    """Every parameter random, zero-initialised layers too, so every branch contributes.
    >=2-D: scale * N(0, 1/fan_in); 1-D '*weight' (norm scales): 1 + 0.1 N; 1-D bias: 0.05 N. Buffers untouched."""
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            fan_in = p[0].numel()
            p.copy_(scale * torch.randn(p.shape, generator=g) / fan_in**0.5)
        elif name.endswith("weight"):
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.05 * torch.randn(p.shape, generator=g))


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package_versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = "not installed"
    return out

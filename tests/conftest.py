"""Shared test helpers: repo paths, tiny models with "trained-looking" weights, seeds."""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"  # everything a test reads lives in the repo (tests/data/README.md)
LAYOUTS = DATA / "checkpoint_layouts"  # *.json.gz
# A subprocess's timeout in a test only catches a hang: far above any run on a loaded 2-core machine, never a speed
# limit (speed is measured by `emo bench` and docs/performance.md, not asserted by a test).
HANG_GUARD_S = 3600

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# an explicit OMP_NUM_THREADS wins (`make mutate` sets 1: its workers fork after the tests were collected, and a
# child forked from a process whose OpenMP team had started hangs in its first parallel op)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, min(2, os.cpu_count() or 1)))


def perturb_zero_inits(model: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Give every all-zero parameter small random values.

    Several layers start at zero so that adding them to a trained network changes nothing (temporal
    ``proj_out``, speed attention output, Face Locator ``conv_out``, Hallo's zero convs). Behavioural
    tests need them "trained", otherwise those layers are invisible.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() and not p.is_meta and bool((p == 0).all()):
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def bare_run(**attrs):
    """A clip-loop run (``clip_loop._Run``) without its set-up: only ``attrs``, for unit tests of its pieces."""
    from emo_model.sampling.clip_loop import _Run

    run = _Run.__new__(_Run)
    run.__dict__.update(attrs)
    return run


def tiny_vae(seed: int = 0):
    """A small random diffusers AutoencoderKL with SD's interface (4 latent channels, /8)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
    ).eval()


def read_gz_json_text(path: Path) -> str:
    """The text of a gzipped JSON data file in tests/data."""
    return gzip.decompress(path.read_bytes()).decode("utf-8")


@pytest.fixture(scope="session")
def layouts_dir(tmp_path_factory) -> Path:
    """A folder of the checkpoint layout JSONs (unpacked from tests/data/checkpoint_layouts/*.json.gz)."""
    packed = sorted(LAYOUTS.glob("*.json.gz"))
    assert packed, f"no checkpoint layouts in {LAYOUTS}"
    out = tmp_path_factory.mktemp("checkpoint_layouts")
    for path in packed:
        (out / path.name.removesuffix(".gz")).write_text(read_gz_json_text(path))
    return out


def parity_common():
    """tools/parity/common.py (numpy + torch only): the recipe that generated the parity fixtures' weights."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("parity_common", ROOT / "tools" / "parity" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rel_err(ours: torch.Tensor, original: torch.Tensor) -> tuple[float, float]:
    """(max abs, ||ours - original|| / ||original||) in float64, for the parity tests."""
    a, b = ours.detach().double().cpu(), original.detach().double().cpu()
    assert a.shape == b.shape, f"shape {tuple(a.shape)} vs original {tuple(b.shape)}"
    d = a - b
    return float(d.abs().max()), float(d.norm() / b.norm().clamp_min(1e-30))


def png_header_only(path, width: int, height: int):
    """A PNG whose header declares ``width`` x ``height`` but holds almost no pixel data (a decompression-bomb
    stand-in: readers must refuse it from the header, before decoding)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path

"""Frames in: IMAGE batches / arrays to even-sized ``uint8``, and the exact frame rate.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np

try:  # torch is optional for this module (numpy input works without it)
    import torch
except ImportError:  # pragma: no cover - torch is always present in ComfyUI
    torch = None

from .formats import VideoError

_NTSC_BASES = (24, 30, 48, 60, 120)


def _fps_fraction(fps: float | Fraction) -> Fraction:
    if isinstance(fps, Fraction):
        rate = fps
    else:
        try:
            f = float(fps)
        except (TypeError, ValueError):
            raise VideoError(f"fps must be a number, got {fps!r}") from None
        if not math.isfinite(f) or f <= 0:
            raise VideoError(f"fps must be a positive finite number, got {fps!r}")
        rate = None
        for base in _NTSC_BASES:
            ntsc = Fraction(base * 1000, 1001)
            if abs(f - float(ntsc)) < 0.002:
                rate = ntsc
                break
        if rate is None:
            rate = Fraction(f).limit_denominator(1001)
    if rate <= 0:
        raise VideoError(f"fps must be positive, got {fps!r}")
    return rate


def _to_uint8_frames(frames: Any) -> np.ndarray:
    """Whole batch -> contiguous uint8 ``[N,H,W,3]`` in one vectorised step."""
    if torch is not None and isinstance(frames, torch.Tensor):
        t = frames.detach()
        if t.is_meta:
            raise VideoError("frames are on the 'meta' device (a shape without values); give real frames")
        if t.dtype != torch.uint8:
            if not t.is_floating_point():
                raise VideoError(
                    f"integer frames must be uint8 (0..255), got {str(t.dtype).removeprefix('torch.')}; "
                    "float frames are expected in 0..1"
                )
            if t.dtype != torch.float32 and t.dtype != torch.float64:
                t = t.float()  # half / bfloat16 cannot hold x * 255 + 0.5 exactly (8 bits of mantissa in bf16)
            # round-half-up after clamping; done on the tensor's own device so
            # a GPU batch crosses the bus as uint8 (4x less than float32).
            t = (t.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)
        arr = t.cpu().numpy()
    else:
        arr = np.asarray(frames)
        if arr.dtype != np.uint8:
            if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
                raise VideoError(f"frames must be numeric, got dtype {arr.dtype}")
            if np.issubdtype(arr.dtype, np.integer):
                raise VideoError(
                    f"integer frames must be uint8 (0..255), got {arr.dtype}; "
                    "float frames are expected in 0..1"
                )
            arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise VideoError(f"frames must be [N,H,W,C] (or [H,W,C]), got shape {tuple(arr.shape)}")
    c = arr.shape[-1]
    if c == 4:
        arr = arr[..., :3]
    elif c == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif c != 3:
        raise VideoError(
            f"frames must be channels-last with 1, 3 or 4 channels, got shape {tuple(arr.shape)}"
        )
    return np.ascontiguousarray(arr)


def _pad_even(arr: np.ndarray) -> np.ndarray:
    ph, pw = arr.shape[1] % 2, arr.shape[2] % 2
    if ph or pw:
        arr = np.pad(arr, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return arr



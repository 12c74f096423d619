"""Colour matching of generated clips to the reference portrait, against drift over long videos.

Long generations slowly drift in colour (each clip conditions on the previous one). Matching every
clip to the portrait's colour statistics in CIE Lab removes the drift. Statistics are taken over the
whole clip, not per frame, so every frame of a clip gets the same correction and nothing flickers.

* ``none``: off.
* ``mean``: shift the clip's Lab mean onto the portrait's.
* ``reinhard``: shift and scale the Lab mean and standard deviation (Reinhard et al. 2001).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

MODES = ("none", "mean", "reinhard")


def _lab(images: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] float32 RGB 0..1 -> Lab (OpenCV's float convention: L 0..100)."""
    n, h, w, _ = images.shape
    return cv2.cvtColor(np.ascontiguousarray(images.reshape(n * h, w, 3)), cv2.COLOR_RGB2Lab).reshape(n, h, w, 3)


def _rgb(lab: np.ndarray) -> np.ndarray:
    n, h, w, _ = lab.shape
    return cv2.cvtColor(np.ascontiguousarray(lab.reshape(n * h, w, 3)), cv2.COLOR_Lab2RGB).reshape(n, h, w, 3)


def colour_stats(image: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lab mean and standard deviation of [H, W, 3] or [N, H, W, 3] RGB 0..1 images."""
    arr = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
    lab = _lab(arr[None] if arr.ndim == 3 else arr).reshape(-1, 3)
    return lab.mean(0), lab.std(0)


def match_colours(frames: torch.Tensor, reference_stats: tuple[np.ndarray, np.ndarray], mode: str) -> torch.Tensor:
    """Correct a clip [N, H, W, 3] (float 0..1, CPU) towards the reference statistics."""
    if mode == "none":
        return frames
    if mode not in MODES:
        raise ValueError(f"colour match must be one of {MODES}, got {mode!r}")
    lab = _lab(frames.float().numpy())
    mean, std = lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0)
    ref_mean, ref_std = reference_stats
    if mode == "reinhard":
        lab = (lab - mean) * (ref_std / np.maximum(std, 1e-3)) + ref_mean
    else:
        lab = lab - mean + ref_mean
    return torch.from_numpy(np.clip(_rgb(lab.astype(np.float32)), 0.0, 1.0))

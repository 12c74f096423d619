"""Images in, as float RGB: any of numpy / torch / PIL-like arrays, checked for size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .boxes import FaceError

#: Images smaller than this on either side are rejected (no detector works
#: there and the model would be fed an upscaled smear).
MIN_IMAGE_SIDE = 64




def to_rgb_float(image: Any) -> np.ndarray:
    """Any supported portrait -> ``H x W x 3`` float32 RGB in ``[0, 1]``.

    Accepts numpy arrays or torch tensors (detached and moved to the CPU) of
    shape ``HxW``, ``HxWx1`` (grey), ``HxWx2`` (grey + alpha), ``HxWx3``
    (RGB), ``HxWx4`` (RGBA), a leading batch dimension of 1, or channels-first
    ``CxHxW`` when the last axis is clearly not channels.  Integer images are
    divided by their type's maximum (uint8: 255, uint16: 65535); float images
    are taken as 0..1 unless their maximum exceeds 2, in which case they are
    taken as 0..255.  NaN becomes 0.  Alpha is composited over white (a
    transparent background reads as a plain studio backdrop).
    """
    arr = image
    if hasattr(arr, "detach") and hasattr(arr, "cpu"):  # torch.Tensor, without importing torch
        arr = arr.detach().cpu()
        if str(getattr(arr, "dtype", "")) in ("torch.bfloat16", "torch.float16"):
            arr = arr.float()
        arr = arr.numpy()
    arr = np.asarray(arr)
    if arr.dtype == object or arr.size == 0:
        raise FaceError(f"expected an image array, got dtype={arr.dtype} shape={arr.shape}")
    while arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[-1] not in (1, 2, 3, 4) and arr.shape[0] in (1, 2, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise FaceError(
            f"expected an image shaped HxW, HxWx1, HxWx3 or HxWx4 (one frame), got shape {tuple(arr.shape)}"
        )

    if arr.dtype == np.bool_:
        out = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.integer):
        if arr.dtype == np.uint8:
            div = 255.0
        elif arr.dtype == np.uint16:
            div = 65535.0
        else:
            div = 255.0 if arr.max(initial=0) <= 255 else float(np.iinfo(arr.dtype).max)
        out = arr.astype(np.float32) / np.float32(div)
    elif np.issubdtype(arr.dtype, np.floating):
        out = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        if out.size and float(out.max()) > 2.0:
            out = out / np.float32(255.0)
    else:
        raise FaceError(f"unsupported image dtype {arr.dtype}")
    out = np.clip(out, 0.0, 1.0)

    channels = out.shape[-1]
    if channels in (2, 4):
        alpha = out[..., -1:]
        colour = out[..., :-1]
        out = colour * alpha + (1.0 - alpha)
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out, dtype=np.float32)


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def _check_size(h: int, w: int) -> None:
    if h < MIN_IMAGE_SIDE or w < MIN_IMAGE_SIDE:
        raise FaceError(
            f"the portrait is {w}x{h} px; it must be at least {MIN_IMAGE_SIDE} px on each side "
            f"(at least {MIN_IMAGE_SIDE} px is needed to find a face; 512 px or more is recommended)"
        )



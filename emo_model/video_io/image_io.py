"""Reading a portrait file for the command line, as ComfyUI's Load Image does, with bounded memory.

* EXIF orientation is applied (a phone photo taken upright is animated upright).
* The header is read first: images above :data:`~.validation.MAX_IMAGE_PIXELS` (50 MP) are refused
  before any pixel is decoded, except JPEGs, which are decoded at 1/2, 1/4 or 1/8 size (the JPEG
  "draft" mode) so that they need not be decoded whole.
* Decoded images are downscaled to at most :data:`~.validation.WORK_IMAGE_SIDE` (4096) px on the long
  side (the model works on a 512 px crop).
* Images smaller than 64 px on a side, unreadable or truncated files give one :class:`InputError` line.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ..validation import MAX_IMAGE_PIXELS, WORK_IMAGE_SIDE, InputError

MIN_SIDE = 64  # the face detector needs this much (face.MIN_IMAGE_SIDE)


def read_portrait(path: str | os.PathLike, *, max_pixels: int = MAX_IMAGE_PIXELS, work_side: int = WORK_IMAGE_SIDE) -> np.ndarray:
    """An image file -> uint8 [H, W, 3] RGB (or [H, W, 4] RGBA when it has transparency), upright."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"cannot read the image {str(path)!r}: no such file")
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our own limit below, with a clearer message than PIL's bomb error
    try:
        with Image.open(path) as img:
            w, h = img.size
            if img.format == "JPEG" and max(w, h) > work_side:
                f = work_side / max(w, h)  # decode at 1/2..1/8 scale, at least work_side on the long side
                img.draft(img.mode if img.mode in ("RGB", "L") else None, (math.ceil(w * f), math.ceil(h * f)))
                w, h = img.size
            if w * h > max_pixels:
                raise InputError(
                    f"the image {path.name} is {w}x{h} ({w * h / 1e6:.0f} MP), above the limit of {max_pixels / 1e6:.0f} MP; "
                    "downscale it (the model works on a 512 px face crop)"
                )
            if min(w, h) < MIN_SIDE:
                raise InputError(f"the image {path.name} is {w}x{h} px; a portrait needs at least {MIN_SIDE} px on each side (512 or more is best)")
            img.load()
            img = ImageOps.exif_transpose(img)
            img = _to_rgb(img)
            if max(img.size) > work_side:
                img.thumbnail((work_side, work_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
            return np.asarray(img).copy()
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"cannot read the image {str(path)!r}: not an image PIL can decode (use png, jpg or webp)") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated / damaged data
        raise InputError(f"cannot read the image {str(path)!r}: {' '.join(str(exc).split())} (truncated or damaged file)") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _to_rgb(img):
    """Any PIL mode -> RGB, or RGBA when the image has transparency (composited later, over white)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        from PIL import Image

        return Image.fromarray((np.clip(arr / peak, 0, 1) * 255).round().astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        return img.convert("RGBA")
    return img.convert("RGB")

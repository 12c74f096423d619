"""The square crop and face mask made from one face detector box grown by two dilation ratios.

A family whose original crops the portrait around a detector box (MTCNN in the original) names a
:class:`BoxCropRecipe` (its numbers and the original file + commit live in the family module). Given the
detector's boxes ``(x0, y0, x1, y1)`` and their probabilities, :func:`box_crop` computes:

* the box: among boxes with probability above ``min_prob``, the largest (the first of equal ones);
* the face mask, in source pixels: the box rounded half-to-even to whole pixels, grown on every side by
  ``int(side * mask_dilation)`` (rows by the height, columns by the width), 255 inside. The rows and columns
  are cut with Python slice semantics: a grown box that starts above or left of the picture starts from the
  end instead (the original's behaviour, kept: the mask is then empty on that axis or shorter);
* the crop: the box grown by ``int(side * crop_dilation)``, clipped to the picture; of that rectangle the
  square of its shorter side about its (floored) centre, clipped again and trimmed to a square; picture and
  mask cut to it and resized to the model size with OpenCV's bilinear filter;
* no box: the whole picture, uncropped, and a full mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .boxes import FaceError


@dataclass(frozen=True)
class BoxCropRecipe:
    min_prob: float = 0.8  # boxes at or below this probability are ignored
    mask_dilation: float = 0.1  # each side of the mask grows by this fraction of the box side
    crop_dilation: float = 0.5  # each side of the crop rectangle grows by this fraction
    mirrors: str = ""  # the original file(s) + commit this recipe follows


@dataclass
class BoxCrop:
    image: np.ndarray  # the crop resized to the model size (same dtype as given); the whole picture when no box
    mask: np.ndarray  # uint8 0..255 at the same size as image
    box: tuple[int, int, int, int] | None  # the chosen box rounded (x0, y0, x1, y1), source pixels
    square: tuple[int, int, int, int] | None  # the square cut (x0, y0, x1, y1), source pixels


def select_box(boxes, probs, min_prob: float = 0.8) -> np.ndarray | None:
    """The largest box whose probability exceeds ``min_prob`` (the first one among equals); None if none."""
    if boxes is None or probs is None:
        return None
    best, best_area = None, None
    for box, prob in zip(boxes, probs):
        if not prob > min_prob:
            continue
        area = (box[3] - box[1]) * (box[2] - box[0])
        if best is None or area > best_area:
            best, best_area = box, area
    return best


def square_cut(rect, height: int, width: int) -> tuple[int, int, int, int]:
    """The square of the rectangle's shorter side about its floored centre, inside the picture."""
    x0, y0, x1, y1 = (int(v) for v in rect)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    side = min(x1 - x0, y1 - y0)
    sx0 = max(0, (x0 + x1) // 2 - side // 2)
    sy0 = max(0, (y0 + y1) // 2 - side // 2)
    sx1, sy1 = min(width, sx0 + side), min(height, sy0 + side)
    side = min(sx1 - sx0, sy1 - sy0)
    return sx0, sy0, sx0 + side, sy0 + side


def box_crop(picture: np.ndarray, boxes, probs, size: tuple[int, int] | int,
             recipe: BoxCropRecipe = BoxCropRecipe()) -> BoxCrop:
    """``picture`` [H, W, C] (any dtype; resized as given) -> the crop and mask (see the module docstring);
    ``size`` = (height, width) of the model input or one side."""
    picture = np.asarray(picture)
    if picture.ndim != 3:
        raise FaceError(f"expected a picture [H, W, C], got shape {picture.shape}")
    h, w = picture.shape[:2]
    out_h, out_w = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    mask = np.zeros((h, w), np.uint8)
    chosen = select_box(boxes, probs, recipe.min_prob)
    if chosen is None:
        mask[:, :] = 255
        return BoxCrop(picture, mask, None, None)
    x0, y0, x1, y1 = (int(v) for v in np.round(np.asarray(chosen[:4])).astype(int))
    dr, dc = int((y1 - y0) * recipe.mask_dilation), int((x1 - x0) * recipe.mask_dilation)
    mask[y0 - dr:y1 + dr, x0 - dc:x1 + dc] = 255  # Python slices, negative starts included (see above)
    cr, cc = int((y1 - y0) * recipe.crop_dilation), int((x1 - x0) * recipe.crop_dilation)
    rect = (max(0, x0 - cc), max(0, y0 - cr), min(x1 + cc, w), min(y1 + cr, h))
    sx0, sy0, sx1, sy1 = square_cut(rect, h, w)
    image = cv2.resize(picture[sy0:sy1, sx0:sx1], (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(mask[sy0:sy1, sx0:sx1], (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    return BoxCrop(image, mask, (x0, y0, x1, y1), (sx0, sy0, sx1, sy1))

"""Masks from a face box: the face locator's region mask and the region audio modules' soft masks.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .boxes import FaceBox, FaceError


def _box_pixel_range(lo: float, hi: float, n: int) -> tuple[int, int]:
    """Indices i with lo <= i + 0.5 < hi, clipped to [0, n)."""
    a = int(math.ceil(lo - 0.5))
    b = int(math.ceil(hi - 0.5))
    return max(a, 0), min(max(b, 0), n)


def face_region_mask(box: FaceBox, height: int, width: int, expand_ratio: float = 1.0) -> np.ndarray:
    """``height x width`` float32 mask: 1 where the pixel centre lies inside
    ``box`` scaled by ``expand_ratio`` about its centre, 0 elsewhere."""
    if height <= 0 or width <= 0:
        raise FaceError(f"mask size must be positive, got {width}x{height}")
    if expand_ratio <= 0:
        raise FaceError(f"expand_ratio must be > 0, got {expand_ratio}")
    b = box.expanded(expand_ratio)
    mask = np.zeros((int(height), int(width)), np.float32)
    r0, r1 = _box_pixel_range(b.y0, b.y1, int(height))
    c0, c1 = _box_pixel_range(b.x0, b.x1, int(width))
    if r1 > r0 and c1 > c0:
        mask[r0:r1, c0:c1] = 1.0
    return mask


def _soft_ellipse(height: int, width: int, cx: float, cy: float, ax: float, ay: float, sigma: float) -> np.ndarray:
    m = np.zeros((height, width), np.float32)
    if ax > 0 and ay > 0:
        shift = 4  # sub-pixel precision for cv2.ellipse
        k = 1 << shift
        cv2.ellipse(
            m,
            (int(round((cx - 0.5) * k)), int(round((cy - 0.5) * k))),
            (max(1, int(round(ax * k))), max(1, int(round(ay * k)))),
            0.0, 0.0, 360.0, 1.0, -1, cv2.LINE_8, shift,
        )
    if sigma > 0.3:
        m = cv2.GaussianBlur(m, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT)
    return np.clip(m, 0.0, 1.0)


def region_masks(face_box: FaceBox, height: int, width: int) -> np.ndarray:
    """``[3, H, W]`` float32 soft masks: background, face without lips, lips.

    Region audio modules weigh three regions - background/full, face and
    lips - that the originals derive from mediapipe face landmarks.  Without landmarks
    we approximate them from the face box:

    * face = the ellipse inscribed in the box;
    * lips = an ellipse centred horizontally, at 80 % of the box height, with
      semi-axes 25 % of the box width and 12 % of its height (on the
      astronaut test photo this spans the mouth of a Haar box; a box that
      runs lower, e.g. to the chin, puts it a little low on the mouth);
    * edges are Gaussian-blurred (sigma = 4 % of the larger box side);
    * lips is clipped to face, and the channels are
      ``(1 - face, face - lips, lips)`` so they sum to 1 at every pixel.
    """
    height, width = int(height), int(width)
    if height <= 0 or width <= 0:
        raise FaceError(f"mask size must be positive, got {width}x{height}")
    cx, cy = face_box.centre
    fw, fh = face_box.width, face_box.height
    sigma = 0.04 * max(fw, fh)
    face = _soft_ellipse(height, width, cx, cy, fw / 2, fh / 2, sigma)
    lips = _soft_ellipse(height, width, cx, face_box.y0 + 0.80 * fh, 0.25 * fw, 0.12 * fh, sigma * 0.5)
    lips = np.minimum(lips, face)
    return np.stack([1.0 - face, face - lips, lips]).astype(np.float32)



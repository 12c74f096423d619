"""Face, lip and region masks from MediaPipe face-mesh landmarks (the 478-point FaceLandmarker output).

A family whose original builds its masks from face-mesh landmarks names a :class:`LandmarkMaskRecipe` (its
numbers, and the original file + commit they mirror, live in the family module). Given the landmarks in source
pixels (``x * width``, ``y * height`` of the landmarker's normalised points) :func:`landmark_masks` computes:

* the face box: the rounded extent of the face-oval vertices, grown about its floored centre by ``face_expand``
  (half-sizes floored), pushed back inside the picture and rounded half-to-even; the lip box likewise from the
  outer-lip vertices with ``lip_expand``. Each box is a 0/255 ``uint8`` rectangle, cut with Python slice
  semantics (a box that still starts left of 0 after the push keeps Python's negative-index meaning);
* the blurred masks: the rectangle resized to ``blur_size`` squared (bilinear), Gaussian-blurred with a square
  kernel (sigma from the kernel size), stretched to 0..255 (min-max) in ``uint8``;
* the region masks at ``blur_size``: full = ``255 * (1 - face / 255)`` truncated to ``uint8``, face = face minus
  lip (saturating), lip = the blurred lip mask;
* what the model reads: the face region (the unblurred face rectangle) and the picture resized to the model size,
  and each region mask resized to every feature-map size (model size / 8, 16, 32, 64), all with PIL's bilinear
  filter (what torchvision's ``Resize`` applies to PIL images), divided by 255.

Only numpy, OpenCV and Pillow are used; the landmarker itself is optional (:mod:`.original_front_ends`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .boxes import FaceError

# MediaPipe face mesh topology: the vertices of the face oval and of the outer lip contour.
FACE_OVAL_VERTICES = (
    10, 21, 54, 58, 67, 93, 103, 109, 127, 132, 136, 148, 149, 150, 152, 162, 172, 176, 234, 251, 284, 288, 297,
    323, 332, 338, 356, 361, 365, 377, 378, 379, 389, 397, 400, 454,
)
OUTER_LIP_VERTICES = (0, 17, 37, 39, 40, 61, 84, 91, 146, 181, 185, 267, 269, 270, 291, 314, 321, 375, 405, 409)
MESH_POINTS = 478


@dataclass(frozen=True)
class LandmarkMaskRecipe:
    """The numbers of a landmark-mask front end (a family module fills them from its original)."""

    face_expand: float = 1.2  # face box growth (the preset's face expand ratio in the original)
    lip_expand: float = 2.0
    blur_size: int = 64  # the blurred masks are made at this square size
    face_kernel: int = 51  # Gaussian kernel (odd) for the face mask
    lip_kernel: int = 31
    level_divisors: tuple[int, ...] = (8, 16, 32, 64)  # feature-map sizes = model size // divisor
    mirrors: str = ""  # the original file(s) + commit this recipe follows


@dataclass
class LandmarkMasks:
    """What :func:`landmark_masks` returns (float32 in 0..1 unless said otherwise)."""

    face_box: tuple[int, int, int, int]  # (x0, x1, y0, y1) in source pixels, as cut
    lip_box: tuple[int, int, int, int]
    face_rect: np.ndarray  # [H, W] uint8 0/255, source size
    lip_rect: np.ndarray
    blurred: np.ndarray  # [3, s, s] uint8 (full, face, lip) at blur_size
    face_region: np.ndarray  # [h, w] the face rectangle at the model size
    levels: dict[str, list[np.ndarray]] = field(default_factory=dict)  # name -> [h/d, w/d] per divisor

    def region_levels(self) -> dict[tuple[int, int], np.ndarray]:
        """{(h, w): [3, h, w]} float32 (full, face, lip) at every feature-map size, as the model reads them."""
        out = {}
        for i, full in enumerate(self.levels["full"]):
            out[tuple(int(v) for v in full.shape)] = np.stack([self.levels[n][i] for n in ("full", "face", "lip")])
        return out

    def region_masks(self) -> np.ndarray:
        """[3, s, s] float32 (full, face, lip) at blur_size: what the region audio modules read at the finest level."""
        return self.blurred.astype(np.float32) / np.float32(255.0)


def _extent(points: np.ndarray, ids) -> tuple[float, float, float, float]:
    sel = points[list(ids)]
    lo, hi = np.round(sel.min(axis=0)), np.round(sel.max(axis=0))
    return lo[0], hi[0], lo[1], hi[1]


def _grow(lo, hi, ratio: float, limit: int) -> tuple[float, float]:
    centre = (hi + lo) // 2
    half = ((hi - lo) * ratio) // 2
    a, b = centre - half, centre + half
    if a < 0:  # pushed right / down by the overflow
        b, a = b - a, 0
    if b > limit:
        a, b = a - (b - limit), limit
    return a, b


def rectangle_mask(points: np.ndarray, ids, height: int, width: int, ratio: float) -> tuple[np.ndarray, tuple[int, ...]]:
    """The 0/255 uint8 rectangle of the vertices ``ids`` grown by ``ratio`` (see the module docstring) and its box."""
    x0, x1, y0, y1 = _extent(points, ids)
    x0, x1 = _grow(x0, x1, ratio, width)
    y0, y1 = _grow(y0, y1, ratio, height)
    box = tuple(int(round(v)) for v in (x0, x1, y0, y1))
    mask = np.zeros((height, width), np.uint8)
    mask[box[2]:box[3], box[0]:box[1]] = 255
    return mask, box


def blurred_mask(mask: np.ndarray, size: int, kernel: int) -> np.ndarray:
    """A uint8 mask resized to ``size`` squared (bilinear), blurred by a ``kernel`` Gaussian, stretched to 0..255."""
    small = cv2.resize(mask, (size, size), interpolation=cv2.INTER_LINEAR)
    blur = cv2.GaussianBlur(small, (kernel, kernel), 0)
    return cv2.normalize(blur, None, 0, 255, cv2.NORM_MINMAX)


def pil_resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [H, W] or [H, W, 3] resized with PIL's bilinear filter (antialiased when shrinking), as uint8."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(array))
    if image.size == (width, height):
        return np.asarray(image).copy()
    return np.asarray(image.resize((width, height), Image.BILINEAR))


def _unit(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float32) / np.float32(255.0)


def check_landmarks(points, height: int, width: int) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] < 2 or pts.shape[0] <= max(FACE_OVAL_VERTICES + OUTER_LIP_VERTICES):
        raise FaceError(f"face-mesh landmarks must be [{MESH_POINTS}, 2] pixel coordinates, got shape {pts.shape}")
    if not np.isfinite(pts[:, :2]).all():
        raise FaceError("face-mesh landmarks must be finite")
    if height <= 0 or width <= 0:
        raise FaceError(f"the picture size must be positive, got {width}x{height}")
    return pts[:, :2]


def landmark_masks(points, height: int, width: int, size: tuple[int, int] | int,
                   recipe: LandmarkMaskRecipe = LandmarkMaskRecipe()) -> LandmarkMasks:
    """The masks a landmark front end feeds the model, from face-mesh ``points`` [478, 2] (source pixels) of a
    ``height`` x ``width`` picture; ``size`` = the model's (height, width) or one side."""
    pts = check_landmarks(points, height, width)
    out_h, out_w = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    face_rect, face_box = rectangle_mask(pts, FACE_OVAL_VERTICES, height, width, recipe.face_expand)
    lip_rect, lip_box = rectangle_mask(pts, OUTER_LIP_VERTICES, height, width, recipe.lip_expand)
    face_blur = blurred_mask(face_rect, recipe.blur_size, recipe.face_kernel)
    lip_blur = blurred_mask(lip_rect, recipe.blur_size, recipe.lip_kernel)
    full = ((1.0 - face_blur / 255.0) * 255.0).astype(np.uint8)  # truncation, as an 8-bit image is written
    face_only = cv2.subtract(face_blur, lip_blur)
    blurred = np.stack([full, face_only, lip_blur])
    levels = {
        name: [_unit(pil_resize(m, out_h // d, out_h // d)) for d in recipe.level_divisors]  # square levels (from the height)
        for name, m in zip(("full", "face", "lip"), blurred)
    }
    return LandmarkMasks(face_box, lip_box, face_rect, lip_rect, blurred, _unit(pil_resize(face_rect, out_h, out_w)), levels)


def resized_portrait(rgb8: np.ndarray, size: tuple[int, int] | int) -> np.ndarray:
    """The picture (uint8 RGB) resized to the model size with PIL's bilinear filter, float32 0..1 [h, w, 3]."""
    out_h, out_w = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    return _unit(pil_resize(rgb8, out_h, out_w))

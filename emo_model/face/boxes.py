"""Face boxes in continuous pixel coordinates, and the face front end's errors.

Coordinates
-----------
Continuous pixel coordinates throughout: pixel ``(row i, col j)`` covers
``[j, j+1) x [i, i+1)``, its centre is ``(j + 0.5, i + 0.5)``.  A
:class:`FaceBox` ``(x0, y0, x1, y1)`` is in these units, ``x1``/``y1``
exclusive, so a box covering the whole image is ``(0, 0, W, H)``.  A pixel
belongs to a box mask when its centre lies inside the box.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


class FaceError(ValueError):
    """A clear, actionable problem with the portrait or the face options."""


class FaceWarning(UserWarning):
    """Something degraded (no face found, a detector missing) but work goes on."""




@dataclass
class FaceBox:
    """An axis-aligned box in continuous pixel coordinates (x1/y1 exclusive)."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0

    def __post_init__(self) -> None:
        self.x0, self.y0, self.x1, self.y1 = (float(v) for v in (self.x0, self.y0, self.x1, self.y1))
        self.score = float(self.score)
        if not all(math.isfinite(v) for v in (self.x0, self.y0, self.x1, self.y1)):
            raise FaceError(f"FaceBox coordinates must be finite, got {self.as_tuple()}")
        if self.x1 < self.x0 or self.y1 < self.y0:
            raise FaceError(f"FaceBox needs x0 <= x1 and y0 <= y1, got {self.as_tuple()}")

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def centre(self) -> tuple[float, float]:
        return (0.5 * (self.x0 + self.x1), 0.5 * (self.y0 + self.y1))

    center = centre

    @property
    def area(self) -> float:
        return self.width * self.height

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)

    def clipped(self, width: float, height: float) -> FaceBox:
        """The box intersected with the image ``[0, width) x [0, height)``."""
        x0 = min(max(self.x0, 0.0), float(width))
        y0 = min(max(self.y0, 0.0), float(height))
        x1 = min(max(self.x1, x0), float(width))
        y1 = min(max(self.y1, y0), float(height))
        return FaceBox(x0, y0, x1, y1, self.score)

    def expanded(self, ratio: float, width: float | None = None, height: float | None = None) -> FaceBox:
        """Width and height multiplied by ``ratio`` about the centre.

        ``ratio=1.2`` grows the box by 20 % (10 % each side).  When ``width``
        and ``height`` (the image size) are given the result is clipped to it.
        """
        if ratio < 0:
            raise FaceError(f"expand ratio must be >= 0, got {ratio}")
        cx, cy = self.centre
        hw, hh = 0.5 * self.width * ratio, 0.5 * self.height * ratio
        box = FaceBox(cx - hw, cy - hh, cx + hw, cy + hh, self.score)
        if width is not None or height is not None:
            if width is None or height is None:
                raise FaceError("expanded(): give both width and height to clip, or neither")
            box = box.clipped(width, height)
        return box

    def scaled(self, sx: float, sy: float | None = None) -> FaceBox:
        """Coordinates multiplied by ``(sx, sy)`` (e.g. to map between resolutions)."""
        sy = sx if sy is None else sy
        return FaceBox(self.x0 * sx, self.y0 * sy, self.x1 * sx, self.y1 * sy, self.score)

    def translated(self, dx: float, dy: float) -> FaceBox:
        return FaceBox(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy, self.score)

    def intersection(self, other: FaceBox) -> float:
        w = min(self.x1, other.x1) - max(self.x0, other.x0)
        h = min(self.y1, other.y1) - max(self.y0, other.y0)
        return max(w, 0.0) * max(h, 0.0)

    def iou(self, other: FaceBox) -> float:
        inter = self.intersection(other)
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def contains(self, x: float, y: float) -> bool:
        return self.x0 <= x < self.x1 and self.y0 <= y < self.y1


def union_box(boxes: Iterable[FaceBox]) -> FaceBox:
    """The smallest box containing every box; its score is the lowest score."""
    boxes = list(boxes)
    if not boxes:
        raise FaceError("union_box() needs at least one box")
    return FaceBox(
        min(b.x0 for b in boxes),
        min(b.y0 for b in boxes),
        max(b.x1 for b in boxes),
        max(b.y1 for b in boxes),
        min(b.score for b in boxes),
    )



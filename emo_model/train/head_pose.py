"""Head-motion speed labels for the speed layers (paper §3.2, §4.1), with a replaceable estimator.

EMO labels every frame with the head-rotation velocity ``w_f``: the rotation, in degrees, between the
6-DoF head poses (from facial landmarks) of frames ``f-1`` and ``f``. No landmark / head-pose model
installs with its weights from PyPI here, so the default estimator is a documented *proxy*, and the
estimator is chosen by name (:data:`ESTIMATORS`, :func:`register_estimator`) so a real pose model
(6DRepNet, a 3DMM fit, mediapipe's face transform, ...) can replace it without touching the rest.

The contract (:class:`SpeedEstimator`)
--------------------------------------
``estimate(frames, boxes, fps) -> np.ndarray [F]`` of float32 degrees per frame, at the frame rate
of the frames handed in (the preprocessor passes the frames already resampled to the training fps,
e.g. 30, so labels are "degrees per training frame", the unit of :class:`~emo_model.configs.SpeedConfig`
and of the speed the sampler is given). ``frames`` are uint8 RGB ``[F, H, W, 3]``, ``boxes`` the face
box of every frame in the same pixel coordinates ``[F, 4]`` (x0, y0, x1, y1). ``w_0`` repeats ``w_1``
(the first frame has no predecessor). ``name`` and ``description`` are written into the dataset's
metadata so labels made by different estimators are never mixed silently.

The default proxy, ``"flow"`` (:class:`FlowRotationEstimator`)
--------------------------------------------------------------
What it measures, for each pair of consecutive frames:

1. Up to 200 corner features (Shi-Tomasi) inside the face box of frame ``f-1`` are tracked into frame
   ``f`` with pyramidal Lucas-Kanade optical flow (OpenCV).
2. A similarity transform (rotation, uniform scale, translation) is fitted to the tracks with RANSAC
   (``cv2.estimateAffinePartial2D``); mouth, eye and hair motion that does not follow the head are the
   outliers it rejects. This gives the in-plane rotation ``dr`` (roll, radians) and the translation
   of the face centre ``dt`` (pixels).
3. ``w = degrees(sqrt((|dt| / R)^2 + dr^2))`` with ``R = pivot * face height`` (``pivot`` = 1.0).

Why this approximates degrees of head rotation per frame: a head turning (yaw) or nodding (pitch) by
a small angle ``a`` about a pivot at distance ``R`` from the face centre (the neck / the centre of the
skull) moves the face centre by ``R sin(a) ~ R a`` pixels in the image, so ``|dt| / R`` is the angle in
radians to first order; roll shows up directly as the in-plane rotation of the features. The pivot
distance is taken as one face-box height (the detector's box runs from the brows to the chin, and the
neck pivot sits about that far below the face centre).

Known biases (it is a proxy, not a pose): body or camera translation counts as rotation (EMO's data,
like ours, is cut at scene changes and the crop is static per segment, so camera motion inside a
segment is mostly handheld shake, which also reads as "head speed" in the image); a yaw that rotates the
face about its own centre (pivot inside the head) is under-counted; the label is scale invariant
(pixels / pixels), so it does not depend on the video or crop resolution. Scale change (moving toward
the camera) is ignored. With too few trackable features (< 6, e.g. a blurry or tiny face) the
face-box centre's displacement is used for ``dt`` and ``dr`` is 0; those frames are counted in the
metadata (``fallback_frames``). A 3-frame median filter then removes single-frame tracking spikes.

``"box"`` (:class:`BoxMotionEstimator`) is the cheap variant: the face-box centre displacement only,
same formula, no roll. It is noisier (detector jitter of a few pixels reads as motion) and exists for
very large datasets and as a second, independent proxy for sanity checks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import cv2
import numpy as np


@runtime_checkable
class SpeedEstimator(Protocol):
    """Per-frame head-rotation speed in degrees per frame (see the module docstring)."""

    name: str
    description: str

    def estimate(self, frames: np.ndarray, boxes: np.ndarray, fps: float) -> np.ndarray: ...


def _box_centres(boxes: np.ndarray) -> np.ndarray:
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)


def _median3(values: np.ndarray) -> np.ndarray:
    if values.shape[0] < 3:
        return values
    padded = np.concatenate([values[:1], values, values[-1:]])
    return np.median(np.stack([padded[:-2], padded[1:-1], padded[2:]]), axis=0)


def _to_degrees(dt: np.ndarray, roll: np.ndarray, radius: np.ndarray) -> np.ndarray:
    angle = np.sqrt((np.linalg.norm(dt, axis=1) / np.maximum(radius, 1.0)) ** 2 + roll**2)
    return np.degrees(angle)


def _finish(per_pair: np.ndarray, frames: int, smooth: bool) -> np.ndarray:
    """Pair speeds (frames 1..F-1) -> one value per frame, w_0 = w_1."""
    if frames == 0:
        return np.zeros(0, np.float32)
    if per_pair.size == 0:
        return np.zeros(frames, np.float32)
    if smooth:
        per_pair = _median3(per_pair)
    return np.concatenate([per_pair[:1], per_pair]).astype(np.float32)


class BoxMotionEstimator:
    """Face-box centre displacement per frame over the pivot distance, in degrees (no roll)."""

    name = "box"
    description = "degrees(|face-box centre displacement| / (pivot * face height)) per frame"

    def __init__(self, pivot: float = 1.0, smooth: bool = True):
        self.pivot = pivot
        self.smooth = smooth
        self.fallback_frames = 0

    def estimate(self, frames: np.ndarray, boxes: np.ndarray, fps: float) -> np.ndarray:
        boxes = np.asarray(boxes, np.float64)
        centres = _box_centres(boxes)
        heights = (boxes[:, 3] - boxes[:, 1]) * self.pivot
        dt = np.diff(centres, axis=0)
        radius = (heights[1:] + heights[:-1]) / 2
        return _finish(_to_degrees(dt, np.zeros(len(dt)), radius), len(boxes), self.smooth)


class FlowRotationEstimator:
    """Similarity motion of tracked face features between frames, as degrees per frame (default)."""

    name = "flow"
    description = (
        "degrees(sqrt((|face translation| / (pivot * face height))^2 + roll^2)) per frame, from LK-tracked "
        "face features and a RANSAC similarity fit"
    )
    MIN_TRACKS = 6
    MAX_CORNERS = 200
    TRACK_SIDE = 160  # the face region is tracked at about this many pixels across

    def __init__(self, pivot: float = 1.0, smooth: bool = True):
        self.pivot = pivot
        self.smooth = smooth
        self.fallback_frames = 0

    def _pair(self, prev: np.ndarray, cur: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, float] | None:
        """(translation in pixels of the full frame, roll in radians), or None when tracking fails."""
        h, w = prev.shape[:2]
        bw, bh = box[2] - box[0], box[3] - box[1]
        # track in a margin around the box, downscaled so the face is about TRACK_SIDE px across
        x0, y0 = int(max(0, box[0] - 0.25 * bw)), int(max(0, box[1] - 0.25 * bh))
        x1, y1 = int(min(w, box[2] + 0.25 * bw)), int(min(h, box[3] + 0.25 * bh))
        if x1 - x0 < 8 or y1 - y0 < 8:
            return None
        scale = min(1.0, self.TRACK_SIDE / max(bw, bh, 1.0))
        a = cv2.cvtColor(prev[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY)
        b = cv2.cvtColor(cur[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY)
        if scale < 1.0:
            size = (max(8, round((x1 - x0) * scale)), max(8, round((y1 - y0) * scale)))
            a = cv2.resize(a, size, interpolation=cv2.INTER_AREA)
            b = cv2.resize(b, size, interpolation=cv2.INTER_AREA)
        sx, sy = a.shape[1] / (x1 - x0), a.shape[0] / (y1 - y0)
        mask = np.zeros_like(a)
        fx0, fy0 = int((box[0] - x0) * sx), int((box[1] - y0) * sy)
        fx1, fy1 = int(math.ceil((box[2] - x0) * sx)), int(math.ceil((box[3] - y0) * sy))
        mask[max(fy0, 0) : fy1, max(fx0, 0) : fx1] = 255
        points = cv2.goodFeaturesToTrack(a, self.MAX_CORNERS, 0.01, 3, mask=mask)
        if points is None or len(points) < self.MIN_TRACKS:
            return None
        moved, status, _ = cv2.calcOpticalFlowPyrLK(a, b, points, None, winSize=(15, 15), maxLevel=3)
        ok = status.ravel() == 1
        if ok.sum() < self.MIN_TRACKS:
            return None
        src, dst = points[ok].reshape(-1, 2), moved[ok].reshape(-1, 2)
        matrix, inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=1.0)
        if matrix is None or inliers is None or inliers.sum() < self.MIN_TRACKS:
            return None
        roll = math.atan2(matrix[1, 0], matrix[0, 0])
        # displacement of the face centre under the fitted transform, back in full-frame pixels
        c = np.array([((box[0] + box[2]) / 2 - x0) * sx, ((box[1] + box[3]) / 2 - y0) * sy])
        moved_c = matrix[:, :2] @ c + matrix[:, 2]
        dt = (moved_c - c) / np.array([sx, sy])
        return dt, roll

    def estimate(self, frames: np.ndarray, boxes: np.ndarray, fps: float) -> np.ndarray:
        boxes = np.asarray(boxes, np.float64)
        n = len(frames)
        if n != len(boxes):
            raise ValueError(f"{n} frames but {len(boxes)} face boxes")
        centres = _box_centres(boxes)
        dts, rolls, radii = [], [], []
        self.fallback_frames = 0
        for f in range(1, n):
            # one box for both frames (the union of the two), so the tracked region is the same
            box = np.array(
                [
                    min(boxes[f - 1, 0], boxes[f, 0]),
                    min(boxes[f - 1, 1], boxes[f, 1]),
                    max(boxes[f - 1, 2], boxes[f, 2]),
                    max(boxes[f - 1, 3], boxes[f, 3]),
                ]
            )
            result = self._pair(frames[f - 1], frames[f], box)
            if result is None:
                self.fallback_frames += 1
                result = (centres[f] - centres[f - 1], 0.0)
            dts.append(result[0])
            rolls.append(result[1])
            radii.append(self.pivot * ((boxes[f, 3] - boxes[f, 1]) + (boxes[f - 1, 3] - boxes[f - 1, 1])) / 2)
        if not dts:
            return _finish(np.zeros(0), n, self.smooth)
        speeds = _to_degrees(np.array(dts), np.array(rolls), np.array(radii))
        return _finish(speeds, n, self.smooth)


ESTIMATORS: dict[str, Callable[[], SpeedEstimator]] = {
    "flow": FlowRotationEstimator,
    "box": BoxMotionEstimator,
}


def register_estimator(name: str, factory: Callable[[], SpeedEstimator]) -> None:
    """Make a speed estimator available to ``preprocess --speed-estimator NAME``.

    ``factory()`` returns an object with ``name``, ``description`` and ``estimate(frames, boxes, fps)``
    returning degrees per frame; a 6-DoF pose estimator would return the angle of the relative
    rotation ``R_f R_{f-1}^T`` of consecutive frames.
    """
    ESTIMATORS[name] = factory


def get_estimator(name: str) -> SpeedEstimator:
    """A fresh estimator by name, or ``module:attribute`` of any importable factory."""
    if name in ESTIMATORS:
        return ESTIMATORS[name]()
    if ":" in name:
        import importlib

        module, _, attr = name.partition(":")
        estimator = getattr(importlib.import_module(module), attr)()
        if not isinstance(estimator, SpeedEstimator):
            raise TypeError(f"{name} does not give a SpeedEstimator (needs name, description and estimate())")
        return estimator
    raise KeyError(f"unknown speed estimator {name!r}; choose one of {sorted(ESTIMATORS)} or give module:factory")

"""Tracking the face through a training segment: boxes per frame (gaps filled), one square crop for the segment."""

from __future__ import annotations

import numpy as np

from .preprocess_options import Options


def _detect(frame: np.ndarray, opts: Options, previous: np.ndarray | None) -> np.ndarray | None:
    """The face box [x0, y0, x1, y1] in frame pixels, or None."""
    import cv2

    from ..face import detect_faces

    h, w = frame.shape[:2]
    scale = min(1.0, opts.detect_size / max(h, w))
    small = (
        cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        if scale < 1
        else frame
    )
    try:
        boxes = detect_faces(small, detector=opts.detector, models_dir=opts.models_dir)
    except Exception:
        return None
    if not boxes:
        return None
    cands = [np.array(b.as_tuple()) / scale for b in boxes]
    if previous is not None:
        overlapping = [c for c in cands if _iou(c, previous) > 0.3]
        if overlapping:
            return overlapping[0]  # largest first
    return cands[0]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def fill_boxes(boxes: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Linear interpolation of the boxes of frames without a detection (edges hold the nearest)."""
    idx = np.flatnonzero(found)
    out = boxes.copy()
    frames = np.arange(len(boxes))
    for c in range(4):
        out[:, c] = np.interp(frames, idx, boxes[idx, c])
    return out


def crop_square(boxes: np.ndarray, crop_ratio: float) -> tuple[float, float, float]:
    """(x0, y0, side) of the static square crop of a segment, in source pixels."""
    union = np.array([boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()])
    face = float(np.median(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])))
    side = max(crop_ratio * face, 1.1 * max(union[2] - union[0], union[3] - union[1]), 8.0)
    cx, cy = (union[0] + union[2]) / 2, (union[1] + union[3]) / 2
    return cx - side / 2, cy - side / 2, side


def crop_frame(frame: np.ndarray, x0: float, y0: float, side: float, size: int) -> np.ndarray:
    """The square [x0, x0+side) x [y0, y0+side) of ``frame`` at size x size (edge padding outside)."""
    import cv2

    s = size / side
    src, f = frame, 1.0
    if s < 0.5:  # anti-alias: shrink by an integer factor with area averaging first
        k = int(1.0 / s)
        h, w = frame.shape[:2]
        src = cv2.resize(frame, (max(1, w // k), max(1, h // k)), interpolation=cv2.INTER_AREA)
        f = src.shape[1] / w
    m = np.array([[s / f, 0.0, s * (0.5 / f - x0) - 0.5], [0.0, s / f, s * (0.5 / f - y0) - 0.5]])
    return cv2.warpAffine(src, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

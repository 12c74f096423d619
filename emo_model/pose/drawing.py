"""Hand poses drawn as a pose guider was trained to read them: coloured hand skeletons on black.

The drawing of the pose-guided original's ``draw_pose_select_v2`` (its src/utils/dwpose_util.py; the family module
that sets ``FaceLocatorConfig.reads = "pose_frames"`` names the commit): only the hands of a DWPose result (bodies and faces are not drawn), on a canvas
``800 / min(h, w)`` times the drawing size; per hand the 20 bones as 2-pixel lines coloured by bone (hue ``i / 20``,
scaled by the product of the two keypoint scores), then each keypoint as a filled red disc of radius 4 (brightness
its score); a point at or below 0.01 (in 0..1 units) is not drawn. The canvas is resized to the drawing size
(bilinear) and pasted into a black frame at ``draw_pose_params`` ``(h, w, row0, row1, col0, col1)``.
"""

from __future__ import annotations

import colorsys

import numpy as np

EDGES = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
         (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20))
EPS = 0.01
REF_W = 800


def draw_hands(hands: np.ndarray, scores: np.ndarray, height: int, width: int, ref_w: int = REF_W) -> np.ndarray:
    """Hands [n, 21, 2] (x, y in 0..1) with scores [n, 21] -> an RGB uint8 image [height, width, 3]."""
    import cv2

    size = min(height, width)
    sr = (ref_w / size) if size != ref_w else 1
    canvas = np.zeros((int(height * sr), int(width * sr), 3), dtype=np.uint8)
    ch, cw = canvas.shape[:2]
    for peaks, score in zip(np.asarray(hands, dtype=np.float64), np.asarray(scores, dtype=np.float64)):
        for i, (a, b) in enumerate(EDGES):
            x1, y1 = int(peaks[a][0] * cw), int(peaks[a][1] * ch)
            x2, y2 = int(peaks[b][0] * cw), int(peaks[b][1] * ch)
            s = int(score[a] * score[b] * 255)
            if x1 > EPS and y1 > EPS and x2 > EPS and y2 > EPS:
                colour = np.array(colorsys.hsv_to_rgb(i / float(len(EDGES)), 1.0, 1.0)) * s
                cv2.line(canvas, (x1, y1), (x2, y2), colour.tolist(), thickness=2)
        for k, (x, y) in enumerate(peaks):
            x, y = int(x * cw), int(y * ch)
            if x > EPS and y > EPS:
                cv2.circle(canvas, (x, y), 4, (0, 0, int(score[k] * 255)), thickness=-1)
    return cv2.cvtColor(cv2.resize(canvas, (width, height)), cv2.COLOR_BGR2RGB)


def draw_frame(hands: np.ndarray, scores: np.ndarray, frame: tuple[int, int], params=None) -> np.ndarray:
    """One pose image [H, W, 3] uint8: the hands drawn at ``params`` = (h, w, row0, row1, col0, col1) inside a black
    frame ``(H, W)`` (None: the whole frame)."""
    height, width = frame
    h, w, r0, r1, c0, c1 = params if params is not None else (height, width, 0, height, 0, width)
    out = np.zeros((height, width, 3), dtype=np.uint8)
    out[r0:r1, c0:c1] = draw_hands(hands, scores, int(h), int(w))[: r1 - r0, : c1 - c0]
    return out

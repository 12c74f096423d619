"""Three-point face keypoints (left eye, right eye, nose) as the images a keypoint guider reads, and their retargeting.

A keypoint image is a black canvas with two "limbs" (eye -> nose, a filled ellipse 4 px thick at 0.6 of the eye's
colour) under three filled discs of radius 4 (red, green, blue for left eye, right eye, nose), drawn with OpenCV's
integer rasterisation. A driving sequence is cut to the video's frame count and stretched to it by linear
interpolation (a shorter one is stretched, not looped). Retargeting moves a driving sequence onto the reference face:

* ``fix_face``: the reference keypoints on every frame (the driving ones unused);
* ``no_retarget``: the driving keypoints as they are;
* ``offset_retarget``: the reference keypoints shifted by half the nose's motion since the first driving frame (after
  the per-axis rescale below);
* ``naive_retarget``: the driving keypoints rescaled per axis (eye distance; nose to the eye line) to one chosen driving
  frame's proportions against the reference, then shifted so the first frame's nose is on the reference nose.

The chosen frame is the first one whose eye/nose ratio is within the running threshold of the reference's, where the
threshold after a pick is that frame's own ratio, not its distance (the behaviour of the published retargeting code;
families name it where they use it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255))  # left eye, right eye, nose (RGB)
LIMBS = ((0, 2), (1, 2))  # eye -> nose
RETARGET_MODES = ("fix_face", "no_retarget", "offset_retarget", "naive_retarget")


@dataclass(frozen=True)
class KeypointGuide:
    """A family whose guider reads keypoint images (``Family.keypoint_guide``): where its original's keypoints come from.

    ``mirrors``: the original file(s) + commit; ``default_mode``: the retarget mode without driving keypoints (the
    original's default); ``driven_mode``: with driving keypoints and no mode chosen (ours: the original's default
    would leave them unused); ``sources``: how the reference keypoints are found, best first
    (emo_model/face/keypoint_detection.py)."""

    mirrors: str
    default_mode: str = "fix_face"
    driven_mode: str = "offset_retarget"
    sources: tuple[str, ...] = ("insightface", "yunet", "box")


def draw_keypoint_image(height: int, width: int, points) -> np.ndarray:
    """[3, 2] keypoints (x, y in pixels) -> uint8 RGB image [height, width, 3]."""
    import cv2

    pts = np.asarray(points, dtype=np.float64)
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for a, b in LIMBS:
        (xa, ya), (xb, yb) = pts[a], pts[b]
        length = math.hypot(xa - xb, ya - yb)
        angle = int(math.degrees(math.atan2(ya - yb, xa - xb)))
        centre = (int(np.mean([xa, xb])), int(np.mean([ya, yb])))
        polygon = cv2.ellipse2Poly(centre, (int(length / 2), 4), angle, 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, [int(float(c) * 0.6) for c in COLOURS[a]])
    for (x, y), colour in zip(pts, COLOURS):
        cv2.circle(canvas, (int(x), int(y)), 4, colour, -1)
    return canvas


def keypoint_images(height: int, width: int, sequence) -> torch.Tensor:
    """[F, 3, 2] keypoints -> [F, 3, height, width] float images in 0..1 (what a keypoint guider reads)."""
    frames = [draw_keypoint_image(height, width, p) for p in np.asarray(sequence, dtype=np.float64)]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0


def stretch_sequence(sequence, frames: int) -> torch.Tensor:
    """A driving sequence [N, 3, 2] cut to ``frames`` when longer, then linearly interpolated to ``frames``."""
    seq = torch.as_tensor(np.asarray(sequence), dtype=torch.float64)[:frames]
    seq = torch.nn.functional.interpolate(seq.permute(1, 2, 0), size=frames, mode="linear")
    return seq.permute(2, 0, 1)


# OpenPose / DWPose body keypoints (COCO 18): 14 = the subject's right eye (image left), 15 = left eye, 0 = nose
_BODY_EYES_NOSE = (14, 15, 0)


def keypoints_from_pose_keypoint(frames, size: int) -> np.ndarray:
    """ComfyUI's POSE_KEYPOINT (one dict per frame: ``people[0].pose_keypoints_2d`` as x, y, confidence triples in pixels
    or 0..1, ``canvas_width`` / ``canvas_height``) -> [F, 3, 2] pixels (image-left eye, image-right eye, nose) in the
    largest centred square of the canvas scaled to ``size``. A frame where a point is missing (confidence 0) keeps the
    previous frame's points; a sequence with none at all is refused."""
    if isinstance(frames, dict):
        frames = [frames]
    out, last = [], None
    for frame in frames or []:
        width, height = float(frame.get("canvas_width") or 1), float(frame.get("canvas_height") or 1)
        people = frame.get("people") or []
        body = np.asarray((people[0].get("pose_keypoints_2d") or []) if people else [], dtype=np.float64).reshape(-1, 3)
        if len(body) > max(_BODY_EYES_NOSE) and (body[list(_BODY_EYES_NOSE), 2] > 0).all():
            xy = body[list(_BODY_EYES_NOSE), :2].copy()
            if xy.max() <= 1.5:  # 0..1 of the canvas
                xy *= np.array([width, height])
            side = min(width, height)
            last = (xy - np.array([(width - side) / 2, (height - side) / 2])) * (size / side)
        if last is not None:
            out.append(last)
    if not out:
        raise ValueError("POSE_KEYPOINT holds no face (eyes and nose of a body pose) in any frame; "
                         "run the pose detector with body keypoints on a video showing a face")
    first = len(frames) - len(out)  # frames before the first face take its points
    return np.stack([out[0]] * first + out)


def _eye_nose_ratio(p: np.ndarray) -> float:
    left, right = math.dist(p[0], p[2]), math.dist(p[1], p[2])
    return left / (right + 1e-6)


def _face_size(p: np.ndarray) -> tuple[float, float]:
    """(eye distance, distance of the nose to the eye segment)."""
    a, b, c = p[0], p[1], p[2]
    ab = b - a
    t = float(np.clip(np.dot(ab / np.linalg.norm(ab), (c - a) / np.linalg.norm(ab)), 0.0, 1.0))
    return float(np.linalg.norm(ab)), float(np.linalg.norm(c - (a + t * ab)))


def retarget(reference, driving, mode: str, frames: int) -> np.ndarray:
    """Keypoints per frame [frames, 3, 2] for ``mode`` (:data:`RETARGET_MODES`); ``driving``: [frames, 3, 2] or None."""
    ref = np.asarray(reference, dtype=np.float64)
    if mode not in RETARGET_MODES:
        raise ValueError(f"unknown keypoint retarget mode {mode!r}; choose one of {', '.join(RETARGET_MODES)}")
    if mode == "fix_face":
        return np.repeat(ref[None], frames, axis=0)
    if driving is None:
        raise ValueError(f"retarget mode {mode} needs driving keypoints; give a driving video or use fix_face")
    drv = np.asarray(driving, dtype=np.float64)
    if mode == "no_retarget":
        return drv
    target, threshold, chosen = _eye_nose_ratio(ref), 10000.0, None
    for i, p in enumerate(drv):
        ratio = _eye_nose_ratio(p)
        if abs(ratio - target) < threshold:
            chosen, threshold = i, ratio  # the threshold becomes the ratio itself (the published code's rule)
    (ref_w, ref_h), (drv_w, drv_h) = _face_size(ref), _face_size(drv[chosen])
    scaled = drv.copy()
    scaled[:, :, 0] *= ref_w / drv_w
    scaled[:, :, 1] *= ref_h / drv_h
    if mode == "offset_retarget":
        nose = scaled[:, 2, :] - scaled[0, 2, :]
        return np.repeat(ref[None], len(drv), axis=0) - nose[:, None, :] / 2.0
    return scaled - (scaled[0, 2, :] - ref[2])[None, None, :]

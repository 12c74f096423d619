"""Pose sequences for a pose guider, as images [N, 3, S, S] in 0..1: a template folder, POSE_KEYPOINT, or an idle sway.

A sequence shorter than the video is mirrored back and forth by the sampler (emo_model/sampling/pose_sequence.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .drawing import draw_frame
from .templates import PoseTemplateError, read_template, template_files


def _stack(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def _scaled_params(params, size: int):
    """``draw_pose_params`` made for a frame of max(row1, col1) pixels (the original's 768), scaled to ``size``."""
    if params is None:
        return None
    h, w, r0, r1, c0, c1 = (int(v) for v in params)
    made_for = max(r1, c1)
    if made_for == size:
        return h, w, r0, r1, c0, c1
    k = size / made_for
    return tuple(max(1, round(v * k)) if i < 2 else round(v * k) for i, v in enumerate((h, w, r0, r1, c0, c1)))


def from_template_folder(folder: str | Path, size: int, limit: int | None = None) -> torch.Tensor:
    """The original's pose templates (its ``assets/halfbody_demo/pose/<name>/`` folders), drawn as its infer.py draws
    them at ``size`` x ``size``; ``limit``: read only the first frames (the video's length)."""
    files = template_files(Path(folder))[:limit]
    images = []
    for f in files:
        pose = read_template(f)
        images.append(draw_frame(pose["hands"], pose["hands_score"], (size, size), _scaled_params(pose.get("draw_pose_params"), size)))
    return _stack(images)


def _hand(values, width: float, height: float) -> tuple[np.ndarray, np.ndarray]:
    if not values:
        return np.zeros((21, 2)), np.zeros(21)
    a = np.asarray(values, dtype=np.float64).reshape(-1, 3)[:21]
    xy, score = a[:, :2].copy(), a[:, 2].copy()
    if xy.max() > 1.5:  # pixels (comfyui_controlnet_aux writes pixels), else already 0..1
        xy /= np.array([width, height])
    return xy, score


def hands_from_pose_keypoint(frames: Sequence[dict], person: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """ComfyUI's POSE_KEYPOINT (one dict per frame: ``people`` with ``hand_left_keypoints_2d`` /
    ``hand_right_keypoints_2d`` as x, y, confidence triples, ``canvas_width`` / ``canvas_height``) -> hands
    [F, 2, 21, 2] in 0..1 of the largest centred square of the canvas (the square our portrait is framed to), scores
    [F, 2, 21]. A frame without that person or hand has zero scores (nothing drawn)."""
    if isinstance(frames, dict):
        frames = [frames]
    if not frames:
        raise PoseTemplateError("POSE_KEYPOINT holds no frames")
    hands, scores = [], []
    for frame in frames:
        width, height = float(frame.get("canvas_width") or 1), float(frame.get("canvas_height") or 1)
        people = frame.get("people") or []
        p = people[person] if len(people) > person else {}
        pair = [_hand(p.get(k), width, height) for k in ("hand_left_keypoints_2d", "hand_right_keypoints_2d")]
        side = min(width, height)
        xy = np.stack([h for h, _ in pair])
        xy = (xy * np.array([width, height]) - np.array([(width - side) / 2, (height - side) / 2])) / side
        sc = np.stack([s for _, s in pair])
        sc[(xy <= 0).any(-1) | (xy >= 1).any(-1)] = 0.0  # off the square: not drawn
        hands.append(xy)
        scores.append(sc)
    return np.stack(hands), np.stack(scores)


def from_pose_keypoint(frames: Sequence[dict], size: int) -> torch.Tensor:
    """POSE_KEYPOINT from a DWPose node (comfyui_controlnet_aux) drawn as the pose guider expects (hands only)."""
    hands, scores = hands_from_pose_keypoint(frames)
    return _stack([draw_frame(h, s, (size, size)) for h, s in zip(hands, scores)])


# A relaxed open right hand (DWPose's 21 points: wrist, then thumb, index, middle, ring, little from base to tip),
# in units of the hand's length, wrist at the origin, fingers pointing up.
_HAND = np.array([
    [0, 0], [-0.22, -0.12], [-0.36, -0.25], [-0.45, -0.37], [-0.52, -0.47],
    [-0.14, -0.45], [-0.16, -0.66], [-0.17, -0.8], [-0.18, -0.92],
    [0, -0.48], [0, -0.72], [0, -0.87], [0, -1.0],
    [0.13, -0.45], [0.15, -0.66], [0.16, -0.79], [0.17, -0.9],
    [0.25, -0.38], [0.3, -0.53], [0.33, -0.63], [0.35, -0.72],
])


def idle_sway_hands(num_frames: int, fps: float = 24.0, seconds: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Two relaxed hands low in the frame, swaying gently (a few % of the frame) with a period of ``seconds``."""
    t = np.arange(num_frames) / float(fps)
    phase = 2 * math.pi * t / seconds
    hands = []
    for side, wrist in ((-1, (0.3, 0.92)), (1, (0.7, 0.92))):
        shape = _HAND * np.array([-side, 1]) * 0.16  # mirrored for the left hand, 16 % of the frame long
        dx = 0.015 * np.sin(phase + (0 if side < 0 else math.pi / 3))
        dy = 0.01 * np.sin(2 * phase + (0.5 if side < 0 else 1.7))
        hands.append(shape[None] + np.stack([wrist[0] + dx, wrist[1] + dy], -1)[:, None])
    hands = np.stack(hands, 1)  # [F, 2, 21, 2]
    return hands, np.full(hands.shape[:3], 0.9)


def idle_sway(num_frames: int, size: int, fps: float = 24.0) -> torch.Tensor:
    """The built-in pose: a gentle idle sway of two relaxed hands (runs a pose-guided family with no pose at all).
    One period (4 s) is drawn; the sampler mirrors it over longer videos."""
    n = max(1, min(num_frames, int(round(4.0 * fps))))
    hands, scores = idle_sway_hands(n, fps)
    return _stack([draw_frame(h, s, (size, size)) for h, s in zip(hands, scores)])

"""The pose sequence of a pose-guided model from what the user gives: a template folder, POSE_KEYPOINT, or nothing."""

from __future__ import annotations

from pathlib import Path

import torch

from ..configs import EMOConfig
from ..pose.sequences import from_pose_keypoint, from_template_folder, idle_sway
from ..pose.templates import PoseTemplateError
from ..validation import InputError

SWAY = "sway"


def wants_pose(config: EMOConfig) -> bool:
    """Whether the model's Face Locator is a pose guider (reads one pose image per frame)."""
    return config.face_locator is not None and config.face_locator.reads == "pose_frames"


def pose_frames_for(config: EMOConfig, pose, num_frames: int, size: int, fps: float, label: str = "pose") -> tuple[torch.Tensor | None, str]:
    """(pose images [N, 3, size, size] or None, a note for the user).

    ``pose``: None or ``"sway"`` (the built-in idle sway), a folder of the original's ``0.npy``, ``1.npy``, .. templates,
    or ComfyUI's POSE_KEYPOINT (a list of per-frame dicts). A sequence shorter than the video is mirrored back and forth
    (0..n-1, n-2..1, 0, ..). A model without a pose guider takes none."""
    if not wants_pose(config):
        if pose not in (None, "", SWAY):
            raise InputError(f"{label}: this model has no pose guider (only pose-guided models take a pose); leave {label} empty")
        return None, ""
    try:
        if pose is None or (isinstance(pose, str) and pose.strip() in ("", SWAY)):
            frames = idle_sway(num_frames, size, fps)
            return frames, f"pose: the built-in idle sway ({frames.shape[0]} frames, mirrored back and forth)"
        if isinstance(pose, (str, Path)):
            frames = from_template_folder(Path(pose).expanduser(), size, limit=num_frames)
            source = f"{Path(pose).name}/ ({frames.shape[0]} pose templates)"
        else:
            frames = from_pose_keypoint(pose, size)
            source = f"POSE_KEYPOINT ({frames.shape[0]} frames, hands only)"
    except PoseTemplateError as exc:
        raise InputError(f"{label}: {exc}") from None
    shorter = frames.shape[0] < num_frames
    return frames, f"pose: {source}" + (f", mirrored back and forth over {num_frames} frames" if shorter else "")

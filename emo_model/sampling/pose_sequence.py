"""A pose guider's input per video frame: the pose image each frame reads, a sequence shorter than the video mirrored back and forth."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pose_rows(frames: torch.Tensor, count: int) -> torch.Tensor:
    """The pose row each of the video frames ``frames`` (long) reads from a sequence of ``count`` poses.

    A sequence as long as the video or longer is read frame for frame. A shorter one is mirrored back and forth
    (0, 1, .., n-1, n-2, .., 1, 0, 1, ..): the pose never jumps from its last frame back to its first.
    """
    if count < 1:
        raise ValueError("the pose sequence is empty")
    frames = torch.as_tensor(frames, dtype=torch.long)
    if count == 1:
        return torch.zeros_like(frames)
    period = 2 * (count - 1)
    phase = frames % period
    return torch.where(phase < count, phase, period - phase)


def checked_pose_frames(poses: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pose images [N, C, H, W] (or [N, H, W, C]) in 0..1 at the video size ``(H, W)``, as float on the CPU.

    Another size is resized (bilinear); channels last (ComfyUI's IMAGE layout) are moved first."""
    if not isinstance(poses, torch.Tensor) or poses.dim() != 4 or poses.shape[0] < 1:
        raise ValueError("pose_frames must be a tensor [frames, channels, height, width] of pose images in 0..1")
    poses = poses.float().cpu()
    if poses.shape[1] not in (1, 3) and poses.shape[-1] in (1, 3):
        poses = poses.permute(0, 3, 1, 2)
    if tuple(poses.shape[2:]) != tuple(size):
        poses = F.interpolate(poses, size=tuple(size), mode="bilinear", align_corners=False)
    return poses

"""Clip planning: any number of audio frames -> the clips (or context windows) that generate them.

Two strategies:

* **Motion frames** (EMO, Hallo): consecutive clips of ``f`` frames; each clip after the first sees the
  last ``n`` frames of the one before through the ReferenceNet. The last clip may be shorter than
  ``f``: it is generated at full length (its audio padded by repeating the last frame's features) and
  only the frames that exist are kept, so the temporal modules always see the clip length they were
  trained on. Output frames == audio frames for every length.
* **Context windows** (EchoMimic): the whole sequence is denoised together; at every step the model
  runs on overlapping windows of ``f`` frames (stride ``f - overlap``, the last window aligned to the
  end) and the predictions are blended with weights that ramp down at the window edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Clip:
    index: int
    start: int  # first output frame of this clip
    length: int  # frames kept
    generate: int  # frames generated (>= length; only the last clip may be padded)

    @property
    def end(self) -> int:
        return self.start + self.length


def plan_clips(num_frames: int, frames_per_clip: int, *, pad_last: bool = True) -> list[Clip]:
    """Consecutive clips covering ``num_frames`` exactly."""
    if num_frames < 1:
        raise ValueError("nothing to generate: the audio has no frames")
    if frames_per_clip < 1:
        raise ValueError(f"frames_per_clip must be at least 1, got {frames_per_clip}")
    clips = []
    for i, start in enumerate(range(0, num_frames, frames_per_clip)):
        length = min(frames_per_clip, num_frames - start)
        clips.append(Clip(i, start, length, frames_per_clip if pad_last else length))
    return clips


def plan_windows(num_frames: int, size: int, overlap: int) -> list[range]:
    """Overlapping windows of ``size`` frames covering every frame (one shorter window if N < size)."""
    if num_frames < 1:
        raise ValueError("nothing to generate: the audio has no frames")
    if not 0 <= overlap < size:
        raise ValueError(f"context overlap must be in [0, {size - 1}], got {overlap}")
    if num_frames <= size:
        return [range(0, num_frames)]
    stride = size - overlap
    starts = list(range(0, num_frames - size + 1, stride))
    if starts[-1] + size < num_frames:
        starts.append(num_frames - size)
    return [range(s, s + size) for s in starts]


def window_weights(length: int, overlap: int) -> torch.Tensor:
    """Blending weights of one window's frames: linear ramps over ``overlap`` frames at each edge."""
    i = torch.arange(length, dtype=torch.float32)
    ramp = float(overlap + 1)
    return torch.minimum(torch.ones(length), torch.minimum((i + 1) / ramp, (length - i) / ramp))


def frame_indices(start: int, count: int, total: int) -> torch.Tensor:
    """Indices ``start .. start+count-1`` clamped to the sequence (pads a short last clip)."""
    return torch.arange(start, start + count).clamp(max=total - 1)

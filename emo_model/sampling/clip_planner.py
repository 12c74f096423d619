"""Clip planning: any number of audio frames -> the clips (or context windows) that generate them.

Two strategies:

* **Motion frames**: consecutive clips of ``f`` frames; each clip after the first sees the
  last ``n`` frames of the one before through the ReferenceNet. The last clip may be shorter than
  ``f``: it is generated at full length (its audio padded by repeating the last frame's features) and
  only the frames that exist are kept, so the temporal modules always see the clip length they were
  trained on. Output frames == audio frames for every length.
* **Context windows**: the whole sequence is denoised together; at every step the model
  runs on overlapping windows of ``f`` frames (stride ``f - overlap``, the last window aligned to the
  end) and the predictions are blended with weights that ramp down at the window edges. The
  AnimateAnyone-style schedule (:func:`uniform_windows`, windows that wrap around and move every step, equal
  weights) is the ``context_schedule`` / ``context_shift_per_step`` quirk of a preset.
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


def _check_windows(num_frames: int, size: int, overlap: int) -> None:
    """Refuse a frame count or overlap no window schedule can cover, in one line."""
    if num_frames < 1:
        raise ValueError("nothing to generate: the audio has no frames")
    if not 0 <= overlap < size:
        raise ValueError(f"context overlap must be in [0, {size - 1}], got {overlap}")


def plan_windows(num_frames: int, size: int, overlap: int) -> list[range]:
    """Overlapping windows of ``size`` frames covering every frame (one shorter window if N < size)."""
    _check_windows(num_frames, size, overlap)
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


def uniform_windows(num_frames: int, size: int, overlap: int) -> list[list[int]]:
    """Moore-AnimateAnyone's ``uniform()`` context schedule called with step 0, stride 1 and a closed
    loop: windows of ``size`` frames starting at 0, ``size - overlap``, ... (< ``num_frames``); a window that
    runs past the end wraps around to frame 0. One window of every frame when ``num_frames <= size``."""
    _check_windows(num_frames, size, overlap)
    if num_frames <= size:
        return [list(range(num_frames))]
    return [[(s + k) % num_frames for k in range(size)] for s in range(0, num_frames, size - overlap)]


def open_uniform_windows(num_frames: int, size: int, overlap: int) -> list[list[int]]:
    """The same ``uniform()`` schedule without the closed loop: windows start at 0, ``size - overlap``, ... while the
    start is below ``num_frames - overlap``; a frame index past the end is reflected to ``num_frames - 2 - e % num_frames``.
    When ``num_frames`` is a whole number of windows ((k - 1) x (size - overlap) + size) they tile it exactly."""
    _check_windows(num_frames, size, overlap)
    if num_frames <= size:
        return [list(range(num_frames))]
    return [[e if e < num_frames else num_frames - 2 - e % num_frames for e in range(s, s + size)]
            for s in range(0, num_frames - overlap, size - overlap)]


def context_schedule(num_frames: int, size: int, overlap: int, *, schedule: str = "ramp", shift_per_step: int = 0):
    """The context windows of every denoising step: ``plan(step) -> [(frame indices, blend weights), ...]``.

    ``schedule``: "ramp" (:func:`plan_windows` blended with :func:`window_weights`), "uniform"
    (:func:`uniform_windows`, equal weights) or "uniform-open" (:func:`open_uniform_windows`, equal weights).
    Every window moves ``shift_per_step`` frames forward per step,
    wrapping around the sequence (frame indices stay distinct within a window).
    """
    if schedule in ("uniform", "uniform-open"):
        base = (uniform_windows if schedule == "uniform" else open_uniform_windows)(num_frames, size, overlap)
        blends = [torch.ones(len(w)) for w in base]
    elif schedule == "ramp":
        base = [list(w) for w in plan_windows(num_frames, size, overlap)]
        blends = [window_weights(len(w), overlap if len(base) > 1 else 0) for w in base]
    else:
        raise ValueError(f"context schedule must be ramp, uniform or uniform-open, got {schedule!r}")

    def plan(step: int) -> list[tuple[list[int], torch.Tensor]]:
        shift = step * shift_per_step
        return [([(f + shift) % num_frames for f in w], b) for w, b in zip(base, blends)]

    return plan


def frame_indices(start: int, count: int, total: int) -> torch.Tensor:
    """Indices ``start .. start+count-1`` clamped to the sequence (pads a short last clip)."""
    return torch.arange(start, start + count).clamp(max=total - 1)

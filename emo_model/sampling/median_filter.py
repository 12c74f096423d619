"""A median filter over (time, y, x) on finished frames, streamed clip by clip (InferenceQuirks.output_median_filter).

Every output value is the median of the k x k x k block around it in the same channel, with the video reflected at
its edges (in time: frame -1 is frame 1, frame N is frame N-2; a one-frame video reads itself). Frames are handed on
as soon as the frames after them are known, so memory holds k frames, not the video.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def _median_frame(block: torch.Tensor, k: int) -> torch.Tensor:
    """``block`` [k, H, W, C] (frames t-r .. t+r) -> the filtered frame t [H, W, C]."""
    r = k // 2
    x = block.permute(3, 0, 1, 2).float()  # [C, k, H, W]
    c, _, h, w = x.shape
    x = F.pad(x, (r, r, r, r), mode="reflect" if min(h, w) > r else "replicate")
    x = x.unfold(2, k, 1).unfold(3, k, 1)  # [C, k, H, W, k, k]
    x = x.permute(0, 2, 3, 1, 4, 5).reshape(c, h, w, k * k * k)
    return x.median(dim=-1).values.permute(1, 2, 0).to(block.dtype)


class MedianFilter:
    """``push(frames)`` with each clip's frames [n, H, W, C] in order, then ``close()``; ``sink`` receives the filtered
    frames in the same order (in other batch sizes)."""

    def __init__(self, size: int, sink: Callable[[torch.Tensor], None]):
        if size < 1 or size % 2 == 0:
            raise ValueError(f"the median filter's size must be odd, got {size}")
        self.k, self.r, self.sink = size, size // 2, sink
        self.frames: dict[int, torch.Tensor] = {}  # by frame index: the ones still needed
        self.total = 0  # frames pushed
        self.next = 0  # the next frame to hand on

    def _frame(self, i: int, count: int) -> torch.Tensor:
        i = -i if i < 0 else i  # reflected at the start
        i = 2 * (count - 1) - i if i >= count else i  # and at the end (only once the end is known)
        return self.frames[min(max(i, 0), count - 1)]

    def _hand_on(self, upto: int, count: int) -> None:
        out = []
        while self.next < upto:
            t = self.next
            out.append(_median_frame(torch.stack([self._frame(i, count) for i in range(t - self.r, t + self.r + 1)]), self.k))
            self.next += 1
        for i in [i for i in self.frames if i < self.next - self.r]:
            del self.frames[i]
        if out:
            self.sink(torch.stack(out))

    def push(self, clip: torch.Tensor) -> None:
        for frame in clip.unbind(0):
            self.frames[self.total] = frame
            self.total += 1
        self._hand_on(self.total - self.r, self.total)

    def close(self) -> None:
        """Hands on the last frames (reflected at the video's end)."""
        self._hand_on(self.total, self.total)


def median_filter_video(frames: torch.Tensor, size: int) -> torch.Tensor:
    """The whole video [N, H, W, C] filtered at once (the same values as streaming it)."""
    out: list[torch.Tensor] = []
    f = MedianFilter(size, out.append)
    f.push(frames)
    f.close()
    return torch.cat(out)

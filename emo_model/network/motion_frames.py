"""Motion frames (paper §3.2): continuity from one clip to the next.

The last ``n`` generated frames of the previous clip go through the ReferenceNet once per clip; its
banked self-attention inputs at every spatial transformer are the "multi-resolution motion feature
maps". Before each temporal module that follows a spatial transformer, the backbone's features are
concatenated with the motion features of that block along the frame axis (motion frames first), the
temporal module attends over ``n + f`` frames, and the motion frames are removed again, so the output
always has exactly the clip's ``f`` frames. Temporal modules at resolutions without spatial
transformers (SD1.5's lowest level) have no ReferenceNet features and see only the clip.

An original that runs its UNet in the gradient-checkpointing training branch at inference does the same,
except that in that branch the temporal modules of the lowest level, which has no spatial transformer,
never run (``InferenceQuirks.temporal_in_plain_blocks``; the family module names the original).

First clip: EMO uses zero feature maps; some families feed the portrait itself as the motion frames
(``first_clip_motion`` = "zeros" / "reference" in the family preset).
"""

from __future__ import annotations

from typing import Callable

import torch

from .context import ReferenceBank


def first_clip_motion(bank: ReferenceBank, n: int, mode: str) -> dict[str, torch.Tensor] | None:
    """Motion features for the first clip: zero maps, or the portrait's own features repeated."""
    if n <= 0:
        return None
    if mode == "zeros":
        return {k: torch.zeros_like(v).unsqueeze(1).expand(-1, n, -1, -1) for k, v in bank.tokens.items()}
    if mode == "reference":
        return {k: v.unsqueeze(1).expand(-1, n, -1, -1) for k, v in bank.tokens.items()}
    raise ValueError(f"first_clip_motion must be 'zeros' or 'reference', got {mode!r}")


def with_motion_frames(
    temporal: Callable[[torch.Tensor, int], torch.Tensor],
    x: torch.Tensor,
    frames: int,
    motion: torch.Tensor | None,
) -> torch.Tensor:
    """Run ``temporal(x, frames)`` with the motion features prepended along the frame axis.

    ``x``: [b*f, c, h, w] (frames folded into the batch). ``motion``: [b or 1, n, h*w, c] from the
    ReferenceNet bank of the preceding spatial transformer, or None. Returns [b*f, c, h, w].
    """
    if motion is None or motion.shape[1] == 0:
        return temporal(x, frames)
    bf, c, h, w = x.shape
    b, n = bf // frames, motion.shape[1]
    if motion.shape[2] != h * w or motion.shape[3] != c:
        raise ValueError(f"motion features {tuple(motion.shape)} do not match features {tuple(x.shape)}")
    m = motion.to(x.dtype).expand(b, -1, -1, -1).transpose(2, 3).reshape(b, n, c, h, w)
    joined = torch.cat([m, x.view(b, frames, c, h, w)], dim=1).reshape(b * (n + frames), c, h, w)
    out = temporal(joined, n + frames)
    return out.view(b, n + frames, c, h, w)[:, n:].reshape(bf, c, h, w)

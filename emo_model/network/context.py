"""The forward context: what one pass of the ReferenceNet or the backbone carries beside the feature map.

Shared by every network block (attention, audio layers, temporal modules, motion frames, the UNet skeleton), so it
imports none of them: the attention it projects reference tokens with is anything with ``project_kv``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F

KV = tuple[torch.Tensor, torch.Tensor]


class ProjectsKV(Protocol):
    """An attention layer that projects reference tokens to its keys and values."""

    def project_kv(self, tokens: torch.Tensor) -> KV: ...


@dataclass
class ReferenceBank:
    """What the ReferenceNet hands to the backbone: the self-attention inputs of every block.

    ``tokens[key]``: [B, L, C] for the reference image (B = 1 per video). ``motion[key]``: [B, n, L, C]
    for the n motion frames of the current clip (None for the first clip or without motion frames).
    Keys are the spatial transformers' module paths (``down_blocks.0.attentions.1``), identical in
    the ReferenceNet and the backbone.
    """

    tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    motion: dict[str, torch.Tensor] | None = None

    def to(self, device=None, dtype=None) -> "ReferenceBank":
        conv = lambda d: None if d is None else {k: v.to(device=device, dtype=dtype) for k, v in d.items()}  # noqa: E731
        return ReferenceBank(conv(self.tokens), conv(self.motion))


@dataclass
class ForwardContext:
    """Everything one forward pass needs beyond the feature map and the time embedding."""

    frames: int = 1
    bank: dict[str, torch.Tensor] | None = None  # ReferenceNet (write mode): collects norm1(x) per block
    reference: ReferenceBank | None = None  # backbone (read mode)
    reference_kv_cache: dict[str, KV] | None = None  # projected reference keys/values, per block
    reference_rows: torch.Tensor | None = None  # long [B*F]: the bank row each token sequence reads (None: row 0 / all)
    reference_enabled: torch.Tensor | None = None  # bool [B]: rows without reference-attention (uncond)
    cross_context: torch.Tensor | None = None  # attn2 tokens, [B*F, T, D]
    audio_context: torch.Tensor | None = None  # region audio-module tokens, [B*F, T, D]
    # (full, face, lip) masks, [B, 3, H, W]; or {(h, w): [B, 3, h, w]}: given per feature-map size (the others pooled)
    region_masks: torch.Tensor | dict | None = None
    motion_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    speed_tokens: torch.Tensor | None = None  # [B or 1, n + F, l]
    temporal: bool = True
    temporal_in_plain_blocks: bool = True  # InferenceQuirks: temporal modules in levels without attention
    cross_attention_scale: float = 1.0  # InferenceQuirks.audio_attention_scale (backbone attn2 output)
    reference_attention_scale: float = 1.0  # InferenceQuirks.reference_attention_scale (a separate reference attention)
    unconditional_reference_zeros: bool = False  # InferenceQuirks.unconditional_reference == "zeros"
    bank_after_self_attention: bool = False  # ReferenceNet (write mode): bank norm2(x) after the self-attention
    bank_plain_blocks: bool = False  # ReferenceNet (write mode): also bank the resnet outputs of levels without attention
    audio_stream: torch.Tensor | None = None  # emotion audio modules: the audio tokens handed from module to module
    emotion: torch.Tensor | None = None  # long [B]: emotion class per video (emotion audio modules)
    memory: dict | None = None  # memory-guided temporal modules: the caller's memory (one per video batch)
    update_memory: bool = False  # fold the past frames into the memory in this call
    _masks: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    def reference_kv(self, key: str, attn: ProjectsKV) -> KV | None:
        if self.reference_kv_cache is not None and key in self.reference_kv_cache:
            kv = self.reference_kv_cache[key]
        elif self.reference is None or key not in self.reference.tokens:
            return None
        else:
            kv = attn.project_kv(self.reference.tokens[key])
        if self.reference_rows is not None:  # one bank row per token sequence
            rows = self.reference_rows.to(kv[0].device)
            kv = (kv[0][rows], kv[1][rows])
        return kv

    def motion(self, key: str) -> torch.Tensor | None:
        if self.reference is None or self.reference.motion is None:
            return None
        return self.reference.motion.get(key)

    def past_frames(self, key: str, x: torch.Tensor) -> torch.Tensor | None:
        """The past frames' features at ``key`` as [b*n, c, h, w] for features ``x`` [b*f, c, h, w]."""
        past = self.motion(key)
        if past is None:
            return None
        b = x.shape[0] // self.frames
        past = past.to(x.dtype).expand(b, *past.shape[1:])
        n, (c, h, w) = past.shape[1], x.shape[1:]
        if past.dim() == 4:  # banked tokens [b, n, h*w, c]
            past = past.transpose(2, 3)
        return past.reshape(b * n, c, h, w)

    def speed_for(self, frames: int) -> torch.Tensor | None:
        return None if self.speed_tokens is None else self.speed_tokens[:, -frames:]

    def region_masks_at(self, h: int, w: int, dtype: torch.dtype) -> torch.Tensor | None:
        """Region masks resized to an h x w feature map, one row per frame: [B*F, 3, h*w]."""
        if self.region_masks is None:
            return None
        if (h, w) not in self._masks:
            given = self.region_masks if isinstance(self.region_masks, dict) else {None: self.region_masks}
            m = given.get((h, w))  # masks made at this size (an original's own resizing) are used as they are
            if m is None:
                m = F.interpolate(max(given.values(), key=lambda t: t.shape[-1]).float(), size=(h, w), mode="area")
            m = m.float().flatten(2)
            self._masks[(h, w)] = m.repeat_interleave(self.frames, dim=0).to(dtype)
        return self._masks[(h, w)]

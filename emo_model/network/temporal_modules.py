"""Temporal modules (paper §3.2): AnimateDiff-v2 motion modules at every resolution of the backbone.

A feature map ``x`` of shape (b, c, f, h, w) is viewed as (b*h*w) sequences of f frames and
self-attention runs along the frame axis (twice, "Temporal_Self" x 2), followed by a GEGLU FF. The
key layout is AnimateDiff v2's (``motion_modules.N.temporal_transformer.transformer_blocks.0
.attention_blocks.{0,1}``, ``norms``, ``ff``, ``ff_norm``, ``pos_encoder.pe`` buffer of length 32), which
the open family members all share, so ``mm_sd_v15_v2.ckpt`` initialises them.

Motion frames (:mod:`emo_model.network.motion_frames`) are prepended along the frame axis before the module
and removed after it. EMO's speed layers (:mod:`emo_model.network.speed_layers`) add one more cross-attention
inside each temporal block, from the frames to the clip's speed tokens.

Inside a module the tensor is transposed once to (b*h*w, f, c) and every per-token operation
(LayerNorm, FF, projections) runs in that layout; AnimateDiff rearranges around each attention
instead, which computes the same thing with more copies.
"""

from __future__ import annotations

import torch
from diffusers.models.attention import FeedForward
from torch import nn

from ..configs import SpeedConfig, TemporalConfig
from .attention import Attention, sinusoidal_positions
from .speed_layers import SpeedAttention


class PositionalEncoding(nn.Module):
    def __init__(self, dim: int, max_len: int):
        super().__init__()
        self.register_buffer("pe", sinusoidal_positions(max_len, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.pe.shape[1]:
            raise ValueError(
                f"temporal modules see {x.shape[1]} frames (clip + motion frames) but were built for at most "
                f"{self.pe.shape[1]}; lower frames per clip or motion frames"
            )
        return x + self.pe[:, : x.shape[1]].to(x.dtype)


class TemporalAttention(Attention):
    """Self-attention along the frame axis, with sinusoidal frame positions added to its input."""

    def __init__(self, dim: int, heads: int, max_len: int):
        super().__init__(dim, None, heads, dim // heads)
        self.pos_encoder = PositionalEncoding(dim, max_len)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [b*h*w, f, c]
        return super().forward(self.pos_encoder(x))


class TemporalBlock(nn.Module):
    def __init__(self, dim: int, cfg: TemporalConfig, speed: SpeedConfig | None):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            [TemporalAttention(dim, cfg.heads, cfg.max_len) for _ in range(cfg.attention_blocks)]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(cfg.attention_blocks)])
        if speed is not None:
            self.speed_norm = nn.LayerNorm(dim)
            self.speed_attn = SpeedAttention(dim, speed.embed_dim, cfg.heads, cfg.max_len)
        else:
            self.speed_norm = self.speed_attn = None
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, batch: int, speed_tokens: torch.Tensor | None) -> torch.Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = x + attention(norm(x))
        if self.speed_attn is not None and speed_tokens is not None:
            x = x + self.speed_attn(self.speed_norm(x), speed_tokens, batch)
        return x + self.ff(self.ff_norm(x))


class TemporalTransformer(nn.Module):
    def __init__(self, channels: int, cfg: TemporalConfig, speed: SpeedConfig | None):
        super().__init__()
        self.norm = nn.GroupNorm(cfg.norm_num_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList([TemporalBlock(channels, cfg, speed) for _ in range(cfg.num_blocks)])
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)  # AnimateDiff's zero_initialize: a new module is an identity
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, frames: int, speed_tokens: torch.Tensor | None) -> torch.Tensor:
        """``x``: [b*f, c, h, w] -> same shape, attention along f."""
        bf, c, h, w = x.shape
        b = bf // frames
        t = self.norm(x).permute(0, 2, 3, 1).reshape(b, frames, h * w, c)
        t = self.proj_in(t).transpose(1, 2).reshape(b * h * w, frames, c)
        for block in self.transformer_blocks:
            t = block(t, b, speed_tokens)
        t = self.proj_out(t).reshape(b, h * w, frames, c).transpose(1, 2)
        # x first: the sum takes x's (standard) layout, not the permuted view's channels-last strides, which would
        # make every following convolution convert its weight to channels-last on each call
        return x + t.reshape(bf, h, w, c).permute(0, 3, 1, 2)


class TemporalModule(nn.Module):
    """One AnimateDiff motion module (``motion_modules.N``)."""

    def __init__(self, channels: int, cfg: TemporalConfig, speed: SpeedConfig | None = None):
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, cfg, speed)

    def forward(self, x: torch.Tensor, frames: int, speed_tokens: torch.Tensor | None = None) -> torch.Tensor:
        return self.temporal_transformer(x, frames, speed_tokens)

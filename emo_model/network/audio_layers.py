"""Audio layers (paper §3.2): cross-attention from the latent code to the frame's audio tokens.

Two layouts exist in the family:

* **Through the cross-attention slot** (EMO as we build it, and families with audio tokens in attn2): ``attn2`` of every spatial
  transformer block reads the frame's audio tokens, right after reference-attention. That layer is
  :class:`emo_model.network.attention.TransformerBlock`'s ``attn2``; nothing in this file is needed.
* **Region audio modules** (:class:`AudioModule`, ``audio_modules.N`` after each spatial transformer):
  a small transformer whose cross-attention has three branches (``attn2_0/1/2``) for the full image,
  the face and the lips. Each branch's output is multiplied by its region mask, passed through a
  zero-initialised 1x1 conv and added with a weight (the pose / face / lip weights).

The published checkpoints with these modules build them narrower than their blocks in places (the attention
width is the block's *input* width on the encoder path and the skip width on the decoder path;
``proj_in``/``proj_out`` map between the two). :func:`audio_module_width` reproduces that rule so their
weights load.
"""

from __future__ import annotations

import torch
from diffusers.models.attention import FeedForward
from torch import nn

from .attention import Attention
from .context import ForwardContext

REGIONS = ("full", "face", "lip")


def audio_module_width(heads: int, channels: int) -> int:
    """The modules' attention width: ``heads`` heads of ``channels // heads``."""
    return heads * (channels // heads)


def zero_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class AudioBlock(nn.Module):
    """Self-attention, three region-masked audio cross-attentions, FF."""

    def __init__(self, dim: int, heads: int, audio_dim: int):
        super().__init__()
        self.zero_conv_full = zero_conv(dim)
        self.zero_conv_face = zero_conv(dim)
        self.zero_conv_lip = zero_conv(dim)
        self.attn1 = Attention(dim, None, heads, dim // heads)
        self.norm1 = nn.LayerNorm(dim)
        self.attn2_0 = Attention(dim, audio_dim, heads, dim // heads)
        self.attn2_1 = Attention(dim, audio_dim, heads, dim // heads)
        self.attn2_2 = Attention(dim, audio_dim, heads, dim // heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int, ctx: ForwardContext) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        n = self.norm2(x)
        masks = ctx.region_masks_at(h, w, x.dtype)  # [B*F, 3, h*w] or None (whole image)
        branches = zip((self.attn2_0, self.attn2_1, self.attn2_2), (self.zero_conv_full, self.zero_conv_face, self.zero_conv_lip))
        b, _, c = x.shape
        for i, (attn, conv) in enumerate(branches):
            y = attn(n, ctx.audio_context)
            if masks is not None:
                y = y * masks[:, i, :, None]
            y = conv(y.transpose(1, 2).reshape(b, c, h, w)).reshape(b, c, h * w).transpose(1, 2)
            x = x + ctx.motion_scale[i] * y
        return x + self.ff(self.norm3(x))


class AudioModule(nn.Module):
    """``audio_modules.N``: GroupNorm, 1x1 conv in, :class:`AudioBlock`, 1x1 conv out, residual."""

    def __init__(self, channels: int, width: int, heads: int, audio_dim: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, width, 1)
        self.transformer_blocks = nn.ModuleList([AudioBlock(width, heads, audio_dim)])
        self.proj_out = nn.Conv2d(width, channels, 1)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        if ctx.audio_context is None:
            return x
        b, _, h, w = x.shape
        t = self.proj_in(self.norm(x))
        width = t.shape[1]
        t = t.permute(0, 2, 3, 1).reshape(b, h * w, width)
        for block in self.transformer_blocks:
            t = block(t, h, w, ctx)
        return x + self.proj_out(t.reshape(b, h, w, width).permute(0, 3, 1, 2))  # x first: keeps x's layout (see temporal_modules)

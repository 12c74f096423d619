"""Emotion-conditioned joint audio attention: audio tokens and image tokens attend to each other.

An audio module (``audio_modules.N``, after each spatial transformer) in which the frame's audio tokens are a
second stream that is updated alongside the image tokens and handed on to the next audio module of the
network, and every normalisation before an attention is an adaptive LayerNorm driven by an emotion class.

Block (``transformer_blocks.0``), image tokens ``h`` ([B*F, L, D]), audio tokens ``a`` ([B*F, M, A]),
emotion class ``e`` per video (the last row of each table, index ``num_emotions``, is the "no emotion"
class the unconditional guidance branch uses)::

    h = h + attn1(norm1(h, e))                     # self-attention of the image tokens
    a = a + audio_attn1(audio_norm1(a, e))         # self-attention of the audio tokens (width A -> D -> A)
    h', a' = attn2(norm2(h, e), audio_norm2(a, e)) # joint attention over the L + M tokens
    h = h + h';  a = a + a'                        # (a' = to_add_out(...); absent in the last module)
    h = h + ff(norm3(h));  a = a + audio_ff(audio_norm3(a))

Adaptive norm (``norm1``, ``norm2``, ``audio_norm1``, ``audio_norm2``)::

    shift, scale = adaLN_modulation(class_embedder.embedding_table[e]).chunk(2)   # Sequential(SiLU, Linear)
    y = LayerNorm(x, no affine, eps 1e-5) * (1 + scale) + shift

Joint attention (``attn2``): queries, keys and values of both streams are concatenated along the token axis
(``to_q/k/v`` for the image tokens, ``add_q/k/v_proj`` for the audio tokens), one softmax attention (SDPA)
over all L + M tokens, then split: ``to_out.0`` for the image part, ``to_add_out`` for the audio part.

Around the block (module level): GroupNorm, 1x1 conv ``proj_in`` (channels -> D), the block, ``proj_out``
(D -> channels) plus the input. The audio stream leaves the module as ``block output + module input``: the
input audio tokens are added a second time (the block's own residuals already contain them once). The last
module of the network (``last=True``) has no ``to_add_out``, ``audio_ff`` or ``audio_norm3`` and hands no
audio on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from torch import nn

from .attention import Attention


class EmotionAdaptiveNorm(nn.Module):
    """LayerNorm without affine, scaled and shifted per video by an embedding of its emotion class."""

    def __init__(self, dim: int, num_emotions: int):
        super().__init__()
        self.class_embedder = nn.Module()
        self.class_embedder.embedding_table = nn.Embedding(num_emotions + 1, dim)  # + the "no emotion" row
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-5)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, emotion: torch.Tensor) -> torch.Tensor:
        """``x``: [B*F, L, dim]; ``emotion``: int64 [B] (one class per video / guidance branch)."""
        shift, scale = self.adaLN_modulation(self.class_embedder.embedding_table(emotion)).chunk(2, dim=-1)
        rows = x.shape[0] // emotion.shape[0]
        scale = scale.repeat_interleave(rows, dim=0)[:, None]
        shift = shift.repeat_interleave(rows, dim=0)[:, None]
        return self.norm(x) * (1 + scale) + shift


class JointAttention(nn.Module):
    """Softmax attention over the concatenation of two token streams, each with its own projections."""

    def __init__(self, dim: int, context_dim: int, heads: int, context_out: bool = True):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.add_k_proj = nn.Linear(context_dim, dim)
        self.add_v_proj = nn.Linear(context_dim, dim)
        self.add_q_proj = nn.Linear(context_dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.to_add_out = nn.Linear(dim, context_dim) if context_out else None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x``: [B, L, dim], ``context``: [B, M, context_dim] -> (image part [B, L, dim], audio part or None)."""
        q = torch.cat([self.to_q(x), self.add_q_proj(context)], dim=1)
        k = torch.cat([self.to_k(x), self.add_k_proj(context)], dim=1)
        v = torch.cat([self.to_v(x), self.add_v_proj(context)], dim=1)
        out = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))
        b, _, n, _ = out.shape
        out = out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        length = x.shape[1]
        image = self.to_out[0](out[:, :length])
        audio = self.to_add_out(out[:, length:]) if self.to_add_out is not None else None
        return image, audio


class EmotionAudioBlock(nn.Module):
    """The block of an emotion-conditioned joint audio module (see the module docstring)."""

    def __init__(self, dim: int, heads: int, audio_dim: int, num_emotions: int, last: bool = False):
        super().__init__()
        self.last = last
        self.norm1 = EmotionAdaptiveNorm(dim, num_emotions)
        self.attn1 = Attention(dim, None, heads, dim // heads)
        self.audio_norm1 = EmotionAdaptiveNorm(audio_dim, num_emotions)
        self.audio_attn1 = Attention(audio_dim, None, heads, dim // heads)
        self.norm2 = EmotionAdaptiveNorm(dim, num_emotions)
        self.audio_norm2 = EmotionAdaptiveNorm(audio_dim, num_emotions)
        self.attn2 = JointAttention(dim, audio_dim, heads, context_out=not last)
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.norm3 = nn.LayerNorm(dim)
        if not last:
            self.audio_ff = FeedForward(audio_dim, activation_fn="geglu")
            self.audio_norm3 = nn.LayerNorm(audio_dim)

    def forward(
        self, x: torch.Tensor, audio: torch.Tensor, emotion: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = x + self.attn1(self.norm1(x, emotion))
        audio = audio + self.audio_attn1(self.audio_norm1(audio, emotion))
        joint_x, joint_audio = self.attn2(self.norm2(x, emotion), self.audio_norm2(audio, emotion))
        x = x + joint_x
        x = x + self.ff(self.norm3(x))
        if self.last:
            return x, None
        audio = audio + joint_audio
        return x, audio + self.audio_ff(self.audio_norm3(audio))


class EmotionAudioModule(nn.Module):
    """``audio_modules.N``: GroupNorm, 1x1 conv in (channels -> width), :class:`EmotionAudioBlock`, 1x1 conv
    out, residual; returns the new feature map and the audio tokens for the next module (None if ``last``)."""

    def __init__(
        self, channels: int, width: int, heads: int, audio_dim: int, groups: int, num_emotions: int, last: bool = False
    ):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, width, 1)
        self.transformer_blocks = nn.ModuleList([EmotionAudioBlock(width, heads, audio_dim, num_emotions, last)])
        self.proj_out = nn.Conv2d(width, channels, 1)

    def forward(
        self, x: torch.Tensor, audio: torch.Tensor, emotion: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x``: [B*F, channels, h, w]; ``audio``: [B*F, M, audio_dim] (or [B, F, M, audio_dim]);
        ``emotion``: int64 [B] (or a scalar: the same class for every row)."""
        if audio.dim() == 4:
            audio = audio.flatten(0, 1)
        if emotion.dim() == 0:
            emotion = emotion[None]
        if x.shape[0] % emotion.shape[0] or audio.shape[0] != x.shape[0]:
            raise ValueError(
                f"audio module: {x.shape[0]} frames, {audio.shape[0]} audio rows and {emotion.shape[0]} emotion "
                "classes do not match (one audio row per frame, one class per video)"
            )
        b, _, h, w = x.shape
        t = self.proj_in(self.norm(x))
        width = t.shape[1]
        t = t.permute(0, 2, 3, 1).reshape(b, h * w, width)
        a = audio
        for block in self.transformer_blocks:
            t, a = block(t, a, emotion)
        out = x + self.proj_out(t.reshape(b, h, w, width).permute(0, 3, 1, 2))  # x first: keeps x's layout
        return out, (None if a is None else a + audio)

"""Memory-guided temporal modules: linear attention along the frame axis with a decaying memory of past frames.

A drop-in variant of the AnimateDiff motion module (:mod:`emo_model.network.temporal_modules`) with the same key
layout (``temporal_transformer.{norm, proj_in, transformer_blocks.N.{attention_blocks.{0,1}, norms, ff,
ff_norm}, proj_out}``, ``pos_encoder.pe`` of length 32), but each temporal attention is a *linear* attention
whose keys/values also include a running memory built from the features of already generated frames (the
"past frames"), so the motion of a long video stays consistent across clips.

For one attention (per token position, per head; ``d`` = head width, softmax'd features are positive):

* own frames ``t = 1..F`` (after LayerNorm and the sinusoidal frame positions):
  ``q_t = softmax_d(W_q x_t) * d**-0.5``, ``k_t = softmax_over_frames(W_k x_t)``, ``v_t = W_v x_t``;
* past frames ``j = 1..N`` (LayerNorm'd, *no* positions; queries unused):
  ``m_j = softmax_over_past_frames(W_k p_j)``, ``u_j = W_v p_j``;
* memory update (when asked to: once per clip, when the clip's past frames are new):
  with ``w_j = gamma ** (N - j)`` (the newest past frame weighs 1),
  ``KV_new = sum_j (w_j m_j) (w_j u_j)^T`` (so each past frame enters with ``w_j**2``), ``Z_new = sum_j w_j m_j``;
  ``memory = KV_new`` for the first clip, else ``memory * gamma**N + KV_new`` (same for ``Z``);
* read: ``KV = gamma * memory_KV + sum_t k_t v_t^T``, ``Z = gamma * memory_Z + sum_t k_t``,
  ``out_t = (q_t KV) / max(q_t . Z, 1e-10)``, then ``to_out``.

``gamma`` is :attr:`MemoryTemporalModule.decay` (0.9). Past frames enter every attention block of every
transformer block as the same ``proj_in`` output (they are not updated by the blocks); only each attention's
own LayerNorm is applied to them.

The memory lives outside the module, in a plain dict the caller owns (one per video and guidance layout),
keyed by the attention layers, so one set of weights can serve several videos. Call with
``update_memory=True`` and the clip's past-frame features at the first denoising step of each clip (a fresh
dict for the first clip), and ``update_memory=False`` at the other steps.
"""

from __future__ import annotations

import torch
from diffusers.models.attention import FeedForward
from torch import nn

from ..configs import TemporalConfig
from .temporal_modules import PositionalEncoding

Memory = dict  # attention layer -> (KV [B, heads, d, d], Z [B, heads, 1, d])


class MemoryLinearAttention(nn.Module):
    """Linear self-attention along frames with a decaying memory (diffusers key names, no q/k/v bias)."""

    def __init__(self, dim: int, heads: int, max_len: int, decay: float):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.decay = decay
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.pos_encoder = PositionalEncoding(dim, max_len)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, heads * d] -> [B, heads, L, d]"""
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    @torch.no_grad()
    def fold_past(self, past: torch.Tensor, memory: Memory) -> None:
        """Fold the past frames ``past`` ([B, N, C], LayerNorm'd) into ``memory[self]``."""
        n = past.shape[1]
        k = self._heads(self.to_k(past)).softmax(dim=-2)
        v = self._heads(self.to_v(past))
        w = self.decay ** torch.arange(n - 1, -1, -1, device=past.device, dtype=k.dtype)
        k, v = k * w[:, None], v * w[:, None]
        kv, z = k.transpose(-1, -2) @ v, k.sum(dim=-2, keepdim=True)
        if self in memory:
            old_kv, old_z = memory[self]
            kv, z = old_kv * self.decay**n + kv, old_z * self.decay**n + z
        memory[self] = (kv, z)

    def forward(self, x: torch.Tensor, memory: Memory) -> torch.Tensor:
        """``x``: [B, F, C] (LayerNorm'd frames of one token position) -> [B, F, C]."""
        x = self.pos_encoder(x)
        q = self._heads(self.to_q(x)).softmax(dim=-1) * self.head_dim**-0.5
        k = self._heads(self.to_k(x)).softmax(dim=-2)
        v = self._heads(self.to_v(x))
        kv, z = k.transpose(-1, -2) @ v, k.sum(dim=-2, keepdim=True)
        if self in memory:
            old_kv, old_z = memory[self]
            kv, z = kv + self.decay * old_kv, z + self.decay * old_z
        out = (q @ kv) / (q @ z.transpose(-1, -2)).clamp(min=1e-10)
        b, _, f, _ = out.shape
        return self.to_out[0](out.transpose(1, 2).reshape(b, f, self.heads * self.head_dim))


class MemoryTemporalBlock(nn.Module):
    def __init__(self, dim: int, cfg: TemporalConfig, decay: float):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            [MemoryLinearAttention(dim, cfg.heads, cfg.max_len, decay) for _ in range(cfg.attention_blocks)]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(cfg.attention_blocks)])
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, past: torch.Tensor | None, memory: Memory, update: bool) -> torch.Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms):
            if update and past is not None:
                attention.fold_past(norm(past), memory)
            x = x + attention(norm(x), memory)
        return x + self.ff(self.ff_norm(x))


class MemoryTemporalTransformer(nn.Module):
    def __init__(self, channels: int, cfg: TemporalConfig, decay: float):
        super().__init__()
        self.norm = nn.GroupNorm(cfg.norm_num_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [MemoryTemporalBlock(channels, cfg, decay) for _ in range(cfg.num_blocks)]
        )
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)  # a new module starts as an identity
        nn.init.zeros_(self.proj_out.bias)

    def _sequences(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """[b*f, c, h, w] -> proj_in(GroupNorm(x)) as [b*h*w, f, c]."""
        bf, c, h, w = x.shape
        b = bf // frames
        t = self.norm(x).permute(0, 2, 3, 1).reshape(b, frames, h * w, c)
        return self.proj_in(t).transpose(1, 2).reshape(b * h * w, frames, c)

    def forward(
        self, x: torch.Tensor, frames: int, past: torch.Tensor | None, past_frames: int, memory: Memory, update: bool
    ) -> torch.Tensor:
        bf, c, h, w = x.shape
        b = bf // frames
        t = self._sequences(x, frames)
        p = self._sequences(past, past_frames) if (update and past is not None) else None
        for block in self.transformer_blocks:
            t = block(t, p, memory, update)
        t = self.proj_out(t).reshape(b, h * w, frames, c).transpose(1, 2)
        return x + t.reshape(bf, h, w, c).permute(0, 3, 1, 2)  # x first: keeps x's layout (see temporal_modules)


class MemoryTemporalModule(nn.Module):
    """One memory-guided motion module (``motion_modules.N``; AnimateDiff key names)."""

    def __init__(self, channels: int, cfg: TemporalConfig, decay: float = 0.9):
        super().__init__()
        self.decay = decay
        self.temporal_transformer = MemoryTemporalTransformer(channels, cfg, decay)

    def forward(
        self,
        x: torch.Tensor,
        frames: int,
        past: torch.Tensor | None = None,
        memory: Memory | None = None,
        update_memory: bool = False,
    ) -> torch.Tensor:
        """``x``: [b*f, c, h, w]; ``past``: [b*n, c, h, w] features of the n past frames at this module's place
        (read only when ``update_memory``); ``memory``: the caller's dict (None: an empty, discarded one)."""
        if update_memory and past is not None and past.shape[0] % (x.shape[0] // frames):
            raise ValueError(f"past frames: {past.shape[0]} rows do not split into {x.shape[0] // frames} videos")
        b = x.shape[0] // frames
        n = past.shape[0] // b if past is not None else 0
        return self.temporal_transformer(x, frames, past, n, {} if memory is None else memory, update_memory)

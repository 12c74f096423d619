"""Attention: the SDPA primitive, and the spatial transformer where reference- and audio-attention live.

Every attention in the model goes through :func:`torch.nn.functional.scaled_dot_product_attention`
(flash / memory-efficient kernels on GPU, fp32/fp16/bf16). Modules keep the diffusers key layout
(``to_q``, ``to_k``, ``to_v``, ``to_out.0``) so SD1.5, AnimateDiff and the open family's weights load
without renaming.

Reference-attention (paper §3.2, "Backbone Network"): the ReferenceNet banks the input of every
self-attention (``norm1(x)``); the backbone's self-attention of the same block then uses keys/values
``cat([own tokens, reference tokens])`` (token-axis concatenation, as every open member of the family
does). Because ``to_k``/``to_v`` act token-wise, ``to_k(cat(x, r)) == cat(to_k(x), to_k(r))``: the
reference keys/values are projected once per video (:meth:`Attention.project_kv`) and reused for every
frame, step, clip and guidance branch.

Audio-attention: in the ``emo`` layout (``cross_attention_input = "audio"``) the SD cross-attention slot
(``attn2``) reads the frame's audio tokens (EMO: "audio-attention layers ... after each ref-attention
layer"); the identity layout puts face-identity tokens there and has separate audio modules (see
:mod:`emo_model.network.audio_layers`).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from torch import nn

from .context import KV, ForwardContext


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """The transformer sine/cosine table AnimateDiff stores as ``pe``: [1, length, dim]."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, length, dim)
    pe[0, :, 0::2] = torch.sin(position * div_term)
    pe[0, :, 1::2] = torch.cos(position * div_term[: dim // 2])
    return pe


@functools.lru_cache(maxsize=64)
def cached_positions(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """:func:`sinusoidal_positions` on a device, made once (layers that do not store the table)."""
    return sinusoidal_positions(length, dim).to(device=device, dtype=dtype)


class Attention(nn.Module):
    """Multi-head attention with diffusers' parameter names, computed with SDPA."""

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8, head_dim: int = 64):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.head_dim = head_dim
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(0.0)])

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, heads * d] -> [B, heads, L, d]"""
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def project_kv(self, context: torch.Tensor) -> KV:
        """Keys and values of ``context`` ([B, L, C]) as [B, heads, L, d] each."""
        return self._heads(self.to_k(context)), self._heads(self.to_v(context))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """SDPA on head-split tensors, then the output projection. Returns [B, Lq, query_dim]."""
        out = F.scaled_dot_product_attention(q, k, v)
        b, _, n, _ = out.shape
        return self.to_out[0](out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, extra_kv: KV | None = None) -> torch.Tensor:
        """Self-attention (``context`` None) or cross-attention; ``extra_kv`` is appended to the keys/values."""
        q = self._heads(self.to_q(x))
        k, v = self.project_kv(x if context is None else context)
        if extra_kv is not None:
            ek, ev = extra_kv
            if ek.shape[0] != k.shape[0]:
                ek, ev = ek.expand(k.shape[0], -1, -1, -1), ev.expand(k.shape[0], -1, -1, -1)
            k, v = torch.cat([k, ek], dim=2), torch.cat([v, ev], dim=2)
        return self.attend(q, k, v)


def reference_attention(
    attn: Attention, x: torch.Tensor, reference_kv: KV | None, enabled: torch.Tensor | None
) -> torch.Tensor:
    """Self-attention whose keys/values also contain the banked ReferenceNet tokens.

    ``x``: [B, L, C] (frames folded into the batch). ``reference_kv``: projected reference tokens with
    batch 1 or B. ``enabled``: optional CPU bool [B]; rows where it is False attend to themselves only
    (the unconditional guidance branch, as in the originals). With no reference this is exactly
    plain self-attention. ``enabled`` is host data on purpose: deciding the split never waits for the GPU.
    """
    if enabled is not None and enabled.shape[0] != x.shape[0]:
        raise ValueError(f"reference_enabled has {enabled.shape[0]} rows for {x.shape[0]} token sequences")
    if reference_kv is None or (enabled is not None and not bool(enabled.any())):
        return attn(x)
    if enabled is None or bool(enabled.all()):
        return attn(x, extra_kv=reference_kv)
    k, v = reference_kv
    off = int((~enabled).sum())
    if not bool(enabled[:off].any()):  # the usual layout: unconditional rows first, then the rest
        if k.shape[0] != 1:
            k, v = k[off:], v[off:]
        return torch.cat([attn(x[:off]), attn(x[off:], extra_kv=(k, v))])
    out = torch.empty_like(x)
    on_rows, off_rows = enabled.nonzero().squeeze(1), (~enabled).nonzero().squeeze(1)
    if k.shape[0] != 1:
        k, v = k[on_rows.to(k.device)], v[on_rows.to(k.device)]
    out[on_rows.to(x.device)] = attn(x[on_rows.to(x.device)], extra_kv=(k, v))
    out[off_rows.to(x.device)] = attn(x[off_rows.to(x.device)])
    return out


def separate_reference_attention(
    attn: Attention, h: torch.Tensor, reference_kv: KV | None, enabled: torch.Tensor | None, zeros_unconditional: bool
) -> torch.Tensor:
    """An attention whose keys/values are the banked reference tokens only (queries: ``h`` [B, L, C]).

    Rows where ``enabled`` (CPU bool [B]) is False get no reference: 0, or with ``zeros_unconditional`` what a bank of
    zeros gives (uniform weights over zero values: the output projection's bias). With no bank at all every row is
    such a row."""
    if reference_kv is not None and (enabled is None or bool(enabled.all())):
        rows = None
    else:
        rows = None if reference_kv is None else enabled.nonzero().squeeze(1)
    if rows is None and reference_kv is not None:
        q = attn._heads(attn.to_q(h))
        k, v = reference_kv
        return attn.attend(q, k.expand(q.shape[0], -1, -1, -1), v.expand(q.shape[0], -1, -1, -1))
    bias = attn.to_out[0].bias
    out = bias.to(h.dtype).expand_as(h).clone() if zeros_unconditional else torch.zeros_like(h)
    if reference_kv is None or rows.numel() == 0:
        return out
    k, v = reference_kv
    if k.shape[0] != 1:
        k, v = k[rows.to(k.device)], v[rows.to(k.device)]
    q = attn._heads(attn.to_q(h[rows.to(h.device)]))
    out[rows.to(h.device)] = attn.attend(q, k.expand(q.shape[0], -1, -1, -1), v.expand(q.shape[0], -1, -1, -1))
    return out


class TransformerBlock(nn.Module):
    """SD1.5's BasicTransformerBlock: reference-attention, cross-attention (audio / identity), GEGLU FF.

    ``separate_reference``: the reference tokens are read by a second attention with its own weights
    (``norm1_5``/``attn1_5``) after a plain self-attention, instead of joining the self-attention's keys/values."""

    def __init__(self, dim: int, heads: int, context_dim: int | None, norm1_only: bool = False, separate_reference: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm1_only = norm1_only
        if norm1_only:  # a reference pass's last block: only its norm1 output is banked
            return
        self.attn1 = Attention(dim, None, heads, dim // heads)
        if separate_reference:
            self.norm1_5 = nn.LayerNorm(dim)
            self.attn1_5 = Attention(dim, None, heads, dim // heads)
        else:
            self.norm1_5 = self.attn1_5 = None
        if context_dim is not None:
            self.norm2 = nn.LayerNorm(dim)
            self.attn2 = Attention(dim, context_dim, heads, dim // heads)
        else:
            self.norm2 = self.attn2 = None
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")

    def forward(self, x: torch.Tensor, key: str, ctx: ForwardContext) -> torch.Tensor:
        h = self.norm1(x)
        if ctx.bank is not None and not ctx.bank_after_self_attention:  # ReferenceNet: write mode
            ctx.bank[key] = h
        if self.norm1_only:
            return x
        if self.attn1_5 is None:
            x = x + reference_attention(self.attn1, h, ctx.reference_kv(key, self.attn1), ctx.reference_enabled)
        else:
            x = x + self.attn1(h)
            y = separate_reference_attention(
                self.attn1_5, self.norm1_5(x), ctx.reference_kv(key, self.attn1_5), ctx.reference_enabled,
                ctx.unconditional_reference_zeros,
            )
            x = x + (y if ctx.reference_attention_scale == 1.0 else ctx.reference_attention_scale * y)
        if self.attn2 is not None and (ctx.cross_context is not None or ctx.bank_after_self_attention):
            h2 = self.norm2(x)
            if ctx.bank is not None and ctx.bank_after_self_attention:  # ReferenceNet: the input of attn2 is banked
                ctx.bank[key] = h2
            if ctx.cross_context is not None:
                y = self.attn2(h2, ctx.cross_context)
                x = x + (y if ctx.cross_attention_scale == 1.0 else ctx.cross_attention_scale * y)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """SD1.5's Transformer2DModel (conv projections), applied to every frame of a clip."""

    def __init__(
        self, channels: int, heads: int, context_dim: int | None, groups: int, norm1_only: bool = False, separate_reference: bool = False
    ):
        super().__init__()
        self.key = ""  # set by the owning UNet to this module's path; names its bank entry
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(channels, heads, context_dim, norm1_only, separate_reference)])
        # norm1_only: the block banks its norm1 output and changes nothing (a reference pass's unused last block)
        self.proj_out = None if norm1_only else nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x)).permute(0, 2, 3, 1).reshape(b, h * w, c)
        for block in self.transformer_blocks:
            tokens = block(tokens, self.key, ctx)
        if self.proj_out is None:
            return x
        return self.proj_out(tokens.reshape(b, h, w, c).permute(0, 3, 1, 2)) + x

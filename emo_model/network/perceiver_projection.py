"""Perceiver audio projection: a window of audio feature rows -> a few learned-query tokens per video frame.

A perceiver resampler (the IP-Adapter "Resampler" layout): the rows of one frame's audio window get a learned
position embedding and ``proj_in``; ``context_tokens`` learned queries (``latents``) then pass ``depth`` layers
of (cross-attention to ``cat(rows, queries)`` + feed-forward), each with a residual, and ``proj_out`` + ``norm_out``
give the tokens the backbone's cross-attention reads. Key names follow the published layout (``pos_emb``,
``latents``, ``proj_in``, ``layers.N.0.{norm1,norm2,to_q,to_kv,to_out}``, ``layers.N.1.{0,1,3}``,
``proj_out``, ``norm_out``). The attention scales q and k by ``head_dim ** -0.25`` each and takes the softmax in
float32 (what the published layout computes; it matters in half precision).
"""

from __future__ import annotations

import torch
from torch import nn

from ..configs import AudioProjConfig


class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, rows: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        rows, queries = self.norm1(rows), self.norm2(queries)
        b, n, _ = queries.shape
        q = self._split(self.to_q(queries))
        k, v = self.to_kv(torch.cat([rows, queries], dim=1)).chunk(2, dim=-1)
        k, v = self._split(k), self._split(v)
        scale = self.head_dim ** -0.25
        weight = (q * scale) @ (k * scale).transpose(-2, -1)
        weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
        out = (weight @ v).transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out)


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(), nn.Linear(dim * mult, dim, bias=False))


class PerceiverAudioProjection(nn.Module):
    """``AudioProjConfig`` with ``kind = "perceiver"``: rows = ``seq_len`` x ``blocks`` per frame, each ``channels`` wide;
    ``intermediate_dim`` is the query width, ``context_tokens`` the number of queries, ``output_dim`` the token width."""

    def __init__(self, cfg: AudioProjConfig):
        super().__init__()
        self.cfg = cfg
        rows, width = cfg.seq_len * cfg.blocks, cfg.intermediate_dim
        self.pos_emb = nn.Embedding(rows, cfg.channels)
        self.latents = nn.Parameter(torch.randn(1, cfg.context_tokens, width) / width**0.5)
        self.proj_in = nn.Linear(cfg.channels, width)
        self.proj_out = nn.Linear(width, cfg.output_dim)
        self.norm_out = nn.LayerNorm(cfg.output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(width, cfg.heads, cfg.head_dim), _feed_forward(width, cfg.ff_mult)])
            for _ in range(cfg.depth)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[B, F, seq_len, blocks, channels] (or without B) -> [B, F, context_tokens, output_dim]."""
        if features.dim() == 4:
            features = features.unsqueeze(0)
        b, f = features.shape[:2]
        expected = (self.cfg.seq_len, self.cfg.blocks, self.cfg.channels)
        if tuple(features.shape[2:]) != expected:
            raise ValueError(f"audio features have shape {tuple(features.shape[2:])} per frame, the model expects {expected}")
        x = features.reshape(b * f, -1, self.cfg.channels).to(self.proj_in.weight.dtype)
        x = self.proj_in(x + self.pos_emb.weight[: x.shape[1]])
        latents = self.latents.expand(b * f, -1, -1)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        tokens = self.norm_out(self.proj_out(latents))
        return tokens.reshape(b, f, self.cfg.context_tokens, self.cfg.output_dim)

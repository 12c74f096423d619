"""Face-identity tokens (Hallo only; EMO has no such input).

Hallo feeds an insightface face-recognition embedding (512 values) through ``ImageProjModel``
(``proj`` + LayerNorm ``norm``) to 4 tokens of 768 that both of its UNets read in ``attn2``.
"""

from __future__ import annotations

import torch
from torch import nn

from emo_model.configs import ImageProjConfig


class IdentityProjection(nn.Module):
    def __init__(self, cfg: ImageProjConfig):
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(cfg.embed_dim, cfg.tokens * cfg.cross_attention_dim)
        self.norm = nn.LayerNorm(cfg.cross_attention_dim)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """[B, embed_dim] -> [B, tokens, cross_attention_dim]."""
        x = self.proj(embedding.to(self.proj.weight.dtype))
        return self.norm(x.reshape(-1, self.cfg.tokens, self.cfg.cross_attention_dim))

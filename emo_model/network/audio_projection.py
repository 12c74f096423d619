"""Audio projection: a window of per-frame audio features -> a few audio tokens per video frame.

EMO (§3.2) concatenates the features of frames f-m .. f+m (m = 2) into A_gen(f); the open
re-implementations use wav2vec2-base-960h's 12 hidden layers and an ``AudioProjModel``, a 3-layer
MLP from 5 x 12 x 768 values to 32 tokens x 768 (``proj1``/``proj2``/``proj3`` + LayerNorm ``norm``).
The same module works for any feature type (the CPU demo feeds 5 x 1 x n_mels log-mel values).
"""

from __future__ import annotations

import torch
from torch import nn

from ..configs import AudioProjConfig


class AudioProjection(nn.Module):
    def __init__(self, cfg: AudioProjConfig):
        super().__init__()
        self.cfg = cfg
        self.proj1 = nn.Linear(cfg.seq_len * cfg.blocks * cfg.channels, cfg.intermediate_dim)
        self.proj2 = nn.Linear(cfg.intermediate_dim, cfg.intermediate_dim)
        self.proj3 = nn.Linear(cfg.intermediate_dim, cfg.context_tokens * cfg.output_dim)
        self.norm = nn.LayerNorm(cfg.output_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[B, F, window, layers, dim] (or without B) -> [B, F, context_tokens, output_dim]."""
        if features.dim() == 4:
            features = features.unsqueeze(0)
        b, f = features.shape[:2]
        expected = (self.cfg.seq_len, self.cfg.blocks, self.cfg.channels)
        if tuple(features.shape[2:]) != expected:
            raise ValueError(f"audio features have shape {tuple(features.shape[2:])} per frame, the model expects {expected}")
        x = features.reshape(b * f, -1).to(self.proj1.weight.dtype)
        x = torch.relu(self.proj2(torch.relu(self.proj1(x))))
        tokens = self.proj3(x).reshape(b * f, self.cfg.context_tokens, self.cfg.output_dim)
        return self.norm(tokens).reshape(b, f, self.cfg.context_tokens, self.cfg.output_dim)

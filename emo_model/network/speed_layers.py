"""Speed layers (paper §3.2): head-motion speed as a weak control of how much the head moves.

* Label: the head-rotation velocity ``w`` of every frame, in degrees per frame.
* Buckets: d buckets with centre ``c_i`` and radius ``r_i``; ``s_i = tanh((w - c_i) / r_i * 3)``, so each
  component ramps from -1 to +1 across ``[c_i - r_i, c_i + r_i]`` and every component rises with ``w``.
  The paper gives no values; ours are in :class:`emo_model.configs.SpeedConfig` with the reasoning.
* Per-frame embedding: the bucket vectors of frames ``f-m .. f+m`` (m = 2, clamped at the clip ends)
  are concatenated and an MLP maps them to ``l`` channels: the speed tokens of the clip.
* Injection: inside every temporal module, a cross-attention along the frame axis from the feature
  map (all h*w positions) to the clip's speed tokens (:class:`SpeedAttention`). Its output projection
  starts at zero, so adding speed layers to a trained model changes nothing until they are trained.

At inference a constant speed is used for every frame (speech 0.1-1.0, singing 1.0-1.3, §4.5).
"""

from __future__ import annotations

import torch
from torch import nn

from ..configs import SpeedConfig
from .attention import Attention, cached_positions


def speed_buckets(speed: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """[..., F] speeds -> [..., F, d] bucket activations ``tanh((w - c) / r * 3)``."""
    return torch.tanh((speed.unsqueeze(-1) - centres) / radii * 3.0)


def window_stack(x: torch.Tensor, margin: int) -> torch.Tensor:
    """[B, F, d] -> [B, F, (2m+1)*d]: each frame concatenated with its neighbours, clamped at the ends."""
    frames = x.shape[1]
    offsets = torch.arange(-margin, margin + 1, device=x.device)
    index = (torch.arange(frames, device=x.device).unsqueeze(1) + offsets).clamp(0, frames - 1)
    return x[:, index].flatten(2)


class SpeedEncoder(nn.Module):
    """Speeds [B, F] (degrees per frame) -> speed tokens [B, F, l]."""

    def __init__(self, cfg: SpeedConfig):
        super().__init__()
        if len(cfg.centres) != len(cfg.radii):
            raise ValueError("speed centres and radii must have the same length")
        self.margin = cfg.margin
        self.centres, self.radii = tuple(cfg.centres), tuple(cfg.radii)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.num_buckets * (2 * cfg.margin + 1), cfg.hidden_dim),
            nn.SiLU(),
            nn.Linear(cfg.hidden_dim, cfg.embed_dim),
        )

    def buckets(self, speed: torch.Tensor) -> torch.Tensor:
        speed = speed.float()
        as_tensor = lambda v: torch.tensor(v, device=speed.device)  # noqa: E731
        return speed_buckets(speed, as_tensor(self.centres), as_tensor(self.radii))

    def forward(self, speed: torch.Tensor) -> torch.Tensor:
        if speed.dim() == 1:
            speed = speed.unsqueeze(0)
        stacked = window_stack(self.buckets(speed), self.margin)
        return self.mlp(stacked.to(self.mlp[0].weight.dtype))


class SpeedAttention(Attention):
    """Cross-attention from the temporal tokens (b*h*w sequences of f frames) to the speed tokens.

    The speed tokens are shared by every spatial position of a sample, so the queries of all h*w
    positions are flattened into one sequence per sample and attend to that sample's f keys: no copy
    of the keys per position. Sinusoidal frame positions are added to both sides so a frame can find
    its own speed (the paper does not say how frames and speed tokens are aligned).
    """

    def __init__(self, dim: int, speed_dim: int, heads: int, max_len: int):
        super().__init__(dim, speed_dim, heads, dim // heads)
        self.max_len = max_len
        nn.init.zeros_(self.to_out[0].weight)
        nn.init.zeros_(self.to_out[0].bias)

    def forward(self, x: torch.Tensor, speed_tokens: torch.Tensor, batch: int) -> torch.Tensor:  # type: ignore[override]
        """``x``: [b*h*w, f, c]; ``speed_tokens``: [b or 1, f, l] for exactly these f frames."""
        bhw, frames, c = x.shape
        hw = bhw // batch
        if speed_tokens.shape[1] != frames:
            raise ValueError(f"{speed_tokens.shape[1]} speed tokens for {frames} frames")
        if frames > self.max_len:
            raise ValueError(f"speed attention sees {frames} frames but was built for at most {self.max_len}")
        key_pe = cached_positions(self.max_len, speed_tokens.shape[-1], speed_tokens.device, speed_tokens.dtype)
        query_pe = cached_positions(self.max_len, c, x.device, x.dtype)
        speed_tokens = speed_tokens.expand(batch, -1, -1) + key_pe[:, :frames]
        q = self.to_q(x + query_pe[:, :frames])
        q = q.view(batch, hw * frames, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.project_kv(speed_tokens)
        out = self.attend(q, k, v)  # [b, h*w*f, c]
        return out.view(bhw, frames, c)

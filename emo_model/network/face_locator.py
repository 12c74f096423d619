"""Face Locator (paper §3.2): encodes the face-region mask into a weak spatial condition.

The mask (union of the face boxes over a clip, expanded to leave room for head motion) goes through a
light conv stack to the backbone's first width (320 for SD1.5) at the latent resolution, and the
result is added to the backbone's features right after ``conv_in`` (that is where every open
implementation adds it). The output conv starts at zero, so an untrained locator changes nothing.

Layout (the published key names): ``conv_in``; ``blocks`` = pairs of (3x3 conv, stride-2 3x3 conv)
between consecutive widths; ``conv_out``. The input channels and widths are config
(``FaceLocatorConfig``: 1 or 3 channels; widths (16, 32, 96, 256) or (16, 32, 64, 128) in the families).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import FaceLocatorConfig


class FaceLocator(nn.Module):
    def __init__(self, cfg: FaceLocatorConfig):
        super().__init__()
        widths = cfg.block_out_channels
        self.in_channels = cfg.in_channels
        self.conv_in = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        blocks = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            blocks.append(nn.Conv2d(c_in, c_in, 3, padding=1))
            blocks.append(nn.Conv2d(c_in, c_out, 3, padding=1, stride=2))
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(widths[-1], cfg.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """``mask``: [B, H, W] or [B, C, H, W] in 0..1 at pixel resolution -> [B, out, H/8, W/8]."""
        if mask.dim() == 3:
            mask = mask.unsqueeze(1)
        if mask.shape[1] != self.in_channels:
            mask = mask[:, :1].expand(-1, self.in_channels, -1, -1)
        x = F.silu(self.conv_in(mask.to(self.conv_in.weight.dtype)))
        for block in self.blocks:
            x = F.silu(block(x))
        return self.conv_out(x)

"""Latent codec: pixels <-> the scaled latents the model works in.

The pipeline only needs ``encode(images) -> latents`` and ``decode(latents) -> images``; anything with
those two methods works (:class:`DiffusersVAE` wraps a diffusers ``AutoencoderKL`` such as sd-vae-ft-mse
or the demo's tiny VAE; the ComfyUI nodes wrap a core ``VAE`` the same way).
Images are [N, H, W, 3] float 0..1 (ComfyUI's IMAGE layout); latents [N, C, H/8, W/8], already
multiplied by the VAE's scaling factor.
"""

from __future__ import annotations

from typing import Protocol

import torch


class LatentCodec(Protocol):
    scale_factor: int  # pixels per latent cell

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


class DiffusersVAE:
    """A diffusers ``AutoencoderKL`` as a :class:`LatentCodec` (mean of the posterior, no sampling)."""

    def __init__(self, vae, *, decode_batch: int = 8):
        self.vae = vae
        self.decode_batch = decode_batch
        self.scaling = float(vae.config.scaling_factor)
        self.scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        # [-1, 1] in the pixels' precision, then the VAE's dtype: one rounding in a half VAE, as diffusers'
        # VaeImageProcessor + ``.to(dtype)`` (the originals) do; scaling after the cast rounds twice
        x = images.to(self.device, images.dtype if images.is_floating_point() else torch.float32)
        x = (x.permute(0, 3, 1, 2) * 2 - 1).to(self.dtype)
        return self.vae.encode(x).latent_dist.mean * self.scaling

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        out = []
        for chunk in latents.split(self.decode_batch):
            x = self.vae.decode(chunk.to(self.device, self.dtype) / self.scaling).sample
            out.append(((x.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1))
        return torch.cat(out)

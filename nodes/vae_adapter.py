"""A core ComfyUI ``VAE`` as an EMO latent codec (see ``emo_model.network.vae.LatentCodec``).

Core's VAE works on IMAGE tensors ([N, H, W, 3], 0..1) and returns latents *without* the SD scaling
factor (ComfyUI applies it in the diffusion model's latent format instead); EMO works in scaled
latents, so the factor is applied here.
"""

from __future__ import annotations

import torch

SD_SCALING = 0.18215


class ComfyVAE:
    def __init__(self, vae, scaling: float = SD_SCALING):
        self.vae = vae
        self.scaling = scaling
        self.scale_factor = int(getattr(vae, "downscale_ratio", 8)) if not callable(getattr(vae, "downscale_ratio", None)) else 8

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images[..., :3].float().cpu()) * self.scaling

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        frames = self.vae.decode(latents.float() / self.scaling)
        return frames.reshape(-1, *frames.shape[-3:]).float().clamp(0, 1).cpu()

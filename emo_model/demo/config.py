"""The demo model's architecture, its tiny VAE, and which synthetic seeds train it and which are held out.

The demo network is the ``tiny`` config (the ``emo`` structure: ReferenceNet, backbone with reference /
audio / temporal / speed layers, Face Locator, log-mel audio features, 64x64 pixels, 8x8 latents) at a
narrower width, (32, 32, 48, 48) channels instead of (32, 64, 64, 64), so the shipped file stays
small: 2.8 M parameters, 5.6 MB in fp16. The native file carries this config as JSON, so no registry
entry is needed to load it.
"""

from __future__ import annotations

import dataclasses

from ..configs import EMOConfig, UNetConfig
from ..families import get_config

NAME = "emo-tiny-demo"
WIDTHS = (32, 32, 48, 48)

# Synthetic clips: training uses seeds 0 .. clips-1; everything measured as "held out" uses seeds
# from HELDOUT_SEED on (never generated for training, so new faces, new voices, new sentences).
HELDOUT_SEED = 100_000
SAMPLE_SEED = 99_999  # the shipped portrait and speech clip (also never trained on)


def demo_config(steps: int = 20, cfg: float = 2.0, audio_cfg: float = 2.0) -> EMOConfig:
    base = get_config("tiny")

    def unet(cross_attention_dim):
        return UNetConfig(
            block_out_channels=WIDTHS,
            attention_heads=2,
            norm_num_groups=8,
            layers_per_block=1,
            cross_attention_dim=cross_attention_dim,
        )

    base.reference_net.unet = unet(None)
    base.backbone.unet = unet(base.audio_token_dim)
    base.face_locator = dataclasses.replace(base.face_locator, out_channels=WIDTHS[0])
    base.preset = dataclasses.replace(base.preset, steps=steps, cfg=cfg, audio_cfg=audio_cfg)
    return base.replace(name=NAME).validate()


def vae_config() -> dict:
    """diffusers ``AutoencoderKL`` kwargs of the demo's VAE: /8, 4 latent channels, 0.65 M parameters."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 48, 48),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )

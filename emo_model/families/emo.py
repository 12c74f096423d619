"""EMO itself (Emote Portrait Alive, arXiv 2402.17485): the paper's design, and its tiny CPU version.

Alibaba published neither code nor weights: ``emo`` is the paper's architecture with the open family's
conventions where the paper is silent (docs/design in the repository). Checkpoints of this family are the
native files this pack trains (``python -m emo_model train``) and the built-in CPU demo.
"""

from __future__ import annotations

from ..configs import (
    AudioFeatureConfig,
    AudioProjConfig,
    BackboneConfig,
    EMOConfig,
    FaceLocatorConfig,
    PresetConfig,
    ReferenceNetConfig,
    SpeedConfig,
    TemporalConfig,
    sd15_unet,
    tiny_unet,
)
from .base import Family


def emo_config() -> EMOConfig:
    """EMO as described in the paper, with the open family's conventions where it is silent."""
    return EMOConfig(
        name="emo",
        family="emo",
        # The paper turns the text cross-attention into reference-attention: no attn2 in the ReferenceNet.
        reference_net=ReferenceNetConfig(unet=sd15_unet(None)),
        backbone=BackboneConfig(unet=sd15_unet(768), cross_attention_input="audio", speed_layers=True),
        face_locator=FaceLocatorConfig(in_channels=1, block_out_channels=(16, 32, 96, 256)),
        audio_proj=AudioProjConfig(),
        speed=SpeedConfig(),
        audio=AudioFeatureConfig(kind="wav2vec2", layers=12, dim=768, margin=2),
        preset=PresetConfig(fps=30.0, frames_per_clip=12, motion_frames=4, first_clip_motion="zeros", steps=40),
    ).validate()


def tiny_config() -> EMOConfig:
    """The ``emo`` structure at a few channels: 64x64 pixels / 8x8 latents, for tests and the demo."""
    n_mels = 32
    audio_proj = AudioProjConfig(seq_len=5, blocks=1, channels=n_mels, intermediate_dim=64, output_dim=64, context_tokens=4)
    return EMOConfig(
        name="tiny",
        family="emo",
        reference_net=ReferenceNetConfig(unet=tiny_unet(None)),
        backbone=BackboneConfig(
            unet=tiny_unet(64),
            cross_attention_input="audio",
            temporal=TemporalConfig(heads=2, norm_num_groups=8),
            speed_layers=True,
        ),
        face_locator=FaceLocatorConfig(in_channels=1, block_out_channels=(8, 8, 16, 16), out_channels=32),
        audio_proj=audio_proj,
        speed=SpeedConfig(hidden_dim=32, embed_dim=32),
        audio=AudioFeatureConfig(kind="logmel", layers=1, dim=n_mels, margin=2),
        preset=PresetConfig(
            fps=25.0, resolution=64, frames_per_clip=8, motion_frames=2, steps=20, cfg=2.0, audio_cfg=2.0, speed=0.7
        ),
    ).validate()


FAMILY = Family(
    name="emo",
    label="EMO",
    configs={"emo": emo_config, "tiny": tiny_config},
    files="a native EMO .safetensors (converted or trained with this pack)",
    quoted_configs={"emo": "EMO", "tiny": "demo"},
)

"""The whole EMO network: ReferenceNet, backbone, Face Locator, audio projection, speed layers.

Sub-module names follow the published whole-model state dicts (``reference_unet``, ``denoising_unet``, ``face_locator``,
``imageproj``, ``audioproj``) so its state dict is ours without renaming; ``speed_encoder`` is EMO's own.
:class:`Conditioning` gathers everything one denoiser call reads besides the noisy latents; the
sampling pipeline and the trainer build it (batched over guidance branches) and call
:meth:`EMOModel.forward`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..configs import EMOConfig
from ..families import get_config
from .audio_projection import AudioProjection
from .perceiver_projection import PerceiverAudioProjection
from .backbone import Backbone
from .context import KV, ReferenceBank
from .face_locator import FaceLocator
from .identity import IdentityProjection
from .reference_net import ReferenceNet
from .speed_layers import SpeedEncoder
from .unet_blocks import DeepFeatureCache


@dataclass
class Conditioning:
    """Conditions of one denoiser call; tensors have batch B (or 1 where noted, broadcast)."""

    reference: ReferenceBank | None = None  # portrait tokens (batch 1) + this clip's motion features
    reference_kv: dict[str, KV] | None = None  # Backbone.project_reference(reference), cached per video
    reference_enabled: torch.Tensor | None = None  # CPU bool [B]; False = no reference-attention (uncond)
    reference_rows: torch.Tensor | None = None  # long [B, F]: bank row per frame (None = the bank's only row)
    audio_tokens: torch.Tensor | None = None  # [B, F, T, D]: EMOModel.audio_tokens(features); zeros = no audio
    identity_tokens: torch.Tensor | None = None  # [B or 1, T, D] face-ID tokens (image projection)
    face_features: torch.Tensor | None = None  # [B or 1, C0, h, w] Face Locator output; zeros = no mask
    region_masks: torch.Tensor | None = None  # [B or 1, 3, H, W] (full, face, lip) masks of the region audio modules
    speed_tokens: torch.Tensor | None = None  # [B or 1, n+F, l]
    motion_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    temporal: bool = True
    feature_cache: DeepFeatureCache | None = None  # deep features reused between adjacent steps
    emotion: torch.Tensor | None = None  # long [B]: emotion class per row (emotion audio modules; None = "no emotion")
    memory: dict | None = None  # memory-guided temporal modules: the memory of this batch of videos (kept by the caller)
    update_memory: bool = False  # fold the past frames (reference.motion) into ``memory`` in this call


class EMOModel(nn.Module):
    def __init__(self, config: EMOConfig | str):
        super().__init__()
        cfg = get_config(config) if isinstance(config, str) else config.validate()
        self.config = cfg
        self.reference_unet = ReferenceNet(cfg.reference_net)
        self.denoising_unet = Backbone(cfg.backbone, cfg.speed)
        self.face_locator = FaceLocator(cfg.face_locator) if cfg.face_locator is not None else None
        self.audioproj = None if cfg.audio_proj is None else (
            PerceiverAudioProjection(cfg.audio_proj) if cfg.audio_proj.kind == "perceiver" else AudioProjection(cfg.audio_proj)
        )
        self.imageproj = IdentityProjection(cfg.image_proj) if cfg.image_proj is not None else None
        self.speed_encoder = SpeedEncoder(cfg.speed) if (cfg.speed is not None and cfg.backbone.speed_layers) else None

    @property
    def dtype(self) -> torch.dtype:
        return self.denoising_unet.dtype

    @property
    def device(self) -> torch.device:
        return self.denoising_unet.conv_in.weight.device

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.reference_unet.set_gradient_checkpointing(enabled)
        self.denoising_unet.set_gradient_checkpointing(enabled)

    # ---- condition encoders ---------------------------------------------------------------------
    def identity_tokens(self, embedding: torch.Tensor | None, batch: int = 1) -> torch.Tensor | None:
        """Face-ID tokens (a zero embedding when none is given); None for configs without an image projection."""
        if self.imageproj is None:
            return None
        if embedding is None:
            embedding = torch.zeros(batch, self.imageproj.cfg.embed_dim, device=self.device, dtype=self.dtype)
        return self.imageproj(embedding.to(self.device))

    def encode_reference(self, latents: torch.Tensor, identity_tokens: torch.Tensor | None = None) -> ReferenceBank:
        """Portrait latents [B, C, H, W] -> the reference bank (once per video)."""
        return self.reference_unet.encode(latents, identity_tokens)

    def encode_motion(self, latents: torch.Tensor, identity_tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Latents of the motion frames [B, n, C, H, W] -> per-block motion features (once per clip)."""
        # temporal modules with a memory also read past-frame features in the levels without attention
        plain = self.config.backbone.temporal.memory_decay is not None
        return self.reference_unet.encode_motion(latents, identity_tokens, plain_blocks=plain)

    def audio_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """Per-frame audio features [B, F, ...] -> audio tokens [B, F, T, D] the backbone reads."""
        features = features.to(self.device)
        if self.audioproj is not None:  # [B, F, window, layers, dim] (B optional)
            return self.audioproj(features)
        if features.dim() == 3:  # tokens used as they are (whisper windows, no projection): [B, F, T, D]
            features = features.unsqueeze(0)
        return features.to(self.dtype)

    def face_features(self, mask: torch.Tensor) -> torch.Tensor | None:
        """Face-region mask [B, H, W] (pixels, 0..1) -> Face Locator features [B, C0, H/8, W/8] (None without one)."""
        if self.face_locator is None:
            return None
        return self.face_locator(mask.to(self.device))

    def speed_tokens(self, speed: torch.Tensor) -> torch.Tensor | None:
        """Head-rotation speed per frame [B, n+F] (deg/frame) -> speed tokens; None without speed layers."""
        if self.speed_encoder is None:
            return None
        return self.speed_encoder(speed.to(self.device))

    # ---- denoiser -----------------------------------------------------------------------------------
    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float, cond: Conditioning) -> torch.Tensor:
        kind = self.config.backbone.cross_attention_input
        cross = cond.audio_tokens if kind == "audio" else cond.identity_tokens if kind == "identity" else None
        return self.denoising_unet(
            sample,
            timestep,
            reference=cond.reference,
            reference_kv=cond.reference_kv,
            reference_enabled=cond.reference_enabled,
            reference_rows=cond.reference_rows,
            cross_context=cross,
            audio_context=cond.audio_tokens if (self.config.backbone.region_audio_modules or self.config.backbone.emotion_audio_modules) else None,
            face_features=cond.face_features,
            region_masks=cond.region_masks,
            motion_scale=cond.motion_scale,
            speed_tokens=cond.speed_tokens,
            temporal=cond.temporal,
            quirks=self.config.preset.quirks,
            feature_cache=cond.feature_cache,
            emotion=cond.emotion,
            memory=cond.memory,
            update_memory=cond.update_memory,
        )

"""Backbone (paper §3.2): the SD1.5-shaped UNet inflated to video that denoises a clip of frames.

Input: noisy latents (b, c, f, h, w). In every spatial transformer block: reference-attention to the
banked ReferenceNet tokens, then cross-attention to the frame's audio tokens (or, in the region-audio layout,
to face-identity tokens, with separate audio modules after the block), then the FF; after it the
temporal module of that layer, with the motion frames prepended along the frame axis and the speed
tokens cross-attended. The Face Locator's features are added right after ``conv_in``.
"""

from __future__ import annotations

import torch

from ..configs import BackboneConfig, InferenceQuirks, SpeedConfig
from .attention import SpatialTransformer
from .context import KV, ForwardContext, ReferenceBank
from .unet_blocks import DeepFeatureCache, UNetBase


def per_frame_tokens(tokens: torch.Tensor | None, batch: int, frames: int) -> torch.Tensor | None:
    """[B, F, T, D] (per frame) or [B, T, D] (per clip), batch 1 or B -> [B*F, T, D]."""
    if tokens is None:
        return None
    if tokens.dim() == 3:
        tokens = tokens.unsqueeze(1).expand(-1, frames, -1, -1)
    if tokens.shape[1] != frames:
        raise ValueError(f"tokens for {tokens.shape[1]} frames given to a clip of {frames} frames")
    return tokens.expand(batch, -1, -1, -1).reshape(batch * frames, *tokens.shape[2:])


class Backbone(UNetBase):
    def __init__(self, cfg: BackboneConfig, speed: SpeedConfig | None = None):
        super().__init__(
            cfg.unet,
            temporal=cfg.temporal,
            speed=speed if cfg.speed_layers else None,
            audio_module_dim=cfg.audio_module_dim if (cfg.region_audio_modules or cfg.emotion_audio_modules) else None,
            output_head=True,
            emotion_classes=cfg.emotion_classes if cfg.emotion_audio_modules else None,
        )
        self.emotion_classes = cfg.emotion_classes if cfg.emotion_audio_modules else None

    def project_reference(self, bank: ReferenceBank) -> dict[str, KV]:
        """Reference keys/values for every block, computed once and reused for all steps and clips."""
        cache = {}
        for module in self.modules():
            if isinstance(module, SpatialTransformer) and module.key in bank.tokens:
                block = module.transformer_blocks[0]
                reader = block.attn1 if block.attn1_5 is None else block.attn1_5  # the attention that reads the reference
                cache[module.key] = reader.project_kv(bank.tokens[module.key].to(self.dtype))
        return cache

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        *,
        reference: ReferenceBank | None = None,
        reference_kv: dict[str, KV] | None = None,
        reference_enabled: torch.Tensor | None = None,
        reference_rows: torch.Tensor | None = None,
        cross_context: torch.Tensor | None = None,
        audio_context: torch.Tensor | None = None,
        face_features: torch.Tensor | None = None,
        region_masks: torch.Tensor | None = None,
        motion_scale: tuple[float, float, float] = (1.0, 1.0, 1.0),
        speed_tokens: torch.Tensor | None = None,
        temporal: bool = True,
        quirks: InferenceQuirks | None = None,
        feature_cache: DeepFeatureCache | None = None,
        emotion: torch.Tensor | None = None,
        memory: dict | None = None,
        update_memory: bool = False,
    ) -> torch.Tensor:
        """Denoiser output (noise, v or x0, as trained) for ``sample`` [B, C, F, H, W].

        ``reference``: the bank (portrait tokens + this clip's motion features); ``reference_kv``:
        its projected keys/values from :meth:`project_reference` (optional, saves work);
        ``reference_enabled``: bool [B] (keep it on the CPU), False rows skip reference-attention
        (unconditional branch); ``reference_rows``: long [B, F], the bank row each frame reads (banks with
        several portrait rows, ``InferenceQuirks.reference_rows_tiled``; None = one row for all);
        ``cross_context``: attn2 tokens [B, F, T, D] or [B, T, D]; ``audio_context``: tokens for the region
        audio modules; ``face_features``: Face Locator output [B, C0, H, W] (or per frame
        [B, C0, F, H, W]); ``region_masks``: the (full, face, lip) masks [B, 3, h, w];
        ``speed_tokens``: [B, n+F, l]; ``temporal=False`` bypasses every temporal module;
        ``quirks``: the family's :class:`InferenceQuirks` (None = the paper's behaviour);
        ``feature_cache``: deep features reused between adjacent steps (:class:`DeepFeatureCache`);
        ``emotion``: long [B], the emotion class per video of the emotion audio modules (None: the "no emotion"
        class); ``memory``: the memory-guided temporal modules' memory (a dict the caller keeps per video batch),
        ``update_memory``: fold the past frames (``reference.motion``) into it in this call.
        """
        quirks = quirks or InferenceQuirks()
        b, c, f, h, w = sample.shape
        x = self.conv_in(sample.transpose(1, 2).reshape(b * f, c, h, w).to(self.dtype))
        if face_features is not None:  # broadcast over frames: no per-frame copy of the features
            feats = face_features.to(x.dtype)
            feats = feats.unsqueeze(1) if feats.dim() == 4 else feats.transpose(1, 2)
            x = (x.view(b, f, *x.shape[1:]) + feats).view(b * f, *x.shape[1:])
        ctx = ForwardContext(
            frames=f,
            reference=reference,
            reference_kv_cache=reference_kv,
            reference_rows=None if reference_rows is None else reference_rows.reshape(-1),
            reference_enabled=None if reference_enabled is None else reference_enabled.cpu().repeat_interleave(f),
            cross_context=per_frame_tokens(cross_context, b, f),
            audio_context=per_frame_tokens(audio_context, b, f),
            region_masks=None if region_masks is None else (
                {k: v.expand(b, -1, -1, -1) for k, v in region_masks.items()} if isinstance(region_masks, dict)
                else region_masks.expand(b, -1, -1, -1)),
            motion_scale=motion_scale,
            speed_tokens=speed_tokens,
            temporal=temporal,
            temporal_in_plain_blocks=quirks.temporal_in_plain_blocks,
            cross_attention_scale=quirks.audio_attention_scale,
            reference_attention_scale=quirks.reference_attention_scale,
            unconditional_reference_zeros=quirks.unconditional_reference == "zeros",
            memory=memory,
            update_memory=update_memory,
        )
        if self.emotion_classes is not None:
            ctx.audio_stream = ctx.audio_context
            ctx.emotion = torch.full((b,), self.emotion_classes, dtype=torch.long) if emotion is None else emotion.reshape(b)
            ctx.emotion = ctx.emotion.to(sample.device)
        x = self.run(x, self.time_embed(timestep, b, f, sample.device), ctx, feature_cache)
        out = self.head(x)
        return out.view(b, f, -1, h, w).transpose(1, 2)

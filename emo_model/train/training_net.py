"""The module DDP / FSDP wrap: one forward from latents and conditions to the prediction.
"""


from __future__ import annotations

import torch
from torch import nn

from ..network.model import Conditioning, EMOModel


class TrainingNet(nn.Module):
    """Everything differentiable in one ``forward`` (so DDP/FSDP see every trainable parameter used).

    Conditions are dropped per sample by multiplying with 0/1 masks rather than by removing them, so
    the graph (and DDP's set of used parameters) is the same for every batch.
    """

    def __init__(self, model: EMOModel, stage: int, first_clip_motion: str):
        super().__init__()
        self.model = model
        self.stage = stage
        self.first_clip_motion = first_clip_motion

    def forward(
        self,
        noisy: torch.Tensor,  # [B, C, F, h, w]
        timesteps: torch.Tensor,  # [B]
        reference_latents: torch.Tensor,  # [B, C, h, w]
        mask: torch.Tensor,  # [B, H, W]
        reference_keep: torch.Tensor,  # bool [B]
        audio_keep: torch.Tensor,  # bool [B]
        motion_latents: torch.Tensor | None = None,  # [B, n, C, h, w]
        first_clip: torch.Tensor | None = None,  # bool [B]
        audio_features: torch.Tensor | None = None,  # [B, F, ...]
        speed: torch.Tensor | None = None,  # [B, n + F]
    ) -> torch.Tensor:
        model = self.model
        b, frames = noisy.shape[0], noisy.shape[2]
        identity = model.identity_tokens(None, batch=b)
        bank = model.encode_reference(reference_latents, identity)
        keep = reference_keep.to(noisy.device, noisy.dtype)  # rows without reference also lose the face mask (uncond branch)
        tokens = bank.tokens
        if motion_latents is not None and motion_latents.shape[1] > 0:
            motion = model.encode_motion(motion_latents, identity)
            if first_clip is not None:
                fc = first_clip.view(-1, 1, 1, 1)
                for key, feats in motion.items():
                    start = bank.tokens[key].unsqueeze(1).expand_as(feats)
                    replacement = torch.zeros_like(feats) if self.first_clip_motion == "zeros" else start
                    motion[key] = torch.where(fc, replacement, feats)
            bank.motion = motion
        if frames > 1:  # one reference per sample, repeated for its frames (frames are folded into the batch)
            tokens = {k: v.repeat_interleave(frames, dim=0) for k, v in tokens.items()}
        bank.tokens = tokens
        face = model.face_features(mask) * keep.view(-1, 1, 1, 1)
        audio_tokens = speed_tokens = None
        if self.stage > 1:
            if audio_features is not None:
                audio_tokens = model.audio_tokens(audio_features) * audio_keep.to(noisy.dtype).view(-1, 1, 1, 1)
            if speed is not None:
                speed_tokens = model.speed_tokens(speed)
        cond = Conditioning(
            reference=bank,
            reference_enabled=reference_keep,
            audio_tokens=audio_tokens,
            identity_tokens=identity,
            face_features=face,
            speed_tokens=speed_tokens,
            temporal=self.stage > 1,
        )
        pred = model(noisy, timesteps, cond)
        # A batch whose references are all dropped would leave the ReferenceNet out of the graph, which
        # DDP (without find_unused_parameters) treats as an error; this keeps it in, adding exactly 0.
        anchor = sum(v.sum() for v in tokens.values()) * 0.0
        return pred + anchor



"""ReferenceNet (paper §3.2): encodes the portrait (and the motion frames) for reference-attention.

Its structure is the backbone's without temporal layers: an SD1.5-shaped 2D UNet, initialised from
SD1.5. It runs at timestep 0 on clean latents and, in "write" mode, banks the input of every
self-attention (``norm1(x)`` of each spatial transformer block, keyed by the block's path). The
backbone's blocks of the same path read those tokens (:mod:`emo_model.network.attention`).

It runs once per video on the portrait, and once per clip on the motion frames
(:mod:`emo_model.network.motion_frames`); never once per denoising step.

Variants the open checkpoints need, chosen by config: no ``attn2``/``norm2`` (EMO, whose
cross-attention became reference-attention, and checkpoints without text or identity tokens:
``unet.cross_attention_dim = None``), and no ``conv_norm_out``/``conv_out`` (``output_head = False``,
as the published ReferenceNets), which a reference pass never uses anyway.
"""

from __future__ import annotations

import torch

from ..configs import ReferenceNetConfig
from .context import ForwardContext, ReferenceBank
from .unet_blocks import UNetBase


class ReferenceNet(UNetBase):
    def __init__(self, cfg: ReferenceNetConfig):
        super().__init__(cfg.unet, output_head=cfg.output_head, last_transformer_norm1_only=cfg.last_transformer_norm1_only)
        self.bank_after_self_attention = cfg.bank_after_self_attention
        self.cross_attention_zero_token = cfg.cross_attention_zero_token

    def forward(self, latents: torch.Tensor, context: torch.Tensor | None = None, plain_blocks: bool = False) -> dict[str, torch.Tensor]:
        """Clean latents [B, C, H, W] (+ optional attn2 tokens [B, T, D]) -> {block path: [B, H*W, C]}.

        ``plain_blocks``: also bank every resnet output of the levels without attention, as
        {``<block path>.resnets.<i>``: [B, C, h, w]} (past-frame features of temporal modules there)."""
        bank: dict[str, torch.Tensor] = {}
        if self.cfg.cross_attention_dim is None:
            context = None
        elif context is None and self.cross_attention_zero_token:
            context = torch.zeros(latents.shape[0], 1, self.cfg.cross_attention_dim, device=latents.device, dtype=self.dtype)
        elif context is not None and context.shape[0] != latents.shape[0]:
            context = context.expand(latents.shape[0], -1, -1)
        ctx = ForwardContext(
            frames=1, bank=bank, cross_context=context, bank_plain_blocks=plain_blocks, bank_after_self_attention=self.bank_after_self_attention
        )
        x = self.conv_in(latents.to(self.dtype))
        self.run(x, self.time_embed(0, latents.shape[0], 1, latents.device), ctx)
        return bank

    def encode(self, latents: torch.Tensor, context: torch.Tensor | None = None) -> ReferenceBank:
        """The portrait's bank: [B, C, H, W] -> :class:`ReferenceBank` with tokens only."""
        return ReferenceBank(tokens=self(latents, context))

    def encode_motion(
        self, latents: torch.Tensor, context: torch.Tensor | None = None, plain_blocks: bool = False
    ) -> dict[str, torch.Tensor]:
        """Motion frames [B, n, C, H, W] -> {block path: [B, n, H*W, C]} (``plain_blocks``: see :meth:`forward`)."""
        b, n = latents.shape[:2]
        if context is not None and context.shape[0] != b * n:  # else: one context per motion frame, [B*n, T, D]
            context = context.expand(b, -1, -1).repeat_interleave(n, dim=0)
        bank = self(latents.flatten(0, 1), context, plain_blocks)
        return {k: v.view(b, n, *v.shape[1:]) for k, v in bank.items()}

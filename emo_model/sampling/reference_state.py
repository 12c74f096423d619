"""The encoded portrait (the EMO_REFERENCE value): latent, ReferenceNet bank, identity tokens, colour; made once per video."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..network.context import ReferenceBank


@dataclass
class ReferenceState:
    """The portrait, encoded once per video (the EMO_REFERENCE value)."""

    image: torch.Tensor  # [H, W, 3] float 0..1, CPU
    latent: torch.Tensor  # [1, C, h, w]
    bank: ReferenceBank
    identity_tokens: torch.Tensor | None
    identity_uncond: torch.Tensor | None
    colour: tuple
    # [3, H, W] (full, face, lip) masks for models with region-masked audio modules, made from the
    # portrait's face detection; used when the caller gives none. ``note`` says how they were made.
    region_masks: torch.Tensor | None = None
    note: str = ""

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.image.shape[:2])

    def to(self, device: torch.device | str) -> "ReferenceState":
        """The same state with its tensors on ``device`` (states live on the CPU between runs)."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return dataclasses.replace(
            self,
            latent=move(self.latent),
            bank=self.bank.to(device),
            identity_tokens=move(self.identity_tokens),
            identity_uncond=move(self.identity_uncond),
        )

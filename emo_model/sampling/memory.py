"""How much working memory (beyond the weights) one sampler run needs: what ComfyUI is asked to free.

An estimate, not a measurement: no GPU was available to calibrate it. It is built from ComfyUI's own
figure for an SD1.5 UNet, which EMO's backbone is (plus reference, audio and temporal layers):

* denoiser: ComfyUI budgets ``area * dtype_bytes * 0.01 MiB`` for an SD1.5 UNet pass, with ``area`` =
  batch x latent height x latent width. One EMO step runs every guidance branch over every frame of the
  clip (motion frames included) in one batch; reference-attention doubles the keys/values of every
  self-attention layer and adds the temporal and audio layers, so the SD1.5 figure is scaled by
  :data:`BACKBONE_FACTOR`;
* reference bank: the ReferenceNet's projected keys and values of the portrait and the motion frames
  stay resident for the whole clip (per self-attention layer: tokens x channels, K and V);
* decoding: the VAE decodes :data:`DECODE_BATCH` frames at a time at full resolution, with about
  :data:`DECODE_LIVE_TENSORS` tensors of 128 channels alive at the top level.

The run needs the larger of the denoiser and the decoder (they do not overlap) plus the bank.
"""

from __future__ import annotations

MIB = 1024 * 1024
SD15_AREA_FACTOR = 0.01 * MIB  # bytes per latent position per dtype byte (ComfyUI's SD1.5 estimate)
BACKBONE_FACTOR = 1.5
DECODE_BATCH = 8  # DiffusersVAE's default decode batch
DECODE_LIVE_TENSORS = 6
DECODE_CHANNELS = 128  # SD VAE decoder's top-level width
# SD1.5 self-attention layers per level (2 down + 3 up transformer blocks) and their channels
BANK_LEVELS = ((1, 320, 5), (2, 640, 5), (4, 1280, 5), (8, 1280, 1))  # (downscale vs latent, channels, layers)


def guidance_branches(cfg: float, audio_cfg: float) -> int:
    """Batched passes per step: the guidance branches with a non-zero weight (1, 2 or 3)."""
    from .settings import guidance_weights

    return len(guidance_weights(cfg, audio_cfg))


def settings_memory_bytes(settings, *, size: int, dtype_bytes: int) -> int:
    """:func:`working_memory_bytes` for a :class:`~emo_model.sampling.settings.SamplingSettings`."""
    motion = settings.motion_frames if settings.strategy == "motion_frames" else 0
    return working_memory_bytes(
        size=size, frames_per_clip=settings.frames_per_clip, motion_frames=motion,
        branches=guidance_branches(settings.cfg, settings.audio_cfg), dtype_bytes=dtype_bytes,
    )


def working_memory_bytes(
    *, size: int, frames_per_clip: int, motion_frames: int, branches: int, dtype_bytes: int, latent_scale: int = 8
) -> int:
    """Bytes of activations one clip needs at ``size`` x ``size`` pixels (weights not included)."""
    side = max(1, size // latent_scale)
    frames = frames_per_clip + max(0, motion_frames)
    denoiser = branches * frames * side * side * dtype_bytes * SD15_AREA_FACTOR * BACKBONE_FACTOR
    bank = sum(
        (1 + max(0, motion_frames)) * (side // down) ** 2 * channels * layers * 2 * dtype_bytes for down, channels, layers in BANK_LEVELS
    )
    decode = min(DECODE_BATCH, frames_per_clip) * size * size * DECODE_CHANNELS * DECODE_LIVE_TENSORS * dtype_bytes
    return int(max(denoiser, decode) + bank)

"""Sampling settings: what one generation is asked to do (steps, guidance, clips, speed, seed), checked against the preset."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ..configs import PresetConfig
from .clip_planner import plan_windows


class GenerationCancelled(RuntimeError):
    """Raised between two denoising steps when the caller asked to stop."""


@dataclass
class SamplingSettings:
    steps: int = 40
    cfg: float = 3.5  # reference / overall guidance
    audio_cfg: float = 3.5  # audio guidance (same as cfg = classic CFG)
    sampler: str = "ddim"
    seed: int = 0
    speed: float | Sequence[float] = 0.7  # head-rotation speed, deg/frame: a constant or a per-frame curve
    strategy: str = "motion_frames"  # or "context_windows"
    frames_per_clip: int = 12
    motion_frames: int = 4
    context_overlap: int = 3
    first_clip_motion: str = "zeros"
    colour_match: str = "none"
    motion_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)  # the region audio modules' pose / face / lip weights
    pad_last_clip: bool = True
    # work savers (the fast mode, docs/performance.md): guidance branches only on the first
    # ``guidance_fraction`` of the steps (the full branch alone after that), and the whole denoiser
    # every ``deep_cache_interval`` steps with deep features reused in between (1 = every step)
    guidance_fraction: float = 1.0
    deep_cache_interval: int = 1
    # performance switches (the naive settings exist for the benchmark's baseline)
    batch_guidance: bool = True
    reference_every_step: bool = False
    # emotion class of the emotion audio modules: one for the whole video, or one per audio-feature row (each clip
    # uses the most frequent of its rows, the smallest on ties); None = the preset's
    emotion: int | Sequence[int] | None = None

    @classmethod
    def from_preset(cls, preset: PresetConfig, **overrides) -> "SamplingSettings":
        base = dict(
            steps=preset.steps,
            cfg=preset.cfg,
            audio_cfg=preset.audio_cfg,
            sampler=preset.sampler,
            speed=preset.speed,
            strategy=preset.strategy,
            frames_per_clip=preset.frames_per_clip,
            motion_frames=preset.motion_frames,
            context_overlap=preset.context_overlap,
            first_clip_motion=preset.first_clip_motion,
            emotion=preset.emotion,
        )
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


@dataclass
class StepInfo:
    clip: int  # index of the clip (or 0 for context windows)
    clips: int
    step: int  # step within the clip, 1-based
    steps: int
    done: int  # denoiser steps done in the whole run
    total: int


def guidance_weights(cfg: float, audio_cfg: float) -> dict[str, float]:
    """Weights of the branches that contribute (zero-weight branches are not run)."""
    weights = {"uncond": 1.0 - cfg, "reference": cfg - audio_cfg, "full": audio_cfg}
    return {k: w for k, w in weights.items() if abs(w) > 1e-8}


def speed_curve(speed: float | Sequence[float] | torch.Tensor, num_frames: int) -> torch.Tensor:
    """A constant or any-length curve -> one speed per frame (linear resampling)."""
    values = torch.as_tensor(speed, dtype=torch.float32).flatten()
    if values.numel() == 1:
        return values.expand(num_frames).clone()
    if values.numel() == num_frames:
        return values
    return F.interpolate(values[None, None], size=num_frames, mode="linear", align_corners=True)[0, 0]


def fast_settings(preset: PresetConfig) -> dict:
    """The fast mode (``generate --fast``, the sampler node's ``fast``): overrides of a family's preset.

    DPM++ 2M at 0.4x the preset's steps (never fewer than 8, or than the preset's own count where that is
    lower, e.g. distilled models) and the whole denoiser every second step, with deep features reused in
    between; guidance stays on every step (cutting it cost the most lip sync of the three savers).
    Chosen from the table of ``python -m emo_model eval-fast`` (``docs/performance.md``): on the demo,
    a third of the default recipe's denoiser work with lip sync no worse.
    """
    steps = max(round(preset.steps * 0.4), min(preset.steps, 8))
    sampler = "dpmpp_2m" if preset.scheduler.flow_shift is None else preset.sampler  # flow models keep their sampler
    return {"sampler": sampler, "steps": steps, "guidance_fraction": 1.0, "deep_cache_interval": 2}


def estimate_clips(num_frames: int, settings: SamplingSettings) -> int:
    """How many clips (or windows) a run of ``num_frames`` frames takes (for run summaries)."""
    if settings.strategy == "context_windows":
        return len(plan_windows(num_frames, settings.frames_per_clip, settings.context_overlap))
    return math.ceil(num_frames / settings.frames_per_clip)

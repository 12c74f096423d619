"""Noise schedulers from diffusers, configured from a family's :class:`SchedulerConfig`.

DDIM is the default (the paper samples with 40 DDIM steps). Every sampler gets the same training
schedule (betas, prediction type: epsilon or v, zero-terminal-SNR rescale, timestep spacing), so
switching sampler never silently changes what the model is asked to predict.

Rectified-flow models (``SchedulerConfig.flow_shift`` set: the denoiser predicts a velocity) are sampled with
diffusers' flow-matching Euler sampler (``flow_euler``); the DDPM-family samplers do not apply to them, nor the
other way round. Neither the flow sampler nor its inputs are scaled: :func:`init_noise_sigma` and
:func:`scale_model_input` give what every sampler needs.
"""

from __future__ import annotations

import dataclasses

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    LCMScheduler,
    UniPCMultistepScheduler,
)

from ..configs import SchedulerConfig

SAMPLERS = {
    "ddim": (DDIMScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2, "final_sigmas_type": "zero"}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_ancestral": (EulerAncestralDiscreteScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {"final_sigmas_type": "zero"}),
    "lcm": (LCMScheduler, {}),
}
FLOW_SAMPLERS = {"flow_euler": (FlowMatchEulerDiscreteScheduler, {})}


def make_scheduler(sampler: str, cfg: SchedulerConfig):
    """A fresh diffusers scheduler for ``sampler`` (one of :data:`SAMPLERS`, or of :data:`FLOW_SAMPLERS` for a
    rectified-flow model)."""
    flow = cfg.flow_shift is not None
    table = FLOW_SAMPLERS if flow else SAMPLERS
    if sampler not in table:
        other = SAMPLERS if flow else FLOW_SAMPLERS
        if sampler not in other:
            why = f"unknown sampler {sampler!r}"
        elif flow:
            why = f"this model predicts flow velocities, which only {', '.join(table)} sample"
        else:
            why = f"{sampler} samples rectified-flow models only, and this model is not one"
        raise ValueError(f"{why}; choose one of {', '.join(table)}")
    cls, extra = table[sampler]
    if flow:
        return cls(num_train_timesteps=cfg.num_train_timesteps, shift=cfg.flow_shift, **extra)
    kwargs = dataclasses.asdict(cfg)
    kwargs.pop("flow_shift")
    if cls is not DDIMScheduler:
        kwargs.pop("clip_sample")
        kwargs.pop("set_alpha_to_one")
    return cls(**kwargs, **extra)


def samplers_for(cfg: SchedulerConfig) -> tuple[str, ...]:
    """The sampler names that apply to a model with this schedule."""
    return tuple(FLOW_SAMPLERS if cfg.flow_shift is not None else SAMPLERS)


def init_noise_sigma(scheduler) -> float:
    """The factor on the initial Gaussian noise (1 for samplers that do not scale it, e.g. flow matching)."""
    return float(getattr(scheduler, "init_noise_sigma", 1.0))


def scale_model_input(scheduler, latents, t):
    """The sampler's input scaling of the latents (identity for samplers without one)."""
    scale = getattr(scheduler, "scale_model_input", None)
    return latents if scale is None else scale(latents, t)

"""Noise schedulers from diffusers, configured from a family's :class:`SchedulerConfig`.

DDIM is the default (the paper samples with 40 DDIM steps). Every sampler gets the same training
schedule (betas, prediction type: epsilon or v, zero-terminal-SNR rescale, timestep spacing), so
switching sampler never silently changes what the model is asked to predict.
"""

from __future__ import annotations

import dataclasses

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    UniPCMultistepScheduler,
)

from .configs import SchedulerConfig

SAMPLERS = {
    "ddim": (DDIMScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2, "final_sigmas_type": "zero"}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_ancestral": (EulerAncestralDiscreteScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {"final_sigmas_type": "zero"}),
    "lcm": (LCMScheduler, {}),
}


def make_scheduler(sampler: str, cfg: SchedulerConfig):
    """A fresh diffusers scheduler for ``sampler`` (one of :data:`SAMPLERS`)."""
    try:
        cls, extra = SAMPLERS[sampler]
    except KeyError:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}") from None
    kwargs = dataclasses.asdict(cfg)
    if cls is not DDIMScheduler:
        kwargs.pop("clip_sample")
        kwargs.pop("set_alpha_to_one")
    return cls(**kwargs, **extra)

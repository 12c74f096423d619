"""Every sampler's built scheduler against the family's schedule settings, with expected values computed here.

For every named config and every sampler that applies to it (``samplers_for``), the scheduler ``make_scheduler``
builds is checked against values derived by hand from the family's :class:`SchedulerConfig`, never read back from
the scheduler or from diffusers:

* the noise schedule: the betas (linear / scaled-linear), with the zero-terminal-SNR rescale of Lin et al. 2024
  ("Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1) when the family asks for it;
* the timestep spacing ("trailing": the first step starts at the last training timestep, which zero-SNR needs);
* the prediction type, by behaviour: a perfect denoiser of a single known sample ``x0`` (its prediction written out
  from the prediction type's definition: epsilon, or v = sqrt(a) eps - sqrt(1 - a) x0) must be led to ``x0``;
  a scheduler that read the prediction as another type would end elsewhere;
* for a rectified-flow family, the flow shift: the sigmas sigma' = s * sigma / (1 + (s - 1) * sigma) of the
  linear sigmas from 1 to 1/T, and the same perfect-denoiser check with velocity = noise - x0.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from emo_model.configs import SchedulerConfig
from emo_model.families import CONFIGS, get_config
from emo_model.sampling.schedulers import make_scheduler, samplers_for, scale_model_input

STEPS = 4


def named_schedules() -> list:
    """(config name, its SchedulerConfig) for every named config; plus a flow schedule with a shift other than 1."""
    out = [(name, get_config(name).preset.scheduler) for name in CONFIGS]
    flows = [cfg for _, cfg in out if cfg.flow_shift is not None]
    if flows:
        out.append(("flow-shift-3", dataclasses.replace(flows[0], flow_shift=3.0, num_train_timesteps=500)))
    # the other values of the fields the families use (Stable Diffusion's own schedule)
    out.append(("epsilon-scaled-linear", SchedulerConfig(prediction_type="epsilon", rescale_betas_zero_snr=False,
                                                         beta_schedule="scaled_linear")))
    return out


CASES = [pytest.param(name, cfg, sampler, id=f"{name}-{sampler}")
         for name, cfg in named_schedules() for sampler in samplers_for(cfg)]


def hand_alphas_cumprod(cfg: SchedulerConfig) -> torch.Tensor:
    """alpha-bar of every training timestep, in float64, from the config's fields alone."""
    n = cfg.num_train_timesteps
    if cfg.beta_schedule == "linear":
        betas = torch.linspace(cfg.beta_start, cfg.beta_end, n, dtype=torch.float64)
    elif cfg.beta_schedule == "scaled_linear":
        betas = torch.linspace(math.sqrt(cfg.beta_start), math.sqrt(cfg.beta_end), n, dtype=torch.float64) ** 2
    else:
        raise AssertionError(f"no hand formula for beta_schedule {cfg.beta_schedule!r}: add one")
    abar = torch.cumprod(1 - betas, 0)
    if cfg.rescale_betas_zero_snr:  # Lin et al. Algorithm 1: shift sqrt(abar) so the last is 0, keep the first
        s = abar.sqrt()
        first, last = s[0].clone(), s[-1].clone()
        s = (s - last) * first / (first - last)
        abar = s**2
    return abar


def hand_timesteps(cfg: SchedulerConfig, steps: int) -> list[int]:
    n = cfg.num_train_timesteps
    if cfg.timestep_spacing == "trailing":  # n-1, then every n/steps down
        return [round(n - k * n / steps) - 1 for k in range(steps)]
    raise AssertionError(f"no hand formula for timestep_spacing {cfg.timestep_spacing!r}: add one")


def test_hand_formulas_sanity():
    """Fixture sanity of the oracle itself: the known values of the schedules the families use."""
    cfg = SchedulerConfig()
    abar = hand_alphas_cumprod(cfg)
    assert abar[-1] == 0 and abar[0] == pytest.approx(1 - cfg.beta_start)  # zero terminal SNR, first step unchanged
    assert hand_timesteps(cfg, 4) == [999, 749, 499, 249]
    assert hand_timesteps(cfg, 10) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    sd = hand_alphas_cumprod(dataclasses.replace(cfg, rescale_betas_zero_snr=False, beta_schedule="scaled_linear"))
    assert sd[-1] == pytest.approx(0.0047, abs=1e-4)  # SD's schedule ends short of pure noise: why the rescale exists


@pytest.mark.parametrize("name,cfg,sampler", CASES)
def test_built_scheduler_follows_the_family_schedule(name, cfg, sampler):
    sched = make_scheduler(sampler, cfg)
    sched.set_timesteps(STEPS)
    timesteps = [int(round(float(t))) for t in sched.timesteps]
    if cfg.flow_shift is not None:
        n = cfg.num_train_timesteps
        shifted = lambda s: cfg.flow_shift * s / (1 + (cfg.flow_shift - 1) * s)  # noqa: E731
        # linear from 1 to the training schedule's smallest sigma (1/T, shifted), then shifted (the flow-matching
        # Euler convention: the lower end is shifted twice)
        sigmas = shifted(torch.linspace(1.0, shifted(1.0 / n), STEPS, dtype=torch.float64))
        got = torch.as_tensor(sched.sigmas, dtype=torch.float64)
        torch.testing.assert_close(got[:STEPS], sigmas, atol=1e-4, rtol=0)  # float32 inside the scheduler
        assert float(got[-1]) == 0.0
        torch.testing.assert_close(torch.as_tensor(sched.timesteps, dtype=torch.float64), sigmas * n, atol=0.05, rtol=0)
        return
    abar = hand_alphas_cumprod(cfg)
    got = torch.as_tensor(sched.alphas_cumprod, dtype=torch.float64)
    # diffusers keeps the last alpha-bar of a zero-SNR schedule at 2**-24 (not 0) so the Euler sigmas stay finite
    torch.testing.assert_close(got[:-1], abar[:-1], atol=2e-6, rtol=1e-5)
    assert float(got[-1]) == pytest.approx(float(abar[-1]), abs=2**-23)
    if sampler == "lcm":  # LCM picks from its own grid of 50 "original" steps whatever the spacing; the last first
        assert timesteps[0] == cfg.num_train_timesteps - 1 and timesteps == sorted(set(timesteps), reverse=True)
    else:
        assert timesteps == hand_timesteps(cfg, STEPS), (timesteps, hand_timesteps(cfg, STEPS))


def perfect_prediction(cfg: SchedulerConfig, abar: torch.Tensor, x_t: torch.Tensor, t, x0: torch.Tensor) -> torch.Tensor:
    """What an ideal denoiser of data that is always ``x0`` predicts at timestep ``t`` for the input ``x_t``."""
    if cfg.flow_shift is not None:  # x_t = (1 - sigma) x0 + sigma noise, velocity = noise - x0
        sigma = float(t) / cfg.num_train_timesteps
        return (x_t - x0) / sigma
    a = abar[int(round(float(t)))].double()
    eps = (x_t.double() - a.sqrt() * x0.double()) / (1 - a).sqrt()
    if cfg.prediction_type == "epsilon":
        return eps.float()
    assert cfg.prediction_type == "v_prediction", cfg.prediction_type
    return (a.sqrt() * eps - (1 - a).sqrt() * x0.double()).float()


@pytest.mark.parametrize("name,cfg,sampler", CASES)
def test_a_perfect_denoiser_is_led_to_its_sample(name, cfg, sampler):
    """The prediction type, by behaviour: sampling with the ideal prediction of a known x0 ends at x0."""
    sched = make_scheduler(sampler, cfg)
    sched.set_timesteps(10)
    abar = hand_alphas_cumprod(cfg) if cfg.flow_shift is None else None
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, 2, 3, 3, generator=g) * 0.5
    sample = torch.randn(x0.shape, generator=g) * float(getattr(sched, "init_noise_sigma", 1.0))
    last_eps = None
    for t in sched.timesteps:
        x_in = scale_model_input(sched, sample, t)
        pred = perfect_prediction(cfg, abar, x_in, t, x0)
        if abar is not None:
            a = abar[int(round(float(t)))]
            last_eps = ((x_in.double() - a.sqrt() * x0.double()) / (1 - a).sqrt()).float()
        kwargs = {"generator": g} if sampler in ("euler_ancestral", "lcm") else {}
        sample = sched.step(pred, t, sample, **kwargs).prev_sample
    want = x0
    if sampler == "ddim" and not cfg.set_alpha_to_one:  # DDIM's last step goes to alpha-bar[0], not to 1
        want = abar[0].sqrt().float() * x0 + (1 - abar[0]).sqrt().float() * last_eps
    torch.testing.assert_close(sample, want, atol=2e-3, rtol=0)


def test_each_schedule_gets_its_own_samplers_and_a_wrong_one_is_refused_in_one_line():
    """The samplers of a DDPM-family schedule and of a rectified-flow one (the README's list), and one line naming
    the right ones when a sampler of the other kind, or an unknown one, is asked for."""
    ddpm, flow = SchedulerConfig(), SchedulerConfig(flow_shift=1.0)
    assert samplers_for(ddpm) == ("ddim", "dpmpp_2m", "euler", "euler_ancestral", "unipc", "lcm")
    assert samplers_for(flow) == ("flow_euler",)
    with pytest.raises(ValueError) as info:
        make_scheduler("ddim", flow)
    assert str(info.value) == "this model predicts flow velocities, which only flow_euler sample; choose one of flow_euler"
    with pytest.raises(ValueError) as info:
        make_scheduler("flow_euler", ddpm)
    assert str(info.value) == ("flow_euler samples rectified-flow models only, and this model is not one; "
                               "choose one of ddim, dpmpp_2m, euler, euler_ancestral, unipc, lcm")
    with pytest.raises(ValueError, match=r"^unknown sampler 'heun'; choose one of flow_euler$"):
        make_scheduler("heun", flow)


class Built:
    """A scheduler class stand-in: keeps the keyword arguments it was built with."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs


def test_a_samplers_own_settings_reach_its_scheduler(monkeypatch):
    """A sampler's row in the table carries settings of its own (dpmpp_2m's solver, unipc's final sigma); today's
    diffusers defaults happen to equal them, so the built scheduler cannot show they were passed: a stand-in can."""
    from emo_model.sampling import schedulers

    monkeypatch.setitem(schedulers.SAMPLERS, "stand_in", (Built, {"solver_order": 3}))
    monkeypatch.setitem(schedulers.FLOW_SAMPLERS, "flow_stand_in", (Built, {"stochastic": True}))
    ddpm = SchedulerConfig(num_train_timesteps=500)
    got = make_scheduler("stand_in", ddpm).kwargs
    assert got["solver_order"] == 3 and got["num_train_timesteps"] == 500 and "clip_sample" not in got
    assert make_scheduler("flow_stand_in", SchedulerConfig(flow_shift=2.0, num_train_timesteps=700)).kwargs == {
        "num_train_timesteps": 700, "shift": 2.0, "stochastic": True}
    with pytest.raises(ValueError, match=r"^this model predicts flow velocities, which only flow_euler, flow_stand_in sample;"):
        make_scheduler("ddim", SchedulerConfig(flow_shift=1.0))


def test_init_noise_sigma_is_the_samplers_own_or_one():
    from types import SimpleNamespace

    from emo_model.sampling.schedulers import init_noise_sigma

    assert init_noise_sigma(SimpleNamespace()) == 1.0 and isinstance(init_noise_sigma(SimpleNamespace()), float)
    assert init_noise_sigma(SimpleNamespace(init_noise_sigma=torch.tensor(14.5))) == 14.5
    euler = make_scheduler("euler", SchedulerConfig(prediction_type="epsilon", rescale_betas_zero_snr=False,
                                                    timestep_spacing="leading"))
    euler.set_timesteps(STEPS)
    # Euler scales the noise by sqrt(sigma_max^2 + 1) for "leading" spacing: sigma_max from the first timestep's alpha-bar
    betas = torch.linspace(0.00085, 0.012, 1000, dtype=torch.float64)  # the default "linear" schedule
    abar = torch.cumprod(1 - betas, 0)[int(euler.timesteps[0])]
    sigma = ((1 - abar) / abar).sqrt()
    assert init_noise_sigma(euler) == pytest.approx(float((sigma**2 + 1).sqrt()), rel=1e-4)

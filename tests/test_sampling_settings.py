"""Sampling settings: preset defaults and overrides, guidance weights, speed curves, the fast mode, clip counts."""

from __future__ import annotations

import pytest
import torch

from emo_model.configs import PresetConfig, SchedulerConfig
from emo_model.sampling.settings import SamplingSettings, estimate_clips, fast_settings, guidance_weights, speed_curve


def _preset(**kw) -> PresetConfig:
    base = dict(
        strategy="context_windows", frames_per_clip=16, motion_frames=2, context_overlap=5, first_clip_motion="reference",
        sampler="dpmpp_2m", steps=25, cfg=4.5, audio_cfg=2.5, speed=0.3, emotion=6,
    )
    return PresetConfig(**{**base, **kw})


def test_settings_take_every_sampling_default_from_the_preset():
    s = SamplingSettings.from_preset(_preset())
    got = (s.strategy, s.frames_per_clip, s.motion_frames, s.context_overlap, s.first_clip_motion, s.sampler, s.steps)
    assert got == ("context_windows", 16, 2, 5, "reference", "dpmpp_2m", 25)
    assert (s.cfg, s.audio_cfg, s.speed, s.emotion) == (4.5, 2.5, 0.3, 6)
    assert (s.seed, s.guidance_fraction, s.deep_cache_interval, s.pad_last_clip) == (0, 1.0, 1, True)  # not the preset's


def test_an_override_replaces_the_preset_value_and_none_keeps_it():
    s = SamplingSettings.from_preset(_preset(), steps=3, cfg=1.0, seed=7, sampler=None, emotion=None, deep_cache_interval=2)
    assert (s.steps, s.cfg, s.seed, s.deep_cache_interval) == (3, 1.0, 7, 2)
    assert (s.sampler, s.emotion, s.audio_cfg) == ("dpmpp_2m", 6, 2.5)


def test_guidance_weights_keep_a_tiny_weight_and_drop_only_zero():
    # uncond = 1 - cfg, reference = cfg - audio_cfg, full = audio_cfg
    w = guidance_weights(1.0 + 1e-6, 1.0)
    assert set(w) == {"uncond", "reference", "full"} and w["uncond"] == pytest.approx(-1e-6) and w["full"] == 1.0
    assert guidance_weights(1.0 + 1e-12, 1.0) == {"full": 1.0}  # below 1e-8: rounding, not a branch
    assert guidance_weights(0.0, 0.0) == {"uncond": 1.0}  # no guidance at all: the unconditional prediction
    assert guidance_weights(1e-8, 1e-8) == {"uncond": 1.0 - 1e-8}  # a weight of exactly 1e-8 is dropped


def test_speed_curve_resamples_linearly_end_to_end():
    torch.testing.assert_close(speed_curve([0, 2, 1], 5), torch.tensor([0.0, 1.0, 2.0, 1.5, 1.0]))  # at 0, .5, 1, 1.5, 2
    torch.testing.assert_close(speed_curve(torch.tensor([1.0, 3.0], dtype=torch.float64), 3), torch.tensor([1.0, 2.0, 3.0]))
    assert speed_curve([0, 2, 1], 5).dtype == torch.float32
    assert speed_curve([[0.5, 0.25]], 2).tolist() == [0.5, 0.25]  # one value per frame, any nesting: kept as given


def test_a_constant_speed_is_one_writable_value_per_frame():
    curve = speed_curve(0.5, 3)
    curve[0] = 2.0  # a real tensor, not three views of one number
    assert curve.tolist() == [2.0, 0.5, 0.5] and curve.dtype == torch.float32


@pytest.mark.parametrize("steps,expected", [(40, 16), (25, 10), (24, 10), (10, 8), (8, 8), (4, 4)])
def test_fast_mode_runs_0_4_of_the_steps_never_fewer_than_8_or_the_presets_own_count(steps, expected):
    # 40 * 0.4 = 16; 24 * 0.4 = 9.6 -> 10 (rounded, not cut); 10 * 0.4 = 4 -> at least 8; a 4-step preset keeps 4
    assert fast_settings(_preset(steps=steps)) == {"sampler": "dpmpp_2m", "steps": expected, "guidance_fraction": 1.0,
                                                   "deep_cache_interval": 2}


def test_fast_mode_keeps_a_flow_models_sampler():
    flow = _preset(sampler="flow_euler", steps=20, scheduler=SchedulerConfig(flow_shift=3.0))
    assert fast_settings(flow) == {"sampler": "flow_euler", "steps": 8, "guidance_fraction": 1.0, "deep_cache_interval": 2}
    assert fast_settings(_preset(sampler="ddim"))["sampler"] == "dpmpp_2m"


def test_estimate_clips_counts_clips_or_windows():
    clips = SamplingSettings(strategy="motion_frames", frames_per_clip=8)
    assert [estimate_clips(n, clips) for n in (1, 8, 9, 16, 17)] == [1, 1, 2, 2, 3]
    windows = SamplingSettings(strategy="context_windows", frames_per_clip=4, context_overlap=1)
    assert [estimate_clips(n, windows) for n in (3, 4, 10, 11)] == [1, 1, 3, 4]  # stride 3; 11 needs a 4th, end-aligned

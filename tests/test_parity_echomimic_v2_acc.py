"""Family parity, EchoMimic v2's ``_acc`` variant: our ``acc`` preset against the ORIGINAL's acc pipeline.

``parity/echomimic_v2_acc/`` was made by ``tools/parity/floor.py -- ... echomimic_v2_original.py --pipeline acc``
(meta.json: command, commit a312dec0): src/pipelines/pipeline_echomimicv2_acc.py as infer_acc.py calls it, with
infer_acc.py's own settings: cfg 1.0 (no guidance), 6 DDIM steps, context windows of 12 with overlap 3 over 21 frames
(3 windows per step, one wrapping around the end, shifting 3 frames per step); the same tiny weights and inputs as
``parity/echomimic_v2/`` (its buffers and VAE). The files are written under infer_acc.yaml's names
(``denoising_unet_acc.pth``, ``motion_module_acc.pth``), so our loader picks the ``acc`` variant and its preset (6 steps,
cfg 1.0) is what runs.

What the acc pipeline does beyond the standard one (pipeline_echomimicv2_acc.py, a312dec0), and how ours matches it:

* :481-484, after every UNet call: x0 = origin_by_velocity_and_sample(v, x_t, t) = a_t x_t - b_t v, then the prediction
  replaced by psuedo_velocity_wrt_noisy_and_timestep(x_t, x0, t, -1) = (x0 - a_t x_t) / (0 * a_t - 1 * b_t) (alpha(-1) = 1):
  that is v again, algebraically (src/pipelines/step_func.py:86-112). Only float rounding remains, and it stays under the
  original's own thread floor: ours passes v on unchanged (test_the_pseudo_velocity_is_the_velocity).
* :434 the reference bank written with the real CFG flag, :495-496 the window sum divided by the window count without
  CFG too: what ours always does. (The standard pipeline writes the bank "with CFG" at any cfg (:543) and skips the
  division without CFG (:595-599): there cfg <= 1 stops with a RuntimeError in the reference attention's concatenation
  (a bank of batch 2 against latents of batch 1; docs/parity.md), so no run of the original computes those.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import rel_err
from test_parity_echomimic_v2 import QUIRKS_OFF, compare, load_setup, run_ours

from tests import parity_floor

FIXTURE = Path(__file__).parent / "parity" / "echomimic_v2_acc"
# configs/prompts/infer_acc.yaml (a312dec0): the distilled files' names
ACC_NAMES = {"denoising_unet.pth": "denoising_unet_acc.pth", "motion_module.pth": "motion_module_acc.pth"}

pytestmark = pytest.mark.skipif(not (FIXTURE / "meta.json").is_file(), reason="no EchoMimic v2 acc fixture")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return load_setup(FIXTURE, tmp_path_factory.mktemp("echomimic_v2_acc"), config="tiny-echomimic-v2-acc", names=ACC_NAMES)


@pytest.fixture(scope="module")
def ours(setup):
    return run_ours(setup)


def test_the_fixture_is_infer_acc(setup):
    meta, pipe = setup[0], setup[2]
    s = meta["settings"]
    assert s["pipeline"] == "acc" and meta["original"]["commit"].startswith("a312dec0")
    assert (s["guidance_scale"], s["steps"], s["context_frames"], s["context_overlap"]) == (1.0, 6, 12, 3)  # infer_acc.py
    assert len(meta["context_queue"]) >= 3 and any(w[0] > w[-1] for w in meta["context_queue"]), "no window wraps"
    preset = pipe.model.config.preset
    assert (preset.steps, preset.cfg, preset.audio_cfg) == (s["steps"], s["guidance_scale"], s["guidance_scale"])


def test_every_stage_is_within_the_standard(setup, ours):
    gold = setup[1]
    stages = [k for k in gold if not k.startswith("input.")]
    assert {"frames", "final_latents", "step5.guided", "step0.call0.pred"} <= set(stages)
    results = {stage: compare(stage, ours, gold) for stage in stages}
    for stage, rel in results.items():
        print(f"{stage}: {rel:.2e} (floor {parity_floor.floor(FIXTURE, stage):.1e})")
    failed = {k: v for k, v in results.items() if v > parity_floor.tolerance(FIXTURE, k)}
    assert not failed, f"stages past max(1e-4, 3 x floor): {failed}"


def test_the_pseudo_velocity_is_the_velocity(setup, ours):
    """pipeline_echomimicv2_acc.py:481-484 on our denoiser outputs and the original's latents at each call, in float32
    as the original computes it: the round trip v -> x0 -> pseudo-velocity moves no prediction by more than the
    original's own thread floor at that call, so our sampler passes v on as it is."""
    from diffusers import DDIMScheduler

    meta, gold = setup[0], setup[1]
    sch = DDIMScheduler(**meta["settings"]["scheduler"])
    sch.set_timesteps(meta["settings"]["steps"])
    calls = {}
    for step, index in meta["windows_per_call"]:
        calls[step] = calls.get(step, []) + [index]
    for i, t in enumerate(sch.timesteps):
        latents = gold["initial_latents" if i == 0 else f"step{i - 1}.latents"]
        alpha = sch.alphas_cumprod[t]
        a_t, b_t = alpha**0.5, (1 - alpha) ** 0.5  # get_alpha; alpha(-1) = 1: a_s = 1, b_s = 0
        for call, index in enumerate(calls[i]):
            assert -1 not in index
            x, v = latents[:, :, index], ours[f"step{i}.call{call}.pred"]
            x0 = a_t * x - b_t * v  # origin_by_velocity_and_sample
            pseudo = (x0 - (1 * a_t + 0 * b_t) * x) / (0 * a_t - 1 * b_t)  # psuedo_velocity_wrt_noisy_and_timestep
            rel = rel_err(pseudo, v)[1]
            assert rel <= parity_floor.floor(FIXTURE, f"step{i}.call{call}.pred"), (i, call, rel)


# The quirks the acc pipeline carries in its own copy of the code (pipeline_echomimicv2_acc.py:246 the noise clamp,
# :452 the shift of 3 frames per step); the audio attention scale lives in the module both pipelines share
# (src/models/mutual_self_attention.py), switched off in tests/test_parity_echomimic_v2.py. Each run costs ~30 s here.
ACC_QUIRKS = ("context_shift_per_step", "initial_noise_clamp")


@pytest.mark.parametrize("field", ACC_QUIRKS)
def test_a_quirk_switched_off_fails(setup, field):
    gold = setup[1]
    rel = compare("frames", run_ours(setup, **{field: QUIRKS_OFF[field]}), gold)
    print(f"{field} = {QUIRKS_OFF[field]}: frames {rel:.2e}")
    assert rel > parity_floor.tolerance(FIXTURE, "frames"), f"{field} off: the frames still match ({rel:.2e})"

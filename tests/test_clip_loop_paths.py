"""Two paths of the clip loop's guided prediction (``clip_loop._Run._predict``) the guidance oracle cannot see.

1. The sampler's input scaling. DDIM and DPM++ feed the denoiser the latents as they are; the Euler samplers
   feed it ``x / sqrt(sigma_t^2 + 1)``. With ``sigma_t^2 = (1 - abar_t) / abar_t`` that is ``x * sqrt(abar_t)``,
   so the expected input is worked out here from the preset's schedule alone: linear betas, the cumulative
   product, the zero-terminal-SNR rescale (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps
   are Flawed", algorithm 1: shift sqrt(abar) so its last value is 0, scale so its first is unchanged) and
   "trailing" timesteps (``round(1000 - k * 1000 / steps) - 1``). At the terminal step abar is 0; diffusers'
   Euler documents that it uses 2**-24 there instead (an infinite sigma cannot be stepped), so the scale is 2**-12.
   The stand-in network records what it receives; its output depends on its input.

2. The naive baseline ``reference_every_step`` (the ReferenceNet run on every step instead of once per video) in a
   config with identity tokens whose portrait rows alternate identities (Hallo's quirks, ``tiny-hallo2``): on every
   step the reference is re-encoded with the portrait's identity tokens, the original's two portrait rows are
   built (row 0 reads the unconditional identity; with an even number of motion frames, row n + 1 is odd and
   reads the portrait's identity), no projected keys / values are reused, and the motion features are one row per
   branch of the forward. The expected bank is encoded here from the portrait latent and the two identities.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import perturb_zero_inits, tiny_vae

from emo_model.network.model import EMOModel
from emo_model.network.vae import DiffusersVAE
from emo_model.sampling import pipeline as pipeline_module
from emo_model.sampling.pipeline import EMOPipeline
from emo_model.sampling.settings import SamplingSettings


def make_pipe(name: str):
    torch.manual_seed(0)
    model = perturb_zero_inits(EMOModel(name).eval())
    pipe = EMOPipeline(model, DiffusersVAE(tiny_vae()))
    g = torch.Generator().manual_seed(3)
    embedding = torch.randn(model.imageproj.cfg.embed_dim, generator=g) if model.imageproj is not None else None
    ref = pipe.encode_reference(torch.rand(64, 64, 3, generator=g), identity_embedding=embedding)
    return pipe, ref


def features(pipe, frames: int) -> torch.Tensor:
    proj = pipe.model.audioproj.cfg
    return torch.randn(frames, proj.seq_len, proj.blocks, proj.channels, generator=torch.Generator().manual_seed(1))


def hand_alphas_bar(start: float, end: float, n: int = 1000) -> list[float]:
    """abar_t of linear betas with the zero-terminal-SNR rescale, in float64 (written from the paper's algorithm)."""
    betas = [start + (end - start) * i / (n - 1) for i in range(n)]
    s, prod = [], 1.0
    for b in betas:
        prod *= 1.0 - b
        s.append(math.sqrt(prod))
    first, last = s[0], s[-1]
    return [((v - last) * first / (first - last)) ** 2 for v in s]


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral"])
def test_euler_samplers_feed_the_denoiser_the_scaled_latents(monkeypatch, sampler):
    pipe, ref = make_pipe("tiny")
    sch = pipe.config.preset.scheduler
    # the schedule this hand computation assumes (the tiny preset's); a changed preset fails here, not silently
    schedule = (sch.beta_schedule, sch.rescale_betas_zero_snr, sch.timestep_spacing, sch.num_train_timesteps)
    assert schedule == ("linear", True, "trailing", 1000)
    abar = hand_alphas_bar(sch.beta_start, sch.beta_end)
    assert abar[-1] == pytest.approx(0.0, abs=1e-12)
    abar[-1] = 2.0**-24  # diffusers' stand-in for the terminal step (see the module docstring)

    received: list[tuple[torch.Tensor, int]] = []
    stepped: list[torch.Tensor] = []

    def net(sample, timestep, cond):
        received.append((sample.detach().clone(), int(timestep)))
        return 0.5 * sample  # depends on its input

    original_step = pipeline_module._Run._step

    def recording_step(self, pred, t, latents, generator):
        stepped.append(latents.detach().clone())  # the unscaled latents this step's prediction was made for
        return original_step(self, pred, t, latents, generator)

    monkeypatch.setattr(pipe.model, "forward", net)
    monkeypatch.setattr(pipeline_module._Run, "_step", recording_step)
    settings = SamplingSettings.from_preset(pipe.config.preset, steps=2, cfg=1.0, audio_cfg=1.0, sampler=sampler,
                                            strategy="motion_frames", frames_per_clip=6)
    pipe.generate_frames(ref, features(pipe, 6), settings=settings)
    monkeypatch.undo()

    assert [t for _, t in received] == [999, 499]  # trailing spacing, 2 steps: round(1000 - k * 500) - 1
    assert len(stepped) == 2
    for (sample, t), latents in zip(received, stepped):
        scale = math.sqrt(abar[t])
        assert 1e-4 < scale < 0.5  # far from 1: the unscaled latents cannot pass
        assert sample.shape[0] == 1
        assert torch.allclose(sample, latents * scale, rtol=1e-3, atol=1e-7), (
            f"t={t}: the denoiser got {float(sample.abs().max()):.4g}, expected latents x {scale:.4g} "
            f"= {float((latents * scale).abs().max()):.4g}"
        )


def test_reference_every_step_reencodes_the_portrait_with_its_identity_in_the_original_rows(monkeypatch):
    pipe, ref = make_pipe("tiny-hallo2")
    q = pipe.config.preset.quirks
    assert q.reference_identity_alternates and q.reference_rows_tiled and ref.identity_tokens is not None
    assert not torch.equal(ref.identity_tokens, ref.identity_uncond)
    model = pipe.model
    with torch.no_grad():  # the two portrait rows, encoded here: unconditional identity, then the portrait's
        uncond = model.encode_reference(ref.latent, ref.identity_uncond).tokens
        portrait = model.encode_reference(ref.latent, ref.identity_tokens).tokens
    want = {k: torch.cat([uncond[k], portrait[k]]) for k in uncond}
    # the identity must matter, or this test could not tell the identities apart
    assert any(not torch.allclose(uncond[k], portrait[k]) for k in uncond)

    encodes: list[torch.Tensor | None] = []
    original_encode = model.encode_reference

    def spy_encode(latents, identity_tokens=None):
        encodes.append(identity_tokens)
        return original_encode(latents, identity_tokens)

    forwards: list[dict] = []

    def net(sample, timestep, cond):
        bank = cond.reference
        forwards.append({"rows": sample.shape[0], "kv": cond.reference_kv,
                         "tokens": {k: v.clone() for k, v in bank.tokens.items()},
                         "motion": None if bank.motion is None else {k: v.shape[0] for k, v in bank.motion.items()}})
        return 0.5 * sample

    monkeypatch.setattr(model, "encode_reference", spy_encode)
    monkeypatch.setattr(model, "forward", net)
    # all three branches (cfg != audio_cfg, both > 1), even motion frames, 9 frames in clips of 6: two clips x 2 steps
    settings = SamplingSettings.from_preset(pipe.config.preset, steps=2, cfg=2.5, audio_cfg=4.0, sampler="ddim",
                                            strategy="motion_frames", frames_per_clip=6, motion_frames=2,
                                            reference_every_step=True, batch_guidance=True)
    mask = torch.zeros(64, 64)
    mask[16:48, 16:48] = 1
    regions = torch.stack([torch.ones(64, 64), mask, mask])
    pipe.generate_frames(ref, features(pipe, 9), settings=settings, face_mask=mask, region_masks=regions)
    monkeypatch.undo()

    assert len(forwards) == 4  # one batched forward per step
    # re-encoded on every forward with the portrait's identity tokens (plus the unconditional row each time)
    with_portrait = [e for e in encodes if e is not None and torch.equal(e, ref.identity_tokens)]
    assert len(with_portrait) == len(forwards)
    for f in forwards:
        assert f["rows"] == 3
        assert f["kv"] is None  # nothing projected once and reused
        assert f["tokens"].keys() == want.keys()
        for k, v in want.items():
            assert f["tokens"][k].shape == v.shape, (k, f["tokens"][k].shape, v.shape)
            assert torch.allclose(f["tokens"][k], v, rtol=1e-5, atol=1e-6), k
    # motion features in the second clip: one row per branch of the forward (the first clip reads the portrait's)
    last = forwards[-1]["motion"]
    assert last and set(last.values()) == {3}, last


def test_each_branch_forward_gets_the_conditioning_of_its_branch(monkeypatch):
    """What one forward per branch (``batch_guidance=False``) carries besides the tokens the guidance oracle reads.

    tiny-hallo2 (tiled reference rows, alternating identities), clips of 5 frames (odd, so the two halves of the
    original's batch differ): by hand, the original's row for frame j is j for the unconditional branch and 5 + j
    for a conditional one, and the portrait row read is that row mod 2: [0, 1, 0, 1, 0] and [1, 0, 1, 0, 1].
    Every forward carries one row, the reference bank with its motion features, the projected keys / values, the
    region masks and the settings' motion scale.
    """
    pipe, ref = make_pipe("tiny-hallo2")
    assert pipe.config.preset.quirks.reference_rows_tiled
    seen: list[tuple[int, object]] = []

    def net(sample, timestep, cond):
        seen.append((sample.shape[0], cond))
        return 0.5 * sample

    monkeypatch.setattr(pipe.model, "forward", net)
    settings = SamplingSettings.from_preset(pipe.config.preset, steps=2, cfg=2.5, audio_cfg=4.0, sampler="ddim",
                                            strategy="motion_frames", frames_per_clip=5, motion_frames=2,
                                            batch_guidance=False, motion_scale=(1.25, 0.75, 0.5))
    mask = torch.zeros(64, 64)
    mask[16:48, 16:48] = 1
    regions = torch.stack([torch.ones(64, 64), mask, mask])
    pipe.generate_frames(ref, features(pipe, 5), settings=settings, face_mask=mask, region_masks=regions)
    monkeypatch.undo()

    assert len(seen) == 2 * 3  # one clip, 2 steps, one forward for each of the three branches
    want_rows = {False: [0, 1, 0, 1, 0], True: [1, 0, 1, 0, 1]}  # keyed by "conditional branch"
    for rows, cond in seen:
        assert rows == 1
        conditional = bool(cond.reference_enabled[0])
        assert cond.reference_rows is not None and cond.reference_rows.tolist() == [want_rows[conditional]]
        assert cond.reference is not None and cond.reference.motion is not None
        assert cond.reference_kv is not None
        assert cond.region_masks is not None
        assert tuple(cond.motion_scale) == (1.25, 0.75, 0.5)
    assert sorted(bool(c.reference_enabled[0]) for _, c in seen) == [False] * 2 + [True] * 4


def test_context_windows_feed_each_window_its_own_audio_and_the_step_timestep(monkeypatch):
    """Context windows: every forward gets the audio tokens of one window of 6 consecutive frames and the step's
    timestep (DDIM, trailing spacing, 2 steps: 999 then 499, as in the Euler test above); the oracle's known net
    reads neither. No guidance (cfg = audio_cfg = 1): one forward per window.
    """
    pipe, ref = make_pipe("tiny")
    feats = features(pipe, 9)
    with torch.no_grad():
        per_start = {j: pipe.model.audio_tokens(feats[j : j + 6]) for j in range(0, 4)}  # every window inside 9 frames
    seen: list[tuple[int, torch.Tensor]] = []

    def net(sample, timestep, cond):
        seen.append((int(timestep), cond.audio_tokens.detach().clone()))
        return 0.5 * sample

    monkeypatch.setattr(pipe.model, "forward", net)
    settings = SamplingSettings.from_preset(pipe.config.preset, steps=2, cfg=1.0, audio_cfg=1.0, sampler="ddim",
                                            strategy="context_windows", frames_per_clip=6, context_overlap=3)
    pipe.generate_frames(ref, feats, settings=settings)
    monkeypatch.undo()

    assert {t for t, _ in seen} == {999, 499} and [t for t, _ in seen] == sorted((t for t, _ in seen), reverse=True)
    for _, tokens in seen:
        assert tokens.shape[1] == 6
        assert any(torch.allclose(tokens, want, atol=1e-6) for want in per_start.values())

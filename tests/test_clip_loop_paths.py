"""Paths of the clip loop (``clip_loop._Run``) the guidance oracle cannot see, checked with recording stand-in networks.

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

3. The context-window loop (``_Run.context_windows``): what each window's forward carries (the caller's noise,
   the window's speed tokens, emotion rows and pose features, its own deep-feature cache), the preset's window
   schedule, the stochastic sampler's generator, the progress reports and the emitted frame runs, each against
   values worked out by hand in the test's docstring.
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
from emo_model.sampling.schedulers import make_scheduler
from emo_model.sampling.settings import SamplingSettings, StepInfo
from emo_model.validation import GenerationError


def make_pipe(name: str):
    torch.manual_seed(0)
    model = perturb_zero_inits(EMOModel(name).eval())
    pipe = EMOPipeline(model, DiffusersVAE(tiny_vae()))
    g = torch.Generator().manual_seed(3)
    embedding = torch.randn(model.imageproj.cfg.embed_dim, generator=g) if model.imageproj is not None else None
    ref = pipe.encode_reference(torch.rand(64, 64, 3, generator=g), identity_embedding=embedding)
    return pipe, ref


def features(pipe, frames: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if pipe.model.audioproj is None:  # whisper windows used as tokens (EchoMimic): [F, 30, 384]
        return torch.randn(frames, 30, 384, generator=g)
    proj = pipe.model.audioproj.cfg
    return torch.randn(frames, proj.seq_len, proj.blocks, proj.channels, generator=g)


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


# ---- the context-window loop (``clip_loop._Run.context_windows``) with a recording stand-in network ---------------
# 9 frames in windows of 6 overlapping by 3 (the ramp schedule of the plain presets): windows [0..5] and [3..8],
# visited in that order on every step
WINDOWS_9 = [list(range(0, 6)), list(range(3, 9))]


def context_settings(pipe, **kw):
    return SamplingSettings.from_preset(pipe.config.preset, **{"sampler": "ddim", "strategy": "context_windows",
                                                               "frames_per_clip": 6, "context_overlap": 3, **kw})


def recording_net(monkeypatch, pipe, out=lambda sample: 0.5 * sample):
    """Replace the denoiser: record what every forward gets; a deep-feature cache is filled on a refresh, as the
    real network does."""
    seen: list[dict] = []

    def net(sample, timestep, cond):
        cache = cond.feature_cache
        seen.append({"t": int(timestep), "sample": sample.detach().clone(), "cond": cond,
                     "cache": cache, "refresh": None if cache is None else bool(cache.refresh)})
        if cache is not None and cache.refresh:
            cache.features = sample.detach().clone()
        return out(sample)

    monkeypatch.setattr(pipe.model, "forward", net)
    return seen


def test_context_windows_read_the_callers_noise_each_windows_speed_and_report_every_step(monkeypatch):
    """tiny (speed layers), all three branches batched (3 rows), DDIM 2 steps, the caller's initial noise.

    By hand: 2 steps x 2 windows = 4 forwards, in the order step 0 [0..5], [3..8], step 1 [0..5], [3..8]. DDIM's
    initial sigma is 1 and it feeds the latents unscaled, so the first step's forwards get the caller's noise of
    their window's frames. A speed per frame (0, 0.5, .., 4) makes each window's speed tokens those of its own
    frames. No row bank in this config: no reference rows. ``on_step``: (clip 0 of 1, step k of 2, done k of 2).
    The frames are emitted in windows of 6 from frame 0: 6, then 3.
    """
    pipe, ref = make_pipe("tiny")
    model = pipe.model
    noise = torch.randn(model.config.latent_channels, 9, 8, 8, generator=torch.Generator().manual_seed(5))
    speeds = [0.5 * k for k in range(9)]
    with torch.no_grad():
        tokens = model.speed_tokens(torch.tensor(speeds)[None])
    assert tokens is not None and not torch.allclose(tokens[:, :6], tokens[:, 3:])  # the windows' speeds differ
    seen = recording_net(monkeypatch, pipe)
    reports, chunks = [], []
    settings = context_settings(pipe, steps=2, cfg=2.5, audio_cfg=4.0, batch_guidance=True, speed=speeds)
    pipe.generate(ref, features(pipe, 9), settings=settings, sink=chunks.append, noise=noise, on_step=reports.append)
    monkeypatch.undo()

    assert len(seen) == 4
    for k, f in enumerate(seen):
        window = WINDOWS_9[k % 2]
        assert f["sample"].shape[0] == 3
        assert f["cond"].speed_tokens is not None
        assert torch.allclose(f["cond"].speed_tokens, tokens[:, window], atol=1e-6), k
        assert f["cond"].reference_rows is None
        if k < 2:  # the first step: the caller's noise, unscaled
            assert torch.allclose(f["sample"], noise[:, window].unsqueeze(0).expand_as(f["sample"]), atol=1e-6), k
    assert reports == [StepInfo(0, 1, 1, 2, 1, 2), StepInfo(0, 1, 2, 2, 2, 2)]
    assert [c.shape[0] for c in chunks] == [6, 3]


@pytest.mark.parametrize("frames,emitted", [(1, [1]), (8, [6, 2])])
def test_context_windows_emit_every_frame_once_in_windows_of_the_clip_size(monkeypatch, frames, emitted):
    """The decoded frames go to the sink in runs of ``frames_per_clip`` (6) from frame 0: 1 -> [1], 8 -> [6, 2].
    Each run is the decoded latents of its own frames (no colour match): together, the whole sequence decoded."""
    pipe, ref = make_pipe("tiny")
    final: list[torch.Tensor] = []
    original_step = pipeline_module._Run._step

    def recording_step(self, pred, t, latents, generator):
        out = original_step(self, pred, t, latents, generator)
        final[:] = [out.detach().clone()]
        return out

    recording_net(monkeypatch, pipe)
    monkeypatch.setattr(pipeline_module._Run, "_step", recording_step)
    chunks: list[torch.Tensor] = []
    pipe.generate(ref, features(pipe, frames), settings=context_settings(pipe, steps=1, cfg=1.0, audio_cfg=1.0,
                  colour_match="none"), sink=chunks.append)
    monkeypatch.undo()
    assert [c.shape[0] for c in chunks] == emitted
    with torch.no_grad():
        decoded = pipe.codec.decode(final[0][0].transpose(0, 1)).float().cpu()
    got = torch.cat(chunks)
    assert got.shape[0] == frames
    assert torch.allclose(got, decoded, atol=1e-5)


def test_context_windows_keep_one_deep_feature_cache_per_window(monkeypatch):
    """``deep_cache_interval=2``, 3 steps, one forward per window (no guidance): each window has its own cache,
    refreshed on steps 1 and 3 and reused on step 2 (by hand: refresh pattern T, T, F, F, T, T in visiting order)."""
    pipe, ref = make_pipe("tiny")
    seen = recording_net(monkeypatch, pipe)
    settings = context_settings(pipe, steps=3, cfg=1.0, audio_cfg=1.0, deep_cache_interval=2)
    pipe.generate_frames(ref, features(pipe, 9), settings=settings)
    monkeypatch.undo()
    assert len(seen) == 6
    assert [f["refresh"] for f in seen] == [True, True, False, False, True, True]
    caches = [f["cache"] for f in seen]
    assert caches[0] is not caches[1]
    assert all(caches[k] is caches[k % 2] for k in range(6))


def test_context_windows_stop_at_the_first_step_whose_latents_are_not_finite(monkeypatch):
    """A network that returns NaN: the loop stops after step 1 of 2 with the latents named (not at decoding)."""
    pipe, ref = make_pipe("tiny")
    recording_net(monkeypatch, pipe, out=lambda sample: torch.full_like(sample, float("nan")))
    reports: list = []
    with pytest.raises(GenerationError, match=r"the latents became NaN or infinite at clip 1 of 1, step 1 of 2 "):
        pipe.generate_frames(ref, features(pipe, 9), settings=context_settings(pipe, steps=2, cfg=1.0, audio_cfg=1.0),
                             on_step=reports.append)
    monkeypatch.undo()
    assert reports == []


def test_context_windows_step_a_stochastic_sampler_with_the_runs_own_generator(monkeypatch):
    """Euler ancestral draws noise on every step. By hand (seed_stream's contract): the window loop's step generator is
    seeded with ``clip_seed(seed, 0) ^ 0x5EED`` = ``(seed * 1_000_003) ^ 0x5EED``. Replaying the recorded steps on a fresh
    scheduler with that generator gives the run's latents; another seed does not (so the check can fail)."""
    pipe, ref = make_pipe("tiny")
    steps: list[tuple] = []
    original_step = pipeline_module._Run._step

    def recording_step(self, pred, t, latents, generator):
        out = original_step(self, pred, t, latents, generator)
        steps.append((pred.clone(), t, latents.clone(), out.clone()))
        return out

    recording_net(monkeypatch, pipe)
    monkeypatch.setattr(pipeline_module._Run, "_step", recording_step)
    torch.manual_seed(123)  # the global generator is not the run's
    settings = context_settings(pipe, steps=2, cfg=1.0, audio_cfg=1.0, sampler="euler_ancestral", seed=7)
    pipe.generate_frames(ref, features(pipe, 6), settings=settings)
    monkeypatch.undo()
    assert len(steps) == 2

    def replay(seed: int) -> list[torch.Tensor]:
        sch = make_scheduler("euler_ancestral", pipe.config.preset.scheduler)
        sch.set_timesteps(2)
        g = torch.Generator().manual_seed(seed)
        return [sch.step(pred, t, latents, generator=g).prev_sample for pred, t, latents, _ in steps]

    want = replay((7 * 1_000_003) ^ 0x5EED)
    other = replay((7 * 1_000_003 + 7_919) ^ 0x5EED)  # clip 1's seed
    assert not torch.allclose(want[0], other[0])
    for (_, _, _, out), w in zip(steps, want):
        assert torch.allclose(out, w, atol=1e-6)


def test_context_windows_give_each_window_its_emotion_and_the_unconditional_row_none(monkeypatch):
    """tiny-memo (9 emotion classes; class 9 = "no emotion"), one emotion label per frame [1, 1, 1, 1, 2, 2, 2, 2, 2]:
    by hand window [0..5] is mostly 1, window [3..8] mostly 2. Batched rows (uncond, reference, full): [9, e, e]."""
    pipe, ref = make_pipe("tiny-memo")
    assert pipe.model.denoising_unet.emotion_classes == 9
    seen = recording_net(monkeypatch, pipe)  # sampler=None: the preset's own (a rectified-flow model)
    settings = context_settings(pipe, sampler=None, steps=1, cfg=2.5, audio_cfg=4.0, batch_guidance=True,
                                emotion=[1, 1, 1, 1, 2, 2, 2, 2, 2])
    pipe.generate_frames(ref, features(pipe, 9), settings=settings)
    monkeypatch.undo()
    assert [f["cond"].emotion.tolist() for f in seen] == [[9, 1, 1], [9, 2, 2]]


def test_context_windows_follow_the_presets_schedule_and_read_each_windows_poses(monkeypatch):
    """tiny-echomimic-v2: the "uniform" schedule (closed loop) moving 3 frames per step, and a pose guider.

    By hand, 10 frames in windows of 6 overlapping by 3: step 0 starts at 0, 3, 6, 9 (wrapping past frame 9);
    step 1 is every window moved 3 frames on. Each window's Face Locator features at its position j are those of
    the pose of its frame j alone (the locator reads one pose image per frame)."""
    pipe, ref = make_pipe("tiny-echomimic-v2")
    q = pipe.config.preset.quirks
    assert (q.context_schedule, q.context_shift_per_step) == ("uniform", 3)
    poses = torch.rand(10, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        per_frame = [pipe.model.face_features(poses[k : k + 1]) for k in range(10)]  # [1, C, h, w] each
    windows: list[list[int]] = []
    original_audio = pipeline_module._Run._audio_tokens

    def spy_audio(self, index):
        windows.append(index.tolist())
        return original_audio(self, index)

    seen = recording_net(monkeypatch, pipe)
    monkeypatch.setattr(pipeline_module._Run, "_audio_tokens", spy_audio)
    settings = context_settings(pipe, steps=2, cfg=1.0, audio_cfg=1.0)
    pipe.generate_frames(ref, features(pipe, 10), settings=settings, pose_frames=poses)
    monkeypatch.undo()
    step0 = [[0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 7, 8], [6, 7, 8, 9, 0, 1], [9, 0, 1, 2, 3, 4]]
    step1 = [[3, 4, 5, 6, 7, 8], [6, 7, 8, 9, 0, 1], [9, 0, 1, 2, 3, 4], [2, 3, 4, 5, 6, 7]]
    assert windows == step0 + step1
    assert len(seen) == 8
    for f, window in zip(seen, windows):
        face = f["cond"].face_features
        assert face.shape[2] == 6
        for j, k in enumerate(window):
            assert torch.allclose(face[:, :, j], per_frame[k], atol=1e-5), (window, j)

"""Sampling pipeline on the tiny config: planning, determinism, motion-frame hand-off, cancel, memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import HANG_GUARD_S, ROOT, perturb_zero_inits, tiny_vae

from emo_model.network.model import EMOModel
from emo_model.network.vae import DiffusersVAE
from emo_model.sampling.clip_planner import Clip, plan_clips, plan_windows, window_weights
from emo_model.sampling.pipeline import EMOPipeline, fit_image
from emo_model.sampling.settings import GenerationCancelled, SamplingSettings, guidance_weights, speed_curve


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    model = perturb_zero_inits(EMOModel("tiny").eval())
    return EMOPipeline(model, DiffusersVAE(tiny_vae()))


@pytest.fixture(scope="module")
def reference(pipe):
    g = torch.Generator().manual_seed(3)
    return pipe.encode_reference(torch.rand(64, 64, 3, generator=g))


def features(frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(frames, 5, 1, 32, generator=torch.Generator().manual_seed(seed))


def settings(pipe, **kw) -> SamplingSettings:
    return SamplingSettings.from_preset(pipe.config.preset, **{"steps": 2, **kw})


# ---- planning -------------------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [1, 7, 8, 9, 16, 17, 123])
def test_clips_cover_every_frame_once(frames):
    clips = plan_clips(frames, 8)
    assert sum(c.length for c in clips) == frames
    assert [c.start for c in clips] == list(range(0, frames, 8))
    assert all(c.generate == 8 for c in clips)  # the short last clip is generated at full length
    assert [c.generate for c in plan_clips(frames, 8, pad_last=False)][-1] == clips[-1].length


@pytest.mark.parametrize("frames,size,overlap", [(5, 12, 3), (12, 12, 3), (13, 12, 3), (40, 12, 3), (100, 8, 2)])
def test_windows_cover_every_frame_and_have_full_size(frames, size, overlap):
    windows = plan_windows(frames, size, overlap)
    covered = torch.zeros(frames)
    for w in windows:
        covered[w.start : w.stop] += 1
        assert len(w) == min(size, frames)
    assert (covered >= 1).all()
    for a, b in zip(windows, windows[1:]):
        assert a.stop - b.start >= overlap  # consecutive windows overlap at least as asked
    weights = window_weights(size, overlap)
    assert weights.max() == 1 and weights[0] < weights[overlap] and torch.equal(weights, weights.flip(0))


def test_planning_bounds_one_frame_is_enough_none_is_refused_in_words():
    """The boundaries of the planners (found by mutation testing): one frame plans one clip / window; no frames, no
    clip length, or an overlap as long as the window is refused with the exact line the user sees."""
    assert plan_clips(1, 8) == [Clip(0, 0, 1, 8)] and plan_windows(1, 12, 3) == [range(0, 1)]
    for call in (lambda: plan_clips(0, 8), lambda: plan_windows(0, 12, 3)):
        with pytest.raises(ValueError) as exc:
            call()
        assert str(exc.value) == "nothing to generate: the audio has no frames"
    with pytest.raises(ValueError) as exc:
        plan_clips(5, 0)
    assert str(exc.value) == "frames_per_clip must be at least 1, got 0"
    assert plan_windows(30, 12, 11)[:2] == [range(0, 12), range(1, 13)]  # the largest overlap: stride 1
    assert plan_windows(30, 12, 0)[:2] == [range(0, 12), range(12, 24)]  # no overlap
    for overlap in (12, -1):
        with pytest.raises(ValueError) as exc:
            plan_windows(30, 12, overlap)
        assert str(exc.value) == f"context overlap must be in [0, 11], got {overlap}"


def test_guidance_weights_reduce_to_classic_cfg():
    assert guidance_weights(3.5, 3.5) == {"uncond": -2.5, "full": 3.5}
    assert guidance_weights(1.0, 1.0) == {"full": 1.0}
    assert guidance_weights(2.0, 5.0) == {"uncond": -1.0, "reference": -3.0, "full": 5.0}
    assert guidance_weights(1.0, 4.0) == {"reference": -3.0, "full": 4.0}
    for cfg, acfg in [(3.5, 3.5), (2.0, 5.0), (1.0, 4.0)]:
        assert sum(guidance_weights(cfg, acfg).values()) == pytest.approx(1.0)  # a prediction stays a prediction


def test_speed_curve_and_fit_image():
    assert torch.equal(speed_curve(0.5, 4), torch.full((4,), 0.5))
    curve = speed_curve([0.0, 1.0], 5)
    torch.testing.assert_close(curve, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    wide = torch.zeros(10, 30, 3)
    wide[:, :, 0] = 1
    fitted = fit_image(wide, 64, 64)
    assert fitted.shape == (64, 64, 3) and torch.allclose(fitted[..., 0], torch.ones(64, 64))  # padded, not stretched


# ---- generation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["motion_frames", "context_windows"])
@pytest.mark.parametrize("frames", [3, 8, 13])
def test_output_frames_equal_audio_frames(pipe, reference, strategy, frames):
    out = pipe.generate_frames(reference, features(frames), settings=settings(pipe, strategy=strategy, context_overlap=2))
    assert out.shape == (frames, 64, 64, 3)
    assert out.min() >= 0 and out.max() <= 1


def test_feature_rows_after_num_frames_drive_the_padded_last_clip_only(pipe, reference):
    """InferenceQuirks.audio_padded_to_clips: rows past ``num_frames`` are the padded last clip's audio."""
    s = settings(pipe, frames_per_clip=4, motion_frames=2)
    padded = features(8, seed=1)
    other_pad = torch.cat([padded[:7], features(1, seed=9)])
    a = pipe.generate_frames(reference, padded, settings=s, num_frames=7)
    b = pipe.generate_frames(reference, other_pad, settings=s, num_frames=7)
    repeat = pipe.generate_frames(reference, padded[:7], settings=s)  # no padding rows: the last row is repeated
    assert a.shape == b.shape == repeat.shape == (7, 64, 64, 3)
    assert torch.equal(a[:4], b[:4]) and torch.equal(a[:4], repeat[:4])  # the first clip never sees row 7
    assert (a[4:] - b[4:]).abs().mean() > 1e-5 and (a[4:] - repeat[4:]).abs().mean() > 1e-5
    for bad in (0, 9, 7.0, True):
        with pytest.raises(ValueError, match="num_frames must be 1..8"):
            pipe.generate(reference, padded, settings=s, sink=lambda f: None, num_frames=bad)


def test_same_seed_same_frames_other_seed_other_frames(pipe, reference):
    a = pipe.generate_frames(reference, features(10), settings=settings(pipe, seed=7))
    b = pipe.generate_frames(reference, features(10), settings=settings(pipe, seed=7))
    c = pipe.generate_frames(reference, features(10), settings=settings(pipe, seed=8))
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 1e-3


def test_ancestral_sampler_is_reproducible(pipe, reference):
    s = settings(pipe, sampler="euler_ancestral", seed=3)
    assert torch.equal(pipe.generate_frames(reference, features(9), settings=s), pipe.generate_frames(reference, features(9), settings=s))


def test_motion_frames_of_next_clip_are_last_generated_frames(pipe, reference, monkeypatch):
    n, f = 3, 8
    decoded, motion_inputs = [], []
    real_decode, real_motion = pipe.codec.decode, pipe.model.encode_motion
    monkeypatch.setattr(pipe.codec, "decode", lambda lat: decoded.append(lat.clone()) or real_decode(lat))
    monkeypatch.setattr(pipe.model, "encode_motion", lambda lat, ident=None: motion_inputs.append(lat.clone()) or real_motion(lat, ident))
    pipe.generate_frames(reference, features(3 * f), settings=settings(pipe, frames_per_clip=f, motion_frames=n))
    assert len(decoded) == 3 and len(motion_inputs) == 2  # first clip: zero motion maps, no ReferenceNet call
    for k in range(2):
        last = decoded[k][-n:]  # the clip's latents [F, C, h, w] that were decoded into its frames
        torch.testing.assert_close(motion_inputs[k][0], last.to(motion_inputs[k].dtype), rtol=0, atol=0)


def test_guidance_batched_equals_separate_forwards_and_naive_reference(pipe, reference):
    base = pipe.generate_frames(reference, features(9), settings=settings(pipe, cfg=2.5, audio_cfg=4.0))
    sep = pipe.generate_frames(reference, features(9), settings=settings(pipe, cfg=2.5, audio_cfg=4.0, batch_guidance=False))
    naive = pipe.generate_frames(
        reference, features(9), settings=settings(pipe, cfg=2.5, audio_cfg=4.0, batch_guidance=False, reference_every_step=True)
    )
    torch.testing.assert_close(sep, base, atol=2e-4, rtol=0)
    torch.testing.assert_close(naive, base, atol=2e-4, rtol=0)


def test_audio_and_speed_reach_the_frames(pipe, reference):
    a = pipe.generate_frames(reference, features(8, seed=1), settings=settings(pipe))
    b = pipe.generate_frames(reference, features(8, seed=2), settings=settings(pipe))
    c = pipe.generate_frames(reference, features(8, seed=1), settings=settings(pipe, speed=1.5))
    assert (a - b).abs().mean() > 1e-4 and (a - c).abs().mean() > 1e-4


def test_progress_and_cancel(pipe, reference):
    infos = []
    pipe.generate(reference, features(17), settings=settings(pipe, steps=3), sink=lambda f: None, on_step=infos.append)
    assert [i.done for i in infos] == list(range(1, 10)) and infos[-1].total == 9 and infos[-1].clips == 3
    calls = {"n": 0}

    def cancel_after_four():
        calls["n"] += 1
        return calls["n"] > 4

    got = []
    with pytest.raises(GenerationCancelled):
        pipe.generate(reference, features(17), settings=settings(pipe, steps=3), sink=got.append, should_cancel=cancel_after_four)
    assert sum(len(x) for x in got) < 17


def test_cancel_leaves_no_video_file(pipe, reference, tmp_path):
    from emo_model.video_io import VideoWriter

    out = tmp_path / "clip.mp4"
    audio = {"waveform": torch.zeros(1, 1, 16000), "sample_rate": 16000}
    calls = {"n": 0}
    with pytest.raises(GenerationCancelled):
        with VideoWriter(out, 25, audio=audio) as writer:
            pipe.generate(
                reference,
                features(25),
                settings=settings(pipe),
                sink=writer.write,
                should_cancel=lambda: calls.__setitem__("n", calls["n"] + 1) or calls["n"] > 5,
            )
    assert list(tmp_path.iterdir()) == []  # neither the video nor a partial file


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, torch
    sys.path[:0] = [{root!r}, {tests!r}]
    from conftest import tiny_vae
    from test_pipeline import features
    from emo_model.network.model import EMOModel
    from emo_model.sampling.pipeline import EMOPipeline, SamplingSettings
    from emo_model.network.vae import DiffusersVAE
    from emo_model.video_io import VideoWriter
    torch.manual_seed(0)
    frames = int(sys.argv[1])
    pipe = EMOPipeline(EMOModel("tiny").eval(), DiffusersVAE(tiny_vae()))
    ref = pipe.encode_reference(torch.rand(128, 128, 3), size=128)
    s = SamplingSettings.from_preset(pipe.config.preset, steps=1)
    with VideoWriter(sys.argv[2], 25) as w:
        pipe.generate(ref, features(8), settings=s, sink=w.write)  # warm-up: allocator, kernels
        pipe.generate(ref, features(frames), settings=s, sink=w.write)
    print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))
    """
)


def test_peak_memory_does_not_grow_with_audio_length(tmp_path):
    script = tmp_path / "mem.py"
    script.write_text(MEMORY_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests")))

    def peak(frames: int) -> int:
        # HANG_GUARD_S: a hang guard only (conftest), never a speed limit
        out = subprocess.run([sys.executable, str(script), str(frames), str(tmp_path / f"{frames}.mp4")],
                             capture_output=True, text=True, timeout=HANG_GUARD_S)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    short, long = peak(16), peak(128)
    output_bytes = 128 * 128 * 128 * 3 * 4  # the 8x run's frames as a float IMAGE tensor
    assert long - short < output_bytes, (short, long, output_bytes)


# ---- region masks for region-masked audio modules (Hallo's layout) ------------------------------------


def test_reference_encode_builds_region_masks_from_the_detected_face_and_the_pipeline_needs_them():
    from skimage.data import astronaut

    from emo_model.app.session import Session

    torch.manual_seed(0)
    model = perturb_zero_inits(EMOModel("tiny-hallo").eval())
    session = Session(model, DiffusersVAE(tiny_vae()), None, torch.device("cpu"))
    photo = torch.from_numpy(astronaut()).float() / 255  # 512x512, face around x 180-280, y 60-180
    state = session.encode_reference(photo, size=128)
    masks = state.region_masks
    assert masks is not None and masks.shape == (3, 128, 128)
    assert "face detected" in state.note
    torch.testing.assert_close(masks.sum(0), torch.ones(128, 128))
    face, lips = masks[1] + masks[2], masks[2]
    ys, xs = torch.nonzero(face > 0.5, as_tuple=True)
    # the astronaut's face (hand-measured at 512 px: x 180-280, y 60-180), scaled to 128 px
    assert 40 <= float(xs.float().mean()) <= 75 and 12 <= float(ys.float().mean()) <= 48
    ly = torch.nonzero(lips > 0.5, as_tuple=True)[0].float().mean()
    assert ly > ys.float().mean()  # the lips are in the lower part of the face

    feats = torch.randn(4, 5, 2, 32, generator=torch.Generator().manual_seed(0))
    run = dict(settings=SamplingSettings.from_preset(model.config.preset, steps=1, frames_per_clip=4), sink=lambda f: None)
    pipe = session.pipeline
    assert pipe.generate(state, feats, **run) == 4  # masks come from the reference state
    import dataclasses

    bare = dataclasses.replace(state, region_masks=None)
    with pytest.raises(ValueError, match="region masks"):
        pipe.generate(bare, feats, **run)
    assert pipe.generate(bare, feats, region_masks=masks, **run) == 4


# ---- work savers: guidance on part of the schedule, deep-feature reuse (the fast mode) -------------------


def test_deep_feature_cache_reused_on_the_same_input_reproduces_the_whole_forward(pipe, reference):
    from emo_model.network.model import Conditioning
    from emo_model.network.unet_blocks import DeepFeatureCache

    model = pipe.model
    g = torch.Generator().manual_seed(5)
    sample = torch.randn(2, 4, 8, 8, 8, generator=g)
    tokens = model.audio_tokens(features(8)[None].expand(2, -1, -1, -1, -1))
    cache = DeepFeatureCache()
    cond = Conditioning(reference=reference.bank, audio_tokens=tokens, feature_cache=cache)
    with torch.no_grad():
        whole = model(sample, 400, dataclasses_replace(cond, feature_cache=None))
        first = model(sample, 400, cond)  # refresh: runs everything, keeps the deep features
        assert cache.features is not None and cache.features.shape[0] == 2 * 8
        cache.refresh = False
        shallow = model(sample, 400, cond)  # only level 0 down + last up level, on the kept features
        other = model(sample, 100, cond)  # another timestep: the shallow levels see it
    torch.testing.assert_close(first, whole)
    torch.testing.assert_close(shallow, whole, atol=1e-5, rtol=1e-4)
    assert (other - whole).abs().max() > 1e-3


def dataclasses_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


def test_guidance_fraction_zero_is_the_full_branch_alone_and_one_is_the_default(pipe, reference):
    feats = features(10)
    base = pipe.generate_frames(reference, feats, settings=settings(pipe, steps=3, cfg=2.0, audio_cfg=2.0))
    same = pipe.generate_frames(reference, feats, settings=settings(pipe, steps=3, cfg=2.0, audio_cfg=2.0, guidance_fraction=1.0))
    nocfg = pipe.generate_frames(reference, feats, settings=settings(pipe, steps=3, cfg=1.0, audio_cfg=1.0))
    zero = pipe.generate_frames(reference, feats, settings=settings(pipe, steps=3, cfg=2.0, audio_cfg=2.0, guidance_fraction=0.0))
    part = pipe.generate_frames(reference, feats, settings=settings(pipe, steps=3, cfg=2.0, audio_cfg=2.0, guidance_fraction=0.5))
    assert torch.equal(base, same)
    torch.testing.assert_close(zero, nocfg)
    assert (part - base).abs().max() > 1e-4 and (part - nocfg).abs().max() > 1e-4


def test_deep_cache_interval_changes_only_the_reusing_steps(pipe, reference):
    feats = features(10)
    s1 = pipe.generate_frames(reference, feats, settings=settings(pipe, steps=1))
    s1_cached = pipe.generate_frames(reference, feats, settings=settings(pipe, steps=1, deep_cache_interval=3))
    s3 = pipe.generate_frames(reference, feats, settings=settings(pipe, steps=3))
    s3_cached = pipe.generate_frames(reference, feats, settings=settings(pipe, steps=3, deep_cache_interval=3))
    torch.testing.assert_close(s1_cached, s1)  # one step: a refresh step only
    diff = (s3_cached - s3).abs()
    assert diff.max() > 1e-5  # steps 2 and 3 reused deep features
    assert torch.isfinite(s3_cached).all() and diff.mean() < 0.2


def test_fast_settings_scale_the_presets_steps_but_keep_a_floor():
    from emo_model.families import get_config
    from emo_model.sampling.settings import fast_settings

    steps = {name: fast_settings(get_config(name).preset)["steps"] for name in ("emo", "echomimic-v1", "echomimic-v1-acc", "tiny")}
    assert steps == {"emo": 16, "echomimic-v1": 12, "echomimic-v1-acc": 6, "tiny": 8}
    assert fast_settings(get_config("hallo").preset)["sampler"] == "dpmpp_2m"

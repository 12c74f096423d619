"""The built-in CPU demo: the README's main command, the shipped artefacts, and what the trained weights do.

The last two tests measure the trained demo weights (``emo_model/demo_assets/emo-tiny-demo.safetensors``),
not the code: they fail if a rebuilt demo model loses its lip sync. See docs/demo.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import wave

import numpy as np
import pytest
import torch
from conftest import HANG_GUARD_S, ROOT

from emo_model import demo
from emo_model.demo import metrics
from emo_model.demo.config import HELDOUT_SEED, SAMPLE_SEED, demo_config
from emo_model.demo.synthetic import audio_envelope, make_clip, synth_speech

ASSETS_LIMIT_MB = 8.0


def _have_model() -> bool:
    return demo.model_path().is_file()


needs_model = pytest.mark.skipif(not _have_model(), reason="the demo model is not built (python -m emo_model make-demo --install)")


# --------------------------------------------------------------------------------------------------
# Synthetic data and the measure (no trained weights needed)


def test_synthetic_clips_are_deterministic_and_speech_like():
    a, b = make_clip(123, 2.0), make_clip(123, 2.0)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)
    assert a.frames.shape == (50, 160, 160, 3) and a.audio.shape == (32000,)
    c = make_clip(124, 2.0)
    assert not np.array_equal(a.frames[0], c.frames[0])
    wave_, plan = synth_speech(np.random.default_rng(0), 3.0)
    env = audio_envelope(wave_, 75)
    assert plan.syllables >= 6 and 0.05 < env.mean() < 0.9
    # syllabic structure: the loudness swings by more than 20 dB within the clip
    assert (env.max() - np.percentile(env, 10)) * 60 > 20


def test_measure_on_ground_truth_frames():
    held = metrics.prepare_held_out(HELDOUT_SEED + 7, 3.0)
    assert not held.portrait.fell_back  # the Haar detector finds the synthetic face
    env = audio_envelope(held.clip.audio, held.clip.num_frames)
    truth = metrics.mouth_opening(held.truth, held.mouth_roi, held.skin_luma)
    assert metrics.pearson(truth, env) > 0.8
    shuffled = audio_envelope(metrics.shuffle_audio(held.clip.audio, 1), held.clip.num_frames)
    assert abs(metrics.pearson(truth, shuffled)) < 0.3
    assert sorted(metrics.shuffle_audio(np.arange(1280 * 3, dtype=np.float32), 0)) == list(range(1280 * 3))


# --------------------------------------------------------------------------------------------------
# The shipped artefacts


@needs_model
def test_shipped_assets_are_small_and_self_contained():
    from emo_model.face import prepare_portrait
    from emo_model.video_io import probe_video  # noqa: F401  (the README command's reader)
    from emo_model import weights

    total = sum(f.stat().st_size for f in demo.ASSETS.iterdir() if f.is_file())
    assert total < ASSETS_LIMIT_MB * 1e6, f"demo_assets holds {total / 1e6:.1f} MB"
    model = weights.load_emo_model(demo.model_path(), dtype=torch.float32)
    assert model.config.audio.kind == "logmel" and model.config.name == demo_config().name
    vae = weights.load_bundled_vae(demo.model_path())
    assert vae is not None and 2 ** (len(vae.config.block_out_channels) - 1) == 8
    import cv2

    portrait = cv2.cvtColor(cv2.imread(str(demo.portrait_path())), cv2.COLOR_BGR2RGB)
    assert not prepare_portrait(portrait, 64, detector="haar").fell_back
    with wave.open(str(demo.audio_path())) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1
    # the sample portrait and voice (seed SAMPLE_SEED) and the held-out clips were never trained on:
    # training used seeds 0 .. clips-1, recorded in the file's metadata
    from safetensors import safe_open

    with safe_open(str(demo.model_path()), "pt") as f:
        trained = int(f.metadata()["emo_demo_training_clips"])
    assert 0 < trained <= SAMPLE_SEED < HELDOUT_SEED


@needs_model
def test_readme_main_command_writes_an_mp4_with_audio(tmp_path):
    from emo_model.audio.signal import num_video_frames
    from emo_model.video_io import probe_video

    out = tmp_path / "demo.mp4"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "emo_model", "generate", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = probe_video(out)
    fps = demo_config().preset.fps
    with wave.open(str(demo.audio_path())) as w:
        expected = num_video_frames(w.getnframes(), w.getframerate(), fps)
    assert info.video_codec == "h264" and info.audio_codec == "aac"
    assert info.num_frames == expected
    # half a frame: the writer trims the audio to the frames (one frame too many or too few fails); the declared
    # duration is exact to the mp4 timescale's ~1 ms
    assert abs(info.audio_duration - info.num_frames / fps) <= 0.5 / fps
    assert (info.width, info.height) == (64, 64)


@needs_model
def test_demo_model_lip_syncs_a_held_out_clip():
    from emo_model.app.session import Session

    session = Session.load(demo.model_path(), device="cpu", dtype=torch.float32)
    held = metrics.prepare_held_out(HELDOUT_SEED, 4.0)
    result = metrics.lip_sync(session, held)
    assert result["r"] >= 0.5, result
    assert result["r_shuffled"] < 0.2, result


# --------------------------------------------------------------------------------------------------
# The recipe itself, at toy scale: every phase of `make-demo` on the real code path


def test_make_demo_recipe_runs_end_to_end_at_toy_scale(tmp_path, capsys):
    import json

    from safetensors import safe_open

    from emo_model.app.cli import main
    from emo_model import weights

    out = tmp_path / "demo"
    args = ["make-demo", "--out", str(out), "--clips", "3", "--seconds", "3.5", "--vae-steps", "3",
            "--steps", "2", "2", "2", "--eval-clips", "0", "--threads", "2"]
    for stage in (1, 2, 3):
        args += ["--set", f"{stage}:data.batch_size=1", "--set", f"{stage}:sample_steps=2", "--set", f"{stage}:sample_clips=1"]
    assert main(args) == 0
    assets = out / "demo_assets"
    assert sorted(p.name for p in assets.iterdir()) == ["emo-tiny-demo.safetensors", "portrait.png", "speech.wav"]
    model = weights.load_emo_model(assets / "emo-tiny-demo.safetensors", dtype=torch.float32)
    assert model.config.name == demo_config().name and model.speed_encoder is not None
    assert weights.load_bundled_vae(assets / "emo-tiny-demo.safetensors") is not None
    with safe_open(str(assets / "emo-tiny-demo.safetensors"), "pt") as f:
        assert f.metadata()["emo_demo_training_clips"] == "3"
    phases = json.loads((out / "build.json").read_text())["phases"]
    assert {"videos", "preprocess", "vae", "stage1", "stage2", "stage3", "export"} <= set(phases)
    # each stage starts from the previous one's weights, and a re-run reuses every finished phase
    final3 = out / "stage3" / "emo-stage3-final.safetensors"
    stamp = final3.stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    text = capsys.readouterr().out
    assert all(f"stage {s}: " in text and "reusing it" in text for s in (1, 2, 3))
    assert final3.stat().st_mtime_ns == stamp


def test_make_demo_stop_after_videos_writes_the_clips_only(tmp_path, capsys):
    from emo_model.app.cli import main
    from emo_model.video_io import probe_video

    out = tmp_path / "demo"
    assert main(["make-demo", "--out", str(out), "--clips", "2", "--seconds", "3.5", "--stop-after", "videos"]) == 0
    assert "stopped after videos (--stop-after)" in capsys.readouterr().out
    clips = sorted((out / "videos").glob("*.mp4"))
    assert [p.name for p in clips] == ["clip-00000.mp4", "clip-00001.mp4"]
    info = probe_video(clips[0])
    assert info.audio_codec is not None and abs(info.num_frames / info.fps - 3.5) < 0.1
    # nothing after the videos phase ran
    assert not (out / "dataset").exists() and not (out / "vae-train").exists() and not (out / "stage1").exists()
    # the CLI's one line: --install needs the finished demo
    assert main(["make-demo", "--out", str(tmp_path / "other"), "--stop-after", "vae", "--install"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --install copies the finished demo, and --stop-after vae ends before it") and err.count("\n") == 1
    assert not (tmp_path / "other").exists()

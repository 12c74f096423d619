"""MEMO from files (issue 24 item 5): `emo generate` on the picture file and the song file MEMO's inference.py ran on.

The fixture (tests/parity/memo_files/) was written by tools/parity/memo_from_files.py in MEMO's venv through
tools/parity/floor.py: MEMO's own ``inference.py`` ``main()`` with a user's config (128 px, 4 frames per clip with 4
past frames, 3 steps, CFG 3.5 as published, fp32, seed 42) on ``portrait.png`` (``skimage.data.astronaut()``, 512 px,
made again here and checked by sha256) and ``tests/parity/audio/song44k.wav`` (0.4 s of a voice, a chord and
noise: 3 clips), with a MEMO folder as the download has it (tiny weights regenerated here from meta.json's key/shape
lists, the stand-in ``Kim_Vocal_2.onnx``, emotion2vec and MEMO's emotion classifier at the tiny size). MEMO ran its
own picture resize, ffmpeg resampling, audio-separator 0.24.1, librosa, wav2vec2, emotion classification and clip
loop; insightface's FaceAnalysis was a stand-in with fixed boxes (tools/parity/memo_from_files.py ``face_boxes``).

Our side is the command a user types, run in-process (tests/from_files.py): ``emo generate --image portrait.png
--audio song44k.wav --model <memo folder> --vae --audio-encoder --models-dir --seed 42 --steps 3 --size 128``, the
tiny-memo preset otherwise. The same stand-ins are made importable here: insightface (the same fixed boxes and
embedding) and, when onnxruntime is not installed, the stand-in separator as torch ops (tests/test_parity_audio.py
shows both agree); our own face detector runs (a square picture is framed whole, as MEMO frames it). One thing is
given to our side that our ``--seed`` cannot reproduce: MEMO's initial noise (MEMO draws it from the global generator
after its model loading has drawn from it; docs/parity.md, "Seeds"). Every stage is judged by the standard
(tests/parity_floor.py): rel err <= max(1e-4, 3 x the original's own 2- vs 1-thread floor).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, rel_err
from tests.parity_floor import load_floor, tolerance

# EMO_PARITY_MEMO_FILES_DIR: another fixture made the same way (opt-in; e.g. --audio tests/parity/audio/song.m4a)
FIX = Path(os.environ["EMO_PARITY_MEMO_FILES_DIR"]) if os.environ.get("EMO_PARITY_MEMO_FILES_DIR") else (
    ROOT / "tests" / "parity" / "memo_files")
META = json.loads((FIX / "meta.json").read_text())
SET = META["settings"]
CLIPS, F = SET["clips"], SET["frames_per_clip"]
PICTURE = META.get("picture", "face128")
AUDIO = ROOT / "tests" / "parity" / "audio" / next(k for k in META["inputs"] if k.startswith("song"))
VISIBLE = 100  # what a stage would be off by without the step under test, in tolerances
ASSETS = ROOT / "tests" / "parity" / "hallo"


def _harness():
    """tools/parity/memo_from_files.py (its main() is not run): the picture, the MEMO folder, the stand-ins."""
    sys.path.insert(0, str(ROOT / "tools" / "parity"))
    spec = importlib.util.spec_from_file_location("memo_from_files", ROOT / "tools" / "parity" / "memo_from_files.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(FIX / "stages.safetensors")


def test_fixture_floor_covers_every_stage(golden):
    floor = load_floor(FIX)
    missing = sorted(set(golden) - set(floor["files"].get("stages.safetensors", {})))
    assert not missing, f"floor.json has no floor for {missing[:5]}: regenerate the fixture with tools/parity/floor.py"
    assert CLIPS >= 3 and META["argv"][0] == "--config", "MEMO's own entry point over 3 or more clips"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The files a user hands both programs: the picture, the song, the MEMO folder, a models folder."""
    harness = _harness()
    tmp = tmp_path_factory.mktemp("memo_files")
    image = tmp / "portrait.png"
    image.write_bytes(harness.portrait_png(harness.portrait_pixels(PICTURE)))
    assert hashlib.sha256(image.read_bytes()).hexdigest() == META["inputs"]["portrait.png"], (
        "portrait.png differs from the file MEMO ran on (scikit-image's astronaut changed?)")
    assert hashlib.sha256(AUDIO.read_bytes()).hexdigest() == META["inputs"][AUDIO.name]
    memo = tmp / "memo"
    harness.write_memo_folder(memo, META["weights"])  # config.json {} for every part: our loader reads the tensors
    models = tmp / "models"
    (models / "face_analysis" / "models").mkdir(parents=True)
    (models / "face_analysis" / "models" / "glintr100.onnx").write_bytes(b"stand-in")  # insightface is a stand-in
    return {"harness": harness, "image": image, "memo": memo, "models": models, "out": tmp / "out.mp4"}


def _stand_ins(monkeypatch, harness) -> dict:
    """insightface returns the fixture's boxes; the separator model is the stand-in's torch ops where onnxruntime is
    missing; MEMO's noise is handed to our pipeline; every diagnostic stage of our run is recorded."""
    import types

    from emo_model.app import session
    from emo_model.audio import vocal_separation
    from emo_model.network import identity
    from emo_model.sampling import pipeline

    app = types.ModuleType("insightface.app")
    app.FaceAnalysis = harness.tiny_face_analysis(PICTURE)
    package = types.ModuleType("insightface")
    package.app = app
    monkeypatch.setitem(sys.modules, "insightface", package)
    monkeypatch.setitem(sys.modules, "insightface.app", app)
    identity._face_analysis.cache_clear()
    if not vocal_separation.runtime_available():
        from tests.test_parity_audio import standin_run

        monkeypatch.setattr(vocal_separation, "runtime_available", lambda: True)
        monkeypatch.setattr(vocal_separation, "onnx_model", lambda path, settings: standin_run())
    rec: dict = {}

    def wrap(obj, name, keep):
        original = getattr(obj, name)

        def wrapped(*a, **kw):
            result = original(*a, **kw)
            keep(result, *a, **kw)
            return result

        monkeypatch.setattr(obj, name, wrapped)

    wrap(identity, "face_identity_embedding", lambda r, image, models_dir: rec.setdefault("face_emb", r))
    wrap(vocal_separation, "separate", lambda r, *a, **kw: rec.setdefault("vocals", r))
    wrap(session.Session, "encode_audio", lambda r, *a, **kw: rec.setdefault("audio", r))
    wrap(session.Session, "resolve_emotion", lambda r, *a, **kw: rec.setdefault("emotion", r))
    wrap(session.Session, "prepare_portrait", lambda r, *a, **kw: rec.setdefault("portrait", r))
    noise = torch.cat([golden_noise(c) for c in range(CLIPS)], dim=1)  # [C, frames, h, w]
    generate = pipeline.EMOPipeline.generate
    monkeypatch.setattr(pipeline.EMOPipeline, "generate", lambda self, *a, **kw: generate(self, *a, **{**kw, "noise": noise}))
    return rec


def golden_noise(c: int) -> torch.Tensor:
    return load_file(FIX / "stages.safetensors")[f"clip{c}.noise"]


@pytest.fixture(scope="module")
def ours(files):
    from tests.from_files import run_generate

    with pytest.MonkeyPatch.context() as mp:
        rec = _stand_ins(mp, files["harness"])
        argv = ["--image", str(files["image"]), "--audio", str(AUDIO), "--model", str(files["memo"]),
                "--vae", str(ASSETS / "vae"), "--audio-encoder", str(ASSETS / "wav2vec2"), "--models-dir", str(files["models"]),
                "--seed", str(SET["seed"]), "--steps", str(SET["steps"]), "--size", str(SET["size"]), "--out", str(files["out"])]
        try:
            result = run_generate(argv, monkeypatch=mp)
        finally:
            from emo_model.network import identity

            identity._face_analysis.cache_clear()  # no stand-in insightface app outlives the run
    assert result.status == 0, result.notes
    return result, rec


def _check(stage: str, mine, gold: torch.Tensor) -> float:
    mx, rel = rel_err(torch.as_tensor(np.asarray(mine)).float(), gold.float())
    tol = tolerance(FIX, stage)
    assert rel <= tol, f"{stage}: rel err {rel:.3e} (max abs {mx:.3e}) vs MEMO; allowed {tol:.3e}"
    return rel


def test_the_run_is_a_users_run(ours, golden):
    """Our video has a frame per 1/30 s of audio, MEMO's clips cover it (MEMO hands its writer the frames of the audio
    padded to whole clips; its writer cuts the video at the audio's duration)."""
    result, rec = ours
    audio_frames = -(-golden["audio.vocals_16k"].numel() * SET["fps"] // 16000)  # MEMO's audio_length before padding
    assert result.fps == SET["fps"] and result.frames.shape == (audio_frames, SET["size"], SET["size"], 3)
    assert (CLIPS - 1) * F < audio_frames <= SET["frames"] == CLIPS * F
    assert "emotion from the audio" in result.notes, result.notes
    assert rec["vocals"] is not None  # the separator ran


def test_portrait_pixels_match_memo(ours, golden):
    portrait = ours[1]["portrait"]
    _check("portrait.pixels", torch.from_numpy(portrait.image).permute(2, 0, 1) * 2 - 1, golden["portrait.pixels"])


def test_face_embedding_matches_memo(ours, golden):
    _check("portrait.face_emb", ours[1]["face_emb"], golden["portrait.face_emb"])


def test_separated_vocals_match_memo(ours, golden):
    vocals, stem = ours[1]["vocals"]
    assert np.abs(stem.astype(np.int32) - golden["audio.vocals_stem"].numpy()).max() <= 1
    _check("audio.vocals_stem", stem, golden["audio.vocals_stem"])
    _check("audio.vocals_16k", vocals, golden["audio.vocals_16k"])


def test_the_separation_is_visible_in_the_comparison(golden):
    """Without the separator (the whole mix, loaded as MEMO loads it) the vocals stage would fail by far."""
    from emo_model.audio import decode as audio_decode
    from emo_model.families import memo

    mix = audio_decode.load(audio_decode.decode_file(AUDIO), memo.FAMILY.config().preset.quirks.audio_loader)
    mx, rel = rel_err(torch.from_numpy(mix), golden["audio.vocals_16k"])
    assert rel > VISIBLE * tolerance(FIX, "audio.vocals_16k"), rel


def test_memos_noise_is_not_our_seeds(golden):
    """MEMO's noise comes from its global generator after model loading drew from it (docs/parity.md, "Seeds"), so our
    run is handed it; our own seed gives other noise (were it the same, the injection would hide nothing)."""
    from emo_model.sampling.seed_stream import SeedStream

    noise = golden["clip0.noise"]
    ours = SeedStream(SET["seed"]).clip(0, (1, *noise.shape))[1][0]
    assert rel_err(ours, noise)[1] > 0.5


def test_audio_windows_match_memo(ours, golden):
    _check("audio.windows", ours[1]["audio"].features, golden["audio.windows"])


def test_emotion_labels_match_memo(ours, golden):
    labels, _note = ours[1]["emotion"]
    assert list(labels) == golden["audio.emotion_labels"].int().tolist()


@pytest.mark.parametrize("c", range(CLIPS))
def test_frames_handed_to_the_writer_match_memo(c, ours, golden):
    frames = torch.from_numpy(ours[0].frames[c * F:(c + 1) * F]).permute(0, 3, 1, 2)
    _check(f"clip{c}.frames", frames, golden[f"clip{c}.frames"][: frames.shape[0]])  # the last clip: the audio's frames

"""Hallo from the user's files (issue 24, item 5): `emo generate` against Hallo's own entry point on the same files.

``tests/parity/hallo_files/`` was made by ``tools/parity/hallo_from_files.py`` in Hallo's venv (command, commit,
package versions and the inputs' sha256 in its meta.json): ``scripts/inference.py``'s ``inference_process`` on a PNG
file (a square, face-centred cut of ``skimage.data.astronaut()``) and ``tests/parity/audio/song44k.wav`` (a voice, a
chord and noise), with Hallo's own image preprocessing, the real audio-separator 0.17.2 and wav2vec2, its clip loop and
seed 42. Here the same two files go through ``emo generate`` as a user types it (``tests/from_files.py``), with the
family's preset (tiny-hallo: 8 frames per clip, 2 motion frames, CFG 3.5) and ``--seed 42 --steps 3 --size 64``.

Stand-ins on both sides, for models that cannot be reached here (the harness's, imported from it): insightface's
``FaceAnalysis`` (fixed boxes, an embedding computed from the pixels it is handed), MediaPipe's face landmarker (fixed
478 points; it refuses a picture other than the one it stands for), our face detector (the same box), the separator
model (tests/parity/audio/standin_Kim_Vocal_2.onnx: through onnxruntime where installed, else the same model as torch
ops, which tests/test_parity_audio.py shows agree), the tiny random networks of tests/parity/hallo.

Judged by the standard (tests/parity_floor.py): every stage within max(1e-4, 3 x Hallo's own 2- vs 1-thread noise).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, parity_common, rel_err
from tests.from_files import run_generate
from tests.parity_floor import check

# EMO_PARITY_HALLO_FILES_DIR: another fixture of the same harness (e.g. from song.mp3; tools/parity/README.md)
FIX = Path(os.environ.get("EMO_PARITY_HALLO_FILES_DIR") or ROOT / "tests" / "parity" / "hallo_files")
AUDIO_FIX = ROOT / "tests" / "parity" / "audio"
META = json.loads((FIX / "meta.json").read_text())


def _harness():
    sys.path.insert(0, str(ROOT / "tools" / "parity"))
    import audio_original
    import hallo_from_files

    return hallo_from_files, audio_original


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _standins(mp, harness, picture):
    """The stand-ins of the module docstring, on our side."""
    from emo_model.audio import vocal_separation
    from emo_model.face import crop, detectors
    from emo_model.face.boxes import FaceBox
    from emo_model.network import identity

    fake = harness.fake_mediapipe(harness.picture_landmarks(), picture.shape[:2])
    fake.__spec__ = importlib.machinery.ModuleSpec("mediapipe", None)
    mp.setitem(sys.modules, "mediapipe", fake)
    mp.setattr(identity, "find_insightface_pack", lambda models_dir: Path(models_dir) / "face_analysis" / "models")
    mp.setattr(identity, "_face_analysis", lambda pack: harness.PictureFaceAnalysis())
    dx, dy = harness.PICTURE_OFFSET
    box = harness.FACE_BOXES[0] + np.array([dx, dy, dx, dy], np.float32)

    def detect(rgb, detector, models_dir):  # the insightface box, in the pixels of the (whole, resized) picture handed
        k = rgb.shape[1] / picture.shape[1]
        return [FaceBox(*(float(v) * k for v in box))]

    mp.setattr(crop, "_detect_rgb", detect)
    mp.setattr(detectors, "_detect_rgb", detect)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:  # not a test requirement: the stand-in model as torch ops (tests/test_parity_audio.py)
        out = load_file(AUDIO_FIX / "outputs.safetensors")
        gain, mix = out["standin.gain"].reshape(1, 1, -1, 1), out["standin.mix"].reshape(4, 4, 1, 1)
        mp.setattr(vocal_separation, "runtime_available", lambda: True)
        mp.setattr(vocal_separation, "onnx_model", lambda path, settings: (
            lambda spec: torch.nn.functional.conv2d(torch.from_numpy(spec) * gain, mix).numpy()))


def _files(tmp: Path, harness, audio_original, meta: dict, family: str):
    """The user's files and models folder, each checked against what the original was given."""
    inputs = meta["inputs"]
    picture = harness.picture()
    assert _sha(picture.tobytes()) == inputs["portrait.png"]["pixels_sha256"], "skimage's astronaut changed"
    image = tmp / "portrait.png"
    image.write_bytes(harness.png_bytes(picture))
    assert _sha(image.read_bytes()) == inputs["portrait.png"]["sha256"]
    audio = tmp / Path(inputs["audio"]["file"]).name
    shutil.copy(ROOT / inputs["audio"]["file"], audio)
    assert _sha(audio.read_bytes()) == inputs["audio"]["sha256"]
    models = tmp / "models"
    standin = ROOT / inputs["separator_model"]["file"]
    assert _sha(standin.read_bytes()) == inputs["separator_model"]["sha256"]
    audio_original.separator_folder(models, standin)  # audio_separator/Kim_Vocal_2.onnx + audio-separator's JSON files
    landmarker = models / "face_analysis" / "models" / "face_landmarker_v2_with_blendshapes.task"
    landmarker.parent.mkdir(parents=True)
    landmarker.write_bytes(b"stand-in")  # found by the front end; the stand-in landmarker never reads it
    common = parity_common()
    weights = json.loads((ROOT / meta["weights"]["assets"] / "meta.json").read_text())["weights"]
    state = common.hashed_state_dict([(k, s) for k, s in weights["spec"]], weights["seed"])
    assert common.digest(state) == meta["weights"]["digest"]
    (models / family).mkdir()
    torch.save(state, models / family / "net.pth")
    return picture, image, audio, models


def generate_from_files(tmp: Path, meta: dict, family: str, extra: tuple[str, ...] = ()):
    """One `emo generate` run on the fixture's files (``extra``: more flags a user types), and what our code computed
    on the way (recorded where it is returned); a generator: the stand-ins stay in place until it is closed."""
    from emo_model.app.session import Session
    from emo_model.audio import vocal_separation
    from emo_model.network import identity

    harness, audio_original = _harness()
    picture, image, audio, models = _files(tmp, harness, audio_original, meta, family)
    seen: dict = {}

    def recorder(owner, name, key):
        original = getattr(owner, name)

        def wrapper(*a, **kw):
            out = original(*a, **kw)
            seen.setdefault(key, out)
            return out

        return wrapper

    assets = ROOT / meta["weights"]["assets"]
    argv = ["--image", str(image), "--audio", str(audio), "--model", str(models / family / "net.pth"), *extra,
            "--vae", str(assets / "vae"), "--audio-encoder", str(assets / "wav2vec2"), "--models-dir", str(models),
            "--seed", "42", "--steps", "3", "--size", "64", "--out", str(tmp / "out.mp4")]
    with pytest.MonkeyPatch.context() as mp:
        _standins(mp, harness, picture)
        load = Session.load.__func__
        mp.setattr(Session, "load", classmethod(lambda cls, *a, **kw: seen.setdefault("session", load(cls, *a, **kw))))
        for owner, name, key in ((Session, "prepare_portrait", "portrait"), (Session, "encode_audio", "audio"),
                                 (identity, "face_identity_embedding", "face_emb"), (vocal_separation, "separate", "vocals")):
            mp.setattr(owner, name, recorder(owner, name, key))
        result = run_generate(argv, monkeypatch=mp)
        seen.update(result=result, picture=picture, meta=meta)
        yield seen


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    for seen in generate_from_files(tmp_path_factory.mktemp("hallo_files"), META, "hallo"):
        yield {**seen, "fix": FIX}


@pytest.fixture(scope="module")
def golden():
    return load_file(FIX / "stages.safetensors")


def _check(ours, golden, stage, fix=FIX):
    ours = torch.as_tensor(np.asarray(ours) if not isinstance(ours, torch.Tensor) else ours)
    _, rel = rel_err(ours, golden[stage])
    check(rel, fix, stage, what=f"the original's own run from the same files ({fix.name})")
    print(f"{stage}: rel err {rel:.2e}")  # -s shows the numbers docs/parity.md records
    return rel


def test_generate_runs_hallos_preprocessing(run):
    result = run["result"]
    assert result.status == 0
    assert "'s face preprocessing ran (face landmarker masks on the whole square picture" in result.notes
    assert "vocal separation off" not in result.notes


def test_frames_are_hallos(run, golden):
    """The frames each side hands its video writer (10 frames: 2 clips of 8, the second on the first's motion frames)."""
    frames = run["result"].frames
    assert frames.shape == tuple(golden["frames"].shape) == (10, 64, 64, 3)
    _check(frames, golden, "frames", run["fix"])


def test_portrait_and_masks_are_hallos(run, golden):
    portrait = run["portrait"]
    _check(torch.from_numpy(portrait.image) * 2 - 1, golden, "portrait", run["fix"])
    _check(portrait.mask, golden, "face_region", run["fix"])
    levels = sorted(portrait.region_masks.items(), key=lambda kv: -kv[0][0])  # model size / 8, 16, 32, 64
    for i, (_, masks) in enumerate(levels):
        for k, name in enumerate(("full", "face", "lip")):
            _check(masks[k].reshape(-1), golden, f"mask.{name}.{i}", run["fix"])


def test_identity_is_embedded_from_the_whole_picture_as_hallo_does(run, golden):
    assert run["portrait"].original_picture.shape == run["picture"].shape
    _check(run["face_emb"], golden, "face_emb", run["fix"])


def test_vocals_are_hallos(run, golden):
    vocals, stem = run["vocals"]
    assert stem.dtype == np.int16 and stem.shape == tuple(golden["vocals_stem"].shape)
    assert np.abs(stem.astype(np.int32) - golden["vocals_stem"].numpy()).max() <= 1  # 1 LSB: test_parity_audio.py
    _check(stem.astype(np.float32), {"vocals_stem": golden["vocals_stem"].float()}, "vocals_stem", run["fix"])
    _check(vocals, golden, "vocals_16k", run["fix"])


def test_audio_features_and_tokens_are_hallos(run, golden):
    session, audio = run["session"], run["audio"]
    features = audio.features[:] if not isinstance(audio.features, torch.Tensor) else audio.features
    margin = session.config.audio.margin
    _check(features[:, margin], golden, "audio_emb", run["fix"])
    f = run["meta"]["settings"]["frames_per_clip"]
    assert session.config.preset.frames_per_clip == f  # the tiny preset's, no flag
    for c in range(run["meta"]["settings"]["clips"]):
        with torch.no_grad():
            tokens = session.model.audio_tokens(features[c * f : (c + 1) * f])[0]
        _check(tokens, golden, f"clip{c}.audio_tokens", run["fix"])


def test_the_comparison_can_fail(run, golden):
    """Our own face crop (what a picture that is not square gets), or the whole mix instead of the vocals, is caught."""
    cut = run["session"].prepare_portrait(run["picture"][:, :236], size=64)  # 4 columns less: not square
    assert cut.original_picture is None
    _, rel = rel_err(torch.from_numpy(cut.image) * 2 - 1, golden["portrait"])
    assert rel > 1e-2, rel
    mix = run["audio"].audio.waveform  # the mix the video keeps (the vocals drove the mouth)
    n = min(mix.numel(), golden["vocals_16k"].numel())
    _, rel = rel_err(mix[:n], golden["vocals_16k"][:n])
    assert rel > 1e-2, rel
    _, rel = rel_err(run["audio"].vocals.waveform[:n], golden["vocals_16k"][:n])
    assert rel < 1e-4, rel


def test_whole_picture_framing_is_for_square_pictures_of_families_that_resize_the_whole_picture():
    """emo_model/face/front_ends.py: Hallo's and MEMO's framing (the whole square picture, PIL-resized; landmarks and
    identity on the whole picture); a picture that is not square, or a family that crops, keeps our face crop."""
    from emo_model.face import FaceBox, front_ends, prepare_portrait
    from emo_model.face.landmark_masks import resized_portrait
    from emo_model.families import get_family

    hallo, memo, echo = (get_family(f).face_front_end for f in ("hallo", "memo", "echomimic-v1"))
    square, wide = np.zeros((96, 96, 3), np.uint8), np.zeros((96, 97, 3), np.uint8)
    assert front_ends.whole_picture(hallo, square) and front_ends.whole_picture(memo, torch.zeros(1, 96, 96, 3))
    assert not front_ends.whole_picture(hallo, wide) and not front_ends.whole_picture(echo, square)
    assert not front_ends.whole_picture(None, square)
    assert front_ends.framing_options(memo, square) == {"crop": "full"} and front_ends.framing_options(memo, wide) == {}
    assert front_ends.framing_options(hallo, square, face_index=1) == {}  # another face than the largest: our crop
    harness, _ = _harness()
    picture = harness.picture()
    box = FaceBox(80.0, 50.0, 160.0, 170.0)
    ours = prepare_portrait(picture, 64, crop="full", faces=[box])
    got = front_ends.as_original(memo, picture, ours, None)
    assert got.original_picture is not None and np.array_equal(got.original_picture, picture)
    assert np.array_equal(got.image, resized_portrait(picture, 64)) and not np.array_equal(got.image, ours.image)
    assert "framing: the whole square picture" in got.front_end
    cropped = front_ends.as_original(memo, picture, prepare_portrait(picture, 64, faces=[box]), None)
    assert cropped.original_picture is None and "has no crop: ours used" in cropped.front_end

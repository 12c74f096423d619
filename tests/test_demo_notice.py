"""The demo model says what it is when given a portrait it was not made for (any image but its sample)."""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from comfy_harness import write_portrait, write_speech
from conftest import HANG_GUARD_S, ROOT

from emo_model import demo
from emo_model.demo.portrait_check import NOTICE, is_demo_portrait, match_demo_portrait, portrait_notice
from emo_model.face import prepare_portrait


def _sample() -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(demo.portrait_path())), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def test_notice_is_one_line_naming_the_toy_and_where_real_weights_go():
    assert "\n" not in NOTICE
    assert "64x64 toy" in NOTICE and "synthetic" in NOTICE
    assert "models/emo" in NOTICE
    section = "Model files and where they go"
    assert section in NOTICE and f"## {section}" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("crop_ratio", [1.0, 1.5, 2.0, 3.0, 4.5, 6.0])
@pytest.mark.parametrize("size", [64, 256])
def test_the_sample_portrait_and_its_face_crops_are_recognised(size, crop_ratio):
    crop = prepare_portrait(_sample(), size, crop_ratio=crop_ratio).image
    assert is_demo_portrait(crop), match_demo_portrait(crop)
    assert portrait_notice(crop) is None


def test_the_sample_portrait_as_loaded_by_anyone_is_recognised():
    rgb = _sample()
    assert is_demo_portrait(rgb)
    assert is_demo_portrait((rgb * 255).round().astype(np.uint8))  # 0..255
    assert is_demo_portrait(rgb[None])  # a batch of one (ComfyUI IMAGE)
    assert is_demo_portrait(prepare_portrait(rgb, 64, crop="full").image)
    assert is_demo_portrait(cv2.resize(rgb, (100, 100), interpolation=cv2.INTER_AREA))


def test_other_photos_and_other_synthetic_faces_get_the_notice():
    from skimage import data

    from emo_model.demo.config import HELDOUT_SEED
    from emo_model.demo.render import Renderer, random_look

    others = [data.astronaut(), data.chelsea(), data.coffee(), np.repeat(data.camera()[..., None], 3, axis=2)]
    for seed in range(HELDOUT_SEED, HELDOUT_SEED + 3):
        frame = Renderer(random_look(np.random.default_rng(seed)), 160).frame()
        others.append(frame)
    for image in others:
        arr = np.asarray(image)
        assert portrait_notice(arr) == NOTICE, match_demo_portrait(arr)
        crop = prepare_portrait(arr.astype(np.float32) / (255.0 if arr.dtype == np.uint8 else 1.0), 64).image
        assert portrait_notice(crop) == NOTICE, match_demo_portrait(crop)


@pytest.fixture(scope="module")
def demo_session():
    from emo_model.app.session import Session

    return Session.load(demo.model_path())


def test_encoding_a_user_portrait_with_the_demo_model_carries_the_notice(demo_session, tmp_path):
    from skimage import data

    user = prepare_portrait(data.astronaut().astype(np.float32) / 255.0, 64).image
    assert demo_session.encode_reference(user).note == NOTICE
    own = prepare_portrait(_sample(), 64).image
    assert demo_session.encode_reference(own).note == ""


def _generate(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "emo_model", "generate", "--steps", "1", "--device", "cpu", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S, env=env)


def test_the_command_line_prints_the_notice_once_for_a_user_photo(tmp_path):
    # (the sample portrait giving no notice is checked on the session above: one subprocess is enough here)
    speech = write_speech(tmp_path / "speech.wav", seconds=0.5)
    photo = write_portrait(tmp_path / "me.png")
    mine = _generate("--image", str(photo), "--audio", str(speech), "--out", str(tmp_path / "mine.mp4"))
    assert mine.returncode == 0, mine.stderr[-2000:]
    assert [line for line in mine.stderr.splitlines() if "64x64 toy" in line] == [f"note: {NOTICE}"]

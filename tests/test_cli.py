"""The command line, run as a user runs it: `python -m emo_model ...` in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from comfy_harness import write_portrait, write_speech
from conftest import HANG_GUARD_S, ROOT, perturb_zero_inits, tiny_vae


def emo(*args: str, timeout: int = HANG_GUARD_S) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "emo_model", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from emo_model.network.model import EMOModel
    from emo_model import weights

    base = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = perturb_zero_inits(EMOModel("tiny").eval())
    weights.save_native(model, base / "tiny.safetensors", vae=tiny_vae())
    return {
        "model": base / "tiny.safetensors",
        "image": write_portrait(base / "face.png"),
        "audio": write_speech(base / "speech.wav", seconds=1.1),
        "dir": base,
    }


def test_generate_end_to_end_on_the_tiny_config(files):
    import soundfile as sf

    from emo_model.audio.signal import num_video_frames
    from emo_model.video_io import probe_video

    out = files["dir"] / "out.mp4"
    res = emo("generate", "--model", str(files["model"]), "--image", str(files["image"]), "--audio", str(files["audio"]),
              "--out", str(out), "--steps", "2", "--seed", "3", "--device", "cpu")
    assert res.returncode == 0, res.stderr[-3000:]
    info = sf.info(str(files["audio"]))
    frames = num_video_frames(info.frames, info.samplerate, 25.0)  # the tiny preset's fps
    video = probe_video(out)
    assert video.num_frames == frames and abs(video.fps - 25.0) < 1e-6
    assert video.width == video.height == 64
    # half a frame: the writer trims the audio to the frames (one frame too many or too few fails); the declared
    # duration is exact to the mp4 timescale's ~1 ms
    assert video.audio_codec == "aac" and abs(video.audio_duration - frames / 25.0) <= 0.5 / 25.0
    assert "wrote" in res.stdout


def test_generate_errors_are_one_line_and_leave_no_file(files):
    out = files["dir"] / "never.mp4"
    res = emo("generate", "--model", str(files["model"]), "--image", str(files["image"]), "--audio", str(files["dir"] / "nope.wav"), "--out", str(out))
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "nope.wav" in res.stderr and not out.exists()
    res = emo("generate", "--model", str(files["dir"] / "missing.safetensors"), "--image", str(files["image"]), "--audio", str(files["audio"]), "--out", str(out))
    assert res.returncode != 0 and "Traceback" not in res.stderr and not out.exists()


def test_inspect_and_convert_from_the_command_line(files):
    res = emo("inspect", str(files["model"]))
    assert res.returncode == 0, res.stderr
    assert "tiny" in res.stdout and "native" in res.stdout
    out = files["dir"] / "converted.safetensors"
    res = emo("convert", str(files["model"]), "--out", str(out), "--dtype", "fp16")
    assert res.returncode == 0, res.stderr
    from emo_model.weights.checkpoints import load_emo_model

    assert load_emo_model(out).dtype == torch.float16


# the commands the README's command table documents, written out (an expected value independent of cli.COMMANDS)
DOCUMENTED_COMMANDS = [
    "generate", "bench", "inspect", "convert", "download", "preprocess", "train", "eval-sync", "eval-fast", "make-demo",
]


def test_help_lists_every_command():
    res = emo("--help")
    assert res.returncode == 0
    # argparse's list of sub-commands: each name indented by 4 (its help after it or on the next line), before "options:"
    block = res.stdout.split("positional arguments:", 1)[1].split("options:", 1)[0]
    listed = re.findall(r"^    ([a-z][a-z-]*)(?:  |$)", block, flags=re.M)
    assert sorted(listed) == sorted(DOCUMENTED_COMMANDS), res.stdout
    readme = (ROOT / "README.md").read_text()
    for name in DOCUMENTED_COMMANDS:  # and the README's table still documents each of them
        assert re.search(rf"`python -m emo_model {name}\b|/ `{name} ", readme), name

"""The tiny path, self-contained: docs/training.md's "Train the tiny model from nothing" run as written, and what it needs.

* the documented command sequence (synthetic videos from ``make-demo``, ``preprocess``, three ``train`` stages with the
  demo's bundled VAE, ``generate`` from the stage-3 run folder), each command a subprocess of the CLI in ``tmp_path``;
* ``--vae`` takes a native file that carries a VAE (the demo's), and refuses one that does not in one line;
* ``--init`` / ``--model`` take a training run folder or a checkpoint folder (the weights inside);
* a run whose weights carry their VAE generates without ``--vae``;
* ``preprocess`` takes the config's own size and frame rate when none is given.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HANG_GUARD_S, ROOT, tiny_vae
from safetensors.torch import save_file

from emo_model import demo
from emo_model.network.model import EMOModel
from emo_model.weights.files import WeightsError
from emo_model.weights.native import save_native
from emo_model.weights.training_init import training_weights_file
from emo_model.weights.vae_files import load_bundled_vae, load_vae

DOCS = ROOT / "docs" / "training.md"
SECTION = "## 6. Train the tiny model from nothing"
SHORT_AUDIO_SECONDS = 0.6  # the generate step's audio, cut short here: 15 frames at 25 fps, two clips of the tiny preset


# --------------------------------------------------------------------------------------------------
# Folders the trainer writes, and the weights inside them


def _weights(path: Path, step: int | None = None) -> Path:
    """A stand-in weights file (the resolver reads names and the step metadata only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"x": torch.zeros(1)}, str(path), metadata={"emo_training_step": str(step)} if step is not None else None)
    return path


def _checkpoint(run: Path, step: int, stage: int = 1, complete: bool = True) -> Path:
    folder = run / "checkpoints" / f"step-{step:07d}"
    _weights(folder / f"emo-stage{stage}-step{step}.safetensors", step)
    (folder / "model.safetensors").write_bytes(b"accelerate's own state")
    if complete:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def test_training_weights_file_finds_the_weights_of_a_checkpoint_or_run_folder(tmp_path):
    run = tmp_path / "run"
    two = _checkpoint(run, 2)
    four = _checkpoint(run, 4)
    _checkpoint(run, 6, complete=False)  # interrupted while written: never picked
    assert training_weights_file(two) == two / "emo-stage1-step2.safetensors"
    assert training_weights_file(run / "checkpoints") == four / "emo-stage1-step4.safetensors"
    assert training_weights_file(run) == four / "emo-stage1-step4.safetensors"  # no final file yet
    final = _weights(run / "emo-stage1-final.safetensors", 4)
    assert training_weights_file(run) == final  # same step: the final file
    _weights(final, 3)  # a run resumed past its final file: the newer checkpoint wins
    assert training_weights_file(run) == four / "emo-stage1-step4.safetensors"
    assert training_weights_file(tmp_path / "plain") is None
    (tmp_path / "plain").mkdir()
    assert training_weights_file(tmp_path / "plain") is None  # not a training folder: the caller reads it as before
    with pytest.raises(WeightsError, match=r"incomplete training checkpoint \(no trainer_state.json"):
        training_weights_file(run / "checkpoints" / "step-0000006")
    (run / "checkpoints" / "step-0000002" / "emo-stage1-step2.safetensors").unlink()
    with pytest.raises(WeightsError, match="a training checkpoint holds one emo-stageS-stepN.safetensors; found no"):
        training_weights_file(two)
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    assert training_weights_file(empty) is None  # a models folder may hold checkpoints/ too: not taken for a run
    _checkpoint(empty, 3, complete=False)
    with pytest.raises(WeightsError, match="is a training run with no weights yet: expected emo-stageS-final.safetensors"):
        training_weights_file(empty)
    _weights(run / "emo-stage2-final.safetensors", 1)
    with pytest.raises(WeightsError, match="holds 2 final weights files"):
        training_weights_file(run)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, EMOModel]:
    """A stage-1 run folder as the trainer lays it out, whose native weights carry their VAE."""
    torch.manual_seed(0)
    model = EMOModel("tiny").eval()
    run = tmp_path_factory.mktemp("run") / "stage1"
    folder = run / "checkpoints" / "step-0000002"
    folder.mkdir(parents=True)
    save_native(model, folder / "emo-stage1-step2.safetensors", vae=tiny_vae(), metadata={"emo_training_step": "2"})
    (folder / "trainer_state.json").write_text("{}")
    return run, model


def test_a_run_or_checkpoint_folder_loads_as_a_model_and_as_its_vae(tiny_run):
    from emo_model import weights
    from emo_model.app.session import Session

    run, model = tiny_run
    checkpoint = run / "checkpoints" / "step-0000002"
    for path in (run, checkpoint):
        loaded = weights.load_emo_model(path, dtype=torch.float32)  # what --init and --model do with a folder
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True))
    # weights that carry their VAE: generate and the nodes (Session.load) need no --vae, and --vae may name the run
    reference = tiny_vae().state_dict().values()
    session = Session.load(run, device="cpu", dtype=torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(session.codec.vae.state_dict().values(), reference, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(load_vae(checkpoint).state_dict().values(), reference, strict=True))


def test_vae_takes_the_demo_file_and_refuses_a_model_file_without_one(tmp_path, tiny_run):
    bundled = load_bundled_vae(demo.model_path())
    vae = load_vae(demo.model_path())  # what `train --vae emo_model/demo_assets/emo-tiny-demo.safetensors` reads
    assert vae.config.scaling_factor == bundled.config.scaling_factor != 1.0
    assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), bundled.state_dict().values(), strict=True))
    plain = save_native(tiny_run[1], tmp_path / "plain.safetensors")
    with pytest.raises(WeightsError, match="plain.safetensors is an EMO model file without a VAE in it; give a diffusers"):
        load_vae(plain)


def test_preprocess_takes_the_configs_own_size_and_fps():
    from emo_model.train.preprocess_options import Options
    from emo_model.validation import InputError

    tiny = Options(config="tiny")
    assert tiny.fill_from_config() == ["fps", "resolution"] and (tiny.fps, tiny.resolution) == (25.0, 64)
    emo = Options(config="emo", fps=12.0)
    assert emo.fill_from_config() == ["resolution"] and (emo.fps, emo.resolution) == (12.0, 512)
    with pytest.raises(InputError, match="--config 'nope'"):
        Options(config="nope").fill_from_config()


# --------------------------------------------------------------------------------------------------
# The documented sequence, as written


def documented_commands() -> list[str]:
    """The ``python -m emo_model ...`` commands of the section's code block, continuation lines joined."""
    text = DOCS.read_text()
    assert SECTION in text, f"docs/training.md lost its section {SECTION!r}"
    body = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```\n(.*?)```", body, re.S).group(1)
    return [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip().startswith("python -m emo_model")]


def _short_speech(path: Path) -> Path:
    """The first SHORT_AUDIO_SECONDS of the demo's speech clip (the documented command uses all of it)."""
    with wave.open(str(demo.audio_path())) as src:
        rate = src.getframerate()
        frames = src.readframes(int(SHORT_AUDIO_SECONDS * rate))
        params = src.getparams()
    with wave.open(str(path), "wb") as dst:
        dst.setparams(params)
        dst.writeframes(frames)
    return path


def test_the_documented_tiny_path_runs_from_nothing_to_a_video(tmp_path):
    from emo_model.audio.signal import num_video_frames
    from emo_model.families import get_config
    from emo_model.video_io import probe_video, read_video_frames

    commands = documented_commands()
    assert [c.split()[3] for c in commands] == ["make-demo", "preprocess", "train", "train", "train", "generate"]
    speech = _short_speech(tmp_path / "speech-short.wav")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    outputs = []
    for command in commands:
        argv = [a.replace("runs/", f"{tmp_path}/runs/") for a in shlex.split(command)]
        argv = [str(speech) if a == "emo_model/demo_assets/speech.wav" else a for a in argv]
        proc = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}"
        outputs.append(proc.stdout + proc.stderr)
    # preprocess said which size and frame rate it took: the tiny config's own
    tiny = get_config("tiny").preset
    assert f"{tiny.resolution} px crops at {tiny.fps:g} fps (the tiny config's own" in outputs[1]
    index = [json.loads(line) for line in (tmp_path / "runs/tiny-data/index.jsonl").read_text().splitlines()]
    assert len(index) >= 2 and {e["fps"] for e in index} == {tiny.fps}
    # each stage started from the previous run folder and wrote its final weights
    for stage in (1, 2, 3):
        assert (tmp_path / f"runs/tiny-stage{stage}/emo-stage{stage}-final.safetensors").is_file()
    assert "initialised from" in outputs[3] and "initialised from" in outputs[4]
    video = tmp_path / "runs/tiny.mp4"
    info = probe_video(video)
    with wave.open(str(speech)) as w:
        expected = num_video_frames(w.getnframes(), w.getframerate(), tiny.fps)
    assert info.num_frames == expected and (info.width, info.height) == (tiny.resolution, tiny.resolution)
    assert info.audio_codec == "aac"
    frames = read_video_frames(video)
    assert len(frames) == expected and float(np.std(frames)) > 1.0  # a picture, not one flat colour

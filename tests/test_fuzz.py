"""Fuzzing (issue 16): hostile values and damaged files, generated here, never give a traceback or a bad file.

* property-based (Hypothesis) over the CLI flags of ``generate`` and the sampler / audio node inputs:
  every drawn value either works (a complete, readable video / a finite IMAGE of the right size) or
  gives one ``error:`` line (a ValueError on the nodes), and no video or partial file is left behind;
* the numeric flags of the other commands (eval-sync, eval-fast, preprocess, train and its --set config
  values, make-demo): refused in one line before the output folder is made, or accepted only as finite,
  non-negative amounts (their first piece of real work is patched to stop the run);
* a corpus of malformed checkpoints, images and audio made by the tests.

Sized for CI: the built-in tiny demo model, 0.2 s of audio, 1-2 steps, a few dozen examples.
"""

from __future__ import annotations

import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from comfy_harness import demo_through_nodes, write_portrait, write_speech
from conftest import png_header_only
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from emo_model.app.cli import main
from emo_model import weights

# no shrinking: each failing example is printed as drawn (shrinking re-runs generation, minutes here)
FUZZ = settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.generate], report_multiple_bugs=False)


def run_cli(capsys, args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_error_line(err: str) -> str:
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and not line.startswith(("EMO:", "warning:", "note:"))]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.suffix in (".mp4", ".webm") or ".partial" in p.name]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    out = base / "out"
    out.mkdir()
    return {"dir": base, "out": out, "image": write_portrait(base / "face.png", size=96), "audio": write_speech(base / "speech.wav", seconds=0.2)}


# ---- the command line -----------------------------------------------------------------------------

# each flag: values that work (None = leave it out; the ends of the flag's range among them), and values outside the
# range; an example sets every flag to a working value and then at most one flag to an outside value. The oracle is
# strict both ways: every value in range (and a video suffix) must make a video, one value outside must be refused.
INT_BAD = [0, -1, -7, 10**6, 2**70]
FLOAT_BAD = [0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e6, 1e-9]
CLI_FLAGS = {  # flag: (working values, values outside the range)
    "--steps": ([1, 2], [0, -3, 1001, 10**9]),  # never None: the demo preset (20 steps) is too slow here
    "--fps": ([None, 25.0, 12.5], FLOAT_BAD),
    "--speed": ([None, 0.0, 0.5, 1.2, 3.0], [-1.0, float("nan"), float("inf"), -float("inf"), 1e6, 3.5]),
    "--cfg": ([None, 0.0, 1.0, 2.5, 30.0], [-1.0, float("nan"), float("inf"), -float("inf"), 1e6, 31.0]),
    "--audio-cfg": ([None, 0.0, 1.0, 30.0], [-1.0, float("nan"), float("inf"), -float("inf"), 1e6, 30.5]),
    "--frames-per-clip": ([None, 4, 8], INT_BAD),
    "--motion-frames": ([None, 0, 2, 4], INT_BAD[1:]),
    "--size": ([None, 64], [1, 63, 100, 4096]),
    "--seed": ([None, 0, 3, 2**62, 2**63 - 1], [-1, 2**63, 2**70]),
    "--loudness": ([None, -23.0, -70.0, 0.0], FLOAT_BAD[2:] + [5.0, -70.5]),
    "--crf": ([None, 0, 19, 51], [-1, 64, 10**6]),
    "--max-frames": ([None, 100], [0, -1, 2]),  # 2: fewer than the audio's 5 frames
}


def in_range(flags: dict) -> bool:
    return all(value in CLI_FLAGS[flag][0] for flag, value in flags.items())


@st.composite
def cli_flags(draw):
    flags = {flag: draw(st.sampled_from(good)) for flag, (good, _) in CLI_FLAGS.items()}
    hostile = draw(st.sampled_from([None, *CLI_FLAGS]))
    if hostile is not None:
        flags[hostile] = draw(st.sampled_from(CLI_FLAGS[hostile][1]))
    return flags


LOW_ENDS = {"--steps": 1, "--speed": 0.0, "--cfg": 0.0, "--audio-cfg": 0.0, "--motion-frames": 0, "--seed": 0,
            "--loudness": -70.0, "--crf": 0}
HIGH_ENDS = {"--steps": 1, "--speed": 3.0, "--cfg": 30.0, "--audio-cfg": 30.0, "--seed": 2**63 - 1, "--loudness": 0.0,
             "--crf": 51}


@settings(FUZZ, max_examples=8)
@given(flags=cli_flags(), suffix=st.sampled_from([".mp4", ".mp4", ".mp4", ".webm", ".avi", ""]))
@example(flags={flag: LOW_ENDS.get(flag) for flag in CLI_FLAGS}, suffix=".webm")  # every value in range: must work
@example(flags={flag: HIGH_ENDS.get(flag) for flag in CLI_FLAGS}, suffix=".mp4")
def test_generate_flags_work_or_fail_in_one_line(media, capsys, flags, suffix):
    from emo_model.video_io import probe_video

    out = media["out"] / f"fuzz{suffix}"
    args = ["generate", "--image", media["image"], "--audio", media["audio"], "--out", out, "--device", "cpu"]
    for flag, value in flags.items():
        if value is not None:
            args.append(f"{flag}={value!r}")  # --flag=-inf: a value may start with '-'

    rc, stdout, err = run_cli(capsys, args)
    valid = in_range(flags) and suffix in (".mp4", ".webm")
    try:
        assert rc == (0 if valid else 1), f"{'valid' if valid else 'invalid'} flags {flags} {suffix!r}: exit {rc}; {err[-800:]}"
        if rc == 0:
            video = probe_video(out)
            fps = flags["--fps"] or 25.0
            assert video.num_frames == math.ceil(round(0.2 * fps, 6)) and video.width == (flags["--size"] or 64)
            assert "wrote" in stdout
        else:
            assert rc == 1
            assert_one_error_line(err)
            assert not leftovers(media["out"]), leftovers(media["out"])
    finally:
        for p in leftovers(media["out"]):
            p.unlink()


# ---- the nodes ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nodes_ready(media):
    return demo_through_nodes(media["audio"])


def _node_floats(*good):
    return st.sampled_from([*good, 0.0, -1.0, float("nan"), float("inf"), 1e6])


NODE_BAD_FLOATS = [-1.0, float("nan"), float("inf"), 1e6]
NODE_INPUTS = {  # input: (values in range, including each widget's "preset" value; values outside the range)
    "seed": ([0, 5, 2**63 - 1], [-1, 2**63]),
    "steps": ([1, 2], [-1, 1001]),  # 0 (= preset, 20 steps) is valid but too slow here
    "cfg": ([0.0, 1.0, 3.5], NODE_BAD_FLOATS),  # 0 = the preset's
    "audio_cfg": ([0.0, 2.0], NODE_BAD_FLOATS),  # 0 = same as cfg
    "sampler": (["ddim", "euler"], []),  # a combo: ComfyUI only sends listed values
    "speed": ([0.0, 0.3, 1.0, 3.0], NODE_BAD_FLOATS + [3.5]),
    "frames_per_clip": ([0, 2, 8], [-1, 1000]),  # 0 = the preset's
    "motion_frames": ([-1, 0, 2], [40]),  # -1 = the preset's
    "colour_match": (["none", "mean", "reinhard"], []),
    "speed_curve": (["", "0.2, 1.0", ";;"], ["0.5, nan", "1e9", "-1", "fast"]),  # "" / no number: the speed input
}


@st.composite
def node_inputs(draw):
    inputs = {name: draw(st.sampled_from(good)) for name, (good, _) in NODE_INPUTS.items()}
    outside = draw(st.sampled_from([None, *(name for name, (_, bad) in NODE_INPUTS.items() if bad)]))
    if outside is not None:
        inputs[outside] = draw(st.sampled_from(NODE_INPUTS[outside][1]))
    return inputs


def node_inputs_in_range(inputs: dict) -> bool:
    # a speed curve with numbers replaces the constant speed (the node's tooltip), which is then not read
    ignored = {"speed"} if inputs["speed_curve"] == "0.2, 1.0" else set()
    return all(value in NODE_INPUTS[name][0] for name, value in inputs.items() if name not in ignored)


@FUZZ
@given(inputs=node_inputs())
@example(inputs={"seed": 2**63 - 1, "steps": 1, "cfg": 0.0, "audio_cfg": 0.0, "sampler": "ddim", "speed": 3.0,
                 "frames_per_clip": 8, "motion_frames": 0, "colour_match": "none", "speed_curve": ""})  # range ends: must work
def test_sampler_node_inputs_work_or_fail_with_one_line(nodes_ready, inputs):
    nodes, session, reference, emo_audio, _ = nodes_ready
    sampler = nodes["EMOSampler"]()
    valid = node_inputs_in_range(inputs)
    try:
        result = sampler.sample(session, reference, emo_audio, **inputs)
    except ValueError as exc:  # ComfyUI shows the message on the node
        message = str(exc)
        assert not valid, f"inputs in range {inputs} were refused: {message}"
        assert message and "\n" not in message.strip() and len(message) < 400, message
        return
    assert valid, f"inputs out of range {inputs} were accepted"
    video = result["result"][0]
    assert video.shape == (emo_audio.num_frames, 64, 64, 3)
    assert bool(torch.isfinite(video).all()) and 0 <= float(video.min()) and float(video.max()) <= 1


@FUZZ
@given(fps=_node_floats(25.0, 12.0, 120.0), max_frames=st.sampled_from([1, 3, 10**6]), loudness=st.sampled_from(["off", "-23 LUFS", "-16 LUFS"]))
def test_audio_node_inputs_work_or_fail_with_one_line(nodes_ready, fps, max_frames, loudness):
    nodes, session, _, _, audio = nodes_ready
    # in range: one of the working frame rates, and the 0.2 s of audio's frames within max_frames
    used = session.config.preset.fps if fps == 0.0 else fps  # 0 = the model's preset
    valid = fps in (25.0, 12.0, 120.0, 0.0) and math.ceil(round(0.2 * used, 6)) <= max_frames
    try:
        result = nodes["EMOAudioEncode"]().encode(session, audio, fps, loudness, max_frames=max_frames)["result"]
    except ValueError as exc:
        assert not valid, f"fps={fps} max_frames={max_frames} are in range but were refused: {exc}"
        assert "\n" not in str(exc).strip(), str(exc)
        return
    assert valid, f"fps={fps} max_frames={max_frames} were accepted"
    features, _, frames, _, drive = result
    assert drive["sample_rate"] == 16000 and drive["waveform"].shape[-1] == features.audio.waveform.shape[-1]  # what drives the mouth
    assert 1 <= frames <= max_frames and bool(torch.isfinite(features.features[:]).all())  # [:]: every streamed row


# ---- corpus: checkpoints ----------------------------------------------------------------------------

def _checkpoint_corpus(base: Path) -> dict[str, Path]:
    from safetensors.torch import save_file

    from emo_model import demo

    good = demo.model_path().read_bytes()
    with __import__("safetensors").safe_open(str(demo.model_path()), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    key = next(k for k in tensors if k.startswith("denoising_unet.") and k.endswith(".weight"))
    corpus = {}
    nan = dict(tensors)
    nan[key] = nan[key].clone()
    nan[key].view(-1)[0] = float("nan")
    save_file(nan, str(base / "nan.safetensors"), metadata=meta)
    corpus["nan"] = base / "nan.safetensors"
    inf = dict(tensors)
    inf[key] = inf[key].clone()
    inf[key].view(-1)[-1] = -float("inf")
    save_file(inf, str(base / "inf.safetensors"), metadata=meta)
    corpus["inf"] = base / "inf.safetensors"
    ints = dict(tensors)
    ints[key] = ints[key].round().to(torch.int16)
    save_file(ints, str(base / "int.safetensors"), metadata=meta)
    corpus["int"] = base / "int.safetensors"
    (base / "truncated.safetensors").write_bytes(good[: len(good) // 3])
    corpus["truncated"] = base / "truncated.safetensors"
    (base / "header.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{" + good[9:200])
    corpus["wrong header"] = base / "header.safetensors"
    (base / "json.safetensors").write_bytes(struct.pack("<Q", 12) + b'{"a": [1, 2' + b" " * 64)
    corpus["bad json"] = base / "json.safetensors"
    (base / "empty.pth").write_bytes(b"")
    corpus["empty"] = base / "empty.pth"
    state = {k: v.clone() for k, v in list(tensors.items())[:5]}
    torch.save(state, base / "cut.pth")
    data = (base / "cut.pth").read_bytes()
    (base / "cut.pth").write_bytes(data[: len(data) // 2])
    corpus["truncated pth"] = base / "cut.pth"
    (base / "evil.pth").write_bytes(pickle.dumps({"x": print}))
    corpus["pickle with code"] = base / "evil.pth"
    return corpus


def test_malformed_checkpoints_are_refused_in_one_line(media, capsys):
    corpus = _checkpoint_corpus(media["dir"])
    for name, path in corpus.items():
        rc, out, err = run_cli(capsys, ["inspect", path])
        assert rc == 1, name
        assert "Traceback" not in err, (name, err)
        if "status" in out:  # read, then refused with the tensor named
            assert "refused:" in out and ("NaN" in out or "int16" in out), (name, out)
        else:
            assert_one_error_line(err)
        converted = media["dir"] / f"converted_{name.replace(' ', '_')}.safetensors"
        rc, _, err = run_cli(capsys, ["convert", path, "--out", converted])
        assert rc == 1 and not converted.exists(), name
        assert_one_error_line(err)
        with pytest.raises(weights.WeightsError):
            weights.load_emo_model(path)
        video = media["out"] / "never.mp4"
        rc, _, err = run_cli(capsys, ["generate", "--model", path, "--image", media["image"], "--audio", media["audio"],
                                      "--out", video, "--steps", "1", "--device", "cpu"])
        assert rc == 1 and not leftovers(media["out"]), name
        assert_one_error_line(err)


# ---- corpus: images and audio -----------------------------------------------------------------------



def _image_corpus(base: Path) -> dict[str, Path]:
    from PIL import Image

    Image.new("RGB", (1, 1)).save(base / "dot.png")
    Image.new("RGB", (500, 20)).save(base / "strip.png")
    good = write_portrait(base / "ok.png").read_bytes()
    (base / "cut.png").write_bytes(good[: len(good) // 2])
    (base / "zero.png").write_bytes(b"")
    (base / "text.jpg").write_text("not an image")
    return {
        "1x1": base / "dot.png",
        "20 px high": base / "strip.png",
        "truncated png": base / "cut.png",
        "huge header": png_header_only(base / "huge.png", 60_000, 60_000),
        "empty file": base / "zero.png",
        "text": base / "text.jpg",
        "missing": base / "nope.png",
    }


def _audio_corpus(base: Path) -> dict[str, Path]:
    import soundfile as sf

    sf.write(str(base / "empty.wav"), np.zeros((0, 1), np.float32), 16000)
    wave = np.random.default_rng(0).uniform(-0.5, 0.5, 8000).astype(np.float32)
    wave[100] = np.nan
    sf.write(str(base / "nan.wav"), wave, 16000, subtype="FLOAT")
    good = write_speech(base / "ok.wav", seconds=0.3).read_bytes()
    (base / "cut.wav").write_bytes(good[:30])  # inside the header
    (base / "noise.mp3").write_bytes(bytes(range(256)) * 8)
    return {"empty": base / "empty.wav", "NaN": base / "nan.wav", "truncated": base / "cut.wav", "garbage": base / "noise.mp3",
            "missing": base / "nope.wav"}


@pytest.mark.parametrize("kind", ["image", "audio"])
def test_malformed_media_give_one_line_and_no_file(media, capsys, kind):
    corpus = (_image_corpus if kind == "image" else _audio_corpus)(media["dir"])
    for name, path in corpus.items():
        video = media["out"] / "never.mp4"
        args = ["generate", "--image", media["image"], "--audio", media["audio"], "--out", video, "--steps", "1", "--device", "cpu"]
        args[args.index(f"--{kind}") + 1] = path
        rc, _, err = run_cli(capsys, args)
        assert rc == 1, (name, err)
        line = assert_one_error_line(err)
        assert path.name in line or "portrait" in line or "image" in line or "audio" in line, (name, line)
        assert not leftovers(media["out"]), name


# ---- the other commands: every numeric flag either refused in one line or accepted as a sane value ----

class _WorkStarted(Exception):
    """The patched first piece of real work of a command was reached: the drawn values were accepted."""


def _start_work(*_a, **_k):
    raise _WorkStarted


INTS = [-(2**70), -7, -1, 0, 1, 2, 3, 8, 64, 512, 10**9, 2**70]
FLOATS = [float("nan"), float("inf"), -float("inf"), -1.0, -1e-9, 0.0, 1e-9, 0.5, 1.0, 4.0, 30.0, 1e6, 1e300]
OTHER_FLAGS = {  # command: {flag: int or float}
    "eval-sync": {"--clips": int, "--seconds": float, "--first-seed": int, "--steps": int, "--threads": int},
    "eval-fast": {"--clips": int, "--seconds": float, "--threads": int},
    "preprocess": {"--fps": float, "--resolution": int, "--min-seconds": float, "--max-seconds": float, "--shard-size": int,
                   "--workers": int, "--detect-every": int, "--detect-size": int, "--min-face-fraction": float,
                   "--crop-ratio": float, "--scene-threshold": float, "--crf": int},
    "train": {"--max-steps": int, "seed": int, "max_steps": int, "noise_offset": float, "snr_gamma": float,
              "uncond_audio": float, "sample_steps": int, "log_every": int, "data.batch_size": int, "data.frames": int,
              "data.num_workers": int, "optim.lr": float, "optim.eps": float, "optim.max_grad_norm": float,
              "optim.gradient_accumulation_steps": int, "ema.decay": float},
    "make-demo": {"--clips": int, "--seconds": float, "--seed": int, "--threads": int, "--workers": int, "--vae-steps": int,
                  "--eval-clips": int},
}


@st.composite
def other_command(draw):
    command = draw(st.sampled_from(sorted(OTHER_FLAGS)))
    flags = draw(st.lists(st.sampled_from(sorted(OTHER_FLAGS[command])), min_size=1, max_size=2, unique=True))
    values = {f: draw(st.sampled_from(INTS if OTHER_FLAGS[command][f] is int else FLOATS)) for f in flags}
    return command, values


@settings(FUZZ, max_examples=80)
@given(drawn=other_command())
def test_other_command_flags_are_refused_in_one_line_or_sane(media, capsys, monkeypatch, drawn):
    import accelerate

    from emo_model.app import session
    from emo_model.demo import synthetic
    from emo_model.train import CONFIG_DIR
    from emo_model.train import preprocess as preprocess_module

    for target, name in ((session.Session, "load"), (preprocess_module, "list_videos"), (accelerate, "Accelerator"), (synthetic, "write_clips")):
        monkeypatch.setattr(target, name, classmethod(_start_work) if name == "load" else _start_work)
    command, values = drawn
    base = media["dir"] / "other"
    (base / "videos").mkdir(parents=True, exist_ok=True)
    (base / "dataset").mkdir(exist_ok=True)
    (base / "dataset" / "index.jsonl").write_text("")
    out = base / "made_by_the_run"
    args = {
        "eval-sync": ["eval-sync"], "eval-fast": ["eval-fast"],
        "preprocess": ["preprocess", base / "videos", "--out", out, "--config", "tiny", "--scene-detector", "none"],
        "train": ["train", "--stage", "1", "--config", CONFIG_DIR / "tiny_stage1.yaml", "--data", base / "dataset",
                  "--vae", base / "videos", "--output", out],
        "make-demo": ["make-demo", "--out", out],
    }[command]
    for flag, value in values.items():
        text = repr(value) if isinstance(value, float) else str(value)
        args += [f"{flag}={text}"] if flag.startswith("--") else ["--set", f"{flag}={text.replace('inf', '.inf')}"]
    try:
        rc, _, err = run_cli(capsys, args)
    except _WorkStarted:  # accepted: every value is a finite, non-negative amount
        assert all(math.isfinite(v) and v >= 0 for v in values.values()), values
        return
    finally:
        made = out.exists()
        if made:
            __import__("shutil").rmtree(out)
    assert rc == 1, (args, err)
    assert_one_error_line(err)
    assert not made, f"{command} made its output folder before refusing {values}"

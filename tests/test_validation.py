"""Issue 16: every user mistake gives one clear line before any work; no silent garbage; bounded work.

The command line runs in-process (``emo_model.app.cli.main``), as a user calls it; each case checks the exit
status, that stderr is one ``error:`` line without a traceback, and that no output file appears.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from comfy_harness import cli, demo_through_nodes, error_line, tiny_cli_files, write_portrait
from conftest import perturb_zero_inits, png_header_only, tiny_vae

from emo_model.app.cli import main
from emo_model.network.model import EMOModel
from emo_model import weights


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tiny_cli_files(tmp_path_factory.mktemp("validation"))


def generate_args(files, out, *extra):
    return ["generate", "--model", files["model"], "--image", files["image"], "--audio", files["audio"],
            "--out", out, "--steps", "1", "--device", "cpu", *extra]


# ---- 1. validation at the edges ---------------------------------------------------------------------

@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--steps", "0"], "--steps must be an integer from 1 to 1000, got 0"),
        (["--frames-per-clip", "0"], "--frames-per-clip must be an integer from 1 to 64, got 0"),
        (["--frames-per-clip", "1000"], "--frames-per-clip must be an integer from 1 to 64, got 1000"),
        (["--frames-per-clip", "60"], "--frames-per-clip + --motion-frames = "),
        (["--motion-frames", "-2"], "--motion-frames must be an integer from 0 to 32, got -2"),
        (["--speed", "nan"], "--speed must be a number from 0 to 3, got nan"),
        (["--cfg", "inf"], "--cfg must be a number from 0 to 30, got inf"),
        (["--fps", "0"], "--fps must be a number from 1 to 120, got 0.0"),
        (["--fps", "1e6"], "--fps must be a number from 1 to 120, got 1000000.0"),
        (["--size", "100"], "--size must be an integer from 64 to 2048, a multiple of 64, got 100"),
        (["--loudness", "nan"], "--loudness must be a number from -70 to 0"),
        (["--crf", "60"], "--crf must be an integer from 0 to 51, got 60"),
        (["--seed", "-1"], "--seed must be an integer from 0 to"),
        (["--max-frames", "3"], "frames per run; raise it with --max-frames"),
    ],
)
def test_generate_rejects_bad_values_in_one_line_and_writes_nothing(files, capsys, extra, expected):
    out = files["dir"] / "never.mp4"
    rc, _, err = cli(capsys, *generate_args(files, out, *extra))
    assert rc == 1 and expected in error_line(err)
    assert not out.exists() and not list(files["dir"].glob(".never*"))


def test_output_path_is_checked_before_any_model_work(files, capsys, monkeypatch):
    from emo_model.app import session

    monkeypatch.setattr(session.Session, "load", classmethod(lambda *a, **k: pytest.fail("the model was loaded")))
    folder = files["dir"] / "a_folder"
    folder.mkdir(exist_ok=True)
    cases = [
        (folder, "is a folder; give a file name in it"),
        (files["dir"] / "missing" / "x.mp4", "does not exist"),
        (files["dir"] / "x.avi", "--out must end in .mp4 or .webm"),
    ]
    for out, expected in cases:
        rc, _, err = cli(capsys, *generate_args(files, out))
        assert rc == 1 and expected in error_line(err)
    assert not list(files["dir"].glob("*.mp4")) and not (files["dir"] / "a_folder.mp4").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_output_folder_is_refused_up_front(files, capsys):
    folder = files["dir"] / "read_only"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    try:
        rc, _, err = cli(capsys, *generate_args(files, folder / "x.mp4"))
        assert rc == 1 and "is not writable" in error_line(err)
    finally:
        folder.chmod(0o755)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_one_line(files, capsys):
    rc, _, err = cli(capsys, *generate_args(files, files["dir"] / "never.mp4"), "--device", "cuda")
    assert rc == 1 and "--device cuda" in error_line(err) and "use --device cpu" in err
    rc, _, err = cli(capsys, *generate_args(files, files["dir"] / "never.mp4"), "--device", "tpu")
    assert rc == 1 and "--device must be auto, cpu, cuda, cuda:N or mps" in error_line(err)


def test_tiny_image_is_one_line(files, capsys):
    from PIL import Image

    Image.new("RGB", (1, 1), (200, 150, 120)).save(files["dir"] / "dot.png")
    args = generate_args(files, files["dir"] / "never.mp4")
    args[args.index("--image") + 1] = files["dir"] / "dot.png"
    rc, _, err = cli(capsys, *args)
    assert rc == 1 and "is 1x1 px; a portrait needs at least 64 px" in error_line(err)


def test_debug_shows_the_traceback(files, capsys):
    from emo_model.validation import InputError

    with pytest.raises(InputError, match="--steps"):
        main([str(a) for a in generate_args(files, files["dir"] / "never.mp4", "--steps", "0", "--debug")])


def test_fps_help_says_how_to_get_the_preset(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "1-120 (omit it for the model's preset)" in out and "--max-frames" in out


# ---- 2. numerical guards ------------------------------------------------------------------------------

def _save_with(files, name: str, change) -> Path:
    torch.manual_seed(0)
    model = perturb_zero_inits(EMOModel("tiny").eval())
    with torch.no_grad():
        change(model)
    path = files["dir"] / name
    weights.save_native(model, path, vae=tiny_vae())
    return path


def test_checkpoints_with_nan_are_refused_by_inspect_convert_and_load(files, capsys):
    def poison(model):
        model.denoising_unet.conv_in.weight[0, 0, 0, 0] = float("nan")

    path = _save_with(files, "nan.safetensors", poison)
    rc, out, _ = cli(capsys, "inspect", path)
    assert rc == 1 and "refused: nan.safetensors: denoising_unet.conv_in.weight holds 1 NaN/infinite value" in out
    out_file = files["dir"] / "nan_converted.safetensors"
    rc, _, err = cli(capsys, "convert", path, "--out", out_file)
    assert rc == 1 and "denoising_unet.conv_in.weight holds 1 NaN" in error_line(err) and not out_file.exists()
    with pytest.raises(weights.WeightsError, match="denoising_unet.conv_in.weight"):
        weights.load_emo_model(path)
    rc, _, err = cli(capsys, *generate_args({**files, "model": path}, files["dir"] / "never.mp4"))
    assert rc == 1 and "NaN" in error_line(err) and not (files["dir"] / "never.mp4").exists()


def test_integer_tensor_is_refused_by_name(files, capsys):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(files["model"]), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    key = "denoising_unet.conv_in.bias"
    tensors[key] = tensors[key].round().to(torch.int32)
    path = files["dir"] / "int.safetensors"
    save_file(tensors, str(path), metadata=meta)
    rc, out, _ = cli(capsys, "inspect", path)
    assert rc == 1 and f"{key} holds int32 values where the model needs floating point" in out
    with pytest.raises(weights.WeightsError, match=key):
        weights.load_emo_model(path)


def test_sampler_stops_at_the_first_non_finite_step_instead_of_writing_black_frames(files, capsys):
    def overflow(model):  # finite weights whose output overflows float32 (what fp16 overflow looks like)
        model.denoising_unet.conv_out.weight.fill_(3e38)

    path = _save_with(files, "overflow.safetensors", overflow)
    out = files["dir"] / "black.mp4"
    rc, _, err = cli(capsys, *generate_args({**files, "model": path}, out))
    line = error_line(err)
    assert rc == 1 and "latents became NaN or infinite at clip 1 of" in line and "step 1 of 1" in line
    assert "fp16 overflow" in line and "inspect" in line
    assert not out.exists() and not list(files["dir"].glob(".black*"))


def test_sd15_unet_is_not_called_an_echomimic_part(files, capsys):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, layers_per_block=1,
        norm_num_groups=8, attention_head_dim=4,
    )
    path = files["dir"] / "sd15_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(path))
    rc, out, err = cli(capsys, "inspect", path)
    assert rc == 1 and "EchoMimic v1 part" not in out
    assert "Stable Diffusion 1.5 UNet" in error_line(err)


# ---- 3. images ------------------------------------------------------------------------------------------

def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    from emo_model.video_io.image_io import read_portrait

    img = np.zeros((80, 120, 3), np.uint8)
    img[:, :60] = (255, 0, 0)  # left half red, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(img).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    out = read_portrait(tmp_path / "phone.jpg")
    assert out.shape == (120, 80, 3)  # upright: portrait, not landscape
    assert out[:60, :, 0].mean() > 200 and out[60:, :, 0].mean() < 50  # the red half is now on top




def test_huge_and_damaged_images_are_one_line_before_decoding(tmp_path):
    from emo_model.validation import InputError
    from emo_model.video_io.image_io import read_portrait

    with pytest.raises(InputError, match=r"is 100000x100000 \(10000 MP\), above the limit of 50 MP"):
        read_portrait(png_header_only(tmp_path / "bomb.png", 100_000, 100_000))
    write_portrait(tmp_path / "face.png")
    data = (tmp_path / "face.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or damaged"):
        read_portrait(tmp_path / "cut.png")


def test_big_jpeg_is_decoded_reduced(tmp_path):
    from PIL import Image

    from emo_model.video_io.image_io import read_portrait

    Image.new("RGB", (4000, 3000), (90, 120, 200)).save(tmp_path / "big.jpg", quality=80)
    # 12 MP is above a 5 MP limit, but the JPEG is decoded at 1/4 scale first, so it is accepted
    out = read_portrait(tmp_path / "big.jpg", max_pixels=5_000_000, work_side=1000)
    assert out.shape == (750, 1000, 3)


# ---- nodes: the same rules --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def node_run(files):
    return demo_through_nodes(files["audio"])


def sampler_args(**over):
    args = {"seed": 0, "steps": 1, "cfg": 0.0, "audio_cfg": 0.0, "sampler": "ddim", "speed": 0.7, "frames_per_clip": 0, "motion_frames": -1,
                "colour_match": "none"}
    args.update(over)
    return args


@pytest.mark.parametrize(
    "over, expected",
    [
        ({"speed": float("nan")}, "speed must be a number from 0 to 3, got nan"),
        ({"cfg": float("nan")}, "cfg must be a number from 0 to 30, got nan"),
        ({"steps": 5000}, "steps must be an integer from 1 to 1000"),
        ({"frames_per_clip": 1000}, "frames_per_clip must be an integer from 1 to 64"),
        ({"speed_curve": "0.5, inf"}, "speed_curve values are head speeds in degrees per frame and must be >= 0 and <= 3"),
    ],
)
def test_sampler_node_uses_the_shared_rules(node_run, over, expected):
    nodes, session, reference, emo_audio, _ = node_run
    with pytest.raises(ValueError, match=expected.replace("(", r"\(")):
        nodes["EMOSampler"]().sample(session, reference, emo_audio, **sampler_args(**over))


def test_audio_node_rejects_nan_fps_and_too_many_frames(node_run):
    nodes, session, _, _, audio = node_run
    with pytest.raises(ValueError, match="fps must be a number from 1 to 120, got nan"):
        nodes["EMOAudioEncode"]().encode(session, audio, float("nan"), "off")
    with pytest.raises(ValueError, match="more than the limit of 2 frames per run; raise it with max_frames"):
        nodes["EMOAudioEncode"]().encode(session, audio, 0.0, "off", max_frames=2)


def test_sampler_node_fills_one_preallocated_tensor(node_run, monkeypatch):
    nodes, session, reference, emo_audio, _ = node_run
    real_cat = torch.cat
    big = []

    def watch_cat(tensors, *a, **k):
        out = real_cat(tensors, *a, **k)
        if out.dim() == 4 and out.shape[0] == emo_audio.num_frames and out.shape[-1] == 3:
            big.append(out.shape)  # a concatenation of the whole video
        return out

    monkeypatch.setattr(torch, "cat", watch_cat)
    result = nodes["EMOSampler"]().sample(session, reference, emo_audio, **sampler_args())["result"]
    video = result[0]
    assert video.shape == (emo_audio.num_frames, 64, 64, 3) and bool(torch.isfinite(video).all())
    assert not big, f"the frames were concatenated: {big}"


def test_video_node_refuses_nan_frames(node_run, tmp_path, monkeypatch):
    nodes = node_run[0]
    monkeypatch.setenv("EMO_OUTPUT_DIR", str(tmp_path))
    frames = torch.rand(4, 64, 64, 3)
    frames[2, 5, 5, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        nodes["EMOVideoCombine"]().combine(frames, 25.0, "emo", "mp4", 19)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


# ---- the other commands: every flag on the same rules, checked before any work ----------------------

class _WorkStarted(Exception):
    """Raised by the patched entry points of real work: a value that should have been refused got through."""


def _no_work(*_a, **_k):
    raise _WorkStarted


@pytest.fixture
def no_work(monkeypatch):
    """Every command's first piece of real work raises _WorkStarted (model loads, accelerate, checkpoint reads, videos)."""
    import accelerate

    from emo_model.app import session
    from emo_model.app.commands import weights as weights_command
    from emo_model.demo import synthetic
    from emo_model.train import preprocess as preprocess_module
    from emo_model.train.trainer import Trainer

    monkeypatch.setattr(session.Session, "load", classmethod(_no_work))
    monkeypatch.setattr(weights_command, "inspect_checkpoint", _no_work)
    monkeypatch.setattr(preprocess_module, "list_videos", _no_work)
    monkeypatch.setattr(accelerate, "Accelerator", _no_work)
    monkeypatch.setattr(Trainer, "_build_model", _no_work)
    monkeypatch.setattr(synthetic, "write_clips", _no_work)


@pytest.fixture(scope="module")
def other(files):
    base = files["dir"] / "other"
    base.mkdir(exist_ok=True)
    (base / "videos").mkdir(exist_ok=True)
    (base / "dataset").mkdir(exist_ok=True)
    (base / "dataset" / "index.jsonl").write_text("")
    (base / "plain_file").write_text("x")
    (base / "existing.safetensors").write_bytes(b"")
    (base / "bad.json").write_text("{bad")
    from emo_model.train import CONFIG_DIR

    return {"dir": base, "config": CONFIG_DIR / "tiny_stage1.yaml"}


def _other_cases():
    """(id, argv builder (files, other) -> list, expected in the error line)."""
    d = lambda o, *p: str(o["dir"].joinpath(*p))
    train = lambda f, o, *x: ["train", "--stage", "1", "--config", o["config"], "--data", d(o, "dataset"),
                              "--vae", d(o, "videos"), "--output", d(o, "run_never"), *x]
    pre = lambda f, o, *x: ["preprocess", d(o, "videos"), "--out", d(o, "dataset_never"), "--config", "tiny", *x]
    demo = lambda f, o, *x: ["make-demo", "--out", d(o, "demo_never"), *x]
    return [
        # eval-sync
        ("sync clips", lambda f, o: ["eval-sync", "--clips", "-1"], "--clips must be an integer from 0 to 100000, got -1"),
        ("sync seconds", lambda f, o: ["eval-sync", "--seconds", "nan"], "--seconds must be a number from 0.2 to 600, got nan"),
        ("sync seed", lambda f, o: ["eval-sync", "--first-seed", "5"], "--first-seed must be an integer from 100000"),
        ("sync steps", lambda f, o: ["eval-sync", "--steps", "0"], "--steps must be an integer from 1 to 1000, got 0"),
        ("sync threads", lambda f, o: ["eval-sync", "--threads", "0"], "--threads must be an integer from 1 to 1024, got 0"),
        ("sync json dir", lambda f, o: ["eval-sync", "--json", d(o, "missing", "r.json")], "of --json does not exist"),
        ("sync json suffix", lambda f, o: ["eval-sync", "--json", d(o, "r.txt")], "--json must end in .json"),
        ("sync model", lambda f, o: ["eval-sync", "--model", d(o, "nope.safetensors")], "--model"),
        # eval-fast
        ("fast clips", lambda f, o: ["eval-fast", "--clips", "0"], "--clips must be an integer from 1 to 100000, got 0"),
        ("fast seconds", lambda f, o: ["eval-fast", "--seconds", "inf"], "--seconds must be a number from 0.2 to 600, got inf"),
        ("fast only", lambda f, o: ["eval-fast", "--only", "fast,nope"], "every --only row must be one of default,"),
        ("fast json", lambda f, o: ["eval-fast", "--json", d(o)], "--json"),
        ("fast threads", lambda f, o: ["eval-fast", "--threads", "-2"], "--threads must be an integer from 1 to 1024"),
        # convert
        ("convert suffix", lambda f, o: ["convert", f["model"], "--out", d(o, "x.pt")], "--out must end in .safetensors"),
        ("convert exists", lambda f, o: ["convert", f["model"], "--out", d(o, "existing.safetensors")], "exists; pass --force"),
        ("convert folder", lambda f, o: ["convert", f["model"], "--out", d(o, "videos")], "is a folder; give a file name"),
        ("convert no dir", lambda f, o: ["convert", f["model"], "--out", d(o, "missing", "x.safetensors")], "does not exist"),
        # preprocess
        ("pre input", lambda f, o: ["preprocess", d(o, "nope"), "--out", d(o, "dataset_never")], "no such folder"),
        ("pre out file", lambda f, o: pre(f, o)[:2] + ["--out", d(o, "plain_file")], "is a file, not a folder"),
        ("pre fps", lambda f, o: pre(f, o, "--fps", "nan"), "--fps must be a number from 1 to 120, got nan"),
        ("pre resolution", lambda f, o: pre(f, o, "--resolution", "100"), "--resolution must be an integer from 64 to 2048, a multiple of 64"),
        ("pre seconds", lambda f, o: pre(f, o, "--min-seconds", "5", "--max-seconds", "4"), "--min-seconds 5 is above --max-seconds 4"),
        ("pre max seconds", lambda f, o: pre(f, o, "--max-seconds", "inf"), "--max-seconds must be a number from 0.5 to 600"),
        ("pre shard", lambda f, o: pre(f, o, "--shard-size", "0"), "--shard-size must be an integer from 1"),
        ("pre workers", lambda f, o: pre(f, o, "--workers", "-1"), "--workers must be an integer from 0 to 256"),
        ("pre detector", lambda f, o: pre(f, o, "--detector", "foo"), "--detector must be one of auto, haar, lbp, yunet, mediapipe"),
        ("pre detect every", lambda f, o: pre(f, o, "--detect-every", "0"), "--detect-every must be an integer from 1"),
        ("pre detect size", lambda f, o: pre(f, o, "--detect-size", "0"), "--detect-size must be an integer from 16"),
        ("pre face fraction", lambda f, o: pre(f, o, "--min-face-fraction", "inf"), "--min-face-fraction must be a number from 0 to 1"),
        ("pre crop", lambda f, o: pre(f, o, "--crop-ratio", "0"), "--crop-ratio must be a number from 1 to 10"),
        ("pre scene", lambda f, o: pre(f, o, "--scene-threshold", "nan"), "--scene-threshold must be a number from 0 to 255"),
        ("pre crf", lambda f, o: pre(f, o, "--crf", "60"), "--crf must be an integer from 0 to 51, got 60"),
        ("pre estimator", lambda f, o: pre(f, o, "--speed-estimator", "nope"), "--speed-estimator: unknown speed estimator 'nope'"),
        ("pre config", lambda f, o: pre(f, o, "--config", "nope"), "--config 'nope': unknown config"),
        ("pre encoder", lambda f, o: pre(f, o, "--audio-encoder", d(o, "nope.pt")), "--audio-encoder"),
        # train
        ("train max steps", lambda f, o: train(f, o, "--max-steps", "0"), "--max-steps must be an integer from 1"),
        ("train lr", lambda f, o: train(f, o, "--set", "optim.lr=nan"), "training config optim.lr must be a number from 0 to 1, got nan"),
        ("train betas", lambda f, o: train(f, o, "--set", "optim.betas=[0.9, 1.0]"), "training config optim.betas[1] must be"),
        ("train batch", lambda f, o: train(f, o, "--set", "data.batch_size=0"), "data.batch_size must be an integer from 1 to 4096"),
        ("train frames", lambda f, o: train(f, o, "--set", "data.frames=1000"), "data.frames must be an integer from 1 to 64"),
        ("train dropout", lambda f, o: train(f, o, "--set", "uncond_audio=inf"), "uncond_audio must be a number from 0 to 1, got inf"),
        ("train log", lambda f, o: train(f, o, "--set", "log_every=0"), "log_every must be an integer from 1"),
        ("train scheduler", lambda f, o: train(f, o, "--set", "optim.lr_scheduler=foo"), "optim.lr_scheduler must be one of linear,"),
        ("train model", lambda f, o: train(f, o, "--set", "model=nope"), "training config model: unknown config 'nope'"),
        ("train set key", lambda f, o: train(f, o, "--set", "max_steps.x=3"), "'max_steps' is a value, not a section"),
        ("train json", lambda f, o: ["train", "--stage", "1", "--config", d(o, "bad.json")], "is not valid JSON"),
        ("train data", lambda f, o: train(f, o, "--data", d(o, "nope")), "the dataset (--data or data.dir)"),
        ("train index", lambda f, o: train(f, o, "--data", d(o, "videos")), "has no index.jsonl"),
        ("train output", lambda f, o: train(f, o, "--output", d(o, "plain_file")), "--output"),
        ("train init", lambda f, o: train(f, o, "--init", d(o, "nope.pth")), "--init"),
        ("train resume", lambda f, o: train(f, o, "--resume", d(o, "videos")), "is not a training checkpoint folder"),
        # make-demo
        ("demo clips", lambda f, o: demo(f, o, "--clips", "0"), "--clips must be an integer from 1"),
        ("demo seconds", lambda f, o: demo(f, o, "--seconds", "2"), "--seconds must be a number from 3 to 600"),
        ("demo steps", lambda f, o: demo(f, o, "--steps", "1", "0", "3"), "--steps (stage 2) must be an integer from 1"),
        ("demo set", lambda f, o: demo(f, o, "--set", "4:seed=1"), "--set needs STAGE:KEY=VALUE"),
        ("demo set value", lambda f, o: demo(f, o, "--set", "2:optim.lr=nan"), "--set 2:optim.lr=nan: training config optim.lr must be a number from 0 to 1, got nan"),
        ("demo set key", lambda f, o: demo(f, o, "--set", "3:nosuch.key=1"), "--set 3:nosuch.key=1: training config: unknown keys"),
        ("demo eval", lambda f, o: demo(f, o, "--eval-clips", "-1"), "--eval-clips must be an integer from 0"),
        ("demo out", lambda f, o: ["make-demo", "--out", d(o, "plain_file")], "is a file, not a folder"),
        # generate: the flags not covered above
        ("gen detector", lambda f, o: generate_args(f, d(o, "never.mp4"), "--face-detector", "foo"), "--face-detector must be one of"),
        ("gen vae", lambda f, o: generate_args(f, d(o, "never.mp4"), "--vae", d(o, "nope")), "--vae"),
        ("gen models dir", lambda f, o: generate_args(f, d(o, "never.mp4"), "--models-dir", d(o, "nope")), "--models-dir"),
    ]


OTHER_CASES = _other_cases()


@pytest.mark.parametrize("build, expected", [c[1:] for c in OTHER_CASES], ids=[c[0] for c in OTHER_CASES])
def test_other_commands_refuse_bad_flags_in_one_line_before_any_work(files, other, no_work, capsys, build, expected):
    rc, _, err = cli(capsys, *build(files, other))
    assert rc == 1 and expected in error_line(err)
    made = [p.name for p in other["dir"].iterdir() if "never" in p.name or p.name.startswith("x.")]
    assert not made, f"output made before the check: {made}"


def test_other_commands_show_the_traceback_with_debug(files, other, no_work):
    from emo_model.validation import InputError

    with pytest.raises(InputError, match="optim.lr"):
        main([str(a) for a in ["train", "--stage", "1", "--config", other["config"], "--set", "optim.lr=nan", "--debug"]])
    with pytest.raises(InputError, match="--fps"):
        main([str(a) for a in ["preprocess", other["dir"] / "videos", "--out", other["dir"] / "ds_never", "--fps", "nan", "--debug"]])
    with pytest.raises(InputError, match="--out"):
        main([str(a) for a in ["convert", files["model"], "--out", other["dir"] / "x.pt", "--debug"]])


# a model file that does not load (here: no VAE bundled, a plain ValueError from Session.load), per command
LOAD_FAILS = {
    "eval-sync": lambda model, f: ["eval-sync", "--model", model, "--clips", "1", "--no-speed", "--no-boundary"],
    "eval-fast": lambda model, f: ["eval-fast", "--model", model, "--clips", "1"],
    "generate": lambda model, f: ["generate", "--model", model, "--image", f["image"], "--audio", f["audio"],
                                  "--out", f["dir"] / "never.mp4", "--steps", "1", "--device", "cpu"],
}


@pytest.mark.parametrize("command", sorted(LOAD_FAILS))
def test_a_model_that_does_not_load_is_one_line_and_debug_shows_its_traceback(files, capsys, command):
    model = files["dir"] / "no_vae.safetensors"
    if not model.exists():
        torch.manual_seed(0)
        weights.save_native(EMOModel("tiny").eval(), model)
    args = [str(a) for a in LOAD_FAILS[command](model, files)]
    rc, _, err = cli(capsys, *args)
    assert rc == 1 and "needs a VAE" in error_line(err)
    with pytest.raises(ValueError, match="needs a VAE") as raised:  # not a SystemExit that hides the traceback
        main(args + ["--debug"])
    assert isinstance(raised.value.__cause__, ValueError), "the loader's own error is chained, so --debug shows where it came from"


def test_bench_flag_errors_are_one_line_and_debug_shows_the_traceback(capsys):
    from emo_model.validation import InputError

    rc, _, err = cli(capsys, "bench", "--rows", "nope")
    assert rc == 1 and "unknown benchmark row 'nope'" in error_line(err)
    with pytest.raises(InputError, match="unknown benchmark row"):
        main(["bench", "--rows", "nope", "--debug"])

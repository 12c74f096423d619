"""Issue 26 (hardening, round 3): the user's files are never replaced, node inputs are checked, files and flags
end in one line, long audio is bounded.

The command line runs in-process (``emo_model.app.cli.main``) as in tests/test_validation.py; the nodes are called
directly (ComfyUI shows their ``InputError`` on the node as one line).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from comfy_harness import cli, error_line, load_pack, tiny_cli_files
from conftest import ROOT

from emo_model import weights
from emo_model.app.cli import main
from emo_model.validation import InputError
from emo_model.weights import native


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tiny_cli_files(tmp_path_factory.mktemp("hardening"))


def generate(files, out, *extra, image=None, audio=None):
    return ["generate", "--model", files["model"], "--image", image or files["image"], "--audio", audio or files["audio"],
            "--out", out, "--steps", "1", "--device", "cpu", *extra]


# ---- 2. the user's files are never replaced ---------------------------------------------------------


@pytest.fixture(scope="module")
def clip(files):
    """A video with sound made by a first run: the input of the runs below."""
    path = files["dir"] / "clip.mp4"
    assert main([str(a) for a in generate(files, path)]) == 0
    return path


def test_generate_never_writes_over_one_of_its_inputs(files, clip, capsys):
    before = clip.read_bytes()
    link = files["dir"] / "clip_link.mp4"
    os.link(clip, link)  # a hard link: another name of the same file
    symlink = files["dir"] / "clip_symlink.mp4"
    symlink.symlink_to(clip)
    for out in (clip, link, symlink, files["dir"] / "." / "clip.mp4"):
        for force in ((), ("--force",)):  # --force replaces an existing output, never an input
            rc, _, err = cli(capsys, *generate(files, out, *force, audio=clip))
            assert rc == 1 and "is the --audio file" in error_line(err) and "replace your input" in err, (out, force)
    assert clip.read_bytes() == before and link.read_bytes() == before


def test_generate_replaces_an_existing_file_only_with_force(files, clip, capsys):
    out = files["dir"] / "mine.mp4"
    out.write_bytes(b"the user's own video")
    rc, _, err = cli(capsys, *generate(files, out))
    assert rc == 1 and "exists; pass --force to overwrite it" in error_line(err)
    assert out.read_bytes() == b"the user's own video"
    assert cli(capsys, *generate(files, out, "--force"))[0] == 0
    assert out.read_bytes()[4:8] == b"ftyp"  # now the new mp4


def test_without_out_a_rerun_writes_the_next_free_name(files, capsys, monkeypatch):
    """`make demo` twice: the first video is kept and the second goes next to it, never an error or a replaced file."""
    folder = files["dir"] / "rerun"
    folder.mkdir()
    monkeypatch.chdir(folder)
    args = [str(a) for a in generate(files, "x")]
    args = args[: args.index("--out")] + args[args.index("--out") + 2 :]  # no --out
    (folder / "emo_output.mp4").write_bytes(b"the first run's video")
    (folder / "emo_output_2.mp4").write_bytes(b"the second run's video")
    rc, _, err = cli(capsys, *args)
    assert rc == 0 and "emo_output.mp4 exists and is kept; writing emo_output_3.mp4" in err, err
    assert (folder / "emo_output.mp4").read_bytes() == b"the first run's video"
    assert (folder / "emo_output_2.mp4").read_bytes() == b"the second run's video"
    assert (folder / "emo_output_3.mp4").read_bytes()[4:8] == b"ftyp"
    rc, _, err = cli(capsys, *args, "--force")  # asked: the default name is replaced
    assert rc == 0 and (folder / "emo_output.mp4").read_bytes()[4:8] == b"ftyp" and not (folder / "emo_output_4.mp4").exists()


def test_a_failed_forced_run_leaves_the_existing_file_as_it_was(files, capsys, monkeypatch):
    from emo_model.sampling.pipeline import EMOPipeline

    out = files["dir"] / "kept.mp4"
    out.write_bytes(b"the user's own video")

    def failing(self, *args, sink, **kwargs):
        sink(torch.zeros(4, 64, 64, 3))  # some frames reach the writer's hidden partial file first
        raise InputError("boom in the middle of the run")

    monkeypatch.setattr(EMOPipeline, "generate", failing)
    rc, _, err = cli(capsys, *generate(files, out, "--force"))
    assert rc == 1 and "boom in the middle" in err
    assert out.read_bytes() == b"the user's own video"
    assert sorted(p.name for p in files["dir"].iterdir() if ".partial" in p.name) == []


# ---- 4. files and flags -------------------------------------------------------------------------------


def test_a_folder_or_a_fifo_as_input_is_named_as_such(files, capsys):
    folder = files["dir"] / "a_folder"
    folder.mkdir(exist_ok=True)
    fifo = files["dir"] / "a_fifo.wav"
    if not fifo.exists():
        os.mkfifo(fifo)
    out = files["dir"] / "never.mp4"
    cases = [
        (generate(files, out, image=folder), "--image", "is a folder; give a file"),
        (generate(files, out, audio=folder), "--audio", "is a folder; give a file"),
        (generate(files, out, audio=fifo), "--audio", "is not a regular file (a pipe, device or socket)"),
        (generate(files, out, image=fifo), "--image", "is not a regular file"),
        (["generate", "--model", fifo, "--image", files["image"], "--audio", files["audio"], "--out", out], "--model", "not a regular"),
        (["inspect", fifo], "PATH", "is not a regular file"),
    ]
    for args, flag, expected in cases:  # (a FIFO that is read waits forever: refused before anyone opens it)
        rc, _, err = cli(capsys, *args)
        line = error_line(err)
        assert rc == 1 and flag in line and expected in line and "no such" not in line, line
    assert not out.exists()


def test_the_audio_and_video_readers_name_a_folder_and_a_fifo(files):
    from emo_model.audio.signal import AudioError, load_audio
    from emo_model.video_io import VideoError, probe_video

    fifo = files["dir"] / "reader_fifo.wav"
    if not fifo.exists():
        os.mkfifo(fifo)
    for path, expected in ((files["dir"], "is a folder"), (fifo, "not a regular file"), (files["dir"] / "nope.wav", "not found")):
        with pytest.raises(AudioError, match=expected):
            load_audio(path)
    with pytest.raises(VideoError, match="is a folder"):
        probe_video(files["dir"])
    with pytest.raises(VideoError, match="not a regular file"):
        probe_video(fifo)


@pytest.mark.parametrize("name", ["line\nbreak.mp4", "tab\t.mp4", "cr\r.mp4"])
def test_an_output_path_with_a_control_character_is_refused(files, capsys, name):
    out = files["dir"] / name
    rc, _, err = cli(capsys, *generate(files, out))
    assert rc == 1 and "contains the control character" in error_line(err)
    rc, _, err = cli(capsys, "convert", files["model"], "--out", files["dir"] / name.replace(".mp4", ".safetensors"))
    assert rc == 1 and "contains the control character" in error_line(err)
    assert not out.exists() and not [p for p in files["dir"].iterdir() if any(c in p.name for c in "\n\r\t")]


def test_inspect_and_convert_read_fp8_checkpoints(files, capsys):
    model = weights.load_emo_model(files["model"])
    fp8 = files["dir"] / "fp8.safetensors"
    weights.save_native(model, fp8, dtype=torch.float8_e4m3fn)
    rc, out, err = cli(capsys, "inspect", fp8)
    assert rc == 0 and "float8_e4m3fn" in out and "status      complete" in out, err
    converted = files["dir"] / "from_fp8.safetensors"
    rc, _, err = cli(capsys, "convert", fp8, "--out", converted, "--dtype", "fp16")
    assert rc == 0, err
    assert weights.load_emo_model(converted).dtype == torch.float16


def test_inspect_finds_nan_in_fp8_tensors(files, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    model = weights.load_emo_model(files["model"])
    fp8 = files["dir"] / "fp8_nan.safetensors"
    weights.save_native(model, fp8, dtype=torch.float8_e5m2)
    tensors = load_file(fp8)
    with safe_open(str(fp8), "pt") as f:
        metadata = f.metadata()
    key = next(k for k, t in tensors.items() if t.is_floating_point() and t.numel() > 8)
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[3] = float("nan")
    save_file(tensors, str(fp8), metadata=metadata)
    rc, out, _ = cli(capsys, "inspect", fp8)
    assert rc == 1 and "NaN/infinite value" in out and key.split(".")[-1] in out


@pytest.mark.parametrize(
    "failure",
    [lambda: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "safetensor"],
    ids=["OSError ENOSPC", "SafetensorError"],
)
def test_convert_onto_a_full_disk_is_one_line_and_leaves_no_file(files, capsys, monkeypatch, failure):
    import safetensors.torch
    from safetensors import SafetensorError

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:  # a first part reaches the disk, then the disk is full
            f.write(b"\0" * 4096)
        if failure == "safetensor":
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')
        raise failure()

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    monkeypatch.setattr(native, "save_file", full_disk)  # the native format's writer
    out = files["dir"] / "full" / "converted.safetensors"
    out.parent.mkdir(exist_ok=True)
    existing = files["dir"] / "full" / "existing.safetensors"
    existing.write_bytes(b"the user's own checkpoint")
    for target, extra in ((out, ()), (existing, ("--force",))):
        rc, _, err = cli(capsys, "convert", files["model"], "--out", target, *extra)
        line = error_line(err)
        assert rc == 1 and "cannot write --out" in line and "No space left on device" in line and "free " in line, line
    assert sorted(p.name for p in out.parent.iterdir()) == ["existing.safetensors"]  # no partial file, nothing half-written
    assert existing.read_bytes() == b"the user's own checkpoint"


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_train_with_a_config_that_is_not_utf8_is_one_line(files, capsys, suffix):
    config = files["dir"] / f"latin1{suffix}"
    config.write_bytes("# Übung\nmax_steps: 3\n".encode("latin-1") if suffix == ".yaml" else b'{"name": "caf\xe9"}')
    rc, _, err = cli(capsys, "train", "--stage", "1", "--config", config)
    assert rc == 1 and "is not UTF-8 text (byte 0x" in error_line(err) and "line 1" in err and "save it as UTF-8" in err
    folder = files["dir"] / "config_folder.yaml"
    folder.mkdir(exist_ok=True)
    rc, _, err = cli(capsys, "train", "--stage", "1", "--config", folder)
    assert rc == 1 and "folder" in error_line(err) and "not found" not in err


@pytest.mark.parametrize("size", ["0", "100", "-64", "4096"])
def test_bench_size_is_checked_on_the_cpu_too(capsys, monkeypatch, size):
    from emo_model.app.commands import bench

    monkeypatch.setattr(bench, "_spawn", lambda spec: pytest.fail("a benchmark row ran"))
    rc, out, err = cli(capsys, "bench", "--device", "cpu", "--rows", "tiny,emo", "--config", "tiny", "--size", size)
    assert rc == 1 and f"--size must be an integer from 64 to 2048, a multiple of 64, got {size}" in error_line(err)
    assert out == ""  # refused before the table's header


# ---- 3. node inputs -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node_run(files):
    from comfy_harness import demo_through_nodes

    return demo_through_nodes(files["audio"])


def one_line_input_error(excinfo) -> str:
    """The nodes' error: the pack's InputError (a ValueError; ComfyUI shows its message on the node), one line."""
    exc = excinfo.value
    assert type(exc).__name__ == "InputError" and isinstance(exc, ValueError), repr(exc)
    assert "\n" not in str(exc) and str(exc).strip(), repr(exc)
    return str(exc)


def written(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def combine(node_run, tmp_path, monkeypatch):
    monkeypatch.setenv("EMO_OUTPUT_DIR", str(tmp_path))
    node = node_run[0]["EMOVideoCombine"]()
    return lambda images, prefix="emo", audio=None: node.combine(images, 25.0, prefix, "mp4", 0, audio=audio)


BAD_IMAGES = [
    (torch.rand(0, 64, 64, 3), "empty batch (0 images)"),
    (torch.rand(2, 0, 64, 3), "(empty)"),
    (torch.empty(2, 64, 64, 3, device="meta"), "'meta' device"),
    (torch.rand(2, 64, 64, 3) * 255, "look like 0-255 values: divide them by 255"),
    (torch.rand(2, 64, 64, 3).double() * 255, "look like 0-255 values"),
    (torch.rand(2, 64, 64, 3) * 4 - 2, "values run from"),
    (torch.full((2, 64, 64, 3), float("inf")), "NaN or infinite"),
    (torch.randint(0, 255, (2, 64, 64, 3), dtype=torch.int32), "int32 values"),
    (torch.zeros(2, 64, 64, 3, dtype=torch.bool), "bool values"),
    (torch.rand(2, 64, 64, 5), "5 colour channels"),
    (torch.rand(64, 64), "shaped [batch, height, width, 3]"),
]


@pytest.mark.parametrize("images, expected", BAD_IMAGES, ids=[e for _, e in BAD_IMAGES])
def test_video_combine_refuses_images_that_cannot_make_a_video(combine, tmp_path, images, expected):
    with pytest.raises(ValueError) as excinfo:
        combine(images)
    assert expected in one_line_input_error(excinfo)
    assert written(tmp_path) == []


@pytest.mark.parametrize("images, expected", [b for b in BAD_IMAGES if b[0].dim() == 4 and b[0].shape[-1] != 5],
                         ids=[e for i, e in BAD_IMAGES if i.dim() == 4 and i.shape[-1] != 5])
def test_reference_encode_refuses_the_same_images(node_run, images, expected):
    nodes, session = node_run[:2]
    with pytest.raises(ValueError) as excinfo:
        nodes["EMOReferenceEncode"]().encode(session, images, 0)
    assert expected in one_line_input_error(excinfo)


FACE_ARGS = {"size": 64, "expand": 1.2, "crop": "full", "crop_ratio": 2.0, "detector": "haar", "fallback": "center", "face_index": 0,
             "union": False}


@pytest.mark.parametrize("images, expected", [b for b in BAD_IMAGES if b[0].dim() == 4 and b[0].shape[-1] != 5],
                         ids=[e for i, e in BAD_IMAGES if i.dim() == 4 and i.shape[-1] != 5])
def test_face_mask_refuses_the_same_images(node_run, images, expected):
    with pytest.raises(ValueError) as excinfo:
        node_run[0]["EMOFaceMask"]().run(images, **FACE_ARGS)
    assert expected in one_line_input_error(excinfo)


def test_face_mask_reads_uint8_as_0_to_255():
    from comfy_harness import node_result

    node = load_pack().NODE_CLASS_MAPPINGS["EMOFaceMask"]()
    floats = torch.rand(1, 64, 64, 3)
    as_uint8 = (floats * 255).round().to(torch.uint8)
    _, from_uint8 = node_result(node.run(as_uint8, **FACE_ARGS))[:2]
    _, from_float = node_result(node.run(as_uint8.float() / 255, **FACE_ARGS))[:2]
    assert torch.allclose(from_uint8, from_float) and from_uint8.mean() < 0.9  # not clamped to white


def test_uint8_images_are_read_as_0_to_255_not_clamped(node_run, combine, tmp_path):
    from emo_model.video_io import read_video_frames

    nodes, session = node_run[:2]
    floats = torch.rand(1, 64, 64, 3)
    as_uint8 = (floats * 255).round().to(torch.uint8)
    exact = as_uint8.float() / 255
    state = lambda image: nodes["EMOReferenceEncode"]().encode(session, image, 0)["result"][0].state
    assert torch.equal(state(as_uint8).latent, state(exact).latent)
    assert not torch.equal(state(as_uint8).latent, state(torch.ones(1, 64, 64, 3)).latent)  # not clamped to white
    # the same frames as uint8 or as floats make the same video; grey [.., 1] and RGBA [.., 4] too
    paths = [combine(frames)["result"][1] for frames in (as_uint8.expand(3, -1, -1, -1), exact.expand(3, -1, -1, -1))]
    decoded = [read_video_frames(p).astype(int) for p in paths]
    # (random pixels lose detail to 4:2:0 chroma, so compare the brightness: clamped 0-255 values would be all white)
    assert np.abs(decoded[0] - decoded[1]).max() <= 1 and abs(decoded[0].mean() - float(as_uint8.float().mean())) < 3
    assert combine(torch.cat([exact, torch.ones(1, 64, 64, 1)], -1).expand(2, -1, -1, -1))["result"][1]
    assert combine(exact[..., :1].expand(2, -1, -1, -1))["result"][1]


def test_resampling_overshoot_is_clamped_not_refused(combine):
    frames = torch.rand(2, 64, 64, 3) * 1.2 - 0.1  # ringing of a lanczos upscaler
    assert Path(combine(frames)["result"][1]).is_file()


@pytest.mark.parametrize(
    "waveform, rate, expected",
    [
        (torch.tensor([[[0.0, float("nan"), 0.1] * 1000]]), 16000, "NaN or infinite samples"),
        (torch.tensor([[[0.0, float("inf")] * 1000]]), 16000, "NaN or infinite samples"),
        (torch.empty(1, 1, 1000, device="meta"), 16000, "'meta' device"),
        (torch.zeros(0, 1, 1000), 16000, "holds no clip"),
        (torch.zeros(1, 1, 1000, dtype=torch.int16), 16000, "int16 samples"),
        (torch.zeros(1000), 16000, "[batch, channels, samples]"),
        (torch.zeros(1, 1, 1000), 0, "sample_rate must be a whole number of Hz"),
        (torch.zeros(1, 1, 1000), 44100.5, "sample_rate must be a whole number of Hz"),
    ],
)
def test_video_combine_and_audio_encode_refuse_bad_audio(node_run, combine, tmp_path, waveform, rate, expected):
    nodes, session = node_run[:2]
    audio = {"waveform": waveform, "sample_rate": rate}
    with pytest.raises(ValueError) as excinfo:
        combine(torch.rand(2, 64, 64, 3), audio=audio)
    assert expected in one_line_input_error(excinfo)
    assert written(tmp_path) == []
    with pytest.raises(ValueError) as excinfo:
        nodes["EMOAudioEncode"]().encode(session, audio, 0.0, "off")
    assert expected in one_line_input_error(excinfo)


def test_the_writer_refuses_nan_audio_itself():
    from emo_model.video_io import VideoError, VideoWriter

    with pytest.raises(VideoError, match="NaN or infinite samples"):
        VideoWriter(Path("never.mp4"), 25, audio={"waveform": torch.tensor([[[0.0, float("nan")]]]), "sample_rate": 16000})


@pytest.mark.parametrize(
    "prefix, expected",
    [("", "names no file"), (".", "names no file"), ("./", "names no file"), ("  ", "names no file"), ("sub/..", "outside the output folder"),
     ("../x", "outside the output folder"), ("a/../../x", "outside the output folder"), ("/tmp/x", "absolute path"), ("a\nb", "contains \\n"), ("a\x00b", "contains")],
)
def test_video_combine_refuses_prefixes_that_name_no_file(combine, tmp_path, prefix, expected):
    with pytest.raises(ValueError) as excinfo:
        combine(torch.rand(2, 64, 64, 3), prefix=prefix)
    assert expected in one_line_input_error(excinfo)
    assert written(tmp_path) == []


def test_a_prefix_ending_in_a_slash_names_a_folder(combine, tmp_path):
    result = combine(torch.rand(2, 64, 64, 3), prefix="EMO/")
    assert written(tmp_path) == ["EMO/emo_00001_.mp4"]
    preview = next(v for k, v in result["ui"].items() if k in ("images", "emo_video"))[0]  # (the key the node's preview has)
    assert preview["subfolder"] == "EMO" and preview["filename"] == "emo_00001_.mp4"
    combine(torch.rand(2, 64, 64, 3), prefix="./EMO/./clip")
    assert written(tmp_path) == ["EMO/clip_00001_.mp4", "EMO/emo_00001_.mp4"]


def test_a_folder_prefix_inside_comfyui_too(node_run, tmp_path, monkeypatch):
    """In ComfyUI the folder comes from folder_paths.get_save_image_path, which normalises the prefix first (a trailing
    slash is dropped: 'EMO/' alone would be the file stem 'EMO' in the output root): the node passes 'EMO/emo'."""
    import types

    pack_comfy = sys.modules[node_run[0]["EMOVideoCombine"].__module__.rsplit(".", 1)[0] + "._comfy"]
    asked = []

    def get_save_image_path(prefix, output_dir, width=0, height=0):  # the stand-in: core's split of a normalised prefix
        asked.append(prefix)
        subfolder, name = os.path.split(os.path.normpath(prefix))
        folder = os.path.join(output_dir, subfolder)
        os.makedirs(folder, exist_ok=True)
        return folder, name, 1, subfolder, prefix

    stub = types.SimpleNamespace(get_output_directory=lambda: str(tmp_path), get_save_image_path=get_save_image_path)
    monkeypatch.setattr(pack_comfy, "folder_paths", stub)
    node_run[0]["EMOVideoCombine"]().combine(torch.rand(2, 64, 64, 3), 25.0, "EMO/", "mp4", 0)
    assert asked == ["EMO/emo"] and written(tmp_path) == ["EMO/emo_00001_.mp4"]


@pytest.mark.parametrize(
    "mask, expected",
    [
        (torch.empty(64, 64, device="meta"), "'meta' device"),
        (torch.full((64, 64), float("nan")), "NaN or infinite"),
        (torch.rand(64, 64) * 255, "values run from"),
        (torch.rand(2, 3, 64, 64), "MASK shaped"),
        (torch.rand(0, 64, 64), "not empty"),
        (torch.zeros(64, 64, dtype=torch.int64), "int64 values"),
    ],
)
def test_sampler_refuses_a_bad_face_mask(node_run, mask, expected):
    nodes, session, reference, emo_audio, _ = node_run
    args = {"seed": 0, "steps": 1, "cfg": 0.0, "audio_cfg": 0.0, "sampler": "ddim", "speed": 0.7, "frames_per_clip": 0,
            "motion_frames": -1, "colour_match": "none"}
    with pytest.raises(ValueError) as excinfo:
        nodes["EMOSampler"]().sample(session, reference, emo_audio, face_mask=mask, **args)
    assert expected in one_line_input_error(excinfo)


# ---- 1. long audio is bounded -----------------------------------------------------------------------------


def sparse_wav(path: Path, seconds: float, rate: int = 16000, channels: int = 1) -> Path:
    """A real, hours-long 16-bit WAV of silence that takes no disk space: its header, then a hole (a sparse file)."""
    import struct

    data = round(seconds * rate) * channels * 2
    header = b"RIFF" + struct.pack("<I", 36 + data) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * channels * 2,
                                                                                   channels * 2, 16) + b"data" + struct.pack("<I", data)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + data)
    return path


class Decoded:
    """Counts the audio frames the decoder hands out (monkeypatched over emo_model.audio.signal._frame_to_float)."""

    def __init__(self, monkeypatch):
        from emo_model.audio import signal as audio

        self.samples, real = 0, audio._frame_to_float

        def counting(frame):
            self.samples += frame.samples
            return real(frame)

        monkeypatch.setattr(audio, "_frame_to_float", counting)


def test_the_recorded_length_refuses_before_any_decoding(files, monkeypatch, tmp_path):
    from emo_model.app.session import Session

    session = Session.load(str(files["model"]), device="cpu")
    decoded = Decoded(monkeypatch)
    long = sparse_wav(tmp_path / "five_hours.wav", 5 * 3600, 48000, 2)  # 6.9 GB of float32 if it were decoded whole
    with pytest.raises(InputError, match=r"makes 450000 frames \(18000.0 s at 25 fps, by the length its file records\)"):
        session.encode_audio(str(long))
    assert decoded.samples == 0
    features = session.encode_audio(str(sparse_wav(tmp_path / "short.wav", 2.0)))  # within the limit: decoded as before
    assert features.num_frames == 50 and decoded.samples == 32000


def test_without_a_recorded_length_decoding_stops_at_the_limit(files, monkeypatch, tmp_path):
    from emo_model.app.session import Session
    from emo_model.audio import signal as audio

    session = Session.load(str(files["model"]), device="cpu")
    monkeypatch.setattr(audio, "declared_samples", lambda path: None)  # as a stream that records no length
    decoded = Decoded(monkeypatch)
    long = sparse_wav(tmp_path / "one_hour.wav", 3600, 16000)
    with pytest.raises(InputError, match=r"runs past the limit of 25 frames per run \(1.0 s at 25 fps; decoding stopped there\)"):
        session.encode_audio(str(long), max_frames=25)
    assert 16000 < decoded.samples <= 16000 + 8192  # one second and at most one more decoder frame, not the hour


def test_the_command_line_refuses_a_long_file_in_one_line(files, capsys, tmp_path):
    long = sparse_wav(tmp_path / "long.wav", 3 * 3600, 44100, 2)
    rc, _, err = cli(capsys, *generate(files, tmp_path / "never.mp4", audio=long))
    assert rc == 1 and "by the length its file records" in error_line(err) and "--max-frames 270000" in err
    assert not (tmp_path / "never.mp4").exists()


def test_recorded_lengths_of_compressed_formats(tmp_path):
    import av

    from emo_model.audio.signal import declared_samples

    rate, seconds = 16000, 3.0
    wave = (0.3 * np.sin(np.arange(int(rate * seconds)) / rate * 2 * np.pi * 220)).astype(np.float32)
    for name, codec, fmt in (("a.flac", "flac", None), ("a.mp3", "libmp3lame", None), ("a.m4a", "aac", "ipod")):
        with av.open(str(tmp_path / name), "w", format=fmt) as container:
            stream = container.add_stream(codec, rate=rate, layout="mono")
            frame = av.AudioFrame.from_ndarray(wave[None], format="flt", layout="mono")
            frame.sample_rate = rate
            resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=rate)
            for piece in resampler.resample(frame):
                container.mux(stream.encode(piece))
            container.mux(stream.encode(None))
        samples, got_rate = declared_samples(tmp_path / name)
        assert got_rate == rate and abs(samples - wave.size) <= 0.05 * wave.size, (name, samples)  # encoder padding aside
    assert declared_samples(tmp_path / "nope.wav") is None


MEMORY_SCRIPT = r"""
import resource, sys
import torch
from emo_model.audio import signal as audio
from emo_model.audio.signal import AudioError, load_audio

def refuse_past(seconds):
    def check(samples, rate, how):
        if samples > seconds * rate:
            raise AudioError(f"too long ({how})")
    return check

before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for declared in (True, False):
    if not declared:
        audio.declared_samples = lambda path: None
    try:
        load_audio(sys.argv[1], check_length=refuse_past(10.0))
    except AudioError as exc:
        print(exc)
print("growth_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_peak_memory_does_not_grow_with_the_audio_length(tmp_path):
    """An hour of 48 kHz stereo (691 MB as 16-bit, 1.4 GB as float32) refused at a 10 s limit, with and without the length
    its file records: the process grows by the 10 s (3.8 MB as float32) and the decoder's buffers, far below the hour.
    The margin (150 MB) is generous: the whole hour decoded would be 1.4 GB or more."""
    long = sparse_wav(tmp_path / "hour.wav", 3600, 48000, 2)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(long)], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert lines[:2] == ["too long (declared)", "too long (decoding)"], res.stdout
    assert int(lines[2].split()[1]) < 150_000, res.stdout

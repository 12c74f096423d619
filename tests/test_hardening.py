"""Issue 26 (hardening, round 3): the user's files are never replaced, node inputs are checked, files and flags
end in one line, long audio is bounded.

The command line runs in-process (``emo_model.cli.main``) as in tests/test_validation.py; the nodes are called
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
from comfy_harness import load_pack, write_portrait, write_speech
from conftest import ROOT, perturb_zero_inits, tiny_vae

from emo_model import weights
from emo_model.cli import main
from emo_model.model import EMOModel
from emo_model.validation import InputError


def cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def error_line(err: str) -> str:
    """The one error line of a failed run (progress-bar noise on stderr aside)."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and not line.startswith("EMO:")]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    base = tmp_path_factory.mktemp("hardening")
    torch.manual_seed(0)
    model = perturb_zero_inits(EMOModel("tiny").eval())
    weights.save_native(model, base / "tiny.safetensors", vae=tiny_vae())
    return {
        "dir": base,
        "model": base / "tiny.safetensors",
        "image": write_portrait(base / "face.png", size=96),
        "audio": write_speech(base / "speech.wav", seconds=0.4),
    }


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


def test_a_failed_forced_run_leaves_the_existing_file_as_it_was(files, capsys, monkeypatch):
    from emo_model.pipeline import EMOPipeline

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
    from emo_model.audio import AudioError, load_audio
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
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

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
    monkeypatch.setattr(weights, "save_file", full_disk)
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
    from emo_model.commands import bench

    monkeypatch.setattr(bench, "_spawn", lambda spec: pytest.fail("a benchmark row ran"))
    rc, out, err = cli(capsys, "bench", "--device", "cpu", "--rows", "tiny,emo", "--config", "tiny", "--size", size)
    assert rc == 1 and f"--size must be an integer from 64 to 2048, a multiple of 64, got {size}" in error_line(err)
    assert out == ""  # refused before the table's header

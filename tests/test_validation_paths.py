"""validation.py beyond the rule table: path, folder, device, frame-limit, settings and tensor checks, word for word."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from emo_model import validation
from emo_model.validation import GenerationError, InputError

LIKELY = (
    "likely causes: fp16 overflow (load the model in fp32 or bf16: --dtype fp32, or dtype in Load EMO Model), or "
    "damaged weights (check the checkpoint with `python -m emo_model inspect`)"
)


def refused(call, *args, **kwargs) -> str:
    """The one-line message of the InputError that ``call`` raises."""
    with pytest.raises(InputError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def limit_access(monkeypatch, path, allowed: int) -> None:
    """os.access says ``path`` allows only the ``allowed`` bits (tests run as root here, and root may write anywhere,
    so a real chmod cannot make a folder unwritable); every other path asks the real os.access."""
    real = os.access

    def access(p, mode):
        if Path(p) == Path(path):
            return mode & ~allowed == 0
        return real(p, mode)

    monkeypatch.setattr(os, "access", access)


# ---- check_output_folder (the missing-ancestor test comes first: a mutant that walks up past existing folders
# never stops, and this one fails it at once) ----------------------------------------------------------------------

def test_output_folder_several_levels_missing_is_accepted_and_not_created(tmp_path):
    out = tmp_path / "a" / "b" / "c"
    assert validation.check_output_folder(str(out), label="--output") == out
    assert not (tmp_path / "a").exists()


def test_output_folder_under_a_file_is_refused_naming_the_file(tmp_path):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" / "b" / "c"
    assert refused(validation.check_output_folder, out, label="--output") == (
        f"--output {str(out)!r} cannot be created: {str(tmp_path / 'f')!r} is a file; pick another folder"
    )


def test_output_folder_missing_under_an_unwritable_or_unsearchable_folder_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "new"
    assert validation.check_output_folder(out, label="--output") == out
    expected = f"--output {str(out)!r} cannot be created: {str(tmp_path)!r} is not writable; pick another folder"
    for allowed in (os.R_OK | os.X_OK, os.W_OK):
        limit_access(monkeypatch, tmp_path, allowed)
        assert refused(validation.check_output_folder, out, label="--output") == expected
    limit_access(monkeypatch, tmp_path, os.W_OK | os.X_OK)
    assert validation.check_output_folder(out, label="--output") == out


def test_output_folder_existing(tmp_path, monkeypatch):
    folder = tmp_path / "d"
    folder.mkdir()
    assert validation.check_output_folder(str(folder), label="--out") == folder
    (tmp_path / "file").write_text("x")
    assert refused(validation.check_output_folder, tmp_path / "file", label="--out") == (
        f"--out {str(tmp_path / 'file')!r} is a file, not a folder; give a folder (it is created if missing)"
    )
    for allowed in (os.R_OK | os.X_OK, os.W_OK):
        limit_access(monkeypatch, folder, allowed)
        assert refused(validation.check_output_folder, folder, label="--out") == (
            f"--out {str(folder)!r} is not writable; pick another folder"
        )


def test_output_folder_with_a_control_character_is_refused(tmp_path):
    path = str(tmp_path / "a\nb")
    assert refused(validation.check_output_folder, path, label="--output") == (
        f"--output {path!r} contains the control character '\\n' (a pasted line break?); give a plain folder name"
    )


# ---- control characters: the range ends -----------------------------------------------------------------------------

@pytest.mark.parametrize("ch, shown", [("\x00", "'\\x00'"), ("\x1f", "'\\x1f'"), ("\x7f", "'\\x7f'"), ("\t", "'\\t'")])
def test_control_characters_are_refused_by_name(tmp_path, ch, shown):
    path = str(tmp_path / f"a{ch}b.mp4")
    assert refused(validation.check_output_path, path) == (
        f"--out {path!r} contains the control character {shown} (a pasted line break?); give a plain file name"
    )


@pytest.mark.parametrize("name", ["a b.mp4", "a\x80b.mp4", "a~b.mp4", "é.mp4"])
def test_space_and_characters_above_127_are_plain(tmp_path, name):
    assert validation.check_output_path(tmp_path / name) == (tmp_path / name, "mp4")


# ---- check_output_file / check_output_path ----------------------------------------------------------------------------

def test_output_file_refusals_word_for_word(tmp_path, monkeypatch):
    json = dict(label="--json", suffixes=(".json", ".txt"))
    folder = tmp_path / "d"
    folder.mkdir()
    assert refused(validation.check_output_file, folder, **json) == (
        f"--json {str(folder)!r} is a folder; give a file name in it, e.g. {str(folder / 'out.json')!r}"
    )
    assert refused(validation.check_output_file, folder, example="r.txt", **json) == (
        f"--json {str(folder)!r} is a folder; give a file name in it, e.g. {str(folder / 'r.txt')!r}"
    )
    csv = tmp_path / "r.csv"
    assert refused(validation.check_output_file, csv, **json) == (
        f"--json must end in .json or .txt, got {str(csv)!r}; e.g. {str(tmp_path / 'r.json')!r}"
    )
    missing = tmp_path / "missing" / "r.json"
    assert refused(validation.check_output_file, missing, **json) == (
        f"the output folder {str(tmp_path / 'missing')!r} of --json does not exist; create it or pick another path"
    )
    for allowed in (os.R_OK | os.X_OK, os.W_OK):
        limit_access(monkeypatch, folder, allowed)
        assert refused(validation.check_output_file, folder / "r.json", **json) == (
            f"the output folder {str(folder)!r} of --json is not writable; pick another path"
        )


def test_output_file_accepted_cases(tmp_path, monkeypatch):
    json = dict(label="--json", suffixes=(".json", ".txt"))
    assert validation.check_output_file(str(tmp_path / "r.json"), **json) == tmp_path / "r.json"
    assert validation.check_output_file(tmp_path / "R.TXT", **json) == tmp_path / "R.TXT"  # the suffix in capitals
    assert validation.check_output_file(tmp_path / "new.json", overwrite=False, **json) == tmp_path / "new.json"
    existing = tmp_path / "old.json"
    existing.write_text("{}")
    assert validation.check_output_file(existing, **json) == existing  # overwrite is the default
    monkeypatch.chdir(tmp_path)  # a bare file name: its folder is the working folder
    assert validation.check_output_file("bare.json", **json) == Path("bare.json")
    limit_access(monkeypatch, ".", os.R_OK | os.X_OK)
    assert refused(validation.check_output_file, "bare.json", **json) == (
        "the output folder '.' of --json is not writable; pick another path"
    )


def test_output_file_existing_refusals(tmp_path, monkeypatch):
    json = dict(label="--json", suffixes=(".json",))
    existing = tmp_path / "old.json"
    existing.write_text("{}")
    assert refused(validation.check_output_file, existing, overwrite=False, **json) == (
        f"--json {str(existing)!r} exists; pick another path"
    )
    assert refused(validation.check_output_file, existing, overwrite=False, overwrite_flag="--force", **json) == (
        f"--json {str(existing)!r} exists; pass --force to overwrite it or pick another path"
    )
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    assert refused(validation.check_output_file, fifo, **json) == (
        f"--json {str(fifo)!r} exists and is not a regular file (a pipe, device or socket); pick another path"
    )
    limit_access(monkeypatch, existing, os.R_OK)
    assert refused(validation.check_output_file, existing, **json) == (
        f"--json {str(existing)!r} exists and is read-only; pick another path"
    )


def test_output_path_formats_and_refusals(tmp_path):
    assert validation.check_output_path(tmp_path / "x.mp4") == (tmp_path / "x.mp4", "mp4")
    assert validation.check_output_path(str(tmp_path / "x.WEBM")) == (tmp_path / "x.WEBM", "webm")
    existing = tmp_path / "old.mp4"
    existing.write_bytes(b"")
    assert validation.check_output_path(existing) == (existing, "mp4")  # overwrite is the default
    assert refused(validation.check_output_path, tmp_path) == (
        f"--out {str(tmp_path)!r} is a folder; give a file name in it, e.g. {str(tmp_path / 'emo.mp4')!r}"
    )
    assert refused(validation.check_output_path, tmp_path / "x.avi", label="-o") == (
        f"-o must end in .mp4 or .webm, got {str(tmp_path / 'x.avi')!r}; e.g. {str(tmp_path / 'x.mp4')!r}"
    )
    assert refused(validation.check_output_path, existing, overwrite=False, overwrite_flag="--force") == (
        f"--out {str(existing)!r} exists; pass --force to overwrite it or pick another path"
    )
    assert refused(validation.check_output_path, existing, label="out", overwrite=False) == (
        f"out {str(existing)!r} exists; pick another path"
    )


# ---- check_not_an_input --------------------------------------------------------------------------------------------------

def test_output_that_is_an_input_is_refused_by_any_name(tmp_path):
    audio = tmp_path / "voice.wav"
    audio.write_bytes(b"RIFF")
    link = tmp_path / "link.mp4"
    os.link(audio, link)
    inputs = {"--image": tmp_path / "missing.png", "--video": None, "--audio": str(audio)}  # the first two are skipped
    assert refused(validation.check_not_an_input, link, inputs) == (
        f"--out {str(link)!r} is the --audio file ({str(audio)!r}); writing it would replace your input; pick another path"
    )
    assert refused(validation.check_not_an_input, audio, {"audio": audio}, label="out") == (
        f"out {str(audio)!r} is the audio file ({str(audio)!r}); writing it would replace your input; pick another path"
    )
    other = tmp_path / "other.mp4"
    other.write_bytes(b"")
    assert validation.check_not_an_input(other, inputs) is None
    assert validation.check_not_an_input(tmp_path / "new.mp4", {"--audio": audio}) is None


# ---- check_input_path ------------------------------------------------------------------------------------------------------

def test_input_path_accepts_by_kind(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    assert validation.check_input_path(None, label="--x") is None
    assert validation.check_input_path(str(tmp_path / "f.txt"), label="--x") == tmp_path / "f.txt"
    assert validation.check_input_path(tmp_path, label="--x") == tmp_path
    assert validation.check_input_path(tmp_path / "f.txt", label="--x", kind="file") == tmp_path / "f.txt"
    assert validation.check_input_path(tmp_path, label="--x", kind="folder") == tmp_path


def test_input_path_refusals_word_for_word(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    missing = str(tmp_path / "nope")
    assert refused(validation.check_input_path, missing, label="--x") == f"--x {missing!r}: no such file or folder"
    assert refused(validation.check_input_path, missing, label="--x", kind="file") == f"--x {missing!r}: no such file"
    pasted = str(tmp_path / "a\nb")
    assert refused(validation.check_input_path, pasted, label="--x", kind="folder") == (
        f"--x {pasted!r}: no such folder (it contains the control character '\\n': a pasted line break?)"
    )
    nul = str(tmp_path / "a\x00b")  # Path.exists raises ValueError
    assert refused(validation.check_input_path, nul, label="--x") == (
        f"--x {nul!r}: no such file or folder (it contains the control character '\\x00': a pasted line break?)"
    )
    long = str(tmp_path / ("n" * 300))  # Path.exists raises OSError (name too long)
    assert refused(validation.check_input_path, long, label="--x") == f"--x {long!r}: no such file or folder"
    assert refused(validation.check_input_path, tmp_path, label="--x", kind="file") == (
        f"--x {str(tmp_path)!r} is a folder; give a file"
    )
    f = tmp_path / "f.txt"
    assert refused(validation.check_input_path, f, label="--x", kind="folder") == f"--x {str(f)!r} is a file; give a folder"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert refused(validation.check_input_path, fifo, label="--x") == (
        f"--x {str(fifo)!r} is not a regular file or folder (a pipe, device or socket); give a file or folder"
    )
    assert refused(validation.check_input_path, fifo, label="--x", kind="file") == (
        f"--x {str(fifo)!r} is not a regular file (a pipe, device or socket); give a file"
    )


# ---- pick_device (CUDA and MPS are simulated: this machine has neither) ---------------------------------------------------

def fake_backends(monkeypatch, *, cuda: bool = False, count: int = 0, build: str | None = None, mps: bool = False):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.version, "cuda", build)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


def test_auto_picks_cuda_then_mps_then_cpu(monkeypatch):
    fake_backends(monkeypatch)
    assert validation.pick_device("auto") == torch.device("cpu")
    assert validation.pick_device(" AUTO ") == torch.device("cpu")
    fake_backends(monkeypatch, mps=True)
    assert validation.pick_device("auto") == torch.device("mps")
    fake_backends(monkeypatch, cuda=True, count=1, mps=True)
    assert validation.pick_device("auto") == torch.device("cuda")
    fake_backends(monkeypatch)
    # an old PyTorch without the MPS module (torch.backends forwards a deleted name to its module, so it is replaced whole)
    monkeypatch.setattr(torch, "backends", SimpleNamespace())
    assert validation.pick_device("auto") == torch.device("cpu")


def test_named_devices(monkeypatch):
    fake_backends(monkeypatch)
    assert validation.pick_device("cpu") == torch.device("cpu")
    assert validation.pick_device("CPU") == torch.device("cpu")
    for name in ("tpu", "meta", "cuda:x", ""):
        assert refused(validation.pick_device, name) == f"--device must be auto, cpu, cuda, cuda:N or mps, got {name!r}"
    assert refused(validation.pick_device, "xla", label="device") == "device must be auto, cpu, cuda, cuda:N or mps, got 'xla'"


def test_cuda_refusals_say_why(monkeypatch):
    fake_backends(monkeypatch)
    assert refused(validation.pick_device, "cuda") == (
        f"--device cuda: this PyTorch build has no CUDA (torch {torch.__version__}); use --device cpu or auto"
    )
    fake_backends(monkeypatch, build="12.1")
    assert refused(validation.pick_device, "cuda:0", label="device") == (
        f"device cuda:0: no CUDA device is visible (torch {torch.__version__}); use device cpu or auto"
    )
    fake_backends(monkeypatch, cuda=True, count=2, build="12.1")
    assert validation.pick_device("cuda") == torch.device("cuda")
    assert validation.pick_device("cuda:1") == torch.device("cuda", 1)
    assert refused(validation.pick_device, "cuda:2") == "--device cuda:2: there are only 2 CUDA device(s) (cuda:0..cuda:1)"
    fake_backends(monkeypatch, cuda=True, count=1, build="12.1")
    assert validation.pick_device("cuda:0") == torch.device("cuda", 0)
    assert refused(validation.pick_device, "cuda:1") == "--device cuda:1: there is only 1 CUDA device(s) (cuda:0..cuda:0)"
    fake_backends(monkeypatch, cuda=True, count=3, build="12.1")
    assert refused(validation.pick_device, "cuda:5") == "--device cuda:5: there are only 3 CUDA device(s) (cuda:0..cuda:2)"


def test_mps_only_where_metal_is(monkeypatch):
    fake_backends(monkeypatch)
    assert refused(validation.pick_device, "mps") == (
        "--device mps: Apple's Metal backend is not available here; use --device cpu or auto"
    )
    assert refused(validation.pick_device, "MPS", label="device") == (
        "device mps: Apple's Metal backend is not available here; use device cpu or auto"
    )
    fake_backends(monkeypatch, mps=True)
    assert validation.pick_device("mps") == torch.device("mps")
    fake_backends(monkeypatch)
    monkeypatch.setattr(torch, "backends", SimpleNamespace())  # no MPS module at all
    assert refused(validation.pick_device, "mps") == (
        "--device mps: Apple's Metal backend is not available here; use --device cpu or auto"
    )


# ---- check_frame_count -----------------------------------------------------------------------------------------------------

def test_frame_limit_default_and_given():
    assert validation.check_frame_count(18_000, 30, None) is None  # the default limit, exactly
    assert validation.check_frame_count(100, 25, 100) is None
    assert refused(validation.check_frame_count, 18_001, 25, None) == (
        "the audio makes 18001 frames (720.0 s at 25 fps), more than the limit of 18000 frames per run; "
        "raise it with --max-frames 18001 if you mean it, or use shorter audio / a lower fps"
    )
    assert refused(validation.check_frame_count, 101, 12.5, 100, label="max_frames") == (
        "the audio makes 101 frames (8.1 s at 12.5 fps), more than the limit of 100 frames per run; "
        "raise it with max_frames 101 if you mean it, or use shorter audio / a lower fps"
    )
    assert refused(validation.check_frame_count, 101, 25, 100, how="declared") == (
        "the audio makes 101 frames (4.0 s at 25 fps, by the length its file records), "
        "more than the limit of 100 frames per run; "
        "raise it with --max-frames 101 if you mean it, or use shorter audio / a lower fps"
    )
    assert refused(validation.check_frame_count, 140, 25, 100, how="decoding") == (
        "the audio runs past the limit of 100 frames per run (4.0 s at 25 fps; decoding stopped there); "
        "raise it with --max-frames if you mean it, or use shorter audio / a lower fps"
    )


# ---- check_choice, check_optional, check_speed, first_line -------------------------------------------------------------------

def test_check_choice():
    assert validation.check_choice("b", ("a", "b"), label="--x") == "b"
    assert refused(validation.check_choice, "c", ("a", "b"), label="--x") == "--x must be one of a, b, got 'c'"
    assert refused(validation.check_choice, 7, [1, 2, 3], label="--n", hint="see --help") == (
        "--n must be one of 1, 2, 3, got 7; see --help"
    )


def test_check_optional():
    assert validation.check_optional("steps", None) is None
    assert validation.check_optional("steps", 7.0) == 7
    assert refused(validation.check_optional, "steps", 0, label="--steps", hint="use 20") == (
        "--steps must be an integer from 1 to 1000, got 0; use 20"
    )
    assert refused(validation.check_optional, "steps", 0) == (
        "steps must be an integer from 1 to 1000, got 0; 20-40 is typical; omit it for the model's preset"
    )


SPEED_HINT = "speech 0.1-1.0, singing 1.0-1.3"


def test_check_speed_scalars_and_curves():
    got = validation.check_speed(0.5)
    assert got == 0.5 and type(got) is float
    got = validation.check_speed(torch.tensor(0.5))  # a 0-dim tensor is one value, not a curve
    assert got == 0.5 and type(got) is float
    assert validation.check_speed([0, 3]) == [0.0, 3.0]
    assert validation.check_speed((0.5, 1)) == [0.5, 1.0]
    assert validation.check_speed(torch.tensor([0.5, 1.0])) == [0.5, 1.0]
    assert validation.check_speed(torch.tensor([[0.5, 1.0], [2.0, 3.0]])) == [0.5, 1.0, 2.0, 3.0]


def test_check_speed_refusals():
    assert refused(validation.check_speed, 4) == f"speed must be a number from 0 to 3, got 4; {SPEED_HINT}"
    assert refused(validation.check_speed, 4, label="--speed") == f"--speed must be a number from 0 to 3, got 4; {SPEED_HINT}"
    assert refused(validation.check_speed, [0.5, 4]) == (
        f"every value of speed must be a number from 0 to 3, got 4.0; {SPEED_HINT}"
    )
    assert refused(validation.check_speed, torch.tensor([0.5, -1.0]), label="curve") == (
        f"every value of curve must be a number from 0 to 3, got -1.0; {SPEED_HINT}"
    )
    assert refused(validation.check_speed, [], label="curve") == f"curve is empty; give at least one value ({SPEED_HINT})"


def test_first_line():
    assert validation.first_line("a\n  b\tc ") == "a b c"
    assert validation.first_line(ValueError("x\ny")) == "x y"


# ---- check_portrait_tensor --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1, 3), (4, 5, 3)])
def test_portrait_shapes_accepted(shape):
    assert validation.check_portrait_tensor(torch.rand(shape)) is None
    assert validation.check_portrait_tensor(torch.zeros(shape, dtype=torch.uint8)) is None


@pytest.mark.parametrize("shape", [(4, 5), (1, 4, 5, 3), (2, 4, 5, 3), (4, 5, 4), (4, 3, 5), (0, 5, 3), (4, 0, 3), (0, 0, 3)])
def test_portrait_shapes_refused(shape):
    assert refused(validation.check_portrait_tensor, torch.rand(shape)) == (
        f"image must be one picture shaped [height, width, 3] (an IMAGE), got shape {list(shape)}"
    )


def test_portrait_with_nan_or_inf_is_refused():
    for bad in (float("nan"), float("inf")):
        image = torch.rand(4, 5, 3)
        image[1, 2, 0] = bad
        assert refused(validation.check_portrait_tensor, image, label="reference") == (
            "reference holds NaN or infinite values (a failed upstream node); fix the node that made it"
        )


# ---- check_finite, bad_tensor, the float8 pieces --------------------------------------------------------------------------

def test_check_finite_names_where():
    assert validation.check_finite(torch.ones(3), "latents", clip=0, clips=2) is None
    x = torch.ones(3)
    x[1] = float("nan")
    cases = [
        (dict(clip=1, clips=3, step=4, steps=10), "clip 2 of 3, step 4 of 10"),
        (dict(clip=0, clips=None), "clip 1"),
        (dict(clip=0, clips=0, step=0, steps=5), "clip 1, step 0 of 5"),
    ]
    for kwargs, where in cases:
        with pytest.raises(GenerationError) as info:
            validation.check_finite(x, "latents", **kwargs)
        assert str(info.value) == f"the latents became NaN or infinite at {where} (float32); {LIKELY}"
    with pytest.raises(GenerationError) as info:
        validation.check_finite(x.to(torch.bfloat16), "decoded frames", clip=4, clips=5)
    assert str(info.value) == f"the decoded frames became NaN or infinite at clip 5 of 5 (bfloat16); {LIKELY}"


def test_bad_tensor_dtype_and_values():
    assert validation.bad_tensor("w", torch.ones(2, 3), torch.float32) is None
    assert validation.bad_tensor("w", torch.ones(2, 3)) is None
    assert validation.bad_tensor("w", torch.ones(2, dtype=torch.int32)) is None  # no dtype expected
    assert validation.bad_tensor("w", torch.ones(2, dtype=torch.int64), torch.int64) is None
    assert validation.bad_tensor("w", torch.ones(2, dtype=torch.int32), torch.float16) == (
        "w holds int32 values where the model needs floating point"
    )
    assert validation.bad_tensor("w", torch.empty(0)) is None
    assert validation.bad_tensor("w", torch.empty(4, device="meta")) is None
    assert validation.bad_tensor("w", torch.tensor([1e300, -1e300], dtype=torch.float64)) is None  # finite in float64
    x = torch.ones(2, 3)
    x[0, 1] = float("nan")
    assert validation.bad_tensor("w", x, torch.float32) == "w holds 1 NaN/infinite value of 6"
    x[1, 2] = float("-inf")
    assert validation.bad_tensor("w", x) == "w holds 2 NaN/infinite values of 6"
    x[1, 0] = float("inf")
    assert validation.bad_tensor("w", x) == "w holds 3 NaN/infinite values of 6"


def test_float8_is_checked_in_float32_pieces(monkeypatch):
    """float8 has no isfinite: the values are upcast a piece at a time; a piece of 4 elements makes 10 values 3 pieces."""
    monkeypatch.setattr(validation, "_PIECE", 4)
    values = torch.ones(10).to(torch.float8_e4m3fn)
    assert validation.bad_tensor("w", values, torch.float32) is None
    for where in ([0], [9], [3, 4], [0, 5, 9]):
        x = torch.ones(10)
        x[where] = float("nan")
        x = x.to(torch.float8_e4m3fn)
        n = len(where)
        assert validation.bad_tensor("w", x) == f"w holds {n} NaN/infinite value{'s' if n > 1 else ''} of 10"
    pieces = list(validation._float_pieces(torch.arange(10.0).to(torch.float8_e4m3fn)))
    try:  # a newer torch implements isfinite for float8 (2.15 does, 2.13 does not): the tensor is then one piece
        torch.isfinite(torch.zeros(1).to(torch.float8_e4m3fn))
        expected, dtype = [list(range(10))], torch.float8_e4m3fn
    except (NotImplementedError, RuntimeError):
        expected, dtype = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]], torch.float32
    assert [[float(v) for v in p.tolist()] for p in pieces] == expected
    assert all(p.dtype == dtype for p in pieces)


# ---- check_settings (a stand-in config: the model's limits only) ------------------------------------------------------------

def fake_config(*, emotion_modules=True, flow=False):
    return SimpleNamespace(
        name="fake",
        preset=SimpleNamespace(scheduler=SimpleNamespace(flow_shift=3.0 if flow else None)),
        backbone=SimpleNamespace(emotion_classes=4, emotion_audio_modules=emotion_modules, temporal=SimpleNamespace(max_len=16)),
    )


def settings(**over):
    from emo_model.sampling.settings import SamplingSettings

    base = dict(steps=20, cfg=2.0, audio_cfg=3.0, sampler="ddim", seed=0, speed=0.5, strategy="motion_frames",
                frames_per_clip=12, motion_frames=4)
    base.update(over)
    return SamplingSettings(**base)


LABELS = {"steps": "--steps", "speed": "--speed", "sampler": "--sampler", "emotion": "--emotion",
          "frames_per_clip": "--frames-per-clip", "motion_frames": "--motion-frames", "seed": "--seed"}


def test_settings_at_the_model_limits_are_accepted():
    config = fake_config()
    assert validation.check_settings(settings(), config) is None  # 12 + 4 = 16 = the limit
    assert validation.check_settings(settings(), config, labels=LABELS) is None
    assert validation.check_settings(settings(strategy="context_windows", frames_per_clip=16, motion_frames=32), config) is None
    assert validation.check_settings(settings(speed=[0.5, 1.0], sampler="lcm"), config) is None
    assert validation.check_settings(settings(sampler="flow_euler"), fake_config(flow=True)) is None
    for emotion in (0, 3, [0, 3, 1], None):
        assert validation.check_settings(settings(emotion=emotion), config) is None
    assert validation.check_settings(settings(emotion=99), fake_config(emotion_modules=False)) is None  # ignored


def test_settings_refusals_word_for_word():
    config = fake_config()
    cases = [
        (dict(steps=0), None, "steps must be an integer from 1 to 1000, got 0; 20-40 is typical; omit it for the model's preset"),
        (dict(steps=0), LABELS,
         "--steps must be an integer from 1 to 1000, got 0; 20-40 is typical; omit it for the model's preset"),
        (dict(seed=-1), LABELS, "--seed must be an integer from 0 to 9223372036854775807, got -1; any non-negative integer"),
        (dict(speed=4), None, f"speed must be a number from 0 to 3, got 4; {SPEED_HINT}"),
        (dict(speed=4), LABELS, f"--speed must be a number from 0 to 3, got 4; {SPEED_HINT}"),
        (dict(sampler="flow_euler"), None,
         "sampler 'flow_euler' does not sample fake; choose one of ddim, dpmpp_2m, euler, euler_ancestral, unipc, lcm"),
        (dict(sampler="ddim"), LABELS, None),  # replaced below: a flow model
        (dict(emotion=4), None, "emotion must be an emotion class 0..3 of fake, got 4"),
        (dict(emotion=-1), LABELS, "--emotion must be an emotion class 0..3 of fake, got -1"),
        (dict(emotion=True), None, "emotion must be an emotion class 0..3 of fake, got True"),
        (dict(emotion=[]), None, "emotion must be an emotion class 0..3 of fake, got []"),
        (dict(emotion=[1, 2.0]), None, "emotion must be an emotion class 0..3 of fake, got [1, 2.0]"),
        (dict(emotion=[1, 4]), None, "emotion must be an emotion class 0..3 of fake, got [1, 4]"),
        (dict(frames_per_clip=13), None,
         "frames_per_clip + motion_frames = 17, but fake's temporal layers handle at most 16 frames; lower one of them "
         "(or omit both for the preset)"),
        (dict(motion_frames=5), LABELS,
         "--frames-per-clip + --motion-frames = 17, but fake's temporal layers handle at most 16 frames; lower one of them "
         "(or omit both for the preset)"),
        (dict(strategy="context_windows", frames_per_clip=17), None,
         "frames_per_clip = 17, but fake's temporal layers handle at most 16 frames; lower it (or omit it for the preset)"),
        (dict(strategy="context_windows", frames_per_clip=17), LABELS,
         "--frames-per-clip = 17, but fake's temporal layers handle at most 16 frames; lower it (or omit it for the preset)"),
    ]
    for over, labels, expected in cases:
        if expected is None:
            got = refused(validation.check_settings, settings(**over), fake_config(flow=True), labels=labels)
            assert got == "--sampler 'ddim' does not sample fake; choose one of flow_euler", got
            continue
        assert refused(validation.check_settings, settings(**over), config, labels=labels) == expected, over


def test_a_single_emotion_that_is_not_a_whole_number_is_one_line():
    # emotion=1.5 went to list(1.5): a TypeError traceback instead of the refusal
    config = fake_config()
    for bad in (1.5, "1", True):
        with pytest.raises(validation.InputError) as exc:
            validation.check_settings(settings(emotion=bad), config)
        assert str(exc.value).endswith(f"must be an emotion class 0..3 of {config.name}, got {bad!r}")

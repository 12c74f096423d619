"""Reading one weight file: format detection, memory mapping, wrappers, and the one-line refusal of every bad file."""

from __future__ import annotations

import pickle
import random
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from emo_model.weights import files
from emo_model.weights.files import TensorFile, WeightsError, open_tensors, read_state_dict

DAMAGED = "not a readable PyTorch checkpoint ({}); it is truncated or damaged"


def _mapped(path: Path) -> bool:
    """Whether this process has ``path`` memory-mapped (Linux: /proc/self/maps)."""
    return str(path) in Path("/proc/self/maps").read_text()


needs_proc_maps = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")


# ---- formats ------------------------------------------------------------------------------------------------


def test_safetensors_is_recognised_by_its_header_whatever_the_suffix(tmp_path):
    save_file({"x": torch.tensor([1.0, 2.0])}, tmp_path / "weights.bin", metadata={"format": "pt", "step": "7"})
    tf = open_tensors(tmp_path / "weights.bin")
    assert tf.path == tmp_path / "weights.bin" and tf.metadata == {"format": "pt", "step": "7"}
    assert list(tf.tensors) == ["x"] and tf.tensors["x"].tolist() == [1.0, 2.0]
    save_file({"y": torch.zeros(1)}, tmp_path / "plain.safetensors")
    assert open_tensors(tmp_path / "plain.safetensors").metadata == {}  # a file without metadata


@needs_proc_maps
def test_safetensors_and_zip_pickles_are_memory_mapped_legacy_pickles_are_read(tmp_path):
    save_file({"x": torch.ones(4)}, tmp_path / "a.safetensors")
    torch.save({"x": torch.ones(4)}, tmp_path / "b.pth")
    torch.save({"x": torch.full((4,), 2.0)}, tmp_path / "c.pth", _use_new_zipfile_serialization=False)
    a, b, c = (read_state_dict(tmp_path / n) for n in ("a.safetensors", "b.pth", "c.pth"))
    assert _mapped(tmp_path / "a.safetensors") and _mapped(tmp_path / "b.pth")
    assert not _mapped(tmp_path / "c.pth")  # the legacy format cannot be mapped: read into memory
    assert a["x"].tolist() == b["x"].tolist() == [1.0] * 4 and c["x"].tolist() == [2.0] * 4
    assert a["x"].device.type == b["x"].device.type == c["x"].device.type == "cpu"
    assert open_tensors(tmp_path / "b.pth").path == tmp_path / "b.pth" and open_tensors(tmp_path / "c.pth").metadata == {}


def test_diffusers_weights_are_named_with_their_folder():
    assert TensorFile(Path("m/unet/diffusion_pytorch_model.safetensors"), {}).name == "unet/diffusion_pytorch_model.safetensors"
    assert TensorFile(Path("vae/diffusion_pytorch_model.fp16.bin"), {}).name == "vae/diffusion_pytorch_model.fp16.bin"
    assert TensorFile(Path("diffusion_pytorch_model.bin"), {}).name == "diffusion_pytorch_model.bin"  # no folder
    assert TensorFile(Path("m/unet/denoising_unet.pth"), {}).name == "denoising_unet.pth"


# ---- wrappers -----------------------------------------------------------------------------------------------


def test_nested_wrappers_are_removed_state_dict_first(tmp_path):
    t = torch.ones(1)
    torch.save({"state_dict": {"model": {"a": t}}, "epoch": 3}, tmp_path / "nested.ckpt")
    assert list(read_state_dict(tmp_path / "nested.ckpt")) == ["a"]
    torch.save({"model": {"m": t}, "module": {"u": t}, "state_dict": {"s": t}}, tmp_path / "all.pt")
    assert list(read_state_dict(tmp_path / "all.pt")) == ["s"]
    torch.save({"module": {"u": t}, "model": {"m": t}}, tmp_path / "two.pt")
    assert list(read_state_dict(tmp_path / "two.pt")) == ["u"]
    torch.save({"model": {"m": t}}, tmp_path / "one.pt")
    assert list(read_state_dict(tmp_path / "one.pt")) == ["m"]
    torch.save({"model": t, "b": t}, tmp_path / "flat.pt")  # "model" names a tensor here: not a wrapper
    assert list(read_state_dict(tmp_path / "flat.pt")) == ["model", "b"]


@pytest.mark.parametrize(
    "obj,why",
    [
        ([torch.ones(1)], "holds a list, not a state dict of tensors"),
        ({"a": torch.ones(1), "step": 3}, "not a state dict of tensors (entry 'step' is a int)"),
        ({1: torch.ones(1)}, "not a state dict of tensors (entry 1 is a Tensor)"),
        ({"state_dict": 5}, "not a state dict of tensors (entry 'state_dict' is a int)"),
    ],
)
def test_anything_but_a_state_dict_of_tensors_is_refused_in_one_line(tmp_path, obj, why):
    torch.save(obj, tmp_path / "x.pth")
    with pytest.raises(WeightsError) as exc:
        read_state_dict(tmp_path / "x.pth")
    assert str(exc.value) == f"{tmp_path / 'x.pth'}: {why}"


# ---- refusals -----------------------------------------------------------------------------------------------


class _Unknown:
    pass


def test_a_pickle_that_needs_a_python_object_is_refused_naming_it(tmp_path):
    torch.save({"a": torch.ones(1), "b": _Unknown()}, tmp_path / "obj.pth")
    with pytest.raises(WeightsError) as exc:
        read_state_dict(tmp_path / "obj.pth")
    assert str(exc.value) == (
        f"{tmp_path / 'obj.pth'} refused: rebuilding it needs the Python object {__name__}._Unknown, so loading it would "
        "execute code stored in the file. If you trust its source, load it once in a trusted environment with a full "
        "unpickler (weights_only off), save its tensors with safetensors.torch.save_file and use that .safetensors file"
    )


class _Payload:
    """Pickles to a call of exec(): a full unpickler runs it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("zip_format", [True, False])
def test_code_in_a_pickle_never_runs_even_when_the_environment_turns_torchs_default_off(tmp_path, monkeypatch, zip_format):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 makes torch.load unpickle everything unless weights_only=True is passed."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "ran"
    torch.save({"a": torch.ones(1), "b": _Payload(marker)}, tmp_path / "evil.pth", _use_new_zipfile_serialization=zip_format)
    with pytest.raises(WeightsError, match=r"evil\.pth refused: rebuilding it needs the Python object (builtins\.)?exec, "):
        read_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


def test_a_weights_only_refusal_without_a_name_says_python_objects(tmp_path, monkeypatch):
    torch.save({"a": torch.ones(1)}, tmp_path / "x.pth")

    def refuse(*args, **kwargs):
        assert kwargs["weights_only"] is True
        raise pickle.UnpicklingError("Weights only load failed. Unsupported operand 149")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(WeightsError, match=r"x\.pth refused: rebuilding it needs Python objects other than tensors, so"):
        read_state_dict(tmp_path / "x.pth")


def test_an_unpickling_error_of_damaged_bytes_is_not_called_unsafe(tmp_path, monkeypatch):
    torch.save({"a": torch.ones(1)}, tmp_path / "x.pth")

    def damaged(*args, **kwargs):
        raise pickle.UnpicklingError("invalid load key, 'h'.\nmore detail")

    monkeypatch.setattr(torch, "load", damaged)
    with pytest.raises(WeightsError) as exc:
        read_state_dict(tmp_path / "x.pth")
    assert str(exc.value) == f"{tmp_path / 'x.pth'}: " + DAMAGED.format("invalid load key, 'h'.")  # the first line only


def test_an_empty_pickle_names_the_error_type_for_want_of_a_message(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(WeightsError) as exc:
        read_state_dict(tmp_path / "empty.pth")
    assert str(exc.value) == f"{tmp_path / 'empty.pth'}: " + DAMAGED.format("EOFError")


def test_damaged_pickles_end_in_one_line_never_a_traceback(tmp_path):
    """Cut and random bytes make the unpickler raise KeyError, IndexError or struct.error as well as EOFError."""
    torch.save({"a": torch.ones(3)}, tmp_path / "ok.pth", _use_new_zipfile_serialization=False)
    good = (tmp_path / "ok.pth").read_bytes()
    rng = random.Random(0)
    for i in range(120):
        if i % 2:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60)))
        else:
            data = good[: rng.randrange(1, len(good))]
        (tmp_path / "bad.pth").write_bytes(data)
        try:
            read_state_dict(tmp_path / "bad.pth")
        except WeightsError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(str(tmp_path / "bad.pth"))
    (tmp_path / "junk.pth").write_bytes(b"hello world this is junk")
    with pytest.raises(WeightsError, match=r"junk\.pth: not a readable PyTorch checkpoint \(.*\); it is truncated or damaged$"):
        read_state_dict(tmp_path / "junk.pth")


def test_a_cut_safetensors_file_is_refused_in_one_line(tmp_path):
    save_file({"x": torch.ones(64)}, tmp_path / "w.SafeTensors")
    data = (tmp_path / "w.SafeTensors").read_bytes()
    (tmp_path / "w.SafeTensors").write_bytes(data[:-20])
    with pytest.raises(WeightsError) as exc:
        read_state_dict(tmp_path / "w.SafeTensors")  # the suffix in any case, not the (intact) header, says safetensors
    assert re.fullmatch(
        re.escape(f"{tmp_path / 'w.SafeTensors'}: not a readable safetensors file (")
        + r".+"
        + re.escape("); it is truncated or damaged, download it again"),
        str(exc.value),
    )


def test_a_safetensors_suffix_in_any_case_says_safetensors_even_when_the_header_is_garbage(tmp_path):
    (tmp_path / "w.SafeTensors").write_bytes(b"this is not a header at all")
    with pytest.raises(WeightsError, match=r"w\.SafeTensors: not a readable safetensors file \(.+\); it is truncated or damaged"):
        read_state_dict(tmp_path / "w.SafeTensors")


def test_a_missing_or_unreadable_file_is_refused_in_one_line(tmp_path, monkeypatch):
    for path in (tmp_path / "nope.pth", tmp_path):
        with pytest.raises(WeightsError) as exc:
            open_tensors(path)
        assert str(exc.value) == f"{path}: no such file"
    (tmp_path / "locked.pth").write_bytes(b"x")

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(files, "open", deny, raising=False)  # the module's open(): root ignores file modes
    with pytest.raises(WeightsError) as exc:
        open_tensors(str(tmp_path / "locked.pth"))
    assert str(exc.value) == f"{tmp_path / 'locked.pth'}: cannot be read (Permission denied)"


# ---- helpers of the loaders ---------------------------------------------------------------------------------


def test_materialise_copies_and_casts_only_floating_point():
    src = torch.ones(3)
    half = files._materialise(src, torch.device("cpu"), torch.float16)
    same = files._materialise(src, torch.device("cpu"), None)
    ints = files._materialise(torch.arange(3), torch.device("cpu"), torch.float16)
    assert half.dtype == torch.float16 and same.dtype == torch.float32 and ints.dtype == torch.int64
    src.add_(1)  # fresh memory: the copies do not follow the source
    assert half.tolist() == same.tolist() == [1.0, 1.0, 1.0] and ints.tolist() == [0, 1, 2]
    meta = files._materialise(src, torch.device("meta"), torch.float16)  # the device asked for, not the source's
    assert meta.is_meta and meta.dtype == torch.float16


def test_tensors_left_on_the_meta_device_are_named():
    module = torch.nn.Linear(2, 2)
    files._assert_materialised(module)  # all real: nothing to say
    module.register_buffer("scale", torch.empty(1, device="meta"))
    module.weight = torch.nn.Parameter(torch.empty(2, 2, device="meta"))
    with pytest.raises(RuntimeError) as exc:
        files._assert_materialised(module)
    assert str(exc.value) == "2 tensors were left on the meta device after loading, e.g. ['weight', 'scale']"
    module.bias = torch.nn.Parameter(torch.empty(2, device="meta"))
    module.register_buffer("shift", torch.empty(1, device="meta"))
    with pytest.raises(RuntimeError) as exc:
        files._assert_materialised(module)
    assert str(exc.value) == "4 tensors were left on the meta device after loading, e.g. ['weight', 'bias', 'scale']"


def test_shapes_and_first_line():
    assert files._shapes({"a": torch.zeros(2, 3), "b": torch.zeros(())}) == {"a": (2, 3), "b": ()}
    assert files._first_line(ValueError("  first\nsecond  ")) == "first"
    assert files._first_line(KeyError()) == "KeyError"

"""Fuzzing the node inputs (issue 26): Hypothesis draws IMAGE, AUDIO and MASK values as another node could hand them
over (dtype, value range, device, shape); each either works or ends in the nodes' one-line error (the pack's
``InputError``, or the audio / face / video modules' ``AudioError`` / ``FaceError`` / ``VideoError``: the user errors the
command line prints as one line, which ComfyUI shows on the node), and a refused Video Combine leaves no file.

Sized for CI: tiny pictures, a few thousand samples, the built-in tiny demo model, a few dozen examples each.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from comfy_harness import demo_through_nodes, load_pack, node_result, write_speech
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

# no shrinking: each failing example is printed as drawn (shrinking re-runs generation, slow here)
FUZZ = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.generate], report_multiple_bugs=False)

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8, torch.int16, torch.int64, torch.bool]
RANGES = ["unit", "overshoot", "0-255", "negative", "huge", "nan", "inf"]


def fill(shape, dtype, value_range, device, seed) -> torch.Tensor:
    """A tensor of ``shape`` and ``dtype`` whose values follow ``value_range``, on ``device`` ('cpu' or 'meta')."""
    if device == "meta":
        return torch.empty(shape, dtype=dtype, device="meta")
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    x = {"unit": x, "overshoot": x * 1.3 - 0.15, "0-255": x * 255, "negative": -x, "huge": x * 1e30, "nan": x, "inf": x}[value_range]
    if value_range in ("nan", "inf") and x.numel():
        x.view(-1)[seed % x.numel()] = math.nan if value_range == "nan" else -math.inf
    if dtype == torch.bool:
        return x > 0.5
    if not dtype.is_floating_point:
        info = torch.iinfo(dtype)
        return torch.nan_to_num(x, nan=0.0).clamp(info.min, info.max).to(dtype)
    return x.to(dtype)


@st.composite
def hostile_images(draw, max_side: int):
    """Any rank, empty sides, odd channel counts, any dtype, any range, the 'meta' device."""
    ndim = draw(st.sampled_from([2, 3, 4, 4, 4, 5]))
    shape = [draw(st.integers(0, 3))] if ndim >= 4 else []
    shape += [draw(st.integers(0, max_side)) for _ in range(min(ndim, 2) if ndim >= 3 else ndim)]
    if ndim >= 3:
        shape.append(draw(st.sampled_from([0, 1, 3, 3, 3, 4, 5])))
    if ndim == 5:
        shape.insert(0, draw(st.integers(1, 2)))
    dtype = draw(st.sampled_from(DTYPES))
    return fill(shape, dtype, draw(st.sampled_from(RANGES)), draw(st.sampled_from(["cpu", "cpu", "cpu", "meta"])), draw(st.integers(0, 99)))


@st.composite
def plausible_images(draw, max_side: int):
    """What an image node could hand over: [B, H, W, 1/3/4], float in or slightly past 0..1, or uint8 0..255."""
    shape = [draw(st.integers(1, 3)), draw(st.integers(2, max_side)), draw(st.integers(2, max_side)), draw(st.sampled_from([1, 3, 3, 4]))]
    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8]))
    value = "0-255" if dtype == torch.uint8 else draw(st.sampled_from(["unit", "unit", "overshoot"]))
    return fill(shape, dtype, value, "cpu", draw(st.integers(0, 99)))


def images(max_side: int = 8):
    return st.one_of(plausible_images(max_side), plausible_images(max_side), hostile_images(max_side))


@st.composite
def hostile_audios(draw):
    ndim = draw(st.sampled_from([1, 2, 3, 3, 3, 4]))
    shape = [draw(st.integers(0, 2)) for _ in range(ndim - 1)] + [draw(st.integers(0, 3000))]
    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.float16, torch.float64, torch.int16, torch.bool]))
    value = draw(st.sampled_from(["unit", "unit", "overshoot", "huge", "nan", "inf"]))
    waveform = fill(shape, dtype, value, draw(st.sampled_from(["cpu", "cpu", "cpu", "meta"])), draw(st.integers(0, 99)))
    rate = draw(st.sampled_from([16000, 16000, 44100, 8000, 1000, 0, -16000, 16000.0, True, 10**9, "16000"]))
    return {"waveform": waveform, "sample_rate": rate}


@st.composite
def plausible_audios(draw):
    """What an audio node could hand over: [1, 1-2, T] float, in -1..1 or louder, at a usual rate."""
    shape = [1, draw(st.integers(1, 2)), draw(st.integers(1, 3000))]
    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.float16, torch.float64]))
    waveform = fill(shape, dtype, draw(st.sampled_from(["unit", "overshoot"])), "cpu", draw(st.integers(0, 99))) * 2 - 1
    return {"waveform": waveform, "sample_rate": draw(st.sampled_from([16000, 44100, 48000, 8000, 22050]))}


def audios():
    return st.one_of(plausible_audios(), hostile_audios())


def user_error_names() -> set[str]:
    """The user-error classes (one line, no traceback) of the command line, which the nodes raise too."""
    from emo_model.app.cli import user_errors

    return {cls.__name__ for cls in user_errors()}


USER_ERRORS = user_error_names()  # InputError, AudioError, FaceError, VideoError, ... (compared by name: the pack is imported apart)


def is_node_error(exc: BaseException) -> bool:
    """The nodes' one-line error: one of the user errors, its message one non-empty line."""
    return type(exc).__name__ in USER_ERRORS and str(exc).strip() != "" and "\n" not in str(exc)


def pack_comfy():
    """The pack's nodes/_comfy module, imported as ComfyUI imports the pack."""
    pack = load_pack()
    return sys.modules[f"{pack.__name__}.nodes._comfy"]


def describe(t) -> str:
    return f"{tuple(t.shape)} {t.dtype} on {t.device}" if isinstance(t, torch.Tensor) else repr(t)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz_nodes")
    return demo_through_nodes(write_speech(base / "speech.wav", seconds=0.2))


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz_out")


def files_in(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


# ---- the shared checks, many examples (cheap) ----------------------------------------------------------------


@settings(FUZZ, max_examples=150)
@given(image=images(max_side=40))
def test_check_image_passes_only_what_makes_a_finite_0_to_1_picture(image):
    comfy = pack_comfy()
    try:
        checked = comfy.check_image(image, label="image", channels=(1, 3, 4))
    except Exception as exc:  # noqa: BLE001 - the property: only the one-line error
        assert is_node_error(exc), f"{describe(image)}: {exc!r}"
        return
    batch = comfy.image_batch(checked)
    assert batch.dtype == torch.float32 and batch.device.type == "cpu" and batch.dim() == 4 and batch.shape[-1] == 3
    assert batch.shape[0] >= 1 and batch.shape[1] >= 1 and batch.shape[2] >= 1
    assert bool(torch.isfinite(batch).all()) and 0.0 <= float(batch.min()) and float(batch.max()) <= 1.0, describe(image)


@settings(FUZZ, max_examples=100)
@given(mask=images(max_side=16))
def test_check_mask_passes_only_finite_masks(mask):
    comfy = pack_comfy()
    if mask.dim() == 4:
        mask = mask[..., 0] if mask.shape[-1] else mask.sum(-1)
    try:
        checked = comfy.check_mask(mask, label="face_mask")
    except Exception as exc:  # noqa: BLE001
        assert is_node_error(exc), f"{describe(mask)}: {exc!r}"
        return
    values = checked.float()
    assert checked.dim() in (2, 3) and values.numel() and bool(torch.isfinite(values).all())
    assert -0.5 <= float(values.min()) and float(values.max()) <= 1.5


@settings(FUZZ, max_examples=100)
@given(audio=audios())
def test_check_audio_passes_only_finite_float_clips(audio):
    comfy = pack_comfy()
    try:
        comfy.check_audio(audio)
    except Exception as exc:  # noqa: BLE001
        assert is_node_error(exc), f"{describe(audio['waveform'])} at {audio['sample_rate']!r}: {exc!r}"
        return
    waveform = audio["waveform"]
    assert waveform.dim() == 3 and waveform.shape[0] >= 1 and waveform.is_floating_point() and bool(torch.isfinite(waveform).all())


# ---- through the nodes -----------------------------------------------------------------------------------------


@settings(FUZZ, max_examples=60)
@given(frames=images(), audio=st.one_of(st.none(), plausible_audios(), plausible_audios(), hostile_audios()),
       prefix=st.sampled_from(["fz", "fz", "fz", "fz", "EMO/", "a/b/c", "", ".", "x/..", "/abs", "a\nb"]))
def test_video_combine_writes_a_video_or_refuses_in_one_line(nodes, output, monkeypatch, frames, audio, prefix):
    monkeypatch.setenv("EMO_OUTPUT_DIR", str(output))
    before = files_in(output)
    try:
        result = nodes[0]["EMOVideoCombine"]().combine(frames, 25.0, prefix, "mp4", 30, audio=audio)
    except Exception as exc:  # noqa: BLE001
        event("refused")
        what = f"{describe(frames)}, audio {describe(audio['waveform']) if audio else None}, prefix {prefix!r}"
        assert is_node_error(exc), f"{what}: {exc!r}"
        assert files_in(output) == before, f"{what}: a file was left behind"
        return
    event("written")
    path = Path(node_result(result)[1])
    assert path.is_file() and path.stat().st_size > 0 and output in path.parents
    assert files_in(output) - before == {path}, "one video and nothing else (no partial file)"


@settings(FUZZ, max_examples=25)
@given(image=images())
def test_reference_encode_encodes_or_refuses_in_one_line(nodes, image):
    node_classes, session = nodes[:2]
    try:
        (reference,) = node_result(node_classes["EMOReferenceEncode"]().encode(session, image, 0))
    except Exception as exc:  # noqa: BLE001
        event("refused")
        assert is_node_error(exc), f"{describe(image)}: {exc!r}"
        return
    event("encoded")
    assert bool(torch.isfinite(reference.state.latent).all())


@settings(FUZZ, max_examples=25)
@given(image=images())
def test_face_mask_crops_or_refuses_in_one_line(nodes, image):
    node = nodes[0]["EMOFaceMask"]()
    args = {"size": 64, "expand": 1.2, "crop": "full", "crop_ratio": 2.0, "detector": "haar", "fallback": "center", "face_index": 0,
            "union": False}
    try:
        masks, portraits = node_result(node.run(image, **args))[:2]
    except Exception as exc:  # noqa: BLE001
        assert is_node_error(exc), f"{describe(image)}: {exc!r}"
        return
    assert portraits.shape[1:] == (64, 64, 3) and bool(torch.isfinite(portraits).all())


@settings(FUZZ, max_examples=25)
@given(audio=audios())
def test_audio_encode_encodes_or_refuses_in_one_line(nodes, audio):
    node_classes, session = nodes[:2]
    try:
        result = node_result(node_classes["EMOAudioEncode"]().encode(session, audio, 0.0, "off", max_frames=2000))
    except Exception as exc:  # noqa: BLE001
        event("refused")
        assert is_node_error(exc), f"{describe(audio['waveform'])} at {audio['sample_rate']!r}: {exc!r}"
        return
    event("encoded")
    assert result[2] >= 1 and bool(torch.isfinite(result[1]["waveform"]).all())

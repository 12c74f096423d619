"""Audio front end parity: our loaders and vocal separation against the ORIGINALS' own loaders.

The fixture (tests/parity/audio) was written by tools/parity/audio_original.py in the audio venv: four short inputs
(16 kHz mono wav, 44.1 kHz stereo wav, mp3, m4a/aac), what Hallo's ``AudioProcessor.preprocess`` (librosa.load), MEMO's
inference steps (the ffmpeg program, then librosa.load) and EchoMimic's whisper ``load_audio`` (the ffmpeg program)
hand to their audio encoders, and the same through audio-separator (Hallo: 0.17.2, MEMO: 0.24.1) with a stand-in
separator model of Kim_Vocal_2's signature (``standin_Kim_Vocal_2.onnx``, 12 KB: a per-bin gain and a 4x4 channel mix).

Ours: :mod:`emo_model.audio.decode` (PyAV in-process, libsoxr through soxr) and :mod:`emo_model.audio.vocal_separation`, with
each family's own ``audio_loader`` / ``vocal_separator`` settings. The stand-in runs here as the same two torch ops
(its numbers are in the fixture), so the separation plumbing is checked without onnxruntime; with onnxruntime
installed the .onnx file itself runs through our loader too.

Tolerance: the standard (tests/parity_floor.py: max(1e-4, 3 x the original's own 2- vs 1-thread difference, which is 0
for every output here). What is exact and why not everywhere: 16-bit wav is bit-exact on every loader; mp3 differs by
libsndfile's mpg123 decoder against FFmpeg's (5.8e-7); m4a/aac by the AAC decoder of the fixture's ffmpeg 5.1 against
PyAV's newer FFmpeg (1e-6, 1 LSB on a few samples); the separated stem by 1 LSB of int16 where ONNX Runtime's and
torch's float sums round differently before audio-separator's truncation (about 1e-5). Measured numbers: docs/parity.md.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from emo_model.audio import decode as audio_decode
from emo_model.audio import vocal_separation
from emo_model.families import echomimic, hallo, hallo2, memo
from tests.conftest import ROOT
from tests.parity_floor import tolerance

FIX = ROOT / "tests" / "parity" / "audio"
META = json.loads((FIX / "meta.json").read_text())
OUT = {k: v.numpy() for k, v in load_file(str(FIX / "outputs.safetensors")).items()}
INPUTS = sorted(META["inputs"])
FAMILIES = {"hallo": hallo.FAMILY, "memo": memo.FAMILY, "echomimic": echomimic.FAMILY}
needs_soxr = pytest.mark.skipif(not audio_decode.soxr_available(), reason="soxr (a requirement) is not installed")


def rel(ours: np.ndarray, original: np.ndarray) -> float:
    assert ours.shape == original.shape, f"shape {ours.shape} vs the original's {original.shape}"
    a, b = ours.astype(np.float64), original.astype(np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _loader(family: str) -> str:
    return FAMILIES[family].config().preset.quirks.audio_loader


def test_the_inputs_are_the_ones_the_originals_read():
    import hashlib

    for name, digest in META["inputs"].items():
        assert hashlib.sha256((FIX / name).read_bytes()).hexdigest() == digest, name


def test_each_family_names_the_loader_of_its_original():
    assert _loader("hallo") == "librosa" and hallo2.FAMILY.config().preset.quirks.audio_loader == "librosa"
    assert _loader("memo") == "ffmpeg-wav+librosa"
    assert _loader("echomimic") == "ffmpeg-s16-mono"
    assert hallo.FAMILY.vocal_separator.amplification_threshold is None  # audio-separator 0.17.2
    assert memo.FAMILY.vocal_separator.amplification_threshold == 0.6  # 0.24.1's default
    assert echomimic.FAMILY.vocal_separator is None


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("name", INPUTS)
def test_decode_and_resample_match_the_originals_loader(family, name):
    loader = _loader(family)
    if "librosa" in loader and not audio_decode.soxr_available():
        pytest.skip("soxr (a requirement) is not installed")
    ours = audio_decode.load(audio_decode.decode_file(FIX / name), loader)
    key = f"{family}.{name}"
    err = rel(ours, OUT[key])
    assert err <= tolerance(FIX, key, "outputs.safetensors"), f"{key}: rel err {err:.3g}"
    if name.endswith(".wav"):  # 16-bit PCM: the same decoder output on both sides, so the same samples
        assert err == 0.0, f"{key}: a wav should be bit-exact, rel err {err:.3g}"


def test_a_comfy_audio_dict_of_16_bit_samples_takes_the_integer_path():
    """ComfyUI's LoadAudio hands float32; 16-bit sources are recognised and resampled as the ffmpeg program does."""
    decoded = audio_decode.decode_file(FIX / "song44k.wav")
    as_dict = audio_decode.decode({"waveform": torch.from_numpy(decoded.as_float())[None], "sample_rate": decoded.rate})
    assert as_dict.is_s16 and np.array_equal(as_dict.samples, decoded.samples)
    ours = audio_decode.load(as_dict, "ffmpeg-s16-mono")
    assert rel(ours, OUT["echomimic.song44k.wav"]) == 0.0


def standin_run():
    """The stand-in separator as torch ops: spec * gain[bin], then a 1x1 convolution mixing the 4 channels."""
    gain = torch.from_numpy(OUT["standin.gain"]).reshape(1, 1, -1, 1)
    mix = torch.from_numpy(OUT["standin.mix"]).reshape(4, 4, 1, 1)
    return lambda spec: torch.nn.functional.conv2d(torch.from_numpy(spec) * gain, mix).numpy()


CASES = [(prefix, family, name) for prefix, family in (("hallo_sep", "hallo"), ("memo_sep", "memo"))
         for name in META["separated"][prefix]]


@needs_soxr
@pytest.mark.parametrize("prefix,family,name", CASES)
def test_vocal_separation_plumbing_matches_audio_separator(prefix, family, name):
    """Chunking, normalisation, the STFT round trip, stem choice, int16 file, ffmpeg resampling and librosa.load."""
    settings = FAMILIES[family].vocal_separator
    separator = vocal_separation.MDXSeparator(settings, standin_run())
    vocals, stem = vocal_separation.separate(audio_decode.decode_file(FIX / name), _loader(family), separator)
    original_stem = OUT[f"{prefix}.{name}.vocals"]
    assert stem.dtype == np.int16 and stem.shape == original_stem.shape
    assert np.abs(stem.astype(np.int32) - original_stem).max() <= 1  # 1 LSB: float sums rounded differently before truncation
    for key, ours in ((f"{prefix}.{name}.vocals", stem), (f"{prefix}.{name}", vocals)):
        err = rel(ours, OUT[key])
        assert err <= tolerance(FIX, key, "outputs.safetensors"), f"{key}: rel err {err:.3g}"


@needs_soxr
def test_the_settings_matter_the_test_can_fail():
    """MEMO's amplification (0.24.1) and Hallo's plain normalisation give different stems on the quiet speech input:
    swapping the two families' settings fails the comparison above."""
    name = "speech16k.wav"
    decoded = audio_decode.decode_file(FIX / name)
    wrong = vocal_separation.MDXSeparator(hallo.FAMILY.vocal_separator, standin_run())
    _, stem = vocal_separation.separate(decoded, _loader("memo"), wrong)
    assert rel(stem, OUT[f"memo_sep.{name}.vocals"]) > 1e-2


def test_the_standin_onnx_file_runs_through_our_loader(tmp_path):
    pytest.importorskip("onnxruntime")
    folder = tmp_path / "audio_separator"
    folder.mkdir()
    (folder / "Kim_Vocal_2.onnx").write_bytes((FIX / "standin_Kim_Vocal_2.onnx").read_bytes())
    settings = hallo.FAMILY.vocal_separator
    assert vocal_separation.missing_reason(settings, tmp_path) == ""
    separator = vocal_separation.load_separator(settings, tmp_path)
    spec = np.random.default_rng(0).standard_normal((1, 4, settings.dim_f, settings.dim_t)).astype(np.float32)
    assert rel(separator.run(spec), standin_run()(spec)) < 1e-6

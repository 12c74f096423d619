"""Audio front end: decoding, frame counts, loudness, windows, encoders, checkpoint layouts.

Every model here is a tiny randomly initialised one built from a config; nothing is downloaded.
Expected values come from hand arithmetic or from independent reference computations (transformers'
own forward passes, a plain-torch OpenAI whisper encoder, pyloudnorm), never from the code under test.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import av
import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from comfy_harness import whisper_encoder_state
from safetensors.torch import save_file
from transformers import (
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2Model,
    WhisperConfig,
    WhisperModel,
)
from transformers.audio_utils import mel_filter_bank
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from emo_model.audio.encoder_base import WAV2VEC2_CONFIG_DIR, AudioFeatures
from emo_model.audio.encoders import LogMelAudioEncoder, build_audio_encoder, encode_audio, features_from_comfy_encoder_output
from emo_model.audio.signal import (
    SAMPLE_RATE,
    AudioError,
    PreparedAudio,
    load_audio,
    num_video_frames,
    prepare_audio,
    window_frames,
)
from emo_model.audio.wav2vec2 import Wav2Vec2AudioEncoder, convert_wav2vec2_state_dict
from emo_model.audio.whisper import WHISPER_CONFIG_DIR, WhisperAudioEncoder, convert_whisper_state_dict
from emo_model.configs import AudioFeatureConfig

LOGMEL = AudioFeatureConfig(kind="logmel", layers=1, dim=32, margin=2)
W2V = AudioFeatureConfig(kind="wav2vec2", layers=2, dim=32, margin=2, interpolate_conv=True)
WHISPER = AudioFeatureConfig(kind="whisper", layers=3, dim=16, margin=2, whisper_window=(-4, 5))


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """The models here are tiny: one thread avoids OpenMP spin-waits when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------
# Signals and files


def tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    """A band-limited, amplitude-modulated chord, [samples, channels]; the same analytic signal at any rate."""
    t = np.arange(round(seconds * rate)) / rate
    x = sum(a * np.sin(2 * np.pi * f * t) for a, f in ((0.2, 180.0), (0.12, 730.0), (0.07, 1900.0)))
    x = x * (0.6 + 0.4 * np.sin(2 * np.pi * 2.5 * t))
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


def comfy(wave: np.ndarray, rate: int) -> dict:
    """ComfyUI AUDIO from [samples, channels]."""
    return {"waveform": torch.from_numpy(np.ascontiguousarray(wave.T))[None], "sample_rate": rate}


def write_with_pyav(path: Path, wave: np.ndarray, rate: int, codec: str, video: bool = False) -> None:
    """Encode mono [samples] audio (and optionally a few video frames) with PyAV."""
    with av.open(str(path), "w") as container:
        if video:
            vstream = container.add_stream("mpeg4", rate=25)
            vstream.width = vstream.height = 32
            vstream.pix_fmt = "yuv420p"
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        formats = [f.name for f in stream.codec_context.codec.audio_formats]
        fmt = next(f for f in ("fltp", "flt", "s16p", "s16") if f in formats)
        for start in range(0, wave.shape[0], 1024):
            chunk = wave[start : start + 1024][None]
            if fmt.startswith("s16"):
                chunk = (chunk * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format=fmt, layout="mono")
            frame.sample_rate, frame.pts = rate, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if video:
            for _ in range(10):
                container.mux(vstream.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")))
            container.mux(vstream.encode(None))


def tiny_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b"")
    )


def windows_reference(per_frame: torch.Tensor, margin: int) -> torch.Tensor:
    n = per_frame.shape[0]
    index = [[min(max(f + o, 0), n - 1) for o in range(-margin, margin + 1)] for f in range(n)]
    return per_frame[torch.tensor(index)]


# --------------------------------------------------------------------------------------------------
# Frame counts and preparation


@pytest.mark.parametrize(
    ("samples", "rate", "fps", "frames"),
    [
        (32000, 16000, 25, 50),  # exactly 2 s: 50, not 51
        (32000, 16000, 24, 48),
        (32000, 16000, 30, 60),
        (32001, 16000, 25, 51),  # one extra sample needs a frame
        (21920, 16000, 24, 33),  # 1.37 s: 32.88 -> 33
        (21920, 16000, 25, 35),  # 34.25 -> 35
        (21920, 16000, 30, 42),  # 41.1 -> 42
        (3200, 16000, 24, 5),  # 0.2 s: 4.8 -> 5
        (88200, 44100, 25, 50),
        (44101, 44100, 25, 26),
        (160000, 16000, 29.97, 300),  # 299.7 -> 300
        (30 * 48000, 48000, 23.976, 720),  # 719.28 -> 720
        (80080, 16000, 24000 / 1001, 120),  # exactly 120, though the float product is 120.00000000000001
        (1, 16000, 25, 1),
        (0, 16000, 25, 1),
    ],
)
def test_num_video_frames(samples, rate, fps, frames):
    assert num_video_frames(samples, rate, fps) == frames


@pytest.mark.parametrize("fps", [0, -25, float("nan"), float("inf"), "25"])
def test_num_video_frames_rejects_bad_fps(fps):
    with pytest.raises(AudioError, match="fps"):
        num_video_frames(16000, 16000, fps)


@pytest.mark.parametrize(
    ("seconds", "fps", "frames", "samples"),
    [
        (1.37, 24, 33, 22000),  # 33 * 16000 / 24
        (1.37, 25, 35, 22400),
        (1.37, 30, 42, 22400),
        (2.0, 24, 48, 32000),
        (2.0, 25, 50, 32000),
        (0.2, 24, 5, 3333),  # 5 * 666.67 = 3333.3
        (0.2, 30, 6, 3200),
        (10.0, 29.97, 300, 160160),  # 300 * 16000 / 29.97 = 160160.16
    ],
)
def test_prepare_audio_cuts_to_whole_frames(seconds, fps, frames, samples):
    prepared = prepare_audio(comfy(tone(seconds, 16000), 16000), fps)
    assert (prepared.num_frames, prepared.waveform.shape, prepared.fps) == (frames, (samples,), fps)
    assert prepared.waveform.dtype == torch.float32
    assert prepared.duration == pytest.approx(samples / 16000)


def test_prepare_audio_num_frames_pads_with_silence_or_trims():
    source = comfy(tone(1.0, 16000), 16000)
    longer = prepare_audio(source, 25, num_frames=40)
    assert longer.waveform.shape == (25600,)
    assert torch.equal(longer.waveform[:16000], torch.from_numpy(tone(1.0, 16000)[:, 0]))
    assert longer.waveform[16000:].abs().max() == 0
    shorter = prepare_audio(source, 25, num_frames=10)
    assert shorter.waveform.shape == (6400,) and shorter.num_frames == 10


def test_as_comfy_round_trip():
    prepared = prepare_audio(comfy(tone(0.7, 44100, channels=2), 44100), 30)
    value = prepared.as_comfy()
    assert value["sample_rate"] == 16000
    assert value["waveform"].shape == (1, 1, prepared.waveform.shape[0]) and value["waveform"].dtype == torch.float32
    again = prepare_audio(value, 30)
    assert again.num_frames == prepared.num_frames and torch.equal(again.waveform, prepared.waveform)


# --------------------------------------------------------------------------------------------------
# Decoding


@pytest.mark.parametrize(
    ("subtype", "tolerance"),
    [("PCM_U8", 1 / 120), ("PCM_16", 1 / 30000), ("PCM_24", 1e-6), ("PCM_32", 1e-6), ("FLOAT", 1e-7), ("DOUBLE", 1e-7)],
)
def test_load_wav_sample_formats(tmp_path, subtype, tolerance):
    wave = tone(0.5, 22050, channels=2) * np.array([1.0, -0.5], np.float32)
    path = tmp_path / f"{subtype}.wav"
    sf.write(path, wave, 22050, subtype=subtype)
    loaded, rate = load_audio(str(path))
    assert rate == 22050 and loaded.dtype == torch.float32 and loaded.shape == (2, wave.shape[0])
    assert np.abs(loaded.numpy() - wave.T).max() <= tolerance


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000, 96000])
@pytest.mark.parametrize("channels", [1, 2, 6, 8])
def test_rates_and_channels_mix_down_and_resample(tmp_path, rate, channels):
    gains = np.linspace(1.0, 0.2, channels, dtype=np.float32)
    path = tmp_path / "multi.wav"
    sf.write(path, tone(0.6, rate) * gains, rate, subtype="FLOAT")
    prepared = prepare_audio(path, 25)
    assert prepared.num_frames == 15 and prepared.waveform.shape == (9600,)
    expected = tone(0.6, 16000)[:, 0] * gains.mean()
    inner = slice(400, -400)  # the resampling filter's edge transients aside
    assert np.abs(prepared.waveform.numpy()[inner] - expected[inner]).max() < 2e-3


@pytest.mark.parametrize(
    ("name", "codec", "rate", "video"),
    [
        ("clip.flac", "flac", 44100, False),
        ("clip.mp3", "libmp3lame", 44100, False),
        ("clip.ogg", "libopus", 48000, False),
        ("clip.m4a", "aac", 44100, False),
        ("clip.mp4", "aac", 44100, True),
    ],
)
def test_compressed_formats_and_video_containers(tmp_path, name, codec, rate, video):
    wave = tone(1.0, rate)[:, 0]
    path = tmp_path / name
    write_with_pyav(path, wave, rate, codec, video=video)
    loaded, loaded_rate = load_audio(path)
    assert loaded_rate == rate and loaded.shape[0] == 1
    assert abs(loaded.shape[1] - rate) < 0.1 * rate
    # Lossy codecs delay the signal by their priming samples: compare spectra rather than samples.
    n = min(loaded.shape[1], rate)
    spectrum = np.abs(np.fft.rfft(loaded[0, :n].numpy()))
    reference = np.abs(np.fft.rfft(wave[:n]))
    assert np.corrcoef(spectrum, reference)[0, 1] > 0.98


def test_float_input_above_full_scale_is_scaled_not_clipped():
    wave = tone(0.3, 16000) * 4
    loaded, _ = load_audio(comfy(wave, 16000))
    assert loaded.abs().max() == pytest.approx(1.0)
    np.testing.assert_allclose(loaded[0].numpy(), wave[:, 0] / np.abs(wave).max(), atol=1e-6)


def _bad_inputs(tmp_path: Path) -> dict:
    (tmp_path / "noise.wav").write_bytes(np.random.default_rng(0).bytes(5000))
    (tmp_path / "picture.png").write_bytes(tiny_png())
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), np.float32), 16000)
    nan_wave = tone(0.2, 16000)
    nan_wave[100] = np.nan
    sf.write(tmp_path / "nan.wav", nan_wave, 16000, subtype="FLOAT")
    inf_wave = torch.from_numpy(tone(0.2, 16000).T)[None].clone()
    inf_wave[0, 0, 5] = float("inf")
    good = torch.from_numpy(tone(0.2, 16000).T)[None]
    return {
        "missing file": (tmp_path / "nope.wav", "not found"),
        "random bytes": (tmp_path / "noise.wav", "could not decode"),
        "png": (tmp_path / "picture.png", "no audio track"),
        "empty wav": (tmp_path / "empty.wav", "no audio samples"),
        "nan in file": (tmp_path / "nan.wav", "NaN"),
        "inf in dict": ({"waveform": inf_wave, "sample_rate": 16000}, "NaN or infinite"),
        "dict without waveform": ({"sample_rate": 16000}, "missing"),
        "dict with typo": ({"waveform": good, "sampler_rate": 16000}, "sample_rate"),
        "2-d waveform": ({"waveform": good[0], "sample_rate": 16000}, r"\[batch, channels, samples\]"),
        "numpy waveform": ({"waveform": good.numpy(), "sample_rate": 16000}, "tensor"),
        "batch of two": ({"waveform": good.expand(2, -1, -1), "sample_rate": 16000}, "batch of 2"),
        "integer samples": ({"waveform": (good * 100).short(), "sample_rate": 16000}, "floating point"),
        "zero samples": ({"waveform": good[:, :, :0], "sample_rate": 16000}, "empty"),
        "zero channels": ({"waveform": good[:, :0], "sample_rate": 16000}, "empty"),
        "bad sample rate": ({"waveform": good, "sample_rate": -16000}, "sample_rate"),
        "float sample rate": ({"waveform": good, "sample_rate": "16k"}, "sample_rate"),
        "wrong type": ([0.0, 0.1], "file path or a ComfyUI AUDIO dict"),
    }


BAD_INPUTS = [
    "missing file", "random bytes", "png", "empty wav", "nan in file", "inf in dict", "dict without waveform",
    "dict with typo", "2-d waveform", "numpy waveform", "batch of two", "integer samples", "zero samples",
    "zero channels", "bad sample rate", "float sample rate", "wrong type",
]  # fmt: skip


@pytest.mark.parametrize("label", BAD_INPUTS)
def test_bad_inputs_raise_audio_error(tmp_path, label):
    inputs = _bad_inputs(tmp_path)
    assert sorted(inputs) == sorted(BAD_INPUTS)
    source, message = inputs[label]
    with pytest.raises(AudioError, match=message):
        prepare_audio(source, 25)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fps": 0}, "fps"),
        ({"num_frames": 0}, "num_frames"),
        ({"loudness_lufs": 5.0}, "loudness_lufs"),
        ({"loudness_lufs": -90}, "LUFS"),
    ],
)
def test_bad_arguments_raise_audio_error(kwargs, message):
    kwargs = {"fps": 25, **kwargs}
    with pytest.raises(AudioError, match=message):
        prepare_audio(comfy(tone(0.5, 16000), 16000), kwargs.pop("fps"), **kwargs)


# --------------------------------------------------------------------------------------------------
# Loudness


def _lufs(wave: torch.Tensor) -> float:
    return pyloudnorm.Meter(16000).integrated_loudness(wave.numpy().astype(np.float64))


@pytest.mark.parametrize("gain", [0.01, 0.3])
def test_loudness_normalisation_reaches_target(gain):
    prepared = prepare_audio(comfy(tone(3.0, 16000) * gain, 16000), 25, loudness_lufs=-23)
    assert _lufs(prepared.waveform) == pytest.approx(-23.0, abs=0.1)


def test_loudness_gain_never_clips():
    prepared = prepare_audio(comfy(tone(2.0, 16000) * 0.01, 16000), 25, loudness_lufs=-1)
    assert 0.99 < prepared.waveform.abs().max() <= 1.0
    assert _lufs(prepared.waveform) < -1.0


def test_loudness_leaves_silence_alone_and_handles_short_clips():
    silent = prepare_audio(comfy(np.zeros((16000, 1), np.float32), 16000), 25, loudness_lufs=-23)
    assert torch.equal(silent.waveform, torch.zeros(16000))
    short = prepare_audio(comfy(tone(0.2, 16000) * 0.01, 16000), 25, loudness_lufs=-23)
    looped = short.waveform.repeat(5)
    assert torch.isfinite(short.waveform).all()
    assert _lufs(looped) == pytest.approx(-23.0, abs=1.0)


# --------------------------------------------------------------------------------------------------
# Windows


def test_window_frames_clamps_at_the_ends():
    per_frame = torch.arange(4.0)[:, None, None].expand(4, 2, 3)
    windows = window_frames(per_frame, 2)
    assert windows.shape == (4, 5, 2, 3)
    assert windows[:, :, 0, 0].tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 3], [1, 2, 3, 3, 3]]
    assert torch.equal(window_frames(per_frame, 0)[:, 0], per_frame)
    single = window_frames(torch.ones(1, 7), 3)
    assert single.shape == (1, 7, 7) and single.min() == 1


def test_window_frames_matches_reference_gather():
    per_frame = torch.randn(11, 3, 4)
    assert torch.equal(window_frames(per_frame, 3), windows_reference(per_frame, 3))


# --------------------------------------------------------------------------------------------------
# Log-mel


@pytest.mark.parametrize("seconds", [0.2, 1.37, 2.0])
@pytest.mark.parametrize("fps", [24, 25, 30])
def test_logmel_shapes(seconds, fps):
    result = encode_audio(comfy(tone(seconds, 16000), 16000), LOGMEL, None, fps)
    assert isinstance(result, AudioFeatures) and result.kind == "logmel"
    assert result.num_frames == math.ceil(round(seconds * fps, 6))
    assert result.features.shape == (result.num_frames, 5, 1, 32)
    assert result.features.dtype == torch.float32 and torch.isfinite(result.features).all()


def test_logmel_is_time_aligned_and_keeps_loudness():
    silence, sound = np.zeros((16000, 1), np.float32), tone(1.0, 16000)
    features = encode_audio(comfy(np.concatenate([silence, sound, 0.25 * sound]), 16000), LOGMEL, None, 25).features
    energy = features[:, 2, 0].max(dim=1).values  # the frame itself, its loudest mel band
    assert energy[:24].max() < energy[26:49].min() - 1.0  # sound starts at frame 25
    quiet, loud = energy[51:74].mean(), energy[26:49].mean()
    assert 0.3 < loud - quiet < 1.0  # -12 dB: log10 power drops by 1.2, fixed constants keep it
    assert torch.equal(features[10, 2], features[11, 1])  # window = neighbouring frames


def test_stereo_44k_matches_mono_16k_logmel():
    stereo = encode_audio(comfy(tone(1.5, 44100, channels=2), 44100), LOGMEL, None, 25).features
    mono = encode_audio(comfy(tone(1.5, 16000), 16000), LOGMEL, None, 25).features
    assert stereo.shape == mono.shape
    # The first frame holds the resampling filter's response to the abrupt onset.
    assert (stereo - mono)[1:, 2].abs().max() < 0.01
    assert (stereo - mono).abs().max() < 0.15


# --------------------------------------------------------------------------------------------------
# wav2vec2


def tiny_wav2vec2_config() -> Wav2Vec2Config:
    return Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16),
        conv_kernel=(10, 8, 8),
        conv_stride=(5, 8, 8),  # 320 samples per step: 50 Hz like the real model
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        vocab_size=12,
    )


@pytest.fixture(scope="module")
def reference_ctc() -> Wav2Vec2ForCTC:
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(tiny_wav2vec2_config()).eval()
    with torch.no_grad():  # weights no fresh initialisation could reproduce
        for name, parameter in model.named_parameters():
            if "pos_conv_embed" in name:
                parameter.copy_(torch.randn_like(parameter))
    return model


def hallo_reference(model: Wav2Vec2Model, wave: torch.Tensor, num_frames: int, interpolate_conv: bool) -> torch.Tensor:
    """transformers' own forward, Hallo's conv interpolation patched in by a hook: [F, layers, dim]."""
    values = Wav2Vec2FeatureExtractor(do_normalize=True)(wave.numpy(), sampling_rate=16000, return_tensors="pt").input_values

    def resample_conv(_module, _args, output):
        return F.interpolate(output, size=num_frames, mode="linear", align_corners=True)

    handle = model.feature_extractor.register_forward_hook(resample_conv) if interpolate_conv else None
    with torch.no_grad():
        hidden = model(values, output_hidden_states=True).hidden_states
    if handle is not None:
        handle.remove()
    layers = torch.stack(hidden[1:], dim=2)[0]  # [T, layers, dim]
    if interpolate_conv:
        return layers
    flat = F.interpolate(layers.flatten(1).T[None], size=num_frames, mode="linear", align_corners=True)[0].T
    return flat.reshape(num_frames, *layers.shape[1:])


def assert_same_weights(loaded: torch.nn.Module, reference: torch.nn.Module) -> None:
    ours, theirs = loaded.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


def _wav2vec2_layouts(tmp_path: Path, reference: Wav2Vec2ForCTC) -> dict[str, tuple[Path, bool]]:
    """Each supported layout on disk -> (path, needs the tiny config passed explicitly)."""
    full = reference.state_dict()
    bare = {k[len("wav2vec2.") :]: v for k, v in full.items() if k.startswith("wav2vec2.")}
    old_names = {
        k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v"): v
        for k, v in full.items()
    }
    assert any(k.endswith("weight_g") for k in old_names)

    hf_safetensors = tmp_path / "hf_safetensors"
    reference.save_pretrained(hf_safetensors)
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(hf_safetensors)

    hf_bin = tmp_path / "hf_bin"
    hf_bin.mkdir()
    reference.wav2vec2.config.to_json_file(hf_bin / "config.json")
    torch.save(bare, hf_bin / "pytorch_model.bin")

    single = tmp_path / "wav2vec2_ctc.safetensors"
    save_file({k: v.contiguous() for k, v in full.items()}, single)
    old = tmp_path / "wav2vec2_old_weight_norm.safetensors"
    save_file({k: v.contiguous() for k, v in old_names.items()}, old)
    old_bin = tmp_path / "wav2vec2_old_weight_norm.bin"
    torch.save(old_names, old_bin)
    return {
        "hf folder safetensors": (hf_safetensors, False),
        "hf folder bin": (hf_bin, False),
        "single safetensors, prefix + lm_head": (single, True),
        "single safetensors, weight_g/weight_v": (old, True),
        "single bin, weight_g/weight_v": (old_bin, True),
    }


def test_wav2vec2_every_layout_loads_every_weight(tmp_path, reference_ctc):
    prepared = prepare_audio(comfy(tone(1.3, 16000), 16000), 25)
    expected = windows_reference(hallo_reference(reference_ctc.wav2vec2, prepared.waveform, prepared.num_frames, True), 2)
    for label, (path, explicit) in _wav2vec2_layouts(tmp_path, reference_ctc).items():
        if explicit:
            encoder = Wav2Vec2AudioEncoder.from_checkpoint(path, W2V, config=tiny_wav2vec2_config())
        else:
            encoder = build_audio_encoder(W2V, path)
        assert_same_weights(encoder.model, reference_ctc.wav2vec2)
        assert torch.equal(
            encoder.model.encoder.pos_conv_embed.conv.weight, reference_ctc.wav2vec2.encoder.pos_conv_embed.conv.weight
        ), label
        features = encoder.encode(prepared)
        assert features.shape == (33, 5, 2, 32), label
        torch.testing.assert_close(features, expected, atol=1e-4, rtol=1e-4, msg=label)


def test_wav2vec2_50hz_interpolation_and_preprocessor_without_normalisation(tmp_path, reference_ctc):
    folder = tmp_path / "plain"
    reference_ctc.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"do_normalize": False, "sampling_rate": 16000}))
    cfg = AudioFeatureConfig(kind="wav2vec2", layers=2, dim=32, margin=1, interpolate_conv=False)
    encoder = build_audio_encoder(cfg, folder)
    assert encoder.normalize is False
    prepared = prepare_audio(comfy(tone(1.0, 16000) * 0.5, 16000), 30)
    values = prepared.waveform[None]
    with torch.no_grad():
        hidden = torch.stack(reference_ctc.wav2vec2(values, output_hidden_states=True).hidden_states[1:], dim=2)[0]
    per_frame = F.interpolate(hidden.flatten(1).T[None], size=30, mode="linear", align_corners=True)[0].T.reshape(30, 2, 32)
    torch.testing.assert_close(encoder.encode(prepared), windows_reference(per_frame, 1), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("seconds", [0.2, 1.37, 2.0])
@pytest.mark.parametrize("fps", [24, 25, 30])
def test_wav2vec2_shapes(reference_ctc, seconds, fps):
    encoder = Wav2Vec2AudioEncoder(reference_ctc.wav2vec2, W2V)
    result = encode_audio(comfy(tone(seconds, 16000), 16000), W2V, encoder, fps)
    assert result.num_frames == math.ceil(round(seconds * fps, 6))
    assert result.features.shape == (result.num_frames, 5, 2, 32) and result.features.dtype == torch.float32


def test_wav2vec2_one_frame_shorter_than_the_receptive_field(reference_ctc):
    encoder = Wav2Vec2AudioEncoder(reference_ctc.wav2vec2, W2V)
    prepared = prepare_audio(comfy(tone(0.01, 16000), 16000), 60)  # 267 samples < 400
    assert prepared.num_frames == 1
    assert encoder.encode(prepared).shape == (1, 5, 2, 32)


def test_stereo_44k_matches_mono_16k_wav2vec2(reference_ctc):
    encoder = Wav2Vec2AudioEncoder(reference_ctc.wav2vec2, W2V)
    stereo = encode_audio(comfy(tone(1.5, 44100, channels=2), 44100), W2V, encoder, 25).features
    mono = encode_audio(comfy(tone(1.5, 16000), 16000), W2V, encoder, 25).features
    assert stereo.shape == mono.shape
    assert (stereo - mono).abs().max() < 0.02 * mono.abs().max()


def _count_model_inputs(encoder: Wav2Vec2AudioEncoder) -> tuple[list[int], object]:
    lengths: list[int] = []
    handle = encoder.model.feature_extractor.register_forward_pre_hook(lambda _m, args: lengths.append(args[0].shape[-1]))
    return lengths, handle


def test_wav2vec2_chunked_is_close_to_unchunked(reference_ctc):
    prepared = prepare_audio(comfy(tone(3.0, 16000), 16000), 25)
    whole = Wav2Vec2AudioEncoder(reference_ctc.wav2vec2, W2V).encode(prepared)
    chunked_encoder = Wav2Vec2AudioEncoder(reference_ctc.wav2vec2, W2V, chunk_seconds=1.0, context_seconds=0.4)
    lengths, handle = _count_model_inputs(chunked_encoder)
    chunked = chunked_encoder.encode(prepared)
    handle.remove()
    assert lengths == [22400, 28800, 22400]  # 1 s kept + 0.4 s of context on each inner side
    assert chunked.shape == whole.shape
    assert (chunked - whole).abs().mean() < 0.1 * whole.abs().mean()
    assert F.cosine_similarity(chunked.flatten(), whole.flatten(), dim=0) > 0.99


def test_ten_minutes_stay_within_bounded_chunks(reference_ctc):
    encoder = Wav2Vec2AudioEncoder(reference_ctc.wav2vec2, W2V)
    minutes = torch.from_numpy(np.tile(tone(2.0, 16000)[:, 0], 300))
    lengths, handle = _count_model_inputs(encoder)
    result = encode_audio({"waveform": minutes[None, None], "sample_rate": 16000}, W2V, encoder, 25)
    handle.remove()
    assert result.features.shape == (15000, 5, 2, 32)
    assert max(lengths) <= 25 * 16000 and len(lengths) == 30
    assert torch.isfinite(result.features).all()


def test_wav2vec2_rejects_code_in_pickles(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    zipped = tmp_path / "evil.bin"
    torch.save({"encoder.layer_norm.weight": Payload()}, zipped)
    legacy = tmp_path / "evil_legacy.pt"
    torch.save({"x": Payload()}, legacy, _use_new_zipfile_serialization=False)
    for path in (zipped, legacy):
        with pytest.raises(AudioError, match="refused|not a readable"):
            build_audio_encoder(AudioFeatureConfig(), path)
        assert not marker.exists()


def test_wav2vec2_checkpoint_errors(tmp_path, reference_ctc):
    single = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in reference_ctc.state_dict().items()}, single)
    with pytest.raises(AudioError, match="wrong shape"):  # the shipped config is the full-size model
        build_audio_encoder(AudioFeatureConfig(), single)
    partial = tmp_path / "partial.safetensors"
    save_file({k: v.contiguous() for k, v in reference_ctc.state_dict().items() if "layers.1." not in k}, partial)
    with pytest.raises(AudioError, match=r"missing \(\d+\): encoder\.layers\.1\."):
        Wav2Vec2AudioEncoder.from_checkpoint(partial, W2V, config=tiny_wav2vec2_config())
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(AudioError, match="config.json"):
        build_audio_encoder(W2V, tmp_path / "empty_folder")
    (tmp_path / "not_safetensors.safetensors").write_bytes(b"garbage")
    with pytest.raises(AudioError, match="safetensors"):
        build_audio_encoder(W2V, tmp_path / "not_safetensors.safetensors")
    with pytest.raises(AudioError, match="not found"):
        build_audio_encoder(W2V, tmp_path / "missing.safetensors")
    with pytest.raises(AudioError, match="2 layers of width 32"):
        Wav2Vec2AudioEncoder(reference_ctc.wav2vec2, AudioFeatureConfig())


def _meta_state_dict(layout: Path) -> dict[str, torch.Tensor]:
    tensors = json.loads(layout.read_text())["tensors"]
    return {key: torch.empty(spec["shape"], device="meta") for key, spec in tensors.items()}


def test_full_size_wav2vec2_layout_maps_onto_the_shipped_config(layouts_dir):
    with torch.device("meta"):
        model = Wav2Vec2Model(Wav2Vec2Config.from_json_file(WAV2VEC2_CONFIG_DIR / "config.json"))
    layout = _meta_state_dict(layouts_dir / "wav2vec2_base_960h.json")
    old_names = {
        k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v"): v
        for k, v in layout.items()
    }
    expected = {k: v.shape for k, v in model.state_dict().items()}
    for checkpoint in (layout, old_names):
        mapped = convert_wav2vec2_state_dict(checkpoint, model)
        assert {k: v.shape for k, v in mapped.items()} == expected
    heads = {k for k in layout if not k.startswith("wav2vec2.")}
    assert heads == {"lm_head.weight", "lm_head.bias"}
    assert len(expected) == len(layout) - len(heads)


# --------------------------------------------------------------------------------------------------
# whisper


TINY_DIMS = {
    "n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 16, "n_audio_head": 2, "n_audio_layer": 2,
    "n_vocab": 51865, "n_text_ctx": 448, "n_text_state": 16, "n_text_head": 2, "n_text_layer": 1,
}  # fmt: skip


def openai_whisper_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in OpenAI whisper's names (plus a few decoder tensors that must be ignored)."""
    g = torch.Generator().manual_seed(seed)
    d = TINY_DIMS["n_audio_state"]  # 80 mel bins, as whisper_encoder_state draws them

    def rnd(*shape, scale=0.2, centre=0.0):
        return centre + scale * torch.randn(*shape, generator=g)

    sd = whisper_encoder_state(d, TINY_DIMS["n_audio_layer"], rnd)
    sd.update({"decoder.token_embedding.weight": rnd(10, d), "decoder.ln.weight": rnd(d)})
    return sd


def openai_encoder_states(sd: dict[str, torch.Tensor], mel: torch.Tensor) -> torch.Tensor:
    """OpenAI whisper's AudioEncoder in plain torch, EchoMimic's include_embeddings: [T, layers, D]."""
    d, heads = TINY_DIMS["n_audio_state"], TINY_DIMS["n_audio_head"]
    x = F.gelu(F.conv1d(mel[None], sd["encoder.conv1.weight"], sd["encoder.conv1.bias"], padding=1))
    x = F.gelu(F.conv1d(x, sd["encoder.conv2.weight"], sd["encoder.conv2.bias"], stride=2, padding=1))
    x = x[0].T + sd["encoder.positional_embedding"]
    states = [x]
    for i in range(TINY_DIMS["n_audio_layer"]):
        w = {k[len(f"encoder.blocks.{i}.") :]: v for k, v in sd.items() if k.startswith(f"encoder.blocks.{i}.")}
        h = F.layer_norm(x, (d,), w["attn_ln.weight"], w["attn_ln.bias"])
        q = F.linear(h, w["attn.query.weight"], w["attn.query.bias"]).reshape(-1, heads, d // heads).transpose(0, 1)
        k = F.linear(h, w["attn.key.weight"]).reshape(-1, heads, d // heads).transpose(0, 1)
        v = F.linear(h, w["attn.value.weight"], w["attn.value.bias"]).reshape(-1, heads, d // heads).transpose(0, 1)
        attention = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d // heads), dim=-1) @ v
        x = x + F.linear(attention.transpose(0, 1).reshape(-1, d), w["attn.out.weight"], w["attn.out.bias"])
        h = F.layer_norm(x, (d,), w["mlp_ln.weight"], w["mlp_ln.bias"])
        x = x + F.linear(F.gelu(F.linear(h, w["mlp.0.weight"], w["mlp.0.bias"])), w["mlp.2.weight"], w["mlp.2.bias"])
        states.append(x)
    return torch.stack(states, dim=1)


def echomimic_reference(sd: dict[str, torch.Tensor], wave: torch.Tensor, num_frames: int, fps: float) -> torch.Tensor:
    """EchoMimic's audio2feat + feature2chunks, written from its description: [F, 10 * layers, D]."""
    filters = torch.from_numpy(mel_filter_bank(201, 80, 0.0, 8000.0, 16000, norm="slaney", mel_scale="slaney")).float()
    stft = torch.stft(wave, 400, 160, window=torch.hann_window(400), return_complex=True)
    log_spec = (filters.T @ stft[:, :-1].abs() ** 2).clamp(min=1e-10).log10()
    mel = (torch.maximum(log_spec, log_spec.max() - 8.0) + 4.0) / 4.0
    pieces = []
    for seek in range(0, mel.shape[1], 3000):
        segment = mel[:, seek : seek + 3000]
        kept = segment.shape[1] // 2
        segment = torch.cat([segment, torch.zeros(80, 3000 - segment.shape[1])], dim=1)
        pieces.append(openai_encoder_states(sd, segment)[:kept])
    array = torch.cat(pieces)
    chunks = []
    for i in range(num_frames):
        centre = int(i * 50 / fps)
        rows = [array[min(max(j, 0), len(array) - 1)] for j in range(centre - 4, centre + 6)]
        chunks.append(torch.cat(rows).reshape(-1, array.shape[-1]))
    return torch.stack(chunks)


@pytest.mark.parametrize(("seconds", "fps"), [(31.3, 24), (2.5, 25)])
def test_openai_whisper_checkpoint_reproduces_echomimic_features(tmp_path, seconds, fps):
    sd = openai_whisper_state_dict()
    path = tmp_path / "whisper_tiny.pt"
    torch.save({"dims": TINY_DIMS, "model_state_dict": sd}, path)
    encoder = build_audio_encoder(WHISPER, path)
    prepared = prepare_audio(comfy(tone(seconds, 16000), 16000), fps)
    features = encoder.encode(prepared)
    assert features.shape == (prepared.num_frames, 30, 16)
    with torch.no_grad():
        expected = echomimic_reference(sd, prepared.waveform[: prepared.real_samples], prepared.num_frames, fps)
    torch.testing.assert_close(features, expected, atol=2e-4, rtol=1e-4)


def test_hf_whisper_folder_loads_every_encoder_weight(tmp_path):
    torch.manual_seed(1)
    config = WhisperConfig(
        d_model=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, decoder_layers=1,
        decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=80, max_source_positions=1500,
    )  # fmt: skip
    reference = WhisperModel(config).eval()
    reference.save_pretrained(tmp_path / "whisper")
    encoder = build_audio_encoder(WHISPER, tmp_path / "whisper")
    assert_same_weights(encoder.model, reference.encoder)
    # WhisperForConditionalGeneration's names ("model." prefix, "proj_out" head) in one file.
    single = tmp_path / "whisper_generation.safetensors"
    named = {f"model.{k}": v.contiguous() for k, v in reference.state_dict().items()}
    save_file({**named, "proj_out.weight": reference.decoder.embed_tokens.weight.clone()}, single)
    assert_same_weights(WhisperAudioEncoder.from_checkpoint(single, WHISPER, config=config).model, reference.encoder)
    result = encode_audio(comfy(tone(1.0, 16000), 16000), WHISPER, encoder, 30)
    assert result.features.shape == (30, 30, 16) and result.kind == "whisper"


def test_whisper_config_mismatch_and_long_audio(tmp_path):
    path = tmp_path / "whisper_tiny.pt"
    torch.save({"dims": TINY_DIMS, "model_state_dict": openai_whisper_state_dict()}, path)
    with pytest.raises(AudioError, match="3 layers of width 16"):
        build_audio_encoder(AudioFeatureConfig(kind="whisper", layers=5, dim=384), path)
    encoder = build_audio_encoder(WHISPER, path)
    segments: list[int] = []
    handle = encoder.model.conv1.register_forward_pre_hook(lambda _m, args: segments.append(args[0].shape[-1]))
    features = encoder.encode(prepare_audio(comfy(tone(61.0, 16000), 16000), 24))
    handle.remove()
    assert segments == [3000] * 3  # 30 s + 30 s + 1 s padded to 30 s
    assert features.shape == (1464, 30, 16)


def test_full_size_whisper_layout_maps_onto_the_shipped_config(layouts_dir):
    with torch.device("meta"):
        model = WhisperEncoder(WhisperConfig.from_json_file(WHISPER_CONFIG_DIR / "config.json"))
    layout = _meta_state_dict(layouts_dir / "echomimic_whisper_tiny.json")
    mapped = convert_whisper_state_dict(layout, model)
    assert {k: v.shape for k, v in mapped.items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert len(mapped) == sum(1 for key in layout if key.startswith("encoder."))


# --------------------------------------------------------------------------------------------------
# ComfyUI AUDIO_ENCODER_OUTPUT and entry points


def core_output(steps: int, layers: int = 13, dim: int = 768, samples: int = 48000, batch: int = 1) -> dict:
    ramp = torch.arange(steps, dtype=torch.float32)[None, :, None].expand(batch, steps, dim)
    states = tuple(ramp + 1000 * i for i in range(layers))
    return {"encoded_audio": states[-1], "encoded_audio_all_layers": states, "audio_samples": samples}


def test_comfy_encoder_output_becomes_per_frame_windows():
    cfg = AudioFeatureConfig()
    features = features_from_comfy_encoder_output(core_output(149), cfg, 75, 25)
    assert features.shape == (75, 5, 12, 768)
    centre = features[:, 2]
    frames = torch.arange(75, dtype=torch.float32)
    torch.testing.assert_close(centre[:, 0, 0], frames * 148 / 74 + 1000)  # layer 1: the input embedding is dropped
    torch.testing.assert_close(centre[:, 11, 0], frames * 148 / 74 + 12000)
    # Twice the audio the frames need: only the first half of the steps is used.
    longer = features_from_comfy_encoder_output(core_output(299, samples=96000), cfg, 75, 25)
    assert longer[-1, 2, 0, 0] == pytest.approx(1000 + 149, abs=1)


@pytest.mark.parametrize(
    ("output", "cfg", "message"),
    [
        (core_output(149, layers=25, dim=1024), AudioFeatureConfig(), "wav2vec2-base"),
        (core_output(149, layers=33, dim=1280), AudioFeatureConfig(), "25 x 1024"),
        (core_output(149, batch=2), AudioFeatureConfig(), "batch of 2"),
        (core_output(149, samples=16000), AudioFeatureConfig(), "lasts 1.00 s"),
        ({"encoded_audio": torch.zeros(1, 149, 768)}, AudioFeatureConfig(), "encoded_audio_all_layers"),
        (core_output(149), AudioFeatureConfig(kind="whisper", layers=5, dim=384), "only feed wav2vec2"),
    ],
)
def test_comfy_encoder_output_mismatch(output, cfg, message):
    with pytest.raises(AudioError, match=message):
        features_from_comfy_encoder_output(output, cfg, 75, 25)


def test_entry_point_errors(reference_ctc):
    with pytest.raises(AudioError, match="need a loaded audio encoder"):
        encode_audio(comfy(tone(0.5, 16000), 16000), AudioFeatureConfig(), None, 25)
    wav2vec2 = Wav2Vec2AudioEncoder(reference_ctc.wav2vec2, W2V)
    with pytest.raises(AudioError, match="gives wav2vec2 features"):
        encode_audio(comfy(tone(0.5, 16000), 16000), LOGMEL, wav2vec2, 25)
    with pytest.raises(AudioError, match="was built for"):
        encode_audio(
            comfy(tone(0.5, 16000), 16000), AudioFeatureConfig(kind="wav2vec2", layers=2, dim=32, margin=1), wav2vec2, 25
        )
    with pytest.raises(AudioError, match="need no weights"):
        build_audio_encoder(LOGMEL, "somewhere.safetensors")
    with pytest.raises(AudioError, match="local checkpoint"):
        build_audio_encoder(AudioFeatureConfig(), None)
    with pytest.raises(AudioError, match="unknown audio feature kind"):
        build_audio_encoder(AudioFeatureConfig(kind="hubert"), "x")
    with pytest.raises(AudioError, match="mono 16000 Hz"):
        LogMelAudioEncoder(LOGMEL).encode(PreparedAudio(torch.zeros(100), num_frames=3, fps=25))
    assert isinstance(build_audio_encoder(LOGMEL), LogMelAudioEncoder)
    assert WhisperAudioEncoder.kind == "whisper"
    assert SAMPLE_RATE == 16000


def test_each_family_gets_its_original_audio_front_end():
    """Hallo pads to whole clips of its 16 frames and runs wav2vec2 once (hallo/datasets/audio_processor.py);
    EMO keeps 20 s pieces and the last frame repeated; whisper (EchoMimic) and log-mel take no options."""
    from emo_model.app.session import audio_front_end
    from emo_model.families import get_config

    assert audio_front_end(get_config("hallo")) == {"single_pass": True, "whole_clips_of": 16}
    assert audio_front_end(get_config("hallo"), 4) == {"single_pass": True, "whole_clips_of": 4}
    assert audio_front_end(get_config("emo")) == {"single_pass": False}
    assert audio_front_end(get_config("echomimic-v1")) == {} == audio_front_end(get_config("tiny"))


# ---- the originals' audio front ends: loaders and vocal separation (emo_model/audio/front.py) ----------------------
# Parity with the originals' own code: tests/test_parity_audio.py. These check the plumbing around it.


def _song(seconds: float = 0.5, rate: int = 44100) -> dict:
    t = np.arange(int(seconds * rate)) / rate
    left = 0.3 * np.sin(2 * np.pi * 180 * t) + 0.1 * np.sin(2 * np.pi * 2500 * t)
    right = 0.3 * np.sin(2 * np.pi * 180 * t) + 0.1 * np.sin(2 * np.pi * 660 * t)
    return {"waveform": torch.tensor(np.stack([left, right])[None], dtype=torch.float32), "sample_rate": rate}


def _standin_separator(monkeypatch):
    """onnxruntime 'installed' and the model file read as a per-bin gain (a stand-in of Kim_Vocal_2's signature)."""
    from emo_model.audio import vocal_separation

    monkeypatch.setattr(vocal_separation, "runtime_available", lambda: True)
    gain = torch.linspace(0.2, 1.0, 3072).reshape(1, 1, -1, 1).numpy()
    monkeypatch.setattr(vocal_separation, "onnx_model", lambda path, settings: (lambda spec: spec * gain))


def test_without_the_separator_file_the_mix_drives_and_one_line_says_what_is_missing(tmp_path):
    from emo_model.audio.front import take_audio
    from emo_model.families import hallo, memo

    (tmp_path / "hallo").mkdir()
    taken = take_audio(_song(), hallo.tiny_hallo_config(), hallo.FAMILY, tmp_path / "hallo" / "net.pth")
    assert taken.vocals is None and taken.drive is taken.mix
    assert "no Kim_Vocal_2.onnx in audio_separator/" in taken.note and "\n" not in taken.note and len(taken.note) < 200
    assert "fudan-generative-ai/hallo" in taken.note  # where the file comes from
    taken = take_audio(_song(), memo.tiny_memo_config(), memo.FAMILY, tmp_path)
    assert "memoavatar/memo" in taken.note and "misc/vocal_separator/" in taken.note and taken.vocals is None


@pytest.mark.parametrize("layout", ["hallo", "memo"])
def test_with_the_separator_file_beside_the_model_the_vocals_drive_and_the_mix_is_kept(tmp_path, monkeypatch, layout):
    from emo_model.audio.front import take_audio
    from emo_model.families import hallo, memo

    _standin_separator(monkeypatch)
    if layout == "hallo":  # pretrained_models/{hallo/net.pth, audio_separator/Kim_Vocal_2.onnx}, as Hallo's download
        (tmp_path / "hallo").mkdir()
        (tmp_path / "audio_separator").mkdir()
        (tmp_path / "audio_separator" / "Kim_Vocal_2.onnx").write_bytes(b"stand-in")
        config, family, model = hallo.tiny_hallo_config(), hallo.FAMILY, tmp_path / "hallo" / "net.pth"
    else:  # MEMO's folder with misc/vocal_separator/Kim_Vocal_2.onnx
        (tmp_path / "misc" / "vocal_separator").mkdir(parents=True)
        (tmp_path / "misc" / "vocal_separator" / "Kim_Vocal_2.onnx").write_bytes(b"stand-in")
        config, family, model = memo.tiny_memo_config(), memo.FAMILY, tmp_path
    taken = take_audio(_song(), config, family, model)
    assert taken.vocals is taken.drive and taken.mix is not taken.drive
    assert "Kim_Vocal_2" not in taken.note
    vocals, mix = taken.vocals["waveform"], taken.mix["waveform"]
    assert vocals.shape[:2] == mix.shape[:2] == (1, 1) and taken.vocals["sample_rate"] == 16000
    assert abs(vocals.shape[-1] - 8000) <= 1 and abs(mix.shape[-1] - 8000) <= 1
    assert not torch.allclose(vocals[..., :7900], mix[..., :7900], atol=1e-3)  # the stand-in changed the sound
    assert float(vocals.abs().max()) <= 0.9 + 1e-4  # audio-separator's normalisation (0.9 peak)
    # without separation (the AUDIO_ENCODER_OUTPUT path) the mix drives
    plain = take_audio(_song(), config, family, model, separate=False)
    assert plain.vocals is None and torch.equal(plain.drive["waveform"], taken.mix["waveform"])


def test_the_separator_reads_the_model_data_beside_the_file_as_audio_separator_does(tmp_path):
    import hashlib

    from emo_model.audio.vocal_separation import model_data
    from emo_model.families import hallo

    model = tmp_path / "Kim_Vocal_2.onnx"
    model.write_bytes(b"not really a model")
    settings = hallo.FAMILY.vocal_separator
    assert model_data(settings, model) == settings  # no JSON: the family's data
    entry = {"compensate": 1.5, "mdx_dim_f_set": 2048, "mdx_dim_t_set": 7, "mdx_n_fft_scale_set": 6144, "primary_stem": "Vocals"}
    (tmp_path / "mdx_model_data.json").write_text(json.dumps({hashlib.md5(model.read_bytes()).hexdigest(): entry}))
    got = model_data(settings, model)
    assert (got.n_fft, got.dim_f, got.dim_t, got.compensate) == (6144, 2048, 128, 1.5)


def test_separating_silence_is_one_line():
    from emo_model.audio.signal import AudioError
    from emo_model.audio.vocal_separation import MDXSeparator
    from emo_model.families import hallo

    separator = MDXSeparator(hallo.FAMILY.vocal_separator, lambda spec: spec)
    with pytest.raises(AudioError, match="silent"):
        separator.separate(np.zeros((2, 4410), np.float32))
    with pytest.raises(AudioError, match="found no vocals"):
        MDXSeparator(hallo.FAMILY.vocal_separator, lambda spec: spec * 0).separate(np.full((2, 4410), 0.1, np.float32))


def test_a_long_mix_is_separated_in_overlapping_chunks_that_add_up():
    """With an identity model the MDX path gives the mix back (times compensate, inside the kept bins): the Hann-weighted
    chunks and their divider add up over a mix of several chunks (10 s: 3 chunks of 5.9 s every 4.4 s)."""
    from emo_model.audio.vocal_separation import MDXSeparator
    from emo_model.families import hallo

    settings = hallo.FAMILY.vocal_separator
    t = np.arange(10 * 44100) / 44100
    mix = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 300 * t)]).astype(np.float32)
    source = MDXSeparator(settings, lambda spec: spec).demix(mix.copy())
    assert source.shape == mix.shape and np.isfinite(source).all()
    rel = np.linalg.norm(source / settings.compensate - mix) / np.linalg.norm(mix)
    assert rel < 1e-2, rel  # 1e-3: the zeroed lowest bins and Hann leakage at the ends; a wrong divider or offset is O(1)


def test_hallo2_loads_and_separates_each_60_s_piece_on_its_own(monkeypatch):
    from emo_model.audio import front as audio_front
    from emo_model.families import hallo2

    calls = []
    real = audio_front.audio_decode.load
    monkeypatch.setattr(audio_front.audio_decode, "load",
                        lambda piece, loader: calls.append(piece.samples.shape[1]) or real(piece, loader))
    wave = torch.from_numpy(np.tile(tone(1.0, 16000)[:, 0], 61))[None, None]
    taken = audio_front.take_audio({"waveform": wave, "sample_rate": 16000}, hallo2.tiny_hallo2_config(), hallo2.FAMILY, None)
    assert calls == [960000, 16000]  # pydub's 60 000 ms pieces (scripts/inference_long.py cut_audio)
    assert taken.drive["waveform"].shape[-1] == 61 * 16000


def test_audio_encode_node_returns_the_vocals_last_and_shows_the_note(caplog):
    import logging

    from comfy_harness import load_pack

    from emo_model.audio.encoder_base import AudioFeatures
    from emo_model.audio.signal import PreparedAudio
    from emo_model.families import hallo

    pack = load_pack()
    node = pack.NODE_CLASS_MAPPINGS["EMOAudioEncode"]
    assert node.RETURN_NAMES[-1] == "vocals" and node.RETURN_TYPES[-1] == "AUDIO"
    assert node.RETURN_NAMES[:4] == ("emo_audio", "audio", "frames", "fps")  # saved workflows keep their links
    mix = PreparedAudio(torch.full((640,), 0.1), num_frames=1, fps=25)
    vocals = PreparedAudio(torch.full((640,), 0.2), num_frames=1, fps=25)

    class FakeSession:
        device = torch.device("cpu")
        config = hallo.tiny_hallo_config()

        def __init__(self, features):
            self.features = features

        def to(self, device):
            return self

        def encode_audio(self, audio, **kwargs):
            return self.features

    separated = AudioFeatures(torch.zeros(1, 5, 2, 32), 25.0, 1, mix, "wav2vec2", vocals=vocals)
    out = node().encode(FakeSession(separated), _song(), 0.0, "off")
    assert torch.equal(out["result"][1]["waveform"], mix.as_comfy()["waveform"])
    assert torch.equal(out["result"][4]["waveform"], vocals.as_comfy()["waveform"])
    assert "separated vocals" in out["ui"]["emo_summary"][0]
    missing = AudioFeatures(torch.zeros(1, 5, 2, 32), 25.0, 1, mix, "wav2vec2", note="vocal separation off: no X; fetch X")
    with caplog.at_level(logging.WARNING, logger="ComfyUI-EMO"):
        out = node().encode(FakeSession(missing), _song(), 0.0, "off")
    assert torch.equal(out["result"][4]["waveform"], mix.as_comfy()["waveform"])  # no separation: the mix drove
    assert "vocal separation off: no X" in out["ui"]["emo_summary"][0] and "fetch X" not in out["ui"]["emo_summary"][0]
    assert any("vocal separation off: no X; fetch X" in r.getMessage() for r in caplog.records)


def test_the_session_drives_the_features_with_the_vocals_and_keeps_the_mix_for_the_video(tmp_path, monkeypatch):
    from comfy_harness import tiny_wav2vec2_folder

    from emo_model.app.session import Session
    from emo_model.audio.encoders import build_audio_encoder
    from emo_model.network.model import EMOModel

    _standin_separator(monkeypatch)
    model = EMOModel("tiny-hallo").eval()
    encoder = build_audio_encoder(model.config.audio, tiny_wav2vec2_folder(tmp_path / "wav2vec2"))
    (tmp_path / "hallo").mkdir()
    session = Session(model, None, encoder, torch.device("cpu"), info={"path": str(tmp_path / "hallo" / "net.pth")})
    plain = session.encode_audio(_song(1.0), fps=25)  # no separator file yet: the mix drives, one line says why
    assert plain.vocals is None and "no Kim_Vocal_2.onnx" in plain.note
    (tmp_path / "audio_separator").mkdir()
    (tmp_path / "audio_separator" / "Kim_Vocal_2.onnx").write_bytes(b"stand-in")
    separated = session.encode_audio(_song(1.0), fps=25)
    assert separated.vocals is not None and separated.note in ("", audio_decode_soxr_note())
    assert separated.num_frames == plain.num_frames == 25
    assert torch.equal(separated.audio.waveform, plain.audio.waveform)  # the video keeps the whole mix
    assert separated.vocals.waveform.shape == separated.audio.waveform.shape
    assert not torch.allclose(separated.features[:], plain.features[:], atol=1e-4)  # the vocals drove the features


def audio_decode_soxr_note() -> str:
    from emo_model.audio import decode as audio_decode

    return "" if audio_decode.soxr_available() else audio_decode.SOXR_MISSING

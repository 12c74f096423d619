"""Audio frame arithmetic, per-frame windows, ComfyUI AUDIO input and the cut to whole video frames (one small wav)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from emo_model.audio.signal import (
    AudioError,
    PreparedAudio,
    _peak_and_finite,
    ceil_frames,
    frame_samples,
    load_audio,
    normalize_loudness,
    num_video_frames,
    prepare_audio,
    resample,
    window_frames,
)


def _refusal(call) -> str:
    with pytest.raises(AudioError) as exc:
        call()
    return str(exc.value)


# ---- frame arithmetic ---------------------------------------------------------------------------------


def test_ceil_frames_forgives_float_error_up_to_1e_6():
    assert [ceil_frames(x) for x in (0.0, 2.4, 2.5, 1.9999995, 2.0000005, 2.00001)] == [0, 3, 3, 2, 2, 3]
    assert ceil_frames(1e-6) == 0  # exactly 1e-6 from 0 (1e-6 - 0 == 1e-6 in floats): still counts as 0


def test_num_video_frames_is_the_ceiling_of_the_duration_in_frames():
    assert num_video_frames(16000, 16000, 25) == 25  # 1 s at 25 fps
    assert num_video_frames(16001, 16000, 25) == 26  # one sample more starts a frame
    assert num_video_frames(15999, 16000, 25) == 25
    assert num_video_frames(1, 16000, 25) == 1 and num_video_frames(0, 16000, 25) == 1  # at least one frame
    assert num_video_frames(48000, 48000, 29.97) == 30  # 29.97 frames: the last one partly covered
    assert num_video_frames(10, 1, 0.1 * 3) == 3  # 10 s at 0.30000000000000004 fps: 3.0000000000000004 is 3


def test_frame_arithmetic_refuses_bad_numbers_in_one_line():
    for fps in (0, -1.0, math.nan, math.inf, True, "25", None):
        assert _refusal(lambda: num_video_frames(10, 16000, fps)) == (
            f"fps must be a positive number of video frames per second, got {fps!r}"
        )
        assert _refusal(lambda: frame_samples(10, fps)).startswith("fps must be a positive number")
    assert _refusal(lambda: num_video_frames(-1, 16000, 25)) == "num_samples must be >= 0, got -1"
    assert _refusal(lambda: num_video_frames(10, 0, 25)) == "sample_rate must be a positive integer, got 0"
    assert num_video_frames(10, 1, 1e-9) == 1  # the smallest positive fps is accepted


def test_frame_samples_rounds_to_the_nearest_sample():
    assert frame_samples(25, 25) == 16000 and frame_samples(25, 25.0, 48000) == 48000
    assert frame_samples(1, 30) == 533 and frame_samples(2, 30) == 1067  # 533.33 and 1066.67
    assert frame_samples(3, 30, 48000) == 4800 and frame_samples(0, 30) == 0


# ---- windows ---------------------------------------------------------------------------------------------


def test_window_frames_stacks_neighbours_with_the_edges_repeated():
    assert window_frames(torch.arange(4), 1).tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]
    assert window_frames(torch.arange(3), 0).tolist() == [[0], [1], [2]]
    assert window_frames(torch.tensor([10, 20]), 2).tolist() == [[10, 10, 10, 20, 20], [10, 10, 20, 20, 20]]
    per_frame = torch.tensor([[1.0, -1.0], [2.0, -2.0], [3.0, -3.0]])  # [F=3, C=2]
    w = window_frames(per_frame, 1)
    assert w.shape == (3, 3, 2) and w[0].tolist() == [[1.0, -1.0], [1.0, -1.0], [2.0, -2.0]]
    assert w[2].tolist() == [[2.0, -2.0], [3.0, -3.0], [3.0, -3.0]]


def test_window_frames_refuses_a_negative_margin_and_no_frames():
    with pytest.raises(ValueError) as exc:
        window_frames(torch.arange(3), -1)
    assert str(exc.value) == "margin must be >= 0, got -1"
    with pytest.raises(ValueError) as exc:
        window_frames(torch.zeros(0, 4), 1)
    assert str(exc.value) == "window_frames needs at least one frame"


# ---- ComfyUI AUDIO ----------------------------------------------------------------------------------------


def _audio(waveform, sample_rate=16000):
    return {"waveform": waveform, "sample_rate": sample_rate}


def test_an_audio_dict_gives_its_one_clip_as_float32_with_its_rate():
    waveform = torch.tensor([[[0.5, -0.25, 0.0], [0.1, 0.2, 0.3]]], dtype=torch.float64)
    out, rate = load_audio(_audio(waveform, 44100))
    assert out.dtype == torch.float32 and out.shape == (2, 3) and rate == 44100 and type(rate) is int
    torch.testing.assert_close(out, waveform[0].float())
    assert load_audio(_audio(torch.tensor([[[1.0, -1.0]]])))[0].tolist() == [[1.0, -1.0]]  # peak 1: kept
    assert load_audio(_audio(torch.zeros(1, 1, 4), 1))[1] == 1  # the smallest sample rate


def test_a_loud_float_source_is_scaled_to_peak_1_never_clipped():
    out, _ = load_audio(_audio(torch.tensor([[[0.5, -2.0, 1.0]]])))
    assert out.tolist() == [[0.25, -1.0, 0.5]]


def test_the_length_check_sees_samples_and_rate_of_a_dict():
    seen = []
    load_audio(_audio(torch.zeros(1, 1, 7), 8000), check_length=lambda n, sr, label: seen.append((n, sr, label)))
    assert seen == [(7, 8000, "")]
    with pytest.raises(AudioError):
        load_audio(_audio(torch.zeros(1, 2, 0), 8000), check_length=lambda n, sr, label: seen.append((n, sr, label)))
    assert seen == [(7, 8000, "")]  # no samples: nothing to check, the empty audio is refused


def test_the_length_check_sees_a_files_recorded_and_decoded_length(tmp_path):
    import soundfile

    soundfile.write(tmp_path / "half.wav", np.zeros(8000, dtype=np.float32), 16000)  # 0.5 s at 16 kHz
    seen = []
    waveform, rate = load_audio(tmp_path / "half.wav", check_length=lambda n, sr, label: seen.append((n, sr, label)))
    assert waveform.shape == (1, 8000) and rate == 16000
    assert seen[0] == (8000, 16000, "declared") and seen[-1] == (8000, 16000, "decoding")

    def refuse(n, sr, label):
        raise AudioError(f"too long: {n} samples ({label})")

    assert _refusal(lambda: load_audio(tmp_path / "half.wav", check_length=refuse)) == "too long: 8000 samples (declared)"


@pytest.mark.parametrize(
    "audio,line",
    [
        ({"waveform": torch.zeros(1, 1, 4)},
         "AUDIO dict is missing ['sample_rate'] (has ['waveform']); expected ComfyUI's "
         '{"waveform": tensor [batch, channels, samples], "sample_rate": int}.'),
        ({}, "AUDIO dict is missing ['sample_rate', 'waveform'] (has []); expected ComfyUI's "
             '{"waveform": tensor [batch, channels, samples], "sample_rate": int}.'),
        (_audio(torch.zeros(1, 4)), "AUDIO waveform must be a tensor [batch, channels, samples], got (1, 4)."),
        (_audio([[[0.0]]]), "AUDIO waveform must be a tensor [batch, channels, samples], got list."),
        (_audio(torch.zeros(2, 1, 4)), "AUDIO holds a batch of 2 clips; one clip drives one video. Split the batch first."),
        (_audio(torch.zeros(1, 1, 4, device="meta")),
         "AUDIO waveform is on the 'meta' device (a shape without samples: a failed upstream node); fix that node."),
        (_audio(torch.zeros(1, 1, 4, dtype=torch.int16)), "AUDIO waveform must be floating point in -1..1, got dtype torch.int16."),
        (_audio(torch.zeros(1, 1, 4), 0), "AUDIO sample_rate must be a positive integer, got 0."),
        (_audio(torch.zeros(1, 1, 4), True), "AUDIO sample_rate must be a positive integer, got True."),
        (_audio(torch.zeros(1, 1, 4), 16000.0), "AUDIO sample_rate must be a positive integer, got 16000.0."),
        (_audio(torch.zeros(1, 1, 0)), "the audio is empty (shape (1, 0)); use a clip with at least one sample."),
        (_audio(torch.zeros(1, 0, 4)), "the audio is empty (shape (0, 4)); use a clip with at least one sample."),
        (_audio(torch.tensor([[[0.0, math.nan]]])),
         "the audio contains NaN or infinite samples; re-export it or fix the node that produced it."),
        (_audio(torch.tensor([[[-math.inf, 0.0]]])),
         "the audio contains NaN or infinite samples; re-export it or fix the node that produced it."),
        (5, "expected an audio file path or a ComfyUI AUDIO dict, got int."),
    ],
)
def test_a_bad_audio_input_is_refused_in_one_line(audio, line):
    assert _refusal(lambda: load_audio(audio)) == line


def test_peak_and_finite_read_every_chunk_of_a_long_waveform():
    long = torch.zeros((1 << 20) + 3)
    assert _peak_and_finite(long) == (0.0, True)
    long[5] = 2.0  # in the first chunk: remembered while the second is read
    assert _peak_and_finite(long) == (2.0, True)
    long[-1] = -3.0  # in the second chunk, negative
    assert _peak_and_finite(long) == (3.0, True)
    long[(1 << 20) + 1] = math.inf
    peak, finite = _peak_and_finite(long)
    assert math.isnan(peak) and finite is False
    assert _peak_and_finite(torch.tensor([[0.5], [-0.25]])) == (0.5, True)  # any shape


# ---- resampling, loudness ---------------------------------------------------------------------------------


def test_resample_keeps_16k_and_halves_32k():
    x = torch.arange(8.0)
    assert resample(x, 16000) is x
    out = resample(torch.ones(2, 64, dtype=torch.float32), 32000)
    assert out.shape == (2, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out[:, 8:24], torch.ones(2, 16), atol=1e-2, rtol=0)  # a constant stays constant (away from the edges)
    assert resample(torch.ones(4410), 44100).shape == (1600,)  # 160 / 441: not a whole ratio


def _sine(seconds: float, amplitude: float = 0.1) -> torch.Tensor:
    t = torch.arange(int(16000 * seconds), dtype=torch.float32) / 16000
    return amplitude * torch.sin(2 * math.pi * 440 * t)


def test_loudness_target_sets_the_level_in_decibels():
    a, b = normalize_loudness(_sine(1.0), -23.0), normalize_loudness(_sine(1.0), -29.0)
    ratio = float(a.abs().max() / b.abs().max())
    assert ratio == pytest.approx(10 ** (6 / 20), rel=1e-4)  # 6 dB louder: twice the amplitude (x1.995)
    short = normalize_loudness(_sine(0.1), -23.0)  # shorter than one 400 ms block: measured on itself looped
    assert float(short.abs().max()) == pytest.approx(float(a.abs().max()), rel=2e-2)


def test_loudness_of_a_clip_just_under_one_block_is_measured_on_the_loop():
    """pyloudnorm refuses anything shorter than its 400 ms block (6400 samples at 16 kHz)."""
    level = float(normalize_loudness(_sine(1.0), -23.0).abs().max())
    for n in (6399, 6400, 6401):
        t = torch.arange(n, dtype=torch.float32) / 16000
        short = normalize_loudness(0.1 * torch.sin(2 * math.pi * 440 * t), -23.0)
        assert float(short.abs().max()) == pytest.approx(level, rel=1e-3)


def test_loudness_never_pushes_the_peak_over_1_and_leaves_silence_alone():
    loud = normalize_loudness(_sine(1.0), 0.0)  # 0 LUFS of a sine needs a peak above 1: limited to exactly 1
    assert float(loud.abs().max()) == pytest.approx(1.0, abs=1e-6)
    silence = torch.zeros(16000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # measuring silence (log of 0) prints no numpy warning
        assert normalize_loudness(silence, -23.0) is silence


def test_loudness_target_bounds():
    assert normalize_loudness(_sine(0.5), -70.0).shape == normalize_loudness(_sine(0.5), 0.0).shape == (8000,)
    for bad in (-70.5, 0.5, math.nan, True):
        assert _refusal(lambda: normalize_loudness(_sine(0.5), bad)) == (
            f"loudness_lufs must be between -70 and 0 LUFS (suggested -23.0), got {bad!r}"
        )


# ---- cutting to whole frames --------------------------------------------------------------------------------


def test_prepared_audio_has_exactly_the_samples_of_its_frames():
    one_second = _audio(torch.full((1, 2, 16000), 0.5))
    p = prepare_audio(one_second, 25)
    assert (p.num_frames, p.waveform.shape[0], p.real_samples, p.duration, p.fps) == (25, 16000, 16000, 1.0, 25.0)
    longer = prepare_audio(one_second, 25, num_frames=30)  # padded with silence to 30 frames = 19200 samples
    assert longer.waveform.shape[0] == 19200 and longer.real_samples == 16000 and longer.duration == 1.2
    assert float(longer.waveform[15999]) == 0.5 and not longer.waveform[16000:].any()
    shorter = prepare_audio(one_second, 25, num_frames=10)  # cut to 6400 samples
    assert shorter.waveform.shape[0] == shorter.real_samples == 6400
    assert prepare_audio(one_second, 25, num_frames=1).waveform.shape[0] == 640  # the smallest frame count
    assert prepare_audio(one_second, 30).num_frames == 30 and prepare_audio(one_second, 30).waveform.shape[0] == 16000


def test_prepared_audio_is_normalised_to_the_loudness_asked_for():
    t = torch.arange(16000, dtype=torch.float32) / 16000
    tone = _audio((0.1 * torch.sin(2 * math.pi * 440 * t))[None, None])
    louder, quieter = prepare_audio(tone, 25, loudness_lufs=-23.0), prepare_audio(tone, 25, loudness_lufs=-29.0)
    ratio = float(louder.waveform.abs().max() / quieter.waveform.abs().max())
    assert ratio == pytest.approx(10 ** (6 / 20), rel=1e-4)  # 6 dB apart: twice the amplitude
    assert float(prepare_audio(tone, 25).waveform.abs().max()) == pytest.approx(0.1, abs=1e-4)  # None: untouched


def test_prepared_audio_is_the_mean_of_the_channels_at_16k():
    stereo = torch.stack([torch.full((48000,), 0.6), torch.full((48000,), 0.2)])[None]  # 1 s at 48 kHz
    p = prepare_audio(_audio(stereo, 48000), 25)
    assert p.num_frames == 25 and p.waveform.shape == (16000,) and p.sample_rate == 16000
    torch.testing.assert_close(p.waveform[100:-100], torch.full((15800,), 0.4), atol=1e-3, rtol=0)


def test_prepared_audio_from_a_cut_does_not_share_the_source_memory():
    source = torch.full((1, 1, 16000), 0.5)
    p = prepare_audio(_audio(source), 25, num_frames=10)
    source.fill_(0.0)
    assert float(p.waveform.min()) == 0.5


def test_prepare_audio_refuses_a_frame_count_that_is_not_a_positive_integer():
    for bad in (0, -3, True, 2.0, "10"):
        assert _refusal(lambda: prepare_audio(_audio(torch.zeros(1, 1, 100)), 25, num_frames=bad)) == (
            f"num_frames must be a positive integer or None, got {bad!r}"
        )
    assert _refusal(lambda: prepare_audio(_audio(torch.zeros(1, 1, 100)), 0)).startswith("fps must be a positive number")


def test_prepared_audio_as_comfy_and_real_samples():
    p = PreparedAudio(waveform=torch.arange(4.0, dtype=torch.float64), num_frames=1, fps=4000.0)
    comfy = p.as_comfy()
    assert comfy["waveform"].shape == (1, 1, 4) and comfy["waveform"].dtype == torch.float32 and comfy["sample_rate"] == 16000
    assert p.real_samples == 4 and PreparedAudio(torch.zeros(4), 1, 4000.0, source_samples=9).real_samples == 4
    assert PreparedAudio(torch.zeros(4), 1, 4000.0, source_samples=3).real_samples == 3
    assert PreparedAudio(torch.zeros(8000), 1, 2.0, sample_rate=8000).duration == 1.0

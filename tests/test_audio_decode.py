"""Decoding an audio file (``audio/signal.py``): PyAV frames to float32 in every sample format, a container's declared
length, and each refusal's exact line; stand-in frames and containers where a real file cannot show the case."""

from __future__ import annotations

import os
from types import SimpleNamespace

import av
import numpy as np
import pytest

from emo_model.audio import signal
from emo_model.audio.signal import AudioError, _decode_file, _frame_to_float, declared_samples


def frame(data, name, planar, channels=2, rate=16000):
    return SimpleNamespace(to_ndarray=lambda: np.asarray(data), layout=SimpleNamespace(nb_channels=channels),
                           format=SimpleNamespace(is_planar=planar, name=name), sample_rate=rate)


# By hand: full scale is 2**(bits - 1) for signed formats; u8 is offset by 128. Packed data is one row of interleaved
# samples (L0 R0 L1 R1 ..), planar one row per channel.
@pytest.mark.parametrize("name,planar,data,want", [
    ("s16", False, [[0, 16384, -32768, 32767]], [[0.0, -1.0], [0.5, 32767 / 32768]]),
    ("s16p", True, [[0, -32768], [16384, 32767]], [[0.0, -1.0], [0.5, 32767 / 32768]]),
    ("u8", False, [[128, 0, 255, 192]], [[0.0, 127 / 128], [-1.0, 0.5]]),
    ("u8p", True, [[128, 255], [0, 192]], [[0.0, 127 / 128], [-1.0, 0.5]]),
    ("s32p", True, [[2**30, -(2**31)], [0, 2**29]], [[0.5, -1.0], [0.0, 0.25]]),
    ("s64", False, [[2**62, 0, -(2**63), 2**61]], [[0.5, -1.0], [0.0, 0.25]]),
    ("flt", False, np.array([[0.25, -0.5, 1.5, 0.0]], np.float32), [[0.25, 1.5], [-0.5, 0.0]]),
    ("fltp", True, np.array([[0.25, 1.5], [-0.5, 0.0]], np.float32), [[0.25, 1.5], [-0.5, 0.0]]),
    ("dblp", True, np.array([[0.25, 1.5], [-0.5, 0.0]], np.float64), [[0.25, 1.5], [-0.5, 0.0]]),
])
def test_frame_to_float_scales_every_sample_format_to_float32(name, planar, data, want):
    data = np.asarray(data, dtype=np.asarray(data).dtype if isinstance(data, np.ndarray) else
                      {"s16": np.int16, "u8": np.uint8, "s32": np.int32, "s64": np.int64}[name.rstrip("p")])
    got = _frame_to_float(frame(data, name, planar))
    assert got.dtype == np.float32 and got.shape == (2, 2)
    np.testing.assert_array_equal(got, np.asarray(want, np.float32))


# ---- the declared length, from stand-in containers ----------------------------------------------------------------

def container(streams=1, codec_rate=16000, stream_rate=16000, duration=None, time_base=None, container_duration=None):
    audio = [SimpleNamespace(codec_context=SimpleNamespace(sample_rate=codec_rate), sample_rate=stream_rate,
                             duration=duration, time_base=time_base)][:streams]
    return SimpleNamespace(streams=SimpleNamespace(audio=audio), duration=container_duration)


@pytest.mark.parametrize("box,want", [
    ({"duration": 48000, "time_base": 1 / 16000}, (48000, 16000)),  # the stream's own length: 3 s
    # the stream's rate when the codec has none
    ({"codec_rate": 0, "stream_rate": 8000, "duration": 4, "time_base": 0.5}, (16000, 8000)),
    ({"duration": 1, "time_base": 0.25}, (4000, 16000)),  # a length of one time-base unit still counts
    ({"duration": 0, "time_base": 0.5, "container_duration": 2 * av.time_base}, (32000, 16000)),  # 0: the container's 2 s
    ({"duration": None, "time_base": 0.5, "container_duration": 1}, (0, 16000)),  # 1 microsecond: 0.016 samples
    ({"duration": 5, "time_base": None, "container_duration": 3 * av.time_base}, (48000, 16000)),
    ({"duration": None, "container_duration": 0}, None),
    ({"duration": None, "container_duration": None}, None),
    ({"codec_rate": 0, "stream_rate": 0, "duration": 48000, "time_base": 1 / 16000}, None),
    ({"streams": 0}, None),
])
def test_declared_samples_read_the_stream_then_the_container(monkeypatch, box, want):
    calls = []

    class Opened:  # what av.open returns: a context manager giving the container
        def __init__(self, path, mode="r"):
            calls.append((path, mode))

        def __enter__(self):
            return container(**box)

        def __exit__(self, *a):
            return None

    monkeypatch.setattr(signal.av, "open", Opened)
    assert declared_samples("a.wav") == want
    assert calls == [("a.wav", "r")]


# ---- whole files ------------------------------------------------------------------------------------------------------

def write_wav(path, samples: np.ndarray, rate=16000, frame_size=1024):
    """A float32 stereo wav (pcm_f32le) written in frames of ``frame_size`` samples."""
    with av.open(os.fspath(path), "w", format="wav") as out:
        stream = out.add_stream("pcm_f32le", rate=rate, layout="stereo")
        for start in range(0, samples.shape[1], frame_size):
            part = np.ascontiguousarray(samples[:, start:start + frame_size].T.reshape(1, -1), dtype=np.float32)
            f = av.AudioFrame.from_ndarray(part, format="flt", layout="stereo")
            f.sample_rate = rate
            for packet in stream.encode(f):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def test_a_file_decodes_to_its_samples_and_the_peak_of_every_frame(tmp_path):
    samples = np.zeros((2, 5000), np.float32)
    samples[0, :100] = 0.25
    samples[1, 4000] = -0.75  # the peak, in a later frame
    write_wav(tmp_path / "a.wav", samples)
    array, rate, peak = _decode_file(tmp_path / "a.wav")
    assert (rate, peak) == (16000, 0.75) and array.dtype == np.float32
    np.testing.assert_array_equal(array, samples)


def test_a_file_of_one_frame_decodes(tmp_path):
    samples = np.full((2, 100), 0.5, np.float32)
    write_wav(tmp_path / "short.wav", samples)
    array, rate, peak = _decode_file(tmp_path / "short.wav")
    assert (rate, peak) == (16000, 0.5)
    np.testing.assert_array_equal(array, samples)


def refusal(path, **kw) -> str:
    with pytest.raises(AudioError) as e:
        _decode_file(path, **kw)
    return str(e.value)


def test_a_folder_a_fifo_and_a_missing_file_are_refused_in_one_line(tmp_path):
    assert refusal(tmp_path) == (f"'{tmp_path}' is a folder, not an audio file; give the file in it "
                                 "(wav, flac, mp3, ogg, m4a or a video).")
    os.mkfifo(tmp_path / "pipe")
    assert refusal(tmp_path / "pipe") == (f"'{tmp_path / 'pipe'}' is not a regular file (a pipe, device or socket); "
                                          "give an audio file.")
    assert refusal(tmp_path / "none.wav") == (f"audio file not found: '{tmp_path / 'none.wav'}'. Check the path (or pick the "
                                              "file in the LoadAudio node).")


def test_a_corrupt_file_names_ffmpegs_reason(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 4)
    with pytest.raises(av.FFmpegError) as raw:
        av.open(os.fspath(tmp_path / "bad.wav"))
    assert refusal(tmp_path / "bad.wav") == (f"could not decode 'bad.wav' as audio ({raw.value.strerror}). The file is "
                                             "corrupt or not an audio/video file; re-export it as wav or flac.")


def test_a_file_that_cannot_be_read_says_why(tmp_path, monkeypatch):
    (tmp_path / "a.wav").write_bytes(b"x")

    def unreadable(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(signal.av, "open", unreadable)
    assert refusal(tmp_path / "a.wav") == f"could not read '{tmp_path / 'a.wav'}': [Errno 13] Permission denied"


def test_a_video_without_sound_is_refused(tmp_path):
    with av.open(os.fspath(tmp_path / "v.mp4"), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width = stream.height = 16
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    assert refusal(tmp_path / "v.mp4") == ("'v.mp4' has no audio track (it holds 1 other stream(s)). Use an audio file "
                                           "(wav, flac, mp3, ogg, m4a) or a video with sound.")


def with_frames(monkeypatch, tmp_path, chunks):
    """A real file whose decoded frames read as ``chunks`` (one per frame; the file has enough frames)."""
    write_wav(tmp_path / "a.wav", np.zeros((2, 1024 * len(chunks)), np.float32))
    given = iter(chunks)
    monkeypatch.setattr(signal, "_frame_to_float", lambda frame: next(given))
    return tmp_path / "a.wav"


def test_empty_frames_are_skipped(monkeypatch, tmp_path):
    path = with_frames(monkeypatch, tmp_path, [np.zeros((2, 0), np.float32), np.full((2, 3), 0.5, np.float32)])
    array, _, peak = _decode_file(path)
    assert array.shape == (2, 3) and peak == 0.5


def test_a_channel_count_change_and_non_finite_samples_are_refused(monkeypatch, tmp_path):
    path = with_frames(monkeypatch, tmp_path, [np.zeros((2, 3), np.float32), np.zeros((1, 3), np.float32)])
    assert refusal(path) == "'a.wav' changes its channel count mid-stream (2 -> 1); re-export it as wav or flac."
    path = with_frames(monkeypatch, tmp_path, [np.zeros((2, 3), np.float32), np.full((2, 3), np.nan, np.float32)])
    assert refusal(path) == "the audio contains NaN or infinite samples; re-export it or fix the node that produced it."

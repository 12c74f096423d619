"""The video writer's arguments, its cleanup, and the audio it hands the encoder: trimmed / padded to the frames."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import av

from emo_model.video_io import VideoError, VideoWriter, write_video


def _frames(n: int) -> torch.Tensor:
    return torch.rand(n, 16, 16, 3, generator=torch.Generator().manual_seed(n))


def test_write_video_hands_the_encoder_options_to_the_writer(tmp_path):
    with pytest.raises(VideoError) as exc:
        write_video(tmp_path / "a.mp4", _frames(2), 25, threads=-1)
    assert str(exc.value) == "threads must be None or an integer >= 0, got -1"
    with pytest.raises(VideoError, match="encoding failed"):  # x264 has no such preset
        write_video(tmp_path / "b.mp4", _frames(2), 25, preset="no-such-preset")
    assert os.listdir(tmp_path) == []


class _Recorder:
    """Collects the audio samples the writer sends to the encoder (the writer's only audio output)."""

    def __init__(self, writer: VideoWriter):
        self.chunks: list[np.ndarray] = []
        self.pts: list[int] = []
        self._stream, self._channels = writer._astream, writer._audio.shape[0]
        writer._astream = self  # the writer encodes through us

    def encode(self, frame):
        if frame is not None:
            data = frame.to_ndarray()  # planar: [channels, n]; packed: [1, n * channels], interleaved
            self.chunks.append((data if frame.format.is_planar else data.reshape(-1, self._channels).T).copy())
            self.pts.append(frame.pts)
        return self._stream.encode(frame)

    @property
    def samples(self) -> np.ndarray:
        return np.concatenate(self.chunks, axis=1)


def _writer_with_audio(tmp_path: Path, seconds: float, fps=25, sr=16000, channels=1):
    ramp = (np.arange(int(seconds * sr) * channels, dtype=np.float32).reshape(channels, -1) % 1000) / 1000
    w = VideoWriter(tmp_path / "a.mp4", fps, audio=(torch.from_numpy(ramp), sr))
    return w, ramp


@pytest.mark.parametrize("seconds", [0.3, 1.0])  # longer than the video: trimmed; shorter: padded with silence
def test_the_encoder_gets_exactly_the_samples_of_the_frames_written(tmp_path, seconds):
    w, ramp = _writer_with_audio(tmp_path, seconds)
    w.write(_frames(1))  # opens the streams: 1 frame at 25 fps = 640 samples at 16 kHz
    rec = _Recorder(w)
    w.write(_frames(4))  # up to 5 frames = 3200 samples
    assert rec.samples.shape == (1, 3200 - 640) and rec.pts == [640]
    w.write(_frames(7))  # 12 frames = 7680 samples
    w.close()
    got = rec.samples
    assert got.shape == (1, 7680 - 640) and rec.pts == [640, 3200]
    have = ramp.shape[1]  # 4800 (0.3 s) or 16000 (1 s)
    real = min(have, 7680) - 640
    np.testing.assert_array_equal(got[:, :real], ramp[:, 640 : 640 + real])
    assert not got[:, real:].any()  # silence after the source ends


def test_stereo_audio_reaches_the_encoder_channel_by_channel(tmp_path):
    w, ramp = _writer_with_audio(tmp_path, 1.0, channels=2)
    w.write(_frames(1))
    rec = _Recorder(w)
    w.write(_frames(2))
    w.close()
    np.testing.assert_array_equal(rec.samples, ramp[:, 640:1920])


def test_ntsc_frames_round_to_the_nearest_sample(tmp_path):
    w, ramp = _writer_with_audio(tmp_path, 1.0, fps=29.97)  # 30000/1001 fps: one frame = 533.87 samples
    w.write(_frames(1))  # round(533.866...) = 534
    rec = _Recorder(w)
    w.write(_frames(1))  # 2 frames: round(1067.73) = 1068
    w.write(_frames(1))  # 3 frames: round(1601.6) = 1602
    w.close()
    assert rec.pts == [534, 1068] and rec.samples.shape == (1, 1602 - 534)
    assert w.duration == pytest.approx(3 * 1001 / 30000)


def test_a_closed_or_aborted_writer_refuses_more_work_in_one_line(tmp_path):
    w = VideoWriter(tmp_path / "a.mp4", 25)
    w.write(_frames(2))
    w.close()
    for call in (lambda: w.write(_frames(1)), w.close):
        with pytest.raises(VideoError) as exc:
            call()
        assert str(exc.value) == "VideoWriter is already closed or aborted"
    aborted = VideoWriter(tmp_path / "b.mp4", 25)
    aborted.abort()
    with pytest.raises(VideoError, match="^VideoWriter is already closed or aborted$"):
        aborted.write(_frames(1))
    assert os.listdir(tmp_path) == ["a.mp4"]


def test_an_aac_rate_the_encoder_lacks_is_resampled_to_48k(tmp_path):
    def rate(sr: int) -> int:
        w = VideoWriter(tmp_path / "a.mp4", 25, audio=(torch.zeros(1, 100), sr))
        w.abort()
        return w.audio_sample_rate

    assert rate(12345) == 48000 and rate(22050) == 22050  # 22050 is one of AAC's rates, 12345 is not


def _stereo_ramp(sr: int, seconds: float, peak: float) -> np.ndarray:
    n = int(sr * seconds)
    return np.stack([np.linspace(-peak, peak, n), np.linspace(peak, -peak, n)]).astype(np.float32)


def test_a_packed_float_encoder_gets_the_samples_interleaved(tmp_path):
    """libopus takes packed float ("flt"): 48 kHz, 1920 samples a frame at 25 fps."""
    ramp = _stereo_ramp(48000, 0.5, 0.9)
    w = VideoWriter(tmp_path / "a.webm", 25, format="webm", audio=(torch.from_numpy(ramp), 48000))
    w.write(_frames(1))
    rec = _Recorder(w)
    w.write(_frames(2))
    w.close()
    assert w._audio_fmt == "flt" and rec.pts == [1920]
    np.testing.assert_array_equal(rec.samples, ramp[:, 1920:5760])


def test_an_encoder_without_float_input_gets_clipped_rounded_16_bit_samples(tmp_path, monkeypatch):
    real = av.Codec

    class OnlyS16:
        def __init__(self, *args):
            self._codec = real(*args)

        def __getattr__(self, name):
            return getattr(self._codec, name)

        @property
        def audio_formats(self):
            return [f for f in self._codec.audio_formats or [] if f.name == "s16"]

    monkeypatch.setattr(av, "Codec", OnlyS16)
    ramp = _stereo_ramp(48000, 0.5, 1.5)  # beyond full scale at both ends: clipped
    w = VideoWriter(tmp_path / "a.webm", 25, format="webm", audio=(torch.from_numpy(ramp), 48000))
    w.write(_frames(1))
    rec = _Recorder(w)
    w.write(_frames(2))
    w.close()
    assert w._audio_fmt == "s16" and rec.samples.dtype == np.int16
    expected = np.round(np.clip(ramp[:, 1920:5760].astype(np.float64), -1, 1) * 32767)
    assert np.abs(rec.samples.astype(np.float64) - expected).max() <= 0.5 + 1e-6  # to the nearest step of 1 / 32767
    assert rec.samples.max() == 32767 and rec.samples.min() == -32767


def test_frames_of_at_least_2x2_pixels(tmp_path):
    write_video(tmp_path / "ok.mp4", torch.rand(1, 2, 2, 3), 25)  # the smallest size
    for h, w in ((1, 5), (5, 1), (1, 1)):
        with pytest.raises(VideoError) as exc:
            write_video(tmp_path / "bad.mp4", torch.rand(1, h, w, 3), 25)
        assert str(exc.value) == f"frames must be at least 2x2 pixels, got {w}x{h}"
    assert os.listdir(tmp_path) == ["ok.mp4"]


class _Failing:
    """Stands in for a stream or container whose ``method`` raises, everything else passed through."""

    def __init__(self, real, method: str, exc: Exception):
        self._real, self._method, self._exc = real, method, exc

    def __getattr__(self, name):
        if name == self._method:
            raise_it = self._exc

            def fail(*args, **kwargs):
                raise raise_it

            return fail
        return getattr(self._real, name)


def test_an_encoder_error_is_one_line_and_the_file_is_never_finalised(tmp_path):
    w = VideoWriter(tmp_path / "a.mp4", 25)
    w.write(_frames(1))
    w._vstream = _Failing(w._vstream, "encode", RuntimeError("boom"))
    with pytest.raises(VideoError) as exc:
        w.write(_frames(1))
    assert str(exc.value) == f"encoding failed for {str(tmp_path / 'a.mp4')!r}: boom"
    with pytest.raises(VideoError) as exc:
        w.close()
    assert str(exc.value) == f"not finalising {str(tmp_path / 'a.mp4')!r}: an earlier write failed (RuntimeError: boom)"
    assert os.listdir(tmp_path) == []


def test_a_failure_while_finalising_is_one_line_and_leaves_nothing(tmp_path):
    w = VideoWriter(tmp_path / "a.mp4", 25)
    w.write(_frames(2))
    w._container = _Failing(w._container, "close", OSError("disk full"))
    with pytest.raises(VideoError) as exc:
        w.close()
    assert str(exc.value) == f"finalising {str(tmp_path / 'a.mp4')!r} failed: disk full"
    assert os.listdir(tmp_path) == []


class _Container:
    def __init__(self, error: Exception | None = None):
        self.closed = 0
        self.error = error

    def close(self):
        self.closed += 1
        if self.error is not None:
            raise self.error


@pytest.mark.parametrize("error", [None, OSError("disk gone")])
def test_cleanup_closes_the_container_once_before_deleting_the_partial_file(tmp_path, error):
    # on Windows an open file cannot be deleted: the finalizer must close the container first, and only once
    from emo_model.video_io.writer import _cleanup_partial

    partial = tmp_path / "a.mp4.partial"
    partial.write_bytes(b"x")
    c = _Container(error)
    ref = [c]
    _cleanup_partial(ref, str(partial))
    assert c.closed == 1 and ref == [None] and not partial.exists()
    _cleanup_partial(ref, str(partial))  # a second call (close() then the finalizer) finds nothing to do
    assert c.closed == 1 and ref == [None]


def test_cleanup_without_a_container_still_deletes_the_partial_file(tmp_path):
    from emo_model.video_io.writer import _cleanup_partial

    partial = tmp_path / "a.mp4.partial"
    partial.write_bytes(b"x")
    _cleanup_partial([], str(partial))
    assert not partial.exists()
    _cleanup_partial([], str(partial))  # already gone: nothing to do, no error

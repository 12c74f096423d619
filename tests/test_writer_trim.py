"""The video writer's arguments, its cleanup, and the audio it hands the encoder: trimmed / padded to the frames."""

from __future__ import annotations

import os
import re
from fractions import Fraction
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


def _codec_listing(monkeypatch, formats):
    """av.Codec as the writer sees it, but listing ``formats(real_codec)`` as its audio sample formats."""
    real = av.Codec

    class Listing:
        def __init__(self, *args):
            self._codec = real(*args)

        def __getattr__(self, name):
            return getattr(self._codec, name)

        @property
        def audio_formats(self):
            return formats(self._codec)

    monkeypatch.setattr(av, "Codec", Listing)


def test_an_encoder_without_float_input_gets_clipped_rounded_16_bit_samples(tmp_path, monkeypatch):
    _codec_listing(monkeypatch, lambda codec: [f for f in codec.audio_formats or [] if f.name == "s16"])
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


# ---------------------------------------------------------------- the writer's setup: encoder, container, paths


def _x264_options(path) -> dict[str, str]:
    """The option string libx264 writes into the stream (an SEI message): what the encoder really ran with."""
    m = re.search(rb"x264 - core .*? options: ([ -~]+)", Path(path).read_bytes())
    return dict(kv.split("=", 1) for kv in m.group(1).decode().split())


def test_mp4_streams_carry_the_requested_encoder_container_and_metadata_settings(tmp_path):
    wave = torch.zeros(2, 1920)  # stereo, 0.12 s at 16 kHz (an AAC rate: kept)
    meta = {"prompt": "p ✓", "workflow": {"name": "ü", "n": [1]}, "skip": None}
    out = write_video(tmp_path / "a.mp4", _frames(3).repeat(1, 3, 4, 1), 25, audio=(wave, 16000), crf=23,
                      preset="fast", threads=2, metadata=meta)  # 64x48: 3 macroblock rows, room for slices
    assert out == str(tmp_path / "a.mp4") and os.listdir(tmp_path) == ["a.mp4"]
    x264 = _x264_options(out)
    # x264's "fast" preset: subme 6, rc_lookahead 30 (medium: 7, 40); frame threads as the ffmpeg CLI, not slices
    assert (x264["crf"], x264["subme"], x264["rc_lookahead"]) == ("23.0", "6", "30")
    assert (x264["threads"], x264["sliced_threads"]) == ("2", "0")
    data = Path(out).read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # movflags=+faststart: the index first
    with av.open(out) as c:
        assert dict(c.metadata)["prompt"] == "p ✓"  # movflags=use_metadata_tags: any key survives
        assert dict(c.metadata)["workflow"] == '{"name": "ü", "n": [1]}'  # JSON, not escaped to \u00fc
        assert "skip" not in c.metadata
        v, a = c.streams.video[0], c.streams.audio[0]
        cc = v.codec_context
        assert (cc.name, cc.pix_fmt, v.width, v.height, v.average_rate) == ("h264", "yuv420p", 64, 48, 25)
        # tagged BT.601 matrix (smpte170m = 6), bt709 primaries/transfer (1), limited "tv" range (1)
        assert (cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range) == (6, 1, 1, 1)
        assert (a.codec_context.name, a.sample_rate, a.codec_context.layout.name) == ("aac", 16000, "stereo")
        assert [f.time for f in c.decode(video=0)] == [0.0, 0.04, 0.08]  # pts i in a 1/25 s time base


def test_mp4_defaults_are_crf_19_and_the_medium_preset(tmp_path):
    out = write_video(tmp_path / "a.mp4", _frames(2), 25)
    x264 = _x264_options(out)
    assert (x264["crf"], x264["subme"], x264["rc_lookahead"]) == ("19.0", "7", "40")
    with av.open(out) as c:
        assert [s.type for s in c.streams] == ["video"]


@pytest.mark.parametrize("fps", [12.5, 30000 / 1001])
def test_frames_are_timed_by_the_exact_frame_rate(tmp_path, fps):
    out = write_video(tmp_path / "a.mp4", _frames(3), fps)
    with av.open(out) as c:
        times = [f.pts * f.time_base for f in c.decode(video=0)]
    step = Fraction(2, 25) if fps == 12.5 else Fraction(1001, 30000)
    assert times == [0, step, 2 * step]


def _red_and_white_yuv(tmp_path) -> np.ndarray:
    frames = np.zeros((2, 16, 16, 3), np.uint8)
    frames[0, ..., 0] = 255  # pure red
    frames[1] = 255  # white
    out = write_video(tmp_path / "c.mp4", frames, 25, crf=0)  # crf 0: lossless, the decoded planes are exact
    with av.open(out) as c:
        return np.stack([f.to_ndarray() for f in c.decode(video=0)])  # yuv420p: 16 rows Y, 4 rows U, 4 rows V


def test_rgb_becomes_limited_range_bt601_yuv(tmp_path):
    yuv = _red_and_white_yuv(tmp_path).astype(int)
    y, u, v = yuv[:, :16], yuv[:, 16:20], yuv[:, 20:24]
    # BT.601, limited range: Y = 16 + 219 (.299 R + .587 G + .114 B), Cb = 128 + 224 (B - Y') / 1.772,
    # Cr = 128 + 224 (R - Y') / 1.402.  Red: Y 81.5, Cb 90.2, Cr 240; white: 235, 128, 128 (+-1: swscale's rounding).
    # (Full range red would be Y 76, BT.709 red Y 62.6, Cb 102.3.)
    for plane, want in ((y, (81.5, 235)), (u, (90.2, 128)), (v, (240, 128))):
        for i in range(2):
            assert np.abs(plane[i] - want[i]).max() <= 1, (i, plane[i].min(), plane[i].max(), want[i])


def test_crf_must_be_an_integer_in_the_formats_range(tmp_path):
    for fmt, ext, hi in (("mp4", "mp4", 51), ("webm", "webm", 63)):
        for crf in (0, hi, float(hi), str(hi)):
            w = VideoWriter(tmp_path / f"a.{ext}", 25, format=fmt, crf=crf)
            w.abort()
            assert w.crf == int(hi if crf else 0) and type(w.crf) is int
        for bad in (-1, hi + 1, 1.5, True, "abc", [1]):
            with pytest.raises(VideoError) as exc:
                VideoWriter(tmp_path / f"a.{ext}", 25, format=fmt, crf=bad)
            assert str(exc.value) == f"crf for {fmt} must be an integer in [0, {hi}], got {bad!r}"
    assert os.listdir(tmp_path) == []


def test_threads_must_be_none_or_a_non_negative_integer(tmp_path):
    for ok in (None, 0, 3):
        w = VideoWriter(tmp_path / "a.mp4", 25, threads=ok)
        w.abort()
        assert w.threads == ok
    for bad in (-1, 1.5, "2"):
        with pytest.raises(VideoError) as exc:
            VideoWriter(tmp_path / "a.mp4", 25, threads=bad)
        assert str(exc.value) == f"threads must be None or an integer >= 0, got {bad!r}"
    assert os.listdir(tmp_path) == []


def test_output_path_checks_are_one_line_each(tmp_path):
    w = VideoWriter(tmp_path / "noext", 25, format="MP4")  # the format name in any case
    w.abort()
    assert w.path == str(tmp_path / "noext.mp4")
    w = VideoWriter(tmp_path / "UP.MP4", 25)  # the suffix in any case
    w.abort()
    assert w.path == str(tmp_path / "UP.MP4")
    with pytest.raises(VideoError) as exc:
        VideoWriter(tmp_path / "a.webm", 25)
    assert str(exc.value) == f"output path {str(tmp_path / 'a.webm')!r} has suffix '.webm' but format 'mp4' writes '.mp4' files"
    with pytest.raises(VideoError) as exc:
        VideoWriter(tmp_path / "no" / "a.mp4", 25)
    assert str(exc.value) == f"output directory does not exist: {str(tmp_path / 'no')!r} (for {str(tmp_path / 'no' / 'a.mp4')!r})"
    (tmp_path / "d.mp4").mkdir()
    with pytest.raises(VideoError) as exc:
        VideoWriter(tmp_path / "d.mp4", 25)
    assert str(exc.value) == f"output path is a directory: {str(tmp_path / 'd.mp4')!r}"
    assert os.listdir(tmp_path) == ["d.mp4"]


def test_a_new_writer_has_only_a_hidden_unique_partial_file_next_to_the_target(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(tmp_path)  # the partial file goes next to the target, not into the working directory
    w = VideoWriter(out / "clip.mp4", 25)
    assert re.fullmatch(r"\.clip\.[0-9a-f]{8}\.partial\.mp4", Path(w.partial_path).name)
    assert (w.source_size, w.width, w.height, w.audio_sample_rate, w.frames_written) == (None, None, None, None, 0)
    assert Path(w.partial_path).parent == out
    w.abort()
    assert os.listdir(out) == []
    rel = VideoWriter("rel.mp4", 25)  # a bare name: the working directory
    assert rel.path == "rel.mp4" and Path(rel.partial_path).parent == Path(".")
    rel.abort()


def test_abort_closes_the_container_before_deleting_the_partial_file(tmp_path, monkeypatch):
    real_open, opened = av.open, []

    class Recording:
        def __init__(self, *args, **kwargs):
            self._c, self.closed = real_open(*args, **kwargs), 0
            opened.append(self)

        def __getattr__(self, name):
            return getattr(self._c, name)

        def close(self):
            self.closed += 1
            return self._c.close()

    monkeypatch.setattr(av, "open", Recording)
    VideoWriter(tmp_path / "a.mp4", 25).abort()
    assert [c.closed for c in opened] == [1] and os.listdir(tmp_path) == []


def test_a_container_that_cannot_be_created_is_one_line(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(av, "open", refuse)
    with pytest.raises(VideoError) as exc:
        VideoWriter(tmp_path / "a.mp4", 25)
    assert re.fullmatch(r"cannot create '.*/\.a\.[0-9a-f]{8}\.partial\.mp4': read-only file system", str(exc.value))


@pytest.mark.parametrize(
    "listed, chosen",
    [(["s16", "flt", "fltp"], "fltp"), (["s16", "flt"], "flt"), (["s16"], "s16"), (["s32"], "fltp"), ([], "fltp"),
     (None, "fltp")],
)
def test_the_audio_sample_format_is_the_first_of_fltp_flt_s16_the_encoder_lists(tmp_path, monkeypatch, listed, chosen):
    _codec_listing(monkeypatch, lambda codec: None if listed is None else [av.AudioFormat(n) for n in listed])
    w = VideoWriter(tmp_path / "a.mp4", 25, audio=(torch.zeros(1, 100), 16000))
    w._open_streams(16, 16)
    assert w._audio_fmt == chosen and w._astream.codec_context.format.name == chosen
    w.abort()


def _record_from_the_start(w: VideoWriter) -> list[_Recorder]:
    """Attach a _Recorder as soon as the first write opens the streams."""
    recs, open_streams = [], w._open_streams

    def open_and_record(width, height):
        open_streams(width, height)
        recs.append(_Recorder(w))

    w._open_streams = open_and_record
    return recs


def test_the_first_batch_sends_the_audio_from_sample_zero(tmp_path):
    w, ramp = _writer_with_audio(tmp_path, 1.0)
    recs = _record_from_the_start(w)
    w.write(_frames(2))  # 2 frames at 25 fps = 1280 samples at 16 kHz
    w.close()
    assert recs[0].pts == [0]
    np.testing.assert_array_equal(recs[0].samples, ramp[:, :1280])


def test_audio_at_a_rate_aac_lacks_is_resampled_not_relabelled(tmp_path):
    w = VideoWriter(tmp_path / "a.mp4", 25, audio=(torch.full((1, 2469), 0.5), 12345))  # 0.2 s at 12345 Hz
    recs = _record_from_the_start(w)
    w.write(_frames(5))  # 0.2 s = 9600 samples at 48 kHz
    w.close()
    assert recs[0].samples.shape == (1, 9600)
    np.testing.assert_allclose(recs[0].samples[:, 200:9400], 0.5, atol=0.01)  # the filter rings only at the ends


def test_aac_packets_are_timed_to_the_sample_at_odd_sample_positions(tmp_path):
    # 24 fps at 44.1 kHz: a frame is 1837.5 samples, so the audio sent after each of 6 one-frame writes ends at
    # 1838, 3675 (odd), 5512, 7350, 9188, 11025.  AAC: 1024 priming samples, then 1024-sample packets:
    # 1024 + 11025 = 12049 = 11 x 1024 + 785.
    g = torch.Generator().manual_seed(0)
    w = VideoWriter(tmp_path / "a.mp4", 24, audio=(torch.rand(1, 44100, generator=g) - 0.5, 44100))
    for _ in range(6):
        w.write(_frames(1))
    with av.open(w.close()) as c:
        packets = [(p.pts, p.duration) for p in c.demux(audio=0) if p.size]
    assert packets == [(-1024 + 1024 * k, 1024) for k in range(11)] + [(10240, 785)]

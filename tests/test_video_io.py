"""Round-trip tests for emo_model.video_io (PyAV only, CPU, a few seconds).

Every expectation is derived from the inputs (frame count, fps, size, audio
length/content), never from the writer's own bookkeeping; files are read back
with plain PyAV where it matters.
"""

from __future__ import annotations

import dataclasses
import json
import os
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from emo_model import video_io
from emo_model.video_io import (
    FORMATS,
    VideoError,
    VideoWriter,
    probe_video,
    read_video_frames,
    write_video,
)

FPS = 25
N = 37
H = W = 64


def moving_gradient(n=N, h=H, w=W, seed=0) -> np.ndarray:
    """float32 [n,h,w,3] in 0..1: a horizontal ramp that scrolls, a vertical ramp, a pulsing blue."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    i = np.arange(n, dtype=np.float32)[:, None, None]
    r = ((x[None] + 2 * i) % w) / (w - 1)
    g = np.broadcast_to(y[None] / (h - 1), r.shape)
    b = np.broadcast_to(0.5 + 0.3 * np.sin(i / 5.0), r.shape)
    return np.ascontiguousarray(np.stack([r, g, b], axis=-1), dtype=np.float32)


def tone(seconds, sr, freq=440.0, amp=0.5, channels=1) -> np.ndarray:
    t = np.arange(int(round(seconds * sr)), dtype=np.float64) / sr
    x = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return x if channels == 1 else np.stack([x] + [x * 0.5] * (channels - 1))


def decode_audio(path) -> tuple[np.ndarray, int]:
    """Decoded audio as float32 [C,T] using plain PyAV."""
    with av.open(str(path)) as c:
        chunks, sr = [], None
        for f in c.decode(audio=0):
            a = f.to_ndarray()
            if not f.format.is_planar:
                a = a.reshape(-1, len(f.layout.channels)).T
            chunks.append(a.astype(np.float32))
            sr = f.sample_rate
    return np.concatenate(chunks, axis=1), sr


def rms(x) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def only_files(d) -> list[str]:
    return sorted(os.listdir(d))


# --------------------------------------------------------------------------- mp4 basics


@pytest.mark.parametrize("sr", [16000, 44100])
@pytest.mark.parametrize("audio_ratio", [0.6, 1.7])  # audio shorter / longer than the video
def test_mp4_roundtrip_with_audio(tmp_path, sr, audio_ratio):
    frames = moving_gradient()
    video_seconds = N / FPS
    wav = tone(video_seconds * audio_ratio, sr)
    out = tmp_path / "clip.mp4"

    path = write_video(out, torch.from_numpy(frames), FPS, audio=(torch.from_numpy(wav), sr))
    assert path == str(out)
    assert only_files(tmp_path) == ["clip.mp4"]

    info = probe_video(out)
    assert info.num_frames == N
    assert info.fps == pytest.approx(FPS)
    assert (info.width, info.height) == (W, H)
    assert info.duration == pytest.approx(video_seconds)
    assert info.video_codec == "h264"
    assert info.audio_codec == "aac"
    assert info.audio_sample_rate == sr
    assert info.audio_channels == 1

    # audio duration (what players present) matches the video within half a frame: the writer trims / pads the audio
    # to the frames, so one frame too many or too few fails; the declared duration is exact to the mp4 timescale (~1 ms)
    assert abs(info.audio_duration - video_seconds) <= 0.5 / FPS
    # ... and independently of probe_video: decoded samples, which carry at most one AAC frame (1024 samples) of
    # encoder padding at the end (the decoder ignores the edit list's end), never fewer than the video's
    decoded, dsr = decode_audio(out)
    assert dsr == sr
    decoded_seconds = decoded.shape[1] / sr
    assert video_seconds - 1 / sr <= decoded_seconds <= video_seconds + 1024 / sr + 1 / sr
    # video stream's own declared duration agrees with the decoded frame count
    with av.open(str(out)) as c:
        vs = c.streams.video[0]
        assert float(vs.duration * vs.time_base) == pytest.approx(video_seconds, abs=1e-3)

    # pixels approximately preserved
    back = read_video_frames(out)
    assert back.shape == (N, H, W, 3) and back.dtype == np.uint8
    mae = np.abs(back.astype(np.float32) - frames * 255).mean()
    assert mae < 4.0, mae

    # audio content: the tone is there where the input had it; silence pads the rest
    a = decoded[0]
    in_len = wav.shape[-1]
    head = a[int(0.05 * sr): int(0.05 * sr) + sr // 5]
    assert rms(head) == pytest.approx(0.5 / np.sqrt(2), rel=0.15)
    if in_len < video_seconds * sr:  # shorter: silence after the input ends
        tail = a[in_len + sr // 20: int(video_seconds * sr) - sr // 50]
        assert tail.size > 0 and rms(tail) < 0.01
    else:  # longer: the tone runs until the end of the video, then stops
        tail = a[int((video_seconds - 0.2) * sr): int((video_seconds - 0.05) * sr)]
        assert rms(tail) == pytest.approx(0.5 / np.sqrt(2), rel=0.15)


def test_colours_preserved_with_consistent_matrix(tmp_path):
    # saturated colours expose a YUV matrix mismatch between encode and decode
    colours = np.array([[220, 30, 30], [30, 200, 40], [20, 40, 230], [240, 240, 20]], np.uint8)
    frames = np.repeat(np.repeat(colours[:, None, None, :], 32, 1), 32, 2)  # [4,32,32,3]
    out = write_video(tmp_path / "c.mp4", frames, 10)
    back = read_video_frames(out)
    centre = back[:, 16, 16].astype(int)
    assert np.abs(centre - colours.astype(int)).max() <= 6, centre
    with av.open(out) as c:
        cc = c.streams.video[0].codec_context
        assert cc.pix_fmt == "yuv420p"


def test_numpy_float_and_uint8_inputs_agree(tmp_path):
    frames = moving_gradient(n=8)
    as_u8 = (frames * 255 + 0.5).astype(np.uint8)
    # crf=0 (lossless) so the comparison does not depend on encoder decisions
    a = read_video_frames(write_video(tmp_path / "f.mp4", frames, FPS, crf=0))
    b = read_video_frames(write_video(tmp_path / "u.mp4", as_u8, FPS, crf=0))
    np.testing.assert_array_equal(a, b)


def test_without_audio(tmp_path):
    out = write_video(tmp_path / "silent.mp4", moving_gradient(n=5), FPS)
    info = probe_video(out)
    assert info.num_frames == 5
    assert info.audio_codec is None and info.audio_duration is None


# --------------------------------------------------------------------------- sizes and rates


def test_odd_size_is_padded_to_even(tmp_path):
    h, w = 65, 63
    frames = moving_gradient(n=6, h=h, w=w)
    out = write_video(tmp_path / "odd.mp4", frames, FPS)
    info = probe_video(out)
    assert (info.width, info.height) == (w + 1, h + 1)  # padded, never cropped
    back = read_video_frames(out).astype(np.float32)
    assert back.shape == (6, h + 1, w + 1, 3)
    ref = frames * 255
    assert np.abs(back[:, :h, :w] - ref).mean() < 4.0
    # the added row/column repeat the image edge
    assert np.abs(back[:, h, :w] - ref[:, h - 1]).mean() < 6.0
    assert np.abs(back[:, :h, w] - ref[:, :, w - 1]).mean() < 6.0


@pytest.mark.parametrize("fps, exact", [(29.97, Fraction(30000, 1001)), (12.5, Fraction(25, 2)), (24, Fraction(24))])
def test_frame_rates(tmp_path, fps, exact):
    n = 20
    sr = 16000
    out = write_video(
        tmp_path / "r.mp4", moving_gradient(n=n, h=32, w=32), fps,
        audio=(tone(n / fps + 0.5, sr), sr),
    )
    info = probe_video(out)
    assert info.num_frames == n
    assert info.fps == pytest.approx(float(exact), abs=1e-6)
    expected = float(n / exact)
    assert info.duration == pytest.approx(expected, abs=1e-6)
    assert abs(info.audio_duration - expected) <= 0.5 / float(exact)  # half a frame: the writer trims the audio to the frames
    with av.open(out) as c:
        vs = c.streams.video[0]
        assert float(vs.duration * vs.time_base) == pytest.approx(expected, abs=1e-3)


# --------------------------------------------------------------------------- webm


def test_webm_vp9_opus_roundtrip(tmp_path):
    frames = moving_gradient()
    sr = 16000  # not an Opus-native rate here on purpose: must be resampled to 48 kHz
    video_seconds = N / FPS
    wav = tone(video_seconds * 0.7, sr, channels=2)
    out = write_video(tmp_path / "clip.webm", frames, FPS, audio=(wav, sr), format="webm")
    assert out.endswith("clip.webm")
    info = probe_video(out)
    assert info.video_codec == "vp9"
    assert info.audio_codec == "opus"
    assert info.num_frames == N
    assert info.fps == pytest.approx(FPS)
    assert (info.width, info.height) == (W, H)
    assert info.audio_sample_rate == 48000
    assert info.audio_channels == 2
    decoded, dsr = decode_audio(out)
    assert dsr == 48000 and decoded.shape[0] == 2
    # Opus in WebM: the container's pre-skip / end padding are honoured by the decoder, so decoded = declared;
    # half a frame: the writer trims the audio to the frames (one frame too many or too few fails)
    assert abs(decoded.shape[1] / dsr - video_seconds) <= 0.5 / FPS
    assert abs(info.audio_duration - video_seconds) <= 0.5 / FPS
    back = read_video_frames(out)
    assert np.abs(back.astype(np.float32) - frames * 255).mean() < 4.0
    # stereo kept: second channel was written at half amplitude
    seg = decoded[:, int(0.1 * dsr): int(0.5 * dsr)]
    assert rms(seg[1]) / rms(seg[0]) == pytest.approx(0.5, rel=0.1)


@pytest.mark.parametrize("fmt", ["mp4", "webm"])
def test_audio_is_in_sync(tmp_path, fmt):
    # silence, then a tone starting at 0.6 s: the decoded onset must be at 0.6 s
    # (catches AAC priming / Opus pre-skip / resampler delay mistakes)
    sr = 22050
    onset = 0.6
    wav = np.zeros(int(1.2 * sr), np.float32)
    start = int(onset * sr)
    wav[start:] = tone((len(wav) - start) / sr, sr)
    out = write_video(tmp_path / f"sync.{fmt}", moving_gradient(n=30, h=32, w=32), FPS,
                      audio=(wav, sr), format=fmt)
    decoded, dsr = decode_audio(out)
    first = int(np.argmax(np.abs(decoded[0]) > 0.1))
    assert abs(first / dsr - onset) < 0.005, first / dsr


# --------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("fmt", ["mp4", "webm"])
def test_metadata_roundtrip(tmp_path, fmt):
    workflow = {
        "nodes": [{"id": i, "type": "EMOSampler", "title": "näive ✓ \"quoted\"", "pad": "x" * 50}
                  for i in range(400)],
        "links": [[1, 2, 3]],
    }
    prompt = {"1": {"class_type": "EMOSampler", "inputs": {"seed": 42}}}
    meta = {"workflow": json.dumps(workflow), "prompt": json.dumps(prompt), "comment": "EMO test"}
    out = write_video(tmp_path / f"m.{fmt}", moving_gradient(n=3, h=16, w=16), FPS,
                      format=fmt, metadata=meta)
    with av.open(out) as c:  # plain PyAV, keys case-insensitively (Matroska upper-cases them)
        tags = {k.lower(): v for k, v in c.metadata.items()}
    assert json.loads(tags["workflow"]) == workflow
    assert json.loads(tags["prompt"]) == prompt
    assert tags["comment"] == "EMO test"
    info = probe_video(out)
    assert json.loads(info.metadata["workflow"]) == workflow


def test_non_string_metadata_is_stored_as_json(tmp_path):
    wf = {"nodes": [1, 2], "name": "ü"}
    out = write_video(tmp_path / "j.mp4", moving_gradient(n=2, h=16, w=16), FPS, metadata={"workflow": wf})
    assert json.loads(probe_video(out).metadata["workflow"]) == wf


# --------------------------------------------------------------------------- streaming


def _write_in_batches(path, frames, splits, **kw):
    assert sum(splits) == len(frames)
    with VideoWriter(path, FPS, **kw) as w:
        i = 0
        for k in splits:
            w.write(torch.from_numpy(frames[i:i + k]))
            i += k
            assert w.frames_written == i
        names = only_files(path.parent)
        assert path.name not in names  # nothing final before close()
        stem, ext = os.path.splitext(path.name)
        partial = [n for n in names if n.startswith(f".{stem}.") and n.endswith(f".partial{ext}")]
        assert len(partial) == 1, names
    return str(path)


def test_streaming_batches_equal_one_write(tmp_path):
    frames = moving_gradient()
    sr = 16000
    wav = tone(N / FPS * 0.8, sr)
    # crf=0 is lossless: decoded frames depend only on the frames fed in, not on
    # encoder decisions (libx264 is not bit-reproducible on 64x64 frames).
    one = write_video(tmp_path / "one.mp4", torch.from_numpy(frames), FPS, audio=(wav, sr), crf=0)
    many = _write_in_batches(tmp_path / "many.mp4", frames, [10, 1, 19, 7], audio=(wav, sr), crf=0)
    assert only_files(tmp_path) == ["many.mp4", "one.mp4"]

    a, b = read_video_frames(one), read_video_frames(many)
    assert a.shape == b.shape == (N, H, W, 3)
    np.testing.assert_array_equal(a, b)
    # lossless really is lossless up to the RGB->YUV420->RGB round trip
    assert np.abs(a.astype(np.float32) - frames * 255).mean() < 3.0
    aa, _ = decode_audio(one)
    ab, _ = decode_audio(many)
    assert aa.shape == ab.shape
    assert np.abs(aa - ab).max() < 1e-4

    # default (lossy) settings: same frames within encoder noise, in the same order
    lossy = _write_in_batches(tmp_path / "lossy.mp4", frames, [5, 32], audio=(wav, sr))
    c = read_video_frames(lossy).astype(np.float32)
    assert np.abs(c - a).mean() < 2.0
    # a misordered/duplicated frame would be far off (the gradient scrolls 2 px per frame)
    assert np.abs(c[1:] - a[:-1]).mean() > 4 * np.abs(c - a).mean()

    # an iterable of batches (a generator) works as well
    gen = (frames[i:i + 9] for i in range(0, N, 9))
    third = write_video(tmp_path / "gen.mp4", gen, FPS, audio=(wav, sr), crf=0)
    np.testing.assert_array_equal(read_video_frames(third), a)


def test_comfy_audio_dict(tmp_path):
    sr = 24000
    wav = torch.from_numpy(tone(1.0, sr, channels=2))[None]  # [1,2,T]
    out = write_video(tmp_path / "d.mp4", moving_gradient(n=25, h=16, w=16), FPS,
                      audio={"waveform": wav, "sample_rate": sr})
    info = probe_video(out)
    assert info.audio_channels == 2 and info.audio_sample_rate == sr
    assert abs(info.audio_duration - 1.0) <= 0.5 / FPS  # half a frame: the writer trims the audio to the frames


# --------------------------------------------------------------------------- failure paths


def test_exception_in_with_block_leaves_nothing(tmp_path):
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with VideoWriter(tmp_path / "x.mp4", FPS, audio=(tone(1, 16000), 16000)) as w:
            w.write(moving_gradient(n=10))
            assert only_files(tmp_path)  # the partial file exists meanwhile
            raise Boom()
    assert only_files(tmp_path) == []


def test_abort_leaves_nothing(tmp_path):
    w = VideoWriter(tmp_path / "x.webm", FPS, format="webm")
    w.write(moving_gradient(n=4))
    w.abort()
    assert only_files(tmp_path) == []
    w.abort()  # idempotent
    with pytest.raises(VideoError):
        w.write(moving_gradient(n=1))
    with pytest.raises(VideoError):
        w.close()
    assert only_files(tmp_path) == []


def test_close_without_frames_is_an_error_and_leaves_nothing(tmp_path):
    w = VideoWriter(tmp_path / "empty.mp4", FPS)
    with pytest.raises(VideoError, match="no frames"):
        w.close()
    assert only_files(tmp_path) == []


def test_unclosed_writer_cleans_up_when_collected(tmp_path):
    w = VideoWriter(tmp_path / "gc.mp4", FPS, audio=(tone(1, 16000), 16000))
    w.write(moving_gradient(n=10))
    assert only_files(tmp_path)  # partial file exists (audio packets were muxed)
    del w
    import gc

    gc.collect()
    assert only_files(tmp_path) == []


def test_frame_size_change_is_rejected(tmp_path):
    w = VideoWriter(tmp_path / "s.mp4", FPS)
    w.write(moving_gradient(n=2, h=32, w=32))
    with pytest.raises(VideoError, match="32x32"):
        w.write(moving_gradient(n=2, h=32, w=48))
    w.abort()
    assert only_files(tmp_path) == []


def test_missing_encoder_names_the_alternative(tmp_path, monkeypatch):
    broken = dataclasses.replace(FORMATS["mp4"], video_codec="libdoesnotexist264")
    monkeypatch.setitem(FORMATS, "mp4", broken)
    with pytest.raises(VideoError) as ei:
        VideoWriter(tmp_path / "x.mp4", FPS)
    msg = str(ei.value)
    assert "libdoesnotexist264" in msg and "webm" in msg
    assert only_files(tmp_path) == []


def test_unknown_format_and_bad_arguments(tmp_path):
    with pytest.raises(VideoError) as ei:
        VideoWriter(tmp_path / "x.avi", FPS, format="avi")
    assert "mp4" in str(ei.value) and "webm" in str(ei.value)
    with pytest.raises(VideoError, match="crf"):
        VideoWriter(tmp_path / "x.mp4", FPS, crf=99)
    with pytest.raises(VideoError, match="fps"):
        VideoWriter(tmp_path / "x.mp4", 0)
    with pytest.raises(VideoError, match="suffix"):
        VideoWriter(tmp_path / "x.webm", FPS, format="mp4")
    assert only_files(tmp_path) == []


def test_missing_directory_is_a_clear_error(tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "x.mp4"
    with pytest.raises(VideoError, match="does not exist"):
        write_video(target, moving_gradient(n=2), FPS)
    assert not (tmp_path / "no").exists()


def test_path_without_suffix_gets_the_format_extension(tmp_path):
    out = write_video(tmp_path / "noext", moving_gradient(n=2, h=16, w=16), FPS, format="webm")
    assert out == str(tmp_path / "noext.webm")
    assert only_files(tmp_path) == ["noext.webm"]


def test_formats_are_data_and_encoders_exist():
    assert set(FORMATS) >= {"mp4", "webm"}
    mp4, webm = FORMATS["mp4"], FORMATS["webm"]
    assert (mp4.video_codec, mp4.audio_codec, mp4.pix_fmt, mp4.extension) == ("libx264", "aac", "yuv420p", ".mp4")
    assert (webm.video_codec, webm.audio_codec, webm.pix_fmt, webm.extension) == (
        "libvpx-vp9", "libopus", "yuv420p", ".webm")
    assert mp4.default_crf == 19
    for f in (mp4, webm):
        for codec in (f.video_codec, f.audio_codec):
            av.Codec(codec, "w")  # this PyAV wheel can encode both formats
    assert video_io.VideoError is VideoError and issubclass(VideoError, RuntimeError)

"""Reading videos back (probe, frames, audio) for tests, evaluation and the Load Video node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import av
import numpy as np

from .formats import VideoError


@dataclass
class VideoInfo:
    num_frames: int  # decoded frames
    fps: float
    width: int
    height: int
    duration: float  # num_frames / fps
    video_codec: str
    audio_codec: str | None
    audio_duration: float | None  # decoded, clipped to the declared stream duration
    audio_sample_rate: int | None
    metadata: dict
    audio_channels: int | None = None
    audio_decoded_duration: float | None = None  # raw decoded samples / rate
    audio_declared_duration: float | None = None  # container's stream duration


def _open_for_read(path: str | os.PathLike):
    p = os.fspath(path)
    if not os.path.isfile(p):
        if os.path.isdir(p):
            raise VideoError(f"{p!r} is a folder; give a video file")
        if os.path.exists(p):  # opening a FIFO would wait for a writer forever
            raise VideoError(f"{p!r} is not a regular file (a pipe, device or socket); give a video file")
        raise VideoError(f"no such video file: {p!r}")
    try:
        return av.open(p, mode="r")
    except Exception as e:
        raise VideoError(f"cannot open {p!r} as a video: {e}") from e


def _stream_seconds(stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return None


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Inspect a file by decoding it with PyAV (frame count = decoded frames)."""
    with _open_for_read(path) as c:
        if not c.streams.video:
            raise VideoError(f"{os.fspath(path)!r} has no video stream")
        vs = c.streams.video[0]
        rate = vs.average_rate or vs.guessed_rate or vs.base_rate
        fps = float(rate) if rate else 0.0
        vcodec = vs.codec_context.name
        width, height = vs.codec_context.width, vs.codec_context.height
        metadata = dict(c.metadata)
        if "matroska" in c.format.name or "webm" in c.format.name:
            # the Matroska muxer stores tag names upper-cased; the original
            # case is lost, so report the conventional lower-case keys.
            metadata = {k.lower(): v for k, v in metadata.items()}
        a = c.streams.audio[0] if c.streams.audio else None
        acodec = a.codec_context.name if a is not None else None
        a_rate = a.codec_context.sample_rate if a is not None else None
        a_channels = a.codec_context.channels if a is not None else None
        a_declared = _stream_seconds(a) if a is not None else None
        n = 0
        for frame in c.decode(vs):
            n += 1
            width, height = frame.width, frame.height
    a_decoded = None
    if a is not None:
        samples = 0
        with _open_for_read(path) as c:
            for frame in c.decode(audio=0):
                samples += frame.samples
                a_rate = frame.sample_rate or a_rate
        a_decoded = samples / a_rate if a_rate else None
    a_dur = a_decoded
    if a_dur is not None and a_declared is not None:
        a_dur = min(a_dur, a_declared)
    return VideoInfo(
        num_frames=n,
        fps=fps,
        width=width,
        height=height,
        duration=n / fps if fps else 0.0,
        video_codec=vcodec,
        audio_codec=acodec,
        audio_duration=a_dur,
        audio_sample_rate=a_rate,
        metadata=metadata,
        audio_channels=a_channels,
        audio_decoded_duration=a_decoded,
        audio_declared_duration=a_declared,
    )


def read_video_frames(path: str | os.PathLike) -> np.ndarray:
    """All frames as RGB ``uint8 [N,H,W,3]`` (colour matrix from the stream's tags)."""
    with _open_for_read(path) as c:
        if not c.streams.video:
            raise VideoError(f"{os.fspath(path)!r} has no video stream")
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    if not frames:
        raise VideoError(f"{os.fspath(path)!r} contains no decodable video frames")
    return np.stack(frames)


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decoded audio as float32 ``[C,T]`` and its sample rate (for tests / eval)."""
    with _open_for_read(path) as c:
        if not c.streams.audio:
            raise VideoError(f"{os.fspath(path)!r} has no audio stream")
        chunks, sr = [], c.streams.audio[0].codec_context.sample_rate
        for f in c.decode(audio=0):
            arr = f.to_ndarray()
            if not f.format.is_planar:
                arr = arr.reshape(-1, len(f.layout.channels)).T
            chunks.append(arr.astype(np.float32, copy=False))
            sr = f.sample_rate or sr
    if not chunks:
        return np.zeros((1, 0), np.float32), sr
    out = np.empty((chunks[0].shape[0], sum(c.shape[1] for c in chunks)), np.float32)
    chunks.reverse()
    at = 0
    while chunks:  # each frame's array dropped as it is copied: the audio is held once, not twice
        chunk = chunks.pop()
        out[:, at : at + chunk.shape[1]] = chunk
        at += chunk.shape[1]
    return out, sr

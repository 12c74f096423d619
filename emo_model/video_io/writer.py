"""Streaming video writer (:class:`VideoWriter`, :func:`write_video`).

Decisions
---------
Streaming
    :class:`VideoWriter` encodes every batch as soon as :meth:`VideoWriter.write`
    receives it; nothing but the current batch (converted to ``uint8`` in one
    vectorised operation) is held in memory.  The audio track is known up front
    (it is an argument of the constructor) and is encoded *alongside* the video:
    after each batch, the audio up to the current video time is sent to the
    audio encoder, so the file is properly interleaved and the muxer never has
    to buffer a whole stream.

Odd frame sizes
    ``yuv420p`` needs an even width and height.  Odd sizes are **padded** (never
    cropped) by one column/row that repeats the last column/row of the image
    (edge replication), so no image content is lost and the extra line is
    visually invisible.  A 63x65 input therefore produces a 64x66 video; the
    original size is available as ``VideoWriter.source_size``.

Frame rate and timestamps
    ``fps`` becomes an exact :class:`fractions.Fraction`: values within 0.002 of
    an NTSC rate (23.976, 29.97, 47.952, 59.94, 119.88) snap to ``N*1000/1001``;
    anything else is ``Fraction(fps).limit_denominator(1001)`` (25, 24, 12.5 =
    25/2, ...).  The codec time base is ``1/fps`` and frame *i* gets ``pts = i``.
    A :class:`~fractions.Fraction` passed in is used as is.  (Note that
    ``Fraction(29.97).limit_denominator(1001)`` alone would give 2997/100, not
    30000/1001, hence the explicit snapping.)

Audio length
    The audio is trimmed, or padded with digital silence, to exactly
    ``round(frames_written * sample_rate / fps)`` samples, so its nominal length
    equals the video's.  AAC encoders add 1024 "priming" samples at the start
    and pad the last 1024-sample frame; FFmpeg's mp4 muxer records both in an
    edit list, so the stream's declared duration (what players present) equals
    the real sample count to the millisecond.  A decoder that does not honour
    the end of the edit list (FFmpeg/PyAV included) yields up to 1023 extra
    samples of silence at the end (64 ms at 16 kHz).  :func:`probe_video`
    therefore reports both ``audio_duration`` (decoded length, clipped to the
    container's declared stream duration when there is one) and
    ``audio_decoded_duration`` (raw decoded sample count).  Opus in WebM carries
    its pre-skip and end padding in the container (CodecDelay/DiscardPadding),
    which the decoder honours.

    AAC is encoded at the input's own sample rate when the AAC encoder supports
    it (8 kHz ... 96 kHz standard rates), otherwise the audio is resampled to
    48 kHz.  Opus is always resampled to 48 kHz (libswresample, delay
    compensated).  Mono stays mono and stereo stays stereo; more than two
    channels are averaged down to mono.  Samples are clipped to [-1, 1].  A
    ComfyUI ``AUDIO`` dict with a batch of several waveforms uses the first.

Colour
    RGB is converted to limited-range YUV with the BT.601 matrix (the swscale
    default, what untagged SD video is assumed to be) and the stream is tagged
    accordingly (matrix smpte170m, primaries/transfer bt709 i.e. sRGB
    primaries, range tv), so players and :func:`read_video_frames` invert the
    same matrix.

Temporary file and atomicity
    Output goes to ``.<stem>.<8 hex>.partial<ext>`` in the destination folder
    (hidden, unique per writer so two runs aimed at the same name cannot
    clobber each other's partial file, same filesystem so the final
    :func:`os.replace` is atomic).  Only :meth:`VideoWriter.close` renames it to
    the requested path, after the encoders were flushed and the trailer written
    without error; any failure, :meth:`VideoWriter.abort`, an exception inside
    a ``with`` block or garbage collection of an unclosed writer deletes the
    partial file.  An existing file at the destination is replaced.  The
    destination folder must exist (a clear :class:`VideoError` otherwise).

Encoder settings and reproducibility
    ``crf`` (mp4 default 19, webm default 24; VP9 runs in constant-quality
    mode with ``b=0``), ``preset`` (x264 preset, default ``medium``; for webm
    the libvpx ``cpu-used`` speed, default ``4``) and ``threads`` (encoder
    threads, ``None`` = automatic) are keyword arguments.  x264 uses frame
    threads, as the ffmpeg CLI does.  Measured with this wheel: libx264 output
    is byte-identical run to run at 128x128 and larger, but *not* for tiny
    frames such as 64x64, even single-threaded (it becomes stable only with
    x264's assembly disabled), so byte-exact comparisons of tiny test videos
    need ``crf=0`` (lossless, the decoded frames are then exact).

Metadata
    ``metadata`` becomes container-level tags.  For mp4 the muxer is given
    ``movflags=use_metadata_tags`` so arbitrary keys (``prompt``, ``workflow``)
    are stored as ``mdta`` keys and can be read back (without the flag only a
    fixed set of iTunes keys survives).  ``+faststart`` moves the index to the
    front so browsers can start playing before the download completes.
"""

from __future__ import annotations

import json
import os
import uuid
import weakref
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

try:  # torch is optional for this module (numpy input works without it)
    import torch
except ImportError:  # pragma: no cover - torch is always present in ComfyUI
    torch = None

from .audio_track import _normalize_audio, _resample
from .formats import VideoError, _resolve_format
from .frames import _fps_fraction, _pad_even, _to_uint8_frames

# AVCOL_* values written into the codec context (see libavutil/pixfmt.h).
_AVCOL_SPC_SMPTE170M = 6
_AVCOL_PRI_BT709 = 1
_AVCOL_TRC_BT709 = 1
_AVCOL_RANGE_MPEG = 1


def _cleanup_partial(container_ref: list, partial: str) -> None:
    """Finalizer body: close the container (if any) and delete the partial file."""
    c = container_ref[0] if container_ref else None
    if c is not None:
        container_ref[0] = None
        try:
            c.close()
        except Exception:
            pass
    try:
        os.unlink(partial)
    except FileNotFoundError:
        pass
    except OSError:
        pass


class VideoWriter:
    """Stream frames (clip by clip) into an mp4/webm with optional audio.

    >>> with VideoWriter("out.mp4", 25, audio=(wave, 16000)) as w:   # doctest: +SKIP
    ...     for clip in clips:
    ...         w.write(clip)                # torch [N,H,W,3] float 0..1
    >>> # leaving the block normally calls close(); an exception calls abort()
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float,
        *,
        format: str = "mp4",
        crf: int | None = None,
        audio: Any = None,
        metadata: Mapping[str, Any] | None = None,
        preset: str | None = None,
        threads: int | None = None,
    ) -> None:
        self.frames_written: int = 0
        self.source_size: tuple[int, int] | None = None  # (width, height) as given
        self.width: int | None = None  # encoded (even) size
        self.height: int | None = None
        self._closed = False
        self._failed: str | None = None  # set when an encode error left the file inconsistent
        self._container_ref: list = [None]
        self._finalizer = None

        self.format = _resolve_format(format)
        fmt = self.format
        self.fps = _fps_fraction(fps)

        if crf is None:
            crf = fmt.default_crf
        try:
            crf_int = int(crf)
            exact = float(crf) == crf_int
        except (TypeError, ValueError):
            crf_int, exact = None, False
        lo, hi = fmt.crf_range
        if isinstance(crf, bool) or not exact or not lo <= crf_int <= hi:
            raise VideoError(f"crf for {fmt.name} must be an integer in [{lo}, {hi}], got {crf!r}")
        self.crf = crf_int
        self.preset = str(preset) if preset is not None else fmt.default_preset
        if threads is not None and (not isinstance(threads, int) or threads < 0):
            raise VideoError(f"threads must be None or an integer >= 0, got {threads!r}")
        self.threads = threads

        p = Path(os.fspath(path))
        if p.suffix == "":
            p = p.with_name(p.name + fmt.extension)
        elif p.suffix.lower() != fmt.extension:
            raise VideoError(
                f"output path {str(p)!r} has suffix {p.suffix!r} but format {fmt.name!r} "
                f"writes {fmt.extension!r} files"
            )
        parent = p.parent  # "." for a bare file name
        if not parent.is_dir():
            raise VideoError(f"output directory does not exist: {str(parent)!r} (for {str(p)!r})")
        if p.is_dir():
            raise VideoError(f"output path is a directory: {str(p)!r}")
        self.path = str(p)
        self.partial_path = str(parent / f".{p.stem}.{uuid.uuid4().hex[:8]}.partial{fmt.extension}")

        # audio: normalise + pick the encode rate now, so errors surface early
        self._audio: np.ndarray | None = None
        self.audio_sample_rate: int | None = None
        norm = _normalize_audio(audio)
        if norm is not None:
            wav, sr = norm
            out_sr = self._pick_audio_rate(sr)
            self._audio = _resample(wav, sr, out_sr)
            self.audio_sample_rate = out_sr
        self._audio_cursor = 0  # samples already sent to the encoder

        # str values verbatim; anything else (a workflow dict) as JSON, never repr()
        self._metadata = {
            str(k): v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
            for k, v in (metadata or {}).items()
            if v is not None
        }

        try:
            container = av.open(
                self.partial_path, mode="w", format=fmt.container,
                options=dict(fmt.container_options),
            )
        except Exception as e:  # permissions, read-only filesystem, ...
            raise VideoError(f"cannot create {self.partial_path!r}: {e}") from e
        self._container = container
        self._container_ref[0] = container
        self._finalizer = weakref.finalize(
            self, _cleanup_partial, self._container_ref, self.partial_path
        )
        for k, v in self._metadata.items():
            container.metadata[k] = v
        self._vstream = None
        self._astream = None

    # ----------------------------------------------------------------- setup

    def _pick_audio_rate(self, sr: int) -> int:
        fmt = self.format
        if fmt.audio_rates is not None:
            return sr if sr in fmt.audio_rates else fmt.audio_resample_rate
        rates = av.Codec(fmt.audio_codec, "w").audio_rates
        if rates and sr not in rates:
            return fmt.audio_resample_rate
        return sr

    def _open_streams(self, width: int, height: int) -> None:
        fmt = self.format
        c = self._container
        vs = c.add_stream(fmt.video_codec, rate=self.fps)
        vs.width = width
        vs.height = height
        vs.pix_fmt = fmt.pix_fmt
        cc = vs.codec_context
        cc.time_base = 1 / self.fps
        for attr, val in (
            ("colorspace", _AVCOL_SPC_SMPTE170M),
            ("color_primaries", _AVCOL_PRI_BT709),
            ("color_trc", _AVCOL_TRC_BT709),
            ("color_range", _AVCOL_RANGE_MPEG),
        ):
            try:
                setattr(cc, attr, val)
            except (AttributeError, TypeError, ValueError):  # older PyAV
                pass
        try:
            # FRAME|SLICE like the ffmpeg CLI, so libx264 uses frame threads
            # (PyAV's default, SLICE only, selects x264's low-latency sliced
            # threads, which were ~25% slower here).
            vs.thread_type = "AUTO"
        except Exception:  # pragma: no cover - older PyAV
            pass
        if self.threads is not None:
            cc.thread_count = self.threads
        opts = dict(fmt.video_options)
        opts["crf"] = str(self.crf)
        opts[fmt.preset_option] = self.preset
        vs.options = opts
        self._vstream = vs

        if self._audio is not None:
            layout = "mono" if self._audio.shape[0] == 1 else "stereo"
            astream = c.add_stream(fmt.audio_codec, rate=self.audio_sample_rate)
            acc = astream.codec_context
            try:
                acc.layout = layout
            except Exception:  # pragma: no cover - older PyAV spelling
                acc.channels = self._audio.shape[0]
            acc.bit_rate = fmt.audio_bit_rate
            acc.time_base = Fraction(1, self.audio_sample_rate)
            formats = [f.name for f in (av.Codec(fmt.audio_codec, "w").audio_formats or [])]
            self._audio_fmt = next((f for f in ("fltp", "flt", "s16") if f in formats), "fltp")
            acc.format = self._audio_fmt
            self._audio_layout = layout
            self._astream = astream

    # ----------------------------------------------------------------- writing

    def _check_open(self) -> None:
        if self._closed:
            raise VideoError("VideoWriter is already closed or aborted")

    def write(self, frames: Any) -> None:
        """Encode a batch: torch ``[N,H,W,3]`` float 0..1, or numpy uint8/float."""
        self._check_open()
        try:
            arr = _to_uint8_frames(frames)
            n, h, w = arr.shape[:3]
            if n == 0:
                return
            if self._vstream is None:
                if h < 2 or w < 2:
                    raise VideoError(f"frames must be at least 2x2 pixels, got {w}x{h}")
                self.source_size = (w, h)
                self.width, self.height = w + w % 2, h + h % 2
                self._open_streams(self.width, self.height)
            elif (w, h) != self.source_size:
                sw, sh = self.source_size
                raise VideoError(
                    f"frame size changed from {sw}x{sh} to {w}x{h}; all batches must share one size"
                )
            arr = _pad_even(arr)
            vs, mux = self._vstream, self._container.mux
            pts = self.frames_written
            for img in arr:
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame = self._to_yuv(frame)
                frame.pts = pts
                pts += 1
                mux(vs.encode(frame))
            self.frames_written = pts
            self._write_audio()
        except VideoError:
            raise
        except Exception as e:
            self._failed = f"{type(e).__name__}: {e}"
            raise VideoError(f"encoding failed for {self.path!r}: {e}") from e

    def _to_yuv(self, frame: av.VideoFrame) -> av.VideoFrame:
        try:
            return frame.reformat(
                format=self.format.pix_fmt, dst_colorspace="itu601",
                src_color_range="JPEG", dst_color_range="MPEG",
            )
        except TypeError:  # PyAV without colour-range arguments: swscale default (601, tv)
            return frame.reformat(format=self.format.pix_fmt)

    def _audio_target(self) -> int:
        return int(round(Fraction(self.frames_written) * self.audio_sample_rate / self.fps))

    def _write_audio(self) -> None:
        if self._astream is None:
            return
        target = self._audio_target()
        start = self._audio_cursor
        if target <= start:
            return
        have = self._audio.shape[1]
        chunk = self._audio[:, start:min(target, have)]
        if target > have:  # pad with silence up to the video time
            pad = np.zeros((self._audio.shape[0], target - max(start, have)), np.float32)
            chunk = np.concatenate([chunk, pad], axis=1) if chunk.shape[1] else pad
        if self._audio_fmt == "fltp":
            data = np.ascontiguousarray(chunk, dtype=np.float32)
        elif self._audio_fmt == "flt":
            data = np.ascontiguousarray(chunk.T, dtype=np.float32).reshape(1, -1)
        else:  # s16 packed
            data = (np.clip(chunk.T, -1, 1) * 32767).round().astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(data, format=self._audio_fmt, layout=self._audio_layout)
        frame.sample_rate = self.audio_sample_rate
        frame.pts = start
        frame.time_base = Fraction(1, self.audio_sample_rate)
        self._container.mux(self._astream.encode(frame))
        self._audio_cursor = target

    # ----------------------------------------------------------------- finishing

    def close(self) -> str:
        """Flush encoders, write the trailer, rename into place; returns the final path."""
        self._check_open()
        try:
            if self._failed is not None:
                raise VideoError(
                    f"not finalising {self.path!r}: an earlier write failed ({self._failed})"
                )
            if self.frames_written == 0:
                raise VideoError(f"no frames were written to {self.path!r}")
            self._write_audio()
            mux = self._container.mux
            mux(self._vstream.encode(None))
            if self._astream is not None:
                mux(self._astream.encode(None))
            self._container.close()
            self._container_ref[0] = None
            os.replace(self.partial_path, self.path)
        except BaseException as e:
            self.abort()
            if isinstance(e, (VideoError, KeyboardInterrupt, SystemExit)):
                raise
            raise VideoError(f"finalising {self.path!r} failed: {e}") from e
        self._closed = True
        if self._finalizer is not None:
            self._finalizer.detach()
        return self.path

    def abort(self) -> None:
        """Drop everything written so far; no file remains.  Safe to call twice."""
        self._closed = True
        if self._finalizer is not None:
            self._finalizer()  # closes the container and unlinks the partial file

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.close()

    @property
    def duration(self) -> float:
        """Seconds of video written so far."""
        return float(self.frames_written / self.fps)


def write_video(
    path: str | os.PathLike,
    frames: Any,
    fps: float,
    *,
    audio: Any = None,
    format: str = "mp4",
    crf: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    preset: str | None = None,
    threads: int | None = None,
) -> str:
    """Write ``frames`` (one tensor/array, or an iterable of batches) and return the path."""
    with VideoWriter(
        path, fps, format=format, crf=crf, audio=audio, metadata=metadata, preset=preset,
        threads=threads,
    ) as w:
        if _is_batch(frames):
            w.write(frames)
        else:
            for batch in frames:
                w.write(batch)
    return w.path


def _is_batch(frames: Any) -> bool:
    if torch is not None and isinstance(frames, torch.Tensor):
        return True
    return isinstance(frames, np.ndarray)



"""Video writing and probing with PyAV (no ffmpeg binary, no ComfyUI imports).

This module turns ComfyUI ``IMAGE`` batches (torch ``[N,H,W,3]`` float 0..1) or
numpy arrays plus an optional audio track into an ``.mp4`` (H.264 + AAC) or a
``.webm`` (VP9 + Opus), and reads such files back for tests and evaluation.

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
import math
import os
import uuid
import weakref
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Mapping

import av
import numpy as np

try:  # torch is optional for this module (numpy input works without it)
    import torch
except ImportError:  # pragma: no cover - torch is always present in ComfyUI
    torch = None

__all__ = [
    "FORMATS",
    "OutputFormat",
    "VideoError",
    "VideoInfo",
    "VideoWriter",
    "probe_video",
    "read_audio",
    "read_video_frames",
    "write_video",
]


class VideoError(RuntimeError):
    """Raised for every user-facing problem while writing or probing a video."""


@dataclass(frozen=True)
class OutputFormat:
    """One output format, as data.  Looked up in :data:`FORMATS`."""

    name: str
    container: str  # libavformat muxer name
    extension: str  # with the dot
    video_codec: str  # libavcodec encoder name
    pix_fmt: str
    audio_codec: str
    audio_bit_rate: int
    audio_rates: tuple[int, ...] | None  # None: any rate the encoder accepts
    audio_resample_rate: int  # rate used when the input rate is not usable
    default_crf: int
    crf_range: tuple[int, int]
    preset_option: str  # encoder option the ``preset`` argument sets
    default_preset: str
    video_options: Mapping[str, str] = field(default_factory=dict)
    container_options: Mapping[str, str] = field(default_factory=dict)
    mime_type: str = ""

    def __getitem__(self, key: str) -> Any:  # dict-style access for callers
        return getattr(self, key)


FORMATS: dict[str, OutputFormat] = {
    "mp4": OutputFormat(
        name="mp4",
        container="mp4",
        extension=".mp4",
        video_codec="libx264",
        pix_fmt="yuv420p",
        audio_codec="aac",
        audio_bit_rate=128_000,
        audio_rates=None,  # AAC: its own rate if the encoder supports it
        audio_resample_rate=48_000,
        default_crf=19,
        crf_range=(0, 51),
        preset_option="preset",
        default_preset="medium",
        video_options={},
        container_options={"movflags": "use_metadata_tags+faststart"},
        mime_type="video/mp4",
    ),
    "webm": OutputFormat(
        name="webm",
        container="webm",
        extension=".webm",
        video_codec="libvpx-vp9",
        pix_fmt="yuv420p",
        audio_codec="libopus",
        audio_bit_rate=128_000,
        audio_rates=(48_000,),  # always resample to 48 kHz for Opus
        audio_resample_rate=48_000,
        default_crf=24,
        crf_range=(0, 63),
        preset_option="cpu-used",  # libvpx speed 0 (slowest) .. 8
        default_preset="4",
        # b=0 selects constant-quality mode (crf alone is a cap otherwise).
        video_options={"b": "0", "deadline": "good", "row-mt": "1"},
        container_options={},
        mime_type="video/webm",
    ),
}

# AVCOL_* values written into the codec context (see libavutil/pixfmt.h).
_AVCOL_SPC_SMPTE170M = 6
_AVCOL_PRI_BT709 = 1
_AVCOL_TRC_BT709 = 1
_AVCOL_RANGE_MPEG = 1

_NTSC_BASES = (24, 30, 48, 60, 120)


# --------------------------------------------------------------------------- helpers


def _fps_fraction(fps: float | Fraction) -> Fraction:
    if isinstance(fps, Fraction):
        rate = fps
    else:
        try:
            f = float(fps)
        except (TypeError, ValueError):
            raise VideoError(f"fps must be a number, got {fps!r}") from None
        if not math.isfinite(f) or f <= 0:
            raise VideoError(f"fps must be a positive finite number, got {fps!r}")
        rate = None
        for base in _NTSC_BASES:
            ntsc = Fraction(base * 1000, 1001)
            if abs(f - float(ntsc)) < 0.002:
                rate = ntsc
                break
        if rate is None:
            rate = Fraction(f).limit_denominator(1001)
    if rate <= 0:
        raise VideoError(f"fps must be positive, got {fps!r}")
    return rate


def _encoder_available(name: str) -> bool:
    try:
        av.Codec(name, "w")
    except Exception:
        return False
    return True


def _format_usable(fmt: OutputFormat) -> bool:
    return _encoder_available(fmt.video_codec) and _encoder_available(fmt.audio_codec)


def _resolve_format(format: str) -> OutputFormat:
    key = str(format).lower().lstrip(".")
    if key not in FORMATS:
        raise VideoError(
            f"unknown video format {format!r}; choose one of: {', '.join(sorted(FORMATS))}"
        )
    fmt = FORMATS[key]
    for kind, codec in (("video", fmt.video_codec), ("audio", fmt.audio_codec)):
        if not _encoder_available(codec):
            others = [k for k, f in FORMATS.items() if k != key and _format_usable(f)]
            hint = (
                f"use format={others[0]!r} instead"
                if others
                else "install a PyAV build with these encoders (pip install av)"
            )
            raise VideoError(
                f"format {key!r} needs the {kind} encoder {codec!r}, which this PyAV "
                f"build (av {av.__version__}) does not provide; {hint}"
            )
    return fmt


def _to_uint8_frames(frames: Any) -> np.ndarray:
    """Whole batch -> contiguous uint8 ``[N,H,W,3]`` in one vectorised step."""
    if torch is not None and isinstance(frames, torch.Tensor):
        t = frames.detach()
        if t.dtype != torch.uint8:
            if not t.is_floating_point():
                t = t.float()
            # round-half-up after clamping; done on the tensor's own device so
            # a GPU batch crosses the bus as uint8 (4x less than float32).
            t = (t.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)
        arr = t.cpu().numpy()
    else:
        arr = np.asarray(frames)
        if arr.dtype != np.uint8:
            if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
                raise VideoError(f"frames must be numeric, got dtype {arr.dtype}")
            if np.issubdtype(arr.dtype, np.integer):
                raise VideoError(
                    f"integer frames must be uint8 (0..255), got {arr.dtype}; "
                    "float frames are expected in 0..1"
                )
            arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise VideoError(f"frames must be [N,H,W,C] (or [H,W,C]), got shape {tuple(arr.shape)}")
    c = arr.shape[-1]
    if c == 4:
        arr = arr[..., :3]
    elif c == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif c != 3:
        raise VideoError(
            f"frames must be channels-last with 1, 3 or 4 channels, got shape {tuple(arr.shape)}"
        )
    return np.ascontiguousarray(arr)


def _pad_even(arr: np.ndarray) -> np.ndarray:
    ph, pw = arr.shape[1] % 2, arr.shape[2] % 2
    if ph or pw:
        arr = np.pad(arr, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return arr


def _normalize_audio(audio: Any) -> tuple[np.ndarray, int] | None:
    """-> (float32 ``[C,T]`` with C in {1,2}, sample_rate) or None."""
    if audio is None:
        return None
    if isinstance(audio, Mapping):
        if "waveform" not in audio or "sample_rate" not in audio:
            raise VideoError("audio dict needs 'waveform' and 'sample_rate' keys (ComfyUI AUDIO)")
        wav, sr = audio["waveform"], audio["sample_rate"]
    else:
        try:
            wav, sr = audio
        except (TypeError, ValueError):
            raise VideoError(
                "audio must be None, (waveform, sample_rate) or a ComfyUI AUDIO dict"
            ) from None
    if torch is not None and isinstance(wav, torch.Tensor):
        wav = wav.detach().float().cpu().numpy()
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim == 3:  # ComfyUI [B,C,T]: first item of the batch
        if wav.shape[0] < 1:
            raise VideoError("audio waveform batch is empty")
        wav = wav[0]
    if wav.ndim == 1:
        wav = wav[None]
    if wav.ndim != 2:
        raise VideoError(f"audio waveform must be [T], [C,T] or [B,C,T], got {wav.shape}")
    if wav.shape[0] > 2:
        wav = wav.mean(axis=0, keepdims=True)
    if wav.shape[0] < 1:
        raise VideoError("audio waveform has no channels")
    try:
        sr = int(sr)
    except (TypeError, ValueError):
        raise VideoError(f"audio sample_rate must be an integer, got {sr!r}") from None
    if sr <= 0:
        raise VideoError(f"audio sample_rate must be positive, got {sr}")
    wav = np.nan_to_num(wav, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.ascontiguousarray(np.clip(wav, -1.0, 1.0)), sr


def _resample(wav: np.ndarray, sr: int, out_sr: int) -> np.ndarray:
    """libswresample, delay compensated; output length ~= T*out_sr/sr."""
    if sr == out_sr or wav.shape[1] == 0:
        return wav
    layout = "mono" if wav.shape[0] == 1 else "stereo"
    res = av.AudioResampler(format="fltp", layout=layout, rate=out_sr)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wav), format="fltp", layout=layout)
    frame.sample_rate = sr
    frame.pts = 0
    out = [f.to_ndarray() for f in res.resample(frame)]
    out += [f.to_ndarray() for f in res.resample(None)]
    if not out:
        return np.zeros((wav.shape[0], 0), np.float32)
    return np.ascontiguousarray(np.concatenate(out, axis=1), dtype=np.float32)


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


# --------------------------------------------------------------------------- writer


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
        parent = p.parent if str(p.parent) else Path(".")
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

    def _to_yuv(self, frame: "av.VideoFrame") -> "av.VideoFrame":
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

    def __enter__(self) -> "VideoWriter":
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


# --------------------------------------------------------------------------- reading


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
    return np.concatenate(chunks, axis=1), sr

"""Decoding and resampling the way an original inference script does (``InferenceQuirks.audio_loader``).

The originals take audio in three ways, each reproduced here without the ``ffmpeg`` program (PyAV runs the same
FFmpeg libraries in-process: libavcodec's decoders, libswresample's resampler) and without librosa (libsoxr through
the ``soxr`` package, the library librosa calls):

* ``"librosa"``: ``librosa.load(path, sr=16000)`` (librosa 0.10). libsndfile decodes what it can read (wav, flac,
  ogg, mp3, aiff) to float32 (integer PCM over its full scale); anything else (m4a/aac, video) goes through
  audioread's ffmpeg backend, which hands over signed 16-bit samples (float32 = int16 / 32768). The channels are
  averaged (float32), then libsoxr's "HQ" preset resamples and the length is fixed to ``ceil(n * 16000 / rate)``.
* ``"ffmpeg-wav+librosa"``: first ``ffmpeg -i in -ar 16000 out.wav`` (libswresample to 16 kHz, channels kept, signed
  16-bit: ``round(x * 32768)`` clipped), then ``librosa.load`` of that wav (int16 / 32768, channel mean, no
  resampling).
* ``"ffmpeg-s16-mono"``: ``ffmpeg -i in -f s16le -ac 1 -ar 16000 -`` read as int16 / 32768 (whisper's
  ``load_audio``): libswresample downmixes and resamples in one go.
* ``"pyav"``: ours (:mod:`emo_model.audio.signal`: float decode, channel mean, scipy polyphase).

libswresample picks its working sample format from the input and output formats (16-bit integer arithmetic when
both are 16-bit or less); that choice is made explicitly here (:func:`swr_internal_format`) because the filter graph
PyAV builds would otherwise convert to float first, which differs from the ``ffmpeg`` program by 1 LSB on about one
sample in ten. Measured against the originals' own loaders: ``docs/parity.md`` ("Audio front end").

A ComfyUI AUDIO dict has already been decoded (to float32); its samples are taken as 16-bit integers when every
one of them is an exact multiple of 1/32768 (a 16-bit source), so the integer paths stay exact.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .signal import AudioError, LengthCheck, declared_samples

SAMPLE_RATE = 16000
LOADERS = ("pyav", "librosa", "ffmpeg-wav+librosa", "ffmpeg-s16-mono")
# Container formats libsndfile reads (PyAV's names); the others go through audioread's ffmpeg backend (16-bit).
SNDFILE_FORMATS = frozenset({"wav", "w64", "flac", "ogg", "mp3", "aiff", "au", "caf", "voc", "rf64", "sds", "ircam",
                             "nistsphere"})


@dataclass
class Decoded:
    """Audio as a decoder hands it over: ``samples`` [channels, samples] int16 (a 16-bit decoder output) or float32
    (-1..1), its rate, channel layout name, and whether libsndfile could have read the file itself."""

    samples: np.ndarray
    rate: int
    layout: str
    sndfile: bool = True

    @property
    def is_s16(self) -> bool:
        return self.samples.dtype == np.int16

    def as_float(self) -> np.ndarray:
        """float32 -1..1: int16 / 32768 (what libsndfile and librosa give for 16-bit samples)."""
        if self.is_s16:
            return self.samples.astype(np.float32) / np.float32(32768.0)
        return self.samples.astype(np.float32, copy=False)


def _layout_name(channels: int, layout: str | None = None) -> str:
    if layout and not layout.endswith("channels"):
        return layout
    return {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")


def decode_file(path: str | os.PathLike, check_length: LengthCheck | None = None) -> Decoded:
    """Decode a file's first audio track with PyAV, keeping 16-bit decoder output as int16 (others as float32)."""
    from .signal import _frame_to_float

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: '{path}'. Check the path.")
    if check_length is not None:
        declared = declared_samples(path)
        if declared is not None:
            check_length(*declared, "declared")
    chunks, total, rate, layout, fmt_name = [], 0, None, None, ""
    try:
        with av.open(os.fspath(path), mode="r") as container:
            if not container.streams.audio:
                raise AudioError(f"'{path.name}' has no audio track; use an audio file (wav, flac, mp3, ogg, m4a) "
                                 "or a video with sound.")
            fmt_name = container.format.name
            for frame in container.decode(container.streams.audio[0]):
                if frame.samples == 0:
                    continue
                if frame.format.name.rstrip("p") == "s16":
                    data = frame.to_ndarray()
                    if not frame.format.is_planar:
                        data = data.reshape(-1, frame.layout.nb_channels).T
                    chunks.append(np.ascontiguousarray(data, dtype=np.int16))
                else:
                    chunks.append(_frame_to_float(frame))
                total += frame.samples
                rate = rate or frame.sample_rate
                layout = layout or _layout_name(frame.layout.nb_channels, frame.layout.name)
                if check_length is not None:
                    check_length(total, int(rate), "decoding")
    except av.FFmpegError as exc:
        raise AudioError(f"could not decode '{path.name}' as audio ({exc.strerror or exc}); "
                         "re-export it as wav or flac.") from exc
    if not chunks:
        raise AudioError(f"'{path.name}' contains no audio samples (zero-length audio). Use a clip with sound in it.")
    if len({c.dtype for c in chunks}) > 1 or len({c.shape[0] for c in chunks}) > 1:
        chunks = [c.astype(np.float32) / 32768.0 if c.dtype == np.int16 else c for c in chunks]
    samples = np.concatenate(chunks, axis=1)
    sndfile = any(name in SNDFILE_FORMATS for name in fmt_name.split(","))
    return Decoded(samples, int(rate), layout, sndfile)


def from_waveform(waveform, rate: int) -> Decoded:
    """A decoded float waveform [channels, samples] (a ComfyUI AUDIO's); int16 when it is exactly 16-bit."""
    samples = np.ascontiguousarray(np.asarray(waveform, dtype=np.float32))
    scaled = samples * np.float32(32768.0)
    if np.all(scaled == np.round(scaled)) and np.all(np.abs(scaled) <= 32768):
        samples = np.clip(scaled, -32768, 32767).astype(np.int16)
    return Decoded(samples, int(rate), _layout_name(samples.shape[0]))


def decode(source: str | os.PathLike | Mapping, check_length: LengthCheck | None = None) -> Decoded:
    """A file path (decoded here) or a ComfyUI AUDIO dict as :class:`Decoded`."""
    if isinstance(source, Mapping):
        from .signal import load_audio

        waveform, rate = load_audio(source, check_length=check_length)
        return from_waveform(waveform.numpy(), rate)
    return decode_file(source, check_length)


# --------------------------------------------------------------------------------------------------
# libswresample (what the ffmpeg program resamples and converts with)


def swr_internal_format(in_s16: bool, out_s16: bool) -> str:
    """libswresample's working format when none is set (swresample.c ``swr_init``): 16-bit integers when the input
    and the output are 16-bit, else float (the inputs here are int16 or float32)."""
    return "s16p" if in_s16 and out_s16 else "fltp"


def ffmpeg_resample(audio: Decoded, rate: int, layout: str | None = None) -> Decoded:
    """What ``ffmpeg -i in -ar RATE [-ac 1] -c:a pcm_s16le`` gives: signed 16-bit at ``rate``, channels kept (or
    ``layout``), through libswresample with the ffmpeg program's defaults."""
    layout = layout or audio.layout
    in_fmt = "s16p" if audio.is_s16 else "fltp"
    samples = np.ascontiguousarray(audio.samples)
    graph = av.filter.Graph()
    src = graph.add_abuffer(format=in_fmt, sample_rate=audio.rate, layout=audio.layout, time_base=Fraction(1, audio.rate))
    resample = graph.add("aresample", f"{rate}:internal_sample_fmt={swr_internal_format(audio.is_s16, True)}")
    fmt = graph.add("aformat", f"sample_fmts=s16:sample_rates={rate}:channel_layouts={layout}")
    sink = graph.add("abuffersink")
    src.link_to(resample)
    resample.link_to(fmt)
    fmt.link_to(sink)
    graph.configure()
    out: list[np.ndarray] = []

    def drain() -> None:
        while True:
            try:
                frame = graph.pull()
            except (av.BlockingIOError, av.EOFError):
                return
            out.append(frame.to_ndarray().reshape(-1, frame.layout.nb_channels).T)

    step = 1 << 16
    for start in range(0, samples.shape[1], step):
        piece = np.ascontiguousarray(samples[:, start : start + step])
        frame = av.AudioFrame.from_ndarray(piece, format=in_fmt, layout=audio.layout)
        frame.sample_rate, frame.pts, frame.time_base = audio.rate, start, Fraction(1, audio.rate)
        graph.push(frame)
        drain()
    graph.push(None)
    drain()
    channels = out[0].shape[0] if out else 1
    result = np.concatenate(out, axis=1) if out else np.zeros((channels, 0), np.int16)
    return Decoded(np.ascontiguousarray(result, dtype=np.int16), int(rate), layout)


# --------------------------------------------------------------------------------------------------
# librosa.load


SOXR_MISSING = ("soxr is not installed; the audio was resampled with scipy, not libsoxr as this model's original does "
                "(slightly different). pip install soxr")


def soxr_available() -> bool:
    try:
        import soxr  # noqa: F401
    except ImportError:
        return False
    return True


def soxr_resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``librosa.resample(res_type="soxr_hq")``: libsoxr HQ per channel, length fixed to ``ceil(n * target / rate)``.
    Without the soxr package (a requirement; an old install may lack it): scipy's polyphase resampler, same length
    (:data:`SOXR_MISSING` says so)."""
    if rate == target:
        return samples
    n_out = int(np.ceil(samples.shape[-1] * float(target) / rate))
    rows = np.atleast_2d(samples)
    if soxr_available():
        import soxr

        out = np.stack([soxr.resample(row, rate, target, quality="soxr_hq") for row in rows])
    else:
        from scipy.signal import resample_poly

        g = math.gcd(rate, target)
        out = resample_poly(rows, target // g, rate // g, axis=-1)
    if out.shape[-1] < n_out:
        out = np.pad(out, ((0, 0), (0, n_out - out.shape[-1])))
    out = np.ascontiguousarray(out[:, :n_out], dtype=samples.dtype)
    return out if samples.ndim > 1 else out[0]


def librosa_load(audio: Decoded, rate: int = SAMPLE_RATE, mono: bool = True) -> np.ndarray:
    """``librosa.load(path, sr=rate, mono=mono)`` of a decoded file: float32 [samples] (mono) or [channels, samples]."""
    if audio.sndfile or audio.is_s16:
        samples = audio.as_float()
    else:  # audioread's ffmpeg backend: the decoder's output converted to signed 16-bit
        samples = ffmpeg_resample(audio, audio.rate).as_float()
    if mono:
        samples = np.mean(samples, axis=0) if samples.shape[0] > 1 else samples[0]
    return soxr_resample(samples, audio.rate, rate)


def load(audio: Decoded, loader: str) -> np.ndarray:
    """The mono 16 kHz float32 waveform ``loader`` (one of :data:`LOADERS` but ``"pyav"``) makes of ``audio``."""
    if loader == "librosa":
        return librosa_load(audio)
    if loader == "ffmpeg-wav+librosa":
        return librosa_load(ffmpeg_resample(audio, SAMPLE_RATE))
    if loader == "ffmpeg-s16-mono":
        return ffmpeg_resample(audio, SAMPLE_RATE, "mono").as_float()[0]
    raise AudioError(f"unknown audio loader {loader!r}; expected one of {', '.join(LOADERS)}")


def first_stage(audio: Decoded, loader: str) -> Decoded:
    """The file the loader's librosa.load reads: the source itself, or the ffmpeg program's 16 kHz wav."""
    return ffmpeg_resample(audio, SAMPLE_RATE) if loader == "ffmpeg-wav+librosa" else audio


def frames_of(samples: int, fps: float) -> int:
    """The originals' ``seq_len``: ``ceil(samples / 16000 * fps)``."""
    return max(1, math.ceil(samples / SAMPLE_RATE * fps))

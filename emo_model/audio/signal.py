"""Audio front end: decoding, mixdown, resampling, loudness, frame count and per-frame windows.

Everything downstream works on one representation, :class:`PreparedAudio`: a mono float32 waveform at
16 kHz whose length is exactly the video's frame count at the video's fps. Decisions, in one place:

* **Frame count** (:func:`num_video_frames`): ``ceil(duration * fps)`` as the originals compute their
  ``seq_len``, so the last, partial frame still gets a video frame, with a minimum of one frame. The
  product is snapped to the nearest integer when it is within 1e-6 of it, so float error never adds a
  frame (2.0 s at 25 fps is 50 frames, not 51). One sample is worth more than 1e-6 frames at any
  rate up to 768 kHz and 1 fps or more, so this never swallows real audio.
* **Samples per clip**: ``num_frames`` frames at ``fps`` are ``round(num_frames * 16000 / fps)`` samples;
  :func:`prepare_audio` pads with silence or trims to exactly that many.
* **Decoding** uses PyAV (the FFmpeg libraries in-process; no ``ffmpeg`` subprocess): wav, flac, mp3,
  ogg, m4a/aac and the audio track of video containers. Integer PCM is scaled to -1..1 by its full
  scale (u8, s16, s24-in-s32, s32, s64). Files are decoded frame by frame; a caller's length check
  (``load_audio(check_length=...)``, the frame limit) sees the length the container records before any
  decoding and the running length after every frame, so too-long audio costs no more than the limit.
* **Resampling** uses ``scipy.signal.resample_poly`` (polyphase FIR, Kaiser window) for files and
  tensors alike. It handles every integer rate pair as an exact ratio (44.1 -> 16 kHz is 160/441), is deterministic,
  has no state or frame-boundary effects, and works on a whole array in one call, whereas PyAV's
  ``AudioResampler`` is stream-oriented and would need AudioFrames built around every tensor.
  Channels are averaged (equal weights) *before* resampling, which is the cheaper order and gives
  the same result because both operations are linear.
* **Loudness** (optional) follows ITU-R BS.1770 via ``pyloudnorm`` (K-weighting, gated integrated
  loudness). The suggested target is :data:`SUGGESTED_LUFS` = -23 LUFS (EBU R 128). Silence, whose
  loudness is below the -70 LUFS absolute gate, is left untouched; clips shorter than one 400 ms
  measuring block are measured on a looped copy; the gain is limited so the peak stays at or below
  full scale (the result is then quieter than the target rather than clipped).

Every rejected input raises :class:`AudioError` (a ``ValueError``) saying what was wrong and what to do.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pyloudnorm
import torch
from scipy.signal import resample_poly

SAMPLE_RATE = 16000
SUGGESTED_LUFS = -23.0

# Full scale of each integer sample format PyAV can hand out (planar or packed), and its zero point.
_INT_FULL_SCALE = {"u8": (128.0, 128.0), "s16": (32768.0, 0.0), "s32": (2.0**31, 0.0), "s64": (2.0**63, 0.0)}


class AudioError(ValueError):
    """Bad audio input: the message says what was wrong and what to do about it."""


# --------------------------------------------------------------------------------------------------
# Frame arithmetic


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_fps(fps: float) -> float:
    if not _is_number(fps) or fps <= 0:
        raise AudioError(f"fps must be a positive number of video frames per second, got {fps!r}")
    return float(fps)


def ceil_frames(x: float) -> int:
    """``ceil(x)``, except that a value within 1e-6 of an integer counts as that integer (float error)."""
    nearest = round(x)
    return nearest if abs(x - nearest) <= 1e-6 else math.ceil(x)


def num_video_frames(num_samples: int, sample_rate: int, fps: float) -> int:
    """Number of video frames that cover ``num_samples`` samples at ``sample_rate`` Hz.

    ``ceil(num_samples / sample_rate * fps)``, at least 1; a product within 1e-6 of an integer counts
    as that integer, so exact durations do not gain a frame from float error.
    """
    fps = _check_fps(fps)
    if num_samples < 0:
        raise AudioError(f"num_samples must be >= 0, got {num_samples}")
    if sample_rate <= 0:
        raise AudioError(f"sample_rate must be a positive integer, got {sample_rate}")
    return max(1, ceil_frames(num_samples * fps / sample_rate))


def frame_samples(num_frames: int, fps: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Samples that ``num_frames`` video frames at ``fps`` span: ``round(num_frames * sample_rate / fps)``."""
    return round(num_frames * sample_rate / _check_fps(fps))


# --------------------------------------------------------------------------------------------------
# Loading


def _frame_to_float(frame: av.AudioFrame) -> np.ndarray:
    """One decoded AudioFrame as float32 [channels, samples] in -1..1."""
    data = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if not frame.format.is_planar:  # packed: [1, samples * channels], interleaved
        data = data.reshape(-1, channels).T
    base = frame.format.name.rstrip("p")
    if base in _INT_FULL_SCALE:
        scale, zero = _INT_FULL_SCALE[base]
        return ((data.astype(np.float64) - zero) / scale).astype(np.float32)
    return data.astype(np.float32, copy=False)


LengthCheck = Callable[[int, int, str], None]
"""``check_length(samples, sample_rate, how)``: raises when that much audio is too long for the run; ``how`` says where
the count came from: ``"declared"`` (the container's recorded length, before any decoding), ``"decoding"`` (the
samples decoded so far: the audio is at least that long) or ``""`` (the whole audio, already in memory)."""


def declared_samples(path: str | os.PathLike) -> tuple[int, int] | None:
    """(samples, sample rate) of a file's first audio track as its container records them (WAV/FLAC headers, the MP4
    index, Ogg's last page, an estimate from the bit rate for bare MP3/AAC), read without decoding; None if unknown."""
    try:
        with av.open(os.fspath(path), mode="r") as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate or stream.sample_rate
            if not rate:
                return None
            if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration is not None and container.duration > 0:
                seconds = container.duration / av.time_base
            else:
                return None
            return round(seconds * rate), int(rate)
    except (av.FFmpegError, OSError):
        return None  # _decode_file says what is wrong with the file


def _decode_file(path: Path, check_length: LengthCheck | None = None) -> tuple[np.ndarray, int, float]:
    """(float32 [channels, samples], rate, peak) of a file, decoded frame by frame.

    With ``check_length`` the container's recorded length is checked before anything is decoded, and the running
    count after every decoded frame, so too-long audio is refused at the limit whatever its length or format (peak
    memory: the audio up to the limit). The frames are copied into one array at the end, each one freed as it is
    copied (the decoded audio is held once, not twice); peak and finiteness are measured frame by frame.
    """
    if not path.is_file():
        if path.is_dir():
            raise AudioError(f"'{path}' is a folder, not an audio file; give the file in it (wav, flac, mp3, ogg, m4a or a video).")
        if path.exists():  # opening a FIFO would wait for a writer forever
            raise AudioError(f"'{path}' is not a regular file (a pipe, device or socket); give an audio file.")
        raise AudioError(f"audio file not found: '{path}'. Check the path (or pick the file in the LoadAudio node).")
    if check_length is not None:
        declared = declared_samples(path)
        if declared is not None:
            check_length(*declared, "declared")
    chunks: list[np.ndarray] = []
    total, peak, sample_rate = 0, 0.0, None
    try:
        with av.open(os.fspath(path), mode="r") as container:
            if not container.streams.audio:
                raise AudioError(
                    f"'{path.name}' has no audio track (it holds {len(container.streams)} other stream(s)). "
                    "Use an audio file (wav, flac, mp3, ogg, m4a) or a video with sound."
                )
            stream = container.streams.audio[0]
            for frame in container.decode(stream):
                chunk = _frame_to_float(frame)
                if chunk.shape[1] == 0:
                    continue
                if chunks and chunk.shape[0] != chunks[0].shape[0]:
                    raise AudioError(
                        f"'{path.name}' changes its channel count mid-stream ({chunks[0].shape[0]} -> {chunk.shape[0]}); "
                        "re-export it as wav or flac."
                    )
                if not np.isfinite(chunk).all():
                    raise AudioError("the audio contains NaN or infinite samples; re-export it or fix the node that produced it.")
                peak = max(peak, float(np.abs(chunk).max()))
                chunks.append(chunk)
                total += chunk.shape[1]
                sample_rate = sample_rate or frame.sample_rate
                if check_length is not None:
                    check_length(total, int(sample_rate), "decoding")
    except av.FFmpegError as exc:
        raise AudioError(
            f"could not decode '{path.name}' as audio ({exc.strerror or exc}). The file is corrupt or not an "
            "audio/video file; re-export it as wav or flac."
        ) from exc
    except OSError as exc:
        raise AudioError(f"could not read '{path}': {exc}") from exc
    if not chunks:
        raise AudioError(f"'{path.name}' contains no audio samples (zero-length audio). Use a clip with sound in it.")
    out = np.empty((chunks[0].shape[0], total), dtype=np.float32)
    chunks.reverse()
    at = 0
    while chunks:  # each frame's array is dropped as soon as it is copied
        chunk = chunks.pop()
        out[:, at : at + chunk.shape[1]] = chunk
        at += chunk.shape[1]
    return out, int(sample_rate), peak


def _peak_and_finite(waveform: torch.Tensor) -> tuple[float, bool]:
    """The largest magnitude and whether every sample is finite, 1 M samples at a time (no copy of the waveform)."""
    flat, peak = waveform.reshape(-1), 0.0
    for start in range(0, flat.numel(), 1 << 20):
        lo, hi = torch.aminmax(flat[start : start + (1 << 20)])
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return math.nan, False
        peak = max(peak, -lo, hi)
    return peak, True


def _from_comfy(audio: Mapping) -> tuple[torch.Tensor, int]:
    missing = {"waveform", "sample_rate"} - set(audio)
    if missing:
        raise AudioError(
            f"AUDIO dict is missing {sorted(missing)} (has {sorted(audio)}); expected ComfyUI's "
            '{"waveform": tensor [batch, channels, samples], "sample_rate": int}.'
        )
    waveform, sample_rate = audio["waveform"], audio["sample_rate"]
    if not isinstance(waveform, torch.Tensor) or waveform.ndim != 3:
        shape = tuple(waveform.shape) if isinstance(waveform, torch.Tensor) else type(waveform).__name__
        raise AudioError(f"AUDIO waveform must be a tensor [batch, channels, samples], got {shape}.")
    if waveform.shape[0] != 1:
        raise AudioError(f"AUDIO holds a batch of {waveform.shape[0]} clips; one clip drives one video. Split the batch first.")
    if waveform.is_meta:
        raise AudioError("AUDIO waveform is on the 'meta' device (a shape without samples: a failed upstream node); fix that node.")
    if not waveform.is_floating_point():
        raise AudioError(f"AUDIO waveform must be floating point in -1..1, got dtype {waveform.dtype}.")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Integral) or sample_rate <= 0:
        raise AudioError(f"AUDIO sample_rate must be a positive integer, got {sample_rate!r}.")
    return waveform[0].detach().to("cpu", torch.float32), int(sample_rate)


def load_audio(source: str | os.PathLike | Mapping, *, check_length: LengthCheck | None = None) -> tuple[torch.Tensor, int]:
    """Load audio as float32 ``[channels, samples]`` in -1..1, with its sample rate.

    ``source`` is a file path (decoded with PyAV, frame by frame) or a ComfyUI AUDIO dict
    ``{"waveform": [1, C, T], "sample_rate": int}``. Float sources whose peak exceeds 1 are scaled
    down to peak 1 (never clipped). Raises :class:`AudioError` for missing, corrupt, empty or
    non-finite input. ``check_length`` (see :data:`LengthCheck`) refuses too-long audio: a file's recorded length
    before decoding and its running length while decoding (decoding stops there); an AUDIO dict's length at once.
    """
    if isinstance(source, (str, os.PathLike)):
        array, sample_rate, peak = _decode_file(Path(source), check_length)
        waveform = torch.from_numpy(array)
    elif isinstance(source, Mapping):
        waveform, sample_rate = _from_comfy(source)
        if check_length is not None and waveform.shape[-1]:
            check_length(waveform.shape[-1], sample_rate, "")
        peak = None
    else:
        raise AudioError(f"expected an audio file path or a ComfyUI AUDIO dict, got {type(source).__name__}.")
    if waveform.shape[0] == 0 or waveform.shape[1] == 0:
        raise AudioError(f"the audio is empty (shape {tuple(waveform.shape)}); use a clip with at least one sample.")
    if peak is None:
        peak, finite = _peak_and_finite(waveform)
        if not finite:
            raise AudioError("the audio contains NaN or infinite samples; re-export it or fix the node that produced it.")
    if peak > 1.0:
        waveform = waveform / peak
    return waveform.contiguous(), sample_rate


# --------------------------------------------------------------------------------------------------
# Preparation


def resample(waveform: torch.Tensor, sample_rate: int, target_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Resample the last axis from ``sample_rate`` to ``target_rate`` (scipy polyphase, float32)."""
    if sample_rate == target_rate:
        return waveform
    g = math.gcd(sample_rate, target_rate)
    out = resample_poly(waveform.numpy(), target_rate // g, sample_rate // g, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def normalize_loudness(waveform: torch.Tensor, target_lufs: float, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Scale a mono waveform to ``target_lufs`` integrated loudness (ITU-R BS.1770), peak <= 1.

    Silence (nothing above the -70 LUFS gate) is returned as it is. Clips shorter than one 400 ms
    block are measured on a looped copy of themselves.
    """
    if not _is_number(target_lufs) or not -70.0 <= target_lufs <= 0.0:
        raise AudioError(f"loudness_lufs must be between -70 and 0 LUFS (suggested {SUGGESTED_LUFS}), got {target_lufs!r}")
    meter = pyloudnorm.Meter(sample_rate)
    signal = waveform.numpy().astype(np.float64)
    block = math.ceil(meter.block_size * sample_rate) + 1
    if signal.size < block:
        signal = np.tile(signal, math.ceil(block / signal.size))
    with np.errstate(divide="ignore"):
        loudness = meter.integrated_loudness(signal)
    if not math.isfinite(loudness):
        return waveform
    gain = 10.0 ** ((target_lufs - loudness) / 20.0)
    peak = float(waveform.abs().max()) * gain
    if peak > 1.0:
        gain /= peak
    return waveform * gain


@dataclass
class PreparedAudio:
    """Mono 16 kHz audio cut to exactly ``num_frames`` video frames at ``fps``."""

    waveform: torch.Tensor  # [T] float32, T == round(num_frames * sample_rate / fps)
    num_frames: int
    fps: float
    sample_rate: int = SAMPLE_RATE
    # how many leading samples came from the source (the rest is silence padding); None: all of them
    source_samples: int | None = None

    @property
    def real_samples(self) -> int:
        """The samples that came from the source (``waveform[:real_samples]``)."""
        n = self.waveform.shape[-1]
        return n if self.source_samples is None else min(n, self.source_samples)

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.waveform.shape[-1] / self.sample_rate

    def as_comfy(self) -> dict:
        """The ComfyUI AUDIO value of exactly this audio: ``{"waveform": [1, 1, T], "sample_rate": 16000}``."""
        return {"waveform": self.waveform.detach().to("cpu", torch.float32).reshape(1, 1, -1), "sample_rate": self.sample_rate}


def prepare_audio(
    source: str | os.PathLike | Mapping,
    fps: float,
    *,
    loudness_lufs: float | None = None,
    num_frames: int | None = None,
) -> PreparedAudio:
    """Load, mix down to mono, resample to 16 kHz, optionally normalise loudness, and cut to the frames.

    The frame count is :func:`num_video_frames` of the source (its own length and rate) unless
    ``num_frames`` is given; the waveform is then padded with silence or trimmed to
    ``round(num_frames * 16000 / fps)`` samples.
    """
    fps = _check_fps(fps)
    if num_frames is not None and (isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1):
        raise AudioError(f"num_frames must be a positive integer or None, got {num_frames!r}")
    waveform, sample_rate = load_audio(source)
    frames = num_frames or num_video_frames(waveform.shape[-1], sample_rate, fps)
    mono = resample(waveform.mean(dim=0), sample_rate)
    if loudness_lufs is not None:
        mono = normalize_loudness(mono, loudness_lufs)
    target = frame_samples(frames, fps)
    real = min(mono.shape[0], target)
    if mono.shape[0] >= target:
        mono = mono[:target].clone()
    else:
        mono = torch.nn.functional.pad(mono, (0, target - mono.shape[0]))
    return PreparedAudio(waveform=mono, num_frames=frames, fps=fps, source_samples=real)


# --------------------------------------------------------------------------------------------------
# Windows


def window_frames(per_frame: torch.Tensor, margin: int) -> torch.Tensor:
    """Stack each frame with its ``margin`` neighbours on both sides: ``[F, ...] -> [F, 2m+1, ...]``.

    Row ``f`` holds frames ``f-m .. f+m``, indices clamped to ``0 .. F-1``. The result is a strided
    view of an edge-padded copy (``F + 2m`` frames), not ``2m+1`` copies; call ``.contiguous()``
    before writing into it.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if per_frame.shape[0] == 0:
        raise ValueError("window_frames needs at least one frame")
    first = per_frame[:1].expand(margin, *per_frame.shape[1:])
    last = per_frame[-1:].expand(margin, *per_frame.shape[1:])
    padded = torch.cat([first, per_frame, last], dim=0)
    return padded.unfold(0, 2 * margin + 1, 1).movedim(-1, 1)

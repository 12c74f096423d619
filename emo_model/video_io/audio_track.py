"""The audio track: a ComfyUI AUDIO dict or (samples, rate) to one float32 channel-major array, resampled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import av
import numpy as np

try:  # torch is optional for this module (numpy input works without it)
    import torch
except ImportError:  # pragma: no cover - torch is always present in ComfyUI
    torch = None

from .formats import VideoError


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
        if wav.is_meta:
            raise VideoError("audio waveform is on the 'meta' device (a shape without samples); give real audio")
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
    if not np.isfinite(wav).all():  # not silently zeroed: the node before failed, and the video would hide it
        raise VideoError("audio holds NaN or infinite samples (a failed upstream node); fix the node that made it")
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



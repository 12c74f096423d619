"""A family's audio front end: how its original takes the driving audio before the audio encoder.

Two fields say it: ``InferenceQuirks.audio_loader`` (how the file is decoded and resampled to 16 kHz mono:
:mod:`emo_model.audio.decode`) and ``Family.vocal_separator`` (vocal separation first, when the user has the
separator's model file: :mod:`emo_model.audio.vocal_separation`). :func:`take_audio` applies both and returns the audio that
drives the mouth (the vocals when separated) and the whole mix (for the video, and for what the original computes on
the un-separated audio).

With ``InferenceQuirks.audio_segment_seconds`` the source is cut into pieces of that many seconds first, each one
loaded (and separated) on its own, as an original that hands each piece to its loader separately does.

``InferenceQuirks.emotion_channel = "first"``: the audio-emotion classifier hears the first channel of the whole
source at 16 kHz as the loader makes it before mixing down (:func:`first_channel`), carried as ``TakenAudio.emotion``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import decode as audio_decode
from .signal import LengthCheck


@dataclass
class TakenAudio:
    """AUDIO dicts at 16 kHz mono: ``drive`` (what the encoder gets), ``mix`` (the un-separated audio) and ``vocals``
    (``drive`` when separated, else None); ``note``: one line for the user ('' when there is nothing to say);
    ``emotion``: the 16 kHz float32 waveform [samples] the audio-emotion classifier hears (None: the mix)."""

    drive: dict
    mix: dict
    vocals: dict | None = None
    note: str = ""
    emotion: torch.Tensor | None = None


def _as_audio(samples: np.ndarray) -> dict:
    return {"waveform": torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).reshape(1, 1, -1),
            "sample_rate": audio_decode.SAMPLE_RATE}


def _pieces(audio: audio_decode.Decoded, seconds: float | None) -> list[audio_decode.Decoded]:
    if not seconds:
        return [audio]
    step = int(round(seconds * audio.rate))
    count = max(1, math.ceil(audio.samples.shape[1] / step))
    return [audio_decode.Decoded(audio.samples[:, i * step : (i + 1) * step], audio.rate, audio.layout, audio.sndfile)
            for i in range(count)]


def uses_original_front_end(config, family) -> bool:
    """Whether this model's audio goes through :func:`take_audio` (its original's loader, separation or emotion input)."""
    quirks = config.preset.quirks
    separator = getattr(family, "vocal_separator", None)
    return quirks.audio_loader != "pyav" or quirks.emotion_channel != "mix" or separator is not None


def first_channel(audio: audio_decode.Decoded, loader: str) -> torch.Tensor:
    """Channel 0 of ``audio`` at 16 kHz as ``loader`` makes it before mixing down, float32 [samples]: the ffmpeg
    program's 16-bit wav read as int16 / 32768 (``"ffmpeg-wav+librosa"``; what ``torchaudio.load(wav)[0]`` gives),
    ``librosa.load(mono=False)[0]``, whisper's mono read (``"ffmpeg-s16-mono"`` has no channels), or ours resampled."""
    if loader == "ffmpeg-wav+librosa":
        samples = audio_decode.ffmpeg_resample(audio, audio_decode.SAMPLE_RATE).as_float()[0]
    elif loader == "librosa":
        samples = np.atleast_2d(audio_decode.librosa_load(audio, mono=False))[0]
    elif loader == "ffmpeg-s16-mono":
        samples = audio_decode.load(audio, loader)
    else:
        from .signal import resample

        return resample(torch.from_numpy(audio.as_float()[0].copy()), audio.rate).float()
    return torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))


def take_audio(source: str | Path | Mapping, config, family, model_path, *, separate: bool = True,
               check_length: LengthCheck | None = None) -> TakenAudio:
    """The driving audio as ``family``'s original takes it, from a file path or a ComfyUI AUDIO dict.

    ``separate``: run the family's vocal separation when its model file (and onnxruntime) is there; when it is not,
    ``note`` says what is missing and the whole mix drives the mouth.
    """
    from . import vocal_separation

    quirks = config.preset.quirks
    loader = quirks.audio_loader
    decoded = audio_decode.decode(source, check_length)
    pieces = _pieces(decoded, quirks.audio_segment_seconds)
    if loader == "pyav":  # ours (the family has a separator but no loader of its own)
        from .signal import resample

        mix = [resample(torch.from_numpy(p.as_float()).mean(dim=0), p.rate).numpy() for p in pieces]
    else:
        mix = [audio_decode.load(p, loader) for p in pieces]
    mix_audio = _as_audio(np.concatenate(mix))
    emotion = first_channel(decoded, loader) if quirks.emotion_channel == "first" else None
    settings = getattr(family, "vocal_separator", None)
    soxr_note = "" if audio_decode.soxr_available() else audio_decode.SOXR_MISSING
    if settings is None or not separate:
        return TakenAudio(drive=mix_audio, mix=mix_audio, note=soxr_note if loader != "pyav" and "librosa" in loader else "",
                          emotion=emotion)
    note = vocal_separation.missing_reason(settings, model_path)
    if note:
        return TakenAudio(drive=mix_audio, mix=mix_audio, note=note, emotion=emotion)
    separator = vocal_separation.load_separator(settings, model_path)
    vocals = _as_audio(np.concatenate([vocal_separation.separate(p, loader, separator)[0] for p in pieces]))
    return TakenAudio(drive=vocals, mix=mix_audio, vocals=vocals, note=soxr_note, emotion=emotion)


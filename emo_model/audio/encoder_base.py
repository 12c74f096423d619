"""What an audio encoder is: per-video-frame features of a waveform, and the shipped configs of the published encoders."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch

from ..configs import AudioFeatureConfig
from .signal import SAMPLE_RATE, AudioError, PreparedAudio, frame_samples

MODEL_CONFIGS = Path(__file__).parent.parent / "model_configs"


WAV2VEC2_CONFIG_DIR = MODEL_CONFIGS / "wav2vec2-base-960h"


@dataclass
class AudioFeatures:
    """The ``EMO_AUDIO`` value: per-frame features and the exact audio they were computed from.

    ``features`` may be a non-contiguous view (see :func:`~emo_model.audio.signal.window_frames`): slice it per
    clip and move the slice to the device, or call ``.contiguous()`` before ``.view()``. From
    :meth:`Session.encode_audio <emo_model.app.session.Session.encode_audio>` it is usually a
    :class:`~emo_model.audio.stream.StreamedFeatures`, which computes the rows a clip asks for
    (``features[index]``; ``features[:]`` is every row).
    """

    features: torch.Tensor  # float32 CPU, [F', ...] (see the module docstring); F' >= num_frames; or StreamedFeatures
    # (rows after num_frames: the silent frames padding the last clip, InferenceQuirks.audio_padded_to_clips)
    fps: float
    num_frames: int
    audio: PreparedAudio
    kind: str
    # the separated vocals that drove the features (the family's vocal separation ran; ``audio`` is then the whole mix)
    vocals: PreparedAudio | None = None
    note: str = ""  # one line for the user about the audio front end ('' when there is nothing to say)
    # the 16 kHz float32 waveform [samples] the audio-emotion classifier hears (InferenceQuirks.emotion_channel; None: audio)
    emotion_audio: torch.Tensor | None = None


class AudioEncoder(ABC):
    """Turns prepared 16 kHz audio into windowed per-video-frame features."""

    kind: str

    def __init__(self, cfg: AudioFeatureConfig):
        if cfg.kind != self.kind:
            raise AudioError(f"a {self.kind} encoder cannot serve an audio config of kind {cfg.kind!r}")
        self.cfg = cfg

    @abstractmethod
    def encode(self, audio: PreparedAudio) -> torch.Tensor:
        """Features for ``audio.num_frames`` frames, float32 on the CPU."""

    def _check(self, audio: PreparedAudio) -> None:
        expected = frame_samples(audio.num_frames, audio.fps, audio.sample_rate)
        if audio.sample_rate != SAMPLE_RATE or audio.waveform.ndim != 1 or audio.waveform.shape[0] != expected:
            raise AudioError(
                f"expected mono {SAMPLE_RATE} Hz audio of {expected} samples for {audio.num_frames} frames at "
                f"{audio.fps} fps, got {tuple(audio.waveform.shape)} at {audio.sample_rate} Hz; use prepare_audio()."
            )


def _stft_pieces(waveform: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor, frames: int, piece: int):
    """Frames ``0 .. frames-1`` of ``torch.stft(waveform, n_fft, hop, window=window, center=True)`` (reflect padding),
    ``piece`` frames at a time: yields ``(skip, spectrum [n_fft // 2 + 1, piece])``, whose frames after the first
    ``skip`` are new. Every piece has exactly ``piece`` frames (the last one overlaps the one before), so what the
    caller computes from a piece runs on a block of the same size each time. Needs ``frames >= piece`` and more than
    ``n_fft // 2`` samples. STFT frames are independent: the values are those of the whole spectrogram."""
    n, half = waveform.shape[0], n_fft // 2
    # the centred STFT's input, waveform[half:0:-1] + waveform + waveform[-2:-half-2:-1], read piece by piece
    left, right = waveform[1 : half + 1].flip(0), waveform[n - half - 1 : n - 1].flip(0)
    done = 0
    while done < frames:
        k0 = min(done, frames - piece)
        a, b = k0 * hop, (k0 + piece - 1) * hop + n_fft  # padded coordinates
        middle = waveform[max(a - half, 0) : max(b - half, 0)]
        segment = torch.cat([left[a:b], middle, right[max(a - n - half, 0) : max(b - n - half, 0)]])
        yield done - k0, torch.stft(segment, n_fft, hop, window=window, center=False, return_complex=True)
        done = k0 + piece

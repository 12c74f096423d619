"""Per-video-frame audio features: wav2vec2, whisper-tiny and a weight-free log-mel.

Every encoder turns a :class:`~emo_model.audio.signal.PreparedAudio` into one feature block per video frame,
float32 on the CPU:

* ``wav2vec2`` -> ``[F, 2m+1, layers, dim]`` (12 x 768), the wav2vec2 families' recipe: the waveform is normalised to
  zero mean / unit variance (the 960h ``do_normalize``); with ``interpolate_conv`` the conv features
  are resampled linearly (``align_corners=True``) to F steps before the transformer, so every video
  frame gets one token per layer; otherwise the 50 Hz hidden states are resampled to F. The layer
  outputs (``hidden_states[1:]``) are kept.
* ``whisper`` -> ``[F, window * layers, dim]`` (10 x 5 = 50 tokens of 384), the whisper family's recipe: whisper's
  log-mel of the whole clip, encoded in 30 s windows; the embedding output and every block output
  (no final LayerNorm) at 50 Hz; frame i reads whisper steps ``int(i * 50 / fps) - 4 .. + 5``, clamped.
* ``logmel`` -> ``[F, 2m+1, 1, n_mels]``, no weights: the mel power of each video frame's span, log10,
  fixed normalisation constants (the CPU demo model).

``2m+1`` is ``cfg.window``: each frame stacked with ``cfg.margin`` neighbours on both sides
(:func:`~emo_model.audio.signal.window_frames`, a strided view rather than copies).

Long audio. wav2vec2 runs in pieces of ``chunk_seconds`` (20 s) of video frames, each with
``context_seconds`` (2.5 s) of extra audio on both sides that is encoded and then dropped, so memory
stays bounded (about 25 s of audio in the model at once) and every kept frame sees at least 2.5 s of
context. Audio up to 20 s is one piece; ``single_pass`` (InferenceQuirks.audio_single_pass)
encodes any length in one piece, as an original that runs the encoder once does; ``segment_seconds`` (InferenceQuirks.audio_segment_seconds) cuts
the audio into independent pieces, each normalised and encoded on its own. Whisper works on its native 30 s
windows, as its original does. The log-mel spectrograms (log-mel and whisper) are computed in pieces of 20 / 30 s.

Weights are read from local files only: ``.safetensors`` with safetensors, anything else with
``torch.load(weights_only=True)``, which refuses pickles that would run code. The shipped configs in
``model_configs/`` describe wav2vec2-base-960h and whisper-tiny for checkpoints that come as one file.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers.audio_utils import mel_filter_bank

from ..configs import AudioFeatureConfig
from .encoder_base import AudioEncoder, AudioFeatures, _stft_pieces
from .signal import SAMPLE_RATE, AudioError, PreparedAudio, ceil_frames, frame_samples, prepare_audio, window_frames
from .wav2vec2 import Wav2Vec2AudioEncoder, _interpolate_time
from .whisper import WhisperAudioEncoder

# --------------------------------------------------------------------------------------------------
# Log-mel (no weights)


class LogMelAudioEncoder(AudioEncoder):
    """Log-mel energies per video frame: ``[F, 2m+1, 1, n_mels]`` with ``n_mels = cfg.dim``.

    STFT with a 25 ms Hann window and a 10 ms hop (centred frames); the mel power of the STFT frames
    whose centres fall in a video frame's time span is averaged, then ``log10(power + FLOOR)`` is
    mapped to roughly zero mean / unit spread by the fixed ``OFFSET`` and ``SCALE`` (measured once on
    synthetic speech at -23 LUFS: log10 mean -3.2, spread 1.8). Being fixed, they keep loudness
    differences between frames and clips (a per-utterance normalisation would erase them). Digital
    silence maps to ``(log10(FLOOR) - OFFSET) / SCALE`` = -1.5.
    """

    kind = "logmel"
    N_FFT = 400
    HOP = 160
    FLOOR = 1e-6
    OFFSET = -3.0
    SCALE = 2.0
    PIECE = 2000  # STFT frames per piece (20 s): the spectrogram of a long clip never exists whole

    def __init__(self, cfg: AudioFeatureConfig):
        super().__init__(cfg)
        if cfg.layers != 1:
            raise AudioError(f"logmel features have 1 layer, but the audio config asks for {cfg.layers}")
        filters = mel_filter_bank(
            num_frequency_bins=self.N_FFT // 2 + 1,
            num_mel_filters=cfg.dim,
            min_frequency=0.0,
            max_frequency=SAMPLE_RATE / 2,
            sampling_rate=SAMPLE_RATE,
            norm="slaney",
            mel_scale="slaney",
        )
        self.filters = torch.from_numpy(filters).float()  # [freq, n_mels]
        self.window = torch.hann_window(self.N_FFT)

    def encode(self, audio: PreparedAudio) -> torch.Tensor:
        return window_frames(self.per_frame(audio), self.cfg.margin)

    def mel_power(self, waveform: torch.Tensor) -> torch.Tensor:
        """``[frames, n_mels]``: the mel power of ``torch.stft(waveform, center=True)`` (reflect padding), computed
        in pieces of :attr:`PIECE` frames: STFT frames are independent, so the values are those of the whole
        spectrogram at once, without its memory (48 MB per minute of audio as complex numbers). Every piece has
        exactly ``PIECE`` frames (the last one overlaps the one before), so the filter-bank product always runs
        on a full block of rows, as it does for the whole spectrogram."""
        frames = 1 + waveform.shape[0] // self.HOP
        if frames <= self.PIECE or waveform.shape[0] <= self.N_FFT // 2:  # one piece (or too short to reflect: stft says so)
            spec = torch.stft(waveform, self.N_FFT, self.HOP, window=self.window, return_complex=True)
            return spec.abs().square().T @ self.filters
        pieces = _stft_pieces(waveform, self.N_FFT, self.HOP, self.window, frames, self.PIECE)
        return torch.cat([(spec.abs().square().T @ self.filters)[skip:] for skip, spec in pieces])

    @torch.no_grad()
    def per_frame(self, audio: PreparedAudio) -> torch.Tensor:
        """``[F, 1, n_mels]``: one row per video frame, before the margin windows."""
        self._check(audio)
        mel = self.mel_power(audio.waveform)  # [mel frames, n_mels]
        # Mel frame k is centred on sample k * HOP; frame f spans [f, f+1) / fps seconds.
        per_second = SAMPLE_RATE / self.HOP
        bounds = [ceil_frames(f * per_second / audio.fps) for f in range(audio.num_frames + 1)]
        lo = torch.tensor(bounds[:-1]).clamp(max=mel.shape[0] - 1)
        hi = torch.maximum(torch.tensor(bounds[1:]).clamp(max=mel.shape[0]), lo + 1)
        cumulative = F.pad(mel.double().cumsum(0), (0, 0, 1, 0))
        pooled = (cumulative[hi] - cumulative[lo]) / (hi - lo).unsqueeze(1)
        features = ((pooled.float() + self.FLOOR).log10() - self.OFFSET) / self.SCALE
        return features.unsqueeze(1)


# --------------------------------------------------------------------------------------------------
# wav2vec2


# --------------------------------------------------------------------------------------------------
# whisper


# --------------------------------------------------------------------------------------------------
# Checkpoint files and key mapping


# --------------------------------------------------------------------------------------------------
# Entry points


def build_audio_encoder(
    cfg: AudioFeatureConfig,
    path: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> AudioEncoder:
    """The encoder ``cfg.kind`` asks for; wav2vec2 and whisper load local weights from ``path``."""
    if cfg.sample_rate != SAMPLE_RATE:
        raise AudioError(f"audio features are computed at {SAMPLE_RATE} Hz, but the config says {cfg.sample_rate}")
    if cfg.kind == "logmel":
        if path is not None:
            raise AudioError("logmel features need no weights; leave the audio encoder path empty.")
        return LogMelAudioEncoder(cfg)
    loaders = {"wav2vec2": Wav2Vec2AudioEncoder, "whisper": WhisperAudioEncoder}
    if cfg.kind not in loaders:
        raise AudioError(f"unknown audio feature kind {cfg.kind!r}; choose wav2vec2, whisper or logmel.")
    if path is None:
        raise AudioError(f"{cfg.kind} features need a local checkpoint (models/audio_encoders/); none was given.")
    return loaders[cfg.kind].from_checkpoint(path, cfg, device=device, dtype=dtype)


def features_from_comfy_encoder_output(output: Mapping, cfg: AudioFeatureConfig, num_frames: int, fps: float) -> torch.Tensor:
    """ComfyUI's ``AUDIO_ENCODER_OUTPUT`` (wav2vec2-base at 50 Hz) as ``[F, 2m+1, layers, dim]`` features.

    Uses ``encoded_audio_all_layers[1:]`` (the input embedding dropped), keeps the 50 Hz steps that
    cover ``num_frames`` frames at ``fps`` (``audio_samples`` gives the encoded length), and resamples
    them linearly to the frame count, as the own path does with ``interpolate_conv=False``. Note that
    core's wav2vec2-base does not normalise the waveform (its ``do_normalize`` is hard-coded off), so
    the features differ slightly from :class:`Wav2Vec2AudioEncoder`'s.
    """
    if cfg.kind != "wav2vec2":
        raise AudioError(f"AUDIO_ENCODER_OUTPUT can only feed wav2vec2 features; this model uses {cfg.kind}.")
    layers = output.get("encoded_audio_all_layers") if isinstance(output, Mapping) else None
    audio_samples = output.get("audio_samples") if isinstance(output, Mapping) else None
    if not isinstance(layers, Sequence) or not layers or not all(isinstance(t, torch.Tensor) and t.ndim == 3 for t in layers):
        raise AudioError(
            "expected an AUDIO_ENCODER_OUTPUT with 'encoded_audio_all_layers' (a tuple of [batch, time, dim] "
            "tensors); connect the Audio Encoder Encode node."
        )
    batch, steps, dim = layers[0].shape
    if len(layers) != cfg.layers + 1 or dim != cfg.dim:
        raise AudioError(
            f"the audio encoder output has {len(layers)} hidden states of width {dim}, but this model needs "
            f"wav2vec2-base ({cfg.layers + 1} x {cfg.dim}); load wav2vec2-base-960h in the Audio Encoder Loader "
            "(wav2vec2-large gives 25 x 1024, whisper-large 33 x 1280)."
        )
    if batch != 1:
        raise AudioError(f"the audio encoder output holds a batch of {batch}; encode one clip per video.")
    if isinstance(audio_samples, bool) or not isinstance(audio_samples, numbers.Integral) or audio_samples <= 0:
        raise AudioError(f"the audio encoder output has no valid 'audio_samples' (got {audio_samples!r}).")
    needed = frame_samples(num_frames, fps)
    if audio_samples < needed - SAMPLE_RATE / fps:
        raise AudioError(
            f"the encoded audio lasts {audio_samples / SAMPLE_RATE:.2f} s but {num_frames} frames at {fps} fps need "
            f"{needed / SAMPLE_RATE:.2f} s; encode the whole clip or lower the frame count."
        )
    keep = min(steps, max(1, round(steps * needed / audio_samples)))
    stacked = torch.stack([t[0, :keep] for t in layers[1:]], dim=1).float().cpu()  # [keep, layers, dim]
    return window_frames(_interpolate_time(stacked, num_frames), cfg.margin)


def encode_audio(
    source: str | os.PathLike | Mapping,
    cfg: AudioFeatureConfig,
    encoder: AudioEncoder | None,
    fps: float,
    *,
    loudness_lufs: float | None = None,
    num_frames: int | None = None,
    whole_clips_of: int | None = None,
    single_pass: bool = False,
    segment_seconds: float | None = None,
) -> AudioFeatures:
    """Prepare ``source`` (path or AUDIO dict) for ``fps`` and encode it; ``encoder`` may be None for logmel.

    ``whole_clips_of``: pad the audio to whole clips of that many frames before the encoder, as
    ``InferenceQuirks.audio_padded_to_clips`` describes (wav2vec2 only); the features then have rows for
    the padding frames after the ``num_frames`` real ones. ``single_pass``: wav2vec2 on the whole audio at once
    (``InferenceQuirks.audio_single_pass``) instead of 20 s pieces. ``segment_seconds``: independent pieces of that
    many seconds, each normalised and encoded on its own, only the last one padded
    (``InferenceQuirks.audio_segment_seconds``).
    """
    if encoder is None:
        if cfg.kind != "logmel":
            raise AudioError(f"{cfg.kind} features need a loaded audio encoder; only logmel works without one.")
        encoder = LogMelAudioEncoder(cfg)
    elif encoder.kind != cfg.kind:
        raise AudioError(f"the audio encoder gives {encoder.kind} features but the model expects {cfg.kind}.")
    elif encoder.cfg != cfg:
        raise AudioError(f"the audio encoder was built for {encoder.cfg}, but the model expects {cfg}.")
    wav2vec2_options = {
        k: v for k, v in (("whole_clips_of", whole_clips_of), ("single_pass", single_pass), ("segment_seconds", segment_seconds)) if v
    }
    if wav2vec2_options and not isinstance(encoder, Wav2Vec2AudioEncoder):
        raise AudioError(f"{' and '.join(wav2vec2_options)} apply to wav2vec2 features only, not {encoder.kind} features")
    audio = prepare_audio(source, fps, loudness_lufs=loudness_lufs, num_frames=num_frames)
    features = encoder.encode(audio, **wav2vec2_options)
    return AudioFeatures(features=features, fps=audio.fps, num_frames=audio.num_frames, audio=audio, kind=encoder.kind)

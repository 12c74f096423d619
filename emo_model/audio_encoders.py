"""Per-video-frame audio features: wav2vec2, whisper-tiny and a weight-free log-mel.

Every encoder turns a :class:`~emo_model.audio.PreparedAudio` into one feature block per video frame,
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
(:func:`~emo_model.audio.window_frames`, a strided view rather than copies).

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

import json
import numbers
import os
import pickle
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from transformers import Wav2Vec2Config, Wav2Vec2Model, WhisperConfig, WhisperFeatureExtractor
from transformers.audio_utils import mel_filter_bank
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .audio import (
    SAMPLE_RATE,
    AudioError,
    PreparedAudio,
    ceil_frames,
    frame_samples,
    prepare_audio,
    window_frames,
)
from .configs import AudioFeatureConfig

MODEL_CONFIGS = Path(__file__).parent / "model_configs"
WAV2VEC2_CONFIG_DIR = MODEL_CONFIGS / "wav2vec2-base-960h"
WHISPER_CONFIG_DIR = MODEL_CONFIGS / "whisper-tiny"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class AudioFeatures:
    """The ``EMO_AUDIO`` value: per-frame features and the exact audio they were computed from.

    ``features`` may be a non-contiguous view (see :func:`~emo_model.audio.window_frames`): slice it per
    clip and move the slice to the device, or call ``.contiguous()`` before ``.view()``. From
    :meth:`Session.encode_audio <emo_model.session.Session.encode_audio>` it is usually a
    :class:`~emo_model.audio_stream.StreamedFeatures`, which computes the rows a clip asks for
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


def _interpolate_time(x: torch.Tensor, length: int) -> torch.Tensor:
    """Linear resampling along dim 0 of ``[T, ...]`` to ``length`` (align_corners=True, as the originals)."""
    flat = x.reshape(x.shape[0], -1).T.unsqueeze(0)  # [1, C, T]
    out = F.interpolate(flat, size=length, mode="linear", align_corners=True)
    return out[0].T.reshape(length, *x.shape[1:])


def _run_recording(layers: nn.ModuleList, forward: Callable[[], Any], *, with_input: bool = False):
    """``(forward(), outputs of every layer)``, the first layer's input first if ``with_input``.

    Forward hooks keep this independent of how a transformers version returns ``hidden_states``.
    """
    recorded: list[torch.Tensor] = []

    def record_output(_module, _args, output):
        recorded.append(output[0] if isinstance(output, tuple) else output)

    handles = [layer.register_forward_hook(record_output) for layer in layers]
    if with_input:
        handles.append(layers[0].register_forward_pre_hook(lambda _module, args: recorded.append(args[0])))
    try:
        result = forward()
    finally:
        for handle in handles:
            handle.remove()
    return result, recorded


class Wav2Vec2AudioEncoder(AudioEncoder):
    """wav2vec2 hidden states per video frame, ``[F, 2m+1, layers, dim]`` (see the module docstring)."""

    kind = "wav2vec2"

    def __init__(
        self,
        model: Wav2Vec2Model,
        cfg: AudioFeatureConfig,
        *,
        normalize: bool = True,
        chunk_seconds: float = 20.0,
        context_seconds: float = 2.5,
    ):
        super().__init__(cfg)
        config = model.config
        if (config.num_hidden_layers, config.hidden_size) != (cfg.layers, cfg.dim):
            raise AudioError(
                f"the wav2vec2 checkpoint has {config.num_hidden_layers} layers of width {config.hidden_size}, but "
                f"the model expects {cfg.layers} x {cfg.dim} (wav2vec2-base-960h); load the matching audio encoder."
            )
        self.model = model.eval()
        self.normalize = normalize
        self.chunk_seconds = chunk_seconds
        self.context_seconds = context_seconds
        receptive_field = 1
        for kernel, stride in zip(reversed(config.conv_kernel), reversed(config.conv_stride)):
            receptive_field = (receptive_field - 1) * stride + kernel
        self.receptive_field = receptive_field

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        cfg: AudioFeatureConfig,
        *,
        config: Wav2Vec2Config | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        chunk_seconds: float = 20.0,
        context_seconds: float = 2.5,
    ) -> Wav2Vec2AudioEncoder:
        """Load from an HF folder (``config.json`` + weights) or one weights file (shipped base-960h config).

        ``config`` overrides the architecture (e.g. for a single file of another size).
        """
        weights, folder = _locate(Path(path), "wav2vec2")
        state_dict, _ = _read_state_dict(weights)
        config_dir = folder or WAV2VEC2_CONFIG_DIR
        if config is None:
            config = _read_config(Wav2Vec2Config, config_dir / "config.json")
        preprocessor = config_dir / "preprocessor_config.json"
        if not preprocessor.is_file():
            preprocessor = WAV2VEC2_CONFIG_DIR / "preprocessor_config.json"
        normalize = _read_json(preprocessor).get("do_normalize", True)
        model = _instantiate(Wav2Vec2Model, config, convert_wav2vec2_state_dict, state_dict)
        model = model.to(device=device, dtype=dtype)
        return cls(model, cfg, normalize=normalize, chunk_seconds=chunk_seconds, context_seconds=context_seconds)

    def chunks(self, num_frames: int, fps: float, *, single_pass: bool = False) -> Iterator[tuple[int, int, int, int]]:
        """``(keep_start, keep_end, span_start, span_end)`` frame ranges: encode the span, keep the core."""
        if single_pass:
            yield 0, num_frames, 0, num_frames
            return
        core = max(1, round(self.chunk_seconds * fps))
        context = round(self.context_seconds * fps)
        for start in range(0, num_frames, core):
            end = min(num_frames, start + core)
            yield start, end, max(0, start - context), min(num_frames, end + context)

    @torch.no_grad()
    def encode(
        self,
        audio: PreparedAudio,
        *,
        whole_clips_of: int | None = None,
        single_pass: bool = False,
        segment_seconds: float | None = None,
    ) -> torch.Tensor:
        """Windowed features, one row per frame; with ``whole_clips_of`` (InferenceQuirks.audio_padded_to_clips)
        also rows for the silent frames that pad the audio to a whole number of clips of that many frames.
        ``single_pass`` (InferenceQuirks.audio_single_pass): no 20 s pieces, the whole audio at once.
        ``segment_seconds`` (InferenceQuirks.audio_segment_seconds): independent pieces of that length instead."""
        self._check(audio)
        if segment_seconds:
            return window_frames(self._encode_segments(audio, segment_seconds, whole_clips_of), self.cfg.margin)
        waveform, num_frames = self.prepared_waveform(audio, whole_clips_of)
        pieces = []
        for keep_start, keep_end, span_start, span_end in self.chunks(num_frames, audio.fps, single_pass=single_pass):
            samples = waveform[frame_samples(span_start, audio.fps) : frame_samples(span_end, audio.fps)]
            hidden = self._encode_span(samples, span_end - span_start)
            pieces.append(hidden[keep_start - span_start : keep_end - span_start])
        return window_frames(torch.cat(pieces), self.cfg.margin)

    def _encode_segments(self, audio: PreparedAudio, seconds: float, whole_clips_of: int | None) -> torch.Tensor:
        """Per-frame layer outputs of the source's samples cut into pieces of ``seconds``, each one normalised on its
        own and encoded in one pass over its own frame count (``ceil(samples / hop)``; the last piece takes the frames
        left to ``audio.num_frames``). With ``whole_clips_of`` only the last piece is padded: when its own frame count
        is not whole clips, by the frames the whole run is missing to whole clips (a whole clip if none are missing).
        So the rows are whole clips only when that rule makes them so; rows after ``audio.num_frames`` are padding."""
        if not seconds > 0:
            raise AudioError(f"segment_seconds must be positive, got {seconds!r}")
        source = audio.waveform[: audio.real_samples]
        piece = max(1, round(seconds * audio.sample_rate))
        hop = int(audio.sample_rate // audio.fps)
        starts = range(0, max(1, source.shape[0]), piece)
        done, out = 0, []
        for i, start in enumerate(starts):
            samples = self._normalised(source[start : start + piece])
            if i == len(starts) - 1:
                frames = max(1, audio.num_frames - done)
            else:
                frames = ceil_frames(samples.shape[0] / audio.sample_rate * audio.fps)
            encoded = frames
            if i == len(starts) - 1 and whole_clips_of and frames % whole_clips_of:
                extra = whole_clips_of - (done + frames) % whole_clips_of
                samples = F.pad(samples, (0, extra * hop))
                encoded += extra
            out.append(self._encode_span(samples, encoded))
            done += frames
        return torch.cat(out)

    def prepared_waveform(self, audio: PreparedAudio, whole_clips_of: int | None) -> tuple[torch.Tensor, int]:
        """The waveform the encoder reads, normalised over the whole audio, and its number of frame rows; with
        ``whole_clips_of``, padded with silent frames to a whole number of clips of that many frames."""
        if not whole_clips_of:
            return self._normalised(audio.waveform), audio.num_frames
        extra = -audio.num_frames % whole_clips_of
        waveform = self._normalised(audio.waveform[: audio.real_samples])
        # the original pads whole frames of ``sample_rate // fps`` samples after the source's own samples
        waveform = F.pad(waveform, (0, extra * int(audio.sample_rate // audio.fps)))
        return waveform, audio.num_frames + extra

    def _normalised(self, waveform: torch.Tensor) -> torch.Tensor:
        """Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm over the whole waveform (when the checkpoint's
        preprocessor asks for it)."""
        if not self.normalize:
            return waveform
        wide = waveform.double()
        return ((wide - wide.mean()) / torch.sqrt(wide.var(unbiased=False) + 1e-7)).float()

    def _encode_span(self, samples: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Layer outputs ``[num_frames, layers, dim]`` (float32, CPU) for one span of audio."""
        model = self.model
        parameter = next(model.parameters())
        if samples.shape[0] < self.receptive_field:
            samples = F.pad(samples, (0, self.receptive_field - samples.shape[0]))
        x = samples.to(device=parameter.device, dtype=parameter.dtype).unsqueeze(0)
        conv = model.feature_extractor(x).transpose(1, 2)[0]  # [T50, C]
        if self.cfg.interpolate_conv:
            conv = _interpolate_time(conv, num_frames)
        hidden = model.feature_projection(conv.unsqueeze(0))[0]
        final, outputs = _run_recording(model.encoder.layers, lambda: model.encoder(hidden)[0])
        # transformers' hidden_states[-1] is the encoder output: the last layer's for base models,
        # after the final LayerNorm for stable-layer-norm (large) ones.
        outputs[-1] = final
        layers = torch.stack(outputs, dim=2)[0].float().cpu()  # [T, layers, dim]
        return layers if self.cfg.interpolate_conv else _interpolate_time(layers, num_frames)


# --------------------------------------------------------------------------------------------------
# whisper


class WhisperAudioEncoder(AudioEncoder):
    """Whisper-tiny features, ``[F, window * layers, dim]`` (see the module docstring)."""

    kind = "whisper"

    def __init__(self, model: WhisperEncoder, cfg: AudioFeatureConfig):
        super().__init__(cfg)
        config = model.config
        if (config.encoder_layers + 1, config.d_model) != (cfg.layers, cfg.dim):
            raise AudioError(
                f"the whisper checkpoint gives {config.encoder_layers + 1} layers of width {config.d_model}, but the "
                f"model expects {cfg.layers} x {cfg.dim} (whisper-tiny); load the matching audio encoder."
            )
        self.model = model.eval()
        hop = 160
        self.feature_extractor = WhisperFeatureExtractor(
            feature_size=config.num_mel_bins, sampling_rate=SAMPLE_RATE, hop_length=hop, chunk_length=30, n_fft=400
        )
        self.segment = 2 * config.max_source_positions  # mel frames per 30 s window (conv2 halves them)
        self.mel_piece = self.segment  # spectrum frames per piece of the log-mel (30 s)
        self.frame_rate = SAMPLE_RATE / hop / 2  # 50 encoder frames per second

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        cfg: AudioFeatureConfig,
        *,
        config: WhisperConfig | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> WhisperAudioEncoder:
        """Load an OpenAI ``.pt`` (``{"dims", "model_state_dict"}``), an HF folder, or one weights file.

        Without ``config``, the architecture comes from the folder's ``config.json``, the ``.pt`` dims, or
        the shipped whisper-tiny config, in that order.
        """
        weights, folder = _locate(Path(path), "whisper")
        state_dict, dims = _read_state_dict(weights)
        if config is None:
            if folder is not None:
                config = _read_config(WhisperConfig, folder / "config.json")
            elif dims is not None:
                config = _whisper_config_from_dims(dims)
            else:
                config = _read_config(WhisperConfig, WHISPER_CONFIG_DIR / "config.json")
        model = _instantiate(WhisperEncoder, config, convert_whisper_state_dict, state_dict)
        return cls(model.to(device=device, dtype=dtype), cfg)

    @torch.no_grad()
    def encode(self, audio: PreparedAudio) -> torch.Tensor:
        self._check(audio)
        mel = self.log_mel(audio)
        per_step = torch.cat([self.encode_window(mel, start, keep) for start, keep in self.windows(mel)])
        index = self.step_index(torch.arange(audio.num_frames), audio.fps, per_step.shape[0])
        return per_step[index].reshape(audio.num_frames, -1, per_step.shape[-1])

    def log_mel(self, audio: PreparedAudio) -> torch.Tensor:
        """Whisper's log-mel of the whole clip, ``[n_mels, T100]`` (1.9 MB per minute), as transformers'
        ``WhisperFeatureExtractor`` makes it: the power spectrum without the STFT's last frame, the mel filters,
        log10, a floor 8 decades below the whole clip's peak, ``(x + 4) / 4``. Beyond 30 s the spectrum is
        computed in pieces of :attr:`mel_piece` frames (the same values; the floor is applied once the peak is
        known), so the whole clip's spectrogram never exists at once."""
        extractor = self.feature_extractor
        # the source's own samples, not the silence padding them to the frame count (the original reads the file)
        waveform, hop, n_fft = audio.waveform[: audio.real_samples], extractor.hop_length, extractor.n_fft
        frames = waveform.shape[0] // hop  # the extractor drops the STFT's last frame
        if frames <= self.mel_piece or waveform.shape[0] <= n_fft // 2 or extractor.dither != 0.0:
            return extractor(
                waveform.numpy(), sampling_rate=SAMPLE_RATE, padding="longest", truncation=False, return_tensors="pt"
            ).input_features[0]
        filters_t = torch.from_numpy(extractor.mel_filters).to(torch.float32).T  # [n_mels, freq]
        log_spec = torch.empty(filters_t.shape[0], frames)
        done = 0
        for skip, spec in _stft_pieces(waveform, n_fft, hop, torch.hann_window(n_fft), frames, self.mel_piece):
            piece = (filters_t @ (spec.abs() ** 2).contiguous()).clamp(min=1e-10).log10()[:, skip:]
            log_spec[:, done : done + piece.shape[1]] = piece
            done += piece.shape[1]
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
        return (log_spec + 4.0) / 4.0

    def windows(self, mel: torch.Tensor) -> list[tuple[int, int]]:
        """``(first mel frame, encoder steps kept)`` of each 30 s window: the steps its own audio covers."""
        return [(start, max(1, min(self.segment, mel.shape[1] - start) // 2)) for start in range(0, mel.shape[1], self.segment)]

    @torch.no_grad()
    def encode_window(self, mel: torch.Tensor, start: int, keep: int) -> torch.Tensor:
        """The embedding output and every block output of one window, ``[keep, layers, dim]`` (float32, CPU)."""
        parameter = next(self.model.parameters())
        piece = mel[:, start : start + self.segment]
        piece = F.pad(piece, (0, self.segment - piece.shape[1]))  # zeros in log-mel space, as the original
        x = piece.unsqueeze(0).to(device=parameter.device, dtype=parameter.dtype)
        _, states = _run_recording(self.model.layers, partial(self.model, x), with_input=True)
        return torch.stack(states, dim=2)[0, :keep].float().cpu()

    def step_index(self, frames: torch.Tensor, fps: float, steps: int) -> torch.Tensor:
        """``[len(frames), window]`` encoder steps each video frame reads (the original's rule): centre
        ``int(i * 50 / fps)``, window centre-4 .. centre+5, clamped to the ``steps`` there are."""
        centres = torch.floor(frames.to(torch.float64) * self.frame_rate / fps)
        offsets = torch.arange(self.cfg.whisper_window[0], self.cfg.whisper_window[1] + 1)
        return (centres.long().unsqueeze(1) + offsets).clamp(0, steps - 1)


def _whisper_config_from_dims(dims: Mapping) -> WhisperConfig:
    """WhisperConfig for OpenAI ``ModelDimensions`` (only the encoder part is ever built)."""
    try:
        return WhisperConfig(
            num_mel_bins=dims["n_mels"],
            max_source_positions=dims["n_audio_ctx"],
            d_model=dims["n_audio_state"],
            encoder_attention_heads=dims["n_audio_head"],
            encoder_layers=dims["n_audio_layer"],
            encoder_ffn_dim=4 * dims["n_audio_state"],
            vocab_size=dims["n_vocab"],
            max_target_positions=dims["n_text_ctx"],
            decoder_attention_heads=dims["n_text_head"],
            decoder_layers=dims["n_text_layer"],
            decoder_ffn_dim=4 * dims["n_text_state"],
        )
    except KeyError as exc:
        raise AudioError(f"the whisper checkpoint's 'dims' lacks {exc}; is it an OpenAI whisper .pt file?") from None


# --------------------------------------------------------------------------------------------------
# Checkpoint files and key mapping


def _locate(path: Path, what: str) -> tuple[Path, Path | None]:
    """(weights file, HF folder or None) for a folder or a single file."""
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise AudioError(f"'{path}' has no config.json; a {what} folder needs config.json and weights.")
        for name in _WEIGHT_FILES:
            if (path / name).is_file():
                return path / name, path
        raise AudioError(f"'{path}' has no weights; expected one of {', '.join(_WEIGHT_FILES)}.")
    if path.is_file():
        return path, None
    raise AudioError(f"{what} checkpoint not found: '{path}'. Put it in models/audio_encoders/ or pass its path.")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AudioError(f"could not read '{path}' as JSON ({exc}).") from exc


def _read_config(config_class, path: Path):
    """A transformers config from ``path``, refusing files written for another architecture."""
    data = _read_json(path)
    model_type = data.get("model_type", config_class.model_type)
    if model_type != config_class.model_type:
        raise AudioError(f"'{path}' describes a {model_type} model, not {config_class.model_type}.")
    return config_class.from_dict(data)


def _instantiate(model_class: type[nn.Module], config, convert, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Build ``model_class(config)`` on the meta device (no random init) and adopt the checkpoint's tensors."""
    with torch.device("meta"):
        model = model_class(config)
    model.load_state_dict(convert(state_dict, model), assign=True)
    return model


def _read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], Mapping | None]:
    """(tensors, OpenAI whisper ``dims`` or None) from a safetensors file or a tensors-only pickle."""
    if path.suffix == ".safetensors":
        try:
            return load_file(path), None
        except (SafetensorError, OSError) as exc:
            raise AudioError(f"'{path.name}' is not a readable safetensors file ({exc}).") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise AudioError(
            f"refused to load '{path.name}': it holds Python objects other than tensors, which could run code. "
            "Use a .safetensors file or a plain state dict."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise AudioError(f"'{path.name}' is not a readable PyTorch checkpoint ({exc}).") from exc
    dims = obj.get("dims") if isinstance(obj, Mapping) else None
    for key in ("model_state_dict", "state_dict"):
        if isinstance(obj, Mapping) and key in obj:
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise AudioError(f"'{path.name}' is not a state dict of tensors.")
    return dict(obj), dims


def _under(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The keys under ``prefix`` with it removed, if any key has it; otherwise everything unchanged."""
    if not any(key.startswith(prefix) for key in state_dict):
        return dict(state_dict)
    return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}


def _match(state_dict: dict[str, torch.Tensor], model: nn.Module, what: str) -> dict[str, torch.Tensor]:
    """Check keys and shapes against ``model`` and raise one AudioError naming every difference."""
    expected = model.state_dict()
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    wrong = [
        f"{key} {tuple(state_dict[key].shape)} != {tuple(expected[key].shape)}"
        for key in sorted(expected.keys() & state_dict.keys())
        if state_dict[key].shape != expected[key].shape
    ]
    if missing or unexpected or wrong:
        parts = [
            f"{label} ({len(keys)}): {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        ]
        raise AudioError(f"the {what} checkpoint does not fit the architecture; " + "; ".join(parts))
    return state_dict


_WEIGHT_NORM_NAMES = (("weight_g", "parametrizations.weight.original0"), ("weight_v", "parametrizations.weight.original1"))


def convert_wav2vec2_state_dict(state_dict: Mapping[str, torch.Tensor], model: Wav2Vec2Model) -> dict[str, torch.Tensor]:
    """Map a wav2vec2 checkpoint onto ``model``'s keys (raises AudioError when it does not fit).

    Strips the ``wav2vec2.`` prefix of ``Wav2Vec2ForCTC``/``ForPreTraining`` files and drops their heads
    (``lm_head``, ``quantizer``, ...); renames the positional conv's weight-norm tensors between the old
    ``weight_g``/``weight_v`` and the ``parametrizations.weight.original0/1`` names, whichever ``model``
    uses. ``masked_spec_embed`` (training-only) may be absent.
    """
    expected = model.state_dict()
    mapped = {}
    for key, value in _under(state_dict, "wav2vec2.").items():
        for old, new in _WEIGHT_NORM_NAMES:
            for src, dst in ((old, new), (new, old)):
                renamed = key[: -len(src)] + dst if key.endswith(src) else key
                if renamed != key and renamed in expected:
                    key = renamed
        mapped[key] = value
    if "masked_spec_embed" in expected:
        mapped.setdefault("masked_spec_embed", torch.zeros(expected["masked_spec_embed"].shape))
    else:
        mapped.pop("masked_spec_embed", None)
    return _match(mapped, model, "wav2vec2")


_OPENAI_WHISPER_NAMES = (
    (r"^positional_embedding$", "embed_positions.weight"),
    (r"^blocks\.(\d+)\.attn\.query\.", r"layers.\1.self_attn.q_proj."),
    (r"^blocks\.(\d+)\.attn\.key\.", r"layers.\1.self_attn.k_proj."),
    (r"^blocks\.(\d+)\.attn\.value\.", r"layers.\1.self_attn.v_proj."),
    (r"^blocks\.(\d+)\.attn\.out\.", r"layers.\1.self_attn.out_proj."),
    (r"^blocks\.(\d+)\.attn_ln\.", r"layers.\1.self_attn_layer_norm."),
    (r"^blocks\.(\d+)\.mlp\.0\.", r"layers.\1.fc1."),
    (r"^blocks\.(\d+)\.mlp\.2\.", r"layers.\1.fc2."),
    (r"^blocks\.(\d+)\.mlp_ln\.", r"layers.\1.final_layer_norm."),
    (r"^ln_post\.", "layer_norm."),
)


def convert_whisper_state_dict(state_dict: Mapping[str, torch.Tensor], model: WhisperEncoder) -> dict[str, torch.Tensor]:
    """Map an OpenAI or transformers whisper checkpoint onto a ``WhisperEncoder`` (decoder keys dropped).

    Accepts OpenAI names (``encoder.blocks.N.attn.query`` ...) and transformers names, with or without
    the ``model.`` / ``encoder.`` prefixes. Raises AudioError when the result does not fit ``model``.
    """
    mapped = {}
    for key, value in _under(_under(state_dict, "model."), "encoder.").items():
        for pattern, replacement in _OPENAI_WHISPER_NAMES:
            key = re.sub(pattern, replacement, key)
        mapped[key] = value
    return _match(mapped, model, "whisper")


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

"""whisper-tiny's encoder as the audio encoder: per-frame features from its layers, OpenAI or transformers files."""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from ..configs import AudioFeatureConfig
from .encoder_base import MODEL_CONFIGS, AudioEncoder, _stft_pieces
from .encoder_files import _instantiate, _locate, _match, _read_config, _read_state_dict, _under
from .signal import SAMPLE_RATE, AudioError, PreparedAudio
from .wav2vec2 import _run_recording

WHISPER_CONFIG_DIR = MODEL_CONFIGS / "whisper-tiny"


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

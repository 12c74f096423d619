"""wav2vec2 as the audio encoder: per-frame features from its hidden states, as each family's original reads them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Wav2Vec2Config, Wav2Vec2Model

from ..configs import AudioFeatureConfig
from .encoder_base import WAV2VEC2_CONFIG_DIR, AudioEncoder
from .encoder_files import _instantiate, _locate, _match, _read_config, _read_json, _read_state_dict, _under
from .signal import AudioError, PreparedAudio, ceil_frames, frame_samples, window_frames


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
        if self.cfg.hidden_states == "last":
            return self._last_state_windows(audio)
        if segment_seconds:
            return window_frames(self._encode_segments(audio, segment_seconds, whole_clips_of), self.cfg.margin)
        waveform, num_frames = self.prepared_waveform(audio, whole_clips_of)
        pieces = []
        for keep_start, keep_end, span_start, span_end in self.chunks(num_frames, audio.fps, single_pass=single_pass):
            samples = waveform[frame_samples(span_start, audio.fps) : frame_samples(span_end, audio.fps)]
            hidden = self._encode_span(samples, span_end - span_start)
            pieces.append(hidden[keep_start - span_start : keep_end - span_start])
        return window_frames(torch.cat(pieces), self.cfg.margin)

    def _last_state_windows(self, audio: PreparedAudio) -> torch.Tensor:
        """``AudioFeatureConfig.hidden_states = "last"``: the last hidden state of the source's own samples (normalised
        over all of them, one pass), linearly interpolated (align_corners=False) to ``samples_per_frame`` rows per frame,
        ``samples_per_frame x margin`` rows of zeros on each side; frame f reads the rows of frames f-m .. f+m.
        Returns [F, 2m+1, samples_per_frame, dim]."""
        samples = self._normalised(audio.waveform[: audio.real_samples])
        if samples.shape[0] < self.receptive_field:
            samples = F.pad(samples, (0, self.receptive_field - samples.shape[0]))
        parameter = next(self.model.parameters())
        hidden = self.model(samples.to(device=parameter.device, dtype=parameter.dtype)[None]).last_hidden_state[0]
        per, m, n = self.cfg.samples_per_frame, self.cfg.margin, audio.num_frames
        rows = F.interpolate(hidden.float().T[None], size=per * n, mode="linear")[0].T  # [per * n, dim]
        rows = F.pad(rows, (0, 0, per * m, per * m)).cpu()
        index = torch.arange(n)[:, None] * per + torch.arange((2 * m + 1) * per)[None]
        return rows[index].reshape(n, 2 * m + 1, per, rows.shape[-1])

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

"""Architecture configs and sampling presets, as plain data.

Every config is a dataclass tree that round-trips through JSON (``to_dict`` / ``from_dict``), so a
checkpoint can carry the exact architecture it was trained with in its metadata.

The named configs (``emo``, ``tiny`` and each open family's) live in :mod:`emo_model.families`, one module
per family; :func:`emo_model.families.get_config` looks them up there.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

# --------------------------------------------------------------------------------------------------
# Building blocks


@dataclass
class UNetConfig:
    """Shape of an SD1.5-style UNet (shared by the ReferenceNet and the backbone).

    ``attention_levels[i]`` says whether level ``i`` of the encoder has spatial transformer blocks;
    the decoder mirrors it (SD1.5: attention at the three highest resolutions, none at the lowest).
    """

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    attention_levels: tuple[bool, ...] = (True, True, True, False)
    layers_per_block: int = 2
    attention_heads: int = 8
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    # Width of the tokens the ordinary cross-attention (``attn2``) reads; None removes attn2/norm2.
    cross_attention_dim: int | None = 768
    # How the backbone's blocks read the reference tokens: "joint" (appended to the self-attention's keys/values) or
    # "separate" (a second attention with its own weights, ``norm1_5``/``attn1_5``, after the self-attention, whose
    # keys/values are the reference tokens only).
    reference_attention: str = "joint"

    @property
    def time_embed_dim(self) -> int:
        return self.block_out_channels[0] * 4


@dataclass
class TemporalConfig:
    """AnimateDiff v2 motion modules (``motion_modules.N.temporal_transformer...``)."""

    heads: int = 8
    num_blocks: int = 1
    attention_blocks: int = 2  # two "Temporal_Self" attentions per block
    max_len: int = 32  # length of the sinusoidal ``pos_encoder.pe`` buffer
    mid_block: bool = True
    norm_num_groups: int = 32
    # None: softmax attention over the clip's frames (with motion frames prepended). A number: memory-guided
    # linear attention (emo_model/network/memory_temporal.py) whose memory of already generated frames decays by this
    # factor per frame; the past frames are folded into the memory instead of being prepended.
    memory_decay: float | None = None


@dataclass
class SpeedConfig:
    """EMO's head-motion speed layers (paper §3.2). The paper gives neither d nor the buckets.

    Speeds are head-rotation velocities in degrees per frame (the paper's label). The centres are
    denser where speech lives (paper §4.5: speech 0.1-1.0, singing 1.0-1.3, jitter above 1.5) and
    reach 2.0 so the whole useful range is resolved. Each radius is the distance to the next centre
    (the last reuses the previous gap), so neighbouring tanh ramps overlap and the code is a smooth,
    monotone "thermometer" of w over 0..2 deg/frame: every component rises with w.
    """

    centres: tuple[float, ...] = (0.05, 0.2, 0.4, 0.6, 0.8, 1.0, 1.3, 1.7)
    radii: tuple[float, ...] = (0.15, 0.2, 0.2, 0.2, 0.2, 0.3, 0.4, 0.4)
    margin: int = 2  # the per-frame embedding stacks the buckets of frames f-m .. f+m
    hidden_dim: int = 256
    embed_dim: int = 768  # l, the width of the speed tokens the temporal modules attend to

    @property
    def num_buckets(self) -> int:
        return len(self.centres)


@dataclass
class FaceLocatorConfig:
    in_channels: int = 1
    block_out_channels: tuple[int, ...] = (16, 32, 96, 256)
    out_channels: int = 320
    # What the locator reads: "face_mask" (one face-region mask for the whole video) or "pose_frames" (a pose
    # guider: one drawn pose image per video frame, windowed with the latents; EMOPipeline.generate(pose_frames=...)).
    reads: str = "face_mask"


@dataclass
class AudioProjConfig:
    """The audio projection: a window of per-frame audio features -> ``context_tokens`` tokens (emo_model/network/audio_projection.py)."""

    seq_len: int = 5
    blocks: int = 12
    channels: int = 768
    intermediate_dim: int = 512
    output_dim: int = 768
    context_tokens: int = 32
    # "mlp" (the 3-layer MLP above) or "perceiver" (emo_model/network/perceiver_projection.py: seq_len x blocks rows of
    # ``channels`` values, ``context_tokens`` learned queries of width ``intermediate_dim``, ``depth`` layers of
    # ``heads`` x ``head_dim`` attention and a feed-forward ``ff_mult`` wide).
    kind: str = "mlp"
    depth: int = 4
    heads: int = 12
    head_dim: int = 64
    ff_mult: int = 4


@dataclass
class ImageProjConfig:
    """The image projection: a face-identity embedding -> ``tokens`` tokens for ``attn2`` (emo_model/network/identity.py)."""

    embed_dim: int = 512
    cross_attention_dim: int = 768
    tokens: int = 4


@dataclass
class AudioFeatureConfig:
    """What the audio front end computes for every video frame.

    * ``wav2vec2``: all hidden layers of wav2vec2-base-960h (``layers`` x ``dim``); ``interpolate_conv``:
      conv features resampled to the video frame count before the transformer.
    * ``whisper``: whisper-tiny encoder, embedding + 4 blocks (5 x 384) at 50 Hz, a window of
      ``whisper_window`` whisper frames per video frame, flattened to tokens.
    * ``logmel``: weight-free log-mel frames (the CPU demo), ``layers`` = 1, ``dim`` = mel bands.

    Per frame, ``margin`` neighbouring frames on each side are stacked (clamped at the ends).
    """

    kind: str = "wav2vec2"
    layers: int = 12
    dim: int = 768
    margin: int = 2
    interpolate_conv: bool = True
    whisper_window: tuple[int, int] = (-4, 5)
    sample_rate: int = 16000
    # wav2vec2: "all" hidden layers (``layers`` of them per frame) or only the "last" one, linearly interpolated over
    # the whole audio to ``samples_per_frame`` rows per video frame; a frame's window then holds the rows of frames
    # f-m .. f+m with rows of zeros beyond the ends (not clamped; emo_model/audio/wav2vec2.py). Per-frame features:
    # [window, feature_rows, dim].
    hidden_states: str = "all"
    samples_per_frame: int = 1

    @property
    def window(self) -> int:
        return 2 * self.margin + 1

    @property
    def feature_rows(self) -> int:
        """Rows of ``dim`` values per window frame: the hidden layers, or the interpolated samples of the last one."""
        return self.layers if self.hidden_states == "all" else self.samples_per_frame


@dataclass
class SchedulerConfig:
    """Noise schedule shared by training and sampling (diffusers scheduler kwargs)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "linear"
    prediction_type: str = "v_prediction"
    rescale_betas_zero_snr: bool = True
    timestep_spacing: str = "trailing"
    steps_offset: int = 1
    clip_sample: bool = False
    # DDIM only: the step to timestep < 0 (trailing spacing ends there) goes to alpha = 1 (diffusers' default when
    # a scheduler is built from kwargs without it) or to alphas_cumprod[0].
    set_alpha_to_one: bool = False
    # None: a DDPM-family noise schedule (the fields above). A number: a rectified-flow model (the denoiser
    # predicts the velocity noise - x0 at t = 1000 * sigma, x_t = (1 - sigma) x0 + sigma noise), sampled with
    # the flow-matching Euler sampler at this timestep shift; the beta fields are then unused.
    flow_shift: float | None = None


@dataclass
class InferenceQuirks:
    """Where a family's original inference code computes something other than the paper's design.

    Each field is data (never an ``if family == ...`` in a block); the family module that sets a field names
    the original file and commit it mirrors, so our pipeline gives what the original gives on that family's
    weights. The defaults are EMO's own (paper) behaviour; ``docs/parity.md`` lists every field with its
    measured effect.
    """

    # Temporal modules also run in UNet levels without spatial transformers (SD1.5's lowest level). False: those
    # levels apply only their resnets (what an original gets when it runs its gradient-checkpointing branch).
    temporal_in_plain_blocks: bool = True
    # Factor on the output of the backbone's audio cross-attention (``attn2``) before the residual add.
    audio_attention_scale: float = 1.0
    # Under classifier-free guidance the ReferenceNet runs once on the rows [uncond: portrait, motion 1..n |
    # cond: portrait, motion 1..n] with identity tokens alternating uncond, cond, uncond, ... over the rows, so each
    # branch's motion frames are encoded with mixed identities.
    reference_identity_alternates: bool = False
    # The next clip's motion frames are the previous clip's decoded frames encoded again with the VAE (the
    # distribution mean times the scaling factor), not its latents.
    motion_frames_from_pixels: bool = False
    # Under classifier-free guidance, token sequence i (branch-major: unconditional frames first) reads the portrait
    # row of guidance block ``i % 2``, not of its own branch (per-block portrait rows tiled over the frames). With
    # ``reference_identity_alternates`` those rows differ (block 0's portrait reads the unconditional identity), so
    # every other conditional frame sees the portrait encoded with the unconditional identity.
    reference_rows_tiled: bool = False
    # How context windows are laid out (strategy "context_windows"). "ramp": fixed windows (stride size -
    # overlap, the last one aligned to the end), blended with linear ramps over the overlap. "uniform": the
    # AnimateAnyone-style schedule (step 0, stride 1, closed loop): windows start at 0, size - overlap, ... and
    # wrap around the end, every frame's predictions averaged with equal weights. "uniform-open": the same without the
    # closed loop (starts below frames - overlap; indices past the end reflected back), emo_model/sampling/clip_planner.py.
    context_schedule: str = "ramp"
    # Frames every context window moves forward per denoising step, wrapping around the sequence.
    context_shift_per_step: int = 0
    # Clamp of the initial Gaussian noise to [-v, v] before the scheduler scale (None: no clamp).
    initial_noise_clamp: float | None = None
    # Which random numbers the seed gives (emo_model/sampling/seed_stream.py): "per_clip" (EMO's own: a generator per clip) or
    # "single" (the originals': one torch.manual_seed(seed) stream drawn in the script's order, so the same seed starts
    # from the original's very noise).
    seed_stream: str = "per_clip"
    # "single" only: uniform draws the original takes from its seeded stream per audio-encoder layer before the noise
    # (e.g. transformers' wav2vec2 LayerDrop draw, torch.rand([]) per encoder layer even in eval mode, when the audio is
    # encoded inside the pipeline call before randn_tensor): the stream skips ``this x audio.layers`` of them first.
    seed_draws_per_audio_layer: int = 0
    # The audio front end pads to a whole number of clips (of the preset's ``frames_per_clip``) before the encoder:
    # the wav2vec2 input is the source's own samples normalised on their own, then zeros (silence after the
    # normalisation) for the missing frames; the conv features are interpolated over the padded frame count, and the
    # last clip's extra frames are generated from those silent features (then dropped). Off: the waveform is cut /
    # padded to the frame count first and the last clip repeats the last frame's features.
    audio_padded_to_clips: bool = False
    # wav2vec2 sees the whole audio in one pass (its attention spans everything), not pieces of 20 s with 2.5 s of
    # context on each side (bounded memory on long audio; identical up to 20 s).
    audio_single_pass: bool = False
    # With ``motion_frames_from_pixels``: before the VAE encodes a clip's motion frames (the previous clip's decoded
    # frames, or the portrait repeated for the first clip with ``first_clip_motion = "reference"``), every pixel outside
    # the face region (the sampler's face mask) whose uniform draw is <= this rate becomes mid grey (0 in the VAE's
    # [-1, 1] input). One draw per pixel and clip, shared by the motion frames and the channels. 0: no drop.
    motion_frame_pixel_drop: float = 0.0
    # The audio front end cuts the audio into independent pieces of this many seconds: each one normalised on its
    # own and encoded in one wav2vec2 pass over its own frame count. With ``audio_padded_to_clips`` only the last
    # piece is padded, and only when its own frame count is not whole clips, by the frames the whole run lacks to
    # whole clips (a whole clip when it lacks none). None: no pieces of this kind.
    audio_segment_seconds: float | None = None
    # How the driving audio is decoded and resampled to 16 kHz mono (emo_model/audio/decode.py): "pyav" (ours),
    # "librosa" (librosa.load), "ffmpeg-wav+librosa" (the ffmpeg program to a 16 kHz wav, then librosa.load),
    # "ffmpeg-s16-mono" (the ffmpeg program to 16-bit mono 16 kHz).
    audio_loader: str = "pyav"
    # Factor on the output of a separate reference attention (``UNetConfig.reference_attention = "separate"``).
    reference_attention_scale: float = 1.0
    # Under classifier-free guidance, what the unconditional rows of a separate reference attention read: "none" (no
    # reference: the attention is skipped) or "zeros" (a bank of zeros: the attention gives its output bias).
    unconditional_reference: str = "none"
    # Which audio the audio-emotion classifier hears: "mix" (the mono 16 kHz mix the video keeps) or "first" (the
    # first channel of the 16 kHz audio the loader makes before it mixes down, e.g. of the ffmpeg program's wav with
    # "ffmpeg-wav+librosa"; the whole file, un-separated; a mono file's one channel).
    emotion_channel: str = "mix"
    # The frame count is cut to whole context windows (of the preset's frames_per_clip and context_overlap) and the
    # frame rate stretched so that those frames span the whole audio: n = int(seconds x fps) frames, windows =
    # (n - size) // (size - overlap) + 1, frames = (windows - 1) x (size - overlap) + size, fps = frames / seconds
    # (audio shorter than one window keeps its frames).
    frames_whole_windows: bool = False
    # The finished frames go through a median filter of this size over (time, y, x) with reflected edges before they
    # are handed on (0: none; emo_model/sampling/median_filter.py).
    output_median_filter: int = 0


@dataclass
class PresetConfig:
    """How a family is meant to be run (sampling defaults); every value can be overridden per run."""

    fps: float = 30.0
    resolution: int = 512
    strategy: str = "motion_frames"  # or "context_windows"
    frames_per_clip: int = 12
    motion_frames: int = 4
    context_overlap: int = 0
    first_clip_motion: str = "zeros"  # "zeros" (EMO) or "reference" (the portrait repeated)
    sampler: str = "ddim"
    steps: int = 40
    cfg: float = 3.5
    audio_cfg: float = 3.5
    speed: float = 0.7
    face_expand_ratio: float = 1.2
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    quirks: InferenceQuirks = field(default_factory=InferenceQuirks)
    # emotion class of the emotion audio modules when the caller gives none (None: the "no emotion" class)
    emotion: int | None = None


# --------------------------------------------------------------------------------------------------
# Modules


@dataclass
class ReferenceNetConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    # SD1.5's conv_norm_out/conv_out; the reference pass never uses them (the open checkpoints drop them).
    output_head: bool = False
    # The last spatial transformer keeps only norm, proj_in and transformer_blocks.0.norm1: the reference pass
    # only banks its norm1 output, nothing after it is used (checkpoints that drop the unused layers).
    last_transformer_norm1_only: bool = False
    # The bank holds each block's norm2(x) after its self-attention (the input of attn2) instead of norm1(x).
    bank_after_self_attention: bool = False
    # With no identity tokens, attn2 reads one token of zeros (its output is then attn2's output bias) instead of
    # being skipped.
    cross_attention_zero_token: bool = False


@dataclass
class BackboneConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    # What the ordinary cross-attention slot (attn2) reads: "audio" (EMO), "identity" (face-ID tokens
    # from the image projection) or "none".
    cross_attention_input: str = "audio"
    # Separate audio modules after each spatial transformer, three branches masked to the full frame, the
    # face and the lips (emo_model/network/audio_layers.py).
    region_audio_modules: bool = False
    audio_module_dim: int = 768
    # Emotion-conditioned joint audio modules after each spatial transformer (emo_model/network/emotion_audio_layers.py):
    # the audio tokens are a second stream updated by every module and handed to the next one, the norms are
    # driven by one of ``emotion_classes`` emotion classes (plus a "no emotion" class for the unconditional branch).
    emotion_audio_modules: bool = False
    emotion_classes: int = 9
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    speed_layers: bool = True


@dataclass
class EMOConfig:
    name: str = "emo"
    family: str = "emo"
    reference_net: ReferenceNetConfig = field(default_factory=ReferenceNetConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    face_locator: FaceLocatorConfig | None = field(default_factory=FaceLocatorConfig)
    audio_proj: AudioProjConfig | None = field(default_factory=AudioProjConfig)
    image_proj: ImageProjConfig | None = None
    speed: SpeedConfig | None = field(default_factory=SpeedConfig)
    audio: AudioFeatureConfig = field(default_factory=AudioFeatureConfig)
    preset: PresetConfig = field(default_factory=PresetConfig)
    latent_channels: int = 4
    vae_scale_factor: int = 8
    vae_scaling_factor: float = 0.18215

    # ---- derived ---------------------------------------------------------------------------------
    @property
    def audio_token_dim(self) -> int:
        """Width of the audio tokens the backbone reads (after the audio projection, if any)."""
        if self.audio_proj is not None:
            return self.audio_proj.output_dim
        return self.audio.dim

    # ---- (de)serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EMOConfig":
        return _from_dict(cls, data)

    @classmethod
    def from_json(cls, text: str) -> "EMOConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> "EMOConfig":
        return dataclasses.replace(copy.deepcopy(self), **changes)

    def validate(self) -> "EMOConfig":
        bb = self.backbone
        if bb.cross_attention_input not in ("audio", "identity", "none"):
            raise ValueError(f"backbone.cross_attention_input must be audio/identity/none, got {bb.cross_attention_input!r}")
        if bb.cross_attention_input == "identity" and self.image_proj is None:
            raise ValueError("backbone reads identity tokens in attn2 but the config has no image_proj")
        if bb.cross_attention_input == "audio" and bb.unet.cross_attention_dim != self.audio_token_dim:
            raise ValueError(
                f"attn2 reads audio tokens of width {self.audio_token_dim} but cross_attention_dim is "
                f"{bb.unet.cross_attention_dim}"
            )
        if bb.speed_layers and self.speed is None:
            raise ValueError("backbone.speed_layers is set but the config has no speed section")
        if self.preset.strategy not in ("motion_frames", "context_windows"):
            raise ValueError(f"preset.strategy must be motion_frames or context_windows, got {self.preset.strategy!r}")
        if self.preset.quirks.context_schedule not in ("ramp", "uniform", "uniform-open"):
            raise ValueError(f"preset.quirks.context_schedule must be ramp, uniform or uniform-open, "
                             f"got {self.preset.quirks.context_schedule!r}")
        if self.preset.quirks.seed_stream not in ("per_clip", "single"):
            raise ValueError(f"preset.quirks.seed_stream must be per_clip or single, got {self.preset.quirks.seed_stream!r}")
        if self.preset.quirks.audio_loader not in ("pyav", "librosa", "ffmpeg-wav+librosa", "ffmpeg-s16-mono"):
            raise ValueError(f"preset.quirks.audio_loader must be pyav/librosa/ffmpeg-wav+librosa/ffmpeg-s16-mono, "
                             f"got {self.preset.quirks.audio_loader!r}")
        if self.preset.quirks.emotion_channel not in ("mix", "first"):
            raise ValueError(f"preset.quirks.emotion_channel must be mix/first, got {self.preset.quirks.emotion_channel!r}")
        median = self.preset.quirks.output_median_filter
        if median < 0 or (median and median % 2 == 0):
            raise ValueError(f"preset.quirks.output_median_filter must be 0 or an odd size, got {median!r}")
        if self.face_locator is not None and self.face_locator.reads not in ("face_mask", "pose_frames"):
            raise ValueError(f"face_locator.reads must be face_mask/pose_frames, got {self.face_locator.reads!r}")
        if self.backbone.unet.reference_attention not in ("joint", "separate"):
            raise ValueError(f"backbone.unet.reference_attention must be joint or separate, got {self.backbone.unet.reference_attention!r}")
        if self.preset.quirks.unconditional_reference not in ("none", "zeros"):
            raise ValueError(f"preset.quirks.unconditional_reference must be none or zeros, got {self.preset.quirks.unconditional_reference!r}")
        if self.audio_proj is not None and self.audio_proj.kind not in ("mlp", "perceiver"):
            raise ValueError(f"audio_proj.kind must be mlp or perceiver, got {self.audio_proj.kind!r}")
        if self.audio.hidden_states not in ("all", "last"):
            raise ValueError(f"audio.hidden_states must be all or last, got {self.audio.hidden_states!r}")
        if self.audio.kind not in ("wav2vec2", "whisper", "logmel"):
            raise ValueError(f"audio.kind must be wav2vec2, whisper or logmel, got {self.audio.kind!r}")
        sch = self.preset.scheduler
        if sch.rescale_betas_zero_snr and sch.prediction_type == "epsilon":
            raise ValueError("a zero-terminal-SNR schedule needs v-prediction (epsilon is undefined at the last step)")
        if self.audio_proj is not None:
            got = (self.audio_proj.seq_len, self.audio_proj.blocks, self.audio_proj.channels)
            want = (self.audio.window, self.audio.feature_rows, self.audio.dim)
            if got != want:
                raise ValueError(f"audio_proj expects (window, layers, dim) = {got} but the audio features are {want}")
        if bb.region_audio_modules and bb.emotion_audio_modules:
            raise ValueError("backbone: region_audio_modules and emotion_audio_modules are two layouts of the same slot; choose one")
        if (bb.region_audio_modules or bb.emotion_audio_modules) and bb.audio_module_dim != self.audio_token_dim:
            raise ValueError(f"audio modules read tokens of width {bb.audio_module_dim}, the audio tokens are {self.audio_token_dim}")
        return self


def _from_dict(cls: type, data: Any) -> Any:
    """Rebuild a (possibly nested, possibly Optional) dataclass from plain data."""
    if data is None:
        return None
    import typing

    hints = typing.get_type_hints(cls)
    kwargs = {}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown keys for {cls.__name__}: {sorted(unknown)}")
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        hint = hints[f.name]
        target = _dataclass_in(hint)
        if target is not None and value is not None:
            kwargs[f.name] = _from_dict(target, value)
        elif isinstance(value, list):
            kwargs[f.name] = tuple(value)
        else:
            kwargs[f.name] = value
    return cls(**kwargs)


def _dataclass_in(hint: Any) -> type | None:
    import typing

    if dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


# --------------------------------------------------------------------------------------------------
# Building blocks of the named configs (emo_model/families/)


def sd15_unet(cross_attention_dim: int | None) -> UNetConfig:
    """Stable Diffusion 1.5's UNet shape with the given attn2 width (None: no attn2)."""
    return UNetConfig(cross_attention_dim=cross_attention_dim)


def tiny_unet(cross_attention_dim: int | None) -> UNetConfig:
    """A few channels (32/64/64/64, one layer per block, 2 heads): tests and the CPU demo."""
    return UNetConfig(
        block_out_channels=(32, 64, 64, 64),
        attention_heads=2,
        norm_num_groups=8,
        layers_per_block=1,
        cross_attention_dim=cross_attention_dim,
    )

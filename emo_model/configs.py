"""Architecture configs and family presets, as plain data.

Every config is a dataclass tree that round-trips through JSON (``to_dict`` / ``from_dict``), so a
checkpoint can carry the exact architecture it was trained with in its metadata.

Named configs:

* ``emo``: EMO as in the paper (arXiv 2402.17485): SD1.5-sized ReferenceNet and backbone, audio
  attention through the cross-attention slot (fed by wav2vec2 features projected to tokens),
  AnimateDiff-v2 temporal modules, face locator, speed layers; 30 fps, 12 frames + 4 motion frames.
* ``hallo``: the layout of Hallo's ``net.pth`` (separate ``audio_modules``, face-identity tokens in
  ``attn2``), 25 fps, 16 frames + 2 motion frames.
* ``echomimic-v1`` / ``echomimic-v1-acc``: EchoMimic v1 (whisper-tiny tokens in ``attn2`` with width
  384, ReferenceNet without cross-attention), 24 fps, context windows of 12 with overlap 3.
* ``tiny``: the ``emo`` structure with a few channels, for tests and the CPU demo.
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


@dataclass
class AudioProjConfig:
    """Hallo's ``AudioProjModel``: a window of per-frame audio features -> ``context_tokens`` tokens."""

    seq_len: int = 5
    blocks: int = 12
    channels: int = 768
    intermediate_dim: int = 512
    output_dim: int = 768
    context_tokens: int = 32


@dataclass
class ImageProjConfig:
    """Hallo's ``ImageProjModel``: a face-identity embedding -> ``tokens`` tokens for ``attn2``."""

    embed_dim: int = 512
    cross_attention_dim: int = 768
    tokens: int = 4


@dataclass
class AudioFeatureConfig:
    """What the audio front end computes for every video frame.

    * ``wav2vec2``: all hidden layers of wav2vec2-base-960h (``layers`` x ``dim``); ``interpolate_conv``
      follows Hallo (conv features resampled to the video frame count before the transformer).
    * ``whisper``: whisper-tiny encoder, embedding + 4 blocks (5 x 384) at 50 Hz, a window of
      ``whisper_window`` whisper frames per video frame, flattened to tokens (EchoMimic).
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

    @property
    def window(self) -> int:
        return 2 * self.margin + 1


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
    # DDIM only: the step to timestep < 0 (trailing spacing ends there) goes to alpha = 1 (diffusers' default,
    # what Hallo's scripts/inference.py gets from ``DDIMScheduler(**noise_scheduler_kwargs)``) or to alphas_cumprod[0].
    # EchoMimic v1 too: infer_audio2vid.py builds ``DDIMScheduler(**noise_scheduler_kwargs)`` without it.
    set_alpha_to_one: bool = False


@dataclass
class InferenceQuirks:
    """Where a family's original inference code computes something other than the paper's design.

    Each field is data (never an ``if family == ...`` in a block) and names the original code it mirrors,
    so our pipeline gives what the original gives on that family's weights. The defaults are EMO's own
    (paper) behaviour; ``docs/parity.md`` lists every field with its measured effect.
    """

    # Temporal modules also run in UNet levels without spatial transformers (SD1.5's lowest level).
    # Hallo: False. hallo/models/unet_3d_blocks.py (DownBlock3D / UpBlock3D ``forward``) at commit 8fd7c572:
    # scripts/inference.py builds the UNet with ``from_config``, never calls ``.eval()`` and enables gradient
    # checkpointing, so the ``self.training and self.gradient_checkpointing`` branch runs, and in the blocks
    # without attention that branch applies only the resnets (training used the same branch).
    temporal_in_plain_blocks: bool = True
    # Factor on the output of the backbone's audio cross-attention (``attn2``) before the residual add.
    # EchoMimic v1: 3.0. src/models/mutual_self_attention.py (``hacked_basic_transformer_inner_forward``,
    # ``audio_feature_ratio``) at commit a53e9704: the read-mode hook scales attn2 in every denoising call.
    audio_attention_scale: float = 1.0
    # Under classifier-free guidance the ReferenceNet runs once on the rows [uncond: portrait, motion 1..n |
    # cond: portrait, motion 1..n] with identity tokens alternating uncond, cond, uncond, ... over the rows, so each
    # branch's motion frames are encoded with mixed identities. Hallo: True. hallo/animate/face_animate.py
    # (``__call__``: ``ref_image_latents.repeat(2, ...)`` with ``encoder_hidden_states = cat([uncond, cond])``) and
    # hallo/models/mutual_self_attention.py (write mode: ``encoder_hidden_states.repeat(tmp, 1, 1)``) at 8fd7c572.
    reference_identity_alternates: bool = False
    # The next clip's motion frames are the previous clip's decoded frames encoded again with the VAE (not its
    # latents). Hallo: True. scripts/inference.py (clip loop: ``tensor_result[-1]``, last n frames * 2 - 1, as
    # ``ref_image``) and hallo/animate/face_animate.py (``vae.encode(...).latent_dist.mean * 0.18215``) at 8fd7c572.
    motion_frames_from_pixels: bool = False
    # Under classifier-free guidance, token sequence i (branch-major: unconditional frames first) reads the portrait
    # row of guidance block ``i % 2``, not of its own branch: the read-mode hook tiles the per-block portrait rows
    # over the frames (``rearrange(...)[:, 0].repeat(1, video_length, 1, 1)`` on a 3-D tensor). With
    # ``reference_identity_alternates`` those rows differ (block 0's portrait reads the unconditional identity), so
    # every other conditional frame sees the portrait encoded with the unconditional identity. Hallo: True.
    # hallo/models/mutual_self_attention.py (read mode, ``bank_fea``) at commit 8fd7c572.
    reference_rows_tiled: bool = False
    # How context windows are laid out (strategy "context_windows"). "ramp": fixed windows (stride size -
    # overlap, the last one aligned to the end), blended with linear ramps over the overlap. "uniform":
    # EchoMimic v1, src/pipelines/context.py ``uniform()`` as pipeline_echo_mimic.py calls it (step 0,
    # stride 1, closed loop): windows start at 0, size - overlap, ... and wrap around the end, every
    # frame's predictions averaged with equal weights (``noise_pred / counter``).
    context_schedule: str = "ramp"
    # Frames every context window moves forward per denoising step, wrapping around the sequence.
    # EchoMimic v1: 2. src/pipelines/pipeline_echo_mimic.py ``__call__``: ``(c + t_i * 2) % video_length``.
    context_shift_per_step: int = 0
    # Clamp of the initial Gaussian noise to [-v, v] before the scheduler scale (None: no clamp).
    # EchoMimic v1: 1.5. src/pipelines/pipeline_echo_mimic.py ``prepare_latents``: ``torch.clamp(latents, -1.5, 1.5)``.
    initial_noise_clamp: float | None = None
    # The audio front end pads to a whole number of clips (of the preset's ``frames_per_clip``) before the encoder:
    # the wav2vec2 input is the source's own samples normalised on their own, then zeros (silence after the
    # normalisation) for the missing frames; the conv features are interpolated over the padded frame count, and the
    # last clip's extra frames are generated from those silent features (then dropped). Off: the waveform is cut /
    # padded to the frame count first and the last clip repeats the last frame's features. Hallo: True.
    # hallo/datasets/audio_processor.py (``AudioProcessor.preprocess``: ``seq_len % clip_length`` padding) and
    # scripts/inference.py (``audio_emb`` sliced per clip, ``tensor_result[:, :audio_length]``) at commit 8fd7c572.
    audio_padded_to_clips: bool = False
    # wav2vec2 sees the whole audio in one pass (its attention spans everything), not pieces of 20 s with 2.5 s of
    # context on each side (bounded memory on long audio; identical up to 20 s). Hallo: True.
    # hallo/datasets/audio_processor.py (``AudioProcessor.preprocess``: one ``audio_encoder(...)`` call) at 8fd7c572.
    audio_single_pass: bool = False


@dataclass
class PresetConfig:
    """How a family is meant to be run (sampling defaults); every value can be overridden per run."""

    fps: float = 30.0
    resolution: int = 512
    strategy: str = "motion_frames"  # or "context_windows"
    frames_per_clip: int = 12
    motion_frames: int = 4
    context_overlap: int = 0
    first_clip_motion: str = "zeros"  # "zeros" (EMO) or "reference" (Hallo repeats the portrait)
    sampler: str = "ddim"
    steps: int = 40
    cfg: float = 3.5
    audio_cfg: float = 3.5
    speed: float = 0.7
    face_expand_ratio: float = 1.2
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    quirks: InferenceQuirks = field(default_factory=InferenceQuirks)


# --------------------------------------------------------------------------------------------------
# Modules


@dataclass
class ReferenceNetConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    # SD1.5's conv_norm_out/conv_out; the reference pass never uses them (Hallo and EchoMimic drop them).
    output_head: bool = False


@dataclass
class BackboneConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    # What the ordinary cross-attention slot (attn2) reads: "audio" (EMO, EchoMimic), "identity"
    # (Hallo's face-ID tokens) or "none".
    cross_attention_input: str = "audio"
    # Hallo's separate audio modules (three masked branches) after each spatial transformer.
    hallo_audio_modules: bool = False
    audio_module_dim: int = 768
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    speed_layers: bool = True


@dataclass
class EMOConfig:
    name: str = "emo"
    family: str = "emo"
    reference_net: ReferenceNetConfig = field(default_factory=ReferenceNetConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    face_locator: FaceLocatorConfig = field(default_factory=FaceLocatorConfig)
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
        if self.preset.quirks.context_schedule not in ("ramp", "uniform"):
            raise ValueError(f"preset.quirks.context_schedule must be ramp or uniform, got {self.preset.quirks.context_schedule!r}")
        if self.audio.kind not in ("wav2vec2", "whisper", "logmel"):
            raise ValueError(f"audio.kind must be wav2vec2, whisper or logmel, got {self.audio.kind!r}")
        sch = self.preset.scheduler
        if sch.rescale_betas_zero_snr and sch.prediction_type == "epsilon":
            raise ValueError("a zero-terminal-SNR schedule needs v-prediction (epsilon is undefined at the last step)")
        if self.audio_proj is not None:
            got = (self.audio_proj.seq_len, self.audio_proj.blocks, self.audio_proj.channels)
            want = (self.audio.window, self.audio.layers, self.audio.dim)
            if got != want:
                raise ValueError(f"audio_proj expects (window, layers, dim) = {got} but the audio features are {want}")
        if bb.hallo_audio_modules and bb.audio_module_dim != self.audio_token_dim:
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
# Named configs


def _sd15_unet(cross_attention_dim: int | None) -> UNetConfig:
    return UNetConfig(cross_attention_dim=cross_attention_dim)


def emo_config() -> EMOConfig:
    """EMO as described in the paper, with the open family's conventions where it is silent."""
    return EMOConfig(
        name="emo",
        family="emo",
        # The paper turns the text cross-attention into reference-attention: no attn2 in the ReferenceNet.
        reference_net=ReferenceNetConfig(unet=_sd15_unet(None)),
        backbone=BackboneConfig(unet=_sd15_unet(768), cross_attention_input="audio", speed_layers=True),
        face_locator=FaceLocatorConfig(in_channels=1, block_out_channels=(16, 32, 96, 256)),
        audio_proj=AudioProjConfig(),
        speed=SpeedConfig(),
        audio=AudioFeatureConfig(kind="wav2vec2", layers=12, dim=768, margin=2),
        preset=PresetConfig(fps=30.0, frames_per_clip=12, motion_frames=4, first_clip_motion="zeros", steps=40),
    ).validate()


def hallo_config() -> EMOConfig:
    return EMOConfig(
        name="hallo",
        family="hallo",
        reference_net=ReferenceNetConfig(unet=_sd15_unet(768)),
        backbone=BackboneConfig(
            unet=_sd15_unet(768),
            cross_attention_input="identity",
            hallo_audio_modules=True,
            audio_module_dim=768,
            speed_layers=False,
        ),
        face_locator=FaceLocatorConfig(in_channels=3, block_out_channels=(16, 32, 64, 128)),
        audio_proj=AudioProjConfig(),
        image_proj=ImageProjConfig(),
        speed=None,
        audio=AudioFeatureConfig(kind="wav2vec2", layers=12, dim=768, margin=2, interpolate_conv=True),
        preset=PresetConfig(
            fps=25.0,
            frames_per_clip=16,
            motion_frames=2,
            first_clip_motion="reference",
            steps=40,
            cfg=3.5,
            audio_cfg=3.5,
            face_expand_ratio=1.2,
            scheduler=SchedulerConfig(set_alpha_to_one=True),
            quirks=InferenceQuirks(temporal_in_plain_blocks=False, reference_identity_alternates=True, motion_frames_from_pixels=True,
                                  reference_rows_tiled=True, audio_padded_to_clips=True,
                                  audio_single_pass=True),
        ),
    ).validate()


def echomimic_v1_config(acc: bool = False) -> EMOConfig:
    return EMOConfig(
        name="echomimic-v1-acc" if acc else "echomimic-v1",
        family="echomimic-v1",
        reference_net=ReferenceNetConfig(unet=_sd15_unet(None)),
        backbone=BackboneConfig(unet=_sd15_unet(384), cross_attention_input="audio", speed_layers=False),
        face_locator=FaceLocatorConfig(in_channels=1, block_out_channels=(16, 32, 96, 256)),
        audio_proj=None,
        speed=None,
        audio=AudioFeatureConfig(kind="whisper", layers=5, dim=384, margin=2, whisper_window=(-4, 5)),
        preset=PresetConfig(
            fps=24.0,
            strategy="context_windows",
            frames_per_clip=12,
            motion_frames=0,
            context_overlap=3,
            steps=6 if acc else 30,
            cfg=1.0 if acc else 2.5,
            audio_cfg=1.0 if acc else 2.5,
            face_expand_ratio=1.5,
            scheduler=SchedulerConfig(set_alpha_to_one=True),
            quirks=InferenceQuirks(
                audio_attention_scale=3.0, context_schedule="uniform", context_shift_per_step=2, initial_noise_clamp=1.5
            ),
        ),
    ).validate()


def tiny_config() -> EMOConfig:
    """The ``emo`` structure at a few channels: 64x64 pixels / 8x8 latents, for tests and the demo."""
    n_mels = 32
    audio_proj = AudioProjConfig(seq_len=5, blocks=1, channels=n_mels, intermediate_dim=64, output_dim=64, context_tokens=4)
    return EMOConfig(
        name="tiny",
        family="emo",
        reference_net=ReferenceNetConfig(unet=_tiny_unet(None)),
        backbone=BackboneConfig(
            unet=_tiny_unet(64),
            cross_attention_input="audio",
            temporal=TemporalConfig(heads=2, norm_num_groups=8),
            speed_layers=True,
        ),
        face_locator=FaceLocatorConfig(in_channels=1, block_out_channels=(8, 8, 16, 16), out_channels=32),
        audio_proj=audio_proj,
        speed=SpeedConfig(hidden_dim=32, embed_dim=32),
        audio=AudioFeatureConfig(kind="logmel", layers=1, dim=n_mels, margin=2),
        preset=PresetConfig(
            fps=25.0, resolution=64, frames_per_clip=8, motion_frames=2, steps=20, cfg=2.0, audio_cfg=2.0, speed=0.7
        ),
    ).validate()


def _tiny_unet(cross_attention_dim: int | None) -> UNetConfig:
    return UNetConfig(
        block_out_channels=(32, 64, 64, 64),
        attention_heads=2,
        norm_num_groups=8,
        layers_per_block=1,
        cross_attention_dim=cross_attention_dim,
    )


def tiny_hallo_config() -> EMOConfig:
    """Hallo's layout at a few channels (tests of the Hallo code paths and of the net.pth format)."""
    audio = AudioFeatureConfig(kind="wav2vec2", layers=2, dim=32, margin=2)
    return EMOConfig(
        name="tiny-hallo",
        family="hallo",
        reference_net=ReferenceNetConfig(unet=_tiny_unet(32)),
        backbone=BackboneConfig(
            unet=_tiny_unet(32),
            cross_attention_input="identity",
            hallo_audio_modules=True,
            audio_module_dim=32,
            # 32 groups as Hallo's motion modules hard-code (tests/parity/hallo compares against them)
            temporal=TemporalConfig(heads=2, norm_num_groups=32),
            speed_layers=False,
        ),
        face_locator=FaceLocatorConfig(in_channels=3, block_out_channels=(8, 8, 16, 16), out_channels=32),
        audio_proj=AudioProjConfig(seq_len=5, blocks=2, channels=32, intermediate_dim=32, output_dim=32, context_tokens=4),
        image_proj=ImageProjConfig(embed_dim=16, cross_attention_dim=32, tokens=2),
        speed=None,
        audio=audio,
        preset=dataclasses.replace(hallo_config().preset, resolution=64, frames_per_clip=8, motion_frames=2, steps=4),
    ).validate()


def tiny_echomimic_config() -> EMOConfig:
    """EchoMimic v1's layout at a few channels (whisper tokens straight into attn2).

    Built so that EchoMimic's own classes can make the same tensors (tools/parity/echomimic_original.py):
    whisper width 384 (its ``audio2feature`` reshapes to 384-wide tokens; 2 blocks -> 3 layers) and 32
    groups in the motion modules' GroupNorm (fixed in its ``TemporalTransformer3DModel``)."""
    audio = AudioFeatureConfig(kind="whisper", layers=3, dim=384, margin=2, whisper_window=(-4, 5))
    return EMOConfig(
        name="tiny-echomimic",
        family="echomimic-v1",
        reference_net=ReferenceNetConfig(unet=_tiny_unet(None)),
        backbone=BackboneConfig(
            unet=_tiny_unet(384), cross_attention_input="audio", temporal=TemporalConfig(heads=2, norm_num_groups=32), speed_layers=False
        ),
        face_locator=FaceLocatorConfig(in_channels=1, block_out_channels=(8, 8, 16, 16), out_channels=32),
        audio_proj=None,
        speed=None,
        audio=audio,
        preset=dataclasses.replace(echomimic_v1_config().preset, resolution=64, frames_per_clip=8, context_overlap=2, steps=4),
    ).validate()


CONFIGS = {
    "emo": emo_config,
    "hallo": hallo_config,
    "echomimic-v1": lambda: echomimic_v1_config(acc=False),
    "echomimic-v1-acc": lambda: echomimic_v1_config(acc=True),
    "tiny": tiny_config,
    "tiny-hallo": tiny_hallo_config,
    "tiny-echomimic": tiny_echomimic_config,
}


def get_config(name: str) -> EMOConfig:
    try:
        return CONFIGS[name]()
    except KeyError:
        raise KeyError(f"unknown config {name!r}; choose one of {sorted(CONFIGS)}") from None

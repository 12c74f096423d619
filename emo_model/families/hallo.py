"""Hallo (fudan-generative-vision/hallo): one ``net.pth`` holding the whole network.

What makes it Hallo:

* Files: ``net.pth``, one state dict whose keys carry EMOModel's module prefixes (``reference_unet.``,
  ``denoising_unet.``, ``face_locator.``, ``imageproj.``, ``audioproj.``); fp16 as published. Recognised
  by its key/shape set (no renaming: EMOModel's sub-module names follow ``net.pth``).
* Architecture: attn2 of the backbone reads face-identity tokens (insightface embedding through
  ``imageproj``), the audio goes through separate region audio modules (full / face / lip) after every
  spatial transformer, a 3-channel face locator (16, 32, 64, 128); wav2vec2-base-960h features with the
  conv features interpolated to the frame count, projected by ``audioproj``.
* Preset: ``configs/inference/default.yaml``: 25 fps, 16 frames + 2 motion frames per clip, the portrait
  repeated as the first clip's motion frames, 40 DDIM steps, CFG 3.5, face box expanded 1.2x.
* Quirks of ``scripts/inference.py`` and its modules, each mirrored by an :class:`InferenceQuirks` field
  (all at commit 8fd7c572; measured effects in docs/parity.md):

  - ``temporal_in_plain_blocks = False``: hallo/models/unet_3d_blocks.py (DownBlock3D / UpBlock3D
    ``forward``): the inference script builds the UNet with ``from_config``, never calls ``.eval()`` and
    enables gradient checkpointing, so the ``self.training and self.gradient_checkpointing`` branch runs,
    and in the blocks without attention that branch applies only the resnets (training used the same branch).
  - ``reference_identity_alternates``: hallo/animate/face_animate.py (``__call__``:
    ``ref_image_latents.repeat(2, ...)`` with ``encoder_hidden_states = cat([uncond, cond])``) and
    hallo/models/mutual_self_attention.py (write mode: ``encoder_hidden_states.repeat(tmp, 1, 1)``).
  - ``motion_frames_from_pixels``: scripts/inference.py (clip loop: ``tensor_result[-1]``, last n frames
    * 2 - 1, as ``ref_image``) and hallo/animate/face_animate.py (``vae.encode(...).latent_dist.mean * 0.18215``).
  - ``reference_rows_tiled``: hallo/models/mutual_self_attention.py (read mode, ``bank_fea``:
    ``rearrange(...)[:, 0].repeat(1, video_length, 1, 1)`` on a 3-D tensor).
  - ``audio_padded_to_clips``: hallo/datasets/audio_processor.py (``AudioProcessor.preprocess``:
    ``seq_len % clip_length`` padding) and scripts/inference.py (``audio_emb`` sliced per clip,
    ``tensor_result[:, :audio_length]``).
  - ``audio_single_pass``: hallo/datasets/audio_processor.py (one ``audio_encoder(...)`` call).
  - ``audio_loader = "librosa"`` and :data:`VOCAL_SEPARATOR` (``Family.vocal_separator``):
    hallo/datasets/audio_processor.py ``AudioProcessor.preprocess`` (audio-separator 0.17.2 with Kim_Vocal_2.onnx, the
    ffmpeg program's ``-ar 16000`` in hallo/utils/util.py ``resample_audio``, ``librosa.load(sr=16000)``).
  - ``SchedulerConfig.set_alpha_to_one = True``: scripts/inference.py builds
    ``DDIMScheduler(**noise_scheduler_kwargs)`` without it, so diffusers' default applies.
"""

from __future__ import annotations

import dataclasses

from ..audio.vocal_separation import SeparatorSettings
from ..configs import (
    AudioFeatureConfig,
    AudioProjConfig,
    BackboneConfig,
    EMOConfig,
    FaceLocatorConfig,
    ImageProjConfig,
    InferenceQuirks,
    PresetConfig,
    ReferenceNetConfig,
    SchedulerConfig,
    TemporalConfig,
    sd15_unet,
    tiny_unet,
)
from ..face.front_ends import FaceFrontEnd
from ..face.landmark_masks import LandmarkMaskRecipe
from .base import SD_VAE, WAV2VEC2_BASE, YUNET_FACE, Family, HubFile, OriginalCode, face_analysis

ORIGINAL = OriginalCode(
    repo="fudan-generative-vision/hallo",
    commit="8fd7c572a3d43c2a9c1a5473219ce4fc1b6e3ed2",
    weights="huggingface.co/fudan-generative-ai/hallo: hallo/net.pth",
)

QUIRKS = InferenceQuirks(
    temporal_in_plain_blocks=False,
    reference_identity_alternates=True,
    motion_frames_from_pixels=True,
    reference_rows_tiled=True,
    audio_padded_to_clips=True,
    audio_single_pass=True,
    # hallo/datasets/audio_processor.py (AudioProcessor.preprocess): librosa.load(file, sr=16000) (librosa 0.10.2.post1)
    audio_loader="librosa",
    # scripts/inference.py:289 generator = torch.manual_seed(42) (always 42: --seed 42 gives Hallo's noise), one stream:
    # hallo/animate/face_animate.py prepare_latents randn_tensor([1, 4, 16, h, w], generator) at every clip
    seed_stream="single",
)

# hallo/datasets/audio_processor.py (AudioProcessor.__init__ / preprocess) and scripts/inference.py (the model file in
# configs/inference/default.yaml): audio-separator 0.17.2, Separator(output_single_stem="vocals") with its defaults,
# Kim_Vocal_2.onnx; the vocals resampled by the ffmpeg program to 16 kHz, then librosa.load
VOCAL_SEPARATOR = SeparatorSettings(
    source="`emo download hallo --optional` fetches it (HF fudan-generative-ai/hallo)",
    version="0.17.2",
)
KIM_VOCAL_2 = HubFile("fudan-generative-ai/hallo", "audio_separator/Kim_Vocal_2.onnx", "emo", "audio_separator/Kim_Vocal_2.onnx",
                      optional="vocal separation (Kim_Vocal_2): the voice, not the music, drives the mouth")

# The face preprocessing of scripts/inference.py: hallo/datasets/image_processor.py ImageProcessor.preprocess (insightface
# FaceAnalysis: the largest face's raw embedding; the picture and the face region resized by torchvision to 512 x 512)
# and hallo/utils/util.py get_mask (MediaPipe FaceLandmarker points: get_face_mask with face_expand_ratio 1.2 from
# configs/inference/default.yaml, get_lip_mask at its default 2.0, expand_region, blur_mask at 64 x 64 with kernels 51
# and 31, get_background_mask, get_sep_face_mask), resized to 512 / 8, 16, 32, 64 (attn_transform_64 ... _8).
FACE_FRONT_END = FaceFrontEnd(
    label="Hallo's",
    mirrors="hallo/datasets/image_processor.py ImageProcessor.preprocess + hallo/utils/util.py get_mask (8fd7c572)",
    identity=True,
    squash_resize=True,
    landmarks=LandmarkMaskRecipe(face_expand=1.2, lip_expand=2.0, blur_size=64, face_kernel=51, lip_kernel=31,
                                 level_divisors=(8, 16, 32, 64), mirrors="hallo/utils/util.py get_mask (8fd7c572)"),
)


def hallo_preset(**changes) -> PresetConfig:
    preset = PresetConfig(
        fps=25.0,
        frames_per_clip=16,
        motion_frames=2,
        first_clip_motion="reference",
        steps=40,
        cfg=3.5,
        audio_cfg=3.5,
        face_expand_ratio=1.2,
        scheduler=SchedulerConfig(set_alpha_to_one=True),
        quirks=QUIRKS,
    )
    return dataclasses.replace(preset, **changes)


def hallo_config(name: str = "hallo", family: str = "hallo", preset: PresetConfig | None = None) -> EMOConfig:
    return EMOConfig(
        name=name,
        family=family,
        reference_net=ReferenceNetConfig(unet=sd15_unet(768)),
        backbone=BackboneConfig(
            unet=sd15_unet(768),
            cross_attention_input="identity",
            region_audio_modules=True,
            audio_module_dim=768,
            speed_layers=False,
        ),
        face_locator=FaceLocatorConfig(in_channels=3, block_out_channels=(16, 32, 64, 128)),
        audio_proj=AudioProjConfig(),
        image_proj=ImageProjConfig(),
        speed=None,
        audio=AudioFeatureConfig(kind="wav2vec2", layers=12, dim=768, margin=2, interpolate_conv=True),
        preset=preset or hallo_preset(),
    ).validate()


def tiny_hallo_config(name: str = "tiny-hallo", family: str = "hallo", preset: PresetConfig | None = None) -> EMOConfig:
    """Hallo's layout at a few channels (tests of the Hallo code paths and of the net.pth format)."""
    audio = AudioFeatureConfig(kind="wav2vec2", layers=2, dim=32, margin=2)
    return EMOConfig(
        name=name,
        family=family,
        reference_net=ReferenceNetConfig(unet=tiny_unet(32)),
        backbone=BackboneConfig(
            unet=tiny_unet(32),
            cross_attention_input="identity",
            region_audio_modules=True,
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
        preset=preset or hallo_preset(resolution=64, frames_per_clip=8, motion_frames=2, steps=4),
    ).validate()


def _parity_ours(work, fixture, meta, spec) -> dict:
    import numpy as np

    return {
        "checkpoint": work / "work" / "ckpt" / "net.pth",
        "vae": fixture / "vae",
        "encoder": fixture / "wav2vec2",
        "wave": np.load(work / "work" / "speech.npy", allow_pickle=False),
        "overrides": {"frames_per_clip": spec["frames"], "motion_frames": spec["motion"], "cfg": 3.5, "audio_cfg": 3.5},
    }


def _parity_harness():
    from .base import ParityHarness

    return ParityHarness(
        script="hallo_original.py",
        src_flag="--hallo-src",
        settings={"frames": 4, "motion": 2, "clips": 2},
        extra_args=lambda work: ["--work", str(work / "work")],
        weights_ready=lambda work: (work / "work" / "ckpt" / "net.pth").is_file() and (work / "fixture" / "meta.json").is_file(),
        ours=_parity_ours,
        # Hallo computes its audio features before the clip loop, outside the timed pipeline call
        audio_timed=False,
    )


FAMILY = Family(
    name="hallo",
    label="Hallo",
    configs={"hallo": hallo_config, "tiny-hallo": tiny_hallo_config},
    files="Hallo's net.pth",
    original=ORIGINAL,
    sources={"net.pth": "Hallo's weights, from Hugging Face: fudan-generative-ai/hallo, file hallo/net.pth"},
    renamed_config_fields={"backbone.hallo_audio_modules": "backbone.region_audio_modules"},
    parity=_parity_harness(),
    quoted_configs={"hallo": "Hallo"},
    face_front_end=FACE_FRONT_END,
    downloads=(HubFile("fudan-generative-ai/hallo", "hallo/net.pth", "emo", "hallo/net.pth"), *SD_VAE, *WAV2VEC2_BASE, YUNET_FACE,
               KIM_VOCAL_2, *face_analysis("fudan-generative-ai/hallo")),
    vocal_separator=VOCAL_SEPARATOR,
)

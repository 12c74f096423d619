"""MEMO (memoavatar/memo): four diffusers folders, memory-guided temporal modules, emotion-aware audio modules.

What makes it MEMO (every rule at commit a5aee301, file:line there):

* Files: one folder holding four diffusers model folders, each ``config.json`` +
  ``diffusion_pytorch_model.safetensors`` (fp32 as published): ``reference_net/`` (an SD1.5 UNet2D that stops after
  norm1 of its last spatial transformer, no output head), ``diffusion_net/`` (the video UNet with motion and audio
  modules), ``image_proj/`` and ``audio_proj/`` (their ``config.json`` are empty: the shapes come from the tensors).
  Recognised by the tensors of the four parts together; a folder missing one names it.
* Architecture: attn2 of both UNets reads face-identity tokens (``image_proj``: 512 -> 4 x 768, the same projection
  as Hallo's); after every spatial transformer an emotion-conditioned joint audio module (memo/models/attention.py
  ``JointAudioTemporalBasicTransformerBlock`` :493-632, ``EmoAdaLayerNorm`` :461-490, joint processor
  memo/models/attention_processor.py:1193-1260; widths as Hallo's audio modules, memo/models/unet_3d_blocks.py:237,
  251, 452, 788); the audio tokens flow from one audio module to the next (memo/models/unet_3d.py:482-571) and the
  last one (``up_blocks.3.audio_modules.2``, transformer_3d.py ``is_final_block``) hands none on; memory-guided
  linear-attention motion modules at every level (memo/models/motion_module.py, processor
  attention_processor.py:790-943, decay 0.9); no face locator, no speed layers; wav2vec2-base-960h features
  (memo/utils/audio_utils.py:44-146) projected by ``audio_proj`` (Hallo's AudioProjModel).
* Preset: configs/inference.yaml: 512 x 512, 30 fps, 16 frames per clip, 16 past frames, 20 FlowMatch Euler steps
  (inference.py:178 ``FlowMatchEulerDiscreteScheduler()``, diffusers defaults: shift 1), CFG 3.5.
* Quirks, each mirrored by a generic field:

  - ``first_clip_motion = "reference"``: inference.py:191-204: clip 0's past frames are the portrait repeated
    (``num_init_past_frames``).
  - ``reference_identity_alternates`` + ``reference_rows_tiled``: memo/models/attention.py:250-257 (the ReferenceNet's
    attn2 reads ``encoder_hidden_states.repeat(34 // 2, 1, 1)``: row j of [uncond copy: portrait, 16 past | cond
    copy: ...] gets [uncond, cond][j % 2]) and :371 (``ref_img_feature.repeat(16, 1, 1)``: frame k of the
    conditional branch reads the portrait row of copy k % 2). The same two tilings as Hallo's.
  - ``motion_frames_from_pixels``: inference.py:197-202: the next clip's past frames are the previous clip's decoded
    float frames (clamped, not quantised) ``* 2 - 1``, encoded with the VAE mean (video_pipeline.py:202-214).
  - ``audio_padded_to_clips`` and ``audio_single_pass``: memo/utils/audio_utils.py:110-124 (pad to whole clips of 16,
    one wav2vec2 pass).
  - Memory: video_pipeline.py:261-271 ``update_past_memory = i == 0``, ``is_new_audio = clip == 0``
    (motion_module.py resets the memory at clip 0): the past frames are folded into a fresh memory at clip 0 and on
    top of the decayed memory at step 0 of every later clip (our pipeline: ``TemporalConfig.memory_decay``).
  - Unconditional branch (video_pipeline.py:176-257): face tokens of a zero embedding (not zero tokens), zero audio
    tokens, the "no emotion" class 9, no reference in attn1 (``uc_mask``).
  - Emotion: one class per clip, the mode of the clip's frame labels (the smallest on ties, torch.mode on CPU;
    video_pipeline.py:240-248). The labels come from emotion2vec_plus_large + MEMO's classifier
    (memo/utils/audio_utils.py:149-236, memo/models/emotion_classifier.py; ours: emo_model/audio/speech_emotion.py) run on
    the first channel of the un-separated 16 kHz wav (``emotion_channel = "first"``), when their files are in the model
    folder (:data:`SPEECH_EMOTION`); without them the emotion is a fixed choice (:data:`EMOTIONS`, neutral by default).
  - Audio: ``audio_loader = "ffmpeg-wav+librosa"`` (inference.py:118 ``resample_audio``, audio_utils.py:109
    ``librosa.load``) and :data:`VOCAL_SEPARATOR` (audio_utils.py:80-103: audio-separator 0.24.1, Kim_Vocal_2), when the
    user has the model file; the emotion is classified on the un-separated 16 kHz audio, as inference.py:133 does.
  - Not reproduced: bf16 weights (we run the preset dtype the user picks).
"""

from __future__ import annotations

from ..audio.vocal_separation import SeparatorSettings
from ..configs import (
    AudioFeatureConfig,
    AudioProjConfig,
    BackboneConfig,
    EMOConfig,
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
from .base import SD_VAE, WAV2VEC2_BASE, YUNET_FACE, Family, HubFile, OriginalCode, PartFiles, SpeechEmotionFiles, face_analysis

ORIGINAL = OriginalCode(
    repo="memoavatar/memo",
    commit="a5aee30120d7d2fc4e0831ca61cebdbce595324b",
    weights="huggingface.co/memoavatar/memo: reference_net/, diffusion_net/, image_proj/, audio_proj/",
)

# role (what the loader reads from the tensors) -> (sub-folder, prefix of its keys in EMOModel)
PARTS = {
    "reference_unet": ("reference_net/", "reference_unet."),
    "denoising_unet": ("diffusion_net/", "denoising_unet."),
    "image_proj": ("image_proj/", "imageproj."),
    "audio_proj": ("audio_proj/", "audioproj."),
}

# The classes of the emotion audio modules (index 9 = "no emotion", the unconditional branch). MEMO's repository
# does not name them; this is emotion2vec's 9-class order (emotion2vec_plus_large, whose features MEMO's classifier
# reads), presumed to be the order of MEMO's classifier, not verified.
EMOTIONS = ("angry", "disgusted", "fearful", "happy", "neutral", "other", "sad", "surprised", "unknown")

# Where MEMO users have the emotion classifier's two parts, inside the MEMO folder: the classifier as the
# memoavatar/memo download holds it, emotion2vec as funasr / Hugging Face ship it.
SPEECH_EMOTION = SpeechEmotionFiles(
    encoder=("emotion2vec_plus_large", "misc/emotion2vec_plus_large"),
    classifier=("misc/audio_emotion_classifier",),
    encoder_source="config.yaml + model.pt of emotion2vec_plus_large, from Hugging Face emotion2vec/emotion2vec_plus_large "
                   "(or ModelScope iic/emotion2vec_plus_large; `emo download memo --optional` fetches it)",
    classifier_source="config.json + diffusion_pytorch_model.safetensors, from Hugging Face memoavatar/memo "
                      "(misc/audio_emotion_classifier/; `emo download memo --optional` fetches it)",
)

QUIRKS = InferenceQuirks(
    reference_identity_alternates=True,
    reference_rows_tiled=True,
    motion_frames_from_pixels=True,
    audio_padded_to_clips=True,
    audio_single_pass=True,
    # inference.py:118-121 resample_audio (the ffmpeg program, -ar 16000), then memo/utils/audio_utils.py:109 librosa.load
    audio_loader="ffmpeg-wav+librosa",
    # inference.py:133-139 classifies the emotion on that un-separated 16 kHz wav, and memo/utils/audio_utils.py:197-199
    # reads it with torchaudio.load (int16 / 32768, [channels, n]) and keeps wav[0]: the first channel (a5aee301)
    emotion_channel="first",
    # seed_stream stays ours ("per_clip"): inference.py:55 seeds the GLOBAL generator (torch.manual_seed(args.seed)), and
    # model loading between that line and the clips (funasr's emotion2vec built with random init, ...) draws from it,
    # so MEMO's noise for a seed depends on package versions; the parity harness draws other noise than a fresh stream
)

# memo/utils/audio_utils.py:80-103 (preprocess_audio): audio-separator 0.24.1 (pyproject.toml),
# Separator(output_single_stem="vocals") with that version's defaults (normalization 0.9, amplification 0.6),
# misc/vocal_separator/Kim_Vocal_2.onnx (inference.py:85); the vocals resampled by the ffmpeg program, then librosa.load
VOCAL_SEPARATOR = SeparatorSettings(
    source="`emo download memo --optional` fetches it (HF memoavatar/memo)",
    folders=("misc/vocal_separator", "vocal_separator", "audio_separator", "../audio_separator"),
    version="0.24.1",
    amplification_threshold=0.6,
)

# The face preprocessing of inference.py: memo/utils/vision_utils.py preprocess_image (the picture resized by
# torchvision to 512 x 512 without a crop; insightface FaceAnalysis: the largest face's raw embedding, zeros without one).
FACE_FRONT_END = FaceFrontEnd(label="MEMO's", mirrors="memo/utils/vision_utils.py preprocess_image (a5aee301)",
                              identity=True, squash_resize=True)


def memo_preset(**changes) -> PresetConfig:
    import dataclasses

    preset = PresetConfig(
        fps=30.0,
        resolution=512,
        frames_per_clip=16,
        motion_frames=16,
        first_clip_motion="reference",
        sampler="flow_euler",
        steps=20,
        cfg=3.5,
        audio_cfg=3.5,
        scheduler=SchedulerConfig(flow_shift=1.0),
        quirks=QUIRKS,
        emotion=EMOTIONS.index("neutral"),  # the class when the emotion classifier's files are not in the model folder
    )
    return dataclasses.replace(preset, **changes)


def memo_config() -> EMOConfig:
    return EMOConfig(
        name="memo",
        family="memo",
        reference_net=ReferenceNetConfig(unet=sd15_unet(768), last_transformer_norm1_only=True),
        backbone=BackboneConfig(
            unet=sd15_unet(768),
            cross_attention_input="identity",
            emotion_audio_modules=True,
            emotion_classes=len(EMOTIONS),
            audio_module_dim=768,
            temporal=TemporalConfig(heads=8, memory_decay=0.9),
            speed_layers=False,
        ),
        face_locator=None,
        audio_proj=AudioProjConfig(),
        image_proj=ImageProjConfig(),
        speed=None,
        audio=AudioFeatureConfig(kind="wav2vec2", layers=12, dim=768, margin=2, interpolate_conv=True),
        preset=memo_preset(),
    ).validate()


def tiny_memo_config() -> EMOConfig:
    """MEMO's layout at a few channels: the sizes tools/parity/memo_original.py --pipeline builds MEMO's classes at."""
    return EMOConfig(
        name="tiny-memo",
        family="memo",
        reference_net=ReferenceNetConfig(unet=tiny_unet(32), last_transformer_norm1_only=True),
        backbone=BackboneConfig(
            unet=tiny_unet(32),
            cross_attention_input="identity",
            emotion_audio_modules=True,
            emotion_classes=len(EMOTIONS),
            audio_module_dim=32,
            # 32 groups as MEMO's motion modules hard-code
            temporal=TemporalConfig(heads=2, norm_num_groups=32, memory_decay=0.9),
            speed_layers=False,
        ),
        face_locator=None,
        audio_proj=AudioProjConfig(seq_len=5, blocks=2, channels=32, intermediate_dim=32, output_dim=32, context_tokens=4),
        image_proj=ImageProjConfig(embed_dim=16, cross_attention_dim=32, tokens=2),
        speed=None,
        audio=AudioFeatureConfig(kind="wav2vec2", layers=2, dim=32, margin=2),
        preset=memo_preset(resolution=64, frames_per_clip=4, motion_frames=4, steps=3),
    ).validate()


def _claims(parts) -> bool:
    """The four parts (or some of them), with at least one projection: two UNets alone are another family's files."""
    return set(parts) <= set(PARTS) and bool({"image_proj", "audio_proj"} & set(parts))


def _resolve(family: Family, parts: dict, variant: str, ignored: dict, W):
    """``W``: the weights toolkit (emo_model.weights.checkpoints._toolkit), handed in by the caller (no import cycle)."""

    if variant != "standard":
        raise W.WeightsError(f"MEMO is published in one variant; variant {variant!r} selects {W.variant_owner(variant)}")
    chosen = {}
    for role, files in parts.items():
        if len(files) > 1:
            raise W.WeightsError(f"several {PARTS[role][0]} weights for one model: {', '.join(f.name for f in files)}; keep one")
        chosen[role] = files[0]
    sources, found = W.gather_sources(chosen, {role: prefix for role, (_, prefix) in PARTS.items()})
    name, report = W.closest_config(found)
    W.require_known_layout(list(chosen.values()), name, report)
    config = W.get_config(name)
    if config.family != family.name:  # the closest layout is another family's: compare with ours
        config = memo_config()
        report = W.compare_shapes(found, W.model_shapes(config))
    missing = W.missing_parts(family, chosen)
    if missing:  # report only what the given parts hold
        prefixes = tuple(PARTS[r][1] for r in missing)
        report.missing = [k for k in report.missing if not k.startswith(prefixes)]
    return W.Checkpoint(family.name, config, chosen, sources, report, missing_parts=missing, ignored=ignored)


FAMILY = Family(
    name="memo",
    label="MEMO",
    configs={"memo": memo_config, "tiny-memo": tiny_memo_config},
    files="a folder holding MEMO's reference_net/, diffusion_net/, image_proj/ and audio_proj/",
    original=ORIGINAL,
    sources={"/": "a folder holding MEMO's reference_net/, diffusion_net/, image_proj/ and audio_proj/ (each config.json + "
                  "diffusion_pytorch_model.safetensors), from Hugging Face: memoavatar/memo"},
    part_files=PartFiles(
        parts=PARTS, resolve=_resolve, claims=_claims, subfolders={role: sub.rstrip("/") for role, (sub, _) in PARTS.items()}
    ),
    quoted_configs={"memo": "MEMO"},
    emotions=EMOTIONS,
    speech_emotion=SPEECH_EMOTION,
    face_front_end=FACE_FRONT_END,
    downloads=(
        *(HubFile("memoavatar/memo", f"{sub}{name}", "emo", f"memo/{sub}{name}")
          for sub, _ in PARTS.values() for name in ("config.json", "diffusion_pytorch_model.safetensors")),
        *SD_VAE,
        *WAV2VEC2_BASE,
        # the audio-emotion classifier (emotion 'auto'): MEMO's own in misc/, emotion2vec from its own repository
        *(HubFile("memoavatar/memo", f"{classifier}/{name}", "emo", f"memo/{classifier}/{name}",
                  optional="the emotion classified from the audio (emotion auto)")
          for classifier in SPEECH_EMOTION.classifier[:1] for name in ("config.json", "diffusion_pytorch_model.safetensors")),
        *(HubFile("emotion2vec/emotion2vec_plus_large", name, "emo", f"memo/{SPEECH_EMOTION.encoder[0]}/{name}",
                  optional="the emotion classified from the audio (emotion auto)")
          for name in ("config.yaml", "model.pt")),
        YUNET_FACE,
        HubFile("memoavatar/memo", "misc/vocal_separator/Kim_Vocal_2.onnx", "emo", "memo/misc/vocal_separator/Kim_Vocal_2.onnx",
                optional="vocal separation (Kim_Vocal_2): the voice, not the music, drives the mouth"),
        *face_analysis("memoavatar/memo", "misc/"),
    ),
    vocal_separator=VOCAL_SEPARATOR,
)

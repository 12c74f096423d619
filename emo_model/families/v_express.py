"""V-Express (tencent-ailab/V-Express): keypoint images, a perceiver audio projection, a reference attention of its own.

What makes it V-Express (all at commit 6814f7db; architecture notes with line numbers: docs/parity.md, V-Express):

* Files (``model_ckpts/v-express/`` as its README moves them from Hugging Face tk93/V-Express): ``denoising_unet.bin``
  (the whole 3D UNet, motion modules included, with a second attention ``attn1_5``/``norm1_5`` in every transformer
  block), ``reference_net.bin`` (a whole SD1.5 2D UNet with ``conv_out`` but no ``conv_norm_out``, which our ReferenceNet does not load), ``motion_module.bin`` (every key under
  ``motion_modules``), ``v_kps_guider.bin`` (a conv stack: ``conv_in``, ``blocks``, ``conv_out``) and
  ``audio_projection.bin`` (a perceiver: ``pos_emb``, ``latents``, ``layers``, ...), each recognised from its keys:
  the UNet with ``attn1_5`` keys is the denoising UNet, the other one the ReferenceNet.
* Architecture: the keypoint guider is our Face Locator with 3 input channels and widths (16, 32, 96, 256)
  (modules/v_kps_guider.py; inference.py:100), fed one keypoint image per frame ([0, 1] RGB); the audio projection
  is a perceiver of depth 4, 12 heads x 64, 5 queries of 768 over 10 rows of wav2vec2's last hidden state (2 per
  frame, 5 frames) (modules/audio_projection.py; inference.py:106-129, 192-201); attn2 reads those 5 tokens.
* Preset: inference.py's defaults (inference.py:61-70): 512 px, 30 fps, 25 DDIM steps, CFG 3.5 (one scale: the
  unconditional branch has no keypoints, no audio and a zero bank), context windows of 24 frames with overlap 4.
* Quirks (all at 6814f7db):

  - ``UNetConfig.reference_attention = "separate"``: modules/attention.py:298-480 (``TemporalBasicTransformerBlock``:
    attn1 plain self-attention, then norm1_5/attn1_5) with modules/mutual_self_attention.py:204-224 (read mode: attn1_5's
    keys/values are the bank only).
  - ``InferenceQuirks.reference_attention_scale = 0.95``: inference.py:69 ``--reference_attention_weight``,
    mutual_self_attention.py:221-222.
  - ``InferenceQuirks.audio_attention_scale = 3.0``: inference.py:70 ``--audio_attention_weight``,
    mutual_self_attention.py:241-242.
  - ``InferenceQuirks.unconditional_reference = "zeros"``: mutual_self_attention.py:357-359 (``update``: the
    unconditional half of the bank is ``torch.zeros_like``), so attn1_5 gives its output bias there.
  - ``ReferenceNetConfig.bank_after_self_attention``: mutual_self_attention.py:145-165 (write mode banks
    ``norm2(x)`` after the self-attention, not ``norm1(x)``).
  - ``ReferenceNetConfig.cross_attention_zero_token``: pipelines/v_express_pipeline.py:502-508 (the ReferenceNet runs
    at timestep 0 with ``encoder_hidden_states = zeros(1, 1, 768)``).
  - ``AudioFeatureConfig(hidden_states="last", samples_per_frame=2)``: v_express_pipeline.py:374-401 (``last_hidden_state``
    of the whole audio, linear interpolation to 2 x frames, 2 x 2 rows of zeros on each side, 10 rows per frame).
  - ``context_schedule = "uniform-open"``: v_express_pipeline.py:486-496 calls pipelines/context.py ``uniform()`` with
    ``closed_loop=False`` (no window starting in the last ``overlap`` frames; indices past the end reflected), no shift
    per step, every window's guided prediction divided by the frame's window count (:552-560).
  - ``SchedulerConfig(beta_schedule="scaled_linear", set_alpha_to_one=True)``: inference_v2.yaml:24-33 passed as
    ``DDIMScheduler(**kwargs)`` (inference.py:132-136), so diffusers' default ``set_alpha_to_one`` applies.
  - ``seed_stream = "single"``: inference.py:216 ``torch.manual_seed(seed)``; one randn_tensor for the whole video
    (v_express_pipeline.py:514-523), after ``seed_draws_per_audio_layer = 1``: transformers 4.41.1's wav2vec2 (its
    requirements.txt) draws ``torch.rand([])`` per encoder layer (LayerDrop, eval mode too) from that generator first.

  - ``InferenceQuirks.frames_whole_windows``: inference.py:255-264 (``int(duration * fps)`` frames cut to whole
    context windows by pipelines/context.py ``compute_num_context`` / ``compute_context_indices``, the fps stretched to
    ``video_length / duration``: 10 s at 30 fps -> 284 frames at 28.4 fps).
  - ``InferenceQuirks.output_median_filter = 3``: pipelines/utils.py:46-70 (``save_video`` runs ``median_filter_3d``
    with kernel 3 over (time, y, x), reflect padding, on every frame it writes).

* The user path (all at 6814f7db):

  - The reference picture: inference.py:235-236 ``Image.open(...).convert('RGB').resize((H, W))``: no crop, the whole
    picture (:data:`FACE_FRONT_END`: a square picture is used whole; PIL bilinear here, bicubic there: not mirrored).
  - The keypoints (:data:`KEYPOINT_GUIDE`): the reference's from insightface (buffalo_l, ``det_size`` the model size,
    ``app.get(img)[0].kps[:3]``: inference.py:228-240) where the user has it, else our YuNet / face-box keypoints
    (emo_model/face/keypoint_detection.py); the driving ones from a video (scripts/extract_kps_sequence_and_audio.py:
    insightface on every frame), ComfyUI's POSE_KEYPOINT or the original's ``kps.pth``, cut and stretched to the frame
    count (inference.py:266-277), retargeted by ``--retarget_strategy`` (inference.py:41, 279-289, default
    ``fix_face``; pipelines/utils.py:145-182), drawn as datasets/utils.py:15-38 draws them.

  Not mirrored: a frame twice in one reflected window (counted once, stepped twice: v_express_pipeline.py:498-572;
  the whole-window frame count never makes one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from ..configs import (
    AudioFeatureConfig,
    AudioProjConfig,
    BackboneConfig,
    EMOConfig,
    FaceLocatorConfig,
    InferenceQuirks,
    PresetConfig,
    ReferenceNetConfig,
    SchedulerConfig,
    TemporalConfig,
    sd15_unet,
    tiny_unet,
)
from ..face.front_ends import FaceFrontEnd
from ..face.keypoint_images import KeypointGuide
from .base import SD_VAE, WAV2VEC2_BASE, Family, HubFile, OriginalCode, ParityHarness, PartFiles

COMMIT = "6814f7db362dc9e26644162034b4d28c5277651a"
ORIGINAL_WEIGHTS = "tk93/V-Express"  # the Hugging Face repository of its weights (README.md:44-46)

# role -> (canonical file name, prefix of its keys in EMOModel)
PARTS = {
    "denoising_unet": ("denoising_unet.bin", "denoising_unet."),
    "reference_unet": ("reference_net.bin", "reference_unet."),
    "motion_module": ("motion_module.bin", "denoising_unet."),
    "face_locator": ("v_kps_guider.bin", "face_locator."),
    "audio_proj": ("audio_projection.bin", "audioproj."),
}

ORIGINAL = OriginalCode(
    repo="tencent-ailab/V-Express",
    commit=COMMIT,
    weights=f"huggingface.co/{ORIGINAL_WEIGHTS}: " + ", ".join(name for name, _ in PARTS.values()),
)


FACE_FRONT_END = FaceFrontEnd(label="V-Express's", mirrors="inference.py:235-236 Image.open(...).resize((H, W)) (6814f7db)",
                              squash_resize=True)
KEYPOINT_GUIDE = KeypointGuide(
    mirrors="inference.py:228-240, 266-289 and pipelines/utils.py:145-182 (6814f7db)",
    default_mode="fix_face",  # inference.py:41 --retarget_strategy default
    driven_mode="offset_retarget",  # ours: with a driving video and no mode chosen (fix_face would leave it unused)
)


def _preset(**changes) -> PresetConfig:
    preset = PresetConfig(
        fps=30.0,
        resolution=512,
        strategy="context_windows",
        frames_per_clip=24,
        motion_frames=0,
        context_overlap=4,
        steps=25,
        cfg=3.5,
        audio_cfg=3.5,
        scheduler=SchedulerConfig(beta_schedule="scaled_linear", set_alpha_to_one=True),
        quirks=InferenceQuirks(
            audio_attention_scale=3.0,
            reference_attention_scale=0.95,
            unconditional_reference="zeros",
            context_schedule="uniform-open",
            seed_stream="single",
            seed_draws_per_audio_layer=1,
            audio_single_pass=True,
            frames_whole_windows=True,
            output_median_filter=3,
        ),
    )
    return dataclasses.replace(preset, **changes)


def _reference_net(unet) -> ReferenceNetConfig:
    return ReferenceNetConfig(unet=unet, output_head=False, bank_after_self_attention=True, cross_attention_zero_token=True)


def v_express_config() -> EMOConfig:
    return EMOConfig(
        name="v-express",
        family="vexpress",
        reference_net=_reference_net(sd15_unet(768)),
        backbone=BackboneConfig(
            unet=dataclasses.replace(sd15_unet(768), reference_attention="separate"),
            cross_attention_input="audio",
            temporal=TemporalConfig(heads=8, max_len=32),
            speed_layers=False,
        ),
        face_locator=FaceLocatorConfig(in_channels=3, block_out_channels=(16, 32, 96, 256), out_channels=320, reads="pose_frames"),
        audio_proj=AudioProjConfig(
            kind="perceiver", seq_len=5, blocks=2, channels=768, intermediate_dim=768, output_dim=768, context_tokens=5,
            depth=4, heads=12, head_dim=64, ff_mult=4,
        ),
        speed=None,
        audio=AudioFeatureConfig(kind="wav2vec2", layers=12, dim=768, margin=2, interpolate_conv=False,
                                 hidden_states="last", samples_per_frame=2),
        preset=_preset(),
    ).validate()


def tiny_v_express_config() -> EMOConfig:
    """V-Express's layout at a few channels (32/64/64/64 UNets, a tiny wav2vec2 of 2 layers x 32, a perceiver of 2 heads).

    Built so that V-Express's own classes can make the same tensors (tools/parity/v_express_original.py): 32 groups in
    the motion modules' GroupNorm (fixed in its ``TemporalTransformer3DModel``)."""
    return EMOConfig(
        name="tiny-v-express",
        family="vexpress",
        reference_net=_reference_net(tiny_unet(32)),
        backbone=BackboneConfig(
            unet=dataclasses.replace(tiny_unet(32), reference_attention="separate"),
            cross_attention_input="audio",
            temporal=TemporalConfig(heads=2, norm_num_groups=32),
            speed_layers=False,
        ),
        face_locator=FaceLocatorConfig(in_channels=3, block_out_channels=(8, 8, 16, 16), out_channels=32, reads="pose_frames"),
        audio_proj=AudioProjConfig(
            kind="perceiver", seq_len=5, blocks=2, channels=32, intermediate_dim=32, output_dim=32, context_tokens=5,
            depth=2, heads=2, head_dim=16, ff_mult=4,
        ),
        speed=None,
        audio=AudioFeatureConfig(kind="wav2vec2", layers=2, dim=32, margin=2, interpolate_conv=False,
                                 hidden_states="last", samples_per_frame=2),
        preset=_preset(resolution=64, frames_per_clip=8, context_overlap=2, steps=4),
    ).validate()


def _claims(parts: Mapping[str, list]) -> bool:
    """Its files: a perceiver audio projection, or a UNet with a second attention (``attn1_5``) in its blocks."""
    unets = parts.get("denoising_unet", [])
    if not set(parts) <= {"denoising_unet", "reference_unet", "motion_module", "face_locator", "audio_proj"}:
        return False
    perceiver = any("latents" in f.tensors for f in parts.get("audio_proj", []))
    return perceiver or any(".attn1_5." in key for f in unets for key in f.tensors)


def _resolve(family: Family, parts: dict[str, list], variant: str, ignored: dict[Path, str], W):
    """``W``: the weights toolkit (emo_model.weights.checkpoints._toolkit), handed in by the caller (no import cycle)."""
    if variant != "standard":
        raise W.WeightsError(f"V-Express has no variant {variant!r}; its files have one preset (variant standard)")
    parts = {role: list(files) for role, files in parts.items()}
    # a whole SD-shaped 2D UNet with its output head reads as a denoising UNet: the one without attn1_5 is the ReferenceNet
    unets = parts.pop("denoising_unet", []) + parts.pop("reference_unet", [])
    denoising = [f for f in unets if any(".attn1_5." in k for k in f.tensors)]
    reference = [f for f in unets if f not in denoising]
    for role, files in (("denoising_unet", denoising), ("reference_unet", reference)):
        if files:
            parts[role] = files
    chosen: dict = {}
    for role, files in parts.items():
        if len(files) > 1:
            raise W.WeightsError(f"several {PARTS[role][0]} files for one model: {', '.join(f.name for f in files)}; keep one")
        chosen[role] = files[0]
    sources: dict = {}
    for role, file in chosen.items():
        prefix = PARTS[role][1]
        for key in file.tensors:
            # denoising_unet.bin holds the motion modules too: motion_module.bin's copies are the ones loaded
            if role == "denoising_unet" and "motion_module" in chosen and ".motion_modules." in key:
                continue
            # the ReferenceNet's conv_out (its class drops conv_norm_out: modules/unet_2d_condition.py:650) is never used
            if role == "reference_unet" and key.startswith("conv_out."):
                continue
            if prefix + key in sources:
                raise W.WeightsError(f"{file.name} and {sources[prefix + key][0].name} both hold {prefix + key}")
            sources[prefix + key] = (file, key)
    found = {key: tuple(file.tensors[name].shape) for key, (file, name) in sources.items()}
    name, report = W.closest_config(found)
    W.require_known_layout(list(chosen.values()), name, report)
    config = W.get_config(name)
    has_motion = "denoising_unet" in chosen and any(".motion_modules." in k for k in chosen["denoising_unet"].tensors)
    missing = [r for r in PARTS if r not in chosen and not (r == "motion_module" and has_motion)]
    return W.Checkpoint(family.name, config, chosen, sources, report, missing_parts=missing, ignored=ignored, variant="standard")


def _parity_ours(work, fixture, meta, spec) -> dict:
    """``bench --against-original vexpress``, our side: the files ``tools/parity/v_express_original.py --full`` wrote
    (the part files, a tiny VAE, a wav2vec2 of wav2vec2-base's structure), its waveform and its keypoints drawn by us."""
    import numpy as np

    from ..face.keypoint_images import keypoint_images

    size = meta["settings"]["size"]
    return {
        "checkpoint": fixture,
        "vae": fixture / "vae",
        "encoder": fixture / "wav2vec2",
        "wave": np.load(fixture / "speech.npy", allow_pickle=False),
        "pose_frames": keypoint_images(size, size, np.load(fixture / "kps.npy", allow_pickle=False)),
        "overrides": {"frames_per_clip": spec["context"], "context_overlap": spec["overlap"], "cfg": 3.5, "audio_cfg": 3.5},
    }


PARITY = ParityHarness(
    script="v_express_original.py",
    src_flag="--vx-src",
    settings={"frames": 20, "context": 8, "overlap": 2},
    # 0.8 s at 25 fps: 20 frames, 3 whole windows of 8 / overlap 2 on both sides; inference.py's CFG 3.5
    extra_args=lambda work: ["--fps", "25", "--seconds", "0.8", "--cfg", "3.5"],
    weights_ready=lambda work: (work / "fixture" / "meta.json").is_file() and (work / "fixture" / "denoising_unet.bin").is_file(),
    ours=_parity_ours,
    # the pipeline call encodes the audio (wav2vec2 + projection, v_express_pipeline.py:472-478): timed on ours too
    audio_timed=True,
)


FAMILY = Family(
    name="vexpress",
    label="V-Express",
    configs={"v-express": v_express_config, "tiny-v-express": tiny_v_express_config},
    files="a folder holding V-Express's " + ", ".join(name for name, _ in list(PARTS.values())[:-1]) + f" and {PARTS['audio_proj'][0]}",
    original=ORIGINAL,
    sources={"/": "a folder holding V-Express's denoising_unet.bin, reference_net.bin, motion_module.bin, v_kps_guider.bin and "
                  f"audio_projection.bin, from Hugging Face: {ORIGINAL_WEIGHTS}"},
    part_files=PartFiles(parts=PARTS, resolve=_resolve, claims=_claims),
    # tk93/V-Express: the five .bin files at the root (README.md:44-46; the repository also carries model_ckpts/ with
    # the SD VAE, wav2vec2-base-960h and insightface's buffalo_l, which come here from their own repositories)
    downloads=(
        *(HubFile(ORIGINAL_WEIGHTS, name, "emo", f"v-express/{name}") for name, _ in PARTS.values()),
        *SD_VAE,
        *WAV2VEC2_BASE,
    ),
    quoted_configs={"v-express": "V-Express"},
    parity=PARITY,
    face_front_end=FACE_FRONT_END,
    keypoint_guide=KEYPOINT_GUIDE,
)

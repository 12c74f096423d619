"""EchoMimic v2 (antgroup/echomimic_v2): EchoMimic v1's network with a 3-channel pose guider, half-body at 768 px.

What makes it EchoMimic v2 (every reference at commit a312dec0; the reading in docs/parity.md):

* Files (``pretrained_weights/``, Hugging Face BadToBest/EchoMimicV2): ``denoising_unet.pth``, ``reference_unet.pth``,
  ``motion_module.pth`` (the same keys as EchoMimic v1's) and ``pose_encoder.pth`` (v1's face-locator layout with
  3 input channels: infer.py:117 ``PoseEncoder(320, conditioning_channels=3, block_out_channels=(16, 32, 96, 256))``).
  The part is recognised from its keys (a small conv stack) and the family from its 3 input channels, or from a folder
  named ``echomimic_v2`` / ``echomimicv2`` when the pose encoder is absent. The distilled ``*_acc.pth`` files
  (configs/prompts/infer_acc.yaml) have the same keys; ``variant="acc"`` picks them (6 steps, cfg 1.0).
* Architecture: src/models/unet_3d_emo.py is v1's unet_3d_echo.py renamed: attn2 reads whisper-tiny tokens of width
  384, a ReferenceNet without cross-attention; the pose features are added after ``conv_in`` (unet_3d_emo.py:484-486),
  where v1's face-locator features go. The pose guider reads one drawn pose image per frame
  (``FaceLocatorConfig.reads = "pose_frames"``), indexed per context window (pipeline_echomimicv2.py:573).
* Preset: infer.py's defaults: 768 x 768, 24 fps, context windows of 12 frames with overlap 3, 30 DDIM steps, cfg 2.5
  (acc: infer_acc.py, 6 steps, cfg 1.0). No face crop: the whole picture resized (infer.py:178).
* Quirks (measured in docs/parity.md):

  - ``audio_attention_scale = 3.0``: src/models/mutual_self_attention.py:104 ``audio_feature_ratio``.
  - ``context_schedule = "uniform"``: src/pipelines/context.py ``uniform()`` called once at step 0
    (pipeline_echomimicv2.py:507-516, closed loop: windows wrap), predictions averaged (``/ counter``).
  - ``context_shift_per_step = 3``: pipeline_echomimicv2.py:561 ``(c + t_i * 3) % video_length`` (v1: 2).
  - ``initial_noise_clamp = 1.5``: pipeline_echomimicv2.py:246 ``prepare_latents_smooth``.
  - ``seed_stream = "single"``: infer.py:142 ``torch.manual_seed(seed)``, one ``randn_tensor`` for the whole video.
  - ``SchedulerConfig.set_alpha_to_one = True``: infer.py:128 ``DDIMScheduler(**noise_scheduler_kwargs)`` without it.
  - Guidance: the unconditional branch has zero audio AND zero pose features (pipeline_echomimicv2.py:572-574).
  - Audio: src/models/whisper/ is v1's, byte for byte (whisper's 30 s windows, centre ``int(i * 50 / fps)``,
    window -4..+5, clamped); ``audio_loader = "ffmpeg-s16-mono"`` (whisper/audio.py ``load_audio``).
  - Not mirrored (deliberate): infer.py:181 cuts the video to the number of pose files; ours mirrors a shorter pose
    sequence back and forth (emo_model/sampling/pose_sequence.py).
  - The _acc pipeline (pipeline_echomimicv2_acc.py, infer_acc.py's 6 steps at cfg 1.0): its pseudo-velocity (:481-484,
    src/pipelines/step_func.py:86-112: x0 = a_t x - b_t v, then (a_t x - x0) / b_t) is the velocity v again, up to
    rounding below the original's thread floor: nothing to mirror. It writes the bank with the real CFG flag (:434) and
    divides by the window count without CFG (:495-496), as ours always does (tests/test_parity_echomimic_v2_acc.py).
  - The standard pipeline at cfg <= 1 writes the bank "with CFG" anyway (pipeline_echomimicv2.py:543) and then stops in
    its reference attention (a bank of batch 2, latents of batch 1: RuntimeError), so its missing division by the
    window count without CFG (:595-599) is never reached; ours computes the _acc pipeline's way there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from ..configs import (
    AudioFeatureConfig,
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
from .base import SD_VAE, Family, HubFile, OriginalCode, ParityHarness, PartFiles
from .echomimic import ACC, VARIANT_ROLES, WITHIN, _is_acc, _name_tags, _pick_variant

ORIGINAL = OriginalCode(
    repo="antgroup/echomimic_v2",
    commit="a312dec05ec7f9b3e0e2c2802e4a1a5d3788cfb3",
    weights="huggingface.co/BadToBest/EchoMimicV2: denoising_unet.pth, reference_unet.pth, motion_module.pth, pose_encoder.pth "
            "(+ denoising_unet_acc.pth, motion_module_acc.pth)",
)

ORIGINAL_WEIGHTS = "BadToBest/EchoMimicV2"

# role -> (canonical file name, prefix of its keys in EMOModel); the pose encoder is the face-locator part
PARTS = {
    "denoising_unet": ("denoising_unet.pth", "denoising_unet."),
    "motion_module": ("motion_module.pth", "denoising_unet."),
    "reference_unet": ("reference_unet.pth", "reference_unet."),
    "face_locator": ("pose_encoder.pth", "face_locator."),
}
FOLDER_NAMES = ("echomimic_v2", "echomimicv2", "echomimic-v2")
POSE_CHANNELS = 3

# infer.py:178: no face detection, no crop: the whole picture resized to -W x -H (a half-body picture). A square picture
# is framed so (PIL bilinear here; the original's Image.resize default is bicubic: not mirrored); another shape gets our
# face crop, so give EchoMimic v2 a square half-body picture.
FACE_FRONT_END = FaceFrontEnd(label="EchoMimic v2's", mirrors="infer.py:178 Image.open(...).resize((W, H)) (a312dec0)",
                              squash_resize=True)

QUIRKS = InferenceQuirks(
    audio_attention_scale=3.0, context_schedule="uniform", context_shift_per_step=3, initial_noise_clamp=1.5,
    audio_loader="ffmpeg-s16-mono", seed_stream="single",
)


def echomimic_v2_config(acc: bool = False) -> EMOConfig:
    return EMOConfig(
        name="echomimic-v2-acc" if acc else "echomimic-v2",
        family="echomimic-v2",
        reference_net=ReferenceNetConfig(unet=sd15_unet(None)),
        backbone=BackboneConfig(unet=sd15_unet(384), cross_attention_input="audio", speed_layers=False),
        face_locator=FaceLocatorConfig(in_channels=POSE_CHANNELS, block_out_channels=(16, 32, 96, 256), reads="pose_frames"),
        audio_proj=None,
        speed=None,
        audio=AudioFeatureConfig(kind="whisper", layers=5, dim=384, margin=2, whisper_window=(-4, 5)),
        preset=PresetConfig(
            fps=24.0,
            resolution=768,
            strategy="context_windows",
            frames_per_clip=12,
            motion_frames=0,
            context_overlap=3,
            steps=6 if acc else 30,
            cfg=1.0 if acc else 2.5,
            audio_cfg=1.0 if acc else 2.5,
            scheduler=SchedulerConfig(set_alpha_to_one=True),
            quirks=QUIRKS,
        ),
    ).validate()


def tiny_echomimic_v2_config() -> EMOConfig:
    """EchoMimic v2's layout at a few channels, so that its own classes make the same tensors
    (tools/parity/echomimic_v2_original.py): whisper width 384, 32 groups in the motion modules' GroupNorm."""
    return EMOConfig(
        name="tiny-echomimic-v2",
        family="echomimic-v2",
        reference_net=ReferenceNetConfig(unet=tiny_unet(None)),
        backbone=BackboneConfig(
            unet=tiny_unet(384), cross_attention_input="audio", temporal=TemporalConfig(heads=2, norm_num_groups=32), speed_layers=False
        ),
        face_locator=FaceLocatorConfig(in_channels=POSE_CHANNELS, block_out_channels=(8, 8, 16, 16), out_channels=32, reads="pose_frames"),
        audio_proj=None,
        speed=None,
        audio=AudioFeatureConfig(kind="whisper", layers=3, dim=384, margin=2, whisper_window=(-4, 5)),
        preset=dataclasses.replace(echomimic_v2_config().preset, resolution=64, frames_per_clip=8, context_overlap=2, steps=4),
    ).validate()


def _with_acc_preset(config: EMOConfig) -> EMOConfig:
    acc = echomimic_v2_config(acc=True).preset
    preset = dataclasses.replace(config.preset, steps=acc.steps, cfg=acc.cfg, audio_cfg=acc.audio_cfg)
    return config.replace(name=f"{config.name}-{ACC}", preset=preset)


def _pose_channels(file) -> int | None:
    weight = file.tensors.get("conv_in.weight")
    return None if weight is None or len(weight.shape) != 4 else int(weight.shape[1])


def _v1_pose_file(file) -> bool:
    """EchoMimic v1's pose-driven files (``*_pose.pth``, ``*_pose_acc.pth``) stay v1's (which ignores them)."""
    return "pose" in _name_tags(file.path) and "encoder" not in _name_tags(file.path)


def _claims(parts: Mapping[str, list]) -> bool:
    if not set(parts) <= set(PARTS):
        return False
    files = [f for candidates in parts.values() for f in candidates]
    if any(_v1_pose_file(f) for f in files):
        return False
    locators = parts.get("face_locator", [])
    if locators:
        return all(_pose_channels(f) == POSE_CHANNELS for f in locators)
    return any(Path(f.path).resolve().parent.name.lower() in FOLDER_NAMES for f in files)


def _check_layout(family: Family, name: str, report, chosen: Mapping, W) -> None:
    if W.get_config(name).family != family.name or any(".attn2." in key for key in report.mismatched):
        raise W.WeightsError(f"{', '.join(f.name for f in chosen.values())}: not EchoMimic v2's layout (its UNet's attn2 "
                             "takes whisper tokens of width 384, its pose encoder 3 channels)")


def _resolve(family: Family, parts: dict[str, list], variant: str, ignored: dict[Path, str], W):
    """``W``: the weights toolkit (emo_model.weights.checkpoints._toolkit), handed in by the caller (no import cycle)."""
    chosen = {role: _pick_variant(role, files, variant, ignored, W) for role, files in parts.items()}
    return W.resolve_parts(family, chosen, ignored, tag=ACC, is_tagged=_is_acc, tagged_roles=VARIANT_ROLES,
                           with_tag=_with_acc_preset, within=WITHIN,
                           check=lambda name, report: _check_layout(family, name, report, chosen, W))


def _parity_ours(work, fixture, meta, spec) -> dict:
    """``bench --against-original``: our side on the files ``echomimic_v2_original.py --full`` wrote, at its recipe (CFG
    as the harness ran it), with the original's own drawing of the harness's pose sequence as the pose images."""
    from safetensors.torch import load_file

    stages = load_file(fixture / "stages.safetensors")
    poses = stages["input.poses"][0].transpose(0, 1).float() / 255.0  # [F, 3, H, W]
    s = meta["settings"]
    cfg = s["guidance_scale"]
    # the harness's waveform, whole frames only: the original cuts the video to its frame count (pipeline_echomimicv2.py
    # :474), ours makes a frame of any part of one
    wave = stages["input.waveform"][: s["frames"] * s["sample_rate"] // s["fps"]].numpy()
    return {
        "checkpoint": fixture / "checkpoint",
        "vae": fixture / "vae",
        "encoder": fixture / "whisper_tiny_random.pt",
        "wave": wave,
        "overrides": {"frames_per_clip": spec["context"], "context_overlap": spec["overlap"], "cfg": cfg, "audio_cfg": cfg},
        "pose_frames": poses,
    }


FAMILY = Family(
    name="echomimic-v2",
    label="EchoMimic v2",
    configs={
        "echomimic-v2": lambda: echomimic_v2_config(acc=False),
        "echomimic-v2-acc": lambda: echomimic_v2_config(acc=True),
        "tiny-echomimic-v2": tiny_echomimic_v2_config,
    },
    files="a folder holding EchoMimic v2's denoising_unet.pth, reference_unet.pth, motion_module.pth and pose_encoder.pth",
    original=ORIGINAL,
    sources={"/": "a folder holding EchoMimic v2's denoising_unet.pth, reference_unet.pth, motion_module.pth and "
                  "pose_encoder.pth, from Hugging Face: BadToBest/EchoMimicV2"},
    folder_names=FOLDER_NAMES,
    part_files=PartFiles(parts=PARTS, resolve=_resolve, claims=_claims),
    variants={ACC: "EchoMimic v2's distilled *_acc.pth files (6 steps, no CFG)"},
    parity=ParityHarness(
        script="echomimic_v2_original.py",
        src_flag="--echo-src",
        settings={"frames": 16, "context": 6, "overlap": 2},  # the harness's defaults (CFG 4.5): 4 windows, one wrapping
        extra_args=lambda work: [],  # with --full the .pth files go to fixture/checkpoint
        weights_ready=lambda work: (work / "fixture" / "meta.json").is_file() and (work / "fixture" / "checkpoint").is_dir(),
        ours=_parity_ours,
        # the pipeline call computes the whisper features inside (timed there), so they are timed on ours too
        audio_timed=True,
    ),
    # BadToBest/EchoMimicV2 at the root holds the four parts and the _acc pair; whisper-tiny is not in it (the README
    # points at OpenAI's tiny.pt): the same file as EchoMimic v1's audio_processor/whisper_tiny.pt
    downloads=(
        *(HubFile(ORIGINAL_WEIGHTS, name, "emo", f"echomimic_v2/{name}") for name, _ in PARTS.values()),
        *(HubFile(ORIGINAL_WEIGHTS, name, "emo", f"echomimic_v2/{name}", optional="the distilled 'acc' variant (variant acc)")
          for name in ("denoising_unet_acc.pth", "motion_module_acc.pth")),
        *SD_VAE,
        HubFile("BadToBest/EchoMimic", "audio_processor/whisper_tiny.pt", "audio_encoders", "whisper_tiny.pt"),
    ),
    quoted_configs={"echomimic-v2": "EchoMimic v2", "echomimic-v2-acc": "acc"},
    face_front_end=FACE_FRONT_END,
)

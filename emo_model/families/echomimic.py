"""EchoMimic v1 (antgroup/echomimic): four part files, whisper-tiny audio tokens straight into attn2.

What makes it EchoMimic v1:

* Files (``pretrained_weights/``): ``denoising_unet.pth`` (spatial layers, with the output head ``conv_out``),
  ``motion_module.pth`` (every key under ``motion_modules``), ``reference_unet.pth`` (a UNet without
  ``conv_out``) and ``face_locator.pth`` (a small conv stack), each recognised from its keys, never its name.
  The distilled ``*_acc.pth`` files have the same keys; only their names tell them apart, so the variant is an
  explicit choice (``variant="acc"``; the default ``"standard"`` falls back to ``_acc`` files when they are
  the only ones) and selects the accelerated preset (6 steps, cfg 1.0). ``*_pose*`` files (pose-driven
  EchoMimic) are ignored.
* Architecture: attn2 of the backbone reads whisper-tiny tokens of width 384 (no projection), a ReferenceNet
  without cross-attention, a 1-channel face locator (16, 32, 96, 256), no identity tokens, no speed layers.
* Preset: ``infer_audio2vid.py``'s defaults: 24 fps, context windows of 12 frames with overlap 3, 30 DDIM
  steps, CFG 2.5 (acc: 6 steps, CFG 1.0); the face mask is the face box + 10 % per side (1.2x, its
  ``--facemusk_dilation_ratio 0.1``) when our detector stands in for MTCNN.
* Quirks (all at commit a53e9704; measured effects in docs/parity.md):

  - ``audio_attention_scale = 3.0``: src/models/mutual_self_attention.py
    (``hacked_basic_transformer_inner_forward``, ``audio_feature_ratio``): the read-mode hook scales attn2 in
    every denoising call.
  - ``context_schedule = "uniform"``: src/pipelines/context.py ``uniform()`` as pipeline_echo_mimic.py calls
    it (step 0, stride 1, closed loop), predictions averaged (``noise_pred / counter``).
  - ``context_shift_per_step = 2``: src/pipelines/pipeline_echo_mimic.py ``__call__``:
    ``(c + t_i * 2) % video_length``.
  - ``initial_noise_clamp = 1.5``: src/pipelines/pipeline_echo_mimic.py ``prepare_latents``:
    ``torch.clamp(latents, -1.5, 1.5)``.
  - ``SchedulerConfig.set_alpha_to_one = True``: infer_audio2vid.py builds
    ``DDIMScheduler(**noise_scheduler_kwargs)`` without it, so diffusers' default applies.
  - Audio: whisper's 30 s windows, centre ``int(i * 50 / fps)``, window centre-4 .. centre+5, clamped,
    flattened to tokens (src/models/whisper/audio2feature.py ``get_sliced_feature``); short windows padded with
    zeros in log-mel space.
  - ``audio_loader = "ffmpeg-s16-mono"``: src/models/whisper/whisper/audio.py ``load_audio`` (the ffmpeg program:
    ``-f s16le -ac 1 -ar 16000``; reproduced with PyAV, emo_model/audio/decode.py).
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
from ..face.box_crop import BoxCropRecipe
from ..face.front_ends import FaceFrontEnd
from .base import SD_VAE, YUNET_FACE, Family, HubFile, OriginalCode, ParityHarness, PartFiles

ORIGINAL = OriginalCode(
    repo="antgroup/echomimic",
    commit="a53e97040398ddae5d26df0d2054a8f1e9f9df6d",
    weights="huggingface.co/BadToBest/EchoMimic: denoising_unet.pth, motion_module.pth, reference_unet.pth, face_locator.pth",
)

ORIGINAL_WEIGHTS = "BadToBest/EchoMimic"  # the Hugging Face repository of its weights

# role -> (canonical file name, prefix of its keys in EMOModel)
PARTS = {
    "denoising_unet": ("denoising_unet.pth", "denoising_unet."),
    "motion_module": ("motion_module.pth", "denoising_unet."),
    "reference_unet": ("reference_unet.pth", "reference_unet."),
    "face_locator": ("face_locator.pth", "face_locator."),
}
ACC = "acc"

# The face preprocessing of infer_audio2vid.py main(): facenet_pytorch MTCNN (built as there) on the picture read by
# cv2.imread (BGR), select_face (probability > 0.8, the largest), the mask grown by --facemusk_dilation_ratio 0.1 and
# the crop by --facecrop_dilation_ratio 0.5, src/utils/util.py crop_and_pad, cv2.resize to -W x -H.
FACE_FRONT_END = FaceFrontEnd(
    label="EchoMimic's",
    mirrors="infer_audio2vid.py main() + select_face, src/utils/util.py crop_and_pad (a53e9704)",
    box_crop=BoxCropRecipe(min_prob=0.8, mask_dilation=0.1, crop_dilation=0.5, mirrors="infer_audio2vid.py (a53e9704)"),
    detector_options=(("image_size", 320), ("margin", 0), ("min_face_size", 20), ("thresholds", [0.6, 0.7, 0.7]),
                      ("factor", 0.709), ("post_process", True)),
)


def echomimic_v1_config(acc: bool = False) -> EMOConfig:
    return EMOConfig(
        name="echomimic-v1-acc" if acc else "echomimic-v1",
        family="echomimic-v1",
        reference_net=ReferenceNetConfig(unet=sd15_unet(None)),
        backbone=BackboneConfig(unet=sd15_unet(384), cross_attention_input="audio", speed_layers=False),
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
            # infer_audio2vid.py --facemusk_dilation_ratio 0.1: the MTCNN box + 10 % per side, so 1.2x (for our
            # detector's box when facenet_pytorch is not installed; FACE_FRONT_END's box crop applies it itself)
            face_expand_ratio=1 + 2 * FACE_FRONT_END.box_crop.mask_dilation,
            scheduler=SchedulerConfig(set_alpha_to_one=True),
            quirks=InferenceQuirks(
                audio_attention_scale=3.0, context_schedule="uniform", context_shift_per_step=2, initial_noise_clamp=1.5,
                # src/models/whisper/whisper/audio.py load_audio: the ffmpeg program to s16le mono 16 kHz
                audio_loader="ffmpeg-s16-mono",
                # infer_audio2vid.py:188 generator = torch.manual_seed(args.seed); src/pipelines/pipeline_echo_mimic.py
                # prepare_latents: one randn_tensor([1, 4, frames, h, w], generator) for the whole video
                seed_stream="single",
            ),
        ),
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
        reference_net=ReferenceNetConfig(unet=tiny_unet(None)),
        backbone=BackboneConfig(
            unet=tiny_unet(384), cross_attention_input="audio", temporal=TemporalConfig(heads=2, norm_num_groups=32), speed_layers=False
        ),
        face_locator=FaceLocatorConfig(in_channels=1, block_out_channels=(8, 8, 16, 16), out_channels=32),
        audio_proj=None,
        speed=None,
        audio=audio,
        preset=dataclasses.replace(echomimic_v1_config().preset, resolution=64, frames_per_clip=8, context_overlap=2, steps=4),
    ).validate()


def _with_acc_preset(config: EMOConfig) -> EMOConfig:
    """The distilled weights: the same model sampled with the accelerated preset (6 steps, cfg 1.0)."""
    acc = echomimic_v1_config(acc=True).preset
    preset = dataclasses.replace(config.preset, steps=acc.steps, cfg=acc.cfg, audio_cfg=acc.audio_cfg)
    return config.replace(name=f"{config.name}-{ACC}", preset=preset)


def _name_tags(path: Path) -> set[str]:
    return set(path.stem.lower().split("_"))


def _claims(parts: Mapping[str, list]) -> bool:
    return set(parts) <= set(PARTS)


# The variant's files: the same keys, told apart by a name tag (``denoising_unet_acc.pth``, ``motion_module_acc.pth``);
# the denoising UNet and its motion modules must come from one variant; a denoising UNet file may hold its motion modules.
VARIANT_ROLES = ("denoising_unet", "motion_module")
WITHIN = {"motion_module": ("denoising_unet", ".motion_modules.")}


def _is_acc(file) -> bool:
    return ACC in _name_tags(file.path)


def _pick_variant(role: str, files: list, variant: str, ignored: dict[Path, str], W):
    return W.pick_variant(role, files, variant, ignored, tag=ACC, is_tagged=_is_acc, required_roles=VARIANT_ROLES,
                          label="EchoMimic")


def _resolve(family: Family, parts: dict[str, list], variant: str, ignored: dict[Path, str], W):
    """``W``: the weights toolkit (emo_model.weights.checkpoints._toolkit), handed in by the caller (no import cycle)."""
    chosen: dict = {}
    for role, candidates in parts.items():
        usable = []
        for file in candidates:
            if "pose" in _name_tags(file.path):
                ignored[file.path] = "EchoMimic pose-driven variant (not supported)"
            else:
                usable.append(file)
        if usable:
            chosen[role] = _pick_variant(role, usable, variant, ignored, W)
    if not chosen:
        raise W.WeightsError(f"{', '.join(p.name for p in ignored)}: EchoMimic's pose-driven files are not supported")
    return W.resolve_parts(family, chosen, ignored, tag=ACC, is_tagged=_is_acc, tagged_roles=VARIANT_ROLES,
                           with_tag=_with_acc_preset, within=WITHIN,
                           check=lambda name, report: _require_audio_unet(chosen, name, report, W))


def _require_audio_unet(chosen: Mapping, name: str, report, W) -> None:
    """A UNet file is an EchoMimic denoising UNet only if its cross-attention takes EchoMimic's audio tokens.

    A plain diffusers UNet (Stable Diffusion 1.5: text cross-attention) has the same key names.
    """
    unet = chosen.get("denoising_unet")
    if unet is None:
        return
    if W.get_config(name).family == FAMILY.name and not any(".attn2." in key for key in report.mismatched):
        return
    raise W.WeightsError(
        f"{unet.name}: a diffusers UNet whose cross-attention (attn2) does not take EchoMimic's audio tokens, so not "
        "a part of a supported family; it looks like a Stable Diffusion 1.5 UNet, which only initialises training "
        "(load_sd15_unet_weights)"
    )


def _parity_ours(work, fixture, meta, spec) -> dict:
    return {
        "checkpoint": fixture / "checkpoint",
        "vae": fixture / "vae",
        "encoder": fixture / "whisper_tiny_random.pt",
        "wave": None,
        "overrides": {"frames_per_clip": spec["context"], "context_overlap": spec["overlap"], "cfg": 2.5, "audio_cfg": 2.5},
    }


FAMILY = Family(
    name="echomimic-v1",
    label="EchoMimic v1",
    configs={
        "echomimic-v1": lambda: echomimic_v1_config(acc=False),
        "echomimic-v1-acc": lambda: echomimic_v1_config(acc=True),
        "tiny-echomimic": tiny_echomimic_config,
    },
    files="a folder holding EchoMimic v1's " + ", ".join(f for f, _ in list(PARTS.values())[:-1]) + f" and {PARTS['face_locator'][0]}",
    original=ORIGINAL,
    sources={"/": "a folder holding EchoMimic v1's denoising_unet.pth, motion_module.pth, reference_unet.pth and "
                  "face_locator.pth, from Hugging Face: BadToBest/EchoMimic"},
    part_files=PartFiles(parts=PARTS, resolve=_resolve, claims=_claims),
    variants={ACC: "EchoMimic v1's distilled *_acc.pth files (6 steps, no CFG)"},
    # BadToBest/EchoMimic at the root: the four parts (+ the distilled _acc pair) and whisper-tiny in audio_processor/
    downloads=(
        *(HubFile(ORIGINAL_WEIGHTS, name, "emo", f"echomimic/{name}") for name, _ in PARTS.values()),
        *(HubFile(ORIGINAL_WEIGHTS, name, "emo", f"echomimic/{name}", optional="the distilled 'acc' variant (variant acc)")
          for name in ("denoising_unet_acc.pth", "motion_module_acc.pth")),
        *SD_VAE,
        HubFile(ORIGINAL_WEIGHTS, "audio_processor/whisper_tiny.pt", "audio_encoders", "whisper_tiny.pt"),
        YUNET_FACE,
    ),
    parity=ParityHarness(
        script="echomimic_original.py",
        src_flag="--echo-src",
        settings={"frames": 14, "context": 8, "overlap": 2},
        extra_args=lambda work: ["--no-acc"],  # the .pth files go to fixture/checkpoint
        weights_ready=lambda work: (work / "fixture" / "meta.json").is_file() and (work / "fixture" / "checkpoint").is_dir(),
        ours=_parity_ours,
        # the pipeline call computes the whisper features inside (timed there), so they are timed on ours too
        audio_timed=True,
    ),
    quoted_configs={"echomimic-v1": "EchoMimic", "echomimic-v1-acc": "acc"},
    face_front_end=FACE_FRONT_END,
)

"""Hallo2 (fudan-generative-vision/hallo2): Hallo's network, run by Hallo2's long-video inference.

What makes it Hallo2:

* Files: ``net.pth`` exactly as Hallo's (same keys and shapes: ``hallo2/net.pth`` on Hugging Face). The tensors
  alone say Hallo, so Hallo2 is chosen by the user (``family="hallo2"``) or by the folder the file sits in
  (``.../hallo2/net.pth``).
* Architecture: Hallo's (hallo/models/*.py are byte-identical to Hallo's at 8fd7c572), so the configs are
  Hallo's with Hallo2's preset.
* Preset: ``configs/inference/long.yaml`` has Hallo's values (25 fps, 16 frames + 2 motion frames, the portrait
  as the first clip's motion frames, 40 DDIM steps, CFG 3.5, face box 1.2x) and Hallo's quirks (the networks and
  ``hallo/animate/face_animate.py`` are Hallo's), plus two of ``scripts/inference_long.py`` (all at commit
  58a9aa6c; measured effects in docs/parity.md):

  - ``motion_frame_pixel_drop = 0.25``: scripts/inference_long.py ``inference_process`` lines 402-418 with
    long.yaml ``use_mask: true``, ``mask_rate: 0.25``: every clip, the first included, ``rand_mask = torch.rand(h, w)``,
    ``mask = (rand_mask > mask_rate) | source_image_face_region.bool()`` and ``pixel_motion_values * mask`` on the
    [-1, 1] motion frames before ``FaceAnimatePipeline`` encodes them. Hallo2 draws it from the same global
    generator as the initial noise (``torch.manual_seed(42)`` at line 374), and so do we (Hallo's
    ``seed_stream = "single"``): per clip, the pixel-drop draws, then the clip's noise.
  - ``audio_segment_seconds = 60``: scripts/inference_long.py ``cut_audio`` (lines 141-161, ``length=60``) and
    lines 228-253 with long.yaml ``use_cut: true``: each 60 s piece is a separate
    hallo/datasets/audio_processor.py ``AudioProcessor.preprocess`` call (normalised and encoded on its own, lines
    108-124), only the last one padded (``padding=(idx+1) == len(audio_list)``, ``all_len = seq_len +
    processed_length``, applied only when ``seq_len % clip_length != 0``, lines 116-120).

  The Gaussian noise on the motion frames in the paper is training only (scripts/train_stage2_long.py 839-851).
  The 4K super-resolution stage (scripts/video_sr.py) is not run: chain an upscaler.
"""

from __future__ import annotations

import dataclasses

from ..configs import EMOConfig, PresetConfig
from .base import SD_VAE, WAV2VEC2_BASE, YUNET_FACE, Family, HubFile, OriginalCode, face_analysis
from .hallo import FACE_FRONT_END as HALLO_FACE
from .hallo import KIM_VOCAL_2 as HALLO_KIM_VOCAL_2
from .hallo import QUIRKS as HALLO_QUIRKS
from .hallo import VOCAL_SEPARATOR as HALLO_SEPARATOR
from .hallo import hallo_config, hallo_preset, tiny_hallo_config

ORIGINAL = OriginalCode(
    repo="fudan-generative-vision/hallo2",
    commit="58a9aa6c9f66817a6e084f3874cfc01ac24fed3e",
    weights="huggingface.co/fudan-generative-ai/hallo2: hallo2/net.pth",
)

QUIRKS = dataclasses.replace(HALLO_QUIRKS, motion_frame_pixel_drop=0.25, audio_segment_seconds=60.0)
# scripts/inference_long.py runs Hallo's ImageProcessor; hallo/datasets/image_processor.py and the mask functions of
# hallo/utils/util.py are Hallo's at 58a9aa6c (same code, same face_expand_ratio 1.2 in configs/inference/long.yaml).
FACE_FRONT_END = dataclasses.replace(
    HALLO_FACE, label="Hallo2's",
    mirrors="scripts/inference_long.py + hallo/datasets/image_processor.py + hallo/utils/util.py get_mask (58a9aa6c)",
)


def hallo2_preset(**changes) -> PresetConfig:
    return hallo_preset(quirks=QUIRKS, **changes)


def hallo2_config() -> EMOConfig:
    return hallo_config(name="hallo2", family="hallo2", preset=hallo2_preset())


def tiny_hallo2_config() -> EMOConfig:
    """Hallo2's preset on tiny-hallo's network (the parity fixture tests/parity/hallo2)."""
    tiny = tiny_hallo_config()
    return tiny_hallo_config(name="tiny-hallo2", family="hallo2", preset=dataclasses.replace(tiny.preset, quirks=QUIRKS))


FAMILY = Family(
    name="hallo2",
    label="Hallo2",
    configs={"hallo2": hallo2_config, "tiny-hallo2": tiny_hallo2_config},
    files="Hallo2's net.pth, in a folder named hallo2 (the tensors are Hallo's)",
    original=ORIGINAL,
    sources={
        "net.pth": "Hallo2's weights, from Hugging Face: fudan-generative-ai/hallo2, file hallo2/net.pth "
        "(keep it in a folder named hallo2, or choose the Hallo2 family)"
    },
    folder_names=("hallo2",),
    face_front_end=FACE_FRONT_END,
    # the folder name hallo2 is what tells it from Hallo's net.pth (same tensors)
    downloads=(HubFile("fudan-generative-ai/hallo2", "hallo2/net.pth", "emo", "hallo2/net.pth"), *SD_VAE, *WAV2VEC2_BASE,
               YUNET_FACE, dataclasses.replace(HALLO_KIM_VOCAL_2, repo="fudan-generative-ai/hallo2"),
               *face_analysis("fudan-generative-ai/hallo2")),
    # scripts/inference_long.py: Hallo's AudioProcessor (audio-separator 0.17.2, requirements.txt) on every 60 s piece
    vocal_separator=dataclasses.replace(
        HALLO_SEPARATOR, source="`emo download hallo2 --optional` fetches it (HF fudan-generative-ai/hallo2)"),
)

"""EMO Face Mask: a portrait -> the face-region MASK and the face-centred crop the model wants."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch

from ..emo_model.face import DETECTORS, FaceWarning, auto_detector, find_yunet_model, prepare_portraits
from ..emo_model.families import quoted_presets
from . import _comfy
from .paste_back import crop_output

log = logging.getLogger("ComfyUI-EMO")
YUNET_ENTRY = "face/face_detection_yunet_2023mar.onnx"  # in models/emo, where detector 'yunet' reads it


class EMOFaceMask:
    DESCRIPTION = (
        "Finds the face and returns (1) the face-region mask EMO's Face Locator uses: the face box enlarged to leave "
        "room for head motion (a wider box allows more head swing, a taller one more nodding, an all-white mask lets the "
        "face move anywhere), and (2) the portrait cropped square around the face at the model size, padded rather "
        "than stretched, and (3) the crop: where the square sits in the picture, for EMO Paste Back to put the "
        "animated face back into the whole picture. Any other MASK can replace it. "
        "Cartoons or faces the detector misses take the fallback with a warning."
    )
    CATEGORY = "EMO"
    FUNCTION = "run"
    RETURN_TYPES = ("MASK", "IMAGE", "EMO_CROP")  # EMO_CROP appended last: saved workflows keep their links
    RETURN_NAMES = ("face_mask", "portrait", "crop")
    OUTPUT_TOOLTIPS = ("Face-region mask in the crop's coordinates (1 = where the face may move).", "The model-ready portrait (square, face-centred).",
                       "Where the square crop sits in the picture (box, scale, face box, mask): connect to EMO Paste Back to get full-size frames.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The portrait (a batch: one crop per image; see 'union')."}),
                "size": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 64, "tooltip": "Side of the square crop in pixels: the model's generation size (" + quoted_presets(lambda c: c.preset.resolution) + ")."}),
                "expand": ("FLOAT", {"default": 1.2, "min": 1.0, "max": 4.0, "step": 0.05, "tooltip": "How much the face box is enlarged for the mask: room for head motion (the models use: " + quoted_presets(lambda c: c.preset.face_expand_ratio) + ")."}),
                "crop": (["face", "full"], {"default": "face", "tooltip": "face: square crop around the face; full: the whole image padded to a square."}),
                "crop_ratio": ("FLOAT", {"default": 2.0, "min": 1.0, "max": 6.0, "step": 0.1, "tooltip": "Crop side as a multiple of the face size (face mode)."}),
                "detector": (list(DETECTORS), {"default": "auto", "tooltip": "auto: the best available. haar: OpenCV 4's bundled cascades (frontal and profile; with an OpenCV 5 that another pack installed, lbp runs instead, with a note). lbp: scikit-image's frontal-face cascade (works with any OpenCV). yunet: put face_detection_yunet_2023mar.onnx in models/emo/face. mediapipe: if installed."}),
                "fallback": (["center", "full", "error"], {"default": "center", "tooltip": "No face found: center = a centred face box, full = the whole frame as mask, error = stop with an error."}),
                "face_index": ("INT", {"default": 0, "min": 0, "max": 64, "tooltip": "Which face when there are several (0 = the largest)."}),
                "union": ("BOOLEAN", {"default": False, "tooltip": "For a batch of frames: one crop and one mask covering the face in every frame (EMO's union of boxes over a clip)."}),
            },
            "optional": {
                "emo_model": ("EMO_MODEL", {"tooltip": "Optional: the model from Load EMO Model. Connected, the face is prepared the way the model's original code prepares it (" + face_front_ends() + ") when its detector packages and files are installed; the summary says which preprocessing ran."}),
            },
        }

    def run(self, image, size, expand, crop, crop_ratio, detector, fallback, face_index, union, emo_model=None):
        image = _comfy.image_batch(image, label="image")  # one line for an empty / 0-255 / NaN / 'meta' IMAGE (shared check)
        models_dir = str(_comfy.models_dir() / "emo" / "face")
        if detector == "yunet" and find_yunet_model(models_dir) is None:  # asked for by name: where its file goes and comes from
            from ..emo_model.validation import InputError
            from .loader import missing_file_message

            raise InputError(missing_file_message("face detector", "emo", YUNET_ENTRY, "from the OpenCV model zoo") + " (or detector auto)")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FaceWarning)
            crops = prepare_portraits(
                image.cpu().numpy(),
                size,
                union=union,
                crop=crop,
                crop_ratio=crop_ratio,
                expand_ratio=expand,
                face_index=face_index,
                fallback=fallback,
                detector=detector,
                models_dir=models_dir,
            )
        notes = list(dict.fromkeys(str(w.message) for w in caught))
        if emo_model is not None:  # the family's original preprocessing where it can run (emo_model/face/front_ends.py)
            crops = original_front_end(emo_model, image, crops, union, [str(_comfy.models_dir()), models_dir])
            notes += list(dict.fromkeys(c.front_end for c in crops if c.front_end))
        for note in notes:
            log.warning("EMO Face Mask: %s", note)  # ComfyUI's log; the node shows it too (its summary)
        masks = torch.from_numpy(np.stack([c.mask for c in crops])).float()
        portraits = torch.from_numpy(np.stack([c.image for c in crops])).float()
        summary = face_summary(crops, detector, fallback, models_dir, notes)
        return {"ui": {"emo_summary": [summary]}, "result": (masks, portraits, crop_output(crops))}


def face_front_ends() -> str:
    """The families whose original face preprocessing the node can run, and what each needs (for the tooltip)."""
    from ..emo_model.families import FAMILIES

    parts = []
    for fam in FAMILIES:
        fe = fam.face_front_end
        if fe is None:
            continue
        what = ["MediaPipe face-landmarker masks (mediapipe + its .task file in models/face_analysis/models)"] if fe.landmarks else []
        what += ["MTCNN crop and mask (facenet_pytorch)"] if fe.box_crop else []
        what += ["insightface identity (EMO Reference Encode)"] if fe.identity else []
        parts.append(f"{fam.label}: {', '.join(what)}")
    return "; ".join(parts)


def original_front_end(emo_model, image, crops, union: bool, models_dirs: list[str]):
    """Each crop with the model family's original preprocessing applied (not with union: one crop for many frames)."""
    from ..emo_model.face.front_ends import as_original
    from ..emo_model.families import family_of

    family = family_of(emo_model.config)
    front_end = family and family.face_front_end
    if front_end is None:
        return crops
    if union and len(crops) > 1:
        for c in crops:
            c.front_end = f"{front_end.label} face preprocessing not run with union (it prepares one picture): ours used"
        return crops
    pictures = image.cpu().numpy()
    return [as_original(front_end, pictures[i], c, models_dirs) for i, c in enumerate(crops)]


def face_summary(crops, detector: str, fallback: str, models_dir: str, notes: list[str]) -> str:
    """The node's summary line: where a face was found, by which detector, and any fallback or warning."""
    used = f"auto = {auto_detector(models_dir)}" if detector == "auto" else detector
    missed = sum(1 for c in crops if c.fell_back)
    if missed:
        taken = {"center": "a centred face box", "full": "the whole frame"}.get(fallback, fallback)
        summary = f"NO FACE FOUND in {missed} of {len(crops)} image(s) (detector {used}): {taken} used instead"
    else:
        summary = f"face found in {len(crops)} image(s) (detector {used})"
    shown = [_comfy.summary_note(n) for n in notes]  # the what; the log has what to do (run() logs every note whole)
    return " · ".join([summary, *(short + (" (see the log)" if cut else "") for short, cut in shown)])

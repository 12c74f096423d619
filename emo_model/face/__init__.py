"""Face front end: find the face on the reference portrait, crop it, build masks.

EMO needs three things from the reference portrait before anything else runs:
a square, model-ready crop of the portrait; the face region mask that the
face locator consumes (EMO conditions on the *union* of face boxes over a
clip, so the mask is the box expanded to leave room for head motion); and,
for region audio modules, soft (background, face, lips) region masks.
This module produces all three.  It imports only numpy and OpenCV (4 or 5), and
scikit-image for the LBP detector (torch tensors are accepted by duck typing); there
is no ComfyUI import here.

The package, one concept per module: :mod:`.boxes` (face boxes, coordinates, errors), :mod:`.image`
(images in), :mod:`.detectors` (Haar, LBP, YuNet, MediaPipe, the ``auto`` choice), :mod:`.masks` (face region
and audio-region masks), :mod:`.crop` (the portrait crop and the no-face fallback).
"""

from __future__ import annotations

from .boxes import FaceBox, FaceError, FaceWarning, union_box
from .crop import CROP_MODES, FALLBACKS, PAD_MODES, PortraitCrop, prepare_portrait, prepare_portraits
from .detectors import (
    DETECT_MAX_SIDE,
    DETECTORS,
    HAAR_MIN_NEIGHBORS,
    auto_detector,
    available_detectors,
    detect_faces,
    find_yunet_model,
)
from .image import MIN_IMAGE_SIDE, to_rgb_float
from .masks import face_region_mask, region_masks

__all__ = [
    "CROP_MODES",
    "DETECTORS",
    "DETECT_MAX_SIDE",
    "FALLBACKS",
    "HAAR_MIN_NEIGHBORS",
    "MIN_IMAGE_SIDE",
    "PAD_MODES",
    "FaceBox",
    "FaceError",
    "FaceWarning",
    "PortraitCrop",
    "auto_detector",
    "available_detectors",
    "detect_faces",
    "face_region_mask",
    "find_yunet_model",
    "prepare_portrait",
    "prepare_portraits",
    "region_masks",
    "to_rgb_float",
    "union_box",
]

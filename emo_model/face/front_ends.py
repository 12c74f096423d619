"""The originals' face preprocessing at run time: which one a family uses, whether it can run here, running it.

A family names its original's preprocessing as a :class:`FaceFrontEnd` (``Family.face_front_end``; the numbers and
the original file + commit it mirrors are in the family module). It runs when the user has what the original
runs on; else our detector and crop run as always and the note says why:

* ``landmarks`` (:mod:`.landmark_masks`): MediaPipe's FaceLandmarker (``pip install mediapipe``) with the
  ``.task`` model from the original's download (:data:`LANDMARKER_PLACES`). It runs on the whole picture when the
  original's framing is used (below), else on the square portrait our crop makes, and replaces the face-region
  mask with the original's and adds its (full, face, lip) region masks;
* ``box_crop`` (:mod:`.box_crop`): facenet_pytorch's MTCNN (``pip install facenet-pytorch``; its weights ship
  in the package), run on the picture as given (BGR, as the original reads it with OpenCV); its square crop and
  mask replace ours;
* ``identity``: insightface's embedding of the largest face (:mod:`emo_model.network.identity`; it runs where the
  portrait is encoded) and ``squash_resize``: the picture resized to the model size without a crop.

The original's framing (:func:`whole_picture`): for a family whose original resizes the whole picture
(``squash_resize``) and a square picture (what those originals ask their users for), the portrait is the whole
picture resized as the original resizes it (PIL bilinear), the landmarks are found on the whole picture and the
identity is embedded from it (``PortraitCrop.original_picture``), so a square picture gives the original's own
preprocessing. A picture that is not square keeps our square face crop: the original would stretch it.

mediapipe, facenet_pytorch and insightface are optional imports: nothing here needs them installed.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field, replace
from glob import glob
from typing import Any

import numpy as np

from .box_crop import BoxCropRecipe, box_crop
from .boxes import FaceBox
from .landmark_masks import LandmarkMaskRecipe, landmark_masks, resized_portrait

# Where the face landmarker's .task file is looked for, under each models folder given (first found wins).
LANDMARKER_PLACES = ("face_analysis/models", "emo/face", "face", "mediapipe", ".")
LANDMARKER_GLOB = "*face_landmarker*.task"


@dataclass(frozen=True)
class FaceFrontEnd:
    """How a family's original prepares the portrait (see the module docstring)."""

    label: str  # how notes name it (the family's label, possessive)
    mirrors: str  # the original file(s) and commit
    identity: bool = False
    squash_resize: bool = False
    landmarks: LandmarkMaskRecipe | None = None
    box_crop: BoxCropRecipe | None = None
    # keyword arguments of the box detector (MTCNN) as the original builds it
    detector_options: tuple[tuple[str, Any], ...] = field(default_factory=tuple)


def whole_picture(front_end: FaceFrontEnd | None, image: Any) -> bool:
    """Whether the original's own framing is used for ``image`` (see the module docstring): the family's original
    resizes the whole picture and the picture is square."""
    if front_end is None or not front_end.squash_resize:
        return False
    shape = np.shape(image)
    h, w = (shape[-3], shape[-2]) if len(shape) >= 3 and shape[-1] in (1, 3, 4) else shape[-2:]
    return h == w


def framing_options(front_end: FaceFrontEnd | None, image: Any, face_index: int = 0) -> dict:
    """prepare_portrait options for the original's framing: the whole picture (``crop="full"``) when it applies and the
    largest face is wanted (the original takes the largest; another face keeps our crop around it)."""
    return {"crop": "full"} if face_index == 0 and whole_picture(front_end, image) else {}


def find_landmarker(models_dirs) -> str | None:
    """The first ``*face_landmarker*.task`` under the models folders (see :data:`LANDMARKER_PLACES`)."""
    roots = [models_dirs] if isinstance(models_dirs, (str, os.PathLike)) else list(models_dirs or ())
    for root in roots:
        for place in LANDMARKER_PLACES:
            found = sorted(glob(os.path.join(os.fspath(root), place, LANDMARKER_GLOB)))
            if found:
                return found[0]
    return None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing(front_end: FaceFrontEnd, models_dirs) -> list[str]:
    """What the parts of the original's preprocessing that the face node runs need and the user lacks (empty: it runs)."""
    out = []
    if front_end.landmarks is not None:
        if not _installed("mediapipe"):
            out.append("mediapipe (pip install mediapipe)")
        if find_landmarker(models_dirs) is None:
            out.append("face_landmarker_v2_with_blendshapes.task (from the original's download) in models/face_analysis/models")
    if front_end.box_crop is not None and not _installed("facenet_pytorch"):
        out.append("facenet_pytorch (pip install facenet-pytorch --no-deps)")
    return out


def detect_landmarks(rgb8: np.ndarray, task_file: str) -> np.ndarray | None:
    """Face-mesh points [478, 2] in pixels of ``rgb8`` (uint8 RGB) from MediaPipe's FaceLandmarker, or None unless
    exactly one face is found (the original accepts exactly one)."""
    import mediapipe as mp

    vision = mp.tasks.vision
    options = vision.FaceLandmarkerOptions(base_options=mp.tasks.BaseOptions(model_asset_path=task_file),
                                           running_mode=vision.RunningMode.IMAGE)
    h, w = rgb8.shape[:2]
    with vision.FaceLandmarker.create_from_options(options) as landmarker:
        result = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb8)))
    faces = result.face_landmarks
    if len(faces) != 1:
        return None
    return np.array([[p.x * w, p.y * h] for p in faces[0]], np.float64)


def detect_boxes(bgr8: np.ndarray, options) -> tuple[Any, Any]:
    """facenet_pytorch MTCNN boxes and probabilities on ``bgr8`` (as the original calls it), on the CPU."""
    from facenet_pytorch import MTCNN

    detector = MTCNN(device="cpu", **dict(options))
    return detector.detect(bgr8)


@dataclass
class FrontEndResult:
    """What ran and what it changed (``crop``: a PortraitCrop to use instead of ours; ``region_masks``: the
    (full, face, lip) masks per feature-map size, {(h, w): [3, h, w]})."""

    ran: bool
    note: str
    crop: Any = None
    region_masks: dict | None = None


def apply_front_end(front_end: FaceFrontEnd | None, source_rgb: np.ndarray, ours, models_dirs) -> FrontEndResult:
    """Run the parts of ``front_end`` that work on the picture (landmark masks, box crop) on ``source_rgb``
    (float 0..1 [H, W, 3]) given our PortraitCrop ``ours``; never raises for a missing optional part."""
    if front_end is None:
        return FrontEndResult(False, "")
    if front_end.landmarks is None and front_end.box_crop is None:
        identity = ("; its insightface identity is computed on the whole picture when the portrait is encoded, if "
                    "insightface and its models are installed") if front_end.identity else ""
        if ours.original_picture is not None:
            return FrontEndResult(True, f"{front_end.label} framing: the whole square picture resized as the original "
                                        f"does{identity}")
        return FrontEndResult(True, f"{front_end.label} face preprocessing has no crop: ours used; it resizes the whole "
                                    "picture, so our square face crop is the picture it gets (the original would stretch a "
                                    f"picture that is not square){identity.replace(' on the whole picture', '')}")
    lacking = missing(front_end, models_dirs)
    if lacking:
        return FrontEndResult(False, f"{front_end.label} face preprocessing not run, our detector and crop used; "
                                     f"it needs {', '.join(lacking)}")
    try:
        if front_end.box_crop is not None:
            return _run_box_crop(front_end, source_rgb, ours)
        return _run_landmarks(front_end, ours, find_landmarker(models_dirs))
    except Exception as exc:  # a broken optional package must not stop the graph
        return FrontEndResult(False, f"{front_end.label} face preprocessing failed ({str(exc)[:200]}): "
                                     "our detector and crop used")


def as_original(front_end: FaceFrontEnd | None, image: Any, ours, models_dirs):
    """``ours`` (our PortraitCrop of ``image``) with the family's original preprocessing applied where it can run
    here; its ``front_end`` says in words what ran (empty for a family with none)."""
    if front_end is None:
        return ours
    from .image import to_rgb_float

    rgb = to_rgb_float(image)
    if whole_picture(front_end, rgb) and ours.crop_box == (0.0, 0.0, float(rgb.shape[1]), float(rgb.shape[0])):
        picture = _uint8(rgb)
        ours = replace(ours, image=resized_portrait(picture, ours.size), original_picture=picture)
    result = apply_front_end(front_end, rgb, ours, models_dirs)
    crop = result.crop if result.crop is not None else ours
    crop.front_end = result.note
    crop.region_masks = result.region_masks
    return crop


def region_masks_as_original(front_end: FaceFrontEnd | None, portrait: Any, models_dirs) -> tuple[dict | None, str]:
    """The original's (full, face, lip) region masks per feature-map size {(h, w): [3, h, w]} from face landmarks on
    ``portrait`` (the square image the model gets, float 0..1 [H, W, 3]), and a note; (None, why) where it cannot
    run, (None, "") for a family whose original makes none."""
    if front_end is None or front_end.landmarks is None:
        return None, ""
    lacking = missing(replace(front_end, box_crop=None), models_dirs)
    if lacking:
        return None, f"{front_end.label} face preprocessing not run; it needs {', '.join(lacking)}"
    rgb8 = _uint8(portrait)
    try:
        points = detect_landmarks(rgb8, find_landmarker(models_dirs))
    except Exception as exc:  # a broken optional package must not stop the graph
        return None, f"{front_end.label} face preprocessing failed ({str(exc)[:200]})"
    if points is None:
        return None, f"{front_end.label} face preprocessing: the face landmarker found no single face"
    h, w = rgb8.shape[:2]
    masks = landmark_masks(points, h, w, (h, w), front_end.landmarks)
    return masks.region_levels(), (f"audio region masks (full / face / lips) made by {front_end.label} face preprocessing "
                                   "(face landmarker on the portrait); used even when the sampler gets a face mask")


def _uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(rgb, np.float32) * 255.0), 0, 255).astype(np.uint8)


def _run_landmarks(front_end: FaceFrontEnd, ours, task_file: str) -> FrontEndResult:
    """The landmarks on the whole picture (the original's framing) or on our square crop; the masks at the model size."""
    whole = ours.original_picture is not None
    picture = ours.original_picture if whole else _uint8(ours.image)
    points = detect_landmarks(picture, task_file)
    if points is None:
        return FrontEndResult(False, f"{front_end.label} face preprocessing: the face landmarker found no single face; "
                                     "our face mask used")
    h, w = picture.shape[:2]
    size = ours.size
    masks = landmark_masks(points, h, w, size, front_end.landmarks)
    x0, x1, y0, y1 = (v * size / s for v, s in zip(masks.face_box, (w, w, h, h)))  # source pixels -> the model's
    crop = replace(ours, mask=masks.face_region.astype(np.float32), detector="face landmarker")
    crop.face_box = FaceBox(x0, y0, max(x0, x1), max(y0, y1))
    how = "the whole square picture, resized as the original does" if whole else "our square face crop"
    return FrontEndResult(True, f"{front_end.label} face preprocessing ran (face landmarker masks on {how})", crop,
                          masks.region_levels())


def _run_box_crop(front_end: FaceFrontEnd, source_rgb: np.ndarray, ours) -> FrontEndResult:
    from .crop import PortraitCrop, _full_square, _warp_square

    picture = _uint8(source_rgb)
    bgr = np.ascontiguousarray(picture[..., ::-1])
    boxes, probs = detect_boxes(bgr, front_end.detector_options)
    size = ours.size
    result = box_crop(bgr, boxes, probs, size, front_end.box_crop)
    h, w = picture.shape[:2]
    if result.square is None:  # the original keeps the whole picture and a full mask
        square = _full_square(h, w)
        image = np.clip(_warp_square(source_rgb.astype(np.float32), square, size, ours.pad_mode), 0, 1)
        face_src, fell_back, note = FaceBox(0, 0, w, h, 0.0), True, "MTCNN found no face: the whole picture, full mask"
        mask = np.ones((size, size), np.float32)
    else:
        sx0, sy0, sx1, sy1 = result.square
        square = (float(sx0), float(sy0), float(sx1), float(sy1))
        image = result.image[..., ::-1].astype(np.float32) / np.float32(255.0)
        bx0, by0, bx1, by1 = result.box
        face_src, fell_back, note = FaceBox(bx0, by0, bx1, by1), False, "MTCNN crop and mask"
        mask = result.mask.astype(np.float32) / np.float32(255.0)
    crop = PortraitCrop(
        image=np.ascontiguousarray(image, dtype=np.float32), mask=mask,
        face_box=face_src, source_box=None if fell_back else face_src, crop_box=square, scale=size / (square[2] - square[0]),
        fell_back=fell_back, warning=None, faces_found=0 if fell_back else 1, detector="mtcnn", source_size=(h, w),
        pad_mode=ours.pad_mode,
    )
    crop.face_box = crop.box_to_crop(face_src)
    return FrontEndResult(True, f"{front_end.label} face preprocessing ran ({note})", crop)

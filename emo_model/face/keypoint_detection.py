"""Three face keypoints (image-left eye, image-right eye, nose) found on a picture: insightface, YuNet, or a face box.

What a keypoint guider reads (:mod:`.keypoint_images`) comes from the user's pictures, the best source first:

* ``insightface``: insightface's ``FaceAnalysis`` detection model (``app.get(bgr)[0].kps[:3]``: the first face in its
  order, at ``det_size`` = the picture's size, rounded up to multiples of 32), what a keypoint-guided original runs on its reference. It runs
  where the package is installed (``pip install insightface onnxruntime``) and a model pack is on disk (nothing is
  downloaded): ``buffalo_l`` (the original's) under ``<models>/insightface/models/``,
  ``<models>/insightface_models/models/`` (an original's own folder) or the face-analysis packs some families'
  downloads bring (:data:`INSIGHTFACE_PACKS`);
* ``yunet``: OpenCV's YuNet (its model file in the models folder, as the face detector finds it): its five landmarks,
  the first three of which are the same points in the same order;
* ``box``: our face detector's box (Haar / LBP, what every install has) with the eyes and nose placed at average
  proportions of the box (:data:`BOX_KEYPOINTS`, measured on ``skimage.data.astronaut()``: within 3 px of the hand-
  marked points at 512 px). A head tilted sideways gets level eyes: a note says so, and what to install.

Keypoints are pixels of the picture given. For a batch of driving frames each frame is detected on its own; a frame
without a face keeps the previous frame's keypoints (the first found ones before it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .boxes import FaceError
from .detectors import detect_faces, find_yunet_model
from .image import _to_uint8, to_rgb_float

# insightface model packs (a folder of .onnx files with a detection model), first found wins (buffalo_l first)
INSIGHTFACE_PACKS = ("insightface/models/buffalo_l", "insightface_models/models/buffalo_l", "emo/insightface_models/models/buffalo_l",
                     "insightface/models/antelopev2", "face_analysis/models")
# (x, y) of the image-left eye, image-right eye and nose as fractions of a Haar / LBP face box (see the module docstring)
BOX_KEYPOINTS = ((0.30, 0.37), (0.70, 0.37), (0.50, 0.60))
SOURCES = ("insightface", "yunet", "box")


@dataclass(frozen=True)
class Keypoints:
    """Keypoints [3, 2] (x, y pixels) and where they came from (one of :data:`SOURCES`)."""

    points: np.ndarray
    source: str


def find_insightface_pack(models_dirs) -> Path | None:
    """The first insightface pack (:data:`INSIGHTFACE_PACKS`) under any of the models folders that holds ``.onnx`` files."""
    roots = [models_dirs] if isinstance(models_dirs, (str, os.PathLike)) else list(models_dirs or ())
    for root in roots:
        for relative in INSIGHTFACE_PACKS:
            pack = Path(root) / relative
            if pack.is_dir() and any(pack.glob("*.onnx")):
                return pack
    return None


@lru_cache(maxsize=4)
def _insightface(pack: str, height: int, width: int):
    """insightface's FaceAnalysis (detection only, CPU) on a local pack at det_size (height, width), or None."""
    try:
        from insightface.app import FaceAnalysis
    except ImportError:
        return None
    path = Path(pack)
    root, name = (path.parent, "") if path.name == "models" else (path.parent.parent, path.name)
    try:  # FaceAnalysis reads <root>/models/<name>; it downloads only when that folder is missing (it is not)
        app = FaceAnalysis(name=name, root=str(root), allowed_modules=["detection"], providers=["CPUExecutionProvider"])
        app.prepare(ctx_id=-1, det_size=(height, width))  # inference.py:233 det_size=(image_height, image_width)
    except (AssertionError, OSError, RuntimeError, ValueError):  # a pack without a detection model, a broken file
        return None
    return app


def insightface_available(models_dirs) -> bool:
    pack = find_insightface_pack(models_dirs)
    if pack is None:
        return False
    try:
        import importlib.util

        return importlib.util.find_spec("insightface") is not None and importlib.util.find_spec("onnxruntime") is not None
    except (ImportError, ValueError):
        return False


def _by_insightface(rgb8: np.ndarray, models_dirs) -> np.ndarray | None:
    pack = find_insightface_pack(models_dirs)
    h, w = (-(-side // 32) * 32 for side in rgb8.shape[:2])  # its detector's input: multiples of 32 (512 stays 512)
    app = None if pack is None else _insightface(str(pack), h, w)
    if app is None:
        return None
    faces = app.get(np.ascontiguousarray(rgb8[..., ::-1]))  # BGR, as cv2.imread gives it (inference.py:238)
    if not faces:
        return None
    return np.asarray(faces[0].kps[:3], dtype=np.float64)  # inference.py:240: the first face, kps[:3]


def _by_yunet(rgb8: np.ndarray, models_dirs) -> np.ndarray | None:
    from .detectors import _load_yunet

    roots = [models_dirs] if isinstance(models_dirs, (str, os.PathLike)) else list(models_dirs or ())
    path = next((p for p in (find_yunet_model(r) for r in roots) if p), None)
    if path is None:
        return None
    net = _load_yunet(path, os.path.getmtime(path))
    h, w = rgb8.shape[:2]
    net.setInputSize((w, h))
    _, faces = net.detect(np.ascontiguousarray(rgb8[:, :, ::-1]))
    if faces is None or len(faces) == 0:
        return None
    best = max(np.asarray(faces).reshape(-1, 15), key=lambda f: f[14])
    return best[4:10].reshape(3, 2).astype(np.float64)  # eye at image left, eye at image right, nose tip


def _by_box(rgb: np.ndarray, detector: str, models_dirs) -> np.ndarray | None:
    roots = [models_dirs] if isinstance(models_dirs, (str, os.PathLike)) else list(models_dirs or ())
    named = detector if detector in ("haar", "lbp", "mediapipe") else "auto"  # auto: YuNet's landmarks ran before this
    boxes = detect_faces(rgb, detector=named, models_dir=roots[0] if roots and named == "mediapipe" else None)
    if not boxes:
        return None
    b = boxes[0]  # the largest
    return np.array([[b.x0 + fx * (b.x1 - b.x0), b.y0 + fy * (b.y1 - b.y0)] for fx, fy in BOX_KEYPOINTS], dtype=np.float64)


def find_keypoints(image: Any, *, detector: str = "auto", models_dirs=None, sources=SOURCES) -> Keypoints | None:
    """The keypoints of the face on ``image`` (anything :func:`to_rgb_float` reads), from the first of ``sources`` that
    can run here and finds a face; None when none finds one. ``detector`` is the box detector's choice."""
    rgb = to_rgb_float(image)
    rgb8 = _to_uint8(rgb)
    for source in sources:
        if source == "insightface":
            points = _by_insightface(rgb8, models_dirs)
        elif source == "yunet":
            points = _by_yunet(rgb8, models_dirs) if detector in ("auto", "yunet") else None
        elif source == "box":
            points = _by_box(rgb, detector, models_dirs)
        else:
            raise ValueError(f"unknown keypoint source {source!r}; choose from {', '.join(SOURCES)}")
        if points is not None:
            return Keypoints(points, source)
    return None


def source_note(source: str) -> str:
    """How the keypoints were found, in a user's words (with what would make them better)."""
    if source == "insightface":
        return "face keypoints by insightface (as the original)"
    if source == "yunet":
        return "face keypoints by YuNet's landmarks (the original uses insightface's buffalo_l: pip install insightface onnxruntime)"
    return ("face keypoints placed in the detected face box (level eyes; the original uses insightface: pip install insightface "
            "onnxruntime and its buffalo_l folder in models/insightface/models)")


def reference_keypoints(image: Any, *, detector: str = "auto", models_dirs=None) -> Keypoints:
    """The reference face's keypoints; a picture without a detectable face is refused (FaceError, one line)."""
    found = find_keypoints(image, detector=detector, models_dirs=models_dirs)
    if found is None:
        raise FaceError("no face found on the portrait to place the face keypoints; use a clearer frontal photo, another "
                        "face detector, or insightface (pip install insightface onnxruntime, buffalo_l in models/insightface/models)")
    return found


def frame_keypoints(frames, *, detector: str = "auto", models_dirs=None, on_frame=None) -> tuple[np.ndarray, str, int]:
    """Keypoints of every frame of a driving video (``frames``: [N, H, W, C] or a list of pictures) -> ([N, 3, 2] pixels of
    each frame, the source of the first frame's, how many frames had no face and kept the previous keypoints).
    A video without a face in any frame is refused (FaceError)."""
    out: list[np.ndarray | None] = []
    source, misses = "", 0
    for i, frame in enumerate(frames):
        found = find_keypoints(frame, detector=detector, models_dirs=models_dirs)
        if found is None:
            misses += 1
            out.append(None)
        else:
            source = source or found.source
            out.append(found.points)
        if on_frame is not None:
            on_frame(i + 1)
    if not out or all(p is None for p in out):
        raise FaceError(f"no face found in any of the {len(out)} driving frame(s); use a video that shows one face")
    first = next(p for p in out if p is not None)
    filled, last = [], first
    for p in out:
        last = last if p is None else p
        filled.append(last)
    return np.stack(filled), source, misses


def to_square(points: np.ndarray, height: int, width: int, size: int) -> np.ndarray:
    """Pixels of a height x width picture -> pixels of its largest centred square scaled to ``size`` (how a driving
    frame is framed as the portrait is: the same mapping as POSE_KEYPOINT's)."""
    side = min(height, width)
    return (np.asarray(points, dtype=np.float64) - np.array([(width - side) / 2, (height - side) / 2])) * (size / side)

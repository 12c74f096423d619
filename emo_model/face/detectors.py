"""Face detectors: which one runs, and how each finds faces.

Detectors
---------
``detect_faces(..., detector=...)`` accepts one of :data:`DETECTORS`:

``"haar"`` (the default with OpenCV 4.x)
    OpenCV's Viola-Jones cascades that ship *inside* the OpenCV 4.x
    wheels (``cv2.data.haarcascades``): ``haarcascade_frontalface_alt2.xml``
    plus ``haarcascade_profileface.xml`` run on the image and on its mirror
    (the profile cascade only knows one side).  If nothing is found upright,
    the frame is also tried rotated by +-25 degrees to catch tilted heads.
    ``alt2`` is used rather than ``default`` because, on scikit-image's test
    pictures, ``default`` fired on coins and on the moon while ``alt2`` did not.
    Faces smaller than 8 % of the detection copy's short side are not
    searched for (they are useless for animation and they dominate the run
    time).  A detection needs at least :data:`HAAR_MIN_NEIGHBORS` (10)
    overlapping raw hits: upright real faces scored 11-44 in our checks
    (noise and blur included; 8 at a 20 degree tilt, which the rotated pass
    recovers), while drawn smileys scored 3-8.
    ``score`` is ``n / (n + 10)`` for ``n`` hits, a ranking heuristic rather
    than a probability.

    **OpenCV 5:** the 4.x wheels (4.8 ... 4.14 checked) ship
    ``cv2/data/haarcascade_*.xml``.  The 5.x wheels (5.0, 5.1 checked) ship an
    empty ``cv2/data`` *and* no longer have ``cv2.CascadeClassifier`` (it moved
    to the contrib ``xobjdetect`` module).  ``requirements.txt`` asks for
    ``opencv-python-headless>=4.8,<5``, but another pack can still bring an
    opencv 5: ComfyUI-VideoHelperSuite asks for an unpinned ``opencv-python``,
    pip installs 5.x beside our headless 4.x, and ``import cv2`` then loads 5.x.
    So when the cascades are not there, ``"haar"`` runs ``"lbp"`` instead, with
    a :class:`FaceWarning` that says so (the node shows it).

``"lbp"`` (always available: works whatever OpenCV is installed)
    scikit-image's ``skimage.feature.Cascade`` with the frontal-face LBP
    cascade that ships inside the scikit-image wheel
    (``skimage.data.lbp_frontal_face_cascade_filename()``, a cascade trained
    by OpenCV; nothing is downloaded).  It needs nothing from ``cv2`` beyond
    colour conversion, resizing and rotation, which every OpenCV 4 and 5
    variant has, so a foreign OpenCV cannot switch face detection off.  It
    runs on a copy at most :data:`LBP_MAX_SIDE` (512) px on its longer side
    (the cascade takes about a second there on a busy 2-core machine), on the
    histogram-equalised grey image, faces from 8 % of the short side, with
    the same +-25 degree rotated passes as Haar when nothing is upright.
    A detection needs :data:`LBP_MIN_NEIGHBORS` (12) grouped raw hits: on
    scikit-image's pictures ``astronaut()`` keeps its face up to 16 at 512 px
    and 20 at 256 px, the synthetic demo portrait up to 30, while the false
    hits (``hubble_deep_field()`` at 6, a spot on a half-size ``astronaut()``
    at 8) were gone at 12.  It knows only frontal faces (no profile pass) and
    gives no score (``score`` is 0.5).  Haar stays first where it exists: it
    was tuned on these pictures and it also finds profiles.

``"yunet"`` (optional, better: a small CNN, handles pose, scale and occlusion)
    OpenCV's ``cv2.FaceDetectorYN`` with ``face_detection_yunet_2023mar.onnx``
    (from the OpenCV model zoo, 230 kB).  The weights are *not* in any wheel,
    so the user places the file (or any ``*yunet*.onnx``) in ``models_dir``
    (or a direct sub-folder of it).  Needs opencv >= 4.8 for the 2023mar file.

``"mediapipe"`` (optional, only if the user installed mediapipe)
    Imported lazily and never listed in the requirements (recent mediapipe
    releases depend on an unpinned ``opencv-contrib-python``, i.e. opencv 5).
    Old releases with ``mediapipe.solutions.face_detection`` carry the
    BlazeFace model inside the wheel; current releases only have the Tasks API
    and need ``blaze_face_short_range.tflite`` (any ``*face*.tflite``) in
    ``models_dir``.

``"auto"``
    The best available one: yunet (model file present) > mediapipe (importable
    and usable) > haar (OpenCV 4.x) > lbp.  A detector that fails to load is skipped with a
    warning; an *empty* result from the chosen detector is final (falling
    through to a weaker detector would mostly add false positives).
    Asking explicitly for ``"yunet"`` or ``"mediapipe"`` when it is not
    available raises :class:`FaceError` saying what to install or place.

Whatever the detector, large images are detected on a copy whose longer side
is :data:`DETECT_MAX_SIDE` (1024) px and the boxes are mapped back; boxes are
returned in source pixel coordinates, largest first.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from glob import glob
from typing import Any

import cv2
import numpy as np

from .boxes import FaceBox, FaceError, FaceWarning
from .image import _check_size, _to_uint8, to_rgb_float

DETECTORS = ("auto", "haar", "lbp", "yunet", "mediapipe")
#: Detection runs on a copy no larger than this on its longer side.
DETECT_MAX_SIDE = 1024
#: Minimum number of raw cascade hits for a Haar detection (see module doc).
HAAR_MIN_NEIGHBORS = 10
#: The LBP detector runs on a copy no larger than this on its longer side.
LBP_MAX_SIDE = 512
#: Minimum number of grouped raw hits for an LBP detection (see module doc).
LBP_MIN_NEIGHBORS = 12
#: The score given to LBP boxes (scikit-image reports none).
LBP_SCORE = 0.5
#: The file name that OpenCV's model zoo uses for YuNet (preferred if present).
YUNET_FILENAME = "face_detection_yunet_2023mar.onnx"

_HAAR_FRONTAL = "haarcascade_frontalface_alt2.xml"
_HAAR_PROFILE = "haarcascade_profileface.xml"
_HAAR_ROTATIONS = (-25.0, 25.0)
_CV2_FIX = (
    'pip uninstall -y opencv-python opencv-contrib-python opencv-python-headless && '
    'pip install "opencv-python-headless>=4.8,<5"'
)




def _nms(boxes: list[FaceBox], iou_thresh: float = 0.3, contain_thresh: float = 0.6) -> list[FaceBox]:
    """Greedy suppression in the given (priority) order.

    A box is dropped when it overlaps a kept one with IoU above ``iou_thresh``
    or when most of the smaller box (``contain_thresh``) lies inside it.
    """
    kept: list[FaceBox] = []
    for b in boxes:
        ok = True
        for k in kept:
            inter = b.intersection(k)
            small = min(b.area, k.area)
            if b.iou(k) > iou_thresh or (small > 0 and inter / small > contain_thresh):
                ok = False
                break
        if ok:
            kept.append(b)
    return kept


def _haar_dir() -> str | None:
    data = getattr(cv2, "data", None)
    path = getattr(data, "haarcascades", None) if data is not None else None
    return str(path) if path else None


@functools.lru_cache(maxsize=4)
def _load_cascades(directory: str) -> tuple[Any, Any] | str:
    """(frontal, profile) classifiers, or a string explaining what is missing."""
    version = getattr(cv2, "__version__", "?")
    if not hasattr(cv2, "CascadeClassifier"):
        return (
            f"OpenCV {version} has no cv2.CascadeClassifier (OpenCV 5 moved it out of the main "
            f"module and its wheels no longer ship the Haar cascades)"
        )
    loaded = []
    for name in (_HAAR_FRONTAL, _HAAR_PROFILE):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            return f"OpenCV {version} has no {name} in {directory} (the OpenCV 5 wheels dropped the Haar cascades)"
        clf = cv2.CascadeClassifier(path)
        if clf.empty():
            return f"OpenCV {version} could not load {path}"
        loaded.append(clf)
    return (loaded[0], loaded[1])


def _haar_status() -> tuple[Any, Any] | str:
    directory = _haar_dir()
    if directory is None:
        return f"OpenCV {getattr(cv2, '__version__', '?')} has no cv2.data.haarcascades folder"
    return _load_cascades(directory)


def _haar_problem_message(reason: str, models_dir: Any) -> str:
    where = f" in {models_dir}" if models_dir else " in the models folder (models_dir)"
    return (
        f"Haar face detector unavailable: {reason}. No face can be detected. "
        f"Fix: {_CV2_FIX}  (opencv 4.x ships the cascades), "
        f"or place {YUNET_FILENAME}{where} to use the YuNet detector."
    )


def _haar_pass(gray: np.ndarray, cascades: tuple[Any, Any]) -> list[FaceBox]:
    frontal, profile = cascades
    h, w = gray.shape
    min_side = max(24, int(round(0.08 * min(h, w))))
    kw = dict(scaleFactor=1.1, minNeighbors=HAAR_MIN_NEIGHBORS, minSize=(min_side, min_side))
    frontal_boxes: list[FaceBox] = []
    profile_boxes: list[FaceBox] = []
    for clf, mirrored, sink in ((frontal, False, frontal_boxes), (profile, False, profile_boxes),
                                (profile, True, profile_boxes)):
        img = np.ascontiguousarray(gray[:, ::-1]) if mirrored else gray
        rects, hits = clf.detectMultiScale2(img, **kw)
        for (x, y, bw, bh), n in zip(np.asarray(rects).reshape(-1, 4), np.asarray(hits).reshape(-1)):
            x0 = float(w - (x + bw)) if mirrored else float(x)
            sink.append(FaceBox(x0, float(y), x0 + float(bw), float(y + bh), float(n) / (float(n) + 10.0)))
    # Frontal boxes win overlaps (they are better centred on the face).
    frontal_boxes.sort(key=lambda b: b.score, reverse=True)
    profile_boxes.sort(key=lambda b: b.score, reverse=True)
    return _nms(frontal_boxes + profile_boxes)


def _detect_haar(rgb8: np.ndarray, models_dir: Any) -> list[FaceBox]:
    status = _haar_status()
    if isinstance(status, str):
        lbp = _lbp_status()
        if isinstance(lbp, str):
            warnings.warn(_haar_problem_message(status, models_dir) + f" The LBP detector is unavailable too: {lbp}.",
                          FaceWarning, stacklevel=3)
            return []
        warnings.warn(
            f"Haar face detector unavailable: {status}. Used the 'lbp' detector (scikit-image's frontal-face cascade) "
            f"instead; choose detector 'lbp' or 'auto' to use it without this note, or for Haar: {_CV2_FIX}.",
            FaceWarning, stacklevel=3,
        )
        return _detect_lbp(rgb8, models_dir)
    gray = cv2.equalizeHist(cv2.cvtColor(rgb8, cv2.COLOR_RGB2GRAY))
    return _with_rotations(gray, lambda g: _haar_pass(g, status))


def _with_rotations(gray: np.ndarray, find) -> list[FaceBox]:
    """``find(gray)``; if it finds nothing, the frame rotated by +-25 degrees (tilted heads)."""
    boxes = find(gray)
    if boxes:
        return boxes
    # Tilted heads: try the frame rotated both ways and map the centres back
    # (the box size is kept, the rotated box's hull would be too large).
    h, w = gray.shape
    centre = ((w - 1) * 0.5, (h - 1) * 0.5)
    found: list[FaceBox] = []
    for angle in _HAAR_ROTATIONS:
        m = cv2.getRotationMatrix2D(centre, angle, 1.0)
        rotated = cv2.warpAffine(gray, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        inv = cv2.invertAffineTransform(m)
        for b in find(rotated):
            cx, cy = b.centre
            sx, sy = inv @ np.array([cx - 0.5, cy - 0.5, 1.0])
            sx, sy = sx + 0.5, sy + 0.5
            found.append(FaceBox(sx - b.width / 2, sy - b.height / 2, sx + b.width / 2, sy + b.height / 2, b.score))
    found.sort(key=lambda b: b.score, reverse=True)
    return [b.clipped(w, h) for b in _nms(found)]


@functools.lru_cache(maxsize=1)
def _lbp_status() -> Any:
    """scikit-image's frontal-face LBP cascade, or a string saying why it cannot load."""
    try:
        from skimage.data import lbp_frontal_face_cascade_filename
        from skimage.feature import Cascade
    except Exception as exc:  # scikit-image is in requirements.txt; a broken install must not stop the graph
        return f"scikit-image could not be imported ({exc}); pip install 'scikit-image>=0.22'"
    path = lbp_frontal_face_cascade_filename()
    if not os.path.isfile(path):
        return f"scikit-image has no {path}"
    try:
        return Cascade(path)
    except Exception as exc:
        return f"scikit-image could not load {path}: {exc}"


def _lbp_pass(gray: np.ndarray, cascade: Any) -> list[FaceBox]:
    h, w = gray.shape
    min_side = max(24, int(round(0.08 * min(h, w))))
    if min(h, w) < min_side:
        return []
    found = cascade.detect_multi_scale(
        img=gray, scale_factor=1.1, step_ratio=1, min_size=(min_side, min_side), max_size=(min(h, w), min(h, w)),
        min_neighbor_number=LBP_MIN_NEIGHBORS, intersection_score_threshold=0.5,
    )
    boxes = [FaceBox(float(d["c"]), float(d["r"]), float(d["c"] + d["width"]), float(d["r"] + d["height"]), LBP_SCORE)
             for d in found]
    boxes.sort(key=lambda b: b.area, reverse=True)
    return _nms(boxes)


def _detect_lbp(rgb8: np.ndarray, models_dir: Any) -> list[FaceBox]:
    del models_dir  # the model ships inside scikit-image
    cascade = _lbp_status()
    if isinstance(cascade, str):
        raise FaceError(f"detector='lbp' is unavailable: {cascade}")
    h, w = rgb8.shape[:2]
    f = min(1.0, LBP_MAX_SIDE / max(h, w))
    small = rgb8
    if f < 1.0:
        small = cv2.resize(rgb8, (max(1, int(round(w * f))), max(1, int(round(h * f)))), interpolation=cv2.INTER_AREA)
    gray = np.ascontiguousarray(cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)))
    boxes = _with_rotations(gray, lambda g: _lbp_pass(g, cascade))
    sh, sw = gray.shape
    if (sh, sw) != (h, w):
        boxes = [b.scaled(w / sw, h / sh).clipped(w, h) for b in boxes]
    return boxes


def _model_dirs(models_dir: Any) -> list[str]:
    if models_dir is None:
        return []
    if isinstance(models_dir, (str, os.PathLike)):
        roots = [os.fspath(models_dir)]
    else:
        roots = [os.fspath(d) for d in models_dir]
    dirs: list[str] = []
    for root in roots:
        if os.path.isdir(root):
            dirs.append(root)
            dirs.extend(sorted(p for p in glob(os.path.join(root, "*")) if os.path.isdir(p)))
    return dirs


def find_yunet_model(models_dir: Any) -> str | None:
    """Path of a YuNet ONNX file in ``models_dir`` (or a direct sub-folder).

    ``face_detection_yunet_2023mar.onnx`` is preferred; otherwise the
    alphabetically last ``*yunet*.onnx`` (newest date-stamped release).
    """
    candidates: list[str] = []
    for d in _model_dirs(models_dir):
        candidates.extend(p for p in glob(os.path.join(d, "*.onnx")) if "yunet" in os.path.basename(p).lower())
    if not candidates:
        return None
    exact = [p for p in candidates if os.path.basename(p).lower() == YUNET_FILENAME]
    return exact[0] if exact else sorted(candidates, key=lambda p: os.path.basename(p).lower())[-1]


@functools.lru_cache(maxsize=2)
def _load_yunet(path: str, mtime: float) -> Any:
    del mtime  # part of the cache key only
    if not hasattr(cv2, "FaceDetectorYN"):
        raise FaceError(f"this OpenCV ({cv2.__version__}) has no cv2.FaceDetectorYN; install opencv >= 4.8")
    try:
        return cv2.FaceDetectorYN.create(path, "", (320, 320), 0.7, 0.3, 50)
    except cv2.error as exc:
        raise FaceError(
            f"OpenCV {cv2.__version__} could not load the YuNet model {path}: {str(exc).strip()[:300]}. "
            f"Use {YUNET_FILENAME} from the OpenCV model zoo (opencv >= 4.8)."
        ) from exc


def _detect_yunet(rgb8: np.ndarray, models_dir: Any) -> list[FaceBox]:
    path = find_yunet_model(models_dir)
    if path is None:
        raise FaceError(
            f"detector='yunet' needs {YUNET_FILENAME} (or any *yunet*.onnx) in the models folder; "
            f"searched: {_model_dirs(models_dir) or models_dir!r}. Download it from the OpenCV model zoo "
            f"(github.com/opencv/opencv_zoo, models/face_detection_yunet) or use detector='haar'."
        )
    net = _load_yunet(path, os.path.getmtime(path))
    h, w = rgb8.shape[:2]
    bgr = np.ascontiguousarray(rgb8[:, :, ::-1])
    try:
        net.setInputSize((w, h))
        _, faces = net.detect(bgr)
    except cv2.error as exc:
        raise FaceError(f"YuNet ({path}) failed on a {w}x{h} image: {str(exc).strip()[:300]}") from exc
    boxes = []
    if faces is not None:
        for f in np.asarray(faces).reshape(-1, 15):
            x, y, bw, bh = (float(v) for v in f[:4])
            boxes.append(FaceBox(x, y, x + bw, y + bh, float(f[14])).clipped(w, h))
    boxes = [b for b in boxes if b.area > 0]
    boxes.sort(key=lambda b: b.score, reverse=True)
    return _nms(boxes)


def _find_mediapipe_model(models_dir: Any) -> str | None:
    found: list[str] = []
    for d in _model_dirs(models_dir):
        found.extend(p for p in glob(os.path.join(d, "*.tflite")) if "face" in os.path.basename(p).lower())
    preferred = [p for p in found if "blaze_face" in os.path.basename(p).lower() or "detector" in os.path.basename(p).lower()]
    pool = preferred or found
    return sorted(pool)[0] if pool else None


def _mediapipe_backend(models_dir: Any) -> tuple[str, Any] | str:
    """("solutions", module) / ("tasks", (mp, model path)) or a reason string."""
    if importlib.util.find_spec("mediapipe") is None:
        return "mediapipe is not installed (pip install mediapipe)"
    try:
        import mediapipe as mp
    except Exception as exc:  # broken installs raise all sorts of things
        return f"mediapipe is installed but failed to import: {exc}"
    solutions = getattr(mp, "solutions", None)
    if solutions is not None and hasattr(solutions, "face_detection"):
        return ("solutions", solutions.face_detection)
    model = _find_mediapipe_model(models_dir)
    if model is not None and hasattr(mp, "tasks"):
        return ("tasks", (mp, model))
    return (
        "this mediapipe has no bundled face model (mediapipe.solutions was removed); place "
        "blaze_face_short_range.tflite in the models folder"
    )


def _detect_mediapipe(rgb8: np.ndarray, models_dir: Any) -> list[FaceBox]:
    backend = _mediapipe_backend(models_dir)
    if isinstance(backend, str):
        raise FaceError(f"detector='mediapipe' is unavailable: {backend}; or use detector='haar'")
    kind, obj = backend
    h, w = rgb8.shape[:2]
    boxes: list[FaceBox] = []
    if kind == "solutions":
        # model_selection=1: the full-range model (faces up to ~5 m), which
        # also handles the large faces of portraits.
        with obj.FaceDetection(model_selection=1, min_detection_confidence=0.5) as fd:
            result = fd.process(np.ascontiguousarray(rgb8))
        for det in getattr(result, "detections", None) or []:
            rb = det.location_data.relative_bounding_box
            x0, y0 = rb.xmin * w, rb.ymin * h
            boxes.append(FaceBox(x0, y0, x0 + rb.width * w, y0 + rb.height * h, float(det.score[0])).clipped(w, h))
    else:
        mp, model = obj
        vision = mp.tasks.vision
        options = vision.FaceDetectorOptions(
            base_options=mp.tasks.BaseOptions(model_asset_path=model), min_detection_confidence=0.5
        )
        detector = vision.FaceDetector.create_from_options(options)
        try:
            result = detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb8)))
        finally:
            close = getattr(detector, "close", None)
            if close is not None:
                close()
        for det in result.detections:
            bb = det.bounding_box
            score = float(det.categories[0].score) if det.categories else 1.0
            x0, y0 = float(bb.origin_x), float(bb.origin_y)
            boxes.append(FaceBox(x0, y0, x0 + float(bb.width), y0 + float(bb.height), score).clipped(w, h))
    boxes = [b for b in boxes if b.area > 0]
    boxes.sort(key=lambda b: b.score, reverse=True)
    return _nms(boxes)


def available_detectors(models_dir: Any = None) -> list[str]:
    """The concrete detectors usable now, best first (what ``"auto"`` tries)."""
    out = []
    if find_yunet_model(models_dir) is not None and hasattr(cv2, "FaceDetectorYN"):
        out.append("yunet")
    if not isinstance(_mediapipe_backend(models_dir), str):
        out.append("mediapipe")
    if not isinstance(_haar_status(), str):
        out.append("haar")
    if not isinstance(_lbp_status(), str):
        out.append("lbp")
    return out


_DETECT_FN = {"haar": _detect_haar, "lbp": _detect_lbp, "yunet": _detect_yunet, "mediapipe": _detect_mediapipe}


def _run_detector(rgb8: np.ndarray, detector: str, models_dir: Any) -> list[FaceBox]:
    if detector not in DETECTORS:
        raise FaceError(f"unknown face detector {detector!r}; choose one of {', '.join(DETECTORS)}")
    if detector != "auto":
        return _DETECT_FN[detector](rgb8, models_dir)
    for name in available_detectors(models_dir):
        if name in ("haar", "lbp"):
            break
        try:
            return _DETECT_FN[name](rgb8, models_dir)
        except Exception as exc:  # a broken optional detector must not stop the graph
            warnings.warn(f"face detector {name!r} failed ({exc}); trying the next one", FaceWarning, stacklevel=3)
    if isinstance(_haar_status(), str) and not isinstance(_lbp_status(), str):
        return _detect_lbp(rgb8, models_dir)  # OpenCV without the Haar cascades (5.x): the LBP cascade, no warning
    return _detect_haar(rgb8, models_dir)


def auto_detector(models_dir: Any = None) -> str:
    """The detector ``"auto"`` runs now (what the node's summary names)."""
    available = available_detectors(models_dir)
    return available[0] if available else "haar"


def detect_faces(image: Any, detector: str = "auto", models_dir: str | None = None) -> list[FaceBox]:
    """Face boxes in source pixel coordinates, largest first.

    ``image`` is anything :func:`to_rgb_float` accepts (numpy / torch, grey,
    RGB, RGBA, uint8 / uint16 / float).  Images larger than
    :data:`DETECT_MAX_SIDE` are detected on a downscaled copy and the boxes
    mapped back.  Returns ``[]`` when no face is found (or when no detector
    can run, with a :class:`FaceWarning`).
    """
    rgb = to_rgb_float(image)
    return _detect_rgb(rgb, detector, models_dir)


def _detect_rgb(rgb: np.ndarray, detector: str, models_dir: Any) -> list[FaceBox]:
    h, w = rgb.shape[:2]
    _check_size(h, w)
    small = rgb
    f = DETECT_MAX_SIDE / max(h, w)
    if f < 1.0:
        dw, dh = max(1, int(round(w * f))), max(1, int(round(h * f)))
        small = cv2.resize(rgb, (dw, dh), interpolation=cv2.INTER_AREA)
    sh, sw = small.shape[:2]
    boxes = _run_detector(_to_uint8(small), detector, models_dir)
    if (sh, sw) != (h, w):
        boxes = [b.scaled(w / sw, h / sh).clipped(w, h) for b in boxes]
    boxes = [b for b in boxes if b.area > 0]
    boxes.sort(key=lambda b: b.area, reverse=True)
    return boxes



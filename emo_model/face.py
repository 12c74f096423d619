"""Face front end: find the face on the reference portrait, crop it, build masks.

EMO needs three things from the reference portrait before anything else runs:
a square, model-ready crop of the portrait; the face region mask that the
face locator consumes (EMO conditions on the *union* of face boxes over a
clip, so the mask is the box expanded to leave room for head motion); and,
for region audio modules, soft (background, face, lips) region masks.
This module produces all three.  It imports only numpy and OpenCV (torch
tensors are accepted by duck typing); there is no ComfyUI import here.

Detectors
---------
``detect_faces(..., detector=...)`` accepts one of :data:`DETECTORS`:

``"haar"`` (always available, the default in practice)
    OpenCV's Viola-Jones cascades that ship *inside* the ``opencv-python``
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

    **Why opencv is pinned below 5:** the 4.x wheels (4.8 ... 4.14 checked)
    ship ``cv2/data/haarcascade_*.xml``.  The 5.0 wheels ship an empty
    ``cv2/data`` *and* no longer have ``cv2.CascadeClassifier`` (it moved to
    the contrib ``xobjdetect`` module).  A detector whose model lives inside a
    registry package is the requirement (nothing is downloaded at run time),
    so ``requirements.txt`` pins ``opencv-python-headless>=4.8,<5``.  If an
    opencv 5 gets installed anyway (other packages pull ``opencv-python`` or
    ``opencv-contrib-python`` unpinned), the Haar detector issues a
    :class:`FaceWarning` naming the fix and reports no faces, so portraits
    take the documented fallback instead of crashing.

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
    and usable) > haar.  A detector that fails to load is skipped with a
    warning; an *empty* result from the chosen detector is final (falling
    through to a weaker detector would mostly add false positives).
    Asking explicitly for ``"yunet"`` or ``"mediapipe"`` when it is not
    available raises :class:`FaceError` saying what to install or place.

Whatever the detector, large images are detected on a copy whose longer side
is :data:`DETECT_MAX_SIDE` (1024) px and the boxes are mapped back; boxes are
returned in source pixel coordinates, largest first.

Coordinates
-----------
Continuous pixel coordinates throughout: pixel ``(row i, col j)`` covers
``[j, j+1) x [i, i+1)``, its centre is ``(j + 0.5, i + 0.5)``.  A
:class:`FaceBox` ``(x0, y0, x1, y1)`` is in these units, ``x1``/``y1``
exclusive, so a box covering the whole image is ``(0, 0, W, H)``.  A pixel
belongs to a box mask when its centre lies inside the box.

Crop geometry (:func:`prepare_portrait`)
-----------------------------------------
``crop="face"``: a square of side ``crop_ratio * max(face w, face h)``
centred on the face box centre, then resized (area averaging when shrinking,
bicubic when enlarging) to ``size x size``.  The centre is not shifted up:
Haar boxes already sit high on the face (they run from the hairline to just
below the mouth, see the tests), so with the default ``crop_ratio=2`` the
crop holds the hair and the neck/shoulder line; head motion goes both ways.
Where the square leaves the image the missing part is *padded*
(``pad_mode``: ``"edge"`` replicates the border pixels, ``"constant"`` fills
black, ``"reflect"`` mirrors) - the portrait is never stretched, the aspect
ratio is always preserved and the crop box is allowed to extend past the
image.  ``crop="full"`` (or ``crop_ratio <= 0``) keeps the whole image,
letterboxed into a square.  The mapping source -> crop is
``u = (x - crop_x0) * scale``, ``v = (y - crop_y0) * scale`` with
``scale = size / crop_side`` (see :meth:`PortraitCrop.to_crop`).

The face region mask is 1 inside the face box scaled by ``expand_ratio``
about its centre (1.2 = 20 % larger each way, room for head motion) and 0
outside.

Fallback when no face is found
------------------------------
Cartoons, the back of a head, a blank frame: :func:`prepare_portrait` never
crashes on these.  It issues a :class:`FaceWarning` and, per ``fallback``:

* ``"center"`` (default) - a centred square of 40 % of the short side is
  used as the face; the crop and masks are built from it as usual.
* ``"full"`` - the whole image is kept (letterboxed) and the face region
  mask is the full frame (all ones).
* ``"error"`` - raise :class:`FaceError` instead.

Images smaller than 64 px on a side raise :class:`FaceError`.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import warnings
from dataclasses import dataclass
from glob import glob
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

__all__ = [
    "DETECTORS",
    "FALLBACKS",
    "CROP_MODES",
    "PAD_MODES",
    "MIN_IMAGE_SIDE",
    "DETECT_MAX_SIDE",
    "HAAR_MIN_NEIGHBORS",
    "FaceBox",
    "FaceError",
    "FaceWarning",
    "PortraitCrop",
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

DETECTORS = ("auto", "haar", "yunet", "mediapipe")
FALLBACKS = ("center", "full", "error")
CROP_MODES = ("face", "full")
PAD_MODES = ("edge", "constant", "reflect")

#: Images smaller than this on either side are rejected (no detector works
#: there and the model would be fed an upscaled smear).
MIN_IMAGE_SIDE = 64
#: Detection runs on a copy no larger than this on its longer side.
DETECT_MAX_SIDE = 1024
#: Minimum number of raw cascade hits for a Haar detection (see module doc).
HAAR_MIN_NEIGHBORS = 10
#: Side of the fallback face box as a fraction of the image's short side.
FALLBACK_FACE_FRACTION = 0.4
#: The file name that OpenCV's model zoo uses for YuNet (preferred if present).
YUNET_FILENAME = "face_detection_yunet_2023mar.onnx"

_HAAR_FRONTAL = "haarcascade_frontalface_alt2.xml"
_HAAR_PROFILE = "haarcascade_profileface.xml"
_HAAR_ROTATIONS = (-25.0, 25.0)
_CV2_FIX = (
    'pip uninstall -y opencv-python opencv-contrib-python opencv-python-headless && '
    'pip install "opencv-python-headless>=4.8,<5"'
)

_BORDER = {
    "edge": cv2.BORDER_REPLICATE,
    "constant": cv2.BORDER_CONSTANT,
    "reflect": cv2.BORDER_REFLECT_101,
}


class FaceError(ValueError):
    """A clear, actionable problem with the portrait or the face options."""


class FaceWarning(UserWarning):
    """Something degraded (no face found, a detector missing) but work goes on."""


# --------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------


@dataclass
class FaceBox:
    """An axis-aligned box in continuous pixel coordinates (x1/y1 exclusive)."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0

    def __post_init__(self) -> None:
        self.x0, self.y0, self.x1, self.y1 = (float(v) for v in (self.x0, self.y0, self.x1, self.y1))
        self.score = float(self.score)
        if not all(math.isfinite(v) for v in (self.x0, self.y0, self.x1, self.y1)):
            raise FaceError(f"FaceBox coordinates must be finite, got {self.as_tuple()}")
        if self.x1 < self.x0 or self.y1 < self.y0:
            raise FaceError(f"FaceBox needs x0 <= x1 and y0 <= y1, got {self.as_tuple()}")

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def centre(self) -> tuple[float, float]:
        return (0.5 * (self.x0 + self.x1), 0.5 * (self.y0 + self.y1))

    center = centre

    @property
    def area(self) -> float:
        return self.width * self.height

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)

    def clipped(self, width: float, height: float) -> "FaceBox":
        """The box intersected with the image ``[0, width) x [0, height)``."""
        x0 = min(max(self.x0, 0.0), float(width))
        y0 = min(max(self.y0, 0.0), float(height))
        x1 = min(max(self.x1, x0), float(width))
        y1 = min(max(self.y1, y0), float(height))
        return FaceBox(x0, y0, x1, y1, self.score)

    def expanded(self, ratio: float, width: float | None = None, height: float | None = None) -> "FaceBox":
        """Width and height multiplied by ``ratio`` about the centre.

        ``ratio=1.2`` grows the box by 20 % (10 % each side).  When ``width``
        and ``height`` (the image size) are given the result is clipped to it.
        """
        if ratio < 0:
            raise FaceError(f"expand ratio must be >= 0, got {ratio}")
        cx, cy = self.centre
        hw, hh = 0.5 * self.width * ratio, 0.5 * self.height * ratio
        box = FaceBox(cx - hw, cy - hh, cx + hw, cy + hh, self.score)
        if width is not None or height is not None:
            if width is None or height is None:
                raise FaceError("expanded(): give both width and height to clip, or neither")
            box = box.clipped(width, height)
        return box

    def scaled(self, sx: float, sy: float | None = None) -> "FaceBox":
        """Coordinates multiplied by ``(sx, sy)`` (e.g. to map between resolutions)."""
        sy = sx if sy is None else sy
        return FaceBox(self.x0 * sx, self.y0 * sy, self.x1 * sx, self.y1 * sy, self.score)

    def translated(self, dx: float, dy: float) -> "FaceBox":
        return FaceBox(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy, self.score)

    def intersection(self, other: "FaceBox") -> float:
        w = min(self.x1, other.x1) - max(self.x0, other.x0)
        h = min(self.y1, other.y1) - max(self.y0, other.y0)
        return max(w, 0.0) * max(h, 0.0)

    def iou(self, other: "FaceBox") -> float:
        inter = self.intersection(other)
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def contains(self, x: float, y: float) -> bool:
        return self.x0 <= x < self.x1 and self.y0 <= y < self.y1


def union_box(boxes: Iterable[FaceBox]) -> FaceBox:
    """The smallest box containing every box; its score is the lowest score."""
    boxes = list(boxes)
    if not boxes:
        raise FaceError("union_box() needs at least one box")
    return FaceBox(
        min(b.x0 for b in boxes),
        min(b.y0 for b in boxes),
        max(b.x1 for b in boxes),
        max(b.y1 for b in boxes),
        min(b.score for b in boxes),
    )


# --------------------------------------------------------------------------
# Image normalisation
# --------------------------------------------------------------------------


def to_rgb_float(image: Any) -> np.ndarray:
    """Any supported portrait -> ``H x W x 3`` float32 RGB in ``[0, 1]``.

    Accepts numpy arrays or torch tensors (detached and moved to the CPU) of
    shape ``HxW``, ``HxWx1`` (grey), ``HxWx2`` (grey + alpha), ``HxWx3``
    (RGB), ``HxWx4`` (RGBA), a leading batch dimension of 1, or channels-first
    ``CxHxW`` when the last axis is clearly not channels.  Integer images are
    divided by their type's maximum (uint8: 255, uint16: 65535); float images
    are taken as 0..1 unless their maximum exceeds 2, in which case they are
    taken as 0..255.  NaN becomes 0.  Alpha is composited over white (a
    transparent background reads as a plain studio backdrop).
    """
    arr = image
    if hasattr(arr, "detach") and hasattr(arr, "cpu"):  # torch.Tensor, without importing torch
        arr = arr.detach().cpu()
        if str(getattr(arr, "dtype", "")) in ("torch.bfloat16", "torch.float16"):
            arr = arr.float()
        arr = arr.numpy()
    arr = np.asarray(arr)
    if arr.dtype == object or arr.size == 0:
        raise FaceError(f"expected an image array, got dtype={arr.dtype} shape={arr.shape}")
    while arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[-1] not in (1, 2, 3, 4) and arr.shape[0] in (1, 2, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise FaceError(
            f"expected an image shaped HxW, HxWx1, HxWx3 or HxWx4 (one frame), got shape {tuple(arr.shape)}"
        )

    if arr.dtype == np.bool_:
        out = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.integer):
        if arr.dtype == np.uint8:
            div = 255.0
        elif arr.dtype == np.uint16:
            div = 65535.0
        else:
            div = 255.0 if arr.max(initial=0) <= 255 else float(np.iinfo(arr.dtype).max)
        out = arr.astype(np.float32) / np.float32(div)
    elif np.issubdtype(arr.dtype, np.floating):
        out = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        if out.size and float(out.max()) > 2.0:
            out = out / np.float32(255.0)
    else:
        raise FaceError(f"unsupported image dtype {arr.dtype}")
    out = np.clip(out, 0.0, 1.0)

    channels = out.shape[-1]
    if channels in (2, 4):
        alpha = out[..., -1:]
        colour = out[..., :-1]
        out = colour * alpha + (1.0 - alpha)
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out, dtype=np.float32)


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def _check_size(h: int, w: int) -> None:
    if h < MIN_IMAGE_SIDE or w < MIN_IMAGE_SIDE:
        raise FaceError(
            f"the portrait is {w}x{h} px; it must be at least {MIN_IMAGE_SIDE} px on each side "
            f"(at least {MIN_IMAGE_SIDE} px is needed to find a face; 512 px or more is recommended)"
        )


# --------------------------------------------------------------------------
# Detectors
# --------------------------------------------------------------------------


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
        warnings.warn(_haar_problem_message(status, models_dir), FaceWarning, stacklevel=3)
        return []
    gray = cv2.equalizeHist(cv2.cvtColor(rgb8, cv2.COLOR_RGB2GRAY))
    boxes = _haar_pass(gray, status)
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
        for b in _haar_pass(rotated, status):
            cx, cy = b.centre
            sx, sy = inv @ np.array([cx - 0.5, cy - 0.5, 1.0])
            sx, sy = sx + 0.5, sy + 0.5
            found.append(FaceBox(sx - b.width / 2, sy - b.height / 2, sx + b.width / 2, sy + b.height / 2, b.score))
    found.sort(key=lambda b: b.score, reverse=True)
    return [b.clipped(w, h) for b in _nms(found)]


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
        import mediapipe as mp  # noqa: PLC0415 - optional, imported lazily on purpose
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
    return out


_DETECT_FN = {"haar": _detect_haar, "yunet": _detect_yunet, "mediapipe": _detect_mediapipe}


def _run_detector(rgb8: np.ndarray, detector: str, models_dir: Any) -> list[FaceBox]:
    if detector not in DETECTORS:
        raise FaceError(f"unknown face detector {detector!r}; choose one of {', '.join(DETECTORS)}")
    if detector != "auto":
        return _DETECT_FN[detector](rgb8, models_dir)
    for name in available_detectors(models_dir):
        if name == "haar":
            break
        try:
            return _DETECT_FN[name](rgb8, models_dir)
        except Exception as exc:  # a broken optional detector must not stop the graph
            warnings.warn(f"face detector {name!r} failed ({exc}); trying the next one", FaceWarning, stacklevel=3)
    return _detect_haar(rgb8, models_dir)


def detect_faces(image: Any, detector: str = "auto", models_dir: str | None = None) -> list[FaceBox]:
    """Face boxes in source pixel coordinates, largest first.

    ``image`` is anything :func:`to_rgb_float` accepts (numpy / torch, grey,
    RGB, RGBA, uint8 / uint16 / float).  Images larger than
    :data:`DETECT_MAX_SIDE` are detected on a downscaled copy and the boxes
    mapped back.  Returns ``[]`` when no face is found (or when the Haar
    cascades are missing, with a :class:`FaceWarning`).
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


# --------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------


def _box_pixel_range(lo: float, hi: float, n: int) -> tuple[int, int]:
    """Indices i with lo <= i + 0.5 < hi, clipped to [0, n)."""
    a = int(math.ceil(lo - 0.5))
    b = int(math.ceil(hi - 0.5))
    return max(a, 0), min(max(b, 0), n)


def face_region_mask(box: FaceBox, height: int, width: int, expand_ratio: float = 1.0) -> np.ndarray:
    """``height x width`` float32 mask: 1 where the pixel centre lies inside
    ``box`` scaled by ``expand_ratio`` about its centre, 0 elsewhere."""
    if height <= 0 or width <= 0:
        raise FaceError(f"mask size must be positive, got {width}x{height}")
    if expand_ratio <= 0:
        raise FaceError(f"expand_ratio must be > 0, got {expand_ratio}")
    b = box.expanded(expand_ratio)
    mask = np.zeros((int(height), int(width)), np.float32)
    r0, r1 = _box_pixel_range(b.y0, b.y1, int(height))
    c0, c1 = _box_pixel_range(b.x0, b.x1, int(width))
    if r1 > r0 and c1 > c0:
        mask[r0:r1, c0:c1] = 1.0
    return mask


def _soft_ellipse(height: int, width: int, cx: float, cy: float, ax: float, ay: float, sigma: float) -> np.ndarray:
    m = np.zeros((height, width), np.float32)
    if ax > 0 and ay > 0:
        shift = 4  # sub-pixel precision for cv2.ellipse
        k = 1 << shift
        cv2.ellipse(
            m,
            (int(round((cx - 0.5) * k)), int(round((cy - 0.5) * k))),
            (max(1, int(round(ax * k))), max(1, int(round(ay * k)))),
            0.0, 0.0, 360.0, 1.0, -1, cv2.LINE_8, shift,
        )
    if sigma > 0.3:
        m = cv2.GaussianBlur(m, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT)
    return np.clip(m, 0.0, 1.0)


def region_masks(face_box: FaceBox, height: int, width: int) -> np.ndarray:
    """``[3, H, W]`` float32 soft masks: background, face without lips, lips.

    Region audio modules weigh three regions - background/full, face and
    lips - that the originals derive from mediapipe face landmarks.  Without landmarks
    we approximate them from the face box:

    * face = the ellipse inscribed in the box;
    * lips = an ellipse centred horizontally, at 80 % of the box height, with
      semi-axes 25 % of the box width and 12 % of its height (on the
      astronaut test photo this spans the mouth of a Haar box; a box that
      runs lower, e.g. to the chin, puts it a little low on the mouth);
    * edges are Gaussian-blurred (sigma = 4 % of the larger box side);
    * lips is clipped to face, and the channels are
      ``(1 - face, face - lips, lips)`` so they sum to 1 at every pixel.
    """
    height, width = int(height), int(width)
    if height <= 0 or width <= 0:
        raise FaceError(f"mask size must be positive, got {width}x{height}")
    cx, cy = face_box.centre
    fw, fh = face_box.width, face_box.height
    sigma = 0.04 * max(fw, fh)
    face = _soft_ellipse(height, width, cx, cy, fw / 2, fh / 2, sigma)
    lips = _soft_ellipse(height, width, cx, face_box.y0 + 0.80 * fh, 0.25 * fw, 0.12 * fh, sigma * 0.5)
    lips = np.minimum(lips, face)
    return np.stack([1.0 - face, face - lips, lips]).astype(np.float32)


# --------------------------------------------------------------------------
# Portrait crop
# --------------------------------------------------------------------------


def _num(v: Any) -> Any:
    return float(v) if np.isscalar(v) else np.asarray(v, np.float64)


@dataclass
class PortraitCrop:
    """A model-ready square portrait plus everything needed to map back.

    ``crop_box`` is the square (x0, y0, x1, y1) in source coordinates; it may
    extend past the image, that part is padded.  ``scale`` = crop px per
    source px.  ``face_box`` is in crop coordinates, ``source_box`` in source
    coordinates (``None`` when the fallback was taken; ``face_box`` is then
    the fallback box).  ``faces_found`` is the number of faces detected
    (for ``prepare_portraits(union=True)``: the number of frames with a face).
    """

    image: np.ndarray
    mask: np.ndarray
    face_box: FaceBox
    source_box: FaceBox | None
    crop_box: tuple[float, float, float, float]
    scale: float
    fell_back: bool
    warning: str | None
    faces_found: int = 0
    detector: str = "auto"
    source_size: tuple[int, int] = (0, 0)  # (height, width)
    pad_mode: str = "edge"

    @property
    def size(self) -> int:
        return int(self.image.shape[0])

    def to_crop(self, x: Any, y: Any) -> tuple[Any, Any]:
        """Source (continuous pixel) coordinates -> crop coordinates (scalars or arrays)."""
        return ((_num(x) - self.crop_box[0]) * self.scale, (_num(y) - self.crop_box[1]) * self.scale)

    def to_source(self, x: Any, y: Any) -> tuple[Any, Any]:
        """Crop coordinates -> source (continuous pixel) coordinates (scalars or arrays)."""
        return (_num(x) / self.scale + self.crop_box[0], _num(y) / self.scale + self.crop_box[1])

    def box_to_crop(self, box: FaceBox) -> FaceBox:
        x0, y0 = self.to_crop(box.x0, box.y0)
        x1, y1 = self.to_crop(box.x1, box.y1)
        return FaceBox(x0, y0, x1, y1, box.score)

    def box_to_source(self, box: FaceBox) -> FaceBox:
        x0, y0 = self.to_source(box.x0, box.y0)
        x1, y1 = self.to_source(box.x1, box.y1)
        return FaceBox(x0, y0, x1, y1, box.score)

    @property
    def affine(self) -> np.ndarray:
        """2x3 matrix mapping source continuous coordinates to crop coordinates."""
        s = self.scale
        return np.array([[s, 0.0, -s * self.crop_box[0]], [0.0, s, -s * self.crop_box[1]]], np.float64)

    def apply(self, array: Any, interpolation: str = "linear", pad_mode: str | None = None) -> np.ndarray:
        """Warp any source-aligned ``H x W [x C]`` array (a mask, another
        frame of the same size) into this crop, exactly like ``image``."""
        arr = np.asarray(array)
        if arr.shape[:2] != tuple(self.source_size):
            raise FaceError(f"array is {arr.shape[:2]}, the source image was {self.source_size} (H, W)")
        return _warp_square(arr.astype(np.float32, copy=False), self.crop_box, self.size, pad_mode or self.pad_mode,
                            interpolation)


def _warp_square(img: np.ndarray, crop_box: Sequence[float], size: int, pad_mode: str,
                 interpolation: str = "auto") -> np.ndarray:
    """Resample ``img`` (source coords) into ``size x size`` over ``crop_box``.

    Pure affine resampling, so the square may extend past the image; the
    outside is filled by ``pad_mode``.  When shrinking by 2x or more, the
    image is first reduced with area averaging (anti-aliasing) and the
    remaining factor is done by the warp with matched coordinates.
    """
    if pad_mode not in _BORDER:
        raise FaceError(f"unknown pad_mode {pad_mode!r}; choose one of {', '.join(PAD_MODES)}")
    h, w = img.shape[:2]
    x0, y0, x1, _ = (float(v) for v in crop_box)
    s = size / (x1 - x0)
    src, fx, fy = img, 1.0, 1.0
    if interpolation in ("auto", "linear", "cubic") and s < 0.5:
        k = int(1.0 / s)
        dw, dh = max(1, int(round(w / k))), max(1, int(round(h / k)))
        src = cv2.resize(img, (dw, dh), interpolation=cv2.INTER_AREA)
        fx, fy = dw / w, dh / h
    # crop pixel centre u+0.5 = (x - x0) * s with source x = (x2 + 0.5) / fx
    m = np.array(
        [[s / fx, 0.0, s * (0.5 / fx - x0) - 0.5], [0.0, s / fy, s * (0.5 / fy - y0) - 0.5]], np.float64
    )
    if interpolation == "auto":
        flag = cv2.INTER_CUBIC if s > 1.0 else cv2.INTER_LINEAR
    else:
        flag = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}.get(interpolation)
        if flag is None:
            raise FaceError(f"unknown interpolation {interpolation!r}")
    out = cv2.warpAffine(src, m, (size, size), flags=flag, borderMode=_BORDER[pad_mode], borderValue=0)
    if out.ndim == 2 and img.ndim == 3:
        out = out[:, :, None]
    return out


def _fallback_box(h: int, w: int) -> FaceBox:
    side = FALLBACK_FACE_FRACTION * min(h, w)
    cx, cy = w / 2, h / 2
    return FaceBox(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2, 0.0)


def _full_square(h: int, w: int) -> tuple[float, float, float, float]:
    side = float(max(h, w))
    x0 = (w - side) / 2
    y0 = (h - side) / 2
    return (x0, y0, x0 + side, y0 + side)


def _validate_options(size: int, crop: str, crop_ratio: float, expand_ratio: float, fallback: str,
                      detector: str, pad_mode: str, face_index: int) -> None:
    if not isinstance(size, (int, np.integer)) or size < MIN_IMAGE_SIDE or size % 8:
        raise FaceError(f"size must be a multiple of 8 and at least {MIN_IMAGE_SIDE} (e.g. 512), got {size!r}")
    if crop not in CROP_MODES:
        raise FaceError(f"unknown crop mode {crop!r}; choose one of {', '.join(CROP_MODES)}")
    if not math.isfinite(crop_ratio):
        raise FaceError(f"crop_ratio must be finite, got {crop_ratio}")
    if crop == "face" and 0 < crop_ratio < 1.0:
        raise FaceError(f"crop_ratio must be >= 1 (the crop must contain the face) or <= 0 for the whole image, got {crop_ratio}")
    if not expand_ratio > 0:
        raise FaceError(f"expand_ratio must be > 0, got {expand_ratio}")
    if fallback not in FALLBACKS:
        raise FaceError(f"unknown fallback {fallback!r}; choose one of {', '.join(FALLBACKS)}")
    if detector not in DETECTORS:
        raise FaceError(f"unknown face detector {detector!r}; choose one of {', '.join(DETECTORS)}")
    if pad_mode not in PAD_MODES:
        raise FaceError(f"unknown pad_mode {pad_mode!r}; choose one of {', '.join(PAD_MODES)}")
    if face_index < 0:
        raise FaceError(f"face_index must be >= 0 (0 = largest face), got {face_index}")


def _select(boxes: Sequence[FaceBox], face_index: int) -> FaceBox | None:
    if not boxes:
        return None
    if face_index >= len(boxes):
        raise FaceError(
            f"face_index={face_index} but only {len(boxes)} face(s) were found "
            f"(valid: 0..{len(boxes) - 1}, 0 = largest)"
        )
    return boxes[face_index]


def _no_face_message(fallback: str, h: int, w: int) -> str:
    what = {
        "center": f"using a centred box ({FALLBACK_FACE_FRACTION:.0%} of the short side) as the face",
        "full": "using the whole image as the face region",
        "error": "",
    }[fallback]
    return (
        f"no face found on the {w}x{h} portrait (cartoon, profile, back of head or tiny face?); {what}. "
        f"For best results use a clear frontal photo, pick another detector, or pass a face box."
    )


def _build_crop(rgb: np.ndarray, face: FaceBox | None, *, size: int, crop: str, crop_ratio: float,
                expand_ratio: float, fallback: str, pad_mode: str, warning: str | None,
                faces_found: int, detector: str) -> PortraitCrop:
    h, w = rgb.shape[:2]
    fell_back = face is None
    full_mask = False
    if face is None:
        if fallback == "full":
            face_src = FaceBox(0.0, 0.0, float(w), float(h), 0.0)
            full_mask = True
        else:
            face_src = _fallback_box(h, w)
    else:
        face_src = face
    if crop == "full" or crop_ratio <= 0 or full_mask:
        crop_box = _full_square(h, w)
    else:
        side = max(crop_ratio * max(face_src.width, face_src.height), 8.0)
        cx, cy = face_src.centre
        crop_box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    scale = size / (crop_box[2] - crop_box[0])
    image = np.clip(_warp_square(rgb, crop_box, size, pad_mode), 0.0, 1.0).astype(np.float32)
    pc = PortraitCrop(
        image=image,
        mask=np.zeros((size, size), np.float32),
        face_box=face_src,
        source_box=None if fell_back else face_src,
        crop_box=tuple(float(v) for v in crop_box),  # type: ignore[arg-type]
        scale=float(scale),
        fell_back=fell_back,
        warning=warning,
        faces_found=faces_found,
        detector=detector,
        source_size=(h, w),
        pad_mode=pad_mode,
    )
    pc.face_box = pc.box_to_crop(face_src)
    pc.mask = np.ones((size, size), np.float32) if full_mask else face_region_mask(pc.face_box, size, size, expand_ratio)
    return pc


def prepare_portrait(
    image: Any,
    size: int = 512,
    *,
    crop: str = "face",
    crop_ratio: float = 2.0,
    expand_ratio: float = 1.2,
    face_index: int = 0,
    fallback: str = "center",
    detector: str = "auto",
    models_dir: str | None = None,
    pad_mode: str = "edge",
    faces: Sequence[FaceBox] | None = None,
) -> PortraitCrop:
    """Detect the face and return the square, model-ready portrait.

    Args:
        image: one portrait (see :func:`to_rgb_float` for accepted forms).
        size: output side in px (multiple of 8, >= 64).
        crop: ``"face"`` - square of ``crop_ratio * max(face w, h)`` centred on
            the face; ``"full"`` - the whole image letterboxed to a square
            (``crop_ratio <= 0`` means the same).
        crop_ratio: crop side over the face box's larger side (>= 1).
        expand_ratio: the face region mask is the face box scaled by this
            about its centre (room for head motion).
        face_index: which face, 0 = largest.  Out of range -> FaceError
            naming how many faces were found.
        fallback: what to do when no face is found - ``"center"``,
            ``"full"`` or ``"error"`` (see the module doc).  A
            :class:`FaceWarning` is issued for the first two.
        detector / models_dir: see :func:`detect_faces`.
        pad_mode: ``"edge"``, ``"constant"`` (black) or ``"reflect"`` for
            the part of the square outside the image.
        faces: skip detection and use these source-coordinate boxes (sorted
            largest first by this function).
    """
    _validate_options(size, crop, crop_ratio, expand_ratio, fallback, detector, pad_mode, face_index)
    rgb = to_rgb_float(image)
    pc = _prepare_rgb(rgb, size=size, crop=crop, crop_ratio=crop_ratio, expand_ratio=expand_ratio,
                      face_index=face_index, fallback=fallback, detector=detector, models_dir=models_dir,
                      pad_mode=pad_mode, faces=faces)
    if pc.warning:
        warnings.warn(pc.warning, FaceWarning, stacklevel=2)
    return pc


def _prepare_rgb(rgb: np.ndarray, *, size: int, crop: str, crop_ratio: float, expand_ratio: float,
                 face_index: int, fallback: str, detector: str, models_dir: Any, pad_mode: str,
                 faces: Sequence[FaceBox] | None) -> PortraitCrop:
    h, w = rgb.shape[:2]
    _check_size(h, w)
    if faces is None:
        # Warnings from the detector (e.g. cascades missing) are folded into
        # the crop's warning so callers see one coherent message.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            boxes = _detect_rgb(rgb, detector, models_dir)
        notes = [str(c.message) for c in caught if issubclass(c.category, FaceWarning)]
        for c in caught:
            if not issubclass(c.category, FaceWarning):
                warnings.warn_explicit(c.message, c.category, c.filename, c.lineno)
    else:
        boxes = sorted((b.clipped(w, h) for b in faces), key=lambda b: b.area, reverse=True)
        boxes = [b for b in boxes if b.area > 0]
        notes = []
    face = _select(boxes, face_index)
    if face is None:
        if fallback == "error":
            raise FaceError(
                "no face found on the portrait" + (f" ({' '.join(notes)})" if notes else "")
                + "; use fallback='center' or 'full', another detector, or a clearer frontal photo"
            )
        notes.append(_no_face_message(fallback, h, w))
    return _build_crop(rgb, face, size=size, crop=crop, crop_ratio=crop_ratio, expand_ratio=expand_ratio,
                       fallback=fallback, pad_mode=pad_mode, warning=" ".join(notes) or None,
                       faces_found=len(boxes), detector=detector)


def _frames(images: Any) -> list[np.ndarray]:
    if hasattr(images, "detach") and hasattr(images, "cpu"):
        images = images.detach().cpu()
        if str(images.dtype) in ("torch.bfloat16", "torch.float16"):
            images = images.float()
        images = images.numpy()
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return [to_rgb_float(f) for f in images]
        return [to_rgb_float(images)]
    frames = [to_rgb_float(f) for f in images]
    if not frames:
        raise FaceError("prepare_portraits() got no images")
    return frames


def prepare_portraits(
    images: Any,
    size: int = 512,
    *,
    union: bool = False,
    crop: str = "face",
    crop_ratio: float = 2.0,
    expand_ratio: float = 1.2,
    face_index: int = 0,
    fallback: str = "center",
    detector: str = "auto",
    models_dir: str | None = None,
    pad_mode: str = "edge",
) -> list[PortraitCrop]:
    """:func:`prepare_portrait` over a batch (``[B, H, W, C]`` ComfyUI IMAGE,
    a list of frames, numpy or torch).

    ``union=False``: every frame is cropped around its own face.
    ``union=True``: faces are detected on every frame and the union of the
    selected boxes is used as the face for *all* frames, so every frame gets
    the same crop and one mask covering the face wherever it goes (what
    EMO's face locator expects over a clip).  Frames without a face are
    ignored for the union (noted in the warning); if no frame has one the
    fallback applies to all.  All frames must then share one size.

    At most one :class:`FaceWarning` is issued for the whole batch.
    """
    _validate_options(size, crop, crop_ratio, expand_ratio, fallback, detector, pad_mode, face_index)
    frames = _frames(images)
    opts = dict(size=size, crop=crop, crop_ratio=crop_ratio, expand_ratio=expand_ratio, fallback=fallback,
                pad_mode=pad_mode)
    out: list[PortraitCrop] = []
    if not union:
        for i, rgb in enumerate(frames):
            try:
                out.append(_prepare_rgb(rgb, face_index=face_index, detector=detector, models_dir=models_dir,
                                        faces=None, **opts))
            except FaceError as exc:
                raise FaceError(f"frame {i}: {exc}") from None
        flagged = [(i, pc.warning) for i, pc in enumerate(out) if pc.warning]
        if flagged:
            idx = ", ".join(str(i) for i, _ in flagged[:20]) + (" ..." if len(flagged) > 20 else "")
            warnings.warn(f"{len(flagged)} of {len(out)} frame(s) (index {idx}): {flagged[0][1]}", FaceWarning,
                          stacklevel=2)
        return out

    shapes = {f.shape[:2] for f in frames}
    if len(shapes) != 1:
        raise FaceError(f"union=True needs frames of one size, got {sorted(shapes)} (H, W)")
    h, w = frames[0].shape[:2]
    _check_size(h, w)
    selected: list[FaceBox] = []
    missing: list[int] = []
    notes: list[str] = []
    for i, rgb in enumerate(frames):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            boxes = _detect_rgb(rgb, detector, models_dir)
        notes.extend(str(c.message) for c in caught if issubclass(c.category, FaceWarning))
        if not boxes:
            missing.append(i)
            continue
        try:
            selected.append(_select(boxes, face_index))  # type: ignore[arg-type]
        except FaceError as exc:
            raise FaceError(f"frame {i}: {exc}") from None
    notes = list(dict.fromkeys(notes))
    if selected:
        face: FaceBox | None = union_box(selected)
        if missing:
            notes.append(f"no face found on frame(s) {missing[:20]}{' ...' if len(missing) > 20 else ''}; "
                         f"the union of the other {len(selected)} frame(s) is used")
    else:
        face = None
        if fallback == "error":
            raise FaceError(f"no face found on any of the {len(frames)} frame(s); use fallback='center' or 'full'")
        notes.append(_no_face_message(fallback, h, w))
    warning = " ".join(notes) or None
    for rgb in frames:
        out.append(_build_crop(rgb, face, warning=warning, faces_found=len(selected), detector=detector, **opts))
    if warning:
        warnings.warn(warning, FaceWarning, stacklevel=2)
    return out

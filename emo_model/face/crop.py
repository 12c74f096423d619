"""The square, model-ready crop of the portrait, and what happens when no face is found.

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

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .boxes import FaceBox, FaceError, FaceWarning, union_box
from .detectors import DETECTORS, _detect_rgb
from .image import MIN_IMAGE_SIDE, _check_size, to_rgb_float
from .masks import face_region_mask

FALLBACKS = ("center", "full", "error")
CROP_MODES = ("face", "full")
PAD_MODES = ("edge", "constant", "reflect")

#: Side of the fallback face box as a fraction of the image's short side.
FALLBACK_FACE_FRACTION = 0.4

_BORDER = {
    "edge": cv2.BORDER_REPLICATE,
    "constant": cv2.BORDER_CONSTANT,
    "reflect": cv2.BORDER_REFLECT_101,
}





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
    # set by the family's original preprocessing (emo_model/face/front_ends.py): what ran, in words, and its
    # (full, face, lip) region masks per feature-map size {(h, w): [3, h, w]} when it makes them
    front_end: str = ""
    region_masks: dict | None = None
    # the whole picture (uint8 RGB) when the original's own framing is used (front_ends.whole_picture): its landmarks and
    # identity embedding are computed on it, as the original computes them
    original_picture: np.ndarray | None = None

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

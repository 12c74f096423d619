"""Paste-back: the animated square crop composited into the source picture, at the picture's own size.

The face step (:func:`~.crop.prepare_portrait`) cut a square ``crop_box`` (source coordinates, side
``size / scale``) around the face; the model animated that square.  :class:`PasteBack` maps every
generated frame back through the same box and blends it into the source picture:

* **Blend region**: the face box (source coordinates) grown by ``grow`` about its centre (room for
  head motion), kept inside the crop box so that only generated pixels are used, then feathered:
  the weight is 1 inside, falls smoothly (smoothstep of the distance) to exactly 0 at ``feather``
  x the face's larger side outside it.  The weight is computed analytically, so it is *exactly*
  0 beyond the ring; every pixel there is copied from the source, bit for bit, in every frame.
* **Colour match at the seam**, measured once on the first frame and applied to every frame, so nothing
  flickers and the result does not depend on how the frames are batched (drift over a long video is the
  sampler's ``colour_match``):

  - ``colour="local"`` (default): an offset field, source minus generated over the feather ring, spread
    inwards by normalised Gaussian averaging (sigma :data:`LOCAL_SIGMA` x the pasted box's larger side)
    and falling back to the ring's mean offset far from it; so the colours meet the source where they
    touch it, place by place.
  - ``colour="mean"``: one shift in CIE Lab, so that the mean over the ring equals the source's (the
    statistics of :func:`~emo_model.sampling.colour_match.colour_stats`).
  - ``colour="none"``: pasted as generated.
* **Size**: the output has the source's size, padded by one replicated row/column where a side is
  odd (H.264 needs even sides; the same padding the video writer uses).  Pictures larger than
  :data:`MAX_SIDE` px on a side are refused with one line (downscale them, or keep the crop).
* **Several faces / no face**: the crop's own choice (``face_index``: 0 = the largest face,
  then by decreasing area); with the no-face fallback the fallback box (a centred square of
  40 % of the short side, or the whole picture for ``fallback="full"``) is the face.

**A scene video as the background, tracked**: with one placement per background picture (the face step run
on each frame of the scene), :func:`track_placements` fills frames where no face was found from the nearest
found one and smooths the boxes over time (a centred moving average of centre and side, so detector jitter does
not shake the pasted face); frame ``i`` is then pasted at its own box into picture ``i``, the colour match
measured on each frame's own seam (the scene's light may change).

Frames may come at any square size (an upscaler may run between the sampler and paste-back); the
mapping uses the frame's own side.  Memory: only the blend region's bounding box is resampled;
a full-size float32 frame costs ``H * W * 3 * 4`` bytes (24.9 MB at 1920x1080), uint8 a quarter.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..sampling.colour_match import colour_stats
from .boxes import FaceBox, FaceError
from .crop import PortraitCrop
from .image import to_rgb_float

#: Largest source side paste-back accepts (the video is written at the source's size).
MAX_SIDE = 4096
COLOUR_MODES = ("local", "mean", "none")
LOCAL_SIGMA = 0.05
DEFAULT_GROW = 1.6
DEFAULT_FEATHER = 0.2


def frame_megabytes(width: int, height: int, bytes_per_value: int = 4) -> float:
    """What one full-size RGB frame costs in MB (float32 IMAGE: 4 bytes per value, uint8 video: 1)."""
    return width * height * 3 * bytes_per_value / 1e6


@dataclass
class CropPlacement:
    """Where the model's square crop sits in the source picture: what paste-back needs.

    ``crop_box`` (x0, y0, x1, y1) source coordinates of the square (may extend past the picture),
    ``scale`` crop px per source px at the crop's ``size``, ``face_box`` the face in source
    coordinates (the fallback box when no face was found, ``fell_back`` then True),
    ``source_size`` (height, width), ``mask`` the face-region mask in crop coordinates.
    """

    crop_box: tuple[float, float, float, float]
    scale: float
    face_box: FaceBox
    source_size: tuple[int, int]
    size: int
    fell_back: bool = False
    mask: np.ndarray | None = None

    @classmethod
    def from_crop(cls, crop: PortraitCrop) -> CropPlacement:
        face = crop.source_box if crop.source_box is not None else crop.box_to_source(crop.face_box)
        return cls(tuple(float(v) for v in crop.crop_box), float(crop.scale), face,  # type: ignore[arg-type]
                   tuple(int(v) for v in crop.source_size), crop.size, bool(crop.fell_back), crop.mask)  # type: ignore[arg-type]


def even_size(height: int, width: int) -> tuple[int, int]:
    return height + height % 2, width + width % 2


def check_source_size(height: int, width: int, max_side: int = MAX_SIDE) -> None:
    if max(height, width) > max_side:
        raise FaceError(
            f"the picture is {width}x{height}; full-frame output is capped at {max_side} px on a side "
            f"({frame_megabytes(width, height):.0f} MB per float frame); downscale it, or keep the square crop (--frame crop)"
        )


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def blend_weights(placement: CropPlacement, grow: float = DEFAULT_GROW, feather: float = DEFAULT_FEATHER) -> np.ndarray:
    """``H x W`` float32 weights of the generated frame: 1 in the grown face region, exactly 0 outside
    the feather ring, 0 outside the crop box."""
    if not grow > 0 or not np.isfinite(grow):
        raise FaceError(f"grow must be > 0 (1 = the face box, 1.6 = 60 % larger), got {grow}")
    if not 0 <= feather <= 2 or not np.isfinite(feather):
        raise FaceError(f"feather must be between 0 and 2 (a fraction of the face size), got {feather}")
    h, w = placement.source_size
    face = placement.face_box
    fw = max(face.width, face.height, 1.0)
    ring = feather * fw
    g = face.expanded(grow)
    cx0, cy0, cx1, cy1 = placement.crop_box
    # the ring must stay on generated pixels: shrink the crop box by the ring and clip the region to it
    x0, y0 = max(g.x0, cx0 + ring), max(g.y0, cy0 + ring)
    x1, y1 = min(g.x1, cx1 - ring), min(g.y1, cy1 - ring)
    if x1 < x0:
        x0 = x1 = 0.5 * (cx0 + cx1)
    if y1 < y0:
        y0 = y1 = 0.5 * (cy0 + cy1)
    xs = np.arange(w, dtype=np.float64) + 0.5
    ys = np.arange(h, dtype=np.float64) + 0.5
    dx = np.maximum(np.maximum(x0 - xs, xs - x1), 0.0)
    dy = np.maximum(np.maximum(y0 - ys, ys - y1), 0.0)
    d = np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)
    if ring > 0:
        weights = _smoothstep(1.0 - d / ring)
    else:
        weights = (d == 0).astype(np.float64)
    return weights.astype(np.float32)


class PasteBack:
    """Composites generated square frames into ``source`` (any picture :func:`to_rgb_float` takes).

    ``composite(frames)`` -> ``[N, H', W', 3]`` (``H'``, ``W'`` the source size made even), float32
    0..1 or uint8 (``dtype=np.uint8``, for a video writer); ``iter_composite`` yields one frame at a time
    so that a caller can stream full-size frames to a writer with memory bounded by one frame.
    """

    def __init__(self, source: Any, placement: CropPlacement, *, grow: float = DEFAULT_GROW, feather: float = DEFAULT_FEATHER,
                 colour: str = "local", max_side: int = MAX_SIDE) -> None:
        if colour not in COLOUR_MODES:
            raise FaceError(f"unknown colour mode {colour!r}; choose one of {', '.join(COLOUR_MODES)}")
        rgb = to_rgb_float(source)
        h, w = rgb.shape[:2]
        check_source_size(h, w, max_side)
        if (h, w) != tuple(placement.source_size):
            ph, pw = placement.source_size
            raise FaceError(f"the source picture is {w}x{h} but the face crop was made on a {pw}x{ph} picture; "
                            "give paste-back the picture the face step cropped")
        self.placement, self.colour = placement, colour
        self.height, self.width = h, w
        self.out_height, self.out_width = even_size(h, w)
        self.weights = blend_weights(placement, grow, feather)
        ys, xs = np.nonzero(self.weights > 0)
        if len(ys):
            self.roi = (slice(int(ys.min()), int(ys.max()) + 1), slice(int(xs.min()), int(xs.max()) + 1))
        else:
            self.roi = (slice(0, 0), slice(0, 0))
        self.source = np.ascontiguousarray(np.pad(rgb, ((0, self.out_height - h), (0, self.out_width - w), (0, 0)), mode="edge"))
        self._source_u8 = np.clip(self.source * 255.0 + 0.5, 0, 255).astype(np.uint8)
        self._alpha = self.weights[self.roi][..., None]
        self._ring = (self._alpha[..., 0] > 0) & (self._alpha[..., 0] < 1)
        self._src_roi = self.source[self.roi]
        self._src_mean = colour_stats(self._src_roi[self._ring][None])[0] if self._ring.any() else None
        self._shift: np.ndarray | None = None
        self._field: np.ndarray | None = None

    @property
    def blended(self) -> np.ndarray:
        """``H x W`` bool: the pixels paste-back may change (everything else is the source's)."""
        return self.weights > 0

    def _warp(self, frame: np.ndarray) -> np.ndarray:
        """One square frame (crop coordinates) -> the ROI in source coordinates."""
        side = frame.shape[0]
        cx0, cy0, cx1, _ = self.placement.crop_box
        s = side / (cx1 - cx0)  # frame px per source px
        if s >= 2.0:  # shrink by an integer factor with area averaging first (anti-aliasing)
            k = int(s)
            small = max(1, round(side / k))
            frame = cv2.resize(frame, (small, small), interpolation=cv2.INTER_AREA)
            s = s * small / side
        ry, rx = self.roi
        # destination pixel centre (rx0 + i + 0.5) -> frame index s * (x - cx0) - 0.5
        m = np.array([[s, 0.0, s * (rx.start + 0.5 - cx0) - 0.5], [0.0, s, s * (ry.start + 0.5 - cy0) - 0.5]], np.float64)
        flag = cv2.INTER_CUBIC if s < 1.0 else cv2.INTER_LINEAR
        out = cv2.warpAffine(np.ascontiguousarray(frame), m, (rx.stop - rx.start, ry.stop - ry.start),
                             flags=flag | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
        return np.clip(out, 0.0, 1.0)

    def _frames(self, frames: Any) -> np.ndarray:
        if hasattr(frames, "detach"):
            frames = frames.detach().cpu().float().numpy()
        arr = np.asarray(frames)
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / np.float32(255.0)
        arr = arr.astype(np.float32, copy=False)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[1] != arr.shape[2] or arr.shape[-1] not in (3, 4):
            raise FaceError(f"paste-back needs square RGB frames [N, S, S, 3] from the crop, got shape {tuple(arr.shape)}")
        return arr[..., :3]

    def _correct(self, warped: np.ndarray) -> np.ndarray:
        """Correct the frames' colours towards the source at the ring (measured on the first frame)."""
        if self.colour == "none" or self._src_mean is None:
            return warped
        if self.colour == "local":
            if self._field is None:
                ring = self._ring.astype(np.float32)
                diff = (self._src_roi - warped[0]) * ring[..., None]
                sigma = max(1.0, LOCAL_SIGMA * max(ring.shape))
                spread = cv2.GaussianBlur(diff, (0, 0), sigma)
                weight = cv2.GaussianBlur(ring, (0, 0), sigma)[..., None]
                mean = diff.sum((0, 1)) / max(float(ring.sum()), 1.0)
                eps = 1e-2  # where the ring is far, the field falls back to its mean offset
                self._field = ((spread + eps * mean) / (weight + eps)).astype(np.float32)
            return np.clip(warped + self._field, 0.0, 1.0)
        if self._shift is None:
            self._shift = (self._src_mean - colour_stats(warped[0][self._ring][None])[0]).astype(np.float32)
        lab = cv2.cvtColor(np.ascontiguousarray(warped.reshape(-1, warped.shape[2], 3)), cv2.COLOR_RGB2Lab) + self._shift
        return np.clip(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB), 0.0, 1.0).reshape(warped.shape)

    def _background(self, picture: Any) -> np.ndarray:
        rgb = to_rgb_float(picture)
        if rgb.shape[:2] != (self.height, self.width):
            raise FaceError(f"a background picture is {rgb.shape[1]}x{rgb.shape[0]}, the source is {self.width}x{self.height}; "
                            "a background video must have the source's size")
        return np.pad(rgb, ((0, self.out_height - self.height), (0, self.out_width - self.width), (0, 0)), mode="edge")

    def iter_composite(self, frames: Any, dtype: Any = np.float32, backgrounds: Any = None) -> Iterator[np.ndarray]:
        """Full-size frames, one at a time (``[H', W', 3]``, float32 0..1 or uint8).

        ``backgrounds``: pictures of the source's size, one per frame (a scene video): frame ``i`` is pasted
        into ``backgrounds[i]`` instead of the source (the same crop box in every frame: no tracking).
        """
        arr = self._frames(frames)
        if not len(arr):
            return
        if self.roi[0].stop == self.roi[0].start:
            warped = np.zeros((len(arr), 0, 0, 3), np.float32)
        else:
            warped = self._correct(np.stack([self._warp(f) for f in arr]))
        u8 = np.dtype(dtype) == np.uint8
        for i, roi in enumerate(warped):
            if backgrounds is None:
                source, source_u8 = self.source, self._source_u8
            else:
                source = self._background(backgrounds[i])
                source_u8 = np.clip(source * 255.0 + 0.5, 0, 255).astype(np.uint8) if u8 else None
            src_roi = source[self.roi]
            blended = src_roi + self._alpha * (roi - src_roi)
            if u8:
                out = source_u8.copy()
                out[self.roi] = np.clip(blended * 255.0 + 0.5, 0, 255).astype(np.uint8)
                # the weight-0 pixels of the box are the source's exactly (no float round trip)
                out[self.roi][self._alpha[..., 0] == 0] = source_u8[self.roi][self._alpha[..., 0] == 0]
            else:
                out = source.copy()
                out[self.roi] = blended
            yield out

    def composite(self, frames: Any, dtype: Any = np.float32) -> np.ndarray:
        """The whole batch at once: ``[N, H', W', 3]``."""
        outs = list(self.iter_composite(frames, dtype))
        if not outs:
            return np.zeros((0, self.out_height, self.out_width, 3), np.dtype(dtype))
        return np.stack(outs)


TRACK_WINDOW = 5  # frames in the moving average of the tracked boxes (centred; 5 = +-2 frames)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average along axis 0; near the ends the window shrinks symmetrically (frame 0 is its own
    average), so a face moving at constant speed is not pulled towards the middle of the video."""
    if window <= 1 or len(values) < 3:
        return values.copy()
    csum = np.concatenate([np.zeros((1,) + values.shape[1:]), np.cumsum(values, axis=0)])
    idx = np.arange(len(values))
    half = np.minimum(np.minimum(idx, len(values) - 1 - idx), window // 2)
    lo, hi = idx - half, idx + half + 1
    return (csum[hi] - csum[lo]) / (hi - lo)[:, None]


def track_placements(placements: list[CropPlacement], window: int = TRACK_WINDOW) -> list[CropPlacement]:
    """One placement per frame of a scene video -> the tracked ones: frames where no face was found take the
    nearest frame's box that found one (all kept as they are when none did), then crop and face boxes are smoothed
    over ``window`` frames (centre and side of the square crop, each corner of the face box); ``scale`` follows
    the smoothed side."""
    if not placements:
        return []
    found = [i for i, p in enumerate(placements) if not p.fell_back]
    if not found:
        return list(placements)
    filled = [placements[min(found, key=lambda j, i=i: (abs(j - i), j))] for i in range(len(placements))]
    crops = np.array([p.crop_box for p in filled], np.float64)
    centre = (crops[:, :2] + crops[:, 2:]) / 2.0
    side = crops[:, 2] - crops[:, 0]
    faces = np.array([p.face_box.as_tuple()[:4] for p in filled], np.float64)
    centre, side, faces = _smooth(centre, window), _smooth(side[:, None], window)[:, 0], _smooth(faces, window)
    out = []
    for p, c, sd, f, original in zip(filled, centre, side, faces, placements):
        box = (c[0] - sd / 2.0, c[1] - sd / 2.0, c[0] + sd / 2.0, c[1] + sd / 2.0)
        out.append(CropPlacement(tuple(float(v) for v in box), float(p.size / sd), FaceBox(*(float(v) for v in f)),  # type: ignore[arg-type]
                                 tuple(p.source_size), p.size, bool(original.fell_back), p.mask))  # type: ignore[arg-type]
    return out


def paste_back(frames: Any, source: Any, crop: PortraitCrop | CropPlacement, **options: Any) -> np.ndarray:
    """One call: generated square ``frames`` -> full-size frames of ``source`` (see :class:`PasteBack`)."""
    placement = crop if isinstance(crop, CropPlacement) else CropPlacement.from_crop(crop)
    return PasteBack(source, placement, **options).composite(frames)

"""Is this the demo's own sample portrait? If not, the demo model says what it is.

The demo model is a 64x64 toy trained on synthetic cartoon faces. Given a real photo it draws an
unrecognisable cartoon, which looks like a bug unless it says so at run time. The check is done where
the portrait is encoded, so the input may be the shipped ``portrait.png`` itself or any square crop of
it (the command line's face crop, EMO Face Mask's crop at any ``crop_ratio``, padded or not).

How: the image is padded to a square and shrunk to 32x32; the shipped portrait is searched at every
scale from 0.2x to 2x of that crop size (edges replicated, as the face crop pads) with normalised
cross-correlation on colour; at the best place the mean absolute colour difference must be small
too. Crops of the shipped portrait measure >= 0.93 correlation and <= 0.04 mean difference; other
photos and other synthetic faces <= 0.69 and >= 0.15 (skimage's astronaut, cat, coffee, camera,
rocket, six synthetic looks), so the thresholds below sit far from both.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..families import published_labels

SIDE = 32  # px of the compared thumbnails
SCALES = np.geomspace(0.2, 2.0, 28)  # crop side / portrait side
MIN_CORRELATION = 0.85
MAX_MEAN_DIFFERENCE = 0.08  # on 0..1 colour

NOTICE = (
    "the built-in demo model is a 64x64 toy trained on synthetic cartoon faces, not a portrait model: on your "
    "own image it draws a cartoon, not your face. For real results put a published family's weights (" + published_labels() + ") in "
    "models/emo (README, 'Model files and where they go')."
)


def _as_rgb_float(image) -> np.ndarray:
    arr = np.asarray(image.detach().cpu().numpy() if hasattr(image, "detach") else image, dtype=np.float32)
    if arr.ndim == 4:
        arr = arr[0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.max(initial=0.0) > 1.5:  # 0..255
        arr = arr / 255.0
    return np.ascontiguousarray(arr[..., :3])


def _thumbnail(image: np.ndarray) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    s = max(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    square = cv2.copyMakeBorder(image, top, s - h - top, left, s - w - left, cv2.BORDER_CONSTANT, value=0)
    return cv2.resize(square, (SIDE, SIDE), interpolation=cv2.INTER_AREA)


@lru_cache(maxsize=1)
def _searched_portraits() -> tuple[np.ndarray, ...]:
    """The shipped portrait at every searched scale, with a replicated border for crops that overflow it."""
    import cv2

    from . import portrait_path

    bgr = cv2.imread(str(portrait_path()), cv2.IMREAD_COLOR)
    if bgr is None:
        return ()
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    out = []
    for scale in SCALES:
        side = max(4, int(round(SIDE / scale)))
        scaled = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_AREA)
        m = max(SIDE, side // 2)
        out.append(cv2.copyMakeBorder(scaled, m, m, m, m, cv2.BORDER_REPLICATE))
    return tuple(out)


def match_demo_portrait(image) -> tuple[float, float]:
    """(best correlation, mean absolute colour difference there) of ``image`` against the shipped portrait."""
    import cv2

    thumb = _thumbnail(_as_rgb_float(image))
    best = (-1.0, float("inf"))
    for canvas in _searched_portraits():
        scores = cv2.matchTemplate(canvas, thumb, cv2.TM_CCOEFF_NORMED)
        _, peak, _, (x, y) = cv2.minMaxLoc(scores)
        if peak > best[0]:
            best = (float(peak), float(np.abs(canvas[y : y + SIDE, x : x + SIDE] - thumb).mean()))
    return best


def is_demo_portrait(image) -> bool:
    """True for the shipped sample portrait or a crop of it; ``image`` [H, W, 3] (0..1 or 0..255)."""
    correlation, difference = match_demo_portrait(image)
    return correlation >= MIN_CORRELATION and difference <= MAX_MEAN_DIFFERENCE


def portrait_notice(image) -> str | None:
    """The one-line notice for a portrait the demo model was not made for; None for the sample portrait."""
    return None if is_demo_portrait(image) else NOTICE

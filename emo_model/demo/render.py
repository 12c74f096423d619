"""Drawing the synthetic faces: random looks (shapes, colours) and the renderer that paints one frame from a look and its tracks."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

SIZE = 160  # side of the rendered (source) video


SUPERSAMPLE = 2


MOUTH_OPEN = 0.09  # widest opening of the mouth / face height


TEETH = True


SKIN_TONES = (
    (255, 222, 196), (247, 208, 170), (236, 188, 150), (224, 172, 120), (208, 150, 100),
    (180, 120, 80), (150, 96, 60), (118, 74, 46), (236, 200, 160), (214, 170, 140),
)


HAIR_COLOURS = (
    (28, 20, 16), (58, 38, 24), (96, 62, 34), (140, 96, 52), (196, 156, 96),
    (150, 58, 26), (110, 110, 110), (200, 200, 196), (40, 30, 50),
)


HAIR_STYLES = ("short", "long", "bun", "fringe", "crew")


@dataclass
class Look:
    """One synthetic person: everything :func:`render_frame` needs besides the per-frame state."""

    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    hair_style: str
    iris: tuple[float, float, float]
    lip: tuple[float, float, float]
    shirt: tuple[float, float, float]
    bg: tuple[tuple[float, float, float], tuple[float, float, float]]
    bg_angle: float
    bg_shapes: list = field(default_factory=list)  # (kind, cx, cy, sx, sy, colour, softness)
    texture_seed: int = 0
    face_w: float = 0.31  # face width / frame side
    face_ratio: float = 1.3  # face height / width
    face_cx: float = 0.5
    face_cy: float = 0.44
    eye_sep: float = 0.21  # eye centre offset / face width
    eye_size: float = 1.0
    brow: float = 1.0  # brow thickness factor
    mouth_w: float = 0.22  # mouth half width / face width
    chin: float = 0.0  # 0 round .. 1 pointed

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @property
    def face_height(self) -> float:
        return self.face_w * self.face_ratio


def _colour(values, jitter: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(np.clip(v * j, 0, 255)) for v, j in zip(values, jitter))


def sample_look(rng: np.random.Generator) -> Look:
    """A random look (no detectability check; see :func:`random_look`)."""
    skin = np.array(SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], np.float64) * rng.uniform(0.94, 1.04, 3)
    hair = np.array(HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))], np.float64) * rng.uniform(0.85, 1.15, 3)
    lip = skin * np.array([0.78, 0.48, 0.5]) * rng.uniform(0.9, 1.1)
    shapes = []
    for _ in range(int(rng.integers(0, 5))):
        shapes.append(
            (
                str(rng.choice(["ellipse", "rect"])),
                float(rng.uniform(0, 1)),
                float(rng.uniform(0, 1)),
                float(rng.uniform(0.08, 0.35)),
                float(rng.uniform(0.08, 0.35)),
                tuple(float(v) for v in rng.uniform(15, 240, 3)),
                float(rng.uniform(0.5, 6.0)),
            )
        )
    return Look(
        skin=_colour(skin, np.ones(3)),
        hair=_colour(hair, np.ones(3)),
        hair_style=str(rng.choice(HAIR_STYLES)),
        iris=tuple(float(v) for v in rng.uniform(20, 120, 3)),
        lip=_colour(lip, np.ones(3)),
        shirt=tuple(float(v) for v in rng.uniform(15, 240, 3)),
        bg=(tuple(float(v) for v in rng.uniform(10, 245, 3)), tuple(float(v) for v in rng.uniform(10, 245, 3))),
        bg_angle=float(rng.uniform(0, 2 * np.pi)),
        bg_shapes=shapes,
        texture_seed=int(rng.integers(1 << 31)),
        face_w=float(rng.uniform(0.29, 0.34)),
        face_ratio=float(rng.uniform(1.22, 1.38)),
        face_cx=float(rng.uniform(0.46, 0.54)),
        face_cy=float(rng.uniform(0.42, 0.47)),
        eye_sep=float(rng.uniform(0.19, 0.23)),
        eye_size=float(rng.uniform(0.9, 1.15)),
        brow=float(rng.uniform(0.8, 1.4)),
        mouth_w=float(rng.uniform(0.19, 0.25)),
        chin=float(rng.uniform(0.0, 1.0)),
    )


def random_look(rng: np.random.Generator, *, size: int = SIZE, tries: int = 12) -> Look:
    """A random look that the Haar face detector finds on its neutral render (drawn again otherwise).

    After ``tries`` misses the last look is kept (``preprocess`` then drops its segments if the detector
    keeps missing it, as it would for a real video)."""
    from ..face import detect_faces

    look = sample_look(rng)
    for _ in range(tries):
        frame = Renderer(look, size).frame(mouth=0.15)
        if detect_faces(frame, detector="haar"):
            return look
        look = sample_look(rng)
    return look


def _ellipse_mask(shape: tuple[int, int], cx, cy, ax, ay, angle=0.0, blur=1.0) -> np.ndarray:
    m = np.zeros(shape, np.float32)
    cv2.ellipse(
        m,
        (int(round(cx * 16)), int(round(cy * 16))),
        (max(1, int(round(ax * 16))), max(1, int(round(ay * 16)))),
        float(angle), 0, 360, 1.0, -1, cv2.LINE_AA, 4,
    )
    if blur > 0:
        m = cv2.GaussianBlur(m, (0, 0), blur)
    return m


def _paint(img: np.ndarray, mask: np.ndarray, colour, alpha: np.ndarray | None = None) -> None:
    m = mask[..., None]
    img *= 1 - m
    img += m * np.asarray(colour, np.float32)
    if alpha is not None:
        np.maximum(alpha, mask, out=alpha)


class Renderer:
    """Draws one look: the static parts once, the mouth / eyes / pose per frame."""

    def __init__(self, look: Look, size: int = SIZE):
        self.look, self.size = look, size
        s = self.S = size * SUPERSAMPLE
        self.fw = look.face_w * s
        self.fh = self.fw * look.face_ratio
        self.cx, self.cy = look.face_cx * s, look.face_cy * s
        self.background = self._background()
        self.head, self.alpha = self._head()

    # ---- static layers ----------------------------------------------------------------------------
    def _background(self) -> np.ndarray:
        lk, s = self.look, self.S
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
        t = np.clip(0.5 + (xx - 0.5) * math.cos(lk.bg_angle) + (yy - 0.5) * math.sin(lk.bg_angle), 0, 1)[..., None]
        img = (1 - t) * np.array(lk.bg[0], np.float32) + t * np.array(lk.bg[1], np.float32)
        for kind, cx, cy, sx, sy, colour, soft in lk.bg_shapes:
            m = np.zeros((s, s), np.float32)
            if kind == "rect":
                cv2.rectangle(m, (int((cx - sx) * s), int((cy - sy) * s)), (int((cx + sx) * s), int((cy + sy) * s)), 1.0, -1)
                m = cv2.GaussianBlur(m, (0, 0), soft * SUPERSAMPLE)
            else:
                m = _ellipse_mask((s, s), cx * s, cy * s, sx * s, sy * s, blur=soft * SUPERSAMPLE)
            _paint(img, 0.8 * m, colour)
        tex = np.random.default_rng(lk.texture_seed).standard_normal((s // 8, s // 8, 3)).astype(np.float32)
        tex = cv2.resize(tex, (s, s), interpolation=cv2.INTER_CUBIC)
        img += 3.0 * tex
        # body: shoulders and neck (static; the head moves over them)
        skin = np.array(lk.skin, np.float32)
        body = _ellipse_mask((s, s), self.cx, self.cy + self.fh * 1.55, self.fw * 1.55, self.fh * 0.75, blur=SUPERSAMPLE)
        _paint(img, body, lk.shirt)
        neck = np.zeros((s, s), np.float32)
        cv2.rectangle(neck, (int(self.cx - self.fw * 0.24), int(self.cy)), (int(self.cx + self.fw * 0.24), int(self.cy + self.fh * 0.95)), 1.0, -1)
        neck = cv2.GaussianBlur(neck, (0, 0), SUPERSAMPLE)
        _paint(img, neck, skin * 0.78)
        collar = _ellipse_mask((s, s), self.cx, self.cy + self.fh * 0.93, self.fw * 0.3, self.fh * 0.08, blur=SUPERSAMPLE)
        _paint(img, collar * body, np.array(lk.shirt, np.float32) * 0.7)
        return img

    def _head(self) -> tuple[np.ndarray, np.ndarray]:
        lk, s = self.look, self.S
        fw, fh, cx, cy = self.fw, self.fh, self.cx, self.cy
        img = np.zeros((s, s, 3), np.float32)
        alpha = np.zeros((s, s), np.float32)
        hair = np.array(lk.hair, np.float32)
        skin = np.array(lk.skin, np.float32)
        style = lk.hair_style
        # hair behind the head
        if style == "long":
            for side in (-1, 1):
                back = _ellipse_mask((s, s), cx + side * fw * 0.42, cy + fh * 0.2, fw * 0.24, fh * 0.62, blur=SUPERSAMPLE)
                _paint(img, back, hair, alpha)
        if style != "crew":
            top = _ellipse_mask((s, s), cx, cy - fh * 0.1, fw * 0.6, fh * 0.56, blur=SUPERSAMPLE)
            _paint(img, top, hair, alpha)
        if style == "bun":
            bun = _ellipse_mask((s, s), cx, cy - fh * 0.66, fw * 0.25, fw * 0.22, blur=SUPERSAMPLE)
            _paint(img, bun, hair, alpha)
        # ears
        for side in (-1, 1):
            ear = _ellipse_mask((s, s), cx + side * fw * 0.5, cy + fh * 0.02, fw * 0.08, fh * 0.11, blur=SUPERSAMPLE)
            _paint(img, ear, skin * 0.85, alpha)
        # face: an ellipse, a narrower lower ellipse for a pointed chin; lit centre, darker rim
        face = _ellipse_mask((s, s), cx, cy, fw / 2, fh / 2, blur=0)
        if lk.chin > 0:
            lower = _ellipse_mask((s, s), cx, cy + fh * 0.12, fw * (0.5 - 0.12 * lk.chin), fh * (0.38 + 0.04 * lk.chin), blur=0)
            upper = np.zeros_like(face)
            upper[: int(cy + fh * 0.05)] = 1
            face = face * np.maximum(upper, lower)
        face = cv2.GaussianBlur(face, (0, 0), SUPERSAMPLE * 0.8)
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        r2 = ((xx - cx) / (fw / 2)) ** 2 + ((yy - cy + fh * 0.05) / (fh / 2)) ** 2
        shade = np.clip(1.1 - 0.28 * r2, 0.72, 1.12)[..., None]
        img *= 1 - face[..., None]
        img += face[..., None] * skin * shade
        np.maximum(alpha, face, out=alpha)
        # hair over the forehead
        if style == "fringe":
            fringe = _ellipse_mask((s, s), cx - fw * 0.12, cy - fh * 0.42, fw * 0.5, fh * 0.18, angle=-12, blur=SUPERSAMPLE)
            _paint(img, fringe * face, hair)
        elif style == "crew":
            cap = _ellipse_mask((s, s), cx, cy - fh * 0.3, fw * 0.52, fh * 0.28, blur=SUPERSAMPLE)
            cap[int(cy - fh * 0.3) :] = 0
            _paint(img, 0.9 * cv2.GaussianBlur(cap, (0, 0), SUPERSAMPLE), hair, alpha)
        else:
            hairline = _ellipse_mask((s, s), cx, cy - fh * 0.5, fw * 0.5, fh * 0.16, blur=SUPERSAMPLE)
            _paint(img, hairline, hair, alpha)
        # eye sockets, brows, nose
        ex, ey = fw * lk.eye_sep, cy - fh * 0.07
        self.eyes = [(cx - ex, ey), (cx + ex, ey)]
        for side, (x, y) in zip((-1, 1), self.eyes):
            sock = _ellipse_mask((s, s), x, y - fh * 0.01, fw * 0.16, fh * 0.085, blur=SUPERSAMPLE * 2.5)
            _paint(img, 0.6 * sock, skin * 0.45)
            brow = _ellipse_mask((s, s), x, y - fh * 0.1, fw * 0.135, fh * 0.02 * lk.brow, angle=-side * 7, blur=SUPERSAMPLE * 0.6)
            _paint(img, brow, hair * 0.75 + 10)
        bridge = _ellipse_mask((s, s), cx, cy + fh * 0.02, fw * 0.05, fh * 0.12, blur=SUPERSAMPLE * 2)
        _paint(img, 0.25 * bridge, np.minimum(skin * 1.12, 255))
        for side in (-1, 1):
            wing = _ellipse_mask((s, s), cx + side * fw * 0.06, cy + fh * 0.11, fw * 0.035, fh * 0.035, blur=SUPERSAMPLE * 1.5)
            _paint(img, 0.45 * wing, skin * 0.55)
        shadow = _ellipse_mask((s, s), cx, cy + fh * 0.145, fw * 0.09, fh * 0.018, blur=SUPERSAMPLE * 1.2)
        _paint(img, 0.35 * shadow, skin * 0.6)
        self.mouth_centre = (cx, cy + fh * 0.275)
        self.pivot = (cx, cy + fh * 0.75)  # the neck
        return img, alpha

    # ---- per frame ---------------------------------------------------------------------------------
    def frame(self, mouth: float = 0.0, blink: float = 0.0, dx: float = 0.0, dy: float = 0.0, roll: float = 0.0) -> np.ndarray:
        """RGB uint8 [size, size, 3]; ``dx``/``dy`` in output pixels, ``roll`` in degrees."""
        lk, s = self.look, self.S
        fw, fh = self.fw, self.fh
        # the parts that change live in a box around the eyes and mouth: paint a copy of that box only
        x0, x1 = int(self.cx - fw * 0.5), int(self.cx + fw * 0.5)
        y0, y1 = int(self.cy - fh * 0.2), int(self.cy + fh * 0.45)
        head = self.head.copy()
        box = head[y0:y1, x0:x1]
        shape = box.shape[:2]
        for (x, y) in self.eyes:
            x, y = x - x0, y - y0
            open_ = max(0.06, 1.0 - float(blink))
            ax, ay = fw * 0.09 * lk.eye_size, fh * 0.036 * lk.eye_size
            white = _ellipse_mask(shape, x, y, ax, ay * open_, blur=SUPERSAMPLE * 0.5)
            _paint(box, white, (180, 176, 170))
            iris = _ellipse_mask(shape, x, y, ax * 0.6, min(ax * 0.6, ay * open_), blur=SUPERSAMPLE * 0.4)
            _paint(box, iris * white, lk.iris)
            pupil = _ellipse_mask(shape, x, y, ax * 0.22, min(ax * 0.22, ay * open_), blur=SUPERSAMPLE * 0.3)
            _paint(box, pupil * white, (12, 8, 8))
            lid = _ellipse_mask(shape, x, y - ay * open_ * 0.8, ax * 1.08, fh * 0.014, blur=SUPERSAMPLE * 0.4)
            _paint(box, lid, (40, 28, 24))
        mx, my = self.mouth_centre[0] - x0, self.mouth_centre[1] - y0
        mw = fw * lk.mouth_w
        opening = fh * (0.01 + MOUTH_OPEN * float(np.clip(mouth, 0, 1)))
        lips = _ellipse_mask(shape, mx, my, mw * 1.12, opening + fh * 0.032, blur=SUPERSAMPLE * 0.5)
        _paint(box, lips, lk.lip)
        inner = _ellipse_mask(shape, mx, my, mw * (0.92 - 0.1 * mouth), opening, blur=SUPERSAMPLE * 0.4)
        _paint(box, inner, (38, 10, 14))
        if TEETH:
            teeth = _ellipse_mask(shape, mx, my - opening * 0.85, mw * 0.55, opening * 0.3, blur=SUPERSAMPLE * 0.4)
            _paint(box, teeth * inner, (215, 210, 200))
        m = cv2.getRotationMatrix2D(self.pivot, float(roll), 1.0)
        m[0, 2] += dx * SUPERSAMPLE
        m[1, 2] += dy * SUPERSAMPLE
        head = cv2.warpAffine(head, m, (s, s), flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(self.alpha, m, (s, s), flags=cv2.INTER_LINEAR)[..., None]
        img = self.background * (1 - alpha) + head
        img = cv2.resize(img, (self.size, self.size), interpolation=cv2.INTER_AREA)
        return np.clip(img + 0.5, 0, 255).astype(np.uint8)

    # ---- geometry (output pixels) ------------------------------------------------------------------
    def mouth_box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the widest-open mouth at the neutral pose, in output pixels."""
        k = 1.0 / SUPERSAMPLE
        mx, my = self.mouth_centre
        mw = self.fw * self.look.mouth_w * 1.12
        mh = self.fh * (0.01 + MOUTH_OPEN + 0.032)
        return ((mx - mw) * k, (my - mh) * k, (mx + mw) * k, (my + mh) * k)

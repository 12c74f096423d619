"""Synthetic talking faces for the CPU demo: procedural portraits whose mouths follow procedural speech.

Everything here is pure numpy / OpenCV / scipy and a function of a seed, so the demo's training data
is the same on every machine (no TTS engine, no downloaded faces). One *clip* is:

* **audio** (:func:`synth_speech`): 16 kHz "speech" built from syllables. Phrases of 2-7 syllables
  are separated by pauses; a syllable is an optional consonant onset (a fricative hiss or a plosive
  burst, band-passed noise) and a voiced vowel nucleus: a glottal-like harmonic source at a
  per-speaker pitch (85-240 Hz, with intonation and jitter), shaped by the vowel's three formants
  (a, e, i, o, u; additive synthesis, so the formants glide between syllables), with a 10-30 ms
  attack and a 40-90 ms release. Syllable rate 3.5-6.5 per second, as in read speech.
* **mouth track**: the mouth opening per video frame is the *vowel plan* of that audio: during a
  vowel, its stress x the vowel's openness (a > o > e > i > u) x the syllable envelope; closed during
  pauses and plosive closures; smoothed by a one-pole filter (lip inertia, 25 ms). So the mouth is
  driven by the same events that make the sound, and the sound's loudness envelope
  (:func:`audio_envelope`) follows it closely (r ~ 0.9 on the rendered clips, see
  :mod:`emo_model.demo.metrics`).
* **head motion** (:func:`head_track`): a head sway (translation + roll about the neck) made of
  smooth random sinusoids, scaled so that its mean rotation speed is the clip's *speed*, in the
  units of EMO's speed label (degrees per frame: ``degrees(|dt| / R)`` with ``R`` the face height,
  which is what :class:`emo_model.train.head_pose.FlowRotationEstimator` measures). Each clip draws
  its speed log-uniformly from 0.05 to 2.0 deg/frame, so the speed layers see slow and fast heads.
* **blinks** every 1.5-5 s, 3-4 frames each.
* **portrait** (:class:`Look`, :func:`render_frame`): face shape and size, skin tone, hair colour and
  style (short, long, bun, side fringe, crew cut), eye colour and spacing, brows, mouth width and
  lip colour, shirt colour, background (gradients plus soft shapes and a little texture). Faces are
  drawn with smooth shading (lit centre, darker rim, eye sockets, nose shadow) so that OpenCV's Haar
  cascade, the face detector ``preprocess`` runs, finds them like photographs; a look whose neutral
  render the detector misses is redrawn (:func:`random_look`), so the real data path (detection,
  static crop, face mask, speed labels) runs on these videos without any special case.

Frames are rendered at 2x and area-downsampled (anti-aliasing) to ``size`` pixels (160 by default:
the face is ~50 px wide, and ``preprocess`` crops a square of twice the face box around it, like a
real portrait, then resizes it to the model's 64 px).

:func:`write_clip` writes a clip as an mp4 with its audio through :class:`emo_model.video_io.VideoWriter`;
:func:`write_clips` writes a folder of them for ``python -m emo_model preprocess``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

SAMPLE_RATE = 16000
FPS = 25.0
SIZE = 160  # side of the rendered (source) video
SUPERSAMPLE = 2
MOUTH_OPEN = 0.09  # widest opening of the mouth / face height
TEETH = True
MOUTH_RANGE_DB = 36.0  # voice levels this far below the clip's loudest frame close the mouth

# Vowels: formants F1, F2, F3 (Hz, Peterson & Barney averages) and how open the mouth is.
VOWELS = {
    "a": ((730, 1090, 2440), 1.00),
    "o": ((570, 840, 2410), 0.75),
    "e": ((530, 1840, 2480), 0.62),
    "i": ((270, 2290, 3010), 0.38),
    "u": ((300, 870, 2240), 0.30),
}
FORMANT_BANDWIDTHS = (90.0, 110.0, 170.0)
FORMANT_GAINS = (1.0, 0.55, 0.3)

SKIN_TONES = (
    (255, 222, 196), (247, 208, 170), (236, 188, 150), (224, 172, 120), (208, 150, 100),
    (180, 120, 80), (150, 96, 60), (118, 74, 46), (236, 200, 160), (214, 170, 140),
)
HAIR_COLOURS = (
    (28, 20, 16), (58, 38, 24), (96, 62, 34), (140, 96, 52), (196, 156, 96),
    (150, 58, 26), (110, 110, 110), (200, 200, 196), (40, 30, 50),
)
HAIR_STYLES = ("short", "long", "bun", "fringe", "crew")


# --------------------------------------------------------------------------------------------------
# Audio


@dataclass
class SpeechPlan:
    """What :func:`synth_speech` made, per sample: for the mouth track and for inspection."""

    voice: np.ndarray  # [T] the voiced part of the audio (vowels), as mixed into it
    vowel_open: np.ndarray  # [T] openness of the vowel being spoken (a 1.0 .. u 0.3; 0 between vowels)
    syllables: int
    voiced_seconds: float


def _one_pole(x: np.ndarray, tau_samples: float) -> np.ndarray:
    from scipy.signal import lfilter

    a = math.exp(-1.0 / max(tau_samples, 1e-6))
    return lfilter([1 - a], [1, -a], x).astype(np.float32)


def synth_speech(rng: np.random.Generator, seconds: float, sr: int = SAMPLE_RATE) -> tuple[np.ndarray, SpeechPlan]:
    """Speech-like mono audio (float32, peak ~0.5) and its articulation plan; see the module docstring."""
    from scipy.signal import butter, lfilter

    n = int(round(seconds * sr))
    f0_base = float(rng.uniform(85, 240))
    rate = float(rng.uniform(3.5, 6.5))  # syllables per second
    amp = np.zeros(n, np.float32)  # voiced amplitude
    noise_amp = np.zeros(n, np.float32)  # consonant noise amplitude
    noise_kind = np.zeros(n, np.int8)  # 0 hiss, 1 burst
    openness = np.zeros(n, np.float32)
    formants = np.zeros((3, n), np.float32)
    pitch = np.full(n, f0_base, np.float32)
    formants[:] = np.array(VOWELS["e"][0], np.float32)[:, None]
    t = float(rng.uniform(0.05, 0.35))  # leading silence
    syllables = 0
    voiced = 0.0
    names = list(VOWELS)
    while t < seconds - 0.2:
        phrase = int(rng.integers(2, 8))
        declination = float(rng.uniform(-0.25, 0.05))
        for k in range(phrase):
            if t >= seconds - 0.15:
                break
            dur = float(np.clip(rng.normal(1.0 / rate, 0.25 / rate), 0.09, 0.38))
            stress = float(rng.uniform(0.45, 1.0))
            vowel = names[int(rng.integers(len(names)))]
            (f1, f2, f3), open_ = VOWELS[vowel]
            onset = 0.0
            kind = int(rng.integers(3))  # 0 none, 1 fricative, 2 plosive
            if kind:
                onset = float(rng.uniform(0.03, 0.07)) if kind == 1 else float(rng.uniform(0.015, 0.03))
                a, b = int(t * sr), int(min(t + onset, seconds) * sr)
                shape = np.hanning(max(b - a, 2))[: b - a] if kind == 1 else np.exp(-np.linspace(0, 5, b - a))
                noise_amp[a:b] = np.maximum(noise_amp[a:b], (0.25 if kind == 1 else 0.45) * stress * shape)
                noise_kind[a:b] = kind - 1
                if kind == 2:  # the lips closed before the burst: nothing open during it
                    openness[a:b] = 0.0
            v0, v1 = t + onset, min(t + dur, seconds)
            a, b = int(v0 * sr), int(v1 * sr)
            if b - a > 8:
                m = b - a
                attack = max(2, int(rng.uniform(0.01, 0.03) * sr))
                release = max(2, int(rng.uniform(0.04, 0.09) * sr))
                env = np.ones(m, np.float32)
                env[: min(attack, m)] = np.linspace(0, 1, min(attack, m))
                r = min(release, m)
                env[m - r :] *= np.linspace(1, 0, r) ** 1.5
                amp[a:b] = np.maximum(amp[a:b], stress * env)
                openness[a:b] = np.maximum(openness[a:b], stress * open_ * env)
                formants[:, a:b] = np.array((f1, f2, f3), np.float32)[:, None] * rng.uniform(0.95, 1.05)
                progress = (k + np.linspace(0, 1, m)) / max(phrase, 1)
                pitch[a:b] = f0_base * (1 + declination * progress + 0.06 * stress) * (1 + 0.01 * rng.standard_normal())
                voiced += m / sr
                syllables += 1
            t += dur + float(rng.uniform(0.0, 0.05))
        t += float(rng.uniform(0.15, 0.7))  # pause between phrases

    # formant and pitch glides (coarticulation), vibrato-free jitter
    formants = np.stack([_one_pole(f, 0.025 * sr) for f in formants])
    formants = np.stack([_one_pole(f[::-1], 0.01 * sr)[::-1] for f in formants])
    pitch = _one_pole(pitch, 0.03 * sr) * (1 + 0.004 * _one_pole(rng.standard_normal(n).astype(np.float32), 0.005 * sr) * 30)
    phase = np.cumsum(2 * np.pi * pitch / sr).astype(np.float64)
    voice = np.zeros(n, np.float64)
    kmax = int(4000 // max(f0_base * 0.75, 60))
    # harmonic gains change slowly: computed every 2.5 ms and interpolated
    grid = np.arange(0, n, 40)
    pitch_g, formants_g = pitch[grid].astype(np.float64), formants[:, grid].astype(np.float64)
    for k in range(1, kmax + 1):
        fk = k * pitch_g
        gain = np.zeros(len(grid))
        for i in range(3):
            gain += FORMANT_GAINS[i] / (1 + ((fk - formants_g[i]) / FORMANT_BANDWIDTHS[i]) ** 2)
        gain *= (fk < 4500) / k**0.6
        voice += np.interp(np.arange(n), grid, gain) * np.sin(k * phase)
    voice *= amp
    white = rng.standard_normal(n)
    hiss = lfilter(*butter(4, [2500 / (sr / 2), 7000 / (sr / 2)], btype="band"), white)
    burst = lfilter(*butter(2, [500 / (sr / 2), 5000 / (sr / 2)], btype="band"), white)
    noise = np.where(noise_kind == 0, hiss, burst) * noise_amp
    floor = 0.0015 * lfilter(*butter(2, 3000 / (sr / 2)), rng.standard_normal(n))
    voice = voice / max(np.abs(voice).max(), 1e-6) * 0.5
    out = voice + noise * 0.35 + floor
    peak = max(np.abs(out).max(), 1e-6)
    vowel_open = np.where(amp > 0, openness / np.maximum(amp, 1e-6), 0.0).astype(np.float32)
    plan = SpeechPlan((voice * 0.5 / peak).astype(np.float32), vowel_open, syllables, voiced)
    return (out * 0.5 / peak).astype(np.float32), plan


def audio_envelope(wave: np.ndarray, num_frames: int, fps: float = FPS, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Loudness per video frame: RMS of the samples of frame ``f``'s span ``[f, f+1) / fps``, in dB
    above a -60 dBFS floor, scaled to 0..1 (0 = -60 dBFS or quieter, 1 = 0 dBFS).

    This is the audio side of the lip-sync measure (:mod:`emo_model.demo.metrics`); it reads the
    waveform only, never the model's features.
    """
    wave = np.asarray(wave, np.float64).reshape(-1)
    bounds = np.round(np.arange(num_frames + 1) * sr / fps).astype(int)
    out = np.zeros(num_frames, np.float32)
    for f in range(num_frames):
        seg = wave[bounds[f] : max(bounds[f + 1], bounds[f] + 1)]
        rms = math.sqrt(float(np.mean(seg**2))) if seg.size else 0.0
        out[f] = np.clip((20 * math.log10(rms + 1e-9) + 60) / 60, 0, 1)
    return out


def _frame_spans(num_frames: int, length: int, fps: float, sr: int) -> list[tuple[int, int]]:
    bounds = np.minimum(np.round(np.arange(num_frames + 1) * sr / fps).astype(int), length)
    return [(int(a), int(max(b, a + 1))) for a, b in zip(bounds[:-1], bounds[1:])]


def mouth_track(plan: SpeechPlan, num_frames: int, fps: float = FPS, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Mouth opening per frame (0..1), driven by the voice.

    The voiced part's level in each frame, over a 36 dB range below the clip's loudest frame, times
    ``0.7 + 0.3 x`` the openness of the vowel being spoken, through a one-frame lip inertia
    (one-pole, 40 ms). Fricatives and bursts do not open the mouth; pauses close it.
    """
    spans = _frame_spans(num_frames, len(plan.voice), fps, sr)
    rms = np.array([math.sqrt(float(np.mean(plan.voice[a:b].astype(np.float64) ** 2))) if b <= len(plan.voice) else 0.0 for a, b in spans])
    level = np.clip((20 * np.log10(rms + 1e-9) - 20 * math.log10(max(rms.max(), 1e-9)) + MOUTH_RANGE_DB) / MOUTH_RANGE_DB, 0, 1)
    vowel = np.array([float(plan.vowel_open[a:b].mean()) if b <= len(plan.voice) else 0.0 for a, b in spans])
    mouth = level * (0.7 + 0.3 * vowel)
    return np.clip(_one_pole(mouth.astype(np.float32), 1.0), 0, 1)


# --------------------------------------------------------------------------------------------------
# Motion


def head_track(rng: np.random.Generator, num_frames: int, speed: float, face_height: float, pivot: float) -> dict[str, np.ndarray]:
    """Head sway ``dx, dy`` (pixels) and ``roll`` (degrees, about the neck) with mean speed ``speed``.

    ``speed`` is in the units of EMO's label as the flow proxy measures it (deg/frame):
    ``degrees(sqrt((|dt| / R)^2 + droll^2))`` with ``dt`` the motion of the face centre (translation
    plus the roll about the neck, ``pivot`` pixels below it) and ``R = face_height`` pixels.
    """
    t = np.arange(num_frames + 1, dtype=np.float64)
    motion = {}
    for name, weight in (("dx", 1.0), ("dy", 0.5), ("roll", 0.6)):
        parts = np.zeros_like(t)
        for _ in range(3):
            f = rng.uniform(0.15, 0.9) / FPS  # cycles per frame
            parts += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
        motion[name] = weight * parts
    # the sway's speed drifts within the clip (+-30 %)
    drift = 1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.05, 0.2) / FPS * t + rng.uniform(0, 2 * np.pi))
    for name in motion:
        motion[name] = np.cumsum(np.concatenate([[0.0], np.diff(motion[name]) * drift[1:]]))
        motion[name] -= motion[name].mean()

    def measured(scale: float) -> float:
        roll = np.radians(motion["roll"] * scale)
        cx = motion["dx"] * scale + pivot * np.sin(roll)
        cy = motion["dy"] * scale - pivot * np.cos(roll)
        dt = np.hypot(np.diff(cx), np.diff(cy)) / face_height
        return float(np.degrees(np.sqrt(dt**2 + np.diff(roll) ** 2)).mean())

    scale = speed / max(measured(1.0), 1e-9)  # nearly linear; one refinement step
    scale *= speed / max(measured(scale), 1e-9)
    return {k: (v[1:] * scale).astype(np.float32) for k, v in motion.items()}


def blink_track(rng: np.random.Generator, num_frames: int) -> np.ndarray:
    """Eyelid closure per frame (0 open .. 1 closed): a blink every 1.5-5 s, 3-4 frames long."""
    out = np.zeros(num_frames, np.float32)
    f = int(rng.uniform(0.3, 2.5) * FPS)
    while f < num_frames:
        for i, v in enumerate((0.5, 1.0, 1.0, 0.4)[: int(rng.integers(3, 5))]):
            if f + i < num_frames:
                out[f + i] = v
        f += int(rng.uniform(1.5, 5.0) * FPS)
    return out


# --------------------------------------------------------------------------------------------------
# Appearance


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


# --------------------------------------------------------------------------------------------------
# Rendering


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


# --------------------------------------------------------------------------------------------------
# Clips


@dataclass
class Clip:
    seed: int
    frames: np.ndarray  # uint8 [F, size, size, 3]
    audio: np.ndarray  # float32 [T] mono, SAMPLE_RATE
    mouth: np.ndarray  # [F] opening 0..1
    speed: float  # target head speed, deg/frame
    look: Look
    renderer: Renderer
    fps: float = FPS

    @property
    def num_frames(self) -> int:
        return len(self.frames)


def clip_speed(rng: np.random.Generator) -> float:
    """The clip's head speed: log-uniform over 0.05 .. 2.0 deg/frame."""
    return float(math.exp(rng.uniform(math.log(0.05), math.log(2.0))))


def make_clip(seed: int, seconds: float = 4.0, *, size: int = SIZE, speed: float | None = None, render: bool = True) -> Clip:
    """The clip of ``seed``: look, speech, mouth, blinks, head sway, frames (see the module docstring)."""
    rng = np.random.default_rng([20240227, int(seed)])
    look = random_look(np.random.default_rng([int(seed), 1]), size=size)
    audio, plan = synth_speech(rng, seconds)
    audio = audio * np.float32(10 ** (rng.uniform(-3, 3) / 20))  # recording level +-3 dB
    frames_n = int(round(seconds * FPS))
    mouth = mouth_track(plan, frames_n)
    speed = clip_speed(rng) if speed is None else float(speed)
    renderer = Renderer(look, size)
    # the label's R is the detector's face-box height, about the drawn face's height
    fh = look.face_height * size
    motion = head_track(rng, frames_n, speed, face_height=fh, pivot=0.75 * fh)
    blinks = blink_track(rng, frames_n)
    frames = np.zeros((frames_n if render else 0, size, size, 3), np.uint8)
    if render:
        for f in range(frames_n):
            frames[f] = renderer.frame(mouth[f], blinks[f], motion["dx"][f], motion["dy"][f], motion["roll"][f])
    return Clip(int(seed), frames, audio, mouth, speed, look, renderer)


def write_clip(clip: Clip, path: str | Path, *, crf: int = 16) -> Path:
    """The clip as an mp4 (H.264 + AAC) with its audio."""
    from ..video_io import VideoWriter

    path = Path(path)
    with VideoWriter(path, clip.fps, crf=crf, audio=(clip.audio, SAMPLE_RATE), threads=1) as writer:
        writer.write(clip.frames)
    return path


def write_clips(out: str | Path, seeds, *, seconds: float = 4.0, size: int = SIZE, log=print) -> list[Path]:
    """``clip-<seed>.mp4`` for every seed (existing files are kept: re-running resumes)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    meta = {}
    for seed in seeds:
        path = out / f"clip-{int(seed):05d}.mp4"
        if not path.is_file():
            clip = make_clip(int(seed), seconds, size=size)
            tmp = out / f".clip-{int(seed):05d}.mp4"
            write_clip(clip, tmp)
            tmp.replace(path)
            meta[path.name] = {"seed": int(seed), "speed": clip.speed}
        paths.append(path)
    if meta:
        index = out / "clips.jsonl"
        with open(index, "a") as fh:
            for name, m in meta.items():
                fh.write(json.dumps({"file": name, **m}) + "\n")
    log(f"synthetic clips: {len(paths)} in {out}")
    return paths

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .render import SIZE, Look, Renderer, random_look

SAMPLE_RATE = 16000
FPS = 25.0
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


# --------------------------------------------------------------------------------------------------
# Rendering


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

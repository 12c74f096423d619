"""Measures of the demo model on held-out synthetic clips: lip sync, speed control, clip boundaries.

All three run the real sampling path (:class:`emo_model.app.session.Session`, the model's preset unless
told otherwise) on clips made by :func:`emo_model.demo.synthetic.make_clip` from seeds at or above
:data:`emo_model.demo.config.HELDOUT_SEED`: faces, voices and sentences the model never saw.

Lip sync
--------
*Mouth opening* is measured on the generated 64x64 frames, in the mouth's region of interest: the
widest-open mouth of the held-out face at its neutral pose (known from the renderer's geometry),
mapped into the model's crop with the portrait's :class:`~emo_model.face.PortraitCrop`, widened by a
margin that keeps the mouth inside it while the head sways. Inside it, each pixel's *darkness* is
``clip((T - Y) / T, 0, 1)`` with ``Y`` its luma and ``T = 0.45 x`` the luma of the face's skin, so
only the open mouth's cavity counts (lips, skin and nose shadows are lighter than ``T``); the
opening of a frame is the mean darkness of the region. On this synthetic domain (flat skin, a dark
mouth cavity) that is an honest pixel-level measure of how open the mouth is; it is translation
invariant as long as the mouth stays in the region.

*Audio envelope*: :func:`emo_model.demo.synthetic.audio_envelope`, the loudness of the waveform in
each frame's span (dB over a 60 dB range); it reads the waveform, never the model's features.

*Score*: Pearson ``r`` between the two series over the frames of a clip. The control generates the
same clip again from the same portrait, driven by the *time-shuffled* audio (the waveform cut in
blocks of 5 frames, 200 ms, and the blocks permuted), and correlates *that* video's mouth with the
*original* envelope: a model that follows the audio it is given scores near 0 there (and high
against the shuffled audio's own envelope, reported as ``r_shuffled_self``). The same measure on the
ground-truth rendered frames (cropped the same way) gives the ceiling (``r_truth``, about 0.9: the
synthetic mouth follows the voiced part of the audio, not the consonant noise).

Speed control
-------------
The same portrait and audio generated at several constant speeds (deg/frame, the speed layers'
input); head motion is measured on the generated frames with the flow proxy that labelled the
training data (:class:`emo_model.train.head_pose.FlowRotationEstimator`, deg/frame over the
portrait's face box), and as the mean frame-to-frame displacement of the face in pixels (phase
correlation of the face region).

Clip boundaries
---------------
The sampler generates ``frames_per_clip`` frames at a time; motion frames (the last ``n`` frames of
the previous clip, fed back through the ReferenceNet) are what makes consecutive clips continuous.
For a held-out clip the mean absolute frame difference (0..255 luma, face region) is computed
between consecutive frames *across* clip boundaries and *within* clips, with the preset's motion
frames and with ``motion_frames=0``: the ratio across / within is ~1 for seamless boundaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .config import HELDOUT_SEED
from .synthetic import FPS, SAMPLE_RATE, Clip, audio_envelope, make_clip

DARK_FRACTION = 0.45  # darkness threshold, as a fraction of the skin's luma
SHUFFLE_BLOCK_FRAMES = 5


@dataclass
class HeldOut:
    """A held-out clip prepared for the model: portrait crop, regions, and the cropped truth."""

    clip: Clip
    portrait: object  # emo_model.face.PortraitCrop
    mouth_roi: tuple[int, int, int, int]  # x0, y0, x1, y1 in crop pixels (exclusive ends)
    face_roi: tuple[int, int, int, int]
    skin_luma: float  # 0..1
    truth: np.ndarray  # float32 [F, S, S, 3] 0..1: the clip's frames cropped like the portrait


def luma(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames, np.float32)
    return frames[..., 0] * 0.299 + frames[..., 1] * 0.587 + frames[..., 2] * 0.114


def _to_float(frames) -> np.ndarray:
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().float().cpu().numpy()
    frames = np.asarray(frames)
    return frames.astype(np.float32) / 255.0 if frames.dtype == np.uint8 else frames.astype(np.float32)


def _int_box(box, size: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return (max(0, int(math.floor(x0))), max(0, int(math.floor(y0))), min(size, int(math.ceil(x1))), min(size, int(math.ceil(y1))))


def prepare_held_out(seed: int, seconds: float = 4.0, *, size: int = 64, speed: float | None = None) -> HeldOut:
    """Render held-out clip ``seed`` and crop it the way ``generate`` crops a portrait."""
    from ..face import prepare_portrait

    if seed < HELDOUT_SEED:
        raise ValueError(f"held-out seeds start at {HELDOUT_SEED} (lower seeds are training clips)")
    clip = make_clip(seed, seconds, speed=speed)
    r = clip.renderer
    neutral = r.frame(mouth=0.0)
    pc = prepare_portrait(neutral, size, detector="haar")
    x0, y0, x1, y1 = r.mouth_box()
    (cx0, cy0), (cx1, cy1) = pc.to_crop(x0, y0), pc.to_crop(x1, y1)
    fh = r.fh / 2 * pc.scale  # drawn face height in crop pixels (renderer works at 2x)
    mx = 0.3 * (cx1 - cx0)
    mouth = _int_box((cx0 - mx, cy0 - 0.03 * fh, cx1 + mx, cy1 + 0.08 * fh), size)
    fb = pc.face_box
    face = _int_box((fb.x0, fb.y0, fb.x1, fb.y1), size)
    skin = float(np.dot(np.asarray(clip.look.skin, np.float64) / 255.0, (0.299, 0.587, 0.114)))
    truth = np.stack([pc.apply(f.astype(np.float32) / 255.0) for f in clip.frames]).clip(0, 1)
    return HeldOut(clip, pc, mouth, face, skin, truth)


def mouth_opening(frames, roi: tuple[int, int, int, int], skin_luma: float) -> np.ndarray:
    """Mean darkness of the mouth region per frame (see the module docstring)."""
    x0, y0, x1, y1 = roi
    y = luma(_to_float(frames)[:, y0:y1, x0:x1])
    t = DARK_FRACTION * skin_luma
    return np.clip((t - y) / t, 0, 1).mean(axis=(1, 2))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n = min(len(a), len(b))
    a, b = a[:n] - a[:n].mean(), b[:n] - b[:n].mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def shuffle_audio(wave: np.ndarray, seed: int, block_frames: int = SHUFFLE_BLOCK_FRAMES, fps: float = FPS) -> np.ndarray:
    """The waveform cut in blocks of ``block_frames`` video frames, the blocks randomly permuted."""
    block = int(round(block_frames * SAMPLE_RATE / fps))
    n = len(wave) // block
    order = np.random.default_rng(seed).permutation(n)
    head = wave[: n * block].reshape(n, block)[order].reshape(-1)
    return np.concatenate([head, wave[n * block :]]).astype(np.float32)


def generate(session, held: HeldOut, audio: np.ndarray | None = None, **overrides) -> np.ndarray:
    """Frames [F, S, S, 3] (float 0..1) for the held-out portrait driven by ``audio`` (default: its own)."""
    wave = held.clip.audio if audio is None else audio
    source = {"waveform": torch.from_numpy(np.asarray(wave, np.float32)).reshape(1, 1, -1), "sample_rate": SAMPLE_RATE}
    feats = session.encode_audio(source, fps=held.clip.fps)
    reference = session.encode_reference(held.portrait.image)
    settings = session.settings(**overrides)
    frames = session.pipeline.generate_frames(
        reference, feats.features, num_frames=feats.num_frames, settings=settings, face_mask=torch.from_numpy(held.portrait.mask)
    )
    return frames.numpy()


def lip_sync(session, held: HeldOut, **overrides) -> dict:
    """r of the generated mouth vs the audio envelope, the shuffled-audio control, and the ceiling."""
    n = held.clip.num_frames
    env = audio_envelope(held.clip.audio, n)
    frames = generate(session, held, **overrides)
    shuffled_wave = shuffle_audio(held.clip.audio, held.clip.seed)
    shuffled = generate(session, held, audio=shuffled_wave, **overrides)
    opening = mouth_opening(frames, held.mouth_roi, held.skin_luma)
    opening_shuffled = mouth_opening(shuffled, held.mouth_roi, held.skin_luma)
    truth = mouth_opening(held.truth, held.mouth_roi, held.skin_luma)
    return {
        "seed": held.clip.seed,
        "frames": n,
        "r": pearson(opening, env),
        "r_shuffled": pearson(opening_shuffled, env),
        "r_shuffled_self": pearson(opening_shuffled, audio_envelope(shuffled_wave, n)),
        "r_truth": pearson(truth, env),
        "opening_mean": float(opening.mean()),
        "truth_opening_mean": float(truth.mean()),
        "_frames": frames,
    }


def head_speed(frames, box: tuple[int, int, int, int], fps: float = FPS) -> tuple[float, float]:
    """(flow-proxy speed in deg/frame, mean face displacement in pixels per frame) of a video."""
    import cv2

    from ..train.head_pose import FlowRotationEstimator

    u8 = (np.clip(_to_float(frames), 0, 1) * 255).round().astype(np.uint8)
    boxes = np.tile(np.asarray(box, np.float64), (len(u8), 1))
    deg = float(FlowRotationEstimator().estimate(u8, boxes, fps)[1:].mean())
    x0, y0, x1, y1 = box
    g = luma(u8[:, y0:y1, x0:x1].astype(np.float32))
    win = cv2.createHanningWindow((x1 - x0, y1 - y0), cv2.CV_32F)
    shifts = [math.hypot(*cv2.phaseCorrelate(g[i], g[i + 1], win)[0]) for i in range(len(g) - 1)]
    return deg, float(np.mean(shifts))


def speed_effect(session, held: HeldOut, speeds=(0.1, 0.7, 1.3), **overrides) -> list[dict]:
    rows = []
    for s in speeds:
        frames = generate(session, held, speed=float(s), **overrides)
        deg, px = head_speed(frames, held.face_roi)
        rows.append({"speed": float(s), "measured_deg_per_frame": deg, "face_shift_px_per_frame": px})
    return rows


def boundary_continuity(session, held: HeldOut, **overrides) -> list[dict]:
    """Frame differences across vs within clips, with the preset's motion frames and with none."""
    preset = session.config.preset
    f = overrides.pop("frames_per_clip", None) or preset.frames_per_clip
    rows = []
    for n in dict.fromkeys((preset.motion_frames, 0)):
        frames = generate(session, held, motion_frames=n, frames_per_clip=f, **overrides)
        x0, y0, x1, y1 = held.face_roi
        y = luma(frames[:, y0:y1, x0:x1]) * 255
        diffs = np.abs(np.diff(y, axis=0)).mean(axis=(1, 2))  # diffs[i]: frame i -> i+1
        across = np.array([i for i in range(len(diffs)) if (i + 1) % f == 0])
        within = np.array([i for i in range(len(diffs)) if (i + 1) % f != 0])
        a, w = float(diffs[across].mean()), float(diffs[within].mean())
        rows.append({"motion_frames": int(n), "across": a, "within": w, "ratio": a / max(w, 1e-9)})
    return rows

"""Paste-back measured (issue 25): seam visibility, the exact-outside check, how much motion stays in the face.

    python tools/paste_back_table.py [--seconds 1] [--steps 4]

The demo model (CPU) animates the face of two wide pictures, then :class:`~emo_model.face.paste_back.PasteBack`
puts the 64 px animation back into each picture at its own size:

* ``wide synthetic``: a 1280x720 textured scene (gradients, stripes, noise) with the demo's own portrait
  (256 px, a face the demo model was trained on) placed right of centre;
* ``astronaut 1080p``: scikit-image's astronaut photo upscaled to 1080x1080 and centred on a 1920x1080 frame
  (the sides are the photo mirrored).

Columns (all on the composited frames, before video encoding, which is lossy):

* ``seam grad out/src``: mean luminance gradient across the blend ring (Sobel, the component along the
  ring's normal, over the pixels with 0 < weight < 1) of the output frames, over the same on the source
  picture; 1.0 = the ring changes across as much as the picture does there, above 1 = a visible edge.
  Given for each colour match: none, mean (one Lab shift) and local (the default: an offset field).
* ``outside changed``: pixels outside the blend region that differ from the source, over all frames (uint8
  frames as written to the video); must be 0.
* ``motion in face / ring / cut``: of the frame-to-frame change in the generated square crop, the share that
  lands where paste-back keeps it whole (weight 1), in the feather ring, and outside the pasted region (cut
  away: head motion that ``grow`` did not leave room for).

Not a test (no timing is asserted); it takes a few minutes on a busy 2-core CPU.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def wide_synthetic(portrait: np.ndarray) -> np.ndarray:
    h, w = 720, 1280
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(0)
    scene = np.stack([xx / w, yy / h, 0.5 + 0.3 * np.sin(xx / 17.0) * np.cos(yy / 23.0)], -1)
    scene = np.clip(scene + rng.normal(0, 0.03, (h, w, 3)), 0, 1)
    p = portrait.astype(np.float32) / 255.0
    ph, pw = p.shape[:2]
    scene[200:200 + ph, 760:760 + pw] = p[..., :3]
    return (scene * 255 + 0.5).astype(np.uint8)


def astronaut_1080p() -> np.ndarray:
    from skimage import data

    photo = cv2.resize(data.astronaut(), (1080, 1080), interpolation=cv2.INTER_CUBIC)
    return cv2.copyMakeBorder(photo, 0, 0, 420, 420, cv2.BORDER_REFLECT_101)


def _grad_across(img: np.ndarray, normal: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """|luminance gradient . ring normal| (Sobel): the change across the blend ring, not along it."""
    lum = cv2.cvtColor(np.ascontiguousarray(img, dtype=np.float32), cv2.COLOR_RGB2GRAY)
    gx, gy = cv2.Sobel(lum, cv2.CV_32F, 1, 0, ksize=3) / 8, cv2.Sobel(lum, cv2.CV_32F, 0, 1, ksize=3) / 8
    return np.abs(gx * normal[0] + gy * normal[1])


def animate(session, picture: np.ndarray, seconds: float, steps: int | None):
    """The demo pipeline on ``picture``: (the crop, the generated square frames [N, s, s, 3] float)."""
    import torch

    from emo_model import demo

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        portrait = session.prepare_portrait(picture)
    audio = session.encode_audio(str(demo.audio_path()))
    frames_wanted = max(2, round(seconds * audio.fps))
    settings = session.settings(steps=steps, seed=0)
    reference = session.encode_reference(portrait.image, identity_image=portrait.image)
    frames: list = []
    session.pipeline.generate(reference, audio.features, num_frames=min(audio.num_frames, frames_wanted), settings=settings,
                              sink=lambda f: frames.append(f.float().cpu()), face_mask=torch.from_numpy(portrait.mask))
    return portrait, torch.cat(frames).numpy()


def measure(name: str, picture: np.ndarray, portrait, frames: np.ndarray) -> dict:
    from emo_model.face.paste_back import CropPlacement, PasteBack

    placement = CropPlacement.from_crop(portrait)
    src = picture.astype(np.float32) / 255.0
    row: dict = {"scene": name, "size": f"{picture.shape[1]}x{picture.shape[0]}", "frames": len(frames),
                 "face": "fallback" if portrait.fell_back else "found"}
    for colour in ("none", "mean", "local"):
        pb = PasteBack(picture, placement, colour=colour)
        ring = (pb.weights > 0) & (pb.weights < 1)
        wy, wx = np.gradient(pb.weights.astype(np.float64))
        norm = np.maximum(np.hypot(wx, wy), 1e-12)
        normal = ((wx / norm).astype(np.float32), (wy / norm).astype(np.float32))
        src_grad = _grad_across(src[..., :3], normal)[ring].mean()
        out_grad, changed = [], 0
        outside = ~pb.blended
        for frame in pb.iter_composite(frames, dtype=np.uint8):
            h, w = picture.shape[:2]
            f = frame[:h, :w]
            changed += int(np.any(f[outside] != picture[outside][..., :3], axis=-1).sum())
            out_grad.append(_grad_across(f.astype(np.float32) / 255.0, normal)[ring].mean())
        row[f"seam grad out/src ({colour})"] = float(np.mean(out_grad) / src_grad)
        row["outside changed"] = row.get("outside changed", 0) + changed
        row["blend region"] = f"{pb.blended.mean():.1%} of the frame"
    # motion: frame-to-frame change in the crop, split by the paste-back weight mapped into the crop
    pb = PasteBack(picture, placement)
    side = frames.shape[1]
    weights_crop = np.asarray(portrait.apply(pb.weights, interpolation="nearest", pad_mode="constant"), np.float32).squeeze()
    weights_crop = cv2.resize(weights_crop, (side, side), interpolation=cv2.INTER_NEAREST)
    motion = np.abs(np.diff(frames, axis=0)).sum(axis=(0, 3))
    total = max(float(motion.sum()), 1e-12)
    row["motion in face"] = float(motion[weights_crop >= 1].sum() / total)
    row["motion in ring"] = float(motion[(weights_crop > 0) & (weights_crop < 1)].sum() / total)
    row["motion cut"] = float(motion[weights_crop <= 0].sum() / total)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="seconds of the demo speech to animate [%(default)s]")
    ap.add_argument("--steps", type=int, default=4, help="denoising steps [%(default)s]")
    args = ap.parse_args(argv)
    import torch

    from emo_model import demo
    from emo_model.app.session import Session
    from emo_model.video_io.image_io import read_portrait

    torch.manual_seed(0)
    session = Session.load(str(demo.model_path()), device=torch.device("cpu"), dtype=torch.float32)
    rows = []
    for name, picture in (("wide synthetic", wide_synthetic(read_portrait(demo.portrait_path()))), ("astronaut 1080p", astronaut_1080p())):
        print(f"{name}: animating ...", file=sys.stderr, flush=True)
        portrait, frames = animate(session, picture, args.seconds, args.steps)
        print(f"{name}: measuring {len(frames)} frames ...", file=sys.stderr, flush=True)
        rows.append(measure(name, picture, portrait, frames))
    cols = ["scene", "size", "frames", "face", "blend region", "seam grad out/src (none)", "seam grad out/src (mean)",
            "seam grad out/src (local)", "outside changed",
            "motion in face", "motion in ring", "motion cut"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        cells = []
        for c in cols:
            v = r[c]
            cells.append(f"{v:.1%}" if c.startswith("motion") else f"{v:.2f}" if isinstance(v, float) else str(v))
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

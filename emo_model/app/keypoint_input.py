"""The keypoint images of a keypoint-guided model from what the user gives: the portrait, and optionally a driving video.

A family with a ``keypoint_guide`` (emo_model/face/keypoint_images.py ``KeypointGuide``) reads one keypoint image per
frame. The reference keypoints are found on the encoded portrait (the picture at the model size, as the original
detects them on its resized reference); the driving keypoints, when given, come from:

* ComfyUI's ``POSE_KEYPOINT`` (DWPose / OpenPose body points: eyes and nose; or EMO Face Keypoints' output, which may
  name its retarget mode in each frame's ``emo_retarget``);
* an ``IMAGE`` batch or a video file / folder of pictures (our face keypoints on every frame);
* a keypoint file: ``.npy`` [N, 3, 2], or the original's ``kps.pth`` (a list of [3, 2] arrays, read with
  ``torch.load(weights_only=True)``), in pixels of the model size (its extract script writes them at 512 x 512).

The sequence is cut to the frame count when longer and stretched to it by linear interpolation (never looped), then
retargeted (``fix_face``, ``no_retarget``, ``offset_retarget``, ``naive_retarget``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..configs import EMOConfig
from ..face.boxes import FaceError
from ..face.keypoint_detection import frame_keypoints, reference_keypoints, source_note, to_square
from ..face.keypoint_images import RETARGET_MODES, keypoint_images, keypoints_from_pose_keypoint, retarget, stretch_sequence
from ..validation import InputError
from ..video_io.formats import VideoError

AUTO = "auto"
MODES = (AUTO, *RETARGET_MODES)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
KEYPOINT_SUFFIXES = (".npy", ".pth", ".pt")


def keypoint_guide(config: EMOConfig):
    """The family's KeypointGuide (None: the model does not read keypoint images)."""
    from ..families import family_of

    family = family_of(config)
    return None if family is None else family.keypoint_guide


def _read_keypoint_file(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        data = np.load(path, allow_pickle=False)
    else:  # the original's kps.pth: torch.save of a list of numpy arrays; numpy's reconstructors only, no other code
        from torch.serialization import safe_globals

        multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
        allowed = [np.ndarray, np.dtype, multiarray._reconstruct, *(type(np.dtype(t)) for t in (np.float32, np.float64))]
        with safe_globals(allowed):
            data = torch.load(path, map_location="cpu", weights_only=True)
        data = np.stack([np.asarray(p) for p in data]) if isinstance(data, (list, tuple)) else np.asarray(data)
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 3 or data.shape[1:] != (3, 2) or len(data) == 0 or not np.isfinite(data).all():
        raise ValueError(f"{path.name} holds {tuple(data.shape)} values; a keypoint file holds [frames, 3, 2] pixels (eyes, nose)")
    return data


def _read_frames(path: Path, limit: int | None):
    """The pictures of a folder (sorted by name) or the frames of a video, one at a time, at most ``limit`` of them (the
    original cuts a longer driving sequence to the video's frames: the rest is never read)."""
    if path.is_dir():
        from ..video_io.image_io import read_portrait

        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
        if not files:
            raise ValueError(f"{path} holds no pictures ({', '.join(IMAGE_SUFFIXES)}); give a driving video, a folder of its frames "
                             "or a keypoint file")
        for p in files:
            yield read_portrait(p)
        return
    from ..video_io.reader import _open_for_read

    with _open_for_read(path) as container:
        if not container.streams.video:
            raise ValueError(f"{path.name} has no video stream; give a driving video, a folder of its frames or a keypoint file")
        for i, frame in enumerate(container.decode(video=0)):
            if limit is not None and i >= limit:
                break
            yield frame.to_ndarray(format="rgb24")


def driving_keypoints(driving, size: int, *, detector: str = "auto", models_dirs=None,
                      limit: int | None = None) -> tuple[np.ndarray, str, str]:
    """(keypoints [N, 3, 2] in pixels of the size x size frame, a note, the retarget mode the source names or "");
    a video or folder is read up to ``limit`` frames."""
    if isinstance(driving, (str, Path)):
        path = Path(driving).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        if path.is_file() and path.suffix.lower() in KEYPOINT_SUFFIXES:
            points = _read_keypoint_file(path)
            return points, f"{path.name} ({len(points)} frames of keypoints)", ""
        return _from_frames(_read_frames(path, limit), size, detector, models_dirs, f"{path.name}")
    if isinstance(driving, torch.Tensor):  # ComfyUI IMAGE [N, H, W, C]
        return _from_frames(list(driving.cpu().numpy()), size, detector, models_dirs, "the driving frames")
    if isinstance(driving, np.ndarray) and driving.ndim == 3 and driving.shape[1:] == (3, 2):
        return driving.astype(np.float64), f"{len(driving)} frames of keypoints", ""
    frames = [driving] if isinstance(driving, dict) else list(driving)  # POSE_KEYPOINT
    modes = {f.get("emo_retarget") for f in frames if isinstance(f, dict) and f.get("emo_retarget")}
    points = keypoints_from_pose_keypoint(frames, size)
    return points, f"POSE_KEYPOINT ({len(points)} frames, eyes and nose)", (modes.pop() if len(modes) == 1 else "")


def _from_frames(frames, size: int, detector: str, models_dirs, what: str) -> tuple[np.ndarray, str, str]:
    sizes: list = []  # each frame's (height, width): a folder of pictures may mix sizes

    def sized(pictures):
        for picture in pictures:
            sizes.append(np.shape(picture)[:2])
            yield picture

    points, source, misses = frame_keypoints(sized(frames), detector=detector, models_dirs=models_dirs)
    squared = np.stack([to_square(p, h, w, size) for p, (h, w) in zip(points, sizes)])
    note = f"{what} ({len(points)} frames, keypoints by {source if source != 'box' else 'the face box'})"
    if misses:
        note += f"; no face in {misses} frame(s): they keep the previous frame's keypoints"
    return squared, note, ""


def keypoint_frames_for(config: EMOConfig, reference_image, driving, mode: str | None, num_frames: int, *,
                        detector: str = "auto", models_dirs=None, label: str = "keypoints",
                        mode_label: str = "retarget", hint: bool = True) -> tuple[torch.Tensor, str]:
    """(keypoint images [N, 3, S, S] in 0..1 for a video of ``num_frames``, a note for the user).

    ``reference_image``: the encoded portrait [S, S, 3] (ReferenceState.image); ``driving``: None or what
    :func:`driving_keypoints` reads; ``mode``: one of :data:`MODES` (None / auto: the family's default without driving
    keypoints, the mode the driving source names or the family's ``driven_mode`` with them). fix_face gives one image
    (the same on every frame). ``hint``: the note says how to get the original's keypoints when they are not its."""
    guide = keypoint_guide(config)
    mode = AUTO if mode in (None, "") else mode
    if mode not in MODES:
        raise InputError(f"{mode_label} must be one of {', '.join(MODES)}, got {mode!r}")
    image = reference_image.cpu().numpy() if isinstance(reference_image, torch.Tensor) else np.asarray(reference_image)
    size = int(image.shape[0])
    try:
        ref = reference_keypoints(image, detector=detector, models_dirs=models_dirs)
        drv, drv_note, named = (None, "", "") if driving is None else driving_keypoints(
            driving, size, detector=detector, models_dirs=models_dirs, limit=num_frames)
    except (FaceError, ValueError, FileNotFoundError, OSError, VideoError) as exc:
        raise InputError(f"{label}: {exc}") from None
    if mode == AUTO:
        mode = guide.default_mode if drv is None else (named or guide.driven_mode)
    if mode != "fix_face" and drv is None:
        raise InputError(f"{mode_label} {mode} needs driving keypoints ({label}: a driving video, its frames, POSE_KEYPOINT or a "
                         "keypoint file); without them use fix_face")
    by = {"insightface": "insightface", "yunet": "YuNet", "box": "the face box"}[ref.source]
    note = f"keypoints: {mode}, the portrait's by {by}" + (f" ({source_note(ref.source)})" if hint and ref.source != "insightface" else "")
    if mode == "fix_face":
        note += "" if drv is None else f"; the driving keypoints ({drv_note}) are not used by fix_face"
        return keypoint_images(size, size, ref.points[None]), note
    sequence = stretch_sequence(drv, num_frames).numpy()
    points = retarget(ref.points, sequence, mode, num_frames)
    stretched = "" if len(drv) == num_frames else f", {'cut and ' if len(drv) > num_frames else ''}stretched to {num_frames} frames"
    return keypoint_images(size, size, points), f"{note}; driving {drv_note}{stretched}"

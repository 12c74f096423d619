"""``python -m emo_model preprocess``: a folder of talking / singing videos -> a streaming training dataset.

What happens to every video (paper §4.1 and supplement B.2, where EMO describes its data):

1. **Checks.** A file PyAV cannot open or decode, one without an audio track, or one shorter than the
   minimum segment is skipped and listed in the report with the reason; nothing stops the run.
2. **Scene cuts** with PySceneDetect (``ContentDetector``, its default threshold 27), as EMO does. Each
   scene is cut into segments of ``--min-seconds`` .. ``--max-seconds`` (3-12 s): a scene longer than
   the maximum is split into equal parts; shorter than the minimum, it is dropped.
3. **Frame rate.** Frames are resampled to ``--fps`` (30, the paper's) by time: target frame ``k``
   (time ``k / fps`` after the first frame) is the source frame shown at that moment (the latest one
   whose timestamp is <= that time), which is what a player does; no frame blending.
4. **Faces.** Every ``--detect-every``-th target frame goes through :func:`emo_model.face.detect_faces`
   (on a copy of at most ``--detect-size`` px; the largest face, preferring the one that overlaps the
   previous frame's); boxes of frames in between, or where no face was found, are interpolated. A
   segment where fewer than ``--min-face-fraction`` of the detections found a face is dropped.
5. **Crop.** One static square per segment (the camera must not move with the head, or the model
   learns no head motion): centred on the union of the segment's face boxes, with side
   ``max(crop_ratio x median face size, 1.1 x union size)``; ``--crop-ratio`` 2.0 is what
   :func:`emo_model.face.prepare_portrait` uses for the inference portrait, so training faces and
   portrait faces have the same scale. Parts outside the frame are edge-padded, then the square is
   resized to ``--resolution`` (area filter when shrinking).
6. **Face-region mask** (the Face Locator's input): the union box in crop coordinates, expanded by the
   config's ``preset.face_expand_ratio`` (1.2), as a 0/1 mask.
7. **Audio**: the track mixed to mono and resampled to 16 kHz (:mod:`emo_model.audio`), cut to exactly
   the segment's frames, and its features cached for the config's audio kind (logmel: no weights;
   wav2vec2 / whisper: ``--audio-encoder``). Features are stored per frame *without* the ±m window
   (the dataset windows them at load time with the real neighbours of the segment), in float16.
8. **Speed label**: head-rotation speed per frame from :mod:`emo_model.train.head_pose` (default the
   ``flow`` proxy, in degrees per frame at the target fps; see that module for what it measures).

Output (``--out DATASET_DIR``)::

    shard-000000.tar ...   segments, each as three members (webdataset naming, <key>.<ext>):
                           <key>.mp4          the cropped frames (H.264, --crf 15, with the 16 kHz audio)
                           <key>.safetensors  audio_features [F, L, D] or whisper tokens (fp16),
                                              audio [T] (16 kHz float32), speed [F] (deg/frame),
                                              boxes [F, 4] (crop pixels), face_found [F] (uint8),
                                              union_box [4], mask [R, R] (uint8 0/1)
                           <key>.json         the metadata below
    index.jsonl            one line per segment: key, shard, member offsets/sizes, frames, fps, source...
    report.json / report.txt   files, segments, hours, skipped files and dropped scenes with reasons,
                               speed-label statistics (use them to check the speed buckets)
    journal.jsonl          what is done (the source of index and report), for resuming

Shards are written as ``.<name>.partial`` and renamed when complete; a shard holds whole source files
(it is closed after the file that brings it to ``--shard-size`` segments). The journal records a
shard's files only after the rename, so an interrupted run loses at most the open shard: run the same
command again and it removes partial shards, skips every file the journal lists (same path, size and
mtime) and goes on; the index and report are rebuilt from the journal at the end of every run.
Member offsets in the index let a reader seek straight to a segment inside a shard: nothing is
unpacked, and only one segment is in memory at a time.

Memory per worker: one segment's cropped frames (12 s x 30 fps at 512^2: 280 MB) plus the source's
audio track (mono at its native rate; about 690 MB per hour at 48 kHz).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import shutil
import sys
import tarfile
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".flv", ".mpg", ".mpeg", ".ts")
FORMAT_VERSION = 1


class SkipFile(Exception):
    """A source file that cannot be used; the message is the reason written to the report."""


# --------------------------------------------------------------------------------------------------
# Options


@dataclass
class Options:
    fps: float = 30.0
    resolution: int = 512
    min_seconds: float = 3.0
    max_seconds: float = 12.0
    config: str = "emo"
    audio_encoder: str | None = None
    shard_size: int = 64
    workers: int = 1
    detector: str = "auto"
    models_dir: str | None = None
    detect_every: int = 1
    detect_size: int = 640
    min_face_fraction: float = 0.5
    crop_ratio: float = 2.0
    speed_estimator: str = "flow"
    scene_detector: str = "content"  # "content" (PySceneDetect) or "none" (whole video = one scene)
    scene_threshold: float = 27.0
    crf: int = 15

    def validate(self) -> Options:
        """Every option against the shared rules (:mod:`emo_model.validation`): an InputError naming the flag."""
        from .. import validation as v
        from ..face import DETECTORS
        from ..video_io import FORMATS

        positive = dataclasses.replace(v.RULES["count"], lo=1)
        v.check("fps", self.fps, label="--fps", hint="the paper's is 30")
        v.check("size", self.resolution, label="--resolution", hint="the side of the square crops (VAE /8 and three UNet downsamplings); the paper's is 512")
        v.check("segment_seconds", self.min_seconds, label="--min-seconds")
        v.check("segment_seconds", self.max_seconds, label="--max-seconds")
        if self.min_seconds > self.max_seconds:
            raise v.InputError(
                f"--min-seconds {self.min_seconds:g} is above --max-seconds {self.max_seconds:g}; lower the first or raise the second"
            )
        v.check("count", self.shard_size, label="--shard-size", rule=positive, hint="segments per tar shard; 64 is the default")
        v.check("workers", self.workers, label="--workers")
        v.check_choice(self.detector, DETECTORS, label="--detector")
        v.check("count", self.detect_every, label="--detect-every", rule=positive, hint="1 detects faces on every frame")
        v.check("pixels", self.detect_size, label="--detect-size", hint="the longest side faces are detected at; 640 is the default")
        v.check("fraction", self.min_face_fraction, label="--min-face-fraction")
        v.check("crop_ratio", self.crop_ratio, label="--crop-ratio")
        v.check_choice(self.scene_detector, ("content", "none"), label="--scene-detector")
        v.check("scene_threshold", self.scene_threshold, label="--scene-threshold")
        lo, hi = FORMATS["mp4"].crf_range
        v.check("crf", self.crf, label="--crf", rule=v.Rule(lo, hi, integer=True), hint="x264 quality of the stored crops: lower is better, 0 lossless")
        from .head_pose import get_estimator

        try:
            get_estimator(self.speed_estimator)
        except (KeyError, TypeError, ImportError, AttributeError, ValueError) as exc:
            raise v.InputError(f"--speed-estimator: {v.first_line(exc.args[0] if exc.args else exc)}") from exc
        return self


def _load_model_config(spec: str):
    from ..configs import EMOConfig, get_config

    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        return EMOConfig.from_json(path.read_text()).validate()
    return get_config(spec)


# --------------------------------------------------------------------------------------------------
# Results


@dataclass
class SegmentResult:
    key: str
    meta: dict
    files: dict[str, str]  # member extension -> path of the file in the work folder


@dataclass
class FileResult:
    source: str  # path relative to the input folder
    size: int
    mtime: float
    segments: list[SegmentResult] = field(default_factory=list)
    skipped: str | None = None  # reason the whole file was skipped
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> number of scenes/segments dropped
    seconds: float = 0.0  # duration of the source
    elapsed: float = 0.0


# --------------------------------------------------------------------------------------------------
# Decoding


def _open(path: Path):
    import av

    try:
        container = av.open(str(path), mode="r")
    except Exception as exc:  # av.FFmpegError, OSError, ...
        raise SkipFile(f"cannot open as a video: {_first_line(exc)}") from None
    if not container.streams.video:
        container.close()
        raise SkipFile("no video stream")
    if not container.streams.audio:
        container.close()
        raise SkipFile("no audio track (training needs the speech / singing that drives the face)")
    return container


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _frame_times(container) -> Iterator[tuple[float, object]]:
    """(seconds since the stream's first frame, av.VideoFrame) in decode order (monotonic pts)."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    first = None
    last = -math.inf
    for frame in container.decode(stream):
        if frame.pts is None:
            continue
        t = float(frame.pts * frame.time_base)
        if first is None:
            first = t
        t -= first
        if t <= last:  # duplicated / reordered timestamps: keep the first
            continue
        last = t
        yield t, frame


def resampled_frames(container, fps: float, first: int = 0, stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Target frames ``k`` (``first <= k < stop``) at ``fps``: the source frame shown at time ``k / fps``.

    Yields (k, RGB uint8 [H, W, 3]); a source frame that covers several target frames is converted
    once. Ends with the source: the last source frame covers one source-frame duration.
    """
    k = first
    prev, prev_rgb, prev_t, step = None, None, 0.0, 1.0 / fps
    eps = 1e-6
    for t, frame in _frame_times(container):
        while (stop is None or k < stop) and t > k / fps + eps:
            if prev is not None:
                if prev_rgb is None:
                    prev_rgb = prev.to_ndarray(format="rgb24")
                yield k, prev_rgb
            k += 1
        if stop is not None and k >= stop:
            return
        if prev is not None:
            step = max(t - prev_t, 1e-3)
        prev, prev_rgb, prev_t = frame, None, t
    while prev is not None and (stop is None or k < stop) and k / fps < prev_t + step - eps:
        if prev_rgb is None:
            prev_rgb = prev.to_ndarray(format="rgb24")
        yield k, prev_rgb
        k += 1


def detect_scenes(path: Path, opts: Options) -> list[tuple[float, float]] | None:
    """Scenes as (start, end) seconds from the first frame; None = scene detection turned off."""
    if opts.scene_detector == "none":
        return None
    try:
        from scenedetect import ContentDetector, SceneManager
        from scenedetect.backends.pyav import VideoStreamAv
    except ImportError:
        raise RuntimeError(
            "scene detection needs PySceneDetect: pip install 'scenedetect>=0.6.4,!=0.6.7.1,<0.7' "
            "(or pass --scene-detector none to treat every video as one scene)"
        ) from None
    try:
        # suppress_output keeps PySceneDetect from turning FFmpeg's console logging back on
        video = VideoStreamAv(str(path), threading_mode="NONE", suppress_output=True)
        manager = SceneManager()
        manager.auto_downscale = True
        manager.add_detector(ContentDetector(threshold=opts.scene_threshold))
        manager.detect_scenes(video=video, show_progress=False)
        scenes = manager.get_scene_list(start_in_scene=True)
    except Exception as exc:
        raise SkipFile(f"scene detection failed: {_first_line(exc)}") from None
    return [(s.get_seconds(), e.get_seconds()) for s, e in scenes]


def split_scene(first: int, stop: int, min_frames: int, max_frames: int) -> list[tuple[int, int]]:
    """Frame ranges of min..max frames covering a scene [first, stop): equal parts, or none if too short."""
    total = stop - first
    if total < min_frames:
        return []
    parts = math.ceil(total / max_frames)
    size = total // parts
    if size >= min_frames:
        bounds = [first + round(i * total / parts) for i in range(parts + 1)]
        return list(zip(bounds[:-1], bounds[1:], strict=True))
    out = [(s, min(s + max_frames, stop)) for s in range(first, stop, max_frames)]
    return [(a, b) for a, b in out if b - a >= min_frames]


# --------------------------------------------------------------------------------------------------
# Faces and crops


def _detect(frame: np.ndarray, opts: Options, previous: np.ndarray | None) -> np.ndarray | None:
    """The face box [x0, y0, x1, y1] in frame pixels, or None."""
    import cv2

    from ..face import detect_faces

    h, w = frame.shape[:2]
    scale = min(1.0, opts.detect_size / max(h, w))
    small = (
        cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        if scale < 1
        else frame
    )
    try:
        boxes = detect_faces(small, detector=opts.detector, models_dir=opts.models_dir)
    except Exception:
        return None
    if not boxes:
        return None
    cands = [np.array(b.as_tuple()) / scale for b in boxes]
    if previous is not None:
        overlapping = [c for c in cands if _iou(c, previous) > 0.3]
        if overlapping:
            return overlapping[0]  # largest first
    return cands[0]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def fill_boxes(boxes: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Linear interpolation of the boxes of frames without a detection (edges hold the nearest)."""
    idx = np.flatnonzero(found)
    out = boxes.copy()
    frames = np.arange(len(boxes))
    for c in range(4):
        out[:, c] = np.interp(frames, idx, boxes[idx, c])
    return out


def crop_square(boxes: np.ndarray, crop_ratio: float) -> tuple[float, float, float]:
    """(x0, y0, side) of the static square crop of a segment, in source pixels."""
    union = np.array([boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()])
    face = float(np.median(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])))
    side = max(crop_ratio * face, 1.1 * max(union[2] - union[0], union[3] - union[1]), 8.0)
    cx, cy = (union[0] + union[2]) / 2, (union[1] + union[3]) / 2
    return cx - side / 2, cy - side / 2, side


def crop_frame(frame: np.ndarray, x0: float, y0: float, side: float, size: int) -> np.ndarray:
    """The square [x0, x0+side) x [y0, y0+side) of ``frame`` at size x size (edge padding outside)."""
    import cv2

    s = size / side
    src, f = frame, 1.0
    if s < 0.5:  # anti-alias: shrink by an integer factor with area averaging first
        k = int(1.0 / s)
        h, w = frame.shape[:2]
        src = cv2.resize(frame, (max(1, w // k), max(1, h // k)), interpolation=cv2.INTER_AREA)
        f = src.shape[1] / w
    m = np.array([[s / f, 0.0, s * (0.5 / f - x0) - 0.5], [0.0, s / f, s * (0.5 / f - y0) - 0.5]])
    return cv2.warpAffine(src, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


# --------------------------------------------------------------------------------------------------
# One file


_ENCODERS: dict = {}


def _audio_encoder(opts: Options):
    from ..audio_encoders import build_audio_encoder

    key = (opts.config, opts.audio_encoder)
    if key not in _ENCODERS:
        cfg = _load_model_config(opts.config).audio
        _ENCODERS[key] = build_audio_encoder(cfg, opts.audio_encoder)
    return _ENCODERS[key]


def _load_track(path: Path, container) -> tuple[np.ndarray, float]:
    """Mono 16 kHz audio of the file and its start relative to the first video frame (seconds)."""
    from ..audio import SAMPLE_RATE, AudioError, load_audio, resample

    try:
        waveform, rate = load_audio(path)
    except AudioError as exc:
        raise SkipFile(f"audio: {str(exc).splitlines()[0]}") from None
    mono = resample(waveform.mean(dim=0), rate, SAMPLE_RATE).numpy()
    a, v = container.streams.audio[0], container.streams.video[0]
    a_start = float(a.start_time * a.time_base) if a.start_time is not None else 0.0
    v_start = float(v.start_time * v.time_base) if v.start_time is not None else 0.0
    return mono, a_start - v_start


def _segment_key(source: str, first: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(source).stem)[:40] or "video"
    digest = hashlib.sha1(source.encode()).hexdigest()[:8]
    return f"{stem}-{digest}-{first:07d}"


def process_file(path: Path, source: str, opts: Options, work: Path) -> FileResult:
    """Everything for one source video; never raises (errors become the file's skip reason)."""
    stat = path.stat()
    result = FileResult(source=source, size=stat.st_size, mtime=stat.st_mtime)
    start = time.time()
    try:
        _process(path, opts, work, result)
    except SkipFile as exc:
        result.skipped, result.segments = str(exc), []
    except Exception as exc:  # a bug or an unexpected decoder failure: report it, go on
        result.skipped, result.segments = f"failed: {_first_line(exc)}", []
        traceback.print_exc(file=sys.stderr)
    result.elapsed = time.time() - start
    return result


def _process(path: Path, opts: Options, work: Path, result: FileResult) -> None:
    from ..audio import SAMPLE_RATE

    container = _open(path)
    with container:
        audio, audio_offset = _load_track(path, container)
        # ---- pass A: face boxes on the resampled frames -----------------------------------------
        boxes, found, detected = [], [], []
        previous = None
        try:
            for k, frame in resampled_frames(container, opts.fps):
                box = None
                if k % opts.detect_every == 0:
                    box = _detect(frame, opts, previous)
                    detected.append(k)
                boxes.append(box if box is not None else np.zeros(4))
                found.append(box is not None)
                previous = box if box is not None else previous
        except Exception as exc:
            raise SkipFile(f"video decoding failed: {_first_line(exc)}") from None
    total = len(boxes)
    if total == 0:
        raise SkipFile("no decodable video frames")
    result.seconds = total / opts.fps
    audio_frames = int((len(audio) / SAMPLE_RATE + audio_offset) * opts.fps)
    if min(total, audio_frames) < math.ceil(opts.min_seconds * opts.fps):
        raise SkipFile(f"shorter than --min-seconds ({min(total, audio_frames) / opts.fps:.2f} s of audio and video)")
    boxes_a, found_a, detected = np.array(boxes), np.array(found), set(detected)

    # ---- scenes -> segments ----------------------------------------------------------------------
    scenes = detect_scenes(path, opts)
    usable = min(total, audio_frames)
    if scenes is None or not scenes:
        scenes = [(0.0, usable / opts.fps)]
    min_frames, max_frames = math.ceil(opts.min_seconds * opts.fps - 1e-6), int(opts.max_seconds * opts.fps + 1e-6)
    plans = []
    dropped = Counter()
    for s, e in scenes:
        first, stop = math.ceil(s * opts.fps - 1e-6), min(int(e * opts.fps + 1e-6), usable)
        pieces = split_scene(first, stop, min_frames, max_frames)
        if not pieces:
            dropped["scene shorter than --min-seconds"] += 1
        for a, b in pieces:
            rows = [i for i in range(a, b) if i in detected]
            fraction = float(found_a[rows].mean()) if rows else 0.0
            if fraction < opts.min_face_fraction:
                dropped[f"face found in less than {opts.min_face_fraction:.0%} of the frames"] += 1
                continue
            seg_boxes = fill_boxes(boxes_a[a:b], found_a[a:b])
            plans.append((a, b, seg_boxes, fraction))
    result.dropped = dict(dropped)
    if not plans:
        return

    # ---- pass B: crop, write, label ----------------------------------------------------------------
    from .head_pose import get_estimator

    cfg = _load_model_config(opts.config)
    encoder = _audio_encoder(opts)
    estimator = get_estimator(opts.speed_estimator)
    starts = {plan[0]: plan for plan in plans}
    current, crop, crops = None, None, []
    try:
        with _open(path) as container:
            for k, frame in resampled_frames(container, opts.fps, plans[0][0], plans[-1][1]):
                if current is None and k in starts:
                    current, crops = starts[k], []
                    crop = crop_square(current[2], opts.crop_ratio)
                if current is None:
                    continue
                crops.append(crop_frame(frame, *crop, opts.resolution))
                if k == current[1] - 1:
                    a, b, seg_boxes, fraction = current
                    segment = Segment(result.source, a, b, np.stack(crops), seg_boxes, found_a[a:b], fraction, crop)
                    result.segments.append(_write_segment(segment, audio, audio_offset, opts, cfg, encoder, estimator, work))
                    current, crops = None, []
    except Exception as exc:
        if not result.segments:
            raise SkipFile(f"video decoding failed: {_first_line(exc)}") from None
        result.dropped[f"decoding failed mid-file: {_first_line(exc)}"] = 1


@dataclass
class Segment:
    source: str
    first: int  # first target frame in the source
    stop: int
    frames: np.ndarray  # cropped RGB uint8 [F, R, R, 3]
    boxes: np.ndarray  # face boxes in source pixels [F, 4]
    found: np.ndarray  # detection hit per frame (False: interpolated or not searched)
    face_fraction: float
    crop: tuple[float, float, float]  # x0, y0, side in source pixels


def _write_segment(
    seg: Segment, audio: np.ndarray, audio_offset: float, opts: Options, cfg, encoder, estimator, work: Path
) -> SegmentResult:
    """Labels, mask, audio features and the three members of one segment, written to ``work``."""
    import torch
    from safetensors.torch import save as save_tensors

    from ..audio import SAMPLE_RATE, PreparedAudio, frame_samples
    from ..face import FaceBox, face_region_mask
    from ..video_io import VideoWriter

    a, b, source, seg_boxes, found, fraction = seg.first, seg.stop, seg.source, seg.boxes, seg.found, seg.face_fraction
    n = b - a
    x0, y0, side = seg.crop
    scale = opts.resolution / side
    crop_boxes = np.stack(
        [
            (seg_boxes[:, 0] - x0) * scale,
            (seg_boxes[:, 1] - y0) * scale,
            (seg_boxes[:, 2] - x0) * scale,
            (seg_boxes[:, 3] - y0) * scale,
        ],
        axis=1,
    ).astype(np.float32)
    union = np.array([crop_boxes[:, 0].min(), crop_boxes[:, 1].min(), crop_boxes[:, 2].max(), crop_boxes[:, 3].max()], np.float32)
    mask = face_region_mask(FaceBox(*union.tolist()), opts.resolution, opts.resolution, cfg.preset.face_expand_ratio)
    stack = seg.frames
    speed = estimator.estimate(stack, crop_boxes, opts.fps)
    # audio of exactly these frames
    start = round((a / opts.fps - audio_offset) * SAMPLE_RATE)
    count = frame_samples(n, opts.fps)
    clip = audio[max(0, start) : max(0, start) + count]
    clip = np.pad(clip, (max(0, -start), 0))[:count]
    clip = np.pad(clip, (0, count - len(clip))).astype(np.float32)
    prepared = PreparedAudio(waveform=torch.from_numpy(clip), num_frames=n, fps=opts.fps)
    feats = encoder.encode(prepared)
    if cfg.audio.kind in ("wav2vec2", "logmel"):
        feats = feats[:, cfg.audio.margin]  # per frame; the dataset re-windows with real neighbours
    key = _segment_key(source, a)
    meta = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "source": source,
        "source_start": a / opts.fps,
        "source_end": b / opts.fps,
        "first_frame": a,
        "frames": n,
        "fps": opts.fps,
        "resolution": opts.resolution,
        "crop_box": [x0, y0, x0 + side, y0 + side],
        "face_fraction": round(fraction, 4),
        "audio": dataclasses.asdict(cfg.audio),
        "audio_windowed": cfg.audio.kind not in ("wav2vec2", "logmel"),
        "speed_estimator": estimator.name,
        "speed_description": estimator.description,
        "speed_fallback_frames": int(getattr(estimator, "fallback_frames", 0)),
        "speed_mean": float(speed.mean()),
        "speed_p95": float(np.percentile(speed, 95)),
    }
    tensors = {
        "audio_features": feats.contiguous().to(torch.float16),
        "audio": torch.from_numpy(clip),
        "speed": torch.from_numpy(np.ascontiguousarray(speed, np.float32)),
        "boxes": torch.from_numpy(crop_boxes),
        "face_found": torch.from_numpy(np.asarray(found, np.uint8)),
        "union_box": torch.from_numpy(union),
        "mask": torch.from_numpy((mask > 0.5).astype(np.uint8)),
    }
    files = {}
    video = work / f"{key}.mp4"
    with VideoWriter(video, opts.fps, crf=opts.crf, audio=(clip, SAMPLE_RATE), threads=1) as w:
        w.write(stack)
    files["mp4"] = str(video)
    (work / f"{key}.safetensors").write_bytes(save_tensors(tensors, metadata={"key": key}))
    files["safetensors"] = str(work / f"{key}.safetensors")
    (work / f"{key}.json").write_text(json.dumps(meta, sort_keys=True))
    files["json"] = str(work / f"{key}.json")
    return SegmentResult(key=key, meta=meta, files=files)


# --------------------------------------------------------------------------------------------------
# Shards, journal, index, report


class ShardWriter:
    """Tar shards of whole files; the journal line for a shard is written after its rename."""

    def __init__(self, out: Path, shard_size: int):
        self.out, self.shard_size = out, shard_size
        for partial in out.glob(".shard-*.tar.partial"):
            partial.unlink()
        numbers = [int(p.stem.split("-")[1]) for p in out.glob("shard-*.tar")]
        self.next_number = max(numbers, default=-1) + 1
        self.tar: tarfile.TarFile | None = None
        self.name = ""
        self.count = 0
        self.pending: list[dict] = []

    def add(self, result: FileResult) -> None:
        record = {
            "source": result.source,
            "size": result.size,
            "mtime": result.mtime,
            "seconds": result.seconds,
            "skipped": result.skipped,
            "dropped": result.dropped,
            "elapsed": round(result.elapsed, 2),
            "segments": [],
        }
        for seg in result.segments:
            if self.tar is None:
                self.name = f"shard-{self.next_number:06d}.tar"
                self.next_number += 1
                self.tar = tarfile.open(self.out / f".{self.name}.partial", "w", format=tarfile.PAX_FORMAT)
            members = {}
            for ext in ("json", "safetensors", "mp4"):
                data = Path(seg.files[ext]).read_bytes()
                info = tarfile.TarInfo(f"{seg.key}.{ext}")
                info.size, info.mtime = len(data), int(time.time())
                self.tar.addfile(info, io.BytesIO(data))
                # addfile leaves the stream at the end of the data's 512-byte blocks
                members[ext] = [self.tar.offset - tarfile.BLOCKSIZE * -(-len(data) // tarfile.BLOCKSIZE), len(data)]
            entry = {
                k: seg.meta[k]
                for k in (
                    "key",
                    "source",
                    "source_start",
                    "source_end",
                    "frames",
                    "fps",
                    "resolution",
                    "speed_mean",
                    "speed_estimator",
                )
            }
            entry.update(shard=self.name, members=members, audio_kind=seg.meta["audio"]["kind"])
            record["segments"].append(entry)
            self.count += 1
        self.pending.append(record)
        if self.count >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        shard = None
        if self.tar is not None:
            self.tar.close()
            os.replace(self.out / f".{self.name}.partial", self.out / self.name)
            shard = self.name
        if self.pending:
            line = json.dumps({"shard": shard, "files": self.pending}, sort_keys=True)
            with open(self.out / "journal.jsonl", "a") as fh:
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        self.tar, self.count, self.pending = None, 0, []


def read_journal(out: Path) -> list[dict]:
    path = out / "journal.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line from a crash: that shard's files are redone
            continue
    return [r for r in records if r["shard"] is None or (out / r["shard"]).is_file()]


def write_index_and_report(out: Path, opts: Options, listed: int) -> dict:
    files = [f for record in read_journal(out) for f in record["files"]]
    latest = {f["source"]: f for f in files}  # a re-done file replaces its older record
    segments = [s for f in latest.values() for s in f["segments"]]
    segments.sort(key=lambda s: s["key"])
    tmp = out / ".index.jsonl.partial"
    tmp.write_text("".join(json.dumps(s, sort_keys=True) + "\n" for s in segments))
    os.replace(tmp, out / "index.jsonl")
    frames = sum(s["frames"] for s in segments)
    dropped = Counter()
    for f in latest.values():
        dropped.update(f["dropped"])
    speeds = [s["speed_mean"] for s in segments]
    report = {
        "format_version": FORMAT_VERSION,
        "options": dataclasses.asdict(opts),
        "files_listed": listed,
        "files_done": len(latest),
        "files_used": sum(1 for f in latest.values() if f["segments"]),
        "files_skipped": {f["source"]: f["skipped"] for f in latest.values() if f["skipped"]},
        "segments": len(segments),
        "frames": frames,
        "hours": frames / opts.fps / 3600,
        "source_hours": sum(f["seconds"] for f in latest.values()) / 3600,
        "shards": sorted({s["shard"] for s in segments}),
        "dropped": dict(dropped),
        "segment_speed_mean": {
            "mean": float(np.mean(speeds)) if speeds else None,
            "p5": float(np.percentile(speeds, 5)) if speeds else None,
            "p50": float(np.percentile(speeds, 50)) if speeds else None,
            "p95": float(np.percentile(speeds, 95)) if speeds else None,
        },
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    kind = _load_model_config(opts.config).audio.kind
    lines = [
        f"EMO training dataset: {out}",
        (
            f"  {report['segments']} segments, {frames} frames, {report['hours']:.3f} h at {opts.fps:g} fps, "
            f"{opts.resolution}x{opts.resolution}, audio features: {kind}"
        ),
        (
            f"  from {report['files_used']} of {listed} files ({report['source_hours']:.3f} h of source video), "
            f"{len(report['shards'])} shards"
        ),
    ]
    if speeds:
        sm = report["segment_speed_mean"]
        lines.append(
            f"  head speed per segment ({opts.speed_estimator}, deg/frame): "
            f"p5 {sm['p5']:.3f}, median {sm['p50']:.3f}, p95 {sm['p95']:.3f}"
        )
    if report["files_skipped"]:
        lines.append(f"  skipped files ({len(report['files_skipped'])}):")
        lines += [f"    {src}: {why}" for src, why in sorted(report["files_skipped"].items())]
    if dropped:
        lines.append("  dropped scenes / segments:")
        lines += [f"    {n} x {why}" for why, n in sorted(dropped.items())]
    (out / "report.txt").write_text("\n".join(lines) + "\n")
    return report


def list_videos(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith("."))


def _worker(args: tuple[str, str, Options, str]) -> FileResult:
    path, source, opts, work = args
    import torch

    torch.set_num_threads(1)
    return process_file(Path(path), source, opts, Path(work))


def preprocess(input_dir: Path, out: Path, opts: Options, log=print) -> dict:
    """Run (or resume) preprocessing; returns the report dict."""
    from .. import validation

    opts.validate()  # every option, the input and the output folder before any work
    input_dir = validation.check_input_path(input_dir, label="the input folder", kind="folder")
    out = validation.check_output_folder(out, label="--out")
    validation.check_input_path(opts.audio_encoder, label="--audio-encoder")
    validation.check_input_path(opts.models_dir, label="--models-dir", kind="folder")
    try:
        _load_model_config(opts.config)
    except (KeyError, ValueError, TypeError) as exc:
        raise validation.InputError(
            f"--config {opts.config!r}: {validation.first_line(exc.args[0] if exc.args else exc)}; give a config name or a config .json file"
        ) from exc
    out.mkdir(parents=True, exist_ok=True)
    if opts.scene_detector == "content":
        try:
            import scenedetect  # noqa: F401
        except ImportError:
            raise RuntimeError(
                "PySceneDetect is not installed: pip install 'scenedetect>=0.6.4,!=0.6.7.1,<0.7' (or --scene-detector none)"
            ) from None
    try:
        _audio_encoder(opts)  # load the encoder once (and fail early without weights)
    except ValueError as exc:
        raise RuntimeError(f"{exc} Give the encoder with --audio-encoder PATH, or pick a logmel config.") from None
    videos = list_videos(input_dir)
    done = {}
    for record in read_journal(out):
        for f in record["files"]:
            done[f["source"]] = (f["size"], f["mtime"])
    shards = ShardWriter(out, opts.shard_size)
    work_root = out / ".work"
    work_root.mkdir(exist_ok=True)
    todo = []
    for path in videos:
        source = path.relative_to(input_dir).as_posix()
        stat = path.stat()
        if done.get(source) == (stat.st_size, stat.st_mtime):
            continue
        todo.append((path, source))
    log(f"preprocess: {len(videos)} videos, {len(videos) - len(todo)} already done, {len(todo)} to do")

    def jobs():
        for i, (path, source) in enumerate(todo):
            work = work_root / f"{i:06d}"
            work.mkdir(parents=True, exist_ok=True)
            yield (str(path), source, opts, str(work))

    def handle(result: FileResult, work: str) -> None:
        shards.add(result)
        shutil.rmtree(work, ignore_errors=True)
        state = f"skipped ({result.skipped})" if result.skipped else f"{len(result.segments)} segments"
        log(f"  {result.source}: {state} [{result.elapsed:.1f} s]")

    if opts.workers <= 1:
        for job in jobs():
            handle(_worker(job), job[3])
    else:
        with futures.ProcessPoolExecutor(max_workers=opts.workers) as pool:
            pending = [(job, pool.submit(_worker, job)) for job in jobs()]
            for job, fut in pending:
                try:
                    result = fut.result()
                except Exception as exc:  # a worker died (decoder crash, out of memory)
                    stat = Path(job[0]).stat()
                    result = FileResult(job[1], stat.st_size, stat.st_mtime, skipped=f"worker failed: {_first_line(exc)}")
                handle(result, job[3])
    shards.flush()
    shutil.rmtree(work_root, ignore_errors=True)
    report = write_index_and_report(out, opts, len(videos))
    log((out / "report.txt").read_text().rstrip())
    return report


# --------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = Options()
    parser.add_argument("input", type=Path, help="folder of videos (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="dataset folder (created; re-running resumes)")
    parser.add_argument("--fps", type=float, default=d.fps, help="target frame rate (paper: 30)")
    parser.add_argument("--resolution", type=int, default=d.resolution, help="side of the square crops (paper: 512)")
    parser.add_argument("--min-seconds", type=float, default=d.min_seconds, help="shortest segment (paper: 3)")
    parser.add_argument("--max-seconds", type=float, default=d.max_seconds, help="longest segment (paper: 12)")
    parser.add_argument(
        "--config", default=d.config, help="model config name (emo, tiny, ...) or config JSON: picks the audio features"
    )
    parser.add_argument(
        "--audio-encoder", default=None, help="wav2vec2 / whisper checkpoint (file or folder) for those feature kinds"
    )
    parser.add_argument(
        "--shard-size", type=int, default=d.shard_size, help="segments per tar shard (approximate: shards hold whole files)"
    )
    parser.add_argument("--workers", type=int, default=d.workers, help="processes working on files in parallel")
    parser.add_argument("--detector", default=d.detector, help="face detector: auto, haar, lbp, yunet, mediapipe")
    parser.add_argument("--models-dir", default=None, help="folder with optional face detector models (yunet, mediapipe)")
    parser.add_argument(
        "--detect-every", type=int, default=d.detect_every, help="detect faces on every N-th frame, interpolate between"
    )
    parser.add_argument("--detect-size", type=int, default=d.detect_size, help="longest side of the copy faces are detected on")
    parser.add_argument(
        "--min-face-fraction", type=float, default=d.min_face_fraction, help="drop segments with fewer face detections"
    )
    parser.add_argument(
        "--crop-ratio", type=float, default=d.crop_ratio, help="crop side / face size (inference portraits use 2.0)"
    )
    parser.add_argument("--speed-estimator", default=d.speed_estimator, help="head speed labels: flow, box, or module:factory")
    parser.add_argument(
        "--scene-detector", default=d.scene_detector, choices=("content", "none"), help="PySceneDetect content detector, or none"
    )
    parser.add_argument("--scene-threshold", type=float, default=d.scene_threshold, help="ContentDetector threshold")
    parser.add_argument("--crf", type=int, default=d.crf, help="x264 quality of the stored crops (lower = better, 0 = lossless)")


def run(args: argparse.Namespace) -> int:
    opts = Options(
        fps=args.fps,
        resolution=args.resolution,
        min_seconds=args.min_seconds,
        max_seconds=args.max_seconds,
        config=args.config,
        audio_encoder=args.audio_encoder,
        shard_size=args.shard_size,
        workers=args.workers,
        detector=args.detector,
        models_dir=args.models_dir,
        detect_every=args.detect_every,
        detect_size=args.detect_size,
        min_face_fraction=args.min_face_fraction,
        crop_ratio=args.crop_ratio,
        speed_estimator=args.speed_estimator,
        scene_detector=args.scene_detector,
        scene_threshold=args.scene_threshold,
        crf=args.crf,
    )
    from ..validation import InputError, first_line

    try:
        preprocess(args.input, args.out, opts)
    except InputError:
        raise  # the CLI prints its one line (--debug: the traceback)
    except (FileNotFoundError, RuntimeError, ValueError, KeyError) as exc:
        raise InputError(first_line(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)) from exc
    return 0

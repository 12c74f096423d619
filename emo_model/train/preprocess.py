"""``python -m emo_model preprocess``: a folder of talking / singing videos -> a streaming training dataset.

What happens to every video (paper §4.1 and supplement B.2, where EMO describes its data):

1. **Checks.** A file PyAV cannot open or decode, one without an audio track, or one shorter than the
   minimum segment is skipped and listed in the report with the reason; nothing stops the run.
2. **Scene cuts** with PySceneDetect (``ContentDetector``, its default threshold 27), as EMO does. Each
   scene is cut into segments of ``--min-seconds`` .. ``--max-seconds`` (3-12 s): a scene longer than
   the maximum is split into equal parts; shorter than the minimum, it is dropped.
3. **Frame rate.** Frames are resampled to ``--fps`` (default: the ``--config``'s preset fps, 30 for ``emo``,
   the paper's; 25 for ``tiny``; the run says which it took) by time: target frame ``k``
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
   resized to ``--resolution`` (default: the config's preset resolution, 512 for ``emo``, 64 for ``tiny``;
   area filter when shrinking).
6. **Face-region mask** (the Face Locator's input): the union box in crop coordinates, expanded by the
   config's ``preset.face_expand_ratio`` (1.2), as a 0/1 mask.
7. **Audio**: the track mixed to mono and resampled to 16 kHz (:mod:`emo_model.audio.signal`), cut to exactly
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
import json
import math
import re
import shutil
import sys
import time
import traceback
from collections import Counter
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .face_track import _detect, crop_frame, crop_square, fill_boxes
from .preprocess_options import (
    FORMAT_VERSION,
    VIDEO_SUFFIXES,
    FileResult,
    Options,
    SegmentResult,
    SkipFile,
    _first_line,
    _load_model_config,
)
from .shards import ShardWriter, read_journal, write_index_and_report
from .video_decode import _open, detect_scenes, resampled_frames, split_scene

# --------------------------------------------------------------------------------------------------
# Options


# --------------------------------------------------------------------------------------------------
# Results


# --------------------------------------------------------------------------------------------------
# Decoding


# --------------------------------------------------------------------------------------------------
# Faces and crops


# --------------------------------------------------------------------------------------------------
# One file


_ENCODERS: dict = {}


def _audio_encoder(opts: Options):
    from ..audio.encoders import build_audio_encoder

    key = (opts.config, opts.audio_encoder)
    if key not in _ENCODERS:
        cfg = _load_model_config(opts.config).audio
        _ENCODERS[key] = build_audio_encoder(cfg, opts.audio_encoder)
    return _ENCODERS[key]


def _load_track(path: Path, container) -> tuple[np.ndarray, float]:
    """Mono 16 kHz audio of the file and its start relative to the first video frame (seconds)."""
    from ..audio.signal import SAMPLE_RATE, AudioError, load_audio, resample

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
    from ..audio.signal import SAMPLE_RATE

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

    from ..audio.signal import SAMPLE_RATE, PreparedAudio, frame_samples
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

    taken = opts.fill_from_config()  # --fps / --resolution not given: the model config's own
    opts.validate()  # every option, the input and the output folder before any work
    input_dir = validation.check_input_path(input_dir, label="the input folder", kind="folder")
    out = validation.check_output_folder(out, label="--out")
    validation.check_input_path(opts.audio_encoder, label="--audio-encoder")
    validation.check_input_path(opts.models_dir, label="--models-dir", kind="folder")
    if taken:
        log(
            f"preprocess: {opts.resolution} px crops at {opts.fps:g} fps (the {Path(opts.config).stem} config's own "
            f"{' and '.join(taken)}; --resolution / --fps change them)"
        )
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
    parser.add_argument(
        "--fps", type=float, default=d.fps, help="target frame rate [default: the --config's own: emo 30 (the paper's), tiny 25]"
    )
    parser.add_argument(
        "--resolution", type=int, default=d.resolution,
        help="side of the square crops [default: the --config's own: emo 512 (the paper's), tiny 64]",
    )
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

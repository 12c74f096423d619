"""Decoding training videos: frames at a fixed rate, scene cuts, and scenes split into segments."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .preprocess_options import Options, SkipFile, _first_line


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

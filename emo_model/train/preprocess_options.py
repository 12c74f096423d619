"""What preprocessing is asked to do and what it reports: the options, per-file and per-segment results, the format version."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".flv", ".mpg", ".mpeg", ".ts")


FORMAT_VERSION = 1


class SkipFile(Exception):
    """A source file that cannot be used; the message is the reason written to the report."""


@dataclass
class Options:
    fps: float | None = None  # None: the model config's preset fps (emo 30, tiny 25)
    resolution: int | None = None  # None: the model config's preset resolution (emo 512, tiny 64)
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

    def fill_from_config(self) -> list[str]:
        """Take ``fps`` / ``resolution`` left at None from the model config's preset; the names of those taken.

        An unknown config name or an unreadable config file is an InputError naming ``--config``.
        """
        from .. import validation as v

        try:
            preset = _load_model_config(self.config).preset
        except (KeyError, ValueError, TypeError) as exc:
            raise v.InputError(
                f"--config {self.config!r}: {v.first_line(exc.args[0] if exc.args else exc)}; give a config name or a config .json file"
            ) from exc
        taken = []
        if self.fps is None:
            self.fps, taken = float(preset.fps), [*taken, "fps"]
        if self.resolution is None:
            self.resolution, taken = int(preset.resolution), [*taken, "resolution"]
        return taken

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
    from ..configs import EMOConfig
    from ..families import get_config

    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        return EMOConfig.from_json(path.read_text()).validate()
    return get_config(spec)


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")

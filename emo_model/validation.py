"""The rules and limits of every user-facing value, in one place (the CLI and the nodes both use them).

A user mistake raises :class:`InputError` (a ``ValueError``) whose message is one line: the value, what
is allowed, and what to do. The CLI prints it as ``error: ...`` without a traceback (``--debug`` shows
one); ComfyUI shows it on the node.

Work limits: a run makes at most :data:`DEFAULT_MAX_FRAMES` video frames (10 minutes at 30 fps) unless
the caller raises the limit (``--max-frames`` on the command line, ``max_frames`` on EMO Audio Encode).
Portraits above :data:`MAX_IMAGE_PIXELS` are refused before they are decoded, see :mod:`.image_io`.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch


class InputError(ValueError):
    """A user-facing value is out of its allowed range; the message (one line) says what to do."""


class GenerationError(RuntimeError):
    """Generation produced non-finite numbers; the message names the clip, the step and the likely cause."""


@dataclass(frozen=True)
class Rule:
    """The allowed range of one numeric value."""

    lo: float
    hi: float
    integer: bool = False
    multiple: int = 1
    hint: str = ""

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        lo, hi = (int(self.lo), int(self.hi)) if self.integer else (f"{self.lo:g}", f"{self.hi:g}")
        extra = f", a multiple of {self.multiple}" if self.multiple > 1 else ""
        return f"{kind} from {lo} to {hi}{extra}"


DEFAULT_MAX_FRAMES = 18_000  # 10 minutes at 30 fps: the IMAGE output of ComfyUI alone is ~3 MB per 512² frame
MAX_IMAGE_PIXELS = 50_000_000  # portraits above this are refused before decoding (JPEGs are decoded reduced first)
WORK_IMAGE_SIDE = 4096  # decoded portraits are downscaled to at most this side (the crop is 512 px)

RULES: dict[str, Rule] = {
    "steps": Rule(1, 1000, integer=True, hint="20-40 is typical; omit it for the model's preset"),
    "cfg": Rule(0, 30, hint="1-4 is typical; omit it for the model's preset"),
    "audio_cfg": Rule(0, 30, hint="1-5 is typical; omit it to use cfg"),
    "fps": Rule(1, 120, hint="omit it for the model's preset (25 or 30)"),
    "speed": Rule(0, 3, hint="speech 0.1-1.0, singing 1.0-1.3"),
    "frames_per_clip": Rule(1, 64, integer=True, hint="omit it for the model's preset"),
    "motion_frames": Rule(0, 32, integer=True, hint="omit it for the model's preset"),
    "seed": Rule(0, 2**63 - 1, integer=True, hint="any non-negative integer"),
    "size": Rule(64, 2048, integer=True, multiple=64, hint="omit it for the model's preset (512, or 64 for the demo)"),
    "loudness": Rule(-70, 0, hint="-23 LUFS is broadcast speech"),
    "crf": Rule(0, 63, integer=True, hint="lower is better; mp4 0-51, webm 0-63"),
    "max_frames": Rule(1, 10_000_000, integer=True, hint="a limit on the frames of one run"),
    "face_index": Rule(0, 64, integer=True, hint="0 = the largest face, then by decreasing area"),
    # the other commands (training, preprocessing, evaluation); the sampling rules above serve them too
    "threads": Rule(1, 1024, integer=True, hint="torch threads; more than the CPU cores does not help"),
    "workers": Rule(0, 256, integer=True, hint="parallel worker processes (0 or 1: none)"),
    "clips": Rule(1, 100_000, integer=True, hint="how many synthetic clips to make"),
    "clip_seconds": Rule(0.2, 600, hint="the length of each synthetic clip; 4 is the default"),
    "segment_seconds": Rule(0.5, 600, hint="training segments are 3 to 12 s in the paper"),
    "train_steps": Rule(1, 100_000_000, integer=True, hint="optimiser steps of a training run"),
    "count": Rule(0, 1_000_000_000, integer=True, hint="a whole number, 0 or more"),
    "fraction": Rule(0, 1, hint="a fraction from 0 (none) to 1 (all)"),
    "learning_rate": Rule(0, 1, hint="the paper trains at 1e-5"),
    "pixels": Rule(16, 16384, integer=True, hint="a side in pixels"),
    "crop_ratio": Rule(1, 10, hint="crop side / face size; 2.0 is what inference portraits use"),
    "scene_threshold": Rule(0, 255, hint="PySceneDetect's ContentDetector threshold; 27 is its default"),
    "batch_size": Rule(1, 4096, integer=True, hint="samples per GPU and step; the paper's 4 clips are 4 GPUs x 1"),
    "snr_gamma": Rule(0, 1000, hint="min-SNR loss weighting: 0 = plain MSE; the published setups use 5"),
    "grad_norm": Rule(0, 1_000_000, hint="gradient clipping: 1.0 is the paper's; 0 turns it off"),
}

OUTPUT_SUFFIXES = {".mp4": "mp4", ".webm": "webm"}


def check(name: str, value, *, label: str | None = None, rule: Rule | None = None, hint: str | None = None):
    """``value`` if it follows the rule of ``name``, else :class:`InputError` (``label``: how the user spells it).

    ``hint`` (what to do) replaces the rule's own where one value of the concept has its own advice.
    """
    rule = rule or RULES[name]
    label = label or name
    allowed = f"{label} must be {rule.describe()}"
    hint = rule.hint if hint is None else hint
    what = f"; {hint}" if hint else ""
    if isinstance(value, bool):
        raise InputError(f"{allowed}, got {value!r}{what}")
    if rule.integer and isinstance(value, int):  # compared exactly: float() rounds integers above 2**53 (the top seeds)
        if not rule.lo <= value <= rule.hi or value % rule.multiple:
            raise InputError(f"{allowed}, got {value!r}{what}")
        return int(value)
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{allowed}, got {value!r}{what}") from None
    if not math.isfinite(number):
        raise InputError(f"{allowed}, got {value!r}{what}")
    if rule.integer and number != int(number):
        raise InputError(f"{allowed}, got {value!r}{what}")
    if not rule.lo <= number <= rule.hi or (rule.integer and int(number) % rule.multiple):
        raise InputError(f"{allowed}, got {value!r}{what}")
    return int(number) if rule.integer else number


def check_optional(name: str, value, *, label: str | None = None, hint: str | None = None):
    """Like :func:`check`; None (= the model's preset) passes."""
    return None if value is None else check(name, value, label=label, hint=hint)


def check_choice(value, choices, *, label: str, hint: str = ""):
    """``value`` if it is one of ``choices``, else one line listing them."""
    if value in choices:
        return value
    what = f"; {hint}" if hint else ""
    raise InputError(f"{label} must be one of {', '.join(str(c) for c in choices)}, got {value!r}{what}")


def check_speed(speed, *, label: str = "speed"):
    """A head speed, or a per-frame curve of them: finite and in range."""
    if isinstance(speed, (list, tuple)) or (isinstance(speed, torch.Tensor) and speed.dim() > 0):
        values = [float(v) for v in (speed.flatten().tolist() if isinstance(speed, torch.Tensor) else speed)]
        if not values:
            raise InputError(f"{label} is empty; give at least one value ({RULES['speed'].hint})")
        for v in values:
            check("speed", v, label=f"every value of {label}")
        return list(values)
    return check("speed", speed, label=label)


def check_settings(settings, config, *, labels: dict[str, str] | None = None) -> None:
    """Every sampling value of ``settings`` (a SamplingSettings) against the rules and the model's limits."""
    labels = labels or {}
    label = lambda name: labels.get(name, name)
    for name in ("steps", "cfg", "audio_cfg", "frames_per_clip", "motion_frames", "seed"):
        check(name, getattr(settings, name), label=label(name))
    check_speed(settings.speed, label=label("speed"))
    from .sampling.schedulers import samplers_for

    allowed = samplers_for(config.preset.scheduler)
    if settings.sampler not in allowed:
        raise InputError(f"{label('sampler')} {settings.sampler!r} does not sample {config.name}; choose one of {', '.join(allowed)}")
    classes = config.backbone.emotion_classes if config.backbone.emotion_audio_modules else 0
    if settings.emotion is not None and classes:
        e = settings.emotion  # one class, or one per frame (a list, tuple or array); 1.5 or "1" is one wrong value
        values = list(e) if hasattr(e, "__iter__") and not isinstance(e, str) else [e]
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < classes for v in values):
            raise InputError(f"{label('emotion')} must be an emotion class 0..{classes - 1} of {config.name}, got {settings.emotion!r}")
    if settings.strategy == "motion_frames":
        limit = config.backbone.temporal.max_len
        longest = settings.frames_per_clip + settings.motion_frames
        if longest > limit:
            raise InputError(
                f"{label('frames_per_clip')} + {label('motion_frames')} = {longest}, but {config.name}'s temporal layers "
                f"handle at most {limit} frames; lower one of them (or omit both for the preset)"
            )
    elif settings.frames_per_clip > config.backbone.temporal.max_len:
        raise InputError(
            f"{label('frames_per_clip')} = {settings.frames_per_clip}, but {config.name}'s temporal layers handle at most "
            f"{config.backbone.temporal.max_len} frames; lower it (or omit it for the preset)"
        )


def check_portrait_tensor(image: torch.Tensor, *, label: str = "image") -> None:
    """An IMAGE-style portrait [H, W, 3] with finite values."""
    if image.dim() != 3 or image.shape[-1] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"{label} must be one picture shaped [height, width, 3] (an IMAGE), got shape {list(image.shape)}")
    if image.is_floating_point() and not bool(torch.isfinite(image).all()):
        raise InputError(f"{label} holds NaN or infinite values (a failed upstream node); fix the node that made it")


def check_frame_count(num_frames: int, fps: float, max_frames: int | None, *, label: str = "--max-frames", how: str = "") -> None:
    """Refuse a run of more than ``max_frames`` frames (None = :data:`DEFAULT_MAX_FRAMES`) before any work on it.

    ``how``: where ``num_frames`` came from when the audio is not decoded whole: ``"declared"`` (the file's recorded
    length, before decoding) or ``"decoding"`` (the samples decoded so far, when decoding stops at the limit).
    """
    limit = DEFAULT_MAX_FRAMES if max_frames is None else max_frames
    if num_frames <= limit:
        return
    what = f"makes {num_frames} frames ({num_frames / fps:.1f} s at {fps:g} fps), more than the limit of {limit} frames per run"
    raise_to = f"{label} {num_frames}"
    if how == "declared":
        what = (f"makes {num_frames} frames ({num_frames / fps:.1f} s at {fps:g} fps, by the length its file records), more than "
                f"the limit of {limit} frames per run")
    elif how == "decoding":
        what = f"runs past the limit of {limit} frames per run ({limit / fps:.1f} s at {fps:g} fps; decoding stopped there)"
        raise_to = label
    raise InputError(f"the audio {what}; raise it with {raise_to} if you mean it, or use shorter audio / a lower fps")


def check_output_path(
    path: str | os.PathLike, *, label: str = "--out", overwrite: bool = True, overwrite_flag: str | None = None
) -> tuple[Path, str]:
    """(path, format) for a video to write; refused before any model work when it cannot be written.

    A path naming an existing folder is refused (rather than guessing a file name inside it); ``overwrite=False``
    refuses an existing file (see :func:`check_output_file`).
    """
    out = check_output_file(
        path, label=label, suffixes=tuple(OUTPUT_SUFFIXES), example="emo.mp4", overwrite=overwrite, overwrite_flag=overwrite_flag
    )
    return out, OUTPUT_SUFFIXES[out.suffix.lower()]


def _control_character(text: str) -> str | None:
    """The first control character of a path (a newline pasted into a flag, a NUL), spelled as Python would, or None."""
    for ch in text:
        if ord(ch) < 32 or ord(ch) == 127:
            return repr(ch)
    return None


def check_not_an_input(out: Path, inputs: dict[str, str | os.PathLike | None], *, label: str = "--out") -> None:
    """Refuse an output that is one of the run's own inputs: the same file by any name (a hard link, a symlink, another
    spelling on a case-insensitive disk: ``os.path.samefile``), so writing it could never replace a source."""
    if not out.exists():
        return
    for flag, path in inputs.items():
        if path is None:
            continue
        try:
            same = os.path.samefile(out, path)
        except (OSError, ValueError):
            continue
        if same:
            raise InputError(f"{label} {str(out)!r} is the {flag} file ({str(path)!r}); writing it would replace your input; pick another path")


def check_output_file(
    path: str | os.PathLike,
    *,
    label: str,
    suffixes: tuple[str, ...],
    example: str | None = None,
    overwrite: bool = True,
    overwrite_flag: str | None = None,
) -> Path:
    """A file to write: not a folder, one of ``suffixes``, its folder existing and writable (checked before any work).

    ``overwrite=False``: an existing file is refused, naming ``overwrite_flag`` (e.g. ``--force``) if there is one.
    """
    out = Path(path)
    example = example or f"out{suffixes[0]}"
    bad = _control_character(str(path))
    if bad:
        raise InputError(f"{label} {str(path)!r} contains the control character {bad} (a pasted line break?); give a plain file name")
    if out.is_dir():
        raise InputError(f"{label} {str(out)!r} is a folder; give a file name in it, e.g. {str(out / example)!r}")
    if out.suffix.lower() not in suffixes:
        ends = " or ".join(suffixes)
        raise InputError(f"{label} must end in {ends}, got {str(out)!r}; e.g. {str(out.with_suffix(suffixes[0]))!r}")
    parent = out.parent  # "." for a bare file name
    if not parent.is_dir():
        raise InputError(f"the output folder {str(parent)!r} of {label} does not exist; create it or pick another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"the output folder {str(parent)!r} of {label} is not writable; pick another path")
    if out.exists() and not out.is_file():
        raise InputError(f"{label} {str(out)!r} exists and is not a regular file (a pipe, device or socket); pick another path")
    if out.exists() and not overwrite:
        how = f"pass {overwrite_flag} to overwrite it or pick another path" if overwrite_flag else "pick another path"
        raise InputError(f"{label} {str(out)!r} exists; {how}")
    if out.exists() and not os.access(out, os.W_OK):
        raise InputError(f"{label} {str(out)!r} exists and is read-only; pick another path")
    return out


def check_output_folder(path: str | os.PathLike, *, label: str) -> Path:
    """A folder to write into (created if missing, with its parents): refused before any work when that cannot work.

    An existing folder must be writable; a missing one needs its nearest existing ancestor to be a writable folder.
    """
    out = Path(path)
    bad = _control_character(str(path))
    if bad:
        raise InputError(f"{label} {str(path)!r} contains the control character {bad} (a pasted line break?); give a plain folder name")
    if out.exists():
        if not out.is_dir():
            raise InputError(f"{label} {str(out)!r} is a file, not a folder; give a folder (it is created if missing)")
        if not os.access(out, os.W_OK | os.X_OK):
            raise InputError(f"{label} {str(out)!r} is not writable; pick another folder")
        return out
    ancestor = out.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{label} {str(out)!r} cannot be created: {str(ancestor)!r} is a file; pick another folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"{label} {str(out)!r} cannot be created: {str(ancestor)!r} is not writable; pick another folder")
    return out


def check_input_path(path: str | os.PathLike | None, *, label: str, kind: str = "file or folder") -> Path | None:
    """An input that must exist (``kind``: "file", "folder" or "file or folder"); None (not given) passes."""
    if path is None:
        return None
    p = Path(path)
    try:
        exists = p.exists()
    except (OSError, ValueError):  # a NUL in the name, a name too long for the file system
        exists = False
    if not exists:
        bad = _control_character(str(path))
        why = f" (it contains the control character {bad}: a pasted line break?)" if bad else ""
        raise InputError(f"{label} {str(path)!r}: no such {kind}{why}")
    if not p.is_file() and not p.is_dir():  # reading a FIFO would wait forever; a device is not a picture
        raise InputError(f"{label} {str(path)!r} is not a regular {kind} (a pipe, device or socket); give a {kind}")
    if kind == "file" and not p.is_file():
        raise InputError(f"{label} {str(path)!r} is a folder; give a file")
    if kind == "folder" and not p.is_dir():
        raise InputError(f"{label} {str(path)!r} is a file; give a folder")
    return p


def pick_device(name: str, *, label: str = "--device") -> torch.device:
    """'auto', 'cpu', 'cuda', 'cuda:N' or 'mps' -> a device that exists here, else one line saying why not."""
    text = str(name).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"{label} must be auto, cpu, cuda, cuda:N or mps, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch build has no CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise InputError(f"{label} {name}: {why} (torch {torch.__version__}); use {label} cpu or auto")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InputError(f"{label} {name}: there {'is' if count == 1 else 'are'} only {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise InputError(f"{label} mps: Apple's Metal backend is not available here; use {label} cpu or auto")
    return device


# ---- numerical guards -------------------------------------------------------------------------------

LIKELY_CAUSES = (
    "likely causes: fp16 overflow (load the model in fp32 or bf16: --dtype fp32, or dtype in Load EMO Model), or "
    "damaged weights (check the checkpoint with `python -m emo_model inspect`)"
)


def check_finite(tensor: torch.Tensor, what: str, *, clip: int, clips: int | None, step: int | None = None, steps: int | None = None) -> None:
    """Stop a run whose ``tensor`` (latents or decoded frames) holds NaN/inf, naming where it happened.

    One ``isfinite().all()`` (one device sync) per call; the pipeline calls it once per step.
    """
    if bool(torch.isfinite(tensor).all()):
        return
    where = f"clip {clip + 1}" + (f" of {clips}" if clips else "") + (f", step {step} of {steps}" if step is not None else "")
    raise GenerationError(f"the {what} became NaN or infinite at {where} ({str(tensor.dtype).removeprefix('torch.')}); {LIKELY_CAUSES}")


_PIECE = 1 << 22  # elements upcast at a time for dtypes without their own isfinite (fp8): 16 MB of float32


def _float_pieces(tensor: torch.Tensor):
    """The values of ``tensor`` in pieces that ``torch.isfinite`` takes: the tensor itself, or float32 copies of
    4 M elements at a time for dtypes it does not implement (float8_e4m3fn, float8_e5m2, ...)."""
    try:
        torch.isfinite(tensor.reshape(-1)[:1])
    except (NotImplementedError, RuntimeError):
        flat = tensor.reshape(-1)
        for start in range(0, flat.numel(), _PIECE):
            yield flat[start : start + _PIECE].float()
        return
    yield tensor


def _all_finite(tensor: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(piece).all()) for piece in _float_pieces(tensor))


def bad_tensor(name: str, tensor: torch.Tensor, expected: torch.dtype | None = None) -> str | None:
    """Why a checkpoint tensor is unusable (non-float where the model wants floats, NaN/inf values), or None."""
    if expected is not None and expected.is_floating_point and not tensor.is_floating_point():
        return f"{name} holds {str(tensor.dtype).removeprefix('torch.')} values where the model needs floating point"
    if tensor.is_floating_point() and tensor.numel() and not tensor.is_meta and not _all_finite(tensor):
        bad = sum(int((~torch.isfinite(piece)).sum()) for piece in _float_pieces(tensor))
        return f"{name} holds {bad} NaN/infinite value{'s' if bad != 1 else ''} of {tensor.numel()}"
    return None


def first_line(text: object) -> str:
    """Any message as one line."""
    return " ".join(str(text).split())


@contextmanager
def user_input():
    """Inside, a ``ValueError`` or ``FileNotFoundError`` is a problem with the user's input (e.g. a model file
    that does not load): it leaves as :class:`InputError` with the same message, chained to the original, so
    the CLI prints one ``error:`` line and ``--debug`` shows the whole traceback (a ``SystemExit`` would hide it)."""
    try:
        yield
    except InputError:
        raise
    except (ValueError, FileNotFoundError) as exc:
        raise InputError(str(exc)) from exc

"""`emo generate` run in-process as a user types it, with the frames caught where they reach the video writer.

The from-files parity tests (issue 24 item 5: ``tests/test_parity_from_files_*.py``) hand the same image file and
audio file to an original's own entry point (the fixture) and to our command line. Both sides are compared on the
frames each hands its video writer, before any 8-bit rounding or encoding: ours are the float ``[N, H, W, 3]`` 0..1
batches `emo generate` passes to :class:`emo_model.video_io.VideoWriter`.

``run_generate(argv)`` replaces the writer for the duration of one run (no file is written) and returns the frames,
the fps and the audio the writer was given, the exit status and what the command printed on stderr (its notes and
warnings). It does not catch what the command raises: a test sees the traceback.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch


@dataclass
class Generated:
    """What one in-process `emo generate` handed its video writer."""

    status: int
    frames: np.ndarray  # float32 [T, H, W, 3], 0..1, as written (uint8 batches are scaled by 1/255)
    fps: float | None
    audio: Any  # the ComfyUI AUDIO dict the writer muxes, or None
    notes: str  # stderr: the command's note / warning / error lines
    stdout: str
    batches: list[int] = field(default_factory=list)  # frames per write() call, in order


class _CapturingWriter:
    """Stands in for VideoWriter: same constructor and context-manager use; keeps the frames instead of encoding."""

    runs: ClassVar[list[_CapturingWriter]] = []

    def __init__(self, path, fps, *, audio=None, **kwargs):
        self.path, self.fps, self.audio, self.kwargs = path, float(fps), audio, kwargs
        self.chunks: list[np.ndarray] = []
        self.closed = False
        _CapturingWriter.runs.append(self)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.closed = True

    def write(self, frames) -> None:
        if isinstance(frames, torch.Tensor):
            arr = frames.detach().to("cpu", torch.float32).numpy()
        else:
            arr = np.asarray(frames)
            arr = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
        if arr.ndim == 3:
            arr = arr[None]
        self.chunks.append(np.array(arr, dtype=np.float32, copy=True))


def run_generate(argv: list[str], monkeypatch=None) -> Generated:
    """``python -m emo_model generate *argv`` in this process, the writer replaced (``monkeypatch``: pytest's, to undo
    the replacement with the test; without it the writer is restored on return)."""
    from emo_model import video_io
    from emo_model.app.cli import main

    _CapturingWriter.runs = []
    out, err = io.StringIO(), io.StringIO()
    if monkeypatch is not None:
        monkeypatch.setattr(video_io, "VideoWriter", _CapturingWriter)
        restore = contextlib.nullcontext()
    else:
        restore = _patched(video_io, "VideoWriter", _CapturingWriter)
    with restore, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["generate", *argv])
    runs = _CapturingWriter.runs
    assert len(runs) <= 1, f"generate opened {len(runs)} writers"
    w = runs[0] if runs else None
    chunks = w.chunks if w else []
    frames = np.concatenate(chunks) if chunks else np.zeros((0, 0, 0, 3), np.float32)
    return Generated(status=status, frames=frames, fps=w.fps if w else None, audio=w.audio if w else None,
                     notes=err.getvalue(), stdout=out.getvalue(), batches=[len(c) for c in chunks])


@contextlib.contextmanager
def _patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)

"""tests/from_files.py: the frames it catches are the ones `emo generate` writes, and nothing is written."""

from __future__ import annotations

import av
import numpy as np
import torch

from emo_model.video_io import write_video
from tests.conftest import ROOT
from tests.from_files import run_generate

SONG = str(ROOT / "tests" / "parity" / "audio" / "song44k.wav")  # 0.4 s: 10 frames at the demo's 25 fps


def _decode(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.float32) / 255


def test_caught_frames_are_what_the_writer_encodes(tmp_path):
    never = tmp_path / "never.mp4"
    caught = run_generate(["--audio", SONG, "--out", str(never), "--seed", "3"])
    assert caught.status == 0, caught.notes
    assert not never.exists(), "the caught run wrote a file"
    assert caught.frames.shape == (10, 64, 64, 3) and caught.frames.dtype == np.float32 and caught.fps == 25.0
    assert sum(caught.batches) == 10 and caught.audio is not None
    assert 0.0 <= caught.frames.min() and caught.frames.max() <= 1.0

    from emo_model.app.cli import main

    out = tmp_path / "real.mp4"
    assert main(["generate", "--audio", SONG, "--out", str(out), "--seed", "3"]) == 0
    written = _decode(out)
    # the caught frames, encoded by the real writer with the same settings, decode to the real run's frames: the
    # same encoder on the same input (x264 is deterministic for it); a 1-level slack for a rounding in the scaler
    again = tmp_path / "again.mp4"
    write_video(again, torch.from_numpy(caught.frames), caught.fps, audio=caught.audio)
    assert np.abs(_decode(again) - written).max() <= 1 / 255 + 1e-6
    other = run_generate(["--audio", SONG, "--out", str(never), "--seed", "4"])  # a different input: the check can fail
    write_video(tmp_path / "other.mp4", torch.from_numpy(other.frames), other.fps, audio=other.audio)
    assert np.abs(_decode(tmp_path / "other.mp4") - written).max() > 10 / 255

"""Hallo2 from the user's files: the image file and song file of hallo_from_files.py through Hallo2's own entry point.

Issue 24, item 5. Runs in its own venv (tools/parity/README.md, "Hallo2 from files": Hallo2's pins, diffusers 0.32.2,
plus what its preprocessing imports, pydub included), never in ours:

    venv-hallo2-files/bin/python tools/parity/hallo2_from_files.py --hallo2-src $P/hallo2 --out tests/parity/hallo2_files

Everything is hallo_from_files.py's (the files, the stand-ins, the tiny networks and the same hash-generated net.pth, the
recorded stages; its docstring), run on ``scripts/inference_long.py``'s ``inference_process`` with a config that is
``configs/inference/long.yaml`` as a user edits it (the same paths and changes: size 64, 3 steps, 8 frames per clip,
``weight_dtype: fp32``; ``use_mask`` / ``mask_rate`` 0.25 / ``use_cut`` as published). Hallo2's own code also cuts the
song into 60 s pieces with pydub (one piece here) and drops motion-frame pixels outside the face with ``torch.rand``
after its seed 42. Besides hallo_from_files.py's patches: ``icecream``'s ``ic`` is silenced (debug printing), and
``tensor_to_video_batch`` keeps the frames.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hallo_from_files  # noqa: E402


def _silence_icecream(script, put) -> None:
    script.ic = lambda *a, **kw: None


HALLO2 = types.SimpleNamespace(
    name="hallo2", repo="https://github.com/fudan-generative-vision/hallo2", script="scripts/inference_long.py",
    config="configs/inference/long.yaml", writer="tensor_to_video_batch", config_changes={},
    stubs=("av", "moviepy", "icecream"), packages=("pydub",), patch=_silence_icecream,
    output_flag=False)

if __name__ == "__main__":
    hallo_from_files.main(variant=HALLO2)

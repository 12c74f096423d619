"""Hallo2 from the user's files (issue 24, item 5): `emo generate --family hallo2` against Hallo2's own entry point.

``tests/parity/hallo2_files/`` was made by ``tools/parity/hallo2_from_files.py`` in Hallo2's venv: ``scripts/
inference_long.py``'s ``inference_process`` on ``configs/inference/long.yaml`` as a user edits it, from the same PNG file
and song file as tests/test_parity_from_files_hallo.py (whose helpers, stand-ins and checks run here): Hallo2's pydub
cut into 60 s pieces, the real audio-separator 0.17.2, its pixel drop on the motion frames after seed 42. Our side:
the same files through `emo generate` with ``--family hallo2`` (Hallo2's weights are Hallo's network: the user names
the family) and the tiny-hallo2 preset. Judged by the standard (tests/parity_floor.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from safetensors.torch import load_file

import tests.test_parity_from_files_hallo as hallo
from tests.conftest import ROOT

FIX = Path(os.environ.get("EMO_PARITY_HALLO2_FILES_DIR") or ROOT / "tests" / "parity" / "hallo2_files")  # or another fixture
META = json.loads((FIX / "meta.json").read_text())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    for seen in hallo.generate_from_files(tmp_path_factory.mktemp("hallo2_files"), META, "hallo2", ("--family", "hallo2")):
        yield {**seen, "fix": FIX}


@pytest.fixture(scope="module")
def golden():
    return load_file(FIX / "stages.safetensors")


def test_the_run_is_hallo2s(run):
    assert run["session"].config.name == "tiny-hallo2" and run["session"].config.preset.quirks.motion_frame_pixel_drop == 0.25


# the same checks as Hallo's, on this fixture (run["fix"])
test_generate_runs_hallo2s_preprocessing = hallo.test_generate_runs_hallos_preprocessing
test_frames_are_hallo2s = hallo.test_frames_are_hallos
test_portrait_and_masks_are_hallo2s = hallo.test_portrait_and_masks_are_hallos
test_identity_is_embedded_as_hallo2_does = hallo.test_identity_is_embedded_from_the_whole_picture_as_hallo_does
test_vocals_are_hallo2s = hallo.test_vocals_are_hallos
test_audio_features_and_tokens_are_hallo2s = hallo.test_audio_features_and_tokens_are_hallos
test_the_comparison_can_fail = hallo.test_the_comparison_can_fail


def test_hallo2_is_not_hallo(run):
    """The same files give Hallo another video (the pixel drop draws before each clip's noise): the family matters."""
    import torch

    from tests.conftest import rel_err

    _, rel = rel_err(torch.from_numpy(run["result"].frames), load_file(hallo.FIX / "stages.safetensors")["frames"])
    assert rel > 1e-2, rel

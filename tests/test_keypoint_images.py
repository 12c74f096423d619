"""Three-point keypoint images and retargeting: the drawing against the images V-Express's own code drew (its parity
fixture), the retarget modes on closed-form sequences."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from emo_model.face.keypoint_images import keypoint_images, keypoints_from_pose_keypoint, retarget, stretch_sequence

FIXTURE = Path(__file__).parent / "parity" / "v_express"


def test_drawing_matches_the_original_images():
    """The fixture's keypoint images were drawn by the original (its OpenCV 4.9) from the stretched driving keypoints;
    OpenCV's integer rasterisation is stable, but a tolerance of 0.1 % of the pixels guards a release changing an edge."""
    meta = json.loads((FIXTURE / "meta.json").read_text())
    gold = load_file(FIXTURE / "stages.safetensors")
    size, frames = meta["settings"]["size"], meta["settings"]["video_length"]
    seq = stretch_sequence(gold["input.kps_driving"].double().numpy(), frames)
    ours = (keypoint_images(size, size, seq.numpy()) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    original = gold["input.kps_images"]
    assert ours.shape == original.shape
    differing = (ours != original).any(-1).float().mean().item()
    assert differing <= 1e-3, f"{differing:.2%} of the pixels differ"


def test_stretch_cuts_then_interpolates():
    seq = np.arange(10 * 6, dtype=np.float64).reshape(10, 3, 2)
    assert torch.equal(stretch_sequence(seq, 4), torch.from_numpy(seq[:4]))  # longer: cut, nothing to stretch
    long = stretch_sequence(seq[:3], 6)
    assert long.shape == (6, 3, 2) and torch.allclose(long[0], torch.from_numpy(seq[0]))


def test_retarget_modes():
    ref = np.array([[30.0, 40.0], [70.0, 40.0], [50.0, 60.0]])
    t = np.arange(5, dtype=np.float64)[:, None, None]
    drv = np.array([[10.0, 10.0], [30.0, 10.0], [20.0, 20.0]])[None] + np.concatenate([t, 0 * t], -1) * 2
    assert np.array_equal(retarget(ref, None, "fix_face", 5), np.repeat(ref[None], 5, 0))
    assert np.array_equal(retarget(ref, drv, "no_retarget", 5), drv)
    naive = retarget(ref, drv, "naive_retarget", 5)
    assert np.allclose(naive[0, 2], ref[2]) and np.allclose(naive[0, 1, 0] - naive[0, 0, 0], 40.0)  # scaled 2x in x
    offset = retarget(ref, drv, "offset_retarget", 5)
    assert np.allclose(offset[0], ref) and np.allclose(offset[4, :, 0], ref[:, 0] - 0.5 * 2 * 4 * 2)  # half the nose path
    with pytest.raises(ValueError, match="choose one of"):
        retarget(ref, drv, "mirror", 5)
    with pytest.raises(ValueError, match="needs driving keypoints"):
        retarget(ref, None, "naive_retarget", 5)


def test_pose_keypoint_eyes_and_nose():
    """DWPose's body points 14, 15, 0 (right eye, left eye, nose of the subject) in the centred square of the canvas."""
    def frame(dx, conf=1.0):
        body = [0.0] * 54
        for i, (x, y) in {0: (160 + dx, 60), 14: (150 + dx, 50), 15: (170 + dx, 50)}.items():
            body[3 * i: 3 * i + 3] = [x, y, conf]
        return {"canvas_width": 240, "canvas_height": 120, "people": [{"pose_keypoints_2d": body}]}

    kps = keypoints_from_pose_keypoint([frame(0, 0.0), frame(0), frame(4), frame(8, 0.0)], size=60)
    assert kps.shape == (4, 3, 2)
    assert np.allclose(kps[1], [[45, 25], [55, 25], [50, 30]])  # (x - 60) / 2: the 120 px square scaled to 60
    assert np.allclose(kps[0], kps[1]) and np.allclose(kps[3], kps[2])  # missing: the nearest earlier (or first) face
    with pytest.raises(ValueError, match="no face"):
        keypoints_from_pose_keypoint([frame(0, 0.0)], size=60)

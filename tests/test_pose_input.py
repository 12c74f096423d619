"""Pose input for a pose guider: the original's drawing, its template files (read safely), POSE_KEYPOINT, the idle sway."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from emo_model.pose.drawing import draw_frame
from emo_model.pose.sequences import from_pose_keypoint, from_template_folder, hands_from_pose_keypoint, idle_sway
from emo_model.pose.templates import PoseTemplateError, read_template

FIXTURE = pathlib.Path(__file__).parent / "parity" / "echomimic_v2"


@pytest.fixture(scope="module")
def drawn():
    """Synthetic hand keypoints and EchoMimic v2's own drawing of them (draw_pose_select_v2 as infer.py calls it)."""
    gold = load_file(FIXTURE / "stages.safetensors")
    return gold["input.hands"].double().numpy(), gold["input.hands_score"].double().numpy(), gold["input.poses"][0].permute(1, 2, 3, 0)


def test_our_drawing_is_the_originals(drawn):
    hands, scores, original = drawn
    size = original.shape[1]
    ours = np.stack([draw_frame(h, s, (size, size)) for h, s in zip(hands, scores)])
    assert ours.shape == tuple(original.shape) and original.float().mean() > 1  # hands drawn, not a black frame
    assert np.array_equal(ours, original.numpy())


def test_pose_keypoint_from_dwpose_maps_onto_the_same_drawing(drawn):
    hands, scores, original = drawn
    size = original.shape[1]
    frames = []
    for h, s in zip(hands, scores):  # as comfyui_controlnet_aux's DWPose writes them: pixels, x y confidence triples
        kp = [np.concatenate([h[k] * size, s[k][:, None]], 1).reshape(-1).tolist() for k in range(2)]
        frames.append({"people": [{"pose_keypoints_2d": [], "hand_left_keypoints_2d": kp[0], "hand_right_keypoints_2d": kp[1]}],
                       "canvas_width": size, "canvas_height": size})
    poses = from_pose_keypoint(frames, size)
    assert torch.equal((poses * 255).round().to(torch.uint8), original.permute(0, 3, 1, 2))


def test_pose_keypoint_on_a_wide_canvas_uses_the_centred_square():
    kp = [0.0] * 63
    kp[0:3] = [160.0, 50.0, 1.0]  # the wrist at the centre of a 320 x 100 canvas
    hands, scores = hands_from_pose_keypoint([{"people": [{"hand_right_keypoints_2d": kp}], "canvas_width": 320, "canvas_height": 100}])
    assert np.allclose(hands[0, 1, 0], [0.5, 0.5]) and scores[0, 1, 0] == 1.0 and scores[0, 0].sum() == 0


def test_a_template_folder_is_drawn_in_frame_order(tmp_path, drawn):
    hands, scores, original = drawn
    size = original.shape[1]
    for i in range(3):
        np.save(tmp_path / f"{i}.npy", {"bodies": {}, "hands": hands[i], "hands_score": scores[i],
                                       "draw_pose_params": [size, size, 0, size, 0, size]}, allow_pickle=True)
    assert read_template(tmp_path / "1.npy")["hands"].shape == (2, 21, 2)
    poses = from_template_folder(tmp_path, size)
    assert torch.equal((poses * 255).round().to(torch.uint8), original[:3].permute(0, 3, 1, 2))
    double = from_template_folder(tmp_path, 2 * size)  # params made for `size` pixels, drawn at twice that
    assert double.shape == (3, 3, 2 * size, 2 * size) and double.mean() > 0
    os.remove(tmp_path / "1.npy")
    with pytest.raises(PoseTemplateError, match="missing"):
        from_template_folder(tmp_path, size)


def test_a_template_that_names_other_code_is_refused(tmp_path):
    np.save(tmp_path / "0.npy", {"hands": pathlib.PurePosixPath("x"), "hands_score": []}, allow_pickle=True)
    with pytest.raises(PoseTemplateError, match="PurePosixPath"):
        read_template(tmp_path / "0.npy")
    np.save(tmp_path / "1.npy", np.zeros((2, 21, 2)))
    with pytest.raises(PoseTemplateError, match="not a pose dict"):
        read_template(tmp_path / "1.npy")


def test_the_idle_sway_moves_gently_and_is_the_same_every_time():
    poses = idle_sway(200, 64, fps=24.0)
    assert poses.shape == (96, 3, 64, 64)  # one 4 s period; the sampler mirrors it over longer videos
    assert poses.amax() > 0.5 and not torch.equal(poses[0], poses[24])
    assert torch.equal(poses, idle_sway(200, 64, fps=24.0))
    assert idle_sway(5, 64).shape[0] == 5


def test_a_model_without_a_pose_guider_refuses_a_pose_and_a_pose_guided_one_sways_by_default(tmp_path):
    from emo_model.app.pose_input import pose_frames_for
    from emo_model.families import get_config
    from emo_model.validation import InputError

    assert pose_frames_for(get_config("tiny-echomimic"), None, 10, 64, 24.0) == (None, "")
    with pytest.raises(InputError, match="no pose guider"):
        pose_frames_for(get_config("tiny-echomimic"), str(tmp_path), 10, 64, 24.0, label="--pose")
    v2 = get_config("tiny-echomimic-v2")
    frames, note = pose_frames_for(v2, None, 10, 64, 24.0)
    assert frames.shape == (10, 3, 64, 64) and "idle sway" in note
    with pytest.raises(InputError, match=r"^--pose: pose folder .* does not exist"):
        pose_frames_for(v2, str(tmp_path / "nowhere"), 10, 64, 24.0, label="--pose")


def test_emo_generate_takes_a_pose_folder(tmp_path, drawn, capsys):
    """The CLI end to end on a tiny EchoMimic v2 model: --pose with a short template folder (mirrored), one line for a bad one."""
    import json

    from comfy_harness import write_portrait, write_speech
    from conftest import parity_common, tiny_vae

    from emo_model.app.cli import main
    from emo_model.network.model import EMOModel
    from emo_model.weights.native import save_native

    hands, scores, original = drawn
    pose_dir = tmp_path / "pose"
    pose_dir.mkdir()
    for i in range(3):
        np.save(pose_dir / f"{i}.npy", {"hands": hands[i], "hands_score": scores[i], "draw_pose_params": [64, 64, 0, 64, 0, 64]})
    torch.manual_seed(0)
    save_native(EMOModel("tiny-echomimic-v2"), tmp_path / "v2.safetensors")
    tiny_vae().save_pretrained(tmp_path / "vae")
    w = json.loads((FIXTURE / "meta.json").read_text())["whisper"]
    torch.save({"dims": w["dims"], "model_state_dict": parity_common().hashed_state_dict([tuple(x) for x in w["spec"]], w["seed"])},
               tmp_path / "whisper.pt")
    base = ["generate", "--model", str(tmp_path / "v2.safetensors"), "--vae", str(tmp_path / "vae"), "--audio-encoder",
            str(tmp_path / "whisper.pt"), "--image", str(write_portrait(tmp_path / "f.png", size=96)), "--audio",
            str(write_speech(tmp_path / "s.wav", seconds=0.3)), "--steps", "1", "--size", "64", "--device", "cpu"]
    assert main(base + ["--out", str(tmp_path / "a.mp4"), "--pose", str(pose_dir)]) == 0
    err = capsys.readouterr().err
    assert "pose: pose/ (3 pose templates), mirrored back and forth" in err and (tmp_path / "a.mp4").stat().st_size > 0
    rc = main(base + ["--out", str(tmp_path / "b.mp4"), "--pose", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert rc == 1 and "--pose: pose folder" in err and "Traceback" not in err and not (tmp_path / "b.mp4").exists()

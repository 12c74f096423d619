"""V-Express from the user's files: keypoints from the portrait and a driving video, the retarget modes, the whole-window
frame count with its stretched fps, the median filter of the written frames, `emo generate` and the nodes end to end."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from comfy_harness import cli, error_line, load_pack, node_result, tiny_wav2vec2_folder, v_express_parts, write_speech
from conftest import perturb_zero_inits, tiny_vae

from emo_model.app.keypoint_input import driving_keypoints, keypoint_frames_for
from emo_model.app.session import whole_windows
from emo_model.face.keypoint_detection import find_keypoints, frame_keypoints, reference_keypoints, to_square
from emo_model.families import get_config
from emo_model.families.v_express import PARTS
from emo_model.network.model import EMOModel
from emo_model.sampling.median_filter import MedianFilter, median_filter_video
from emo_model.validation import InputError

# hand-marked on skimage.data.astronaut() (512 x 512): pupils of the image-left and image-right eye, tip of the nose
ASTRONAUT_KEYPOINTS = np.array([[203.8, 101.3], [246.0, 104.0], [222.5, 126.0]])


def astronaut():
    import skimage.data

    return skimage.data.astronaut()


def face_crop(size: int = 64) -> np.ndarray:
    """The astronaut's face and shoulders (200 x 200 around the face) at ``size``: the tiny model's portrait."""
    import cv2

    return cv2.resize(astronaut()[30:230, 120:320], (size, size), interpolation=cv2.INTER_AREA)


# ---- keypoints from pictures --------------------------------------------------------------------------------------


@pytest.mark.parametrize("detector", ["haar", "lbp"])
def test_reference_keypoints_of_the_astronaut_are_her_eyes_and_nose(detector):
    found = reference_keypoints(astronaut(), detector=detector)
    assert found.source == "box"  # no insightface or YuNet files here: the face box's proportions
    assert np.abs(found.points - ASTRONAUT_KEYPOINTS).max() < 6.0, found.points  # pixels of 512


def test_a_picture_without_a_face_is_refused_in_one_line():
    from emo_model.face.boxes import FaceError

    assert find_keypoints(np.full((128, 128, 3), 0.5)) is None
    with pytest.raises(FaceError, match="no face found on the portrait"):
        reference_keypoints(np.full((128, 128, 3), 0.5))


def test_driving_frames_follow_the_face_and_fill_frames_without_one():
    img = astronaut()
    frames = [img[0:400, 40:440], img[0:400, 60:460], np.zeros((400, 400, 3), np.uint8), img[10:410, 40:440]]
    points, source, misses = frame_keypoints(frames)
    assert source == "box" and misses == 1
    assert points[1, 2, 0] - points[0, 2, 0] == pytest.approx(-20, abs=4)  # the picture moved 20 px left
    assert np.array_equal(points[2], points[1])  # no face: the previous frame's keypoints
    assert points[3, 2, 1] - points[0, 2, 1] == pytest.approx(-10, abs=4)
    with pytest.raises(ValueError, match="no face found in any of the 2 driving"):
        frame_keypoints([np.zeros((200, 200, 3), np.uint8)] * 2)


def test_a_wide_frame_maps_through_its_centred_square():
    assert np.allclose(to_square([[160.0, 50.0]] * 3, 100, 320, 512), [[256.0, 256.0]] * 3)


# ---- keypoint images for the model --------------------------------------------------------------------------------


def test_without_driving_keypoints_every_frame_is_the_portraits_own():
    images, note = keypoint_frames_for(get_config("tiny-v-express"), face_crop(), None, None, 30)
    assert images.shape == (1, 3, 64, 64) and images.amax() == 1.0  # one image for every frame: fix_face
    assert note.startswith("keypoints: fix_face")
    with pytest.raises(InputError, match="offset_retarget needs driving keypoints"):
        keypoint_frames_for(get_config("tiny-v-express"), face_crop(), None, "offset_retarget", 30)
    with pytest.raises(InputError, match="retarget must be one of auto, fix_face"):
        keypoint_frames_for(get_config("tiny-v-express"), face_crop(), None, "sideways", 30)


def _pose_keypoint(points, size):
    body = [0.0] * 54
    frames = []
    for p in points:
        for index, (x, y) in zip((14, 15, 0), p):
            body[3 * index : 3 * index + 3] = [x, y, 1.0]
        frames.append({"people": [{"pose_keypoints_2d": list(body)}], "canvas_width": size, "canvas_height": size})
    return frames


def test_driving_keypoints_are_stretched_and_retargeted_as_the_mode_says():
    from emo_model.face.keypoint_images import keypoint_images, retarget, stretch_sequence

    portrait = face_crop()
    ref = reference_keypoints(portrait).points
    drive = np.stack([ref + [dx, 0.0] for dx in (0.0, 4.0, 8.0)])  # the nose moves 8 px right over 3 frames
    config = get_config("tiny-v-express")
    images, note = keypoint_frames_for(config, portrait, _pose_keypoint(drive, 64), None, 5)
    assert "offset_retarget" in note and "stretched to 5 frames" in note  # auto with driving keypoints: offset_retarget
    expected = retarget(ref, stretch_sequence(drive, 5).numpy(), "offset_retarget", 5)
    assert torch.equal(images, keypoint_images(64, 64, expected))
    tagged = [{**f, "emo_retarget": "no_retarget"} for f in _pose_keypoint(drive, 64)]  # EMO Face Keypoints names the mode
    images, note = keypoint_frames_for(config, portrait, tagged, None, 3)
    assert "no_retarget" in note and torch.equal(images, keypoint_images(64, 64, drive))


def test_keypoint_files_frame_folders_and_the_originals_kps_pth(tmp_path):
    seq = [np.array([[200.0, 100.0], [250.0, 100.0], [225.0, 130.0]], np.float32) + i for i in range(4)]
    torch.save(seq, tmp_path / "kps.pth")  # as the original's extract script writes it (a list of numpy arrays)
    np.save(tmp_path / "kps.npy", np.stack(seq))
    for name in ("kps.pth", "kps.npy"):
        points, note, _ = driving_keypoints(tmp_path / name, 512)
        assert np.allclose(points, np.stack(seq)) and "4 frames" in note
    (tmp_path / "frames").mkdir()
    import PIL.Image

    for i, shift in enumerate((0, 6, 12)):  # a folder of frames, read up to the video's frame count
        PIL.Image.fromarray(np.roll(face_crop(200), shift, axis=1)).save(tmp_path / "frames" / f"{i:03d}.png")
    points, note, _ = driving_keypoints(tmp_path / "frames", 64, limit=2)
    assert points.shape == (2, 3, 2) and "2 frames" in note and points[1, 2, 0] > points[0, 2, 0]
    with pytest.raises(InputError, match="speech.wav has no video stream"):
        keypoint_frames_for(get_config("tiny-v-express"), face_crop(), write_speech(tmp_path / "speech.wav", 0.2), None, 4)
    np.save(tmp_path / "bad.npy", np.zeros((4, 5)))
    with pytest.raises(InputError, match=r"bad.npy holds \(4, 5\) values"):
        keypoint_frames_for(get_config("tiny-v-express"), face_crop(), tmp_path / "bad.npy", None, 4)


# ---- the original's user-path quirks -------------------------------------------------------------------------------


def test_whole_windows_as_inference_py_counts_them():
    assert whole_windows(10.0, 30.0, 24, 4) == (284, 28.4)  # inference.py:255-264: 10 s -> 284 frames at 28.4 fps
    assert whole_windows(1.3, 30.0, 8, 2) == (38, 38 / 1.3)
    assert whole_windows(0.5, 30.0, 24, 4) == (None, 30.0)  # shorter than a window: its frames kept


def _brute_median(video: np.ndarray, k: int) -> np.ndarray:
    """Each value the median of its k x k x k block in (time, y, x), the video mirrored at its edges (edge not repeated)."""
    r = k // 2
    padded = np.pad(video, ((r, r), (r, r), (r, r), (0, 0)), mode="reflect")
    out = np.empty_like(video)
    for t in range(video.shape[0]):
        for y in range(video.shape[1]):
            for x in range(video.shape[2]):
                out[t, y, x] = np.median(padded[t : t + k, y : y + k, x : x + k].reshape(-1, video.shape[3]), axis=0)
    return out


def test_the_median_filter_streamed_clip_by_clip_equals_the_whole_video_filtered():
    torch.manual_seed(0)
    video = torch.rand(9, 7, 6, 3)
    expected = torch.from_numpy(_brute_median(video.numpy(), 3))
    assert torch.equal(median_filter_video(video, 3), expected)
    out: list = []
    f = MedianFilter(3, out.append)
    for clip in video.split([2, 1, 4, 2]):
        f.push(clip)
    f.close()
    assert torch.equal(torch.cat(out), expected)


# ---- end to end: emo generate and the nodes --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import PIL.Image

    base = tmp_path_factory.mktemp("vexpress")
    torch.manual_seed(0)
    model = perturb_zero_inits(EMOModel("tiny-v-express").eval())
    folder = v_express_parts(model, base / "v_express")
    tiny_vae().save_pretrained(base / "vae")
    tiny_wav2vec2_folder(base / "w2v")
    PIL.Image.fromarray(face_crop(200)).save(base / "face.png")
    return {"model": folder, "vae": base / "vae", "w2v": base / "w2v", "image": base / "face.png",
            "audio": write_speech(base / "speech.wav", seconds=1.3), "dir": base}


def test_the_frame_count_is_cut_to_whole_windows_with_the_fps_stretched(files, monkeypatch):
    from emo_model.app.session import Session

    session = Session.load(str(files["model"]), vae=str(files["vae"]), audio_encoder=str(files["w2v"]), device=torch.device("cpu"))
    audio = session.encode_audio(str(files["audio"]))
    assert (audio.num_frames, round(audio.fps, 4)) == (38, round(38 / 1.3, 4))  # 39 frames at 30 fps without the quirk
    assert abs(audio.audio.duration - 1.3) < 1e-3  # the whole audio, not cut
    quirks = dataclasses.replace(session.config.preset.quirks, frames_whole_windows=False)
    monkeypatch.setattr(session.config.preset, "quirks", quirks)
    assert session.encode_audio(str(files["audio"])).num_frames == 39


def test_emo_generate_runs_v_express_on_the_astronaut(files, capsys, monkeypatch):
    from emo_model.sampling import median_filter
    from emo_model.video_io import probe_video

    filtered = []
    real = median_filter.MedianFilter.push
    monkeypatch.setattr(median_filter.MedianFilter, "push", lambda self, clip: (filtered.append(clip.shape[0]), real(self, clip))[1])
    out = files["dir"] / "out.mp4"
    rc, _, err = cli(capsys, "generate", "--model", files["model"], "--vae", files["vae"], "--audio-encoder", files["w2v"],
                     "--image", files["image"], "--audio", files["audio"], "--out", out, "--steps", "2")
    assert rc == 0, err
    video = probe_video(out)
    assert video.num_frames == 38 and abs(video.fps - 38 / 1.3) < 0.01  # whole windows, the fps stretched
    assert sum(filtered) == 38  # every frame through the median filter (output_median_filter 3)
    assert "keypoints: fix_face, the portrait's by the face box (face keypoints placed in the detected face box" in err


def test_emo_generate_refuses_wrong_keypoint_options_in_one_line(files, capsys):
    base = ["generate", "--model", files["model"], "--vae", files["vae"], "--audio-encoder", files["w2v"], "--image", files["image"],
            "--audio", files["audio"], "--out", files["dir"] / "never.mp4", "--steps", "1"]
    rc, _, err = cli(capsys, *base, "--keypoints", files["dir"] / "missing.mp4")
    assert rc != 0 and "--keypoints" in error_line(err)
    rc, _, err = cli(capsys, *base, "--retarget", "naive_retarget")
    assert rc != 0 and "--retarget naive_retarget needs driving keypoints" in error_line(err)
    rc, _, err = cli(capsys, *base, "--pose", "sway")
    assert rc != 0 and "reads face keypoints, not poses" in error_line(err)
    assert not (files["dir"] / "never.mp4").exists()


def test_nodes_drive_v_express_from_a_video_batch(files, monkeypatch):
    import sys

    import soundfile as sf

    from emo_model.app.session import Session

    pack = load_pack()
    nodes = pack.NODE_CLASS_MAPPINGS
    filtered = []
    medians = sys.modules[pack.__name__ + ".emo_model.sampling.median_filter"].MedianFilter
    real = medians.push
    monkeypatch.setattr(medians, "push", lambda self, clip: (filtered.append(clip.shape[0]), real(self, clip))[1])
    session = Session.load(str(files["model"]), vae=str(files["vae"]), audio_encoder=str(files["w2v"]), device=torch.device("cpu"))
    wave, rate = sf.read(str(files["audio"]), dtype="float32", always_2d=True)
    audio = {"waveform": torch.from_numpy(wave.T.copy())[None], "sample_rate": rate}
    emo_audio = nodes["EMOAudioEncode"]().encode(session, audio, 0.0, "off")["result"][0]
    assert emo_audio.num_frames == 38
    portrait = torch.from_numpy(face_crop(64)).float()[None] / 255
    (reference,) = node_result(nodes["EMOReferenceEncode"]().encode(session, portrait, 0))
    frames = torch.from_numpy(np.stack([face_crop(128)[:, s : s + 120] for s in (0, 4, 8)])).float() / 255  # the head moves
    (keypoints,) = node_result(nodes["EMOFaceKeypoints"]().run("offset_retarget", "auto", frames=frames))
    assert len(keypoints) == 3 and keypoints[0]["emo_retarget"] == "offset_retarget"
    result = nodes["EMOSampler"]().sample(session, reference, emo_audio, 0, 1, 0.0, 0.0, "preset", 0.7, 0, -1, "none", pose=keypoints)
    video, fps, _ = result["result"]
    assert video.shape == (38, 64, 64, 3) and abs(fps - 38 / 1.3) < 1e-6
    assert sum(filtered) == 38  # the Sampler's frames through the median filter too
    summary = result["ui"]["emo_summary"][0]
    assert "keypoints: offset_retarget, the portrait's by the face box" in summary and "pip install" not in summary  # short on the page
    with pytest.raises(ValueError, match="needs the driving video"):
        nodes["EMOFaceKeypoints"]().run("offset_retarget", "auto")


# ---- the sources a user may have: insightface, YuNet (stand-ins: their files are not here) --------------------------


class _Face(dict):
    def __init__(self, kps):
        super().__init__(kps=kps)
        self.kps = kps


def test_insightface_keypoints_as_the_original_takes_them(tmp_path, monkeypatch):
    """buffalo_l found under the models folder, FaceAnalysis prepared at det_size = the picture's size, BGR in, the FIRST
    face's kps[:3] out (inference.py:228-240), before YuNet or the face box."""
    import sys
    import types

    from emo_model.face import keypoint_detection

    pack = tmp_path / "insightface" / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    (pack / "det_10g.onnx").write_bytes(b"stand-in")
    calls = {}

    class FaceAnalysis:
        def __init__(self, name, root, allowed_modules, providers):
            calls["pack"] = (name, root, allowed_modules)

        def prepare(self, ctx_id, det_size):
            calls["det_size"] = det_size

        def get(self, bgr):
            calls["blue_first"] = bgr[0, 0].tolist()
            kps = np.array([[10.0, 20.0], [30.0, 20.0], [20.0, 30.0], [12.0, 40.0], [28.0, 40.0]], np.float32)
            return [_Face(kps), _Face(kps + 100)]  # the first one is taken, not the largest

    app = types.ModuleType("insightface.app")
    app.FaceAnalysis = FaceAnalysis
    monkeypatch.setitem(sys.modules, "insightface", types.ModuleType("insightface"))
    monkeypatch.setitem(sys.modules, "insightface.app", app)
    keypoint_detection._insightface.cache_clear()
    picture = np.zeros((96, 64, 3), np.uint8)
    picture[0, 0] = (255, 0, 7)  # RGB
    found = keypoint_detection.find_keypoints(picture, models_dirs=[str(tmp_path)])
    keypoint_detection._insightface.cache_clear()
    assert found.source == "insightface" and np.array_equal(found.points, [[10, 20], [30, 20], [20, 30]])
    assert calls["pack"] == ("buffalo_l", str(tmp_path / "insightface"), ["detection"]) and calls["det_size"] == (96, 64)
    assert calls["blue_first"] == [7, 0, 255]


def test_yunet_landmarks_are_used_before_the_face_box(tmp_path, monkeypatch):
    from emo_model.face import detectors, keypoint_detection

    (tmp_path / "face").mkdir()
    (tmp_path / "face" / "face_detection_yunet_2023mar.onnx").write_bytes(b"stand-in")

    class Net:
        def setInputSize(self, size):
            self.size = size

        def detect(self, bgr):  # x, y, w, h, right eye, left eye, nose, mouth corners, score
            rows = [[0, 0, 50, 50, 11, 21, 31, 21, 21, 31, 0, 0, 0, 0, 0.6], [0, 0, 50, 50, 10, 20, 30, 20, 20, 30, 0, 0, 0, 0, 0.9]]
            return 1, np.array(rows, np.float32)

    monkeypatch.setattr(detectors, "_load_yunet", lambda path, mtime: Net())
    found = keypoint_detection.find_keypoints(np.zeros((64, 64, 3), np.uint8), models_dirs=[str(tmp_path / "face")])
    assert found.source == "yunet" and np.array_equal(found.points, [[10, 20], [30, 20], [20, 30]])  # the best-scored face


def test_keypoint_options_are_refused_for_models_without_keypoints():
    import argparse

    from emo_model.app.commands.generate import check_guide_options

    args = argparse.Namespace(keypoints="drive.mp4", retarget="auto", pose=None)
    with pytest.raises(InputError, match="--keypoints: this model reads no face keypoints"):
        check_guide_options(args, get_config("tiny"))
    check_guide_options(args, get_config("tiny-v-express"))


def test_emo_generate_drives_v_express_with_a_video(files, capsys):
    from emo_model.video_io import probe_video, write_video

    crop = face_crop(200)
    frames = np.stack([np.roll(crop, shift, axis=1) for shift in (0, 3, 6, 9)])  # the head moves right
    write_video(files["dir"] / "drive.mp4", frames, 10.0)
    out = files["dir"] / "driven.mp4"
    rc, _, err = cli(capsys, "generate", "--model", files["model"], "--vae", files["vae"], "--audio-encoder", files["w2v"],
                     "--image", files["image"], "--audio", files["audio"], "--out", out, "--steps", "1",
                     "--keypoints", files["dir"] / "drive.mp4", "--retarget", "naive_retarget")
    assert rc == 0, err
    assert probe_video(out).num_frames == 38
    assert "keypoints: naive_retarget" in err and "driving drive.mp4 (4 frames" in err and "stretched to 38 frames" in err

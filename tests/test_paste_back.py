"""Paste-back (issue 25): the animated square crop composited into the source picture at its own size.

Synthetic pictures with a given face box (no detector) and scikit-image's astronaut placed in a wide
16:9 canvas (the real detector).  The exact-outside checks compare pixels bit for bit.
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from emo_model.face import FaceBox, FaceError, prepare_portrait
from emo_model.face.paste_back import (
    MAX_SIDE,
    CropPlacement,
    PasteBack,
    blend_weights,
    check_source_size,
    frame_megabytes,
    paste_back,
)


def scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A textured picture (gradients + noise) so that any misplaced pixel shows."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w, yy / h, 0.5 + 0.3 * np.sin(xx / 17.0) * np.cos(yy / 23.0)], -1)
    return np.clip(base + rng.normal(0, 0.03, (h, w, 3)), 0, 1).astype(np.float32)


def crop_of(img: np.ndarray, box: FaceBox, size: int = 128, **kw):
    return prepare_portrait(img, size, faces=[box], **kw)


def noise_frames(n: int, size: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32)


def test_outside_the_blend_region_is_the_source_exactly_in_every_frame():
    src = scene(180, 320)
    pc = crop_of(src, FaceBox(200, 60, 240, 110))
    pb = PasteBack(src, CropPlacement.from_crop(pc))
    frames = noise_frames(5, 128)
    for dtype in (np.float32, np.uint8):
        out = pb.composite(frames, dtype=dtype)
        assert out.shape == (5, 180, 320, 3) and out.dtype == dtype
        ref = src if dtype == np.float32 else (src * 255 + 0.5).astype(np.uint8)
        outside = ~pb.blended
        for f in out:
            assert np.array_equal(f[outside], ref[outside])
        # the blended region is small (the face, grown) and really changed
        assert 0 < pb.blended.mean() < 0.25
        full = pb.weights == 1
        assert full.any() and np.abs(out[0][full].astype(np.float32) - ref[full].astype(np.float32)).mean() > 0.05 * (255 if dtype == np.uint8 else 1)


def test_the_crop_itself_pastes_back_onto_the_source():
    """Frames equal to the crop (no motion) give back the source inside the region, up to resampling."""
    src = cv2.GaussianBlur(scene(200, 360), (0, 0), 2.0)  # resampling error is small on a smooth picture
    pc = crop_of(src, FaceBox(150, 50, 210, 130), size=256)
    out = paste_back(np.stack([pc.image] * 2), src, pc, colour="none")
    assert np.abs(out[0] - src).max() < 0.03
    assert np.abs(out[1] - src).mean() < 2e-3


def test_weights_face_one_ring_smooth_zero_outside_crop():
    src = scene(240, 426)
    face = FaceBox(250, 80, 300, 140)
    pc = crop_of(src, face, crop_ratio=2.0)
    pl = CropPlacement.from_crop(pc)
    w = blend_weights(pl, grow=1.6, feather=0.2)
    assert w[110, 275] == 1.0  # face centre
    assert w[0, 0] == 0.0 and w[-1, 0] == 0.0
    # every weight > 0 lies inside the crop box (only generated pixels are used)
    ys, xs = np.nonzero(w > 0)
    x0, y0, x1, y1 = pl.crop_box
    assert xs.min() + 0.5 >= x0 and xs.max() + 0.5 <= x1 and ys.min() + 0.5 >= y0 and ys.max() + 0.5 <= y1
    # the grown face box is inside the weight-1 region; the ring falls monotonically to the right
    g = face.expanded(1.6)
    assert (w[int(g.y0) + 1:int(g.y1) - 1, int(g.x0) + 1:int(g.x1) - 1] == 1).all()
    row = w[110, 275:]
    assert (np.diff(row) <= 0).all() and 0 < row[row < 1].max()
    with pytest.raises(FaceError, match="grow"):
        blend_weights(pl, grow=0)
    with pytest.raises(FaceError, match="feather"):
        blend_weights(pl, feather=-1)


def test_odd_sizes_become_even_and_the_padding_is_the_source_edge():
    src = scene(151, 201)
    pc = crop_of(src, FaceBox(80, 40, 120, 90), size=64)
    pb = PasteBack(src, CropPlacement.from_crop(pc))
    out = pb.composite(noise_frames(2, 64))
    assert out.shape == (2, 152, 202, 3)
    assert np.array_equal(out[0, :151, :201][~pb.blended], src[~pb.blended])
    assert np.array_equal(out[0, 151, :201], src[150]) and np.array_equal(out[0, :151, 201], src[:, 200])


def test_size_cap_is_one_line():
    check_source_size(2160, 3840)
    with pytest.raises(FaceError, match=f"capped at {MAX_SIDE} px") as e:
        check_source_size(100, MAX_SIDE + 1)
    assert "\n" not in str(e.value) and "--frame crop" in str(e.value)
    src = scene(100, 180)
    pc = crop_of(src, FaceBox(80, 30, 110, 70), size=64)
    with pytest.raises(FaceError, match="capped at 160 px"):
        PasteBack(src, CropPlacement.from_crop(pc), max_side=160)
    assert round(frame_megabytes(1920, 1080), 1) == 24.9 and round(frame_megabytes(1920, 1080, 1), 1) == 6.2


def test_wrong_source_or_frames_are_one_line():
    src = scene(100, 180)
    pc = crop_of(src, FaceBox(80, 30, 110, 70), size=64)
    with pytest.raises(FaceError, match="crop was made on a 180x100 picture"):
        PasteBack(scene(100, 181), CropPlacement.from_crop(pc))
    with pytest.raises(FaceError, match="square RGB frames"):
        PasteBack(src, CropPlacement.from_crop(pc)).composite(np.zeros((2, 64, 32, 3), np.float32))
    with pytest.raises(FaceError, match="colour mode"):
        PasteBack(src, CropPlacement.from_crop(pc), colour="reinhard")


def test_colour_match_closes_the_seam():
    """A clip whose colours are off (too warm) shows at the seam without colour matching, much less with it."""
    src = cv2.GaussianBlur(scene(200, 360), (0, 0), 2.0)
    pc = crop_of(src, FaceBox(150, 50, 210, 130), size=128)
    off = np.clip(np.stack([pc.image] * 3) + np.array([0.12, 0.04, -0.08], np.float32), 0, 1)

    def seam_error(colour):
        pb = PasteBack(src, CropPlacement.from_crop(pc), colour=colour)
        out = pb.composite(off)
        ring = (pb.weights > 0) & (pb.weights < 1)
        return np.abs(out[:, ring].mean((0, 1)) - src[ring].mean(0)).max()

    plain, matched, local = seam_error("none"), seam_error("mean"), seam_error("local")
    assert plain > 0.03 and matched < plain / 4 and local < plain / 4


def test_frames_at_another_size_use_their_own_side():
    """An upscaler between the sampler and paste-back: frames twice the crop size map through the same box."""
    src = cv2.GaussianBlur(scene(200, 360), (0, 0), 2.0)
    pc = crop_of(src, FaceBox(150, 50, 210, 130), size=128)
    big = cv2.resize(pc.image, (256, 256), interpolation=cv2.INTER_CUBIC)
    a = paste_back(pc.image[None], src, pc, colour="none")[0]
    b = paste_back(big[None], src, pc, colour="none")[0]
    assert np.abs(a - b).mean() < 2e-3


def test_stream_yields_one_frame_at_a_time():
    src = scene(120, 200)
    pc = crop_of(src, FaceBox(90, 30, 130, 80), size=64)
    it = PasteBack(src, CropPlacement.from_crop(pc)).iter_composite(noise_frames(3, 64), dtype=np.uint8)
    first = next(it)
    assert first.shape == (120, 200, 3) and first.dtype == np.uint8
    assert len(list(it)) == 2


def test_no_face_fallback_pastes_the_centred_box():
    src = scene(180, 320)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pc = prepare_portrait(np.full((180, 320, 3), 0.5, np.float32), 64, detector="haar")
    assert pc.fell_back
    pl = CropPlacement.from_crop(pc)
    assert pl.fell_back and abs(pl.face_box.centre[0] - 160) < 1 and abs(pl.face_box.centre[1] - 90) < 1
    pb = PasteBack(src, pl)
    out = pb.composite(noise_frames(1, 64))
    assert np.array_equal(out[0][~pb.blended], src[~pb.blended]) and pb.blended[90, 160]


@pytest.fixture(scope="module")
def wide_astronaut():
    """The astronaut (512 px) at the right third of a 16:9 1280x720 textured canvas."""
    canvas = scene(720, 1280, seed=3)
    canvas[100:612, 700:1212] = skdata.astronaut().astype(np.float32) / 255.0
    return canvas


def test_astronaut_in_a_wide_canvas(wide_astronaut):
    pc = prepare_portrait(wide_astronaut, 128, detector="haar")
    assert not pc.fell_back
    pl = CropPlacement.from_crop(pc)
    # the hand-measured face (182..270, 80..178 in the astronaut) sits at +700, +100 in the canvas
    cx, cy = pl.face_box.centre
    assert 700 + 182 < cx < 700 + 270 and 100 + 80 < cy < 100 + 178
    pb = PasteBack(wide_astronaut, pl)
    out = pb.composite(np.stack([pc.image, noise_frames(1, 128)[0]]))
    assert out.shape == (2, 720, 1280, 3)
    for f in out:
        assert np.array_equal(f[~pb.blended], wide_astronaut[~pb.blended])
    ys, xs = np.nonzero(pb.blended)
    assert xs.min() >= 700 and xs.max() < 1212 and ys.min() >= 100 and ys.max() < 612  # the region stays on the photo
    # the unanimated crop pastes back close to the photo
    assert np.abs(out[0][pb.blended] - wide_astronaut[pb.blended]).mean() < 0.03


# ---- the command line: emo generate --frame full|crop, --face-index (the demo model, in-process) ----


@pytest.fixture(scope="module")
def wide_files(tmp_path_factory):
    from comfy_harness import write_speech

    base = tmp_path_factory.mktemp("paste_cli")
    canvas = (scene(225, 400, seed=5) * 255).astype(np.uint8)
    canvas[:, 200:] = cv2.resize(skdata.astronaut(), (200, 225))
    cv2.imwrite(str(base / "wide.png"), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    return {"image": base / "wide.png", "picture": canvas, "audio": write_speech(base / "s.wav", seconds=0.3), "dir": base}


def _generate(files, out, *extra):
    from emo_model.app.cli import main

    return main(["generate", "--image", str(files["image"]), "--audio", str(files["audio"]), "--out", str(out),
                 "--steps", "1", "--device", "cpu", *extra])


def test_cli_full_frame_streams_frames_at_the_picture_size(wide_files, monkeypatch, capsys):
    from emo_model.video_io import probe_video
    from emo_model.video_io.reader import read_video_frames
    from emo_model.video_io.writer import VideoWriter

    written = []
    original = VideoWriter.write

    def spy(self, frames):
        written.append(tuple(np.asarray(frames).shape))
        return original(self, frames)

    monkeypatch.setattr(VideoWriter, "write", spy)
    out = wide_files["dir"] / "full.mp4"
    assert _generate(wide_files, out) == 0, capsys.readouterr().err  # --frame auto: a wide picture -> full
    err = capsys.readouterr().err
    assert "full-frame video 400x226" in err
    video = probe_video(out)
    assert (video.width, video.height) == (400, 226)
    # streamed: the writer gets one full-size frame at a time, never the whole video
    assert written and all(s == (226, 400, 3) for s in written) and len(written) == video.num_frames
    # away from the face the video is the picture (up to H.264)
    first = read_video_frames(out)[0].astype(np.float32)
    assert first.shape == (226, 400, 3)
    assert np.abs(first[:225, :150] - wide_files["picture"][:, :150]).mean() < 0.03 * 255


def test_cli_frame_crop_is_todays_square(wide_files, capsys):
    from emo_model.video_io import probe_video

    out = wide_files["dir"] / "crop.mp4"
    assert _generate(wide_files, out, "--frame", "crop") == 0, capsys.readouterr().err
    video = probe_video(out)
    assert video.width == video.height == 64


def test_cli_face_index_is_checked_in_one_line(wide_files, capsys):
    out = wide_files["dir"] / "never.mp4"
    assert _generate(wide_files, out, "--face-index", "-1") == 1
    err = capsys.readouterr().err
    assert "--face-index must be an integer from 0 to 64, got -1" in err and err.count("\n") == 1 and not out.exists()
    assert _generate(wide_files, out, "--face-index", "7", "--face-detector", "haar") == 1
    err = capsys.readouterr().err
    assert "face_index=7 but only" in err and "Traceback" not in err and not out.exists()


# ---- the nodes: EMO Face Mask's crop output and EMO Paste Back (through the pack, as ComfyUI loads it) ----


@pytest.fixture(scope="module")
def nodes():
    from comfy_harness import load_pack

    return load_pack().NODE_CLASS_MAPPINGS


FACE_NODE_ARGS = {"size": 64, "expand": 1.2, "crop": "face", "crop_ratio": 2.0, "detector": "haar", "fallback": "center", "face_index": 0,
                  "union": False}


def test_face_node_appends_the_crop_output_after_its_old_outputs(nodes):
    cls = nodes["EMOFaceMask"]
    assert cls.RETURN_TYPES[:2] == ("MASK", "IMAGE") and cls.RETURN_TYPES[2] == "EMO_CROP"  # old links keep their slots
    assert cls.RETURN_NAMES == ("face_mask", "portrait", "crop") and len(cls.OUTPUT_TOOLTIPS) == 3


def test_paste_back_node_returns_full_size_frames_and_the_source_outside(nodes, wide_astronaut):
    import torch

    source = torch.from_numpy(wide_astronaut)[None]
    _masks, portraits, crop = nodes["EMOFaceMask"]().run(source, **FACE_NODE_ARGS)["result"]
    assert len(crop) == 1 and not crop[0].fell_back and crop[0].source_size == (720, 1280)
    frames = torch.cat([portraits, torch.rand(4, 64, 64, 3, generator=torch.Generator().manual_seed(0))])
    node = nodes["EMOPasteBack"]()
    (out,) = node.paste(frames, source, crop, grow=1.6, feather=0.2, colour_match="mean", batch_size=2)
    assert out.shape == (5, 720, 1280, 3) and out.dtype == torch.float32
    outside = torch.from_numpy(~blend_weights(crop[0]).astype(bool))
    for f in out:
        assert torch.equal(f[outside], source[0][outside])
    # batches only bound memory: one batch or many give the same frames
    (whole,) = node.paste(frames, source, crop, grow=1.6, feather=0.2, colour_match="mean", batch_size=16)
    assert torch.equal(out, whole)
    # frames from an upscaler (twice the crop) are accepted; wrong inputs are one line
    up = torch.nn.functional.interpolate(frames.permute(0, 3, 1, 2), scale_factor=2, mode="bilinear").permute(0, 2, 3, 1).clamp(0, 1)
    assert node.paste(up, source, crop, 1.6, 0.2, "none", 8)[0].shape == (5, 720, 1280, 3)
    with pytest.raises(ValueError, match="crop was made on a 1280x720 picture"):
        node.paste(frames, source[:, :700], crop, 1.6, 0.2, "none", 8)
    with pytest.raises(ValueError, match="EMO_CROP"):
        node.paste(frames, source, "not a crop", 1.6, 0.2, "none", 8)


def test_paste_back_node_says_what_a_full_size_batch_costs(nodes):
    cls = nodes["EMOPasteBack"]
    assert "24.9 MB per 1080p frame" in cls.DESCRIPTION and "24.9 MB per 1080p frame" in cls.OUTPUT_TOOLTIPS[0]
    assert round(1920 * 1080 * 3 * 4 / 1e6, 1) == 24.9
    assert "print(" not in (__import__("conftest").ROOT / "nodes" / "paste_back.py").read_text()


def test_the_measuring_tool_counts_what_it_says(tmp_path):
    """tools/paste_back_table.py's measures on frames made here (the tool itself runs the demo model)."""
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("paste_back_table", ROOT / "tools" / "paste_back_table.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    picture = (scene(180, 320) * 255).astype(np.uint8)
    pc = crop_of(picture, FaceBox(200, 60, 240, 110), size=64)
    still = np.stack([pc.image] * 3)
    moving = still.copy()
    moving[1, :, :4] = 1.0 - moving[1, :, :4]  # motion only in the crop's left columns: outside the pasted region
    row = tool.measure("t", picture, pc, moving)
    assert row["outside changed"] == 0 and row["size"] == "320x180" and row["frames"] == 3
    assert row["motion cut"] > 0.99 and row["motion in face"] < 0.01
    assert abs(row["motion in face"] + row["motion in ring"] + row["motion cut"] - 1) < 1e-6
    assert 0.5 < row["seam grad out/src (mean)"] < 2.0


def test_a_scene_video_as_the_background(nodes):
    """A source batch is a moving background: frame i goes into picture i (the last held); outside is that picture's."""
    import torch

    pictures = torch.from_numpy(np.stack([scene(180, 320, seed=s) for s in range(3)]))
    pc = crop_of(pictures[0].numpy(), FaceBox(200, 60, 240, 110), size=64)
    crop = [CropPlacement.from_crop(pc)]
    frames = torch.from_numpy(noise_frames(5, 64))
    (out,) = nodes["EMOPasteBack"]().paste(frames, pictures, crop, 1.6, 0.2, "mean", 2)
    outside = torch.from_numpy(~blend_weights(crop[0]).astype(bool))
    for i, f in enumerate(out):
        assert torch.equal(f[outside], pictures[min(i, 2)][outside])
    with pytest.raises(FaceError, match="background picture is 321x180"):
        list(PasteBack(pictures[0].numpy(), crop[0]).iter_composite(noise_frames(1, 64), backgrounds=[scene(180, 321)]))


def test_local_colour_match_follows_a_cast_that_varies_across_the_face():
    """A cast that changes from left to right (light from one side): one mean shift cannot match both sides of
    the seam, the local offset field can."""
    src = cv2.GaussianBlur(scene(200, 360), (0, 0), 2.0)
    pc = crop_of(src, FaceBox(150, 50, 210, 130), size=128)
    ramp = np.linspace(-0.15, 0.15, 128, dtype=np.float32)[None, :, None]
    off = np.clip(np.stack([pc.image] * 2) + ramp, 0, 1)

    def ring_error(colour):
        pb = PasteBack(src, CropPlacement.from_crop(pc), colour=colour)
        out = pb.composite(off)
        ring = (pb.weights > 0) & (pb.weights < 1)
        return np.abs(out[:, ring] - src[ring]).mean()

    none, mean, local = ring_error("none"), ring_error("mean"), ring_error("local")
    assert local < mean / 2 and local < none / 2, (none, mean, local)


class _MetaBatchManager:
    """What VideoHelperSuite's Meta Batch Manager (videohelpersuite/nodes.py ``BatchManager``, 4ee72c06) gives the
    nodes it drives: ``frames_per_batch``, ``inputs`` (per node: a tuple whose last item is a generator it may close
    with ``send(1)``), ``total_frames`` and ``has_closed_inputs``; ``reset`` is what it does on a fresh queue."""

    def __init__(self, frames_per_batch):
        self.frames_per_batch, self.inputs, self.outputs = frames_per_batch, {}, {}
        self.has_closed_inputs, self.total_frames = False, float("inf")

    def reset(self):
        for value in self.inputs.values():
            if getattr(value[-1], "gi_suspended", False):
                with pytest.raises(StopIteration):
                    value[-1].send(1)
        self.__init__(self.frames_per_batch)


@pytest.mark.parametrize("colour", ["local", "mean"])
def test_paste_back_under_a_vhs_meta_batch_manager_returns_the_video_in_pieces(nodes, colour):
    """Each run returns the next frames_per_batch full-size frames; joined, they are the one-run video bit for bit
    (the colour match is measured once, on frame 0); the last run closes the input so VHS stops requeueing."""
    import torch

    pictures = torch.from_numpy(np.stack([scene(180, 320, seed=s) for s in range(2)]))
    crop = [CropPlacement.from_crop(crop_of(pictures[0].numpy(), FaceBox(200, 60, 240, 110), size=64))]
    frames = torch.from_numpy(noise_frames(7, 64))
    node = nodes["EMOPasteBack"]()
    (whole,) = node.paste(frames, pictures, crop, 1.6, 0.2, colour, 4)
    manager = _MetaBatchManager(3)
    pieces = []
    for _run in range(3):
        assert not manager.has_closed_inputs
        (piece,) = node.paste(frames, pictures, crop, 1.6, 0.2, colour, 2, meta_batch=manager, unique_id="8")
        pieces.append(piece)
    assert [p.shape[0] for p in pieces] == [3, 3, 1] and manager.has_closed_inputs and manager.inputs == {}
    assert manager.total_frames == 7
    assert torch.equal(torch.cat(pieces), whole)
    # a new queue (VHS resets its manager) starts from frame 0; a half-done one is closed through its generator
    manager.reset()
    (first,) = node.paste(frames, pictures, crop, 1.6, 0.2, colour, 2, meta_batch=manager, unique_id="8")
    assert torch.equal(first, whole[:3]) and "8" in manager.inputs
    manager.reset()
    assert manager.inputs == {}
    with pytest.raises(ValueError, match="Meta Batch Manager"):
        node.paste(frames, pictures, crop, 1.6, 0.2, colour, 2, meta_batch="not a manager", unique_id="8")


def _moving_scene(n=6, height=180, width=320):
    """A scene video whose face (a bright disc on the scene) moves right 6 px a frame, with its placements as the
    face step makes them on each frame (boxes jittered by +-1 px as a detector's are)."""
    pictures, placements = [], []
    for i in range(n):
        pic = scene(height, width, seed=i)
        cx, cy = 120 + 6 * i, 85
        yy, xx = np.mgrid[0:height, 0:width]
        pic[(yy - cy) ** 2 + (xx - cx) ** 2 < 20 ** 2] = (0.9, 0.7, 0.6)
        jitter = (-1) ** i
        box = FaceBox(cx - 20 + jitter, cy - 25, cx + 20 + jitter, cy + 25)
        pictures.append(pic)
        placements.append(CropPlacement.from_crop(crop_of(pic, box, size=64)))
    return np.stack(pictures), placements


def test_tracked_placements_fill_missing_faces_and_smooth_the_jitter():
    from emo_model.face.paste_back import track_placements

    _pictures, placements = _moving_scene()
    tracked = track_placements(placements)
    centres = np.array([(p.crop_box[0] + p.crop_box[2]) / 2 for p in tracked])
    raw = np.array([(p.crop_box[0] + p.crop_box[2]) / 2 for p in placements])
    assert np.abs(np.diff(raw, 2)).max() == 4  # the detector's jitter (+-1 px on a 2x crop)
    assert np.abs(np.diff(centres, 2)).max() < 2  # smoothed
    assert centres[0] == raw[0] and abs((centres[-1] - centres[0]) - (raw[-1] - raw[0])) < 2.5  # no pull to the middle
    assert all(abs(p.scale - p.size / (p.crop_box[2] - p.crop_box[0])) < 1e-9 for p in tracked)
    # a frame with no face takes its nearest found neighbour's box before smoothing; all missing: kept as is
    missing = list(placements)
    missing[2] = CropPlacement((0.0, 0.0, 180.0, 180.0), 64 / 180, FaceBox(60, 60, 120, 120), (180, 320), 64, True)
    filled = track_placements(missing, window=1)
    assert filled[2].crop_box == placements[1].crop_box and filled[2].fell_back
    assert track_placements([missing[2]] * 3) == [missing[2]] * 3


def test_a_scene_video_with_a_moving_face_is_tracked(nodes):
    """EMO Face Mask run on every frame of the scene -> one crop per picture: frame i is pasted at picture i's own
    (smoothed) box, outside it the picture i exactly; one box (union) pastes everywhere at the same place."""
    import torch

    from emo_model.face.paste_back import track_placements

    pictures, placements = _moving_scene()
    frames = torch.from_numpy(noise_frames(8, 64))  # two more frames than pictures: the last box and picture held
    (out,) = nodes["EMOPasteBack"]().paste(frames, torch.from_numpy(pictures), placements, 1.6, 0.2, "none", 3)
    tracked = track_placements(placements)
    for i, f in enumerate(out):
        j = min(i, len(pictures) - 1)
        inside = torch.from_numpy(blend_weights(tracked[j]) >= 1)
        outside = ~torch.from_numpy(blend_weights(tracked[j]).astype(bool))
        assert torch.equal(f[outside], torch.from_numpy(pictures[j])[outside])
        expected = PasteBack(pictures[j], tracked[j], colour="none").composite(frames[i:i + 1].numpy())[0]
        assert np.allclose(f[inside].numpy(), expected[inside.numpy()], atol=1e-6)
    # where the pasted face sits moves with the face: the weight's centre of mass follows the tracked boxes
    xs = [np.nonzero(blend_weights(p))[1].mean() for p in tracked]
    assert xs[-1] - xs[0] > 20
    with pytest.raises(ValueError, match="crop holds 6 boxes but source has 5 pictures"):
        nodes["EMOPasteBack"]().paste(frames, torch.from_numpy(pictures[:5]), placements, 1.6, 0.2, "none", 3)

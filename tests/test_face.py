"""Tests for emo_model.face (the face front end).

Real photos come from scikit-image's bundled data (no network):
``astronaut()`` (Eileen Collins, frontal) and ``camera()`` (the cameraman,
in profile).  The reference boxes below were measured by hand on zoomed,
gridded copies of the images: cheek to cheek (ear to nose tip for the
profile) and hairline to chin.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import urllib.request
import warnings

import cv2
import numpy as np
import pytest
import torch
from conftest import HANG_GUARD_S, ROOT
from skimage import data as skdata

from emo_model import face as F
from emo_model.face import FaceBox, FaceError, FaceWarning
from emo_model.face import detectors as D

# Hand-measured: cheeks x = 182..270, hairline y = 80, chin y = 178.
ASTRONAUT_FACE = FaceBox(182, 80, 270, 178)
# Hand-measured mouth (lips) of the astronaut.
ASTRONAUT_MOUTH = FaceBox(203, 138, 243, 155)
# Hand-measured cameraman: ear x = 180 .. nose tip x = 254, hairline 118 .. chin 196.
CAMERAMAN_FACE = FaceBox(180, 118, 254, 196)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()


@pytest.fixture(scope="module")
def astronaut_box(astronaut) -> FaceBox:
    boxes = F.detect_faces(astronaut, detector="haar")
    assert len(boxes) == 1, boxes
    return boxes[0]


def _cartoon(size: int = 384) -> np.ndarray:
    """A smiley: yellow disc, dot eyes, arc mouth on a blue background."""
    im = np.full((size, size, 3), (90, 160, 220), np.uint8)
    c, r = size // 2, int(size * 0.31)
    cv2.circle(im, (c, c), r, (255, 220, 0), -1, cv2.LINE_AA)
    cv2.circle(im, (c, c), r, (0, 0, 0), 3, cv2.LINE_AA)
    e = max(2, r // 10)
    cv2.circle(im, (c - r * 35 // 100, c - r * 27 // 100), e, (0, 0, 0), -1, cv2.LINE_AA)
    cv2.circle(im, (c + r * 35 // 100, c - r * 27 // 100), e, (0, 0, 0), -1, cv2.LINE_AA)
    cv2.ellipse(im, (c, c + r // 4), (r // 2, r * 3 // 10), 0, 10, 170, (0, 0, 0), max(2, r // 24), cv2.LINE_AA)
    return im


# --------------------------------------------------------------------------
# Detection on real photos
# --------------------------------------------------------------------------


def test_astronaut_face_detected(astronaut_box):
    assert astronaut_box.iou(ASTRONAUT_FACE) >= 0.5, astronaut_box
    assert ASTRONAUT_FACE.contains(*astronaut_box.centre)
    assert 0 < astronaut_box.score <= 1


def test_auto_uses_haar_without_models_and_finds_same_face(astronaut, astronaut_box):
    assert "haar" in F.available_detectors()
    boxes = F.detect_faces(astronaut)  # "auto"
    assert len(boxes) == 1 and boxes[0].iou(astronaut_box) > 0.99


def test_profile_face_detected_via_mirrored_profile_cascade():
    boxes = F.detect_faces(skdata.camera(), detector="haar")
    assert boxes, "the cameraman (profile) was not found"
    best = max(boxes, key=lambda b: b.iou(CAMERAMAN_FACE))
    assert best.iou(CAMERAMAN_FACE) >= 0.5, boxes
    assert CAMERAMAN_FACE.contains(*best.centre)


def test_tilted_head_found_by_rotated_pass(astronaut):
    m = cv2.getRotationMatrix2D((255.5, 255.5), 35, 1.0)
    tilted = cv2.warpAffine(astronaut, m, (512, 512), borderMode=cv2.BORDER_REPLICATE)
    boxes = F.detect_faces(tilted, detector="haar")
    assert boxes
    cx, cy = m @ np.array([ASTRONAUT_FACE.centre[0] - 0.5, ASTRONAUT_FACE.centre[1] - 0.5, 1.0]) + 0.5
    b = boxes[0]
    assert math.hypot(b.centre[0] - cx, b.centre[1] - cy) < 0.25 * ASTRONAUT_FACE.width, (b, cx, cy)


def test_input_forms_give_same_box(astronaut, astronaut_box):
    f = astronaut.astype(np.float32) / 255.0
    rgba = np.concatenate([astronaut, np.full((512, 512, 1), 255, np.uint8)], axis=-1)
    gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    forms = {
        "float": f,
        "float64": f.astype(np.float64),
        "uint16": astronaut.astype(np.uint16) * 257,
        "rgba": rgba,
        "gray": gray,
        "gray_hw1": gray[:, :, None],
        "torch_hwc": torch.from_numpy(f),
        "torch_bhwc": torch.from_numpy(f)[None],
        "torch_half": torch.from_numpy(f).half(),
        "float_0_255": astronaut.astype(np.float32),
    }
    reference = F.to_rgb_float(astronaut)
    for name, img in forms.items():
        rgb = F.to_rgb_float(img)
        assert rgb.shape == (512, 512, 3) and rgb.dtype == np.float32, name
        if name.startswith("gray"):
            assert np.abs(rgb - rgb[..., :1]).max() == 0, name
        else:
            assert np.abs(rgb - reference).max() <= 1 / 510 + 1e-6, name
    # the detector itself on a few of them (each run costs ~0.25 s)
    for name in ("float", "rgba", "gray", "torch_bhwc"):
        boxes = F.detect_faces(forms[name], detector="haar")
        assert len(boxes) == 1, name
        assert boxes[0].iou(astronaut_box) > 0.9, (name, boxes[0], astronaut_box)


def test_rgba_alpha_is_composited_not_dropped():
    rgba = np.zeros((64, 64, 4), np.uint8)  # black, fully transparent
    assert np.allclose(F.to_rgb_float(rgba), 1.0)  # over white
    with pytest.raises(FaceError):
        F.to_rgb_float(np.zeros((5, 64, 64, 3)))


def test_huge_image_detected_on_downscaled_copy(astronaut, monkeypatch):
    k = 3000 / 512
    canvas = np.full((3000, 4000, 3), 128, np.uint8)
    canvas[:, 700:3700] = cv2.resize(astronaut, (3000, 3000), interpolation=cv2.INTER_LINEAR)
    expected = ASTRONAUT_FACE.scaled(k).translated(700, 0)

    seen = []
    real = D._run_detector

    def spy(rgb8, detector, models_dir):
        seen.append(rgb8.shape)
        return real(rgb8, detector, models_dir)

    monkeypatch.setattr(D, "_run_detector", spy)
    boxes = F.detect_faces(canvas, detector="haar")
    assert seen and max(seen[0][:2]) <= F.DETECT_MAX_SIDE, seen
    assert len(boxes) >= 1
    assert boxes[0].iou(expected) >= 0.5, (boxes[0], expected)
    assert expected.contains(*boxes[0].centre)


def test_small_image_rejected():
    with pytest.raises(FaceError, match="at least 64 px"):
        F.prepare_portrait(np.zeros((63, 200, 3), np.uint8))
    with pytest.raises(FaceError, match="at least 64 px"):
        F.detect_faces(np.zeros((200, 40), np.uint8))


def test_face_index_and_ordering(astronaut):
    # Two people: the astronaut at full size and a 0.6x copy on the right.
    canvas = np.full((512, 900, 3), 200, np.uint8)
    canvas[:, :512] = astronaut
    small = cv2.resize(astronaut, (307, 307), interpolation=cv2.INTER_AREA)
    canvas[100:407, 560:867] = small
    boxes = F.detect_faces(canvas, detector="haar")
    assert len(boxes) == 2, boxes
    assert boxes[0].area > boxes[1].area
    assert boxes[0].iou(ASTRONAUT_FACE) >= 0.5
    assert boxes[1].iou(ASTRONAUT_FACE.scaled(307 / 512).translated(560, 100)) >= 0.5

    pc = F.prepare_portrait(canvas, 256, face_index=1, faces=boxes[::-1])
    assert pc.source_box is not None and pc.source_box.iou(boxes[1]) > 0.99
    assert pc.faces_found == 2
    with pytest.raises(FaceError, match=r"only 2 face\(s\) were found"):
        F.prepare_portrait(canvas, 256, face_index=2, faces=boxes)


def test_detect_faces_sorts_largest_first(monkeypatch):
    small, big = FaceBox(10, 10, 40, 40, 0.9), FaceBox(100, 100, 200, 200, 0.5)
    monkeypatch.setattr(D, "_run_detector", lambda rgb8, detector, models_dir: [small, big])
    assert F.detect_faces(np.zeros((256, 256, 3), np.uint8)) == [big, small]
    pc = F.prepare_portrait(np.zeros((256, 256, 3), np.uint8), 128, faces=[small, big])
    assert pc.source_box == big


def test_face_index_out_of_range_single(astronaut):
    with pytest.raises(FaceError, match=r"face_index=3 but only 1 face"):
        F.prepare_portrait(astronaut, face_index=3)


# --------------------------------------------------------------------------
# Crop geometry
# --------------------------------------------------------------------------


def test_astronaut_crop_geometry(astronaut, astronaut_box):
    pc = F.prepare_portrait(astronaut, 512, crop_ratio=2.0, expand_ratio=1.2, detector="haar")
    assert not pc.fell_back and pc.warning is None
    assert pc.image.shape == (512, 512, 3) and pc.image.dtype == np.float32
    assert 0.0 <= pc.image.min() and pc.image.max() <= 1.0
    assert pc.mask.shape == (512, 512) and pc.mask.dtype == np.float32
    side = 2.0 * max(astronaut_box.width, astronaut_box.height)
    x0, y0, x1, y1 = pc.crop_box
    assert x1 - x0 == pytest.approx(side) and y1 - y0 == pytest.approx(side)
    assert ((x0 + x1) / 2, (y0 + y1) / 2) == pytest.approx(astronaut_box.centre)
    assert pc.scale == pytest.approx(512 / side)
    # face box in the crop: centred, half the crop side
    assert pc.face_box.centre == pytest.approx((256, 256))
    assert pc.face_box.width == pytest.approx(256)
    # mask = face box grown 1.2x about its centre
    assert pc.mask.sum() == pytest.approx((1.2 * 256) ** 2, rel=0.02)
    assert set(np.unique(pc.mask)) <= {0.0, 1.0}
    # the crop shows the face: the crop centre equals the source pixel at the face centre
    cx, cy = astronaut_box.centre
    src = astronaut[int(cy), int(cx)] / 255.0
    assert np.abs(pc.image[255:257, 255:257].mean(axis=(0, 1)) - src).max() < 0.08


def test_coordinate_round_trip(astronaut):
    pc = F.prepare_portrait(astronaut, 256, crop_ratio=2.5, detector="haar")
    rng = np.random.default_rng(0)
    pts = rng.uniform(-100, 600, size=(50, 2))
    u, v = pc.to_crop(*pc.to_source(pts[:, 0], pts[:, 1]))
    assert np.allclose(u, pts[:, 0]) and np.allclose(v, pts[:, 1])
    x, y = pc.to_source(*pc.to_crop(pts[:, 0], pts[:, 1]))
    assert np.allclose(x, pts[:, 0]) and np.allclose(y, pts[:, 1])
    for px, py in [(0.0, 0.0), (123.25, 77.5), (-3.0, 900.0)]:
        assert pc.to_crop(*pc.to_source(px, py)) == pytest.approx((px, py))
    # crop corners <-> crop_box corners
    assert pc.to_source(0, 0) == pytest.approx(pc.crop_box[:2])
    assert pc.to_source(256, 256) == pytest.approx(pc.crop_box[2:])
    # the face box in crop coordinates maps back to the detected box
    back = pc.box_to_source(pc.face_box)
    assert back.as_tuple() == pytest.approx(pc.source_box.as_tuple())
    # the affine matrix agrees with to_crop
    a = pc.affine @ np.array([10.0, 20.0, 1.0])
    assert tuple(a) == pytest.approx(pc.to_crop(10.0, 20.0))


@pytest.mark.parametrize("crop_ratio", [1.6, 6.0, 10.0])  # enlarge, shrink, shrink with pre-reduction
def test_resampling_matches_coordinate_mapping(crop_ratio):
    """On linear ramps the interpolators are exact, so each crop pixel must
    hold the source value at ``to_source(pixel centre)`` (clamped where the
    crop leaves the image and the edge is replicated)."""
    h, w = 300, 420
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx / w, yy / h, np.full_like(xx, 0.5)], axis=-1)  # pixel j holds j/w at centre j+0.5
    face = FaceBox(370, 5, 410, 45)  # near the right/top edges: the crop leaves the image
    pc = F.prepare_portrait(img, 128, crop_ratio=crop_ratio, faces=[face], pad_mode="edge")
    assert pc.crop_box[2] > w and pc.crop_box[1] < 0
    assert not pc.fell_back and pc.source_box.as_tuple() == face.as_tuple()
    uu, vv = np.meshgrid(np.arange(128) + 0.5, np.arange(128) + 0.5)
    sx, sy = pc.to_source(uu, vv)
    # skip pixels whose interpolation kernel straddles the clamp corner
    margin = 2.0 + 2.0 / pc.scale
    for chan, s_, n in ((0, sx, w), (1, sy, h)):
        expected = np.clip(s_ - 0.5, 0, n - 1) / n
        ok = (np.abs(s_ - 0.5) > margin) & (np.abs(s_ - 0.5 - (n - 1)) > margin)
        inside = ok & (s_ > 0.5) & (s_ < n - 0.5)
        err = np.abs(pc.image[..., chan] - expected)
        assert inside.mean() > 0.3
        assert err[inside].max() < 0.5 / n
        padded = ok & ~inside
        assert padded.any() or crop_ratio < 2
        if padded.any():
            # in the padding the replicated edge is that of the anti-aliased
            # copy when shrinking a lot: off by at most half the reduction factor
            assert err[padded].max() < (0.5 + 0.5 / pc.scale) / n


def test_mask_in_crop_equals_warped_source_mask(astronaut):
    pc = F.prepare_portrait(astronaut, 512, crop_ratio=2.2, expand_ratio=1.3, detector="haar")
    src_mask = F.face_region_mask(pc.source_box, 512, 512, 1.3)
    warped = pc.apply(src_mask, interpolation="nearest", pad_mode="constant")
    assert warped.shape == pc.mask.shape
    inter = np.logical_and(warped > 0.5, pc.mask > 0.5).sum()
    union = np.logical_or(warped > 0.5, pc.mask > 0.5).sum()
    assert inter / union > 0.97
    # differences only along the box outline (source pixels are ~2.5 crop px here)
    diff = np.argwhere((warped > 0.5) != (pc.mask > 0.5))
    fb = pc.face_box.expanded(1.3)
    for v, u in diff:
        d = min(abs(u - fb.x0), abs(u + 1 - fb.x1), abs(v - fb.y0), abs(v + 1 - fb.y1))
        assert d <= math.ceil(pc.scale) + 1


def test_padding_instead_of_stretching(astronaut):
    # A very wide image with the face at the top-left corner.
    wide = np.full((400, 1600, 3), 90, np.uint8)
    part = astronaut[60:, 150:]  # face now at about x 28..120, y 9..108
    wide[: part.shape[0], : part.shape[1]] = part[:400]
    edge = F.prepare_portrait(wide, 256, crop_ratio=3.0, pad_mode="edge", detector="haar")
    black = F.prepare_portrait(wide, 256, crop_ratio=3.0, pad_mode="constant", detector="haar")
    assert not edge.fell_back
    x0, y0, x1, y1 = edge.crop_box
    assert x0 < 0 and y0 < 0, edge.crop_box  # the square leaves the image
    assert x1 - x0 == pytest.approx(y1 - y0)
    # aspect preserved: one scale for both axes, face box keeps its shape
    sb, fb = edge.source_box, edge.face_box
    assert fb.width / fb.height == pytest.approx(sb.width / sb.height)
    assert fb.centre == pytest.approx((128, 128))
    # the padded strip (left of the image) is filled: replicated edge pixels ...
    u_edge = int(math.floor(edge.to_crop(0, 0)[0])) - 2
    v_edge = int(math.floor(edge.to_crop(0, 0)[1])) - 2
    assert u_edge > 5 and v_edge > 5
    strip = edge.image[v_edge + 4 :, :u_edge]
    assert np.allclose(strip, strip[:, :1], atol=1e-5)  # constant along each row
    assert strip.mean() > 0.05  # filled from the picture, not black
    assert np.allclose(black.image[:, :u_edge], 0.0) and np.allclose(black.image[:v_edge], 0.0)
    # ... and away from the padding both modes show the same pixels
    assert np.allclose(edge.image[v_edge + 8 :, u_edge + 8 :], black.image[v_edge + 8 :, u_edge + 8 :], atol=1e-4)


def test_full_mode_letterboxes(astronaut):
    wide = np.zeros((300, 600, 3), np.uint8)
    wide[:, 150:450] = cv2.resize(astronaut, (300, 300), interpolation=cv2.INTER_AREA)
    a = F.prepare_portrait(wide, 256, crop="full", pad_mode="constant", detector="haar")
    b = F.prepare_portrait(wide, 256, crop_ratio=0, pad_mode="constant", detector="haar")
    assert a.crop_box == pytest.approx((0, -150, 600, 450))
    assert b.crop_box == pytest.approx(a.crop_box)
    assert np.allclose(a.image, b.image)
    assert np.allclose(a.image[:60], 0) and np.allclose(a.image[-60:], 0)  # letterbox bars
    assert a.source_box is not None and a.source_box.iou(ASTRONAUT_FACE.scaled(300 / 512).translated(150, 0)) > 0.5
    assert a.mask.sum() > 0


# --------------------------------------------------------------------------
# Fallbacks and errors
# --------------------------------------------------------------------------


def _check_valid(pc: F.PortraitCrop, size: int) -> None:
    assert pc.image.shape == (size, size, 3) and pc.image.dtype == np.float32
    assert np.isfinite(pc.image).all() and 0 <= pc.image.min() and pc.image.max() <= 1
    assert pc.mask.shape == (size, size) and pc.mask.sum() > 0
    assert pc.fell_back and pc.source_box is None and pc.warning


def test_blank_image_falls_back_to_centre():
    with pytest.warns(FaceWarning, match="no face found"):
        pc = F.prepare_portrait(np.full((300, 400, 3), 0.7, np.float32), 256)
    _check_valid(pc, 256)
    # centred box of 40 % of the short side, crop 2x that
    assert pc.crop_box == pytest.approx((200 - 120, 150 - 120, 200 + 120, 150 + 120))
    assert pc.face_box.centre == pytest.approx((128, 128))


def test_cartoon_falls_back():
    cartoon = _cartoon()
    assert F.detect_faces(cartoon, detector="haar") == []
    with pytest.warns(FaceWarning, match="no face found"):
        pc = F.prepare_portrait(cartoon, 512, fallback="center")
    _check_valid(pc, 512)
    with pytest.warns(FaceWarning, match="whole image"):
        full = F.prepare_portrait(cartoon, 512, fallback="full")
    _check_valid(full, 512)
    assert np.all(full.mask == 1.0)
    assert full.crop_box == pytest.approx((0, 0, 384, 384))
    with pytest.raises(FaceError, match="no face found"):
        F.prepare_portrait(cartoon, 512, fallback="error")


@pytest.fixture
def fresh_cascade_cache():
    D._load_cascades.cache_clear()
    yield
    D._load_cascades.cache_clear()


def test_missing_cascades_take_the_lbp_detector(astronaut, tmp_path, monkeypatch, fresh_cascade_cache):
    """What an opencv 5 install looks like: empty cv2.data. Face detection still works (scikit-image's LBP cascade):
    'auto' uses it without a word, 'haar' chosen by name uses it with a note naming the fix."""
    monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path) + "/")
    assert F.available_detectors() == ["lbp"] and F.auto_detector() == "lbp"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FaceWarning)
        auto = F.detect_faces(astronaut)
    assert len(auto) == 1 and auto[0].iou(ASTRONAUT_FACE) >= 0.5
    with pytest.warns(FaceWarning, match=r"Used the 'lbp' detector.*opencv-python-headless>=4\.8,<5"):
        named = F.detect_faces(astronaut, detector="haar")
    assert named == auto


def test_no_detector_at_all_warns_with_the_fix_and_falls_back(astronaut, tmp_path, monkeypatch, fresh_cascade_cache):
    monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path) + "/")
    monkeypatch.setattr(D, "_lbp_status", lambda: "scikit-image could not be imported (test)")
    with pytest.warns(FaceWarning, match=r"opencv-python-headless>=4\.8,<5"):
        assert F.detect_faces(astronaut, detector="haar") == []
    assert F.available_detectors() == []
    with pytest.warns(FaceWarning) as rec:
        pc = F.prepare_portrait(astronaut, 256)
    msg = " ".join(str(r.message) for r in rec)
    assert "Haar cascades" in msg and "no face found" in msg and D.YUNET_FILENAME in msg and "LBP detector is unavailable" in msg
    _check_valid(pc, 256)
    with pytest.raises(FaceError, match="detector='lbp' is unavailable"):
        F.detect_faces(astronaut, detector="lbp")


def test_missing_cascade_classifier_class(astronaut, monkeypatch, fresh_cascade_cache):
    """opencv 5 also removed cv2.CascadeClassifier itself: 'auto' finds the face with the LBP cascade."""
    monkeypatch.delattr(cv2, "CascadeClassifier")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FaceWarning)
        boxes = F.detect_faces(astronaut)
    assert len(boxes) == 1 and boxes[0].iou(ASTRONAUT_FACE) >= 0.5


# --------------------------------------------------------------------------
# The LBP detector (scikit-image's cascade: no dependence on cv2's variant)
# --------------------------------------------------------------------------


def test_lbp_finds_the_astronaut_and_its_tilted_and_large_copies(astronaut):
    boxes = F.detect_faces(astronaut, detector="lbp")
    assert len(boxes) == 1 and boxes[0].iou(ASTRONAUT_FACE) >= 0.5, boxes
    assert ASTRONAUT_FACE.contains(*boxes[0].centre) and boxes[0].score == D.LBP_SCORE
    # a 35 degree tilt: the rotated passes find it
    m = cv2.getRotationMatrix2D((255.5, 255.5), 35, 1.0)
    tilted = cv2.warpAffine(astronaut, m, (512, 512), borderMode=cv2.BORDER_REPLICATE)
    found = F.detect_faces(tilted, detector="lbp")
    cx, cy = m @ np.array([ASTRONAUT_FACE.centre[0] - 0.5, ASTRONAUT_FACE.centre[1] - 0.5, 1.0]) + 0.5
    assert found and math.hypot(found[0].centre[0] - cx, found[0].centre[1] - cy) < 0.25 * ASTRONAUT_FACE.width, found
    # a 2000 px copy is searched at LBP_MAX_SIDE and the box mapped back
    k = 2000 / 512
    big = F.detect_faces(cv2.resize(astronaut, (2000, 2000), interpolation=cv2.INTER_LINEAR), detector="lbp")
    assert len(big) == 1 and big[0].iou(ASTRONAUT_FACE.scaled(k)) >= 0.5, big


@pytest.mark.parametrize("picture", ["coins", "gravel", "brick", "hubble_deep_field", "chelsea", "cartoon"])
def test_lbp_finds_no_face_where_there_is_none(picture):
    """Pictures without a face (the deep field gave a false face with 6 grouped hits; LBP_MIN_NEIGHBORS is 12)."""
    image = _cartoon() if picture == "cartoon" else getattr(skdata, picture)()
    assert F.detect_faces(image, detector="lbp") == []


def test_lbp_finds_the_demo_portrait():
    from emo_model import demo

    portrait = cv2.cvtColor(cv2.imread(str(demo.portrait_path())), cv2.COLOR_BGR2RGB)
    boxes = F.detect_faces(portrait, detector="lbp")
    assert len(boxes) == 1 and boxes[0].iou(F.detect_faces(portrait, detector="haar")[0]) >= 0.7


def test_yunet_requires_model_file(astronaut, tmp_path, astronaut_box):
    with pytest.raises(FaceError, match="face_detection_yunet_2023mar.onnx"):
        F.detect_faces(astronaut, detector="yunet", models_dir=str(tmp_path))
    assert F.find_yunet_model(tmp_path) is None
    # a broken model file: explicit request errors, "auto" warns and uses Haar
    sub = tmp_path / "face"
    sub.mkdir()
    (sub / "my_yunet_fp16.onnx").write_bytes(b"not an onnx model")
    (sub / D.YUNET_FILENAME).write_bytes(b"not an onnx model either")
    assert F.find_yunet_model(str(tmp_path)).endswith(D.YUNET_FILENAME)
    assert F.available_detectors(str(tmp_path))[0] == "yunet"
    with pytest.raises(FaceError, match="could not load the YuNet model"):
        F.detect_faces(astronaut, detector="yunet", models_dir=str(tmp_path))
    with pytest.warns(FaceWarning, match="'yunet' failed"):
        boxes = F.detect_faces(astronaut, detector="auto", models_dir=str(tmp_path))
    assert len(boxes) == 1 and boxes[0].iou(astronaut_box) > 0.99


def test_mediapipe_unavailable_is_explained(astronaut):
    import importlib.util

    if importlib.util.find_spec("mediapipe") is not None:
        pytest.skip("mediapipe is installed here")
    with pytest.raises(FaceError, match="mediapipe"):
        F.detect_faces(astronaut, detector="mediapipe")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(detector="dlib"), "unknown face detector"),
        (dict(pad_mode="wrap"), "unknown pad_mode"),
        (dict(fallback="skip"), "unknown fallback"),
        (dict(crop="head"), "unknown crop mode"),
        (dict(size=500), "multiple of 8"),
        (dict(crop_ratio=0.5), "crop_ratio"),
        (dict(expand_ratio=0), "expand_ratio"),
        (dict(face_index=-1), "face_index"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(FaceError, match=match):
        F.prepare_portrait(np.zeros((128, 128, 3), np.uint8), **kwargs)


# --------------------------------------------------------------------------
# Boxes and masks
# --------------------------------------------------------------------------


def test_facebox_helpers():
    b = FaceBox(10, 20, 30, 60, 0.9)
    assert (b.width, b.height, b.area, b.centre) == (20, 40, 800, (20, 40))
    e = b.expanded(2.0)
    assert e.as_tuple() == (0, 0, 40, 80)
    assert b.expanded(2.0, 35, 70).as_tuple() == (0, 0, 35, 70)
    assert b.scaled(2).as_tuple() == (20, 40, 60, 120)
    assert b.scaled(2, 0.5).as_tuple() == (20, 10, 60, 30)
    u = F.union_box([b, FaceBox(0, 50, 12, 70, 0.5)])
    assert u.as_tuple() == (0, 20, 30, 70) and u.score == 0.5
    with pytest.raises(FaceError):
        F.union_box([])
    with pytest.raises(FaceError):
        FaceBox(5, 0, 1, 1)


def test_face_region_mask_pixel_centre_rule():
    m = F.face_region_mask(FaceBox(2.4, 1.6, 5.5, 4.0), 8, 8, 1.0)
    # columns whose centre j+0.5 is in [2.4, 5.5): 2, 3, 4 ; rows with i+0.5 in [1.6, 4.0): 2, 3
    expected = np.zeros((8, 8), np.float32)
    expected[2:4, 2:5] = 1
    assert np.array_equal(m, expected)
    big = F.face_region_mask(FaceBox(40, 40, 60, 60), 100, 100, 1.5)
    assert big.sum() == 30 * 30 and big[35, 35] == 1 and big[34, 34] == 0
    clipped = F.face_region_mask(FaceBox(-10, -10, 10, 10), 50, 50, 1.0)
    assert clipped.sum() == 100


def test_region_masks(astronaut_box):
    rm = F.region_masks(astronaut_box, 512, 512)
    assert rm.shape == (3, 512, 512) and rm.dtype == np.float32
    assert np.allclose(rm.sum(axis=0), 1.0, atol=1e-5)
    assert rm.min() >= -1e-6 and rm.max() <= 1 + 1e-6
    bg, face, lips = rm
    assert bg[0, 0] == pytest.approx(1.0) and bg[511, 511] == pytest.approx(1.0)
    cx, cy = (int(v) for v in astronaut_box.centre)
    assert face[cy, cx] == pytest.approx(1.0, abs=1e-3)  # nose: face, not lips
    # lips mass lies on the hand-measured mouth
    ys, xs = np.mgrid[0:512, 0:512]
    lx, ly = (xs * lips).sum() / lips.sum(), (ys * lips).sum() / lips.sum()
    assert ASTRONAUT_MOUTH.contains(lx, ly), (lx, ly)
    assert lips[int(ASTRONAUT_MOUTH.y0) + 8, 223] > 0.5
    # face region roughly the inscribed ellipse: pi/4 of the box area
    total_face = (face + lips).sum()
    assert total_face == pytest.approx(math.pi / 4 * astronaut_box.area, rel=0.1)
    assert lips.sum() < 0.2 * total_face


# --------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------


def _shift(img: np.ndarray, dx: int, dy: int) -> np.ndarray:
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), borderMode=cv2.BORDER_REPLICATE)


def test_union_over_frames_covers_every_face(astronaut):
    frames = np.stack([astronaut, _shift(astronaut, 60, 10), _shift(astronaut, -40, 50)])
    batch = torch.from_numpy(frames.astype(np.float32) / 255.0)  # ComfyUI IMAGE layout [B,H,W,C]
    separate = F.prepare_portraits(frames, 256, union=False, detector="haar")
    per_frame = [c.source_box for c in separate]
    for (dx, dy), b in zip([(0, 0), (60, 10), (-40, 50)], per_frame):
        assert b.iou(ASTRONAUT_FACE.translated(dx, dy)) >= 0.5
    assert separate[1].crop_box != separate[0].crop_box

    crops = F.prepare_portraits(batch, 256, union=True, detector="haar")
    assert len(crops) == 3
    assert all(c.crop_box == crops[0].crop_box for c in crops)
    assert all(np.array_equal(c.mask, crops[0].mask) for c in crops)
    u = crops[0].source_box
    for b in per_frame:
        assert u.x0 <= b.x0 and u.y0 <= b.y0 and u.x1 >= b.x1 and u.y1 >= b.y1
        # each frame's face, in crop coordinates, lies inside the union mask
        cb = crops[0].box_to_crop(b)
        inside = F.face_region_mask(cb, 256, 256, 1.0)
        assert (crops[0].mask[inside > 0] == 1).all()
    # and the frames themselves are cropped identically (same geometry, different content)
    assert not np.allclose(crops[0].image, crops[1].image)


def test_union_ignores_frames_without_face(astronaut):
    frames = [astronaut, np.full_like(astronaut, 127)]
    with pytest.warns(FaceWarning, match=r"no face found on frame\(s\) \[1\]"):
        crops = F.prepare_portraits(frames, 256, union=True, detector="haar")
    assert not crops[1].fell_back and crops[1].crop_box == crops[0].crop_box


def test_batch_without_union_warns_once():
    blank = np.zeros((3, 128, 128, 3), np.float32)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        crops = F.prepare_portraits(blank, 128)
    face_warnings = [r for r in rec if issubclass(r.category, FaceWarning)]
    assert len(face_warnings) == 1 and "3 of 3 frame(s)" in str(face_warnings[0].message)
    assert all(c.fell_back for c in crops)


# --------------------------------------------------------------------------
# Beside another pack's OpenCV 5, and what the node shows
# --------------------------------------------------------------------------

OPENCV5_PROBE = r"""
import json, sys, warnings
sys.path.insert(0, sys.argv[1])
import cv2
from skimage import data
from emo_model import face as F
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    image = data.astronaut()
    boxes = F.detect_faces(image)
    crop = F.prepare_portrait(image, 256)  # the crop and masks: the other cv2 calls of the face front end
    regions = F.region_masks(crop.face_box, 256, 256)
print(json.dumps({"cv2": cv2.__version__, "cv2_file": cv2.__file__, "cascade": hasattr(cv2, "CascadeClassifier"),
                  "available": F.available_detectors(), "boxes": [list(b.as_tuple()) for b in boxes], "fell_back": crop.fell_back,
                  "crop": list(crop.image.shape), "regions": len(regions), "warnings": [str(w.message) for w in caught]}))
"""


@pytest.mark.skipif(os.environ.get("EMO_REGISTRY_TESTS") != "1",
                    reason="installs opencv-python 5 from the package registry: opt-in (EMO_REGISTRY_TESTS=1; .ci/run sets it), "
                           "as tests talk only to loopback servers otherwise")
def test_face_found_with_opencv_5_installed_beside_the_pack(tmp_path):
    """What ComfyUI-VideoHelperSuite does to an environment: an unpinned `opencv-python` gives 5.x beside our
    opencv-python-headless 4.x, and `import cv2` loads 5.x (no CascadeClassifier, no cascades). Here opencv-python 5
    goes into a folder that comes first on the path of a child python (pip --target; --no-deps: numpy is the
    environment's), so `import cv2` loads it the same way; the face on astronaut() must still be found."""
    target = tmp_path / "opencv5"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--timeout", "30", "--retries", "1",
           "--no-deps", "--target", str(target), "opencv-python>=5"]
    pip = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_GUARD_S, check=False)
    if pip.returncode != 0:
        try:
            urllib.request.urlopen("https://pypi.org/simple/opencv-python/", timeout=20).close()
        except Exception as exc:
            pytest.skip(f"the package registry cannot be reached ({exc}); pip said: {pip.stderr.strip()[-300:]}")
        pytest.fail(f"pip could not install opencv-python>=5: {pip.stderr[-2000:]}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)])}
    run = subprocess.run([sys.executable, "-c", OPENCV5_PROBE, str(ROOT)], capture_output=True, text=True, env=env,
                         timeout=HANG_GUARD_S, cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["cv2"].startswith("5.") and out["cv2_file"].startswith(str(target)), out
    assert not out["cascade"] and out["available"] == ["lbp"], out
    assert len(out["boxes"]) == 1 and FaceBox(*out["boxes"][0]).iou(ASTRONAUT_FACE) >= 0.5, out
    assert not out["fell_back"] and out["crop"] == [256, 256, 3] and out["warnings"] == [], out


@pytest.fixture(scope="module")
def face_node():
    from comfy_harness import load_pack

    return load_pack().NODE_CLASS_MAPPINGS["EMOFaceMask"]()


NODE_ARGS = {"size": 64, "expand": 1.2, "crop": "face", "crop_ratio": 2.0, "fallback": "center", "face_index": 0, "union": False}


def test_face_mask_node_says_which_detector_found_the_face(face_node, astronaut):
    out = face_node.run(torch.from_numpy(astronaut).float()[None] / 255, detector="auto", **NODE_ARGS)
    masks, portraits = out["result"][:2]  # the third output is the crop (EMO_CROP)
    assert masks.shape == (1, 64, 64) and portraits.shape == (1, 64, 64, 3)
    assert out["ui"]["emo_summary"] == ["face found in 1 image(s) (detector auto = haar)"]


def test_face_mask_node_shows_a_fallback_on_the_node_and_in_the_log(face_node, caplog):
    blank = torch.full((2, 96, 96, 3), 0.5)
    with caplog.at_level(logging.WARNING, logger="ComfyUI-EMO"):
        out = face_node.run(blank, detector="haar", **NODE_ARGS)
    summary = out["ui"]["emo_summary"][0]
    assert summary.startswith("NO FACE FOUND in 2 of 2 image(s) (detector haar): a centred face box used instead · ")
    assert "no face found" in summary
    assert any("EMO Face Mask: " in r.getMessage() and "no face found" in r.getMessage() for r in caplog.records)


def test_face_mask_node_shows_the_haar_to_lbp_note(face_node, astronaut, tmp_path, monkeypatch, fresh_cascade_cache, caplog):
    monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path) + "/")
    with caplog.at_level(logging.WARNING, logger="ComfyUI-EMO"):
        out = face_node.run(torch.from_numpy(astronaut).float()[None] / 255, detector="haar", **NODE_ARGS)
    summary = out["ui"]["emo_summary"][0]
    assert summary.startswith("face found in 1 image(s) (detector haar) · ") and "Haar face detector unavailable" in summary
    assert "Used the 'lbp' detector" in summary
    assert any("Used the 'lbp' detector" in r.getMessage() for r in caplog.records)
    auto = face_node.run(torch.from_numpy(astronaut).float()[None] / 255, detector="auto", **NODE_ARGS)
    assert auto["ui"]["emo_summary"] == ["face found in 1 image(s) (detector auto = lbp)"]


def test_face_node_prints_nothing():
    """Warnings go to the node and to ComfyUI's log, not to stdout (print() in nodes/ is flagged)."""
    assert "print(" not in (ROOT / "nodes" / "face.py").read_text()


# ---- the originals' face preprocessing at run time (emo_model/face/front_ends.py; geometry: test_parity_faces.py) ----

def _front_end(family: str):
    from emo_model.families import get_family

    return get_family(family).face_front_end


def _ours(astronaut, size=64):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return F.prepare_portrait(astronaut, size, faces=[ASTRONAUT_FACE])


def test_original_front_end_without_its_packages_keeps_ours_and_says_why(astronaut, monkeypatch):
    from emo_model.face import front_ends

    monkeypatch.setattr(front_ends, "_installed", lambda module: False)
    ours = _ours(astronaut)
    needs_of = {"hallo": ("mediapipe", "face_landmarker_v2_with_blendshapes.task"), "echomimic-v1": ("facenet_pytorch",)}
    for family, needs in needs_of.items():
        got = front_ends.as_original(_front_end(family), astronaut, _ours(astronaut), None)
        assert np.array_equal(got.image, ours.image) and np.array_equal(got.mask, ours.mask) and got.region_masks is None
        assert "face preprocessing not run, our detector and crop used; it needs " in got.front_end, got.front_end
        assert all(n in got.front_end for n in needs), got.front_end
    assert front_ends.as_original(None, astronaut, ours, None) is ours and ours.front_end == ""


def test_landmark_front_end_gives_the_originals_face_mask_and_region_masks(astronaut, monkeypatch):
    from emo_model.face import front_ends
    from emo_model.face.landmark_masks import FACE_OVAL_VERTICES, OUTER_LIP_VERTICES, landmark_masks

    ours = _ours(astronaut)
    points = np.zeros((478, 2))
    t = np.linspace(0, 2 * np.pi, 478)
    points[:] = np.stack([32 + 5 * np.cos(t), 30 + 5 * np.sin(t)], 1)
    points[list(FACE_OVAL_VERTICES)] = np.stack([32 + 12 * np.cos(t[:36]), 30 + 15 * np.sin(t[:36])], 1)
    points[list(OUTER_LIP_VERTICES)] = np.stack([32 + 5 * np.cos(t[:20]), 40 + 2 * np.sin(t[:20])], 1)
    seen = []
    monkeypatch.setattr(front_ends, "missing", lambda fe, dirs: [])
    monkeypatch.setattr(front_ends, "find_landmarker", lambda dirs: "face_landmarker.task")
    monkeypatch.setattr(front_ends, "detect_landmarks", lambda rgb8, task: seen.append(rgb8.shape) or points)
    fe = _front_end("hallo")
    got = front_ends.as_original(fe, astronaut, ours, "models")
    want = landmark_masks(points, 64, 64, 64, fe.landmarks)
    assert seen == [(64, 64, 3)]  # the landmarker runs on the square portrait the model gets
    assert np.array_equal(got.mask, want.face_region) and not np.array_equal(got.mask, _ours(astronaut).mask)
    assert sorted(got.region_masks) == [(1, 1), (2, 2), (4, 4), (8, 8)]  # 64 / 8, 16, 32, 64
    for (h, w), m in got.region_masks.items():
        i = (8, 4, 2, 1).index(h)
        assert m.shape == (3, h, w)
        assert all(np.array_equal(m[c], want.levels[n][i]) for c, n in enumerate(("full", "face", "lip")))
    assert np.array_equal(got.image, ours.image) and "Hallo's face preprocessing ran" in got.front_end
    monkeypatch.setattr(front_ends, "detect_landmarks", lambda rgb8, task: None)
    none = front_ends.as_original(fe, astronaut, _ours(astronaut), "models")
    assert none.region_masks is None and "found no single face" in none.front_end


def test_box_crop_front_end_replaces_our_crop_and_maps_back(astronaut, monkeypatch):
    from emo_model.face import front_ends
    from emo_model.face.box_crop import box_crop

    box = np.array([[182.87753, 62.663696, 269.12137, 173.24072]], np.float32)
    given = []
    monkeypatch.setattr(front_ends, "missing", lambda fe, dirs: [])
    monkeypatch.setattr(front_ends, "detect_boxes",
                        lambda bgr, options: given.append((bgr, dict(options))) or (box, np.array([0.99])))
    fe = _front_end("echomimic-v1")
    got = front_ends.as_original(fe, astronaut, _ours(astronaut, 128), None)
    bgr, options = given[0]
    assert np.array_equal(bgr, astronaut[..., ::-1]) and options["thresholds"] == [0.6, 0.7, 0.7]  # BGR, as cv2.imread
    want = box_crop(astronaut[..., ::-1], box, [0.99], 128, fe.box_crop)
    assert got.crop_box == tuple(float(v) for v in want.square) == (140.0, 32.0, 312.0, 204.0)
    assert np.array_equal(np.rint(got.image * 255).astype(np.uint8), want.image[..., ::-1])
    assert np.array_equal(np.rint(got.mask * 255).astype(np.uint8), want.mask) and got.detector == "mtcnn"
    x0, y0 = got.to_source(0, 0)
    assert (x0, y0) == (140.0, 32.0) and got.scale == 128 / 172
    assert got.face_box.iou(got.box_to_crop(FaceBox(183, 63, 269, 173))) > 0.999
    assert "EchoMimic's face preprocessing ran (MTCNN crop and mask)" == got.front_end
    monkeypatch.setattr(front_ends, "detect_boxes", lambda bgr, options: (None, None))
    nothing = front_ends.as_original(fe, astronaut, _ours(astronaut, 128), None)
    assert nothing.fell_back and np.all(nothing.mask == 1) and nothing.mask.shape == (128, 128) and "no face" in nothing.front_end
    monkeypatch.setattr(front_ends, "detect_boxes", lambda bgr, options: 1 / 0)
    broken = front_ends.as_original(fe, astronaut, _ours(astronaut, 128), None)
    assert broken.crop_box == _ours(astronaut, 128).crop_box
    assert "face preprocessing failed (division by zero)" in broken.front_end


def test_face_mask_node_runs_the_models_original_preprocessing(face_node, astronaut, monkeypatch):
    from types import SimpleNamespace

    from emo_model.families import get_config

    # the pack's own copy of the module (the node imports emo_model through the pack's package)
    modules = [m for name, m in list(sys.modules.items()) if name.endswith("emo_model.face.front_ends")]
    for m in modules:
        monkeypatch.setattr(m, "_installed", lambda module: False)
    picture = torch.from_numpy(astronaut).float()[None] / 255
    model = SimpleNamespace(config=get_config("tiny-echomimic"))
    out = face_node.run(picture, detector="auto", emo_model=model, **NODE_ARGS)
    assert out["ui"]["emo_summary"][0].startswith("face found in 1 image(s) (detector auto = ")
    # the node shows the what, ComfyUI's log the whole line with what to do
    assert "EchoMimic's face preprocessing not run, our detector and crop used (see the log)" in out["ui"]["emo_summary"][0]
    for m in modules:
        monkeypatch.setattr(m, "missing", lambda fe, dirs: [])
        monkeypatch.setattr(m, "detect_boxes", lambda bgr, options: (np.array([[182.9, 62.7, 269.1, 173.2]]), [0.99]))
    ran = face_node.run(picture, detector="auto", emo_model=model, **NODE_ARGS)
    assert ran["ui"]["emo_summary"][0].endswith(" · EchoMimic's face preprocessing ran (MTCNN crop and mask)")
    assert ran["result"][2] is not None and ran["result"][1].shape == (1, 64, 64, 3)
    plain = face_node.run(picture, detector="auto", **NODE_ARGS)  # no model: ours, no note
    assert "face preprocessing" not in plain["ui"]["emo_summary"][0]

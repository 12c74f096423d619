"""Face preprocessing parity: our geometry against the ORIGINALS' own preprocessing code on the same detector outputs.

``tests/parity/faces/`` was made by ``tools/parity/faces_original.py`` (command and package versions in its
meta.json): Hallo's ``ImageProcessor.preprocess``, MEMO's ``preprocess_image`` and EchoMimic's face block of
``infer_audio2vid.py`` run on ``skimage.data.astronaut()`` and two off-centre, non-square cuts of it, with
stand-in detectors returning fixed boxes / landmarks / embeddings (stored as ``input.*``; the embedding stand-in
reads the pixels it is handed). Here the same pictures are made again and each family's front end (the recipe
in its family module) runs on the same detector outputs. The standard: max(1e-4, 3 x the original's floor)
(``floor.json``: the harness run again with another thread count); masks and crops are 8-bit in both, and
compared exactly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import rel_err
from parity_floor import check
from safetensors.torch import load_file

from emo_model.face.box_crop import box_crop
from emo_model.face.landmark_masks import landmark_masks, resized_portrait
from emo_model.families import FAMILIES, get_family
from emo_model.network import identity

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "parity" / "faces"
CASES = ("astronaut", "wide", "top")


def _harness():
    """tools/parity/faces_original.py: the pictures and the stand-in detectors (its main() is not run)."""
    sys.path.insert(0, str(ROOT / "tools" / "parity"))
    spec = importlib.util.spec_from_file_location("faces_original", ROOT / "tools" / "parity" / "faces_original.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def golden():
    meta = json.loads((FIXTURE / "meta.json").read_text())
    harness = _harness()
    pics = harness.pictures()
    for name, (shape, sha) in meta["pictures"].items():
        assert list(pics[name].shape) == shape and hashlib.sha256(pics[name].tobytes()).hexdigest() == sha, (
            f"picture {name} differs from the one the fixture was made from (scikit-image's astronaut changed?)")
    return meta, load_file(FIXTURE / "stages.safetensors"), harness, pics


def _front_end(family: str):
    fe = get_family(family).face_front_end
    assert fe is not None, f"{family} names no face front end"
    return fe


def _embedding(harness, pic, offset, monkeypatch):
    """Our identity embedding (emo_model.network.identity) with the same insightface stand-in the original got."""
    app = harness.StubFaceAnalysis()
    harness.StubFaceAnalysis.offset = offset
    monkeypatch.setattr(identity, "find_insightface_pack", lambda models_dir: Path("pack"))
    monkeypatch.setattr(identity, "_face_analysis", lambda pack: app)
    return identity.face_identity_embedding(pic, "models")


def _exact(ours: np.ndarray, original: torch.Tensor, what: str) -> None:
    ours_t = torch.from_numpy(np.ascontiguousarray(ours))
    assert ours_t.shape == original.shape, f"{what}: shape {tuple(ours_t.shape)} vs {tuple(original.shape)}"
    diff = (ours_t.int() - original.int()).abs()
    assert int(diff.max()) == 0, f"{what}: {int((diff > 0).sum())} values differ (max {int(diff.max())} of 255)"


@pytest.mark.parametrize("case", CASES)
def test_landmark_masks_are_the_originals(golden, case):
    meta, stages, harness, pics = golden
    fe = _front_end("hallo")
    pic = pics[case]
    size = meta["sizes"]["hallo"]
    masks = landmark_masks(stages[f"input.landmarks.{case}"].numpy(), *pic.shape[:2], (size, size), fe.landmarks)
    _exact(np.rint(masks.face_region * 255).astype(np.uint8), stages[f"hallo.{case}.face_region_u8"], f"{case} face region")
    assert np.array_equal(masks.face_region * np.float32(255), np.rint(masks.face_region * 255))  # k / 255 exactly
    for name in ("full", "face", "lip"):
        for i, level in enumerate(masks.levels[name]):
            key = f"hallo.{case}.{name}.{i}"
            ours = torch.from_numpy(level.reshape(-1))
            _, rel = rel_err(ours, stages[key])
            assert torch.equal(ours, stages[key]), f"{key}: rel err {rel:.3e}"
            check(rel, FIXTURE, key)


def test_landmark_front_end_portrait_is_the_originals(golden):
    meta, stages, harness, pics = golden
    size = meta["sizes"]["hallo"]
    ours = resized_portrait(pics["astronaut"], size)
    _exact(np.rint(ours * 255).astype(np.uint8).transpose(2, 0, 1), stages["hallo.astronaut.portrait_u8"], "portrait")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("family", ["hallo", "memo"])
def test_identity_embedding_is_the_originals(golden, case, family, monkeypatch):
    meta, stages, harness, pics = golden
    assert _front_end(family).identity
    ours = _embedding(harness, pics[case], tuple(meta["offsets"][case]), monkeypatch)
    key = f"{family}.{case}.face_emb"
    _, rel = rel_err(ours, stages[key])
    check(rel, FIXTURE, key)
    assert torch.equal(ours, stages[key]), f"{key}: rel err {rel:.3e}"


def test_identity_embedding_sees_the_channel_order_and_the_face(golden, monkeypatch):
    """The comparison can fail: an RGB picture handed over unswapped, or the smaller face, gives another embedding."""
    meta, stages, harness, pics = golden
    ours = _embedding(harness, pics["astronaut"][..., ::-1].copy(), (0, 0), monkeypatch)
    assert not torch.equal(ours, stages["memo.astronaut.face_emb"])
    smaller = harness.stub_embedding(pics["astronaut"][..., ::-1], harness.FACE_BOXES[1])
    assert not np.array_equal(smaller, stages["memo.astronaut.face_emb"].numpy())


@pytest.mark.parametrize("case", CASES)
def test_squash_portrait_is_the_originals(golden, case):
    meta, stages, harness, pics = golden
    assert _front_end("memo").squash_resize
    ours = resized_portrait(pics[case], meta["sizes"]["memo"])
    _exact(np.rint(ours * 255).astype(np.uint8).transpose(2, 0, 1), stages[f"memo.{case}.portrait_u8"], f"{case} portrait")


@pytest.mark.parametrize("case", CASES)
def test_box_crop_is_the_originals(golden, case):
    meta, stages, harness, pics = golden
    fe = _front_end("echomimic-v1")
    dx, dy = meta["offsets"][case]
    boxes = stages["input.mtcnn_boxes"].numpy() + np.array([dx, dy, dx, dy], np.float32)
    size = meta["sizes"]["echomimic"]
    crop = box_crop(pics[case][..., ::-1], boxes, stages["input.mtcnn_probs"].numpy(), size, fe.box_crop)
    _exact(crop.image, stages[f"echo.{case}.image_bgr"], f"{case} crop")
    _exact(crop.mask, stages[f"echo.{case}.mask_u8"], f"{case} mask")


def test_box_crop_keeps_the_negative_slice_of_a_box_at_the_top():
    """'top' puts the face 3 px below the edge: the mask's rows start at -8, which Python reads from the end."""
    pic = np.zeros((340, 412, 3), np.uint8)
    crop = box_crop(pic, np.array([[82.9, 2.7, 169.1, 113.2]], np.float32), np.array([0.99], np.float32), 340)
    assert crop.box == (83, 3, 169, 113)
    assert crop.mask.max() == 0  # rows [-8:124) of 340 rows is empty: no face mask at all, as in the original


def test_every_face_front_end_names_its_original():
    for fam in FAMILIES:
        fe = fam.face_front_end
        if fe is None:
            continue
        assert fam.original is not None and fam.original.commit[:8] in fe.mirrors, fam.name
        assert fe.label and (fe.landmarks or fe.box_crop or fe.squash_resize or fe.identity)


@pytest.fixture(scope="module")
def tiny_hallo():
    from conftest import perturb_zero_inits, tiny_vae

    from emo_model.app.session import Session
    from emo_model.network.model import EMOModel
    from emo_model.network.vae import DiffusersVAE

    torch.manual_seed(0)
    model = perturb_zero_inits(EMOModel("tiny-hallo").eval())
    return Session(model, DiffusersVAE(tiny_vae()), None, torch.device("cpu"))


def test_reference_encode_makes_the_originals_region_masks_and_the_sampler_keeps_them(tiny_hallo, golden, monkeypatch):
    from emo_model.face import front_ends

    meta, stages, harness, pics = golden
    pic = torch.from_numpy(pics["astronaut"]).float() / 255
    monkeypatch.setattr(front_ends, "_installed", lambda module: False)
    plain = tiny_hallo.encode_reference(pic, size=64)
    assert isinstance(plain.region_masks, torch.Tensor) and "Hallo's face preprocessing not run; it needs mediapipe" in plain.note
    points = stages["input.landmarks.astronaut"].numpy() / 8  # the stand-in landmarks on the 64 px portrait
    monkeypatch.setattr(front_ends, "missing", lambda fe, dirs: [])
    monkeypatch.setattr(front_ends, "find_landmarker", lambda dirs: "face_landmarker.task")
    monkeypatch.setattr(front_ends, "detect_landmarks", lambda rgb8, task: points)
    state = tiny_hallo.encode_reference(pic, size=64, models_dir="models")
    want = landmark_masks(points, 64, 64, 64, _front_end("hallo").landmarks).region_levels()
    assert sorted(state.region_masks) == sorted(want) and "made by Hallo's face preprocessing" in state.note
    assert all(torch.equal(state.region_masks[k], torch.from_numpy(v)) for k, v in want.items())
    mask = torch.zeros(64, 64)
    mask[10:40, 20:50] = 1
    assert tiny_hallo.region_masks_from_mask(mask, (64, 64), state) is state.region_masks  # the sampler keeps them
    assert isinstance(tiny_hallo.region_masks_from_mask(mask, (64, 64), plain), torch.Tensor)  # ours: from the mask


def test_region_masks_per_feature_map_size_reach_the_audio_modules(tiny_hallo):
    """The original's masks, resized by it per feature-map size, are read as given (Session.region_masks hands the
    pipeline a dict {(h, w): [3, h, w]}); sizes it lacks are area-pooled from the largest, as a plain tensor is."""
    import torch.nn.functional as F

    from emo_model.sampling.settings import SamplingSettings

    session, model = tiny_hallo, tiny_hallo.model
    pic = torch.from_numpy(_harness().pictures()["astronaut"]).float() / 255
    state = session.encode_reference(pic, size=64)
    masks = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1))
    feats = torch.randn(4, 5, 2, 32, generator=torch.Generator().manual_seed(0))

    def frames(region):
        out = []
        settings = SamplingSettings.from_preset(model.config.preset, steps=1, frames_per_clip=4)
        session.pipeline.generate(state, feats, settings=settings, sink=out.append, region_masks=region,
                                  noise=torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(2)))
        return torch.cat(out)

    pooled = {(s, s): F.interpolate(masks[None], size=(s, s), mode="area")[0] for s in (8, 4, 2, 1)}
    plain = frames(masks)
    assert torch.equal(frames(pooled), plain)
    assert torch.equal(frames({(8, 8): masks}), plain)  # the missing sizes pooled from the largest
    other = dict(pooled)
    other[(4, 4)] = torch.flip(pooled[(4, 4)], dims=(0,))  # one level's masks changed: the video changes
    assert not torch.equal(frames(other), plain)

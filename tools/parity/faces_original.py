"""Golden face preprocessing from the ORIGINALS' own code, given fixed detector outputs (tests/parity/faces/).

Runs in the face venv (tools/parity/README.md, "Face front end"), never in ours, and imports each original from
its checkout:

    venv-face/bin/python tools/parity/faces_original.py --hallo-src /work/parity/hallo \
        --memo-src /work/parity/memo --echo-src /work/parity/echomimic --out tests/parity/faces

The pictures: ``skimage.data.astronaut()`` (512 x 512) and two off-centre, non-square variants cut from it
(:func:`pictures`; the test makes them again the same way). The detectors are stand-ins returning fixed outputs,
stored in the fixture as ``input.*`` (the real models are not reachable here; the geometry around them is what
is compared):

* insightface ``FaceAnalysis`` (Hallo, MEMO): two faces with fixed boxes; each face's ``embedding`` is computed
  from the image the original hands the detector (:func:`stub_embedding`: per-channel means of the box, so the
  BGR order and the choice of face show in the result);
* MediaPipe's ``FaceLandmarker`` (Hallo, through ``hallo.utils.util.get_landmark``): fixed 478 points (face-oval
  and outer-lip vertices on ellipses, some exactly on .5 to exercise the rounding);
* facenet_pytorch's ``MTCNN.detect`` (EchoMimic): three boxes and probabilities (one below 0.8, one smaller).

What runs is the originals' own code: Hallo's ``ImageProcessor.preprocess`` (hallo/datasets/image_processor.py:
masks written as PNGs by hallo/utils/util.py ``get_mask`` and read back, torchvision resizes) at
``img_size`` = (256, 256); MEMO's ``memo.utils.vision_utils.preprocess_image`` at 128; EchoMimic's
``select_face`` and the face block of ``infer_audio2vid.py`` ``main()`` (from ``face_img = cv2.imread(...)`` to
the mask tensor; executed from the parsed source with the pictures written as PNG, ``args.W = args.H = 128``,
the tensor on the CPU) with ``src/utils/util.py`` ``crop_and_pad``. Sizes are below the originals' 512 to keep
the fixture under 1 MB; the geometry does not depend on them.

Run-time patches: torchvision's C++ ops are not loadable with the CPU torch here, so its ``nms`` schema is
defined with a small Python NMS before the import (only facenet_pytorch's ``detect`` would use it: not run);
``av``, ``moviepy`` and ``einops`` are stubbed (video IO, unused here).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import tempfile
import types

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import package_versions, stub_packages  # noqa: E402

HALLO_SIZE, MEMO_SIZE, ECHO_SIZE = 256, 128, 128


def _torchvision_without_ops() -> None:
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _torchvision_without_ops.lib = lib  # keep the registration alive


from skimage.data import astronaut  # noqa: E402

args = argparse.Namespace()  # set by main()


# ---- the pictures and the stand-in detector outputs (tests/test_parity_faces.py makes the pictures again) ----

def pictures() -> dict[str, np.ndarray]:
    a = astronaut()
    wide = np.concatenate([np.full((512, 200, 3), 90, np.uint8), a], axis=1)[40:420]  # 380 x 712, face right of centre
    top = a[60:400, 100:]  # 340 x 412, the face at the top edge
    return {"astronaut": a, "wide": wide, "top": top}


OFFSETS = {"astronaut": (0, 0), "wide": (200, -40), "top": (-100, -60)}  # (dx, dy) from astronaut's coordinates
FACE_BOXES = np.array([[178.4, 55.5, 274.6, 180.5], [400.0, 300.0, 440.0, 350.0]], np.float32)  # insightface bbox
MTCNN_BOXES = np.array([[182.87753, 62.663696, 269.12137, 173.24072],  # the real MTCNN's box on astronaut
                        [10.0, 10.0, 300.0, 400.0],  # larger, but prob 0.5
                        [400.0, 300.0, 440.0, 350.0]], np.float32)
MTCNN_PROBS = np.array([0.9994566, 0.5, 0.93], np.float32)


def landmarks_astronaut() -> np.ndarray:
    """478 stand-in face-mesh points (pixels of astronaut): face oval and outer lip on ellipses, the rest inside."""
    oval = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176,
            149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]
    lips = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 146, 91, 181, 84, 17, 314, 405, 321, 375]
    pts = np.zeros((478, 2))
    k = np.arange(478)
    pts[:, 0] = 226.0 + 20.0 * np.cos(k * 0.37)
    pts[:, 1] = 115.0 + 25.0 * np.sin(k * 0.53)
    t = np.linspace(0, 2 * np.pi, len(oval), endpoint=False)
    pts[oval, 0] = 225.5 + 47.0 * np.cos(t)
    pts[oval, 1] = 116.5 + 61.0 * np.sin(t)
    t = np.linspace(0, 2 * np.pi, len(lips), endpoint=False)
    pts[lips, 0] = 224.5 + 18.25 * np.cos(t)
    pts[lips, 1] = 160.5 + 8.0 * np.sin(t)
    return pts


def stub_embedding(image_bgr: np.ndarray, box) -> np.ndarray:
    """512 values from the box's pixels as given (BGR): channel c mean * (1 + k / 512) for k = c mod 3."""
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    region = image_bgr[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)].astype(np.float64)
    means = region.reshape(-1, 3).mean(axis=0) if region.size else np.zeros(3)
    k = np.arange(512)
    return (means[k % 3] * (1.0 + k / 512.0)).astype(np.float32)


class StubFaceAnalysis:
    """insightface.app.FaceAnalysis with fixed boxes (shifted per picture) and :func:`stub_embedding`."""

    offset = (0, 0)

    def __init__(self, *a, **kw):
        pass

    def prepare(self, *a, **kw):
        pass

    def get(self, image_bgr):
        dx, dy = StubFaceAnalysis.offset
        faces = []
        for box in FACE_BOXES[::-1]:  # the smaller face first: the originals sort by area
            b = box + np.array([dx, dy, dx, dy], np.float32)
            faces.append({"bbox": b, "embedding": stub_embedding(image_bgr, b)})
        return faces


class StubMTCNN:
    offset = (0, 0)

    def detect(self, image):
        dx, dy = StubMTCNN.offset
        return MTCNN_BOXES + np.array([dx, dy, dx, dy], np.float32), MTCNN_PROBS.copy()


def _load(name: str, path: str, package: str | None = None):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=None)
    module = importlib.util.module_from_spec(spec)
    if package:
        module.__package__ = package
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_hallo(pics, tmp) -> dict[str, torch.Tensor]:
    sys.path.insert(0, args.hallo_src)
    import hallo.datasets.image_processor as ip
    import hallo.utils.util as util

    out = {}
    base = landmarks_astronaut()
    for case, pic in pics.items():
        dx, dy = OFFSETS[case]
        lm = base + np.array([dx, dy])
        h, w = pic.shape[:2]
        util.get_landmark = lambda file, lm=lm, h=h, w=w: (lm, h, w)  # the landmarker stand-in
        ip.FaceAnalysis = StubFaceAnalysis
        StubFaceAnalysis.offset = (dx, dy)
        path = os.path.join(tmp, f"hallo_{case}.png")
        from PIL import Image

        Image.fromarray(pic).save(path)
        cache = os.path.join(tmp, f"hallo_cache_{case}")
        os.makedirs(cache, exist_ok=True)
        proc = ip.ImageProcessor((HALLO_SIZE, HALLO_SIZE), "unused")
        pixels, face_region, emb, full, face, lip = proc.preprocess(path, cache, 1.2)
        assert torch.equal(face_region[0], face_region[1]) and torch.equal(face_region[0], face_region[2])
        region8 = torch.round(face_region[0] * 255)
        assert torch.equal(region8 / 255, face_region[0]), "face region is not k/255"
        out[f"input.landmarks.{case}"] = torch.from_numpy(lm)
        out[f"hallo.{case}.face_region_u8"] = region8.to(torch.uint8)
        if case == "astronaut":
            pix8 = torch.round((pixels * 0.5 + 0.5) * 255)
            assert (pix8 / 255 - 0.5) .div(0.5).sub(pixels).abs().max() < 1e-6
            out[f"hallo.{case}.portrait_u8"] = pix8.to(torch.uint8)
        out[f"hallo.{case}.face_emb"] = torch.from_numpy(np.asarray(emb, np.float32))
        for name, levels in (("full", full), ("face", face), ("lip", lip)):
            for i, m in enumerate(levels):
                out[f"hallo.{case}.{name}.{i}"] = m.reshape(-1).float()
    return out


def run_memo(pics, tmp) -> dict[str, torch.Tensor]:
    sys.path.insert(0, args.memo_src)
    import memo.utils.vision_utils as vu

    vu.FaceAnalysis = StubFaceAnalysis
    out = {}
    from PIL import Image

    for case, pic in pics.items():
        StubFaceAnalysis.offset = OFFSETS[case]
        path = os.path.join(tmp, f"memo_{case}.png")
        Image.fromarray(pic).save(path)
        pixels, emb = vu.preprocess_image("unused", path, MEMO_SIZE)
        pix8 = torch.round((pixels[0] * 0.5 + 0.5) * 255)
        assert (pix8 / 255 - 0.5).div(0.5).sub(pixels[0]).abs().max() < 1e-6
        out[f"memo.{case}.portrait_u8"] = pix8.to(torch.uint8)
        out[f"memo.{case}.face_emb"] = emb.reshape(-1).float()
    return out


def _echo_face_block(src: str):
    """EchoMimic's select_face and the statements of main()'s face block, parsed from infer_audio2vid.py."""
    tree = ast.parse(open(os.path.join(src, "infer_audio2vid.py"), encoding="utf-8").read())
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    body = None
    for node in ast.walk(funcs["main"]):
        if isinstance(node, ast.For) and isinstance(node.target, ast.Name) and node.target.id == "audio_path":
            body = node.body
    start = next(i for i, s in enumerate(body) if isinstance(s, ast.Assign) and ast.unparse(s.targets[0]) == "face_img")
    end = next(i for i, s in enumerate(body) if isinstance(s, ast.Assign) and ast.unparse(s.targets[0]) == "face_mask_tensor")
    block = ast.Module(body=body[start:end + 1], type_ignores=[])
    text = ast.unparse(block).replace('device="cuda"', 'device="cpu"').replace("device='cuda'", "device='cpu'")
    select = ast.Module(body=[funcs["select_face"]], type_ignores=[])
    return ast.unparse(select) + "\n\n" + text + "\n"


def run_echo(pics, tmp) -> dict[str, torch.Tensor]:
    import cv2
    from PIL import Image

    util = _load("echo_util", os.path.join(args.echo_src, "src", "utils", "util.py"))
    import runpy

    block_file = os.path.join(tmp, "echo_face_block.py")  # the original's statements, run as a script (runpy)
    with open(block_file, "w", encoding="utf-8") as f:
        f.write(_echo_face_block(args.echo_src))
    out = {}
    for case, pic in pics.items():
        StubMTCNN.offset = OFFSETS[case]
        path = os.path.join(tmp, f"echo_{case}.png")
        Image.fromarray(pic).save(path)
        ns = {"cv2": cv2, "np": np, "torch": torch, "Image": Image, "crop_and_pad": util.crop_and_pad,
              "face_detector": StubMTCNN(), "ref_image_path": path, "weight_dtype": torch.float32,
              "args": types.SimpleNamespace(W=ECHO_SIZE, H=ECHO_SIZE, facemusk_dilation_ratio=0.1,
                                            facecrop_dilation_ratio=0.5)}
        ns = runpy.run_path(block_file, init_globals=ns)
        out[f"echo.{case}.image_bgr"] = torch.from_numpy(np.ascontiguousarray(ns["face_img"]))
        mask = ns["face_mask_tensor"].reshape(ns["face_mask_tensor"].shape[-2:])
        mask8 = torch.round(mask * 255)
        assert torch.equal(mask8 / 255, mask), "EchoMimic's mask is not k/255"
        out[f"echo.{case}.mask_u8"] = mask8.to(torch.uint8)
    dx, dy = OFFSETS["astronaut"]
    out["input.mtcnn_boxes"] = torch.from_numpy(MTCNN_BOXES + np.array([dx, dy, dx, dy], np.float32))
    out["input.mtcnn_probs"] = torch.from_numpy(MTCNN_PROBS)
    out["input.face_boxes"] = torch.from_numpy(FACE_BOXES)
    return out


def _commit(src: str) -> str:
    import subprocess

    run = subprocess.run(["git", "-C", src, "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    return run.stdout.strip() or "unknown"


def main() -> None:
    from safetensors.torch import save_file

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hallo-src", required=True)
    p.add_argument("--memo-src", required=True)
    p.add_argument("--echo-src", required=True)
    p.add_argument("--out", required=True)
    p.parse_args(namespace=args)
    _torchvision_without_ops()
    stub_packages("av", "moviepy", "einops")

    pics = pictures()
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        stages = {**run_hallo(pics, tmp), **run_memo(pics, tmp), **run_echo(pics, tmp)}
    stages = {k: v.contiguous() for k, v in sorted(stages.items())}
    save_file(stages, os.path.join(args.out, "stages.safetensors"))
    import hashlib

    meta = {
        "pictures": {k: [list(v.shape), hashlib.sha256(v.tobytes()).hexdigest()] for k, v in pics.items()},
        "offsets": OFFSETS,
        "sizes": {"hallo": HALLO_SIZE, "memo": MEMO_SIZE, "echomimic": ECHO_SIZE},
        "hallo_face_expand_ratio": 1.2,
        "commits": {name: _commit(src) for name, src in (("hallo", args.hallo_src), ("memo", args.memo_src),
                                                         ("echomimic", args.echo_src))},
        "command": ["tools/parity/faces_original.py", *sys.argv[1:]],
        "packages": package_versions("torch", "torchvision", "pillow", "opencv-python-headless", "opencv-contrib-python",
                                     "numpy", "scikit-image", "mediapipe", "insightface", "facenet_pytorch"),
        "stages": sorted(stages),
    }
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"wrote {len(stages)} stages to {args.out}")


if __name__ == "__main__":
    main()

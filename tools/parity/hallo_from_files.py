"""Hallo from the user's files: an image file and an audio file with music through Hallo's own entry point.

Issue 24, item 5. Runs in its own venv (tools/parity/README.md, "Hallo from files": Hallo's pins plus the packages its
preprocessing imports: audio-separator 0.17.2, onnxruntime, librosa, OpenCV, torchvision, Pillow), never in ours:

    venv-hallo-files/bin/python tools/parity/hallo_from_files.py --hallo-src $P/hallo --out tests/parity/hallo_files

What runs is ``scripts/inference.py``'s ``inference_process`` on a config that is ``configs/inference/default.yaml`` as a
user edits it (file paths; size 64, 3 steps; ``weight_dtype: fp32``: half precision is item 4's fixtures; 8 frames per
clip, the clip length of our ``tiny-hallo`` preset, so that the 10 frames of audio make 2 clips and the second one
reads the first one's motion frames; 2 motion frames, CFG 3.5 and Hallo's fixed seed 42 as published), from

* ``portrait.png``: a square, face-centred 240 x 240 cut of ``skimage.data.astronaut()`` (:func:`picture`), written
  as an uncompressed PNG (:func:`png_bytes`: the same bytes in any Python; its sha256 is in meta.json);
* ``song44k.wav``: tests/parity/audio/song44k.wav (0.4 s, 44.1 kHz stereo: a voice, a chord and noise).

Hallo's own code does everything in between: Pillow reads the picture, ``ImageProcessor.preprocess`` squash-resizes
it, asks insightface for the face and MediaPipe for landmarks (``get_landmark`` reads the file), writes and reads back
its mask PNGs with OpenCV, resizes them with torchvision; ``AudioProcessor`` runs the real audio-separator 0.17.2
(``Separator(output_single_stem="vocals")``, ``separate``), ffmpeg resamples the stem, ``librosa.load`` reads it,
wav2vec2 encodes it; the clip loop and seeds are the script's.

Stand-ins, only for what cannot be reached here:

* the models: Hallo's ``Net`` at our ``tiny-hallo`` shapes with the hash-generated ``net.pth`` of tests/parity/hallo
  (same key/shape list and seed: same digest), the tiny VAE and wav2vec2 of tests/parity/hallo; the script's
  full-size ``FaceLocator`` / ``ImageProjModel`` / ``AudioProjModel`` arguments are replaced by the tiny ones;
* insightface's ``FaceAnalysis``: ``faces_original.StubFaceAnalysis`` (fixed boxes, an embedding computed from the
  pixels it is handed, cut to the tiny network's 16 identity values);
* MediaPipe: :func:`fake_mediapipe`, the tasks API the originals and we call, returning fixed 478 face-mesh points
  (``faces_original.landmarks_astronaut`` moved into this picture) as float32 normalised coordinates, as MediaPipe
  does; it refuses a picture of another size (it stands for a detector run on this picture);
* the separator's model: tests/parity/audio/standin_Kim_Vocal_2.onnx as ``Kim_Vocal_2.onnx``, with the JSON files
  audio-separator would download (``audio_original.separator_folder``; nothing is fetched).

Run-time patches (plumbing, not preprocessing): ``AudioProcessor``'s device (the script leaves its ``cuda:0`` default)
is the CPU; ``tensor_to_video`` keeps the frames instead of writing an mp4 (``av`` / ``moviepy`` are stubbed);
``ReferenceAttentionControl.update`` keeps the bank in fp32 (Hallo casts it to fp16 even in an fp32 run; no config
turns that off; docs/parity.md); xformers stubbed; ``checkpoint`` given ``use_reentrant`` (torch >= 2.4).

Recorded in ``stages.safetensors``: ``frames`` ([T, H, W, 3], 0..1, as handed to the video writer) and the diagnostic
stages: ``portrait`` (the preprocessed pixels, [-1, 1]), ``face_region``, ``mask.{full,face,lip}.{0..3}``,
``face_emb``, ``vocals_stem`` (the separator's int16 file, 44.1 kHz stereo), ``vocals_16k`` (what wav2vec2 gets),
``audio_emb`` (wav2vec2 features), ``audio_tokens``, ``noise``. Through tools/parity/floor.py (2 then 1 threads).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile
import time
import types
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from faces_original import FACE_BOXES, StubFaceAnalysis, landmarks_astronaut  # noqa: E402

CROP = (0, 240, 106, 346)  # rows, cols of astronaut(): the face (box centre 226.5, 118) in the middle of a square
PICTURE_OFFSET = (-CROP[2], -CROP[0])  # (dx, dy) from astronaut's coordinates to the picture's


def picture() -> np.ndarray:
    """The portrait: a square, face-centred cut of skimage's astronaut (uint8 RGB, 240 x 240)."""
    from skimage.data import astronaut

    y0, y1, x0, x1 = CROP
    return np.ascontiguousarray(astronaut()[y0:y1, x0:x1])


def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB8 PNG with stored (uncompressed) deflate blocks: the same bytes from any Python / zlib."""
    h, w = rgb.shape[:2]
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 0)) + chunk(b"IEND", b"")


def picture_landmarks() -> np.ndarray:
    """The stand-in face-mesh points [478, 2] in the picture's pixels."""
    return landmarks_astronaut() + np.array(PICTURE_OFFSET, np.float64)


class PictureFaceAnalysis(StubFaceAnalysis):
    """faces_original's insightface stand-in at this picture's offset, its embedding cut to the tiny network's identity
    width (``EMBEDDING_DIMS`` of the 512; ``models``: what ImageProcessor.close reads)."""

    EMBEDDING_DIMS = 16  # hallo_shapes.net_sizes(False).id_dim
    models: dict = {}

    def get(self, image_bgr):
        StubFaceAnalysis.offset = PICTURE_OFFSET
        faces = super().get(image_bgr)
        return [{**face, "embedding": face["embedding"][: self.EMBEDDING_DIMS]} for face in faces]


def fake_mediapipe(points: np.ndarray, shape: tuple[int, int]) -> types.ModuleType:
    """A ``mediapipe`` module whose FaceLandmarker returns ``points`` (pixels of a ``shape`` = (h, w) picture) as
    float32 normalised coordinates; the calls Hallo's get_landmark and emo_model.face.front_ends make."""
    h0, w0 = shape
    norm = [(float(np.float32(x / w0)), float(np.float32(y / h0))) for x, y in points]

    class Image:
        def __init__(self, image_format=None, data=None):
            self.height, self.width = data.shape[:2]

        @classmethod
        def create_from_file(cls, path):
            from PIL import Image as PILImage

            with PILImage.open(path) as im:
                return cls(data=np.zeros((im.height, im.width, 3), np.uint8))

    class Landmarker:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def detect(self, image):
            if (image.height, image.width) != (h0, w0):
                raise AssertionError(f"landmarker stand-in handed a {image.width}x{image.height} picture, made for {w0}x{h0}")
            return types.SimpleNamespace(face_landmarks=[[types.SimpleNamespace(x=x, y=y, z=0.0) for x, y in norm]])

    vision = types.SimpleNamespace(
        FaceLandmarker=types.SimpleNamespace(create_from_options=lambda options: Landmarker()),
        FaceLandmarkerOptions=lambda **kw: types.SimpleNamespace(**kw),
        RunningMode=types.SimpleNamespace(IMAGE="IMAGE", VIDEO="VIDEO"))
    mp = types.ModuleType("mediapipe")
    mp.tasks = types.SimpleNamespace(BaseOptions=lambda **kw: types.SimpleNamespace(**kw), vision=vision)
    mp.Image = Image
    mp.ImageFormat = types.SimpleNamespace(SRGB="SRGB")
    mp.solutions = types.SimpleNamespace()
    return mp


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


HALLO = types.SimpleNamespace(
    name="hallo", repo="https://github.com/fudan-generative-vision/hallo", script="scripts/inference.py",
    config="configs/inference/default.yaml", writer="tensor_to_video", config_changes={}, stubs=("av", "moviepy"),
    packages=(), patch=None, output_flag=True)


def main(argv: list[str] | None = None, variant: types.SimpleNamespace = HALLO) -> None:
    """Run ``variant`` (Hallo's, or hallo2_from_files.py's) entry point from the files (module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(f"--{variant.name}-src", dest="src", required=True,
                   help=f"checkout of {variant.repo.split('github.com/')[1]} at the pinned commit")
    p.add_argument("--out", required=True, help=f"fixture folder (tests/parity/{variant.name}_files)")
    p.add_argument("--assets", default=str(ROOT / "tests/parity/hallo"),
                   help="folder with the tiny vae/, wav2vec2/ and meta.json")
    p.add_argument("--audio", default=str(ROOT / "tests/parity/audio/song44k.wav"), help="the driving audio file")
    p.add_argument("--standin", default=str(ROOT / "tests/parity/audio/standin_Kim_Vocal_2.onnx"))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--frames", type=int, default=8, help="n_sample_frames (default.yaml: 16; tiny-hallo's preset: 8)")
    p.add_argument("--work", help="scratch folder (default: a temporary one, removed)")
    p.add_argument("--bank-fp16", action="store_true",
                   help="keep Hallo's fp16 bank cast (what its fp32 run does; the fixture keeps the bank in fp32)")
    args = p.parse_args(argv)
    t0 = time.time()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 2))  # floor.py sets it
    from common import digest, hashed_state_dict, package_versions, patch_checkpoint, stub_packages, stub_xformers
    from faces_original import _torchvision_without_ops
    from hallo_shapes import net_sizes, sd_unet_config

    from audio_original import separator_folder

    stub_xformers()
    patch_checkpoint()
    _torchvision_without_ops()  # the PyPI torchvision's C++ ops do not load with the CPU torch; transforms do not use them
    pic = picture()
    sys.modules["mediapipe"] = fake_mediapipe(picture_landmarks(), pic.shape[:2])
    insightface = types.ModuleType("insightface")
    insightface.app = types.ModuleType("insightface.app")
    insightface.app.FaceAnalysis = PictureFaceAnalysis
    sys.modules.update({"insightface": insightface, "insightface.app": insightface.app})
    stubbed = stub_packages(*variant.stubs)
    hallo = os.path.abspath(args.src)
    sys.path.insert(0, hallo)

    import importlib.util

    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    import hallo.datasets.audio_processor as hallo_audio
    import hallo.datasets.image_processor as hallo_image
    from hallo.animate.face_animate import FaceAnimatePipeline
    from hallo.models.audio_proj import AudioProjModel
    from hallo.models.face_locator import FaceLocator
    from hallo.models.image_proj import ImageProjModel
    from hallo.models.mutual_self_attention import ReferenceAttentionControl
    from hallo.models.unet_2d_condition import UNet2DConditionModel

    spec = importlib.util.spec_from_file_location("hallo_inference_script", os.path.join(hallo, variant.script))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    work = Path(args.work or tempfile.mkdtemp(prefix="hallo-files-"))
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    assets = Path(args.assets)
    try:
        # ---- the user's files and models folder (Hallo's pretrained_models layout) ------------------------------
        image_path = work / "portrait.png"
        image_path.write_bytes(png_bytes(pic))
        audio_path = work / Path(args.audio).name
        shutil.copy(args.audio, audio_path)
        models = work / "pretrained_models"
        separator = separator_folder(models, Path(args.standin))  # models/audio_separator/Kim_Vocal_2.onnx + its JSON
        sizes = net_sizes(False)
        sd_dir = models / "sd-tiny"
        torch.manual_seed(0)
        UNet2DConditionModel.from_config(sd_unet_config(sizes, args.size // 8)).save_pretrained(sd_dir / "unet")
        weights = json.loads((assets / "meta.json").read_text())["weights"]
        state = hashed_state_dict([(k, s) for k, s in weights["spec"]], weights["seed"])
        assert digest(state) == weights["digest"], "regenerated weights differ from tests/parity/hallo's"
        (models / variant.name).mkdir()
        torch.save(state, models / variant.name / "net.pth")
        del state

        # ---- the config, as a user edits default.yaml ------------------------------------------------------------
        cfg = OmegaConf.load(os.path.join(hallo, variant.config))
        cfg.merge_with({
            "source_image": str(image_path), "driving_audio": str(audio_path), "weight_dtype": "fp32",
            "data": {"source_image": {"width": args.size, "height": args.size}, "n_sample_frames": args.frames},
            "inference_steps": args.steps,
            "audio_ckpt_dir": str(models / variant.name), "base_model_path": str(sd_dir),
            "motion_module_path": str(models / "no-motion-module.ckpt"),  # absent: skipped (the weights are in net.pth)
            "face_analysis": {"model_path": str(models / "face_analysis")},
            "wav2vec": {"model_path": str(assets / "wav2vec2")}, "vae": {"model_path": str(assets / "vae")},
            "audio_separator": {"model_path": str(separator / "Kim_Vocal_2.onnx")}, "save_path": str(work / "cache"),
            "unet_additional_kwargs": {"audio_attention_dim": sizes.cross,
                                       "motion_module_kwargs": {"num_attention_heads": sizes.heads}},
            **variant.config_changes,
        })
        cfg_path = work / "inference.yaml"
        OmegaConf.save(cfg, cfg_path)

        # ---- stand-ins for the networks' full sizes, plumbing, recording ----------------------------------------
        def tiny(cls, **kw):
            return lambda *a, **_full_size: cls(**kw)

        script.FaceLocator = tiny(FaceLocator, conditioning_embedding_channels=sizes.widths[0], conditioning_channels=3,
                                  block_out_channels=sizes.fl_widths)
        script.ImageProjModel = tiny(ImageProjModel, cross_attention_dim=sizes.cross, clip_embeddings_dim=sizes.id_dim,
                                     clip_extra_context_tokens=sizes.id_tokens)
        script.AudioProjModel = tiny(AudioProjModel, seq_len=5, blocks=sizes.audio_layers, channels=sizes.audio_dim,
                                     intermediate_dim=sizes.audio_hidden, output_dim=sizes.cross,
                                     context_tokens=sizes.audio_tokens)
        rec: dict[str, torch.Tensor] = {}

        def put(name, t):
            assert name not in rec, f"stage {name} recorded twice"
            rec[name] = torch.as_tensor(np.asarray(t) if not isinstance(t, torch.Tensor) else t).detach().clone().contiguous()

        audio_init = hallo_audio.AudioProcessor.__init__
        hallo_audio.AudioProcessor.__init__ = lambda self, *a, **kw: audio_init(self, *a, **{**kw, "device": "cpu"})
        audio_pre = hallo_audio.AudioProcessor.preprocess

        def audio_preprocess(self, *a, **kw):
            emb, length = audio_pre(self, *a, **kw)
            put("audio_emb", emb.float())
            return emb, length

        hallo_audio.AudioProcessor.preprocess = audio_preprocess
        real_load = hallo_audio.librosa.load

        def librosa_load(path, *a, **kw):
            samples, rate = real_load(path, *a, **kw)
            put("vocals_16k", torch.from_numpy(np.asarray(samples, np.float32)))
            return samples, rate

        hallo_audio.librosa = types.SimpleNamespace(load=librosa_load)
        image_pre = hallo_image.ImageProcessor.preprocess

        def image_preprocess(self, *a, **kw):
            result = image_pre(self, *a, **kw)
            pixels, region, emb, full, face, lip = result
            put("portrait", pixels.permute(1, 2, 0))  # [H, W, 3] in [-1, 1]
            put("face_region", region[0])
            put("face_emb", torch.from_numpy(np.asarray(emb, np.float32)))
            for name, levels in (("full", full), ("face", face), ("lip", lip)):
                for i, m in enumerate(levels):
                    put(f"mask.{name}.{i}", m.reshape(-1).float())
            return result

        hallo_image.ImageProcessor.preprocess = image_preprocess
        script.ImageProcessor = hallo_image.ImageProcessor
        call = FaceAnimatePipeline.__call__
        clip = {"i": -1}

        def pipeline_call(self, *a, **kw):
            clip["i"] += 1
            put(f"clip{clip['i']}.audio_tokens", kw["audio_tensor"][0])
            return call(self, *a, **kw)

        FaceAnimatePipeline.__call__ = pipeline_call
        prepare = FaceAnimatePipeline.prepare_latents

        def prepare_latents(self, *a, **kw):
            noise = prepare(self, *a, **kw)
            put(f"clip{clip['i']}.noise", noise[0])
            return noise

        FaceAnimatePipeline.prepare_latents = prepare_latents
        update = ReferenceAttentionControl.update
        if not args.bank_fp16:
            ReferenceAttentionControl.update = lambda self, writer, dtype=torch.float16: update(self, writer, dtype=torch.float32)
        setattr(script, variant.writer, lambda tensor, *a, **kw: put("frames", tensor.permute(1, 2, 3, 0).float()))
        if variant.patch:
            variant.patch(script, put)

        # ---- Hallo's entry point -------------------------------------------------------------------------------------
        ns = argparse.Namespace(config=str(cfg_path), source_image=None, driving_audio=None, pose_weight=None, face_weight=None,
                                lip_weight=None, face_expand_ratio=None, audio_ckpt_dir=None)
        if variant.output_flag:  # inference.py's --output (its default .cache/output.mp4; never written here)
            ns.output = str(work / "out.mp4")
        with torch.no_grad():
            script.inference_process(ns)
        import wave

        stems = [f for f in (work / "cache").rglob("*.wav")
                 if f.parent.name == "audio_preprocess" and not f.stem.endswith("-16k")]
        assert len(stems) == 1, stems
        with wave.open(str(stems[0])) as w:
            stem = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, w.getnchannels()).T
        put("vocals_stem", torch.from_numpy(np.ascontiguousarray(stem)))
        save_file(rec, str(out / "stages.safetensors"))
        meta = {
            "original": {"repo": variant.repo,
                         "commit": os.popen(f"git -C '{hallo}' rev-parse HEAD").read().strip()},
            "command": [os.path.relpath(os.path.abspath(sys.argv[0]), ROOT), *sys.argv[1:]],
            "inputs": {"portrait.png": {"sha256": sha256(image_path.read_bytes()), "pixels_sha256": sha256(pic.tobytes()),
                                        "shape": list(pic.shape), "astronaut_crop_rows_cols": list(CROP)},
                       "audio": {"file": os.path.relpath(os.path.abspath(args.audio), ROOT),
                                 "sha256": sha256(audio_path.read_bytes())},
                       "separator_model": {"file": os.path.relpath(os.path.abspath(args.standin), ROOT),
                                           "sha256": sha256(Path(args.standin).read_bytes())},
                       "face_boxes": FACE_BOXES.tolist(), "face_offset": list(PICTURE_OFFSET),
                       "landmarks": "faces_original.landmarks_astronaut() + face_offset"},
            "weights": {"assets": os.path.relpath(os.path.abspath(assets), ROOT), "digest": weights["digest"],
                        "seed": weights["seed"]},
            "settings": {"size": args.size, "steps": args.steps, "cfg": float(cfg.cfg_scale), "seed": 42,
                         "frames_per_clip": int(cfg.data.n_sample_frames), "motion_frames": int(cfg.data.n_motion_frames),
                         "fps": int(cfg.data.export_video.fps), "weight_dtype": "fp32", "bank_dtype": "fp16" if args.bank_fp16 else "fp32 (Hallo: fp16)",
                         "face_expand_ratio": float(cfg.face_expand_ratio), "clips": clip["i"] + 1,
                         "torch_threads": torch.get_num_threads()},
            "packages": package_versions("torch", "torchvision", "diffusers", "transformers", "numpy", "audio-separator",
                                         "onnxruntime", "librosa", "soundfile", "soxr", "opencv-python-headless", "pillow",
                                         *variant.packages),
            "stubbed_packages": stubbed + ["insightface (StubFaceAnalysis)", "mediapipe (fake_mediapipe)"],
            "stages": {k: list(v.shape) for k, v in rec.items()},
        }
        (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        print(f"done in {time.time() - t0:.0f}s: {len(rec)} stages; frames {tuple(rec['frames'].shape)}")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

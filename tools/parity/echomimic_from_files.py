"""EchoMimic v1 from files, the way a user runs it (issue 24 item 5): ``infer_audio2vid.py`` ``main()`` on an image
file and an audio file, with a config and arguments as a user gives them; the frames it hands its video writer.

Runs in the EchoMimic venv (tools/parity/README.md; plus opencv-python-headless and scikit-image):

    python tools/parity/floor.py -- $P/venv-echomimic/bin/python tools/parity/echomimic_from_files.py \
        --echo-src $P/echomimic --out tests/parity/echomimic_files

The files (``--work``, default a temp folder): the tiny random weights of ``tests/parity/echomimic/`` (``--assets``)
written again as the files ``configs/prompts/animation.yaml`` names (denoising_unet.pth, reference_unet.pth,
motion_module.pth, face_locator.pth, whisper_tiny.pt; regenerated from its meta.json and checked against its
digests), the base UNet folder ``from_pretrained`` reads (its config at the tiny shape, the reference weights), that
fixture's ``vae/``; the portrait ``astronaut.png`` (:func:`astronaut_png`: ``skimage.data.astronaut()`` as a PNG of
stored deflate blocks, the same bytes everywhere) and the audio ``tests/parity/audio/song44k.wav`` (0.4 s, 44.1 kHz
stereo). ``animation.yaml`` is the original's with the paths, ``weight_dtype: fp32`` (the half run is item 4's
fixture, tests/parity/echomimic_fp16) and one test case; the command line is ``-W 64 -H 64 --steps 3
--context_frames 8 --context_overlap 2 --seed 420 --device cpu`` (the rest: the script's defaults).

EchoMimic's own code does everything between the files and the frames: cv2.imread, MTCNN's boxes through
select_face, the mask and crop_and_pad, cv2.resize, whisper's load_audio (the ffmpeg program), its features, the
pipeline with its own DDIM, seed and windows, the reference bank's own fp16 cast. Replaced, because it cannot be
reached here:

* facenet_pytorch's MTCNN: :class:`MTCNN`, faces_original.py's stand-in (fixed boxes and probabilities in the
  picture's coordinates; the real model's box on astronaut first); the options main() builds it with are recorded;
* the networks: tiny random ones. main() builds ``FaceLocator(320, block_out_channels=(16, 32, 96, 256))``; the
  tiny file needs ``FaceLocator(32, (8, 8, 16, 16))``, so the name is bound to that shape. The motion modules' 2
  heads: ``inference_v2.yaml`` with ``num_attention_heads: 2`` (the only change to it);
* CUDA: main() moves the VAE, face locator, pipeline and mask to ``"cuda"`` by name; the script is run from a copy
  with those four literals set to ``"cpu"``, and ``register_reference_hooks``' default device is the CPU;
* video files: ``save_videos_grid`` keeps the float tensor ([1, 3, T, H, W], 0..1: the stage ``frames``) instead of
  writing; moviepy (muxing the sound) is a no-op stand-in; ``av`` and ``torchvision`` are stubbed (imported, unused
  once the writer is replaced).

Recorded (stages.safetensors): ``portrait`` (the uint8 RGB picture handed to the pipeline), ``face_mask`` (the
[H, W] mask tensor, 0..1), ``audio.samples`` (load_audio's 16 kHz samples), ``audio.whisper_steps`` and
``audio.chunks`` (audio2feat, feature2chunks), ``initial_latents``, ``final_latents``, ``frames`` ([T, H, W, 3]); then
``bank_fp32.{initial_latents,final_latents,frames}``: main() again with ``ReferenceAttentionControl.update`` keeping the
bank in fp32 (not the user's run: it separates the original's fp16 bank cast, which ours does not make, from the rest).
meta.json: the command, commit, package versions, the inputs' sha256, main()'s argv, the MTCNN options and the sha256
of the picture MTCNN was handed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
import types
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from common import digest, hashed_state_dict, package_versions  # noqa: E402
from faces_original import MTCNN_BOXES, MTCNN_PROBS, StubMTCNN, astronaut  # noqa: E402

AUDIO = os.path.join(ROOT, "tests", "parity", "audio", "song44k.wav")
ASSETS = os.path.join(ROOT, "tests", "parity", "echomimic")
CUDA_LITERALS = ('.to("cuda"', 'device="cuda"')  # main()'s hard-coded device (4 places at a53e9704)
TINY_UNET = dict(  # the tiny shape of tests/parity/echomimic (echomimic_original.py; our tiny-echomimic)
    in_channels=4, out_channels=4, block_out_channels=(32, 64, 64, 64), layers_per_block=1, attention_head_dim=2,
    norm_num_groups=8, flip_sin_to_cos=True, freq_shift=0, cross_attention_dim=384,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
TINY_FACE_LOCATOR = dict(conditioning_embedding_channels=32, conditioning_channels=1, block_out_channels=(8, 8, 16, 16))


def astronaut_png() -> bytes:
    """``skimage.data.astronaut()`` as PNG bytes that do not depend on any zlib build: 8-bit RGB, filter 0, the image
    data in stored (uncompressed) deflate blocks."""
    image = np.ascontiguousarray(astronaut(), dtype=np.uint8)
    h, w = image.shape[:2]
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(h))
    stream = bytearray(b"\x78\x01")
    for start in range(0, len(raw), 65535):
        block = raw[start:start + 65535]
        stream += bytes([start + 65535 >= len(raw)]) + struct.pack("<HH", len(block), 0xFFFF ^ len(block)) + block
    stream += struct.pack(">I", zlib.adler32(raw))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", bytes(stream)) \
        + chunk(b"IEND", b"")


class MTCNN(StubMTCNN):
    """facenet_pytorch.MTCNN as main() builds it: faces_original.py's fixed detections (astronaut's coordinates)."""

    options: dict = {}
    seen: list = []  # (shape, sha256) of each picture detect() was handed

    def __init__(self, **options):
        MTCNN.options = {k: v for k, v in options.items() if k != "device"}

    def detect(self, image):
        image = np.ascontiguousarray(image)
        MTCNN.seen.append((list(image.shape), hashlib.sha256(image.tobytes()).hexdigest()))
        return super().detect(image)


def write_weights(assets: str, work: str) -> dict[str, str]:
    """The .pth files and whisper .pt of ``assets``' meta.json (hashed parameters + its buffers.safetensors), checked
    against its digests; returns {file: path}."""
    import torch
    from safetensors.torch import load_file

    meta = json.load(open(os.path.join(assets, "meta.json")))
    buffers = load_file(os.path.join(assets, "buffers.safetensors"))
    paths = {}
    for name, spec in meta["checkpoint"]["files"].items():
        hashed = hashed_state_dict([(k, shape) for k, shape, src in spec["keys"] if src == "hash"], spec["seed"])
        state = {k: hashed[k] if src == "hash" else buffers[f"{name}:{k}"] for k, _, src in spec["keys"]}
        assert digest(state) == spec["sha256"], f"{name}: the regenerated weights are not {assets}'s"
        paths[name] = os.path.join(work, name)
        torch.save(state, paths[name])
    w = meta["whisper"]
    whisper = hashed_state_dict([tuple(x) for x in w["spec"]], w["seed"])
    assert digest(whisper) == w["sha256"], f"whisper: the regenerated weights are not {assets}'s"
    paths["whisper_tiny.pt"] = os.path.join(work, "whisper_tiny.pt")
    torch.save({"dims": w["dims"], "model_state_dict": whisper}, paths["whisper_tiny.pt"])
    return paths


def sha256_file(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--echo-src", required=True, help="antgroup/echomimic at a53e97040398ddae5d26df0d2054a8f1e9f9df6d")
    p.add_argument("--out", required=True, help="fixture folder")
    p.add_argument("--work", default=None, help="where the user's files are written (default: a temp folder)")
    p.add_argument("--assets", default=ASSETS, help="the fixture whose weights, buffers and vae/ are used")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--seed", type=int, default=420)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--context", type=int, default=8)
    p.add_argument("--overlap", type=int, default=2)
    p.add_argument("--length", type=int, default=10, help="-L: the video frames (10: the 0.4 s the sound covers at 24 fps; "
                   "main()'s default 1200 keeps every whisper chunk, 12 here: docs/parity.md)")
    args = p.parse_args()
    own_argv = list(sys.argv[1:])
    import runpy
    import tempfile

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 2))  # floor.py: 2, then 1
    out = os.path.abspath(args.out)
    work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="echomimic-files-"))
    echo = os.path.abspath(args.echo_src)
    os.makedirs(out, exist_ok=True)
    os.makedirs(work, exist_ok=True)

    from common import patch_checkpoint, stub_packages, stub_xformers

    stub_xformers()
    patch_checkpoint()
    stub_packages("av", "torchvision")
    moviepy, editor = types.ModuleType("moviepy"), types.ModuleType("moviepy.editor")

    class Clip:  # VideoFileClip / AudioFileClip: muxing the sound into the mp4 (no file here)
        def __init__(self, *a, **kw):
            pass

        def set_audio(self, audio):
            return self

        def write_videofile(self, *a, **kw):
            pass

    editor.VideoFileClip = editor.AudioFileClip = Clip
    moviepy.editor = editor
    facenet = types.ModuleType("facenet_pytorch")
    facenet.MTCNN = MTCNN
    sys.modules.update({"moviepy": moviepy, "moviepy.editor": editor, "facenet_pytorch": facenet})
    sys.path.insert(0, echo)

    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    import src.models.face_locator as face_locator
    import src.models.whisper.audio2feature as audio2feature
    import src.models.whisper.whisper.audio as whisper_audio
    import src.pipelines.pipeline_echo_mimic as pipeline
    import src.utils.util as util
    from src.models.mutual_self_attention import ReferenceAttentionControl
    from src.models.unet_2d_condition import UNet2DConditionModel

    # ---- the user's files ----------------------------------------------------------------------------------------
    paths = write_weights(args.assets, work)
    base = os.path.join(work, "sd-image-variations-diffusers")
    unet = UNet2DConditionModel(sample_size=args.size // 8, **TINY_UNET)
    unet.load_state_dict(torch.load(paths["reference_unet.pth"], weights_only=True))
    unet.save_pretrained(os.path.join(base, "unet"), safe_serialization=True)
    infer_cfg = OmegaConf.load(os.path.join(echo, "configs/inference/inference_v2.yaml"))
    infer_cfg.unet_additional_kwargs.motion_module_kwargs.num_attention_heads = 2  # the tiny motion modules
    OmegaConf.save(infer_cfg, os.path.join(work, "inference_v2.yaml"))
    image = os.path.join(work, "astronaut.png")
    with open(image, "wb") as fh:
        fh.write(astronaut_png())
    cfg = OmegaConf.load(os.path.join(echo, "configs/prompts/animation.yaml"))
    cfg.pretrained_base_model_path, cfg.pretrained_vae_path = base, os.path.join(os.path.abspath(args.assets), "vae")
    cfg.audio_model_path = paths["whisper_tiny.pt"]
    for key in ("denoising_unet", "reference_unet", "face_locator", "motion_module"):
        cfg[f"{key}_path"] = paths[f"{key}.pth"]
    cfg.inference_config, cfg.weight_dtype = os.path.join(work, "inference_v2.yaml"), "fp32"
    cfg.test_cases = {image: [os.path.abspath(AUDIO)]}
    config = os.path.join(work, "animation.yaml")
    OmegaConf.save(cfg, config)
    argv = ["--config", config, "-W", str(args.size), "-H", str(args.size), "-L", str(args.length), "--steps", str(args.steps),
            "--seed", str(args.seed),
            "--context_frames", str(args.context), "--context_overlap", str(args.overlap), "--device", "cpu"]

    # ---- what cannot be reached here, and the recording ------------------------------------------------------------
    rec: dict[str, torch.Tensor] = {}
    asked = {}
    run = {"prefix": ""}  # the second run's stages are stored under "bank_fp32."

    def put(name, value):
        if run["prefix"] and name not in ("initial_latents", "final_latents", "frames"):
            return
        rec[run["prefix"] + name] = value
    real_locator = face_locator.FaceLocator

    def tiny_locator(*a, **kw):
        asked["face_locator"] = [list(a), {k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()}]
        return real_locator(**TINY_FACE_LOCATOR)

    face_locator.FaceLocator = tiny_locator
    hooks = ReferenceAttentionControl.register_reference_hooks
    hooks.__defaults__ = tuple(torch.device("cpu") if isinstance(d, torch.device) else d for d in hooks.__defaults__)

    def keep_video(videos, path, rescale=False, n_rows=6, fps=8):
        put("frames", videos[0].permute(1, 2, 3, 0).float().contiguous().clone())  # [T, H, W, 3]
        asked["writer"] = {"rescale": rescale, "n_rows": n_rows, "fps": fps}

    util.save_videos_grid = keep_video
    call, audio2feat, chunks = pipeline.Audio2VideoPipeline.__call__, audio2feature.Audio2Feature.audio2feat, \
        audio2feature.Audio2Feature.feature2chunks
    load_audio, prepare, decode = whisper_audio.load_audio, pipeline.Audio2VideoPipeline.prepare_latents, \
        pipeline.Audio2VideoPipeline.decode_latents

    def call_rec(self, ref_image, audio_path, face_mask_tensor, *a, **kw):
        put("portrait", torch.from_numpy(np.asarray(ref_image).copy()))
        put("face_mask", face_mask_tensor.reshape(face_mask_tensor.shape[-2:]).float().clone())
        asked["pipeline"] = {"audio_path": os.path.relpath(audio_path, ROOT),
                             "args": [x for x in a if isinstance(x, (int, float))],
                             **{k: v for k, v in kw.items() if isinstance(v, (int, float, str))}}
        return call(self, ref_image, audio_path, face_mask_tensor, *a, **kw)

    def load_audio_rec(file, sr=16000):
        samples = load_audio(file, sr)
        put("audio.samples", torch.from_numpy(samples.copy()))
        return samples

    def audio2feat_rec(self, audio_path):
        feat = audio2feat(self, audio_path)
        put("audio.whisper_steps", torch.from_numpy(np.asarray(feat)).float())
        return feat

    def chunks_rec(self, feature_array, fps, **kw):
        out = chunks(self, feature_array=feature_array, fps=fps, **kw)
        put("audio.chunks", torch.from_numpy(np.asarray(out)).float())
        return out

    def prepare_rec(self, *a, **kw):
        latents = prepare(self, *a, **kw)
        put("initial_latents", latents.float().clone())
        return latents

    def decode_rec(self, latents):
        put("final_latents", latents.float().clone())
        return decode(self, latents)

    pipeline.Audio2VideoPipeline.__call__, pipeline.Audio2VideoPipeline.prepare_latents = call_rec, prepare_rec
    pipeline.Audio2VideoPipeline.decode_latents = decode_rec
    audio2feature.Audio2Feature.audio2feat, audio2feature.Audio2Feature.feature2chunks = audio2feat_rec, chunks_rec
    whisper_audio.load_audio = load_audio_rec

    source = open(os.path.join(echo, "infer_audio2vid.py"), encoding="utf-8").read()
    counts = {lit: source.count(lit) for lit in CUDA_LITERALS}
    assert counts == {'.to("cuda"': 2, 'device="cuda"': 2}, f"infer_audio2vid.py changed: {counts}"
    for lit in CUDA_LITERALS:
        source = source.replace(lit, lit.replace("cuda", "cpu"))
    script = os.path.join(work, "infer_audio2vid_cpu.py")
    with open(script, "w", encoding="utf-8") as fh:
        fh.write(source)

    # ---- the user's run: main() ------------------------------------------------------------------------------------
    cwd = os.getcwd()
    os.chdir(work)  # main() writes output/<date>/... relative to the working folder (nothing is written there now)
    sys.argv = ["infer_audio2vid.py", *argv]
    try:
        runpy.run_path(script, run_name="__main__")
        # Not the user's run: the same with the reference bank kept in fp32 (update() casts it to fp16 even in an fp32
        # run; ours keeps the model's dtype), so the test can tell that cast's effect from ours (docs/parity.md).
        update = ReferenceAttentionControl.update
        ReferenceAttentionControl.update = lambda self, writer, do_classifier_free_guidance=False, dtype=None: update(
            self, writer, do_classifier_free_guidance=do_classifier_free_guidance, dtype=torch.float32)
        run["prefix"] = "bank_fp32."
        runpy.run_path(script, run_name="__main__")
    finally:
        os.chdir(cwd)
    assert "frames" in rec and "bank_fp32.frames" in rec, "main() handed no video to save_videos_grid"
    assert MTCNN.seen and MTCNN.seen[0][0][:2] == [512, 512], MTCNN.seen
    bad = [k for k, v in rec.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    assert not bad, f"non-finite values in {bad}"
    save_file({k: v.contiguous() for k, v in sorted(rec.items())}, os.path.join(out, "stages.safetensors"))

    import subprocess

    commit = subprocess.run(["git", "-C", echo, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = {
        "original": {"repo": "https://github.com/antgroup/echomimic", "commit": commit,
                     "entry_point": "infer_audio2vid.py main() (a copy with the 4 'cuda' device literals set to 'cpu')"},
        "command": "python tools/parity/echomimic_from_files.py " + " ".join(own_argv),
        "main_argv": ["infer_audio2vid.py", *[os.path.basename(a) if os.path.isabs(a) else a for a in argv]],
        "config": {k: (os.path.basename(str(v)) if isinstance(v, str) else v) for k, v in OmegaConf.to_container(cfg).items()
                   if k != "test_cases"},
        "inputs": {"image": {"file": "astronaut.png", "make": "tools/parity/echomimic_from_files.py astronaut_png()",
                             "sha256": sha256_file(image)},
                   "audio": {"file": "tests/parity/audio/song44k.wav", "sha256": sha256_file(AUDIO)}},
        "weights": {"assets": os.path.relpath(os.path.abspath(args.assets), ROOT),
                    "files": {k: sha256_file(v) for k, v in paths.items()}},
        "mtcnn": {"options": {k: list(v) if isinstance(v, tuple) else v for k, v in MTCNN.options.items()},
                  "boxes": MTCNN_BOXES.tolist(), "probs": MTCNN_PROBS.tolist(), "pictures_seen": MTCNN.seen},
        "replaced": asked,
        "packages": package_versions("torch", "diffusers", "transformers", "numpy", "opencv-python-headless", "pillow",
                                     "ffmpeg-python", "scikit-image", "omegaconf", "einops"),
        "ffmpeg": subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0],
        "threads": torch.get_num_threads(),
        "stages": {k: list(v.shape) for k, v in sorted(rec.items())},
    }
    with open(os.path.join(out, "meta.json"), "w") as fh:
        json.dump(meta, fh, indent=1)
    print(f"wrote {len(rec)} stages to {out}")


if __name__ == "__main__":
    main()

"""MEMO from files, the way a user runs it (issue 24 item 5): ``inference.py`` from an image file and a song file.

Runs in MEMO's venv (tools/parity/README.md, "MEMO from files"), never in ours:

    python tools/parity/floor.py -- $P/venv-memo/bin/python tools/parity/memo_from_files.py --memo-src $P/memo \
        --separator-024 $P/audio-separator-0.24.1 --extra-site $P/memo-files-site --work $P/memo-files-work \
        --out tests/parity/memo_files

What runs is MEMO's own entry point, ``inference.py`` ``main()``, with the arguments and config a user gives it
(``configs/inference.yaml`` with paths, resolution 128, 4 frames per clip with 4 past frames, 3 steps, fp32), on:

* the picture FILE ``portrait.png`` (:func:`portrait_png`, ``--picture``): ``astronaut`` (the default),
  ``skimage.data.astronaut()`` itself, 512 px square (MEMO resizes the whole picture to 128 and embeds the face from the
  512 px picture), or ``face128``, a 256 px square around the face averaged 2 x 2 to the model size; written by a
  stored-block PNG writer, so the test makes the same bytes again;
* the song FILE ``tests/parity/audio/song44k.wav`` (0.4 s of 44.1 kHz stereo: a voice, a chord and noise; 12 frames at
  30 fps: 3 clips);
* a MEMO folder written as the memoavatar/memo download has it (:func:`write_memo_folder`): the four diffusers folders
  at the tiny-memo size with memo_pipeline.py's weights, ``misc/vocal_separator/Kim_Vocal_2.onnx`` (the stand-in of
  tests/parity/audio, with the JSON files audio-separator would download), ``misc/audio_emotion_classifier/`` and
  ``emotion2vec_plus_large/`` (funasr's local layout: configuration.json, config.yaml, model.pt) with the tiny weights
  of tests/parity/emotion2vec; the tiny VAE and wav2vec2 of tests/parity/hallo.

MEMO's own code runs every step: torchvision's resize of the picture, the ffmpeg program's resampling, audio-separator
0.24.1 (from ``--separator-024``, onnxruntime) on the stand-in model, librosa, wav2vec2, funasr's emotion2vec and MEMO's
classifier, the clip loop, its seed (``--seed 42``). Injected, because it cannot be reached here:

* insightface's ``FaceAnalysis``: :func:`tiny_face_analysis`, faces_original.StubFaceAnalysis's fixed boxes in this
  picture's coordinates (:func:`face_boxes`) and embedding (the first :data:`ID_DIM` values: the tiny identity projection);
* torchaudio (no wheel for torch 2.13): ``torchaudio.load`` reads the wav with soundfile (float32, [channels, n]);
* the Hugging Face hub: ``HF_HUB_OFFLINE`` with a local cache holding ``memoavatar/memo``'s emotion classifier (MEMO
  names that repository in code); xformers (CPU): the memory-guided layers get ``MemoryLinearAttnProcessor`` as
  enabling it gives them; the projections are built at the tiny size (their published config.json is empty);
* ``tensor_to_video`` keeps the float tensor it is handed (no mp4 written).

Writes ``stages.safetensors`` (the preprocessed pixels, face embedding, separated stem and 16 kHz vocals, wav2vec2
windows, emotion labels, each clip's initial noise and the frames handed to the video writer, per clip) and
``meta.json`` (command, commits, package versions, input sha256s, settings, weight key/shape lists and digests).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

SIZE, FRAMES, PAST, STEPS, FPS, SEED = 128, 4, 4, 3, 30, 42
ID_DIM = 16  # the tiny identity projection's input (tiny-memo: 16 -> 2 tokens of 32)
# the stand-in detections per picture (source pixels): face128's face box is centred with a side of half the picture, so
# our face crop (twice the box) is the whole picture; astronaut's are faces_original.FACE_BOXES
BOXES = np.array([[36.0, 32.0, 92.0, 96.0], [100.0, 104.0, 116.0, 124.0]], np.float32)  # the face, a smaller one
AUDIO = ROOT / "tests" / "parity" / "audio" / "song44k.wav"
STANDIN = ROOT / "tests" / "parity" / "audio" / "standin_Kim_Vocal_2.onnx"
EMOTION_FIXTURE = ROOT / "tests" / "parity" / "emotion2vec"
ASSETS = ROOT / "tests" / "parity" / "hallo"  # the tiny VAE and wav2vec2
PARTS = ("reference_net", "diffusion_net", "image_proj", "audio_proj")


def portrait_pixels(picture: str = "face128") -> np.ndarray:
    """``face128``: uint8 [128, 128, 3], astronaut's rows 0..255, columns 98..353 (the face centred), 2 x 2 means
    rounded; ``astronaut``: the whole picture, [512, 512, 3]."""
    from skimage.data import astronaut

    if picture == "astronaut":
        return astronaut()
    square = astronaut()[0:256, 98:354].astype(np.uint16)
    return ((square[0::2, 0::2] + square[1::2, 0::2] + square[0::2, 1::2] + square[1::2, 1::2] + 2) // 4).astype(np.uint8)


EMOTION_RATE, EMOTION_SECONDS = 24000, 3.2  # the stereo emotion file (:func:`stereo_emotion_wav`)


def stereo_emotion_wav(path: Path) -> Path:
    """A 16-bit stereo wav at 24 kHz, 3.2 s, whose channels differ: closed-form speech on the left
    (common.synthetic_speech), a gliding square-ish tone with bursts on the right. No random generator, so a test makes
    the same bytes again (meta.json records their sha256). With the tiny emotion classifier its first channel and its
    channel mix get different labels: what tells MEMO's emotion input (the first channel) from the mix."""
    import wave

    from common import synthetic_speech

    n = int(round(EMOTION_SECONDS * EMOTION_RATE))
    t = np.arange(n, dtype=np.float64) / EMOTION_RATE
    left = synthetic_speech(n, EMOTION_RATE).astype(np.float64)
    right = (0.5 * np.tanh(4 * np.sin(2 * np.pi * (300 + 200 * t) * t))
             + 0.3 * np.sin(2 * np.pi * 2500 * t) * (np.sin(2 * np.pi * 1.3 * t) > 0.6))
    samples = np.clip(np.round(np.stack([left, right], axis=1) * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as fh:
        fh.setnchannels(2)
        fh.setsampwidth(2)
        fh.setframerate(EMOTION_RATE)
        fh.writeframes(samples.tobytes())
    return Path(path)


def portrait_png(pixels: np.ndarray | None = None) -> bytes:
    """An RGB PNG of ``pixels`` with stored (uncompressed) zlib blocks: the same bytes from any zlib."""
    pixels = portrait_pixels() if pixels is None else pixels
    h, w = pixels.shape[:2]
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 0)) + chunk(b"IEND", b""))


def face_boxes(picture: str = "face128") -> np.ndarray:
    """The stand-in detector's boxes for ``picture`` (x0, y0, x1, y1 in its pixels; the face first)."""
    from faces_original import FACE_BOXES

    return FACE_BOXES.copy() if picture == "astronaut" else BOXES.copy()


def tiny_face_analysis(picture: str = "face128"):
    """faces_original.StubFaceAnalysis with :func:`face_boxes` and the first ID_DIM values of its embedding."""
    from faces_original import StubFaceAnalysis, stub_embedding

    boxes = face_boxes(picture)

    class TinyFaceAnalysis(StubFaceAnalysis):
        models = {"detection": None, "recognition": None}

        def get(self, image_bgr):
            return [{"bbox": b.copy(), "embedding": stub_embedding(image_bgr, b)[:ID_DIM]} for b in boxes[::-1]]

    return TinyFaceAnalysis


def emotion_weights() -> dict:
    """The tiny emotion2vec and MEMO classifier of tests/parity/emotion2vec (regenerated from its meta.json)."""
    from common import digest, hashed_state_dict
    from safetensors.torch import load_file

    meta = json.loads((EMOTION_FIXTURE / "meta.json").read_text())["a"]
    encoder = hashed_state_dict([(k, s) for k, s in meta["encoder"]["spec"]], meta["encoder"]["seed"])
    cls = meta["classifier"]
    classifier = hashed_state_dict([(k, s) for k, s in cls["spec"]], cls["seed"])
    classifier["layers.fc5.bias"] = load_file(str(EMOTION_FIXTURE / "emotion.safetensors"))["a.classifier.fc5.bias"]
    assert digest(encoder) == meta["encoder"]["digest"] and digest(classifier) == cls["digest"]
    return {"model_conf": meta["model_conf"], "encoder": encoder, "classifier": classifier, "classifier_config": cls["config"]}


def write_memo_folder(folder: Path, weights: dict, configs: dict | None = None) -> None:
    """A MEMO folder as the download has it: the four parts (``configs``: their config.json; None: ``{}`` as published
    for every part, which is what our loader reads), the vocal separator, the emotion classifier and emotion2vec."""
    import shutil

    import torch
    import yaml
    from common import hashed_state_dict
    from safetensors.torch import save_file

    for sub in PARTS:
        (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / sub / "config.json").write_text(json.dumps(configs[sub] if configs else {}, indent=1))
        state = hashed_state_dict([(k, s) for k, s in weights[sub]["spec"]], weights[sub]["seed"])
        save_file(state, str(folder / sub / "diffusion_pytorch_model.safetensors"))
    separator = folder / "misc" / "vocal_separator"
    separator.mkdir(parents=True, exist_ok=True)
    shutil.copy(STANDIN, separator / "Kim_Vocal_2.onnx")
    emotion = emotion_weights()
    classifier = folder / "misc" / "audio_emotion_classifier"
    classifier.mkdir(parents=True, exist_ok=True)
    (classifier / "config.json").write_text(json.dumps(emotion["classifier_config"]))
    save_file(emotion["classifier"], str(classifier / "diffusion_pytorch_model.safetensors"))
    encoder = folder / "emotion2vec_plus_large"
    encoder.mkdir(parents=True, exist_ok=True)
    (encoder / "config.yaml").write_text(yaml.safe_dump({"model": "Emotion2vec", "model_conf": emotion["model_conf"]}))
    # ModelScope's layout of emotion2vec_plus_large, which funasr's download_model reads from a local folder
    metas = {"init_param": "model.pt", "config": "config.yaml"}
    (encoder / "configuration.json").write_text(json.dumps({"framework": "pytorch", "task": "emotion-recognition",
                                                            "file_path_metas": metas}))
    torch.save({"model": emotion["encoder"]}, encoder / "model.pt")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--memo-src", required=True, help="checkout of memoavatar/memo at the pinned commit")
    p.add_argument("--separator-024", required=True, help="audio-separator 0.24.1's source folder (MEMO's pin)")
    p.add_argument("--extra-site", required=True, help="folder with onnxruntime, onnx, onnx2torch, opencv, torchvision, "
                   "scikit-image, pydub (pip install --target; README)")
    p.add_argument("--work", required=True, help="scratch folder (the MEMO folder, the files, MEMO's output folder)")
    p.add_argument("--out", required=True, help="fixture folder (tests/parity/memo_files)")
    p.add_argument("--picture", choices=("astronaut", "face128"), default="astronaut", help="the picture file (see above)")
    p.add_argument("--audio", default=str(AUDIO), help="the song file (default tests/parity/audio/song44k.wav)")
    args = p.parse_args()
    work, out = Path(args.work).resolve(), Path(args.out)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    os.environ["HF_HOME"] = str(work / "hf")  # before huggingface_hub is imported
    os.environ["HF_HUB_OFFLINE"] = "1"
    sys.path.insert(0, args.separator_024)
    sys.path.append(args.extra_site)
    sys.path.insert(0, args.memo_src)

    import torch
    from common import digest, hashed_state_dict, package_versions, stub_packages, stub_xformers
    from faces_original import _torchvision_without_ops

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    _torchvision_without_ops()  # torchvision's C++ ops do not load with this torch; its transforms need none
    stub_xformers()
    stub_packages("insightface", "moviepy", "torchaudio")  # FaceAnalysis, tensor_to_video, torchaudio.load: injected below
    import soundfile
    import torchaudio  # the stub: no wheel for torch 2.13; load() reads a wav as its soundfile backend does
    import types

    torchaudio.load = lambda path: (torch.from_numpy(soundfile.read(path, dtype="float32", always_2d=True)[0].T.copy()),
                                    soundfile.info(path).samplerate)

    import memo_pipeline
    from audio_original import read_stem_file, separator_folder

    memo_pipeline.SETTINGS.update(size=SIZE, frames_per_clip=FRAMES, past_frames=PAST, steps=STEPS, fps=FPS, seed=SEED)
    w2v = json.loads((ASSETS / "wav2vec2" / "config.json").read_text())
    configs = memo_pipeline._configs(w2v["num_hidden_layers"], w2v["hidden_size"])

    from diffusers import FlowMatchEulerDiscreteScheduler
    from memo.models.audio_proj import AudioProjModel
    from memo.models.image_proj import ImageProjModel
    from memo.models.motion_module import MemoryLinearAttention
    from memo.models.unet_2d_condition import UNet2DConditionModel
    from memo.models.unet_3d import UNet3DConditionModel
    from memo.pipelines.video_pipeline import VideoPipeline
    from memo.utils import audio_utils, vision_utils
    from omegaconf import OmegaConf
    from safetensors.torch import load_file, save_file

    # ---- the user's files ------------------------------------------------------------------------------------------
    classes = dict(zip(PARTS, (UNet2DConditionModel, UNet3DConditionModel, ImageProjModel, AudioProjModel)))
    weights = {}
    for k, sub in enumerate(PARTS):  # memo_pipeline.run_pipeline's weights: seed * 10 + k with its default seed 11
        model = classes[sub].from_config({key: v for key, v in configs[sub].items() if key != "_class_name"})
        spec = [(name, list(t.shape)) for name, t in model.state_dict().items()]
        weights[sub] = {"seed": 110 + k, "spec": spec, "digest": digest(hashed_state_dict(spec, 110 + k))}
    memo_dir = work / "memo"
    write_memo_folder(memo_dir, weights, configs)
    folder = separator_folder(work / "sep", STANDIN)  # audio-separator's JSON files (it would download them)
    for name in ("mdx_model_data.json", "vr_model_data.json", "download_checks.json"):
        shutil.copy(folder / name, memo_dir / "misc" / "vocal_separator" / name)
    face_models = memo_dir / "misc" / "face_analysis" / "models"  # inference.py checks that they exist (> 1 MB)
    face_models.mkdir(parents=True)
    for name in ("1k3d68.onnx", "2d106det.onnx", "face_landmarker_v2_with_blendshapes.task", "genderage.onnx",
                 "glintr100.onnx", "scrfd_10g_bnkps.onnx"):
        with open(face_models / name, "wb") as fh:
            fh.truncate(2 << 20)
    snapshot = work / "hf" / "hub" / "models--memoavatar--memo" / "snapshots" / ("0" * 40)
    (snapshot / "misc").mkdir(parents=True)
    (snapshot / "misc" / "audio_emotion_classifier").symlink_to(memo_dir / "misc" / "audio_emotion_classifier")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    image = work / "portrait.png"
    image.write_bytes(portrait_png(portrait_pixels(args.picture)))
    audio = work / Path(args.audio).name
    shutil.copy(args.audio, audio)

    cfg = OmegaConf.load(os.path.join(args.memo_src, "configs", "inference.yaml"))
    cfg.merge_with({"resolution": SIZE, "num_generated_frames_per_clip": FRAMES, "num_init_past_frames": PAST,
                    "num_past_frames": PAST, "inference_steps": STEPS, "weight_dtype": "fp32",
                    "enable_xformers_memory_efficient_attention": False, "model_name_or_path": str(memo_dir),
                    "vae": str(ASSETS / "vae"), "wav2vec": str(ASSETS / "wav2vec2"),
                    "emotion2vec": str(memo_dir / "emotion2vec_plus_large"), "misc_model_dir": str(memo_dir)})
    cfg_path = work / "inference.yaml"
    OmegaConf.save(cfg, cfg_path)

    # ---- MEMO's inference.py, with only what cannot be reached here injected --------------------------------------
    import importlib.util

    spec = importlib.util.spec_from_file_location("memo_inference_script", os.path.join(args.memo_src, "inference.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    vision_utils.FaceAnalysis = tiny_face_analysis(args.picture)
    rec: dict[str, torch.Tensor] = {}

    def put(name, t):
        assert name not in rec, f"stage {name} recorded twice"
        rec[name] = torch.as_tensor(np.asarray(t) if not isinstance(t, torch.Tensor) else t).detach().float().clone().contiguous()

    def preprocess_image(**kw):
        pixels, emb = vision_utils.preprocess_image(**kw)
        put("portrait.pixels", pixels[0])
        put("portrait.face_emb", emb[0])
        return pixels, emb

    script.preprocess_image = preprocess_image
    librosa = audio_utils.librosa

    def librosa_load(path, sr):
        samples, rate = librosa.load(path, sr=sr)
        put("audio.vocals_16k", samples)  # what wav2vec2's feature extractor receives
        return samples, rate

    audio_utils.librosa = types.SimpleNamespace(load=librosa_load)

    def preprocess_audio(**kw):
        emb, length = audio_utils.preprocess_audio(**kw)
        put("audio.windows", emb)
        return emb, length

    script.preprocess_audio = preprocess_audio

    def emotion_labels(**kw):
        labels, classes_ = audio_utils.extract_audio_emotion_labels(**kw)
        put("audio.emotion_labels", labels)
        return labels, classes_

    script.extract_audio_emotion_labels = emotion_labels
    video_out = []
    script.tensor_to_video = lambda tensor, path, audio_path, fps: video_out.append(tensor.clone())

    original_from_pretrained = UNet3DConditionModel.from_pretrained.__func__

    def unet3d_from_pretrained(*a, **kw):
        model = original_from_pretrained(UNet3DConditionModel, *a, **kw)
        for m in model.modules():  # what enable_xformers_memory_efficient_attention does to these layers
            if isinstance(m, MemoryLinearAttention):
                m.set_use_memory_efficient_attention_xformers(False)
        return model

    script.UNet3DConditionModel = types.SimpleNamespace(from_pretrained=unet3d_from_pretrained)

    def tiny_projection(cls, sub):  # the published config.json is empty (class defaults = full size)
        def load(path, subfolder, use_safetensors=True):
            model = cls(**{k: v for k, v in configs[sub].items() if k != "_class_name"})
            model.load_state_dict(load_file(os.path.join(path, subfolder, "diffusion_pytorch_model.safetensors")), strict=True)
            return model

        return types.SimpleNamespace(from_pretrained=load)

    script.ImageProjModel = tiny_projection(ImageProjModel, "image_proj")
    script.AudioProjModel = tiny_projection(AudioProjModel, "audio_proj")
    clip = {"i": -1}
    original_prepare = VideoPipeline.prepare_latents

    def prepare_latents(self, *a, **kw):
        latents = original_prepare(self, *a, **kw)
        clip["i"] += 1
        put(f"clip{clip['i']}.noise", latents[0])
        return latents

    VideoPipeline.prepare_latents = prepare_latents

    argv = sys.argv
    sys.argv = ["inference.py", "--config", str(cfg_path), "--input_image", str(image), "--input_audio", str(audio),
                "--output_dir", str(work / "outputs"), "--seed", str(SEED)]
    try:
        with torch.no_grad():
            script.main()
    finally:
        sys.argv = argv
    assert len(video_out) == 1, len(video_out)
    video = video_out[0].transpose(0, 1)  # [frames, 3, H, W] in [0, 1], as tensor_to_video got it
    for c in range(clip["i"] + 1):
        put(f"clip{c}.frames", video[c * FRAMES:(c + 1) * FRAMES])
    stems = [s for s in (work / "outputs" / "audio_preprocess").iterdir() if "(Vocals)" in s.name and not s.stem.endswith("-16k")]
    assert len(stems) == 1, stems
    put("audio.vocals_stem", read_stem_file(stems[0]))
    save_file(rec, str(out / "stages.safetensors"))

    import subprocess

    def commit(src):
        return subprocess.run(["git", "-C", src, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()

    ffmpeg = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.splitlines()[0]
    meta = {
        "command": ["tools/parity/memo_from_files.py", *sys.argv[1:]],
        "original": {"repo": "https://github.com/memoavatar/memo", "commit": commit(args.memo_src)},
        "audio_separator": {"version": "0.24.1", "source": args.separator_024},
        "packages": package_versions("torch", "diffusers", "transformers", "funasr", "librosa", "soundfile", "soxr", "numpy",
                                     "onnxruntime", "onnx", "onnx2torch", "opencv-python-headless", "torchvision", "pillow",
                                     "scikit-image", "pydub", "omegaconf", "huggingface-hub"),
        "ffmpeg": ffmpeg,
        "inputs": {"portrait.png": sha256(image),
                   "portrait.pixels": hashlib.sha256(portrait_pixels(args.picture).tobytes()).hexdigest(),
                   Path(args.audio).name: sha256(audio), "standin_Kim_Vocal_2.onnx": sha256(STANDIN)},
        "argv": ["--config", "inference.yaml", "--input_image", "portrait.png", "--input_audio", audio.name,
                 "--output_dir", "outputs", "--seed", str(SEED)],
        "config": {k: v for k, v in OmegaConf.to_container(cfg).items()},
        "settings": {"size": SIZE, "frames_per_clip": FRAMES, "past_frames": PAST, "steps": STEPS, "fps": FPS, "seed": SEED,
                     "cfg": float(cfg.cfg_scale), "weight_dtype": "fp32", "clips": clip["i"] + 1, "frames": int(video.shape[0])},
        "picture": args.picture, "face_boxes": face_boxes(args.picture).tolist(), "id_dim": ID_DIM,
        "configs": configs, "weights": {"generator": "common.hashed_state_dict", **weights},
        "scheduler": {k: v for k, v in FlowMatchEulerDiscreteScheduler().config.items() if not k.startswith("_")},
        "injected": ["insightface FaceAnalysis (TinyFaceAnalysis: fixed boxes, faces_original.stub_embedding[:16])",
                     "torchaudio.load (soundfile)", "HF_HUB_OFFLINE + local cache of memoavatar/memo's classifier",
                     "MemoryLinearAttnProcessor as enabling xformers sets it (xformers off on the CPU)",
                     "ImageProjModel / AudioProjModel built at the tiny size", "tensor_to_video keeps the tensor"],
        "stages": {k: list(v.shape) for k, v in rec.items()},
        "threads": os.environ.get("OMP_NUM_THREADS"),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {len(rec)} stages to {out}: {video.shape[0]} frames, emotion {rec['audio.emotion_labels'].unique().tolist()}")


if __name__ == "__main__":
    main()

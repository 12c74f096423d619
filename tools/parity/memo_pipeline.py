"""Part 3 of tools/parity/memo_original.py: MEMO's own ``inference.py`` on tiny models, every stage recorded.

Imported by memo_original.py inside MEMO's venv (never by ``emo_model`` or the tests). See memo_original.py's
docstring for what is injected and why.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import os
import shutil
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F
from common import digest, hashed_state_dict, stub_packages, write_hashed_safetensors
from safetensors.torch import load_file, save_file

SETTINGS = {"size": 64, "frames_per_clip": 4, "past_frames": 4, "clips": 2, "steps": 3, "cfg": 3.5, "fps": 30,
            "sample_rate": 16000, "audio_frames": 6.4, "seed": 42, "weight_dtype": "fp32", "full": False}
WIDTHS, HEADS, GROUPS, CROSS, LAYERS = [32, 64, 64, 64], 2, 8, 32, 1
ID_DIM, ID_TOKENS, AUDIO_TOKENS, AUDIO_HIDDEN = 16, 2, 4, 32
EMOTION_CLASSES = 9
# --full: MEMO's published shapes (memoavatar/memo: SD1.5 UNets, 768-wide cross attention and audio tokens, motion
# modules with 8 heads; image_proj / audio_proj are their classes' defaults because their config.json is empty)
FULL_SIZES = {"WIDTHS": [320, 640, 1280, 1280], "HEADS": 8, "GROUPS": 32, "CROSS": 768, "LAYERS": 2,
              "ID_DIM": 512, "ID_TOKENS": 4, "AUDIO_TOKENS": 32, "AUDIO_HIDDEN": 512}


def _configs(audio_layers: int, audio_dim: int) -> dict[str, dict]:
    size = 64 if SETTINGS["full"] else SETTINGS["size"] // 8  # full: SD1.5's sample_size (not used by MEMO's run)
    unet = {
        "act_fn": "silu", "attention_head_dim": HEADS, "block_out_channels": WIDTHS, "center_input_sample": False,
        "cross_attention_dim": CROSS, "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
        "layers_per_block": LAYERS, "mid_block_scale_factor": 1, "norm_eps": 1e-5, "norm_num_groups": GROUPS,
        "out_channels": 4, "sample_size": size,
    }
    reference = dict(unet, _class_name="UNet2DConditionModel",
                     down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                     up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
    diffusion = dict(unet, _class_name="UNet3DConditionModel",
                     down_block_types=["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"],
                     up_block_types=["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3, mid_block_type="UNetMidBlock3DCrossAttn",
                     use_inflated_groupnorm=True, audio_attention_dim=CROSS, emo_drop_rate=0.05,
                     motion_module_resolutions=[1, 2, 4, 8],
                     motion_module_kwargs={"num_attention_heads": HEADS, "num_transformer_block": 1,
                                           "attention_block_types": ["Temporal_Self", "Temporal_Self"],
                                           "temporal_position_encoding": True, "temporal_position_encoding_max_len": 32})
    image_proj = {"_class_name": "ImageProjModel", "cross_attention_dim": CROSS, "clip_embeddings_dim": ID_DIM,
                  "clip_extra_context_tokens": ID_TOKENS}
    audio_proj = {"_class_name": "AudioProjModel", "seq_len": 5, "blocks": audio_layers, "channels": audio_dim,
                  "intermediate_dim": AUDIO_HIDDEN, "output_dim": CROSS, "context_tokens": AUDIO_TOKENS}
    return {"reference_net": reference, "diffusion_net": diffusion, "image_proj": image_proj, "audio_proj": audio_proj}


def _speech(samples: int, seed: int) -> np.ndarray:
    """A closed-form voiced waveform (no random generator), as the Hallo harness's."""
    t = np.arange(samples) / SETTINGS["sample_rate"]
    f0 = 120 + 30 * np.sin(2 * np.pi * 3 * t + seed)
    phase = 2 * np.pi * np.cumsum(f0) / SETTINGS["sample_rate"]
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    return (0.3 * env * voice).astype(np.float32)


def _shown(path: str) -> str:
    return os.path.abspath(path)


def _write_full_size_folder(folder: str, cls, config: dict, seed: int) -> dict:
    """One of MEMO's diffusers folders at full size without holding the model twice: the key/shape list of a model
    built on the meta device, the hashed values streamed into the safetensors file (common.write_hashed_safetensors).
    config.json: the UNets' config as save_config writes it; the projections' as published (empty: class defaults).
    Reused when the folder already holds the same key/shape list, seed and digest (written by an earlier run)."""
    with torch.device("meta"):
        model = cls.from_config({k: v for k, v in config.items() if k != "_class_name"})
    spec = [[name, list(t.shape)] for name, t in model.state_dict().items()]  # as json.load gives it back
    stamp = os.path.join(os.path.dirname(os.path.dirname(folder)), "hashed", os.path.basename(folder) + ".json")
    if os.path.isfile(stamp):
        with open(stamp) as fh:
            known = json.load(fh)
        if known["spec"] == spec and known["seed"] == seed and os.path.isfile(os.path.join(folder, "diffusion_pytorch_model.safetensors")):
            print(f"reusing {folder} (digest {known['digest'][:12]})", flush=True)
            return known
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    if cls.__name__.endswith("ConditionModel"):
        model.save_config(folder)
    else:
        with open(os.path.join(folder, "config.json"), "w") as fh:
            fh.write("{}")
    del model
    record = {"seed": seed, "spec": spec,
              "digest": write_hashed_safetensors(os.path.join(folder, "diffusion_pytorch_model.safetensors"), spec, seed)}
    os.makedirs(os.path.dirname(stamp), exist_ok=True)
    with open(stamp, "w") as fh:
        json.dump(record, fh)
    print(f"wrote {folder} ({len(spec)} tensors)", flush=True)
    return record


def run_pipeline(memo_src: str, work: str, hallo_fixture: str, out: str, seed: int, full: bool = False,
                 size: int | None = None, frames: int | None = None, past: int | None = None, steps: int | None = None,
                 clips: int | None = None, cfg: float | None = None, dtype: str = "fp32") -> dict:
    """``full``: MEMO's real shapes (``FULL_SIZES``); the four folders are then written to ``out/checkpoint`` (kept: the
    full-size test loads them; rewritten only when their key/shape lists, seeds or digests differ) and the projections
    are built by MEMO's own ``from_pretrained`` from an empty config.json (class defaults), as published.
    ``size``: pixels (height = width; default 64); ``frames`` per clip, ``past`` frames, ``steps``, ``clips`` (default 4, 4,
    3, 2; the audio is then 1.6 frames short of whole clips, the frame labels alternate clip 0's / clip 1's 4-frame
    patterns), ``cfg`` (default 3.5, MEMO's); ``dtype``: MEMO's ``weight_dtype`` (its inference.yaml: bf16; default fp32).
    Every stage is stored as float32 (a bf16 / fp16 value converts exactly)."""
    global WIDTHS, HEADS, GROUPS, CROSS, LAYERS, ID_DIM, ID_TOKENS, AUDIO_TOKENS, AUDIO_HIDDEN
    SETTINGS["full"] = full
    for key, value in (("size", size), ("frames_per_clip", frames), ("past_frames", past), ("steps", steps), ("clips", clips),
                       ("cfg", cfg)):
        if value:
            SETTINGS[key] = value
    SETTINGS["weight_dtype"] = dtype
    SETTINGS["audio_frames"] = round(SETTINGS["clips"] * SETTINGS["frames_per_clip"] - 1.6, 6)
    if full:
        WIDTHS, HEADS, GROUPS, CROSS, LAYERS = (FULL_SIZES[k] for k in ("WIDTHS", "HEADS", "GROUPS", "CROSS", "LAYERS"))
        ID_DIM, ID_TOKENS, AUDIO_TOKENS, AUDIO_HIDDEN = (FULL_SIZES[k] for k in ("ID_DIM", "ID_TOKENS", "AUDIO_TOKENS", "AUDIO_HIDDEN"))
    stub_packages("audio_separator", "torchaudio", "funasr", "cv2", "insightface", "moviepy", "torchvision", "librosa")
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from memo.models.audio_proj import AudioProjModel
    from memo.models.image_proj import ImageProjModel
    from memo.models.motion_module import MemoryLinearAttention
    from memo.models.unet_2d_condition import UNet2DConditionModel
    from memo.models.unet_3d import UNet3DConditionModel
    from memo.pipelines.video_pipeline import VideoPipeline
    from memo.utils import audio_utils
    from omegaconf import OmegaConf

    S, f, n = SETTINGS["size"], SETTINGS["frames_per_clip"], SETTINGS["past_frames"]
    SR, FPS = SETTINGS["sample_rate"], SETTINGS["fps"]
    vae_dir, w2v_dir = os.path.join(hallo_fixture, "vae"), os.path.join(hallo_fixture, "wav2vec2")
    with open(os.path.join(w2v_dir, "config.json")) as fh:
        w2v_cfg = json.load(fh)
    configs = _configs(w2v_cfg["num_hidden_layers"], w2v_cfg["hidden_size"])

    # ---- the four folders, hash-generated weights ------------------------------------------------------------
    shutil.rmtree(work, ignore_errors=True)
    ckpt = os.path.join(out if full else work, "checkpoint")
    classes = {"reference_net": UNet2DConditionModel, "diffusion_net": UNet3DConditionModel,
               "image_proj": ImageProjModel, "audio_proj": AudioProjModel}
    weights = {}
    for k, (sub, cls) in enumerate(classes.items()):
        if full:
            if sub in ("image_proj", "audio_proj"):  # MEMO loads them from an empty config.json: the class defaults
                defaults = {a: v.default for a, v in inspect.signature(cls.__init__).parameters.items() if a != "self"}
                assert {a: v for a, v in configs[sub].items() if a != "_class_name"} == defaults, (sub, defaults)
            weights[sub] = _write_full_size_folder(os.path.join(ckpt, sub), cls, configs[sub], seed * 10 + k)
            continue
        model = cls.from_config({key: v for key, v in configs[sub].items() if key != "_class_name"})
        spec = [(name, list(t.shape)) for name, t in model.state_dict().items()]
        state = hashed_state_dict(spec, seed * 10 + k)
        model.load_state_dict(state, strict=True)
        model.save_pretrained(os.path.join(ckpt, sub), safe_serialization=True)
        if sub in ("image_proj", "audio_proj"):  # unregistered __init__: save_pretrained wrote no arguments
            with open(os.path.join(ckpt, sub, "config.json"), "w") as fh:
                json.dump(configs[sub], fh, indent=1)
        weights[sub] = {"seed": seed * 10 + k, "digest": digest(state), "spec": spec}
    # what from_pretrained must find in place of the hub's misc/ downloads (never fetched: see os.system below)
    face_models = os.path.join(work, "misc", "misc", "face_analysis", "models")
    os.makedirs(face_models, exist_ok=True)
    for name in ("1k3d68.onnx", "2d106det.onnx", "face_landmarker_v2_with_blendshapes.task", "genderage.onnx",
                 "glintr100.onnx", "scrfd_10g_bnkps.onnx"):
        with open(os.path.join(face_models, name), "wb") as fh:
            fh.truncate(2 << 20)  # sparse placeholder: inference.py only checks existence and size
    os.makedirs(os.path.join(work, "misc", "misc", "vocal_separator"), exist_ok=True)
    open(os.path.join(work, "misc", "misc", "vocal_separator", "Kim_Vocal_2.onnx"), "wb").close()

    cfg = OmegaConf.load(os.path.join(memo_src, "configs", "inference.yaml"))
    cfg.merge_with({"resolution": S, "num_generated_frames_per_clip": f, "fps": FPS, "num_init_past_frames": n,
                    "num_past_frames": n, "inference_steps": SETTINGS["steps"], "cfg_scale": SETTINGS["cfg"],
                    "weight_dtype": SETTINGS["weight_dtype"], "enable_xformers_memory_efficient_attention": False,
                    "model_name_or_path": ckpt, "vae": vae_dir, "wav2vec": w2v_dir, "emotion2vec": "not-used",
                    "misc_model_dir": os.path.join(work, "misc")})
    cfg_path = os.path.join(work, "inference.yaml")
    OmegaConf.save(cfg, cfg_path)

    # ---- inputs --------------------------------------------------------------------------------------------
    g = torch.Generator().manual_seed(2000 + seed)
    x = torch.rand(1, 3, S, S, generator=g)
    portrait = ((F.avg_pool2d(F.pad(x, (2,) * 4, mode="replicate"), 5, stride=1) - 0.5) * 5).clamp(-1, 1)
    face_emb = torch.randn(1, ID_DIM, generator=g) * 3  # insightface's raw embedding stands here (full: 512 wide)
    samples = int(SETTINGS["audio_frames"] * SR / FPS)
    waveform = _speech(samples, seed)
    audio_length = -(-samples * FPS // SR)  # ceil, as preprocess_audio
    padded = -(-audio_length // f) * f
    # per-frame emotion labels (what extract_audio_emotion_labels returns): clip 0 mostly 3, clip 1 a 5/2 tie
    patterns = ([3, 3, 6, 3], [5, 2, 5, 2])  # with 4 frames per clip: [3, 3, 6, 3, 5, 2, 5, 2]
    labels = torch.tensor([patterns[(i // f) % 2][(i % f) % 4] for i in range(padded)], dtype=torch.int32)
    assert labels.shape[0] == padded == SETTINGS["clips"] * f, (labels.shape, padded)
    wav_path = os.path.join(work, "speech.wav")
    open(wav_path, "wb").close()  # never read: librosa.load is injected

    # ---- load inference.py as a module, inject ------------------------------------------------------------------
    spec = importlib.util.spec_from_file_location("memo_inference_script", os.path.join(memo_src, "inference.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def no_network(command):
        raise RuntimeError(f"inference.py tried to run {command!r}: the harness provides every file")

    script.os = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
    script.os.system = no_network
    script.preprocess_image = lambda face_analysis_model, image_path, image_size: (portrait.clone(), face_emb.clone())
    script.resample_audio = lambda src, dst, sample_rate=16000: src
    audio_utils.librosa = types.SimpleNamespace(load=lambda path, sr: (waveform.copy(), sr))
    original_preprocess_audio = audio_utils.preprocess_audio
    rec: dict[str, torch.Tensor] = {}

    def put(name, t):
        if name in rec:
            raise RuntimeError(f"stage {name} recorded twice")
        rec[name] = torch.as_tensor(t).detach().float().clone().contiguous()

    def preprocess_audio(**kw):
        kw["vocal_separator_model"] = None  # no vocal separation: the waveform is the vocals
        emb, length = original_preprocess_audio(**kw)
        put("audio.windows", emb)
        return emb, length

    script.preprocess_audio = preprocess_audio
    script.extract_audio_emotion_labels = lambda **kw: (labels.clone(), EMOTION_CLASSES)
    video_out = []
    script.tensor_to_video = lambda tensor, path, audio, fps: video_out.append(tensor.clone())

    original_from_pretrained = UNet3DConditionModel.from_pretrained.__func__

    def from_pretrained(cls, *a, **kw):
        model = original_from_pretrained(cls, *a, **kw)
        for m in model.modules():  # what enable_xformers_memory_efficient_attention does to these layers
            if isinstance(m, MemoryLinearAttention):
                m.set_use_memory_efficient_attention_xformers(False)
        return model

    script.UNet3DConditionModel = types.SimpleNamespace(from_pretrained=lambda *a, **kw: from_pretrained(UNet3DConditionModel, *a, **kw))

    def tiny_projection(cls, sub):
        if full:  # MEMO's own from_pretrained: the class defaults are the published shapes
            return cls

        # MEMO's ImageProjModel / AudioProjModel do not register their __init__ arguments (the hub's config.json of
        # these folders is empty: from_pretrained always builds the class defaults). At the tiny size the harness
        # builds them with the tiny arguments and loads the same safetensors file, strictly.
        def load(path, subfolder, use_safetensors=True):
            model = cls(**{k: v for k, v in configs[sub].items() if k != "_class_name"})
            model.load_state_dict(load_file(os.path.join(path, subfolder, "diffusion_pytorch_model.safetensors")), strict=True)
            return model

        return types.SimpleNamespace(from_pretrained=load)

    script.ImageProjModel = tiny_projection(ImageProjModel, "image_proj")
    script.AudioProjModel = tiny_projection(AudioProjModel, "audio_proj")

    # ---- recording hooks ------------------------------------------------------------------------------------------
    state = {"clip": -1, "step": 0, "encodes": []}
    original_call = VideoPipeline.__call__

    def call(self, **kw):
        state["clip"] += 1
        state["step"] = 0
        state["encodes"] = []
        c = state["clip"]
        put(f"clip{c}.ref_pixels", kw["ref_image"][0])  # [1 + past, 3, H, W] in [-1, 1]
        put(f"clip{c}.audio_tokens", kw["audio_tensor"][0])  # [f, tokens, dim] after audio_proj
        put(f"clip{c}.emotion_labels", kw["audio_emotion"])  # per frame
        result = original_call(self, **kw)
        put(f"clip{c}.ref_latents", torch.cat(state["encodes"]))
        put(f"clip{c}.frames", result.videos[0].transpose(0, 1))  # [f, 3, H, W] in [0, 1]
        return result

    VideoPipeline.__call__ = call
    original_prepare = VideoPipeline.prepare_latents

    def prepare_latents(self, *a, **kw):
        latents = original_prepare(self, *a, **kw)
        put(f"clip{state['clip']}.noise", latents[0])
        return latents

    VideoPipeline.prepare_latents = prepare_latents
    original_encode = AutoencoderKL.encode

    def encode(self, x, *a, **kw):
        result = original_encode(self, x, *a, **kw)
        state["encodes"].append(result.latent_dist.mean * 0.18215)
        return result

    AutoencoderKL.encode = encode
    original_image_proj = ImageProjModel.forward

    def image_proj(self, emb):
        tokens = original_image_proj(self, emb)
        put(f"clip{state['clip']}.identity_{'cond' if emb.any() else 'uncond'}", tokens[0])
        return tokens

    ImageProjModel.forward = image_proj
    original_reference = UNet2DConditionModel.forward

    def reference(self, sample, timestep, encoder_hidden_states, *a, **kw):
        features = original_reference(self, sample, timestep, encoder_hidden_states, *a, **kw)
        c = state["clip"]
        put(f"clip{c}.reference.timestep", timestep)
        for part, blocks in features.items():
            for i, layers in enumerate(blocks):
                for j, feature in enumerate(layers):
                    # transformer slots: a list (one per transformer block) of [(2 x (1+past)), h*w, c];
                    # resnet slots (blocks without attention): [(2 x (1+past)), c, h, w]
                    put(f"clip{c}.reference.{part}.{i}.{j}", feature[0] if isinstance(feature, (list, tuple)) else feature)
        return features

    UNet2DConditionModel.forward = reference
    original_denoise = UNet3DConditionModel.forward

    def denoise(self, sample, ref_features, timestep, **kw):
        result = original_denoise(self, sample, ref_features, timestep, **kw)
        c, s = state["clip"], state["step"]
        put(f"clip{c}.step{s}.input", sample[0])
        put(f"clip{c}.step{s}.timestep", timestep)
        put(f"clip{c}.step{s}.emotion", kw["audio_emotion"])
        put(f"clip{c}.step{s}.pred_uncond", result.sample[0])
        put(f"clip{c}.step{s}.pred_cond", result.sample[1])
        return result

    UNet3DConditionModel.forward = denoise
    original_step = FlowMatchEulerDiscreteScheduler.step

    def step(self, model_output, timestep, sample, *a, **kw):
        result = original_step(self, model_output, timestep, sample, *a, **kw)
        c, s = state["clip"], state["step"]
        put(f"clip{c}.step{s}.guided", model_output[0])
        put(f"clip{c}.step{s}.latents", result[0][0])
        state["step"] += 1
        return result

    FlowMatchEulerDiscreteScheduler.step = step

    # ---- run ----------------------------------------------------------------------------------------------------
    argv = sys.argv
    sys.argv = ["inference.py", "--config", cfg_path, "--input_image", os.path.join(work, "portrait.png"),
                "--input_audio", wav_path, "--output_dir", os.path.join(work, "output"), "--seed", str(SETTINGS["seed"])]
    try:
        with torch.no_grad():
            script.main()
    finally:
        sys.argv = argv
    assert len(video_out) == 1 and state["clip"] == SETTINGS["clips"] - 1, (len(video_out), state)
    put("video", video_out[0].transpose(0, 1))  # [frames, 3, H, W]
    for name, t in {"input.portrait": portrait[0], "input.face_emb": face_emb[0], "input.waveform": torch.from_numpy(waveform),
                    "input.emotion_labels": labels}.items():
        put(name, t)
    save_file(rec, os.path.join(out, "stages.safetensors"))
    return {
        "command_part": "--pipeline", "settings": SETTINGS, "audio_length": audio_length, "padded_frames": padded,
        "emotion_classes": EMOTION_CLASSES,
        "reused": {"vae": _shown(vae_dir), "wav2vec2": _shown(w2v_dir)} if full else
                  {"vae": "tests/parity/hallo/vae", "wav2vec2": "tests/parity/hallo/wav2vec2"},
        "checkpoint": "checkpoint" if full else None,
        "scheduler": {k: v for k, v in FlowMatchEulerDiscreteScheduler().config.items() if not k.startswith("_")},
        "configs": configs, "weights": {"generator": "common.hashed_state_dict", **weights},
        "stages": {k: list(v.shape) for k, v in rec.items()},
        "injected": ["preprocess_image (given portrait, face embedding)", "resample_audio (identity)",
                     "librosa.load (given 16 kHz samples)", "no vocal separator", "extract_audio_emotion_labels (given labels)",
                     "tensor_to_video (keeps the tensor)", "os.system (refuses: no downloads)",
                     "MemoryLinearAttnProcessor set as xformers enabling sets it; other attentions SDPA"],
    }

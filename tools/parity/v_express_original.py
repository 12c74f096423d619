"""V-Express golden fixture: run the ORIGINAL V-Express pipeline at a tiny size and record every stage.

Runs in the original's venv (tools/parity/README.md). It builds V-Express's own classes (``UNet2DConditionModel`` as the
reference net, ``UNet3DConditionModel.from_config_2d`` with inference_v2.yaml's motion modules, ``VKpsGuider``,
``AudioProjection``) at the shapes of our ``tiny-v-express`` config, gives every parameter hashed random values
(common.hashed_state_dict: the test makes the same ones again; zero-initialised layers too), and runs
``VExpressPipeline.__call__`` (pipelines/v_express_pipeline.py) as inference.py's ``main()`` calls it: the frame count
cut to whole context windows (inference.py:255-264), the driving keypoints cut / linearly interpolated to it
(:266-277), ``no_retarget`` (:282-283), the keypoint images drawn by ``datasets/utils.draw_kps_image`` (:291-294),
CFG, windowed DDIM from inference_v2.yaml, reference/audio attention weights 0.95 / 3.0. The VAE and the wav2vec2
(2 layers x 32, wav2vec2-base's structure) are the tiny ones of tests/parity/hallo (``--assets``).

128 px, not 64: at 64 px the lowest UNet level is 1 x 1 and the motion modules' GroupNorm (32 groups of 64 channels,
per frame) normalises 2 values per group; where two of them nearly agree (1.7e-3 apart in one unconditional frame of this
run) the stage is ill-conditioned and fp32 rounding moved our result by 1e-2 (docs/parity.md, V-Express).

Inputs (made from closed forms, no stored media): a smooth 64 px portrait, ``common.synthetic_speech``, three
keypoints per frame moving on sines (fewer driving frames than video frames: stretched as inference.py does).

Fixture (OUT): stages.safetensors (inputs + stages; frames and keypoint features of 4 of the 20 frames: ``stored_frames``), buffers.safetensors (the motion modules' ``pe`` tables),
meta.json (commit, packages, settings, per file the key/shape list, seed and digest).

Deliberate changes to the original's run (docs/parity.md, V-Express):
* inference.py's ``main()`` is not imported (insightface, torchaudio and imageio-ffmpeg at module level): its
  frame-count, keypoint and drawing lines are repeated here with the original's own functions
  (``compute_num_context``, ``compute_context_indices``, ``draw_kps_image``); the waveform is handed over at 16 kHz mono;
* the audio processor is a ``Wav2Vec2FeatureExtractor`` (the pipeline calls only its ``__call__``; no tokenizer);
* ``register_reference_hooks``' default device (cpu already) and dtype: the bank is cast with ``dtype=self.dtype``
  (the run's dtype); ``torch.cuda.empty_cache`` is a no-op on the CPU;
* the reference net's zero token (``zeros(1, 1, 768)``, v_express_pipeline.py:502) is cut to the tiny width (32);
* the writer (``save_video``: median filter, cv2, ffmpeg) is not run: the frames the pipeline returns are recorded
  (its 3x3x3 median filter, pipelines/utils.py:46-61, is a fixed function of them, not stored).

``--dtype fp16``: inference.py's own default (``--dtype fp16``, inference.py:44, 150-157): every module in half,
wav2vec2 included (:162-165, and ``pipeline.to(dtype)``), the waveform cast to half before wav2vec2 (pipeline :376), the
bank cast to the pipeline's dtype (:509), the noise drawn in half (:514-523) and the latents, window sums, guidance
and DDIM step in half. Same weights, inputs and settings as the fp32 fixture; the inputs and buffers are not stored
again (meta ``inputs_digest``: the test checks the fp32 fixture holds the same inputs).

``--full`` / ``--bench R`` (``python -m emo_model bench --against-original vexpress``): ``--full`` writes V-Express's
five part files at its real shapes (random weights; ~9 GB, one module at a time), a tiny VAE, a random wav2vec2 of
wav2vec2-base's structure, the waveform and the stretched keypoints to ``--out``, then loads those files as the bench
does and records the same stages as the tiny run into stages.safetensors (no buffers.safetensors: the part files hold
the buffers; meta ``assets`` is ``--out`` itself; the opt-in full-size parity test reads it); ``--full --bench R`` then
loads those files as inference.py does (``load_state_dict``, strict=False for the UNets; memory-mapped, not timed) and
times R ``VExpressPipeline`` calls (reference latent, keypoint guider, wav2vec2 and projection, ReferenceNet, every
windowed DDIM step with CFG, decode; not inference.py's median filter and writer), printing one JSON line with the
seconds and the peak RSS of each (VmHWM reset before each call).

usage: python tools/parity/floor.py -- python tools/parity/v_express_original.py --vx-src /work/parity/v_express \
           --assets tests/parity/hallo --out tests/parity/v_express [--dtype fp16 --out tests/parity/v_express_fp16]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import (  # noqa: E402
    digest, hashed_state_dict, package_versions, patch_checkpoint, randomize_, stub_packages, stub_xformers, synthetic_speech,
)

COMMIT = "6814f7db362dc9e26644162034b4d28c5277651a"

p = argparse.ArgumentParser()
p.add_argument("--vx-src", required=True, help="V-Express at the pinned commit")
p.add_argument("--assets", help="a fixture holding the tiny vae/ and wav2vec2/ (tests/parity/hallo); not with --full")
p.add_argument("--out", required=True)
p.add_argument("--seconds", type=float, default=0.7)
p.add_argument("--fps", type=float, default=30.0)
p.add_argument("--context", type=int, default=8)
p.add_argument("--overlap", type=int, default=2)
p.add_argument("--steps", type=int, default=4)
p.add_argument("--cfg", type=float, default=4.5)
p.add_argument("--size", type=int, default=128)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32",
               help="the pipeline's dtype (inference.py --dtype; its default is fp16)")
p.add_argument("--kps-frames", type=int, default=13, help="driving keypoint frames (fewer than the video's: stretched)")
p.add_argument("--full", action="store_true",
               help="V-Express's real shapes (SD1.5 UNets with attn1_5, inference.py's guider and perceiver, wav2vec2-base's "
                    "structure; a tiny VAE): writes the part files (~9 GB, random weights), vae/, wav2vec2/, speech.npy, "
                    "kps.npy to --out, then records the stages on them (stages.safetensors, meta.json)")
p.add_argument("--bench", type=int, default=0, metavar="R",
               help="with --full: time R runs of the pipeline call on the files a --full run wrote to --out (loaded as "
                    "inference.py loads them); nothing recorded; prints one JSON line")
args = p.parse_args()
BENCH = args.bench > 0
if BENCH and not args.full:
    p.error("--bench needs --full (it times the files a --full run wrote)")
if not args.full and not args.assets:
    p.error("--assets is required without --full")
DTYPE = {"fp32": torch.float32, "fp16": torch.float16}[args.dtype]
HALF = DTYPE != torch.float32
if not BENCH:  # a benchmark uses torch's default (every core), as our side does; floor.py sets OMP_NUM_THREADS
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 2))
out_dir = os.path.abspath(args.out)
os.makedirs(out_dir, exist_ok=True)

stub_xformers()
patch_checkpoint()
stub_packages("imageio_ffmpeg")
sys.path.insert(0, os.path.abspath(args.vx_src))
from diffusers import AutoencoderKL, DDIMScheduler  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model  # noqa: E402

import importlib.util  # noqa: E402

# datasets/__init__.py imports the training dataset (torchvision); its utils.py alone is what inference.py uses
_spec = importlib.util.spec_from_file_location("vx_datasets_utils", os.path.join(args.vx_src, "datasets", "utils.py"))
_utils = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_utils)
draw_kps_image = _utils.draw_kps_image
from modules import AudioProjection, UNet2DConditionModel, UNet3DConditionModel, VKpsGuider  # noqa: E402
from pipelines import VExpressPipeline  # noqa: E402
from pipelines.context import compute_context_indices, compute_num_context  # noqa: E402

S = args.size
PAD = 2  # inference.py --num_pad_audio_frames
if args.full:  # SD1.5's unet/config.json (inference.py reads it from the SD1.5 folder)
    W_CROSS, HEADS, WIDTHS, GROUPS, LAYERS, AUDIO_DIM = 768, 8, [320, 640, 1280, 1280], 32, 2, 768
else:
    W_CROSS, HEADS, WIDTHS, GROUPS, LAYERS, AUDIO_DIM = 32, 2, [32, 64, 64, 64], 8, 1, 32
unet_cfg = {
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.29.2", "act_fn": "silu", "attention_head_dim": HEADS,
    "block_out_channels": WIDTHS, "center_input_sample": False, "cross_attention_dim": W_CROSS,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], "downsample_padding": 1, "flip_sin_to_cos": True,
    "freq_shift": 0, "in_channels": 4, "layers_per_block": LAYERS, "mid_block_scale_factor": 1, "norm_eps": 1e-5,
    "norm_num_groups": GROUPS, "out_channels": 4, "sample_size": S // 8, "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
}
cfg_path = os.path.join(out_dir, ".unet_config.json")
with open(cfg_path, "w") as fh:
    json.dump(unet_cfg, fh)
inference_cfg = OmegaConf.load(os.path.join(args.vx_src, "inference_v2.yaml"))
add_kwargs = OmegaConf.to_container(inference_cfg.unet_additional_kwargs)
if not args.full:
    add_kwargs["motion_module_kwargs"]["num_attention_heads"] = HEADS  # tiny: 2 heads (the yaml's 8 need 8 | channels/8)


def build(name: str) -> torch.nn.Module:
    """One of V-Express's modules at this run's shapes (inference.py:77-129 at full size)."""
    if name == "reference_net":
        return UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg_path))
    if name == "denoising_unet":
        return UNet3DConditionModel.from_config_2d(cfg_path, unet_additional_kwargs=add_kwargs)
    if name == "v_kps_guider":
        return VKpsGuider(WIDTHS[0], block_out_channels=(16, 32, 96, 256) if args.full else (8, 8, 16, 16))
    return AudioProjection(dim=W_CROSS, depth=4 if args.full else 2, dim_head=64 if args.full else 16, heads=12 if args.full else HEADS,
                           num_queries=2 * PAD + 1, embedding_dim=AUDIO_DIM, output_dim=W_CROSS, ff_mult=4,
                           max_seq_len=2 * (2 * PAD + 1))


NAMES = ("denoising_unet", "reference_net", "v_kps_guider", "audio_projection")
FILE = {name: name + ".bin" for name in NAMES}  # model_ckpts/v-express/*.bin (the denoising UNet holds its motion modules)

# ---- inputs (closed forms, no stored media) and inference.py main(), lines 255-294 -------------------------------------
yy, xx = np.mgrid[0:S, 0:S].astype(np.float64) / S
portrait = np.stack([0.5 + 0.4 * np.sin(6 * xx + 2 * yy), 0.5 + 0.4 * np.cos(5 * yy - 3 * xx), 0.5 + 0.3 * np.sin(9 * xx * yy)], -1)
portrait = (portrait * 255).round().astype(np.uint8)
waveform = synthetic_speech(int(args.seconds * 16000))
k = np.arange(args.kps_frames, dtype=np.float64)[:, None]
base = np.array([[0.32, 0.38], [0.68, 0.38], [0.5, 0.6]]) * S
kps_driving = np.stack([base[:, 0][None] + 3 * np.sin(0.7 * k + np.arange(3)), base[:, 1][None] + 2 * np.cos(0.5 * k - np.arange(3))], -1)

duration = waveform.shape[0] / 16000
init_video_length = int(duration * args.fps)
num_contexts = compute_num_context(init_video_length, args.context, args.overlap)
context_indices = compute_context_indices(num_context=num_contexts, context_size=args.context, context_overlap=args.overlap)
video_length = context_indices[-1][1] + 1
kps_sequence = torch.tensor(kps_driving)
if kps_sequence.shape[0] > video_length:
    kps_sequence = kps_sequence[:video_length, :, :]
kps_sequence = torch.nn.functional.interpolate(kps_sequence.permute(1, 2, 0), size=video_length, mode="linear").permute(2, 0, 1)
kps_images = [Image.fromarray(draw_kps_image(S, S, kps_sequence[i])) for i in range(video_length)]

if args.full and not BENCH:
    # the files, one module at a time (peak memory: the largest module), random weights (randomize_: every parameter,
    # zero-initialised layers too); our side loads the same files (emo_model bench --against-original vexpress)
    for i, name in enumerate(NAMES):
        module = build(name)
        randomize_(module, args.seed * 10 + i + 1)
        torch.save(module.state_dict(), os.path.join(out_dir, FILE[name]))
        del module
    torch.manual_seed(args.seed)  # the SD interface at a few channels (4 latent channels, /8, scaling 0.18215)
    AutoencoderKL(block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=1, norm_num_groups=4,
                  sample_size=S, scaling_factor=0.18215).save_pretrained(os.path.join(out_dir, "vae"))
    torch.manual_seed(args.seed + 1)  # wav2vec2-base-960h's structure (random weights)
    Wav2Vec2Model(Wav2Vec2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                                 feat_extract_norm="group", do_stable_layer_norm=False, vocab_size=32)
                  ).save_pretrained(os.path.join(out_dir, "wav2vec2"))
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=False).save_pretrained(os.path.join(out_dir, "wav2vec2"))
    np.save(os.path.join(out_dir, "speech.npy"), waveform.astype(np.float32), allow_pickle=False)
    np.save(os.path.join(out_dir, "kps.npy"), kps_sequence.numpy(), allow_pickle=False)  # stretched to the frames
    FULL_META = {"full": True, "frames": video_length}  # merged into meta.json's settings (bench --against-original reads them)
    print(f"wrote {out_dir}: {', '.join(FILE[n] for n in NAMES)}, vae/, wav2vec2/ ({video_length} frames); recording the stages")

if args.full:  # the files a --full run wrote, loaded as inference.py:77-129 loads them (strict=False for the UNets)
    modules = {}
    for name in NAMES:
        module = build(name)
        state = torch.load(os.path.join(out_dir, FILE[name]), map_location="cpu", weights_only=True, mmap=True)
        missing, unexpected = module.load_state_dict(state, strict=name in ("v_kps_guider", "audio_projection"))
        assert not missing and not unexpected, (name, missing[:3], unexpected[:3])
        modules[name] = module.eval()
        del state
    os.remove(cfg_path)
    denoising_unet, reference_net, v_kps_guider, audio_projection = (modules[n] for n in NAMES)
else:
    reference_net, denoising_unet = build("reference_net"), build("denoising_unet")
    os.remove(cfg_path)
    v_kps_guider, audio_projection = build("v_kps_guider"), build("audio_projection")

# hashed weights: every parameter (the test regenerates them from the spec + seed); buffers stored
modules = {"denoising_unet": denoising_unet, "reference_net": reference_net, "v_kps_guider": v_kps_guider,
           "audio_projection": audio_projection}
weights_meta, buffers = {}, {}
for i, (name, module) in enumerate(modules.items() if not args.full else ()):  # full: the part files' weights
    params = dict(module.named_parameters())
    spec = [(k, list(v.shape)) for k, v in params.items()]
    sd = hashed_state_dict(spec, args.seed * 10 + i + 1)
    missing, unexpected = module.load_state_dict(sd, strict=False)
    assert not unexpected and all(k in dict(module.named_buffers()) for k in missing), (name, missing[:3], unexpected[:3])
    for k, v in module.named_buffers():
        buffers[f"{name}.{k}"] = v.detach().clone().contiguous()
    weights_meta[name] = {"seed": args.seed * 10 + i + 1, "spec": spec, "digest": digest(sd)}
for m in modules.values():
    m.eval()

assets = out_dir if args.full else args.assets
vae = AutoencoderKL.from_pretrained(os.path.join(assets, "vae"))
audio_encoder = Wav2Vec2Model.from_pretrained(os.path.join(assets, "wav2vec2")).eval()
audio_processor = Wav2Vec2FeatureExtractor.from_pretrained(os.path.join(assets, "wav2vec2"))
scheduler = DDIMScheduler(**OmegaConf.to_container(inference_cfg.noise_scheduler_kwargs))  # inference.py:132-136

# v_express_pipeline.py:502 hands the reference net zeros(1, 1, 768), SD1.5's width: at the tiny width the same zero token
_ref_forward = reference_net.forward


def reference_forward(sample, timestep, encoder_hidden_states, **kw):
    assert not encoder_hidden_states.any()
    return _ref_forward(sample, timestep, encoder_hidden_states[..., :W_CROSS], **kw)


reference_net.forward = reference_forward

pipeline = VExpressPipeline(vae=vae, reference_net=reference_net, denoising_unet=denoising_unet, v_kps_guider=v_kps_guider,
                            audio_processor=audio_processor, audio_encoder=audio_encoder, audio_projection=audio_projection,
                            scheduler=scheduler).to(dtype=DTYPE, device="cpu")


def call_pipeline():
    generator = torch.manual_seed(args.seed)  # inference.py:216
    return pipeline(reference_image=Image.fromarray(portrait), kps_images=kps_images, audio_waveform=torch.from_numpy(waveform),
                    width=S, height=S, video_length=video_length, num_inference_steps=args.steps, guidance_scale=args.cfg,
                    context_frames=args.context, context_overlap=args.overlap, reference_attention_weight=0.95,
                    audio_attention_weight=3.0, num_pad_audio_frames=PAD, generator=generator)


if BENCH:  # R timed pipeline calls (module docstring), one JSON line
    runs = []
    for _ in range(args.bench):
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM: the peak from here on is the generation's (weights included)
        t = time.perf_counter()
        with torch.no_grad():
            video = call_pipeline()
        seconds = time.perf_counter() - t
        with open("/proc/self/status") as fh:
            peak = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
        runs.append({"seconds": seconds, "peak_rss": peak})
    print(json.dumps({"family": "vexpress", "runs": runs, "frames": int(video.shape[2]), "size": S, "steps": args.steps,
                      "cfg": args.cfg, "context": args.context, "overlap": args.overlap, "torch_threads": torch.get_num_threads()}))
    sys.exit(0)

# ---- hooks ----------------------------------------------------------------------------------------------------
stages: dict[str, torch.Tensor] = {}
calls = []  # the first denoiser call (window 0 of step 0, both guidance branches)


def keep(name):
    def hook(_m, inputs, output):
        if name == "audio.tokens":
            stages["audio.windows"] = inputs[0].detach().clone()
        out = output.last_hidden_state if name == "audio.hidden" else output
        if name == "kps.features" and name in stages:  # the guider runs on batches of 16 frames (pipeline :358-366)
            out = torch.cat([stages[name], out], dim=2)
        stages[name] = out.detach().clone()
    return hook


audio_encoder.register_forward_hook(keep("audio.hidden"))
audio_projection.register_forward_hook(keep("audio.tokens"))
v_kps_guider.register_forward_hook(keep("kps.features"))


def unet_hook(_m, a, kw, output):
    if not calls:
        calls.append({"sample": a[0].detach().clone(), "t": torch.as_tensor(a[1]).reshape(1).float(),
                      "audio": kw["encoder_hidden_states"].detach().clone(), "out": output[0].detach().clone()})


denoising_unet.register_forward_hook(unet_hook, with_kwargs=True)
_prepare_latents, _decode = pipeline.prepare_latents, pipeline.decode_latents
_ref_latent = pipeline.prepare_reference_latent


def prepare_latents(*a, **kw):
    stages["latents.init"] = _prepare_latents(*a, **kw).clone()
    return stages["latents.init"].clone()


def decode_latents(latents):
    stages["latents.final"] = latents.clone()
    return _decode(latents)


def prepare_reference_latent(*a, **kw):
    stages["reference.latents"] = _ref_latent(*a, **kw).clone()
    return stages["reference.latents"]


pipeline.prepare_latents, pipeline.decode_latents, pipeline.prepare_reference_latent = prepare_latents, decode_latents, prepare_reference_latent

video = call_pipeline()
# frames and keypoint features of a few frames only (each is a per-frame function of the latents / keypoint images):
# the first, one in each overlap of two windows, the last
KEEP = [0, args.context - 1, 2 * (args.context - args.overlap) + 1, video_length - 1]
stages["frames"] = video.float()[:, :, KEEP].contiguous()
stages["kps.features"] = stages["kps.features"][:, :, KEEP].contiguous()
for i, c in enumerate(calls):
    for key, value in c.items():
        stages[f"unet.call{i}.{key}"] = value
inputs = {"input.portrait": torch.from_numpy(portrait), "input.waveform": torch.from_numpy(waveform),
          "input.kps_driving": torch.from_numpy(kps_driving).float(),
          "input.kps_images": torch.from_numpy(np.stack([np.asarray(im) for im in kps_images]))}
if not HALF:  # the half run has the same inputs and buffers (its meta's inputs_digest): stored once, by the fp32 fixture
    stages.update(inputs)
    if not args.full:  # a full run's part files hold the buffers
        save_file(buffers, os.path.join(out_dir, "buffers.safetensors"))
save_file({k: v.contiguous() for k, v in stages.items()}, os.path.join(out_dir, "stages.safetensors"))
meta = {
    "original": {"repo": "tencent-ailab/V-Express", "commit": COMMIT},
    "packages": package_versions("torch", "diffusers", "transformers", "numpy", "opencv-python-headless"),
    "command": sys.argv,
    "settings": {"seconds": args.seconds, "fps": args.fps, "video_length": video_length, "context": args.context,
                 "overlap": args.overlap, "steps": args.steps, "cfg": args.cfg, "size": S, "seed": args.seed,
                 "reference_attention_weight": 0.95, "audio_attention_weight": 3.0, "num_pad_audio_frames": PAD,
                 "retarget": "no_retarget", "windows": len(context_indices), "dtype": args.dtype,
                 "stored_frames": KEEP},
    "assets": "." if args.full else os.path.relpath(os.path.abspath(args.assets), os.getcwd()),
    "weights": weights_meta,
    "inputs_digest": digest(dict(sorted(inputs.items()))),  # by name, as load_file returns them
}
if args.full:
    meta["settings"].update(FULL_META)
    meta["files"] = [FILE[n] for n in NAMES] + ["vae", "wav2vec2", "speech.npy", "kps.npy"]
with open(os.path.join(out_dir, "meta.json"), "w") as fh:
    json.dump(meta, fh, indent=1)
print(f"video_length {video_length} (from {init_video_length}), windows {len(context_indices)}; wrote {out_dir}")

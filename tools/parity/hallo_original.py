"""Golden stages from the ORIGINAL Hallo code (fudan-generative-vision/hallo), at a tiny size.

Runs in Hallo's venv (see tools/parity/README.md), never in ours, and imports Hallo from a checkout:

    venv-hallo/bin/python tools/parity/hallo_original.py --hallo-src /work/parity/hallo \
        --work /tmp/hallo-parity --out tests/parity/hallo

What it does:
1. builds a tiny Stable-Diffusion UNet folder, a tiny VAE (diffusers AutoencoderKL) and a tiny random
   wav2vec2 (transformers) in Hallo's venv; the UNet shapes match our ``tiny-hallo`` config key for key;
2. builds Hallo's ``Net`` the way ``scripts/inference.py`` does, sets every parameter to hash-generated
   values (``common.hashed_state_dict``: a test regenerates the same tensors instead of storing them) and
   saves them as Hallo's ``net.pth``;
3. runs ``scripts/inference.py``'s own ``inference_process`` on a config derived from Hallo's
   ``configs/inference/default.yaml`` (2 clips of 4 frames + 2 motion frames, 64x64, 3 DDIM steps, CFG 3.5,
   fp32). Injected (components we do not ship): the face analysis (``ImageProcessor`` returns given pixels,
   face region, identity embedding and full/face/lip masks), no vocal separator, ``librosa.load`` reads the
   given 16 kHz waveform, ``tensor_to_video`` keeps the tensor. Hallo's hard-coded full-size
   ``FaceLocator`` / ``ImageProjModel`` / ``AudioProjModel`` arguments are replaced by the tiny ones.
   One deliberate change: ``ReferenceAttentionControl.update`` keeps the bank in fp32 (Hallo casts it to
   fp16 by default) so that an fp32 comparison is meaningful;
4. records every stage with wrappers/hooks and writes ``stages.safetensors`` + ``meta.json`` (+ the VAE and
   wav2vec2 folders) to ``--out``.

The CI fixture is made through ``tools/parity/floor.py`` (two runs, ``OMP_NUM_THREADS`` 2 then 1, which this script
honours; ``floor.json`` records the original's own noise per stage) with ``--clips 3 --cfg 4.5`` (the hard case).

``--weight-dtype fp16``: Hallo's own default (``default.yaml``): every module but wav2vec2 in half (``pipeline.to``), the
bank cast to fp16 by Hallo's ``update`` (not patched), the latents, guidance and DDIM step in fp16 as the script runs
them. The bank, the pixel inputs, the denoiser inputs and the (fp32) ragged / long audio runs are not recorded, to keep
the fixture small; ``--assets tests/parity/hallo`` reads the fp32 fixture's VAE and wav2vec2 instead of writing them.

``--bench R`` (used by ``python -m emo_model bench --against-original hallo``): the same script run R times with
nothing recorded and Hallo's own fp16 bank cast, reusing the UNet folder and ``net.pth`` already in ``--work``;
prints one JSON line with the seconds of each run's generation (every ``FaceAnimatePipeline.__call__``: portrait
+ motion-frame VAE encode, ReferenceNet, denoising, decode) and the peak RSS during it (VmHWM reset before).
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import shlex
import sys
import time
import types

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hallo_shapes import net_sizes, sd_unet_config  # noqa: E402
from common import digest, hashed_state_dict, package_versions, patch_checkpoint, stub_packages, stub_xformers, synthetic_speech  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--hallo-src", required=True, help="checkout of fudan-generative-vision/hallo at the pinned commit")
p.add_argument("--work", required=True, help="scratch folder (tiny SD folder, net.pth, caches)")
p.add_argument("--out", required=True, help="fixture folder (tests/parity/hallo)")
p.add_argument("--frames", type=int, default=4, help="frames per clip")
p.add_argument("--motion", type=int, default=2, help="motion frames")
p.add_argument("--clips", type=int, default=2)
p.add_argument("--size", type=int, default=64, help="pixels (height = width)")
p.add_argument("--steps", type=int, default=3)
p.add_argument("--audio-frames", type=float, default=None,
               help="length of the driving audio in video frames (default: clips x frames - 1.7, so Hallo pads the "
                    "last clip with one silent frame and the video is one frame shorter than the clips)")
p.add_argument("--cfg", type=float, default=3.5)
p.add_argument("--seed", type=int, default=7, help="weights / inputs seed")
p.add_argument("--weight-dtype", choices=("fp32", "fp16"), default="fp32",
               help="Hallo's weight_dtype (its default.yaml: fp16). fp16: every module but wav2vec2 in half precision and the "
                    "bank cast as Hallo casts it; the bank, ragged and long-audio stages are not recorded (fp32 audio, same as "
                    "the fp32 fixture's)")
p.add_argument("--assets", default=None,
               help="read the tiny 'vae' and 'wav2vec2' from this folder (e.g. tests/parity/hallo) instead of writing them to --out")
p.add_argument("--full", action="store_true",
               help="Hallo's real shapes (SD1.5 UNets, wav2vec2-base, 768-wide tokens) instead of tiny-hallo's; writes "
                    "net.pth (~9 GB) into --out; use e.g. --size 128; needs ~10 GB RAM")
p.add_argument("--bench", type=int, default=0, metavar="R",
               help="time R runs of the generation instead of recording stages (reuses --work's weights; prints JSON)")
args = p.parse_args()
BENCH = args.bench > 0
HALF = args.weight_dtype != "fp32"
os.makedirs(args.work, exist_ok=True)
os.makedirs(args.out, exist_ok=True)
if not BENCH:  # a benchmark uses torch's default (every core), as our side does
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or min(2, os.cpu_count() or 1)))  # floor.py sets it
t0 = time.time()

stub_xformers()
patch_checkpoint()
stubbed = stub_packages("av", "cv2", "mediapipe", "moviepy", "torchvision", "insightface", "librosa", "audio_separator")
HALLO = os.path.abspath(args.hallo_src)
sys.path.insert(0, HALLO)

from diffusers import AutoencoderKL  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model  # noqa: E402

import hallo.datasets.audio_processor as hallo_audio  # noqa: E402
from hallo.animate.face_animate import FaceAnimatePipeline  # noqa: E402
from hallo.models.audio_proj import AudioProjModel  # noqa: E402
from hallo.models.face_locator import FaceLocator  # noqa: E402
from hallo.models.image_proj import ImageProjModel  # noqa: E402
from hallo.models.mutual_self_attention import ReferenceAttentionControl  # noqa: E402
from hallo.models.unet_2d_condition import UNet2DConditionModel  # noqa: E402
from hallo.models.unet_3d import UNet3DConditionModel  # noqa: E402

spec = importlib.util.spec_from_file_location("hallo_inference_script", os.path.join(HALLO, "scripts", "inference.py"))
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)

# ---- sizes: our tiny-hallo config, or (--full) Hallo's own ---------------------------------------------------
SIZES = net_sizes(args.full)
WIDTHS, HEADS, GROUPS, CROSS, LAYERS = SIZES.widths, SIZES.heads, SIZES.groups, SIZES.cross, SIZES.layers
AUDIO_LAYERS, AUDIO_DIM, ID_DIM, ID_TOKENS, AUDIO_TOKENS, AUDIO_HIDDEN = (
    SIZES.audio_layers, SIZES.audio_dim, SIZES.id_dim, SIZES.id_tokens, SIZES.audio_tokens, SIZES.audio_hidden)
FL_WIDTHS = SIZES.fl_widths
if args.full:
    W2V = dict(num_attention_heads=12, intermediate_size=3072, conv_dim=(512,) * 7, num_conv_pos_embeddings=128,
               num_conv_pos_embedding_groups=16)
else:
    W2V = dict(num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7, num_conv_pos_embeddings=16,
               num_conv_pos_embedding_groups=4)
S, f, n, clips = args.size, args.frames, args.motion, args.clips
h = S // 8
FPS, SR = 25, 16000

sd_unet_cfg = sd_unet_config(SIZES, h)
sd_dir = os.path.join(args.work, "sd-tiny")
torch.manual_seed(0)
if not (BENCH and os.path.isdir(os.path.join(sd_dir, "unet"))):  # base weights (all overwritten by net.pth)
    UNet2DConditionModel.from_config(sd_unet_cfg).save_pretrained(os.path.join(sd_dir, "unet"))

# tiny VAE, committed with the fixture (SD's interface: 4 latent channels, /8, scaling 0.18215)
vae_dir = os.path.join(args.assets or args.out, "vae")
w2v_dir = os.path.join(args.assets or args.out, "wav2vec2")
if not args.assets:
    torch.manual_seed(args.seed)
    AutoencoderKL(block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=1, norm_num_groups=4,
                  sample_size=S, scaling_factor=0.18215).save_pretrained(vae_dir)

    # tiny random wav2vec2 (wav2vec2-base-960h's structure: conv stack with strides 320, group norm, post-LN encoder)
    torch.manual_seed(args.seed + 1)
    w2v_cfg = Wav2Vec2Config(hidden_size=AUDIO_DIM, num_hidden_layers=AUDIO_LAYERS, feat_extract_norm="group",
                             do_stable_layer_norm=False, vocab_size=32, **W2V)
    Wav2Vec2Model(w2v_cfg).save_pretrained(w2v_dir)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, padding_value=0.0, do_normalize=True,
                             return_attention_mask=False).save_pretrained(w2v_dir)

# ---- the config: Hallo's default.yaml with tiny sizes -----------------------------------------------------
cfg = OmegaConf.load(os.path.join(HALLO, "configs/inference/default.yaml"))
net_dir = os.path.join(args.work, "ckpt")
os.makedirs(net_dir, exist_ok=True)
cfg.merge_with({
    "source_image": os.path.join(args.work, "portrait.png"), "driving_audio": os.path.join(args.work, "speech.npy"),
    "weight_dtype": args.weight_dtype,
    "data": {"n_motion_frames": n, "n_sample_frames": f, "source_image": {"width": S, "height": S}, "export_video": {"fps": FPS}},
    "inference_steps": args.steps, "cfg_scale": args.cfg, "audio_ckpt_dir": net_dir, "base_model_path": sd_dir,
    "motion_module_path": os.path.join(args.work, "no-motion-module.ckpt"),  # absent: from_pretrained_2d skips it
    "wav2vec": {"model_path": w2v_dir}, "vae": {"model_path": vae_dir}, "save_path": os.path.join(args.work, "cache"),
    "unet_additional_kwargs": {"audio_attention_dim": CROSS, "motion_module_kwargs": {"num_attention_heads": HEADS}},
})
cfg_path = os.path.join(args.work, "inference.yaml")
OmegaConf.save(cfg, cfg_path)

# ---- inputs (fixed seeds) --------------------------------------------------------------------------------------
g = torch.Generator().manual_seed(1000 + args.seed)


def smooth(shape, k):
    x = torch.rand(shape, generator=g)
    return F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, stride=1)


ref_pixels = ((smooth((1, 3, S, S), 5)[0] - 0.5) * 5).clamp(-1, 1)  # Hallo's pixel_transform range [-1, 1]
yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
face_box = ((yy >= S // 8) & (yy < S - S // 8) & (xx >= S // 6) & (xx < S - S // 6)).float()
face_region = face_box.expand(3, S, S).clone()  # the face-region image (RGB 0/1), cond_transform range [0, 1]
face_emb = (torch.randn(ID_DIM, generator=g) * 3).numpy()  # insightface's raw embedding stands here
region = smooth((1, 3, h, h), 3)[0]  # (full, face, lip) masks at latent resolution, 0..1
levels = [F.interpolate(region[None], size=(h >> l, h >> l), mode="area")[0] for l in range(4)]
masks = {name: [lv[i].reshape(1, -1) for lv in levels] for i, name in enumerate(("full", "face", "lip"))}


def speechlike(samples: int, seed: int) -> np.ndarray:
    """A voiced-speech-like waveform: harmonics of a gliding pitch under a syllable envelope, plus noise."""
    r = np.random.default_rng(seed)
    t = np.arange(samples) / SR
    f0 = 120 + 30 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    return (0.3 * env * voice + 0.02 * r.standard_normal(samples)).astype(np.float32)


audio_frames = clips * f - 1.7 if args.audio_frames is None else args.audio_frames
if not (clips - 1) * f < math.ceil(audio_frames) <= clips * f:
    p.error(f"--audio-frames {audio_frames} does not make {clips} clips of {f} frames")
waveform = speechlike(int(audio_frames * SR / FPS), args.seed)  # Hallo pads it to whole clips
np.save(cfg.driving_audio, waveform)
ragged = speechlike(int(4.3 * SR // FPS), args.seed + 1)  # 4.3 frames: Hallo pads its features to whole clips
ragged_path = os.path.join(args.work, "ragged.npy")
np.save(ragged_path, ragged)
LONG_SECONDS = 31.3  # past our 20 s pieces + 2.5 s context: Hallo encodes any length in one wav2vec2 call
long_path = os.path.join(args.work, "long.npy")
np.save(long_path, synthetic_speech(round(LONG_SECONDS * SR)))  # closed form: the test makes it again

# ---- injections -------------------------------------------------------------------------------------------------
hallo_audio.librosa = types.SimpleNamespace(load=lambda path, sr: (np.load(path), sr))  # 16 kHz float samples as given


class InjectedImageProcessor:
    """What Hallo's ImageProcessor.preprocess returns (insightface + mediapipe are not run)."""

    def __init__(self, img_size, face_analysis_model_path):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def preprocess(self, source_image_path, cache_dir, face_region_ratio):
        return (ref_pixels.clone(), face_region.clone(), face_emb.copy(), [m.clone() for m in masks["full"]],
                [m.clone() for m in masks["face"]], [m.clone() for m in masks["lip"]])


class AudioProcessorWithoutSeparator(hallo_audio.AudioProcessor):
    """Hallo's AudioProcessor with no vocal separator (the waveform is taken as the vocals)."""

    def __init__(self, sample_rate, fps, wav2vec_model_path, only_last_features, *_separator, **kw):
        super().__init__(sample_rate, fps, wav2vec_model_path, only_last_features, None, None, "", device="cpu")


def _vm_hwm() -> int:
    """Peak resident memory of this process in bytes since the last reset (Linux /proc)."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))


def bench_runs(repeats: int) -> None:
    """Time ``repeats`` runs of the unmodified generation (module docstring), print JSON, exit."""
    net = os.path.join(net_dir, "net.pth")
    if not os.path.isfile(net):
        sys.exit(f"error: {net} is missing: run this script once without --bench and the same --work first")
    timing = {"seconds": 0.0, "calls": 0, "reset": False}
    original_call = FaceAnimatePipeline.__call__

    def timed_call(self, *a, **kw):
        if not timing["reset"]:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset VmHWM: the peak from here on is the generation's (weights included)
            timing["reset"] = True
        t = time.perf_counter()
        out = original_call(self, *a, **kw)
        timing["seconds"] += time.perf_counter() - t
        timing["calls"] += 1
        return out

    FaceAnimatePipeline.__call__ = timed_call
    ns = argparse.Namespace(config=cfg_path, source_image=None, driving_audio=None, output=os.path.join(args.work, "out.mp4"),
                            pose_weight=None, face_weight=None, lip_weight=None, face_expand_ratio=None, audio_ckpt_dir=None)
    runs = []
    for _ in range(repeats):
        timing.update(seconds=0.0, calls=0, reset=False)
        with torch.no_grad():
            script.inference_process(ns)
        runs.append({"seconds": timing["seconds"], "clips": timing["calls"], "peak_rss": _vm_hwm()})
    print(json.dumps({"family": "hallo", "runs": runs, "frames": int(video_out[-1].shape[1]), "size": S,
                      "steps": args.steps, "cfg": args.cfg, "frames_per_clip": f, "motion_frames": n,
                      "torch_threads": torch.get_num_threads()}))
    sys.exit(0)


def tiny(cls, **kw):
    return lambda *a, **_full_size: cls(**kw)


script.ImageProcessor = InjectedImageProcessor
script.AudioProcessor = AudioProcessorWithoutSeparator
script.FaceLocator = tiny(FaceLocator, conditioning_embedding_channels=WIDTHS[0], conditioning_channels=3, block_out_channels=FL_WIDTHS)
script.ImageProjModel = tiny(ImageProjModel, cross_attention_dim=CROSS, clip_embeddings_dim=ID_DIM, clip_extra_context_tokens=ID_TOKENS)
script.AudioProjModel = tiny(AudioProjModel, seq_len=5, blocks=AUDIO_LAYERS, channels=AUDIO_DIM, intermediate_dim=AUDIO_HIDDEN,
                             output_dim=CROSS, context_tokens=AUDIO_TOKENS)
video_out: list[torch.Tensor] = []
script.tensor_to_video = lambda tensor, output, audio: video_out.append(tensor.clone())

# ---- net.pth: the state dict of the script's Net, hash-generated values ------------------------------------
unet_kwargs = OmegaConf.to_container(cfg.unet_additional_kwargs)
if BENCH:
    bench_runs(args.bench)  # exits
torch.manual_seed(0)
proto = script.Net(
    UNet2DConditionModel.from_pretrained(sd_dir, subfolder="unet"),
    UNet3DConditionModel.from_pretrained_2d(sd_dir, cfg.motion_module_path, subfolder="unet",
                                            unet_additional_kwargs=unet_kwargs, use_landmark=False),
    script.FaceLocator(), script.ImageProjModel(), script.AudioProjModel(),
)
weight_spec = [(k, list(v.shape)) for k, v in proto.state_dict().items()]
del proto
state = hashed_state_dict(weight_spec, args.seed)
torch.save(state, os.path.join(net_dir, "net.pth"))
if args.full:  # too big to regenerate in a test: the test loads it from the fixture folder
    torch.save(state, os.path.join(args.out, "net.pth"))
weights_digest = digest(state)
del state

# ---- recording ------------------------------------------------------------------------------------------------------
rec: dict[str, torch.Tensor] = {}
clip = {"i": -1, "step": 0, "vae": 0}


def put(name, t):
    if name in rec:
        raise RuntimeError(f"stage {name} recorded twice")
    rec[name] = t.detach().float().clone().contiguous()


def wrap(owner, attr, after):
    orig = getattr(owner, attr)

    def wrapper(*a, **kw):
        out = orig(*a, **kw)
        after(out, *a, **kw)
        return out

    setattr(owner, attr, wrapper)


orig_call = FaceAnimatePipeline.__call__


def call(self, *a, **kw):
    clip["i"] += 1
    clip["step"] = 0
    c = clip["i"]
    if not HALF:  # (half: not recorded, the fixture stays small; the decoded frames are)
        put(f"clip{c}.ref_pixels", kw["ref_image"][0])  # [1+n, 3, H, W] portrait + motion frames, [-1, 1]
    put(f"clip{c}.audio_tokens", kw["audio_tensor"][0])
    out = orig_call(self, *a, **kw)
    put(f"clip{c}.frames", out.videos[0].transpose(0, 1))  # [f, 3, H, W] in [0, 1]
    return out


FaceAnimatePipeline.__call__ = call
wrap(FaceAnimatePipeline, "prepare_latents", lambda out, *a, **kw: put(f"clip{clip['i']}.noise", out))
orig_encode = AutoencoderKL.encode


def vae_encode(self, x, *a, **kw):
    out = orig_encode(self, x, *a, **kw)
    put(f"clip{clip['i']}.ref_latents", out.latent_dist.mean * 0.18215)  # what face_animate.py uses
    return out


AutoencoderKL.encode = vae_encode
wrap(ImageProjModel, "forward", lambda out, self, emb: put(f"clip{clip['i']}.identity_{'uncond' if not emb.any() else 'cond'}", out))
wrap(FaceLocator, "forward", lambda out, self, x: put(f"clip{clip['i']}.face_locator", out[:, :, 0]))  # same on every frame


def after_unet(out, self, sample, t, *a, **kw):
    s = clip["step"]
    if not HALF:  # (half: the latents of the step before)
        put(f"clip{clip['i']}.step{s}.model_input", sample)
    put(f"clip{clip['i']}.step{s}.pred_uncond", out[0][0])
    put(f"clip{clip['i']}.step{s}.pred_cond", out[0][1])
    put(f"clip{clip['i']}.step{s}.timestep", torch.as_tensor(t).reshape(1))


wrap(UNet3DConditionModel, "forward", after_unet)
sched_cls = script.DDIMScheduler


def after_step(out, self, model_output, t, sample, *a, **kw):
    s = clip["step"]
    put(f"clip{clip['i']}.step{s}.guided", model_output[0])
    put(f"clip{clip['i']}.step{s}.latents", out[0][0])
    clip["step"] += 1


wrap(sched_cls, "step", after_step)
orig_update = ReferenceAttentionControl.update


def update(self, writer, dtype=torch.float16):
    # Deliberate in fp32: keep Hallo's bank in fp32 (its default casts to fp16) so an fp32 comparison is meaningful.
    # --weight-dtype fp16: Hallo's own cast (the bank is not recorded: it keeps the fixture small).
    if HALF:
        return orig_update(self, writer, dtype=dtype)
    for k, m in writer.unet.named_modules():
        if getattr(m, "bank", None):
            block = k.rsplit(".transformer_blocks", 1)[0]
            put(f"clip{clip['i']}.bank.{block}", m.bank[0])  # [2 (uncond, cond) x (1 + n), h*w, c]
    return orig_update(self, writer, dtype=torch.float32)


ReferenceAttentionControl.update = update
audio_runs: list[tuple[torch.Tensor, int]] = []
wrap(hallo_audio.AudioProcessor, "preprocess", lambda out, self, *a, **kw: audio_runs.append((out[0].clone(), out[1])))
wrap(script, "process_audio_emb", lambda out, emb: put("audio.windows", out))

# ---- run the original inference script ------------------------------------------------------------------------
ns = argparse.Namespace(config=cfg_path, source_image=None, driving_audio=None, output=os.path.join(args.work, "out.mp4"),
                        pose_weight=None, face_weight=None, lip_weight=None, face_expand_ratio=None, audio_ckpt_dir=None)
with torch.no_grad():
    script.inference_process(ns)
put("audio.features", audio_runs[0][0])
put("video", video_out[0].transpose(0, 1))  # [F, 3, H, W] in [0, 1]

# the same audio code on a waveform whose length is not a whole number of clips (fp32 in any weight_dtype)
length = long_length = None
if not HALF:
    with torch.no_grad():
        emb, length = AudioProcessorWithoutSeparator(SR, FPS, w2v_dir, False).preprocess(ragged_path, f)
    put("audio_ragged.features", emb)
    with torch.no_grad():
        emb, long_length = AudioProcessorWithoutSeparator(SR, FPS, w2v_dir, False).preprocess(long_path, f)
    put("audio_long.features", emb)

inputs = {
    "input.waveform": torch.from_numpy(waveform), "input.ref_pixels": ref_pixels, "input.face_region": face_region,
    "input.face_emb": torch.from_numpy(face_emb), "input.region_masks": region,
}
if not HALF:
    inputs["input.waveform_ragged"] = torch.from_numpy(ragged)
for k, v in inputs.items():
    put(k, v)
save_file(rec, os.path.join(args.out, "stages.safetensors"))

# with --assets: a pointer to that fixture's key/shape list when it is the same (same Net), else the list itself
assets_meta = os.path.join(args.assets, "meta.json") if args.assets else None
spec_entry = weight_spec
if assets_meta and os.path.isfile(assets_meta):
    with open(assets_meta) as fh:
        if [tuple(x) for x in json.load(fh)["weights"]["spec"]] == [(k, s) for k, s in weight_spec]:
            spec_entry = f"{os.path.relpath(os.path.abspath(assets_meta), os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))} weights.spec"
meta = {
    "original": {"repo": "https://github.com/fudan-generative-vision/hallo",
                 "commit": os.popen(f"git -C {shlex.quote(HALLO)} rev-parse HEAD 2>/dev/null").read().strip() or "unknown"},
    "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
    "packages": package_versions("torch", "diffusers", "transformers", "numpy", "einops", "omegaconf", "accelerate"),
    "stubbed_packages": stubbed,
    "assets": None if not args.assets else {
        "folder": os.path.relpath(os.path.abspath(args.assets), os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
        "digests": {"vae": digest(load_file(os.path.join(vae_dir, "diffusion_pytorch_model.safetensors"))),
                    "wav2vec2": digest(load_file(os.path.join(w2v_dir, "model.safetensors")))}},
    "settings": {"full": args.full, "frames_per_clip": f, "motion_frames": n, "clips": clips, "size": S, "steps": args.steps, "cfg": args.cfg,
                 "fps": FPS, "sample_rate": SR, "weight_dtype": args.weight_dtype,
                 "bank_dtype": "fp16 (Hallo's cast)" if HALF else "fp32 (Hallo default fp16)", "torch_threads": torch.get_num_threads(),
                 "audio_frames": audio_frames, "video_frames": int(rec["video"].shape[0]), "ragged_audio_frames": length,
                 "audio_long": None if HALF else {"seconds": LONG_SECONDS, "frames": long_length,
                                                 "waveform": "tools/parity/common.py synthetic_speech(round(seconds * 16000))"}},
    "weights": {"format": "Hallo net.pth (torch.save of Net.state_dict())", "generator": "common.hashed_state_dict",
                "seed": args.seed, "digest": weights_digest, "spec": spec_entry},
    "scheduler": dict(OmegaConf.to_container(cfg.noise_scheduler_kwargs), enable_zero_snr=bool(cfg.enable_zero_snr)),
    "stages": {k: list(v.shape) for k, v in rec.items()},
}
with open(os.path.join(args.out, "meta.json"), "w") as fh:
    json.dump(meta, fh, indent=1)
print(f"done in {time.time() - t0:.0f}s: {len(rec)} stages; video range {rec['video'].min():.3f}..{rec['video'].max():.3f}")
for k in ("clip0.step0.pred_cond", f"clip{clips - 1}.step{args.steps - 1}.latents", "video"):
    print(k, tuple(rec[k].shape), f"std {rec[k].std():.3f}")

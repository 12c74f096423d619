"""Golden stages from the ORIGINAL Hallo2 code (fudan-generative-vision/hallo2), at a tiny size.

Runs in Hallo2's venv (diffusers 0.32.2; see tools/parity/README.md), never in ours, and imports Hallo2 from a
checkout:

    venv-hallo2/bin/python tools/parity/hallo2_original.py --hallo2-src /work/parity/hallo2 \
        --work /tmp/hallo2-parity --out tests/parity/hallo2

Hallo2's network classes, pipeline and image processing are Hallo's (byte-identical files); what differs is
``scripts/inference_long.py`` with ``configs/inference/long.yaml``: the motion frames of every clip get a random
pixel drop outside the face region (``use_mask``, ``mask_rate``) and the audio is cut into 60 s pieces encoded
one by one (``use_cut``). This script:

1. reuses the tiny VAE and tiny random wav2vec2 of the Hallo fixture (``--assets``, default
   ``tests/parity/hallo``; their digests go to meta.json) and writes a tiny Stable-Diffusion UNet folder whose
   shapes match our ``tiny-hallo`` config key for key;
2. builds Hallo2's ``Net`` the way ``inference_long.py`` does, sets every parameter to hash-generated values
   (``common.hashed_state_dict``, the same seed as the Hallo fixture, so the same ``net.pth``) and saves it;
3. runs ``inference_long.py``'s own ``inference_process`` on a config derived from ``long.yaml`` (2 clips of 4
   frames + 2 motion frames, 64x64, 3 DDIM steps, CFG 3.5, fp32; ``use_mask``/``mask_rate``/``use_cut`` as
   published). Injected (components we do not ship): the face analysis (``ImageProcessor`` returns given pixels,
   face region, identity embedding and masks), no vocal separator, ``librosa.load`` reads the given 16 kHz
   samples, pydub's ``AudioSegment`` is a stand-in with pydub's millisecond slicing on those samples,
   ``tensor_to_video_batch`` keeps the tensor. The full-size ``FaceLocator`` / ``ImageProjModel`` /
   ``AudioProjModel`` arguments hard-coded in the script are replaced by the tiny ones. The bank stays fp32
   (Hallo2 casts it to fp16), as in the Hallo harness;
4. runs the same ``inference_process`` on three long waveforms of ``common.synthetic_speech`` (61.3, 61.28, 60.8 s:
   two pieces each, the last one padded by 3 frames / not padded / padded by a whole clip, at the published clip
   length of 16) and stops it once the audio is encoded;
5. records every stage (``torch.rand`` of the pixel drop is recorded through a proxy of the script's ``torch``)
   and writes ``stages.safetensors`` + ``meta.json`` to ``--out``.

The CI fixture is made through ``tools/parity/floor.py`` (``OMP_NUM_THREADS`` 2 then 1, honoured here) with
``--clips 3 --cfg 4.5``. ``--weight-dtype fp16`` is long.yaml's published precision (``pipeline.to(fp16)``, Hallo2's own
fp16 bank cast; wav2vec2 stays fp32); it records no bank and skips the fp32 long-audio runs.
"""
from __future__ import annotations

import argparse
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

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--hallo2-src", required=True, help="checkout of fudan-generative-vision/hallo2 at the pinned commit")
p.add_argument("--work", required=True, help="scratch folder (tiny SD folder, net.pth, audio pieces)")
p.add_argument("--out", required=True, help="fixture folder (tests/parity/hallo2)")
p.add_argument("--assets", default=os.path.join(ROOT, "tests", "parity", "hallo"),
               help="folder with the tiny 'vae' and 'wav2vec2' to use (read only; default: the Hallo fixture's)")
p.add_argument("--frames", type=int, default=4, help="frames per clip")
p.add_argument("--motion", type=int, default=2, help="motion frames")
p.add_argument("--clips", type=int, default=2)
p.add_argument("--size", type=int, default=64, help="pixels (height = width)")
p.add_argument("--steps", type=int, default=3)
p.add_argument("--audio-frames", type=float, default=None,
               help="length of the driving audio in video frames (default: clips x frames - 1.7: the last clip has a "
                    "silent padding frame)")
p.add_argument("--cfg", type=float, default=3.5)
p.add_argument("--seed", type=int, default=7, help="weights / inputs seed (7 = the Hallo fixture's net.pth)")
p.add_argument("--weight-dtype", choices=("fp32", "fp16"), default="fp32",
               help="long.yaml's weight_dtype (published: fp16). fp16: every module but wav2vec2 in half and the bank cast as "
                    "Hallo2 casts it; the bank and the (fp32) long-audio runs are not recorded")
p.add_argument("--full", action="store_true",
               help="Hallo's real shapes (SD1.5 UNets, wav2vec2-base, 768-wide tokens); --assets must then be a folder written "
                    "by hallo_original.py --full (its vae, wav2vec2, meta.json and net.pth are used); use e.g. --size 128; "
                    "needs ~10 GB RAM")
args = p.parse_args()
HALF = args.weight_dtype != "fp32"
os.makedirs(args.work, exist_ok=True)
os.makedirs(args.out, exist_ok=True)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or min(2, os.cpu_count() or 1)))  # floor.py sets it
t0 = time.time()

stub_xformers()
patch_checkpoint()
stubbed = stub_packages("av", "cv2", "mediapipe", "moviepy", "torchvision", "insightface", "librosa", "audio_separator",
                        "pydub", "icecream")
SRC = os.path.abspath(args.hallo2_src)
sys.path.insert(0, SRC)

from diffusers import AutoencoderKL  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import Wav2Vec2Model  # noqa: E402

import hallo.datasets.audio_processor as hallo_audio  # noqa: E402
from hallo.animate.face_animate import FaceAnimatePipeline  # noqa: E402
from hallo.models.audio_proj import AudioProjModel  # noqa: E402
from hallo.models.face_locator import FaceLocator  # noqa: E402
from hallo.models.image_proj import ImageProjModel  # noqa: E402
from hallo.models.mutual_self_attention import ReferenceAttentionControl  # noqa: E402
from hallo.models.unet_2d_condition import UNet2DConditionModel  # noqa: E402
from hallo.models.unet_3d import UNet3DConditionModel  # noqa: E402

spec = importlib.util.spec_from_file_location("hallo2_inference_long", os.path.join(SRC, "scripts", "inference_long.py"))
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)

# ---- sizes: our tiny-hallo config, or (--full) Hallo's own --------------------------------------------------------
SIZES = net_sizes(args.full)
WIDTHS, HEADS, GROUPS, CROSS, LAYERS = SIZES.widths, SIZES.heads, SIZES.groups, SIZES.cross, SIZES.layers
AUDIO_LAYERS, AUDIO_DIM, ID_DIM, ID_TOKENS, AUDIO_TOKENS, AUDIO_HIDDEN = (
    SIZES.audio_layers, SIZES.audio_dim, SIZES.id_dim, SIZES.id_tokens, SIZES.audio_tokens, SIZES.audio_hidden)
FL_WIDTHS = SIZES.fl_widths
S, f, n, clips = args.size, args.frames, args.motion, args.clips
h = S // 8
FPS, SR = 25, 16000
LONG_CLIP = 16  # clip length of the long-audio runs (long.yaml's n_sample_frames)

sd_unet_cfg = sd_unet_config(SIZES, h)
sd_dir = os.path.join(args.work, "sd-tiny")
torch.manual_seed(0)
sd_config = os.path.join(sd_dir, "unet", "config.json")
def read_json(path: str) -> dict:
    with open(path) as fh:
        return json.load(fh)


if not (os.path.isfile(sd_config) and read_json(sd_config)["block_out_channels"] == WIDTHS):  # else reused
    UNet2DConditionModel.from_config(sd_unet_cfg).save_pretrained(os.path.join(sd_dir, "unet"))  # all overwritten by net.pth

vae_dir, w2v_dir = os.path.join(args.assets, "vae"), os.path.join(args.assets, "wav2vec2")
asset_digests = {
    "vae": digest(load_file(os.path.join(vae_dir, "diffusion_pytorch_model.safetensors"))),
    "wav2vec2": digest(load_file(os.path.join(w2v_dir, "model.safetensors"))),
}
Wav2Vec2Model.from_pretrained(w2v_dir)  # fails early if the folder is not a wav2vec2

# ---- the config: Hallo2's long.yaml with tiny sizes -----------------------------------------------------------
cfg = OmegaConf.load(os.path.join(SRC, "configs/inference/long.yaml"))
net_dir = os.path.join(args.work, "ckpt")
os.makedirs(net_dir, exist_ok=True)
published = {k: cfg[k] for k in ("use_mask", "mask_rate", "use_cut")}
cfg.merge_with({
    "source_image": os.path.join(args.work, "portrait.png"), "driving_audio": os.path.join(args.work, "speech.wav"),
    "weight_dtype": args.weight_dtype,
    "data": {"n_motion_frames": n, "n_sample_frames": f, "source_image": {"width": S, "height": S}, "export_video": {"fps": FPS}},
    "inference_steps": args.steps, "cfg_scale": args.cfg, "audio_ckpt_dir": net_dir, "base_model_path": sd_dir,
    "motion_module_path": os.path.join(args.work, "no-motion-module.ckpt"),  # absent: from_pretrained_2d skips it
    "wav2vec": {"model_path": w2v_dir}, "vae": {"model_path": vae_dir}, "save_path": os.path.join(args.work, "out"),
    "unet_additional_kwargs": {"audio_attention_dim": CROSS, "motion_module_kwargs": {"num_attention_heads": HEADS}},
})
cfg_path = os.path.join(args.work, "inference_long.yaml")
OmegaConf.save(cfg, cfg_path)
long_cfg_path = os.path.join(args.work, "inference_long_audio.yaml")  # the long-audio runs stop after the audio
OmegaConf.save(OmegaConf.merge(cfg, {"data": {"n_sample_frames": LONG_CLIP}}), long_cfg_path)

# ---- inputs (fixed seeds) --------------------------------------------------------------------------------------
g = torch.Generator().manual_seed(2000 + args.seed)


def smooth(shape, k):
    x = torch.rand(shape, generator=g)
    return F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, stride=1)


ref_pixels = ((smooth((1, 3, S, S), 5)[0] - 0.5) * 5).clamp(-1, 1)  # Hallo's pixel_transform range [-1, 1]
yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
# a face box of half the frame: the pixel drop acts outside it (closed form: the test makes it again)
face_box = ((yy >= S // 4) & (yy < S - S // 4) & (xx >= S // 4 + 2) & (xx < S - S // 4 - 2)).float()
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
waveform = speechlike(int(audio_frames * SR / FPS), args.seed)
# long audio, at the published clip length of 16: a 60 s piece (1500 frames) + 33 frames (1533 -> padded by 3 to 1536),
# + 32 frames (a whole number of clips on its own, so not padded although 1532 is not), + 20 frames (1520 is whole
# clips, yet the piece is not: padded by a whole silent clip of 16)
LONG = {"padded": 61.3, "unpadded": 61.28, "extra_clip": 60.8}
WAVES = {cfg.driving_audio: waveform}
for name, seconds in LONG.items():
    WAVES[os.path.join(args.work, f"long_{name}.wav")] = synthetic_speech(round(seconds * SR))  # closed form

# ---- injections -------------------------------------------------------------------------------------------------
hallo_audio.librosa = types.SimpleNamespace(load=lambda path, sr: (WAVES[path].copy(), sr))  # 16 kHz samples as given


class SamplesSegment:
    """pydub.AudioSegment's interface as cut_audio uses it, on 16 kHz float samples: ``len()`` in rounded
    milliseconds, ``[a:b]`` in milliseconds (pydub's frame arithmetic, zero-filled past the end), ``export``."""

    def __init__(self, samples: np.ndarray):
        self.samples = samples

    @classmethod
    def from_wav(cls, path):
        return cls(WAVES[path])

    def __len__(self):
        return round(1000 * len(self.samples) / SR)

    def __getitem__(self, window: slice):
        start, end = min(window.start or 0, len(self)), min(window.stop, len(self))
        a, b = int(start * SR / 1000.0), int(end * SR / 1000.0)
        data = self.samples[a:b]
        return SamplesSegment(np.pad(data, (0, (b - a) - len(data))))

    def export(self, path, format):  # noqa: A002  (pydub's name)
        WAVES[path] = self.samples


class InjectedImageProcessor:
    """What Hallo2's ImageProcessor.preprocess returns (insightface + mediapipe are not run)."""

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
    """Hallo2's AudioProcessor with no vocal separator (the waveform is taken as the vocals)."""

    def __init__(self, sample_rate, fps, wav2vec_model_path, only_last_features, *_separator, **kw):
        super().__init__(sample_rate, fps, wav2vec_model_path, only_last_features, None, None, "", device="cpu")


class RecordingTorch(types.ModuleType):
    """The script's ``torch``: everything is torch's, ``rand`` also records what it returns (the pixel drop)."""

    def __getattr__(self, item):
        return getattr(torch, item)

    def rand(self, *a, **kw):
        out = torch.rand(*a, **kw)
        drops.append(out.clone())
        return out


def tiny(cls, **kw):
    return lambda *a, **_full_size: cls(**kw)


drops: list[torch.Tensor] = []
script.torch = RecordingTorch("torch")
script.AudioSegment = SamplesSegment
script.ic = lambda *a: None  # icecream debug prints
script.ImageProcessor = InjectedImageProcessor
script.AudioProcessor = AudioProcessorWithoutSeparator
script.FaceLocator = tiny(FaceLocator, conditioning_embedding_channels=WIDTHS[0], conditioning_channels=3, block_out_channels=FL_WIDTHS)
script.ImageProjModel = tiny(ImageProjModel, cross_attention_dim=CROSS, clip_embeddings_dim=ID_DIM, clip_extra_context_tokens=ID_TOKENS)
script.AudioProjModel = tiny(AudioProjModel, seq_len=5, blocks=AUDIO_LAYERS, channels=AUDIO_DIM, intermediate_dim=AUDIO_HIDDEN,
                             output_dim=CROSS, context_tokens=AUDIO_TOKENS)
video_out: list[tuple[torch.Tensor, int]] = []
script.tensor_to_video_batch = lambda tensor, output, start, audio, fps=25: video_out.append((tensor.clone(), start))

# ---- net.pth: the state dict of the script's Net, hash-generated values ------------------------------------
unet_kwargs = OmegaConf.to_container(cfg.unet_additional_kwargs)
torch.manual_seed(0)
proto = script.Net(
    UNet2DConditionModel.from_pretrained(sd_dir, subfolder="unet"),
    UNet3DConditionModel.from_pretrained_2d(sd_dir, cfg.motion_module_path, subfolder="unet",
                                            unet_additional_kwargs=unet_kwargs, use_landmark=False),
    script.FaceLocator(), script.ImageProjModel(), script.AudioProjModel(),
)
weight_spec = [(k, list(v.shape)) for k, v in proto.state_dict().items()]
del proto
net_path = os.path.join(net_dir, "net.pth")
assets_meta = os.path.join(args.assets, "meta.json")
known = read_json(assets_meta)["weights"] if os.path.isfile(assets_meta) else {}
same_spec = [tuple(x) for x in known.get("spec", [])] == [(k, s) for k, s in weight_spec]
if args.full and same_spec and known.get("seed") == args.seed and os.path.isfile(os.path.join(args.assets, "net.pth")):
    # the Hallo --full fixture's net.pth is these hashed values already (same key/shape list and seed): link it
    if os.path.lexists(net_path):
        os.remove(net_path)
    os.symlink(os.path.abspath(os.path.join(args.assets, "net.pth")), net_path)
    weights_digest = known["digest"]
else:
    state = hashed_state_dict(weight_spec, args.seed)
    torch.save(state, net_path)
    weights_digest = digest(state)
    del state

# ---- recording ------------------------------------------------------------------------------------------------------
rec: dict[str, torch.Tensor] = {}
clip = {"i": -1, "step": 0}
BANK_ROWS = {}  # block -> rows of clip 1 kept (motion rows of both branches): keeps the fixture small


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
    put(f"clip{c}.audio_tokens", kw["audio_tensor"][0])
    return orig_call(self, *a, **kw)


FaceAnimatePipeline.__call__ = call
wrap(FaceAnimatePipeline, "prepare_latents", lambda out, *a, **kw: put(f"clip{clip['i']}.noise", out))
orig_encode = AutoencoderKL.encode


def vae_encode(self, x, *a, **kw):
    out = orig_encode(self, x, *a, **kw)
    put(f"clip{clip['i']}.ref_latents", out.latent_dist.mean * 0.18215)  # [portrait, masked motion frames]
    return out


AutoencoderKL.encode = vae_encode
wrap(ImageProjModel, "forward", lambda out, self, emb: put(f"clip{clip['i']}.identity_{'uncond' if not emb.any() else 'cond'}", out))
wrap(FaceLocator, "forward", lambda out, self, x: put(f"clip{clip['i']}.face_locator", out[:, :, 0]))


def after_unet(out, self, sample, t, *a, **kw):
    s = clip["step"]
    put(f"clip{clip['i']}.step{s}.pred_uncond", out[0][0])
    put(f"clip{clip['i']}.step{s}.pred_cond", out[0][1])


wrap(UNet3DConditionModel, "forward", after_unet)


def after_step(out, self, model_output, t, sample, *a, **kw):
    s = clip["step"]
    put(f"clip{clip['i']}.step{s}.guided", model_output[0])
    put(f"clip{clip['i']}.step{s}.latents", out[0][0])
    clip["step"] += 1


wrap(script.DDIMScheduler, "step", after_step)
orig_update = ReferenceAttentionControl.update


def update(self, writer, dtype=torch.float16):
    # Deliberate in fp32: keep the bank in fp32 (Hallo2 casts it to fp16) so an fp32 comparison is meaningful.
    # --weight-dtype fp16: Hallo2's own cast (the bank is not recorded).
    if HALF:
        return orig_update(self, writer, dtype=dtype)
    for k, m in writer.unet.named_modules():
        if getattr(m, "bank", None):
            block = k.rsplit(".transformer_blocks", 1)[0]
            rows = m.bank[0]  # [2 (uncond, cond) x (1 + n), h*w, c]
            if clip["i"] == 0:  # the conditional portrait row (the same every clip)
                put(f"clip0.bank.{block}", rows[n + 1 : n + 2])
            else:  # the motion rows of both branches
                put(f"clip{clip['i']}.bank.{block}", torch.cat([rows[1 : n + 1], rows[n + 2 :]]))
    return orig_update(self, writer, dtype=torch.float32)


ReferenceAttentionControl.update = update
audio_runs: list[tuple[torch.Tensor, int]] = []
wrap(hallo_audio.AudioProcessor, "preprocess", lambda out, self, *a, **kw: audio_runs.append((out[0].clone(), out[1])))
wrap(script, "process_audio_emb", lambda out, emb: put("audio.windows", out))

# ---- run the original inference script ------------------------------------------------------------------------
ns = argparse.Namespace(config=cfg_path, source_image=None, driving_audio=None, pose_weight=None, face_weight=None,
                        lip_weight=None, face_expand_ratio=None, audio_ckpt_dir=None)
with torch.no_grad():
    script.inference_process(ns)
if len(audio_runs) != 1 or len(drops) != clips or len(video_out) != 1:
    raise RuntimeError(f"unexpected run: {len(audio_runs)} audio pieces, {len(drops)} drops, {len(video_out)} videos")
put("audio.features", audio_runs[0][0])
for c, d in enumerate(drops):
    put(f"clip{c}.drop_uniform", d)  # torch.rand(h, w) of the pixel drop, in the script's order
put("video", video_out[0][0].transpose(0, 1))  # [F, 3, H, W] in [0, 1]


class AudioDone(Exception):
    pass


def stop_after_audio(**kw):
    raise AudioDone


long_meta = {}
real_scheduler = script.DDIMScheduler
script.DDIMScheduler = stop_after_audio  # first thing after the audio in inference_process
for name, seconds in ({} if HALF else LONG).items():  # (fp32 in any weight_dtype: the fp32 fixture has them)
    audio_runs.clear()
    ns.driving_audio = os.path.join(args.work, f"long_{name}.wav")
    ns.config = long_cfg_path
    try:
        with torch.no_grad():
            script.inference_process(ns)
    except AudioDone:
        pass
    feats = torch.cat([r[0] for r in audio_runs])  # what inference_long.py concatenates
    rows = feats.shape[0]
    keep = list(range(8)) + list(range(1480, rows))  # the start, the piece boundary (1500) and the end
    put(f"audio_long_{name}.rows", feats[keep])
    long_meta[name] = {"seconds": seconds, "pieces": [int(r[0].shape[0]) for r in audio_runs],
                       "piece_frames": [int(r[1]) for r in audio_runs], "rows": rows, "frames": sum(r[1] for r in audio_runs),
                       "clip_length": LONG_CLIP, "stored_rows": keep, "waveform": "tools/parity/common.py synthetic_speech(round(seconds * 16000))"}
script.DDIMScheduler = real_scheduler

inputs = {"input.waveform": torch.from_numpy(waveform), "input.ref_pixels": ref_pixels,
          "input.face_emb": torch.from_numpy(face_emb), "input.region_masks": region}
for k, v in inputs.items():
    put(k, v)
save_file(rec, os.path.join(args.out, "stages.safetensors"))

# the key/shape list: a pointer to the Hallo fixture's meta.json when it is the same (it is: Hallo2's Net is Hallo's)
spec_entry = f"{os.path.relpath(assets_meta, ROOT)} weights.spec" if same_spec else weight_spec
meta = {
    "original": {"repo": "https://github.com/fudan-generative-vision/hallo2",
                 "commit": os.popen(f"git -C {shlex.quote(SRC)} rev-parse HEAD 2>/dev/null").read().strip() or "unknown",
                 "script": "scripts/inference_long.py inference_process", "config": "configs/inference/long.yaml"},
    "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
    "packages": package_versions("torch", "diffusers", "transformers", "numpy", "einops", "omegaconf", "accelerate"),
    "stubbed_packages": stubbed,
    "assets": {"folder": os.path.relpath(os.path.abspath(args.assets), ROOT), "digests": asset_digests},
    "settings": {"full": args.full, "frames_per_clip": f, "motion_frames": n, "clips": clips, "size": S, "steps": args.steps, "cfg": args.cfg,
                 "fps": FPS, "sample_rate": SR, "weight_dtype": args.weight_dtype,
                 "bank_dtype": "fp16 (Hallo2's cast)" if HALF else "fp32 (Hallo2 default fp16)", "torch_threads": torch.get_num_threads(),
                 "published": OmegaConf.to_container(OmegaConf.create(published)),
                 "face_box": "rows [S/4, 3S/4), columns [S/4 + 2, 3S/4 - 2), all 3 channels",
                 "audio_frames": audio_frames, "video_frames": int(rec["video"].shape[0]), "audio_long": long_meta},
    "weights": {"format": "Hallo net.pth (torch.save of Net.state_dict())", "generator": "common.hashed_state_dict",
                "seed": args.seed, "digest": weights_digest, "spec": spec_entry},
    "scheduler": dict(OmegaConf.to_container(cfg.noise_scheduler_kwargs), enable_zero_snr=bool(cfg.enable_zero_snr)),
    "stages": {k: list(v.shape) for k, v in rec.items()},
}
with open(os.path.join(args.out, "meta.json"), "w") as fh:
    json.dump(meta, fh, indent=1)
print(f"done in {time.time() - t0:.0f}s: {len(rec)} stages; video {tuple(rec['video'].shape)}; long audio {long_meta}")

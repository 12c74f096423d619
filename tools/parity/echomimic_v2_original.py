"""EchoMimic v2 golden fixture: run the ORIGINAL EchoMimic v2 code at a tiny size and record every stage.

Runs in the original's venv (tools/parity/README.md, "EchoMimic v2"). It builds EchoMimic v2's own classes (the
reference UNet, EMOUNet3DConditionModel with motion modules, PoseEncoder, its whisper copy) at a tiny size whose
tensors match our ``tiny-echomimic-v2`` config key for key, gives every parameter hashed random values
(tools/parity/common.py hashed_state_dict: the test writes the same four .pth files again), builds a tiny random
diffusers ``AutoencoderKL``, draws a pose sequence with the original's own ``draw_pose_select_v2`` (hands only) from
synthetic hand keypoints exactly as infer.py does (a zero canvas, the drawing pasted at draw_pose_params, /255), and
runs ``EchoMimicV2Pipeline.__call__`` (src/pipelines/pipeline_echomimicv2.py) as infer.py calls it: CFG, context
windows (uniform, closed loop, shifting 3 frames per step), DDIM v-prediction. Hooks record the whisper chunks, the
pose-encoder output, the reference latent and bank, every denoiser call, every guided prediction and the latents
after each step, the final latents and the frames.

Fixture (OUT, < 4 MB): stages.safetensors (inputs + stages; ``input.hands`` / ``input.hands_score`` are the keypoints,
``input.poses`` the original's drawing of them as uint8; ``audio.chunks`` the video's rows), meta.json (commit, packages,
command, settings, the weight recipe), buffers.safetensors (the motion modules' sinusoid tables), vae/; with
``--float64`` also float64.safetensors (below).

usage: python tools/parity/floor.py -- python tools/parity/echomimic_v2_original.py --echo-src /work/parity/echomimic_v2 \
           --out tests/parity/echomimic_v2 --float64
       ... --out tests/parity/echomimic_v2_acc --pipeline acc --assets tests/parity/echomimic_v2
       ... --out tests/parity/echomimic_v2_fp16 --dtype fp16 --assets tests/parity/echomimic_v2

``--float64``: after the float32 run, the same run again with every module (both UNets, the pose encoder, the VAE), the
pipeline, the pose images, the reference bank and the latents in float64, from the float32 run's very initial noise
(drawn in float32, then cast) and the same whisper features (whisper's own LayerNorm computes in float32, ``x.float()``,
so its features stay float32's); its guided predictions and latents per step (EXACT_STAGES) go to
OUT/float64.safetensors, stored as float32. That is the original's exact result, against which its own float32 run's
rounding is measured (docs/parity.md, EchoMimic v2).

``--pipeline acc``: src/pipelines/pipeline_echomimicv2_acc.py as infer_acc.py calls it: cfg 1.0, 6 steps, context 12,
overlap 3 (its defaults; --frames 21 so that 3 windows, one wrapping, cover the video), seed 420 + --seed as the main run.

``--dtype fp16``: as infer.py runs with configs/prompts/infer.yaml's ``weight_dtype: fp16``: the modules and the pipeline
cast to half (the files stay fp32), the pose images in half (infer.py:194), the reference bank in half (the original's
own cast), the initial noise drawn in half; whisper in half as its ``transcribe`` runs on a GPU (on a CPU it would fall
back to fp32: patched as in echomimic_original.py).

``--full`` builds the networks at infer.py's shapes (SD1.5 UNets, ``PoseEncoder(320, 3, (16, 32, 96, 256))``,
whisper-tiny's encoder: ~10 GB of .pth files in OUT/checkpoint); ``--bench R`` then times R pipeline calls on them
instead of recording (``python -m emo_model bench --against-original echomimic-v2``; one JSON line).

``--assets FIXTURE``: a fixture of the same weights (same --seed) whose buffers.safetensors and vae/ are checked to be
what this run would write and are used instead of a second copy.

Deliberate changes to the original's run, all for a CPU comparison:
* ``ReferenceAttentionControl.update`` keeps the bank in the run's dtype (its default casts to fp16; so does a fp16 run);
* ``register_reference_hooks`` builds its CFG mask on the CPU (its default device is cuda);
* the waveform is handed to ``audio2feat`` as an array (whisper's ``transcribe`` accepts one): no ffmpeg decode.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import (  # noqa: E402
    digest,
    patch_checkpoint,
    patch_reference_control,
    randomize_,
    save_or_check_assets,
    stub_xformers,
    tiny_whisper,
    whisper_as_on_a_gpu,
    write_part_files,
)

p = argparse.ArgumentParser()
p.add_argument("--echo-src", required=True, help="checkout of antgroup/echomimic_v2 at the pinned commit")
p.add_argument("--out", required=True, help="fixture folder to write")
p.add_argument("--work", default=None, help="scratch folder for the .pth / whisper .pt files (default: a temp folder)")
p.add_argument("--pipeline", choices=("standard", "acc"), default="standard",
               help="acc: pipeline_echomimicv2_acc.py with infer_acc.py's settings (defaults below change with it)")
p.add_argument("--frames", type=int, default=None, help="default 16 (acc: 21)")
p.add_argument("--context", type=int, default=None, help="default 6 (acc: 12, infer_acc.py)")
p.add_argument("--overlap", type=int, default=None, help="default 2 (acc: 3, infer_acc.py)")
p.add_argument("--steps", type=int, default=None, help="default 2 (acc: 6, infer_acc.py)")
p.add_argument("--cfg", type=float, default=None, help="default 4.5 (acc: 1.0, infer_acc.py)")
p.add_argument("--size", type=int, default=64)
p.add_argument("--fps", type=int, default=24)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--float64", action="store_true", help="also run the original in float64 and record its last stages "
               "(OUT/float64.safetensors): its exact result")
p.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32",
               help="fp16: as infer.py runs with configs/prompts/infer.yaml's weight_dtype 'fp16'")
p.add_argument("--full", action="store_true", help="full-size (SD1.5 / whisper-tiny) shapes, as infer.py builds them; the .pth "
               "files go to OUT/checkpoint (~10 GB); use --size 128 on a CPU")
p.add_argument("--bench", type=int, default=0, metavar="R",
               help="time R runs of the pipeline instead of recording stages (nothing written, the original's own fp16 bank "
                    "cast, torch's default threads); prints one JSON line (python -m emo_model bench --against-original)")
p.add_argument("--assets", default=None, metavar="FIXTURE",
               help="another fixture of the same --seed: its buffers.safetensors and vae/ are checked and used instead of a copy")
args = p.parse_args()
ACC = args.pipeline == "acc"
for name, standard, acc in (("frames", 16, 21), ("context", 6, 12), ("overlap", 2, 3), ("steps", 2, 6), ("cfg", 4.5, 1.0)):
    if getattr(args, name) is None:
        setattr(args, name, acc if ACC else standard)
DTYPE = {"fp32": torch.float32, "fp16": torch.float16}[args.dtype]
if args.float64 and DTYPE != torch.float32:
    p.error("--float64 goes with the fp32 run")
BENCH = args.bench > 0
if not BENCH:  # floor.py sets OMP_NUM_THREADS for its two runs; 2 otherwise. A benchmark uses torch's default, as ours
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 2))
out_dir = os.path.abspath(args.out)
work = os.path.abspath(args.work or (os.path.join(out_dir, "checkpoint") if args.full
                                     else os.path.join(tempfile.gettempdir(), "echomimic-v2-parity-work")))
os.makedirs(out_dir, exist_ok=True)
os.makedirs(work, exist_ok=True)

stub_xformers()
patch_checkpoint()
sys.path.insert(0, os.path.abspath(args.echo_src))
from diffusers import AutoencoderKL, DDIMScheduler  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from src.models.mutual_self_attention import ReferenceAttentionControl  # noqa: E402
from src.models.pose_encoder import PoseEncoder  # noqa: E402
from src.models.unet_2d_condition import UNet2DConditionModel  # noqa: E402
from src.models.unet_3d_emo import EMOUNet3DConditionModel  # noqa: E402
from src.models.whisper.audio2feature import load_audio_model  # noqa: E402
from src.models.whisper.whisper.model import ModelDimensions, Whisper  # noqa: E402
from src.pipelines import pipeline_echomimicv2, pipeline_echomimicv2_acc  # noqa: E402
from src.utils.dwpose_util import draw_pose_select_v2  # noqa: E402

# ---- run-time patches (see the module docstring) ----------------------------------------------------
RUN_DTYPE = [DTYPE]  # the dtype of the run under way (--float64: float32, then float64)
patch_reference_control(ReferenceAttentionControl, None if BENCH else (lambda: RUN_DTYPE[0]))
if DTYPE == torch.float16:
    whisper_as_on_a_gpu()

# ---- tiny modules built with the original classes ------------------------------------------------------
t0 = time.time()
unet_common = dict(
    sample_size=args.size // 8, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64, 64), layers_per_block=1,
    attention_head_dim=2, norm_num_groups=8, flip_sin_to_cos=True, freq_shift=0,
)
if args.full:  # sd-image-variations-diffusers/unet (SD1.5 layout), as infer.py loads it
    unet_common.update(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=8, norm_num_groups=32)
reference_unet = UNet2DConditionModel(
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=384, **unet_common,
)
inference_cfg = OmegaConf.load(os.path.join(args.echo_src, "configs/inference/inference_v2.yaml"))
add_kwargs = OmegaConf.to_container(inference_cfg.unet_additional_kwargs)
if not args.full:
    add_kwargs["motion_module_kwargs"]["num_attention_heads"] = 2  # tiny (full size: 8, from inference_v2.yaml)
denoising_unet = EMOUNet3DConditionModel(
    down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
    up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
    mid_block_type="UNetMidBlock3DCrossAttn",
    **{**unet_common, **add_kwargs},
)
# infer.py:117 PoseEncoder(320, conditioning_channels=3, block_out_channels=(16, 32, 96, 256)); tiny widths here
pose_net = (PoseEncoder(320, conditioning_channels=3, block_out_channels=(16, 32, 96, 256)) if args.full
            else PoseEncoder(32, conditioning_channels=3, block_out_channels=(8, 8, 16, 16)))
vae = AutoencoderKL(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 8, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=args.size,
)
for m in (reference_unet, denoising_unet, pose_net, vae):
    m.requires_grad_(False).eval()
randomize_(vae, args.seed * 100 + 13)

parts = {
    "reference_unet.pth": (reference_unet, lambda k: True),
    "denoising_unet.pth": (denoising_unet, lambda k: "motion_modules." not in k),
    "motion_module.pth": (denoising_unet, lambda k: "motion_modules." in k),
    "pose_encoder.pth": (pose_net, lambda k: True),
}
file_specs, buffers = write_part_files(parts, args.seed * 100 + 40, None if BENCH else work)
if not BENCH:
    save_or_check_assets(out_dir, args.assets, buffers, vae)

whisper_seed = 7 + args.seed
dims, wspec, whisper_sd = tiny_whisper(ModelDimensions, Whisper, whisper_seed, full=args.full)
whisper_path = os.path.join(out_dir if args.full else work, "whisper_tiny_random.pt")
if not (BENCH and os.path.isfile(whisper_path)):
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": whisper_sd}, whisper_path)
audio_processor = load_audio_model(model_path=whisper_path, device="cpu")
print(f"built in {time.time() - t0:.1f}s", flush=True)

# ---- inputs ---------------------------------------------------------------------------------------------------------
g = torch.Generator().manual_seed(1234 + args.seed)
S, F = args.size, args.frames
yy, xx = torch.meshgrid(torch.linspace(-1, 1, S), torch.linspace(-1, 1, S), indexing="ij")
body = ((xx / 0.55) ** 2 + ((yy + 0.2) / 0.6) ** 2 < 1).float()
portrait = torch.stack([0.35 + 0.3 * yy + 0.4 * body, 0.3 + 0.2 * xx + 0.3 * body, 0.5 - 0.2 * yy + 0.1 * body], -1)
portrait = ((portrait + 0.08 * torch.randn(S, S, 3, generator=g)).clamp(0, 1) * 255).round().to(torch.uint8)
n_samples = round(F * 16000 / args.fps)
tt = torch.arange(n_samples, dtype=torch.float64) / 16000
pitch = 140 + 30 * torch.sin(2 * np.pi * 2.5 * tt)
phase = 2 * np.pi * torch.cumsum(pitch, 0) / 16000
voiced = sum(torch.sin(k * phase) / k for k in range(1, 12))
envelope = 0.5 + 0.5 * torch.sin(2 * np.pi * 4 * tt) ** 2
waveform = (0.3 * envelope * voiced + 0.02 * torch.randn(n_samples, generator=g, dtype=torch.float64)).float()

# Two hands of 21 DWPose keypoints (0..1 of the canvas), swaying over the frames, scores in 0.3..1; one point of the
# second hand is below eps (not drawn) so the drawing's skip is part of the fixture.
base = torch.rand(2, 21, 2, generator=g) * 0.3 + torch.tensor([[[0.15, 0.55]], [[0.55, 0.55]]])
frames_t = torch.arange(F, dtype=torch.float32)[:, None, None, None]
hands = (base[None] + 0.04 * torch.stack([torch.sin(frames_t[..., 0] * 0.5), torch.cos(frames_t[..., 0] * 0.3)], -1)).clamp(0, 1)
hands[:, 1, 20] = 0.005
hands_score = (0.3 + 0.7 * torch.rand(F, 2, 21, generator=g))
pose_list = []
for i in range(F):  # infer.py:183-194, with draw_pose_params covering the whole frame
    tgt_musk = np.zeros((S, S, 3)).astype("uint8")
    detected_pose = {"bodies": {"candidate": np.zeros((18, 2)), "subset": np.zeros((1, 18))},
                     "hands": hands[i].double().numpy(), "hands_score": hands_score[i].double().numpy(),
                     "draw_pose_params": [S, S, 0, S, 0, S]}
    imh_new, imw_new, rb, re, cb, ce = detected_pose["draw_pose_params"]
    im = draw_pose_select_v2(detected_pose, imh_new, imw_new, ref_w=800)
    im = np.transpose(np.array(im), (1, 2, 0))
    tgt_musk[rb:re, cb:ce, :] = im
    tgt_musk_pil = Image.fromarray(np.array(tgt_musk)).convert("RGB")
    pose_list.append(torch.Tensor(np.array(tgt_musk_pil)).permute(2, 0, 1) / 255.0)
poses_tensor = torch.stack(pose_list, dim=1).unsqueeze(0)  # [1, 3, F, S, S]

rec: dict[str, torch.Tensor] = {
    "input.portrait": portrait, "input.waveform": waveform, "input.hands": hands, "input.hands_score": hands_score,
    "input.poses": (poses_tensor * 255).round().to(torch.uint8),  # exactly the drawing (uint8 / 255), 4x smaller
}
assert torch.equal(rec["input.poses"].float() / 255.0, poses_tensor)
latent_shape = (1, 4, F, S // 8, S // 8)
# what prepare_latents_smooth draws (randn_tensor in the run's dtype: fp16 gives fp32's draw rounded to half)
rec["input.noise"] = torch.randn(latent_shape, generator=torch.Generator().manual_seed(420 + args.seed)).to(DTYPE).float()


# ---- recording hooks --------------------------------------------------------------------------------------------
# the stages of the float64 run that float64.safetensors keeps: every step's guided prediction and latents (the frames are
# the final latents decoded; left out to keep the fixture small)
EXACT_STAGES = ("step*.guided", "step*.latents", "final_latents")


class Recorder:
    def __init__(self, out: dict):
        self.out, self.step, self.call, self.latents, self.windows, self.queue = out, 0, 0, None, [], None

    def put(self, name, value):
        if not BENCH:
            self.out[name] = value.detach().float().contiguous().clone()


R = Recorder(rec)


def on_ref_in(m, a):
    R.put("reference.latent", a[0])


def on_ref_out(m, a, o):
    for name, mod in m.named_modules():
        if getattr(mod, "bank", None):
            R.put("reference.bank." + name.rsplit(".transformer_blocks", 1)[0], mod.bank[0])


def on_denoise(m, a, o):
    x = a[0]
    lat = R.latents[0]
    index = []
    for f in range(x.shape[2]):
        hits = [k for k in range(lat.shape[1]) if torch.equal(lat[:, k].to(x.dtype), x[-1, :, f])]
        index.append(hits[0] if len(hits) == 1 else -1)
    R.windows.append((R.step, index))
    R.put(f"step{R.step}.call{R.call}.pred", o[0] if isinstance(o, tuple) else o.sample)
    R.call += 1


if not BENCH:
    pose_net.register_forward_hook(lambda m, i, o: R.put("pose_encoder", o))
    reference_unet.register_forward_pre_hook(on_ref_in)
    reference_unet.register_forward_hook(on_ref_out)
    denoising_unet.register_forward_hook(on_denoise)
_audio2feat, _chunks = audio_processor.audio2feat, audio_processor.feature2chunks


def audio2feat(audio):
    return _audio2feat(audio)


def feature2chunks(feature_array, fps):
    chunks = _chunks(feature_array=feature_array, fps=fps)
    R.put("audio.chunks", torch.from_numpy(chunks[:F]))  # the video's rows (it makes a few past the end)
    return chunks


audio_processor.audio2feat, audio_processor.feature2chunks = audio2feat, feature2chunks
_get_sched = pipeline_echomimicv2.get_context_scheduler


def get_context_scheduler(name):
    fn = _get_sched(name)

    def wrapped(*a, **kw):
        R.queue = list(fn(*a, **kw))
        return iter(R.queue)

    return wrapped


for module in (pipeline_echomimicv2, pipeline_echomimicv2_acc):
    module.get_context_scheduler = get_context_scheduler


def make_scheduler():
    sch = DDIMScheduler(**OmegaConf.to_container(inference_cfg.noise_scheduler_kwargs))  # infer.py:127-128
    _step = sch.step

    def step(model_output, timestep, sample, **kw):
        out = _step(model_output, timestep, sample, **kw)
        R.put(f"step{R.step}.guided", model_output)
        R.put(f"step{R.step}.latents", out.prev_sample)
        R.step, R.call, R.latents = R.step + 1, 0, out.prev_sample
        return out

    sch.step = step
    return sch


def run(dtype: torch.dtype, out: dict) -> dict:
    """One pipeline call (infer.py's, or infer_acc.py's with --pipeline acc) in ``dtype``, its stages into ``out``."""
    global R
    R = Recorder(out)
    RUN_DTYPE[0] = dtype
    pipeline_cls = (pipeline_echomimicv2_acc if ACC else pipeline_echomimicv2).EchoMimicV2Pipeline
    pipe = pipeline_cls(vae=vae, reference_unet=reference_unet, denoising_unet=denoising_unet, audio_guider=audio_processor,
                        pose_encoder=pose_net, scheduler=make_scheduler()).to("cpu", dtype=dtype)
    _prepare, _decode = pipe.prepare_latents_smooth, pipe.decode_latents

    def prepare_latents_smooth(*a, **kw):
        if dtype == torch.float64:  # the float32 run's very draw (a float64 draw gives other numbers), then cast
            a = list(a)
            a[5] = torch.float32  # (batch, channels, width, height, frames, dtype, device, generator, context)
            lat = _prepare(*a, **kw).to(dtype)
        else:
            lat = _prepare(*a, **kw)
        R.put("initial_latents", lat)
        R.latents = lat
        return lat

    def decode_latents(latents):
        R.put("final_latents", latents)
        video = _decode(latents)
        R.put("frames", torch.from_numpy(video))
        return video

    pipe.prepare_latents_smooth, pipe.decode_latents = prepare_latents_smooth, decode_latents
    poses = rec["input.poses"].to(dtype) / 255.0  # infer.py:194 torch.Tensor(drawing).to(dtype=weight_dtype) ... / 255.0
    generator = torch.manual_seed(420 + args.seed)  # infer.py:142 / infer_acc.py:167 torch.manual_seed(args.seed)
    if BENCH:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM: the peak from here on is the generation's (weights included)
    t1 = time.time()
    video = pipe(
        Image.fromarray(portrait.numpy()), waveform.numpy(), poses, S, S, F, args.steps, args.cfg,
        generator=generator, audio_sample_rate=16000, context_frames=args.context, fps=args.fps, context_overlap=args.overlap,
        start_idx=0,
    ).videos
    seconds = time.time() - t1
    print(f"{dtype} run: {seconds:.1f}s, video {tuple(video.shape)}", flush=True)
    if BENCH:
        with open("/proc/self/status") as fh:
            peak = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
        return {"seconds": seconds, "peak_rss": peak, "frames": int(video.shape[2])}
    return {"context_queue": R.queue, "windows_per_call": R.windows}


if BENCH:  # the whisper features are computed inside the pipeline call, so they are part of the timed run
    bench = [run(DTYPE, rec) for _ in range(args.bench)]
    print(json.dumps({"family": "echomimic-v2", "runs": [{k: r[k] for k in ("seconds", "peak_rss")} for r in bench],
                      "frames": bench[0]["frames"], "size": S, "steps": args.steps, "cfg": args.cfg,
                      "torch_threads": torch.get_num_threads()}))
    sys.exit(0)
main_run = run(DTYPE, rec)
bad = [k for k, v in rec.items() if v.is_floating_point() and not torch.isfinite(v).all()]
if bad:
    raise SystemExit(f"non-finite values in {bad}")
assert torch.equal(rec["initial_latents"], rec["input.noise"].clamp(-1.5, 1.5)), "the pipeline drew other noise"
if ACC:  # the same whisper front end as the standard run's fixture, which records it; 1.6 MB kept out of this one
    del rec["audio.chunks"]
if DTYPE != torch.float32:  # the recorded stages are half values (kept as float32 while recording): stored in half
    for k, v in rec.items():
        if not k.startswith("input.") and v.is_floating_point() and torch.equal(v.to(DTYPE).float(), v):
            rec[k] = v.to(DTYPE)
save_file(rec, os.path.join(out_dir, "stages.safetensors"))
exact_stages = None
if args.float64:
    import fnmatch

    for m in (reference_unet, denoising_unet, pose_net, vae):
        m.to(dtype=torch.float64)
    exact: dict[str, torch.Tensor] = {}
    exact_run = run(torch.float64, exact)
    assert exact_run == main_run, "the float64 run used other windows"
    assert torch.equal(exact["initial_latents"], rec["initial_latents"]), "the float64 run started from other noise"
    assert torch.equal(exact["audio.chunks"], rec["audio.chunks"]), "the float64 run had other whisper features"
    exact_stages = sorted(k for k in exact if any(fnmatch.fnmatchcase(k, pat) for pat in EXACT_STAGES))
    save_file({k: exact[k] for k in exact_stages}, os.path.join(out_dir, "float64.safetensors"))


def git(*a):
    return subprocess.run(["git", "-C", args.echo_src, *a], capture_output=True, text=True).stdout.strip()


def version(name):
    try:
        from importlib.metadata import version as v

        return v(name)
    except Exception:
        return None


code = ("src/pipelines/pipeline_echomimicv2_acc.py EchoMimicV2Pipeline.__call__, as infer_acc.py calls it" if ACC else
        "src/pipelines/pipeline_echomimicv2.py EchoMimicV2Pipeline.__call__, as infer.py calls it")
meta = {
    "original": {"repo": "https://github.com/antgroup/echomimic_v2", "commit": git("rev-parse", "HEAD"),
                 "code_path": code + "; poses drawn by src/utils/dwpose_util.py draw_pose_select_v2 as infer.py:183-196"},
    "packages": {n: version(n) for n in ("torch", "diffusers", "transformers", "numpy", "einops", "omegaconf", "safetensors",
                                         "opencv-python-headless", "matplotlib")},
    "python": platform.python_version(),
    "command": "python tools/parity/echomimic_v2_original.py " + " ".join(sys.argv[1:]),
    "settings": {"full": args.full, "pipeline": args.pipeline, "frames": F, "context_frames": args.context,
                 "context_overlap": args.overlap,
                 "steps": args.steps, "guidance_scale": args.cfg, "size": S, "fps": args.fps, "sample_rate": 16000,
                 "seed": args.seed, "dtype": args.dtype,
                 "scheduler": OmegaConf.to_container(inference_cfg.noise_scheduler_kwargs)},
    **main_run,
    "float64": None if exact_stages is None else {
        "file": "float64.safetensors", "stages": exact_stages,
        "what": "the same run with the modules, pipeline, pose images, bank and latents in float64 (the float32 run's "
                "initial noise and whisper features), stored as float32"},
    "whisper": {"dims": dataclasses.asdict(dims), "seed": whisper_seed, "spec": wspec, "sha256": digest(whisper_sd),
                "recipe": "tools/parity/common.py hashed_state_dict(spec, seed)"},
    "checkpoint": {"format": "EchoMimic v2 .pth files (torch.save of a dict), parameters from tools/parity/common.py "
                   "hashed_state_dict(keys marked 'hash', seed); 'buffer' keys from buffers.safetensors ('<file>:<key>')",
                   "files": file_specs},
    "vae": "vae/ (diffusers AutoencoderKL folder), weights tools/parity/common.py randomize_(vae, seed*100 + 13)",
    "assets": None if not args.assets else os.path.basename(os.path.normpath(args.assets)),  # vae/ + buffers live there
    "stages": {k: list(v.shape) for k, v in rec.items()},
}
with open(os.path.join(out_dir, "meta.json"), "w") as fh:
    json.dump(meta, fh, indent=1)
print(f"done in {time.time() - t0:.1f}s: {len(rec)} tensors -> {out_dir}")

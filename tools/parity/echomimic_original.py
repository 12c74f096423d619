"""EchoMimic v1 golden fixture: run the ORIGINAL EchoMimic code at a tiny size and record every stage.

Runs in the original's venv (see README.md here). It builds EchoMimic's own classes (reference UNet,
EchoUNet3DConditionModel with motion modules, FaceLocator, its whisper copy) at a tiny size whose
tensors match our ``tiny-echomimic`` config key for key, gives every parameter seeded random values
(zero-initialised ones too), writes the four ``.pth`` files in EchoMimic's format (to --work), builds a
tiny random diffusers ``AutoencoderKL``, and runs ``Audio2VideoPipeline.__call__`` (src/pipelines/
pipeline_echo_mimic.py) the way infer_audio2vid.py does: CFG on, context windows, DDIM. A second run
uses pipeline_echo_mimic_acc.py without CFG (the ``_acc`` settings). Hooks record the audio features,
the face-locator output, the reference latent and bank, every denoiser call (output of both guidance
branches), every guided prediction and the latents after each step, the final latents and the frames.

Fixture (OUT): stages.safetensors (inputs + stages), meta.json (commit, packages, command, settings, the
weight recipe: per file the key/shape list, seed and sha256), buffers.safetensors (the non-parameter
tensors of the .pth files: the motion modules' sinusoid tables), vae/ (diffusers folder). The model and
whisper parameters are not stored (22 MB at this size): they come from ``hashed_state_dict`` in
common.py, which the test runs again to write the same files, checked against the recorded sha256.

usage: python tools/parity/floor.py -- python tools/parity/echomimic_original.py --echo-src /work/parity/echomimic \
           --out tests/parity/echomimic [--work /tmp/echo-work] [--bank-fp16] [--dtype fp16] [--no-acc] [--no-long-audio]
(floor.py runs it with 2 then 1 threads and writes OUT/floor.json, the original's own noise; the harness uses
OMP_NUM_THREADS torch threads, 2 when it is not set.) ``--assets FIXTURE``: a second fixture of the same weights
(same --seed) reuses FIXTURE's buffers.safetensors and vae/ (checked tensor by tensor) and names it in meta.json.

``--dtype fp16`` runs the original as infer_audio2vid.py runs it by default (configs/prompts/animation.yaml:
``weight_dtype: 'fp16'``): the four networks, the VAE and the pipeline cast to half after loading (the files stay
fp32), the face mask in half, the reference bank in half (the original's own cast), the initial noise drawn in
half; whisper in half as its ``transcribe`` runs on a GPU (on a CPU it would fall back to fp32: patched below).

Deliberate changes to the original's run, all for an fp32 CPU comparison (documented in docs/parity.md):
* ``ReferenceAttentionControl.update`` keeps the bank in fp32 (its default casts to fp16), unless
  ``--bank-fp16``;
* ``register_reference_hooks`` builds its CFG mask on the CPU (its default device is cuda);
* the waveform is handed to ``audio2feat`` as an array (whisper's ``transcribe`` accepts one), so no
  ffmpeg decode is involved; whisper runs in fp32 (as ``transcribe`` does on a CPU), or with ``--dtype fp16``
  in half (as it does on a GPU: ``transcribe`` is shown a ``torch`` whose ``device("cpu")`` matches no model).
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
    synthetic_speech,
    tiny_whisper,
    whisper_as_on_a_gpu,
    write_part_files,
)

p = argparse.ArgumentParser()
p.add_argument("--echo-src", required=True, help="checkout of antgroup/echomimic at the pinned commit")
p.add_argument("--out", required=True, help="fixture folder to write")
p.add_argument("--work", default=None, help="scratch folder for the .pth / whisper .pt files (default: a temp folder)")
p.add_argument("--frames", type=int, default=14)
p.add_argument("--context", type=int, default=8)
p.add_argument("--overlap", type=int, default=2)
p.add_argument("--steps", type=int, default=3)
p.add_argument("--cfg", type=float, default=2.5)
p.add_argument("--size", type=int, default=64)
p.add_argument("--fps", type=int, default=24)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--bank-fp16", action="store_true", help="keep the original's fp16 cast of the reference bank")
p.add_argument("--full", action="store_true", help="full-size (SD1.5 / whisper-tiny) shapes; the .pth files go to OUT/checkpoint "
               "(~9 GB; ~10 GB RAM); use --size 128 on a CPU")
p.add_argument("--no-acc", action="store_true", help="skip the second (_acc, no CFG) run")
p.add_argument("--no-long-audio", action="store_true", help="skip the 31.5 s audio front-end check (a second fixture of the "
               "same weights needs it once)")
p.add_argument("--assets", default=None, metavar="FIXTURE",
               help="another fixture of the same --seed (e.g. tests/parity/echomimic): its buffers.safetensors and vae/ "
                    "are checked to be what this run would write and are used instead of a second copy")
p.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32",
               help="fp16: run as infer_audio2vid.py does with configs/prompts/animation.yaml's weight_dtype 'fp16' (every "
                    "module, the pipeline, the face mask and the reference bank in half; whisper in half as transcribe runs "
                    "it on a GPU); implies --no-acc --no-long-audio")
p.add_argument("--bench", type=int, default=0, metavar="R",
               help="time R runs of the main pipeline instead of recording stages (nothing written, the original's own "
                    "fp16 bank cast, torch's default threads); prints one JSON line")
args = p.parse_args()
BENCH = args.bench > 0
DTYPE = {"fp32": torch.float32, "fp16": torch.float16}[args.dtype]
if DTYPE == torch.float16:
    args.bank_fp16, args.no_acc, args.no_long_audio = True, True, True  # the bank: the original's own fp16 cast
if BENCH:
    args.bank_fp16, args.no_acc = True, True
else:  # tools/parity/floor.py sets OMP_NUM_THREADS for its two runs; 2 otherwise (the fixtures' count)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 2))
out_dir = os.path.abspath(args.out)
work = os.path.abspath(args.work or (os.path.join(out_dir, "checkpoint") if args.full else os.path.join(tempfile.gettempdir(), "echomimic-parity-work")))
os.makedirs(out_dir, exist_ok=True)
os.makedirs(work, exist_ok=True)

stub_xformers()
patch_checkpoint()
sys.path.insert(0, os.path.abspath(args.echo_src))
from diffusers import AutoencoderKL, DDIMScheduler  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from src.models.face_locator import FaceLocator  # noqa: E402
from src.models.mutual_self_attention import ReferenceAttentionControl  # noqa: E402
from src.models.unet_2d_condition import UNet2DConditionModel  # noqa: E402
from src.models.unet_3d_echo import EchoUNet3DConditionModel  # noqa: E402
from src.models.whisper.audio2feature import load_audio_model  # noqa: E402
from src.models.whisper.whisper.model import ModelDimensions, Whisper  # noqa: E402
from src.pipelines import context as echo_context  # noqa: E402
from src.pipelines import pipeline_echo_mimic, pipeline_echo_mimic_acc  # noqa: E402

# ---- run-time patches (see the module docstring) ----------------------------------------------------
patch_reference_control(ReferenceAttentionControl, None if args.bank_fp16 else (lambda: torch.float32))
if DTYPE == torch.float16:
    whisper_as_on_a_gpu()

# ---- tiny modules built with the original classes ------------------------------------------------------
t0 = time.time()
unet_common = dict(
    sample_size=args.size // 8, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64, 64), layers_per_block=1,
    attention_head_dim=2, norm_num_groups=8, flip_sin_to_cos=True, freq_shift=0,
)
if args.full:  # sd-image-variations-diffusers/unet (SD1.5 layout), as infer_audio2vid.py loads it
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
denoising_unet = EchoUNet3DConditionModel(
    down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
    up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
    mid_block_type="UNetMidBlock3DCrossAttn",
    **{**unet_common, **add_kwargs},  # cross_attention_dim 384 (whisper-tiny width) comes from inference_v2.yaml
)
face_locator = (FaceLocator(320, conditioning_channels=1, block_out_channels=(16, 32, 96, 256)) if args.full  # infer_audio2vid.py
                else FaceLocator(32, conditioning_channels=1, block_out_channels=(8, 8, 16, 16)))
vae = AutoencoderKL(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 8, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=args.size,
)
for m in (reference_unet, denoising_unet, face_locator, vae):
    m.requires_grad_(False).eval()
randomize_(vae, args.seed * 100 + 13)

# The model files' parameters come from hashed_state_dict (seed per file), so the fixture stores only the
# key/shape lists (meta.json) and the few non-parameter tensors (the motion modules' sinusoid tables);
# the test writes the same four .pth files again (torch.save of a plain dict, EchoMimic's format).
parts = {
    "reference_unet.pth": (reference_unet, lambda k: True),
    "denoising_unet.pth": (denoising_unet, lambda k: "motion_modules." not in k),
    "motion_module.pth": (denoising_unet, lambda k: "motion_modules." in k),
    "face_locator.pth": (face_locator, lambda k: True),
}
file_specs, buffers = write_part_files(parts, args.seed * 100 + 20, None if BENCH else work)
if not BENCH:
    save_or_check_assets(out_dir, args.assets, buffers, vae)
for m in (reference_unet, denoising_unet, face_locator, vae):  # the files stay fp32; infer_audio2vid.py casts on load
    m.to(dtype=DTYPE)

# whisper (EchoMimic's copy of openai-whisper): width 384 as whisper-tiny (audio2feature reshapes to 384), 2 blocks
whisper_seed = 7 + args.seed
dims, spec, whisper_sd = tiny_whisper(ModelDimensions, Whisper, whisper_seed, full=args.full)
whisper_path = os.path.join(out_dir if args.full else work, "whisper_tiny_random.pt")
if not (BENCH and os.path.isfile(whisper_path)):
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": whisper_sd}, whisper_path)
audio_processor = load_audio_model(model_path=whisper_path, device="cpu")
print(f"built in {time.time() - t0:.1f}s", flush=True)

# ---- inputs ---------------------------------------------------------------------------------------------------------
g = torch.Generator().manual_seed(1234 + args.seed)
S = args.size
yy, xx = torch.meshgrid(torch.linspace(-1, 1, S), torch.linspace(-1, 1, S), indexing="ij")
face = ((xx / 0.55) ** 2 + (yy / 0.7) ** 2 < 1).float()
portrait = torch.stack([0.35 + 0.3 * yy + 0.4 * face, 0.3 + 0.2 * xx + 0.3 * face, 0.5 - 0.2 * yy + 0.1 * face], -1)
portrait = ((portrait + 0.08 * torch.randn(S, S, 3, generator=g)).clamp(0, 1) * 255).round().to(torch.uint8)
face_mask = torch.zeros(S, S)
face_mask[S // 8 : S - S // 8, S // 5 : S - S // 5] = 1.0  # a dilated face box, as infer_audio2vid.py makes
n_samples = round(args.frames * 16000 / args.fps)  # exactly the frames' span: both sides see the same samples
t = torch.arange(n_samples, dtype=torch.float64) / 16000
pitch = 140 + 30 * torch.sin(2 * np.pi * 2.5 * t)
phase = 2 * np.pi * torch.cumsum(pitch, 0) / 16000
voiced = sum(torch.sin(k * phase) / k for k in range(1, 12))
envelope = 0.5 + 0.5 * torch.sin(2 * np.pi * 4 * t) ** 2
waveform = (0.3 * envelope * voiced + 0.02 * torch.randn(n_samples, generator=g, dtype=torch.float64)).float()

rec: dict[str, torch.Tensor] = {
    "input.portrait": portrait,
    "input.face_mask": face_mask,
    "input.waveform": waveform,
}
latent_shape = (1, 4, args.frames, S // 8, S // 8)
# what prepare_latents draws (randn_tensor in the run's dtype: fp16 gives fp32's draw rounded to half)
rec["input.noise"] = torch.randn(latent_shape, generator=torch.Generator().manual_seed(420 + args.seed)).to(DTYPE).float()


# ---- recording hooks --------------------------------------------------------------------------------------------
class Recorder:
    def __init__(self, prefix: str):
        self.prefix, self.step, self.call, self.latents, self.windows, self.queue = prefix, 0, 0, None, [], None

    def put(self, name, value):
        if BENCH:
            return
        if self.prefix and name.startswith(("audio.", "face_locator", "reference.", "initial_latents")):
            return  # same inputs as the main run (checked there)
        rec[self.prefix + name] = value.detach().float().contiguous().clone()


R = Recorder("")
handles = []


def hook(module, fn, pre=False):
    if BENCH:
        return
    handles.append(module.register_forward_pre_hook(fn) if pre else module.register_forward_hook(fn))


def on_face(m, i, o):
    R.put("face_locator", o)


def on_ref_in(m, a):
    R.put("reference.latent", a[0])


def on_ref_out(m, a, o):
    for name, mod in m.named_modules():
        if getattr(mod, "bank", None):
            R.put("reference.bank." + name.rsplit(".transformer_blocks", 1)[0], mod.bank[0])


def on_denoise(m, a, o):
    x = a[0]  # [2 or 1, C, f, h, w] scaled latents of one window
    lat = R.latents[0]  # [C, F, h, w]
    index = []
    for f in range(x.shape[2]):
        hits = [k for k in range(lat.shape[1]) if torch.equal(lat[:, k], x[-1, :, f])]
        index.append(hits[0] if len(hits) == 1 else -1)
    R.windows.append((R.step, index))
    R.put(f"step{R.step}.call{R.call}.pred", o[0] if isinstance(o, tuple) else o.sample)
    R.call += 1


hook(face_locator, on_face)
hook(reference_unet, on_ref_in, pre=True)
hook(reference_unet, on_ref_out)
hook(denoising_unet, on_denoise)

_audio2feat, _chunks = audio_processor.audio2feat, audio_processor.feature2chunks


def audio2feat(audio):
    feat = _audio2feat(audio)
    R.put("audio.whisper_steps", torch.from_numpy(feat))
    return feat


def feature2chunks(feature_array, fps):
    chunks = _chunks(feature_array=feature_array, fps=fps)
    R.put("audio.chunks", torch.from_numpy(chunks))
    return chunks


audio_processor.audio2feat, audio_processor.feature2chunks = audio2feat, feature2chunks
_get_sched = echo_context.get_context_scheduler


def get_context_scheduler(name):
    fn = _get_sched(name)

    def wrapped(*a, **kw):
        R.queue = list(fn(*a, **kw))
        return iter(R.queue)

    return wrapped


for mod in (pipeline_echo_mimic, pipeline_echo_mimic_acc):
    mod.get_context_scheduler = get_context_scheduler


def make_scheduler():
    sch = DDIMScheduler(**OmegaConf.to_container(inference_cfg.noise_scheduler_kwargs))
    _step = sch.step

    def step(model_output, timestep, sample, **kw):
        out = _step(model_output, timestep, sample, **kw)
        R.put(f"step{R.step}.guided", model_output)
        R.put(f"step{R.step}.latents", out.prev_sample)
        R.step += 1
        R.call = 0
        R.latents = out.prev_sample
        return out

    sch.step = step
    return sch


def run(pipeline_cls, prefix: str, cfg: float) -> dict:
    global R
    R = Recorder(prefix)
    pipe = pipeline_cls(vae=vae, reference_unet=reference_unet, denoising_unet=denoising_unet, audio_guider=audio_processor,
                        face_locator=face_locator, scheduler=make_scheduler()).to("cpu", dtype=DTYPE)
    _prepare, _decode = pipe.prepare_latents, pipe.decode_latents

    def prepare_latents(*a, **kw):
        lat = _prepare(*a, **kw)
        R.put("initial_latents", lat)
        R.latents = lat
        return lat

    def decode_latents(latents):
        R.put("final_latents", latents)
        video = _decode(latents)
        R.put("frames", torch.from_numpy(video))
        return video

    pipe.prepare_latents, pipe.decode_latents = prepare_latents, decode_latents
    generator = torch.manual_seed(420 + args.seed)  # infer_audio2vid.py: torch.manual_seed(args.seed)
    if BENCH:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM: the peak from here on is the generation's (weights included)
    t1 = time.time()
    video = pipe(
        Image.fromarray(portrait.numpy()), waveform.numpy(), face_mask[None, None, None].to(DTYPE), S, S, args.frames,
        args.steps, cfg,
        generator=generator, audio_sample_rate=16000, context_frames=args.context, fps=args.fps, context_overlap=args.overlap,
    ).videos
    seconds = time.time() - t1
    print(f"{prefix or 'main '}run: {seconds:.1f}s, video {tuple(video.shape)}", flush=True)
    if BENCH:
        with open("/proc/self/status") as fh:
            peak = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
        return {"seconds": seconds, "peak_rss": peak, "frames": int(video.shape[2])}
    return {"guidance_scale": cfg, "context_queue": R.queue, "windows_per_call": R.windows}


if BENCH:  # the whisper features are computed inside the pipeline call, so they are part of the timed run
    bench = [run(pipeline_echo_mimic.Audio2VideoPipeline, "", args.cfg) for _ in range(args.bench)]
    print(json.dumps({"family": "echomimic", "runs": [{k: r[k] for k in ("seconds", "peak_rss")} for r in bench],
                      "frames": bench[0]["frames"], "size": S, "steps": args.steps, "cfg": args.cfg,
                      "torch_threads": torch.get_num_threads()}))
    sys.exit(0)
runs = {"main": run(pipeline_echo_mimic.Audio2VideoPipeline, "", args.cfg)}
if not args.no_acc:
    runs["acc"] = run(pipeline_echo_mimic_acc.Audio2VideoPipeline, "acc.", 1.0)

# Long audio (31.5 s: two of whisper's 30 s segments, the second one short): the original's audio2feat +
# feature2chunks on common.synthetic_speech; rows around the segment boundary (frame 720) and the clamped end.
long_frames = int(31.5 * args.fps)
if not args.no_long_audio:
    long_wave = synthetic_speech(round(long_frames * 16000 / args.fps))
    long_chunks = torch.from_numpy(_chunks(feature_array=_audio2feat(long_wave), fps=args.fps))
    long_rows = [0, 1, 2, 100, 400] + list(range(args.fps * 30 - 6, args.fps * 30 + 6)) + list(range(long_frames - 4, long_frames))
    rec["audio_long.rows"] = torch.tensor(long_rows)
    rec["audio_long.chunks"] = long_chunks[long_rows].float().contiguous()
for h in handles:
    h.remove()

bad = [k for k, v in rec.items() if v.is_floating_point() and not torch.isfinite(v).all()]
if bad:
    raise SystemExit(f"non-finite values in {bad}")
assert torch.equal(rec["initial_latents"], rec["input.noise"].clamp(-1.5, 1.5)), "the pipeline drew other noise"
if DTYPE != torch.float32:  # the recorded stages are half values (kept as float32 while recording): stored in half
    for k, v in rec.items():
        if not k.startswith("input.") and v.is_floating_point() and torch.equal(v.to(DTYPE).float(), v):
            rec[k] = v.to(DTYPE)
save_file(rec, os.path.join(out_dir, "stages.safetensors"))


def git(*a):
    return subprocess.run(["git", "-C", args.echo_src, *a], capture_output=True, text=True).stdout.strip()


def version(name):
    try:
        from importlib.metadata import version as v

        return v(name)
    except Exception:
        return None


meta = {
    "original": {"repo": "https://github.com/antgroup/echomimic", "commit": git("rev-parse", "HEAD"),
                 "code_path": "src/pipelines/pipeline_echo_mimic.py Audio2VideoPipeline.__call__ (+ _acc), as infer_audio2vid.py"},
    "packages": {n: version(n) for n in ("torch", "diffusers", "transformers", "numpy", "einops", "omegaconf", "safetensors")},
    "python": platform.python_version(),
    "command": "python tools/parity/echomimic_original.py " + " ".join(sys.argv[1:]),
    "audio_long": None if args.no_long_audio else {
        "frames": long_frames, "waveform": "tools/parity/common.py synthetic_speech(round(frames * 16000 / fps))"},
    "settings": {"full": args.full, "frames": args.frames, "context_frames": args.context, "context_overlap": args.overlap, "steps": args.steps,
                 "size": S, "fps": args.fps, "sample_rate": 16000, "seed": args.seed, "bank_fp16": args.bank_fp16,
                 "dtype": args.dtype,
                 "scheduler": OmegaConf.to_container(inference_cfg.noise_scheduler_kwargs)},
    "runs": runs,
    "whisper": {"dims": dataclasses.asdict(dims), "seed": whisper_seed, "spec": spec, "sha256": digest(whisper_sd),
                "recipe": "tools/parity/common.py hashed_state_dict(spec, seed)"},
    "checkpoint": {"format": "EchoMimic v1 .pth files (torch.save of a dict), parameters from tools/parity/common.py "
                   "hashed_state_dict(keys marked 'hash', seed); 'buffer' keys from buffers.safetensors ('<file>:<key>')",
                   "files": file_specs},
    "vae": "vae/ (diffusers AutoencoderKL folder), weights tools/parity/common.py randomize_(vae, seed*100 + 13)",
    "assets": None if not args.assets else os.path.basename(os.path.normpath(args.assets)),  # vae/ + buffers live there
    "stages": {k: list(v.shape) for k, v in rec.items()},
}
with open(os.path.join(out_dir, "meta.json"), "w") as fh:
    json.dump(meta, fh, indent=1)
print(f"done in {time.time() - t0:.1f}s: {len(rec)} tensors -> {out_dir}")

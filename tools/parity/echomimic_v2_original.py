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

Fixture (OUT, < 3 MB): stages.safetensors (inputs + stages; ``input.hands`` / ``input.hands_score`` are the keypoints,
``input.poses`` the original's drawing of them as uint8; ``audio.chunks`` the video's rows), meta.json (commit, packages, command, settings, the weight recipe),
buffers.safetensors (the motion modules' sinusoid tables), vae/.

usage: python tools/parity/floor.py -- python tools/parity/echomimic_v2_original.py --echo-src /work/parity/echomimic_v2 \
           --out tests/parity/echomimic_v2

Deliberate changes to the original's run, all for an fp32 CPU comparison:
* ``ReferenceAttentionControl.update`` keeps the bank in fp32 (its default casts to fp16);
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
from common import digest, hashed_state_dict, patch_checkpoint, randomize_, stub_xformers  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--echo-src", required=True, help="checkout of antgroup/echomimic_v2 at the pinned commit")
p.add_argument("--out", required=True, help="fixture folder to write")
p.add_argument("--work", default=None, help="scratch folder for the .pth / whisper .pt files (default: a temp folder)")
p.add_argument("--frames", type=int, default=16)
p.add_argument("--context", type=int, default=6)
p.add_argument("--overlap", type=int, default=2)
p.add_argument("--steps", type=int, default=2)
p.add_argument("--cfg", type=float, default=4.5)
p.add_argument("--size", type=int, default=64)
p.add_argument("--fps", type=int, default=24)
p.add_argument("--seed", type=int, default=0)
args = p.parse_args()
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 2))  # floor.py sets it for its two runs
out_dir = os.path.abspath(args.out)
work = os.path.abspath(args.work or os.path.join(tempfile.gettempdir(), "echomimic-v2-parity-work"))
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
from src.pipelines import pipeline_echomimicv2  # noqa: E402
from src.utils.dwpose_util import draw_pose_select_v2  # noqa: E402

# ---- run-time patches (see the module docstring) ----------------------------------------------------
_hooks = ReferenceAttentionControl.register_reference_hooks
_hooks.__defaults__ = tuple(torch.device("cpu") if isinstance(d, torch.device) else d for d in _hooks.__defaults__)
_update = ReferenceAttentionControl.update


def update_fp32(self, writer, do_classifier_free_guidance=False, dtype=torch.float16):
    return _update(self, writer, do_classifier_free_guidance=do_classifier_free_guidance, dtype=torch.float32)


ReferenceAttentionControl.update = update_fp32

# ---- tiny modules built with the original classes ------------------------------------------------------
t0 = time.time()
unet_common = dict(
    sample_size=args.size // 8, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64, 64), layers_per_block=1,
    attention_head_dim=2, norm_num_groups=8, flip_sin_to_cos=True, freq_shift=0,
)
reference_unet = UNet2DConditionModel(
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=384, **unet_common,
)
inference_cfg = OmegaConf.load(os.path.join(args.echo_src, "configs/inference/inference_v2.yaml"))
add_kwargs = OmegaConf.to_container(inference_cfg.unet_additional_kwargs)
add_kwargs["motion_module_kwargs"]["num_attention_heads"] = 2  # tiny (full size: 8, from inference_v2.yaml)
denoising_unet = EMOUNet3DConditionModel(
    down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
    up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
    mid_block_type="UNetMidBlock3DCrossAttn",
    **{**unet_common, **add_kwargs},
)
# infer.py:117 PoseEncoder(320, conditioning_channels=3, block_out_channels=(16, 32, 96, 256)); tiny widths here
pose_net = PoseEncoder(32, conditioning_channels=3, block_out_channels=(8, 8, 16, 16))
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
file_specs, buffers, loaded = {}, {}, {id(m): set() for m, _ in parts.values()}
for i, (fname, (module, keep)) in enumerate(parts.items()):
    params = dict(module.named_parameters())
    state = {k: v for k, v in module.state_dict().items() if keep(k)}
    spec = [(k, list(v.shape)) for k, v in state.items() if k in params]
    seed = args.seed * 100 + 40 + i
    values = hashed_state_dict(spec, seed)
    for k, v in state.items():
        if k not in params:
            buffers[fname + ":" + k] = v.contiguous().clone()
    sd = {k: values[k] if k in values else v.clone() for k, v in state.items()}
    file_specs[fname] = {"seed": seed, "keys": [[k, list(v.shape), "hash" if k in values else "buffer"] for k, v in state.items()],
                         "sha256": digest(sd)}
    torch.save(sd, os.path.join(work, fname))
    module.load_state_dict(sd, strict=False)
    loaded[id(module)] |= set(sd)
for module, _ in parts.values():
    assert loaded[id(module)] == set(module.state_dict()), "the files do not cover the module"
save_file(buffers, os.path.join(out_dir, "buffers.safetensors"))
vae.save_pretrained(os.path.join(out_dir, "vae"), safe_serialization=True)

dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=2, n_audio_layer=2,
                       n_vocab=16, n_text_ctx=8, n_text_state=8, n_text_head=1, n_text_layer=1)
whisper_seed = 7 + args.seed
wspec = [(k, list(v.shape)) for k, v in Whisper(dims).state_dict().items()]
whisper_sd = hashed_state_dict(wspec, whisper_seed)
whisper_path = os.path.join(work, "whisper_tiny_random.pt")
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
rec["input.noise"] = torch.randn(latent_shape, generator=torch.Generator().manual_seed(420 + args.seed))


# ---- recording hooks --------------------------------------------------------------------------------------------
class Recorder:
    step, call, latents, windows, queue = 0, 0, None, [], None


R = Recorder()


def put(name, value):
    rec[name] = value.detach().float().contiguous().clone()


def on_ref_in(m, a):
    put("reference.latent", a[0])


def on_ref_out(m, a, o):
    for name, mod in m.named_modules():
        if getattr(mod, "bank", None):
            put("reference.bank." + name.rsplit(".transformer_blocks", 1)[0], mod.bank[0])


def on_denoise(m, a, o):
    x = a[0]
    lat = R.latents[0]
    index = []
    for f in range(x.shape[2]):
        hits = [k for k in range(lat.shape[1]) if torch.equal(lat[:, k], x[-1, :, f])]
        index.append(hits[0] if len(hits) == 1 else -1)
    R.windows.append((R.step, index))
    put(f"step{R.step}.call{R.call}.pred", o[0] if isinstance(o, tuple) else o.sample)
    R.call += 1


pose_net.register_forward_hook(lambda m, i, o: put("pose_encoder", o))
reference_unet.register_forward_pre_hook(on_ref_in)
reference_unet.register_forward_hook(on_ref_out)
denoising_unet.register_forward_hook(on_denoise)
_audio2feat, _chunks = audio_processor.audio2feat, audio_processor.feature2chunks


def audio2feat(audio):
    return _audio2feat(audio)


def feature2chunks(feature_array, fps):
    chunks = _chunks(feature_array=feature_array, fps=fps)
    put("audio.chunks", torch.from_numpy(chunks[:F]))  # the video's rows (it makes a few past the end)
    return chunks


audio_processor.audio2feat, audio_processor.feature2chunks = audio2feat, feature2chunks
_get_sched = pipeline_echomimicv2.get_context_scheduler


def get_context_scheduler(name):
    fn = _get_sched(name)

    def wrapped(*a, **kw):
        R.queue = list(fn(*a, **kw))
        return iter(R.queue)

    return wrapped


pipeline_echomimicv2.get_context_scheduler = get_context_scheduler
sch = DDIMScheduler(**OmegaConf.to_container(inference_cfg.noise_scheduler_kwargs))  # infer.py:127-128
_step = sch.step


def step(model_output, timestep, sample, **kw):
    out = _step(model_output, timestep, sample, **kw)
    put(f"step{R.step}.guided", model_output)
    put(f"step{R.step}.latents", out.prev_sample)
    R.step, R.call, R.latents = R.step + 1, 0, out.prev_sample
    return out


sch.step = step
pipe = pipeline_echomimicv2.EchoMimicV2Pipeline(vae=vae, reference_unet=reference_unet, denoising_unet=denoising_unet,
                                                audio_guider=audio_processor, pose_encoder=pose_net, scheduler=sch).to("cpu")
_prepare, _decode = pipe.prepare_latents_smooth, pipe.decode_latents


def prepare_latents_smooth(*a, **kw):
    lat = _prepare(*a, **kw)
    put("initial_latents", lat)
    R.latents = lat
    return lat


def decode_latents(latents):
    put("final_latents", latents)
    video = _decode(latents)
    put("frames", torch.from_numpy(video))
    return video


pipe.prepare_latents_smooth, pipe.decode_latents = prepare_latents_smooth, decode_latents
generator = torch.manual_seed(420 + args.seed)  # infer.py:142 torch.manual_seed(args.seed)
t1 = time.time()
video = pipe(
    Image.fromarray(portrait.numpy()), waveform.numpy(), poses_tensor, S, S, F, args.steps, args.cfg,
    generator=generator, audio_sample_rate=16000, context_frames=args.context, fps=args.fps, context_overlap=args.overlap,
    start_idx=0,
).videos
print(f"run: {time.time() - t1:.1f}s, video {tuple(video.shape)}", flush=True)

bad = [k for k, v in rec.items() if v.is_floating_point() and not torch.isfinite(v).all()]
if bad:
    raise SystemExit(f"non-finite values in {bad}")
assert torch.equal(rec["initial_latents"], rec["input.noise"].clamp(-1.5, 1.5)), "the pipeline drew other noise"
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
    "original": {"repo": "https://github.com/antgroup/echomimic_v2", "commit": git("rev-parse", "HEAD"),
                 "code_path": "src/pipelines/pipeline_echomimicv2.py EchoMimicV2Pipeline.__call__, as infer.py calls it; "
                              "poses drawn by src/utils/dwpose_util.py draw_pose_select_v2 as infer.py:183-196"},
    "packages": {n: version(n) for n in ("torch", "diffusers", "transformers", "numpy", "einops", "omegaconf", "safetensors",
                                         "opencv-python-headless", "matplotlib")},
    "python": platform.python_version(),
    "command": "python tools/parity/echomimic_v2_original.py " + " ".join(sys.argv[1:]),
    "settings": {"frames": F, "context_frames": args.context, "context_overlap": args.overlap, "steps": args.steps,
                 "guidance_scale": args.cfg, "size": S, "fps": args.fps, "sample_rate": 16000, "seed": args.seed,
                 "scheduler": OmegaConf.to_container(inference_cfg.noise_scheduler_kwargs)},
    "context_queue": R.queue,
    "windows_per_call": R.windows,
    "whisper": {"dims": dataclasses.asdict(dims), "seed": whisper_seed, "spec": wspec, "sha256": digest(whisper_sd),
                "recipe": "tools/parity/common.py hashed_state_dict(spec, seed)"},
    "checkpoint": {"format": "EchoMimic v2 .pth files (torch.save of a dict), parameters from tools/parity/common.py "
                   "hashed_state_dict(keys marked 'hash', seed); 'buffer' keys from buffers.safetensors ('<file>:<key>')",
                   "files": file_specs},
    "vae": "vae/ (diffusers AutoencoderKL folder), weights tools/parity/common.py randomize_(vae, seed*100 + 13)",
    "stages": {k: list(v.shape) for k, v in rec.items()},
}
with open(os.path.join(out_dir, "meta.json"), "w") as fh:
    json.dump(meta, fh, indent=1)
print(f"done in {time.time() - t0:.1f}s: {len(rec)} tensors -> {out_dir}")

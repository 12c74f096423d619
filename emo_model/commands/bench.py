"""``python -m emo_model bench``: seconds per output frame and peak memory, optimised vs naive.

Rows (random weights: speed does not depend on them):

* ``tiny`` on the CPU: the tiny config at 64x64;
* ``emo`` at 512x512 when CUDA is present: the paper's recipe (40 DDIM steps, classic CFG, 12 frames
  + 4 motion frames at 30 fps), bf16/fp16, SDPA; plus peak VRAM for 10 s and 60 s of audio (2 steps:
  memory does not depend on the step count) to show that memory does not grow with the audio.

Every speed row also runs the naive baseline in the same process: ReferenceNet recomputed at every
step, fp32, guidance branches as separate forwards. Both are warmed up, then timed interleaved and the
best of several repetitions is kept, so other load on the machine affects both alike. Each row runs
in its own subprocess so its peak memory (process RSS; GPU peak per run) is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", default="auto", help="comma-separated rows: tiny, emo, emo-memory (auto: tiny, plus emo rows on CUDA)")
    p.add_argument("--seconds", type=float, default=2.0, help="audio length of the tiny row [%(default)s]")
    p.add_argument("--steps", type=int, default=10, help="denoising steps of the tiny row [%(default)s]")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--worker", help=argparse.SUPPRESS)


def _tiny_vae(latent_channels: int):
    from diffusers import AutoencoderKL

    blocks = 4
    return AutoencoderKL(
        block_out_channels=(16, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=8,
    )


def _sd_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
    )


def _setup(config: str, device: str, dtype: torch.dtype, naive: bool):
    from ..model import EMOModel
    from ..pipeline import EMOPipeline, SamplingSettings
    from ..vae import DiffusersVAE

    torch.manual_seed(0)
    with torch.device(device):
        model = EMOModel(config).to(dtype).eval()
        vae = (_tiny_vae(model.config.latent_channels) if config == "tiny" else _sd_vae()).to(dtype).eval()
    return EMOPipeline(model, DiffusersVAE(vae), device=device), SamplingSettings


def _timed(pipe, settings_cls, feats, steps: int, naive: bool, device: str) -> tuple[float, int | None]:
    """One generation (portrait encoding included); returns (seconds, peak GPU bytes)."""
    cfg = pipe.config
    settings = settings_cls.from_preset(cfg.preset, steps=steps, batch_guidance=not naive, reference_every_step=naive)
    image = torch.rand(cfg.preset.resolution, cfg.preset.resolution, 3, generator=torch.Generator().manual_seed(0))
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    pipe.generate(pipe.encode_reference(image), feats, settings=settings, sink=lambda f: None)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0, (torch.cuda.max_memory_allocated() if cuda else None)


def _worker(spec: dict) -> dict:
    """Optimised and (optionally) naive runs of one row in this process, interleaved, best of N."""
    device, frames_cap = spec["device"], spec.get("naive_frames")
    pipe, settings_cls = _setup(spec["config"], device, getattr(torch, spec["dtype"]), naive=False)
    cfg = pipe.config
    frames = int(round(spec["seconds"] * cfg.preset.fps))
    a = cfg.audio
    feats = torch.randn(frames, a.window, a.layers, a.dim, generator=torch.Generator().manual_seed(1))
    runs = {"optimised": (pipe, feats)}
    if spec.get("naive"):
        naive_pipe, _ = _setup(spec["config"], device, torch.float32, naive=True)
        runs["naive"] = (naive_pipe, feats[:frames_cap] if frames_cap else feats)
    for name, (p, f) in runs.items():  # warm-up: kernels, allocator
        _timed(p, settings_cls, f[: cfg.preset.frames_per_clip], 1, name == "naive", device)
    best: dict[str, tuple[float, int | None]] = {}
    for _ in range(spec.get("repeats", 3)):
        for name, (p, f) in runs.items():
            seconds, peak = _timed(p, settings_cls, f, spec["steps"], name == "naive", device)
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, peak)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    out = {"spec": spec, "peak_rss": rss}
    for name, (seconds, peak) in best.items():
        n = len(runs[name][1])
        out[name] = {"frames": n, "seconds": seconds, "s_per_frame": seconds / n, "peak_gpu": peak}
    return out


def _spawn(spec: dict) -> dict:  # noqa: D103
    env = dict(os.environ)
    out = subprocess.run(
        [sys.executable, "-m", "emo_model", "bench", "--worker", json.dumps(spec)], capture_output=True, text=True, env=env
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark row {spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _rows(args) -> list[tuple[str, dict]]:
    cuda = torch.cuda.is_available()
    names = (["tiny"] + (["emo", "emo-memory"] if cuda else [])) if args.rows == "auto" else args.rows.split(",")
    half = "bfloat16" if cuda and torch.cuda.is_bf16_supported() else "float16"
    rows = []
    for name in names:
        if name == "tiny":
            spec = dict(config="tiny", device="cpu", dtype="float32", seconds=args.seconds, steps=args.steps, naive=True)
            rows.append(("tiny, CPU, 64x64", spec))
        elif name == "emo":
            # the naive baseline on 2 clips (24 frames) is enough for its per-frame rate
            spec = dict(config="emo", device="cuda", dtype=half, seconds=10.0, steps=40, naive=True, naive_frames=24, repeats=1)
            rows.append(("emo, 512x512, 40 DDIM + CFG, 10 s", spec))
        elif name == "emo-memory":
            for secs in (10.0, 60.0):
                spec = dict(config="emo", device="cuda", dtype=half, seconds=secs, steps=2, naive=False, repeats=1)
                rows.append((f"emo memory, {secs:g} s of audio (2 steps)", spec))
        else:
            raise SystemExit(f"error: unknown benchmark row {name!r} (tiny, emo, emo-memory)")
    return rows


def _gb(n) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GB"


def run(args: argparse.Namespace) -> int:
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0
    results = []
    header = f"{'row':40} {'frames':>6} {'s/frame':>9} {'naive s/frame':>14} {'speed-up':>9} {'peak GPU':>10} {'naive GPU':>10} {'peak RSS':>9}"
    print(header)
    print("-" * len(header))
    for label, spec in _rows(args):
        res = _spawn(spec)
        opt, naive = res["optimised"], res.get("naive")
        ratio = naive["s_per_frame"] / opt["s_per_frame"] if naive else None
        results.append({"row": label, **res, "speedup": ratio})
        print(
            f"{label:40} {opt['frames']:>6} {opt['s_per_frame']:>9.3f} "
            f"{(naive['s_per_frame'] if naive else float('nan')):>14.3f} {(ratio or float('nan')):>8.2f}x "
            f"{_gb(opt['peak_gpu']):>10} {_gb(naive['peak_gpu'] if naive else None):>10} {_gb(res['peak_rss']):>9}"
        )
    if not torch.cuda.is_available():
        print("(no CUDA device: the full-size emo rows need a GPU; anchors: EMO paper 1.25 s/frame, goal <= 0.30 s/frame on an H100)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0

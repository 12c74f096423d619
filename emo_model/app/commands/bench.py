"""``python -m emo_model bench``: seconds per output frame and peak memory, default recipe vs fast mode.

Rows (random weights: speed does not depend on them):

* ``tiny`` on the CPU: the tiny config at 64x64;
* ``emo`` (CUDA by default): the paper's recipe (40 DDIM steps, classic CFG, 12 frames + 4 motion frames at
  30 fps) at 512x512, bf16/fp16, SDPA, beside the fast mode (``--fast``);
* ``emo-memory``: peak memory for 10 s and 60 s of audio (2 steps: memory does not depend on the step
  count), to show that memory does not grow with the audio.

``--config tiny --device cpu --size 64`` runs the emo rows at a reduced size on any machine (the test does).
The default and fast runs of a row are warmed up, then timed interleaved in one process and the best of
several repetitions is kept, so other load on the machine affects both alike; each row runs in its own
subprocess so its peak memory (process RSS; GPU peak per run) is its own. ``--naive`` adds the old
regression check (ReferenceNet every step, fp32, separate guidance forwards); it is nobody's real code, so it
is not a headline. Against the originals' own pipelines: ``--against-original`` (``bench_original.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time

import torch

from ...validation import InputError, check_optional
from . import bench_original


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", default="auto", help="comma-separated rows: tiny, emo, emo-memory (auto: tiny, plus emo rows on CUDA)")
    p.add_argument("--seconds", type=float, default=2.0, help="audio length of the tiny row [%(default)s]")
    p.add_argument("--steps", type=int, default=10, help="denoising steps of the tiny row [%(default)s]")
    p.add_argument("--config", default="emo", choices=("emo", "tiny"), help="model config of the emo rows [%(default)s]")
    p.add_argument("--device", default="auto", help="device of the emo rows: auto (CUDA if present), cuda, cpu [%(default)s]")
    p.add_argument("--size", type=int, default=None, help="frame size of the emo rows (default: the config's, 512 for emo)")
    p.add_argument("--emo-seconds", type=float, default=10.0, help="audio length of the emo speed row [%(default)s]")
    p.add_argument("--emo-steps", type=int, default=40, help="DDIM steps of the emo speed row [%(default)s]")
    p.add_argument("--memory-seconds", default="10,60", help="audio lengths of the emo-memory rows [%(default)s]")
    p.add_argument("--repeats", type=int, default=None, help="timed repetitions per run, best kept (default: 3 tiny, 1 emo)")
    p.add_argument("--naive", action="store_true", help="also time the naive regression check (not a headline)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    bench_original.add_arguments(p)


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
    from ...network.model import EMOModel
    from ...network.vae import DiffusersVAE
    from ...sampling.pipeline import EMOPipeline
    from ...sampling.settings import SamplingSettings

    torch.manual_seed(0)
    with torch.device(device):
        model = EMOModel(config).to(dtype).eval()
        vae = (_tiny_vae(model.config.latent_channels) if config == "tiny" else _sd_vae()).to(dtype).eval()
    return EMOPipeline(model, DiffusersVAE(vae), device=device), SamplingSettings


def _timed(pipe, settings, feats, device: str) -> tuple[float, int | None]:
    """One generation (portrait encoding included); returns (seconds, peak GPU bytes)."""
    cfg = pipe.config
    side = settings.get("size") or cfg.preset.resolution
    image = torch.rand(side, side, 3, generator=torch.Generator().manual_seed(0))
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    pipe.generate(pipe.encode_reference(image, size=side), feats, settings=settings["settings"], sink=lambda f: None)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0, (torch.cuda.max_memory_allocated() if cuda else None)


def _worker(spec: dict) -> dict:
    """The default recipe, the fast mode and (optionally) the naive check of one row in this process,
    interleaved, best of N."""
    from ...sampling.settings import fast_settings

    device = spec["device"]
    pipe, settings_cls = _setup(spec["config"], device, getattr(torch, spec["dtype"]), naive=False)
    cfg = pipe.config
    frames = max(1, round(spec["seconds"] * cfg.preset.fps))
    a = cfg.audio
    feats = torch.randn(frames, a.window, a.layers, a.dim, generator=torch.Generator().manual_seed(1))
    base = {"steps": spec["steps"]}
    runs = {"default": (pipe, settings_cls.from_preset(cfg.preset, **base), feats)}
    if spec.get("fast"):
        # the fast mode relative to this row's step count (as --fast is to the preset's)
        fast = fast_settings(dataclasses.replace(cfg.preset, steps=spec["steps"]))
        runs["fast"] = (pipe, settings_cls.from_preset(cfg.preset, **fast), feats)
    if spec.get("naive"):
        naive_pipe, _ = _setup(spec["config"], device, torch.float32, naive=True)
        cap = spec.get("naive_frames")
        naive = settings_cls.from_preset(cfg.preset, **base, batch_guidance=False, reference_every_step=True)
        runs["naive"] = (naive_pipe, naive, feats[:cap] if cap else feats)
    for p, st, f in runs.values():  # warm-up: kernels, allocator; two clips, so the motion-frame path is warm too
        warm = dataclasses.replace(st, steps=1)
        _timed(p, {"settings": warm, "size": spec.get("size")}, f[: 2 * cfg.preset.frames_per_clip], device)
    best: dict[str, tuple[float, int | None]] = {}
    for _ in range(spec.get("repeats", 3)):
        for name, (p, st, f) in runs.items():
            seconds, peak = _timed(p, {"settings": st, "size": spec.get("size")}, f, device)
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, peak)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    out = {"spec": spec, "peak_rss": rss}
    for name, (seconds, peak) in best.items():
        n = len(runs[name][2])
        out[name] = {"frames": n, "steps": runs[name][1].steps, "seconds": seconds, "s_per_frame": seconds / n, "peak_gpu": peak}
    return out


def _spawn(spec: dict) -> dict:
    env = dict(os.environ)
    out = subprocess.run(
        [sys.executable, "-m", "emo_model", "bench", "--worker", json.dumps(spec)], capture_output=True, text=True, env=env, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark row {spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _rows(args) -> list[tuple[str, dict]]:
    cuda = torch.cuda.is_available()
    device = ("cuda" if cuda else "cpu") if args.device == "auto" else args.device
    if device.startswith("cuda") and not cuda:
        raise InputError("--device cuda, but no CUDA device is available; use --device cpu (with --config tiny)")
    names = (["tiny"] + (["emo", "emo-memory"] if cuda else [])) if args.rows == "auto" else args.rows.split(",")
    half = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if device.startswith("cuda") else "float32"
    size = check_optional("size", args.size, label="--size")  # on every device (a bad size used to reach the CPU worker)
    label_size = f"{size or 512}x{size or 512}" if args.config == "emo" else f"{size or 64}x{size or 64}"
    emo = {"config": args.config, "device": device, "dtype": half, "size": size}
    rows = []
    for name in names:
        if name == "tiny":
            spec = {"config": "tiny", "device": "cpu", "dtype": "float32", "seconds": args.seconds, "steps": args.steps, "fast": True,
                        "naive": args.naive, "repeats": args.repeats or 3}
            rows.append(("tiny, CPU, 64x64", spec))
        elif name == "emo":
            # the naive check on 2 clips (24 frames) is enough for its per-frame rate
            spec = dict(emo, seconds=args.emo_seconds, steps=args.emo_steps, fast=True, naive=args.naive, naive_frames=24,
                        repeats=args.repeats or 1)
            rows.append((f"{args.config}, {device}, {label_size}, {args.emo_steps} DDIM + CFG, {args.emo_seconds:g} s", spec))
        elif name == "emo-memory":
            for secs in (float(x) for x in args.memory_seconds.split(",")):
                spec = dict(emo, seconds=secs, steps=2, fast=False, naive=False, repeats=1)
                rows.append((f"{args.config} memory, {device}, {secs:g} s of audio (2 steps)", spec))
        else:
            raise InputError(f"--rows: unknown benchmark row {name!r}; choose from tiny, emo, emo-memory (comma-separated)")
    return rows


def _write_json(path: str, results: list[dict]) -> None:
    """Write the rows so far whole: a temporary file renamed over the target, never a half-written one."""
    tmp = f"{path}.partial"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, path)


def _gb(n) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GB"


def run(args: argparse.Namespace) -> int:
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0
    if args.against_original or args.worker_original:
        return bench_original.run(args)
    results = []
    rows = _rows(args)  # a bad flag is refused before anything is printed
    header = (f"{'row':52} {'frames':>6} {'steps':>5} {'s/frame':>9} {'fast s/frame':>12} {'fast speed-up':>13} "
              f"{'peak GPU':>10} {'peak RSS':>9}")
    print(header)
    print("-" * len(header), flush=True)
    for label, spec in rows:
        res = _spawn(spec)
        d, fast, naive = res["default"], res.get("fast"), res.get("naive")
        ratio = d["s_per_frame"] / fast["s_per_frame"] if fast else None
        results.append({"row": label, **res, "fast_speedup": ratio})
        fast_cols = f"{fast['s_per_frame']:>12.3f} {ratio:>12.2f}x" if fast else f"{'-':>12} {'-':>13}"
        print(f"{label:52} {d['frames']:>6} {d['steps']:>5} {d['s_per_frame']:>9.3f} {fast_cols} {_gb(d['peak_gpu']):>10} {_gb(res['peak_rss']):>9}")
        if naive:
            print(f"{'  (regression check: naive path)':52} {naive['frames']:>6} {naive['steps']:>5} {naive['s_per_frame']:>9.3f}")
        sys.stdout.flush()
        if args.json:  # after every row: a long row that is stopped (a device's time limit) loses only itself
            _write_json(args.json, results)
    if not torch.cuda.is_available() and args.device == "auto":
        print("(no CUDA device: the full-size emo rows need a GPU, or run them reduced: --config tiny --device cpu; "
              "anchors: EMO paper 1.25 s/frame, goal <= 0.30 s/frame on an H100)")
    if args.json:
        _write_json(args.json, results)
    return 0

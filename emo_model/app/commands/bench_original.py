"""``python -m emo_model bench --against-original FAMILY``: our default path vs the ORIGINAL pipeline.

Opt-in and source-checkout only: it drives the family's parity harness (``Family.parity``, a script in
``tools/parity/``) with
the original repository's checkout and venv (``tools/parity/README.md`` says how to make both). Both sides
run the same short generation on the same full-size random weights (the harness writes them once into
``--work``, ~10 GB), at equal settings: the family's parity recipe (``ParityHarness.settings``: e.g. 2 clips of 4 frames + 2
motion frames, or 14 frames in context windows of 8 with overlap 2), ``--steps`` DDIM steps, CFG on, fp32,
``--size`` pixels (128). Each side runs in its own process (original: its venv; ours: this Python), the
processes alternate (``--rounds``), each times ``--repeats`` (2) generations after loading, and the best is kept.

What is timed: the generation from the portrait to decoded frames (portrait VAE encode, ReferenceNet,
every denoising step with guidance, motion frames, decode); not the loading of weights. The audio features
are timed where the original's timed call computes them (``ParityHarness.audio_timed``: inside its pipeline
call, or before its clip loop). A pose / keypoint guider's images come from the harness too (``ours`` returns
``pose_frames``; the face mask is not used then). Memory: the peak resident set of the process during the
generation (VmHWM reset just before it, so the resident weights are included), plus the peak VRAM on CUDA.
(The reset also resets getrusage's maximum, so no whole-process peak is reported.) An original that loads
its models again on every run in the same process can carry the earlier run's leftovers into later runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]
HARNESS = REPO / "tools" / "parity"



def _harnesses() -> dict:
    """family name -> its ParityHarness, for the families that have one."""
    from ...families import FAMILIES

    return {fam.name: fam.parity for fam in FAMILIES if fam.parity is not None}


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("against the original (opt-in, needs the parity checkout and venv: tools/parity/README.md)")
    g.add_argument("--against-original", metavar="FAMILY", choices=sorted(_harnesses()),
                   help="time our default path and the original pipeline side by side: " + ", ".join(sorted(_harnesses())))
    g.add_argument("--original-src", help="the original repository checked out at its pinned commit")
    g.add_argument("--original-python", help="the python of the original's venv (its pinned packages)")
    g.add_argument("--work", help="scratch folder for the full-size random weights (~10 GB, written on first use)")
    g.add_argument("--bench-steps", type=int, default=3, help="DDIM steps for both sides [%(default)s]")
    g.add_argument("--rounds", type=int, default=1, help="alternating original / ours process pairs [%(default)s]")
    p.add_argument("--worker-original", help=argparse.SUPPRESS)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _check(args) -> str | None:
    if not (HARNESS / _harnesses()[args.against_original].script).is_file():
        return f"{HARNESS} is missing: --against-original runs from a source checkout of ComfyUI-EMO"
    for flag, value in (("--original-src", args.original_src), ("--original-python", args.original_python), ("--work", args.work)):
        if not value:
            return f"{flag} is required with --against-original (tools/parity/README.md makes the checkout and venv)"
    if not Path(args.original_src).is_dir():
        return f"--original-src {args.original_src}: no such folder; clone the original at its pinned commit there"
    if not Path(args.original_python).is_file():
        return f"--original-python {args.original_python}: no such file; give the python of the original's venv"
    for flag, value, low in (("--size", args.size, 64), ("--bench-steps", args.bench_steps, 1), ("--repeats", args.repeats, 1), ("--rounds", args.rounds, 1)):
        if value < low:
            return f"{flag} must be at least {low}, got {value}"
    if args.size % 64:
        return f"--size must be a multiple of 64, got {args.size}"
    return None


def _harness_command(args, *extra: str) -> list[str]:
    harness = _harnesses()[args.against_original]
    work = Path(args.work).resolve()
    cmd = [args.original_python, str(HARNESS / harness.script), harness.src_flag, args.original_src, "--full",
           "--size", str(args.size), "--steps", str(args.bench_steps), "--out", str(work / "fixture")]
    return cmd + harness.extra_args(work) + list(extra)


def _weights_ready(args) -> bool:
    return _harnesses()[args.against_original].weights_ready(Path(args.work))


def _last_json(stdout: str, what: str) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"{what} printed no result")


def _run(cmd: list[str], what: str) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return _last_json(out.stdout, what)


def run(args: argparse.Namespace) -> int:
    if args.worker_original:
        print(json.dumps(_ours(json.loads(args.worker_original))))
        return 0
    args.size = args.size or 128  # --size / --repeats are shared with the other rows: their defaults here
    args.repeats = args.repeats or 2
    problem = _check(args)
    if problem:
        return _fail(problem)
    family = args.against_original
    if not _weights_ready(args):
        print(f"writing full-size random {family} weights and running the original's parity harness once into {args.work} ...", flush=True)
        t = time.perf_counter()
        subprocess.run(_harness_command(args), check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)
    spec = {"family": family, "work": str(Path(args.work).resolve()), "size": args.size, "steps": args.bench_steps,
            "repeats": args.repeats, **_harnesses()[family].settings}
    best: dict[str, dict] = {}
    for r in range(args.rounds):
        for side in ("original", "ours"):
            print(f"round {r + 1}/{args.rounds}: {side} ...", flush=True)
            if side == "original":
                res = _run(_harness_command(args, "--bench", str(args.repeats)), "the original's benchmark")
            else:
                res = _run([sys.executable, "-m", "emo_model", "bench", "--worker-original", json.dumps(spec)], "our benchmark")
            for run_ in res["runs"]:
                if side not in best or run_["seconds"] < best[side]["seconds"]:
                    best[side] = {**run_, "frames": res["frames"], "threads": res.get("torch_threads"),
                                  "host_allocator": res.get("host_allocator")}
    o, u = best["original"], best["ours"]
    print()
    print(f"{family}, full size, {args.size}x{args.size}, {o['frames']} frames, {args.bench_steps} DDIM steps + CFG, fp32, "
          f"{u['threads']} CPU threads, best of {args.repeats} x {args.rounds}")
    header = f"{'':10} {'seconds':>9} {'s/frame':>9} {'peak RSS (generation)':>22} {'peak VRAM':>10}"
    print(header)
    print("-" * len(header))
    for name, r in (("original", o), ("ours", u)):
        vram = "-" if r.get("peak_vram") is None else f"{r['peak_vram'] / 2**30:.2f} GB"
        print(f"{name:10} {r['seconds']:>9.1f} {r['seconds'] / r['frames']:>9.2f} {r['peak_rss'] / 2**30:>19.2f} GB {vram:>10}")
    print(f"ours / original: time {u['seconds'] / o['seconds']:.2f}x ({o['seconds'] / u['seconds']:.2f}x the original's speed), "
          f"peak RSS {u['peak_rss'] / o['peak_rss']:.2f}x")
    alloc = u.get("host_allocator") or {}
    print(f"ours ran with the command line's host-allocator settings: huge pages {'on' if alloc.get('huge_pages') else 'off'}, "
          f"malloc thresholds {'on' if alloc.get('malloc') else 'off'} (emo_model/app/host_memory.py; EMO_HOST_ALLOCATOR=default: off)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"family": family, "size": args.size, "steps": args.bench_steps, "original": o, "ours": u}, f, indent=2)
    return 0


# ---- our side (a separate process) ------------------------------------------------------------------------------


def _vm_hwm_reset() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _vm_hwm() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))


def _ours(spec: dict) -> dict:
    """Load the harness's weights with our loader and time our default path at the same settings."""
    import numpy as np
    from diffusers import AutoencoderKL

    from ...audio.encoders import build_audio_encoder, encode_audio
    from ...network.vae import DiffusersVAE
    from ...sampling.pipeline import EMOPipeline
    from ...sampling.settings import SamplingSettings
    from ...weights.checkpoints import inspect_checkpoint
    from ..session import audio_front_end

    work, fix = Path(spec["work"]), Path(spec["work"]) / "fixture"
    meta = json.loads((fix / "meta.json").read_text())
    S = spec["size"]
    g = torch.Generator().manual_seed(0)
    image = torch.rand(S, S, 3, generator=g)
    harness = _harnesses()[spec["family"]]
    inputs = harness.ours(work, fix, meta, spec)
    ck = inspect_checkpoint(inputs["checkpoint"])
    vae_dir, encoder_dir, wave, overrides = inputs["vae"], inputs["encoder"], inputs["wave"], inputs["overrides"]
    model = ck.load(device="cpu")
    del ck  # its memory-mapped file: clean page cache that would otherwise count in the resident set
    gc.collect()
    cfg = model.config
    pipe = EMOPipeline(model, DiffusersVAE(AutoencoderKL.from_pretrained(vae_dir).eval()), device="cpu")
    fps = meta["settings"].get("fps") or cfg.preset.fps
    if wave is None:  # the harness's frame count of a voiced-like tone (the values do not change the time)
        t = np.arange(round(meta["settings"]["frames"] * 16000 / fps)) / 16000
        wave = (0.3 * np.sin(2 * np.pi * 140 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2)).astype(np.float32)
    encoder = build_audio_encoder(cfg.audio, encoder_dir)
    options = audio_front_end(cfg, overrides["frames_per_clip"])
    source = {"waveform": torch.from_numpy(wave).reshape(1, 1, -1), "sample_rate": 16000}

    def features():
        return encode_audio(source, cfg.audio, encoder, fps, **options)

    # timed here only where the original's timed pipeline call computes them too
    audio_timed = harness.audio_timed
    audio = None if audio_timed else features()
    settings = SamplingSettings.from_preset(cfg.preset, steps=spec["steps"], **overrides)
    identity = torch.randn(cfg.image_proj.embed_dim, generator=g) if cfg.image_proj is not None else None
    hh = S // 8
    region = torch.rand(3, hh, hh, generator=g) if cfg.backbone.region_audio_modules else None
    face = torch.zeros(S, S)
    face[S // 8 : S - S // 8, S // 6 : S - S // 6] = 1
    pose = inputs.get("pose_frames")  # a pose / keypoint guider's images, one per frame (the harness's): no face mask then
    if pose is not None:
        face = None
    runs = []
    for _ in range(spec["repeats"]):
        frames_out: list[torch.Tensor] = []
        _vm_hwm_reset()
        t = time.perf_counter()
        if audio_timed:
            audio = features()
        ref = pipe.encode_reference(image, size=S, identity_embedding=identity)
        pipe.generate(ref, audio.features, num_frames=audio.num_frames, settings=settings, sink=frames_out.append,
                      face_mask=face, region_masks=region, pose_frames=pose)
        runs.append({"seconds": time.perf_counter() - t, "peak_rss": _vm_hwm()})
    from .. import host_memory

    return {"family": spec["family"], "runs": runs, "frames": int(sum(f.shape[0] for f in frames_out)),
            "torch_threads": torch.get_num_threads(), "host_allocator": host_memory.applied}

"""``python -m emo_model eval-fast``: what each work saver of the fast mode costs in quality, on the demo.

For every sampling setting in :data:`CANDIDATES` (the family's default recipe first), on held-out
synthetic clips of the demo domain (never used in training):

* denoiser work: GFLOP of every denoiser call, counted by :class:`torch.utils.flop_counter.FlopCounterMode`
  (reused deep features and dropped guidance branches show up here), and the speed-up against the
  default recipe; wall seconds of the whole generation (decode included) for reference;
* lip sync: Pearson r of the generated mouth opening vs the audio envelope (as ``eval-sync``), the mean over the
  clips (each clip's in the ``--json`` file, to compare two models clip by clip);
* fidelity to the default recipe: PSNR and SSIM of every frame against the default recipe's frame
  made with the same seed (so only the setting differs).

The ``fast`` row is :func:`emo_model.sampling.settings.fast_settings`, the switch behind ``generate --fast``
and the sampler node's ``fast`` option; ``docs/performance.md`` has the table that chose it.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path

# name -> overrides of the preset (steps given as a fraction of the preset's steps keep the table
# meaningful for any family; "fast" is resolved by fast_settings)
CANDIDATES: dict[str, dict] = {
    "default": {},
    "dpmpp_2m 1/2 steps": {"sampler": "dpmpp_2m", "steps_ratio": 0.5},
    "unipc 1/2 steps": {"sampler": "unipc", "steps_ratio": 0.5},
    "cfg on first 40%": {"guidance_fraction": 0.4},
    "deep cache 2": {"deep_cache_interval": 2},
    "deep cache 3": {"deep_cache_interval": 3},
    "dpmpp_2m 1/2 + cfg 40%": {"sampler": "dpmpp_2m", "steps_ratio": 0.5, "guidance_fraction": 0.4},
    "dpmpp_2m 1/2 + cfg 40% + cache 2": {"sampler": "dpmpp_2m", "steps_ratio": 0.5, "guidance_fraction": 0.4, "deep_cache_interval": 2},
    "unipc 1/2 + cfg 40% + cache 2": {"sampler": "unipc", "steps_ratio": 0.5, "guidance_fraction": 0.4, "deep_cache_interval": 2},
    "dpmpp_2m 0.4 + cfg 50% + cache 2": {"sampler": "dpmpp_2m", "steps_ratio": 0.4, "guidance_fraction": 0.5, "deep_cache_interval": 2},
    "dpmpp_2m 1/2 + cache 2": {"sampler": "dpmpp_2m", "steps_ratio": 0.5, "deep_cache_interval": 2},
    "dpmpp_2m 0.4 + cache 2": {"sampler": "dpmpp_2m", "steps_ratio": 0.4, "deep_cache_interval": 2},
    "dpmpp_2m 1/2 + cfg 80% + cache 2": {"sampler": "dpmpp_2m", "steps_ratio": 0.5, "guidance_fraction": 0.8, "deep_cache_interval": 2},
    "fast": {"fast": True},
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="native checkpoint with a bundled VAE (default: the shipped demo model)")
    p.add_argument("--clips", type=int, default=3, help="held-out clips [%(default)s]")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each held-out clip [%(default)s]")
    p.add_argument("--only", help="comma-separated row names (default: every row)")
    p.add_argument("--threads", type=int, default=2, help="torch threads [%(default)s]")
    p.add_argument("--json", type=Path, help="also write the results here")


def resolve(preset, overrides: dict) -> dict:
    """A candidate's overrides -> keyword arguments for ``Session.settings``."""
    from ...sampling.settings import fast_settings

    if overrides.get("fast"):
        return fast_settings(preset)
    out = {k: v for k, v in overrides.items() if k != "steps_ratio"}
    if "steps_ratio" in overrides:
        out["steps"] = max(1, round(preset.steps * overrides["steps_ratio"]))
    return out


class DenoiserFlops:
    """Counts the FLOPs of every call of ``model.forward(sample, t, cond)`` while installed.

    A call's FLOPs depend only on the input shapes and the path taken (deep features reused or not,
    motion frames present or not), so each distinct kind of call is counted once and then looked up.
    """

    def __init__(self, model):
        self.model, self.flops = model, 0
        self._forward = model.forward
        self._known: dict = {}
        self.overhead = 0.0  # seconds spent counting

    def __enter__(self):
        from torch.utils.flop_counter import FlopCounterMode

        def counted(sample, timestep, cond):
            cache = cond.feature_cache
            motion = cond.reference is not None and cond.reference.motion is not None
            key = (tuple(sample.shape), bool(cache is not None and cache.reusing), motion)
            if key not in self._known:  # counted on a copy of the call, whose time is not the setting's
                t0 = time.perf_counter()
                probe = copy.copy(cache) if cache is not None else None
                with FlopCounterMode(display=False) as counter:
                    self._forward(sample, timestep, dataclasses.replace(cond, feature_cache=probe))
                self._known[key] = counter.get_total_flops()
                self.overhead += time.perf_counter() - t0
            self.flops += self._known[key]
            return self._forward(sample, timestep, cond)

        self.model.forward = counted
        return self

    def __exit__(self, *exc):
        del self.model.forward  # back to the class's method
        return False


def psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def ssim(a, b) -> float:
    from skimage.metrics import structural_similarity

    return float(
        sum(structural_similarity(x, y, channel_axis=-1, data_range=1.0) for x, y in zip(a, b)) / len(a)
    )


def evaluate(model_path=None, *, clips: int = 3, seconds: float = 4.0, only: list[str] | None = None, log=print) -> dict:
    import numpy as np
    import torch

    from ... import demo
    from ...demo import metrics
    from ...demo.config import HELDOUT_SEED
    from ..session import Session

    session = Session.load(Path(model_path or demo.model_path()), device="cpu", dtype=torch.float32)
    preset = session.config.preset
    held = [metrics.prepare_held_out(HELDOUT_SEED + k, seconds) for k in range(clips)]
    names = [n for n in CANDIDATES if only is None or n in only or n == "default"]
    reference_frames: list = []
    counter = DenoiserFlops(session.model)
    rows = []
    for name in names:
        kwargs = resolve(preset, CANDIDATES[name])
        flops, wall, rs, psnrs, ssims = 0, 0.0, [], [], []
        for k, h in enumerate(held):
            before, spent = counter.flops, counter.overhead
            with counter:
                t0 = time.perf_counter()
                frames = metrics.generate(session, h, **kwargs)
                wall += time.perf_counter() - t0 - (counter.overhead - spent)
            flops += counter.flops - before
            env = metrics.audio_envelope(h.clip.audio, h.clip.num_frames)
            rs.append(metrics.pearson(metrics.mouth_opening(frames, h.mouth_roi, h.skin_luma), env))
            if name == "default":
                reference_frames.append(frames)
            else:
                psnrs.append(psnr(frames, reference_frames[k]))
                ssims.append(ssim(frames, reference_frames[k]))
        settings = session.settings(**kwargs)
        row = {
            "name": name,
            "sampler": settings.sampler,
            "steps": settings.steps,
            "guidance_fraction": settings.guidance_fraction,
            "deep_cache_interval": settings.deep_cache_interval,
            "gflop": flops / 1e9,
            "wall_s": wall,
            "r": float(np.mean(rs)),
            "r_clips": [float(r) for r in rs],  # per held-out clip, in seed order: for paired comparisons of two models
            "psnr": float(np.mean(psnrs)) if psnrs else None,
            "ssim": float(np.mean(ssims)) if ssims else None,
        }
        rows.append(row)
        log(f"  {name}: {row['gflop']:.2f} GFLOP, {wall:.1f} s, r {row['r']:.3f}")
    base = rows[0]
    for row in rows:
        row["work_speedup"] = base["gflop"] / row["gflop"]
        row["wall_speedup"] = base["wall_s"] / row["wall_s"]
        row["r_drop"] = base["r"] - row["r"]
    return {"model": str(model_path or demo.model_path()), "clips": clips, "seconds": seconds, "rows": rows}


def print_table(results: dict) -> None:
    print(f"\nmodel: {results['model']}  ({results['clips']} held-out clips of {results['seconds']:g} s)")
    head = f"{'setting':<34} {'sampler':<9} {'steps':>5} {'cfg part':>8} {'cache':>5} {'GFLOP':>7} {'work x':>6} {'wall x':>6} {'lip r':>6} {'PSNR dB':>8} {'SSIM':>6}"
    print(head)
    print("-" * len(head))
    for r in results["rows"]:
        p = "-" if r["psnr"] is None else f"{r['psnr']:.1f}"
        s = "-" if r["ssim"] is None else f"{r['ssim']:.3f}"
        print(
            f"{r['name']:<34} {r['sampler']:<9} {r['steps']:>5} {r['guidance_fraction']:>8.2f} {r['deep_cache_interval']:>5} "
            f"{r['gflop']:>7.2f} {r['work_speedup']:>6.2f} {r['wall_speedup']:>6.2f} {r['r']:>6.3f} {p:>8} {s:>6}"
        )


def check_arguments(args: argparse.Namespace) -> list[str] | None:
    """Every flag against the shared rules (:mod:`emo_model.validation`) and the --json path, before any work; the --only rows."""
    from ... import validation

    validation.check_input_path(args.model, label="--model", kind="file")
    validation.check("clips", args.clips, label="--clips")
    validation.check("clip_seconds", args.seconds, label="--seconds")
    validation.check("threads", args.threads, label="--threads")
    if args.json is not None:
        validation.check_output_file(args.json, label="--json", suffixes=(".json",), example="eval_fast.json")
    if not args.only:
        return None
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    for name in only:
        validation.check_choice(name, CANDIDATES, label="every --only row", hint="separate rows with commas")
    return only


def run(args: argparse.Namespace) -> int:
    import torch

    from ... import validation

    only = check_arguments(args)
    torch.set_num_threads(args.threads)
    with validation.user_input():  # a model that does not load: one line from the CLI, the traceback with --debug
        results = evaluate(args.model, clips=args.clips, seconds=args.seconds, only=only)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0

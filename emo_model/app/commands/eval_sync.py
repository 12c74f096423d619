"""``python -m emo_model eval-sync``: lip sync, speed control and clip-boundary measures of the demo model.

Runs :mod:`emo_model.demo.metrics` on held-out synthetic clips (seeds from
:data:`emo_model.demo.config.HELDOUT_SEED` on, never used in training) and prints a table:

* per clip, Pearson r between the mouth opening measured on the generated frames and the audio
  envelope; the same with the video generated from the time-shuffled audio (control, ~0); the same
  measure on the ground-truth frames (ceiling);
* the head motion measured on videos generated at speed 0.1, 0.7 and 1.3 deg/frame;
* frame differences across clip boundaries vs within clips, with and without motion frames.

The measures are defined for the synthetic domain the demo was trained on (known mouth geometry);
``--model`` takes any native checkpoint of that domain (e.g. a ``make-demo`` stage output).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="native checkpoint with a bundled VAE (default: the shipped demo model)")
    p.add_argument("--clips", type=int, default=4, help="held-out clips for lip sync [%(default)s]")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each held-out clip [%(default)s]")
    p.add_argument("--first-seed", type=int, default=None, help="first held-out seed (default: HELDOUT_SEED)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's preset)")
    p.add_argument("--no-speed", action="store_true", help="skip the speed-control measure")
    p.add_argument("--no-boundary", action="store_true", help="skip the clip-boundary measure")
    p.add_argument("--threads", type=int, default=2, help="torch threads [%(default)s]")
    p.add_argument("--json", type=Path, help="also write the results here")


def evaluate(
    model_path: str | Path | None = None,
    *,
    clips: int = 4,
    seconds: float = 4.0,
    first_seed: int | None = None,
    steps: int | None = None,
    speed: bool = True,
    boundary: bool = True,
    log=print,
) -> dict:
    import numpy as np
    import torch

    from ... import demo
    from ...demo import metrics
    from ...demo.config import HELDOUT_SEED
    from ..session import Session

    t0 = time.time()
    model_path = Path(model_path or demo.model_path())
    session = Session.load(model_path, device="cpu", dtype=torch.float32)
    overrides = {"steps": steps} if steps else {}
    first = HELDOUT_SEED if first_seed is None else first_seed
    rows = []
    for k in range(clips):
        held = metrics.prepare_held_out(first + k, seconds)
        row = metrics.lip_sync(session, held, **overrides)
        row.pop("_frames")
        rows.append(row)
        log(f"  clip {row['seed']}: r {row['r']:.3f}, shuffled {row['r_shuffled']:.3f}, truth {row['r_truth']:.3f}")
    results: dict = {
        "model": str(model_path),
        "settings": {**session.settings(**overrides).__dict__},
        "lip_sync": rows,
    }
    if rows:
        results["lip_sync_mean"] = {
            k: float(np.mean([r[k] for r in rows])) for k in ("r", "r_shuffled", "r_shuffled_self", "r_truth")
        }
    held = metrics.prepare_held_out(first, seconds)
    if speed:
        results["speed"] = metrics.speed_effect(session, held, **overrides)
    if boundary:
        results["boundary"] = metrics.boundary_continuity(session, held, **overrides)
    results["seconds"] = round(time.time() - t0, 1)
    results["settings"]["speed"] = session.config.preset.speed
    results["settings"] = {k: v for k, v in results["settings"].items() if isinstance(v, (int, float, str, bool))}
    return results


def print_table(results: dict) -> None:
    s = results["settings"]
    print(f"\nmodel: {results['model']}")
    print(f"sampling: {s.get('steps')} {s.get('sampler')} steps, cfg {s.get('cfg')}, audio_cfg {s.get('audio_cfg')}, "
          f"{s.get('frames_per_clip')} frames/clip + {s.get('motion_frames')} motion frames, speed {s.get('speed')}")
    rows = results.get("lip_sync", [])
    if rows:
        print("\nlip sync (Pearson r, mouth opening on generated frames vs audio envelope; held-out clips)")
        print(f"  {'seed':>7} {'frames':>6} {'r':>7} {'r shuffled':>11} {'(vs own)':>9} {'r truth':>8}")
        for r in rows:
            print(f"  {r['seed']:>7} {r['frames']:>6} {r['r']:>7.3f} {r['r_shuffled']:>11.3f} {r['r_shuffled_self']:>9.3f} {r['r_truth']:>8.3f}")
        m = results["lip_sync_mean"]
        print(f"  {'mean':>7} {'':>6} {m['r']:>7.3f} {m['r_shuffled']:>11.3f} {m['r_shuffled_self']:>9.3f} {m['r_truth']:>8.3f}")
    if "speed" in results:
        print("\nspeed control (same portrait and audio; head motion measured on the generated frames)")
        print(f"  {'speed asked':>11} {'flow proxy deg/frame':>21} {'face shift px/frame':>20}")
        for r in results["speed"]:
            print(f"  {r['speed']:>11.2f} {r['measured_deg_per_frame']:>21.3f} {r['face_shift_px_per_frame']:>20.3f}")
    if "boundary" in results:
        print("\nclip boundaries (mean |frame difference|, face region, 0..255)")
        print(f"  {'motion frames':>13} {'across':>8} {'within':>8} {'ratio':>7}")
        for r in results["boundary"]:
            print(f"  {r['motion_frames']:>13} {r['across']:>8.2f} {r['within']:>8.2f} {r['ratio']:>7.2f}")
    print(f"\n({results['seconds']:.0f} s)")


def check_arguments(args: argparse.Namespace) -> None:
    """Every flag against the shared rules (:mod:`emo_model.validation`) and the --json path, before any work."""
    from dataclasses import replace

    from ... import validation
    from ...demo.config import HELDOUT_SEED

    validation.check_input_path(args.model, label="--model", kind="file")
    validation.check("clips", args.clips, label="--clips", rule=replace(validation.RULES["clips"], lo=0), hint="0 skips the lip-sync table")
    validation.check("clip_seconds", args.seconds, label="--seconds")
    if args.first_seed is not None:  # the seed rule, from the first held-out seed on
        held_out = replace(validation.RULES["seed"], lo=HELDOUT_SEED, hint="lower seeds are the demo's training clips")
        validation.check("seed", args.first_seed, label="--first-seed", rule=held_out)
    validation.check_optional("steps", args.steps, label="--steps")
    validation.check("threads", args.threads, label="--threads")
    if args.json is not None:
        validation.check_output_file(args.json, label="--json", suffixes=(".json",), example="eval.json")


def run(args: argparse.Namespace) -> int:
    import torch

    from ...validation import user_input

    check_arguments(args)
    torch.set_num_threads(args.threads)
    with user_input():  # a model that does not load: one line from the CLI, the traceback with --debug
        results = evaluate(
            args.model,
            clips=args.clips,
            seconds=args.seconds,
            first_seed=args.first_seed,
            steps=args.steps,
            speed=not args.no_speed,
            boundary=not args.no_boundary,
        )
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0

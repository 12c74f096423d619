"""The original's own rounding noise: run a parity harness twice with different thread counts and record,
per stage, how far the original moves from itself (``FIXTURE/floor.json``).

The standard (docs/parity.md): a stage passes when ours is within max(1e-4, 3 x this floor) of the original.

    python tools/parity/floor.py [--threads 2 1] -- ORIGINAL_PYTHON tools/parity/X_original.py ... --out FIXTURE

runs the command as given with ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` set to the first count (this run
writes the fixture), then again with ``--out`` pointed at a scratch folder and the second count, compares every
tensor of every ``*.safetensors`` file the two runs wrote (relative paths, recursively) and writes
``FIXTURE/floor.json``::

    {"threads": [2, 1], "command": [...], "files": {"stages.safetensors": {"key": {"rel": r, "max_abs": a}, ...}}}

``rel`` = ||run1 - run2|| / ||run1|| (float64; 0 when both are zero, ``max_abs`` when only run1 is), the same
measure the tests use. ``--compare DIR_A DIR_B --out FIXTURE`` writes floor.json from two folders that already
exist (the runs were made by hand; give ``--threads`` as they were run).

Runs in any Python with torch and safetensors (the original's venv). Never imported by ``emo_model``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def rel_err(a, b) -> tuple[float, float]:
    """(||a - b|| / ||a||, max |a - b|) in float64; (0, 0) for two empty or two zero tensors."""
    a = a.double()
    b = b.double()
    if a.numel() == 0:
        return 0.0, 0.0
    diff = (a - b).abs()
    max_abs = float(diff.max())
    norm = float(a.norm())
    if norm == 0.0:
        return (0.0 if max_abs == 0.0 else max_abs), max_abs
    return float((a - b).norm()) / norm, max_abs


def compare_dirs(first: Path, second: Path) -> dict[str, dict[str, dict[str, float]]]:
    """Per safetensors file (relative path) and key: the two runs' rel err and max abs difference."""
    from safetensors.torch import load_file

    files: dict[str, dict[str, dict[str, float]]] = {}
    for path in sorted(first.rglob("*.safetensors")):
        rel_path = path.relative_to(first).as_posix()
        other = second / rel_path
        if not other.is_file():
            raise SystemExit(f"floor: the second run wrote no {rel_path}; the harness is not deterministic in its outputs")
        a, b = load_file(str(path)), load_file(str(other))
        if set(a) != set(b):
            raise SystemExit(f"floor: {rel_path} holds other keys in the two runs: {sorted(set(a) ^ set(b))[:5]}")
        entries = {}
        for key in sorted(a):
            if a[key].shape != b[key].shape:
                raise SystemExit(f"floor: {rel_path}:{key} has shape {tuple(a[key].shape)} then {tuple(b[key].shape)}")
            if not (a[key].is_floating_point() or a[key].is_complex()):
                same = bool((a[key] == b[key]).all())
                entries[key] = {"rel": 0.0 if same else 1.0, "max_abs": 0.0 if same else float("inf")}
                continue
            rel, max_abs = rel_err(a[key], b[key])
            entries[key] = {"rel": float(f"{rel:.3g}"), "max_abs": float(f"{max_abs:.3g}")}
        files[rel_path] = entries
    if not files:
        raise SystemExit(f"floor: no *.safetensors in {first}")
    return files


def write_floor(out: Path, threads: list[int], command: list[str] | None, files) -> Path:
    worst = max(((v["rel"], f"{f}:{k}") for f, d in files.items() for k, v in d.items()), default=(0.0, ""))
    data = {"threads": threads, "command": command, "worst": {"rel": worst[0], "stage": worst[1]}, "files": files}
    path = out / "floor.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def _run(command: list[str], threads: int) -> None:
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = str(threads)
    print(f"floor: {threads} thread(s): {' '.join(command)}", flush=True)
    subprocess.run(command, env=env, check=True)


def _with_out(command: list[str], out: str) -> list[str]:
    cmd = list(command)
    for i, arg in enumerate(cmd):
        if arg == "--out" and i + 1 < len(cmd):
            cmd[i + 1] = out
            return cmd
        if arg.startswith("--out="):
            cmd[i] = f"--out={out}"
            return cmd
    raise SystemExit("floor: the harness command needs an --out FIXTURE argument")


def _out_of(command: list[str]) -> Path:
    for i, arg in enumerate(command):
        if arg == "--out" and i + 1 < len(command):
            return Path(command[i + 1])
        if arg.startswith("--out="):
            return Path(arg.split("=", 1)[1])
    raise SystemExit("floor: the harness command needs an --out FIXTURE argument")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs=2, default=[2, 1], metavar=("FIRST", "SECOND"))
    p.add_argument("--compare", nargs=2, metavar=("DIR_A", "DIR_B"), help="two finished runs (DIR_A is the fixture's)")
    p.add_argument("--out", help="with --compare: where floor.json goes (default DIR_A)")
    args = p.parse_args(argv)
    if args.threads[0] == args.threads[1]:
        p.error("--threads needs two different counts")
    if args.compare:
        first, second = Path(args.compare[0]), Path(args.compare[1])
        out = Path(args.out) if args.out else first
        path = write_floor(out, args.threads, None, compare_dirs(first, second))
    else:
        if not command:
            p.error("give the harness command after --")
        out = _out_of(command)
        _run(command, args.threads[0])
        scratch = Path(tempfile.mkdtemp(prefix="floor-"))
        try:
            _run(_with_out(command, str(scratch)), args.threads[1])
            path = write_floor(out, args.threads, command, compare_dirs(out, scratch))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    data = json.loads(path.read_text())
    print(f"floor: wrote {path}; worst stage {data['worst']['stage']} rel {data['worst']['rel']:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m emo_model bench``: the emo rows at a reduced size on the CPU, and the against-original checks.

Speed is not asserted here (a benchmark prints a table; docs/performance.md records it); these tests check
that the command runs the rows it names with the settings it says, and refuses bad flags in one line.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import HANG_GUARD_S, ROOT


def bench(*args: str, timeout: int = HANG_GUARD_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emo_model", "bench", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, check=False)


def test_emo_rows_run_reduced_on_the_cpu_with_the_fast_mode_beside_the_default(tmp_path):
    out = tmp_path / "bench.json"
    r = bench("--rows", "emo,emo-memory", "--config", "tiny", "--device", "cpu", "--emo-seconds", "0.64",
              "--emo-steps", "10", "--memory-seconds", "0.32,0.96", "--repeats", "1", "--json", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["row", "frames", "steps", "s/frame"] and "naive" not in r.stdout
    rows = json.loads(out.read_text())
    speed, *memory = rows
    assert speed["row"].startswith("tiny, cpu, 64x64, 10 DDIM + CFG")
    assert speed["default"]["frames"] == 16 and speed["default"]["steps"] == 10  # 0.64 s at the tiny preset's 25 fps
    assert speed["fast"]["steps"] == 8  # fast mode at 10 steps: the 8-step floor
    # the speed-up column is the two measured s/frame divided (which one is faster is not asserted: machine speed),
    # each s/frame the run's seconds over its frames, and the printed table shows that same ratio
    for side in ("default", "fast"):
        assert speed[side]["s_per_frame"] == pytest.approx(speed[side]["seconds"] / speed[side]["frames"], rel=1e-12)
    assert speed["fast_speedup"] == pytest.approx(speed["default"]["s_per_frame"] / speed["fast"]["s_per_frame"], rel=1e-12)
    row_line = next(line for line in lines if line.startswith(speed["row"]))
    assert f" {speed['fast_speedup']:.2f}x " in row_line, row_line
    assert [m["default"]["frames"] for m in memory] == [8, 24] and all(m["peak_rss"] > 0 and "fast" not in m for m in memory)


def test_naive_check_is_opt_in_and_not_a_headline_column():
    r = bench("--rows", "tiny", "--seconds", "0.32", "--steps", "2", "--repeats", "1", "--naive")
    assert r.returncode == 0, r.stderr[-2000:]
    header, _, row, naive = r.stdout.splitlines()[:4]
    assert "naive" not in header and row.startswith("tiny, CPU") and "regression check: naive path" in naive


@pytest.mark.parametrize("args,message", [
    (["--against-original", "hallo"], "--original-src is required with --against-original"),
    (["--against-original", "hallo", "--original-src", "/nonexistent", "--original-python", sys.executable, "--work", "/tmp"],
     "--original-src /nonexistent: no such folder"),
    (["--against-original", "hallo", "--original-src", "/tmp", "--original-python", "/nonexistent/python", "--work", "/tmp"],
     "--original-python /nonexistent/python: no such file"),
    (["--against-original", "hallo", "--original-src", "/tmp", "--original-python", sys.executable, "--work", "/tmp", "--size", "100"],
     "--size must be a multiple of 64"),
    (["--device", "cuda", "--rows", "emo"], "no CUDA device"),
])
def test_bad_flags_get_one_line(args, message):
    import torch

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    r = bench(*args)
    assert r.returncode != 0 and message in r.stderr and r.stdout == ""  # refused before the table starts
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_against_original_table_keeps_each_sides_best_run_and_prints_the_ratios(monkeypatch, capsys, tmp_path):
    """The table's arithmetic on canned results of both sides (the two processes are not run here)."""
    import argparse

    from emo_model.app.commands import bench_original as bo

    gib = 2**30
    canned = {
        "original": {"runs": [{"seconds": 60.0, "peak_rss": 12 * gib}, {"seconds": 50.0, "peak_rss": 13 * gib}], "frames": 10,
                     "torch_threads": 2},
        "ours": {"runs": [{"seconds": 40.0, "peak_rss": 10.5 * gib}], "frames": 10, "torch_threads": 2,
                 "host_allocator": {"huge_pages": True, "malloc": False}},
    }
    monkeypatch.setattr(bo, "_check", lambda args: None)
    monkeypatch.setattr(bo, "_weights_ready", lambda args: True)
    monkeypatch.setattr(bo, "_run", lambda cmd, what: canned["original" if "original" in what else "ours"])
    args = argparse.Namespace(worker_original=None, size=None, repeats=None, against_original="hallo", rounds=1, bench_steps=3,
                              original_src="/x", original_python="/x/python", work=str(tmp_path), json=str(tmp_path / "r.json"))
    assert bo.run(args) == 0
    out = capsys.readouterr().out
    original = next(line for line in out.splitlines() if line.startswith("original "))
    ours = next(line for line in out.splitlines() if line.startswith("ours "))
    # the original's best run is the 50 s one (with its own 13 GB peak), over 10 frames
    assert original.split()[1:5] == ["50.0", "5.00", "13.00", "GB"]
    assert ours.split()[1:5] == ["40.0", "4.00", "10.50", "GB"]
    assert "time 0.80x (1.25x the original's speed), peak RSS 0.81x" in out
    assert "host-allocator settings: huge pages on, malloc thresholds off" in out
    assert json.loads((tmp_path / "r.json").read_text())["original"]["seconds"] == 50.0

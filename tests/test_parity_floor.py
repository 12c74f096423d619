"""The parity standard itself: tools/parity/floor.py records the original's own thread-count noise, and
tests/parity_floor.py turns it into each stage's tolerance, max(1e-4, 3 x floor)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests import parity_floor
from tests.conftest import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]
FLOOR = ROOT / "tools" / "parity" / "floor.py"
FIXTURES = ROOT / "tests" / "parity"

# A stand-in harness: its output depends on the thread count it was given, the way a reduction split
# across threads does, so the two runs differ by a known amount in one stage and not at all in another.
FAKE_HARNESS = """
import argparse, os, torch
from pathlib import Path
from safetensors.torch import save_file
p = argparse.ArgumentParser(); p.add_argument("--out"); a = p.parse_args()
n = int(os.environ["OMP_NUM_THREADS"])
Path(a.out, "sub").mkdir(parents=True, exist_ok=True)
save_file({"fixed": torch.ones(4), "noisy": torch.tensor([1.0, 1.0, 1.0, 1.0 + 1e-3 * n]),
           "index": torch.arange(3)}, str(Path(a.out, "stages.safetensors")))
save_file({"x": torch.full((2,), float(torch.get_num_threads()))}, str(Path(a.out, "sub", "more.safetensors")))
"""


def _floor_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(FLOOR), *args], capture_output=True, text=True, timeout=HANG_GUARD_S)


def test_floor_runs_the_harness_twice_with_other_thread_counts(tmp_path):
    harness = tmp_path / "harness.py"
    harness.write_text(FAKE_HARNESS)
    out = tmp_path / "fixture"
    r = _floor_cli("--threads", "2", "1", "--", sys.executable, str(harness), "--out", str(out))
    assert r.returncode == 0, r.stderr
    data = json.loads((out / "floor.json").read_text())
    assert data["threads"] == [2, 1]
    stages = data["files"]["stages.safetensors"]
    assert stages["fixed"]["rel"] == 0.0 and stages["index"]["rel"] == 0.0
    expected = 1e-3 / torch.tensor([1.0, 1.0, 1.0, 1.002]).double().norm().item()
    assert stages["noisy"]["rel"] == pytest.approx(expected, rel=1e-2)
    assert stages["noisy"]["max_abs"] == pytest.approx(1e-3, rel=1e-2)
    # torch itself saw the two thread counts (the env reaches the child before torch starts)
    assert data["files"]["sub/more.safetensors"]["x"]["rel"] == pytest.approx(0.5)
    assert data["worst"]["stage"] == "sub/more.safetensors:x"
    # the fixture is the first run's output; the scratch run is gone
    assert load_file(str(out / "stages.safetensors"))["noisy"][-1].item() == pytest.approx(1.002)


def test_floor_compare_and_refusals(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    save_file({"s": torch.tensor([3.0, 4.0]), "z": torch.zeros(2)}, str(a / "stages.safetensors"))
    save_file({"s": torch.tensor([3.0, 4.5]), "z": torch.zeros(2)}, str(b / "stages.safetensors"))
    r = _floor_cli("--threads", "2", "1", "--compare", str(a), str(b))
    assert r.returncode == 0, r.stderr
    stages = json.loads((a / "floor.json").read_text())["files"]["stages.safetensors"]
    assert stages["s"]["rel"] == pytest.approx(0.1) and stages["z"]["rel"] == 0.0
    save_file({"s": torch.zeros(3)}, str(b / "stages.safetensors"))
    r = _floor_cli("--compare", str(a), str(b))
    assert r.returncode != 0 and "other keys" in r.stderr
    assert _floor_cli("--threads", "1", "1", "--compare", str(a), str(b)).returncode != 0
    assert "--out" in _floor_cli("--", sys.executable, "-c", "pass").stderr


def test_tolerance_is_the_larger_of_1e4_and_three_floors(tmp_path):
    files = {"stages.safetensors": {"quiet": {"rel": 0.0}, "small": {"rel": 2e-5}, "loud": {"rel": 1e-2}}}
    (tmp_path / "floor.json").write_text(json.dumps({"threads": [2, 1], "files": files}))
    assert parity_floor.tolerance(tmp_path, "quiet") == 1e-4
    assert parity_floor.tolerance(tmp_path, "small") == 1e-4
    assert parity_floor.tolerance(tmp_path, "loud") == pytest.approx(3e-2)
    parity_floor.check(2.9e-2, tmp_path, "loud")
    with pytest.raises(AssertionError, match="3 x floor"):
        parity_floor.check(3.1e-2, tmp_path, "loud")
    with pytest.raises(AssertionError, match="no floor"):
        parity_floor.tolerance(tmp_path, "missing")
    with pytest.raises(AssertionError, match="covers no"):
        parity_floor.tolerance(tmp_path, "quiet", file="other.safetensors")
    with pytest.raises(AssertionError, match="missing"):
        parity_floor.tolerance(tmp_path / "nowhere", "quiet")
    same = tmp_path / "same"
    same.mkdir()
    (same / "floor.json").write_text(json.dumps({"threads": [2, 2], "files": files}))
    with pytest.raises(AssertionError, match="different thread counts"):
        parity_floor.tolerance(same, "quiet")


FIXTURE_DIRS = sorted(p for p in FIXTURES.iterdir() if p.is_dir()) if FIXTURES.is_dir() else []


@pytest.mark.parametrize("fixture", FIXTURE_DIRS, ids=lambda p: p.name)
def test_every_parity_fixture_records_the_originals_floor_for_every_stage(fixture):
    """Each fixture made by an original carries floor.json, and it covers every tensor the fixture stores."""
    data = parity_floor.load_floor(fixture)
    for path in sorted(fixture.rglob("*.safetensors")):
        rel_path = path.relative_to(fixture).as_posix()
        if rel_path.split("/")[0] in {"vae", "wav2vec2"}:  # model weights the harness wrote, not stages
            continue
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            keys = set(f.keys())
        covered = set(data["files"].get(rel_path, {}))
        assert keys <= covered, f"{fixture.name}/floor.json misses {rel_path}: {sorted(keys - covered)[:5]}"

"""The parity standard: a stage passes when ours is within max(1e-4, 3 x the original's own noise floor).

The floor is what the original moves from itself when only its thread count changes; ``tools/parity/floor.py``
records it per stage in ``<fixture>/floor.json`` when it makes the fixture. A fixture without it, or a stage it
does not cover, fails: a tolerance with no measured floor behind it is not the standard (docs/parity.md).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

BASE = 1e-4  # below this, differences are fp32 rounding of one kernel against another
FACTOR = 3.0  # how far past the original's own thread-count noise ours may go


@lru_cache(maxsize=None)
def load_floor(fixture_dir: str | Path) -> dict:
    path = Path(fixture_dir) / "floor.json"
    if not path.is_file():
        raise AssertionError(
            f"{path} is missing: make the fixture with tools/parity/floor.py so the original's own noise floor is recorded")
    data = json.loads(path.read_text())
    threads = data.get("threads") or []
    if len(threads) != 2 or threads[0] == threads[1]:
        raise AssertionError(f"{path}: the floor needs two runs with different thread counts, got threads={threads}")
    return data


def floor(fixture_dir: str | Path, stage: str, file: str = "stages.safetensors") -> float:
    """The original's rel err against itself at ``stage`` (a key of ``file`` in the fixture)."""
    data = load_floor(str(fixture_dir))
    entries = data["files"].get(file)
    if entries is None:
        raise AssertionError(f"{fixture_dir}/floor.json covers no {file}; regenerate the fixture with tools/parity/floor.py")
    if stage not in entries:
        raise AssertionError(f"{fixture_dir}/floor.json has no floor for {file}:{stage}; regenerate it with tools/parity/floor.py")
    return float(entries[stage]["rel"])


def tolerance(fixture_dir: str | Path, stage: str, file: str = "stages.safetensors", base: float = BASE) -> float:
    """max(base, 3 x floor): the most ours may differ from the original at ``stage`` (rel err)."""
    return max(base, FACTOR * floor(fixture_dir, stage, file))


def check(rel: float, fixture_dir: str | Path, stage: str, file: str = "stages.safetensors", what: str = "the original") -> None:
    """Assert ``rel`` meets the standard, with a message giving both numbers."""
    tol = tolerance(fixture_dir, stage, file)
    fl = floor(fixture_dir, stage, file)
    assert rel <= tol, (f"stage {stage}: rel err {rel:.3e} vs {what}; allowed max(1e-4, 3 x floor {fl:.3e}) = {tol:.3e}")

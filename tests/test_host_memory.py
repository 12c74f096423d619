"""The command line's host-allocator settings (emo_model/app/host_memory.py), checked in fresh processes.

The speed they buy is measured by the benchmark (docs/performance.md), not here; these tests check that
the settings reach torch (its large tensors land on transparent huge pages), that glibc accepts them,
that the command line applies them before torch loads, and that the opt-out and the too-late case are
honest about it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HANG_GUARD_S, ROOT

LINUX = sys.platform.startswith("linux")
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")

# prints tune()'s result, then how many kB of a fresh 64 MiB torch tensor's mapping are huge pages
PROBE = """
import ctypes, json, sys
from emo_model.app.host_memory import tune
result = tune()
mmapped = None  # is a fresh 4 MiB malloc its own mmap (glibc's default threshold) or heap memory (ours)?
try:
    libc = ctypes.CDLL("libc.so.6")
    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                                   "uordblks", "fordblks", "keepcost")]
    libc.mallinfo2.restype, libc.malloc.restype = Info, ctypes.c_void_p
    before = libc.mallinfo2().hblks
    block = libc.malloc(4 << 20)
    mmapped = libc.mallinfo2().hblks - before
    libc.free(ctypes.c_void_p(block))
except (OSError, AttributeError):  # not glibc >= 2.33
    pass
import torch
x = torch.empty(64 << 20, dtype=torch.uint8)
x.fill_(1)
addr, huge, inside = x.data_ptr(), 0, False
with open("/proc/self/smaps") as f:
    for line in f:
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo <= addr < hi
        elif inside and line.startswith("AnonHugePages:"):
            huge = int(line.split()[1])
print(json.dumps({"tune": result, "huge_kb": huge, "mmapped": mmapped}))
"""


def clean_env() -> dict[str, str]:
    """This environment without the two switches, so each test starts from glibc's and torch's defaults."""
    return {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "EMO_HOST_ALLOCATOR")}


def probe(extra_env: dict[str, str] | None = None) -> dict:
    import json

    env = clean_env()
    env.update(extra_env or {})
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, env=env,
                       timeout=HANG_GUARD_S, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not LINUX, reason="/proc/self/smaps and glibc's mallopt are Linux's")
def test_settings_reach_torch_and_glibc():
    out = probe()
    assert out["tune"]["huge_pages"] is True, out
    if out["mmapped"] is not None:  # glibc: mallopt took, and a 4 MiB block now comes from the heap
        assert out["tune"]["malloc"] is True and out["mmapped"] == 0, out
    if THP.exists() and "[never]" not in THP.read_text():
        assert out["huge_kb"] >= 2048, out  # at least one 2 MiB page under the tensor


@pytest.mark.skipif(not LINUX, reason="/proc/self/smaps is Linux's")
def test_opt_out_changes_nothing():
    out = probe({"EMO_HOST_ALLOCATOR": "default"})
    assert out["tune"] == {"huge_pages": False, "malloc": False}
    assert out["mmapped"] in (1, None), out  # glibc's default: its own mapping
    if THP.exists() and "[madvise]" in THP.read_text():  # with 'always' the kernel gives huge pages anyway
        assert out["huge_kb"] == 0, out


def test_too_late_for_torch_says_so():
    code = "import torch\nfrom emo_model.app.host_memory import tune\nprint(tune()['huge_pages'])"
    env = clean_env()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                       timeout=HANG_GUARD_S, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr[-2000:]


def test_command_line_applies_them_before_torch():
    code = (
        "import os, sys\n"
        "from emo_model.app import cli\n"
        "try:\n    cli.main(['inspect', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(os.environ.get('THP_MEM_ALLOC_ENABLE'))\n"
    )
    env = clean_env()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                       timeout=HANG_GUARD_S, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    # tune() sets the switch only while torch is not loaded yet: "1" means it ran before the command imported torch
    assert r.stdout.strip().splitlines()[-1] == "1", r.stdout

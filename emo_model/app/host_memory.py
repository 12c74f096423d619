"""Host-memory allocation settings for our own processes (the command line), applied before torch loads.

Why: PyTorch's CPU tensors come from glibc's malloc. With glibc's defaults a block above the mmap
threshold (128 KiB, raised by glibc only as far as 32 MiB) is a fresh ``mmap`` that goes back to the
kernel when freed, and free memory above the trim threshold at the top of the heap is returned too. A
denoiser step allocates and frees gigabytes of activations, so every step faults all of them in again
and the kernel zeroes every page: 2.6 million minor page faults for one 1-step, 2-clip generation of
full-size SD1.5-sized weights at 128x128 (about 10 GB of zeroed pages). The original implementations
escape most of this by accident: loading a pickled state dict leaves their heap large and their mmap
threshold raised (2.7 thousand faults for the same generation). Measured side by side in
docs/performance.md: the two settings below take that generation from 21.9 s to 18.7 s, identical output.

* ``THP_MEM_ALLOC_ENABLE=1``: PyTorch's own switch; blocks of 2 MiB and more are 2 MiB aligned and
  advised for transparent huge pages, so a large tensor faults in 2 MiB at a time instead of 4 KiB. torch
  reads it once, at its first allocation, so it has to be in the environment before torch is imported.
* ``mallopt(M_MMAP_THRESHOLD, 32 MiB)``, ``mallopt(M_TRIM_THRESHOLD, 1 GiB)`` (glibc only): blocks up to
  32 MiB come from the heap and freed memory stays there for the next step instead of being unmapped.
  That costs some resident memory where activations are large (a full-size generation at 512x512: peak
  12.47 GB -> 13.03 GB, docs/performance.md), and memory freed after the peak is kept by the process until
  it exits, which is why only our own short-lived processes do this.

Not applied inside ComfyUI (a node pack must not change its host's allocator); docs/performance.md says
how to start ComfyUI with the same settings. ``EMO_HOST_ALLOCATOR=default`` turns both off (to measure
the difference).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

THP_ENV = "THP_MEM_ALLOC_ENABLE"
OPT_OUT_ENV = "EMO_HOST_ALLOCATOR"
M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest accepted value on 64-bit machines
TRIM_THRESHOLD = 1 << 30


# what tune() applied in this process (None: not called); benchmarks record it beside their figures
applied: dict[str, bool] | None = None


def tune() -> dict[str, bool]:
    """Apply the settings to this process (module docstring); returns which ones took effect.

    Call before torch is imported: afterwards the huge-page switch is no longer read by torch (the
    result then says False for it)."""
    global applied
    if os.environ.get(OPT_OUT_ENV, "").lower() == "default":
        applied = {"huge_pages": False, "malloc": False}
        return applied
    huge = "torch" not in sys.modules
    if huge:
        os.environ.setdefault(THP_ENV, "1")
    applied = {"huge_pages": huge and os.environ.get(THP_ENV) == "1", "malloc": _glibc_mallopt()}
    return applied


def _glibc_mallopt() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))

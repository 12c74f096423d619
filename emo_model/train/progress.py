"""What a training run tells its user: the processes and devices it runs on, the loss averaged over them, time and ETA.

* :func:`start_line`: one line at the start, e.g. ``2 processes (MULTI_CPU, gloo) on cpu x2``; every rank takes part
  (the devices are gathered).
* :func:`launch_warning`: ``accelerate launch --num_processes N`` without ``--multi_gpu`` (and without a multi-GPU
  default config) starts its simple launcher, which runs ONE process: it sets ``MASTER_ADDR`` / ``MASTER_PORT`` for
  N > 1 but no ``WORLD_SIZE`` (accelerate/commands/launch.py, ``simple_launcher``). That run is warned in one line.
* :func:`mean_over_processes`: the step's loss as the mean over every process (a collective: every rank calls it).
* :class:`StepClock`: seconds per step over the last log window and the time left (ETA) at that pace.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping


def start_line(acc) -> str:
    """``N processes (TYPE[, backend]) on DEVICES``; DEVICES are grouped per machine when there are several."""
    import torch.distributed as dist

    here = (socket.gethostname(), "cpu" if acc.device.type == "cpu" else str(acc.device))  # gloo on CPUs says cpu:0
    if acc.num_processes > 1:
        from accelerate.utils import gather_object

        where = [tuple(w) for w in gather_object([here])]
    else:
        where = [here]
    backend = f", {dist.get_backend()}" if dist.is_available() and dist.is_initialized() else ""
    hosts = list(dict.fromkeys(h for h, _ in where))
    if len(hosts) == 1:
        devices = _devices([d for _, d in where])
    else:
        devices = "; ".join(f"{h}: {_devices([d for hh, d in where if hh == h])}" for h in hosts)
    n = acc.num_processes
    return f"{n} process{'es' if n > 1 else ''} ({acc.distributed_type.name}{backend}) on {devices}"


def _devices(names: list[str]) -> str:
    """``cuda:0, cuda:1`` or ``cpu x2`` (repeated names counted)."""
    counts = dict.fromkeys(names, 0)
    for name in names:
        counts[name] += 1
    return ", ".join(name if k == 1 else f"{name} x{k}" for name, k in counts.items())


def launch_warning(env: Mapping[str, str], num_processes: int) -> str | None:
    """One line when ``accelerate launch`` was asked for several processes and started one (see the module docstring)."""
    simple_launcher = "ACCELERATE_USE_CPU" in env and "ACCELERATE_MIXED_PRECISION" in env
    if num_processes == 1 and simple_launcher and "MASTER_PORT" in env and "WORLD_SIZE" not in env:
        return (
            "warning: accelerate launch was given several processes (--num_processes N > 1) but started ONE: add --multi_gpu "
            "(GPUs), or on CPUs use torchrun --nproc_per_node N -m emo_model train ...; this run trains on 1 process"
        )
    return None


def mean_over_processes(acc, value: float) -> float:
    """``value`` averaged over every process (each rank's own loss of this step); every rank must call it."""
    if acc.num_processes == 1:
        return float(value)
    import torch

    return float(acc.reduce(torch.tensor([float(value)], device=acc.device), reduction="mean")[0])


def format_duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h04m``, ``3d04h``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


class StepClock:
    """Seconds per step since the previous :meth:`lap` (or the start), and the ETA of ``max_steps`` at that pace."""

    def __init__(self, step: int, max_steps: int, clock: Callable[[], float] = time.monotonic):
        self.clock, self.max_steps = clock, max_steps
        self.step, self.time = step, clock()

    def lap(self, step: int) -> tuple[float, float]:
        now = self.clock()
        per_step = (now - self.time) / max(1, step - self.step)
        self.step, self.time = step, now
        return per_step, per_step * max(0, self.max_steps - step)

    def line(self, step: int, loss: float) -> tuple[str, float]:
        """The console line of ``step`` (``step 30/200: loss 0.1234 | 1.25 s/step | ETA 3m32s``) and its s/step."""
        per_step, eta = self.lap(step)
        return f"step {step}/{self.max_steps}: loss {loss:.4f} | {per_step:.2f} s/step | ETA {format_duration(eta)}", per_step

"""The trainer's console progress: duration format, time per step and ETA, and the warning for an
``accelerate launch --num_processes N`` that started one process (with accelerate's own launcher code)."""

from __future__ import annotations

import pytest

from emo_model.train.progress import StepClock, format_duration, launch_warning


def test_durations_read_as_a_person_writes_them():
    assert [format_duration(s) for s in (0, 4.4, 59.6, 61, 3599, 3600, 7441, 86400 + 4 * 3600 + 59)] == [
        "0s", "4s", "1m00s", "1m01s", "59m59s", "1h00m", "2h04m", "1d04h",
    ]
    assert format_duration(-3) == "0s"


def test_step_clock_gives_the_pace_of_the_last_window_and_the_time_left():
    now = [100.0]
    clock = StepClock(10, 110, clock=lambda: now[0])  # resumed at step 10
    now[0] = 120.0
    assert clock.lap(20) == (2.0, 180.0)  # 20 s for 10 steps; 90 steps left
    now[0] = 125.0
    line, per_step = clock.line(30, 0.123456)
    assert per_step == 0.5 and line == "step 30/110: loss 0.1235 | 0.50 s/step | ETA 40s"
    now[0] = 126.0
    assert clock.lap(110) == (1.0 / 80, 0.0)


def _accelerate_env(monkeypatch, *flags: str) -> dict[str, str]:
    """The environment ``accelerate launch FLAGS script.py`` gives its script through the simple launcher."""
    from accelerate.commands import launch
    from accelerate.utils.launch import prepare_simple_launcher_cmd_env

    for name in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "ACCELERATE_USE_CPU", "ACCELERATE_MIXED_PRECISION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(launch, "default_config_file", "/nonexistent/accelerate.yaml")  # no user config file
    args, _, _ = launch._validate_launch_command(launch.launch_command_parser().parse_args([*flags, "train.py"]))
    assert not args.multi_gpu  # this machine has no GPU: accelerate picks its simple launcher, one process
    return prepare_simple_launcher_cmd_env(args)[1]


def test_accelerate_launch_without_multi_gpu_is_warned(monkeypatch):
    line = launch_warning(_accelerate_env(monkeypatch, "--num_processes", "2"), num_processes=1)
    assert line and "\n" not in line and "--multi_gpu" in line and "torchrun --nproc_per_node" in line
    assert launch_warning(_accelerate_env(monkeypatch, "--cpu", "--num_processes", "2"), num_processes=1)
    assert launch_warning(_accelerate_env(monkeypatch, "--num_processes", "1"), num_processes=1) is None
    # torchrun (and accelerate's multi-GPU launcher, which is torchrun) set WORLD_SIZE: no warning
    torchrun = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "WORLD_SIZE": "2", "RANK": "0"}
    assert launch_warning(torchrun, num_processes=2) is None
    assert launch_warning({}, num_processes=1) is None  # plain python -m emo_model train


@pytest.mark.parametrize("value", [0.25, 3.0])
def test_the_mean_over_one_process_is_its_own_value(value):
    from types import SimpleNamespace

    from emo_model.train.progress import mean_over_processes

    assert mean_over_processes(SimpleNamespace(num_processes=1), value) == value


def test_the_start_line_names_processes_and_devices(monkeypatch):
    from types import SimpleNamespace

    import accelerate.utils
    import torch

    from emo_model.train.progress import start_line

    def run(n, kind, device):
        return SimpleNamespace(num_processes=n, distributed_type=SimpleNamespace(name=kind), device=torch.device(device))

    assert start_line(run(1, "NO", "cpu")) == "1 process (NO) on cpu"
    where = [("a", "cuda:0"), ("a", "cuda:1"), ("b", "cuda:0"), ("b", "cuda:1")]
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda mine: where)
    assert start_line(run(4, "MULTI_GPU", "cuda:0")) == "4 processes (MULTI_GPU) on a: cuda:0, cuda:1; b: cuda:0, cuda:1"
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda mine: [("a", "cuda:0"), ("a", "cuda:1")])
    assert start_line(run(2, "MULTI_GPU", "cuda:0")) == "2 processes (MULTI_GPU) on cuda:0, cuda:1"

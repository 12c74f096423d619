"""Training checkpoints: accelerate's state, the native export, the LR schedule and EMA (JSON + safetensors, never
pickles), written atomically; the rotation of old step folders and the search for the newest complete one."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from ..network.model import EMOModel
from .train_config import TrainError

PARTIAL = ".partial"  # the suffix of a checkpoint folder being written (hidden: a dot in front)
STEP_FOLDER = re.compile(r"step-(\d+)")


def export_native(
    trainer, path: Path, state: dict[str, torch.Tensor] | None = None, metadata: dict[str, str] | None = None
) -> Path:
    """The model (EMA weights where EMA is on) and the run's VAE as a native safetensors file; ``metadata`` replaces
    the stage's entries (the distillation's student records its own)."""
    from ..weights.native import save_native

    if state is None:
        state = trainer.accelerator.get_state_dict(trainer.net)
    state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    if trainer.ema is not None:
        names = [n for n, p in trainer.accelerator.unwrap_model(trainer.net).model.named_parameters() if p.requires_grad]
        for name, shadow in zip(names, trainer.ema.shadow_params, strict=True):
            state[name] = shadow
    with torch.device("meta"):
        export = EMOModel(trainer.config)
    export.load_state_dict({k: v.detach().to("cpu", torch.float32) for k, v in state.items()}, strict=True, assign=True)
    if metadata is None:
        metadata = {
            "emo_training_stage": str(trainer.cfg.stage),
            "emo_training_step": str(trainer.global_step),
            "emo_ema": str(trainer.ema is not None),
        }
    return save_native(export, path, metadata=metadata, vae=_bundled_vae(trainer))


def _bundled_vae(trainer):
    """The VAE the run trains with, in float32 as its file holds it (the training copy may be bf16 / fp16), loaded
    once: every checkpoint carries it, so ``generate --model RUN`` needs no ``--vae``."""
    vae = getattr(trainer, "_vae_for_export", None)
    if vae is None:
        from ..weights import load_vae

        vae = trainer._vae_for_export = load_vae(trainer.vae_path, dtype=torch.float32)
    return vae


# The LR schedule and the EMA are saved as JSON + safetensors rather than through accelerate's
# register_for_checkpointing, whose files are pickles loaded with weights_only=False.
def save_extra_state(trainer, folder: Path) -> None:
    from safetensors.torch import save_file

    schedule = {k: v for k, v in trainer.lr_scheduler.state_dict().items() if k != "lr_lambdas"}
    (folder / "lr_scheduler.json").write_text(json.dumps(schedule))
    if trainer.ema is not None:
        state = trainer.ema.state_dict()
        shadow = state.pop("shadow_params")
        save_file(
            {f"shadow.{i}": t.detach().cpu().contiguous() for i, t in enumerate(shadow)}, str(folder / "ema.safetensors")
        )
        (folder / "ema.json").write_text(json.dumps(state))


def load_extra_state(trainer, folder: Path) -> None:
    from safetensors.torch import load_file

    schedule = json.loads((folder / "lr_scheduler.json").read_text())
    trainer.lr_scheduler.load_state_dict({**trainer.lr_scheduler.state_dict(), **schedule})
    if trainer.ema is not None:
        if not (folder / "ema.safetensors").is_file():
            raise TrainError(f"{folder} has no EMA state; it was trained without EMA (set ema.enabled: false to resume it)")
        tensors = load_file(str(folder / "ema.safetensors"))
        state = json.loads((folder / "ema.json").read_text())
        state["shadow_params"] = [tensors[f"shadow.{i}"] for i in range(len(tensors))]
        trainer.ema.load_state_dict(state)
        trainer.ema.to(trainer.accelerator.device)


def load_checkpoint(trainer, folder: Path) -> None:
    """Restore a run from a complete checkpoint folder: accelerate's state, the LR schedule, EMA and the data position."""
    state = json.loads((folder / "trainer_state.json").read_text())
    if state["stage"] != trainer.cfg.stage:
        raise TrainError(
            f"{folder} is a stage-{state['stage']} checkpoint; this run is stage {trainer.cfg.stage} "
            "(use --init to start a new stage from it)"
        )
    if "distill" in state.get("train_config", {}) and not hasattr(trainer.cfg, "distill"):
        raise TrainError(
            f"{folder} is a distillation checkpoint (train --stage distill); resume it with --stage distill, "
            "or start a stage from its student with --init"
        )
    if state["world_size"] != trainer.accelerator.num_processes:
        trainer.log(
            f"note: {folder} was saved with {state['world_size']} processes, now {trainer.accelerator.num_processes}: "
            "the data order after resuming differs from an uninterrupted run"
        )
    try:
        trainer.accelerator.load_state(str(folder))
    except ValueError as exc:  # torch's optimizer.load_state_dict: another set of trainable parameters
        if "parameter group" not in str(exc):
            raise
        raise TrainError(
            f"{folder} was saved with another set of trainable parameters (groups {state.get('groups')}, or an older version "
            "of the trainer); continue from its weights with --init FOLDER/emo-stageS-stepN.safetensors in a new --output"
        ) from exc
    load_extra_state(trainer, folder)
    trainer.global_step, trainer.epoch, trainer.batches_in_epoch = state["global_step"], state["epoch"], state["batches_in_epoch"]
    if trainer.batches_in_epoch >= trainer.sampler.batches_per_epoch():
        trainer.epoch, trainer.batches_in_epoch = trainer.epoch + 1, 0
    trainer.log(f"resumed from {folder} at step {trainer.global_step}")


def rotate(trainer) -> None:
    """Keep the newest ``keep_checkpoints`` step folders."""
    keep = trainer.cfg.keep_checkpoints
    if keep <= 0:
        return
    found = sorted(_step_folders(trainer.paths.checkpoints), key=_step_of)
    for old in found[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in trainer.paths.checkpoints.glob(f".step-*{PARTIAL}"):  # left by a run killed mid-write
        shutil.rmtree(stale, ignore_errors=True)


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete ``step-N`` folder (partial ones are hidden ``.step-N.partial`` folders, never taken)."""
    found = [p for p in _step_folders(folder) if (p / "trainer_state.json").is_file()]
    return max(found, key=_step_of) if found else None


def _step_folders(folder: Path) -> list[Path]:
    return [p for p in folder.glob("step-*") if p.is_dir() and STEP_FOLDER.fullmatch(p.name)]


def _step_of(path: Path) -> int:
    return int(STEP_FOLDER.fullmatch(path.name).group(1))


# What a full disk or a failing file system raises while a checkpoint is written (torch.save: RuntimeError).
def _write_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError

    return (OSError, RuntimeError, SafetensorError)


def save_checkpoint(trainer) -> Path:
    """``OUTPUT/checkpoints/step-N``, written atomically: every file goes into the hidden sibling ``.step-N.partial``
    (``trainer_state.json`` last), which is renamed into place only when all of it is written. A failed write removes
    the partial folder and ends in one line on every rank; ``--resume`` never sees a partial folder."""
    acc = trainer.accelerator
    folder = trainer.paths.checkpoints / f"step-{trainer.global_step:07d}"
    partial = folder.with_name(f".{folder.name}{PARTIAL}")
    acc.wait_for_everyone()
    if acc.is_main_process and partial.exists():
        shutil.rmtree(partial)
    acc.wait_for_everyone()
    error = ""
    try:
        acc.save_state(str(partial))
    except _write_errors() as exc:
        error = _first_line(exc)
    state = acc.get_state_dict(trainer.net)  # the full state on every rank (FSDP gathers), before any EMA swap
    if acc.is_main_process and not error:
        try:
            (partial / "emo_config.json").write_text(trainer.config.to_json())
            trainer.export_native(partial / trainer._native_name(), state)
            save_extra_state(trainer, partial)
            trainer_state = {
                "global_step": trainer.global_step,
                "epoch": trainer.epoch,
                "batches_in_epoch": trainer.batches_in_epoch,
                "stage": trainer.cfg.stage,
                "groups": list(trainer.groups),
                "world_size": acc.num_processes,
                "train_config": trainer.cfg.to_dict(),
            }
            (partial / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))  # last: marks it complete
            _replace_folder(partial, folder)
        except _write_errors() as exc:
            error = _first_line(exc)
    errors = [e for e in (_gather(acc, error)) if e]
    if errors:
        if acc.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        raise TrainError(
            f"could not write the checkpoint {folder}: {errors[0]}; nothing was kept of it (the previous checkpoints are "
            "intact): free disk space (or lower keep_checkpoints) and continue with --resume"
        )
    if acc.is_main_process:
        rotate(trainer)
        trainer.log(f"checkpoint: {folder}")
    acc.wait_for_everyone()
    return folder


def publish_final(trainer, folder: Path) -> Path:
    """The last checkpoint's native weights as ``OUTPUT/emo-stageS-final.safetensors`` (copied beside it, then renamed)."""
    target = trainer.paths.output / f"emo-stage{trainer.cfg.stage}-final.safetensors"
    partial = target.with_name(f".{target.name}{PARTIAL}")
    try:
        shutil.copyfile(folder / trainer._native_name(), partial)
        os.replace(partial, target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise TrainError(f"could not write {target}: {_first_line(exc)}; the weights are in {folder} (free disk space and copy them)") from exc
    return target


def _replace_folder(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; an existing ``target`` (the same step saved again) is replaced."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(source, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _gather(acc, error: str) -> list[str]:
    if acc.num_processes == 1:
        return [error]
    from accelerate.utils import gather_object

    return gather_object([error])


def _first_line(exc: BaseException) -> str:
    from ..validation import first_line

    return f"{type(exc).__name__}: {first_line(exc)}"

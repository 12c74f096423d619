"""Training checkpoints beside accelerate's own state: the native export, the LR schedule and EMA (JSON + safetensors,
never pickles), and the rotation of old step folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..network.model import EMOModel
from .train_config import TrainError


def export_native(trainer, path: Path, state: dict[str, torch.Tensor] | None = None) -> Path:
    """The model (EMA weights where EMA is on) as a native safetensors file."""
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
    metadata = {
        "emo_training_stage": str(trainer.cfg.stage),
        "emo_training_step": str(trainer.global_step),
        "emo_ema": str(trainer.ema is not None),
    }
    return save_native(export, path, metadata=metadata)


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


def rotate(trainer) -> None:
    """Keep the newest ``keep_checkpoints`` step folders."""
    keep = trainer.cfg.keep_checkpoints
    if keep <= 0:
        return
    found = sorted((p for p in trainer.paths.checkpoints.glob("step-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
    for old in found[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(folder: Path) -> Path | None:
    found = [p for p in folder.glob("step-*") if (p / "trainer_state.json").is_file()]
    return max(found, key=lambda p: int(p.name.split("-")[1])) if found else None

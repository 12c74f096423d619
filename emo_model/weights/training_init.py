"""Training initialisation: SD1.5 UNet weights into both UNets, AnimateDiff motion modules, and the weights inside a run folder."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..network.model import EMOModel
from ..network.unet_blocks import UNetBase
from .files import (
    DIFFUSERS_WEIGHTS,
    LDM_UNET_PREFIX,
    CheckpointInput,
    TensorFile,
    WeightsError,
    _shapes,
    read_state_dict,
)
from .shapes import MatchReport, _looks_like, compare_shapes, module_group

MODEL_CONFIGS = Path(__file__).parent.parent / "model_configs"  # the SD1.5 UNet config shipped with the package

# What `python -m emo_model train` writes (emo_model/train/trainer.py): OUTPUT/emo-stageS-final.safetensors, and
# OUTPUT/checkpoints/step-NNNNNNN/ holding emo-stageS-stepN.safetensors beside accelerate's state; a step folder is
# complete once its trainer_state.json is written (what --resume reads).
FINAL_GLOB, STEP_GLOB = "emo-stage*-final.safetensors", "emo-stage*-step*.safetensors"
CHECKPOINTS, COMPLETE_MARK = "checkpoints", "trainer_state.json"


@dataclass
class InitReport:
    """What a training initialisation wrote into a model (keys in EMOModel naming)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)  # file tensor (placed under its target) -> why it was left out
    uninitialised: list[str] = field(default_factory=list)  # model tensors in scope that kept their fresh values

    def lines(self) -> list[str]:
        out = [f"{self.source}: {len(self.loaded)} tensors loaded"]
        reasons = Counter((module_group(k), why) for k, why in self.dropped.items())
        out += [f"dropped {group}: {n} tensors ({why})" for (group, why), n in reasons.items()]
        out += [f"uninitialised {group}: {n} tensors" for group, n in Counter(map(module_group, self.uninitialised)).items()]
        return out


def _tensors_of(path: CheckpointInput) -> tuple[dict[str, torch.Tensor], str]:
    if isinstance(path, TensorFile):
        return path.tensors, str(path.path)
    return read_state_dict(path), str(path)


def _read_config(name: str) -> dict:
    return json.loads((MODEL_CONFIGS / name / "config.json").read_text())


def _diffusers_folder(path: Path, subfolder: str, class_name: str) -> tuple[dict, Path]:
    """(config, weights file) of a diffusers model folder, or of the pipeline folder holding it."""
    folder = path / subfolder if (path / subfolder / "config.json").is_file() else path
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise WeightsError(
            f"{path}: no config.json (a diffusers {class_name} folder holds config.json and diffusion_pytorch_model.safetensors)"
        )
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{config_file}: not valid JSON ({exc})") from None
    if config.get("_class_name", class_name) != class_name:
        raise WeightsError(f"{folder} holds a {config['_class_name']}, not a {class_name}")
    weights = next((folder / n for n in DIFFUSERS_WEIGHTS if (folder / n).is_file()), None)
    if weights is None:
        raise WeightsError(f"{folder}: no weights ({' or '.join(DIFFUSERS_WEIGHTS[:2])})")
    return config, weights


def _is_cross_attention(key: str) -> bool:
    return ".attn2." in key or (".transformer_blocks." in key and ".norm2." in key)


def _is_new_layer(key: str) -> bool:
    """Backbone layers SD1.5 does not have (motion modules with the speed layers, region audio modules)."""
    return ".motion_modules." in key or ".audio_modules." in key


def _sd15_drop_reason(key: str, shape: tuple[int, ...], target: UNetBase) -> str | None:
    cross = target.cfg.cross_attention_dim
    if cross is None and _is_cross_attention(key):
        return "this UNet has no cross-attention (attn2/norm2)"
    if target.conv_out is None and key.startswith(("conv_norm_out.", "conv_out.")):
        return "this UNet has no output head (conv_norm_out/conv_out)"
    if cross is not None and key.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) and shape[1] != cross:
        return f"attn2 reads {cross}-wide tokens here, {shape[1]}-wide text tokens in the file"
    return None


def load_sd15_unet_weights(model: EMOModel, path: CheckpointInput) -> InitReport:
    """Initialise both UNets' spatial layers from SD1.5 (EMO stage 1, and training any family's network).

    ``path``: a diffusers UNet folder (``config.json`` + ``diffusion_pytorch_model.*``), the pipeline
    folder holding ``unet/``, a diffusers UNet file, or a single-file SD checkpoint in the original LDM
    layout (``model.diffusion_model.*``; converted with diffusers' converter). Left out on purpose, and
    listed in the report: ``attn2``/``norm2`` for a UNet without cross-attention, ``conv_norm_out``/
    ``conv_out`` for a ReferenceNet without output head, ``attn2.to_k``/``to_v`` where the model's
    cross-attention width is not the file's. Every other tensor must fit exactly, both ways (new layers
    such as motion and audio modules aside). The report's ``uninitialised`` covers the whole model.
    """
    unet, source = _sd15_unet_tensors(path, model.denoising_unet.cfg.layers_per_block)
    report = InitReport(source=source)
    plans = {}
    for prefix in ("reference_unet", "denoising_unet"):
        target = getattr(model, prefix)
        own = _shapes(target.state_dict())
        take, check = {}, MatchReport()
        for key, tensor in unet.items():
            reason = _sd15_drop_reason(key, tuple(tensor.shape), target)
            if reason is not None:
                report.dropped[f"{prefix}.{key}"] = reason
            elif key not in own:
                check.unexpected.append(f"{prefix}.{key}")
            elif own[key] != tuple(tensor.shape):
                check.mismatched[f"{prefix}.{key}"] = (tuple(tensor.shape), own[key])
            else:
                take[key] = tensor
        check.missing = [f"{prefix}.{k}" for k in own if k not in unet and not _is_new_layer(k)]
        if not check.complete:
            raise WeightsError(f"{source} is not an SD1.5 UNet that fits {prefix} of {model.config.name}: {check.summary()}")
        plans[prefix] = (target, take)
    for prefix, (target, take) in plans.items():
        target.load_state_dict(take, strict=False)
        report.loaded += [f"{prefix}.{k}" for k in take]
    loaded = set(report.loaded)
    report.uninitialised = [k for k in model.state_dict() if k not in loaded]
    return report


def _sd15_unet_tensors(path: CheckpointInput, layers_per_block: int) -> tuple[dict[str, torch.Tensor], str]:
    if not isinstance(path, TensorFile) and Path(path).is_dir():
        _, weights = _diffusers_folder(Path(path), "unet", "UNet2DConditionModel")
        path = weights
    tensors, source = _tensors_of(path)
    if any(k.startswith(LDM_UNET_PREFIX) for k in tensors):
        return _convert_ldm_unet(tensors, layers_per_block, source), source
    if "conv_in.weight" in tensors and any(k.startswith("down_blocks.") for k in tensors):
        return tensors, source
    raise WeightsError(f"{source}: neither an SD checkpoint (model.diffusion_model.*) nor a diffusers UNet{_looks_like(tensors)}")


def _convert_ldm_unet(tensors: Mapping[str, torch.Tensor], layers_per_block: int, source: str) -> dict[str, torch.Tensor]:
    """LDM UNet keys -> diffusers names with diffusers' converter (imported here: it pulls in transformers)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    ldm = {k: v for k, v in tensors.items() if k.startswith(LDM_UNET_PREFIX)}
    # The LDM block numbering depends on layers_per_block only, which must be the model's (SD1.5: 2).
    config = {**_read_config("sd15-unet"), "layers_per_block": layers_per_block}
    unet = convert_ldm_unet_checkpoint(ldm, config)
    holes = [k for k, v in unet.items() if v is None]
    if holes or len(unet) != len(ldm):
        raise WeightsError(
            f"{source}: its {LDM_UNET_PREFIX}* tensors do not form an SD1.x UNet with {layers_per_block} layers per block "
            f"({len(ldm)} tensors in, {len(unet) - len(holes)} converted)"
        )
    return unet


def load_animatediff_motion_module(model: EMOModel, path: CheckpointInput) -> InitReport:
    """Copy an AnimateDiff v2 motion module (``mm_sd_v15_v2.ckpt``, or a family's motion-module file) in.

    Strict on every motion-module tensor; EMO's speed layers (ours, inside the temporal blocks) stay
    as they are, and so does ``pos_encoder.pe`` when the file omits it (the sinusoid table is
    computed). Those are the report's ``uninitialised`` keys.
    """
    tensors, source = _tensors_of(path)
    unet, prefix = model.denoising_unet, "denoising_unet."
    own = {prefix + k: tuple(v.shape) for k, v in unet.state_dict().items() if ".motion_modules." in k}
    expected = {k: shape for k, shape in own.items() if ".speed_norm." not in k and ".speed_attn." not in k}
    report = compare_shapes({prefix + k: tuple(v.shape) for k, v in tensors.items()}, expected)
    report.missing = [k for k in report.missing if not k.endswith(".pos_encoder.pe")]
    if not report.complete:
        raise WeightsError(f"{source} is not an AnimateDiff v2 motion module for {model.config.name}: {report.summary()}")
    unet.load_state_dict(tensors, strict=False)
    loaded = [prefix + k for k in tensors]
    return InitReport(source=source, loaded=loaded, uninitialised=[k for k in own if k.removeprefix(prefix) not in tensors])


def training_weights_file(folder: Path) -> Path | None:
    """The native weights inside a training output folder, or None when ``folder`` is not one.

    * a checkpoint folder (``OUTPUT/checkpoints/step-N``): its ``emo-stageS-stepN.safetensors``;
    * ``OUTPUT/checkpoints``: that of its newest complete checkpoint;
    * a run folder (``OUTPUT``, holding ``checkpoints/step-N`` or ``emo-stageS-final.safetensors``): whichever of the
      final file and the newest complete checkpoint has the higher step (the final file when equal).

    A training folder without usable weights (an interrupted checkpoint, no checkpoint yet) raises a
    :class:`WeightsError` that says what was expected.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    if (folder / COMPLETE_MARK).is_file() or (_is_step_name(folder) and folder.parent.name == CHECKPOINTS):
        return _checkpoint_weights(folder)
    finals = sorted(folder.glob(FINAL_GLOB))
    steps = _step_folders(folder) or _step_folders(folder / CHECKPOINTS)
    if not finals and not steps:  # not what the trainer writes (an empty checkpoints/ folder says too little)
        return None
    if len(finals) > 1:
        raise WeightsError(f"{folder} holds {len(finals)} final weights files ({', '.join(f.name for f in finals)}); give one of them")
    complete = [s for s in steps if (s / COMPLETE_MARK).is_file()]
    newest = max(complete, key=_step_of) if complete else None
    if finals and (newest is None or _final_step(finals[0]) >= _step_of(newest)):
        return finals[0]
    if newest is not None:
        return _checkpoint_weights(newest)
    raise WeightsError(
        f"{folder} is a training run with no weights yet: expected {FINAL_GLOB.replace('*', 'S')} or a complete "
        f"{CHECKPOINTS}/step-N folder (with {COMPLETE_MARK}); wait for the first checkpoint or give a weights file"
    )


def _step_folders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in folder.glob("step-*") if p.is_dir() and _is_step_name(p)]


def _is_step_name(folder: Path) -> bool:
    return folder.name.startswith("step-") and folder.name[5:].isdigit()


def _step_of(folder: Path) -> int:
    return int(folder.name[5:])


def _final_step(path: Path) -> int:
    """The training step a final file records (``emo_training_step``); -1 when it records none."""
    from .native import native_metadata

    try:  # an unreadable header reads as {} here: open_tensors says why when the file is loaded
        return int(native_metadata(path).get("emo_training_step", -1))
    except ValueError:
        return -1


def _checkpoint_weights(folder: Path) -> Path:
    found = sorted(folder.glob(STEP_GLOB))
    if not (folder / COMPLETE_MARK).is_file():
        raise WeightsError(
            f"{folder} is an incomplete training checkpoint (no {COMPLETE_MARK}: its writing was interrupted); "
            "give an earlier step-N folder or the run folder"
        )
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise WeightsError(f"{folder}: a training checkpoint holds one {STEP_GLOB.replace('*', 'S', 1).replace('*', 'N')}; found {what}")
    return found[0]

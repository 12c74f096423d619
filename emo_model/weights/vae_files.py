"""VAE weight files: a diffusers folder, the single LDM file, or the VAE bundled in a native checkpoint."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from .checkpoints import inspect_checkpoint
from .files import (
    CheckpointInput,
    TensorFile,
    WeightsError,
    _assert_materialised,
    _materialise,
    _shapes,
    open_tensors,
    read_state_dict,
)
from .native import CONFIG_KEY, VAE_CONFIG_KEY, VAE_PREFIX
from .shapes import _looks_like, compare_shapes
from .training_init import (
    _diffusers_folder,
    _read_config,
    _tensors_of,
    training_weights_file,
)

LDM_VAE_PREFIXES = ("first_stage_model.", "vae.")


# diffusers renamed the VAE's attention in 0.14; sd-vae-ft-mse's files still use the old names.
_OLD_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def load_vae(path: CheckpointInput, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> AutoencoderKL:
    """The SD VAE from a diffusers folder (or the pipeline folder holding ``vae/``), a diffusers VAE
    file, or a single LDM file (``vae-ft-mse-840000-ema-pruned.safetensors``, keys ``encoder.down.N...``,
    possibly under ``first_stage_model.`` as in a full SD checkpoint, whose other parts are ignored).
    A native EMO file that carries a VAE (the demo's ``emo-tiny-demo.safetensors``) gives that VAE, and so
    does a training run or checkpoint folder whose weights carry one (:func:`training_weights_file`).

    LDM files are converted with diffusers' converter and the shipped sd-vae-ft-mse config, whose
    shape fields (channels, blocks, latent width) are read from the file. Strict on every VAE tensor.
    """
    if not isinstance(path, TensorFile) and Path(path).is_dir():
        inner = training_weights_file(Path(path))
        if inner is not None:  # a training run or checkpoint folder: the VAE its weights carry
            return load_vae(inner, device=device, dtype=dtype)
        config, weights = _diffusers_folder(Path(path), "vae", "AutoencoderKL")
        state, source = _modern_vae_names(read_state_dict(weights)), weights
    else:
        file = path if isinstance(path, TensorFile) else open_tensors(path)
        if VAE_CONFIG_KEY in file.metadata or CONFIG_KEY in file.metadata:  # a native EMO file: only the VAE it carries
            vae = load_bundled_vae(file, device=device, dtype=dtype)
            if vae is None:
                raise WeightsError(
                    f"{file.name} is an EMO model file without a VAE in it; give a diffusers AutoencoderKL folder, "
                    "an SD VAE file, or a native file that carries a VAE (the demo's emo-tiny-demo.safetensors has one)"
                )
            return vae
        tensors, source = _tensors_of(file)
        if any(k.startswith("encoder.down_blocks.") for k in tensors):
            config, state = _read_config("sd-vae-ft-mse"), _modern_vae_names(tensors)
        else:
            config, state = _convert_ldm_vae(tensors, source)
    return _build_vae(config, state, source, device, dtype)


def load_bundled_vae(
    path: CheckpointInput | Sequence[CheckpointInput], *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> AutoencoderKL | None:
    """The VAE stored in a native file next to the model (``vae.*`` + ``emo_vae_config``), else None."""
    if isinstance(path, TensorFile):
        file = path
    elif isinstance(path, (str, os.PathLike)) and Path(path).is_file():
        file = open_tensors(path)
    elif isinstance(path, (str, os.PathLike)) and Path(path).is_dir():
        checkpoint = inspect_checkpoint(path)  # a folder holding one native file
        return load_bundled_vae(checkpoint.files["model"], device=device, dtype=dtype) if checkpoint.bundled_vae else None
    else:
        return None  # lists of part files carry no VAE
    if VAE_CONFIG_KEY not in file.metadata:
        return None
    try:
        config = json.loads(file.metadata[VAE_CONFIG_KEY])
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{file.name}: unreadable {VAE_CONFIG_KEY} metadata ({exc})") from None
    state = {k[len(VAE_PREFIX) :]: v for k, v in file.tensors.items() if k.startswith(VAE_PREFIX)}
    return _build_vae(config, state, file.name, device, dtype)


def _build_vae(
    config: Mapping, state: Mapping[str, torch.Tensor], source: str | Path, device: str | torch.device, dtype: torch.dtype | None
) -> AutoencoderKL:
    """AutoencoderKL(config) built on the meta device, the tensors checked strictly and assigned."""
    device = torch.device(device)
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(dict(config))
    report = compare_shapes(_shapes(state), _shapes(vae.state_dict()))
    if not report.complete:
        raise WeightsError(f"{source} does not fit the AutoencoderKL of its config: {report.summary()}")
    vae.load_state_dict({k: _materialise(v, device, dtype) for k, v in state.items()}, strict=True, assign=True)
    if device.type != "meta":
        _assert_materialised(vae)
    return vae.eval()


def _modern_vae_names(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in tensors.items():
        module, _, leaf = key.rpartition(".")
        parent, _, name = module.rpartition(".")
        if ".mid_block.attentions." in key and name in _OLD_VAE_ATTENTION:
            key = f"{parent}.{_OLD_VAE_ATTENTION[name]}.{leaf}"
        out[key] = tensor
    return out


def _convert_ldm_vae(tensors: Mapping[str, torch.Tensor], source: str) -> tuple[dict, dict[str, torch.Tensor]]:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    prefix = next((p for p in LDM_VAE_PREFIXES if any(k.startswith(p) for k in tensors)), "")
    ldm = {
        k[len(prefix) :]: v
        for k, v in tensors.items()
        if k.startswith(prefix) and not k[len(prefix) :].startswith(("loss.", "model_ema."))  # LDM training leftovers
    }
    if "encoder.conv_in.weight" not in ldm:
        raise WeightsError(f"{source}: not a VAE (no encoder.conv_in weights, in diffusers or LDM naming){_looks_like(tensors)}")
    config = _vae_config_from_ldm(ldm, source)
    state = convert_ldm_vae_checkpoint(ldm, config)
    if len(state) != len(ldm):
        raise WeightsError(f"{source}: {len(ldm) - len(state)} of its VAE tensors have no place in an AutoencoderKL")
    return config, state


def _vae_config_from_ldm(ldm: Mapping[str, torch.Tensor], source: str) -> dict:
    """The shipped SD VAE config with the shape fields of this file (equal to it for the SD VAE itself)."""
    try:
        levels = 1 + max(int(k.split(".")[2]) for k in ldm if k.startswith("encoder.down."))
        blocks = 1 + max(int(k.split(".")[4]) for k in ldm if k.startswith("encoder.down.0.block."))
        channels = [ldm[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in range(levels)]
        shapes = {
            "in_channels": ldm["encoder.conv_in.weight"].shape[1],
            "out_channels": ldm["decoder.conv_out.weight"].shape[0],
            "latent_channels": ldm["quant_conv.weight"].shape[0] // 2,
        }
    except (KeyError, ValueError, IndexError) as exc:
        raise WeightsError(f"{source}: not an SD-style VAE in LDM naming (cannot read its layout: {exc})") from None
    return {
        **_read_config("sd-vae-ft-mse"),
        **shapes,
        "block_out_channels": channels,
        "layers_per_block": blocks,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
    }

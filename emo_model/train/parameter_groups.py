"""Which parameters train in which stage.

Parameter groups (:func:`parameter_group`; every parameter is in exactly one):
``reference_net``, ``backbone`` (spatial layers of the denoising UNet), ``temporal`` (motion modules
without the speed layers), ``speed``, ``audio`` (audio projection + the backbone's attn2/norm2 in the
audio-in-attn2 layout, ``audio_modules`` in the region-audio one), ``identity`` (the image projection and its
identity attn2), ``face_locator``.
"""


from __future__ import annotations

from ..configs import EMOConfig
from ..network.model import EMOModel
from .train_config import GROUPS, STAGE_TRAINABLE, TrainError  # noqa: F401 (STAGE_TRAINABLE: the stage defaults)


def parameter_group(name: str, config: EMOConfig) -> str:
    """The group (:data:`GROUPS`) of an :class:`EMOModel` parameter."""
    if name.startswith("reference_unet."):
        return "reference_net"
    if name.startswith("face_locator."):
        return "face_locator"
    if name.startswith("audioproj."):
        return "audio"
    if name.startswith("imageproj."):
        return "identity"
    if name.startswith("speed_encoder.") or ".speed_attn." in name or ".speed_norm." in name:
        return "speed"
    if not name.startswith("denoising_unet."):
        raise TrainError(f"parameter {name} belongs to no known module")
    if ".motion_modules." in name:
        return "temporal"
    if ".audio_modules." in name:
        return "audio"
    if ".transformer_blocks." in name and (".attn2." in name or ".norm2." in name) and ".attentions." in name:
        return {"audio": "audio", "identity": "identity"}.get(config.backbone.cross_attention_input, "backbone")
    return "backbone"


def set_trainable(model: EMOModel, groups: tuple[str, ...] | list[str]) -> dict[str, int]:
    """requires_grad per group; returns the number of trainable parameters per group."""
    counts: dict[str, int] = {}
    for name, p in model.named_parameters():
        group = parameter_group(name, model.config)
        p.requires_grad_(group in groups)
        if group in groups:
            counts[group] = counts.get(group, 0) + p.numel()
    if not counts:
        raise TrainError(f"no parameter of this model is in the groups {list(groups)}")
    return counts



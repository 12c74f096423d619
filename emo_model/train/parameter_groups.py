"""Which parameters train in which stage.

Parameter groups (:func:`parameter_group`; every parameter is in exactly one):
``reference_net``, ``backbone`` (spatial layers of the denoising UNet), ``temporal`` (motion modules
without the speed layers), ``speed``, ``audio`` (audio projection + the backbone's attn2/norm2 in the
audio-in-attn2 layout, ``audio_modules`` in the region-audio one), ``identity`` (the image projection and its
identity attn2), ``face_locator``.
"""


from __future__ import annotations

from functools import lru_cache

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


def set_trainable(model: EMOModel, groups: tuple[str, ...] | list[str], exclude: frozenset[str] = frozenset()) -> dict[str, int]:
    """requires_grad per group, except the names in ``exclude`` (:func:`unreachable_parameters`); returns the number
    of trainable parameters per group."""
    counts: dict[str, int] = {}
    for name, p in model.named_parameters():
        group = parameter_group(name, model.config)
        train = group in groups and name not in exclude
        p.requires_grad_(train)
        if train:
            counts[group] = counts.get(group, 0) + p.numel()
    if not counts:
        raise TrainError(f"no parameter of this model is in the groups {list(groups)}")
    return counts


def unreachable_parameters(
    config: EMOConfig, stage: int, frames: int, motion_frames: int, audio_shape: tuple[int, ...] | None = None
) -> frozenset[str]:
    """Names of the parameters that get no gradient in a training step of ``stage``, whatever the weights.

    Found by one forward of :class:`~.training_net.TrainingNet` on the meta device (shapes only, no memory, no
    arithmetic) with every condition kept, and a walk of its autograd graph (the nodes a backward pass visits): a
    parameter the graph does not reach never reaches the loss (the ReferenceNet's layers after its last bank input, the
    audio layers in stage 1, ...). DDP without ``find_unused_parameters`` fails on such a parameter if it is trainable,
    so :func:`set_trainable` leaves them out. ``tests/test_train.py`` checks the result against a real backward.
    ``audio_shape``: one frame's audio features (the dataset's); None derives it from ``config.audio``.
    """
    if audio_shape is None:
        a = config.audio
        audio_shape = (a.window, a.feature_rows, a.dim)
    return _unreachable(config.to_json(), stage, frames, motion_frames, tuple(audio_shape))


@lru_cache(maxsize=16)
def _unreachable(config_json: str, stage: int, frames: int, motion_frames: int, audio_shape: tuple[int, ...]) -> frozenset[str]:
    import torch

    from .training_net import TrainingNet

    config = EMOConfig.from_json(config_json)
    with torch.device("meta"):
        model = EMOModel(config)
    model.requires_grad_(True)
    b, c, h = 1, config.latent_channels, 16
    frames = 1 if stage == 1 else frames
    n = 0 if stage == 1 else motion_frames

    def meta(*shape, dtype=torch.float32):
        return torch.zeros(*shape, dtype=dtype, device="meta")

    keep = torch.ones(b, dtype=torch.bool)  # the backbone reads reference_enabled on the CPU
    net = TrainingNet(model, stage, config.preset.first_clip_motion)
    pred = net(
        meta(b, c, frames, h, h),
        meta(b, dtype=torch.long),
        meta(b, c, h, h),
        meta(b, h * config.vae_scale_factor, h * config.vae_scale_factor),
        keep,
        keep.to("meta"),
        motion_latents=meta(b, n, c, h, h) if n else None,
        first_clip=meta(b, dtype=torch.bool) if n else None,
        audio_features=meta(b, frames, *audio_shape) if stage > 1 else None,
        speed=meta(b, n + frames) if stage > 1 else None,
    )
    reached = _leaves(pred.grad_fn)  # the backward pass would visit exactly these nodes (a meta backward is slower)
    return frozenset(name for name, p in model.named_parameters() if id(p) not in reached)


def _leaves(root) -> set[int]:
    """``id`` of every leaf tensor (parameter) whose gradient accumulator the autograd graph from ``root`` reaches."""
    seen, found, stack = set(), set(), [root]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad
        if variable is not None:
            found.add(id(variable))
        stack.extend(fn for fn, _ in node.next_functions)
    return found


def stage_groups(
    model: EMOModel, stage: int, groups: tuple[str, ...] | list[str], unreachable: frozenset[str], *, chosen: bool
) -> tuple[str, ...]:
    """The groups of ``groups`` this model has; ``chosen`` (the config's ``trainable``): a group none of whose
    parameters reaches the loss in this stage is a mistake, said in one line."""
    present: dict[str, bool] = {}
    for name, _ in model.named_parameters():
        group = parameter_group(name, model.config)
        present[group] = present.get(group, False) or name not in unreachable
    if chosen:
        dead = [g for g in groups if present.get(g) is False]
        if dead:
            allowed = [g for g in GROUPS if present.get(g)]
            raise TrainError(
                f"trainable: {', '.join(map(repr, dead))} get{'s' if len(dead) == 1 else ''} no gradient in stage {stage} "
                f"(this stage's forward pass does not use {'it' if len(dead) == 1 else 'them'}); stage {stage} can train "
                f"{', '.join(allowed)}: change trainable in the config or with --set trainable=[...] (null = the stage's default)"
            )
    return tuple(g for g in groups if present.get(g))


def check_trainable(config: EMOConfig, stage: int, trainable: list[str], frames: int | None, motion_frames: int | None) -> None:
    """The config's ``trainable`` against what ``stage`` can train, before any weights load (one line, see :func:`stage_groups`).
    A layout the meta dry run cannot trace is left to the trainer's own check."""
    import torch

    frames = config.preset.frames_per_clip if frames is None else frames
    motion_frames = config.preset.motion_frames if motion_frames is None else motion_frames
    try:
        unreachable = unreachable_parameters(config, stage, frames, motion_frames)
    except (RuntimeError, NotImplementedError, TypeError, KeyError, ValueError):
        return
    with torch.device("meta"):
        model = EMOModel(config)
    stage_groups(model, stage, trainable, unreachable, chosen=True)

"""``python -m emo_model train``: EMO's three training stages on HF accelerate.

The recipe (paper §3.3 and §4.1; what the paper leaves open follows the open re-implementations' published training setups)
----------------------------------------------------------------------------------------------------
* **Stage 1, image pretraining.** The backbone gets one frame; the ReferenceNet gets another random
  frame of the same segment; temporal modules are bypassed (``Conditioning.temporal=False``) and no
  audio is fed (the backbone's ``attn2`` is skipped). Trains the ReferenceNet, the backbone's spatial
  layers and the Face Locator, initialised from SD1.5 (``--sd15``). The audio layers (``attn2`` /
  ``norm2`` of the emo layout, the audio projection) get no signal here and stay frozen, bit for bit.
* **Stage 2, video.** ``n`` motion frames + ``f`` frames per sample (4 + 12 for ``emo``); the motion
  frames' latents go through the ReferenceNet (:meth:`EMOModel.encode_motion`) exactly as the sampler
  feeds the previous clip's last frames; with probability ``first_clip_ratio`` a sample is trained as a
  first clip instead (zero motion features, or the portrait's, per the preset). Temporal modules come
  from AnimateDiff v2 (``--animatediff``). Default trainable groups: ``temporal``, ``audio`` and
  ``face_locator``. The paper does not say what is frozen in stage 2; the published setups freeze everything but the
  motion and audio modules, for two reasons that hold here too: with batch 4 of 16-frame clips the
  spatial layers would drift from the stage-1 image quality and identity, and optimiser state for the
  2.2 B parameters would roughly double the memory (see docs/training.md). The Face Locator (1 M
  parameters) is kept trainable because the temporal layers now change what its features are added
  to. ``trainable: [...]`` in the config overrides the list.
* **Stage 3, speed.** Only ``temporal`` and ``speed`` (the speed encoder MLP and the ``speed_attn`` /
  ``speed_norm`` inside the motion modules) train; the audio layers stay frozen, as the paper insists
  (training both "undermines the driven ability of the audio").

Shared by all stages: lr 1e-5 (AdamW, or 8-bit AdamW with bitsandbytes), gradient clipping 1.0,
condition dropout for classifier-free guidance per sample (the unconditional branch of
:mod:`emo_model.pipeline`: reference dropped = ``reference_enabled`` False + zero Face Locator features;
audio dropped = zero audio tokens; both; 5 % each by default, as the published setups), optional noise offset and
min-SNR-gamma loss weighting, epsilon or v-prediction from the config's :class:`SchedulerConfig`
(a diffusers ``DDPMScheduler`` with the same betas and zero-SNR rescale the sampler uses), mixed
precision and multi-GPU from accelerate, gradient checkpointing, optional EMA.

Parameter groups (:func:`parameter_group`; every parameter is in exactly one):
``reference_net``, ``backbone`` (spatial layers of the denoising UNet), ``temporal`` (motion modules
without the speed layers), ``speed``, ``audio`` (audio projection + the backbone's attn2/norm2 in the
audio-in-attn2 layout, ``audio_modules`` in the region-audio one), ``identity`` (the image projection and its
identity attn2), ``face_locator``.

Checkpoints and exact resume
----------------------------
Every ``checkpoint_every`` steps ``OUTPUT/checkpoints/step-NNNNNNN/`` receives accelerate's state
(model, optimiser, LR schedule, EMA, RNG states, via ``save_state``), ``trainer_state.json`` (step,
epoch and the number of batches this epoch already used) and the weights in our native format
(``emo-stageS-stepN.safetensors``, :func:`emo_model.weights.save_native`, the EMA weights when EMA is
on), which the LoadEMOModel node opens directly. The final weights also go to
``OUTPUT/emo-stageS-final.safetensors``. ``--resume latest`` (or a checkpoint folder) restores all
of it; the per-step randomness (timesteps, noise, dropout) is drawn from generators seeded by
``(seed, step, rank)`` and the data order from ``(seed, epoch)``, so N steps straight and N/2 + resume
+ N/2 give the same weights.

Samples: every ``sample_every`` steps, on the main process, a held-out segment (the dataset's
``holdout_segments``) is generated: stage 1 writes a PNG (reference | samples | ground truth), stages
2-3 an mp4 through :class:`EMOPipeline` with the segment's audio (generated | ground truth), in
``OUTPUT/samples``. Logs (loss, lr, grad norm, seconds per step) go to TensorBoard in ``OUTPUT/logs``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import EMOConfig, get_config
from ..model import Conditioning, EMOModel
from ..validation import InputError

GROUPS = ("reference_net", "backbone", "temporal", "speed", "audio", "identity", "face_locator")
STAGE_TRAINABLE = {
    1: ("reference_net", "backbone", "face_locator", "identity"),
    2: ("temporal", "audio", "face_locator"),
    3: ("temporal", "speed"),
}


class TrainError(InputError):
    """A configuration or input problem (a ValueError); the message, one line, says what to change."""


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class DataConfig:
    dir: str | None = None
    frames: int | None = None  # f; default: the model preset's frames_per_clip (stage 1 always 1)
    motion_frames: int | None = None  # n; default: the preset's motion_frames
    batch_size: int = 4
    num_workers: int = 2
    holdout_segments: int = 1  # segments kept out of training for the sample videos


@dataclass
class OptimConfig:
    lr: float = 1e-5
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    use_8bit_adam: bool = False
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant"  # any diffusers.optimization scheduler name
    warmup_steps: int = 0
    gradient_accumulation_steps: int = 1
    # learning rate per parameter group, overriding ``lr`` for that group (e.g. {speed: 1e-3}: layers
    # that start from zero next to a trained network often need a higher rate than the rest)
    group_lr: dict[str, float] = field(default_factory=dict)


@dataclass
class EMAConfig:
    enabled: bool = False
    decay: float = 0.9999
    update_after_step: int = 0


@dataclass
class TrainConfig:
    model: str | None = "emo"  # config name or EMOConfig JSON path; null = the --init checkpoint's config
    stage: int = 1
    max_steps: int = 30000
    seed: int = 42
    mixed_precision: str = "no"  # no / fp16 / bf16
    gradient_checkpointing: bool = True
    trainable: list[str] | None = None  # parameter groups; null = the stage's default
    uncond_reference: float = 0.05
    uncond_audio: float = 0.05
    uncond_both: float = 0.05
    first_clip_ratio: float = 0.05
    noise_offset: float = 0.0
    snr_gamma: float = 0.0  # 0 = plain MSE; the published setups use 5
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    sample_every: int = 1000  # 0 = never
    sample_steps: int = 25
    sample_clips: int = 2
    log_every: int = 10
    log_with: str | None = "tensorboard"
    find_unused_parameters: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        from ..configs import _from_dict

        try:
            cfg = _from_dict(cls, data)
        except (TypeError, ValueError) as exc:
            raise TrainError(f"training config: {exc}") from None
        if isinstance(cfg.trainable, tuple):
            cfg.trainable = list(cfg.trainable)
        _coerce_numbers(cfg)
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> TrainConfig:
        if self.stage not in (1, 2, 3):
            raise TrainError(f"stage must be 1, 2 or 3, got {self.stage}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise TrainError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        for name in self.trainable or ():
            if name not in GROUPS:
                raise TrainError(f"unknown trainable group {name!r}; choose from {', '.join(GROUPS)}")
        for name, lr in (self.optim.group_lr or {}).items():
            if name not in GROUPS:
                raise TrainError(f"optim.group_lr: unknown group {name!r}; choose from {', '.join(GROUPS)}")
            try:
                self.optim.group_lr[name] = float(lr)
            except (TypeError, ValueError):
                raise TrainError(f"optim.group_lr.{name} must be a number, got {lr!r}") from None
        self._check_numbers()
        rates = (self.uncond_reference, self.uncond_audio, self.uncond_both, self.first_clip_ratio)
        if any(not 0 <= r <= 1 for r in rates) or self.uncond_reference + self.uncond_audio + self.uncond_both > 1:
            raise TrainError("dropout rates must be in [0, 1] and the three uncond_* rates must sum to at most 1")
        if self.stage == 3 and self.trainable and "audio" in self.trainable:
            raise TrainError("stage 3 keeps the audio layers frozen (paper §3.3); remove 'audio' from trainable")
        try:
            resolve_model_config(self.model)
        except (KeyError, ValueError, TypeError) as exc:
            raise TrainError(f"training config model: {_message(exc)}; give a config name or an EMOConfig .json file") from exc
        from diffusers.optimization import SchedulerType

        schedules = [t.value for t in SchedulerType]
        if self.optim.lr_scheduler not in schedules:
            raise TrainError(f"training config optim.lr_scheduler must be one of {', '.join(schedules)}, got {self.optim.lr_scheduler!r}")
        return self

    def _check_numbers(self) -> None:
        """Every number of the config against the shared rules (:mod:`emo_model.validation`), naming the key."""
        from .. import validation as v

        positive = dataclasses.replace(v.RULES["count"], lo=1)
        below_one = dataclasses.replace(v.RULES["fraction"], hi=0.99999)
        checks = [  # key, rule name, rule (None: the named one), hint (None: the rule's)
            ("max_steps", "train_steps", None, None),
            ("seed", "seed", None, None),
            ("uncond_reference", "fraction", None, "the share of samples without the reference; the published setups use 0.05"),
            ("uncond_audio", "fraction", None, "the share of samples without the audio; the published setups use 0.05"),
            ("uncond_both", "fraction", None, "the share of samples without both; the published setups use 0.05"),
            ("first_clip_ratio", "fraction", None, "the share of samples trained as a first clip"),
            ("noise_offset", "fraction", None, "0 turns it off; the published setups use 0.05"),
            ("snr_gamma", "snr_gamma", None, None),
            ("checkpoint_every", "count", None, "steps between checkpoints (0: only the final weights)"),
            ("keep_checkpoints", "count", None, "checkpoints kept (0: all)"),
            ("sample_every", "count", None, "steps between sample videos (0: never)"),
            ("sample_steps", "steps", None, "denoising steps of the sample videos"),
            ("sample_clips", "clips", None, "clips in each sample video"),
            ("log_every", "count", positive, "steps between log lines"),
            ("data.frames", "frames_per_clip", None, "null = the preset's"),
            ("data.motion_frames", "motion_frames", None, "null = the preset's"),
            ("data.batch_size", "batch_size", None, None),
            ("data.num_workers", "workers", None, "data loader processes (0: in the training process)"),
            ("data.holdout_segments", "count", None, "segments kept out of training for the sample videos"),
            ("optim.lr", "learning_rate", None, None),
            ("optim.weight_decay", "fraction", None, "AdamW's; 1e-2 is the usual"),
            ("optim.eps", "fraction", None, "AdamW's; 1e-8 is the usual"),
            ("optim.max_grad_norm", "grad_norm", None, None),
            ("optim.warmup_steps", "count", None, "learning-rate warm-up steps"),
            ("optim.gradient_accumulation_steps", "count", positive, "micro-batches per optimiser step"),
            ("ema.decay", "fraction", None, "0.9999 is the usual"),
            ("ema.update_after_step", "count", None, "steps before the EMA starts"),
        ]
        for key, name, rule, hint in checks:
            node = self
            *parents, leaf = key.split(".")
            for part in parents:
                node = getattr(node, part)
            value = getattr(node, leaf)
            if value is None and key.startswith("data.") and leaf in ("frames", "motion_frames"):
                continue
            setattr(node, leaf, v.check(name, value, label=f"training config {key}", rule=rule, hint=_fix(key, hint or (rule or v.RULES[name]).hint)))
        betas = self.optim.betas
        if not isinstance(betas, (list, tuple)) or len(betas) != 2:
            raise TrainError(f"training config optim.betas must be two numbers, got {betas!r}; {_fix('optim.betas', '[0.9, 0.999] is the usual')}")
        self.optim.betas = tuple(
            v.check("fraction", b, label=f"training config optim.betas[{i}]", rule=below_one, hint=_fix("optim.betas", "[0.9, 0.999] is the usual"))
            for i, b in enumerate(betas)
        )
        for name, lr in (self.optim.group_lr or {}).items():
            v.check("learning_rate", lr, label=f"training config optim.group_lr.{name}", hint=_fix(f"optim.group_lr.{name}", v.RULES["learning_rate"].hint))


def _fix(key: str, hint: str) -> str:
    """What to do about a config value: the rule's advice and where to change it."""
    return f"{hint}; change it in the config file or with --set {key}=VALUE"


def _message(exc: BaseException) -> str:
    from ..validation import first_line

    return first_line(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)


def _coerce_numbers(node) -> None:
    """Numeric strings in numeric fields become numbers (YAML 1.1 reads ``1e-5`` as a string)."""
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            _coerce_numbers(value)
        elif isinstance(value, str) and f.type in ("float", "int"):
            try:
                setattr(node, f.name, float(value) if f.type == "float" else int(value))
            except ValueError:
                raise TrainError(f"{f.name} must be a number, got {value!r}") from None
        elif isinstance(value, tuple) and f.type.startswith("tuple[float"):
            setattr(node, f.name, tuple(float(v) for v in value))


def load_train_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """Read a JSON or YAML training config; ``overrides`` are ``dotted.key=value`` (value parsed as YAML/JSON)."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"training config not found: {path}")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise TrainError("YAML configs need PyYAML (pip install pyyaml), or write the config as JSON") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise TrainError(f"training config {str(path)!r} is not valid YAML: {_message(exc)}") from exc
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TrainError(f"training config {str(path)!r} is not valid JSON: {_message(exc)}") from exc
    if not isinstance(data, dict):
        raise TrainError(f"training config {str(path)!r} must hold a mapping of keys (see emo_model/train/configs), got {type(data).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TrainError(f"--set needs KEY=VALUE, e.g. optim.lr=1e-4, got {item!r}")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise TrainError(f"--set {item!r}: {part!r} is a value, not a section of the config; check the key")
        node[parts[-1]] = _parse_value(value)
    return TrainConfig.from_dict(data)


def _parse_value(text: str) -> Any:
    """A ``--set`` value: JSON (numbers, lists, true/false/null), else YAML, else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        import yaml

        return yaml.safe_load(text)
    except ImportError:
        return text


def resolve_model_config(spec: str | None) -> EMOConfig | None:
    if spec is None:
        return None
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        return EMOConfig.from_json(path.read_text()).validate()
    return get_config(spec)


# --------------------------------------------------------------------------------------------------
# Parameter groups


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


# --------------------------------------------------------------------------------------------------
# The module DDP / FSDP wrap: one forward from latents and conditions to the prediction


class TrainingNet(nn.Module):
    """Everything differentiable in one ``forward`` (so DDP/FSDP see every trainable parameter used).

    Conditions are dropped per sample by multiplying with 0/1 masks rather than by removing them, so
    the graph (and DDP's set of used parameters) is the same for every batch.
    """

    def __init__(self, model: EMOModel, stage: int, first_clip_motion: str):
        super().__init__()
        self.model = model
        self.stage = stage
        self.first_clip_motion = first_clip_motion

    def forward(
        self,
        noisy: torch.Tensor,  # [B, C, F, h, w]
        timesteps: torch.Tensor,  # [B]
        reference_latents: torch.Tensor,  # [B, C, h, w]
        mask: torch.Tensor,  # [B, H, W]
        reference_keep: torch.Tensor,  # bool [B]
        audio_keep: torch.Tensor,  # bool [B]
        motion_latents: torch.Tensor | None = None,  # [B, n, C, h, w]
        first_clip: torch.Tensor | None = None,  # bool [B]
        audio_features: torch.Tensor | None = None,  # [B, F, ...]
        speed: torch.Tensor | None = None,  # [B, n + F]
    ) -> torch.Tensor:
        model = self.model
        b, frames = noisy.shape[0], noisy.shape[2]
        identity = model.identity_tokens(None, batch=b)
        bank = model.encode_reference(reference_latents, identity)
        keep = reference_keep.to(noisy.dtype)  # rows without reference also lose the face mask (uncond branch)
        tokens = bank.tokens
        if motion_latents is not None and motion_latents.shape[1] > 0:
            motion = model.encode_motion(motion_latents, identity)
            if first_clip is not None:
                fc = first_clip.view(-1, 1, 1, 1)
                for key, feats in motion.items():
                    start = bank.tokens[key].unsqueeze(1).expand_as(feats)
                    replacement = torch.zeros_like(feats) if self.first_clip_motion == "zeros" else start
                    motion[key] = torch.where(fc, replacement, feats)
            bank.motion = motion
        if frames > 1:  # one reference per sample, repeated for its frames (frames are folded into the batch)
            tokens = {k: v.repeat_interleave(frames, dim=0) for k, v in tokens.items()}
        bank.tokens = tokens
        face = model.face_features(mask) * keep.view(-1, 1, 1, 1)
        audio_tokens = speed_tokens = None
        if self.stage > 1:
            if audio_features is not None:
                audio_tokens = model.audio_tokens(audio_features) * audio_keep.to(noisy.dtype).view(-1, 1, 1, 1)
            if speed is not None:
                speed_tokens = model.speed_tokens(speed)
        cond = Conditioning(
            reference=bank,
            reference_enabled=reference_keep,
            audio_tokens=audio_tokens,
            identity_tokens=identity,
            face_features=face,
            speed_tokens=speed_tokens,
            temporal=self.stage > 1,
        )
        pred = model(noisy, timesteps, cond)
        # A batch whose references are all dropped would leave the ReferenceNet out of the graph, which
        # DDP (without find_unused_parameters) treats as an error; this keeps it in, adding exactly 0.
        anchor = sum(v.sum() for v in tokens.values()) * 0.0
        return pred + anchor


# --------------------------------------------------------------------------------------------------
# Trainer


@dataclass
class Paths:
    output: Path

    @property
    def checkpoints(self) -> Path:
        return self.output / "checkpoints"

    @property
    def samples(self) -> Path:
        return self.output / "samples"

    @property
    def logs(self) -> Path:
        return self.output / "logs"


def step_generator(seed: int, step: int, rank: int, micro: int = 0) -> torch.Generator:
    """The generator for one micro-batch: a function of (seed, step, rank, micro) only."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + rank * 104_729 + micro * 31) % (2**63 - 1))


def latest_checkpoint(folder: Path) -> Path | None:
    found = [p for p in folder.glob("step-*") if (p / "trainer_state.json").is_file()]
    return max(found, key=lambda p: int(p.name.split("-")[1])) if found else None


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        output: str | Path,
        *,
        vae: str | Path,
        init: str | Path | None = None,
        sd15: str | Path | None = None,
        animatediff: str | Path | None = None,
        resume: str | None = None,
        accelerator=None,
        log=print,
    ):
        self.cfg = cfg.validate()
        self.paths = Paths(Path(output))
        self.log_fn = log
        self._accelerator = accelerator
        self.vae_path, self.init, self.sd15, self.animatediff, self.resume = vae, init, sd15, animatediff, resume
        self.global_step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.history: list[float] = []

    # ---- setup ------------------------------------------------------------------------------------
    def log(self, text: str) -> None:
        if self.accelerator.is_main_process:
            self.log_fn(text)

    def check_inputs(self) -> None:
        """The run folder, the dataset and every given weights path, before any model work (one line each)."""
        from .. import validation as v

        v.check_output_folder(self.paths.output, label="--output")
        if not self.cfg.data.dir:
            raise TrainError("no dataset: give --data DATASET_DIR (made by `python -m emo_model preprocess`) or data.dir")
        data = v.check_input_path(self.cfg.data.dir, label="the dataset (--data or data.dir)", kind="folder")
        if not (data / "index.jsonl").is_file():
            raise TrainError(f"the dataset {str(data)!r} has no index.jsonl; make it with `python -m emo_model preprocess` (or resume that run)")
        if self.vae_path is None:
            raise TrainError("--vae is required (a diffusers AutoencoderKL folder or an SD VAE file, e.g. sd-vae-ft-mse)")
        for label, path in (("--vae", self.vae_path), ("--init", self.init), ("--sd15", self.sd15), ("--animatediff", self.animatediff)):
            v.check_input_path(path, label=label)
        if self.resume and self.resume != "latest":
            folder = v.check_input_path(self.resume, label="--resume", kind="folder")
            if not (folder / "trainer_state.json").is_file():
                raise TrainError(f"--resume {str(folder)!r} is not a training checkpoint folder (no trainer_state.json); give latest or OUTPUT/checkpoints/step-N")

    def setup(self) -> Trainer:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

        self.check_inputs()
        cfg = self.cfg
        if self._accelerator is None:
            log_with = cfg.log_with if cfg.log_with not in (None, "none") else None
            if log_with == "tensorboard":
                try:
                    import tensorboard  # noqa: F401
                except ImportError:
                    print("tensorboard is not installed: logging to the console only (pip install tensorboard)", file=sys.stderr)
                    log_with = None
            # Several processes and no CUDA (torchrun on CPU, as the tests do): accelerate only sets up
            # gloo when told the run is on the CPU.
            cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
            self._accelerator = Accelerator(
                cpu=cpu,
                mixed_precision=cfg.mixed_precision,
                gradient_accumulation_steps=cfg.optim.gradient_accumulation_steps,
                log_with=log_with,
                project_config=ProjectConfiguration(project_dir=str(self.paths.output), logging_dir=str(self.paths.logs)),
                kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.find_unused_parameters)],
            )
        acc = self.accelerator
        if cfg.ema.enabled and acc.distributed_type.name == "FSDP":
            raise TrainError("EMA needs replicated parameters: use DDP or DeepSpeed ZeRO-2, or set ema.enabled: false under FSDP")
        torch.manual_seed(cfg.seed)
        resume_dir = self._resume_dir()
        self.model = self._build_model(resume_dir)
        self.config = self.model.config
        preset = self.config.preset
        self.frames = 1 if cfg.stage == 1 else (cfg.data.frames or preset.frames_per_clip)
        self.motion_frames = (
            0 if cfg.stage == 1 else (cfg.data.motion_frames if cfg.data.motion_frames is not None else preset.motion_frames)
        )
        if cfg.stage > 1 and self.frames + self.motion_frames > self.config.backbone.temporal.max_len:
            raise TrainError(
                f"frames + motion frames = {self.frames + self.motion_frames} exceeds the "
                f"{self.config.backbone.temporal.max_len} frames the temporal modules handle"
            )
        if cfg.stage == 3 and self.model.speed_encoder is None:
            raise TrainError(f"stage 3 trains the speed layers, and the {self.config.name!r} config has none")
        groups = tuple(cfg.trainable) if cfg.trainable else STAGE_TRAINABLE[cfg.stage]
        self.groups = tuple(
            g for g in groups if any(parameter_group(n, self.config) == g for n, _ in self.model.named_parameters())
        )
        counts = set_trainable(self.model, self.groups)
        self.log(
            f"stage {cfg.stage}: training {', '.join(f'{g} ({n / 1e6:.2f} M)' for g, n in counts.items())}; "
            f"{sum(p.numel() for p in self.model.parameters()) / 1e6:.1f} M parameters in total"
        )
        if cfg.gradient_checkpointing:
            self.model.set_gradient_checkpointing(True)
        self.model.train()
        self.scheduler = self._noise_scheduler()
        self._setup_vae()
        self._setup_data()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = self._optimizer(self._param_groups())
        from diffusers.optimization import get_scheduler

        self.lr_scheduler = get_scheduler(
            cfg.optim.lr_scheduler, self.optimizer, num_warmup_steps=cfg.optim.warmup_steps, num_training_steps=cfg.max_steps
        )
        self.ema = None
        if cfg.ema.enabled:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(params, decay=cfg.ema.decay, update_after_step=cfg.ema.update_after_step)
        self.net = TrainingNet(self.model, cfg.stage, preset.first_clip_motion)
        self._fix_deepspeed_batch()
        self.net, self.optimizer = acc.prepare(self.net, self.optimizer)
        if self.ema is not None:
            self.ema.to(acc.device)
        if resume_dir is not None:
            self._load_checkpoint(resume_dir)
        if acc.is_main_process and acc.log_with:
            acc.init_trackers(f"emo-stage{cfg.stage}", config=_flat_hparams(cfg.to_dict()))
        return self

    @property
    def accelerator(self):
        return self._accelerator

    def _resume_dir(self) -> Path | None:
        if not self.resume:
            return None
        if self.resume == "latest":
            found = latest_checkpoint(self.paths.checkpoints)
            if found is None:
                self.log_fn(f"--resume latest: no checkpoint in {self.paths.checkpoints} yet, starting fresh")
            return found
        path = Path(self.resume)
        if not (path / "trainer_state.json").is_file():
            raise TrainError(f"{path} is not a training checkpoint folder (no trainer_state.json)")
        return path

    def _build_model(self, resume_dir: Path | None) -> EMOModel:
        from .. import weights

        wanted = resolve_model_config(self.cfg.model)
        if resume_dir is not None:
            saved = EMOConfig.from_json((resume_dir / "emo_config.json").read_text())
            if wanted is not None and _architecture(wanted) != _architecture(saved):
                raise TrainError(
                    f"{resume_dir} was trained with config {saved.name!r}, the training config asks for {wanted.name!r}"
                )
            return EMOModel(saved)  # weights come from the checkpoint's state
        if self.init:
            model = weights.load_emo_model(self.init, dtype=torch.float32)
            if wanted is not None and _architecture(wanted) != _architecture(model.config):
                raise TrainError(
                    f"--init {self.init} holds a {model.config.name!r} model; the training config asks for {wanted.name!r} "
                    "(set model: null to take the checkpoint's)"
                )
            if wanted is not None:  # keep the config's preset (frames per clip, scheduler) for this run
                fresh = EMOModel(wanted)
                fresh.load_state_dict(model.state_dict())
                model = fresh
            self.log(f"initialised from {self.init}")
        else:
            if wanted is None:
                raise TrainError("the training config has model: null; give --init with a checkpoint to take the config from")
            model = EMOModel(wanted)
        if self.sd15:
            for line in weights.load_sd15_unet_weights(model, self.sd15).lines():
                self.log(f"  sd15: {line}")
        if self.animatediff:
            for line in weights.load_animatediff_motion_module(model, self.animatediff).lines():
                self.log(f"  animatediff: {line}")
        return model

    def _noise_scheduler(self):
        from diffusers import DDPMScheduler

        sch = self.config.preset.scheduler
        if sch.rescale_betas_zero_snr and sch.prediction_type == "epsilon":
            raise TrainError("zero-terminal-SNR needs v_prediction (see EMOConfig.validate)")
        return DDPMScheduler(
            num_train_timesteps=sch.num_train_timesteps,
            beta_start=sch.beta_start,
            beta_end=sch.beta_end,
            beta_schedule=sch.beta_schedule,
            prediction_type=sch.prediction_type,
            rescale_betas_zero_snr=sch.rescale_betas_zero_snr,
            clip_sample=False,
        )

    def _setup_vae(self) -> None:
        from .. import weights
        from ..vae import DiffusersVAE

        if self.vae_path is None:
            raise TrainError("--vae is required (a diffusers AutoencoderKL folder or an SD VAE file, e.g. sd-vae-ft-mse)")
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.cfg.mixed_precision, torch.float32)
        vae = weights.load_vae(self.vae_path, device=self.accelerator.device, dtype=dtype)
        vae.requires_grad_(False)
        self.codec = DiffusersVAE(vae)
        if self.codec.scale_factor != self.config.vae_scale_factor:
            raise TrainError(
                f"the VAE downsamples by {self.codec.scale_factor}, the model expects {self.config.vae_scale_factor}"
            )

    def _setup_data(self) -> None:
        from torch.utils.data import DataLoader

        from .dataset import EMODataset, ResumableSampler, SegmentStore, split_holdout

        cfg, acc = self.cfg, self.accelerator
        if not cfg.data.dir:
            raise TrainError("no dataset: give --data DATASET_DIR (made by `python -m emo_model preprocess`) or data.dir")
        store = SegmentStore(cfg.data.dir)
        train, held = split_holdout(store.entries, cfg.data.holdout_segments)
        if not train:
            raise TrainError(f"{cfg.data.dir}: all {len(store)} segments are held out; lower data.holdout_segments")
        self.store, self.holdout = store, (held or train[:1])
        fps = {e["fps"] for e in store.entries}
        if fps != {self.config.preset.fps}:
            self.log(f"note: the dataset is at {sorted(fps)} fps, the model preset samples at {self.config.preset.fps} fps")
        self.dataset = EMODataset(
            store,
            train,
            stage=cfg.stage,
            frames=self.frames,
            motion_frames=self.motion_frames,
            audio=self.config.audio,
            seed=cfg.seed,
        )
        self.sampler = ResumableSampler(
            len(self.dataset), seed=cfg.seed, batch_size=cfg.data.batch_size, rank=acc.process_index, world_size=acc.num_processes
        )
        self.loader = DataLoader(
            self.dataset,
            batch_size=cfg.data.batch_size,
            sampler=self.sampler,
            num_workers=cfg.data.num_workers,
            drop_last=True,
            worker_init_fn=_worker_init,
            persistent_workers=False,
        )

    def _param_groups(self) -> list[dict]:
        """Trainable parameters as optimizer groups: one per ``optim.group_lr`` entry, the rest at ``optim.lr``."""
        o = self.cfg.optim
        buckets: dict[float, list] = {}
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                lr = o.group_lr.get(parameter_group(name, self.config), o.lr)
                buckets.setdefault(float(lr), []).append(p)
        return [{"params": ps, "lr": lr} for lr, ps in buckets.items()]

    def _optimizer(self, params):
        o = self.cfg.optim
        if o.use_8bit_adam:
            try:
                import bitsandbytes as bnb
            except ImportError:
                raise TrainError(
                    "optim.use_8bit_adam needs bitsandbytes (pip install bitsandbytes, CUDA only); or set it to false"
                ) from None
            return bnb.optim.AdamW8bit(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)
        return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)

    def _fix_deepspeed_batch(self) -> None:
        """DeepSpeed wants the micro-batch size, which it normally reads from a prepared DataLoader."""
        state = getattr(self.accelerator, "state", None)
        plugin = getattr(state, "deepspeed_plugin", None)
        if plugin is not None:
            plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = self.cfg.data.batch_size

    # ---- one step ---------------------------------------------------------------------------------
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> latents [N, C, h, w] (frozen VAE, posterior mean)."""
        out = []
        for chunk in frames.split(8):  # bounds the VAE's activations (about 0.5 GB per 512^2 frame in fp32)
            images = chunk.to(self.accelerator.device).float() / 255.0
            out.append(self.codec.encode(images).float())
        return torch.cat(out)

    def loss(self, batch: dict[str, torch.Tensor], micro: int = 0) -> torch.Tensor:
        cfg, acc = self.cfg, self.accelerator
        device = acc.device
        g = step_generator(cfg.seed, self.global_step, acc.process_index, micro)
        frames = batch["frames"]  # [B, N, H, W, 3] uint8
        b, total = frames.shape[:2]
        latents = self.encode(frames.flatten(0, 1)).view(b, total, *self._latent_shape(frames))
        reference = self.encode(batch["reference"])
        n = self.motion_frames
        motion, target_latents = latents[:, :n], latents[:, n:]
        x0 = target_latents.transpose(1, 2)  # [B, C, F, h, w]
        noise = torch.randn(x0.shape, generator=g)
        if cfg.noise_offset > 0:
            noise = noise + cfg.noise_offset * torch.randn((b, x0.shape[1], 1, 1, 1), generator=g)
        noise = noise.to(device)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (b,), generator=g).to(device)
        u = torch.rand(b, generator=g)
        both = u < cfg.uncond_both
        ref_only = (u >= cfg.uncond_both) & (u < cfg.uncond_both + cfg.uncond_reference)
        audio_only = (u >= cfg.uncond_both + cfg.uncond_reference) & (
            u < cfg.uncond_both + cfg.uncond_reference + cfg.uncond_audio
        )
        reference_keep = ~(both | ref_only)
        audio_keep = ~(both | audio_only)
        first_clip = torch.rand(b, generator=g) < cfg.first_clip_ratio
        noisy = self.scheduler.add_noise(x0, noise, timesteps)
        if self.scheduler.config.prediction_type == "epsilon":
            target = noise
        else:
            target = self.scheduler.get_velocity(x0, noise, timesteps)
        pred = self.net(
            noisy,
            timesteps,
            reference,
            batch["mask"].to(device),
            reference_keep.to(device),
            audio_keep.to(device),
            motion_latents=motion if n else None,
            first_clip=first_clip.to(device) if n else None,
            audio_features=batch["audio_features"].to(device) if "audio_features" in batch else None,
            speed=batch["speed"].to(device) if "speed" in batch else None,
        ).float()
        if cfg.snr_gamma > 0:
            return self._snr_weighted(pred, target, timesteps)
        return F.mse_loss(pred, target.float())

    def _latent_shape(self, frames: torch.Tensor) -> tuple[int, int, int]:
        h, w = frames.shape[-3:-1]
        s = self.codec.scale_factor
        return (self.config.latent_channels, h // s, w // s)

    def _snr_weighted(self, pred, target, timesteps) -> torch.Tensor:
        """Min-SNR-gamma weighting (Hang et al. 2023), as in diffusers' trainers and the published setups."""
        from diffusers.training_utils import compute_snr

        snr = compute_snr(self.scheduler, timesteps)
        if self.scheduler.config.prediction_type == "v_prediction":
            snr = snr + 1
        weights = torch.minimum(snr, torch.full_like(snr, self.cfg.snr_gamma)) / snr.clamp(min=1e-8)
        per_sample = F.mse_loss(pred, target.float(), reduction="none").mean(dim=list(range(1, pred.dim())))
        return (per_sample * weights).mean()

    # ---- loop -------------------------------------------------------------------------------------
    def train(self) -> dict:
        """Train until ``max_steps``; returns a summary (losses of every step on this rank)."""
        cfg, acc = self.cfg, self.accelerator
        accum = cfg.optim.gradient_accumulation_steps
        batches = self.sampler.batches_per_epoch()
        if batches == 0:
            raise TrainError("the dataset has fewer segments than one batch; lower data.batch_size")
        params = [p for p in self.net.parameters() if p.requires_grad]
        self.log(f"training from step {self.global_step} to {cfg.max_steps} ({batches} batches per epoch per process)")
        last = time.time()
        micro, step_loss, grad_norm = 0, 0.0, None
        while self.global_step < cfg.max_steps:
            self.sampler.set_epoch(self.epoch, self.batches_in_epoch * cfg.data.batch_size)
            for batch in self.loader:
                with acc.accumulate(self.net):
                    loss = self.loss(batch, micro)
                    acc.backward(loss)
                    step_loss += loss.detach().float().item() / accum
                    if acc.sync_gradients and cfg.optim.max_grad_norm > 0:
                        grad_norm = acc.clip_grad_norm_(params, cfg.optim.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                self.batches_in_epoch += 1
                micro += 1
                if not acc.sync_gradients:
                    continue
                self.lr_scheduler.step()
                if self.ema is not None:
                    self.ema.step([p for p in acc.unwrap_model(self.net).model.parameters() if p.requires_grad])
                self.global_step += 1
                self.history.append(step_loss)
                now = time.time()
                if self.global_step % cfg.log_every == 0 or self.global_step == cfg.max_steps:
                    logs = {"loss": step_loss, "lr": self.lr_scheduler.get_last_lr()[0], "seconds_per_step": now - last}
                    if grad_norm is not None:
                        logs["grad_norm"] = float(grad_norm)
                    acc.log(logs, step=self.global_step)
                    self.log(f"step {self.global_step}: loss {step_loss:.4f}")
                last, micro, step_loss, grad_norm = now, 0, 0.0, None
                if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0 and self.global_step < cfg.max_steps:
                    self.save_checkpoint()
                if cfg.sample_every and self.global_step % cfg.sample_every == 0:
                    self.sample()
                if self.global_step >= cfg.max_steps:
                    break
            else:
                self.epoch += 1
                self.batches_in_epoch = 0
        final = self.save_checkpoint()
        acc.wait_for_everyone()
        if acc.is_main_process:
            shutil.copyfile(final / self._native_name(), self.paths.output / f"emo-stage{cfg.stage}-final.safetensors")
        acc.end_training()
        return {
            "steps": self.global_step,
            "losses": list(self.history),
            "final": self.paths.output / f"emo-stage{cfg.stage}-final.safetensors",
        }

    # ---- checkpoints ------------------------------------------------------------------------------
    def _native_name(self) -> str:
        return f"emo-stage{self.cfg.stage}-step{self.global_step}.safetensors"

    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        folder = self.paths.checkpoints / f"step-{self.global_step:07d}"
        acc.wait_for_everyone()
        acc.save_state(str(folder))
        state = acc.get_state_dict(self.net)  # the full state on every rank (FSDP gathers), before any EMA swap
        if acc.is_main_process:
            (folder / "emo_config.json").write_text(self.config.to_json())
            self.export_native(folder / self._native_name(), state)
            trainer_state = {
                "global_step": self.global_step,
                "epoch": self.epoch,
                "batches_in_epoch": self.batches_in_epoch,
                "stage": self.cfg.stage,
                "groups": list(self.groups),
                "world_size": acc.num_processes,
                "train_config": self.cfg.to_dict(),
            }
            (folder / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
            self._save_extra_state(folder)
            self._rotate()
            self.log(f"checkpoint: {folder}")
        acc.wait_for_everyone()
        return folder

    def export_native(self, path: Path, state: dict[str, torch.Tensor] | None = None) -> Path:
        """The model (EMA weights where EMA is on) as a native safetensors file."""
        from ..weights import save_native

        if state is None:
            state = self.accelerator.get_state_dict(self.net)
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
        if self.ema is not None:
            names = [n for n, p in self.accelerator.unwrap_model(self.net).model.named_parameters() if p.requires_grad]
            for name, shadow in zip(names, self.ema.shadow_params, strict=True):
                state[name] = shadow
        with torch.device("meta"):
            export = EMOModel(self.config)
        export.load_state_dict({k: v.detach().to("cpu", torch.float32) for k, v in state.items()}, strict=True, assign=True)
        metadata = {
            "emo_training_stage": str(self.cfg.stage),
            "emo_training_step": str(self.global_step),
            "emo_ema": str(self.ema is not None),
        }
        return save_native(export, path, metadata=metadata)

    # The LR schedule and the EMA are saved as JSON + safetensors rather than through accelerate's
    # register_for_checkpointing, whose files are pickles loaded with weights_only=False.
    def _save_extra_state(self, folder: Path) -> None:
        from safetensors.torch import save_file

        schedule = {k: v for k, v in self.lr_scheduler.state_dict().items() if k != "lr_lambdas"}
        (folder / "lr_scheduler.json").write_text(json.dumps(schedule))
        if self.ema is not None:
            state = self.ema.state_dict()
            shadow = state.pop("shadow_params")
            save_file(
                {f"shadow.{i}": t.detach().cpu().contiguous() for i, t in enumerate(shadow)}, str(folder / "ema.safetensors")
            )
            (folder / "ema.json").write_text(json.dumps(state))

    def _load_extra_state(self, folder: Path) -> None:
        from safetensors.torch import load_file

        schedule = json.loads((folder / "lr_scheduler.json").read_text())
        self.lr_scheduler.load_state_dict({**self.lr_scheduler.state_dict(), **schedule})
        if self.ema is not None:
            if not (folder / "ema.safetensors").is_file():
                raise TrainError(f"{folder} has no EMA state; it was trained without EMA (set ema.enabled: false to resume it)")
            tensors = load_file(str(folder / "ema.safetensors"))
            state = json.loads((folder / "ema.json").read_text())
            state["shadow_params"] = [tensors[f"shadow.{i}"] for i in range(len(tensors))]
            self.ema.load_state_dict(state)
            self.ema.to(self.accelerator.device)

    def _rotate(self) -> None:
        keep = self.cfg.keep_checkpoints
        if keep <= 0:
            return
        found = sorted((p for p in self.paths.checkpoints.glob("step-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
        for old in found[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    def _load_checkpoint(self, folder: Path) -> None:
        state = json.loads((folder / "trainer_state.json").read_text())
        if state["stage"] != self.cfg.stage:
            raise TrainError(
                f"{folder} is a stage-{state['stage']} checkpoint; this run is stage {self.cfg.stage} "
                "(use --init to start a new stage from it)"
            )
        if state["world_size"] != self.accelerator.num_processes:
            self.log(
                f"note: {folder} was saved with {state['world_size']} processes, now {self.accelerator.num_processes}: "
                "the data order after resuming differs from an uninterrupted run"
            )
        self.accelerator.load_state(str(folder))
        self._load_extra_state(folder)
        self.global_step, self.epoch, self.batches_in_epoch = state["global_step"], state["epoch"], state["batches_in_epoch"]
        if self.batches_in_epoch >= self.sampler.batches_per_epoch():
            self.epoch, self.batches_in_epoch = self.epoch + 1, 0
        self.log(f"resumed from {folder} at step {self.global_step}")

    # ---- samples ----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self) -> Path | None:
        acc = self.accelerator
        path = None
        if acc.distributed_type.name == "FSDP":
            self.log("samples are skipped under FSDP (the weights are sharded); sample from the exported checkpoints instead")
            return None
        if acc.is_main_process:
            model = acc.unwrap_model(self.net).model
            params = [p for p in model.parameters() if p.requires_grad]
            if self.ema is not None:
                self.ema.store(params)
                self.ema.copy_to(params)
            model.eval()
            try:
                with acc.autocast():
                    path = self._sample_images(model) if self.cfg.stage == 1 else self._sample_video(model)
                self.log(f"sample: {path}")
            finally:
                model.train()
                if self.ema is not None:
                    self.ema.restore(params)
        acc.wait_for_everyone()
        return path

    def _held_out(self):
        entry = self.store.entries[self.holdout[0]]
        return entry, self.store.tensors(entry)

    def _sample_images(self, model: EMOModel) -> Path:
        """Stage 1: independent frames from the reference (temporal off, no audio), with reference CFG."""
        import cv2
        import numpy as np

        from ..schedulers import make_scheduler

        entry, tensors = self._held_out()
        total = entry["frames"]
        picks = [0, total // 3, 2 * total // 3]
        pixels = self.store.frames(entry, picks)
        device = self.accelerator.device
        ref_latent = self.encode(torch.from_numpy(pixels[:1]))
        bank = model.encode_reference(ref_latent, model.identity_tokens(None))
        face = model.face_features(tensors["mask"].float()[None].to(device))
        scheduler = make_scheduler("ddim", self.config.preset.scheduler)
        scheduler.set_timesteps(self.cfg.sample_steps, device=device)
        g = torch.Generator().manual_seed(self.cfg.seed)
        shape = (2, self.config.latent_channels, 1, *ref_latent.shape[-2:])
        x = (torch.randn(shape, generator=g) * scheduler.init_noise_sigma).to(device)
        cond = Conditioning(
            reference=bank,
            reference_enabled=torch.tensor([True, False], device=device),  # conditional, unconditional
            face_features=torch.cat([face, torch.zeros_like(face)]),
            identity_tokens=model.identity_tokens(None, 2),
            temporal=False,
        )
        scale = self.config.preset.cfg
        for t in scheduler.timesteps:
            outs = []
            for i in range(2):  # each sample with its conditional and unconditional branch
                xi = scheduler.scale_model_input(x[i : i + 1], t).expand(2, -1, -1, -1, -1)
                out = model(xi, t, cond).float()
                outs.append(out[1:] + scale * (out[:1] - out[1:]))
            x = scheduler.step(torch.cat(outs), t, x).prev_sample
        images = self.codec.decode(x[:, :, 0]).cpu().numpy()
        row = [pixels[0]] + [(im * 255).round().astype(np.uint8) for im in images] + [pixels[1]]
        path = self.paths.samples / f"stage1-step{self.global_step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(row, axis=1), cv2.COLOR_RGB2BGR))
        return path

    def _sample_video(self, model: EMOModel) -> Path:
        """Stages 2-3: the held-out segment's audio through the sampling pipeline (generated | ground truth)."""
        import numpy as np

        from ..pipeline import EMOPipeline, SamplingSettings
        from ..video_io import VideoWriter
        from .dataset import segment_audio_features

        entry, tensors = self._held_out()
        frames = min(entry["frames"], self.frames * self.cfg.sample_clips)
        truth = self.store.frames(entry, list(range(frames)))
        features = segment_audio_features(tensors["audio_features"], self.config.audio, 0, frames)
        pipe = EMOPipeline(model, self.codec, device=self.accelerator.device)
        reference = pipe.encode_reference(torch.from_numpy(truth[0]).float() / 255.0, size=truth.shape[1])
        settings = SamplingSettings.from_preset(
            self.config.preset,
            steps=self.cfg.sample_steps,
            seed=self.cfg.seed,
            frames_per_clip=self.frames,
            motion_frames=self.motion_frames,
            speed=float(tensors["speed"][:frames].mean()),
        )
        generated = pipe.generate_frames(reference, features, settings=settings, face_mask=tensors["mask"].float())
        video = np.concatenate([(generated.numpy() * 255).round().astype(np.uint8), truth], axis=2)
        audio = tensors["audio"][: round(frames * 16000 / entry["fps"])].numpy()
        path = self.paths.samples / f"stage{self.cfg.stage}-step{self.global_step:07d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        with VideoWriter(path, entry["fps"], audio=(audio, 16000)) as writer:
            writer.write(video)
        return path


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)


def _architecture(config: EMOConfig) -> dict:
    d = config.to_dict()
    return {k: v for k, v in d.items() if k not in ("name", "preset")}


def _flat_hparams(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_hparams(v, f"{key}."))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


# --------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", type=int, choices=(1, 2, 3), required=True, help="1 image, 2 video + audio, 3 speed layers")
    parser.add_argument(
        "--config", required=True, help="training config (JSON or YAML), e.g. emo_model/train/configs/emo_stage1.yaml"
    )
    parser.add_argument("--data", default=None, help="dataset folder from `preprocess` (overrides data.dir)")
    parser.add_argument("--output", default=None, help="run folder (default: runs/stageN)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        help="resume: 'latest' (default when given alone) or a checkpoint folder",
    )
    parser.add_argument(
        "--init", default=None, help="start from a checkpoint (native .safetensors of the previous stage, a family's whole-model file, ...)"
    )
    parser.add_argument(
        "--sd15", default=None, help="SD1.5 UNet (diffusers folder or single file) to initialise both UNets (stage 1)"
    )
    parser.add_argument(
        "--animatediff", default=None, help="AnimateDiff v2 motion module (mm_sd_v15_v2.ckpt) for the temporal modules (stage 2)"
    )
    parser.add_argument("--vae", default=None, help="SD VAE (diffusers folder or single file), e.g. sd-vae-ft-mse")
    parser.add_argument("--max-steps", type=int, default=None, help="override max_steps")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config entry, e.g. optim.lr=1e-4 (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    """Every flag and config value is checked (one line naming it; ``--debug`` for the traceback) before model work."""
    from .. import validation

    if args.max_steps is not None:
        validation.check("train_steps", args.max_steps, label="--max-steps")
    validation.check_input_path(args.config, label="--config", kind="file")
    cfg = load_train_config(args.config, args.set)
    cfg.stage = args.stage
    if args.data:
        cfg.data.dir = args.data
    if args.max_steps is not None:
        cfg.max_steps = args.max_steps
    output = args.output or f"runs/stage{args.stage}"
    trainer = Trainer(cfg, output, vae=args.vae, init=args.init, sd15=args.sd15, animatediff=args.animatediff, resume=args.resume)
    trainer.check_inputs()  # setup() checks again; here it runs before accelerate starts
    try:
        trainer.setup()
    except KeyError as exc:  # an unknown name in the config (scheduler, config name)
        raise TrainError(_message(exc)) from exc
    summary = trainer.train()
    if trainer.accelerator.is_main_process:
        print(f"done: {summary['steps']} steps, weights in {summary['final']}")
    return 0

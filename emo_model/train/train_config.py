"""Training configuration: the YAML files in ``train/configs`` + ``--set key=value`` overrides -> :class:`TrainConfig`,
checked once with one clear line per mistake.
"""


from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..configs import EMOConfig
from ..families import get_config
from ..validation import InputError

GROUPS = ("reference_net", "backbone", "temporal", "speed", "audio", "identity", "face_locator")
STAGE_TRAINABLE = {
    1: ("reference_net", "backbone", "face_locator", "identity"),
    2: ("temporal", "audio", "face_locator"),
    3: ("temporal", "speed"),
}


class TrainError(InputError):
    """A configuration or input problem (a ValueError); the message, one line, says what to change."""



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


def _read_config_text(path: Path, what: str) -> str:
    """A config file's text (UTF-8, as JSON and YAML are written), or one line saying why it cannot be read."""
    if not path.exists():
        raise TrainError(f"{what} not found: {path}")
    if path.is_dir():
        raise TrainError(f"{what} {str(path)!r} is a folder; give the .yaml or .json file in it")
    if not path.is_file():
        raise TrainError(f"{what} {str(path)!r} is not a regular file (a pipe, device or socket); give a .yaml or .json file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise TrainError(
            f"{what} {str(path)!r} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line {line}); "
            "save it as UTF-8 (or give the YAML/JSON file, not a binary one)"
        ) from exc
    except OSError as exc:
        raise TrainError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from exc


def load_train_config(path: str | Path, overrides: list[str] = (), cls: type | None = None) -> TrainConfig:
    """Read a JSON or YAML training config; ``overrides`` are ``dotted.key=value`` (value parsed as YAML/JSON); ``cls``: a
    :class:`TrainConfig` subclass (the distillation config)."""
    path = Path(path)
    text = _read_config_text(path, "training config")
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
    return (cls or TrainConfig).from_dict(data)


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
        return EMOConfig.from_json(_read_config_text(path, "model config")).validate()
    return get_config(spec)



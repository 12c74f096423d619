"""Checkpoint files: safe reading, family detection, strict loading, the native format, training inits.

Reading
-------
:func:`open_tensors` reads one file. Safetensors files (recognised by their header, whatever the
suffix) go through ``safetensors``; everything else (``.pth``/``.pt``/``.bin``/``.ckpt``) through
``torch.load(map_location="cpu", weights_only=True, mmap=True)``. ``weights_only`` rebuilds tensors
and plain containers only: a pickle that needs anything more would run code from the file, so it is
refused with a :class:`WeightsError` that says how to convert it. ``{"state_dict": ...}`` and
``{"module": ...}`` wrappers are unwrapped. Legacy (pre-zip, PyTorch < 1.6) pickles cannot be
memory-mapped and are read whole.

Formats and detection
---------------------
What a set of files is, is decided from the tensor names and shapes, never from file names
(:func:`inspect_checkpoint`):

* **native**: one ``.safetensors`` written by :func:`save_native`. Every tensor under its
  :class:`~emo_model.model.EMOModel` name, and in the metadata:

  ============================  ===========================================================
  ``emo_format_version``        ``"1"``; files of a newer version are refused, not guessed at
  ``emo_config``                :meth:`EMOConfig.to_json` (architecture, audio front end and
                                the sampling preset); authoritative
  ``emo_preset``                the config's name, e.g. ``"hallo"``, ``"echomimic-v1-acc"``
  ``emo_vae_config``            optional: the diffusers config JSON of an ``AutoencoderKL``
                                whose tensors are stored under ``vae.`` (the CPU demo model
                                carries its own small VAE; :func:`load_bundled_vae`)
  ``format``                    ``"pt"`` (the safetensors convention)
  ============================  ===========================================================

  plus whatever the writer adds (``convert`` records ``emo_source``).
* **state-dict**: one dict whose keys carry the EMOModel module prefixes (``reference_unet.``,
  ``denoising_unet.``, ``face_locator.``, ``imageproj.``, ``audioproj.``, ``speed_encoder.``). This is
  Hallo's ``net.pth`` (fp16 or fp32) and any ``EMOModel.state_dict()``.
* **echomimic-v1**: EchoMimic v1's separate files. Each file's part is identified from its keys:
  a motion module (every key under ``motion_modules``), a UNet with the output head ``conv_out``
  (the denoising UNet, spatial layers), a UNet without it (the ReferenceNet), a small conv stack
  (the face locator). Together: ``denoising_unet.pth`` + ``motion_module.pth`` +
  ``reference_unet.pth`` + ``face_locator.pth``. The distilled ``*_acc.pth`` files have the same keys;
  only their names tell them apart, so the variant is an explicit argument (``variant="acc"``; the
  default ``"standard"`` falls back to ``_acc`` files when they are the only ones) and selects the
  accelerated preset (6 steps, cfg 1.0). ``*_pose*`` files (pose-driven EchoMimic) are ignored.

The architecture is then chosen by building every named config (:data:`emo_model.configs.CONFIGS`)
on the meta device and taking the one whose key/shape set equals the checkpoint's. Head counts
cannot be read from shapes; matching known configs supplies them.

Strictness
----------
Every tensor of the file(s) must land on a model tensor of the same shape and every model tensor
must be provided. Differences are reported grouped by module (``reference_unet``,
``denoising_unet.down_blocks.0.motion_modules``, ``audioproj``, ...). Files of which less than half
fit any known layout are "not a supported family" (an SDXL UNet, a VAE, ...); an incomplete set
names the files its family needs.

Memory
------
:meth:`Checkpoint.load` builds the model on the meta device (no allocation), copies each
memory-mapped tensor once, straight into the target dtype and device, and hands the results to
``load_state_dict(assign=True)``, which makes those copies the parameters. The only full copy is the
model itself; the file's pages that were read stay in the (evictable) page cache. Parameters never
alias the mapped file: that would pin the file (Windows could not replace it) and safetensors data
is not 64-byte aligned, which changes the rounding of CPU kernels. ``dtype=None`` keeps each
tensor's stored dtype (Hallo's fp16 stays fp16; fp16 convolutions are slow on CPU, so CPU callers
usually ask for float32 or bfloat16).

Training initialisation
-----------------------
:func:`load_sd15_unet_weights` copies an SD1.5 UNet (diffusers folder, or the single LDM file
artists keep in ``models/checkpoints``, converted with diffusers' own converter and the shipped
``model_configs/sd15-unet/config.json``) into both UNets; :func:`load_animatediff_motion_module`
copies ``mm_sd_v15_v2.ckpt`` into the motion modules; :func:`load_vae` reads the SD VAE. Keys left
out on purpose are listed in the returned :class:`InitReport`; anything else is strict.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pickle
import re
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .configs import CONFIGS, EMOConfig, get_config
from .model import EMOModel
from .unet_blocks import UNetBase
from .validation import bad_tensor

MODEL_CONFIGS = Path(__file__).parent / "model_configs"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
VARIANTS = ("standard", "acc")

NATIVE_FORMAT_VERSION = 1
FORMAT_VERSION_KEY = "emo_format_version"
CONFIG_KEY = "emo_config"
PRESET_KEY = "emo_preset"
VAE_CONFIG_KEY = "emo_vae_config"
VAE_PREFIX = "vae."
_RESERVED_METADATA = {"format", FORMAT_VERSION_KEY, CONFIG_KEY, PRESET_KEY, VAE_CONFIG_KEY}

# EMOModel's sub-modules, named like the prefixes of Hallo's net.pth.
MODEL_MODULES = ("reference_unet", "denoising_unet", "face_locator", "audioproj", "imageproj", "speed_encoder")

# EchoMimic v1's files: role -> (canonical file name, prefix of its keys in the model).
ECHOMIMIC_PARTS = {
    "denoising_unet": ("denoising_unet.pth", "denoising_unet."),
    "motion_module": ("motion_module.pth", "denoising_unet."),
    "reference_unet": ("reference_unet.pth", "reference_unet."),
    "face_locator": ("face_locator.pth", "face_locator."),
}
_ACC_SUFFIX = "-acc"

LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIXES = ("first_stage_model.", "vae.")
DIFFUSERS_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
)

# Key prefixes of well-known checkpoints that are not EMO-family models, for clearer errors.
_OTHER_KINDS = (
    ("add_embedding.", "an SDXL UNet"),
    (LDM_UNET_PREFIX, "a Stable Diffusion checkpoint (an SD1.5 one initialises training: load_sd15_unet_weights)"),
    ("decoder.up", "a VAE (load_vae)"),
    ("wav2vec2.", "a wav2vec2 audio encoder"),
    ("encoder.blocks.", "a whisper audio encoder"),
)


class WeightsError(ValueError):
    """A checkpoint cannot be used as asked. The message (one line) says why and what to do."""


# --------------------------------------------------------------------------------------------------
# Reading


@dataclass(eq=False)
class TensorFile:
    """The tensors of one checkpoint file, memory-mapped: nothing is read until a tensor's data is used.

    Tests build these from meta tensors (``torch.empty(shape, device="meta")``) to run full-size
    layouts through the same detection and loading code as real files.
    """

    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name


CheckpointInput = str | os.PathLike | TensorFile


def open_tensors(path: str | os.PathLike) -> TensorFile:
    """Open one checkpoint file (safetensors metadata included). Raises :class:`WeightsError`."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot be read ({exc.strerror})") from None
    if path.suffix.lower() == ".safetensors" or head[8:9] == b"{":  # u64 header length, then the JSON header
        return _open_safetensors(path)
    return _open_pickle(path)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of one file (memory-mapped), wrappers removed. Raises :class:`WeightsError`."""
    return open_tensors(path).tensors


def _open_safetensors(path: Path) -> TensorFile:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except (SafetensorError, OSError) as exc:
        raise WeightsError(
            f"{path}: not a readable safetensors file ({exc}); it is truncated or damaged, download it again"
        ) from None
    return TensorFile(path, tensors, metadata)


def _open_pickle(path: Path) -> TensorFile:
    try:
        if zipfile.is_zipfile(path):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        else:  # legacy format (or damaged): cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            raise WeightsError(
                f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)}); it is truncated or damaged"
            ) from None
        raise WeightsError(_unsafe_pickle_message(path, exc)) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise WeightsError(
            f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)}); it is truncated or damaged"
        ) from None
    return TensorFile(path, _unwrap_state_dict(path, obj))


def _unsafe_pickle_message(path: Path, exc: Exception) -> str:
    found = re.search(r"GLOBAL (\S+)", str(exc))
    needs = f"the Python object {found.group(1)}" if found else "Python objects other than tensors"
    return (
        f"{path} refused: rebuilding it needs {needs}, so loading it would execute code stored in the file. "
        "If you trust its source, load it once in a trusted environment with a full unpickler (weights_only "
        "off), save its tensors with safetensors.torch.save_file and use that .safetensors file"
    )


def _unwrap_state_dict(path: Path, obj: object) -> dict[str, torch.Tensor]:
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in ("state_dict", "module") if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightsError(f"{path}: not a state dict of tensors (entry {key!r} is a {type(value).__name__})")
    return dict(obj)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _shapes(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(t.shape) for key, t in tensors.items()}


def _materialise(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    """A copy of a (memory-mapped) tensor in fresh memory on ``device``, floating point in ``dtype`` if given."""
    return tensor.to(device=device, dtype=dtype if dtype is not None and tensor.is_floating_point() else None, copy=True)


# --------------------------------------------------------------------------------------------------
# Matching


def module_group(key: str) -> str:
    """The module a key is reported under: the sub-model, or one block's motion / audio modules."""
    parts = key.split(".")
    for kind in ("motion_modules", "audio_modules"):
        if kind in parts:
            return ".".join(parts[: parts.index(kind) + 1])
    return parts[0]


@dataclass
class MatchReport:
    """How a checkpoint's tensors (in model naming) line up with a model's state dict."""

    matched: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)  # (file, model)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def errors(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.mismatched)

    def lines(self) -> list[str]:
        """One line per (problem, module group)."""
        out = []
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected), ("wrong shape", list(self.mismatched))):
            groups: dict[str, list[str]] = defaultdict(list)
            for key in keys:
                groups[module_group(key)].append(key)
            for group, members in groups.items():
                shown = [self._describe(k) for k in members[:3]]
                more = f", +{len(members) - 3} more" if len(members) > 3 else ""
                out.append(f"{label} {group}: {len(members)} tensor{'s' if len(members) > 1 else ''} ({', '.join(shown)}{more})")
        return out

    def summary(self, limit: int = 4) -> str:
        lines = self.lines()
        more = f"; and {len(lines) - limit} more groups" if len(lines) > limit else ""
        return "; ".join(lines[:limit]) + more

    def _describe(self, key: str) -> str:
        if key in self.mismatched:
            got, want = self.mismatched[key]
            return f"{key} {list(got)} in the file, {list(want)} in the model"
        return key


def compare_shapes(found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]) -> MatchReport:
    report = MatchReport()
    for key, shape in found.items():
        want = expected.get(key)
        if want is None:
            report.unexpected.append(key)
        elif tuple(want) != tuple(shape):
            report.mismatched[key] = (tuple(shape), tuple(want))
        else:
            report.matched += 1
    report.missing = [key for key in expected if key not in found]
    return report


def model_shapes(config: EMOConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ``EMOModel(config).state_dict()``, from a meta-device build (cached)."""
    return dict(_model_shapes(config.to_json()))


@lru_cache(maxsize=16)
def _model_shapes(config_json: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = EMOModel(EMOConfig.from_json(config_json))
    return _shapes(model.state_dict())


@lru_cache(maxsize=1)
def _architectures() -> tuple[str, ...]:
    """Names of the named configs with distinct architectures (``echomimic-v1-acc`` only differs in its preset)."""
    names, seen = [], []
    for name in CONFIGS:
        arch = dataclasses.replace(get_config(name), name="", preset=None)
        if arch not in seen:
            seen.append(arch)
            names.append(name)
    return tuple(names)


def _closest_config(found: Mapping[str, tuple[int, ...]]) -> tuple[str, MatchReport]:
    """The named config whose layout equals ``found``, else the one that explains most of it."""
    fits = []
    for name in _architectures():
        report = compare_shapes(found, model_shapes(get_config(name)))
        if report.complete:
            return name, report
        fits.append((name, report))
    return max(fits, key=lambda fit: (fit[1].matched, -fit[1].errors))


def _with_acc_preset(config: EMOConfig) -> EMOConfig:
    """EchoMimic's distilled weights: the same model sampled with the accelerated preset (6 steps, cfg 1.0)."""
    acc = get_config(f"echomimic-v1{_ACC_SUFFIX}").preset
    preset = dataclasses.replace(config.preset, steps=acc.steps, cfg=acc.cfg, audio_cfg=acc.audio_cfg)
    return config.replace(name=config.name + _ACC_SUFFIX, preset=preset)


# --------------------------------------------------------------------------------------------------
# Detection


@dataclass(eq=False)
class Checkpoint:
    """A set of checkpoint files resolved against the known layouts (see the module docstring)."""

    format: str  # "native" | "state-dict" | "echomimic-v1"
    config: EMOConfig  # the matching config, or the closest one when the files are incomplete
    files: dict[str, TensorFile]  # part ("model" for single-file formats) -> the file used for it
    sources: dict[str, tuple[TensorFile, str]]  # model key -> (file, key in that file)
    report: MatchReport
    missing_parts: list[str] = field(default_factory=list)  # EchoMimic parts without a file
    ignored: dict[Path, str] = field(default_factory=dict)  # files of a folder that were not used, and why

    @property
    def family(self) -> str:
        return self.config.family

    @property
    def variant(self) -> str:
        return "acc" if self.config.name.endswith(_ACC_SUFFIX) else "standard"

    @property
    def paths(self) -> list[Path]:
        return [f.path for f in self.files.values()] + list(self.ignored)

    @property
    def complete(self) -> bool:
        return not self.missing_parts and self.report.complete

    @property
    def bundled_vae(self) -> bool:
        """Whether the (native) file also carries a VAE (:func:`load_bundled_vae`)."""
        return self.format == "native" and VAE_CONFIG_KEY in self.files["model"].metadata

    def problem(self) -> str | None:
        """Why the files cannot be loaded (one line), or None."""
        if self.missing_parts:
            needed = [name for name, _ in ECHOMIMIC_PARTS.values()]
            found = ", ".join(sorted(f.name for f in self.files.values()))
            return (
                f"EchoMimic v1 needs {', '.join(needed[:-1])} and {needed[-1]} in one folder; found only {found} "
                f"(no {' / '.join(self.missing_parts)} weights)"
            )
        if not self.report.complete:
            names = ", ".join(sorted(f.name for f in self.files.values()))
            modules = sorted({k.split(".", 1)[0] for k in model_shapes(self.config)}, key=MODEL_MODULES.index)
            return (
                f"{names} does not match the {self.config.name} layout ({self.family} weights hold "
                f"{', '.join(modules)}): {self.report.summary()}"
            )
        return None

    # ---- what the files hold (no tensor data is read) ----------------------------------------------
    def _tensors(self) -> Iterable[torch.Tensor]:
        return (file.tensors[key] for file, key in self.sources.values())

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self._tensors())

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._tensors())

    @property
    def dtypes(self) -> Counter[str]:
        return Counter(str(t.dtype).removeprefix("torch.") for t in self._tensors())

    @property
    def module_counts(self) -> dict[str, int]:
        return dict(Counter(key.split(".", 1)[0] for key in self.sources))

    def value_problem(self) -> str | None:
        """The first tensor that cannot be used as stored (integer where the model needs floats, NaN/inf), or None.

        Reads every tensor's data once (memory-mapped, one tensor at a time); :meth:`load` makes the same check.
        """
        with torch.device("meta"):
            expected = {k: t.dtype for k, t in EMOModel(self.config).state_dict(keep_vars=True).items()}
        for key, (file, name) in self.sources.items():
            try:
                _refuse_bad_values(file, name, file.tensors[name], expected.get(key))
            except WeightsError as exc:
                return str(exc)
        return None

    # ---- loading ---------------------------------------------------------------------------------
    def load(self, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> EMOModel:
        """Build the model on the meta device and assign the converted tensors (see "Memory")."""
        problem = self.problem()
        if problem is not None:
            raise WeightsError(problem)
        device = torch.device(device)
        with torch.device("meta"):
            model = EMOModel(self.config)
        expected = {k: t.dtype for k, t in model.state_dict(keep_vars=True).items()}
        state = {}
        for key, (file, name) in self.sources.items():
            state[key] = _materialise(file.tensors[name], device, dtype)
            _refuse_bad_values(file, name, state[key], expected.get(key))  # on the copy: the data is read once
        model.load_state_dict(state, strict=True, assign=True)
        if device.type != "meta":
            _assert_materialised(model)
        return model.eval()


def _refuse_bad_values(file: TensorFile, name: str, tensor: torch.Tensor, expected: torch.dtype | None) -> None:
    problem = bad_tensor(name, tensor, expected)
    if problem is not None:
        raise WeightsError(
            f"{file.name}: {problem}; the file is damaged (or saved from a diverged training run): use another copy"
        )


def _assert_materialised(module: torch.nn.Module) -> None:
    left = [n for n, t in itertools.chain(module.named_parameters(), module.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"{len(left)} tensors were left on the meta device after loading, e.g. {left[:3]}")


def inspect_checkpoint(path: CheckpointInput | Sequence[CheckpointInput], *, variant: str = "standard") -> Checkpoint:
    """Identify the format, the parts and the config of a file, a folder or a list of files.

    Incomplete or mismatched inputs give a :class:`Checkpoint` whose :meth:`~Checkpoint.problem`
    says what is wrong; unreadable files and files of no supported family raise :class:`WeightsError`.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    inputs = _open_inputs(path)
    files = [f for f, _ in inputs]
    native = [f for f in files if CONFIG_KEY in f.metadata]
    if native:
        if len(files) > 1:
            raise WeightsError(f"{native[0].name} is a complete native checkpoint; load it on its own")
        return _resolve_native(native[0], variant)

    parts: dict[str, list[TensorFile]] = defaultdict(list)
    ignored: dict[Path, str] = {}
    for file, explicit in inputs:
        role = _role(file.tensors)
        if role is not None:
            parts[role].append(file)
        elif explicit:
            raise WeightsError(_unsupported_message([file], None))
        else:
            ignored[file.path] = "not part of an EMO-family model"
    if not parts:
        raise WeightsError(f"{', '.join(f.name for f in files)}: no part of an EMO-family model found")
    if "model" in parts:
        if len(parts) > 1 or len(parts["model"]) > 1:
            raise WeightsError(
                f"{', '.join(f.name for f in files)}: mixes whole-model checkpoints with other parts; load one at a time"
            )
        return _resolve_state_dict(parts["model"][0], variant, ignored)
    return _resolve_echomimic(parts, variant, ignored)


def load_emo_model(
    path: CheckpointInput | Sequence[CheckpointInput],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    variant: str = "standard",
) -> EMOModel:
    """Load any supported checkpoint (native file, Hallo net.pth, EchoMimic v1 folder) strictly.

    ``model.config`` is the detected config, preset included. ``dtype=None`` keeps the stored dtype.
    """
    return inspect_checkpoint(path, variant=variant).load(device=device, dtype=dtype)


def _open_inputs(path: CheckpointInput | Sequence[CheckpointInput]) -> list[tuple[TensorFile, bool]]:
    """(file, named explicitly) for each file given or found at the top level of a given folder."""
    items = [path] if isinstance(path, (str, os.PathLike, TensorFile)) else list(path)
    if not items:
        raise WeightsError("no checkpoint given")
    out = []
    for item in items:
        if isinstance(item, TensorFile):
            out.append((item, True))
            continue
        item = Path(item)
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES)
            if not found:
                raise WeightsError(f"{item}: no checkpoint files ({', '.join(WEIGHT_SUFFIXES)}) in this folder")
            out.extend((open_tensors(p), False) for p in found)
        else:
            out.append((open_tensors(item), True))
    return out


def _role(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """Which part of a model a file holds, from its key names ("model" = the whole EMOModel)."""
    tops = {key.split(".", 1)[0] for key in tensors}
    if tops & set(MODEL_MODULES):
        return "model"
    if tensors and all(".motion_modules." in key for key in tensors):
        return "motion_module"
    if {"conv_in", "down_blocks"} <= tops:
        return "denoising_unet" if "conv_out" in tops else "reference_unet"
    if tops and tops <= {"conv_in", "blocks", "conv_out"}:
        return "face_locator"
    return None


def _looks_like(keys: Iterable[str]) -> str:
    """ "; it looks like <what>" for checkpoints of well-known other kinds, else ""."""
    keys = list(keys)
    return next((f"; it looks like {what}" for prefix, what in _OTHER_KINDS if any(k.startswith(prefix) for k in keys)), "")


def _unsupported_message(files: Sequence[TensorFile], fit: tuple[str, MatchReport] | None) -> str:
    names = ", ".join(f.name for f in files)
    keys = [key for f in files for key in f.tensors]
    if fit is None:
        detail = "it holds no part of an EMO-family model"
    else:
        name, report = fit
        detail = f"only {report.matched} of {len(keys)} tensors fit the closest known layout ({name})"
    return (
        f"{names}: not a checkpoint of a supported family (a native EMO .safetensors, Hallo's net.pth or "
        f"EchoMimic v1's .pth files): {detail}{_looks_like(keys)}"
    )


def _require_known_layout(files: Sequence[TensorFile], name: str, report: MatchReport) -> None:
    found = report.matched + len(report.unexpected) + len(report.mismatched)
    if report.matched * 2 < found:
        raise WeightsError(_unsupported_message(files, (name, report)))


def _with_named_quirks(config: EMOConfig, config_json: str) -> EMOConfig:
    """Fields a native file predates (new quirks, scheduler options) take its named config's values.

    The stored values always win; only keys missing from the file's config JSON are filled, from the
    named config of the same name (``hallo``, ``tiny-hallo``, ...). A config with another name keeps the
    dataclass defaults (the paper's behaviour).
    """
    try:
        named = get_config(config.name).to_dict()
    except KeyError:
        return config

    def overlay(base: dict, stored: dict) -> dict:
        out = dict(base)
        for key, value in stored.items():
            out[key] = overlay(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        return out

    stored = json.loads(config_json)
    merged = overlay(named, stored)
    if merged == stored:
        return config
    return EMOConfig.from_dict(merged).validate()


def _resolve_native(file: TensorFile, variant: str) -> Checkpoint:
    if variant != "standard":
        raise WeightsError(
            f"{file.name} is a native checkpoint: its preset is fixed (variant {variant!r} selects EchoMimic's _acc files)"
        )
    version = file.metadata.get(FORMAT_VERSION_KEY, "")
    if not version.isdigit():
        raise WeightsError(f"{file.name}: native metadata without a valid {FORMAT_VERSION_KEY} ({version!r})")
    if int(version) > NATIVE_FORMAT_VERSION:
        raise WeightsError(
            f"{file.name}: native format version {version} is newer than this ComfyUI-EMO reads ({NATIVE_FORMAT_VERSION}); update ComfyUI-EMO"
        )
    try:
        config = _with_named_quirks(EMOConfig.from_json(file.metadata[CONFIG_KEY]).validate(), file.metadata[CONFIG_KEY])
    except (ValueError, TypeError) as exc:
        raise WeightsError(f"{file.name}: unreadable {CONFIG_KEY} metadata ({exc})") from None
    bundled = VAE_CONFIG_KEY in file.metadata
    sources = {k: (file, k) for k in file.tensors if not (bundled and k.startswith(VAE_PREFIX))}
    report = compare_shapes({k: tuple(file.tensors[k].shape) for k in sources}, model_shapes(config))
    return Checkpoint("native", config, {"model": file}, sources, report)


def _resolve_state_dict(file: TensorFile, variant: str, ignored: dict[Path, str]) -> Checkpoint:
    if variant != "standard":
        raise WeightsError(f"{file.name} is a single-file checkpoint; variant {variant!r} selects EchoMimic's _acc files")
    name, report = _closest_config(_shapes(file.tensors))
    _require_known_layout([file], name, report)
    sources = {key: (file, key) for key in file.tensors}
    return Checkpoint("state-dict", get_config(name), {"model": file}, sources, report, ignored=ignored)


def _name_tags(path: Path) -> set[str]:
    return set(path.stem.lower().split("_"))


def _resolve_echomimic(parts: dict[str, list[TensorFile]], variant: str, ignored: dict[Path, str]) -> Checkpoint:
    chosen: dict[str, TensorFile] = {}
    for role, candidates in parts.items():
        usable = []
        for file in candidates:
            if "pose" in _name_tags(file.path):
                ignored[file.path] = "EchoMimic pose-driven variant (not supported)"
            else:
                usable.append(file)
        if usable:
            chosen[role] = _pick_variant(role, usable, variant, ignored)
    if not chosen:
        raise WeightsError(f"{', '.join(p.name for p in ignored)}: EchoMimic's pose-driven files are not supported")

    acc = {role: "acc" in _name_tags(f.path) for role, f in chosen.items() if role in ("denoising_unet", "motion_module")}
    if len(set(acc.values())) > 1:
        names = " and ".join(chosen[r].name for r in acc)
        raise WeightsError(f"{names} come from different EchoMimic variants (standard and _acc); use one variant's files")

    sources: dict[str, tuple[TensorFile, str]] = {}
    for role, file in chosen.items():
        prefix = ECHOMIMIC_PARTS[role][1]
        for key in file.tensors:
            if prefix + key in sources:
                raise WeightsError(f"{file.name} and {sources[prefix + key][0].name} both hold {prefix + key}")
            sources[prefix + key] = (file, key)
    found = {key: tuple(file.tensors[name].shape) for key, (file, name) in sources.items()}
    name, report = _closest_config(found)
    _require_known_layout(list(chosen.values()), name, report)
    _require_echomimic_unet(chosen, name, report)

    config = get_config(name)
    if any(acc.values()):
        config = _with_acc_preset(config)
    has_motion = "denoising_unet" in chosen and any(".motion_modules." in k for k in chosen["denoising_unet"].tensors)
    missing = [r for r in ECHOMIMIC_PARTS if r not in chosen and not (r == "motion_module" and has_motion)]
    return Checkpoint("echomimic-v1", config, chosen, sources, report, missing_parts=missing, ignored=ignored)


def _require_echomimic_unet(chosen: Mapping[str, TensorFile], name: str, report: MatchReport) -> None:
    """A UNet file is an EchoMimic denoising UNet only if its cross-attention takes EchoMimic's audio tokens.

    A plain diffusers UNet (Stable Diffusion 1.5: text cross-attention) has the same key names.
    """
    unet = chosen.get("denoising_unet")
    if unet is None:
        return
    if get_config(name).family.startswith("echomimic") and not any(".attn2." in key for key in report.mismatched):
        return
    raise WeightsError(
        f"{unet.name}: a diffusers UNet whose cross-attention (attn2) does not take EchoMimic's audio tokens, so not "
        "a part of a supported family; it looks like a Stable Diffusion 1.5 UNet, which only initialises training "
        "(load_sd15_unet_weights)"
    )


def _pick_variant(role: str, files: list[TensorFile], variant: str, ignored: dict[Path, str]) -> TensorFile:
    acc = [f for f in files if "acc" in _name_tags(f.path)]
    standard = [f for f in files if f not in acc]
    if variant == "acc" and role in ("denoising_unet", "motion_module") and not acc:
        raise WeightsError(
            f"variant 'acc' needs EchoMimic's {role}_acc.pth; found only {', '.join(f.name for f in files)} for the {role}"
        )
    preferred, other = (acc, standard) if variant == "acc" else (standard, acc)
    pick = preferred or other
    if len(pick) > 1:
        raise WeightsError(f"several {role} files for one model: {', '.join(f.name for f in pick)}; keep one")
    for file in files:
        if file is not pick[0]:
            ignored[file.path] = f"{role} of the other variant"
    return pick[0]


# --------------------------------------------------------------------------------------------------
# Native format


def save_native(
    model: EMOModel,
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    metadata: Mapping[str, str] | None = None,
    vae: AutoencoderKL | None = None,
) -> Path:
    """Write ``model`` (and optionally the ``vae`` it was trained with) as one native ``.safetensors``.

    ``dtype`` converts floating-point tensors (None keeps them); ``metadata`` adds string entries
    (the reserved keys are ours). The file is written next to ``path`` and renamed into place, so an
    interrupted save never leaves a half-written checkpoint. Format: see the module docstring.
    """
    path = Path(path)
    extra = dict(metadata or {})
    clash = _RESERVED_METADATA & extra.keys()
    if clash:
        raise ValueError(f"metadata keys {sorted(clash)} are reserved for the native format")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        raise ValueError("safetensors metadata must map strings to strings")
    state = dict(model.state_dict())
    if vae is not None:
        state.update({VAE_PREFIX + k: v for k, v in vae.state_dict().items()})
    tensors = {}
    for key, tensor in state.items():
        if tensor.is_meta:
            raise ValueError(f"{key} is on the meta device; load or initialise the model before saving")
        convert = dtype is not None and tensor.is_floating_point()
        tensors[key] = tensor.to(device="cpu", dtype=dtype if convert else None).contiguous()  # no copy if already so
    header = {
        "format": "pt",
        FORMAT_VERSION_KEY: str(NATIVE_FORMAT_VERSION),
        CONFIG_KEY: model.config.to_json(),
        PRESET_KEY: model.config.name,
        **({VAE_CONFIG_KEY: vae.to_json_string()} if vae is not None else {}),
        **extra,
    }
    partial = path.with_name(f".{path.name}.partial")
    try:
        save_file(tensors, str(partial), metadata=header)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------------------------------
# Training initialisation


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
    """Backbone layers SD1.5 does not have (motion modules with the speed layers, Hallo's audio modules)."""
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
    """Initialise both UNets' spatial layers from SD1.5 (EMO stage 1, and Hallo/EchoMimic training).

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
    """Copy an AnimateDiff v2 motion module (``mm_sd_v15_v2.ckpt``, or EchoMimic's ``motion_module.pth``) in.

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


# --------------------------------------------------------------------------------------------------
# VAE

# diffusers renamed the VAE's attention in 0.14; sd-vae-ft-mse's files still use the old names.
_OLD_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def load_vae(path: CheckpointInput, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> AutoencoderKL:
    """The SD VAE from a diffusers folder (or the pipeline folder holding ``vae/``), a diffusers VAE
    file, or a single LDM file (``vae-ft-mse-840000-ema-pruned.safetensors``, keys ``encoder.down.N...``,
    possibly under ``first_stage_model.`` as in a full SD checkpoint, whose other parts are ignored).

    LDM files are converted with diffusers' converter and the shipped sd-vae-ft-mse config, whose
    shape fields (channels, blocks, latent width) are read from the file. Strict on every VAE tensor.
    """
    if not isinstance(path, TensorFile) and Path(path).is_dir():
        config, weights = _diffusers_folder(Path(path), "vae", "AutoencoderKL")
        state, source = _modern_vae_names(read_state_dict(weights)), weights
    else:
        tensors, source = _tensors_of(path)
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

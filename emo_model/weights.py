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
  ``emo_preset``                the config's name, e.g. ``"emo"``, ``"tiny"``
  ``emo_vae_config``            optional: the diffusers config JSON of an ``AutoencoderKL``
                                whose tensors are stored under ``vae.`` (the CPU demo model
                                carries its own small VAE; :func:`load_bundled_vae`)
  ``format``                    ``"pt"`` (the safetensors convention)
  ============================  ===========================================================

  plus whatever the writer adds (``convert`` records ``emo_source``).
* **state-dict**: one dict whose keys carry the EMOModel module prefixes (``reference_unet.``,
  ``denoising_unet.``, ``face_locator.``, ``imageproj.``, ``audioproj.``, ``speed_encoder.``), as some
  families publish their whole network, and any ``EMOModel.state_dict()``. When two families share a network,
  the tensors name the first; a folder name (:attr:`Family.folder_names`) or an explicit ``family=`` names the other.
* **part files**: a family published as several files, one part of the model each
  (:attr:`Family.part_files`). Each file's part is identified from its keys: a motion module (every key under
  ``motion_modules``), a UNet with the output head ``conv_out`` (the denoising UNet, spatial layers), a UNet
  without it (the ReferenceNet), a small conv stack (the face locator). The family that claims the set of parts
  resolves them (its module says which file names, variants and prefixes it has). The checkpoint's ``format``
  is then the family's name.

The architecture is then chosen by building every named config (:data:`emo_model.families.CONFIGS`)
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
tensor's stored dtype (fp16 stays fp16; fp16 convolutions are slow on CPU, so CPU callers
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

from .configs import EMOConfig, get_config
from .families import CONFIGS, FAMILIES, Family, family_of, get_family, supported_files, upgrade_config_dict
from .model import EMOModel
from .unet_blocks import UNetBase
from .validation import bad_tensor

MODEL_CONFIGS = Path(__file__).parent / "model_configs"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")

NATIVE_FORMAT_VERSION = 1
FORMAT_VERSION_KEY = "emo_format_version"
CONFIG_KEY = "emo_config"
PRESET_KEY = "emo_preset"
VAE_CONFIG_KEY = "emo_vae_config"
VAE_PREFIX = "vae."
_RESERVED_METADATA = {"format", FORMAT_VERSION_KEY, CONFIG_KEY, PRESET_KEY, VAE_CONFIG_KEY}

# EMOModel's sub-modules (the key prefixes of a whole-model state dict).
MODEL_MODULES = ("reference_unet", "denoising_unet", "face_locator", "audioproj", "imageproj", "speed_encoder")



def variants() -> tuple[str, ...]:
    """``"standard"`` and every variant a family is published in (part files with identical keys)."""
    return ("standard",) + tuple(dict.fromkeys(v for fam in FAMILIES for v in fam.variants))


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
        """The file name; a diffusers model folder's weights are named with their folder (``unet/diffusion_pytorch_model...``)."""
        if self.path.name in DIFFUSERS_WEIGHTS and self.path.parent.name:
            return f"{self.path.parent.name}/{self.path.name}"
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
        inner = next((obj[k] for k in ("state_dict", "module", "model") if isinstance(obj.get(k), Mapping)), None)
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
    """Names of the named configs with distinct architectures (a config that differs only in its preset or family is skipped)."""
    names, seen = [], []
    for name in CONFIGS:
        arch = _architecture(get_config(name))
        if arch not in seen:
            seen.append(arch)
            names.append(name)
    return tuple(names)


def closest_config(found: Mapping[str, tuple[int, ...]]) -> tuple[str, MatchReport]:
    """The named config whose layout equals ``found``, else the one that explains most of it."""
    fits = []
    for name in _architectures():
        report = compare_shapes(found, model_shapes(get_config(name)))
        if report.complete:
            return name, report
        fits.append((name, report))
    return max(fits, key=lambda fit: (fit[1].matched, -fit[1].errors))


# --------------------------------------------------------------------------------------------------
# Detection


@dataclass(eq=False)
class Checkpoint:
    """A set of checkpoint files resolved against the known layouts (see the module docstring)."""

    format: str  # "native" | "state-dict" | a family name (that family's part files)
    config: EMOConfig  # the matching config, or the closest one when the files are incomplete
    files: dict[str, TensorFile]  # part ("model" for single-file formats) -> the file used for it
    sources: dict[str, tuple[TensorFile, str]]  # model key -> (file, key in that file)
    report: MatchReport
    missing_parts: list[str] = field(default_factory=list)  # part roles without a file (part-file families)
    ignored: dict[Path, str] = field(default_factory=dict)  # files of a folder that were not used, and why
    variant: str = "standard"  # which of the family's published variants the files are

    @property
    def family(self) -> str:
        return self.config.family

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
            fam = get_family(self.family)
            needed = [name for name, _ in fam.part_files.parts.values()]
            found = ", ".join(sorted(f.name for f in self.files.values()))
            absent = [fam.part_files.parts[r][0] if r in fam.part_files.parts else r for r in self.missing_parts]
            return (
                f"{fam.label} needs {', '.join(needed[:-1])} and {needed[-1]} in one folder; found only {found} "
                f"(no {' / '.join(absent)} weights)"
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


def inspect_checkpoint(
    path: CheckpointInput | Sequence[CheckpointInput], *, variant: str = "standard", family: str | None = None
) -> Checkpoint:
    """Identify the format, the parts and the config of a file, a folder or a list of files.

    ``family`` names the family when the tensors alone cannot (two families that share a network); it must fit
    the tensors. Incomplete or mismatched inputs give a :class:`Checkpoint` whose :meth:`~Checkpoint.problem`
    says what is wrong; unreadable files and files of no supported family raise :class:`WeightsError`.
    """
    if variant not in variants():
        raise ValueError(f"variant must be one of {variants()}, got {variant!r}")
    if family is not None:
        try:
            get_family(family)
        except KeyError as exc:
            raise WeightsError(str(exc.args[0])) from None
    inputs = _open_inputs(path)
    files = [f for f, _ in inputs]
    native = [f for f in files if CONFIG_KEY in f.metadata]
    if native:
        if len(files) > 1:
            raise WeightsError(f"{native[0].name} is a complete native checkpoint; load it on its own")
        ckpt = _resolve_native(native[0], variant)
        return _require_family(ckpt, family)

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
        return _resolve_state_dict(parts["model"][0], variant, ignored, family)
    owner = _subfolder_owner(path) or next((fam for fam in FAMILIES if fam.part_files is not None and fam.part_files.claims(parts)), None)
    if owner is None:
        raise WeightsError(_unsupported_message(files, None))
    return _require_family(owner.part_files.resolve(owner, dict(parts), variant, ignored), family)


def load_emo_model(
    path: CheckpointInput | Sequence[CheckpointInput],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    variant: str = "standard",
    family: str | None = None,
) -> EMOModel:
    """Load any supported checkpoint (a native file, a whole-model state dict, a family's part files) strictly.

    ``model.config`` is the detected config, preset included. ``dtype=None`` keeps the stored dtype; ``family``
    as in :func:`inspect_checkpoint`.
    """
    return inspect_checkpoint(path, variant=variant, family=family).load(device=device, dtype=dtype)


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
            found += [p for sub in _declared_subfolders(item) if (p := _diffusers_weights(sub)) is not None]
            if not found:
                raise WeightsError(f"{item}: no checkpoint files ({', '.join(WEIGHT_SUFFIXES)}) in this folder")
            out.extend((open_tensors(p), False) for p in found)
        else:
            out.append((open_tensors(item), True))
    return out


def _declared_subfolders(folder: Path) -> list[Path]:
    """The sub-folders of ``folder`` that a family declares as its parts (:attr:`PartFiles.subfolders`)."""
    names = dict.fromkeys(sub for fam in FAMILIES if fam.part_files is not None for sub in fam.part_files.subfolders.values())
    return [folder / name for name in names if (folder / name).is_dir()]


def _diffusers_weights(folder: Path) -> Path | None:
    return next((folder / n for n in DIFFUSERS_WEIGHTS if (folder / n).is_file()), None)


def _subfolder_owner(path: CheckpointInput | Sequence[CheckpointInput]) -> Family | None:
    """The family whose declared sub-folders a single given folder holds (it owns the parts, even an incomplete set)."""
    if not isinstance(path, (str, os.PathLike)) or not Path(path).is_dir():
        return None
    folder = Path(path)
    for fam in FAMILIES:
        subs = fam.part_files.subfolders if fam.part_files is not None else {}
        if any(_diffusers_weights(folder / sub) is not None for sub in subs.values()):
            return fam
    return None


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
    if "proj" in tops and tops <= {"proj", "norm"}:  # identity projection (embedding -> tokens)
        return "image_proj"
    if "proj1" in tops and tops <= {"proj1", "proj2", "proj3", "norm"}:  # audio projection (feature windows -> tokens)
        return "audio_proj"
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
        f"{names}: not a checkpoint of a supported family ({supported_files()}): {detail}{_looks_like(keys)}"
    )


def require_known_layout(files: Sequence[TensorFile], name: str, report: MatchReport) -> None:
    found = report.matched + len(report.unexpected) + len(report.mismatched)
    if report.matched * 2 < found:
        raise WeightsError(_unsupported_message(files, (name, report)))


def _with_named_quirks(config: EMOConfig, config_json: str) -> EMOConfig:
    """Fields a native file predates (new quirks, scheduler options) take its named config's values.

    The stored values always win; only keys missing from the file's config JSON are filled, from the
    named config of the same name (``emo``, ``tiny``, ...). A config with another name keeps the
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

    stored = upgrade_config_dict(json.loads(config_json))
    merged = overlay(named, stored)
    if merged == stored:
        return config
    return EMOConfig.from_dict(merged).validate()


def _resolve_native(file: TensorFile, variant: str) -> Checkpoint:
    if variant != "standard":
        raise WeightsError(
            f"{file.name} is a native checkpoint: its preset is fixed (variant {variant!r} selects {_variant_owner(variant)})"
        )
    version = file.metadata.get(FORMAT_VERSION_KEY, "")
    if not version.isdigit():
        raise WeightsError(f"{file.name}: native metadata without a valid {FORMAT_VERSION_KEY} ({version!r})")
    if int(version) > NATIVE_FORMAT_VERSION:
        raise WeightsError(
            f"{file.name}: native format version {version} is newer than this ComfyUI-EMO reads ({NATIVE_FORMAT_VERSION}); update ComfyUI-EMO"
        )
    try:
        stored = json.dumps(upgrade_config_dict(json.loads(file.metadata[CONFIG_KEY])))
        config = _with_named_quirks(EMOConfig.from_json(stored).validate(), stored)
    except (ValueError, TypeError) as exc:
        raise WeightsError(f"{file.name}: unreadable {CONFIG_KEY} metadata ({exc})") from None
    bundled = VAE_CONFIG_KEY in file.metadata
    sources = {k: (file, k) for k in file.tensors if not (bundled and k.startswith(VAE_PREFIX))}
    report = compare_shapes({k: tuple(file.tensors[k].shape) for k in sources}, model_shapes(config))
    return Checkpoint("native", config, {"model": file}, sources, report)


def _variant_owner(variant: str) -> str:
    owners = [fam.variants[variant] for fam in FAMILIES if variant in fam.variants]
    return " / ".join(owners) or "nothing"


def _resolve_state_dict(file: TensorFile, variant: str, ignored: dict[Path, str], family: str | None) -> Checkpoint:
    if variant != "standard":
        raise WeightsError(f"{file.name} is a single-file checkpoint; variant {variant!r} selects {_variant_owner(variant)}")
    name, report = closest_config(_shapes(file.tensors))
    require_known_layout([file], name, report)
    config = get_config(name)
    claimed = family or _family_by_folder(file.path, config)
    if claimed is not None and claimed != config.family:
        config = _same_network_in(get_family(claimed), config, file.name)
    sources = {key: (file, key) for key in file.tensors}
    return Checkpoint("state-dict", config, {"model": file}, sources, report, ignored=ignored)


def _family_by_folder(path: Path, config: EMOConfig) -> str | None:
    """A family that claims files in a folder of its name (``.../<folder name>/net.pth``) and runs this network."""
    folder = path.resolve().parent.name.lower()
    for fam in FAMILIES:
        if folder in fam.folder_names and _network_in(fam, config) is not None:
            return fam.name
    return None


def _architecture(config: EMOConfig) -> EMOConfig:
    return dataclasses.replace(config, name="", family="", preset=None)


def _network_in(fam: Family, config: EMOConfig) -> EMOConfig | None:
    """The family's named config with this config's network, or None."""
    want = _architecture(config)
    return next((c for c in (f() for f in fam.configs.values()) if _architecture(c) == want), None)


def _same_network_in(fam: Family, config: EMOConfig, name: str) -> EMOConfig:
    found = _network_in(fam, config)
    if found is None:
        raise WeightsError(
            f"{name} holds a {family_of(config).label if family_of(config) else config.family} network, which "
            f"{fam.label} does not run; leave the family choice on auto"
        )
    return found


def _require_family(ckpt: Checkpoint, family: str | None) -> Checkpoint:
    """An explicit family that is not what the files are: one line (a native file or part files name their own)."""
    if family is None or ckpt.family == family:
        return ckpt
    if ckpt.format != "state-dict":
        fam = family_of(ckpt.config)
        raise WeightsError(
            f"{', '.join(sorted(f.name for f in ckpt.files.values()))}: {fam.label if fam else ckpt.family} weights, "
            f"not {get_family(family).label}'s; leave the family choice on auto"
        )
    return ckpt


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

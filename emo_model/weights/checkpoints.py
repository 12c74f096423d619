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
  :class:`~emo_model.network.model.EMOModel` name, and in the metadata:

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

import json
import os
import types
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..configs import EMOConfig
from ..families import FAMILIES, Family, family_of, get_config, get_family, supported_files, upgrade_config_dict
from ..network.model import EMOModel
from ..validation import bad_tensor
from .files import (
    DIFFUSERS_WEIGHTS,
    WEIGHT_SUFFIXES,
    CheckpointInput,
    TensorFile,
    WeightsError,
    _assert_materialised,
    _materialise,
    _shapes,
    open_tensors,
)
from .native import CONFIG_KEY, FORMAT_VERSION_KEY, NATIVE_FORMAT_VERSION, VAE_CONFIG_KEY, VAE_PREFIX
from .training_init import training_weights_file
from .shapes import MODEL_MODULES, MatchReport, _architecture, _looks_like, closest_config, compare_shapes, model_shapes


def variants() -> tuple[str, ...]:
    """``"standard"`` and every variant a family is published in (part files with identical keys)."""
    return ("standard",) + tuple(dict.fromkeys(v for fam in FAMILIES for v in fam.variants))


# --------------------------------------------------------------------------------------------------
# Reading


# --------------------------------------------------------------------------------------------------
# Matching


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
    return _require_family(owner.part_files.resolve(owner, dict(parts), variant, ignored, _toolkit()), family)


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
            item = training_weights_file(item) or item  # a training run or checkpoint folder: the native weights inside
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
    if "latents" in tops and tops <= {"pos_emb", "latents", "proj_in", "proj_out", "norm_out", "layers"}:  # perceiver audio projection
        return "audio_proj"
    return None


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


# --------------------------------------------------------------------------------------------------
# Training initialisation


# --------------------------------------------------------------------------------------------------
# VAE


# --------------------------------------------------------------------------------------------------
# Part files: the mechanics every part-file family's resolver shares (its module keeps only its data)


def pick_variant(role: str, files: Sequence[TensorFile], variant: str, ignored: dict[Path, str], *, tag: str,
                 is_tagged, required_roles: Iterable[str], label: str) -> TensorFile:
    """The file of ``role`` for ``variant`` among ``files``: the ``tag`` variant's (``is_tagged(file)``) when asked for
    (refused when a ``required_roles`` part has none), else the standard one, each falling back to the other; the
    file not used goes to ``ignored``."""
    tagged = [f for f in files if is_tagged(f)]
    standard = [f for f in files if f not in tagged]
    if variant == tag and role in required_roles and not tagged:
        raise WeightsError(
            f"variant '{tag}' needs {label}'s {role}_{tag}.pth; found only {', '.join(f.name for f in files)} for the {role}"
        )
    preferred, other = (tagged, standard) if variant == tag else (standard, tagged)
    pick = preferred or other
    if len(pick) > 1:
        raise WeightsError(f"several {role} files for one model: {', '.join(f.name for f in pick)}; keep one")
    for file in files:
        if file is not pick[0]:
            ignored[file.path] = f"{role} of the other variant"
    return pick[0]


def gather_sources(chosen: Mapping[str, TensorFile], prefixes: Mapping[str, str]):
    """(model key -> (file, key in it), model key -> shape) of the chosen part files, each key under its role's prefix;
    a key two files hold is refused."""
    sources: dict[str, tuple[TensorFile, str]] = {}
    for role, file in chosen.items():
        for key in file.tensors:
            if prefixes[role] + key in sources:
                raise WeightsError(f"{file.name} and {sources[prefixes[role] + key][0].name} both hold {prefixes[role] + key}")
            sources[prefixes[role] + key] = (file, key)
    return sources, {key: tuple(file.tensors[name].shape) for key, (file, name) in sources.items()}


def resolve_parts(family: Family, chosen: dict[str, TensorFile], ignored: dict[Path, str], *, tag: str, is_tagged,
                  tagged_roles: Sequence[str], with_tag, within: Mapping[str, tuple[str, str]] | None = None,
                  check=None) -> Checkpoint:
    """The Checkpoint of a family's chosen part files (role -> file; ``family.part_files.parts``: role -> (file name,
    key prefix)): the files of ``tagged_roles`` all of one variant (``is_tagged``; ``with_tag(config)`` gives the
    tagged variant's config), the keys gathered, the closest layout (another family's, when the given parts fit it as
    well, is replaced by this family's config that matches as many keys), ``check(name, report)`` (the family's own
    refusals), and the roles without a file, but for one a chosen file holds (``within``: role -> (role, key part)).
    """
    label = family.label
    flags = {role: bool(is_tagged(f)) for role, f in chosen.items() if role in tagged_roles}
    if len(set(flags.values())) > 1:
        names = " and ".join(chosen[r].name for r in flags)
        raise WeightsError(f"{names} come from different {label} variants (standard and _{tag}); use one variant's files")
    sources, found = gather_sources(chosen, {role: prefix for role, (_, prefix) in family.part_files.parts.items()})
    name, report = closest_config(found)
    if get_config(name).family != family.name:
        twin = next((n for n, make in family.configs.items()
                     if compare_shapes(found, model_shapes(make())).matched >= report.matched), None)
        if twin is not None:
            name, report = twin, compare_shapes(found, model_shapes(family.configs[twin]()))
    require_known_layout(list(chosen.values()), name, report)
    if check is not None:
        check(name, report)
    tagged = any(flags.values())
    config = with_tag(get_config(name)) if tagged else get_config(name)
    missing = missing_parts(family, chosen, within)
    return Checkpoint(family.name, config, chosen, sources, report, missing_parts=missing, ignored=ignored,
                      variant=tag if tagged else "standard")


def missing_parts(family: Family, chosen: Mapping[str, TensorFile],
                  within: Mapping[str, tuple[str, str]] | None = None) -> list[str]:
    """The family's part roles without a chosen file, but for one whose keys a chosen file already holds (``within``:
    role -> (the role whose file may hold it, a part of its keys), e.g. a denoising UNet saved with its motion modules)."""
    def held(role: str) -> bool:
        other, fragment = (within or {}).get(role, (None, None))
        return other in chosen and any(fragment in key for key in chosen[other].tensors)

    return [role for role in family.part_files.parts if role not in chosen and not held(role)]


def _toolkit() -> types.SimpleNamespace:
    """What a family's part-file resolver (``PartFiles.resolve``) builds its Checkpoint with; handed in, so that a family
    module never imports this module, which imports the families."""
    return types.SimpleNamespace(Checkpoint=Checkpoint, WeightsError=WeightsError, closest_config=closest_config,
                                 require_known_layout=require_known_layout, get_config=get_config, compare_shapes=compare_shapes,
                                 model_shapes=model_shapes, variant_owner=_variant_owner, pick_variant=pick_variant,
                                 gather_sources=gather_sources, resolve_parts=resolve_parts, missing_parts=missing_parts)

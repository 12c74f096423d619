"""The few ComfyUI services the nodes use, each optional.

Inside ComfyUI these are ``folder_paths``, ``comfy.utils.ProgressBar`` and ``comfy.model_management``.
Without ComfyUI (the CLI, the tests, a script) the same nodes import and run: model folders come from
the ``EMO_MODELS_DIR`` environment variable (default ``./models``), outputs go to ``EMO_OUTPUT_DIR``
(default ``./output``), progress and interrupt are no-ops and everything runs on the best local device.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from ..emo_model.validation import InputError

try:  # ComfyUI present
    import folder_paths  # type: ignore
except ImportError:  # standalone
    folder_paths = None

try:
    import comfy.model_management as model_management  # type: ignore
    import comfy.utils as comfy_utils  # type: ignore
except ImportError:
    model_management = None
    comfy_utils = None

MODEL_EXTENSIONS = {".safetensors", ".sft", ".pth", ".pt", ".bin", ".ckpt"}
IN_COMFYUI = folder_paths is not None


def summary_note(note: str) -> tuple[str, bool]:
    """A note as a node's summary shows it: of each ' · ' part, the what (up to its first '; '); the rest, what to
    do, is for ComfyUI's log. Returns (short, whether anything was left out)."""
    short = " · ".join(part.split("; ")[0] for part in note.split(" · "))
    return short, short != note


def models_dir() -> Path:
    if folder_paths is not None:
        return Path(folder_paths.models_dir)
    return Path(os.environ.get("EMO_MODELS_DIR", "models")).resolve()


def register_model_folders() -> None:
    """Register ``models/emo`` with ComfyUI (``vae`` and ``audio_encoders`` are core folders)."""
    if folder_paths is None:
        return
    path = os.path.join(folder_paths.models_dir, "emo")
    if "emo" in folder_paths.folder_names_and_paths:
        if path not in folder_paths.folder_names_and_paths["emo"][0]:
            folder_paths.add_model_folder_path("emo", path)
    else:
        folder_paths.folder_names_and_paths["emo"] = ([path], set(MODEL_EXTENSIONS))


def folder_paths_for(kind: str) -> list[Path]:
    """Every folder of a model kind ("emo", "vae", "audio_encoders")."""
    if folder_paths is not None:
        try:
            return [Path(p) for p in folder_paths.get_folder_paths(kind)]
        except KeyError:
            return []
    return [models_dir() / kind]


def _is_layout_folder(path: Path) -> bool:
    """A checkpoint that spans a folder: a diffusers / HF folder (config.json), several weight files (a family published
    in parts) or several diffusers model folders (a family published as sub-folders, each with its config.json)."""
    files = [p for p in path.iterdir() if p.is_file()]
    if any(p.name == "config.json" for p in files) or sum(p.suffix.lower() in MODEL_EXTENSIONS for p in files) >= 2:
        return True
    return sum((p / "config.json").is_file() for p in path.iterdir() if p.is_dir()) >= 2


def list_entries(kind: str, *, folders: bool) -> list[str]:
    """Model files of a kind (relative paths), and with ``folders`` the folders that hold one multi-file checkpoint.

    A family's part files, a diffusers VAE folder or a wav2vec2 folder is listed once, as ``name/``,
    and the files inside it are not listed separately; the loader tells the layouts apart by their tensors.
    """
    entries: set[str] = set()
    for root in folder_paths_for(kind):
        if not root.is_dir():
            continue
        layouts: list[Path] = []
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if any(part.startswith(".") for part in rel.parts) or any(l in path.parents for l in layouts):
                continue
            if folders and path.is_dir() and _is_layout_folder(path):
                layouts.append(path)
                entries.add(rel.as_posix() + "/")
            elif path.is_file() and path.suffix.lower() in MODEL_EXTENSIONS:
                entries.add(rel.as_posix())
    return sorted(entries)


def resolve(kind: str, name: str) -> Path:
    """A listed entry -> its full path; a clear error naming where it was looked for."""
    for root in folder_paths_for(kind):
        candidate = root / name.rstrip("/")
        if candidate.exists():
            return candidate
    where = ", ".join(str(p) for p in folder_paths_for(kind)) or f"models/{kind}"
    raise FileNotFoundError(f"{name!r} is not in {where}; put the file there (or refresh the node list)")


# ---- input checks shared by the nodes ------------------------------------------------------------------
# ComfyUI hands a node whatever the node before it made. Each check ends in one line (InputError, which ComfyUI
# shows on the node) or passes; none copies a whole batch (a video's IMAGE batch can be tens of GB).

IMAGE_OVERSHOOT = 0.5  # float IMAGE values up to this far outside 0..1 are resampling overshoot (clamped); beyond: refused
_IMAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8)


def _not_meta(tensor: torch.Tensor, label: str) -> None:
    if tensor.is_meta:
        raise InputError(f"{label} is on the 'meta' device: a tensor with a shape but no values (a failed or lazy upstream node); "
                         "fix the node that made it")


def _float_range(tensor: torch.Tensor) -> tuple[float, float]:
    """(min, max) of a floating-point tensor, read about 16 M values at a time along its first dimension; NaN if any is."""
    lo, hi = math.inf, -math.inf
    step = max(1, (1 << 24) // max(1, tensor[0].numel()))
    for start in range(0, tensor.shape[0], step):
        a, b = (float(v) for v in torch.aminmax(tensor[start : start + step]))
        if math.isnan(a) or math.isnan(b):
            return math.nan, math.nan
        lo, hi = min(lo, a), max(hi, b)
    return lo, hi


def check_image(images, *, label: str = "image", channels: tuple[int, ...] = (3,)) -> torch.Tensor:
    """An IMAGE input as ``[B, H, W, C]`` (a single ``[H, W, C]`` picture becomes a batch of one), or one line saying why not.

    Refused: anything but a tensor, an empty batch or picture, C not in ``channels``, the 'meta' device, dtypes other
    than float (0..1) and uint8 (0..255), NaN/inf, and float values more than :data:`IMAGE_OVERSHOOT` outside 0..1: a
    0-255 picture stored as floats cannot be told from a broken one for sure, and guessing would wash the video out
    or darken it silently, so the line says what to do. uint8 says its own scale and is read exactly (x / 255).
    Values within the overshoot (upscalers' ringing) are clamped to 0..1 when used. On any other device (a GPU) the
    batch is read where it is.
    """
    if not isinstance(images, torch.Tensor):
        raise InputError(f"{label} must be an IMAGE (a tensor [batch, height, width, 3]), got {type(images).__name__}")
    _not_meta(images, label)
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4:
        raise InputError(f"{label} must be an IMAGE shaped [batch, height, width, 3], got shape {list(images.shape)}")
    if images.shape[0] == 0:
        raise InputError(f"{label} is an empty batch (0 images): the node before it produced no picture; check that node's settings")
    if images.shape[1] == 0 or images.shape[2] == 0:
        raise InputError(f"{label} pictures are {images.shape[2]}x{images.shape[1]} px (empty); check the node that made them")
    if images.shape[3] not in channels:
        allowed = " or ".join(str(c) for c in channels)
        raise InputError(f"{label} has {images.shape[3]} colour channels (shape {list(images.shape)}); an IMAGE has {allowed}")
    if images.dtype not in _IMAGE_DTYPES:
        raise InputError(f"{label} holds {str(images.dtype).removeprefix('torch.')} values; an IMAGE holds float 0..1 (or uint8 0..255)")
    if images.dtype == torch.uint8:
        return images
    lo, hi = _float_range(images)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError(f"{label} holds NaN or infinite values (a failed upstream node); fix the node that made it")
    if lo < -IMAGE_OVERSHOOT or hi > 1 + IMAGE_OVERSHOOT:
        looks = " (these look like 0-255 values: divide them by 255 first)" if lo >= -IMAGE_OVERSHOOT and hi <= 255.5 else ""
        raise InputError(f"{label} values run from {lo:.4g} to {hi:.4g}, but an IMAGE holds 0..1{looks}; fix the node that made it")
    return images


def image_at(images: torch.Tensor, index: int = 0) -> torch.Tensor:
    """One picture of a checked IMAGE (:func:`check_image`) as float32 ``[H, W, 3]`` 0..1 on the CPU (grey repeated, alpha dropped)."""
    image = images[index].to("cpu")
    image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float().clamp(0.0, 1.0)
    if image.shape[-1] == 1:
        image = image.expand(*image.shape[:-1], 3)
    return image[..., :3].contiguous()


def image_batch(images, *, label: str = "image") -> torch.Tensor:
    """A whole IMAGE input, checked (:func:`check_image`), as float32 ``[B, H, W, 3]`` 0..1 on the CPU; for nodes that
    read every picture of the batch (it is a copy)."""
    images = check_image(images, label=label, channels=(1, 3, 4)).to("cpu")
    images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float().clamp(0.0, 1.0)
    if images.shape[-1] == 1:
        images = images.expand(*images.shape[:-1], 3)
    return images[..., :3].contiguous()


def check_mask(mask, *, label: str = "mask") -> torch.Tensor:
    """A MASK input ``[H, W]`` or ``[B, H, W]`` in 0..1 (bool too), or one line saying why not (as :func:`check_image`)."""
    if not isinstance(mask, torch.Tensor):
        raise InputError(f"{label} must be a MASK (a tensor [batch, height, width]), got {type(mask).__name__}")
    _not_meta(mask, label)
    if mask.dim() not in (2, 3) or 0 in mask.shape:
        raise InputError(f"{label} must be a MASK shaped [height, width] or [batch, height, width] (not empty), got {list(mask.shape)}")
    if mask.dtype == torch.bool:
        return mask
    if mask.dtype not in _IMAGE_DTYPES or mask.dtype == torch.uint8:
        raise InputError(f"{label} holds {str(mask.dtype).removeprefix('torch.')} values; a MASK holds float 0..1")
    lo, hi = _float_range(mask.reshape(-1, *mask.shape[-2:]))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError(f"{label} holds NaN or infinite values (a failed upstream node); fix the node that made it")
    if lo < -IMAGE_OVERSHOOT or hi > 1 + IMAGE_OVERSHOOT:
        raise InputError(f"{label} values run from {lo:.4g} to {hi:.4g}, but a MASK holds 0..1; fix the node that made it")
    return mask


def check_audio(audio, *, label: str = "audio") -> None:
    """An AUDIO input ``{"waveform": [batch, channels, samples], "sample_rate": int}``: the batch, the dtype, the device
    and finite samples (looked at 1 M samples at a time), or one line saying why not."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        got = sorted(audio) if isinstance(audio, dict) else type(audio).__name__
        raise InputError(f"{label} must be an AUDIO ({{'waveform': tensor [batch, channels, samples], 'sample_rate': int}}), got {got}")
    waveform, rate = audio["waveform"], audio["sample_rate"]
    if not isinstance(waveform, torch.Tensor) or waveform.dim() != 3:
        shape = list(waveform.shape) if isinstance(waveform, torch.Tensor) else type(waveform).__name__
        raise InputError(f"{label} waveform must be a tensor [batch, channels, samples], got {shape}")
    _not_meta(waveform, f"{label} waveform")
    if waveform.shape[0] == 0 or waveform.shape[1] == 0:
        raise InputError(f"{label} holds no clip (waveform shape {list(waveform.shape)}); check the node that made it")
    if not waveform.is_floating_point() or waveform.dtype not in _IMAGE_DTYPES:
        raise InputError(f"{label} waveform holds {str(waveform.dtype).removeprefix('torch.')} samples; AUDIO holds float -1..1")
    if isinstance(rate, bool) or not isinstance(rate, int) or not 1 <= rate <= 768_000:
        raise InputError(f"{label} sample_rate must be a whole number of Hz from 1 to 768000, got {rate!r}")
    clip = waveform[0].reshape(-1)
    for start in range(0, clip.numel(), 1 << 20):
        if not bool(torch.isfinite(clip[start : start + (1 << 20)]).all()):
            raise InputError(f"{label} holds NaN or infinite samples (a failed upstream node); fix the node that made it")


# control characters anywhere; on Windows also the characters its file names cannot hold
_FORBIDDEN_NAME = {chr(c) for c in range(32)} | {"\x7f"} | (set('<>:"|?*') if os.name == "nt" else set())


def check_prefix(prefix, *, default_stem: str, label: str = "filename_prefix") -> str:
    """A ``filename_prefix`` as ComfyUI's ``get_save_image_path`` gets it, or one line saying why it cannot be one.

    A trailing slash names a folder: ``'EMO/'`` becomes ``'EMO/<default_stem>'`` (core's own function would strip the
    slash and write ``EMO_00001_`` into the output root). ``'.'`` parts are dropped. Refused: a name that is empty
    then, ``'..'`` anywhere, an absolute path, control characters (and on Windows the characters its names cannot hold).
    """
    if not isinstance(prefix, str):
        raise InputError(f"{label} must be text, got {type(prefix).__name__}")
    text = prefix.strip()
    example = f"e.g. 'EMO/{default_stem}' (sub-folders allowed, never '..')"
    bad = sorted({repr(c)[1:-1] for c in text if c in _FORBIDDEN_NAME})
    if bad:
        raise InputError(f"{label} {prefix!r} contains {', '.join(bad)}, which a file name cannot hold; {example}")
    parts = text.replace("\\", "/").split("/")
    if text.startswith(("/", "\\")) or (len(parts[0]) == 2 and parts[0][1] == ":"):
        raise InputError(f"{label} {prefix!r} is an absolute path; it is a name inside the output folder, {example}")
    if ".." in parts:
        raise InputError(f"{label} {prefix!r} uses '..', which may point outside the output folder; {example}")
    if parts[-1] == "" and any(p not in ("", ".") for p in parts):  # 'EMO/': a folder; the files are named after the node
        parts[-1] = default_stem
    parts = [p for p in parts if p not in ("", ".")]
    if not parts:
        raise InputError(f"{label} {prefix!r} names no file; {example}")
    return "/".join(parts)


def output_directory() -> Path:
    if folder_paths is not None:
        return Path(folder_paths.get_output_directory())
    path = Path(os.environ.get("EMO_OUTPUT_DIR", "output")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_path(prefix: str, width: int, height: int) -> tuple[Path, str, int, str]:
    """(folder, file stem, counter, subfolder) for an output; refuses prefixes that leave the output folder.

    ``prefix`` has passed :func:`check_prefix`."""
    out = output_directory()
    if folder_paths is not None:
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, str(out), width, height)
        return Path(folder), filename, counter, subfolder
    full = (out / prefix).resolve()
    if os.path.commonpath([str(out), str(full)]) != str(out):
        raise InputError(f"filename_prefix {prefix!r} points outside the output folder; use a plain name or a sub-folder")
    folder, filename = full.parent, full.name
    folder.mkdir(parents=True, exist_ok=True)
    counter = 1 + max((_counter(p.name, filename) for p in folder.iterdir()), default=0)
    return folder, filename, counter, str(folder.relative_to(out)) if folder != out else ""


def _counter(name: str, stem: str) -> int:
    if not name.startswith(stem + "_"):
        return 0
    digits = name[len(stem) + 1 :].split("_")[0].split(".")[0]
    return int(digits) if digits.isdigit() else 0


def torch_device() -> torch.device:
    if model_management is not None:
        return model_management.get_torch_device()
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def offload_device() -> torch.device:
    if model_management is not None:
        return model_management.unet_offload_device()
    return torch.device("cpu")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "fp32":
        return torch.float32
    if name == "fp16":
        return torch.float16
    if name == "bf16":
        return torch.bfloat16
    if device.type == "cpu":
        return torch.float32
    if model_management is not None:
        if model_management.should_use_bf16(device):
            return torch.bfloat16
        if model_management.should_use_fp16(device):
            return torch.float16
        return torch.float32
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16


def free_memory_for(num_bytes: int, device: torch.device) -> None:
    """Ask ComfyUI to unload other models until ``num_bytes`` fit on ``device``."""
    if model_management is not None and device.type != "cpu":
        model_management.free_memory(num_bytes, device)


def soft_empty_cache() -> None:
    if model_management is not None:
        model_management.soft_empty_cache()


def interrupted() -> bool:
    return model_management is not None and model_management.processing_interrupted()


def raise_interrupt() -> None:
    """Raise ComfyUI's own interrupt exception (shown as "interrupted", not as an error)."""
    if model_management is not None:
        model_management.throw_exception_if_processing_interrupted()
    raise RuntimeError("interrupted")


class Progress:
    """ComfyUI's progress bar (with an optional preview image) or nothing."""

    def __init__(self, total: int, node_id: str | None = None):
        self.bar = comfy_utils.ProgressBar(total, node_id=node_id) if comfy_utils is not None else None
        self.total = total

    def set(self, value: int, preview=None) -> None:
        if self.bar is not None:
            self.bar.update_absolute(value, self.total, preview)
        self.value = value

    def preview(self, frame: torch.Tensor) -> None:
        """Show ``frame`` ([H, W, 3] float 0..1) as the node's live preview."""
        if self.bar is None:
            return
        from PIL import Image

        image = Image.fromarray((frame.clamp(0, 1) * 255).byte().cpu().numpy())
        # ComfyUI fits the preview into max_size x max_size, enlarging small frames too; at most the frame's
        # own size keeps the frontend's caption ("64 x 64") true to the video
        self.bar.update_absolute(getattr(self, "value", 0), self.total, ("JPEG", image, min(PREVIEW_MAX, max(image.size))))


PREVIEW_MAX = 512  # px: larger frames are shrunk for the live preview


class _Networks(torch.nn.Module):
    """A session's networks (EMO model, its VAE, its audio encoder) as one module: what ComfyUI's memory
    manager loads, unloads and counts, like core's models."""

    def __init__(self, session):
        super().__init__()
        self.emo = session.model
        vae = getattr(session.codec, "vae", None)
        if isinstance(vae, torch.nn.Module):  # a core VAE (vae_adapter.ComfyVAE) manages itself
            self.vae = vae
        encoder = getattr(session.audio_encoder, "model", None)
        if isinstance(encoder, torch.nn.Module):
            self.audio_encoder = encoder


def networks_of(session) -> _Networks:
    """The session's networks as a module whose class is named "EMO <family label>": ComfyUI's log names a model by
    its class ("Requested to load EMO <family label>")."""
    from ..emo_model.families import family_of

    fam = family_of(session.config)
    label = fam.label if fam is not None else session.config.name
    if label.startswith("EMO"):  # the paper's own family: the config's name says which ("EMO emo-tiny-demo")
        name = label if session.config.name.lower() == label.lower() else f"{label} {session.config.name}"
    else:
        name = f"EMO {label}"
    return type(name, (_Networks,), {"__module__": __name__})(session)


def comfy_patcher(session):
    """The ``ModelPatcher`` that registers this session's networks with ``comfy.model_management`` (one per
    EMO model, shared by sessions that reuse it); None outside ComfyUI."""
    if model_management is None:
        return None
    patcher = session.model.__dict__.get("_emo_comfy_patcher")
    if patcher is None:
        import comfy.model_patcher  # type: ignore

        patcher = comfy.model_patcher.ModelPatcher(networks_of(session), load_device=torch_device(), offload_device=offload_device())
        session.model.__dict__["_emo_comfy_patcher"] = patcher
    return patcher


class running_on:
    """Context manager: the session's networks on the run device for the block.

    In ComfyUI they are a ``ModelPatcher`` loaded with ``model_management.load_models_gpu``, asking for
    ``memory_required`` bytes of working memory on top of the weights (see ``emo_model.sampling.memory``): ComfyUI
    unloads other models until both fit, keeps EMO loaded between runs while memory allows (model cache),
    and "Unload models" / ``--lowvram`` pressure moves it back to the offload device; the next node call
    loads it again. The networks are always loaded whole (``force_full_load``): their layers are plain
    torch modules, which ComfyUI cannot stream weight by weight. Outside ComfyUI (CLI, tests) the networks
    move to the best local device for the block and back to the offload device after it.
    """

    def __init__(self, session, memory_required: int = 0):
        self.session = session
        self.memory_required = int(memory_required)
        self.device = torch_device()
        self.patcher = None

    def __enter__(self):
        self.patcher = comfy_patcher(self.session)
        if self.patcher is not None:
            model_management.load_models_gpu([self.patcher], memory_required=self.memory_required, force_full_load=True)
            self.session.device = torch.device(self.patcher.load_device)
            return self.session
        if self.device != self.session.device:
            self.session.to(self.device)
        return self.session

    def __exit__(self, *exc):
        if self.patcher is not None:  # ComfyUI decides when to unload
            return False
        offload = offload_device()
        if self.session.device != offload:
            self.session.to(offload)
            soft_empty_cache()
        return False

"""``python -m emo_model inspect`` and ``convert``: what checkpoint files hold; any of them -> one native file.

    python -m emo_model inspect pretrained_models/<family>/net.pth
    python -m emo_model inspect pretrained_weights/ --variant acc
    python -m emo_model convert pretrained_weights/ --out model.safetensors --dtype fp16

Bad input ends with a one-line ``error: ...`` on stderr and exit status 1 (no traceback; ``--debug`` shows it);
the output path is checked (suffix, folder exists and is writable, --force) before any checkpoint is read.
"""

from __future__ import annotations

import argparse
import errno
import os

import torch

from ... import validation
from ...families import FAMILIES, get_family
from ...weights.checkpoints import Checkpoint, inspect_checkpoint, variants
from ...weights.vae_files import load_bundled_vae
from ...weights.native import save_native

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

FORMATS = {
    "native": "native EMO .safetensors",
    "state-dict": "one state dict with EMOModel key names (a whole-model file)",
}


def format_label(ckpt: Checkpoint) -> str:
    return FORMATS.get(ckpt.format) or f"{get_family(ckpt.format).label} part files"


def _add_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="a checkpoint file, several part files, or a folder of them")
    parser.add_argument(
        "--variant",
        choices=variants(),
        default="standard",
        help="for families published in variants with the same keys: "
        + "; ".join(f"{name}: {what}" for fam in FAMILIES for name, what in fam.variants.items()),
    )
    parser.add_argument(
        "--family",
        choices=[fam.name for fam in FAMILIES],
        help="the family, when the tensors alone cannot say (two families that share a network; default: detected)",
    )


def _same_file(a, b) -> bool:
    """Whether two paths are one file by any name (a hard link, a symlink, another spelling of a case-insensitive disk)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def _size(num_bytes: int) -> str:
    size = float(num_bytes)
    for unit in ("B", "kB", "MB"):
        if size < 1000:
            return f"{size:.3g} {unit}"
        size /= 1000
    return f"{size:.3g} GB"


def describe(ckpt: Checkpoint) -> list[str]:
    """The lines ``inspect`` prints for a checkpoint."""
    preset, counts = ckpt.config.preset, ckpt.dtypes
    dtypes = ", ".join(f"{name} ({n})" if len(counts) > 1 else name for name, n in counts.most_common())
    modules = ", ".join(f"{name} {n}" for name, n in ckpt.module_counts.items())
    lines = [
        f"format      {format_label(ckpt)}",
        f"family      {ckpt.family}",
        f"config      {ckpt.config.name} ({preset.fps:g} fps, {preset.steps} steps, cfg {preset.cfg:g})",
        f"variant     {ckpt.variant}",
    ]
    lines += [f"file        {file.name}: {part} ({len(file.tensors)} tensors)" for part, file in ckpt.files.items()]
    lines += [f"ignored     {path.name}: {why}" for path, why in ckpt.ignored.items()]
    lines += [
        f"tensors     {len(ckpt.sources)}, {dtypes}",
        f"size        {ckpt.num_parameters:,} parameters, {_size(ckpt.num_bytes)}",
        f"modules     {modules}",
    ]
    if ckpt.bundled_vae:
        lines.append("vae         bundled (AutoencoderKL under vae.*)")
    values = ckpt.value_problem() if ckpt.complete else None
    if values is not None:
        lines.append("status      refused: " + values)
    elif ckpt.complete:
        lines.append("status      complete (every tensor matches the model, key and shape; every value finite)")
    else:
        lines.append("status      incomplete: " + ckpt.problem())
        lines += [f"  {line}" for line in ckpt.report.lines()]
    return lines


# ---- inspect -------------------------------------------------------------------------------------


def add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    _add_inputs(parser)


def run_inspect(args: argparse.Namespace) -> int:
    for path in args.paths:
        validation.check_input_path(path, label="PATH")
    ckpt = inspect_checkpoint(args.paths, variant=args.variant, family=args.family)  # WeightsError: one line from the CLI (--debug: traceback)
    lines = describe(ckpt)
    print("\n".join(lines))
    return 0 if lines[-1].startswith("status      complete") else 1


# ---- convert -------------------------------------------------------------------------------------


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    _add_inputs(parser)
    parser.add_argument("--out", required=True, help="the native .safetensors file to write")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), help="store floating-point tensors in this dtype (default: as they are)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def run_convert(args: argparse.Namespace) -> int:
    # the output first: a path that cannot be written costs nothing (the inputs are read after)
    out = validation.check_output_file(
        args.out, label="--out", suffixes=(".safetensors",), example="model.safetensors", overwrite=args.force, overwrite_flag="--force"
    )
    for path in args.paths:
        validation.check_input_path(path, label="PATH")
    ckpt = inspect_checkpoint(args.paths, variant=args.variant, family=args.family)  # WeightsError: one line from the CLI (--debug: traceback)
    if out.resolve() in {p.resolve() for p in ckpt.paths} or any(_same_file(out, p) for p in ckpt.paths):
        raise validation.InputError(f"--out {str(out)!r} is one of the inputs; write the native file elsewhere")
    dtype = DTYPES.get(args.dtype)
    model = ckpt.load(device="cpu", dtype=dtype)
    vae = load_bundled_vae(ckpt.files["model"], dtype=dtype) if ckpt.bundled_vae else None
    sources = ", ".join(sorted(f.name for f in ckpt.files.values()))
    from safetensors import SafetensorError

    try:  # save_native writes a hidden partial file and renames it: a failed write leaves no file and an existing --out as it was
        save_native(model, out, metadata={"emo_source": sources}, vae=vae)
    except (OSError, SafetensorError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else validation.first_line(exc)
        full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC or "No space left" in str(exc)
        hint = f"free {_size(ckpt.num_bytes)} or more on that disk, or pick another path" if full else "pick another path"
        raise validation.InputError(f"cannot write --out {str(out)!r}: {why}; {hint}") from exc
    stored = args.dtype or ", ".join(ckpt.dtypes)
    bundled = " + its VAE" if vae is not None else ""
    print(f"wrote {out}: {ckpt.config.name} ({ckpt.family}){bundled}, {len(ckpt.sources)} tensors, {stored}, from {sources}")
    return 0

"""``emo download FAMILY``: fetch the published files a family needs into ComfyUI's model folders.

    emo download FAMILY --models ComfyUI/models         # model, VAE and audio encoder, sizes announced first
    emo download FAMILY --optional --dry-run            # what would come, with the optional extras, fetching nothing

The family module names the files (``Family.downloads``); :mod:`emo_model.weights.hub` plans, verifies and fetches them.
Files already in place and matching the published checksum are skipped; one that differs is left as it is unless
``--overwrite``; an interrupted download resumes on the next run. Bad input ends with one ``error: ...`` line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ...families import FAMILIES, Family


def downloadable() -> list[Family]:
    return [fam for fam in FAMILIES if fam.downloads]


def choices_text() -> str:
    return ", ".join(fam.name for fam in downloadable())


def pick_family(name: str | None) -> Family:
    """The family a user named (its name or label, any case, or a prefix only one family's name starts with)."""
    if not name:
        from ..cli import prog_name

        example = f"{prog_name()} download {downloadable()[0].name}"
        raise SystemExit(f"error: name the family to download: {choices_text()} (e.g. `{example}`)")
    text = name.strip().lower()
    exact = [fam for fam in downloadable() if text in (fam.name, fam.label.lower())]
    prefix = [fam for fam in downloadable() if fam.name.startswith(text)]
    if exact or len(prefix) == 1:
        return (exact or prefix)[0]
    unpublished = [fam for fam in FAMILIES if not fam.downloads and text in (fam.name, fam.label.lower())]
    if unpublished:
        raise SystemExit(f"error: {unpublished[0].label} has no published weights to download (train one: docs/training.md); "
                         f"families to download: {choices_text()}")
    raise SystemExit(f"error: unknown family {name!r}; choose one of: {choices_text()}")


def default_models_dir() -> Path:
    return Path(os.environ.get("EMO_MODELS_DIR", "models"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("family", nargs="?", metavar="FAMILY", help=f"the family whose files to fetch: {choices_text()}")
    parser.add_argument("--models", type=Path, default=None, metavar="DIR",
                        help="ComfyUI's models folder (files go to DIR/emo, DIR/vae, DIR/audio_encoders); "
                             "default: $EMO_MODELS_DIR or ./models")
    parser.add_argument("--optional", action="store_true", help="also the family's optional files (listed either way)")
    parser.add_argument("--dry-run", action="store_true", help="announce the files and sizes, download nothing")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files that are there but differ from the published ones (default: leave them)")


STATES = {"present": "there, verified", "differs": "there but differs from the published file: left as it is"}


def run(args: argparse.Namespace) -> int:
    from ...weights import hub

    fam = pick_family(args.family)
    models = (args.models or default_models_dir()).expanduser().resolve()
    if models.exists() and not models.is_dir():
        raise SystemExit(f"error: --models {models} is a file; give ComfyUI's models folder")
    wanted = [f for f in fam.downloads if args.optional or not f.optional]
    there = sum((models / f.folder / f.dest).is_file() for f in fam.downloads)
    if there:  # hashing gigabytes takes a while: say what is going on
        print(f"checking {there} files already in {models} against the published checksums ...", flush=True)
    try:
        planned = hub.plan(fam.downloads, models)
        chosen = [p for p in planned if p.file in wanted]
        print(f"{fam.label}: {len(chosen)} files from {endpoint_repos(chosen)} into {models}")
        width = max(len(p.label) for p in planned)
        for p in planned:
            if p.file not in wanted:
                what = f"optional, --optional: {p.file.optional}"
            elif p.state in STATES:
                what = STATES[p.state]
            elif p.state == "partial":
                what = f"from {p.file.repo} ({p.file.path}), resumes: {hub.size_text(p.partial)} already there"
            else:
                what = f"from {p.file.repo} ({p.file.path})"
            print(f"  {p.label:<{width}}  {hub.size_text(p.size):>9}  {what}")
        todo = sum(p.todo for p in chosen)
        print(f"to download: {hub.size_text(todo)}" + (" (nothing: every file is there)" if not todo else ""))
        if args.dry_run:
            return 0
        if not todo and not (args.overwrite and any(p.state == "differs" for p in chosen)):
            return _differs(chosen, args.overwrite)
        hub.check_space(chosen)
        fetched = hub.fetch(chosen, overwrite=args.overwrite,
                            on_file=lambda p: print(f"fetching {p.label} ({hub.size_text(p.size)})", flush=True))
    except hub.DownloadError as exc:
        raise SystemExit(f"error: {exc}") from None
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    print(f"done: {len(fetched)} files, {hub.size_text(sum(p.size for p in fetched))}, verified against the published checksums")
    return _differs(chosen, args.overwrite)


def endpoint_repos(planned) -> str:
    repos = list(dict.fromkeys(p.file.repo for p in planned))
    return ", ".join(repos)


def _differs(chosen, overwrite: bool) -> int:
    left = [p.label for p in chosen if p.state == "differs" and not overwrite]
    if left:
        raise SystemExit(f"error: {', '.join(left)} differ{'s' if len(left) == 1 else ''} from the published files and "
                         "were left as they are; move them away and run again, or add --overwrite")
    return 0

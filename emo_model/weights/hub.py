"""Fetching published model files from the Hugging Face Hub into ComfyUI's model folders.

Only ``emo download`` and the loader node's opt-in "download missing files" switch call this; nothing else in the
package touches the network. What a family needs is data on its module (``Family.downloads``: repository, file,
model folder, place in it); this module plans (sizes and checksums from the Hub's ``paths-info``), checks what is
already there, and downloads the rest through ``huggingface_hub``:

* every file goes to ``<models>/<folder>/<dest>``; it is written as ``<dest>.incomplete`` next to its place and
  renamed only once complete and verified, so an interrupted download resumes (an HTTP Range request) and a
  half-written file is never where the loader looks;
* verified: the Hub publishes the sha256 of every LFS file (the weights) and the git blob id of the others
  (configs); a download that does not match is removed and reported in one line;
* a file already in place is never replaced unless asked (``overwrite``): one that matches is skipped, one that
  differs is reported;
* the Hub address is ``HF_ENDPOINT`` when set (read at call time; the tests point it at a loopback server), a token
  from ``huggingface-cli login`` / ``HF_TOKEN`` is sent as ``huggingface_hub`` does (gated repositories).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..families.base import HubFile

INCOMPLETE = ".incomplete"
NETWORK_MODULES = ("huggingface_hub", "httpx", "httpx2", "httpcore", "requests", "urllib3")
CHUNK = 1 << 20


class DownloadError(Exception):
    """A download that cannot go on: one line saying what and what to do."""


@dataclass
class Planned:
    """One file of a download plan: what the Hub says about it and what is at its place."""

    file: HubFile
    target: Path
    size: int
    sha256: str | None  # LFS files: the sha256 the Hub publishes
    blob_id: str  # git blob id (sha1 of the git object): the check for the small, non-LFS files
    state: str = "missing"  # missing | partial | present | differs
    partial: int = 0  # bytes of an interrupted download already there

    @property
    def todo(self) -> int:
        """Bytes still to fetch."""
        return self.size - self.partial if self.state in ("missing", "partial") else 0

    @property
    def label(self) -> str:
        return f"{self.file.folder}/{self.file.dest}"


def size_text(num_bytes: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if num_bytes < 1000 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.3g} {unit}"
        num_bytes /= 1000
    return ""


def endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _network_error(exc: BaseException) -> bool:
    """An error of the Hub, of the connection or of the disk (not an interrupt, nor a bug of ours)."""
    module = type(exc).__module__ or ""
    return isinstance(exc, OSError) or module.split(".")[0] in NETWORK_MODULES


def _hub_error(exc: Exception, what: str) -> DownloadError:
    """A Hub / network error as one line."""
    from huggingface_hub import utils as errors  # (the error classes are exported there by 0.2x and later releases)

    if isinstance(exc, errors.GatedRepoError):
        return DownloadError(f"{what} is gated: accept its terms on {endpoint()}/{what} and log in (`hf auth login`), "
                             "then run again")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return DownloadError(f"{what} is not on {endpoint()} (or needs a login: `hf auth login`)")
    if isinstance(exc, errors.RevisionNotFoundError):
        return DownloadError(f"{what}: the revision is not on {endpoint()}")
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return DownloadError(f"{what}: HF_HUB_OFFLINE is set; unset it to download")
    text = " ".join(str(exc).split()) or type(exc).__name__
    if type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore") and "Timeout" not in type(exc).__name__:
        return DownloadError(f"{what}: could not reach {endpoint()} ({text[:200]}); check the connection (or HF_ENDPOINT), "
                             "then run again")
    return DownloadError(f"{what}: the download from {endpoint()} failed: {text[:300]}; run again to resume")


def plan(files: Iterable[HubFile], models_dir: Path, *, check: str = "hash", token: str | None = None) -> list[Planned]:
    """Each file's size and checksum from the Hub (one ``paths-info`` call per repository) and its state on disk.

    ``check``: how a file already at its place is checked: "hash" (its sha256 / blob id, as published), "size"
    (its size only: quick, for the node) or "none" (present = done)."""
    from huggingface_hub import HfApi

    files = list(dict.fromkeys(files))  # a component two families share is listed once
    api = HfApi(endpoint=endpoint(), token=token)
    by_repo: dict[tuple[str, str], list[HubFile]] = {}
    for f in files:
        by_repo.setdefault((f.repo, f.revision), []).append(f)
    info: dict[tuple[str, str, str], object] = {}
    for (repo, revision), group in by_repo.items():
        try:
            entries = api.get_paths_info(repo, [f.path for f in group], revision=revision)
        except Exception as exc:
            if not _network_error(exc):
                raise
            raise _hub_error(exc, repo) from exc
        for entry in entries:
            info[(repo, revision, entry.path)] = entry
    out = []
    for f in files:
        entry = info.get((f.repo, f.revision, f.path))
        if entry is None or not hasattr(entry, "size"):
            raise DownloadError(f"{f.repo} has no file {f.path} at {f.revision} any more; "
                                "this version of the pack cannot fetch it")
        lfs = getattr(entry, "lfs", None)
        planned = Planned(f, models_dir / f.folder / f.dest, int(entry.size), lfs.sha256 if lfs else None, entry.blob_id)
        _state(planned, check)
        out.append(planned)
    return out


def _state(p: Planned, check: str) -> None:
    partial = p.target.with_name(p.target.name + INCOMPLETE)
    if p.target.is_file():
        if check == "none":
            p.state = "present"
        elif p.target.stat().st_size != p.size:
            p.state = "differs"
        else:
            p.state = "present" if check == "size" or verify(p, p.target) else "differs"
    elif partial.is_file() and 0 < partial.stat().st_size < p.size:
        p.state, p.partial = "partial", partial.stat().st_size
    else:
        p.state, p.partial = "missing", 0


def verify(p: Planned, path: Path) -> bool:
    """Whether ``path`` holds exactly the published file (sha256 for LFS files, the git blob id for the others)."""
    if p.sha256:
        digest = hashlib.sha256()
    else:
        digest = hashlib.sha1()  # noqa: S324 - git's object id, not a security check
        digest.update(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest() == (p.sha256 or p.blob_id)


def check_space(planned: list[Planned]) -> None:
    """Refuse up front when a destination's disk cannot hold what is to be fetched."""
    need: dict[Path, int] = {}
    for p in planned:
        if p.todo:
            root = next(parent for parent in [p.target, *p.target.parents] if parent.exists())
            need[root] = need.get(root, 0) + p.todo
    for root, todo in need.items():
        free = shutil.disk_usage(root).free
        if todo > free:
            raise DownloadError(f"{size_text(todo)} to download but only {size_text(free)} free on {root}; "
                                "free some space or use --models on another disk")


def _progress_class(on_bytes: Callable[[int], None] | None, quiet: bool):
    from huggingface_hub.utils import tqdm as hub_tqdm

    class Bar(hub_tqdm):
        def __init__(self, *args, **kwargs):
            if quiet:
                kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            if on_bytes is not None and n:
                on_bytes(int(n))
            return super().update(n)

    return Bar


def fetch(
    planned: list[Planned],
    *,
    overwrite: bool = False,
    on_bytes: Callable[[int], None] | None = None,
    on_file: Callable[[Planned], None] | None = None,
    quiet: bool = False,
    token: str | None = None,
) -> list[Planned]:
    """Download every missing / partial file of the plan (and, with ``overwrite``, those that differ); return those
    fetched. ``on_bytes(n)``: n more bytes arrived (a resumed file counts its bytes already there once, at its start);
    ``on_file(p)``: before each file; ``quiet``: no tqdm bar (the node has ComfyUI's)."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers(token=token, library_name="comfyui-emo")
    bar = _progress_class(on_bytes, quiet)
    accepts = inspect.signature(http_get).parameters
    done = []
    for p in planned:
        if p.state == "present" or (p.state == "differs" and not overwrite):
            continue
        if on_file is not None:
            on_file(p)
        p.target.parent.mkdir(parents=True, exist_ok=True)
        partial = p.target.with_name(p.target.name + INCOMPLETE)
        resume = partial.stat().st_size if partial.is_file() else 0
        if resume >= p.size:  # a leftover as long as the file, or longer: not a prefix we can trust
            partial.unlink()
            resume = 0
        if resume and on_bytes is not None:
            on_bytes(resume)
        url = hf_hub_url(p.file.repo, p.file.path, revision=p.file.revision, endpoint=endpoint())
        try:
            with partial.open("ab") as fh:
                if "tqdm_class" in accepts:  # huggingface_hub 1.x / 2.x
                    http_get(url, fh, resume_size=resume, headers=headers, expected_size=p.size,
                             displayed_filename=p.file.dest, tqdm_class=bar)
                elif "_tqdm_bar" in accepts:  # 0.2x (what transformers 4.x pins): the bar is handed over made
                    with bar(total=p.size, initial=resume, unit="B", unit_scale=True, desc=p.file.dest) as progress:
                        http_get(url, fh, resume_size=resume, headers=headers, expected_size=p.size, _tqdm_bar=progress)
                else:
                    http_get(url, fh, resume_size=resume, headers=headers, expected_size=p.size)
        except Exception as exc:  # the partial file stays for the next run to resume
            if not _network_error(exc):
                raise
            raise _hub_error(exc, f"{p.file.repo}/{p.file.path}") from exc
        if not verify(p, partial):
            partial.unlink()
            kind = f"sha256 {p.sha256}" if p.sha256 else f"git blob id {p.blob_id}"
            raise DownloadError(
                f"{p.label}: the downloaded file does not match the {kind} that {p.file.repo} publishes for "
                f"{p.file.path}; it was removed: run the download again"
            )
        if p.target.exists() and not overwrite:  # appeared meanwhile: the user's, never replaced unasked
            raise DownloadError(f"{p.target} appeared during the download; the verified copy is {partial}")
        os.replace(partial, p.target)
        p.state = "present"
        done.append(p)
    return done

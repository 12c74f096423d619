"""Set up (or reuse) the project's virtual environment for the demo or the tests; `make demo` / `make test` call it.

    python3 scripts/setup_env.py demo    # .venv with torch + this package (`emo` command)
    python3 scripts/setup_env.py test    # the same + requirements-dev.txt (pytest, training extras)

Idempotent: a stamp in the venv records what was installed (a hash of pyproject.toml and the
requirements files, per profile); a second run with nothing changed installs nothing.

torch is installed only when the venv has none (ComfyUI-style installs bring their own build):
``TORCH_SPEC`` (default ``torch``) is what pip installs, ``TORCH_INDEX_URL`` the index it uses. Without
``TORCH_INDEX_URL``, a Linux machine with no NVIDIA or AMD GPU gets PyTorch's CPU wheel index (about
200 MB instead of several GB of CUDA wheels), unless pip is configured with its own index (then that
configuration is respected) or that index cannot be reached (then pip's default). ``TORCH_INDEX_URL=``
(empty) always means "pip's default".

The torch that ends up installed is pinned for every later install, so nothing replaces it. The pin is
the version pip itself records for the installed distribution (its metadata), never ``torch.__version__``:
the two differ for some builds (PyPI's CUDA wheels of torch 2.15 record ``2.15.0`` while
``torch.__version__`` says ``2.15.0+cu132``), and a pin pip cannot match ends in ``ResolutionImpossible``.
``EMO_VENV`` moves the venv (default ``.venv`` in the repository).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import urllib.request
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PROFILES = {
    "demo": [],
    "test": ["-r", "requirements-dev.txt"],
}
STAMPED = ["pyproject.toml", "requirements.txt", "requirements-dev.txt", "requirements-train.txt"]


def say(msg: str) -> None:
    print(f"[setup] {msg}", flush=True)


def venv_python(venv_dir: Path) -> Path:
    return venv_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(cmd: list[str]) -> None:
    say(" ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], cwd=ROOT, check=True)


def ensure_venv(venv_dir: Path) -> Path:
    python = venv_python(venv_dir)
    if not python.exists():
        say(f"creating {venv_dir}")
        try:
            venv.EnvBuilder(with_pip=True).create(venv_dir)
        except Exception as exc:  # e.g. Debian without python3-venv
            sys.exit(f"error: could not create {venv_dir} ({exc}); on Debian/Ubuntu install python3-venv, then run again")
    return python


# Run by the venv's python: the version pip knows for the installed torch distribution (what a pin must
# match), else "?<torch.__version__>" for a torch that imports but has no distribution metadata, else nothing.
_TORCH_VERSION = """
import importlib.metadata as md
try:
    print(md.version("torch"))
except md.PackageNotFoundError:
    try:
        import torch
    except ImportError:
        pass
    else:
        print("?" + torch.__version__)
"""


def installed_torch(python: Path) -> str | None:
    """The installed torch's version as pip knows it (e.g. ``2.15.0``, ``2.13.0+cpu``), or None when there is none."""
    out = subprocess.run([str(python), "-c", _TORCH_VERSION], capture_output=True, text=True, check=False)
    version = out.stdout.strip() if out.returncode == 0 else ""
    if version.startswith("?"):  # importable, but pip cannot see it (no dist-info): pin its public version
        version = version[1:].split("+", 1)[0]
        say(f"torch {version} imports but has no package metadata; pinning torch=={version} for pip")
    return version or None


def torch_constraint(version: str) -> str:
    """The constraint line that keeps the installed torch: its metadata version, which pip matches exactly."""
    return f"torch=={version}\n"


def pip_has_own_index(python: Path) -> bool:
    if os.environ.get("PIP_INDEX_URL") or os.environ.get("PIP_EXTRA_INDEX_URL"):
        return True
    out = subprocess.run([str(python), "-m", "pip", "config", "list"], capture_output=True, text=True, check=False)
    return "index-url" in out.stdout


def has_gpu() -> bool:
    return bool(shutil.which("nvidia-smi") or shutil.which("rocm-smi") or Path("/dev/nvidiactl").exists() or Path("/dev/kfd").exists())


def reachable(url: str, timeout: float = 10.0) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except Exception:
        return False


def torch_index(python: Path) -> str | None:
    if "TORCH_INDEX_URL" in os.environ:
        return os.environ["TORCH_INDEX_URL"] or None
    if sys.platform.startswith("linux") and not has_gpu() and not pip_has_own_index(python):
        if reachable(CPU_INDEX + "/torch/"):
            return CPU_INDEX
        say(f"{CPU_INDEX} cannot be reached from here: using pip's default index for torch")
    return None


def ensure_torch(python: Path) -> str:
    version = installed_torch(python)
    if version is None:
        spec = os.environ.get("TORCH_SPEC", "torch")
        index = torch_index(python)
        say(f"no torch in the venv: installing {spec}" + (f" from {index} (CPU build; set TORCH_INDEX_URL= for pip's default)" if index else ""))
        run([python, "-m", "pip", "install", spec, *(["--index-url", index] if index else [])])
        version = installed_torch(python)
        if version is None:
            sys.exit("error: torch did not install; set TORCH_SPEC / TORCH_INDEX_URL for your machine and run again")
    return version


def fingerprint(profile: str, torch_version: str) -> str:
    h = hashlib.sha256(f"{profile}\n{torch_version}\n".encode())
    for name in STAMPED:
        path = ROOT / name
        h.update(name.encode() + b"\0" + (path.read_bytes() if path.exists() else b"") + b"\0")
    return h.hexdigest()


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in PROFILES:
        print(f"usage: python3 {Path(__file__).relative_to(ROOT)} {{{'|'.join(PROFILES)}}}", file=sys.stderr)
        return 2
    profile = argv[0]
    venv_dir = Path(os.environ.get("EMO_VENV", ROOT / ".venv"))
    if not venv_dir.is_absolute():
        venv_dir = ROOT / venv_dir
    python = ensure_venv(venv_dir)
    torch_version = ensure_torch(python)
    stamp = venv_dir / f".emo-setup-{profile}"
    wanted = fingerprint(profile, torch_version)
    if stamp.exists() and stamp.read_text().strip() == wanted:
        say(f"{venv_dir.name} is up to date for '{profile}' (torch {torch_version})")
        return 0
    constraint = venv_dir / "torch-constraint.txt"  # keep the torch that is there
    constraint.write_text(torch_constraint(torch_version))
    run([python, "-m", "pip", "install", "-c", constraint, "-e", ".", *PROFILES[profile]])
    stamp.write_text(wanted + "\n")
    say(f"{venv_dir.name} is ready for '{profile}' (torch {torch_version})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

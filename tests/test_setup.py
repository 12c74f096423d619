"""A clone that stands alone: the README's two commands, the package metadata, CI running the README's command."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HANG_GUARD_S, ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

SKIP_DIRS = {".git", ".venv", "__pycache__", "node_modules", ".ruff_cache", "build", "dist", "output", "outputs"}
TEXT_SUFFIXES = {".py", ".md", ".txt", ".toml", ".json", ".js", ".yaml", ".yml", ".cfg", ".ini", ".sh", ""}


def _repo_text_files():
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix in TEXT_SUFFIXES and path.stat().st_size < 2_000_000:
            yield rel, path.read_text(errors="replace")


def _two_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirements(name: str) -> list[str]:
    out = []
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-r "):
            out.append(line)
    return out


def _includes(name: str) -> list[str]:
    return [line.split()[1] for line in (ROOT / name).read_text().splitlines() if line.startswith("-r ")]


def _names(reqs) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in reqs}


# ---- nothing outside the clone ------------------------------------------------------------------------


def test_no_file_refers_to_the_sibling_shared_folder():
    needles = ["../" + "shared", "EMO_" + "SHARED_DIR", "/work/" + "shared"]
    hiding = Path(".ci/run")  # CI names it only to hide it while the suite runs
    hits = [f"{rel}: {n}" for rel, text in _repo_text_files() for n in needles if n in text and rel != hiding]
    assert hits == []


def test_test_data_is_in_the_repo_and_small():
    data = ROOT / "tests" / "data"
    files = [p for p in data.rglob("*") if p.is_file()]
    assert (data / "README.md").is_file() and (data / "comfy_object_info.json.gz").is_file()
    assert len(list((data / "checkpoint_layouts").glob("*.json.gz"))) >= 10
    assert sum(p.stat().st_size for p in files) < 500_000


# ---- the two commands ---------------------------------------------------------------------------------


def test_readme_quick_start_is_exactly_two_commands_a_demo_and_the_tests():
    demo, test = _two_commands()
    assert (demo, test) == ("make demo", "make test")


def test_makefile_targets_set_up_then_run_the_demo_and_the_suite():
    make = (ROOT / "Makefile").read_text()

    def recipe(target: str) -> list[str]:
        m = re.search(rf"^{target}:([^\n]*)\n((?:\t[^\n]*\n)+)", make, re.MULTILINE)
        assert m, f"no target {target}"
        return [m.group(1).strip(), *[line.strip() for line in m.group(2).splitlines()]]

    assert recipe("demo")[0] == "setup-demo" and recipe("demo")[-1].endswith("/emo generate")
    assert recipe("test")[0] == "setup-test" and recipe("test")[-1].endswith("/python -m pytest -q")
    assert recipe("setup-demo")[-1].endswith("scripts/setup_env.py demo")
    assert recipe("setup-test")[-1].endswith("scripts/setup_env.py test")


def test_ci_runs_the_readme_test_command_exactly():
    test = _two_commands()[1]
    ci = (ROOT / ".ci" / "run").read_text()
    calls = [line.strip() for line in ci.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert f"without_shared {test}" in calls  # the command itself, run with the sibling folder hidden
    assert "unshare --mount" in ci and "node validate" in ci


# ---- requirements and package metadata ----------------------------------------------------------------


def test_requirements_split_demo_users_get_no_test_train_or_registry_tools():
    runtime = _names(_requirements("requirements.txt"))
    assert "torch" not in runtime
    assert not runtime & {"pytest", "comfy-cli", "ruff", "tensorboard", "scenedetect", "pyyaml"}
    assert "scikit-image" in runtime  # the LBP face detector (README, "Face detection")
    assert _includes("requirements-dev.txt") == ["requirements.txt", "requirements-train.txt"]
    dev = _names(_requirements("requirements-dev.txt"))
    assert {"pytest", "scikit-image", "soundfile"} <= dev and not dev & {"comfy-cli", "ruff", "torch"}


def test_pyproject_mirrors_the_requirement_files():
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    assert sorted(project["dependencies"]) == sorted(_requirements("requirements.txt"))
    assert sorted(extras["train"]) == sorted(_requirements("requirements-train.txt")), "requirements-train.txt and [train] differ"
    assert sorted(extras["test"]) == sorted(_requirements("requirements-dev.txt")), "add new test tools to both requirements-dev.txt and [test]"
    assert _names(extras["registry"]) == {"comfy-cli", "ruff"}
    assert not any("torch" == n for n in _names(project["dependencies"]))


def test_pyproject_is_a_registry_entry_and_an_installable_package_with_the_emo_command():
    meta = _pyproject()
    project, comfy = meta["project"], meta["tool"]["comfy"]
    assert project["name"] and re.fullmatch(r"\d+\.\d+\.\d+", project["version"]) and project["description"]
    assert (ROOT / project["license"]["file"]).is_file() and (ROOT / project["readme"]).is_file()
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["Icon"].startswith("https://")
    assert meta["build-system"]["build-backend"] == "setuptools.build_meta"
    module, func = project["scripts"]["emo"].split(":")
    assert module == "emo_model.app.cli"
    from emo_model.app import cli

    assert callable(getattr(cli, func))


def test_cli_names_itself_as_called(monkeypatch):
    from emo_model.app import cli

    monkeypatch.setattr(sys, "argv", ["/somewhere/.venv/bin/emo", "generate"])
    assert cli.prog_name() == "emo" and cli.build_parser().prog == "emo"
    monkeypatch.setattr(sys, "argv", [str(ROOT / "emo_model" / "__main__.py")])
    assert cli.prog_name() == "python -m emo_model"


# ---- scripts/setup_env.py -----------------------------------------------------------------------------


@pytest.fixture
def setup_env(monkeypatch):
    spec = importlib.util.spec_from_file_location("setup_env", ROOT / "scripts" / "setup_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for var in ("TORCH_SPEC", "TORCH_INDEX_URL", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "EMO_VENV"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(module, "reachable", lambda url: True)  # no network in tests
    return module


def test_torch_index_cpu_only_linux_gets_the_cpu_wheels_unless_pip_or_the_user_says_otherwise(setup_env, monkeypatch):
    python = Path(sys.executable)
    monkeypatch.setattr(setup_env.sys, "platform", "linux")
    monkeypatch.setattr(setup_env, "has_gpu", lambda: False)
    monkeypatch.setattr(setup_env, "pip_has_own_index", lambda p: False)
    assert setup_env.torch_index(python) == "https://download.pytorch.org/whl/cpu"
    monkeypatch.setattr(setup_env, "has_gpu", lambda: True)
    assert setup_env.torch_index(python) is None  # a GPU: pip's default (CUDA wheels)
    monkeypatch.setattr(setup_env, "has_gpu", lambda: False)
    monkeypatch.setattr(setup_env, "pip_has_own_index", lambda p: True)
    assert setup_env.torch_index(python) is None  # a configured mirror / local index is respected
    monkeypatch.setenv("TORCH_INDEX_URL", "https://example.invalid/whl/rocm")
    assert setup_env.torch_index(python) == "https://example.invalid/whl/rocm"
    monkeypatch.setenv("TORCH_INDEX_URL", "")
    assert setup_env.torch_index(python) is None
    monkeypatch.setattr(setup_env.sys, "platform", "darwin")
    monkeypatch.delenv("TORCH_INDEX_URL")
    monkeypatch.setattr(setup_env, "pip_has_own_index", lambda p: False)
    assert setup_env.torch_index(python) is None  # macOS wheels on PyPI are CPU/MPS already


def test_pip_index_configuration_is_detected_from_the_environment(setup_env, monkeypatch):
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///srv/wheels")
    assert setup_env.pip_has_own_index(Path(sys.executable))


def test_setup_is_idempotent_and_installs_torch_only_when_missing(setup_env, monkeypatch, tmp_path):
    venv_dir = tmp_path / "venv"
    python = venv_dir / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    monkeypatch.setenv("EMO_VENV", str(venv_dir))
    monkeypatch.setenv("TORCH_SPEC", "torch==9.9.9")
    monkeypatch.setenv("TORCH_INDEX_URL", "")
    state = {"torch": None}
    calls: list[list[str]] = []

    def fake_run(cmd):
        cmd = [str(c) for c in cmd]
        calls.append(cmd)
        if "torch==9.9.9" in cmd:
            state["torch"] = "9.9.9+cpu"

    monkeypatch.setattr(setup_env, "run", fake_run)
    monkeypatch.setattr(setup_env, "installed_torch", lambda p: state["torch"])

    assert setup_env.main(["test"]) == 0
    assert calls[0][-2:] == ["install", "torch==9.9.9"]  # no torch yet: the spec, nothing else
    assert calls[1][-6:] == ["-c", str(venv_dir / "torch-constraint.txt"), "-e", ".", "-r", "requirements-dev.txt"]
    assert (venv_dir / "torch-constraint.txt").read_text() == "torch==9.9.9+cpu\n"

    calls.clear()
    assert setup_env.main(["test"]) == 0
    assert calls == []  # nothing changed: nothing installed
    assert setup_env.main(["demo"]) == 0
    assert len(calls) == 1 and calls[0][-2:] == ["-e", "."]  # torch is there: only the package

    calls.clear()
    monkeypatch.setattr(setup_env, "fingerprint", lambda profile, version: "changed requirements")
    assert setup_env.main(["test"]) == 0
    assert len(calls) == 1 and "torch==9.9.9" not in calls[0]

    assert setup_env.main(["everything"]) == 2


def _fake_venv_python(tmp_path: Path, dist_version: str | None, module_version: str | None) -> Path:
    """A 'venv python' that sees only a fake torch: a dist-info with ``dist_version`` (what pip knows) and a
    module whose ``torch.__version__`` is ``module_version`` (either may be absent). No network, no real torch."""
    site = tmp_path / "site"
    site.mkdir(parents=True, exist_ok=True)
    if dist_version is not None:
        info = site / f"torch-{dist_version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {dist_version}\n")
        (info / "RECORD").write_text("")
        (info / "INSTALLER").write_text("pip\n")
    if module_version is not None:
        (site / "torch").mkdir()
        (site / "torch" / "__init__.py").write_text(f"__version__ = {module_version!r}\n")
    python = tmp_path / "bin" / "python"
    python.parent.mkdir(parents=True, exist_ok=True)
    # -S: no site-packages, so the real torch of the test environment stays out of sight
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{site}" exec "{sys.executable}" -S "$@"\n')
    python.chmod(0o755)
    return python


@pytest.mark.parametrize(
    "dist_version, module_version, pin",
    [
        ("2.15.0", "2.15.0+cu132", "torch==2.15.0"),  # PyPI's CUDA wheel: the label is only in torch.__version__
        ("2.13.0+cpu", "2.13.0+cpu", "torch==2.13.0+cpu"),  # PyTorch's CPU index: the label is in the metadata too
        ("2.5.1+cu124", "2.5.1+cu124", "torch==2.5.1+cu124"),  # PyTorch's CUDA index
        ("2.4.0", "2.4.0", "torch==2.4.0"),  # a plain build (macOS, an older PyPI wheel)
        (None, "2.6.0a0+git1234", "torch==2.6.0a0"),  # imports, but pip has no record of it: its public version
    ],
)
def test_the_pin_is_the_version_pip_knows_for_the_installed_torch(setup_env, tmp_path, dist_version, module_version, pin):
    python = _fake_venv_python(tmp_path, dist_version, module_version)
    assert setup_env.torch_constraint(setup_env.installed_torch(python)) == pin + "\n"


def test_no_torch_in_the_venv_means_none(setup_env, tmp_path):
    assert setup_env.installed_torch(_fake_venv_python(tmp_path, None, None)) is None


@pytest.mark.parametrize("label_in_pin, satisfied", [(False, True), (True, False)])
def test_pip_accepts_the_pin_for_a_cuda_wheel_whose_metadata_has_no_local_label(tmp_path, label_in_pin, satisfied):
    """The reported failure, with pip itself and no network: the installed distribution says 2.15.0; a pin of
    torch.__version__ (2.15.0+cu132) is ResolutionImpossible, the metadata version is already satisfied."""
    _fake_venv_python(tmp_path, "2.15.0", "2.15.0+cu132")
    constraint = tmp_path / "c.txt"
    constraint.write_text("torch==2.15.0+cu132\n" if label_in_pin else "torch==2.15.0\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""}
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps", "-c", str(constraint), "torch"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=HANG_GUARD_S, check=False)
    if satisfied:
        assert out.returncode == 0 and "already satisfied: torch" in out.stdout, out.stdout + out.stderr
    else:
        assert out.returncode != 0 and "ResolutionImpossible" in out.stderr, out.stdout + out.stderr


def test_an_unreachable_cpu_index_falls_back_to_pips_default(setup_env, monkeypatch):
    monkeypatch.setattr(setup_env.sys, "platform", "linux")
    monkeypatch.setattr(setup_env, "has_gpu", lambda: False)
    monkeypatch.setattr(setup_env, "pip_has_own_index", lambda p: False)
    seen = []
    monkeypatch.setattr(setup_env, "reachable", lambda url: seen.append(url) or False)
    assert setup_env.torch_index(Path(sys.executable)) is None
    assert seen == ["https://download.pytorch.org/whl/cpu/torch/"]


def test_ci_runs_the_opencv_5_face_test():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "EMO_REGISTRY_TESTS=1 .venv/bin/python -m pytest -q -rs tests/test_face.py -k opencv_5" in ci


def test_ci_sets_no_torch_override():
    ci = (ROOT / ".ci" / "run").read_text()
    code = [line.split("#", 1)[0] for line in ci.splitlines()]
    assert not any("TORCH_SPEC" in line or "TORCH_INDEX_URL" in line for line in code)

"""The house (docs/house.md): a folder per concept, no import cycles, modules of a readable size, each with its statement.

The import graph is read from the source with ``ast`` (no import runs): every ``import`` / ``from ... import`` at any
depth counts, function-level ones included (a cycle hidden inside a function is still a cycle of concepts), and
``TYPE_CHECKING`` imports too. ``from package import name`` counts as an import of ``package.name`` when that is a
module, else of ``package``. The families package loads its family modules by name (``families.MODULES``); those
edges are added from that list.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("emo_model", "nodes")
MAX_LINES = 630  # "about 600": the largest module today is the trainer (622); a data table may be listed in LONG_TABLES
LONG_TABLES: set[str] = set()
# emo_model's top level: one entry per concept (docs/house.md); a new entry means a new concept and a line in that page
TOP_LEVEL = {"__init__.py", "__main__.py", "app", "audio", "configs.py", "demo", "demo_assets", "face", "families",
             "model_configs", "network", "pose", "sampling", "train", "validation.py", "video_io", "weights"}


def _modules(root: Path = ROOT) -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


def _targets(module: str, path: Path, node: ast.AST, mods: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        found = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            full = ".".join(base + ([node.module] if node.module else []))
        else:
            full = node.module or ""
        found = [f"{full}.{a.name}" if f"{full}.{a.name}" in mods else full for a in node.names]
    out = []
    for name in found:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.append(name)
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    mods = _modules(root)
    graph = {m: set() for m in mods}
    for module, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module].update(_targets(module, path, node, mods))
    families = root / "emo_model" / "families" / "__init__.py"
    for node in ast.walk(ast.parse(families.read_text(encoding="utf-8"))):  # MODULES = ("emo", "hallo", ...)
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "MODULES" for t in node.targets):
            graph["emo_model.families"].update(f"emo_model.families.{m}" for m in ast.literal_eval(node.value))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_check_sees_a_cycle_and_function_level_imports(tmp_path):
    """A planted cycle (one side importing inside a function) is found: the check can fail."""
    pkg = tmp_path / "emo_model"
    (pkg / "families").mkdir(parents=True)
    (tmp_path / "nodes").mkdir()
    (pkg / "__init__.py").write_text('"""x."""\n')
    (pkg / "families" / "__init__.py").write_text('"""x."""\nMODULES = ("one",)\n')
    (pkg / "families" / "one.py").write_text('"""x."""\nfrom ..b import f\n')
    (pkg / "a.py").write_text('"""x."""\nfrom .b import f\n')
    (pkg / "b.py").write_text('"""x."""\ndef f():\n    from .a import g\n')
    (tmp_path / "nodes" / "__init__.py").write_text('"""x."""\nfrom ..emo_model import a\n')
    graph = import_graph(tmp_path)
    assert cycles(graph) == [["emo_model.a", "emo_model.b"]]
    assert "emo_model.families.one" in graph["emo_model.families"] and "emo_model.a" in graph["nodes"]


def test_shared_types_sit_below_the_blocks_that_use_them():
    """ForwardContext and ReferenceBank live in network/context.py, which imports no other network module."""
    graph = import_graph()
    assert not {m for m in graph["emo_model.network.context"] if m.startswith("emo_model.network")}
    users = [m for m, deps in graph.items() if "emo_model.network.context" in deps]
    assert {"emo_model.network.attention", "emo_model.network.unet_blocks", "emo_model.network.audio_layers"} <= set(users)


@pytest.mark.parametrize("path", sorted(_modules().values()), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_states_its_concept_and_stays_readable(path):
    text = path.read_text(encoding="utf-8")
    doc = ast.get_docstring(ast.parse(text))
    assert doc and doc.splitlines()[0].strip(), f"{path.relative_to(ROOT)}: starts with no one-line statement of its concept"
    lines = text.count("\n")
    name = str(path.relative_to(ROOT))
    assert lines <= MAX_LINES or name in LONG_TABLES, f"{name}: {lines} lines (the house keeps modules to about 600)"


def test_emo_model_top_level_is_a_folder_per_concept():
    entries = {p.name for p in (ROOT / "emo_model").iterdir() if p.name != "__pycache__" and not p.name.endswith(".egg-info")}
    assert entries == TOP_LEVEL, f"new: {sorted(entries - TOP_LEVEL)}; gone: {sorted(TOP_LEVEL - entries)} (docs/house.md)"
    house = (ROOT / "docs" / "house.md").read_text(encoding="utf-8")
    for entry in sorted(TOP_LEVEL - {"__init__.py", "__main__.py"}):
        assert f"`{entry.removesuffix('.py')}" in house, f"docs/house.md does not describe emo_model/{entry}"

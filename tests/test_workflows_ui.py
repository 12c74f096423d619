"""Example workflows an artist can follow without the README: a Note naming every file, a layout that fits the screen.

The frontend draws nodes as plain boxes below about 60% zoom ("low quality" rendering), restores the
saved view (``extra.ds``: screen = (canvas + offset) * scale) when a workflow opens, and overlays a top
menu bar and a side toolbar on the canvas. A 1400x900 window (what our real-frontend check uses) leaves
about x 50..1380, y 45..870 of it for the graph.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import ROOT

UI_WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
NOTES = {"Note", "MarkdownNote"}
SCREEN = (50, 45, 1380, 870)  # usable x0, y0, x1, y1 in CSS px of a 1400x900 window
TITLE = 30  # canvas units of title bar above a node's pos
LOW_QUALITY_BELOW = 0.6
# widget -> folder the file goes in (Load EMO Model's combos; Load Image / Load Audio read ComfyUI/input)
FOLDERS = {
    ("LoadEMOModel", 0): "ComfyUI/models/emo/",
    ("LoadEMOModel", 1): "ComfyUI/models/vae/",
    ("LoadEMOModel", 2): "ComfyUI/models/audio_encoders/",
    ("LoadImage", 0): "ComfyUI/input/",
    ("LoadAudio", 0): "ComfyUI/input/",
}
BUILT_IN = ("emo-tiny-demo (built in, CPU)", "(bundled with the model / not needed)", "(none: log-mel demo, or use a core AUDIO_ENCODER_OUTPUT)")


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _note(wf: dict) -> str:
    notes = [n for n in wf["nodes"] if n["type"] in NOTES]
    assert len(notes) == 1, "one Note per graph"
    return notes[0]["widgets_values"][0]


def test_there_are_ui_workflows():
    assert len(UI_WORKFLOWS) >= 4


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_note_names_every_file_its_folder_and_where_it_comes_from(path):
    wf = _load(path)
    note = _note(wf)
    needed = []
    for node in wf["nodes"]:
        for (node_type, index), folder in FOLDERS.items():
            if node["type"] == node_type and node["widgets_values"][index] not in BUILT_IN:
                needed.append((node["widgets_values"][index], folder))
    if not needed:  # the demo: says that nothing is needed and where the shipped files are
        assert "nothing to download" in note.lower() and "emo_model/demo_assets/" in note
        return
    lines = note.splitlines()
    for value, folder in needed:
        line = next((line for line in lines if line.startswith(f"- {value} -> ")), None)
        assert line, f"the Note does not name {value}"
        assert folder in line, f"{value}: the Note does not say it goes in {folder}"
        if folder != "ComfyUI/input/":
            assert re.search(r"From (Hugging Face: \S+/\S+|your own)", line), f"{value}: the Note does not say where it comes from"


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_opens_zoomed_in_enough_with_every_node_on_screen_and_none_overlapping(path):
    wf = _load(path)
    ds = wf["extra"]["ds"]
    scale, (ox, oy) = ds["scale"], ds["offset"]
    assert scale >= LOW_QUALITY_BELOW + 0.05, "nodes would be drawn as blank boxes"
    boxes = []
    for node in wf["nodes"]:
        (x, y), (w, h) = node["pos"], node["size"]
        x0, y0, x1, y1 = (x + ox) * scale, (y - TITLE + oy) * scale, (x + w + ox) * scale, (y + h + oy) * scale
        assert SCREEN[0] <= x0 and x1 <= SCREEN[2] and SCREEN[1] <= y0 and y1 <= SCREEN[3], f"{node['type']} is off-screen at load"
        boxes.append((node["type"], x, y - TITLE, x + w, y + h))
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            overlap = min(a[3], b[3]) > max(a[1], b[1]) and min(a[4], b[4]) > max(a[2], b[2])
            assert not overlap, f"{a[0]} overlaps {b[0]}"


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_node_ids_and_bookkeeping(path):
    wf = _load(path)
    ids = [n["id"] for n in wf["nodes"]]
    assert len(ids) == len(set(ids)) and wf["last_node_id"] >= max(ids)
    assert sorted(n["order"] for n in wf["nodes"]) == list(range(len(ids)))

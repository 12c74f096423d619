"""Example workflows an artist can follow without the README: a Note naming every file, a layout that fits the screen.

The frontend draws nodes as plain boxes below about 60% zoom ("low quality" rendering) and restores the
saved view (``extra.ds``) when a workflow opens. The geometry below was measured in ComfyUI's real
frontend (comfyui-frontend-package 1.27.10, the one ComfyUI v0.3.64 pins) in a 1400x900 headless Chromium
window: the graph canvas starts right of the 40 px side toolbar and below the 40 px menu bar, so a canvas
point lands on screen at ``CANVAS_ORIGIN + (point + offset) * scale``; the workflow tabs cover the canvas
down to y 77, and the minimap and the zoom toolbar sit in its bottom-right corner. After a run, nodes grow
(summaries, previews; ``GROWS_AFTER_RUN``, measured there at test size): the layout leaves them that room.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import ROOT

UI_WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
NOTES = {"Note", "MarkdownNote"}
CANVAS_ORIGIN = (40, 40)  # CSS px: the canvas element's top-left corner in the 1400x900 window
SCREEN = (50, 85, 1390, 890)  # usable x0, y0, x1, y1 in CSS px: below the workflow tabs, 10 px from the edges
OVERLAYS = {"minimap": (1106, 634, 1356, 834), "zoom toolbar": (1077, 839, 1384, 884)}  # CSS px, over the canvas
TITLE = 30  # canvas units of title bar above a node's pos
# canvas units a node grows by when a run shows its summary / preview (LoadEMOModel's 3-line preset summary,
# the Hallo reference note's 4 lines, the sampler's live preview, the videos' players), with some slack; the sampler: +35 for its optional pose input row.
# Re-measured (real frontend, every workflow run at test size): the sampler grows by up to 350 (EchoMimic v2's pose line,
# V-Express's keypoint line: 336), MEMO's by 378; EMO Video Combine's player for a square video by 342; Load EMO Model by up to 112
GROWS_AFTER_RUN = {"LoadEMOModel": 112, "EMOAudioEncode": 95, "EMOReferenceEncode": 125, "EMOSampler": 355,
                   "EMOVideoCombine": 345, "SaveVideo": 150, "EMOFaceMask": 95}  # Face Mask: its 1-2 line detector summary (measured with the crop output)
# and by more where the summary is longer: MEMO's sampler says how the emotion was chosen (2 more lines)
MORE_GROWTH = {("emo_memo_speech.json", "EMOSampler"): 25}
TITLE_CHAR = 7.5  # canvas units per title character (upper bound of the 14 px title font); + 30 for the dot and padding
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
        if folder.startswith("ComfyUI/models/"):  # the list entry is the path inside the folder: exactly there
            assert f"-> {folder}{value}" in line, f"{value}: the Note names another place than {folder}{value}"
        if folder != "ComfyUI/input/":
            assert re.search(r"From (Hugging Face: \S+/\S+|your own)", line), f"{value}: the Note does not say where it comes from"


GENERIC_NAMES = {"config.json", "config.yaml", "model.pt", "model.safetensors", "diffusion_pytorch_model.safetensors"}


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_note_names_every_file_the_family_publishes_optional_ones_too(path):
    """The family's downloads (emo_model/families/<family>.py): every file, optional extras included (the vocal
    separator, the face analysis models, the _acc variant, the emotion classifier), is named in the Note with where
    it goes (a file with a generic name by its folder)."""
    from emo_model.families import FAMILIES

    wf = _load(path)
    model = next(n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "LoadEMOModel")
    family = next((f for f in FAMILIES if f.downloads and model.split("/")[0] in {d.dest.split("/")[0] for d in f.downloads
                                                                                  if d.folder == "emo" and not d.optional}), None)
    if family is None:  # the demo and the EMO checkpoint: nothing published
        return
    note = _note(wf)
    for d in family.downloads:
        name = Path(d.dest)
        needle = name.parent.name if name.name in GENERIC_NAMES and d.optional else (name.name if d.optional else d.dest.split("/")[0])
        assert needle in note, f"{path.name}: the Note does not name {d.folder}/{d.dest} ({d.optional or 'needed'})"
        if d.folder == "face_analysis":
            assert "ComfyUI/models/face_analysis/models/" in note


def _intersects(a, b) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
@pytest.mark.parametrize("after_run", [False, True], ids=["at_load", "after_run"])
def test_opens_zoomed_in_enough_with_every_node_on_screen_and_none_overlapping(path, after_run):
    wf = _load(path)
    ds = wf["extra"]["ds"]
    scale, (ox, oy) = ds["scale"], ds["offset"]
    assert scale >= LOW_QUALITY_BELOW + 0.05, "nodes would be drawn as blank boxes"
    boxes = []
    for node in wf["nodes"]:
        (x, y), (w, h) = node["pos"], node["size"]
        h += (GROWS_AFTER_RUN.get(node["type"], 0) + MORE_GROWTH.get((path.name, node["type"]), 0)) if after_run else 0
        screen = (
            CANVAS_ORIGIN[0] + (x + ox) * scale, CANVAS_ORIGIN[1] + (y - TITLE + oy) * scale,
            CANVAS_ORIGIN[0] + (x + w + ox) * scale, CANVAS_ORIGIN[1] + (y + h + oy) * scale,
        )
        where = "after a run" if after_run else "at load"
        assert SCREEN[0] <= screen[0] and screen[2] <= SCREEN[2] and SCREEN[1] <= screen[1] and screen[3] <= SCREEN[3], f"{node['type']} is off-screen {where}"
        for overlay, box in OVERLAYS.items():
            assert not _intersects(screen, box), f"{node['type']} is under the {overlay} {where}"
        boxes.append((node["type"], (x, y - TITLE, x + w, y + h)))
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1 :]:
            assert not _intersects(box_a, box_b), f"{a} overlaps {b}" + (" once they have grown after a run" if after_run else "")


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_titles_fit_their_nodes(path):
    """The frontend widens a node to fit its title: a long title pushed EMO Face Mask over EMO Sampler."""
    for node in _load(path)["nodes"]:
        title = node.get("title") or ""
        assert TITLE_CHAR * len(title) + 30 <= node["size"][0], f"{title!r} is too long for its {node['size'][0]}-wide node"


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_node_ids_and_bookkeeping(path):
    wf = _load(path)
    ids = [n["id"] for n in wf["nodes"]]
    assert len(ids) == len(set(ids)) and wf["last_node_id"] >= max(ids)
    assert sorted(n["order"] for n in wf["nodes"]) == list(range(len(ids)))

"""Open the example workflows in ComfyUI's real frontend (headless Chromium) and report what an artist would see.

Opt-in, for a maintainer: needs a running ComfyUI with this pack loaded, Chromium, and Playwright
(``pip install playwright``; no browser download: the system Chromium is used). Nothing here is imported
by the pack or the tests. Every request that does not go to the ComfyUI server is aborted.

    python tools/frontend_check.py OUT_DIR workflows/*.json [--url http://127.0.0.1:8188] [--run] [--tiny]

For each workflow: loads it (``app.loadGraphData``) in a 1400x900 window, then checks that every node
type is registered, no node is flagged with errors, every node is inside the visible canvas (not under the
workflow tabs, the minimap or the zoom toolbar) and at least as big as its content (title, widgets), every
widget/input/output of an EMO node has a tooltip, combo values are in their lists, and the hover tooltip
shows; prints the preset labels; compares the frontend's API conversion with ``workflows/api/<name>.api.json``.
``--run`` queues it from the page (``--tiny``: face crop 64 px, 2 steps) and reports validation errors,
the run status, the nodes' summaries, the resolved preset labels and any overlap of grown nodes.
Screenshots and a JSON report per workflow go to OUT_DIR. Exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from pathlib import Path

OURS = {"LoadEMOModel", "EMOAudioEncode", "EMOFaceMask", "EMOReferenceEncode", "EMOSampler", "EMOVideoCombine", "EMODemoSample", "EMOPasteBack", "EMOFaceKeypoints"}
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
# DOM overlays (CSS selectors) that hide the canvas under them
OVERLAYS = ".workflow-tabs-container, .minimap-main-container, .p-buttongroup"

INSPECT = r"""(overlaySel) => {
  const canvasEl = app.canvas.canvas, cr = canvasEl.getBoundingClientRect(), ds = app.canvas.ds;
  const overlays = Array.from(document.querySelectorAll(overlaySel)).map(e => e.getBoundingClientRect()).filter(r => r.width && r.height);
  // litegraph's drawTruncatingText (frontend 1.27): the label is squeezed away first when label + gap + value do
  // not fit in the widget (margin 15, left padding 5, right padding 20); null for widgets drawn otherwise
  const ctx = document.createElement('canvas').getContext('2d');
  ctx.font = app.canvas.inner_text_font;
  const labelFits = (n, w) => {
    if (!['combo', 'text', 'string'].includes(w.type) || typeof w.value !== 'string') return null;
    const total = n.size[0] - 2 * 15 - 5 - 2 * 15 - 20;
    return ctx.measureText(w.label || w.name).width + 5 + ctx.measureText(String(w.value)).width <= total;
  };
  const hit = (b, r) => Math.min(b[2], r.right) > Math.max(b[0], r.left) && Math.min(b[3], r.bottom) > Math.max(b[1], r.top);
  return app.graph._nodes.map(n => {
    const [x, y] = ds.convertOffsetToCanvas([n.pos[0], n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT]);
    const [x1, y1] = ds.convertOffsetToCanvas([n.pos[0] + n.size[0], n.pos[1] + n.size[1]]);
    const box = [x + cr.left, y + cr.top, x1 + cr.left, y1 + cr.top].map(Math.round);
    const d = n.constructor.nodeData || {};
    return {id: n.id, type: n.type, title: n.title, has_errors: !!n.has_errors, box,
      inside: box[0] >= cr.left && box[1] >= cr.top && box[2] <= cr.right && box[3] <= cr.bottom,
      under_overlay: overlays.some(r => hit(box, r)),
      size: Array.from(n.size).map(Math.round), min_size: Array.from(n.computeSize ? n.computeSize() : n.size).map(Math.round),
      missing: !(n.type in LiteGraph.registered_node_types),
      widgets: (n.widgets || []).map(w => ({name: w.name, label: w.label ?? null,
        value: (typeof w.value === 'object' ? null : w.value), label_fits: labelFits(n, w),
        tooltip: !!(d.inputs?.[w.name]?.tooltip || w.tooltip),
        value_in_list: Array.isArray(w.options?.values) ? w.options.values.includes(w.value) : null})),
      inputs: (n.inputs || []).map(i => ({name: i.name, tooltip: !!d.inputs?.[i.name]?.tooltip})),
      outputs: (n.outputs || []).map((o, k) => ({name: o.name, tooltip: !!d.outputs?.[k]?.tooltip}))};
  });
}"""


# EMO Video Combine's own player (web/js/emo.js): present, inside its node, loaded and playing
PLAYERS = r"""() => {
  const cr = app.canvas.canvas.getBoundingClientRect(), ds = app.canvas.ds;
  return app.graph._nodes.filter(n => n.type === 'EMOVideoCombine').map(n => {
    const w = n.widgets?.find(w => w.name === 'emo_video');
    if (!w) return {id: n.id, player: false};
    const [x, y] = ds.convertOffsetToCanvas([n.pos[0], n.pos[1]]);
    const [x1, y1] = ds.convertOffsetToCanvas([n.pos[0] + n.size[0], n.pos[1] + n.size[1]]);
    const r = w.video.getBoundingClientRect();
    return {id: n.id, player: true, src: w.video.currentSrc, ready: w.video.readyState, paused: w.video.paused,
      width: w.video.videoWidth, height: w.video.videoHeight,
      inside: r.width > 0 && r.left >= x + cr.left - 2 && r.top >= y + cr.top - 2 && r.right <= x1 + cr.left + 2 && r.bottom <= y1 + cr.top + 2,
      rect: [r.left, r.top, r.right, r.bottom].map(Math.round), node: [x + cr.left, y + cr.top, x1 + cr.left, y1 + cr.top].map(Math.round)};
  });
}"""


def player_problems(players: list[dict], when: str, previous: dict | None = None) -> list[str]:
    out = []
    for p in players:
        name = f"EMOVideoCombine #{p['id']}"
        if not p["player"]:
            out.append(f"{name}: no player {when}")
            continue
        if not p["inside"]:
            out.append(f"{name}: the player is not inside its node {when} (player {p['rect']}, node {p['node']})")
        if p["ready"] < 2 or not p["width"]:
            out.append(f"{name}: the player has no picture {when} (readyState {p['ready']})")
        if p["paused"]:
            out.append(f"{name}: the player is paused (black until play) {when}")
        if previous and previous.get(p["id"]) == p["src"]:
            out.append(f"{name}: the player still shows the previous file {when}")
    return out


def problems_of(nodes: list[dict], when: str) -> list[str]:
    out = []
    for n in nodes:
        name = f"{n['type']} #{n['id']}"
        if n["missing"]:
            out.append(f"{name}: node type not registered (red node)")
        if n["has_errors"]:
            out.append(f"{name}: flagged with errors")
        if not n["inside"] or n["under_overlay"]:
            out.append(f"{name}: off-screen or under the tabs/minimap/toolbar {when} ({n['box']})")
        # after a run core's video preview asks for more than the frontend gives it (core Save Video): ours are checked
        # after the run too (EMO Video Combine grows to hold its own player)
        if (when == "at load" or n["type"] in OURS) and (n["size"][0] + 1 < n["min_size"][0] or n["size"][1] + 1 < n["min_size"][1]):
            out.append(f"{name}: smaller than its content {when} ({n['size']} < {n['min_size']})")
        out += [f"{name}.{w['name']}: its value hides its label (widen the node or shorten the value)"
                for w in n["widgets"] if w.get("label_fits") is False]
        if n["type"] in OURS:
            for w in n["widgets"]:
                if w["name"] not in ("control_after_generate", "emo_summary") and not w["tooltip"]:
                    out.append(f"{name}.{w['name']}: no tooltip")
                if w["value_in_list"] is False:
                    out.append(f"{name}.{w['name']} = {w['value']!r} is not in its list (file missing?)")
            out += [f"{name} input {i['name']}: no tooltip" for i in n["inputs"] if not i["tooltip"]]
            out += [f"{name} output {o['name']}: no tooltip" for o in n["outputs"] if not o["tooltip"]]
    for i, a in enumerate(nodes):
        for b in nodes[i + 1 :]:
            A, B = a["box"], b["box"]
            if min(A[2], B[2]) > max(A[0], B[0]) and min(A[3], B[3]) > max(A[1], B[1]):
                out.append(f"{a['type']} #{a['id']} overlaps {b['type']} #{b['id']} {when}")
    return out


def api_diff(prompt: dict, twin: dict) -> list:
    diffs = []
    for nid, node in prompt.items():
        t = twin.get(nid)
        if t is None or t["class_type"] != node["class_type"]:
            diffs.append((nid, node["class_type"], "not in the API twin"))
            continue
        diffs += [
            (nid, k, v, t["inputs"].get(k)) for k, v in node["inputs"].items() if k != "audioUI" and t["inputs"].get(k) != v
        ]
        diffs += [(nid, k, "missing from the frontend's prompt") for k in t["inputs"] if k not in node["inputs"]]
    diffs += [(nid, "node of the API twin not produced by the frontend") for nid in twin if nid not in prompt]
    return diffs


def wait_for_run(url: str, before: set, timeout: float = 1800, client: str | None = None) -> dict | None:
    """The first finished run queued after ``before`` (by the page ``client``: another client's prompts, e.g. API
    checks queued on the same server meanwhile, are not taken for ours)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = json.load(urllib.request.urlopen(url + "/history"))
        new = [k for k in history if k not in before and (client is None or history[k]["prompt"][3].get("client_id") == client)]
        if new and (history[new[0]]["status"].get("completed") or history[new[0]]["status"].get("status_str") == "error"):
            return history[new[0]]
        time.sleep(1)
    return None


def check(page, url: str, path: Path, out_dir: Path, run: bool, tiny: bool) -> dict:
    name = path.stem
    rep: dict = {"workflow": str(path), "page_errors": []}
    page.on("pageerror", lambda e: rep["page_errors"].append(str(e) + " @ " + " / ".join((getattr(e, "stack", "") or "").splitlines()[1:3]).strip()))
    page.goto(url + "/", wait_until="networkidle")
    page.wait_for_function("() => window.app && window.app.graph", timeout=90000)
    rep["frontend_version"] = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ || null")
    client = page.evaluate("async () => (await import('/scripts/api.js')).api.clientId ?? null")
    page.wait_for_timeout(1000)
    # the page's own start-up errors, before any workflow (frontend 1.27.10 throws one even without custom nodes)
    rep["page_errors_at_start"], rep["page_errors"] = rep["page_errors"], []
    page.evaluate("async (w) => await app.loadGraphData(w, true, true, null)", json.loads(path.read_text()))
    page.wait_for_timeout(2000)
    rep["nodes"] = page.evaluate(INSPECT, OVERLAYS)
    rep["problems"] = problems_of(rep["nodes"], "at load")
    rep["preset_labels"] = [w["label"] for n in rep["nodes"] for w in n["widgets"] if "(" in (w["label"] or "")]
    page.screenshot(path=str(out_dir / f"{name}_loaded.png"))
    # hover the sampler's steps widget (or the loader's model widget): the frontend's tooltip must appear
    spot = page.evaluate("""() => { const n = app.graph._nodes.find(n => n.type === 'EMOSampler') || app.graph._nodes.find(n => n.type === 'LoadEMOModel');
        if (!n) return null; const w = n.widgets.find(w => ['steps', 'model'].includes(w.name)); const cr = app.canvas.canvas.getBoundingClientRect();
        const [x, y] = app.canvas.ds.convertOffsetToCanvas([n.pos[0] + n.size[0] * 0.3, n.pos[1] + w.y + 10]); return [x + cr.left, y + cr.top]; }""")
    if spot:
        page.mouse.move(spot[0], spot[1])
        page.wait_for_timeout(300)
        page.mouse.move(spot[0] + 2, spot[1] + 1)
        page.wait_for_timeout(1500)
        rep["hover_tooltip"] = page.evaluate(
            "() => Array.from(document.querySelectorAll('.node-tooltip, .p-tooltip, [role=tooltip]')).map(e => e.innerText)"
        )
        if not rep["hover_tooltip"]:
            rep["problems"].append("no tooltip shown when hovering a widget")
        page.mouse.move(5, 5)
    twin = path.parent / "api" / f"{name}.api.json"
    prompt = rep["prompt"] = page.evaluate("async () => (await app.graphToPrompt()).output")  # the API twin to be
    if twin.is_file():
        rep["api_diff"] = api_diff(prompt, json.loads(twin.read_text()))
        rep["problems"] += [f"the frontend's prompt differs from {twin.name}: {d}" for d in rep["api_diff"]]
    if run:
        if tiny:
            page.evaluate("""() => { for (const n of app.graph._nodes) {
                if (n.type === 'EMOFaceMask') n.widgets.find(w => w.name === 'size').value = 64;
                if (n.type === 'EMOSampler') n.widgets.find(w => w.name === 'steps').value = 2; } }""")
        before = set(json.load(urllib.request.urlopen(url + "/history")))
        page.evaluate("async () => { try { await app.queuePrompt(0, 1) } catch (e) {} }")
        page.wait_for_timeout(1500)
        rep["node_errors"] = page.evaluate("() => app.lastNodeErrors ? JSON.parse(JSON.stringify(app.lastNodeErrors)) : null")
        entry = None if rep["node_errors"] else wait_for_run(url, before, client=client)
        rep["run_status"] = entry and entry["status"].get("status_str")
        if rep["run_status"] != "success":
            rep["problems"].append(f"run: {rep['run_status']} {rep['node_errors'] or (entry or {}).get('status')}")
        page.wait_for_timeout(2500)
        grown = page.evaluate(INSPECT, OVERLAYS)
        rep["sizes_after_run"] = {f"{n['type']} #{n['id']}": n["size"] for n in grown}  # for GROWS_AFTER_RUN (tests)
        rep["problems"] += [p for p in problems_of(grown, "after the run") if "tooltip" not in p and "not in its list" not in p]
        rep["summaries"] = page.evaluate("""() => app.graph._nodes.filter(n => n.widgets?.some(w => w.name === 'emo_summary'))
            .map(n => [n.type, n.widgets.find(w => w.name === 'emo_summary').element.textContent])""")
        rep["preset_labels_after_run"] = [w["label"] for n in grown for w in n["widgets"] if "(" in (w["label"] or "")]
        page.screenshot(path=str(out_dir / f"{name}_after_run.png"))
        if rep["run_status"] == "success":
            page.wait_for_timeout(2000)
            rep["players"] = page.evaluate(PLAYERS)
            rep["problems"] += player_problems(rep["players"], "after the run")
            # again with only Video Combine changed (its crf): the player must show the new file, every run
            before = set(json.load(urllib.request.urlopen(url + "/history")))
            page.evaluate("""async () => { for (const n of app.graph._nodes) if (n.type === 'EMOVideoCombine') {
                const w = n.widgets.find(w => w.name === 'crf'); w.value = w.value === 23 ? 24 : 23; }
                try { await app.queuePrompt(0, 1) } catch (e) {} }""")
            entry = wait_for_run(url, before, client=client)
            page.wait_for_timeout(4000)
            rep["players_second_run"] = page.evaluate(PLAYERS)
            rep["problems"] += player_problems(
                rep["players_second_run"], "after a second run", {p["id"]: p.get("src") for p in rep["players"]}
            )
            if not entry or entry["status"].get("status_str") != "success":
                rep["problems"].append(f"second run: {(entry or {}).get('status')}")
            page.screenshot(path=str(out_dir / f"{name}_second_run.png"))
            rep["problems"] += cancel_check(page, url, rep, client)
            page.screenshot(path=str(out_dir / f"{name}_cancelled.png"))
    return rep


def cancel_check(page, url: str, rep: dict, client: str | None = None) -> list[str]:
    """Queue again with a new seed, press Cancel once the sampler reports progress: the sampler must say so."""
    if not page.evaluate("() => app.graph._nodes.some(n => n.type === 'EMOSampler')"):
        return []
    before = set(json.load(urllib.request.urlopen(url + "/history")))
    page.evaluate("""async () => { window.__emoProgress = 0;
        const { api } = await import('/scripts/api.js');
        api.addEventListener('progress', () => { window.__emoProgress += 1; });
        for (const n of app.graph._nodes) if (n.type === 'EMOSampler') {
            const w = n.widgets.find(w => w.name === 'seed'); w.value = (w.value + 1) % 1000; }
        try { await app.queuePrompt(0, 1) } catch (e) {} }""")
    try:
        page.wait_for_function("() => window.__emoProgress > 0", timeout=600000)
    except Exception:
        return ["cancel: the sampler reported no progress"]
    page.evaluate("async () => { const { api } = await import('/scripts/api.js'); await api.interrupt(); }")
    entry = wait_for_run(url, before, timeout=600, client=client)
    page.wait_for_timeout(1500)
    rep["cancel_summary"] = page.evaluate("""() => app.graph._nodes.filter(n => n.type === 'EMOSampler')
        .map(n => n.widgets?.find(w => w.name === 'emo_summary')?.element.textContent ?? null)""")
    out = []
    if not entry or entry["status"].get("status_str") == "success":
        out.append(f"cancel: the run was not interrupted ({(entry or {}).get('status')})")
    out += [f"cancel: the sampler does not say it was cancelled ({text!r})" for text in rep["cancel_summary"]
            if not (text or "").startswith("Cancelled")]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("workflows", nargs="+", type=Path)
    ap.add_argument("--url", default="http://127.0.0.1:8188")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--run", action="store_true", help="queue each workflow from the page and wait for it")
    ap.add_argument("--tiny", action="store_true", help="with --run: face crop 64 px and 2 sampler steps")
    a = ap.parse_args()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("error: needs Playwright (pip install playwright) and a Chromium (e.g. apt-get install chromium)", file=sys.stderr)
        return 2
    a.out_dir.mkdir(parents=True, exist_ok=True)
    url = a.url.rstrip("/")
    # hide the first-run template dialog
    urllib.request.urlopen(
        urllib.request.Request(
            url + "/settings/Comfy.TutorialCompleted", data=b"true", method="POST", headers={"Content-Type": "application/json"}
        )
    ).read()
    failed = False
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=a.chromium, headless=True, args=FLAGS)
        for path in a.workflows:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.route("**/*", lambda r: r.continue_() if r.request.url.startswith((url, "data:", "blob:")) else r.abort())
            rep = check(page, url, path, a.out_dir, a.run, a.tiny)
            page.close()
            (a.out_dir / f"{path.stem}.json").write_text(json.dumps(rep, indent=1))
            failed |= bool(rep["problems"]) or bool(rep["page_errors"])
            print(
                f"== {path.name} (frontend {rep['frontend_version']}): "
                + ("OK" if not rep["problems"] else f"{len(rep['problems'])} problem(s)")
            )
            for line in rep["problems"]:
                print(f"   - {line}")
            print(f"   preset labels: {', '.join(rep['preset_labels']) or '-'}")
            if a.run:
                print(f"   run: {rep['run_status']}; labels after it: {', '.join(rep['preset_labels_after_run']) or '-'}")
            if rep["page_errors_at_start"]:
                print(f"   page errors at start-up, before the workflow (the frontend's own, or our extension's): {rep['page_errors_at_start']}")
            if rep["page_errors"]:
                print(f"   page errors with the workflow loaded: {rep['page_errors']}")
        browser.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

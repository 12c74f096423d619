// ComfyUI-EMO frontend extension.
// 1. After a run, a one-line summary on the node: Load EMO Model (the model's preset), Audio Encode
//    (frames, duration, fps), Reference Encode (the size used), Sampler (frames, clips x steps, cfg,
//    clip length, size), so a long run is easy to sanity-check at a glance.
// 2. Widgets whose 0 (or -1) means "the model's preset" say so in their label: "steps (preset)", and
//    once an EMO node has run, "steps (preset: 20)" (every EMO node sends the model's preset, so the
//    labels resolve even when Load EMO Model itself was cached and did not run). Saved values are
//    untouched, so old workflows load and mean the same.
// 3. EMO Video Combine's player: our own <video> inside the node (muted autoplay loop, so the first frame shows
//    at once; unmute in its controls), sized to the video's aspect and the node grown to hold it, replaced
//    after every run. The node sends it as "emo_video" rather than core's "images", whose preview floats
//    below the node and may not come back after a re-run (frontend 1.27).
// 4. A run cancelled while an EMO node works says so on that node ("Cancelled at 12/40; ..."), in the
//    same summary line, instead of the node just stopping.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

// node id -> widget -> [sentinel value, what it means]; a copy of nodes/presets.py (a test keeps them equal)
const PRESET_WIDGETS = /* PRESET_WIDGETS */ {
  "EMOSampler": {
    "steps": [0, "preset"],
    "cfg": [0.0, "preset"],
    "audio_cfg": [0.0, "same as cfg"],
    "frames_per_clip": [0, "preset"],
    "motion_frames": [-1, "preset"]
  },
  "EMOAudioEncode": { "fps": [0.0, "preset"] },
  "EMOReferenceEncode": { "size": [0, "preset"] }
} /* END PRESET_WIDGETS */;

const SUMMARY_NODES = new Set(["LoadEMOModel", "EMOSampler", "EMOAudioEncode", "EMOReferenceEncode", "EMOFaceMask", "EMOFaceKeypoints"]);

// the preset of the model loaded last (Load EMO Model's "emo_preset" output), null before any run
let loadedPreset = null;

const SUMMARY_FONT = "11px sans-serif";
const SUMMARY_LINE = 14; // px per line of SUMMARY_FONT
const SUMMARY_PAD = 12; // the element's own horizontal padding (6 + 6)
const DOM_MARGIN = 10; // the frontend insets a DOM widget's element by 10 px on every side
let measureCtx = null;

// lines the summary takes at this node width (word wrap as the browser does it), so the node grows to
// hold all of it instead of the text running over the node below
function summaryLines(text, width) {
  if (!text) return 1;
  measureCtx ??= document.createElement("canvas").getContext("2d");
  measureCtx.font = SUMMARY_FONT;
  const room = Math.max(40, width - 2 * DOM_MARGIN - SUMMARY_PAD - 4);
  let lines = 1;
  let line = "";
  for (const word of text.split(/\s+/)) {
    const next = line ? `${line} ${word}` : word;
    if (line && measureCtx.measureText(next).width > room) {
      lines += 1;
      line = word;
    } else {
      line = next;
    }
  }
  return lines;
}

function summaryWidget(node) {
  let widget = node.widgets?.find((w) => w.name === "emo_summary");
  if (!widget) {
    const el = document.createElement("div");
    el.style.cssText = `font: ${SUMMARY_FONT}; line-height: ${SUMMARY_LINE}px; opacity: 0.85; padding: 2px 6px; white-space: normal; overflow: hidden;`;
    widget = node.addDOMWidget("emo_summary", "emo_summary", el, { serialize: false, hideOnZoom: false });
    widget.computeSize = (width) => {
      const w = width ?? node.size[0];
      return [w, summaryLines(el.textContent, w) * SUMMARY_LINE + 4 + 2 * DOM_MARGIN];
    };
  }
  // keep the summary above any preview image the frontend appended (its caption sits below the image)
  const at = node.widgets.indexOf(widget);
  const preview = node.widgets.findIndex((w) => w.name?.startsWith("$$") || w.name === "emo_video");
  if (preview >= 0 && at > preview) {
    node.widgets.splice(at, 1);
    node.widgets.splice(preview, 0, widget);
  }
  return widget;
}

function presetLabel(name, value, sentinel, meaning) {
  if (Number(value) !== sentinel) return undefined; // a value of its own: the plain name
  const resolved = meaning === "preset" ? loadedPreset?.[name] : undefined;
  if (meaning === "preset" && resolved === null) return `${name} (preset: not used by this model)`;
  return resolved === undefined ? `${name} (${meaning})` : `${name} (${meaning}: ${resolved})`;
}

function updatePresetLabels(node) {
  const table = PRESET_WIDGETS[node.comfyClass ?? node.type];
  if (!table) return;
  for (const widget of node.widgets ?? []) {
    const entry = table[widget.name];
    if (!entry) continue;
    const label = presetLabel(widget.name, widget.value, entry[0], entry[1]);
    if (widget.label !== label) widget.label = label;
  }
  node.setDirtyCanvas?.(true, true);
}

function watchPresetWidgets(node) {
  const table = PRESET_WIDGETS[node.comfyClass ?? node.type];
  if (!table) return;
  for (const widget of node.widgets ?? []) {
    if (!table[widget.name] || widget.__emoWatched) continue;
    const callback = widget.callback;
    widget.callback = function () {
      const out = callback?.apply(this, arguments);
      updatePresetLabels(node);
      return out;
    };
    widget.__emoWatched = true;
  }
  updatePresetLabels(node);
}

function updateAllPresetLabels() {
  for (const node of app.graph?._nodes ?? []) updatePresetLabels(node);
}

function viewURL(item) {
  const params = new URLSearchParams({ filename: item.filename, subfolder: item.subfolder ?? "", type: item.type ?? "output" });
  params.set("rand", String(Math.random())); // a new file of the same name must not come from the cache
  return api.apiURL(`/view?${params}`);
}

function videoWidget(node) {
  let widget = node.widgets?.find((w) => w.name === "emo_video");
  if (widget) return widget;
  const el = document.createElement("div");
  el.style.cssText = "overflow: hidden;";
  const video = document.createElement("video");
  Object.assign(video, { controls: true, loop: true, muted: true, autoplay: true, playsInline: true, preload: "auto" });
  video.style.cssText = "width: 100%; height: 100%; object-fit: contain; display: block; background: #000;";
  el.appendChild(video);
  widget = node.addDOMWidget("emo_video", "emo_video", el, { serialize: false, hideOnZoom: false });
  widget.video = video;
  widget.aspect = 1; // height / width, known once the file's header is read
  widget.computeSize = (width) => {
    const w = width ?? node.size[0];
    return [w, Math.round((w - 2 * DOM_MARGIN) * widget.aspect) + 2 * DOM_MARGIN];
  };
  video.addEventListener("loadedmetadata", () => {
    if (video.videoWidth) widget.aspect = video.videoHeight / video.videoWidth;
    fitNode(node);
  });
  return widget;
}

function fitNode(node) {
  const need = node.computeSize?.();
  if (need && (need[1] > node.size[1] || need[1] < node.size[1] - 40)) node.setSize([node.size[0], need[1]]);
  node.setDirtyCanvas(true, true);
}

function showVideo(node, item) {
  const widget = videoWidget(node);
  widget.video.src = viewURL(item);
  widget.video.play?.().catch(() => {}); // muted autoplay is allowed; if not, the first frame still shows
  fitNode(node);
}

// EMO node types (the pack's ids), for the cancel notice
const EMO_NODE = (type) => type === "LoadEMOModel" || type?.startsWith("EMO");
// node id -> [value, max] of the last progress event, so a cancel can say how far the node got
const lastProgress = new Map();

// what each node leaves behind when cancelled (the nodes write nothing half-done)
const CANCEL_NOTE = {
  EMOVideoCombine: "no file was written",
  EMOSampler: "no frames were returned; press Queue to start again",
};

function showCancelled(detail) {
  const node = app.graph?.getNodeById?.(detail?.node_id);
  if (!node || !EMO_NODE(node.comfyClass ?? node.type)) return;
  const step = lastProgress.get(String(detail.node_id));
  const where = step ? ` at ${step[0]}/${step[1]}` : "";
  const note = CANCEL_NOTE[node.comfyClass ?? node.type] ?? "press Queue to run it again";
  setSummary(node, `Cancelled${where}: ${note}.`);
}

function setSummary(node, text) {
  summaryWidget(node).element.textContent = text;
  const need = node.computeSize?.();
  if (need && need[1] > node.size[1]) node.setSize([node.size[0], need[1]]); // grow to show every line
  node.setDirtyCanvas(true, true);
}

const VIDEO_NODES = new Set(["EMOVideoCombine"]);

api.addEventListener("progress", ({ detail }) => {
  if (detail?.node != null) lastProgress.set(String(detail.node), [detail.value, detail.max]);
});
api.addEventListener("execution_start", () => lastProgress.clear());
api.addEventListener("execution_interrupted", ({ detail }) => showCancelled(detail));

app.registerExtension({
  name: "ComfyUI-EMO.nodes",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (PRESET_WIDGETS[nodeData.name]) {
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const out = onNodeCreated?.apply(this, arguments);
        watchPresetWidgets(this);
        return out;
      };
      const onConfigure = nodeType.prototype.onConfigure;
      nodeType.prototype.onConfigure = function () {
        const out = onConfigure?.apply(this, arguments);
        updatePresetLabels(this); // saved values arrive after creation
        return out;
      };
    }
    if (!SUMMARY_NODES.has(nodeData.name) && !VIDEO_NODES.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.emo_summary?.[0];
      if (text) setSummary(this, text);
      const video = message?.emo_video?.[0];
      if (video) showVideo(this, video);
      const preset = message?.emo_preset?.[0];
      if (preset) {
        loadedPreset = preset;
        updateAllPresetLabels();
      }
    };
  },
});

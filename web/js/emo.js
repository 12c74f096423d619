// ComfyUI-EMO frontend extension.
// 1. After a run, a one-line summary on the node: Load EMO Model (the model's preset), Audio Encode
//    (frames, duration, fps), Reference Encode (the size used), Sampler (frames, clips x steps, cfg,
//    clip length, size), so a long run is easy to sanity-check at a glance.
// 2. Widgets whose 0 (or -1) means "the model's preset" say so in their label: "steps (preset)", and
//    once an EMO node has run, "steps (preset: 20)" (every EMO node sends the model's preset, so the
//    labels resolve even when Load EMO Model itself was cached and did not run). Saved values are
//    untouched, so old workflows load and mean the same. The video preview with sound is core's own.
import { app } from "../../../scripts/app.js";

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

const SUMMARY_NODES = new Set(["LoadEMOModel", "EMOSampler", "EMOAudioEncode", "EMOReferenceEncode"]);

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
  const preview = node.widgets.findIndex((w) => w.name?.startsWith("$$"));
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
    if (!SUMMARY_NODES.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.emo_summary?.[0];
      if (text) {
        summaryWidget(this).element.textContent = text;
        const need = this.computeSize?.();
        if (need && need[1] > this.size[1]) this.setSize([this.size[0], need[1]]); // grow to show every line
        this.setDirtyCanvas(true, true);
      }
      const preset = message?.emo_preset?.[0];
      if (preset) {
        loadedPreset = preset;
        updateAllPresetLabels();
      }
    };
  },
});

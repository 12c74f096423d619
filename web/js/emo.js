// ComfyUI-EMO frontend extension.
// 1. After a run, a one-line summary on the node: Load EMO Model (the model's preset), Audio Encode
//    (frames, duration, fps), Reference Encode (the size used), Sampler (frames, clips x steps, cfg,
//    clip length, size), so a long run is easy to sanity-check at a glance.
// 2. Widgets whose 0 (or -1) means "the model's preset" say so in their label: "steps (preset)", and
//    once Load EMO Model has run, "steps (preset: 20)". Saved values are untouched, so old workflows
//    load and mean the same. The video preview with sound is core's own.
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

function summaryWidget(node) {
  let widget = node.widgets?.find((w) => w.name === "emo_summary");
  if (!widget) {
    const el = document.createElement("div");
    el.style.cssText = "font: 11px sans-serif; opacity: 0.85; padding: 2px 6px; white-space: normal;";
    widget = node.addDOMWidget("emo_summary", "emo_summary", el, { serialize: false, hideOnZoom: false });
    widget.computeSize = () => [node.size[0], 30];
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

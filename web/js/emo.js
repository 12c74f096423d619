// ComfyUI-EMO frontend extension.
// - EMO Sampler / EMO Audio Encode: after a run, a one-line summary under the node
//   (frames, duration, fps, clips x steps, size) so long runs are easy to sanity-check.
// - EMO Video Combine: an inline player with controls and sound for the written file
//   (core's animated preview is silent and has no seek bar).
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const SUMMARY_NODES = new Set(["EMOSampler", "EMOAudioEncode"]);

function summaryWidget(node) {
  let widget = node.widgets?.find((w) => w.name === "emo_summary");
  if (!widget) {
    const el = document.createElement("div");
    el.className = "emo-summary";
    el.style.cssText = "font: 11px sans-serif; opacity: 0.85; padding: 2px 6px; white-space: normal;";
    widget = node.addDOMWidget("emo_summary", "emo_summary", el, { serialize: false, hideOnZoom: false });
    widget.computeSize = () => [node.size[0], 28];
  }
  return widget;
}

function playerWidget(node) {
  let widget = node.widgets?.find((w) => w.name === "emo_player");
  if (!widget) {
    const video = document.createElement("video");
    video.controls = true;
    video.loop = true;
    video.style.cssText = "width: 100%; max-height: 360px; background: #000;";
    widget = node.addDOMWidget("emo_player", "emo_player", video, { serialize: false, hideOnZoom: false });
    widget.computeSize = () => [node.size[0], 260];
  }
  return widget;
}

app.registerExtension({
  name: "ComfyUI-EMO.nodes",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (SUMMARY_NODES.has(nodeData.name)) {
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message) {
        onExecuted?.apply(this, arguments);
        const text = message?.emo_summary?.[0];
        if (text) {
          summaryWidget(this).element.textContent = text;
          this.setDirtyCanvas(true, true);
        }
      };
    }
    if (nodeData.name === "EMOVideoCombine") {
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message) {
        onExecuted?.apply(this, arguments);
        const file = message?.emo_video?.[0];
        if (!file) return;
        const params = new URLSearchParams({ filename: file.filename, subfolder: file.subfolder, type: file.type, t: Date.now() });
        playerWidget(this).element.src = api.apiURL(`/view?${params}`);
        this.setSize([Math.max(this.size[0], 320), this.computeSize()[1]]);
        this.setDirtyCanvas(true, true);
      };
    }
  },
});

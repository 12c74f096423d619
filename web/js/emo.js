// ComfyUI-EMO frontend extension.
// EMO Sampler / EMO Audio Encode: after a run, a one-line summary on the node (frames, duration,
// fps, clips x steps, size), so a long run is easy to sanity-check at a glance. The video preview
// with sound is core's own (EMO Video Combine returns the file the way Save Video does).
import { app } from "../../../scripts/app.js";

const SUMMARY_NODES = new Set(["EMOSampler", "EMOAudioEncode", "EMOReferenceEncode"]);

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

app.registerExtension({
  name: "ComfyUI-EMO.nodes",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!SUMMARY_NODES.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.emo_summary?.[0];
      if (text) {
        summaryWidget(this).element.textContent = text;
        this.setDirtyCanvas(true, true);
      }
    };
  },
});

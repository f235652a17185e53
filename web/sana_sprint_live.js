// SANA-Sprint live mode for ComfyUI's frontend (written against comfyui-frontend-package 1.27.10).
//
// Adds a "Live" switch to every SanaSprintLivePreview node. While one is on, every change of the
// graph part that the live previews depend on re-queues that part (partial execution of the live
// nodes only, so other outputs such as SaveImage are not re-run): typing and drawing are debounced,
// a stale run is interrupted (or, still waiting in the queue, deleted) when a newer change arrives, and
// at most one further run waits (web/lib/live_queue.js, web/lib/stop_run.js). The sampler's per-step previews are shown in the live preview node too.
//
// Frontend APIs used: app.registerExtension (nodeCreated, loadedGraphNode, setup), node.addDOMWidget,
// app.graphToPrompt, api.queuePrompt(number, {output, workflow}, {partialExecutionTargets}),
// api.interrupt(promptId), api.getQueue(), api.deleteItem("queue", promptId), api events (graphChanged,
// execution_success / _error / _interrupted, status, executed, b_preview_with_metadata) and
// app.nodePreviewImages (what a node shows as preview).

import { api } from "../../scripts/api.js";
import { app } from "../../scripts/app.js";
import { bus } from "./lib/bus.js";
import { DEBOUNCE_MS, IDLE_GRACE_MS, LATENCY_KEY, LIVE_NODE, LIVE_PROPERTY, MAX_WAIT_MS } from "./lib/constants.js";
import { LiveQueue } from "./lib/live_queue.js";
import { downstreamNodes, promptKey, upstreamPrompt } from "./lib/prompt_graph.js";
import { stopRun } from "./lib/stop_run.js";

const controls = new Map(); // live node -> {checkbox, status, latency, roundTrip}
const submittedAt = new Map(); // prompt id -> performance.now() when it was queued
const previewUrls = new Map(); // live node id -> object URL we put into app.nodePreviewImages
const stepPreviews = {}; // live node id -> sampler previews shown (for tests)
const cachedIn = new Map(); // prompt id -> ids of the nodes ComfyUI served from its cache in it
let lastError = null;

function liveNodes(enabledOnly) {
  return (app.graph?.nodes ?? []).filter(
    (n) => n.comfyClass === LIVE_NODE && n.mode === 0 && (!enabledOnly || n.properties?.[LIVE_PROPERTY]));
}

function graphLinks() {
  const links = app.graph?.links;
  if (!links) return [];
  const values = typeof links.values === "function" ? [...links.values()] : Object.values(links);
  return values.filter(Boolean).map((l) => [l.id, l.origin_id, l.origin_slot, l.target_id, l.target_slot, l.type]);
}

async function snapshot() {
  const targets = liveNodes(true).map((n) => String(n.id));
  if (!targets.length) return null;
  const prompt = await app.graphToPrompt();
  const part = upstreamPrompt(prompt.output, targets);
  const present = targets.filter((id) => id in part);
  if (!present.length) return null;
  return { key: promptKey(part), payload: { prompt, targets: present } };
}

function describeError(err) {
  const nodeErrors = err?.response?.node_errors ?? {};
  for (const [id, entry] of Object.entries(nodeErrors)) {
    const first = entry?.errors?.[0];
    if (first) return `node ${id}: ${first.message}${first.details ? ` (${first.details})` : ""}`;
  }
  return err?.response?.error?.message ?? String(err?.message ?? err);
}

async function submit({ prompt, targets }) {
  lastError = null;
  try {
    const res = await api.queuePrompt(0, prompt, { partialExecutionTargets: targets });
    submittedAt.set(res.prompt_id, performance.now());
    return res.prompt_id;
  } catch (err) {
    lastError = describeError(err); // shown on the node; no dialog on every keystroke
    renderStatus();
    return null;
  }
}

const queue = new LiveQueue({
  snapshot,
  submit,
  interrupt: (promptId) => stopRun(api, promptId),
  debounceMs: DEBOUNCE_MS,
  maxWaitMs: MAX_WAIT_MS,
  idleGraceMs: IDLE_GRACE_MS,
  onError: (err) => {
    lastError = String(err?.message ?? err);
  },
  onState: () => renderStatus(),
});

function renderStatus() {
  for (const [node, ui] of controls) {
    const on = Boolean(node.properties?.[LIVE_PROPERTY]);
    let text = `Live: ${on ? queue.describe() : "off"}`;
    if (ui.roundTrip !== null) text += ` · image ${(ui.roundTrip / 1000).toFixed(2)} s after queueing`;
    if (on && lastError) text += ` · not queued: ${lastError}`;
    ui.checkbox.dataset.nodeId = String(node.id);
    ui.checkbox.checked = on;
    ui.status.textContent = text;
  }
}

function syncEnabled() {
  const on = liveNodes(true).length > 0;
  if (on !== queue.enabled) void queue.setEnabled(on);
  renderStatus();
}

function addLiveControl(node) {
  const root = document.createElement("div");
  root.className = "sana-live-control";
  root.style.cssText = "display:flex;flex-direction:column;gap:2px;font:12px sans-serif;color:var(--input-text,#ddd);padding:2px 4px;";
  const label = document.createElement("label");
  label.style.cssText = "display:flex;align-items:center;gap:6px;cursor:pointer;font-weight:600;";
  const checkbox = document.createElement("input");
  checkbox.type = "checkbox";
  checkbox.className = "sana-live-toggle";
  label.append(checkbox, document.createTextNode("Live (re-run on every change)"));
  const line = "opacity:0.85;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;";
  const status = document.createElement("div");
  status.className = "sana-live-status";
  status.style.cssText = line;
  const latency = document.createElement("div"); // stage times of the run that made the image
  latency.className = "sana-live-latency";
  latency.style.cssText = line;
  latency.textContent = "latency: no run yet";
  root.append(label, status, latency);
  checkbox.addEventListener("change", () => {
    node.properties ??= {};
    node.properties[LIVE_PROPERTY] = checkbox.checked;
    syncEnabled();
  });
  const widget = node.addDOMWidget("live", "SANA_LIVE_CONTROL", root, {
    getValue: () => "",
    setValue: () => {},
    getMinHeight: () => 64,
    getMaxHeight: () => 64,
    margin: 4,
    hideOnZoom: false,
    serialize: false, // not part of the prompt
  });
  widget.serialize = false; // nor of widgets_values (the switch lives in node.properties)
  controls.set(node, { checkbox, status, latency, roundTrip: null });
  const onRemoved = node.onRemoved;
  node.onRemoved = function (...args) {
    controls.delete(node);
    syncEnabled();
    return onRemoved?.apply(this, args);
  };
  renderStatus();
}

/** Shows a sampler preview in every live preview node downstream of the node that sent it. */
function showStepPreview({ blob, displayNodeId }) {
  if (!blob || !app.nodePreviewImages) return;
  const source = String(displayNodeId ?? "").split(":")[0];
  const reach = downstreamNodes(graphLinks(), source);
  for (const node of liveNodes(false)) {
    const id = String(node.id);
    if (!reach.has(id) || id === source) continue;
    const url = URL.createObjectURL(blob);
    const old = previewUrls.get(id);
    if (old) URL.revokeObjectURL(old);
    previewUrls.set(id, url);
    app.nodePreviewImages[id] = [url];
    stepPreviews[id] = (stepPreviews[id] ?? 0) + 1;
    node.setDirtyCanvas?.(true, true);
  }
}

function onExecuted({ detail }) {
  const id = String(detail?.display_node ?? detail?.node ?? "");
  const node = app.graph?.getNodeById?.(id);
  if (!node || node.comfyClass !== LIVE_NODE) return;
  // The final image replaces the step previews.
  const url = previewUrls.get(id);
  if (url) URL.revokeObjectURL(url);
  previewUrls.delete(id);
  if (app.nodePreviewImages?.[id]) delete app.nodePreviewImages[id];
  node.setDirtyCanvas?.(true, true);
  const ui = controls.get(node);
  if (!ui || cachedIn.get(detail.prompt_id)?.has(id)) return; // same image as before: keep its numbers
  const latency = detail.output?.[LATENCY_KEY]?.[0];
  if (latency) ui.latency.textContent = latency;
  const started = submittedAt.get(detail.prompt_id);
  if (started !== undefined) ui.roundTrip = performance.now() - started; // else: not ours, or ended early
  renderStatus();
}

function onRunEnded({ detail }) {
  if (!detail?.prompt_id) return;
  submittedAt.delete(detail.prompt_id);
  cachedIn.delete(detail.prompt_id);
  void queue.finished(detail.prompt_id);
}

function isGraphWidget(target) {
  return Boolean(target?.closest?.(".dom-widget")) && !target.closest(".sana-live-control");
}

app.registerExtension({
  name: "SanaSprint.Live",
  nodeCreated(node) {
    if (node.comfyClass === LIVE_NODE) addLiveControl(node);
  },
  loadedGraphNode(node) {
    if (node.comfyClass === LIVE_NODE) syncEnabled();
  },
  setup() {
    api.addEventListener("graphChanged", () => {
      syncEnabled();
      queue.changed();
    });
    bus.addEventListener("change", () => queue.changed());
    // Typing in a text widget: every keystroke (ComfyUI's own change tracking waits for blur).
    document.addEventListener("input", (e) => {
      if (isGraphWidget(e.target)) queue.changed();
    }, true);
    for (const event of ["execution_success", "execution_error", "execution_interrupted"]) {
      api.addEventListener(event, onRunEnded);
    }
    api.addEventListener("status", ({ detail }) => {
      if (detail?.exec_info?.queue_remaining === 0) void queue.serverIdle();
    });
    api.addEventListener("execution_cached", ({ detail }) => {
      if (detail?.prompt_id) cachedIn.set(detail.prompt_id, new Set((detail.nodes ?? []).map(String)));
    });
    api.addEventListener("executed", onExecuted);
    api.addEventListener("b_preview_with_metadata", ({ detail }) => showStepPreview(detail));
  },
});

// For tests and power users: the scheduler's state (window.SanaSprintLive.queue.stats etc.).
window.SanaSprintLive = { queue, liveNodes, stepPreviews, refresh: renderStatus };

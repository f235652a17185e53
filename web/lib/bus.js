// Events between the pack's frontend modules (ES modules are singletons per URL, so both
// web/sana_sprint_live.js and web/sana_sprint_scribble.js get this one EventTarget).
// "change": a pack widget changed a value that the next run must see (e.g. a new scribble file).

export const bus = new EventTarget();

export function notifyChange(source) {
  bus.dispatchEvent(new CustomEvent("change", { detail: { source } }));
}

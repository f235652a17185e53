// Names and settings shared by the SANA-Sprint frontend extension (web/sana_sprint_*.js).
// Node ids and the upload subfolder must match the Python side (nodes/live.py,
// sana_sprint_core/constants.py); tests/test_web_js.py checks that they do.

export const LIVE_NODE = "SanaSprintLivePreview";
export const SCRIBBLE_NODE = "SanaSprintScribblePad";
// The custom input type of the pad's `scribble` input, drawn as a canvas widget.
export const SCRIBBLE_WIDGET_TYPE = "SANA_SCRIBBLE";
// Subfolder of ComfyUI's input folder for the canvas PNGs (SCRIBBLE_PAD_UPLOAD_SUBFOLDER in Python).
export const UPLOAD_SUBFOLDER = "sana_sprint";
// Extra keys of the nodes' UI payload (nodes/live.py LATENCY_KEY, BACKGROUND_KEY).
export const LATENCY_KEY = "sana_latency";
export const BACKGROUND_KEY = "sana_background";
// Node property that holds a live preview node's "Live" switch (saved with the workflow).
export const LIVE_PROPERTY = "sana_live";

// Live re-queueing: a run starts once changes pause for DEBOUNCE_MS (a typing or drawing burst),
// and at the latest MAX_WAIT_MS after the first change of a burst, so a long stroke still updates.
export const DEBOUNCE_MS = 300;
export const MAX_WAIT_MS = 1500;
// If the server reports an empty queue this long after a run was sent and its end was never
// seen (a lost websocket message), the run counts as finished.
export const IDLE_GRACE_MS = 1000;
// While the pointer is down, the canvas uploads its strokes at most this often.
export const DRAW_UPLOAD_INTERVAL_MS = 400;

// Brush: default diameter in canvas pixels and the slider's range.
export const DEFAULT_BRUSH_SIZE = 12;
export const MIN_BRUSH_SIZE = 1;
export const MAX_BRUSH_SIZE = 128;

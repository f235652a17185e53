// Content-derived file names for the pad's uploads: the same strokes give the same name (so an
// unchanged canvas changes nothing and ComfyUI's cache holds), different strokes a different name
// (so the widget value changes and live mode re-runs). The hash is for naming, not for security;
// it is computed here because crypto.subtle is missing on plain-http pages other than localhost.

function fmix32(h) {
  // final avalanche of MurmurHash3
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

const hex8 = (v) => (v >>> 0).toString(16).padStart(8, "0");

/** A 64-bit hash of `bytes` as 16 hex digits (two 32-bit lanes with different multipliers). */
export function hash64(bytes) {
  let h1 = (0x811c9dc5 ^ bytes.length) >>> 0;
  let h2 = (0x9e3779b9 ^ bytes.length) >>> 0;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i];
    h1 = Math.imul(h1 ^ b, 0x01000193); // FNV-1a step
    h2 = Math.imul(h2 ^ b, 0x5bd1e995);
    h2 ^= h2 >>> 15;
  }
  h1 = fmix32(h1 ^ Math.imul(h2, 0x27d4eb2f));
  h2 = fmix32(h2 ^ h1);
  return hex8(h1) + hex8(h2);
}

/** "scribble_<w>x<h>_<hash>.png" for a grey raster of the pad. */
export function scribbleFileName(grey, width, height) {
  return `scribble_${width}x${height}_${hash64(grey)}.png`;
}

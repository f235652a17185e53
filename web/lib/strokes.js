// The scribble pad's drawing model: strokes (brush or eraser) in canvas pixel coordinates, undo,
// clear, a base raster loaded from a saved scribble, and their rasterisation into an 8-bit grey
// buffer (255 = stroke, 0 = background) of the pad's width x height. No DOM: the canvas widget
// (web/sana_sprint_scribble.js) draws the buffer and uploads it as a PNG (png.js).
//
// A brush of diameter `size` covers every pixel whose centre lies within size / 2 of the stroke's
// polyline (a round brush with round joins); a single click covers a disc.

export const STROKE = 255;
export const BACKGROUND = 0;

/** Sets pixels of `buf` (w x h, row-major) within `radius` of segment (x0, y0)-(x1, y1) to `value`. */
export function stampSegment(buf, w, h, x0, y0, x1, y1, radius, value) {
  const left = Math.max(0, Math.floor(Math.min(x0, x1) - radius));
  const right = Math.min(w - 1, Math.ceil(Math.max(x0, x1) + radius));
  const top = Math.max(0, Math.floor(Math.min(y0, y1) - radius));
  const bottom = Math.min(h - 1, Math.ceil(Math.max(y0, y1) + radius));
  const dx = x1 - x0;
  const dy = y1 - y0;
  const len2 = dx * dx + dy * dy;
  const r2 = radius * radius;
  for (let y = top; y <= bottom; y++) {
    const cy = y + 0.5;
    for (let x = left; x <= right; x++) {
      const cx = x + 0.5;
      // distance from the pixel centre to the closest point of the segment
      const t = len2 > 0 ? Math.min(1, Math.max(0, ((cx - x0) * dx + (cy - y0) * dy) / len2)) : 0;
      const ex = cx - (x0 + t * dx);
      const ey = cy - (y0 + t * dy);
      if (ex * ex + ey * ey <= r2) buf[y * w + x] = value;
    }
  }
  return { left, top, right, bottom };
}

/** Draws a whole stroke {points: [[x, y], ...], size, erase} into `buf`. */
export function drawStroke(buf, w, h, stroke) {
  const radius = stroke.size / 2;
  const value = stroke.erase ? BACKGROUND : STROKE;
  const pts = stroke.points;
  if (pts.length === 1) {
    stampSegment(buf, w, h, pts[0][0], pts[0][1], pts[0][0], pts[0][1], radius, value);
    return;
  }
  for (let i = 1; i < pts.length; i++) {
    stampSegment(buf, w, h, pts[i - 1][0], pts[i - 1][1], pts[i][0], pts[i][1], radius, value);
  }
}

function checkSize(width, height) {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new Error(`canvas size must be positive integers, got ${width} x ${height}`);
  }
}

export class StrokeModel {
  constructor(width, height) {
    checkSize(width, height);
    this.width = width;
    this.height = height;
    this.base = null; // Uint8Array raster that the strokes are drawn over (a loaded scribble)
    this.ops = []; // strokes {points, size, erase} and clears {clear: true}, oldest first
    this.current = null;
  }

  /** Starts a stroke at (x, y); returns it. */
  begin(x, y, size, erase = false) {
    if (!(size > 0)) throw new Error(`brush size must be > 0, got ${size}`);
    this.current = { points: [[x, y]], size, erase: Boolean(erase) };
    this.ops.push(this.current);
    return this.current;
  }

  /** Adds (x, y) to the current stroke; returns the new segment [[x0, y0], [x1, y1]], or null. */
  extend(x, y) {
    if (!this.current) return null;
    const pts = this.current.points;
    const prev = pts[pts.length - 1];
    if (prev[0] === x && prev[1] === y) return null;
    pts.push([x, y]);
    return [prev, [x, y]];
  }

  end() {
    this.current = null;
  }

  /** Removes the newest stroke or clear; false when there is nothing to undo. */
  undo() {
    this.current = null;
    return this.ops.pop() !== undefined;
  }

  /** Clears the canvas (undoable); false when it already shows nothing. */
  clear() {
    this.current = null;
    if (this.isBlank()) return false;
    this.ops.push({ clear: true });
    return true;
  }

  /** Replaces everything with a raster (w x h bytes), e.g. a scribble loaded from its PNG. */
  setBase(raster) {
    if (raster.length !== this.width * this.height) {
      throw new Error(`base raster has ${raster.length} pixels, expected ${this.width} x ${this.height}`);
    }
    this.base = Uint8Array.from(raster);
    this.ops = [];
    this.current = null;
  }

  /** Scales strokes and base raster to a new canvas size (brush sizes by the mean scale). */
  resize(width, height) {
    checkSize(width, height);
    const sx = width / this.width;
    const sy = height / this.height;
    const ss = Math.sqrt(sx * sy);
    for (const op of this.ops) {
      if (op.clear) continue;
      op.points = op.points.map(([x, y]) => [x * sx, y * sy]);
      op.size *= ss;
    }
    if (this.base) this.base = resampleNearest(this.base, this.width, this.height, width, height);
    this.width = width;
    this.height = height;
  }

  /** The canvas as a Uint8Array of width x height grey values. */
  raster() {
    const buf = this.base ? Uint8Array.from(this.base) : new Uint8Array(this.width * this.height);
    for (const op of this.ops) {
      if (op.clear) buf.fill(BACKGROUND);
      else drawStroke(buf, this.width, this.height, op);
    }
    return buf;
  }

  /** Whether nothing is drawn. */
  isBlank() {
    return this.raster().every((v) => v === BACKGROUND);
  }
}

/** Nearest-neighbour resampling of a w x h byte raster to nw x nh (pixel centres mapped). */
export function resampleNearest(src, w, h, nw, nh) {
  const out = new Uint8Array(nw * nh);
  for (let y = 0; y < nh; y++) {
    const sy = Math.min(h - 1, Math.floor(((y + 0.5) * h) / nh));
    for (let x = 0; x < nw; x++) {
      const sx = Math.min(w - 1, Math.floor(((x + 0.5) * w) / nw));
      out[y * nw + x] = src[sy * w + sx];
    }
  }
  return out;
}

/**
 * Canvas pixel under a pointer: the canvas (w x h) is shown scaled to fit `rect` (a DOMRect-like
 * {left, top, width, height}) with its aspect ratio kept and centred (CSS object-fit: contain).
 * Returns {x, y} in canvas pixels (fractional), or null outside the picture.
 */
export function clientToCanvas(clientX, clientY, rect, w, h) {
  const scale = Math.min(rect.width / w, rect.height / h);
  if (!(scale > 0)) return null;
  const x = (clientX - rect.left - (rect.width - w * scale) / 2) / scale;
  const y = (clientY - rect.top - (rect.height - h * scale) / 2) / scale;
  if (x < 0 || y < 0 || x > w || y > h) return null;
  return { x, y };
}

/**
 * RGBA pixels (Uint8ClampedArray, for ImageData) of the region [left, right] x [top, bottom] of a
 * grey raster: white with the grey value as alpha, so the background shows through unpainted pixels.
 */
export function greyToRgba(grey, w, { left = 0, top = 0, right = w - 1, bottom = grey.length / w - 1 } = {}) {
  const rw = right - left + 1;
  const rh = bottom - top + 1;
  const out = new Uint8ClampedArray(rw * rh * 4);
  for (let y = 0; y < rh; y++) {
    for (let x = 0; x < rw; x++) {
      const o = (y * rw + x) * 4;
      out[o] = 255;
      out[o + 1] = 255;
      out[o + 2] = 255;
      out[o + 3] = grey[(top + y) * w + left + x];
    }
  }
  return out;
}

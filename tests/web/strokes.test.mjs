import assert from "node:assert/strict";
import { test } from "node:test";

import {
  StrokeModel, clientToCanvas, greyToRgba, resampleNearest, stampSegment,
} from "../../web/lib/strokes.js";

const at = (buf, w, x, y) => buf[y * w + x];
const count = (buf) => buf.reduce((n, v) => n + (v > 0 ? 1 : 0), 0);

test("a dot covers exactly the pixels whose centres are within the radius", () => {
  const w = 21;
  const buf = new Uint8Array(w * w);
  stampSegment(buf, w, w, 10.5, 10.5, 10.5, 10.5, 3, 255);
  for (let y = 0; y < w; y++) {
    for (let x = 0; x < w; x++) {
      const inside = (x + 0.5 - 10.5) ** 2 + (y + 0.5 - 10.5) ** 2 <= 9;
      assert.equal(at(buf, w, x, y), inside ? 255 : 0, `(${x}, ${y})`);
    }
  }
  assert.equal(count(buf), 29); // lattice points in a radius-3 disc
});

test("a horizontal segment paints a band of the brush's diameter, clipped to the canvas", () => {
  const w = 40;
  const h = 20;
  const buf = new Uint8Array(w * h);
  stampSegment(buf, w, h, -5, 10, 50, 10, 2, 200);
  for (let y = 0; y < h; y++) {
    const inBand = Math.abs(y + 0.5 - 10) <= 2; // rows 8..11
    for (let x = 0; x < w; x++) assert.equal(at(buf, w, x, y), inBand ? 200 : 0, `(${x}, ${y})`);
  }
});

test("strokes, eraser, undo and clear", () => {
  const m = new StrokeModel(64, 48);
  assert.ok(m.isBlank());
  m.begin(10, 10, 4);
  assert.deepEqual(m.extend(50, 10), [[10, 10], [50, 10]]);
  assert.equal(m.extend(50, 10), null); // same point again: nothing new
  m.end();
  const drawn = m.raster();
  assert.equal(at(drawn, 64, 30, 10), 255);
  assert.equal(at(drawn, 64, 30, 20), 0);

  m.begin(30, 10, 6, true); // eraser dot in the middle of the line
  m.end();
  const erased = m.raster();
  assert.equal(at(erased, 64, 30, 10), 0);
  assert.equal(at(erased, 64, 15, 10), 255);

  assert.ok(m.undo()); // the eraser
  assert.deepEqual(m.raster(), drawn);
  assert.ok(m.clear());
  assert.ok(m.isBlank());
  assert.equal(m.clear(), false); // already blank: no extra undo step
  assert.ok(m.undo()); // undo the clear
  assert.deepEqual(m.raster(), drawn);
  assert.ok(m.undo());
  assert.ok(m.isBlank());
  assert.equal(m.undo(), false);
});

test("a loaded base raster sits under new strokes and is not undone", () => {
  const m = new StrokeModel(8, 4);
  const base = new Uint8Array(32);
  base[0] = 255;
  m.setBase(base);
  m.begin(7.5, 3.5, 1);
  m.end();
  const r = m.raster();
  assert.equal(r[0], 255);
  assert.equal(r[31], 255);
  m.undo();
  assert.equal(m.undo(), false);
  assert.deepEqual(m.raster(), base);
  assert.throws(() => m.setBase(new Uint8Array(5)), /base raster has 5 pixels, expected 8 x 4/);
});

test("resizing scales strokes and brush with the canvas", () => {
  const m = new StrokeModel(100, 100);
  m.begin(20, 50, 10);
  m.extend(80, 50);
  m.end();
  m.resize(200, 200);
  const r = m.raster();
  assert.equal(at(r, 200, 100, 100), 255);
  assert.equal(at(r, 200, 100, 109), 255); // brush 20 px now: rows 90..109
  assert.equal(at(r, 200, 100, 110), 0);
  assert.equal(at(r, 200, 29, 100), 0); // the stroke starts at x = 40; radius 10 reaches centre 30.5
  assert.equal(at(r, 200, 30, 100), 255);
  assert.throws(() => m.resize(0, 10), /canvas size must be positive integers, got 0 x 10/);
  assert.throws(() => m.begin(1, 1, 0), /brush size must be > 0, got 0/);
});

test("nearest resampling maps pixel centres", () => {
  const src = Uint8Array.from([1, 2, 3, 4]); // 2 x 2
  assert.deepEqual(Array.from(resampleNearest(src, 2, 2, 4, 2)), [1, 1, 2, 2, 3, 3, 4, 4]);
  assert.deepEqual(Array.from(resampleNearest(src, 2, 2, 1, 1)), [4]); // centre (0.5, 0.5) -> pixel (1, 1)
});

test("pointer positions map into a letterboxed canvas", () => {
  // a 200 x 100 canvas shown in a 400 x 400 box: scale 2, 100 px bars above and below
  const rect = { left: 10, top: 20, width: 400, height: 400 };
  assert.deepEqual(clientToCanvas(10, 120, rect, 200, 100), { x: 0, y: 0 });
  assert.deepEqual(clientToCanvas(410, 320, rect, 200, 100), { x: 200, y: 100 });
  assert.deepEqual(clientToCanvas(210, 220, rect, 200, 100), { x: 100, y: 50 });
  assert.equal(clientToCanvas(210, 110, rect, 200, 100), null); // on the bar
  assert.equal(clientToCanvas(0, 0, { left: 0, top: 0, width: 0, height: 0 }, 200, 100), null);
});

test("grey to RGBA gives white with the grey value as alpha, for a sub-rectangle too", () => {
  const grey = Uint8Array.from([0, 10, 20, 30, 40, 50]); // 3 x 2
  assert.deepEqual(Array.from(greyToRgba(grey, 3)), [
    255, 255, 255, 0, 255, 255, 255, 10, 255, 255, 255, 20,
    255, 255, 255, 30, 255, 255, 255, 40, 255, 255, 255, 50]);
  assert.deepEqual(Array.from(greyToRgba(grey, 3, { left: 1, top: 1, right: 2, bottom: 1 })),
    [255, 255, 255, 40, 255, 255, 255, 50]);
});

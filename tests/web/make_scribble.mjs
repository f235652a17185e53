// Test helper for tests/test_scribble_pad.py: draws strokes with the pad's own model and writes
// what the canvas would upload (PNG, compressed like in the browser) plus the raw raster.
//   node tests/web/make_scribble.mjs <out dir>   ->   <out dir>/scribble.png, raster.bin (w*h bytes)

import { writeFileSync } from "node:fs";
import { join } from "node:path";

import { encodeGreyPng, streamDeflate } from "../../web/lib/png.js";
import { StrokeModel } from "../../web/lib/strokes.js";

const [outDir] = process.argv.slice(2);
const W = 96;
const H = 64;
const model = new StrokeModel(W, H);
model.begin(5, 5, 6);
for (const [x, y] of [[30, 20], [60, 50], [90, 10]]) model.extend(x, y);
model.end();
model.begin(48, 32, 10, true); // eraser
model.end();
model.begin(20, 55, 3);
model.end();
const grey = model.raster();
writeFileSync(join(outDir, "scribble.png"), await encodeGreyPng(grey, W, H, { deflate: streamDeflate }));
writeFileSync(join(outDir, "raster.bin"), grey);
console.log(JSON.stringify({ width: W, height: H }));

import assert from "node:assert/strict";
import { test } from "node:test";

import { hash64, scribbleFileName } from "../../web/lib/content_name.js";

test("names depend on content and size only", () => {
  const a = new Uint8Array(64 * 64);
  a[100] = 255;
  const b = Uint8Array.from(a);
  assert.equal(scribbleFileName(a, 64, 64), scribbleFileName(b, 64, 64));
  assert.match(scribbleFileName(a, 64, 64), /^scribble_64x64_[0-9a-f]{16}\.png$/);
  b[101] = 1;
  assert.notEqual(scribbleFileName(a, 64, 64), scribbleFileName(b, 64, 64));
  assert.notEqual(scribbleFileName(a, 64, 64), scribbleFileName(a, 32, 128));
});

test("single-pixel changes of a large raster give distinct hashes", () => {
  const base = new Uint8Array(256 * 256);
  const seen = new Set([hash64(base)]);
  for (let i = 0; i < base.length; i += 97) {
    const v = Uint8Array.from(base);
    v[i] = 255;
    seen.add(hash64(v));
  }
  assert.equal(seen.size, 1 + Math.ceil(base.length / 97));
  assert.notEqual(hash64(new Uint8Array(0)), hash64(new Uint8Array(1))); // length matters
});

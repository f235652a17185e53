import assert from "node:assert/strict";
import { test } from "node:test";
import { deflateSync, inflateSync } from "node:zlib";

import { adler32, crc32, encodeGreyPng, streamDeflate, zlibStored } from "../../web/lib/png.js";
import { readGreyPng } from "./png_reader.mjs";

const bytes = (s) => Uint8Array.from(s, (c) => c.charCodeAt(0));

test("CRC-32 and Adler-32 match their published check values", () => {
  assert.equal(crc32(bytes("123456789")), 0xcbf43926); // the standard CRC-32 check value
  assert.equal(crc32(bytes("IEND")), 0xae426082); // the CRC every PNG ends with
  assert.equal(crc32(bytes("6789"), crc32(bytes("12345"))), 0xcbf43926); // continues a running CRC
  assert.equal(adler32(bytes("Wikipedia")), 0x11e60398); // RFC 1950 worked example
  assert.equal(adler32(new Uint8Array(0)), 1);
});

test("stored zlib streams inflate back, across the 64 KiB block limit", () => {
  for (const n of [0, 1, 65535, 65536, 200000]) {
    const data = Uint8Array.from({ length: n }, (_, i) => (i * 7 + (i >> 9)) & 255);
    const z = zlibStored(data);
    assert.deepEqual(new Uint8Array(inflateSync(z)), data, `n=${n}`);
    assert.equal(((z[0] << 8) | z[1]) % 31, 0, "zlib header check bits");
  }
});

function sampleRaster(w, h) {
  const grey = new Uint8Array(w * h);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) grey[y * w + x] = (x * 31 + y * 17) % 256;
  return grey;
}

for (const [name, deflate] of [["stored", undefined], ["CompressionStream", streamDeflate], ["node zlib", deflateSync]]) {
  test(`a grey PNG (${name}) decodes to the same pixels with the right header`, async () => {
    const w = 37;
    const h = 23;
    const grey = sampleRaster(w, h);
    const png = await encodeGreyPng(grey, w, h, deflate ? { deflate } : {});
    const got = readGreyPng(png);
    assert.equal(got.width, w);
    assert.equal(got.height, h);
    assert.deepEqual(got.header, [8, 0, 0, 0, 0]); // depth 8, greyscale, deflate, filter 0, no interlace
    assert.deepEqual(got.types, ["IHDR", "IDAT", "IEND"]);
    assert.deepEqual(got.grey, grey);
  });
}

test("CompressionStream makes a sparse 1024x1024 scribble small", async () => {
  const grey = new Uint8Array(1024 * 1024);
  grey.fill(255, 500 * 1024, 520 * 1024); // a 20 px band
  const png = await encodeGreyPng(grey, 1024, 1024, { deflate: streamDeflate });
  assert.ok(png.length < 20000, `${png.length} bytes`);
  assert.deepEqual(readGreyPng(png).grey, grey);
});

test("a raster of the wrong length is rejected", async () => {
  await assert.rejects(encodeGreyPng(new Uint8Array(10), 4, 4), /raster has 10 pixels, expected 4 x 4/);
});

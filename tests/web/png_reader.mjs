// Test helper: reads the PNGs that web/lib/png.js writes (8-bit grey, filter 0), checking
// signature, chunk CRCs and the IHDR fields; inflates with Node's zlib.

import { inflateSync } from "node:zlib";

import { crc32 } from "../../web/lib/png.js";

export function readGreyPng(bytes) {
  const sig = [137, 80, 78, 71, 13, 10, 26, 10];
  sig.forEach((b, i) => {
    if (bytes[i] !== b) throw new Error("bad PNG signature");
  });
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const chunks = [];
  let o = 8;
  while (o < bytes.length) {
    const len = view.getUint32(o);
    const type = String.fromCharCode(...bytes.subarray(o + 4, o + 8));
    const data = bytes.subarray(o + 8, o + 8 + len);
    if (crc32(bytes.subarray(o + 4, o + 8 + len)) !== view.getUint32(o + 8 + len)) throw new Error(`bad CRC in ${type}`);
    chunks.push({ type, data });
    o += 12 + len;
  }
  const ihdr = new DataView(chunks[0].data.buffer, chunks[0].data.byteOffset, 13);
  const width = ihdr.getUint32(0);
  const height = ihdr.getUint32(4);
  const header = Array.from(chunks[0].data.subarray(8, 13));
  const idat = Buffer.concat(chunks.filter((c) => c.type === "IDAT").map((c) => Buffer.from(c.data)));
  const raw = inflateSync(idat);
  const grey = new Uint8Array(width * height);
  for (let y = 0; y < height; y++) {
    if (raw[y * (width + 1)] !== 0) throw new Error("expected filter 0");
    grey.set(raw.subarray(y * (width + 1) + 1, (y + 1) * (width + 1)), y * width);
  }
  return { width, height, header, types: chunks.map((c) => c.type), grey };
}

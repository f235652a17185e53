// A minimal PNG writer for the scribble pad: 8-bit greyscale, no interlace, filter 0 on every row
// (PNG specification, ISO/IEC 15948: signature, IHDR, IDAT with a zlib stream, IEND; CRC-32 over
// chunk type + data). Compression is injected: `streamDeflate` uses the CompressionStream that
// browsers and Node provide; `zlibStored` writes uncompressed deflate blocks (RFC 1950/1951) and
// needs nothing. No DOM.

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];
const STORED_BLOCK_MAX = 65535; // largest stored deflate block (LEN is 16 bits)

let crcTable = null;

function makeCrcTable() {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1; // reflected 0x04C11DB7
    table[n] = c >>> 0;
  }
  return table;
}

/** CRC-32 (ISO 3309, as PNG and zlib use it) of `bytes`, continuing from `crc`. */
export function crc32(bytes, crc = 0) {
  crcTable ??= makeCrcTable();
  let c = ~crc >>> 0;
  for (let i = 0; i < bytes.length; i++) c = crcTable[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

/** Adler-32 (RFC 1950) of `bytes`. */
export function adler32(bytes) {
  const MOD = 65521;
  let a = 1;
  let b = 0;
  for (let i = 0; i < bytes.length; i++) {
    a = (a + bytes[i]) % MOD;
    b = (b + a) % MOD;
  }
  return ((b << 16) | a) >>> 0;
}

function u32be(value) {
  return [(value >>> 24) & 255, (value >>> 16) & 255, (value >>> 8) & 255, value & 255];
}

/** A zlib stream (RFC 1950) of uncompressed deflate blocks; valid input for any inflater. */
export function zlibStored(data) {
  const blocks = Math.max(1, Math.ceil(data.length / STORED_BLOCK_MAX));
  const out = new Uint8Array(2 + blocks * 5 + data.length + 4);
  out[0] = 0x78; // CM 8 (deflate), CINFO 7 (32K window)
  out[1] = 0x01; // FLEVEL 0, FCHECK so that 0x7801 % 31 == 0
  let o = 2;
  for (let i = 0; i < blocks; i++) {
    const start = i * STORED_BLOCK_MAX;
    const len = Math.min(STORED_BLOCK_MAX, data.length - start);
    out[o++] = i === blocks - 1 ? 1 : 0; // BFINAL, BTYPE 00 (stored)
    out[o++] = len & 255;
    out[o++] = len >>> 8;
    out[o++] = ~len & 255;
    out[o++] = (~len >>> 8) & 255;
    out.set(data.subarray(start, start + len), o);
    o += len;
  }
  out.set(u32be(adler32(data)), o);
  return out;
}

/** zlib-compresses `data` with the platform's CompressionStream("deflate"). */
export async function streamDeflate(data) {
  const stream = new Blob([data]).stream().pipeThrough(new CompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function chunk(type, data) {
  const typeBytes = Array.from(type, (ch) => ch.charCodeAt(0));
  const body = new Uint8Array(typeBytes.length + data.length);
  body.set(typeBytes, 0);
  body.set(data, typeBytes.length);
  const out = new Uint8Array(12 + data.length);
  out.set(u32be(data.length), 0);
  out.set(body, 4);
  out.set(u32be(crc32(body)), 8 + data.length);
  return out;
}

/** Scanlines of a grey raster: each row prefixed with filter type 0 (None). */
export function scanlines(grey, width, height) {
  const raw = new Uint8Array(height * (width + 1));
  for (let y = 0; y < height; y++) {
    raw[y * (width + 1)] = 0;
    raw.set(grey.subarray(y * width, (y + 1) * width), y * (width + 1) + 1);
  }
  return raw;
}

/**
 * PNG bytes of a width x height 8-bit grey raster. `deflate(bytes) -> zlib bytes` (sync or async)
 * compresses the scanlines; the default writes them uncompressed.
 */
export async function encodeGreyPng(grey, width, height, { deflate = zlibStored } = {}) {
  if (grey.length !== width * height) {
    throw new Error(`raster has ${grey.length} pixels, expected ${width} x ${height}`);
  }
  const ihdr = new Uint8Array([...u32be(width), ...u32be(height), 8, 0, 0, 0, 0]); // depth 8, grey
  const idat = await deflate(scanlines(grey, width, height));
  const parts = [Uint8Array.from(SIGNATURE), chunk("IHDR", ihdr), chunk("IDAT", idat), chunk("IEND", new Uint8Array(0))];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

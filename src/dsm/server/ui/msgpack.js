// A small msgpack encoder/decoder for the subset Kyutai's WebSocket protocol uses: maps with
// string keys, strings, integers, floats, booleans, nil, arrays and bin. Written here rather than
// vendored so that the page stays a few plain files with no third-party code; it is tested
// against Python's msgpack in tests/server/test_ui_browser.py.
//
// encode(): a Float32Array becomes an array of msgpack float32 (0xca) items, which is exactly
// what Kyutai's clients send for {"type": "Audio", "pcm": [...]} (and what the server's fast
// path reads); a Uint8Array becomes bin; a JS number is an integer when it is one, else float64.

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder();

class Writer {
  constructor(size = 1024) {
    this.buf = new Uint8Array(size);
    this.view = new DataView(this.buf.buffer);
    this.pos = 0;
  }
  ensure(n) {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
  u8(v) { this.ensure(1); this.view.setUint8(this.pos, v); this.pos += 1; }
  u16(v) { this.ensure(2); this.view.setUint16(this.pos, v); this.pos += 2; }
  u32(v) { this.ensure(4); this.view.setUint32(this.pos, v); this.pos += 4; }
  f32(v) { this.ensure(4); this.view.setFloat32(this.pos, v); this.pos += 4; }
  f64(v) { this.ensure(8); this.view.setFloat64(this.pos, v); this.pos += 8; }
  bytes(b) { this.ensure(b.length); this.buf.set(b, this.pos); this.pos += b.length; }
  result() { return this.buf.slice(0, this.pos); }
}

function header(w, n, fix, fixMax, c16, c32) {
  if (n <= fixMax && fix !== null) w.u8(fix | n);
  else if (n < 0x10000) { w.u8(c16); w.u16(n); }
  else { w.u8(c32); w.u32(n); }
}

function writeInt(w, v) {
  if (v >= 0) {
    if (v < 0x80) w.u8(v);
    else if (v < 0x100) { w.u8(0xcc); w.u8(v); }
    else if (v < 0x10000) { w.u8(0xcd); w.u16(v); }
    else if (v < 0x100000000) { w.u8(0xce); w.u32(v); }
    else { w.u8(0xcb); w.f64(v); } // beyond 32 bits: float64 (the protocol never needs it)
  } else if (v >= -32) w.u8(v & 0xff);
  else if (v >= -0x80) { w.u8(0xd0); w.u8(v & 0xff); }
  else if (v >= -0x8000) { w.u8(0xd1); w.u16(v & 0xffff); }
  else if (v >= -0x80000000) { w.u8(0xd2); w.u32(v >>> 0); }
  else { w.u8(0xcb); w.f64(v); }
}

function writeValue(w, v) {
  if (v === null || v === undefined) w.u8(0xc0);
  else if (v === false) w.u8(0xc2);
  else if (v === true) w.u8(0xc3);
  else if (typeof v === "number") {
    if (Number.isInteger(v)) writeInt(w, v);
    else { w.u8(0xcb); w.f64(v); }
  } else if (typeof v === "string") {
    const b = textEncoder.encode(v);
    if (b.length < 32) w.u8(0xa0 | b.length);
    else if (b.length < 0x100) { w.u8(0xd9); w.u8(b.length); }
    else header(w, b.length, null, 0, 0xda, 0xdb);
    w.bytes(b);
  } else if (v instanceof Float32Array) {
    header(w, v.length, 0x90, 15, 0xdc, 0xdd);
    w.ensure(5 * v.length);
    for (const x of v) { w.u8(0xca); w.f32(x); }
  } else if (v instanceof Uint8Array) {
    if (v.length < 0x100) { w.u8(0xc4); w.u8(v.length); }
    else header(w, v.length, null, 0, 0xc5, 0xc6);
    w.bytes(v);
  } else if (Array.isArray(v)) {
    header(w, v.length, 0x90, 15, 0xdc, 0xdd);
    for (const x of v) writeValue(w, x);
  } else if (typeof v === "object") {
    const keys = Object.keys(v);
    header(w, keys.length, 0x80, 15, 0xde, 0xdf);
    for (const k of keys) { writeValue(w, k); writeValue(w, v[k]); }
  } else {
    throw new TypeError(`msgpack: cannot encode a ${typeof v}`);
  }
}

/** One value as msgpack bytes (Uint8Array). Object keys keep their insertion order. */
export function encode(value) {
  const w = new Writer();
  writeValue(w, value);
  return w.result();
}

class Reader {
  constructor(bytes) {
    this.buf = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.pos = 0;
  }
  need(n) {
    if (this.pos + n > this.buf.length) throw new RangeError("msgpack: message cut short");
  }
  u8() { this.need(1); return this.view.getUint8(this.pos++); }
  num(kind, n) {
    this.need(n);
    const v = this.view[kind](this.pos);
    this.pos += n;
    return v;
  }
  bytes(n) { this.need(n); const b = this.buf.subarray(this.pos, this.pos + n); this.pos += n; return b; }
  str(n) { return textDecoder.decode(this.bytes(n)); }
  array(n) { const out = new Array(n); for (let i = 0; i < n; i++) out[i] = this.value(); return out; }
  map(n) {
    const out = {};
    for (let i = 0; i < n; i++) { const k = this.value(); out[k] = this.value(); }
    return out;
  }
  value() {
    const t = this.u8();
    if (t < 0x80) return t;
    if (t < 0x90) return this.map(t & 0x0f);
    if (t < 0xa0) return this.array(t & 0x0f);
    if (t < 0xc0) return this.str(t & 0x1f);
    if (t >= 0xe0) return t - 0x100;
    switch (t) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return this.bytes(this.u8()).slice();
      case 0xc5: return this.bytes(this.num("getUint16", 2)).slice();
      case 0xc6: return this.bytes(this.num("getUint32", 4)).slice();
      case 0xca: return this.num("getFloat32", 4);
      case 0xcb: return this.num("getFloat64", 8);
      case 0xcc: return this.u8();
      case 0xcd: return this.num("getUint16", 2);
      case 0xce: return this.num("getUint32", 4);
      case 0xcf: return Number(this.num("getBigUint64", 8));
      case 0xd0: return this.num("getInt8", 1);
      case 0xd1: return this.num("getInt16", 2);
      case 0xd2: return this.num("getInt32", 4);
      case 0xd3: return Number(this.num("getBigInt64", 8));
      case 0xd9: return this.str(this.u8());
      case 0xda: return this.str(this.num("getUint16", 2));
      case 0xdb: return this.str(this.num("getUint32", 4));
      case 0xdc: return this.array(this.num("getUint16", 2));
      case 0xdd: return this.array(this.num("getUint32", 4));
      case 0xde: return this.map(this.num("getUint16", 2));
      case 0xdf: return this.map(this.num("getUint32", 4));
      default: throw new TypeError(`msgpack: unsupported type byte 0x${t.toString(16)}`);
    }
  }
}

/** Decode one msgpack value from an ArrayBuffer or Uint8Array (extra bytes are an error). */
export function decode(data) {
  const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
  const r = new Reader(bytes);
  const out = r.value();
  if (r.pos !== bytes.length) throw new RangeError("msgpack: extra bytes after the value");
  return out;
}

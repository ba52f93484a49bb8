// Output files: the transcript as txt / srt / vtt, the speech as a WAV file, and downloads.

const CUE_WORDS = 8;
const CUE_SECONDS = 4.0;

function stamp(seconds, sep) {
  const ms = Math.max(0, Math.round(seconds * 1000));
  const h = Math.floor(ms / 3600000);
  const m = Math.floor((ms % 3600000) / 60000);
  const s = Math.floor((ms % 60000) / 1000);
  const pad = (n, w) => String(n).padStart(w, "0");
  return `${pad(h, 2)}:${pad(m, 2)}:${pad(s, 2)}${sep}${pad(ms % 1000, 3)}`;
}

/** Words ({text, start, end, turnEnd}) grouped into subtitle cues (a turn end closes a cue). */
export function cues(words) {
  const out = [];
  let cur = [];
  for (const w of words) {
    if (cur.length && (cur.length >= CUE_WORDS || w.start - cur[0].start > CUE_SECONDS)) {
      out.push(cur);
      cur = [];
    }
    cur.push(w);
    if (w.turnEnd) { out.push(cur); cur = []; }
  }
  if (cur.length) out.push(cur);
  return out.map((ws) => ({
    start: ws[0].start,
    end: Math.max(ws[ws.length - 1].end ?? ws[ws.length - 1].start, ws[0].start),
    text: ws.map((w) => w.text).join(" "),
  }));
}

export function toTxt(words) {
  return cues(words).map((c) => c.text).join("\n") + (words.length ? "\n" : "");
}

export function toSrt(words) {
  return cues(words)
    .map((c, i) => `${i + 1}\n${stamp(c.start, ",")} --> ${stamp(c.end, ",")}\n${c.text}\n`)
    .join("\n");
}

export function toVtt(words) {
  const body = cues(words).map((c) => `${stamp(c.start, ".")} --> ${stamp(c.end, ".")}\n${c.text}\n`);
  return ["WEBVTT\n", ...body].join("\n");
}

/** Mono float32 samples as a WAV file (IEEE float, so the samples are kept exactly). */
export function wavBlob(pcm, sampleRate) {
  const data = pcm.length * 4;
  const buf = new ArrayBuffer(44 + data);
  const v = new DataView(buf);
  const ascii = (pos, s) => { for (let i = 0; i < s.length; i++) v.setUint8(pos + i, s.charCodeAt(i)); };
  ascii(0, "RIFF"); v.setUint32(4, 36 + data, true); ascii(8, "WAVE");
  ascii(12, "fmt "); v.setUint32(16, 16, true); v.setUint16(20, 3, true); v.setUint16(22, 1, true);
  v.setUint32(24, sampleRate, true); v.setUint32(28, sampleRate * 4, true);
  v.setUint16(32, 4, true); v.setUint16(34, 32, true);
  ascii(36, "data"); v.setUint32(40, data, true);
  new Float32Array(buf, 44).set(pcm);
  return new Blob([buf], { type: "audio/wav" });
}

/** Offer `blob` as a download named `name`. */
export function download(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

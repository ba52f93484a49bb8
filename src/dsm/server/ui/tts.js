// The speech view: text, voice, CFG and temperature -> the TTS WebSocket (PcmMessagePack);
// audio played as it streams, the words highlighted as they are spoken, the whole as a WAV file.

import { openSession } from "./conn.js";
import { download, wavBlob } from "./formats.js";

const $ = (id) => document.getElementById(id);
const START_LEAD_S = 0.1; // scheduling margin before the first chunk plays

export function initTts(ctx) {
  const cfg = ctx.config.tts;
  const rate = ctx.config.sample_rate;
  const status = $("tts-status");
  let session = null;
  let audio = null;
  let chunks = [];
  let words = [];
  let spans = [];
  let startAt = null; // audio-clock time of the first sample
  let nextAt = 0;
  let frames = 0;
  let firstMs = null;
  let raf = 0;

  for (const name of cfg.voices) $("voice").add(new Option(name, name));
  if (!cfg.voices.length) $("voice").add(new Option("server default", ""));
  const values = cfg.cfg_values.length ? cfg.cfg_values : [cfg.cfg];
  for (const v of values) $("cfg").add(new Option(String(v), String(v), false, v === cfg.cfg));
  if (!cfg.cfg_values.length) {
    $("cfg").disabled = true;
    $("cfg").title = "this checkpoint's guidance strength is set by the server";
  }
  $("temperature").value = String(cfg.temperature);

  const state = () => {
    const parts = [];
    if (firstMs !== null) parts.push(`first audio in ${Math.round(firstMs)} ms`);
    if (frames) parts.push(`${frames} frames, ${((frames * 1920) / rate).toFixed(2)} s`);
    $("tts-state").textContent = parts.join(" · ");
  };

  function highlight() {
    if (!audio) return; // stopped
    if (startAt === null) { if (session) raf = requestAnimationFrame(highlight); return; }
    const played = audio.currentTime - startAt;
    words.forEach((w, i) => spans[i].classList.toggle("spoken", w.start <= played));
    if (session || played < nextAt - startAt) raf = requestAnimationFrame(highlight);
  }

  function onAudio(pcm) {
    const samples = Float32Array.from(pcm);
    chunks.push(samples);
    frames += 1;
    if (firstMs === null) firstMs = performance.now() - sentAt;
    const buffer = audio.createBuffer(1, samples.length, rate);
    buffer.copyToChannel(samples, 0);
    const src = audio.createBufferSource();
    src.buffer = buffer;
    src.connect(audio.destination);
    if (startAt === null) { startAt = audio.currentTime + START_LEAD_S; nextAt = startAt; }
    const at = Math.max(nextAt, audio.currentTime);
    src.start(at);
    nextAt = at + samples.length / rate;
    state();
  }

  function onText(msg) {
    words.push({ text: msg.text, start: msg.start_s, end: msg.stop_s });
    const span = document.createElement("span");
    span.className = "word";
    span.append(msg.text);
    const t = document.createElement("small");
    t.textContent = `${msg.start_s.toFixed(2)} s`;
    span.append(t);
    spans.push(span);
    $("spoken").append(span);
  }

  function done(err) {
    session = null;
    $("play-button").disabled = false;
    $("stop-button").disabled = true;
    $("wav-button").disabled = chunks.length === 0;
    if (err) ctx.fail(status, err, play);
    state();
  }

  let sentAt = 0;
  async function play() {
    ctx.showStatus(status, "");
    const text = $("tts-text").value.trim();
    if (!text) { ctx.showStatus(status, "Type some text to speak first."); $("tts-text").focus(); return; }
    const temperature = Number($("temperature").value);
    if (!Number.isFinite(temperature) || temperature < 0 || temperature > 2) {
      ctx.showStatus(status, "Temperature must be a number from 0 (greedy) to 2.");
      $("temperature").focus();
      return;
    }
    if (audio) audio.close();
    audio = new AudioContext();
    chunks = []; words = []; spans = []; frames = 0; firstMs = null; startAt = null;
    $("spoken").replaceChildren();
    $("play-button").disabled = true;
    $("wav-button").disabled = true;
    state();
    await ctx.ensureKey();
    const params = { format: "PcmMessagePack", voice: $("voice").value || null, temperature };
    if (cfg.cfg_values.length) params.cfg = $("cfg").value;
    sentAt = performance.now();
    try {
      session = await openSession(cfg.path, params, {
        auth: ctx.config.auth,
        handlers: {
          message: (msg) => { if (msg.type === "Audio") onAudio(msg.pcm); else if (msg.type === "Text") onText(msg); },
          end: () => done(null),
          fail: (err) => done(err),
        },
      });
    } catch (err) {
      done(err);
      return;
    }
    $("stop-button").disabled = false;
    for (const word of text.split(/\s+/)) session.send({ type: "Text", text: word });
    session.send({ type: "Eos" });
    cancelAnimationFrame(raf);
    raf = requestAnimationFrame(highlight);
  }

  function stop() {
    if (session) session.close();
    if (audio) { audio.close(); audio = null; }
    done(null);
  }

  $("play-button").addEventListener("click", play);
  $("stop-button").addEventListener("click", stop);
  $("wav-button").addEventListener("click", () => {
    const n = chunks.reduce((a, c) => a + c.length, 0);
    const pcm = new Float32Array(n);
    let pos = 0;
    for (const c of chunks) { pcm.set(c, pos); pos += c.length; }
    download(wavBlob(pcm, rate), "speech.wav");
  });
}

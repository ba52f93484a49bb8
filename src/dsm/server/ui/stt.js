// The transcription view: microphone or file -> the STT WebSocket -> words with their times,
// the semantic-VAD pause probability and end-of-turn marks; copy / download the transcript.

import { openSession } from "./conn.js";
import { download, toSrt, toTxt, toVtt } from "./formats.js";

const $ = (id) => document.getElementById(id);
const FLUSH_MARKER = 1;
const FLUSH_SECONDS = 1.0; // silence before the flush marker: a word ends after its last sound

export function initStt(ctx) {
  const cfg = ctx.config.stt;
  const rate = ctx.config.sample_rate;
  const frameSize = ctx.config.frame_size;
  const status = $("stt-status");
  const words = [];
  let session = null;
  let capture = null; // {audio, node, stream}
  let armed = false;
  let busy = false; // a mic or file session is running
  let sentSamples = 0; // audio samples sent in this session (before the flush)

  // End of turn as dsm's EndOfTurnDetector (the server's VadOptions): one head's pause
  // probability over the threshold, re-armed by the next word.
  const vadHead = cfg.vad_head;
  const vadThreshold = cfg.vad_threshold;
  if (cfg.vad) $("vad").hidden = false;

  const state = (text) => { $("stt-state").textContent = text; };

  function addWord(text, start) {
    const span = document.createElement("span");
    const label = document.createTextNode(text);
    const w = { text, start, end: null, turnEnd: false, label };
    words.push(w);
    span.className = "word";
    span.append(label);
    const t = document.createElement("small");
    t.textContent = `${start.toFixed(2)} s`;
    span.append(t);
    $("transcript").append(span);
    armed = true;
  }

  // A Word with `continues` is a piece without a word-start marker: it extends the last word.
  function continueWord(text) {
    const w = words[words.length - 1];
    w.text += text;
    w.label.textContent = w.text;
  }

  function markTurnEnd() {
    if (!words.length) return;
    words[words.length - 1].turnEnd = true;
    const mark = document.createElement("span");
    mark.className = "turn-end";
    mark.textContent = "end of turn";
    $("transcript").append(mark);
  }

  function onMessage(msg) {
    if (!session || !session.open) return; // after the flush marker: the rest is the padding's
    if (msg.type === "Word" && msg.continues && words.length) continueWord(msg.text);
    else if (msg.type === "Word") addWord(msg.text, msg.start_time);
    else if (msg.type === "EndWord" && words.length) words[words.length - 1].end = msg.stop_time;
    else if (msg.type === "Step" && cfg.vad && msg.prs && msg.prs.length > vadHead) {
      const p = msg.prs[vadHead];
      $("pause-bar").value = p;
      $("pause-value").textContent = p.toFixed(2);
      if (armed && p > vadThreshold) { armed = false; markTurnEnd(); }
    } else if (msg.type === "Marker" && msg.id === FLUSH_MARKER) {
      session.close();
    }
  }

  function setBusy(on, micOn = false) {
    busy = on;
    $("mic-button").setAttribute("aria-pressed", String(micOn));
    $("mic-button").textContent = micOn ? "Stop microphone" : "Start microphone";
    $("mic-button").disabled = on && !micOn;
    $("file-input").disabled = on;
  }

  function stopCapture() {
    if (!capture) return;
    for (const track of capture.stream.getTracks()) track.stop();
    capture.audio.close();
    capture = null;
  }

  function finish(err, retry) {
    stopCapture();
    setBusy(false);
    if (err) { state(""); ctx.fail(status, err, retry); }
    else state(`Done: ${words.length} words.`);
  }

  function clear() {
    words.length = 0;
    armed = false;
    $("transcript").replaceChildren();
  }

  async function connect(retry) {
    await ctx.ensureKey();
    clear(); // one transcript per session: its times start at 0
    return openSession(cfg.path, {}, {
      auth: ctx.config.auth,
      handlers: {
        message: onMessage,
        end: () => { session = null; finish(null); },
        fail: (err) => { session = null; finish(err, retry); },
      },
    });
  }

  /** After the last audio (`sent` samples): silence to a whole frame and FLUSH_SECONDS more, a
   * marker, then silence for the model's delay. The server returns the marker once the model
   * has heard the audio before it (the words of the speech are out by then); the page closes. */
  function flush(sent) {
    const silence = (frames) => {
      for (let i = 0; i < frames; i++) session.send({ type: "Audio", pcm: new Float32Array(frameSize) });
    };
    const pad = (frameSize - (sent % frameSize)) % frameSize;
    if (pad) session.send({ type: "Audio", pcm: new Float32Array(pad) });
    silence(Math.ceil((FLUSH_SECONDS * rate) / frameSize));
    session.send({ type: "Marker", id: FLUSH_MARKER });
    silence(Math.ceil(((cfg.delay_seconds + 0.5) * rate) / frameSize));
    state("Finishing…");
  }

  async function startMic() {
    ctx.showStatus(status, "");
    setBusy(true, true);
    let stream;
    try {
      // The model hears the room as it is: no gain control, echo cancelling or denoising.
      const raw = { echoCancellation: false, noiseSuppression: false, autoGainControl: false };
      stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, ...raw } });
    } catch (e) {
      setBusy(false);
      const denied = e && (e.name === "NotAllowedError" || e.name === "SecurityError");
      const text = denied
        ? "Microphone access was denied. Allow the microphone for this site in the browser's settings, then retry."
        : `No microphone could be opened (${e && e.name ? e.name : e}).`;
      ctx.showStatus(status, text, [{ label: "Retry", run: startMic }]);
      return;
    }
    try {
      session = await connect(startMic);
    } catch (err) {
      for (const track of stream.getTracks()) track.stop();
      finish(err, startMic);
      return;
    }
    const audio = new AudioContext();
    await audio.audioWorklet.addModule("/ui/capture-worklet.js");
    const source = audio.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(audio, "dsm-capture", {
      processorOptions: { targetRate: rate, frameSize },
    });
    const mute = audio.createGain();
    mute.gain.value = 0;
    node.port.onmessage = (event) => {
      if (!session) return;
      const pcm = event.data.pcm;
      if (pcm.length) session.send({ type: "Audio", pcm });
      sentSamples += pcm.length;
      if (event.data.type === "flushed") {
        stopCapture();
        flush(sentSamples);
      }
    };
    source.connect(node).connect(mute).connect(audio.destination);
    capture = { audio, node, stream };
    sentSamples = 0;
    state("Listening…");
  }

  function stopMic() {
    if (capture) capture.node.port.postMessage({ type: "flush" });
    $("mic-button").disabled = true;
  }

  async function decodeFile(file) {
    const data = await file.arrayBuffer();
    const probe = new AudioContext();
    let decoded;
    try { decoded = await probe.decodeAudioData(data); } finally { probe.close(); }
    const length = Math.ceil(decoded.duration * rate);
    const offline = new OfflineAudioContext(1, Math.max(1, length), rate);
    const src = offline.createBufferSource();
    src.buffer = decoded;
    src.connect(offline.destination);
    src.start();
    return (await offline.startRendering()).getChannelData(0);
  }

  async function sendFile(file) {
    ctx.showStatus(status, "");
    const retry = () => sendFile(file);
    setBusy(true);
    state(`Reading ${file.name}…`);
    let pcm;
    try { pcm = await decodeFile(file); } catch (e) {
      setBusy(false);
      state("");
      ctx.showStatus(status, `The browser cannot decode ${file.name}: choose another audio file.`);
      return;
    }
    try { session = await connect(retry); } catch (err) { finish(err, retry); return; }
    state(`Transcribing ${file.name} (${(pcm.length / rate).toFixed(1)} s)…`);
    for (let i = 0; i < pcm.length; i += frameSize) {
      session.send({ type: "Audio", pcm: pcm.slice(i, i + frameSize) });
    }
    flush(pcm.length);
  }

  $("mic-button").addEventListener("click", () => (capture ? stopMic() : busy ? null : startMic()));
  $("file-input").addEventListener("change", (event) => {
    const file = event.target.files[0];
    event.target.value = "";
    if (file && !busy) sendFile(file);
  });
  $("copy-button").addEventListener("click", async () => {
    try { await navigator.clipboard.writeText(toTxt(words)); state("Copied."); } catch (e) {
      state("The browser refused the clipboard: use Download .txt.");
    }
  });
  const save = (fn, ext, type) => download(new Blob([fn(words)], { type }), `transcript.${ext}`);
  $("txt-button").addEventListener("click", () => save(toTxt, "txt", "text/plain"));
  $("srt-button").addEventListener("click", () => save(toSrt, "srt", "application/x-subrip"));
  $("vtt-button").addEventListener("click", () => save(toVtt, "vtt", "text/vtt"));
  $("clear-button").addEventListener("click", () => { clear(); state(""); });
}

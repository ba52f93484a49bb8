// The page's entry point: reads /api/ui_config, shows the views the server has modules for,
// asks for the API key once when the server needs one, and shows failures with a way out.

import { keys } from "./conn.js";
import { initStt } from "./stt.js";
import { initTts } from "./tts.js";

const $ = (id) => document.getElementById(id);

/** Show `text` in the status element `el` with buttons [{label, run}] (none: hide it). */
export function showStatus(el, text, actions = []) {
  el.replaceChildren();
  if (!text) { el.hidden = true; return; }
  const span = document.createElement("span");
  span.className = "status-text";
  span.textContent = text;
  el.append(span);
  for (const { label, run } of actions) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "secondary";
    b.textContent = label;
    b.addEventListener("click", () => { showStatus(el, ""); run(); });
    el.append(b);
  }
  el.hidden = false;
}

let keyWaiters = [];

function askKey(message) {
  $("key-message").textContent = message || "It is kept for this browser tab only.";
  $("key-form").hidden = false;
  $("key-input").value = "";
  $("key-input").focus();
}

function setupKey(config) {
  if (!config.auth) return () => Promise.resolve();
  $("key-button").hidden = false;
  $("key-button").addEventListener("click", () => askKey());
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) return;
    keys.set(key);
    $("key-form").hidden = true;
    const waiters = keyWaiters;
    keyWaiters = [];
    for (const resolve of waiters) resolve();
  });
  return () => {
    if (keys.get()) return Promise.resolve();
    askKey();
    return new Promise((resolve) => keyWaiters.push(resolve));
  };
}

function setupTabs(config) {
  const views = [];
  if (config.stt) views.push(["tab-stt", "view-stt"]);
  if (config.tts) views.push(["tab-tts", "view-tts"]);
  const select = (tab) => {
    for (const [t, v] of views) {
      const on = t === tab;
      $(t).setAttribute("aria-selected", String(on));
      $(t).tabIndex = on ? 0 : -1;
      $(v).hidden = !on;
    }
  };
  views.forEach(([t], i) => {
    $(t).hidden = false;
    $(t).addEventListener("click", () => select(t));
    $(t).addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!step) return;
      const next = views[(i + step + views.length) % views.length][0];
      select(next);
      $(next).focus();
    });
  });
  const wanted = window.location.hash === "#tts" ? "tab-tts" : "tab-stt";
  select(views.some(([t]) => t === wanted) ? wanted : views[0][0]);
}

async function main() {
  let config;
  try {
    const r = await fetch("/api/ui_config");
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    config = await r.json();
  } catch (e) {
    $("loading").hidden = true;
    showStatus($("global-status"), `Cannot read the server's settings (${e.message}).`, [
      { label: "Retry", run: () => window.location.reload() },
    ]);
    return;
  }
  $("loading").hidden = true;
  if (!config.stt && !config.tts) {
    showStatus($("global-status"), "This server runs no model.");
    return;
  }
  const ensureKey = setupKey(config);
  const ctx = {
    config,
    ensureKey,
    showStatus,
    /** Show a SessionError (or any error) in `el`, with the way to retry. */
    fail(el, err, retry) {
      if (err && err.kind === "key") {
        keys.clear();
        showStatus(el, err.message, [{ label: "Enter API key", run: () => { askKey(err.message); ensureKey().then(retry); } }]);
      } else {
        showStatus(el, (err && err.message) || String(err), [{ label: "Retry", run: retry }]);
      }
    },
  };
  if (config.stt) initStt(ctx);
  if (config.tts) initTts(ctx);
  setupTabs(config);
  document.body.dataset.ready = "true";
}

main();

// One WebSocket session on a Kyutai route: the API key (asked for once, sent as the auth_id
// query parameter: browsers cannot set WebSocket headers), Ready/Error before the stream, and
// a clear message for every way it can fail.

import { decode, encode } from "./msgpack.js";

const KEY_STORE = "dsm-api-key";

export const keys = {
  get() { return sessionStorage.getItem(KEY_STORE); },
  set(key) { sessionStorage.setItem(KEY_STORE, key); },
  clear() { sessionStorage.removeItem(KEY_STORE); },
};

/** A failure to show: `text` for people, `kind` for the page (key | busy | lost | connect). */
export class SessionError extends Error {
  constructor(kind, text) {
    super(text);
    this.kind = kind;
  }
}

const FULL_TEXT = "The server is full (no free channels). Try again in a moment.";

function url(path, params, key) {
  const u = new URL(path, window.location.href);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined) u.searchParams.set(k, String(v));
  if (key) u.searchParams.set("auth_id", key);
  return u.toString();
}

/** Why a WebSocket did not open: the key (checked on an HTTP route that needs it) or the network. */
async function whyNotOpened(auth, key) {
  try {
    if (auth) {
      const r = await fetch("/v1/models", { headers: { Authorization: `Bearer ${key || ""}` } });
      if (r.status === 401) return new SessionError("key", "The server refused the API key.");
    } else {
      await fetch("/health/live");
    }
  } catch (e) {
    return new SessionError("connect", "The server cannot be reached. Check that it is running.");
  }
  return new SessionError("connect", "The server did not accept the connection.");
}

function closeText(event) {
  const base = {
    1001: "The server is shutting down",
    1008: "The server ended the session",
    1011: "The server failed",
    1013: FULL_TEXT.slice(0, -1),
  }[event.code] || `Connection lost (code ${event.code})`;
  const reason = event.reason && !base.toLowerCase().includes(event.reason.toLowerCase().replace(/\.$/, ""))
    ? `: ${event.reason}` : "";
  return `${base}${reason}.`.replace(/\.\.$/, ".");
}

/**
 * Open a session. `handlers.message(msg)` gets each decoded message after Ready (or each raw
 * ArrayBuffer with `raw`), `handlers.end()` a normal close, `handlers.fail(SessionError)` any
 * failure. Resolves once the server is Ready (or the socket is open when `noReady`).
 */
export function openSession(path, params, { auth, handlers, noReady = false }) {
  const key = auth ? keys.get() : null;
  const ws = new WebSocket(url(path, params, key));
  ws.binaryType = "arraybuffer";
  let ready = false;
  let finished = false;
  const session = {
    ws,
    send(message) { if (ws.readyState === WebSocket.OPEN) ws.send(encode(message)); },
    close() { finished = true; if (ws.readyState <= WebSocket.OPEN) ws.close(1000); },
    get open() { return ws.readyState === WebSocket.OPEN && !finished; },
    finish() { finished = true; },
  };
  return new Promise((resolve, reject) => {
    let opened = false;
    ws.onopen = () => {
      opened = true;
      if (noReady) { ready = true; resolve(session); }
    };
    ws.onmessage = (event) => {
      let msg;
      try { msg = decode(event.data); } catch (e) {
        handlers.fail(new SessionError("lost", `The server sent a message the page cannot read: ${e.message}`));
        session.close();
        return;
      }
      if (!ready) {
        if (msg.type === "Ready") { ready = true; resolve(session); return; }
        const text = msg.type === "Error" && /no free channels/i.test(msg.message) ? FULL_TEXT
          : `The server refused the session: ${msg.message || msg.type}`;
        finished = true;
        reject(new SessionError(/no free channels/i.test(text) ? "busy" : "connect", text));
        return;
      }
      if (msg.type === "Error") {
        finished = true;
        handlers.fail(new SessionError("lost", `The server reported an error: ${msg.message}`));
        return;
      }
      handlers.message(msg);
    };
    ws.onclose = async (event) => {
      if (!opened) {
        reject(await whyNotOpened(auth, key));
        return;
      }
      if (!ready) {
        if (!finished) reject(new SessionError(event.code === 1013 ? "busy" : "lost", closeText(event)));
        return;
      }
      const wasFinished = finished;
      finished = true;
      if (event.code === 1000 || (wasFinished && event.code === 1005)) handlers.end();
      else handlers.fail(new SessionError("lost", closeText(event)));
    };
  });
}

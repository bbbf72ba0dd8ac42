// esl-cb pages: the token (this tab's sessionStorage), API calls, problem messages, the event stream.
"use strict";
const ESLCB = (() => {
  const KEY = "esl-cb-token";
  const token = () => sessionStorage.getItem(KEY);
  const signedIn = () => !!token();
  let clockOffset = 0;            // server time - this browser's time, in ms
  let clockSynced = false;

  function el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  function signOut() {
    sessionStorage.removeItem(KEY);
    location.assign("/ui/signin?next=" + encodeURIComponent(location.pathname));
  }

  function requireSignIn() {
    if (!signedIn()) { signOut(); return false; }
    const out = document.getElementById("signout");
    if (out) out.addEventListener("click", signOut);
    return true;
  }

  function say(text, isError = true) {
    const m = document.getElementById("message");
    if (!m) return;
    m.textContent = text || "";
    m.hidden = !text;
    m.classList.toggle("ok", !isError);
  }

  async function api(path, options = {}) {
    const headers = Object.assign({"Authorization": "Bearer " + token()}, options.headers || {});
    if (options.json !== undefined) { headers["Content-Type"] = "application/json"; options.body = JSON.stringify(options.json); }
    const r = await fetch(path, Object.assign({}, options, {headers}));
    const date = r.headers.get("Date");
    if (date && !clockSynced) clockOffset = Date.parse(date) - Date.now();      // to the second, until synced
    if (r.status === 401) { signOut(); throw new Error("signed out"); }
    const type = r.headers.get("Content-Type") || "";
    const body = type.includes("json") ? await r.json() : null;
    if (!r.ok) {
      const what = body && body.detail ? `${body.detail} [${body.code}]` : `HTTP ${r.status}`;
      throw new Error(what);
    }
    return body;
  }

  // Server-Sent Events over fetch (EventSource cannot send the bearer header), reconnecting.
  async function events(onEvent) {
    const live = document.getElementById("live");
    for (;;) {
      try {
        const r = await fetch("/api/v1/events", {headers: {"Authorization": "Bearer " + token()}});
        if (r.status === 401) { signOut(); return; }
        if (!r.ok) throw new Error("HTTP " + r.status);
        const reader = r.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const {value, done} = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, {stream: true});
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            let kind = "message", data = "";
            for (const line of block.split("\n")) {
              if (line.startsWith("event: ")) kind = line.slice(7);
              else if (line.startsWith("data: ")) data += line.slice(6);
            }
            if (!data) continue;
            if (kind === "hello") { live.textContent = "● Live"; live.className = "live on"; }
            onEvent(kind, JSON.parse(data));
          }
        }
      } catch (e) { /* reconnect below */ }
      live.textContent = "○ Reconnecting…"; live.className = "live off";
      await new Promise(res => setTimeout(res, 2000));
      onEvent("resync", {});
    }
  }

  const now = () => Date.now() + clockOffset;
  // The server's time (an answer's `time`, to the microsecond) against this browser's, taken half-way
  // through the request: countdowns and waits are then right to a few ms whatever the PC's clock says.
  function syncClock(iso, sentAt, receivedAt) {
    const server = Date.parse(iso);
    if (isNaN(server)) return;
    clockOffset = server - (sentAt + receivedAt) / 2;
    clockSynced = true;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || isNaN(seconds)) return "";
    const s = Math.max(0, Math.round(seconds));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return h ? `${h}h ${String(m).padStart(2, "0")}m` : `${m}:${String(r).padStart(2, "0")}`;
  }

  // Seconds until an ISO time (negative: past), by the server's clock.
  const until = iso => iso ? (Date.parse(iso) - now()) / 1000 : null;
  const since = iso => iso ? (now() - Date.parse(iso)) / 1000 : null;

  // Re-render without losing the keyboard focus: the focused element is found again by data-key.
  function keepFocus(render) {
    const key = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.key : null;
    render();
    if (key) { const again = document.querySelector(`[data-key="${CSS.escape(key)}"]`); if (again) again.focus(); }
  }

  function debounce(fn, ms) {
    let timer = null;
    return () => { if (timer) return; timer = setTimeout(() => { timer = null; fn(); }, ms); };
  }

  async function whoami() {
    const me = await api("/api/v1/me");
    const who = document.getElementById("who");
    if (who) who.textContent = `${me.name} (${me.role})`;
    return me;
  }

  return {KEY, token, el, api, events, say, signOut, requireSignIn, duration, until, since, keepFocus, debounce,
          whoami, now, syncClock};
})();

// Berth's dashboard. Plain DOM and the control API on the same origin,
// nothing else: no framework, no build step, nothing from another site.
// Under `berth serve` the API accepts the session cookie /ui/login sets;
// every request that changes something carries X-Berth-UI, without which
// the API refuses a cookie-signed request (cross-site request forgery).
"use strict";

const STATES = ["scheduled", "starting", "ready", "terminating", "terminated"];
const rank = (s) => STATES.indexOf(s);
const $ = (sel) => document.querySelector(sel);
const HOUR = 3600e3;
const BUCKET = 5 * 60e3;
const MAX_LOG_CHARS = 200000;

const backends = new Map(); // backend_id → the latest record seen
let stream = null; // EventSource of /v1/events (every backend's changes)
let retryTimer = 0;
let detail = null; // the open backend page: {id, events, logs}
let view = "";

class APIError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code;
    this.field = e.field;
  }
}

async function errorOf(resp) {
  let body = null;
  try { body = await resp.json(); } catch { /* not JSON */ }
  return new APIError(resp.status, body);
}

// api sends one request to the control API and returns its JSON (or
// null). A 401 means the session ended: the sign-in form comes back.
async function api(method, path, body) {
  const init = { method, headers: { "X-Berth-UI": "1" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  if (resp.status === 401 && !path.startsWith("/ui/")) showLogin();
  if (!resp.ok) throw await errorOf(resp);
  if (resp.status === 204) return null;
  return resp.json();
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "dataset") Object.assign(e.dataset, v);
    else if (k === "class") e.className = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== undefined && c !== null) e.append(c);
  return e;
}

function announce(msg) {
  const a = $("#announce");
  a.textContent = "";
  setTimeout(() => { a.textContent = msg; }, 50);
}

// ---- time ----

const ms = (t) => (t ? Date.parse(t) : NaN);

function clock(t) {
  const d = new Date(t);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function age(t, now) {
  const s = Math.max(0, Math.round((now - ms(t)) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(t).toLocaleDateString();
}

function timeEl(t, text) {
  return el("time", { datetime: t, title: new Date(t).toLocaleString() }, text);
}

// ---- sign-in ----

function showLogin() {
  closeStream();
  closeDetail();
  show("view-login");
  $("#logout").hidden = true;
  $("#login-key").focus();
}

$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = $("#login-key");
  $("#login-error").textContent = "";
  try {
    await api("POST", "/ui/login", { key: input.value });
  } catch (e) {
    $("#login-error").textContent = e.status === 401 ? "That is not this Berth's API key." : `Sign-in failed: ${e.message}`;
    input.select();
    return;
  }
  input.value = "";
  $("#logout").hidden = false;
  announce("Signed in");
  openStream();
  route();
});

$("#logout").addEventListener("click", async () => {
  try { await api("POST", "/ui/logout"); } catch { /* the cookie is gone either way once it expires */ }
  backends.clear();
  showLogin();
  announce("Signed out");
});

// ---- the live list ----

// openStream follows every backend's changes, and lists them all once the
// stream is open (and again whenever it reopens), so nothing that changed
// in between is missed.
function openStream() {
  closeStream();
  const es = new EventSource("/v1/events");
  stream = es;
  es.addEventListener("open", () => {
    setConn("live", "Live");
    api("GET", "/v1/backends").then((r) => r.backends.forEach(merge)).catch((e) => setConn("retrying", `List failed: ${e.message}`));
  });
  es.addEventListener("backend", (e) => merge(JSON.parse(e.data)));
  es.addEventListener("error", () => {
    if (es !== stream) return;
    setConn("retrying", "Reconnecting…");
    if (es.readyState === EventSource.CLOSED) {
      // Refused (signed out, or the server restarting): ask why, then retry.
      fetch("/ui/session").then((r) => r.json()).then((s) => {
        if (es !== stream) return;
        if (!s.signed_in) showLogin();
        else retryTimer = setTimeout(openStream, 2000);
      }, () => { if (es === stream) retryTimer = setTimeout(openStream, 2000); });
    }
  });
}

function closeStream() {
  clearTimeout(retryTimer);
  if (stream) stream.close();
  stream = null;
  setConn("off", "Not connected");
}

function setConn(state, text) {
  const c = $("#conn");
  c.dataset.state = state;
  c.textContent = text;
}

// merge keeps a backend's newest record. States only move forward, so a
// record with an earlier state than the one held is a late answer.
function merge(b) {
  const old = backends.get(b.backend_id);
  if (old && rank(old.state) > rank(b.state)) return;
  backends.set(b.backend_id, b);
  if (detail && detail.id === b.backend_id && old && old.state !== b.state) announce(`Backend ${b.backend_id} is ${b.state}`);
  scheduleRender();
}

let renderPending = false;
function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  setTimeout(() => {
    renderPending = false;
    if (view === "view-list") renderList();
    if (view === "view-backend" && detail) renderBackend();
    if (view === "view-state") renderLive();
  }, 0);
}

function filters() {
  return { key: $("#f-key").value.trim(), state: $("#f-state").value, node: $("#f-node").value };
}

function matches(b, f) {
  if (f.key && !(b.key || "").includes(f.key)) return false;
  if (f.state === "live" && b.state === "terminated") return false;
  if (f.state && f.state !== "live" && b.state !== f.state) return false;
  if (f.node && (b.node || "") !== f.node) return false;
  return true;
}

const rows = new Map(); // backend_id → its <tr>, kept so focus survives updates

function renderList() {
  const now = Date.now();
  const all = [...backends.values()].sort((a, b) => ms(b.created_at) - ms(a.created_at) || (a.backend_id < b.backend_id ? 1 : -1));
  renderNodes(all);
  renderTotals(all, now);
  const f = filters();
  const shown = all.filter((b) => matches(b, f));
  const tbody = $("#backends tbody");
  const keep = new Set(shown.map((b) => b.backend_id));
  for (const [id, tr] of rows) if (!keep.has(id)) { tr.remove(); rows.delete(id); }
  shown.forEach((b, i) => {
    let tr = rows.get(b.backend_id);
    if (!tr) {
      tr = el("tr");
      rows.set(b.backend_id, tr);
    }
    fillRow(tr, b, now);
    // Move a row only when it is out of place: moving a row drops focus.
    if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
  });
  $("#list-empty").hidden = shown.length > 0;
}

// stateText is a backend's state as shown: a frozen backend (idle_action
// freeze) is ready, and says so.
function stateText(b) {
  return b.frozen_at ? `${b.state} · frozen` : b.state;
}

function fillRow(tr, b, now) {
  const sig = [b.state, b.frozen_at, b.reason, b.exit_code, b.node, Math.floor((now - ms(b.created_at)) / 10000)].join("|");
  if (tr.dataset.sig === sig) return;
  tr.dataset.sig = sig;
  tr.dataset.id = b.backend_id;
  tr.dataset.state = b.state;
  const link = tr.querySelector("a.bk");
  const cells = [
    // Only a new row's: an existing link put in a new cell would leave
    // the row's own first cell empty.
    link ? null : el("td", {}, el("a", { class: "bk", href: `#/backends/${encodeURIComponent(b.backend_id)}` }, el("code", {}, b.backend_id))),
    el("td", {}, b.key ? el("a", { href: `#/state/${encodeURIComponent(b.key)}`, title: `State history of ${b.key}` }, b.key) : el("span", { class: "muted" }, "—")),
    el("td", {}, el("span", { class: "state", dataset: { state: b.state } }, stateText(b))),
    el("td", {}, reasonText(b)),
    el("td", {}, b.node || "—"),
    el("td", {}, b.runtime || "—"),
    el("td", {}, timeEl(b.created_at, age(b.created_at, now))),
  ];
  // The first cell's link is kept, not replaced, in case it has focus.
  if (link) {
    tr.querySelectorAll("td").forEach((td, i) => { if (i > 0) td.remove(); });
    tr.append(...cells.slice(1));
  } else {
    tr.replaceChildren(...cells);
  }
}

function reasonText(b) {
  if (!b.reason) return "";
  return b.exit_code !== undefined && b.exit_code !== null ? `${b.reason} (exit ${b.exit_code})` : b.reason;
}

function renderNodes(all) {
  const sel = $("#f-node");
  const nodes = [...new Set(all.map((b) => b.node || ""))].filter(Boolean).sort();
  const have = [...sel.options].slice(1).map((o) => o.value);
  if (have.join("\n") === nodes.join("\n")) return;
  const cur = sel.value;
  sel.replaceChildren(el("option", { value: "" }, "any"), ...nodes.map((n) => el("option", { value: n }, n)));
  sel.value = nodes.includes(cur) ? cur : "";
}

// series counts spawns, ready and terminations of the last hour in
// 5-minute buckets, oldest first, from the backends' own timestamps.
function series(all, now) {
  const n = HOUR / BUCKET;
  const s = { spawns: new Array(n).fill(0), ready: new Array(n).fill(0), terminations: new Array(n).fill(0) };
  const add = (arr, t) => {
    const i = Math.floor((ms(t) - (now - HOUR)) / BUCKET);
    if (i >= 0 && i < n) arr[i]++;
  };
  for (const b of all) {
    add(s.spawns, b.created_at);
    add(s.ready, b.ready_at);
    add(s.terminations, b.terminated_at);
  }
  return s;
}

const sum = (a) => a.reduce((x, y) => x + y, 0);

function renderTotals(all, now) {
  const count = (fn) => all.filter(fn).length;
  const s = series(all, now);
  const items = [
    ["live", "Live", count((b) => b.state !== "terminated")],
    ["ready", "Ready", count((b) => b.state === "ready")],
    ["starting", "Starting", count((b) => b.state === "scheduled" || b.state === "starting")],
    ["spawns", "Spawned, last hour", sum(s.spawns)],
    ["readied", "Ready, last hour", sum(s.ready)],
    ["terminations", "Terminated, last hour", sum(s.terminations)],
  ];
  $("#totals").replaceChildren(...items.map(([id, label, n]) =>
    el("div", { dataset: { total: id } }, el("dt", {}, label), el("dd", {}, String(n)))));
  renderPlot(s);
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  e.append(...children);
  return e;
}

// renderPlot draws the three series as grouped bars in inline SVG.
function renderPlot(s) {
  const W = 600, H = 150, top = 10, bottom = 20, left = 28;
  const n = s.spawns.length;
  const max = Math.max(1, ...s.spawns, ...s.ready, ...s.terminations);
  const slot = (W - left) / n, bar = slot / 4;
  const y = (v) => top + (H - top - bottom) * (1 - v / max);
  const kids = [
    svg("title", { id: "plot-title" }, "Spawns, ready and terminations in the last hour"),
    svg("desc", { id: "plot-desc" },
      `Per 5 minutes, oldest first. Spawns: ${s.spawns.join(", ")}. Ready: ${s.ready.join(", ")}. Terminations: ${s.terminations.join(", ")}.`),
    svg("line", { class: "axis", x1: left, x2: W, y1: H - bottom, y2: H - bottom }),
    svg("text", { x: left - 4, y: top + 8, "text-anchor": "end" }, String(max)),
    svg("text", { x: left - 4, y: H - bottom, "text-anchor": "end" }, "0"),
    svg("text", { x: left, y: H - 4 }, "−60 min"),
    svg("text", { x: W, y: H - 4, "text-anchor": "end" }, "now"),
  ];
  ["spawns", "ready", "terminations"].forEach((name, k) => {
    s[name].forEach((v, i) => {
      if (!v) return;
      const x = left + i * slot + bar * (k + 0.5);
      kids.push(svg("rect", { class: name, x, y: y(v), width: bar, height: H - bottom - y(v) },
        svg("title", {}, `${v} ${name}, ${60 - i * 5} to ${55 - i * 5} min ago`)));
    });
  });
  const plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": "plot-title plot-desc" }, ...kids);
  const legend = el("div", { class: "legend", "aria-hidden": "true" },
    el("span", { class: "spawns" }, "spawns"), el("span", { class: "ready" }, "ready"), el("span", { class: "terminations" }, "terminations"));
  $("#plot").replaceChildren(plot, legend);
}

for (const id of ["#f-key", "#f-state", "#f-node"]) $(id).addEventListener("input", scheduleRender);
$("#filters").addEventListener("submit", (e) => e.preventDefault());
$("#state-form").addEventListener("submit", (e) => {
  e.preventDefault();
  location.hash = `#/state/${encodeURIComponent($("#state-key").value.trim())}`;
});
// Ages and the plot's window move with the clock; no request is made.
setInterval(() => { if (view === "view-list") renderList(); }, 10000);

// ---- one backend ----

function closeDetail() {
  if (!detail) return;
  if (detail.events) detail.events.close();
  detail.logs.abort();
  detail = null;
}

async function showBackend(id) {
  show("view-backend");
  detail = { id, events: null, logs: new AbortController(), seen: new Set() };
  const d = detail;
  $("#bk-id").textContent = id;
  $("#bk-facts").replaceChildren();
  $("#bk-events").replaceChildren();
  $("#bk-logs").textContent = "";
  $("#bk-spawn").textContent = "";
  $("#bk-msg").textContent = "";
  $("#logs-status").textContent = "";
  let b;
  try {
    b = await api("GET", `/v1/backends/${encodeURIComponent(id)}`);
  } catch (e) {
    if (d === detail) $("#bk-msg").textContent = e.message;
    return;
  }
  if (d !== detail) return;
  merge(b);
  renderBackend();
  $("#bk-spawn").textContent = JSON.stringify(hideSecrets(b.spawn), null, 2);
  followEvents(d);
  followLogs(d);
}

// hideSecrets masks every environment value: they are where secrets go.
function hideSecrets(spawn) {
  const s = structuredClone(spawn || {});
  if (s.env) for (const k of Object.keys(s.env)) s.env[k] = "••••••";
  return s;
}

function renderBackend() {
  const b = backends.get(detail.id);
  if (!b) return;
  const facts = [
    ["State", el("span", { id: "bk-state", class: "state", dataset: { state: b.state } }, stateText(b))],
    ["Reason", reasonText(b) || "—"],
    ["Key", b.key ? el("a", { href: `#/state/${encodeURIComponent(b.key)}` }, b.key) : "—"],
    ["User", b.user || "—"],
    ["Node", b.node || "—"],
    ["Runtime", b.runtime],
    ["Fencing token", String(b.fencing_token)],
    ["Created", timeEl(b.created_at, new Date(b.created_at).toLocaleString())],
    ["Ready", b.ready_at ? timeEl(b.ready_at, new Date(b.ready_at).toLocaleString()) : "—"],
    ["Terminated", b.terminated_at ? timeEl(b.terminated_at, new Date(b.terminated_at).toLocaleString()) : "—"],
    ["Last active", b.last_active_at ? timeEl(b.last_active_at, new Date(b.last_active_at).toLocaleString()) : "—"],
  ];
  $("#bk-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  $("#bk-term").disabled = rank(b.state) >= rank("terminating");
  $("#bk-kill").disabled = b.state === "terminated";
}

// followEvents shows the backend's history, then its changes as they
// happen; the API ends the stream after terminated.
function followEvents(d) {
  const es = new EventSource(`/v1/backends/${encodeURIComponent(d.id)}/events`);
  d.events = es;
  es.addEventListener("state", (e) => {
    if (d.seen.has(e.lastEventId)) return; // a reconnect replays the history
    d.seen.add(e.lastEventId);
    const ev = JSON.parse(e.data);
    $("#bk-events").append(el("li", { dataset: { state: ev.state } },
      timeEl(ev.at, clock(ev.at)),
      el("span", { class: "state", dataset: { state: ev.state } }, ev.state),
      ev.reason ? ` — ${ev.reason}` : "",
      ev.exit_code !== undefined && ev.exit_code !== null ? `, exit ${ev.exit_code}` : "",
      ev.message ? `: ${ev.message}` : ""));
    const b = backends.get(d.id);
    if (b && rank(ev.state) > rank(b.state)) {
      merge({ ...b, state: ev.state, reason: ev.reason || b.reason, exit_code: ev.exit_code ?? b.exit_code });
    }
    if (ev.state === "terminated") es.close();
  });
}

// followLogs streams the backend's output into the page as it is written.
async function followLogs(d) {
  const out = $("#bk-logs");
  const status = $("#logs-status");
  status.textContent = "(following)";
  try {
    const resp = await fetch(`/v1/backends/${encodeURIComponent(d.id)}/logs?follow=true`, { signal: d.logs.signal });
    if (!resp.ok) throw await errorOf(resp);
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const atEnd = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
      let text = out.textContent + value;
      if (text.length > MAX_LOG_CHARS) text = "[… earlier output cut]\n" + text.slice(-MAX_LOG_CHARS);
      out.textContent = text;
      if (atEnd) out.scrollTop = out.scrollHeight;
    }
    if (d === detail) status.textContent = "(ended)";
  } catch (e) {
    if (e.name !== "AbortError" && d === detail) status.textContent = `(stopped: ${e.message})`;
  }
}

async function terminate(hard) {
  const id = detail.id;
  const ok = await askConfirm(hard ? "Terminate hard?" : "Terminate?",
    hard ? `Backend ${id} is killed at once, without its grace period; its final state save still runs.`
      : `Backend ${id} gets its stop signal and its grace period to save and exit.`,
    hard ? "Terminate hard" : "Terminate");
  if (!ok) return;
  try {
    await api("POST", `/v1/backends/${encodeURIComponent(id)}/terminate`, { hard });
    $("#bk-msg").textContent = hard ? "Hard termination requested." : "Termination requested.";
  } catch (e) {
    $("#bk-msg").textContent = `Terminate failed: ${e.message}`;
  }
}

$("#bk-term").addEventListener("click", () => terminate(false));
$("#bk-kill").addEventListener("click", () => terminate(true));

// askConfirm asks in a modal dialog, whose focus starts on Cancel; Escape
// cancels.
function askConfirm(title, message, action) {
  const dlg = $("#confirm");
  $("#confirm-h").textContent = title;
  $("#confirm-msg").textContent = message;
  $("#confirm-ok").textContent = action;
  dlg.returnValue = "";
  dlg.showModal();
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true });
  });
}

// ---- a key's state ----

let stateKey = "";

async function showState(key) {
  show("view-state");
  stateKey = key;
  $("#st-key").textContent = key;
  $("#st-msg").textContent = "";
  $("#st-done").textContent = "";
  renderLive();
  // The list holds the newest backends only; ask for this key's live one.
  api("GET", `/v1/backends?live=true&key=${encodeURIComponent(key)}`).then((r) => r.backends.forEach(merge), () => {});
  await loadVersions(key);
}

async function loadVersions(key) {
  let list;
  try {
    list = await api("GET", `/v1/state?key=${encodeURIComponent(key)}`);
  } catch (e) {
    if (key === stateKey) $("#st-msg").textContent = e.message;
    return;
  }
  if (key !== stateKey || view !== "view-state") return;
  const vs = list.versions;
  const q = (v) => `/v1/state/data?key=${encodeURIComponent(key)}&version=${encodeURIComponent(v)}`;
  $("#st-versions tbody").replaceChildren(...vs.map((v, i) => el("tr", { dataset: { version: v.version } },
    el("td", {}, el("code", {}, v.version)),
    el("td", {}, timeEl(v.saved_at, new Date(v.saved_at).toLocaleString())),
    el("td", {}, `${v.size} B`),
    el("td", {}, String(v.fence)),
    el("td", {}, el("code", { title: v.sha256 }, (v.sha256 || "").slice(0, 12))),
    el("td", {}, el("div", { class: "row-actions" },
      el("a", { href: q(v.version), download: `${key.replaceAll("/", "_")}-${v.version}`, "aria-label": `Download version ${v.version}` }, "Download"),
      i === 0 ? el("span", { class: "muted" }, "current")
        : restoreButton(key, v.version))))));
  $("#st-empty").hidden = vs.length > 0;
}

function restoreButton(key, version) {
  const btn = el("button", { type: "button", class: "restore", "aria-label": `Restore version ${version}` }, "Restore…");
  btn.addEventListener("click", async () => {
    const ok = await askConfirm("Restore this version?",
      `Version ${version} becomes the current state of key ${key}, as a new save; the history keeps the others.`, "Restore");
    if (!ok) return;
    const msg = $("#st-msg");
    msg.textContent = "";
    $("#st-done").textContent = "";
    try {
      const v = await api("POST", "/v1/state/restore", { key, version });
      $("#st-done").textContent = `Restored version ${version}: the current state is now version ${v.version}.`;
      await loadVersions(key);
    } catch (e) {
      msg.textContent = `Restore refused: ${e.message}`;
    }
  });
  return btn;
}

// renderLive says whether the key is held, which is why a restore would be
// refused.
function renderLive() {
  const live = [...backends.values()].find((b) => b.key === stateKey && b.state !== "terminated");
  const p = $("#st-live");
  p.dataset.live = live ? "true" : "false";
  if (live) {
    p.replaceChildren(`Key ${stateKey} is live (backend `,
      el("a", { href: `#/backends/${encodeURIComponent(live.backend_id)}` }, live.backend_id),
      `, ${live.state}): a restore is refused until it terminates.`);
  } else {
    p.textContent = p.dataset.wasLive === "true" ? `Key ${stateKey} is no longer live.` : `Key ${stateKey} is not live.`;
  }
  p.dataset.wasLive = live ? "true" : "false";
}

// ---- routing ----

function show(id) {
  view = id;
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== id;
}

function route() {
  closeDetail();
  if (!stream) return; // signed out: the sign-in form stays
  const h = location.hash.replace(/^#/, "") || "/";
  if (h.startsWith("/backends/")) showBackend(decodeURIComponent(h.slice("/backends/".length)));
  else if (h.startsWith("/state/")) {
    $("#st-live").dataset.wasLive = "false";
    $("#st-live").textContent = "";
    $("#st-versions tbody").replaceChildren();
    showState(decodeURIComponent(h.slice("/state/".length)));
  } else {
    show("view-list");
    renderList();
  }
  // Keyboard and screen reader users land on the new page's heading.
  const h1 = document.querySelector(`#${view} h1`);
  if (h1 && document.activeElement !== $("#login-key")) {
    h1.tabIndex = -1;
    h1.focus();
  }
}

window.addEventListener("hashchange", route);

(async function start() {
  let s;
  try {
    s = await (await fetch("/ui/session")).json();
  } catch (e) {
    setConn("off", `Berth does not answer: ${e.message}`);
    return;
  }
  if (!s.signed_in) {
    showLogin();
    return;
  }
  $("#logout").hidden = !s.key_required;
  openStream();
  route();
})();

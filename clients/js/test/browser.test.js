// BerthSocket in a real Chromium against a real `berth serve`. A small app
// server (this file) serves the page and the module, and answers the
// page's "give me a URL" with BerthClient.connect, as a real app server
// would; the backend is Berth's demo notepad, whose WebSocket sends the
// document on every change and which saves it when stopped.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { readFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BerthClient } from '../berth.js';
import { binaries, startBerth, need, eventually } from '../testkit/harness.js';
import { findChromium, launch } from '../testkit/chromium.js';

const moduleDir = fileURLToPath(new URL('..', import.meta.url));

// The page keeps every event of its BerthSocket in window.log, for the
// test to read.
const page = `<!doctype html>
<title>BerthSocket test</title>
<script type="module">
import { BerthSocket } from '/berth/socket.js';
window.log = [];
window.start = (key, opts = {}) => {
  const sock = new BerthSocket({
    getURL: async () => {
      const res = await fetch('/berth-url?key=' + encodeURIComponent(key));
      if (!res.ok) throw new Error('app server: ' + res.status + ' ' + await res.text());
      return res.json();
    },
    path: 'ws',
    backoff: { initialMs: 100, maxMs: 1000 },
    ...opts,
  });
  for (const type of ['open', 'close', 'reconnecting', 'error']) {
    sock.addEventListener(type, (e) => window.log.push({
      type, code: e.code, reconnected: e.reconnected, willReconnect: e.willReconnect,
      attempt: e.attempt, error: e.error && String(e.error),
    }));
  }
  sock.addEventListener('message', (e) => {
    const m = JSON.parse(e.data);
    window.log.push({ type: 'message', text: m.text, ack: m.ack });
  });
  window.sock = sock;
};
</script>`;

let binDir, bin, chromium, srv, berth, app, browser;
/** Every connect the app server made for the page: {key, backend_id, spawned}. */
const connects = [];

before(async () => {
  chromium = findChromium();
  binDir = await mkdtemp(join(tmpdir(), 'berth-js-bin-'));
  bin = await binaries(binDir);
  if (!bin || !chromium) return;
  srv = await startBerth(bin.berth);
  berth = new BerthClient({ url: srv.api, apiKey: srv.apiKey });
  app = await startApp();
  browser = await launch(chromium);
}, { timeout: 300000 });

after(async () => {
  await browser?.close();
  app?.close();
  await srv?.stop();
  await rm(binDir, { recursive: true, force: true });
});

/** The app server: the page, the module files, and /berth-url. */
function startApp() {
  const spawn = { command: [bin.berth, 'demo-backend'], state: { mode: 'blob' }, grace_seconds: 5 };
  const server = createServer(async (req, res) => {
    const u = new URL(req.url, 'http://app');
    try {
      if (u.pathname === '/') {
        res.writeHead(200, { 'Content-Type': 'text/html' }).end(page);
      } else if (u.pathname === '/berth/socket.js' || u.pathname === '/berth/berth.js') {
        const js = await readFile(join(moduleDir, u.pathname.slice('/berth/'.length)));
        res.writeHead(200, { 'Content-Type': 'text/javascript' }).end(js);
      } else if (u.pathname === '/berth-url') {
        const key = u.searchParams.get('key');
        const c = await berth.connect({ key, spawn, user: 'browser', wait: true, wait_timeout_seconds: 30 });
        connects.push({ key, backend_id: c.backend_id, spawned: c.spawned });
        res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify({ url: c.url }));
      } else {
        res.writeHead(404).end();
      }
    } catch (err) {
      res.writeHead(502).end(String(err));
    }
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => {
    server.url = `http://127.0.0.1:${server.address().port}`;
    resolve(server);
  }));
}

function ready(t) {
  if (!bin) need(t, 'go (to build berth)', 'the Go toolchain from go.dev, or set BERTH_BIN and BERTH_TESTBACKEND_BIN');
  else if (!chromium) need(t, 'chromium', 'apt-get install -y chromium');
  return !!(bin && chromium);
}

/** A fresh page with an empty log. */
async function openPage() {
  await browser.goto(app.url + '/');
  await eventually('the page module is loaded', () => browser.eval('typeof window.start === "function"'));
}

const log = () => browser.eval('window.log');

/** Waits until the page's log has an entry matching fn; returns the log. */
function waitLog(what, fn, ms = 20000) {
  return eventually(what, async () => {
    const l = await log();
    return l.some(fn) && l;
  }, ms).catch((err) => {
    err.message += `\npage console:\n${browser.console.slice(-20).join('\n')}\nberth:\n${srv.output()}`;
    throw err;
  });
}

test('reconnects through the app server when the backend is terminated', { timeout: 90000 }, async (t) => {
  if (!ready(t)) return;
  await openPage();
  await browser.eval(`start('js-doc')`);
  await waitLog('the socket opens and the empty document arrives', (e) => e.type === 'message' && e.text === '');
  assert.equal(await browser.eval('sock.readyState'), 'open');
  await browser.eval(`sock.send(JSON.stringify({ seq: 1, text: 'typed before the backend ended' }))`);
  await waitLog('the edit is acknowledged', (e) => e.type === 'message' && e.ack === 1);
  const first = connects.at(-1);

  // A graceful stop: the notepad closes its sockets (1001) and saves.
  await berth.terminate(first.backend_id);
  let l = await waitLog('the socket reopens on a new backend with the saved document',
    (e) => e.type === 'message' && e.text === 'typed before the backend ended' && e.ack === 0);
  const second = connects.at(-1);
  assert.notEqual(second.backend_id, first.backend_id, 'a new backend');
  assert.equal(second.spawned, true);
  assert.equal((await berth.get(first.backend_id)).reason, 'requested');
  const types = l.map((e) => e.type).filter((type) => type !== 'message');
  assert.deepEqual(types.slice(0, 4), ['open', 'close', 'reconnecting', 'open'], JSON.stringify(l));
  const close = l.find((e) => e.type === 'close');
  assert.equal(close.code, 1001, 'the backend said it was going away');
  assert.equal(close.willReconnect, true);
  assert.equal(l.find((e) => e.type === 'reconnecting').attempt, 1);
  assert.equal(l.filter((e) => e.type === 'open').at(-1).reconnected, true);

  // A hard stop kills the backend: the connection drops without a close frame.
  const opens = l.filter((e) => e.type === 'open').length;
  await berth.terminate(second.backend_id, { hard: true });
  l = await eventually('the socket reopens after a hard stop', async () => {
    const got = await log();
    return got.filter((e) => e.type === 'open').length > opens && got;
  }, 20000);
  assert.equal(l.filter((e) => e.type === 'close').at(-1).code, 1006);
  assert.notEqual(connects.at(-1).backend_id, second.backend_id);

  await browser.eval('sock.close()');
  await berth.terminate(connects.at(-1).backend_id);
});

test('a refused URL (bad token) makes it ask the app server for a fresh one', { timeout: 60000 }, async (t) => {
  if (!ready(t)) return;
  await openPage();
  const before = connects.length;
  await browser.eval(`start('js-token', { url: ${JSON.stringify(srv.proxy + '/not-a-valid-token/')} })`);
  const l = await waitLog('the socket opens', (e) => e.type === 'open');
  const events = l.filter((e) => e.type !== 'message');
  assert.equal(events[0].type, 'reconnecting', `the refused handshake is retried, not reported as a close: ${JSON.stringify(events)}`);
  assert.equal(events[0].attempt, 1);
  assert.equal(events[1].type, 'open');
  assert.equal(events[1].reconnected, false, 'it had never been open');
  assert.equal(connects.length, before + 1, 'one fresh URL was asked for');
  await browser.eval('sock.close()');
  await berth.terminate(connects.at(-1).backend_id);
});

test('close() ends it for good, and send() refuses when not open', { timeout: 60000 }, async (t) => {
  if (!ready(t)) return;
  await openPage();
  await browser.eval(`start('js-close')`);
  await waitLog('the socket opens', (e) => e.type === 'open');
  const backend = connects.at(-1).backend_id;
  await browser.eval('sock.close()');
  const l = await waitLog('the close is reported', (e) => e.type === 'close');
  assert.equal(l.at(-1).willReconnect, false);
  assert.equal(l.at(-1).code, 1000);
  assert.equal(await browser.eval('sock.readyState'), 'closed');
  const refused = await browser.eval(`(() => { try { sock.send('x'); return ''; } catch (e) { return String(e); } })()`);
  assert.match(refused, /cannot send while closed/);

  await new Promise((r) => setTimeout(r, 500));
  assert.equal((await log()).filter((e) => e.type === 'reconnecting').length, 0, 'no reconnect after close()');
  assert.equal((await berth.get(backend)).state, 'ready', 'the backend is left alone');
  await berth.terminate(backend);
});

test('when the app server keeps failing it reports errors, then gives up after maxAttempts', { timeout: 60000 }, async (t) => {
  if (!ready(t)) return;
  await openPage();
  // Berth refuses the key (400), so the app server answers 502 every time.
  await browser.eval(`start('not a valid key', { maxAttempts: 2, backoff: { initialMs: 50, maxMs: 100 } })`);
  const l = await waitLog('it gives up', (e) => e.type === 'close');
  assert.deepEqual(l.map((e) => e.type), ['error', 'reconnecting', 'error', 'reconnecting', 'error', 'error', 'close'], JSON.stringify(l));
  assert.match(l[0].error, /app server: 502 .*key/);
  assert.match(l.at(-2).error, /gave up after 2 failed attempts/);
  assert.equal(l.at(-1).willReconnect, false);
  assert.equal(await browser.eval('sock.readyState'), 'closed');
});

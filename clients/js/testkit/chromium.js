// A headless Chromium driven over the DevTools protocol through a pipe
// (--remote-debugging-pipe: JSON messages ended by NUL on fds 3 and 4), so
// the browser tests need no WebSocket client and no package.

import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { which } from './harness.js';

/** The first Chromium on $PATH, or null. */
export function findChromium() {
  return which('chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable');
}

/** Starts Chromium and returns a browser with one page (see Page). */
export async function launch(exe) {
  const profile = await mkdtemp(join(tmpdir(), 'berth-js-chromium-'));
  const child = spawn(exe, [
    '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
    '--remote-debugging-pipe', '--user-data-dir=' + profile, 'about:blank',
  ], { stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr = (stderr + d).slice(-16 << 10); });
  const exited = new Promise((resolve) => child.on('exit', resolve));

  const toBrowser = child.stdio[3];
  const fromBrowser = child.stdio[4];
  const pending = new Map();
  const listeners = [];
  let nextID = 0;
  let buf = '';
  fromBrowser.setEncoding('utf8');
  fromBrowser.on('data', (chunk) => {
    buf += chunk;
    let end;
    while ((end = buf.indexOf('\0')) >= 0) {
      const msg = JSON.parse(buf.slice(0, end));
      buf = buf.slice(end + 1);
      const p = pending.get(msg.id);
      if (p) {
        pending.delete(msg.id);
        if (msg.error) p.reject(new Error(`${p.method}: ${msg.error.message}`));
        else p.resolve(msg.result);
      } else if (msg.method) {
        for (const fn of listeners) fn(msg);
      }
    }
  });
  exited.then(() => {
    for (const p of pending.values()) p.reject(new Error(`chromium exited during ${p.method}\n${stderr}`));
  });

  /** Sends one DevTools command, to the browser or to a page's session. */
  const send = (method, params = {}, sessionId) => new Promise((resolve, reject) => {
    const id = ++nextID;
    pending.set(id, { resolve, reject, method });
    toBrowser.write(JSON.stringify({ id, method, params, sessionId }) + '\0');
  });

  const { targetId } = await send('Target.createTarget', { url: 'about:blank' });
  const { sessionId } = await send('Target.attachToTarget', { targetId, flatten: true });
  const console = [];
  listeners.push((msg) => {
    if (msg.sessionId !== sessionId) return;
    if (msg.method === 'Runtime.consoleAPICalled') {
      console.push(msg.params.args.map((a) => a.value ?? a.description).join(' '));
    } else if (msg.method === 'Runtime.exceptionThrown') {
      console.push('uncaught: ' + msg.params.exceptionDetails.exception?.description);
    }
  });
  await send('Runtime.enable', {}, sessionId);
  await send('Page.enable', {}, sessionId);

  return {
    /** What the page logged, for failure messages. */
    console,
    /** Loads url and waits for its load event. */
    async goto(url) {
      const loaded = new Promise((resolve) => {
        const fn = (msg) => {
          if (msg.sessionId === sessionId && msg.method === 'Page.loadEventFired') {
            listeners.splice(listeners.indexOf(fn), 1);
            resolve();
          }
        };
        listeners.push(fn);
      });
      const nav = await send('Page.navigate', { url }, sessionId);
      if (nav.errorText) throw new Error(`navigate to ${url}: ${nav.errorText}`);
      await loaded;
    },
    /** Evaluates an expression in the page, awaiting a promise, and returns its JSON value. */
    async eval(expression) {
      const r = await send('Runtime.evaluate', { expression, awaitPromise: true, returnByValue: true }, sessionId);
      if (r.exceptionDetails) {
        throw new Error(`in the page: ${r.exceptionDetails.exception?.description ?? r.exceptionDetails.text}`);
      }
      return r.result.value;
    },
    async close() {
      send('Browser.close').catch(() => {});
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
      await rm(profile, { recursive: true, force: true });
    },
  };
}

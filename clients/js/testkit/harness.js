// What the client's tests share: the berth and testbackend binaries, built
// once per test file, and a real `berth serve` on free loopback ports. It
// lives outside test/ because node --test runs every file in test/.

import { spawn, execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { randomUUID } from 'node:crypto';

const run = promisify(execFile);

/** The repository's root, where go.mod is. */
export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/**
 * Fails the test under CI (a missing prerequisite must not pass unseen) and
 * skips it elsewhere, saying how to get what is missing.
 */
export function need(t, what, howto) {
  const msg = `${what} is missing; install it with: ${howto}`;
  if (process.env.CI) throw new Error(msg + ' (CI is set, so this fails instead of skipping)');
  t.skip(msg);
}

/** The path of the first of names found on $PATH, or null. */
export function which(...names) {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    for (const name of names) {
      if (dir && existsSync(join(dir, name))) return join(dir, name);
    }
  }
  return null;
}

/**
 * The berth and testbackend binaries: $BERTH_BIN and $BERTH_TESTBACKEND_BIN
 * when set, else built into dir the way they ship (CGO_ENABLED=0, as the
 * e2e suite does, so CI's build cache serves them). Returns null when Go is
 * missing.
 */
export async function binaries(dir) {
  const want = {
    berth: process.env.BERTH_BIN,
    testbackend: process.env.BERTH_TESTBACKEND_BIN,
  };
  const missing = Object.entries({ berth: './cmd/berth', testbackend: './internal/testbackend' })
    .filter(([name]) => !want[name]);
  if (missing.length) {
    // CI puts Go's own directory on PATH; a plain install is here.
    const go = which('go') ?? (existsSync('/usr/local/go/bin/go') ? '/usr/local/go/bin/go' : null);
    if (!go) return null;
    await run(go, ['build', '-o', dir + '/', ...missing.map(([, pkg]) => pkg)], {
      cwd: repoRoot,
      env: { ...process.env, CGO_ENABLED: '0' },
      maxBuffer: 16 << 20,
    });
    for (const [name] of missing) want[name] = join(dir, name);
  }
  return want;
}

/** A loopback address nobody listens on right now. */
export function freeAddr() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(`127.0.0.1:${port}`));
    });
  });
}

/**
 * Starts `berth serve` with the process runtime, an API key and a fresh data
 * dir, and waits until it answers. stop() ends it with SIGINT and rejects unless
 * it exits 0 (it stops its backends first).
 *
 * A port found free can be taken by another process (a parallel test file,
 * another program) before berth binds it; then it starts again on others.
 */
export async function startBerth(berthBin, opts) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startBerthOnce(berthBin, opts);
    } catch (err) {
      if (attempt >= 3 || !/address already in use/.test(err.message)) throw err;
    }
  }
}

async function startBerthOnce(berthBin, { apiKey = 'test-key-' + randomUUID() } = {}) {
  const dataDir = await mkdtemp(join(tmpdir(), 'berth-js-data-'));
  const [api, proxy, backendAPI] = [await freeAddr(), await freeAddr(), await freeAddr()];
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('BERTH_')));
  const child = spawn(berthBin, [
    'serve',
    '--api-addr', api,
    '--proxy-addr', proxy,
    '--backend-api-addr', backendAPI,
    '--data-dir', dataDir,
    '--runtime', 'process',
    '--api-key', apiKey,
    '--log-level', 'debug',
  ], { cwd: dataDir, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const keep = (d) => { output = (output + d).slice(-64 << 10); };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));

  const srv = {
    api: 'http://' + api,
    proxy: 'http://' + proxy,
    apiKey,
    dataDir,
    /** The tail of berth's log, for failure messages. */
    output: () => output.split('\n').slice(-80).join('\n'),
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT');
      const timer = setTimeout(() => child.kill('SIGKILL'), 60000);
      const { code, signal } = await exited;
      clearTimeout(timer);
      await rm(dataDir, { recursive: true, force: true });
      if (code !== 0) throw new Error(`berth exited with ${code ?? signal} after SIGINT (want 0)\n${srv.output()}`);
    },
  };
  const deadline = Date.now() + 20000;
  for (;;) {
    if (child.exitCode !== null) {
      await rm(dataDir, { recursive: true, force: true });
      throw new Error(`berth exited before it was healthy\n${srv.output()}`);
    }
    try {
      // With our key, not /healthz: a server another test started on a
      // port we were also given would answer /healthz too.
      const res = await fetch(srv.api + '/v1/backends', {
        headers: { Authorization: 'Bearer ' + apiKey },
        signal: AbortSignal.timeout(1000),
      });
      if (res.ok) return srv;
    } catch {}
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      await exited;
      await rm(dataDir, { recursive: true, force: true });
      throw new Error(`berth did not answer ${srv.api}/v1/backends within 20s\n${srv.output()}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Polls fn until it returns a truthy value, failing after ms with what it last saw. */
export async function eventually(what, fn, ms = 15000) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms (last saw ${JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

// Compiled (never run) by test/types.test.js with tsc --strict: the way an
// app server and a browser use the module must type-check against the
// hand-written declarations.

import { BerthClient, BerthError, BerthSocket, type Backend, type StateEvent, type StateVersion } from '../berth.js';
import { backoffDelay, socketURL } from '../socket.js';

export async function appServer(): Promise<string> {
  const berth = new BerthClient({ url: 'http://127.0.0.1:7070', apiKey: 'k' });
  const c = await berth.connect({
    key: 'doc-42',
    spawn: { command: ['./server'], runtime: 'process', env: { A: '1' }, state: { mode: 'blob' }, resources: { memory_mb: 256 } },
    user: 'alice',
    wait: true,
  });
  const b: Backend = await berth.get(c.backend_id);
  const live: Backend[] = await berth.list({ key: 'doc-42', live: true, state: 'ready' });
  const accepted: boolean = (await berth.terminate(b.backend_id, { hard: false })).terminating;
  for await (const ev of berth.events(c.backend_id, { after: 3, signal: new AbortController().signal })) {
    const e: StateEvent = ev;
    if (e.state === 'terminated') console.log(e.seq, e.reason, e.exit_code);
  }
  for await (const line of berth.logs(c.backend_id, { follow: true })) console.log(line.length);
  const versions: StateVersion[] = await berth.stateHistory('doc-42');
  const bytes: Uint8Array = await berth.downloadState('doc-42', { version: versions[0].version });
  const restored: StateVersion = await berth.restoreState('doc-42', versions[0].version);
  try {
    await berth.health();
  } catch (err) {
    if (err instanceof BerthError && err.status === 409) console.log(err.code, err.field, err.message, err.details.reason);
  }
  return `${live.length} ${accepted} ${bytes.length} ${restored.size} ${c.url}`;
}

export function browser(): BerthSocket {
  const sock = new BerthSocket({
    getURL: async () => (await fetch('/berth-url')).json(),
    path: 'ws',
    backoff: { initialMs: 100, maxMs: 5000 },
    maxAttempts: 20,
    shouldReconnect: (ev) => ev.code !== 1000,
  });
  sock.addEventListener('message', (e) => console.log(e.data));
  sock.addEventListener('close', (e) => console.log(e.code, e.willReconnect));
  sock.addEventListener('reconnecting', (e) => console.log(e.attempt, e.delayMs, e.error));
  if (sock.readyState === 'open') sock.send('hi');
  sock.close(1000, 'bye');
  console.log(backoffDelay(2), socketURL('http://p/t/', 'ws'), sock.url);
  return sock;
}

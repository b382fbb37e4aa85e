// The client's pure logic, without a server: stream parsing, backoff, URLs,
// error bodies, and an event stream cut short. fetch is replaced only here.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BerthClient, BerthError, parseSSE, splitLines } from '../berth.js';
import { backoffDelay, socketURL } from '../socket.js';

async function* chunksOf(...chunks) {
  yield* chunks;
}

async function collect(iter) {
  const out = [];
  for await (const x of iter) out.push(x);
  return out;
}

/** A fetch that answers each call with the next of responses (functions of the request). */
function fakeFetch(...responses) {
  const calls = [];
  const fn = async (url, init) => {
    calls.push({ url, init });
    const next = responses.shift();
    if (!next) throw new Error('unexpected request ' + url);
    return next(url, init);
  };
  fn.calls = calls;
  return fn;
}

/** A body that sends chunks, then ends (a cut connection, if they end mid-event). */
function streamOf(...chunks) {
  const enc = new TextEncoder();
  return new ReadableStream({
    start(c) {
      for (const chunk of chunks) c.enqueue(enc.encode(chunk));
      c.close();
    },
  });
}

test('splitLines joins lines split across chunks and keeps a last unterminated one', async () => {
  const got = await collect(splitLines(chunksOf('a\nb', 'c\r\n', '\nd')));
  assert.deepEqual(got, ['a', 'bc', '', 'd']);
});

test('parseSSE follows the event-stream rules', async () => {
  const lines = splitLines(chunksOf(
    ': keepalive\n\n',
    'id: 1\nevent: state\ndata: {"state":\ndata: "ready"}\n\n',
    'data:no space\n\n',
    'id: 3\nevent: state\ndata: {"cut": true}\n', // no blank line: dropped
  ));
  assert.deepEqual(await collect(parseSSE(lines)), [
    { event: 'state', data: '{"state":\n"ready"}', id: '1' },
    { event: 'message', data: 'no space', id: '' },
  ]);
});

test('backoffDelay doubles up to the cap, with jitter in the upper half', () => {
  const opts = { initialMs: 100, maxMs: 1000 };
  assert.deepEqual([1, 2, 3, 4, 5, 9].map((n) => backoffDelay(n, opts, () => 0)), [50, 100, 200, 400, 500, 500]);
  assert.deepEqual([1, 2, 5].map((n) => backoffDelay(n, opts, () => 0.999999)), [100, 200, 1000]);
});

test('socketURL keeps the token and switches the scheme', () => {
  const cases = [
    ['http://127.0.0.1:7080/tok/', 'ws', 'ws://127.0.0.1:7080/tok/ws'],
    ['https://b.example/tok/', '/ws?x=1', 'wss://b.example/tok/ws?x=1'],
    ['http://h/tok', '', 'ws://h/tok/'],
    ['ws://h/tok/', 'a/b', 'ws://h/tok/a/b'],
  ];
  for (const [base, path, want] of cases) assert.equal(socketURL(base, path), want, `${base} + ${path}`);
});

test('an error body is surfaced whole: code, message, field and any other fields', async () => {
  const body = {
    error: { code: 'spawn_failed', message: 'exec: no such file', field: 'spawn.command', exit_code: 127 },
    reason: 'spawn_failed',
    output: ['line 1'],
  };
  const berth = new BerthClient({
    url: 'http://berth.test/',
    apiKey: 'k',
    fetch: fakeFetch(() => new Response(JSON.stringify(body), { status: 422 })),
  });
  const err = await berth.connect({ key: 'k', wait: true }).catch((e) => e);
  assert.ok(err instanceof BerthError);
  assert.equal(err.status, 422);
  assert.equal(err.code, 'spawn_failed');
  assert.equal(err.message, 'exec: no such file');
  assert.equal(err.field, 'spawn.command');
  assert.deepEqual(err.details, { exit_code: 127, reason: 'spawn_failed', output: ['line 1'] });
  assert.deepEqual(err.body, body);
});

test('a non-JSON error answer still becomes a BerthError', async () => {
  const berth = new BerthClient({
    url: 'http://berth.test',
    fetch: fakeFetch(() => new Response('<html>bad gateway</html>\n', { status: 502, statusText: 'Bad Gateway' })),
  });
  const err = await berth.get('bk_1').catch((e) => e);
  assert.ok(err instanceof BerthError);
  assert.equal(err.status, 502);
  assert.equal(err.code, '');
  assert.equal(err.message, '<html>bad gateway</html>');
});

test('requests carry the key, escape the id, and send JSON', async () => {
  const fetch = fakeFetch(() => Response.json({ backends: [] }), () => Response.json({ backend_id: 'a/b' }, { status: 202 }));
  const berth = new BerthClient({ url: 'http://berth.test', apiKey: 'sekret', fetch });
  await berth.list({ key: 'doc/1', live: true });
  await berth.terminate('a/b', { hard: true });
  const [list, term] = fetch.calls;
  assert.equal(list.url, 'http://berth.test/v1/backends?key=doc%2F1&live=true');
  assert.equal(list.init.headers.Authorization, 'Bearer sekret');
  assert.equal(term.url, 'http://berth.test/v1/backends/a%2Fb/terminate');
  assert.equal(term.init.method, 'POST');
  assert.equal(term.init.body, '{"hard":true}');
  assert.equal(term.init.headers['Content-Type'], 'application/json');
});

test('events resume after a cut stream without repeating what was seen', async () => {
  const ev = (seq, state) => `id: ${seq}\nevent: state\ndata: {"state":"${state}","at":"2026-12-06T00:00:0${seq}Z"}\n\n`;
  const fetch = fakeFetch(
    () => new Response(streamOf(ev(1, 'scheduled'), ev(2, 'starting'), 'id: 3\nevent: st')),
    () => new Response(streamOf(ev(1, 'scheduled'), ev(2, 'starting'), ev(3, 'ready'), ev(4, 'terminated'), ev(5, 'never'))),
  );
  const berth = new BerthClient({ url: 'http://berth.test', fetch });
  const got = await collect(berth.events('bk_1'));
  assert.deepEqual(got.map((e) => [e.seq, e.state]), [[1, 'scheduled'], [2, 'starting'], [3, 'ready'], [4, 'terminated']]);
  assert.equal(fetch.calls[1].init.headers['Last-Event-ID'], '2', 'the reopen says where it left off');
});

test('events give up after retries failures in a row, and never retry a 4xx', async () => {
  const cut = () => new Response(streamOf(''));
  const berth = new BerthClient({ url: 'http://berth.test', fetch: fakeFetch(cut, cut) });
  await assert.rejects(collect(berth.events('bk_1', { retries: 1 })), /ended before the backend terminated/);

  const gone = new BerthClient({
    url: 'http://berth.test',
    fetch: fakeFetch(() => Response.json({ error: { code: 'not_found', message: 'no' } }, { status: 404 })),
  });
  await assert.rejects(collect(gone.events('bk_1')), { name: 'BerthError', status: 404 });
});

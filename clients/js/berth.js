// Berth's JavaScript client: the control API for app servers (Node >= 18),
// and, re-exported from socket.js, the browser's reconnecting WebSocket.
//
// No dependencies: it uses only fetch, streams and TextDecoder, which Node
// and browsers both have. The API key must never reach a browser, so
// BerthClient belongs on the app server; browsers get BerthSocket.

export { BerthSocket, BerthSocketEvent, backoffDelay, socketURL } from './socket.js';

const defaultURL = 'http://127.0.0.1:7070';

/** An error answer of the control API, carrying its JSON error body. */
export class BerthError extends Error {
  /**
   * @param {number} status HTTP status
   * @param {object} body the error body's fields: code, message, field and any others
   * @param {unknown} [raw] the whole parsed body (or its text when it was not JSON)
   */
  constructor(status, body, raw) {
    const { code = '', message = '', field = '', ...details } = body;
    super(message || `HTTP ${status}`);
    this.name = 'BerthError';
    this.status = status;
    this.code = code;
    this.field = field;
    // Fields beyond code/message/field (a failed spawn's reason, exit code
    // and output, say) go here, so new ones reach callers unchanged.
    this.details = details;
    this.body = raw;
  }
}

/**
 * Turns a non-2xx response into a BerthError. An error body is
 * {"error": {code, message, field, …}}; members beside "error" are kept in
 * details too, since the API may put more there. Anything else (a proxy's
 * HTML page) becomes the message, trimmed.
 */
async function errorFrom(res) {
  const text = await res.text();
  let raw;
  try {
    raw = JSON.parse(text);
  } catch {
    return new BerthError(res.status, { message: text.trim().slice(0, 500) || res.statusText }, text);
  }
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) {
    return new BerthError(res.status, { message: text.trim().slice(0, 500) }, raw);
  }
  const { error, ...rest } = raw;
  const inner = error && typeof error === 'object' ? error : { message: typeof error === 'string' ? error : '' };
  return new BerthError(res.status, { ...rest, ...inner }, raw);
}

/** The client of one Berth's control API. */
export class BerthClient {
  #fetch;

  /**
   * @param {object} [opts]
   * @param {string} [opts.url] control API base URL; on Node, $BERTH_URL
   *   (or $BERTH_API, as the CLI reads it), else http://127.0.0.1:7070
   * @param {string} [opts.apiKey] API key; on Node, $BERTH_API_KEY
   *   (berth dev needs none)
   * @param {typeof fetch} [opts.fetch] fetch to use (default the global one)
   */
  constructor(opts = {}) {
    const env = globalThis.process?.env ?? {};
    this.url = (opts.url ?? env.BERTH_URL ?? env.BERTH_API ?? defaultURL).replace(/\/+$/, '');
    this.apiKey = opts.apiKey ?? env.BERTH_API_KEY ?? '';
    this.#fetch = opts.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /** Sends a request and returns the response when 2xx; throws BerthError otherwise. */
  async #send(method, path, { query, body, signal, headers = {} } = {}) {
    let url = this.url + path;
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query ?? {})) {
      if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
    }
    if ([...q].length) url += '?' + q;
    const h = { ...headers };
    if (this.apiKey) h.Authorization = 'Bearer ' + this.apiKey;
    if (body !== undefined) h['Content-Type'] = 'application/json';
    const res = await this.#fetch(url, {
      method,
      headers: h,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
    if (!res.ok) throw await errorFrom(res);
    return res;
  }

  async #json(method, path, opts) {
    const res = await this.#send(method, path, { ...opts, headers: { Accept: 'application/json' } });
    return res.json();
  }

  /**
   * POST /v1/connect: the live backend for req.key, or a new one from
   * req.spawn. The request is the API's JSON as is (snake_case).
   */
  connect(req, { signal } = {}) {
    return this.#json('POST', '/v1/connect', { body: req, signal });
  }

  /** GET /v1/backends/{id}. */
  get(id, { signal } = {}) {
    return this.#json('GET', backendPath(id), { signal });
  }

  /** GET /v1/backends, newest first; filters by key, state, or live only. */
  async list({ key, state, live, signal } = {}) {
    const body = await this.#json('GET', '/v1/backends', {
      query: { key, state, live: live ? 'true' : undefined },
      signal,
    });
    return body.backends;
  }

  /**
   * POST /v1/backends/{id}/terminate. Resolves once Berth accepted it, not
   * when the backend is terminated: follow events() for that.
   */
  terminate(id, { hard = false, signal } = {}) {
    return this.#json('POST', backendPath(id, '/terminate'), { body: { hard }, signal });
  }

  /** GET /healthz. */
  health({ signal } = {}) {
    return this.#json('GET', '/healthz', { signal });
  }

  /**
   * A backend's state events: its history, then live changes, ending after
   * "terminated". Each carries its seq (the SSE id). A stream cut before
   * terminated is reopened (after a backoff, up to `retries` failures in a
   * row) and events already seen are skipped, so none is yielded twice;
   * `after` resumes past a seq a caller saw before. Error answers (404…)
   * throw BerthError at once.
   * @returns {AsyncGenerator<object>}
   */
  async *events(id, { after = 0, retries = 5, signal } = {}) {
    let last = after;
    let failures = 0;
    for (;;) {
      let cause;
      try {
        const headers = { Accept: 'text/event-stream' };
        if (last > 0) headers['Last-Event-ID'] = String(last);
        const res = await this.#send('GET', backendPath(id, '/events'), { signal, headers });
        for await (const ev of readSSE(res.body, signal)) {
          const seq = Number(ev.id);
          if (ev.event !== 'state' || seq <= last) continue;
          last = seq;
          failures = 0;
          const state = { seq, ...JSON.parse(ev.data) };
          yield state;
          if (state.state === 'terminated') return;
        }
        cause = new Error(`events of ${id}: the stream ended before the backend terminated`);
      } catch (err) {
        if (signal?.aborted || (err instanceof BerthError && err.status < 500)) throw err;
        cause = err;
      }
      if (++failures > retries) throw cause;
      await sleep(backoff(failures), signal);
    }
  }

  /**
   * A backend's stdout and stderr, line by line (without the newline).
   * With follow, it keeps yielding until the backend's output ends (it
   * terminated) or signal aborts.
   * @returns {AsyncGenerator<string>}
   */
  async *logs(id, { follow = false, signal } = {}) {
    const res = await this.#send('GET', backendPath(id, '/logs'), {
      query: { follow: follow ? 'true' : undefined },
      signal,
    });
    yield* readLines(res.body, signal);
  }

  /** GET /v1/state: the saved versions of a key, newest first. */
  async stateHistory(key, { signal } = {}) {
    const body = await this.#json('GET', '/v1/state', { query: { key }, signal });
    return body.versions;
  }

  /**
   * GET /v1/state/data: one saved state of a key (the current one, or the
   * given version) as bytes.
   * @returns {Promise<Uint8Array>}
   */
  async downloadState(key, { version, signal } = {}) {
    const res = await this.#send('GET', '/v1/state/data', { query: { key, version }, signal });
    return new Uint8Array(await res.arrayBuffer());
  }

  /**
   * POST /v1/state/restore: makes an earlier save the key's current one and
   * returns the new current version. Refused (409) while the key is live.
   */
  restoreState(key, version, { signal } = {}) {
    return this.#json('POST', '/v1/state/restore', { body: { key, version }, signal });
  }
}

function backendPath(id, suffix = '') {
  return '/v1/backends/' + encodeURIComponent(id) + suffix;
}

/** The wait before retry n of an event stream: 250 ms doubling up to 5 s. */
function backoff(n) {
  return Math.min(5000, 250 * 2 ** (n - 1));
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Reads a body as text chunks. It reads with getReader (browsers cannot
 * iterate a ReadableStream everywhere) and cancels the body when the caller
 * stops early or signal aborts, so the connection is released.
 */
async function* readText(body, signal) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  const onAbort = () => reader.cancel(signal.reason).catch(() => {});
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      yield decoder.decode(value, { stream: true });
    }
    const rest = decoder.decode();
    if (rest) yield rest;
  } finally {
    signal?.removeEventListener('abort', onAbort);
    reader.cancel().catch(() => {});
  }
  signal?.throwIfAborted();
}

/** Splits text chunks into lines; a last line without newline is yielded too. */
export async function* splitLines(chunks) {
  let buf = '';
  for await (const chunk of chunks) {
    buf += chunk;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      yield buf.slice(0, i).replace(/\r$/, '');
      buf = buf.slice(i + 1);
    }
  }
  if (buf) yield buf;
}

function readLines(body, signal) {
  return splitLines(readText(body, signal));
}

function readSSE(body, signal) {
  return parseSSE(readLines(body, signal));
}

/**
 * Parses Server-Sent Events from lines, as the WHATWG spec does: fields
 * until a blank line, ":" comments (keepalives) ignored, data lines joined
 * by "\n", an unnamed event called "message". An event the stream cut off
 * before its blank line is dropped.
 * @returns {AsyncGenerator<{event: string, data: string, id: string}>}
 */
export async function* parseSSE(lines) {
  let ev = { event: '', data: [], id: '' };
  for await (const line of lines) {
    if (line === '') {
      if (ev.data.length) yield { event: ev.event || 'message', data: ev.data.join('\n'), id: ev.id };
      ev = { event: '', data: [], id: '' };
      continue;
    }
    if (line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') ev.event = value;
    else if (field === 'data') ev.data.push(value);
    else if (field === 'id') ev.id = value;
  }
}

// The browser's side of Berth: a WebSocket to a backend that outlives the
// backend. When the backend ends (idle, terminated, crashed) or its token
// expires, the socket closes or a reopen is refused (410, 401); the helper
// then asks the app server for a fresh connect URL and reconnects, with
// exponential backoff and jitter so a fleet of tabs does not stampede.
//
// A browser cannot read the status of a refused WebSocket handshake, so an
// expired token, a gone backend and a lost network look alike: every
// reconnect asks the app server for a fresh URL. That costs one connect,
// which answers the live backend with a new token, or starts a new one.

/**
 * The wait before reconnect attempt n (1, 2, …): the cap doubles from
 * initialMs up to maxMs, and the wait is a random point in its upper half
 * ("equal jitter"), so retries spread out yet never come back at once.
 * @param {number} attempt
 * @param {{initialMs?: number, maxMs?: number}} [opts]
 * @param {() => number} [random] a uniform number in [0, 1)
 */
export function backoffDelay(attempt, { initialMs = 250, maxMs = 10000 } = {}, random = Math.random) {
  const cap = Math.min(maxMs, initialMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(cap / 2 + (random() * cap) / 2);
}

/** The WebSocket URL for path under a connect URL (http://proxy/<token>/). */
export function socketURL(connectURL, path = '') {
  const base = new URL(connectURL);
  if (!base.pathname.endsWith('/')) base.pathname += '/';
  // Relative to the token, never above it: a leading "/" would drop the token.
  const u = new URL(path.replace(/^\/+/, ''), base);
  if (u.protocol === 'http:') u.protocol = 'ws:';
  else if (u.protocol === 'https:') u.protocol = 'wss:';
  return u.href;
}

/** The event BerthSocket dispatches; which fields are set depends on its type. */
export class BerthSocketEvent extends Event {
  constructor(type, fields) {
    super(type);
    Object.assign(this, fields);
  }
}

/**
 * A WebSocket to a Berth backend that reconnects through the app server.
 *
 * Events: "open" (a socket opened; reconnected: true after the first),
 * "message" (data), "close" (an open socket closed: code, reason,
 * wasClean, willReconnect; or the helper stopped for good: willReconnect
 * false), "reconnecting" (attempt, delayMs, and the code or error that
 * caused it), "error" (error: getURL failed, or attempts ran out).
 */
export class BerthSocket extends EventTarget {
  /**
   * @param {object} opts
   * @param {() => Promise<string | {url: string}>} opts.getURL asks the app
   *   server for a connect URL (or its whole connect answer)
   * @param {string} [opts.url] a connect URL to try first, without asking
   * @param {string} [opts.path] the WebSocket's path under the backend's root
   * @param {string | string[]} [opts.protocols]
   * @param {BinaryType} [opts.binaryType]
   * @param {{initialMs?: number, maxMs?: number}} [opts.backoff]
   * @param {number} [opts.maxAttempts] failed attempts in a row before giving up
   * @param {(ev: CloseEvent) => boolean} [opts.shouldReconnect]
   *   whether a close by the backend calls for a reconnect (default: always)
   * @param {typeof WebSocket} [opts.WebSocket] the WebSocket class (default the global)
   */
  constructor(opts) {
    super();
    if (typeof opts?.getURL !== 'function') throw new TypeError('BerthSocket: getURL must be a function');
    this.#opts = { path: '', maxAttempts: Infinity, shouldReconnect: () => true, ...opts };
    this.#WebSocket = opts.WebSocket ?? globalThis.WebSocket;
    this.#run(opts.url);
  }

  #opts;
  #WebSocket;
  #ws = null;
  #state = 'connecting';
  #stop = null; // wakes #run from a backoff wait when close() is called
  #url = '';

  /** "connecting", "open", "reconnecting" or "closed". */
  get readyState() {
    return this.#state;
  }

  /** The WebSocket URL in use (or last tried). */
  get url() {
    return this.#url;
  }

  /** Sends on the open socket; throws when none is open. */
  send(data) {
    if (this.#state !== 'open') throw new Error(`BerthSocket: cannot send while ${this.#state}`);
    this.#ws.send(data);
  }

  /** Closes the socket for good: no reconnect follows. */
  close(code = 1000, reason = '') {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    this.#stop?.();
    if (this.#ws) this.#ws.close(code, reason);
    else this.#emit('close', { code, reason, wasClean: true, willReconnect: false });
  }

  #emit(type, fields) {
    this.dispatchEvent(new BerthSocketEvent(type, fields));
  }

  async #run(firstURL) {
    let connectURL = firstURL;
    let failures = 0;
    let opened = false;
    while (this.#state !== 'closed') {
      let cause;
      try {
        connectURL ??= await this.#fresh();
        if (this.#state === 'closed') return;
        const closed = await this.#open(socketURL(connectURL, this.#opts.path), opened);
        if (closed.opened) {
          opened = true;
          failures = 0;
        }
        if (this.#state === 'closed') return;
        if (!closed.reconnect) {
          this.#state = 'closed';
          return;
        }
        cause = { code: closed.code, reason: closed.reason };
      } catch (error) {
        if (this.#state === 'closed') return;
        this.#emit('error', { error });
        cause = { error };
      }
      connectURL = undefined;
      if (++failures > this.#opts.maxAttempts) {
        this.#state = 'closed';
        this.#emit('error', { error: new Error(`BerthSocket: gave up after ${failures - 1} failed attempts`) });
        this.#emit('close', { code: 1006, reason: '', wasClean: false, willReconnect: false });
        return;
      }
      const delayMs = backoffDelay(failures, this.#opts.backoff);
      this.#state = 'reconnecting';
      this.#emit('reconnecting', { attempt: failures, delayMs, ...cause });
      await new Promise((resolve) => {
        const t = setTimeout(resolve, delayMs);
        this.#stop = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.#stop = null;
    }
  }

  async #fresh() {
    const got = await this.#opts.getURL();
    const url = typeof got === 'string' ? got : got?.url;
    if (!url) throw new Error('BerthSocket: getURL returned no url');
    return url;
  }

  /**
   * Opens one WebSocket and resolves when it closes, with whether it had
   * opened. A refused handshake (401, 410, 503) closes it unopened.
   */
  #open(url, reconnected) {
    this.#url = url;
    return new Promise((resolve) => {
      const ws = new this.#WebSocket(url, this.#opts.protocols);
      if (this.#opts.binaryType) ws.binaryType = this.#opts.binaryType;
      this.#ws = ws;
      let opened = false;
      ws.onopen = () => {
        opened = true;
        if (this.#state === 'closed') return; // close() came first; onclose follows
        this.#state = 'open';
        this.#emit('open', { reconnected });
      };
      ws.onmessage = (ev) => this.#emit('message', { data: ev.data });
      ws.onclose = (ev) => {
        this.#ws = null;
        const stopping = this.#state === 'closed';
        if (!stopping) this.#state = 'reconnecting';
        // A refused handshake is a failed attempt: always retried.
        const reconnect = !stopping && (!opened || this.#opts.shouldReconnect(ev));
        if (opened || stopping) {
          this.#emit('close', { code: ev.code, reason: ev.reason, wasClean: ev.wasClean, willReconnect: reconnect });
        }
        resolve({ opened, reconnect, code: ev.code, reason: ev.reason });
      };
    });
  }
}

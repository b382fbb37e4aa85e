// Types of socket.js: the browser's reconnecting WebSocket to a backend.

export interface BerthSocketOptions {
  /** Asks the app server for a connect URL (or its whole connect answer, with url). */
  getURL: () => Promise<string | { url: string }>;
  /** A connect URL to try first, without asking. */
  url?: string;
  /** The WebSocket's path under the backend's root (relative to the token), e.g. "ws". */
  path?: string;
  protocols?: string | string[];
  binaryType?: BinaryType;
  /** Reconnect waits: the cap doubles from initialMs (250) to maxMs (10000); the wait is in its upper half. */
  backoff?: { initialMs?: number; maxMs?: number };
  /** Failed attempts in a row before giving up (default: never). */
  maxAttempts?: number;
  /** Whether a close by the backend calls for a reconnect (default: always). */
  shouldReconnect?: (ev: CloseEvent) => boolean;
  /** The WebSocket class (default the global one). */
  WebSocket?: typeof WebSocket;
}

/** What BerthSocket dispatches; the fields set depend on the type. */
export class BerthSocketEvent extends Event {
  constructor(type: string, fields?: object);
  /** open: true after the first open. */
  reconnected?: boolean;
  /** message. */
  data?: unknown;
  /** close, and reconnecting when a close caused it. */
  code?: number;
  reason?: string;
  wasClean?: boolean;
  /** close: false once the helper has stopped for good. */
  willReconnect?: boolean;
  /** reconnecting: 1 for the first attempt after a failure. */
  attempt?: number;
  delayMs?: number;
  /** reconnecting, error. */
  error?: unknown;
}

export interface BerthSocketEventMap {
  open: BerthSocketEvent;
  message: BerthSocketEvent;
  close: BerthSocketEvent;
  reconnecting: BerthSocketEvent;
  error: BerthSocketEvent;
}

/** A WebSocket to a Berth backend that reconnects through the app server. */
export class BerthSocket extends EventTarget {
  constructor(opts: BerthSocketOptions);
  readonly readyState: 'connecting' | 'open' | 'reconnecting' | 'closed';
  /** The WebSocket URL in use (or last tried). */
  readonly url: string;
  /** Throws when no socket is open. */
  send(data: string | ArrayBufferLike | Blob | ArrayBufferView): void;
  /** Closes for good: no reconnect follows. */
  close(code?: number, reason?: string): void;
  addEventListener<K extends keyof BerthSocketEventMap>(
    type: K,
    listener: (ev: BerthSocketEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof BerthSocketEventMap>(
    type: K,
    listener: (ev: BerthSocketEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
}

/** The wait before reconnect attempt n (1, 2, …), in ms. */
export function backoffDelay(
  attempt: number,
  opts?: { initialMs?: number; maxMs?: number },
  random?: () => number,
): number;

/** The WebSocket URL for path under a connect URL (http://proxy/<token>/). */
export function socketURL(connectURL: string, path?: string): string;

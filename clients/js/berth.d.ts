// Types of berth.js: the control API's JSON as is (snake_case), as
// docs/DESIGN.md describes it.

export { BerthSocket, BerthSocketEvent, BerthSocketOptions, backoffDelay, socketURL } from './socket.js';

export type State = 'scheduled' | 'starting' | 'ready' | 'terminating' | 'terminated';

export type Reason =
  | 'idle' | 'lifetime' | 'requested' | 'exited' | 'crashed'
  | 'startup_timeout' | 'lost' | 'spawn_failed';

export interface SpawnConfig {
  image?: string;
  command?: string[];
  env?: Record<string, string>;
  max_idle_seconds?: number;
  lifetime_seconds?: number;
  grace_seconds?: number;
  startup_timeout_seconds?: number;
  stop_signal?: string;
  pull_policy?: string;
  resources?: { cpu_millis?: number; memory_mb?: number; pids?: number };
  state?: { mode?: 'none' | 'blob' | 'dir' | 'volume'; save_interval_seconds?: number };
  read_only_root_fs?: boolean;
  /** 'freeze': idleness freezes the backend (memory and key kept) instead of stopping it. */
  idle_action?: 'stop' | 'freeze';
  /** How long a frozen backend is kept before it is stopped (0: 3600). */
  max_frozen_seconds?: number;
  /** The runtime that must run it; without it Berth chooses (an image: docker, else kubernetes; a command alone: process). */
  runtime?: 'process' | 'docker' | 'kubernetes';
}

export interface ConnectRequest {
  /** Optional: without a key, every connect spawns. */
  key?: string;
  spawn?: SpawnConfig;
  user?: string;
  /** Block until ready (or a terminal state). */
  wait?: boolean;
  wait_timeout_seconds?: number;
}

export interface ConnectResponse {
  backend_id: string;
  key?: string;
  /** true: a new backend (201); false: the live one (200). */
  spawned: boolean;
  state: State;
  reason?: Reason;
  exit_code?: number;
  /** The proxy URL for the browser, with a fresh token: http://proxy/<token>/ */
  url: string;
  token: string;
  status_url: string;
  fencing_token: number;
}

export interface Backend {
  backend_id: string;
  key?: string;
  user?: string;
  state: State;
  reason?: Reason;
  exit_code?: number;
  fencing_token: number;
  runtime: string;
  spawn: SpawnConfig;
  node?: string;
  created_at: string;
  ready_at?: string;
  terminated_at?: string;
  last_active_at?: string;
  /** Present while the backend is frozen: since when (its state stays 'ready'). */
  frozen_at?: string;
}

export interface StateEvent {
  /** The event's id on the stream; grows with each event of a backend. */
  seq: number;
  state: State;
  reason?: Reason;
  exit_code?: number;
  message?: string;
  /** RFC 3339 time. */
  at: string;
}

export interface StateVersion {
  key?: string;
  /** Opaque: pass it back as is. */
  version: string;
  size: number;
  fence: number;
  saved_at: string;
  sha256?: string;
}

export interface TerminateResponse {
  backend_id: string;
  terminating: boolean;
  hard: boolean;
}

export interface Health {
  status: string;
  backends: number;
}

/** An error answer of the control API. */
export class BerthError extends Error {
  name: 'BerthError';
  /** HTTP status. */
  status: number;
  /** The API's error code (bad_request, unauthorized, not_found, conflict, …); '' when the body was not JSON. */
  code: string;
  /** The part of the request at fault, or ''. */
  field: string;
  /** Every other field of the error body, as sent. */
  details: Record<string, unknown>;
  /** The whole parsed body (or its text, when it was not JSON). */
  body: unknown;
  constructor(status: number, body: { code?: string; message?: string; field?: string; [k: string]: unknown }, raw?: unknown);
}

export interface ClientOptions {
  /** Control API base URL; on Node, $BERTH_URL (or $BERTH_API), else http://127.0.0.1:7070. */
  url?: string;
  /** API key; on Node, $BERTH_API_KEY. */
  apiKey?: string;
  fetch?: typeof fetch;
}

export interface CallOptions {
  signal?: AbortSignal;
}

/** The client of one Berth's control API, for app servers (it holds the API key). */
export class BerthClient {
  constructor(opts?: ClientOptions);
  readonly url: string;
  readonly apiKey: string;
  connect(req: ConnectRequest, opts?: CallOptions): Promise<ConnectResponse>;
  get(id: string, opts?: CallOptions): Promise<Backend>;
  list(opts?: CallOptions & { key?: string; state?: State; live?: boolean }): Promise<Backend[]>;
  terminate(id: string, opts?: CallOptions & { hard?: boolean }): Promise<TerminateResponse>;
  health(opts?: CallOptions): Promise<Health>;
  /** History, then live changes; ends after terminated. Reopens a cut stream up to `retries` times in a row. */
  events(id: string, opts?: CallOptions & { after?: number; retries?: number }): AsyncGenerator<StateEvent, void, undefined>;
  /** stdout and stderr, line by line; with follow, until the backend's output ends. */
  logs(id: string, opts?: CallOptions & { follow?: boolean }): AsyncGenerator<string, void, undefined>;
  stateHistory(key: string, opts?: CallOptions): Promise<StateVersion[]>;
  downloadState(key: string, opts?: CallOptions & { version?: string }): Promise<Uint8Array>;
  restoreState(key: string, version: string, opts?: CallOptions): Promise<StateVersion>;
}

/** Splits text chunks into lines (without their newline). */
export function splitLines(chunks: AsyncIterable<string>): AsyncGenerator<string, void, undefined>;

/** Parses Server-Sent Events from lines. */
export function parseSSE(lines: AsyncIterable<string>): AsyncGenerator<{ event: string; data: string; id: string }, void, undefined>;

// The realtime stream: one WebSocket per client, shared by every subscription.
//
// Owns: the socket's life (connect, ready, reconnect with backoff, resume),
// per-topic bookkeeping of the last `seq` seen (so a reconnect resumes with
// `since` and a frame at or below it is dropped: no gap, no duplicate), the
// `resync` answer (a fresh snapshot for `user:`/`org:` topics), session-token
// refresh on the open socket before `expires_at`, and a client-side ping that
// detects a dead connection. Must never: open a second socket for the same
// client, throw from a socket callback (errors go to `onError`), or send a
// token anywhere but the server's own URL.

import { StreamClosedError, TopicError } from "./errors.js";
import {
  CloseCode,
  type Change,
  type ClientMessage,
  type ServerMessage,
  type SnapshotData,
  type Topic,
} from "./types.js";

/** What `subscribe` needs of the platform's WebSocket (browsers' and Node's own). */
// The handlers take `any` so that the DOM's own WebSocket type (whose handlers
// take Event, MessageEvent, CloseEvent) is accepted as it is.
export interface WebSocketLike {
  readonly readyState: number;
  /* eslint-disable @typescript-eslint/no-explicit-any */
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: any) => void) | null;
  onclose: ((ev: any) => void) | null;
  onerror: ((ev: any) => void) | null;
  /* eslint-enable @typescript-eslint/no-explicit-any */
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** Where a token comes from: a fixed string, or a function (e.g. `() => Clerk.session.getToken()`). */
export type TokenSource =
  | string
  | null
  | undefined
  | (() => string | null | undefined | Promise<string | null | undefined>);

export type StreamStatus = "connecting" | "open" | "reconnecting" | "closed";

export interface SubscribeOptions {
  /** Resume after this `seq` (the last one the caller saw). Excludes `snapshot`. */
  since?: number;
  /** Start with the topic's current state (`onSnapshot`), then live changes. */
  snapshot?: boolean;
  /** The token for this client's socket (overrides the client's own source). */
  getToken?: TokenSource;
  onChange?: (change: Change) => void;
  onSnapshot?: (topic: Topic, data: SnapshotData, seq: number) => void;
  /**
   * The server could not resume the topic (too far behind): its state must be
   * refetched. For `user:`/`org:` topics the client does so itself (a new
   * snapshot follows, through `onSnapshot`); for `*` the caller reloads.
   */
  onResync?: (topic: Topic, reason: string) => void;
  /** A refused subscription, a revoked one, a refused token refresh, a stream closed for good. */
  onError?: (error: Error) => void;
  onStatus?: (status: StreamStatus) => void;
}

export interface StreamOptions {
  url: string;
  token: TokenSource;
  WebSocket?: WebSocketConstructor;
  /** First reconnect delay; doubles per failed attempt (with jitter). Default 250 ms. */
  minReconnectDelayMs?: number;
  /** Longest reconnect delay. Default 10 s. */
  maxReconnectDelayMs?: number;
  /** How often the client pings the server. Default 20 s. */
  pingIntervalMs?: number;
  /** A connection with no frame this long after a ping is dead. Default 10 s. */
  pongTimeoutMs?: number;
  /** Refresh a session token this long before its `exp`. Default 15 s. */
  refreshMarginSecs?: number;
}

/** A live subscription to some topics; `close()` ends it. */
export interface Subscription {
  readonly topics: readonly Topic[];
  /** The last `seq` seen per topic (what a later `since` would resume from). */
  lastSeq(topic: Topic): number | null;
  close(): void;
}

interface Listener extends SubscribeOptions {
  closed: boolean;
}

interface TopicEntry {
  listeners: Set<Listener>;
  /** The last seq delivered (or acknowledged as the live start); null before the first ack. */
  lastSeq: number | null;
  /** Ask for a snapshot on the next subscribe (first one, or after a resync). */
  wantSnapshot: boolean;
  /** The caller's own `since`, used until the first ack. */
  since: number | null;
  /** Sent and not yet acknowledged. */
  pending: boolean;
  /** A resync came: after its ack, resubscribe with a snapshot. */
  resnapshot: boolean;
}

const OPEN = 1;

export function resolveToken(source: TokenSource): Promise<string | null | undefined> {
  if (typeof source === "function") {
    return Promise.resolve().then(source);
  }
  return Promise.resolve(source);
}

export class Stream {
  private readonly opts: Required<Omit<StreamOptions, "token" | "WebSocket">> & {
    WebSocket: WebSocketConstructor | undefined;
  };
  private token: TokenSource;
  private ws: WebSocketLike | null = null;
  private readonly topics = new Map<Topic, TopicEntry>();
  private readonly statusListeners = new Set<Listener>();
  private readonly changeListeners = new Set<(c: Change) => void>();
  private status: StreamStatus = "closed";
  private attempt = 0;
  private ready = false;
  /** Between deciding to connect and having a socket (the token may be awaited). */
  private opening = false;
  private stopped = false;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private pingTimer: ReturnType<typeof setInterval> | null = null;
  private pongTimer: ReturnType<typeof setTimeout> | null = null;
  private refreshTimer: ReturnType<typeof setTimeout> | null = null;

  constructor(options: StreamOptions) {
    this.token = options.token;
    this.opts = {
      url: options.url,
      WebSocket: options.WebSocket,
      minReconnectDelayMs: options.minReconnectDelayMs ?? 250,
      maxReconnectDelayMs: options.maxReconnectDelayMs ?? 10_000,
      pingIntervalMs: options.pingIntervalMs ?? 20_000,
      pongTimeoutMs: options.pongTimeoutMs ?? 10_000,
      refreshMarginSecs: options.refreshMarginSecs ?? 15,
    };
  }

  /** Adds listeners for topics; opens the socket if it is not open. */
  subscribe(topics: readonly Topic[], options: SubscribeOptions = {}): Subscription {
    if (options.since !== undefined && options.snapshot) {
      throw new TypeError("since and snapshot exclude each other");
    }
    if (options.getToken !== undefined) {
      this.token = options.getToken;
    }
    const listener: Listener = { ...options, closed: false };
    const unique = [...new Set(topics)];
    this.statusListeners.add(listener);
    for (const topic of unique) {
      let entry = this.topics.get(topic);
      if (!entry) {
        entry = {
          listeners: new Set(),
          lastSeq: null,
          wantSnapshot: Boolean(options.snapshot),
          since: options.since ?? null,
          pending: false,
          resnapshot: false,
        };
        this.topics.set(topic, entry);
        entry.listeners.add(listener);
        this.sendSubscribe(topic, entry);
      } else {
        entry.listeners.add(listener);
        // The topic is already live: a newcomer that asked for a snapshot gets
        // one of its own over the same subscription.
        if (options.snapshot) {
          entry.resnapshot = true;
          if (!entry.pending) {
            this.resubscribeWithSnapshot(topic, entry);
          }
        }
      }
    }
    options.onStatus?.(this.status === "closed" ? "connecting" : this.status);
    this.ensureOpen();
    return {
      topics: unique,
      lastSeq: (topic) => this.topics.get(topic)?.lastSeq ?? null,
      close: () => this.removeListener(listener, unique),
    };
  }

  /** Every change this client's socket receives, whatever the topic. */
  onAnyChange(fn: (c: Change) => void): () => void {
    this.changeListeners.add(fn);
    return () => this.changeListeners.delete(fn);
  }

  /** Closes the socket and ends every subscription. */
  close(): void {
    this.stopped = true;
    for (const entry of this.topics.values()) {
      for (const l of entry.listeners) {
        l.closed = true;
      }
    }
    this.topics.clear();
    this.teardown(CloseCode.Normal, "client closed");
    this.setStatus("closed");
    this.statusListeners.clear();
  }

  private removeListener(listener: Listener, topics: Topic[]): void {
    if (listener.closed) {
      return;
    }
    listener.closed = true;
    this.statusListeners.delete(listener);
    for (const topic of topics) {
      const entry = this.topics.get(topic);
      if (!entry) {
        continue;
      }
      entry.listeners.delete(listener);
      if (entry.listeners.size === 0) {
        this.topics.delete(topic);
        this.send({ type: "unsubscribe", topic });
      }
    }
    if (this.topics.size === 0) {
      // Nothing left to watch: the server would close an idle socket anyway.
      this.teardown(CloseCode.Normal, "no subscriptions");
      this.setStatus("closed");
    }
  }

  private ensureOpen(): void {
    this.stopped = false;
    if (this.ws || this.opening || this.reconnectTimer || this.topics.size === 0) {
      return;
    }
    this.setStatus(this.attempt === 0 ? "connecting" : "reconnecting");
    void this.connect();
  }

  private async connect(): Promise<void> {
    if (this.ws || this.opening) {
      return;
    }
    this.opening = true;
    let token: string | null | undefined;
    try {
      token = await resolveToken(this.token);
    } catch (e) {
      this.opening = false;
      this.emitError(new Error(`getToken failed: ${String(e)}`, { cause: e }));
      this.scheduleReconnect();
      return;
    }
    this.opening = false;
    if (this.stopped || this.ws || this.topics.size === 0) {
      return;
    }
    const Ctor =
      this.opts.WebSocket ??
      (globalThis as unknown as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!Ctor) {
      this.emitError(
        new Error("no WebSocket in this environment: pass the WebSocket option (Node 20: --experimental-websocket)"),
      );
      this.setStatus("closed");
      return;
    }
    const url = new URL("/v1/realtime", this.opts.url);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    // Browsers cannot set headers on a WebSocket: the token goes in the query.
    if (token) {
      url.searchParams.set("token", token);
    }
    let ws: WebSocketLike;
    try {
      ws = new Ctor(url.toString());
    } catch (e) {
      this.emitError(new Error(`cannot open ${url.origin}: ${String(e)}`, { cause: e }));
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    this.ready = false;
    // A socket that never says `ready` (a black-holed address) is given up on.
    this.pongTimer = setTimeout(() => {
      if (this.ws === ws && !this.ready) {
        this.teardown(CloseCode.Normal, "no ready");
        this.scheduleReconnect();
      }
    }, this.opts.pongTimeoutMs);
    ws.onmessage = (ev: { data: unknown }) => {
      if (this.ws === ws) {
        this.onFrame(ev.data);
      }
    };
    ws.onclose = (ev: { code: number; reason: string }) => {
      if (this.ws === ws) {
        this.onClosed(ev.code, ev.reason);
      }
    };
    // An error is always followed by a close, which decides what happens next.
    ws.onerror = () => {};
  }

  private onFrame(raw: unknown): void {
    this.armPing();
    if (typeof raw !== "string") {
      return;
    }
    let msg: ServerMessage | Change;
    try {
      msg = JSON.parse(raw) as ServerMessage | Change;
    } catch {
      this.emitError(new Error("the server sent a frame that is not JSON"));
      return;
    }
    if ("seq" in msg && "kind" in msg && "id" in msg) {
      this.onChange(msg as Change);
      return;
    }
    const m = msg as ServerMessage;
    switch (m.type) {
      case "ready":
        this.ready = true;
        this.attempt = 0;
        this.setStatus("open");
        this.scheduleRefresh(m.expires_at);
        for (const [topic, entry] of this.topics) {
          entry.pending = false;
          this.sendSubscribe(topic, entry);
        }
        break;
      case "authenticated":
        this.scheduleRefresh(m.expires_at);
        break;
      case "subscribed": {
        const entry = this.topics.get(m.topic);
        if (!entry) {
          break;
        }
        entry.pending = false;
        if (m.seq !== undefined) {
          // Live from here on (a `since` ack carries no seq: `replayed` does).
          entry.lastSeq = Math.max(entry.lastSeq ?? m.seq, m.seq);
        }
        if (entry.resnapshot && !entry.wantSnapshot) {
          // Live again without state (after a resync): fetch it.
          this.resubscribeWithSnapshot(m.topic, entry);
        } else {
          entry.wantSnapshot = false;
        }
        break;
      }
      case "snapshot": {
        const entry = this.topics.get(m.topic);
        if (!entry) {
          break;
        }
        entry.lastSeq = m.seq;
        entry.resnapshot = false;
        for (const l of [...entry.listeners]) {
          this.call(() => l.onSnapshot?.(m.topic, m.data, m.seq));
        }
        break;
      }
      case "replayed": {
        const entry = this.topics.get(m.topic);
        if (entry) {
          entry.lastSeq = Math.max(entry.lastSeq ?? m.seq, m.seq);
        }
        break;
      }
      case "resync":
        // Without a topic: this connection was too slow and is about to be
        // closed (4008); the reconnect resumes every topic from its last seq.
        if (m.topic) {
          const entry = this.topics.get(m.topic);
          if (!entry) {
            break;
          }
          entry.lastSeq = null;
          entry.since = null;
          if (m.topic !== "*") {
            entry.resnapshot = true;
          }
          for (const l of [...entry.listeners]) {
            this.call(() => l.onResync?.(m.topic as Topic, m.reason));
          }
        }
        break;
      case "unsubscribed":
        if (m.reason !== "requested") {
          this.endTopic(m.topic, new TopicError(m.topic, m.reason));
        }
        break;
      case "error":
        if (m.topic && m.topic.length > 0) {
          const entry = this.topics.get(m.topic);
          if (entry?.pending) {
            this.endTopic(m.topic, new TopicError(m.topic, m.error));
            break;
          }
        }
        this.emitError(new Error(m.error));
        break;
      case "pong":
        break;
    }
  }

  private onChange(change: Change): void {
    const entry = this.topics.get(change.topic);
    if (!entry) {
      return;
    }
    if (entry.lastSeq !== null && change.seq <= entry.lastSeq) {
      return; // already delivered before a reconnect
    }
    entry.lastSeq = change.seq;
    for (const l of [...entry.listeners]) {
      this.call(() => l.onChange?.(change));
    }
    for (const fn of [...this.changeListeners]) {
      this.call(() => fn(change));
    }
  }

  private onClosed(code: number, reason: string): void {
    const wasReady = this.ready;
    this.teardown();
    if (this.stopped || this.topics.size === 0) {
      this.setStatus("closed");
      return;
    }
    if (code === CloseCode.PolicyViolation) {
      // Refused by policy: reconnecting would be refused again.
      const err = new StreamClosedError(code, reason);
      for (const topic of [...this.topics.keys()]) {
        this.endTopic(topic, err);
      }
      this.setStatus("closed");
      return;
    }
    if (code === CloseCode.TokenExpired || (wasReady && code !== CloseCode.TooSlow)) {
      // A connection that was healthy: start the backoff over.
      this.attempt = 0;
    }
    // An expired token is replaced at once (the source gives a fresh one).
    this.scheduleReconnect(code === CloseCode.TokenExpired);
  }

  private scheduleReconnect(immediately = false): void {
    if (this.stopped || this.reconnectTimer || this.topics.size === 0) {
      return;
    }
    this.setStatus("reconnecting");
    const base = Math.min(
      this.opts.maxReconnectDelayMs,
      this.opts.minReconnectDelayMs * 2 ** Math.min(this.attempt, 16),
    );
    const delay = immediately ? 0 : base / 2 + (Math.random() * base) / 2;
    this.attempt += 1;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      void this.connect();
    }, delay);
  }

  /** Drops the socket and every timer (the topics stay for the next connection). */
  private teardown(code?: number, reason?: string): void {
    const ws = this.ws;
    this.ws = null;
    this.ready = false;
    for (const entry of this.topics.values()) {
      entry.pending = false;
    }
    if (ws) {
      ws.onmessage = null;
      ws.onclose = null;
      if (code !== undefined && ws.readyState <= OPEN) {
        try {
          ws.close(code, reason);
        } catch {
          // Already closing.
        }
      }
    }
    for (const t of [this.pongTimer, this.refreshTimer, this.reconnectTimer]) {
      if (t) clearTimeout(t);
    }
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.pongTimer = this.refreshTimer = this.reconnectTimer = this.pingTimer = null;
  }

  private sendSubscribe(topic: Topic, entry: TopicEntry): void {
    if (!this.ready || entry.pending) {
      return;
    }
    const msg: ClientMessage = { type: "subscribe", topic };
    if (entry.lastSeq !== null) {
      msg.since = entry.lastSeq;
    } else if (entry.wantSnapshot || entry.resnapshot) {
      msg.snapshot = true;
      entry.wantSnapshot = true;
    } else if (entry.since !== null) {
      msg.since = entry.since;
    }
    entry.pending = true;
    this.send(msg);
  }

  /** A fresh snapshot on a live topic: unsubscribe, then subscribe with `snapshot`. */
  private resubscribeWithSnapshot(topic: Topic, entry: TopicEntry): void {
    if (topic === "*" || !this.ready) {
      return;
    }
    this.send({ type: "unsubscribe", topic });
    entry.lastSeq = null;
    entry.wantSnapshot = true;
    entry.pending = false;
    this.sendSubscribe(topic, entry);
  }

  private endTopic(topic: Topic, error: Error): void {
    const entry = this.topics.get(topic);
    if (!entry) {
      return;
    }
    this.topics.delete(topic);
    for (const l of [...entry.listeners]) {
      this.call(() => l.onError?.(error));
    }
  }

  private send(msg: ClientMessage): void {
    if (this.ws && this.ready && this.ws.readyState === OPEN) {
      this.ws.send(JSON.stringify(msg));
    }
  }

  /** Pings after a quiet interval; no frame within the timeout means the socket is dead. */
  private armPing(): void {
    if (this.pongTimer) {
      clearTimeout(this.pongTimer);
      this.pongTimer = null;
    }
    if (this.pingTimer) {
      return;
    }
    this.pingTimer = setInterval(() => {
      if (!this.ws || this.pongTimer) {
        return;
      }
      this.send({ type: "ping" });
      this.pongTimer = setTimeout(() => {
        const ws = this.ws;
        if (ws) {
          this.emitError(new Error(`no answer to a ping within ${this.opts.pongTimeoutMs} ms: reconnecting`));
          this.teardown(CloseCode.Normal, "no pong");
          this.scheduleReconnect(true);
        }
      }, this.opts.pongTimeoutMs);
    }, this.opts.pingIntervalMs);
  }

  /** Sends a fresh token before `expiresAt` (unix seconds) when the token source can give one. */
  private scheduleRefresh(expiresAt: number | null): void {
    if (this.refreshTimer) {
      clearTimeout(this.refreshTimer);
      this.refreshTimer = null;
    }
    if (expiresAt === null || typeof this.token !== "function") {
      return;
    }
    const left = expiresAt * 1000 - Date.now();
    const margin = Math.min(this.opts.refreshMarginSecs * 1000, Math.max(left, 0) / 2);
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = null;
      void this.refresh(expiresAt);
    }, Math.max(left - margin, 0));
  }

  private async refresh(expiresAt: number): Promise<void> {
    let token: string | null | undefined;
    try {
      token = await resolveToken(this.token);
    } catch (e) {
      this.emitError(new Error(`getToken failed: ${String(e)}`, { cause: e }));
      token = null;
    }
    if (token) {
      this.send({ type: "auth", token });
      return;
    }
    // No token now: try again shortly while the current one is still valid
    // (past it the server closes with 4001 and the reconnect asks again).
    if (expiresAt * 1000 > Date.now() + 1000) {
      this.refreshTimer = setTimeout(() => {
        this.refreshTimer = null;
        void this.refresh(expiresAt);
      }, 1000);
    }
  }

  private setStatus(status: StreamStatus): void {
    if (this.status === status) {
      return;
    }
    this.status = status;
    for (const l of [...this.statusListeners]) {
      this.call(() => l.onStatus?.(status));
    }
  }

  private emitError(error: Error): void {
    const seen = new Set<Listener>();
    for (const entry of this.topics.values()) {
      for (const l of entry.listeners) {
        if (!seen.has(l)) {
          seen.add(l);
          this.call(() => l.onError?.(error));
        }
      }
    }
  }

  /** Runs a caller's callback; its exception must not break the stream. */
  private call(fn: () => void): void {
    try {
      fn();
    } catch (e) {
      queueMicrotask(() => {
        throw e;
      });
    }
  }
}

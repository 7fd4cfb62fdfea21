// The clerksync client: typed reads over HTTP and the realtime stream.
//
// Owns: building read requests (bearer token, query parameters, `wait_ms`),
// turning non-2xx answers into typed errors, walking cursors as async
// iterators, and the client's one `Stream` and its live topics. Must never:
// depend on anything but the platform's `fetch` and `WebSocket`, or put a token
// in a URL other than the realtime one (where browsers leave no choice).

import { errorFor, NetworkError } from "./errors.js";
import { LiveTopic } from "./live.js";
import {
  resolveToken,
  Stream,
  type StreamOptions,
  type SubscribeOptions,
  type Subscription,
  type TokenSource,
  type WebSocketConstructor,
} from "./stream.js";
import type {
  AuditEntry,
  Change,
  Membership,
  Organization,
  Page,
  SearchKind,
  Topic,
  User,
  UserOrganization,
} from "./types.js";

export interface ClientOptions {
  /** The server's base URL, e.g. `http://127.0.0.1:8080`. */
  url: string;
  /**
   * `CLERKSYNC_API_TOKEN` (reads and any topic), or a function giving a Clerk
   * session token (`() => Clerk.session.getToken()`: the stream only, own user
   * and organizations). Omit for a token-less local server.
   */
  token?: TokenSource;
  /** Defaults to the global `fetch`. */
  fetch?: typeof fetch;
  /** Defaults to the global `WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** Realtime tuning: reconnect backoff, ping and refresh timing. */
  realtime?: Omit<StreamOptions, "url" | "token" | "WebSocket">;
}

export interface GetOptions {
  /** Wait up to this long (at most 30,000 ms) for the entity to be synced. */
  waitMs?: number;
  /** With `waitMs`: wait until its `updated_at` is at least this (unix ms). */
  minUpdatedAt?: number;
  signal?: AbortSignal;
}

export interface PageOptions {
  /** Items per page, 1 to 500 (default 50). */
  limit?: number;
  /** Start after this cursor (a previous page's `next_cursor`). */
  cursor?: string | null;
  signal?: AbortSignal;
}

export interface SearchOptions {
  kind?: SearchKind;
  /** 1 to 100 (default 20). */
  limit?: number;
  signal?: AbortSignal;
}

/** A cursor-paginated list: iterate items with `for await`, or whole pages with `pages()`. */
export class Paginated<T> implements AsyncIterable<T> {
  constructor(private readonly fetchPage: (cursor: string | null) => Promise<Page<T>>, private readonly start: string | null) {}

  /** The first page only. */
  first(): Promise<Page<T>> {
    return this.fetchPage(this.start);
  }

  async *pages(): AsyncGenerator<Page<T>, void, undefined> {
    let cursor = this.start;
    for (;;) {
      const page = await this.fetchPage(cursor);
      yield page;
      if (!page.next_cursor) {
        return;
      }
      cursor = page.next_cursor;
    }
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<T, void, undefined> {
    for await (const page of this.pages()) {
      yield* page.data;
    }
  }

  /** Every item of every page (mind the size of what you list). */
  async all(): Promise<T[]> {
    const out: T[] = [];
    for await (const item of this) {
      out.push(item);
    }
    return out;
  }
}

type Query = Record<string, string | number | null | undefined>;

export class ClerksyncClient {
  readonly users: {
    get(id: string, options?: GetOptions): Promise<User>;
    list(options?: PageOptions): Paginated<User>;
    organizations(id: string, options?: PageOptions): Paginated<UserOrganization>;
  };
  readonly organizations: {
    get(id: string, options?: GetOptions): Promise<Organization>;
    list(options?: PageOptions): Paginated<Organization>;
    memberships(id: string, options?: PageOptions): Paginated<Membership>;
  };

  private readonly baseUrl: string;
  private readonly token: TokenSource;
  private readonly fetchFn: typeof fetch;
  private readonly stream: Stream;
  private readonly live = new Map<Topic, LiveTopic>();

  constructor(options: ClientOptions) {
    const base = new URL(options.url);
    if (base.protocol !== "http:" && base.protocol !== "https:") {
      throw new TypeError(`url must be http:// or https://, got ${base.protocol}`);
    }
    this.baseUrl = base.origin;
    this.token = options.token;
    const f = options.fetch ?? globalThis.fetch;
    if (!f) {
      throw new TypeError("no fetch in this environment: pass the fetch option");
    }
    this.fetchFn = f.bind(globalThis);
    this.stream = new Stream({
      ...options.realtime,
      url: this.baseUrl,
      token: options.token,
      WebSocket: options.WebSocket,
    });
    const entity = <T>(path: string) => (id: string, o: GetOptions = {}) =>
      this.get<T>(`${path}/${encodeURIComponent(id)}`, { wait_ms: o.waitMs, min_updated_at: o.minUpdatedAt }, o.signal);
    const list = <T>(path: string) => (o: PageOptions = {}) => this.paginate<T>(path, o);
    this.users = {
      get: entity<User>("/v1/users"),
      list: list<User>("/v1/users"),
      organizations: (id, o = {}) => this.paginate<UserOrganization>(`/v1/users/${encodeURIComponent(id)}/organizations`, o),
    };
    this.organizations = {
      get: entity<Organization>("/v1/organizations"),
      list: list<Organization>("/v1/organizations"),
      memberships: (id, o = {}) => this.paginate<Membership>(`/v1/organizations/${encodeURIComponent(id)}/memberships`, o),
    };
  }

  /** Full-text search over synced users or organizations (`GET /v1/search`). */
  async search(q: string, options: SearchOptions = {}): Promise<Array<User | Organization>> {
    const page = await this.get<{ data: Array<User | Organization> }>(
      "/v1/search",
      { q, kind: options.kind, limit: options.limit },
      options.signal,
    );
    return page.data;
  }

  /** An entity's applied changes, oldest first (`GET /v1/audit`). */
  audit(entityId: string, options: Omit<PageOptions, "cursor"> & { cursor?: string | null } = {}): Paginated<AuditEntry> {
    return this.paginate<AuditEntry>("/v1/audit", options, { entity_id: entityId });
  }

  /**
   * Live changes of `topics` over this client's one WebSocket: reconnects with
   * backoff, resumes each topic from its last `seq` (no gap, no duplicate),
   * refetches a topic the server cannot resume, refreshes a session token
   * before it expires.
   */
  subscribe(topics: Topic | readonly Topic[], options: SubscribeOptions = {}): Subscription {
    return this.stream.subscribe(typeof topics === "string" ? [topics] : topics, options);
  }

  /** Every change this client's stream receives, whatever its topic. */
  onChange(fn: (change: Change) => void): () => void {
    return this.stream.onAnyChange(fn);
  }

  /** The live state of a `user:` or `org:` topic, shared by all its readers (the React hooks use it). */
  liveTopic(topic: Topic): LiveTopic {
    let t = this.live.get(topic);
    if (!t) {
      t = new LiveTopic(topic, this.stream);
      this.live.set(topic, t);
    }
    return t;
  }

  /** Closes the stream; reads still work. */
  close(): void {
    this.stream.close();
    this.live.clear();
  }

  private paginate<T>(path: string, o: PageOptions, extra: Query = {}): Paginated<T> {
    return new Paginated<T>(
      (cursor) => this.get<Page<T>>(path, { ...extra, limit: o.limit, cursor }, o.signal),
      o.cursor ?? null,
    );
  }

  private async get<T>(path: string, query: Query, signal?: AbortSignal): Promise<T> {
    const url = new URL(path, this.baseUrl);
    for (const [k, v] of Object.entries(query)) {
      if (v !== undefined && v !== null && v !== "") {
        url.searchParams.set(k, String(v));
      }
    }
    const headers: Record<string, string> = { accept: "application/json" };
    const token = await resolveToken(this.token);
    if (token) {
      headers.authorization = `Bearer ${token}`;
    }
    let resp: Response;
    try {
      resp = await this.fetchFn(url, { headers, signal });
    } catch (e) {
      if ((e as { name?: string })?.name === "AbortError") {
        throw e;
      }
      throw new NetworkError(`cannot reach ${url.origin}: ${String(e)}`, { cause: e });
    }
    const text = await resp.text();
    let body: unknown = text;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      // Not JSON (a proxy's error page): kept as text in the error.
    }
    if (!resp.ok) {
      throw errorFor(resp.status, body, resp.headers.get("retry-after"));
    }
    return body as T;
  }
}

/** A client for the clerksync server at `options.url`. */
export function createClient(options: ClientOptions): ClerksyncClient {
  return new ClerksyncClient(options);
}

// React hooks over a ClerksyncClient ("@clerksync/client/react").
//
// Owns: exposing live topic state (`useUser`, `useOrganization`,
// `useMemberships`) through `useSyncExternalStore`, and search results that are
// re-run when the stream shows a user or organization change (`useSearch`).
// Must never: open a socket of its own (every hook shares the client's one
// stream and one subscription per topic), or hide an error as empty data.

import {
  createContext,
  createElement,
  useCallback,
  useContext,
  useEffect,
  useMemo,
  useState,
  useSyncExternalStore,
  type ReactNode,
} from "react";
import type { ClerksyncClient } from "./client.js";
import type { TopicState } from "./live.js";
import type { Membership, Organization, SearchKind, Topic, User } from "./types.js";

const ClientContext = createContext<ClerksyncClient | null>(null);

/** Makes `client` the one the hooks below use. */
export function ClerksyncProvider(props: { client: ClerksyncClient; children?: ReactNode }) {
  return createElement(ClientContext.Provider, { value: props.client }, props.children);
}

/** The client given to the nearest `ClerksyncProvider`. */
export function useClerksync(): ClerksyncClient {
  const client = useContext(ClientContext);
  if (!client) {
    throw new Error("no clerksync client: wrap the tree in <ClerksyncProvider client={...}>");
  }
  return client;
}

/** What each hook returns: `data` (null while loading or when absent), `loading`, `error`. */
export interface LiveResult<T> {
  data: T;
  loading: boolean;
  error: Error | null;
}

const IDLE = () => () => {};
const NO_STATE = () => null;

/** The live state of a topic, or null for no topic (an id not known yet). */
export function useTopic(topic: Topic | null): TopicState | null {
  const client = useClerksync();
  const live = useMemo(() => (topic ? client.liveTopic(topic) : null), [client, topic]);
  const subscribe = useCallback((cb: () => void) => (live ? live.subscribe(cb) : IDLE()), [live]);
  const get = useMemo(() => (live ? live.getState : NO_STATE), [live]);
  return useSyncExternalStore(subscribe, get, get);
}

function result<T>(state: TopicState | null, pick: (s: TopicState) => T, empty: T): LiveResult<T> {
  if (!state) {
    return { data: empty, loading: false, error: null };
  }
  return {
    data: state.status === "ready" ? pick(state) : empty,
    loading: state.status === "loading",
    error: state.error,
  };
}

/** A user, live: `data` is null while loading, when never synced and once deleted. */
export function useUser(id: string | null | undefined): LiveResult<User | null> {
  const state = useTopic(id ? `user:${id}` : null);
  return result(state, (s) => s.user, null);
}

/** An organization, live: `data` is null while loading, when never synced and once deleted. */
export function useOrganization(id: string | null | undefined): LiveResult<Organization | null> {
  const state = useTopic(id ? `org:${id}` : null);
  return result(state, (s) => s.organization, null);
}

const NO_MEMBERS: readonly Membership[] = [];

/** An organization's members, live (ordered by membership id; at most 1,000, see `truncated` via `useTopic`). */
export function useMemberships(orgId: string | null | undefined): LiveResult<readonly Membership[]> {
  const state = useTopic(orgId ? `org:${orgId}` : null);
  return result(state, (s) => s.memberships, NO_MEMBERS);
}

export interface UseSearchOptions {
  kind?: SearchKind;
  limit?: number;
  /** Wait this long after the last keystroke or change before searching. Default 200 ms. */
  debounceMs?: number;
}

const NO_RESULTS: Array<User | Organization> = [];

/**
 * Search results for `q` (empty `q`: none). Re-run when this client's stream
 * shows a user or organization change, on whatever topics it is subscribed to
 * (search needs the API token, which may subscribe to `*`).
 */
export function useSearch(q: string, options: UseSearchOptions = {}): LiveResult<Array<User | Organization>> {
  const client = useClerksync();
  const { kind, limit, debounceMs = 200 } = options;
  const [res, setRes] = useState<LiveResult<Array<User | Organization>>>({
    data: NO_RESULTS,
    loading: q.trim() !== "",
    error: null,
  });
  const [changes, setChanges] = useState(0);
  useEffect(
    () =>
      client.onChange((c) => {
        if (c.kind === "user" || c.kind === "organization") {
          setChanges((n) => n + 1);
        }
      }),
    [client],
  );
  useEffect(() => {
    if (q.trim() === "") {
      setRes({ data: NO_RESULTS, loading: false, error: null });
      return;
    }
    const abort = new AbortController();
    setRes((r) => ({ ...r, loading: true }));
    const timer = setTimeout(() => {
      client.search(q, { kind, limit, signal: abort.signal }).then(
        (data) => setRes({ data, loading: false, error: null }),
        (e: unknown) => {
          if ((e as { name?: string })?.name !== "AbortError") {
            setRes({ data: NO_RESULTS, loading: false, error: e instanceof Error ? e : new Error(String(e)) });
          }
        },
      );
    }, debounceMs);
    return () => {
      clearTimeout(timer);
      abort.abort();
    };
  }, [client, q, kind, limit, debounceMs, changes]);
  return res;
}

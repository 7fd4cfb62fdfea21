// Live topic state: a `user:` or `org:` topic's current record and member list,
// kept up to date from the stream, readable synchronously (what React's
// `useSyncExternalStore` needs).
//
// Owns: folding a snapshot and the changes after it into one immutable state
// per topic, shared by every reader of that topic on a client. Must never:
// mutate a state object a reader already has (React compares by identity), or
// keep a topic subscribed once its last reader has gone (the object stays,
// holding nothing, so a reader that comes back finds the same one).

import type { Stream, Subscription } from "./stream.js";
import type { Change, Membership, Organization, SnapshotData, Topic, User } from "./types.js";

export interface TopicState {
  /** `loading` until the first snapshot; `error` once the topic was refused or revoked. */
  status: "loading" | "ready" | "error";
  error: Error | null;
  /** The user of a `user:` topic: null once deleted (or never synced). */
  user: User | null;
  /** The organization of an `org:` topic: null once deleted (or never synced). */
  organization: Organization | null;
  /** The topic's live memberships, ordered by id. */
  memberships: readonly Membership[];
  /** The snapshot listed at most 1,000 members and there were more. */
  truncated: boolean;
  /** The last seq applied. */
  seq: number | null;
}

const LOADING: TopicState = {
  status: "loading",
  error: null,
  user: null,
  organization: null,
  memberships: [],
  truncated: false,
  seq: null,
};

export class LiveTopic {
  private state: TopicState = LOADING;
  private readonly listeners = new Set<() => void>();
  private sub: Subscription | null = null;

  constructor(
    readonly topic: Topic,
    private readonly stream: Stream,
  ) {
    if (topic === "*") {
      throw new TypeError("live state is for user: and org: topics");
    }
  }

  /** The current state (the same object until something changes). */
  getState = (): TopicState => this.state;

  /** Calls `listener` after each change; the first listener opens the subscription. */
  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    if (!this.sub) {
      this.state = LOADING;
      this.sub = this.stream.subscribe([this.topic], {
        snapshot: true,
        onSnapshot: (_t, data, seq) => this.onSnapshot(data, seq),
        onChange: (c) => this.onChange(c),
        onError: (e) => {
          // Only a refused or ended topic makes the state an error; a dropped
          // connection is reconnected and resumed.
          if (e.name === "TopicError" || e.name === "StreamClosedError") {
            this.set({ ...this.state, status: "error", error: e });
          }
        },
      });
    }
    return () => {
      this.listeners.delete(listener);
      if (this.listeners.size === 0 && this.sub) {
        this.sub.close();
        this.sub = null;
      }
    };
  };

  private onSnapshot(data: SnapshotData, seq: number): void {
    this.set({
      status: "ready",
      error: null,
      user: data.user ?? null,
      organization: data.organization ?? null,
      memberships: sortById(data.memberships ?? []),
      truncated: Boolean(data.truncated),
      seq,
    });
  }

  private onChange(c: Change): void {
    const s = this.state;
    const next: TopicState = { ...s, seq: c.seq };
    // A frame carries the entity's current record (null once deleted), so
    // applying it is idempotent and order-proof within a topic.
    if (c.kind === "user") {
      next.user = (c.data as User | null) ?? null;
    } else if (c.kind === "organization") {
      next.organization = (c.data as Organization | null) ?? null;
    } else if (c.kind === "membership") {
      const rest = s.memberships.filter((m) => m.id !== c.id);
      next.memberships =
        c.data && c.type !== "delete" ? sortById([...rest, { ...(c.data as Membership), id: c.id }]) : rest;
    } else {
      return;
    }
    this.set(next);
  }

  private set(state: TopicState): void {
    this.state = state;
    for (const l of [...this.listeners]) {
      l();
    }
  }
}

function sortById<T extends { id: string }>(list: readonly T[]): T[] {
  return [...list].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

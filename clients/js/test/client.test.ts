// The client against the real server: reads, typed errors, pagination, a
// subscription, reconnect and resume across a server restart (compared with
// the change feed), and session-token refresh on the open socket.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  createClient,
  GoneError,
  NotFoundError,
  TopicError,
  UnauthorizedError,
  type Change,
  type Membership,
  type SnapshotData,
  type StreamStatus,
  type Topic,
} from "../src/index.js";
import {
  API_TOKEN,
  CheckedWebSocket,
  generateKeys,
  membership,
  org,
  protocolViolations,
  Server,
  sessionToken,
  sleep,
  tick,
  until,
  user,
} from "./harness.js";

describe("reads", () => {
  let server: Server;
  beforeAll(async () => {
    server = await Server.start();
    for (const [id, name] of [
      ["user_r1", "Ada"],
      ["user_r2", "Grace"],
      ["user_r3", "Edsger"],
      ["user_r4", "Barbara"],
      ["user_r5", "Donald"],
    ]) {
      await server.post("user.created", user(id, name));
    }
    await server.post("organization.created", org("org_r1", "Readers"));
    await server.post("organizationMembership.created", membership("orgmem_r1", "org_r1", "user_r1", "org:admin"));
    await server.post("organizationMembership.created", membership("orgmem_r2", "org_r1", "user_r2"));
    await server.post("user.created", user("user_gone", "Gone"));
    await server.post("user.deleted", { id: "user_gone", object: "user", deleted: true });
  });
  afterAll(() => server?.dispose());

  it("gets users and organizations by id, waiting for them to sync", async () => {
    const c = createClient({ url: server.url, token: API_TOKEN });
    const u = await c.users.get("user_r1", { waitMs: 10_000 });
    expect(u.first_name).toBe("Ada");
    expect(u.primary_email_address).toBe("user_r1@example.test");
    const o = await c.organizations.get("org_r1", { waitMs: 10_000 });
    expect(o.name).toBe("Readers");
  });

  it("turns 401, 404 and 410 into typed errors", async () => {
    const c = createClient({ url: server.url, token: API_TOKEN });
    await expect(c.users.get("user_never_seen")).rejects.toBeInstanceOf(NotFoundError);
    await c.users.get("user_r5", { waitMs: 10_000 });
    const gone = await c.users.get("user_gone", { waitMs: 10_000 }).catch((e: unknown) => e);
    expect(gone).toBeInstanceOf(GoneError);
    expect((gone as GoneError).id).toBe("user_gone");
    expect((gone as GoneError).status).toBe(410);
    const wrong = createClient({ url: server.url, token: "not-the-token" });
    await expect(wrong.users.get("user_r1")).rejects.toBeInstanceOf(UnauthorizedError);
  });

  it("walks every page of a list with for await", async () => {
    const c = createClient({ url: server.url, token: API_TOKEN });
    await c.users.get("user_r5", { waitMs: 10_000 });
    const ids: string[] = [];
    for await (const u of c.users.list({ limit: 2 })) {
      ids.push(u.id);
    }
    expect(ids).toEqual(["user_r1", "user_r2", "user_r3", "user_r4", "user_r5"]);
    let pages = 0;
    for await (const p of c.users.list({ limit: 2 }).pages()) {
      pages += 1;
      expect(p.data.length).toBeLessThanOrEqual(2);
    }
    expect(pages).toBe(3);
  });

  it("lists memberships, a user's organizations and the audit trail", async () => {
    const c = createClient({ url: server.url, token: API_TOKEN });
    await c.organizations.get("org_r1", { waitMs: 10_000 });
    // The memberships were posted after the organization: wait for the second.
    await c.users.get("user_r2", { waitMs: 10_000 });
    let members: Membership[] = [];
    for (let i = 0; i < 400 && members.length < 2; i++) {
      members = await c.organizations.memberships("org_r1", { limit: 1 }).all();
      if (members.length < 2) await sleep(25);
    }
    expect(members.map((m) => [m.id, m.user_id, m.role])).toEqual([
      ["orgmem_r1", "user_r1", "org:admin"],
      ["orgmem_r2", "user_r2", "org:member"],
    ]);
    const orgs = await c.users.organizations("user_r1").all();
    expect(orgs.map((o) => [o.id, o.role, o.membership_id])).toEqual([["org_r1", "org:admin", "orgmem_r1"]]);
    const audit = await c.audit("user_r1", { limit: 1 }).all();
    expect(audit[0]).toMatchObject({ entity_id: "user_r1", operation: "create", kind: "user" });
  });

  it("searches users by name", async () => {
    const c = createClient({ url: server.url, token: API_TOKEN });
    let found: string[] = [];
    // The index follows the store asynchronously.
    for (let i = 0; i < 400 && !found.includes("user_r3"); i++) {
      found = (await c.search("Edsger", { kind: "users" })).map((r) => r.id);
      if (!found.includes("user_r3")) await sleep(50);
    }
    expect(found).toEqual(["user_r3"]);
  });
});

describe("realtime", () => {
  const keys = generateKeys();
  let server: Server;
  beforeAll(async () => {
    server = await Server.start({
      env: { CLERKSYNC_CLERK_JWT_KEY: keys.publicPem, CLERKSYNC_CLERK_LEEWAY_SECS: "0" },
    });
    await server.post("organization.created", org("org_live", "Live"));
    await server.post("user.created", user("user_live", "Live"));
    await server.post("organizationMembership.created", membership("orgmem_l1", "org_live", "user_live"));
    const c = createClient({ url: server.url, token: API_TOKEN });
    await c.organizations.get("org_live", { waitMs: 10_000 });
    await c.users.get("user_live", { waitMs: 10_000 });
  });
  afterAll(() => server?.dispose());

  it("starts from a snapshot and sees a membership change", async () => {
    const c = createClient({ url: server.url, token: API_TOKEN, WebSocket: CheckedWebSocket });
    const snapshots: SnapshotData[] = [];
    const changes: Change[] = [];
    const sub = c.subscribe("org:org_live", {
      snapshot: true,
      onSnapshot: (_t, d) => snapshots.push(d),
      onChange: (ch) => changes.push(ch),
    });
    await until(() => snapshots.length === 1, "snapshot");
    expect(snapshots[0].organization?.name).toBe("Live");
    await until(() => snapshots[0].memberships.length > 0 || changes.length > 0, "the first member");
    await server.post("user.created", user("user_live2", "Second"));
    await server.post("organizationMembership.created", membership("orgmem_l2", "org_live", "user_live2"));
    await until(() => changes.some((ch) => ch.id === "orgmem_l2"), "the new membership");
    const ch = changes.find((x) => x.id === "orgmem_l2")!;
    expect(ch).toMatchObject({ topic: "org:org_live", kind: "membership", type: "create" });
    expect((ch.data as Membership).user_id).toBe("user_live2");
    sub.close();
    c.close();
  });

  it("refuses a topic the session may not see, with a TopicError", async () => {
    const c = createClient({
      url: server.url,
      token: () => sessionToken(keys, "user_live", 60),
      WebSocket: CheckedWebSocket,
    });
    const errors: Error[] = [];
    c.subscribe("user:user_someone_else", { onError: (e) => errors.push(e) });
    await until(() => errors.length > 0, "the refusal");
    expect(errors[0]).toBeInstanceOf(TopicError);
    c.close();
  });

  /** A session client watching `user:user_live` from a snapshot. */
  function watchOwnUser(token: () => string | null) {
    const w = { statuses: [] as StreamStatus[], changes: [] as Change[], snapshot: false };
    const client = createClient({ url: server.url, WebSocket: CheckedWebSocket, token });
    client.subscribe("user:user_live", {
      snapshot: true,
      onSnapshot: () => (w.snapshot = true),
      onChange: (ch) => w.changes.push(ch),
      onStatus: (s) => w.statuses.push(s),
    });
    return { client, w };
  }

  it("refreshes a session token on the open socket before it expires", async () => {
    let issued = 0;
    // Four-second tokens, no leeway: without a refresh the server would close
    // the socket (4001) within seconds.
    const { client, w } = watchOwnUser(() => {
      issued += 1;
      return sessionToken(keys, "user_live", 4);
    });
    await until(() => w.snapshot, "snapshot");
    // Two refreshes past the first token's expiry.
    await until(() => issued >= 4, "refreshed tokens");
    await server.post("user.updated", { ...user("user_live", "Renamed"), updated_at: tick() });
    await until(() => w.changes.some((ch) => ch.data?.first_name === "Renamed"), "the rename");
    expect(w.statuses).not.toContain("reconnecting");
    client.close();
  });

  it("reconnects with a fresh token when the server closes an expired session (4001)", async () => {
    // While "offline" the token source has nothing (Clerk unreachable): the
    // refresh cannot happen, the server closes the socket at expiry, and the
    // client reconnects with the next token it can get and resumes.
    let offline = false;
    const { client, w } = watchOwnUser(() => {
      if (offline && w.statuses.includes("reconnecting")) offline = false;
      return offline ? null : sessionToken(keys, "user_live", 3);
    });
    await until(() => w.snapshot, "snapshot");
    offline = true;
    await until(() => w.statuses.filter((s) => s === "open").length >= 2, "the reconnect after expiry");
    await server.post("user.updated", { ...user("user_live", "AfterExpiry"), updated_at: tick() });
    await until(() => w.changes.some((ch) => ch.data?.first_name === "AfterExpiry"), "a change after the reconnect");
    expect(new Set(w.changes.map((ch) => ch.seq)).size).toBe(w.changes.length);
    client.close();
  });
});

describe("reconnect", () => {
  it("resumes after a server restart with no lost and no doubled change", async () => {
    let server = await Server.start();
    const topic: Topic = "org:org_rs";
    await server.post("organization.created", org("org_rs", "Restart"));
    const c = createClient({
      url: server.url,
      token: API_TOKEN,
      WebSocket: CheckedWebSocket,
      realtime: { minReconnectDelayMs: 100, maxReconnectDelayMs: 1000 },
    });
    await c.organizations.get("org_rs", { waitMs: 10_000 });
    const seen: Change[] = [];
    const statuses: StreamStatus[] = [];
    const sub = c.subscribe(topic, { onChange: (ch) => seen.push(ch), onStatus: (s) => statuses.push(s) });
    await until(() => sub.lastSeq(topic) !== null, "subscribed");
    const start = sub.lastSeq(topic)!;
    for (let i = 1; i <= 3; i++) {
      await server.post("organizationMembership.created", membership(`orgmem_rs${i}`, "org_rs", `user_rs${i}`));
    }
    await until(() => seen.length === 3, "the first three changes");

    const { dir, port } = server;
    await server.stop();
    server = await Server.start({ dir, port });
    // Posted as soon as the server is back: the client is still backing off,
    // or has just resumed; either way it must see each change once.
    for (let i = 4; i <= 6; i++) {
      await server.post("organizationMembership.created", membership(`orgmem_rs${i}`, "org_rs", `user_rs${i}`));
    }
    await server.post("organization.updated", { ...org("org_rs", "Restarted") });
    await until(() => seen.some((ch) => ch.kind === "organization"), "the changes after the restart");
    expect(statuses).toContain("reconnecting");

    // The change feed of the topic since the first subscription, read by a
    // second client's replay.
    const feed: Change[] = [];
    const reader = createClient({ url: server.url, token: API_TOKEN, WebSocket: CheckedWebSocket });
    const rsub = reader.subscribe(topic, { since: start, onChange: (ch) => feed.push(ch) });
    await until(() => (rsub.lastSeq(topic) ?? -1) >= seen[seen.length - 1].seq, "the replay");
    expect(seen.map((ch) => ch.seq)).toEqual(feed.map((ch) => ch.seq));
    expect(new Set(seen.map((ch) => ch.seq)).size).toBe(seen.length);
    expect(seen.filter((ch) => ch.kind === "membership").map((ch) => ch.id)).toEqual([
      "orgmem_rs1",
      "orgmem_rs2",
      "orgmem_rs3",
      "orgmem_rs4",
      "orgmem_rs5",
      "orgmem_rs6",
    ]);
    reader.close();
    c.close();
    await server.dispose();
  });
});

describe("resync", () => {
  it("answers a resync by refetching the topic's state as a snapshot", async () => {
    // At most two replayed changes: a resume from 0 over five is refused.
    const server = await Server.start({ env: { CLERKSYNC_REALTIME_MAX_REPLAY: "2" } });
    await server.post("organization.created", org("org_rsy", "Resync"));
    for (let i = 1; i <= 4; i++) {
      await server.post("organizationMembership.created", membership(`orgmem_rsy${i}`, "org_rsy", `user_rsy${i}`));
    }
    const c = createClient({ url: server.url, token: API_TOKEN, WebSocket: CheckedWebSocket });
    for (let i = 0; i < 400 && (await c.organizations.memberships("org_rsy").all()).length < 4; i++) {
      await sleep(25);
    }
    const resyncs: string[] = [];
    const snapshots: SnapshotData[] = [];
    const changes: Change[] = [];
    c.subscribe("org:org_rsy", {
      since: 0,
      onResync: (_t, reason) => resyncs.push(reason),
      onSnapshot: (_t, d) => snapshots.push(d),
      onChange: (ch) => changes.push(ch),
    });
    await until(() => snapshots.length > 0, "the snapshot after the resync");
    expect(resyncs.length).toBe(1);
    expect(changes).toEqual([]);
    expect(snapshots[0].memberships.map((m) => m.id)).toEqual(["orgmem_rsy1", "orgmem_rsy2", "orgmem_rsy3", "orgmem_rsy4"]);
    // And it is live after the snapshot.
    await server.post("organizationMembership.created", membership("orgmem_rsy5", "org_rsy", "user_rsy5"));
    await until(() => changes.some((ch) => ch.id === "orgmem_rsy5"), "a change after the snapshot");
    // One refetch, not one per acknowledgement.
    expect(snapshots.length).toBe(1);
    c.close();
    await server.dispose();
  });
});

describe("protocol", () => {
  it("every frame sent and received above matched clients/realtime.schema.json", () => {
    expect(protocolViolations).toEqual([]);
  });
});

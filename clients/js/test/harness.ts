// Test harness: the real `clerksync serve` binary as a child process on a
// random port, signed Clerk webhooks, and Clerk-style RS256 session tokens made
// with a key generated per run (never committed). No mocks.

import { Ajv2020, type ValidateFunction } from "ajv/dist/2020.js";
import { spawn, type ChildProcess } from "node:child_process";
import { createHmac, generateKeyPairSync, randomBytes, sign as rsaSign, type KeyObject } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "../../..");

/** The binary under test: CLERKSYNC_BIN, else the cargo target dir's debug build. */
export function binary(): string {
  if (process.env.CLERKSYNC_BIN) {
    return process.env.CLERKSYNC_BIN;
  }
  const target = process.env.CARGO_TARGET_DIR ?? join(repo, "target");
  return join(target, "debug", "clerksync");
}

export const API_TOKEN = "js-client-api-token";
export const ISSUER = "https://clerk.example.test";
const WEBHOOK_KEY = randomBytes(32);

export interface Keys {
  privateKey: KeyObject;
  publicPem: string;
}

export function generateKeys(): Keys {
  const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  return { privateKey, publicPem: publicKey.export({ type: "spki", format: "pem" }).toString() };
}

const b64url = (b: Buffer | string) => Buffer.from(b).toString("base64url");

/** A Clerk-style session token for `sub`, valid for `lifetimeSecs` from now. */
export function sessionToken(keys: Keys, sub: string, lifetimeSecs: number): string {
  const now = Math.floor(Date.now() / 1000);
  const header = b64url(JSON.stringify({ alg: "RS256", typ: "JWT" }));
  const claims = b64url(
    JSON.stringify({ sub, iss: ISSUER, iat: now, nbf: now - 1, exp: now + lifetimeSecs, sid: "sess_js" }),
  );
  const sig = rsaSign("sha256", Buffer.from(`${header}.${claims}`), keys.privateKey);
  return `${header}.${claims}.${b64url(sig)}`;
}

export interface ServerOptions {
  /** Extra CLERKSYNC_* settings. */
  env?: Record<string, string>;
  /** Reuse a data directory (a restart); a fresh one otherwise. */
  dir?: string;
  /** Listen on this port (a restart on the same address); 0 otherwise. */
  port?: number;
}

export class Server {
  private exited: Promise<number | null>;

  private constructor(
    readonly child: ChildProcess,
    readonly url: string,
    readonly port: number,
    readonly dir: string,
    private readonly ownsDir: boolean,
  ) {
    this.exited = new Promise((res) => child.once("exit", (code) => res(code)));
  }

  /** Starts `serve` and resolves once it says where it listens and `/healthz` answers. */
  static async start(options: ServerOptions = {}): Promise<Server> {
    const ownsDir = options.dir === undefined;
    const dir = options.dir ?? mkdtempSync(join(tmpdir(), "clerksync-js-"));
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) {
      if (v !== undefined && !k.startsWith("CLERKSYNC_") && k !== "RUST_LOG") {
        env[k] = v;
      }
    }
    Object.assign(env, {
      CLERKSYNC_WEBHOOK_SECRET: `whsec_${WEBHOOK_KEY.toString("base64")}`,
      CLERKSYNC_DATABASE_URL: `sqlite://${join(dir, "t.db")}`,
      CLERKSYNC_SEARCH_DIR: join(dir, "search"),
      CLERKSYNC_LISTEN: `127.0.0.1:${options.port ?? 0}`,
      CLERKSYNC_LOG_FORMAT: "json",
      CLERKSYNC_API_TOKEN: API_TOKEN,
      ...options.env,
    });
    const child = spawn(binary(), ["serve"], { cwd: dir, env, stdio: ["ignore", "ignore", "pipe"] });
    let log = "";
    const addr = await new Promise<string>((res, rej) => {
      const guard = setTimeout(() => rej(new Error(`clerksync never said where it listens:\n${log}`)), 60_000);
      child.once("error", (e) => {
        clearTimeout(guard);
        rej(e);
      });
      child.once("exit", (code) => {
        clearTimeout(guard);
        rej(new Error(`clerksync exited (${code}):\n${log}`));
      });
      child.stderr!.on("data", (chunk: Buffer) => {
        log += chunk.toString();
        for (const line of log.split("\n")) {
          try {
            const a = JSON.parse(line)?.fields?.addr;
            if (typeof a === "string" && !a.endsWith(":0")) {
              clearTimeout(guard);
              res(a);
            }
          } catch {
            // Not a whole JSON line yet.
          }
        }
      });
    });
    child.removeAllListeners("exit");
    const url = `http://${addr}`;
    const server = new Server(child, url, Number(addr.split(":").pop()), dir, ownsDir);
    for (let i = 0; ; i++) {
      try {
        if ((await fetch(`${url}/healthz`)).ok) {
          return server;
        }
      } catch {
        // Not answering yet.
      }
      if (i > 600) {
        throw new Error("clerksync never became healthy");
      }
      await sleep(50);
    }
  }

  /** SIGTERM, and wait for the exit (the data directory stays for a restart). */
  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill("SIGTERM");
    }
    await this.exited;
  }

  /** Stops and removes the data directory it made. */
  async dispose(): Promise<void> {
    await this.stop();
    if (this.ownsDir) {
      rmSync(this.dir, { recursive: true, force: true });
    }
  }

  /** Posts a signed Clerk event; resolves when it is durable (2xx). */
  async post(type: string, data: Record<string, unknown>): Promise<void> {
    const body = JSON.stringify({ data, object: "event", type, timestamp: Date.now() });
    const id = `msg_${randomBytes(12).toString("hex")}`;
    const ts = Math.floor(Date.now() / 1000).toString();
    const sig = createHmac("sha256", WEBHOOK_KEY).update(`${id}.${ts}.${body}`).digest("base64");
    const resp = await fetch(`${this.url}/webhooks/clerk`, {
      method: "POST",
      headers: { "content-type": "application/json", "svix-id": id, "svix-timestamp": ts, "svix-signature": `v1,${sig}` },
      body,
    });
    if (!resp.ok) {
      throw new Error(`webhook ${type} answered ${resp.status}: ${await resp.text()}`);
    }
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Resolves when `check` is true; rejects after a generous hang guard (not a timing assertion). */
export async function until(check: () => boolean, what: string, guardMs = 30_000): Promise<void> {
  const end = Date.now() + guardMs;
  while (!check()) {
    if (Date.now() > end) {
      throw new Error(`gave up waiting: ${what}`);
    }
    await sleep(20);
  }
}

// Clerk payloads, shaped like tests/fixtures/clerk/*.json.

let clock = Date.now();
/** Increasing timestamps: a later update wins (last-writer-wins on updated_at). */
export function tick(): number {
  clock = Math.max(clock + 1, Date.now());
  return clock;
}

export function user(id: string, first: string, email = `${id}@example.test`): Record<string, unknown> {
  const t = tick();
  return {
    id,
    object: "user",
    first_name: first,
    last_name: "Tester",
    username: null,
    image_url: "https://img.example.test/u",
    email_addresses: [{ id: `idn_${id}`, email_address: email, object: "email_address", linked_to: [] }],
    primary_email_address_id: `idn_${id}`,
    phone_numbers: [],
    public_metadata: {},
    private_metadata: {},
    unsafe_metadata: {},
    created_at: t,
    updated_at: t,
  };
}

export function org(id: string, name: string): Record<string, unknown> {
  const t = tick();
  return {
    id,
    object: "organization",
    name,
    slug: name.toLowerCase().replace(/[^a-z0-9]+/g, "-"),
    image_url: "https://img.example.test/o",
    public_metadata: {},
    private_metadata: {},
    created_at: t,
    updated_at: t,
  };
}

export function membership(id: string, orgId: string, userId: string, role = "org:member"): Record<string, unknown> {
  const t = tick();
  return {
    id,
    object: "organization_membership",
    role,
    organization: { id: orgId, object: "organization", name: orgId, slug: orgId, public_metadata: {}, created_at: t, updated_at: t },
    public_user_data: { user_id: userId, first_name: "Member", last_name: userId, identifier: `${userId}@example.test` },
    public_metadata: {},
    private_metadata: {},
    created_at: t,
    updated_at: t,
  };
}

// The realtime protocol's contract: every frame either side sends is checked
// against clients/realtime.schema.json.

const schema = JSON.parse(readFileSync(join(repo, "clients", "realtime.schema.json"), "utf8"));
const ajv = new Ajv2020({ strict: false });
ajv.addSchema(schema);
const validClient = ajv.getSchema(`${schema.$id}#/$defs/ClientMessage`)!;
const validServer = ajv.getSchema(`${schema.$id}#/$defs/ServerMessage`)!;

/** Frames that did not match the schema, with why. */
export const protocolViolations: string[] = [];

function check(valid: ValidateFunction, raw: unknown, side: string): void {
  let msg: unknown;
  try {
    msg = JSON.parse(String(raw));
  } catch {
    protocolViolations.push(`${side} sent a frame that is not JSON: ${String(raw)}`);
    return;
  }
  if (!valid(msg)) {
    protocolViolations.push(`${side} frame ${String(raw)}: ${ajv.errorsText(valid.errors)}`);
  }
}

/** The platform's WebSocket, checking each frame against the protocol's schema. */
export class CheckedWebSocket extends WebSocket {
  constructor(url: string) {
    super(url);
    this.addEventListener("message", (ev) => check(validServer, ev.data, "server"));
    // DEBUG_FRAMES=1 prints every frame the server sends (to read a failing test).
    if (process.env.DEBUG_FRAMES) this.addEventListener("message", (ev) => console.log("<", ev.data));
  }

  override send(data: string): void {
    check(validClient, data, "client");
    super.send(data);
  }
}

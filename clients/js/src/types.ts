// The shapes the clerksync server answers with (see openapi.json at the
// repository root and clients/realtime.schema.json). Records keep Clerk's own
// field names; the index signatures keep fields Clerk adds later reachable.

/** A synced user: Clerk's user object plus `primary_email_address`. */
export interface User {
  id: string;
  object?: "user";
  first_name?: string | null;
  last_name?: string | null;
  username?: string | null;
  image_url?: string | null;
  profile_image_url?: string | null;
  has_image?: boolean;
  /** The primary email as a plain string (null when there is none). */
  primary_email_address: string | null;
  public_metadata?: Record<string, unknown>;
  created_at?: number;
  updated_at?: number;
  [field: string]: unknown;
}

/** A synced organization, as Clerk names its fields. */
export interface Organization {
  id: string;
  object?: "organization";
  name?: string;
  slug?: string | null;
  image_url?: string | null;
  members_count?: number;
  public_metadata?: Record<string, unknown>;
  created_at?: number;
  updated_at?: number;
  [field: string]: unknown;
}

/** What other members of an organization see of a member. */
export interface PublicUserData {
  user_id?: string;
  first_name?: string | null;
  last_name?: string | null;
  username?: string | null;
  image_url?: string | null;
  identifier?: string;
  [field: string]: unknown;
}

/** An organization membership; `role` is normalized to today's keys (`org:admin`, `org:member`, ...). */
export interface Membership {
  id: string;
  object?: "organization_membership";
  user_id: string | null;
  organization_id: string | null;
  role: string | null;
  public_user_data?: PublicUserData;
  organization?: Partial<Organization>;
  created_at?: number;
  updated_at?: number;
  [field: string]: unknown;
}

/** One of a user's organizations (`GET /v1/users/{id}/organizations`). */
export interface UserOrganization extends Organization {
  role: string | null;
  membership_id: string;
}

/** One applied change of an entity (`GET /v1/audit`). */
export interface AuditEntry {
  seq: number;
  svix_id: string;
  kind: string;
  entity_id: string;
  operation: ChangeType;
  version: number;
  /** When it was applied (unix ms). */
  at: number;
  /** Per changed field: its value before and after. */
  changes: Record<string, { before?: unknown; after?: unknown }> | null;
}

/** One page of a list; `next_cursor` is null on the last page. */
export interface Page<T> {
  data: T[];
  next_cursor: string | null;
}

export type SearchKind = "users" | "organizations";

// ---------------------------------------------------------------------------
// The realtime stream (`GET /v1/realtime`).

/** `user:<id>`, `org:<id>`, or `*` (every change; needs the API token). */
export type Topic = `user:${string}` | `org:${string}` | "*";

export type ChangeType = "create" | "update" | "delete" | "refresh";

/** A committed change on a topic. `data` is the entity's current record, null once deleted. */
export interface Change {
  seq: number;
  topic: Topic;
  type: ChangeType;
  /** `user`, `organization`, `membership`, ... */
  kind: string;
  id: string;
  /** The top-level fields the change touched; `[]` for a `create` (every field is new). */
  changed_fields: string[];
  /** When the change committed (unix ms). */
  committed_at: number;
  data: Record<string, unknown> | null;
}

/** A topic's state as the server's snapshot gives it. */
export interface SnapshotData {
  user?: User | null;
  organization?: Organization | null;
  memberships: Membership[];
  /** More members than the snapshot lists (it holds at most 1,000). */
  truncated: boolean;
}

export type ServerMessage =
  | { type: "ready"; user_id: string | null; seq: number; expires_at: number | null }
  | { type: "subscribed"; topic: Topic; seq?: number; since?: number }
  | { type: "snapshot"; topic: Topic; seq: number; data: SnapshotData }
  | { type: "replayed"; topic: Topic; seq: number; count: number }
  | { type: "resync"; topic?: Topic; reason: string }
  | { type: "unsubscribed"; topic: Topic; reason: string }
  | { type: "error"; topic?: Topic; error: string }
  | { type: "authenticated"; user_id: string; expires_at: number }
  | { type: "pong" };

export type ClientMessage =
  | { type: "subscribe"; topic: Topic; since?: number; snapshot?: boolean }
  | { type: "unsubscribe"; topic: Topic }
  | { type: "auth"; token: string }
  | { type: "ping" };

/** Close codes the server uses (and 1008, a policy refusal, which ends the stream). */
export const CloseCode = {
  Normal: 1000,
  GoingAway: 1001,
  ProtocolError: 1002,
  Abnormal: 1006,
  PolicyViolation: 1008,
  TooBig: 1009,
  Idle: 4000,
  TokenExpired: 4001,
  NoPong: 4002,
  TooSlow: 4008,
} as const;

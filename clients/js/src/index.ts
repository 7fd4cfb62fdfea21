// @clerksync/client: typed reads and live updates from a clerksync server.
// See README.md beside package.json; the React hooks are in "@clerksync/client/react".

export { ClerksyncClient, createClient, Paginated } from "./client.js";
export type { ClientOptions, GetOptions, PageOptions, SearchOptions } from "./client.js";
export {
  ClerksyncError,
  GoneError,
  NetworkError,
  NotFoundError,
  RateLimitedError,
  StreamClosedError,
  TopicError,
  UnauthorizedError,
} from "./errors.js";
export { LiveTopic } from "./live.js";
export type { TopicState } from "./live.js";
export type {
  StreamOptions,
  StreamStatus,
  SubscribeOptions,
  Subscription,
  TokenSource,
  WebSocketConstructor,
  WebSocketLike,
} from "./stream.js";
export { CloseCode } from "./types.js";
export type {
  AuditEntry,
  Change,
  ChangeType,
  ClientMessage,
  Membership,
  Organization,
  Page,
  PublicUserData,
  SearchKind,
  ServerMessage,
  SnapshotData,
  Topic,
  User,
  UserOrganization,
} from "./types.js";

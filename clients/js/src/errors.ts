// Errors as typed exceptions: one class per status a caller handles
// differently, so `catch (e) { if (e instanceof GoneError) ... }` reads plainly.

/** Any non-2xx answer of the server. */
export class ClerksyncError extends Error {
  /** The HTTP status. */
  readonly status: number;
  /** The parsed JSON body (`{"error": "..."}` for most errors), or its text. */
  readonly body: unknown;

  constructor(status: number, message: string, body: unknown) {
    super(message);
    this.name = "ClerksyncError";
    this.status = status;
    this.body = body;
  }
}

/** 401: a missing, wrong or expired token. */
export class UnauthorizedError extends ClerksyncError {
  constructor(message: string, body: unknown) {
    super(401, message, body);
    this.name = "UnauthorizedError";
  }
}

/** 404: never synced (or `/admin` without an admin token). */
export class NotFoundError extends ClerksyncError {
  constructor(message: string, body: unknown) {
    super(404, message, body);
    this.name = "NotFoundError";
  }
}

/** 410: the entity was deleted; `id` names it. */
export class GoneError extends ClerksyncError {
  readonly id: string | null;

  constructor(message: string, body: unknown) {
    super(410, message, body);
    this.name = "GoneError";
    const id = (body as { id?: unknown } | null)?.id;
    this.id = typeof id === "string" ? id : null;
  }
}

/** 429: too many requests or connections; `retryAfterSecs` from `Retry-After` when sent. */
export class RateLimitedError extends ClerksyncError {
  readonly retryAfterSecs: number | null;

  constructor(message: string, body: unknown, retryAfterSecs: number | null) {
    super(429, message, body);
    this.name = "RateLimitedError";
    this.retryAfterSecs = retryAfterSecs;
  }
}

/** The server could not be reached (no HTTP answer at all). */
export class NetworkError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "NetworkError";
  }
}

/** The server refused a subscription or ended it (`topic` says which). */
export class TopicError extends Error {
  readonly topic: string;

  constructor(topic: string, message: string) {
    super(`${topic}: ${message}`);
    this.name = "TopicError";
    this.topic = topic;
  }
}

/** The stream ended for good: closed by the caller, or refused by policy (1008). */
export class StreamClosedError extends Error {
  readonly code: number;
  readonly reason: string;

  constructor(code: number, reason: string) {
    super(`realtime stream closed (${code}${reason ? `: ${reason}` : ""})`);
    this.name = "StreamClosedError";
    this.code = code;
    this.reason = reason;
  }
}

/** The error class for an HTTP answer. */
export function errorFor(status: number, body: unknown, retryAfter: string | null): ClerksyncError {
  const text = (body as { error?: unknown } | null)?.error;
  const message = typeof text === "string" ? text : `HTTP ${status}`;
  switch (status) {
    case 401:
      return new UnauthorizedError(message, body);
    case 404:
      return new NotFoundError(message, body);
    case 410:
      return new GoneError(typeof text === "string" ? text : "deleted", body);
    case 429: {
      const secs = retryAfter === null ? NaN : Number(retryAfter);
      return new RateLimitedError(message, body, Number.isFinite(secs) ? secs : null);
    }
    default:
      return new ClerksyncError(status, message, body);
  }
}

-- The inbox: one row per Svix delivery id, the durable log every later stage reads.
CREATE TABLE inbox (
    seq              BIGSERIAL PRIMARY KEY,
    svix_id          TEXT    NOT NULL UNIQUE,
    event_type       TEXT    NOT NULL,
    entity_key       TEXT,
    object_id        TEXT,
    svix_timestamp   BIGINT  NOT NULL,
    event_timestamp  BIGINT,
    received_at      BIGINT  NOT NULL,
    body             TEXT    NOT NULL,
    status           TEXT    NOT NULL DEFAULT 'pending',
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT  NOT NULL DEFAULT 0,
    leased_until     BIGINT,
    last_error       TEXT,
    processed_at     BIGINT,
    duration_us      BIGINT
);
CREATE INDEX inbox_status_seq ON inbox (status, seq);
CREATE INDEX inbox_entity ON inbox (entity_key, seq);
CREATE INDEX inbox_type ON inbox (event_type, seq);

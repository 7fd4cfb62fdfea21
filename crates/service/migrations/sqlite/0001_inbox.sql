-- The inbox: one row per Svix delivery id, the durable log every later stage reads.
CREATE TABLE inbox (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    svix_id          TEXT    NOT NULL UNIQUE,
    event_type       TEXT    NOT NULL,
    entity_key       TEXT,
    object_id        TEXT,
    svix_timestamp   INTEGER NOT NULL,          -- seconds, of the delivery attempt
    event_timestamp  INTEGER,                   -- ms, envelope `timestamp`
    received_at      INTEGER NOT NULL,          -- ms
    body             TEXT    NOT NULL,
    status           TEXT    NOT NULL DEFAULT 'pending',  -- pending|done|failed|dead|discarded
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL DEFAULT 0,  -- ms
    leased_until     INTEGER,                     -- ms; a worker holds the row until then
    last_error       TEXT,
    processed_at     INTEGER,                     -- ms
    duration_us      INTEGER
);
CREATE INDEX inbox_status_seq ON inbox (status, seq);
CREATE INDEX inbox_entity ON inbox (entity_key, seq);
CREATE INDEX inbox_type ON inbox (event_type, seq);

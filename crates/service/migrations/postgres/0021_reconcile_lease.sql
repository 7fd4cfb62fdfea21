-- Scheduled reconciliation (backfill/schedule.rs): one pass at a time across
-- every node sharing this database. One row per named job ('reconcile'):
-- who holds the lease and until when (a killed node's lease expires and
-- another takes it over), and the last finished pass, so every node answers
-- GET /admin/reconcile alike and schedules the next pass from the same time.
CREATE TABLE reconcile_lease (
    name              TEXT PRIMARY KEY,
    holder            TEXT,                -- NULL: free
    expires_at        BIGINT NOT NULL DEFAULT 0,   -- ms; past it the lease is free
    started_at        BIGINT,                  -- ms; the pass the holder runs
    last_finished_at  BIGINT,                  -- ms
    last_result       TEXT                 -- JSON: the last pass's report or error
);

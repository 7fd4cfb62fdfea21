-- Backfill from Clerk's Backend API (src/backfill/). Numbered apart from the
-- webhook path's migrations so parallel work on those never collides.
-- One row per resource (users, organizations, memberships, ...): the pass in
-- progress or the last one, where it stands, and what it did.
CREATE TABLE backfill_checkpoints (
    resource     TEXT PRIMARY KEY,
    pass_id      TEXT NOT NULL,
    started_at   INTEGER NOT NULL,          -- ms; reconciliation spares rows synced since
    next_offset  INTEGER NOT NULL,          -- the next page to ask for
    status       TEXT NOT NULL,        -- running | listed | complete | refused
    seen         INTEGER NOT NULL DEFAULT 0,
    created      INTEGER NOT NULL DEFAULT 0,
    updated      INTEGER NOT NULL DEFAULT 0,
    unchanged    INTEGER NOT NULL DEFAULT 0,
    deleted      INTEGER NOT NULL DEFAULT 0,
    finished_at  INTEGER,
    note         TEXT
);
-- Which entities the current pass of a resource has listed: reconciliation
-- deletes only what a complete pass did not see. Kept on disk (not in memory)
-- so a pass resumed after kill -9 still knows its first half, and memory stays
-- flat for a million users.
CREATE TABLE backfill_seen (
    resource   TEXT NOT NULL,
    entity_id  TEXT NOT NULL,
    pass_id    TEXT NOT NULL,
    PRIMARY KEY (resource, entity_id)
);

-- Bodies apart from the inbox rows. A body (about 2 KB) is written once and
-- never changes, while its row's status changes at least once more (done,
-- failed, retried). With the body inline every status change rewrote a whole
-- page per event (one 2 KB row fills most of a 4 KB page) into the WAL and
-- again at checkpoint; now it rewrites a row of about 150 bytes.
CREATE TABLE inbox_bodies (
    seq   INTEGER PRIMARY KEY,   -- inbox.seq
    body  TEXT    NOT NULL
);
INSERT INTO inbox_bodies (seq, body) SELECT seq, body FROM inbox;
ALTER TABLE inbox DROP COLUMN body;

-- Bodies apart from the inbox rows. A body (about 2 KB) is written once and
-- never changes, while its row is updated at least twice more (lease, done):
-- with the body inline each update copied the whole tuple, body included, into
-- a new row version and the WAL. Now an update copies about 150 bytes.
CREATE TABLE inbox_bodies (
    seq   BIGINT PRIMARY KEY,    -- inbox.seq
    body  TEXT   NOT NULL
);
INSERT INTO inbox_bodies (seq, body) SELECT seq, body FROM inbox;
ALTER TABLE inbox DROP COLUMN body;

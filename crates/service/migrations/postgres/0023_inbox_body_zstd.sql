-- Delivery bodies compressed with zstd (store/body.rs): rows written from now
-- on keep the frame here and an empty `body`; rows written before keep their
-- plain `body` and a NULL here, and still read (readers take
-- COALESCE(body_zstd, convert_to(body, 'UTF8'))). A body past the raw-body
-- retention is deleted with its row of this table; the inbox row (the
-- delivery's metadata) stays. Compressed frames gain nothing from TOAST's own
-- compression: stored as they are.
ALTER TABLE inbox_bodies ADD COLUMN body_zstd BYTEA;
ALTER TABLE inbox_bodies ALTER COLUMN body_zstd SET STORAGE EXTERNAL;

-- Delivery bodies compressed with zstd (store/body.rs): rows written from now
-- on keep the frame here and an empty `body`; rows written before keep their
-- plain `body` and a NULL here, and still read (readers take
-- COALESCE(body_zstd, body)). A body past the raw-body retention is deleted
-- with its row of this table; the inbox row (the delivery's metadata) stays.
ALTER TABLE inbox_bodies ADD COLUMN body_zstd BLOB;

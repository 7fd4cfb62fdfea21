-- zstd dictionaries for delivery bodies (store/body.rs), trained at run time
-- from this deployment's own first stored bodies. A body frame names its
-- dictionary by `id` (zstd's dictionary id, in the frame header); frames
-- written before there was a dictionary name none and still read. A row is
-- never changed or deleted while a frame may name it.
CREATE TABLE body_dictionaries (
    id          INTEGER PRIMARY KEY,   -- zstd dictionary id
    dict        BLOB    NOT NULL,
    created_at  INTEGER NOT NULL       -- ms
);

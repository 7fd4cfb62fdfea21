-- Each change-feed consumer's position: the last feed seq it has fully handled.
CREATE TABLE feed_checkpoints (consumer TEXT PRIMARY KEY, seq INTEGER NOT NULL, updated_at INTEGER NOT NULL);

-- Who a delivery concerns, found by index when a deleted user is erased:
-- before, erasure scanned every membership body with LIKE '%user_id%'
-- (seconds per purge on a large inbox, with intake waiting).
-- user_id: the user itself (user.*), the owner (session.*, email.*, sms.*,
-- anything with data.user_id), the member (public_user_data.user_id).
ALTER TABLE inbox ADD COLUMN user_id TEXT;
-- Email addresses and phone numbers each delivery carries, lowercased: an
-- email.created with user_id null is still found by its address. Personal data
-- itself, so erasure deletes a delivery's rows with its body's values.
CREATE TABLE inbox_contacts (
    contact TEXT    NOT NULL,
    seq     INTEGER NOT NULL,   -- inbox.seq
    PRIMARY KEY (contact, seq)
) WITHOUT ROWID;
CREATE INDEX inbox_contacts_seq ON inbox_contacts (seq);

-- Existing rows: the same ids and contacts, read from the stored bodies.
UPDATE inbox SET user_id = (
    SELECT CASE
        WHEN inbox.event_type LIKE 'user.%' THEN json_extract(b.body, '$.data.id')
        WHEN inbox.event_type LIKE 'organizationMembership.%'
            THEN coalesce(json_extract(b.body, '$.data.public_user_data.user_id'),
                          json_extract(b.body, '$.data.user_id'))
        ELSE json_extract(b.body, '$.data.user_id')
    END
    FROM inbox_bodies b WHERE b.seq = inbox.seq AND json_valid(b.body)
);
UPDATE inbox SET user_id = NULL WHERE typeof(user_id) <> 'text';
CREATE INDEX inbox_user ON inbox (user_id) WHERE user_id IS NOT NULL;

INSERT OR IGNORE INTO inbox_contacts (contact, seq)
SELECT lower(trim(c.value)), b.seq
FROM inbox_bodies b, json_tree(b.body, '$.data') c
WHERE json_valid(b.body)
  AND c.type = 'text'
  AND c.key IN ('email_address', 'to_email_address', 'phone_number', 'to_phone_number',
                'from_email_address', 'identifier')
  AND trim(c.value) <> '';

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
    contact TEXT   NOT NULL,
    seq     BIGINT NOT NULL,    -- inbox.seq
    PRIMARY KEY (contact, seq)
);
CREATE INDEX inbox_contacts_seq ON inbox_contacts (seq);

-- Existing rows: the same ids and contacts, read from the stored bodies. A body
-- PostgreSQL cannot read as JSON (it was accepted by a more lenient parser) is
-- skipped rather than failing the upgrade.
CREATE FUNCTION pg_temp.clerksync_json(t text) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN t::jsonb;
EXCEPTION WHEN others THEN
    RETURN NULL;
END
$$;
CREATE TEMPORARY TABLE clerksync_bodies AS
    SELECT seq, pg_temp.clerksync_json(body) AS j FROM inbox_bodies;
UPDATE inbox SET user_id = CASE
        WHEN inbox.event_type LIKE 'user.%' THEN b.j -> 'data' ->> 'id'
        WHEN inbox.event_type LIKE 'organizationMembership.%'
            THEN coalesce(b.j -> 'data' -> 'public_user_data' ->> 'user_id', b.j -> 'data' ->> 'user_id')
        ELSE b.j -> 'data' ->> 'user_id'
    END
FROM clerksync_bodies b
WHERE b.seq = inbox.seq AND jsonb_typeof(b.j -> 'data') = 'object';
CREATE INDEX inbox_user ON inbox (user_id) WHERE user_id IS NOT NULL;

WITH RECURSIVE walk(seq, key, value) AS (
    SELECT b.seq, NULL::text, b.j -> 'data' FROM clerksync_bodies b WHERE b.j IS NOT NULL
    UNION ALL
    SELECT w.seq, coalesce(e.key, w.key), e.value FROM walk w, LATERAL (
        SELECT o.key, o.value FROM jsonb_each(
            CASE WHEN jsonb_typeof(w.value) = 'object' THEN w.value ELSE '{}'::jsonb END) o
        UNION ALL
        SELECT NULL, a.value FROM jsonb_array_elements(
            CASE WHEN jsonb_typeof(w.value) = 'array' THEN w.value ELSE '[]'::jsonb END) a
    ) e
)
INSERT INTO inbox_contacts (contact, seq)
SELECT DISTINCT lower(trim(value #>> '{}')), seq FROM walk
WHERE jsonb_typeof(value) = 'string'
  AND key IN ('email_address', 'to_email_address', 'phone_number', 'to_phone_number',
              'from_email_address', 'identifier')
  AND trim(value #>> '{}') <> ''
ON CONFLICT DO NOTHING;
DROP TABLE clerksync_bodies;
DROP FUNCTION pg_temp.clerksync_json(text);

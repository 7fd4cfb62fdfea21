-- The synced store. Every entity table has the same shape: a last-writer-wins
-- register (version, version_key) with a tombstone flag, the ids it refers to,
-- and the entity's raw JSON (NULL once deleted: the last record is archived).
CREATE TABLE users (id TEXT PRIMARY KEY, version BIGINT NOT NULL, version_key TEXT NOT NULL, deleted BOOLEAN NOT NULL DEFAULT FALSE, user_id TEXT, organization_id TEXT, data TEXT, synced_at BIGINT NOT NULL);
CREATE TABLE organizations (id TEXT PRIMARY KEY, version BIGINT NOT NULL, version_key TEXT NOT NULL, deleted BOOLEAN NOT NULL DEFAULT FALSE, user_id TEXT, organization_id TEXT, data TEXT, synced_at BIGINT NOT NULL);
CREATE TABLE memberships (id TEXT PRIMARY KEY, version BIGINT NOT NULL, version_key TEXT NOT NULL, deleted BOOLEAN NOT NULL DEFAULT FALSE, user_id TEXT, organization_id TEXT, data TEXT, synced_at BIGINT NOT NULL);
CREATE TABLE invitations (id TEXT PRIMARY KEY, version BIGINT NOT NULL, version_key TEXT NOT NULL, deleted BOOLEAN NOT NULL DEFAULT FALSE, user_id TEXT, organization_id TEXT, data TEXT, synced_at BIGINT NOT NULL);
CREATE TABLE domains (id TEXT PRIMARY KEY, version BIGINT NOT NULL, version_key TEXT NOT NULL, deleted BOOLEAN NOT NULL DEFAULT FALSE, user_id TEXT, organization_id TEXT, data TEXT, synced_at BIGINT NOT NULL);
CREATE TABLE roles (id TEXT PRIMARY KEY, version BIGINT NOT NULL, version_key TEXT NOT NULL, deleted BOOLEAN NOT NULL DEFAULT FALSE, user_id TEXT, organization_id TEXT, data TEXT, synced_at BIGINT NOT NULL);
CREATE TABLE permissions (id TEXT PRIMARY KEY, version BIGINT NOT NULL, version_key TEXT NOT NULL, deleted BOOLEAN NOT NULL DEFAULT FALSE, user_id TEXT, organization_id TEXT, data TEXT, synced_at BIGINT NOT NULL);
CREATE TABLE sessions (id TEXT PRIMARY KEY, version BIGINT NOT NULL, version_key TEXT NOT NULL, deleted BOOLEAN NOT NULL DEFAULT FALSE, user_id TEXT, organization_id TEXT, data TEXT, synced_at BIGINT NOT NULL);
CREATE TABLE emails (id TEXT PRIMARY KEY, version BIGINT NOT NULL, version_key TEXT NOT NULL, deleted BOOLEAN NOT NULL DEFAULT FALSE, user_id TEXT, organization_id TEXT, data TEXT, synced_at BIGINT NOT NULL);
CREATE TABLE sms_messages (id TEXT PRIMARY KEY, version BIGINT NOT NULL, version_key TEXT NOT NULL, deleted BOOLEAN NOT NULL DEFAULT FALSE, user_id TEXT, organization_id TEXT, data TEXT, synced_at BIGINT NOT NULL);
CREATE TABLE waitlist_entries (id TEXT PRIMARY KEY, version BIGINT NOT NULL, version_key TEXT NOT NULL, deleted BOOLEAN NOT NULL DEFAULT FALSE, user_id TEXT, organization_id TEXT, data TEXT, synced_at BIGINT NOT NULL);
CREATE INDEX memberships_user ON memberships (user_id);
CREATE INDEX memberships_org ON memberships (organization_id);
CREATE INDEX invitations_org ON invitations (organization_id);
CREATE INDEX domains_org ON domains (organization_id);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX emails_user ON emails (user_id);
CREATE INDEX sms_messages_user ON sms_messages (user_id);

-- A user's contact points, rewritten with each applied user change.
CREATE TABLE user_emails (user_id TEXT NOT NULL, id TEXT NOT NULL, email_address TEXT NOT NULL, is_primary BOOLEAN NOT NULL, PRIMARY KEY (user_id, id));
CREATE TABLE user_phones (user_id TEXT NOT NULL, id TEXT NOT NULL, phone_number TEXT NOT NULL, is_primary BOOLEAN NOT NULL, PRIMARY KEY (user_id, id));
CREATE TABLE user_external_accounts (user_id TEXT NOT NULL, id TEXT NOT NULL, provider TEXT, email_address TEXT, PRIMARY KEY (user_id, id));
CREATE INDEX user_emails_address ON user_emails (email_address);

-- The last full record of each deleted entity, purged after the retention.
CREATE TABLE archive (seq BIGSERIAL PRIMARY KEY, kind TEXT NOT NULL, entity_id TEXT NOT NULL, user_id TEXT, version BIGINT NOT NULL, data TEXT, archived_at BIGINT NOT NULL);
CREATE INDEX archive_at ON archive (archived_at);
CREATE INDEX archive_user ON archive (user_id);

-- One row per effective change: what changed, before and after.
CREATE TABLE audit (seq BIGSERIAL PRIMARY KEY, svix_id TEXT NOT NULL, kind TEXT NOT NULL, entity_id TEXT NOT NULL, user_id TEXT, operation TEXT NOT NULL, changes TEXT NOT NULL, version BIGINT NOT NULL, at BIGINT NOT NULL);
CREATE INDEX audit_entity ON audit (entity_id, seq);
CREATE INDEX audit_user ON audit (user_id);

-- The transactional outbox every side effect is driven from.
CREATE TABLE change_feed (seq BIGSERIAL PRIMARY KEY, kind TEXT NOT NULL, entity_id TEXT NOT NULL, operation TEXT NOT NULL, changed_fields TEXT NOT NULL, version BIGINT NOT NULL, svix_id TEXT NOT NULL, committed_at BIGINT NOT NULL);

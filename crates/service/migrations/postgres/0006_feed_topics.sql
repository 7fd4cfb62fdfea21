-- Feed rows name the user and the organization they concern (a user's own
-- rows, an organization's own rows, a membership's both), so a realtime replay
-- of `user:ID` or `org:ID` reads only that topic's rows instead of every entry
-- since `since` (and the store for every membership among them).
ALTER TABLE change_feed ADD COLUMN user_id TEXT;
ALTER TABLE change_feed ADD COLUMN organization_id TEXT;
UPDATE change_feed SET user_id = entity_id WHERE kind = 'user';
UPDATE change_feed SET organization_id = entity_id WHERE kind = 'organization';
UPDATE change_feed SET
    user_id = (SELECT m.user_id FROM memberships m WHERE m.id = change_feed.entity_id),
    organization_id = (SELECT m.organization_id FROM memberships m WHERE m.id = change_feed.entity_id)
WHERE kind = 'membership';
CREATE INDEX change_feed_user ON change_feed (user_id, seq) WHERE user_id IS NOT NULL;
CREATE INDEX change_feed_org ON change_feed (organization_id, seq) WHERE organization_id IS NOT NULL;

-- A create's audit `changes` is `{}` and its feed `changed_fields` `[]`
-- (sync/mod.rs `audit_changes`, `feed_fields`): every field of a new record
-- is new, and the entity row holds its values. Rows written before named each
-- field (`{"first_name": {}, ...}`, `["first_name", ...]`), about 1.2 KB per
-- user create; they take the compact form too, so every create reads alike.
UPDATE audit SET changes = '{}' WHERE operation = 'create' AND changes <> '{}';
UPDATE change_feed SET changed_fields = '[]' WHERE operation = 'create' AND changed_fields <> '[]';

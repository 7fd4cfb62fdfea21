-- Clerk Billing objects (clerk/kind.rs: Subscription, SubscriptionItem,
-- PaymentAttempt). The shape of every entity table; user_id and
-- organization_id are the payer's (a user or an organization), indexed for
-- the cascades and erasure.
CREATE TABLE billing_subscriptions (id TEXT PRIMARY KEY, version BIGINT NOT NULL, version_key TEXT NOT NULL, deleted BOOLEAN NOT NULL DEFAULT FALSE, user_id TEXT, organization_id TEXT, data TEXT, synced_at BIGINT NOT NULL);
CREATE TABLE billing_subscription_items (id TEXT PRIMARY KEY, version BIGINT NOT NULL, version_key TEXT NOT NULL, deleted BOOLEAN NOT NULL DEFAULT FALSE, user_id TEXT, organization_id TEXT, data TEXT, synced_at BIGINT NOT NULL);
CREATE TABLE billing_payment_attempts (id TEXT PRIMARY KEY, version BIGINT NOT NULL, version_key TEXT NOT NULL, deleted BOOLEAN NOT NULL DEFAULT FALSE, user_id TEXT, organization_id TEXT, data TEXT, synced_at BIGINT NOT NULL);
CREATE INDEX billing_subscriptions_user ON billing_subscriptions (user_id);
CREATE INDEX billing_subscriptions_org ON billing_subscriptions (organization_id);
CREATE INDEX billing_subscription_items_user ON billing_subscription_items (user_id);
CREATE INDEX billing_subscription_items_org ON billing_subscription_items (organization_id);
CREATE INDEX billing_payment_attempts_user ON billing_payment_attempts (user_id);
CREATE INDEX billing_payment_attempts_org ON billing_payment_attempts (organization_id);

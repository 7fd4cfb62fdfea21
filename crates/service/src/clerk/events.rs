//! Every webhook event type Clerk sends today, and what each does to the store.
//!
//! Owns: the one list of known event types ([`KNOWN`]): the `WebhookEvent`
//! union of `@clerk/backend` (packages/backend/src/api/resources/Webhooks.ts),
//! each with the kind it changes and whether it upserts or deletes. The
//! payload parser (clerk/model.rs) takes the action from here, and the events
//! metric labels known types by name (telemetry/metrics.rs).
//! Must never: refuse a type it does not list. A type Clerk adds tomorrow is
//! stored, acknowledged and counted as today: of an unmodelled family it is
//! ignored; of a modelled family it applies as the family's object (a
//! `.deleted` suffix or `deleted: true` deletes, anything else upserts), which
//! is what each new action of an existing family has meant so far.

use crate::clerk::kind::Kind;

/// What an event does to the entity it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Creates or updates the entity from the object the event carries; a
    /// status change (a revoked invitation, an ended session, a past-due
    /// subscription) is an update: Clerk still has the object.
    Upsert,
    /// The entity is gone from Clerk: a tombstone, and its children go with it.
    Delete,
}

/// One event type Clerk sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventType {
    /// `family.action`, as in the envelope's `type`.
    pub name: &'static str,
    pub kind: Kind,
    pub action: Action,
}

const fn up(name: &'static str, kind: Kind) -> EventType {
    EventType {
        name,
        kind,
        action: Action::Upsert,
    }
}

const fn del(name: &'static str, kind: Kind) -> EventType {
    EventType {
        name,
        kind,
        action: Action::Delete,
    }
}

/// `@clerk/backend`'s `WebhookEvent` union (clerk/javascript at e21ae9a,
/// August 2026): 45 event types. Only the `*.deleted` types delete; Clerk
/// keeps revoked invitations, ended, removed and revoked sessions and every
/// billing object (their events carry the whole object with its new status).
pub const KNOWN: [EventType; 45] = [
    up("user.created", Kind::User),
    up("user.updated", Kind::User),
    del("user.deleted", Kind::User),
    up("email.created", Kind::Email),
    up("sms.created", Kind::Sms),
    up("session.created", Kind::Session),
    up("session.ended", Kind::Session),
    up("session.removed", Kind::Session),
    up("session.revoked", Kind::Session),
    up("organization.created", Kind::Organization),
    up("organization.updated", Kind::Organization),
    del("organization.deleted", Kind::Organization),
    up("organizationDomain.created", Kind::Domain),
    up("organizationDomain.updated", Kind::Domain),
    del("organizationDomain.deleted", Kind::Domain),
    up("organizationMembership.created", Kind::Membership),
    up("organizationMembership.updated", Kind::Membership),
    del("organizationMembership.deleted", Kind::Membership),
    up("organizationInvitation.created", Kind::Invitation),
    up("organizationInvitation.accepted", Kind::Invitation),
    up("organizationInvitation.revoked", Kind::Invitation),
    up("role.created", Kind::Role),
    up("role.updated", Kind::Role),
    del("role.deleted", Kind::Role),
    up("permission.created", Kind::Permission),
    up("permission.updated", Kind::Permission),
    del("permission.deleted", Kind::Permission),
    up("waitlistEntry.created", Kind::WaitlistEntry),
    up("waitlistEntry.updated", Kind::WaitlistEntry),
    up("paymentAttempt.created", Kind::PaymentAttempt),
    up("paymentAttempt.updated", Kind::PaymentAttempt),
    up("subscription.created", Kind::Subscription),
    up("subscription.updated", Kind::Subscription),
    up("subscription.active", Kind::Subscription),
    up("subscription.pastDue", Kind::Subscription),
    up("subscriptionItem.created", Kind::SubscriptionItem),
    up("subscriptionItem.updated", Kind::SubscriptionItem),
    up("subscriptionItem.active", Kind::SubscriptionItem),
    up("subscriptionItem.canceled", Kind::SubscriptionItem),
    up("subscriptionItem.upcoming", Kind::SubscriptionItem),
    up("subscriptionItem.ended", Kind::SubscriptionItem),
    up("subscriptionItem.abandoned", Kind::SubscriptionItem),
    up("subscriptionItem.incomplete", Kind::SubscriptionItem),
    up("subscriptionItem.pastDue", Kind::SubscriptionItem),
    up("subscriptionItem.freeTrialEnding", Kind::SubscriptionItem),
];

/// The known event type `name`, or None for one Clerk added after [`KNOWN`].
pub fn known(name: &str) -> Option<&'static EventType> {
    KNOWN.iter().find(|e| e.name == name)
}

/// The kind an event type changes and how, known or not: a known type's
/// entry; else, for a modelled family, the family's kind with the action its
/// name suggests (`.deleted` deletes); None for a family clerksync does not
/// model. `deleted: true` in the data deletes whatever this says
/// (clerk/model.rs). The backfill's `<family>.updated` bodies go this way
/// for families Clerk sends no `updated` for (`organizationInvitation`).
pub fn resolve(name: &str) -> Option<(Kind, Action)> {
    if let Some(e) = known(name) {
        return Some((e.kind, e.action));
    }
    let (family, action) = name.split_once('.').unwrap_or((name, ""));
    let kind = Kind::from_family(family)?;
    Some((
        kind,
        if action == "deleted" {
            Action::Delete
        } else {
            Action::Upsert
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_unique_and_each_type_is_of_its_kinds_family() {
        for (i, e) in KNOWN.iter().enumerate() {
            let (family, action) = e.name.split_once('.').expect("family.action");
            assert_eq!(family, e.kind.family(), "{}", e.name);
            assert_eq!(
                action == "deleted",
                e.action == Action::Delete,
                "{}: only .deleted deletes",
                e.name
            );
            assert!(
                KNOWN[i + 1..].iter().all(|o| o.name != e.name),
                "{}",
                e.name
            );
        }
    }

    #[test]
    fn every_kind_has_a_known_event_type() {
        for k in Kind::ALL {
            assert!(KNOWN.iter().any(|e| e.kind == k), "{k:?}");
        }
    }

    #[test]
    fn unknown_types_resolve_by_family_or_not_at_all() {
        assert_eq!(
            resolve("session.revoked"),
            Some((Kind::Session, Action::Upsert))
        );
        assert!(known("subscriptionItem.trialStarted").is_none());
        assert_eq!(
            resolve("subscriptionItem.trialStarted"),
            Some((Kind::SubscriptionItem, Action::Upsert))
        );
        assert_eq!(
            resolve("subscription.deleted"),
            Some((Kind::Subscription, Action::Delete))
        );
        assert_eq!(resolve("agentTask.created"), None);
    }
}

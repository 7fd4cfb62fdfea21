//! The Clerk kinds clerksync keeps, each declared once.
//!
//! Owns: for every kind of entity, everything the rest of the program decides
//! per kind: its event family, its name and table, how its payload is read and
//! what it references, its partition, its parents (and so the cascades), the
//! realtime topics it is on and the fields a session viewer sees, its JSON view,
//! whether it is searchable, and what erasure does with a deleted user's rows.
//! The envelope (clerk/envelope.rs), the payload parser (clerk/model.rs), sync
//! (parents, cascades, feed topics), realtime (topics, visibility), views,
//! search and erasure (store/maintenance.rs) read it from [`Kind::spec`].
//! Must never: grow a `_ =>` arm in a match on [`Kind`] or on the enums below:
//! a new kind (or a new variant) must fail to compile wherever something has
//! to be decided for it. ARCHITECTURE.md walks through adding a kind.

/// Declares [`Kind`] and [`Kind::ALL`] from one list, so the list cannot miss a kind.
macro_rules! kinds {
    ($($(#[$doc:meta])* $k:ident),+ $(,)?) => {
        /// The kinds of entity the store keeps, one table each.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind {
            $($(#[$doc])* $k),+
        }

        impl Kind {
            /// Every kind, in declaration order (the order cascades run in).
            pub const ALL: [Kind; [$(stringify!($k)),+].len()] = [$(Kind::$k),+];
        }
    };
}

kinds! {
    User,
    Organization,
    /// An organization membership.
    Membership,
    /// An organization invitation.
    Invitation,
    /// An organization's verified domain.
    Domain,
    Role,
    Permission,
    Session,
    Email,
    Sms,
    WaitlistEntry,
    /// A Clerk Billing subscription (`commerce_subscription`).
    Subscription,
    /// One plan of a Billing subscription (`commerce_subscription_item`).
    SubscriptionItem,
    /// A Billing payment attempt (`commerce_payment_attempt`).
    PaymentAttempt,
}

/// How a kind's payload is read, and where its references are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// Typed as [`crate::clerk::model::User`]: contacts, and the public data
    /// copied onto the user's memberships. Its user is itself.
    User,
    /// Typed as [`crate::clerk::model::Membership`]: the organization from
    /// `organization.id` (else `organization_id`) and the user from
    /// `public_user_data.user_id`, both required unless the event is a delete.
    Membership,
    /// Kept whole ([`crate::clerk::model::Generic`]); `data.user_id` and
    /// `data.organization_id` are its references where marked.
    Generic {
        user_id: bool,
        organization_id: bool,
    },
    /// A Billing object, kept whole ([`crate::clerk::model::Billing`]): its
    /// references are its payer's, `payer.user_id` or `payer.organization_id`
    /// (Clerk bills either a user or an organization).
    Billing,
}

/// Which key a kind's events are partitioned by: events with the same key are
/// applied one at a time, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partition {
    /// The entity's own id.
    Own,
    /// Its user (`data.user_id`), else its own id.
    User,
    /// Its organization, else its own id. The field read first is the one the
    /// payload names first (see [`Payload`]).
    Organization,
}

/// A parent an entity belongs to: when the parent is deleted, so is the child
/// (the cascade), and a child arriving after its parent's deletion is
/// stored as a tombstone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parent {
    /// The user named by the entity's `user_id` reference.
    User,
    /// The organization named by its `organization_id` reference.
    Organization,
}

impl Parent {
    pub fn kind(self) -> Kind {
        match self {
            Parent::User => Kind::User,
            Parent::Organization => Kind::Organization,
        }
    }
}

/// The realtime topics a change of this kind is published on (besides `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topics {
    /// Only `*` (for backends holding the API token).
    None,
    /// `user:{id}`: the entity is a user.
    OwnUser,
    /// `org:{id}`: the entity is an organization.
    OwnOrganization,
    /// `user:{user_id}` and `org:{organization_id}` (a membership). A deleted
    /// one ends the user's `org:` subscription unless another membership holds.
    UserAndOrganization,
}

/// What a session viewer (a Clerk session token) sees of a record. Allow-lists,
/// not deny-lists: a field Clerk adds tomorrow stays private until someone
/// decides otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Public {
    /// Top-level fields shown; empty: nothing of this kind is shown.
    pub fields: &'static [&'static str],
    /// Object fields shown only in part: (field, its allowed fields).
    pub nested: &'static [(&'static str, &'static [&'static str])],
}

impl Public {
    pub const NONE: Public = Public {
        fields: &[],
        nested: &[],
    };
}

/// How the read API and realtime frames render a stored record ([`crate::views`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The record plus `primary_email_address` as a string.
    User,
    /// The record plus `user_id`, `organization_id` and the normalized role.
    Membership,
    /// The record as stored.
    Record,
}

/// Whether the search index holds this kind, and as what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Search {
    No,
    /// By names, username, email addresses and phone numbers.
    User,
    /// By name and slug.
    Organization,
}

/// What erasure does with this kind's rows once a deleted user's retention is
/// over (store/maintenance.rs; audit values, archives and delivery bodies are
/// redacted for every kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Erasure {
    /// Nothing row by row: the entity is the user (its tombstone holds no data)
    /// or belongs to no user.
    Keep,
    /// The deleted user's deleted rows of this kind lose their data.
    UserTombstones,
    /// Every row of the deleted user loses its data, and so does every message
    /// of this kind sent to one of its addresses with no user id: a message's
    /// content is the user's data.
    Messages,
}

/// Everything decided per kind. Every field must be given (no defaults), so a
/// new kind's declaration states each decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// The event-type family (`user` in `user.created`).
    pub family: &'static str,
    /// The name in the change feed, the audit log and the API (`kind`).
    pub name: &'static str,
    /// The store table.
    pub table: &'static str,
    pub payload: Payload,
    pub partition: Partition,
    pub parents: &'static [Parent],
    pub topics: Topics,
    pub public: Public,
    pub view: View,
    pub search: Search,
    pub erasure: Erasure,
}

/// A user record, as its owner sees it. A session may subscribe to `user:{id}`
/// only for its own id, so `primary_email_address` goes only to the user it
/// belongs to; other people's email and phone lists never do. Modelled on what
/// Clerk's own Frontend API shows a signed-in user: never `private_metadata`.
pub const USER_PUBLIC: &[&str] = &[
    "id",
    "object",
    "first_name",
    "last_name",
    "username",
    "image_url",
    "profile_image_url",
    "has_image",
    "public_metadata",
    "primary_email_address",
    "created_at",
    "updated_at",
];

/// An organization, as its members see it.
pub const ORG_PUBLIC: &[&str] = &[
    "id",
    "object",
    "name",
    "slug",
    "image_url",
    "has_image",
    "public_metadata",
    "members_count",
    "max_allowed_memberships",
    "admin_delete_enabled",
    "created_at",
    "updated_at",
];

/// A membership, as the organization's members see it.
pub const MEMBERSHIP_PUBLIC: &[&str] = &[
    "id",
    "object",
    "role",
    "role_name",
    "permissions",
    "public_metadata",
    "public_user_data",
    "organization",
    "organization_id",
    "user_id",
    "created_at",
    "updated_at",
];

/// Clerk's public user data (what other members of an organization see): for
/// other people only the `public_user_data` Clerk itself puts on memberships.
pub const PUBLIC_USER_DATA: &[&str] = &[
    "user_id",
    "first_name",
    "last_name",
    "username",
    "image_url",
    "profile_image_url",
    "has_image",
    "identifier",
];

/// A kind that belongs to no user or organization, is on no user or
/// organization topic, is shown to no session and is not searched.
const fn standalone(family: &'static str, name: &'static str, table: &'static str) -> Spec {
    Spec {
        family,
        name,
        table,
        payload: Payload::Generic {
            user_id: false,
            organization_id: false,
        },
        partition: Partition::Own,
        parents: &[],
        topics: Topics::None,
        public: Public::NONE,
        view: View::Record,
        search: Search::No,
        erasure: Erasure::Keep,
    }
}

/// An organization's object (invitation, domain): partitioned by, and deleted
/// with, its organization.
const fn of_organization(family: &'static str, name: &'static str, table: &'static str) -> Spec {
    Spec {
        payload: Payload::Generic {
            user_id: false,
            organization_id: true,
        },
        partition: Partition::Organization,
        parents: &[Parent::Organization],
        ..standalone(family, name, table)
    }
}

/// A user's object (session, email, SMS): partitioned by its user, but kept
/// when the user is deleted (until erasure).
const fn of_user(
    family: &'static str,
    name: &'static str,
    table: &'static str,
    erasure: Erasure,
) -> Spec {
    Spec {
        payload: Payload::Generic {
            user_id: true,
            organization_id: false,
        },
        partition: Partition::User,
        erasure,
        ..standalone(family, name, table)
    }
}

/// A Clerk Billing object: private (no session sees it, no topic, not
/// searched), belonging to its payer. The payer is a user or an organization,
/// so both are declared parents and the change names whichever it has: a
/// deleted payer takes its billing rows, and erasure empties a deleted user's.
/// Partitioned by its own id: the payer is optional on some payloads
/// (`subscriptionItem.*`), and a key that changes between events of one
/// entity would let them apply side by side.
const fn billing(family: &'static str, name: &'static str, table: &'static str) -> Spec {
    Spec {
        payload: Payload::Billing,
        partition: Partition::Own,
        parents: &[Parent::User, Parent::Organization],
        erasure: Erasure::UserTombstones,
        ..standalone(family, name, table)
    }
}

impl Kind {
    /// The one declaration of this kind.
    pub const fn spec(self) -> Spec {
        match self {
            Kind::User => Spec {
                family: "user",
                name: "user",
                table: "users",
                payload: Payload::User,
                partition: Partition::Own,
                parents: &[],
                topics: Topics::OwnUser,
                public: Public {
                    fields: USER_PUBLIC,
                    nested: &[],
                },
                view: View::User,
                search: Search::User,
                erasure: Erasure::Keep,
            },
            Kind::Organization => Spec {
                family: "organization",
                name: "organization",
                table: "organizations",
                payload: Payload::Generic {
                    user_id: false,
                    organization_id: false,
                },
                partition: Partition::Own,
                parents: &[],
                topics: Topics::OwnOrganization,
                public: Public {
                    fields: ORG_PUBLIC,
                    nested: &[],
                },
                view: View::Record,
                search: Search::Organization,
                erasure: Erasure::Keep,
            },
            Kind::Membership => Spec {
                family: "organizationMembership",
                name: "membership",
                table: "memberships",
                payload: Payload::Membership,
                partition: Partition::Organization,
                parents: &[Parent::User, Parent::Organization],
                topics: Topics::UserAndOrganization,
                public: Public {
                    fields: MEMBERSHIP_PUBLIC,
                    nested: &[
                        ("public_user_data", PUBLIC_USER_DATA),
                        ("organization", ORG_PUBLIC),
                    ],
                },
                view: View::Membership,
                search: Search::No,
                erasure: Erasure::UserTombstones,
            },
            Kind::Invitation => {
                of_organization("organizationInvitation", "invitation", "invitations")
            }
            Kind::Domain => of_organization("organizationDomain", "domain", "domains"),
            Kind::Role => standalone("role", "role", "roles"),
            Kind::Permission => standalone("permission", "permission", "permissions"),
            Kind::Session => of_user("session", "session", "sessions", Erasure::UserTombstones),
            Kind::Email => of_user("email", "email", "emails", Erasure::Messages),
            Kind::Sms => of_user("sms", "sms", "sms_messages", Erasure::Messages),
            Kind::WaitlistEntry => {
                standalone("waitlistEntry", "waitlist_entry", "waitlist_entries")
            }
            Kind::Subscription => billing("subscription", "subscription", "billing_subscriptions"),
            Kind::SubscriptionItem => billing(
                "subscriptionItem",
                "subscription_item",
                "billing_subscription_items",
            ),
            Kind::PaymentAttempt => billing(
                "paymentAttempt",
                "payment_attempt",
                "billing_payment_attempts",
            ),
        }
    }

    /// The event-type family (`user` in `user.created`) of this kind.
    pub const fn family(self) -> &'static str {
        self.spec().family
    }

    /// The kind whose events are `family.*`; None for a family not modelled.
    pub fn from_family(family: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.family() == family)
    }

    pub const fn table(self) -> &'static str {
        self.spec().table
    }

    pub const fn as_str(self) -> &'static str {
        self.spec().name
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The kinds deleted with an entity of this kind, and the reference they
    /// name it by: every kind that declares this one as a parent.
    pub fn children(self) -> impl Iterator<Item = (Kind, Parent)> {
        Kind::ALL.into_iter().flat_map(move |child| {
            child
                .spec()
                .parents
                .iter()
                .filter(move |p| p.kind() == self)
                .map(move |p| (child, *p))
        })
    }
}

impl serde::Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_families_and_tables_are_unique_and_round_trip() {
        for (i, a) in Kind::ALL.iter().enumerate() {
            assert_eq!(Kind::parse(a.as_str()), Some(*a));
            assert_eq!(Kind::from_family(a.family()), Some(*a));
            for b in &Kind::ALL[i + 1..] {
                assert_ne!(a.table(), b.table());
            }
        }
    }

    #[test]
    fn cascades_follow_the_declared_parents() {
        let of = |k: Kind| k.children().collect::<Vec<_>>();
        assert_eq!(
            of(Kind::User),
            [
                (Kind::Membership, Parent::User),
                (Kind::Subscription, Parent::User),
                (Kind::SubscriptionItem, Parent::User),
                (Kind::PaymentAttempt, Parent::User),
            ]
        );
        assert_eq!(
            of(Kind::Organization),
            [
                (Kind::Membership, Parent::Organization),
                (Kind::Invitation, Parent::Organization),
                (Kind::Domain, Parent::Organization),
                (Kind::Subscription, Parent::Organization),
                (Kind::SubscriptionItem, Parent::Organization),
                (Kind::PaymentAttempt, Parent::Organization),
            ]
        );
        assert!(of(Kind::Session).is_empty());
    }
}

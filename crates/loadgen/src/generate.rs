//! The synthetic Clerk event stream: users, organizations and memberships.
//!
//! Owns: simulating a Clerk instance (who is created, updated and deleted, and
//! when) and rendering each event as the exact JSON body Clerk would send, in the
//! shapes of `tests/fixtures/clerk/` (`{data, event_attributes, instance_id,
//! object: "event", timestamp, type}`).
//!
//! Must never: depend on anything but [`GenConfig`] (the stream is a pure function
//! of it, so a seed reproduces a run), let an entity's versions go backwards, or
//! emit an event about an entity that does not exist yet or was already deleted
//! (a membership only ever joins a live user to a live organization). Delivery
//! order, duplicates and signing belong to `plan` and `send`, not here.

use super::ids;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;

/// What to generate. Equal configs give byte-identical streams.
#[derive(Debug, Clone, PartialEq)]
pub struct GenConfig {
    pub seed: u64,
    /// Exactly this many events are generated.
    pub events: usize,
    /// Each entity gets between 1 and this many `*.updated` events (uniform);
    /// 0 means none. Entities created near the end of the stream may get fewer,
    /// so the total is exactly `events`.
    pub max_updates: u32,
    /// Share (0..=1) of entities that end with a `*.deleted`.
    pub delete_share: f64,
    /// Sets the mix: per organization about this many users and 1.2 times as
    /// many memberships are created.
    pub users_per_org: u32,
    /// Time (unix ms) of the first event; every later event is 1..=1500 ms later.
    pub start_ms: i64,
    /// The mix of events and the payload shapes.
    pub profile: Profile,
}

/// Which stream to generate: the mix of events and how full the payloads are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// Shaped like a production Clerk instance's traffic (issue 21): full user
    /// payloads (emails with verification objects, an external account for about
    /// a third of users, phone numbers for some, public/private/unsafe metadata of
    /// a few hundred bytes, the newer activity and security fields), ~1.6
    /// memberships per user, ~40% of events `user.updated` of which three in four
    /// change only activity fields (`last_active_at`, `last_sign_in_at`,
    /// `updated_at`); users and organizations get 0..=max_updates updates, a
    /// membership none or one or two.
    Realistic,
    /// The original mix: lean payloads, 1.2 memberships per user, every entity
    /// 1..=max_updates updates spread over all of its fields.
    Classic,
}

impl Profile {
    /// The share of entities deleted when `--deletes` is not given: "a few
    /// percent" in real traffic, more in the classic mix to exercise tombstones.
    pub fn default_delete_share(self) -> f64 {
        match self {
            Profile::Realistic => 0.03,
            Profile::Classic => 0.1,
        }
    }

    /// Memberships created per user created.
    fn memberships_per_user(self) -> f64 {
        match self {
            Profile::Realistic => 1.6,
            Profile::Classic => 1.2,
        }
    }
}

/// 2025-01-01T00:00:00Z: a fixed default keeps `--seed` alone enough to reproduce a stream.
pub const DEFAULT_START_MS: i64 = 1_735_689_600_000;

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            seed: 0,
            events: 10_000,
            max_updates: 5,
            delete_share: 0.1,
            users_per_org: 10,
            start_ms: DEFAULT_START_MS,
            // The library's default stays the stream its tests and the demo's
            // live feed were written against; `clerksync loadgen` defaults to
            // the realistic one.
            profile: Profile::Classic,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntityKind {
    User,
    Organization,
    Membership,
}

impl EntityKind {
    /// The event-type family Clerk uses (`user.created`, `organizationMembership.deleted`, ...).
    pub fn family(self) -> &'static str {
        match self {
            EntityKind::User => "user",
            EntityKind::Organization => "organization",
            EntityKind::Membership => "organizationMembership",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Created,
    Updated,
    Deleted,
}

/// One event of the stream, in event order.
#[derive(Debug, Clone)]
pub struct Event {
    /// Unique per event; strictly increasing (bytewise) in event order.
    pub svix_id: Arc<str>,
    pub event_type: String,
    pub kind: EntityKind,
    pub action: Action,
    /// `data.id`.
    pub entity_id: String,
    /// The partition key ingress must derive: the user's or organization's id,
    /// and for a membership its organization's id.
    pub entity_key: String,
    /// Envelope `timestamp` (ms): when the event happened.
    pub timestamp_ms: i64,
    /// The exact request body.
    pub body: Bytes,
}

/// Generates the stream described by `cfg`, in event order.
pub fn generate(cfg: &GenConfig) -> Vec<Event> {
    let mut out = Vec::with_capacity(cfg.events);
    generate_each(cfg, |e| out.push(e));
    out
}

/// [`generate`]'s stream handed over event by event, never held whole: what
/// fills a large stand-in instance (millions of events) in bounded memory.
pub fn generate_each(cfg: &GenConfig, mut each: impl FnMut(Event)) {
    let mut g = Gen::new(cfg.clone());
    while g.emitted < cfg.events {
        g.step();
        for e in g.out.drain(..) {
            each(e);
        }
    }
}

/// How many entities have events still to come at any time. Interleaving this
/// many lifecycles spreads one entity's events tens of positions apart, which is
/// the range `--out-of-order` displaces deliveries by, so reordering within one
/// entity happens often enough to test convergence.
const ACTIVE_TARGET: usize = 32;

const FIRST_NAMES: &[&str] = &[
    "Olivia",
    "Liam",
    "Emma",
    "Noah",
    "Amelia",
    "Oliver",
    "Ava",
    "Elijah",
    "Sophia",
    "Lucas",
    "Mia",
    "Mateo",
    "Isabella",
    "Levi",
    "Charlotte",
    "Ethan",
    "Harper",
    "Kai",
    "Aria",
    "Leo",
    "Yuki",
    "Ananya",
    "Chen",
    "Fatima",
    "Jonas",
    "Ingrid",
    "Thabo",
    "Lucía",
    "Mehmet",
    "Zoë",
    "Priya",
    "Diego",
    "Hana",
    "Omar",
    "Sven",
    "Chloé",
    "Kwame",
    "Aiko",
    "Ravi",
    "Elena",
];
const LAST_NAMES: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Tanaka",
    "Müller",
    "Nguyen",
    "Kowalski",
    "O'Brien",
    "Okafor",
    "Schmidt",
    "Rossi",
    "Dubois",
    "Andersson",
    "Patel",
    "Kim",
    "Silva",
    "Novak",
    "Haddad",
    "Ivanova",
    "Mensah",
    "Sato",
    "Fischer",
    "Costa",
];
const EMAIL_DOMAINS: &[&str] = &[
    "gmail.com",
    "outlook.com",
    "yahoo.com",
    "proton.me",
    "icloud.com",
    "example.org",
    "acme.io",
    "fastmail.com",
];
const COMPANY_WORDS: &[&str] = &[
    "Acme", "Blue", "Bright", "Cedar", "Cobalt", "Delta", "Ember", "Falcon", "Granite", "Harbor",
    "Iron", "Juniper", "Kite", "Lumen", "Maple", "Nimbus", "Orbit", "Pine", "Quartz", "River",
    "Summit", "Tidal", "Umbra", "Vertex", "Willow", "Zephyr",
];
const COMPANY_NOUNS: &[&str] = &[
    "Labs",
    "Systems",
    "Works",
    "Studio",
    "Analytics",
    "Health",
    "Logistics",
    "Capital",
    "Robotics",
    "Foods",
    "Media",
    "Cloud",
    "Security",
    "Energy",
    "Partners",
];
const COMPANY_SUFFIXES: &[&str] = &["", "", "", " Inc", " LLC", " GmbH", " Ltd"];
const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/127.0.0.0 Safari/537.36 Edg/127.0.0.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:129.0) Gecko/20100101 Firefox/129.0",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Mobile Safari/537.36",
];
const PLANS: &[&str] = &["free", "starter", "pro", "team", "enterprise"];
const EMAIL_STRATEGIES: &[&str] = &["email_code", "email_link", "ticket", "from_oauth_google"];
// Realistic profile: the vocabulary of typical SaaS metadata.
const FEATURES: &[&str] = &[
    "beta_dashboard",
    "ai_assistant",
    "sso",
    "audit_log",
    "api_access",
    "custom_domains",
];
const JOB_ROLES: &[&str] = &[
    "engineer",
    "designer",
    "founder",
    "product_manager",
    "sales",
    "support",
    "marketing",
];
const SIGNUP_SOURCES: &[&str] = &[
    "organic",
    "google_ads",
    "referral",
    "product_hunt",
    "partner",
];
const LOCALES: &[&str] = &[
    "en-US", "en-GB", "de-DE", "fr-FR", "ja-JP", "pt-BR", "es-ES",
];
const TIMEZONES: &[&str] = &[
    "America/New_York",
    "America/Los_Angeles",
    "Europe/London",
    "Europe/Berlin",
    "Asia/Tokyo",
    "Asia/Kolkata",
    "America/Sao_Paulo",
];
const INDUSTRIES: &[&str] = &[
    "software",
    "finance",
    "healthcare",
    "retail",
    "education",
    "media",
];
/// What Clerk lists on a membership for its role (system permissions).
const ADMIN_PERMISSIONS: &[&str] = &[
    "org:sys_domains:manage",
    "org:sys_domains:read",
    "org:sys_memberships:manage",
    "org:sys_memberships:read",
    "org:sys_profile:delete",
    "org:sys_profile:manage",
];
const MEMBER_PERMISSIONS: &[&str] = &["org:sys_domains:read", "org:sys_memberships:read"];

#[derive(Debug, Clone)]
struct Email {
    id: String,
    address: String,
    strategy: &'static str,
}

#[derive(Debug, Clone)]
struct Phone {
    id: String,
    number: String,
}

/// A sign-in with an OAuth provider (realistic profile only).
#[derive(Debug, Clone)]
struct ExternalAccount {
    id: String,
    provider: &'static str,
    provider_user_id: String,
    email_address: String,
    avatar_url: String,
}

#[derive(Debug, Clone)]
struct User {
    id: String,
    first_name: Option<String>,
    last_name: Option<String>,
    username: Option<String>,
    emails: Vec<Email>,
    primary_email: usize,
    phones: Vec<Phone>,
    external_id: Option<String>,
    image_url: String,
    password_enabled: bool,
    two_factor_enabled: bool,
    last_sign_in_at: Option<i64>,
    public_metadata: Value,
    private_metadata: Value,
    unsafe_metadata: Value,
    created_at: i64,
    updated_at: i64,
    /// Realistic profile only (the classic payloads do not carry these).
    last_active_at: Option<i64>,
    external_accounts: Vec<ExternalAccount>,
}

#[derive(Debug, Clone)]
struct Org {
    id: String,
    name: String,
    slug: String,
    created_by: String,
    image_url: String,
    logo_url: Option<String>,
    public_metadata: Value,
    created_at: i64,
    updated_at: i64,
    /// Realistic profile only.
    private_metadata: Value,
    max_allowed_memberships: u32,
}

#[derive(Debug, Clone)]
struct Membership {
    id: String,
    org: usize,
    user: usize,
    /// Some Clerk instances still use the pre-"org:" role keys.
    legacy_roles: bool,
    admin: bool,
    created_at: i64,
    updated_at: i64,
}

/// An entity whose lifecycle is not finished: events still to be emitted for it.
#[derive(Debug, Clone, Copy)]
struct Script {
    kind: EntityKind,
    idx: usize,
    updates_left: u32,
    delete: bool,
}

impl Script {
    fn remaining(&self) -> usize {
        self.updates_left as usize + usize::from(self.delete)
    }
}

struct Gen {
    cfg: GenConfig,
    rng: StdRng,
    now_ms: i64,
    instance_id: String,
    users: Vec<User>,
    orgs: Vec<Org>,
    mems: Vec<Membership>,
    /// Indices of users / orgs created and not deleted: the only ones a new
    /// membership may reference.
    live_users: Vec<usize>,
    live_orgs: Vec<usize>,
    /// (user, org) pairs that already had a membership: Clerk allows one per pair.
    pairs: HashSet<(usize, usize)>,
    slugs: HashSet<String>,
    active: Vec<Script>,
    /// Sum of `remaining()` over `active`: events already promised to entities.
    committed: usize,
    /// Events emitted so far (they leave `out` as they are made).
    emitted: usize,
    out: Vec<Event>,
}

fn pick<'a, T: ?Sized>(rng: &mut StdRng, items: &'a [&'a T]) -> &'a T {
    items.choose(rng).expect("non-empty word list")
}

fn ascii_lower(s: &str) -> String {
    // For emails/usernames/slugs: keep ASCII letters and digits only.
    s.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn slugify(name: &str) -> String {
    let mut slug = String::new();
    for word in name.split_whitespace() {
        let w = ascii_lower(word);
        if w.is_empty() {
            continue;
        }
        if !slug.is_empty() {
            slug.push('-');
        }
        slug.push_str(&w);
    }
    slug
}

/// Clerk's default avatar URLs encode a small JSON document in base64url.
fn avatar_url(instance_id: &str, entity_id: &str, initials: &str) -> String {
    let doc =
        json!({"type": "default", "iid": instance_id, "rid": entity_id, "initials": initials});
    format!(
        "https://img.clerk.com/{}",
        URL_SAFE_NO_PAD.encode(doc.to_string())
    )
}

fn initials(first: Option<&str>, last: Option<&str>) -> String {
    [first, last]
        .iter()
        .flatten()
        .filter_map(|s| s.chars().next())
        .collect()
}

impl Gen {
    fn new(cfg: GenConfig) -> Gen {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let now_ms = cfg.start_ms;
        let instance_id = ids::entity_id("ins", now_ms - 86_400_000, &mut rng);
        Gen {
            out: Vec::new(),
            emitted: 0,
            cfg,
            rng,
            now_ms,
            instance_id,
            users: Vec::new(),
            orgs: Vec::new(),
            mems: Vec::new(),
            live_users: Vec::new(),
            live_orgs: Vec::new(),
            pairs: HashSet::new(),
            slugs: HashSet::new(),
            active: Vec::new(),
            committed: 0,
        }
    }

    /// Emits exactly one event. Invariant: `committed <= events left to emit`, so
    /// every promised lifecycle event fits and the total comes out exact.
    fn step(&mut self) {
        let left = self.cfg.events - self.emitted;
        let slack = left - self.committed;
        if self.active.is_empty() || (slack > 0 && self.active.len() < ACTIVE_TARGET) {
            self.create(slack);
        } else {
            self.advance();
        }
    }

    /// Advances the clock to the next event's time: strictly increasing, so every
    /// entity's `updated_at` does too.
    fn tick(&mut self) -> i64 {
        self.now_ms += self.rng.gen_range(1..=1500);
        self.now_ms
    }

    fn create(&mut self, slack: usize) {
        let kind = self.pick_kind();
        // Plan the lifecycle, trimmed to what the remaining budget allows.
        let mut allowed = slack - 1;
        if self.cfg.profile == Profile::Realistic {
            // Drawn per kind, so after the entity exists (a membership may
            // have become a sign-up).
            let (kind, idx) = self.create_entity(kind);
            let max = self.cfg.max_updates;
            let updates = match kind {
                // Most memberships never change; some get a role change or two.
                EntityKind::Membership if self.rng.gen_bool(0.3) => self.rng.gen_range(1..=2),
                EntityKind::Membership => 0,
                _ => self.rng.gen_range(0..=max),
            }
            .min(allowed as u32);
            allowed -= updates as usize;
            let delete = allowed > 0 && self.rng.gen_bool(self.cfg.delete_share);
            self.push_script(kind, idx, updates, delete);
            return;
        }
        let mut updates = if self.cfg.max_updates == 0 {
            0
        } else {
            self.rng.gen_range(1..=self.cfg.max_updates)
        };
        updates = updates.min(allowed as u32);
        allowed -= updates as usize;
        let delete = allowed > 0 && self.rng.gen_bool(self.cfg.delete_share);
        let (kind, idx) = self.create_entity(kind);
        self.push_script(kind, idx, updates, delete);
    }

    fn create_entity(&mut self, kind: EntityKind) -> (EntityKind, usize) {
        match kind {
            EntityKind::User => (kind, self.create_user()),
            EntityKind::Organization => (kind, self.create_org()),
            EntityKind::Membership => match self.create_membership() {
                Some(i) => (kind, i),
                // No free (user, org) pair right now: a sign-up instead.
                None => (EntityKind::User, self.create_user()),
            },
        }
    }

    fn push_script(&mut self, kind: EntityKind, idx: usize, updates_left: u32, delete: bool) {
        let s = Script {
            kind,
            idx,
            updates_left,
            delete,
        };
        if s.remaining() > 0 {
            self.committed += s.remaining();
            self.active.push(s);
        }
    }

    fn pick_kind(&mut self) -> EntityKind {
        let w_user = f64::from(self.cfg.users_per_org.max(1));
        // An organization is created by one of the stream's users.
        let w_org = if self.live_users.is_empty() { 0.0 } else { 1.0 };
        let w_mem = if self.live_users.is_empty() || self.live_orgs.is_empty() {
            0.0
        } else {
            w_user * self.cfg.profile.memberships_per_user()
        };
        let x = self.rng.gen::<f64>() * (w_user + w_org + w_mem);
        if x < w_user {
            EntityKind::User
        } else if x < w_user + w_org {
            EntityKind::Organization
        } else {
            EntityKind::Membership
        }
    }

    fn advance(&mut self) {
        let j = self.rng.gen_range(0..self.active.len());
        let s = &mut self.active[j];
        let script = *s;
        let action = if s.updates_left > 0 {
            s.updates_left -= 1;
            Action::Updated
        } else {
            s.delete = false;
            Action::Deleted
        };
        self.committed -= 1;
        if s.remaining() == 0 {
            self.active.swap_remove(j);
        }
        match (script.kind, action) {
            (EntityKind::User, Action::Updated) => self.update_user(script.idx),
            (EntityKind::Organization, Action::Updated) => self.update_org(script.idx),
            (EntityKind::Membership, Action::Updated) => self.update_membership(script.idx),
            (EntityKind::User, _) => self.delete_user(script.idx),
            (EntityKind::Organization, _) => self.delete_org(script.idx),
            (EntityKind::Membership, _) => self.delete_membership(script.idx),
        }
    }

    /// A deleted user or organization takes its memberships with it: their
    /// remaining lifecycle events are dropped (Clerk sends nothing more about them).
    fn end_memberships_of(&mut self, user: Option<usize>, org: Option<usize>) {
        let mems = &self.mems;
        let mut dropped = 0;
        self.active.retain(|s| {
            let gone = s.kind == EntityKind::Membership
                && (Some(mems[s.idx].user) == user || Some(mems[s.idx].org) == org);
            if gone {
                dropped += s.remaining();
            }
            !gone
        });
        self.committed -= dropped;
    }

    // ---- users -------------------------------------------------------------

    fn create_user(&mut self) -> usize {
        let t = self.tick();
        let rng = &mut self.rng;
        let first = pick(rng, FIRST_NAMES).to_string();
        let last = pick(rng, LAST_NAMES).to_string();
        let id = ids::entity_id("user", t, rng);
        // Some sign-ups (email code, some OAuth providers) carry no name.
        let named = rng.gen_bool(0.9);
        let address = format!(
            "{}.{}{}@{}",
            ascii_lower(&first),
            ascii_lower(&last),
            rng.gen_range(1..10_000),
            pick(rng, EMAIL_DOMAINS)
        );
        let email = Email {
            id: ids::entity_id("idn", t, rng),
            address,
            strategy: pick(rng, EMAIL_STRATEGIES),
        };
        let phones = if rng.gen_bool(0.15) {
            vec![Phone {
                id: ids::entity_id("idn", t, rng),
                number: format!("+1555{:07}", rng.gen_range(0..10_000_000)),
            }]
        } else {
            Vec::new()
        };
        let username = rng
            .gen_bool(0.4)
            .then(|| format!("{}{}", ascii_lower(&first), rng.gen_range(1..1000)));
        let external_id = rng
            .gen_bool(0.3)
            .then(|| rng.gen_range(100_000..10_000_000).to_string());
        let public_metadata = if rng.gen_bool(0.5) {
            json!({"plan": pick(rng, PLANS), "onboarded": rng.gen_bool(0.5)})
        } else {
            json!({})
        };
        let private_metadata = if rng.gen_bool(0.3) {
            json!({"stripe_customer_id": format!("cus_{}", &ids::entity_id("x", t, rng)[2..16])})
        } else {
            json!({})
        };
        let (first_name, last_name) = if named {
            (Some(first), Some(last))
        } else {
            (None, None)
        };
        let image_url = avatar_url(
            &self.instance_id,
            &id,
            &initials(first_name.as_deref(), last_name.as_deref()),
        );
        let mut user = User {
            id,
            first_name,
            last_name,
            username,
            emails: vec![email],
            primary_email: 0,
            phones,
            external_id,
            image_url,
            password_enabled: self.rng.gen_bool(0.7),
            two_factor_enabled: false,
            last_sign_in_at: self.rng.gen_bool(0.8).then_some(t),
            public_metadata,
            private_metadata,
            unsafe_metadata: json!({}),
            created_at: t,
            updated_at: t,
            last_active_at: None,
            external_accounts: Vec::new(),
        };
        // Drawn after everything the classic profile draws, so its streams
        // stay byte-identical.
        if self.cfg.profile == Profile::Realistic {
            self.realistic_user(&mut user, t);
        }
        let idx = self.users.len();
        self.users.push(user);
        self.live_users.push(idx);
        let data = user_json(&self.users[idx], self.cfg.profile);
        let id = self.users[idx].id.clone();
        self.emit(EntityKind::User, Action::Created, &id, &id, t, data, true);
        idx
    }

    /// What a production user carries beyond the classic payload: a fuller
    /// profile, an OAuth account for about a third, metadata of a few hundred bytes.
    fn realistic_user(&mut self, u: &mut User, t: i64) {
        let company = self.company_name();
        let rng = &mut self.rng;
        u.last_active_at = Some(t);
        if u.phones.is_empty() && rng.gen_bool(0.12) {
            u.phones.push(Phone {
                id: ids::entity_id("idn", t, rng),
                number: format!("+4477{:08}", rng.gen_range(0..100_000_000)),
            });
        }
        if rng.gen_bool(0.35) {
            let provider = if rng.gen_bool(0.8) {
                "oauth_google"
            } else {
                "oauth_github"
            };
            let provider_user_id = rng
                .gen_range(100_000_000_000u64..999_999_999_999)
                .to_string();
            u.external_accounts.push(ExternalAccount {
                id: ids::entity_id("idn", t, rng),
                provider,
                avatar_url: format!(
                    "https://lh3.googleusercontent.com/a/ACg8oc{}=s96-c",
                    &ids::entity_id("x", t, rng)[2..]
                ),
                provider_user_id,
                email_address: u.emails[0].address.clone(),
            });
            u.emails[0].strategy = if provider == "oauth_google" {
                "from_oauth_google"
            } else {
                "from_oauth_github"
            };
        }
        // Sized so that a stream averages ~1.9 KB per delivery, near the
        // production stream of issue 21 (1.7 KB).
        let mut public = json!({
            "plan": pick(rng, PLANS),
            "onboarded": rng.gen_bool(0.7),
            "seats": rng.gen_range(1..50),
            "company": company,
            "role": pick(rng, JOB_ROLES),
            "locale": pick(rng, LOCALES),
        });
        if rng.gen_bool(0.4) {
            let features: Vec<&str> = FEATURES
                .iter()
                .copied()
                .filter(|_| rng.gen_bool(0.4))
                .collect();
            public["features"] = json!(features);
            public["signup_source"] = json!(pick(rng, SIGNUP_SOURCES));
        }
        u.public_metadata = public;
        if rng.gen_bool(0.6) {
            u.private_metadata = json!({
                "stripe_customer_id": format!("cus_{}", &ids::entity_id("x", t, rng)[2..16]),
                "crm_id": format!("0035g0000{:06}", rng.gen_range(0..1_000_000)),
            });
        }
        if rng.gen_bool(0.5) {
            u.unsafe_metadata = json!({
                "theme": if rng.gen_bool(0.5) { "dark" } else { "light" },
                "onboarding_step": rng.gen_range(0..6),
                "timezone": pick(rng, TIMEZONES),
            });
        }
    }

    fn update_user(&mut self, idx: usize) {
        let t = self.tick();
        let rng = &mut self.rng;
        let u = &mut self.users[idx];
        if self.cfg.profile == Profile::Realistic {
            // Clerk sends user.updated on every sign-in and session refresh
            // that moves the activity stamps: most updates change nothing else.
            u.last_active_at = Some(t);
            if rng.gen_bool(0.75) {
                if rng.gen_bool(0.4) {
                    u.last_sign_in_at = Some(t);
                }
                u.updated_at = t;
                let data = user_json(u, self.cfg.profile);
                let id = u.id.clone();
                self.emit(EntityKind::User, Action::Updated, &id, &id, t, data, true);
                return;
            }
        }
        match rng.gen_range(0..100) {
            // Most user.updated events in practice are profile edits and sign-ins.
            0..=24 => {
                u.first_name = Some(pick(rng, FIRST_NAMES).to_string());
                if rng.gen_bool(0.3) {
                    u.last_name = Some(pick(rng, LAST_NAMES).to_string());
                }
            }
            25..=34 => {
                let base = u.first_name.as_deref().map_or("user".into(), ascii_lower);
                u.username = Some(format!("{base}_{}", rng.gen_range(1..100_000)));
            }
            35..=59 => u.last_sign_in_at = Some(t),
            60..=69 => {
                let local = u.emails[u.primary_email]
                    .address
                    .split('@')
                    .next()
                    .unwrap_or("user")
                    .to_string();
                u.emails.push(Email {
                    id: ids::entity_id("idn", t, rng),
                    address: format!("{local}.{}@{}", u.emails.len(), pick(rng, EMAIL_DOMAINS)),
                    strategy: "email_code",
                });
                if rng.gen_bool(0.5) {
                    u.primary_email = u.emails.len() - 1;
                }
            }
            70..=89 => match &mut u.public_metadata {
                // Realistic metadata is a larger object: change two of its keys.
                Value::Object(m) if self.cfg.profile == Profile::Realistic => {
                    m.insert("plan".into(), json!(pick(rng, PLANS)));
                    m.insert("seats".into(), json!(rng.gen_range(1..50)));
                }
                _ => {
                    u.public_metadata = json!({"plan": pick(rng, PLANS), "onboarded": true, "seats": rng.gen_range(1..50)});
                }
            },
            90..=94 => u.two_factor_enabled = !u.two_factor_enabled,
            _ => {
                u.unsafe_metadata =
                    json!({"theme": if rng.gen_bool(0.5) { "dark" } else { "light" }});
            }
        }
        u.updated_at = t;
        let data = user_json(u, self.cfg.profile);
        let id = u.id.clone();
        self.emit(EntityKind::User, Action::Updated, &id, &id, t, data, true);
    }

    fn delete_user(&mut self, idx: usize) {
        let t = self.tick();
        self.live_users.retain(|&i| i != idx);
        self.end_memberships_of(Some(idx), None);
        let id = self.users[idx].id.clone();
        // Deleted payloads carry only these three fields (fixture user.deleted.json).
        let data = json!({"deleted": true, "id": id, "object": "user"});
        let browser = self.rng.gen_bool(0.3);
        self.emit(
            EntityKind::User,
            Action::Deleted,
            &id,
            &id,
            t,
            data,
            browser,
        );
    }

    // ---- organizations -----------------------------------------------------

    fn company_name(&mut self) -> String {
        let rng = &mut self.rng;
        format!(
            "{} {}{}",
            pick(rng, COMPANY_WORDS),
            pick(rng, COMPANY_NOUNS),
            pick(rng, COMPANY_SUFFIXES)
        )
    }

    /// Slugs are unique per instance in Clerk.
    fn unique_slug(&mut self, name: &str) -> String {
        let base = slugify(name);
        let mut slug = base.clone();
        while !self.slugs.insert(slug.clone()) {
            slug = format!("{base}-{}", self.rng.gen_range(1..100_000));
        }
        slug
    }

    fn create_org(&mut self) -> usize {
        let t = self.tick();
        let name = self.company_name();
        let slug = self.unique_slug(&name);
        let id = ids::entity_id("org", t, &mut self.rng);
        let creator = *self
            .live_users
            .choose(&mut self.rng)
            .expect("orgs need a user");
        let logo_url = self
            .rng
            .gen_bool(0.4)
            .then(|| format!("https://{slug}.example.com/logo.png"));
        let mut org = Org {
            image_url: avatar_url(&self.instance_id, &id, &name[..1]),
            id,
            name,
            slug,
            created_by: self.users[creator].id.clone(),
            logo_url,
            public_metadata: json!({}),
            created_at: t,
            updated_at: t,
            private_metadata: json!({}),
            max_allowed_memberships: 0,
        };
        if self.cfg.profile == Profile::Realistic {
            let rng = &mut self.rng;
            org.public_metadata = json!({
                "plan": pick(rng, PLANS),
                "seats": rng.gen_range(1..500),
                "industry": pick(rng, INDUSTRIES),
            });
            org.private_metadata = json!({
                "stripe_customer_id": format!("cus_{}", &ids::entity_id("x", t, rng)[2..16]),
                "billing_email": format!("billing@{}.example.com", org.slug),
            });
            org.max_allowed_memberships = *[0u32, 5, 20, 100].choose(rng).expect("non-empty");
        }
        let idx = self.orgs.len();
        self.orgs.push(org);
        self.live_orgs.push(idx);
        let data = org_json(&self.orgs[idx], self.cfg.profile);
        let id = self.orgs[idx].id.clone();
        self.emit(
            EntityKind::Organization,
            Action::Created,
            &id,
            &id,
            t,
            data,
            true,
        );
        idx
    }

    fn update_org(&mut self, idx: usize) {
        let t = self.tick();
        match self.rng.gen_range(0..10) {
            0..=3 => {
                let name = self.company_name();
                let old = std::mem::take(&mut self.orgs[idx].slug);
                self.slugs.remove(&old);
                self.orgs[idx].slug = self.unique_slug(&name);
                self.orgs[idx].name = name;
            }
            4..=7 => {
                let plan = pick(&mut self.rng, PLANS);
                let seats = self.rng.gen_range(1..500);
                match &mut self.orgs[idx].public_metadata {
                    Value::Object(m) if self.cfg.profile == Profile::Realistic => {
                        m.insert("plan".into(), json!(plan));
                        m.insert("seats".into(), json!(seats));
                    }
                    other => *other = json!({"plan": plan, "seats": seats}),
                }
            }
            _ => {
                let o = &mut self.orgs[idx];
                o.logo_url = match o.logo_url {
                    Some(_) => None,
                    None => Some(format!("https://{}.example.com/logo-{t}.png", o.slug)),
                };
            }
        }
        let o = &mut self.orgs[idx];
        o.updated_at = t;
        let data = org_json(o, self.cfg.profile);
        let id = o.id.clone();
        self.emit(
            EntityKind::Organization,
            Action::Updated,
            &id,
            &id,
            t,
            data,
            true,
        );
    }

    fn delete_org(&mut self, idx: usize) {
        let t = self.tick();
        self.live_orgs.retain(|&i| i != idx);
        self.end_memberships_of(None, Some(idx));
        let id = self.orgs[idx].id.clone();
        let data = json!({"deleted": true, "id": id, "object": "organization"});
        let browser = self.rng.gen_bool(0.3);
        self.emit(
            EntityKind::Organization,
            Action::Deleted,
            &id,
            &id,
            t,
            data,
            browser,
        );
    }

    // ---- memberships -------------------------------------------------------

    fn create_membership(&mut self) -> Option<usize> {
        // A few tries at a free pair; a small instance can run out of them.
        let (user, org) = (0..4).find_map(|_| {
            let u = *self.live_users.choose(&mut self.rng)?;
            let o = *self.live_orgs.choose(&mut self.rng)?;
            (!self.pairs.contains(&(u, o))).then_some((u, o))
        })?;
        self.pairs.insert((user, org));
        let t = self.tick();
        let m = Membership {
            id: ids::entity_id("orgmem", t, &mut self.rng),
            org,
            user,
            legacy_roles: self.rng.gen_bool(0.05),
            admin: self.rng.gen_bool(0.2),
            created_at: t,
            updated_at: t,
        };
        let idx = self.mems.len();
        self.mems.push(m);
        self.emit_membership(idx, Action::Created, t);
        Some(idx)
    }

    fn update_membership(&mut self, idx: usize) {
        let t = self.tick();
        // Most membership updates are role changes; the rest only touch updated_at
        // (metadata Clerk does not show in these payloads).
        if self.rng.gen_bool(0.7) {
            self.mems[idx].admin = !self.mems[idx].admin;
        }
        self.mems[idx].updated_at = t;
        self.emit_membership(idx, Action::Updated, t);
    }

    fn delete_membership(&mut self, idx: usize) {
        let t = self.tick();
        // A deleted membership is sent as the full object (fixture
        // organizationMembership.deleted.json), with its final updated_at.
        self.mems[idx].updated_at = t;
        self.emit_membership(idx, Action::Deleted, t);
    }

    fn emit_membership(&mut self, idx: usize, action: Action, t: i64) {
        let m = &self.mems[idx];
        let data = membership_json(m, &self.orgs[m.org], &self.users[m.user], self.cfg.profile);
        let (id, key) = (m.id.clone(), self.orgs[m.org].id.clone());
        self.emit(EntityKind::Membership, action, &id, &key, t, data, true);
    }

    // ---- envelope ----------------------------------------------------------

    /// Wraps `data` in Clerk's envelope and appends the event. `browser`: the
    /// change came from a user's request (Clerk then fills `event_attributes`
    /// with the client's address and agent) rather than from the Backend API.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        kind: EntityKind,
        action: Action,
        entity_id: &str,
        entity_key: &str,
        t: i64,
        data: Value,
        browser: bool,
    ) {
        let verb = match action {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Deleted => "deleted",
        };
        let event_type = format!("{}.{verb}", kind.family());
        let http_request = if browser {
            let ip = format!(
                "{}.{}.{}.{}",
                self.rng.gen_range(1..224),
                self.rng.gen_range(0..256),
                self.rng.gen_range(0..256),
                self.rng.gen_range(1..255)
            );
            json!({"client_ip": ip, "user_agent": pick(&mut self.rng, USER_AGENTS)})
        } else {
            json!({"client_ip": "", "user_agent": ""})
        };
        let body = json!({
            "data": data,
            "event_attributes": {"http_request": http_request},
            "instance_id": self.instance_id,
            "object": "event",
            "timestamp": t,
            "type": event_type,
        });
        let seq = self.emitted as u32;
        self.emitted += 1;
        let svix_id = ids::svix_id(t, seq, &mut self.rng);
        self.out.push(Event {
            svix_id: svix_id.into(),
            event_type,
            kind,
            action,
            entity_id: entity_id.to_string(),
            entity_key: entity_key.to_string(),
            timestamp_ms: t,
            body: Bytes::from(serde_json::to_vec(&body).expect("a Value always serializes")),
        });
    }
}

fn user_json(u: &User, profile: Profile) -> Value {
    let emails: Vec<Value> = u
        .emails
        .iter()
        .map(|e| {
            json!({
                "email_address": e.address,
                "id": e.id,
                "linked_to": [],
                "object": "email_address",
                "reserved": false,
                "verification": {
                    "attempts": null,
                    "expire_at": null,
                    "status": "verified",
                    "strategy": e.strategy,
                },
            })
        })
        .collect();
    let phones: Vec<Value> = u
        .phones
        .iter()
        .map(|p| {
            json!({
                "backup_codes": null,
                "default_second_factor": false,
                "id": p.id,
                "linked_to": [],
                "object": "phone_number",
                "phone_number": p.number,
                "reserved": false,
                "reserved_for_second_factor": false,
                "verification": {
                    "attempts": 1,
                    "expire_at": null,
                    "status": "verified",
                    "strategy": "phone_code",
                },
            })
        })
        .collect();
    let mut v = json!({
        "birthday": "",
        "created_at": u.created_at,
        "email_addresses": emails,
        "external_accounts": [],
        "external_id": u.external_id,
        "first_name": u.first_name,
        "gender": "",
        "id": u.id,
        "image_url": u.image_url,
        "last_name": u.last_name,
        "last_sign_in_at": u.last_sign_in_at,
        "object": "user",
        "password_enabled": u.password_enabled,
        "phone_numbers": phones,
        "primary_email_address_id": u.emails[u.primary_email].id,
        "primary_phone_number_id": u.phones.first().map(|p| p.id.clone()),
        "primary_web3_wallet_id": null,
        "private_metadata": u.private_metadata,
        "profile_image_url": "https://www.gravatar.com/avatar?d=mp",
        "public_metadata": u.public_metadata,
        "two_factor_enabled": u.two_factor_enabled,
        "unsafe_metadata": u.unsafe_metadata,
        "updated_at": u.updated_at,
        "username": u.username,
        "web3_wallets": [],
    });
    if profile == Profile::Realistic {
        let accounts: Vec<Value> = u
            .external_accounts
            .iter()
            .map(|a| {
                let google = a.provider == "oauth_google";
                json!({
                    "approved_scopes": if google {
                        "email https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/userinfo.profile openid profile"
                    } else {
                        "read:user user:email"
                    },
                    "email_address": a.email_address,
                    "family_name": u.last_name.clone().unwrap_or_default(),
                    "given_name": u.first_name.clone().unwrap_or_default(),
                    "id": a.id,
                    "identification_id": a.id,
                    "image_url": a.avatar_url,
                    "label": null,
                    "object": if google { "google_account" } else { "github_account" },
                    "provider": a.provider,
                    "provider_user_id": a.provider_user_id,
                    "public_metadata": {},
                    "username": null,
                    "verification": {
                        "attempts": null,
                        "expire_at": u.created_at + 600_000,
                        "status": "verified",
                        "strategy": a.provider,
                    },
                })
            })
            .collect();
        let m = v.as_object_mut().expect("a user is an object");
        m.insert("external_accounts".into(), Value::Array(accounts));
        for (k, val) in [
            ("backup_code_enabled", json!(false)),
            ("banned", json!(false)),
            ("create_organization_enabled", json!(true)),
            ("delete_self_enabled", json!(true)),
            ("has_image", json!(!u.external_accounts.is_empty())),
            ("last_active_at", json!(u.last_active_at)),
            ("locked", json!(false)),
            ("passkeys", json!([])),
            ("saml_accounts", json!([])),
            ("totp_enabled", json!(u.two_factor_enabled)),
        ] {
            m.insert(k.into(), val);
        }
    }
    v
}

fn org_json(o: &Org, profile: Profile) -> Value {
    let mut v = json!({
        "created_at": o.created_at,
        "created_by": o.created_by,
        "id": o.id,
        "image_url": o.image_url,
        "logo_url": o.logo_url,
        "name": o.name,
        "object": "organization",
        "public_metadata": o.public_metadata,
        "slug": o.slug,
        "updated_at": o.updated_at,
    });
    if profile == Profile::Realistic {
        let m = v.as_object_mut().expect("an organization is an object");
        m.insert("admin_delete_enabled".into(), json!(true));
        m.insert("has_image".into(), json!(o.logo_url.is_some()));
        m.insert(
            "max_allowed_memberships".into(),
            json!(o.max_allowed_memberships),
        );
        m.insert("private_metadata".into(), o.private_metadata.clone());
    }
    v
}

fn membership_json(m: &Membership, org: &Org, user: &User, profile: Profile) -> Value {
    let role = match (m.legacy_roles, m.admin) {
        (false, true) => "org:admin",
        (false, false) => "org:member",
        (true, true) => "admin",
        (true, false) => "basic_member",
    };
    let mut v = json!({
        "created_at": m.created_at,
        "id": m.id,
        "object": "organization_membership",
        "organization": org_json(org, profile),
        "public_user_data": {
            "first_name": user.first_name,
            "identifier": user.emails[user.primary_email].address,
            "image_url": user.image_url,
            "last_name": user.last_name,
            "profile_image_url": "https://www.gravatar.com/avatar?d=mp",
            "user_id": user.id,
        },
        "role": role,
        "updated_at": m.updated_at,
    });
    if profile == Profile::Realistic {
        let permissions = if m.admin {
            ADMIN_PERMISSIONS
        } else {
            MEMBER_PERMISSIONS
        };
        let o = v.as_object_mut().expect("a membership is an object");
        o.insert("permissions".into(), json!(permissions));
        o.insert("private_metadata".into(), json!({}));
        o.insert("public_metadata".into(), json!({}));
        o.insert(
            "role_name".into(),
            json!(if m.admin { "Admin" } else { "Member" }),
        );
        if let Some(p) = o.get_mut("public_user_data").and_then(Value::as_object_mut) {
            p.insert(
                "has_image".into(),
                json!(!user.external_accounts.is_empty()),
            );
        }
        // A membership shows its organization's public side only.
        if let Some(org) = o.get_mut("organization").and_then(Value::as_object_mut) {
            org.remove("private_metadata");
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use clerksync::clerk::envelope::parse_head;
    use std::collections::HashMap;

    fn cfg(seed: u64, events: usize) -> GenConfig {
        GenConfig {
            seed,
            events,
            ..GenConfig::default()
        }
    }

    fn body(e: &Event) -> Value {
        serde_json::from_slice(&e.body).expect("generated bodies are JSON")
    }

    #[test]
    fn deterministic_per_seed_and_exact_in_size() {
        let a = generate(&cfg(42, 3000));
        let b = generate(&cfg(42, 3000));
        let c = generate(&cfg(43, 3000));
        assert_eq!(a.len(), 3000);
        assert_eq!(c.len(), 3000);
        let key = |v: &[Event]| {
            v.iter()
                .map(|e| (e.svix_id.clone(), e.body.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&c));
        for n in [1, 2, 3, 7, 100] {
            assert_eq!(generate(&cfg(5, n)).len(), n);
        }
    }

    #[test]
    fn versions_strictly_increase_per_entity_and_lifecycles_are_well_formed() {
        let events = generate(&cfg(7, 5000));
        let mut last: HashMap<&str, (i64, Action)> = HashMap::new();
        let mut updates: HashMap<&str, u32> = HashMap::new();
        for e in &events {
            let v = body(e);
            assert_eq!(v["timestamp"], e.timestamp_ms);
            assert_eq!(v["object"], "event");
            assert!(v["instance_id"].as_str().unwrap().starts_with("ins_"));
            // The version the server uses: updated_at, else the envelope timestamp.
            let version = v["data"]["updated_at"].as_i64().unwrap_or(e.timestamp_ms);
            if e.action != Action::Deleted || e.kind == EntityKind::Membership {
                assert_eq!(v["data"]["updated_at"], e.timestamp_ms, "{}", e.event_type);
            }
            match last.get(e.entity_id.as_str()) {
                None => assert_eq!(e.action, Action::Created, "first event of {}", e.entity_id),
                Some((prev, prev_action)) => {
                    assert!(
                        version > *prev,
                        "{} went from {prev} to {version}",
                        e.entity_id
                    );
                    assert_ne!(e.action, Action::Created);
                    assert_ne!(*prev_action, Action::Deleted, "event after delete");
                }
            }
            if e.action == Action::Updated {
                *updates.entry(&e.entity_id).or_default() += 1;
            }
            last.insert(&e.entity_id, (version, e.action));
        }
        // "Several updates": nearly every entity got at least one.
        let with_updates = last.keys().filter(|id| updates.contains_key(*id)).count();
        assert!(
            with_updates * 10 >= last.len() * 8,
            "{with_updates}/{}",
            last.len()
        );
        let deleted = last.values().filter(|(_, a)| *a == Action::Deleted).count();
        assert!(deleted > 0);
    }

    #[test]
    fn svix_ids_are_unique_and_increase_in_event_order() {
        let events = generate(&cfg(9, 4000));
        for w in events.windows(2) {
            assert!(
                w[0].svix_id < w[1].svix_id,
                "{} !< {}",
                w[0].svix_id,
                w[1].svix_id
            );
            assert!(w[0].timestamp_ms < w[1].timestamp_ms);
        }
        assert!(events.iter().all(|e| ids::is_clerk_id(&e.svix_id, "msg")));
    }

    #[test]
    fn every_body_parses_as_an_envelope_with_the_right_entity_key() {
        let events = generate(&cfg(11, 4000));
        let mut seen_types = HashSet::new();
        for e in &events {
            let head = parse_head(&e.body).expect("envelope");
            assert_eq!(head.event_type, e.event_type);
            assert_eq!(head.object_id.as_deref(), Some(e.entity_id.as_str()));
            assert_eq!(head.entity_key.as_deref(), Some(e.entity_key.as_str()));
            assert_eq!(head.timestamp_ms, Some(e.timestamp_ms));
            seen_types.insert(e.event_type.clone());
            let prefix = match e.kind {
                EntityKind::User => "user",
                EntityKind::Organization => "org",
                EntityKind::Membership => "orgmem",
            };
            assert!(ids::is_clerk_id(&e.entity_id, prefix), "{}", e.entity_id);
        }
        for family in ["user", "organization", "organizationMembership"] {
            for verb in ["created", "updated", "deleted"] {
                assert!(
                    seen_types.contains(&format!("{family}.{verb}")),
                    "{family}.{verb}"
                );
            }
        }
    }

    #[test]
    fn payload_shapes_match_the_fixtures() {
        let events = generate(&cfg(3, 3000));
        let first = |ty: &str| body(events.iter().find(|e| e.event_type == ty).unwrap());
        let u = first("user.updated");
        let fixture_user_keys = [
            "birthday",
            "created_at",
            "email_addresses",
            "external_accounts",
            "external_id",
            "first_name",
            "gender",
            "id",
            "image_url",
            "last_name",
            "last_sign_in_at",
            "object",
            "password_enabled",
            "phone_numbers",
            "primary_email_address_id",
            "primary_phone_number_id",
            "primary_web3_wallet_id",
            "private_metadata",
            "profile_image_url",
            "public_metadata",
            "two_factor_enabled",
            "unsafe_metadata",
            "updated_at",
            "username",
            "web3_wallets",
        ];
        let keys: Vec<&str> = u["data"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, fixture_user_keys);
        let email = &u["data"]["email_addresses"][0];
        assert_eq!(email["object"], "email_address");
        assert!(email["id"].as_str().unwrap().starts_with("idn_"));
        let d = first("user.deleted");
        assert_eq!(d["data"].as_object().unwrap().len(), 3);
        assert_eq!(d["data"]["deleted"], true);
        assert_eq!(d["data"]["object"], "user");
        let od = first("organization.deleted");
        assert_eq!(od["data"]["object"], "organization");
        let m = first("organizationMembership.deleted");
        assert_eq!(m["data"]["object"], "organization_membership");
        assert!(m["data"]["organization"]["slug"].is_string());
        assert!(m["data"]["public_user_data"]["user_id"]
            .as_str()
            .unwrap()
            .starts_with("user_"));
        let roles: HashSet<String> = events
            .iter()
            .filter(|e| e.kind == EntityKind::Membership)
            .map(|e| body(e)["data"]["role"].as_str().unwrap().to_string())
            .collect();
        assert!(
            roles.contains("org:admin") && roles.contains("org:member"),
            "{roles:?}"
        );
        assert!(
            roles.contains("admin") || roles.contains("basic_member"),
            "{roles:?}"
        );
        for r in &roles {
            assert!(["org:admin", "org:member", "admin", "basic_member"].contains(&r.as_str()));
        }
    }

    #[test]
    fn memberships_reference_live_users_and_orgs_of_the_stream() {
        let events = generate(&cfg(13, 5000));
        let mut alive: HashSet<String> = HashSet::new();
        for e in &events {
            let v = body(e);
            match (e.kind, e.action) {
                (EntityKind::Membership, _) => {
                    let user = v["data"]["public_user_data"]["user_id"].as_str().unwrap();
                    let org = v["data"]["organization"]["id"].as_str().unwrap();
                    assert!(
                        alive.contains(user),
                        "membership {} of unknown/deleted user",
                        e.entity_id
                    );
                    assert!(
                        alive.contains(org),
                        "membership {} of unknown/deleted org",
                        e.entity_id
                    );
                }
                (_, Action::Deleted) => {
                    alive.remove(&e.entity_id);
                }
                _ => {
                    alive.insert(e.entity_id.clone());
                }
            }
        }
    }

    fn realistic(seed: u64, events: usize) -> Vec<Event> {
        generate(&GenConfig {
            seed,
            events,
            profile: Profile::Realistic,
            delete_share: Profile::Realistic.default_delete_share(),
            ..GenConfig::default()
        })
    }

    /// The realistic profile has the mix issue 21 describes (shares with some
    /// tolerance: the stream is random).
    #[test]
    fn realistic_profile_has_the_production_mix() {
        let events = realistic(17, 10_000);
        assert_eq!(events.len(), 10_000);
        let n = events.len() as f64;
        let count = |ty: &str| events.iter().filter(|e| e.event_type == ty).count() as f64;
        let users = count("user.created");
        let memberships = count("organizationMembership.created");
        let per_user = memberships / users;
        assert!(
            (1.4..=1.8).contains(&per_user),
            "{per_user} memberships per user"
        );
        let user_updates = count("user.updated") / n;
        assert!(
            (0.35..=0.45).contains(&user_updates),
            "user.updated share {user_updates}"
        );
        let deletes = events
            .iter()
            .filter(|e| e.action == Action::Deleted)
            .count() as f64
            / n;
        assert!((0.005..=0.05).contains(&deletes), "delete share {deletes}");
        let mean_body = events.iter().map(|e| e.body.len()).sum::<usize>() as f64 / n;
        assert!(
            (1200.0..=2400.0).contains(&mean_body),
            "mean body {mean_body} bytes"
        );

        // Most user updates change only the activity fields: compare each with
        // the user's previous full payload, ignoring those.
        let activity = ["last_active_at", "last_sign_in_at", "updated_at"];
        let mut last: HashMap<String, Value> = HashMap::new();
        let (mut updates, mut activity_only) = (0, 0);
        let (mut with_oauth, mut with_phone, mut created, mut metadata) = (0, 0, 0, 0);
        for e in events.iter().filter(|e| e.kind == EntityKind::User) {
            let mut data = body(e)["data"].clone();
            if e.action == Action::Created {
                created += 1;
                with_oauth +=
                    usize::from(!data["external_accounts"].as_array().unwrap().is_empty());
                with_phone += usize::from(!data["phone_numbers"].as_array().unwrap().is_empty());
                metadata += ["public_metadata", "private_metadata", "unsafe_metadata"]
                    .map(|k| data[k].to_string().len())
                    .iter()
                    .sum::<usize>();
                let email = &data["email_addresses"][0]["verification"];
                assert_eq!(email["status"], "verified");
            }
            for k in activity {
                data.as_object_mut().unwrap().remove(k);
            }
            if e.action == Action::Updated {
                updates += 1;
                activity_only += usize::from(last.get(&e.entity_id) == Some(&data));
            }
            last.insert(e.entity_id.clone(), data);
        }
        let share = activity_only as f64 / updates as f64;
        assert!((0.6..=0.9).contains(&share), "activity-only share {share}");
        let oauth = with_oauth as f64 / created as f64;
        assert!(
            (0.25..=0.45).contains(&oauth),
            "external accounts on {oauth}"
        );
        let phone = with_phone as f64 / created as f64;
        assert!((0.15..=0.4).contains(&phone), "phone numbers on {phone}");
        // "A few hundred bytes" of metadata per user, on average.
        let metadata = metadata / created;
        assert!(
            (150..=600).contains(&metadata),
            "{metadata} bytes of metadata"
        );
    }

    /// The realistic stream keeps every invariant of the classic one (the
    /// lifecycle and reference checks above, on its events).
    #[test]
    fn realistic_profile_keeps_lifecycles_and_references_well_formed() {
        let events = realistic(19, 8000);
        let mut alive: HashSet<String> = HashSet::new();
        let mut version: HashMap<&str, i64> = HashMap::new();
        for e in &events {
            let v = body(e);
            let head = parse_head(&e.body).expect("envelope");
            assert_eq!(head.entity_key.as_deref(), Some(e.entity_key.as_str()));
            let ver = v["data"]["updated_at"].as_i64().unwrap_or(e.timestamp_ms);
            if let Some(prev) = version.insert(&e.entity_id, ver) {
                assert!(ver > prev, "{} went from {prev} to {ver}", e.entity_id);
            }
            match (e.kind, e.action) {
                (EntityKind::Membership, _) => {
                    let user = v["data"]["public_user_data"]["user_id"].as_str().unwrap();
                    let org = v["data"]["organization"]["id"].as_str().unwrap();
                    assert!(
                        alive.contains(user) && alive.contains(org),
                        "{}",
                        e.entity_id
                    );
                }
                (_, Action::Deleted) => {
                    assert!(alive.remove(&e.entity_id), "{} deleted twice", e.entity_id);
                }
                (_, Action::Created) => {
                    alive.insert(e.entity_id.clone());
                }
                _ => assert!(alive.contains(&e.entity_id), "update of {}", e.entity_id),
            }
        }
    }

    /// `--profile classic` keeps the lean payloads of the stream the generator
    /// produced before profiles existed.
    #[test]
    fn classic_profile_keeps_the_lean_payloads() {
        let classic = generate(&cfg(23, 2000));
        let user = classic
            .iter()
            .find(|e| e.event_type == "user.created")
            .unwrap();
        let data = body(user)["data"].clone();
        assert!(data.get("last_active_at").is_none() && data.get("banned").is_none());
        let realistic = realistic(23, 2000);
        assert_ne!(classic[0].body, realistic[0].body);
    }
}

//! Clerk's event envelope and typed payloads.
//!
//! Owns: the shapes of Clerk's events, parsed leniently. Must never: fail on an
//! unknown field or event type (Clerk's payloads drift).

pub mod envelope;
pub mod events;
pub mod kind;
pub mod model;

//! Webhook ingress: `POST /webhooks/clerk`.
//!
//! Owns: the size limit, signature verification, the envelope check and the
//! hand-off to the inbox. Must never: parse a body before it is verified,
//! answer 2xx before the delivery is durable, or echo a secret in an error.

pub mod handler;
pub mod verify;

pub use verify::{SecretSet, WebhookSecret};

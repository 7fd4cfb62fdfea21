//! Webhook ingress: `POST /webhooks/clerk`.
//!
//! Owns: the size limit, the buffered-body budget (503 past it), the svix-id
//! check, signature verification, the envelope check and the hand-off to the
//! inbox. Must never: parse a body before it is verified,
//! answer 2xx before the delivery is durable, or echo a secret in an error.

pub mod handler;
pub mod verify;

pub use verify::{SecretSet, WebhookSecret};

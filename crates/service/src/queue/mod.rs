//! The inbox: the durable, deduplicated log of verified deliveries.
//!
//! Owns: appending deliveries (deduplicated by svix-id) and the group committer
//! that batches concurrent appends into one transaction. Must never: acknowledge
//! a delivery before its row is committed, or parse event payloads beyond the
//! routing head ingress hands it.

pub mod committer;
pub mod inbox;

pub use committer::{AppendOutcome, GroupCommitter};
pub use inbox::{append_batch, NewDelivery};

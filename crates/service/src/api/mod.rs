//! HTTP surfaces other than ingress: health, metrics, the read API and admin.
//!
//! Owns: request parsing and response shapes. Must never: write to the store
//! (only ingress and the processor change data).

pub mod admin;
pub mod dashboard;
pub mod extract;
pub mod health;
pub mod openapi;
pub mod read;
pub mod realtime;
pub mod reconcile;
pub mod search;

//! clerksync: keeps an application's database in step with Clerk.
//!
//! The library is the whole service; `main.rs` only parses the command line. An
//! application can embed the router via [`app::App`]. See ARCHITECTURE.md for the flow:
//! webhook -> inbox -> processor -> store -> change feed -> cache/search/realtime.
#![forbid(unsafe_code)]

pub mod alerts;
pub mod api;
pub mod app;
pub mod backfill;
pub mod clerk;
pub mod clock;
pub mod config;
pub mod cursor;
pub mod feed;
#[doc(hidden)]
pub mod fuzzing;
pub mod http_error;
pub mod output;
pub mod processor;
pub mod queue;
pub mod realtime;
pub mod search;
pub mod serve;
pub mod setting;
pub mod store;
pub mod sync;
pub mod telemetry;
pub(crate) mod views;
pub mod webhook;

pub use app::App;
pub use config::Config;

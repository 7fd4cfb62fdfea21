//! The integration tests: one binary (one link step) for all of them.
//!
//! Each test starts the real app on 127.0.0.1:0 with a fresh SQLite file
//! (`helpers::TestApp`) or runs the real `clerksync` binary (`process`), and
//! talks to it over HTTP like Svix and an operator would.

mod admin;
mod alerts;
mod apply;
mod backends;
mod backfill;
mod bad_input;
mod browser;
mod cache;
mod cli;
mod convergence;
mod dashboard;
mod erasure;
mod events;
mod exposure;
mod fuzz_seeds;
mod health;
mod helpers;
mod ingress;
mod limits;
mod logs;
mod metrics;
mod process;
mod processor;
mod realtime;
mod reconcile;
mod search;
mod skip;
mod slowloris;
mod upgrade;

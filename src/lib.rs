//! complaintd: a daemon that runs an organisation's complaint inbox by mail.
//!
//! See `ARCHITECTURE.md` for the code map and the invariants.

pub mod backoff;
pub mod calendar;
pub mod case;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod imap;
pub mod lifecycle;
pub mod mail;
pub mod metrics;
pub mod pool;
pub mod reload;
pub mod rules;
pub mod scheduler;
pub mod serde_time;
pub mod simulate;
pub mod smtp;
pub mod store;
pub mod tls;

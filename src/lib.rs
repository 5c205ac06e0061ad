//! complaintd: a daemon that runs an organisation's complaint inbox by mail.
//!
//! See `ARCHITECTURE.md` for the code map and the invariants.

pub mod calendar;
pub mod case;
pub mod cli;
pub mod clock;
pub mod config;
pub mod engine;
pub mod mail;
pub mod rules;
pub mod simulate;
pub mod store;

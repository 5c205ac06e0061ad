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
pub mod reload;
pub mod rules;
pub mod scheduler;
pub mod simulate;
pub mod smtp;
pub mod store;
pub mod tls;

/// mimalloc for every binary built on the library (the daemon, its tests and
/// benchmarks): with glibc's allocator, allocation was about a quarter of the
/// ingest's CPU time (docs/PERFORMANCE.md, "Ingest").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

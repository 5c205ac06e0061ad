//! The `complaintd` command line: parses arguments and runs the command.

use std::process::ExitCode;

use clap::Parser;

use complaintd::cli::{run, Cli};
use complaintd::clock::SystemClock;

/// jemalloc rather than glibc's allocator (about a quarter of the ingest's
/// CPU) or mimalloc (a fifth more CPU on the ingesting thread, mostly cache
/// misses on its free lists): docs/PERFORMANCE.md, "Ingest". It is set here,
/// in the binary, because a library must leave the choice to whoever links it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    complaintd::engine::configure_worker_pool();
    let cli = Cli::parse();
    // Not locked for the whole run: `complaintd run` logs to stderr from many threads.
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    ExitCode::from(run(cli, &SystemClock, &mut out, &mut err))
}

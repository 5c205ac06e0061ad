//! The `complaintd` command line: parses arguments and runs the command.

use std::process::ExitCode;

use clap::Parser;

use complaintd::cli::{run, Cli};
use complaintd::clock::SystemClock;

/// mimalloc rather than glibc's allocator, which was about a quarter of the
/// ingest's CPU time (docs/PERFORMANCE.md, "Ingest"). It is set here, in the
/// binary, because a library must leave the choice to whoever links it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    complaintd::allocator::configure_mimalloc();
    complaintd::engine::configure_worker_pool();
    let cli = Cli::parse();
    // Not locked for the whole run: `complaintd run` logs to stderr from many threads.
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    ExitCode::from(run(cli, &SystemClock, &mut out, &mut err))
}

//! The `complaintd` command line: parses arguments and runs the command.

use std::process::ExitCode;

use clap::Parser;

use complaintd::cli::{run, Cli};
use complaintd::clock::SystemClock;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    ExitCode::from(run(cli, &SystemClock, &mut out, &mut err))
}

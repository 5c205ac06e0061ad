//! The `complaintd` command line: argument parsing (clap) and the subcommands.
//!
//! Each subcommand is a variant of [`Command`] and a function that writes to
//! the given output streams and returns the process exit code, so tests can
//! run commands in-process and the binary stays a thin `main`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, FixedOffset, Utc};
use clap::{Parser, Subcommand};

use crate::clock::Clock;
use crate::config::Config;
use crate::daemon;
use crate::engine::inspect::{self, StoreSource};
use crate::rules::check::{check, Environment};
use crate::rules::diag::{did_you_mean, render_all};
use crate::rules::eval::MemoryHistory;
use crate::rules::{explain, load, testing, Diagnostic, Limits, Policy, SourceMap};

/// Exit code of a command that ran and found nothing wrong.
pub const EXIT_OK: u8 = 0;
/// Exit code of a command that found problems (errors, failed tests, bad input).
pub const EXIT_FAILED: u8 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "complaintd",
    version,
    about = "Runs an organisation's complaint inbox by mail, driven by checked rule files."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: ingest the mailboxes, send mail, fire deadlines, reload rules on
    /// change or SIGHUP; stop cleanly on SIGTERM or SIGINT.
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Check, test and explain the rule files of a policy.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Check a configuration file and the policy it names.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Look at the cases in a store (not while the daemon holds it).
    Case {
        #[command(subcommand)]
        command: CaseCommand,
    },
    /// Run the engine on a simulated clock over a timeline of mails and
    /// clock advances, on a temporary store; print the event log.
    Simulate {
        /// The policy directory.
        #[arg(long, value_name = "DIR", default_value = "rules")]
        rules: PathBuf,
        /// The timeline (TOML; see docs/simulate.md).
        #[arg(long, value_name = "FILE")]
        timeline: PathBuf,
        /// Print one JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Report every problem of a configuration file (with its key path), its
    /// secret, its policy and its mailbox channels; exit 1 if there are any.
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

/// Where a case command finds the store.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct StoreArgs {
    /// The store directory.
    #[arg(long, value_name = "PATH")]
    store: Option<PathBuf>,
    /// The configuration file naming the store.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl StoreArgs {
    fn source(self) -> StoreSource {
        // clap requires exactly one of the two.
        match self.config {
            Some(config) => StoreSource::Config(config),
            None => StoreSource::Path(self.store.unwrap_or_default()),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum CaseCommand {
    /// List cases in number order.
    List {
        /// Only cases still open.
        #[arg(long)]
        open: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        source: StoreArgs,
    },
    /// Show one case: state, fields, assignment, clocks, timers, mail, events.
    Show {
        /// The case number, e.g. TS-2026-000123.
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        source: StoreArgs,
    },
    /// Cases whose number, sender or subject contains TEXT.
    Search {
        text: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        source: StoreArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Report every problem of a policy directory; exit 1 if there are errors.
    Check {
        /// The policy directory.
        #[arg(default_value = "rules")]
        dir: PathBuf,
    },
    /// Run the tests written in the rule files; exit 1 if any fails.
    Test {
        /// The policy directory.
        #[arg(default_value = "rules")]
        dir: PathBuf,
    },
    /// Show what the policy makes of one mail: every rule's verdict, the
    /// route, the deadlines with their calendar arithmetic, the escalations.
    Explain {
        /// The mail, as an RFC 5322 file (.eml).
        #[arg(long, value_name = "FILE.eml")]
        mail: PathBuf,
        /// When it arrives (RFC 3339, e.g. 2026-11-24T10:00:00+08:00);
        /// default: its Date header, else now.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// The channel it arrives through; default: the first declared.
        #[arg(long, value_name = "CHANNEL")]
        channel: Option<String>,
        /// The policy directory.
        #[arg(default_value = "rules")]
        dir: PathBuf,
    },
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli, clock: &dyn Clock, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let result = match cli.command {
        Command::Run { config } => run_daemon(&config, err),
        Command::Rules { command } => run_rules(command, clock, out, err),
        Command::Config {
            command: ConfigCommand::Check { config },
        } => inspect::config_check(&config, clock.now(), out),
        Command::Case { command } => run_case(command, out, err),
        Command::Simulate {
            rules,
            timeline,
            json,
        } => crate::simulate::run_command(&rules, &timeline, json, out, err),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // Output streams that cannot be written to leave nothing to report to.
            let _ = writeln!(err, "error: {e}");
            EXIT_FAILED
        }
    }
}

/// `complaintd run`: loads the configuration, installs the logger, runs the daemon on a
/// multi-threaded runtime until SIGTERM or SIGINT.
fn run_daemon(config_path: &Path, err: &mut dyn Write) -> std::io::Result<u8> {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(errors) => {
            for error in errors {
                writeln!(err, "error: {}: {error}", config_path.display())?;
            }
            return Ok(EXIT_FAILED);
        }
    };
    if let Err(message) = daemon::init_logging(&config.log) {
        writeln!(err, "error: {message}")?;
        return Ok(EXIT_FAILED);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("complaintd")
        .build()?;
    let options = daemon::DaemonOptions {
        handle_sighup: true,
        ..daemon::DaemonOptions::default()
    };
    let result = runtime.block_on(async {
        let stop = daemon::termination_signal()
            .map_err(|e| daemon::DaemonError::Task(format!("cannot listen for signals: {e}")))?;
        daemon::run_with(config, options, stop).await
    });
    match result {
        Ok(()) => Ok(EXIT_OK),
        Err(error) => {
            writeln!(err, "error: {error}")?;
            Ok(EXIT_FAILED)
        }
    }
}

fn run_case(command: CaseCommand, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<u8> {
    match command {
        CaseCommand::List { open, json, source } => {
            inspect::case_list(&source.source(), open, json, out, err)
        }
        CaseCommand::Show { id, json, source } => {
            inspect::case_show(&source.source(), &id, json, out, err)
        }
        CaseCommand::Search { text, json, source } => {
            inspect::case_search(&source.source(), &text, json, out, err)
        }
    }
}

fn run_rules(
    command: RulesCommand,
    clock: &dyn Clock,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<u8> {
    match command {
        RulesCommand::Check { dir } => rules_check(&dir, out),
        RulesCommand::Test { dir } => rules_test(&dir, out, err),
        RulesCommand::Explain {
            mail,
            at,
            channel,
            dir,
        } => rules_explain(
            &dir,
            &mail,
            at.as_deref(),
            channel.as_deref(),
            clock,
            out,
            err,
        ),
    }
}

/// A policy directory loaded and checked: the policy when there were no
/// errors, and every diagnostic with the sources to render it.
pub struct CheckedDir {
    pub policy: Option<Policy>,
    pub sources: SourceMap,
    pub diagnostics: Vec<Diagnostic>,
}

/// Loads and checks a policy directory with default limits. Template files
/// are checked when the directory has a `templates/` folder.
pub fn load_and_check(dir: &Path) -> CheckedDir {
    let loaded = load::load_dir(dir);
    let mut diagnostics = loaded.diagnostics;
    if diagnostics.iter().any(Diagnostic::is_error) {
        return CheckedDir {
            policy: None,
            sources: loaded.sources,
            diagnostics,
        };
    }
    let env = Environment {
        template_files: template_files(&dir.join("templates")),
    };
    let checked = check(loaded.sources, &loaded.files, Limits::default(), &env);
    diagnostics.extend(checked.diagnostics);
    CheckedDir {
        policy: checked.policy,
        sources: checked.sources,
        diagnostics,
    }
}

/// File names in a templates directory, or `None` when there is none.
fn template_files(dir: &Path) -> Option<BTreeSet<String>> {
    let entries = std::fs::read_dir(dir).ok()?;
    Some(
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
    )
}

fn rules_check(dir: &Path, out: &mut dyn Write) -> std::io::Result<u8> {
    let checked = load_and_check(dir);
    if checked.diagnostics.is_empty() {
        writeln!(out, "ok: 0 errors, 0 warnings")?;
        return Ok(EXIT_OK);
    }
    write!(
        out,
        "{}",
        render_all(&checked.diagnostics, &checked.sources)
    )?;
    Ok(if checked.policy.is_some() {
        EXIT_OK
    } else {
        EXIT_FAILED
    })
}

/// The checked policy, or `None` after printing why there is none.
fn policy_or_report(dir: &Path, err: &mut dyn Write) -> std::io::Result<Option<Policy>> {
    let checked = load_and_check(dir);
    match checked.policy {
        Some(policy) => Ok(Some(policy)),
        None => {
            write!(
                err,
                "{}",
                render_all(&checked.diagnostics, &checked.sources)
            )?;
            Ok(None)
        }
    }
}

fn rules_test(dir: &Path, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<u8> {
    let Some(policy) = policy_or_report(dir, err)? else {
        return Ok(EXIT_FAILED);
    };
    let outcomes = testing::run_tests(&policy, dir);
    write!(out, "{}", testing::render_outcomes(&outcomes))?;
    Ok(if outcomes.iter().all(testing::TestOutcome::passed) {
        EXIT_OK
    } else {
        EXIT_FAILED
    })
}

fn rules_explain(
    dir: &Path,
    mail_path: &Path,
    at: Option<&str>,
    channel: Option<&str>,
    clock: &dyn Clock,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<u8> {
    let at: Option<DateTime<FixedOffset>> = match at.map(DateTime::parse_from_rfc3339).transpose() {
        Ok(at) => at,
        Err(e) => {
            writeln!(
                err,
                "error: --at must be a time such as 2026-11-24T10:00:00+08:00 ({e})"
            )?;
            return Ok(EXIT_FAILED);
        }
    };
    let raw = match std::fs::read(mail_path) {
        Ok(raw) => raw,
        Err(e) => {
            writeln!(err, "error: cannot read {}: {e}", mail_path.display())?;
            return Ok(EXIT_FAILED);
        }
    };
    let (mut mail, date) = match testing::mail_from_eml(&raw) {
        Ok(parsed) => parsed,
        Err(e) => {
            writeln!(err, "error: {}: {e}", mail_path.display())?;
            return Ok(EXIT_FAILED);
        }
    };
    let Some(policy) = policy_or_report(dir, err)? else {
        return Ok(EXIT_FAILED);
    };
    let declared: Vec<&str> = policy
        .channels
        .iter()
        .map(|c| c.name.node.as_str())
        .collect();
    mail.channel = match channel {
        Some(c) if declared.contains(&c) => c.to_owned(),
        Some(c) => {
            let hint = did_you_mean(c, declared.iter().copied())
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            writeln!(
                err,
                "error: unknown channel `{c}`{hint}; declared: {}",
                declared.join(", ")
            )?;
            return Ok(EXIT_FAILED);
        }
        None => declared
            .first()
            .map(|c| (*c).to_owned())
            .unwrap_or_default(),
    };
    mail.received_at = at
        .or(date)
        .map_or_else(|| clock.now(), |t| t.with_timezone(&Utc));
    mail.language = testing::detect_language(&mail.subject, &mail.text, &policy.languages);
    let history = MemoryHistory::default();
    write!(
        out,
        "{}",
        explain::explain_new_complaint(&policy, &mail, &history)
    )?;
    Ok(EXIT_OK)
}

//! The `complaintd` command line: argument parsing (clap) and the subcommands.
//!
//! Each subcommand is a variant of [`Command`] and a function that writes to
//! the given output streams and returns the process exit code, so tests can
//! run commands in-process and the binary stays a thin `main`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, FixedOffset, Utc};
use chrono_tz::Tz;
use clap::{Parser, Subcommand};
use hyper::{Method, StatusCode};

use crate::case::CaseState;
use crate::clock::Clock;
use crate::config::Config;
use crate::daemon;
use crate::daemon::admin::{self, Release};
use crate::daemon::client::DaemonClient;
use crate::engine::inspect::{self, CaseAnswer, CaseQuery, OpenFailure, StoreSource};
use crate::rules::check::{check, Environment};
use crate::rules::diag::{did_you_mean, render_all};
use crate::rules::eval::MemoryHistory;
use crate::rules::{explain, load, testing, Diagnostic, Limits, Policy, SourceMap};
use crate::store::{CaseFilter, OutboxEntry};

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
    /// Look at the cases in a store; while the daemon holds it, ask the daemon (--config).
    Case {
        #[command(subcommand)]
        command: CaseCommand,
    },
    /// List pending or held outgoing mail; release held mail.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
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
        /// Only cases in this state (e.g. received, in_progress, closed).
        #[arg(long, value_name = "STATE", value_parser = parse_state)]
        state: Option<CaseState>,
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
pub enum OutboxCommand {
    /// Mail waiting to be sent (scheduled, awaiting retry, being sent), or with --held the
    /// mail held for an operator after a crash (smtp.in_doubt = "hold").
    List {
        #[arg(long)]
        held: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        source: StoreArgs,
    },
    /// Queue held mail to be sent again, with the same bytes and Message-ID.
    Release {
        /// The outbox id, e.g. TS-2026-000123.ack.1.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every held mail.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        source: StoreArgs,
    },
}

fn parse_state(text: &str) -> Result<CaseState, String> {
    CaseState::parse(text).ok_or_else(|| {
        let known: Vec<&str> = CaseState::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown state `{text}` (known: {})", known.join(", "))
    })
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
        Command::Outbox { command } => run_outbox(command, clock, out, err),
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
    let (query, json, source) = match command {
        CaseCommand::List {
            open,
            state,
            json,
            source,
        } => {
            let filter = CaseFilter {
                open: open.then_some(true),
                state,
                ..CaseFilter::default()
            };
            (CaseQuery::List(filter), json, source.source())
        }
        CaseCommand::Show { id, json, source } => (CaseQuery::show(&id), json, source.source()),
        CaseCommand::Search { text, json, source } => {
            (CaseQuery::Search(text), json, source.source())
        }
    };
    let failure = match inspect::open_store(&source) {
        Ok((store, zone)) => {
            return match inspect::answer(&store, &query) {
                Ok(answer) => inspect::print_answer(&answer, zone, json, out, err),
                Err(error) => {
                    writeln!(err, "error: {error}")?;
                    Ok(EXIT_FAILED)
                }
            };
        }
        Err(failure) => failure,
    };
    let (client, zone) = match daemon_of(&source, failure) {
        Ok(found) => found,
        Err(message) => {
            writeln!(err, "error: {message}")?;
            return Ok(EXIT_FAILED);
        }
    };
    let path = match &query {
        CaseQuery::Show(id) => admin::case_path(id),
        other => {
            let parameters = admin::case_query_parameters(other);
            let mut query = form_urlencoded::Serializer::new(String::new());
            for (name, value) in &parameters {
                query.append_pair(name, value);
            }
            match query.finish() {
                q if q.is_empty() => "/cases".to_owned(),
                q => format!("/cases?{q}"),
            }
        }
    };
    let answer = match client.blocking(Method::GET, &path) {
        Ok(answer) => answer,
        Err(error) => {
            writeln!(err, "error: {error}")?;
            return Ok(EXIT_FAILED);
        }
    };
    let parsed = match (&query, answer.status) {
        (CaseQuery::Show(id), StatusCode::NOT_FOUND) => Ok(CaseAnswer::NoSuchCase(id.clone())),
        (_, StatusCode::OK) => match &query {
            CaseQuery::Show(_) => serde_json::from_str(&answer.body)
                .map(|detail| CaseAnswer::Detail(Box::new(detail))),
            _ => serde_json::from_str(&answer.body).map(CaseAnswer::Cases),
        }
        .map_err(|e| format!("the daemon's answer is not what was asked for: {e}")),
        (_, status) => Err(format!(
            "the daemon answered {status}: {}",
            answer.error_message()
        )),
    };
    match parsed {
        // The daemon printed the JSON with the same code as a local query would.
        Ok(CaseAnswer::Cases(_) | CaseAnswer::Detail(_)) if json => {
            write!(out, "{}", answer.body)?;
            Ok(EXIT_OK)
        }
        Ok(found) => inspect::print_answer(&found, zone, json, out, err),
        Err(message) => {
            writeln!(err, "error: {message}")?;
            Ok(EXIT_FAILED)
        }
    }
}

/// The endpoint of the daemon holding a store that could not be opened, and the zone to
/// show times in; or the message saying why there is none to ask.
fn daemon_of(source: &StoreSource, failure: OpenFailure) -> Result<(DaemonClient, Tz), String> {
    if !failure.locked {
        return Err(failure.message);
    }
    let StoreSource::Config(path) = source else {
        return Err(format!(
            "{}; give --config FILE instead of --store to ask the running daemon",
            failure.message
        ));
    };
    // It loaded a moment ago, when the store was opened.
    let config = Config::load(path).map_err(|errors| {
        errors
            .iter()
            .map(|e| format!("{}: {e}", path.display()))
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    match &config.http {
        Some(http) => Ok((DaemonClient::new(http.listen), inspect::zone_of(&config))),
        None => Err(format!(
            "{}; {} has no [http] listen address, so the daemon cannot be asked",
            failure.message,
            path.display()
        )),
    }
}

fn run_outbox(
    command: OutboxCommand,
    clock: &dyn Clock,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<u8> {
    let (source, request) = match command {
        OutboxCommand::List { held, json, source } => {
            (source.source(), OutboxRequest::List { held, json })
        }
        OutboxCommand::Release { id, all, source } => {
            let which = match id {
                Some(id) if !all => Release::One(id),
                _ => Release::All,
            };
            (source.source(), OutboxRequest::Release(which))
        }
    };
    let failure = match inspect::open_store(&source) {
        Ok((store, zone)) => {
            let result = match &request {
                OutboxRequest::List { held, .. } => {
                    admin::outbox_list(&store, *held).map_err(|e| e.to_string())
                }
                OutboxRequest::Release(which) => {
                    admin::release(&store, which, clock.now()).map_err(|e| e.to_string())
                }
            };
            return match result {
                Ok(entries) => print_outbox(&request, &entries, zone, out),
                Err(message) => {
                    writeln!(err, "error: {message}")?;
                    Ok(EXIT_FAILED)
                }
            };
        }
        Err(failure) => failure,
    };
    let (client, zone) = match daemon_of(&source, failure) {
        Ok(found) => found,
        Err(message) => {
            writeln!(err, "error: {message}")?;
            return Ok(EXIT_FAILED);
        }
    };
    let answer = match &request {
        OutboxRequest::List { held: true, .. } => client.blocking(Method::GET, "/outbox?held=true"),
        OutboxRequest::List { held: false, .. } => client.blocking(Method::GET, "/outbox"),
        OutboxRequest::Release(Release::All) => {
            client.blocking(Method::POST, "/outbox/release-all")
        }
        OutboxRequest::Release(Release::One(id)) => {
            client.blocking(Method::POST, &admin::release_path(id))
        }
    };
    let answer = match answer {
        Ok(answer) => answer,
        Err(error) => {
            writeln!(err, "error: {error}")?;
            return Ok(EXIT_FAILED);
        }
    };
    if answer.status != StatusCode::OK {
        writeln!(err, "error: {}", answer.error_message())?;
        return Ok(EXIT_FAILED);
    }
    match serde_json::from_str::<Vec<OutboxEntry>>(&answer.body) {
        Ok(entries) => print_outbox(&request, &entries, zone, out),
        Err(e) => {
            writeln!(
                err,
                "error: the daemon's answer is not what was asked for: {e}"
            )?;
            Ok(EXIT_FAILED)
        }
    }
}

/// What `complaintd outbox` was asked to do.
enum OutboxRequest {
    List { held: bool, json: bool },
    Release(Release),
}

fn print_outbox(
    request: &OutboxRequest,
    entries: &[OutboxEntry],
    zone: Tz,
    out: &mut dyn Write,
) -> std::io::Result<u8> {
    match request {
        OutboxRequest::List { json: true, .. } => {
            write!(
                out,
                "{}",
                admin::outbox_json(entries).map_err(std::io::Error::other)?
            )?;
        }
        OutboxRequest::List { .. } => {
            for entry in entries {
                writeln!(
                    out,
                    "{}  {}  to {}  <{}>  {}",
                    entry.id,
                    inspect::outbox_state(&entry.state, zone),
                    entry.recipients.join(", "),
                    entry.message_id,
                    entry.subject
                )?;
            }
        }
        OutboxRequest::Release(_) => {
            for entry in entries {
                writeln!(out, "released {}", entry.id)?;
            }
            if entries.is_empty() {
                writeln!(out, "no mail is held")?;
            }
        }
    }
    Ok(EXIT_OK)
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

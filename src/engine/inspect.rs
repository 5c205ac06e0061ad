//! Operator views: what `complaintd config check` and `complaintd case
//! list|show|search` print, as text for people or JSON for scripts.
//!
//! sled lets one process open a store at a time and has no read-only mode
//! (it takes an exclusive lock on the store's `db` file). While the daemon
//! runs, these commands therefore cannot open its store: [`open_store`]
//! says so ([`OpenFailure::locked`]) and the command line then asks the
//! daemon's endpoint, which answers with the same data (`docs/daemon.md`).

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::policy::ActivePolicy;
use super::EngineSettings;
use crate::case::{Case, CaseId, Event, EventKind};
use crate::config::{Config, ConfigError};
use crate::store::{
    AttachmentRecord, CaseFilter, LockWait, OutboxEntry, OutboxState, Store, StoreError, Timer,
};

/// Exit code: all well.
const OK: u8 = 0;
/// Exit code: problems found or the command could not run.
const FAILED: u8 = 1;

/// Where a case command finds the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSource {
    /// A store directory given directly (times shown in UTC).
    Path(PathBuf),
    /// The store of a configuration file (times shown in its `time_zone`).
    Config(PathBuf),
}

/// Checks a configuration file and everything it names: the file itself
/// (every error with its key path), the reply-token secret, the policy
/// directory, and that each mailbox's channel is declared by the policy.
pub fn config_check(path: &Path, now: DateTime<Utc>, out: &mut dyn Write) -> std::io::Result<u8> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            print_config_errors(path, &errors, out)?;
            return Ok(FAILED);
        }
    };
    let mut errors = Vec::new();
    if let Err(error) = EngineSettings::from_config(&config) {
        errors.push(error.to_string());
    }
    match ActivePolicy::load(&config.rules.dir, now) {
        Err(problems) => {
            errors.push(format!(
                "rules.dir: the policy in {} has errors:",
                config.rules.dir.display()
            ));
            errors.extend(problems);
        }
        Ok(active) => {
            let declared: Vec<&str> = active
                .policy
                .channels
                .iter()
                .map(|c| c.name.node.as_str())
                .collect();
            for (index, mailbox) in config.mailboxes.iter().enumerate() {
                if !declared.contains(&mailbox.channel.as_str()) {
                    errors.push(format!(
                        "mailbox[{index}].channel: channel `{}` is not declared by the policy \
                         (declared: {})",
                        mailbox.channel,
                        declared.join(", ")
                    ));
                }
            }
        }
    }
    if errors.is_empty() {
        writeln!(out, "ok: {}", path.display())?;
        Ok(OK)
    } else {
        for error in errors {
            writeln!(out, "{}: {error}", path.display())?;
        }
        Ok(FAILED)
    }
}

fn print_config_errors(
    path: &Path,
    errors: &[ConfigError],
    out: &mut dyn Write,
) -> std::io::Result<()> {
    for error in errors {
        writeln!(out, "{}: {error}", path.display())?;
    }
    Ok(())
}

/// Why a store could not be opened for inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenFailure {
    pub message: String,
    /// Another process (the daemon) holds the store.
    pub locked: bool,
}

/// The display zone of a configuration (UTC when its zone is unknown).
pub fn zone_of(config: &Config) -> Tz {
    config.time_zone.parse::<Tz>().unwrap_or(chrono_tz::UTC)
}

impl From<String> for OpenFailure {
    fn from(message: String) -> Self {
        OpenFailure {
            message,
            locked: false,
        }
    }
}

/// Opens the store of a source for inspection, with its display zone.
pub fn open_store(source: &StoreSource) -> Result<(Store, Tz), OpenFailure> {
    let (path, zone, settings, daemon) = match source {
        StoreSource::Path(path) => (path.clone(), chrono_tz::UTC, None, None),
        StoreSource::Config(config_path) => {
            let config = Config::load(config_path).map_err(|errors| {
                errors
                    .iter()
                    .map(|e| format!("{}: {e}", config_path.display()))
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
            let zone = zone_of(&config);
            let settings = EngineSettings::from_config(&config)
                .map_err(|e| e.to_string())?
                .store_settings();
            let daemon = config.http.as_ref().map(|http| http.listen);
            (config.store.path.clone(), zone, Some(settings), daemon)
        }
    };
    // Opening creates a store where there is none; an inspection must not.
    if !path.join("db").is_file() {
        return Err(format!("no store at {}", path.display()).into());
    }
    let settings = settings.unwrap_or_default();
    // A running daemon holds the lock for as long as it runs: waiting for it
    // would only delay asking the daemon. Without a daemon answering, the
    // lock may be a store closed a moment ago (in this process), so wait.
    let opened = match Store::open_waiting(&path, settings.clone(), LockWait::Fail) {
        Err(StoreError::Locked { .. }) if !daemon.is_some_and(daemon_listens) => {
            Store::open_waiting(&path, settings, LockWait::Retry)
        }
        other => other,
    };
    opened
        .map(|store| (store, zone))
        .map_err(|error| match error {
            StoreError::Locked { .. } => OpenFailure {
                message: format!(
                    "the store at {} is in use by another process (is the daemon running?). sled \
                     lets one process open a store at a time and has no read-only mode; with \
                     --config, the running daemon is asked through its [http] endpoint instead",
                    path.display()
                ),
                locked: true,
            },
            other => other.to_string().into(),
        })
}

/// Whether something accepts connections on the daemon's endpoint.
fn daemon_listens(address: std::net::SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_millis(500)).is_ok()
}

/// The case queries of the `case` commands, over the store or the daemon holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseQuery {
    List(CaseFilter),
    Search(String),
    Show(CaseId),
}

impl CaseQuery {
    /// The case number as typed, normalised (`ts-2026-1` → `TS-2026-1`).
    pub fn show(id: &str) -> CaseQuery {
        CaseQuery::Show(CaseId(id.trim().to_ascii_uppercase()))
    }
}

/// What a case query found.
#[derive(Debug, Clone, PartialEq)]
pub enum CaseAnswer {
    Cases(Vec<Case>),
    Detail(Box<CaseDetail>),
    NoSuchCase(CaseId),
}

/// Answers a case query from a store: what the CLI prints and the daemon's endpoint serves.
pub fn answer(store: &Store, query: &CaseQuery) -> Result<CaseAnswer, StoreError> {
    Ok(match query {
        CaseQuery::List(filter) => CaseAnswer::Cases(store.list_cases(filter)?),
        CaseQuery::Search(text) => CaseAnswer::Cases(store.search_cases(text, None)?),
        CaseQuery::Show(id) => match case_detail(store, id)? {
            Some(detail) => CaseAnswer::Detail(Box::new(detail)),
            None => CaseAnswer::NoSuchCase(id.clone()),
        },
    })
}

/// An answer as the `--json` output: the exact text, newline included.
pub fn answer_json(answer: &CaseAnswer) -> Result<String, serde_json::Error> {
    let text = match answer {
        CaseAnswer::Cases(cases) => serde_json::to_string_pretty(cases)?,
        CaseAnswer::Detail(detail) => serde_json::to_string_pretty(detail)?,
        CaseAnswer::NoSuchCase(id) => {
            serde_json::to_string_pretty(&serde_json::json!({ "error": format!("no case {id}") }))?
        }
    };
    Ok(format!("{text}\n"))
}

/// Prints an answer as text (times in `zone`) or JSON; returns the exit code.
pub fn print_answer(
    answer: &CaseAnswer,
    zone: Tz,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<u8> {
    match answer {
        CaseAnswer::NoSuchCase(id) => {
            writeln!(err, "error: no case {id}")?;
            return Ok(FAILED);
        }
        _ if json => {
            let text = answer_json(answer).map_err(std::io::Error::other)?;
            write!(out, "{text}")?;
        }
        CaseAnswer::Cases(cases) => print_cases(cases, zone, false, out)?,
        CaseAnswer::Detail(detail) => print_detail(detail, zone, out)?,
    }
    Ok(OK)
}

/// Runs a case query on the store of a source and prints the answer.
pub fn case_query(
    source: &StoreSource,
    query: &CaseQuery,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<u8> {
    let (store, zone) = match open_store(source) {
        Ok(opened) => opened,
        Err(failure) => {
            writeln!(err, "error: {}", failure.message)?;
            return Ok(FAILED);
        }
    };
    match answer(&store, query) {
        Ok(found) => print_answer(&found, zone, json, out, err),
        Err(error) => {
            writeln!(err, "error: {error}")?;
            Ok(FAILED)
        }
    }
}

fn local(at: DateTime<Utc>, zone: Tz) -> String {
    at.with_timezone(&zone).format("%Y-%m-%d %H:%M").to_string()
}

/// `case list`: one line per case (or a JSON array of cases).
pub fn case_list(
    source: &StoreSource,
    open_only: bool,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<u8> {
    let filter = CaseFilter {
        open: open_only.then_some(true),
        ..CaseFilter::default()
    };
    case_query(source, &CaseQuery::List(filter), json, out, err)
}

/// `case search TEXT`: cases whose number, sender or subject contains it.
pub fn case_search(
    source: &StoreSource,
    text: &str,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<u8> {
    case_query(source, &CaseQuery::Search(text.to_owned()), json, out, err)
}

/// Cases one per line (or as a JSON array).
pub fn print_cases(
    cases: &[Case],
    zone: Tz,
    json: bool,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    if json {
        let text = serde_json::to_string_pretty(cases).map_err(std::io::Error::other)?;
        return writeln!(out, "{text}");
    }
    for case in cases {
        writeln!(
            out,
            "{}  {}  {}  {}  {}  {}  {}",
            case.id,
            local(case.created_at, zone),
            case.state.as_str(),
            case.severity().unwrap_or("-"),
            case.assignment
                .as_ref()
                .map_or("-", |a| a.department.as_str()),
            case.sender.email,
            case.subject
        )?;
    }
    Ok(())
}

/// Everything known about one case, for `case show --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseDetail {
    pub case: Case,
    pub events: Vec<Event>,
    pub timers: Vec<Timer>,
    pub mail: Vec<OutboxEntry>,
    pub attachments: Vec<AttachmentRecord>,
}

/// Everything known about one case, or `None` when there is no such case.
pub fn case_detail(store: &Store, id: &CaseId) -> Result<Option<CaseDetail>, StoreError> {
    let Some(case) = store.case(id)? else {
        return Ok(None);
    };
    Ok(Some(CaseDetail {
        events: store.events(id)?,
        timers: store.timers_of_case(id)?,
        mail: store.outbox_of_case(id)?,
        attachments: store.case_attachments(id)?,
        case,
    }))
}

/// `case show ID`: number, state, fields, sender, assignment, clocks,
/// pending timers, outgoing mail and the event log.
pub fn case_show(
    source: &StoreSource,
    id: &str,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<u8> {
    case_query(source, &CaseQuery::show(id), json, out, err)
}

/// One case in full, for people.
pub fn print_detail(detail: &CaseDetail, zone: Tz, out: &mut dyn Write) -> std::io::Result<()> {
    let case = &detail.case;
    writeln!(out, "{}  {}", case.id, case.subject)?;
    writeln!(out, "  state:      {}", case.state.as_str())?;
    writeln!(out, "  received:   {}", local(case.created_at, zone))?;
    writeln!(out, "  channel:    {}", case.channel)?;
    let sender = match &case.sender.name {
        Some(name) => format!("{name} <{}>", case.sender.email),
        None => case.sender.email.clone(),
    };
    writeln!(out, "  sender:     {sender}")?;
    writeln!(out, "  language:   {}", case.language)?;
    for (name, value) in &case.fields {
        writeln!(out, "  {:<11} {value}", format!("{name}:"))?;
    }
    if !case.tags.is_empty() {
        let tags: Vec<&str> = case.tags.iter().map(String::as_str).collect();
        writeln!(out, "  tags:       {}", tags.join(", "))?;
    }
    match &case.assignment {
        Some(a) if a.cc.is_empty() => {
            writeln!(out, "  assigned:   {} (by {})", a.department, a.rule)?
        }
        Some(a) => writeln!(
            out,
            "  assigned:   {}, cc {} (by {})",
            a.department,
            a.cc.join(", "),
            a.rule
        )?,
        None => writeln!(out, "  assigned:   -")?,
    }
    if case.reopen_count > 0 {
        writeln!(out, "  reopened:   {} time(s)", case.reopen_count)?;
    }
    if !case.clocks.is_empty() {
        writeln!(out, "  clocks:")?;
        for clock in case.clocks.values() {
            let state = match (clock.stopped_at, clock.paused_since) {
                (Some(at), _) => format!(
                    "stopped {} ({})",
                    local(at, zone),
                    if at <= clock.due { "met" } else { "late" }
                ),
                (None, Some(since)) => format!("paused since {}", local(since, zone)),
                (None, None) => "running".to_owned(),
            };
            writeln!(
                out,
                "    {:<14} due {}  {state}",
                clock.deadline,
                local(clock.due, zone)
            )?;
        }
    }
    if !detail.timers.is_empty() {
        writeln!(out, "  timers:")?;
        for timer in &detail.timers {
            let what = match super::timers::kind_of(timer.step) {
                crate::rules::eval::TimerKind::Due => "due".to_owned(),
                crate::rules::eval::TimerKind::Step(index) => format!("step #{}", index + 1),
            };
            writeln!(
                out,
                "    {}  {} {what}",
                local(timer.due, zone),
                timer.deadline
            )?;
        }
    }
    if !detail.mail.is_empty() {
        writeln!(out, "  mail:")?;
        for entry in &detail.mail {
            writeln!(
                out,
                "    {}  {}  to {}  {}",
                entry.id,
                outbox_state(&entry.state, zone),
                entry.recipients.join(", "),
                entry.subject
            )?;
        }
    }
    if !detail.attachments.is_empty() {
        writeln!(out, "  files:")?;
        for file in &detail.attachments {
            writeln!(
                out,
                "    {}  {}  {} bytes  sha256:{}",
                file.name, file.content_type, file.size, file.sha256
            )?;
        }
    }
    writeln!(out, "  events:")?;
    for event in &detail.events {
        writeln!(
            out,
            "    {}  {}",
            local(event.at, zone),
            describe(&event.kind, zone)
        )?;
    }
    Ok(())
}

/// An outbox state for people, times in `zone`.
pub fn outbox_state(state: &OutboxState, zone: Tz) -> String {
    match state {
        OutboxState::Scheduled { next_attempt, .. } => {
            format!("scheduled {}", local(*next_attempt, zone))
        }
        OutboxState::Sent { at } => format!("sent {}", local(*at, zone)),
        OutboxState::TemporaryFailure {
            attempts,
            last_error,
            next_attempt,
        } => format!(
            "retry {} after {attempts} failure(s): {last_error}",
            local(*next_attempt, zone)
        ),
        OutboxState::PermanentFailure { at, error } => {
            format!("failed {}: {error}", local(*at, zone))
        }
        OutboxState::Sending { started_at, .. } => {
            format!("sending since {}", local(*started_at, zone))
        }
        OutboxState::Held { at, reason, .. } => {
            format!("held {}: {reason}", local(*at, zone))
        }
    }
}

/// One event as a line for people, times in `zone`.
pub fn describe(kind: &EventKind, zone: Tz) -> String {
    let because = |b: &crate::case::Because| {
        if b.seen.is_empty() {
            format!(" [{}]", b.rule)
        } else {
            let seen: Vec<String> = b.seen.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!(" [{}: {}]", b.rule, seen.join(", "))
        }
    };
    match kind {
        EventKind::Created {
            message_id,
            channel,
            sender,
        } => format!("created from <{message_id}> by {sender} via {channel}"),
        EventKind::MailReceived {
            message_id,
            from,
            role,
            subject,
        } => format!("mail received ({role}) from {from} <{message_id}>: {subject}"),
        EventKind::FieldSet {
            field,
            value,
            because: b,
        } => format!("{field} = {value}{}", because(b)),
        EventKind::TagAdded { tag, because: b } => format!("tag {tag}{}", because(b)),
        EventKind::Assigned {
            department,
            cc,
            because: b,
        } if cc.is_empty() => format!("assigned to {department}{}", because(b)),
        EventKind::Assigned {
            department,
            cc,
            because: b,
        } => format!(
            "assigned to {department}, cc {}{}",
            cc.join(", "),
            because(b)
        ),
        EventKind::StateChanged {
            from,
            to,
            because: b,
        } => format!("{} → {}{}", from.as_str(), to.as_str(), because(b)),
        EventKind::ClockStarted {
            deadline,
            due,
            counted,
            ..
        } => format!(
            "clock {deadline} started, due {} ({counted})",
            local(*due, zone)
        ),
        EventKind::ClockPaused { deadline } => format!("clock {deadline} paused"),
        EventKind::ClockResumed { deadline, due, .. } => {
            format!("clock {deadline} resumed, due {}", local(*due, zone))
        }
        EventKind::ClockStopped { deadline, met } => format!(
            "clock {deadline} stopped ({})",
            if *met { "met" } else { "late" }
        ),
        EventKind::ClockBreached { deadline } => format!("deadline {deadline} breached"),
        EventKind::EscalationFired {
            deadline,
            step,
            template,
            recipients,
            ..
        } => format!(
            "escalation {deadline} #{} ({template}) to {}",
            step + 1,
            recipients.join(", ")
        ),
        EventKind::MailQueued {
            outbox_id,
            to,
            subject,
            ..
        } => format!("mail {outbox_id} queued to {}: {subject}", to.join(", ")),
        EventKind::MailSent { outbox_id } => format!("mail {outbox_id} sent"),
        EventKind::MailFailed {
            outbox_id,
            permanent,
            reason,
        } => format!(
            "mail {outbox_id} failed ({}): {reason}",
            if *permanent {
                "permanent"
            } else {
                "will retry"
            }
        ),
        EventKind::CommandRejected { from, reason } => {
            format!("command of {from} rejected: {reason}")
        }
        EventKind::SecurityAlert { from, reason } => format!("SECURITY: {from}: {reason}"),
        EventKind::Note { text } => format!("note: {text}"),
    }
}

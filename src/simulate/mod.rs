//! `complaintd simulate`: the real engine on a manual clock over a timeline
//! of mails and clock advances, printing the merged event log.
//!
//! The engine is the daemon's own ([`Engine`]), on a store in a temporary
//! directory; its outbox is read, never sent. Between steps the clock is
//! moved to every instant the engine asks to be woken at
//! ([`Engine::next_wakeup`]) and due timers and schedules run there, so each
//! escalation happens at its exact time, as it would in the daemon. See
//! `docs/simulate.md` for the timeline and output formats.

mod compose;
mod output;
pub mod timeline;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

pub use compose::RepliedMail;
pub use output::{local_time, render_json, render_text, LogEntry, LogLine};
pub use timeline::{
    load_timeline, parse_timeline, CaseSelector, InlineMail, MailSource, MailStep, ReplyTarget,
    Step, StepAction, Timeline, TimelineError, TimelineSettings,
};

use crate::case::CaseId;
use crate::clock::{Clock, ManualClock};
use crate::engine::{Engine, EngineError, EngineSettings, MessageReport, Outcome, RawMessage};
use crate::mail::inbound;
use crate::mail::outbound::ACKNOWLEDGEMENT;
use crate::mail::token::ReplySecret;
use crate::rules::diag::did_you_mean;
use crate::store::{CaseFilter, OutboxEntry, StoreError};

/// The reply-token secret of every simulation: fixed, so tokens (and the
/// output that shows them) are the same on every run.
const SIMULATION_SECRET: &[u8] = b"complaintd-simulate-fixed-reply-token-secret";
/// UIDVALIDITY of the simulated mailboxes.
const UID_VALIDITY: u32 = 1;
/// Purpose of forwards, as the engine queues them.
const FORWARD: &str = "forward";

/// Why a simulation could not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error(transparent)]
    Timeline(#[from] TimelineError),
    /// The rule files (or templates) have errors; each is rendered.
    #[error("the policy in {} cannot be loaded:\n{}", .dir.display(), .errors.join("\n"))]
    Policy { dir: PathBuf, errors: Vec<String> },
    /// A step cannot be carried out (an unknown channel, a reply to a mail
    /// that does not exist, …).
    #[error("{}: step {step}: {message}", .path.display())]
    Step {
        path: PathBuf,
        step: usize,
        message: String,
    },
    #[error("cannot make the temporary store: {0}")]
    TempStore(std::io::Error),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the simulation went wrong: {0}")]
    Internal(String),
    #[error(transparent)]
    Output(std::io::Error),
}

impl From<StoreError> for SimulateError {
    fn from(error: StoreError) -> Self {
        SimulateError::Engine(EngineError::Store(error))
    }
}

/// A simulation: the engine on its temporary store and manual clock, and
/// what has been reported so far.
pub struct Simulation {
    // Declared before `_dir` so the store closes before its directory goes.
    engine: Engine,
    clock: ManualClock,
    timeline: Timeline,
    zone: Tz,
    /// Cases in the order the simulation opened them (`reply_to_forward = 1`).
    opened: Vec<CaseId>,
    /// Events already reported, per case.
    reported: BTreeMap<CaseId, usize>,
    /// Mail about no case (digests) already reported, by outbox id.
    reported_system_mail: BTreeSet<String>,
    /// The last UID given out, per mailbox.
    uids: BTreeMap<String, u32>,
    default_channel: String,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Simulation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulation")
            .field("timeline", &self.timeline.path)
            .field("now", &self.clock.now())
            .field("opened", &self.opened)
            .finish_non_exhaustive()
    }
}

impl Simulation {
    /// Loads the policy of `rules_dir` into an engine on a new temporary
    /// store, its clock at the first step's time, and checks the timeline's
    /// channels and departments against the policy.
    pub fn start(rules_dir: &Path, timeline: Timeline) -> Result<Simulation, SimulateError> {
        let start = timeline
            .steps
            .first()
            .map(|step| step.at)
            .ok_or_else(|| SimulateError::Internal("the timeline has no steps".into()))?;
        let settings = &timeline.settings;
        let reply_secret = ReplySecret::new(SIMULATION_SECRET.to_vec())
            .map_err(|e| SimulateError::Internal(format!("the fixed secret: {e}")))?;
        let engine_settings = EngineSettings {
            rules_dir: rules_dir.to_owned(),
            complaint_address: settings.complaint_address.clone(),
            sender_address: settings.complaint_address.clone(),
            own_addresses: Vec::new(),
            reply_secret,
            token_valid_days: 90,
            message_id_host: settings.message_id_host.clone(),
            acks_per_sender_per_hour: settings.acks_per_sender_per_hour,
            case_prefix: settings.case_prefix.clone(),
            case_number_width: 6,
            store_cache_mb: crate::store::DEFAULT_CACHE_MB,
            time_zone: settings.time_zone,
            max_message_bytes: 25 * 1024 * 1024,
            organisation: settings.organisation.clone(),
            reopen_window_days: crate::engine::DEFAULT_REOPEN_WINDOW_DAYS,
            // A simulation spans weeks and never runs the retention purge.
            retention_days: 0,
        };
        let dir = tempfile::Builder::new()
            .prefix("complaintd-simulate-")
            .tempdir()
            .map_err(SimulateError::TempStore)?;
        let clock = ManualClock::new(start);
        let engine = match Engine::open(
            engine_settings,
            &dir.path().join("store"),
            Arc::new(clock.clone()),
        ) {
            Ok(engine) => engine,
            Err(EngineError::Policy(errors)) => {
                return Err(SimulateError::Policy {
                    dir: rules_dir.to_owned(),
                    errors,
                })
            }
            Err(other) => return Err(other.into()),
        };
        let active = engine.policy();
        let zone = active.display_zone(settings.time_zone);
        let channels: Vec<&str> = active
            .policy
            .channels
            .iter()
            .map(|c| c.name.node.as_str())
            .collect();
        let unknown_channel = |channel: &str| {
            let hint = did_you_mean(channel, channels.iter().copied())
                .map(|c| format!(" (did you mean `{c}`?)"))
                .unwrap_or_default();
            let declared = if channels.is_empty() {
                "the policy declares none".to_owned()
            } else {
                format!("declared: {}", channels.join(", "))
            };
            format!("unknown channel `{channel}`{hint}; {declared}")
        };
        let default_channel = match &settings.channel {
            Some(channel) if channels.contains(&channel.as_str()) => channel.clone(),
            Some(channel) => {
                return Err(TimelineError {
                    path: timeline.path.clone(),
                    step: None,
                    key: Some("settings.channel".into()),
                    message: unknown_channel(channel),
                }
                .into())
            }
            None => channels.first().map_or("own", |c| c).to_owned(),
        };
        for step in &timeline.steps {
            let StepAction::Mail(mail) = &step.action else {
                continue;
            };
            let problem = |key: &str, message: String| TimelineError {
                path: timeline.path.clone(),
                step: Some(step.number),
                key: Some(key.to_owned()),
                message,
            };
            if let Some(channel) = &mail.channel {
                if !channels.contains(&channel.as_str()) {
                    return Err(problem("channel", unknown_channel(channel)).into());
                }
            }
            if let Some(ReplyTarget::Forward {
                department: Some(department),
                ..
            }) = &mail.reply
            {
                if active.policy.department(department).is_none() {
                    let names: Vec<&str> = active
                        .policy
                        .departments
                        .iter()
                        .map(|d| d.name.node.as_str())
                        .collect();
                    let hint = did_you_mean(department, names.iter().copied())
                        .map(|d| format!(" (did you mean `{d}`?)"))
                        .unwrap_or_default();
                    return Err(problem(
                        "department",
                        format!(
                            "unknown department `{department}`{hint}; declared: {}",
                            names.join(", ")
                        ),
                    )
                    .into());
                }
            }
        }
        drop(active);
        Ok(Simulation {
            engine,
            clock,
            timeline,
            zone,
            opened: Vec::new(),
            reported: BTreeMap::new(),
            reported_system_mail: BTreeSet::new(),
            uids: BTreeMap::new(),
            default_channel,
            _dir: dir,
        })
    }

    /// The zone times are shown in: the policy's default calendar's.
    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The engine, to look at its store after (or during) a run.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Checker and template warnings of the policy, rendered.
    pub fn warnings(&self) -> Vec<String> {
        self.engine.policy().warnings.clone()
    }

    /// Cases in the order the simulation opened them.
    pub fn opened_cases(&self) -> &[CaseId] {
        &self.opened
    }

    /// Runs every step, handing each log line to `sink` as it happens.
    pub fn run(
        &mut self,
        sink: &mut dyn FnMut(&LogLine) -> std::io::Result<()>,
    ) -> Result<(), SimulateError> {
        let steps = self.timeline.steps.clone();
        for step in &steps {
            self.advance_to(step.at, sink)?;
            if let StepAction::Mail(mail) = &step.action {
                self.deliver(step, mail, sink)?;
            }
        }
        Ok(())
    }

    /// Moves the clock to `target`, stopping at every instant a timer or a
    /// schedule is due on the way (and at `target` itself) to run it.
    fn advance_to(
        &mut self,
        target: DateTime<Utc>,
        sink: &mut dyn FnMut(&LogLine) -> std::io::Result<()>,
    ) -> Result<(), SimulateError> {
        while let Some(due) = self.engine.next_wakeup() {
            if due > target {
                break;
            }
            // A missed schedule tick may lie before now; it runs now.
            let now = due.max(self.clock.now());
            self.clock.set(now);
            let fired = self.engine.fire_due(now)?;
            let ran = self.engine.run_schedules(now)?;
            if fired == 0 && ran == 0 {
                // Whatever woke the engine was not handled: going round
                // again would not move the clock.
                return Err(SimulateError::Internal(format!(
                    "the engine asked to be woken at {} but had nothing to do then",
                    now.to_rfc3339()
                )));
            }
            self.report(now, &[], ran > 0, sink)?;
        }
        if target > self.clock.now() {
            self.clock.set(target);
        }
        Ok(())
    }

    fn deliver(
        &mut self,
        step: &Step,
        mail: &MailStep,
        sink: &mut dyn FnMut(&LogLine) -> std::io::Result<()>,
    ) -> Result<(), SimulateError> {
        let replied = match &mail.reply {
            Some(target) => Some(self.replied_mail(step.number, target)?),
            None => None,
        };
        let settings = &self.timeline.settings;
        let raw = compose::compose(
            &mail.source,
            replied.as_ref(),
            step.number,
            step.at,
            &settings.complaint_address,
        )
        .map_err(|message| self.step_error(step.number, message))?;
        let mailbox = mail
            .mailbox
            .clone()
            .unwrap_or_else(|| settings.mailbox.clone());
        let channel = mail
            .channel
            .clone()
            .unwrap_or_else(|| self.default_channel.clone());
        let uid = self.uids.entry(mailbox.clone()).or_insert(0);
        *uid += 1;
        let uid = *uid;
        let message = RawMessage::full(raw).received_at(step.at);
        let report = self
            .engine
            .ingest(&mailbox, &channel, UID_VALIDITY, vec![(uid, message)])?;
        self.opened.extend(report.new_cases().cloned());
        self.report(step.at, &report.messages, false, sink)
    }

    /// The outgoing mail a step answers, read back from the outbox.
    fn replied_mail(
        &self,
        step: usize,
        target: &ReplyTarget,
    ) -> Result<RepliedMail, SimulateError> {
        let store = self.engine.store();
        let (key, entry) = match target {
            ReplyTarget::Mail { outbox_id } => {
                let entry = store.outbox_entry(outbox_id)?.ok_or_else(|| {
                    self.step_error(
                        step,
                        format!("`reply_to_mail`: no mail {outbox_id} has been queued (yet)"),
                    )
                })?;
                ("reply_to_mail", entry)
            }
            ReplyTarget::Acknowledgement { case } => {
                let key = "reply_to_acknowledgement";
                let id = self.case_id(step, key, case)?;
                let entry = store
                    .outbox_of_case(&id)?
                    .into_iter()
                    .filter(|e| e.purpose == ACKNOWLEDGEMENT)
                    .max_by_key(|e| e.sequence)
                    .ok_or_else(|| {
                        self.step_error(step, format!("`{key}`: case {id} was not acknowledged"))
                    })?;
                (key, entry)
            }
            ReplyTarget::Forward { case, department } => {
                let key = "reply_to_forward";
                let id = self.case_id(step, key, case)?;
                (key, self.forward_of(step, &id, department.as_deref())?)
            }
        };
        let bytes = store.outbox_message(&entry.id)?.ok_or_else(|| {
            self.step_error(
                step,
                format!("`{key}`: the stored mail {} has no message", entry.id),
            )
        })?;
        let parsed = inbound::parse(&bytes).map_err(|e| {
            self.step_error(
                step,
                format!("`{key}`: the stored mail {} cannot be read: {e}", entry.id),
            )
        })?;
        let mail = parsed.mail;
        let answer_to = mail
            .reply_to
            .first()
            .or(mail.from.as_ref())
            .map(|a| a.email.clone())
            .ok_or_else(|| {
                self.step_error(
                    step,
                    format!("`{key}`: the mail {} has no sender to answer", entry.id),
                )
            })?;
        let recipient = entry.recipients.first().cloned().ok_or_else(|| {
            self.step_error(
                step,
                format!("`{key}`: the mail {} has no recipient", entry.id),
            )
        })?;
        Ok(RepliedMail {
            message_id: mail.message_id,
            references: mail.references,
            subject: mail.subject,
            answer_to,
            recipient,
        })
    }

    /// The latest forward of a case to `department` (else to the case's
    /// department), recognised by its recipients.
    fn forward_of(
        &self,
        step: usize,
        case: &CaseId,
        department: Option<&str>,
    ) -> Result<OutboxEntry, SimulateError> {
        let store = self.engine.store();
        let department = match department {
            Some(department) => Some(department.to_owned()),
            None => store
                .case(case)?
                .and_then(|c| c.assignment)
                .map(|a| a.department),
        };
        let active = self.engine.policy();
        let addresses: Option<&Vec<String>> = department
            .as_ref()
            .and_then(|d| active.department_addresses.get(d));
        store
            .outbox_of_case(case)?
            .into_iter()
            .filter(|e| e.purpose == FORWARD)
            .filter(|e| {
                addresses.is_none_or(|addresses| {
                    e.recipients
                        .iter()
                        .any(|r| addresses.contains(&r.to_lowercase()))
                })
            })
            .max_by_key(|e| e.sequence)
            .ok_or_else(|| {
                let to = department
                    .map(|d| format!(" to department {d}"))
                    .unwrap_or_default();
                self.step_error(
                    step,
                    format!("`reply_to_forward`: case {case} has not been forwarded{to}"),
                )
            })
    }

    fn case_id(
        &self,
        step: usize,
        key: &str,
        selector: &CaseSelector,
    ) -> Result<CaseId, SimulateError> {
        match selector {
            CaseSelector::Nth(n) => {
                let index = usize::try_from(*n).unwrap_or(usize::MAX).saturating_sub(1);
                self.opened.get(index).cloned().ok_or_else(|| {
                    self.step_error(
                        step,
                        format!(
                            "`{key}`: there is no case #{n}: the simulation has opened {} case(s) so far",
                            self.opened.len()
                        ),
                    )
                })
            }
            CaseSelector::Id(id) => {
                if self.engine.store().case_exists(id)? {
                    Ok(id.clone())
                } else {
                    Err(self.step_error(step, format!("`{key}`: there is no case {id}")))
                }
            }
        }
    }

    fn step_error(&self, step: usize, message: String) -> SimulateError {
        SimulateError::Step {
            path: self.timeline.path.clone(),
            step,
            message,
        }
    }

    /// Hands `sink` every event written since the last report, the mails of
    /// `messages` that are on no case, and (after schedules ran) new mail
    /// about no case, in time order.
    fn report(
        &mut self,
        now: DateTime<Utc>,
        messages: &[MessageReport],
        schedules_ran: bool,
        sink: &mut dyn FnMut(&LogLine) -> std::io::Result<()>,
    ) -> Result<(), SimulateError> {
        let store = self.engine.store();
        let mut lines = Vec::new();
        for case in store.list_cases(&CaseFilter::default())? {
            let reported = self.reported.entry(case.id.clone()).or_insert(0);
            let events = store.events(&case.id)?;
            for event in events.iter().skip(*reported) {
                lines.push(LogLine {
                    at: event.at,
                    case: Some(case.id.clone()),
                    entry: LogEntry::Event(event.kind.clone()),
                });
            }
            *reported = events.len();
        }
        for message in messages {
            if unfiled(&message.outcome) {
                lines.push(LogLine {
                    at: now,
                    case: None,
                    entry: LogEntry::Unfiled {
                        message_id: message.message_id.clone(),
                        outcome: message.outcome.clone(),
                    },
                });
            }
        }
        if schedules_ran {
            // Nothing is ever sent here, so every mail queued so far is
            // still in the outbox's due index.
            let mut new_mail: Vec<OutboxEntry> = store
                .due_outbox(now, usize::MAX)?
                .into_iter()
                .filter(|e| e.case.is_none() && !self.reported_system_mail.contains(&e.id))
                .collect();
            new_mail.sort_by(|a, b| {
                (a.queued_at, &a.purpose, a.sequence).cmp(&(b.queued_at, &b.purpose, b.sequence))
            });
            for entry in new_mail {
                self.reported_system_mail.insert(entry.id.clone());
                lines.push(LogLine {
                    at: entry.queued_at,
                    case: None,
                    entry: LogEntry::SystemMail(entry),
                });
            }
        }
        // Stable: lines of one instant keep the order they were written in.
        lines.sort_by_key(|line| line.at);
        for line in &lines {
            sink(line).map_err(SimulateError::Output)?;
        }
        Ok(())
    }
}

/// Whether a mail's outcome leaves no event on a case to show it.
fn unfiled(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::NewCase { .. }
        | Outcome::CustomerReply { .. }
        | Outcome::DepartmentReply { .. }
        | Outcome::Unverified { .. } => false,
        Outcome::AutoReply { case, .. } | Outcome::Bounce { case, .. } => case.is_none(),
        Outcome::Loop { .. } | Outcome::Duplicate | Outcome::Quarantined { .. } => true,
    }
}

/// `complaintd simulate`: runs `timeline_path` on the policy of `rules_dir`
/// and prints the log to `out` (text, or JSON lines); problems go to `err`.
/// Returns the exit code: 0 when the whole timeline ran, 1 otherwise.
pub fn run_command(
    rules_dir: &Path,
    timeline_path: &Path,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<u8> {
    const OK: u8 = 0;
    const FAILED: u8 = 1;
    let timeline = match load_timeline(timeline_path) {
        Ok(timeline) => timeline,
        Err(error) => {
            writeln!(err, "error: {error}")?;
            return Ok(FAILED);
        }
    };
    let mut simulation = match Simulation::start(rules_dir, timeline) {
        Ok(simulation) => simulation,
        Err(SimulateError::Policy { dir, errors }) => {
            for error in &errors {
                writeln!(err, "{}", error.trim_end())?;
            }
            writeln!(
                err,
                "error: the policy in {} has errors; nothing was simulated",
                dir.display()
            )?;
            return Ok(FAILED);
        }
        Err(error) => {
            writeln!(err, "error: {error}")?;
            return Ok(FAILED);
        }
    };
    for warning in simulation.warnings() {
        writeln!(err, "{}", warning.trim_end())?;
    }
    let zone = simulation.zone();
    let result = simulation.run(&mut |line| {
        let text = if json {
            render_json(line, zone)
        } else {
            render_text(line, zone)
        };
        writeln!(out, "{text}")
    });
    match result {
        Ok(()) => Ok(OK),
        Err(SimulateError::Output(error)) => Err(error),
        Err(error) => {
            writeln!(err, "error: {error}")?;
            Ok(FAILED)
        }
    }
}

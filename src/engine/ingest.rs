//! Ingest: the messages of one mailbox fetch → cases, events, timers and
//! outgoing mail, committed in one store transaction with the mailbox
//! checkpoint, then flushed.
//!
//! Per message: parse (unreadable or oversized mail is quarantined with its
//! reason), classify, and act on the kind: a new complaint opens a case, is
//! evaluated, acknowledged (rate-limited) and forwarded; a customer reply is
//! recorded, re-evaluated, applied through the lifecycle and forwarded; a
//! department reply's commands are applied all or none (`replies`); an
//! unverified claim is recorded with a security event; automatic mail and
//! bounces are recorded on their case if they have one and never answered;
//! loops and duplicates are not acted on.
//!
//! Parsing depends on nothing but a message's bytes, so a fetch's messages
//! are parsed on rayon's pool ([`ParseAhead`], started by the daemon while
//! the fetch before commits); everything after that (classification,
//! evaluation with the batch's history, the change sets) runs in UID order
//! on the calling thread, and each change set's mails are rendered on the
//! pool as soon as it is pushed (`store::RenderAhead`), beside the rest of
//! the serial pass.
//!
//! A reply to a complaint that opened a case earlier in the same fetch needs
//! that case's number, which exists only once committed: the batch is then
//! committed up to the message before the reply (with the checkpoint at that
//! message) and a new batch begins. This is the only case where one fetch
//! takes more than one transaction.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

mod replies;

pub use replies::{CUSTOMER_REPLY, DEFAULT_REOPEN_WINDOW_DAYS, DEPARTMENT_REPLY};

use super::clocks::ClockPlan;
use super::compose::{Content, Letterhead, MailPlan, PreflightMemo};
use super::lookup::{BatchLink, BatchLookup};
use super::policy::{ActivePolicy, ACKNOWLEDGEMENT_TEMPLATE, FORWARD_TEMPLATE};
use super::timers::state_after;
use super::{Engine, EngineError};
use crate::case::{Address, Because, Case, CaseId, Event, EventKind};
use crate::mail::classify::{classify_with, ClassifyContext, MailKind, UnverifiedReason};
use crate::mail::inbound::{
    self, content_hash_id, AttachmentBlob, IncomingMail, ParseError, ParsedMail,
};
use crate::mail::outbound::{OutgoingAttachment, ACKNOWLEDGEMENT};
use crate::mail::template::MailView;
use crate::mail::token::TokenError;
use crate::pool::{self, PoolJob};
use crate::rules::ast::ClockEvent;
use crate::rules::eval::{apply_owned, evaluate_sharing, CaseHistory, DueTimes, Evaluation, Input};
use crate::store::{
    ack_counter_sender, CaseRef, ChangeSet, Checkpoint, IngestBatch, QuarantineRecord, RenderAhead,
};

/// Purpose of forwards (complaints and customer replies to a department).
pub const FORWARD: &str = "forward";

/// One message as fetched from the mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// The whole message, or only its header section when `complete` is false.
    pub bytes: Vec<u8>,
    /// The size of the whole message (the server's RFC822.SIZE).
    pub size: u64,
    /// False when only the headers were fetched (the message is too large).
    pub complete: bool,
    /// When the server received it (INTERNALDATE), if known.
    pub received_at: Option<DateTime<Utc>>,
}

impl RawMessage {
    /// A whole message.
    pub fn full(bytes: Vec<u8>) -> Self {
        RawMessage {
            size: bytes.len() as u64,
            bytes,
            complete: true,
            received_at: None,
        }
    }

    /// Only the header section of a message of `size` bytes.
    pub fn headers_only(headers: Vec<u8>, size: u64) -> Self {
        RawMessage {
            bytes: headers,
            size,
            complete: false,
            received_at: None,
        }
    }

    /// The same message with its arrival time.
    pub fn received_at(mut self, at: DateTime<Utc>) -> Self {
        self.received_at = Some(at);
        self
    }
}

/// What one ingest did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IngestReport {
    pub mailbox: String,
    /// The checkpoint committed last (`None` when nothing was committed).
    pub checkpoint: Option<Checkpoint>,
    /// One entry per message, in the order given.
    pub messages: Vec<MessageReport>,
    /// Store transactions used (1, or more when a reply followed its
    /// complaint in the same fetch).
    pub transactions: usize,
    /// Outgoing mails queued (wake the sender when this is not zero).
    pub mails_queued: usize,
}

impl IngestReport {
    /// The cases opened, in order.
    pub fn new_cases(&self) -> impl Iterator<Item = &CaseId> {
        self.messages.iter().filter_map(|m| match &m.outcome {
            Outcome::NewCase { case, .. } => Some(case),
            _ => None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageReport {
    pub uid: u32,
    /// Without angle brackets; `sha256:…` for mail without a usable one.
    pub message_id: String,
    pub outcome: Outcome,
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    NewCase {
        case: CaseId,
        acknowledged: bool,
        /// Departments the complaint was forwarded to.
        forwarded_to: Vec<String>,
    },
    CustomerReply {
        case: CaseId,
        forwarded_to: Option<String>,
    },
    DepartmentReply {
        case: CaseId,
        department: String,
    },
    /// A claim that did not verify, recorded as correspondence.
    Unverified {
        case: CaseId,
        reason: String,
    },
    AutoReply {
        case: Option<CaseId>,
        reason: String,
    },
    Bounce {
        case: Option<CaseId>,
        /// The outbox entry marked permanently failed.
        failed_mail: Option<String>,
    },
    Loop {
        reason: String,
    },
    Duplicate,
    Quarantined {
        reason: String,
    },
}

impl Engine {
    /// Ingests the messages of one fetch of `mailbox` (UIDs under
    /// `uidvalidity`) that arrived through `channel`: one store transaction
    /// for all of them and the mailbox checkpoint, then a flush. When this
    /// returns `Ok` everything is durable and the IMAP server may be told;
    /// on `Err` nothing of the failed transaction was committed.
    pub fn ingest(
        &self,
        mailbox: &str,
        channel: &str,
        uidvalidity: u32,
        messages: Vec<(u32, RawMessage)>,
    ) -> Result<IngestReport, EngineError> {
        let parsing = self.parse_ahead(messages);
        self.ingest_parsed(mailbox, channel, uidvalidity, parsing)
    }

    /// Starts parsing a fetch's messages on the pool, which needs nothing
    /// from the store: the daemon does it as soon as a fetch arrives, while
    /// the fetch before it is still committing. Give the result to
    /// [`Engine::ingest_parsed`].
    pub fn parse_ahead(&self, messages: Vec<(u32, RawMessage)>) -> ParseAhead {
        ParseAhead::start(messages, self.settings.max_message_bytes)
    }

    /// [`Engine::ingest`] of a fetch whose parsing [`Engine::parse_ahead`]
    /// started.
    pub fn ingest_parsed(
        &self,
        mailbox: &str,
        channel: &str,
        uidvalidity: u32,
        parsing: ParseAhead,
    ) -> Result<IngestReport, EngineError> {
        let _writer = self.write_lock();
        let active = self.policy();
        let now = self.clock.now();
        let mut run = Run {
            engine: self,
            letterhead: self.letterhead(&active, now),
            active: active.clone(),
            due_times: RefCell::new(DueTimes::new(&active.policy)),
            mailbox: mailbox.to_owned(),
            channel: channel.to_owned(),
            uidvalidity,
            now,
            batch: IngestBatch::new(),
            rendering: self.store.render_ahead(),
            links: HashMap::new(),
            pending_cases: HashMap::new(),
            preflight: RefCell::default(),
            pending_acks: HashMap::new(),
            pending: Vec::new(),
            handled_uid: None,
            uncommitted: false,
            report: IngestReport {
                mailbox: mailbox.to_owned(),
                checkpoint: None,
                messages: Vec::new(),
                transactions: 0,
                mails_queued: 0,
            },
        };
        let mut result = Ok(());
        for (uid, raw, parsed) in parsing {
            result = run.message(uid, raw, parsed);
            if result.is_err() {
                break;
            }
            run.handled_uid = Some(run.handled_uid.map_or(uid, |u| u.max(uid)));
            run.uncommitted = true;
        }
        if result.is_ok() {
            result = run.commit();
        }
        // What an earlier transaction of this call committed (before a
        // reply to a new case) is made durable even when a later one failed.
        if run.report.transactions > 0 {
            self.store.flush()?;
        }
        result?;
        Ok(run.report)
    }
}

/// An outcome whose case number is known only after the commit.
enum Pending {
    Done(Outcome),
    NewCase {
        case: CaseRef,
        acknowledged: bool,
        forwarded_to: Vec<String>,
    },
}

/// The state of one ingest call.
struct Run<'e> {
    engine: &'e Engine,
    active: Arc<ActivePolicy>,
    /// The due times of the clocks the evaluations of this ingest started,
    /// under `active`'s policy, all at `now`.
    due_times: RefCell<DueTimes<'e>>,
    letterhead: Arc<Letterhead>,
    mailbox: String,
    channel: String,
    uidvalidity: u32,
    now: DateTime<Utc>,
    batch: IngestBatch,
    /// The pending batch's mails, being rendered while the batch grows.
    rendering: RenderAhead,
    /// Message-IDs of the pending batch and what they became.
    links: HashMap<String, BatchLink>,
    /// Stored cases changed by the pending batch, as they will be after it.
    pending_cases: HashMap<CaseId, Case>,
    /// The preflight checks of the mail shapes seen in this ingest.
    preflight: RefCell<PreflightMemo>,
    /// Acknowledgements the pending batch counts, by sender as the store
    /// keys them ([`ack_sender`]); all at `now`, so all in its hour. The
    /// same as the batch's `pending_acks`, without a walk over the batch.
    pending_acks: HashMap<String, u64>,
    pending: Vec<(u32, String, Pending)>,
    /// Highest UID handled so far.
    handled_uid: Option<u32>,
    /// Whether messages were handled since the last commit.
    uncommitted: bool,
    report: IngestReport,
}

impl<'e> Run<'e> {
    fn message(
        &mut self,
        uid: u32,
        raw: RawMessage,
        parsed: Option<Result<ParsedMail, ParseError>>,
    ) -> Result<(), EngineError> {
        let Some(parsed) = parsed else {
            return self.oversized(uid, raw);
        };
        match parsed {
            Err(error) => {
                let id = content_hash_id(&raw.bytes);
                let size = raw.size;
                self.quarantine(uid, &id, error.to_string(), raw, size, false)
            }
            Ok(parsed) => self.parsed(uid, raw, parsed.mail, parsed.blobs),
        }
    }

    /// A message above the size limit: recorded in quarantine with its
    /// headers, never loaded.
    fn oversized(&mut self, uid: u32, raw: RawMessage) -> Result<(), EngineError> {
        let limit = self.engine.settings.max_message_bytes;
        let size = raw.size.max(raw.bytes.len() as u64);
        let header_end = header_section_len(&raw.bytes);
        let mut kept = raw;
        kept.bytes.truncate(header_end);
        let id = match inbound::peek_headers(&kept.bytes) {
            Ok(mail) => mail.message_id,
            Err(_) => content_hash_id(&kept.bytes),
        };
        let reason = format!(
            "the message is {size} bytes, more than the limit of {limit} bytes \
             (mail.max_message_bytes); only its headers were kept"
        );
        self.quarantine(uid, &id, reason, kept, size, true)
    }

    fn quarantine(
        &mut self,
        uid: u32,
        message_id: &str,
        reason: String,
        raw: RawMessage,
        size: u64,
        truncated: bool,
    ) -> Result<(), EngineError> {
        if self.known(message_id)? {
            return self.done(uid, message_id, Outcome::Duplicate);
        }
        tracing::warn!(mailbox = %self.mailbox, uid, message_id, %reason, "mail quarantined");
        let received_at = raw.received_at.unwrap_or(self.now);
        let mut changes = ChangeSet::for_message(message_id, received_at)?;
        changes.quarantine(
            QuarantineRecord {
                at: self.now,
                mailbox: self.mailbox.clone(),
                uid: Some(uid),
                message_id: Some(message_id.to_owned()),
                reason: reason.clone(),
                size,
                truncated,
            },
            raw.bytes,
        )?;
        self.push(
            uid,
            message_id,
            changes,
            BatchLink::NoCase,
            Pending::Done(Outcome::Quarantined { reason }),
        );
        Ok(())
    }

    /// Whether a mail's own Message-ID is in the domain of ours without
    /// being one we sent (forged, or ours from before the store existed).
    fn claims_our_message_id(&self, mail: &IncomingMail) -> Result<bool, EngineError> {
        let domain = format!(
            "@{}",
            self.engine.settings.message_id_host.to_ascii_lowercase()
        );
        if mail.message_id_synthesized || !mail.message_id.to_ascii_lowercase().ends_with(&domain) {
            return Ok(false);
        }
        Ok(!self.known(&mail.message_id)?)
    }

    /// Whether the store or the pending batch already has this Message-ID.
    fn known(&self, message_id: &str) -> Result<bool, EngineError> {
        Ok(self.links.contains_key(message_id) || self.engine.store.message(message_id)?.is_some())
    }

    fn done(&mut self, uid: u32, message_id: &str, outcome: Outcome) -> Result<(), EngineError> {
        self.pending
            .push((uid, message_id.to_owned(), Pending::Done(outcome)));
        Ok(())
    }

    fn push(
        &mut self,
        uid: u32,
        message_id: &str,
        changes: ChangeSet,
        link: BatchLink,
        outcome: Pending,
    ) {
        self.links.insert(message_id.to_owned(), link);
        self.rendering.add(&self.engine.store, &changes);
        self.batch.push(changes);
        self.pending.push((uid, message_id.to_owned(), outcome));
    }

    fn parsed(
        &mut self,
        uid: u32,
        raw: RawMessage,
        mail: IncomingMail,
        blobs: Vec<AttachmentBlob>,
    ) -> Result<(), EngineError> {
        let answers_pending_case = mail
            .in_reply_to
            .iter()
            .chain(&mail.references)
            .any(|id| self.links.get(id) == Some(&BatchLink::NewCase));
        if answers_pending_case {
            self.commit()?;
        }
        if self.claims_our_message_id(&mail)? {
            // Recording a foreign mail under an id of our own namespace would
            // make the store refuse the real mail of that id later; it is
            // known by its content instead.
            let id = content_hash_id(&raw.bytes);
            if self.known(&id)? {
                return self.done(uid, &id, Outcome::Duplicate);
            }
            let reason = format!(
                "it carries Message-ID <{}> of our own domain, which we never sent",
                mail.message_id
            );
            tracing::warn!(mailbox = %self.mailbox, uid, %reason, "mail not answered");
            let received_at = raw.received_at.unwrap_or(self.now);
            return self.discard(
                uid,
                &id,
                received_at,
                &reason,
                Outcome::Loop {
                    reason: reason.clone(),
                },
            );
        }
        let kind = {
            let lookup = BatchLookup {
                store: &self.engine.store,
                departments: &self.active.department_addresses,
                batch: &self.links,
                error: Default::default(),
            };
            let context = ClassifyContext {
                own_addresses: &self.engine.own_addresses,
                secret: &self.engine.settings.reply_secret,
                now: self.now,
            };
            let kind = classify_with(&mail, &context, &self.engine.own_mailboxes, &lookup);
            if let Some(error) = lookup.take_error() {
                return Err(error.into());
            }
            kind
        };
        let received_at = raw.received_at.unwrap_or(self.now);
        let id = mail.message_id.clone();
        tracing::info!(mailbox = %self.mailbox, uid, message_id = %id, kind = %kind, "mail classified");
        match kind {
            MailKind::Duplicate { .. } => self.done(uid, &id, Outcome::Duplicate),
            MailKind::Loop { reason } => {
                tracing::warn!(mailbox = %self.mailbox, uid, message_id = %id, %reason, "mail loop: not answered");
                let reason = reason.to_string();
                self.discard(
                    uid,
                    &id,
                    received_at,
                    &reason,
                    Outcome::Loop {
                        reason: reason.clone(),
                    },
                )
            }
            MailKind::NewComplaint => self.new_complaint(uid, raw, mail, blobs, received_at),
            MailKind::CustomerReply { case, .. } => {
                self.customer_reply(uid, raw, mail, blobs, received_at, case)
            }
            MailKind::DepartmentReply { case, department } => {
                self.department_reply(uid, mail, blobs, received_at, case, department)
            }
            MailKind::Unverified { case, reason } => {
                self.unverified(uid, mail, blobs, received_at, case, reason)
            }
            MailKind::AutoReply { reason, case } => {
                self.auto_reply(uid, mail, received_at, case, reason.to_string())
            }
            MailKind::Bounce {
                original_message_id,
                case,
            } => self.bounce(uid, mail, received_at, case, original_message_id),
        }
    }

    fn discard(
        &mut self,
        uid: u32,
        message_id: &str,
        received_at: DateTime<Utc>,
        reason: &str,
        outcome: Outcome,
    ) -> Result<(), EngineError> {
        let mut changes = ChangeSet::for_message(message_id, received_at)?;
        changes.discard_message(reason)?;
        self.push(
            uid,
            message_id,
            changes,
            BatchLink::NoCase,
            Pending::Done(outcome),
        );
        Ok(())
    }

    /// The case as the pending batch leaves it, else as stored.
    fn current_case(&self, id: &CaseId) -> Result<Option<Case>, EngineError> {
        match self.pending_cases.get(id) {
            Some(case) => Ok(Some(case.clone())),
            None => Ok(self.engine.store.case(id)?),
        }
    }

    fn event(&self, kind: EventKind) -> Event {
        Event { at: self.now, kind }
    }

    fn mail_received(&self, mail: &IncomingMail, role: &str) -> Event {
        self.event(EventKind::MailReceived {
            message_id: mail.message_id.clone(),
            from: mail
                .from
                .as_ref()
                .map(|a| a.email.clone())
                .unwrap_or_default(),
            role: role.to_owned(),
            subject: mail.subject.clone(),
        })
    }

    /// A note listing what could not be read of a mail, if anything.
    fn problems_note(&self, mail: &IncomingMail) -> Option<Event> {
        if mail.problems.is_empty() {
            return None;
        }
        let problems: Vec<String> = mail.problems.iter().map(ToString::to_string).collect();
        Some(self.event(EventKind::Note {
            text: format!(
                "mail {} was read as far as possible: {}",
                mail.message_id,
                problems.join("; ")
            ),
        }))
    }

    /// Evaluates `input` on `case` at the ingest's `now`, sharing due
    /// times with the other evaluations of the ingest.
    fn evaluate(
        &self,
        case: &Case,
        input: &Input<'_>,
        history: &dyn CaseHistory,
    ) -> Evaluation<'e> {
        let mut due_times = self.due_times.borrow_mut();
        let policy = due_times.policy();
        evaluate_sharing(policy, case, input, history, self.now, &mut due_times)
    }

    /// Moves a case to the state of a lifecycle event and evaluates it
    /// against `history` (the batch as it was before this message).
    fn lifecycle(
        &self,
        case: &mut Case,
        event: ClockEvent,
        why: &str,
        events: &mut Vec<Event>,
        clocks: &mut ClockPlan,
        history: &dyn CaseHistory,
    ) {
        if let Some(to) = state_after(event, case.state) {
            events.push(self.event(EventKind::StateChanged {
                from: case.state,
                to,
                because: Because {
                    rule: why.to_owned(),
                    location: None,
                    seen: Vec::new(),
                },
            }));
            case.state = to;
        }
        let evaluation = self.evaluate(case, &Input::Lifecycle(event), history);
        clocks.observe(&evaluation.actions);
        events.extend(apply_owned(case, evaluation.actions, self.now));
    }

    /// A forward that can be sent, or `None` with a note in `events` that
    /// says why it cannot.
    fn checked_forward(
        &self,
        forward: ForwardOf<'_>,
        description: String,
        events: &mut Vec<Event>,
    ) -> Option<MailPlan> {
        let ForwardOf {
            case,
            department,
            mail,
            attachments,
        } = forward;
        match self.forward_plan(case, department, mail, attachments, description.clone()) {
            Ok(plan) => self.check_plan(&plan, events).then_some(plan),
            Err(error) => {
                events.push(self.event(EventKind::Note {
                    text: format!("{description} cannot be sent: {error}"),
                }));
                None
            }
        }
    }

    /// The mail to a department: its addresses, a token for its replies;
    /// `description` names it in the case's log.
    fn forward_plan(
        &self,
        case: &Arc<Case>,
        department: &str,
        mail: &Arc<MailView>,
        attachments: &Arc<Vec<OutgoingAttachment>>,
        description: String,
    ) -> Result<MailPlan, String> {
        let Some(decl) = self.active.policy.department(department) else {
            return Err(format!("the policy has no department {department}"));
        };
        let to: Vec<Address> = decl
            .addresses
            .iter()
            .map(|a| {
                Address::new(
                    a.node.trim().trim_start_matches('<').trim_end_matches('>'),
                    None,
                )
            })
            .collect();
        if to.is_empty() {
            return Err(format!("department {department} has no address"));
        }
        Ok(MailPlan {
            active: self.active.clone(),
            letterhead: self.letterhead.clone(),
            purpose: FORWARD.to_owned(),
            template: FORWARD_TEMPLATE.to_owned(),
            language: self.active.default_language(),
            case: Some(Arc::clone(case)),
            to,
            reply_department: Some(department.to_owned()),
            reply_to: None,
            in_reply_to: None,
            references: Vec::new(),
            content: Content::Forward {
                department: department.to_owned(),
                mail: Arc::clone(mail),
                attachments: attachments.clone(),
            },
            description,
        })
    }

    fn acknowledgement_plan(
        &self,
        case: &Arc<Case>,
        mail: &IncomingMail,
        sender: &Address,
    ) -> MailPlan {
        let settings = &self.engine.settings;
        let reply_to = (!settings
            .complaint_address
            .eq_ignore_ascii_case(&settings.sender_address))
        .then(|| Address::new(&settings.complaint_address, None));
        let (in_reply_to, references) = if mail.message_id_synthesized {
            (None, Vec::new())
        } else {
            let mut references = mail.references.clone();
            references.push(mail.message_id.clone());
            (Some(mail.message_id.clone()), references)
        };
        MailPlan {
            active: self.active.clone(),
            letterhead: self.letterhead.clone(),
            purpose: ACKNOWLEDGEMENT.to_owned(),
            template: ACKNOWLEDGEMENT_TEMPLATE.to_owned(),
            language: case.language.clone(),
            case: Some(Arc::clone(case)),
            to: vec![sender.clone()],
            reply_department: None,
            reply_to,
            in_reply_to,
            references,
            content: Content::Acknowledgement,
            description: "the acknowledgement".to_owned(),
        }
    }

    /// Whether a plan can be built; one that cannot is left out with a
    /// note. Its template is not rendered here: the store renders it for
    /// the mail's identity and notes there if the template failed.
    fn check_plan(&self, plan: &MailPlan, events: &mut Vec<Event>) -> bool {
        let checked = plan.preflight_with(
            &self.engine.settings.case_prefix,
            &mut self.preflight.borrow_mut(),
        );
        match checked {
            Ok(()) => true,
            Err(error) => {
                let what = &plan.description;
                tracing::error!(%error, "{what} cannot be built; not sent");
                events.push(self.event(EventKind::Note {
                    text: format!("{what} cannot be sent: {error}"),
                }));
                false
            }
        }
    }

    fn new_complaint(
        &mut self,
        uid: u32,
        raw: RawMessage,
        mail: IncomingMail,
        blobs: Vec<AttachmentBlob>,
        received_at: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        let Some(sender) = mail.from.clone().filter(|a| a.email.contains('@')) else {
            let id = mail.message_id.clone();
            let size = raw.size;
            let reason = "no usable From address: a complaint nobody can be answered".to_owned();
            return self.quarantine(uid, &id, reason, raw, size, false);
        };
        let now = self.now;
        let store = &self.engine.store;
        let language = self.active.language_for(&mail.language);
        let mut facts = mail.to_facts(&self.channel, received_at);
        facts.language = language.clone();
        let mut case = Case::new(
            CaseId(String::new()),
            now,
            &self.channel,
            sender.clone(),
            &mail.subject,
            &language,
        );
        let mut events = vec![
            self.event(EventKind::Created {
                message_id: mail.message_id.clone(),
                channel: self.channel.clone(),
                sender: sender.email.clone(),
            }),
            self.mail_received(&mail, "customer"),
        ];
        events.extend(self.problems_note(&mail));
        let mut clocks = ClockPlan::default();
        // The batch does not change until this message is pushed, so one
        // view of its history serves every evaluation of the new case.
        let history = self.batch.history(store, None);
        {
            let evaluation = self.evaluate(&case, &Input::NewComplaint(&facts), &history);
            clocks.observe(&evaluation.actions);
            events.extend(apply_owned(&mut case, evaluation.actions, now));
        }

        // The mails are checked with the case as it is now (what a check
        // looks at of it, its creation year, never changes) and carry the
        // case as stored, once it is, below.
        let checked = Arc::new(case.clone());

        // The acknowledgement, within the sender's hourly allowance.
        let limit = self.engine.settings.acks_per_sender_per_hour;
        let pending = self.pending_acks.get(&ack_counter_sender(&sender.email));
        let already = store.acks_in_hour(&sender.email, now)? + pending.copied().unwrap_or(0);
        let acknowledgement = if already >= u64::from(limit) {
            tracing::info!(sender = %sender.email, already, limit, "acknowledgement rate limit reached");
            events.push(self.event(EventKind::Note {
                text: format!(
                    "no acknowledgement: {already} already sent to {} in this hour (limit {limit})",
                    sender.email
                ),
            }));
            None
        } else {
            let plan = self.acknowledgement_plan(&checked, &mail, &sender);
            self.check_plan(&plan, &mut events).then_some(plan)
        };
        if acknowledgement.is_some() {
            let why = "acknowledgement queued";
            self.lifecycle(
                &mut case,
                ClockEvent::Acknowledged,
                why,
                &mut events,
                &mut clocks,
                &history,
            );
        }

        // The forwards: to the assigned department and each cc department.
        let attachments = Arc::new(outgoing_attachments(&mail, &blobs));
        let mut forwards = Vec::new();
        match case.assignment.clone() {
            None => events.push(self.event(EventKind::Note {
                text: "the policy routed the case to no department; it is not forwarded".into(),
            })),
            Some(assignment) => {
                // One view of the mail for every department's forward.
                let view = Arc::new(MailView::new(&mail, received_at, self.letterhead.zone));
                let departments = std::iter::once(assignment.department).chain(assignment.cc);
                for department in departments {
                    let what = format!("the forward to department {department}");
                    let forward = ForwardOf {
                        case: &checked,
                        department: &department,
                        mail: &view,
                        attachments: &attachments,
                    };
                    if let Some(plan) = self.checked_forward(forward, what, &mut events) {
                        forwards.push((department, plan));
                    }
                }
            }
        }
        let forwarded_to: Vec<String> = forwards.iter().map(|(d, _)| d.clone()).collect();
        if !forwarded_to.is_empty() {
            let why = format!("forwarded to {}", forwarded_to.join(", "));
            self.lifecycle(
                &mut case,
                ClockEvent::Forwarded,
                &why,
                &mut events,
                &mut clocks,
                &history,
            );
        }

        drop(history);
        let mut changes = ChangeSet::for_message(&mail.message_id, received_at)?;
        let case_ref = changes.new_case(case.clone())?;
        for event in events {
            changes.append_event(&case_ref, event);
        }
        changes.link_message(&case_ref)?;
        store_texts_and_attachments(&mut changes, &case_ref, &mail, blobs);
        clocks.write(&mut changes, &case_ref, &case);
        let envelope_from = self.engine.settings.sender_address.clone();
        let acknowledged = acknowledgement.is_some();
        if acknowledged {
            changes.count_ack(&sender.email, now);
            *self
                .pending_acks
                .entry(ack_counter_sender(&sender.email))
                .or_default() += 1;
        }
        // The mails show the case as it is stored, after the lifecycle steps above.
        let case = Arc::new(case);
        let plans = acknowledgement
            .into_iter()
            .chain(forwards.into_iter().map(|(_, plan)| plan));
        for mut plan in plans {
            plan.case = Some(Arc::clone(&case));
            changes.queue_mail(&case_ref, plan.into_draft(&envelope_from))?;
        }
        let id = mail.message_id.clone();
        self.push(
            uid,
            &id,
            changes,
            BatchLink::NewCase,
            Pending::NewCase {
                case: case_ref,
                acknowledged,
                forwarded_to,
            },
        );
        Ok(())
    }

    fn customer_reply(
        &mut self,
        uid: u32,
        raw: RawMessage,
        mail: IncomingMail,
        blobs: Vec<AttachmentBlob>,
        received_at: DateTime<Utc>,
        case_id: CaseId,
    ) -> Result<(), EngineError> {
        let Some(base) = self.current_case(&case_id)? else {
            // The case vanished between classification and now: treat the
            // mail as what it would be without it.
            return self.new_complaint(uid, raw, mail, blobs, received_at);
        };
        let now = self.now;
        let mut case = base.clone();
        let mut events = vec![self.mail_received(&mail, "customer")];
        events.extend(self.problems_note(&mail));
        let mut facts = mail.to_facts(&case.channel, received_at);
        facts.language = self.active.language_for(&mail.language);
        let exclude = CaseRef::Existing(case_id.clone());
        let mut clocks = ClockPlan::default();
        {
            let history = self.batch.history(&self.engine.store, Some(&exclude));
            let evaluation = self.evaluate(&case, &Input::CustomerReply(&facts), &history);
            clocks.observe(&evaluation.actions);
            events.extend(apply_owned(&mut case, evaluation.actions, now));
        }
        let mut work = replies::customer_start(case, events);
        work.clocks = clocks;
        let (mut work, forward) =
            self.customer_work(&base, &mail, received_at, &blobs, &exclude, work)?;
        if forward {
            if let Some(assignment) = work.case.assignment.clone() {
                let department = assignment.department;
                let attachments = Arc::new(outgoing_attachments(&mail, &blobs));
                let what =
                    format!("the forward of the customer's reply to department {department}");
                let checked = Arc::new(work.case.clone());
                let view = Arc::new(MailView::new(&mail, received_at, self.letterhead.zone));
                let forward = ForwardOf {
                    case: &checked,
                    department: &department,
                    mail: &view,
                    attachments: &attachments,
                };
                if let Some(plan) = self.checked_forward(forward, what, &mut work.events) {
                    work.mails.push(plan);
                }
            }
        }
        let forwarded_to = work.mails.iter().find_map(|p| match &p.content {
            Content::Forward { department, .. } => Some(department.clone()),
            _ => None,
        });
        let outcome = Outcome::CustomerReply {
            case: case_id.clone(),
            forwarded_to,
        };
        self.commit_work(
            uid,
            &mail,
            blobs,
            received_at,
            case_id,
            &base,
            work,
            outcome,
        )
    }

    fn unverified(
        &mut self,
        uid: u32,
        mail: IncomingMail,
        blobs: Vec<AttachmentBlob>,
        received_at: DateTime<Utc>,
        case_id: CaseId,
        reason: UnverifiedReason,
    ) -> Result<(), EngineError> {
        let from = mail
            .from
            .as_ref()
            .map(|a| a.email.clone())
            .unwrap_or_default();
        let text = reason.to_string();
        tracing::warn!(case = %case_id, %from, reason = %text, "unverified claim on a case: recorded, no command applied");
        let alert = if is_attack(&reason) {
            EventKind::SecurityAlert {
                from,
                reason: text.clone(),
            }
        } else {
            EventKind::CommandRejected {
                from,
                reason: text.clone(),
            }
        };
        let mut events = vec![self.mail_received(&mail, "unverified"), self.event(alert)];
        events.extend(self.problems_note(&mail));
        let case_ref = CaseRef::Existing(case_id.clone());
        let mut changes = ChangeSet::for_message(&mail.message_id, received_at)?;
        for event in events {
            changes.append_event(&case_ref, event);
        }
        changes.link_message(&case_ref)?;
        store_texts_and_attachments(&mut changes, &case_ref, &mail, blobs);
        let id = mail.message_id.clone();
        self.push(
            uid,
            &id,
            changes,
            BatchLink::Case(case_id.clone()),
            Pending::Done(Outcome::Unverified {
                case: case_id,
                reason: text,
            }),
        );
        Ok(())
    }

    fn auto_reply(
        &mut self,
        uid: u32,
        mail: IncomingMail,
        received_at: DateTime<Utc>,
        case: Option<CaseId>,
        reason: String,
    ) -> Result<(), EngineError> {
        let id = mail.message_id.clone();
        let outcome = Outcome::AutoReply {
            case: case.clone(),
            reason: reason.clone(),
        };
        let Some(case_id) = case else {
            let why = format!("automatic mail ({reason}) about no case");
            return self.discard(uid, &id, received_at, &why, outcome);
        };
        let case_ref = CaseRef::Existing(case_id.clone());
        let mut changes = ChangeSet::for_message(&id, received_at)?;
        changes.append_event(&case_ref, self.mail_received(&mail, "auto_reply"));
        changes.append_event(
            &case_ref,
            self.event(EventKind::Note {
                text: format!("automatic mail ({reason}): recorded, not answered"),
            }),
        );
        changes.link_message(&case_ref)?;
        self.push(
            uid,
            &id,
            changes,
            BatchLink::Case(case_id),
            Pending::Done(outcome),
        );
        Ok(())
    }

    fn bounce(
        &mut self,
        uid: u32,
        mail: IncomingMail,
        received_at: DateTime<Utc>,
        case: Option<CaseId>,
        original: Option<String>,
    ) -> Result<(), EngineError> {
        let id = mail.message_id.clone();
        let outbox_id = match &original {
            Some(original) => match self.engine.store.message(original)? {
                Some(crate::store::MessageRecord::Outgoing { outbox_id, .. }) => Some(outbox_id),
                _ => None,
            },
            None => None,
        };
        let failures: Vec<String> = mail
            .report
            .iter()
            .flat_map(|r| &r.recipients)
            .filter(|r| r.is_permanent_failure())
            .map(|r| {
                let mut reason = format!("{}: {} {}", r.recipient, r.action, r.status);
                if let Some(diagnostic) = &r.diagnostic {
                    reason.push_str(&format!(" ({diagnostic})"));
                }
                reason
            })
            .collect();
        let mut changes = ChangeSet::for_message(&id, received_at)?;
        let failed_mail = match (&outbox_id, failures.is_empty()) {
            (Some(outbox_id), false) => {
                let reason = format!("bounced: {}", failures.join("; "));
                tracing::warn!(outbox = %outbox_id, %reason, "outgoing mail bounced");
                changes.fail_outbox(outbox_id, &reason, self.now);
                Some(outbox_id.clone())
            }
            _ => None,
        };
        let outcome = Outcome::Bounce {
            case: case.clone(),
            failed_mail: failed_mail.clone(),
        };
        match case {
            None => {
                let what = original.as_deref().unwrap_or("an unknown mail");
                changes.discard_message(&format!("delivery report about {what}"))?;
                self.push(uid, &id, changes, BatchLink::NoCase, Pending::Done(outcome));
            }
            Some(case_id) => {
                let case_ref = CaseRef::Existing(case_id.clone());
                changes.append_event(&case_ref, self.mail_received(&mail, "bounce"));
                if failed_mail.is_none() {
                    changes.append_event(
                        &case_ref,
                        self.event(EventKind::Note {
                            text: format!(
                                "delivery report about {}: no permanent failure reported",
                                original.as_deref().unwrap_or("an unknown mail")
                            ),
                        }),
                    );
                }
                changes.link_message(&case_ref)?;
                self.push(
                    uid,
                    &id,
                    changes,
                    BatchLink::Case(case_id),
                    Pending::Done(outcome),
                );
            }
        }
        Ok(())
    }

    /// Commits the pending batch with the checkpoint of the last message
    /// handled, and resolves the outcomes that waited for case numbers.
    fn commit(&mut self) -> Result<(), EngineError> {
        let Some(last_uid) = self.handled_uid.filter(|_| self.uncommitted) else {
            return Ok(());
        };
        let checkpoint = Checkpoint {
            uid_validity: self.uidvalidity,
            last_uid,
        };
        let mut batch = std::mem::take(&mut self.batch);
        batch.advance_checkpoint(&self.mailbox, checkpoint);
        let store = &self.engine.store;
        let rendering = std::mem::replace(&mut self.rendering, store.render_ahead());
        let committed = store.commit_rendered_ahead(&batch, rendering)?;
        // Freeing a batch (thousands of allocations) is left to the pool,
        // off the serial chain of evaluation and commit.
        rayon::spawn(move || drop(batch));
        self.report.transactions += 1;
        self.report.mails_queued += committed
            .outcomes
            .iter()
            .filter_map(|outcome| outcome.applied())
            .map(|applied| applied.mails.len())
            .sum::<usize>();
        self.report.checkpoint = Some(checkpoint);
        self.uncommitted = false;
        self.links.clear();
        self.pending_cases.clear();
        self.pending_acks.clear();
        for (uid, message_id, pending) in self.pending.drain(..) {
            let outcome = match pending {
                Pending::Done(outcome) => outcome,
                Pending::NewCase {
                    case,
                    acknowledged,
                    forwarded_to,
                } => match committed.case_id(&case) {
                    Some(case) => {
                        tracing::info!(%case, message_id, "case opened");
                        Outcome::NewCase {
                            case,
                            acknowledged,
                            forwarded_to,
                        }
                    }
                    None => Outcome::Duplicate,
                },
            };
            self.report.messages.push(MessageReport {
                uid,
                message_id,
                outcome,
            });
        }
        Ok(())
    }
}

/// A fetched message with what parsing made of it (`None`: too large to
/// parse; only its headers are kept).
type Fetched = (u32, RawMessage, Option<Result<ParsedMail, ParseError>>);

/// Messages per parsing job on the pool: small, so the serial pass can
/// start on the first ones soon.
const PARSE_CHUNK: usize = 16;

/// A fetch's messages parsed on rayon's pool, in chunks, and handed out in
/// UID order as they are ready: parsing depends on nothing but the bytes,
/// so the serial pass works on the first messages while the pool parses
/// the later ones (and renders the mails of those already handled). A
/// chunk the pool has not started when the serial pass needs it is parsed
/// by the serial pass.
pub struct ParseAhead {
    chunks: std::collections::VecDeque<PoolJob<Vec<Fetched>>>,
    ready: std::vec::IntoIter<Fetched>,
}

impl ParseAhead {
    /// Parses on the pool, not on the calling thread (which may be an async
    /// task's) unless that is a pool thread itself.
    fn start(messages: Vec<(u32, RawMessage)>, max_bytes: u64) -> ParseAhead {
        if rayon::current_thread_index().is_some() {
            // A pool thread waiting for a job queued behind it could wait
            // forever: such a caller parses here.
            let parsed: Vec<Fetched> = messages
                .into_iter()
                .map(|message| parse_one(message, max_bytes))
                .collect();
            return ParseAhead {
                chunks: Default::default(),
                ready: parsed.into_iter(),
            };
        }
        let mut chunks = std::collections::VecDeque::new();
        let mut rest = messages.into_iter().peekable();
        while rest.peek().is_some() {
            let chunk: Vec<(u32, RawMessage)> = rest.by_ref().take(PARSE_CHUNK).collect();
            chunks.push_back(pool::spawn(move || {
                chunk
                    .into_iter()
                    .map(|message| parse_one(message, max_bytes))
                    .collect::<Vec<_>>()
            }));
        }
        ParseAhead {
            chunks,
            ready: Vec::new().into_iter(),
        }
    }
}

impl Iterator for ParseAhead {
    type Item = Fetched;

    fn next(&mut self) -> Option<Fetched> {
        loop {
            if let Some(fetched) = self.ready.next() {
                return Some(fetched);
            }
            let chunk = self.chunks.pop_front()?;
            match chunk.outcome() {
                Some(Ok(parsed)) => self.ready = parsed.into_iter(),
                // A panic while parsing is the ingest's, as if parsed here.
                Some(Err(panic)) => std::panic::resume_unwind(panic),
                None => {
                    // Stopping here leaves the rest unhandled and the
                    // checkpoint before them: they are fetched again.
                    tracing::error!("a parsing job vanished; the rest of the fetch waits");
                    self.chunks.clear();
                    return None;
                }
            }
        }
    }
}

fn parse_one((uid, raw): (u32, RawMessage), max_bytes: u64) -> Fetched {
    let oversized = !raw.complete || raw.size > max_bytes || raw.bytes.len() as u64 > max_bytes;
    let parsed = (!oversized).then(|| inbound::parse(&raw.bytes));
    (uid, raw, parsed)
}

/// Whether an unverified claim looks like someone posing as a department
/// (a security alert) rather than a department writing the wrong way.
fn is_attack(reason: &UnverifiedReason) -> bool {
    match reason {
        UnverifiedReason::Token(TokenError::Expired { .. })
        | UnverifiedReason::DepartmentAddressWithoutToken { .. }
        | UnverifiedReason::UnknownDepartment { .. } => false,
        UnverifiedReason::Token(_)
        | UnverifiedReason::SenderNotInDepartment { .. }
        | UnverifiedReason::ThreadMismatch { .. } => true,
    }
}

/// Keeps what the sender wrote (`message.txt`, the new text of the mail)
/// and the attachments, under their SHA-256, with the case.
fn store_texts_and_attachments(
    changes: &mut ChangeSet,
    case: &CaseRef,
    mail: &IncomingMail,
    blobs: Vec<AttachmentBlob>,
) {
    if !mail.text.trim().is_empty() {
        changes.store_attachment(
            case,
            "message.txt",
            "text/plain; charset=utf-8",
            mail.text.clone().into_bytes(),
        );
    }
    for blob in blobs {
        let meta = mail.attachments.iter().find(|m| m.sha256 == blob.sha256);
        let name = meta.map_or("attachment", |m| m.name.as_str());
        let content_type = meta.map_or("application/octet-stream", |m| m.content_type.as_str());
        changes.store_attachment(case, name, content_type, blob.bytes);
    }
}

/// What a forward is made of: the case, where it goes, the mail it carries.
struct ForwardOf<'a> {
    case: &'a Arc<Case>,
    department: &'a str,
    mail: &'a Arc<MailView>,
    attachments: &'a Arc<Vec<OutgoingAttachment>>,
}

/// The attachments of a mail, to go with its forward.
fn outgoing_attachments(mail: &IncomingMail, blobs: &[AttachmentBlob]) -> Vec<OutgoingAttachment> {
    mail.attachments
        .iter()
        .filter_map(|meta| {
            let blob = blobs.iter().find(|b| b.sha256 == meta.sha256)?;
            Some(OutgoingAttachment {
                name: meta.name.clone(),
                content_type: meta.content_type.clone(),
                bytes: blob.bytes.clone(),
            })
        })
        .collect()
}

/// Length of the header section of a raw message (through its blank line),
/// or of all of it when there is no body.
fn header_section_len(raw: &[u8]) -> usize {
    let mut at = 0;
    while at < raw.len() {
        let end = raw[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(raw.len(), |p| at + p + 1);
        let line = &raw[at..end];
        if line == b"\n" || line == b"\r\n" {
            return end;
        }
        at = end;
    }
    raw.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fetch_is_parsed_ahead_on_the_pool_and_handed_out_in_uid_order() {
        let messages: Vec<(u32, RawMessage)> = (1..=100u32)
            .map(|uid| {
                let raw = match uid % 3 {
                    0 => RawMessage::full(b"   ".to_vec()),
                    1 => RawMessage::headers_only(b"Subject: big\r\n\r\n".to_vec(), 1 << 30),
                    _ => RawMessage::full(
                        format!(
                            "From: c{uid}@x.example\r\nMessage-ID: <m{uid}@x.example>\r\n\
                             Subject: s{uid}\r\n\r\nbody {uid}\r\n"
                        )
                        .into_bytes(),
                    ),
                };
                (uid, raw)
            })
            .collect();
        let parsed: Vec<Fetched> = ParseAhead::start(messages, 1024 * 1024).collect();
        assert_eq!(
            parsed.iter().map(|(uid, _, _)| *uid).collect::<Vec<_>>(),
            (1..=100).collect::<Vec<_>>()
        );
        for (uid, _, result) in &parsed {
            match (uid % 3, result) {
                (0, Some(Err(ParseError::Empty))) | (1, None) => {}
                (2, Some(Ok(mail))) => {
                    assert_eq!(mail.mail.message_id, format!("m{uid}@x.example"))
                }
                (_, other) => panic!("message {uid}: {other:?}"),
            }
        }
    }

    /// A plain mail from `from`, answering `in_reply_to` if given.
    fn mail_from(from: &str, id: &str, in_reply_to: Option<&str>) -> RawMessage {
        let threading = in_reply_to
            .map(|r| format!("In-Reply-To: <{r}>\r\nReferences: <{r}>\r\n"))
            .unwrap_or_default();
        RawMessage::full(
            format!(
                "From: <{from}>\r\nTo: <complaints@corp.example>\r\nMessage-ID: <{id}>\r\n\
                 {threading}Subject: 停气\r\n\r\n小区停气了，请尽快处理。\r\n"
            )
            .into_bytes(),
        )
    }

    /// The acknowledgement allowance counts the acknowledgements of the
    /// pending batch and, once a reply to a new case made the batch commit
    /// early, those committed: each exactly once.
    #[test]
    fn the_acknowledgement_allowance_counts_the_batch_and_what_it_committed_once() {
        use crate::clock::ManualClock;
        use crate::engine::EngineSettings;

        let dir = tempfile::tempdir().expect("a temporary directory");
        let settings = EngineSettings {
            rules_dir: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"),
            complaint_address: "complaints@corp.example".into(),
            sender_address: "complaints@corp.example".into(),
            own_addresses: Vec::new(),
            reply_secret: crate::mail::token::ReplySecret::new(
                b"ingest-test-secret-0123456789".to_vec(),
            )
            .expect("a secret"),
            token_valid_days: 90,
            message_id_host: "corp.example".into(),
            acks_per_sender_per_hour: 3,
            case_prefix: "TS".into(),
            case_number_width: 6,
            store_cache_mb: crate::store::DEFAULT_CACHE_MB,
            time_zone: chrono_tz::Asia::Shanghai,
            max_message_bytes: 1024 * 1024,
            organisation: "Corp Gas".into(),
            reopen_window_days: 30,
            retention_days: crate::config::DEFAULT_RETENTION_DAYS,
        };
        let now = DateTime::parse_from_rfc3339("2026-11-24T10:00:00+08:00")
            .expect("a time")
            .with_timezone(&Utc);
        let clock = Arc::new(ManualClock::new(now));
        let engine =
            Engine::open(settings, &dir.path().join("store"), clock).expect("the engine opens");
        let zhao = "zhao@customers.example";
        let fetch = vec![
            (1, mail_from(zhao, "c1@customers.example", None)),
            (2, mail_from(zhao, "c2@customers.example", None)),
            (
                3,
                mail_from(zhao, "r1@customers.example", Some("c1@customers.example")),
            ),
            (4, mail_from(zhao, "c3@customers.example", None)),
            (5, mail_from(zhao, "c4@customers.example", None)),
        ];
        let report = engine
            .ingest("complaints", "own", 1, fetch)
            .expect("the fetch is ingested");
        assert_eq!(report.transactions, 2);
        let acknowledged: Vec<Option<bool>> = report
            .messages
            .iter()
            .map(|m| match m.outcome {
                Outcome::NewCase { acknowledged, .. } => Some(acknowledged),
                _ => None,
            })
            .collect();
        assert_eq!(
            acknowledged,
            [Some(true), Some(true), None, Some(true), Some(false)]
        );
    }

    #[test]
    fn the_header_section_ends_at_the_blank_line() {
        assert_eq!(header_section_len(b"A: 1\r\nB: 2\r\n\r\nbody"), 14);
        assert_eq!(header_section_len(b"A: 1\nB: 2\n\nbody"), 11);
        assert_eq!(header_section_len(b"A: 1\r\nB: 2"), 10);
        assert_eq!(header_section_len(b""), 0);
    }
}

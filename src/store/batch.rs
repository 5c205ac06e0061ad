//! Change sets and ingest batches: everything one message (or one timer,
//! or one mailbox fetch) changes, committed in ONE transaction over all trees.
//!
//! A [`ChangeSet`] is built outside the store with plain data (and pure
//! renderers for outgoing mail); [`Store::commit`] applies one or many of
//! them plus the mailbox checkpoint atomically. Case numbers, event sequence
//! numbers and outbox ids are allocated inside the transaction, so a number
//! exists exactly when the case that carries it was committed: no gaps, no
//! reuse. The transaction closure may run more than once; it does no I/O
//! besides reading and writing the trees.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Datelike, Utc};
use sha2::{Digest, Sha256};

use super::engine_ops::{self, ExtraOp};
use super::error::StoreError;
use super::history::PendingCases;
use super::keys;
use super::outbox::{
    encode_record, mail_identity, message_known, outbox_id_in_message_id, put_encoded_entry,
    queued_entry, MailDraft,
};
use super::prerender::{
    prepared_for, prepared_message_id, PreparedMail, Prerendered, PrerenderedMails, SetAhead,
};
use super::records::{
    normalize_message_id, AttachmentRecord, Checkpoint, MessageRecord, QuarantineRecord, Timer,
    TimerSlot,
};
use super::trees::{abort, encode, OrAbort, TreeId, Tx, TxResult};
use super::{Store, StoreSettings};
use crate::case::{subject_fingerprint, Case, CaseId, Event, EventKind, FieldValue};

/// Handles of new cases are unique in the process, so a change set can
/// refer to a case created by an earlier change set of the same batch.
static NEXT_NEW_CASE: AtomicU64 = AtomicU64::new(1);

/// A case created by a change set, before it has a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NewCaseKey(u64);

/// A case a change refers to: one already stored, or one created earlier in
/// the same batch (its number is known only after the commit).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CaseRef {
    New(NewCaseKey),
    Existing(CaseId),
}

impl From<CaseId> for CaseRef {
    fn from(id: CaseId) -> Self {
        CaseRef::Existing(id)
    }
}

impl From<&CaseId> for CaseRef {
    fn from(id: &CaseId) -> Self {
        CaseRef::Existing(id.clone())
    }
}

/// What becomes of the message a change set ingests.
#[derive(Debug, Clone)]
enum Disposition {
    Case(CaseRef),
    Discarded(String),
    Quarantined,
}

#[derive(Debug, Clone)]
struct IncomingMessage {
    message_id: String,
    received_at: DateTime<Utc>,
    disposition: Option<Disposition>,
}

#[derive(Debug, Clone)]
enum TimerOp {
    Add {
        case: CaseRef,
        deadline: String,
        slot: TimerSlot,
    },
    Remove(Timer),
    ReplaceClock {
        case: CaseRef,
        deadline: String,
        slots: Vec<TimerSlot>,
    },
}

#[derive(Debug, Clone)]
struct AttachmentOp {
    case: CaseRef,
    record: AttachmentRecord,
    bytes: Vec<u8>,
}

#[derive(Debug, Clone)]
struct QuarantineOp {
    record: QuarantineRecord,
    raw: Vec<u8>,
}

/// Everything one message (or one timer firing, or one command) changes.
///
/// Build it, then hand it to [`Store::apply`], [`Store::ingest`] or, inside
/// an [`IngestBatch`], to [`Store::commit`]. Operations are applied in this
/// order: Message-ID de-duplication, new cases, case updates, events, timer
/// changes, queued mails (each with its `MailQueued` event, preceded by a
/// `Note` when the renderer reports that the template failed), attachments,
/// acknowledgement counters, quarantine, the Message-ID record.
#[derive(Debug, Clone, Default)]
pub struct ChangeSet {
    message: Option<IncomingMessage>,
    pub(super) new_cases: Vec<(NewCaseKey, Case)>,
    updates: Vec<(Case, Case)>,
    pub(super) events: Vec<(CaseRef, Event)>,
    timers: Vec<TimerOp>,
    pub(super) mails: Vec<(Option<CaseRef>, MailDraft)>,
    attachments: Vec<AttachmentOp>,
    acks: Vec<(String, i64)>,
    quarantine: Option<QuarantineOp>,
    /// Outbox failures and schedule runs (`engine_ops`).
    pub(super) extra: Vec<ExtraOp>,
}

impl ChangeSet {
    /// Changes not tied to an incoming message (a timer, a command, a send).
    pub fn new() -> Self {
        ChangeSet::default()
    }

    /// Changes caused by ingesting the message `message_id`. If the store
    /// already knows that Message-ID when the change set is committed, the
    /// whole change set is skipped as a duplicate. The message must be given
    /// a disposition: [`link_message`](Self::link_message),
    /// [`discard_message`](Self::discard_message) or
    /// [`quarantine`](Self::quarantine).
    pub fn for_message(message_id: &str, received_at: DateTime<Utc>) -> Result<Self, StoreError> {
        let message_id = normalize_message_id(message_id);
        if message_id.is_empty() {
            return Err(StoreError::InvalidBatch(
                "empty Message-ID (use a content hash for mail without one)".into(),
            ));
        }
        Ok(ChangeSet {
            message: Some(IncomingMessage {
                message_id,
                received_at,
                disposition: None,
            }),
            ..ChangeSet::default()
        })
    }

    /// The normalised Message-ID this change set ingests, if any.
    pub fn message_id(&self) -> Option<&str> {
        self.message.as_ref().map(|m| m.message_id.as_str())
    }

    /// A new case; the store gives it its number on commit (the draft's
    /// `id` is replaced).
    pub fn new_case(&mut self, draft: Case) -> Result<CaseRef, StoreError> {
        check_storable(&draft)?;
        let key = NewCaseKey(NEXT_NEW_CASE.fetch_add(1, Ordering::Relaxed));
        self.new_cases.push((key, draft));
        Ok(CaseRef::New(key))
    }

    /// Replaces a stored case. `base` is the case as the caller read it; if
    /// the stored case differs by commit time, the whole commit fails with
    /// [`StoreError::Conflict`] and nothing is written.
    pub fn update_case(&mut self, base: &Case, updated: Case) -> Result<CaseRef, StoreError> {
        if base.id != updated.id {
            return Err(StoreError::InvalidBatch(format!(
                "an update may not change the case number ({} → {})",
                base.id, updated.id
            )));
        }
        check_storable(&updated)?;
        let id = updated.id.clone();
        self.updates.push((base.clone(), updated));
        Ok(CaseRef::Existing(id))
    }

    /// Appends an event to the case's log.
    pub fn append_event(&mut self, case: &CaseRef, event: Event) {
        self.events.push((case.clone(), event));
    }

    /// Records the ingested message as a mail of `case`.
    pub fn link_message(&mut self, case: &CaseRef) -> Result<(), StoreError> {
        self.set_disposition(Disposition::Case(case.clone()))
    }

    /// Records the ingested message as seen but belonging to no case.
    pub fn discard_message(&mut self, reason: &str) -> Result<(), StoreError> {
        self.set_disposition(Disposition::Discarded(reason.to_owned()))
    }

    fn set_disposition(&mut self, disposition: Disposition) -> Result<(), StoreError> {
        match &mut self.message {
            Some(message) => {
                message.disposition = Some(disposition);
                Ok(())
            }
            None => Err(StoreError::InvalidBatch(
                "a change set without a message cannot link or discard one".into(),
            )),
        }
    }

    /// Adds a timer for an escalation step of a deadline clock.
    pub fn add_timer(&mut self, case: &CaseRef, deadline: &str, step: usize, due: DateTime<Utc>) {
        self.timers.push(TimerOp::Add {
            case: case.clone(),
            deadline: deadline.to_owned(),
            slot: TimerSlot { due, step },
        });
    }

    /// Removes a timer (after it fired); removing an absent timer is no error.
    pub fn remove_timer(&mut self, timer: &Timer) {
        self.timers.push(TimerOp::Remove(timer.clone()));
    }

    /// Replaces all timers of one clock of a case (an empty list removes
    /// them): for a clock that was started, paused, resumed or stopped.
    pub fn replace_clock_timers(
        &mut self,
        case: &CaseRef,
        deadline: &str,
        timers: Vec<(usize, DateTime<Utc>)>,
    ) {
        let mut slots: Vec<TimerSlot> = timers
            .into_iter()
            .map(|(step, due)| TimerSlot { due, step })
            .collect();
        sort_slots(&mut slots);
        self.timers.push(TimerOp::ReplaceClock {
            case: case.clone(),
            deadline: deadline.to_owned(),
            slots,
        });
    }

    /// Queues an outgoing mail about `case`; the store gives it its id and
    /// sequence number, renders it, records its Message-ID and appends a
    /// `MailQueued` event (and before it the renderer's
    /// [`template_failure`](super::RenderedMail::template_failure) note, if any).
    pub fn queue_mail(&mut self, case: &CaseRef, draft: MailDraft) -> Result<(), StoreError> {
        check_draft(&draft)?;
        self.mails.push((Some(case.clone()), draft));
        Ok(())
    }

    /// Queues an outgoing mail that belongs to no case (a digest, a report).
    pub fn queue_mail_without_case(&mut self, draft: MailDraft) -> Result<(), StoreError> {
        check_draft(&draft)?;
        self.mails.push((None, draft));
        Ok(())
    }

    /// Stores an attachment of a case under the SHA-256 of its bytes and
    /// returns its record. Identical bytes are stored once.
    pub fn store_attachment(
        &mut self,
        case: &CaseRef,
        name: &str,
        content_type: &str,
        bytes: Vec<u8>,
    ) -> AttachmentRecord {
        let record = AttachmentRecord {
            sha256: hex::encode(Sha256::digest(&bytes)),
            name: name.to_owned(),
            content_type: content_type.to_owned(),
            size: bytes.len() as u64,
            message_id: self.message_id().map(str::to_owned),
        };
        self.attachments.push(AttachmentOp {
            case: case.clone(),
            record: record.clone(),
            bytes,
        });
        record
    }

    /// Counts one acknowledgement sent to `sender` in the hour of `at`.
    pub fn count_ack(&mut self, sender: &str, at: DateTime<Utc>) {
        self.acks
            .push((ack_counter_sender(sender), keys::hour_bucket(at)));
    }

    /// Quarantines a mail that could not be processed, with its raw bytes
    /// (or as much of them as the caller keeps). If the change set ingests a
    /// message, its Message-ID is recorded as quarantined.
    pub fn quarantine(&mut self, record: QuarantineRecord, raw: Vec<u8>) -> Result<(), StoreError> {
        if self.quarantine.is_some() {
            return Err(StoreError::InvalidBatch(
                "a change set quarantines at most one mail".into(),
            ));
        }
        self.quarantine = Some(QuarantineOp { record, raw });
        if self.message.is_some() {
            self.set_disposition(Disposition::Quarantined)?;
        }
        Ok(())
    }

    /// The new cases of this change set, with their handles.
    pub fn new_cases(&self) -> impl Iterator<Item = (NewCaseKey, &Case)> {
        self.new_cases.iter().map(|(k, c)| (*k, c))
    }

    /// The updated cases of this change set, as they will be stored.
    pub fn updated_cases(&self) -> impl Iterator<Item = &Case> {
        self.updates.iter().map(|(_, updated)| updated)
    }

    pub(super) fn check(&self) -> Result<(), StoreError> {
        match &self.message {
            Some(m) if m.disposition.is_none() => Err(StoreError::InvalidBatch(format!(
                "message {} was neither linked to a case, discarded nor quarantined",
                m.message_id
            ))),
            _ => Ok(()),
        }
    }
}

/// Numbers that serde_json cannot store would come back as something else;
/// refuse them up front.
fn check_storable(case: &Case) -> Result<(), StoreError> {
    for (name, value) in &case.fields {
        if let FieldValue::Number(n) = value {
            if !n.is_finite() {
                return Err(StoreError::InvalidBatch(format!(
                    "case {}: field `{name}` is {n}, which cannot be stored",
                    case.id
                )));
            }
        }
    }
    Ok(())
}

/// The sender as acknowledgement counters are kept for it: trimmed and
/// lower-cased, so `A@X.example ` and `a@x.example` share one allowance.
pub fn ack_counter_sender(sender: &str) -> String {
    sender.trim().to_lowercase()
}

fn check_draft(draft: &MailDraft) -> Result<(), StoreError> {
    if draft.purpose.trim().is_empty() {
        return Err(StoreError::InvalidBatch("a mail needs a purpose".into()));
    }
    if draft.recipients.is_empty() {
        return Err(StoreError::InvalidBatch(format!(
            "mail `{}` has no recipients",
            draft.purpose
        )));
    }
    Ok(())
}

fn sort_slots(slots: &mut Vec<TimerSlot>) {
    slots.sort_by_key(|s| (s.due, s.step));
    slots.dedup();
}

/// Several change sets (typically the messages of one mailbox fetch) and the
/// mailbox checkpoint, committed in one transaction.
#[derive(Debug, Clone, Default)]
pub struct IngestBatch {
    pub(super) checkpoint: Option<(String, Checkpoint)>,
    /// Only [`IngestBatch::push`] adds to it: it keeps the pending index.
    pub(super) changes: Vec<ChangeSet>,
    /// The pending new cases by history group, kept as change sets are
    /// pushed, so history questions do not walk the whole batch.
    pub(super) pending: PendingCases,
}

impl IngestBatch {
    pub fn new() -> Self {
        IngestBatch::default()
    }

    /// Sets the checkpoint the commit advances the mailbox to (it never
    /// moves back within one UIDVALIDITY). The last call wins.
    pub fn advance_checkpoint(&mut self, mailbox: &str, checkpoint: Checkpoint) {
        self.checkpoint = Some((mailbox.to_owned(), checkpoint));
    }

    pub fn push(&mut self, changes: ChangeSet) {
        self.pending.add(self.changes.len(), &changes);
        self.changes.push(changes);
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.checkpoint.is_none()
    }

    pub fn changes(&self) -> &[ChangeSet] {
        &self.changes
    }

    /// The case an earlier message of this batch linked `message_id` to,
    /// for threading a reply that arrives in the same fetch.
    pub fn pending_case_for_message(&self, message_id: &str) -> Option<CaseRef> {
        let wanted = normalize_message_id(message_id);
        self.changes.iter().find_map(|c| match &c.message {
            Some(IncomingMessage {
                message_id,
                disposition: Some(Disposition::Case(case)),
                ..
            }) if *message_id == wanted => Some(case.clone()),
            _ => None,
        })
    }

    /// Whether an earlier change set of this batch ingests `message_id`.
    pub fn contains_message(&self, message_id: &str) -> bool {
        let wanted = normalize_message_id(message_id);
        self.changes
            .iter()
            .any(|c| c.message_id() == Some(wanted.as_str()))
    }

    /// Acknowledgements to `sender` this batch counts in the hour of `at`,
    /// to add to [`Store::acks_in_hour`] for rate limiting.
    pub fn pending_acks(&self, sender: &str, at: DateTime<Utc>) -> u64 {
        let sender = ack_counter_sender(sender);
        let bucket = keys::hour_bucket(at);
        self.changes
            .iter()
            .flat_map(|c| &c.acks)
            .filter(|(s, b)| *s == sender && *b == bucket)
            .count() as u64
    }
}

/// What a commit did, per change set in batch order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommitReport {
    pub outcomes: Vec<ChangeOutcome>,
}

impl CommitReport {
    /// The number a case got, for a handle returned by [`ChangeSet::new_case`].
    pub fn case_id(&self, case: &CaseRef) -> Option<CaseId> {
        self.outcomes.iter().find_map(|o| o.case_id(case))
    }
}

/// What happened to one change set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeOutcome {
    Applied(Applied),
    /// Its Message-ID was already known: nothing of it was applied.
    Duplicate {
        message_id: String,
    },
}

impl ChangeOutcome {
    pub fn is_duplicate(&self) -> bool {
        matches!(self, ChangeOutcome::Duplicate { .. })
    }

    pub fn applied(&self) -> Option<&Applied> {
        match self {
            ChangeOutcome::Applied(a) => Some(a),
            ChangeOutcome::Duplicate { .. } => None,
        }
    }

    /// The number of a case this change set refers to.
    pub fn case_id(&self, case: &CaseRef) -> Option<CaseId> {
        match case {
            CaseRef::Existing(id) => Some(id.clone()),
            CaseRef::New(key) => self
                .applied()?
                .new_cases
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, id)| id.clone()),
        }
    }
}

/// What an applied change set created.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Applied {
    pub new_cases: Vec<(NewCaseKey, CaseId)>,
    pub mails: Vec<QueuedMail>,
    pub quarantine_id: Option<u64>,
}

/// A mail a commit queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMail {
    pub outbox_id: String,
    /// Without angle brackets.
    pub message_id: String,
    pub case: Option<CaseId>,
    pub purpose: String,
    /// The renderer's note that the template failed and a plain text was
    /// queued instead (already appended to the case's log).
    pub template_failure: Option<String>,
}

impl Store {
    /// Commits a batch atomically: all its change sets and the checkpoint,
    /// or nothing. Change sets whose Message-ID is already known are skipped
    /// and reported as duplicates; any other failure (a conflict, an unknown
    /// case, a renderer error) aborts the whole batch. Call
    /// [`flush`](Store::flush) / [`flush_async`](Store::flush_async) before
    /// telling the IMAP server the messages are done.
    pub fn commit(&self, batch: &IngestBatch) -> Result<CommitReport, StoreError> {
        let changes: Vec<&ChangeSet> = batch.changes.iter().collect();
        let checkpoint = batch.checkpoint.as_ref().map(|(m, c)| (m.as_str(), *c));
        self.commit_changes(checkpoint, &changes)
    }

    /// Commits one change set without a checkpoint (timers, commands).
    pub fn apply(&self, changes: &ChangeSet) -> Result<ChangeOutcome, StoreError> {
        self.commit_one(None, changes)
    }

    /// Commits one ingested message together with its mailbox checkpoint.
    pub fn ingest(
        &self,
        mailbox: &str,
        checkpoint: Checkpoint,
        changes: &ChangeSet,
    ) -> Result<ChangeOutcome, StoreError> {
        self.commit_one(Some((mailbox, checkpoint)), changes)
    }

    fn commit_one(
        &self,
        checkpoint: Option<(&str, Checkpoint)>,
        changes: &ChangeSet,
    ) -> Result<ChangeOutcome, StoreError> {
        let mut report = self.commit_changes(checkpoint, &[changes])?;
        report.outcomes.pop().ok_or_else(|| {
            StoreError::InvalidBatch("a commit of one change set reported nothing".into())
        })
    }

    fn commit_changes(
        &self,
        checkpoint: Option<(&str, Checkpoint)>,
        changes: &[&ChangeSet],
    ) -> Result<CommitReport, StoreError> {
        for change_set in changes {
            change_set.check()?;
        }
        let prerendered = self.prerender(changes);
        self.commit_prerendered(checkpoint, changes, &prerendered)
    }

    /// Commits change sets whose mails were (perhaps) rendered ahead.
    pub(super) fn commit_prerendered(
        &self,
        checkpoint: Option<(&str, Checkpoint)>,
        changes: &[&ChangeSet],
        prerendered: &PrerenderedMails,
    ) -> Result<CommitReport, StoreError> {
        let settings = self.settings();
        let report = self.transact(|tx| {
            let mut new_ids = HashMap::new();
            let mut outcomes = Vec::with_capacity(changes.len());
            for (index, change_set) in changes.iter().enumerate() {
                let prepared = prerendered.get(index);
                outcomes.push(apply_changes(
                    tx,
                    settings,
                    change_set,
                    prepared,
                    &mut new_ids,
                )?);
            }
            if let Some((mailbox, checkpoint)) = checkpoint {
                let key = mailbox.as_bytes().to_vec();
                let current: Option<Checkpoint> = tx.get_json(TreeId::Checkpoints, &key)?;
                let next = current.map_or(checkpoint, |c| c.advanced_to(checkpoint));
                tx.put_json(TreeId::Checkpoints, key, &next)?;
            }
            Ok(CommitReport { outcomes })
        })?;
        log_template_failures(&report);
        Ok(report)
    }
}

/// Logs each committed mail whose template failed. This happens after the
/// transaction, which sled may run more than once, so each is logged once.
fn log_template_failures(report: &CommitReport) {
    let mails = report
        .outcomes
        .iter()
        .filter_map(ChangeOutcome::applied)
        .flat_map(|applied| &applied.mails);
    for mail in mails {
        if let Some(note) = &mail.template_failure {
            tracing::error!(outbox_id = %mail.outbox_id, "{note}");
        }
    }
}

/// Resolves case references inside one transaction, checking once per
/// change set that referenced stored cases exist.
struct Resolver<'m> {
    new_ids: &'m HashMap<NewCaseKey, CaseId>,
    known: HashSet<CaseId>,
}

impl Resolver<'_> {
    fn resolve(&mut self, tx: &Tx<'_>, case: &CaseRef) -> TxResult<CaseId> {
        match case {
            CaseRef::New(key) => match self.new_ids.get(key) {
                Some(id) => Ok(id.clone()),
                None => abort(StoreError::InvalidBatch(
                    "a change refers to a new case that no earlier change set of this batch \
                     created"
                        .into(),
                )),
            },
            CaseRef::Existing(id) => {
                if !self.known.contains(id) {
                    if !tx.contains(TreeId::Cases, &keys::case_key(id))? {
                        return abort(StoreError::UnknownCase(id.clone()));
                    }
                    self.known.insert(id.clone());
                }
                Ok(id.clone())
            }
        }
    }
}

fn apply_changes(
    tx: &Tx<'_>,
    settings: &StoreSettings,
    changes: &ChangeSet,
    prepared: Option<&SetAhead>,
    new_ids: &mut HashMap<NewCaseKey, CaseId>,
) -> TxResult<ChangeOutcome> {
    if let Some(message) = &changes.message {
        if message_known(tx, &message.message_id)? {
            return Ok(ChangeOutcome::Duplicate {
                message_id: message.message_id.clone(),
            });
        }
    }
    let mut applied = Applied::default();

    let encoded_cases = prepared.and_then(SetAhead::encoded_cases);
    for (index, (key, draft)) in changes.new_cases.iter().enumerate() {
        let id = allocate_case_number(tx, settings, draft.created_at)?;
        let mut case = draft.clone();
        case.id = id.clone();
        // The case's JSON encoded ahead for the number it was foreseen to get.
        match encoded_cases
            .and_then(|cases| cases.get(index))
            .filter(|(foreseen, _)| *foreseen == id)
        {
            Some((_, json)) => write_encoded_case(tx, None, &case, json.clone())?,
            None => write_case(tx, None, &case)?,
        }
        new_ids.insert(*key, id.clone());
        applied.new_cases.push((*key, id));
    }
    let mut resolver = Resolver {
        new_ids,
        known: HashSet::new(),
    };

    for (base, updated) in &changes.updates {
        let stored: Option<Case> = tx.get_json(TreeId::Cases, &keys::case_key(&base.id))?;
        match stored {
            None => return abort(StoreError::UnknownCase(base.id.clone())),
            Some(stored) if stored != *base => return abort(StoreError::Conflict(base.id.clone())),
            Some(stored) => write_case(tx, Some(&stored), updated)?,
        }
    }

    let encoded = prepared.and_then(|p| p.encoded_events(changes.events.len()));
    for (index, (case, event)) in changes.events.iter().enumerate() {
        let id = resolver.resolve(tx, case)?;
        match encoded.and_then(|events| events.get(index)) {
            Some(json) => tx.append_encoded_event(&id, Arc::clone(json)),
            None => append_event(tx, &id, event)?,
        }
    }

    for op in &changes.timers {
        apply_timer_op(tx, &mut resolver, op)?;
    }

    for (index, (case, draft)) in changes.mails.iter().enumerate() {
        let id = match case {
            Some(case) => Some(resolver.resolve(tx, case)?),
            None => None,
        };
        let prepared = prepared.and_then(|p| p.mail(index));
        applied
            .mails
            .push(queue_mail(tx, id.as_ref(), draft, prepared)?);
    }

    for op in &changes.attachments {
        let id = resolver.resolve(tx, &op.case)?;
        let hash_key = op.record.sha256.as_bytes().to_vec();
        if !tx.contains(TreeId::Attachments, &hash_key)? {
            tx.put(TreeId::Attachments, hash_key, op.bytes.as_slice())?;
        }
        tx.put_attachment_ref(&id, &op.record.sha256, &op.record)?;
    }

    for (sender, bucket) in &changes.acks {
        let key = keys::ack_key(sender, *bucket);
        let count = tx.counter(TreeId::AckCounters, &key)?;
        tx.set_counter(TreeId::AckCounters, key, count + 1)?;
    }

    for op in &changes.extra {
        engine_ops::apply(tx, op)?;
    }

    if let Some(op) = &changes.quarantine {
        let id = tx.tree(TreeId::Quarantine).generate_id()?;
        let key = id.to_be_bytes().to_vec();
        tx.put_json(TreeId::Quarantine, key.clone(), &op.record)?;
        tx.put(TreeId::QuarantineRaw, key, op.raw.as_slice())?;
        applied.quarantine_id = Some(id);
    }

    if let Some(message) = &changes.message {
        let at = message.received_at;
        let record = match &message.disposition {
            Some(Disposition::Case(case)) => MessageRecord::Incoming {
                case: resolver.resolve(tx, case)?,
                at,
            },
            Some(Disposition::Discarded(reason)) => MessageRecord::Discarded {
                reason: reason.clone(),
                at,
            },
            Some(Disposition::Quarantined) => match applied.quarantine_id {
                Some(quarantine_id) => MessageRecord::Quarantined { quarantine_id, at },
                None => {
                    return abort(StoreError::InvalidBatch(
                        "message marked quarantined without a quarantine record".into(),
                    ))
                }
            },
            None => {
                return abort(StoreError::InvalidBatch(format!(
                    "message {} has no disposition",
                    message.message_id
                )))
            }
        };
        tx.put_json(
            TreeId::MessageIds,
            message.message_id.as_bytes().to_vec(),
            &record,
        )?;
    }
    Ok(ChangeOutcome::Applied(applied))
}

/// Gives a new case the next number of its year: `PREFIX-YYYY-NNNNNN`.
fn allocate_case_number(
    tx: &Tx<'_>,
    settings: &StoreSettings,
    created_at: DateTime<Utc>,
) -> TxResult<CaseId> {
    let year = created_at.with_timezone(&settings.case_number_tz).year();
    let key = keys::case_sequence_key(&settings.case_prefix, year);
    let number = tx.counter(TreeId::Counters, &key)? + 1;
    tx.set_counter(TreeId::Counters, key, number)?;
    let id = CaseId(format!(
        "{}-{}-{:0width$}",
        settings.case_prefix,
        year,
        number,
        width = settings.case_number_width
    ));
    if tx.contains(TreeId::Cases, &keys::case_key(&id))? {
        return abort(StoreError::corrupt(
            TreeId::Counters.name(),
            id.0.as_bytes(),
            "the next case number is already in use",
        ));
    }
    tx.mark_fresh(&id);
    Ok(id)
}

/// The secondary index entries of a case: (tree, key); the value is always
/// the sender's address.
pub(crate) fn index_entries(case: &Case) -> Vec<(TreeId, Vec<u8>)> {
    let at = case.created_at;
    let mut out = vec![(
        TreeId::IdxSender,
        keys::index_key(&case.sender.email, at, &case.id),
    )];
    if let Some(category) = category_of(case) {
        out.push((TreeId::IdxCategory, keys::index_key(category, at, &case.id)));
    }
    let fingerprint = subject_fingerprint(&case.subject);
    if !fingerprint.is_empty() {
        out.push((
            TreeId::IdxSubject,
            keys::index_key(&fingerprint, at, &case.id),
        ));
    }
    for tag in &case.tags {
        out.push((TreeId::IdxTag, keys::index_key(tag, at, &case.id)));
    }
    out
}

/// The category a case is indexed under.
pub(crate) fn category_of(case: &Case) -> Option<&str> {
    match case.fields.get("category") {
        Some(FieldValue::Name(s) | FieldValue::Text(s)) => Some(s),
        _ => None,
    }
}

/// Writes a case and brings its index entries in line with it.
fn write_case(tx: &Tx<'_>, old: Option<&Case>, case: &Case) -> TxResult<()> {
    let json = encode(TreeId::Cases.name(), case).or_abort()?;
    write_encoded_case(tx, old, case, json.into())
}

/// [`write_case`] with the case's JSON already encoded.
fn write_encoded_case(
    tx: &Tx<'_>,
    old: Option<&Case>,
    case: &Case,
    json: sled::IVec,
) -> TxResult<()> {
    let new_entries = index_entries(case);
    let old_entries = old.map(index_entries).unwrap_or_default();
    for entry in &old_entries {
        if !new_entries.contains(entry) {
            tx.remove(entry.0, entry.1.clone())?;
        }
    }
    // An entry's value is the sender: an update that keeps the sender
    // writes only the entries that are new.
    let same_sender = old.is_some_and(|old| old.sender.email == case.sender.email);
    for (tree, key) in new_entries {
        if !(same_sender && old_entries.iter().any(|(t, k)| *t == tree && *k == key)) {
            tx.put(tree, key, case.sender.email.as_bytes())?;
        }
    }
    tx.put(TreeId::Cases, keys::case_key(&case.id), json)
}

/// Appends an event to a case's log; the transaction writes each case's
/// appended events as one record when its body is done.
pub(crate) fn append_event(tx: &Tx<'_>, case: &CaseId, event: &Event) -> TxResult<()> {
    tx.append_event(case, event);
    Ok(())
}

fn timer_key(case: &CaseId, deadline: &str, slot: &TimerSlot) -> Vec<u8> {
    keys::timer_key(slot.due, case, deadline, slot.step as u64)
}

/// Keeps the `timers` index at one key per clock, its earliest slot: when a
/// change moves the earliest slot, the old one's key goes and the new one's
/// comes. The later slots are only in the clock's list; `due_timers` reads
/// them from there, so a clock's index key costs one write however many
/// escalation steps it has.
fn reindex_clock(
    tx: &Tx<'_>,
    case: &CaseId,
    deadline: &str,
    earliest_before: Option<TimerSlot>,
    earliest_after: Option<TimerSlot>,
) -> TxResult<()> {
    if earliest_before == earliest_after {
        return Ok(());
    }
    if let Some(old) = earliest_before {
        tx.remove(TreeId::Timers, timer_key(case, deadline, &old))?;
    }
    if let Some(new) = earliest_after {
        tx.put(TreeId::Timers, timer_key(case, deadline, &new), Vec::new())?;
    }
    Ok(())
}

fn apply_timer_op(tx: &Tx<'_>, resolver: &mut Resolver<'_>, op: &TimerOp) -> TxResult<()> {
    match op {
        TimerOp::Add {
            case,
            deadline,
            slot,
        } => {
            let id = resolver.resolve(tx, case)?;
            let stored = tx.clock_slots(&id, deadline)?;
            let mut slots = stored.clone();
            slots.push(*slot);
            sort_slots(&mut slots);
            rewrite_clock(tx, &id, deadline, &stored, &slots)
        }
        TimerOp::Remove(timer) => {
            let slot = TimerSlot {
                due: timer.due,
                step: timer.step,
            };
            let stored = tx.clock_slots(&timer.case, &timer.deadline)?;
            let mut slots = stored.clone();
            slots.retain(|s| *s != slot);
            // The fired timer's own key goes whether or not it was the
            // indexed one, so no stray key can fire again.
            if stored.first() != Some(&slot) {
                tx.remove(
                    TreeId::Timers,
                    timer_key(&timer.case, &timer.deadline, &slot),
                )?;
            }
            rewrite_clock(tx, &timer.case, &timer.deadline, &stored, &slots)
        }
        TimerOp::ReplaceClock {
            case,
            deadline,
            slots,
        } => {
            let id = resolver.resolve(tx, case)?;
            let stored = tx.clock_slots(&id, deadline)?;
            rewrite_clock(tx, &id, deadline, &stored, slots)
        }
    }
}

/// Replaces a clock's slot list `stored` with `slots`, moving its index
/// key along.
fn rewrite_clock(
    tx: &Tx<'_>,
    case: &CaseId,
    deadline: &str,
    stored: &[TimerSlot],
    slots: &[TimerSlot],
) -> TxResult<()> {
    reindex_clock(
        tx,
        case,
        deadline,
        stored.first().copied(),
        slots.first().copied(),
    )?;
    tx.put_clock_slots(case, deadline, slots)
}

fn queue_mail(
    tx: &Tx<'_>,
    case: Option<&CaseId>,
    draft: &MailDraft,
    prerendered: Option<&Prerendered>,
) -> TxResult<QueuedMail> {
    let sequence = match case {
        Some(case) => tx.update_case_counters(case, |counters| {
            let last = counters.mails.entry(draft.purpose.clone()).or_insert(0);
            *last += 1;
            *last
        })?,
        None => {
            let seq_key = keys::mail_sequence_key(None, &draft.purpose);
            let sequence = tx.counter(TreeId::Counters, &seq_key)? + 1;
            tx.set_counter(TreeId::Counters, seq_key, sequence)?;
            sequence
        }
    };
    let Ok(sequence) = u32::try_from(sequence) else {
        return abort(StoreError::InvalidBatch(format!(
            "more than {} mails of purpose `{}`",
            u32::MAX,
            draft.purpose
        )));
    };
    let identity = mail_identity(case, &draft.purpose, sequence);
    // A case created in this transaction has no outbox entries yet.
    let fresh = case.is_some_and(|case| tx.is_fresh(case));
    if !fresh && tx.contains(TreeId::Outbox, identity.outbox_id.as_bytes())? {
        return abort(StoreError::corrupt(
            TreeId::Outbox.name(),
            identity.outbox_id.as_bytes(),
            "the next outbox id is already in use",
        ));
    }
    let render_error = |reason: String| StoreError::Render {
        outbox_id: identity.outbox_id.clone(),
        reason,
    };
    // The mail rendered ahead for this very identity, else rendered now.
    let rendered = match prepared_for(prerendered, &identity) {
        Some(result) => result.clone(),
        None => (draft.render)(&identity).map(PreparedMail::from),
    }
    .map_err(render_error)
    .or_abort()?;
    let message_id = prepared_message_id(&rendered);
    if message_id.is_empty() {
        return abort(render_error("the rendered mail has no Message-ID".into()));
    }
    // The usual Message-ID of a new case's mail is unused: no entry has it
    // yet, and ingest never records a foreign mail under an id of our
    // domain (`Run::claims_our_message_id`).
    let usual_and_fresh =
        fresh && outbox_id_in_message_id(&message_id) == Some(&identity.outbox_id);
    if !usual_and_fresh && message_known(tx, &message_id)? {
        return abort(render_error(format!(
            "Message-ID <{message_id}> is already in use; Message-IDs must be unique per \
             (case, purpose, sequence)"
        )));
    }
    let entry = queued_entry(
        &identity,
        draft,
        message_id.clone(),
        rendered.subject.clone(),
    );
    // The record encoded ahead with the rendering is the encoding of this same entry.
    let record = match &rendered.record {
        Some(record) => record.clone(),
        None => encode_record(&entry, &rendered.bytes).or_abort()?.into(),
    };
    put_encoded_entry(tx, None, &entry, record)?;
    // A Message-ID of the usual form is answered from the outbox entry.
    if outbox_id_in_message_id(&message_id) != Some(entry.id.as_str()) {
        tx.put_json(
            TreeId::MessageIds,
            message_id.clone().into_bytes(),
            &MessageRecord::Outgoing {
                case: case.cloned(),
                outbox_id: entry.id.clone(),
                purpose: entry.purpose.clone(),
            },
        )?;
    }
    if let Some(case) = case {
        if let Some(note) = &rendered.template_failure {
            append_event(
                tx,
                case,
                &Event {
                    at: draft.at,
                    kind: EventKind::Note { text: note.clone() },
                },
            )?;
        }
        append_event(
            tx,
            case,
            &Event {
                at: draft.at,
                kind: EventKind::MailQueued {
                    outbox_id: entry.id.clone(),
                    purpose: entry.purpose.clone(),
                    to: entry.recipients.clone(),
                    subject: entry.subject.clone(),
                    template: entry.template.clone(),
                },
            },
        )?;
    }
    Ok(QueuedMail {
        outbox_id: entry.id,
        message_id,
        case: entry.case,
        purpose: entry.purpose,
        template_failure: rendered.template_failure,
    })
}

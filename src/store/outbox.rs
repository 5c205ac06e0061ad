//! The outbox: every mail the daemon sends, as a stored state machine.
//!
//! An entry is queued in the same transaction as the decision that caused
//! it, with a stable id per (case, purpose, sequence), the Message-ID the
//! renderer gave it and the full rendered message. The sender finds due entries through an index by
//! next-attempt time and reports each attempt back; every transition is a
//! transaction that also appends the case event (`MailSent` / `MailFailed`).
//!
//! ```text
//! Scheduled{next_attempt} ──► Sent{at} ──(late bounce)──► PermanentFailure
//!        │   ▲                   ▲
//!        ▼   │ (retry)           │
//! TemporaryFailure{attempts, last_error, next_attempt} ──► PermanentFailure{at, error}
//! ```
//!
//! Around each SMTP attempt, and after a crash:
//!
//! ```text
//! Scheduled / TemporaryFailure ──(attempt, before DATA)──► Sending{attempts, started_at, due}
//! Sending ──► Sent / TemporaryFailure / PermanentFailure    (the attempt's outcome)
//! Sending, found at start (in doubt) ──hold──► Held{at, attempts, reason} ──release──► Scheduled
//!                                    └─resend─► Scheduled / TemporaryFailure (same bytes)
//! ```
//!
//! The mails one transaction queues share one due index key (a due batch,
//! schema 5) until their first attempt ends; later due times have keys of
//! their own (see [`OutboxState::in_due_batch`]).
//!
//! `Sending` stays in the due index (at the time it was due), so the start-up
//! search for entries in doubt reads only what is pending; `Held` is out of
//! the due index and waits for an operator, listed in the `outbox_held`
//! index (schema 4), so listing held mail reads only held mail.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::batch::append_event;
use super::error::StoreError;
use super::keys;
use super::records::MessageRecord;
use super::trees::{abort, decode, encode, OrAbort, TreeId, Tx, TxResult};
use super::Store;
use crate::case::{CaseId, Event, EventKind};

/// Where an outbox entry is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum OutboxState {
    /// Waiting for its first attempt.
    Scheduled {
        #[serde(with = "crate::serde_time")]
        next_attempt: DateTime<Utc>,
        /// Found through the due index's key for the mails its transaction
        /// queued, not a key of its own (see [`OutboxState::in_due_batch`]).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        batched: bool,
    },
    /// Accepted by the SMTP server.
    Sent {
        #[serde(with = "crate::serde_time")]
        at: DateTime<Utc>,
    },
    /// The last attempt failed in a way worth retrying.
    TemporaryFailure {
        attempts: u32,
        last_error: String,
        #[serde(with = "crate::serde_time")]
        next_attempt: DateTime<Utc>,
    },
    /// Given up: rejected by the server, or bounced after it was sent.
    PermanentFailure {
        #[serde(with = "crate::serde_time")]
        at: DateTime<Utc>,
        error: String,
    },
    /// Handed to the SMTP server (recorded before DATA); the outcome is not
    /// recorded yet. Found at start, the entry is in doubt: the server may
    /// have accepted it.
    Sending {
        /// Failed attempts before this one.
        attempts: u32,
        #[serde(with = "crate::serde_time")]
        started_at: DateTime<Utc>,
        /// When it was due; it keeps this place in the due index.
        #[serde(with = "crate::serde_time")]
        due: DateTime<Utc>,
        /// Still found through its queueing transaction's batch key.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        batched: bool,
    },
    /// In doubt after a crash and held for an operator (`smtp.in_doubt =
    /// "hold"`): never sent again until released.
    Held {
        #[serde(with = "crate::serde_time")]
        at: DateTime<Utc>,
        attempts: u32,
        reason: String,
    },
}

impl OutboxState {
    pub fn name(&self) -> &'static str {
        match self {
            OutboxState::Scheduled { .. } => "scheduled",
            OutboxState::Sent { .. } => "sent",
            OutboxState::TemporaryFailure { .. } => "temporarily failed",
            OutboxState::PermanentFailure { .. } => "permanently failed",
            OutboxState::Sending { .. } => "sending",
            OutboxState::Held { .. } => "held",
        }
    }

    /// When the sender should try next; `None` once the entry is final.
    pub fn next_attempt(&self) -> Option<DateTime<Utc>> {
        match self {
            OutboxState::Scheduled { next_attempt, .. }
            | OutboxState::TemporaryFailure { next_attempt, .. } => Some(*next_attempt),
            OutboxState::Sending { due, .. } => Some(*due),
            OutboxState::Sent { .. }
            | OutboxState::PermanentFailure { .. }
            | OutboxState::Held { .. } => None,
        }
    }

    /// Whether the entry is found in the due index through the key of the
    /// transaction that queued it ([`keys::outbox_due_batch_key`]): from
    /// its queueing until its first attempt ends. A mail queued is due at
    /// once, and one key for all the mails of a transaction costs less than
    /// one each; every later due time (a retry, a requeue) has a key of its
    /// own, and an entry never goes back into its batch.
    pub fn in_due_batch(&self) -> bool {
        matches!(
            self,
            OutboxState::Scheduled { batched: true, .. }
                | OutboxState::Sending { batched: true, .. }
        )
    }

    /// Failed attempts so far.
    pub fn failed_attempts(&self) -> u32 {
        match self {
            OutboxState::TemporaryFailure { attempts, .. }
            | OutboxState::Sending { attempts, .. }
            | OutboxState::Held { attempts, .. } => *attempts,
            _ => 0,
        }
    }

    /// The state that sends the entry again at `at`, keeping its failed attempts.
    fn requeued(attempts: u32, reason: &str, at: DateTime<Utc>) -> OutboxState {
        if attempts == 0 {
            OutboxState::Scheduled {
                next_attempt: at,
                batched: false,
            }
        } else {
            OutboxState::TemporaryFailure {
                attempts,
                last_error: reason.to_owned(),
                next_attempt: at,
            }
        }
    }
}

/// One outgoing mail as stored (its bytes are kept beside it; see
/// [`Store::outbox_message`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// `CASE.PURPOSE.SEQUENCE` (`complaintd.PURPOSE.SEQUENCE` for mail of no
    /// case, such as digests), stable for the life of the entry.
    pub id: String,
    /// The case the mail is about; `None` for digests and reports.
    pub case: Option<CaseId>,
    pub purpose: String,
    pub sequence: u32,
    /// As the renderer put it in the message, without angle brackets.
    pub message_id: String,
    pub envelope_from: String,
    pub recipients: Vec<String>,
    pub subject: String,
    pub template: String,
    #[serde(with = "crate::serde_time")]
    pub queued_at: DateTime<Utc>,
    pub state: OutboxState,
}

/// Who a mail is, before it is rendered: the renderer builds the stable
/// Message-ID from these (`crate::mail::outbound::message_id(case, purpose,
/// sequence, host)`) and puts the case number in the subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailIdentity {
    pub case: Option<CaseId>,
    pub purpose: String,
    /// 1 for the first mail of this purpose for this case (or, without a
    /// case, of this purpose at all), then 2, 3, …
    pub sequence: u32,
    pub outbox_id: String,
}

/// A rendered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedMail {
    /// The Message-ID in the message's header (angle brackets optional):
    /// the store records it so replies and bounces thread to the case.
    pub message_id: String,
    pub subject: String,
    /// The complete RFC 5322 message, sent as it is on every attempt.
    pub bytes: Vec<u8>,
    /// Set when the mail's template failed and the renderer built a plain
    /// fallback text instead: the note for the case's log, naming the mail
    /// and the error. The commit appends it to the mail's case (in the same
    /// transaction as the mail) and logs it at ERROR.
    pub template_failure: Option<String>,
}

/// Renders a mail once its identity is known. It runs inside the store's
/// transaction, possibly more than once, so it must be pure: no I/O, no
/// store access, the same output for the same identity.
pub type Renderer = Arc<dyn Fn(&MailIdentity) -> Result<RenderedMail, String> + Send + Sync>;

/// A mail to queue, as given to [`super::ChangeSet::queue_mail`].
#[derive(Clone)]
pub struct MailDraft {
    /// What the mail is for (`ack`, `forward`, `remind`, …); part of its id.
    pub purpose: String,
    pub template: String,
    pub envelope_from: String,
    pub recipients: Vec<String>,
    /// When it is queued; also its first attempt time and the event's time.
    pub at: DateTime<Utc>,
    pub render: Renderer,
}

impl MailDraft {
    pub fn new(
        purpose: &str,
        template: &str,
        envelope_from: &str,
        recipients: Vec<String>,
        at: DateTime<Utc>,
        render: impl Fn(&MailIdentity) -> Result<RenderedMail, String> + Send + Sync + 'static,
    ) -> Self {
        MailDraft {
            purpose: purpose.to_owned(),
            template: template.to_owned(),
            envelope_from: envelope_from.to_owned(),
            recipients,
            at,
            render: Arc::new(render),
        }
    }
}

impl std::fmt::Debug for MailDraft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailDraft")
            .field("purpose", &self.purpose)
            .field("template", &self.template)
            .field("envelope_from", &self.envelope_from)
            .field("recipients", &self.recipients)
            .field("at", &self.at)
            .finish_non_exhaustive()
    }
}

/// A purpose as it appears in outbox ids and Message-IDs: letters, digits,
/// `-` and `_` kept, every other byte as `=XX`, so any purpose name (Chinese
/// deadline names included) gives a valid, unique Message-ID local part.
pub fn encode_purpose(purpose: &str) -> String {
    let mut out = String::with_capacity(purpose.len());
    for &b in purpose.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// Scope of outbox ids of mail that belongs to no case. Case numbers are
/// `PREFIX-YEAR-N`, so none is ever equal to it.
pub const NO_CASE_SCOPE: &str = "complaintd";

/// The identity of the `sequence`th mail of `purpose` for `case`.
pub fn mail_identity(case: Option<&CaseId>, purpose: &str, sequence: u32) -> MailIdentity {
    let scope = case.map_or(NO_CASE_SCOPE, |c| c.0.as_str());
    MailIdentity {
        case: case.cloned(),
        purpose: purpose.to_owned(),
        sequence,
        outbox_id: format!("{scope}.{}.{sequence}", encode_purpose(purpose)),
    }
}

/// What happened on a delivery attempt that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryFailure {
    /// Worth retrying at `next_attempt`.
    Temporary {
        error: String,
        next_attempt: DateTime<Utc>,
    },
    /// Not worth retrying (5xx, bounce).
    Permanent { error: String },
}

/// Writes an entry and keeps the due index in step with its state.
/// The outbox id an outgoing Message-ID names, when it has the form the
/// renderer gives our mail, `OUTBOX_ID@host`. Those Message-IDs are not
/// written to `message_ids` (one key fewer per queued mail): the outbox entry
/// of that id answers for them, if its recorded Message-ID is this one.
pub(crate) fn outbox_id_in_message_id(message_id: &str) -> Option<&str> {
    message_id
        .split_once('@')
        .map(|(local, _)| local)
        // Outbox ids end in `.SEQUENCE`; most other Message-IDs fail this cheap test.
        .filter(|local| {
            local.rsplit_once('.').is_some_and(|(_, sequence)| {
                !sequence.is_empty() && sequence.bytes().all(|b| b.is_ascii_digit())
            })
        })
}

/// What an outbox entry says about a Message-ID: our outgoing mail, when the
/// entry's Message-ID is that one.
pub(crate) fn outgoing_record(entry: OutboxEntry, message_id: &str) -> Option<MessageRecord> {
    (entry.message_id == message_id).then_some(MessageRecord::Outgoing {
        case: entry.case,
        outbox_id: entry.id,
        purpose: entry.purpose,
    })
}

/// Whether a Message-ID is known inside a transaction: indexed, or an
/// outgoing mail's that its outbox entry answers for.
pub(crate) fn message_known(tx: &Tx<'_>, message_id: &str) -> TxResult<bool> {
    if tx.contains(TreeId::MessageIds, message_id.as_bytes())? {
        return Ok(true);
    }
    let Some(outbox_id) = outbox_id_in_message_id(message_id) else {
        return Ok(false);
    };
    Ok(read_record(tx, outbox_id)?.is_some_and(|(entry, _)| entry.message_id == message_id))
}

/// An outbox record is the entry's JSON, a zero byte (which JSON text never
/// holds), then the mail's bytes exactly as queued (schema 3; before, the
/// bytes were a record of their own, one key more per mail).
pub(crate) fn encode_record(entry: &OutboxEntry, bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
    let mut record = encode(TreeId::Outbox.name(), entry)?;
    record.push(0);
    record.extend_from_slice(bytes);
    Ok(record)
}

/// Splits a stored outbox record into its entry and the mail's bytes.
pub(crate) fn split_record<'r>(
    key: &[u8],
    record: &'r [u8],
) -> Result<(OutboxEntry, &'r [u8]), StoreError> {
    let Some(end) = record.iter().position(|b| *b == 0) else {
        return Err(StoreError::corrupt(
            TreeId::Outbox.name(),
            key,
            "an outbox record without the mail's bytes",
        ));
    };
    let entry = decode(TreeId::Outbox, key, &record[..end])?;
    Ok((entry, &record[end + 1..]))
}

/// An outbox entry and its mail's bytes, read inside a transaction.
pub(crate) fn read_record(tx: &Tx<'_>, id: &str) -> TxResult<Option<(OutboxEntry, Vec<u8>)>> {
    match tx.get(TreeId::Outbox, id.as_bytes())? {
        None => Ok(None),
        Some(record) => split_record(id.as_bytes(), &record)
            .map(|(entry, bytes)| Some((entry, bytes.to_vec())))
            .or_abort(),
    }
}

/// The entry a queued mail gets: scheduled for the draft's time, with the
/// rendered mail's subject and (normalised) Message-ID.
pub(crate) fn queued_entry(
    identity: &MailIdentity,
    draft: &MailDraft,
    message_id: String,
    subject: String,
) -> OutboxEntry {
    OutboxEntry {
        id: identity.outbox_id.clone(),
        case: identity.case.clone(),
        purpose: draft.purpose.clone(),
        sequence: identity.sequence,
        message_id,
        envelope_from: draft.envelope_from.clone(),
        recipients: draft.recipients.clone(),
        subject,
        template: draft.template.clone(),
        queued_at: draft.at,
        state: OutboxState::Scheduled {
            next_attempt: draft.at,
            batched: true,
        },
    }
}

/// Writes an entry with its mail's bytes, moving its due-index key along.
pub(crate) fn put_entry(
    tx: &Tx<'_>,
    old: Option<&OutboxEntry>,
    entry: &OutboxEntry,
    bytes: &[u8],
) -> TxResult<()> {
    let record = encode_record(entry, bytes).or_abort()?;
    put_encoded_entry(tx, old, entry, record)
}

/// [`put_entry`] of a record already encoded ([`encode_record`] of `entry`).
pub(crate) fn put_encoded_entry(
    tx: &Tx<'_>,
    old: Option<&OutboxEntry>,
    entry: &OutboxEntry,
    record: impl Into<sled::IVec>,
) -> TxResult<()> {
    let was_batched = old.is_some_and(|o| o.state.in_due_batch());
    match (old, entry.state.next_attempt()) {
        // Queued now: its transaction's batch key finds it.
        (None, Some(due)) if entry.state.in_due_batch() => tx.queue_in_due_batch(due, &entry.id),
        // Its first attempt began: it stays where it was.
        (Some(_), _) if was_batched && entry.state.in_due_batch() => {}
        (_, due) => {
            debug_assert!(
                !entry.state.in_due_batch(),
                "only a new entry joins a due batch"
            );
            if was_batched {
                tx.add_due_delta(-1);
            } else if let Some(old_due) = old.and_then(|o| o.state.next_attempt()) {
                tx.remove(TreeId::OutboxDue, keys::outbox_due_key(old_due, &entry.id))?;
            }
            if let Some(due) = due {
                tx.put(
                    TreeId::OutboxDue,
                    keys::outbox_due_key(due, &entry.id),
                    Vec::new(),
                )?;
            }
        }
    }
    let was_held = old.is_some_and(|o| matches!(o.state, OutboxState::Held { .. }));
    let is_held = matches!(entry.state, OutboxState::Held { .. });
    if was_held && !is_held {
        tx.remove(TreeId::OutboxHeld, entry.id.as_bytes().to_vec())?;
    } else if is_held && !was_held {
        tx.put(TreeId::OutboxHeld, entry.id.as_bytes().to_vec(), Vec::new())?;
    }
    tx.put(TreeId::Outbox, entry.id.as_bytes().to_vec(), record)
}

/// Blanks the mails of `case` in the list of a due batch, so that a purged
/// case leaves no trace there, keeping every other mail's place (the
/// sender remembers places; see `Store::due_batch_members`); removes the key
/// once no mail is left in the list.
pub(crate) fn forget_case_in_due_batch(tx: &Tx<'_>, key: &[u8], case: &CaseId) -> TxResult<()> {
    let Some(ids) = tx.get_json::<Vec<String>>(TreeId::OutboxDue, key)? else {
        return Ok(());
    };
    // Case numbers contain no '.', so this prefix is exactly the case's mail.
    let prefix = format!("{}.", case.0);
    if !ids.iter().any(|id| id.starts_with(&prefix)) {
        return Ok(());
    }
    let ids: Vec<String> = ids
        .into_iter()
        .map(|id| {
            if id.starts_with(&prefix) {
                String::new()
            } else {
                id
            }
        })
        .collect();
    if ids.iter().all(String::is_empty) {
        tx.remove(TreeId::OutboxDue, key.to_vec())
    } else {
        tx.put_json(TreeId::OutboxDue, key.to_vec(), &ids)
    }
}

impl Store {
    /// Our outgoing mail with this Message-ID, answered from the outbox (see
    /// [`outbox_id_in_message_id`]).
    pub(crate) fn outgoing_message(
        &self,
        message_id: &str,
    ) -> Result<Option<MessageRecord>, StoreError> {
        let Some(outbox_id) = outbox_id_in_message_id(message_id) else {
            return Ok(None);
        };
        Ok(self
            .outbox_entry(outbox_id)?
            .and_then(|entry| outgoing_record(entry, message_id)))
    }

    /// One outbox entry.
    pub fn outbox_entry(&self, id: &str) -> Result<Option<OutboxEntry>, StoreError> {
        match self.tree(TreeId::Outbox).get(id.as_bytes())? {
            None => Ok(None),
            Some(record) => split_record(id.as_bytes(), &record).map(|(entry, _)| Some(entry)),
        }
    }

    /// The rendered bytes of an outbox entry, exactly as queued.
    pub fn outbox_message(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.tree(TreeId::Outbox).get(id.as_bytes())? {
            None => Ok(None),
            Some(record) => {
                split_record(id.as_bytes(), &record).map(|(_, bytes)| Some(bytes.to_vec()))
            }
        }
    }

    /// Entries whose next attempt is at or before `now`, earliest first, at
    /// most `limit`. Reads only the due index, never the whole outbox. A
    /// batch key whose mails have all left it is dropped on the way.
    pub fn due_outbox(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let end = keys::prefix_end(&keys::time_key(now));
        let due = self.tree(TreeId::OutboxDue);
        let range = match &end {
            Some(end) => due.range(..end.as_slice()),
            None => due.range::<&[u8], _>(..),
        };
        let mut out = Vec::new();
        let mut drained = Vec::new();
        for item in range {
            if out.len() >= limit {
                break;
            }
            let (key, value) = item?;
            if keys::is_outbox_due_batch_key(&key) {
                let room = limit - out.len();
                if self.due_batch_members(&key, &value, Some(room), &mut out)? {
                    drained.push(key);
                }
                continue;
            }
            let id = &key[keys::TIME_LEN..];
            match self.outbox_entry(&String::from_utf8_lossy(id))? {
                // A transition may commit between reading the index and the
                // entry; only entries still due are handed out.
                Some(entry) if entry.state.next_attempt().is_some_and(|t| t <= now) => {
                    out.push(entry)
                }
                Some(_) => {}
                None => {
                    return Err(StoreError::corrupt(
                        TreeId::OutboxDue.name(),
                        &key,
                        "due entry without an outbox entry",
                    ))
                }
            }
        }
        for key in drained {
            self.drop_due_batch(&key)?;
        }
        Ok(out)
    }

    /// Adds to `out` the entries of a due batch that are still in it, at
    /// most `room` (all with `None`); `true` when none is left. The members
    /// before the first one still in it are remembered, since an entry
    /// never goes back into its batch: a batch being sent is not read from
    /// its start on every call.
    fn due_batch_members(
        &self,
        key: &[u8],
        value: &[u8],
        room: Option<usize>,
        out: &mut Vec<OutboxEntry>,
    ) -> Result<bool, StoreError> {
        let due = keys::decode_time(key)
            .ok_or_else(|| StoreError::corrupt(TreeId::OutboxDue.name(), key, "bad time prefix"))?;
        let ids: Vec<String> = decode(TreeId::OutboxDue, key, value)?;
        let start = self.due_batch_cursor(key);
        let mut first_in_batch = None;
        let mut taken = 0;
        for (position, id) in ids.iter().enumerate().skip(start) {
            // A purged entry has left its batch too.
            if id.is_empty() {
                continue;
            }
            let Some(entry) = self
                .outbox_entry(id)?
                .filter(|e| e.state.in_due_batch() && e.state.next_attempt() == Some(due))
            else {
                continue;
            };
            first_in_batch.get_or_insert(position);
            if room.is_some_and(|room| taken >= room) {
                break;
            }
            out.push(entry);
            taken += 1;
        }
        let left_before = first_in_batch.unwrap_or(ids.len());
        if left_before > start {
            self.due_batch_cursors
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key.to_vec(), left_before);
        }
        Ok(first_in_batch.is_none())
    }

    /// How many of a due batch's first members are known to have left it.
    fn due_batch_cursor(&self, key: &[u8]) -> usize {
        self.due_batch_cursors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Forgets what is remembered of those of these due batch keys that are
    /// gone (a purge removed them).
    pub(crate) fn forget_gone_due_batches<'k>(
        &self,
        batch_keys: impl IntoIterator<Item = &'k Vec<u8>>,
    ) -> Result<(), StoreError> {
        for key in batch_keys {
            if !self.tree(TreeId::OutboxDue).contains_key(key)? {
                self.due_batch_cursors
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(key);
            }
        }
        Ok(())
    }

    /// Removes the key of a due batch none of whose mails is in it any more.
    fn drop_due_batch(&self, key: &[u8]) -> Result<(), StoreError> {
        self.transact(|tx| tx.remove(TreeId::OutboxDue, key.to_vec()))?;
        self.due_batch_cursors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
        Ok(())
    }

    /// When the earliest pending entry is due, so the sender can sleep until
    /// then. One read of the first key of the due index.
    pub fn next_outbox_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        match self.tree(TreeId::OutboxDue).first()? {
            None => Ok(None),
            Some((key, _)) => keys::decode_time(&key).map(Some).ok_or_else(|| {
                StoreError::corrupt(TreeId::OutboxDue.name(), &key, "bad time prefix")
            }),
        }
    }

    /// Entries not yet sent or given up (scheduled or awaiting retry): the
    /// mail in the due index, kept as a count, so asking costs nothing.
    pub fn queue_depth(&self) -> usize {
        self.pending_mail.load(Ordering::Acquire) as usize
    }

    /// Counts the mail in the due index again (at open, and when a failed
    /// commit left unknown what it wrote): one per single key, and the
    /// entries still in each batch. Holds the writer lock, so no
    /// transaction changes the index while it is counted.
    pub(crate) fn recount_pending_mail(&self) -> Result<(), StoreError> {
        let writer = self.history.lock_writer();
        self.recount_pending_mail_holding(&writer)
    }

    /// [`Store::recount_pending_mail`] for a caller holding the writer lock.
    pub(crate) fn recount_pending_mail_holding(
        &self,
        _writer: &std::sync::MutexGuard<'_, ()>,
    ) -> Result<(), StoreError> {
        let mut count = 0;
        for item in self.tree(TreeId::OutboxDue).iter() {
            let (key, value) = item?;
            if keys::is_outbox_due_batch_key(&key) {
                let mut members = Vec::new();
                self.due_batch_members(&key, &value, None, &mut members)?;
                count += members.len();
            } else {
                count += 1;
            }
        }
        self.pending_mail.store(count as u64, Ordering::Release);
        Ok(())
    }

    /// Every outbox entry of a case, in id order.
    pub fn outbox_of_case(&self, case: &CaseId) -> Result<Vec<OutboxEntry>, StoreError> {
        let prefix = format!("{}.", case.0);
        let mut out = Vec::new();
        for item in self.tree(TreeId::Outbox).scan_prefix(prefix.as_bytes()) {
            let (key, value) = item?;
            let (entry, _) = split_record(&key, &value)?;
            // Case numbers contain no '.', so the prefix is exact for them;
            // this guards against ids made by hand.
            if entry.case.as_ref() == Some(case) {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// Records that the SMTP server accepted the entry (and, for mail of a
    /// case, appends `MailSent` to its log). Marking a sent entry
    /// sent again changes nothing (a resend after a crash is the same mail).
    pub fn outbox_sent(&self, id: &str, at: DateTime<Utc>) -> Result<OutboxEntry, StoreError> {
        self.outbox_transition(id, "sent", |entry| match &entry.state {
            OutboxState::Sent { .. } => Ok(None),
            OutboxState::Scheduled { .. }
            | OutboxState::TemporaryFailure { .. }
            | OutboxState::Sending { .. } => Ok(Some((
                OutboxState::Sent { at },
                Event {
                    at,
                    kind: EventKind::MailSent {
                        outbox_id: entry.id.clone(),
                    },
                },
            ))),
            OutboxState::PermanentFailure { .. } | OutboxState::Held { .. } => Err(()),
        })
    }

    /// Records a failed attempt. A temporary failure schedules a retry; a
    /// permanent one ends the entry (also after it was sent: a late bounce).
    pub fn outbox_failed(
        &self,
        id: &str,
        failure: DeliveryFailure,
        at: DateTime<Utc>,
    ) -> Result<OutboxEntry, StoreError> {
        let to = match failure {
            DeliveryFailure::Temporary { .. } => "temporarily failed",
            DeliveryFailure::Permanent { .. } => "permanently failed",
        };
        self.outbox_transition(id, to, |entry| {
            let (state, permanent, reason) = match (&entry.state, &failure) {
                (
                    OutboxState::Scheduled { .. }
                    | OutboxState::TemporaryFailure { .. }
                    | OutboxState::Sending { .. },
                    DeliveryFailure::Temporary {
                        error,
                        next_attempt,
                    },
                ) => (
                    OutboxState::TemporaryFailure {
                        attempts: entry.state.failed_attempts() + 1,
                        last_error: error.clone(),
                        next_attempt: *next_attempt,
                    },
                    false,
                    error.clone(),
                ),
                (OutboxState::PermanentFailure { .. }, DeliveryFailure::Permanent { .. }) => {
                    return Ok(None)
                }
                (
                    OutboxState::Scheduled { .. }
                    | OutboxState::TemporaryFailure { .. }
                    | OutboxState::Sending { .. }
                    | OutboxState::Sent { .. }
                    | OutboxState::Held { .. },
                    DeliveryFailure::Permanent { error },
                ) => (
                    OutboxState::PermanentFailure {
                        at,
                        error: error.clone(),
                    },
                    true,
                    error.clone(),
                ),
                (
                    OutboxState::Sent { .. }
                    | OutboxState::PermanentFailure { .. }
                    | OutboxState::Held { .. },
                    DeliveryFailure::Temporary { .. },
                ) => return Err(()),
            };
            Ok(Some((
                state,
                Event {
                    at,
                    kind: EventKind::MailFailed {
                        outbox_id: entry.id.clone(),
                        permanent,
                        reason,
                    },
                },
            )))
        })
    }

    /// Records, before DATA, that an attempt to send the entry has begun. An
    /// entry already `Sending` (its last outcome could not be recorded) starts
    /// a new attempt. No case event: the outcome makes one. Flush before
    /// sending for the record to survive a crash.
    pub fn outbox_attempt(&self, id: &str, at: DateTime<Utc>) -> Result<OutboxEntry, StoreError> {
        self.outbox_change(id, "sending", |entry| match &entry.state {
            OutboxState::Scheduled {
                next_attempt,
                batched,
            } => Ok(Some((
                OutboxState::Sending {
                    attempts: 0,
                    started_at: at,
                    due: *next_attempt,
                    batched: *batched,
                },
                None,
            ))),
            OutboxState::TemporaryFailure {
                attempts,
                next_attempt,
                ..
            } => Ok(Some((
                OutboxState::Sending {
                    attempts: *attempts,
                    started_at: at,
                    due: *next_attempt,
                    batched: false,
                },
                None,
            ))),
            OutboxState::Sending {
                attempts,
                due,
                batched,
                ..
            } => Ok(Some((
                OutboxState::Sending {
                    attempts: *attempts,
                    started_at: at,
                    due: *due,
                    batched: *batched,
                },
                None,
            ))),
            OutboxState::Sent { .. }
            | OutboxState::PermanentFailure { .. }
            | OutboxState::Held { .. } => Err(()),
        })
    }

    /// Entries whose attempt began and whose outcome was never recorded. Read
    /// at start, before the sender runs, these are in doubt: the server may
    /// have accepted them before the process died. Reads the due index only.
    pub fn outbox_in_doubt(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut pending = Vec::new();
        for item in self.tree(TreeId::OutboxDue).iter() {
            let (key, value) = item?;
            if keys::is_outbox_due_batch_key(&key) {
                self.due_batch_members(&key, &value, None, &mut pending)?;
                continue;
            }
            let id = String::from_utf8_lossy(&key[keys::TIME_LEN.min(key.len())..]).into_owned();
            pending.extend(self.outbox_entry(&id)?);
        }
        pending.retain(|entry| matches!(entry.state, OutboxState::Sending { .. }));
        Ok(pending)
    }

    /// Holds an entry in doubt for an operator (`Sending` → `Held`), with a
    /// note on its case. Holding a held entry changes nothing.
    pub fn outbox_hold(
        &self,
        id: &str,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<OutboxEntry, StoreError> {
        self.outbox_change(id, "held", |entry| match &entry.state {
            OutboxState::Held { .. } => Ok(None),
            OutboxState::Sending { attempts, .. } => Ok(Some((
                OutboxState::Held {
                    at,
                    attempts: *attempts,
                    reason: reason.to_owned(),
                },
                Some(Event {
                    at,
                    kind: EventKind::Note {
                        text: format!("mail {} held: {reason}", entry.id),
                    },
                }),
            ))),
            _ => Err(()),
        })
    }

    /// Queues an entry in doubt or held to be sent again at `at`, with the
    /// same bytes and Message-ID (`Sending`/`Held` → `Scheduled`, or
    /// `TemporaryFailure` when earlier attempts failed), with `note` on its case.
    pub fn outbox_requeue(
        &self,
        id: &str,
        note: &str,
        at: DateTime<Utc>,
    ) -> Result<OutboxEntry, StoreError> {
        self.outbox_change(id, "scheduled", |entry| match &entry.state {
            OutboxState::Sending { attempts, .. } | OutboxState::Held { attempts, .. } => {
                Ok(Some((
                    OutboxState::requeued(*attempts, note, at),
                    Some(Event {
                        at,
                        kind: EventKind::Note {
                            text: format!("mail {}: {note}", entry.id),
                        },
                    }),
                )))
            }
            _ => Err(()),
        })
    }

    /// Every held entry, in id order, from the `outbox_held` index.
    pub fn held_outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree(TreeId::OutboxHeld).iter() {
            let (key, _) = item?;
            let id = String::from_utf8_lossy(&key).into_owned();
            match self.outbox_entry(&id)? {
                Some(entry) if matches!(entry.state, OutboxState::Held { .. }) => out.push(entry),
                // The index and the entry change in one transaction, so this
                // is a damaged store: say so rather than list it.
                _ => {
                    return Err(StoreError::corrupt(
                        TreeId::OutboxHeld.name(),
                        &key,
                        "indexes an outbox entry that is not held",
                    ))
                }
            }
        }
        Ok(out)
    }

    /// Runs one outbox transition as a transaction: `decide` returns the new
    /// state and maybe a case event, `None` for "already there", or `Err` when
    /// the transition is not allowed.
    fn outbox_change(
        &self,
        id: &str,
        to: &'static str,
        decide: impl Fn(&OutboxEntry) -> Result<Option<(OutboxState, Option<Event>)>, ()>,
    ) -> Result<OutboxEntry, StoreError> {
        self.transact(|tx| {
            let Some((entry, bytes)) = read_record(tx, id)? else {
                return abort(StoreError::UnknownOutbox(id.to_owned()));
            };
            match decide(&entry) {
                Err(()) => abort(StoreError::OutboxTransition {
                    id: id.to_owned(),
                    from: entry.state.name(),
                    to,
                }),
                Ok(None) => Ok(entry),
                Ok(Some((state, event))) => {
                    let mut next = entry.clone();
                    next.state = state;
                    put_entry(tx, Some(&entry), &next, &bytes)?;
                    if let (Some(case), Some(event)) = (&entry.case, &event) {
                        append_event(tx, case, event)?;
                    }
                    Ok(next)
                }
            }
        })
    }

    /// [`Store::outbox_change`] for transitions that always record an event
    /// on the case.
    fn outbox_transition(
        &self,
        id: &str,
        to: &'static str,
        decide: impl Fn(&OutboxEntry) -> Result<Option<(OutboxState, Event)>, ()>,
    ) -> Result<OutboxEntry, StoreError> {
        self.outbox_change(id, to, |entry| {
            Ok(decide(entry)?.map(|(state, event)| (state, Some(event))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purposes_become_safe_message_id_parts() {
        assert_eq!(encode_purpose("ack"), "ack");
        assert_eq!(encode_purpose("remind_resolve-2"), "remind_resolve-2");
        assert_eq!(encode_purpose("a.b"), "a=2Eb");
        assert_eq!(encode_purpose("督办"), "=E7=9D=A3=E5=8A=9E");
        assert_ne!(encode_purpose("a=2E"), encode_purpose("a.")); // '=' itself is escaped
    }

    #[test]
    fn identities_are_stable_per_case_purpose_and_sequence() {
        let case = CaseId("TS-2026-000123".into());
        let id = mail_identity(Some(&case), "ack", 1);
        assert_eq!(id.outbox_id, "TS-2026-000123.ack.1");
        assert_eq!(id, mail_identity(Some(&case), "ack", 1));
        assert_ne!(id.outbox_id, mail_identity(Some(&case), "ack", 2).outbox_id);
        assert_eq!(
            mail_identity(None, "digest", 3).outbox_id,
            "complaintd.digest.3"
        );
    }

    mod in_doubt {
        use super::super::*;
        use crate::case::{Address, Case};
        use crate::store::ChangeSet;
        use chrono::TimeZone;

        fn t0() -> DateTime<Utc> {
            Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap()
        }

        fn render(identity: &MailIdentity) -> Result<RenderedMail, String> {
            Ok(RenderedMail {
                message_id: format!("{}@example.test", identity.outbox_id),
                subject: "received".into(),
                bytes: b"Subject: received\r\n\r\nok\r\n".to_vec(),
                template_failure: None,
            })
        }

        /// A store with one case whose acknowledgement is queued at `t0`; its outbox id.
        fn store_with_one_mail(path: &std::path::Path) -> (Store, String, CaseId) {
            let store = Store::open(path).unwrap();
            let mut changes = ChangeSet::for_message("<m1@example.test>", t0()).unwrap();
            let case = changes
                .new_case(Case::new(
                    CaseId("unnumbered".into()),
                    t0(),
                    "email",
                    Address::new("customer@example.test", None),
                    "a complaint",
                    "en",
                ))
                .unwrap();
            changes.link_message(&case).unwrap();
            changes
                .queue_mail(
                    &case,
                    MailDraft::new(
                        "ack",
                        "acknowledgement",
                        "complaints@example.test",
                        vec!["customer@example.test".into()],
                        t0(),
                        render,
                    ),
                )
                .unwrap();
            store.apply(&changes).unwrap();
            let entry = store.due_outbox(t0(), 10).unwrap().remove(0);
            let case = entry.case.clone().unwrap();
            (store, entry.id, case)
        }

        fn notes(store: &Store, case: &CaseId) -> Vec<String> {
            store
                .events(case)
                .unwrap()
                .into_iter()
                .filter_map(|e| match e.kind {
                    EventKind::Note { text } => Some(text),
                    _ => None,
                })
                .collect()
        }

        #[test]
        fn an_attempt_cut_short_is_in_doubt_after_a_restart_and_stays_held_across_another() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("db");
            let (store, id, case) = store_with_one_mail(&path);
            let started = t0() + chrono::Duration::seconds(1);
            let sending = store.outbox_attempt(&id, started).unwrap();
            assert_eq!(
                sending.state,
                OutboxState::Sending {
                    attempts: 0,
                    started_at: started,
                    due: t0(),
                    batched: true,
                }
            );
            store.flush().unwrap();
            drop(store);

            // The process died before the outcome was recorded.
            let store = Store::open(&path).unwrap();
            let in_doubt = store.outbox_in_doubt().unwrap();
            assert_eq!(in_doubt.len(), 1);
            assert_eq!(in_doubt[0].id, id);
            let restarted = t0() + chrono::Duration::minutes(1);
            let held = store
                .outbox_hold(&id, "in doubt after a crash", restarted)
                .unwrap();
            assert_eq!(
                held.state,
                OutboxState::Held {
                    at: restarted,
                    attempts: 0,
                    reason: "in doubt after a crash".into()
                }
            );
            assert!(store.outbox_in_doubt().unwrap().is_empty());
            assert!(
                store
                    .due_outbox(DateTime::<Utc>::MAX_UTC, 10)
                    .unwrap()
                    .is_empty(),
                "a held entry is never handed to the sender"
            );
            assert_eq!(store.queue_depth(), 0);
            assert_eq!(
                notes(&store, &case),
                [format!("mail {id} held: in doubt after a crash")]
            );
            store.flush().unwrap();
            drop(store);

            let store = Store::open(&path).unwrap();
            let held = store.held_outbox().unwrap();
            assert_eq!(held.len(), 1, "the held state survives a restart");
            assert_eq!(held[0].id, id);
            assert!(store.outbox_in_doubt().unwrap().is_empty());
            // A held entry can be neither sent nor retried until it is released.
            assert!(matches!(
                store.outbox_attempt(&id, restarted),
                Err(StoreError::OutboxTransition { from: "held", .. })
            ));
            assert!(matches!(
                store.outbox_sent(&id, restarted),
                Err(StoreError::OutboxTransition { from: "held", .. })
            ));

            let released = t0() + chrono::Duration::hours(1);
            let entry = store
                .outbox_requeue(&id, "released by the operator", released)
                .unwrap();
            assert_eq!(
                entry.state,
                OutboxState::Scheduled {
                    next_attempt: released,
                    batched: false,
                }
            );
            assert!(store.held_outbox().unwrap().is_empty());
            assert_eq!(store.due_outbox(released, 10).unwrap().len(), 1);
            assert!(matches!(
                store.outbox_requeue(&id, "again", released),
                Err(StoreError::OutboxTransition {
                    from: "scheduled",
                    ..
                })
            ));
        }

        #[test]
        fn an_attempt_keeps_its_failed_attempts_and_its_outcome_ends_it() {
            let dir = tempfile::tempdir().unwrap();
            let (store, id, _) = store_with_one_mail(&dir.path().join("db"));
            let retry_at = t0() + chrono::Duration::minutes(5);
            store
                .outbox_failed(
                    &id,
                    DeliveryFailure::Temporary {
                        error: "451 later".into(),
                        next_attempt: retry_at,
                    },
                    t0(),
                )
                .unwrap();
            let entry = store.outbox_attempt(&id, retry_at).unwrap();
            assert_eq!(entry.state.failed_attempts(), 1);
            assert_eq!(entry.state.next_attempt(), Some(retry_at));
            assert_eq!(
                store.queue_depth(),
                1,
                "an entry being sent keeps its place in the due index"
            );
            let sent = store.outbox_sent(&id, retry_at).unwrap();
            assert_eq!(sent.state, OutboxState::Sent { at: retry_at });
            assert!(store.outbox_in_doubt().unwrap().is_empty());
            assert_eq!(store.queue_depth(), 0);
        }

        #[test]
        fn resending_an_entry_in_doubt_queues_it_again_with_its_attempts() {
            let dir = tempfile::tempdir().unwrap();
            let (store, id, case) = store_with_one_mail(&dir.path().join("db"));
            let retry_at = t0() + chrono::Duration::minutes(5);
            store
                .outbox_failed(
                    &id,
                    DeliveryFailure::Temporary {
                        error: "451 later".into(),
                        next_attempt: retry_at,
                    },
                    t0(),
                )
                .unwrap();
            store.outbox_attempt(&id, retry_at).unwrap();
            let restarted = retry_at + chrono::Duration::minutes(1);
            let entry = store
                .outbox_requeue(&id, "in doubt after a crash; sending it again", restarted)
                .unwrap();
            assert_eq!(
                entry.state,
                OutboxState::TemporaryFailure {
                    attempts: 1,
                    last_error: "in doubt after a crash; sending it again".into(),
                    next_attempt: restarted
                }
            );
            assert_eq!(store.due_outbox(restarted, 10).unwrap().len(), 1);
            assert!(notes(&store, &case)
                .iter()
                .any(|n| n == &format!("mail {id}: in doubt after a crash; sending it again")));
        }
    }
}

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

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::batch::append_event;
use super::error::StoreError;
use super::keys;
use super::trees::{abort, decode, TreeId, Tx, TxResult};
use super::Store;
use crate::case::{CaseId, Event, EventKind};

/// Where an outbox entry is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum OutboxState {
    /// Waiting for its first attempt.
    Scheduled { next_attempt: DateTime<Utc> },
    /// Accepted by the SMTP server.
    Sent { at: DateTime<Utc> },
    /// The last attempt failed in a way worth retrying.
    TemporaryFailure {
        attempts: u32,
        last_error: String,
        next_attempt: DateTime<Utc>,
    },
    /// Given up: rejected by the server, or bounced after it was sent.
    PermanentFailure { at: DateTime<Utc>, error: String },
}

impl OutboxState {
    pub fn name(&self) -> &'static str {
        match self {
            OutboxState::Scheduled { .. } => "scheduled",
            OutboxState::Sent { .. } => "sent",
            OutboxState::TemporaryFailure { .. } => "temporarily failed",
            OutboxState::PermanentFailure { .. } => "permanently failed",
        }
    }

    /// When the sender should try next; `None` once the entry is final.
    pub fn next_attempt(&self) -> Option<DateTime<Utc>> {
        match self {
            OutboxState::Scheduled { next_attempt }
            | OutboxState::TemporaryFailure { next_attempt, .. } => Some(*next_attempt),
            OutboxState::Sent { .. } | OutboxState::PermanentFailure { .. } => None,
        }
    }

    /// Failed attempts so far.
    pub fn failed_attempts(&self) -> u32 {
        match self {
            OutboxState::TemporaryFailure { attempts, .. } => *attempts,
            _ => 0,
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
pub(crate) fn put_entry(
    tx: &Tx<'_>,
    old: Option<&OutboxEntry>,
    entry: &OutboxEntry,
) -> TxResult<()> {
    if let Some(due) = old.and_then(|o| o.state.next_attempt()) {
        tx.remove(TreeId::OutboxDue, keys::outbox_due_key(due, &entry.id))?;
    }
    if let Some(due) = entry.state.next_attempt() {
        tx.put(
            TreeId::OutboxDue,
            keys::outbox_due_key(due, &entry.id),
            Vec::new(),
        )?;
    }
    tx.put_json(TreeId::Outbox, entry.id.as_bytes().to_vec(), entry)
}

impl Store {
    /// One outbox entry.
    pub fn outbox_entry(&self, id: &str) -> Result<Option<OutboxEntry>, StoreError> {
        self.get_json(TreeId::Outbox, id.as_bytes())
    }

    /// The rendered bytes of an outbox entry, exactly as queued.
    pub fn outbox_message(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree(TreeId::OutboxBodies)
            .get(id.as_bytes())?
            .map(|v| v.to_vec()))
    }

    /// Entries whose next attempt is at or before `now`, earliest first, at
    /// most `limit`. Reads only the due index, never the whole outbox.
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
        for item in range.take(limit) {
            let (key, _) = item?;
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
        Ok(out)
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
    /// length of the due index, so it costs what is pending, not the history.
    pub fn queue_depth(&self) -> usize {
        self.tree(TreeId::OutboxDue).len()
    }

    /// Every outbox entry of a case, in id order.
    pub fn outbox_of_case(&self, case: &CaseId) -> Result<Vec<OutboxEntry>, StoreError> {
        let prefix = format!("{}.", case.0);
        let mut out = Vec::new();
        for item in self.tree(TreeId::Outbox).scan_prefix(prefix.as_bytes()) {
            let (key, value) = item?;
            let entry: OutboxEntry = decode(TreeId::Outbox, &key, &value)?;
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
            OutboxState::Scheduled { .. } | OutboxState::TemporaryFailure { .. } => Ok(Some((
                OutboxState::Sent { at },
                Event {
                    at,
                    kind: EventKind::MailSent {
                        outbox_id: entry.id.clone(),
                    },
                },
            ))),
            OutboxState::PermanentFailure { .. } => Err(()),
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
                    OutboxState::Scheduled { .. } | OutboxState::TemporaryFailure { .. },
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
                    | OutboxState::Sent { .. },
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
                    OutboxState::Sent { .. } | OutboxState::PermanentFailure { .. },
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

    /// Runs one outbox transition as a transaction: `decide` returns the new
    /// state and the case event, `None` for "already there", or `Err` when
    /// the transition is not allowed.
    fn outbox_transition(
        &self,
        id: &str,
        to: &'static str,
        decide: impl Fn(&OutboxEntry) -> Result<Option<(OutboxState, Event)>, ()>,
    ) -> Result<OutboxEntry, StoreError> {
        self.transact(|tx| {
            let Some(entry) = tx.get_json::<OutboxEntry>(TreeId::Outbox, id.as_bytes())? else {
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
                    put_entry(tx, Some(&entry), &next)?;
                    if let Some(case) = &entry.case {
                        append_event(tx, case, &event)?;
                    }
                    Ok(next)
                }
            }
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
}

//! The records the store keeps besides cases and events: what a Message-ID is,
//! mailbox checkpoints, timers, quarantined mail and attachment references.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::case::CaseId;
use crate::mail::classify::KnownMessage;

/// What the store knows about a Message-ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MessageRecord {
    /// An incoming mail that was ingested into a case.
    Incoming {
        case: CaseId,
        #[serde(with = "crate::serde_time")]
        at: DateTime<Utc>,
    },
    /// A mail the daemon queued for sending (for a case, or a digest).
    Outgoing {
        case: Option<CaseId>,
        outbox_id: String,
        purpose: String,
    },
    /// An incoming mail that was ingested but belongs to no case
    /// (an auto-reply, a loop, a bounce to nothing); kept so it is never
    /// processed twice.
    Discarded {
        reason: String,
        #[serde(with = "crate::serde_time")]
        at: DateTime<Utc>,
    },
    /// An incoming mail that could not be processed and was quarantined.
    Quarantined {
        quarantine_id: u64,
        #[serde(with = "crate::serde_time")]
        at: DateTime<Utc>,
    },
}

impl MessageRecord {
    /// The case the Message-ID belongs to, if any.
    pub fn case(&self) -> Option<&CaseId> {
        match self {
            MessageRecord::Incoming { case, .. } => Some(case),
            MessageRecord::Outgoing { case, .. } => case.as_ref(),
            MessageRecord::Discarded { .. } | MessageRecord::Quarantined { .. } => None,
        }
    }
}

/// What mail classification sees of a Message-ID.
impl From<&MessageRecord> for KnownMessage {
    fn from(record: &MessageRecord) -> Self {
        match record {
            MessageRecord::Outgoing { case, purpose, .. } => KnownMessage::Sent {
                case: case.clone(),
                purpose: purpose.clone(),
            },
            MessageRecord::Incoming { case, .. } => KnownMessage::Ingested {
                case: Some(case.clone()),
            },
            MessageRecord::Discarded { .. } | MessageRecord::Quarantined { .. } => {
                KnownMessage::Ingested { case: None }
            }
        }
    }
}

/// How far the daemon has read a mailbox: IMAP UIDs are only meaningful
/// together with the mailbox's UIDVALIDITY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub uid_validity: u32,
    pub last_uid: u32,
}

impl Checkpoint {
    /// The checkpoint after also having read `next`: it never moves back
    /// within one UIDVALIDITY, and a new UIDVALIDITY starts over.
    pub fn advanced_to(self, next: Checkpoint) -> Checkpoint {
        if self.uid_validity == next.uid_validity && self.last_uid > next.last_uid {
            self
        } else {
            next
        }
    }
}

/// One pending timer: an escalation step (or other timed action) of a
/// deadline clock of a case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Timer {
    #[serde(with = "crate::serde_time")]
    pub due: DateTime<Utc>,
    pub case: CaseId,
    pub deadline: String,
    pub step: usize,
}

/// One timer of a clock as kept in its list in the case's counter record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TimerSlot {
    #[serde(with = "crate::serde_time")]
    pub due: DateTime<Utc>,
    pub step: usize,
}

/// A mail that could not be processed: unparseable, oversized, or failing
/// in a way the daemon cannot handle. The raw bytes are stored beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineRecord {
    #[serde(with = "crate::serde_time")]
    pub at: DateTime<Utc>,
    pub mailbox: String,
    pub uid: Option<u32>,
    pub message_id: Option<String>,
    pub reason: String,
    /// Size of the original message in bytes.
    pub size: u64,
    /// Whether only part of the message (e.g. its headers) was kept.
    pub truncated: bool,
}

/// A quarantined mail with its identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub id: u64,
    pub record: QuarantineRecord,
}

/// An attachment of a case. The bytes are stored once under their SHA-256,
/// never under the sender's file name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRecord {
    /// Lower-case hex SHA-256 of the bytes: the key of the content.
    pub sha256: String,
    /// The name the sender gave it; only ever shown, never used as a path.
    pub name: String,
    pub content_type: String,
    pub size: u64,
    /// The Message-ID of the mail it came with, when known.
    pub message_id: Option<String>,
}

/// Normalises a Message-ID for lookups: surrounding white space and angle
/// brackets removed. Message-IDs are otherwise compared exactly.
pub fn normalize_message_id(raw: &str) -> String {
    let trimmed = raw.trim();
    let inner = trimmed
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(trimmed);
    inner.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_never_move_back_within_one_uidvalidity() {
        let at_10 = Checkpoint {
            uid_validity: 7,
            last_uid: 10,
        };
        let at_5 = Checkpoint {
            uid_validity: 7,
            last_uid: 5,
        };
        let reset = Checkpoint {
            uid_validity: 8,
            last_uid: 2,
        };
        assert_eq!(at_10.advanced_to(at_5), at_10);
        assert_eq!(at_5.advanced_to(at_10), at_10);
        assert_eq!(at_10.advanced_to(reset), reset);
    }

    #[test]
    fn message_ids_lose_brackets_and_blanks_only() {
        assert_eq!(normalize_message_id(" <Abc@X> "), "Abc@X");
        assert_eq!(normalize_message_id("abc@x"), "abc@x");
        assert_eq!(normalize_message_id("<abc@x"), "<abc@x");
    }
}

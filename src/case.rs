//! The case model: what a complaint is, independent of how mail arrives or is stored.
//!
//! Pure data: no I/O. The store persists these with serde; the rules read and
//! change them through actions.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// A case number such as `TS-2026-000123`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CaseId(pub String);

impl std::fmt::Display for CaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A mail address with its optional display name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Address {
    /// Lower-cased `local@domain`.
    pub email: String,
    pub name: Option<String>,
}

impl Address {
    pub fn new(email: &str, name: Option<&str>) -> Self {
        Address {
            email: email.trim().to_lowercase(),
            name: name.map(str::to_owned),
        }
    }

    pub fn domain(&self) -> &str {
        self.email.rsplit_once('@').map_or("", |(_, d)| d)
    }
}

/// The value of a case field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum FieldValue {
    /// A declared name: severity level, category, responsibility, validity, …
    Name(String),
    Text(String),
    Number(f64),
    Flag(bool),
    Date(NaiveDate),
}

impl std::fmt::Display for FieldValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FieldValue::Name(s) | FieldValue::Text(s) => f.write_str(s),
            FieldValue::Number(n) => write!(f, "{n}"),
            FieldValue::Flag(b) => write!(f, "{b}"),
            FieldValue::Date(d) => write!(f, "{d}"),
        }
    }
}

/// Where a case is in its life. `status` in rule conditions is this, in snake case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseState {
    Received,
    Acknowledged,
    Assigned,
    Accepted,
    InProgress,
    WaitingOnCustomer,
    Resolved,
    Answered,
    FollowUp,
    Closed,
    Reopened,
    Withdrawn,
    Rejected,
    AbnormallyClosed,
    Merged,
    Appealed,
}

impl CaseState {
    pub const ALL: [CaseState; 16] = [
        CaseState::Received,
        CaseState::Acknowledged,
        CaseState::Assigned,
        CaseState::Accepted,
        CaseState::InProgress,
        CaseState::WaitingOnCustomer,
        CaseState::Resolved,
        CaseState::Answered,
        CaseState::FollowUp,
        CaseState::Closed,
        CaseState::Reopened,
        CaseState::Withdrawn,
        CaseState::Rejected,
        CaseState::AbnormallyClosed,
        CaseState::Merged,
        CaseState::Appealed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CaseState::Received => "received",
            CaseState::Acknowledged => "acknowledged",
            CaseState::Assigned => "assigned",
            CaseState::Accepted => "accepted",
            CaseState::InProgress => "in_progress",
            CaseState::WaitingOnCustomer => "waiting_on_customer",
            CaseState::Resolved => "resolved",
            CaseState::Answered => "answered",
            CaseState::FollowUp => "follow_up",
            CaseState::Closed => "closed",
            CaseState::Reopened => "reopened",
            CaseState::Withdrawn => "withdrawn",
            CaseState::Rejected => "rejected",
            CaseState::AbnormallyClosed => "abnormally_closed",
            CaseState::Merged => "merged",
            CaseState::Appealed => "appealed",
        }
    }

    pub fn parse(s: &str) -> Option<CaseState> {
        CaseState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the case still needs work (not closed, withdrawn, rejected or merged).
    pub fn is_open(self) -> bool {
        !matches!(
            self,
            CaseState::Closed
                | CaseState::Withdrawn
                | CaseState::Rejected
                | CaseState::AbnormallyClosed
                | CaseState::Merged
        )
    }
}

/// The department a case is routed to, and who gets copies.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Assignment {
    pub department: String,
    pub cc: Vec<String>,
    /// Name of the route rule that decided it (`route #N` when unnamed).
    pub rule: String,
}

/// A running (or finished) deadline clock of a case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClockState {
    pub deadline: String,
    pub calendar: Option<String>,
    pub started_at: DateTime<Utc>,
    /// When the deadline falls due, pauses included.
    pub due: DateTime<Utc>,
    /// Set while paused.
    pub paused_since: Option<DateTime<Utc>>,
    /// Total time spent paused, in seconds of the clock's own measure
    /// (business seconds for business durations, elapsed seconds otherwise).
    pub paused_seconds: i64,
    pub stopped_at: Option<DateTime<Utc>>,
    /// Indexes of escalation steps that already fired: each fires once.
    pub fired_steps: BTreeSet<usize>,
    /// Whether the clock counts business time (its duration is in working
    /// units); the measure of `paused_seconds` and of percentage steps.
    #[serde(default)]
    pub business: bool,
}

impl ClockState {
    pub fn is_running(&self) -> bool {
        self.stopped_at.is_none() && self.paused_since.is_none()
    }
}

/// A complaint case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    pub id: CaseId,
    pub created_at: DateTime<Utc>,
    pub channel: String,
    pub sender: Address,
    pub subject: String,
    /// Language of the complaint (ISO 639-1, e.g. `zh`, `en`).
    pub language: String,
    pub state: CaseState,
    /// Severity, category, responsibility, validity and custom fields.
    pub fields: BTreeMap<String, FieldValue>,
    pub tags: BTreeSet<String>,
    pub assignment: Option<Assignment>,
    pub clocks: BTreeMap<String, ClockState>,
    pub reopen_count: u32,
}

impl Case {
    pub fn new(
        id: CaseId,
        created_at: DateTime<Utc>,
        channel: &str,
        sender: Address,
        subject: &str,
        language: &str,
    ) -> Self {
        Case {
            id,
            created_at,
            channel: channel.to_owned(),
            sender,
            subject: subject.to_owned(),
            language: language.to_owned(),
            state: CaseState::Received,
            fields: BTreeMap::new(),
            tags: BTreeSet::new(),
            assignment: None,
            clocks: BTreeMap::new(),
            reopen_count: 0,
        }
    }

    pub fn field(&self, name: &str) -> Option<&FieldValue> {
        self.fields.get(name)
    }

    pub fn severity(&self) -> Option<&str> {
        match self.fields.get("severity") {
            Some(FieldValue::Name(s)) => Some(s),
            _ => None,
        }
    }
}

/// Why something happened: the rule that decided it and the values it saw.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Because {
    /// Rule name, `route #N`, `deadline NAME`, or a non-rule cause such as `department reply`.
    pub rule: String,
    /// `file:line:col` of the rule in the policy, when a rule decided it.
    pub location: Option<String>,
    /// The values the rule looked at, as `(what, value)` pairs.
    pub seen: Vec<(String, String)>,
}

/// One entry of a case's append-only event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Everything that can happen to a case. New kinds are added at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    Created {
        message_id: String,
        channel: String,
        sender: String,
    },
    MailReceived {
        message_id: String,
        from: String,
        role: String,
        subject: String,
    },
    FieldSet {
        field: String,
        value: FieldValue,
        because: Because,
    },
    TagAdded {
        tag: String,
        because: Because,
    },
    Assigned {
        department: String,
        cc: Vec<String>,
        because: Because,
    },
    StateChanged {
        from: CaseState,
        to: CaseState,
        because: Because,
    },
    ClockStarted {
        deadline: String,
        due: DateTime<Utc>,
        calendar: Option<String>,
        counted: String,
        because: Because,
    },
    ClockPaused {
        deadline: String,
    },
    ClockResumed {
        deadline: String,
        due: DateTime<Utc>,
        paused_seconds: i64,
    },
    ClockStopped {
        deadline: String,
        met: bool,
    },
    ClockBreached {
        deadline: String,
    },
    EscalationFired {
        deadline: String,
        step: usize,
        template: String,
        recipients: Vec<String>,
        because: Because,
    },
    MailQueued {
        outbox_id: String,
        purpose: String,
        to: Vec<String>,
        subject: String,
        template: String,
    },
    MailSent {
        outbox_id: String,
    },
    MailFailed {
        outbox_id: String,
        permanent: bool,
        reason: String,
    },
    CommandRejected {
        from: String,
        reason: String,
    },
    SecurityAlert {
        from: String,
        reason: String,
    },
    Note {
        text: String,
    },
}

/// An attachment as the rules see it: metadata only.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AttachmentFacts {
    pub name: String,
    pub content_type: String,
    pub size: u64,
}

/// What the rules see of one incoming mail.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MailFacts {
    pub subject: String,
    /// New text of the mail: plain text, or text converted from HTML, without quoted replies.
    pub text: String,
    pub sender: Address,
    pub recipients: Vec<Address>,
    /// Header names lower-cased, values decoded.
    pub headers: Vec<(String, String)>,
    pub attachments: Vec<AttachmentFacts>,
    pub language: String,
    pub channel: String,
    pub received_at: DateTime<Utc>,
}

impl MailFacts {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A subject reduced to what identifies "the same issue" across senders:
/// reply/forward prefixes and bracketed case numbers removed, case folded,
/// whitespace and punctuation collapsed.
pub fn subject_fingerprint(subject: &str) -> String {
    let mut rest = subject.trim();
    loop {
        let lower = rest.to_lowercase();
        let stripped = [
            "re:",
            "fw:",
            "fwd:",
            "aw:",
            "回复：",
            "回复:",
            "转发：",
            "转发:",
            "答复：",
        ]
        .iter()
        .find(|p| lower.starts_with(*p))
        .map(|p| rest[p.len()..].trim_start());
        match stripped {
            Some(s) => rest = s,
            None => break,
        }
    }
    let mut out = String::new();
    let mut in_bracket = false;
    for ch in rest.chars() {
        match ch {
            '[' => in_bracket = true,
            ']' => in_bracket = false,
            _ if in_bracket => {}
            c if c.is_alphanumeric() => out.extend(c.to_lowercase()),
            _ => {
                if !out.ends_with(' ') && !out.is_empty() {
                    out.push(' ');
                }
            }
        }
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_ignores_prefixes_case_numbers_and_punctuation() {
        assert_eq!(
            subject_fingerprint("Re: Fwd: [TS-2026-000123] 停气 通知!!"),
            "停气 通知"
        );
        assert_eq!(subject_fingerprint("回复：停气  通知"), "停气 通知");
        assert_eq!(
            subject_fingerprint("Gas  Outage"),
            subject_fingerprint("gas outage")
        );
    }
}

//! The case model: what a complaint is, independent of how mail arrives or is stored.
//!
//! Pure data: no I/O. The store persists these with serde; the rules read and
//! change them through actions.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

mod event_json;

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
    #[serde(with = "crate::serde_time")]
    pub started_at: DateTime<Utc>,
    /// When the deadline falls due, pauses included.
    #[serde(with = "crate::serde_time")]
    pub due: DateTime<Utc>,
    /// Set while paused.
    #[serde(default, with = "crate::serde_time::option")]
    pub paused_since: Option<DateTime<Utc>>,
    /// Total time spent paused, in seconds of the clock's own measure
    /// (business seconds for business durations, elapsed seconds otherwise).
    pub paused_seconds: i64,
    #[serde(default, with = "crate::serde_time::option")]
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
    #[serde(with = "crate::serde_time")]
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
///
/// Stored as one flat JSON object: `at`, the `event` tag, the kind's fields
/// (`Serialize` and `Deserialize` are in `case/event_json.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub at: DateTime<Utc>,
    pub kind: EventKind,
}

/// Everything that can happen to a case. New kinds are added at the end, and
/// also to `KindFields` in `case/event_json.rs`, which reads events back (the build
/// fails until it has them).
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
        #[serde(with = "crate::serde_time")]
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
        #[serde(with = "crate::serde_time")]
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
    #[serde(with = "crate::serde_time")]
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
    use crate::serde_time::tests::any_instant;
    use chrono::TimeZone;
    use proptest::prelude::*;

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

    /// The derive-based encoding used before `case/event_json.rs` and `crate::serde_time`
    /// (chrono's own `DateTime` serde, `#[serde(flatten)]` over the tagged kind), kept
    /// here to show that stored bytes do not change and old stores read back the same.
    mod old {
        use super::*;

        #[derive(Serialize, Deserialize)]
        #[serde(remote = "Event")]
        pub struct OldEvent {
            pub at: DateTime<Utc>,
            #[serde(flatten, with = "OldEventKind")]
            pub kind: EventKind,
        }

        #[derive(Serialize, Deserialize)]
        #[serde(remote = "EventKind", tag = "event", rename_all = "snake_case")]
        pub enum OldEventKind {
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

        #[derive(Serialize, Deserialize)]
        #[serde(remote = "Case")]
        pub struct OldCase {
            pub id: CaseId,
            pub created_at: DateTime<Utc>,
            pub channel: String,
            pub sender: Address,
            pub subject: String,
            pub language: String,
            pub state: CaseState,
            pub fields: BTreeMap<String, FieldValue>,
            pub tags: BTreeSet<String>,
            pub assignment: Option<Assignment>,
            #[serde(with = "old_clocks")]
            pub clocks: BTreeMap<String, ClockState>,
            pub reopen_count: u32,
        }

        #[derive(Serialize, Deserialize)]
        #[serde(remote = "ClockState")]
        pub struct OldClockState {
            pub deadline: String,
            pub calendar: Option<String>,
            pub started_at: DateTime<Utc>,
            pub due: DateTime<Utc>,
            pub paused_since: Option<DateTime<Utc>>,
            pub paused_seconds: i64,
            pub stopped_at: Option<DateTime<Utc>>,
            pub fired_steps: BTreeSet<usize>,
            #[serde(default)]
            pub business: bool,
        }

        mod old_clocks {
            use super::*;
            use serde::{Deserializer, Serializer};

            #[derive(Serialize, Deserialize)]
            struct Clock(#[serde(with = "OldClockState")] ClockState);

            pub fn serialize<S: Serializer>(
                clocks: &BTreeMap<String, ClockState>,
                serializer: S,
            ) -> Result<S::Ok, S::Error> {
                let clocks: BTreeMap<&String, Clock> = clocks
                    .iter()
                    .map(|(name, clock)| (name, Clock(clock.clone())))
                    .collect();
                clocks.serialize(serializer)
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(
                deserializer: D,
            ) -> Result<BTreeMap<String, ClockState>, D::Error> {
                let clocks = BTreeMap::<String, Clock>::deserialize(deserializer)?;
                Ok(clocks
                    .into_iter()
                    .map(|(name, Clock(c))| (name, c))
                    .collect())
            }
        }

        #[derive(Serialize, Deserialize)]
        pub struct EventJson(#[serde(with = "OldEvent")] pub Event);

        #[derive(Serialize, Deserialize)]
        pub struct CaseJson(#[serde(with = "OldCase")] pub Case);
    }

    /// Text with quotes, backslashes, control characters and non-ASCII.
    fn any_text() -> impl Strategy<Value = String> {
        "(?s).{0,8}"
    }

    fn any_because() -> impl Strategy<Value = Because> {
        (
            any_text(),
            proptest::option::of(any_text()),
            proptest::collection::vec((any_text(), any_text()), 0..3),
        )
            .prop_map(|(rule, location, seen)| Because {
                rule,
                location,
                seen,
            })
    }

    fn any_state() -> impl Strategy<Value = CaseState> {
        proptest::sample::select(CaseState::ALL.to_vec())
    }

    /// Field values; numbers are those serde_json reads back exactly (its default parser
    /// may miss the last bit of an arbitrary double, with the old encoding as with the new).
    fn any_field_value() -> impl Strategy<Value = FieldValue> {
        prop_oneof![
            any_text().prop_map(FieldValue::Name),
            any_text().prop_map(FieldValue::Text),
            any::<i32>().prop_map(|n| FieldValue::Number(f64::from(n) / 8.0)),
            any::<bool>().prop_map(FieldValue::Flag),
            (-300_000i64..300_000).prop_filter_map("a date", |days| {
                NaiveDate::from_num_days_from_ce_opt(days as i32).map(FieldValue::Date)
            }),
        ]
    }

    fn any_names() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec(any_text(), 0..3)
    }

    fn any_kind() -> impl Strategy<Value = EventKind> {
        let t = any_text;
        prop_oneof![
            (t(), t(), t()).prop_map(|(message_id, channel, sender)| EventKind::Created {
                message_id,
                channel,
                sender
            }),
            (t(), t(), t(), t()).prop_map(|(message_id, from, role, subject)| {
                EventKind::MailReceived {
                    message_id,
                    from,
                    role,
                    subject,
                }
            }),
            (t(), any_field_value(), any_because()).prop_map(|(field, value, because)| {
                EventKind::FieldSet {
                    field,
                    value,
                    because,
                }
            }),
            (t(), any_because()).prop_map(|(tag, because)| EventKind::TagAdded { tag, because }),
            (t(), any_names(), any_because()).prop_map(|(department, cc, because)| {
                EventKind::Assigned {
                    department,
                    cc,
                    because,
                }
            }),
            (any_state(), any_state(), any_because())
                .prop_map(|(from, to, because)| EventKind::StateChanged { from, to, because }),
            (
                t(),
                any_instant(),
                proptest::option::of(t()),
                t(),
                any_because()
            )
                .prop_map(|(deadline, due, calendar, counted, because)| {
                    EventKind::ClockStarted {
                        deadline,
                        due,
                        calendar,
                        counted,
                        because,
                    }
                }),
            t().prop_map(|deadline| EventKind::ClockPaused { deadline }),
            (t(), any_instant(), any::<i64>()).prop_map(|(deadline, due, paused_seconds)| {
                EventKind::ClockResumed {
                    deadline,
                    due,
                    paused_seconds,
                }
            }),
            (t(), any::<bool>())
                .prop_map(|(deadline, met)| EventKind::ClockStopped { deadline, met }),
            t().prop_map(|deadline| EventKind::ClockBreached { deadline }),
            (t(), any::<usize>(), t(), any_names(), any_because()).prop_map(
                |(deadline, step, template, recipients, because)| EventKind::EscalationFired {
                    deadline,
                    step,
                    template,
                    recipients,
                    because,
                }
            ),
            (t(), t(), any_names(), t(), t()).prop_map(
                |(outbox_id, purpose, to, subject, template)| EventKind::MailQueued {
                    outbox_id,
                    purpose,
                    to,
                    subject,
                    template,
                }
            ),
            t().prop_map(|outbox_id| EventKind::MailSent { outbox_id }),
            (t(), any::<bool>(), t()).prop_map(|(outbox_id, permanent, reason)| {
                EventKind::MailFailed {
                    outbox_id,
                    permanent,
                    reason,
                }
            }),
            (t(), t()).prop_map(|(from, reason)| EventKind::CommandRejected { from, reason }),
            (t(), t()).prop_map(|(from, reason)| EventKind::SecurityAlert { from, reason }),
            t().prop_map(|text| EventKind::Note { text }),
        ]
    }

    fn any_event() -> impl Strategy<Value = Event> {
        (any_instant(), any_kind()).prop_map(|(at, kind)| Event { at, kind })
    }

    fn any_clock() -> impl Strategy<Value = ClockState> {
        (
            (t_and_calendar(), any_instant(), any_instant()),
            (
                proptest::option::of(any_instant()),
                any::<i64>(),
                proptest::option::of(any_instant()),
                proptest::collection::btree_set(0usize..8, 0..3),
                any::<bool>(),
            ),
        )
            .prop_map(
                |(
                    ((deadline, calendar), started_at, due),
                    (paused_since, paused_seconds, stopped_at, fired_steps, business),
                )| ClockState {
                    deadline,
                    calendar,
                    started_at,
                    due,
                    paused_since,
                    paused_seconds,
                    stopped_at,
                    fired_steps,
                    business,
                },
            )
    }

    fn t_and_calendar() -> impl Strategy<Value = (String, Option<String>)> {
        (any_text(), proptest::option::of(any_text()))
    }

    fn any_case() -> impl Strategy<Value = Case> {
        (
            (
                any_text(),
                any_instant(),
                any_text(),
                any_text(),
                any_text(),
            ),
            (
                any_state(),
                proptest::collection::btree_map(any_text(), any_field_value(), 0..4),
                proptest::collection::btree_set(any_text(), 0..3),
                proptest::option::of((any_text(), any_names(), any_text())),
                proptest::collection::btree_map(any_text(), any_clock(), 0..3),
                any::<u32>(),
            ),
        )
            .prop_map(
                |(
                    (id, created_at, channel, email, subject),
                    (state, fields, tags, assignment, clocks, reopen_count),
                )| Case {
                    id: CaseId(id),
                    created_at,
                    channel,
                    sender: Address { email, name: None },
                    subject,
                    language: "zh".into(),
                    state,
                    fields,
                    tags,
                    assignment: assignment.map(|(department, cc, rule)| Assignment {
                        department,
                        cc,
                        rule,
                    }),
                    clocks,
                    reopen_count,
                },
            )
    }

    proptest! {
        #[test]
        fn events_encode_as_the_derive_did_and_read_back(event in any_event()) {
            let json = serde_json::to_string(&event).expect("encodes");
            let old_json = serde_json::to_string(&old::EventJson(event.clone())).expect("old encodes");
            prop_assert_eq!(&json, &old_json);
            let read: Event = serde_json::from_str(&old_json).expect("decodes");
            let old_read = serde_json::from_str::<old::EventJson>(&old_json).expect("old decodes").0;
            prop_assert_eq!(&read, &old_read);
            prop_assert_eq!(&read, &event);
        }

        #[test]
        fn event_logs_read_back_whatever_the_key_order(
            events in proptest::collection::vec(any_event(), 1..4),
            rotation in 0usize..8,
        ) {
            // Objects whose keys are not in the written order (`at`, `event`, fields)
            // take the buffered path; they must still read as the derive read them.
            let reordered: Vec<serde_json::Value> = events
                .iter()
                .map(|event| {
                    let value = serde_json::to_value(old::EventJson(event.clone())).expect("encodes");
                    let serde_json::Value::Object(object) = value else {
                        panic!("an event is an object");
                    };
                    let mut entries: Vec<_> = object.into_iter().collect();
                    let len = entries.len();
                    entries.rotate_left(rotation % len);
                    serde_json::Value::Object(entries.into_iter().collect())
                })
                .collect();
            let json = serde_json::to_string(&reordered).expect("encodes");
            let read: Vec<Event> = serde_json::from_str(&json).expect("decodes");
            prop_assert_eq!(read, events);
        }

        #[test]
        fn cases_encode_as_the_derive_did_and_read_back(case in any_case()) {
            let json = serde_json::to_vec(&case).expect("encodes");
            let old_json = serde_json::to_vec(&old::CaseJson(case.clone())).expect("old encodes");
            prop_assert_eq!(&json, &old_json);
            let read: Case = serde_json::from_slice(&old_json).expect("decodes");
            prop_assert_eq!(&read, &case);
        }
    }

    #[test]
    fn an_event_is_one_flat_object_with_at_first() {
        let event = Event {
            at: Utc
                .with_ymd_and_hms(2026, 11, 24, 2, 0, 0)
                .single()
                .expect("valid"),
            kind: EventKind::ClockStopped {
                deadline: "forward".into(),
                met: true,
            },
        };
        let json = serde_json::to_string(&event).expect("encodes");
        assert_eq!(
            json,
            r#"{"at":"2026-11-24T02:00:00Z","event":"clock_stopped","deadline":"forward","met":true}"#
        );
        assert_eq!(
            serde_json::from_str::<Event>(&json).expect("decodes"),
            event
        );
    }

    #[test]
    fn bad_events_are_clear_errors() {
        let error = |json: &str| {
            serde_json::from_str::<Event>(json)
                .expect_err("not an event")
                .to_string()
        };
        let unknown = error(r#"{"at":"2026-11-24T02:00:00Z","event":"exploded","deadline":"x"}"#);
        assert!(unknown.contains("unknown variant `exploded`"), "{unknown}");
        let missing = error(r#"{"at":"2026-11-24T02:00:00Z","event":"clock_stopped","met":true}"#);
        assert!(missing.contains("missing field `deadline`"), "{missing}");
        let no_at = error(r#"{"event":"note","text":"x"}"#);
        assert!(no_at.contains("missing field `at`"), "{no_at}");
        let twice = error(r#"{"at":"2026-11-24T02:00:00Z","at":"2026-11-24T02:00:00Z"}"#);
        assert!(twice.contains("duplicate field `at`"), "{twice}");
        let bad_time = error(r#"{"at":"yesterday","event":"note","text":"x"}"#);
        assert!(
            bad_time.contains("input contains invalid characters"),
            "{bad_time}"
        );
    }
}

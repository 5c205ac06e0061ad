//! The lines `complaintd simulate` prints: one per event of the merged event
//! log, as text for people or as one JSON object per line.
//!
//! Both forms depend only on the lines and the display zone, so the same
//! timeline and policy always print the same bytes.

use chrono::{DateTime, Timelike, Utc};
use chrono_tz::Tz;
use serde_json::{Map, Value};

use crate::case::{Because, CaseId, EventKind};
use crate::engine::Outcome;
use crate::store::OutboxEntry;

/// One entry of the simulation's log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub at: DateTime<Utc>,
    /// `None` for what belongs to no case.
    pub case: Option<CaseId>,
    pub entry: LogEntry,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LogEntry {
    /// An event of a case's log, as stored.
    Event(EventKind),
    /// A mail that is on no case: a duplicate, a loop, a quarantined mail,
    /// automatic mail or a bounce about no case.
    Unfiled {
        message_id: String,
        outcome: Outcome,
    },
    /// Mail about no case (digests), read from the outbox.
    SystemMail(OutboxEntry),
}

/// `2026-09-30 17:50 +08:00` (seconds only when there are any).
pub fn local_time(at: DateTime<Utc>, zone: Tz) -> String {
    let local = at.with_timezone(&zone);
    if local.second() == 0 {
        local.format("%Y-%m-%d %H:%M %:z").to_string()
    } else {
        local.format("%Y-%m-%d %H:%M:%S %:z").to_string()
    }
}

/// A time inside a line, without its offset (the line's own time has it).
fn short_time(at: DateTime<Utc>, zone: Tz) -> String {
    let local = at.with_timezone(&zone);
    if local.second() == 0 {
        local.format("%Y-%m-%d %H:%M").to_string()
    } else {
        local.format("%Y-%m-%d %H:%M:%S").to_string()
    }
}

/// The line for people: time, case (or `-`), what happened, and why.
pub fn render_text(line: &LogLine, zone: Tz) -> String {
    let case = line.case.as_ref().map_or("-", |c| c.0.as_str());
    format!(
        "{}  {case}  {}",
        local_time(line.at, zone),
        describe(&line.entry, zone)
    )
}

/// The line as one JSON object: `at` (RFC 3339 in the display zone), `case`
/// (or null), `event`, and the event's fields as stored, a `due` time also
/// in the display zone.
pub fn render_json(line: &LogLine, zone: Tz) -> String {
    let mut object = match &line.entry {
        LogEntry::Event(kind) => as_object(serde_json::to_value(kind)),
        LogEntry::Unfiled {
            message_id,
            outcome,
        } => {
            let mut object = as_object(serde_json::to_value(outcome));
            object.insert("event".into(), "mail_unfiled".into());
            object.insert("message_id".into(), message_id.clone().into());
            object
        }
        LogEntry::SystemMail(entry) => {
            let mut object = Map::new();
            object.insert("event".into(), "mail_queued".into());
            object.insert("outbox_id".into(), entry.id.clone().into());
            object.insert("purpose".into(), entry.purpose.clone().into());
            object.insert("to".into(), entry.recipients.clone().into());
            object.insert("subject".into(), entry.subject.clone().into());
            object.insert("template".into(), entry.template.clone().into());
            object
        }
    };
    // Instants inside events (a clock's due time) are shown in the zone too.
    if let Some(Value::String(due)) = object.get("due") {
        if let Ok(due) = DateTime::parse_from_rfc3339(due) {
            let local = due.with_timezone(&zone).to_rfc3339();
            object.insert("due".into(), local.into());
        }
    }
    object.insert(
        "at".into(),
        line.at.with_timezone(&zone).to_rfc3339().into(),
    );
    object.insert(
        "case".into(),
        line.case
            .as_ref()
            .map_or(Value::Null, |c| c.0.clone().into()),
    );
    Value::Object(object).to_string()
}

/// The fields of a serialized event; the types serialize to objects, so the
/// fallback only keeps a broken serializer from losing the line.
fn as_object(value: Result<Value, serde_json::Error>) -> Map<String, Value> {
    match value {
        Ok(Value::Object(object)) => object,
        Ok(other) => Map::from_iter([("value".to_owned(), other)]),
        Err(error) => Map::from_iter([("error".to_owned(), error.to_string().into())]),
    }
}

/// Why, after two spaces: `(rule NAME, FILE:LINE:COL)` for a classify
/// rule, `(route NAME, …)` for a route, the cause as written when it names
/// its own kind (`deadline investigate`, `escalate investigate #1`) or is no
/// rule (`acknowledgement queued`), nothing when there is no cause.
fn because(b: &Because, kind: &str) -> String {
    if b.rule.is_empty() {
        return String::new();
    }
    let name = if b.rule.contains(' ') {
        b.rule.clone()
    } else {
        format!("{kind} {}", b.rule)
    };
    match &b.location {
        Some(location) => format!("  ({name}, {location})"),
        None => format!("  ({})", b.rule),
    }
}

fn describe(entry: &LogEntry, zone: Tz) -> String {
    match entry {
        LogEntry::Event(kind) => describe_event(kind, zone),
        LogEntry::Unfiled {
            message_id,
            outcome,
        } => describe_unfiled(message_id, outcome),
        LogEntry::SystemMail(entry) => format!(
            "mail queued {} → {} \"{}\" (template {}, id {})",
            entry.purpose,
            entry.recipients.join(", "),
            entry.subject,
            entry.template,
            entry.id
        ),
    }
}

fn describe_event(kind: &EventKind, zone: Tz) -> String {
    match kind {
        EventKind::Created {
            message_id,
            channel,
            sender,
        } => format!("case opened: complaint from {sender} via {channel} <{message_id}>"),
        EventKind::MailReceived {
            message_id,
            from,
            role,
            subject,
        } => format!("mail received ({role}) from {from} \"{subject}\" <{message_id}>"),
        EventKind::FieldSet {
            field,
            value,
            because: b,
        } => format!("field {field} = {value}{}", because(b, "rule")),
        EventKind::TagAdded { tag, because: b } => format!("tag {tag}{}", because(b, "rule")),
        EventKind::Assigned {
            department,
            cc,
            because: b,
        } => {
            let cc = if cc.is_empty() {
                String::new()
            } else {
                format!(", cc {}", cc.join(", "))
            };
            format!("assigned to {department}{cc}{}", because(b, "route"))
        }
        EventKind::StateChanged {
            from,
            to,
            because: b,
        } => format!(
            "state {} → {}{}",
            from.as_str(),
            to.as_str(),
            because(b, "rule")
        ),
        EventKind::ClockStarted {
            deadline,
            due,
            counted,
            because: b,
            ..
        } => format!(
            "clock {deadline} started, due {} ({counted}){}",
            short_time(*due, zone),
            because(b, "rule")
        ),
        EventKind::ClockPaused { deadline } => format!("clock {deadline} paused"),
        EventKind::ClockResumed { deadline, due, .. } => {
            format!("clock {deadline} resumed, due {}", short_time(*due, zone))
        }
        EventKind::ClockStopped { deadline, met } => format!(
            "clock {deadline} stopped ({})",
            if *met { "met" } else { "late" }
        ),
        EventKind::ClockBreached { deadline } => format!("clock {deadline} breached"),
        EventKind::EscalationFired {
            deadline,
            step,
            template,
            recipients,
            because: b,
        } => format!(
            "escalation {deadline} step #{} ({template}) → {}{}",
            step + 1,
            recipients.join(", "),
            because(b, "rule")
        ),
        EventKind::MailQueued {
            outbox_id,
            purpose,
            to,
            subject,
            template,
        } => format!(
            "mail queued {purpose} → {} \"{subject}\" (template {template}, id {outbox_id})",
            to.join(", ")
        ),
        EventKind::MailSent { outbox_id } => format!("mail sent (id {outbox_id})"),
        EventKind::MailFailed {
            outbox_id,
            permanent,
            reason,
        } => format!(
            "mail failed ({}): {reason} (id {outbox_id})",
            if *permanent {
                "permanently"
            } else {
                "will retry"
            }
        ),
        EventKind::CommandRejected { from, reason } => {
            format!("command of {from} rejected: {reason}")
        }
        EventKind::SecurityAlert { from, reason } => format!("security alert: {from}: {reason}"),
        EventKind::Note { text } => format!("note: {text}"),
    }
}

fn describe_unfiled(message_id: &str, outcome: &Outcome) -> String {
    let what = match outcome {
        Outcome::Duplicate => "ignored: already received".to_owned(),
        Outcome::Loop { reason } => format!("ignored: mail loop ({reason})"),
        Outcome::Quarantined { reason } => format!("quarantined: {reason}"),
        Outcome::AutoReply { reason, .. } => {
            format!("ignored: automatic mail ({reason}) about no case")
        }
        Outcome::Bounce { .. } => "ignored: a delivery report about no case".to_owned(),
        Outcome::NewCase { case, .. }
        | Outcome::CustomerReply { case, .. }
        | Outcome::DepartmentReply { case, .. }
        | Outcome::Unverified { case, .. } => format!("filed on {case}"),
    };
    format!("mail <{message_id}> {what}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::FieldValue;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn a_field_line_names_its_rule_and_where_it_is() {
        let line = LogLine {
            at: at("2026-09-30T09:50:00Z"),
            case: Some(CaseId("TS-2026-000001".into())),
            entry: LogEntry::Event(EventKind::FieldSet {
                field: "severity".into(),
                value: FieldValue::Name("major".into()),
                because: Because {
                    rule: "exposure".into(),
                    location: Some("rules/10-classify.rules:25:5".into()),
                    seen: vec![("text".into(), "曝光".into())],
                },
            }),
        };
        let zone = chrono_tz::Asia::Shanghai;
        assert_eq!(
            render_text(&line, zone),
            "2026-09-30 17:50 +08:00  TS-2026-000001  field severity = major  (rule exposure, rules/10-classify.rules:25:5)"
        );
        assert_eq!(
            render_json(&line, zone),
            r#"{"at":"2026-09-30T17:50:00+08:00","because":{"location":"rules/10-classify.rules:25:5","rule":"exposure","seen":[["text","曝光"]]},"case":"TS-2026-000001","event":"field_set","field":"severity","value":{"type":"name","value":"major"}}"#
        );
    }

    #[test]
    fn seconds_show_only_when_there_are_any() {
        let zone = chrono_tz::UTC;
        assert_eq!(
            local_time(at("2026-10-01T08:00:00Z"), zone),
            "2026-10-01 08:00 +00:00"
        );
        assert_eq!(
            local_time(at("2026-10-01T08:00:05Z"), zone),
            "2026-10-01 08:00:05 +00:00"
        );
    }

    #[test]
    fn unfiled_mail_has_no_case() {
        let line = LogLine {
            at: at("2026-10-01T08:00:00Z"),
            case: None,
            entry: LogEntry::Unfiled {
                message_id: "x@y".into(),
                outcome: Outcome::Quarantined {
                    reason: "no usable From address".into(),
                },
            },
        };
        assert_eq!(
            render_text(&line, chrono_tz::UTC),
            "2026-10-01 08:00 +00:00  -  mail <x@y> quarantined: no usable From address"
        );
        assert_eq!(
            render_json(&line, chrono_tz::UTC),
            r#"{"at":"2026-10-01T08:00:00+00:00","case":null,"event":"mail_unfiled","message_id":"x@y","outcome":"quarantined","reason":"no usable From address"}"#
        );
    }
}

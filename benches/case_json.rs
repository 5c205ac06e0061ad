//! JSON encoding and decoding of one new complaint's event log and case, as the store
//! writes them on ingest and reads them back on `case show`, lifecycle steps and replies.
//!
//! Run: `cargo bench --bench case_json`. For instruction counts under callgrind, set
//! `CASE_JSON_ITERATIONS=N`: each of the four operations then runs N times in a
//! function of its own (`encode_events`, `decode_events`, `encode_case`, `decode_case`)
//! instead of under criterion.

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;

use chrono::{DateTime, Duration, TimeZone, Utc};
use complaintd::case::{
    Address, Assignment, Because, Case, CaseId, CaseState, ClockState, Event, EventKind, FieldValue,
};
use criterion::Criterion;

/// The daemon's allocator (`src/main.rs`), so the figures are the daemon's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn received() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 2, 0, 0)
        .single()
        .expect("valid time")
}

fn because(rule: &str, location: Option<&str>, seen: &[(&str, &str)]) -> Because {
    Because {
        rule: rule.into(),
        location: location.map(str::to_owned),
        seen: seen
            .iter()
            .map(|(what, value)| ((*what).to_owned(), (*value).to_owned()))
            .collect(),
    }
}

/// The events of a new complaint, like those the engine appends (see
/// `tests/fixtures/timelines/customer-reply.expected.jsonl`).
fn complaint_events() -> Vec<Event> {
    let at = received();
    let field = |field: &str, value: FieldValue, because: Because| EventKind::FieldSet {
        field: field.into(),
        value,
        because,
    };
    let kinds = vec![
        EventKind::Created {
            message_id: "step1.timeline@example.com".into(),
            channel: "own".into(),
            sender: "wang@example.com".into(),
        },
        EventKind::MailReceived {
            message_id: "step1.timeline@example.com".into(),
            from: "wang@example.com".into(),
            role: "customer".into(),
            subject: "账单有误".into(),
        },
        field(
            "severity",
            FieldValue::Name("general".into()),
            because("default severity", None, &[("severity", "(not set)")]),
        ),
        field(
            "category",
            FieldValue::Name("billing".into()),
            because(
                "billing_words",
                Some("rules/10-classify.rules:10:5"),
                &[("subject contains \"账单\"", "账单")],
            ),
        ),
        field(
            "loss",
            FieldValue::Number(120.0),
            because(
                "stated_loss",
                Some("rules/10-classify.rules:29:5"),
                &[(
                    "text matches /损失[^0-9]{0,6}([0-9]+)\\s*元/",
                    "损失 120 元",
                )],
            ),
        ),
        EventKind::Assigned {
            department: "billing_dept".into(),
            cc: Vec::new(),
            because: because(
                "billing",
                Some("rules/20-route.rules:7:5"),
                &[("category", "billing")],
            ),
        },
        EventKind::ClockStarted {
            deadline: "forward".into(),
            due: at + Duration::hours(1),
            calendar: Some("office".into()),
            counted: "counted 1 working hour (Asia/Shanghai): 2026-11-24 10:00–11:00".into(),
            because: because(
                "deadline forward",
                Some("rules/30-deadlines.rules:18:18"),
                &[
                    ("starts on", "received"),
                    ("duration", "1 working hour"),
                    ("calendar", "office"),
                ],
            ),
        },
        EventKind::StateChanged {
            from: CaseState::Received,
            to: CaseState::Acknowledged,
            because: because("acknowledgement queued", None, &[]),
        },
        EventKind::StateChanged {
            from: CaseState::Acknowledged,
            to: CaseState::Assigned,
            because: because("forwarded to billing_dept", None, &[]),
        },
        EventKind::ClockStopped {
            deadline: "forward".into(),
            met: true,
        },
        EventKind::MailQueued {
            outbox_id: "TS-2026-000001.ack.1".into(),
            purpose: "ack".into(),
            to: vec!["wang@example.com".into()],
            subject: "[TS-2026-000001] 您的投诉已受理".into(),
            template: "acknowledgement".into(),
        },
        EventKind::MailQueued {
            outbox_id: "TS-2026-000001.forward.1".into(),
            purpose: "forward".into(),
            to: vec!["billing@gas.example".into()],
            subject: "[TS-2026-000001] 转派：账单有误".into(),
            template: "forward".into(),
        },
    ];
    kinds.into_iter().map(|kind| Event { at, kind }).collect()
}

/// The case those events leave behind.
fn complaint_case() -> Case {
    let at = received();
    let mut case = Case::new(
        CaseId("TS-2026-000001".into()),
        at,
        "own",
        Address::new("wang@example.com", Some("王先生")),
        "账单有误",
        "zh",
    );
    case.state = CaseState::Assigned;
    for (name, value) in [
        ("severity", FieldValue::Name("general".into())),
        ("category", FieldValue::Name("billing".into())),
        ("loss", FieldValue::Number(120.0)),
        ("responsibility", FieldValue::Name("ours".into())),
    ] {
        case.fields.insert(name.into(), value);
    }
    case.tags = BTreeSet::from(["billing".to_owned()]);
    case.assignment = Some(Assignment {
        department: "billing_dept".into(),
        cc: Vec::new(),
        rule: "billing".into(),
    });
    let clock = |due: DateTime<Utc>, stopped_at| ClockState {
        deadline: String::new(),
        calendar: Some("office".into()),
        started_at: at,
        due,
        paused_since: None,
        paused_seconds: 0,
        stopped_at,
        fired_steps: BTreeSet::new(),
        business: true,
    };
    case.clocks = BTreeMap::from([
        (
            "forward".to_owned(),
            clock(at + Duration::hours(1), Some(at)),
        ),
        (
            "investigate".to_owned(),
            clock(at + Duration::days(3), None),
        ),
    ]);
    case
}

#[inline(never)]
fn encode_events(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|event| serde_json::to_string(event).expect("encodes"))
        .collect()
}

#[inline(never)]
fn decode_events(json: &[u8]) -> Vec<Event> {
    serde_json::from_slice(json).expect("decodes")
}

#[inline(never)]
fn encode_case(case: &Case) -> Vec<u8> {
    serde_json::to_vec(case).expect("encodes")
}

#[inline(never)]
fn decode_case(json: &[u8]) -> Case {
    serde_json::from_slice(json).expect("decodes")
}

fn main() {
    let events = complaint_events();
    let events_json = serde_json::to_vec(&events).expect("encodes");
    let case = complaint_case();
    let case_json = serde_json::to_vec(&case).expect("encodes");
    assert_eq!(decode_events(&events_json), events);
    assert_eq!(decode_case(&case_json), case);

    if let Ok(iterations) = std::env::var("CASE_JSON_ITERATIONS") {
        let iterations: usize = iterations.parse().expect("CASE_JSON_ITERATIONS=N");
        for _ in 0..iterations {
            black_box(encode_events(black_box(&events)));
            black_box(decode_events(black_box(&events_json)));
            black_box(encode_case(black_box(&case)));
            black_box(decode_case(black_box(&case_json)));
        }
        println!(
            "{iterations} iterations; {} events ({} bytes), a case of {} bytes",
            events.len(),
            events_json.len(),
            case_json.len()
        );
        return;
    }

    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("case_json");
    group.bench_function("encode_events", |b| {
        b.iter(|| encode_events(black_box(&events)))
    });
    group.bench_function("decode_events", |b| {
        b.iter(|| decode_events(black_box(&events_json)))
    });
    group.bench_function("encode_case", |b| b.iter(|| encode_case(black_box(&case))));
    group.bench_function("decode_case", |b| {
        b.iter(|| decode_case(black_box(&case_json)))
    });
    group.finish();
    criterion.final_summary();
}

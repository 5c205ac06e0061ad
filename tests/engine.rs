//! The engine end to end on a temporary store: raw mail in, cases, events,
//! timers and rendered outgoing mail out, on a manual clock.
//!
//! The policy is `tests/fixtures/engine/rules/` with the project's default
//! templates (`rules/templates/`); the mails are `tests/fixtures/engine/*.eml`.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use complaintd::case::{CaseId, CaseState, Event, EventKind, FieldValue};
use complaintd::clock::{Clock, ManualClock};
use complaintd::engine::{
    Engine, EngineSettings, IngestReport, Outcome, RawMessage, DUE_TIMER_STEP,
};
use complaintd::mail::inbound::{parse, IncomingMail};
use complaintd::mail::token::{self, ReplySecret};
use complaintd::rules::ast::ClockEvent;
use complaintd::store::{ChangeSet, OutboxState, Store};
use tempfile::TempDir;

const SECRET: &[u8] = b"engine-test-reply-secret-0123456789";

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("test time")
        .with_timezone(&Utc)
}

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/engine")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Copies the test policy and the default templates into `dir`.
fn copy_policy(dir: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    for entry in std::fs::read_dir(root.join("tests/fixtures/engine/rules")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    for entry in std::fs::read_dir(root.join("rules/templates")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join("templates").join(path.file_name().unwrap())).unwrap();
    }
}

fn settings(rules: &Path, acks_per_hour: u32) -> EngineSettings {
    EngineSettings {
        rules_dir: rules.to_owned(),
        complaint_address: "complaints@corp.example".into(),
        sender_address: "complaints@corp.example".into(),
        own_addresses: Vec::new(),
        reply_secret: ReplySecret::new(SECRET.to_vec()).unwrap(),
        token_valid_days: 90,
        message_id_host: "mail.corp.example".into(),
        acks_per_sender_per_hour: acks_per_hour,
        case_prefix: "TS".into(),
        case_number_width: 6,
        store_cache_mb: complaintd::store::DEFAULT_CACHE_MB,
        time_zone: chrono_tz::Asia::Shanghai,
        max_message_bytes: 1024 * 1024,
        organisation: "Corp Gas".into(),
        reopen_window_days: 30,
        retention_days: complaintd::config::DEFAULT_RETENTION_DAYS,
    }
}

/// Retries `attempt` while the store is reported in use. sled releases a
/// store's file lock from a background writer thread shortly after the last
/// handle is dropped; the store already retries opening for a few seconds,
/// and this allows a loaded test machine a little longer (at most twenty
/// seconds in all) for that release.
fn while_locked<T>(mut attempt: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match attempt() {
            Ok(value) => return value,
            Err(message)
                if message.contains("in use by another process") && Instant::now() < deadline => {}
            Err(message) => panic!("{message}"),
        }
    }
}

struct Harness {
    dir: TempDir,
    clock: ManualClock,
    engine: Option<Engine>,
    next_uid: Cell<u32>,
    acks_per_hour: u32,
}

impl Harness {
    fn new() -> Harness {
        Harness::with(at("2026-11-24T10:00:00+08:00"), 3)
    }

    fn with(start: DateTime<Utc>, acks_per_hour: u32) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        copy_policy(&dir.path().join("rules"));
        let mut harness = Harness {
            dir,
            clock: ManualClock::new(start),
            engine: None,
            next_uid: Cell::new(1),
            acks_per_hour,
        };
        harness.reopen();
        harness
    }

    fn rules(&self) -> PathBuf {
        self.dir.path().join("rules")
    }

    fn store_path(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Drops the engine (and its store) and opens both again.
    fn reopen(&mut self) {
        self.engine = None;
        let engine = while_locked(|| {
            Engine::open(
                settings(&self.rules(), self.acks_per_hour),
                &self.store_path(),
                Arc::new(self.clock.clone()),
            )
            .map_err(|e| e.to_string())
        });
        self.engine = Some(engine);
    }

    fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("engine open")
    }

    fn store(&self) -> &Store {
        self.engine().store()
    }

    fn ingest_raw(&self, messages: Vec<RawMessage>) -> IngestReport {
        let numbered = messages
            .into_iter()
            .map(|raw| {
                let uid = self.next_uid.get();
                self.next_uid.set(uid + 1);
                (uid, raw)
            })
            .collect();
        self.engine()
            .ingest("INBOX", "own", 7, numbered)
            .expect("ingest")
    }

    fn ingest(&self, names: &[&str]) -> IngestReport {
        self.ingest_raw(names.iter().map(|n| RawMessage::full(fixture(n))).collect())
    }

    fn outcomes(report: &IngestReport) -> Vec<Outcome> {
        report.messages.iter().map(|m| m.outcome.clone()).collect()
    }

    fn events(&self, case: &CaseId) -> Vec<Event> {
        self.store().events(case).unwrap()
    }

    fn outbox_ids(&self, case: &CaseId) -> Vec<String> {
        self.store()
            .outbox_of_case(case)
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect()
    }

    /// An outgoing mail as sent, read back with the project's parser.
    fn sent(&self, outbox_id: &str) -> (IncomingMail, Vec<u8>) {
        let bytes = self
            .store()
            .outbox_message(outbox_id)
            .unwrap()
            .unwrap_or_else(|| panic!("no mail {outbox_id}"));
        let parsed = parse(&bytes).expect("outgoing mail parses");
        (parsed.mail, bytes)
    }
}

fn case_id(n: u32) -> CaseId {
    CaseId(format!("TS-2026-{n:06}"))
}

fn new_case(case: CaseId, acknowledged: bool, forwarded_to: &[&str]) -> Outcome {
    Outcome::NewCase {
        case,
        acknowledged,
        forwarded_to: forwarded_to.iter().map(|s| s.to_string()).collect(),
    }
}

fn event_names(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let value = serde_json::to_value(e).unwrap();
            value["event"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// A complaint with its own Message-ID and sender, made from a fixture.
fn variant(name: &str, n: u32, sender: &str) -> RawMessage {
    let text = String::from_utf8(fixture(name)).unwrap();
    let text = text
        .replace(
            "<c1.wang@example.com>",
            &format!("<c1-{n}.wang@example.com>"),
        )
        .replace("<wang@example.com>", &format!("<{sender}>"));
    RawMessage::full(text.into_bytes())
}

#[test]
fn a_new_complaint_becomes_a_routed_case_with_acknowledgement_and_forward() {
    let h = Harness::new();
    let report = h.ingest(&["complaint-billing.eml"]);
    let id = case_id(1);
    assert_eq!(
        Harness::outcomes(&report),
        [new_case(id.clone(), true, &["billing_dept"])]
    );
    assert_eq!(report.transactions, 1);
    assert_eq!(report.mails_queued, 2);
    assert_eq!(report.checkpoint.map(|c| c.last_uid), Some(1));
    assert_eq!(
        h.store().checkpoint("INBOX").unwrap().map(|c| c.last_uid),
        Some(1)
    );

    let case = h.store().case(&id).unwrap().expect("case stored");
    assert_eq!(case.state, CaseState::Assigned);
    assert_eq!(case.sender.email, "wang@example.com");
    assert_eq!(case.subject, "账单有误");
    assert_eq!(case.language, "zh");
    assert_eq!(
        case.field("category"),
        Some(&FieldValue::Name("billing".into()))
    );
    assert_eq!(case.severity(), Some("general"));
    let assignment = case.assignment.clone().expect("routed");
    assert_eq!(
        (assignment.department.as_str(), assignment.rule.as_str()),
        ("billing_dept", "billing")
    );
    let now = at("2026-11-24T10:00:00+08:00");
    let forward = &case.clocks["forward"];
    assert_eq!(forward.stopped_at, Some(now), "forwarded at once");
    let investigate = &case.clocks["investigate"];
    assert!(investigate.is_running());
    assert_eq!(investigate.due, at("2026-11-26T10:00:00+08:00"));

    let mut timers: Vec<(String, usize, DateTime<Utc>)> = h
        .store()
        .timers_of_case(&id)
        .unwrap()
        .into_iter()
        .map(|t| (t.deadline, t.step, t.due))
        .collect();
    timers.sort();
    assert_eq!(
        timers,
        [
            ("investigate".into(), 0, at("2026-11-25T10:00:00+08:00")),
            ("investigate".into(), 1, at("2026-11-26T10:00:00+08:00")),
            ("investigate".into(), 2, at("2026-11-27T10:00:00+08:00")),
            (
                "investigate".into(),
                DUE_TIMER_STEP,
                at("2026-11-26T10:00:00+08:00")
            ),
        ]
    );

    assert_eq!(
        event_names(&h.events(&id)),
        [
            "created",
            "mail_received",
            "field_set",
            "field_set",
            "assigned",
            "clock_started",
            "state_changed",
            "state_changed",
            "clock_stopped",
            "clock_started",
            "mail_queued",
            "mail_queued",
        ]
    );
    let events = h.events(&id);
    assert!(events.iter().any(|e| matches!(&e.kind,
        EventKind::FieldSet { field, because, .. } if field == "category" && because.rule == "billing"
            && because.location.as_deref().is_some_and(|l| l.ends_with("00-policy.rules:42:5")))),
        "{events:#?}");

    assert_eq!(
        h.outbox_ids(&id),
        ["TS-2026-000001.ack.1", "TS-2026-000001.forward.1"]
    );

    let (ack, ack_bytes) = h.sent("TS-2026-000001.ack.1");
    assert_eq!(ack.subject, "[TS-2026-000001] 您的投诉已受理");
    assert_eq!(ack.message_id, "TS-2026-000001.ack.1@mail.corp.example");
    assert_eq!(ack.header("auto-submitted"), Some("auto-replied"));
    assert_eq!(ack.in_reply_to, ["c1.wang@example.com"]);
    let to: Vec<&str> = ack.to.iter().map(|a| a.email.as_str()).collect();
    assert_eq!(to, ["wang@example.com"]);
    assert!(ack.text.contains("TS-2026-000001"), "{}", ack.text);
    let ack_text = String::from_utf8_lossy(&ack_bytes);
    for secret in ["账单", "多收", "120", "bill.pdf", "billing", "营业收费部"] {
        assert!(
            !ack.text.contains(secret) && !ack_text.contains(secret),
            "the acknowledgement shows case content {secret:?}:\n{ack_text}"
        );
    }

    let (fwd, _) = h.sent("TS-2026-000001.forward.1");
    assert_eq!(fwd.subject, "[TS-2026-000001] 转派：账单有误");
    assert_eq!(fwd.message_id, "TS-2026-000001.forward.1@mail.corp.example");
    assert_eq!(fwd.header("auto-submitted"), Some("auto-generated"));
    let to: Vec<&str> = fwd.to.iter().map(|a| a.email.as_str()).collect();
    assert_eq!(to, ["billing@corp.example"]);
    let reply_to = &fwd.reply_to[0].email;
    let secret = ReplySecret::new(SECRET.to_vec()).unwrap();
    let verified = token::verify(&secret, reply_to, now, ["billing_dept"])
        .expect("the Reply-To carries a valid token");
    assert_eq!(
        (verified.case, verified.department.as_str()),
        (id.clone(), "billing_dept")
    );
    assert!(reply_to.starts_with("complaints+ts-2026-000001."));
    assert!(fwd.text.contains("多收了 120 元"), "{}", fwd.text);
    let attachments: Vec<&str> = fwd.attachments.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(attachments, ["bill.pdf"]);

    let files: Vec<String> = h
        .store()
        .case_attachments(&id)
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    let mut files = files;
    files.sort();
    assert_eq!(files, ["bill.pdf", "message.txt"]);
}

#[test]
fn a_retried_ingest_queues_the_same_mail_byte_for_byte() {
    let first = Harness::new();
    first.ingest(&["complaint-billing.eml"]);
    // A crash before the commit loses the whole batch; the retry on a store
    // without it must produce the very same messages.
    let retry = Harness::new();
    retry.ingest(&["complaint-billing.eml"]);
    for id in ["TS-2026-000001.ack.1", "TS-2026-000001.forward.1"] {
        assert_eq!(
            first.store().outbox_message(id).unwrap(),
            retry.store().outbox_message(id).unwrap(),
            "{id} differs between the first ingest and the retry"
        );
    }
    // A retry after the commit is a duplicate and queues nothing more.
    let again = first.ingest(&["complaint-billing.eml"]);
    assert_eq!(Harness::outcomes(&again), [Outcome::Duplicate]);
    assert_eq!(
        first.outbox_ids(&case_id(1)),
        ["TS-2026-000001.ack.1", "TS-2026-000001.forward.1"]
    );
}

#[test]
fn a_duplicate_message_id_opens_no_second_case() {
    let h = Harness::new();
    let report = h.ingest(&["complaint-billing.eml", "complaint-billing.eml"]);
    assert_eq!(
        Harness::outcomes(&report),
        [
            new_case(case_id(1), true, &["billing_dept"]),
            Outcome::Duplicate
        ]
    );
    let later = h.ingest(&["complaint-billing.eml"]);
    assert_eq!(Harness::outcomes(&later), [Outcome::Duplicate]);
    assert_eq!(later.checkpoint.map(|c| c.last_uid), Some(3));
    assert_eq!(h.store().list_cases(&Default::default()).unwrap().len(), 1);
}

#[test]
fn automatic_mail_bounces_and_lists_are_never_acknowledged() {
    let h = Harness::new();
    h.ingest(&["complaint-billing.eml"]);
    let id = case_id(1);
    let before = h.events(&id).len();
    let report = h.ingest(&["auto-reply.eml", "list-mail.eml", "bounce.eml"]);
    assert_eq!(
        Harness::outcomes(&report),
        [
            Outcome::AutoReply {
                case: Some(id.clone()),
                reason: "Auto-Submitted: auto-replied".into()
            },
            Outcome::AutoReply {
                case: None,
                reason: "Precedence: list".into()
            },
            Outcome::Bounce {
                case: Some(id.clone()),
                failed_mail: Some("TS-2026-000001.ack.1".into())
            },
        ]
    );
    assert_eq!(h.store().list_cases(&Default::default()).unwrap().len(), 1);
    assert_eq!(
        h.outbox_ids(&id),
        ["TS-2026-000001.ack.1", "TS-2026-000001.forward.1"],
        "nothing answered"
    );
    let ack = h
        .store()
        .outbox_entry("TS-2026-000001.ack.1")
        .unwrap()
        .unwrap();
    match &ack.state {
        OutboxState::PermanentFailure { error, .. } => {
            assert!(error.contains("wang@example.com: failed 5.1.1"), "{error}")
        }
        other => panic!("the bounced acknowledgement is {other:?}"),
    }
    let new_events = &h.events(&id)[before..];
    assert_eq!(
        event_names(new_events),
        ["mail_received", "note", "mail_received", "mail_failed"]
    );
    let roles: Vec<&str> = new_events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::MailReceived { role, .. } => Some(role.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(roles, ["auto_reply", "bounce"]);
}

#[test]
fn a_customer_reply_threads_onto_its_case_and_is_forwarded() {
    let h = Harness::new();
    h.ingest(&["complaint-billing.eml"]);
    h.clock.advance(Duration::hours(1));
    let report = h.ingest(&["reply-customer.eml"]);
    let id = case_id(1);
    assert_eq!(
        Harness::outcomes(&report),
        [Outcome::CustomerReply {
            case: id.clone(),
            forwarded_to: Some("billing_dept".into())
        }]
    );
    assert_eq!(h.store().list_cases(&Default::default()).unwrap().len(), 1);
    assert_eq!(
        h.outbox_ids(&id),
        [
            "TS-2026-000001.ack.1",
            "TS-2026-000001.forward.1",
            "TS-2026-000001.forward.2"
        ],
        "forwarded, not acknowledged again"
    );
    let (fwd, _) = h.sent("TS-2026-000001.forward.2");
    assert!(fwd.text.contains("我的用户号是 12345"), "{}", fwd.text);
    let to: Vec<&str> = fwd.to.iter().map(|a| a.email.as_str()).collect();
    assert_eq!(to, ["billing@corp.example"]);
    let last = h.events(&id);
    assert!(last.iter().any(|e| matches!(&e.kind,
        EventKind::MailReceived { role, message_id, .. }
            if role == "customer" && message_id == "c1-reply.wang@example.com")));
}

#[test]
fn a_reply_in_the_same_fetch_as_its_complaint_finds_the_new_case() {
    let h = Harness::new();
    let report = h.ingest(&["complaint-billing.eml", "reply-customer.eml"]);
    assert_eq!(
        Harness::outcomes(&report),
        [
            new_case(case_id(1), true, &["billing_dept"]),
            Outcome::CustomerReply {
                case: case_id(1),
                forwarded_to: Some("billing_dept".into())
            }
        ]
    );
    assert_eq!(report.transactions, 2, "committed before the reply");
    assert_eq!(report.checkpoint.map(|c| c.last_uid), Some(2));
}

#[test]
fn a_forged_department_reply_changes_nothing_and_is_logged() {
    let h = Harness::new();
    h.ingest(&["complaint-billing.eml"]);
    let id = case_id(1);
    let case_before = h.store().case(&id).unwrap();
    let timers_before = h.store().timers_of_case(&id).unwrap();
    let events_before = h.events(&id).len();
    let report = h.ingest(&["forged-department-reply.eml"]);
    match &Harness::outcomes(&report)[..] {
        [Outcome::Unverified { case, reason }] => {
            assert_eq!(case, &id);
            assert!(reason.contains("signature does not match"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.store().case(&id).unwrap(), case_before);
    assert_eq!(h.store().timers_of_case(&id).unwrap(), timers_before);
    assert_eq!(h.outbox_ids(&id).len(), 2);
    let new_events = &h.events(&id)[events_before..];
    assert_eq!(event_names(new_events), ["mail_received", "security_alert"]);
    assert!(matches!(&new_events[1].kind,
        EventKind::SecurityAlert { from, .. } if from == "billing@corp.example"));
}

#[test]
fn a_verified_department_reply_is_recorded_on_its_case() {
    let h = Harness::new();
    h.ingest(&["complaint-billing.eml"]);
    let id = case_id(1);
    let (fwd, _) = h.sent("TS-2026-000001.forward.1");
    let token_address = fwd.reply_to[0].email.clone();
    let raw = String::from_utf8(fixture("department-reply.eml"))
        .unwrap()
        .replace("{{TOKEN_ADDRESS}}", &token_address);
    let report = h.ingest_raw(vec![RawMessage::full(raw.into_bytes())]);
    assert_eq!(
        Harness::outcomes(&report),
        [Outcome::DepartmentReply {
            case: id.clone(),
            department: "billing_dept".into()
        }]
    );
    assert_eq!(
        h.store().case(&id).unwrap().unwrap().state,
        CaseState::InProgress,
        "its `状态: 处理中` command is applied (tests/lifecycle.rs has the rest)"
    );
    assert!(h.events(&id).iter().any(|e| matches!(&e.kind,
        EventKind::MailReceived { role, from, .. } if role == "department" && from == "billing@corp.example")));
    assert_eq!(
        h.outbox_ids(&id),
        [
            "TS-2026-000001.ack.1",
            "TS-2026-000001.confirmation.1",
            "TS-2026-000001.forward.1"
        ],
        "the department gets a confirmation"
    );
}

#[test]
fn acknowledgements_are_rate_limited_per_sender_and_hour() {
    let h = Harness::with(at("2026-11-24T10:00:00+08:00"), 2);
    let report = h.ingest_raw(vec![
        variant("complaint-billing.eml", 1, "zhao@example.com"),
        variant("complaint-billing.eml", 2, "zhao@example.com"),
        variant("complaint-billing.eml", 3, "zhao@example.com"),
        variant("complaint-billing.eml", 4, "qian@example.com"),
    ]);
    let acked: Vec<bool> = Harness::outcomes(&report)
        .iter()
        .map(|o| {
            matches!(
                o,
                Outcome::NewCase {
                    acknowledged: true,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(acked, [true, true, false, true]);
    let third = case_id(3);
    assert!(h.events(&third).iter().any(|e| matches!(&e.kind,
        EventKind::Note { text } if text == "no acknowledgement: 2 already sent to zhao@example.com in this hour (limit 2)")));
    assert_eq!(h.outbox_ids(&third), ["TS-2026-000003.forward.1"]);
    assert_eq!(
        h.store().case(&third).unwrap().unwrap().state,
        CaseState::Assigned
    );

    h.clock.advance(Duration::minutes(30));
    let same_hour = h.ingest_raw(vec![variant(
        "complaint-billing.eml",
        5,
        "zhao@example.com",
    )]);
    assert!(matches!(
        &same_hour.messages[0].outcome,
        Outcome::NewCase {
            acknowledged: false,
            ..
        }
    ));
    h.clock.advance(Duration::minutes(30));
    let next_hour = h.ingest_raw(vec![variant(
        "complaint-billing.eml",
        6,
        "zhao@example.com",
    )]);
    assert!(matches!(
        &next_hour.messages[0].outcome,
        Outcome::NewCase {
            acknowledged: true,
            ..
        }
    ));
}

#[test]
fn escalation_timers_fire_exactly_once_across_a_restart() {
    let mut h = Harness::new();
    h.ingest(&["complaint-billing.eml"]);
    let id = case_id(1);
    let half_time = at("2026-11-25T10:00:00+08:00");
    h.clock.set(half_time);
    assert_eq!(h.engine().fire_due(half_time).unwrap(), 1);
    let reminders: Vec<String> = h
        .outbox_ids(&id)
        .into_iter()
        .filter(|i| i.contains(".reminder."))
        .collect();
    assert_eq!(reminders, ["TS-2026-000001.reminder.1"]);
    let (reminder, _) = h.sent("TS-2026-000001.reminder.1");
    assert_eq!(
        reminder.subject,
        "[TS-2026-000001] 提醒：调查时限将于 2026-11-26 10:00 到期"
    );
    let to: Vec<&str> = reminder.to.iter().map(|a| a.email.as_str()).collect();
    assert_eq!(to, ["billing@corp.example"]);
    assert!(h.store().case(&id).unwrap().unwrap().clocks["investigate"]
        .fired_steps
        .contains(&0));

    h.reopen();
    assert_eq!(
        h.engine().fire_due(half_time).unwrap(),
        0,
        "the timer is gone"
    );

    // A timer of a step that already fired (as if left behind) only goes away.
    let mut stale = ChangeSet::new();
    stale.add_timer(&id.clone().into(), "investigate", 0, half_time);
    h.store().apply(&stale).unwrap();
    assert_eq!(h.engine().fire_due(half_time).unwrap(), 1);
    let reminders = h
        .outbox_ids(&id)
        .into_iter()
        .filter(|i| i.contains(".reminder."))
        .count();
    assert_eq!(reminders, 1, "no second reminder");
    assert!(!h
        .store()
        .timers_of_case(&id)
        .unwrap()
        .iter()
        .any(|t| t.step == 0));

    let due = at("2026-11-26T10:00:00+08:00");
    h.clock.set(due);
    assert_eq!(
        h.engine().fire_due(due).unwrap(),
        2,
        "step #2 and the due time"
    );
    let (supervision, _) = h.sent("TS-2026-000001.supervision.1");
    let mut to: Vec<&str> = supervision.to.iter().map(|a| a.email.as_str()).collect();
    to.sort();
    assert_eq!(to, ["billing-lead@corp.example", "billing@corp.example"]);
    let events = h.events(&id);
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::ClockBreached { .. }))
            .count(),
        1
    );
    h.reopen();
    assert_eq!(h.engine().fire_due(due).unwrap(), 0);
}

#[test]
fn a_lifecycle_event_stops_its_clock_and_removes_its_timers() {
    let h = Harness::new();
    h.ingest(&["complaint-billing.eml"]);
    let id = case_id(1);
    let later = at("2026-11-24T15:00:00+08:00");
    let events = h
        .engine()
        .lifecycle_event(&id, ClockEvent::Resolved, later)
        .unwrap();
    assert_eq!(event_names(&events), ["state_changed", "clock_stopped"]);
    let case = h.store().case(&id).unwrap().unwrap();
    assert_eq!(case.state, CaseState::Resolved);
    assert_eq!(case.clocks["investigate"].stopped_at, Some(later));
    assert!(h.store().timers_of_case(&id).unwrap().is_empty());
    // Nothing is pending but the weekly schedule.
    assert_eq!(
        h.engine().next_wakeup(),
        Some(at("2026-11-30T09:00:00+08:00"))
    );
}

#[test]
fn a_schedule_that_missed_three_ticks_sends_one_digest() {
    // Monday 2 November, 08:00: the schedule counts its ticks from here.
    let mut h = Harness::with(at("2026-11-02T08:00:00+08:00"), 3);
    h.ingest(&["complaint-media.eml"]);
    let major = case_id(1);
    assert_eq!(
        h.store().case(&major).unwrap().unwrap().severity(),
        Some("major")
    );

    // The daemon was down over the ticks of 2, 9 and 16 November, 09:00.
    let now = at("2026-11-16T10:00:00+08:00");
    h.clock.set(now);
    h.reopen();
    assert_eq!(h.engine().run_schedules(now).unwrap(), 1);
    assert_eq!(h.engine().run_schedules(now).unwrap(), 0);
    let digest = h
        .store()
        .outbox_entry("complaintd.digest.1")
        .unwrap()
        .expect("one digest");
    assert_eq!(digest.recipients, ["office@corp.example"]);
    assert!(h
        .store()
        .outbox_entry("complaintd.digest.2")
        .unwrap()
        .is_none());
    let (mail, _) = h.sent("complaintd.digest.1");
    assert_eq!(mail.message_id, "complaintd.digest.1@mail.corp.example");
    assert!(
        mail.subject.starts_with("投诉周报：1 件"),
        "{}",
        mail.subject
    );
    assert!(mail.text.contains("TS-2026-000001"), "{}", mail.text);

    h.engine().fire_due(now).unwrap();
    assert_eq!(
        h.engine().next_wakeup(),
        Some(at("2026-11-23T09:00:00+08:00"))
    );
    h.reopen();
    assert_eq!(
        h.engine().run_schedules(now).unwrap(),
        0,
        "progress survives a restart"
    );
    let next = at("2026-11-23T09:00:00+08:00");
    assert_eq!(h.engine().run_schedules(next).unwrap(), 1);
}

#[test]
fn a_reload_with_a_broken_rule_file_keeps_the_running_policy() {
    let h = Harness::new();
    let broken = h.rules().join("50-broken.rules");
    std::fs::write(&broken, "route {\n    when severity ==  -> office\n}\n").unwrap();
    let errors = h.engine().reload().expect_err("the broken file is refused");
    assert!(
        errors.iter().any(|e| e.contains("50-broken.rules:2:")),
        "{errors:#?}"
    );
    let report = h.ingest(&["complaint-billing.eml"]);
    assert_eq!(
        Harness::outcomes(&report),
        [new_case(case_id(1), true, &["billing_dept"])],
        "the old policy still runs"
    );

    std::fs::remove_file(&broken).unwrap();
    let policy = h.rules().join("00-policy.rules");
    let text = std::fs::read_to_string(&policy)
        .unwrap()
        .replace("-> billing_dept", "-> service");
    std::fs::write(&policy, text).unwrap();
    let reloaded = h.engine().reload().expect("the fixed policy loads");
    assert_eq!(reloaded.rule_files, 1);
    let report = h.ingest_raw(vec![variant("complaint-billing.eml", 2, "sun@example.com")]);
    assert_eq!(
        Harness::outcomes(&report),
        [new_case(case_id(2), true, &["service"])]
    );
}

#[test]
fn two_hundred_complaints_in_one_ingest_get_consecutive_numbers() {
    let h = Harness::new();
    let messages: Vec<RawMessage> = (1..=200)
        .map(|n| {
            RawMessage::full(
                format!(
                    "From: customer{n}@example.com\r\nTo: complaints@corp.example\r\n\
                     Subject: Complaint {n}\r\nMessage-ID: <bulk.{n}@example.com>\r\n\
                     Date: Tue, 24 Nov 2026 09:00:00 +0800\r\n\r\nThe meter {n} is broken.\r\n"
                )
                .into_bytes(),
            )
        })
        .collect();
    let report = h.ingest_raw(messages);
    assert_eq!(report.transactions, 1);
    assert_eq!(report.mails_queued, 400);
    assert_eq!(report.checkpoint.map(|c| c.last_uid), Some(200));
    let numbers: Vec<CaseId> = report.new_cases().cloned().collect();
    let expected: Vec<CaseId> = (1..=200).map(case_id).collect();
    assert_eq!(numbers, expected);
    let stored = h.store().list_cases(&Default::default()).unwrap();
    assert_eq!(stored.len(), 200);
    assert_eq!(stored[199].subject, "Complaint 200");
    assert_eq!(
        h.store().queue_depth(),
        400,
        "an acknowledgement and a forward each"
    );
}

#[test]
fn unreadable_and_oversized_mail_is_quarantined_without_failing_the_batch() {
    let h = Harness::new();
    let oversized = RawMessage::headers_only(fixture("complaint-media.eml"), 50 * 1024 * 1024);
    let report = h.ingest_raw(vec![
        RawMessage::full(fixture("not-a-mail.eml")),
        oversized,
        RawMessage::full(fixture("complaint-billing.eml")),
    ]);
    let outcomes = Harness::outcomes(&report);
    assert!(matches!(&outcomes[0],
        Outcome::Quarantined { reason } if reason == "no header could be read: not an RFC 5322 message"));
    assert!(matches!(&outcomes[1],
        Outcome::Quarantined { reason } if reason.starts_with("the message is 52428800 bytes")));
    assert_eq!(outcomes[2], new_case(case_id(1), true, &["billing_dept"]));
    let quarantined = h.store().quarantined().unwrap();
    assert_eq!(quarantined.len(), 2);
    assert!(quarantined[1].record.truncated);
    let kept = h
        .store()
        .quarantined_raw(quarantined[1].id)
        .unwrap()
        .unwrap();
    assert!(kept.ends_with(b"\r\n\r\n"), "only the headers are kept");
    assert!(String::from_utf8_lossy(&kept).contains("Message-ID: <c2.li@example.com>"));

    let again = h.ingest_raw(vec![
        RawMessage::full(fixture("not-a-mail.eml")),
        RawMessage::headers_only(fixture("complaint-media.eml"), 50 * 1024 * 1024),
    ]);
    assert_eq!(
        Harness::outcomes(&again),
        [Outcome::Duplicate, Outcome::Duplicate]
    );
}

#[test]
fn mail_from_our_own_address_is_a_loop_and_is_not_answered() {
    let h = Harness::new();
    let report = h.ingest(&["loop.eml"]);
    assert!(matches!(&report.messages[0].outcome, Outcome::Loop { .. }));
    assert!(h
        .store()
        .list_cases(&Default::default())
        .unwrap()
        .is_empty());
    assert_eq!(h.store().queue_depth(), 0);
}

#[test]
fn the_sender_side_sees_due_mail_and_records_the_outcome() {
    let h = Harness::new();
    h.ingest(&["complaint-billing.eml"]);
    let now = h.clock.now();
    let due = h.engine().due_mail(now, 10).unwrap();
    let ids: Vec<&str> = due.iter().map(|d| d.entry.id.as_str()).collect();
    assert_eq!(ids, ["TS-2026-000001.ack.1", "TS-2026-000001.forward.1"]);
    assert_eq!(
        due[0].bytes,
        h.store()
            .outbox_message("TS-2026-000001.ack.1")
            .unwrap()
            .unwrap()
    );
    h.engine().mail_sent("TS-2026-000001.ack.1", now).unwrap();
    assert_eq!(h.engine().due_mail(now, 10).unwrap().len(), 1);
    assert!(h.events(&case_id(1)).iter().any(|e| matches!(&e.kind,
        EventKind::MailSent { outbox_id } if outbox_id == "TS-2026-000001.ack.1")));
}

// ----- the command line -----

fn run_cli(args: &[&str], clock: &dyn Clock) -> (u8, String, String) {
    use clap::Parser;
    let cli = complaintd::cli::Cli::try_parse_from(
        std::iter::once("complaintd").chain(args.iter().copied()),
    )
    .expect("arguments parse");
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = complaintd::cli::run(cli, clock, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

/// Runs a case command once the store is free (see [`while_locked`]).
fn run_case_cli(args: &[&str], clock: &dyn Clock) -> (u8, String, String) {
    while_locked(|| {
        let (code, out, err) = run_cli(args, clock);
        if err.contains("in use by another process") {
            Err(err)
        } else {
            Ok((code, out, err))
        }
    })
}

fn write_config(h: &Harness, channel: &str) -> PathBuf {
    let secret = h.dir.path().join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef-engine").unwrap();
    let config = h.dir.path().join("complaintd.toml");
    std::fs::write(
        &config,
        format!(
            r#"time_zone = "Asia/Shanghai"
[store]
path = "store"
[rules]
dir = "rules"
[mail]
complaint_address = "complaints@corp.example"
reply_token_secret_file = "secret"
message_id_host = "mail.corp.example"
[[mailbox]]
name = "complaints"
host = "127.0.0.1"
port = 10143
tls = "none"
user = "complaints@corp.example"
password_file = "secret"
channel = "{channel}"
[smtp]
host = "127.0.0.1"
port = 10025
tls = "none"
from = "complaints@corp.example"
"#
        ),
    )
    .unwrap();
    config
}

#[test]
fn config_check_names_the_key_of_every_problem() {
    let h = Harness::new();
    let good = write_config(&h, "own");
    let (code, out, _) = run_cli(
        &["config", "check", "--config", good.to_str().unwrap()],
        &h.clock,
    );
    assert_eq!((code, out), (0, format!("ok: {}\n", good.display())));

    let bad = write_config(&h, "fax");
    let (code, out, _) = run_cli(
        &["config", "check", "--config", bad.to_str().unwrap()],
        &h.clock,
    );
    assert_eq!(code, 1);
    assert_eq!(
        out,
        format!(
            "{}: mailbox[0].channel: channel `fax` is not declared by the policy (declared: own, hotline)\n",
            bad.display()
        )
    );

    let text = std::fs::read_to_string(&bad)
        .unwrap()
        .replace("port = 10025", "port = \"smtp\"");
    std::fs::write(&bad, text).unwrap();
    let (code, out, _) = run_cli(
        &["config", "check", "--config", bad.to_str().unwrap()],
        &h.clock,
    );
    assert_eq!(code, 1);
    assert!(
        out.starts_with(&format!("{}: smtp.port: invalid type", bad.display())),
        "{out}"
    );
}

#[test]
fn case_commands_list_show_and_search_a_stopped_daemons_store() {
    let mut h = Harness::new();
    h.ingest(&["complaint-billing.eml", "complaint-media.eml"]);
    let store = h.store_path();
    let store_arg = store.to_str().unwrap().to_owned();

    // While the engine holds the store, the commands say so.
    let (code, _, err) = run_cli(&["case", "list", "--store", &store_arg], &h.clock);
    assert_eq!(code, 1);
    assert!(err.contains("is in use by another process"), "{err}");

    h.engine = None;
    let (code, out, _) = run_case_cli(&["case", "list", "--store", &store_arg], &h.clock);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "TS-2026-000001  2026-11-24 02:00  assigned  general  billing_dept  wang@example.com  账单有误\n\
         TS-2026-000002  2026-11-24 02:00  assigned  major  office  li@example.com  服务太差\n"
    );
    let config = write_config(&h, "own");
    let (code, out, _) = run_case_cli(
        &[
            "case",
            "list",
            "--open",
            "--json",
            "--config",
            config.to_str().unwrap(),
        ],
        &h.clock,
    );
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(listed[1]["id"], "TS-2026-000002");

    let (code, out, _) = run_case_cli(
        &[
            "case",
            "show",
            "ts-2026-000002",
            "--config",
            config.to_str().unwrap(),
        ],
        &h.clock,
    );
    assert_eq!(code, 0);
    assert!(
        out.starts_with(
            "TS-2026-000002  服务太差\n  state:      assigned\n  received:   2026-11-24 10:00\n"
        ),
        "{out}"
    );
    assert!(
        out.contains("  assigned:   office, cc service (by major)\n"),
        "{out}"
    );
    assert!(
        out.contains("    2026-11-24 10:00  severity = major [exposure: text matches /媒体|曝光|记者/=媒体]\n"),
        "{out}"
    );
    assert!(out.contains("TS-2026-000002.forward.2  scheduled"), "{out}");

    let (code, out, _) = run_case_cli(
        &[
            "case",
            "show",
            "TS-2026-000001",
            "--json",
            "--store",
            &store_arg,
        ],
        &h.clock,
    );
    assert_eq!(code, 0);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["case"]["assignment"]["department"], "billing_dept");
    assert_eq!(shown["events"][0]["event"], "created");
    assert_eq!(shown["mail"].as_array().unwrap().len(), 2);

    let (code, out, _) = run_case_cli(&["case", "search", "账单", "--store", &store_arg], &h.clock);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("TS-2026-000001 ") && out.lines().count() == 1,
        "{out}"
    );

    let (code, _, err) = run_case_cli(
        &["case", "show", "TS-2026-000099", "--store", &store_arg],
        &h.clock,
    );
    assert_eq!((code, err.as_str()), (1, "error: no case TS-2026-000099\n"));
    let missing = h.dir.path().join("nowhere");
    let (code, _, err) = run_case_cli(
        &["case", "list", "--store", missing.to_str().unwrap()],
        &h.clock,
    );
    assert_eq!(code, 1);
    assert_eq!(err, format!("error: no store at {}\n", missing.display()));
    assert!(!missing.exists(), "inspecting creates no store");
}

#[test]
fn a_sender_address_mail_cannot_go_to_still_opens_a_forwarded_case() {
    let h = Harness::new();
    let raw = String::from_utf8(fixture("complaint-billing.eml"))
        .unwrap()
        .replace("<wang@example.com>", "<wang@example..com>");
    let report = h.ingest_raw(vec![RawMessage::full(raw.into_bytes())]);
    let id = case_id(1);
    assert_eq!(
        Harness::outcomes(&report),
        [new_case(id.clone(), false, &["billing_dept"])]
    );
    assert_eq!(h.outbox_ids(&id), ["TS-2026-000001.forward.1"]);
    assert!(h.events(&id).iter().any(|e| matches!(&e.kind,
        EventKind::Note { text } if text.starts_with("the acknowledgement cannot be sent: \"wang@example..com\" is not a valid mail address"))),
        "{:#?}", h.events(&id));
}

#[test]
fn waiting_on_the_customer_pauses_the_clock_and_its_timers_until_work_resumes() {
    let h = Harness::new();
    h.ingest(&["complaint-billing.eml"]);
    let id = case_id(1);
    let engine = h.engine();
    let refused = engine
        .change_state(&id, CaseState::Closed, "operator", h.clock.now())
        .expect_err("assigned cannot become closed");
    assert!(
        refused
            .to_string()
            .starts_with("a case that is assigned to a department cannot become closed"),
        "{refused}"
    );
    assert!(h.events(&id).iter().all(|e| !matches!(
        &e.kind,
        EventKind::StateChanged {
            to: CaseState::Closed,
            ..
        }
    )));

    let paused_at = at("2026-11-24T16:00:00+08:00");
    let events = engine
        .change_state(&id, CaseState::WaitingOnCustomer, "need-info", paused_at)
        .unwrap();
    assert_eq!(event_names(&events), ["state_changed", "clock_paused"]);
    assert!(h.store().timers_of_case(&id).unwrap().is_empty());

    // Six hours later the customer has answered: the clock resumes, its due
    // time six hours later than before, and its timers are back.
    let resumed_at = at("2026-11-24T22:00:00+08:00");
    let events = engine
        .change_state(&id, CaseState::InProgress, "customer answered", resumed_at)
        .unwrap();
    assert_eq!(event_names(&events), ["state_changed", "clock_resumed"]);
    let clock = &h.store().case(&id).unwrap().unwrap().clocks["investigate"];
    assert_eq!(clock.due, at("2026-11-26T16:00:00+08:00"));
    let due_timer = h
        .store()
        .timers_of_case(&id)
        .unwrap()
        .into_iter()
        .find(|t| t.step == DUE_TIMER_STEP)
        .expect("the due timer is back");
    assert_eq!(due_timer.due, clock.due);
}

#[test]
fn a_mail_claiming_one_of_our_message_ids_cannot_block_the_real_mail() {
    let h = Harness::new();
    // A stranger sends a mail with the Message-ID case 1's acknowledgement
    // will have; it must not take that id from the real mail.
    let forged = String::from_utf8(fixture("complaint-media.eml"))
        .unwrap()
        .replace(
            "<c2.li@example.com>",
            "<TS-2026-000001.ack.1@mail.corp.example>",
        );
    let report = h.ingest_raw(vec![RawMessage::full(forged.into_bytes())]);
    match &Harness::outcomes(&report)[..] {
        [Outcome::Loop { reason }] => assert!(reason.contains("of our own domain"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(report.messages[0].message_id.starts_with("sha256:"));
    let report = h.ingest(&["complaint-billing.eml"]);
    assert_eq!(
        Harness::outcomes(&report),
        [new_case(case_id(1), true, &["billing_dept"])]
    );
    let (ack, _) = h.sent("TS-2026-000001.ack.1");
    assert_eq!(ack.message_id, "TS-2026-000001.ack.1@mail.corp.example");
}

// A template that fails when a mail is rendered: the plain fallback text goes
// out and the case's log says so once, from the rendering of the mail's own
// identity (the engine no longer renders a placeholder copy first).

/// Replaces the template file `file` by one that fails to render for case
/// `failing_case` only (so the load-time dry run, whose example case is
/// TS-2026-000001, passes), and reloads the policy.
fn break_template_for(h: &mut Harness, file: &str, failing_case: &str) {
    let text = format!(
        "Subject: 通知\n\n{{% if case.number == \"{failing_case}\" %}}{{{{ no_such_variable }}}}\
         {{% endif %}}案件 {{{{ case.number }}}}\n"
    );
    std::fs::write(h.rules().join("templates").join(file), text).unwrap();
    h.reopen();
}

/// The notes of a case's log that say a template failed.
fn template_failure_notes(events: &[Event]) -> Vec<&Event> {
    events
        .iter()
        .filter(
            |e| matches!(&e.kind, EventKind::Note { text } if text.contains("the template failed")),
        )
        .collect()
}

#[test]
fn an_acknowledgement_whose_template_fails_sends_the_plain_text_and_notes_it_once() {
    let mut h = Harness::new();
    break_template_for(&mut h, "acknowledgement.zh.txt", "TS-2026-000002");
    let report = h.ingest_raw(vec![
        variant("complaint-billing.eml", 1, "a@example.com"),
        variant("complaint-billing.eml", 2, "b@example.com"),
    ]);
    assert_eq!(
        Harness::outcomes(&report),
        [
            new_case(case_id(1), true, &["billing_dept"]),
            new_case(case_id(2), true, &["billing_dept"]),
        ]
    );

    // Case 1's template renders: its own text, no note.
    let (ack, _) = h.sent("TS-2026-000001.ack.1");
    assert_eq!(ack.subject, "[TS-2026-000001] 通知");
    assert_eq!(ack.text.trim(), "案件 TS-2026-000001");
    assert!(template_failure_notes(&h.events(&case_id(1))).is_empty());

    // Case 2's fails: the plain text is queued and noted once, just before
    // the acknowledgement's own event, at the time of the mail.
    let (ack, _) = h.sent("TS-2026-000002.ack.1");
    assert_eq!(ack.subject, "[TS-2026-000002] Complaint received");
    assert!(
        ack.text
            .starts_with("Your complaint has been registered as case TS-2026-000002."),
        "{}",
        ack.text
    );
    let events = h.events(&case_id(2));
    let notes = template_failure_notes(&events);
    assert_eq!(notes.len(), 1, "{events:#?}");
    let EventKind::Note { text } = &notes[0].kind else {
        unreachable!("only notes are selected")
    };
    assert!(
        text.starts_with("the acknowledgement: the template failed (")
            && text.contains("acknowledgement.zh.txt:3")
            && text.ends_with("); a plain text was sent"),
        "{text}"
    );
    assert_eq!(notes[0].at, at("2026-11-24T10:00:00+08:00"));
    let position = events.iter().position(|e| e == notes[0]).unwrap();
    assert!(
        matches!(&events[position + 1].kind,
            EventKind::MailQueued { outbox_id, .. } if outbox_id == "TS-2026-000002.ack.1"),
        "{events:#?}"
    );
    assert_eq!(h.outbox_ids(&case_id(2)).len(), 2, "the forward goes too");
}

#[test]
fn an_escalation_mail_whose_template_fails_sends_the_plain_text_and_notes_it_once() {
    let mut h = Harness::new();
    h.ingest_raw(vec![
        variant("complaint-billing.eml", 1, "a@example.com"),
        variant("complaint-billing.eml", 2, "b@example.com"),
    ]);
    break_template_for(&mut h, "reminder.zh.txt", "TS-2026-000002");
    let half_time = at("2026-11-25T10:00:00+08:00");
    h.clock.set(half_time);
    assert_eq!(h.engine().fire_due(half_time).unwrap(), 2);

    let (reminder, _) = h.sent("TS-2026-000001.reminder.1");
    assert_eq!(reminder.text.trim(), "案件 TS-2026-000001");
    assert!(template_failure_notes(&h.events(&case_id(1))).is_empty());

    let (reminder, _) = h.sent("TS-2026-000002.reminder.1");
    assert_eq!(
        reminder.text.trim(),
        "Case TS-2026-000002: the deadline 调查时限 is due 2026-11-26 10:00 (escalation step 1)."
    );
    let to: Vec<&str> = reminder.to.iter().map(|a| a.email.as_str()).collect();
    assert_eq!(to, ["billing@corp.example"]);
    let events = h.events(&case_id(2));
    let notes = template_failure_notes(&events);
    assert_eq!(notes.len(), 1, "{events:#?}");
    assert!(
        matches!(&notes[0].kind, EventKind::Note { text }
            if text.starts_with("the reminder mail of deadline investigate: the template failed (")
                && text.ends_with("); a plain text was sent")),
        "{:?}",
        notes[0]
    );
    assert_eq!(notes[0].at, half_time);

    // The timer is gone with the mail: nothing fires, nothing is noted again.
    h.reopen();
    assert_eq!(h.engine().fire_due(half_time).unwrap(), 0);
    assert_eq!(template_failure_notes(&h.events(&case_id(2))).len(), 1);
}

#[test]
fn a_mail_that_cannot_be_built_is_left_out_with_one_note_and_its_template_is_not_rendered() {
    let mut h = Harness::new();
    break_template_for(&mut h, "acknowledgement.zh.txt", "TS-2026-000002");
    let unusable = String::from_utf8(fixture("complaint-billing.eml"))
        .unwrap()
        .replace("<c1.wang@example.com>", "<c1-2.wang@example.com>")
        .replace("<wang@example.com>", "<wang@example..com>");
    let report = h.ingest_raw(vec![
        variant("complaint-billing.eml", 1, "a@example.com"),
        RawMessage::full(unusable.into_bytes()),
    ]);
    assert_eq!(
        Harness::outcomes(&report),
        [
            new_case(case_id(1), true, &["billing_dept"]),
            new_case(case_id(2), false, &["billing_dept"]),
        ]
    );
    assert_eq!(h.outbox_ids(&case_id(2)), ["TS-2026-000002.forward.1"]);
    let events = h.events(&case_id(2));
    let cannot: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::Note { text }
            if text.starts_with("the acknowledgement cannot be sent: \"wang@example..com\" is not a valid mail address")))
        .collect();
    assert_eq!(cannot.len(), 1, "{events:#?}");
    assert!(template_failure_notes(&events).is_empty(), "{events:#?}");
}

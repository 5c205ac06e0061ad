//! Store behaviour on a real sled database in a temporary directory:
//! atomicity, durability across reopen, case numbering, timers, the outbox
//! state machine, history counts, de-duplication and schema refusal.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, TimeZone, Utc};
use complaintd::case::{Address, Case, CaseId, CaseState, Event, EventKind, FieldValue};
use complaintd::mail::outbound::{self, OutgoingMail};
use complaintd::mail::KnownMessage;
use complaintd::rules::eval::{CaseHistory, SenderCount, SenderGroup};
use complaintd::store::{
    CaseFilter, CaseRef, ChangeOutcome, ChangeSet, Checkpoint, DeliveryFailure, IngestBatch,
    LockWait, MailDraft, MailIdentity, MessageRecord, OutboxState, QuarantineRecord, RenderedMail,
    Store, StoreError, StoreSettings, Timer, SCHEMA_VERSION,
};
use proptest::prelude::*;
use tempfile::TempDir;

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
        .single()
        .expect("valid time")
}

fn t0() -> DateTime<Utc> {
    at(2026, 3, 2, 9, 0)
}

fn draft(sender: &str, created_at: DateTime<Utc>, subject: &str) -> Case {
    Case::new(
        CaseId("unnumbered".into()),
        created_at,
        "email",
        Address::new(sender, None),
        subject,
        "zh",
    )
}

fn note(at: DateTime<Utc>, text: &str) -> Event {
    Event {
        at,
        kind: EventKind::Note { text: text.into() },
    }
}

/// Renders with the real outgoing-mail builder, as the daemon does.
fn render(identity: &MailIdentity) -> Result<RenderedMail, String> {
    let mail = OutgoingMail {
        case: identity.case.clone(),
        purpose: identity.purpose.clone(),
        sequence: identity.sequence,
        from: Address::new("complaints@corp.example", Some("投诉中心")),
        to: vec![Address::new("customer@example.com", None)],
        cc: Vec::new(),
        reply_to: None,
        subject: "您的投诉已受理".into(),
        text: "我们已收到您的投诉。".into(),
        html: None,
        in_reply_to: None,
        references: Vec::new(),
        attachments: Vec::new(),
        date: t0(),
    };
    let built = outbound::build(&mail, "corp.example").map_err(|e| e.to_string())?;
    Ok(RenderedMail {
        message_id: built.message_id,
        subject: built.subject,
        bytes: built.bytes,
        template_failure: None,
    })
}

/// Renders a minimal message whose Message-ID follows the outbox id.
fn render_plain(identity: &MailIdentity) -> Result<RenderedMail, String> {
    let message_id = format!("{}@corp.example", identity.outbox_id);
    Ok(RenderedMail {
        bytes: format!("Message-ID: <{message_id}>\r\n\r\nx\r\n").into_bytes(),
        message_id,
        subject: identity.purpose.clone(),
        template_failure: None,
    })
}

/// A weekly digest to the general manager, of no case.
fn digest() -> MailDraft {
    MailDraft::new(
        "digest",
        "weekly-digest",
        "complaints@corp.example",
        vec!["gm@corp.example".into()],
        t0(),
        render,
    )
}

fn ack(to: &str, at: DateTime<Utc>) -> MailDraft {
    MailDraft::new(
        "ack",
        "acknowledgement",
        "complaints@corp.example",
        vec![to.into()],
        at,
        render,
    )
}

fn open(dir: &TempDir) -> Store {
    Store::open(dir.path().join("db")).expect("open store")
}

/// One complete "new complaint" change set, as the ingest path builds it.
fn new_complaint(message_id: &str, sender: &str, when: DateTime<Utc>) -> (ChangeSet, CaseRef) {
    let mut changes = ChangeSet::for_message(message_id, when).expect("message id");
    let case = changes
        .new_case(draft(sender, when, "停气 通知"))
        .expect("new case");
    changes.append_event(
        &case,
        Event {
            at: when,
            kind: EventKind::Created {
                message_id: message_id.into(),
                channel: "email".into(),
                sender: sender.into(),
            },
        },
    );
    changes.link_message(&case).expect("link");
    changes.add_timer(&case, "forward", 0, when + Duration::hours(1));
    changes.queue_mail(&case, ack(sender, when)).expect("mail");
    changes.count_ack(sender, when);
    (changes, case)
}

fn ingest_new(store: &Store, message_id: &str, sender: &str, when: DateTime<Utc>) -> CaseId {
    let (changes, case) = new_complaint(message_id, sender, when);
    let outcome = store.apply(&changes).expect("commit");
    outcome.case_id(&case).expect("numbered")
}

fn ids(cases: &[Case]) -> Vec<String> {
    cases.iter().map(|c| c.id.0.clone()).collect()
}

#[test]
fn one_message_commits_everything_together() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    let (changes, case) = new_complaint("<m1@customer.example>", "a@customer.example", t0());
    let outcome = store
        .ingest(
            "INBOX",
            Checkpoint {
                uid_validity: 9,
                last_uid: 41,
            },
            &changes,
        )
        .expect("commit");
    let id = outcome.case_id(&case).expect("numbered");
    assert_eq!(id.0, "TS-2026-000001");

    let stored = store.case(&id).expect("read").expect("case stored");
    assert_eq!(stored.id, id);
    assert_eq!(stored.sender.email, "a@customer.example");
    assert_eq!(
        store.message("m1@customer.example").expect("read"),
        Some(MessageRecord::Incoming {
            case: id.clone(),
            at: t0()
        })
    );
    assert_eq!(
        store.checkpoint("INBOX").expect("read"),
        Some(Checkpoint {
            uid_validity: 9,
            last_uid: 41
        })
    );
    assert_eq!(
        store.timers_of_case(&id).expect("read"),
        vec![Timer {
            due: t0() + Duration::hours(1),
            case: id.clone(),
            deadline: "forward".into(),
            step: 0
        }]
    );
    let events = store.events(&id).expect("read");
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| match &e.kind {
            EventKind::Created { .. } => "created",
            EventKind::MailQueued { .. } => "mail_queued",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["created", "mail_queued"]);
    let mail = &outcome.applied().expect("applied").mails[0];
    assert_eq!(mail.outbox_id, "TS-2026-000001.ack.1");
    assert_eq!(mail.message_id, "TS-2026-000001.ack.1@corp.example");
    assert_eq!(
        store
            .message("<TS-2026-000001.ack.1@corp.example>")
            .expect("read")
            .as_ref()
            .map(KnownMessage::from),
        Some(KnownMessage::Sent {
            case: Some(id.clone()),
            purpose: "ack".into()
        }),
        "a reply to the acknowledgement threads to the case"
    );
    assert_eq!(
        store.message(&mail.message_id).expect("read"),
        Some(MessageRecord::Outgoing {
            case: Some(id.clone()),
            outbox_id: mail.outbox_id.clone(),
            purpose: "ack".into(),
        })
    );
    assert_eq!(
        store
            .acks_in_hour("A@customer.example", t0())
            .expect("read"),
        1
    );
    assert_eq!(store.queue_depth(), 1);
}

#[test]
fn a_conflict_in_a_batch_leaves_nothing_behind() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    let existing = ingest_new(&store, "<old@x>", "old@customer.example", t0());
    let base = store.case(&existing).expect("read").expect("stored");
    let events_before = store.events(&existing).expect("read");

    // Someone else changes the case after we read it.
    let mut concurrent = base.clone();
    concurrent.state = CaseState::Assigned;
    let mut other = ChangeSet::new();
    other
        .update_case(&base, concurrent.clone())
        .expect("update");
    store.apply(&other).expect("concurrent update");

    let mut batch = IngestBatch::new();
    let (first, _) = new_complaint(
        "<new@x>",
        "new@customer.example",
        t0() + Duration::minutes(5),
    );
    batch.push(first);
    let mut stale = ChangeSet::for_message("<reply@x>", t0()).expect("id");
    let mut updated = base.clone();
    updated.state = CaseState::InProgress;
    let target = stale.update_case(&base, updated).expect("update");
    stale.append_event(&target, note(t0(), "customer replied"));
    stale.link_message(&target).expect("link");
    batch.push(stale);
    batch.advance_checkpoint(
        "INBOX",
        Checkpoint {
            uid_validity: 1,
            last_uid: 7,
        },
    );

    let err = store.commit(&batch).expect_err("stale base must abort");
    assert!(
        matches!(&err, StoreError::Conflict(id) if *id == existing),
        "{err}"
    );

    // Nothing of either change set, nor the checkpoint, was written.
    assert_eq!(store.message("new@x").expect("read"), None);
    assert_eq!(store.message("reply@x").expect("read"), None);
    assert_eq!(store.checkpoint("INBOX").expect("read"), None);
    assert_eq!(store.case(&existing).expect("read"), Some(concurrent));
    assert_eq!(
        store.events(&existing).expect("read").len(),
        events_before.len()
    );
    assert_eq!(
        ids(&store.list_cases(&CaseFilter::default()).expect("list")),
        ["TS-2026-000001"]
    );
    assert_eq!(
        store
            .due_timers(t0() + Duration::days(1))
            .expect("read")
            .len(),
        1
    );
    assert_eq!(store.queue_depth(), 1);
    assert_eq!(
        store
            .acks_in_hour("new@customer.example", t0())
            .expect("read"),
        0
    );

    // The number the aborted batch would have used is the next one given.
    let next = ingest_new(&store, "<new@x>", "new@customer.example", t0());
    assert_eq!(next.0, "TS-2026-000002");
}

#[test]
fn a_failing_renderer_or_unknown_case_aborts_the_commit() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    let (mut changes, case) = new_complaint("<m@x>", "a@x.example", t0());
    changes
        .queue_mail(
            &case,
            MailDraft::new(
                "forward",
                "forward",
                "complaints@corp.example",
                vec!["service@corp.example".into()],
                t0(),
                |_| Err("template `forward` has no zh variant".into()),
            ),
        )
        .expect("queue");
    let err = store.apply(&changes).expect_err("render fails");
    assert!(
        matches!(&err, StoreError::Render { outbox_id, .. } if outbox_id == "TS-2026-000001.forward.1"),
        "{err}"
    );
    assert!(store
        .list_cases(&CaseFilter::default())
        .expect("list")
        .is_empty());
    assert_eq!(store.message("m@x").expect("read"), None);

    let mut orphan = ChangeSet::new();
    orphan.append_event(
        &CaseRef::Existing(CaseId("TS-2026-999999".into())),
        note(t0(), "lost"),
    );
    let err = store.apply(&orphan).expect_err("unknown case");
    assert!(matches!(err, StoreError::UnknownCase(_)), "{err}");
}

#[test]
fn a_message_without_a_disposition_is_refused_before_writing() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    let mut changes = ChangeSet::for_message("<m@x>", t0()).expect("id");
    changes
        .new_case(draft("a@x.example", t0(), "s"))
        .expect("new case");
    let err = store.apply(&changes).expect_err("no disposition");
    assert!(matches!(err, StoreError::InvalidBatch(_)), "{err}");
    assert!(store
        .list_cases(&CaseFilter::default())
        .expect("list")
        .is_empty());
}

#[test]
fn everything_survives_drop_and_reopen() {
    let dir = TempDir::new().expect("tempdir");
    let (id, outbox_id, bytes) = {
        let store = open(&dir);
        let (mut changes, case) = new_complaint("<m1@x>", "a@x.example", t0());
        let record =
            changes.store_attachment(&case, "../../etc/passwd", "image/png", vec![1, 2, 3]);
        assert_eq!(record.sha256.len(), 64);
        let outcome = store
            .ingest(
                "INBOX",
                Checkpoint {
                    uid_validity: 3,
                    last_uid: 10,
                },
                &changes,
            )
            .expect("commit");
        let id = outcome.case_id(&case).expect("numbered");
        let mut quarantine = ChangeSet::for_message("<broken@x>", t0()).expect("id");
        quarantine
            .quarantine(
                QuarantineRecord {
                    at: t0(),
                    mailbox: "INBOX".into(),
                    uid: Some(11),
                    message_id: Some("broken@x".into()),
                    reason: "MIME boundary never closed".into(),
                    size: 5,
                    truncated: false,
                },
                b"junk!".to_vec(),
            )
            .expect("quarantine");
        store.apply(&quarantine).expect("commit");
        let outbox_id = outcome.applied().expect("applied").mails[0]
            .outbox_id
            .clone();
        let bytes = store
            .outbox_message(&outbox_id)
            .expect("read")
            .expect("bytes");
        store.flush().expect("flush");
        (id, outbox_id, bytes)
    };

    let store = open(&dir);
    let case = store.case(&id).expect("read").expect("case survives");
    assert_eq!(case.sender.email, "a@x.example");
    assert_eq!(store.events(&id).expect("read").len(), 2);
    assert_eq!(
        store.checkpoint("INBOX").expect("read"),
        Some(Checkpoint {
            uid_validity: 3,
            last_uid: 10
        })
    );
    assert_eq!(
        store.outbox_message(&outbox_id).expect("read"),
        Some(bytes.clone())
    );
    assert!(
        String::from_utf8_lossy(&bytes).contains("Message-ID: <TS-2026-000001.ack.1@corp.example>")
    );
    assert_eq!(
        store.next_timer_due().expect("read"),
        Some(t0() + Duration::hours(1))
    );
    let attachments = store.case_attachments(&id).expect("read");
    assert_eq!(attachments.len(), 1);
    assert_eq!(attachments[0].name, "../../etc/passwd");
    assert_eq!(
        store.attachment(&attachments[0].sha256).expect("read"),
        Some(vec![1, 2, 3])
    );
    let quarantined = store.quarantined().expect("read");
    assert_eq!(quarantined.len(), 1);
    assert_eq!(quarantined[0].record.reason, "MIME boundary never closed");
    assert_eq!(
        store.quarantined_raw(quarantined[0].id).expect("read"),
        Some(b"junk!".to_vec())
    );
    assert_eq!(
        store.message("broken@x").expect("read"),
        Some(MessageRecord::Quarantined {
            quarantine_id: quarantined[0].id,
            at: t0()
        })
    );
}

#[test]
fn case_numbers_have_no_gaps_across_reopen_and_aborts() {
    let dir = TempDir::new().expect("tempdir");
    let mut seen = Vec::new();
    for round in 0..3 {
        let store = open(&dir);
        for n in 0..3 {
            let mid = format!("<r{round}n{n}@x>");
            seen.push(ingest_new(&store, &mid, "a@x.example", t0()).0);
        }
        // An aborted commit in every round consumes no number.
        let (mut bad, case) = new_complaint(&format!("<bad{round}@x>"), "a@x.example", t0());
        bad.append_event(&CaseRef::Existing(CaseId("nope".into())), note(t0(), "x"));
        assert!(store.apply(&bad).is_err());
        assert!(store
            .message(&format!("bad{round}@x"))
            .expect("read")
            .is_none());
        drop(case);
    }
    let expected: Vec<String> = (1..=9).map(|n| format!("TS-2026-{n:06}")).collect();
    assert_eq!(seen, expected);
    let store = open(&dir);
    assert_eq!(
        ids(&store.list_cases(&CaseFilter::default()).expect("list")),
        expected
    );
}

#[test]
fn case_numbers_restart_each_year_in_the_configured_time_zone() {
    let dir = TempDir::new().expect("tempdir");
    let settings = StoreSettings {
        case_prefix: "GAS".into(),
        case_number_width: 4,
        case_number_tz: chrono_tz::Asia::Shanghai,
        ..StoreSettings::default()
    };
    let store = Store::open_with(dir.path().join("db"), settings).expect("open");
    // 2026-12-31 17:00 UTC is already 2027-01-01 01:00 in Shanghai.
    let late_2026 = at(2026, 12, 31, 15, 0);
    let new_year_in_shanghai = at(2026, 12, 31, 17, 0);
    assert_eq!(
        ingest_new(&store, "<a@x>", "a@x.example", late_2026).0,
        "GAS-2026-0001"
    );
    assert_eq!(
        ingest_new(&store, "<b@x>", "a@x.example", late_2026).0,
        "GAS-2026-0002"
    );
    assert_eq!(
        ingest_new(&store, "<c@x>", "a@x.example", new_year_in_shanghai).0,
        "GAS-2027-0001"
    );
    let outbox = store
        .outbox_of_case(&CaseId("GAS-2027-0001".into()))
        .expect("read");
    assert_eq!(outbox[0].message_id, "GAS-2027-0001.ack.1@corp.example");
}

#[test]
fn a_store_held_open_elsewhere_is_reported_as_locked() {
    let dir = TempDir::new().expect("tempdir");
    let held = open(&dir);
    let err = Store::open(dir.path().join("db")).expect_err("held");
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("is the daemon running?"), "{err}");
    drop(held);
}

#[test]
fn a_held_lock_is_waited_for_only_when_asked_to() {
    let dir = TempDir::new().expect("tempdir");
    let held = open(&dir);
    let path = dir.path().join("db");
    let err =
        Store::open_waiting(&path, StoreSettings::default(), LockWait::Fail).expect_err("held");
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    drop(held);
    // Retrying outlasts the moment sled's threads keep the lock of the closed store.
    Store::open_waiting(&path, StoreSettings::default(), LockWait::Retry)
        .expect("the closed store opens again");
}

/// The snapshot file an open leaves when the process is killed while sled
/// writes it: created, nothing written yet. Its name sorts after every
/// finished snapshot, so sled would read it first.
const UNFINISHED_SNAPSHOT: &str = "snap.FFFFFFFFFFFFFFFF.generating";

#[test]
fn a_snapshot_left_unfinished_by_a_killed_open_is_removed_and_the_store_opens() {
    let dir = TempDir::new().expect("tempdir");
    let case = {
        let store = open(&dir);
        let case = ingest_new(
            &store,
            "<kept@customer.example>",
            "a@customer.example",
            t0(),
        );
        store.flush().expect("flush");
        case
    };
    let path = dir.path().join("db");
    let unfinished = path.join(UNFINISHED_SNAPSHOT);
    std::fs::write(&unfinished, b"").expect("write the unfinished snapshot");

    let store = Store::open_waiting(&path, StoreSettings::default(), LockWait::Retry)
        .expect("the store opens despite the unfinished snapshot");
    assert!(!unfinished.exists(), "the unfinished snapshot is gone");
    let stored = store
        .case(&case)
        .expect("read")
        .expect("the case is still there");
    assert_eq!(stored.id, case);
    assert!(store
        .message("<kept@customer.example>")
        .expect("read")
        .is_some());
}

#[test]
fn a_snapshot_of_a_store_open_elsewhere_is_left_alone() {
    let dir = TempDir::new().expect("tempdir");
    let held = open(&dir);
    let path = dir.path().join("db");
    // While a process holds the store, a `.generating` file may be the
    // snapshot it is writing right now.
    let in_progress = path.join(UNFINISHED_SNAPSHOT);
    std::fs::write(&in_progress, b"being written").expect("write");
    let err =
        Store::open_waiting(&path, StoreSettings::default(), LockWait::Fail).expect_err("held");
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(
        in_progress.exists(),
        "another process's snapshot is not touched"
    );
    std::fs::remove_file(&in_progress).expect("clean up");
    drop(held);
}

#[test]
fn invalid_settings_are_refused() {
    let dir = TempDir::new().expect("tempdir");
    let settings = StoreSettings {
        case_prefix: "T.S".into(),
        ..StoreSettings::default()
    };
    let err = Store::open_with(dir.path().join("db"), settings).expect_err("bad prefix");
    assert!(matches!(err, StoreError::Settings(_)), "{err}");

    let settings = StoreSettings {
        cache_mb: 4,
        ..StoreSettings::default()
    };
    let err = Store::open_with(dir.path().join("db"), settings).expect_err("tiny cache");
    assert_eq!(
        err.to_string(),
        StoreError::Settings("page cache of 4 MiB is below the minimum of 8 MiB".into())
            .to_string()
    );
}

#[test]
fn timers_come_out_in_due_order_and_clock_changes_replace_them() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    assert_eq!(store.next_timer_due().expect("read"), None);
    let a = ingest_new(&store, "<a@x>", "a@x.example", t0());
    let b = ingest_new(&store, "<b@x>", "b@x.example", t0());
    // Each case already has its `forward` timer at t0 + 1h.
    let mut changes = ChangeSet::new();
    changes.replace_clock_timers(
        &CaseRef::from(&a),
        "resolve",
        vec![
            (2, t0() + Duration::days(3)),
            (0, t0() + Duration::hours(12)),
        ],
    );
    changes.add_timer(
        &CaseRef::from(&b),
        "resolve",
        1,
        t0() + Duration::minutes(30),
    );
    store.apply(&changes).expect("commit");

    assert_eq!(
        store.next_timer_due().expect("read"),
        Some(t0() + Duration::minutes(30))
    );
    let due: Vec<(String, String, usize)> = store
        .due_timers(t0() + Duration::hours(12))
        .expect("read")
        .into_iter()
        .map(|t| (t.case.0, t.deadline, t.step))
        .collect();
    assert_eq!(
        due,
        [
            (b.0.clone(), "resolve".to_owned(), 1),
            (a.0.clone(), "forward".to_owned(), 0),
            (b.0.clone(), "forward".to_owned(), 0),
            (a.0.clone(), "resolve".to_owned(), 0),
        ],
        "due order, the `until` edge included, the 3-day timer not yet"
    );
    assert_eq!(
        store
            .due_timers(t0() + Duration::hours(12) - Duration::nanoseconds(1))
            .expect("read")
            .len(),
        3
    );

    // Pausing the clock replaces its timers in the same commit.
    let mut pause = ChangeSet::new();
    pause.replace_clock_timers(&CaseRef::from(&a), "resolve", Vec::new());
    pause.append_event(
        &CaseRef::from(&a),
        Event {
            at: t0(),
            kind: EventKind::ClockPaused {
                deadline: "resolve".into(),
            },
        },
    );
    store.apply(&pause).expect("commit");
    assert!(store
        .timers_of_case(&a)
        .expect("read")
        .iter()
        .all(|t| t.deadline != "resolve"));
    assert_eq!(
        store
            .due_timers(t0() + Duration::days(30))
            .expect("read")
            .len(),
        3
    );

    // A fired timer is removed by the change set that handles it.
    let first = store.due_timers(t0() + Duration::hours(1)).expect("read")[0].clone();
    let mut fired = ChangeSet::new();
    fired.remove_timer(&first);
    store.apply(&fired).expect("commit");
    assert_eq!(
        store.next_timer_due().expect("read"),
        Some(t0() + Duration::hours(1))
    );
    assert!(!store
        .due_timers(t0() + Duration::days(30))
        .expect("read")
        .contains(&first));
}

#[test]
fn clock_changes_to_a_case_created_in_the_same_commit_build_on_each_other() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    let (mut changes, case) = new_complaint("<c@x>", "c@x.example", t0());
    // `new_complaint` starts `forward`; here `resolve` is started, moved,
    // and `answer` started and stopped, all before the case has a number.
    changes.add_timer(&case, "resolve", 0, t0() + Duration::hours(8));
    changes.replace_clock_timers(
        &case,
        "resolve",
        vec![
            (0, t0() + Duration::hours(2)),
            (1, t0() + Duration::hours(4)),
        ],
    );
    changes.add_timer(&case, "resolve", 2, t0() + Duration::hours(6));
    changes.add_timer(&case, "answer", 0, t0() + Duration::hours(1));
    changes.replace_clock_timers(&case, "answer", Vec::new());
    let id = store
        .apply(&changes)
        .expect("commit")
        .case_id(&case)
        .expect("numbered");

    let mut timers: Vec<(String, usize, DateTime<Utc>)> = store
        .timers_of_case(&id)
        .expect("read")
        .into_iter()
        .map(|t| (t.deadline, t.step, t.due))
        .collect();
    timers.sort();
    assert_eq!(
        timers,
        [
            ("forward".to_owned(), 0, t0() + Duration::hours(1)),
            ("resolve".to_owned(), 0, t0() + Duration::hours(2)),
            ("resolve".to_owned(), 1, t0() + Duration::hours(4)),
            ("resolve".to_owned(), 2, t0() + Duration::hours(6)),
        ],
        "each change saw the ones before it; the replaced 8-hour slot is gone"
    );
    // The timer index holds each clock's earliest slot once: nothing of
    // the replaced slot or the stopped clock fires.
    let due: Vec<(String, usize)> = store
        .due_timers(t0() + Duration::days(1))
        .expect("read")
        .into_iter()
        .map(|t| (t.deadline, t.step))
        .collect();
    assert_eq!(
        due,
        [
            ("forward".to_owned(), 0),
            ("resolve".to_owned(), 0),
            ("resolve".to_owned(), 1),
            ("resolve".to_owned(), 2),
        ]
    );
}

#[test]
fn every_due_step_of_a_clock_comes_out_and_fired_steps_go() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    let a = ingest_new(&store, "<a@x>", "a@x.example", t0());
    let steps = [
        (0, t0() + Duration::hours(2)),
        (1, t0() + Duration::hours(4)),
        (2, t0() + Duration::hours(6)),
    ];
    let mut changes = ChangeSet::new();
    changes.replace_clock_timers(&CaseRef::from(&a), "resolve", steps.to_vec());
    store.apply(&changes).expect("commit");
    let resolve_steps = |until: DateTime<Utc>| -> Vec<usize> {
        store
            .due_timers(until)
            .expect("read")
            .into_iter()
            .filter(|t| t.deadline == "resolve")
            .map(|t| t.step)
            .collect()
    };
    // A daemon that was down across all three steps finds all three at once.
    assert_eq!(resolve_steps(t0() + Duration::days(1)), [0, 1, 2]);
    assert_eq!(resolve_steps(t0() + Duration::hours(4)), [0, 1]);

    // Firing the middle step first leaves the others; firing the first moves
    // the clock's next due time to the last.
    let due = store.due_timers(t0() + Duration::days(1)).expect("read");
    let step = |n: usize| {
        due.iter()
            .find(|t| t.deadline == "resolve" && t.step == n)
            .expect("due")
            .clone()
    };
    let mut fired = ChangeSet::new();
    fired.remove_timer(&step(1));
    store.apply(&fired).expect("commit");
    assert_eq!(resolve_steps(t0() + Duration::days(1)), [0, 2]);
    let mut fired = ChangeSet::new();
    fired.remove_timer(&step(0));
    fired.remove_timer(&ingest_forward_timer(&store, &a));
    store.apply(&fired).expect("commit");
    assert_eq!(
        store.next_timer_due().expect("read"),
        Some(t0() + Duration::hours(6))
    );
    let mut fired = ChangeSet::new();
    fired.remove_timer(&step(2));
    store.apply(&fired).expect("commit");
    assert_eq!(store.next_timer_due().expect("read"), None);
    assert!(store.timers_of_case(&a).expect("read").is_empty());
}

/// The `forward` timer every test complaint starts with.
fn ingest_forward_timer(store: &Store, case: &CaseId) -> Timer {
    store
        .timers_of_case(case)
        .expect("read")
        .into_iter()
        .find(|t| t.deadline == "forward")
        .expect("a forward timer")
}

fn drain_one(store: &Store, now: DateTime<Utc>) -> String {
    let due = store.due_outbox(now, 10).expect("read");
    assert_eq!(due.len(), 1, "{due:?}");
    due[0].id.clone()
}

#[test]
fn outbox_entries_move_through_their_states_and_persist() {
    let dir = TempDir::new().expect("tempdir");
    let case;
    let id;
    {
        let store = open(&dir);
        case = ingest_new(&store, "<a@x>", "a@x.example", t0());
        assert!(store
            .due_outbox(t0() - Duration::seconds(1), 10)
            .expect("read")
            .is_empty());
        id = drain_one(&store, t0());
        assert_eq!(store.next_outbox_due().expect("read"), Some(t0()));

        let retry_at = t0() + Duration::minutes(5);
        let entry = store
            .outbox_failed(
                &id,
                DeliveryFailure::Temporary {
                    error: "421 try later".into(),
                    next_attempt: retry_at,
                },
                t0(),
            )
            .expect("temporary failure");
        assert_eq!(
            entry.state,
            OutboxState::TemporaryFailure {
                attempts: 1,
                last_error: "421 try later".into(),
                next_attempt: retry_at
            }
        );
        assert!(store.due_outbox(t0(), 10).expect("read").is_empty());
        assert_eq!(store.next_outbox_due().expect("read"), Some(retry_at));
        assert_eq!(store.queue_depth(), 1);
        store.flush().expect("flush");
    }

    let store = open(&dir);
    let retry_at = t0() + Duration::minutes(5);
    assert_eq!(drain_one(&store, retry_at), id);
    let entry = store
        .outbox_failed(
            &id,
            DeliveryFailure::Temporary {
                error: "421 again".into(),
                next_attempt: retry_at + Duration::minutes(10),
            },
            retry_at,
        )
        .expect("second failure");
    assert_eq!(entry.state.failed_attempts(), 2);
    let sent_at = retry_at + Duration::minutes(10);
    let entry = store.outbox_sent(&id, sent_at).expect("sent");
    assert_eq!(entry.state, OutboxState::Sent { at: sent_at });
    assert_eq!(store.queue_depth(), 0);
    assert_eq!(store.next_outbox_due().expect("read"), None);
    // Marking it sent again is the same mail, not a new event.
    store.outbox_sent(&id, sent_at).expect("idempotent");
    let err = store
        .outbox_failed(
            &id,
            DeliveryFailure::Temporary {
                error: "x".into(),
                next_attempt: sent_at,
            },
            sent_at,
        )
        .expect_err("a sent mail does not retry");
    assert!(matches!(err, StoreError::OutboxTransition { .. }), "{err}");
    // A late bounce ends it.
    let entry = store
        .outbox_failed(
            &id,
            DeliveryFailure::Permanent {
                error: "550 no such user".into(),
            },
            sent_at + Duration::hours(1),
        )
        .expect("bounce");
    assert!(matches!(entry.state, OutboxState::PermanentFailure { .. }));
    let err = store.outbox_sent(&id, sent_at).expect_err("final");
    assert!(matches!(err, StoreError::OutboxTransition { .. }), "{err}");
    assert!(matches!(
        store.outbox_sent("TS-2026-000001.nope.1", sent_at),
        Err(StoreError::UnknownOutbox(_))
    ));

    let outcomes: Vec<(bool, String)> = store
        .events(&case)
        .expect("read")
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::MailSent { .. } => Some((true, "sent".to_owned())),
            EventKind::MailFailed {
                permanent, reason, ..
            } => Some((permanent, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            (false, "421 try later".to_owned()),
            (false, "421 again".to_owned()),
            (true, "sent".to_owned()),
            (true, "550 no such user".to_owned()),
        ]
    );
    drop(store);
    let store = open(&dir);
    assert!(matches!(
        store.outbox_entry(&id).expect("read").expect("entry").state,
        OutboxState::PermanentFailure { .. }
    ));
}

#[test]
fn mails_of_one_purpose_get_stable_increasing_identities() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    let case = ingest_new(&store, "<a@x>", "a@x.example", t0());
    let mut changes = ChangeSet::new();
    let target = CaseRef::from(&case);
    for _ in 0..2 {
        changes
            .queue_mail(
                &target,
                MailDraft::new(
                    "督办",
                    "supervision",
                    "complaints@corp.example",
                    vec!["service@corp.example".into()],
                    t0(),
                    render_plain,
                ),
            )
            .expect("queue");
    }
    let outcome = store.apply(&changes).expect("commit");
    let ids: Vec<String> = outcome
        .applied()
        .expect("applied")
        .mails
        .iter()
        .map(|m| m.outbox_id.clone())
        .collect();
    assert_eq!(
        ids,
        [
            "TS-2026-000001.=E7=9D=A3=E5=8A=9E.1",
            "TS-2026-000001.=E7=9D=A3=E5=8A=9E.2"
        ]
    );
    assert_eq!(store.outbox_of_case(&case).expect("read").len(), 3);
    assert_eq!(store.queue_depth(), 3);
}

#[test]
fn digests_belong_to_no_case_and_log_no_event() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    let mut changes = ChangeSet::new();
    for _ in 0..2 {
        changes.queue_mail_without_case(digest()).expect("queue");
    }
    let outcome = store.apply(&changes).expect("commit");
    let mails = &outcome.applied().expect("applied").mails;
    assert_eq!(mails[0].outbox_id, "complaintd.digest.1");
    assert_eq!(mails[1].message_id, "complaintd.digest.2@corp.example");
    assert_eq!(
        store
            .message(&mails[1].message_id)
            .expect("read")
            .as_ref()
            .map(KnownMessage::from),
        Some(KnownMessage::Sent {
            case: None,
            purpose: "digest".into()
        })
    );
    let entry = store
        .outbox_sent("complaintd.digest.1", t0())
        .expect("sent");
    assert_eq!(entry.case, None);
    assert_eq!(store.queue_depth(), 1);
}

#[test]
fn the_queue_depth_is_a_count_that_follows_the_due_index_through_every_change() {
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("db");
    let far = t0() + Duration::days(3650);
    // What the due index holds, walked: the count must always equal it.
    let walked = |store: &Store| store.due_outbox(far, usize::MAX).expect("walk").len();
    let check = |store: &Store, expected: usize, after: &str| {
        assert_eq!(store.queue_depth(), expected, "counted, after {after}");
        assert_eq!(walked(store), expected, "walked, after {after}");
    };
    let ids = {
        let store = Store::open(&path).expect("open");
        check(&store, 0, "opening an empty store");
        let cases: Vec<CaseId> = (0..4)
            .map(|i| {
                ingest_new(
                    &store,
                    &format!("<{i}@x>"),
                    &format!("s{i}@x.example"),
                    t0(),
                )
            })
            .collect();
        check(&store, 4, "four acknowledgements queued");
        let ids: Vec<String> = cases
            .iter()
            .map(|case| store.outbox_of_case(case).expect("read")[0].id.clone())
            .collect();
        store.outbox_attempt(&ids[0], t0()).expect("attempt");
        check(&store, 4, "an attempt (still due, in doubt)");
        store.outbox_sent(&ids[0], t0()).expect("sent");
        check(&store, 3, "one sent");
        store.outbox_sent(&ids[0], t0()).expect("sent again");
        check(&store, 3, "the same one marked sent again");
        let retry = DeliveryFailure::Temporary {
            error: "421 busy".into(),
            next_attempt: t0() + Duration::minutes(5),
        };
        store.outbox_failed(&ids[1], retry, t0()).expect("retry");
        check(&store, 3, "a temporary failure (due again later)");
        let refused = DeliveryFailure::Permanent {
            error: "550 no such user".into(),
        };
        store
            .outbox_failed(&ids[1], refused, t0())
            .expect("given up");
        check(&store, 2, "a permanent failure");
        store.outbox_attempt(&ids[2], t0()).expect("attempt");
        store.outbox_hold(&ids[2], "in doubt", t0()).expect("hold");
        check(&store, 1, "one in doubt held");
        store.flush().expect("flush");
        ids
    };
    let store = Store::open(&path).expect("reopen");
    check(&store, 1, "reopening");
    store
        .outbox_requeue(&ids[2], "released", t0())
        .expect("release");
    check(&store, 2, "the held one released");
    let mut changes = ChangeSet::new();
    changes.queue_mail_without_case(digest()).expect("queue");
    store.apply(&changes).expect("commit");
    check(&store, 3, "a digest queued");
    // A commit that fails changes nothing, the count included.
    let mut broken = ChangeSet::new();
    broken
        .queue_mail(
            &CaseRef::from(&CaseId("TS-2026-999999".into())),
            ack("z@x.example", t0()),
        )
        .expect("queue");
    assert!(store.apply(&broken).is_err(), "an unknown case aborts");
    check(&store, 3, "an aborted commit");
    let clone = store.clone();
    clone.outbox_sent(&ids[3], t0()).expect("sent by a clone");
    check(&store, 2, "a clone's change");
}

#[test]
fn mail_queued_before_due_batches_is_still_sent_after_the_upgrade() {
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("db");
    {
        let store = Store::open(&path).expect("create");
        let mut batch = IngestBatch::new();
        for i in 0..2 {
            batch.push(new_complaint(&format!("<v{i}@x>"), &format!("v{i}@x.example"), t0()).0);
        }
        store.commit(&batch).expect("commit");
        store.flush().expect("flush");
    }
    {
        // Rewritten as schema 4 kept it: one due key per mail, no batch.
        let db = raw_open(&path);
        let due = db.open_tree("outbox_due").expect("tree");
        let outbox = db.open_tree("outbox").expect("tree");
        let (batch_key, list) = due.pop_min().expect("read").expect("the batch key");
        assert!(due.is_empty(), "one key for the commit's mails");
        let ids: Vec<String> = serde_json::from_slice(&list).expect("a list of ids");
        for id in &ids {
            let mut key = batch_key[..12].to_vec();
            key.extend_from_slice(id.as_bytes());
            due.insert(key, Vec::<u8>::new()).expect("write");
            let record = outbox.get(id).expect("read").expect("entry");
            let flag = b",\"batched\":true";
            let at = record
                .windows(flag.len())
                .position(|w| w == flag)
                .expect("flagged");
            let old = [&record[..at], &record[at + flag.len()..]].concat();
            outbox.insert(id.as_bytes(), old).expect("write");
        }
        db.open_tree("meta")
            .expect("meta")
            .insert("schema_version", &4u32.to_be_bytes())
            .expect("write");
        db.flush().expect("flush");
    }
    let store = Store::open(&path).expect("migrate");
    assert_eq!(store.queue_depth(), 2);
    let due = store.due_outbox(t0(), 10).expect("read");
    assert_eq!(due.len(), 2);
    assert!(due.iter().all(|e| !e.state.in_due_batch()));
    store.outbox_attempt(&due[0].id, t0()).expect("attempt");
    store.outbox_sent(&due[0].id, t0()).expect("sent");
    assert_eq!(store.queue_depth(), 1);
    let left: Vec<String> = store
        .due_outbox(t0(), 10)
        .expect("read")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(left, [due[1].id.clone()]);
    drop(store);
    assert_eq!(due_index_keys(&path), 1);
    let db = raw_open(&path);
    let version = db
        .open_tree("meta")
        .expect("meta")
        .get("schema_version")
        .expect("read");
    assert_eq!(version.as_deref(), Some(&SCHEMA_VERSION.to_be_bytes()[..]));
}

/// The store's sled database opened directly (or a new one made). sled's
/// I/O threads let go of a closed store's file lock a moment after it is
/// dropped: this blocks on that lock itself (`flock`, as sled takes it)
/// until they have.
fn raw_open(path: &std::path::Path) -> sled::Db {
    if let Ok(lock) = std::fs::File::open(path.join("db")) {
        lock.lock().expect("wait for the lock");
    }
    sled::open(path).expect("raw open")
}

/// Keys in the store's outbox due index, read from sled itself.
fn due_index_keys(path: &std::path::Path) -> usize {
    let db = raw_open(path);
    db.open_tree("outbox_due").expect("tree").len()
}

#[test]
fn the_mails_one_commit_queues_share_one_due_key_until_the_last_leaves_it() {
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("db");
    let ids: Vec<String> = {
        let store = Store::open(&path).expect("open");
        let mut batch = IngestBatch::new();
        for i in 0..5 {
            let (changes, _) =
                new_complaint(&format!("<b{i}@x>"), &format!("s{i}@x.example"), t0());
            batch.push(changes);
        }
        store.commit(&batch).expect("commit");
        assert_eq!(store.queue_depth(), 5);
        let first_two: Vec<String> = store
            .due_outbox(t0(), 2)
            .expect("read")
            .into_iter()
            .map(|e| e.id)
            .collect();
        let ids: Vec<String> = store
            .due_outbox(t0(), usize::MAX)
            .expect("read")
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids.len(), 5);
        assert_eq!(first_two, ids[..2], "in the order they were queued");
        assert!(store
            .due_outbox(t0() - Duration::seconds(1), 10)
            .expect("read")
            .is_empty());

        for id in &ids[..2] {
            store.outbox_attempt(id, t0()).expect("attempt");
            store.outbox_sent(id, t0()).expect("sent");
        }
        let retry_at = t0() + Duration::minutes(5);
        let retry = DeliveryFailure::Temporary {
            error: "421 busy".into(),
            next_attempt: retry_at,
        };
        store.outbox_failed(&ids[2], retry, t0()).expect("retry");
        let still: Vec<String> = store
            .due_outbox(t0(), 10)
            .expect("read")
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(still, ids[3..], "sent and retried mail left the batch");
        let again: Vec<String> = store
            .due_outbox(t0(), 1)
            .expect("read")
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(again, ids[3..4], "what the sender remembers skips no mail");
        assert_eq!(store.queue_depth(), 3);
        store.outbox_attempt(&ids[3], t0()).expect("attempt");
        store.flush().expect("flush");
        ids
    };
    // The batch's key and the retry's own key.
    assert_eq!(due_index_keys(&path), 2);

    let store = Store::open(&path).expect("reopen");
    assert_eq!(store.queue_depth(), 3, "counted again at open");
    let in_doubt: Vec<String> = store
        .outbox_in_doubt()
        .expect("read")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(
        in_doubt,
        ids[3..4],
        "an attempt in a batch is found in doubt"
    );
    for id in &ids[3..] {
        store.outbox_sent(id, t0()).expect("sent");
    }
    assert_eq!(store.queue_depth(), 1);
    assert!(store.due_outbox(t0(), 10).expect("read").is_empty());
    assert_eq!(
        store.next_outbox_due().expect("read"),
        Some(t0() + Duration::minutes(5))
    );
    drop(store);
    // Looking for due mail dropped the batch's key once none was left in it.
    assert_eq!(due_index_keys(&path), 1);
}

/// A reminder whose renderer gives every identity the same Message-ID.
fn reminder_with_message_id(message_id: &'static str) -> MailDraft {
    MailDraft::new(
        "remind",
        "reminder",
        "complaints@corp.example",
        vec!["service@corp.example".into()],
        t0(),
        move |_: &MailIdentity| {
            Ok(RenderedMail {
                message_id: message_id.into(),
                subject: "s".into(),
                bytes: b"x".to_vec(),
                template_failure: None,
            })
        },
    )
}

#[test]
fn a_renderer_that_reuses_a_message_id_aborts_the_commit() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    let case = ingest_new(&store, "<a@x>", "a@x.example", t0());
    let mut changes = ChangeSet::new();
    changes
        .queue_mail(
            &CaseRef::from(&case),
            reminder_with_message_id("<TS-2026-000001.ack.1@corp.example>"),
        )
        .expect("queue");
    changes.append_event(&CaseRef::from(&case), note(t0(), "reminded"));
    let err = store.apply(&changes).expect_err("Message-ID reused");
    assert!(matches!(err, StoreError::Render { .. }), "{err}");
    assert_eq!(store.outbox_of_case(&case).expect("read").len(), 1);
    assert_eq!(store.events(&case).expect("read").len(), 2);
}

fn history_case(
    store: &Store,
    sender: &str,
    when: DateTime<Utc>,
    category: &str,
    tag: &str,
) -> CaseId {
    let mut changes = ChangeSet::new();
    let mut case = draft(sender, when, "Re: [TS-2026-000001] 停气通知");
    case.fields
        .insert("category".into(), FieldValue::Name(category.into()));
    case.tags.insert(tag.into());
    let handle = changes.new_case(case).expect("case");
    store
        .apply(&changes)
        .expect("commit")
        .case_id(&handle)
        .expect("numbered")
}

#[test]
fn history_counts_respect_inclusive_window_edges_and_exclusion() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    let first = history_case(&store, "a@x.example", t0(), "billing", "crisis");
    history_case(
        &store,
        "a@x.example",
        t0() + Duration::hours(1),
        "billing",
        "x",
    );
    history_case(
        &store,
        "b@x.example",
        t0() + Duration::hours(48),
        "billing",
        "crisis",
    );
    history_case(
        &store,
        "c@x.example",
        t0() + Duration::hours(49),
        "outage",
        "crisis",
    );

    let window_end = t0() + Duration::hours(48);
    assert_eq!(store.cases_from_sender("a@x.example", t0(), window_end), 2);
    assert_eq!(
        store.cases_from_sender("a@x.example", t0() + Duration::nanoseconds(1), window_end),
        1,
        "the case at the window start is included only when the start is at or before it"
    );
    assert_eq!(
        store.distinct_senders_with_category("billing", t0(), window_end),
        ["a@x.example", "b@x.example"]
    );
    assert_eq!(
        store.distinct_senders_with_category(
            "billing",
            t0(),
            window_end - Duration::nanoseconds(1)
        ),
        ["a@x.example"]
    );
    assert_eq!(
        store.distinct_senders_with_tag("crisis", t0(), t0() + Duration::hours(49)),
        ["a@x.example", "b@x.example", "c@x.example"]
    );
    assert_eq!(
        store.distinct_senders_with_subject("停气通知", t0(), t0() + Duration::days(9)),
        ["a@x.example", "b@x.example", "c@x.example"]
    );
    assert!(store
        .distinct_senders_with_subject("停气", t0(), t0() + Duration::days(9))
        .is_empty());
    assert!(store
        .distinct_senders_with_tag("crisis", window_end, t0())
        .is_empty());

    let view = store.history_excluding(&first);
    assert_eq!(view.cases_from_sender("a@x.example", t0(), window_end), 1);
    assert_eq!(
        view.distinct_senders_with_tag("crisis", t0(), t0() + Duration::hours(49)),
        ["b@x.example", "c@x.example"]
    );
}

#[test]
fn an_update_moves_the_case_between_index_entries() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    let id = history_case(&store, "a@x.example", t0(), "billing", "crisis");
    let base = store.case(&id).expect("read").expect("stored");
    let mut updated = base.clone();
    updated
        .fields
        .insert("category".into(), FieldValue::Name("outage".into()));
    updated.tags.clear();
    updated.tags.insert("media".into());
    let mut changes = ChangeSet::new();
    changes.update_case(&base, updated).expect("update");
    store.apply(&changes).expect("commit");

    let until = t0() + Duration::days(1);
    assert!(store
        .distinct_senders_with_category("billing", t0(), until)
        .is_empty());
    assert_eq!(
        store.distinct_senders_with_category("outage", t0(), until),
        ["a@x.example"]
    );
    assert!(store
        .distinct_senders_with_tag("crisis", t0(), until)
        .is_empty());
    assert_eq!(
        store.distinct_senders_with_tag("media", t0(), until),
        ["a@x.example"]
    );
    assert_eq!(store.cases_from_sender("a@x.example", t0(), until), 1);
}

#[test]
fn batch_history_counts_cases_pending_in_the_batch() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    history_case(&store, "a@x.example", t0(), "billing", "t");
    let mut batch = IngestBatch::new();
    for (n, sender) in ["b@x.example", "c@x.example", "a@x.example"]
        .iter()
        .enumerate()
    {
        let mut changes = ChangeSet::new();
        let mut case = draft(sender, t0() + Duration::minutes(n as i64), "x");
        case.fields
            .insert("category".into(), FieldValue::Name("billing".into()));
        changes.new_case(case).expect("case");
        batch.push(changes);
    }
    let until = t0() + Duration::hours(1);
    let view = batch.history(&store, None);
    assert_eq!(
        view.distinct_senders_with_category("billing", t0(), until),
        ["a@x.example", "b@x.example", "c@x.example"]
    );
    assert_eq!(view.cases_from_sender("a@x.example", t0(), until), 2);

    let last = batch.changes()[2].new_cases().next().expect("case").0;
    let view = batch.history(&store, Some(&CaseRef::New(last)));
    assert_eq!(view.cases_from_sender("a@x.example", t0(), until), 1);
    assert_eq!(
        store.distinct_senders_with_category("billing", t0(), until),
        ["a@x.example"],
        "the store itself sees nothing before the commit"
    );
}

#[test]
fn duplicate_message_ids_are_skipped_and_reported() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    let first = ingest_new(&store, "<dup@x>", "a@x.example", t0());
    let (again, _) = new_complaint(" <dup@x> ", "a@x.example", t0());
    let outcome = store
        .ingest(
            "INBOX",
            Checkpoint {
                uid_validity: 1,
                last_uid: 2,
            },
            &again,
        )
        .expect("commit");
    assert_eq!(
        outcome,
        ChangeOutcome::Duplicate {
            message_id: "dup@x".into()
        }
    );
    // The duplicate changed nothing, but the checkpoint still advanced.
    assert_eq!(
        ids(&store.list_cases(&CaseFilter::default()).expect("list")),
        [first.0.as_str()]
    );
    assert_eq!(store.queue_depth(), 1);
    assert_eq!(store.events(&first).expect("read").len(), 2);
    assert_eq!(store.acks_in_hour("a@x.example", t0()).expect("read"), 1);
    assert_eq!(
        store.checkpoint("INBOX").expect("read"),
        Some(Checkpoint {
            uid_validity: 1,
            last_uid: 2
        })
    );

    // Within one batch, the second copy is the duplicate.
    let mut batch = IngestBatch::new();
    let (one, case) = new_complaint("<twice@x>", "b@x.example", t0());
    batch.push(one);
    assert!(batch.contains_message("twice@x"));
    assert_eq!(batch.pending_case_for_message("<twice@x>"), Some(case));
    batch.push(new_complaint("<twice@x>", "b@x.example", t0()).0);
    let report = store.commit(&batch).expect("commit");
    assert!(!report.outcomes[0].is_duplicate());
    assert!(report.outcomes[1].is_duplicate());
    assert_eq!(
        store
            .list_cases(&CaseFilter::default())
            .expect("list")
            .len(),
        2
    );
}

#[test]
fn outgoing_message_ids_are_known_whether_or_not_they_follow_the_outbox_id() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    let case = ingest_new(&store, "<first@x>", "a@x.example", t0());
    // The acknowledgement's Message-ID is `OUTBOX_ID@host`, answered from the
    // outbox; a renderer may also choose another form, which is indexed.
    let mut changes = ChangeSet::new();
    changes
        .queue_mail(
            &CaseRef::from(&case),
            reminder_with_message_id("<reminder-own-form@corp.example>"),
        )
        .expect("queue");
    store.apply(&changes).expect("commit");
    for (message_id, outbox_id, purpose) in [
        (
            "TS-2026-000001.ack.1@corp.example",
            "TS-2026-000001.ack.1",
            "ack",
        ),
        (
            "reminder-own-form@corp.example",
            "TS-2026-000001.remind.1",
            "remind",
        ),
    ] {
        assert_eq!(
            store.message(message_id).expect("read"),
            Some(MessageRecord::Outgoing {
                case: Some(case.clone()),
                outbox_id: outbox_id.into(),
                purpose: purpose.into(),
            }),
            "{message_id}"
        );
    }
    // Same outbox id, another host: not our mail.
    assert_eq!(
        store
            .message("TS-2026-000001.ack.1@elsewhere.example")
            .expect("read"),
        None
    );
    assert_eq!(
        store
            .message("TS-2026-000001.ack.2@corp.example")
            .expect("read"),
        None
    );

    // A copy of our own mail coming in (a loop, a forwarding rule) is a
    // duplicate, not a new complaint.
    for (n, message_id) in [
        "<TS-2026-000001.ack.1@corp.example>",
        "<reminder-own-form@corp.example>",
    ]
    .into_iter()
    .enumerate()
    {
        let (copy, _) = new_complaint(message_id, "a@x.example", t0());
        let outcome = store
            .ingest(
                "INBOX",
                Checkpoint {
                    uid_validity: 1,
                    last_uid: 2 + n as u32,
                },
                &copy,
            )
            .expect("commit");
        assert!(outcome.is_duplicate(), "{message_id}: {outcome:?}");
    }
    assert_eq!(
        ids(&store.list_cases(&CaseFilter::default()).expect("list")),
        [case.0.as_str()]
    );
}

#[test]
fn a_reply_in_the_same_batch_can_join_the_case_it_answers() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    let mut batch = IngestBatch::new();
    let (first, _) = new_complaint("<first@x>", "a@x.example", t0());
    batch.push(first);
    let case = batch
        .pending_case_for_message("first@x")
        .expect("pending case");
    let mut reply = ChangeSet::for_message("<second@x>", t0()).expect("id");
    reply.append_event(&case, note(t0(), "more details"));
    reply.link_message(&case).expect("link");
    batch.push(reply);
    batch.advance_checkpoint(
        "INBOX",
        Checkpoint {
            uid_validity: 1,
            last_uid: 2,
        },
    );
    let report = store.commit(&batch).expect("commit");
    let id = report.case_id(&case).expect("numbered");
    assert_eq!(store.events(&id).expect("read").len(), 3);
    assert_eq!(
        store
            .message("second@x")
            .expect("read")
            .and_then(|r| r.case().cloned()),
        Some(id)
    );
}

#[test]
fn checkpoints_never_move_backwards() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    for last_uid in [10, 4] {
        let mut batch = IngestBatch::new();
        batch.advance_checkpoint(
            "INBOX",
            Checkpoint {
                uid_validity: 5,
                last_uid,
            },
        );
        store.commit(&batch).expect("commit");
    }
    assert_eq!(
        store.checkpoint("INBOX").expect("read").map(|c| c.last_uid),
        Some(10)
    );
    assert_eq!(store.checkpoint("Other").expect("read"), None);
}

#[test]
fn ack_counters_count_per_sender_and_hour_and_can_be_pruned() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    let mut changes = ChangeSet::new();
    changes.count_ack("a@x.example", t0());
    changes.count_ack("A@X.example", t0() + Duration::minutes(59));
    changes.count_ack("a@x.example", t0() + Duration::minutes(60));
    changes.count_ack("b@x.example", t0());
    let mut batch = IngestBatch::new();
    assert_eq!(batch.pending_acks("a@x.example", t0()), 0);
    batch.push(changes);
    assert_eq!(batch.pending_acks("a@x.example", t0()), 2);
    store.commit(&batch).expect("commit");
    assert_eq!(store.acks_in_hour("a@x.example", t0()).expect("read"), 2);
    assert_eq!(
        store
            .acks_in_hour("a@x.example", t0() + Duration::hours(1))
            .expect("read"),
        1
    );
    assert_eq!(store.acks_in_hour("b@x.example", t0()).expect("read"), 1);
    assert_eq!(
        store
            .prune_ack_counters(t0() + Duration::hours(1))
            .expect("prune"),
        2
    );
    assert_eq!(store.acks_in_hour("a@x.example", t0()).expect("read"), 0);
    assert_eq!(
        store
            .acks_in_hour("a@x.example", t0() + Duration::hours(1))
            .expect("read"),
        1
    );
}

#[test]
fn listing_filters_and_search() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    let a = ingest_new(&store, "<a@x>", "alice@x.example", t0());
    let b = ingest_new(&store, "<b@x>", "bob@y.example", t0());
    let base = store.case(&b).expect("read").expect("stored");
    let mut closed = base.clone();
    closed.state = CaseState::Closed;
    closed
        .fields
        .insert("severity".into(), FieldValue::Name("major".into()));
    closed.assignment = Some(complaintd::case::Assignment {
        department: "quality".into(),
        cc: Vec::new(),
        rule: "route #1".into(),
    });
    let mut changes = ChangeSet::new();
    changes.update_case(&base, closed).expect("update");
    store.apply(&changes).expect("commit");

    let open_only = CaseFilter {
        open: Some(true),
        ..CaseFilter::default()
    };
    assert_eq!(
        ids(&store.list_cases(&open_only).expect("list")),
        [a.0.as_str()]
    );
    let majors = CaseFilter {
        severity: Some("major".into()),
        department: Some("quality".into()),
        ..CaseFilter::default()
    };
    assert_eq!(
        ids(&store.list_cases(&majors).expect("list")),
        [b.0.as_str()]
    );
    let limited = CaseFilter {
        limit: Some(1),
        ..CaseFilter::default()
    };
    assert_eq!(store.list_cases(&limited).expect("list").len(), 1);
    assert_eq!(
        ids(&store.search_cases("BOB@", None).expect("search")),
        [b.0.as_str()]
    );
    assert_eq!(store.search_cases("停气", None).expect("search").len(), 2);
    assert_eq!(
        ids(&store.search_cases("000001", None).expect("search")),
        [a.0]
    );
}

#[test]
fn a_store_from_a_newer_complaintd_is_refused() {
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("db");
    drop(Store::open(&path).expect("create"));
    {
        // Plays a newer complaintd.
        let db = raw_open(&path);
        db.open_tree("meta")
            .expect("meta")
            .insert("schema_version", &(SCHEMA_VERSION + 1).to_be_bytes())
            .expect("write");
        db.flush().expect("flush");
    }
    let err = Store::open(&path).expect_err("too new");
    let newer = SCHEMA_VERSION + 1;
    assert!(
        matches!(
            err,
            StoreError::SchemaTooNew { found, supported }
                if found == newer && supported == SCHEMA_VERSION
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!("schema version {newer}")),
        "{err}"
    );
}

#[test]
fn a_version_1_store_is_migrated_and_keeps_its_event_logs() {
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("db");
    let id = CaseId("TS-2026-000001".into());
    let old_events = [
        note(t0(), "first"),
        note(t0() + Duration::minutes(1), "second"),
    ];
    {
        // Plays complaintd with schema version 1: one record per event, the
        // case's event counter at the next sequence number.
        let db = raw_open(&path);
        db.open_tree("meta")
            .expect("meta")
            .insert("schema_version", &1u32.to_be_bytes())
            .expect("write");
        let case = Case {
            id: id.clone(),
            ..draft("a@x.example", t0(), "停气")
        };
        db.open_tree("cases")
            .expect("cases")
            .insert(id.0.as_bytes(), serde_json::to_vec(&case).expect("json"))
            .expect("write");
        let counters = db.open_tree("counters").expect("counters");
        let mut year_key = b"c".to_vec();
        year_key.extend_from_slice(&2u32.to_be_bytes());
        year_key.extend_from_slice(b"TS");
        year_key.extend_from_slice(&((2026u64) ^ (1 << 63)).to_be_bytes());
        counters
            .insert(year_key, &1u64.to_be_bytes())
            .expect("write");
        let mut prefix = (id.0.len() as u32).to_be_bytes().to_vec();
        prefix.extend_from_slice(id.0.as_bytes());
        let mut event_counter = b"e".to_vec();
        event_counter.extend_from_slice(&prefix);
        counters
            .insert(event_counter, &2u64.to_be_bytes())
            .expect("write");
        let events = db.open_tree("events").expect("events");
        for (seq, event) in old_events.iter().enumerate() {
            let mut key = prefix.clone();
            key.extend_from_slice(&(seq as u64).to_be_bytes());
            events
                .insert(key, serde_json::to_vec(event).expect("json"))
                .expect("write");
        }
        db.flush().expect("flush");
    }

    let store = Store::open(&path).expect("migrated");
    assert_eq!(store.events(&id).expect("read"), old_events);
    // New events follow the old ones, and the next case number follows too.
    let mut changes = ChangeSet::new();
    let case_ref = CaseRef::Existing(id.clone());
    changes.append_event(&case_ref, note(t0() + Duration::minutes(2), "third"));
    changes.append_event(&case_ref, note(t0() + Duration::minutes(3), "fourth"));
    store.apply(&changes).expect("commit");
    let texts: Vec<String> = store
        .events(&id)
        .expect("read")
        .into_iter()
        .map(|e| match e.kind {
            EventKind::Note { text } => text,
            other => panic!("unexpected event {other:?}"),
        })
        .collect();
    assert_eq!(texts, ["first", "second", "third", "fourth"]);
    assert_eq!(
        ingest_new(&store, "<m@x.example>", "b@x.example", t0()),
        CaseId("TS-2026-000002".into())
    );
    drop(store);

    // Opening again migrates nothing twice and keeps everything.
    let store = Store::open(&path).expect("reopen");
    assert_eq!(store.events(&id).expect("read").len(), 4);
    drop(store);
    let db = raw_open(&path);
    assert_eq!(
        db.open_tree("meta")
            .expect("meta")
            .get("schema_version")
            .expect("read")
            .map(|v| v.to_vec()),
        Some(SCHEMA_VERSION.to_be_bytes().to_vec())
    );
}

#[test]
fn a_version_3_store_gets_its_held_mail_indexed_and_the_index_follows_the_state() {
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("db");
    let held_ids = |store: &Store| -> Vec<String> {
        store
            .held_outbox()
            .expect("read")
            .into_iter()
            .map(|e| e.id)
            .collect()
    };
    let id = {
        let store = Store::open(&path).expect("open");
        let case = ingest_new(&store, "<held@x>", "h@x.example", t0());
        // A second mail stays scheduled: it must not be listed.
        ingest_new(&store, "<queued@x>", "q@x.example", t0());
        let id = store.outbox_of_case(&case).expect("read")[0].id.clone();
        store.outbox_attempt(&id, t0()).expect("attempt");
        store.outbox_hold(&id, "in doubt", t0()).expect("hold");
        assert_eq!(held_ids(&store), vec![id.clone()]);
        store.flush().expect("flush");
        id
    };
    {
        // Plays schema version 3, which had no index of held mail.
        let db = raw_open(&path);
        db.drop_tree("outbox_held").expect("drop the index");
        db.open_tree("meta")
            .expect("meta")
            .insert("schema_version", &3u32.to_be_bytes())
            .expect("write");
        db.flush().expect("flush");
    }
    let store = Store::open(&path).expect("migrated");
    assert_eq!(
        held_ids(&store),
        vec![id.clone()],
        "the migration indexes it"
    );
    store
        .outbox_requeue(&id, "released by an operator", t0())
        .expect("release");
    assert!(
        held_ids(&store).is_empty(),
        "released mail leaves the index"
    );
}

#[test]
fn a_version_2_store_is_migrated_to_fewer_keys_and_keeps_its_numbers_and_mail() {
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("db");
    let later = [
        (1usize, t0() + Duration::hours(4)),
        (2, t0() + Duration::hours(6)),
    ];
    let mail_bytes: Vec<u8>;
    let case = {
        let store = Store::open(&path).expect("open");
        let case = ingest_new(&store, "<a@x>", "a@x.example", t0());
        let mut changes = ChangeSet::new();
        let mut steps = vec![(0, t0() + Duration::hours(2))];
        steps.extend(later);
        changes.replace_clock_timers(&CaseRef::from(&case), "resolve", steps);
        store.apply(&changes).expect("commit");
        case
    };
    {
        // Plays schema version 2, which indexed every slot of a clock.
        let db = raw_open(&path);
        let timers = db.open_tree("timers").expect("timers");
        let str_part = |s: &str| {
            let mut out = (s.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(s.as_bytes());
            out
        };
        for (step, due) in later {
            let mut key = ((due.timestamp() as u64) ^ (1 << 63))
                .to_be_bytes()
                .to_vec();
            key.extend_from_slice(&due.timestamp_subsec_nanos().to_be_bytes());
            key.extend(str_part(&case.0));
            key.extend(str_part("resolve"));
            key.extend_from_slice(&(step as u64).to_be_bytes());
            timers.insert(key, Vec::new()).expect("write");
        }
        // Versions 2 to 5 kept each clock's slots in a record of its own.
        let clocks = db.open_tree("timer_clocks").expect("timer_clocks");
        let slot = |due: DateTime<Utc>, step: usize| serde_json::json!({"due": due, "step": step});
        let mut forward_key = str_part(&case.0);
        forward_key.extend(str_part("forward"));
        let forward = vec![slot(t0() + Duration::hours(1), 0)];
        clocks
            .insert(forward_key, serde_json::to_vec(&forward).expect("json"))
            .expect("write");
        let mut resolve_key = str_part(&case.0);
        resolve_key.extend(str_part("resolve"));
        let mut resolve = vec![slot(t0() + Duration::hours(2), 0)];
        resolve.extend(later.iter().map(|(step, due)| slot(*due, *step)));
        clocks
            .insert(resolve_key, serde_json::to_vec(&resolve).expect("json"))
            .expect("write");
        // A clock left over from a case that is gone.
        let mut orphan_key = str_part("TS-2026-999999");
        orphan_key.extend(str_part("forward"));
        clocks
            .insert(orphan_key, serde_json::to_vec(&forward).expect("json"))
            .expect("write");
        // Version 2 kept a case's numbers under one key each: the next
        // event (two so far) and the last mail of each purpose.
        let counters = db.open_tree("counters").expect("counters");
        let mut event_counter = b"e".to_vec();
        event_counter.extend(str_part(&case.0));
        counters
            .insert(event_counter, &2u64.to_be_bytes())
            .expect("write");
        let mut ack_counter = b"m".to_vec();
        ack_counter.extend(str_part(&case.0));
        ack_counter.extend(str_part("ack"));
        counters
            .insert(ack_counter, &1u64.to_be_bytes())
            .expect("write");
        // Version 2 kept each mail's bytes apart from its outbox entry.
        let outbox = db.open_tree("outbox").expect("outbox");
        let record = outbox
            .get("TS-2026-000001.ack.1")
            .expect("read")
            .expect("the acknowledgement");
        let split = record
            .iter()
            .position(|b| *b == 0)
            .expect("entry, 0, bytes");
        outbox
            .insert("TS-2026-000001.ack.1", &record[..split])
            .expect("write");
        db.open_tree("outbox_bodies")
            .expect("bodies")
            .insert("TS-2026-000001.ack.1", &record[split + 1..])
            .expect("write");
        mail_bytes = record[split + 1..].to_vec();
        db.open_tree("meta")
            .expect("meta")
            .insert("schema_version", &2u32.to_be_bytes())
            .expect("write");
        db.flush().expect("flush");
    }
    let store = Store::open(&path).expect("migrated");
    assert_eq!(
        store.outbox_message("TS-2026-000001.ack.1").expect("read"),
        Some(mail_bytes),
        "the mail's bytes move into its outbox record"
    );
    assert!(String::from_utf8_lossy(
        &store
            .outbox_message("TS-2026-000001.ack.1")
            .expect("read")
            .expect("bytes")
    )
    .contains("Message-ID: <TS-2026-000001.ack.1@corp.example>"));
    assert_eq!(
        store
            .outbox_entry("TS-2026-000001.ack.1")
            .expect("read")
            .expect("entry")
            .purpose,
        "ack"
    );
    // The clocks moved into the case's counter record, their tree is gone.
    let clocks: Vec<(String, usize)> = store
        .timers_of_case(&case)
        .expect("read")
        .into_iter()
        .map(|t| (t.deadline, t.step))
        .collect();
    assert_eq!(
        clocks,
        [
            ("forward".to_owned(), 0),
            ("resolve".to_owned(), 0),
            ("resolve".to_owned(), 1),
            ("resolve".to_owned(), 2)
        ]
    );
    // The numbers go on from where version 2 left them.
    let mut again = ChangeSet::new();
    again
        .queue_mail(&CaseRef::from(&case), ack("a@x.example", t0()))
        .expect("queue");
    let outcome = store.apply(&again).expect("commit");
    assert_eq!(
        outcome.applied().expect("applied").mails[0].outbox_id,
        "TS-2026-000001.ack.2"
    );
    assert_eq!(store.events(&case).expect("read").len(), 3);
    // Stopping the clock must take every one of its steps away: a key left
    // from version 2 would fire a step of a stopped clock.
    let mut stop = ChangeSet::new();
    stop.replace_clock_timers(&CaseRef::from(&case), "resolve", Vec::new());
    store.apply(&stop).expect("commit");
    let left: Vec<(String, usize)> = store
        .due_timers(t0() + Duration::days(30))
        .expect("read")
        .into_iter()
        .map(|t| (t.deadline, t.step))
        .collect();
    assert_eq!(left, [("forward".to_owned(), 0)]);
    drop(store);
    let db = raw_open(&path);
    assert!(!db
        .tree_names()
        .iter()
        .any(|name| &name[..] == b"timer_clocks"));
    let mut orphan_counter = b"e".to_vec();
    orphan_counter.extend_from_slice(&12u32.to_be_bytes());
    orphan_counter.extend_from_slice(b"TS-2026-999999");
    let counters = db.open_tree("counters").expect("counters");
    assert_eq!(
        counters.get(orphan_counter).expect("read"),
        None,
        "no counter record made for a case that is gone"
    );
}

#[test]
fn non_finite_numbers_are_refused_up_front() {
    let mut case = draft("a@x.example", t0(), "s");
    case.fields
        .insert("amount".into(), FieldValue::Number(f64::NAN));
    let err = ChangeSet::new().new_case(case).expect_err("NaN");
    assert!(matches!(err, StoreError::InvalidBatch(_)), "{err}");
}

#[test]
fn the_store_is_shareable_across_tasks() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    fn sendable<T: Send>(_: &T) {}
    shareable::<Store>();
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    sendable(&store.flush_async());
}

#[tokio::test]
async fn flush_async_completes_on_the_runtime() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    let id = ingest_new(&store, "<a@x>", "a@x.example", t0());
    let task_store = store.clone();
    let flushed = tokio::spawn(async move { task_store.flush_async().await })
        .await
        .expect("task")
        .expect("flush");
    assert!(flushed > 0, "the commit had bytes to write");
    assert!(store.case_exists(&id).expect("read"));
}

/// Set in the child process of the crash test.
const CRASH_CHILD: &str = "COMPLAINTD_STORE_CRASH_CHILD";
const FLUSHED_BATCHES: u32 = 5;
const MESSAGES_PER_BATCH: u32 = 10;

fn crash_batch(batch_no: u32) -> IngestBatch {
    let mut batch = IngestBatch::new();
    for n in 0..MESSAGES_PER_BATCH {
        let uid = batch_no * MESSAGES_PER_BATCH + n + 1;
        batch.push(new_complaint(&format!("<{uid}@crash>"), "a@x.example", t0()).0);
    }
    batch.advance_checkpoint(
        "INBOX",
        Checkpoint {
            uid_validity: 1,
            last_uid: (batch_no + 1) * MESSAGES_PER_BATCH,
        },
    );
    batch
}

/// The child: flushed batches, then unflushed ones, then an abort with no
/// clean shutdown (no destructors, no final flush).
fn crash_child(path: &std::path::Path) -> ! {
    let store = Store::open(path).expect("open");
    for batch_no in 0..FLUSHED_BATCHES {
        store.commit(&crash_batch(batch_no)).expect("commit");
        store.flush().expect("flush");
    }
    for batch_no in FLUSHED_BATCHES..FLUSHED_BATCHES + 20 {
        store.commit(&crash_batch(batch_no)).expect("commit");
    }
    std::process::abort();
}

#[test]
fn a_crash_keeps_flushed_batches_and_never_half_a_batch() {
    if let Some(path) = std::env::var_os(CRASH_CHILD) {
        crash_child(std::path::Path::new(&path));
    }
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("db");
    let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "a_crash_keeps_flushed_batches_and_never_half_a_batch",
            "--exact",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD, &path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run child");
    assert!(!status.success(), "the child must die by abort");

    let store = Store::open(&path).expect("reopen after crash");
    let cases = store.list_cases(&CaseFilter::default()).expect("list");
    let count = u32::try_from(cases.len()).expect("small");
    assert!(
        count >= FLUSHED_BATCHES * MESSAGES_PER_BATCH,
        "flushed batches survive: {count} cases"
    );
    assert_eq!(
        count % MESSAGES_PER_BATCH,
        0,
        "no half batch: {count} cases"
    );
    let expected: Vec<String> = (1..=count).map(|n| format!("TS-2026-{n:06}")).collect();
    assert_eq!(ids(&cases), expected, "numbers without gaps");
    assert_eq!(
        store.checkpoint("INBOX").expect("read").map(|c| c.last_uid),
        Some(count),
        "the checkpoint matches the messages that were kept"
    );
    for case in &cases {
        assert_eq!(
            store.events(&case.id).expect("read").len(),
            2,
            "{}",
            case.id
        );
        assert_eq!(store.outbox_of_case(&case.id).expect("read").len(), 1);
        assert_eq!(store.timers_of_case(&case.id).expect("read").len(), 1);
    }
    assert_eq!(store.queue_depth(), cases.len());
    assert!(store
        .message(&format!("{count}@crash"))
        .expect("read")
        .is_some());
    assert!(store
        .message(&format!("{}@crash", count + 1))
        .expect("read")
        .is_none());
}

/// Random operations against the store and a plain model of what must be
/// in it; after every reopen and at the end the two must agree.
#[derive(Debug, Clone)]
enum Op {
    NewCase {
        sender: u8,
        minutes: u16,
        message: u8,
        timer_minutes: Option<u16>,
    },
    Update {
        target: u8,
        stale: bool,
        tag: u8,
    },
    Note {
        target: u8,
    },
    Deliver {
        target: u8,
        permanent: bool,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..4, 0u16..5000, 0u8..12, proptest::option::of(0u16..5000)).prop_map(
            |(sender, minutes, message, timer_minutes)| Op::NewCase {
                sender,
                minutes,
                message,
                timer_minutes
            }
        ),
        2 => (any::<u8>(), any::<bool>(), 0u8..3).prop_map(|(target, stale, tag)| Op::Update {
            target,
            stale,
            tag
        }),
        2 => any::<u8>().prop_map(|target| Op::Note { target }),
        2 => (any::<u8>(), any::<bool>()).prop_map(|(target, permanent)| Op::Deliver {
            target,
            permanent
        }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Default)]
struct Model {
    cases: BTreeMap<String, (Case, usize)>,
    messages: BTreeMap<String, String>,
    timers: BTreeSet<(DateTime<Utc>, String)>,
    mail: BTreeMap<String, MailModel>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MailModel {
    Pending,
    Sent,
    Failed,
}

impl Model {
    fn pending_mail(&self) -> BTreeSet<String> {
        self.mail
            .iter()
            .filter(|(_, state)| **state == MailModel::Pending)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

fn check(store: &Store, model: &Model) -> Result<(), TestCaseError> {
    let cases = store.list_cases(&CaseFilter::default()).expect("list");
    let expected: Vec<String> = (1..=model.cases.len())
        .map(|n| format!("TS-2026-{n:06}"))
        .collect();
    prop_assert_eq!(ids(&cases), expected);
    for case in &cases {
        let (want, events) = &model.cases[&case.id.0];
        prop_assert_eq!(case, want);
        prop_assert_eq!(store.events(&case.id).expect("events").len(), *events);
    }
    for (message, case) in &model.messages {
        let found = store.message(message).expect("read");
        prop_assert_eq!(
            found.and_then(|r| r.case().cloned()),
            Some(CaseId(case.clone()))
        );
    }
    let timers: BTreeSet<(DateTime<Utc>, String)> = store
        .due_timers(at(2027, 1, 1, 0, 0))
        .expect("timers")
        .into_iter()
        .map(|t| (t.due, t.case.0))
        .collect();
    prop_assert_eq!(&timers, &model.timers);
    prop_assert_eq!(store.queue_depth(), model.pending_mail().len());
    let due: BTreeSet<String> = store
        .due_outbox(at(2027, 1, 1, 0, 0), usize::MAX)
        .expect("due")
        .into_iter()
        .map(|e| e.id)
        .collect();
    prop_assert_eq!(&due, &model.pending_mail());
    let tags_seen: BTreeSet<String> = ["0", "1", "2"]
        .into_iter()
        .filter(|tag| {
            !store
                .distinct_senders_with_tag(tag, at(2026, 1, 1, 0, 0), at(2027, 1, 1, 0, 0))
                .is_empty()
        })
        .map(str::to_owned)
        .collect();
    let tags_expected: BTreeSet<String> = model
        .cases
        .values()
        .flat_map(|(c, _)| c.tags.iter().cloned())
        .collect();
    prop_assert_eq!(tags_seen, tags_expected);
    Ok(())
}

fn run_ops(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = TempDir::new().expect("tempdir");
    let mut store = open(&dir);
    let mut model = Model::default();
    for op in ops {
        let ids: Vec<String> = model.cases.keys().cloned().collect();
        let pick = |n: u8| (!ids.is_empty()).then(|| ids[usize::from(n) % ids.len()].clone());
        match op {
            Op::NewCase {
                sender,
                minutes,
                message,
                timer_minutes,
            } => {
                let when = t0() + Duration::minutes(i64::from(minutes));
                let message_id = format!("m{message}@x");
                let sender = format!("s{sender}@x.example");
                let mut changes = ChangeSet::for_message(&message_id, when).expect("id");
                let handle = changes.new_case(draft(&sender, when, "s")).expect("case");
                changes.append_event(&handle, note(when, "created"));
                changes.link_message(&handle).expect("link");
                changes
                    .queue_mail(&handle, ack(&sender, when))
                    .expect("mail");
                let timer_due = timer_minutes.map(|m| when + Duration::minutes(i64::from(m)));
                if let Some(due) = timer_due {
                    changes.add_timer(&handle, "resolve", 0, due);
                }
                let outcome = store.apply(&changes).expect("commit");
                if model.messages.contains_key(&message_id) {
                    prop_assert!(outcome.is_duplicate());
                } else {
                    let id = outcome.case_id(&handle).expect("numbered");
                    let mut case = draft(&sender, when, "s");
                    case.id = id.clone();
                    model.cases.insert(id.0.clone(), (case, 2));
                    model.messages.insert(message_id, id.0.clone());
                    model
                        .mail
                        .insert(format!("{}.ack.1", id.0), MailModel::Pending);
                    if let Some(due) = timer_due {
                        model.timers.insert((due, id.0));
                    }
                }
            }
            Op::Update { target, stale, tag } => {
                let Some(id) = pick(target) else { continue };
                let current = model.cases[&id].0.clone();
                let mut base = current.clone();
                if stale {
                    base.reopen_count += 1;
                }
                let mut updated = current.clone();
                updated.tags = BTreeSet::from([tag.to_string()]);
                let mut changes = ChangeSet::new();
                let handle = changes.update_case(&base, updated.clone()).expect("update");
                changes.append_event(&handle, note(t0(), "updated"));
                let result = store.apply(&changes);
                if stale {
                    prop_assert!(matches!(result, Err(StoreError::Conflict(_))));
                } else {
                    result.expect("commit");
                    let entry = model.cases.get_mut(&id).expect("modelled");
                    entry.0 = updated;
                    entry.1 += 1;
                }
            }
            Op::Note { target } => {
                let Some(id) = pick(target) else { continue };
                let mut changes = ChangeSet::new();
                changes.append_event(&CaseRef::Existing(CaseId(id.clone())), note(t0(), "n"));
                store.apply(&changes).expect("commit");
                model.cases.get_mut(&id).expect("modelled").1 += 1;
            }
            Op::Deliver { target, permanent } => {
                let Some(id) = pick(target) else { continue };
                let outbox_id = format!("{id}.ack.1");
                let before = model.mail[&outbox_id];
                let result = if permanent {
                    store.outbox_failed(
                        &outbox_id,
                        DeliveryFailure::Permanent {
                            error: "550".into(),
                        },
                        t0(),
                    )
                } else {
                    store.outbox_sent(&outbox_id, t0())
                };
                let after = match (before, permanent) {
                    (MailModel::Pending, false) => Some(MailModel::Sent),
                    (MailModel::Sent, false) => Some(MailModel::Sent),
                    (MailModel::Failed, false) => None,
                    (_, true) => Some(MailModel::Failed),
                };
                match (result, after) {
                    (Ok(_), Some(after)) => {
                        if after != before {
                            model.cases.get_mut(&id).expect("modelled").1 += 1;
                        }
                        model.mail.insert(outbox_id, after);
                    }
                    (Err(StoreError::OutboxTransition { .. }), None) => {}
                    (result, after) => {
                        let expected = format!("{after:?} after {before:?}, permanent={permanent}");
                        return Err(TestCaseError::fail(format!(
                            "got {result:?}, expected {expected}"
                        )));
                    }
                }
            }
            Op::Reopen => {
                store.flush().expect("flush");
                drop(store);
                store = open(&dir);
                check(&store, &model)?;
            }
        }
    }
    drop(store);
    let store = open(&dir);
    check(&store, &model)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_change_sets_then_reopen_give_a_consistent_store(ops in proptest::collection::vec(op(), 1..40)) {
        run_ops(ops)?;
    }
}

/// One case of the batch-history property: who sent it, when (minutes
/// after `t0`), its category and tag (indexes into small pools).
#[derive(Debug, Clone)]
struct HistoryCaseSpec {
    sender: u8,
    minutes: u16,
    category: u8,
    tag: u8,
}

fn history_case_spec() -> impl Strategy<Value = HistoryCaseSpec> {
    (0u8..5, 0u16..600, 0u8..3, 0u8..3).prop_map(|(sender, minutes, category, tag)| {
        HistoryCaseSpec {
            sender,
            minutes,
            category,
            tag,
        }
    })
}

const HISTORY_CATEGORIES: [&str; 3] = ["billing", "outage", "service"];
const HISTORY_TAGS: [&str; 3] = ["crisis", "media", "vip"];

fn history_draft(spec: &HistoryCaseSpec) -> Case {
    let mut case = draft(
        &format!("s{}@x.example", spec.sender),
        t0() + Duration::minutes(i64::from(spec.minutes)),
        &format!("停气通知 {}", spec.category),
    );
    case.fields.insert(
        "category".into(),
        FieldValue::Name(HISTORY_CATEGORIES[usize::from(spec.category)].into()),
    );
    case.tags.insert(HISTORY_TAGS[usize::from(spec.tag)].into());
    case
}

/// `case` moved to another category, subject and tag, as the history
/// tests update cases.
fn regrouped(mut case: Case, category: u8, tag: u8) -> Case {
    case.fields.insert(
        "category".into(),
        FieldValue::Name(HISTORY_CATEGORIES[usize::from(category)].into()),
    );
    case.subject = format!("停气通知 {category}");
    case.tags.clear();
    case.tags.insert(HISTORY_TAGS[usize::from(tag)].into());
    case
}

/// What a walk over every case that counts answers: distinct senders in
/// byte order of the cases with `keep` opened within the window.
fn walk_answer(
    cases: &[&Case],
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    keep: impl Fn(&Case) -> bool,
) -> Vec<String> {
    cases
        .iter()
        .filter(|c| c.created_at >= since && c.created_at <= until && keep(c))
        .map(|c| c.sender.email.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// `count_distinct_senders` agrees with the walked list, for every sender
/// the cases use and one they do not.
fn check_counts(
    view: &impl CaseHistory,
    group: SenderGroup<'_>,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    walked: &[String],
) -> Result<(), TestCaseError> {
    for probe in 0..6 {
        let sender = format!("s{probe}@x.example");
        prop_assert_eq!(
            view.count_distinct_senders(group, since, until, &sender),
            SenderCount {
                senders: walked.len() as u64,
                includes: walked.contains(&sender),
            }
        );
    }
    Ok(())
}

/// A batch over the stored cases `stored_ids`: pending new cases, updates
/// of stored cases (a new category and tag each; the last update of a case
/// wins, as in the store) and the case evaluated. Returns the batch, the
/// case it leaves out and the cases that count: stored ones as the batch
/// leaves them, pending new ones, less the one evaluated.
fn batch_over(
    store: &Store,
    stored_ids: &[CaseId],
    pending: &[HistoryCaseSpec],
    updates: Vec<(u8, u8, u8)>,
    exclude: Option<(bool, u8)>,
) -> (IngestBatch, Option<CaseRef>, Vec<Case>) {
    let mut batch = IngestBatch::new();
    let mut pending_handles = Vec::new();
    for spec in pending {
        let mut changes = ChangeSet::new();
        pending_handles.push(changes.new_case(history_draft(spec)).expect("case"));
        batch.push(changes);
    }
    let mut updated: BTreeMap<CaseId, Case> = BTreeMap::new();
    for (target, category, tag) in updates {
        if stored_ids.is_empty() {
            break;
        }
        let id = &stored_ids[usize::from(target) % stored_ids.len()];
        let base = store.case(id).expect("read").expect("stored");
        let next = regrouped(
            updated.get(id).cloned().unwrap_or_else(|| base.clone()),
            category,
            tag,
        );
        let mut changes = ChangeSet::new();
        changes.update_case(&base, next.clone()).expect("update");
        batch.push(changes);
        updated.insert(id.clone(), next);
    }
    let exclude = match exclude {
        Some((true, n)) if !stored_ids.is_empty() => Some(CaseRef::Existing(
            stored_ids[usize::from(n) % stored_ids.len()].clone(),
        )),
        Some((false, n)) if !pending_handles.is_empty() => {
            Some(pending_handles[usize::from(n) % pending_handles.len()].clone())
        }
        _ => None,
    };
    let mut all: Vec<(CaseRef, Case)> = Vec::new();
    for id in stored_ids {
        let case = updated
            .get(id)
            .cloned()
            .unwrap_or_else(|| store.case(id).expect("read").expect("stored"));
        all.push((CaseRef::Existing(id.clone()), case));
    }
    for (handle, spec) in pending_handles.iter().zip(pending) {
        all.push((handle.clone(), history_draft(spec)));
    }
    let counted = all
        .into_iter()
        .filter(|(r, _)| Some(r) != exclude.as_ref())
        .map(|(_, c)| c)
        .collect();
    (batch, exclude, counted)
}

fn has_category(case: &Case, wanted: &str) -> bool {
    matches!(case.fields.get("category"), Some(FieldValue::Name(n)) if n == wanted)
}

/// Every distinct-sender question over `[since, until]` (each category,
/// subject and tag of the pools, listed and counted) and the case count of
/// every sender of the pool (and one outside it) answers what a walk over
/// `counted` does.
fn check_window(
    view: &impl CaseHistory,
    counted: &[&Case],
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<(), TestCaseError> {
    for probe in 0..6 {
        let sender = format!("s{probe}@x.example");
        let walked = counted
            .iter()
            .filter(|c| c.created_at >= since && c.created_at <= until)
            .filter(|c| c.sender.email == sender)
            .count() as u64;
        prop_assert_eq!(view.cases_from_sender(&sender, since, until), walked);
    }
    for (position, wanted) in HISTORY_CATEGORIES.iter().enumerate() {
        let walked = walk_answer(counted, since, until, |c| has_category(c, wanted));
        prop_assert_eq!(
            view.distinct_senders_with_category(wanted, since, until),
            walked.clone()
        );
        // Counted without the list: the same size and membership.
        check_counts(view, SenderGroup::Category(wanted), since, until, &walked)?;
        let fingerprint = complaintd::case::subject_fingerprint(&format!("停气通知 {position}"));
        let walked = walk_answer(counted, since, until, |c| {
            complaintd::case::subject_fingerprint(&c.subject) == fingerprint
        });
        prop_assert_eq!(
            view.distinct_senders_with_subject(&fingerprint, since, until),
            walked.clone()
        );
        check_counts(
            view,
            SenderGroup::Subject(&fingerprint),
            since,
            until,
            &walked,
        )?;
    }
    for wanted in HISTORY_TAGS {
        let walked = walk_answer(counted, since, until, |c| c.tags.contains(wanted));
        prop_assert_eq!(
            view.distinct_senders_with_tag(wanted, since, until),
            walked.clone()
        );
        check_counts(view, SenderGroup::Tag(wanted), since, until, &walked)?;
    }
    Ok(())
}

fn check_batch_history(
    stored: Vec<HistoryCaseSpec>,
    pending: Vec<HistoryCaseSpec>,
    updates: Vec<(u8, u8, u8)>,
    exclude: Option<(bool, u8)>,
    windows: Vec<(u16, u16)>,
    late: HistoryCaseSpec,
) -> Result<(), TestCaseError> {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    let mut stored_ids = Vec::new();
    for spec in &stored {
        let mut changes = ChangeSet::new();
        let handle = changes.new_case(history_draft(spec)).expect("case");
        let outcome = store.apply(&changes).expect("commit");
        stored_ids.push(outcome.case_id(&handle).expect("numbered"));
    }
    let (batch, exclude, counted) = batch_over(&store, &stored_ids, &pending, updates, exclude);
    let counted: Vec<&Case> = counted.iter().collect();

    for (from, length) in windows {
        let since = t0() + Duration::minutes(i64::from(from));
        let until = since + Duration::minutes(i64::from(length));
        // Asked twice through fresh views: the second answer comes from
        // the store's cached window.
        for _ in 0..2 {
            let view = batch.history(&store, exclude.as_ref());
            check_window(&view, &counted, since, until)?;
        }
    }

    // A commit after the questions changes the cached windows: the next
    // question sees the new case.
    let (since, until) = (t0(), t0() + Duration::minutes(600));
    let view = batch.history(&store, exclude.as_ref());
    for wanted in HISTORY_CATEGORIES {
        prop_assert_eq!(
            view.distinct_senders_with_category(wanted, since, until),
            walk_answer(&counted, since, until, |c| has_category(c, wanted))
        );
    }
    let mut changes = ChangeSet::new();
    changes.new_case(history_draft(&late)).expect("case");
    store.apply(&changes).expect("commit");
    let late_case = history_draft(&late);
    let mut with_late = counted.clone();
    with_late.push(&late_case);
    let view = batch.history(&store, exclude.as_ref());
    for wanted in HISTORY_CATEGORIES {
        prop_assert_eq!(
            view.distinct_senders_with_category(wanted, since, until),
            walk_answer(&with_late, since, until, |c| has_category(c, wanted))
        );
    }
    Ok(())
}

/// One step of the property over commits and questions in sequence.
#[derive(Debug, Clone)]
enum HistoryStep {
    /// New cases committed in one transaction.
    Commit(Vec<HistoryCaseSpec>),
    /// A stored case gets a new category, subject and tag, committed: its
    /// index entries are removed and added at its old opening time.
    Update { target: u8, category: u8, tag: u8 },
    /// A batch with new cases and then a stale update of a stored case: the
    /// commit aborts after the new cases' index entries were written.
    Abort {
        new: Vec<HistoryCaseSpec>,
        target: u8,
    },
    /// Every question over a window ending `advance` minutes after the
    /// previous one: the window moves forward, as fetches do.
    Ask { advance: u16, length: u16 },
    /// Every question over any window, through a batch with pending cases
    /// and updates, leaving out one case.
    AskBatch {
        from: u16,
        length: u16,
        pending: Vec<HistoryCaseSpec>,
        updates: Vec<(u8, u8, u8)>,
        exclude: Option<(bool, u8)>,
    },
}

fn history_step() -> impl Strategy<Value = HistoryStep> {
    prop_oneof![
        3 => proptest::collection::vec(history_case_spec(), 1..4).prop_map(HistoryStep::Commit),
        2 => (any::<u8>(), 0u8..3, 0u8..3)
            .prop_map(|(target, category, tag)| HistoryStep::Update { target, category, tag }),
        1 => (proptest::collection::vec(history_case_spec(), 1..3), any::<u8>())
            .prop_map(|(new, target)| HistoryStep::Abort { new, target }),
        3 => (0u16..120, 0u16..400).prop_map(|(advance, length)| HistoryStep::Ask { advance, length }),
        2 => (
            0u16..600,
            0u16..600,
            proptest::collection::vec(history_case_spec(), 0..3),
            proptest::collection::vec((any::<u8>(), 0u8..3, 0u8..3), 0..3),
            proptest::option::of((any::<bool>(), any::<u8>())),
        )
            .prop_map(|(from, length, pending, updates, exclude)| HistoryStep::AskBatch {
                from,
                length,
                pending,
                updates,
                exclude,
            }),
    ]
}

/// Runs the steps against one store, committing through a clone of the
/// handle the questions use (clones share the cache), and checks every
/// answer against a walk over the stored cases.
fn check_history_across_commits(steps: Vec<HistoryStep>) -> Result<(), TestCaseError> {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    let writer = store.clone();
    let mut stored_ids: Vec<CaseId> = Vec::new();
    let mut window_end = t0();
    for step in steps {
        match step {
            HistoryStep::Commit(specs) => {
                let mut batch = IngestBatch::new();
                let mut handles = Vec::new();
                for spec in &specs {
                    let mut changes = ChangeSet::new();
                    handles.push(changes.new_case(history_draft(spec)).expect("case"));
                    batch.push(changes);
                }
                let report = writer.commit(&batch).expect("commit");
                for (outcome, handle) in report.outcomes.iter().zip(&handles) {
                    stored_ids.push(outcome.case_id(handle).expect("numbered"));
                }
            }
            HistoryStep::Update {
                target,
                category,
                tag,
            } => {
                if stored_ids.is_empty() {
                    continue;
                }
                let id = &stored_ids[usize::from(target) % stored_ids.len()];
                let base = writer.case(id).expect("read").expect("stored");
                let next = regrouped(base.clone(), category, tag);
                let mut changes = ChangeSet::new();
                changes.update_case(&base, next).expect("update");
                writer.apply(&changes).expect("commit");
            }
            HistoryStep::Abort { new, target } => {
                if stored_ids.is_empty() {
                    continue;
                }
                let id = &stored_ids[usize::from(target) % stored_ids.len()];
                let stored = writer.case(id).expect("read").expect("stored");
                let mut batch = IngestBatch::new();
                for spec in &new {
                    let mut changes = ChangeSet::new();
                    changes.new_case(history_draft(spec)).expect("case");
                    batch.push(changes);
                }
                // Read before a change that never happened: the base is stale.
                let mut stale_base = stored.clone();
                stale_base.tags.insert("stale".into());
                let mut next = stored.clone();
                next.fields.insert(
                    "category".into(),
                    FieldValue::Name(HISTORY_CATEGORIES[0].into()),
                );
                let mut changes = ChangeSet::new();
                changes.update_case(&stale_base, next).expect("update");
                batch.push(changes);
                let err = writer.commit(&batch).expect_err("a stale base aborts");
                prop_assert!(matches!(err, StoreError::Conflict(_)), "{}", err);
            }
            HistoryStep::Ask { advance, length } => {
                window_end += Duration::minutes(i64::from(advance));
                let since = window_end - Duration::minutes(i64::from(length));
                let cases: Vec<Case> = stored_ids
                    .iter()
                    .map(|id| store.case(id).expect("read").expect("stored"))
                    .collect();
                let counted: Vec<&Case> = cases.iter().collect();
                let batch = IngestBatch::new();
                check_window(&batch.history(&store, None), &counted, since, window_end)?;
            }
            HistoryStep::AskBatch {
                from,
                length,
                pending,
                updates,
                exclude,
            } => {
                let since = t0() + Duration::minutes(i64::from(from));
                let until = since + Duration::minutes(i64::from(length));
                let (batch, exclude, counted) =
                    batch_over(&store, &stored_ids, &pending, updates, exclude);
                let counted: Vec<&Case> = counted.iter().collect();
                check_window(
                    &batch.history(&store, exclude.as_ref()),
                    &counted,
                    since,
                    until,
                )?;
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// The batch's remembered index walks answer exactly what a walk over
    /// the stored cases (as the batch leaves them) and the pending ones does.
    #[test]
    fn batch_history_answers_equal_a_walk_over_the_cases(
        stored in proptest::collection::vec(history_case_spec(), 0..12),
        pending in proptest::collection::vec(history_case_spec(), 0..8),
        updates in proptest::collection::vec((any::<u8>(), 0u8..3, 0u8..3), 0..4),
        exclude in proptest::option::of((any::<bool>(), any::<u8>())),
        windows in proptest::collection::vec((0u16..600, 0u16..600), 1..4),
        late in history_case_spec(),
    ) {
        check_batch_history(stored, pending, updates, exclude, windows, late)?;
    }

    /// Commits (new cases, updates that move a case between terms at its
    /// old opening time, aborted batches) interleaved with questions over
    /// moving and arbitrary windows: the store's cached windows answer
    /// exactly what a walk over the stored cases does after every step.
    #[test]
    fn cached_history_follows_commits_and_moving_windows(
        steps in proptest::collection::vec(history_step(), 1..24),
    ) {
        check_history_across_commits(steps)?;
    }
}

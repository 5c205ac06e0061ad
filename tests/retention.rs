//! The retention purge on a real sled store: an expired closed case leaves no
//! trace in any tree, while recent, open, still-sending and recently active
//! cases, shared attachments, recent quarantine and recent acknowledgement
//! counters stay; a case reopened after the scan is kept; a zero retention
//! and a second run purge nothing. And the daemon's scheduler on an injected
//! `ManualClock` (no mail server: its IMAP and SMTP tasks meet refused
//! connections): the first purge runs at start, the next a day later on the
//! moved clock; the case stays while its last event is not older than the
//! retention and is gone at the purge after that.

mod daemon_support;
mod support;

use std::sync::Arc;

use anyhow::{ensure, Context};
use chrono::{DateTime, Duration, TimeZone, Utc};
use complaintd::case::{Address, Case, CaseId, CaseState, Event, EventKind, FieldValue};
use complaintd::clock::{Clock, ManualClock};
use complaintd::config::Config;
use complaintd::daemon::DaemonOptions;
use complaintd::engine::{Engine, RawMessage, PURGE_INTERVAL_HOURS};
use complaintd::metrics::Metrics;
use complaintd::rules::ast::ClockEvent;
use complaintd::rules::eval::CaseHistory;
use complaintd::store::{
    CaseRef, ChangeSet, IngestBatch, MailDraft, MailIdentity, MessageRecord, PurgeReport,
    QuarantineRecord, RenderedMail, Store,
};
use tempfile::TempDir;

const RETENTION_DAYS: i64 = 730;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2028, 6, 1, 12, 0, 0).unwrap()
}

fn retention() -> Duration {
    Duration::days(RETENTION_DAYS)
}

/// Well before the retention's start.
fn long_ago() -> DateTime<Utc> {
    now() - Duration::days(800)
}

/// A mail whose Message-ID is `OUTBOX_ID@host`, as the daemon renders them.
fn render_plain(identity: &MailIdentity) -> Result<RenderedMail, String> {
    let message_id = format!("{}@corp.example", identity.outbox_id);
    Ok(RenderedMail {
        bytes: format!(
            "Message-ID: <{message_id}>\r\n\r\nabout {:?}\r\n",
            identity.case
        )
        .into_bytes(),
        message_id,
        subject: identity.purpose.clone(),
        template_failure: None,
    })
}

fn ack(to: &str, at: DateTime<Utc>) -> MailDraft {
    MailDraft::new(
        "ack",
        "acknowledgement",
        "complaints@corp.example",
        vec![to.into()],
        at,
        render_plain,
    )
}

/// A mail whose Message-ID is of its own form, so the store indexes it.
fn reminder_with_message_id(message_id: &'static str, at: DateTime<Utc>) -> MailDraft {
    MailDraft::new(
        "remind",
        "reminder",
        "complaints@corp.example",
        vec!["service@corp.example".into()],
        at,
        move |identity: &MailIdentity| {
            Ok(RenderedMail {
                message_id: message_id.into(),
                subject: "s".into(),
                bytes: format!("reminder of {:?}", identity.case).into_bytes(),
                template_failure: None,
            })
        },
    )
}

/// A new complaint as ingest commits it: case, event, Message-ID, a timer,
/// an acknowledgement and its counter; optionally an attachment.
fn complaint(
    store: &Store,
    message_id: &str,
    sender: &str,
    at: DateTime<Utc>,
    attachment: Option<&[u8]>,
) -> CaseId {
    let (changes, case) = complaint_changes(message_id, sender, at, attachment);
    let outcome = store.apply(&changes).unwrap();
    outcome.case_id(&case).expect("a new case")
}

/// The change set of a new complaint at `at`, with its acknowledgement.
fn complaint_changes(
    message_id: &str,
    sender: &str,
    at: DateTime<Utc>,
    attachment: Option<&[u8]>,
) -> (ChangeSet, CaseRef) {
    let mut changes = ChangeSet::for_message(message_id, at).unwrap();
    let case = changes
        .new_case(Case::new(
            CaseId("unnumbered".into()),
            at,
            "email",
            Address::new(sender, None),
            "停气 通知",
            "zh",
        ))
        .unwrap();
    changes.append_event(
        &case,
        Event {
            at,
            kind: EventKind::Created {
                message_id: message_id.into(),
                channel: "email".into(),
                sender: sender.into(),
            },
        },
    );
    changes.link_message(&case).unwrap();
    changes.replace_clock_timers(&case, "forward", vec![(0, at + Duration::days(900))]);
    changes.queue_mail(&case, ack(sender, at)).unwrap();
    changes.count_ack(sender, at);
    if let Some(bytes) = attachment {
        changes.store_attachment(&case, "photo.png", "image/png", bytes.to_vec());
    }
    (changes, case)
}

/// A reply of the customer linked to the case, with an attachment.
fn reply(store: &Store, case: &CaseId, message_id: &str, at: DateTime<Utc>, attachment: &[u8]) {
    let mut changes = ChangeSet::for_message(message_id, at).unwrap();
    let case_ref = CaseRef::from(case);
    changes.append_event(
        &case_ref,
        Event {
            at,
            kind: EventKind::MailReceived {
                message_id: message_id.into(),
                from: "customer".into(),
                role: "customer".into(),
                subject: "Re".into(),
            },
        },
    );
    changes.link_message(&case_ref).unwrap();
    changes.store_attachment(
        &case_ref,
        "scan.pdf",
        "application/pdf",
        attachment.to_vec(),
    );
    store.apply(&changes).unwrap();
}

/// Complaint number `n`, long ago, its mail sent, closed the next day.
fn expired_complaint(store: &Store, n: usize, attachment: Option<&[u8]>) -> CaseId {
    let sender = format!("s{n}@x.example");
    let id = complaint(store, &format!("<m{n}@x>"), &sender, long_ago(), attachment);
    send_all(store, &id, long_ago());
    set_state(
        store,
        &id,
        CaseState::Closed,
        long_ago() + Duration::days(1),
    );
    id
}

fn set_state(store: &Store, id: &CaseId, to: CaseState, at: DateTime<Utc>) {
    let base = store.case(id).unwrap().unwrap();
    let mut updated = base.clone();
    updated.state = to;
    let mut changes = ChangeSet::new();
    let case_ref = changes.update_case(&base, updated).unwrap();
    changes.append_event(
        &case_ref,
        Event {
            at,
            kind: EventKind::StateChanged {
                from: base.state,
                to,
                because: Default::default(),
            },
        },
    );
    store.apply(&changes).unwrap();
}

fn send_all(store: &Store, id: &CaseId, at: DateTime<Utc>) {
    for entry in store.outbox_of_case(id).unwrap() {
        store.outbox_sent(&entry.id, at).unwrap();
    }
}

fn quarantine(store: &Store, message_id: &str, at: DateTime<Utc>) {
    let mut changes = ChangeSet::for_message(message_id, at).unwrap();
    changes
        .quarantine(
            QuarantineRecord {
                at,
                mailbox: "INBOX".into(),
                uid: Some(1),
                message_id: Some(message_id.into()),
                reason: "unparseable".into(),
                size: 5,
                truncated: false,
            },
            format!("raw of {message_id}").into_bytes(),
        )
        .unwrap();
    store.apply(&changes).unwrap();
}

/// A digest (mail of no case) whose text is `body`.
fn digest(store: &Store, body: String, at: DateTime<Utc>) -> String {
    let mut changes = ChangeSet::new();
    changes
        .queue_mail_without_case(MailDraft::new(
            "digest",
            "weekly-digest",
            "complaints@corp.example",
            vec!["gm@corp.example".into()],
            at,
            move |identity: &MailIdentity| {
                Ok(RenderedMail {
                    message_id: format!("{}@corp.example", identity.outbox_id),
                    subject: "digest".into(),
                    bytes: body.clone().into_bytes(),
                    template_failure: None,
                })
            },
        ))
        .unwrap();
    let outcome = store.apply(&changes).unwrap();
    outcome.applied().unwrap().mails[0].outbox_id.clone()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Every tree, key and value of the store's database that contains `needle`.
fn mentions(path: &std::path::Path, needle: &[u8]) -> Vec<String> {
    // sled's I/O threads let go of a closed store's file lock a moment after
    // it is dropped: wait on that lock itself (`flock`, as sled takes it).
    let lock = std::fs::File::open(path.join("db")).unwrap();
    lock.lock().unwrap();
    drop(lock);
    let db = sled::open(path).unwrap();
    let mut found = Vec::new();
    for name in db.tree_names() {
        let tree = db.open_tree(&name).unwrap();
        for item in tree.iter() {
            let (key, value) = item.unwrap();
            let contains = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
            if contains(&key) || contains(&value) {
                found.push(format!(
                    "{}: {}",
                    String::from_utf8_lossy(&name),
                    String::from_utf8_lossy(&key)
                ));
            }
        }
    }
    found
}

#[test]
fn a_purged_case_leaves_its_due_batch_to_the_mail_of_a_case_that_stays() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("db");
    let store = Store::open(&path).unwrap();
    // One commit queues both acknowledgements: one due batch lists them.
    let (first, first_ref) = complaint_changes("<gone@x>", "gone@x.example", long_ago(), None);
    let (second, second_ref) = complaint_changes("<stays@x>", "stays@x.example", long_ago(), None);
    let mut batch = IngestBatch::new();
    batch.push(first);
    batch.push(second);
    let committed = store.commit(&batch).unwrap();
    let gone = committed.case_id(&first_ref).unwrap();
    let stays = committed.case_id(&second_ref).unwrap();
    send_all(&store, &gone, long_ago());
    set_state(
        &store,
        &gone,
        CaseState::Closed,
        long_ago() + Duration::days(1),
    );
    let report = store.purge_expired(now(), retention(), 200).unwrap();
    assert_eq!(report.cases, 1);
    assert!(store.case(&gone).unwrap().is_none());

    // The mail of the case that stays is still found, once, and counted.
    let waiting = store.outbox_of_case(&stays).unwrap();
    assert_eq!(store.queue_depth(), 1);
    let due: Vec<String> = store
        .due_outbox(now(), 10)
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(due, [waiting[0].id.clone()]);
    drop(store);
    let found = mentions(&path, gone.0.as_bytes());
    assert!(found.is_empty(), "{} is still in {found:?}", gone.0);
    let listed = mentions(&path, waiting[0].id.as_bytes());
    assert_eq!(
        listed
            .iter()
            .filter(|place| place.starts_with("outbox_due"))
            .count(),
        1,
        "the batch still lists it: {listed:?}"
    );
}

#[test]
fn an_expired_case_leaves_no_trace_and_everything_else_stays() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("db");
    let store = Store::open(&path).unwrap();
    let shared: &[u8] = b"a photo two complainants sent";
    let own: &[u8] = b"a scan only the purged case has";

    // Expired: closed long ago, all its mail sent or failed for good.
    let purged = complaint(&store, "<a1@x>", "purged@a.example", long_ago(), None);
    reply(
        &store,
        &purged,
        "<a2@x>",
        long_ago() + Duration::hours(1),
        own,
    );
    let mut changes = ChangeSet::new();
    changes
        .queue_mail(
            &CaseRef::from(&purged),
            reminder_with_message_id("<a-own-form@corp.example>", long_ago()),
        )
        .unwrap();
    store.apply(&changes).unwrap();
    send_all(&store, &purged, long_ago() + Duration::hours(2));
    let mut changes = ChangeSet::new();
    changes.fail_outbox(
        &format!("{}.remind.1", purged.0),
        "550 no such user",
        long_ago() + Duration::hours(3),
    );
    store.apply(&changes).unwrap();
    // Its photo is also an open case's: the content stays for that case.
    let mut changes = ChangeSet::for_message("<a3@x>", long_ago()).unwrap();
    changes.store_attachment(
        &CaseRef::from(&purged),
        "p.png",
        "image/png",
        shared.to_vec(),
    );
    changes.link_message(&CaseRef::from(&purged)).unwrap();
    store.apply(&changes).unwrap();
    set_state(
        &store,
        &purged,
        CaseState::Closed,
        long_ago() + Duration::days(1),
    );

    // Kept: open although old; its photo is the purged case's too.
    let open = complaint(&store, "<c1@x>", "open@c.example", long_ago(), Some(shared));
    send_all(&store, &open, long_ago());
    // Kept: closed long ago but its acknowledgement is still to be sent.
    let unsent = complaint(&store, "<d1@x>", "unsent@d.example", long_ago(), None);
    set_state(
        &store,
        &unsent,
        CaseState::Closed,
        long_ago() + Duration::days(1),
    );
    // Kept: opened long ago, but something happened within the retention.
    let active = complaint(&store, "<e1@x>", "active@e.example", long_ago(), None);
    send_all(&store, &active, long_ago());
    set_state(
        &store,
        &active,
        CaseState::Closed,
        now() - Duration::days(10),
    );
    // Kept: closed recently.
    let recent = complaint(
        &store,
        "<b1@x>",
        "recent@b.example",
        now() - Duration::days(100),
        None,
    );
    send_all(&store, &recent, now() - Duration::days(100));
    set_state(
        &store,
        &recent,
        CaseState::Rejected,
        now() - Duration::days(99),
    );

    // Digests: an old sent one lists the purged case and goes; an old one
    // not sent yet and a recent one stay.
    let old_digest = digest(&store, format!("cases: {purged}"), long_ago());
    store.outbox_sent(&old_digest, long_ago()).unwrap();
    let unsent_digest = digest(&store, "cases: none".into(), long_ago());
    let recent_digest = digest(&store, format!("cases: {recent}"), now());
    store.outbox_sent(&recent_digest, now()).unwrap();

    quarantine(&store, "<q-old@x>", long_ago());
    quarantine(&store, "<q-new@x>", now() - Duration::days(10));
    for (message_id, at) in [("<auto-old@x>", long_ago()), ("<auto-new@x>", now())] {
        let mut changes = ChangeSet::for_message(message_id, at).unwrap();
        changes
            .discard_message("automatic mail about no case")
            .unwrap();
        store.apply(&changes).unwrap();
    }
    let mut changes = ChangeSet::new();
    changes.count_ack("hour@f.example", now() - Duration::hours(26));
    changes.count_ack("hour@f.example", now() - Duration::hours(23));
    store.apply(&changes).unwrap();
    assert!(store.case_attachments(&purged).unwrap().len() == 2);

    // No retention: nothing goes, and no purge is recorded.
    assert_eq!(
        store.purge_expired(now(), Duration::zero(), 200).unwrap(),
        PurgeReport::default()
    );
    assert!(store.case(&purged).unwrap().is_some());
    assert_eq!(store.last_purge().unwrap(), None);

    let report = store.purge_expired(now(), retention(), 200).unwrap();
    assert_eq!(
        report,
        PurgeReport {
            cases: 1,
            incoming_mails: 3,
            // The case's two and the old digest.
            outgoing_mails: 3,
            attachments: 1,
            quarantined: 1,
            discarded: 1,
            // The hour 26 h ago and each complaint's hour long ago (five
            // senders; the recent case's hour is 100 days ago).
            ack_counters: 6,
        }
    );
    assert_eq!(store.last_purge().unwrap(), Some(now()));

    assert_eq!(store.case(&purged).unwrap(), None);
    assert!(store.events(&purged).unwrap().is_empty());
    for kept in [&open, &unsent, &active, &recent] {
        assert!(store.case(kept).unwrap().is_some(), "{kept} was purged");
        assert!(
            !store.events(kept).unwrap().is_empty(),
            "{kept} lost its log"
        );
        assert_eq!(store.outbox_of_case(kept).unwrap().len(), 1, "{kept}");
    }
    assert!(matches!(
        store.message("<c1@x>").unwrap(),
        Some(MessageRecord::Incoming { case, .. }) if case == open
    ));
    assert_eq!(store.timers_of_case(&open).unwrap().len(), 1);
    assert_eq!(
        store.attachment(&sha256_hex(shared)).unwrap(),
        Some(shared.to_vec())
    );
    assert_eq!(store.attachment(&sha256_hex(own)).unwrap(), None);
    assert_eq!(store.case_attachments(&open).unwrap().len(), 1);
    let quarantined = store.quarantined().unwrap();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(
        quarantined[0].record.message_id.as_deref(),
        Some("<q-new@x>")
    );
    assert!(store.message("<q-new@x>").unwrap().is_some());
    assert_eq!(store.message("<q-old@x>").unwrap(), None);
    assert_eq!(store.message("<auto-old@x>").unwrap(), None);
    assert!(store.message("<auto-new@x>").unwrap().is_some());
    assert_eq!(
        store
            .acks_in_hour("hour@f.example", now() - Duration::hours(23))
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .acks_in_hour("hour@f.example", now() - Duration::hours(26))
            .unwrap(),
        0
    );
    assert_eq!(
        store.next_timer_due().unwrap(),
        store
            .timers_of_case(&open)
            .unwrap()
            .iter()
            .map(|t| t.due)
            .min()
    );
    assert!(store.outbox_entry(&old_digest).unwrap().is_none());
    assert!(store.outbox_entry(&unsent_digest).unwrap().is_some());
    assert!(store.outbox_entry(&recent_digest).unwrap().is_some());
    for message_id in ["<a1@x>", "<a2@x>", "<a3@x>", "<a-own-form@corp.example>"] {
        assert_eq!(store.message(message_id).unwrap(), None, "{message_id}");
    }

    // A second run finds nothing more.
    let later = now() + Duration::days(1);
    assert_eq!(
        store.purge_expired(later, retention(), 200).unwrap(),
        PurgeReport {
            ack_counters: 1,
            ..PurgeReport::default()
        }
    );
    assert_eq!(
        store.purge_expired(later, retention(), 200).unwrap(),
        PurgeReport::default()
    );
    drop(store);

    // No tree holds the case's number, its Message-IDs, its sender or its
    // own attachment's bytes; the kept cases are still found this way.
    let needles: Vec<Vec<u8>> = [
        purged.0.as_str(),
        "a1@x",
        "a2@x",
        "a3@x",
        "a-own-form@corp.example",
        "purged@a.example",
        "q-old@x",
        "auto-old@x",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .chain([own.to_vec(), sha256_hex(own).into_bytes()])
    .collect();
    for needle in &needles {
        let found = mentions(&path, needle);
        assert!(
            found.is_empty(),
            "{} is still in {found:?}",
            String::from_utf8_lossy(needle)
        );
    }
    for kept in [&open, &unsent, &active, &recent] {
        assert!(!mentions(&path, kept.0.as_bytes()).is_empty());
    }
    assert!(!mentions(&path, shared).is_empty());
}

#[test]
fn a_case_reopened_after_the_scan_is_kept_and_chunks_are_held_apart() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path().join("db")).unwrap();
    let mut cases = Vec::new();
    for n in 0..5 {
        cases.push(expired_complaint(&store, n, None));
    }
    let reopened = cases[3].clone();
    let mut holds = 0;
    let report = store
        .purge_expired_guarded(now(), retention(), 2, || {
            holds += 1;
            // Between the scan and the first chunk, a mail reopens a case
            // of the last-but-one chunk.
            if holds == 1 {
                set_state(&store, &reopened, CaseState::Reopened, now());
            }
        })
        .unwrap();
    // Three chunks of at most two cases, then the quarantine.
    assert_eq!(holds, 4);
    assert_eq!(report.cases, 4);
    assert_eq!(report.incoming_mails, 4);
    assert_eq!(report.outgoing_mails, 4);
    for id in &cases {
        assert_eq!(store.case(id).unwrap().is_some(), *id == reopened, "{id}");
    }
    assert_eq!(store.events(&reopened).unwrap().len(), 5);
}

#[test]
fn content_goes_with_the_last_case_that_has_it_and_stays_for_one_that_took_it_up_meanwhile() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path().join("db")).unwrap();
    let across_chunks: &[u8] = b"a photo of the first and the last expired case";
    let taken_up: &[u8] = b"a scan a new complaint brings again during the purge";
    let mut cases = Vec::new();
    for n in 0..4 {
        let attachment = match n {
            0 | 3 => Some(across_chunks),
            1 => Some(taken_up),
            _ => None,
        };
        cases.push(expired_complaint(&store, n, attachment));
    }
    let mut holds = 0;
    let mut newcomer = None;
    let report = store
        .purge_expired_guarded(now(), retention(), 2, || {
            holds += 1;
            // After the walk over the references, before the first chunk:
            // a new complaint carries the scan of case 1 (stored once, so
            // it only adds a reference).
            if holds == 1 {
                newcomer = Some(complaint(
                    &store,
                    "<new@x>",
                    "new@x.example",
                    now(),
                    Some(taken_up),
                ));
            }
        })
        .unwrap();
    assert_eq!(report.cases, 4);
    for id in &cases {
        assert!(store.case(id).unwrap().is_none(), "{id}");
    }
    // Cases 0 and 3 went in different chunks; the photo went with the second.
    assert_eq!(store.attachment(&sha256_hex(across_chunks)).unwrap(), None);
    assert_eq!(
        store.attachment(&sha256_hex(taken_up)).unwrap().as_deref(),
        Some(taken_up),
        "the new complaint {newcomer:?} still has it"
    );
    assert_eq!(report.attachments, 1);
}

#[test]
fn the_history_the_rules_ask_forgets_purged_cases() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path().join("db")).unwrap();
    let mut cases = Vec::new();
    for (n, sender) in ["gone@x.example", "kept@x.example"].iter().enumerate() {
        let id = complaint(&store, &format!("<h{n}@x>"), sender, long_ago(), None);
        let base = store.case(&id).unwrap().unwrap();
        let mut updated = base.clone();
        updated
            .fields
            .insert("category".into(), FieldValue::Name("billing".into()));
        let mut changes = ChangeSet::new();
        changes.update_case(&base, updated).unwrap();
        store.apply(&changes).unwrap();
        send_all(&store, &id, long_ago());
        cases.push(id);
    }
    set_state(&store, &cases[0], CaseState::Closed, long_ago());
    let (since, until) = (long_ago() - Duration::days(1), now());
    // Asked through a batch, the answer comes from (and fills) the store's
    // history cache, which must learn of the purge's removals.
    let asked = || {
        IngestBatch::new()
            .history(&store, None)
            .distinct_senders_with_category("billing", since, until)
    };
    assert_eq!(asked(), ["gone@x.example", "kept@x.example"]);
    assert_eq!(
        store.purge_expired(now(), retention(), 200).unwrap().cases,
        1
    );
    assert_eq!(asked(), ["kept@x.example"]);
    assert_eq!(
        store.distinct_senders_with_category("billing", since, until),
        ["kept@x.example"]
    );
    assert_eq!(store.cases_from_sender("gone@x.example", since, until), 0);
}

/// Marks every mail of the case sent, as the SMTP sender would.
fn all_sent(engine: &Engine, case: &CaseId, at: DateTime<Utc>) -> anyhow::Result<()> {
    for entry in engine.store().outbox_of_case(case)? {
        engine.mail_sent(&entry.id, at)?;
    }
    Ok(())
}

/// Runs the daemon with its clock at each of `instants` in turn (moved by
/// hand while it runs), waiting each time until its scheduler has purged at
/// that instant; returns whether the case survived each purge.
async fn run_daemon_through_purges(
    config: &Config,
    instants: &[DateTime<Utc>],
    case: &CaseId,
) -> anyhow::Result<Vec<bool>> {
    let clock = Arc::new(ManualClock::new(instants[0]));
    let options = DaemonOptions {
        clock: clock.clone(),
        ..daemon_support::fast_options(Metrics::new())
    };
    let daemon = daemon_support::RunningDaemon::start(config.clone(), options).await?;
    let engine = Arc::clone(&daemon.engine);
    let mut survived = Vec::new();
    let mut outcome = Ok(());
    for at in instants {
        clock.set(*at);
        outcome = daemon
            .wait_until("the scheduler to purge", daemon_support::DEADLINE, || {
                Ok((engine.store().last_purge()? == Some(*at)).then_some(()))
            })
            .await;
        if outcome.is_err() {
            break;
        }
        survived.push(engine.store().case_exists(case)?);
    }
    daemon.stop().await?;
    outcome.map(|()| survived)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_purges_a_closed_case_once_the_retention_has_passed() -> anyhow::Result<()> {
    daemon_support::init_test_logging();
    let work = daemon_support::Workspace::new()?;
    let config = work.offline_config(&format!("retention_days = {RETENTION_DAYS}"))?;
    let opened = Utc.with_ymd_and_hms(2026, 11, 24, 2, 0, 0).unwrap();
    let closed = opened + Duration::hours(1);

    // A complaint ingested, answered and closed (by the engine alone).
    let case = {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(opened));
        let engine = Engine::from_config(&config, clock)?;
        let raw =
            std::fs::read(daemon_support::repo().join("examples/complaints/01-gas-leak.eml"))?;
        let report = engine.ingest(
            "complaints",
            "own",
            1,
            vec![(1, RawMessage::full(raw).received_at(opened))],
        )?;
        let case = report.new_cases().next().context("a case")?.clone();
        engine.lifecycle_event(&case, ClockEvent::Closed, closed)?;
        // The policy's escalation timers outlive the closing; let them run
        // out now, so that nothing is left to happen to the case.
        engine.fire_due(closed + Duration::days(5))?;
        all_sent(&engine, &case, closed + Duration::days(5))?;
        ensure!(
            engine.store().timers_of_case(&case)?.is_empty(),
            "timers left: {:?}",
            engine.store().timers_of_case(&case)?
        );
        case
    };
    let last_event = {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(opened));
        let engine = Engine::from_config(&config, clock)?;
        let events = engine.store().events(&case)?;
        events.iter().map(|e| e.at).max().context("events")?
    };

    // A day before the retention has passed the first purge keeps the case,
    // and so does the next, a day later, with the retention passed exactly
    // (only what is older than it goes).
    let before = last_event + Duration::days(RETENTION_DAYS - 1);
    let exactly = before + Duration::hours(PURGE_INTERVAL_HOURS);
    ensure!(
        run_daemon_through_purges(&config, &[before, exactly], &case).await? == [true, true],
        "purged early"
    );
    // Kept for ever: an engine with `retention_days = 0` has no purge to run.
    {
        let mut forever = config.clone();
        forever.store.retention_days = 0;
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(exactly));
        let engine = Engine::from_config(&forever, clock)?;
        ensure!(engine.next_purge()?.is_none());
        ensure!(engine
            .purge_if_due(exactly + Duration::days(10_000))?
            .is_none());
        ensure!(engine.store().case_exists(&case)?);
    }
    // After a restart a day later the purge due then removes it.
    let after = exactly + Duration::hours(PURGE_INTERVAL_HOURS);
    ensure!(
        run_daemon_through_purges(&config, &[after], &case).await? == [false],
        "still there after the retention"
    );

    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(after));
    let engine = Engine::from_config(&config, clock)?;
    ensure!(engine.store().events(&case)?.is_empty());
    ensure!(engine.store().outbox_of_case(&case)?.is_empty());
    // The next purge is a day later, not at the next start.
    ensure!(engine.next_purge()? == Some(after + Duration::hours(PURGE_INTERVAL_HOURS)));
    ensure!(engine.purge_if_due(after + Duration::hours(1))?.is_none());
    Ok(())
}

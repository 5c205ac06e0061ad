//! Store throughput: ingesting messages with commit+flush per message versus
//! one commit+flush per batch of 100, updates of cases (what a timer firing
//! or a reply commits), and the idle-path reads the scheduler and rules make
//! (next timer due, a sender's recent cases).
//!
//! Run: `cargo bench --bench store`. Every ingested message is a complete
//! new complaint: a case, two events, its Message-ID, a timer, a queued
//! acknowledgement (rendered by `mail::outbound::build`) and an
//! acknowledgement counter.

use std::hint::black_box;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, TimeZone, Utc};
use complaintd::case::{Address, Case, CaseId, Event, EventKind, FieldValue};
use complaintd::mail::outbound::{self, OutgoingMail};
use complaintd::rules::eval::CaseHistory;
use complaintd::store::{
    ChangeSet, Checkpoint, IngestBatch, MailDraft, MailIdentity, RenderedMail, Store,
};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tempfile::TempDir;

/// The daemon's allocator (`src/main.rs`), so the figures are the daemon's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const BATCH: u64 = 100;

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0)
        .single()
        .expect("valid time")
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
        subject: "您的投诉已受理 / complaint received".into(),
        text: "您的投诉已登记，我们会尽快处理。\n".repeat(20),
        html: None,
        in_reply_to: None,
        references: Vec::new(),
        attachments: Vec::new(),
        date: start(),
    };
    let built = outbound::build(&mail, "corp.example").map_err(|e| e.to_string())?;
    Ok(RenderedMail {
        message_id: built.message_id,
        subject: built.subject,
        bytes: built.bytes,
        template_failure: None,
    })
}

/// The change set of one new complaint, numbered `n`.
fn complaint(n: u64) -> ChangeSet {
    let when = start() + Duration::seconds(n as i64);
    let sender = format!("customer{}@example.com", n % 500);
    let message_id = format!("<{n}.bench@example.com>");
    let mut changes = ChangeSet::for_message(&message_id, when).expect("message id");
    let case = changes
        .new_case(Case::new(
            CaseId(String::new()),
            when,
            "email",
            Address::new(&sender, Some("客户")),
            "燃气表计量不准，要求上门核查",
            "zh",
        ))
        .expect("case");
    changes.append_event(
        &case,
        Event {
            at: when,
            kind: EventKind::Created {
                message_id: message_id.clone(),
                channel: "email".into(),
                sender: sender.clone(),
            },
        },
    );
    changes.append_event(
        &case,
        Event {
            at: when,
            kind: EventKind::Note {
                text: "classified".into(),
            },
        },
    );
    changes.link_message(&case).expect("link");
    changes.add_timer(&case, "forward", 0, when + Duration::hours(1));
    changes
        .queue_mail(
            &case,
            MailDraft::new(
                "ack",
                "acknowledgement",
                "complaints@corp.example",
                vec![sender.clone()],
                when,
                render,
            ),
        )
        .expect("mail");
    changes.count_ack(&sender, when);
    changes
}

fn checkpoint(last_uid: u64) -> Checkpoint {
    Checkpoint {
        uid_validity: 1,
        last_uid: u32::try_from(last_uid).unwrap_or(u32::MAX),
    }
}

fn ingest(c: &mut Criterion) {
    let mut group = c.benchmark_group("store_ingest");
    group
        .throughput(Throughput::Elements(BATCH))
        .sample_size(10)
        .warm_up_time(StdDuration::from_secs(1))
        .measurement_time(StdDuration::from_secs(5));

    let dir = TempDir::new().expect("tempdir");
    let store = Store::open(dir.path().join("per-message")).expect("open");
    let mut next = 0u64;
    group.bench_function("commit_and_flush_per_message", |b| {
        b.iter_batched(
            || {
                let first = next;
                next += BATCH;
                (
                    first,
                    (first..first + BATCH).map(complaint).collect::<Vec<_>>(),
                )
            },
            |(first, messages)| {
                for (uid, changes) in (first..).zip(&messages) {
                    store
                        .ingest("INBOX", checkpoint(uid), changes)
                        .expect("commit");
                    store.flush().expect("flush");
                }
            },
            BatchSize::PerIteration,
        )
    });

    let store = Store::open(dir.path().join("per-batch")).expect("open");
    let mut next = 0u64;
    group.bench_function("commit_and_flush_per_batch_of_100", |b| {
        b.iter_batched(
            || {
                let first = next;
                next += BATCH;
                let mut batch = IngestBatch::new();
                for n in first..first + BATCH {
                    batch.push(complaint(n));
                }
                batch.advance_checkpoint("INBOX", checkpoint(first + BATCH));
                batch
            },
            |batch| {
                store.commit(&batch).expect("commit");
                store.flush().expect("flush");
            },
            BatchSize::PerIteration,
        )
    });

    let store = Store::open(dir.path().join("batch-no-flush")).expect("open");
    let mut next = 0u64;
    group.bench_function("commit_per_batch_of_100_without_flush", |b| {
        b.iter_batched(
            || {
                let first = next;
                next += BATCH;
                let mut batch = IngestBatch::new();
                for n in first..first + BATCH {
                    batch.push(complaint(n));
                }
                batch.advance_checkpoint("INBOX", checkpoint(first + BATCH));
                batch
            },
            |batch| store.commit(&batch).expect("commit"),
            BatchSize::PerIteration,
        )
    });

    let store = Store::open(dir.path().join("no-flush")).expect("open");
    let mut next = 0u64;
    group.bench_function("commit_per_message_without_flush", |b| {
        b.iter_batched(
            || {
                let first = next;
                next += BATCH;
                (
                    first,
                    (first..first + BATCH).map(complaint).collect::<Vec<_>>(),
                )
            },
            |(first, messages)| {
                for (uid, changes) in (first..).zip(&messages) {
                    store
                        .ingest("INBOX", checkpoint(uid), changes)
                        .expect("commit");
                }
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// Stored case number `n` (1-based) of a store that numbered only these.
fn case_id(n: u64) -> CaseId {
    CaseId(format!("TS-2026-{n:06}"))
}

fn updates(c: &mut Criterion) {
    const CASES: u64 = 10_000;
    let dir = TempDir::new().expect("tempdir");
    let store = Store::open(dir.path().join("updates")).expect("open");
    for chunk in 0..CASES / BATCH {
        let mut batch = IngestBatch::new();
        for n in chunk * BATCH..(chunk + 1) * BATCH {
            batch.push(complaint(n));
        }
        store.commit(&batch).expect("commit");
    }
    // Each case gets a category and two tags: five index entries in all.
    for chunk in 0..CASES / BATCH {
        let mut changes = ChangeSet::new();
        for n in chunk * BATCH + 1..=(chunk + 1) * BATCH {
            let base = store.case(&case_id(n)).expect("read").expect("stored");
            let mut updated = base.clone();
            updated
                .fields
                .insert("category".into(), FieldValue::Name("metering".into()));
            updated
                .tags
                .extend(["meter".to_owned(), "visit".to_owned()]);
            changes.update_case(&base, updated).expect("update");
        }
        store.apply(&changes).expect("commit");
    }

    let mut group = c.benchmark_group("store_updates_10k_cases");
    group
        .throughput(Throughput::Elements(BATCH))
        .sample_size(10)
        .warm_up_time(StdDuration::from_secs(1))
        .measurement_time(StdDuration::from_secs(5));
    // What an escalation step commits: a field that is in no index, and an event.
    let mut round = 0u64;
    group.bench_function("update_100_cases_keeping_their_index_entries", |b| {
        b.iter_batched(
            || {
                round += 1;
                let first = (round * BATCH) % CASES + 1;
                let mut changes = ChangeSet::new();
                for n in first..first + BATCH {
                    let base = store.case(&case_id(n)).expect("read").expect("stored");
                    let mut updated = base.clone();
                    updated
                        .fields
                        .insert("severity".into(), FieldValue::Number(round as f64));
                    let case = changes.update_case(&base, updated).expect("update");
                    changes.append_event(
                        &case,
                        Event {
                            at: start(),
                            kind: EventKind::Note {
                                text: "escalated".into(),
                            },
                        },
                    );
                }
                changes
            },
            |changes| store.apply(&changes).expect("commit"),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn reads(c: &mut Criterion) {
    let dir = TempDir::new().expect("tempdir");
    let store = Store::open(dir.path().join("reads")).expect("open");
    for chunk in 0..100u64 {
        let mut batch = IngestBatch::new();
        for n in chunk * BATCH..(chunk + 1) * BATCH {
            batch.push(complaint(n));
        }
        store.commit(&batch).expect("commit");
    }
    let mut group = c.benchmark_group("store_reads_10k_open_cases");
    group
        .sample_size(20)
        .warm_up_time(StdDuration::from_secs(1))
        .measurement_time(StdDuration::from_secs(3));
    group.bench_function("next_timer_due", |b| {
        b.iter(|| black_box(store.next_timer_due().expect("read")))
    });
    let now = start() + Duration::seconds(10_000);
    group.bench_function("cases_from_sender_30_days", |b| {
        b.iter(|| {
            black_box(store.cases_from_sender(
                "customer7@example.com",
                now - Duration::days(30),
                now,
            ))
        })
    });
    let hundred_due = start() + Duration::hours(1) + Duration::seconds(99);
    group.bench_function("due_timers_100_of_10k", |b| {
        b.iter(|| black_box(store.due_timers(hundred_due).expect("read")))
    });
    group.finish();
}

criterion_group!(benches, ingest, updates, reads);
criterion_main!(benches);

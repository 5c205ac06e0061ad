//! Restarts across escalation steps on the real mail stack (Dovecot + OpenSMTPD, the daemon
//! in-process on a `ManualClock`, the default policy): a step that falls due while the daemon
//! is down is mailed once at the next start and never again after a further restart; a step
//! that falls due while the daemon runs (the clock moved under it) is mailed once too. Mail is
//! counted in the recipients' real mailboxes, by Message-ID and by content.
//!
//! The scheduler sleeps up to an hour here, so only the clock's change notification
//! (`Clock::on_change`) can make it notice the moved clock within the test's deadline.

mod daemon_support;
mod support;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use chrono::{DateTime, Utc};
use complaintd::case::{CaseId, CaseState, EventKind};
use complaintd::clock::ManualClock;
use complaintd::config::Config;
use complaintd::daemon::DaemonOptions;
use complaintd::engine::Engine;
use complaintd::scheduler::SchedulerOptions;
use complaintd::store::Timer;
use daemon_support::*;
use support::MailStack;

const CUSTOMERS: [&str; 3] = [
    "zhao.restart@example.test",
    "qian.restart@example.test",
    "sun.restart@example.test",
];
const BILLING: &str = "billing@gas.example";
const BILLING_LEAD: &str = "billing-lead@gas.example";
const STEP: Duration = Duration::from_secs(45);

/// Tuesday 2026-11-24, 10:00 in Shanghai: inside office hours.
fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-24T10:00:00+08:00")
        .expect("a time")
        .with_timezone(&Utc)
}

/// The daemon on the shared clock, with a scheduler that sleeps long: a moved clock must be
/// noticed through its change notification, not by waking up anyway.
async fn start(config: &Config, clock: &ManualClock) -> Result<RunningDaemon> {
    let options = DaemonOptions {
        scheduler: SchedulerOptions {
            max_sleep: Duration::from_secs(3600),
            ..SchedulerOptions::default()
        },
        ..options_with_clock(clock)
    };
    RunningDaemon::start(config.clone(), options).await
}

/// A billing complaint by SMTP; waits until its forward is in the department's mailbox and
/// returns the case.
async fn billing_complaint(
    stack: &MailStack,
    daemon: &RunningDaemon,
    customer: &str,
    message_id: &str,
) -> Result<CaseId> {
    let engine = &daemon.engine;
    let raw = complaint(
        "客户",
        customer,
        "账单多收了气费",
        "这个月的气费多收了 80 元，请核实。",
        message_id,
    );
    stack.send_raw(customer, &[COMPLAINTS], &raw).await?;
    let case = daemon
        .wait_until("the complaint's case", STEP, || {
            Ok(cases_by_message_id(engine)?.remove(message_id))
        })
        .await?;
    ensure!(case.state == CaseState::Assigned, "{:?}", case.state);
    let prefix = format!("[{}]", case.id);
    wait_for_matching(
        stack,
        BILLING,
        1,
        move |raw| subject_of(raw).starts_with(&prefix) && subject_of(raw).contains("转派"),
        STEP,
    )
    .await?;
    wait_outbox_sent(daemon, &case.id).await?;
    Ok(case.id)
}

/// The case's mail of one kind in a mailbox: (Message-IDs, how many by content).
struct Count {
    message_ids: Vec<String>,
    by_content: usize,
}

/// Counts the mails in `user`'s mailbox about `case` whose subject contains `marker`, twice:
/// by distinct Message-ID and by content (subject and body text).
async fn count(stack: &MailStack, user: &str, case: &CaseId, marker: &str) -> Result<Count> {
    let prefix = format!("[{case}]");
    let mails: Vec<Vec<u8>> = inbox(stack, user)
        .await?
        .into_iter()
        .filter(|raw| subject_of(raw).starts_with(&prefix))
        .collect();
    let mut message_ids: Vec<String> = mails
        .iter()
        .filter(|raw| subject_of(raw).contains(marker))
        .map(|raw| message_id_of(raw))
        .collect();
    message_ids.sort();
    // By content: the same subject and text, whatever the Message-ID says.
    let by_content = mails
        .iter()
        .filter(|raw| subject_of(raw).contains(marker) && text_of(raw).contains(&case.0))
        .count();
    Ok(Count {
        message_ids,
        by_content,
    })
}

/// Asserts that `user` holds exactly one mail about `case` with `marker` in its subject, and
/// returns its Message-ID.
async fn exactly_one(stack: &MailStack, user: &str, case: &CaseId, marker: &str) -> Result<String> {
    let count = count(stack, user, case, marker).await?;
    ensure!(
        count.message_ids.len() == 1 && count.by_content == 1,
        "{user}: {} mails {marker:?} of {case} by Message-ID ({:?}), {} by content",
        count.message_ids.len(),
        count.message_ids,
        count.by_content
    );
    Ok(count.message_ids[0].clone())
}

/// How often each escalation step of `deadline` fired on the case.
fn fired(engine: &Engine, case: &CaseId, deadline: &str) -> Result<Vec<usize>> {
    let mut steps = Vec::new();
    for event in engine.store().events(case)? {
        if let EventKind::EscalationFired {
            deadline: name,
            step,
            ..
        } = event.kind
        {
            if name == deadline {
                steps.push(step);
            }
        }
    }
    steps.sort();
    Ok(steps)
}

fn timer(timers: &[Timer], deadline: &str, step: usize) -> Result<DateTime<Utc>> {
    timers
        .iter()
        .find(|t| t.deadline == deadline && t.step == step)
        .map(|t| t.due)
        .with_context(|| format!("no timer {deadline} step {step}: {timers:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_steps_are_mailed_once_across_restarts_and_while_running() -> Result<()> {
    init_test_logging();
    let customers: Vec<String> = CUSTOMERS.iter().map(|c| c.to_string()).collect();
    let stack = stack_with(&customers)?;
    let work = Workspace::new()?;
    let config = work.config(&stack, "")?;
    let clock = ManualClock::new(t0());

    // Run 1: the complaint, forwarded; its investigation deadline is set.
    let daemon = start(&config, &clock).await?;
    let case = billing_complaint(&stack, &daemon, CUSTOMERS[0], "restart-1@example.test").await?;
    let timers = daemon.engine.store().timers_of_case(&case)?;
    let reminder_due = timer(&timers, "investigate", 0)?;
    let supervision_due = timer(&timers, "investigate", 1)?;
    ensure!(
        t0() < reminder_due && reminder_due < supervision_due,
        "{reminder_due} {supervision_due}"
    );
    ensure!(fired(&daemon.engine, &case, "investigate")?.is_empty());
    daemon.stop().await?;

    // Down while the reminder (50 %) falls due.
    clock.set(reminder_due + chrono::Duration::minutes(1));

    // Run 2: the missed reminder goes out at start, to the assigned department.
    let daemon = start(&config, &clock).await?;
    let prefix = format!("[{case}]");
    wait_for_matching(
        &stack,
        BILLING,
        1,
        |raw| subject_of(raw).starts_with(&prefix) && subject_of(raw).contains("提醒"),
        STEP,
    )
    .await?;
    wait_outbox_sent(&daemon, &case).await?;
    ensure!(fired(&daemon.engine, &case, "investigate")? == [0]);
    let reminder_id = exactly_one(&stack, BILLING, &case, "提醒").await?;
    let queued: Vec<String> = daemon
        .engine
        .store()
        .outbox_of_case(&case)?
        .into_iter()
        .filter(|entry| entry.message_id == reminder_id)
        .map(|entry| entry.purpose)
        .collect();
    ensure!(
        queued.len() == 1 && reminder_id.starts_with(&format!("{case}.")),
        "the reminder <{reminder_id}> is one queued mail of its case: {queued:?}"
    );
    daemon.stop().await?;

    // Run 3, a minute later: nothing is due again. A new complaint's forward, sent after
    // anything the start could have queued, marks the point up to which the mailbox is read.
    clock.advance(chrono::Duration::minutes(1));
    let daemon = start(&config, &clock).await?;
    billing_complaint(&stack, &daemon, CUSTOMERS[1], "restart-2@example.test").await?;
    ensure!(exactly_one(&stack, BILLING, &case, "提醒").await? == reminder_id);
    ensure!(fired(&daemon.engine, &case, "investigate")? == [0]);

    // While it runs, the clock passes the deadline: the supervision notice (100 %) goes to the
    // department and its manager.
    clock.set(supervision_due + chrono::Duration::minutes(1));
    let supervision =
        |raw: &[u8]| subject_of(raw).starts_with(&prefix) && subject_of(raw).contains("督办");
    wait_for_matching(&stack, BILLING_LEAD, 1, supervision, STEP).await?;
    wait_for_matching(&stack, BILLING, 1, supervision, STEP).await?;
    wait_outbox_sent(&daemon, &case).await?;
    ensure!(fired(&daemon.engine, &case, "investigate")? == [0, 1]);
    daemon.stop().await?;

    // Run 4: nothing of the case is sent again.
    clock.advance(chrono::Duration::minutes(1));
    let daemon = start(&config, &clock).await?;
    billing_complaint(&stack, &daemon, CUSTOMERS[2], "restart-3@example.test").await?;
    ensure!(exactly_one(&stack, BILLING, &case, "提醒").await? == reminder_id);
    let supervision_id = exactly_one(&stack, BILLING, &case, "督办").await?;
    ensure!(exactly_one(&stack, BILLING_LEAD, &case, "督办").await? == supervision_id);
    ensure!(
        count(&stack, BILLING_LEAD, &case, "提醒").await?.by_content == 0,
        "the reminder went to the department only"
    );
    ensure!(fired(&daemon.engine, &case, "investigate")? == [0, 1]);
    daemon.stop().await
}

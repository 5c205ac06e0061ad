//! End-to-end tests of the daemon through mail-server outages, on a private real stack
//! (Dovecot + OpenSMTPD of `scripts/mailstack.sh`, stopped and started by the test): an IMAP
//! outage in the middle of ingest loses nothing and duplicates nothing; an SMTP outage lets
//! the outbox grow and it drains after the server returns; a permanent refusal is recorded on
//! the case.

mod daemon_support;
mod support;

use std::collections::BTreeSet;

use anyhow::{ensure, Context, Result};
use complaintd::case::EventKind;
use complaintd::metrics::Metrics;
use complaintd::store::OutboxState;
use daemon_support::*;

const IMAP_CONNECTED: &str = "complaintd_imap_connected{mailbox=\"complaints\"}";

/// Waits until the daemon's mailbox task has logged in (so the complaint Maildir exists).
async fn wait_connected(daemon: &RunningDaemon) -> Result<()> {
    daemon
        .wait_until("the IMAP connection", DEADLINE, || {
            Ok((daemon.metric(IMAP_CONNECTED) == 1.0).then_some(()))
        })
        .await
}

/// Puts complaints `range` from the `customers` (round robin) into the complaint Maildir;
/// returns their Message-IDs.
fn deliver_complaints(
    stack: &support::MailStack,
    customers: &[String],
    range: std::ops::Range<usize>,
) -> Result<Vec<String>> {
    let run = std::process::id();
    let mut ids = Vec::new();
    for i in range {
        let customer = &customers[i % customers.len()];
        let message_id = format!("outage-{run}-{i}@example.test");
        let raw = complaint(
            "客户",
            customer,
            &format!("第 {i} 号投诉：账单有误"),
            "这个月的气费多收了，请核实。",
            &message_id,
        );
        deliver_to_maildir(stack, COMPLAINTS, &format!("{run}.{i}"), &raw)?;
        ids.push(message_id);
    }
    Ok(ids)
}

/// Every Message-ID opened exactly one case, and no case was opened by anything else.
fn assert_one_case_each(daemon: &RunningDaemon, ids: &[String]) -> Result<()> {
    let cases = daemon.cases_by_message_id()?;
    let wanted: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    let got: BTreeSet<&str> = cases.keys().map(String::as_str).collect();
    let lost: Vec<_> = wanted.difference(&got).collect();
    let extra: Vec<_> = got.difference(&wanted).collect();
    ensure!(lost.is_empty(), "lost: {lost:?}");
    ensure!(extra.is_empty(), "unexpected cases: {extra:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imap_outage_during_ingest_loses_and_duplicates_nothing() -> Result<()> {
    init_test_logging();
    let customers: Vec<String> = (0..10)
        .map(|i| format!("imapcust{i}@example.test"))
        .collect();
    let stack = stack_with(&customers)?;
    let work = Workspace::new()?;
    // Small batches, so the outage lands between commits of one backlog.
    let config = work.config_with(&stack, "acks_per_sender_per_hour = 1000", |text| {
        text.replace("batch_size = 500", "batch_size = 20")
    })?;
    let daemon = RunningDaemon::start(config, fast_options(Metrics::new())).await?;
    wait_connected(&daemon).await?;

    let mut ids = deliver_complaints(&stack, &customers, 0..300)?;
    // Stop Dovecot as soon as ingest has begun.
    daemon
        .wait_until("the first committed batch", DEADLINE, || {
            Ok((daemon.metric("complaintd_cases_ingested_total") > 0.0).then_some(()))
        })
        .await?;
    stack.stop_imap()?;
    let during = daemon.metric("complaintd_cases_ingested_total");
    // Mail keeps arriving while the IMAP server is down.
    ids.extend(deliver_complaints(&stack, &customers, 300..400)?);
    stack.start_imap()?;

    let total = ids.len();
    daemon
        .wait_until("every complaint to be a case", DEADLINE, || {
            Ok(
                (daemon.engine.store().list_cases(&Default::default())?.len() >= total)
                    .then_some(()),
            )
        })
        .await?;
    assert_one_case_each(&daemon, &ids)?;
    // Usually the outage cuts the first backlog short; the test holds either way.
    eprintln!("cases committed when Dovecot stopped: {during} of 300");
    ensure!(
        daemon.metric("complaintd_imap_reconnects_total{mailbox=\"complaints\"}") >= 1.0,
        "the daemon never reconnected"
    );
    // The checkpoint reached the last message.
    let checkpoint = daemon
        .engine
        .store()
        .checkpoint("complaints")?
        .context("a checkpoint")?;
    ensure!(checkpoint.last_uid as usize >= total, "{checkpoint:?}");
    ensure!(daemon.metric("complaintd_cases_ingested_total") == total as f64);
    daemon.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_smtp_outage_grows_the_queue_which_drains_after_restart() -> Result<()> {
    init_test_logging();
    let customers: Vec<String> = (0..20)
        .map(|i| format!("smtpcust{i}@example.test"))
        .collect();
    let stack = stack_with(&customers)?;
    let work = Workspace::new()?;
    let config = work.config(&stack, "acks_per_sender_per_hour = 1000")?;
    stack.stop_smtp()?;
    let daemon = RunningDaemon::start(config, fast_options(Metrics::new())).await?;
    wait_connected(&daemon).await?;

    let ids = deliver_complaints(&stack, &customers, 0..customers.len())?;
    let store = daemon.engine.store().clone();
    daemon
        .wait_until("every complaint to be a case", DEADLINE, || {
            Ok((store.list_cases(&Default::default())?.len() >= ids.len()).then_some(()))
        })
        .await?;
    assert_one_case_each(&daemon, &ids)?;
    // Every queued mail has been tried and failed for now: nothing sent, nothing given up.
    let all_entries = || -> Result<Vec<complaintd::store::OutboxEntry>> {
        let mut entries = Vec::new();
        for case in store.list_cases(&Default::default())? {
            entries.extend(store.outbox_of_case(&case.id)?);
        }
        Ok(entries)
    };
    let queued = daemon
        .wait_until("every queued mail to have failed once", DEADLINE, || {
            let entries = all_entries()?;
            Ok(entries
                .iter()
                .all(|e| matches!(e.state, OutboxState::TemporaryFailure { .. }))
                .then_some(entries))
        })
        .await?;
    ensure!(
        queued.len() >= 2 * customers.len(),
        "acknowledgements and forwards: {}",
        queued.len()
    );
    // The gauge (sled counts the due index by walking it, so it is approximate while the
    // sender reschedules entries; above zero is what matters).
    ensure!(
        daemon.metric("complaintd_outbox_depth") > 0.0,
        "the queue did not show"
    );
    ensure!(daemon.metric("complaintd_mail_failed_total{kind=\"temporary\"}") >= 1.0);
    ensure!(daemon.metric("complaintd_mail_sent_total") == 0.0);

    // The server returns: the queue drains, every customer gets one acknowledgement.
    stack.start_smtp()?;
    daemon
        .wait_until("the queue to drain", DEADLINE, || {
            let entries = all_entries()?;
            Ok(entries
                .iter()
                .all(|e| matches!(e.state, OutboxState::Sent { .. }))
                .then_some(()))
        })
        .await?;
    ensure!(store.queue_depth() == 0);
    ensure!(daemon.metric("complaintd_mail_sent_total") == queued.len() as f64);
    for customer in &customers {
        let acks = wait_for_mails(
            &stack,
            customer,
            1,
            |r| subject_of(r).starts_with('['),
            DEADLINE,
        )
        .await?;
        ensure!(
            acks.len() == 1,
            "{customer}: {} acknowledgements",
            acks.len()
        );
    }
    daemon.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_refusal_is_recorded_on_the_case() -> Result<()> {
    init_test_logging();
    let stack = stack_with(&[])?;
    let work = Workspace::new()?;
    let config = work.config(&stack, "")?;
    let daemon = RunningDaemon::start(config, fast_options(Metrics::new())).await?;
    wait_connected(&daemon).await?;

    // The stack serves example.test but has no such user: RCPT TO gets a 5xx.
    let ghost = "ghost-no-such-user@example.test";
    let raw = complaint(
        "Ghost",
        ghost,
        "Nobody can answer me",
        "Please reply to this address.",
        "ghost-1@example.test",
    );
    deliver_to_maildir(&stack, COMPLAINTS, "ghost-1", &raw)?;
    let case = daemon
        .wait_until("the case", DEADLINE, || {
            Ok(daemon.cases_by_message_id()?.remove("ghost-1@example.test"))
        })
        .await?;
    let store = daemon.engine.store().clone();
    let (entry, reason) = daemon
        .wait_until("the refusal to be recorded", DEADLINE, || {
            let events = store.events(&case.id)?;
            let failed = events.iter().find_map(|e| match &e.kind {
                EventKind::MailFailed {
                    outbox_id,
                    permanent: true,
                    reason,
                } => Some((outbox_id.clone(), reason.clone())),
                _ => None,
            });
            Ok(failed)
        })
        .await?;
    ensure!(
        reason.starts_with("5") || reason.contains(" 5"),
        "reason: {reason}"
    );
    let entry = store.outbox_entry(&entry)?.context("the outbox entry")?;
    ensure!(entry.recipients == [ghost.to_owned()], "{entry:?}");
    ensure!(
        matches!(entry.state, OutboxState::PermanentFailure { .. }),
        "{entry:?}"
    );
    ensure!(daemon.metric("complaintd_mail_failed_total{kind=\"permanent\"}") >= 1.0);
    // The forwards to the department were sent all the same.
    let others: Vec<_> = store
        .outbox_of_case(&case.id)?
        .into_iter()
        .filter(|e| e.id != entry.id)
        .collect();
    ensure!(!others.is_empty());
    daemon
        .wait_until("the forwards to be sent", DEADLINE, || {
            let sent = others.iter().all(|e| {
                matches!(
                    store.outbox_entry(&e.id).ok().flatten().map(|e| e.state),
                    Some(OutboxState::Sent { .. })
                )
            });
            Ok(sent.then_some(()))
        })
        .await?;
    daemon.stop().await
}

//! The e2e tests' wait on a daemon's condition (`daemon_support::wait_until`): it looks again
//! only when the daemon reports a change (`Metrics::changes`), never on a timer, loses no
//! change made while it looks, and fails at its deadline naming what it waited for. Tokio's
//! paused clock shows the difference: a wait that polled would let virtual time pass.

mod daemon_support;
mod support;

use std::cell::Cell;
use std::time::Duration;

use anyhow::Result;
use complaintd::metrics::Metrics;
use daemon_support::{wait_until, DEADLINE};
use tokio::sync::Notify;
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn a_change_reported_while_waiting_ends_the_wait_without_time_passing() -> Result<()> {
    let metrics = Metrics::new();
    let looks = Cell::new(0);
    let ready = Cell::new(false);
    let looked = Notify::new();
    let started = Instant::now();
    let waiting = wait_until(&metrics, "the flag", DEADLINE, || {
        looks.set(looks.get() + 1);
        looked.notify_one();
        Ok(ready.get().then_some("seen"))
    });
    let change = async {
        // Made once the wait has looked, while it sleeps on the feed.
        looked.notified().await;
        ready.set(true);
        metrics.refresh_outbox_depth(|| 0);
    };
    let (seen, ()) = tokio::join!(waiting, change);
    assert_eq!(seen?, "seen");
    assert_eq!(looks.get(), 2, "one look before the change, one after");
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "woken by the change, not a timer"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_change_made_during_a_look_is_not_lost() -> Result<()> {
    let metrics = Metrics::new();
    let looks = Cell::new(0);
    let started = Instant::now();
    // The condition becomes true while the first look runs, after it has read its answer:
    // only a subscription taken before that look sees the change.
    let seen = wait_until(&metrics, "the second look", DEADLINE, || {
        looks.set(looks.get() + 1);
        if looks.get() == 1 {
            metrics.mail_sent();
            return Ok(None);
        }
        Ok(Some(looks.get()))
    })
    .await?;
    assert_eq!(seen, 2);
    assert_eq!(started.elapsed(), Duration::ZERO);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn without_a_change_the_wait_looks_once_and_fails_at_its_deadline_naming_what() {
    let metrics = Metrics::new();
    let looks = Cell::new(0);
    let started = Instant::now();
    let outcome: Result<()> = wait_until(&metrics, "the impossible", DEADLINE, || {
        looks.set(looks.get() + 1);
        Ok(None)
    })
    .await;
    let error = outcome.expect_err("the condition never holds");
    assert_eq!(
        error.to_string(),
        format!("timed out after {DEADLINE:?} waiting for the impossible")
    );
    assert_eq!(
        looks.get(),
        1,
        "nothing changed, so nothing to look at again"
    );
    assert!(started.elapsed() >= DEADLINE, "{:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn every_reported_change_is_looked_at_until_the_condition_holds() -> Result<()> {
    let metrics = Metrics::new();
    let looks = Cell::new(0);
    let looked = Notify::new();
    let sent = || metrics.mail_sent_count();
    let waiting = wait_until(&metrics, "three mails sent", DEADLINE, || {
        looks.set(looks.get() + 1);
        looked.notify_one();
        Ok((sent() >= 3).then_some(sent()))
    });
    let changes = async {
        for _ in 0..3 {
            // Each change is made after the look at the one before.
            looked.notified().await;
            metrics.mail_sent();
        }
    };
    let (count, ()) = tokio::join!(waiting, changes);
    assert_eq!(count?, 3);
    assert_eq!(looks.get(), 4, "the first look and one per change");
    Ok(())
}

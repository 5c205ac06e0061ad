//! The daemon's scheduler with the real engine across restarts, in simulated time (an
//! injected `ManualClock`; no mail server is needed — the daemon's IMAP and SMTP tasks only
//! meet refused connections and retry): escalation timers that fell due while the daemon was
//! down fire at start, each step exactly once over several restarts.

mod daemon_support;
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use chrono::{DateTime, Duration, TimeZone, Utc};
use complaintd::case::{CaseId, EventKind};
use complaintd::clock::{Clock, ManualClock};
use complaintd::config::Config;
use complaintd::daemon::DaemonOptions;
use complaintd::engine::{Engine, RawMessage};
use complaintd::metrics::Metrics;
use daemon_support::*;

/// Tuesday 2026-11-24, 10:00 in Shanghai: inside office hours.
fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 2, 0, 0).unwrap()
}

/// Escalation steps fired on the case, with how often each fired.
fn fired_steps(engine: &Engine, case: &CaseId) -> Result<BTreeMap<(String, usize), usize>> {
    let mut fired = BTreeMap::new();
    for event in engine.store().events(case)? {
        if let EventKind::EscalationFired { deadline, step, .. } = event.kind {
            *fired.entry((deadline, step)).or_insert(0) += 1;
        }
    }
    Ok(fired)
}

async fn run_daemon_at(
    config: &Config,
    at: DateTime<Utc>,
    until: impl Fn(&Engine) -> Result<bool>,
) -> Result<()> {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(at));
    let options = DaemonOptions {
        clock,
        ..fast_options(Metrics::new())
    };
    let daemon = RunningDaemon::start(config.clone(), options).await?;
    let engine = Arc::clone(&daemon.engine);
    let outcome = daemon
        .wait_until("the scheduler to fire", DEADLINE, || {
            Ok(until(&engine)?.then_some(()))
        })
        .await;
    daemon.stop().await?;
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_missed_while_down_fire_at_start_and_each_step_once_across_restarts() -> Result<()> {
    init_test_logging();
    let work = Workspace::new()?;
    let config = work.offline_config("")?;

    // A complaint ingested at t0 (by the engine alone, as a daemon run would).
    let case = {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(t0()));
        let engine = Engine::from_config(&config, clock)?;
        let raw = std::fs::read(repo().join("examples/complaints/01-gas-leak.eml"))?;
        let report = engine.ingest(
            "complaints",
            "own",
            1,
            vec![(1, RawMessage::full(raw).received_at(t0()))],
        )?;
        let case = report.new_cases().next().context("a case")?.clone();
        let timers = engine.store().timers_of_case(&case)?;
        ensure!(
            timers.iter().any(|t| t.deadline == "investigate"),
            "no investigate timers: {timers:?}"
        );
        case
    };

    // Down for a day and a half: the 50 % reminder of `investigate` (2 days) is overdue.
    let first = t0() + Duration::hours(36);
    run_daemon_at(&config, first, |engine| {
        Ok(fired_steps(engine, &case)?.contains_key(&("investigate".into(), 0)))
    })
    .await?;

    // Down again until well after every deadline: the rest fires at the next start.
    let second = t0() + Duration::days(10);
    run_daemon_at(&config, second, |engine| {
        Ok(engine
            .store()
            .timers_of_case(&case)?
            .iter()
            .all(|t| t.due > second))
    })
    .await?;

    // And once more, with nothing left to fire.
    run_daemon_at(&config, second + Duration::hours(1), |_| Ok(true)).await?;

    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(second));
    let engine = Engine::from_config(&config, clock)?;
    let fired = fired_steps(&engine, &case)?;
    let investigate: Vec<_> = fired
        .iter()
        .filter(|((deadline, _), _)| deadline == "investigate")
        .collect();
    ensure!(
        investigate.len() >= 2,
        "the missed investigate steps fired: {fired:?}"
    );
    ensure!(
        fired.values().all(|count| *count == 1),
        "a step fired more than once: {fired:?}"
    );
    let events = engine.store().events(&case)?;
    ensure!(
        events.iter().any(|e| matches!(&e.kind, EventKind::ClockBreached { deadline } if deadline == "investigate")),
        "the investigate deadline was not recorded as breached"
    );
    // The first step fired at the first restart's now, not later.
    let first_step_at = events
        .iter()
        .find(|e| matches!(&e.kind, EventKind::EscalationFired { deadline, step: 0, .. } if deadline == "investigate"))
        .map(|e| e.at)
        .context("the first step's event")?;
    ensure!(
        first_step_at == first,
        "fired at {first_step_at}, not at {first}"
    );
    Ok(())
}

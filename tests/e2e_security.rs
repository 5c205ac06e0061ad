//! Replies that claim a department's authority without proving it, on the real mail stack
//! (Dovecot + OpenSMTPD, the daemon in-process on a `ManualClock`, the default policy): a reply
//! to a forward from an outside address, a department address writing to the plain complaint
//! address, a token of another case, a forged token, a forged `From` of a department, and a
//! token that expired while the daemon ran. Each carries commands that would resolve the case;
//! none changes either case or sends mail, and each is recorded on its case as a
//! `SecurityAlert` or `CommandRejected` event.

mod daemon_support;
mod support;

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use chrono::{DateTime, NaiveDate, Utc};
use complaintd::case::{Case, CaseId, CaseState, Event, EventKind};
use complaintd::clock::{Clock, ManualClock};
use complaintd::engine::Engine;
use complaintd::mail::token::{self, ReplySecret};
use daemon_support::*;
use support::MailStack;

const WANG: &str = "wang.security@example.test";
const LI: &str = "li.security@example.test";
const BILLING: &str = "billing@gas.example";
const OUTSIDER: &str = "mallory@example.test";
/// Commands that would resolve the case and mail a result, were they trusted.
const COMMANDS: &str = "状态: 已解决\n处理结果: 已处理完毕，无需再联系。";
const STEP: Duration = Duration::from_secs(45);

/// Tuesday 2026-11-24, 10:00 in Shanghai: inside office hours.
fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-24T10:00:00+08:00")
        .expect("a time")
        .with_timezone(&Utc)
}

/// A billing complaint by SMTP; returns its case (assigned) and its forward, read from the
/// department's mailbox.
async fn complaint_with_forward(
    stack: &MailStack,
    daemon: &RunningDaemon,
    customer: &str,
    message_id: &str,
) -> Result<(CaseId, Vec<u8>)> {
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
    let id = case.id.clone();
    let prefix = format!("[{id}]");
    let forward = wait_for_matching(
        stack,
        BILLING,
        1,
        move |raw| subject_of(raw).starts_with(&prefix),
        STEP,
    )
    .await?
    .remove(0);
    wait_outbox_sent(daemon, &id).await?;
    Ok((id, forward))
}

/// What a case looks like to the test: the record, its events and the mail queued for it.
struct Snapshot {
    case: Case,
    events: Vec<Event>,
    outbox: usize,
}

fn snapshot(engine: &Engine, id: &CaseId) -> Result<Snapshot> {
    let store = engine.store();
    Ok(Snapshot {
        case: store.case(id)?.context("the case")?,
        events: store.events(id)?,
        outbox: store.outbox_of_case(id)?.len(),
    })
}

/// The alerts and rejections among events, as `(kind, from, reason)`.
fn alerts(events: &[Event]) -> Vec<(&'static str, String, String)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::SecurityAlert { from, reason } => {
                Some(("security alert", from.clone(), reason.clone()))
            }
            EventKind::CommandRejected { from, reason } => {
                Some(("command rejected", from.clone(), reason.clone()))
            }
            _ => None,
        })
        .collect()
}

/// One attempt: `raw` sent by SMTP with envelope sender `envelope_from` to `to`; afterwards
/// neither case changed or queued mail, and `recorded_on` got exactly one new event of
/// `kind` from `from` whose reason contains `reason`, besides the mail's own record.
struct Attempt<'a> {
    what: &'a str,
    envelope_from: &'a str,
    to: &'a str,
    raw: Vec<u8>,
    message_id: &'a str,
    recorded_on: &'a CaseId,
    kind: &'static str,
    from: &'a str,
    reason: &'a str,
}

async fn attempt(
    stack: &MailStack,
    daemon: &RunningDaemon,
    cases: [&CaseId; 2],
    attempt: Attempt<'_>,
) -> Result<()> {
    let engine = &daemon.engine;
    let what = attempt.what;
    // Delivery outcomes are events too: let the earlier mail settle first.
    for id in cases {
        wait_outbox_sent(daemon, id).await?;
    }
    let before = [snapshot(engine, cases[0])?, snapshot(engine, cases[1])?];
    stack
        .send_raw(attempt.envelope_from, &[attempt.to], &attempt.raw)
        .await
        .with_context(|| format!("{what}: sending"))?;
    wait_ingested(daemon, &[attempt.message_id]).await?;
    for (id, before) in cases.into_iter().zip(&before) {
        let after = snapshot(engine, id)?;
        ensure!(
            after.case == before.case,
            "{what}: {id} changed: {:?} → {:?}",
            before.case.state,
            after.case.state
        );
        ensure!(
            after.outbox == before.outbox,
            "{what}: mail was queued on {id}"
        );
        let new_events = &after.events[before.events.len()..];
        ensure!(
            after.events[..before.events.len()] == before.events[..],
            "{what}: the earlier events of {id} changed"
        );
        let new_alerts = alerts(new_events);
        if id == attempt.recorded_on {
            ensure!(
                new_alerts.len() == 1,
                "{what}: alerts on {id}: {new_alerts:?}"
            );
            let (kind, from, reason) = &new_alerts[0];
            ensure!(
                *kind == attempt.kind && from == attempt.from && reason.contains(attempt.reason),
                "{what}: recorded as {kind} from {from}: {reason}"
            );
            ensure!(
                new_events.iter().any(|e| matches!(&e.kind,
                    EventKind::MailReceived { message_id, role, .. }
                        if message_id == attempt.message_id && role == "unverified")),
                "{what}: the mail is not recorded on {id} as unverified: {new_events:?}"
            );
            ensure!(
                !new_events.iter().any(|e| matches!(
                    &e.kind,
                    EventKind::StateChanged { .. } | EventKind::FieldSet { .. }
                )),
                "{what}: {new_events:?}"
            );
        } else {
            ensure!(
                new_events.is_empty(),
                "{what}: events on {id}: {new_events:?}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_that_do_not_verify_change_nothing_and_are_recorded() -> Result<()> {
    init_test_logging();
    let stack = stack_with(&[WANG.to_owned(), LI.to_owned(), OUTSIDER.to_owned()])?;
    let work = Workspace::new()?;
    // Tokens valid for 2 days, so the expired one needs only a short jump of the clock.
    let config = work.config(&stack, "token_valid_days = 2")?;
    let clock = ManualClock::new(t0());
    let daemon = RunningDaemon::start(config, options_with_clock(&clock)).await?;
    let engine = &daemon.engine;

    let (wang, forward) =
        complaint_with_forward(&stack, &daemon, WANG, "sec-1@example.test").await?;
    let (li, li_forward) =
        complaint_with_forward(&stack, &daemon, LI, "sec-2@example.test").await?;
    let token_address = reply_to_of(&forward).context("the forward's Reply-To")?;
    let li_token_address = reply_to_of(&li_forward).context("the forward's Reply-To")?;
    ensure!(token_address != li_token_address, "one token per case");
    let forward_id = message_id_of(&forward);
    let forward_subject = format!("Re: {}", subject_of(&forward));
    let reply = |from_name: &str, from: &str, to: &str, in_reply_to: Option<&str>, id: &str| {
        Reply {
            from_name,
            from,
            to,
            subject: &forward_subject,
            in_reply_to,
            body: COMMANDS,
            message_id: id,
        }
        .build()
    };
    let cases = [&wang, &li];

    // The forward, answered from an address outside the department.
    attempt(
        &stack,
        &daemon,
        cases,
        Attempt {
            what: "a non-department address with the token",
            envelope_from: OUTSIDER,
            to: &token_address,
            raw: reply(
                "Mallory",
                OUTSIDER,
                &token_address,
                Some(&forward_id),
                "sec-a@example.test",
            ),
            message_id: "sec-a@example.test",
            recorded_on: &wang,
            kind: "security alert",
            from: OUTSIDER,
            reason: "is not an address of department billing_dept",
        },
    )
    .await?;

    // The department's own address, to the plain complaint address, the case number in the
    // subject.
    attempt(
        &stack,
        &daemon,
        cases,
        Attempt {
            what: "a department address without the token",
            envelope_from: BILLING,
            to: COMPLAINTS,
            raw: reply(
                "营业收费部",
                BILLING,
                COMPLAINTS,
                None,
                "sec-b@example.test",
            ),
            message_id: "sec-b@example.test",
            recorded_on: &wang,
            kind: "command rejected",
            from: BILLING,
            reason: "without a reply token",
        },
    )
    .await?;

    // The department, answering Wang's forward through the token of Li's case.
    attempt(
        &stack,
        &daemon,
        cases,
        Attempt {
            what: "a token of another case",
            envelope_from: BILLING,
            to: &li_token_address,
            raw: reply(
                "营业收费部",
                BILLING,
                &li_token_address,
                Some(&forward_id),
                "sec-c@example.test",
            ),
            message_id: "sec-c@example.test",
            recorded_on: &li,
            kind: "security alert",
            from: BILLING,
            reason: &format!("answers a mail of {wang}"),
        },
    )
    .await?;

    // A token of the right form signed with another secret.
    let forged_token = token::mint(
        &ReplySecret::new(b"not-the-secret-of-this-daemon-0123456789".to_vec())?,
        &wang,
        "billing_dept",
        NaiveDate::from_ymd_opt(2027, 1, 1).context("a date")?,
    )?;
    let forged_address = format!("complaints+{forged_token}@example.test");
    attempt(
        &stack,
        &daemon,
        cases,
        Attempt {
            what: "a forged token",
            envelope_from: BILLING,
            to: &forged_address,
            raw: reply(
                "营业收费部",
                BILLING,
                &forged_address,
                Some(&forward_id),
                "sec-d@example.test",
            ),
            message_id: "sec-d@example.test",
            recorded_on: &wang,
            kind: "security alert",
            from: BILLING,
            reason: "reply token not accepted",
        },
    )
    .await?;

    // Someone outside writes as the department (forged From, their own envelope sender), with
    // the forward's subject and threading, to the complaint address: no token, no authority.
    attempt(
        &stack,
        &daemon,
        cases,
        Attempt {
            what: "a forged From of a department address",
            envelope_from: OUTSIDER,
            to: COMPLAINTS,
            raw: reply(
                "营业收费部",
                BILLING,
                COMPLAINTS,
                Some(&forward_id),
                "sec-e@example.test",
            ),
            message_id: "sec-e@example.test",
            recorded_on: &wang,
            kind: "command rejected",
            from: BILLING,
            reason: "without a reply token",
        },
    )
    .await?;

    // The real token, after it expired: the clock jumps past its last valid day while the
    // daemon runs. Deadlines fall due on the way; once the scheduler has fired them the cases
    // are still, and the expired reply must change nothing.
    clock.advance(chrono::Duration::days(4));
    let now = clock.now();
    daemon
        .wait_until("the scheduler to fire what fell due", STEP, || {
            Ok(engine
                .next_wakeup()
                .is_some_and(|next| next > now)
                .then_some(()))
        })
        .await?;
    ensure!(
        !engine
            .store()
            .timers_of_case(&wang)?
            .iter()
            .any(|t| t.due <= now),
        "timers of {wang} left due"
    );
    attempt(
        &stack,
        &daemon,
        cases,
        Attempt {
            what: "an expired token",
            envelope_from: BILLING,
            to: &token_address,
            raw: reply(
                "营业收费部",
                BILLING,
                &token_address,
                Some(&forward_id),
                "sec-f@example.test",
            ),
            message_id: "sec-f@example.test",
            recorded_on: &wang,
            kind: "command rejected",
            from: BILLING,
            reason: "expired",
        },
    )
    .await?;

    // Neither case was ever resolved; no result mail went to either customer.
    for (id, customer) in [(&wang, WANG), (&li, LI)] {
        let case = engine.store().case(id)?.context("the case")?;
        ensure!(
            case.state == CaseState::Assigned,
            "{id} is {:?}",
            case.state
        );
        ensure!(!case.fields.contains_key("result"), "{id} has a result");
        wait_outbox_sent(&daemon, id).await?;
        let mails = inbox(&stack, customer).await?;
        if mails.len() != 1 {
            let subjects: Vec<String> = mails.iter().map(|m| subject_of(m)).collect();
            bail!("{customer} got {subjects:?}, only the acknowledgement was due");
        }
    }
    // The outsider who tried is told nothing.
    let outsider_mails = inbox(&stack, OUTSIDER).await?.len();
    ensure!(outsider_mails == 0, "{OUTSIDER} got {outsider_mails} mails");
    daemon.stop().await
}

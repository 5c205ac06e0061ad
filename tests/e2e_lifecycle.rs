//! The whole life of a complaint on the real mail stack (Dovecot + OpenSMTPD of
//! `scripts/mailstack.sh`), with the daemon in-process and the default policy: every mail is
//! sent by SMTP as the customer or the department would send it, every mail the daemon sends is
//! read from the recipient's real mailbox over IMAP.
//!
//! Complaint → acknowledgement (case number only) → forward to the department → the customer's
//! plain correspondence reaches the department → the department resolves by replying to the
//! forward's reply-token address → the result with the satisfaction question reaches the
//! customer → "不满意" reopens the case and the department gets the customer's mail → resolved
//! again → "满意" closes it. The store's states and events are checked at every step.
//!
//! The daemon runs on a `ManualClock` that never moves, so no deadline fires in between.

mod daemon_support;
mod support;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use chrono::{DateTime, Utc};
use complaintd::case::{Case, CaseId, CaseState, EventKind, FieldValue};
use complaintd::clock::ManualClock;
use complaintd::engine::{CUSTOMER_REPLY, DEPARTMENT_REPLY};
use daemon_support::*;
use support::MailStack;

use CaseState::*;

const CUSTOMER: &str = "wang.lifecycle@example.test";
const BILLING: &str = "billing@gas.example";
const SUBJECT: &str = "十一月账单多收了气费";
const COMPLAINT_TEXT: &str = "这个月的气费账单比上个月多了 120 元，用气量没有变化，请核实。";

/// One round trip through the stack and the daemon takes a few seconds; this is the limit for
/// one step on a loaded machine.
const STEP: Duration = Duration::from_secs(45);

/// Tuesday 2026-11-24, 10:00 in Shanghai: inside office hours.
fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-24T10:00:00+08:00")
        .expect("a time")
        .with_timezone(&Utc)
}

fn is_case_mail(raw: &[u8], case: &CaseId) -> bool {
    subject_of(raw).starts_with(&format!("[{case}]"))
}

/// Waits until the case is in `state` and returns it.
async fn wait_state(daemon: &RunningDaemon, case: &CaseId, state: CaseState) -> Result<Case> {
    let store = daemon.engine.store();
    daemon
        .wait_until(&format!("{case} to be {state:?}"), STEP, || {
            Ok(store.case(case)?.filter(|c| c.state == state))
        })
        .await
}

/// The forwards of `case` in the department's mailbox, waiting for at least `count`.
async fn forwards(stack: &MailStack, case: &CaseId, count: usize) -> Result<Vec<Vec<u8>>> {
    let case = case.clone();
    wait_for_matching(
        stack,
        BILLING,
        count,
        move |raw| is_case_mail(raw, &case) && subject_of(raw).contains("转派"),
        STEP,
    )
    .await
}

/// The department's reply to a forward, sent by SMTP to the forward's reply-token address.
async fn department_replies(
    stack: &MailStack,
    forward: &[u8],
    body: &str,
    message_id: &str,
) -> Result<()> {
    let token_address = reply_to_of(forward).context("the forward has a Reply-To")?;
    ensure!(
        token_address.starts_with("complaints+") && token_address.ends_with("@example.test"),
        "the forward's Reply-To is a token address: {token_address}"
    );
    let reply = Reply {
        from_name: "营业收费部",
        from: BILLING,
        to: &token_address,
        subject: &format!("Re: {}", subject_of(forward)),
        in_reply_to: Some(&message_id_of(forward)),
        body,
        message_id,
    }
    .build();
    stack.send_raw(BILLING, &[&token_address], &reply).await?;
    Ok(())
}

/// The customer's reply to a mail the daemon sent them, by SMTP to the complaint address.
async fn customer_replies(
    stack: &MailStack,
    parent: &[u8],
    body: &str,
    message_id: &str,
) -> Result<()> {
    let reply = Reply {
        from_name: "王女士",
        from: CUSTOMER,
        to: COMPLAINTS,
        subject: &format!("Re: {}", subject_of(parent)),
        in_reply_to: Some(&message_id_of(parent)),
        body,
        message_id,
    }
    .build();
    stack.send_raw(CUSTOMER, &[COMPLAINTS], &reply).await?;
    Ok(())
}

/// State changes caused by `cause` (`department reply`, `customer reply`).
fn changes_by(daemon: &RunningDaemon, case: &CaseId, cause: &str) -> Result<usize> {
    Ok(daemon
        .engine
        .store()
        .events(case)?
        .iter()
        .filter(
            |e| matches!(&e.kind, EventKind::StateChanged { because, .. } if because.rule == cause),
        )
        .count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complaint_is_answered_reopened_answered_again_and_closed_all_by_mail() -> Result<()> {
    init_test_logging();
    let stack = stack_with(&[CUSTOMER.to_owned()])?;
    let work = Workspace::new()?;
    let config = work.config(&stack, "")?;
    let clock = ManualClock::new(t0());
    let daemon = RunningDaemon::start(config, options_with_clock(&clock)).await?;
    let store = daemon.engine.store();

    // The complaint.
    let complaint = complaint(
        "王女士",
        CUSTOMER,
        SUBJECT,
        COMPLAINT_TEXT,
        "life-1@example.test",
    );
    stack.send_raw(CUSTOMER, &[COMPLAINTS], &complaint).await?;
    let case = daemon
        .wait_until("the complaint's case", STEP, || {
            Ok(daemon.cases_by_message_id()?.remove("life-1@example.test"))
        })
        .await?;
    let id = case.id.clone();
    let case = wait_state(&daemon, &id, Assigned).await?;
    ensure!(case.subject == SUBJECT, "subject {:?}", case.subject);
    ensure!(
        case.fields
            .get("category")
            .map(ToString::to_string)
            .as_deref()
            == Some("billing"),
        "category {:?}",
        case.fields.get("category")
    );
    ensure!(
        case.assignment.as_ref().map(|a| a.department.as_str()) == Some("billing_dept"),
        "assignment {:?}",
        case.assignment
    );
    ensure!(
        state_changes(&store.events(&id)?) == [(Received, Acknowledged), (Acknowledged, Assigned)],
        "{:?}",
        state_changes(&store.events(&id)?)
    );

    // The acknowledgement: the case number and generic text, nothing of the complaint, since
    // nobody has verified who the sender is.
    let ack = wait_for_matching(&stack, CUSTOMER, 1, |raw| is_case_mail(raw, &id), STEP)
        .await?
        .remove(0);
    ensure!(
        subject_of(&ack) == format!("[{id}] 您的投诉已受理"),
        "acknowledgement subject {:?}",
        subject_of(&ack)
    );
    let ack_text = text_of(&ack);
    ensure!(ack_text.contains(&id.0), "{ack_text}");
    for content in [SUBJECT, "120 元", "用气量"] {
        ensure!(
            !ack_text.contains(content) && !subject_of(&ack).contains(content),
            "the acknowledgement shows the case's content {content:?}: {ack_text}"
        );
    }

    // The forward: the complaint in full, the case number in the subject, a token Reply-To.
    let forward = forwards(&stack, &id, 1).await?.remove(0);
    ensure!(
        subject_of(&forward).contains(SUBJECT),
        "forward subject {:?}",
        subject_of(&forward)
    );
    ensure!(
        text_of(&forward).contains(COMPLAINT_TEXT),
        "{}",
        text_of(&forward)
    );

    // Plain correspondence from the customer goes to the department; the state stays.
    customer_replies(
        &stack,
        &ack,
        "补充一下：我的户号是 12345678。",
        "life-2@example.test",
    )
    .await?;
    let correspondence = forwards(&stack, &id, 2).await?.remove(1);
    ensure!(
        text_of(&correspondence).contains("我的户号是 12345678"),
        "the department got the customer's mail: {}",
        text_of(&correspondence)
    );
    ensure!(store.case(&id)?.context("the case")?.state == Assigned);
    ensure!(store.events(&id)?.iter().any(|e| matches!(&e.kind,
        EventKind::MailReceived { message_id, role, .. } if message_id == "life-2@example.test" && role != "unverified")));

    // The department resolves it by replying to the forward.
    department_replies(
        &stack,
        &forward,
        "状态: 已解决\n处理结果: 经核实系抄表错误，多收的 120 元已退回您的账户。\n\n抄表员已重新培训。",
        "billing-1@gas.example",
    )
    .await?;
    let case = wait_state(&daemon, &id, Answered).await?;
    ensure!(
        case.fields.get("result")
            == Some(&FieldValue::Text(
                "经核实系抄表错误，多收的 120 元已退回您的账户。".into()
            )),
        "result {:?}",
        case.fields.get("result")
    );
    ensure!(
        changes_by(&daemon, &id, DEPARTMENT_REPLY)? == 2,
        "resolved and answered by the reply"
    );

    // The result reaches the customer, with the satisfaction question.
    let result = wait_for_matching(
        &stack,
        CUSTOMER,
        1,
        |raw| is_case_mail(raw, &id) && subject_of(raw).contains("处理结果"),
        STEP,
    )
    .await?
    .remove(0);
    let result_text = text_of(&result);
    ensure!(
        result_text.contains("多收的 120 元已退回您的账户"),
        "{result_text}"
    );
    ensure!(
        result_text.contains("1–5") && result_text.contains("不满意"),
        "the satisfaction question: {result_text}"
    );
    // The department is told what was applied.
    let confirmation = wait_for_matching(
        &stack,
        BILLING,
        1,
        |raw| subject_of(raw).contains("已执行") && subject_of(raw).contains(&id.0),
        STEP,
    )
    .await?
    .remove(0);
    ensure!(
        text_of(&confirmation).contains("resolved"),
        "{}",
        text_of(&confirmation)
    );

    // Dissatisfied: the case is reopened and the department gets the customer's mail.
    customer_replies(
        &stack,
        &result,
        "不满意\n钱还没有到账。",
        "life-3@example.test",
    )
    .await?;
    let reopened_forward = forwards(&stack, &id, 3).await?.remove(2);
    ensure!(
        text_of(&reopened_forward).contains("钱还没有到账"),
        "{}",
        text_of(&reopened_forward)
    );
    let case = wait_state(&daemon, &id, Assigned).await?;
    ensure!(case.reopen_count == 1, "reopen count {}", case.reopen_count);
    ensure!(
        case.fields.get("satisfaction") == Some(&FieldValue::Number(1.0)),
        "satisfaction {:?}",
        case.fields.get("satisfaction")
    );
    let changes = state_changes(&store.events(&id)?);
    ensure!(
        changes.ends_with(&[(Answered, Reopened), (Reopened, Assigned)]),
        "{changes:?}"
    );
    ensure!(
        changes_by(&daemon, &id, CUSTOMER_REPLY)? >= 1,
        "the reopening names the customer's reply"
    );

    // Resolved again, through the token of the newest forward.
    department_replies(
        &stack,
        &reopened_forward,
        "状态: 已解决\n处理结果: 退款已于今日到账，请查收。",
        "billing-2@gas.example",
    )
    .await?;
    wait_state(&daemon, &id, Answered).await?;
    let results = wait_for_matching(
        &stack,
        CUSTOMER,
        2,
        |raw| is_case_mail(raw, &id) && subject_of(raw).contains("处理结果"),
        STEP,
    )
    .await?;
    let second_result = &results[1];
    ensure!(
        text_of(second_result).contains("退款已于今日到账"),
        "{}",
        text_of(second_result)
    );
    ensure!(
        message_id_of(second_result) != message_id_of(&result),
        "the second result is a mail of its own"
    );

    // Satisfied: closed.
    customer_replies(&stack, second_result, "满意", "life-4@example.test").await?;
    let case = wait_state(&daemon, &id, Closed).await?;
    ensure!(
        case.fields.get("satisfaction") == Some(&FieldValue::Number(5.0)),
        "satisfaction {:?}",
        case.fields.get("satisfaction")
    );
    let changes = state_changes(&store.events(&id)?);
    ensure!(
        changes
            == [
                (Received, Acknowledged),
                (Acknowledged, Assigned),
                (Assigned, Resolved),
                (Resolved, Answered),
                (Answered, Reopened),
                (Reopened, Assigned),
                (Assigned, Resolved),
                (Resolved, Answered),
                (Answered, Closed),
            ],
        "{changes:?}"
    );
    ensure!(
        changes_by(&daemon, &id, DEPARTMENT_REPLY)? == 4,
        "each department step names its cause"
    );

    // Everything the daemon sent went out, and the customer got exactly the acknowledgement
    // and the two results; the satisfied answer is not forwarded.
    wait_outbox_sent(&daemon, &id).await?;
    let customer_mails: Vec<String> = inbox(&stack, CUSTOMER)
        .await?
        .iter()
        .map(|raw| subject_of(raw))
        .collect();
    ensure!(
        customer_mails.len() == 3,
        "the customer's mailbox: {customer_mails:?}"
    );
    let forwards_now = inbox(&stack, BILLING)
        .await?
        .iter()
        .filter(|raw| is_case_mail(raw, &id) && subject_of(raw).contains("转派"))
        .count();
    ensure!(forwards_now == 3, "{forwards_now} forwards");
    daemon.stop().await
}

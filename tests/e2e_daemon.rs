//! End-to-end tests of the daemon on the real local mail stack (Dovecot + OpenSMTPD of
//! `scripts/mailstack.sh`), run in-process with the default policy: complaints sent by SMTP
//! become cases, acknowledgements and forwards arrive in real mailboxes; replies thread;
//! automatic mail and duplicates are not answered; rule files are reloaded while running.
//!
//! Each test has its own isolated stack (own directory, free ports), because the default
//! policy's department addresses are the same in every test.

mod daemon_support;
mod support;

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{ensure, Context, Result};
use complaintd::case::EventKind;
use complaintd::metrics::Metrics;
use complaintd::store::{MessageRecord, OutboxState};
use daemon_support::*;
use futures::StreamExt;
use support::MailStack;

/// The kinds of complaint the 200-mail test sends, with what the default policy makes of
/// them: (subject, body, language of the acknowledgement, category).
const KINDS: [(&str, &str, &str, &str); 5] = [
    (
        "楼道里有燃气味，疑似漏气",
        "你好，我家楼道里燃气味很重，怀疑漏气，请尽快派人检查。",
        "zh",
        "safety",
    ),
    (
        "十一月账单多收了气费",
        "这个月的气费账单比上个月多了 120 元，用气量没有变化，请核实。",
        "zh",
        "billing",
    ),
    (
        "营业厅工作人员态度很差",
        "昨天去营业厅办理过户，工作人员态度很差，互相推诿，让我跑了三趟。",
        "zh",
        "service_attitude",
    ),
    (
        "停气三天无人处理，准备找电视台曝光",
        "小区停气三天了，打电话没人管。明天还不解决我就联系电视台记者。",
        "zh",
        "other",
    ),
    (
        "Gas pressure too low in the evenings — Flat 12",
        "Hello, since last week the gas pressure drops every evening so the stove barely works.",
        "en",
        "other",
    ),
];

const ACK_SUBJECT_ZH: &str = "您的投诉已受理";
const ACK_SUBJECT_EN: &str = "Your complaint has been registered";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_complaints_become_cases_with_acknowledgements_and_forwards() -> Result<()> {
    init_test_logging();
    let count = 200;
    let customers: Vec<String> = (0..count)
        .map(|i| format!("customer{i:03}@example.test"))
        .collect();
    let stack = stack_with(&customers)?;
    let work = Workspace::new()?;
    let config = work.config(&stack, "acks_per_sender_per_hour = 5")?;
    let daemon = RunningDaemon::start(config, fast_options(Metrics::new())).await?;

    // Send all 200 over SMTP, a few connections at a time.
    let run = std::process::id();
    let sent: Vec<(String, usize)> = (0..count)
        .map(|i| (format!("e2e-{run}-{i}@example.test"), i % KINDS.len()))
        .collect();
    let stack_ref: &MailStack = &stack;
    let results: Vec<Result<()>> = futures::stream::iter(sent.iter().enumerate())
        .map(|(i, (message_id, kind))| {
            let customer = &customers[i];
            let (subject, body, _, _) = KINDS[*kind];
            let raw = complaint(&format!("客户 {i}"), customer, subject, body, message_id);
            async move {
                stack_ref
                    .send_raw(customer, &[COMPLAINTS], &raw)
                    .await
                    .map(drop)
                    .map_err(|e| anyhow::anyhow!("sending complaint {i}: {e}"))
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;

    // 200 cases, one per Message-ID.
    let cases = daemon
        .wait_until("200 cases", DEADLINE, || {
            let cases = daemon.cases_by_message_id()?;
            Ok((cases.len() >= count).then_some(cases))
        })
        .await?;
    ensure!(
        cases.len() == count,
        "{} cases for {count} mails",
        cases.len()
    );
    for (i, (message_id, kind)) in sent.iter().enumerate() {
        let case = cases
            .get(message_id)
            .with_context(|| format!("no case for <{message_id}>"))?;
        let (subject, _, language, category) = KINDS[*kind];
        ensure!(case.sender.email == customers[i], "{case:?}");
        ensure!(
            case.subject == subject,
            "subject {:?} of {}",
            case.subject,
            case.id
        );
        ensure!(case.language == language, "language of {}", case.id);
        ensure!(
            case.fields
                .get("category")
                .map(|v| v.to_string())
                .as_deref()
                == Some(category),
            "category of {}: {:?}",
            case.id,
            case.fields.get("category")
        );
    }
    // Case numbers are consecutive from 1.
    let mut numbers: Vec<String> = cases.values().map(|c| c.id.0.clone()).collect();
    numbers.sort();
    let expected_numbers: Vec<String> = (1..=count).map(|n| format!("TS-2026-{n:06}")).collect();
    ensure!(numbers == expected_numbers, "case numbers {numbers:?}");

    // One acknowledgement in each customer's mailbox, subject decoded intact, in the
    // customer's language, with the case number.
    let acks: Vec<Result<()>> = futures::stream::iter(sent.iter().enumerate())
        .map(|(i, (message_id, kind))| {
            let customer = customers[i].clone();
            let case = cases[message_id].id.clone();
            let language = KINDS[*kind].2;
            async move {
                let mails = wait_for_mails(
                    stack_ref,
                    &customer,
                    1,
                    |raw| subject_of(raw).starts_with('['),
                    DEADLINE,
                )
                .await?;
                ensure!(
                    mails.len() == 1,
                    "{customer}: {} acknowledgements",
                    mails.len()
                );
                let expected = match language {
                    "en" => format!("[{case}] {ACK_SUBJECT_EN}"),
                    _ => format!("[{case}] {ACK_SUBJECT_ZH}"),
                };
                let subject = subject_of(&mails[0]);
                ensure!(
                    subject == expected,
                    "{customer}: subject {subject:?}, want {expected:?}"
                );
                ensure!(
                    header_of(&mails[0], "Auto-Submitted").as_deref() == Some("auto-replied"),
                    "{customer}: acknowledgement without Auto-Submitted"
                );
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    acks.into_iter().collect::<Result<Vec<()>>>()?;

    // Forwards: every department address holds exactly the cases assigned (or copied) to
    // its department, each forward's subject carrying the case number and the customer's
    // subject intact.
    let policy = daemon.engine.policy();
    let mut expected: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for case in cases.values() {
        let assignment = case
            .assignment
            .as_ref()
            .with_context(|| format!("{} has no assignment", case.id))?;
        for department in std::iter::once(&assignment.department).chain(&assignment.cc) {
            // Forwards go to the department's own addresses, not to its manager.
            let declared = policy
                .policy
                .departments
                .iter()
                .find(|d| &d.name.node == department)
                .with_context(|| format!("{} is assigned to unknown {department}", case.id))?;
            for address in &declared.addresses {
                expected
                    .entry(address.node.to_lowercase())
                    .or_default()
                    .insert(case.id.0.clone());
            }
        }
    }
    ensure!(
        expected.contains_key("network@gas.example")
            && expected.contains_key("billing@gas.example")
            && expected.contains_key("service@gas.example")
            && expected.contains_key("service-office@gas.example"),
        "the mix reaches every department: {:?}",
        expected.keys()
    );
    let by_id: BTreeMap<&str, &complaintd::case::Case> =
        cases.values().map(|c| (c.id.0.as_str(), c)).collect();
    for (address, wanted) in &expected {
        let mails = wait_for_mails(
            stack_ref,
            address,
            wanted.len(),
            |raw| subject_of(raw).starts_with("[TS-"),
            DEADLINE,
        )
        .await?;
        let mut seen = BTreeSet::new();
        for raw in &mails {
            let subject = subject_of(raw);
            let case_id = subject
                .strip_prefix('[')
                .and_then(|s| s.split_once(']'))
                .map(|(id, _)| id.to_owned())
                .with_context(|| format!("{address}: subject {subject:?}"))?;
            let case = by_id
                .get(case_id.as_str())
                .with_context(|| format!("{address}: forward of unknown case {case_id}"))?;
            ensure!(
                subject.contains(&case.subject),
                "{address}: forward subject {subject:?} lacks {:?}",
                case.subject
            );
            ensure!(
                seen.insert(case_id.clone()),
                "{address}: {case_id} forwarded twice"
            );
        }
        ensure!(
            &seen == wanted,
            "{address}: forwards for {seen:?}, want {wanted:?}"
        );
    }
    for address in DEPARTMENT_ADDRESSES {
        if !expected.contains_key(address) {
            let forwards = inbox(stack_ref, address).await?.len();
            ensure!(
                forwards == 0,
                "{address} got {forwards} mails but no case is its"
            );
        }
    }

    ensure!(daemon.metric("complaintd_cases_ingested_total") == count as f64);
    daemon.stop().await
}

/// Recipients of every mail the daemon ever queued.
fn queued_recipients(daemon: &RunningDaemon) -> Result<BTreeSet<String>> {
    let store = daemon.engine.store();
    let mut recipients = BTreeSet::new();
    for case in store.list_cases(&Default::default())? {
        for entry in store.outbox_of_case(&case.id)? {
            recipients.extend(entry.recipients);
        }
    }
    Ok(recipients)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_thread_and_automatic_mail_and_duplicates_get_no_acknowledgement() -> Result<()> {
    init_test_logging();
    let customer = "carol@example.test".to_owned();
    let auto = "holiday@example.test".to_owned();
    let lister = "lists@example.test".to_owned();
    let stack = stack_with(&[customer.clone(), auto.clone(), lister.clone()])?;
    let work = Workspace::new()?;
    let config = work.config(&stack, "")?;
    let daemon = RunningDaemon::start(config, fast_options(Metrics::new())).await?;

    // A complaint, and its acknowledgement.
    let first = complaint(
        "Carol",
        &customer,
        "Meter reading wrong — 抄表错误",
        "My meter was read wrong this month, please check the bill.",
        "carol-1@example.test",
    );
    stack.send_raw(&customer, &[COMPLAINTS], &first).await?;
    let ack = wait_for_mails(
        &stack,
        &customer,
        1,
        |r| subject_of(r).starts_with('['),
        DEADLINE,
    )
    .await?
    .remove(0);
    let ack_id = message_id_of(&ack);
    let case = daemon
        .cases_by_message_id()?
        .remove("carol-1@example.test")
        .context("the complaint's case")?;
    ensure!(subject_of(&ack).starts_with(&format!("[{}]", case.id)));

    // The customer replies to the acknowledgement: threaded onto the case.
    let reply = format!(
        "From: Carol <{customer}>\r\nTo: {COMPLAINTS}\r\nSubject: Re: {}\r\n\
         Message-ID: <carol-2@example.test>\r\nIn-Reply-To: <{ack_id}>\r\nReferences: <{ack_id}>\r\n\
         Date: Tue, 24 Nov 2026 10:00:00 +0800\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\nHere is a photo of the meter: 01234.\r\n",
        subject_of(&ack)
    );
    // An auto-reply, a bounce and a list mail, none of which may be acknowledged.
    let auto_reply = format!(
        "From: Holiday <{auto}>\r\nTo: {COMPLAINTS}\r\nSubject: Out of office\r\n\
         Message-ID: <auto-1@example.test>\r\nAuto-Submitted: auto-replied\r\n\
         Date: Tue, 24 Nov 2026 10:00:00 +0800\r\n\r\nI am away until Monday.\r\n"
    );
    let bounce = format!(
        "From: Mail Delivery System <MAILER-DAEMON@example.test>\r\nTo: {COMPLAINTS}\r\n\
         Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <dsn-1@example.test>\r\n\
         Date: Tue, 24 Nov 2026 10:00:00 +0800\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nDelivery to nobody@nowhere.example failed.\r\n\
         --b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mail.example.test\r\n\r\n\
         Final-Recipient: rfc822; nobody@nowhere.example\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--b--\r\n"
    );
    let list_mail = format!(
        "From: Newsletter <{lister}>\r\nTo: {COMPLAINTS}\r\nSubject: Weekly gas news\r\n\
         Message-ID: <list-1@example.test>\r\nList-Id: <news.example.test>\r\nPrecedence: list\r\n\
         Date: Tue, 24 Nov 2026 10:00:00 +0800\r\n\r\nThis week in gas.\r\n"
    );
    stack
        .send_raw(&customer, &[COMPLAINTS], reply.as_bytes())
        .await?;
    stack
        .send_raw(&auto, &[COMPLAINTS], auto_reply.as_bytes())
        .await?;
    // A bounce has the null sender.
    support_send_null_sender(&stack, bounce.as_bytes()).await?;
    stack
        .send_raw(&lister, &[COMPLAINTS], list_mail.as_bytes())
        .await?;
    // The same complaint again (same Message-ID), as a client resending it would.
    stack.send_raw(&customer, &[COMPLAINTS], &first).await?;
    // A later complaint from the auto-replier's address proves the mailbox was read past
    // everything above before we look.
    let marker = complaint(
        "Holiday",
        &auto,
        "A real complaint after the auto-reply",
        "The gas bill is wrong.",
        "auto-2@example.test",
    );
    stack.send_raw(&auto, &[COMPLAINTS], &marker).await?;
    wait_ingested(
        &daemon,
        &[
            "carol-2@example.test",
            "auto-1@example.test",
            "dsn-1@example.test",
            "list-1@example.test",
            "auto-2@example.test",
        ],
    )
    .await?;
    // The marker's acknowledgement is the only mail the auto-replier gets.
    let auto_mails = wait_for_mails(
        &stack,
        &auto,
        1,
        |r| subject_of(r).starts_with('['),
        DEADLINE,
    )
    .await?;
    let cases = daemon.cases_by_message_id()?;
    ensure!(
        cases.keys().cloned().collect::<Vec<_>>()
            == ["auto-2@example.test", "carol-1@example.test"],
        "cases: {:?}",
        cases.keys()
    );
    let marker_case = &cases["auto-2@example.test"].id;
    ensure!(
        auto_mails.len() == 1
            && subject_of(&auto_mails[0]).starts_with(&format!("[{marker_case}]"))
    );

    // The reply is on Carol's case, and forwarded to its department.
    let store = daemon.engine.store();
    ensure!(
        matches!(store.message("carol-2@example.test")?, Some(MessageRecord::Incoming { case: c, .. }) if c == case.id),
        "the reply is not threaded onto {}",
        case.id
    );
    let events = store.events(&case.id)?;
    ensure!(
        events.iter().any(|e| matches!(&e.kind, EventKind::MailReceived { message_id, .. } if message_id.contains("carol-2@example.test"))),
        "no MailReceived event for the reply: {events:?}"
    );
    // Automatic mail is recorded, never a case, never answered.
    for id in [
        "auto-1@example.test",
        "dsn-1@example.test",
        "list-1@example.test",
    ] {
        ensure!(
            store.message(id)?.and_then(|r| r.case().cloned()).is_none(),
            "{id} became part of a case"
        );
    }
    let recipients = queued_recipients(&daemon)?;
    ensure!(!recipients.contains(&lister), "a list mail was answered");
    ensure!(
        !recipients
            .iter()
            .any(|r| r.contains("nowhere.example") || r.contains("MAILER-DAEMON")),
        "a bounce was answered: {recipients:?}"
    );
    // One acknowledgement to Carol, despite the duplicate and the reply.
    let carol_acks: Vec<_> = store
        .outbox_of_case(&case.id)?
        .into_iter()
        .filter(|e| e.recipients == [customer.clone()])
        .collect();
    ensure!(carol_acks.len() == 1, "Carol's mail: {carol_acks:?}");
    daemon.stop().await?;
    let carol_inbox = inbox(&stack, &customer).await?;
    ensure!(
        carol_inbox.len() == 1,
        "Carol got {} mails",
        carol_inbox.len()
    );
    Ok(())
}

/// Sends `raw` with the null envelope sender `<>`, as a bounce is sent.
async fn support_send_null_sender(stack: &MailStack, raw: &[u8]) -> Result<()> {
    use lettre::address::Envelope;
    use lettre::transport::smtp::client::AsyncSmtpConnection;
    use lettre::transport::smtp::extension::ClientId;
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", stack.smtp_port())).await?;
    stream.set_nodelay(true)?;
    let mut connection = AsyncSmtpConnection::connect_with_transport(
        Box::new(stream),
        &ClientId::Domain("mta.example.test".into()),
    )
    .await?;
    let envelope = Envelope::new(None, vec![COMPLAINTS.parse()?])?;
    connection
        .send(&envelope, raw.strip_suffix(b"\r\n").unwrap_or(raw))
        .await?;
    connection.quit().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_rule_file_is_rejected_and_a_fixed_one_takes_effect_without_restart() -> Result<()>
{
    init_test_logging();
    let customer = "dave@example.test".to_owned();
    let stack = stack_with(std::slice::from_ref(&customer))?;
    let work = Workspace::new()?;
    let config = work.config(&stack, "acks_per_sender_per_hour = 50")?;
    let daemon = RunningDaemon::start(config, fast_options(Metrics::new())).await?;
    let failures = "complaintd_rule_reloads_total{outcome=\"failure\"}";
    let successes = "complaintd_rule_reloads_total{outcome=\"success\"}";
    let successes_at_start = daemon.metric(successes);

    // A file with an error, dropped in while the daemon runs.
    let hotfix = work.rules().join("15-hotfix.rules");
    std::fs::write(
        &hotfix,
        "classify {\n    rule vip \"VIP\":\n        when subjekt contains \"VIP\"\n        then tag vip\n}\n",
    )?;
    daemon
        .wait_until("the broken policy to be rejected", DEADLINE, || {
            Ok((daemon.metric(failures) >= 1.0).then_some(()))
        })
        .await?;
    ensure!(daemon.metric(successes) == successes_at_start);

    // The old policy keeps working.
    let before = complaint(
        "Dave",
        &customer,
        "VIP customer: 账单有误",
        "这个月的气费多收了。",
        "dave-1@example.test",
    );
    stack.send_raw(&customer, &[COMPLAINTS], &before).await?;
    let case = daemon
        .wait_until("the first case", DEADLINE, || {
            Ok(daemon.cases_by_message_id()?.remove("dave-1@example.test"))
        })
        .await?;
    ensure!(
        case.fields
            .get("category")
            .map(|v| v.to_string())
            .as_deref()
            == Some("billing"),
        "the old policy classified it: {case:?}"
    );
    ensure!(!case.tags.contains("vip"), "{case:?}");

    // The fixed file takes effect without a restart.
    std::fs::write(
        &hotfix,
        "classify {\n    rule vip \"VIP\":\n        when subject contains \"VIP\"\n        then tag vip\n}\n",
    )?;
    daemon
        .wait_until("the fixed policy to load", DEADLINE, || {
            Ok((daemon.metric(successes) > successes_at_start).then_some(()))
        })
        .await?;
    let after = complaint(
        "Dave",
        &customer,
        "VIP customer again: 账单有误",
        "这个月的气费又多收了。",
        "dave-2@example.test",
    );
    stack.send_raw(&customer, &[COMPLAINTS], &after).await?;
    let case = daemon
        .wait_until("the second case", DEADLINE, || {
            Ok(daemon.cases_by_message_id()?.remove("dave-2@example.test"))
        })
        .await?;
    ensure!(
        case.tags.contains("vip"),
        "the new rule did not run: {case:?}"
    );
    ensure!(
        case.fields
            .get("category")
            .map(|v| v.to_string())
            .as_deref()
            == Some("billing"),
        "{case:?}"
    );
    // Both were acknowledged.
    wait_for_mails(
        &stack,
        &customer,
        2,
        |r| subject_of(r).starts_with('['),
        DEADLINE,
    )
    .await?;
    ensure!(daemon
        .engine
        .store()
        .outbox_of_case(&case.id)?
        .iter()
        .all(|e| !matches!(e.state, OutboxState::PermanentFailure { .. })));
    daemon.stop().await
}

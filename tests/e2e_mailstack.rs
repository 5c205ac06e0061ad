//! Proves the local mail stack of `scripts/mailstack.sh` and the e2e harness in
//! `tests/support/`: mail sent over SMTP arrives byte for byte over IMAP (plain, STARTTLS and
//! TLS), unknown recipients are refused with a 5xx, several domains and plus-addresses are
//! delivered locally, users can be added to a running stack, and single servers can be stopped
//! and started for outage tests.

mod support;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use mail_parser::MessageParser;
use support::{contains, unique_address, ImapSecurity, MailStack, SmtpError};

/// Generous: delivery takes about a second, the rest is headroom for a loaded machine.
const ARRIVAL: Duration = Duration::from_secs(60);

/// The subject of the test complaint, as encoded in two RFC 2047 words on a folded line.
const ENCODED_SUBJECT: &str = "=?UTF-8?B?5oqV6K+J77ya54eD5rCU6KGo6K+75pWw5byC5bi4?=\r\n =?UTF-8?B?77yM6K+35bC95b+r5aSE55CG77yI56ys5LqM5qyh77yJ?=";
const DECODED_SUBJECT: &str = "投诉：燃气表读数异常，请尽快处理（第二次）";
const BODY: &str =
    "燃气表读数比实际用量高出一倍，请派人核查。\r\n.以点开头的一行（测试 dot-stuffing）\r\n";

/// A complete complaint mail with a Chinese RFC 2047 subject, an 8-bit UTF-8 body and a
/// unique Message-ID (returned alongside, for finding the mail again).
fn complaint(from: &str, to: &str) -> (String, Vec<u8>) {
    let message_id = format!("<{}>", unique_address("complaint", "harness.example.test"));
    let raw = format!(
        "From: =?UTF-8?B?5byg5LiJ?= <{from}>\r\n\
         To: <{to}>\r\n\
         Subject: {ENCODED_SUBJECT}\r\n\
         Date: Wed, 25 Nov 2026 10:00:00 +0800\r\n\
         Message-ID: {message_id}\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         {BODY}"
    );
    (message_id, raw.into_bytes())
}

/// Sends a complaint to a fresh user and checks it is read back intact with `security`.
async fn round_trip(security: ImapSecurity) -> Result<()> {
    let customer = unique_address("customer", "example.test");
    let inbox = unique_address("complaints", "example.test");
    let stack = MailStack::up(&[&inbox])?;
    let (message_id, sent) = complaint(&customer, &inbox);

    stack.send_raw(&customer, &[&inbox], &sent).await?;

    let mut mailbox = stack.connect(&inbox, security).await?;
    let received = mailbox
        .wait_for("INBOX", |raw| contains(raw, message_id.as_bytes()), ARRIVAL)
        .await?;
    mailbox.logout().await?;

    // The servers only prepend trace headers (Return-Path, Delivered-To, Received).
    ensure!(
        received.ends_with(&sent),
        "the mail was altered in transit:\n--- sent\n{}\n--- received\n{}",
        String::from_utf8_lossy(&sent),
        String::from_utf8_lossy(&received)
    );
    let parsed = MessageParser::default()
        .parse(&received)
        .context("the received mail does not parse")?;
    assert_eq!(parsed.subject(), Some(DECODED_SUBJECT));
    assert_eq!(
        parsed.message_id(),
        Some(message_id.trim_matches(['<', '>']))
    );
    let body = parsed
        .body_text(0)
        .context("the received mail has no text body")?;
    assert_eq!(body.replace("\r\n", "\n"), BODY.replace("\r\n", "\n"));
    Ok(())
}

#[tokio::test]
async fn chinese_subject_arrives_intact_over_plain_imap() -> Result<()> {
    round_trip(ImapSecurity::Plain).await
}

#[tokio::test]
async fn chinese_subject_arrives_intact_over_imaps() -> Result<()> {
    round_trip(ImapSecurity::Tls).await
}

#[tokio::test]
async fn chinese_subject_arrives_intact_over_starttls() -> Result<()> {
    round_trip(ImapSecurity::StartTls).await
}

#[tokio::test]
async fn message_built_with_lettre_keeps_its_chinese_subject() -> Result<()> {
    let sender = unique_address("service", "corp.example");
    let customer = unique_address("customer", "example.test");
    let stack = MailStack::up(&[&customer])?;
    let subject = "[TS-2026-000123] 您的投诉已受理";
    let message_id = format!("<{}>", unique_address("ack", "corp.example"));
    let message = lettre::Message::builder()
        .message_id(Some(message_id.clone()))
        .from(sender.parse()?)
        .to(customer.parse()?)
        .subject(subject)
        .body("您好，我们已收到您的投诉，编号 TS-2026-000123。".to_owned())?;

    stack.send_message(&message).await?;

    let received = stack
        .wait_for(
            &customer,
            |raw| contains(raw, message_id.as_bytes()),
            ARRIVAL,
        )
        .await?;
    let parsed = MessageParser::default()
        .parse(&received)
        .context("the received mail does not parse")?;
    assert_eq!(parsed.subject(), Some(subject));
    Ok(())
}

#[tokio::test]
async fn unknown_user_in_a_local_domain_is_refused_with_524() -> Result<()> {
    let known = unique_address("known", "example.test");
    let stack = MailStack::up(&[&known])?;
    // Never added to the stack, but in a domain the stack serves.
    let unknown = unique_address("nobody", "example.test");
    let (_, mail) = complaint(&known, &unknown);

    let error = stack
        .send_raw(&known, &[&unknown], &mail)
        .await
        .expect_err("mail to an unknown local user must be refused");

    assert!(error.is_permanent(), "expected a 5xx, got {error}");
    assert_eq!(error.code(), Some(524), "{error}");
    Ok(())
}

#[tokio::test]
async fn foreign_domain_is_refused_with_550() -> Result<()> {
    let known = unique_address("known", "example.test");
    let stack = MailStack::up(&[&known])?;
    let foreign = unique_address("someone", "not-served.example");
    let (_, mail) = complaint(&known, &foreign);

    let error = stack
        .send_raw(&known, &[&foreign], &mail)
        .await
        .expect_err("the stack must not relay to foreign domains");

    assert!(error.is_permanent(), "expected a 5xx, got {error}");
    assert_eq!(error.code(), Some(550), "{error}");
    Ok(())
}

#[tokio::test]
async fn users_in_two_domains_each_receive_only_their_mail() -> Result<()> {
    let gas = unique_address("complaints", "gas.example");
    let corp = unique_address("service", "corp.example");
    let customer = unique_address("customer", "example.test");
    let stack = MailStack::up(&[&gas, &corp])?;
    let (gas_id, to_gas) = complaint(&customer, &gas);
    let (corp_id, to_corp) = complaint(&customer, &corp);

    stack.send_raw(&customer, &[&gas], &to_gas).await?;
    stack.send_raw(&customer, &[&corp], &to_corp).await?;

    for (user, expected_id, other_id) in [(&gas, &gas_id, &corp_id), (&corp, &corp_id, &gas_id)] {
        stack
            .wait_for(user, |raw| contains(raw, expected_id.as_bytes()), ARRIVAL)
            .await?;
        let mut mailbox = stack.connect(user, ImapSecurity::Plain).await?;
        let inbox = mailbox.fetch_all("INBOX").await?;
        mailbox.logout().await?;
        assert_eq!(inbox.len(), 1, "{user} should hold exactly its own mail");
        assert!(
            !contains(&inbox[0], other_id.as_bytes()),
            "{user} received the other domain's mail"
        );
    }
    Ok(())
}

#[tokio::test]
async fn plus_address_is_delivered_to_the_base_users_inbox() -> Result<()> {
    let complaints = unique_address("complaints", "corp.example");
    let department = unique_address("quality", "corp.example");
    let stack = MailStack::up(&[&complaints])?;
    let (local, domain) = complaints.split_once('@').context("an address has an @")?;
    let reply_address = format!("{local}+TS-2026-000123.k3j4h5@{domain}");
    let (message_id, reply) = complaint(&department, &reply_address);

    stack
        .send_raw(&department, &[&reply_address], &reply)
        .await?;

    let received = stack
        .wait_for(
            &complaints,
            |raw| contains(raw, message_id.as_bytes()),
            ARRIVAL,
        )
        .await?;
    // The full plus-address survives in the trace headers for the daemon to read.
    assert!(contains(
        &received,
        format!("Delivered-To: {reply_address}").as_bytes()
    ));
    Ok(())
}

#[tokio::test]
async fn wait_for_wakes_up_on_mail_sent_while_it_waits() -> Result<()> {
    let inbox = unique_address("complaints", "example.test");
    let customer = unique_address("customer", "example.test");
    let stack = MailStack::up(&[&inbox])?;
    let mut mailbox = stack.connect(&inbox, ImapSecurity::Plain).await?;
    assert_eq!(
        mailbox.select("INBOX").await?,
        0,
        "a fresh user has no mail"
    );
    let (message_id, mail) = complaint(&customer, &inbox);
    let recipients = [inbox.as_str()];

    let (received, sent) = tokio::join!(
        mailbox.wait_for("INBOX", |raw| contains(raw, message_id.as_bytes()), ARRIVAL),
        stack.send_raw(&customer, &recipients, &mail),
    );

    sent?;
    assert!(received?.ends_with(&mail));
    mailbox.logout().await?;
    Ok(())
}

#[tokio::test]
async fn wait_for_gives_up_at_its_deadline() -> Result<()> {
    let inbox = unique_address("empty", "example.test");
    let stack = MailStack::up(&[&inbox])?;
    let mut mailbox = stack.connect(&inbox, ImapSecurity::Plain).await?;

    let outcome = mailbox
        .wait_for("INBOX", |_| true, Duration::from_millis(300))
        .await;

    let error = outcome.expect_err("an empty mailbox has no matching mail");
    assert!(
        error.to_string().contains("no matching mail"),
        "unexpected error: {error:#}"
    );
    mailbox.logout().await?;
    Ok(())
}

#[tokio::test]
async fn isolated_stack_adds_users_and_survives_server_restarts() -> Result<()> {
    let first = unique_address("first", "example.test");
    let later = unique_address("later", "gas.example");
    let customer = unique_address("customer", "example.test");
    let stack = MailStack::isolated(&[&first])?;

    // A user added to the running stack receives mail at once.
    stack.add_users(&[&later])?;
    let (later_id, mail) = complaint(&customer, &later);
    stack.send_raw(&customer, &[&later], &mail).await?;
    stack
        .wait_for(&later, |raw| contains(raw, later_id.as_bytes()), ARRIVAL)
        .await?;

    // With SMTP stopped nothing accepts the connection; after a restart mail flows again.
    stack.stop_smtp()?;
    let (second_id, mail) = complaint(&customer, &first);
    let refused = stack.send_raw(&customer, &[&first], &mail).await;
    assert!(
        matches!(refused, Err(SmtpError::Setup(_))),
        "sending with SMTP stopped must fail to connect, got {refused:?}"
    );
    stack.start_smtp()?;
    stack.send_raw(&customer, &[&first], &mail).await?;
    stack
        .wait_for(&first, |raw| contains(raw, second_id.as_bytes()), ARRIVAL)
        .await?;

    // With IMAP stopped logins fail; after a restart the mail is still there.
    stack.stop_imap()?;
    assert!(
        stack.connect(&first, ImapSecurity::Plain).await.is_err(),
        "connecting with IMAP stopped must fail"
    );
    stack.start_imap()?;
    let mut mailbox = stack.connect(&first, ImapSecurity::Tls).await?;
    let inbox = mailbox.fetch_all("INBOX").await?;
    mailbox.logout().await?;
    assert_eq!(inbox.len(), 1);
    assert!(contains(&inbox[0], second_id.as_bytes()));

    // After `down` neither port answers.
    let ports = [stack.imap_port(), stack.imaps_port(), stack.smtp_port()];
    stack.down()?;
    for port in ports {
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err(),
            "port {port} still answers after down"
        );
    }
    Ok(())
}

//! Tests of outgoing mail: headers, stable identity, MIME structure, and that
//! no case field can inject a header. Built mail is read back with the
//! inbound parser, as a receiving client would.

use chrono::{TimeZone, Utc};
use complaintd::case::{Address, CaseId};
use complaintd::mail::outbound::{
    build, message_id, subject_with_case, BuildError, OutgoingAttachment, OutgoingMail,
};
use complaintd::mail::token::ReplySecret;
use complaintd::mail::{
    classify, parse, ClassifyContext, IncomingMail, LoopReason, MailKind, MemoryLookup,
};
use sha2::{Digest, Sha256};

const HOST: &str = "complaintd.gas.example";

fn case() -> CaseId {
    CaseId("TS-2026-000123".into())
}

fn ack() -> OutgoingMail {
    OutgoingMail {
        case: Some(case()),
        purpose: "ack".into(),
        sequence: 1,
        from: Address::new("complaints@gas.example", Some("客户投诉中心")),
        to: vec![Address::new("wang@example.com", Some("王女士"))],
        cc: vec![],
        reply_to: None,
        subject: "您的投诉已受理".into(),
        text: "您好：\n\n您的投诉已登记，编号 TS-2026-000123。\n".into(),
        html: None,
        in_reply_to: Some("gbk-1@mail.example.com".into()),
        references: vec!["older@mail.example.com".into()],
        attachments: vec![],
        date: Utc.with_ymd_and_hms(2026, 11, 24, 2, 5, 0).unwrap(),
    }
}

fn forward() -> OutgoingMail {
    OutgoingMail {
        purpose: "forward".into(),
        to: vec![Address::new("billing@gas.example", Some("营业收费部"))],
        cc: vec![Address::new("service-office@gas.example", None)],
        reply_to: Some(Address::new(
            "complaints+ts-2026-000123.aaaaaaaaaaaaaaaaaaaaaaaa@gas.example",
            Some("客户投诉中心"),
        )),
        subject: "转派：账单多收".into(),
        text: "请处理。\n".into(),
        html: Some("<p>请处理。</p>".into()),
        in_reply_to: None,
        references: vec![],
        attachments: vec![OutgoingAttachment {
            name: "读数说明.txt".into(),
            content_type: "text/plain; charset=gbk".into(),
            bytes: vec![0xB6, 0xC1, 0xCA, 0xFD, b'\n'],
        }],
        ..ack()
    }
}

fn read_back(bytes: &[u8]) -> IncomingMail {
    parse(bytes).expect("built mail parses").mail
}

fn header_section(bytes: &[u8]) -> String {
    let text = String::from_utf8(bytes.to_vec()).expect("built mail is ASCII");
    text.split("\r\n\r\n").next().unwrap().to_owned()
}

#[test]
fn acknowledgement_headers() {
    let built = build(&ack(), HOST).unwrap();
    assert_eq!(
        built.message_id,
        "TS-2026-000123.ack.1@complaintd.gas.example"
    );
    assert_eq!(built.subject, "[TS-2026-000123] 您的投诉已受理");
    assert_eq!(built.envelope_from, "complaints@gas.example");
    assert_eq!(built.envelope_to, vec!["wang@example.com"]);

    let mail = read_back(&built.bytes);
    assert_eq!(mail.message_id, built.message_id);
    assert_eq!(mail.subject, "[TS-2026-000123] 您的投诉已受理");
    assert_eq!(
        mail.from,
        Some(Address::new("complaints@gas.example", Some("客户投诉中心")))
    );
    assert_eq!(
        mail.to,
        vec![Address::new("wang@example.com", Some("王女士"))]
    );
    assert_eq!(mail.header("auto-submitted"), Some("auto-replied"));
    assert_eq!(mail.header("x-complaintd-case"), Some("TS-2026-000123"));
    assert_eq!(mail.header("x-complaintd-purpose"), Some("ack"));
    assert_eq!(mail.header("x-auto-response-suppress"), Some("All"));
    assert_eq!(mail.in_reply_to, vec!["gbk-1@mail.example.com"]);
    assert_eq!(
        mail.references,
        vec!["older@mail.example.com", "gbk-1@mail.example.com"]
    );
    assert_eq!(
        mail.date,
        Some(Utc.with_ymd_and_hms(2026, 11, 24, 2, 5, 0).unwrap())
    );
    assert_eq!(mail.text, "您好：\n\n您的投诉已登记，编号 TS-2026-000123。");
    assert_eq!(mail.mime_type, "text/plain");

    // Non-ASCII travels RFC 2047-encoded: the header section is pure ASCII.
    let headers = header_section(&built.bytes);
    assert!(
        headers.contains("\r\nSubject: [TS-2026-000123] =?utf-8?b?"),
        "{headers}"
    );
}

#[test]
fn other_purposes_are_auto_generated() {
    let built = build(&forward(), HOST).unwrap();
    let mail = read_back(&built.bytes);
    assert_eq!(mail.header("auto-submitted"), Some("auto-generated"));
    assert_eq!(
        mail.header("reply-to")
            .map(|r| r.contains("complaints+ts-2026-000123.aaaaaaaaaaaaaaaaaaaaaaaa@gas.example")),
        Some(true)
    );
    assert_eq!(
        mail.cc,
        vec![Address::new("service-office@gas.example", None)]
    );
    assert_eq!(
        built.envelope_to,
        vec!["billing@gas.example", "service-office@gas.example"]
    );
}

#[test]
fn html_and_attachments_make_a_multipart_mail() {
    let built = build(&forward(), HOST).unwrap();
    let mail = read_back(&built.bytes);
    assert_eq!(mail.mime_type, "multipart/mixed");
    assert_eq!(mail.text, "请处理。");
    assert_eq!(mail.attachments.len(), 1);
    let attachment = &mail.attachments[0];
    assert_eq!(attachment.name, "读数说明.txt");
    assert_eq!(attachment.content_type, "text/plain");
    assert_eq!(
        attachment.sha256,
        hex::encode(Sha256::digest([0xB6, 0xC1, 0xCA, 0xFD, b'\n']))
    );
    let raw = String::from_utf8_lossy(&built.bytes);
    assert!(raw.contains("multipart/alternative"), "{raw}");
    assert!(raw.contains("text/html"), "{raw}");
}

#[test]
fn building_twice_gives_the_same_bytes() {
    assert_eq!(
        build(&forward(), HOST).unwrap(),
        build(&forward(), HOST).unwrap()
    );
    let mut later = forward();
    later.sequence = 2;
    let first = build(&forward(), HOST).unwrap();
    let second = build(&later, HOST).unwrap();
    assert_eq!(
        second.message_id,
        "TS-2026-000123.forward.2@complaintd.gas.example"
    );
    assert_ne!(first.bytes, second.bytes);
}

#[test]
fn stable_message_ids_and_subjects() {
    assert_eq!(
        message_id(Some(&case()), "reminder", 3, HOST).unwrap(),
        "TS-2026-000123.reminder.3@complaintd.gas.example"
    );
    assert_eq!(
        message_id(None, "digest", 20261123, HOST).unwrap(),
        "complaintd.digest.20261123@complaintd.gas.example"
    );
    assert_eq!(
        subject_with_case(Some(&case()), "Re: [TS-2026-000123] x"),
        "Re: [TS-2026-000123] x"
    );
    assert_eq!(subject_with_case(None, "周报"), "周报");
    assert_eq!(subject_with_case(Some(&case()), ""), "[TS-2026-000123]");
}

#[test]
fn no_field_can_inject_a_header() {
    let mut evil = ack();
    evil.subject = "投诉\r\nBcc: victim@example.com\r\nX-Complaintd-Purpose: forward".into();
    evil.from.name = Some("Complaints\r\nBcc: victim@example.com".into());
    evil.to = vec![Address::new(
        "wang@example.com",
        Some("\"Wang\" <x@evil.example>,\r\nBcc: victim@example.com"),
    )];
    evil.in_reply_to = Some("<a@b>\r\nBcc: victim@example.com".into());
    evil.references = vec!["ok@example.com\r\nBcc: victim@example.com".into()];
    let built = build(&evil, HOST).unwrap();
    let headers = header_section(&built.bytes);
    let names: Vec<&str> = headers
        .lines()
        .filter(|line| !line.starts_with([' ', '\t']))
        .filter_map(|line| line.split_once(':').map(|(name, _)| name))
        .collect();
    assert!(
        !names.iter().any(|n| n.eq_ignore_ascii_case("bcc")),
        "{headers}"
    );
    for single in ["Subject", "From", "To", "X-Complaintd-Purpose"] {
        assert_eq!(
            names
                .iter()
                .filter(|n| n.eq_ignore_ascii_case(single))
                .count(),
            1,
            "{single} in:\n{headers}"
        );
    }
    let mail = read_back(&built.bytes);
    assert_eq!(mail.header("x-complaintd-purpose"), Some("ack"));
    assert_eq!(mail.to.len(), 1, "{:?}", mail.to);
    assert_eq!(mail.to[0].email, "wang@example.com");
    assert!(mail.in_reply_to.is_empty());
    assert!(mail.references.is_empty());
    assert_eq!(built.envelope_to, vec!["wang@example.com"]);
    assert!(mail.subject.contains("Bcc: victim@example.com"));
}

#[test]
fn invalid_input_is_refused_with_a_reason() {
    let mut bad_address = ack();
    bad_address.to = vec![Address::new("wang@example.com\r\nBcc: v@x", None)];
    assert!(matches!(
        build(&bad_address, HOST),
        Err(BuildError::InvalidAddress { field: "To", .. })
    ));

    let mut no_recipient = ack();
    no_recipient.to.clear();
    assert_eq!(build(&no_recipient, HOST), Err(BuildError::NoRecipients));

    let mut bad_purpose = ack();
    bad_purpose.purpose = "ack\r\nBcc: x".into();
    assert!(matches!(
        build(&bad_purpose, HOST),
        Err(BuildError::InvalidPurpose(_))
    ));

    let mut bad_case = ack();
    bad_case.case = Some(CaseId("TS 1>".into()));
    assert!(matches!(
        build(&bad_case, HOST),
        Err(BuildError::InvalidCase(_))
    ));

    assert!(matches!(
        build(&ack(), "host\r\nBcc: x"),
        Err(BuildError::InvalidHost(_))
    ));

    let mut bad_type = forward();
    bad_type.attachments[0].content_type = "not a type".into();
    assert!(matches!(
        build(&bad_type, HOST),
        Err(BuildError::InvalidContentType { .. })
    ));
}

#[test]
fn our_own_mail_coming_back_is_a_loop() {
    let built = build(&ack(), HOST).unwrap();
    let mail = read_back(&built.bytes);
    let secret = ReplySecret::new(b"outbound-test-secret-0123456789".to_vec()).unwrap();
    let own = vec!["complaints@gas.example".to_owned()];
    let context = ClassifyContext {
        own_addresses: &own,
        secret: &secret,
        now: Utc.with_ymd_and_hms(2026, 11, 24, 3, 0, 0).unwrap(),
    };
    let kind = classify(&mail, &context, &MemoryLookup::default());
    assert!(
        matches!(&kind, MailKind::Loop { reason: LoopReason::OwnHeader(name) } if name.starts_with("x-complaintd-")),
        "{kind:?}"
    );
}

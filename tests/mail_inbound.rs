//! Tests of incoming mail beyond the fixtures: the header-only look, the facts
//! the rules see, and that no input makes the parser or its helpers panic.

use std::path::Path;

use chrono::{TimeZone, Utc};
use complaintd::case::Address;
use complaintd::mail::html::html_to_text;
use complaintd::mail::quote::split_reply;
use complaintd::mail::token::{self, ReplySecret};
use complaintd::mail::{parse, peek_headers, ParseError, ParseProblem};
use proptest::prelude::*;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/mail")
            .join(name),
    )
    .expect("fixture exists")
}

#[test]
fn peek_reads_headers_only_with_the_same_identity() {
    let raw = fixture("multipart-attachments.eml");
    let peek = peek_headers(&raw).unwrap();
    let full = parse(&raw).unwrap().mail;
    assert_eq!(peek.message_id, full.message_id);
    assert_eq!(peek.subject, full.subject);
    assert_eq!(peek.from, full.from);
    assert_eq!(peek.headers, full.headers);
    assert_eq!(peek.size, raw.len() as u64);
    assert!(!peek.body_parsed && full.body_parsed);
    assert!(peek.text.is_empty() && peek.attachments.is_empty());
    assert_eq!(peek.problems, vec![ParseProblem::BodyNotParsed]);

    let raw = fixture("no-message-id.eml");
    assert_eq!(
        peek_headers(&raw).unwrap().message_id,
        parse(&raw).unwrap().mail.message_id
    );
}

#[test]
fn peek_refuses_a_header_block_without_end() {
    let mut raw = b"Subject: x\r\n".to_vec();
    while raw.len() <= complaintd::mail::inbound::MAX_HEADER_BYTES {
        raw.extend_from_slice(
            b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        );
    }
    assert_eq!(peek_headers(&raw), Err(ParseError::HeadersTooLong));
}

#[test]
fn empty_and_headerless_input_are_refused_with_a_reason() {
    assert_eq!(parse(b""), Err(ParseError::Empty));
    assert_eq!(parse(b"  \r\n\r\n"), Err(ParseError::Empty));
    assert_eq!(peek_headers(b""), Err(ParseError::Empty));
    assert_eq!(
        parse(&fixture("not-a-mail.eml")),
        Err(ParseError::NoHeaders)
    );
}

#[test]
fn facts_for_the_rules() {
    let mail = parse(&fixture("utf8-base64.eml")).unwrap().mail;
    let received = Utc.with_ymd_and_hms(2026, 11, 25, 0, 31, 0).unwrap();
    let facts = mail.to_facts("hotline", received);
    assert_eq!(facts.subject, "燃气压力不足");
    assert!(facts.text.starts_with("您好，"));
    assert_eq!(
        facts.sender,
        Address::new("li@example.com", Some("Li Ming"))
    );
    assert_eq!(
        facts.recipients,
        vec![
            Address::new("complaints@gas.example", Some("投诉中心")),
            Address::new("neighbour@example.com", None),
        ]
    );
    assert_eq!(facts.language, "zh");
    assert_eq!(facts.channel, "hotline");
    assert_eq!(facts.received_at, received);
    assert_eq!(facts.header("Message-ID"), Some("<utf8b64-1@example.com>"));
    assert_eq!(facts.header("subject"), Some("燃气压力不足"));

    let with_attachments = parse(&fixture("multipart-attachments.eml")).unwrap().mail;
    let facts = with_attachments.to_facts("own", received);
    let names: Vec<&str> = facts.attachments.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, vec!["meter.jpg", "读数说明.txt", "passwdrnbill.pdf"]);
    assert_eq!(facts.attachments[0].size, 53);
}

#[test]
fn quoted_text_stays_out_of_the_facts() {
    let mail = parse(&fixture("department-reply-outlook.eml"))
        .unwrap()
        .mail;
    let facts = mail.to_facts("own", Utc.with_ymd_and_hms(2026, 11, 25, 6, 0, 0).unwrap());
    assert!(facts.text.starts_with("状态: 已解决"));
    assert!(!facts.text.contains("请在 3 天内处理"));
    assert!(mail.quoted.contains("请在 3 天内处理"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(raw in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse(&raw);
        let _ = peek_headers(&raw);
    }

    #[test]
    fn parse_never_panics_on_damaged_fixtures(
        index in 0usize..6,
        cut in 0.0f64..1.0,
        flips in proptest::collection::vec((0.0f64..1.0, any::<u8>()), 0..8),
    ) {
        let names = [
            "multipart-attachments.eml",
            "dsn-bounce.eml",
            "html-only.eml",
            "gbk-subject.eml",
            "iso-2022-jp.eml",
            "department-reply-outlook.eml",
        ];
        let mut raw = fixture(names[index]);
        raw.truncate((raw.len() as f64 * cut) as usize);
        let len = raw.len();
        for (position, byte) in flips {
            if len > 0 {
                raw[((len - 1) as f64 * position) as usize] = byte;
            }
        }
        if let Ok(parsed) = parse(&raw) {
            // Whatever was read is consistent.
            for attachment in &parsed.mail.attachments {
                prop_assert!(parsed.blobs.iter().any(|b| b.sha256 == attachment.sha256));
            }
        }
    }

    #[test]
    fn text_helpers_never_panic(text in "\\PC{0,400}") {
        let _ = html_to_text(&text);
        let split = split_reply(&text);
        prop_assert!(split.new_text.len() + split.quoted.len() <= text.len() + 1);
    }

    #[test]
    fn html_fragments_never_panic(text in "(<[a-z/!]{0,3}[^<>]{0,8}>?|&[#a-z0-9]{0,6};?|[^<&]{0,8}){0,40}") {
        let _ = html_to_text(&text);
    }

    #[test]
    fn token_verification_never_panics(address in "\\PC{0,120}") {
        let secret = ReplySecret::new(b"property-test-secret-0123456789".to_vec()).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let _ = token::verify(&secret, &address, now, ["service", "客服中心"]);
        let _ = token::claimed_case(&address);
    }
}

#[test]
fn a_peeked_bounce_is_still_a_bounce() {
    let peek = peek_headers(&fixture("dsn-bounce.eml")).unwrap();
    let report = peek
        .report
        .expect("the report type is read from the header");
    assert_eq!(report.report_type, "delivery-status");
    assert_eq!(report.original_message_id, None);
}

#[test]
fn an_empty_plain_part_gives_way_to_the_html() {
    let raw = "From: a@example.com\r\nSubject: x\r\nMessage-ID: <e@x>\r\n\
               Content-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n\
               --alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n \r\n\
               --alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<div>燃气表坏了</div>\r\n--alt--\r\n";
    let mail = parse(raw.as_bytes()).unwrap().mail;
    assert_eq!(mail.text, "燃气表坏了");
    assert_eq!(mail.body_source, complaintd::mail::BodySource::Html);
}

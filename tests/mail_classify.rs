//! Table-driven tests of mail classification: one row per branch of
//! `classify`, each a real mail parsed from bytes.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use complaintd::case::CaseId;
use complaintd::mail::token::{self, ReplySecret, TokenError};
use complaintd::mail::{
    classify, parse, AutoReplyReason, ClassifyContext, IncomingMail, KnownMessage, LoopReason,
    MailKind, MemoryLookup, ThreadedBy, UnverifiedReason,
};

const CASE: &str = "TS-2026-000123";
const OTHER_CASE: &str = "TS-2026-000077";
const ACK_ID: &str = "TS-2026-000123.ack.1@complaintd.gas.example";
const FORWARD_ID: &str = "TS-2026-000123.forward.1@complaintd.gas.example";
const OTHER_FORWARD_ID: &str = "TS-2026-000077.forward.1@complaintd.gas.example";

fn case(id: &str) -> CaseId {
    CaseId(id.into())
}

fn secret() -> ReplySecret {
    ReplySecret::new(b"classify-test-secret-0123456789".to_vec()).unwrap()
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 8, 0, 0).unwrap()
}

fn token_address(case_id: &str, department: &str, expires: NaiveDate) -> String {
    let token = token::mint(&secret(), &case(case_id), department, expires).unwrap();
    token::reply_address("complaints@gas.example", &token)
}

fn valid_token(case_id: &str, department: &str) -> String {
    token_address(
        case_id,
        department,
        NaiveDate::from_ymd_opt(2026, 12, 31).unwrap(),
    )
}

fn lookup() -> MemoryLookup {
    let mut lookup = MemoryLookup::default();
    lookup.cases.insert(case(CASE));
    lookup.cases.insert(case(OTHER_CASE));
    for (id, case_id, purpose) in [
        (ACK_ID, CASE, "ack"),
        (FORWARD_ID, CASE, "forward"),
        (OTHER_FORWARD_ID, OTHER_CASE, "forward"),
    ] {
        lookup.messages.insert(
            id.into(),
            KnownMessage::Sent {
                case: Some(case(case_id)),
                purpose: purpose.into(),
            },
        );
    }
    lookup.messages.insert(
        "already-seen@example.com".into(),
        KnownMessage::Ingested {
            case: Some(case(CASE)),
        },
    );
    lookup.departments.insert(
        "service".into(),
        vec![
            "service@gas.example".into(),
            "service-lead@gas.example".into(),
        ],
    );
    lookup
        .departments
        .insert("network".into(), vec!["network@gas.example".into()]);
    lookup
}

/// A mail with the given headers (Message-ID, Date and MIME headers added
/// unless given) and body.
fn mail(headers: &[(&str, &str)], body: &str) -> IncomingMail {
    let mut raw = String::new();
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    if !has("Message-ID") {
        raw.push_str("Message-ID: <fresh-1@example.com>\r\n");
    }
    if !has("Date") {
        raw.push_str("Date: Wed, 25 Nov 2026 15:00:00 +0800\r\n");
    }
    if !has("To") {
        raw.push_str("To: complaints@gas.example\r\n");
    }
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    if !has("Content-Type") {
        raw.push_str("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n");
    }
    raw.push_str("\r\n");
    raw.push_str(body);
    parse(raw.as_bytes()).expect("test mail parses").mail
}

fn customer(extra: &[(&str, &str)]) -> IncomingMail {
    let mut headers = vec![
        ("From", "王女士 <wang@example.com>"),
        ("Subject", "燃气表坏了"),
    ];
    headers.extend_from_slice(extra);
    mail(&headers, "燃气表坏了，请派人来修。\r\n")
}

fn department_mail(from: &str, to: &str, extra: &[(&str, &str)]) -> IncomingMail {
    let mut headers = vec![
        ("From", from),
        ("To", to),
        ("Subject", "答复: [TS-2026-000123] 转派：燃气表坏了"),
    ];
    headers.extend_from_slice(extra);
    mail(&headers, "状态: 已解决\r\n处理结果: 已更换燃气表。\r\n")
}

fn dsn(original_headers: &str) -> IncomingMail {
    let body = format!(
        "--b\r\nContent-Type: text/plain\r\n\r\nDelivery failed.\r\n\
         --b\r\nContent-Type: message/delivery-status\r\n\r\n\
         Reporting-MTA: dns; mx.gas.example\r\n\r\n\
         Final-Recipient: rfc822; gone@gas.example\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n\
         --b\r\nContent-Type: text/rfc822-headers\r\n\r\n{original_headers}\r\n--b--\r\n"
    );
    mail(
        &[
            ("Return-Path", "<>"),
            ("From", "MAILER-DAEMON@mx.gas.example"),
            ("Subject", "Undelivered Mail Returned to Sender"),
            (
                "Content-Type",
                "multipart/report; report-type=delivery-status; boundary=\"b\"",
            ),
        ],
        &body,
    )
}

fn read_receipt() -> IncomingMail {
    let body = "--r\r\nContent-Type: text/plain\r\n\r\nYour mail was read.\r\n\
                --r\r\nContent-Type: message/disposition-notification\r\n\r\n\
                Final-Recipient: rfc822; service@gas.example\r\n\
                Original-Message-ID: <TS-2026-000123.forward.1@complaintd.gas.example>\r\n\
                Disposition: manual-action/MDN-sent-manually; displayed\r\n\r\n--r--\r\n";
    mail(
        &[
            ("From", "service@gas.example"),
            ("Subject", "Read: [TS-2026-000123]"),
            (
                "Content-Type",
                "multipart/report; report-type=disposition-notification; boundary=\"r\"",
            ),
        ],
        body,
    )
}

fn unverified(case_id: &str, reason: UnverifiedReason) -> MailKind {
    MailKind::Unverified {
        case: case(case_id),
        reason,
    }
}

fn auto(reason: AutoReplyReason, case_id: Option<&str>) -> MailKind {
    MailKind::AutoReply {
        reason,
        case: case_id.map(case),
    }
}

#[test]
fn every_branch_of_classification() {
    let valid = valid_token(CASE, "service");
    let key = valid.split_once('.').unwrap().1.split('@').next().unwrap();
    let other_case_same_tag = format!("complaints+ts-2026-000077.{key}@gas.example");
    let missing_case_same_tag = format!("complaints+ts-2026-999999.{key}@gas.example");
    let expired = token_address(
        CASE,
        "service",
        NaiveDate::from_ymd_opt(2026, 11, 24).unwrap(),
    );
    let other_case_token = valid_token(OTHER_CASE, "service");
    let unknown_department_token = valid_token(CASE, "quality");
    let foreign_domain = valid.replace("@gas.example", "@evil.example");
    let in_reply_to_forward = format!("<{FORWARD_ID}>");
    let in_reply_to_other = format!("<{OTHER_FORWARD_ID}>");
    let references_ack = format!("<gbk-1@example.com> <{ACK_ID}>");
    let in_reply_to_ack = format!("<{ACK_ID}>");
    let cc_token = format!("客服 <service@gas.example>, {valid}");
    let delivered_to = valid.clone();

    let rows: Vec<(&str, IncomingMail, MailKind)> = vec![
        // Duplicates and loops.
        (
            "a Message-ID already ingested is a duplicate",
            customer(&[("Message-ID", "<already-seen@example.com>")]),
            MailKind::Duplicate {
                case: Some(case(CASE)),
            },
        ),
        (
            "our own sent mail coming back is a loop",
            customer(&[("Message-ID", &in_reply_to_ack)]),
            MailKind::Loop {
                reason: LoopReason::OwnMessage,
            },
        ),
        (
            "mail from our own address is a loop",
            mail(
                &[
                    ("From", "Complaints <Complaints@gas.example>"),
                    ("Subject", "x"),
                ],
                "x",
            ),
            MailKind::Loop {
                reason: LoopReason::FromOwnAddress("complaints@gas.example".into()),
            },
        ),
        (
            "mail from a plus-address of ours is a loop",
            mail(&[("From", &valid), ("Subject", "x")], "x"),
            MailKind::Loop {
                reason: LoopReason::FromOwnAddress(valid.to_lowercase()),
            },
        ),
        (
            "our X-Complaintd headers on incoming mail are a loop, never a command",
            department_mail(
                "service@gas.example",
                &valid,
                &[("X-Complaintd-Purpose", "forward")],
            ),
            MailKind::Loop {
                reason: LoopReason::OwnHeader("x-complaintd-purpose".into()),
            },
        ),
        // Bounces.
        (
            "a DSN of our forward is a bounce on its case",
            dsn(&format!("Message-ID: <{FORWARD_ID}>\r\nSubject: x")),
            MailKind::Bounce {
                original_message_id: Some(FORWARD_ID.into()),
                case: Some(case(CASE)),
            },
        ),
        (
            "a DSN of a mail we do not know is a bounce without case",
            dsn("Message-ID: <unknown@elsewhere.example>"),
            MailKind::Bounce {
                original_message_id: Some("unknown@elsewhere.example".into()),
                case: None,
            },
        ),
        (
            "a terse DSN without the returned message threads to its case",
            mail(
                &[
                    ("From", "MAILER-DAEMON@mx.gas.example"),
                    ("Subject", "failure"),
                    ("In-Reply-To", &in_reply_to_forward),
                    (
                        "Content-Type",
                        "multipart/report; report-type=delivery-status; boundary=\"t\"",
                    ),
                ],
                "--t\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--t--\r\n",
            ),
            MailKind::Bounce {
                original_message_id: None,
                case: Some(case(CASE)),
            },
        ),
        // Automatic mail.
        (
            "Auto-Submitted other than no is automatic",
            customer(&[("Auto-Submitted", "auto-generated")]),
            auto(
                AutoReplyReason::AutoSubmitted("auto-generated".into()),
                None,
            ),
        ),
        (
            "Auto-Submitted: no is a person's mail",
            customer(&[("Auto-Submitted", "no")]),
            MailKind::NewComplaint,
        ),
        (
            "Precedence: bulk is automatic",
            customer(&[("Precedence", "bulk")]),
            auto(AutoReplyReason::Precedence("bulk".into()), None),
        ),
        (
            "Precedence: junk is automatic",
            customer(&[("Precedence", "Junk")]),
            auto(AutoReplyReason::Precedence("junk".into()), None),
        ),
        (
            "List-Unsubscribe marks list mail",
            customer(&[("List-Unsubscribe", "<mailto:u@lists.example>")]),
            auto(AutoReplyReason::ListHeader("list-unsubscribe".into()), None),
        ),
        (
            "List-Id marks list mail",
            customer(&[("List-Id", "<news.lists.example>")]),
            auto(AutoReplyReason::ListHeader("list-id".into()), None),
        ),
        (
            "X-Autorespond is automatic",
            customer(&[("X-Autorespond", "yes")]),
            auto(
                AutoReplyReason::AutoReplyHeader("x-autorespond".into()),
                None,
            ),
        ),
        (
            "the null sender is automatic",
            customer(&[("Return-Path", "<>")]),
            auto(AutoReplyReason::NullSender, None),
        ),
        (
            "a read receipt is automatic, logged on its case",
            read_receipt(),
            auto(
                AutoReplyReason::Report("disposition-notification".into()),
                Some(CASE),
            ),
        ),
        (
            "a department's out-of-office reply to the token address is automatic",
            department_mail(
                "service@gas.example",
                &valid,
                &[
                    ("Auto-Submitted", "auto-replied"),
                    ("In-Reply-To", &in_reply_to_forward),
                ],
            ),
            auto(
                AutoReplyReason::AutoSubmitted("auto-replied".into()),
                Some(CASE),
            ),
        ),
        // Department replies.
        (
            "token address and department address: a department reply",
            department_mail(
                "客户服务中心 <Service@Gas.Example>",
                &valid,
                &[("In-Reply-To", &in_reply_to_forward)],
            ),
            MailKind::DepartmentReply {
                case: case(CASE),
                department: "service".into(),
            },
        ),
        (
            "the department manager may reply too",
            department_mail("service-lead@gas.example", &valid, &[]),
            MailKind::DepartmentReply {
                case: case(CASE),
                department: "service".into(),
            },
        ),
        (
            "the token address may be in Cc",
            department_mail("service@gas.example", &cc_token, &[]),
            MailKind::DepartmentReply {
                case: case(CASE),
                department: "service".into(),
            },
        ),
        (
            "the token address may be only in Delivered-To (Bcc)",
            department_mail(
                "service@gas.example",
                "someone@gas.example",
                &[("Delivered-To", &delivered_to)],
            ),
            MailKind::DepartmentReply {
                case: case(CASE),
                department: "service".into(),
            },
        ),
        (
            "an upper-cased token address still verifies",
            department_mail("service@gas.example", &valid.to_uppercase(), &[]),
            MailKind::DepartmentReply {
                case: case(CASE),
                department: "service".into(),
            },
        ),
        // Claims that fail.
        (
            "forged department From with a valid-looking subject but no token",
            department_mail("service@gas.example", "complaints@gas.example", &[]),
            unverified(
                CASE,
                UnverifiedReason::DepartmentAddressWithoutToken {
                    department: "service".into(),
                },
            ),
        ),
        (
            "department address replying to the forward without the token",
            department_mail(
                "network@gas.example",
                "complaints@gas.example",
                &[("In-Reply-To", &in_reply_to_forward)],
            ),
            unverified(
                CASE,
                UnverifiedReason::DepartmentAddressWithoutToken {
                    department: "network".into(),
                },
            ),
        ),
        (
            "valid token but the sender is a customer",
            department_mail("wang@example.com", &valid, &[]),
            unverified(
                CASE,
                UnverifiedReason::SenderNotInDepartment {
                    sender: "wang@example.com".into(),
                    department: "service".into(),
                },
            ),
        ),
        (
            "valid token but the sender belongs to another department",
            department_mail("network@gas.example", &valid, &[]),
            unverified(
                CASE,
                UnverifiedReason::SenderNotInDepartment {
                    sender: "network@gas.example".into(),
                    department: "service".into(),
                },
            ),
        ),
        (
            "a token's tag moved to another case does not verify",
            department_mail(
                "service@gas.example",
                &other_case_same_tag,
                &[("Subject", "状态: 已解决")],
            ),
            unverified(
                OTHER_CASE,
                UnverifiedReason::Token(TokenError::BadSignature),
            ),
        ),
        (
            "a forged token for a case that does not exist stays on the threaded case",
            department_mail("service@gas.example", &missing_case_same_tag, &[]),
            unverified(CASE, UnverifiedReason::Token(TokenError::BadSignature)),
        ),
        (
            "an expired token",
            department_mail("service@gas.example", &expired, &[]),
            unverified(
                CASE,
                UnverifiedReason::Token(TokenError::Expired {
                    expired_on: NaiveDate::from_ymd_opt(2026, 11, 24).unwrap(),
                    case: case(CASE),
                    department: "service".into(),
                }),
            ),
        ),
        (
            "a valid token for another case than the mail answers",
            department_mail(
                "service@gas.example",
                &other_case_token,
                &[("In-Reply-To", &in_reply_to_forward)],
            ),
            unverified(
                OTHER_CASE,
                UnverifiedReason::ThreadMismatch {
                    threaded_case: case(CASE),
                },
            ),
        ),
        (
            "a token for a department the policy no longer has",
            department_mail("service@gas.example", &unknown_department_token, &[]),
            unverified(CASE, UnverifiedReason::Token(TokenError::BadSignature)),
        ),
        (
            "a token at another domain is not ours",
            department_mail(
                "service@gas.example",
                &foreign_domain,
                &[("Subject", "hello")],
            ),
            MailKind::NewComplaint,
        ),
        // Customer replies.
        (
            "a customer reply threaded by In-Reply-To",
            customer(&[("In-Reply-To", &in_reply_to_ack)]),
            MailKind::CustomerReply {
                case: case(CASE),
                threaded_by: ThreadedBy::Header(ACK_ID.into()),
            },
        ),
        (
            "a customer reply threaded by References",
            customer(&[("References", &references_ack)]),
            MailKind::CustomerReply {
                case: case(CASE),
                threaded_by: ThreadedBy::Header(ACK_ID.into()),
            },
        ),
        (
            "In-Reply-To wins over the subject number",
            customer(&[
                ("In-Reply-To", &in_reply_to_other),
                ("Subject", "Re: [TS-2026-000123]"),
            ]),
            MailKind::CustomerReply {
                case: case(OTHER_CASE),
                threaded_by: ThreadedBy::Header(OTHER_FORWARD_ID.into()),
            },
        ),
        (
            "a customer reply threaded by the bracketed number, any case",
            customer(&[("Subject", "Re: [ts-2026-000123] 还没修好")]),
            MailKind::CustomerReply {
                case: case(CASE),
                threaded_by: ThreadedBy::SubjectNumber,
            },
        ),
        (
            "a bracketed number of no existing case is a new complaint",
            customer(&[("Subject", "[TS-2026-999999] 燃气表")]),
            MailKind::NewComplaint,
        ),
        (
            "a malformed plus-address is ignored, the thread decides",
            customer(&[
                ("To", "complaints+hello@gas.example"),
                ("In-Reply-To", &in_reply_to_ack),
            ]),
            MailKind::CustomerReply {
                case: case(CASE),
                threaded_by: ThreadedBy::Header(ACK_ID.into()),
            },
        ),
        // New complaints.
        (
            "a plain new complaint",
            customer(&[]),
            MailKind::NewComplaint,
        ),
        (
            "a department address writing a new mail without a case is a new complaint",
            mail(
                &[
                    ("From", "service@gas.example"),
                    ("Subject", "热线转来的投诉"),
                ],
                "客户来电投诉燃气表。",
            ),
            MailKind::NewComplaint,
        ),
    ];

    let lookup = lookup();
    let secret = secret();
    let own = vec!["complaints@gas.example".to_owned()];
    let context = ClassifyContext {
        own_addresses: &own,
        secret: &secret,
        now: now(),
    };
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|(name, mail, expected)| {
            let actual = classify(mail, &context, &lookup);
            (actual != *expected)
                .then(|| format!("{name}:\n  expected {expected:?}\n  actual   {actual:?}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[test]
fn unverified_reasons_read_well_in_the_event_log() {
    let kind = unverified(
        CASE,
        UnverifiedReason::SenderNotInDepartment {
            sender: "wang@example.com".into(),
            department: "service".into(),
        },
    );
    assert_eq!(
        kind.to_string(),
        "unverified mail on TS-2026-000123: valid reply token, but wang@example.com is not an address of department service"
    );
    assert_eq!(kind.case(), Some(&case(CASE)));
    assert_eq!(kind.name(), "unverified");
}

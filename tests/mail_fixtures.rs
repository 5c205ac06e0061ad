//! Fixture tests of incoming mail: every `tests/fixtures/mail/NAME.eml` is
//! parsed and classified, and the result compared with `NAME.expected.json`.
//!
//! On a mismatch the test prints a unified diff per fixture. After a
//! deliberate change, `BLESS=1 cargo test --test mail_fixtures` rewrites the
//! expected files; review the diff of those files before committing them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};
use complaintd::case::CaseId;
use complaintd::mail::token::ReplySecret;
use complaintd::mail::{
    classify, parse, ClassifyContext, IncomingMail, KnownMessage, MailKind, MemoryLookup,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const FIXTURE_SECRET: &[u8] = b"fixture-secret-0123456789";

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mail")
}

/// The store as the fixtures assume it: case TS-2026-000123 exists, with an
/// acknowledgement and a forward sent; the default policy's departments.
fn fixture_lookup() -> MemoryLookup {
    let case = CaseId("TS-2026-000123".into());
    let mut lookup = MemoryLookup::default();
    lookup.cases.insert(case.clone());
    lookup.cases.insert(CaseId("TS-2026-000077".into()));
    for purpose in ["ack", "forward"] {
        lookup.messages.insert(
            format!("TS-2026-000123.{purpose}.1@complaintd.gas.example"),
            KnownMessage::Sent {
                case: Some(case.clone()),
                purpose: purpose.into(),
            },
        );
    }
    let departments: BTreeMap<String, Vec<String>> = [
        (
            "service",
            &[
                "service@gas.example",
                "service-lead@gas.example",
                "service-supervisor@gas.example",
            ][..],
        ),
        (
            "network",
            &[
                "network@gas.example",
                "network-duty@gas.example",
                "network-lead@gas.example",
            ][..],
        ),
        (
            "billing_dept",
            &["billing@gas.example", "billing-lead@gas.example"][..],
        ),
        (
            "office",
            &["service-office@gas.example", "gm@gas.example"][..],
        ),
    ]
    .into_iter()
    .map(|(name, addresses)| {
        (
            name.to_owned(),
            addresses.iter().map(|a| a.to_string()).collect(),
        )
    })
    .collect();
    lookup.departments = departments;
    lookup
}

fn kind_json(kind: &MailKind) -> Value {
    json!({
        "kind": kind.name(),
        "case": kind.case().map(|c| c.0.clone()),
        "detail": kind.to_string(),
    })
}

fn mail_json(mail: &IncomingMail, kind: &MailKind) -> Value {
    json!({
        "message_id": mail.message_id,
        "message_id_synthesized": mail.message_id_synthesized,
        "in_reply_to": mail.in_reply_to,
        "references": mail.references,
        "subject": mail.subject,
        "from": mail.from.as_ref().map(|a| json!({"email": a.email, "name": a.name})),
        "to": mail.to.iter().map(|a| a.email.clone()).collect::<Vec<_>>(),
        "cc": mail.cc.iter().map(|a| a.email.clone()).collect::<Vec<_>>(),
        "date": mail.date.map(|d| d.to_rfc3339()),
        "language": mail.language,
        "body_source": mail.body_source,
        "text": mail.text,
        "quoted": !mail.quoted.is_empty(),
        "attachments": mail.attachments,
        "report": mail.report,
        "problems": mail.problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "kind": kind_json(kind),
    })
}

fn actual_for(raw: &[u8]) -> Value {
    let secret = ReplySecret::new(FIXTURE_SECRET.to_vec()).expect("fixture secret is long enough");
    let own = vec!["complaints@gas.example".to_owned()];
    let context = ClassifyContext {
        own_addresses: &own,
        secret: &secret,
        now: Utc.with_ymd_and_hms(2026, 11, 25, 8, 0, 0).unwrap(),
    };
    match parse(raw) {
        Err(error) => json!({ "error": error.to_string() }),
        Ok(parsed) => {
            // Every attachment's bytes come back once, under their own hash.
            for attachment in &parsed.mail.attachments {
                let blob = parsed
                    .blobs
                    .iter()
                    .find(|b| b.sha256 == attachment.sha256)
                    .expect("every attachment has a blob");
                assert_eq!(hex::encode(Sha256::digest(&blob.bytes)), blob.sha256);
                assert_eq!(blob.bytes.len() as u64, attachment.size);
            }
            let kind = classify(&parsed.mail, &context, &fixture_lookup());
            mail_json(&parsed.mail, &kind)
        }
    }
}

#[test]
fn fixtures_parse_and_classify_as_expected() {
    let bless = std::env::var_os("BLESS").is_some();
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(fixture_dir())
        .expect("fixture directory exists")
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "eml"))
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 20, "fixtures missing: {fixtures:?}");

    let mut failures = Vec::new();
    for eml in &fixtures {
        let raw = std::fs::read(eml).expect("readable fixture");
        let actual = serde_json::to_string_pretty(&actual_for(&raw)).expect("JSON") + "\n";
        let expected_path = eml.with_extension("expected.json");
        if bless {
            std::fs::write(&expected_path, &actual).expect("writable expected file");
            continue;
        }
        let expected = match std::fs::read_to_string(&expected_path) {
            Ok(expected) => expected,
            Err(error) => {
                failures.push(format!("{}: {error}", expected_path.display()));
                continue;
            }
        };
        let expected_value: Value =
            serde_json::from_str(&expected).expect("expected file is valid JSON");
        let expected = serde_json::to_string_pretty(&expected_value).expect("JSON") + "\n";
        if expected != actual {
            let diff = similar::TextDiff::from_lines(&expected, &actual)
                .unified_diff()
                .context_radius(3)
                .header("expected", "actual")
                .to_string();
            failures.push(format!("{}:\n{diff}", eml.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures differ:\n\n{}",
        failures.len(),
        fixtures.len(),
        failures.join("\n")
    );
}

#[test]
fn parsing_is_deterministic() {
    let raw = std::fs::read(fixture_dir().join("multipart-attachments.eml")).unwrap();
    assert_eq!(parse(&raw).unwrap(), parse(&raw).unwrap());
}

//! The mail modules together with the default policy in `rules/`: its
//! templates, its departments, and a forward → department reply round trip.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::{NaiveDate, TimeZone, Utc};
use chrono_tz::Asia::Shanghai;
use complaintd::case::{Address, Assignment, Case, CaseId};
use complaintd::mail::classify::department_addresses;
use complaintd::mail::outbound::{build, OutgoingMail};
use complaintd::mail::template::{CaseView, DisplayNames, MailView, TemplateContext, Templates};
use complaintd::mail::token::{self, ReplySecret};
use complaintd::mail::{classify, parse, ClassifyContext, KnownMessage, MailKind, MemoryLookup};
use complaintd::rules::check::{check, Environment};
use complaintd::rules::diag::render_all;
use complaintd::rules::parse::parse_file;
use complaintd::rules::{Limits, Policy, SourceMap};

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")
}

/// The default policy, checked against the template files that exist.
fn default_policy() -> Policy {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(rules_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rules"))
        .collect();
    paths.sort();
    let mut sources = SourceMap::new();
    let mut files = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        let id = sources.add(path.display().to_string(), text.clone());
        files.push(parse_file(id, &text).unwrap_or_else(|d| panic!("{}", d.render(&sources))));
    }
    let template_files: BTreeSet<String> = std::fs::read_dir(rules_dir().join("templates"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let env = Environment {
        template_files: Some(template_files),
    };
    let checked = check(sources, &files, Limits::default(), &env);
    assert_eq!(render_all(&checked.diagnostics, &checked.sources), "");
    checked.policy.expect("the default policy checks")
}

fn templates(policy: &Policy) -> Templates {
    Templates::load_dir(&rules_dir().join("templates"), &policy.languages).unwrap()
}

#[test]
fn every_template_of_the_policy_exists_in_every_policy_language() {
    let policy = default_policy();
    let templates = templates(&policy);
    assert!(!policy.templates.is_empty());
    for declared in &policy.templates {
        assert_eq!(
            templates.missing_languages(&declared.file_stem.node),
            Vec::<String>::new(),
            "template {}",
            declared.name.node
        );
    }
}

#[test]
fn departments_reply_from_their_addresses_manager_and_contacts() {
    let departments = department_addresses(&default_policy());
    assert_eq!(
        departments["service"],
        vec![
            "service-lead@gas.example",
            "service-supervisor@gas.example",
            "service@gas.example"
        ]
    );
    assert_eq!(
        departments["network"],
        vec![
            "network-duty@gas.example",
            "network-lead@gas.example",
            "network@gas.example"
        ]
    );
    assert_eq!(departments.len(), 4);
}

#[test]
fn a_forward_and_the_departments_answer_round_trip() {
    let policy = default_policy();
    let templates = templates(&policy);
    let names = DisplayNames::from_policy(&policy);
    let secret = ReplySecret::new(b"round-trip-secret-0123456789".to_vec()).unwrap();
    let now = Utc.with_ymd_and_hms(2026, 11, 24, 2, 30, 0).unwrap();

    // The complaint arrives and becomes a case routed to billing_dept.
    let complaint = parse(
        "From: =?UTF-8?B?546L5aWz5aOr?= <wang@example.com>\r\nTo: complaints@gas.example\r\n\
         Subject: =?UTF-8?B?6LSm5Y2V5aSa5pS2?=\r\nMessage-ID: <c1@example.com>\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n这个月气费多收了。\r\n"
            .as_bytes(),
    )
    .unwrap()
    .mail;
    let case_id = CaseId("TS-2026-000123".into());
    let mut case = Case::new(
        case_id.clone(),
        now,
        "own",
        complaint.from.clone().unwrap(),
        &complaint.subject,
        &complaint.language,
    );
    case.fields.insert(
        "category".into(),
        complaintd::case::FieldValue::Name("billing".into()),
    );
    case.assignment = Some(Assignment {
        department: "billing_dept".into(),
        cc: vec![],
        rule: "billing".into(),
    });

    // The forward goes out with a token address in Reply-To.
    let token = token::mint(
        &secret,
        &case_id,
        "billing_dept",
        NaiveDate::from_ymd_opt(2026, 12, 31).unwrap(),
    )
    .unwrap();
    let reply_address = token::reply_address("complaints@gas.example", &token);
    let context = TemplateContext {
        organisation: "燃气公司".into(),
        language: "zh".into(),
        now: "2026-11-24 10:30".into(),
        case: Some(CaseView::new(&case, &names, Shanghai, now)),
        mail: Some(MailView::new(&complaint, now, Shanghai)),
        department: Some(names.department("billing_dept")),
        reply_address: Some(reply_address.clone()),
        ..TemplateContext::default()
    };
    let rendered = templates.render("forward", "zh", &context).unwrap();
    assert!(rendered.text.contains("营业收费部："), "{}", rendered.text);
    assert!(
        rendered.text.contains("类别：收费争议"),
        "{}",
        rendered.text
    );
    let forward = build(
        &OutgoingMail {
            case: Some(case_id.clone()),
            purpose: "forward".into(),
            sequence: 1,
            from: Address::new("complaints@gas.example", Some("客户投诉中心")),
            to: vec![Address::new("billing@gas.example", Some("营业收费部"))],
            cc: vec![],
            reply_to: Some(Address::new(&reply_address, Some("客户投诉中心"))),
            subject: rendered.subject,
            text: rendered.text,
            html: rendered.html,
            in_reply_to: Some(complaint.message_id.clone()),
            references: vec![],
            attachments: vec![],
            date: now,
        },
        "complaintd.gas.example",
    )
    .unwrap();

    // The department answers the way a mail client does: to Reply-To, quoting.
    let received = parse(&forward.bytes).unwrap().mail;
    let reply_to = received.header("reply-to").unwrap().to_owned();
    let quoted: String = received
        .text
        .lines()
        .map(|line| format!("> {line}\r\n"))
        .collect();
    let answer = format!(
        "From: =?UTF-8?B?6JCl5Lia5pS26LS56YOo?= <billing@gas.example>\r\nTo: {reply_to}\r\n\
         Subject: Re: {}\r\nMessage-ID: <answer-1@gas.example>\r\nIn-Reply-To: <{}>\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n状态: 已解决\r\n处理结果: 已退还多收气费。\r\n\r\n\
         在 2026年11月24日 10:30，客户投诉中心 写道：\r\n{quoted}",
        forward.subject, forward.message_id
    );
    let answer = parse(answer.as_bytes()).unwrap().mail;
    assert_eq!(answer.text, "状态: 已解决\n处理结果: 已退还多收气费。");

    let mut lookup = MemoryLookup {
        departments: department_addresses(&policy),
        ..MemoryLookup::default()
    };
    lookup.cases.insert(case_id.clone());
    lookup.messages.insert(
        forward.message_id.clone(),
        KnownMessage::Sent {
            case: Some(case_id.clone()),
            purpose: "forward".into(),
        },
    );
    let own = vec!["complaints@gas.example".to_owned()];
    let context = ClassifyContext {
        own_addresses: &own,
        secret: &secret,
        now: Utc.with_ymd_and_hms(2026, 11, 25, 2, 0, 0).unwrap(),
    };
    assert_eq!(
        classify(&answer, &context, &lookup),
        MailKind::DepartmentReply {
            case: case_id,
            department: "billing_dept".into()
        }
    );
}

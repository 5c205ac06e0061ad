//! Tests of the mail templates: the default templates in `rules/templates/`
//! and the template loader's rules (subject line, autoescape, errors).

use std::path::Path;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Asia::Shanghai;
use complaintd::case::{Address, Assignment, Case, CaseId, CaseState, ClockState, FieldValue};
use complaintd::mail::template::{
    CaseView, DigestView, DisplayNames, EscalationView, MailView, Named, TemplateContext,
    TemplateError, Templates,
};
use complaintd::mail::{parse, IncomingMail};

/// Templates the default policy declares (`rules/00-organisation.rules`).
const DEFAULT_TEMPLATES: [&str; 6] = [
    "acknowledgement",
    "forward",
    "reminder",
    "overdue",
    "supervision",
    "weekly-digest",
];

fn languages() -> Vec<String> {
    vec!["zh".to_owned(), "en".to_owned()]
}

fn default_templates() -> Templates {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/templates");
    Templates::load_dir(&dir, &languages()).unwrap_or_else(|errors| {
        panic!(
            "default templates do not load:\n{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 2, 0, 0).unwrap()
}

fn names() -> DisplayNames {
    let mut names = DisplayNames::default();
    names.categories.insert("billing".into(), "收费争议".into());
    names.channels.insert("own".into(), "自有投诉渠道".into());
    names
        .departments
        .insert("billing_dept".into(), "营业收费部".into());
    names
        .departments
        .insert("office".into(), "服务管理办公室".into());
    names
        .deadlines
        .insert("investigate".into(), "调查反馈时限".into());
    names.fields.insert("loss".into(), "损失金额（元）".into());
    names
}

/// A case whose content is distinctive, so tests can see where it leaks.
fn sample_case(subject: &str, sender_name: &str) -> Case {
    let mut case = Case::new(
        CaseId("TS-2026-000123".into()),
        Utc.with_ymd_and_hms(2026, 11, 24, 2, 0, 0).unwrap(),
        "own",
        Address::new("wang@example.com", Some(sender_name)),
        subject,
        "zh",
    );
    case.state = CaseState::Assigned;
    case.fields
        .insert("severity".into(), FieldValue::Name("major".into()));
    case.fields
        .insert("category".into(), FieldValue::Name("billing".into()));
    case.fields.insert("loss".into(), FieldValue::Number(300.0));
    case.tags.insert("repeat".into());
    case.assignment = Some(Assignment {
        department: "billing_dept".into(),
        cc: vec!["office".into()],
        rule: "billing".into(),
    });
    case.clocks.insert(
        "investigate".into(),
        ClockState {
            deadline: "investigate".into(),
            calendar: Some("office".into()),
            started_at: Utc.with_ymd_and_hms(2026, 11, 24, 2, 30, 0).unwrap(),
            due: Utc.with_ymd_and_hms(2026, 11, 27, 2, 30, 0).unwrap(),
            paused_since: None,
            paused_seconds: 0,
            stopped_at: None,
            fired_steps: Default::default(),
            business: true,
        },
    );
    case
}

fn sample_mail(text_line: &str) -> IncomingMail {
    let raw = format!(
        "From: =?UTF-8?B?546L5aWz5aOr?= <wang@example.com>\r\nTo: complaints@gas.example\r\n\
         Subject: =?UTF-8?B?6LSm5Y2V5aSa5pS2?=\r\nMessage-ID: <m1@example.com>\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n{text_line}\r\n"
    );
    parse(raw.as_bytes()).unwrap().mail
}

fn full_context(subject: &str, sender_name: &str, text_line: &str) -> TemplateContext {
    let case = sample_case(subject, sender_name);
    let view = CaseView::new(&case, &names(), Shanghai, now());
    TemplateContext {
        organisation: "某市燃气有限公司".into(),
        language: "zh".into(),
        now: "2026-11-25 10:00".into(),
        mail: Some(MailView::new(
            &sample_mail(text_line),
            case.created_at,
            Shanghai,
        )),
        department: Some(Named {
            name: "billing_dept".into(),
            display: "营业收费部".into(),
        }),
        reply_address: Some("complaints+token@gas.example".into()),
        escalation: Some(EscalationView {
            deadline: names().deadline("investigate"),
            due: "2026-11-27 10:30".into(),
            step: 1,
        }),
        digest: Some(DigestView {
            schedule: "weekly_majors".into(),
            cases: vec![view.clone()],
        }),
        case: Some(view),
        notice: None,
    }
}

#[test]
fn every_default_template_exists_in_both_languages() {
    let templates = default_templates();
    for name in DEFAULT_TEMPLATES {
        assert_eq!(
            templates.missing_languages(name),
            Vec::<String>::new(),
            "template {name}"
        );
    }
}

#[test]
fn every_default_template_renders_with_the_documented_context() {
    let templates = default_templates();
    let context = full_context("账单多收", "王女士", "这个月账单多收了三百元。");
    for name in DEFAULT_TEMPLATES {
        for language in languages() {
            let rendered = templates
                .render(name, &language, &context)
                .unwrap_or_else(|e| panic!("{name}.{language}: {e}"));
            assert!(!rendered.subject.is_empty(), "{name}.{language} subject");
            assert!(
                !rendered.subject.contains('\n') && !rendered.subject.contains("{{"),
                "{name}.{language} subject {:?}",
                rendered.subject
            );
            assert!(
                !rendered.text.contains("{{") && !rendered.text.contains("{%"),
                "{name}.{language} text"
            );
            assert!(
                !rendered.text.contains("\n\n\n"),
                "{name}.{language} has runs of blank lines:\n{}",
                rendered.text
            );
        }
    }
}

#[test]
fn acknowledgement_shows_the_case_number_and_nothing_the_sender_wrote() {
    let templates = default_templates();
    let context = full_context("SECRET-SUBJECT", "SECRET-NAME", "SECRET-TEXT");
    for language in languages() {
        let rendered = templates
            .render("acknowledgement", &language, &context)
            .unwrap();
        let all = format!(
            "{}\n{}\n{}",
            rendered.subject,
            rendered.text,
            rendered.html.clone().unwrap_or_default()
        );
        assert!(all.contains("TS-2026-000123"), "{language}: {all}");
        assert!(
            !all.contains("SECRET"),
            "{language} acknowledgement leaks case content:\n{all}"
        );
    }
}

#[test]
fn the_acknowledgement_context_holds_no_case_content() {
    let templates = default_templates();
    let full = full_context("SECRET-SUBJECT", "SECRET-NAME", "SECRET-TEXT");
    let context = TemplateContext::acknowledgement(
        "某市燃气有限公司",
        "zh",
        "2026-11-24 10:05",
        full.case.as_ref().unwrap(),
    );
    let json = serde_json::to_string(&context).unwrap();
    assert!(!json.contains("SECRET"), "{json}");
    assert!(!json.contains("wang@example.com"), "{json}");
    assert!(json.contains("TS-2026-000123"));
    // Even a template edited to print content has nothing to print.
    let edited = Templates::from_files(
        files(&[(
            "acknowledgement.zh.txt",
            "Subject: {{ case.subject }}\n\n{{ case.sender.email }}{{ mail }}{{ case.fields }}\n",
        )]),
        &languages(),
    )
    .unwrap();
    let rendered = edited.render("acknowledgement", "zh", &context).unwrap();
    assert!(!format!("{rendered:?}").contains("SECRET"));
    for language in languages() {
        let rendered = templates
            .render("acknowledgement", &language, &context)
            .unwrap();
        assert!(rendered.text.contains("TS-2026-000123"));
    }
}

#[test]
fn forward_carries_case_fields_text_deadlines_and_reply_commands() {
    let templates = default_templates();
    let context = full_context("账单多收", "王女士", "这个月账单多收了三百元。");
    let zh = templates.render("forward", "zh", &context).unwrap();
    assert_eq!(zh.subject, "转派：账单多收");
    for expected in [
        "营业收费部：",
        "案件编号：TS-2026-000123",
        "登记时间：2026-11-24 10:00",
        "投诉渠道：自有投诉渠道",
        "投诉人：王女士 <wang@example.com>",
        "类别：收费争议",
        "损失金额（元）：300",
        "调查反馈时限：2026-11-27 10:30 前",
        "状态: 已受理 | 处理中 | 已解决 | 需补充",
        "责任: 我方 | 非我方",
        "处理结果:",
        "这个月账单多收了三百元。",
    ] {
        assert!(
            zh.text.contains(expected),
            "missing {expected:?} in:\n{}",
            zh.text
        );
    }
    let en = templates.render("forward", "en", &context).unwrap();
    for expected in [
        "Case: TS-2026-000123",
        "调查反馈时限: by 2026-11-27 10:30",
        "status: accepted | in-progress | resolved | need-info",
        "responsibility: ours | not-ours",
        "result:",
    ] {
        assert!(
            en.text.contains(expected),
            "missing {expected:?} in:\n{}",
            en.text
        );
    }
    assert!(zh.html.is_some() && en.html.is_some());
}

#[test]
fn html_templates_escape_every_value() {
    let templates = default_templates();
    let evil = "<script>alert('x')</script>";
    let context = full_context(evil, "<b onmouseover=x>王</b>", evil);
    let rendered = templates.render("forward", "zh", &context).unwrap();
    let html = rendered.html.expect("forward has an HTML part");
    assert!(!html.contains("<script>"), "unescaped script in:\n{html}");
    assert!(
        !html.contains("<b onmouseover"),
        "unescaped tag in:\n{html}"
    );
    assert!(html.contains("&lt;script&gt;"), "{html}");
    // Plain text is not HTML: there the value appears as written.
    assert!(rendered.text.contains(evil));
}

#[test]
fn missing_language_falls_back_to_the_default() {
    let templates = default_templates();
    let context = full_context("账单多收", "王女士", "x");
    let french = templates.render("acknowledgement", "fr", &context).unwrap();
    let chinese = templates.render("acknowledgement", "zh", &context).unwrap();
    assert_eq!(french, chinese);
    assert_eq!(
        templates.language_for("acknowledgement", "en").as_deref(),
        Some("en")
    );
    assert!(matches!(
        templates.render("no-such-template", "zh", &context),
        Err(TemplateError::NotFound { .. })
    ));
}

fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(name, source)| (name.to_string(), source.to_string()))
        .collect()
}

#[test]
fn subject_line_format() {
    let templates = Templates::from_files(
        files(&[
            ("a.zh.txt", "主题：你好 {{ name }}\n\n正文 {{ name }}\n"),
            ("b.en.txt", "Subject: {{ name }}\nno blank line\n"),
        ]),
        &languages(),
    )
    .unwrap();
    let rendered = templates
        .render("a", "zh", &serde_json::json!({"name": "王\r\nBcc: x"}))
        .unwrap();
    assert_eq!(rendered.subject, "你好 王 Bcc: x");
    // Line breaks in the body are normalised to LF; the MIME builder writes CRLF.
    assert_eq!(rendered.text, "正文 王\nBcc: x\n");
    let rendered = templates
        .render("b", "en", &serde_json::json!({"name": "N"}))
        .unwrap();
    assert_eq!(rendered.subject, "N");
    assert_eq!(rendered.text, "no blank line\n");
}

#[test]
fn template_errors_name_file_and_line() {
    let errors = Templates::from_files(
        files(&[
            ("nosubject.zh.txt", "Hello\n"),
            ("broken.zh.txt", "Subject: x\n\nline 3\n{% if %}\n"),
            ("orphan.zh.html", "<p>x</p>"),
            ("README", "not a template"),
        ]),
        &languages(),
    )
    .unwrap_err();
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(messages.len(), 4, "{messages:#?}");
    assert!(messages
        .iter()
        .any(|m| m.starts_with("nosubject.zh.txt:1: the first line must be")));
    assert!(
        messages.iter().any(|m| m.starts_with("broken.zh.txt:4: ")),
        "{messages:#?}"
    );
    assert!(messages.iter().any(|m| m
        .contains("orphan.zh.html: an HTML template needs the plain-text template orphan.zh.txt")));
    assert!(messages
        .iter()
        .any(|m| m.starts_with("README: template files are named")));
}

#[test]
fn misspelt_variables_fail_at_render_with_their_line() {
    let templates = Templates::from_files(
        files(&[(
            "typo.zh.txt",
            "Subject: ok\n\n{% if case %}fine{% endif %}\n{{ case.numbr }}\n",
        )]),
        &languages(),
    )
    .unwrap();
    let context = serde_json::json!({"case": {"number": "TS-1"}});
    let error = templates.render("typo", "zh", &context).unwrap_err();
    assert!(error.to_string().starts_with("typo.zh.txt:4: "), "{error}");
}

#[test]
fn status_label_filter_names_states_in_both_languages() {
    let templates = Templates::from_files(
        files(&[(
            "s.zh.txt",
            "Subject: s\n\n{{ s | status_label(\"zh\") }}/{{ s | status_label(\"en\") }}/{{ \"odd\" | status_label(\"zh\") }}\n",
        )]),
        &languages(),
    )
    .unwrap();
    let rendered = templates
        .render("s", "zh", &serde_json::json!({"s": "in_progress"}))
        .unwrap();
    assert_eq!(rendered.text, "处理中/in progress/odd\n");
}

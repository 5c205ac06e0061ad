//! Tests of the rule-language grammar: each construct, the default policy, and error messages.
//!
//! Construct tests parse a snippet and assert the AST, with the text each
//! important span covers. Error tests assert the exact rendered diagnostic.
//! Fixture files in `tests/fixtures/rules/parse/` pair `NAME.rules` with the
//! exact rendering `NAME.expected` (or the single line `ok`).

use chrono::{NaiveDate, TimeZone};
use complaintd::rules::ast::*;
use complaintd::rules::parse::parse_file;
use complaintd::rules::SourceMap;

// ------------------------------------------------------------------ helpers

fn parse(text: &str) -> File {
    let mut sources = SourceMap::new();
    let id = sources.add("t.rules", text);
    match parse_file(id, text) {
        Ok(file) => file,
        Err(d) => panic!("unexpected error:\n{}", d.render(&sources)),
    }
}

fn items(text: &str) -> Vec<Item> {
    parse(text).items
}

/// The rendered diagnostic for a snippet that must not parse.
fn error(text: &str) -> String {
    let mut sources = SourceMap::new();
    let id = sources.add("t.rules", text);
    match parse_file(id, text) {
        Ok(file) => panic!("expected an error, parsed {file:#?}"),
        Err(d) => d.render(&sources),
    }
}

/// The text a span covers.
fn cut(text: &str, span: Span) -> &str {
    &text[span.start..span.end]
}

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

fn at(text: &str) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(text).unwrap()
}

/// The single rule of `classify { rule … }`.
fn rule(rule_text: &str) -> Rule {
    let text = format!("classify {{\n{rule_text}\n}}");
    match items(&text).remove(0) {
        Item::Classify(mut block) => block.rules.remove(0),
        other => panic!("not a classify block: {other:?}"),
    }
}

/// The condition of `rule r: when COND then tag t`, and the full text.
fn condition(cond: &str) -> (Expr, String) {
    let text = format!("classify {{ rule r: when {cond} then tag t }}");
    let expr = match items(&text).remove(0) {
        Item::Classify(mut block) => block.rules.remove(0).condition,
        other => panic!("not a classify block: {other:?}"),
    };
    (expr, text)
}

fn path_names(operand: &Operand) -> Vec<String> {
    match operand {
        Operand::Path(p) => p.node.iter().map(|i| i.node.clone()).collect(),
        other => panic!("not a path: {other:?}"),
    }
}

/// A compact rendering of a condition's shape, for precedence tests.
fn shape(expr: &Expr) -> String {
    match expr {
        Expr::And(a, b, _) => format!("({} and {})", shape(a), shape(b)),
        Expr::Or(a, b, _) => format!("({} or {})", shape(a), shape(b)),
        Expr::Not(a, _) => format!("not {}", shape(a)),
        Expr::Always(_) => "always".into(),
        Expr::Flag { left, .. } => path_names(left).join("."),
        Expr::Compare { left, .. } => format!("{}?", path_names(left).join(".")),
        other => format!("{other:?}"),
    }
}

/// The duration after `otherwise ->` in a deadline.
fn duration(written: &str) -> Duration {
    let text = format!("deadline d {{ otherwise -> {written} }}");
    match items(&text).remove(0) {
        Item::Deadline(d) => d.otherwise.unwrap().node,
        other => panic!("not a deadline: {other:?}"),
    }
}

/// The value of `loss = VALUE` in an action.
fn value(written: &str) -> Value {
    let r = rule(&format!("rule r: when always then x = {written}"));
    match &r.actions[0].node {
        RuleAction::Set { value, .. } => value.node.clone(),
        other => panic!("not a set action: {other:?}"),
    }
}

// ------------------------------------------------------------------ the default policy

#[test]
fn every_default_policy_file_parses() {
    let mut paths: Vec<_> = std::fs::read_dir("rules")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rules"))
        .collect();
    paths.sort();
    assert_eq!(paths.len(), 5, "{paths:?}");
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        let mut sources = SourceMap::new();
        let id = sources.add(&path, text.clone());
        match parse_file(id, &text) {
            Ok(file) => assert!(!file.items.is_empty(), "{} is empty", path.display()),
            Err(d) => panic!("{}", d.render(&sources)),
        }
    }
}

#[test]
fn the_default_route_table_reads_as_written() {
    let text = std::fs::read_to_string("rules/20-route.rules").unwrap();
    let Item::Route(route) = items(&text).remove(0) else {
        panic!("no route block")
    };
    let summary: Vec<(Option<String>, String, Vec<String>)> = route
        .routes
        .iter()
        .map(|r| {
            (
                r.name.as_ref().map(|n| n.node.clone()),
                r.target.department.node.clone(),
                r.target.cc.iter().map(|c| c.node.clone()).collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                Some("safety".into()),
                "network".into(),
                vec!["office".into()]
            ),
            (
                Some("major".into()),
                "office".into(),
                vec!["service".into()]
            ),
            (Some("billing".into()), "billing_dept".into(), vec![]),
            (Some("supply".into()), "network".into(), vec![]),
        ]
    );
    assert_eq!(route.otherwise.unwrap().department.node, "service");
}

// ------------------------------------------------------------------ declarations

#[test]
fn include_keeps_the_path_and_its_span() {
    let text = "include \"shared/common.rules\"";
    let Item::Include(path) = items(text).remove(0) else {
        panic!()
    };
    assert_eq!(path.node, "shared/common.rules");
    assert_eq!(cut(text, path.span), "\"shared/common.rules\"");
}

#[test]
fn severity_levels_lowest_first() {
    let text = "severity general < important < hot < major";
    let Item::Severity(decl) = items(text).remove(0) else {
        panic!()
    };
    let levels: Vec<&str> = decl.levels.iter().map(|l| l.node.as_str()).collect();
    assert_eq!(levels, ["general", "important", "hot", "major"]);
    assert_eq!(cut(text, decl.levels[2].span), "hot");
    assert_eq!(cut(text, decl.span), text);
}

#[test]
fn category_with_and_without_display_name() {
    let text = "category billing \"收费争议\"\ncategory other\n";
    let items = items(text);
    let Item::Category(billing) = &items[0] else {
        panic!()
    };
    assert_eq!(billing.name.node, "billing");
    assert_eq!(billing.display.as_ref().unwrap().node, "收费争议");
    assert_eq!(cut(text, billing.span), "category billing \"收费争议\"");
    let Item::Category(other) = &items[1] else {
        panic!()
    };
    assert_eq!(other.display, None);
    // The span ends at the name, not at the line break after it.
    assert_eq!(cut(text, other.span), "category other");
}

#[test]
fn chinese_names_are_identifiers() {
    let text = "category 质检部 \"质量\"\ncategory _内部2";
    let items = items(text);
    let Item::Category(first) = &items[0] else {
        panic!()
    };
    assert_eq!(first.name.node, "质检部");
    assert_eq!((first.name.span.line, first.name.span.col), (1, 10));
    let Item::Category(second) = &items[1] else {
        panic!()
    };
    assert_eq!(second.name.node, "_内部2");
}

#[test]
fn fields_of_every_type() {
    let text =
        "field loss: number \"损失\"\nfield note: text\nfield vip flag\nfield promised: date";
    let types: Vec<(String, FieldType)> = items(text)
        .into_iter()
        .map(|i| match i {
            Item::Field(f) => (f.name.node, f.ty.node),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        types,
        vec![
            ("loss".into(), FieldType::Number),
            ("note".into(), FieldType::Text),
            ("vip".into(), FieldType::Flag),
            ("promised".into(), FieldType::Date),
        ]
    );
}

#[test]
fn channels_and_languages() {
    let text = "channel hotline \"热线\"\nlanguages zh, en zh-TW\ncategory x";
    let items = items(text);
    let Item::Channel(channel) = &items[0] else {
        panic!()
    };
    assert_eq!(channel.name.node, "hotline");
    assert_eq!(channel.display.as_ref().unwrap().node, "热线");
    let Item::Languages(langs) = &items[1] else {
        panic!()
    };
    let codes: Vec<&str> = langs.languages.iter().map(|l| l.node.as_str()).collect();
    // The next declaration's keyword is not taken for a language.
    assert_eq!(codes, ["zh", "en", "zh-TW"]);
    assert_eq!(items.len(), 3);
}

#[test]
fn templates_name_their_files_or_default_to_their_name() {
    let text = "template digest \"weekly-digest\"\ntemplate reminder";
    let items = items(text);
    let Item::Template(digest) = &items[0] else {
        panic!()
    };
    assert_eq!(digest.file_stem.node, "weekly-digest");
    let Item::Template(reminder) = &items[1] else {
        panic!()
    };
    assert_eq!(reminder.file_stem.node, "reminder");
    assert_eq!(cut(text, reminder.file_stem.span), "reminder");
}

#[test]
fn calendar_hours_holidays_and_workdays() {
    let text = r#"calendar office "Asia/Shanghai" {
    hours mon..fri 09:00-12:00 13:30-18:00
    hours sat, sun 10:00-24:00
    holiday 2026-10-01..2026-10-07 "国庆节"
    holiday 2026-01-01
    workday 2026-09-20 2026-10-10 "调休"
}"#;
    let Item::Calendar(cal) = items(text).remove(0) else {
        panic!()
    };
    assert_eq!(cal.name.node, "office");
    assert_eq!(cal.zone.node, "Asia/Shanghai");
    assert_eq!(cal.entries.len(), 5);
    let CalendarEntry::Hours {
        days,
        intervals,
        span,
    } = &cal.entries[0]
    else {
        panic!()
    };
    assert_eq!(days[0].node, WeekdaySet { first: 0, last: 4 });
    assert_eq!(cut(text, days[0].span), "mon..fri");
    assert_eq!(
        intervals.iter().map(|i| i.node).collect::<Vec<_>>(),
        [
            TimeRange {
                start_minute: 540,
                end_minute: 720
            },
            TimeRange {
                start_minute: 810,
                end_minute: 1080
            }
        ]
    );
    assert_eq!(cut(text, intervals[1].span), "13:30-18:00");
    assert_eq!(cut(text, *span), "hours mon..fri 09:00-12:00 13:30-18:00");
    let CalendarEntry::Hours {
        days, intervals, ..
    } = &cal.entries[1]
    else {
        panic!()
    };
    assert_eq!(
        days.iter().map(|d| d.node).collect::<Vec<_>>(),
        [
            WeekdaySet { first: 5, last: 5 },
            WeekdaySet { first: 6, last: 6 }
        ]
    );
    assert_eq!(intervals[0].node.end_minute, 24 * 60);
    let CalendarEntry::Holiday { dates, label, .. } = &cal.entries[2] else {
        panic!()
    };
    assert_eq!(
        dates[0].node,
        DateRange {
            first: date(2026, 10, 1),
            last: date(2026, 10, 7)
        }
    );
    assert_eq!(label.as_ref().unwrap().node, "国庆节");
    let CalendarEntry::Holiday { dates, label, .. } = &cal.entries[3] else {
        panic!()
    };
    assert_eq!(dates[0].node.first, dates[0].node.last);
    assert_eq!(label, &None);
    let CalendarEntry::Workday { dates, label, .. } = &cal.entries[4] else {
        panic!()
    };
    assert_eq!(
        dates.iter().map(|d| d.node.first).collect::<Vec<_>>(),
        [date(2026, 9, 20), date(2026, 10, 10)]
    );
    assert_eq!(label.as_ref().unwrap().node, "调休");
}

#[test]
fn departments_with_addresses_manager_contacts_and_calendar() {
    let text = r#"department network "管网运行部" <network@gas.example>, <duty@gas.example> {
    manager <lead@gas.example>
    contact supervisor <sup@gas.example>
    contact 值班 <night@gas.example>
    calendar office
}
department quality <qa@corp.example>"#;
    let items = items(text);
    let Item::Department(network) = &items[0] else {
        panic!()
    };
    assert_eq!(network.display.as_ref().unwrap().node, "管网运行部");
    assert_eq!(
        network
            .addresses
            .iter()
            .map(|a| a.node.as_str())
            .collect::<Vec<_>>(),
        ["network@gas.example", "duty@gas.example"]
    );
    assert_eq!(cut(text, network.addresses[1].span), "<duty@gas.example>");
    assert_eq!(network.manager.as_ref().unwrap().node, "lead@gas.example");
    let contacts: Vec<(&str, &str)> = network
        .contacts
        .iter()
        .map(|(n, a)| (n.node.as_str(), a.node.as_str()))
        .collect();
    assert_eq!(
        contacts,
        [
            ("supervisor", "sup@gas.example"),
            ("值班", "night@gas.example")
        ]
    );
    assert_eq!(network.calendar.as_ref().unwrap().node, "office");
    assert!(cut(text, network.span).ends_with("calendar office\n}"));
    let Item::Department(quality) = &items[1] else {
        panic!()
    };
    assert_eq!(quality.display, None);
    assert_eq!(quality.addresses[0].node, "qa@corp.example");
    assert_eq!(quality.manager, None);
    assert_eq!(
        cut(text, quality.span),
        "department quality <qa@corp.example>"
    );
}

// ------------------------------------------------------------------ classification

#[test]
fn classify_runs_on_received_unless_told_otherwise() {
    let text = "classify { }\nclassify on reopened { }\nclassify on customer_reply { }";
    let triggers: Vec<(Trigger, &str)> = items(text)
        .iter()
        .map(|i| match i {
            Item::Classify(b) => (b.trigger.node, cut(text, b.trigger.span)),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        triggers,
        [
            (Trigger::Received, "classify"),
            (Trigger::Reopened, "reopened"),
            (Trigger::CustomerReply, "customer_reply")
        ]
    );
}

#[test]
fn a_rule_with_description_actions_and_stop() {
    let text = "classify {\n    rule leak \"燃气泄漏\":\n        when text has any (\"漏气\", \"燃气味\")\n        then category = safety, severity >= major, tag safety_incident, stop   # done\n}";
    let Item::Classify(block) = items(text).remove(0) else {
        panic!()
    };
    let r = &block.rules[0];
    assert_eq!(r.name.node, "leak");
    assert_eq!(cut(text, r.name.span), "leak");
    assert_eq!(r.description.as_ref().unwrap().node, "燃气泄漏");
    assert!(r.stop);
    // The rule's span is the whole rule, without the comment after it.
    assert!(cut(text, r.span).starts_with("rule leak"));
    assert!(cut(text, r.span).ends_with("tag safety_incident, stop"));
    assert_eq!(r.actions.len(), 3);
    assert_eq!(cut(text, r.actions[0].span), "category = safety");
    match &r.actions[0].node {
        RuleAction::Set { field, value } => {
            assert_eq!(field.node, "category");
            assert_eq!(value.node, Value::Name("safety".into()));
            assert_eq!(cut(text, value.span), "safety");
        }
        other => panic!("{other:?}"),
    }
    match &r.actions[1].node {
        RuleAction::RaiseSeverity(level) => assert_eq!(level.node, "major"),
        other => panic!("{other:?}"),
    }
    match &r.actions[2].node {
        RuleAction::Tag(tag) => assert_eq!(cut(text, tag.span), "safety_incident"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn set_severity_and_a_rule_that_only_stops() {
    let lowered = rule("rule quiet: when always then severity = general");
    assert!(!lowered.stop);
    match &lowered.actions[0].node {
        RuleAction::SetSeverity(level) => assert_eq!(level.node, "general"),
        other => panic!("{other:?}"),
    }
    let only_stop = rule("rule spam \"垃圾\" when always then stop");
    assert!(only_stop.stop);
    assert!(only_stop.actions.is_empty());
    assert_eq!(only_stop.description.unwrap().node, "垃圾");
}

#[test]
fn values_of_every_kind() {
    assert_eq!(value("ours"), Value::Name("ours".into()));
    assert_eq!(
        value("\"a \\\"b\\\" \\\\ c\\n\""),
        Value::Text("a \"b\" \\ c\n".into())
    );
    assert_eq!(value("6000"), Value::Number(6000.0));
    assert_eq!(value("-12.5"), Value::Number(-12.5));
    assert_eq!(value("true"), Value::Bool(true));
    assert_eq!(value("false"), Value::Bool(false));
    assert_eq!(value("2026-10-10"), Value::Date(date(2026, 10, 10)));
    assert_eq!(value("$1"), Value::Capture(1));
    assert_eq!(value("$9"), Value::Capture(9));
}

// ------------------------------------------------------------------ conditions

#[test]
fn or_binds_looser_than_and_which_binds_looser_than_not() {
    let (expr, _) = condition("a or b and not c or d");
    assert_eq!(shape(&expr), "((a or (b and not c)) or d)");
    let (expr, _) = condition("not a and b");
    assert_eq!(shape(&expr), "(not a and b)");
    let (expr, _) = condition("not (a or b) and always");
    assert_eq!(shape(&expr), "(not (a or b) and always)");
}

#[test]
fn compound_condition_spans_cover_their_operands() {
    let (expr, text) = condition("(a or b) and not c");
    assert_eq!(cut(&text, expr.span()), "(a or b) and not c");
    let Expr::And(left, right, _) = &expr else {
        panic!()
    };
    assert_eq!(cut(&text, left.span()), "a or b");
    assert_eq!(cut(&text, right.span()), "not c");
}

#[test]
fn comparisons_with_every_operator() {
    let ops = [
        ("==", CompareOp::Eq),
        ("!=", CompareOp::Ne),
        ("<", CompareOp::Lt),
        ("<=", CompareOp::Le),
        (">", CompareOp::Gt),
        (">=", CompareOp::Ge),
        ("contains", CompareOp::Contains),
    ];
    for (written, expected) in ops {
        let (expr, text) = condition(&format!("attachments.count {written} 3"));
        let Expr::Compare {
            left,
            op,
            right,
            span,
        } = expr
        else {
            panic!("{written}")
        };
        assert_eq!(path_names(&left), ["attachments", "count"]);
        assert_eq!(op.node, expected);
        assert_eq!(cut(&text, op.span), written);
        assert_eq!(right.node, Value::Number(3.0));
        assert_eq!(cut(&text, span), format!("attachments.count {written} 3"));
    }
}

#[test]
fn has_any_has_all_and_has_one_value() {
    let (expr, text) = condition("text has any (\"发霉\", \"变质\")");
    let Expr::HasAny {
        left,
        all,
        values,
        span,
    } = expr
    else {
        panic!()
    };
    assert_eq!(path_names(&left), ["text"]);
    assert!(!all);
    assert_eq!(
        values.iter().map(|v| v.node.clone()).collect::<Vec<_>>(),
        [Value::Text("发霉".into()), Value::Text("变质".into())]
    );
    assert_eq!(cut(&text, values[1].span), "\"变质\"");
    assert_eq!(cut(&text, span), "text has any (\"发霉\", \"变质\")");

    let (expr, _) = condition("tags has all (crisis, repeat)");
    let Expr::HasAny { all, values, .. } = expr else {
        panic!()
    };
    assert!(all);
    assert_eq!(values[1].node, Value::Name("repeat".into()));

    let (expr, _) = condition("tags has crisis");
    let Expr::HasAny { all, values, .. } = expr else {
        panic!()
    };
    assert!(!all);
    assert_eq!(values.len(), 1);
    assert_eq!(values[0].node, Value::Name("crisis".into()));
}

#[test]
fn regex_matches_keep_the_pattern_as_written() {
    let (expr, text) = condition(r"text matches /曝光|a\/b#c/i");
    let Expr::Matches { left, regex, .. } = expr else {
        panic!()
    };
    assert_eq!(path_names(&left), ["text"]);
    assert_eq!(regex.node.pattern, r"曝光|a\/b#c");
    assert!(regex.node.case_insensitive);
    assert_eq!(cut(&text, regex.span), r"/曝光|a\/b#c/i");

    let (expr, _) = condition(r"subject ~ /损失[^0-9]{0,6}([0-9]+)\s*元/");
    let Expr::Matches { regex, .. } = expr else {
        panic!()
    };
    assert_eq!(regex.node.pattern, r"损失[^0-9]{0,6}([0-9]+)\s*元");
    assert!(!regex.node.case_insensitive);
}

#[test]
fn is_set_is_empty_and_their_negations() {
    let cases = [
        ("category is set", false),
        ("category is empty", true),
        ("category is not set", true),
        ("category is not empty", false),
    ];
    for (written, negated) in cases {
        let (expr, text) = condition(written);
        let Expr::IsSet {
            negated: got, span, ..
        } = expr
        else {
            panic!("{written}")
        };
        assert_eq!(got, negated, "{written}");
        assert_eq!(cut(&text, span), written);
    }
}

#[test]
fn bare_paths_are_flags_and_always_is_true() {
    let (expr, text) = condition("open and always");
    let Expr::And(left, right, _) = expr else {
        panic!()
    };
    let Expr::Flag { left, span } = *left else {
        panic!()
    };
    assert_eq!(path_names(&left), ["open"]);
    assert_eq!(cut(&text, span), "open");
    let Expr::Always(span) = *right else { panic!() };
    assert_eq!(cut(&text, span), "always");
}

#[test]
fn arrival_conditions_name_a_calendar() {
    let forms = [
        ("received in hours of office", ArrivalTest::InHours),
        (
            "received on a working day of office",
            ArrivalTest::OnWorkingDay,
        ),
        (
            "received on working day of office",
            ArrivalTest::OnWorkingDay,
        ),
    ];
    for (written, wanted) in forms {
        let (expr, text) = condition(written);
        let Expr::Arrival {
            test,
            calendar,
            span,
        } = expr
        else {
            panic!("{written}: {expr:?}")
        };
        assert_eq!(test, wanted, "{written}");
        assert_eq!(calendar.node, "office");
        assert_eq!(cut(&text, calendar.span), "office");
        assert_eq!(cut(&text, span), written);
    }
}

#[test]
fn arrival_conditions_combine_with_not_and_other_tests() {
    let (expr, _) =
        condition("not received on a working day of office or channel == forum and received in hours of office");
    let Expr::Or(left, right, _) = expr else {
        panic!()
    };
    let Expr::Not(inner, _) = *left else { panic!() };
    assert!(matches!(
        *inner,
        Expr::Arrival {
            test: ArrivalTest::OnWorkingDay,
            ..
        }
    ));
    let Expr::And(first, second, _) = *right else {
        panic!()
    };
    assert_eq!(shape(&first), "channel?");
    assert!(matches!(
        *second,
        Expr::Arrival {
            test: ArrivalTest::InHours,
            ..
        }
    ));
}

#[test]
fn received_alone_is_still_a_name() {
    let (expr, _) = condition("received");
    assert_eq!(shape(&expr), "received");
}

#[test]
fn an_arrival_condition_without_its_calendar_says_so() {
    assert_eq!(
        error("classify { rule r: when received in hours then tag t }"),
        "error: expected `of`, found `then`\n \
         --> t.rules:1:43\n  \
         |\n\
         1 | classify { rule r: when received in hours then tag t }\n  \
         |                                           ^^^^\n"
    );
}

#[test]
fn header_operands() {
    let (expr, text) = condition("header \"X-Priority\" == \"1\"");
    let Expr::Compare { left, right, .. } = expr else {
        panic!()
    };
    let Operand::Header(name) = left else {
        panic!()
    };
    assert_eq!(name.node, "X-Priority");
    assert_eq!(cut(&text, name.span), "header \"X-Priority\"");
    assert_eq!(right.node, Value::Text("1".into()));
}

#[test]
fn every_form_of_count() {
    let forms = [
        (
            "count(cases from same sender within 30 days) >= 3",
            Aggregate::CasesFromSender {
                window: Spanned::new(
                    Duration {
                        amount: 30,
                        unit: DurationUnit::Days,
                    },
                    Span::default(),
                ),
            },
        ),
        (
            "count(distinct senders with same category within 48 hours) >= 5",
            Aggregate::DistinctSenders {
                key: Spanned::new(GroupKey::SameCategory, Span::default()),
                window: Spanned::new(
                    Duration {
                        amount: 48,
                        unit: DurationUnit::Hours,
                    },
                    Span::default(),
                ),
            },
        ),
        (
            "count(distinct senders with same subject within 2 days) >= 5",
            Aggregate::DistinctSenders {
                key: Spanned::new(GroupKey::SameSubject, Span::default()),
                window: Spanned::new(
                    Duration {
                        amount: 2,
                        unit: DurationUnit::Days,
                    },
                    Span::default(),
                ),
            },
        ),
        ("count(reopenings) >= 2", Aggregate::Reopenings),
    ];
    for (written, expected) in forms {
        let (expr, text) = condition(written);
        let Expr::Compare { left, .. } = expr else {
            panic!("{written}")
        };
        let Operand::Count(aggregate) = left else {
            panic!("{written}")
        };
        assert_eq!(
            cut(&text, aggregate.span),
            &written[..written.find(')').unwrap() + 1]
        );
        assert_eq!(without_spans(aggregate.node), expected, "{written}");
    }

    let (expr, text) = condition("count(distinct senders with tag crisis within 1 week) > 9");
    let Expr::Compare {
        left: Operand::Count(aggregate),
        ..
    } = expr
    else {
        panic!()
    };
    let Aggregate::DistinctSenders { key, window } = aggregate.node else {
        panic!()
    };
    let GroupKey::Tag(tag) = &key.node else {
        panic!()
    };
    assert_eq!(tag.node, "crisis");
    assert_eq!(cut(&text, key.span), "tag crisis");
    assert_eq!(cut(&text, window.span), "1 week");
}

fn without_spans(aggregate: Aggregate) -> Aggregate {
    let blank = Span::default();
    match aggregate {
        Aggregate::CasesFromSender { window } => Aggregate::CasesFromSender {
            window: Spanned::new(window.node, blank),
        },
        Aggregate::DistinctSenders { key, window } => Aggregate::DistinctSenders {
            key: Spanned::new(key.node, blank),
            window: Spanned::new(window.node, blank),
        },
        Aggregate::Reopenings => Aggregate::Reopenings,
    }
}

// ------------------------------------------------------------------ durations

#[test]
fn every_duration_unit() {
    let cases = [
        ("30 minutes", 30, DurationUnit::Minutes),
        ("1 minute", 1, DurationUnit::Minutes),
        ("2 hours", 2, DurationUnit::Hours),
        ("1 hour", 1, DurationUnit::Hours),
        ("3 days", 3, DurationUnit::Days),
        ("1 day", 1, DurationUnit::Days),
        ("10 natural days", 10, DurationUnit::Days),
        ("2 weeks", 2, DurationUnit::Weeks),
        ("1 week", 1, DurationUnit::Weeks),
        ("15 working minutes", 15, DurationUnit::WorkingMinutes),
        ("4 working hours", 4, DurationUnit::WorkingHours),
        ("1 working hour", 1, DurationUnit::WorkingHours),
        ("3 working days", 3, DurationUnit::WorkingDays),
        ("5 business days", 5, DurationUnit::WorkingDays),
        ("2 business hours", 2, DurationUnit::WorkingHours),
    ];
    for (written, amount, unit) in cases {
        assert_eq!(duration(written), Duration { amount, unit }, "{written}");
    }
}

#[test]
fn until_end_of_day_is_a_deadline_length() {
    assert_eq!(
        duration("until end of day"),
        Duration {
            amount: 0,
            unit: DurationUnit::EndOfDay
        }
    );
    let text = "deadline d {\n    when not received on a working day of office -> until end of day\n    otherwise -> 30 working minutes\n}";
    let Item::Deadline(d) = items(text).remove(0) else {
        panic!()
    };
    assert_eq!(cut(text, d.durations[0].duration.span), "until end of day");
    assert_eq!(d.durations[0].duration.node.unit, DurationUnit::EndOfDay);
}

#[test]
fn otherwise_none_is_a_deadline_without_a_clock_for_the_other_cases() {
    let text = "deadline d {\n    when severity == major -> 12 hours\n    otherwise -> none\n}";
    let Item::Deadline(d) = items(text).remove(0) else {
        panic!()
    };
    assert_eq!(d.otherwise, None);
    assert_eq!(
        cut(text, d.otherwise_none.expect("otherwise -> none")),
        "none"
    );
    assert_eq!(d.durations.len(), 1);
    assert!(d.misplaced_none.is_empty());
}

#[test]
fn none_on_a_when_line_is_kept_for_the_checker() {
    let text = "deadline d {\n    when severity == major -> none\n    otherwise -> 1 day\n}";
    let Item::Deadline(d) = items(text).remove(0) else {
        panic!()
    };
    assert!(d.durations.is_empty());
    assert_eq!(d.misplaced_none.len(), 1);
    assert_eq!(cut(text, d.misplaced_none[0]), "none");
}

#[test]
fn until_end_of_day_is_not_a_window() {
    assert_eq!(
        error("classify { rule r: when count(cases from same sender within until end of day) > 1 then tag t }"),
        "error: expected a number, found `until`\n \
         --> t.rules:1:61\n  \
         |\n\
         1 | classify { rule r: when count(cases from same sender within until end of day) > 1 then tag t }\n  \
         |                                                             ^^^^^\n"
    );
}

// ------------------------------------------------------------------ routing

#[test]
fn routes_named_and_unnamed_with_cc_lists() {
    let text = r#"route {
    safety:   when category == safety -> network, cc office
    when severity == major -> office cc service, network
    otherwise -> service cc office
}"#;
    let Item::Route(block) = items(text).remove(0) else {
        panic!()
    };
    let first = &block.routes[0];
    assert_eq!(first.name.as_ref().unwrap().node, "safety");
    assert_eq!(cut(text, first.name.as_ref().unwrap().span), "safety");
    assert_eq!(
        cut(text, first.span),
        "safety:   when category == safety -> network, cc office"
    );
    assert_eq!(cut(text, first.target.span), "network, cc office");
    let second = &block.routes[1];
    assert_eq!(second.name, None);
    assert_eq!(second.target.department.node, "office");
    assert_eq!(
        second
            .target
            .cc
            .iter()
            .map(|c| c.node.as_str())
            .collect::<Vec<_>>(),
        ["service", "network"]
    );
    assert_eq!(
        cut(text, second.span),
        "when severity == major -> office cc service, network"
    );
    let otherwise = block.otherwise.unwrap();
    assert_eq!(otherwise.department.node, "service");
    assert_eq!(otherwise.cc[0].node, "office");
}

// ------------------------------------------------------------------ deadlines and escalation

#[test]
fn a_deadline_with_every_setting() {
    let text = r#"deadline resolve "处理时限" {
    calendar office
    starts on forwarded, reopened
    stops on resolved
    stops on withdrawn
    pause while status == waiting_on_customer
    hard stop
    when channel == hotline and severity == major -> 1 day
    otherwise -> 3 working days
}"#;
    let Item::Deadline(d) = items(text).remove(0) else {
        panic!()
    };
    assert_eq!(d.name.node, "resolve");
    assert_eq!(d.display.unwrap().node, "处理时限");
    assert_eq!(d.calendar.unwrap().node, "office");
    assert_eq!(
        d.starts_on.iter().map(|e| e.node).collect::<Vec<_>>(),
        [ClockEvent::Forwarded, ClockEvent::Reopened]
    );
    assert_eq!(cut(text, d.starts_on[1].span), "reopened");
    assert_eq!(
        d.stops_on.iter().map(|e| e.node).collect::<Vec<_>>(),
        [ClockEvent::Resolved, ClockEvent::Withdrawn]
    );
    assert_eq!(
        cut(text, d.pause_while.unwrap().span()),
        "status == waiting_on_customer"
    );
    assert_eq!(cut(text, d.hard_stop.unwrap()), "hard stop");
    assert_eq!(d.durations.len(), 1);
    assert_eq!(
        cut(text, d.durations[0].span),
        "when channel == hotline and severity == major -> 1 day"
    );
    assert_eq!(cut(text, d.durations[0].duration.span), "1 day");
    let otherwise = d.otherwise.unwrap();
    assert_eq!(
        otherwise.node,
        Duration {
            amount: 3,
            unit: DurationUnit::WorkingDays
        }
    );
    assert_eq!(cut(text, otherwise.span), "3 working days");
}

#[test]
fn every_clock_event_name() {
    let names = [
        ("received", ClockEvent::Received),
        ("acknowledged", ClockEvent::Acknowledged),
        ("forwarded", ClockEvent::Forwarded),
        ("accepted", ClockEvent::Accepted),
        ("contacted", ClockEvent::Contacted),
        ("resolved", ClockEvent::Resolved),
        ("answered", ClockEvent::Answered),
        ("closed", ClockEvent::Closed),
        ("reopened", ClockEvent::Reopened),
        ("responsibility_decided", ClockEvent::ResponsibilityDecided),
        ("withdrawn", ClockEvent::Withdrawn),
        ("rejected", ClockEvent::Rejected),
        ("abnormally_closed", ClockEvent::AbnormallyClosed),
        ("merged", ClockEvent::Merged),
        ("follow_up", ClockEvent::FollowUp),
    ];
    let list: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
    let text = format!("deadline d {{ starts on {} }}", list.join(", "));
    let Item::Deadline(d) = items(&text).remove(0) else {
        panic!()
    };
    assert_eq!(
        d.starts_on.iter().map(|e| e.node).collect::<Vec<_>>(),
        names.iter().map(|(_, e)| *e).collect::<Vec<_>>()
    );
}

#[test]
fn escalation_offsets_recipients_severity_and_condition() {
    let text = r#"escalate resolve {
    at 50% notify assignee using reminder
    at due notify assignee, assignee.manager using supervision
    at 15 minutes notify customer, <gm@corp.example> using ack
    at 2 working hours before due notify office using reminder
    at 1 working day after due notify office.manager using overdue, severity >= major when not open
}"#;
    let Item::Escalate(block) = items(text).remove(0) else {
        panic!()
    };
    assert_eq!(block.deadline.node, "resolve");
    let offsets: Vec<StepOffset> = block.steps.iter().map(|s| s.at.node).collect();
    assert_eq!(
        offsets,
        [
            StepOffset::Percent(50),
            StepOffset::Percent(100),
            StepOffset::AfterStart(Duration {
                amount: 15,
                unit: DurationUnit::Minutes
            }),
            StepOffset::BeforeDue(Duration {
                amount: 2,
                unit: DurationUnit::WorkingHours
            }),
            StepOffset::AfterDue(Duration {
                amount: 1,
                unit: DurationUnit::WorkingDays
            }),
        ]
    );
    assert_eq!(
        cut(text, block.steps[3].at.span),
        "2 working hours before due"
    );
    let recipients: Vec<Recipient> = block
        .steps
        .iter()
        .flat_map(|s| s.recipients.iter().map(|r| r.node.clone()))
        .collect();
    assert_eq!(recipients.len(), 7);
    assert_eq!(recipients[0], Recipient::Assignee);
    assert!(matches!(&recipients[2], Recipient::AssigneeRole(role) if role.node == "manager"));
    assert_eq!(recipients[3], Recipient::Customer);
    assert_eq!(recipients[4], Recipient::Address("gm@corp.example".into()));
    assert!(matches!(&recipients[5], Recipient::Department(d, None) if d.node == "office"));
    assert!(matches!(
        &recipients[6],
        Recipient::Department(d, Some(role)) if d.node == "office" && role.node == "manager"
    ));
    let last = &block.steps[4];
    assert_eq!(cut(text, last.recipients[0].span), "office.manager");
    assert_eq!(last.template.node, "overdue");
    assert_eq!(last.raise_severity.as_ref().unwrap().node, "major");
    assert_eq!(
        cut(text, last.condition.as_ref().unwrap().span()),
        "not open"
    );
    assert!(cut(text, last.span).starts_with("at 1 working day"));
    assert!(cut(text, last.span).ends_with("when not open"));
    assert_eq!(block.steps[0].raise_severity, None);
    assert_eq!(block.steps[0].condition, None);
}

#[test]
fn schedules_with_calendar_filter_recipients_and_template() {
    let text = r#"schedule weekly_majors "0 9 * * MON" calendar office {
    digest cases where severity == major and open
    to office, <gm@corp.example>
    using weekly_digest
}
schedule all_cases "0 8 1 * *" {
    using monthly
    to office.manager
}"#;
    let items = items(text);
    let Item::Schedule(weekly) = &items[0] else {
        panic!()
    };
    assert_eq!(weekly.cron.node, "0 9 * * MON");
    assert_eq!(weekly.calendar.as_ref().unwrap().node, "office");
    assert_eq!(
        cut(text, weekly.filter.as_ref().unwrap().span()),
        "severity == major and open"
    );
    assert_eq!(weekly.recipients.len(), 2);
    assert_eq!(weekly.template.node, "weekly_digest");
    let Item::Schedule(monthly) = &items[1] else {
        panic!()
    };
    assert_eq!(monthly.calendar, None);
    assert_eq!(monthly.filter, None);
    assert!(matches!(
        &monthly.recipients[0].node,
        Recipient::Department(d, Some(r)) if d.node == "office" && r.node == "manager"
    ));
}

// ------------------------------------------------------------------ tests in rule files

#[test]
fn a_test_with_inline_mail_history_and_every_expectation() {
    let text = r#"test "the third complaint is major" {
    at 2026-11-20T09:00:00+08:00
    channel hotline
    given case from "zhao@example.com" at 2026-11-02T09:00:00+08:00 category billing
    given case from <zhao@example.com> at 2026-11-12T09:00:00Z subject "账单" tag repeat tag vip reopened 2
    mail {
        from: "赵先生 <zhao@example.com>"
        list-id: "<complaints.example.com>"
        subject: "又是账单问题"
        body: """
            第一行
              缩进的第二行

            第四行
            """
    }
    expect severity == major
    expect loss == 120
    expect tag repeat
    expect no tag crisis
    expect route office cc service, network
    expect deadline forward due 2026-11-20T10:00:00+08:00
    expect rule repeat fired
    expect rule exposure not fired
}"#;
    let Item::Test(test) = items(text).remove(0) else {
        panic!()
    };
    assert_eq!(test.name.node, "the third complaint is major");
    assert_eq!(test.at.unwrap().node, at("2026-11-20T09:00:00+08:00"));
    assert_eq!(test.channel.unwrap().node, "hotline");
    assert_eq!(test.history.len(), 2);
    let first = &test.history[0];
    assert_eq!(first.sender.node, "zhao@example.com");
    assert_eq!(first.category.as_ref().unwrap().node, "billing");
    assert_eq!(first.reopened, 0);
    assert!(cut(text, first.span).ends_with("category billing"));
    let second = &test.history[1];
    assert_eq!(second.sender.node, "zhao@example.com");
    assert_eq!(second.at.node, at("2026-11-12T09:00:00Z"));
    assert_eq!(second.subject.as_ref().unwrap().node, "账单");
    assert_eq!(
        second
            .tags
            .iter()
            .map(|t| t.node.as_str())
            .collect::<Vec<_>>(),
        ["repeat", "vip"]
    );
    assert_eq!(second.reopened, 2);

    let TestMail::Inline { headers, body, .. } = &test.mail else {
        panic!()
    };
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.node.as_str(), v.node.as_str()))
        .collect();
    assert_eq!(
        headers,
        [
            ("from", "赵先生 <zhao@example.com>"),
            ("list-id", "<complaints.example.com>"),
            ("subject", "又是账单问题")
        ]
    );
    assert_eq!(body.node, "第一行\n  缩进的第二行\n\n第四行");

    let e: Vec<&Expectation> = test.expectations.iter().map(|e| &e.node).collect();
    assert_eq!(e.len(), 8);
    assert!(
        matches!(e[0], Expectation::Field { field, value } if field.node == "severity" && value.node == Value::Name("major".into()))
    );
    assert!(
        matches!(e[1], Expectation::Field { field, value } if field.node == "loss" && value.node == Value::Number(120.0))
    );
    assert!(matches!(e[2], Expectation::Tag(t) if t.node == "repeat"));
    assert!(matches!(e[3], Expectation::NoTag(t) if t.node == "crisis"));
    assert!(matches!(e[4], Expectation::Route { department, cc }
        if department.node == "office" && cc.iter().map(|c| c.node.as_str()).collect::<Vec<_>>() == ["service", "network"]));
    assert!(matches!(e[5], Expectation::Due { deadline, at: due }
        if deadline.node == "forward" && due.node == at("2026-11-20T10:00:00+08:00")));
    assert!(matches!(e[6], Expectation::Fired { rule, fired: true } if rule.node == "repeat"));
    assert!(matches!(e[7], Expectation::Fired { rule, fired: false } if rule.node == "exposure"));
    assert_eq!(
        cut(text, test.expectations[7].span),
        "expect rule exposure not fired"
    );
}

#[test]
fn a_test_reading_its_mail_from_a_file() {
    let text = "test \"leak\" { mail file \"fixtures/leak.eml\" expect tag safety_incident }";
    let Item::Test(test) = items(text).remove(0) else {
        panic!()
    };
    assert_eq!(test.at, None);
    assert_eq!(test.channel, None);
    let TestMail::File(path) = &test.mail else {
        panic!()
    };
    assert_eq!(path.node, "fixtures/leak.eml");
    assert_eq!(cut(text, path.span), "\"fixtures/leak.eml\"");
}

#[test]
fn date_times_with_fractions_utc_and_negative_offsets() {
    let text = "test \"t\" { at 2026-09-30T17:50:30.25-05:30 mail file \"a.eml\" }";
    let Item::Test(test) = items(text).remove(0) else {
        panic!()
    };
    let when = test.at.unwrap();
    let offset = chrono::FixedOffset::west_opt(5 * 3600 + 30 * 60).unwrap();
    let expected = offset.with_ymd_and_hms(2026, 9, 30, 17, 50, 30).unwrap()
        + chrono::Duration::milliseconds(250);
    assert_eq!(when.node, expected);
    assert_eq!(cut(text, when.span), "2026-09-30T17:50:30.25-05:30");
}

// ------------------------------------------------------------------ lexical details

#[test]
fn comments_run_to_the_end_of_the_line_but_not_inside_strings() {
    let text = "# a comment\ncategory a \"# not a comment\" # a comment\n# last";
    let Item::Category(c) = items(text).remove(0) else {
        panic!()
    };
    assert_eq!(c.display.unwrap().node, "# not a comment");
}

#[test]
fn triple_quoted_text_loses_its_common_indentation() {
    let text = "category a \"\"\"\n    one\n      two\n    \n    three\n    \"\"\"";
    let Item::Category(c) = items(text).remove(0) else {
        panic!()
    };
    assert_eq!(c.display.unwrap().node, "one\n  two\n\nthree");
    let text = "category a \"\"\"single line\"\"\"";
    let Item::Category(c) = items(text).remove(0) else {
        panic!()
    };
    assert_eq!(c.display.unwrap().node, "single line");
}

#[test]
fn whitespace_and_line_breaks_are_insignificant() {
    let spread = "route{when\ncategory\n==\nsafety\n->\nnetwork\notherwise->service}";
    let compact = "route { when category == safety -> network otherwise -> service }";
    let summary = |text: &str| {
        let Item::Route(r) = items(text).remove(0) else {
            panic!()
        };
        (
            r.routes[0].target.department.node.clone(),
            r.otherwise.unwrap().department.node,
        )
    };
    assert_eq!(summary(spread), summary(compact));
}

#[test]
fn spans_count_columns_in_characters() {
    let text = "category 账单 \"收费\"\n  category 质检 \"质量\"";
    let items = items(text);
    let Item::Category(second) = &items[1] else {
        panic!()
    };
    let display = second.display.as_ref().unwrap();
    assert_eq!((display.span.line, display.span.col), (2, 15));
    assert_eq!(cut(text, display.span), "\"质量\"");
}

// ------------------------------------------------------------------ error messages

#[test]
fn a_missing_then_names_what_may_follow_the_condition() {
    assert_eq!(
        error("classify {\n    rule r: when subject contains \"账单\"\n        category = billing\n}\n"),
        "error: expected one of `and`, `or` or `then`, found `category`\n \
         --> t.rules:3:9\n  \
         |\n\
         3 |         category = billing\n  \
         |         ^^^^^^^^\n"
    );
}

#[test]
fn an_unterminated_string_is_underlined_to_the_end_of_its_line() {
    assert_eq!(
        error("category billing \"收费争议\ncategory other\n"),
        "error: this text has no closing `\"`\n \
         --> t.rules:1:18\n  \
         |\n\
         1 | category billing \"收费争议\n  \
         |                  ^^^^^^^^^\n  \
         = help: a text in quotes ends on the line it starts; use `\"\"\"` for text over several lines\n"
    );
}

#[test]
fn an_impossible_date_is_reported_at_the_date() {
    assert_eq!(
        error("calendar c \"Asia/Shanghai\" { holiday 2026-02-30 }"),
        "error: `2026-02-30` is not a date: February 2026 has 28 days\n \
         --> t.rules:1:38\n  \
         |\n\
         1 | calendar c \"Asia/Shanghai\" { holiday 2026-02-30 }\n  \
         |                                      ^^^^^^^^^^\n"
    );
    assert!(error("calendar c \"UTC\" { holiday 2026-13-01 }").contains("there is no month 13"));
    assert!(
        error("calendar c \"UTC\" { holiday 2028-02-30 }").contains("February 2028 has 29 days")
    );
}

#[test]
fn a_stray_token_at_the_top_level_asks_for_a_declaration() {
    assert_eq!(
        error("category billing \"收费争议\"\n;\n"),
        "error: expected a declaration, found `;`\n \
         --> t.rules:2:1\n  \
         |\n\
         2 | ;\n  \
         | ^\n  \
         = help: a declaration starts with `include`, `severity`, `category`, `field`, `channel`, \
         `languages`, `calendar`, `department`, `template`, `classify`, `route`, `deadline`, \
         `escalate`, `schedule` or `test`\n"
    );
}

#[test]
fn carets_line_up_under_chinese_text() {
    assert_eq!(
        error("department 质检部 \"质量检验\" <qa@corp.example> { 经理 <m@corp.example> }"),
        "error: expected one of `calendar`, `contact`, `manager` or `}`, found `经理`\n \
         --> t.rules:1:43\n  \
         |\n\
         1 | department 质检部 \"质量检验\" <qa@corp.example> { 经理 <m@corp.example> }\n  \
         |                                                  ^^^^\n"
    );
}

#[test]
fn misspelt_keywords_get_a_suggestion() {
    let rendered = error("categroy billing");
    assert!(rendered.starts_with("error: expected a declaration, found `categroy`\n"));
    assert!(
        rendered.ends_with("= help: did you mean `category`?\n"),
        "{rendered}"
    );
}

#[test]
fn semantic_value_errors() {
    let cases = [
        (
            "calendar c \"UTC\" { hours mon 09:00-25:00 }",
            "`25:00` is not a time of day",
        ),
        (
            "calendar c \"UTC\" { hours mon 24:00-24:30 }",
            "`24:00` is not a time of day",
        ),
        (
            "calendar c \"UTC\" { hours mon 09:60-10:00 }",
            "`09:60` is not a time of day",
        ),
        (
            "calendar c \"UTC\" { hours fri..mon 09:00-10:00 }",
            "this range of weekdays runs backwards",
        ),
        (
            "calendar c \"UTC\" { holiday 2026-10-07..2026-10-01 }",
            "this date range ends before it starts",
        ),
        (
            "deadline d { otherwise -> 4294967296 minutes }",
            "the number 4294967296 is too large",
        ),
        (
            "deadline d { otherwise -> -3 days }",
            "a duration cannot be negative",
        ),
        (
            "escalate d { at 99999999999% notify office using t }",
            "the number 99999999999 is too large",
        ),
        (
            "classify { rule r: when loss > 12345678901234567 then tag t }",
            "the number 12345678901234567 is too large",
        ),
        (
            "classify { rule r: when always then x = $0 }",
            "there is no capture group `$0`",
        ),
        (
            "classify { rule r: when always then x = $10 }",
            "there is no capture group `$10`",
        ),
        ("classify on arrival { }", "unknown moment `arrival`"),
        ("field x: integer", "unknown field type `integer`"),
        (
            "deadline d { starts on recieved }",
            "unknown event `recieved`",
        ),
        (
            "escalate d { at 1 day notify customer.manager using t }",
            "the customer has no `manager`",
        ),
        (
            "classify { rule r: when count(reopenings) then tag t }",
            "`count(…)` is a number, not a yes/no flag",
        ),
        (
            "classify { rule r: when header \"X\" then tag t }",
            "a header is text, not a yes/no flag",
        ),
        (
            "test \"t\" { at 2026-09-30T25:00:00+08:00 mail file \"a\" }",
            "is not a valid time",
        ),
        (
            "test \"t\" { at 2026-09-30T10:00:00+24:00 mail file \"a\" }",
            "impossible time zone offset",
        ),
        (
            "test \"t\" { mail file \"a\" mail file \"b\" }",
            "`mail` is given twice",
        ),
        (
            "schedule s \"0 9 * * *\" { using t }",
            "schedule `s` says nobody to send to",
        ),
        (
            "deadline d { hard stop hard stop }",
            "`hard stop` is given twice",
        ),
        (
            "department d { manager <a@x> manager <b@x> }",
            "`manager` is given twice",
        ),
    ];
    for (text, message) in cases {
        let rendered = error(text);
        let first_line = rendered.lines().next().unwrap();
        assert!(first_line.starts_with("error: "), "{text}\n{rendered}");
        assert!(first_line.contains(message), "{text}\n{rendered}");
    }
}

#[test]
fn conditions_nested_or_chained_beyond_the_limits_are_refused() {
    let deep = format!(
        "classify {{ rule r: when {}a{} then tag t }}",
        "(".repeat(17),
        ")".repeat(17)
    );
    assert!(error(&deep).starts_with("error: this condition is nested too deeply\n"));
    let fine = format!(
        "classify {{ rule r: when {}a{} then tag t }}",
        "(".repeat(16),
        ")".repeat(16)
    );
    parse(&fine);
    let long = format!(
        "classify {{ rule r: when {} then tag t }}",
        vec!["a"; 65].join(" and ")
    );
    assert!(error(&long).starts_with("error: this condition joins more than 64 parts with `and`\n"));
    // Absurd nesting is stopped by pest's own stack guard, with a message, not a crash.
    let absurd = format!(
        "classify {{ rule r: when {}a{} then tag t }}",
        "(".repeat(100_000),
        ")".repeat(100_000)
    );
    assert!(error(&absurd).starts_with("error: this file is nested too deeply to read\n"));
}

/// Each `NAME.rules` in the fixture directory parses to exactly `NAME.expected`.
#[test]
fn fixtures_render_exactly_as_expected() {
    let dir = std::path::Path::new("tests/fixtures/rules/parse");
    let mut checked = 0;
    let mut failures = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rules"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        let expected = std::fs::read_to_string(path.with_extension("expected"))
            .unwrap_or_else(|_| panic!("{} has no .expected file", path.display()));
        let mut sources = SourceMap::new();
        let id = sources.add(path.file_name().unwrap(), text.clone());
        let actual = match parse_file(id, &text) {
            Ok(_) => "ok\n".to_owned(),
            Err(d) => d.render(&sources),
        };
        if actual != expected {
            failures.push(format!(
                "{}:\n--- expected\n{expected}--- actual\n{actual}",
                path.display()
            ));
        }
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} fixtures");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ------------------------------------------------------------------ robustness

mod robustness {
    use complaintd::rules::parse::parse_file;
    use complaintd::rules::source::line_col;
    use complaintd::rules::SourceMap;
    use proptest::prelude::*;

    /// Whatever the text, parsing returns; an error points inside the text
    /// at a character boundary, with the right line and column, and renders.
    fn parses_or_reports_cleanly(text: &str) {
        let mut sources = SourceMap::new();
        let id = sources.add("t.rules", text);
        if let Err(d) = parse_file(id, text) {
            let span = d.span;
            assert!(span.start <= span.end && span.end <= text.len(), "{span:?}");
            assert!(text.is_char_boundary(span.start) && text.is_char_boundary(span.end));
            assert_eq!((span.line, span.col), line_col(text, span.start));
            let rendered = d.render(&sources);
            assert!(rendered.starts_with("error: "), "{rendered}");
            assert!(
                !rendered.contains("cond_") && !rendered.contains("kw_"),
                "{rendered}"
            );
        }
    }

    const VOCABULARY: &[&str] = &[
        "classify",
        "rule",
        "r",
        ":",
        "when",
        "then",
        "and",
        "or",
        "not",
        "(",
        ")",
        "{",
        "}",
        ",",
        "==",
        ">=",
        "=",
        "->",
        "route",
        "otherwise",
        "cc",
        "deadline",
        "escalate",
        "at",
        "50%",
        "due",
        "notify",
        "using",
        "3",
        "working",
        "days",
        "hours",
        "\"文本\"",
        "\"",
        "/re/i",
        "/",
        "<a@b.c>",
        "<",
        "has",
        "any",
        "all",
        "matches",
        "is",
        "set",
        "empty",
        "count",
        "cases",
        "from",
        "same",
        "sender",
        "within",
        "test",
        "mail",
        "expect",
        "2026-10-01",
        "2026-02-30",
        "09:00-12:00",
        "2026-09-30T17:50:00+08:00",
        "$1",
        "$0",
        "质检部",
        "tag",
        "stop",
        "severity",
        "category",
        "calendar",
        "hours",
        "mon..fri",
        "holiday",
        "department",
        "manager",
        "schedule",
        "\"\"\"",
        "#",
        "\n",
        "，",
        "：",
    ];

    proptest! {
        #[test]
        fn arbitrary_text(text in "\\PC{0,120}") {
            parses_or_reports_cleanly(&text);
        }

        #[test]
        fn sequences_of_tokens(tokens in prop::collection::vec(prop::sample::select(VOCABULARY), 0..40)) {
            parses_or_reports_cleanly(&tokens.join(" "));
        }

        #[test]
        fn damaged_default_policy(
            file in prop::sample::select(&[
                "rules/00-organisation.rules",
                "rules/10-classify.rules",
                "rules/20-route.rules",
                "rules/30-deadlines.rules",
                "rules/90-tests.rules",
            ][..]),
            at in any::<prop::sample::Index>(),
            removed in 0..12usize,
            inserted in "[\\PC\n]{0,4}",
        ) {
            let original = std::fs::read_to_string(file).unwrap();
            let chars: Vec<char> = original.chars().collect();
            let start = at.index(chars.len());
            let end = (start + removed).min(chars.len());
            let damaged: String = chars[..start]
                .iter()
                .chain(inserted.chars().collect::<Vec<_>>().iter())
                .chain(chars[end..].iter())
                .collect();
            parses_or_reports_cleanly(&damaged);
        }
    }
}

/// The reference for administrators shows complete files in ```rules blocks;
/// each must parse, so that the documentation cannot drift from the grammar.
#[test]
fn every_example_in_the_language_reference_parses() {
    let doc = std::fs::read_to_string("docs/rules.md").unwrap();
    let mut examples = 0;
    let mut rest = doc.as_str();
    while let Some(start) = rest.find("```rules\n") {
        let body = &rest[start + "```rules\n".len()..];
        let end = body.find("```").expect("an unclosed example");
        let example = &body[..end];
        let mut sources = SourceMap::new();
        let id = sources.add("docs/rules.md example", example);
        if let Err(d) = parse_file(id, example) {
            panic!("{}\nin:\n{example}", d.render(&sources));
        }
        examples += 1;
        rest = &body[end..];
    }
    assert!(examples >= 10, "only {examples} examples found");
}

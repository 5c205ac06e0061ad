//! Checker diagnostics, asserted as exact rendered text.

use complaintd::rules::check::{check, Checked, Environment};
use complaintd::rules::diag::render_all;
use complaintd::rules::parse::parse_file;
use complaintd::rules::{Limits, SourceMap};

/// A small valid policy that the snippets below extend.
const BASE: &str = r#"
severity general < important < major
category billing "收费"
category safety "安全"
channel own "自有渠道"
calendar office "Asia/Shanghai" {
    hours mon..fri 09:00-12:00 13:00-18:00
}
department service "客服" <service@corp.example> {
    manager <lead@corp.example>
    contact supervisor <sup@corp.example>
}
department quality "质检部" <qa@corp.example>
template reminder "reminder"
"#;

fn check_files(files: &[(&str, &str)]) -> Checked {
    let mut sources = SourceMap::new();
    let mut parsed = Vec::new();
    for (name, text) in files {
        let id = sources.add(*name, *text);
        match parse_file(id, text) {
            Ok(file) => parsed.push(file),
            Err(d) => panic!("{}", d.render(&sources)),
        }
    }
    check(sources, &parsed, Limits::default(), &Environment::default())
}

/// Checks BASE plus `extra` (as `policy.rules`) and renders all diagnostics.
fn diagnostics(extra: &str) -> String {
    let checked = check_files(&[("base.rules", BASE), ("policy.rules", extra)]);
    render_all(&checked.diagnostics, &checked.sources)
}

#[test]
fn the_default_policy_checks_clean() {
    let mut files: Vec<(String, String)> = std::fs::read_dir("rules")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rules"))
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    let borrowed: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let checked = check_files(&borrowed);
    assert_eq!(render_all(&checked.diagnostics, &checked.sources), "");
    assert!(checked.policy.is_some());
}

#[test]
fn a_clean_policy_has_no_diagnostics() {
    assert_eq!(diagnostics("route {\n    otherwise -> service\n}\n"), "");
}

/// One snapshot per checker error kind: the exact rendered diagnostics.
macro_rules! diagnostic_snapshot {
    ($name:ident, $policy:expr) => {
        #[test]
        fn $name() {
            insta::assert_snapshot!(stringify!($name), diagnostics($policy));
        }
    };
}

const ROUTE: &str = "route {\n    otherwise -> service\n}\n";

diagnostic_snapshot!(
    unknown_department_suggests_the_near_name,
    "route {\n    when category == billing -> qualty\n    otherwise -> service\n}\n"
);
diagnostic_snapshot!(
    unknown_department_lists_the_declared_ones,
    "route {\n    otherwise -> 财务部\n}\n"
);
diagnostic_snapshot!(
    unknown_calendar,
    &format!("{ROUTE}deadline resolve {{\n    calendar ofice\n    starts on received\n    stops on resolved\n    otherwise -> 3 working days\n}}\n")
);
diagnostic_snapshot!(
    unknown_calendar_in_an_arrival_condition,
    &format!("{ROUTE}deadline forward {{\n    calendar office\n    starts on received\n    stops on resolved\n    when received in hours of ofice -> 30 working minutes\n    otherwise -> until end of day\n}}\n")
);
diagnostic_snapshot!(
    unknown_template,
    &format!("{ROUTE}deadline resolve {{\n    starts on received\n    stops on resolved, closed, withdrawn, rejected, abnormally_closed, merged\n    otherwise -> 3 days\n}}\nescalate resolve {{\n    at 50% notify assignee using remider\n}}\n")
);
diagnostic_snapshot!(
    unknown_field_in_a_condition,
    &format!("{ROUTE}classify {{\n    rule r: when subjet contains \"账单\" then category = billing\n}}\n")
);
diagnostic_snapshot!(
    unknown_severity_in_an_action,
    &format!(
        "{ROUTE}classify {{\n    rule r: when text contains \"律师\" then severity >= majr\n}}\n"
    )
);
diagnostic_snapshot!(
    unknown_category_in_a_comparison,
    &format!("{ROUTE}classify {{\n    rule r: when category == biling then tag x\n}}\n")
);
diagnostic_snapshot!(
    duplicate_category,
    &format!("{ROUTE}category billing \"again\"\n")
);
diagnostic_snapshot!(
    severity_compared_with_text,
    &format!("{ROUTE}classify {{\n    rule r: when severity == \"major\" then tag x\n}}\n")
);
diagnostic_snapshot!(
    text_has_no_order,
    &format!("{ROUTE}classify {{\n    rule r: when subject > \"a\" then tag x\n}}\n")
);
diagnostic_snapshot!(
    regex_that_does_not_compile,
    &format!("{ROUTE}classify {{\n    rule r: when text matches /投诉(/ then tag x\n}}\n")
);
diagnostic_snapshot!(
    zero_duration_is_impossible,
    &format!("{ROUTE}deadline resolve {{\n    starts on received\n    stops on resolved\n    otherwise -> 0 days\n}}\n")
);
diagnostic_snapshot!(
    routes_that_fall_through,
    "route {\n    when category == billing -> service\n}\n"
);
diagnostic_snapshot!(
    deadline_without_otherwise,
    &format!("{ROUTE}deadline resolve {{\n    starts on received\n    stops on resolved\n    when severity == major -> 1 day\n}}\n")
);
diagnostic_snapshot!(
    none_as_the_length_of_a_when_line,
    &format!("{ROUTE}deadline report {{\n    starts on received\n    stops on resolved\n    when severity == major -> none\n    otherwise -> 1 day\n}}\n")
);
diagnostic_snapshot!(
    otherwise_none_without_a_when_line,
    &format!("{ROUTE}deadline report {{\n    starts on received\n    stops on resolved\n    otherwise -> none\n}}\n")
);
diagnostic_snapshot!(
    otherwise_none_for_some_cases_only_is_clean,
    &format!("{ROUTE}deadline report {{\n    starts on received\n    stops on resolved, closed, withdrawn, rejected, abnormally_closed, merged\n    when severity == major -> 12 hours\n    otherwise -> none\n}}\nescalate report {{\n    at 50% notify assignee using reminder\n}}\n")
);
diagnostic_snapshot!(
    step_after_a_hard_stop,
    &format!("{ROUTE}deadline appeal {{\n    starts on received\n    stops on closed, withdrawn, rejected, abnormally_closed, merged\n    hard stop\n    otherwise -> 3 days\n}}\nescalate appeal {{\n    at 1 day after due notify assignee using reminder\n}}\n")
);
diagnostic_snapshot!(
    unreachable_route_is_a_warning,
    "route {\n    when severity == major -> quality\n    when severity == major -> service\n    otherwise -> service\n}\n"
);
diagnostic_snapshot!(
    unreachable_rule_is_a_warning,
    &format!("{ROUTE}classify {{\n    rule all: when always then tag seen, stop\n    rule never: when text contains \"x\" then tag x\n}}\n")
);
diagnostic_snapshot!(
    capture_group_that_does_not_exist,
    &format!("{ROUTE}field loss: number\nclassify {{\n    rule r: when text matches /损失([0-9]+)元/ then loss = $2\n}}\n")
);
diagnostic_snapshot!(
    read_only_field,
    &format!("{ROUTE}classify {{\n    rule r: when always then subject = \"x\"\n}}\n")
);
diagnostic_snapshot!(
    invalid_cron,
    &format!("{ROUTE}schedule weekly \"0 9 * MON\" {{\n    digest cases where open\n    to service\n    using reminder\n}}\n")
);
diagnostic_snapshot!(
    schedule_to_the_assignee,
    &format!("{ROUTE}schedule weekly \"0 9 * * MON\" {{\n    digest cases where open\n    to assignee\n    using reminder\n}}\n")
);
diagnostic_snapshot!(
    unknown_contact_role,
    &format!("{ROUTE}deadline resolve {{\n    starts on received\n    stops on resolved, closed, withdrawn, rejected, abnormally_closed, merged\n    otherwise -> 3 days\n}}\nescalate resolve {{\n    at 100% notify assignee.supervsor using reminder\n}}\n")
);
diagnostic_snapshot!(
    address_of_two_departments,
    &format!("{ROUTE}department billing_dept \"收费部\" <qa@corp.example>\n")
);
diagnostic_snapshot!(no_route_block, "category other \"其他\"\n");
diagnostic_snapshot!(
    all_problems_at_once,
    "route {\n    when category == biling -> qualty\n}\ndeadline resolve {\n    calendar ofice\n    starts on received\n    stops on received\n    otherwise -> 0 hours\n}\nclassify {\n    rule r: when severity == \"major\" then severity >= majr\n}\n"
);

#[test]
fn until_end_of_day_needs_a_calendar() {
    let policy = "severity general < major\ncategory other\nchannel own\ndepartment service <s@corp.example>\nroute {\n    otherwise -> service\n}\ndeadline same_day {\n    starts on received\n    stops on resolved\n    otherwise -> until end of day\n}\n";
    let checked = check_files(&[("policy.rules", policy)]);
    insta::assert_snapshot!(
        "until_end_of_day_needs_a_calendar",
        render_all(&checked.diagnostics, &checked.sources)
    );
}

#[test]
fn missing_template_files_are_named() {
    let mut sources = SourceMap::new();
    let text = format!("{BASE}languages zh en\n{ROUTE}");
    let id = sources.add("policy.rules", text.as_str());
    let file = parse_file(id, &text).unwrap();
    let env = Environment {
        template_files: Some(
            ["remindr.zh.txt".to_owned(), "remindr.en.txt".to_owned()]
                .into_iter()
                .collect(),
        ),
    };
    let checked = check(sources, &[file], Limits::default(), &env);
    insta::assert_snapshot!(
        "missing_template_files",
        render_all(&checked.diagnostics, &checked.sources)
    );
}

#[test]
fn a_regex_over_the_size_limit_is_refused() {
    let text = format!("{BASE}{ROUTE}classify {{\n    rule r: when text matches /\\w{{1000}}\\w{{1000}}/ then tag x\n}}\n");
    let mut sources = SourceMap::new();
    let id = sources.add("policy.rules", text.as_str());
    let file = parse_file(id, &text).unwrap();
    let limits = Limits {
        max_regex_size: 10_000,
        ..Limits::default()
    };
    let checked = check(sources, &[file], limits, &Environment::default());
    insta::assert_snapshot!(
        "regex_over_the_size_limit",
        render_all(&checked.diagnostics, &checked.sources)
    );
}

#[test]
fn a_directory_of_broken_files_yields_every_diagnostic() {
    let checked =
        complaintd::cli::load_and_check(std::path::Path::new("tests/fixtures/rules/errors"));
    let expected = std::fs::read_to_string("tests/fixtures/rules/errors.expected").unwrap();
    assert!(checked.policy.is_none());
    assert_eq!(render_all(&checked.diagnostics, &checked.sources), expected);
}

/// A deadline with `starts on forwarded` and the given `stops on` list, with
/// an escalation ladder, after the route.
fn escalated_deadline(stops_on: &str) -> String {
    format!(
        "{ROUTE}deadline investigate \"调查\" {{\n    starts on forwarded\n    stops on {stops_on}\n    otherwise -> 3 days\n}}\nescalate investigate {{\n    at 50% notify assignee using reminder\n}}\n"
    )
}

#[test]
fn an_escalated_deadline_that_runs_on_finished_cases_is_a_warning() {
    let policy = escalated_deadline("resolved, closed");
    let checked = check_files(&[("base.rules", BASE), ("policy.rules", &policy)]);
    assert_eq!(
        render_all(&checked.diagnostics, &checked.sources),
        "warning: deadline `investigate` keeps running when a case is withdrawn, rejected, \
         abnormally closed or merged; its escalations would go on for a finished case\n \
         --> policy.rules:4:10\n  \
         |\n\
         4 | deadline investigate \"调查\" {\n  \
         |          ^^^^^^^^^^^\n  \
         = help: add them to `stops on`: withdrawn, rejected, abnormally_closed, merged\n\
         \n\
         ok: 0 errors, 1 warning\n"
    );
    assert!(
        checked.policy.is_some(),
        "a warning does not reject the policy"
    );
}

#[test]
fn a_deadline_missing_one_finishing_event_names_it() {
    assert_eq!(
        diagnostics(&escalated_deadline(
            "resolved, closed, withdrawn, rejected, abnormally_closed"
        )),
        "warning: deadline `investigate` keeps running when a case is merged; \
         its escalations would go on for a finished case\n \
         --> policy.rules:4:10\n  \
         |\n\
         4 | deadline investigate \"调查\" {\n  \
         |          ^^^^^^^^^^^\n  \
         = help: add it to `stops on`: merged\n\
         \n\
         ok: 0 errors, 1 warning\n"
    );
}

#[test]
fn a_deadline_that_stops_on_every_finishing_event_is_clean() {
    assert_eq!(
        diagnostics(&escalated_deadline(
            "resolved, merged, abnormally_closed, rejected, withdrawn, closed"
        )),
        ""
    );
}

#[test]
fn an_unescalated_deadline_warns_only_when_a_condition_reads_overdue() {
    let deadline = format!(
        "{ROUTE}deadline investigate {{\n    starts on forwarded\n    stops on resolved\n    otherwise -> 3 days\n}}\n"
    );
    assert_eq!(diagnostics(&deadline), "", "nothing acts on the clock");
    let digest = format!(
        "{deadline}schedule late \"0 9 * * MON\" {{\n    digest cases where overdue\n    to service\n    using reminder\n}}\n"
    );
    assert_eq!(
        diagnostics(&digest),
        "warning: deadline `investigate` keeps running when a case is closed, withdrawn, \
         rejected, abnormally closed or merged; a finished case would count as `overdue`\n \
         --> policy.rules:4:10\n  \
         |\n\
         4 | deadline investigate {\n  \
         |          ^^^^^^^^^^^\n  \
         = help: add them to `stops on`: closed, withdrawn, rejected, abnormally_closed, merged\n\
         \n\
         ok: 0 errors, 1 warning\n"
    );
}

#[test]
fn overdue_read_only_beside_open_counts_no_finished_case() {
    let deadline = format!(
        "{ROUTE}deadline investigate {{\n    starts on forwarded\n    stops on resolved\n    otherwise -> 3 days\n}}\n"
    );
    let digest = |filter: &str| {
        diagnostics(&format!(
            "{deadline}schedule late \"0 9 * * MON\" {{\n    digest cases where {filter}\n    to service\n    using reminder\n}}\n"
        ))
    };
    assert_eq!(digest("overdue and open"), "");
    assert_eq!(digest("open and (overdue or severity >= major)"), "");
    assert_eq!(digest("open and not overdue"), "");
    // A finished case passes this one whatever `overdue` says.
    assert_eq!(digest("not (open and not overdue)"), "");
    let warned = "ok: 0 errors, 1 warning\n";
    for filter in ["overdue or open", "not open and overdue", "overdue"] {
        assert!(
            digest(filter).ends_with(warned),
            "`{filter}` can count a finished case: {}",
            digest(filter)
        );
    }
}

#[test]
fn a_deadline_that_starts_on_a_finishing_event_may_run_on_a_finished_case() {
    let policy = format!(
        "{ROUTE}deadline survey {{\n    starts on closed\n    stops on reopened\n    otherwise -> 7 days\n}}\nescalate survey {{\n    at 100% notify assignee using reminder\n}}\n"
    );
    assert_eq!(diagnostics(&policy), "");
}

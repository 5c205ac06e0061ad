//! The evaluator and the rule-file test runner, on policies written as rule text.

use std::path::Path;

use chrono::{DateTime, Utc};

use complaintd::case::{
    Address, AttachmentFacts, Case, CaseId, CaseState, EventKind, FieldValue, MailFacts,
};
use complaintd::rules::check::{check, Environment};
use complaintd::rules::diag::render_all;
use complaintd::rules::eval::{
    apply, evaluate, Action, Evaluation, HistoryEntry, Input, MemoryHistory, Stage, StepRecipient,
    TimerKind, Verdict,
};
use complaintd::rules::parse::parse_file;
use complaintd::rules::testing::run_tests;
use complaintd::rules::{Limits, Policy, SourceMap};

const POLICY: &str = r#"
severity general < important < hot < major
category billing "收费"
category safety "安全"
category other "其他"
field loss: number "损失"
field note: text
channel own
channel hotline
languages zh en
calendar office "Asia/Shanghai" {
    hours mon..fri 08:30-12:00 14:00-17:30
    holiday 2026-10-01..2026-10-07 "国庆节"
    workday 2026-10-10 "调休上班"
}
department service "客服" <service@corp.example> {
    manager <lead@corp.example>
    contact supervisor <sup@corp.example>
    calendar office
}
department network "管网" <network@corp.example>, <duty@corp.example>
department office "办公室" <office@corp.example> { manager <gm@corp.example> }
template reminder "reminder"
template overdue "overdue"

classify {
    rule leak "燃气泄漏":
        when text has any ("漏气", "燃气味")
        then category = safety, severity >= major, tag safety
    rule bill:
        when subject contains "bill" or text matches /账单|多收/
        then category = billing
    rule billing_seen:
        when category == billing
        then tag billing_seen
    rule media:
        when text matches /曝光|媒体/
        then severity >= hot, tag exposure
    rule loss:
        when text matches /损失\s*([0-9,]+|[一二三四五六七八九十百千]+)\s*元/
        then loss = $1
    rule repeat:
        when count(cases from same sender within 30 days) >= 3
        then severity >= major, tag repeat
    rule collective:
        when category is set and count(distinct senders with same category within 48 hours) >= 5
        then severity >= major, tag collective
    rule priority:
        when header "X-Priority" == "1" or attachments.count >= 3
        then tag urgent
    rule rest:
        when category is empty
        then category = other
}

classify on reopened {
    rule reopened_twice:
        when count(reopenings) >= 2
        then severity >= major, tag reopened_twice
}

route {
    safety: when category == safety -> network, cc office
    when severity == major -> office, cc service
    otherwise -> service
}

deadline forward {
    calendar office
    starts on received
    stops on forwarded
    otherwise -> 1 working hour
}

deadline answer "答复" {
    calendar office
    starts on received
    stops on answered
    pause while status == waiting_on_customer
    when severity == major -> 4 working hours
    when channel == hotline -> 2 days
    otherwise -> 2 working days
}

deadline appeal {
    starts on responsibility_decided
    stops on closed
    hard stop
    otherwise -> 3 days
}

escalate answer {
    at 50% notify assignee using reminder
    at 100% notify assignee.manager, assignee.supervisor using overdue, severity >= important
    at 1 working day after due notify office.manager, customer using overdue when severity == major
}

escalate appeal {
    at 4 hours before due notify assignee using reminder
}
"#;

fn policy_with(text: &str, limits: Limits) -> Policy {
    let mut sources = SourceMap::new();
    let file = sources.add("test.rules", text);
    let parsed = match parse_file(file, text) {
        Ok(parsed) => parsed,
        Err(d) => panic!("{}", d.render(&sources)),
    };
    let checked = check(sources, &[parsed], limits, &Environment::default());
    match checked.policy {
        Some(policy) => policy,
        None => panic!("{}", render_all(&checked.diagnostics, &checked.sources)),
    }
}

fn policy() -> Policy {
    policy_with(POLICY, Limits::default())
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("a valid test time")
        .with_timezone(&Utc)
}

/// A Tuesday morning in Shanghai: the office is open.
const TUESDAY_10: &str = "2026-11-24T10:00:00+08:00";

fn mail(from: &str, subject: &str, text: &str) -> MailFacts {
    MailFacts {
        subject: subject.to_owned(),
        text: text.to_owned(),
        sender: Address::new(from, None),
        language: "zh".to_owned(),
        channel: "own".to_owned(),
        received_at: at(TUESDAY_10),
        ..MailFacts::default()
    }
}

fn case_for(mail: &MailFacts, channel: &str) -> Case {
    Case::new(
        CaseId("TS-2026-000001".to_owned()),
        mail.received_at,
        channel,
        mail.sender.clone(),
        &mail.subject,
        &mail.language,
    )
}

/// Evaluates a new complaint and applies the actions; returns the case and the evaluation.
fn receive<'p>(
    policy: &'p Policy,
    mail: &MailFacts,
    channel: &str,
    history: &MemoryHistory,
) -> (Case, Evaluation<'p>) {
    let mut case = case_for(mail, channel);
    let now = mail.received_at;
    let evaluation = evaluate(policy, &case, &Input::NewComplaint(mail), history, now);
    apply(&mut case, &evaluation.actions, now);
    (case, evaluation)
}

/// A verdict's seen pairs as owned strings.
fn seen(verdict: &Verdict<'_>) -> Vec<(String, String)> {
    verdict
        .seen
        .iter()
        .map(|(what, value)| (what.to_string(), value.to_string()))
        .collect()
}

fn name(value: &str) -> Option<FieldValue> {
    Some(FieldValue::Name(value.to_owned()))
}

fn timers(evaluation: &Evaluation, deadline: &str) -> Vec<(TimerKind, DateTime<Utc>)> {
    evaluation
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::ScheduleTimer {
                deadline: d,
                kind,
                fire_at,
                ..
            } if d == deadline => Some((*kind, *fire_at)),
            _ => None,
        })
        .collect()
}

#[test]
fn later_rules_see_fields_set_by_earlier_ones() {
    let policy = policy();
    let (case, evaluation) = receive(
        &policy,
        &mail("a@example.com", "Your BILL", "你好"),
        "own",
        &MemoryHistory::default(),
    );
    assert_eq!(case.field("category"), name("billing").as_ref());
    assert!(case.tags.contains("billing_seen"), "{:?}", case.tags);
    assert!(evaluation.fired("billing_seen"));
    // `rest` ran after `bill` set the category, so it saw it set and did not fire.
    assert!(!evaluation.fired("rest"));
    assert_eq!(case.field("severity"), name("general").as_ref());
}

#[test]
fn contains_ignores_case_and_an_unmatched_mail_falls_to_the_catch_all() {
    let policy = policy();
    let (case, _) = receive(
        &policy,
        &mail("a@example.com", "about my Bill", ""),
        "own",
        &MemoryHistory::default(),
    );
    assert_eq!(case.field("category"), name("billing").as_ref());
    let (case, evaluation) = receive(
        &policy,
        &mail("a@example.com", "hello", "维修太慢"),
        "own",
        &MemoryHistory::default(),
    );
    assert_eq!(case.field("category"), name("other").as_ref());
    assert!(evaluation.fired("rest"));
    assert_eq!(
        case.assignment.as_ref().map(|a| a.department.as_str()),
        Some("service")
    );
}

#[test]
fn a_fired_rule_records_its_name_location_and_the_values_it_saw() {
    let policy = policy();
    let (_, evaluation) = receive(
        &policy,
        &mail("a@example.com", "投诉", "我要找媒体曝光"),
        "own",
        &MemoryHistory::default(),
    );
    let raise = evaluation
        .actions
        .iter()
        .find_map(|a| match a {
            Action::RaiseSeverity { from, to, because } if because.rule == "media" => {
                Some((from.clone(), to.clone(), because.clone()))
            }
            _ => None,
        })
        .expect("media raised the severity");
    assert_eq!(raise.0.as_deref(), Some("general"));
    assert_eq!(raise.1, "hot");
    let line = POLICY
        .lines()
        .position(|l| l.contains("rule media:"))
        .unwrap()
        + 1;
    assert_eq!(
        raise.2.location.as_deref(),
        Some(format!("test.rules:{line}:5").as_str())
    );
    assert_eq!(
        raise.2.seen,
        vec![("text matches /曝光|媒体/".to_owned(), "媒体".to_owned())]
    );
    let verdict = evaluation.trace.iter().find(|v| v.rule == "media").unwrap();
    assert_eq!(verdict.stage, Stage::Classify);
    assert!(verdict.fired);
    assert_eq!(
        verdict.notes,
        vec!["severity general → hot", "tag exposure"]
    );
    let quiet = evaluation.trace.iter().find(|v| v.rule == "leak").unwrap();
    assert!(!quiet.fired);
    assert_eq!(
        seen(quiet),
        vec![(
            "text has any (\"漏气\", \"燃气味\")".to_owned(),
            "(none)".to_owned()
        )]
    );
}

#[test]
fn raising_severity_never_lowers_it() {
    let policy = policy();
    // `leak` makes it major; `media` (>= hot) comes later and must not lower it.
    let (case, evaluation) = receive(
        &policy,
        &mail("a@example.com", "漏气", "有燃气味，我要找媒体"),
        "own",
        &MemoryHistory::default(),
    );
    assert_eq!(case.field("severity"), name("major").as_ref());
    let media = evaluation.trace.iter().find(|v| v.rule == "media").unwrap();
    assert!(media.fired);
    assert_eq!(media.notes, vec!["severity already major", "tag exposure"]);
    assert!(!evaluation
        .actions
        .iter()
        .any(|a| matches!(a, Action::RaiseSeverity { to, .. } if to == "hot")));
}

#[test]
fn setting_severity_may_lower_it_and_stop_ends_the_block() {
    let policy = policy_with(
        &POLICY.replace(
            "    rule bill:",
            "    rule calm: when text contains \"误会\" then severity = general, tag calm, stop\n    rule bill:",
        ),
        Limits::default(),
    );
    let mail = mail(
        "a@example.com",
        "漏气?",
        "有燃气味，不过是误会，账单也有问题",
    );
    let (case, evaluation) = receive(&policy, &mail, "own", &MemoryHistory::default());
    assert_eq!(
        case.field("severity"),
        name("general").as_ref(),
        "calm lowered leak's major"
    );
    assert!(case.tags.contains("calm"));
    assert!(
        evaluation.trace.iter().all(|v| v.rule != "bill"),
        "no rule after `stop` is considered"
    );
    assert_eq!(case.field("category"), name("safety").as_ref());
    // The block after it still runs its own rules on other triggers; routing still happens.
    assert_eq!(
        case.assignment.as_ref().map(|a| a.department.as_str()),
        Some("network")
    );
}

#[test]
fn a_capture_group_sets_a_number_field_and_a_non_number_is_reported() {
    let policy = policy();
    let (case, evaluation) = receive(
        &policy,
        &mail("a@example.com", "赔偿", "一共损失 1,350 元"),
        "own",
        &MemoryHistory::default(),
    );
    assert_eq!(case.field("loss"), Some(&FieldValue::Number(1350.0)));
    let set = evaluation.actions.iter().find_map(|a| match a {
        Action::SetField { field, because, .. } if field == "loss" => Some(because.clone()),
        _ => None,
    });
    assert_eq!(set.unwrap().seen[0].1, "损失 1,350 元");

    let (case, evaluation) = receive(
        &policy,
        &mail("a@example.com", "赔偿", "损失三百元"),
        "own",
        &MemoryHistory::default(),
    );
    assert_eq!(case.field("loss"), None);
    let verdict = evaluation.trace.iter().find(|v| v.rule == "loss").unwrap();
    assert!(verdict.fired);
    assert_eq!(
        verdict.notes,
        vec!["loss not set: $1 = \"三百\" is not a number"]
    );
}

#[test]
fn text_beyond_the_limit_is_not_looked_at() {
    let limits = Limits {
        max_text_len: 30,
        ..Limits::default()
    };
    let policy = policy_with(POLICY, limits);
    let padding = "很".repeat(10); // 30 bytes
    let (case, _) = receive(
        &policy,
        &mail("a@example.com", "x", &format!("{padding}燃气味")),
        "own",
        &MemoryHistory::default(),
    );
    assert_ne!(case.field("category"), name("safety").as_ref());
    let (case, _) = receive(
        &policy,
        &mail("a@example.com", "x", &format!("燃气味{padding}")),
        "own",
        &MemoryHistory::default(),
    );
    assert_eq!(case.field("category"), name("safety").as_ref());
}

fn earlier(sender: &str, opened: &str, category: Option<&str>) -> HistoryEntry {
    HistoryEntry {
        sender: sender.to_owned(),
        opened_at: at(opened),
        category: category.map(str::to_owned),
        subject_fingerprint: String::new(),
        tags: Vec::new(),
    }
}

#[test]
fn repeat_complaints_count_this_case_and_the_window_ends_now() {
    let policy = policy();
    let sender = "zhao@example.com";
    let two_before = MemoryHistory {
        entries: vec![
            earlier(sender, "2026-11-02T09:00:00+08:00", None),
            earlier(sender, "2026-11-12T09:00:00+08:00", None),
            earlier("other@example.com", "2026-11-12T09:00:00+08:00", None),
        ],
    };
    let (case, evaluation) = receive(
        &policy,
        &mail(sender, "又来了", "第三次"),
        "own",
        &two_before,
    );
    assert!(evaluation.fired("repeat"));
    assert!(case.tags.contains("repeat"));
    let verdict = evaluation
        .trace
        .iter()
        .find(|v| v.rule == "repeat")
        .unwrap();
    assert_eq!(
        seen(verdict),
        vec![(
            "count(cases from same sender within 30 days)".to_owned(),
            "3".to_owned()
        )]
    );
    // One of the two is 31 days old: outside the window.
    let one_in_window = MemoryHistory {
        entries: vec![
            earlier(sender, "2026-10-24T09:59:00+08:00", None),
            earlier(sender, "2026-11-12T09:00:00+08:00", None),
        ],
    };
    let (_, evaluation) = receive(
        &policy,
        &mail(sender, "又来了", "第二次"),
        "own",
        &one_in_window,
    );
    assert!(!evaluation.fired("repeat"));
}

#[test]
fn collective_complaints_count_distinct_senders_of_the_same_category() {
    let policy = policy();
    let within = "2026-11-23T12:00:00+08:00";
    let mut entries: Vec<HistoryEntry> = (0..3)
        .map(|i| earlier(&format!("n{i}@example.com"), within, Some("billing")))
        .collect();
    // The same neighbour twice, and this case's own sender, count once each.
    entries.push(earlier("n0@example.com", within, Some("billing")));
    entries.push(earlier("me@example.com", within, Some("billing")));
    // Another category and an old complaint do not count.
    entries.push(earlier("x@example.com", within, Some("safety")));
    entries.push(earlier(
        "y@example.com",
        "2026-11-20T12:00:00+08:00",
        Some("billing"),
    ));
    let history = MemoryHistory { entries };
    let (_, evaluation) = receive(
        &policy,
        &mail("me@example.com", "账单", "多收"),
        "own",
        &history,
    );
    let verdict = evaluation
        .trace
        .iter()
        .find(|v| v.rule == "collective")
        .unwrap();
    assert_eq!(verdict.seen[1].1, "4", "{:?}", verdict.seen);
    assert!(!verdict.fired);

    let mut more = history.clone();
    more.entries
        .push(earlier("n9@example.com", within, Some("billing")));
    let (case, evaluation) = receive(
        &policy,
        &mail("me@example.com", "账单", "多收"),
        "own",
        &more,
    );
    assert!(evaluation.fired("collective"));
    assert_eq!(case.field("severity"), name("major").as_ref());
}

#[test]
fn headers_and_attachments_are_readable() {
    let policy = policy();
    let mut urgent = mail("a@example.com", "x", "y");
    urgent
        .headers
        .push(("x-priority".to_owned(), "1".to_owned()));
    let (case, _) = receive(&policy, &urgent, "own", &MemoryHistory::default());
    assert!(case.tags.contains("urgent"));

    let mut photos = mail("a@example.com", "x", "y");
    photos.attachments = (0..3)
        .map(|i| AttachmentFacts {
            name: format!("{i}.jpg"),
            content_type: "image/jpeg".to_owned(),
            size: 10,
        })
        .collect();
    let (case, _) = receive(&policy, &photos, "own", &MemoryHistory::default());
    assert!(case.tags.contains("urgent"));

    let (case, _) = receive(
        &policy,
        &mail("a@example.com", "x", "y"),
        "own",
        &MemoryHistory::default(),
    );
    assert!(!case.tags.contains("urgent"));
}

#[test]
fn the_first_matching_route_wins_and_records_its_name_and_cc() {
    let policy = policy();
    let (case, evaluation) = receive(
        &policy,
        &mail("a@example.com", "漏气", "燃气味很重，还要找媒体"),
        "own",
        &MemoryHistory::default(),
    );
    let assignment = case.assignment.expect("routed");
    assert_eq!(assignment.department, "network");
    assert_eq!(assignment.cc, vec!["office".to_owned()]);
    assert_eq!(assignment.rule, "safety");
    let routes: Vec<&str> = evaluation
        .verdicts(Stage::Route)
        .map(|v| v.rule.as_ref())
        .collect();
    assert_eq!(
        routes,
        vec!["safety"],
        "routes after the first match are not considered"
    );

    let (case, evaluation) = receive(
        &policy,
        &mail("a@example.com", "x", "我要找媒体"),
        "own",
        &MemoryHistory::default(),
    );
    assert_eq!(
        case.assignment.as_ref().map(|a| a.department.as_str()),
        Some("service")
    );
    let routes: Vec<(&str, bool)> = evaluation
        .verdicts(Stage::Route)
        .map(|v| (v.rule.as_ref(), v.fired))
        .collect();
    assert_eq!(
        routes,
        vec![("safety", false), ("route #2", false), ("otherwise", true)]
    );
}

#[test]
fn deadlines_start_on_received_with_the_first_matching_duration_on_the_calendar() {
    let policy = policy();
    let (case, evaluation) = receive(
        &policy,
        &mail("a@example.com", "x", "y"),
        "own",
        &MemoryHistory::default(),
    );
    assert_eq!(case.clocks["forward"].due, at("2026-11-24T11:00:00+08:00"));
    // Two working days from Tuesday 10:00 is Thursday 10:00.
    assert_eq!(case.clocks["answer"].due, at("2026-11-26T10:00:00+08:00"));
    assert!(case.clocks["answer"].business);
    assert!(
        !case.clocks.contains_key("appeal"),
        "appeal starts on responsibility_decided"
    );
    let started = evaluation
        .actions
        .iter()
        .find_map(|a| match a {
            Action::StartClock {
                deadline,
                duration,
                counted,
                because,
                ..
            } if deadline == "answer" => Some((duration.clone(), counted.clone(), because.clone())),
            _ => None,
        })
        .unwrap();
    assert_eq!(started.0, "2 working days");
    assert!(started.1.contains("2026-11-26 10:00"), "{}", started.1);
    assert_eq!(started.2.rule, "deadline answer");
    assert!(started
        .2
        .seen
        .contains(&("duration".to_owned(), "2 working days".to_owned())));

    // Friday 17:00 (office closes 17:30): the forward hour runs into Monday.
    let mut late = mail("a@example.com", "x", "y");
    late.received_at = at("2026-11-27T17:00:00+08:00");
    let (case, _) = receive(&policy, &late, "own", &MemoryHistory::default());
    assert_eq!(case.clocks["forward"].due, at("2026-11-30T09:00:00+08:00"));

    // A hotline complaint gets two natural days, weekend or not.
    let (case, _) = receive(&policy, &late, "hotline", &MemoryHistory::default());
    assert_eq!(case.clocks["answer"].due, at("2026-11-29T17:00:00+08:00"));
    assert!(!case.clocks["answer"].business);

    // Majors get 4 working hours, after classification raised the severity.
    let (case, _) = receive(
        &policy,
        &mail("a@example.com", "x", "燃气味"),
        "own",
        &MemoryHistory::default(),
    );
    assert_eq!(case.clocks["answer"].due, at("2026-11-24T16:00:00+08:00"));
}

#[test]
fn escalation_steps_are_scheduled_from_the_clock() {
    let policy = policy();
    let (_, evaluation) = receive(
        &policy,
        &mail("a@example.com", "x", "y"),
        "own",
        &MemoryHistory::default(),
    );
    // 50% of Tue 10:00 → Thu 10:00 is 7 of 14 working hours: Wednesday 10:00.
    assert_eq!(
        timers(&evaluation, "answer"),
        vec![
            (TimerKind::Step(0), at("2026-11-25T10:00:00+08:00")),
            (TimerKind::Step(1), at("2026-11-26T10:00:00+08:00")),
            (TimerKind::Step(2), at("2026-11-27T10:00:00+08:00")),
            (TimerKind::Due, at("2026-11-26T10:00:00+08:00")),
        ]
    );
    assert_eq!(
        timers(&evaluation, "forward"),
        vec![(TimerKind::Due, at("2026-11-24T11:00:00+08:00"))]
    );
}

/// A routed case with its clocks, as the daemon holds it after the new complaint.
fn received_case(policy: &Policy, text: &str) -> Case {
    receive(
        policy,
        &mail("cust@example.com", "x", text),
        "own",
        &MemoryHistory::default(),
    )
    .0
}

fn timer<'p>(
    policy: &'p Policy,
    case: &Case,
    deadline: &str,
    kind: TimerKind,
    now: &str,
) -> Evaluation<'p> {
    evaluate(
        policy,
        case,
        &Input::Timer { deadline, kind },
        &MemoryHistory::default(),
        at(now),
    )
}

#[test]
fn a_step_fires_once_with_resolved_recipients_and_raises_severity() {
    let policy = policy();
    let mut case = received_case(&policy, "y");
    let now = "2026-11-26T10:00:00+08:00";
    let evaluation = timer(&policy, &case, "answer", TimerKind::Step(1), now);
    let fired = evaluation
        .actions
        .iter()
        .find_map(|a| match a {
            Action::FireStep {
                step,
                template,
                recipients,
                because,
                ..
            } => Some((*step, template.clone(), recipients.clone(), because.clone())),
            _ => None,
        })
        .expect("the step fired");
    assert_eq!(fired.0, 1);
    assert_eq!(fired.1, "overdue");
    let recipients: Vec<(&str, &str)> = fired
        .2
        .iter()
        .map(|r| (r.address.as_str(), r.role.as_str()))
        .collect();
    assert_eq!(
        recipients,
        vec![
            ("lead@corp.example", "assignee.manager"),
            ("sup@corp.example", "assignee.supervisor")
        ]
    );
    assert_eq!(fired.3.rule, "escalate answer #2");
    assert!(evaluation
        .actions
        .iter()
        .any(|a| matches!(a, Action::RaiseSeverity { to, .. } if to == "important")));

    let events = apply(&mut case, &evaluation.actions, at(now));
    assert!(events
        .iter()
        .any(|e| matches!(&e.kind, EventKind::EscalationFired { step: 1, .. })));
    assert_eq!(case.field("severity"), name("important").as_ref());
    let again = timer(&policy, &case, "answer", TimerKind::Step(1), now);
    assert!(again.actions.is_empty(), "{:?}", again.actions);
    assert_eq!(again.trace[0].notes, vec!["already fired"]);
}

#[test]
fn a_step_whose_condition_fails_is_marked_and_a_stale_timer_is_ignored() {
    let policy = policy();
    let mut case = received_case(&policy, "y");
    // Step #3 only fires for majors; this case is general.
    let now = "2026-11-27T10:00:00+08:00";
    let evaluation = timer(&policy, &case, "answer", TimerKind::Step(2), now);
    assert!(
        matches!(
            evaluation.actions.as_slice(),
            [Action::MarkStepFired { step: 2, .. }]
        ),
        "{:?}",
        evaluation.actions
    );
    apply(&mut case, &evaluation.actions, at(now));
    assert!(case.clocks["answer"].fired_steps.contains(&2));

    // A timer that arrives before its step's time (an earlier schedule) does nothing.
    let early = timer(
        &policy,
        &case,
        "answer",
        TimerKind::Step(0),
        "2026-11-25T09:59:00+08:00",
    );
    assert!(early.actions.is_empty());
    assert!(
        early.trace[0].notes[0].starts_with("early"),
        "{:?}",
        early.trace[0].notes
    );
}

#[test]
fn recipients_that_do_not_resolve_are_reported_not_invented() {
    let policy = policy();
    let mut case = received_case(&policy, "燃气味");
    assert_eq!(case.assignment.as_ref().unwrap().department, "network");
    let evaluation = timer(
        &policy,
        &case,
        "answer",
        TimerKind::Step(1),
        "2026-11-24T16:00:00+08:00",
    );
    let recipients = evaluation.actions.iter().find_map(|a| match a {
        Action::FireStep { recipients, .. } => Some(recipients.clone()),
        _ => None,
    });
    assert_eq!(recipients, Some(Vec::new()));
    assert!(evaluation.trace[0]
        .notes
        .contains(&"assignee.manager: department network has no manager".to_owned()));
    apply(
        &mut case,
        &evaluation.actions,
        at("2026-11-24T16:00:00+08:00"),
    );
    assert!(case.clocks["answer"].fired_steps.contains(&1));
}

#[test]
fn a_paused_clock_skips_its_steps_and_resumes_with_the_due_time_extended() {
    let policy = policy();
    let mut case = received_case(&policy, "y");
    // Wednesday 08:30 the department asks the customer; the clock pauses.
    case.state = CaseState::WaitingOnCustomer;
    let pause_at = at("2026-11-25T08:30:00+08:00");
    let evaluation = evaluate(
        &policy,
        &case,
        &Input::Recheck,
        &MemoryHistory::default(),
        pause_at,
    );
    assert!(
        matches!(evaluation.actions.as_slice(), [Action::PauseClock { deadline, .. }] if deadline == "answer")
    );
    apply(&mut case, &evaluation.actions, pause_at);
    assert!(case.clocks["answer"].paused_since.is_some());

    let step = timer(
        &policy,
        &case,
        "answer",
        TimerKind::Step(0),
        "2026-11-25T10:00:00+08:00",
    );
    assert!(step.actions.is_empty(), "no step fires while paused");

    // The customer answers Thursday 08:30: one working day (7 h) paused.
    case.state = CaseState::InProgress;
    let resume_at = at("2026-11-26T08:30:00+08:00");
    let evaluation = evaluate(
        &policy,
        &case,
        &Input::Recheck,
        &MemoryHistory::default(),
        resume_at,
    );
    let resumed = evaluation.actions.iter().find_map(|a| match a {
        Action::ResumeClock {
            due,
            paused_seconds,
            ..
        } => Some((*due, *paused_seconds)),
        _ => None,
    });
    assert_eq!(resumed, Some((at("2026-11-27T10:00:00+08:00"), 7 * 3600)));
    assert_eq!(
        timers(&evaluation, "answer"),
        vec![
            (TimerKind::Step(0), at("2026-11-26T10:00:00+08:00")),
            (TimerKind::Step(1), at("2026-11-27T10:00:00+08:00")),
            (TimerKind::Step(2), at("2026-11-30T10:00:00+08:00")),
            (TimerKind::Due, at("2026-11-27T10:00:00+08:00")),
        ]
    );
    apply(&mut case, &evaluation.actions, resume_at);
    assert_eq!(case.clocks["answer"].paused_seconds, 7 * 3600);
    // The old due timer (Thursday 10:00) is now early and ignored.
    let old_due = timer(
        &policy,
        &case,
        "answer",
        TimerKind::Due,
        "2026-11-26T10:00:00+08:00",
    );
    assert!(old_due.actions.is_empty());
}

#[test]
fn clocks_stop_on_their_events_and_a_running_clock_is_breached_at_due() {
    let policy = policy();
    let mut case = received_case(&policy, "y");
    let forwarded_at = at("2026-11-24T10:30:00+08:00");
    let evaluation = evaluate(
        &policy,
        &case,
        &Input::Lifecycle(complaintd::rules::ast::ClockEvent::Forwarded),
        &MemoryHistory::default(),
        forwarded_at,
    );
    assert!(
        matches!(evaluation.actions.as_slice(), [Action::StopClock { deadline, met: true, .. }] if deadline == "forward")
    );
    apply(&mut case, &evaluation.actions, forwarded_at);
    let late_due = timer(
        &policy,
        &case,
        "forward",
        TimerKind::Due,
        "2026-11-24T11:00:00+08:00",
    );
    assert!(
        late_due.actions.is_empty(),
        "a stopped clock is not breached"
    );

    let breach = timer(
        &policy,
        &case,
        "answer",
        TimerKind::Due,
        "2026-11-26T10:00:00+08:00",
    );
    assert!(
        matches!(breach.actions.as_slice(), [Action::Breach { deadline, .. }] if deadline == "answer")
    );
    let events = apply(&mut case, &breach.actions, at("2026-11-26T10:00:00+08:00"));
    assert!(
        matches!(events.as_slice(), [e] if matches!(&e.kind, EventKind::ClockBreached { deadline } if deadline == "answer"))
    );

    let answered_at = at("2026-11-26T11:00:00+08:00");
    let evaluation = evaluate(
        &policy,
        &case,
        &Input::Lifecycle(complaintd::rules::ast::ClockEvent::Answered),
        &MemoryHistory::default(),
        answered_at,
    );
    assert!(matches!(
        evaluation.actions.as_slice(),
        [Action::StopClock { met: false, .. }]
    ));
}

#[test]
fn a_hard_stop_clock_ends_at_its_due_time() {
    let policy = policy();
    let mut case = received_case(&policy, "y");
    let decided = at("2026-11-24T12:00:00+08:00");
    let evaluation = evaluate(
        &policy,
        &case,
        &Input::Lifecycle(complaintd::rules::ast::ClockEvent::ResponsibilityDecided),
        &MemoryHistory::default(),
        decided,
    );
    // Three natural days, and the reminder four hours before.
    assert_eq!(
        timers(&evaluation, "appeal"),
        vec![
            (TimerKind::Step(0), at("2026-11-27T08:00:00+08:00")),
            (TimerKind::Due, at("2026-11-27T12:00:00+08:00")),
        ]
    );
    apply(&mut case, &evaluation.actions, decided);
    let due = timer(
        &policy,
        &case,
        "appeal",
        TimerKind::Due,
        "2026-11-27T12:00:00+08:00",
    );
    assert!(
        matches!(
            due.actions.as_slice(),
            [Action::Breach { .. }, Action::StopClock { met: false, .. }]
        ),
        "{:?}",
        due.actions
    );
}

#[test]
fn a_reopening_runs_the_reopened_rules_and_reroutes() {
    let policy = policy();
    let mut case = received_case(&policy, "y");
    case.state = CaseState::Reopened;
    case.reopen_count = 2;
    let now = at("2026-12-01T10:00:00+08:00");
    let evaluation = evaluate(
        &policy,
        &case,
        &Input::Lifecycle(complaintd::rules::ast::ClockEvent::Reopened),
        &MemoryHistory::default(),
        now,
    );
    assert!(evaluation.fired("reopened_twice"));
    assert!(evaluation
        .verdicts(Stage::Classify)
        .all(|v| v.rule == "reopened_twice"));
    apply(&mut case, &evaluation.actions, now);
    assert_eq!(case.field("severity"), name("major").as_ref());
    assert_eq!(
        case.assignment.as_ref().map(|a| a.department.as_str()),
        Some("office")
    );
}

#[test]
fn apply_logs_one_event_per_decision_and_evaluation_is_deterministic() {
    let policy = policy();
    let complaint = mail("a@example.com", "bill", "燃气味");
    let case = case_for(&complaint, "own");
    let now = complaint.received_at;
    let first = evaluate(
        &policy,
        &case,
        &Input::NewComplaint(&complaint),
        &MemoryHistory::default(),
        now,
    );
    let second = evaluate(
        &policy,
        &case,
        &Input::NewComplaint(&complaint),
        &MemoryHistory::default(),
        now,
    );
    assert_eq!(first, second);
    let mut applied = case.clone();
    let events = apply(&mut applied, &first.actions, now);
    let timers = first
        .actions
        .iter()
        .filter(|a| matches!(a, Action::ScheduleTimer { .. }))
        .count();
    assert_eq!(events.len(), first.actions.len() - timers);
    assert!(events.iter().all(|e| e.at == now));
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| match &e.kind {
            EventKind::FieldSet { field, .. } if field == "severity" => "severity",
            EventKind::FieldSet { .. } => "field",
            EventKind::TagAdded { .. } => "tag",
            EventKind::Assigned { .. } => "assigned",
            EventKind::ClockStarted { .. } => "clock",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        vec!["severity", "field", "severity", "tag", "field", "tag", "assigned", "clock", "clock"]
    );
}

#[test]
fn the_fired_rule_limit_stops_classification() {
    let limits = Limits {
        max_fired_rules: 2,
        ..Limits::default()
    };
    let policy = policy_with(POLICY, limits);
    let (_, evaluation) = receive(
        &policy,
        &mail("a@example.com", "bill", "燃气味 账单 媒体"),
        "own",
        &MemoryHistory::default(),
    );
    let fired: Vec<&str> = evaluation
        .verdicts(Stage::Classify)
        .filter(|v| v.fired)
        .map(|v| v.rule.as_ref())
        .collect();
    assert_eq!(fired, vec!["leak", "bill"]);
    let last = evaluation.verdicts(Stage::Classify).last().unwrap();
    assert!(
        last.notes[0].contains("max_fired_rules"),
        "{:?}",
        last.notes
    );
}

const TESTED_POLICY: &str = r#"
severity general < major
category billing
category other
channel own
languages zh
department service <service@corp.example>
department office <office@corp.example>
classify {
    rule bill: when text contains "账单" then category = billing
    rule rest: when category is empty then category = other
}
route {
    when category == billing -> office
    otherwise -> service
}
deadline answer { starts on received stops on answered otherwise -> 2 hours }

test "passes" {
    at 2026-11-24T10:00:00+08:00
    mail { from: "a@example.com" subject: "x" body: "账单" }
    expect category == billing
    expect route office
    expect deadline answer due 2026-11-24T12:00:00+08:00
    expect rule bill fired
    expect rule rest not fired
}

test "fails everywhere" {
    at 2026-11-24T10:00:00+08:00
    given case from "a@example.com" at 2026-11-20T10:00:00+08:00 category billing
    mail { from: "a@example.com" subject: "x" body: "other" }
    expect category == billing
    expect severity == major
    expect tag vip
    expect route office cc service
    expect deadline answer due 2026-11-24T12:30:00+08:00
    expect rule bill fired
    expect rule rest not fired
}
"#;

#[test]
fn the_test_runner_reports_every_failed_expectation_with_its_location() {
    let policy = policy_with(TESTED_POLICY, Limits::default());
    let outcomes = run_tests(&policy, Path::new("."));
    assert_eq!(outcomes.len(), 2);
    assert!(outcomes[0].passed(), "{:?}", outcomes[0].failures);
    let line = |needle: &str| {
        let start = TESTED_POLICY.find("fails everywhere").unwrap();
        TESTED_POLICY[..start].lines().count()
            + TESTED_POLICY[start..]
                .lines()
                .position(|l| l.contains(needle))
                .unwrap()
    };
    let failures: Vec<String> = outcomes[1]
        .failures
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        failures,
        vec![
            format!("test.rules:{}:5: expected category == billing, got other", line("expect category")),
            format!("test.rules:{}:5: expected severity == major, got general", line("expect severity")),
            format!("test.rules:{}:5: expected tag vip, got no tags", line("expect tag")),
            format!("test.rules:{}:5: expected route office cc service, got service (by otherwise)", line("expect route")),
            format!(
                "test.rules:{}:5: expected deadline answer due 2026-11-24T12:30:00+08:00, got 2026-11-24T12:00:00+08:00",
                line("expect deadline")
            ),
            format!("test.rules:{}:5: expected rule bill fired, but it did not fire", line("expect rule bill")),
            format!("test.rules:{}:5: expected rule rest not fired, but it fired", line("expect rule rest")),
        ]
    );
}

const READING_POLICY: &str = r#"
severity general < major
category outage
category other
channel own
languages zh en
department service <service@corp.example> { contact duty <duty@corp.example> }
template reminder "reminder"

classify {
    rule corp_domain: when sender.domain == "Corp.Example" then tag internal
    rule pdf: when attachments.names has any ("REPORT.PDF") then tag has_report
    rule both_tags: when tags has all (internal, has_report) then tag both
    rule tag_is_exact: when tags contains intern then tag substring_matched
    rule no_header: when header "X-Mailer" != "bulk" then tag no_bulk_header
    rule outage: when subject contains "停水" then category = outage
    rule same_issue:
        when count(distinct senders with same subject within 24 hours) >= 3
        then severity >= major, tag same_issue
    rule tagged_group:
        when count(distinct senders with tag internal within 24 hours) >= 2
        then tag internal_group
}

classify on customer_reply {
    rule angry: when text contains "投诉到底" then severity >= major, tag angry
}

route { otherwise -> service }

deadline first_contact {
    starts on received
    stops on contacted
    pause while status == waiting_on_customer
    otherwise -> 2 hours
}

escalate first_contact {
    at 15 minutes notify assignee.duty using reminder
}
"#;

fn reading_policy() -> Policy {
    policy_with(READING_POLICY, Limits::default())
}

fn tags_of(case: &Case) -> Vec<&str> {
    case.tags.iter().map(String::as_str).collect()
}

#[test]
fn text_comparisons_ignore_case_and_names_do_not() {
    let policy = reading_policy();
    let mut complaint = mail("Li@CORP.example", "x", "y");
    complaint.attachments.push(AttachmentFacts {
        name: "report.pdf".to_owned(),
        content_type: "application/pdf".to_owned(),
        size: 1,
    });
    let (case, evaluation) = receive(&policy, &complaint, "own", &MemoryHistory::default());
    assert_eq!(
        tags_of(&case),
        vec!["both", "has_report", "internal", "no_bulk_header"]
    );
    // `tags contains intern` asks for the tag `intern`, not a part of `internal`.
    assert!(!evaluation.fired("tag_is_exact"));

    let mut bulk = mail("a@example.com", "x", "y");
    bulk.headers
        .push(("x-mailer".to_owned(), "bulk".to_owned()));
    let (case, _) = receive(&policy, &bulk, "own", &MemoryHistory::default());
    assert!(!case.tags.contains("no_bulk_header"));
}

#[test]
fn same_subject_and_tag_groups_count_distinct_senders() {
    let policy = reading_policy();
    let recent = "2026-11-24T08:00:00+08:00";
    let with_subject = |sender: &str, subject: &str| HistoryEntry {
        subject_fingerprint: complaintd::case::subject_fingerprint(subject),
        ..earlier(sender, recent, Some("outage"))
    };
    let history = MemoryHistory {
        entries: vec![
            with_subject("a@example.com", "Re: 停水 通知!"),
            with_subject("b@example.com", "停水通知"),
            with_subject("c@example.com", "停电通知"),
        ],
    };
    // "停水 通知" and "Re: 停水 通知!" are the same issue; "停水通知" (no space) is not.
    let (case, evaluation) = receive(
        &policy,
        &mail("d@example.com", "停水 通知", "y"),
        "own",
        &history,
    );
    let verdict = evaluation
        .trace
        .iter()
        .find(|v| v.rule == "same_issue")
        .unwrap();
    assert_eq!(seen(verdict)[0].1, "2");
    assert!(!case.tags.contains("same_issue"));

    let mut more = history.clone();
    more.entries
        .push(with_subject("e@example.com", "Fwd: 停水  通知"));
    let (case, _) = receive(
        &policy,
        &mail("d@example.com", "停水 通知", "y"),
        "own",
        &more,
    );
    assert!(case.tags.contains("same_issue"));

    // This case counts in a tag group only when it carries the tag itself.
    let tagged = MemoryHistory {
        entries: vec![HistoryEntry {
            tags: vec!["internal".to_owned()],
            ..earlier("x@corp.example", recent, None)
        }],
    };
    let (case, _) = receive(&policy, &mail("y@corp.example", "x", "y"), "own", &tagged);
    assert!(case.tags.contains("internal_group"));
    let (case, _) = receive(&policy, &mail("y@example.com", "x", "y"), "own", &tagged);
    assert!(!case.tags.contains("internal_group"));
}

#[test]
fn a_customer_reply_runs_its_own_rules_and_nothing_else() {
    let policy = reading_policy();
    let (mut case, _) = receive(
        &policy,
        &mail("a@example.com", "停水", "y"),
        "own",
        &MemoryHistory::default(),
    );
    let mut reply = mail("a@example.com", "Re: 停水", "再不处理我就投诉到底");
    reply.received_at = at("2026-11-24T10:30:00+08:00");
    let evaluation = evaluate(
        &policy,
        &case,
        &Input::CustomerReply(&reply),
        &MemoryHistory::default(),
        reply.received_at,
    );
    let considered: Vec<&str> = evaluation.trace.iter().map(|v| v.rule.as_ref()).collect();
    // The pause condition is checked after every input, replies included.
    assert_eq!(considered, vec!["angry", "pause first_contact"]);
    assert!(evaluation
        .actions
        .iter()
        .all(|a| !matches!(a, Action::Assign { .. } | Action::StartClock { .. })));
    apply(&mut case, &evaluation.actions, reply.received_at);
    assert_eq!(case.field("severity"), name("major").as_ref());
    assert!(case.tags.contains("angry"));
}

#[test]
fn a_step_after_the_start_moves_with_a_pause() {
    let policy = reading_policy();
    let (mut case, evaluation) = receive(
        &policy,
        &mail("a@example.com", "x", "y"),
        "own",
        &MemoryHistory::default(),
    );
    assert_eq!(
        timers(&evaluation, "first_contact"),
        vec![
            (TimerKind::Step(0), at("2026-11-24T10:15:00+08:00")),
            (TimerKind::Due, at("2026-11-24T12:00:00+08:00")),
        ]
    );
    // Paused 10:05–10:35 (elapsed time, no calendar): everything moves 30 minutes.
    case.state = CaseState::WaitingOnCustomer;
    let evaluation = evaluate(
        &policy,
        &case,
        &Input::Recheck,
        &MemoryHistory::default(),
        at("2026-11-24T10:05:00+08:00"),
    );
    apply(
        &mut case,
        &evaluation.actions,
        at("2026-11-24T10:05:00+08:00"),
    );
    case.state = CaseState::InProgress;
    let evaluation = evaluate(
        &policy,
        &case,
        &Input::Recheck,
        &MemoryHistory::default(),
        at("2026-11-24T10:35:00+08:00"),
    );
    assert_eq!(
        timers(&evaluation, "first_contact"),
        vec![
            (TimerKind::Step(0), at("2026-11-24T10:45:00+08:00")),
            (TimerKind::Due, at("2026-11-24T12:30:00+08:00")),
        ]
    );
    apply(
        &mut case,
        &evaluation.actions,
        at("2026-11-24T10:35:00+08:00"),
    );
    let fired = timer(
        &policy,
        &case,
        "first_contact",
        TimerKind::Step(0),
        "2026-11-24T10:45:00+08:00",
    );
    let recipients = fired.actions.iter().find_map(|a| match a {
        Action::FireStep { recipients, .. } => Some(recipients.clone()),
        _ => None,
    });
    assert_eq!(
        recipients.unwrap(),
        vec![StepRecipient {
            address: "duty@corp.example".to_owned(),
            role: "assignee.duty".to_owned(),
        }]
    );
}

#[test]
fn timers_that_no_longer_apply_do_nothing_and_say_why() {
    let policy = reading_policy();
    let (case, _) = receive(
        &policy,
        &mail("a@example.com", "x", "y"),
        "own",
        &MemoryHistory::default(),
    );
    let unknown_step = timer(
        &policy,
        &case,
        "first_contact",
        TimerKind::Step(7),
        "2026-11-24T11:00:00+08:00",
    );
    assert!(unknown_step.actions.is_empty());
    assert_eq!(
        unknown_step.trace[0].notes,
        vec!["the policy has no such escalation step (any more)"]
    );
    let fresh = case_for(&mail("a@example.com", "x", "y"), "own");
    let never_started = timer(
        &policy,
        &fresh,
        "first_contact",
        TimerKind::Due,
        "2026-11-24T12:00:00+08:00",
    );
    assert!(never_started.actions.is_empty());
    assert_eq!(
        never_started.trace[0].notes,
        vec!["the clock never started"]
    );
}

#[test]
fn holds_reads_flags_of_a_stored_case() {
    let policy = reading_policy();
    let (case, _) = receive(
        &policy,
        &mail("a@example.com", "x", "y"),
        "own",
        &MemoryHistory::default(),
    );
    let overdue = complaintd::rules::ast::Expr::Flag {
        left: complaintd::rules::ast::Operand::Path(complaintd::rules::ast::Spanned::new(
            vec![complaintd::rules::ast::Spanned::new(
                "overdue".to_owned(),
                Default::default(),
            )],
            Default::default(),
        )),
        span: Default::default(),
    };
    let before = complaintd::rules::eval::holds(
        &policy,
        &case,
        &overdue,
        &MemoryHistory::default(),
        at("2026-11-24T11:59:00+08:00"),
    );
    assert_eq!(
        before,
        (false, vec![("overdue".to_owned(), "false".to_owned())])
    );
    let after = complaintd::rules::eval::holds(
        &policy,
        &case,
        &overdue,
        &MemoryHistory::default(),
        at("2026-11-24T12:00:00+08:00"),
    );
    assert_eq!(
        after,
        (true, vec![("overdue".to_owned(), "true".to_owned())])
    );
}

/// Deadlines counted from a date field: `starts at promised`.
const PROMISED_POLICY: &str = r#"
severity general < major
category other "其他"
field promised: date "承诺办结日期" set by department
channel own
languages zh
calendar office "Asia/Shanghai" {
    hours mon..fri 09:00-18:00
}
department service "客服" <service@corp.example> { calendar office }
template reminder "reminder"
route { otherwise -> service }
deadline second_call "第二次回访" {
    calendar office
    starts on field_set
    starts at promised
    stops on closed
    otherwise -> 1 day
}
deadline promised_office "承诺后工作时间" {
    calendar office
    starts on field_set
    starts at promised
    stops on closed
    otherwise -> 2 working hours
}
"#;

#[test]
fn a_deadline_counts_from_the_end_of_the_promised_day_in_the_calendars_zone() {
    let policy = policy_with(PROMISED_POLICY, Limits::default());
    let facts = mail("a@example.com", "燃气费", "多收");
    let mut case = case_for(&facts, "own");
    let promised = chrono::NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
    case.fields
        .insert("promised".to_owned(), FieldValue::Date(promised));
    let now = at(TUESDAY_10);
    let evaluation = evaluate(
        &policy,
        &case,
        &Input::Lifecycle(complaintd::rules::ast::ClockEvent::FieldSet),
        &MemoryHistory::default(),
        now,
    );
    let started: Vec<(String, DateTime<Utc>, DateTime<Utc>)> = evaluation
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::StartClock {
                deadline,
                started_at,
                due,
                ..
            } => Some((deadline.clone(), *started_at, *due)),
            _ => None,
        })
        .collect();
    // Friday 11-27 ends at Saturday 11-28 00:00 in Shanghai. One natural day
    // later is Sunday 00:00; two working hours from Saturday are Monday
    // 11-30 09:00–11:00.
    assert_eq!(
        started,
        [
            (
                "second_call".to_owned(),
                at("2026-11-28T00:00:00+08:00"),
                at("2026-11-29T00:00:00+08:00")
            ),
            (
                "promised_office".to_owned(),
                at("2026-11-28T00:00:00+08:00"),
                at("2026-11-30T11:00:00+08:00")
            ),
        ]
    );
    assert_eq!(
        timers(&evaluation, "second_call"),
        [(TimerKind::Due, at("2026-11-29T00:00:00+08:00"))]
    );
}

#[test]
fn a_deadline_from_an_unset_field_does_not_start_and_says_why() {
    let policy = policy_with(PROMISED_POLICY, Limits::default());
    let facts = mail("a@example.com", "燃气费", "多收");
    let case = case_for(&facts, "own");
    let evaluation = evaluate(
        &policy,
        &case,
        &Input::Lifecycle(complaintd::rules::ast::ClockEvent::FieldSet),
        &MemoryHistory::default(),
        at(TUESDAY_10),
    );
    assert!(
        !evaluation
            .actions
            .iter()
            .any(|a| matches!(a, Action::StartClock { .. })),
        "{:?}",
        evaluation.actions
    );
    let notes: Vec<&String> = evaluation
        .trace
        .iter()
        .filter(|v| v.stage == Stage::Deadline)
        .flat_map(|v| v.notes.iter())
        .collect();
    assert_eq!(
        notes,
        [
            "the clock does not start: `promised` is not set",
            "the clock does not start: `promised` is not set"
        ]
    );
}

/// Arrival conditions and `until end of day` (developer 5.2.2): the office
/// calendar of [`POLICY`], with the developer's forwarding rule.
const ARRIVAL_POLICY: &str = r#"
severity general < major
category other
channel own
calendar office "Asia/Shanghai" {
    hours mon..fri 08:30-12:00 14:00-17:30
    holiday 2026-10-01..2026-10-07 "国庆节"
    workday 2026-10-10 "调休上班"
}
department service "客服" <service@corp.example>
route {
    otherwise -> service
}
classify {
    rule in_hours: when received in hours of office then tag in_hours
    rule working_day: when received on a working day of office then tag working_day
}
classify on customer_reply {
    rule first_mail_in_hours: when received in hours of office then tag first_mail_in_hours
}
deadline pass_on {
    calendar office
    starts on received
    stops on forwarded
    when not received on a working day of office -> until end of day
    when received in hours of office             -> 30 working minutes
    otherwise                                    -> 60 working minutes
}
"#;

/// The tags and the `pass_on` due time of a complaint arriving at `arrival`.
fn arrive(policy: &Policy, arrival: &str) -> (Vec<String>, DateTime<Utc>) {
    let mut complaint = mail("a@example.com", "x", "y");
    complaint.received_at = at(arrival);
    let (case, _) = receive(policy, &complaint, "own", &MemoryHistory::default());
    let tags = tags_of(&case).into_iter().map(str::to_owned).collect();
    (tags, case.clocks["pass_on"].due)
}

#[test]
fn arrival_conditions_tell_hours_after_hours_weekends_holidays_and_make_up_days_apart() {
    let policy = policy_with(ARRIVAL_POLICY, Limits::default());
    let cases = [
        // Tuesday 10:00, in hours: half an hour.
        (
            "2026-11-24T10:00:00+08:00",
            &["in_hours", "working_day"][..],
            "2026-11-24T10:30:00+08:00",
        ),
        // Tuesday 17:20: 10 minutes today, 20 from Wednesday's opening.
        (
            "2026-11-24T17:20:00+08:00",
            &["in_hours", "working_day"][..],
            "2026-11-25T08:50:00+08:00",
        ),
        // Tuesday 19:00, after work: an hour from Wednesday's opening.
        (
            "2026-11-24T19:00:00+08:00",
            &["working_day"][..],
            "2026-11-25T09:30:00+08:00",
        ),
        // Tuesday 07:00, before work: an hour from today's opening.
        (
            "2026-11-24T07:00:00+08:00",
            &["working_day"][..],
            "2026-11-24T09:30:00+08:00",
        ),
        // Tuesday 12:30, the lunch break: an hour from 14:00.
        (
            "2026-11-24T12:30:00+08:00",
            &["working_day"][..],
            "2026-11-24T15:00:00+08:00",
        ),
        // Saturday 15:00, a weekend: due at the end of Saturday.
        (
            "2026-11-28T15:00:00+08:00",
            &[][..],
            "2026-11-29T00:00:00+08:00",
        ),
        // Friday 2026-10-02 10:00, a holiday on a weekday with hours.
        (
            "2026-10-02T10:00:00+08:00",
            &[][..],
            "2026-10-03T00:00:00+08:00",
        ),
        // Saturday 2026-10-10, a make-up day with Monday's hours, 09:00.
        (
            "2026-10-10T09:00:00+08:00",
            &["in_hours", "working_day"][..],
            "2026-10-10T09:30:00+08:00",
        ),
        // The make-up day at 20:00: an hour from Monday 10-12's opening.
        (
            "2026-10-10T20:00:00+08:00",
            &["working_day"][..],
            "2026-10-12T09:30:00+08:00",
        ),
        // 23:59 UTC on Friday 11-27 is 07:59 on Saturday in Shanghai: the
        // calendar's zone decides the day.
        ("2026-11-27T23:59:00Z", &[][..], "2026-11-29T00:00:00+08:00"),
    ];
    for (arrival, tags, due) in cases {
        let (got_tags, got_due) = arrive(&policy, arrival);
        assert_eq!(got_tags, tags, "tags for {arrival}");
        assert_eq!(got_due, at(due), "due for {arrival}");
    }
}

#[test]
fn an_arrival_condition_records_its_answer_and_the_local_arrival() {
    let policy = policy_with(ARRIVAL_POLICY, Limits::default());
    let mut complaint = mail("a@example.com", "x", "y");
    complaint.received_at = at("2026-11-28T15:00:00+08:00");
    let (case, evaluation) = receive(&policy, &complaint, "own", &MemoryHistory::default());
    let verdict = evaluation
        .trace
        .iter()
        .find(|v| v.rule == "in_hours")
        .expect("the rule was considered");
    assert!(!verdict.fired);
    assert_eq!(
        seen(verdict),
        [(
            "received in hours of office".to_owned(),
            "false (received 2026-11-28T15:00:00+08:00)".to_owned()
        )]
    );
    let started = evaluation
        .actions
        .iter()
        .find_map(|a| match a {
            Action::StartClock {
                deadline,
                duration,
                counted,
                ..
            } if deadline == "pass_on" => Some((duration.clone(), counted.clone())),
            _ => None,
        })
        .expect("the clock started");
    assert_eq!(started.0, "until end of day");
    assert_eq!(
        started.1,
        "until end of day: 2026-11-28 15:00 → 2026-11-29 00:00 (Asia/Shanghai)"
    );
    assert!(!case.clocks["pass_on"].business);
}

#[test]
fn an_arrival_condition_reads_when_the_case_arrived_not_now() {
    let policy = policy_with(ARRIVAL_POLICY, Limits::default());
    let reply_to = |opened: &str, replied: &str| {
        let mut complaint = mail("a@example.com", "x", "y");
        complaint.received_at = at(opened);
        let (mut case, _) = receive(&policy, &complaint, "own", &MemoryHistory::default());
        let mut reply = mail("a@example.com", "Re: x", "z");
        reply.received_at = at(replied);
        let evaluation = evaluate(
            &policy,
            &case,
            &Input::CustomerReply(&reply),
            &MemoryHistory::default(),
            reply.received_at,
        );
        apply(&mut case, &evaluation.actions, reply.received_at);
        case.tags.contains("first_mail_in_hours")
    };
    // Opened on Saturday, replied on Tuesday morning: not in hours.
    assert!(!reply_to(
        "2026-11-28T15:00:00+08:00",
        "2026-11-24T10:00:00+08:00"
    ));
    // Opened on Tuesday morning, replied on Saturday: in hours.
    assert!(reply_to(
        "2026-11-24T10:00:00+08:00",
        "2026-11-28T15:00:00+08:00"
    ));
}

#[test]
fn until_end_of_day_in_a_zone_whose_midnight_is_skipped_is_the_first_instant_after() {
    // Chile moves its clocks from 00:00 to 01:00 on Sunday 2026-09-06: the
    // midnight that ends Saturday does not exist. The clock is still due
    // then: at 01:00 -03:00, the first instant after the gap (the instant
    // Saturday's zone would call 00:00 -04:00), not an error or 23:00.
    let text = ARRIVAL_POLICY.replace("Asia/Shanghai", "America/Santiago");
    let policy = policy_with(&text, Limits::default());
    let (tags, due) = arrive(&policy, "2026-09-05T20:00:00-04:00");
    assert!(tags.is_empty(), "{tags:?}");
    assert_eq!(due, at("2026-09-06T01:00:00-03:00"));
}

const SOME_CASES_POLICY: &str = r#"
severity general < major
category other
channel own
department service <service@corp.example>
template reminder "reminder"
route {
    otherwise -> service
}
deadline report "上报" {
    starts on received
    stops on resolved
    when text contains "严重" -> 12 hours
    otherwise -> none
}
escalate report {
    at 50% notify assignee using reminder
}
"#;

#[test]
fn otherwise_none_starts_no_clock_and_says_why() {
    let policy = policy_with(SOME_CASES_POLICY, Limits::default());
    let mut complaint = mail("a@example.com", "x", "普通问题");
    complaint.received_at = at("2026-11-24T10:00:00+08:00");
    let (case, evaluation) = receive(&policy, &complaint, "own", &MemoryHistory::default());
    assert!(!evaluation
        .actions
        .iter()
        .any(|a| matches!(a, Action::StartClock { .. } | Action::ScheduleTimer { .. })));
    assert!(!case.clocks.contains_key("report"));
    let verdict = evaluation
        .trace
        .iter()
        .rfind(|v| v.stage == Stage::Deadline && v.rule == "deadline report")
        .expect("the deadline was considered");
    assert!(verdict.fired);
    assert_eq!(
        verdict.notes,
        ["otherwise -> none: no `when` line matched, so this case has no `report` clock"]
    );
}

#[test]
fn otherwise_none_still_runs_the_clock_for_the_cases_it_applies_to() {
    let policy = policy_with(SOME_CASES_POLICY, Limits::default());
    let mut complaint = mail("a@example.com", "x", "严重不良事件");
    complaint.received_at = at("2026-11-24T10:00:00+08:00");
    let (case, evaluation) = receive(&policy, &complaint, "own", &MemoryHistory::default());
    // 12 elapsed hours from 10:00 +08:00; the 50% step is 6 hours in.
    assert_eq!(case.clocks["report"].due, at("2026-11-24T22:00:00+08:00"));
    let fire_times: Vec<DateTime<Utc>> = timers(&evaluation, "report")
        .into_iter()
        .map(|(_, fire_at)| fire_at)
        .collect();
    assert!(fire_times.contains(&at("2026-11-24T16:00:00+08:00")));
    assert!(fire_times.contains(&at("2026-11-24T22:00:00+08:00")));
}

#[test]
fn explain_says_a_deadline_for_some_cases_only_has_no_clock() {
    let policy = policy_with(SOME_CASES_POLICY, Limits::default());
    let explain = |body: &str| {
        let mut complaint = mail("a@example.com", "x", body);
        complaint.received_at = at("2026-11-24T10:00:00+08:00");
        complaint.channel = "own".to_owned();
        complaintd::rules::explain::explain_new_complaint(
            &policy,
            &complaint,
            &MemoryHistory::default(),
        )
    };
    let line =
        "  report \"上报\": no clock for this case (no `when` line matched: otherwise -> none)\n";
    assert!(explain("普通问题").contains(line));
    let serious = explain("严重不良事件");
    assert!(!serious.contains(line));
    assert!(serious.contains("  report \"上报\": due "));
}

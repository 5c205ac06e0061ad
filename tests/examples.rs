//! The example policies in `rules/examples/`: each is checked and its own
//! tests are run through the built binary, the daemon's loader accepts it,
//! its templates are rendered, and the deadlines that start on a department's or the
//! customer's event (which `rules test` cannot reach: its mail is always a
//! new complaint) are driven here through the evaluator, with due times
//! worked out by hand.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use chrono_tz::Asia::Shanghai;
use complaintd::case::{Address, Case, CaseId, CaseState, FieldValue, MailFacts};
use complaintd::cli::load_and_check;
use complaintd::engine::ActivePolicy;
use complaintd::mail::template::{
    CaseView, DigestView, DisplayNames, EscalationView, Named, NoticeView, TemplateContext,
    Templates,
};
use complaintd::rules::ast::ClockEvent;
use complaintd::rules::eval::{apply, evaluate, Action, Input, MemoryHistory, TimerKind};
use complaintd::rules::Policy;

/// Every example directory and how many `test` blocks it carries, so that
/// an example whose tests were emptied or lost fails here.
const EXAMPLES: [(&str, usize); 8] = [
    ("credit_union", 12),
    ("developer", 15),
    ("food", 11),
    ("gas", 12),
    ("hospital", 11),
    ("mall", 6),
    ("tourism", 5),
    ("training", 15),
];

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/examples")
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the binary from the crate root, so paths in its output are relative.
fn complaintd(args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_complaintd"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the binary runs");
    Run {
        code: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(output.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("utf-8 stderr"),
    }
}

fn expected_tests(example: &str) -> usize {
    EXAMPLES
        .iter()
        .find(|(name, _)| *name == example)
        .map(|(_, count)| *count)
        .expect("the example is listed in EXAMPLES")
}

fn assert_checks_clean(example: &str) {
    let dir = format!("rules/examples/{example}");
    let run = complaintd(&["rules", "check", &dir]);
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (0, "ok: 0 errors, 0 warnings\n", ""),
        "`complaintd rules check {dir}`"
    );
}

fn assert_tests_pass(example: &str) {
    let dir = format!("rules/examples/{example}");
    let run = complaintd(&["rules", "test", &dir]);
    let expected = format!("{} passed, 0 failed\n", expected_tests(example));
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (0, expected.as_str(), ""),
        "`complaintd rules test {dir}`"
    );
}

fn policy_of(example: &str) -> Policy {
    let checked = load_and_check(&examples_dir().join(example));
    checked
        .policy
        .unwrap_or_else(|| panic!("{example} does not check: {:?}", checked.diagnostics))
}

/// Renders every template the policy declares, in every language, with a
/// case made from a plain complaint, and checks each names the case.
fn assert_templates_render(example: &str) {
    let dir = examples_dir().join(example);
    let policy = policy_of(example);
    let templates = Templates::load_dir(&dir.join("templates"), &policy.languages)
        .unwrap_or_else(|errors| panic!("{example}: templates do not load: {errors:?}"));
    let declared: BTreeSet<&str> = policy
        .templates
        .iter()
        .map(|t| t.name.node.as_str())
        .collect();
    assert!(
        declared.contains("acknowledgement") && declared.contains("forward"),
        "{example} must declare the templates the daemon sends with: {declared:?}"
    );
    let timeline = Timeline::complaint(
        example,
        None,
        "2026-11-24T10:00:00+08:00",
        "投诉",
        "投诉内容",
    );
    let names = DisplayNames::from_policy(&policy);
    let now = at("2026-11-24T10:00:00+08:00");
    let view = CaseView::new(&timeline.case, &names, Shanghai, now);
    let deadline = timeline
        .case
        .clocks
        .keys()
        .next()
        .expect("a clock started")
        .clone();
    for template in &policy.templates {
        let stem = &template.file_stem.node;
        for language in &policy.languages {
            let context = if template.name.node == "acknowledgement" {
                TemplateContext::acknowledgement("示例机构", language, "2026-11-24 10:00", &view)
            } else {
                TemplateContext {
                    organisation: "示例机构".to_owned(),
                    language: language.clone(),
                    now: "2026-11-24 10:00".to_owned(),
                    case: Some(view.clone()),
                    mail: None,
                    // The lifecycle notices (result, confirmation, error
                    // list) read `notice`; the other templates ignore it.
                    notice: Some(NoticeView {
                        text: "处理结果".to_owned(),
                        items: vec!["状态: 已解决".to_owned()],
                    }),
                    department: view.department.clone(),
                    reply_address: Some("complaints+token@example.com".to_owned()),
                    escalation: Some(EscalationView {
                        deadline: Named {
                            name: deadline.clone(),
                            display: names.deadline(&deadline).display,
                        },
                        due: "2026-11-25 10:00".to_owned(),
                        step: 0,
                    }),
                    digest: Some(DigestView {
                        schedule: "example".to_owned(),
                        cases: vec![view.clone()],
                    }),
                }
            };
            let rendered = templates
                .render(stem, language, &context)
                .unwrap_or_else(|e| panic!("{example}: {stem}.{language}: {e}"));
            assert!(
                !rendered.subject.is_empty(),
                "{example}: {stem}.{language} has no subject"
            );
            assert!(
                rendered.subject.contains("TEST-000001") || rendered.text.contains("TEST-000001"),
                "{example}: {stem}.{language} does not name the case:\n{}",
                rendered.text
            );
        }
    }
}

/// The daemon loads the policy as it would at start or reload: checked, its
/// templates loaded and dry-run with every documented variable.
fn assert_daemon_loads(example: &str) {
    let dir = examples_dir().join(example);
    match ActivePolicy::load(&dir, at("2026-11-24T10:00:00+08:00")) {
        Ok(active) => assert!(
            active.warnings.is_empty(),
            "{example}: {:?}",
            active.warnings
        ),
        Err(errors) => panic!("{example} does not load:\n{}", errors.join("\n")),
    }
}

macro_rules! example {
    ($name:ident) => {
        mod $name {
            #[test]
            fn checks_without_errors_or_warnings() {
                super::assert_checks_clean(stringify!($name));
            }

            #[test]
            fn passes_all_its_tests() {
                super::assert_tests_pass(stringify!($name));
            }

            #[test]
            fn renders_all_its_templates() {
                super::assert_templates_render(stringify!($name));
            }

            #[test]
            fn loads_as_the_daemon_loads_it() {
                super::assert_daemon_loads(stringify!($name));
            }
        }
    };
}

example!(credit_union);
example!(developer);
example!(food);
example!(gas);
example!(hospital);
example!(mall);
example!(tourism);
example!(training);

#[test]
fn every_example_directory_is_tested() {
    let found: BTreeSet<String> = std::fs::read_dir(examples_dir())
        .expect("rules/examples exists")
        .filter_map(Result::ok)
        .filter(|entry| entry.path().is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    let listed: BTreeSet<String> = EXAMPLES.iter().map(|(n, _)| (*n).to_owned()).collect();
    assert_eq!(found, listed);
}

// ----- timelines: department and customer events -----

fn at(moment: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(moment)
        .expect("a test moment")
        .with_timezone(&Utc)
}

fn china(moment: DateTime<Utc>) -> String {
    moment
        .with_timezone(&FixedOffset::east_opt(8 * 3600).expect("+08:00"))
        .to_rfc3339()
}

/// One case of an example policy, moved along by events as the daemon would.
struct Timeline {
    policy: Policy,
    case: Case,
    history: MemoryHistory,
    /// Actions of the last evaluation.
    last: Vec<Action>,
}

impl Timeline {
    /// A new complaint through `channel` (the first declared when `None`).
    fn complaint(
        example: &str,
        channel: Option<&str>,
        moment: &str,
        subject: &str,
        body: &str,
    ) -> Timeline {
        let policy = policy_of(example);
        let channel = channel
            .map(str::to_owned)
            .unwrap_or_else(|| policy.channels[0].name.node.clone());
        let now = at(moment);
        let mail = MailFacts {
            subject: subject.to_owned(),
            text: body.to_owned(),
            sender: Address::new("customer@example.com", None),
            language: "zh".to_owned(),
            channel: channel.clone(),
            received_at: now,
            ..MailFacts::default()
        };
        let mut case = Case::new(
            CaseId("TEST-000001".to_owned()),
            now,
            &channel,
            mail.sender.clone(),
            subject,
            "zh",
        );
        let history = MemoryHistory::default();
        let last = evaluate(&policy, &case, &Input::NewComplaint(&mail), &history, now).actions;
        apply(&mut case, &last, now);
        Timeline {
            policy,
            case,
            history,
            last,
        }
    }

    /// A lifecycle event; `state` is the state it puts the case in, if any.
    fn event(&mut self, event: ClockEvent, state: Option<CaseState>, moment: &str) -> &mut Self {
        if let Some(state) = state {
            self.case.state = state;
        }
        let now = at(moment);
        self.last = evaluate(
            &self.policy,
            &self.case,
            &Input::Lifecycle(event),
            &self.history,
            now,
        )
        .actions;
        apply(&mut self.case, &self.last, now);
        self
    }

    /// The department decides responsibility (`responsibility: ours|not-ours`).
    fn decide(&mut self, responsibility: &str, moment: &str) -> &mut Self {
        self.case.fields.insert(
            "responsibility".to_owned(),
            FieldValue::Name(responsibility.to_owned()),
        );
        self.event(ClockEvent::ResponsibilityDecided, None, moment)
    }

    /// Due time of a deadline, local China time.
    fn due(&self, deadline: &str) -> String {
        let clock = self
            .case
            .clocks
            .get(deadline)
            .unwrap_or_else(|| panic!("the clock {deadline} did not start"));
        china(clock.due)
    }

    /// Whether a deadline's clock stopped by its due time (`None`: running).
    fn met(&self, deadline: &str) -> Option<bool> {
        let clock = self.case.clocks.get(deadline)?;
        clock.stopped_at.map(|stopped| stopped <= clock.due)
    }

    fn severity(&self) -> Option<&str> {
        self.case.severity()
    }

    /// Escalation step timers the last evaluation scheduled for `deadline`.
    fn step_times(&self, deadline: &str) -> Vec<(usize, String)> {
        self.last
            .iter()
            .filter_map(|action| match action {
                Action::ScheduleTimer {
                    deadline: d,
                    kind: TimerKind::Step(step),
                    fire_at,
                    ..
                } if d == deadline => Some((*step, china(*fire_at))),
                _ => None,
            })
            .collect()
    }

    /// Delivers the timer of step `step` at `moment`; returns the mail it
    /// sends as (template, recipients), or `None` when the step was skipped.
    fn fire_step(
        &mut self,
        deadline: &str,
        step: usize,
        moment: &str,
    ) -> Option<(String, Vec<String>)> {
        let now = at(moment);
        self.last = evaluate(
            &self.policy,
            &self.case,
            &Input::Timer {
                deadline,
                kind: TimerKind::Step(step),
            },
            &self.history,
            now,
        )
        .actions;
        apply(&mut self.case, &self.last, now);
        self.last.iter().find_map(|action| match action {
            Action::FireStep {
                template,
                recipients,
                ..
            } => Some((
                template.clone(),
                recipients.iter().map(|r| r.address.clone()).collect(),
            )),
            _ => None,
        })
    }
}

// ----- gas: the channel × class table of appendix 3 -----

/// One row of appendix 3: channel, a complaint, the class it gets, and the
/// investigate, handle, follow-up and appeal limits in natural days.
struct GasRow {
    channel: &'static str,
    body: &'static str,
    severity: &'static str,
    investigate: &'static str,
    handle: &'static str,
    follow_up: &'static str,
    appeal: &'static str,
}

/// Received Tue 11-24 10:00, forwarded 10:05, responsibility decided 15:00,
/// resolved 16:00, answered 16:30: each limit counts from its own event.
#[test]
fn gas_appendix_3_table_by_channel_and_class() {
    let rows = [
        GasRow {
            channel: "hotline",
            body: "楼道里有燃气味",
            severity: "major",
            investigate: "2026-11-25T10:05:00+08:00",
            handle: "2026-11-25T15:00:00+08:00",
            follow_up: "2026-11-26T16:30:00+08:00",
            appeal: "2026-11-26T15:00:00+08:00",
        },
        GasRow {
            channel: "hotline",
            body: "营业厅排队太久",
            severity: "general",
            investigate: "2026-11-26T10:05:00+08:00",
            handle: "2026-11-26T15:00:00+08:00",
            follow_up: "2026-11-26T16:30:00+08:00",
            appeal: "2026-11-26T15:00:00+08:00",
        },
        GasRow {
            channel: "own",
            body: "楼道里有燃气味",
            severity: "major",
            investigate: "2026-11-26T10:05:00+08:00",
            handle: "2026-11-26T15:00:00+08:00",
            follow_up: "2026-11-26T16:30:00+08:00",
            appeal: "2026-11-27T15:00:00+08:00",
        },
        GasRow {
            channel: "own",
            body: "营业厅排队太久",
            severity: "general",
            investigate: "2026-11-27T10:05:00+08:00",
            handle: "2026-11-27T15:00:00+08:00",
            follow_up: "2026-11-27T16:30:00+08:00",
            appeal: "2026-11-27T15:00:00+08:00",
        },
        // Government referrals: the strictest row stands in for the
        // referring body's own deadline.
        GasRow {
            channel: "government",
            body: "营业厅排队太久",
            severity: "major",
            investigate: "2026-11-25T10:05:00+08:00",
            handle: "2026-11-25T15:00:00+08:00",
            follow_up: "2026-11-26T16:30:00+08:00",
            appeal: "2026-11-26T15:00:00+08:00",
        },
    ];
    for row in rows {
        let label = format!("{} / {}", row.channel, row.severity);
        let mut case = Timeline::complaint(
            "gas",
            Some(row.channel),
            "2026-11-24T10:00:00+08:00",
            "投诉",
            row.body,
        );
        assert_eq!(case.severity(), Some(row.severity), "{label}");
        case.event(
            ClockEvent::Forwarded,
            Some(CaseState::Assigned),
            "2026-11-24T10:05:00+08:00",
        );
        case.decide("ours", "2026-11-24T15:00:00+08:00");
        case.event(
            ClockEvent::Resolved,
            Some(CaseState::Resolved),
            "2026-11-24T16:00:00+08:00",
        );
        case.event(
            ClockEvent::Answered,
            Some(CaseState::Answered),
            "2026-11-24T16:30:00+08:00",
        );
        assert_eq!(case.due("investigate"), row.investigate, "{label}");
        assert_eq!(case.due("handle"), row.handle, "{label}");
        assert_eq!(case.due("follow_up"), row.follow_up, "{label}");
        assert_eq!(case.due("appeal"), row.appeal, "{label}");
        // 附件2 说明4: the office reviews the feedback within 3 days.
        assert_eq!(case.due("review"), "2026-11-27T16:00:00+08:00", "{label}");
        assert_eq!(case.met("investigate"), Some(true), "{label}");
        assert_eq!(case.met("handle"), Some(true), "{label}");
        assert_eq!(case.met("review"), Some(true), "{label}");
    }
}

/// 5.3.2: a department that has not reported by the investigation's due
/// time gets the supervision notice, and so does its manager.
#[test]
fn gas_supervision_notice_when_the_investigation_is_late() {
    let mut case = Timeline::complaint(
        "gas",
        Some("own"),
        "2026-11-24T10:00:00+08:00",
        "投诉",
        "营业厅排队太久",
    );
    case.event(
        ClockEvent::Forwarded,
        Some(CaseState::Assigned),
        "2026-11-24T10:05:00+08:00",
    );
    assert_eq!(case.due("investigate"), "2026-11-27T10:05:00+08:00");
    assert_eq!(
        case.step_times("investigate")[..2],
        [
            (0, "2026-11-25T22:05:00+08:00".to_owned()),
            (1, "2026-11-27T10:05:00+08:00".to_owned()),
        ]
    );
    let reminder = case.fire_step("investigate", 0, "2026-11-25T22:05:00+08:00");
    assert_eq!(
        reminder,
        Some((
            "reminder".to_owned(),
            vec!["service@gas.example".to_owned()]
        ))
    );
    let notice = case.fire_step("investigate", 1, "2026-11-27T10:05:00+08:00");
    assert_eq!(
        notice,
        Some((
            "supervision".to_owned(),
            vec![
                "service@gas.example".to_owned(),
                "service-lead@gas.example".to_owned()
            ]
        ))
    );
}

// ----- developer -----

/// 5.2.5: four office hours from the forward. Friday 15:40 has 2 h 20 min
/// until 18:00; the other 1 h 40 min run from Monday 09:00.
#[test]
fn developer_departments_answer_within_four_office_hours() {
    let mut case = Timeline::complaint(
        "developer",
        Some("email"),
        "2026-11-27T15:30:00+08:00",
        "漏水",
        "卫生间漏水",
    );
    case.event(
        ClockEvent::Forwarded,
        Some(CaseState::Assigned),
        "2026-11-27T15:40:00+08:00",
    );
    assert_eq!(case.due("answer"), "2026-11-30T10:40:00+08:00");
    case.event(
        ClockEvent::Accepted,
        Some(CaseState::Accepted),
        "2026-11-30T09:30:00+08:00",
    );
    assert_eq!(case.met("answer"), Some(true));
}

/// 5.5.1: unresolved after a week (for reasons on our side) is hot, after
/// 30 days major; each upgrade sends the notice of 5.5.2.3 / 5.5.2.4.
#[test]
fn developer_unresolved_complaints_become_hot_then_major() {
    let mut case = Timeline::complaint(
        "developer",
        Some("email"),
        "2026-11-02T10:00:00+08:00",
        "门窗",
        "门窗关不严",
    );
    assert_eq!(case.severity(), Some("general"));
    assert_eq!(case.due("resolution"), "2026-12-02T10:00:00+08:00");
    let steps = case.step_times("resolution");
    assert_eq!(steps[0], (0, "2026-11-09T10:00:00+08:00".to_owned()));
    assert_eq!(steps[1], (1, "2026-12-02T10:00:00+08:00".to_owned()));
    let notice = vec![
        "kefu@developer.example".to_owned(),
        "zongjingli@developer.example".to_owned(),
        "jituan-kehu@group.example".to_owned(),
    ];
    let week = case.fire_step("resolution", 0, "2026-11-09T10:00:00+08:00");
    assert_eq!(week, Some(("escalation_notice".to_owned(), notice.clone())));
    assert_eq!(case.severity(), Some("hot"));
    let month = case.fire_step("resolution", 1, "2026-12-02T10:00:00+08:00");
    assert_eq!(month, Some(("escalation_notice".to_owned(), notice)));
    assert_eq!(case.severity(), Some("major"));
}

#[test]
fn developer_complaints_not_our_fault_are_not_upgraded() {
    let mut case = Timeline::complaint(
        "developer",
        Some("email"),
        "2026-11-02T10:00:00+08:00",
        "门窗",
        "门窗关不严",
    );
    case.event(
        ClockEvent::Forwarded,
        Some(CaseState::Assigned),
        "2026-11-02T10:00:00+08:00",
    );
    case.decide("not_ours", "2026-11-03T10:00:00+08:00");
    assert_eq!(
        case.fire_step("resolution", 0, "2026-11-09T10:00:00+08:00"),
        None
    );
    assert_eq!(case.severity(), Some("general"));
}

/// 4.1.2: a major complaint gets a 24-hour clock; one not yet worked on
/// when it is due is reported to the centre's manager; one in progress
/// stops the clock (met); an ordinary complaint has no such clock.
#[test]
fn developer_major_complaints_get_a_first_answer_within_24_hours() {
    let lawsuit = "已向法院起诉，墙体开裂";
    let mut waiting = Timeline::complaint(
        "developer",
        Some("email"),
        "2026-11-24T10:00:00+08:00",
        "诉讼",
        lawsuit,
    );
    assert_eq!(waiting.severity(), Some("major"));
    assert_eq!(waiting.due("major_answer"), "2026-11-25T10:00:00+08:00");
    assert_eq!(
        waiting.step_times("major_answer"),
        [(0, "2026-11-25T10:00:00+08:00".to_owned())]
    );
    waiting.event(
        ClockEvent::Forwarded,
        Some(CaseState::Assigned),
        "2026-11-24T10:00:00+08:00",
    );
    assert_eq!(
        waiting.fire_step("major_answer", 0, "2026-11-25T10:00:00+08:00"),
        Some((
            "major_first_answer".to_owned(),
            vec!["kefu-head@developer.example".to_owned()]
        ))
    );

    let mut working = Timeline::complaint(
        "developer",
        Some("email"),
        "2026-11-24T10:00:00+08:00",
        "诉讼",
        lawsuit,
    );
    working.event(
        ClockEvent::Contacted,
        Some(CaseState::InProgress),
        "2026-11-24T16:00:00+08:00",
    );
    assert_eq!(working.met("major_answer"), Some(true));

    let ordinary = Timeline::complaint(
        "developer",
        Some("email"),
        "2026-11-24T10:00:00+08:00",
        "投诉",
        "墙体开裂",
    );
    assert_ne!(ordinary.severity(), Some("major"));
    assert!(!ordinary.case.clocks.contains_key("major_answer"));
}

#[test]
fn developer_report_schedules() {
    let policy = policy_of("developer");
    let after = Shanghai.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
    let next = |name: &str| {
        let first = policy.crons[name].after(&after).next().expect("a next run");
        china(first.with_timezone(&Utc))
    };
    assert_eq!(next("weekly_majors"), "2026-11-30T09:00:00+08:00");
    assert_eq!(next("half_monthly"), "2026-12-18T09:00:00+08:00");
    assert_eq!(next("monthly"), "2026-12-03T09:00:00+08:00");
    assert_eq!(next("quarterly"), "2027-01-03T09:00:00+08:00");
}

// ----- tourism -----

/// 二.1 review ends with filing; 三.2 the respondent's 10 days run from
/// filing; 五.4 the 60-day window from the decision.
#[test]
fn tourism_respondent_answer_and_reconsideration_window() {
    let mut case = Timeline::complaint(
        "tourism",
        Some("written"),
        "2026-11-24T10:00:00+08:00",
        "旅行社",
        "旅行社擅自取消景点，要求赔偿",
    );
    assert_eq!(case.due("acceptance"), "2026-12-01T10:00:00+08:00");
    case.event(
        ClockEvent::Forwarded,
        Some(CaseState::Assigned),
        "2026-11-24T10:00:00+08:00",
    );
    case.event(
        ClockEvent::Accepted,
        Some(CaseState::Accepted),
        "2026-11-26T10:00:00+08:00",
    );
    assert_eq!(case.met("acceptance"), Some(true));
    assert_eq!(case.due("respondent_answer"), "2026-12-06T10:00:00+08:00");
    assert_eq!(
        case.fire_step("respondent_answer", 0, "2026-12-06T10:00:00+08:00"),
        Some((
            "respondent_overdue".to_owned(),
            vec!["tousu@tourism.example".to_owned()]
        ))
    );
    case.event(
        ClockEvent::Resolved,
        Some(CaseState::Resolved),
        "2027-01-04T10:00:00+08:00",
    );
    case.event(
        ClockEvent::Answered,
        Some(CaseState::Answered),
        "2027-01-05T10:00:00+08:00",
    );
    assert_eq!(case.due("reconsideration"), "2027-03-06T10:00:00+08:00");
}

/// 七.1: a deposit case is concluded within 60 natural days of filing:
/// from Thursday 11-26 10:00, 4 days to 11-30, 31 in December (35), 25 in
/// January → 2027-01-25 10:00, the reminder 10 days before (01-15). A
/// complaint without a money claim has no such clock.
#[test]
fn tourism_deposit_cases_are_concluded_within_60_days() {
    let mut deposit = Timeline::complaint(
        "tourism",
        Some("written"),
        "2026-11-24T10:00:00+08:00",
        "旅行社",
        "旅行社擅自取消景点，要求赔偿损失800元",
    );
    assert!(deposit.case.tags.contains("deposit_claim"));
    deposit.event(
        ClockEvent::Forwarded,
        Some(CaseState::Assigned),
        "2026-11-24T10:00:00+08:00",
    );
    deposit.event(
        ClockEvent::Accepted,
        Some(CaseState::Accepted),
        "2026-11-26T10:00:00+08:00",
    );
    assert_eq!(
        deposit.due("deposit_conclusion"),
        "2027-01-25T10:00:00+08:00"
    );
    assert_eq!(
        deposit.step_times("deposit_conclusion"),
        [
            (0, "2027-01-15T10:00:00+08:00".to_owned()),
            (1, "2027-01-25T10:00:00+08:00".to_owned()),
        ]
    );
    deposit.event(
        ClockEvent::Resolved,
        Some(CaseState::Resolved),
        "2027-01-04T10:00:00+08:00",
    );
    assert_eq!(deposit.met("deposit_conclusion"), Some(true));

    let mut guide = Timeline::complaint(
        "tourism",
        Some("oral"),
        "2026-11-24T10:00:00+08:00",
        "导游",
        "导游态度恶劣，强迫进购物店",
    );
    assert!(!guide.case.tags.contains("deposit_claim"));
    guide.event(
        ClockEvent::Forwarded,
        Some(CaseState::Assigned),
        "2026-11-24T10:00:00+08:00",
    );
    guide.event(
        ClockEvent::Accepted,
        Some(CaseState::Accepted),
        "2026-11-26T10:00:00+08:00",
    );
    assert!(guide.case.clocks.contains_key("respondent_answer"));
    assert!(!guide.case.clocks.contains_key("deposit_conclusion"));
}

// ----- hospital -----

/// 六: a medical dispute's result is reported within 10 working days of the
/// end of handling; 制度(九): other complaints are filed within 15. From
/// Wednesday 12-02 10:00: 12-03, 12-04, 12-07 … 12-11, 12-14 … 12-16 (10),
/// then 12-17, 12-18, 12-21 … 12-23 (15).
#[test]
fn hospital_result_report_after_resolution() {
    for (body, due) in [
        ("医生误诊", "2026-12-16T10:00:00+08:00"),
        ("住院费用多收", "2026-12-23T10:00:00+08:00"),
    ] {
        let mut case = Timeline::complaint(
            "hospital",
            Some("written"),
            "2026-11-24T10:00:00+08:00",
            "投诉",
            body,
        );
        case.event(
            ClockEvent::Resolved,
            Some(CaseState::Resolved),
            "2026-12-02T10:00:00+08:00",
        );
        assert_eq!(case.due("result_report"), due, "{body}");
    }
}

/// 一.3: the report to the health authority within 12 hours, for serious
/// events only: a real clock due 12 elapsed hours after arrival, reminders
/// at once and after 10 hours, the overdue notice at the due time. Ordinary
/// cases have no such clock.
#[test]
fn hospital_health_authority_report_for_serious_events_only() {
    let mut serious = Timeline::complaint(
        "hospital",
        Some("oral"),
        "2026-11-24T10:00:00+08:00",
        "投诉",
        "患者术后抢救无效死亡",
    );
    assert_eq!(serious.severity(), Some("major"));
    assert_eq!(serious.due("regulator_report"), "2026-11-24T22:00:00+08:00");
    assert_eq!(
        serious.step_times("regulator_report"),
        [
            (0, "2026-11-24T10:01:00+08:00".to_owned()),
            (1, "2026-11-24T20:00:00+08:00".to_owned()),
            (2, "2026-11-24T22:00:00+08:00".to_owned()),
        ]
    );
    let leaders = vec![
        "yiwu-head@hospital.example".to_owned(),
        "yuanban@hospital.example".to_owned(),
    ];
    assert_eq!(
        serious.fire_step("regulator_report", 0, "2026-11-24T10:01:00+08:00"),
        Some(("regulator_report".to_owned(), leaders.clone()))
    );
    assert_eq!(
        serious.fire_step("regulator_report", 1, "2026-11-24T20:00:00+08:00"),
        Some(("regulator_report".to_owned(), leaders.clone()))
    );
    assert_eq!(
        serious.fire_step("regulator_report", 2, "2026-11-24T22:00:00+08:00"),
        Some(("overdue".to_owned(), leaders))
    );

    let ordinary = Timeline::complaint(
        "hospital",
        Some("oral"),
        "2026-11-24T10:00:00+08:00",
        "投诉",
        "医生误诊",
    );
    assert!(!ordinary.case.clocks.contains_key("regulator_report"));
    assert!(ordinary.step_times("regulator_report").is_empty());
}

// ----- credit union -----

/// 第十九条: a withdrawal stops the reply clock and sends the office the
/// verification task at once.
#[test]
fn credit_union_withdrawal_is_checked() {
    let mut case = Timeline::complaint(
        "credit_union",
        Some("letter"),
        "2026-11-24T10:00:00+08:00",
        "投诉",
        "柜员态度冷漠",
    );
    case.event(
        ClockEvent::Withdrawn,
        Some(CaseState::Withdrawn),
        "2026-11-25T10:00:00+08:00",
    );
    assert_eq!(case.met("reply"), Some(true));
    assert_eq!(case.due("withdrawal"), "2026-11-30T10:00:00+08:00");
    assert_eq!(
        case.step_times("withdrawal"),
        [(0, "2026-11-25T10:01:00+08:00".to_owned())]
    );
    assert_eq!(
        case.fire_step("withdrawal", 0, "2026-11-25T10:01:00+08:00"),
        Some((
            "withdrawal_check".to_owned(),
            vec!["office@cu.example".to_owned()]
        ))
    );
}

/// 第十一条: complex complaints are reminded at 7 of their 10 working days;
/// general complaints (3 working days) are not.
#[test]
fn credit_union_complex_complaints_are_reminded_after_seven_working_days() {
    let mut complex = Timeline::complaint(
        "credit_union",
        Some("letter"),
        "2026-11-24T10:00:00+08:00",
        "投诉",
        "贷款利息算法有疑问",
    );
    assert_eq!(complex.due("reply"), "2026-12-08T10:00:00+08:00");
    assert_eq!(
        complex.step_times("reply")[0],
        (0, "2026-12-03T10:00:00+08:00".to_owned())
    );
    assert_eq!(
        complex.fire_step("reply", 0, "2026-12-03T10:00:00+08:00"),
        Some((
            "reminder".to_owned(),
            vec!["products@cu.example".to_owned()]
        ))
    );

    let mut general = Timeline::complaint(
        "credit_union",
        Some("letter"),
        "2026-11-24T10:00:00+08:00",
        "投诉",
        "柜员态度冷漠",
    );
    assert_eq!(general.due("reply"), "2026-11-27T10:00:00+08:00");
    assert_eq!(
        general.fire_step("reply", 0, "2026-12-03T10:00:00+08:00"),
        None
    );
}

// ----- mall -----

/// 二(二)2: the team leader's 15 minutes, the floor's 30, then 商管部's hour.
#[test]
fn mall_ladder_on_a_floor() {
    let mut case = Timeline::complaint(
        "mall",
        Some("in_person"),
        "2026-11-24T15:00:00+08:00",
        "投诉",
        "2楼专柜不给退货",
    );
    assert_eq!(
        case.step_times("ladder"),
        [
            (0, "2026-11-24T15:15:00+08:00".to_owned()),
            (1, "2026-11-24T15:30:00+08:00".to_owned()),
            (2, "2026-11-24T16:30:00+08:00".to_owned()),
        ]
    );
    assert_eq!(
        case.fire_step("ladder", 0, "2026-11-24T15:15:00+08:00"),
        Some((
            "ladder".to_owned(),
            vec!["floor2-duty@mall.example".to_owned()]
        ))
    );
    assert_eq!(
        case.fire_step("ladder", 1, "2026-11-24T15:30:00+08:00"),
        Some((
            "ladder".to_owned(),
            vec![
                "floor2-manager@mall.example".to_owned(),
                "shangguan@mall.example".to_owned()
            ]
        ))
    );
    assert_eq!(
        case.fire_step("ladder", 2, "2026-11-24T16:30:00+08:00"),
        Some((
            "ladder".to_owned(),
            vec!["shangguan-manager@mall.example".to_owned()]
        ))
    );
}

/// A call that starts at 商管部 skips the floor's rungs: one hour, then the
/// department manager.
#[test]
fn mall_ladder_from_the_mall_office() {
    let mut case = Timeline::complaint(
        "mall",
        Some("call"),
        "2026-11-24T15:00:00+08:00",
        "投诉",
        "收银员态度差",
    );
    assert_eq!(case.due("ladder"), "2026-11-24T16:00:00+08:00");
    assert_eq!(
        case.fire_step("ladder", 0, "2026-11-24T15:15:00+08:00"),
        None
    );
    assert_eq!(
        case.fire_step("ladder", 1, "2026-11-24T15:30:00+08:00"),
        None
    );
    assert_eq!(
        case.fire_step("ladder", 2, "2026-11-24T16:00:00+08:00"),
        Some((
            "ladder".to_owned(),
            vec!["shangguan-manager@mall.example".to_owned()]
        ))
    );
}

/// 二(二)4: the three month-end schedules together run once a month, on its
/// last day at 17:00, throughout 2026.
#[test]
fn mall_month_end_schedules_hit_every_last_day_of_2026() {
    let policy = policy_of("mall");
    let start = Shanghai.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let end = Shanghai.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap();
    let mut runs: Vec<String> = ["month_end_31", "month_end_30", "month_end_feb"]
        .iter()
        .flat_map(|name| {
            policy.crons[*name]
                .after(&start)
                .take_while(|t| *t < end)
                .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    runs.sort();
    let last_days: Vec<String> = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
        .iter()
        .enumerate()
        .map(|(month, day)| format!("2026-{:02}-{day:02} 17:00", month + 1))
        .collect();
    assert_eq!(runs, last_days);
}

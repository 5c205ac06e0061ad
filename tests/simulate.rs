//! `complaintd simulate` end to end: the built binary runs the timelines of
//! `tests/fixtures/timelines/` on the default policy (`rules/`) and its
//! output is compared with the `.expected` file beside each timeline; the
//! library's `Simulation` is used where a test looks into the store.

use std::path::Path;
use std::process::Command;

use chrono::{DateTime, Utc};
use complaintd::case::{CaseId, EventKind};
use complaintd::simulate::{
    load_timeline, parse_timeline, render_text, LogEntry, LogLine, Simulation,
};

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

fn simulate(timeline: &str, json: bool) -> Run {
    let path = format!("tests/fixtures/timelines/{timeline}.toml");
    let mut args = vec!["simulate", "--rules", "rules", "--timeline", &path];
    if json {
        args.push("--json");
    }
    complaintd(&args)
}

fn expected(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/timelines")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Compares line by line first, so a failure names the first line that differs.
fn assert_output(actual: &str, expected: &str) {
    for (number, (a, e)) in actual.lines().zip(expected.lines()).enumerate() {
        assert_eq!(a, e, "line {} differs", number + 1);
    }
    assert_eq!(actual, expected);
}

/// Runs a fixture timeline successfully and checks it against its `.expected` file.
fn simulate_as_expected(timeline: &str) -> String {
    let run = simulate(timeline, false);
    assert_eq!(run.stderr, "", "{timeline}");
    assert_eq!(run.code, 0, "{timeline}");
    assert_output(&run.stdout, &expected(&format!("{timeline}.expected")));
    run.stdout
}

fn lines_with<'a>(output: &'a str, needle: &str) -> Vec<&'a str> {
    output.lines().filter(|l| l.contains(needle)).collect()
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("test time")
        .with_timezone(&Utc)
}

#[test]
fn working_time_deadlines_cross_national_day_and_the_make_up_saturday() {
    let out = simulate_as_expected("national-day");
    // Wednesday 17:50 is after closing: one working hour is counted from
    // the first opening after the holiday.
    assert_eq!(
        lines_with(&out, "TS-2026-000001  clock forward started"),
        [
            "2026-09-30 17:50 +08:00  TS-2026-000001  clock forward started, due 2026-10-08 09:30 \
          (counted 1 working hour (Asia/Shanghai): 2026-10-08 08:30–09:30; skipped holiday \
          2026-10-01..07 国庆节)  (deadline forward, rules/30-deadlines.rules:18:18)"
        ]
    );
    // Natural days count the holiday; one working day after a due time in
    // the holiday is the close of business of the first working day after it.
    assert_eq!(
        lines_with(&out, "TS-2026-000001  escalation"),
        [
            "2026-10-01 17:50 +08:00  TS-2026-000001  escalation investigate step #1 (reminder) → service-office@gas.example  (escalate investigate #1, rules/30-deadlines.rules:57:5)",
            "2026-10-02 17:50 +08:00  TS-2026-000001  escalation investigate step #2 (supervision) → service-office@gas.example, gm@gas.example  (escalate investigate #2, rules/30-deadlines.rules:58:5)",
            "2026-10-08 17:30 +08:00  TS-2026-000001  escalation investigate step #3 (overdue) → gm@gas.example  (escalate investigate #3, rules/30-deadlines.rules:59:5)",
        ]
    );
    // Due Friday 17:50, after closing: the next working day is the make-up Saturday.
    assert_eq!(
        lines_with(&out, "TS-2026-000002  escalation investigate step #3"),
        ["2026-10-10 17:30 +08:00  TS-2026-000002  escalation investigate step #3 (overdue) → gm@gas.example  (escalate investigate #3, rules/30-deadlines.rules:59:5)"]
    );
    // Twenty minutes on Friday, forty on the make-up Saturday.
    assert!(out.contains(
        "2026-10-09 17:10 +08:00  TS-2026-000003  clock forward started, due 2026-10-10 09:10 \
         (counted 1 working hour (Asia/Shanghai): 2026-10-09 17:10–17:30, 2026-10-10 08:30–09:10; \
         worked make-up day 2026-10-10)"
    ));
}

#[test]
fn the_escalation_ladder_fires_each_rung_once_at_its_time() {
    let out = simulate_as_expected("escalation-ladder");
    assert_eq!(
        lines_with(&out, "escalation investigate"),
        [
            "2026-11-25 10:00 +08:00  TS-2026-000001  escalation investigate step #1 (reminder) → service-office@gas.example  (escalate investigate #1, rules/30-deadlines.rules:57:5)",
            "2026-11-26 10:00 +08:00  TS-2026-000001  escalation investigate step #2 (supervision) → service-office@gas.example, gm@gas.example  (escalate investigate #2, rules/30-deadlines.rules:58:5)",
            "2026-11-27 10:00 +08:00  TS-2026-000001  escalation investigate step #3 (overdue) → gm@gas.example  (escalate investigate #3, rules/30-deadlines.rules:59:5)",
        ]
    );
    assert_eq!(lines_with(&out, "clock investigate breached").len(), 1);

    // The outbox holds exactly one mail per rung.
    let timeline =
        load_timeline(Path::new("tests/fixtures/timelines/escalation-ladder.toml")).unwrap();
    let mut simulation = Simulation::start(Path::new("rules"), timeline).unwrap();
    simulation.run(&mut |_| Ok(())).unwrap();
    let case = CaseId("TS-2026-000001".into());
    let ids: Vec<String> = simulation
        .engine()
        .store()
        .outbox_of_case(&case)
        .unwrap()
        .into_iter()
        .map(|entry| entry.id)
        .collect();
    assert_eq!(
        ids,
        [
            "TS-2026-000001.ack.1",
            "TS-2026-000001.forward.1",
            "TS-2026-000001.forward.2",
            "TS-2026-000001.forward.3",
            "TS-2026-000001.overdue.1",
            "TS-2026-000001.reminder.1",
            "TS-2026-000001.supervision.1",
        ]
    );
    assert!(simulation
        .engine()
        .store()
        .timers_of_case(&case)
        .unwrap()
        .is_empty());
}

/// The lines of a timeline run through the library, rendered as text.
fn run_lines(text: &str) -> Vec<String> {
    let timeline = parse_timeline(text, Path::new("inline.toml"), Path::new(".")).unwrap();
    let mut simulation = Simulation::start(Path::new("rules"), timeline).unwrap();
    let zone = simulation.zone();
    let mut lines = Vec::new();
    simulation
        .run(&mut |line: &LogLine| {
            lines.push(render_text(line, zone));
            Ok(())
        })
        .unwrap();
    lines
}

#[test]
fn escalations_happen_at_their_times_however_the_clock_is_stepped() {
    let complaint = r#"
        [[step]]
        at = "2026-11-24T10:00:00+08:00"
        from = "sun@example.com"
        subject = "维修拖延"
        body = "我已经联系了报社记者。"
    "#;
    let one_move = format!("{complaint}\n[[step]]\nuntil = \"2026-11-28T00:00:00+08:00\"\n");
    let mut many_moves = complaint.to_owned();
    for _ in 0..(4 * 24 - 10) {
        many_moves.push_str("\n[[step]]\nadvance = \"1h\"\n");
    }
    many_moves.push_str("\n[[step]]\nuntil = \"2026-11-28T00:00:00+08:00\"\n");
    let one = run_lines(&one_move);
    let many = run_lines(&many_moves);
    assert_eq!(one, many);
    let escalations: Vec<&String> = one.iter().filter(|l| l.contains("escalation")).collect();
    assert_eq!(escalations.len(), 3, "{one:#?}");
    assert!(escalations[0].starts_with("2026-11-25 10:00 +08:00"));
    assert!(escalations[1].starts_with("2026-11-26 10:00 +08:00"));
    assert!(escalations[2].starts_with("2026-11-27 10:00 +08:00"));
}

#[test]
fn customer_replies_are_threaded_to_their_case() {
    let out = simulate_as_expected("customer-reply");
    assert_eq!(
        lines_with(&out, "mail received (customer)"),
        [
            "2026-11-24 10:00 +08:00  TS-2026-000001  mail received (customer) from wang@example.com \"账单有误\" <step1.timeline@example.com>",
            "2026-11-24 12:00 +08:00  TS-2026-000001  mail received (customer) from wang@example.com \"Re: [TS-2026-000001] 您的投诉已受理\" <step2.timeline@example.com>",
            "2026-11-24 12:30 +08:00  TS-2026-000001  mail received (customer) from wang@example.com \"关于 [TS-2026-000001] 的补充\" <step3.timeline@example.com>",
        ]
    );
    assert_eq!(lines_with(&out, "case opened").len(), 1);
}

#[test]
fn json_lines_carry_the_same_log() {
    let run = simulate("customer-reply", true);
    assert_eq!(run.stderr, "");
    assert_eq!(run.code, 0);
    assert_output(&run.stdout, &expected("customer-reply.expected.jsonl"));
    let text = simulate("customer-reply", false).stdout;
    assert_eq!(run.stdout.lines().count(), text.lines().count());
    let mut previous = String::new();
    for line in run.stdout.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).expect("one JSON object per line");
        let at = value["at"].as_str().expect("at").to_owned();
        assert!(at.ends_with("+08:00"), "{at}");
        assert!(at >= previous, "time order: {at} after {previous}");
        assert!(value["event"].is_string(), "{line}");
        previous = at;
    }
}

#[test]
fn a_department_answers_through_the_token_of_its_forward() {
    let out = simulate_as_expected("department-reply");
    assert_eq!(
        lines_with(&out, "mail received (department)"),
        [
            "2026-11-24 13:00 +08:00  TS-2026-000001  mail received (department) from network@gas.example \"Re: [TS-2026-000001] 转派：楼道里有燃气味\" <answer-1@gas.example>",
            "2026-11-24 14:00 +08:00  TS-2026-000001  mail received (department) from service-office@gas.example \"Re: [TS-2026-000001] 转派：楼道里有燃气味\" <step3.timeline@gas.example>",
        ]
    );
    assert_eq!(
        lines_with(&out, "security alert"),
        ["2026-11-24 15:00 +08:00  TS-2026-000001  security alert: mallory@elsewhere.example: valid reply token, but mallory@elsewhere.example is not an address of department network"]
    );
}

#[test]
fn the_same_inputs_print_the_same_bytes() {
    for timeline in [
        "national-day",
        "escalation-ladder",
        "customer-reply",
        "department-reply",
    ] {
        for json in [false, true] {
            let first = simulate(timeline, json);
            let second = simulate(timeline, json);
            assert_eq!(first.code, 0, "{timeline}: {}", first.stderr);
            assert!(!first.stdout.is_empty(), "{timeline}");
            assert_eq!(first.stdout, second.stdout, "{timeline} json={json}");
        }
    }
}

#[test]
fn a_broken_policy_is_reported_and_nothing_runs() {
    let run = complaintd(&[
        "simulate",
        "--rules",
        "tests/fixtures/rules/broken",
        "--timeline",
        "tests/fixtures/timelines/customer-reply.toml",
    ]);
    assert_eq!(run.code, 1);
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.contains(
            "error: unknown category `biling`\n --> tests/fixtures/rules/broken/policy.rules:7:22"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.ends_with(
            "error: the policy in tests/fixtures/rules/broken has errors; nothing was simulated\n"
        ),
        "{}",
        run.stderr
    );
}

/// Runs the binary on a timeline written to a temporary file.
fn simulate_text(timeline: &str) -> (Run, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("timeline.toml");
    std::fs::write(&path, timeline).unwrap();
    let path = path.to_str().unwrap().to_owned();
    let run = complaintd(&["simulate", "--rules", "rules", "--timeline", &path]);
    (run, path)
}

#[test]
fn timeline_mistakes_name_the_step_and_the_key() {
    let (run, path) = simulate_text(
        "[[step]]\nat = \"2026-11-24T10:00:00+08:00\"\nfrom = \"a@example.com\"\n\n\
         [[step]]\nafter = \"2 hourz\"\nreply_to_acknowledgement = 1\n",
    );
    assert_eq!(run.code, 1);
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        format!(
            "error: {path}: step 2: `after`: `2 hourz` is not a duration such as \"2h\", \
             \"90 minutes\" or \"3 days\" (unknown unit `hourz`)\n"
        )
    );

    let (run, path) = simulate_text(
        "[[step]]\nat = \"2026-11-24T10:00:00+08:00\"\nfrom = \"a@example.com\"\nchannel = \"hotlin\"\n",
    );
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stderr,
        format!(
            "error: {path}: step 1: `channel`: unknown channel `hotlin` (did you mean `hotline`?); \
             declared: own, hotline, government\n"
        )
    );

    let (run, path) = simulate_text(
        "[[step]]\nat = \"2026-11-24T10:00:00+08:00\"\nreply_to_forward = 1\ndepartment = \"netwrk\"\n",
    );
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stderr,
        format!(
            "error: {path}: step 1: `department`: unknown department `netwrk` (did you mean `network`?); \
             declared: service, network, billing_dept, office\n"
        )
    );

    let run = complaintd(&[
        "simulate",
        "--timeline",
        "tests/fixtures/timelines/no-such-timeline.toml",
    ]);
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stderr,
        "error: tests/fixtures/timelines/no-such-timeline.toml: cannot read the timeline: \
         No such file or directory (os error 2)\n"
    );
}

#[test]
fn a_reply_to_a_case_that_does_not_exist_stops_the_run_where_it_is() {
    let (run, path) = simulate_text(
        "[[step]]\nat = \"2026-11-24T10:00:00+08:00\"\nfrom = \"a@example.com\"\nsubject = \"x\"\n\n\
         [[step]]\nafter = \"1h\"\nreply_to_forward = 2\n",
    );
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stderr,
        format!(
            "error: {path}: step 2: `reply_to_forward`: there is no case #2: \
             the simulation has opened 1 case(s) so far\n"
        )
    );
    // What ran before the failing step is printed.
    assert!(run
        .stdout
        .starts_with("2026-11-24 10:00 +08:00  TS-2026-000001  case opened"));
    assert!(run
        .stdout
        .lines()
        .all(|l| l.starts_with("2026-11-24 10:00 +08:00")));
}

#[test]
fn mail_that_belongs_to_no_case_is_shown_without_one() {
    let (run, _) = simulate_text(
        "[[step]]\nat = \"2026-11-24T10:00:00+08:00\"\nfrom = \"a@example.com\"\nsubject = \"x\"\n\n\
         [[step]]\nafter = \"1h\"\nfrom = \"mailer@example.com\"\nsubject = \"Out of office\"\n\
         headers = { \"Auto-Submitted\" = \"auto-replied\" }\n",
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let last = run.stdout.lines().last().unwrap();
    assert!(
        last.starts_with("2026-11-24 11:00 +08:00  -  mail <step2.timeline@example.com> ignored: automatic mail ("),
        "{last}"
    );
}

#[test]
fn the_log_is_in_time_order_and_reports_every_event_once() {
    let timeline = load_timeline(Path::new("tests/fixtures/timelines/national-day.toml")).unwrap();
    let mut simulation = Simulation::start(Path::new("rules"), timeline).unwrap();
    let mut lines: Vec<LogLine> = Vec::new();
    simulation
        .run(&mut |line| {
            lines.push(line.clone());
            Ok(())
        })
        .unwrap();
    assert!(lines.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(
        simulation.opened_cases(),
        [
            CaseId("TS-2026-000001".into()),
            CaseId("TS-2026-000002".into()),
            CaseId("TS-2026-000003".into()),
        ]
    );
    for case in simulation.opened_cases() {
        let stored: Vec<EventKind> = simulation
            .engine()
            .store()
            .events(case)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        let reported: Vec<EventKind> = lines
            .iter()
            .filter(|l| l.case.as_ref() == Some(case))
            .filter_map(|l| match &l.entry {
                LogEntry::Event(kind) => Some(kind.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(reported, stored, "{case}");
    }
    let digests: Vec<DateTime<Utc>> = lines
        .iter()
        .filter(|l| matches!(&l.entry, LogEntry::SystemMail(m) if m.purpose == "digest"))
        .map(|l| l.at)
        .collect();
    assert_eq!(
        digests,
        [
            at("2026-10-05T09:00:00+08:00"),
            at("2026-10-12T09:00:00+08:00")
        ]
    );
}

mod no_panics {
    //! Whatever an administrator writes, the timeline reader answers with a
    //! timeline or an error, never a panic; so does the mail composer with
    //! whatever a written mail contains.

    use std::path::Path;

    use complaintd::simulate::{parse_timeline, Simulation};
    use proptest::prelude::*;
    use proptest::test_runner::Config;

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9 @<>\"\\\\:\\-+.,/]{0,24}".prop_map(|s| toml::Value::String(s).to_string()),
            Just("\"2026-11-24T10:00:00+08:00\"".to_owned()),
            Just("\"1h\"".to_owned()),
            Just("1".to_owned()),
            Just("[\"a@b.example\", 2]".to_owned()),
            Just("{ X-A = \"b\" }".to_owned()),
            "\\PC{0,12}".prop_map(|s| toml::Value::String(s).to_string()),
        ]
    }

    fn key() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "at",
            "after",
            "advance",
            "until",
            "mail",
            "from",
            "to",
            "subject",
            "body",
            "headers",
            "message_id",
            "reply_to_forward",
            "reply_to_acknowledgement",
            "reply_to_mail",
            "department",
            "channel",
            "bogus",
        ])
    }

    proptest! {
        #![proptest_config(Config { cases: 256, ..Config::default() })]

        #[test]
        fn any_text_is_read_or_refused(text in "\\PC{0,200}") {
            let _ = parse_timeline(&text, Path::new("t.toml"), Path::new("."));
        }

        #[test]
        fn any_step_is_read_or_refused(
            steps in prop::collection::vec(prop::collection::vec((key(), value()), 0..5), 1..4)
        ) {
            let mut text = String::new();
            for step in steps {
                text.push_str("[[step]]\n");
                let mut seen = Vec::new();
                for (key, value) in step {
                    if !seen.contains(&key) {
                        seen.push(key);
                        text.push_str(&format!("{key} = {value}\n"));
                    }
                }
            }
            let _ = parse_timeline(&text, Path::new("t.toml"), Path::new("."));
        }
    }

    proptest! {
        #![proptest_config(Config { cases: 24, ..Config::default() })]

        /// Mails with any sender, subject, body and header run through the
        /// whole engine: each step is built and ingested, or reported.
        #[test]
        fn any_written_mail_is_ingested_or_reported(
            from in prop_oneof![Just("Ann <a@b.example>".to_owned()), "\\PC{0,20}@[a-z.]{1,10}"],
            subject in "\\PC{0,40}",
            body in "\\PC{0,200}",
            header in "\\PC{0,30}",
        ) {
            let quoted = |s: &str| toml::Value::String(s.to_owned()).to_string();
            let text = format!(
                "[[step]]\nat = \"2026-11-24T10:00:00+08:00\"\nfrom = {}\nsubject = {}\nbody = {}\nheaders = {{ X-Note = {} }}\n\n[[step]]\nafter = \"1h\"\nreply_to_acknowledgement = 1\nbody = {}\n",
                quoted(&from), quoted(&subject), quoted(&body), quoted(&header), quoted(&body)
            );
            // Only the reader may refuse the mail; what it accepts must run.
            if let Ok(timeline) = parse_timeline(&text, Path::new("t.toml"), Path::new(".")) {
                let mut simulation = Simulation::start(Path::new("rules"), timeline).unwrap();
                let mut lines = 0;
                let result = simulation.run(&mut |_| {
                    lines += 1;
                    Ok(())
                });
                if from.starts_with("Ann") {
                    prop_assert!(result.is_ok(), "{result:?}");
                    prop_assert!(lines > 0);
                }
            }
        }
    }
}

//! `complaintd rules check|test|explain`, run as the built binary on the
//! fixture policies in `tests/fixtures/rules/` and on the real `rules/`.

use std::process::Command;

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

#[test]
fn check_accepts_a_clean_policy() {
    let run = complaintd(&["rules", "check", "tests/fixtures/rules/small"]);
    assert_eq!(run.stdout, "ok: 0 errors, 0 warnings\n");
    assert_eq!(run.stderr, "");
    assert_eq!(run.code, 0);
}

#[test]
fn check_prints_warnings_and_still_succeeds() {
    let run = complaintd(&["rules", "check", "tests/fixtures/rules/warning"]);
    assert_eq!(
        run.stdout,
        "\
warning: `desk` is both the assignee and in cc
 --> tests/fixtures/rules/warning/policy.rules:7:42
  |
7 |     when category == billing -> desk, cc desk
  |                                          ^^^^

ok: 0 errors, 1 warning
"
    );
    assert_eq!(run.code, 0);
}

#[test]
fn check_prints_every_error_and_fails() {
    let run = complaintd(&["rules", "check", "tests/fixtures/rules/broken"]);
    assert_eq!(
        run.stdout,
        "\
error: unknown category `biling`
 --> tests/fixtures/rules/broken/policy.rules:7:22
  |
7 |     when category == biling -> desk
  |                      ^^^^^^
  = help: did you mean `billing`?

error: unknown department `dsk`
 --> tests/fixtures/rules/broken/policy.rules:8:18
  |
8 |     otherwise -> dsk
  |                  ^^^
  = help: did you mean `desk`?

failed: 2 errors, 0 warnings
"
    );
    assert_eq!(run.code, 1);
}

#[test]
fn test_runs_inline_and_file_mails() {
    let run = complaintd(&["rules", "test", "tests/fixtures/rules/small"]);
    assert_eq!(run.stdout, "2 passed, 0 failed\n");
    assert_eq!(run.stderr, "");
    assert_eq!(run.code, 0);
}

#[test]
fn test_prints_each_failure_with_its_location() {
    let run = complaintd(&["rules", "test", "tests/fixtures/rules/failing"]);
    assert_eq!(
        run.stdout,
        "\
FAILED a wrong expectation (tests/fixtures/rules/failing/policy.rules:29:1)
    tests/fixtures/rules/failing/policy.rules:32:5: expected category == billing, got other
    tests/fixtures/rules/failing/policy.rules:33:5: expected severity == major, got general
    tests/fixtures/rules/failing/policy.rules:34:5: expected deadline answer due 2026-11-24T15:00:00+08:00, got 2026-11-24T14:00:00+08:00
1 passed, 1 failed
"
    );
    assert_eq!(run.code, 1);
}

#[test]
fn test_refuses_a_policy_with_errors() {
    let run = complaintd(&["rules", "test", "tests/fixtures/rules/broken"]);
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.contains("error: unknown department `dsk`"),
        "{}",
        run.stderr
    );
    assert_eq!(run.code, 1);
}

#[test]
fn explain_shows_verdicts_route_deadline_arithmetic_and_steps() {
    let run = complaintd(&[
        "rules",
        "explain",
        "--mail",
        "tests/fixtures/rules/mail/leak.eml",
        "tests/fixtures/rules/small",
    ]);
    assert_eq!(run.stderr, "");
    assert_eq!(
        run.stdout,
        r#"Complaint "楼下水管爆裂" from 钱先生 <qian@example.com>
  channel email, language zh, arrives 2026-11-27 16:30 (Asia/Shanghai)

Classification
  fired      leak "漏水"  tests/fixtures/rules/small/10-policy.rules:2:5
               saw  text has any ("漏水", "水管爆裂") = 水管爆裂
               did  category = leak; severity general → important
  not fired  press "媒体"  tests/fixtures/rules/small/10-policy.rules:6:5
               saw  text matches /记者|媒体|曝光/ = (no match)
  fired      loss "损失金额"  tests/fixtures/rules/small/10-policy.rules:10:5
               saw  text matches /损失\s*([0-9]+)\s*元/ = 损失 800 元
               did  loss = 800
  not fired  billing "账单"  tests/fixtures/rules/small/10-policy.rules:14:5
               saw  category = leak
  not fired  rest "其他"  tests/fixtures/rules/small/10-policy.rules:18:5
               saw  category = leak

Route
  no match   press  tests/fixtures/rules/small/10-policy.rules:24:5
               saw  tags has any (press) = (none)
  chosen     repairs  tests/fixtures/rules/small/10-policy.rules:25:5
               saw  category = leak
               did  route to repairs

Deadlines
  answer "答复时限": due 2026-11-30 16:30 (Asia/Shanghai), 1 working day on calendar desk
    no match   when severity == major -> 2 working hours
               saw  severity = important
    applies    otherwise -> 1 working day
    counted 1 working day (Asia/Shanghai) from 2026-11-27 16:30: 2026-11-30; due at the same time of day, 2026-11-30 16:30
    step #1    2026-11-30 12:00 (Asia/Shanghai)  at 50%  notify assignee using reminder
    step #2    2026-11-30 16:30 (Asia/Shanghai)  at 100% notify assignee.manager using overdue

Result
  category leak, loss 800, severity important
  route repairs (by repairs)
"#
    );
    assert_eq!(run.code, 0);
}

#[test]
fn explain_takes_the_arrival_time_and_channel_from_the_command_line() {
    let run = complaintd(&[
        "rules",
        "explain",
        "--mail",
        "tests/fixtures/rules/mail/leak.eml",
        "--at",
        "2026-09-30T17:50:00+08:00",
        "--channel",
        "hotline",
        "rules",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("  channel hotline, language zh, arrives 2026-09-30 17:50 (Asia/Shanghai)\n"),
        "{}",
        run.stdout
    );
    // National Day lies between: the forwarding hour is counted after the holiday.
    assert!(
        run.stdout.contains(
            "  forward \"转派时限\": due 2026-10-08 09:30 (Asia/Shanghai), 1 working hour on calendar office\n"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("skipped holiday 2026-10-01..07 国庆节"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("  investigate \"调查反馈时限\": not started (starts on forwarded)\n"),
        "{}",
        run.stdout
    );
}

#[test]
fn explain_rejects_an_unknown_channel_with_a_suggestion() {
    let run = complaintd(&[
        "rules",
        "explain",
        "--mail",
        "tests/fixtures/rules/mail/leak.eml",
        "--channel",
        "hotlne",
        "rules",
    ]);
    assert_eq!(
        run.stderr,
        "error: unknown channel `hotlne` (did you mean `hotline`?); declared: own, hotline, government\n"
    );
    assert_eq!(run.stdout, "");
    assert_eq!(run.code, 1);
}

#[test]
fn explain_reports_a_missing_mail_file() {
    let run = complaintd(&[
        "rules",
        "explain",
        "--mail",
        "tests/fixtures/rules/mail/none.eml",
    ]);
    assert!(
        run.stderr
            .starts_with("error: cannot read tests/fixtures/rules/mail/none.eml: "),
        "{}",
        run.stderr
    );
    assert_eq!(run.code, 1);
}

#[test]
fn the_engine_test_policies_check_clean() {
    // The engine and lifecycle tests run on these; a warning there would be
    // a policy the tests rely on while the checker calls it wrong.
    for dir in [
        "tests/fixtures/engine/rules",
        "tests/fixtures/lifecycle/rules",
    ] {
        let run = complaintd(&["rules", "check", dir]);
        assert_eq!(run.stdout, "ok: 0 errors, 0 warnings\n", "{dir}");
        assert_eq!(run.stderr, "", "{dir}");
        assert_eq!(run.code, 0, "{dir}");
    }
}

#[test]
fn the_default_policy_checks_clean_and_passes_its_tests() {
    let run = complaintd(&["rules", "check"]);
    assert_eq!(run.stdout, "ok: 0 errors, 0 warnings\n");
    assert_eq!(run.code, 0);
    let run = complaintd(&["rules", "test", "rules"]);
    // The default policy gains tests over time: all of them must pass.
    let passed: usize = run
        .stdout
        .strip_suffix(" passed, 0 failed\n")
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output: {}", run.stdout));
    assert!(passed >= 3, "{}", run.stdout);
    assert_eq!(run.code, 0);
}

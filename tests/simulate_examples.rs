//! `complaintd simulate` on the example policies of `rules/examples/`: each
//! timeline in `tests/fixtures/timelines/examples/<example>/` runs through the
//! built binary on its example's policy, and the output must be the
//! `.expected` file beside it. Every due time in those files was counted by
//! hand from `docs/calendar.md` first; the counts are comments in the
//! timelines.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/timelines/examples")
}

/// Runs `simulate` from the crate root, so rule paths in the output are relative.
fn simulate(example: &str, timeline: &str) -> String {
    let rules = format!("rules/examples/{example}");
    let path = format!("tests/fixtures/timelines/examples/{example}/{timeline}.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_complaintd"))
        .args(["simulate", "--rules", &rules, "--timeline", &path])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr, "", "{example}/{timeline}: stderr");
    assert_eq!(output.status.code(), Some(0), "{example}/{timeline}");
    String::from_utf8(output.stdout).expect("utf-8 stdout")
}

/// Runs a timeline and compares it with its `.expected` file, line by line
/// first so that a failure names the first line that differs.
fn simulate_as_expected(example: &str, timeline: &str) -> String {
    let actual = simulate(example, timeline);
    let path = fixtures_dir()
        .join(example)
        .join(format!("{timeline}.expected"));
    let expected =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (number, (a, e)) in actual.lines().zip(expected.lines()).enumerate() {
        assert_eq!(a, e, "{example}/{timeline}: line {} differs", number + 1);
    }
    assert_eq!(actual, expected, "{example}/{timeline}");
    actual
}

/// The due time of `clock` as the log line that started it on `case` says
/// (`due YYYY-MM-DD HH:MM`), so that a test states the hand count it checks.
fn due_of(output: &str, case: &str, clock: &str) -> String {
    let start = format!("{case}  clock {clock} started, due ");
    let line = output
        .lines()
        .find(|line| line.contains(&start))
        .unwrap_or_else(|| panic!("no line starts clock {clock} of {case}"));
    let due = &line[line.find(&start).expect("found above") + start.len()..];
    due.chars().take("2026-10-10 17:30".len()).collect()
}

/// One test per timeline, and the list of them for the completeness test.
macro_rules! timelines {
    ($($example:ident { $($test:ident => $file:literal),+ $(,)? })+) => {
        const TIMELINES: &[(&str, &str)] = &[
            $($((stringify!($example), $file),)+)+
        ];
        $(mod $example {
            $(#[test]
            fn $test() {
                super::simulate_as_expected(stringify!($example), $file);
            })+
        })+
    };
}

timelines! {
    mall {
        national_day => "national-day",
        ladder => "ladder",
    }
    developer {
        national_day => "national-day",
        levels => "levels",
    }
    gas {
        national_day => "national-day",
        appendix_3 => "appendix-3",
    }
    credit_union {
        national_day => "national-day",
        withdrawal => "withdrawal",
    }
    hospital {
        national_day => "national-day",
        limits => "limits",
    }
    tourism {
        national_day => "national-day",
        acceptance => "acceptance",
    }
    food {
        national_day => "national-day",
        defect_classes => "defect-classes",
    }
    training {
        national_day => "national-day",
        stars => "stars",
    }
}

/// The complaint at 17:50 on Wednesday 2026-09-30 in every example, its
/// working-day and working-hour due times across National Day and the
/// make-up Saturday 10-10, as counted by hand in each timeline's comments.
#[test]
fn the_national_day_complaint_is_due_where_the_hand_count_says() {
    let first = "TS-2026-000001";
    let expected = [
        ("mall", "ladder", "2026-09-30 19:20"),
        ("developer", "answer", "2026-10-08 14:20"),
        ("gas", "forward", "2026-10-08 09:30"),
        ("gas", "investigate", "2026-10-03 17:50"),
        ("credit_union", "reply", "2026-10-10 17:30"),
        ("hospital", "written_reply", "2026-10-27 17:30"),
        ("tourism", "acceptance", "2026-10-13 17:00"),
        ("food", "forward", "2026-10-08 09:00"),
        ("training", "investigate", "2026-10-08 17:30"),
    ];
    for (example, clock, due) in expected {
        let output = simulate(example, "national-day");
        assert_eq!(due_of(&output, first, clock), due, "{example}: {clock}");
    }
    let credit_union = simulate("credit_union", "national-day");
    assert_eq!(
        due_of(&credit_union, "TS-2026-000002", "reply"),
        "2026-10-20 17:30",
        "ten working days: 10-08, 10-09, the make-up 10-10, then 10-12 to 10-20"
    );
}

#[test]
fn every_example_has_a_national_day_timeline_and_every_timeline_a_test() {
    let examples_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/examples");
    let examples: BTreeSet<String> = std::fs::read_dir(&examples_dir)
        .expect("rules/examples")
        .map(|entry| entry.expect("a directory entry"))
        .filter(|entry| entry.path().is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(examples.len(), 8, "the example policies: {examples:?}");
    let tested: BTreeSet<(String, String)> = TIMELINES
        .iter()
        .map(|(example, file)| (example.to_string(), file.to_string()))
        .collect();
    for example in &examples {
        assert!(
            tested.contains(&(example.clone(), "national-day".to_owned())),
            "{example} has no tested national-day timeline"
        );
        assert!(
            tested.iter().filter(|(e, _)| e == example).count() >= 2,
            "{example} needs a timeline of its key rules besides national-day"
        );
    }
    let mut on_disk = BTreeSet::new();
    for example in std::fs::read_dir(fixtures_dir()).expect("the fixtures directory") {
        let example = example.expect("a directory entry");
        let name = example.file_name().to_string_lossy().into_owned();
        assert!(
            examples.contains(&name),
            "timelines for `{name}`, which is no example policy"
        );
        for file in std::fs::read_dir(example.path()).expect("an example's fixtures") {
            let path = file.expect("a directory entry").path();
            let stem = path.file_stem().expect("a file name").to_string_lossy();
            match path.extension().and_then(|e| e.to_str()) {
                Some("toml") => {
                    on_disk.insert((name.clone(), stem.into_owned()));
                }
                Some("expected") => assert!(
                    path.with_extension("toml").exists(),
                    "{} has no timeline",
                    path.display()
                ),
                _ => {}
            }
        }
    }
    assert_eq!(
        on_disk, tested,
        "timelines on disk vs. timelines with a test"
    );
}

//! Benchmarks of the evaluator and the policy checker.
//!
//! - `eval/default_policy`: the default policy in `rules/` on generated complaints;
//! - `eval/generated_50_rules`: a generated 50-rule policy without aggregate
//!   conditions, with two deadlines on a business calendar, the figure behind
//!   the 100,000 evaluations/s target; `…_without_deadlines`: the same rules
//!   without deadlines (classification and routing alone);
//! - `check/load_generated_1000_rules`: load (read, parse) and check a
//!   generated 1,000-rule policy directory (target: under 100 ms).
//!
//! Run with `cargo bench --bench eval -- --measurement-time 3 --warm-up-time 1`.
//!
//! Times are the benchmark thread's CPU time, not wall time: the targets are
//! per core, and on a shared, loaded machine wall time mostly measures the
//! other processes.

#[path = "common/cpu_time.rs"]
mod cpu_time;

use cpu_time::thread_cpu_time;

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use complaintd::case::{Address, AttachmentFacts, Case, CaseId, MailFacts};
use complaintd::cli::load_and_check;
use complaintd::rules::check::{check, Environment};
use complaintd::rules::eval::{evaluate, HistoryEntry, Input, MemoryHistory};
use complaintd::rules::parse::parse_file;
use complaintd::rules::{Limits, Policy, SourceMap};

/// Criterion measurement of thread CPU time, shown like wall time.
struct CpuTime {
    wall: WallTime,
}

impl Measurement for CpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu_time()
    }

    fn end(&self, started: Duration) -> Duration {
        thread_cpu_time().saturating_sub(started)
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        self.wall.formatter()
    }
}

/// Words complaints are generated from: some trigger rules, most do not.
const PHRASES: &[&str] = &[
    "你好，我家的燃气表读数不对",
    "这个月的账单比上个月多收了很多",
    "营业厅工作人员态度很差",
    "维修师傅迟到了两个小时",
    "楼道里有燃气味，担心漏气",
    "如果再不解决我就找媒体曝光",
    "安装接驳一直没有人来",
    "客服电话一直打不通",
    "请尽快处理，谢谢",
    "损失 350 元，要求赔偿",
    "The gas bill is wrong again this month",
    "Nobody came to fix the meter",
];

const CHANNELS: &[&str] = &["own", "hotline", "government"];

/// A small deterministic generator, so every run measures the same input.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as usize
    }
}

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 1, 0, 0).unwrap()
}

/// `count` complaints with their cases, arriving every seven minutes.
fn complaints(count: usize) -> Vec<(Case, MailFacts)> {
    let mut rng = Lcg(7);
    (0..count)
        .map(|i| {
            let at = start() + chrono::Duration::minutes(7 * i as i64);
            let sender = Address::new(&format!("customer{}@example.com", rng.next() % 500), None);
            let mut text = String::new();
            for _ in 0..(2 + rng.next() % 4) {
                text.push_str(PHRASES[rng.next() % PHRASES.len()]);
                text.push('。');
            }
            let subject = PHRASES[rng.next() % PHRASES.len()]
                .chars()
                .take(12)
                .collect::<String>();
            let channel = CHANNELS[rng.next() % CHANNELS.len()];
            let attachments = (0..rng.next() % 3)
                .map(|n| AttachmentFacts {
                    name: format!("photo{n}.jpg"),
                    content_type: "image/jpeg".to_owned(),
                    size: 40_000,
                })
                .collect();
            let mail = MailFacts {
                subject: subject.clone(),
                text,
                sender: sender.clone(),
                recipients: vec![Address::new("complaints@gas.example", None)],
                headers: vec![("subject".to_owned(), subject.clone())],
                attachments,
                language: "zh".to_owned(),
                channel: channel.to_owned(),
                received_at: at,
            };
            let case = Case::new(
                CaseId(format!("TS-2026-{i:06}")),
                at,
                channel,
                sender,
                &subject,
                "zh",
            );
            (case, mail)
        })
        .collect()
}

/// Earlier cases for the aggregate conditions of the default policy.
fn history(count: usize) -> MemoryHistory {
    let mut rng = Lcg(11);
    MemoryHistory {
        entries: (0..count)
            .map(|i| HistoryEntry {
                sender: format!("customer{}@example.com", rng.next() % 500),
                opened_at: start() - chrono::Duration::minutes(13 * i as i64),
                category: Some(["billing", "safety", "other"][rng.next() % 3].to_owned()),
                subject_fingerprint: String::new(),
                tags: Vec::new(),
            })
            .collect(),
    }
}

/// The vocabulary shared by the generated policies.
fn header(out: &mut String) {
    out.push_str(
        r#"severity general < important < hot < major
category billing "收费争议"
category safety "安全隐患"
category attitude "服务态度"
category other "其他"
field loss: number "损失金额"
channel own "自有渠道"
channel hotline "热线"
channel government "政府批转"
languages zh en
calendar office "Asia/Shanghai" {
    hours mon..fri 08:30-12:00 14:00-17:30
    holiday 2026-10-01..2026-10-07 "国庆节"
    workday 2026-10-10 "调休上班"
}
template reminder "reminder"
template overdue "overdue"
"#,
    );
    for d in 0..10 {
        let _ = writeln!(
            out,
            "department dept{d} \"部门{d}\" <dept{d}@corp.example> {{ manager <lead{d}@corp.example> calendar office }}"
        );
    }
}

/// A policy of `rules` classification rules of varied shapes (no aggregates),
/// ten routes, two deadlines with escalations.
fn generated_policy(rules: usize) -> String {
    let mut out = generated_rules(rules);
    out.push_str(
        r#"deadline forward { calendar office starts on received stops on forwarded otherwise -> 1 working hour }
deadline answer {
    calendar office
    starts on received
    stops on answered
    when severity == major -> 4 working hours
    when channel == hotline -> 2 days
    otherwise -> 3 working days
}
escalate answer {
    at 50% notify assignee using reminder
    at 100% notify assignee.manager using overdue, severity >= hot
}
"#,
    );
    out
}

/// The vocabulary, `rules` classification rules and the routes, without deadlines.
fn generated_rules(rules: usize) -> String {
    let mut out = String::new();
    header(&mut out);
    out.push_str("classify {\n");
    for r in 0..rules {
        let word = PHRASES[r % PHRASES.len()]
            .chars()
            .skip(r % 5)
            .take(2)
            .collect::<String>();
        let condition = match r % 6 {
            0 => format!("text has any (\"{word}\", \"词{r}\", \"项{r}\")"),
            1 => format!("subject contains \"{word}\""),
            2 => format!("text matches /{word}|样{r}/"),
            3 => format!("channel == hotline and text contains \"{word}\""),
            4 => format!("attachments.count > {} and severity < major", r % 3),
            _ => format!("category is empty and text matches /损失\\s*([0-9]+)\\s*元{r}?/"),
        };
        let action = match r % 6 {
            0 => "severity >= important, tag t0".to_owned(),
            1 => "category = billing".to_owned(),
            2 => format!("tag t{r}"),
            3 => "severity >= hot".to_owned(),
            4 => "tag photos".to_owned(),
            _ => "loss = $1".to_owned(),
        };
        let _ = writeln!(out, "    rule r{r}: when {condition} then {action}");
    }
    out.push_str("}\nroute {\n");
    for d in 0..9 {
        let _ = writeln!(
            out,
            "    when category == {} and severity == {} -> dept{d}",
            ["billing", "safety", "attitude"][d % 3],
            ["general", "important", "major"][d / 3]
        );
    }
    out.push_str("    otherwise -> dept9\n}\n");
    out
}

fn checked(text: &str, limits: Limits) -> Policy {
    let mut sources = SourceMap::new();
    let file = sources.add("generated.rules", text);
    let parsed = parse_file(file, text).expect("generated policy parses");
    let result = check(sources, &[parsed], limits, &Environment::default());
    match result.policy {
        Some(policy) => policy,
        None => panic!(
            "generated policy has errors: {}",
            complaintd::rules::diag::render_all(&result.diagnostics, &result.sources)
        ),
    }
}

fn bench_evaluate(c: &mut Criterion<CpuTime>) {
    let inputs = complaints(2_000);
    let mut group = c.benchmark_group("eval");
    group.throughput(Throughput::Elements(inputs.len() as u64));

    let generated = checked(&generated_policy(50), Limits::default());
    let empty = MemoryHistory::default();
    group.bench_function("generated_50_rules", |b| {
        b.iter(|| {
            for (case, mail) in &inputs {
                black_box(evaluate(
                    &generated,
                    case,
                    &Input::NewComplaint(mail),
                    &empty,
                    mail.received_at,
                ));
            }
        })
    });

    // The same rules without deadlines: what classification and routing cost alone.
    let undated = checked(&generated_rules(50), Limits::default());
    group.bench_function("generated_50_rules_without_deadlines", |b| {
        b.iter(|| {
            for (case, mail) in &inputs {
                black_box(evaluate(
                    &undated,
                    case,
                    &Input::NewComplaint(mail),
                    &empty,
                    mail.received_at,
                ));
            }
        })
    });

    let default = load_and_check(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("rules")
            .as_path(),
    )
    .policy
    .expect("the default policy checks");
    let earlier = history(2_000);
    group.bench_function("default_policy", |b| {
        b.iter(|| {
            for (case, mail) in &inputs {
                black_box(evaluate(
                    &default,
                    case,
                    &Input::NewComplaint(mail),
                    &earlier,
                    mail.received_at,
                ));
            }
        })
    });
    group.finish();
}

fn bench_check(c: &mut Criterion<CpuTime>) {
    // Load + check exactly as `rules check` and a reload do: read the
    // directory, parse, check, build calendars and regexes.
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("policy.rules"), generated_policy(1_000))
        .expect("the generated policy is written");
    let mut group = c.benchmark_group("check");
    group.bench_function("load_generated_1000_rules", |b| {
        b.iter(|| {
            let loaded = load_and_check(dir.path());
            assert!(loaded.policy.is_some(), "the generated policy checks");
            black_box(loaded)
        })
    });
    group.finish();
}

fn config() -> Criterion<CpuTime> {
    // The machine is shared: short runs, few samples.
    Criterion::default()
        .with_measurement(CpuTime { wall: WallTime })
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_evaluate, bench_check
}
criterion_main!(benches);

//! Ingest benchmark of the whole daemon on a private real mail stack (Dovecot + OpenSMTPD of
//! `scripts/mailstack.sh`): how many complaints per second become cases with their
//! acknowledgement queued, and how long a complaint waits for its acknowledgement.
//!
//! Run with `scripts/bench-ingest.sh` (or `cargo bench --bench ingest -- [--mails N]
//! [--samples K] [--batch N] [--send]`); `cargo test` runs it small (300 mails, 3 samples) to
//! keep it working. Two measurements:
//!
//! 1. Throughput: N complaints are written into the complaint Maildir directly and indexed
//!    by Dovecot; then the daemon starts, and the time until the mailbox checkpoint reaches
//!    the last message (every message committed: case, events, timers, acknowledgement and
//!    forwards queued) gives messages per second. The SMTP sender is throttled to one mail a
//!    minute so the figure is ingest alone; `--send` lets it deliver at full speed meanwhile.
//! 2. Latency: with the daemon idle in IMAP IDLE, K complaints one after another, each
//!    written into the Maildir at t0; t1 is when its acknowledgement file appears in the
//!    customer's Maildir. Reports p50, p99 and the maximum of t1 − t0.

#[path = "common/cpu_time.rs"]
mod cpu_time;

#[path = "../tests/daemon_support/mod.rs"]
mod daemon_support;
#[path = "../tests/support/mod.rs"]
mod support;

use cpu_time::thread_cpu_time;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use complaintd::metrics::Metrics;
use daemon_support::*;

/// The daemon's allocator (`src/main.rs`), so the figures are the daemon's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Complaint `i`'s subject and text: one of the default policy's kinds,
/// with the complaint's own number in both, so no two complaints share a
/// text (the store keeps each text once per content, as for real mail).
fn complaint_text(i: usize) -> (String, String) {
    let (subject, body) = KINDS[i % KINDS.len()];
    (
        format!("{subject}（{i}）"),
        format!("{body}\n\n客户编号 / customer no. {i}"),
    )
}

/// Complaint texts of the default policy's kinds: (subject, body).
const KINDS: [(&str, &str); 5] = [
    (
        "楼道里有燃气味，疑似漏气",
        "你好，我家楼道里燃气味很重，怀疑漏气，请尽快派人检查。家里有老人和小孩。",
    ),
    (
        "十一月账单多收了气费",
        "这个月的气费账单比上个月多了 120 元，用气量没有变化，请核实后退还多收的费用。",
    ),
    (
        "营业厅工作人员态度很差",
        "昨天去营业厅办理过户，工作人员态度很差，互相推诿，让我跑了三趟，希望加强管理。",
    ),
    (
        "停气三天无人处理",
        "小区已经停气三天了，打了多次电话都没有人来处理，严重影响生活，请尽快恢复供气。",
    ),
    (
        "Gas pressure too low in the evenings",
        "Hello, since last week the gas pressure in our flat drops every evening around 7 pm, \
         so the stove barely works. Could someone look into it? Flat 12, Harbour Road 8.",
    ),
];

const BULK_MAILBOX: &str = "complaints-bulk@example.test";
const LATENCY_CUSTOMERS: usize = 10;

struct Args {
    mails: usize,
    samples: usize,
    send: bool,
    /// Messages per IMAP fetch, and so per engine ingest (one transaction).
    batch: usize,
    /// Feed the engine directly (no mail stack, no daemon): the engine's own rate.
    engine_only: bool,
    /// Log as the daemon does at its default level (text, INFO), into this file.
    log: Option<std::path::PathBuf>,
}

fn parse_args() -> Result<Args> {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it,
    // and then a small run checks that the benchmark still works.
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let mut args = if benchmarking {
        Args {
            mails: 10_000,
            samples: 50,
            send: false,
            batch: 500,
            engine_only: false,
            log: None,
        }
    } else {
        Args {
            mails: 300,
            samples: 3,
            send: false,
            batch: 100,
            engine_only: false,
            log: None,
        }
    };
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        match arg.as_str() {
            "--mails" => args.mails = given.next().context("--mails N")?.parse()?,
            "--samples" => args.samples = given.next().context("--samples K")?.parse()?,
            "--send" => args.send = true,
            "--engine-only" => args.engine_only = true,
            "--batch" => args.batch = given.next().context("--batch N")?.parse()?,
            "--log" => args.log = Some(given.next().context("--log FILE")?.into()),
            "--bench" => {}
            other => {
                bail!(
                    "unknown argument {other}; use --mails N, --samples K, --send, --batch N, \
                 --engine-only, --log FILE"
                )
            }
        }
    }
    Ok(args)
}

fn main() -> Result<()> {
    complaintd::engine::configure_worker_pool();
    let args = parse_args()?;
    if let Some(path) = &args.log {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .try_init()
            .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    }
    if args.engine_only {
        return engine_only(args.mails, args.batch);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench(args))
}

async fn bench(args: Args) -> Result<()> {
    let latency_customers: Vec<String> = (0..LATENCY_CUSTOMERS)
        .map(|i| format!("latency{i}@example.test"))
        .collect();
    let mut users = latency_customers.clone();
    users.push(BULK_MAILBOX.to_owned());
    let started = Instant::now();
    let stack = stack_with(&users)?;
    println!(
        "mail stack up in {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        stack.dir().display()
    );
    if args.samples > 0 {
        latency(&stack, &latency_customers, args.samples).await?;
    }
    if args.mails > 0 {
        throughput(&stack, args.mails, args.send, args.batch).await?;
    }
    Ok(())
}

async fn throughput(
    stack: &support::MailStack,
    mails: usize,
    send: bool,
    batch: usize,
) -> Result<()> {
    // The bulk mailbox's Maildir exists once its user has logged in.
    let mut mailbox = stack
        .connect(BULK_MAILBOX, support::ImapSecurity::Plain)
        .await?;
    mailbox.select("INBOX").await?;
    let writing = Instant::now();
    let mut bytes = 0;
    for i in 0..mails {
        let (subject, body) = complaint_text(i);
        let raw = complaint(
            &format!("客户 {i}"),
            &format!("sender{i}@customers.example"),
            &subject,
            &body,
            &format!("bulk-{i}@customers.example"),
        );
        bytes += raw.len();
        deliver_to_maildir(stack, BULK_MAILBOX, &format!("bulk.{i}"), &raw)?;
    }
    let written = writing.elapsed();
    // Dovecot indexes new Maildir files when the folder is opened: done here, so the
    // measurement below is the daemon's work, not Dovecot's first look.
    let indexing = Instant::now();
    let exists = mailbox.select("INBOX").await?;
    mailbox.logout().await?;
    ensure!(exists as usize == mails, "Dovecot sees {exists} of {mails}");
    println!(
        "\nthroughput: {mails} complaints ({:.1} KB average) written to the Maildir in {:.1} s, \
         indexed by Dovecot in {:.1} s",
        bytes as f64 / mails as f64 / 1024.0,
        written.as_secs_f64(),
        indexing.elapsed().as_secs_f64()
    );

    let work = Workspace::new()?;
    let cap = if send { 100_000 } else { 1 };
    let config = work.config_with(stack, "acks_per_sender_per_hour = 100", |text| {
        text.replace(
            &format!("user = \"{COMPLAINTS}\""),
            &format!("user = \"{BULK_MAILBOX}\""),
        )
        .replace(
            "per_minute_cap = 100000",
            &format!("per_minute_cap = {cap}"),
        )
        .replace("level = \"info\"", "level = \"warn\"")
        .replace("batch_size = 500", &format!("batch_size = {batch}"))
    })?;
    let threads_before = thread_cpu_times();
    let start = Instant::now();
    let daemon = RunningDaemon::start(config, fast_options(Metrics::new())).await?;
    let ready = start.elapsed();
    let store = daemon.engine.store().clone();
    let mut first_commit = None;
    // When the checkpoint first reached each tenth of the mails: the rate
    // between tenths shows the warm-up of a fresh process and the steady state.
    let mut tenths: Vec<(usize, Duration)> = Vec::with_capacity(11);
    let within = Duration::from_secs(1800);
    // Every committed batch is reported after its checkpoint is written; subscribed before
    // the first look, so none falls between a look and the wait.
    let mut changes = daemon.metrics.changes();
    loop {
        let last_uid = store
            .checkpoint("complaints")?
            .map_or(0, |c| c.last_uid as usize);
        if last_uid > 0 && first_commit.is_none() {
            first_commit = Some(start.elapsed());
        }
        while tenths.len() <= 10 && last_uid >= mails * tenths.len() / 10 {
            tenths.push((last_uid, start.elapsed()));
        }
        if last_uid >= mails {
            break;
        }
        let left = within.saturating_sub(start.elapsed());
        if !matches!(
            tokio::time::timeout(left, changes.changed()).await,
            Ok(Ok(()))
        ) {
            bail!("only {last_uid} of {mails} committed after 30 minutes");
        }
    }
    let done = start.elapsed();
    let busiest = busiest_threads(&threads_before, &thread_cpu_times());
    daemon.stop().await?;
    let cases = store.list_cases(&Default::default())?.len();
    let acks = count_acks(&store)?;
    ensure!(cases == mails, "{cases} cases for {mails} complaints");
    ensure!(
        acks == mails,
        "{acks} acknowledgements for {mails} complaints"
    );
    let working = done - ready;
    println!(
        "  daemon ready after {:.2} s, first batch committed at {:.2} s, all {mails} at {:.2} s",
        ready.as_secs_f64(),
        first_commit.unwrap_or_default().as_secs_f64(),
        done.as_secs_f64()
    );
    println!(
        "  {cases} cases, {acks} acknowledgements queued; {batch} messages per fetch; sender {}",
        if send {
            "delivering meanwhile"
        } else {
            "throttled to 1 mail/minute"
        }
    );
    let rates: Vec<String> = tenths
        .windows(2)
        .map(|w| {
            let seconds = (w[1].1 - w[0].1).as_secs_f64().max(1e-6);
            format!("{:.0}", (w[1].0 - w[0].0) as f64 / seconds)
        })
        .collect();
    println!("  msgs/s per tenth of the mails: {}", rates.join(" "));
    // Where the daemon's CPU went, per message: the tokio threads carry the
    // engine's serial chain (evaluation, commit), the pool parses and renders.
    let busiest: Vec<String> = busiest
        .iter()
        .take(4)
        .map(|(name, threads, cpu)| {
            format!(
                "{name} ({threads}) {:.0} µs",
                cpu.as_secs_f64() * 1e6 / mails as f64
            )
        })
        .collect();
    println!(
        "  CPU per message by thread name (threads): {}",
        busiest.join(", ")
    );
    if let (Some(half), Some(last)) = (tenths.get(5), tenths.last()) {
        println!(
            "  => {:.0} msgs/s over the second half",
            (last.0 - half.0) as f64 / (last.1 - half.1).as_secs_f64()
        );
    }
    println!(
        "  => {:.0} msgs/s from start, {:.0} msgs/s once running",
        mails as f64 / done.as_secs_f64(),
        mails as f64 / working.as_secs_f64()
    );
    Ok(())
}

/// The engine alone: the bulk complaints handed to `Engine::ingest` in batches of `batch`,
/// as the daemon's IMAP task would, on a fresh store with the default policy.
fn engine_only(mails: usize, batch: usize) -> Result<()> {
    use complaintd::clock::SystemClock;
    use complaintd::engine::{Engine, EngineSettings, RawMessage};
    use complaintd::mail::token::ReplySecret;
    use std::sync::Arc;

    let dir = tempfile::tempdir()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let settings = EngineSettings {
        rules_dir: root.join("rules"),
        complaint_address: COMPLAINTS.into(),
        sender_address: COMPLAINTS.into(),
        own_addresses: Vec::new(),
        reply_secret: ReplySecret::new(b"engine-only-bench-secret-0123456789".to_vec())?,
        token_valid_days: 90,
        message_id_host: "example.test".into(),
        acks_per_sender_per_hour: 100,
        case_prefix: "TS".into(),
        case_number_width: 6,
        store_cache_mb: complaintd::store::DEFAULT_CACHE_MB,
        time_zone: chrono_tz::Asia::Shanghai,
        max_message_bytes: 1024 * 1024,
        organisation: "Bench Gas".into(),
        reopen_window_days: 30,
        retention_days: complaintd::config::DEFAULT_RETENTION_DAYS,
    };
    let engine = Engine::open(settings, &dir.path().join("store"), Arc::new(SystemClock))?;
    let raws: Vec<Vec<u8>> = (0..mails)
        .map(|i| {
            let (subject, body) = complaint_text(i);
            complaint(
                &format!("客户 {i}"),
                &format!("sender{i}@customers.example"),
                &subject,
                &body,
                &format!("bulk-{i}@customers.example"),
            )
        })
        .collect();
    let cpu_before = process_cpu_time();
    let thread_cpu_before = thread_cpu_time();
    let start = Instant::now();
    let mut uid = 0u32;
    for chunk in raws.chunks(batch.max(1)) {
        let messages = chunk
            .iter()
            .map(|raw| {
                uid += 1;
                (uid, RawMessage::full(raw.clone()))
            })
            .collect();
        engine.ingest("complaints", "email", 1, messages)?;
    }
    let elapsed = start.elapsed();
    let cpu = process_cpu_time() - cpu_before;
    let thread_cpu = thread_cpu_time() - thread_cpu_before;
    let store = engine.store();
    let cases = store.list_cases(&Default::default())?.len();
    let acks = count_acks(store)?;
    ensure!(cases == mails, "{cases} cases for {mails} complaints");
    ensure!(
        acks == mails,
        "{acks} acknowledgements for {mails} complaints"
    );
    println!(
        "engine only: {mails} complaints in batches of {batch}: {:.2} s => {:.0} msgs/s; \
         {:.2} s CPU (all threads) => {:.0} µs CPU per message, {:.0} µs of it on the \
         ingesting thread",
        elapsed.as_secs_f64(),
        mails as f64 / elapsed.as_secs_f64(),
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / mails as f64,
        thread_cpu.as_secs_f64() * 1e6 / mails as f64
    );
    Ok(())
}

/// CPU time of each thread of this process so far, by thread id: (name, time).
fn thread_cpu_times() -> std::collections::HashMap<u32, (String, Duration)> {
    let mut times = std::collections::HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return times;
    };
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    for task in tasks.flatten() {
        let Ok(tid) = task.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // The name is in parentheses and may hold spaces; utime and stime are the
        // 12th and 13th fields after it.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let seconds = (field(11) + field(12)) / ticks;
        let name = stat[open + 1..close].to_owned();
        times.insert(tid, (name, Duration::from_secs_f64(seconds)));
    }
    times
}

/// CPU used between two snapshots, summed by thread name (tokio names all
/// its threads alike), busiest first: (name, threads, time).
fn busiest_threads(
    before: &std::collections::HashMap<u32, (String, Duration)>,
    after: &std::collections::HashMap<u32, (String, Duration)>,
) -> Vec<(String, usize, Duration)> {
    let mut by_name: std::collections::BTreeMap<String, (usize, Duration)> = Default::default();
    for (tid, (name, cpu)) in after {
        let earlier = before.get(tid).map_or(Duration::ZERO, |(_, cpu)| *cpu);
        let used = cpu.saturating_sub(earlier);
        if used > Duration::ZERO {
            let entry = by_name.entry(name.clone()).or_default();
            entry.0 += 1;
            entry.1 += used;
        }
    }
    let mut used: Vec<(String, usize, Duration)> = by_name
        .into_iter()
        .map(|(name, (threads, cpu))| (name, threads, cpu))
        .collect();
    used.sort_by_key(|entry| std::cmp::Reverse(entry.2));
    used
}

/// CPU time used by this process so far (user and system, all threads).
fn process_cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// Acknowledgements in the outbox (sent or not).
fn count_acks(store: &complaintd::store::Store) -> Result<usize> {
    let mut acks = 0;
    for case in store.list_cases(&Default::default())? {
        acks += store
            .outbox_of_case(&case.id)?
            .iter()
            .filter(|e| e.recipients == [case.sender.email.clone()])
            .count();
    }
    Ok(acks)
}

fn maildir_new(stack: &support::MailStack, user: &str) -> Result<PathBuf> {
    let (local, domain) = user.split_once('@').context("an address")?;
    Ok(stack
        .dir()
        .join("mail")
        .join(domain)
        .join(local)
        .join("Maildir/new"))
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| entries.count())
}

async fn latency(stack: &support::MailStack, customers: &[String], samples: usize) -> Result<()> {
    let work = Workspace::new()?;
    let config = work.config(stack, "acks_per_sender_per_hour = 1000")?;
    let daemon = RunningDaemon::start(config, fast_options(Metrics::new())).await?;
    let idling = "complaintd_imap_idling{mailbox=\"complaints\"}";
    let mut latencies = Vec::with_capacity(samples);
    // Deliveries into any mailbox wake the wait for an acknowledgement.
    let arrivals = MailArrivals::watch(stack)?;
    for k in 0..samples {
        daemon
            .wait_until("the mailbox task to idle", DEADLINE, || {
                Ok((daemon.metric(idling) == 1.0).then_some(()))
            })
            .await?;
        let customer = &customers[k % customers.len()];
        let inbox = maildir_new(stack, customer)?;
        let before = files_in(&inbox);
        let (subject, body) = complaint_text(k);
        let raw = complaint(
            "客户",
            customer,
            &subject,
            &body,
            &format!("latency-{k}@example.test"),
        );
        let t0 = Instant::now();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        deliver_to_maildir(stack, COMPLAINTS, &format!("latency.{k}"), &raw)?;
        // The acknowledgement is the only mail this customer gets.
        while files_in(&inbox) <= before {
            if !arrivals.next(deadline).await {
                bail!("no acknowledgement for sample {k} after {DEADLINE:?}");
            }
        }
        latencies.push(t0.elapsed());
    }
    daemon.stop().await?;
    latencies.sort();
    let at = |q: f64| {
        latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    println!(
        "\nlatency, complaint in the Maildir → acknowledgement in the customer's Maildir \
         ({samples} samples, daemon in IDLE):"
    );
    println!(
        "  p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms, min {:.0} ms",
        at(0.5).as_secs_f64() * 1000.0,
        at(0.99).as_secs_f64() * 1000.0,
        latencies[latencies.len() - 1].as_secs_f64() * 1000.0,
        latencies[0].as_secs_f64() * 1000.0
    );
    Ok(())
}

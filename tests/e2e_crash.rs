//! Crash test: `complaintd run` (a child process) is killed with SIGKILL at random moments
//! while 2,000 complaints are ingested and answered, and restarted, 24 times. Then: every
//! Message-ID is a case (nothing lost), no mail opened two cases, and with
//! `smtp.in_doubt = "hold"` no acknowledgement is delivered twice: each one is in its sender's
//! mailbox exactly once, or it is held (the mail in flight at a kill) and then in the mailbox
//! at most once. A smaller run with `"resend"` shows the other choice: every acknowledgement
//! arrives, a copy of the same mail (same Message-ID) only from the mail in flight at a kill,
//! so at most as many copies as kills; their number is printed.
//!
//! Mail goes into the complaint Maildir directly (the fast way in), in waves before each
//! restart, so kills land during ingest as well as during sending. `CRASH_SEED` repeats a run.

mod daemon_support;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use complaintd::config::{Config, InDoubt};
use complaintd::engine::EngineSettings;
use complaintd::store::{MessageRecord, OutboxState, Store};
use daemon_support::*;
use rand::{Rng, SeedableRng};
use tokio::process::{Child, Command};

const CUSTOMERS: usize = 100;

/// The size of one crash run.
#[derive(Debug, Clone, Copy)]
struct Run {
    in_doubt: InDoubt,
    mails: usize,
    kills: usize,
    /// Mail is delivered in this many waves, one before each of the first restarts.
    waves: usize,
    /// Distinguishes the runs' customers (each run has its own stack as well).
    tag: &'static str,
}

fn spawn_daemon(config: &Path, log: &Path) -> Result<Child> {
    let log = File::options().create(true).append(true).open(log)?;
    Command::new(env!("CARGO_BIN_EXE_complaintd"))
        .args(["run", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting complaintd run")
}

async fn terminate(child: &mut Child) -> Result<()> {
    let pid = child
        .id()
        .context("the daemon runs until it is waited for")?;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -TERM failed");
    let exit = child.wait().await?;
    ensure!(
        exit.success(),
        "complaintd run exited with {exit} after SIGTERM"
    );
    Ok(())
}

/// Opens the store the daemon left (only while no daemon runs: sled locks it).
fn open_store(config: &Config) -> Result<Store> {
    let settings = EngineSettings::from_config(config)?.store_settings();
    Ok(Store::open_with(&config.store.path, settings)?)
}

/// Every outbox entry of every case.
fn outbox(store: &Store) -> Result<Vec<complaintd::store::OutboxEntry>> {
    let mut entries = Vec::new();
    for case in store.list_cases(&Default::default())? {
        entries.extend(store.outbox_of_case(&case.id)?);
    }
    Ok(entries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_and_with_hold_delivers_nothing_twice() -> Result<()>
{
    crash_run(Run {
        in_doubt: InDoubt::Hold,
        mails: 2000,
        kills: 24,
        waves: 20,
        tag: "hold",
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_resend_delivers_everything_and_copies_only_mail_in_flight() -> Result<()> {
    crash_run(Run {
        in_doubt: InDoubt::Resend,
        mails: 500,
        kills: 8,
        waves: 6,
        tag: "resend",
    })
    .await
}

async fn crash_run(run_size: Run) -> Result<()> {
    let Run {
        in_doubt,
        mails,
        kills,
        waves,
        tag,
    } = run_size;
    let seed: u64 = match std::env::var("CRASH_SEED") {
        Ok(seed) => seed.parse().context("CRASH_SEED must be a number")?,
        Err(_) => rand::random(),
    };
    eprintln!("crash test ({tag}) seed: {seed} (CRASH_SEED={seed} repeats it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let customers: Vec<String> = (0..CUSTOMERS)
        .map(|i| format!("crash{tag}{i:03}@example.test"))
        .collect();
    let stack = stack_with(&customers)?;
    let work = Workspace::new()?;
    let [http_port] = support::free_ports::<1>()?;
    let config_path =
        work.write_config_with(&stack, "acks_per_sender_per_hour = 10000", |text| {
            let text = text
                .replace("batch_size = 500", "batch_size = 50")
                .replace(
                    "level = \"info\"",
                    "level = \"info,complaintd::engine=warn,complaintd::smtp=warn\"",
                )
                .replace(
                    "[smtp]\n",
                    &format!("[smtp]\nin_doubt = \"{}\"\n", in_doubt.as_str()),
                );
            format!("{text}\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n")
        })?;
    let config = Config::load(&config_path).map_err(|e| anyhow::anyhow!("config: {e:?}"))?;
    ensure!(config.smtp.in_doubt == in_doubt);
    let log = work.path().join("daemon.log");
    // The complaint Maildir exists once its user has logged in.
    let mut mailbox = stack
        .connect(COMPLAINTS, support::ImapSecurity::Plain)
        .await?;
    mailbox.select("INBOX").await?;
    mailbox.logout().await?;

    let run = std::process::id();
    let message_ids: Vec<String> = (0..mails)
        .map(|i| format!("crash-{tag}-{run}-{i}@example.test"))
        .collect();
    let sender_of = |i: usize| customers[i % CUSTOMERS].clone();
    let per_wave = mails.div_ceil(waves);
    let mut delivered = 0;

    let mut kill_delays = Vec::new();
    for round in 0..kills {
        if delivered < mails {
            let end = (delivered + per_wave).min(mails);
            for (i, message_id) in message_ids.iter().enumerate().take(end).skip(delivered) {
                let raw = complaint(
                    "客户",
                    &sender_of(i),
                    &format!("燃气表读数不对 #{i}"),
                    "这个月的燃气表读数明显偏高，请派人核查。",
                    message_id,
                );
                deliver_to_maildir(&stack, COMPLAINTS, &format!("{run}.{i}"), &raw)?;
            }
            delivered = end;
        }
        let mut child = spawn_daemon(&config_path, &log)?;
        // The random moment of the kill: anywhere from startup to well into the work. The
        // daemon must still run then; it exiting by itself before fails the test.
        let delay = Duration::from_millis(rng.gen_range(50..1500));
        kill_delays.push(delay);
        if let Ok(status) = tokio::time::timeout(delay, child.wait()).await {
            let status = status?;
            // The workspace goes with the test, so the log's end goes into the message.
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            bail!(
                "round {round}: complaintd exited by itself with {status}; the log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        // SIGKILL, then reaped.
        child.kill().await?;
    }
    ensure!(delivered == mails);

    // Let the daemon finish, stopping it cleanly to look at the store, until every mail
    // is a case and every queued mail was sent.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let mut child = spawn_daemon(&config_path, &log)?;
        let ran = tokio::time::Instant::now();
        wait_until_quiet(&mut child, &log, http_port).await?;
        terminate(&mut child).await?;
        let store = open_store(&config)?;
        let missing = message_ids
            .iter()
            .filter(|id| store.message(id).ok().flatten().is_none())
            .count();
        // Held mail waits for an operator: settled, not pending.
        let unsent = outbox(&store)?
            .into_iter()
            .filter(|e| !matches!(e.state, OutboxState::Sent { .. } | OutboxState::Held { .. }))
            .count();
        drop(store);
        eprintln!(
            "after a {:.1} s run: {missing} mails not ingested, {unsent} mails not sent",
            ran.elapsed().as_secs_f64()
        );
        if missing == 0 && unsent == 0 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the daemon did not finish: {missing} not ingested, {unsent} not sent");
        }
    }

    // Nothing lost, no duplicate case.
    let store = open_store(&config)?;
    let mut case_of = BTreeMap::new();
    for id in &message_ids {
        match store.message(id)? {
            Some(MessageRecord::Incoming { case, .. }) => {
                case_of.insert(id.clone(), case);
            }
            other => bail!("<{id}> is not a case: {other:?}"),
        }
    }
    let distinct: BTreeSet<_> = case_of.values().cloned().collect();
    ensure!(
        distinct.len() == mails,
        "{} cases for {mails} mails",
        distinct.len()
    );
    let all_cases = store.list_cases(&Default::default())?;
    ensure!(
        all_cases.len() == mails,
        "{} cases in the store",
        all_cases.len()
    );
    let mut expected_acks = BTreeMap::new();
    let mut held_acks = BTreeSet::new();
    for case in &all_cases {
        let acks: Vec<_> = store
            .outbox_of_case(&case.id)?
            .into_iter()
            .filter(|e| e.recipients == [case.sender.email.clone()])
            .collect();
        ensure!(
            acks.len() == 1,
            "{}: {} acknowledgements queued",
            case.id,
            acks.len()
        );
        let message_id =
            String::from_utf8_lossy(&store.outbox_message(&acks[0].id)?.context("ack bytes")?)
                .lines()
                .find_map(|l| l.strip_prefix("Message-ID: ").map(str::to_owned))
                .context("ack without Message-ID")?;
        let message_id = message_id.trim_matches(|c| c == '<' || c == '>').to_owned();
        match &acks[0].state {
            OutboxState::Sent { .. } => {}
            OutboxState::Held { reason, .. } => {
                ensure!(
                    in_doubt == InDoubt::Hold,
                    "{}: held with in_doubt = resend",
                    acks[0].id
                );
                ensure!(reason.starts_with("in doubt"), "{}: {reason}", acks[0].id);
                held_acks.insert(message_id.clone());
            }
            other => bail!("{}: acknowledgement {other:?}", acks[0].id),
        }
        expected_acks.insert(message_id, case.sender.email.clone());
    }
    let held_total = store.held_outbox()?.len();
    drop(store);
    // At most the one mail in flight at each kill is in doubt.
    ensure!(
        held_total <= kills,
        "{held_total} mails held for {kills} kills"
    );

    // Every acknowledgement not held arrives, once per Message-ID; copies are counted. A held
    // one may have arrived (the server took it before the kill) or not.
    let expected_total = expected_acks.len();
    let must_arrive: BTreeSet<String> = expected_acks
        .keys()
        .filter(|id| !held_acks.contains(*id))
        .cloned()
        .collect();
    let copies = wait_for_acks(&stack, &customers, &must_arrive).await?;
    let mut redelivered = 0;
    let mut held_arrived = 0;
    for (message_id, recipient) in &expected_acks {
        let Some((count, at)) = copies.get(message_id) else {
            ensure!(
                held_acks.contains(message_id),
                "acknowledgement <{message_id}> neither arrived nor is held"
            );
            continue;
        };
        ensure!(
            at == recipient,
            "<{message_id}> went to {at}, not {recipient}"
        );
        if held_acks.contains(message_id) {
            held_arrived += 1;
        }
        redelivered += count - 1;
    }
    let unexpected: Vec<_> = copies
        .keys()
        .filter(|id| !expected_acks.contains_key(*id))
        .collect();
    ensure!(
        unexpected.is_empty(),
        "acknowledgements of no case: {unexpected:?}"
    );
    eprintln!(
        "{tag}: {kills} kills (delays {kill_delays:?}); {mails} mails, {mails} cases, \
         {expected_total} acknowledgements, {redelivered} delivered twice; {} held \
         ({held_arrived} of them had reached the mailbox), {held_total} mails held in all",
        held_acks.len()
    );
    match in_doubt {
        InDoubt::Hold => ensure!(
            redelivered == 0,
            "{redelivered} acknowledgements delivered twice with in_doubt = hold"
        ),
        InDoubt::Resend => {
            ensure!(held_acks.is_empty() && held_total == 0);
            ensure!(
                redelivered <= kills,
                "{redelivered} copies of acknowledgements for {kills} kills"
            );
        }
    }
    let log_text = std::fs::read_to_string(&log)?;
    eprintln!(
        "daemon starts: {}, batches committed: {}, clean stops: {}",
        log_text.matches("daemon: running").count(),
        log_text.matches("ingest: batch committed").count(),
        log_text.matches("daemon: stopped").count()
    );
    Ok(())
}

/// The daemon's `/metrics` text and the change generation it is at least as new as, or
/// `None` while the endpoint does not answer. With `after`, the daemon answers once its
/// generation is no longer `after` (or after its long-poll limit): a look per change.
async fn scrape(port: u16, after: Option<u64>) -> Option<(String, u64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let path = match after {
        Some(generation) => format!("/metrics?after={generation}"),
        None => "/metrics".to_owned(),
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    let generation = text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case(complaintd::metrics::GENERATION_HEADER)
            .then(|| value.trim().parse().ok())?
    })?;
    Some((text, generation))
}

fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Writes to one file (the daemon's log), as they happen.
struct FileWrites {
    written: std::sync::Arc<tokio::sync::Notify>,
    _watcher: notify::RecommendedWatcher,
}

impl FileWrites {
    fn watch(path: &Path) -> Result<FileWrites> {
        use notify::Watcher;
        let written = std::sync::Arc::new(tokio::sync::Notify::new());
        let wake = std::sync::Arc::clone(&written);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|event| event.kind.is_modify()) {
                    // One stored wake-up covers any number of writes until the waiter looks.
                    wake.notify_one();
                }
            })
            .context("starting a watch on the daemon's log")?;
        watcher
            .watch(path, notify::RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", path.display()))?;
        Ok(FileWrites {
            written,
            _watcher: watcher,
        })
    }

    /// Waits for a write after the last one waited for (or since watching began).
    async fn next(&self) {
        self.written.notified().await;
    }
}

/// Waits until the daemon (`child`, logging to `log`, serving `/metrics` on `port`) reports
/// itself quiet: its mailbox task waits in IMAP IDLE, so everything in the folder was fetched
/// and committed, and its outbox is empty (the gauge counts mail as soon as a batch queues it).
/// It looks once per change the daemon reports (a long poll on `/metrics`), and before the
/// endpoint answers, once per write to the log ("daemon: running" follows the bind). The
/// caller's look at the store afterwards decides whether the work is done.
async fn wait_until_quiet(child: &mut Child, log: &Path, port: u16) -> Result<()> {
    // Draining thousands of mails through OpenSMTPD takes a while on a busy machine.
    let within = Duration::from_secs(300);
    let quiet = |text: &str| {
        gauge(text, "complaintd_imap_idling{mailbox=\"complaints\"}") == Some(1.0)
            && gauge(text, "complaintd_outbox_depth") == Some(0.0)
    };
    let follow = async {
        // Watching starts before the first look, so the line that follows the bind wakes us.
        let log_writes = FileWrites::watch(log)?;
        let mut seen = None;
        loop {
            match scrape(port, seen).await {
                Some((text, generation)) => {
                    if quiet(&text) {
                        return Ok::<(), anyhow::Error>(());
                    }
                    seen = Some(generation);
                }
                None => {
                    seen = None;
                    log_writes.next().await;
                }
            }
        }
    };
    tokio::select! {
        followed = tokio::time::timeout(within, follow) => followed
            .with_context(|| format!("timed out after {within:?} waiting for the daemon to idle with an empty outbox"))?,
        exited = child.wait() => bail!("complaintd exited with {} before it was quiet", exited?),
    }
}

/// Waits until the customers' mailboxes hold every acknowledgement of `expected` (by
/// Message-ID); returns each acknowledgement found with its number of copies and its mailbox.
async fn wait_for_acks(
    stack: &support::MailStack,
    customers: &[String],
    expected: &BTreeSet<String>,
) -> Result<BTreeMap<String, (usize, String)>> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    // Watching starts before the first look, so no delivery falls between the two.
    let arrivals = MailArrivals::watch(stack)?;
    loop {
        let mut copies: BTreeMap<String, (usize, String)> = BTreeMap::new();
        for customer in customers {
            for raw in inbox(stack, customer).await? {
                if header_of(&raw, "X-Complaintd-Purpose").as_deref() != Some("ack") {
                    continue;
                }
                let entry = copies
                    .entry(message_id_of(&raw))
                    .or_insert((0, customer.clone()));
                entry.0 += 1;
            }
        }
        if expected.iter().all(|id| copies.contains_key(id)) || !arrivals.next(deadline).await {
            return Ok(copies);
        }
    }
}

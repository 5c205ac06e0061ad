//! Crash test: `complaintd run` (a child process) is killed with SIGKILL at random moments
//! while 2,000 complaints are ingested and answered, and restarted, at least 20 times. Then:
//! every Message-ID is a case (nothing lost), no mail opened two cases, and every case's
//! acknowledgement is in its sender's mailbox exactly once as a mail — a copy of the same
//! mail (same Message-ID) can only come from the one mail in flight at a kill, so there are
//! at most as many copies as kills; their number is printed.
//!
//! Mail goes into the complaint Maildir directly (the fast way in), in waves before each
//! restart, so kills land during ingest as well as during sending. `CRASH_SEED` repeats a run.

mod daemon_support;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use complaintd::config::Config;
use complaintd::engine::EngineSettings;
use complaintd::store::{MessageRecord, OutboxState, Store};
use daemon_support::*;
use rand::{Rng, SeedableRng};

const MAILS: usize = 2000;
const CUSTOMERS: usize = 100;
const KILLS: usize = 24;
/// Mail is delivered in this many waves, one before each of the first restarts.
const WAVES: usize = 20;

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

fn terminate(child: &mut Child) -> Result<()> {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    ensure!(status.success(), "kill -TERM failed");
    let exit = child.wait()?;
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
async fn sigkill_at_random_moments_loses_nothing_and_duplicates_no_case() -> Result<()> {
    let seed: u64 = match std::env::var("CRASH_SEED") {
        Ok(seed) => seed.parse().context("CRASH_SEED must be a number")?,
        Err(_) => rand::random(),
    };
    eprintln!("crash test seed: {seed} (CRASH_SEED={seed} repeats it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let customers: Vec<String> = (0..CUSTOMERS)
        .map(|i| format!("crashcust{i:03}@example.test"))
        .collect();
    let stack = stack_with(&customers)?;
    let work = Workspace::new()?;
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config_path =
        work.write_config_with(&stack, "acks_per_sender_per_hour = 10000", |text| {
            let text = text.replace("batch_size = 500", "batch_size = 50").replace(
                "level = \"info\"",
                "level = \"info,complaintd::engine=warn,complaintd::smtp=warn\"",
            );
            format!("{text}\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n")
        })?;
    let config = Config::load(&config_path).map_err(|e| anyhow::anyhow!("config: {e:?}"))?;
    let log = work.path().join("daemon.log");
    // The complaint Maildir exists once its user has logged in.
    let mut mailbox = stack
        .connect(COMPLAINTS, support::ImapSecurity::Plain)
        .await?;
    mailbox.select("INBOX").await?;
    mailbox.logout().await?;

    let run = std::process::id();
    let message_ids: Vec<String> = (0..MAILS)
        .map(|i| format!("crash-{run}-{i}@example.test"))
        .collect();
    let sender_of = |i: usize| customers[i % CUSTOMERS].clone();
    let per_wave = MAILS.div_ceil(WAVES);
    let mut delivered = 0;

    let mut kill_delays = Vec::new();
    for round in 0..KILLS {
        if delivered < MAILS {
            let end = (delivered + per_wave).min(MAILS);
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
        // The random moment of the kill: anywhere from startup to well into the work.
        let delay = Duration::from_millis(rng.gen_range(50..1500));
        kill_delays.push(delay);
        tokio::time::sleep(delay).await;
        if let Some(status) = child.try_wait()? {
            bail!(
                "round {round}: complaintd exited by itself with {status}; log: {}",
                log.display()
            );
        }
        child.kill()?;
        child.wait()?;
    }
    ensure!(delivered == MAILS);

    // Let the daemon finish, stopping it cleanly to look at the store, until every mail
    // is a case and every queued mail was sent.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let mut child = spawn_daemon(&config_path, &log)?;
        let ran = tokio::time::Instant::now();
        wait_until_quiet(http_port).await?;
        terminate(&mut child)?;
        let store = open_store(&config)?;
        let missing = message_ids
            .iter()
            .filter(|id| store.message(id).ok().flatten().is_none())
            .count();
        let unsent = outbox(&store)?
            .into_iter()
            .filter(|e| !matches!(e.state, OutboxState::Sent { .. }))
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
        distinct.len() == MAILS,
        "{} cases for {MAILS} mails",
        distinct.len()
    );
    let all_cases = store.list_cases(&Default::default())?;
    ensure!(
        all_cases.len() == MAILS,
        "{} cases in the store",
        all_cases.len()
    );
    let mut expected_acks = BTreeMap::new();
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
        expected_acks.insert(
            message_id.trim_matches(|c| c == '<' || c == '>').to_owned(),
            case.sender.email.clone(),
        );
    }
    drop(store);

    // Every acknowledgement arrives, once per Message-ID; copies are counted.
    let expected_total = expected_acks.len();
    let copies = wait_for_acks(&stack, &customers, expected_total).await?;
    let mut redelivered = 0;
    for (message_id, recipient) in &expected_acks {
        let (count, at) = copies
            .get(message_id)
            .with_context(|| format!("acknowledgement <{message_id}> never arrived"))?;
        ensure!(
            at == recipient,
            "<{message_id}> went to {at}, not {recipient}"
        );
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
        "{KILLS} kills (delays {kill_delays:?}); {MAILS} mails, {MAILS} cases, \
         {expected_total} acknowledgements, {redelivered} delivered twice"
    );
    ensure!(
        redelivered <= KILLS,
        "{redelivered} copies of acknowledgements for {KILLS} kills"
    );
    let log_text = std::fs::read_to_string(&log)?;
    eprintln!(
        "daemon starts: {}, batches committed: {}, clean stops: {}",
        log_text.matches("daemon: running").count(),
        log_text.matches("ingest: batch committed").count(),
        log_text.matches("daemon: stopped").count()
    );
    Ok(())
}

/// The daemon's `/metrics` text, or `None` while the endpoint does not answer.
fn scrape(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
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

/// Waits until the daemon idles in IMAP IDLE with an empty outbox on two looks in a row
/// (the gauges may lag a commit by a moment; the caller checks the store afterwards).
async fn wait_until_quiet(port: u16) -> Result<()> {
    let mut quiet_looks = 0;
    // Draining thousands of mails through OpenSMTPD takes a while on a busy machine.
    let within = Duration::from_secs(300);
    wait_until("the daemon to idle with an empty outbox", within, || {
        let quiet = scrape(port).is_some_and(|text| {
            gauge(&text, "complaintd_imap_idling{mailbox=\"complaints\"}") == Some(1.0)
                && gauge(&text, "complaintd_outbox_depth") == Some(0.0)
        });
        quiet_looks = if quiet { quiet_looks + 1 } else { 0 };
        Ok((quiet_looks >= 2).then_some(()))
    })
    .await
}

/// Waits until the customers' mailboxes hold `expected` distinct acknowledgements; returns
/// each one's number of copies and its mailbox.
async fn wait_for_acks(
    stack: &support::MailStack,
    customers: &[String],
    expected: usize,
) -> Result<BTreeMap<String, (usize, String)>> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
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
        if copies.len() >= expected || tokio::time::Instant::now() > deadline {
            return Ok(copies);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

//! The operator's commands against a running daemon (real mail stack, the built binary):
//! `complaintd case list|show --json` print the live cases while the daemon holds the store
//! (asked through its loopback endpoint), exactly what the same command prints from the store
//! once the daemon stopped; and a mail left in doubt by a crash is held at the next start
//! (`smtp.in_doubt = "hold"`), shown by `complaintd outbox list --held`, and sent once when
//! `complaintd outbox release` releases it through the running daemon.

mod daemon_support;
mod support;

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};
use complaintd::case::{Case, CaseState, EventKind};
use complaintd::config::{Config, InDoubt};
use complaintd::engine::inspect::{self, CaseDetail, CaseQuery};
use complaintd::engine::{Engine, EngineSettings};
use complaintd::store::{CaseFilter, OutboxEntry, OutboxState, Store};
use daemon_support::*;

/// Runs the built `complaintd` with `args` (off the runtime's threads: it blocks).
async fn complaintd(args: Vec<String>) -> Result<Output> {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_complaintd"))
            .args(&args)
            .output()
            .context("running complaintd")
    })
    .await?
}

fn args(list: &[&str], config: &Path) -> Vec<String> {
    let mut out: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
    out.push("--config".into());
    out.push(config.display().to_string());
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Stdout of a command that must succeed.
async fn ok(list: &[&str], config: &Path) -> Result<String> {
    let output = complaintd(args(list, config)).await?;
    ensure!(
        output.status.success(),
        "complaintd {list:?} exited with {}: {}",
        output.status,
        text(&output.stderr)
    );
    Ok(text(&output.stdout))
}

/// What the `--json` output of a query must be, read from the store in this process.
fn expected_json(engine: &Engine, query: &CaseQuery) -> Result<String> {
    Ok(inspect::answer_json(&inspect::answer(
        engine.store(),
        query,
    )?)?)
}

/// Waits until `count` cases exist and no mail is waiting, so the store stands still.
async fn wait_settled(daemon: &RunningDaemon, count: usize) -> Result<()> {
    daemon
        .wait_until("the cases and their mail to settle", DEADLINE, || {
            let store = daemon.engine.store();
            let cases = store.list_cases(&CaseFilter::default())?;
            let mut pending = store.queue_depth();
            for case in &cases {
                pending += store
                    .outbox_of_case(&case.id)?
                    .iter()
                    .filter(|e| {
                        !matches!(e.state, OutboxState::Sent { .. } | OutboxState::Held { .. })
                    })
                    .count();
            }
            Ok((cases.len() == count && pending == 0).then_some(()))
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reads_live_cases_and_releases_held_mail_through_the_running_daemon() -> Result<()>
{
    init_test_logging();
    let customers: Vec<String> = (0..4)
        .map(|i| format!("admincust{i}@example.test"))
        .collect();
    let stack = stack_with(&customers)?;
    let work = Workspace::new()?;
    let [http_port] = support::free_ports::<1>()?;
    let config_path = work.write_config_with(&stack, "", |text| {
        let text = text.replace("[smtp]\n", "[smtp]\nin_doubt = \"hold\"\n");
        format!("{text}\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n")
    })?;
    let config = Config::load(&config_path).map_err(|e| anyhow::anyhow!("config: {e:?}"))?;
    ensure!(config.smtp.in_doubt == InDoubt::Hold);
    let mut mailbox = stack
        .connect(COMPLAINTS, support::ImapSecurity::Plain)
        .await?;
    mailbox.select("INBOX").await?;
    mailbox.logout().await?;
    let run = std::process::id();
    let deliver = |i: usize| {
        let raw = complaint(
            "客户",
            &customers[i],
            &format!("燃气表读数不对 #{i}"),
            "这个月的燃气表读数明显偏高，请派人核查。",
            &format!("admin-{run}-{i}@example.test"),
        );
        deliver_to_maildir(&stack, COMPLAINTS, &format!("{run}.{i}"), &raw)
    };

    // 1. Three complaints while the daemon runs; the CLI prints them from the daemon.
    let daemon = RunningDaemon::start(config.clone(), fast_options(Default::default())).await?;
    for i in 0..3 {
        deliver(i)?;
    }
    wait_settled(&daemon, 3).await?;

    let listed = ok(&["case", "list", "--json"], &config_path).await?;
    let all = CaseQuery::List(CaseFilter::default());
    ensure!(
        listed == expected_json(&daemon.engine, &all)?,
        "case list --json through the daemon differs from the store:\n{listed}"
    );
    let cases: Vec<Case> = serde_json::from_str(&listed)?;
    ensure!(cases.len() == 3, "{} cases listed", cases.len());
    let senders: Vec<&str> = cases.iter().map(|c| c.sender.email.as_str()).collect();
    ensure!(
        senders
            == customers[..3]
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        "{senders:?}"
    );

    let id = cases[1].id.clone();
    let shown = ok(&["case", "show", &id.0, "--json"], &config_path).await?;
    ensure!(shown == expected_json(&daemon.engine, &CaseQuery::Show(id.clone()))?);
    let detail: CaseDetail = serde_json::from_str(&shown)?;
    ensure!(detail.case.id == id && detail.case.sender.email == customers[1]);
    ensure!(
        detail
            .events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Created { .. })),
        "the event log is shown: {:?}",
        detail.events
    );
    ensure!(
        detail
            .mail
            .iter()
            .all(|m| matches!(m.state, OutboxState::Sent { .. })),
        "{:?}",
        detail.mail
    );

    let state = cases[0].state.as_str();
    let filtered = ok(&["case", "list", "--state", state, "--json"], &config_path).await?;
    let filtered: Vec<Case> = serde_json::from_str(&filtered)?;
    let same_state = cases
        .iter()
        .filter(|c| c.state == CaseState::parse(state).unwrap_or(c.state))
        .count();
    ensure!(filtered.len() == same_state && filtered.iter().all(|c| c.state == cases[0].state));

    let found = ok(
        &["case", "search", customers[2].as_str(), "--json"],
        &config_path,
    )
    .await?;
    let found: Vec<Case> = serde_json::from_str(&found)?;
    ensure!(found.len() == 1 && found[0].sender.email == customers[2]);

    let missing = complaintd(args(
        &["case", "show", "TS-2026-999999", "--json"],
        &config_path,
    ))
    .await?;
    ensure!(missing.status.code() == Some(1), "{missing:?}");
    ensure!(
        text(&missing.stderr).contains("error: no case TS-2026-999999"),
        "{missing:?}"
    );

    // Without the configuration there is no endpoint to ask: a clear error.
    let by_path = complaintd(vec![
        "case".into(),
        "list".into(),
        "--store".into(),
        work.store().display().to_string(),
    ])
    .await?;
    ensure!(by_path.status.code() == Some(1), "{by_path:?}");
    let message = text(&by_path.stderr);
    ensure!(
        message.contains("in use by another process") && message.contains("--config"),
        "{message}"
    );

    // 2. A mail in doubt: SMTP is down when the fourth complaint's acknowledgement is due, the
    // daemon stops, and its attempt is recorded as a crash during DATA leaves it.
    stack.stop_smtp()?;
    deliver(3)?;
    let ack_id = daemon
        .wait_until(
            "the fourth acknowledgement to fail for now",
            DEADLINE,
            || {
                let store = daemon.engine.store();
                for case in store.list_cases(&CaseFilter::default())? {
                    if case.sender.email != customers[3] {
                        continue;
                    }
                    for entry in store.outbox_of_case(&case.id)? {
                        if entry.recipients == [customers[3].clone()]
                            && matches!(entry.state, OutboxState::TemporaryFailure { .. })
                        {
                            return Ok(Some(entry.id));
                        }
                    }
                }
                Ok(None)
            },
        )
        .await?;
    daemon.stop().await?;
    {
        let settings = EngineSettings::from_config(&config)?.store_settings();
        let store = Store::open_with(&config.store.path, settings)?;
        store.outbox_attempt(&ack_id, chrono::Utc::now())?;
        store.flush()?;
    }
    stack.start_smtp()?;

    // 3. The next start holds it; the CLI lists it and releases it through the daemon.
    let daemon = RunningDaemon::start(config.clone(), fast_options(Default::default())).await?;
    ensure!(daemon.metric("complaintd_outbox_held") == 1.0);
    ensure!(daemon.metric("complaintd_mail_in_doubt_total") == 1.0);
    wait_settled(&daemon, 4).await?;
    let held = ok(&["outbox", "list", "--held", "--json"], &config_path).await?;
    let held: Vec<OutboxEntry> = serde_json::from_str(&held)?;
    ensure!(held.len() == 1 && held[0].id == ack_id, "{held:?}");
    ensure!(matches!(held[0].state, OutboxState::Held { .. }));
    let case_id = held[0].case.clone().context("the ack's case")?;
    let shown: CaseDetail =
        serde_json::from_str(&ok(&["case", "show", &case_id.0, "--json"], &config_path).await?)?;
    ensure!(
        shown.events.iter().any(|e| matches!(
            &e.kind,
            EventKind::Note { text } if text.starts_with(&format!("mail {ack_id} held: in doubt"))
        )),
        "the hold is on the case: {:?}",
        shown.events
    );
    let nothing_sent = inbox(&stack, &customers[3]).await?;
    ensure!(
        nothing_sent.is_empty(),
        "a held acknowledgement was sent: {} mails",
        nothing_sent.len()
    );

    let released = ok(&["outbox", "release", &ack_id], &config_path).await?;
    ensure!(released == format!("released {ack_id}\n"), "{released}");
    daemon
        .wait_until("the released acknowledgement to be sent", DEADLINE, || {
            Ok(matches!(
                daemon
                    .engine
                    .store()
                    .outbox_entry(&ack_id)?
                    .map(|e| e.state),
                Some(OutboxState::Sent { .. })
            )
            .then_some(()))
        })
        .await?;
    ensure!(daemon.metric("complaintd_outbox_held") == 0.0);
    let acks = wait_for_mails(
        &stack,
        &customers[3],
        1,
        |raw| header_of(raw, "X-Complaintd-Purpose").as_deref() == Some("ack"),
        DEADLINE,
    )
    .await?;
    ensure!(acks.len() == 1, "{} acknowledgements", acks.len());
    let again = complaintd(args(&["outbox", "release", &ack_id], &config_path)).await?;
    ensure!(again.status.code() == Some(1), "{again:?}");
    ensure!(
        text(&again.stderr).contains("is sent, not held"),
        "{again:?}"
    );

    // 4. The text output is the same through the daemon as from the store itself.
    let live_list = ok(&["case", "list"], &config_path).await?;
    let live_show = ok(&["case", "show", &case_id.0], &config_path).await?;
    let live_json = ok(&["case", "list", "--json"], &config_path).await?;
    daemon.stop().await?;
    ensure!(ok(&["case", "list"], &config_path).await? == live_list);
    ensure!(ok(&["case", "show", &case_id.0], &config_path).await? == live_show);
    ensure!(ok(&["case", "list", "--json"], &config_path).await? == live_json);
    ensure!(live_list.lines().count() == 4, "{live_list}");
    ensure!(
        live_show.contains(&format!("{ack_id}  sent")),
        "{live_show}"
    );
    Ok(())
}

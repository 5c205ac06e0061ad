//! Helpers for the daemon's end-to-end tests: a private mail stack with the default policy's
//! users, a configuration for it, the daemon run in-process (`daemon::run_with`) or as a child
//! process (`complaintd run`), complaint mails built with a real MIME builder, and waits on
//! conditions with deadlines.
//!
//! Used by `tests/e2e_daemon.rs`, `tests/e2e_outage.rs`, `tests/e2e_crash.rs`,
//! `tests/e2e_lifecycle.rs`, `tests/e2e_security.rs`, `tests/e2e_restart.rs`,
//! `tests/e2e_admin.rs`, `tests/daemon_scheduler.rs`, `tests/daemon_waits.rs` (the waits'
//! own tests), `tests/retention.rs` and `benches/ingest.rs` next to `tests/support/`
//! (`mod support; mod daemon_support;`).

// Each test binary uses only part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use complaintd::backoff::BackoffPolicy;
use complaintd::config::Config;
use complaintd::daemon::{self, DaemonError, DaemonOptions, Ready};
use complaintd::engine::Engine;
use complaintd::imap::ImapOptions;
use complaintd::metrics::Metrics;
use complaintd::smtp::SenderOptions;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::support::{self, IsolatedStack, MailStack};

/// The complaint address of every test configuration.
pub const COMPLAINTS: &str = "complaints@example.test";

/// Every address of the default policy's departments (`rules/00-organisation.rules`).
pub const DEPARTMENT_ADDRESSES: [&str; 10] = [
    "service@gas.example",
    "service-lead@gas.example",
    "service-supervisor@gas.example",
    "network@gas.example",
    "network-duty@gas.example",
    "network-lead@gas.example",
    "billing@gas.example",
    "billing-lead@gas.example",
    "service-office@gas.example",
    "gm@gas.example",
];

/// A generous limit for one waited-for condition on a shared, slow machine.
pub const DEADLINE: Duration = Duration::from_secs(90);

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Routes the daemon's `tracing` output to the test's captured output (shown on failure).
pub fn init_test_logging() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            std::env::var("RUST_LOG")
                .unwrap_or_else(|_| "info,complaintd::smtp=warn,complaintd::engine=warn".into()),
        )
        .try_init();
}

/// A private mail stack with the complaint address, the departments and `customers`.
pub fn stack_with(customers: &[String]) -> Result<IsolatedStack> {
    let mut users: Vec<&str> = vec![COMPLAINTS];
    users.extend(DEPARTMENT_ADDRESSES);
    users.extend(customers.iter().map(String::as_str));
    MailStack::isolated(&users)
}

/// A directory holding what a daemon needs besides the mail stack: a copy of the default
/// policy (tests change it), the store, the secret and the password file, the config file.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Result<Workspace> {
        let dir = tempfile::Builder::new()
            .prefix("complaintd-e2e-")
            .tempdir()?;
        copy_dir(&repo().join("rules"), &dir.path().join("rules"))?;
        std::fs::write(
            dir.path().join("secret"),
            "e2e-secret-0123456789abcdefghijklmnopqrstuvwxyz\n",
        )?;
        std::fs::write(
            dir.path().join("password"),
            format!("{}\n", support::PASSWORD),
        )?;
        Ok(Workspace { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn rules(&self) -> PathBuf {
        self.path().join("rules")
    }

    pub fn store(&self) -> PathBuf {
        self.path().join("store")
    }

    /// Writes `config.toml` for `stack` (with `mail_extra` appended to the `[mail]` table) and
    /// returns its path.
    pub fn write_config(&self, stack: &MailStack, mail_extra: &str) -> Result<PathBuf> {
        self.write_config_with(stack, mail_extra, |text| text)
    }

    /// Like [`Workspace::write_config`], with the text passed through `edit` first.
    pub fn write_config_with(
        &self,
        stack: &MailStack,
        mail_extra: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Result<PathBuf> {
        let text = format!(
            r#"
time_zone = "Asia/Shanghai"

[store]
path = "store"

[rules]
dir = "rules"
watch = true

[mail]
organisation = "城市燃气"
complaint_address = "{COMPLAINTS}"
reply_token_secret_file = "secret"
message_id_host = "complaints.example.test"
{mail_extra}

[[mailbox]]
name = "complaints"
host = "127.0.0.1"
port = {imap}
tls = "starttls"
ca_file = "{ca}"
user = "{COMPLAINTS}"
password_file = "password"
channel = "own"
batch_size = 500
poll_interval = "2s"

[smtp]
host = "127.0.0.1"
port = {smtp}
tls = "none"
from = "{COMPLAINTS}"
per_minute_cap = 100000
timeout = "10s"

[log]
level = "info"
"#,
            imap = stack.imap_port(),
            smtp = stack.smtp_port(),
            ca = stack.ca_cert_path().display(),
        );
        let path = self.path().join("config.toml");
        std::fs::write(&path, edit(text))?;
        Ok(path)
    }

    pub fn config(&self, stack: &MailStack, mail_extra: &str) -> Result<Config> {
        self.config_with(stack, mail_extra, |text| text)
    }

    /// The configuration of [`Workspace::write_config_with`], loaded.
    pub fn config_with(
        &self,
        stack: &MailStack,
        mail_extra: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Result<Config> {
        let path = self.write_config_with(stack, mail_extra, edit)?;
        Config::load(&path).map_err(|errors| {
            anyhow::anyhow!(
                "config: {}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })
    }
}

impl Workspace {
    /// A configuration whose mail servers are nowhere (port 9 refuses), for a daemon that is
    /// driven by its clock alone; `store_extra` adds lines to `[store]`.
    pub fn offline_config(&self, store_extra: &str) -> Result<Config> {
        let text = format!(
            r#"
time_zone = "Asia/Shanghai"
[store]
path = "store"
{store_extra}
[rules]
dir = "rules"
watch = false
[mail]
complaint_address = "{COMPLAINTS}"
reply_token_secret_file = "secret"
[[mailbox]]
name = "complaints"
host = "127.0.0.1"
port = 9
tls = "none"
user = "{COMPLAINTS}"
password_file = "password"
channel = "own"
[smtp]
host = "127.0.0.1"
port = 9
tls = "none"
from = "{COMPLAINTS}"
"#
        );
        let path = self.path().join("config.toml");
        std::fs::write(&path, text)?;
        Config::load(&path).map_err(|e| anyhow::anyhow!("config: {e:?}"))
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Short retry and reconnect delays, so outages heal within a test.
pub fn fast_options(metrics: Metrics) -> DaemonOptions {
    let quick = BackoffPolicy::new(Duration::from_millis(200), Duration::from_secs(1));
    let mut imap = ImapOptions::new(0);
    imap.reconnect = quick;
    imap.command_timeout = Duration::from_secs(20);
    let sender = SenderOptions {
        retry: quick,
        reconnect: quick,
        idle_poll: Duration::from_secs(2),
        ..SenderOptions::default()
    };
    DaemonOptions {
        metrics,
        imap,
        sender,
        ..DaemonOptions::default()
    }
}

/// A daemon running in this process.
pub struct RunningDaemon {
    pub engine: Arc<Engine>,
    pub metrics: Metrics,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), DaemonError>>,
}

impl RunningDaemon {
    /// Starts the daemon and waits until its tasks run.
    pub async fn start(config: Config, options: DaemonOptions) -> Result<RunningDaemon> {
        let metrics = options.metrics.clone();
        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let options = DaemonOptions {
            ready: Some(ready_tx),
            ..options
        };
        let task = tokio::spawn(daemon::run_with(config, options, async move {
            let _ = stop_rx.await;
        }));
        let Ready { engine, .. } = match ready_rx.await {
            Ok(ready) => ready,
            Err(_) => {
                let result = task.await.context("the daemon task")?;
                bail!("the daemon did not start: {result:?}");
            }
        };
        Ok(RunningDaemon {
            engine,
            metrics,
            stop: Some(stop_tx),
            task,
        })
    }

    /// Shuts the daemon down and returns its result.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .context("the daemon did not stop in time")?
            .context("the daemon task")?
            .context("the daemon's result")
    }

    /// Every case, by the Message-ID of the complaint that opened it.
    pub fn cases_by_message_id(&self) -> Result<BTreeMap<String, complaintd::case::Case>> {
        cases_by_message_id(&self.engine)
    }

    /// A metric's value from the Prometheus text (0 when absent).
    pub fn metric(&self, line_prefix: &str) -> f64 {
        metric(&self.metrics, line_prefix)
    }

    /// [`wait_until`] on this daemon's changes.
    pub async fn wait_until<T>(
        &self,
        what: &str,
        within: Duration,
        check: impl FnMut() -> Result<Option<T>>,
    ) -> Result<T> {
        wait_until(&self.metrics, what, within, check).await
    }
}

/// A metric's value from the Prometheus text, by the start of its line (name and labels).
pub fn metric(metrics: &Metrics, line_prefix: &str) -> f64 {
    metrics
        .encode()
        .lines()
        .find_map(|line| {
            line.strip_prefix(line_prefix)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|value| value.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Every case in the store, keyed by the Message-ID (without brackets) that opened it.
pub fn cases_by_message_id(engine: &Engine) -> Result<BTreeMap<String, complaintd::case::Case>> {
    use complaintd::case::EventKind;
    let store = engine.store();
    let mut out = BTreeMap::new();
    for case in store.list_cases(&Default::default())? {
        let opened_by = store
            .events(&case.id)?
            .into_iter()
            .find_map(|e| match e.kind {
                EventKind::Created { message_id, .. } => Some(message_id),
                _ => None,
            });
        let Some(message_id) = opened_by else {
            bail!("case {} has no Created event", case.id);
        };
        let key = message_id.trim_matches(|c| c == '<' || c == '>').to_owned();
        if out.insert(key.clone(), case).is_some() {
            bail!("two cases were opened by <{key}>");
        }
    }
    Ok(out)
}

/// Looks at `check` now and again after every change the daemon reports through `metrics`
/// ([`Metrics::changes`]: a metric changed, a batch or an outbox result was committed,
/// timers fired) until it returns `Some`; fails after `within` naming `what`. Nothing is
/// looked at on a timer: the daemon's own report that something changed is the only wake.
pub async fn wait_until<T>(
    metrics: &Metrics,
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + within;
    // Subscribed before the first look, so a change during it wakes the next wait.
    let mut changes = metrics.changes();
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        // Changes coalesce: one wake may stand for many, so every wake looks again.
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => bail!("the daemon's metrics went away while waiting for {what}"),
            Err(_) => bail!("timed out after {within:?} waiting for {what}"),
        }
    }
}

/// A complaint built with lettre's MIME builder: encoded headers, UTF-8 body.
pub fn complaint(
    from_name: &str,
    from: &str,
    subject: &str,
    body: &str,
    message_id: &str,
) -> Vec<u8> {
    use lettre::message::{header::ContentType, Mailbox};
    let from = Mailbox::new(
        Some(from_name.to_owned()),
        from.parse().expect("an address"),
    );
    lettre::Message::builder()
        .from(from)
        .to(COMPLAINTS.parse().expect("an address"))
        .subject(subject)
        .message_id(Some(format!("<{message_id}>")))
        .header(ContentType::TEXT_PLAIN)
        .body(body.to_owned())
        .expect("a valid message")
        .formatted()
}

/// The decoded Subject of a raw mail.
pub fn subject_of(raw: &[u8]) -> String {
    mail_parser::MessageParser::default()
        .parse(raw)
        .and_then(|m| m.subject().map(str::to_owned))
        .unwrap_or_default()
}

/// The Message-ID (without brackets) of a raw mail.
pub fn message_id_of(raw: &[u8]) -> String {
    mail_parser::MessageParser::default()
        .parse(raw)
        .and_then(|m| m.message_id().map(str::to_owned))
        .unwrap_or_default()
}

/// A header of a raw mail, decoded as text.
pub fn header_of(raw: &[u8], name: &str) -> Option<String> {
    let message = mail_parser::MessageParser::default().parse(raw)?;
    message
        .header(name)
        .and_then(|h| h.as_text().map(str::to_owned))
}

/// Every mail in `user`'s INBOX, raw.
pub async fn inbox(stack: &MailStack, user: &str) -> Result<Vec<Vec<u8>>> {
    let mut mailbox = stack
        .connect(user, support::ImapSecurity::Plain)
        .await
        .with_context(|| format!("logging in as {user}"))?;
    let mails = mailbox.fetch_all("INBOX").await?;
    mailbox.logout().await?;
    Ok(mails)
}

/// Waits until `user`'s INBOX holds at least `count` mails matching `predicate`; returns
/// every matching mail (there may be more than `count`).
pub async fn wait_for_mails(
    stack: &MailStack,
    user: &str,
    count: usize,
    predicate: impl Fn(&[u8]) -> bool,
    within: Duration,
) -> Result<Vec<Vec<u8>>> {
    let deadline = Instant::now() + within;
    // Watching starts before the first look, so no delivery falls between the two.
    let arrivals = MailArrivals::watch(stack)?;
    loop {
        let matching: Vec<Vec<u8>> = inbox(stack, user)
            .await?
            .into_iter()
            .filter(|raw| predicate(raw))
            .collect();
        if matching.len() >= count {
            return Ok(matching);
        }
        if !arrivals.next(deadline).await {
            bail!(
                "{user}: {} of {count} expected mails after {within:?}",
                matching.len()
            );
        }
    }
}

/// Deliveries into any mailbox of a mail stack, as they happen: a file created in, or
/// renamed into, a Maildir's `new/` directory (Dovecot's LMTP delivery and
/// [`deliver_to_maildir`] both end that way). Nothing else wakes a waiter, so Dovecot's own
/// writes while a waiter reads the mailbox (its index files, moving mail to `cur/`) do not
/// make it look again.
pub struct MailArrivals {
    arrived: Arc<tokio::sync::Notify>,
    _watcher: notify::RecommendedWatcher,
}

impl MailArrivals {
    /// Starts watching every mailbox of `stack`.
    pub fn watch(stack: &MailStack) -> Result<MailArrivals> {
        use notify::event::{EventKind, ModifyKind, RenameMode};
        use notify::Watcher;
        let arrived = Arc::new(tokio::sync::Notify::new());
        let wake = Arc::clone(&arrived);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                // A rename reported as one event names the source first, the target last.
                let targets = match event.kind {
                    EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                        &event.paths[..]
                    }
                    EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                        &event.paths[event.paths.len().saturating_sub(1)..]
                    }
                    _ => return,
                };
                let in_new = |path: &PathBuf| {
                    path.parent().and_then(Path::file_name) == Some("new".as_ref())
                };
                if targets.iter().any(in_new) {
                    // One stored wake-up covers any number of deliveries until the waiter looks.
                    wake.notify_one();
                }
            })
            .context("starting a watch on the mail stack's mailboxes")?;
        let mail = stack.dir().join("mail");
        watcher
            .watch(&mail, notify::RecursiveMode::Recursive)
            .with_context(|| format!("watching {}", mail.display()))?;
        Ok(MailArrivals {
            arrived,
            _watcher: watcher,
        })
    }

    /// Waits for a delivery after the last one waited for (or since watching began);
    /// `false` when `deadline` came first.
    pub async fn next(&self, deadline: Instant) -> bool {
        tokio::time::timeout_at(deadline, self.arrived.notified())
            .await
            .is_ok()
    }
}

/// Writes `raw` straight into the Maildir of `user` in `stack` (the fast way in: Dovecot
/// indexes new files on its next look), as the virtual mail user owns them.
pub fn deliver_to_maildir(stack: &MailStack, user: &str, unique: &str, raw: &[u8]) -> Result<()> {
    let (local, domain) = user.split_once('@').context("an address")?;
    let mut maildir = stack.dir().join("mail");
    for part in [domain, local, "Maildir"] {
        maildir = maildir.join(part);
        ensure_vmail_dir(&maildir)?;
    }
    for sub in ["tmp", "new", "cur"] {
        ensure_vmail_dir(&maildir.join(sub))?;
    }
    // Written under tmp/ and renamed into new/, as the Maildir protocol asks, so Dovecot
    // never sees half a message.
    let name = format!("{unique}.complaintd-e2e");
    let tmp = maildir.join("tmp").join(&name);
    std::fs::write(&tmp, raw)?;
    chown_vmail(&tmp)?;
    std::fs::rename(&tmp, maildir.join("new").join(&name))?;
    Ok(())
}

/// Creates `dir` owned by the virtual mail user, unless it exists (Dovecot may create it
/// at the same moment).
fn ensure_vmail_dir(dir: &Path) -> Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => chown_vmail(dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating {}", dir.display())),
    }
}

fn chown_vmail(path: &Path) -> Result<()> {
    std::os::unix::fs::chown(path, Some(5000), Some(5000))
        .with_context(|| format!("chown {}", path.display()))
}

/// The options of [`fast_options`] with the daemon's clock replaced by `clock` (a test's
/// `ManualClock`, shared across restarts).
pub fn options_with_clock(clock: &complaintd::clock::ManualClock) -> DaemonOptions {
    DaemonOptions {
        clock: Arc::new(clock.clone()),
        ..fast_options(Metrics::new())
    }
}

/// A reply as a mail client writes it: built with lettre's MIME builder, `From` a display name
/// and address, threaded on `in_reply_to` (a Message-ID without brackets) when given.
pub struct Reply<'a> {
    pub from_name: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub subject: &'a str,
    pub in_reply_to: Option<&'a str>,
    pub body: &'a str,
    pub message_id: &'a str,
}

impl Reply<'_> {
    pub fn build(&self) -> Vec<u8> {
        use lettre::message::{header::ContentType, Mailbox};
        let from = Mailbox::new(
            Some(self.from_name.to_owned()),
            self.from.parse().expect("an address"),
        );
        let mut builder = lettre::Message::builder()
            .from(from)
            .to(self.to.parse().expect("an address"))
            .subject(self.subject)
            .message_id(Some(format!("<{}>", self.message_id)));
        if let Some(parent) = self.in_reply_to {
            builder = builder
                .in_reply_to(format!("<{parent}>"))
                .references(format!("<{parent}>"));
        }
        builder
            .header(ContentType::TEXT_PLAIN)
            .body(self.body.to_owned())
            .expect("a valid message")
            .formatted()
    }
}

/// The decoded text body of a raw mail (its first text part).
pub fn text_of(raw: &[u8]) -> String {
    mail_parser::MessageParser::default()
        .parse(raw)
        .and_then(|m| m.body_text(0).map(|text| text.into_owned()))
        .unwrap_or_default()
}

/// The address of a raw mail's `Reply-To` (a forward's reply-token address).
pub fn reply_to_of(raw: &[u8]) -> Option<String> {
    let message = mail_parser::MessageParser::default().parse(raw)?;
    message
        .reply_to()
        .and_then(|address| address.first())
        .and_then(|address| address.address())
        .map(str::to_owned)
}

/// Waits on IMAP IDLE until `user`'s INBOX holds `count` mails matching `predicate` and returns
/// them in arrival order; fails after `within`. Mails arriving later are not looked at, so a
/// caller that wants "exactly `count`" reads the mailbox again after a later marker mail.
pub async fn wait_for_matching(
    stack: &MailStack,
    user: &str,
    count: usize,
    predicate: impl Fn(&[u8]) -> bool,
    within: Duration,
) -> Result<Vec<Vec<u8>>> {
    let found = std::cell::RefCell::new(Vec::new());
    let mut mailbox = stack
        .connect(user, support::ImapSecurity::Plain)
        .await
        .with_context(|| format!("logging in as {user}"))?;
    // `Mailbox::wait_for` shows every mail once, in UID order, and stops at the first `true`:
    // counting in the predicate waits for the `count`-th match.
    mailbox
        .wait_for(
            "INBOX",
            |raw| {
                if predicate(raw) {
                    found.borrow_mut().push(raw.to_vec());
                }
                found.borrow().len() >= count
            },
            within,
        )
        .await
        .with_context(|| format!("{user}: {} of {count} expected mails", found.borrow().len()))?;
    mailbox.logout().await?;
    Ok(found.into_inner())
}

/// The state changes in a case's events, in order.
pub fn state_changes(
    events: &[complaintd::case::Event],
) -> Vec<(complaintd::case::CaseState, complaintd::case::CaseState)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            complaintd::case::EventKind::StateChanged { from, to, .. } => Some((*from, *to)),
            _ => None,
        })
        .collect()
}

/// Waits until the store knows every one of `message_ids` (ingested, in one committed batch).
pub async fn wait_ingested(daemon: &RunningDaemon, message_ids: &[&str]) -> Result<()> {
    daemon
        .wait_until("the mails to be ingested", DEADLINE, || {
            for id in message_ids {
                if daemon.engine.store().message(id)?.is_none() {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })
        .await
}

/// Waits until every mail queued for `case` was sent (none scheduled or failing for now).
pub async fn wait_outbox_sent(
    daemon: &RunningDaemon,
    case: &complaintd::case::CaseId,
) -> Result<()> {
    use complaintd::store::OutboxState;
    daemon
        .wait_until(&format!("the mail of {case} to be sent"), DEADLINE, || {
            let pending = daemon
                .engine
                .store()
                .outbox_of_case(case)?
                .into_iter()
                .filter(|entry| !matches!(entry.state, OutboxState::Sent { .. }))
                .count();
            Ok((pending == 0).then_some(()))
        })
        .await
}

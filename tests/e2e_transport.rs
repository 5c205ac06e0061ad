//! End-to-end tests of the IMAP ingest and SMTP delivery transports against a real local
//! Dovecot and OpenSMTPD (started by `scripts/mailstack.sh`), plus scripted SMTP servers
//! for failures a real server will not produce on demand.
//!
//! Every test that needs the mail stack gets its own isolated stack from the harness in
//! `tests/support/` (own directory, free ports), so tests that stop a server cannot disturb
//! the others; the stack is taken down when the test ends.

mod support;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use complaintd::backoff::BackoffPolicy;
use complaintd::clock::{Clock, SystemClock};
use complaintd::config::{AfterIngest, MailboxConfig, SmtpConfig, TlsMode};
use complaintd::imap::plan::folder_name;
use complaintd::imap::{
    run_mailbox, Checkpoint, FetchedBatch, FetchedMessage, ImapOptions, IngestSink, SinkError,
};
use complaintd::metrics::{FailureKind, Metrics};
use complaintd::smtp::{run_sender, OutboxError, OutboxSource, OutgoingMail, SenderOptions};
use futures::TryStreamExt;
use support::PASSWORD;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Generous: the machine is shared and slow; a passing test finishes far sooner.
const DEADLINE: Duration = Duration::from_secs(30);
const DOMAIN: &str = "example.test";

// ------------------------------------------------------------------ the mail stack

/// A private Dovecot + OpenSMTPD (the harness's isolated stack: own directory, free
/// ports, empty mailboxes), taken down when dropped.
struct Stack {
    inner: support::IsolatedStack,
}

impl Stack {
    /// Brings up a stack for one test with these local users (`@example.test`).
    fn up(users: &[&str]) -> Stack {
        let users: Vec<String> = users.iter().map(|u| format!("{u}@{DOMAIN}")).collect();
        let users: Vec<&str> = users.iter().map(String::as_str).collect();
        let inner = support::MailStack::isolated(&users).expect("an isolated mail stack");
        Stack { inner }
    }

    fn dir(&self) -> PathBuf {
        self.inner.dir().to_path_buf()
    }

    fn imap_port(&self) -> u16 {
        self.inner.imap_port()
    }

    fn imaps_port(&self) -> u16 {
        self.inner.imaps_port()
    }

    fn run(&self, command: &str) {
        let result = match command {
            "stop-imap" => self.inner.stop_imap(),
            "start-imap" => self.inner.start_imap(),
            "stop-smtp" => self.inner.stop_smtp(),
            "start-smtp" => self.inner.start_smtp(),
            other => panic!("no such stack command: {other}"),
        };
        result.unwrap_or_else(|e| panic!("mailstack.sh {command}: {e:#}"));
    }

    fn ca_file(&self) -> PathBuf {
        self.inner.ca_cert_path()
    }

    /// A file holding the password every stack user has.
    fn password_file(&self) -> PathBuf {
        let path = self.dir().join("test-password");
        std::fs::write(&path, format!("{PASSWORD}\n")).unwrap();
        path
    }

    fn mailbox(&self, name: &str, user: &str) -> MailboxConfig {
        MailboxConfig {
            name: name.into(),
            host: "127.0.0.1".into(),
            port: self.imap_port(),
            tls: TlsMode::None,
            ca_file: None,
            user: format!("{user}@{DOMAIN}"),
            password_file: Some(self.password_file()),
            password_env: None,
            folder: "INBOX".into(),
            channel: "own".into(),
            poll_interval: Duration::from_secs(60),
            after_ingest: AfterIngest::Seen,
            batch_size: 500,
        }
    }

    fn smtp(&self) -> SmtpConfig {
        SmtpConfig {
            host: "127.0.0.1".into(),
            port: self.inner.smtp_port(),
            tls: TlsMode::None,
            ca_file: None,
            user: None,
            password_file: None,
            password_env: None,
            from: format!("complaints@{DOMAIN}"),
            per_minute_cap: 600,
            in_doubt: Default::default(),
            timeout: Duration::from_secs(10),
        }
    }

    async fn client(&self, user: &str) -> TestImap {
        TestImap::login(self.imap_port(), user).await
    }
}

/// A plain IMAP client for the test's own look at the server.
struct TestImap {
    /// Taken out only while it idles ([`TestImap::wait_for`]).
    session: Option<async_imap::Session<TcpStream>>,
}

impl TestImap {
    async fn login(port: u16, user: &str) -> TestImap {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut client = async_imap::Client::new(tcp);
        client.read_response().await.unwrap().expect("greeting");
        let session = client
            .login(format!("{user}@{DOMAIN}"), PASSWORD)
            .await
            .map_err(|(e, _)| e)
            .expect("test login");
        TestImap {
            session: Some(session),
        }
    }

    fn session(&mut self) -> &mut async_imap::Session<TcpStream> {
        self.session
            .as_mut()
            .expect("the session is back after IDLE")
    }

    async fn append(&mut self, folder: &str, message: &[u8]) {
        self.session()
            .append(folder, None, None, message)
            .await
            .unwrap();
    }

    async fn create(&mut self, folder: &str) {
        self.session().create(folder).await.unwrap();
    }

    async fn delete(&mut self, folder: &str) {
        self.session().delete(folder).await.unwrap();
    }

    /// UID → (flags, whole message) of every message in `folder`.
    async fn messages(&mut self, folder: &str) -> BTreeMap<u32, (Vec<String>, Vec<u8>)> {
        let selected = self.session().examine(folder).await.unwrap();
        let mut out = BTreeMap::new();
        if selected.exists == 0 {
            return out;
        }
        let fetches: Vec<_> = self
            .session()
            .uid_fetch("1:*", "(UID FLAGS BODY.PEEK[])")
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        for fetch in fetches {
            // Flag changes made by other sessions arrive as FETCH responses without a UID.
            let Some(uid) = fetch.uid else { continue };
            let flags = fetch.flags().map(|f| format!("{f:?}")).collect();
            out.insert(uid, (flags, fetch.body().unwrap_or_default().to_vec()));
        }
        out
    }

    /// Looks at `folder` until `check` holds, or fails the test; between looks it waits in
    /// IMAP IDLE on the folder for the server to report a change (new mail, flags, expunges).
    async fn wait_for(
        &mut self,
        folder: &str,
        what: &str,
        check: impl Fn(&BTreeMap<u32, (Vec<String>, Vec<u8>)>) -> bool,
    ) -> BTreeMap<u32, (Vec<String>, Vec<u8>)> {
        let start = Instant::now();
        loop {
            let messages = self.messages(folder).await;
            if check(&messages) {
                return messages;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}; {folder} holds {:?}",
                messages
                    .iter()
                    .map(|(uid, (flags, _))| (uid, flags))
                    .collect::<Vec<_>>()
            );
            self.idle_until_change(DEADLINE.saturating_sub(start.elapsed()))
                .await;
        }
    }

    /// Idles on the folder last looked at until the server reports anything, or `within`.
    /// A change made after the last look and before IDLE began is reported when it begins.
    async fn idle_until_change(&mut self, within: Duration) {
        let session = self.session.take().expect("a session to idle on");
        let mut handle = session.idle();
        handle.init().await.unwrap();
        {
            let (wait, _stop) = handle.wait_with_timeout(within);
            // Any answer (new data or the timeout) ends the wait; the caller looks again.
            let _ = tokio::time::timeout(within, wait).await;
        }
        self.session = Some(handle.done().await.unwrap());
    }
}

/// Waits until `holds` is true of the metrics, woken by each change of the IMAP metrics.
async fn wait_for_metrics(metrics: &Metrics, what: &str, holds: impl Fn(&Metrics) -> bool) {
    let mut changes = metrics.watch_imap();
    let waited = tokio::time::timeout(DEADLINE, async {
        while !holds(metrics) {
            changes
                .changed()
                .await
                .expect("the metrics live as long as the test");
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

fn is_seen(flags: &[String]) -> bool {
    flags.iter().any(|f| f == "Seen")
}

fn message(subject: &str, message_id: &str) -> Vec<u8> {
    format!(
        "From: Customer <customer@{DOMAIN}>\r\nTo: complaints@{DOMAIN}\r\nSubject: {subject}\r\n\
         Message-ID: <{message_id}@{DOMAIN}>\r\nDate: Mon, 02 Mar 2026 09:00:00 +0800\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\nThe body of {subject}.\r\n"
    )
    .into_bytes()
}

fn subject_of(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or("")
        .to_owned()
}

// ------------------------------------------------------------------ the recording sink

#[derive(Default)]
struct SinkState {
    checkpoints: BTreeMap<String, Checkpoint>,
    /// Every message committed, in commit order.
    committed: Vec<FetchedMessage>,
    /// (rescan flag, UIDs) of every committed batch.
    batches: Vec<(bool, Vec<u32>)>,
    /// UIDs of every batch announced as fetched.
    announced: Vec<Vec<u32>>,
    /// Batches that arrived while the gate was closed, and how many were refused.
    waiting: usize,
    refused: usize,
}

/// An in-memory store: commits batches and their checkpoints, and can hold a batch at
/// a gate or refuse commits, so tests can look at the server in between.
struct RecordingSink {
    state: Mutex<SinkState>,
    changed: Notify,
    /// When set, every ingest waits for a permit first.
    gate: Option<Semaphore>,
    /// This many commits fail before any succeeds.
    failures_left: AtomicUsize,
}

impl RecordingSink {
    fn new() -> Arc<Self> {
        Arc::new(RecordingSink {
            state: Mutex::default(),
            changed: Notify::new(),
            gate: None,
            failures_left: AtomicUsize::new(0),
        })
    }

    fn gated(failures: usize) -> Arc<Self> {
        Arc::new(RecordingSink {
            state: Mutex::default(),
            changed: Notify::new(),
            gate: Some(Semaphore::new(0)),
            failures_left: AtomicUsize::new(failures),
        })
    }

    fn open_gate(&self, permits: usize) {
        self.gate
            .as_ref()
            .expect("a gated sink")
            .add_permits(permits);
    }

    /// Waits until `check` returns something, or fails the test.
    async fn wait_for<T>(&self, what: &str, mut check: impl FnMut(&SinkState) -> Option<T>) -> T {
        let wait = async {
            loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(value) = check(&self.state.lock().unwrap()) {
                    return value;
                }
                notified.await;
            }
        };
        match tokio::time::timeout(DEADLINE, wait).await {
            Ok(value) => value,
            Err(_) => {
                let state = self.state.lock().unwrap();
                panic!(
                    "timed out waiting for {what}; committed UIDs {:?}, batches {:?}",
                    state.committed.iter().map(|m| m.uid).collect::<Vec<_>>(),
                    state.batches
                );
            }
        }
    }

    async fn wait_for_count(&self, count: usize) -> Vec<FetchedMessage> {
        self.wait_for(&format!("{count} committed messages"), |s| {
            (s.committed.len() >= count).then(|| s.committed.clone())
        })
        .await
    }

    fn committed_uids(&self) -> Vec<u32> {
        self.state
            .lock()
            .unwrap()
            .committed
            .iter()
            .map(|m| m.uid)
            .collect()
    }
}

impl IngestSink for RecordingSink {
    fn checkpoint(&self, mailbox: &str) -> Result<Option<Checkpoint>, SinkError> {
        Ok(self.state.lock().unwrap().checkpoints.get(mailbox).copied())
    }

    fn fetched(&self, _mailbox: &str, messages: &[FetchedMessage]) {
        let uids = messages.iter().map(|m| m.uid).collect();
        self.state.lock().unwrap().announced.push(uids);
        self.changed.notify_waiters();
    }

    async fn ingest(&self, batch: FetchedBatch) -> Result<(), SinkError> {
        if let Some(gate) = &self.gate {
            self.state.lock().unwrap().waiting += 1;
            self.changed.notify_waiters();
            gate.acquire().await.expect("gate open").forget();
            self.state.lock().unwrap().waiting -= 1;
        }
        let refuse = self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let mut state = self.state.lock().unwrap();
        if refuse {
            state.refused += 1;
            drop(state);
            self.changed.notify_waiters();
            return Err(SinkError::new("the test refuses this commit"));
        }
        let checkpoint = batch.checkpoint();
        let uids = batch.messages.iter().map(|m| m.uid).collect();
        state.batches.push((batch.rescan, uids));
        state.committed.extend(batch.messages);
        state.checkpoints.insert(batch.mailbox, checkpoint);
        drop(state);
        self.changed.notify_waiters();
        Ok(())
    }
}

fn fast_imap_options() -> ImapOptions {
    ImapOptions {
        command_timeout: Duration::from_secs(10),
        reconnect: BackoffPolicy::new(Duration::from_millis(50), Duration::from_millis(400)),
        ..ImapOptions::new(25 * 1024 * 1024)
    }
}

/// A running mailbox task and the means to stop it.
struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    fn start(
        mailbox: MailboxConfig,
        options: ImapOptions,
        sink: Arc<RecordingSink>,
        metrics: Metrics,
    ) -> Running {
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            run_mailbox(mailbox, options, sink, metrics, token)
                .await
                .expect("the mailbox task ends cleanly");
        });
        Running { shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the mailbox task stops on shutdown")
            .expect("the mailbox task does not panic");
    }
}

// ------------------------------------------------------------------ the in-memory outbox

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Pending { next_attempt: DateTime<Utc> },
    Sent { reply: String },
    Failed { error: String },
}

#[derive(Debug, Clone)]
struct Entry {
    mail: OutgoingMail,
    outcome: Outcome,
    temporary_failures: Vec<String>,
}

/// An outbox in memory, recording every outcome the sender reports.
struct MemoryOutbox {
    entries: Mutex<Vec<Entry>>,
    wakeup: Notify,
    changed: Notify,
}

impl MemoryOutbox {
    fn new() -> Arc<Self> {
        Arc::new(MemoryOutbox {
            entries: Mutex::new(Vec::new()),
            wakeup: Notify::new(),
            changed: Notify::new(),
        })
    }

    /// Queues a mail; returns its position (1, 2, …) for the test to refer to it by.
    fn queue(&self, from: &str, recipients: &[String], bytes: Vec<u8>) -> usize {
        let mut entries = self.entries.lock().unwrap();
        let id = entries.len() + 1;
        entries.push(Entry {
            mail: OutgoingMail {
                id: format!("TS-2026-{id:06}.test.1"),
                envelope_from: from.into(),
                recipients: recipients.to_vec(),
                bytes,
                attempts: 0,
            },
            outcome: Outcome::Pending {
                next_attempt: DateTime::<Utc>::MIN_UTC,
            },
            temporary_failures: Vec::new(),
        });
        drop(entries);
        self.wakeup.notify_one();
        id
    }

    fn entry(&self, id: usize) -> Entry {
        self.entries.lock().unwrap()[id - 1].clone()
    }

    async fn wait_for<T>(&self, what: &str, mut check: impl FnMut(&[Entry]) -> Option<T>) -> T {
        let wait = async {
            loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(value) = check(&self.entries.lock().unwrap()) {
                    return value;
                }
                notified.await;
            }
        };
        match tokio::time::timeout(DEADLINE, wait).await {
            Ok(value) => value,
            Err(_) => panic!(
                "timed out waiting for {what}; outbox: {:#?}",
                self.entries.lock().unwrap()
            ),
        }
    }

    async fn wait_until_settled(&self, id: usize) -> Outcome {
        self.wait_for(
            &format!("mail {id} to be sent or failed"),
            |entries| match &entries[id - 1].outcome {
                Outcome::Pending { .. } => None,
                done => Some(done.clone()),
            },
        )
        .await
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut Entry)) -> Result<(), OutboxError> {
        let mut entries = self.entries.lock().unwrap();
        let entry = entries
            .iter_mut()
            .find(|e| e.mail.id == id)
            .ok_or_else(|| OutboxError::new(format!("no mail {id}")))?;
        change(entry);
        drop(entries);
        self.changed.notify_waiters();
        Ok(())
    }
}

impl OutboxSource for MemoryOutbox {
    async fn next_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<OutgoingMail>, OutboxError> {
        Ok(self
            .entries
            .lock()
            .unwrap()
            .iter()
            .filter(
                |e| matches!(e.outcome, Outcome::Pending { next_attempt } if next_attempt <= now),
            )
            .take(limit)
            .map(|e| e.mail.clone())
            .collect())
    }

    async fn mark_sent(
        &self,
        id: &str,
        _at: DateTime<Utc>,
        reply: &str,
    ) -> Result<(), OutboxError> {
        let reply = reply.to_owned();
        self.update(id, |e| e.outcome = Outcome::Sent { reply })
    }

    async fn mark_temporary_failure(
        &self,
        id: &str,
        _at: DateTime<Utc>,
        error: &str,
        next_attempt: DateTime<Utc>,
    ) -> Result<(), OutboxError> {
        let error = error.to_owned();
        self.update(id, |e| {
            e.mail.attempts += 1;
            e.temporary_failures.push(error);
            e.outcome = Outcome::Pending { next_attempt };
        })
    }

    async fn mark_permanent_failure(
        &self,
        id: &str,
        _at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), OutboxError> {
        let error = error.to_owned();
        self.update(id, |e| e.outcome = Outcome::Failed { error })
    }

    async fn next_attempt_at(&self) -> Result<Option<DateTime<Utc>>, OutboxError> {
        Ok(self
            .entries
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e.outcome {
                Outcome::Pending { next_attempt } => Some(next_attempt),
                _ => None,
            })
            .min())
    }

    fn wakeup(&self) -> &Notify {
        &self.wakeup
    }
}

fn fast_sender_options() -> SenderOptions {
    SenderOptions {
        retry: BackoffPolicy::new(Duration::from_millis(100), Duration::from_millis(500)),
        reconnect: BackoffPolicy::new(Duration::from_millis(50), Duration::from_millis(300)),
        ..SenderOptions::default()
    }
}

struct RunningSender {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl RunningSender {
    fn start(
        config: SmtpConfig,
        options: SenderOptions,
        outbox: Arc<MemoryOutbox>,
        metrics: Metrics,
    ) -> RunningSender {
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let task = tokio::spawn(async move {
            run_sender(config, options, outbox, clock, metrics, token)
                .await
                .expect("the sender ends cleanly");
        });
        RunningSender { shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the sender stops on shutdown")
            .expect("the sender does not panic");
    }
}

fn address(user: &str) -> String {
    format!("{user}@{DOMAIN}")
}

fn message_id_of(bytes: &[u8]) -> Option<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .find_map(|l| l.strip_prefix("Message-ID: ").map(str::to_owned))
}

// ------------------------------------------------------------------ IMAP ingest

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingests_appended_and_smtp_delivered_mail_and_resumes_from_the_checkpoint() {
    let stack = Stack::up(&["ingest"]);
    let mut imap = stack.client("ingest").await;
    for n in 1..=5 {
        imap.append(
            "INBOX",
            &message(&format!("appended {n}"), &format!("a{n}")),
        )
        .await;
    }
    // Three more arrive the way customers' mail does: through SMTP and LMTP.
    let outbox = MemoryOutbox::new();
    let sender = RunningSender::start(
        stack.smtp(),
        fast_sender_options(),
        outbox.clone(),
        Metrics::new(),
    );
    for n in 1..=3 {
        let id = outbox.queue(
            &address("customer"),
            &[address("ingest")],
            message(&format!("smtp {n}"), &format!("s{n}")),
        );
        assert!(matches!(
            outbox.wait_until_settled(id).await,
            Outcome::Sent { .. }
        ));
    }
    sender.stop().await;
    imap.wait_for("INBOX", "8 messages", |m| m.len() == 8).await;

    let sink = RecordingSink::new();
    let metrics = Metrics::new();
    let mut mailbox = stack.mailbox("ingest", "ingest");
    mailbox.batch_size = 3;
    let running = Running::start(
        mailbox.clone(),
        fast_imap_options(),
        sink.clone(),
        metrics.clone(),
    );
    let committed = sink.wait_for_count(8).await;
    running.stop().await;

    let uids: Vec<u32> = committed.iter().map(|m| m.uid).collect();
    assert_eq!(uids, (1..=8).collect::<Vec<_>>());
    let subjects: BTreeSet<String> = committed
        .iter()
        .map(|m| subject_of(m.body.as_deref().unwrap()))
        .collect();
    let expected: BTreeSet<String> = (1..=5)
        .map(|n| format!("appended {n}"))
        .chain((1..=3).map(|n| format!("smtp {n}")))
        .collect();
    assert_eq!(subjects, expected);
    assert!(committed
        .iter()
        .all(|m| m.internal_date.is_some() && m.headers.is_none()));
    // Batches of at most three, in UID order.
    let batches = sink.state.lock().unwrap().batches.clone();
    assert!(
        batches.iter().all(|(rescan, b)| !rescan && b.len() <= 3),
        "{batches:?}"
    );
    assert_eq!(metrics.messages_fetched_count("ingest"), 8);
    let on_server = imap
        .wait_for("INBOX", "every committed message \\Seen", |m| {
            m.values().all(|(flags, _)| is_seen(flags))
        })
        .await;
    assert_eq!(on_server.len(), 8);

    // Two more arrive while the task is down; a restart fetches only those.
    for n in 6..=7 {
        imap.append(
            "INBOX",
            &message(&format!("appended {n}"), &format!("a{n}")),
        )
        .await;
    }
    let running = Running::start(mailbox, fast_imap_options(), sink.clone(), metrics.clone());
    sink.wait_for_count(10).await;
    running.stop().await;
    assert_eq!(sink.committed_uids(), (1..=10).collect::<Vec<_>>());
    let checkpoint = sink.checkpoint("ingest").unwrap().unwrap();
    assert_eq!(checkpoint.last_uid, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seen_is_set_only_after_the_commit_and_a_refused_commit_is_fetched_again() {
    let stack = Stack::up(&["seen"]);
    let mut imap = stack.client("seen").await;
    for n in 1..=3 {
        imap.append("INBOX", &message(&format!("seen {n}"), &format!("seen{n}")))
            .await;
    }
    // The first commit is refused; the second attempt must hand the same messages over.
    let sink = RecordingSink::gated(1);
    let metrics = Metrics::new();
    let running = Running::start(
        stack.mailbox("seen", "seen"),
        fast_imap_options(),
        sink.clone(),
        metrics.clone(),
    );

    sink.wait_for("a batch at the gate", |s| (s.waiting == 1).then_some(()))
        .await;
    let before = imap.messages("INBOX").await;
    assert_eq!(before.len(), 3);
    assert!(
        before.values().all(|(flags, _)| !is_seen(flags)),
        "nothing may be \\Seen before the commit: {before:?}"
    );
    sink.open_gate(1);
    sink.wait_for("the refusal", |s| (s.refused == 1).then_some(()))
        .await;
    // The refused batch comes again, over a new connection.
    sink.wait_for("the batch again", |s| (s.waiting == 1).then_some(()))
        .await;
    assert!(metrics.imap_reconnects("seen") >= 1);
    let still = imap.messages("INBOX").await;
    assert!(
        still.values().all(|(flags, _)| !is_seen(flags)),
        "a refused commit marks nothing: {still:?}"
    );
    sink.open_gate(1);
    let committed = sink.wait_for_count(3).await;
    assert_eq!(
        committed.iter().map(|m| m.uid).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    imap.wait_for("INBOX", "\\Seen after the commit", |m| {
        m.values().all(|(flags, _)| is_seen(flags))
    })
    .await;
    running.stop().await;
    assert_eq!(
        sink.committed_uids(),
        [1, 2, 3],
        "each message committed once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_batch_is_marked_only_after_its_own_commit() {
    let stack = Stack::up(&["overlap"]);
    let mut imap = stack.client("overlap").await;
    for n in 1..=6 {
        imap.append(
            "INBOX",
            &message(&format!("overlap {n}"), &format!("overlap{n}")),
        )
        .await;
    }
    let sink = RecordingSink::gated(0);
    let metrics = Metrics::new();
    let mut mailbox = stack.mailbox("overlap", "overlap");
    mailbox.batch_size = 2;
    let running = Running::start(mailbox, fast_imap_options(), sink.clone(), metrics.clone());

    // The first batch commits; the connection marks it while the second
    // batch commits (or before: the order of the two is not fixed).
    sink.wait_for("the first batch at the gate", |s| {
        (s.waiting == 1).then_some(())
    })
    .await;
    // The second batch is fetched and announced (so the engine can parse
    // it) while the first is still committing.
    sink.wait_for("the second batch announced", |s| {
        (s.announced.len() == 2 && s.committed.is_empty()).then_some(())
    })
    .await;
    sink.open_gate(1);
    sink.wait_for("the second batch at the gate", |s| {
        (s.waiting == 1 && s.committed.len() == 2).then_some(())
    })
    .await;
    let marked = imap
        .wait_for("INBOX", "the first batch \\Seen", |m| {
            m.get(&1).is_some_and(|(flags, _)| is_seen(flags))
                && m.get(&2).is_some_and(|(flags, _)| is_seen(flags))
        })
        .await;
    let unmarked: Vec<u32> = marked
        .iter()
        .filter(|(_, (flags, _))| !is_seen(flags))
        .map(|(uid, _)| *uid)
        .collect();
    assert_eq!(
        unmarked,
        [3, 4, 5, 6],
        "only committed messages are marked, while batch 2 is still committing"
    );

    sink.open_gate(2);
    let committed = sink.wait_for_count(6).await;
    assert_eq!(
        committed.iter().map(|m| m.uid).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    imap.wait_for("INBOX", "all \\Seen after the last commit", |m| {
        m.len() == 6 && m.values().all(|(flags, _)| is_seen(flags))
    })
    .await;
    running.stop().await;
    let batches: Vec<Vec<u32>> = sink
        .state
        .lock()
        .unwrap()
        .batches
        .iter()
        .map(|(_, uids)| uids.clone())
        .collect();
    assert_eq!(batches, [vec![1, 2], vec![3, 4], vec![5, 6]]);
    assert_eq!(sink.state.lock().unwrap().announced, batches);
    assert_eq!(metrics.imap_reconnects("overlap"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_wakes_the_task_within_a_second_or_two() {
    let stack = Stack::up(&["idle"]);
    let mut imap = stack.client("idle").await;
    let sink = RecordingSink::new();
    // Polling every ten minutes: only IDLE can make the deliveries below fast.
    let mut mailbox = stack.mailbox("idle", "idle");
    mailbox.poll_interval = Duration::from_secs(600);
    let metrics = Metrics::new();
    let running = Running::start(mailbox, fast_imap_options(), sink.clone(), metrics.clone());

    let mut latencies = Vec::new();
    for n in 1..=5usize {
        // Append only once the task waits in IDLE, so IDLE (not the NOOP before it) is measured.
        wait_for_metrics(&metrics, "the task to enter IDLE", |m| {
            m.imap_idling("idle")
        })
        .await;
        let appending = Instant::now();
        imap.append("INBOX", &message(&format!("idle {n}"), &format!("i{n}")))
            .await;
        sink.wait_for_count(n).await;
        latencies.push(appending.elapsed());
    }
    running.stop().await;
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    eprintln!("IDLE wake-up latencies: {latencies:?} (median {median:?})");
    // Dovecot waits 0.5 s before notifying IDLE clients.
    assert!(median < Duration::from_secs(3), "{latencies:?}");
    assert!(
        latencies.iter().all(|l| *l < Duration::from_secs(10)),
        "{latencies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_when_idle_is_not_used() {
    let stack = Stack::up(&["poll"]);
    let mut imap = stack.client("poll").await;
    let sink = RecordingSink::new();
    let mut mailbox = stack.mailbox("poll", "poll");
    mailbox.poll_interval = Duration::from_millis(200);
    let options = ImapOptions {
        use_idle: false,
        ..fast_imap_options()
    };
    let running = Running::start(mailbox, options, sink.clone(), Metrics::new());
    imap.append("INBOX", &message("polled 1", "p1")).await;
    sink.wait_for_count(1).await;
    imap.append("INBOX", &message("polled 2", "p2")).await;
    sink.wait_for_count(2).await;
    running.stop().await;
    assert_eq!(sink.committed_uids(), [1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imaps_and_starttls_trust_the_stack_ca_and_nothing_else() {
    let stack = Stack::up(&["tls"]);
    let mut imap = stack.client("tls").await;
    imap.append("INBOX", &message("over tls", "t1")).await;

    for (mode, port) in [
        (TlsMode::Tls, stack.imaps_port()),
        (TlsMode::Starttls, stack.imap_port()),
    ] {
        let sink = RecordingSink::new();
        let mut mailbox = stack.mailbox("tls", "tls");
        mailbox.tls = mode;
        mailbox.port = port;
        mailbox.ca_file = Some(stack.ca_file());
        let running = Running::start(mailbox, fast_imap_options(), sink.clone(), Metrics::new());
        let committed = sink.wait_for_count(1).await;
        running.stop().await;
        assert_eq!(
            subject_of(committed[0].body.as_deref().unwrap()),
            "over tls",
            "{mode:?}"
        );
    }

    // Without the stack's CA the self-signed server is not trusted: no login, nothing fetched.
    let sink = RecordingSink::new();
    let metrics = Metrics::new();
    let mut mailbox = stack.mailbox("untrusted", "tls");
    mailbox.tls = TlsMode::Tls;
    mailbox.port = stack.imaps_port();
    let running = Running::start(mailbox, fast_imap_options(), sink.clone(), metrics.clone());
    wait_for_metrics(&metrics, "the untrusted server to be refused", |m| {
        m.imap_reconnects("untrusted") >= 3
    })
    .await;
    running.stop().await;
    assert!(sink.committed_uids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_imap_server_restarts() {
    let stack = Stack::up(&["restart"]);
    let mut imap = stack.client("restart").await;
    imap.append("INBOX", &message("before", "r1")).await;
    drop(imap);
    let sink = RecordingSink::new();
    let metrics = Metrics::new();
    let running = Running::start(
        stack.mailbox("restart", "restart"),
        fast_imap_options(),
        sink.clone(),
        metrics.clone(),
    );
    sink.wait_for_count(1).await;

    stack.run("stop-imap");
    wait_for_metrics(&metrics, "the lost connection to be noticed", |m| {
        m.imap_reconnects("restart") >= 2
    })
    .await;
    stack.run("start-imap");
    let mut imap = stack.client("restart").await;
    imap.append("INBOX", &message("after", "r2")).await;
    let committed = sink.wait_for_count(2).await;
    running.stop().await;
    assert_eq!(
        committed
            .iter()
            .map(|m| subject_of(m.body.as_deref().unwrap()))
            .collect::<Vec<_>>(),
        ["before", "after"]
    );
    assert_eq!(sink.committed_uids(), [1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_handed_over_with_their_headers_only() {
    let stack = Stack::up(&["big"]);
    let mut imap = stack.client("big").await;
    imap.append("INBOX", &message("small", "b1")).await;
    let mut large = message("large", "b2");
    large.extend(std::iter::repeat_n(b'x', 20_000));
    large.extend_from_slice(b"\r\n");
    imap.append("INBOX", &large).await;

    let sink = RecordingSink::new();
    let options = ImapOptions {
        max_message_bytes: 4096,
        ..fast_imap_options()
    };
    let running = Running::start(
        stack.mailbox("big", "big"),
        options,
        sink.clone(),
        Metrics::new(),
    );
    let committed = sink.wait_for_count(2).await;
    running.stop().await;

    assert!(!committed[0].is_oversized());
    assert_eq!(subject_of(committed[0].body.as_deref().unwrap()), "small");
    assert!(committed[1].is_oversized());
    assert!(committed[1].size > 20_000, "{}", committed[1].size);
    let headers = committed[1].headers.as_deref().unwrap();
    assert_eq!(subject_of(headers), "large");
    assert!(
        headers.len() < 1000 && !headers.windows(10).any(|w| w == b"xxxxxxxxxx"),
        "only the header section: {}",
        String::from_utf8_lossy(headers)
    );
    // Recorded, so it is marked like any other.
    imap.wait_for("INBOX", "both \\Seen", |m| {
        m.values().all(|(f, _)| is_seen(f))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_after_ingest_empties_the_folder_into_the_target() {
    let stack = Stack::up(&["mover"]);
    let mut imap = stack.client("mover").await;
    // A Chinese folder name travels in modified UTF-7, which Dovecot checks.
    let target = folder_name("已处理");
    assert_eq!(target, "&XfJZBHQG-");
    imap.create(&target).await;
    for n in 1..=3 {
        imap.append("INBOX", &message(&format!("move {n}"), &format!("m{n}")))
            .await;
    }
    let sink = RecordingSink::new();
    let mut mailbox = stack.mailbox("mover", "mover");
    mailbox.after_ingest = AfterIngest::MoveTo("已处理".into());
    let running = Running::start(mailbox, fast_imap_options(), sink.clone(), Metrics::new());
    sink.wait_for_count(3).await;
    let moved = imap
        .wait_for(&target, "three moved messages", |m| m.len() == 3)
        .await;
    running.stop().await;
    assert!(imap.messages("INBOX").await.is_empty());
    let subjects: BTreeSet<String> = moved.values().map(|(_, b)| subject_of(b)).collect();
    assert_eq!(
        subjects,
        ["move 1", "move 2", "move 3"].map(String::from).into()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_uidvalidity_rescans_the_folder_with_the_rescan_flag() {
    let stack = Stack::up(&["validity"]);
    let mut imap = stack.client("validity").await;
    imap.create("Complaints").await;
    for n in 1..=2 {
        imap.append("Complaints", &message(&format!("v {n}"), &format!("v{n}")))
            .await;
    }
    let sink = RecordingSink::new();
    let mut mailbox = stack.mailbox("validity", "validity");
    mailbox.folder = "Complaints".into();
    let running = Running::start(
        mailbox.clone(),
        fast_imap_options(),
        sink.clone(),
        Metrics::new(),
    );
    sink.wait_for_count(2).await;
    running.stop().await;
    let first = sink.checkpoint("validity").unwrap().unwrap();

    // A folder deleted and made again gets a new UIDVALIDITY; its UIDs start over.
    imap.delete("Complaints").await;
    imap.create("Complaints").await;
    for n in 1..=3 {
        imap.append("Complaints", &message(&format!("v {n}"), &format!("v{n}")))
            .await;
    }
    let running = Running::start(mailbox, fast_imap_options(), sink.clone(), Metrics::new());
    sink.wait_for_count(5).await;
    running.stop().await;
    let second = sink.checkpoint("validity").unwrap().unwrap();
    assert_ne!(first.uid_validity, second.uid_validity);
    assert_eq!(second.last_uid, 3);
    let batches = sink.state.lock().unwrap().batches.clone();
    assert_eq!(batches.first(), Some(&(false, vec![1, 2])));
    assert_eq!(batches.last(), Some(&(true, vec![1, 2, 3])));
}

// ------------------------------------------------------------------ SMTP delivery

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_into_a_real_mailbox_and_records_a_5xx_as_permanent() {
    let stack = Stack::up(&["dept"]);
    let outbox = MemoryOutbox::new();
    let metrics = Metrics::new();
    let sender = RunningSender::start(
        stack.smtp(),
        fast_sender_options(),
        outbox.clone(),
        metrics.clone(),
    );

    let first = outbox.queue(
        &address("complaints"),
        &[address("dept")],
        message("[TS-2026-000001] forwarded", "ts1.forward"),
    );
    let unknown = outbox.queue(
        &address("complaints"),
        &[address("nobody-here")],
        message("[TS-2026-000002] lost", "ts2.forward"),
    );
    let third = outbox.queue(
        &address("complaints"),
        &[address("dept")],
        message("[TS-2026-000003] forwarded", "ts3.forward"),
    );
    assert!(matches!(
        outbox.wait_until_settled(first).await,
        Outcome::Sent { .. }
    ));
    let Outcome::Failed { error } = outbox.wait_until_settled(unknown).await else {
        panic!("an unknown local user must fail permanently");
    };
    assert!(
        error.contains("5") && error.contains("nobody-here"),
        "{error}"
    );
    assert!(outbox.entry(unknown).temporary_failures.is_empty());
    // The refusal did not spoil the connection for the next message.
    assert!(matches!(
        outbox.wait_until_settled(third).await,
        Outcome::Sent { .. }
    ));
    sender.stop().await;
    assert_eq!(metrics.mail_sent_count(), 2);
    assert_eq!(metrics.mail_failed_count(FailureKind::Permanent), 1);

    let mut imap = stack.client("dept").await;
    let inbox = imap
        .wait_for("INBOX", "two delivered mails", |m| m.len() == 2)
        .await;
    let ids: BTreeSet<String> = inbox
        .values()
        .filter_map(|(_, b)| message_id_of(b))
        .collect();
    assert_eq!(
        ids,
        [
            format!("<ts1.forward@{DOMAIN}>"),
            format!("<ts3.forward@{DOMAIN}>")
        ]
        .into()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_down_gives_temporary_failures_then_delivery_when_it_returns() {
    let stack = Stack::up(&["patient"]);
    stack.run("stop-smtp");
    let outbox = MemoryOutbox::new();
    let metrics = Metrics::new();
    let sender = RunningSender::start(
        stack.smtp(),
        fast_sender_options(),
        outbox.clone(),
        metrics.clone(),
    );
    let id = outbox.queue(
        &address("complaints"),
        &[address("patient")],
        message("[TS-2026-000009] acknowledgement", "ts9.ack"),
    );
    outbox
        .wait_for("two temporary failures", |entries| {
            (entries[0].temporary_failures.len() >= 2).then_some(())
        })
        .await;
    assert!(matches!(outbox.entry(id).outcome, Outcome::Pending { .. }));
    stack.run("start-smtp");
    assert!(matches!(
        outbox.wait_until_settled(id).await,
        Outcome::Sent { .. }
    ));
    sender.stop().await;
    assert!(metrics.mail_failed_count(FailureKind::Temporary) >= 2);
    assert_eq!(metrics.mail_failed_count(FailureKind::Permanent), 0);

    let mut imap = stack.client("patient").await;
    let inbox = imap
        .wait_for("INBOX", "the delayed mail", |m| m.len() == 1)
        .await;
    let (_, body) = inbox.values().next().unwrap();
    assert_eq!(
        message_id_of(body).as_deref(),
        Some("<ts9.ack@example.test>")
    );
}

// ------------------------------------------------------------------ scripted SMTP servers

/// What a scripted server does with the message of one connection.
#[derive(Debug, Clone, Copy)]
enum Script {
    /// Answer everything with success.
    Accept,
    /// Read the whole message, then drop the connection without a reply.
    DropAfterData,
}

/// How a scripted server secures its connections.
#[derive(Clone)]
enum ServerTls {
    None,
    /// TLS from the first byte.
    Implicit(TlsAcceptor),
    /// Offers STARTTLS and refuses mail until it was used.
    Starttls(TlsAcceptor),
}

/// A TLS acceptor with the stack's server certificate (issued by its CA).
fn stack_acceptor(stack: &Stack) -> TlsAcceptor {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{crypto::ring, ServerConfig};
    let certificates: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(stack.dir().join("tls/cert.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(stack.dir().join("tls/key.pem")).unwrap();
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

/// What the scripted server saw.
#[derive(Default)]
struct Seen {
    bodies: Vec<Vec<u8>>,
    /// Decoded `AUTH PLAIN` responses.
    logins: Vec<String>,
    /// Whether each message arrived over TLS.
    encrypted: Vec<bool>,
}

/// A minimal SMTP server that follows one script per connection (the last repeats)
/// and records what it read.
struct ScriptedServer {
    port: u16,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Seen>>,
    task: JoinHandle<()>,
}

impl ScriptedServer {
    async fn start(scripts: Vec<Script>) -> ScriptedServer {
        Self::start_with_tls(scripts, ServerTls::None).await
    }

    async fn start_with_tls(scripts: Vec<Script>, tls: ServerTls) -> ScriptedServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (count, record) = (connections.clone(), seen.clone());
        let task = tokio::spawn(async move {
            let mut scripts: VecDeque<Script> = scripts.into();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let script = if scripts.len() > 1 {
                    scripts.pop_front().unwrap()
                } else {
                    scripts[0]
                };
                let record = record.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _ = match tls {
                        ServerTls::None => {
                            serve_script(BufReader::new(stream), script, record, PLAIN).await
                        }
                        ServerTls::Implicit(acceptor) => match acceptor.accept(stream).await {
                            Ok(tls) => {
                                serve_script(
                                    BufReader::new(tls),
                                    script,
                                    record,
                                    Phase {
                                        encrypted: true,
                                        ..PLAIN
                                    },
                                )
                                .await
                            }
                            Err(e) => Err(e),
                        },
                        ServerTls::Starttls(acceptor) => {
                            serve_starttls(stream, script, record, acceptor)
                                .await
                                .map(|()| false)
                        }
                    };
                });
            }
        });
        ScriptedServer {
            port,
            connections,
            seen,
            task,
        }
    }

    fn config(&self) -> SmtpConfig {
        SmtpConfig {
            host: "127.0.0.1".into(),
            port: self.port,
            tls: TlsMode::None,
            ca_file: None,
            user: None,
            password_file: None,
            password_env: None,
            from: format!("complaints@{DOMAIN}"),
            per_minute_cap: 600,
            in_doubt: Default::default(),
            timeout: Duration::from_secs(5),
        }
    }

    fn bodies(&self) -> Vec<Vec<u8>> {
        self.seen.lock().unwrap().bodies.clone()
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves the plain part of a STARTTLS session, then the rest over TLS.
async fn serve_starttls(
    stream: TcpStream,
    script: Script,
    seen: Arc<Mutex<Seen>>,
    acceptor: TlsAcceptor,
) -> std::io::Result<()> {
    let mut plain = BufReader::new(stream);
    let offer = Phase {
        offer_starttls: true,
        ..PLAIN
    };
    let upgraded = serve_script(&mut plain, script, seen.clone(), offer).await?;
    if !upgraded {
        return Ok(());
    }
    // The client waits for our 220 before its handshake, so nothing is left buffered.
    let tls = acceptor.accept(plain.into_inner()).await?;
    let upgraded = Phase {
        greet: false,
        offer_starttls: false,
        encrypted: true,
    };
    serve_script(BufReader::new(tls), script, seen, upgraded)
        .await
        .map(|_| ())
}

/// How one SMTP dialogue starts.
#[derive(Debug, Clone, Copy)]
struct Phase {
    /// Send the 220 greeting (not after STARTTLS).
    greet: bool,
    /// Offer STARTTLS and refuse mail before it.
    offer_starttls: bool,
    encrypted: bool,
}

const PLAIN: Phase = Phase {
    greet: true,
    offer_starttls: false,
    encrypted: false,
};

/// Speaks SMTP on `stream`. When offering STARTTLS, returns `Ok(true)` after the
/// client asked for it and was told to go ahead.
async fn serve_script<S>(
    mut stream: S,
    script: Script,
    seen: Arc<Mutex<Seen>>,
    phase: Phase,
) -> std::io::Result<bool>
where
    S: tokio::io::AsyncBufRead + tokio::io::AsyncWrite + Unpin,
{
    let Phase {
        greet,
        offer_starttls,
        encrypted,
    } = phase;
    if greet {
        stream.write_all(b"220 scripted.test ESMTP\r\n").await?;
    }
    let mut line = String::new();
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            return Ok(false);
        }
        let command = line.trim_end().to_owned();
        let upper = command.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            let starttls = if offer_starttls {
                "250-STARTTLS\r\n"
            } else {
                ""
            };
            let reply = format!(
                "250-scripted.test\r\n{starttls}250-AUTH PLAIN LOGIN\r\n250-8BITMIME\r\n250 PIPELINING\r\n"
            );
            stream.write_all(reply.as_bytes()).await?;
        } else if upper.starts_with("STARTTLS") && offer_starttls {
            stream.write_all(b"220 go ahead\r\n").await?;
            stream.flush().await?;
            return Ok(true);
        } else if upper.starts_with("MAIL") && offer_starttls {
            stream
                .write_all(b"530 5.7.0 must issue STARTTLS first\r\n")
                .await?;
        } else if let Some(response) = command.strip_prefix("AUTH PLAIN ") {
            let decoded = decode_base64(response);
            seen.lock().unwrap().logins.push(decoded.replace('\0', "|"));
            stream.write_all(b"235 2.7.0 ok\r\n").await?;
        } else if upper.starts_with("DATA") {
            stream.write_all(b"354 go ahead\r\n").await?;
            let mut body = Vec::new();
            loop {
                let mut data_line = Vec::new();
                if stream.read_until(b'\n', &mut data_line).await? == 0 {
                    return Ok(false);
                }
                if data_line == b".\r\n" {
                    break;
                }
                body.extend_from_slice(&data_line);
            }
            {
                let mut seen = seen.lock().unwrap();
                seen.bodies.push(body);
                seen.encrypted.push(encrypted);
            }
            match script {
                Script::Accept => stream.write_all(b"250 2.0.0 queued as 42\r\n").await?,
                Script::DropAfterData => return Ok(false),
            }
        } else if upper.starts_with("QUIT") {
            stream.write_all(b"221 bye\r\n").await?;
            return Ok(false);
        } else {
            stream.write_all(b"250 ok\r\n").await?;
        }
    }
}

/// Standard base64, enough for the test's AUTH PLAIN.
fn decode_base64(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for byte in text.bytes().filter(|b| *b != b'=') {
        let value = ALPHABET.iter().position(|a| *a == byte).unwrap() as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_after_data_is_retried_with_the_same_message_id() {
    let server = ScriptedServer::start(vec![Script::DropAfterData, Script::Accept]).await;
    let outbox = MemoryOutbox::new();
    let metrics = Metrics::new();
    let sender = RunningSender::start(
        server.config(),
        fast_sender_options(),
        outbox.clone(),
        metrics.clone(),
    );
    let id = outbox.queue(
        &address("complaints"),
        &[address("customer")],
        message("[TS-2026-000005] acknowledgement", "ts5.ack"),
    );
    assert!(matches!(
        outbox.wait_until_settled(id).await,
        Outcome::Sent { .. }
    ));
    sender.stop().await;
    let entry = outbox.entry(id);
    assert_eq!(entry.temporary_failures.len(), 1, "{entry:?}");
    let bodies = server.bodies();
    assert_eq!(bodies.len(), 2, "the server read the message twice");
    assert_eq!(
        bodies[0], bodies[1],
        "the resend is byte for byte the same mail"
    );
    assert_eq!(
        message_id_of(&bodies[1]).as_deref(),
        Some("<ts5.ack@example.test>")
    );
    assert_eq!(metrics.mail_failed_count(FailureKind::Temporary), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_carries_many_messages() {
    let server = ScriptedServer::start(vec![Script::Accept]).await;
    let outbox = MemoryOutbox::new();
    let ids: Vec<usize> = (1..=5)
        .map(|n| {
            outbox.queue(
                &address("complaints"),
                &[address("customer")],
                message(&format!("batch {n}"), &format!("batch{n}")),
            )
        })
        .collect();
    let sender = RunningSender::start(
        server.config(),
        fast_sender_options(),
        outbox.clone(),
        Metrics::new(),
    );
    for id in ids {
        assert!(matches!(
            outbox.wait_until_settled(id).await,
            Outcome::Sent { .. }
        ));
    }
    sender.stop().await;
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    assert_eq!(server.bodies().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_minute_cap_holds_back_the_rest() {
    let server = ScriptedServer::start(vec![Script::Accept]).await;
    let outbox = MemoryOutbox::new();
    let ids: Vec<usize> = (1..=4)
        .map(|n| {
            outbox.queue(
                &address("complaints"),
                &[address("customer")],
                message(&format!("capped {n}"), &format!("capped{n}")),
            )
        })
        .collect();
    let mut config = server.config();
    // Two a minute: after a burst of two the third waits thirty seconds.
    config.per_minute_cap = 2;
    let sender = RunningSender::start(
        config,
        fast_sender_options(),
        outbox.clone(),
        Metrics::new(),
    );
    outbox.wait_until_settled(ids[1]).await;
    // The first two went at once; the third is held back by the bucket, not the server.
    let held =
        tokio::time::timeout(Duration::from_secs(2), outbox.wait_until_settled(ids[2])).await;
    assert!(held.is_err(), "the third mail must wait for a token");
    sender.stop().await;
    assert_eq!(server.bodies().len(), 2);
    assert!(matches!(
        outbox.entry(ids[3]).outcome,
        Outcome::Pending { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_over_implicit_tls_and_starttls_with_auth_trusts_only_the_stack_ca() {
    // The stack is only needed for its CA and server certificate.
    let stack = Stack::up(&[]);
    let acceptor = stack_acceptor(&stack);
    for (name, tls, mode) in [
        (
            "implicit",
            ServerTls::Implicit(acceptor.clone()),
            TlsMode::Tls,
        ),
        (
            "starttls",
            ServerTls::Starttls(acceptor.clone()),
            TlsMode::Starttls,
        ),
    ] {
        let server = ScriptedServer::start_with_tls(vec![Script::Accept], tls).await;
        let mut config = server.config();
        config.tls = mode;
        config.ca_file = Some(stack.ca_file());
        config.user = Some(format!("complaints@{DOMAIN}"));
        config.password_file = Some(stack.password_file());
        let outbox = MemoryOutbox::new();
        let id = outbox.queue(
            &address("complaints"),
            &[address("customer")],
            message(name, name),
        );
        let sender = RunningSender::start(
            config,
            fast_sender_options(),
            outbox.clone(),
            Metrics::new(),
        );
        let outcome = outbox.wait_until_settled(id).await;
        sender.stop().await;
        assert!(
            matches!(outcome, Outcome::Sent { .. }),
            "{name}: {outcome:?}"
        );
        let seen = server.seen.lock().unwrap();
        assert_eq!(seen.encrypted, [true], "{name}");
        assert_eq!(
            seen.logins,
            [format!("|complaints@{DOMAIN}|{PASSWORD}")],
            "{name}: the password from the file, sent after encryption"
        );
    }

    // Without the stack's CA the certificate is not trusted: temporary failures, nothing sent.
    let server =
        ScriptedServer::start_with_tls(vec![Script::Accept], ServerTls::Implicit(acceptor)).await;
    let mut config = server.config();
    config.tls = TlsMode::Tls;
    let outbox = MemoryOutbox::new();
    let id = outbox.queue(
        &address("complaints"),
        &[address("customer")],
        message("x", "x"),
    );
    let sender = RunningSender::start(
        config,
        fast_sender_options(),
        outbox.clone(),
        Metrics::new(),
    );
    let failures = outbox
        .wait_for("a temporary failure", |entries| {
            entries[0].temporary_failures.first().cloned()
        })
        .await;
    sender.stop().await;
    assert!(
        failures.contains("TLS") || failures.contains("certificate"),
        "{failures}"
    );
    assert!(matches!(outbox.entry(id).outcome, Outcome::Pending { .. }));
    assert!(server.bodies().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_starttls_is_never_used_in_plain_text() {
    let server = ScriptedServer::start(vec![Script::Accept]).await;
    let mut config = server.config();
    config.tls = TlsMode::Starttls;
    let outbox = MemoryOutbox::new();
    outbox.queue(
        &address("complaints"),
        &[address("customer")],
        message("x", "x"),
    );
    let sender = RunningSender::start(
        config,
        fast_sender_options(),
        outbox.clone(),
        Metrics::new(),
    );
    let failure = outbox
        .wait_for("a temporary failure", |entries| {
            entries[0].temporary_failures.first().cloned()
        })
        .await;
    sender.stop().await;
    assert!(failure.contains("STARTTLS"), "{failure}");
    assert!(server.bodies().is_empty());
}

//! IMAP ingest: one task per mailbox that fetches new messages by UID, hands them to
//! the store in batches, and marks them on the server only after the store committed.
//!
//! The checkpoint `(UIDVALIDITY, last UID)` lives in the store and only moves through
//! [`IngestSink::ingest`]: a crash or a dropped connection at any point makes the next
//! connection fetch again from the last committed UID, so nothing is lost and nothing
//! committed is handed over twice.

mod connect;
pub mod plan;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_imap::types::{Fetch, UnsolicitedResponse};
use chrono::{DateTime, FixedOffset};
use futures::{Stream, TryStreamExt};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, BackoffPolicy};
use crate::config::{AfterIngest, MailboxConfig, TlsMode};
use crate::metrics::Metrics;
pub use crate::store::Checkpoint;
use crate::tls::{self, TlsError};
use connect::{open_session, timed, ImapSession};
use plan::{BatchLimits, Listed};

/// RFC 2177 asks clients to re-issue IDLE at least every 29 minutes; we stay well below.
pub const MAX_IDLE_RENEW: Duration = Duration::from_secs(25 * 60);

/// One fetched message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedMessage {
    pub uid: u32,
    /// The size the server reports (RFC822.SIZE).
    pub size: u64,
    /// When the server received the message (INTERNALDATE): the complaint's arrival time.
    pub internal_date: Option<DateTime<FixedOffset>>,
    /// The whole message; `None` when it is above the size limit.
    pub body: Option<Vec<u8>>,
    /// Only for a message above the size limit: its header section, to record it by.
    pub headers: Option<Vec<u8>>,
}

impl FetchedMessage {
    pub fn is_oversized(&self) -> bool {
        self.body.is_none()
    }
}

/// A batch of fetched messages for the store to commit in one go (the store's own
/// `IngestBatch` is what it makes of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedBatch {
    /// The mailbox's configured name.
    pub mailbox: String,
    pub uidvalidity: u32,
    /// The server's UIDVALIDITY changed since the last checkpoint, so these messages
    /// may have been ingested before under other UIDs: de-duplicate by Message-ID or
    /// content hash. Only the first pass after the change carries the flag; a sink
    /// should de-duplicate always, as a pass cut short by a lost connection resumes
    /// without it.
    pub rescan: bool,
    /// In UID order, never empty.
    pub messages: Vec<FetchedMessage>,
}

impl FetchedBatch {
    /// The checkpoint to commit with this batch.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            uid_validity: self.uidvalidity,
            last_uid: self.messages.iter().map(|m| m.uid).max().unwrap_or(0),
        }
    }
}

/// The store could not answer or commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ingest sink: {message}")]
pub struct SinkError {
    pub message: String,
}

impl SinkError {
    pub fn new(message: impl std::fmt::Display) -> Self {
        SinkError {
            message: message.to_string(),
        }
    }
}

/// The store's side of ingest.
pub trait IngestSink: Send + Sync + 'static {
    /// The last committed checkpoint of this mailbox, if any.
    fn checkpoint(&self, mailbox: &str) -> Result<Option<Checkpoint>, SinkError>;

    /// Called with each fetched batch's messages as soon as they arrive, while the batch
    /// before them may still be committing: the sink may start on what needs no store
    /// (the engine parses them). `ingest` follows with the same messages unless the
    /// connection failed first.
    fn fetched(&self, _mailbox: &str, _messages: &[FetchedMessage]) {}

    /// Commits the batch durably, together with `batch.checkpoint()`, and returns.
    /// An error means nothing of the batch was committed; it will be fetched again.
    /// Oversized messages (`body: None`) are to be recorded, not dropped.
    fn ingest(&self, batch: FetchedBatch) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// Tuning of the mailbox task that the mailbox configuration does not carry.
#[derive(Debug, Clone)]
pub struct ImapOptions {
    /// Larger messages are handed over with their headers only (`mail.max_message_bytes`).
    pub max_message_bytes: u64,
    /// Most body bytes fetched into one batch.
    pub max_batch_bytes: u64,
    /// Limit on every network step: a command, or the gap between two fetched messages.
    pub command_timeout: Duration,
    /// IDLE is ended and re-issued after this long (capped at [`MAX_IDLE_RENEW`]),
    /// with a NOOP in between that finds a silently dead connection.
    pub idle_renew: Duration,
    /// Use IDLE when the server offers it; otherwise poll every `poll_interval`.
    pub use_idle: bool,
    /// Delay between reconnect attempts.
    pub reconnect: BackoffPolicy,
}

impl ImapOptions {
    pub fn new(max_message_bytes: u64) -> Self {
        ImapOptions {
            max_message_bytes,
            max_batch_bytes: 64 * 1024 * 1024,
            command_timeout: Duration::from_secs(60),
            idle_renew: Duration::from_secs(10 * 60),
            use_idle: true,
            reconnect: BackoffPolicy::default(),
        }
    }
}

/// Why a mailbox task stopped or a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("server greeting: {0}")]
    Greeting(String),
    #[error("cannot read the IMAP password: {0}")]
    Password(std::io::Error),
    #[error("{0}")]
    Insecure(String),
    #[error("login refused: {0}")]
    Login(async_imap::error::Error),
    #[error("imap: {0}")]
    Imap(#[from] async_imap::error::Error),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("{0}")]
    Sink(#[from] SinkError),
}

/// Runs the ingest of one mailbox until `shutdown` is cancelled.
///
/// Returns an error only when the TLS settings cannot be built. Every other problem
/// (refused connection, lost connection, timeout, failed commit) is logged, counted
/// in `imap_reconnects`, and followed by a backoff and a new connection.
pub async fn run_mailbox<S: IngestSink>(
    mailbox: MailboxConfig,
    options: ImapOptions,
    sink: Arc<S>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), ImapError> {
    let connector = match mailbox.tls {
        TlsMode::None => None,
        TlsMode::Starttls | TlsMode::Tls => {
            tls::server_name(&mailbox.host)?;
            Some(tls::connector(mailbox.ca_file.as_deref())?)
        }
    };
    let worker = Worker {
        mailbox,
        options,
        sink,
        metrics,
        shutdown,
        connector,
    };
    let mut backoff = Backoff::new(worker.options.reconnect);
    let mut rng = StdRng::from_entropy();
    while !worker.shutdown.is_cancelled() {
        let ended = worker.run_connection(&mut backoff).await;
        worker
            .metrics
            .set_imap_connected(&worker.mailbox.name, false);
        worker.metrics.set_imap_idling(&worker.mailbox.name, false);
        match ended {
            Ok(()) => break,
            Err(error) => {
                worker.metrics.imap_reconnect(&worker.mailbox.name);
                let delay = backoff.next_delay(&mut rng);
                tracing::warn!(
                    mailbox = %worker.mailbox.name,
                    %error,
                    retry_in = ?delay,
                    "imap: connection ended"
                );
                tokio::select! {
                    _ = worker.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    tracing::info!(mailbox = %worker.mailbox.name, "imap: stopped");
    Ok(())
}

/// What ended a wait for new mail.
enum Wake {
    /// Something may have changed: fetch.
    Changed,
    /// Time to re-issue IDLE (after a NOOP that proves the connection alive).
    Renew,
    Shutdown,
}

struct Worker<S> {
    mailbox: MailboxConfig,
    options: ImapOptions,
    sink: Arc<S>,
    metrics: Metrics,
    shutdown: CancellationToken,
    connector: Option<TlsConnector>,
}

impl<S: IngestSink> Worker<S> {
    fn limit(&self) -> Duration {
        self.options.command_timeout
    }

    /// One connection's life. `Ok` only on shutdown.
    async fn run_connection(&self, backoff: &mut Backoff) -> Result<(), ImapError> {
        let limit = self.limit();
        let mut session = tokio::select! {
            _ = self.shutdown.cancelled() => return Ok(()),
            session = open_session(&self.mailbox, self.connector.as_ref(), limit) => session?,
        };
        let capabilities = timed("CAPABILITY", limit, session.capabilities()).await?;
        let use_idle = self.options.use_idle && capabilities.has_str("IDLE");
        let can_move = capabilities.has_str("MOVE");
        let folder = plan::folder_name(&self.mailbox.folder);
        let selected = timed("SELECT", limit, session.select(&folder)).await?;
        let uidvalidity = selected.uid_validity.ok_or_else(|| {
            ImapError::Protocol(format!(
                "SELECT {} gave no UIDVALIDITY",
                self.mailbox.folder
            ))
        })?;
        let (mut last_uid, mut rescan) = match self.sink.checkpoint(&self.mailbox.name)? {
            None => (0, false),
            Some(c) if c.uid_validity == uidvalidity => (c.last_uid, false),
            Some(c) => {
                tracing::warn!(
                    mailbox = %self.mailbox.name,
                    old = c.uid_validity,
                    new = uidvalidity,
                    "imap: UIDVALIDITY changed; rescanning the folder from UID 1"
                );
                (0, true)
            }
        };
        tracing::info!(
            mailbox = %self.mailbox.name,
            uidvalidity,
            last_uid,
            idle = use_idle,
            "imap: connected"
        );
        self.metrics.set_imap_connected(&self.mailbox.name, true);
        if let AfterIngest::MoveTo(target) = &self.mailbox.after_ingest {
            if !rescan && last_uid > 0 {
                self.move_leftovers(&mut session, target, can_move, last_uid)
                    .await?;
            }
        }
        loop {
            self.fetch_new(&mut session, uidvalidity, &mut last_uid, rescan, can_move)
                .await?;
            rescan = false;
            // A full pass worked: the connection is healthy again.
            backoff.reset();
            let wake = if use_idle {
                let (returned, wake) = self.idle(session).await?;
                session = returned;
                wake
            } else {
                self.poll_wait(&mut session).await?
            };
            match wake {
                // The next fetch pass also proves a renewed connection alive.
                Wake::Changed | Wake::Renew => {}
                Wake::Shutdown => {
                    // A polite goodbye; the connection is dropped whatever happens.
                    let _ = tokio::time::timeout(limit, session.logout()).await;
                    return Ok(());
                }
            }
        }
    }

    /// Fetches everything above `last_uid`, batch by batch, and hands each batch over.
    async fn fetch_new(
        &self,
        session: &mut ImapSession,
        uidvalidity: u32,
        last_uid: &mut u32,
        rescan: bool,
        can_move: bool,
    ) -> Result<(), ImapError> {
        let limit = self.limit();
        let range = format!("{}:*", last_uid.saturating_add(1));
        let listing = {
            let stream = timed(
                "UID FETCH sizes",
                limit,
                session.uid_fetch(&range, "(UID RFC822.SIZE)"),
            )
            .await?;
            collect_fetches(stream, limit).await?
        };
        let listing: Vec<Listed> = listing
            .iter()
            .filter_map(|f| {
                Some(Listed {
                    uid: f.uid?,
                    size: u64::from(f.size?),
                })
            })
            .collect();
        let new = plan::new_messages(listing, *last_uid);
        if new.is_empty() {
            return Ok(());
        }
        let limits = BatchLimits {
            max_messages: usize::try_from(self.mailbox.batch_size).unwrap_or(usize::MAX),
            max_bytes: self.options.max_batch_bytes,
            max_message_bytes: self.options.max_message_bytes,
        };
        // While the store commits one batch, the connection marks the batch
        // before it and fetches the one after it: the commit is the slow step,
        // and IMAP round trips on either side of it would add to every batch.
        // A batch is marked only after its own commit returned.
        let mut planned = plan::batches(&new, limits).into_iter();
        let mut next = match planned.next() {
            Some(first) => Some(self.fetch_announced(session, &first).await?),
            None => None,
        };
        let mut committed_unmarked: Option<Vec<u32>> = None;
        while let Some(messages) = next.take() {
            // A long backlog must not hold up shutdown; the rest waits for the next start.
            if self.shutdown.is_cancelled() {
                break;
            }
            let following = planned.next();
            if messages.is_empty() {
                // Every message of the batch was expunged meanwhile.
                next = match following {
                    Some(batch) => Some(self.fetch_announced(session, &batch).await?),
                    None => None,
                };
                continue;
            }
            let uids: Vec<u32> = messages.iter().map(|m| m.uid).collect();
            let count = messages.len();
            let batch = FetchedBatch {
                mailbox: self.mailbox.name.clone(),
                uidvalidity,
                rescan,
                messages,
            };
            let checkpoint = batch.checkpoint();
            let to_mark = committed_unmarked.take();
            let connection_work = async {
                if let Some(uids) = &to_mark {
                    self.after_ingest(session, uids, can_move).await?;
                }
                match following {
                    Some(batch) => self.fetch_announced(session, &batch).await.map(Some),
                    None => Ok(None),
                }
            };
            // No timeout on the commit: the sink is local, and cutting a commit
            // short would leave it unknown whether it happened.
            let (committed, fetched) = tokio::join!(self.sink.ingest(batch), connection_work);
            committed?;
            *last_uid = checkpoint.last_uid;
            self.metrics
                .messages_fetched(&self.mailbox.name, count as u64);
            tracing::debug!(
                mailbox = %self.mailbox.name,
                count,
                last_uid = checkpoint.last_uid,
                "imap: batch committed"
            );
            committed_unmarked = Some(uids);
            next = fetched?;
        }
        if let Some(uids) = committed_unmarked {
            self.after_ingest(session, &uids, can_move).await?;
        }
        Ok(())
    }

    /// Fetches one planned batch and tells the sink it has arrived.
    async fn fetch_announced(
        &self,
        session: &mut ImapSession,
        batch: &[Listed],
    ) -> Result<Vec<FetchedMessage>, ImapError> {
        let messages = self.fetch_batch(session, batch).await?;
        if !messages.is_empty() {
            self.sink.fetched(&self.mailbox.name, &messages);
        }
        Ok(messages)
    }

    /// Fetches bodies (or, above the size limit, headers) of one planned batch.
    async fn fetch_batch(
        &self,
        session: &mut ImapSession,
        batch: &[Listed],
    ) -> Result<Vec<FetchedMessage>, ImapError> {
        let limit = self.limit();
        let (large, small): (Vec<Listed>, Vec<Listed>) = batch
            .iter()
            .partition(|m| m.size > self.options.max_message_bytes);
        let mut messages = BTreeMap::new();
        for (part, oversized) in [(small, false), (large, true)] {
            if part.is_empty() {
                continue;
            }
            let query = if oversized {
                "(UID RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER])"
            } else {
                "(UID RFC822.SIZE INTERNALDATE BODY.PEEK[])"
            };
            let wanted: BTreeMap<u32, u64> = part.iter().map(|m| (m.uid, m.size)).collect();
            let set = plan::uid_set(wanted.keys().copied());
            let stream = timed("UID FETCH", limit, session.uid_fetch(&set, query)).await?;
            for fetch in collect_fetches(stream, limit).await? {
                let Some(uid) = fetch.uid else { continue };
                // Servers may add unsolicited FETCH responses for other messages.
                let Some(&listed_size) = wanted.get(&uid) else {
                    continue;
                };
                let size = fetch.size.map(u64::from).unwrap_or(listed_size);
                let message = if oversized {
                    FetchedMessage {
                        uid,
                        size,
                        internal_date: fetch.internal_date(),
                        body: None,
                        headers: Some(fetch.header().unwrap_or_default().to_vec()),
                    }
                } else {
                    let Some(body) = fetch.body() else {
                        return Err(ImapError::Protocol(format!(
                            "UID {uid}: the server sent no body"
                        )));
                    };
                    FetchedMessage {
                        uid,
                        size,
                        internal_date: fetch.internal_date(),
                        body: Some(body.to_vec()),
                        headers: None,
                    }
                };
                messages.insert(uid, message);
            }
        }
        Ok(messages.into_values().collect())
    }

    /// Marks committed messages on the server: `\Seen`, or moved to the target folder.
    async fn after_ingest(
        &self,
        session: &mut ImapSession,
        uids: &[u32],
        can_move: bool,
    ) -> Result<(), ImapError> {
        let limit = self.limit();
        let set = plan::uid_set(uids.iter().copied());
        let result = match &self.mailbox.after_ingest {
            AfterIngest::Seen => store_flags(session, &set, "+FLAGS.SILENT (\\Seen)", limit).await,
            AfterIngest::MoveTo(target) => {
                self.move_messages(session, &set, target, can_move).await
            }
        };
        match result {
            // The checkpoint has moved: a refusal here loses nothing, it only leaves
            // the messages unmarked, so it is reported and ingest goes on.
            Err(ImapError::Imap(
                e @ (async_imap::error::Error::No(_) | async_imap::error::Error::Bad(_)),
            )) => {
                tracing::error!(
                    mailbox = %self.mailbox.name,
                    uids = %set,
                    error = %e,
                    "imap: the server refused to mark committed messages"
                );
                Ok(())
            }
            other => other,
        }
    }

    async fn move_messages(
        &self,
        session: &mut ImapSession,
        set: &str,
        target: &str,
        can_move: bool,
    ) -> Result<(), ImapError> {
        let limit = self.limit();
        let target = plan::folder_name(target);
        if can_move {
            timed("UID MOVE", limit, session.uid_mv(set, &target)).await
        } else {
            // Without MOVE: copy, then flag the original \Deleted. We never EXPUNGE, so
            // the original stays until someone else expunges the folder.
            timed("UID COPY", limit, session.uid_copy(set, &target)).await?;
            store_flags(session, set, "+FLAGS.SILENT (\\Deleted)", limit).await
        }
    }

    /// With move-after-ingest, messages at or below the checkpoint that are still in the
    /// folder were committed but not moved (the connection broke in between): move them now.
    async fn move_leftovers(
        &self,
        session: &mut ImapSession,
        target: &str,
        can_move: bool,
        last_uid: u32,
    ) -> Result<(), ImapError> {
        let query = format!("UID 1:{last_uid} UNDELETED");
        let leftovers = timed("UID SEARCH", self.limit(), session.uid_search(&query)).await?;
        if leftovers.is_empty() {
            return Ok(());
        }
        let uids: Vec<u32> = leftovers.into_iter().collect();
        tracing::info!(
            mailbox = %self.mailbox.name,
            count = uids.len(),
            "imap: moving committed messages left behind by an earlier connection"
        );
        for chunk in uids.chunks(1000) {
            let set = plan::uid_set(chunk.iter().copied());
            if let Err(e) = self.move_messages(session, &set, target, can_move).await {
                match e {
                    ImapError::Imap(async_imap::error::Error::No(_)) => {
                        tracing::error!(mailbox = %self.mailbox.name, error = %e, "imap: cannot move leftovers");
                        return Ok(());
                    }
                    other => return Err(other),
                }
            }
        }
        Ok(())
    }

    /// NOOP, then drains what the server told us meanwhile: true if new mail may be there.
    async fn noop_and_drain(&self, session: &mut ImapSession) -> Result<bool, ImapError> {
        timed("NOOP", self.limit(), session.noop()).await?;
        let mut changed = false;
        while let Ok(response) = session.unsolicited_responses.try_recv() {
            if matches!(
                response,
                UnsolicitedResponse::Exists(_) | UnsolicitedResponse::Recent(_)
            ) {
                changed = true;
            }
        }
        Ok(changed)
    }

    /// Waits in IDLE for a change, the renewal time, or shutdown.
    async fn idle(&self, mut session: ImapSession) -> Result<(ImapSession, Wake), ImapError> {
        let limit = self.limit();
        // Leftover EXISTS responses would end the IDLE at once; and one that arrived
        // since the last fetch means there is mail to fetch now.
        if self.noop_and_drain(&mut session).await? {
            return Ok((session, Wake::Changed));
        }
        let renew = self.options.idle_renew.min(MAX_IDLE_RENEW);
        let mut handle = session.idle();
        timed("IDLE", limit, handle.init()).await?;
        self.metrics.set_imap_idling(&self.mailbox.name, true);
        let wake = {
            let (wait, _stop) = handle.wait_with_timeout(renew);
            tokio::select! {
                _ = self.shutdown.cancelled() => Wake::Shutdown,
                // Keepalives reset the crate's own timer, so an outer one enforces renewal.
                waited = tokio::time::timeout(renew, wait) => match waited {
                    Err(_) => Wake::Renew,
                    Ok(Ok(async_imap::extensions::idle::IdleResponse::NewData(_))) => Wake::Changed,
                    Ok(Ok(async_imap::extensions::idle::IdleResponse::Timeout)) => Wake::Renew,
                    Ok(Ok(async_imap::extensions::idle::IdleResponse::ManualInterrupt)) => {
                        return Err(ImapError::Protocol("the connection ended during IDLE".into()));
                    }
                    Ok(Err(e)) => return Err(e.into()),
                },
            }
        };
        self.metrics.set_imap_idling(&self.mailbox.name, false);
        let session = timed("DONE", limit, handle.done()).await?;
        Ok((session, wake))
    }

    /// Without IDLE: waits `poll_interval`, then checks the connection with a NOOP.
    async fn poll_wait(&self, session: &mut ImapSession) -> Result<Wake, ImapError> {
        tokio::select! {
            _ = self.shutdown.cancelled() => return Ok(Wake::Shutdown),
            _ = tokio::time::sleep(self.mailbox.poll_interval) => {}
        }
        self.noop_and_drain(session).await?;
        Ok(Wake::Changed)
    }
}

/// Reads a FETCH response stream to its end, with a limit on each gap between messages.
async fn collect_fetches(
    stream: impl Stream<Item = async_imap::error::Result<Fetch>>,
    limit: Duration,
) -> Result<Vec<Fetch>, ImapError> {
    let mut stream = std::pin::pin!(stream);
    let mut out = Vec::new();
    while let Some(fetch) = timed("FETCH response", limit, stream.try_next()).await? {
        out.push(fetch);
    }
    Ok(out)
}

async fn store_flags(
    session: &mut ImapSession,
    set: &str,
    change: &str,
    limit: Duration,
) -> Result<(), ImapError> {
    let stream = timed("UID STORE", limit, session.uid_store(set, change)).await?;
    collect_fetches(stream, limit).await?;
    Ok(())
}

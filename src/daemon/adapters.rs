//! The engine behind the transports' and tasks' traits: IMAP ingest ([`IngestSink`]), SMTP
//! delivery ([`OutboxSource`]), the scheduler ([`Timekeeper`]) and hot reload
//! ([`PolicyReloader`]).
//!
//! The engine is synchronous and commits to sled, flushing before it returns; every call that
//! may write or fsync runs in the blocking pool through [`BlockingWork`], which also lets
//! shutdown wait for the transaction in flight. Cheap reads (a checkpoint, one key) are made
//! inline.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, RwLock};

use crate::config::InDoubt;
use crate::engine::{Engine, EngineError, Outcome, ParseAhead, RawMessage};
use crate::imap::{FetchedBatch, FetchedMessage, IngestSink, SinkError};
use crate::metrics::Metrics;
use crate::reload::{PolicyReloader, ReloadSummary};
use crate::scheduler::{Scheduler, Timekeeper};
use crate::smtp::{OutboxError, OutboxSource, OutgoingMail};
use crate::store::{Checkpoint, DeliveryFailure, OutboxState};

/// Runs blocking engine calls in tokio's blocking pool and keeps count of them, so shutdown
/// can wait until the last transaction in flight has committed.
#[derive(Debug, Clone, Default)]
pub struct BlockingWork {
    // Each call holds a read guard for its whole run; waiting for the write guard waits
    // for all of them.
    in_flight: Arc<RwLock<()>>,
}

impl BlockingWork {
    /// Runs `work` in the blocking pool; a panic there becomes an error message.
    pub async fn run<R: Send + 'static>(
        &self,
        work: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, String> {
        let guard = Arc::clone(&self.in_flight).read_owned().await;
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            work()
        })
        .await
        .map_err(|join| format!("blocking engine call failed: {join}"))
    }

    /// Returns once no blocking call is running.
    pub async fn wait_idle(&self) {
        drop(self.in_flight.write().await);
    }
}

/// The engine as the IMAP tasks' sink: one engine ingest (one durable transaction) per
/// fetched batch; then the sender and the scheduler are woken.
pub struct EngineSink {
    engine: Arc<Engine>,
    /// Mailbox name → the policy channel of its complaints.
    channels: HashMap<String, String>,
    outbox: Arc<EngineOutbox>,
    scheduler: Scheduler,
    metrics: Metrics,
    work: BlockingWork,
    /// The batch fetched last, being parsed ahead: its mailbox and UIDs.
    parsing: std::sync::Mutex<Option<(String, Vec<u32>, ParseAhead)>>,
}

impl EngineSink {
    pub fn new(
        engine: Arc<Engine>,
        channels: HashMap<String, String>,
        outbox: Arc<EngineOutbox>,
        scheduler: Scheduler,
        metrics: Metrics,
        work: BlockingWork,
    ) -> Self {
        EngineSink {
            engine,
            channels,
            outbox,
            scheduler,
            metrics,
            work,
            parsing: std::sync::Mutex::new(None),
        }
    }

    /// The parse started for exactly these messages, if one was.
    fn parse_started(&self, mailbox: &str, uids: &[u32]) -> Option<ParseAhead> {
        let mut parsing = self.parsing.lock().ok()?;
        match parsing.take() {
            Some((name, started, parse)) if name == mailbox && started == uids => Some(parse),
            other => {
                *parsing = other;
                None
            }
        }
    }
}

/// The engine's form of a fetched message.
pub fn raw_message(message: FetchedMessage) -> RawMessage {
    let raw = match (message.body, message.headers) {
        (Some(body), _) => RawMessage {
            size: message.size.max(body.len() as u64),
            bytes: body,
            complete: true,
            received_at: None,
        },
        (None, headers) => RawMessage::headers_only(headers.unwrap_or_default(), message.size),
    };
    match message.internal_date {
        Some(at) => raw.received_at(at.with_timezone(&Utc)),
        None => raw,
    }
}

impl IngestSink for EngineSink {
    fn checkpoint(&self, mailbox: &str) -> Result<Option<Checkpoint>, SinkError> {
        // One read of a small tree, once per connection: not worth a thread hop.
        self.engine
            .store()
            .checkpoint(mailbox)
            .map_err(SinkError::new)
    }

    fn fetched(&self, mailbox: &str, messages: &[FetchedMessage]) {
        let uids = messages.iter().map(|m| m.uid).collect();
        let raw = messages
            .iter()
            .map(|m| (m.uid, raw_message(m.clone())))
            .collect();
        let parse = self.engine.parse_ahead(raw);
        if let Ok(mut parsing) = self.parsing.lock() {
            *parsing = Some((mailbox.to_owned(), uids, parse));
        }
    }

    async fn ingest(&self, batch: FetchedBatch) -> Result<(), SinkError> {
        let channel = self.channels.get(&batch.mailbox).cloned().ok_or_else(|| {
            SinkError::new(format!(
                "no channel configured for mailbox {}",
                batch.mailbox
            ))
        })?;
        if batch.rescan {
            tracing::warn!(
                mailbox = %batch.mailbox,
                "ingest: rescanning after a UIDVALIDITY change; known Message-IDs are skipped"
            );
        }
        let mailbox = batch.mailbox;
        let uidvalidity = batch.uidvalidity;
        let count = batch.messages.len();
        let uids: Vec<u32> = batch.messages.iter().map(|m| m.uid).collect();
        let parsing = match self.parse_started(&mailbox, &uids) {
            Some(parsing) => parsing,
            None => {
                let messages: Vec<(u32, RawMessage)> = batch
                    .messages
                    .into_iter()
                    .map(|m| (m.uid, raw_message(m)))
                    .collect();
                self.engine.parse_ahead(messages)
            }
        };
        let engine = Arc::clone(&self.engine);
        let name = mailbox.clone();
        let report = self
            .work
            .run(move || engine.ingest_parsed(&name, &channel, uidvalidity, parsing))
            .await
            .map_err(SinkError::new)?
            .map_err(SinkError::new)?;
        let new_cases = report.new_cases().count();
        self.metrics.cases_ingested(new_cases as u64);
        for message in &report.messages {
            match &message.outcome {
                Outcome::Quarantined { reason } => tracing::warn!(
                    %mailbox, uid = message.uid, message_id = %message.message_id, %reason,
                    "ingest: quarantined"
                ),
                Outcome::Loop { reason } => tracing::info!(
                    %mailbox, uid = message.uid, message_id = %message.message_id, %reason,
                    "ingest: mail loop, not answered"
                ),
                Outcome::Unverified { case, reason } => tracing::warn!(
                    %mailbox, uid = message.uid, %case, %reason,
                    "ingest: unverified department claim, recorded as correspondence"
                ),
                outcome => tracing::debug!(
                    %mailbox, uid = message.uid, message_id = %message.message_id, ?outcome,
                    "ingest: message handled"
                ),
            }
        }
        tracing::info!(
            %mailbox,
            messages = count,
            new_cases,
            transactions = report.transactions,
            mails_queued = report.mails_queued,
            "ingest: batch committed"
        );
        if report.mails_queued > 0 {
            let store = self.engine.store();
            self.metrics.refresh_outbox_depth(|| store.queue_depth());
            self.outbox.notify_queued();
        }
        // The batch may have committed timers nearer than the one the scheduler sleeps on.
        self.scheduler.wake();
        Ok(())
    }
}

/// The engine's outbox as the SMTP sender's source. Every attempt is recorded (and flushed)
/// before DATA and every result committed and flushed before the sender moves on, so a crash
/// leaves at most the one mail being sent in doubt, and the next start knows which one
/// (`smtp.in_doubt` decides: send it again with the same Message-ID, or hold it).
pub struct EngineOutbox {
    engine: Arc<Engine>,
    wakeup: Notify,
    metrics: Metrics,
    work: BlockingWork,
    in_doubt: InDoubt,
}

impl EngineOutbox {
    pub fn new(engine: Arc<Engine>, metrics: Metrics, work: BlockingWork) -> Self {
        metrics.refresh_outbox_depth(|| engine.store().queue_depth());
        EngineOutbox {
            engine,
            wakeup: Notify::new(),
            metrics,
            work,
            in_doubt: InDoubt::default(),
        }
    }

    /// What to do with a due mail whose last attempt began and has no recorded outcome (its
    /// result could not be recorded): with `Hold` it is held, never handed to SMTP again.
    pub fn with_in_doubt(mut self, in_doubt: InDoubt) -> Self {
        self.in_doubt = in_doubt;
        self
    }

    /// Wakes the sender: call after committing anything that queued mail.
    pub fn notify_queued(&self) {
        self.wakeup.notify_one();
    }

    async fn mark(
        &self,
        what: &'static str,
        change: impl FnOnce(&Engine) -> Result<(), EngineError> + Send + 'static,
    ) -> Result<(), OutboxError> {
        let engine = Arc::clone(&self.engine);
        self.work
            .run(move || {
                change(&engine)?;
                // The sender moves on to the next mail only once this result is durable.
                engine.store().flush()?;
                Ok::<_, EngineError>(())
            })
            .await
            .map_err(OutboxError::new)?
            .map_err(|e| OutboxError::new(format!("{what}: {e}")))?;
        // Also tells the waiters on the change feed that the result is durable.
        self.metrics
            .refresh_outbox_depth(|| self.engine.store().queue_depth());
        Ok(())
    }
}

impl OutboxSource for EngineOutbox {
    async fn mark_attempt(&self, id: &str, at: DateTime<Utc>) -> Result<(), OutboxError> {
        let id = id.to_owned();
        // Flushed before DATA, so that after a crash this mail is known to be in doubt.
        self.mark("mark attempt", move |engine| {
            engine.store().outbox_attempt(&id, at)?;
            Ok(())
        })
        .await
    }

    async fn next_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<OutgoingMail>, OutboxError> {
        let engine = Arc::clone(&self.engine);
        let hold = self.in_doubt == InDoubt::Hold;
        let (due, held) = self
            .work
            .run(move || {
                let mut due = engine.due_mail(now, limit)?;
                let mut held = 0;
                if hold {
                    // Still `Sending` here means the outcome of an attempt in this run could
                    // not be recorded: in doubt, like a mail found so at start.
                    let mut send = Vec::with_capacity(due.len());
                    for mail in due {
                        if matches!(mail.entry.state, OutboxState::Sending { .. }) {
                            engine.store().outbox_hold(
                                &mail.entry.id,
                                "in doubt: the outcome of its last attempt could not be recorded \
                                 (smtp.in_doubt = hold)",
                                now,
                            )?;
                            engine.store().flush()?;
                            tracing::warn!(id = %mail.entry.id, "outbox: mail in doubt held for an operator");
                            held += 1;
                        } else {
                            send.push(mail);
                        }
                    }
                    due = send;
                }
                Ok::<_, EngineError>((due, held))
            })
            .await
            .map_err(OutboxError::new)?
            .map_err(OutboxError::new)?;
        self.metrics
            .refresh_outbox_depth(|| self.engine.store().queue_depth());
        if held > 0 {
            self.metrics
                .set_outbox_held(self.metrics.outbox_held() + held);
        }
        Ok(due
            .into_iter()
            .map(|mail| OutgoingMail {
                attempts: mail.entry.state.failed_attempts(),
                id: mail.entry.id,
                envelope_from: mail.entry.envelope_from,
                recipients: mail.entry.recipients,
                bytes: mail.bytes,
            })
            .collect())
    }

    async fn mark_sent(&self, id: &str, at: DateTime<Utc>, reply: &str) -> Result<(), OutboxError> {
        tracing::debug!(%id, %reply, "outbox: accepted by the server");
        let id = id.to_owned();
        self.mark("mark sent", move |engine| {
            engine.mail_sent(&id, at).map(drop)
        })
        .await
    }

    async fn mark_temporary_failure(
        &self,
        id: &str,
        at: DateTime<Utc>,
        error: &str,
        next_attempt: DateTime<Utc>,
    ) -> Result<(), OutboxError> {
        let failure = DeliveryFailure::Temporary {
            error: error.to_owned(),
            next_attempt,
        };
        let id = id.to_owned();
        self.mark("mark temporary failure", move |engine| {
            engine.mail_failed(&id, failure, at).map(drop)
        })
        .await
    }

    async fn mark_in_doubt(
        &self,
        id: &str,
        at: DateTime<Utc>,
        error: &str,
        next_attempt: DateTime<Utc>,
    ) -> Result<(), OutboxError> {
        if self.in_doubt == InDoubt::Resend {
            return self
                .mark_temporary_failure(id, at, error, next_attempt)
                .await;
        }
        let id = id.to_owned();
        let reason = format!("in doubt: {error} (smtp.in_doubt = hold)");
        self.mark("hold mail in doubt", move |engine| {
            engine.store().outbox_hold(&id, &reason, at)?;
            Ok(())
        })
        .await?;
        self.metrics.set_outbox_held(self.metrics.outbox_held() + 1);
        Ok(())
    }

    async fn mark_permanent_failure(
        &self,
        id: &str,
        at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), OutboxError> {
        let failure = DeliveryFailure::Permanent {
            error: error.to_owned(),
        };
        let id = id.to_owned();
        self.mark("mark permanent failure", move |engine| {
            engine.mail_failed(&id, failure, at).map(drop)
        })
        .await
    }

    async fn next_attempt_at(&self) -> Result<Option<DateTime<Utc>>, OutboxError> {
        // The first key of the time-ordered due index: one read.
        self.engine.next_mail_due().map_err(OutboxError::new)
    }

    fn wakeup(&self) -> &Notify {
        &self.wakeup
    }
}

impl Timekeeper for Engine {
    type Error = EngineError;

    /// The engine's timers and schedules, and the daily retention purge.
    fn next_wakeup(&self) -> Result<Option<DateTime<Utc>>, EngineError> {
        let work = Engine::next_wakeup(self);
        let purge = match self.next_purge() {
            Ok(due) => due,
            Err(error) => {
                // As for timers: look again in a minute rather than never.
                tracing::error!(%error, "cannot read when the last retention purge ran");
                Some(self.clock().now() + chrono::Duration::minutes(1))
            }
        };
        Ok(match (work, purge) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// A purge that ran counts as one thing fired, whatever it removed. Its
    /// failure is logged and does not undo or hide the timers that fired.
    fn fire_due(&self, now: DateTime<Utc>) -> Result<usize, EngineError> {
        let timers = Engine::fire_due(self, now)?;
        let schedules = self.run_schedules(now)?;
        let purged = match self.purge_if_due(now) {
            Ok(ran) => usize::from(ran.is_some()),
            Err(error) => {
                tracing::error!(%error, "the retention purge failed; it is tried again");
                0
            }
        };
        Ok(timers + schedules + purged)
    }
}

impl PolicyReloader for Engine {
    fn reload(&self) -> Result<ReloadSummary, Vec<String>> {
        let report = Engine::reload(self)?;
        Ok(ReloadSummary {
            description: format!(
                "{} rule files, {} departments, {} schedules from {}",
                report.rule_files,
                report.departments,
                report.schedules,
                report.dir.display()
            ),
            warnings: report.warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    use chrono::{FixedOffset, TimeZone};

    #[test]
    fn a_fetched_message_keeps_its_size_and_arrival_time() {
        let arrived = FixedOffset::east_opt(8 * 3600)
            .unwrap()
            .with_ymd_and_hms(2026, 11, 24, 9, 30, 0)
            .unwrap();
        let whole = raw_message(FetchedMessage {
            uid: 7,
            size: 42,
            internal_date: Some(arrived),
            body: Some(b"Subject: x\r\n\r\nbody".to_vec()),
            headers: None,
        });
        assert!(whole.complete);
        assert_eq!(whole.size, 42);
        assert_eq!(whole.bytes, b"Subject: x\r\n\r\nbody");
        assert_eq!(
            whole.received_at,
            Some(Utc.with_ymd_and_hms(2026, 11, 24, 1, 30, 0).unwrap())
        );

        let oversized = raw_message(FetchedMessage {
            uid: 8,
            size: 90_000_000,
            internal_date: None,
            body: None,
            headers: Some(b"Subject: big\r\n\r\n".to_vec()),
        });
        assert!(!oversized.complete, "only the headers were fetched");
        assert_eq!(oversized.size, 90_000_000);
        assert_eq!(oversized.bytes, b"Subject: big\r\n\r\n");
        assert_eq!(oversized.received_at, None);
    }

    #[tokio::test]
    async fn waiting_for_idle_waits_for_the_call_in_flight() {
        let work = BlockingWork::default();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let finished = Arc::new(AtomicBool::new(false));
        let call = {
            let work = work.clone();
            let finished = Arc::clone(&finished);
            tokio::spawn(async move {
                work.run(move || {
                    let _ = started_tx.send(());
                    release_rx.recv().unwrap();
                    finished.store(true, Ordering::SeqCst);
                })
                .await
            })
        };
        started_rx.await.unwrap();
        let mut idle = Box::pin(work.wait_idle());
        assert!(
            futures::poll!(&mut idle).is_pending(),
            "wait_idle returned while a call was running"
        );
        release_tx.send(()).unwrap();
        idle.await;
        assert!(finished.load(Ordering::SeqCst));
        call.await.unwrap().unwrap();
    }

    mod in_doubt_during_a_run {
        use super::super::*;
        use crate::clock::ManualClock;
        use crate::engine::EngineSettings;
        use crate::mail::token::ReplySecret;
        use chrono::TimeZone;

        fn t0() -> DateTime<Utc> {
            Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap()
        }

        /// An engine over the default policy with one complaint ingested (its mail queued).
        fn engine_with_a_complaint(dir: &tempfile::TempDir) -> Arc<Engine> {
            let settings = EngineSettings {
                rules_dir: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"),
                complaint_address: "complaints@example.test".into(),
                sender_address: "complaints@example.test".into(),
                own_addresses: Vec::new(),
                reply_secret: ReplySecret::new(b"0123456789abcdef0123456789abcdef".to_vec())
                    .unwrap(),
                token_valid_days: 90,
                message_id_host: "complaints.example.test".into(),
                acks_per_sender_per_hour: 10,
                case_prefix: "TS".into(),
                case_number_width: 6,
                store_cache_mb: crate::store::DEFAULT_CACHE_MB,
                time_zone: chrono_tz::Asia::Shanghai,
                max_message_bytes: 1024 * 1024,
                organisation: "城市燃气".into(),
                reopen_window_days: 30,
                retention_days: crate::config::DEFAULT_RETENTION_DAYS,
            };
            let engine = Engine::open(
                settings,
                &dir.path().join("store"),
                Arc::new(ManualClock::new(t0())),
            )
            .unwrap();
            let mail = b"From: customer@example.test\r\nTo: complaints@example.test\r\n\
                Message-ID: <c1@example.test>\r\nSubject: gas meter\r\n\r\nThe reading is wrong.\r\n"
                .to_vec();
            engine
                .ingest("INBOX", "own", 7, vec![(1, RawMessage::full(mail))])
                .unwrap();
            Arc::new(engine)
        }

        /// A mail whose attempt began and whose outcome was never recorded, then the next round.
        async fn next_round_after_an_unrecorded_attempt(
            in_doubt: InDoubt,
        ) -> (
            Vec<OutgoingMail>,
            String,
            Arc<Engine>,
            Metrics,
            tempfile::TempDir,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let engine = engine_with_a_complaint(&dir);
            let metrics = Metrics::new();
            let outbox = EngineOutbox::new(
                Arc::clone(&engine),
                metrics.clone(),
                BlockingWork::default(),
            )
            .with_in_doubt(in_doubt);
            let now = t0() + chrono::Duration::minutes(1);
            let first = outbox.next_due(now, 10).await.unwrap();
            assert!(!first.is_empty(), "the complaint queued mail");
            let id = first[0].id.clone();
            outbox.mark_attempt(&id, now).await.unwrap();
            let next = outbox.next_due(now, 10).await.unwrap();
            (next, id, engine, metrics, dir)
        }

        #[tokio::test]
        async fn with_hold_it_is_held_not_sent_again() {
            let (next, id, engine, metrics, _dir) =
                next_round_after_an_unrecorded_attempt(InDoubt::Hold).await;
            assert!(next.iter().all(|m| m.id != id), "{next:?}");
            assert!(matches!(
                engine.store().outbox_entry(&id).unwrap().unwrap().state,
                OutboxState::Held { .. }
            ));
            assert_eq!(metrics.outbox_held(), 1);
        }

        #[tokio::test]
        async fn with_resend_it_is_sent_again() {
            let (next, id, engine, metrics, _dir) =
                next_round_after_an_unrecorded_attempt(InDoubt::Resend).await;
            assert!(next.iter().any(|m| m.id == id), "{next:?}");
            assert!(matches!(
                engine.store().outbox_entry(&id).unwrap().unwrap().state,
                OutboxState::Sending { .. }
            ));
            assert_eq!(metrics.outbox_held(), 0);
        }

        /// A mail sent without an answer from the server, as the sender reports it.
        async fn after_no_answer(in_doubt: InDoubt) -> OutboxState {
            let dir = tempfile::tempdir().unwrap();
            let engine = engine_with_a_complaint(&dir);
            let outbox =
                EngineOutbox::new(Arc::clone(&engine), Metrics::new(), BlockingWork::default())
                    .with_in_doubt(in_doubt);
            let now = t0() + chrono::Duration::minutes(1);
            let id = outbox.next_due(now, 10).await.unwrap()[0].id.clone();
            outbox.mark_attempt(&id, now).await.unwrap();
            let retry = now + chrono::Duration::minutes(5);
            outbox
                .mark_in_doubt(&id, now, "connection reset", retry)
                .await
                .unwrap();
            let state = engine.store().outbox_entry(&id).unwrap().unwrap().state;
            state
        }

        #[tokio::test]
        async fn no_answer_after_data_is_held_or_retried_as_configured() {
            assert!(matches!(
                after_no_answer(InDoubt::Hold).await,
                OutboxState::Held { ref reason, .. } if reason == "in doubt: connection reset (smtp.in_doubt = hold)"
            ));
            assert!(matches!(
                after_no_answer(InDoubt::Resend).await,
                OutboxState::TemporaryFailure { attempts: 1, .. }
            ));
        }
    }
}

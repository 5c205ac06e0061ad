//! The case store: the only module that touches sled.
//!
//! Everything the daemon must not lose lives here: cases and their
//! append-only event logs, which Message-IDs were seen, how far each mailbox
//! was read, pending timers, the outbox, attachments, quarantined mail and
//! the per-sender acknowledgement counters. Each ingested message (or batch
//! of messages) is ONE transaction over all trees ([`ChangeSet`],
//! [`IngestBatch`], [`Store::commit`]); [`Store::flush_async`] makes it
//! durable before the IMAP server is told. The trees, keys and invariants
//! are described in `docs/store.md`.

mod batch;
mod engine_ops;
mod error;
mod history;
mod keys;
mod outbox;
mod prerender;
mod records;
mod retention;
mod schema;
mod trees;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use sled::transaction::{TransactionError, Transactional, TransactionalTree};

pub use batch::{
    ack_counter_sender, Applied, CaseRef, ChangeOutcome, ChangeSet, CommitReport, IngestBatch,
    NewCaseKey, QueuedMail,
};
pub use error::StoreError;
pub use history::{BatchHistory, StoreHistory};
pub use outbox::{
    encode_purpose, mail_identity, DeliveryFailure, MailDraft, MailIdentity, OutboxEntry,
    OutboxState, RenderedMail, Renderer, NO_CASE_SCOPE,
};
pub use prerender::RenderAhead;
pub use records::{
    normalize_message_id, AttachmentRecord, Checkpoint, MessageRecord, QuarantineRecord,
    Quarantined, Timer,
};
pub use retention::{PurgeReport, PURGE_CHUNK_CASES};
pub use schema::SCHEMA_VERSION;

use crate::case::{Case, CaseId, CaseState, Event};
use trees::{decode, CaseCounters, TreeId, Tx, TxResult, META_TREE};

/// How case numbers and Message-IDs are made.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreSettings {
    /// Case numbers are `PREFIX-YYYY-NNNNNN`: ASCII letters, digits, `-`, `_`.
    pub case_prefix: String,
    /// Digits of the per-year sequence number (zero-padded; larger numbers
    /// simply get longer).
    pub case_number_width: usize,
    /// The time zone whose calendar year a case number carries.
    pub case_number_tz: chrono_tz::Tz,
    /// Memory sled may use for its page cache, in MiB.
    pub cache_mb: u64,
}

/// The page cache of a store whose settings do not say: 512 MiB. sled's
/// log-structured storage rewrites old pages to reclaim log segments as it
/// writes, so a cache smaller than the pages being written and reclaimed
/// makes every such rewrite read its page back from disk first: at 64 MiB
/// that was ~4 % of the daemon's CPU after 10,000 complaints, at 512 MiB
/// none (`docs/PERFORMANCE.md`, "Fifth round").
pub const DEFAULT_CACHE_MB: u64 = 512;

/// The smallest page cache a store accepts, in MiB.
pub const MIN_CACHE_MB: u64 = 8;

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            case_prefix: "TS".into(),
            case_number_width: 6,
            case_number_tz: chrono_tz::UTC,
            cache_mb: DEFAULT_CACHE_MB,
        }
    }
}

impl StoreSettings {
    fn validate(&self) -> Result<(), StoreError> {
        let prefix_ok = !self.case_prefix.is_empty()
            && self
                .case_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !prefix_ok {
            return Err(StoreError::Settings(format!(
                "case prefix `{}` must be ASCII letters, digits, `-` or `_`",
                self.case_prefix
            )));
        }
        if !(1..=18).contains(&self.case_number_width) {
            return Err(StoreError::Settings(format!(
                "case number width {} must be between 1 and 18",
                self.case_number_width
            )));
        }
        if self.cache_mb < MIN_CACHE_MB {
            return Err(StoreError::Settings(format!(
                "page cache of {} MiB is below the minimum of {MIN_CACHE_MB} MiB",
                self.cache_mb
            )));
        }
        Ok(())
    }
}

/// Which cases [`Store::list_cases`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaseFilter {
    /// `Some(true)`: open cases only; `Some(false)`: closed ones only.
    pub open: Option<bool>,
    pub state: Option<CaseState>,
    pub severity: Option<String>,
    /// The department the case is assigned to.
    pub department: Option<String>,
    pub limit: Option<usize>,
}

impl CaseFilter {
    pub fn matches(&self, case: &Case) -> bool {
        self.open.is_none_or(|open| case.state.is_open() == open)
            && self.state.is_none_or(|state| case.state == state)
            && self
                .severity
                .as_deref()
                .is_none_or(|s| case.severity() == Some(s))
            && self
                .department
                .as_deref()
                .is_none_or(|d| case.assignment.as_ref().is_some_and(|a| a.department == d))
    }
}

/// The case store. Cheap to clone: clones share the database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    trees: Arc<[sled::Tree]>,
    settings: Arc<StoreSettings>,
    path: Arc<Path>,
    /// Index windows the history questions asked about, kept in step by
    /// [`Store::transact`] (shared by clones).
    history: Arc<history::HistoryCache>,
    /// Mail in the outbox due index (not yet sent or given up), counted
    /// once at open and kept in step by [`Store::transact`], so that the
    /// sender's every look at the queue depth costs nothing however long
    /// the queue grew (shared by clones).
    pending_mail: Arc<AtomicU64>,
    /// Per due batch key, how many of its first mails are known to have
    /// left it (`outbox::Store::due_batch_members`; shared by clones).
    due_batch_cursors: Arc<Mutex<HashMap<Vec<u8>, usize>>>,
    /// Attachment contents given a new reference while a retention purge
    /// runs (`retention::RefWatch`; shared by clones).
    ref_watch: Arc<Mutex<retention::RefWatch>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store at `path` with default settings.
    pub fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        Store::open_with(path, StoreSettings::default())
    }

    /// Opens (or creates) the store at `path`, migrating an older schema and
    /// refusing a newer one.
    pub fn open_with(path: impl AsRef<Path>, settings: StoreSettings) -> Result<Store, StoreError> {
        Store::open_waiting(path, settings, LockWait::Retry)
    }

    /// [`Store::open_with`], choosing whether a held lock is waited for.
    pub fn open_waiting(
        path: impl AsRef<Path>,
        settings: StoreSettings,
        wait: LockWait,
    ) -> Result<Store, StoreError> {
        settings.validate()?;
        let path = path.as_ref();
        let db = open_db(path, settings.cache_mb, wait)?;
        let meta = db.open_tree(META_TREE)?;
        schema::prepare(&db, &meta)?;
        let trees = TreeId::ALL
            .iter()
            .map(|id| db.open_tree(id.name()))
            .collect::<Result<Vec<_>, _>>()?;
        let store = Store {
            db,
            trees: trees.into(),
            settings: Arc::new(settings),
            path: path.into(),
            history: Arc::default(),
            pending_mail: Arc::default(),
            due_batch_cursors: Arc::default(),
            ref_watch: Arc::default(),
        };
        store.recount_pending_mail()?;
        Ok(store)
    }

    pub fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    pub(crate) fn tree(&self, id: TreeId) -> &sled::Tree {
        &self.trees[id.index()]
    }

    /// Runs `body` as one transaction over all trees. `body` may run more
    /// than once, so it does nothing but read and write the trees.
    ///
    /// The index changes of the run that committed are applied to the
    /// history cache before the next transaction may start, so the cache
    /// follows the commits in their order; every write of the index trees
    /// goes through here (migrations run before a store has a cache).
    pub(crate) fn transact<T>(
        &self,
        body: impl Fn(&Tx<'_>) -> TxResult<T>,
    ) -> Result<T, StoreError> {
        let writer = self.history.lock_writer();
        self.transact_holding(&writer, body)
    }

    /// [`Store::transact`] for a caller that already holds the writer lock
    /// ([`history::HistoryCache::lock_writer`]): no other transaction can
    /// commit between what it read under the lock and this one.
    pub(crate) fn transact_holding<T>(
        &self,
        writer: &std::sync::MutexGuard<'_, ()>,
        body: impl Fn(&Tx<'_>) -> TxResult<T>,
    ) -> Result<T, StoreError> {
        let index_changes = RefCell::new(Vec::new());
        let due_delta = std::cell::Cell::new(0);
        let referenced = RefCell::new(Vec::new());
        let result = self
            .trees
            .as_ref()
            .transaction(|view: &Vec<TransactionalTree>| {
                let tx = Tx::new(view);
                let value = body(&tx)?;
                tx.write_events()?;
                tx.write_case_counters()?;
                tx.write_due_batches()?;
                // A retried run starts over; the last run is the one committed.
                *index_changes.borrow_mut() = tx.take_index_changes();
                due_delta.set(tx.due_delta());
                *referenced.borrow_mut() = tx.take_attachment_refs();
                Ok(value)
            });
        // A commit that failed in sled may have written its references.
        if !matches!(result, Err(TransactionError::Abort(_))) {
            self.ref_watch
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .saw(referenced.into_inner());
        }
        match result {
            Ok(value) => {
                self.history.apply(&index_changes.into_inner());
                // Two's complement: adding a negative delta's bits subtracts.
                self.pending_mail
                    .fetch_add(due_delta.get() as u64, Ordering::AcqRel);
                Ok(value)
            }
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => {
                // Whether anything was written is unknown: cache nothing,
                // count again.
                self.history.clear();
                // The commit's own error is the one to report.
                let _ = self.recount_pending_mail_holding(writer);
                Err(StoreError::Storage(e))
            }
        }
    }

    /// Makes every committed change durable (fsync). Blocks.
    pub fn flush(&self) -> Result<usize, StoreError> {
        Ok(self.db.flush()?)
    }

    /// Makes every committed change durable without blocking the runtime:
    /// await it before telling the IMAP server a message is done.
    pub async fn flush_async(&self) -> Result<usize, StoreError> {
        Ok(self.db.flush_async().await?)
    }

    pub(crate) fn get_json<T: DeserializeOwned>(
        &self,
        tree: TreeId,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match self.tree(tree).get(key)? {
            Some(bytes) => decode(tree, key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// One case.
    pub fn case(&self, id: &CaseId) -> Result<Option<Case>, StoreError> {
        self.get_json(TreeId::Cases, &keys::case_key(id))
    }

    pub fn case_exists(&self, id: &CaseId) -> Result<bool, StoreError> {
        Ok(self.tree(TreeId::Cases).contains_key(keys::case_key(id))?)
    }

    /// Cases matching `filter`, in case-number order. Scans all cases.
    pub fn list_cases(&self, filter: &CaseFilter) -> Result<Vec<Case>, StoreError> {
        self.scan_cases(filter.limit, |case| filter.matches(case))
    }

    /// Cases whose number, sender address, sender name or subject contains
    /// `text` (case-insensitive), in case-number order. A plain scan of all
    /// cases: fine for operator searches, not for hot paths.
    pub fn search_cases(&self, text: &str, limit: Option<usize>) -> Result<Vec<Case>, StoreError> {
        let needle = text.to_lowercase();
        self.scan_cases(limit, |case| {
            case.id.0.to_lowercase().contains(&needle)
                || case.sender.email.contains(&needle)
                || case
                    .sender
                    .name
                    .as_deref()
                    .is_some_and(|n| n.to_lowercase().contains(&needle))
                || case.subject.to_lowercase().contains(&needle)
        })
    }

    fn scan_cases(
        &self,
        limit: Option<usize>,
        keep: impl Fn(&Case) -> bool,
    ) -> Result<Vec<Case>, StoreError> {
        let limit = limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        for item in self.tree(TreeId::Cases).iter() {
            if out.len() >= limit {
                break;
            }
            let (key, value) = item?;
            let case: Case = decode(TreeId::Cases, &key, &value)?;
            if keep(&case) {
                out.push(case);
            }
        }
        Ok(out)
    }

    /// The event log of a case, oldest first.
    pub fn events(&self, id: &CaseId) -> Result<Vec<Event>, StoreError> {
        let mut events = Vec::new();
        for item in self
            .tree(TreeId::Events)
            .scan_prefix(keys::event_prefix(id))
        {
            let (key, value) = item?;
            let appended: Vec<Event> = decode(TreeId::Events, &key, &value)?;
            events.extend(appended);
        }
        Ok(events)
    }

    /// What the store knows about a Message-ID (angle brackets optional).
    pub fn message(&self, message_id: &str) -> Result<Option<MessageRecord>, StoreError> {
        let key = normalize_message_id(message_id);
        match self.get_json(TreeId::MessageIds, key.as_bytes())? {
            Some(record) => Ok(Some(record)),
            None => self.outgoing_message(&key),
        }
    }

    /// How far a mailbox has been read.
    pub fn checkpoint(&self, mailbox: &str) -> Result<Option<Checkpoint>, StoreError> {
        self.get_json(TreeId::Checkpoints, mailbox.as_bytes())
    }

    /// Timers due at or before `until`, earliest first. They stay stored
    /// until a change set removes them ([`ChangeSet::remove_timer`]).
    ///
    /// The `timers` index holds each clock's earliest slot only; a clock
    /// found there adds its later slots that are due too, from its list.
    pub fn due_timers(&self, until: DateTime<Utc>) -> Result<Vec<Timer>, StoreError> {
        let timers = self.tree(TreeId::Timers);
        let range = match keys::prefix_end(&keys::time_key(until)) {
            Some(end) => timers.range(..end),
            None => timers.range::<&[u8], _>(..),
        };
        let mut due: Vec<(Vec<u8>, Timer)> = Vec::new();
        for item in range {
            let (key, _) = item?;
            let indexed = decode_timer(&key)?;
            let slots = self
                .case_counters(&indexed.case)?
                .clocks
                .remove(&indexed.deadline)
                .unwrap_or_default();
            let mut listed = false;
            for slot in slots.into_iter().take_while(|slot| slot.due <= until) {
                listed |= slot.due == indexed.due && slot.step == indexed.step;
                let timer = Timer {
                    due: slot.due,
                    case: indexed.case.clone(),
                    deadline: indexed.deadline.clone(),
                    step: slot.step,
                };
                let key = keys::timer_key(slot.due, &timer.case, &timer.deadline, slot.step as u64);
                due.push((key, timer));
            }
            // A key its clock does not list is still reported, so that the
            // change set handling it removes it.
            if !listed {
                due.push((key.to_vec(), indexed));
            }
        }
        // Key order is due order, ties broken by case, deadline and step.
        due.sort_by(|a, b| a.0.cmp(&b.0));
        due.dedup_by(|a, b| a.0 == b.0);
        Ok(due.into_iter().map(|(_, timer)| timer).collect())
    }

    /// When the earliest timer is due: one read of the first key of the
    /// time-ordered index, however many cases are open.
    pub fn next_timer_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        match self.tree(TreeId::Timers).first()? {
            None => Ok(None),
            Some((key, _)) => decode_timer(&key).map(|t| Some(t.due)),
        }
    }

    /// The pending timers of a case, by deadline then due time.
    pub fn timers_of_case(&self, id: &CaseId) -> Result<Vec<Timer>, StoreError> {
        let mut out = Vec::new();
        for (deadline, slots) in self.case_counters(id)?.clocks {
            out.extend(slots.into_iter().map(|s| Timer {
                due: s.due,
                case: id.clone(),
                deadline: deadline.clone(),
                step: s.step,
            }));
        }
        Ok(out)
    }

    /// A case's counter record: its sequence numbers and clocks (empty when
    /// it has none).
    pub(crate) fn case_counters(&self, case: &CaseId) -> Result<CaseCounters, StoreError> {
        match self
            .tree(TreeId::Counters)
            .get(keys::event_sequence_key(case))?
        {
            None => Ok(CaseCounters::default()),
            Some(bytes) => CaseCounters::decode_stored(case, &bytes),
        }
    }

    /// Acknowledgements counted for `sender` in the hour of `at`.
    pub fn acks_in_hour(&self, sender: &str, at: DateTime<Utc>) -> Result<u64, StoreError> {
        let sender = ack_counter_sender(sender);
        let key = keys::ack_key(&sender, keys::hour_bucket(at));
        match self.tree(TreeId::AckCounters).get(&key)? {
            None => Ok(0),
            Some(raw) => <[u8; 8]>::try_from(raw.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::corrupt(TreeId::AckCounters.name(), &key, "not 8 bytes")),
        }
    }

    /// Removes acknowledgement counters of hours that ended before `before`;
    /// returns how many were removed. Maintenance: the counters only serve
    /// rate limiting over recent hours.
    pub fn prune_ack_counters(&self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        let cutoff = keys::hour_bucket(before);
        let tree = self.tree(TreeId::AckCounters);
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        for item in tree.iter() {
            let (key, _) = item?;
            let bucket = key
                .len()
                .checked_sub(8)
                .and_then(|at| <[u8; 8]>::try_from(&key[at..]).ok())
                .map(|raw| (u64::from_be_bytes(raw) ^ (1 << 63)) as i64)
                .ok_or_else(|| StoreError::corrupt(TreeId::AckCounters.name(), &key, "bad key"))?;
            if bucket < cutoff {
                batch.remove(key);
                removed += 1;
            }
        }
        tree.apply_batch(batch)?;
        Ok(removed)
    }

    /// The bytes of a stored attachment.
    pub fn attachment(&self, sha256_hex: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree(TreeId::Attachments)
            .get(sha256_hex.as_bytes())?
            .map(|v| v.to_vec()))
    }

    /// The attachments of a case.
    pub fn case_attachments(&self, id: &CaseId) -> Result<Vec<AttachmentRecord>, StoreError> {
        self.tree(TreeId::AttachmentRefs)
            .scan_prefix(keys::attachment_ref_prefix(id))
            .map(|item| {
                let (key, value) = item?;
                decode(TreeId::AttachmentRefs, &key, &value)
            })
            .collect()
    }

    /// Every quarantined mail, oldest first.
    pub fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        self.tree(TreeId::Quarantine)
            .iter()
            .map(|item| {
                let (key, value) = item?;
                let id = <[u8; 8]>::try_from(key.as_ref())
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::corrupt(TreeId::Quarantine.name(), &key, "bad id"))?;
                Ok(Quarantined {
                    id,
                    record: decode(TreeId::Quarantine, &key, &value)?,
                })
            })
            .collect()
    }

    /// The raw bytes kept of a quarantined mail.
    pub fn quarantined_raw(&self, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree(TreeId::QuarantineRaw)
            .get(id.to_be_bytes())?
            .map(|v| v.to_vec()))
    }
}

/// Removes the snapshot files a killed open left unfinished.
///
/// sled (0.34) writes a snapshot only while opening a database: into
/// `snap.<lsn>.generating`, which it renames to `snap.<lsn>` once synced,
/// and only then deletes the older snapshot. Its reader, though, also takes
/// a `.generating` file for a snapshot, the newest one even, so after a kill
/// in the middle of an open every later open fails with "corrupted data".
/// Such a file is never the only record of anything (the older snapshot and
/// the log it was made from are still there), so it is removed: but only
/// while holding sled's own lock on the `db` file, because the process that
/// holds it may be writing that snapshot right now.
fn remove_unfinished_snapshots(path: &Path) -> Result<(), StoreError> {
    let unreadable = |e: std::io::Error| StoreError::Open {
        path: path.display().to_string(),
        source: sled::Error::Io(std::io::Error::new(
            e.kind(),
            format!("removing a snapshot an earlier open did not finish: {e}"),
        )),
    };
    let db_file = match std::fs::File::open(path.join("db")) {
        Ok(file) => file,
        // A new store, or one sled has yet to create: nothing was snapshot.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(unreadable(e)),
    };
    if db_file.try_lock().is_err() {
        // Another process has the store open; opening will say so.
        return Ok(());
    }
    for entry in std::fs::read_dir(path).map_err(unreadable)? {
        let name = entry.map_err(unreadable)?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(
                store = %path.display(),
                file = %name,
                "store: removing a snapshot an earlier open did not finish (the process was \
                 stopped while opening)"
            );
            std::fs::remove_file(path.join(&*name)).map_err(unreadable)?;
        }
    }
    // Dropping the file releases the lock for sled's own open.
    drop(db_file);
    Ok(())
}

/// How often opening retries a store whose lock is held, and the pause
/// before each retry in milliseconds (doubling, then staying at the last).
const LOCK_RETRIES: usize = 20;
const LOCK_RETRY_PAUSES_MS: [u64; 6] = [10, 20, 40, 80, 160, 200];

/// Whether opening waits for a held lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockWait {
    /// Retry for about three seconds: the lock may be this process's own,
    /// from a store closed a moment ago.
    Retry,
    /// Report a held lock at once, e.g. when a running daemon holds it.
    Fail,
}

/// Opens the sled database. sled's background I/O threads release the file
/// lock a moment after the last handle of a closed store is dropped, so with
/// [`LockWait::Retry`] a held lock is retried for about three seconds before
/// it is reported as the store being in use by another process.
fn open_db(path: &Path, cache_mb: u64, wait: LockWait) -> Result<sled::Db, StoreError> {
    let config = sled::Config::new()
        .path(path)
        .cache_capacity(cache_mb.saturating_mul(1024 * 1024));
    let last = LOCK_RETRY_PAUSES_MS.len() - 1;
    let retries = match wait {
        LockWait::Retry => LOCK_RETRIES,
        LockWait::Fail => 0,
    };
    let mut pauses = (0..retries).map(|i| LOCK_RETRY_PAUSES_MS[i.min(last)]);
    loop {
        remove_unfinished_snapshots(path)?;
        match config.open() {
            Ok(db) => return Ok(db),
            Err(e) if is_lock_error(&e) => match pauses.next() {
                Some(ms) => std::thread::sleep(std::time::Duration::from_millis(ms)),
                None => {
                    return Err(StoreError::Locked {
                        path: path.display().to_string(),
                    })
                }
            },
            Err(source) => {
                return Err(StoreError::Open {
                    path: path.display().to_string(),
                    source,
                })
            }
        }
    }
}

/// sled reports a held lock only as an I/O error with this text.
fn is_lock_error(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(e) if e.to_string().contains("could not acquire lock"))
}

fn decode_timer(key: &[u8]) -> Result<Timer, StoreError> {
    let bad = || StoreError::corrupt(TreeId::Timers.name(), key, "bad timer key");
    let mut reader = keys::KeyReader::new(key);
    let due = reader.time().ok_or_else(bad)?;
    let case = reader.str().ok_or_else(bad)?;
    let deadline = reader.str().ok_or_else(bad)?;
    let step = reader.u64().ok_or_else(bad)?;
    Ok(Timer {
        due,
        case: CaseId(case.to_owned()),
        deadline: deadline.to_owned(),
        step: usize::try_from(step).map_err(|_| bad())?,
    })
}

//! The sled trees of the store, and the transaction view that reads and writes them.

use std::cell::{Cell, RefCell};
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::error::StoreError;
use super::keys;
use super::records::TimerSlot;
use crate::case::{CaseId, Event};

/// Every tree that takes part in transactions. The `meta` tree (schema
/// version) is kept apart: only opening and migrations write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum TreeId {
    Cases,
    Events,
    Counters,
    MessageIds,
    Checkpoints,
    IdxSender,
    IdxCategory,
    IdxSubject,
    IdxTag,
    Timers,
    Outbox,
    OutboxDue,
    OutboxHeld,
    Attachments,
    AttachmentRefs,
    Quarantine,
    QuarantineRaw,
    AckCounters,
}

impl TreeId {
    pub const ALL: [TreeId; 18] = [
        TreeId::Cases,
        TreeId::Events,
        TreeId::Counters,
        TreeId::MessageIds,
        TreeId::Checkpoints,
        TreeId::IdxSender,
        TreeId::IdxCategory,
        TreeId::IdxSubject,
        TreeId::IdxTag,
        TreeId::Timers,
        TreeId::Outbox,
        TreeId::OutboxDue,
        TreeId::OutboxHeld,
        TreeId::Attachments,
        TreeId::AttachmentRefs,
        TreeId::Quarantine,
        TreeId::QuarantineRaw,
        TreeId::AckCounters,
    ];

    /// The tree's name on disk; never change one without a migration.
    pub const fn name(self) -> &'static str {
        match self {
            TreeId::Cases => "cases",
            TreeId::Events => "events",
            TreeId::Counters => "counters",
            TreeId::MessageIds => "message_ids",
            TreeId::Checkpoints => "checkpoints",
            TreeId::IdxSender => "idx_sender",
            TreeId::IdxCategory => "idx_category",
            TreeId::IdxSubject => "idx_subject",
            TreeId::IdxTag => "idx_tag",
            TreeId::Timers => "timers",
            TreeId::Outbox => "outbox",
            TreeId::OutboxDue => "outbox_due",
            TreeId::OutboxHeld => "outbox_held",
            TreeId::Attachments => "attachments",
            TreeId::AttachmentRefs => "attachment_refs",
            TreeId::Quarantine => "quarantine",
            TreeId::QuarantineRaw => "quarantine_raw",
            TreeId::AckCounters => "ack_counters",
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }

    /// The indexes the distinct-sender questions group cases by (category,
    /// subject, tag): the store's history cache keeps windows of these, so
    /// transactions record their changes.
    pub const fn is_grouping_index(self) -> bool {
        matches!(
            self,
            TreeId::IdxCategory | TreeId::IdxSubject | TreeId::IdxTag
        )
    }
}

/// Name of the tree that holds the schema version.
pub(crate) const META_TREE: &str = "meta";

/// Encodes a value for storage.
pub(crate) fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Encode {
        what: what.to_owned(),
        reason: e.to_string(),
    })
}

/// Decodes a stored value, naming the tree and key when it is corrupt.
pub(crate) fn decode<T: DeserializeOwned>(
    tree: TreeId,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::corrupt(tree.name(), key, e))
}

pub(crate) type TxError = ConflictableTransactionError<StoreError>;
pub(crate) type TxResult<T> = Result<T, TxError>;

/// Turns a store error into a transaction abort.
pub(crate) fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

/// Lifts a store error into the transaction's error type.
pub(crate) trait OrAbort<T> {
    fn or_abort(self) -> TxResult<T>;
}

impl<T> OrAbort<T> for Result<T, StoreError> {
    fn or_abort(self) -> TxResult<T> {
        self.map_err(ConflictableTransactionError::Abort)
    }
}

/// A case's sequence numbers and clocks, one record per case in `counters`
/// under [`keys::event_sequence_key`] (schema 3; before, one key per
/// number): the sequence number its next event gets, the last mail
/// sequence of each purpose, and (schema 6; before, one `timer_clocks`
/// record per clock) the slots of each running clock. One record instead of
/// one key each saves three writes per new complaint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CaseCounters {
    pub next_event: u64,
    pub mails: BTreeMap<String, u64>,
    /// Deadline → its slots, earliest first; a clock without slots is absent.
    pub clocks: BTreeMap<String, Vec<TimerSlot>>,
}

impl CaseCounters {
    /// First byte of a record without clocks; schema 2's plain 8-byte event
    /// counter has no such byte, which tells the two apart.
    const FORMAT: u8 = 1;
    /// First byte of a record with clocks.
    const FORMAT_WITH_CLOCKS: u8 = 2;

    /// Without clocks: `1 ++ next_event u64 BE ++ (str(purpose) ++ seq u64
    /// BE)*`. With clocks: `2 ++ next_event ++ number of purposes u64 ++
    /// (str(purpose) ++ seq)* ++ (str(deadline) ++ number of slots u64 ++
    /// (time(due) ++ step u64)*)*`.
    pub fn encode(&self) -> Vec<u8> {
        let format = if self.clocks.is_empty() {
            Self::FORMAT
        } else {
            Self::FORMAT_WITH_CLOCKS
        };
        let mut record = keys::KeyBuf::new().tail(&[format]).u64(self.next_event);
        if format == Self::FORMAT_WITH_CLOCKS {
            record = record.u64(self.mails.len() as u64);
        }
        for (purpose, sequence) in &self.mails {
            record = record.str(purpose).u64(*sequence);
        }
        for (deadline, slots) in &self.clocks {
            record = record.str(deadline).u64(slots.len() as u64);
            for slot in slots {
                record = record.time(slot.due).u64(slot.step as u64);
            }
        }
        record.build()
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (&format, rest) = bytes.split_first()?;
        let mut reader = keys::KeyReader::new(rest);
        let mut counters = CaseCounters {
            next_event: reader.u64()?,
            ..CaseCounters::default()
        };
        match format {
            Self::FORMAT => {
                while !reader.is_empty() {
                    let purpose = reader.str()?.to_owned();
                    counters.mails.insert(purpose, reader.u64()?);
                }
            }
            Self::FORMAT_WITH_CLOCKS => {
                for _ in 0..reader.u64()? {
                    let purpose = reader.str()?.to_owned();
                    counters.mails.insert(purpose, reader.u64()?);
                }
                while !reader.is_empty() {
                    let deadline = reader.str()?.to_owned();
                    let count = reader.u64()?;
                    let mut slots = Vec::new();
                    for _ in 0..count {
                        let due = reader.time()?;
                        let step = usize::try_from(reader.u64()?).ok()?;
                        slots.push(TimerSlot { due, step });
                    }
                    counters.clocks.insert(deadline, slots);
                }
            }
            _ => return None,
        }
        Some(counters)
    }
}

impl CaseCounters {
    /// [`CaseCounters::decode`] of `case`'s stored record, naming it when
    /// it is corrupt.
    pub fn decode_stored(case: &CaseId, bytes: &[u8]) -> Result<Self, StoreError> {
        CaseCounters::decode(bytes).ok_or_else(|| {
            StoreError::corrupt(
                TreeId::Counters.name(),
                &keys::event_sequence_key(case),
                "not a case counter record",
            )
        })
    }
}

/// A counter record as a transaction holds it: loaded once, written at its
/// end when changed.
#[derive(Debug)]
struct HeldCounters {
    counters: CaseCounters,
    changed: bool,
}

/// An event appended in a transaction: the event, or its JSON when that was
/// encoded ahead of the transaction (`store::prerender`).
enum AppendedEvent {
    Value(Event),
    Encoded(Arc<str>),
}

/// All transactional trees inside one transaction.
pub(crate) struct Tx<'a> {
    trees: &'a [TransactionalTree],
    /// Events appended in this transaction, per case in the order appended;
    /// written as one record per case when the transaction's body is done.
    events: RefCell<BTreeMap<CaseId, Vec<AppendedEvent>>>,
    /// The counter records this transaction read or moved; those it moved
    /// are written once at its end.
    case_counters: RefCell<BTreeMap<CaseId, HeldCounters>>,
    /// The puts and removes of the trees [`TreeId::is_grouping_index`], in
    /// order, for the history cache to apply once the transaction committed.
    index_changes: RefCell<Vec<IndexChange>>,
    /// Mail this transaction added to the outbox due index less the mail
    /// it took away, for the store's count of pending mail.
    due_delta: Cell<i64>,
    /// The mails this transaction queued, by first due time: one due
    /// batch key each, written at its end.
    due_batches: RefCell<BTreeMap<DateTime<Utc>, Vec<String>>>,
    /// SHA-256 of each attachment this transaction referred a case to.
    attachment_refs: RefCell<Vec<String>>,
    /// Cases this transaction created. A new case's number was checked
    /// unused, and every per-case key (counter record, outbox entries) is
    /// written with or after its case and purged with it, so none can be
    /// stored yet: reading them from sled would only find nothing.
    fresh_cases: RefCell<HashSet<CaseId>>,
}

/// A put (with the sender, the value) or remove (`sender` = `None`) of an
/// index entry made in a transaction.
#[derive(Debug, Clone)]
pub(crate) struct IndexChange {
    pub tree: TreeId,
    pub key: sled::IVec,
    pub sender: Option<sled::IVec>,
}

impl<'a> Tx<'a> {
    pub fn new(trees: &'a [TransactionalTree]) -> Self {
        Tx {
            trees,
            events: RefCell::new(BTreeMap::new()),
            case_counters: RefCell::new(BTreeMap::new()),
            index_changes: RefCell::new(Vec::new()),
            due_delta: Cell::new(0),
            due_batches: RefCell::new(BTreeMap::new()),
            fresh_cases: RefCell::new(HashSet::new()),
            attachment_refs: RefCell::new(Vec::new()),
        }
    }

    /// Refers `case` to the stored attachment `sha256` with `record`.
    pub fn put_attachment_ref<T: Serialize>(
        &self,
        case: &CaseId,
        sha256: &str,
        record: &T,
    ) -> TxResult<()> {
        self.attachment_refs.borrow_mut().push(sha256.to_owned());
        self.put_json(
            TreeId::AttachmentRefs,
            keys::attachment_ref_key(case, sha256),
            record,
        )
    }

    /// The attachments this transaction referred cases to.
    pub fn take_attachment_refs(&self) -> Vec<String> {
        std::mem::take(&mut *self.attachment_refs.borrow_mut())
    }

    /// Records that this transaction created `case` under a number it
    /// checked unused.
    pub fn mark_fresh(&self, case: &CaseId) {
        self.fresh_cases.borrow_mut().insert(case.clone());
    }

    /// Whether this transaction created `case`.
    pub fn is_fresh(&self, case: &CaseId) -> bool {
        self.fresh_cases.borrow().contains(case)
    }

    /// The slots of one of a case's clocks (empty when it has none).
    pub fn clock_slots(&self, case: &CaseId, deadline: &str) -> TxResult<Vec<TimerSlot>> {
        self.read_case_counters(case, |counters| {
            counters.clocks.get(deadline).cloned().unwrap_or_default()
        })
    }

    /// Stores the slots of one of a case's clocks (an empty list is no
    /// clock); a list that does not change writes nothing.
    pub fn put_clock_slots(
        &self,
        case: &CaseId,
        deadline: &str,
        slots: &[TimerSlot],
    ) -> TxResult<()> {
        let stored = self.clock_slots(case, deadline)?;
        if stored == slots {
            return Ok(());
        }
        self.update_case_counters(case, |counters| {
            if slots.is_empty() {
                counters.clocks.remove(deadline);
            } else {
                counters.clocks.insert(deadline.to_owned(), slots.to_vec());
            }
        })
    }

    /// How much mail the due index gained (or lost) in this transaction.
    pub fn due_delta(&self) -> i64 {
        self.due_delta.get()
    }

    /// Counts mail that entered or left the due index without a key of its
    /// own changing.
    pub fn add_due_delta(&self, delta: i64) {
        self.due_delta.set(self.due_delta.get() + delta);
    }

    /// Puts a mail this transaction queued, due at `due`, in the due batch
    /// key [`Tx::write_due_batches`] writes.
    pub fn queue_in_due_batch(&self, due: DateTime<Utc>, outbox_id: &str) {
        self.due_batches
            .borrow_mut()
            .entry(due)
            .or_default()
            .push(outbox_id.to_owned());
        self.add_due_delta(1);
    }

    /// Writes one due index key per first due time of the mails this
    /// transaction queued, listing them (see `OutboxState::in_due_batch`).
    pub fn write_due_batches(&self) -> TxResult<()> {
        for (due, ids) in std::mem::take(&mut *self.due_batches.borrow_mut()) {
            let batch = self.tree(TreeId::OutboxDue).generate_id()?;
            self.put_json(
                TreeId::OutboxDue,
                keys::outbox_due_batch_key(due, batch),
                &ids,
            )?;
        }
        Ok(())
    }

    /// The index changes this transaction made, in order.
    pub fn take_index_changes(&self) -> Vec<IndexChange> {
        std::mem::take(&mut *self.index_changes.borrow_mut())
    }

    /// Changes a case's counter record (read once per transaction).
    pub fn update_case_counters<R>(
        &self,
        case: &CaseId,
        change: impl FnOnce(&mut CaseCounters) -> R,
    ) -> TxResult<R> {
        self.with_case_counters(case, |held| {
            held.changed = true;
            change(&mut held.counters)
        })
    }

    /// Reads a case's counter record (read once per transaction).
    pub fn read_case_counters<R>(
        &self,
        case: &CaseId,
        read: impl FnOnce(&CaseCounters) -> R,
    ) -> TxResult<R> {
        self.with_case_counters(case, |held| read(&held.counters))
    }

    fn with_case_counters<R>(
        &self,
        case: &CaseId,
        work: impl FnOnce(&mut HeldCounters) -> R,
    ) -> TxResult<R> {
        let mut records = self.case_counters.borrow_mut();
        let held = match records.entry(case.clone()) {
            Entry::Occupied(loaded) => loaded.into_mut(),
            Entry::Vacant(absent) => absent.insert(HeldCounters {
                counters: self.stored_case_counters(case)?,
                changed: false,
            }),
        };
        Ok(work(held))
    }

    fn stored_case_counters(&self, case: &CaseId) -> TxResult<CaseCounters> {
        if self.is_fresh(case) {
            return Ok(CaseCounters::default());
        }
        let key = keys::event_sequence_key(case);
        match self.get(TreeId::Counters, &key)? {
            None => Ok(CaseCounters::default()),
            Some(bytes) => match CaseCounters::decode(&bytes) {
                Some(counters) => Ok(counters),
                None => abort(StoreError::corrupt(
                    TreeId::Counters.name(),
                    &key,
                    "not a case counter record",
                )),
            },
        }
    }

    /// Writes the counter records this transaction changed.
    pub fn write_case_counters(&self) -> TxResult<()> {
        let held = std::mem::take(&mut *self.case_counters.borrow_mut());
        for (case, held) in held {
            if held.changed {
                self.put(
                    TreeId::Counters,
                    keys::event_sequence_key(&case),
                    held.counters.encode(),
                )?;
            }
        }
        Ok(())
    }

    /// Appends an event to a case's log (written by [`Tx::write_events`]).
    pub fn append_event(&self, case: &CaseId, event: &Event) {
        self.appended(case, AppendedEvent::Value(event.clone()));
    }

    /// Appends an event whose JSON was encoded ahead of the transaction.
    pub fn append_encoded_event(&self, case: &CaseId, json: Arc<str>) {
        self.appended(case, AppendedEvent::Encoded(json));
    }

    fn appended(&self, case: &CaseId, event: AppendedEvent) {
        self.events
            .borrow_mut()
            .entry(case.clone())
            .or_default()
            .push(event);
    }

    /// Writes the events appended in this transaction: one record per case,
    /// keyed by the sequence number of its first event, holding them all
    /// (the JSON array of the events, as `encode` writes a `Vec<Event>`).
    pub fn write_events(&self) -> TxResult<()> {
        let appended = std::mem::take(&mut *self.events.borrow_mut());
        for (case, events) in appended {
            let count = events.len() as u64;
            let first = self.update_case_counters(&case, |counters| {
                let first = counters.next_event;
                counters.next_event += count;
                first
            })?;
            let mut record = Vec::with_capacity(256 * events.len());
            record.push(b'[');
            for (index, event) in events.iter().enumerate() {
                if index > 0 {
                    record.push(b',');
                }
                match event {
                    AppendedEvent::Encoded(json) => record.extend_from_slice(json.as_bytes()),
                    AppendedEvent::Value(event) => {
                        let json = encode(TreeId::Events.name(), event).or_abort()?;
                        record.extend_from_slice(&json);
                    }
                }
            }
            record.push(b']');
            self.put(TreeId::Events, keys::event_key(&case, first), record)?;
        }
        Ok(())
    }

    pub fn tree(&self, id: TreeId) -> &TransactionalTree {
        &self.trees[id.index()]
    }

    pub fn get(&self, id: TreeId, key: &[u8]) -> TxResult<Option<sled::IVec>> {
        Ok(self.tree(id).get(key)?)
    }

    pub fn contains(&self, id: TreeId, key: &[u8]) -> TxResult<bool> {
        Ok(self.get(id, key)?.is_some())
    }

    pub fn put(&self, id: TreeId, key: Vec<u8>, value: impl Into<sled::IVec>) -> TxResult<()> {
        if !id.is_grouping_index() {
            let single_due = id == TreeId::OutboxDue && !keys::is_outbox_due_batch_key(&key);
            let old = self.tree(id).insert(key, value)?;
            if single_due && old.is_none() {
                self.due_delta.set(self.due_delta.get() + 1);
            }
            return Ok(());
        }
        let (key, sender) = (sled::IVec::from(key), value.into());
        self.tree(id).insert(key.clone(), sender.clone())?;
        self.index_changes.borrow_mut().push(IndexChange {
            tree: id,
            key,
            sender: Some(sender),
        });
        Ok(())
    }

    pub fn remove(&self, id: TreeId, key: Vec<u8>) -> TxResult<()> {
        if !id.is_grouping_index() {
            let single_due = id == TreeId::OutboxDue && !keys::is_outbox_due_batch_key(&key);
            let old = self.tree(id).remove(key)?;
            if single_due && old.is_some() {
                self.due_delta.set(self.due_delta.get() - 1);
            }
            return Ok(());
        }
        let key = sled::IVec::from(key);
        self.tree(id).remove(key.clone())?;
        self.index_changes.borrow_mut().push(IndexChange {
            tree: id,
            key,
            sender: None,
        });
        Ok(())
    }

    pub fn get_json<T: DeserializeOwned>(&self, id: TreeId, key: &[u8]) -> TxResult<Option<T>> {
        match self.get(id, key)? {
            Some(bytes) => decode(id, key, &bytes).map(Some).or_abort(),
            None => Ok(None),
        }
    }

    pub fn put_json<T: Serialize>(&self, id: TreeId, key: Vec<u8>, value: &T) -> TxResult<()> {
        let bytes = encode(id.name(), value).or_abort()?;
        self.put(id, key, bytes)
    }

    /// Reads a big-endian `u64` counter (0 when absent).
    pub fn counter(&self, tree: TreeId, key: &[u8]) -> TxResult<u64> {
        match self.get(tree, key)? {
            None => Ok(0),
            Some(bytes) => match <[u8; 8]>::try_from(bytes.as_ref()) {
                Ok(raw) => Ok(u64::from_be_bytes(raw)),
                Err(_) => abort(StoreError::corrupt(
                    tree.name(),
                    key,
                    "counter is not 8 bytes",
                )),
            },
        }
    }

    pub fn set_counter(&self, tree: TreeId, key: Vec<u8>, value: u64) -> TxResult<()> {
        self.put(tree, key, value.to_be_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_counters_round_trip_and_refuse_the_old_plain_counter() {
        let counters = CaseCounters {
            next_event: 17,
            mails: BTreeMap::from([("ack".to_owned(), 1), ("forward".to_owned(), 3)]),
            clocks: BTreeMap::new(),
        };
        assert_eq!(
            counters.encode()[0],
            CaseCounters::FORMAT,
            "schema 3's form"
        );
        assert_eq!(
            CaseCounters::decode(&counters.encode()),
            Some(counters.clone())
        );
        let at = |h| chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 3, 2, h, 0, 0).unwrap();
        let with_clocks = CaseCounters {
            clocks: BTreeMap::from([
                (
                    "调查反馈".to_owned(),
                    vec![
                        TimerSlot {
                            due: at(9),
                            step: 0,
                        },
                        TimerSlot {
                            due: at(17),
                            step: 1,
                        },
                    ],
                ),
                (
                    "forward".to_owned(),
                    vec![TimerSlot {
                        due: at(10),
                        step: 2,
                    }],
                ),
            ]),
            ..counters
        };
        let encoded = with_clocks.encode();
        assert_eq!(encoded[0], CaseCounters::FORMAT_WITH_CLOCKS);
        assert_eq!(CaseCounters::decode(&encoded), Some(with_clocks.clone()));
        let without_mails = CaseCounters {
            mails: BTreeMap::new(),
            ..with_clocks
        };
        assert_eq!(
            CaseCounters::decode(&without_mails.encode()),
            Some(without_mails.clone())
        );
        let mut cut = without_mails.encode();
        cut.pop();
        assert_eq!(CaseCounters::decode(&cut), None);
        assert_eq!(
            CaseCounters::decode(&CaseCounters::default().encode()),
            Some(CaseCounters::default())
        );
        assert_eq!(CaseCounters::decode(&17u64.to_be_bytes()), None);
        let mut truncated = CaseCounters {
            next_event: 1,
            mails: BTreeMap::from([("ack".to_owned(), 1)]),
            clocks: BTreeMap::new(),
        }
        .encode();
        truncated.pop();
        assert_eq!(CaseCounters::decode(&truncated), None);
    }
}

//! The sled trees of the store, and the transaction view that reads and writes them.

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::error::StoreError;
use super::keys;
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
    TimerClocks,
    Outbox,
    OutboxBodies,
    OutboxDue,
    Attachments,
    AttachmentRefs,
    Quarantine,
    QuarantineRaw,
    AckCounters,
}

impl TreeId {
    pub const ALL: [TreeId; 19] = [
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
        TreeId::TimerClocks,
        TreeId::Outbox,
        TreeId::OutboxBodies,
        TreeId::OutboxDue,
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
            TreeId::TimerClocks => "timer_clocks",
            TreeId::Outbox => "outbox",
            TreeId::OutboxBodies => "outbox_bodies",
            TreeId::OutboxDue => "outbox_due",
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

/// All transactional trees inside one transaction.
pub(crate) struct Tx<'a> {
    trees: &'a [TransactionalTree],
    /// Events appended in this transaction, per case in the order appended;
    /// written as one record per case when the transaction's body is done.
    events: RefCell<BTreeMap<CaseId, Vec<Event>>>,
}

impl<'a> Tx<'a> {
    pub fn new(trees: &'a [TransactionalTree]) -> Self {
        Tx {
            trees,
            events: RefCell::new(BTreeMap::new()),
        }
    }

    /// Appends an event to a case's log (written by [`Tx::write_events`]).
    pub fn append_event(&self, case: &CaseId, event: &Event) {
        self.events
            .borrow_mut()
            .entry(case.clone())
            .or_default()
            .push(event.clone());
    }

    /// Writes the events appended in this transaction: one record per case,
    /// keyed by the sequence number of its first event, holding them all.
    pub fn write_events(&self) -> TxResult<()> {
        let appended = std::mem::take(&mut *self.events.borrow_mut());
        for (case, events) in appended {
            let counter = keys::event_sequence_key(&case);
            let first = self.counter(TreeId::Counters, &counter)?;
            self.put_json(TreeId::Events, keys::event_key(&case, first), &events)?;
            self.set_counter(TreeId::Counters, counter, first + events.len() as u64)?;
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
        self.tree(id).insert(key, value)?;
        Ok(())
    }

    pub fn remove(&self, id: TreeId, key: Vec<u8>) -> TxResult<()> {
        self.tree(id).remove(key)?;
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

//! The store's error type: every failure names what it was about, so an operator can act on it.

use crate::case::CaseId;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened (missing permissions, locked by another process, …).
    #[error("cannot open the store at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: sled::Error,
    },
    /// Another process (or another open handle) holds the store.
    #[error(
        "the store at {path} is in use by another process (is the daemon running?); \
         only one process may open it at a time"
    )]
    Locked { path: String },
    /// The underlying storage failed (I/O error, corruption detected by sled).
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
    /// The store was written by a newer complaintd than this one.
    #[error(
        "the store has schema version {found}, but this complaintd supports at most version \
         {supported}; run a newer complaintd or restore a backup"
    )]
    SchemaTooNew { found: u32, supported: u32 },
    /// The store has a schema version for which no migration exists.
    #[error("no migration from schema version {from} to {to}")]
    MissingMigration { from: u32, to: u32 },
    /// A stored record could not be decoded.
    #[error("corrupt record in tree `{tree}` at key {key}: {reason}")]
    Corrupt {
        tree: &'static str,
        key: String,
        reason: String,
    },
    /// A value could not be encoded for storage.
    #[error("cannot encode {what}: {reason}")]
    Encode { what: String, reason: String },
    /// The case changed between the caller reading it and committing an update.
    #[error("case {0} changed since it was read; reload it and retry")]
    Conflict(CaseId),
    /// A change refers to a case the store does not have.
    #[error("unknown case {0}")]
    UnknownCase(CaseId),
    /// A batch was built wrongly (a caller bug); nothing was written.
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// A queued mail's renderer failed; nothing was written.
    #[error("rendering mail {outbox_id} failed: {reason}")]
    Render { outbox_id: String, reason: String },
    /// An outbox entry that does not exist.
    #[error("unknown outbox entry {0}")]
    UnknownOutbox(String),
    /// An outbox transition that the state machine does not allow.
    #[error("outbox entry {id} is {from}; it cannot become {to}")]
    OutboxTransition {
        id: String,
        from: &'static str,
        to: &'static str,
    },
    /// A store setting is unusable.
    #[error("invalid store setting: {0}")]
    Settings(String),
}

impl StoreError {
    pub(crate) fn corrupt(tree: &'static str, key: &[u8], reason: impl std::fmt::Display) -> Self {
        StoreError::Corrupt {
            tree,
            key: super::keys::printable(key),
            reason: reason.to_string(),
        }
    }
}

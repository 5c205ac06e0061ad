//! What classification may ask while a batch is being built: the store's
//! Message-ID index and cases, the policy's departments, and the messages of
//! the batch so far.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use crate::case::CaseId;
use crate::mail::classify::{KnownMessage, ThreadLookup};
use crate::store::{Store, StoreError};

/// What an earlier message of the batch became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BatchLink {
    /// A mail of a stored case.
    Case(CaseId),
    /// The first mail of a case created in this batch (no number yet).
    NewCase,
    /// Discarded or quarantined.
    NoCase,
}

/// [`ThreadLookup`] over the store, the policy and the pending batch.
///
/// The trait cannot fail, so the first storage error is kept and the
/// caller checks [`BatchLookup::take_error`] after classifying: a mail
/// classified on a failed read must not be committed.
pub(crate) struct BatchLookup<'a> {
    pub store: &'a Store,
    pub departments: &'a BTreeMap<String, Vec<String>>,
    pub batch: &'a HashMap<String, BatchLink>,
    pub error: RefCell<Option<StoreError>>,
}

impl BatchLookup<'_> {
    fn keep<T>(&self, result: Result<T, StoreError>, otherwise: T) -> T {
        result.unwrap_or_else(|error| {
            self.error.borrow_mut().get_or_insert(error);
            otherwise
        })
    }

    pub fn take_error(&self) -> Option<StoreError> {
        self.error.borrow_mut().take()
    }
}

impl ThreadLookup for BatchLookup<'_> {
    fn message(&self, message_id: &str) -> Option<KnownMessage> {
        if let Some(link) = self.batch.get(message_id) {
            let case = match link {
                BatchLink::Case(case) => Some(case.clone()),
                BatchLink::NewCase | BatchLink::NoCase => None,
            };
            return Some(KnownMessage::Ingested { case });
        }
        let record = self.keep(self.store.message(message_id), None)?;
        Some(KnownMessage::from(&record))
    }

    fn case_exists(&self, case: &CaseId) -> bool {
        self.keep(self.store.case_exists(case), false)
    }

    fn department_addresses(&self, department: &str) -> Option<Vec<String>> {
        self.departments.get(department).cloned()
    }

    fn departments_of(&self, address: &str) -> Vec<String> {
        self.departments
            .iter()
            .filter(|(_, addresses)| addresses.iter().any(|a| a.eq_ignore_ascii_case(address)))
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn department_names(&self) -> Vec<String> {
        self.departments.keys().cloned().collect()
    }
}

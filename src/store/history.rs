//! Aggregate questions about other cases ([`CaseHistory`]) answered from the
//! secondary indexes with range scans over `term, opening time`.
//!
//! Three views: the [`Store`] itself (for a case not stored yet),
//! [`StoreHistory`] (for a stored case, which it leaves out), and
//! [`BatchHistory`] (for a case evaluated while a batch is being built: the
//! batch's pending cases count as if committed).

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::batch::{category_of, CaseRef, IngestBatch, NewCaseKey};
use super::error::StoreError;
use super::keys::{self, KeyBuf};
use super::trees::TreeId;
use super::Store;
use crate::case::{subject_fingerprint, Case, CaseId};
use crate::rules::eval::CaseHistory;

/// One index hit: the case and its sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hit {
    pub case: CaseId,
    pub sender: String,
}

impl Store {
    /// Cases whose `term` in index `tree` was opened within `since..=until`.
    pub(crate) fn index_hits(
        &self,
        tree: TreeId,
        term: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<Hit>, StoreError> {
        if since > until {
            return Ok(Vec::new());
        }
        let prefix = KeyBuf::new().bytes(&keys::index_term(term)).build();
        let start = KeyBuf::new().tail(&prefix).time(since).build();
        let last_instant = KeyBuf::new().tail(&prefix).time(until).build();
        let index = self.tree(tree);
        let range = match keys::prefix_end(&last_instant) {
            Some(end) => index.range(start.as_slice()..end.as_slice()),
            None => index.range(start.as_slice()..),
        };
        let mut hits = Vec::new();
        for item in range {
            let (key, sender) = item?;
            let case = key
                .get(prefix.len() + keys::TIME_LEN..)
                .and_then(|rest| keys::KeyReader::new(rest).str())
                .ok_or_else(|| StoreError::corrupt(tree.name(), &key, "bad index key"))?;
            hits.push(Hit {
                case: CaseId(case.to_owned()),
                sender: String::from_utf8_lossy(&sender).into_owned(),
            });
        }
        Ok(hits)
    }

    /// A history view that leaves out `case` (the one being evaluated).
    pub fn history_excluding(&self, case: &CaseId) -> StoreHistory<'_> {
        StoreHistory {
            store: self,
            exclude: Some(case.clone()),
        }
    }
}

/// [`CaseHistory`] over the store, leaving out one case.
///
/// The trait has no error channel: a storage error is logged and the
/// answer counts what could be read.
#[derive(Debug, Clone)]
pub struct StoreHistory<'a> {
    store: &'a Store,
    exclude: Option<CaseId>,
}

fn hits_or_log(result: Result<Vec<Hit>, StoreError>, question: &str) -> Vec<Hit> {
    result.unwrap_or_else(|e| {
        tracing::error!(error = %e, question, "case history lookup failed; counting nothing");
        Vec::new()
    })
}

fn distinct_senders(hits: impl IntoIterator<Item = Hit>) -> Vec<String> {
    hits.into_iter()
        .map(|h| h.sender)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

impl StoreHistory<'_> {
    fn hits(
        &self,
        tree: TreeId,
        term: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<Hit> {
        let mut hits = hits_or_log(self.store.index_hits(tree, term, since, until), tree.name());
        if let Some(exclude) = &self.exclude {
            hits.retain(|h| h.case != *exclude);
        }
        hits
    }
}

impl CaseHistory for StoreHistory<'_> {
    fn cases_from_sender(&self, sender: &str, since: DateTime<Utc>, until: DateTime<Utc>) -> u64 {
        self.hits(TreeId::IdxSender, sender, since, until).len() as u64
    }

    fn distinct_senders_with_category(
        &self,
        category: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<String> {
        distinct_senders(self.hits(TreeId::IdxCategory, category, since, until))
    }

    fn distinct_senders_with_subject(
        &self,
        fingerprint: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<String> {
        distinct_senders(self.hits(TreeId::IdxSubject, fingerprint, since, until))
    }

    fn distinct_senders_with_tag(
        &self,
        tag: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<String> {
        distinct_senders(self.hits(TreeId::IdxTag, tag, since, until))
    }
}

/// The store as history for a case that is not stored yet: every stored case counts.
impl CaseHistory for Store {
    fn cases_from_sender(&self, sender: &str, since: DateTime<Utc>, until: DateTime<Utc>) -> u64 {
        self.whole_history().cases_from_sender(sender, since, until)
    }

    fn distinct_senders_with_category(
        &self,
        category: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<String> {
        self.whole_history()
            .distinct_senders_with_category(category, since, until)
    }

    fn distinct_senders_with_subject(
        &self,
        fingerprint: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<String> {
        self.whole_history()
            .distinct_senders_with_subject(fingerprint, since, until)
    }

    fn distinct_senders_with_tag(
        &self,
        tag: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<String> {
        self.whole_history()
            .distinct_senders_with_tag(tag, since, until)
    }
}

impl Store {
    fn whole_history(&self) -> StoreHistory<'_> {
        StoreHistory {
            store: self,
            exclude: None,
        }
    }
}

/// [`CaseHistory`] over the store plus the cases pending in a batch that is
/// being built, leaving out the case being evaluated. A pending update of a
/// stored case replaces the stored version.
#[derive(Debug)]
pub struct BatchHistory<'a> {
    store: &'a Store,
    /// The latest pending version of each case, new ones by handle.
    pending_new: Vec<(NewCaseKey, &'a Case)>,
    pending_updates: HashMap<&'a CaseId, &'a Case>,
    exclude: Option<CaseRef>,
}

impl IngestBatch {
    /// A history view for evaluating `exclude` (or a case not in the store
    /// nor in this batch yet, with `None`).
    pub fn history<'a>(&'a self, store: &'a Store, exclude: Option<&CaseRef>) -> BatchHistory<'a> {
        let mut pending_new = Vec::new();
        let mut pending_updates = HashMap::new();
        for changes in self.changes() {
            pending_new.extend(changes.new_cases());
            for case in changes.updated_cases() {
                pending_updates.insert(&case.id, case);
            }
        }
        BatchHistory {
            store,
            pending_new,
            pending_updates,
            exclude: exclude.cloned(),
        }
    }
}

impl BatchHistory<'_> {
    /// Senders of matching cases, one entry per case.
    fn senders(
        &self,
        tree: TreeId,
        term: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        matches: impl Fn(&Case) -> bool,
    ) -> Vec<String> {
        let excluded_id = match &self.exclude {
            Some(CaseRef::Existing(id)) => Some(id),
            _ => None,
        };
        let replaced: HashSet<&CaseId> = self.pending_updates.keys().copied().collect();
        let stored = hits_or_log(self.store.index_hits(tree, term, since, until), tree.name());
        let in_window = |c: &Case| c.created_at >= since && c.created_at <= until && matches(c);
        let mut senders: Vec<String> = stored
            .into_iter()
            .filter(|h| Some(&h.case) != excluded_id && !replaced.contains(&h.case))
            .map(|h| h.sender)
            .collect();
        senders.extend(
            self.pending_updates
                .values()
                .filter(|c| Some(&c.id) != excluded_id && in_window(c))
                .map(|c| c.sender.email.clone()),
        );
        senders.extend(
            self.pending_new
                .iter()
                .filter(|(key, c)| self.exclude != Some(CaseRef::New(*key)) && in_window(c))
                .map(|(_, c)| c.sender.email.clone()),
        );
        senders
    }
}

fn dedup(mut senders: Vec<String>) -> Vec<String> {
    senders.sort();
    senders.dedup();
    senders
}

impl CaseHistory for BatchHistory<'_> {
    fn cases_from_sender(&self, sender: &str, since: DateTime<Utc>, until: DateTime<Utc>) -> u64 {
        self.senders(TreeId::IdxSender, sender, since, until, |c| {
            c.sender.email == sender
        })
        .len() as u64
    }

    fn distinct_senders_with_category(
        &self,
        category: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<String> {
        dedup(
            self.senders(TreeId::IdxCategory, category, since, until, |c| {
                category_of(c) == Some(category)
            }),
        )
    }

    fn distinct_senders_with_subject(
        &self,
        fingerprint: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<String> {
        dedup(
            self.senders(TreeId::IdxSubject, fingerprint, since, until, |c| {
                subject_fingerprint(&c.subject) == fingerprint
            }),
        )
    }

    fn distinct_senders_with_tag(
        &self,
        tag: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<String> {
        dedup(self.senders(TreeId::IdxTag, tag, since, until, |c| c.tags.contains(tag)))
    }
}

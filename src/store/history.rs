//! Aggregate questions about other cases ([`CaseHistory`]) answered from the
//! secondary indexes with range scans over `term, opening time`.
//!
//! Three views: the [`Store`] itself (for a case not stored yet),
//! [`StoreHistory`] (for a stored case, which it leaves out), and
//! [`BatchHistory`] (for a case evaluated while a batch is being built: the
//! batch's pending cases count as if committed).
//!
//! Every message of a fetch asks the same distinct-sender questions over the
//! same window (it ends at the fetch's `now`), so a batch walks each stored
//! index range once and keeps a summary ([`HistoryMemo`]) that is valid
//! while the store has not committed since.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use super::batch::{category_of, CaseRef, IngestBatch, NewCaseKey};
use super::error::StoreError;
use super::keys::{self, KeyBuf};
use super::trees::TreeId;
use super::Store;
use crate::case::{subject_fingerprint, Case, CaseId};
use crate::rules::eval::{CaseHistory, SenderCount, SenderGroup};

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

/// The stored cases of one index term in one window, by sender.
#[derive(Debug, Default)]
struct SenderSummary {
    /// Distinct senders in byte order, with how many of their cases are in the window.
    senders: Vec<(String, u32)>,
    /// Each case's position in `senders`.
    cases: HashMap<CaseId, usize>,
}

impl SenderSummary {
    fn of(hits: Vec<Hit>) -> SenderSummary {
        let mut by_sender: std::collections::BTreeMap<String, Vec<CaseId>> = Default::default();
        for hit in hits {
            by_sender.entry(hit.sender).or_default().push(hit.case);
        }
        let mut summary = SenderSummary::default();
        for (position, (sender, cases)) in by_sender.into_iter().enumerate() {
            let count = u32::try_from(cases.len()).unwrap_or(u32::MAX);
            summary
                .cases
                .extend(cases.into_iter().map(|case| (case, position)));
            summary.senders.push((sender, count));
        }
        summary
    }
}

/// Which stored index range a summary answers for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct MemoKey {
    tree: TreeId,
    term: String,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
}

/// Summaries of stored index ranges asked about while a batch is built, each
/// with the store generation it was read at; a commit in between makes it stale.
#[derive(Default)]
pub(crate) struct HistoryMemo {
    summaries: Mutex<HashMap<MemoKey, (u64, Arc<SenderSummary>)>>,
}

impl HistoryMemo {
    fn summary(&self, store: &Store, key: MemoKey) -> Arc<SenderSummary> {
        let generation = store.generation();
        let remembered = self
            .summaries
            .lock()
            .ok()
            .and_then(|memo| memo.get(&key).cloned());
        if let Some((seen_at, summary)) = remembered {
            if seen_at == generation {
                return summary;
            }
        }
        let result = store.index_hits(key.tree, &key.term, key.since, key.until);
        let failed = result.is_err();
        let summary = Arc::new(SenderSummary::of(hits_or_log(result, key.tree.name())));
        // A failed read is not remembered: the next question tries again.
        if !failed {
            if let Ok(mut memo) = self.summaries.lock() {
                memo.insert(key, (generation, summary.clone()));
            }
        }
        summary
    }
}

/// A copy of a batch starts without summaries; they are only a cache.
impl Clone for HistoryMemo {
    fn clone(&self) -> Self {
        HistoryMemo::default()
    }
}

impl std::fmt::Debug for HistoryMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = self.summaries.lock().map_or(0, |memo| memo.len());
        f.debug_struct("HistoryMemo")
            .field("entries", &entries)
            .finish()
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
    memo: &'a HistoryMemo,
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
            memo: &self.memo,
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
        let excluded_id = self.excluded_id();
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

/// A stored index range as a batch sees it: the summary, and how many of
/// each sender's cases the batch leaves out (the one evaluated, those it
/// replaces with pending versions).
struct StoredView {
    summary: Arc<SenderSummary>,
    left_out: HashMap<usize, u32>,
}

impl StoredView {
    /// Whether the sender at `position` still has a case that counts.
    fn counts(&self, position: usize) -> bool {
        self.summary.senders[position].1 > self.left_out.get(&position).copied().unwrap_or(0)
    }

    /// Whether `sender` has a stored case that counts.
    fn counts_sender(&self, sender: &str) -> bool {
        self.summary
            .senders
            .binary_search_by(|(s, _)| s.as_str().cmp(sender))
            .is_ok_and(|position| self.counts(position))
    }
}

impl<'a> BatchHistory<'a> {
    fn excluded_id(&self) -> Option<&CaseId> {
        match &self.exclude {
            Some(CaseRef::Existing(id)) => Some(id),
            _ => None,
        }
    }

    fn stored_view(
        &self,
        tree: TreeId,
        term: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> StoredView {
        let key = MemoKey {
            tree,
            term: term.to_owned(),
            since,
            until,
        };
        let summary = self.memo.summary(self.store, key);
        let mut left_out: HashMap<usize, u32> = HashMap::new();
        // A set: the case evaluated may also be one the batch updates, and
        // it leaves the stored range once.
        let cases: HashSet<&CaseId> = self
            .excluded_id()
            .into_iter()
            .chain(self.pending_updates.keys().copied())
            .collect();
        for case in cases {
            if let Some(&position) = summary.cases.get(case) {
                *left_out.entry(position).or_default() += 1;
            }
        }
        StoredView { summary, left_out }
    }

    /// Senders of the pending cases (new and updated, less the one
    /// evaluated) that match within the window, one per case.
    fn pending_senders<'s>(
        &'s self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        matches: impl Fn(&Case) -> bool + 's,
    ) -> impl Iterator<Item = &'a str> + 's {
        let in_window =
            move |c: &Case| c.created_at >= since && c.created_at <= until && matches(c);
        let excluded_id = self.excluded_id();
        self.pending_updates
            .values()
            .copied()
            .filter(move |c| Some(&c.id) != excluded_id)
            .map(|c| (None, c))
            .chain(self.pending_new.iter().map(|(key, c)| (Some(*key), *c)))
            .filter(move |(key, c)| {
                key.is_none_or(|key| self.exclude != Some(CaseRef::New(key))) && in_window(c)
            })
            .map(|(_, c)| c.sender.email.as_str())
    }

    /// Distinct senders of matching cases in byte order: the stored ones from
    /// the batch's summary of the index range, less the cases left out, plus
    /// the pending ones.
    fn distinct_senders(
        &self,
        tree: TreeId,
        term: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        matches: impl Fn(&Case) -> bool,
    ) -> Vec<String> {
        if since > until {
            return Vec::new();
        }
        let stored = self.stored_view(tree, term, since, until);
        let mut senders: Vec<String> = stored
            .summary
            .senders
            .iter()
            .enumerate()
            .filter(|(position, _)| stored.counts(*position))
            .map(|(_, (sender, _))| sender.clone())
            .collect();
        let mut pending: Vec<&str> = self
            .pending_senders(since, until, matches)
            .filter(|sender| !stored.counts_sender(sender))
            .collect();
        if !pending.is_empty() {
            pending.sort_unstable();
            pending.dedup();
            senders.extend(pending.into_iter().map(str::to_owned));
            senders.sort_unstable();
        }
        senders
    }

    /// The same answer counted, without copying a sender: the stored
    /// senders less those left with no case, plus pending senders not
    /// among them.
    fn count_distinct(
        &self,
        tree: TreeId,
        term: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        matches: impl Fn(&Case) -> bool,
        sender: &str,
    ) -> SenderCount {
        if since > until {
            return SenderCount {
                senders: 0,
                includes: false,
            };
        }
        let stored = self.stored_view(tree, term, since, until);
        let gone = stored
            .left_out
            .keys()
            .filter(|position| !stored.counts(**position))
            .count();
        let extra: HashSet<&str> = self
            .pending_senders(since, until, matches)
            .filter(|pending| !stored.counts_sender(pending))
            .collect();
        SenderCount {
            senders: (stored.summary.senders.len() - gone + extra.len()) as u64,
            includes: stored.counts_sender(sender) || extra.contains(sender),
        }
    }
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
        self.distinct_senders(TreeId::IdxCategory, category, since, until, |c| {
            category_of(c) == Some(category)
        })
    }

    fn distinct_senders_with_subject(
        &self,
        fingerprint: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<String> {
        self.distinct_senders(TreeId::IdxSubject, fingerprint, since, until, |c| {
            subject_fingerprint(&c.subject) == fingerprint
        })
    }

    fn distinct_senders_with_tag(
        &self,
        tag: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<String> {
        self.distinct_senders(TreeId::IdxTag, tag, since, until, |c| c.tags.contains(tag))
    }

    fn count_distinct_senders(
        &self,
        group: SenderGroup<'_>,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        sender: &str,
    ) -> SenderCount {
        match group {
            SenderGroup::Category(category) => self.count_distinct(
                TreeId::IdxCategory,
                category,
                since,
                until,
                |c| category_of(c) == Some(category),
                sender,
            ),
            SenderGroup::Subject(fingerprint) => self.count_distinct(
                TreeId::IdxSubject,
                fingerprint,
                since,
                until,
                |c| subject_fingerprint(&c.subject) == fingerprint,
                sender,
            ),
            SenderGroup::Tag(tag) => self.count_distinct(
                TreeId::IdxTag,
                tag,
                since,
                until,
                |c| c.tags.contains(tag),
                sender,
            ),
        }
    }
}

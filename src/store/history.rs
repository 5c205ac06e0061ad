//! Aggregate questions about other cases ([`CaseHistory`]) answered from the
//! secondary indexes with range scans over `term, opening time`.
//!
//! Three views: the [`Store`] itself (for a case not stored yet),
//! [`StoreHistory`] (for a stored case, which it leaves out), and
//! [`BatchHistory`] (for a case evaluated while a batch is being built: the
//! batch's pending cases count as if committed).
//!
//! Every message of a fetch asks the same distinct-sender questions over a
//! window that ends at the fetch's `now`, and the next fetch asks over
//! nearly the same window again. So the store keeps a [`HistoryCache`]: for
//! each index term asked about, every index entry from some time `lo` on,
//! with per-sender case counts. The commits themselves keep it in step with
//! sled: a transaction records the index entries it puts and removes
//! ([`Tx`](super::trees::Tx)), and [`Store::transact`] applies them after
//! the transaction committed, in commit order. A window is walked in sled
//! once, when a term is first asked about (or asked about further back).
//!
//! The batch's pending part is indexed the same way: [`IngestBatch::push`]
//! files each new case under its terms ([`PendingCases`]), so a question
//! reads the pending cases of its one term, not every case of the batch.

use std::collections::hash_map::Entry as HashEntry;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Duration, Utc};
use smallvec::SmallVec;

use super::batch::{category_of, CaseRef, ChangeSet, IngestBatch, NewCaseKey};
use super::error::StoreError;
use super::keys::{self, KeyBuf};
use super::trees::{IndexChange, TreeId};
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

/// How long a term nobody asks about stays cached, in the `now`s (window
/// ends) of the questions asked: an hour of questions about other terms.
const IDLE_TERM: Duration = Duration::hours(1);

/// How far the newest window end moves between two looks for idle terms.
const SWEEP_EVERY: Duration = Duration::minutes(1);

/// The cached trees, by slot: those the distinct-sender questions group by.
fn cache_slot(tree: TreeId) -> Option<usize> {
    match tree {
        TreeId::IdxCategory => Some(0),
        TreeId::IdxSubject => Some(1),
        TreeId::IdxTag => Some(2),
        _ => None,
    }
}

/// An index entry read from sled: opening time, case, sender.
type Entry = (DateTime<Utc>, CaseId, String);

/// Index windows kept across batches and commits (see the module comment).
///
/// Lock order: `writer`, then `state`. A commit holds `writer` across its
/// sled transaction and the application of its index changes, so changes
/// are applied in commit order and a question that holds `writer` while it
/// reads sled sees exactly what the cache has applied. A question answered
/// from the cache takes `state` only.
#[derive(Default)]
pub(crate) struct HistoryCache {
    writer: Mutex<()>,
    state: Mutex<CacheState>,
}

impl std::fmt::Debug for HistoryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state();
        f.debug_struct("HistoryCache")
            .field("terms", &state.term_count())
            .field("entries", &state.entry_count())
            .finish()
    }
}

impl HistoryCache {
    /// Taken by [`Store::transact`] for the whole commit.
    pub(crate) fn lock_writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached windows. A panic while they were held may have left them
    /// half changed, so a poisoned lock starts over with nothing cached.
    fn state(&self) -> MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|poisoned| {
            let mut state = poisoned.into_inner();
            *state = CacheState::default();
            self.state.clear_poison();
            state
        })
    }

    /// Applies the index changes of a committed transaction, in the order
    /// it made them. The caller holds the writer lock.
    pub(crate) fn apply(&self, changes: &[IndexChange]) {
        if changes.is_empty() {
            return;
        }
        let mut state = self.state();
        for change in changes {
            state.apply(change);
        }
    }

    /// Forgets every window: for a write whose index changes cannot be
    /// applied (a transaction whose outcome sled could not report, a write
    /// of the index trees outside [`Store::transact`]).
    pub(crate) fn clear(&self) {
        *self.state() = CacheState::default();
    }

    /// How many terms and index entries are cached.
    #[cfg(test)]
    fn size(&self) -> (usize, usize) {
        let state = self.state();
        (state.term_count(), state.entry_count())
    }
}

#[derive(Default)]
struct CacheState {
    /// Per cached tree, the window of each term by its stored bytes
    /// ([`keys::index_term`]).
    terms: [HashMap<Vec<u8>, TermWindow>; 3],
    /// The newest window end asked about, and where the last look for idle
    /// terms was.
    newest_until: Option<DateTime<Utc>>,
    swept_at: Option<DateTime<Utc>>,
}

impl CacheState {
    fn term_count(&self) -> usize {
        self.terms.iter().map(HashMap::len).sum()
    }

    fn entry_count(&self) -> usize {
        self.terms
            .iter()
            .flat_map(HashMap::values)
            .map(|window| window.entries.len())
            .sum()
    }

    fn apply(&mut self, change: &IndexChange) {
        let Some(slot) = cache_slot(change.tree) else {
            return;
        };
        let mut key = keys::KeyReader::new(&change.key);
        let Some(term) = key.bytes() else {
            // Not an index key: nothing tells which window it belongs to.
            self.terms[slot].clear();
            return;
        };
        let Some(window) = self.terms[slot].get_mut(term) else {
            return;
        };
        let (Some(at), Some(case)) = (key.time(), key.str()) else {
            self.terms[slot].remove(term);
            return;
        };
        if at < window.lo {
            return;
        }
        let case = CaseId(case.to_owned());
        match &change.sender {
            Some(sender) => window.insert(at, case, &String::from_utf8_lossy(sender)),
            None => window.remove(at, &case),
        }
    }

    /// Drops the terms not asked about while the window end moved an hour
    /// (looked for once a minute of window ends), except the one being asked.
    fn sweep(&mut self, until: DateTime<Utc>, asked: (usize, &[u8])) {
        if self.newest_until.is_some_and(|newest| newest >= until) {
            return;
        }
        self.newest_until = Some(until);
        if self
            .swept_at
            .is_some_and(|swept| until.signed_duration_since(swept) < SWEEP_EVERY)
        {
            return;
        }
        self.swept_at = Some(until);
        let Some(cutoff) = until.checked_sub_signed(IDLE_TERM) else {
            return;
        };
        for (slot, terms) in self.terms.iter_mut().enumerate() {
            terms.retain(|term, window| {
                window.round_until >= cutoff || (slot, term.as_slice()) == asked
            });
        }
    }
}

/// A case's entries in one term's window: opening time and sender.
type CaseEntries = SmallVec<[(DateTime<Utc>, Arc<str>); 1]>;

/// The cached index entries of one term: all those opened at or after `lo`.
struct TermWindow {
    lo: DateTime<Utc>,
    entries: BTreeMap<(DateTime<Utc>, CaseId), Arc<str>>,
    /// Each case's entries (one, unless a case was stored with two opening
    /// times), to find a case left out of an answer without a scan.
    opened: HashMap<CaseId, CaseEntries>,
    /// How many entries each sender has; no sender with none.
    senders: HashMap<Arc<str>, u32>,
    /// The newest window end asked about, and the earliest start asked with
    /// it: entries before the earliest start of the previous end are
    /// evicted when a newer end is asked, so that two windows of different
    /// lengths over the same term do not evict each other's entries.
    round_until: DateTime<Utc>,
    round_since: DateTime<Utc>,
}

/// The smallest key at `at`: `(at, "")`.
fn first_key_at(at: DateTime<Utc>) -> (DateTime<Utc>, CaseId) {
    (at, CaseId(String::new()))
}

impl TermWindow {
    fn filled(since: DateTime<Utc>, until: DateTime<Utc>, entries: Vec<Entry>) -> TermWindow {
        let mut window = TermWindow {
            lo: since,
            entries: BTreeMap::new(),
            opened: HashMap::new(),
            senders: HashMap::new(),
            round_until: until,
            round_since: since,
        };
        for (at, case, sender) in entries {
            window.insert(at, case, &sender);
        }
        window
    }

    /// Adds the entries opened in `[since, lo)`, read from sled.
    fn extend_back(&mut self, since: DateTime<Utc>, entries: Vec<Entry>) {
        for (at, case, sender) in entries {
            self.insert(at, case, &sender);
        }
        self.lo = self.lo.min(since);
    }

    fn count_sender(&mut self, sender: &str) -> Arc<str> {
        if let Some((shared, count)) = self.senders.get_key_value(sender) {
            let shared = shared.clone();
            let count = count + 1;
            self.senders.insert(shared.clone(), count);
            return shared;
        }
        let shared: Arc<str> = Arc::from(sender);
        self.senders.insert(shared.clone(), 1);
        shared
    }

    fn uncount_sender(&mut self, sender: &str) {
        if let Some(count) = self.senders.get_mut(sender) {
            *count -= 1;
            if *count == 0 {
                self.senders.remove(sender);
            }
        }
    }

    fn insert(&mut self, at: DateTime<Utc>, case: CaseId, sender: &str) {
        let key = (at, case);
        if let Some(old) = self.entries.get(&key) {
            if **old == *sender {
                return;
            }
            self.remove(at, &key.1);
        }
        let sender = self.count_sender(sender);
        self.opened
            .entry(key.1.clone())
            .or_default()
            .push((at, sender.clone()));
        self.entries.insert(key, sender);
    }

    fn forget_opened(&mut self, at: DateTime<Utc>, case: &CaseId) {
        if let Some(times) = self.opened.get_mut(case) {
            times.retain(|(t, _)| *t != at);
            if times.is_empty() {
                self.opened.remove(case);
            }
        }
    }

    fn remove(&mut self, at: DateTime<Utc>, case: &CaseId) {
        if let Some(sender) = self.entries.remove(&(at, case.clone())) {
            self.uncount_sender(&sender);
            self.forget_opened(at, case);
        }
    }

    /// Drops the entries opened before `from`.
    fn evict_before(&mut self, from: DateTime<Utc>) {
        if from <= self.lo {
            return;
        }
        let kept = self.entries.split_off(&first_key_at(from));
        let evicted = std::mem::replace(&mut self.entries, kept);
        for ((at, case), sender) in evicted {
            self.uncount_sender(&sender);
            self.forget_opened(at, &case);
        }
        self.lo = from;
    }

    /// Notes a question over `[since, until]` (with `lo <= since`) and
    /// evicts what the previous window end's questions no longer need.
    fn asked(&mut self, since: DateTime<Utc>, until: DateTime<Utc>) {
        if until > self.round_until {
            self.evict_before(self.round_since.min(since));
            self.round_until = until;
            self.round_since = since;
        } else {
            self.round_since = self.round_since.min(since);
        }
    }

    /// The window as one question sees it: the cached entries less those
    /// outside `[since, until]` and those of the cases `left_out`.
    fn counts<'w>(
        &'w self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        left_out: &HashSet<&CaseId>,
    ) -> WindowCounts<'w> {
        let mut left: HashMap<&'w str, u32> = HashMap::new();
        let mut leave = |sender: &'w Arc<str>| *left.entry(&**sender).or_default() += 1;
        for sender in self.entries.range(..first_key_at(since)).map(|(_, s)| s) {
            leave(sender);
        }
        if let Some(after) = until.checked_add_signed(Duration::nanoseconds(1)) {
            for sender in self.entries.range(first_key_at(after)..).map(|(_, s)| s) {
                leave(sender);
            }
        }
        for case in left_out {
            for (at, sender) in self.opened.get(*case).into_iter().flatten() {
                if since <= *at && *at <= until {
                    leave(sender);
                }
            }
        }
        WindowCounts {
            senders: &self.senders,
            left,
        }
    }
}

/// The distinct senders of a window as one question sees it.
struct WindowCounts<'w> {
    senders: &'w HashMap<Arc<str>, u32>,
    /// How many of each sender's cached entries do not count.
    left: HashMap<&'w str, u32>,
}

impl WindowCounts<'_> {
    fn counts_sender(&self, sender: &str) -> bool {
        self.senders
            .get(sender)
            .is_some_and(|count| *count > self.left.get(sender).copied().unwrap_or(0))
    }

    fn len(&self) -> usize {
        let gone = self
            .left
            .iter()
            .filter(|(sender, left)| self.senders.get(**sender) == Some(*left))
            .count();
        self.senders.len() - gone
    }

    /// The senders that count, in byte order.
    fn list(&self) -> Vec<String> {
        let mut senders: Vec<String> = self
            .senders
            .keys()
            .filter(|sender| self.counts_sender(sender))
            .map(|sender| sender.to_string())
            .collect();
        senders.sort_unstable();
        senders
    }
}

impl Store {
    /// The index entries of `term` (stored bytes) opened in `[since, before)`
    /// (`before` = `None`: from `since` on).
    fn index_entries_from(
        &self,
        tree: TreeId,
        term: &[u8],
        since: DateTime<Utc>,
        before: Option<DateTime<Utc>>,
    ) -> Result<Vec<Entry>, StoreError> {
        let prefix = KeyBuf::new().bytes(term).build();
        let start = KeyBuf::new().tail(&prefix).time(since).build();
        let end = match before {
            Some(before) => Some(KeyBuf::new().tail(&prefix).time(before).build()),
            None => keys::prefix_end(&prefix),
        };
        let index = self.tree(tree);
        let range = match end {
            Some(end) => index.range(start.as_slice()..end.as_slice()),
            None => index.range(start.as_slice()..),
        };
        let mut entries = Vec::new();
        for item in range {
            let (key, sender) = item?;
            let mut rest = keys::KeyReader::new(key.get(prefix.len()..).unwrap_or_default());
            let (Some(at), Some(case)) = (rest.time(), rest.str()) else {
                return Err(StoreError::corrupt(tree.name(), &key, "bad index key"));
            };
            entries.push((
                at,
                CaseId(case.to_owned()),
                String::from_utf8_lossy(&sender).into_owned(),
            ));
        }
        Ok(entries)
    }

    /// Runs `answer` on the cached window of `term` in `tree`, which holds
    /// every entry opened at or after `since`: read from sled first when the
    /// term is not cached or its window starts later.
    fn with_term_window<R>(
        &self,
        tree: TreeId,
        term: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        answer: impl FnOnce(&TermWindow) -> R,
    ) -> Result<R, StoreError> {
        let term = keys::index_term(term);
        let Some(slot) = cache_slot(tree) else {
            let entries = self.index_entries_from(tree, &term, since, None)?;
            return Ok(answer(&TermWindow::filled(since, until, entries)));
        };
        let cache = &self.history;
        {
            let mut state = cache.state();
            state.sweep(until, (slot, &term));
            if let Some(window) = state.terms[slot].get_mut(&term) {
                if window.lo <= since {
                    window.asked(since, until);
                    return Ok(answer(window));
                }
            }
        }
        // No commit may come between the read and the cache.
        let _writer = cache.lock_writer();
        let mut state = cache.state();
        let window = match state.terms[slot].entry(term.clone()) {
            HashEntry::Occupied(cached) => {
                let window = cached.into_mut();
                if since < window.lo {
                    let older = self.index_entries_from(tree, &term, since, Some(window.lo))?;
                    window.extend_back(since, older);
                }
                window
            }
            HashEntry::Vacant(absent) => {
                let entries = self.index_entries_from(tree, &term, since, None)?;
                absent.insert(TermWindow::filled(since, until, entries))
            }
        };
        window.asked(since, until);
        Ok(answer(window))
    }
}

/// The history groups a pending new case is indexed under.
#[derive(Debug, Clone, Copy)]
enum PendingGroup {
    Sender,
    Category,
    Subject,
    Tag,
}

impl PendingGroup {
    /// Where [`PendingCases::terms`] keeps the group's terms (the sender
    /// group is kept by sender number, the subject group on its own).
    fn term_slot(self) -> Option<usize> {
        match self {
            PendingGroup::Sender | PendingGroup::Subject => None,
            PendingGroup::Category => Some(0),
            PendingGroup::Tag => Some(1),
        }
    }

    /// The store's index of the same group.
    fn tree(self) -> TreeId {
        match self {
            PendingGroup::Sender => TreeId::IdxSender,
            PendingGroup::Category => TreeId::IdxCategory,
            PendingGroup::Subject => TreeId::IdxSubject,
            PendingGroup::Tag => TreeId::IdxTag,
        }
    }
}

/// A pending new case under one term: opening time, sender (its number in
/// [`PendingCases::senders`]) and handle.
#[derive(Debug, Clone, Copy)]
struct PendingEntry {
    at: DateTime<Utc>,
    sender: usize,
    case: NewCaseKey,
}

/// The new cases of a batch being built, by history group and term, in
/// push order, and the positions of the change sets that update stored
/// cases. [`IngestBatch::push`] keeps it, so a history question reads the
/// pending cases of its one term instead of walking the whole batch.
#[derive(Debug, Default)]
pub(crate) struct PendingCases {
    /// The distinct senders of the new cases, numbered in the order first
    /// seen, so a question tells senders apart without hashing each case's.
    senders: Vec<Arc<str>>,
    numbers: HashMap<Arc<str>, usize>,
    /// The new cases of each sender, by number: the sender group's terms.
    by_sender: Vec<Vec<PendingEntry>>,
    /// Each term's new cases in the category and the tag group.
    terms: [HashMap<String, Vec<PendingEntry>>; 2],
    /// The subject group, indexed when a question first asks about it:
    /// a fingerprint costs more than all other terms of a case, and most
    /// policies ask no subject question.
    subjects: Mutex<SubjectTerms>,
    updating: Vec<usize>,
}

impl Clone for PendingCases {
    fn clone(&self) -> Self {
        PendingCases {
            senders: self.senders.clone(),
            numbers: self.numbers.clone(),
            by_sender: self.by_sender.clone(),
            terms: self.terms.clone(),
            subjects: Mutex::new(self.subjects().clone()),
            updating: self.updating.clone(),
        }
    }
}

/// The subject group's terms over the new cases of the first `indexed`
/// change sets of the batch.
#[derive(Debug, Clone, Default)]
struct SubjectTerms {
    indexed: usize,
    terms: HashMap<String, Vec<PendingEntry>>,
}

impl SubjectTerms {
    /// Indexes the new cases of the change sets not indexed yet. Unlike the
    /// store's index, the empty fingerprint is kept: a question about it
    /// counts the pending cases without a subject.
    fn catch_up(&mut self, changes: &[ChangeSet], numbers: &HashMap<Arc<str>, usize>) {
        for change_set in changes.get(self.indexed..).unwrap_or_default() {
            for (case, draft) in change_set.new_cases() {
                // Every new case's sender was numbered when it was pushed.
                let Some(sender) = numbers.get(draft.sender.email.as_str()).copied() else {
                    continue;
                };
                let entry = PendingEntry {
                    at: draft.created_at,
                    sender,
                    case,
                };
                let fingerprint = subject_fingerprint(&draft.subject);
                match self.terms.get_mut(&fingerprint) {
                    Some(cases) => cases.push(entry),
                    None => {
                        self.terms.insert(fingerprint, vec![entry]);
                    }
                }
            }
        }
        self.indexed = self.indexed.max(changes.len());
    }
}

impl PendingCases {
    /// Indexes the change set pushed at `position` of the batch.
    pub(super) fn add(&mut self, position: usize, changes: &ChangeSet) {
        for (case, draft) in changes.new_cases() {
            let entry = PendingEntry {
                at: draft.created_at,
                sender: self.number(&draft.sender.email),
                case,
            };
            if let Some(cases) = self.by_sender.get_mut(entry.sender) {
                cases.push(entry);
            }
            if let Some(category) = category_of(draft) {
                self.push(PendingGroup::Category, category, entry);
            }
            for tag in &draft.tags {
                self.push(PendingGroup::Tag, tag, entry);
            }
        }
        if changes.updated_cases().next().is_some() {
            self.updating.push(position);
        }
    }

    /// The number of `sender`, given one if it has none yet.
    fn number(&mut self, sender: &str) -> usize {
        if let Some(number) = self.numbers.get(sender) {
            return *number;
        }
        let number = self.senders.len();
        let shared: Arc<str> = Arc::from(sender);
        self.senders.push(shared.clone());
        self.numbers.insert(shared, number);
        self.by_sender.push(Vec::new());
        number
    }

    fn push(&mut self, group: PendingGroup, term: &str, entry: PendingEntry) {
        let Some(terms) = group.term_slot().and_then(|slot| self.terms.get_mut(slot)) else {
            return;
        };
        match terms.get_mut(term) {
            Some(cases) => cases.push(entry),
            None => {
                terms.insert(term.to_owned(), vec![entry]);
            }
        }
    }

    /// The subject group. A panic while it was held may have left it half
    /// indexed, so a poisoned lock starts it over.
    fn subjects(&self) -> MutexGuard<'_, SubjectTerms> {
        self.subjects.lock().unwrap_or_else(|poisoned| {
            let mut subjects = poisoned.into_inner();
            *subjects = SubjectTerms::default();
            self.subjects.clear_poison();
            subjects
        })
    }

    /// Runs `answer` on the new cases under `term` of `group`, in push
    /// order; `changes` are the batch's change sets, for the subject group.
    fn with_entries<R>(
        &self,
        changes: &[ChangeSet],
        group: PendingGroup,
        term: &str,
        answer: impl FnOnce(&[PendingEntry]) -> R,
    ) -> R {
        let cases = match group {
            PendingGroup::Subject => {
                let mut subjects = self.subjects();
                subjects.catch_up(changes, &self.numbers);
                return answer(subjects.terms.get(term).map_or(&[], Vec::as_slice));
            }
            PendingGroup::Sender => self
                .numbers
                .get(term)
                .and_then(|number| self.by_sender.get(*number)),
            PendingGroup::Category | PendingGroup::Tag => group
                .term_slot()
                .and_then(|slot| self.terms.get(slot))
                .and_then(|terms| terms.get(term)),
        };
        answer(cases.map_or(&[], Vec::as_slice))
    }
}

/// The distinct senders of the pending cases a question counts.
struct PendingSenders<'a> {
    /// Each once, in no particular order.
    list: Vec<&'a str>,
    /// The batch's new cases, and which of their senders (by number) count.
    pending: &'a PendingCases,
    counted: Vec<bool>,
    /// Senders of pending updates that are not among the counted numbers.
    updated: HashSet<&'a str>,
}

impl PendingSenders<'_> {
    fn contains(&self, sender: &str) -> bool {
        let numbered = self
            .pending
            .numbers
            .get(sender)
            .is_some_and(|number| self.counted.get(*number).copied().unwrap_or(false));
        numbered || self.updated.contains(sender)
    }
}

/// [`CaseHistory`] over the store plus the cases pending in a batch that is
/// being built, leaving out the case being evaluated. A pending update of a
/// stored case replaces the stored version.
#[derive(Debug)]
pub struct BatchHistory<'a> {
    store: &'a Store,
    /// The batch's new cases, by term, and its change sets.
    pending_new: &'a PendingCases,
    changes: &'a [ChangeSet],
    /// The latest pending version of each updated stored case.
    pending_updates: HashMap<&'a CaseId, &'a Case>,
    exclude: Option<CaseRef>,
}

impl IngestBatch {
    /// A history view for evaluating `exclude` (or a case not in the store
    /// nor in this batch yet, with `None`).
    pub fn history<'a>(&'a self, store: &'a Store, exclude: Option<&CaseRef>) -> BatchHistory<'a> {
        let mut pending_updates = HashMap::new();
        let updating = self
            .pending
            .updating
            .iter()
            .filter_map(|position| self.changes.get(*position));
        for changes in updating {
            for case in changes.updated_cases() {
                pending_updates.insert(&case.id, case);
            }
        }
        BatchHistory {
            store,
            pending_new: &self.pending,
            changes: &self.changes,
            pending_updates,
            exclude: exclude.cloned(),
        }
    }
}

impl<'a> BatchHistory<'a> {
    fn excluded_id(&self) -> Option<&CaseId> {
        match &self.exclude {
            Some(CaseRef::Existing(id)) => Some(id),
            _ => None,
        }
    }

    /// Runs `answer` on the stored cases of `term` in the window as the
    /// batch sees them: less the case evaluated and the cases the batch
    /// replaces with pending versions. A storage error is logged and the
    /// stored cases count nothing.
    fn with_stored<R>(
        &self,
        tree: TreeId,
        term: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        answer: impl Fn(&WindowCounts<'_>) -> R,
    ) -> R {
        // A set: the case evaluated may also be one the batch updates, and
        // it leaves the stored range once.
        let left_out: HashSet<&CaseId> = self
            .excluded_id()
            .into_iter()
            .chain(self.pending_updates.keys().copied())
            .collect();
        let result = self
            .store
            .with_term_window(tree, term, since, until, |window| {
                answer(&window.counts(since, until, &left_out))
            });
        result.unwrap_or_else(|e| {
            tracing::error!(error = %e, question = tree.name(), "case history lookup failed; counting nothing stored");
            let nobody = HashMap::new();
            answer(&WindowCounts {
                senders: &nobody,
                left: HashMap::new(),
            })
        })
    }

    fn excluded_new(&self) -> Option<NewCaseKey> {
        match &self.exclude {
            Some(CaseRef::New(key)) => Some(*key),
            _ => None,
        }
    }

    /// The pending updates of stored cases (less the one evaluated) that
    /// `match` within the window.
    fn pending_updated<'s>(
        &'s self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        matches: impl Fn(&Case) -> bool + 's,
    ) -> impl Iterator<Item = &'a Case> + 's {
        let excluded_id = self.excluded_id();
        self.pending_updates.values().copied().filter(move |c| {
            Some(&c.id) != excluded_id
                && c.created_at >= since
                && c.created_at <= until
                && matches(c)
        })
    }

    /// Runs `answer` on the pending new cases under `term` of `group`
    /// (less the one evaluated) within the window.
    fn with_pending_new<R>(
        &self,
        group: PendingGroup,
        term: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        answer: impl FnOnce(&mut dyn Iterator<Item = &PendingEntry>) -> R,
    ) -> R {
        let excluded_new = self.excluded_new();
        self.pending_new
            .with_entries(self.changes, group, term, |entries| {
                answer(
                    &mut entries
                        .iter()
                        .filter(|e| Some(e.case) != excluded_new && e.at >= since && e.at <= until),
                )
            })
    }

    /// The distinct senders of the pending cases that count: updated ones
    /// that `match`, new ones under `term` of `group`, less the one
    /// evaluated, within the window.
    fn pending_senders(
        &self,
        group: PendingGroup,
        term: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        matches: impl Fn(&Case) -> bool,
    ) -> PendingSenders<'a> {
        let pending: &'a PendingCases = self.pending_new;
        let mut senders = PendingSenders {
            list: Vec::new(),
            pending,
            counted: Vec::new(),
            updated: HashSet::new(),
        };
        self.with_pending_new(group, term, since, until, |entries| {
            for entry in entries {
                if senders.counted.is_empty() {
                    senders.counted = vec![false; pending.senders.len()];
                }
                if let Some(counted @ false) = senders.counted.get_mut(entry.sender) {
                    *counted = true;
                    senders
                        .list
                        .extend(pending.senders.get(entry.sender).map(|s| &**s));
                }
            }
        });
        for case in self.pending_updated(since, until, matches) {
            let sender = case.sender.email.as_str();
            if !senders.contains(sender) {
                senders.updated.insert(sender);
                senders.list.push(sender);
            }
        }
        senders
    }

    /// Distinct senders of matching cases in byte order: the stored ones
    /// from the store's cached window, less the cases left out, plus the
    /// pending ones.
    fn distinct_senders(
        &self,
        group: PendingGroup,
        term: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        matches: impl Fn(&Case) -> bool,
    ) -> Vec<String> {
        if since > until {
            return Vec::new();
        }
        self.with_stored(group.tree(), term, since, until, |stored| {
            let mut senders = stored.list();
            let pending = self.pending_senders(group, term, since, until, &matches);
            let before = senders.len();
            senders.extend(
                pending
                    .list
                    .iter()
                    .filter(|sender| !stored.counts_sender(sender))
                    .map(|sender| (*sender).to_owned()),
            );
            if senders.len() > before {
                senders.sort_unstable();
            }
            senders
        })
    }

    /// The same answer counted, without copying a sender: the stored
    /// senders less those left with no case, plus pending senders not
    /// among them.
    fn count_distinct(
        &self,
        group: PendingGroup,
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
        self.with_stored(group.tree(), term, since, until, |stored| {
            let pending = self.pending_senders(group, term, since, until, &matches);
            let extra = pending
                .list
                .iter()
                .filter(|pending| !stored.counts_sender(pending))
                .count();
            SenderCount {
                senders: (stored.len() + extra) as u64,
                includes: stored.counts_sender(sender) || pending.contains(sender),
            }
        })
    }
}

impl CaseHistory for BatchHistory<'_> {
    fn cases_from_sender(&self, sender: &str, since: DateTime<Utc>, until: DateTime<Utc>) -> u64 {
        let excluded_id = self.excluded_id();
        let hits = self
            .store
            .index_hits(TreeId::IdxSender, sender, since, until);
        let stored = hits_or_log(hits, TreeId::IdxSender.name())
            .iter()
            .filter(|h| Some(&h.case) != excluded_id && !self.pending_updates.contains_key(&h.case))
            .count();
        let pending_new =
            self.with_pending_new(PendingGroup::Sender, sender, since, until, |entries| {
                entries.count()
            });
        let pending_updated = self
            .pending_updated(since, until, |c| c.sender.email == sender)
            .count();
        let pending = pending_new + pending_updated;
        (stored + pending) as u64
    }

    fn distinct_senders_with_category(
        &self,
        category: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<String> {
        self.distinct_senders(PendingGroup::Category, category, since, until, |c| {
            category_of(c) == Some(category)
        })
    }

    fn distinct_senders_with_subject(
        &self,
        fingerprint: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<String> {
        self.distinct_senders(PendingGroup::Subject, fingerprint, since, until, |c| {
            subject_fingerprint(&c.subject) == fingerprint
        })
    }

    fn distinct_senders_with_tag(
        &self,
        tag: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<String> {
        self.distinct_senders(PendingGroup::Tag, tag, since, until, |c| {
            c.tags.contains(tag)
        })
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
                PendingGroup::Category,
                category,
                since,
                until,
                |c| category_of(c) == Some(category),
                sender,
            ),
            SenderGroup::Subject(fingerprint) => self.count_distinct(
                PendingGroup::Subject,
                fingerprint,
                since,
                until,
                |c| subject_fingerprint(&c.subject) == fingerprint,
                sender,
            ),
            SenderGroup::Tag(tag) => self.count_distinct(
                PendingGroup::Tag,
                tag,
                since,
                until,
                |c| c.tags.contains(tag),
                sender,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::{Address, FieldValue};
    use crate::store::ChangeSet;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0)
            .single()
            .expect("valid time")
    }

    fn minutes(n: i64) -> DateTime<Utc> {
        t0() + Duration::minutes(n)
    }

    fn store_case(store: &Store, sender: &str, at: DateTime<Utc>, category: &str) -> CaseId {
        let mut case = Case::new(
            CaseId("unnumbered".into()),
            at,
            "email",
            Address::new(sender, None),
            "停气通知",
            "zh",
        );
        case.fields
            .insert("category".into(), FieldValue::Name(category.into()));
        let mut changes = ChangeSet::new();
        let handle = changes.new_case(case).expect("case");
        store
            .apply(&changes)
            .expect("commit")
            .case_id(&handle)
            .expect("numbered")
    }

    fn count(store: &Store, category: &str, since: DateTime<Utc>, until: DateTime<Utc>) -> u64 {
        let batch = IngestBatch::new();
        batch
            .history(store, None)
            .count_distinct_senders(SenderGroup::Category(category), since, until, "")
            .senders
    }

    #[test]
    fn a_moving_window_keeps_only_what_its_questions_still_need() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        // One case a minute for 100 minutes, each from its own sender.
        for n in 0..100 {
            store_case(&store, &format!("s{n}@x.example"), minutes(n), "billing");
        }
        // A 10-minute window moving a minute per question: the cache holds
        // the entries from the previous question's start on, not all 100.
        for start in 0..90 {
            assert_eq!(
                count(&store, "billing", minutes(start), minutes(start + 10)),
                11
            );
            let (terms, entries) = store.history.size();
            assert_eq!(terms, 1);
            let from_previous_start = 100 - (start - 1).max(0) as usize;
            assert!(
                entries <= from_previous_start,
                "{entries} entries cached at start {start}"
            );
        }
        // Asking further back reads the older entries again.
        assert_eq!(count(&store, "billing", minutes(0), minutes(99)), 100);
    }

    #[test]
    fn a_term_not_asked_about_for_an_hour_is_dropped() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store_case(&store, "a@x.example", minutes(0), "billing");
        store_case(&store, "b@x.example", minutes(0), "outage");
        assert_eq!(count(&store, "outage", minutes(0), minutes(1)), 1);
        assert_eq!(count(&store, "billing", minutes(0), minutes(1)), 1);
        assert_eq!(store.history.size(), (2, 2));
        assert_eq!(count(&store, "billing", minutes(0), minutes(30)), 1);
        assert_eq!(store.history.size().0, 2, "half an hour is not idle");
        assert_eq!(count(&store, "billing", minutes(0), minutes(62)), 1);
        assert_eq!(store.history.size(), (1, 1), "outage was asked an hour ago");
        // A dropped term is read again when asked.
        assert_eq!(count(&store, "outage", minutes(0), minutes(62)), 1);
    }

    #[test]
    fn an_aborted_transaction_changes_nothing_cached() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store_case(&store, "a@x.example", minutes(0), "billing");
        assert_eq!(count(&store, "billing", minutes(0), minutes(10)), 1);
        let result: Result<(), StoreError> = store.transact(|tx| {
            tx.put(
                TreeId::IdxCategory,
                keys::index_key("billing", minutes(1), &CaseId("TS-X".into())),
                "b@x.example".as_bytes(),
            )?;
            super::super::trees::abort(StoreError::InvalidBatch("on purpose".into()))
        });
        assert!(result.is_err());
        assert_eq!(count(&store, "billing", minutes(0), minutes(10)), 1);
        assert_eq!(store.history.size(), (1, 1));
    }

    /// The subject group is indexed on the first subject question and
    /// caught up with the change sets pushed since, on every later one; a
    /// pending case whose subject has an empty fingerprint counts for the
    /// empty fingerprint, as a walk over the pending cases counts it.
    #[test]
    fn subject_questions_between_pushes_see_every_pending_case() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let subjects = ["停气通知", "Re: 停气通知", "账单", "", "账单"];
        let mut batch = IngestBatch::new();
        let mut pushed: Vec<Case> = Vec::new();
        for (n, subject) in subjects.iter().enumerate() {
            let case = Case::new(
                CaseId("unnumbered".into()),
                minutes(n as i64),
                "email",
                Address::new(&format!("s{}@x.example", n % 3), None),
                subject,
                "zh",
            );
            let mut changes = ChangeSet::new();
            changes.new_case(case.clone()).expect("case");
            batch.push(changes);
            pushed.push(case);
            for fingerprint in ["停气通知", "账单", ""] {
                let walked: Vec<String> = pushed
                    .iter()
                    .filter(|c| subject_fingerprint(&c.subject) == fingerprint)
                    .map(|c| c.sender.email.clone())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let view = batch.history(&store, None);
                assert_eq!(
                    view.distinct_senders_with_subject(fingerprint, minutes(0), minutes(10)),
                    walked,
                    "fingerprint {fingerprint:?} after {} pushes",
                    n + 1
                );
                let counted = view.count_distinct_senders(
                    SenderGroup::Subject(fingerprint),
                    minutes(0),
                    minutes(10),
                    "s0@x.example",
                );
                assert_eq!(counted.senders, walked.len() as u64);
                assert_eq!(counted.includes, walked.iter().any(|s| s == "s0@x.example"));
            }
        }
    }
}

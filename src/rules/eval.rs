//! Pure evaluation: a checked policy, a case, an input and an instant → actions.

use chrono::{DateTime, Utc};

/// What the evaluator may ask about *other* cases, for aggregate conditions.
///
/// The store implements it over its secondary indexes; tests use
/// [`MemoryHistory`]. Counts never include the case being evaluated: the
/// evaluator adds it itself. Windows are inclusive at both ends.
pub trait CaseHistory {
    /// Cases opened by `sender` (lower-cased address) within the window.
    fn cases_from_sender(&self, sender: &str, since: DateTime<Utc>, until: DateTime<Utc>) -> u64;
    /// Distinct senders of cases whose category is `category` within the window.
    fn distinct_senders_with_category(
        &self,
        category: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<String>;
    /// Distinct senders of cases whose subject fingerprint is `fingerprint`
    /// (see [`crate::case::subject_fingerprint`]) within the window.
    fn distinct_senders_with_subject(
        &self,
        fingerprint: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<String>;
    /// Distinct senders of cases carrying `tag` within the window.
    fn distinct_senders_with_tag(
        &self,
        tag: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<String>;
}

/// One remembered case, as [`MemoryHistory`] keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub sender: String,
    pub opened_at: DateTime<Utc>,
    pub category: Option<String>,
    pub subject_fingerprint: String,
    pub tags: Vec<String>,
}

/// An in-memory [`CaseHistory`] for tests and `rules test`.
#[derive(Debug, Clone, Default)]
pub struct MemoryHistory {
    pub entries: Vec<HistoryEntry>,
}

impl MemoryHistory {
    fn senders_where(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        keep: impl Fn(&HistoryEntry) -> bool,
    ) -> Vec<String> {
        let mut senders: Vec<String> = self
            .entries
            .iter()
            .filter(|e| e.opened_at >= since && e.opened_at <= until && keep(e))
            .map(|e| e.sender.clone())
            .collect();
        senders.sort();
        senders.dedup();
        senders
    }
}

impl CaseHistory for MemoryHistory {
    fn cases_from_sender(&self, sender: &str, since: DateTime<Utc>, until: DateTime<Utc>) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.sender == sender && e.opened_at >= since && e.opened_at <= until)
            .count() as u64
    }

    fn distinct_senders_with_category(
        &self,
        category: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<String> {
        self.senders_where(since, until, |e| e.category.as_deref() == Some(category))
    }

    fn distinct_senders_with_subject(
        &self,
        fingerprint: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<String> {
        self.senders_where(since, until, |e| e.subject_fingerprint == fingerprint)
    }

    fn distinct_senders_with_tag(
        &self,
        tag: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<String> {
        self.senders_where(since, until, |e| e.tags.iter().any(|t| t == tag))
    }
}

//! Key encodings for the store's trees: order-preserving, unambiguous, and free of sled.
//!
//! Variable-length parts are length-prefixed (`u32` big-endian), so no byte
//! value in a sender address, tag or deadline name can make one key look
//! like the prefix of another. Times are encoded so that byte order is time
//! order, which is what makes range scans over windows and due times work.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::case::CaseId;

/// Longest index term (sender, category, subject fingerprint, tag) kept verbatim.
/// Longer terms are replaced by a hash so a hostile subject cannot bloat keys.
pub const MAX_VERBATIM_TERM: usize = 256;

/// Size of an encoded instant.
pub const TIME_LEN: usize = 12;

/// An instant as 12 bytes whose byte order is time order:
/// seconds since the epoch with the sign bit flipped, then nanoseconds.
pub fn time_key(t: DateTime<Utc>) -> [u8; TIME_LEN] {
    let secs = (t.timestamp() as u64) ^ (1 << 63);
    let mut out = [0u8; TIME_LEN];
    out[..8].copy_from_slice(&secs.to_be_bytes());
    out[8..].copy_from_slice(&t.timestamp_subsec_nanos().to_be_bytes());
    out
}

/// The inverse of [`time_key`]; `None` when the bytes are no instant.
pub fn decode_time(bytes: &[u8]) -> Option<DateTime<Utc>> {
    let secs: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    let nanos: [u8; 4] = bytes.get(8..TIME_LEN)?.try_into().ok()?;
    let secs = (u64::from_be_bytes(secs) ^ (1 << 63)) as i64;
    DateTime::from_timestamp(secs, u32::from_be_bytes(nanos))
}

/// An hour bucket (hours since the epoch) for the acknowledgement counters.
pub fn hour_bucket(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(3600)
}

/// An index term as stored: verbatim when short, else a marker byte that no
/// UTF-8 text starts with, followed by the term's SHA-256.
pub fn index_term(term: &str) -> Vec<u8> {
    if term.len() <= MAX_VERBATIM_TERM {
        term.as_bytes().to_vec()
    } else {
        let mut out = vec![0xFF];
        out.extend_from_slice(&Sha256::digest(term.as_bytes()));
        out
    }
}

/// Builds a composite key.
#[derive(Debug, Default, Clone)]
pub struct KeyBuf(Vec<u8>);

impl KeyBuf {
    pub fn new() -> Self {
        KeyBuf(Vec::with_capacity(48))
    }

    /// A length-prefixed byte string.
    pub fn bytes(mut self, b: &[u8]) -> Self {
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0
            .extend_from_slice(&b[..usize::try_from(len).unwrap_or(b.len())]);
        self
    }

    pub fn str(self, s: &str) -> Self {
        self.bytes(s.as_bytes())
    }

    pub fn time(mut self, t: DateTime<Utc>) -> Self {
        self.0.extend_from_slice(&time_key(t));
        self
    }

    pub fn u64(mut self, n: u64) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }

    /// A signed number whose byte order is numeric order.
    pub fn i64(self, n: i64) -> Self {
        self.u64((n as u64) ^ (1 << 63))
    }

    /// Bytes appended as they are: only ever the last part of a key.
    pub fn tail(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }

    pub fn build(self) -> Vec<u8> {
        self.0
    }
}

/// Reads a composite key built by [`KeyBuf`].
#[derive(Debug)]
pub struct KeyReader<'a> {
    rest: &'a [u8],
}

impl<'a> KeyReader<'a> {
    pub fn new(key: &'a [u8]) -> Self {
        KeyReader { rest: key }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }

    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let len: [u8; 4] = self.take(4)?.try_into().ok()?;
        self.take(usize::try_from(u32::from_be_bytes(len)).ok()?)
    }

    pub fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }

    pub fn time(&mut self) -> Option<DateTime<Utc>> {
        decode_time(self.take(TIME_LEN)?)
    }

    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

/// Key of a case in the `cases` tree: the case number itself, so the tree
/// iterates in case-number order.
pub fn case_key(id: &CaseId) -> Vec<u8> {
    id.0.as_bytes().to_vec()
}

/// Key of one event: case, then the event's sequence number.
pub fn event_key(id: &CaseId, seq: u64) -> Vec<u8> {
    KeyBuf::new().str(&id.0).u64(seq).build()
}

/// Prefix of all events of a case.
pub fn event_prefix(id: &CaseId) -> Vec<u8> {
    KeyBuf::new().str(&id.0).build()
}

/// Counter keys in the `counters` tree; the first byte says which counter.
pub fn case_sequence_key(prefix: &str, year: i32) -> Vec<u8> {
    KeyBuf::new()
        .tail(b"c")
        .str(prefix)
        .i64(year.into())
        .build()
}

pub fn event_sequence_key(id: &CaseId) -> Vec<u8> {
    KeyBuf::new().tail(b"e").str(&id.0).build()
}

/// The mail sequence of a purpose for a case, or for mail of no case.
pub fn mail_sequence_key(id: Option<&CaseId>, purpose: &str) -> Vec<u8> {
    match id {
        Some(id) => KeyBuf::new().tail(b"m").str(&id.0).str(purpose).build(),
        None => KeyBuf::new().tail(b"d").str(purpose).build(),
    }
}

/// Key of a secondary index entry: term, the case's opening time, the case.
pub fn index_key(term: &str, at: DateTime<Utc>, id: &CaseId) -> Vec<u8> {
    KeyBuf::new()
        .bytes(&index_term(term))
        .time(at)
        .str(&id.0)
        .build()
}

/// Key of a timer: due time first, so the tree is ordered by due time.
pub fn timer_key(due: DateTime<Utc>, id: &CaseId, deadline: &str, step: u64) -> Vec<u8> {
    KeyBuf::new()
        .time(due)
        .str(&id.0)
        .str(deadline)
        .u64(step)
        .build()
}

/// Key of an outbox entry in the due index.
pub fn outbox_due_key(next_attempt: DateTime<Utc>, outbox_id: &str) -> Vec<u8> {
    KeyBuf::new()
        .time(next_attempt)
        .tail(outbox_id.as_bytes())
        .build()
}

/// Key of the due index's entry for the mails one transaction queued, all
/// first due at `due`: a zero byte (no outbox id starts with one) and the
/// batch's id after the time, so it sorts among the single entries by time.
pub fn outbox_due_batch_key(due: DateTime<Utc>, batch: u64) -> Vec<u8> {
    KeyBuf::new().time(due).tail(&[0]).u64(batch).build()
}

/// Whether a due index key is a batch's ([`outbox_due_batch_key`]).
pub fn is_outbox_due_batch_key(key: &[u8]) -> bool {
    key.get(TIME_LEN) == Some(&0)
}

/// Key of an acknowledgement counter: sender, then hour bucket.
pub fn ack_key(sender: &str, bucket: i64) -> Vec<u8> {
    KeyBuf::new().bytes(&index_term(sender)).i64(bucket).build()
}

/// Key of an attachment reference of a case.
pub fn attachment_ref_key(id: &CaseId, sha256_hex: &str) -> Vec<u8> {
    KeyBuf::new().str(&id.0).tail(sha256_hex.as_bytes()).build()
}

/// Prefix of all attachment references of a case.
pub fn attachment_ref_prefix(id: &CaseId) -> Vec<u8> {
    KeyBuf::new().str(&id.0).build()
}

/// The smallest key greater than every key starting with `prefix`, for
/// exclusive upper bounds of range scans; `None` when there is none.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A key shown to a human: text where it is text, hex elsewhere.
pub fn printable(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_owned(),
        _ => hex::encode(key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
            .single()
            .expect("valid")
    }

    #[test]
    fn time_keys_sort_like_times_including_before_the_epoch() {
        let times = [
            at(1960, 1, 1, 0, 0, 0),
            at(1969, 12, 31, 23, 59, 59),
            at(1970, 1, 1, 0, 0, 0),
            at(1970, 1, 1, 0, 0, 0) + chrono::Duration::nanoseconds(1),
            at(2026, 10, 1, 9, 0, 0),
            at(2026, 10, 1, 9, 0, 1),
        ];
        for pair in times.windows(2) {
            assert!(time_key(pair[0]) < time_key(pair[1]), "{pair:?}");
        }
        for t in times {
            assert_eq!(decode_time(&time_key(t)), Some(t));
        }
    }

    #[test]
    fn a_short_term_is_never_the_prefix_of_a_longer_one() {
        let t = at(2026, 1, 1, 0, 0, 0);
        let short = index_key("a@x", t, &CaseId("TS-2026-000001".into()));
        let long = KeyBuf::new().bytes(&index_term("a@x.org")).build();
        assert!(!long.starts_with(&KeyBuf::new().bytes(&index_term("a@x")).build()));
        assert!(short.starts_with(&KeyBuf::new().bytes(&index_term("a@x")).build()));
    }

    #[test]
    fn long_terms_are_hashed_and_stay_distinct() {
        let a = "x".repeat(MAX_VERBATIM_TERM + 1);
        let b = "y".repeat(MAX_VERBATIM_TERM + 1);
        assert_eq!(index_term(&a).len(), 33);
        assert_ne!(index_term(&a), index_term(&b));
        assert_eq!(index_term("short"), b"short".to_vec());
    }

    #[test]
    fn timer_keys_read_back() {
        let due = at(2026, 3, 2, 10, 30, 0);
        let id = CaseId("TS-2026-000042".into());
        let key = timer_key(due, &id, "调查反馈", 3);
        let mut r = KeyReader::new(&key);
        assert_eq!(r.time(), Some(due));
        assert_eq!(r.str(), Some("TS-2026-000042"));
        assert_eq!(r.str(), Some("调查反馈"));
        assert_eq!(r.u64(), Some(3));
        assert!(r.is_empty());
    }

    #[test]
    fn truncated_keys_read_as_none() {
        let key = timer_key(at(2026, 1, 1, 0, 0, 0), &CaseId("A".into()), "d", 1);
        let mut r = KeyReader::new(&key[..key.len() - 1]);
        assert!(r.time().is_some());
        assert_eq!(r.str(), Some("A"));
        assert_eq!(r.str(), Some("d"));
        assert_eq!(r.u64(), None);
    }

    #[test]
    fn prefix_end_bounds_every_extension() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[0x61, 0xFF]), Some(vec![0x62]));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
    }

    #[test]
    fn negative_hour_buckets_round_down() {
        assert_eq!(hour_bucket(at(1969, 12, 31, 23, 30, 0)), -1);
        assert_eq!(hour_bucket(at(1970, 1, 1, 0, 59, 59)), 0);
    }
}

//! Pure planning of an IMAP fetch pass: which UIDs are new, how they are batched, and
//! how UID sets and folder names are written on the wire.

/// One message as listed by `UID FETCH n:* (UID RFC822.SIZE)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed {
    pub uid: u32,
    pub size: u64,
}

/// The limits a batch must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most messages in one batch.
    pub max_messages: usize,
    /// Most bytes of bodies in one batch (a single larger message still gets its own batch).
    pub max_bytes: u64,
    /// Larger messages are handed over with their headers only.
    pub max_message_bytes: u64,
}

/// The messages above `last_uid`, in UID order, each once.
///
/// `UID FETCH n:*` with `n` above the highest UID still returns the highest message
/// (`*` is the highest UID and the range is unordered), so the listing is filtered.
pub fn new_messages(mut listing: Vec<Listed>, last_uid: u32) -> Vec<Listed> {
    listing.retain(|m| m.uid > last_uid);
    listing.sort_by_key(|m| m.uid);
    listing.dedup_by_key(|m| m.uid);
    listing
}

/// Splits new messages into batches in UID order, so each batch's highest UID is a
/// checkpoint below which everything has been handed over.
pub fn batches(messages: &[Listed], limits: BatchLimits) -> Vec<Vec<Listed>> {
    let max_messages = limits.max_messages.max(1);
    let mut out: Vec<Vec<Listed>> = Vec::new();
    let mut current: Vec<Listed> = Vec::new();
    let mut current_bytes = 0u64;
    for message in messages {
        // An oversized message costs only its headers.
        let cost = if message.size > limits.max_message_bytes {
            0
        } else {
            message.size
        };
        let full = current.len() >= max_messages
            || (!current.is_empty() && current_bytes.saturating_add(cost) > limits.max_bytes);
        if full {
            out.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current.push(*message);
        current_bytes = current_bytes.saturating_add(cost);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Writes UIDs as an IMAP sequence set with ranges: `1:3,7,9:10`.
pub fn uid_set(uids: impl IntoIterator<Item = u32>) -> String {
    let mut sorted: Vec<u32> = uids.into_iter().collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut index = 0;
    while index < sorted.len() {
        let start = sorted[index];
        let mut end = start;
        while index + 1 < sorted.len() && sorted[index + 1] == end + 1 {
            index += 1;
            end = sorted[index];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        index += 1;
    }
    out
}

/// Writes a folder name in IMAP's modified UTF-7 (RFC 3501 5.1.3), so configured names
/// such as `投诉` reach servers that do not accept UTF-8 names.
pub fn folder_name(name: &str) -> String {
    let mut out = String::new();
    let mut pending: Vec<u16> = Vec::new();
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush_utf16(&mut pending, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut units = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut units));
        }
    }
    flush_utf16(&mut pending, &mut out);
    out
}

/// Appends `&<modified base64 of UTF-16BE>-` for the pending non-ASCII run.
fn flush_utf16(pending: &mut Vec<u16>, out: &mut String) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";
    if pending.is_empty() {
        return;
    }
    let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
    out.push('&');
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let sextets = [
            b[0] >> 2,
            ((b[0] & 0x03) << 4) | (b[1] >> 4),
            ((b[1] & 0x0f) << 2) | (b[2] >> 6),
            b[2] & 0x3f,
        ];
        // Modified base64 has no padding: only the sextets that carry input bits.
        let used = match chunk.len() {
            1 => 2,
            2 => 3,
            _ => 4,
        };
        for &sextet in &sextets[..used] {
            out.push(char::from(ALPHABET[usize::from(sextet)]));
        }
    }
    out.push('-');
    pending.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(pairs: &[(u32, u64)]) -> Vec<Listed> {
        pairs
            .iter()
            .map(|&(uid, size)| Listed { uid, size })
            .collect()
    }

    #[test]
    fn the_star_quirk_and_duplicates_are_filtered() {
        // Asking for 8:* when the highest UID is 7 returns UID 7.
        assert_eq!(new_messages(listed(&[(7, 10)]), 7), vec![]);
        assert_eq!(
            new_messages(listed(&[(9, 1), (8, 2), (9, 1), (3, 5)]), 7),
            listed(&[(8, 2), (9, 1)])
        );
    }

    const LIMITS: BatchLimits = BatchLimits {
        max_messages: 3,
        max_bytes: 100,
        max_message_bytes: 60,
    };

    #[test]
    fn batches_respect_the_message_count() {
        let messages = listed(&[(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1), (7, 1)]);
        let uids: Vec<Vec<u32>> = batches(&messages, LIMITS)
            .iter()
            .map(|b| b.iter().map(|m| m.uid).collect())
            .collect();
        assert_eq!(uids, vec![vec![1, 2, 3], vec![4, 5, 6], vec![7]]);
    }

    #[test]
    fn batches_respect_the_byte_budget_and_oversized_ones_cost_nothing() {
        let messages = listed(&[(1, 50), (2, 40), (3, 20), (4, 5000), (5, 60), (6, 50)]);
        let uids: Vec<Vec<u32>> = batches(&messages, LIMITS)
            .iter()
            .map(|b| b.iter().map(|m| m.uid).collect())
            .collect();
        assert_eq!(uids, vec![vec![1, 2], vec![3, 4, 5], vec![6]]);
    }

    #[test]
    fn a_message_above_the_byte_budget_still_gets_a_batch() {
        let limits = BatchLimits {
            max_bytes: 10,
            ..LIMITS
        };
        let messages = listed(&[(1, 50), (2, 50)]);
        assert_eq!(batches(&messages, limits).len(), 2);
        assert!(batches(&[], limits).is_empty());
    }

    #[test]
    fn uid_sets_compress_runs() {
        assert_eq!(uid_set([5, 1, 2, 3, 9, 10, 7, 2]), "1:3,5,7,9:10");
        assert_eq!(uid_set([42]), "42");
        assert_eq!(uid_set([u32::MAX - 1, u32::MAX]), "4294967294:4294967295");
        assert_eq!(uid_set(Vec::new()), "");
    }

    #[test]
    fn folder_names_use_modified_utf7() {
        assert_eq!(folder_name("INBOX"), "INBOX");
        assert_eq!(folder_name("Processed/2026"), "Processed/2026");
        assert_eq!(folder_name("R&D"), "R&-D");
        // The examples of RFC 3501 section 5.1.3.
        assert_eq!(folder_name("台北"), "&U,BTFw-");
        assert_eq!(
            folder_name("~peter/mail/日本語/台北"),
            "~peter/mail/&ZeVnLIqe-/&U,BTFw-"
        );
        assert_eq!(folder_name("投诉"), "&YpWLyQ-");
        // A character outside the BMP is a surrogate pair.
        assert_eq!(folder_name("a😀b"), "a&2D3eAA-b");
    }
}

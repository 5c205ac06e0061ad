//! Mail in and mail out, the pure parts: parsing incoming mail, classifying it
//! against known threads, reply tokens, and building outgoing mail from
//! templates. Functions over bytes and values only: no network, no store, no clock.
//!
//! Conventions shared by the submodules:
//! - Message-IDs are kept without angle brackets (`abc@host`); a mail without
//!   one is known by `sha256:<hex>` of its bytes.
//! - Addresses are lower-cased `local@domain` ([`crate::case::Address`]).

pub mod classify;
pub mod html;
pub mod inbound;
pub mod lang;
pub mod outbound;
pub mod quote;
pub mod template;
pub mod token;

pub use classify::{
    classify, AutoReplyReason, ClassifyContext, KnownMessage, LoopReason, MailKind, MemoryLookup,
    ThreadLookup, ThreadedBy, UnverifiedReason,
};
pub use inbound::{
    parse, peek_headers, AttachmentBlob, AttachmentMeta, BodySource, DeliveryReport, DsnRecipient,
    IncomingMail, ParseError, ParseProblem, ParsedMail,
};

/// The longest Message-ID accepted (RFC 5322 lines are at most 998 octets).
const MAX_MESSAGE_ID_LEN: usize = 250;

/// A Message-ID without angle brackets and surrounding space, or `None` when
/// it is empty, too long, or contains space, control characters or brackets.
pub fn normalize_message_id(raw: &str) -> Option<String> {
    let trimmed = raw.trim();
    let inner = trimmed
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(trimmed)
        .trim();
    let usable = !inner.is_empty()
        && inner.len() <= MAX_MESSAGE_ID_LEN
        && !inner
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"' | '\\'));
    usable.then(|| inner.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_lose_brackets_and_refuse_junk() {
        assert_eq!(normalize_message_id(" <a.b@c> ").as_deref(), Some("a.b@c"));
        assert_eq!(normalize_message_id("a.b@c").as_deref(), Some("a.b@c"));
        assert_eq!(normalize_message_id("<>"), None);
        assert_eq!(normalize_message_id("<a b@c>"), None);
        assert_eq!(normalize_message_id("<a@c>\r\nBcc: x"), None);
        assert_eq!(normalize_message_id(&"x".repeat(300)), None);
    }
}

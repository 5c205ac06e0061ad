//! Outgoing mail: an [`OutgoingMail`] → RFC 5322 bytes, with lettre's MIME builder.
//!
//! Everything that reaches a header goes through lettre's encoders (RFC 2047
//! for non-ASCII, quoting for display names) after control characters have
//! been replaced by spaces here, so no case field can add a header or a MIME
//! part. Message-IDs are stable per (case, purpose, sequence) and the MIME
//! boundaries are derived from the content, so building the same mail twice
//! gives the same bytes: a retried send is recognisably the same mail.

use std::cell::RefCell;
use std::io::Write;
use std::sync::LazyLock;
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use lettre::message::header::{
    self, ContentTransferEncoding, ContentType, Header, HeaderName, HeaderValue, Headers,
};
use lettre::message::{Attachment, Body as PartBody, Mailbox, Mailboxes, SinglePart};
use sha2::{Digest, Sha256};

use super::inbound::clean_line;
use super::normalize_message_id;
use crate::case::{Address, CaseId};

/// Purpose of acknowledgements: the one kind of mail sent `Auto-Submitted: auto-replied`.
pub const ACKNOWLEDGEMENT: &str = "ack";

/// At most this many References are kept (the newest).
const MAX_REFERENCES: usize = 20;
/// Subjects are cut to this many characters.
const MAX_SUBJECT_CHARS: usize = 250;
/// Bytes reserved for a mail's header section, which is rarely longer.
const HEADER_ROOM: usize = 2048;
/// Bytes reserved for the headers of a MIME part.
const PART_HEADER_ROOM: usize = 256;

/// A mail to send.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingMail {
    /// The case the mail is about; `None` for digests and reports.
    pub case: Option<CaseId>,
    /// What the mail is for: `ack`, `forward`, `reminder`, … (`[a-z0-9_-]`, at most 32).
    pub purpose: String,
    /// Distinguishes mails of the same case and purpose; the caller keeps it stable across retries.
    pub sequence: u32,
    pub from: Address,
    pub to: Vec<Address>,
    pub cc: Vec<Address>,
    /// Where replies should go: the reply-token address when a department is to answer.
    pub reply_to: Option<Address>,
    /// The subject without the case number; `[TS-…] ` is added when `case` is set.
    pub subject: String,
    pub text: String,
    /// An HTML alternative of `text`, already escaped by its template.
    pub html: Option<String>,
    /// Message-ID (without brackets) of the mail this one answers.
    pub in_reply_to: Option<String>,
    /// Message-IDs (without brackets) of the thread, oldest first.
    pub references: Vec<String>,
    pub attachments: Vec<OutgoingAttachment>,
    /// The Date header; the caller's clock, never the wall clock here.
    pub date: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingAttachment {
    pub name: String,
    /// `type/subtype`; `application/octet-stream` when unsure.
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// A mail ready for SMTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltMail {
    /// Without brackets.
    pub message_id: String,
    /// The subject as sent (with the case number).
    pub subject: String,
    pub envelope_from: String,
    /// To and Cc addresses, in order, without duplicates.
    pub envelope_to: Vec<String>,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("{field} address {address:?} is not a valid mail address: {reason}")]
    InvalidAddress {
        field: &'static str,
        address: String,
        reason: String,
    },
    #[error("the mail has no recipient")]
    NoRecipients,
    #[error("purpose {0:?} must be 1 to 32 characters of a-z, 0-9, '_' and '-'")]
    InvalidPurpose(String),
    #[error("host {0:?} is not a domain name")]
    InvalidHost(String),
    #[error("case number {0:?} cannot be put in a Message-ID")]
    InvalidCase(String),
    #[error("attachment {name:?} has an invalid content type {content_type:?}")]
    InvalidContentType { name: String, content_type: String },
    #[error("the MIME builder refused the mail: {0}")]
    Builder(String),
}

/// The stable Message-ID of a mail (without brackets):
/// `TS-2026-000123.ack.1@host`, or `complaintd.digest.20261123@host` without a case.
pub fn message_id(
    case: Option<&CaseId>,
    purpose: &str,
    sequence: u32,
    host: &str,
) -> Result<String, BuildError> {
    check_purpose(purpose)?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !host.starts_with('.')
        && !host.ends_with('.');
    if !host_ok {
        return Err(BuildError::InvalidHost(host.to_owned()));
    }
    let scope = match case {
        Some(case) => {
            let ok = !case.0.is_empty()
                && case
                    .0
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !ok {
                return Err(BuildError::InvalidCase(case.0.clone()));
            }
            case.0.as_str()
        }
        None => "complaintd",
    };
    Ok(format!("{scope}.{purpose}.{sequence}@{host}"))
}

fn check_purpose(purpose: &str) -> Result<(), BuildError> {
    let ok = (1..=32).contains(&purpose.len())
        && purpose
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(BuildError::InvalidPurpose(purpose.to_owned()))
    }
}

/// `Auto-Submitted` value for a purpose (RFC 3834): acknowledgements answer a
/// mail, everything else the daemon sends on its own.
pub fn auto_submitted(purpose: &str) -> &'static str {
    if purpose == ACKNOWLEDGEMENT || purpose == "acknowledgement" {
        "auto-replied"
    } else {
        "auto-generated"
    }
}

/// The subject with `[case] ` in front, unless the bracketed number is already in it.
pub fn subject_with_case(case: Option<&CaseId>, subject: &str) -> String {
    let subject = clean_line(subject);
    let mut subject = match case {
        Some(case) if !contains_bracketed(&subject, &case.0) => {
            let mut with_case = String::with_capacity(case.0.len() + subject.len() + 3);
            with_case.push('[');
            with_case.push_str(&case.0);
            with_case.push(']');
            if !subject.is_empty() {
                with_case.push(' ');
                with_case.push_str(&subject);
            }
            with_case
        }
        _ => subject,
    };
    // A string of at most as many bytes as the limit has no more characters than that.
    if subject.len() > MAX_SUBJECT_CHARS {
        if let Some((end, _)) = subject.char_indices().nth(MAX_SUBJECT_CHARS) {
            subject.truncate(end);
        }
    }
    subject
}

/// Whether `text` contains `[number]`.
fn contains_bracketed(text: &str, number: &str) -> bool {
    // Looking for each `[` and comparing what follows avoids building the
    // needle and setting up a substring searcher for every mail.
    text.match_indices('[').any(|(start, _)| {
        text[start + 1..]
            .strip_prefix(number)
            .is_some_and(|rest| rest.starts_with(']'))
    })
}

/// Builds the mail. `host` is the domain of Message-IDs.
pub fn build(mail: &OutgoingMail, host: &str) -> Result<BuiltMail, BuildError> {
    let message_id = message_id(mail.case.as_ref(), &mail.purpose, mail.sequence, host)?;
    let subject = subject_with_case(mail.case.as_ref(), &mail.subject);

    let (envelope_from, from_header) = from_header(&mail.from)?;
    let to = mailboxes("To", &mail.to)?;
    let cc = mailboxes("Cc", &mail.cc)?;
    if to.iter().next().is_none() && cc.iter().next().is_none() {
        return Err(BuildError::NoRecipients);
    }
    let mut envelope_to: Vec<String> = Vec::new();
    for mailbox in to.iter().chain(cc.iter()) {
        let email: &str = mailbox.email.as_ref();
        if !envelope_to.iter().any(|known| known == email) {
            envelope_to.push(email.to_owned());
        }
    }

    // The headers in the order `Message::builder()` sets them. They are
    // collected in lettre's `Headers` (each value encoded by its typed
    // header) rather than through `MessageBuilder`, whose `build` parses
    // From and Date back out of their encoded values to check what we
    // just put in.
    let mut headers = Headers::with_capacity(16);
    headers.set(header::MessageId::from(format!("<{message_id}>")));
    headers.set(header::Date::new(SystemTime::from(mail.date)));
    headers.insert_raw(from_header);
    headers.set(header::Subject::from(subject.clone()));
    headers.set(AutoSubmitted(auto_submitted(&mail.purpose).to_owned()));
    // Asks Exchange not to send out-of-office replies to our mail.
    headers.set(AutoResponseSuppress("All".to_owned()));
    headers.set(ComplaintdPurpose(mail.purpose.clone()));
    if to.iter().next().is_some() {
        headers.set(header::To::from(to));
    }
    if cc.iter().next().is_some() {
        headers.set(header::Cc::from(cc));
    }
    if let Some(reply_to) = &mail.reply_to {
        headers.set(header::ReplyTo::from(Mailboxes::from(mailbox(
            "Reply-To", reply_to,
        )?)));
    }
    if let Some(case) = &mail.case {
        headers.set(ComplaintdCase(case.0.clone()));
    }
    let in_reply_to = mail.in_reply_to.as_deref().and_then(header_message_id);
    if let Some(id) = &in_reply_to {
        headers.set(header::InReplyTo::from(id.clone()));
    }
    let mut references: Vec<String> = mail
        .references
        .iter()
        .filter_map(|id| header_message_id(id))
        .collect();
    if let Some(id) = in_reply_to {
        if !references.contains(&id) {
            references.push(id);
        }
    }
    if references.len() > MAX_REFERENCES {
        references.drain(..references.len() - MAX_REFERENCES);
    }
    if !references.is_empty() {
        headers.set(header::References::from(references.join(" ")));
    }
    headers.set(header::MIME_VERSION_1_0);

    let boundary_seed = boundary_seed(&message_id, mail);
    let plain = single_part_bytes(&text_part(ContentType::TEXT_PLAIN, &mail.text));
    let body = match &mail.html {
        Some(html) => {
            let html = single_part_bytes(&text_part(ContentType::TEXT_HTML, html));
            multipart("alternative", &boundary_seed, &[plain, html])
        }
        None => plain,
    };
    let part = if mail.attachments.is_empty() {
        body
    } else {
        let mut parts = vec![body];
        for attachment in &mail.attachments {
            parts.push(single_part_bytes(&attachment_part(attachment)?));
        }
        multipart("mixed", &boundary_seed, &parts)
    };

    // What `Message::formatted` writes: the message's headers, then the
    // MIME part with its own headers. Room for the headers is reserved up
    // front: growing the buffer while they are written costs more.
    let mut bytes = Vec::with_capacity(HEADER_ROOM + part.len());
    write!(bytes, "{headers}").expect("writing to a Vec cannot fail");
    bytes.extend_from_slice(&part);

    Ok(BuiltMail {
        message_id,
        subject,
        envelope_from,
        envelope_to,
        bytes,
    })
}

/// What `SinglePart::formatted` writes: the part's headers, a blank line,
/// the body and a line break. Written into a buffer of the right size;
/// lettre's starts empty and grows several times for a long body.
fn single_part_bytes(part: &SinglePart) -> Vec<u8> {
    let mut out = Vec::with_capacity(PART_HEADER_ROOM + part.raw_body().len() + 2);
    write!(out, "{}\r\n", part.headers()).expect("writing to a Vec cannot fail");
    out.extend_from_slice(part.raw_body());
    out.extend_from_slice(b"\r\n");
    out
}

/// A `multipart/<kind>` part around the formatted `parts`, with the boundary
/// `=_<first three letters of kind>_<seed>`.
///
/// The bytes `MultiPart::<kind>().boundary(…)` with these parts formats to,
/// without the random boundary lettre makes first, and without lettre
/// parsing the boundary back out of the Content-Type header to write it.
fn multipart(kind: &str, boundary_seed: &str, parts: &[Vec<u8>]) -> Vec<u8> {
    let mut boundary = String::with_capacity(boundary_seed.len() + 6);
    for piece in ["=_", &kind[..3], "_", boundary_seed] {
        boundary.push_str(piece);
    }
    let mut content_type = String::with_capacity(boundary.len() + kind.len() + 24);
    for piece in ["multipart/", kind, "; boundary=\"", &boundary, "\""] {
        content_type.push_str(piece);
    }
    let content_type =
        ContentType::parse(&content_type).expect("a multipart type with a hex boundary parses");
    let mut headers = Headers::new();
    headers.set(content_type);
    let size = parts
        .iter()
        .map(|part| part.len() + boundary.len() + 4)
        .sum::<usize>();
    let mut out = Vec::with_capacity(PART_HEADER_ROOM + size);
    write!(out, "{headers}").expect("writing to a Vec cannot fail");
    out.extend_from_slice(b"\r\n");
    for part in parts {
        out.extend_from_slice(b"--");
        out.extend_from_slice(boundary.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(part);
    }
    out.extend_from_slice(b"--");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(b"--\r\n");
    out
}

/// A text part: the bytes `SinglePart::builder().header(content_type).body(text.to_owned())`
/// gives, built without copying the text first and with line endings
/// converted in one pass (lettre inserts each `\r` into the string).
fn text_part(content_type: ContentType, text: &str) -> SinglePart {
    use email_encoding::body::Encoding;
    // lettre chooses on the text as given, before converting line endings.
    let encoding = choose_encoding(text);
    let crlf = crlf_line_endings(text);
    let body = match encoding {
        Encoding::SevenBit => {
            PartBody::dangerous_pre_encoded(crlf, ContentTransferEncoding::SevenBit)
        }
        Encoding::EightBit => {
            PartBody::dangerous_pre_encoded(crlf, ContentTransferEncoding::EightBit)
        }
        Encoding::QuotedPrintable => PartBody::dangerous_pre_encoded(
            quoted_printable::encode(crlf),
            ContentTransferEncoding::QuotedPrintable,
        ),
        Encoding::Base64 => {
            PartBody::dangerous_pre_encoded(base64_lines(&crlf), ContentTransferEncoding::Base64)
        }
    };
    SinglePart::builder().header(content_type).body(body)
}

/// `Encoding::choose(text, false)`: what lettre chooses for a text part.
///
/// For non-ASCII text the crate's choice is quoted-printable when at most a
/// third of the bytes need escaping, else base64; it counts those bytes one
/// at a time over the whole text (after measuring every line, which only
/// matters for ASCII). Counting in blocks that the compiler vectorises, and
/// stopping once the third is passed, gives the same answer for less.
fn choose_encoding(text: &str) -> email_encoding::body::Encoding {
    use email_encoding::body::Encoding;
    if text.is_ascii() {
        return Encoding::choose(text, false);
    }
    let limit = text.len() / 3;
    let mut requiring_escaping = 0;
    // A block of 255 bytes cannot overflow the byte-wide counter.
    for block in text.as_bytes().chunks(255) {
        let in_block = block.iter().fold(0u8, |count, &byte| {
            count + u8::from(!matches!(byte, b'\t' | b' '..=b'~'))
        });
        requiring_escaping += usize::from(in_block);
        if requiring_escaping > limit {
            return Encoding::Base64;
        }
    }
    Encoding::QuotedPrintable
}

/// The base64 engine of text parts: the crate's SIMD engine (AVX2 when the
/// CPU has it, else the scalar engine), with the output of
/// `general_purpose::STANDARD` at several times its speed.
static BASE64: LazyLock<base64::engine::Simd> =
    LazyLock::new(|| base64::engine::Simd::standard(base64::engine::general_purpose::PAD));

/// Characters of a base64 body line (RFC 2045: at most 76).
const BASE64_LINE: usize = 76;

/// Base64 in lines of 76 characters joined by CRLF, no line break at the end:
/// what `email_encoding::body::base64::encode` writes, encoded in one piece
/// instead of 57 bytes at a time through a UTF-8 check and a `fmt::Write`.
fn base64_lines(bytes: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let encoded = BASE64.encode(bytes);
    let mut out = Vec::with_capacity(encoded.len() + encoded.len() / BASE64_LINE * 2);
    for (index, line) in encoded.as_bytes().chunks(BASE64_LINE).enumerate() {
        if index > 0 {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(line);
    }
    out
}

/// `text` with a `\r` before every `\n` that has none.
fn crlf_line_endings(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 16 + 2);
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', bytes) {
        let line = &bytes[start..end];
        out.extend_from_slice(line);
        if !line.ends_with(b"\r") {
            out.push(b'\r');
        }
        out.push(b'\n');
        start = end + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out
}

/// A boundary that depends on everything in the body, so it cannot occur in
/// it (short of a hash collision) and is the same on every rebuild.
fn boundary_seed(message_id: &str, mail: &OutgoingMail) -> String {
    let mut hasher = Sha256::new();
    for piece in [
        message_id.as_bytes(),
        mail.text.as_bytes(),
        mail.html.as_deref().unwrap_or_default().as_bytes(),
    ] {
        hasher.update((piece.len() as u64).to_be_bytes());
        hasher.update(piece);
    }
    for attachment in &mail.attachments {
        hasher.update((attachment.bytes.len() as u64).to_be_bytes());
        hasher.update(&attachment.bytes);
    }
    hex::encode(&hasher.finalize()[..16])
}

fn attachment_part(attachment: &OutgoingAttachment) -> Result<SinglePart, BuildError> {
    let content_type = ContentType::parse(&attachment.content_type).map_err(|_| {
        BuildError::InvalidContentType {
            name: attachment.name.clone(),
            content_type: attachment.content_type.clone(),
        }
    })?;
    let name = clean_line(
        attachment
            .name
            .rsplit(['/', '\\'])
            .next()
            .unwrap_or_default(),
    );
    let name = if name.is_empty() {
        "attachment".to_owned()
    } else {
        name
    };
    Ok(Attachment::new(name).body(attachment.bytes.clone(), content_type))
}

/// A Message-ID in brackets for a header, or `None` when it is not safe ASCII.
fn header_message_id(id: &str) -> Option<String> {
    normalize_message_id(id)
        .filter(|id| id.is_ascii())
        .map(|id| format!("<{id}>"))
}

thread_local! {
    /// The last From address built on this thread, with its envelope
    /// address and encoded header: every mail of a daemon comes from the
    /// same address, and parsing and encoding it is a good part of the
    /// work of a mail.
    static LAST_FROM: RefCell<Option<(Address, String, HeaderValue)>> = const { RefCell::new(None) };
}

/// The envelope address of `from` and its From header, as lettre encodes them.
fn from_header(from: &Address) -> Result<(String, HeaderValue), BuildError> {
    LAST_FROM.with_borrow_mut(|last| {
        if let Some((known, envelope, header)) = last.as_ref() {
            if known == from {
                return Ok((envelope.clone(), header.clone()));
            }
        }
        let mailbox = mailbox("From", from)?;
        let envelope = mailbox.email.to_string();
        let header = header::From::from(Mailboxes::from(mailbox)).display();
        *last = Some((from.clone(), envelope.clone(), header.clone()));
        Ok((envelope, header))
    })
}

fn mailbox(field: &'static str, address: &Address) -> Result<Mailbox, BuildError> {
    let email = address.email.trim();
    let parsed: lettre::Address =
        email.parse().map_err(
            |e: lettre::address::AddressError| BuildError::InvalidAddress {
                field,
                address: email.to_owned(),
                reason: e.to_string(),
            },
        )?;
    let name = address
        .name
        .as_deref()
        .map(clean_line)
        .filter(|n| !n.is_empty());
    Ok(Mailbox::new(name, parsed))
}

fn mailboxes(field: &'static str, addresses: &[Address]) -> Result<Mailboxes, BuildError> {
    let mut out = Mailboxes::new();
    for address in addresses {
        out.push(mailbox(field, address)?);
    }
    Ok(out)
}

macro_rules! text_header {
    ($type_name:ident, $header_name:expr) => {
        #[derive(Debug, Clone, PartialEq, Eq)]
        struct $type_name(String);

        impl Header for $type_name {
            fn name() -> HeaderName {
                HeaderName::new_from_ascii_str($header_name)
            }

            fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
                Ok(Self(s.to_owned()))
            }

            fn display(&self) -> HeaderValue {
                HeaderValue::new(Self::name(), clean_line(&self.0))
            }
        }
    };
}

text_header!(AutoSubmitted, "Auto-Submitted");
text_header!(AutoResponseSuppress, "X-Auto-Response-Suppress");
text_header!(ComplaintdCase, "X-Complaintd-Case");
text_header!(ComplaintdPurpose, "X-Complaintd-Purpose");

#[cfg(test)]
mod tests {
    use super::*;
    use lettre::message::MultiPart;
    use lettre::Message;
    use proptest::prelude::*;

    /// What lettre's own builder makes of the text.
    fn lettre_part(content_type: ContentType, text: &str) -> Vec<u8> {
        SinglePart::builder()
            .header(content_type)
            .body(text.to_owned())
            .formatted()
    }

    #[test]
    fn text_parts_are_the_bytes_lettre_builds() {
        let long_ascii = "word ".repeat(40);
        let texts = [
            String::new(),
            "Hello".to_owned(),
            "line one\nline two\n".to_owned(),
            "\nstarts with a line feed\r\nand mixes\r\rendings\n\r\n".to_owned(),
            format!("{long_ascii}\n{long_ascii}"),
            format!("{}\n", "x".repeat(75)),
            format!("{}\n", "x".repeat(74)),
            "您好：\n\n您的投诉已登记，编号 TS-2026-000123。\n".to_owned(),
            "Mostly ASCII with one ü and a long tail ".repeat(5),
            "<p>金额 &lt;100&gt; 元</p>\r\n<p>Price: 5 &amp; 6</p>".to_owned(),
            "=3D\ttab\t and trailing space \n".to_owned(),
        ];
        for text in &texts {
            for content_type in [ContentType::TEXT_PLAIN, ContentType::TEXT_HTML] {
                assert_eq!(
                    String::from_utf8_lossy(&text_part(content_type.clone(), text).formatted()),
                    String::from_utf8_lossy(&lettre_part(content_type, text)),
                    "{text:?}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn any_text_part_is_the_bytes_lettre_builds(
            text in "([a-z =\\t]{0,90}|[\\r\\n]{1,3}|[é中😀]{0,3}){0,12}"
        ) {
            prop_assert_eq!(
                text_part(ContentType::TEXT_PLAIN, &text).formatted(),
                lettre_part(ContentType::TEXT_PLAIN, &text)
            );
        }
    }

    proptest! {
        #[test]
        fn the_encoding_is_the_one_lettre_chooses(
            text in "([a-z =\\t]{0,90}|[\\r\\n\\x01\\x7f]{1,3}|[é中😀]{0,3}){0,40}"
        ) {
            prop_assert_eq!(
                choose_encoding(&text),
                email_encoding::body::Encoding::choose(text.as_str(), false)
            );
        }
    }

    #[test]
    fn the_encoding_changes_where_lettres_does_at_a_third() {
        use email_encoding::body::Encoding;
        // "é" is two bytes that need escaping; each "a" is one that does not.
        for accents in [1, 2, 100, 128, 129, 200, 400] {
            for plain in [0, 1, 2, 3, 4, 250, 255, 256, 257, 400, 401, 402, 403, 1000] {
                let text = format!("{}{}", "é".repeat(accents), "a".repeat(plain));
                let text_at_end = format!("{}{}", "a".repeat(plain), "é".repeat(accents));
                for text in [text, text_at_end] {
                    assert_eq!(
                        choose_encoding(&text),
                        Encoding::choose(text.as_str(), false),
                        "{accents} {plain}"
                    );
                }
            }
        }
    }

    proptest! {
        #[test]
        fn base64_lines_are_what_lettres_encoder_writes(
            bytes in proptest::collection::vec(any::<u8>(), 0..3000)
        ) {
            let mut expected = String::new();
            email_encoding::body::base64::encode(&bytes, &mut expected).unwrap();
            prop_assert_eq!(String::from_utf8(base64_lines(&bytes)).unwrap(), expected);
        }
    }

    #[test]
    fn base64_lines_break_exactly_at_76_characters() {
        for len in [0, 1, 56, 57, 58, 114, 171, 1000, 4096, 4097] {
            let bytes = vec![0xE4; len];
            let mut expected = String::new();
            email_encoding::body::base64::encode(&bytes, &mut expected).unwrap();
            assert_eq!(
                String::from_utf8(base64_lines(&bytes)).unwrap(),
                expected,
                "{len}"
            );
        }
    }

    /// The subject as `subject_with_case` made it with `format!` and a substring search.
    fn subject_with_case_by_format(case: Option<&CaseId>, subject: &str) -> String {
        let subject = clean_line(subject);
        let mut subject = match case {
            Some(case) if !subject.contains(&format!("[{case}]")) => {
                if subject.is_empty() {
                    format!("[{case}]")
                } else {
                    format!("[{case}] {subject}")
                }
            }
            _ => subject,
        };
        if let Some((end, _)) = subject.char_indices().nth(MAX_SUBJECT_CHARS) {
            subject.truncate(end);
        }
        subject
    }

    enum Body {
        Single(SinglePart),
        Multi(MultiPart),
    }

    /// The mail as `build` made it with lettre's `MessageBuilder` (and the
    /// multiparts as lettre makes them).
    fn build_with_message_builder(
        mail: &OutgoingMail,
        host: &str,
    ) -> Result<BuiltMail, BuildError> {
        let message_id = message_id(mail.case.as_ref(), &mail.purpose, mail.sequence, host)?;
        let subject = subject_with_case_by_format(mail.case.as_ref(), &mail.subject);

        let from = mailbox("From", &mail.from)?;
        let to = mailboxes("To", &mail.to)?;
        let cc = mailboxes("Cc", &mail.cc)?;
        if to.iter().next().is_none() && cc.iter().next().is_none() {
            return Err(BuildError::NoRecipients);
        }
        let mut envelope_to: Vec<lettre::Address> = Vec::new();
        for mailbox in to.iter().chain(cc.iter()) {
            if !envelope_to.contains(&mailbox.email) {
                envelope_to.push(mailbox.email.clone());
            }
        }
        let envelope =
            lettre::address::Envelope::new(Some(from.email.clone()), envelope_to.clone())
                .map_err(|e| BuildError::Builder(e.to_string()))?;

        let mut builder = Message::builder()
            .message_id(Some(format!("<{message_id}>")))
            .date(SystemTime::from(mail.date))
            .mailbox(header::From::from(Mailboxes::from(from.clone())))
            .subject(subject.clone())
            .header(AutoSubmitted(auto_submitted(&mail.purpose).to_owned()))
            // Asks Exchange not to send out-of-office replies to our mail.
            .header(AutoResponseSuppress("All".to_owned()))
            .header(ComplaintdPurpose(mail.purpose.clone()))
            .envelope(envelope);
        if to.iter().next().is_some() {
            builder = builder.mailbox(header::To::from(to));
        }
        if cc.iter().next().is_some() {
            builder = builder.mailbox(header::Cc::from(cc));
        }
        if let Some(reply_to) = &mail.reply_to {
            builder = builder.mailbox(header::ReplyTo::from(Mailboxes::from(mailbox(
                "Reply-To", reply_to,
            )?)));
        }
        if let Some(case) = &mail.case {
            builder = builder.header(ComplaintdCase(case.0.clone()));
        }
        let in_reply_to = mail.in_reply_to.as_deref().and_then(header_message_id);
        if let Some(id) = &in_reply_to {
            builder = builder.in_reply_to(id.clone());
        }
        let mut references: Vec<String> = mail
            .references
            .iter()
            .filter_map(|id| header_message_id(id))
            .collect();
        if let Some(id) = &in_reply_to {
            if !references.contains(id) {
                references.push(id.clone());
            }
        }
        if references.len() > MAX_REFERENCES {
            references.drain(..references.len() - MAX_REFERENCES);
        }
        if !references.is_empty() {
            builder = builder.references(references.join(" "));
        }

        let boundary_seed = boundary_seed(&message_id, mail);
        let alternative = || MultiPart::alternative().boundary(format!("=_alt_{boundary_seed}"));
        let mixed = || MultiPart::mixed().boundary(format!("=_mix_{boundary_seed}"));
        let plain = text_part(ContentType::TEXT_PLAIN, &mail.text);
        let body = match &mail.html {
            Some(html) => Body::Multi(
                alternative()
                    .singlepart(plain)
                    .singlepart(text_part(ContentType::TEXT_HTML, html)),
            ),
            None => Body::Single(plain),
        };
        let body = if mail.attachments.is_empty() {
            body
        } else {
            let mut with_attachments = match body {
                Body::Single(part) => mixed().singlepart(part),
                Body::Multi(part) => mixed().multipart(part),
            };
            for attachment in &mail.attachments {
                with_attachments = with_attachments.singlepart(attachment_part(attachment)?);
            }
            Body::Multi(with_attachments)
        };
        let message = match body {
            Body::Single(part) => builder.singlepart(part),
            Body::Multi(part) => builder.multipart(part),
        }
        .map_err(|e| BuildError::Builder(e.to_string()))?;

        Ok(BuiltMail {
            message_id,
            subject,
            envelope_from: from.email.to_string(),
            envelope_to: envelope_to.iter().map(ToString::to_string).collect(),
            bytes: message.formatted(),
        })
    }

    fn address(email: &str, name: Option<&str>) -> Address {
        Address {
            email: email.to_owned(),
            name: name.map(str::to_owned),
        }
    }

    /// Mails of every shape `build` makes: with and without case, Cc,
    /// Reply-To, threading, HTML and attachments, and names that need encoding.
    fn mails_of_every_shape() -> Vec<OutgoingMail> {
        let date = DateTime::parse_from_rfc3339("2026-11-24T10:00:00+08:00")
            .unwrap()
            .with_timezone(&Utc);
        let ack = OutgoingMail {
            case: Some(CaseId("TS-2026-000123".to_owned())),
            purpose: ACKNOWLEDGEMENT.to_owned(),
            sequence: 1,
            from: address("complaints@corp.example", Some("Corp Gas 燃气公司")),
            to: vec![address("wang@customers.example", Some("王 \"小明\""))],
            cc: Vec::new(),
            reply_to: None,
            subject: "您的投诉已受理".to_owned(),
            text: "您好：\n\n编号 TS-2026-000123。\n".to_owned(),
            html: None,
            in_reply_to: Some("<abc@customers.example>".to_owned()),
            references: vec!["older@customers.example".to_owned()],
            attachments: Vec::new(),
            date,
        };
        let forward = OutgoingMail {
            purpose: "forward".to_owned(),
            sequence: 2,
            to: vec![
                address("network@gas.example", None),
                address("Network@gas.example", Some("Network")),
                address("network@gas.example", Some("again")),
            ],
            cc: vec![address("boss@gas.example", Some("Boss, The"))],
            reply_to: Some(address("complaints+tok@corp.example", None)),
            subject: "[TS-2026-000123] 转派：漏气".to_owned(),
            text: "Case TS-2026-000123\r\nmostly ASCII ü\n".repeat(20),
            html: Some("<p>金额 &lt;100&gt; 元</p>\n".repeat(30)),
            in_reply_to: None,
            references: (0..25).map(|n| format!("m{n}@x.example")).collect(),
            attachments: vec![OutgoingAttachment {
                name: "../照片 1.jpg".to_owned(),
                content_type: "image/jpeg".to_owned(),
                bytes: vec![0xFF, 0xD8, 0xFF, 0x00, 0x10],
            }],
            ..ack.clone()
        };
        let digest = OutgoingMail {
            case: None,
            from: address("reports@corp.example", Some("Reports")),
            purpose: "digest".to_owned(),
            to: Vec::new(),
            cc: vec![address("team@gas.example", None)],
            subject: "Weekly digest\r\nBcc: evil@x.example".to_owned(),
            text: "plain ascii\n".to_owned(),
            html: None,
            in_reply_to: None,
            references: Vec::new(),
            attachments: vec![OutgoingAttachment {
                name: String::new(),
                content_type: "text/csv".to_owned(),
                bytes: b"a,b\n1,2\n".to_vec(),
            }],
            ..ack.clone()
        };
        let html_only_alternative = OutgoingMail {
            attachments: Vec::new(),
            in_reply_to: Some("not a message id".to_owned()),
            ..forward.clone()
        };
        vec![ack, forward, digest, html_only_alternative]
    }

    #[test]
    fn mails_are_the_bytes_lettres_message_builder_makes() {
        for mail in mails_of_every_shape() {
            let ours = build(&mail, "mail.corp.example").unwrap();
            let lettres = build_with_message_builder(&mail, "mail.corp.example").unwrap();
            assert_eq!(
                String::from_utf8_lossy(&ours.bytes),
                String::from_utf8_lossy(&lettres.bytes)
            );
            assert_eq!(ours, lettres);
        }
    }

    proptest! {
        #[test]
        fn subjects_are_the_ones_format_makes(
            subject in "([a-z \\[\\]\\t\\r\\n]{0,8}|TS-2026-00012[34]|中{0,90}){0,8}",
            with_case in any::<bool>()
        ) {
            let case = CaseId("TS-2026-000123".to_owned());
            let case = with_case.then_some(&case);
            prop_assert_eq!(
                subject_with_case(case, &subject),
                subject_with_case_by_format(case, &subject)
            );
        }
    }

    #[test]
    fn long_subjects_are_cut_to_the_limit_in_characters() {
        let case = CaseId("TS-2026-000123".to_owned());
        let long = "燃气表a".repeat(100);
        let subject = subject_with_case(Some(&case), &long);
        assert_eq!(subject.chars().count(), MAX_SUBJECT_CHARS);
        let expected: String = format!("[{case}] {long}")
            .chars()
            .take(MAX_SUBJECT_CHARS)
            .collect();
        assert_eq!(subject, expected);
        let exact = "x".repeat(MAX_SUBJECT_CHARS);
        assert_eq!(subject_with_case(None, &exact), exact);
    }

    #[test]
    fn multiparts_are_the_ones_lettre_builds() {
        let seed = "0123456789abcdef0123456789abcdef";
        let plain = SinglePart::plain("a".to_owned());
        let html = SinglePart::html("<p>b</p>".to_owned());
        let ours = multipart("alternative", seed, &[plain.formatted(), html.formatted()]);
        let lettres = MultiPart::alternative()
            .boundary(format!("=_alt_{seed}"))
            .singlepart(plain.clone())
            .singlepart(html.clone());
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&lettres.formatted())
        );
        for part in [&plain, &html] {
            assert_eq!(single_part_bytes(part), part.formatted());
        }
        let ours = multipart("mixed", seed, &[ours, plain.formatted()]);
        let lettres = MultiPart::mixed()
            .boundary(format!("=_mix_{seed}"))
            .multipart(lettres)
            .singlepart(plain);
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&lettres.formatted())
        );
    }
}

//! Incoming mail: raw RFC 5322 bytes → [`IncomingMail`], decoded and ready for
//! classification and the rules.
//!
//! Parsing is best effort and never panics: whatever can be read is kept, and
//! what could not be read is listed in [`IncomingMail::problems`]. Only input
//! with no header at all is refused with a [`ParseError`], for the caller to
//! quarantine with its reason. Attachment bytes come back separately in
//! [`ParsedMail::blobs`], named by their SHA-256, never by the sender's file name.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use mail_parser::decoders::base64::base64_decode;
use mail_parser::decoders::charsets::map::charset_decoder;
use mail_parser::decoders::quoted_printable::quoted_printable_decode;
use mail_parser::parsers::MessageStream;
use mail_parser::{
    Encoding, HeaderValue, Message, MessageParser, MessagePart, MimeHeaders, PartType,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::html::html_to_text;
use super::lang::{detect_language, detect_mail_language};
use super::normalize_message_id;
use super::quote::split_reply;
use crate::case::{Address, AttachmentFacts, MailFacts};

/// The largest header block [`peek_headers`] reads.
pub const MAX_HEADER_BYTES: usize = 1 << 20;

/// One incoming mail, decoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncomingMail {
    /// Message-ID without angle brackets; `sha256:<hex>` of the raw bytes when
    /// the mail has no usable Message-ID.
    pub message_id: String,
    /// Whether `message_id` is the content hash.
    pub message_id_synthesized: bool,
    /// Message-IDs (without brackets) this mail answers.
    pub in_reply_to: Vec<String>,
    /// Message-IDs (without brackets) of the thread, oldest first.
    pub references: Vec<String>,
    pub from: Option<Address>,
    pub reply_to: Vec<Address>,
    pub to: Vec<Address>,
    pub cc: Vec<Address>,
    /// The Date header, when present and valid.
    pub date: Option<DateTime<Utc>>,
    /// Decoded subject, control characters replaced by spaces.
    pub subject: String,
    /// What the sender wrote now: plain text (or text from HTML) without quoted replies.
    pub text: String,
    /// The quoted earlier mail that was separated from `text`.
    pub quoted: String,
    /// Where `text` came from.
    pub body_source: BodySource,
    pub attachments: Vec<AttachmentMeta>,
    /// All top-level headers in order, names lower-cased, values unfolded and decoded.
    pub headers: Vec<(String, String)>,
    /// ISO 639-1 code, or `und` (see [`super::lang`]).
    pub language: String,
    /// The Return-Path address; `Some("")` for the null sender `<>`.
    pub return_path: Option<String>,
    /// Top-level MIME type, lower case (`text/plain`, `multipart/report`, …).
    pub mime_type: String,
    /// The machine-readable part of a `multipart/report`.
    pub report: Option<DeliveryReport>,
    /// Size of the raw mail in bytes.
    pub size: u64,
    /// False for the header-only look of [`peek_headers`].
    pub body_parsed: bool,
    /// What could not be read, in the order found.
    pub problems: Vec<ParseProblem>,
}

/// Where the text of a mail came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodySource {
    Plain,
    Html,
    /// No text part (attachments only, or a header-only look).
    None,
}

/// An attachment as stored: metadata here, bytes in a [`AttachmentBlob`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentMeta {
    /// The sender's file name made safe for display (no path, no control characters).
    pub name: String,
    /// `type/subtype`, lower case.
    pub content_type: String,
    pub size: u64,
    /// Lower-case hex SHA-256 of the bytes: the name the store keeps them under.
    pub sha256: String,
    /// `Content-Disposition: inline` (e.g. an image shown in the HTML body).
    pub inline: bool,
}

/// The bytes of one attachment, to be stored under their hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentBlob {
    pub sha256: String,
    pub bytes: Vec<u8>,
}

/// The result of [`parse`].
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedMail {
    pub mail: IncomingMail,
    /// One blob per distinct attachment content.
    pub blobs: Vec<AttachmentBlob>,
}

/// The machine-readable part of a `multipart/report` (RFC 6522), with the
/// Message-ID of the mail it reports on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeliveryReport {
    /// The `report-type` parameter: `delivery-status`, `disposition-notification`, …
    pub report_type: String,
    /// Message-ID (without brackets) of the mail the report is about: from an
    /// `Original-Message-ID` field, else the returned message or its headers.
    pub original_message_id: Option<String>,
    pub recipients: Vec<DsnRecipient>,
}

/// One per-recipient block of a delivery status notification (RFC 3464).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DsnRecipient {
    /// `Final-Recipient` without its address type.
    pub recipient: String,
    /// `failed`, `delayed`, `delivered`, `relayed`, `expanded`.
    pub action: String,
    /// `5.1.1` and the like.
    pub status: String,
    pub diagnostic: Option<String>,
}

impl DsnRecipient {
    /// A permanent failure (`Action: failed` or a 5.x.x status).
    pub fn is_permanent_failure(&self) -> bool {
        self.action.eq_ignore_ascii_case("failed") || self.status.starts_with('5')
    }
}

/// Something in the mail that could not be read as declared. The mail is
/// still usable; these are logged with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum ParseProblem {
    MissingMessageId,
    InvalidMessageId {
        value: String,
    },
    MissingFrom,
    InvalidFrom {
        value: String,
    },
    InvalidDate {
        value: String,
    },
    /// A part declares a charset nobody knows; it was read as UTF-8.
    UnknownCharset {
        part: u32,
        charset: String,
    },
    /// Bytes that are not valid in the declared charset were replaced by U+FFFD.
    UndecodableText {
        part: u32,
        replaced: usize,
    },
    /// Broken base64 or quoted-printable.
    BadTransferEncoding {
        part: u32,
    },
    /// A multipart part without a boundary parameter.
    MultipartWithoutBoundary {
        part: u32,
    },
    /// The declared boundary of a multipart part never appears.
    BoundaryNotFound {
        part: u32,
        boundary: String,
    },
    /// The parts were read by the boundary the body actually uses.
    BoundaryRecovered {
        boundary: String,
    },
    /// The closing `--boundary--` is missing: the mail may be truncated.
    UnterminatedMultipart {
        boundary: String,
    },
    /// Only the headers were read ([`peek_headers`]).
    BodyNotParsed,
}

impl std::fmt::Display for ParseProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseProblem::MissingMessageId => {
                f.write_str("no Message-ID; a content hash stands in for it")
            }
            ParseProblem::InvalidMessageId { value } => {
                write!(
                    f,
                    "unusable Message-ID {value:?}; a content hash stands in for it"
                )
            }
            ParseProblem::MissingFrom => f.write_str("no From address"),
            ParseProblem::InvalidFrom { value } => write!(f, "unreadable From address {value:?}"),
            ParseProblem::InvalidDate { value } => write!(f, "unreadable Date {value:?}"),
            ParseProblem::UnknownCharset { part, charset } => {
                write!(f, "part {part}: unknown charset {charset:?}, read as UTF-8")
            }
            ParseProblem::UndecodableText { part, replaced } => write!(
                f,
                "part {part}: {replaced} undecodable byte sequence(s) replaced by U+FFFD"
            ),
            ParseProblem::BadTransferEncoding { part } => {
                write!(f, "part {part}: broken base64 or quoted-printable encoding")
            }
            ParseProblem::MultipartWithoutBoundary { part } => {
                write!(f, "part {part}: multipart without a boundary")
            }
            ParseProblem::BoundaryNotFound { part, boundary } => {
                write!(f, "part {part}: MIME boundary {boundary:?} never appears")
            }
            ParseProblem::BoundaryRecovered { boundary } => {
                write!(
                    f,
                    "the parts were read by the boundary the body uses, {boundary:?}"
                )
            }
            ParseProblem::UnterminatedMultipart { boundary } => write!(
                f,
                "MIME boundary {boundary:?} is never closed; the mail may be truncated"
            ),
            ParseProblem::BodyNotParsed => f.write_str("only the headers were read"),
        }
    }
}

/// Input that is not a mail at all. The caller quarantines it with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty message")]
    Empty,
    #[error("no header could be read: not an RFC 5322 message")]
    NoHeaders,
    #[error("the header block is longer than {MAX_HEADER_BYTES} bytes")]
    HeadersTooLong,
    #[error("the MIME parser failed on this message")]
    ParserFailed,
}

/// Parses a whole mail.
pub fn parse(raw: &[u8]) -> Result<ParsedMail, ParseError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::Empty);
    }
    let parser = MessageParser::new().default_header_text();
    // mail-parser promises not to panic; a panic would still be a bug on
    // attacker-controlled input, so it becomes a quarantine reason instead.
    let message = std::panic::catch_unwind(|| parser.parse(raw))
        .map_err(|_| ParseError::ParserFailed)?
        .ok_or(ParseError::NoHeaders)?;
    if message.headers().is_empty() {
        return Err(ParseError::NoHeaders);
    }
    let mut mail = read_headers(&message, raw);
    mail.body_parsed = true;
    let structure = mime_structure_problems(&message);
    let root_boundary_lost = structure
        .iter()
        .any(|p| matches!(p, ParseProblem::BoundaryNotFound { part: 0, .. }));
    mail.problems.extend(structure);
    let blobs = if root_boundary_lost {
        read_body_without_boundary(&parser, &message, &mut mail)
    } else {
        read_body(&message, &mut mail)
    };
    Ok(ParsedMail { mail, blobs })
}

/// A multipart mail whose declared boundary never appears (a broken client
/// or a rewriting relay): read the parts by the boundary the body actually
/// uses, or failing that take the whole body as text.
fn read_body_without_boundary(
    parser: &MessageParser,
    message: &Message<'_>,
    mail: &mut IncomingMail,
) -> Vec<AttachmentBlob> {
    let body = message
        .raw_message()
        .get(message.root_part().offset_body as usize..)
        .unwrap_or_default();
    if let Some(boundary) = boundary_in_body(body) {
        let mut synthetic =
            format!("Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n").into_bytes();
        synthetic.extend_from_slice(body);
        let reparsed =
            std::panic::catch_unwind(|| parser.parse(&synthetic[..]).map(Message::into_owned));
        if let Ok(Some(reparsed)) = reparsed {
            mail.problems
                .push(ParseProblem::BoundaryRecovered { boundary });
            return read_body(&reparsed, mail);
        }
    }
    let body = String::from_utf8_lossy(body);
    let full_text = normalize_newlines(&body);
    let split = split_reply(&full_text);
    mail.text = split.new_text;
    mail.quoted = split.quoted;
    mail.body_source = BodySource::Plain;
    mail.language = detect_mail_language(&mail.subject, &mail.text);
    Vec::new()
}

/// The boundary of the first `--boundary` line of a body, if it has one.
fn boundary_in_body(body: &[u8]) -> Option<String> {
    body.split(|&b| b == b'\n').find_map(|line| {
        let line = strip_final_newline(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let candidate = line.strip_prefix(b"--")?;
        let candidate = candidate.strip_suffix(b"--").unwrap_or(candidate);
        let usable = (1..=70).contains(&candidate.len())
            && candidate
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"'()+_,-./:=?".contains(&b));
        usable.then(|| String::from_utf8_lossy(candidate).into_owned())
    })
}

/// Reads only the header block: cheap, for mail too large to parse whole.
/// The Message-ID stand-in is still the hash of the whole mail, so a later
/// full parse gives the same identity.
pub fn peek_headers(raw: &[u8]) -> Result<IncomingMail, ParseError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::Empty);
    }
    let end = header_block_end(raw).ok_or(ParseError::HeadersTooLong)?;
    let parser = MessageParser::new().default_header_text();
    let message = std::panic::catch_unwind(|| parser.parse_headers(&raw[..end]))
        .map_err(|_| ParseError::ParserFailed)?
        .ok_or(ParseError::NoHeaders)?;
    if message.headers().is_empty() {
        return Err(ParseError::NoHeaders);
    }
    let mut mail = read_headers(&message, raw);
    mail.language = detect_language(message.subject().unwrap_or_default());
    mail.problems.push(ParseProblem::BodyNotParsed);
    Ok(mail)
}

/// End of the header block (after its blank line), or of the input when it
/// has no body; `None` when the block is longer than [`MAX_HEADER_BYTES`].
fn header_block_end(raw: &[u8]) -> Option<usize> {
    let window = &raw[..raw.len().min(MAX_HEADER_BYTES)];
    let mut line_start = 0;
    for (index, &byte) in window.iter().enumerate() {
        if byte == b'\n' {
            let line = &window[line_start..index];
            if line.is_empty() || line == b"\r" {
                return Some(index + 1);
            }
            line_start = index + 1;
        }
    }
    (raw.len() <= MAX_HEADER_BYTES).then_some(raw.len())
}

fn read_headers(message: &Message<'_>, raw: &[u8]) -> IncomingMail {
    let mut problems = Vec::new();
    let headers = decoded_headers(message);

    let (message_id, message_id_synthesized) = match message.message_id() {
        Some(id) => match normalize_message_id(id) {
            Some(id) => (id, false),
            None => {
                problems.push(ParseProblem::InvalidMessageId {
                    value: clean_line(id),
                });
                (content_hash_id(raw), true)
            }
        },
        None => {
            match header_text(&headers, "message-id") {
                Some(value) => problems.push(ParseProblem::InvalidMessageId { value }),
                None => problems.push(ParseProblem::MissingMessageId),
            }
            (content_hash_id(raw), true)
        }
    };

    let from = match message.from() {
        Some(address) => {
            let first = addresses(Some(address)).into_iter().next();
            if first.is_none() {
                problems.push(ParseProblem::InvalidFrom {
                    value: header_text(&headers, "from").unwrap_or_default(),
                });
            }
            first
        }
        None => {
            match header_text(&headers, "from") {
                Some(value) => problems.push(ParseProblem::InvalidFrom { value }),
                None => problems.push(ParseProblem::MissingFrom),
            }
            None
        }
    };

    let date = match message.date() {
        Some(date) if date.is_valid() => DateTime::from_timestamp(date.to_timestamp(), 0),
        _ => None,
    };
    if date.is_none() {
        if let Some(value) = header_text(&headers, "date") {
            problems.push(ParseProblem::InvalidDate { value });
        }
    }

    let mime_type = message
        .root_part()
        .content_type()
        .map(mime_type_of)
        .unwrap_or_else(|| "text/plain".to_owned());

    // The report type is in the header; read_body adds what the parts say.
    let report = (mime_type == "multipart/report").then(|| DeliveryReport {
        report_type: report_type(message),
        ..DeliveryReport::default()
    });

    IncomingMail {
        message_id,
        message_id_synthesized,
        in_reply_to: message_ids(message.in_reply_to()),
        references: message_ids(message.references()),
        from,
        reply_to: addresses(message.reply_to()),
        to: message.all_to().flat_map(|a| addresses(Some(a))).collect(),
        cc: message.all_cc().flat_map(|a| addresses(Some(a))).collect(),
        date,
        subject: message.subject().map(clean_line).unwrap_or_default(),
        text: String::new(),
        quoted: String::new(),
        body_source: BodySource::None,
        attachments: Vec::new(),
        // The body decides when it is read; `peek_headers` decides from the subject.
        language: String::new(),
        return_path: return_path(&headers),
        mime_type,
        report,
        size: raw.len() as u64,
        body_parsed: false,
        problems,
        headers,
    }
}

fn read_body(message: &Message<'_>, mail: &mut IncomingMail) -> Vec<AttachmentBlob> {
    let mut texts = Vec::new();
    let mut source = BodySource::None;
    for &id in &message.text_body {
        let Some(part) = message.parts.get(id as usize) else {
            continue;
        };
        mail.problems.extend(charset_problems(id, part));
        match &part.body {
            PartType::Text(text) => {
                texts.push(Cow::Borrowed(text.as_ref()));
                source = BodySource::Plain;
            }
            PartType::Html(html) => {
                texts.push(Cow::Owned(html_to_text(html)));
                if source == BodySource::None {
                    source = BodySource::Html;
                }
            }
            _ => {}
        }
    }
    // Some clients send an empty text/plain beside the real HTML body.
    if texts.iter().all(|t| t.trim().is_empty()) {
        let html_texts: Vec<String> = message
            .html_body
            .iter()
            .filter_map(|&id| match &message.parts.get(id as usize)?.body {
                PartType::Html(html) => Some(html_to_text(html)),
                _ => None,
            })
            .filter(|t| !t.trim().is_empty())
            .collect();
        if !html_texts.is_empty() {
            texts = html_texts.into_iter().map(Cow::Owned).collect();
            source = BodySource::Html;
        }
    }
    let joined = texts.join("\n\n");
    let full_text = normalize_newlines(&joined);
    let split = split_reply(&full_text);
    mail.text = split.new_text;
    mail.quoted = split.quoted;
    mail.body_source = source;
    mail.language = detect_mail_language(&mail.subject, &mail.text);

    let mut blobs: Vec<AttachmentBlob> = Vec::new();
    for &id in &message.attachments {
        let Some(part) = message.parts.get(id as usize) else {
            continue;
        };
        if part.is_encoding_problem {
            mail.problems
                .push(ParseProblem::BadTransferEncoding { part: id });
        }
        let bytes = attachment_bytes(message, part);
        let sha256 = hex::encode(Sha256::digest(&bytes));
        mail.attachments.push(AttachmentMeta {
            name: attachment_name(part, mail.attachments.len() + 1),
            content_type: part
                .content_type()
                .map(mime_type_of)
                .unwrap_or_else(|| "application/octet-stream".to_owned()),
            size: bytes.len() as u64,
            sha256: sha256.clone(),
            inline: part
                .content_disposition()
                .is_some_and(|d| d.ctype().eq_ignore_ascii_case("inline")),
        });
        if !blobs.iter().any(|b| b.sha256 == sha256) {
            blobs.push(AttachmentBlob {
                sha256,
                bytes: bytes.into_owned(),
            });
        }
    }

    if mail.mime_type == "multipart/report" {
        mail.report = Some(read_report(message));
    }
    blobs
}

/// Problems with multipart boundaries, found by looking for them in the raw bytes.
fn mime_structure_problems(message: &Message<'_>) -> Vec<ParseProblem> {
    let raw = message.raw_message();
    let mut problems = Vec::new();
    for (id, part) in message.parts.iter().enumerate() {
        let Some(content_type) = part.content_type() else {
            continue;
        };
        if !content_type.ctype().eq_ignore_ascii_case("multipart") {
            continue;
        }
        let Some(boundary) = content_type.attribute("boundary") else {
            problems.push(ParseProblem::MultipartWithoutBoundary { part: id as u32 });
            continue;
        };
        let body = raw.get(part.offset_body as usize..).unwrap_or_default();
        let opening = format!("--{boundary}");
        let closing = format!("--{boundary}--");
        if !contains(body, opening.as_bytes()) {
            problems.push(ParseProblem::BoundaryNotFound {
                part: id as u32,
                boundary: clean_line(boundary),
            });
        } else if !contains(body, closing.as_bytes()) {
            problems.push(ParseProblem::UnterminatedMultipart {
                boundary: clean_line(boundary),
            });
        }
    }
    problems
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn charset_problems(id: u32, part: &MessagePart<'_>) -> Vec<ParseProblem> {
    let mut problems = Vec::new();
    if part.is_encoding_problem {
        problems.push(ParseProblem::BadTransferEncoding { part: id });
    }
    if let Some(charset) = part.content_type().and_then(|ct| ct.attribute("charset")) {
        let known = charset_decoder(charset.as_bytes()).is_some()
            || matches!(
                charset.to_ascii_lowercase().as_str(),
                "utf-8" | "utf8" | "us-ascii" | "ascii"
            );
        if !known {
            problems.push(ParseProblem::UnknownCharset {
                part: id,
                charset: clean_line(charset),
            });
        }
    }
    let text = match &part.body {
        PartType::Text(text) | PartType::Html(text) => text.as_ref(),
        _ => "",
    };
    let replaced = text
        .chars()
        .filter(|&c| c == char::REPLACEMENT_CHARACTER)
        .count();
    if replaced > 0 {
        problems.push(ParseProblem::UndecodableText { part: id, replaced });
    }
    problems
}

/// The bytes of an attachment as sent (transfer encoding removed, charset untouched).
fn attachment_bytes<'m>(message: &'m Message<'_>, part: &'m MessagePart<'_>) -> Cow<'m, [u8]> {
    match &part.body {
        PartType::Binary(bytes) | PartType::InlineBinary(bytes) => Cow::Borrowed(bytes.as_ref()),
        PartType::Message(nested) => Cow::Borrowed(nested.raw_message()),
        // Text attachments were converted to UTF-8 by the parser; the stored
        // file must be the sender's bytes, so decode the raw body again.
        PartType::Text(text) | PartType::Html(text) => {
            raw_part_body(message, part).unwrap_or(Cow::Borrowed(text.as_bytes()))
        }
        PartType::Multipart(_) => Cow::Borrowed(&[]),
    }
}

/// A part's body with its transfer encoding undone.
fn raw_part_body<'m>(message: &'m Message<'_>, part: &MessagePart<'_>) -> Option<Cow<'m, [u8]>> {
    let raw = message
        .raw_message()
        .get(part.offset_body as usize..part.offset_end as usize)?;
    match part.encoding {
        Encoding::Base64 => base64_decode(raw).map(Cow::Owned),
        Encoding::QuotedPrintable => quoted_printable_decode(raw).map(Cow::Owned),
        Encoding::None => Some(Cow::Borrowed(strip_final_newline(raw))),
    }
}

/// The line break before a MIME boundary belongs to the boundary, not the body.
fn strip_final_newline(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes.strip_suffix(b"\r").unwrap_or(bytes)
}

fn attachment_name(part: &MessagePart<'_>, position: usize) -> String {
    let declared = part.attachment_name().unwrap_or_default();
    let base = declared.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = clean_line(base)
        .trim_matches(|c: char| c == '.' || c.is_whitespace())
        .chars()
        .take(255)
        .collect();
    if cleaned.is_empty() {
        match &part.body {
            PartType::Message(nested) => nested
                .subject()
                .map(|s| format!("{}.eml", clean_line(s)))
                .unwrap_or_else(|| format!("message-{position}.eml")),
            _ => {
                let mime = part.content_type().map(mime_type_of).unwrap_or_default();
                let extension = match mime.as_str() {
                    "message/delivery-status" | "message/global-delivery-status" => {
                        return "delivery-status.txt".to_owned()
                    }
                    "text/rfc822-headers" | "message/rfc822-headers" => {
                        return "returned-headers.txt".to_owned()
                    }
                    "text/plain" => ".txt",
                    "text/html" => ".html",
                    "image/jpeg" => ".jpg",
                    "image/png" => ".png",
                    "image/gif" => ".gif",
                    "application/pdf" => ".pdf",
                    _ => "",
                };
                format!("attachment-{position}{extension}")
            }
        }
    } else {
        cleaned
    }
}

fn report_type(message: &Message<'_>) -> String {
    message
        .root_part()
        .content_type()
        .and_then(|ct| ct.attribute("report-type"))
        .map(|t| t.to_ascii_lowercase())
        .unwrap_or_default()
}

fn read_report(message: &Message<'_>) -> DeliveryReport {
    let mut report = DeliveryReport {
        report_type: report_type(message),
        ..DeliveryReport::default()
    };
    let mut returned_id = None;
    for part in &message.parts {
        let Some(content_type) = part.content_type() else {
            continue;
        };
        let mime = mime_type_of(content_type);
        match mime.as_str() {
            "message/delivery-status" | "message/global-delivery-status" => {
                let body = match raw_part_body(message, part) {
                    Some(body) => body.into_owned(),
                    None => part.contents().to_vec(),
                };
                let (original, recipients) = parse_delivery_status(&String::from_utf8_lossy(&body));
                report.recipients.extend(recipients);
                if report.original_message_id.is_none() {
                    report.original_message_id = original;
                }
            }
            "message/disposition-notification" => {
                let body = part.contents();
                let fields = status_fields(&String::from_utf8_lossy(body));
                if report.original_message_id.is_none() {
                    report.original_message_id = fields
                        .iter()
                        .find(|(name, _)| name == "original-message-id")
                        .and_then(|(_, value)| normalize_message_id(value));
                }
            }
            "message/rfc822" | "message/global" if returned_id.is_none() => {
                returned_id = match &part.body {
                    PartType::Message(nested) => nested.message_id().and_then(normalize_message_id),
                    _ => returned_headers_id(part.contents()),
                };
            }
            "text/rfc822-headers" | "message/rfc822-headers" if returned_id.is_none() => {
                let body = raw_part_body(message, part)
                    .map(Cow::into_owned)
                    .unwrap_or_else(|| part.contents().to_vec());
                returned_id = returned_headers_id(&body);
            }
            _ => {}
        }
    }
    if report.original_message_id.is_none() {
        report.original_message_id = returned_id;
    }
    report
}

fn returned_headers_id(bytes: &[u8]) -> Option<String> {
    // The header parser wants the block to end in a line break, which the
    // part body lost to its boundary.
    let mut block = bytes.to_vec();
    block.extend_from_slice(b"\r\n\r\n");
    let message = MessageParser::new().parse_headers(&block[..])?;
    message.message_id().and_then(normalize_message_id)
}

/// Parses `message/delivery-status` fields: the per-message block, then one
/// block per recipient, separated by blank lines.
fn parse_delivery_status(text: &str) -> (Option<String>, Vec<DsnRecipient>) {
    let mut original = None;
    let mut recipients = Vec::new();
    for block in text.replace("\r\n", "\n").split("\n\n") {
        let fields = status_fields(block);
        let field = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        for name in ["original-message-id", "x-original-message-id"] {
            if original.is_none() {
                original = field(name).and_then(|v| normalize_message_id(&v));
            }
        }
        let recipient = field("final-recipient").or_else(|| field("original-recipient"));
        if let Some(recipient) = recipient {
            // `rfc822; user@example.com`: the address type is not needed.
            let address = recipient
                .split_once(';')
                .map_or(recipient.as_str(), |(_, a)| a)
                .trim()
                .to_owned();
            recipients.push(DsnRecipient {
                recipient: address,
                action: field("action").unwrap_or_default().to_ascii_lowercase(),
                status: field("status")
                    .map(|s| s.split_whitespace().next().unwrap_or_default().to_owned())
                    .unwrap_or_default(),
                diagnostic: field("diagnostic-code"),
            });
        }
    }
    (original, recipients)
}

/// `Name: value` fields of one block, names lower-cased, continuation lines joined.
fn status_fields(block: &str) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in block.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    fields
}

/// Every top-level header, name lower-cased, value unfolded with encoded words decoded.
fn decoded_headers(message: &Message<'_>) -> Vec<(String, String)> {
    let raw = message.raw_message();
    message
        .headers()
        .iter()
        .map(|header| {
            let name = header.name.as_str().to_ascii_lowercase();
            let value = raw
                .get(header.offset_start as usize..header.offset_end as usize)
                .map(decode_unstructured)
                .unwrap_or_default();
            (name, value)
        })
        .collect()
}

/// A header value, unfolded and with its encoded words decoded, as one
/// [`clean_line`].
fn decode_unstructured(raw_value: &[u8]) -> String {
    match std::str::from_utf8(raw_value) {
        // clean_line alone unfolds as mail-parser does (the line breaks and
        // the white space around them become one space), without its copy of
        // the value token by token.
        Ok(value) if has_nothing_to_decode(value) => clean_line(value),
        _ => decode_unstructured_by_mail_parser(raw_value),
    }
}

/// Whether a header value has no encoded word and no line break that ends
/// it early: every line after the first is folded (starts with white space).
fn has_nothing_to_decode(value: &str) -> bool {
    !value.contains("=?")
        && value
            .trim_end()
            .split('\n')
            .skip(1)
            .all(|line| line.starts_with([' ', '\t']))
}

fn decode_unstructured_by_mail_parser(raw_value: &[u8]) -> String {
    let mut owned;
    let raw_value = if raw_value.ends_with(b"\n") {
        raw_value
    } else {
        // The field parser stops at a line end; give it one.
        owned = raw_value.to_vec();
        owned.push(b'\n');
        &owned[..]
    };
    match MessageStream::new(raw_value).parse_unstructured() {
        HeaderValue::Text(text) => clean_line(&text),
        HeaderValue::TextList(list) => clean_line(&list.join(" ")),
        _ => clean_line(&String::from_utf8_lossy(raw_value)),
    }
}

fn header_text(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty())
}

fn return_path(headers: &[(String, String)]) -> Option<String> {
    let value = headers
        .iter()
        .rev()
        .find(|(n, _)| n == "return-path")
        .map(|(_, v)| v.trim())?;
    let inner = value
        .strip_prefix('<')
        .and_then(|v| v.strip_suffix('>'))
        .unwrap_or(value);
    Some(inner.trim().to_ascii_lowercase())
}

fn message_ids(value: &HeaderValue<'_>) -> Vec<String> {
    let ids: Vec<&str> = match value {
        HeaderValue::Text(text) => vec![text.as_ref()],
        HeaderValue::TextList(list) => list.iter().map(|s| s.as_ref()).collect(),
        _ => Vec::new(),
    };
    ids.into_iter().filter_map(normalize_message_id).collect()
}

fn addresses(address: Option<&mail_parser::Address<'_>>) -> Vec<Address> {
    let Some(address) = address else {
        return Vec::new();
    };
    address
        .iter()
        .filter_map(|addr| {
            let email = addr.address.as_deref()?.trim();
            let plausible = email.contains('@')
                && !email.starts_with('@')
                && !email.ends_with('@')
                && !email.chars().any(|c| c.is_whitespace() || c.is_control());
            if !plausible {
                return None;
            }
            let name = addr
                .name
                .as_deref()
                .map(clean_line)
                .filter(|n| !n.is_empty());
            Some(Address::new(email, name.as_deref()))
        })
        .collect()
}

fn mime_type_of(content_type: &mail_parser::ContentType<'_>) -> String {
    match content_type.subtype() {
        Some(subtype) => format!("{}/{}", content_type.ctype(), subtype).to_ascii_lowercase(),
        None => content_type.ctype().to_ascii_lowercase(),
    }
}

/// `sha256:<hex>` of the raw mail: the identity of a mail without a Message-ID.
pub fn content_hash_id(raw: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(raw)))
}

/// One line of display text: control characters (CR, LF, TAB, …) become
/// spaces, runs of spaces collapse, the ends are trimmed.
pub(crate) fn clean_line(text: &str) -> String {
    // The ends go whatever they hold (a header value's leading space and
    // line end); what is left is often clean already.
    let text = text
        .trim_start_matches(|c: char| c == ' ' || c.is_control())
        .trim_end_matches(|c: char| c.is_whitespace() || c.is_control());
    if is_clean_line(text) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    // Leading spaces are dropped as if a space came before them.
    let mut after_space = true;
    for ch in text.chars() {
        let ch = if ch.is_control() { ' ' } else { ch };
        if ch == ' ' {
            if after_space {
                continue;
            }
            after_space = true;
        } else {
            after_space = false;
        }
        out.push(ch);
    }
    let kept = out.trim_end().len();
    out.truncate(kept);
    out
}

/// Whether [`clean_line`] would return `text` unchanged: no control
/// character, no space first, no two spaces in a row, no white space last.
/// Most header values are clean, and looking at their bytes is cheaper than
/// building them again character by character.
fn is_clean_line(text: &str) -> bool {
    // A space first counts as a second space.
    let mut previous = b' ';
    for &byte in text.as_bytes() {
        let ascii_control = byte < 0x20 || byte == 0x7f;
        let double_space = byte == b' ' && previous == b' ';
        // U+0080 to U+009F, the other control characters, are 0xC2 0x80 to 0xC2 0x9F.
        let c1_control = previous == 0xc2 && (0x80..=0x9f).contains(&byte);
        if ascii_control || double_space || c1_control {
            return false;
        }
        previous = byte;
    }
    !text.ends_with(char::is_whitespace)
}

/// `text` with CRLF and lone CR line ends as LF, copied only when it has a CR.
fn normalize_newlines(text: &str) -> Cow<'_, str> {
    if !text.contains('\r') {
        return Cow::Borrowed(text);
    }
    let unix = text.replace("\r\n", "\n");
    if unix.contains('\r') {
        Cow::Owned(unix.replace('\r', "\n"))
    } else {
        Cow::Owned(unix)
    }
}

impl IncomingMail {
    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All headers named `name` (any case), in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The To and Cc addresses.
    pub fn recipients(&self) -> impl Iterator<Item = &Address> {
        self.to.iter().chain(self.cc.iter())
    }

    /// What the rules see of this mail.
    pub fn to_facts(&self, channel: &str, received_at: DateTime<Utc>) -> MailFacts {
        MailFacts {
            subject: self.subject.clone(),
            text: self.text.clone(),
            sender: self.from.clone().unwrap_or_default(),
            recipients: self.recipients().cloned().collect(),
            headers: self.headers.clone(),
            attachments: self
                .attachments
                .iter()
                .map(|a| AttachmentFacts {
                    name: a.name.clone(),
                    content_type: a.content_type.clone(),
                    size: a.size,
                })
                .collect(),
            language: self.language.clone(),
            channel: channel.to_owned(),
            received_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The straightforward version `clean_line` must agree with.
    fn clean_line_by_pushing(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for ch in text.chars() {
            let ch = if ch.is_control() { ' ' } else { ch };
            if ch == ' ' && (out.is_empty() || out.ends_with(' ')) {
                continue;
            }
            out.push(ch);
        }
        out.trim_end().to_owned()
    }

    #[test]
    fn clean_line_folds_controls_and_spaces() {
        assert_eq!(clean_line("  a\r\n  b\tc \u{3000}"), "a b c");
        assert_eq!(clean_line("\u{7}"), "");
        assert_eq!(clean_line("主题：\u{0}投诉  "), "主题： 投诉");
    }

    proptest! {
        #[test]
        fn clean_line_agrees_with_the_pushing_version(
            text in "([a-z]{0,3}|[ \\t\\r\\n\\u{0}\\u{7f}\\u{80}\\u{85}\\u{9f}\\u{3000}\\u{a0}]{0,3}|[§Â]|中){0,12}"
        ) {
            prop_assert_eq!(clean_line(&text), clean_line_by_pushing(&text));
        }
    }

    proptest! {
        #[test]
        fn header_values_with_nothing_to_decode_read_as_mail_parser_reads_them(
            value in concat!(
                "([a-z]{1,3}|[ \\t\\r\\n]{1,3}|\\r\\n[ \\t]|=|\\?|=\\?utf-8\\?B\\?5Lit\\?=",
                "|中|é|\\u{3000}|\\u{85}|\\u{1}){0,12}",
            )
        ) {
            prop_assert_eq!(
                decode_unstructured(value.as_bytes()),
                decode_unstructured_by_mail_parser(value.as_bytes())
            );
        }
    }

    #[test]
    fn header_values_take_both_ways() {
        assert!(has_nothing_to_decode(" Gas leak in\r\n the hall\r\n"));
        assert!(!has_nothing_to_decode(" =?utf-8?B?5Lit?=\r\n"));
        assert!(!has_nothing_to_decode(" a\r\nb\r\n"));
    }

    #[test]
    fn only_a_header_peek_takes_the_language_from_the_subject() {
        let raw = "From: a@example.com\r\nMessage-ID: <l@x>\r\nSubject: The gas meter in our building has been broken for a week\r\n\r\n燃气表坏了一个星期，一直没有人来修理，请尽快安排师傅上门。\r\n";
        assert_eq!(peek_headers(raw.as_bytes()).unwrap().language, "en");
        assert_eq!(parse(raw.as_bytes()).unwrap().mail.language, "zh");
    }
}

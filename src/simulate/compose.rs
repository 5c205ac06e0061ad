//! The raw message of a mail step, as a customer's or a department's mail
//! client would send it: inline steps are built with lettre's MIME builder
//! (headers RFC 2047-encoded, body UTF-8), `.eml` files are taken as they are,
//! and a reply gets its To, In-Reply-To and References from the mail it answers.

use std::time::SystemTime;

use chrono::{DateTime, Utc};
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, SinglePart};
use lettre::Message;

use super::timeline::{InlineMail, MailSource};

/// What a reply needs of the outgoing mail it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepliedMail {
    /// Without angle brackets.
    pub message_id: String,
    /// Without angle brackets, oldest first.
    pub references: Vec<String>,
    pub subject: String,
    /// Where answers go: its Reply-To (a reply-token address for forwards), else its From.
    pub answer_to: String,
    /// Its first recipient: who answers by default.
    pub recipient: String,
}

/// Builds the raw bytes of a mail step.
pub fn compose(
    source: &MailSource,
    reply: Option<&RepliedMail>,
    step: usize,
    at: DateTime<Utc>,
    complaint_address: &str,
) -> Result<Vec<u8>, String> {
    match source {
        MailSource::Eml { bytes, .. } => Ok(match reply {
            Some(replied) => rewrite_reply_headers(bytes, replied),
            None => bytes.clone(),
        }),
        MailSource::Inline(mail) => inline(mail, reply, step, at, complaint_address),
    }
}

fn inline(
    mail: &InlineMail,
    reply: Option<&RepliedMail>,
    step: usize,
    at: DateTime<Utc>,
    complaint_address: &str,
) -> Result<Vec<u8>, String> {
    let from_text = match (&mail.from, reply) {
        (Some(from), _) => from.clone(),
        (None, Some(replied)) => replied.recipient.clone(),
        (None, None) => return Err("`from`: the mail has no sender".into()),
    };
    let from = mailbox(&from_text).map_err(|e| format!("`from`: {e}"))?;
    let to_texts = if !mail.to.is_empty() {
        mail.to.clone()
    } else if let Some(replied) = reply {
        vec![replied.answer_to.clone()]
    } else {
        vec![complaint_address.to_owned()]
    };
    let subject = match (&mail.subject, reply) {
        (Some(subject), _) => subject.clone(),
        (None, Some(replied)) => format!("Re: {}", replied.subject),
        (None, None) => String::new(),
    };
    let message_id = match &mail.message_id {
        Some(id) => id.clone(),
        None => format!("step{step}.timeline@{}", from.email.domain().to_lowercase()),
    };
    let mut builder = Message::builder()
        .from(from)
        .subject(subject)
        .date(SystemTime::from(at))
        .message_id(Some(format!("<{message_id}>")));
    for text in &to_texts {
        builder = builder.to(mailbox(text).map_err(|e| format!("`to`: {e}"))?);
    }
    for text in &mail.cc {
        builder = builder.cc(mailbox(text).map_err(|e| format!("`cc`: {e}"))?);
    }
    if let Some(replied) = reply {
        let mut references = replied.references.clone();
        references.push(replied.message_id.clone());
        let references: Vec<String> = references.iter().map(|id| format!("<{id}>")).collect();
        builder = builder
            .in_reply_to(format!("<{}>", replied.message_id))
            .references(references.join(" "));
    }
    for (name, value) in &mail.headers {
        let name = HeaderName::new_from_ascii(name.clone())
            .map_err(|_| format!("`headers.{name}`: not a header name"))?;
        builder = builder.raw_header(HeaderValue::new(name, value.clone()));
    }
    let message = builder
        .singlepart(SinglePart::plain(mail.body.clone()))
        .map_err(|e| format!("the mail cannot be built: {e}"))?;
    Ok(message.formatted())
}

/// `Name <address>`, `"Name" <address>` or a bare address. Display names may
/// be any text (Chinese included); the builder encodes them.
fn mailbox(text: &str) -> Result<Mailbox, String> {
    let text = text.trim();
    let (name, address) = match (text.rfind('<'), text.ends_with('>')) {
        (Some(open), true) => {
            let name = text[..open].trim().trim_matches('"').trim();
            (
                (!name.is_empty()).then(|| name.to_owned()),
                &text[open + 1..text.len() - 1],
            )
        }
        _ => (None, text),
    };
    let address = address
        .trim()
        .parse()
        .map_err(|e| format!("`{text}` is not a mail address ({e})"))?;
    Ok(Mailbox::new(name, address))
}

/// The mail with its To, In-Reply-To and References replaced by those of a
/// reply to `replied`; everything else is kept byte for byte.
fn rewrite_reply_headers(raw: &[u8], replied: &RepliedMail) -> Vec<u8> {
    let crlf = raw.windows(2).any(|w| w == b"\r\n");
    let newline: &[u8] = if crlf { b"\r\n" } else { b"\n" };
    let mut references = replied.references.clone();
    references.push(replied.message_id.clone());
    let references: Vec<String> = references.iter().map(|id| format!("<{id}>")).collect();
    let mut out = Vec::with_capacity(raw.len() + 200);
    for line in [
        format!("To: {}", replied.answer_to),
        format!("In-Reply-To: <{}>", replied.message_id),
        format!("References: {}", references.join(" ")),
    ] {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(newline);
    }
    let replaced = |line: &[u8]| {
        let lower = line.to_ascii_lowercase();
        [b"to:".as_slice(), b"in-reply-to:", b"references:"]
            .iter()
            .any(|name| lower.starts_with(name))
    };
    let mut at = 0;
    let mut dropping = false;
    while at < raw.len() {
        let end = raw[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(raw.len(), |p| at + p + 1);
        let line = &raw[at..end];
        if line == b"\n" || line == b"\r\n" {
            out.extend_from_slice(&raw[at..]);
            return out;
        }
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continuation {
            dropping = replaced(line);
        }
        if !dropping {
            out.extend_from_slice(line);
        }
        at = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::inbound::parse;

    fn replied() -> RepliedMail {
        RepliedMail {
            message_id: "TS-2026-000001.forward.1@complaintd.example".into(),
            references: vec!["c1@example.com".into()],
            subject: "[TS-2026-000001] 转派：账单有误".into(),
            answer_to: "complaints+ts-2026-000001.billing_dept.abc@complaintd.example".into(),
            recipient: "billing@gas.example".into(),
        }
    }

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-09-30T17:50:00+08:00")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn an_inline_complaint_reads_back_as_written() {
        let mail = InlineMail {
            from: Some("王女士 <Wang@Example.com>".into()),
            subject: Some("燃气费多收".into()),
            body: "这个月的气费多收了。\n请核实。".into(),
            headers: vec![("X-Channel-Note".into(), "热线转来".into())],
            ..InlineMail::default()
        };
        let raw = compose(
            &MailSource::Inline(mail),
            None,
            3,
            at(),
            "complaints@corp.example",
        )
        .unwrap();
        let parsed = parse(&raw).unwrap().mail;
        let from = parsed.from.clone().unwrap();
        assert_eq!(
            (from.email.as_str(), from.name.as_deref()),
            ("wang@example.com", Some("王女士"))
        );
        assert_eq!(parsed.to[0].email, "complaints@corp.example");
        assert_eq!(parsed.subject, "燃气费多收");
        assert_eq!(parsed.text.trim_end(), "这个月的气费多收了。\n请核实。");
        assert_eq!(parsed.message_id, "step3.timeline@example.com");
        assert_eq!(parsed.date, Some(at()));
        assert_eq!(parsed.header("x-channel-note"), Some("热线转来"));
        assert!(parsed.in_reply_to.is_empty());
        assert!(raw.is_ascii(), "headers and body are transfer-encoded");
    }

    #[test]
    fn a_reply_answers_the_mail_it_replies_to() {
        let mail = InlineMail {
            body: "已联系客户。".into(),
            ..InlineMail::default()
        };
        let raw = compose(
            &MailSource::Inline(mail),
            Some(&replied()),
            4,
            at(),
            "complaints@corp.example",
        )
        .unwrap();
        let parsed = parse(&raw).unwrap().mail;
        assert_eq!(parsed.from.unwrap().email, "billing@gas.example");
        assert_eq!(parsed.to[0].email, replied().answer_to);
        assert_eq!(parsed.subject, "Re: [TS-2026-000001] 转派：账单有误");
        assert_eq!(parsed.in_reply_to, [replied().message_id]);
        assert_eq!(
            parsed.references,
            [
                "c1@example.com",
                "TS-2026-000001.forward.1@complaintd.example"
            ]
        );
        assert_eq!(parsed.message_id, "step4.timeline@gas.example");
    }

    #[test]
    fn an_eml_reply_gets_new_threading_headers_and_keeps_the_rest() {
        let eml = b"From: billing@gas.example\r\nTo: someone@else.example,\r\n  another@else.example\r\nSubject: Re: x\r\nIn-Reply-To: <old@x>\r\n\r\nbody\r\nTo: not a header\r\n";
        let raw = compose(
            &MailSource::Eml {
                path: "r.eml".into(),
                bytes: eml.to_vec(),
            },
            Some(&replied()),
            1,
            at(),
            "complaints@corp.example",
        )
        .unwrap();
        let text = String::from_utf8(raw).unwrap();
        assert_eq!(
            text,
            format!(
                "To: {}\r\nIn-Reply-To: <{}>\r\nReferences: <c1@example.com> <{}>\r\nFrom: billing@gas.example\r\nSubject: Re: x\r\n\r\nbody\r\nTo: not a header\r\n",
                replied().answer_to,
                replied().message_id,
                replied().message_id
            )
        );
    }

    #[test]
    fn an_eml_without_a_reply_is_taken_as_it_is() {
        let eml = b"From: a@b.example\nSubject: x\n\nbody\n".to_vec();
        let source = MailSource::Eml {
            path: "x.eml".into(),
            bytes: eml.clone(),
        };
        assert_eq!(compose(&source, None, 1, at(), "c@d.example"), Ok(eml));
    }

    #[test]
    fn a_bad_address_is_an_error_not_a_panic() {
        let mail = InlineMail {
            from: Some("王女士 <not an address>".into()),
            ..InlineMail::default()
        };
        let error = compose(&MailSource::Inline(mail), None, 1, at(), "c@d.example").unwrap_err();
        assert!(
            error.starts_with("`from`: `王女士 <not an address>` is not a mail address"),
            "{error}"
        );
    }
}

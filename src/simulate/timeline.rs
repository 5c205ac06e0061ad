//! The timeline file of `complaintd simulate`: TOML an administrator writes,
//! read into checked [`Step`]s with absolute times.
//!
//! Every problem names the file, the step (counted from 1) and the key, so a
//! mistake in a long timeline is found without guessing. The format is
//! described in `docs/simulate.md`.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use toml::{Table, Value};

use crate::case::CaseId;
use crate::rules::diag::did_you_mean;

/// Keys of the `[settings]` table.
const SETTINGS_KEYS: &[&str] = &[
    "complaint_address",
    "message_id_host",
    "organisation",
    "case_prefix",
    "acks_per_sender_per_hour",
    "time_zone",
    "channel",
    "mailbox",
];

/// Keys of a `[[step]]` table.
const STEP_KEYS: &[&str] = &[
    "at",
    "after",
    "advance",
    "until",
    "mail",
    "from",
    "to",
    "cc",
    "subject",
    "body",
    "headers",
    "message_id",
    "reply_to_forward",
    "department",
    "reply_to_acknowledgement",
    "reply_to_mail",
    "channel",
    "mailbox",
];

/// Headers that have their own step key or that the composer writes itself.
const RESERVED_HEADERS: &[(&str, &str)] = &[
    ("from", "use the key `from`"),
    ("to", "use the key `to`"),
    ("cc", "use the key `cc`"),
    ("subject", "use the key `subject`"),
    ("message-id", "use the key `message_id`"),
    (
        "in-reply-to",
        "use `reply_to_forward`, `reply_to_acknowledgement` or `reply_to_mail`",
    ),
    (
        "references",
        "use `reply_to_forward`, `reply_to_acknowledgement` or `reply_to_mail`",
    ),
    ("date", "the step's time is the mail's date"),
    ("mime-version", "the mail is built as MIME 1.0 text"),
];

/// Why `Content-*` headers cannot be set on a written mail.
const WHOLE_MAIL_HINT: &str =
    "the body is plain UTF-8 text; give a whole mail with `mail = \"FILE.eml\"`";

/// A timeline read and checked: settings and steps in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    /// The file it was read from (for messages).
    pub path: PathBuf,
    pub settings: TimelineSettings,
    pub steps: Vec<Step>,
}

/// What the simulated daemon is configured with (`[settings]`).
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineSettings {
    pub complaint_address: String,
    pub message_id_host: String,
    pub organisation: String,
    pub case_prefix: String,
    pub acks_per_sender_per_hour: u32,
    /// Where case numbers take their year from when the policy has no calendar.
    pub time_zone: Tz,
    /// The channel of mail steps that name none; `None`: the policy's first.
    pub channel: Option<String>,
    /// The mailbox of mail steps that name none.
    pub mailbox: String,
}

impl Default for TimelineSettings {
    fn default() -> Self {
        TimelineSettings {
            complaint_address: "complaints@complaintd.example".to_owned(),
            message_id_host: "complaintd.example".to_owned(),
            organisation: String::new(),
            case_prefix: "TS".to_owned(),
            acks_per_sender_per_hour: 3,
            time_zone: chrono_tz::UTC,
            channel: None,
            mailbox: "INBOX".to_owned(),
        }
    }
}

/// One step: a time and what happens then.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// 1 for the first `[[step]]` of the file.
    pub number: usize,
    /// When it happens (the clock is moved here, firing everything due on the way).
    pub at: DateTime<Utc>,
    pub action: StepAction,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StepAction {
    /// Only the clock moves.
    Advance,
    /// A mail arrives.
    Mail(Box<MailStep>),
}

/// A mail arriving in a mailbox.
#[derive(Debug, Clone, PartialEq)]
pub struct MailStep {
    pub source: MailSource,
    /// The earlier mail this one answers; its headers are filled from it.
    pub reply: Option<ReplyTarget>,
    /// `None`: the timeline's default channel.
    pub channel: Option<String>,
    /// `None`: the timeline's default mailbox.
    pub mailbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MailSource {
    /// A whole RFC 5322 message from a file.
    Eml {
        path: PathBuf,
        bytes: Vec<u8>,
    },
    Inline(InlineMail),
}

/// A mail written in the timeline, built into a MIME message when it arrives.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InlineMail {
    /// `Name <address>` or a bare address; `None`: filled from the mail replied to.
    pub from: Option<String>,
    /// Empty: the complaint address, or filled from the mail replied to.
    pub to: Vec<String>,
    pub cc: Vec<String>,
    /// `None`: `Re: ` and the subject of the mail replied to, else empty.
    pub subject: Option<String>,
    pub body: String,
    /// Further headers, in the order written.
    pub headers: Vec<(String, String)>,
    /// Without angle brackets; `None`: `stepN.timeline@<sender's domain>`.
    pub message_id: Option<String>,
}

/// Which earlier outgoing mail a step answers.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyTarget {
    /// The latest forward of a case (to `department`, else to the case's department).
    Forward {
        case: CaseSelector,
        department: Option<String>,
    },
    /// The acknowledgement of a case.
    Acknowledgement { case: CaseSelector },
    /// An outbox entry by its id (`TS-2026-000001.reminder.1`).
    Mail { outbox_id: String },
}

/// A case as a timeline names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseSelector {
    /// The N-th case the simulation opened (1 for the first).
    Nth(u32),
    Id(CaseId),
}

impl std::fmt::Display for CaseSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaseSelector::Nth(n) => write!(f, "case #{n}"),
            CaseSelector::Id(id) => write!(f, "case {id}"),
        }
    }
}

/// A problem of a timeline file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct TimelineError {
    pub path: PathBuf,
    /// The step (from 1), when the problem is in one.
    pub step: Option<usize>,
    /// The key (`settings.time_zone`, `at`, …), when the problem is in one.
    pub key: Option<String>,
    pub message: String,
}

impl TimelineError {
    fn render(&self) -> String {
        let mut out = format!("{}: ", self.path.display());
        if let Some(step) = self.step {
            out.push_str(&format!("step {step}: "));
        }
        if let Some(key) = &self.key {
            out.push_str(&format!("`{key}`: "));
        }
        out.push_str(&self.message);
        out
    }
}

/// Reads and checks a timeline file; `mail = "…"` paths are relative to its directory.
pub fn load_timeline(path: &Path) -> Result<Timeline, TimelineError> {
    let text = std::fs::read_to_string(path).map_err(|e| TimelineError {
        path: path.to_owned(),
        step: None,
        key: None,
        message: format!("cannot read the timeline: {e}"),
    })?;
    let base = path.parent().unwrap_or(Path::new(""));
    parse_timeline(&text, path, base)
}

/// Reads a timeline from `text`; `path` names it in messages, `mail = "…"`
/// paths are relative to `base`.
pub fn parse_timeline(text: &str, path: &Path, base: &Path) -> Result<Timeline, TimelineError> {
    let reader = Reader { path, base };
    let table: Table = text.parse().map_err(|e: toml::de::Error| {
        reader.error(
            None,
            None,
            format!("not valid TOML: {}", e.to_string().trim_end()),
        )
    })?;
    for key in table.keys() {
        if key != "settings" && key != "step" {
            return Err(reader.unknown_key(None, key, &["settings", "step"]));
        }
    }
    let settings = match table.get("settings") {
        None => TimelineSettings::default(),
        Some(Value::Table(settings)) => reader.settings(settings)?,
        Some(_) => {
            return Err(reader.error(
                None,
                Some("settings"),
                "must be a table: `[settings]`".into(),
            ))
        }
    };
    let steps = match table.get("step") {
        Some(Value::Array(steps)) if !steps.is_empty() => steps,
        Some(Value::Array(_)) | None => {
            return Err(reader.error(
                None,
                None,
                "the timeline has no steps: add `[[step]]` tables, the first with `at = \"2026-09-30T17:50:00+08:00\"`".into(),
            ))
        }
        Some(_) => {
            return Err(reader.error(
                None,
                Some("step"),
                "must be an array of tables: write each step as `[[step]]`".into(),
            ))
        }
    };
    let mut out = Vec::with_capacity(steps.len());
    let mut previous: Option<DateTime<Utc>> = None;
    for (index, step) in steps.iter().enumerate() {
        let number = index + 1;
        let Value::Table(step) = step else {
            return Err(reader.error(
                Some(number),
                None,
                "must be a table: write each step as `[[step]]`".into(),
            ));
        };
        let parsed = reader.step(number, step, previous)?;
        previous = Some(parsed.at);
        out.push(parsed);
    }
    Ok(Timeline {
        path: path.to_owned(),
        settings,
        steps: out,
    })
}

struct Reader<'a> {
    path: &'a Path,
    base: &'a Path,
}

impl Reader<'_> {
    fn error(&self, step: Option<usize>, key: Option<&str>, message: String) -> TimelineError {
        TimelineError {
            path: self.path.to_owned(),
            step,
            key: key.map(str::to_owned),
            message,
        }
    }

    fn unknown_key(&self, step: Option<usize>, key: &str, known: &[&str]) -> TimelineError {
        let hint = did_you_mean(key, known.iter().copied())
            .map(|k| format!(" (did you mean `{k}`?)"))
            .unwrap_or_default();
        self.error(
            step,
            Some(key),
            format!("unknown key{hint}; known keys: {}", known.join(", ")),
        )
    }

    fn settings(&self, table: &Table) -> Result<TimelineSettings, TimelineError> {
        let mut settings = TimelineSettings::default();
        for (key, value) in table {
            let full = format!("settings.{key}");
            let key_error = |message: String| self.error(None, Some(&full), message);
            match key.as_str() {
                "complaint_address" => {
                    let address = string(value).map_err(key_error)?;
                    if !is_plain_address(&address) {
                        return Err(key_error(format!(
                            "`{address}` is not a mail address such as complaints@corp.example"
                        )));
                    }
                    settings.complaint_address = address.to_lowercase();
                }
                "message_id_host" => {
                    let host = string(value).map_err(key_error)?;
                    let ok = !host.is_empty()
                        && host
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
                    if !ok {
                        return Err(key_error(format!(
                            "`{host}` is not a host name such as mail.corp.example"
                        )));
                    }
                    settings.message_id_host = host;
                }
                "organisation" => settings.organisation = string(value).map_err(key_error)?,
                "case_prefix" => {
                    let prefix = string(value).map_err(key_error)?;
                    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_alphanumeric()) {
                        return Err(key_error(format!(
                            "`{prefix}` must be letters and digits, such as TS"
                        )));
                    }
                    settings.case_prefix = prefix;
                }
                "acks_per_sender_per_hour" => {
                    settings.acks_per_sender_per_hour = match value {
                        Value::Integer(n) => u32::try_from(*n).map_err(|_| {
                            key_error(format!("{n} is not a count of acknowledgements"))
                        })?,
                        other => {
                            return Err(key_error(format!(
                                "must be a whole number, not {}",
                                describe(other)
                            )))
                        }
                    }
                }
                "time_zone" => {
                    let zone = string(value).map_err(key_error)?;
                    settings.time_zone = zone.parse::<Tz>().map_err(|_| {
                        key_error(format!(
                            "unknown time zone `{zone}`; write an IANA name such as Asia/Shanghai"
                        ))
                    })?;
                }
                "channel" => settings.channel = Some(name(value).map_err(key_error)?),
                "mailbox" => settings.mailbox = name(value).map_err(key_error)?,
                other => {
                    let mut error = self.unknown_key(None, other, SETTINGS_KEYS);
                    error.key = Some(full);
                    return Err(error);
                }
            }
        }
        Ok(settings)
    }

    fn step(
        &self,
        number: usize,
        table: &Table,
        previous: Option<DateTime<Utc>>,
    ) -> Result<Step, TimelineError> {
        let at_step = Some(number);
        for key in table.keys() {
            if !STEP_KEYS.contains(&key.as_str()) {
                return Err(self.unknown_key(at_step, key, STEP_KEYS));
            }
        }
        let err = |key: &str, message: String| self.error(at_step, Some(key), message);
        let present: Vec<&str> = ["at", "after", "advance", "until"]
            .into_iter()
            .filter(|k| table.contains_key(*k))
            .collect();
        let time_key = match present.as_slice() {
            [one] => *one,
            [] => {
                return Err(self.error(
                    at_step,
                    None,
                    "needs a time: `at = \"2026-09-30T17:50:00+08:00\"` or `after = \"2h\"` \
                     for a mail, `until = \"…\"` or `advance = \"3 days\"` to move the clock"
                        .into(),
                ))
            }
            [first, second, ..] => {
                return Err(err(
                    second,
                    format!("a step has one time; it already has `{first}`"),
                ))
            }
        };
        let value = &table[time_key];
        let at = match time_key {
            "at" | "until" => instant(value).map_err(|m| err(time_key, m))?,
            _ => {
                let Some(previous) = previous else {
                    return Err(err(
                        time_key,
                        "the first step needs an absolute time: `at = \"…\"` or `until = \"…\"`"
                            .into(),
                    ));
                };
                let text = string(value).map_err(|m| err(time_key, m))?;
                previous + duration(&text).map_err(|m| err(time_key, m))?
            }
        };
        if let Some(previous) = previous {
            if at < previous {
                return Err(err(
                    time_key,
                    format!(
                        "{} is before the previous step ({}); steps run forward in time",
                        at.to_rfc3339(),
                        previous.to_rfc3339()
                    ),
                ));
            }
        }
        let mail_keys: Vec<&str> = STEP_KEYS[4..]
            .iter()
            .copied()
            .filter(|k| table.contains_key(*k))
            .collect();
        let action = if time_key == "advance" || time_key == "until" {
            if let Some(key) = mail_keys.first() {
                return Err(err(
                    key,
                    format!(
                        "a step with `{time_key}` only moves the clock; \
                         give a mail its time with `at` or `after`"
                    ),
                ));
            }
            StepAction::Advance
        } else {
            if mail_keys.is_empty() {
                return Err(err(
                    time_key,
                    format!(
                        "this step has no mail; to only move the clock write `{}` instead of `{time_key}`",
                        if time_key == "at" { "until" } else { "advance" }
                    ),
                ));
            }
            StepAction::Mail(Box::new(self.mail_step(number, table)?))
        };
        Ok(Step { number, at, action })
    }

    fn mail_step(&self, number: usize, table: &Table) -> Result<MailStep, TimelineError> {
        let at_step = Some(number);
        let err = |key: &str, message: String| self.error(at_step, Some(key), message);
        let text_of = |key: &str| -> Result<Option<String>, TimelineError> {
            table
                .get(key)
                .map(|v| string(v).map_err(|m| err(key, m)))
                .transpose()
        };
        let reply_keys: Vec<&str> = [
            "reply_to_forward",
            "reply_to_acknowledgement",
            "reply_to_mail",
        ]
        .into_iter()
        .filter(|k| table.contains_key(*k))
        .collect();
        if let [first, second, ..] = reply_keys.as_slice() {
            return Err(err(
                second,
                format!("a mail answers one earlier mail; this one already has `{first}`"),
            ));
        }
        let department = text_of("department")?;
        let reply = match reply_keys.first().copied() {
            None => None,
            Some("reply_to_forward") => Some(ReplyTarget::Forward {
                case: case_selector(&table["reply_to_forward"])
                    .map_err(|m| err("reply_to_forward", m))?,
                department: department.clone(),
            }),
            Some("reply_to_acknowledgement") => Some(ReplyTarget::Acknowledgement {
                case: case_selector(&table["reply_to_acknowledgement"])
                    .map_err(|m| err("reply_to_acknowledgement", m))?,
            }),
            Some(_) => {
                let id = text_of("reply_to_mail")?.unwrap_or_default();
                if !id.contains('.') {
                    return Err(err(
                        "reply_to_mail",
                        format!(
                            "`{id}` is not an outgoing mail's id such as TS-2026-000001.reminder.1"
                        ),
                    ));
                }
                Some(ReplyTarget::Mail { outbox_id: id })
            }
        };
        if department.is_some() && !matches!(reply, Some(ReplyTarget::Forward { .. })) {
            return Err(err(
                "department",
                "only a reply to a forward (`reply_to_forward`) names a department".into(),
            ));
        }
        let channel = table
            .get("channel")
            .map(|v| name(v).map_err(|m| err("channel", m)))
            .transpose()?;
        let mailbox = table
            .get("mailbox")
            .map(|v| name(v).map_err(|m| err("mailbox", m)))
            .transpose()?;

        let inline_keys: Vec<&str> = [
            "from",
            "to",
            "cc",
            "subject",
            "body",
            "headers",
            "message_id",
        ]
        .into_iter()
        .filter(|k| table.contains_key(*k))
        .collect();
        let source = if let Some(file) = text_of("mail")? {
            if let Some(key) = inline_keys.first() {
                return Err(err(
                    key,
                    format!(
                        "`mail = \"{file}\"` is a whole mail; write its headers in the file, not as `{key}`"
                    ),
                ));
            }
            let path = self.base.join(&file);
            let bytes = std::fs::read(&path)
                .map_err(|e| err("mail", format!("cannot read {}: {e}", path.display())))?;
            MailSource::Eml { path, bytes }
        } else {
            let from = text_of("from")?;
            if let Some(from) = &from {
                addresses(Some(&Value::String(from.clone()))).map_err(|m| err("from", m))?;
            }
            if from.is_none() && reply.is_none() {
                return Err(self.error(
                    at_step,
                    None,
                    "a mail needs a sender: `from = \"Name <address>\"` \
                     (a reply to a forward or an acknowledgement has one by default)"
                        .into(),
                ));
            }
            let message_id = text_of("message_id")?.map(|id| {
                id.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            });
            if let Some(id) = &message_id {
                let ok = id.contains('@')
                    && id.is_ascii()
                    && !id.bytes().any(|b| {
                        b.is_ascii_whitespace() || b.is_ascii_control() || b == b'<' || b == b'>'
                    });
                if !ok {
                    return Err(err(
                        "message_id",
                        format!("`{id}` is not a Message-ID such as complaint-1@example.com"),
                    ));
                }
            }
            MailSource::Inline(InlineMail {
                from,
                to: addresses(table.get("to")).map_err(|m| err("to", m))?,
                cc: addresses(table.get("cc")).map_err(|m| err("cc", m))?,
                subject: text_of("subject")?,
                body: text_of("body")?.unwrap_or_default(),
                headers: self.headers(number, table.get("headers"))?,
                message_id,
            })
        };
        Ok(MailStep {
            source,
            reply,
            channel,
            mailbox,
        })
    }

    fn headers(
        &self,
        number: usize,
        value: Option<&Value>,
    ) -> Result<Vec<(String, String)>, TimelineError> {
        let Some(value) = value else {
            return Ok(Vec::new());
        };
        let Value::Table(table) = value else {
            return Err(self.error(
                Some(number),
                Some("headers"),
                format!(
                    "must be a table such as `headers = {{ \"Auto-Submitted\" = \"auto-replied\" }}`, not {}",
                    describe(value)
                ),
            ));
        };
        let mut out = Vec::new();
        for (name, value) in table {
            let key = format!("headers.{name}");
            let err = |message: String| self.error(Some(number), Some(&key), message);
            let valid_name =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
            if !valid_name {
                return Err(err(
                    "a header name is letters, digits and dashes, such as Auto-Submitted".into(),
                ));
            }
            let reserved = RESERVED_HEADERS
                .iter()
                .find(|(reserved, _)| reserved.eq_ignore_ascii_case(name))
                .map(|(_, hint)| *hint)
                .or_else(|| {
                    name.to_ascii_lowercase()
                        .starts_with("content-")
                        .then_some(WHOLE_MAIL_HINT)
                });
            if let Some(hint) = reserved {
                return Err(err(format!("cannot be set here: {hint}")));
            }
            let text = string(value).map_err(&err)?;
            if text.chars().any(|c| c.is_control()) {
                return Err(err(
                    "a header value is one line without control characters".into()
                ));
            }
            out.push((name.clone(), text));
        }
        Ok(out)
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "a whole number",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "true or false",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "a list",
        Value::Table(_) => "a table",
    }
}

fn string(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        other => Err(format!("must be a string, not {}", describe(other))),
    }
}

/// A channel or mailbox name: one word.
fn name(value: &Value) -> Result<String, String> {
    let text = string(value)?;
    if text.trim().is_empty() || text.chars().any(char::is_control) {
        return Err("must be a name such as `own`".into());
    }
    Ok(text.trim().to_owned())
}

/// `local@domain` without a display name.
fn is_plain_address(text: &str) -> bool {
    match text.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && text
                    .chars()
                    .all(|c| !c.is_whitespace() && !c.is_control() && c != '<' && c != '>')
        }
        None => false,
    }
}

/// One address or a list of them.
fn addresses(value: Option<&Value>) -> Result<Vec<String>, String> {
    let list = match value {
        None => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| string(item).map_err(|m| format!("each address {m}")))
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            return Err(format!(
                "must be an address or a list of addresses, not {}",
                describe(other)
            ))
        }
    };
    for address in &list {
        if !address.contains('@') || address.chars().any(char::is_control) {
            return Err(format!(
                "`{address}` is not a mail address such as `Name <someone@example.com>`"
            ));
        }
    }
    Ok(list)
}

/// An RFC 3339 time with its offset, quoted or as a TOML date-time.
fn instant(value: &Value) -> Result<DateTime<Utc>, String> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Datetime(d) => d.to_string(),
        other => {
            return Err(format!(
                "must be a time such as \"2026-09-30T17:50:00+08:00\", not {}",
                describe(other)
            ))
        }
    };
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!(
                "`{text}` is not a time with its UTC offset such as \"2026-09-30T17:50:00+08:00\" ({e})"
            )
        })
}

fn case_selector(value: &Value) -> Result<CaseSelector, String> {
    match value {
        Value::Integer(n) if *n >= 1 => u32::try_from(*n)
            .map(CaseSelector::Nth)
            .map_err(|_| format!("there is no case #{n}")),
        Value::Integer(n) => Err(format!(
            "{n} is not a case: cases are counted from 1 in the order the simulation opens them"
        )),
        Value::String(s) if !s.trim().is_empty() => {
            Ok(CaseSelector::Id(CaseId(s.trim().to_ascii_uppercase())))
        }
        other => Err(format!(
            "must be a case: its number in this timeline (1 for the first case) or its id such as \"TS-2026-000001\", not {}",
            describe(other)
        )),
    }
}

/// An elapsed duration: number-unit pairs such as `2h`, `3 days`, `1h 30min`.
/// A day is 24 hours and a week 7 days; months and years are refused as
/// they have no fixed length.
pub fn duration(text: &str) -> Result<Duration, String> {
    let bad = |why: &str| {
        format!("`{text}` is not a duration such as \"2h\", \"90 minutes\" or \"3 days\" ({why})")
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad("it is empty"));
    }
    let mut total = Duration::zero();
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad("a number must come first"));
        }
        let amount: i64 = rest[..digits]
            .parse()
            .map_err(|_| bad("the number is too large"))?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = rest[unit_len..].trim_start_matches([' ', ',']);
        let seconds_per: i64 = match unit {
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3_600,
            "d" | "day" | "days" => 86_400,
            "w" | "week" | "weeks" => 604_800,
            "" => return Err(bad("a unit must follow the number")),
            "month" | "months" | "y" | "year" | "years" => {
                return Err(bad("months and years have no fixed length; count days"))
            }
            _ => return Err(bad(&format!("unknown unit `{unit}`"))),
        };
        let seconds = amount
            .checked_mul(seconds_per)
            .ok_or_else(|| bad("too long"))?;
        total = total
            .checked_add(&Duration::try_seconds(seconds).ok_or_else(|| bad("too long"))?)
            .ok_or_else(|| bad("too long"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Timeline, TimelineError> {
        parse_timeline(text, Path::new("t.toml"), Path::new("."))
    }

    fn error(text: &str) -> String {
        parse(text)
            .expect_err("the timeline is refused")
            .to_string()
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn durations_add_up_their_parts() {
        assert_eq!(duration("2h"), Ok(Duration::hours(2)));
        assert_eq!(duration("3 days"), Ok(Duration::days(3)));
        assert_eq!(duration("1h 30min"), Ok(Duration::minutes(90)));
        assert_eq!(duration("1w, 2d"), Ok(Duration::days(9)));
        assert_eq!(duration("45s"), Ok(Duration::seconds(45)));
        assert!(duration("2 months")
            .unwrap_err()
            .contains("no fixed length"));
        assert!(duration("2 fortnights")
            .unwrap_err()
            .contains("unknown unit `fortnights`"));
        assert!(duration("h")
            .unwrap_err()
            .contains("a number must come first"));
        assert!(duration("5").unwrap_err().contains("a unit must follow"));
        assert!(duration("").unwrap_err().contains("empty"));
        assert!(duration("99999999999999999999 s")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn steps_get_absolute_times_in_order() {
        let timeline = parse(
            r#"
            [[step]]
            at = 2026-09-30T17:50:00+08:00
            from = "wang@example.com"
            subject = "账单"
            [[step]]
            after = "2h"
            reply_to_acknowledgement = 1
            body = "补充"
            [[step]]
            advance = "3 days"
            [[step]]
            until = "2026-10-10T18:00:00+08:00"
            "#,
        )
        .unwrap();
        let times: Vec<DateTime<Utc>> = timeline.steps.iter().map(|s| s.at).collect();
        assert_eq!(
            times,
            [
                at("2026-09-30T17:50:00+08:00"),
                at("2026-09-30T19:50:00+08:00"),
                at("2026-10-03T19:50:00+08:00"),
                at("2026-10-10T18:00:00+08:00"),
            ]
        );
        assert_eq!(timeline.steps[2].action, StepAction::Advance);
        match &timeline.steps[1].action {
            StepAction::Mail(mail) => assert_eq!(
                mail.reply,
                Some(ReplyTarget::Acknowledgement {
                    case: CaseSelector::Nth(1)
                })
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(timeline.settings, TimelineSettings::default());
    }

    #[test]
    fn settings_are_read_and_checked() {
        let timeline = parse(
            r#"
            [settings]
            complaint_address = "Complaints@Gas.example"
            time_zone = "Asia/Shanghai"
            channel = "hotline"
            acks_per_sender_per_hour = 5
            [[step]]
            until = "2026-10-01T00:00:00Z"
            "#,
        )
        .unwrap();
        assert_eq!(
            timeline.settings.complaint_address,
            "complaints@gas.example"
        );
        assert_eq!(timeline.settings.time_zone, chrono_tz::Asia::Shanghai);
        assert_eq!(timeline.settings.channel.as_deref(), Some("hotline"));
        assert_eq!(timeline.settings.acks_per_sender_per_hour, 5);
        assert_eq!(
            error("[settings]\ntime_zone = \"Asia/Shangai\"\n[[step]]\nuntil = \"2026-10-01T00:00:00Z\""),
            "t.toml: `settings.time_zone`: unknown time zone `Asia/Shangai`; write an IANA name such as Asia/Shanghai"
        );
        assert_eq!(
            error("[settings]\ncomplaint_adress = \"a@b\"\n[[step]]\nuntil = \"2026-10-01T00:00:00Z\""),
            "t.toml: `settings.complaint_adress`: unknown key (did you mean `complaint_address`?); known keys: complaint_address, message_id_host, organisation, case_prefix, acks_per_sender_per_hour, time_zone, channel, mailbox"
        );
    }

    #[test]
    fn mistakes_name_the_step_and_the_key() {
        let cases = [
            (
                "[[step]]\nat = \"2026-09-30 17:50\"\nfrom = \"a@b.example\"",
                "t.toml: step 1: `at`: `2026-09-30 17:50` is not a time with its UTC offset such as \"2026-09-30T17:50:00+08:00\" (premature end of input)",
            ),
            (
                "[[step]]\nafter = \"2h\"\nfrom = \"a@b.example\"",
                "t.toml: step 1: `after`: the first step needs an absolute time: `at = \"…\"` or `until = \"…\"`",
            ),
            (
                "[[step]]\nuntil = \"2026-10-02T00:00:00Z\"\n[[step]]\nat = \"2026-10-01T00:00:00Z\"\nfrom = \"a@b.example\"",
                "t.toml: step 2: `at`: 2026-10-01T00:00:00+00:00 is before the previous step (2026-10-02T00:00:00+00:00); steps run forward in time",
            ),
            (
                "[[step]]\nat = \"2026-10-01T00:00:00Z\"\nsubjct = \"x\"",
                "t.toml: step 1: `subjct`: unknown key (did you mean `subject`?); known keys: at, after, advance, until, mail, from, to, cc, subject, body, headers, message_id, reply_to_forward, department, reply_to_acknowledgement, reply_to_mail, channel, mailbox",
            ),
            (
                "[[step]]\nat = \"2026-10-01T00:00:00Z\"\nsubject = \"x\"",
                "t.toml: step 1: a mail needs a sender: `from = \"Name <address>\"` (a reply to a forward or an acknowledgement has one by default)",
            ),
            (
                "[[step]]\nat = \"2026-10-01T00:00:00Z\"",
                "t.toml: step 1: `at`: this step has no mail; to only move the clock write `until` instead of `at`",
            ),
            (
                "[[step]]\nuntil = \"2026-10-01T00:00:00Z\"\nbody = \"x\"",
                "t.toml: step 1: `body`: a step with `until` only moves the clock; give a mail its time with `at` or `after`",
            ),
            (
                "[[step]]\nat = \"2026-10-01T00:00:00Z\"\nafter = \"1h\"\nfrom = \"a@b.example\"",
                "t.toml: step 1: `after`: a step has one time; it already has `at`",
            ),
            (
                "[[step]]\nat = \"2026-10-01T00:00:00Z\"\nreply_to_forward = 0",
                "t.toml: step 1: `reply_to_forward`: 0 is not a case: cases are counted from 1 in the order the simulation opens them",
            ),
            (
                "[[step]]\nat = \"2026-10-01T00:00:00Z\"\nreply_to_forward = 1\nreply_to_mail = \"TS-2026-000001.ack.1\"",
                "t.toml: step 1: `reply_to_mail`: a mail answers one earlier mail; this one already has `reply_to_forward`",
            ),
            (
                "[[step]]\nat = \"2026-10-01T00:00:00Z\"\nfrom = \"a@b.example\"\ndepartment = \"service\"",
                "t.toml: step 1: `department`: only a reply to a forward (`reply_to_forward`) names a department",
            ),
            (
                "[[step]]\nat = \"2026-10-01T00:00:00Z\"\nfrom = \"a@b.example\"\nheaders = { Subject = \"x\" }",
                "t.toml: step 1: `headers.Subject`: cannot be set here: use the key `subject`",
            ),
            (
                "[[step]]\nat = \"2026-10-01T00:00:00Z\"\nfrom = \"a@b.example\"\nheaders = { Content-Disposition = \"inline\" }",
                "t.toml: step 1: `headers.Content-Disposition`: cannot be set here: the body is plain UTF-8 text; give a whole mail with `mail = \"FILE.eml\"`",
            ),
            (
                "[[step]]\nat = \"2026-10-01T00:00:00Z\"\nfrom = \"a@b.example\"\nheaders = { X-Note = \"a\\nBcc: x@y\" }",
                "t.toml: step 1: `headers.X-Note`: a header value is one line without control characters",
            ),
            (
                "[[step]]\nat = \"2026-10-01T00:00:00Z\"\nmail = \"missing.eml\"",
                "t.toml: step 1: `mail`: cannot read ./missing.eml: No such file or directory (os error 2)",
            ),
            (
                "[[step]]\nat = \"2026-10-01T00:00:00Z\"\nfrom = \"nobody\"",
                "t.toml: step 1: `from`: `nobody` is not a mail address such as `Name <someone@example.com>`",
            ),
            (
                "[[step]]\nat = \"2026-10-01T00:00:00Z\"\nmail = \"x.eml\"\nfrom = \"a@b.example\"",
                "t.toml: step 1: `from`: `mail = \"x.eml\"` is a whole mail; write its headers in the file, not as `from`",
            ),
            (
                "[[step]]\nat = \"2026-10-01T00:00:00Z\"\nfrom = \"a@b.example\"\nto = [\"x@y\", 3]",
                "t.toml: step 1: `to`: each address must be a string, not a whole number",
            ),
            (
                "[[steps]]\nat = \"2026-10-01T00:00:00Z\"",
                "t.toml: `steps`: unknown key (did you mean `step`?); known keys: settings, step",
            ),
            (
                "[settings]\n",
                "t.toml: the timeline has no steps: add `[[step]]` tables, the first with `at = \"2026-09-30T17:50:00+08:00\"`",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(error(text), expected, "for:\n{text}");
        }
    }

    #[test]
    fn toml_syntax_errors_carry_their_position() {
        let message = error("[[step]]\nat = \"2026-10-01T00:00:00Z\nfrom = 1");
        assert!(
            message.starts_with("t.toml: not valid TOML: TOML parse error at line 2"),
            "{message}"
        );
    }
}

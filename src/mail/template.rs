//! Mail templates: `rules/templates/<name>.<lang>.txt` (and optionally
//! `.html`), rendered with minijinja into a subject and bodies.
//!
//! File format: the first line of the `.txt` file is `Subject: …` (or
//! `主题：…`) and is itself a template; one blank line after it is skipped;
//! the rest is the plain-text body. The `.html` file, when present, is the
//! HTML alternative and has no subject line. In `.html` templates every
//! value is HTML-escaped (autoescape); `.txt` templates are plain text.
//! Undefined variables are an error when printed, so a misspelt variable is
//! caught the first time the template renders; `{% if x %}` on a missing
//! value is allowed. The variables are [`TemplateContext`], documented in
//! `docs/mail.md`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use minijinja::{AutoEscape, Environment, Output, State, UndefinedBehavior, Value};
use serde::Serialize;

use super::inbound::{clean_line, IncomingMail};
use crate::case::{Case, CaseState, FieldValue};
use crate::rules::Policy;

/// Format of times shown in mail: local time of the calendar.
const TIME_FORMAT: &str = "%Y-%m-%d %H:%M";

/// A rendered template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedMail {
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{file}: template files are named <name>.<language>.txt or <name>.<language>.html")]
    BadFileName { file: String },
    #[error("{file}:1: the first line must be `Subject: …` (or `主题：…`)")]
    MissingSubject { file: String },
    #[error("{file}: an HTML template needs the plain-text template {expected} beside it")]
    HtmlWithoutText { file: String, expected: String },
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    #[error("no template {name:?} for language {language:?} or the default language")]
    NotFound { name: String, language: String },
    #[error("{file}:{line}: {message}")]
    Render {
        file: String,
        line: usize,
        message: String,
    },
}

/// Which file of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Subject,
    Text,
    Html,
}

impl Part {
    /// Name of the part in the environment; `.html` names turn autoescape on.
    fn key(self, name: &str, language: &str) -> String {
        let mut key = String::new();
        self.write_key(name, language, &mut key);
        key
    }

    /// [`Part::key`] written into `key`, which is emptied first.
    fn write_key(self, name: &str, language: &str, key: &mut String) {
        key.clear();
        for piece in [name, ".", language] {
            key.push_str(piece);
        }
        key.push_str(match self {
            Part::Subject => ".txt#subject",
            Part::Text => ".txt",
            Part::Html => ".html",
        });
    }
}

/// All templates of a policy, parsed and ready to render.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
    /// name → language → has an HTML part.
    available: BTreeMap<String, BTreeMap<String, bool>>,
    /// Policy languages; the first is the fallback.
    languages: Vec<String>,
}

impl Templates {
    /// Reads every `*.txt` and `*.html` file of `dir`.
    pub fn load_dir(dir: &Path, languages: &[String]) -> Result<Templates, Vec<TemplateError>> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            vec![TemplateError::Io {
                path: dir.display().to_string(),
                message: e.to_string(),
            }]
        })?;
        let mut files = Vec::new();
        let mut errors = Vec::new();
        for entry in entries {
            let path = match entry {
                Ok(entry) => entry.path(),
                Err(e) => {
                    errors.push(TemplateError::Io {
                        path: dir.display().to_string(),
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            let is_template = path.extension().is_some_and(|e| e == "txt" || e == "html");
            if !is_template {
                continue;
            }
            let file = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match std::fs::read_to_string(&path) {
                Ok(source) => files.push((file, source)),
                Err(e) => errors.push(TemplateError::Io {
                    path: path.display().to_string(),
                    message: e.to_string(),
                }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Templates::from_files(files, languages)
    }

    /// Builds the templates from `(file name, source)` pairs. All errors are
    /// reported at once.
    pub fn from_files(
        files: Vec<(String, String)>,
        languages: &[String],
    ) -> Result<Templates, Vec<TemplateError>> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_filter("status_label", status_label);
        env.set_formatter(print_value);
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });

        let mut errors = Vec::new();
        let mut available: BTreeMap<String, BTreeMap<String, bool>> = BTreeMap::new();
        let mut html_files = Vec::new();
        for (file, source) in files {
            let Some((name, language, extension)) = split_file_name(&file) else {
                errors.push(TemplateError::BadFileName { file });
                continue;
            };
            let source = source.replace("\r\n", "\n");
            if extension == "html" {
                html_files.push((file, name, language, source));
                continue;
            }
            let Some((subject, body)) = split_subject(&source) else {
                errors.push(TemplateError::MissingSubject { file });
                continue;
            };
            let mut ok = true;
            for (part, text) in [(Part::Subject, subject), (Part::Text, body)] {
                if let Err(error) = env.add_template_owned(part.key(&name, &language), text) {
                    ok = false;
                    errors.push(TemplateError::Syntax {
                        file: file.clone(),
                        line: error.line().unwrap_or(1),
                        message: error_message(&error),
                    });
                }
            }
            if ok {
                available.entry(name).or_default().insert(language, false);
            }
        }
        for (file, name, language, source) in html_files {
            let Some(has_html) = available.get_mut(&name).and_then(|l| l.get_mut(&language)) else {
                errors.push(TemplateError::HtmlWithoutText {
                    expected: format!("{name}.{language}.txt"),
                    file,
                });
                continue;
            };
            match env.add_template_owned(Part::Html.key(&name, &language), source) {
                Ok(()) => *has_html = true,
                Err(error) => errors.push(TemplateError::Syntax {
                    file,
                    line: error.line().unwrap_or(1),
                    message: error_message(&error),
                }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Templates {
            env,
            available,
            languages: languages.to_vec(),
        })
    }

    /// Whether template `name` exists in `language`.
    pub fn has(&self, name: &str, language: &str) -> bool {
        self.available
            .get(name)
            .is_some_and(|languages| languages.contains_key(language))
    }

    /// The policy languages template `name` lacks; for the rule checker.
    pub fn missing_languages(&self, name: &str) -> Vec<String> {
        self.languages
            .iter()
            .filter(|language| !self.has(name, language))
            .cloned()
            .collect()
    }

    /// The language a mail in `language` is rendered in: that language when
    /// the template has it, else the policy's default language.
    pub fn language_for(&self, name: &str, language: &str) -> Option<String> {
        self.resolve(name, language)
            .map(|(language, _)| language.to_owned())
    }

    /// [`Templates::language_for`], borrowed, and whether the template has
    /// an HTML part in that language.
    fn resolve(&self, name: &str, language: &str) -> Option<(&str, bool)> {
        let languages = self.available.get(name)?;
        let found = match languages.get_key_value(language) {
            Some(found) => found,
            None => languages.get_key_value(self.languages.first()?.as_str())?,
        };
        Some((found.0.as_str(), *found.1))
    }

    /// Renders template `name` in `language` (or the default language).
    pub fn render(
        &self,
        name: &str,
        language: &str,
        context: &impl Serialize,
    ) -> Result<RenderedMail, TemplateError> {
        let (language, has_html) =
            self.resolve(name, language)
                .ok_or_else(|| TemplateError::NotFound {
                    name: name.to_owned(),
                    language: language.to_owned(),
                })?;
        let context = minijinja::Value::from_serialize(context);
        // One buffer for the three parts' names.
        let mut key = String::with_capacity(name.len() + language.len() + 16);
        let mut render = |part: Part| -> Result<String, TemplateError> {
            part.write_key(name, language, &mut key);
            let template = self
                .env
                .get_template(&key)
                .map_err(|e| self.render_error(name, language, part, &e))?;
            template
                .render(&context)
                .map_err(|e| self.render_error(name, language, part, &e))
        };
        let subject = clean_line(&render(Part::Subject)?);
        let text = tidy_text(&render(Part::Text)?);
        let html = if has_html {
            Some(render(Part::Html)?)
        } else {
            None
        };
        Ok(RenderedMail {
            subject,
            text,
            html,
        })
    }

    fn render_error(
        &self,
        name: &str,
        language: &str,
        part: Part,
        error: &minijinja::Error,
    ) -> TemplateError {
        let (file, line) = match part {
            Part::Subject => (format!("{name}.{language}.txt"), 1),
            Part::Text => (format!("{name}.{language}.txt"), error.line().unwrap_or(1)),
            Part::Html => (format!("{name}.{language}.html"), error.line().unwrap_or(1)),
        };
        TemplateError::Render {
            file,
            line,
            message: error_message(error),
        }
    }
}

/// Prints a value of `{{ … }}`: minijinja's own formatter, except that a
/// string in a plain-text template is copied as it is. That is what the
/// default formatter writes too, but it gets there through two nested
/// `write!` calls per printed value.
fn print_value(out: &mut Output, state: &State, value: &Value) -> Result<(), minijinja::Error> {
    match value.as_str() {
        Some(text) if state.auto_escape() == AutoEscape::None => {
            out.write_str(text).map_err(minijinja::Error::from)
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// The `status_label(language)` filter: a case state in words.
/// `{{ case.status | status_label("zh") }}` → `处理中`; unknown states and
/// languages come back as given.
fn status_label(status: String, language: Option<String>) -> String {
    let Some(state) = CaseState::parse(&status) else {
        return status;
    };
    let chinese = match state {
        CaseState::Received => "已收到",
        CaseState::Acknowledged => "已回执",
        CaseState::Assigned => "已转派",
        CaseState::Accepted => "已受理",
        CaseState::InProgress => "处理中",
        CaseState::WaitingOnCustomer => "待客户补充",
        CaseState::Resolved => "已解决",
        CaseState::Answered => "已答复客户",
        CaseState::FollowUp => "回访中",
        CaseState::Closed => "已结案",
        CaseState::Reopened => "已重新打开",
        CaseState::Withdrawn => "已撤诉",
        CaseState::Rejected => "不予受理",
        CaseState::AbnormallyClosed => "异常结案",
        CaseState::Merged => "已合并",
        CaseState::Appealed => "申诉中",
    };
    match language.as_deref() {
        Some("zh") => chinese.to_owned(),
        Some("en") => status.replace('_', " "),
        _ => status,
    }
}

fn error_message(error: &minijinja::Error) -> String {
    match error.detail() {
        Some(detail) => format!("{}: {detail}", error.kind()),
        None => error.kind().to_string(),
    }
}

/// `weekly-digest.zh.txt` → (`weekly-digest`, `zh`, `txt`).
fn split_file_name(file: &str) -> Option<(String, String, String)> {
    let mut parts = file.rsplitn(3, '.');
    let extension = parts.next()?;
    let language = parts.next()?;
    let name = parts.next()?;
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
    };
    (valid(name) && valid(language) && matches!(extension, "txt" | "html"))
        .then(|| (name.to_owned(), language.to_owned(), extension.to_owned()))
}

/// Splits a `.txt` template into its subject template and its body template.
/// The body keeps the subject's line(s) as empty lines, so error line numbers
/// match the file.
fn split_subject(source: &str) -> Option<(String, String)> {
    let (first, rest) = source.split_once('\n').unwrap_or((source, ""));
    let subject = ["Subject:", "subject:", "主题：", "主题:"]
        .iter()
        .find_map(|prefix| first.strip_prefix(prefix))?
        .trim()
        .to_owned();
    let (skipped, body) = match rest.split_once('\n') {
        Some((blank, after)) if blank.trim().is_empty() => (2, after),
        _ => (1, rest),
    };
    Some((subject, format!("{}{body}", "\n".repeat(skipped))))
}

/// Trims blank lines at both ends and trailing spaces on each line, and ends with one newline.
fn tidy_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 1);
    // Blank lines are written only once a line with text follows them.
    let mut blank_lines = 0;
    // Split at line feeds found by `memchr` (what `str::lines` does, a
    // little slower); `trim_end` takes the `\r` of a CRLF.
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\n', text.as_bytes()).chain([text.len()]);
    for end in ends {
        let line = text[start..end].trim_end();
        start = end + 1;
        if line.is_empty() {
            blank_lines += 1;
            continue;
        }
        if !out.is_empty() {
            for _ in 0..=blank_lines {
                out.push('\n');
            }
        }
        out.push_str(line);
        blank_lines = 0;
    }
    out.push('\n');
    out
}

/// A declared name with its display text (`service` / `客户服务中心`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Named {
    pub name: String,
    /// The display text from the policy, or the name when it has none.
    pub display: String,
}

/// Display texts of declared names, from the policy.
#[derive(Debug, Clone, Default)]
pub struct DisplayNames {
    pub categories: HashMap<String, String>,
    pub channels: HashMap<String, String>,
    pub departments: HashMap<String, String>,
    pub deadlines: HashMap<String, String>,
    pub fields: HashMap<String, String>,
}

impl DisplayNames {
    pub fn from_policy(policy: &Policy) -> Self {
        fn collect<'a>(
            items: impl Iterator<Item = (&'a String, Option<&'a String>)>,
        ) -> HashMap<String, String> {
            items
                .filter_map(|(name, display)| display.map(|d| (name.clone(), d.clone())))
                .collect()
        }
        DisplayNames {
            categories: collect(
                policy
                    .categories
                    .iter()
                    .map(|c| (&c.name.node, c.display.as_ref().map(|d| &d.node))),
            ),
            channels: collect(
                policy
                    .channels
                    .iter()
                    .map(|c| (&c.name.node, c.display.as_ref().map(|d| &d.node))),
            ),
            departments: collect(
                policy
                    .departments
                    .iter()
                    .map(|d| (&d.name.node, d.display.as_ref().map(|d| &d.node))),
            ),
            deadlines: collect(
                policy
                    .deadlines
                    .iter()
                    .map(|d| (&d.name.node, d.display.as_ref().map(|d| &d.node))),
            ),
            fields: collect(
                policy
                    .fields
                    .iter()
                    .map(|f| (&f.name.node, f.display.as_ref().map(|d| &d.node))),
            ),
        }
    }

    fn named(map: &HashMap<String, String>, name: &str) -> Named {
        Named {
            name: name.to_owned(),
            display: map.get(name).cloned().unwrap_or_else(|| name.to_owned()),
        }
    }

    pub fn category(&self, name: &str) -> Named {
        Self::named(&self.categories, name)
    }

    pub fn channel(&self, name: &str) -> Named {
        Self::named(&self.channels, name)
    }

    pub fn department(&self, name: &str) -> Named {
        Self::named(&self.departments, name)
    }

    pub fn deadline(&self, name: &str) -> Named {
        Self::named(&self.deadlines, name)
    }
}

/// A person: name (may be empty) and address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PersonView {
    pub name: String,
    pub email: String,
}

/// A deadline clock of a case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadlineView {
    pub deadline: Named,
    /// Local time.
    pub due: String,
    /// `running`, `paused`, `met` or `stopped` (stopped after the due time).
    pub state: String,
    /// Past due and not stopped.
    pub overdue: bool,
}

/// A custom field with its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldView {
    pub field: Named,
    pub value: String,
}

/// A case as templates see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaseView {
    /// `TS-2026-000123`.
    pub number: String,
    pub subject: String,
    /// Local time the complaint arrived.
    pub received_at: String,
    pub channel: Named,
    pub language: String,
    /// Snake-case state: `received`, `assigned`, `in_progress`, `resolved`, …
    pub status: String,
    pub severity: Option<String>,
    pub category: Option<Named>,
    /// `ours` / `not_ours`, when decided.
    pub responsibility: Option<String>,
    pub tags: Vec<String>,
    pub department: Option<Named>,
    pub cc_departments: Vec<Named>,
    /// Fields other than severity, category and responsibility.
    pub fields: Vec<FieldView>,
    pub sender: PersonView,
    pub deadlines: Vec<DeadlineView>,
}

impl CaseView {
    /// The case as seen at `now`, times in `tz`.
    pub fn new(case: &Case, names: &DisplayNames, tz: Tz, now: DateTime<Utc>) -> Self {
        let text_of = |name: &str| case.field(name).map(ToString::to_string);
        let deadlines = case
            .clocks
            .values()
            .map(|clock| {
                let state = match (clock.stopped_at, clock.paused_since) {
                    (Some(stopped), _) if stopped <= clock.due => "met",
                    (Some(_), _) => "stopped",
                    (None, Some(_)) => "paused",
                    (None, None) => "running",
                };
                DeadlineView {
                    deadline: names.deadline(&clock.deadline),
                    due: local(clock.due, tz),
                    state: state.to_owned(),
                    overdue: clock.stopped_at.is_none() && clock.due < now,
                }
            })
            .collect();
        CaseView {
            number: case.id.0.clone(),
            subject: case.subject.clone(),
            received_at: local(case.created_at, tz),
            channel: names.channel(&case.channel),
            language: case.language.clone(),
            status: case.state.as_str().to_owned(),
            severity: case.severity().map(str::to_owned),
            category: text_of("category").map(|c| names.category(&c)),
            responsibility: text_of("responsibility"),
            tags: case.tags.iter().cloned().collect(),
            department: case
                .assignment
                .as_ref()
                .map(|a| names.department(&a.department)),
            cc_departments: case
                .assignment
                .iter()
                .flat_map(|a| a.cc.iter())
                .map(|d| names.department(d))
                .collect(),
            fields: case
                .fields
                .iter()
                .filter(|(name, _)| {
                    !matches!(name.as_str(), "severity" | "category" | "responsibility")
                })
                .map(|(name, value)| FieldView {
                    field: Named {
                        name: name.clone(),
                        display: names
                            .fields
                            .get(name)
                            .cloned()
                            .unwrap_or_else(|| name.clone()),
                    },
                    value: match value {
                        FieldValue::Flag(true) => "yes".to_owned(),
                        FieldValue::Flag(false) => "no".to_owned(),
                        other => other.to_string(),
                    },
                })
                .collect(),
            sender: PersonView {
                name: case.sender.name.clone().unwrap_or_default(),
                email: case.sender.email.clone(),
            },
            deadlines,
        }
    }
}

impl CaseView {
    /// `CaseView::new(case, names, tz, now).redacted()`, without building
    /// the parts the redaction empties.
    pub fn new_redacted(case: &Case, names: &DisplayNames, tz: Tz) -> Self {
        CaseView::only_registration(
            case.id.0.clone(),
            local(case.created_at, tz),
            names.channel(&case.channel),
            case.language.clone(),
            case.state.as_str().to_owned(),
        )
    }

    /// What an acknowledgement may show: the number, the registration time,
    /// channel, language and state. Everything the sender wrote or the rules
    /// derived from it is emptied, because the sender of a new complaint is
    /// unverified and an acknowledgement must not echo content to whoever
    /// forged the From address.
    pub fn redacted(&self) -> CaseView {
        CaseView::only_registration(
            self.number.clone(),
            self.received_at.clone(),
            self.channel.clone(),
            self.language.clone(),
            self.status.clone(),
        )
    }

    /// A view with the registration facts only and everything else empty.
    fn only_registration(
        number: String,
        received_at: String,
        channel: Named,
        language: String,
        status: String,
    ) -> CaseView {
        CaseView {
            number,
            subject: String::new(),
            received_at,
            channel,
            language,
            status,
            severity: None,
            category: None,
            responsibility: None,
            tags: Vec::new(),
            department: None,
            cc_departments: Vec::new(),
            fields: Vec::new(),
            sender: PersonView {
                name: String::new(),
                email: String::new(),
            },
            deadlines: Vec::new(),
        }
    }
}

/// An attachment as templates see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttachmentView {
    pub name: String,
    pub content_type: String,
    pub size: u64,
}

/// An incoming mail as templates see it (the complaint in a forward).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MailView {
    pub from: PersonView,
    pub subject: String,
    /// The new text of the mail (quoted replies removed).
    pub text: String,
    pub received_at: String,
    pub attachments: Vec<AttachmentView>,
}

impl MailView {
    pub fn new(mail: &IncomingMail, received_at: DateTime<Utc>, tz: Tz) -> Self {
        MailView {
            from: PersonView {
                name: mail
                    .from
                    .as_ref()
                    .and_then(|a| a.name.clone())
                    .unwrap_or_default(),
                email: mail
                    .from
                    .as_ref()
                    .map(|a| a.email.clone())
                    .unwrap_or_default(),
            },
            subject: mail.subject.clone(),
            text: mail.text.clone(),
            received_at: local(received_at, tz),
            attachments: mail
                .attachments
                .iter()
                .map(|a| AttachmentView {
                    name: a.name.clone(),
                    content_type: a.content_type.clone(),
                    size: a.size,
                })
                .collect(),
        }
    }
}

/// The escalation step that sends a reminder, overdue or supervision notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EscalationView {
    pub deadline: Named,
    /// Local due time of the deadline.
    pub due: String,
    /// Index of the step in the `escalate` block.
    pub step: usize,
}

/// A digest of cases (`schedule … digest … using weekly_digest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DigestView {
    /// The schedule's name.
    pub schedule: String,
    pub cases: Vec<CaseView>,
}

/// Everything a template may use. Absent parts are `none` in templates.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct TemplateContext {
    /// The organisation's name, from the daemon's configuration.
    pub organisation: String,
    /// The language the mail is rendered in.
    pub language: String,
    /// Local time of sending.
    pub now: String,
    pub case: Option<CaseView>,
    /// The mail being forwarded or answered.
    pub mail: Option<MailView>,
    /// The department the mail goes to.
    pub department: Option<Named>,
    /// The reply-token address a department answers to.
    pub reply_address: Option<String>,
    pub escalation: Option<EscalationView>,
    pub digest: Option<DigestView>,
    /// What a lifecycle notice says (a result, applied commands, problems).
    pub notice: Option<NoticeView>,
}

/// The body of a lifecycle notice: a department's result for the customer,
/// the commands applied or refused, a withdrawal or refusal.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct NoticeView {
    /// Free text: the result, the reason of a refusal.
    pub text: String,
    /// One line each: commands applied, problems found.
    pub items: Vec<String>,
}

impl TemplateContext {
    /// The context of an acknowledgement: the case [`CaseView::redacted`],
    /// no mail, no department.
    pub fn acknowledgement(organisation: &str, language: &str, now: &str, case: &CaseView) -> Self {
        TemplateContext {
            organisation: organisation.to_owned(),
            language: language.to_owned(),
            now: now.to_owned(),
            case: Some(case.redacted()),
            ..TemplateContext::default()
        }
    }
}

/// A UTC time shown in `tz`.
pub fn local(at: DateTime<Utc>, tz: Tz) -> String {
    use chrono::{Datelike, Timelike};
    let at = at.with_timezone(&tz);
    let year = at.year();
    if !(0..=9999).contains(&year) {
        return at.format(TIME_FORMAT).to_string();
    }
    // The same text as [`TIME_FORMAT`], written digit by digit: `format!`
    // (or chrono's `format`) costs several times more for a few numbers.
    let mut text = String::with_capacity(16);
    let mut push_digits = |value: u32, width: u32, after: Option<char>| {
        for place in (0..width).rev() {
            let digit = value / 10u32.pow(place) % 10;
            text.push(char::from_digit(digit, 10).unwrap_or('0'));
        }
        if let Some(separator) = after {
            text.push(separator);
        }
    };
    push_digits(year.unsigned_abs(), 4, Some('-'));
    push_digits(at.month(), 2, Some('-'));
    push_digits(at.day(), 2, Some(' '));
    push_digits(at.hour(), 2, Some(':'));
    push_digits(at.minute(), 2, None);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    /// The straightforward version `tidy_text` must agree with.
    fn tidy_text_by_lines(text: &str) -> String {
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        let start = lines
            .iter()
            .position(|l| !l.is_empty())
            .unwrap_or(lines.len());
        let end = lines
            .iter()
            .rposition(|l| !l.is_empty())
            .map_or(start, |e| e + 1);
        let mut out = lines[start..end].join("\n");
        out.push('\n');
        out
    }

    #[test]
    fn a_redacted_view_built_directly_is_the_whole_view_redacted() {
        let at = Utc.with_ymd_and_hms(2026, 11, 24, 2, 30, 0).unwrap();
        let sender = crate::case::Address {
            email: "wang@customers.example".to_owned(),
            name: Some("王小明".to_owned()),
        };
        let mut case = Case::new(
            crate::case::CaseId("TS-2026-000123".to_owned()),
            at,
            "email",
            sender,
            "楼道里有燃气味",
            "zh",
        );
        case.fields.insert(
            "category".to_owned(),
            FieldValue::Name("gas_leak".to_owned()),
        );
        case.fields
            .insert("urgent".to_owned(), FieldValue::Flag(true));
        case.tags.insert("repeat".to_owned());
        case.assignment = Some(crate::case::Assignment {
            department: "network".to_owned(),
            cc: vec!["service".to_owned()],
            rule: "route #1".to_owned(),
        });
        case.clocks.insert(
            "first_response".to_owned(),
            crate::case::ClockState {
                deadline: "first_response".to_owned(),
                calendar: None,
                started_at: at,
                due: at + chrono::Duration::hours(4),
                paused_since: None,
                paused_seconds: 0,
                stopped_at: None,
                fired_steps: Default::default(),
                business: false,
            },
        );
        let mut names = DisplayNames::default();
        names
            .channels
            .insert("email".to_owned(), "电子邮件".to_owned());
        let tz = chrono_tz::Asia::Shanghai;
        let whole = CaseView::new(&case, &names, tz, at);
        assert!(!whole.deadlines.is_empty() && !whole.fields.is_empty());
        assert_eq!(CaseView::new_redacted(&case, &names, tz), whole.redacted());
    }

    #[test]
    fn values_print_as_minijinjas_own_formatter_prints_them() {
        let probe = "{{ text }}|{{ long }}|{{ markup }}|{{ markup|safe }}|{{ number }}|\
                     {{ fraction }}|{{ flag }}|{{ nothing }}|{{ list }}|{{ map }}|\
                     {{ map.key }}|{{ missing if false }}|{{ bytes }}";
        let files = vec![
            ("probe.en.txt".to_owned(), format!("Subject: s\n\n{probe}")),
            ("probe.en.html".to_owned(), probe.to_owned()),
        ];
        let templates = Templates::from_files(files, &["en".to_owned()]).unwrap();
        let mut plain = Environment::new();
        plain.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        plain.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        // The body of a `.txt` template keeps its subject line and the blank line as empty lines.
        plain
            .add_template_owned("probe.txt", format!("\n\n{probe}"))
            .unwrap();
        plain.add_template("probe.html", probe).unwrap();
        let context = minijinja::context! {
            text => "Wang <wang@example.com> & 王",
            long => "x".repeat(40) + "<b>",
            markup => Value::from_safe_string("<b>bold</b>".to_owned()),
            number => 42,
            fraction => 2.5,
            flag => true,
            nothing => (),
            list => vec!["a", "<b>"],
            map => BTreeMap::from([("key", "v&l")]),
            bytes => Value::from_bytes("字节".as_bytes().to_vec()),
        };
        for (ours, theirs) in [
            ("probe.en.txt", "probe.txt"),
            ("probe.en.html", "probe.html"),
        ] {
            let ours = templates.env.get_template(ours).unwrap().render(&context);
            let theirs = plain.get_template(theirs).unwrap().render(&context);
            assert_eq!(ours.unwrap(), theirs.unwrap());
        }
    }

    #[test]
    fn tidy_text_trims_lines_and_blank_ends() {
        assert_eq!(
            tidy_text("\n\n  \nHello  \n\n\nWorld\t\r\n\n \n"),
            "Hello\n\n\nWorld\n"
        );
        assert_eq!(tidy_text(""), "\n");
        assert_eq!(tidy_text(" \n\t\n"), "\n");
        assert_eq!(tidy_text("您好：\u{3000}\n编号"), "您好：\n编号\n");
    }

    proptest! {
        #[test]
        fn tidy_text_agrees_with_the_line_by_line_version(
            text in "([a-z]{0,4}|[ \\t\\u{3000}]{0,2}|[\\r\\n]{1,3}|中){0,16}"
        ) {
            prop_assert_eq!(tidy_text(&text), tidy_text_by_lines(&text));
        }

        #[test]
        fn local_time_is_the_chrono_format(seconds in -70_000_000_000i64..300_000_000_000i64) {
            let at = Utc.timestamp_opt(seconds, 0).unwrap();
            for tz in [chrono_tz::Asia::Shanghai, chrono_tz::America::New_York, chrono_tz::UTC] {
                prop_assert_eq!(
                    local(at, tz),
                    at.with_timezone(&tz).format(TIME_FORMAT).to_string()
                );
            }
        }
    }

    #[test]
    fn local_time_outside_four_digit_years_is_the_chrono_format() {
        for at in [
            Utc.with_ymd_and_hms(-5, 3, 1, 8, 7, 0).unwrap(),
            Utc.with_ymd_and_hms(12_345, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 0).unwrap(),
        ] {
            let tz = chrono_tz::Asia::Shanghai;
            assert_eq!(
                local(at, tz),
                at.with_timezone(&tz).format(TIME_FORMAT).to_string()
            );
        }
        assert_eq!(
            local(
                Utc.with_ymd_and_hms(2026, 11, 26, 1, 5, 0).unwrap(),
                chrono_tz::Asia::Shanghai
            ),
            "2026-11-26 09:05"
        );
    }
}

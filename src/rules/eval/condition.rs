//! Conditions: what a path reads on the case and its mail, and how each test decides.
//!
//! Every atomic test records `(what, value)` in [`Looked`] so that a fired
//! rule can say what it saw; `and`/`or` short-circuit, so only what was
//! actually looked at is recorded.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::cmp::Ordering;

use smallvec::{smallvec, SmallVec};

use chrono::NaiveDate;

use super::super::ast::{
    Aggregate, ArrivalTest, CompareOp, Expr, GroupKey, Operand, RegexLit, Spanned, Value,
};
use super::{clockmath, snippet_of, Evaluator, FieldRef, SeenList, SenderGroup};
use crate::case::{subject_fingerprint, FieldValue};

/// Longest value shown in a `seen` pair, in characters.
const SEEN_MAX_CHARS: usize = 80;

const NOT_SET: &str = "(not set)";
const NONE: &str = "(none)";
const NO_MATCH: &str = "(no match)";

/// Lower-cased mail text and subject, computed at most once per evaluation.
#[derive(Debug, Default)]
pub(super) struct Lowered {
    /// `None` when the text has no upper-case letter (then it is its own lower case).
    text: OnceCell<Option<String>>,
    subject: OnceCell<Option<String>>,
}

/// What a condition looked at, and the groups of the last regex that matched.
#[derive(Debug, Default)]
pub(super) struct Looked<'p> {
    pub seen: SeenList<'p>,
    captures: Vec<Option<String>>,
}

impl<'p> Looked<'p> {
    /// Group `n` of the regex that matched last in this condition (`$n`).
    pub fn capture(&self, group: u8) -> Option<&str> {
        self.captures.get(group as usize)?.as_deref()
    }

    fn see(&mut self, what: Cow<'p, str>, value: Cow<'p, str>) {
        self.seen.push((what, value));
    }

    /// The seen pairs as owned strings, for a [`crate::case::Because`].
    pub fn owned(&self) -> Vec<(String, String)> {
        self.seen
            .iter()
            .map(|(what, value)| (what.to_string(), value.to_string()))
            .collect()
    }
}

/// A value read from the case or the mail.
#[derive(Debug)]
enum Got<'c> {
    Missing,
    /// Free text: subject, text, addresses, headers, custom text fields.
    Text(Cow<'c, str>),
    /// A declared name: severity, category, channel, status, department, …
    Name(Cow<'c, str>),
    Number(f64),
    Flag(bool),
    Date(NaiveDate),
    /// Texts: recipients, attachment names and types.
    List(Vec<Cow<'c, str>>),
    /// Names: the case's tags.
    Tags(Vec<Cow<'c, str>>),
}

impl<'c> Got<'c> {
    fn of_field(value: &'c FieldValue) -> Got<'c> {
        match value {
            FieldValue::Name(n) => Got::Name(borrowed(n)),
            FieldValue::Text(t) => Got::Text(borrowed(t)),
            FieldValue::Number(n) => Got::Number(*n),
            FieldValue::Flag(b) => Got::Flag(*b),
            FieldValue::Date(d) => Got::Date(*d),
        }
    }

    fn is_set(&self) -> bool {
        match self {
            Got::Missing => false,
            Got::Text(s) | Got::Name(s) => !s.is_empty(),
            Got::List(items) | Got::Tags(items) => !items.is_empty(),
            Got::Number(_) | Got::Flag(_) | Got::Date(_) => true,
        }
    }

    fn display(&self) -> Cow<'static, str> {
        match self {
            Got::Missing => Cow::Borrowed(NOT_SET),
            Got::Text(s) | Got::Name(s) => Cow::Owned(shortened(Cow::Borrowed(s)).into_owned()),
            Got::Number(n) => number_text(*n),
            Got::Flag(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            Got::Date(d) => Cow::Owned(d.to_string()),
            Got::List(items) | Got::Tags(items) if items.is_empty() => Cow::Borrowed(NONE),
            Got::List(items) | Got::Tags(items) => Cow::Owned(shorten(&items.join(", "))),
        }
    }
}

/// At most [`SEEN_MAX_CHARS`] characters of `s`, with `…` when cut, on one line.
fn shorten(s: &str) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(SEEN_MAX_CHARS + 1)
        .collect();
    if one_line.chars().count() > SEEN_MAX_CHARS {
        let mut cut: String = one_line.chars().take(SEEN_MAX_CHARS).collect();
        cut.push('…');
        cut
    } else {
        one_line
    }
}

/// `s` as [`shorten`] shows it, still borrowed when that changes nothing.
fn shortened(s: Cow<'_, str>) -> Cow<'_, str> {
    let fits = s.len() <= SEEN_MAX_CHARS || s.chars().count() <= SEEN_MAX_CHARS;
    if fits && !s.chars().any(char::is_control) {
        s
    } else {
        Cow::Owned(shorten(&s))
    }
}

/// `s` in lower case, borrowed when it has no upper-case letter.
fn lower(s: &str) -> Cow<'_, str> {
    lower_if_needed(s).map_or(Cow::Borrowed(s), Cow::Owned)
}

/// `s` in lower case, or `None` when lowering would not change it. ASCII is
/// checked bytewise, and Chinese, Japanese and Korean text, which has no
/// case, without a look at the Unicode tables.
fn lower_if_needed(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut other_letters = false;
    let mut changes = false;
    let mut at = 0;
    while at < bytes.len() {
        let lead = bytes[at];
        if lead.is_ascii() {
            changes |= lead.is_ascii_uppercase();
            at += 1;
        } else if (0xE3..=0xE9).contains(&lead) {
            // U+3000..U+9FFF (CJK symbols, kana, ideographs): no case, and
            // no need to decode the character to know it.
            at += 3;
        } else {
            let Some(c) = s[at..].chars().next() else {
                break;
            };
            at += c.len_utf8();
            if !has_no_case(c) {
                other_letters = true;
                if c.to_lowercase().next() != Some(c) {
                    changes = true;
                    break;
                }
            }
        }
    }
    if !changes {
        return None;
    }
    // Only ASCII letters change: `to_lowercase` would look every other
    // character up in the Unicode tables to leave it as it is.
    Some(if other_letters {
        s.to_lowercase()
    } else {
        s.to_ascii_lowercase()
    })
}

/// Whether `c` certainly has no case: CJK symbols and punctuation, kana,
/// ideographs, Yi (U+3000..U+A63F), Hangul syllables, general punctuation,
/// and the full-width forms other than the Latin letters.
fn has_no_case(c: char) -> bool {
    matches!(c,
        '\u{2000}'..='\u{206F}'
        | '\u{3000}'..='\u{A63F}'
        | '\u{AC00}'..='\u{D7A3}'
        | '\u{FF00}'..='\u{FF20}'
        | '\u{FF3B}'..='\u{FF40}'
        | '\u{FF5B}'..='\u{FFEF}')
}

fn ordering_holds(op: CompareOp, ordering: Option<Ordering>) -> bool {
    let Some(ordering) = ordering else {
        return false;
    };
    match op {
        CompareOp::Eq => ordering == Ordering::Equal,
        CompareOp::Ne => ordering != Ordering::Equal,
        CompareOp::Lt => ordering == Ordering::Less,
        CompareOp::Le => ordering != Ordering::Greater,
        CompareOp::Gt => ordering == Ordering::Greater,
        CompareOp::Ge => ordering != Ordering::Less,
        CompareOp::Contains => false,
    }
}

/// Small counts, the usual numbers a condition looks at, without an allocation.
const SMALL_NUMBERS: [&str; 16] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
];

fn number_text(n: f64) -> Cow<'static, str> {
    if n >= 0.0 && n.fract() == 0.0 && n < SMALL_NUMBERS.len() as f64 {
        Cow::Borrowed(SMALL_NUMBERS[n as usize])
    } else {
        Cow::Owned(FieldValue::Number(n).to_string())
    }
}

fn borrowed(s: &str) -> Cow<'_, str> {
    Cow::Borrowed(s)
}

fn parse_number(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|n| n.is_finite())
}

impl<'p> Evaluator<'p, '_> {
    pub(super) fn eval_expr(&self, expr: &'p Expr, looked: &mut Looked<'p>) -> bool {
        match expr {
            Expr::And(a, b, _) => self.eval_expr(a, looked) && self.eval_expr(b, looked),
            Expr::Or(a, b, _) => self.eval_expr(a, looked) || self.eval_expr(b, looked),
            Expr::Not(inner, _) => !self.eval_expr(inner, looked),
            Expr::Always(_) => true,
            Expr::Compare {
                left,
                op,
                right,
                span,
            } => {
                if op.node == CompareOp::Contains {
                    self.contains(left, &right.node, *span, looked)
                } else {
                    let got = self.operand(left);
                    let shown = match (&got, &right.node) {
                        // The name the condition asks for is the policy's own
                        // (shown as is when `shorten` would not change it).
                        (Got::Name(name), Value::Name(wanted))
                            if name == wanted
                                && wanted.len() <= SEEN_MAX_CHARS
                                && !wanted.chars().any(char::is_control) =>
                        {
                            Cow::Borrowed(wanted.as_str())
                        }
                        _ => self.display(&got),
                    };
                    looked.see(self.operand_label(left), shown);
                    self.compare(&got, op.node, &right.node, looked)
                }
            }
            Expr::HasAny {
                left,
                all,
                values,
                span,
            } => self.has_any(left, *all, values, *span, looked),
            Expr::Matches { left, regex, span } => self.matches(left, regex, *span, looked),
            Expr::IsSet {
                left,
                negated,
                span: _,
            } => {
                let got = self.operand(left);
                looked.see(self.operand_label(left), self.display(&got));
                got.is_set() != *negated
            }
            Expr::Flag { left, span: _ } => {
                let got = self.operand(left);
                let value = match &got {
                    Got::Flag(b) => *b,
                    Got::Number(n) => *n != 0.0,
                    other => other.is_set(),
                };
                looked.see(
                    self.operand_label(left),
                    Cow::Borrowed(if value { "true" } else { "false" }),
                );
                value
            }
            Expr::Arrival {
                test,
                calendar,
                span: _,
            } => self.arrival(*test, &calendar.node, looked),
        }
    }

    /// `received in hours of CAL` / `received on a working day of CAL`,
    /// asked of the instant the case was opened (never the wall clock).
    fn arrival(&self, test: ArrivalTest, calendar_name: &str, looked: &mut Looked<'p>) -> bool {
        let received = self.case.created_at;
        let asked = match test {
            ArrivalTest::InHours => "in hours",
            ArrivalTest::OnWorkingDay => "on a working day",
        };
        // The checker rejects unknown calendars; a policy built without it
        // answers `false` rather than guessing.
        let calendar = self.policy.calendar(calendar_name);
        let answer = calendar.is_some_and(|calendar| match test {
            ArrivalTest::InHours => calendar.is_open(received),
            ArrivalTest::OnWorkingDay => calendar.is_working_day_at(received),
        });
        let local = match calendar {
            Some(calendar) => received.with_timezone(&calendar.zone()).to_rfc3339(),
            None => received.to_rfc3339(),
        };
        looked.see(
            Cow::Owned(format!("received {asked} of {calendar_name}")),
            Cow::Owned(format!("{answer} (received {local})")),
        );
        answer
    }

    /// [`Self::value_text`], borrowed from the policy when the value is a name or text.
    fn policy_text(&self, value: &'p Value, looked: &Looked<'_>) -> Option<Cow<'p, str>> {
        match value {
            Value::Name(s) | Value::Text(s) => Some(Cow::Borrowed(s)),
            other => self
                .value_text(other, looked)
                .map(|text| Cow::Owned(text.into_owned())),
        }
    }

    /// The text of a right-hand value used as a string (names, texts, `$N`).
    fn value_text<'v>(&self, value: &'v Value, looked: &'v Looked<'_>) -> Option<Cow<'v, str>> {
        match value {
            Value::Name(s) | Value::Text(s) => Some(Cow::Borrowed(s)),
            Value::Capture(group) => looked.capture(*group).map(Cow::Borrowed),
            Value::Number(n) => Some(Cow::Owned(FieldValue::Number(*n).to_string())),
            Value::Bool(b) => Some(Cow::Owned(b.to_string())),
            Value::Date(d) => Some(Cow::Owned(d.to_string())),
        }
    }

    fn compare(&self, got: &Got<'_>, op: CompareOp, right: &Value, looked: &Looked<'_>) -> bool {
        match got {
            Got::Missing => op == CompareOp::Ne,
            Got::Number(n) => {
                let r = match right {
                    Value::Number(r) => Some(*r),
                    other => self
                        .value_text(other, looked)
                        .and_then(|t| parse_number(&t)),
                };
                r.is_some_and(|r| ordering_holds(op, n.partial_cmp(&r)))
            }
            Got::Flag(b) => match (right, op) {
                (Value::Bool(r), CompareOp::Eq) => b == r,
                (Value::Bool(r), CompareOp::Ne) => b != r,
                _ => false,
            },
            Got::Date(d) => {
                let r = match right {
                    Value::Date(r) => Some(*r),
                    other => self
                        .value_text(other, looked)
                        .and_then(|t| NaiveDate::parse_from_str(t.trim(), "%Y-%m-%d").ok()),
                };
                r.is_some_and(|r| ordering_holds(op, Some(d.cmp(&r))))
            }
            Got::Text(s) | Got::Name(s) => {
                self.compare_str(s, matches!(got, Got::Text(_)), op, right, looked)
            }
            Got::List(items) | Got::Tags(items) => {
                let Some(r) = self.value_text(right, looked) else {
                    return false;
                };
                let any_equal = items.iter().any(|item| item.as_ref() == r.as_ref());
                match op {
                    CompareOp::Eq => any_equal,
                    CompareOp::Ne => !any_equal,
                    _ => false,
                }
            }
        }
    }

    fn compare_str(
        &self,
        s: &str,
        is_text: bool,
        op: CompareOp,
        right: &Value,
        looked: &Looked<'_>,
    ) -> bool {
        match op {
            CompareOp::Eq | CompareOp::Ne => {
                let Some(r) = self.value_text(right, looked) else {
                    return op == CompareOp::Ne;
                };
                // Free text compares without regard to case, like `contains`;
                // declared names are exact.
                let equal = if is_text {
                    lower(s) == lower(&r)
                } else {
                    s == r.as_ref()
                };
                equal == (op == CompareOp::Eq)
            }
            _ => {
                if let Value::Number(r) = right {
                    return parse_number(s).is_some_and(|n| ordering_holds(op, n.partial_cmp(r)));
                }
                // Names order by severity rank; nothing else has an order.
                let Some(r) = self.value_text(right, looked) else {
                    return false;
                };
                match (self.policy.severity_rank(s), self.policy.severity_rank(&r)) {
                    (Some(a), Some(b)) => ordering_holds(op, Some(a.cmp(&b))),
                    _ => false,
                }
            }
        }
    }

    fn contains(
        &self,
        left: &Operand,
        right: &'p Value,
        span: super::Span,
        looked: &mut Looked<'p>,
    ) -> bool {
        let got = self.operand(left);
        let needle = self.policy_text(right, looked);
        let found = needle.as_deref().filter(|needle| match &got {
            Got::Text(s) | Got::Name(s) => self.lowered(left, s).contains(lower(needle).as_ref()),
            Got::List(items) => {
                let needle = lower(needle);
                items
                    .iter()
                    .any(|item| lower(item).contains(needle.as_ref()))
            }
            // `tags contains crisis` asks for the tag, not a part of one.
            Got::Tags(items) => items.iter().any(|item| item.as_ref() == *needle),
            _ => false,
        });
        let holds = found.is_some();
        let label = self.condition_label(span, || {
            format!(
                "{} contains \"{}\"",
                self.operand_label(left),
                needle.as_deref().unwrap_or("")
            )
        });
        let shown = match needle {
            Some(needle) if holds => shortened(needle),
            _ => Cow::Borrowed(NO_MATCH),
        };
        looked.see(label, shown);
        holds
    }

    fn has_any(
        &self,
        left: &Operand,
        all: bool,
        values: &'p [Spanned<Value>],
        span: super::Span,
        looked: &mut Looked<'p>,
    ) -> bool {
        let got = self.operand(left);
        // Free text is lowered once for all the values.
        let haystack = match &got {
            Got::Text(s) => Some(self.lowered(left, s)),
            _ => None,
        };
        let mut found: SmallVec<[Cow<'p, str>; 2]> = SmallVec::new();
        for value in values {
            let Some(needle) = self.policy_text(&value.node, looked) else {
                continue;
            };
            let hit = match &got {
                Got::Text(_) => haystack
                    .as_deref()
                    .is_some_and(|text| text.contains(lower(&needle).as_ref())),
                Got::Name(s) => s.as_ref() == needle.as_ref(),
                Got::List(items) => {
                    let needle = lower(&needle);
                    items.iter().any(|item| lower(item) == needle)
                }
                Got::Tags(items) => items.iter().any(|item| item.as_ref() == needle.as_ref()),
                Got::Number(n) => parse_number(&needle).is_some_and(|v| v == *n),
                Got::Missing | Got::Flag(_) | Got::Date(_) => false,
            };
            if hit {
                found.push(needle);
            }
        }
        let holds = if all {
            found.len() == values.len()
        } else {
            !found.is_empty()
        };
        let label = self.condition_label(span, || {
            format!(
                "{} has {} (…)",
                self.operand_label(left),
                if all { "all" } else { "any" }
            )
        });
        let shown = match found.len() {
            0 => Cow::Borrowed(NONE),
            1 => shortened(found.swap_remove(0)),
            _ => Cow::Owned(shorten(&found.join(", "))),
        };
        looked.see(label, shown);
        holds
    }

    fn matches(
        &self,
        left: &Operand,
        regex: &'p Spanned<RegexLit>,
        span: super::Span,
        looked: &mut Looked<'p>,
    ) -> bool {
        let label = self.condition_label(span, || {
            format!(
                "{} matches /{}/",
                self.operand_label(left),
                regex.node.pattern
            )
        });
        let Some(compiled) = self.policy.regex(regex.span) else {
            looked.see(label, Cow::Borrowed("(regex not compiled by the checker)"));
            return false;
        };
        let got = self.operand(left);
        let number_text;
        let candidates: SmallVec<[&str; 2]> = match &got {
            Got::Text(s) | Got::Name(s) => smallvec![s.as_ref()],
            Got::List(items) | Got::Tags(items) => items.iter().map(|i| i.as_ref()).collect(),
            Got::Number(n) => {
                number_text = FieldValue::Number(*n).to_string();
                smallvec![number_text.as_str()]
            }
            Got::Date(_) | Got::Flag(_) | Got::Missing => SmallVec::new(),
        };
        let has_groups = compiled.captures_len() > 1;
        for candidate in candidates {
            let Some(found) = compiled.find(candidate) else {
                continue;
            };
            // Capture groups cost allocations: ask for them only from a
            // regex that has some, and only once it is known to match.
            looked.captures.clear();
            if has_groups {
                if let Some(caps) = compiled.captures_at(candidate, found.start()) {
                    looked.captures = caps
                        .iter()
                        .map(|group| group.map(|m| m.as_str().to_owned()))
                        .collect();
                }
            }
            let shown = shortened(Cow::Borrowed(found.as_str())).into_owned();
            looked.see(label, Cow::Owned(shown));
            return true;
        }
        looked.see(label, Cow::Borrowed(NO_MATCH));
        false
    }

    /// A value for a `seen` pair; declared names are borrowed from the policy.
    fn display(&self, got: &Got<'_>) -> Cow<'p, str> {
        if let Got::Name(name) = got {
            if let Some(declared) = self.declared_name(name) {
                return Cow::Borrowed(declared);
            }
        }
        got.display()
    }

    /// `name` as the policy (or the language) declares it, if it does.
    fn declared_name(&self, name: &str) -> Option<&'p str> {
        self.policy.declared_name(name)
    }

    /// The text as written in the policy, or a rendering when the span is not in the sources.
    fn condition_label(
        &self,
        span: super::Span,
        fallback: impl FnOnce() -> String,
    ) -> Cow<'p, str> {
        snippet_of(self.policy, span).map_or_else(|| Cow::Owned(fallback()), Cow::Borrowed)
    }

    pub(super) fn operand_label(&self, left: &Operand) -> Cow<'p, str> {
        if let Some(text) = snippet_of(self.policy, left.span()) {
            return Cow::Borrowed(text);
        }
        Cow::Owned(match left {
            Operand::Path(path) => path
                .node
                .iter()
                .map(|p| p.node.as_str())
                .collect::<Vec<_>>()
                .join("."),
            Operand::Header(name) => format!("header \"{}\"", name.node),
            Operand::Count(aggregate) => match &aggregate.node {
                Aggregate::CasesFromSender { window } => format!(
                    "count(cases from same sender within {})",
                    clockmath::duration_text(window.node)
                ),
                Aggregate::DistinctSenders { key, window } => format!(
                    "count(distinct senders with {} within {})",
                    match &key.node {
                        GroupKey::SameCategory => "same category".to_owned(),
                        GroupKey::SameSubject => "same subject".to_owned(),
                        GroupKey::Tag(tag) => format!("tag {}", tag.node),
                    },
                    clockmath::duration_text(window.node)
                ),
                Aggregate::Reopenings => "count(reopenings)".to_owned(),
            },
        })
    }

    /// `s` lower-cased; the mail text and subject are lowered once per evaluation.
    fn lowered<'s>(&'s self, left: &Operand, s: &'s str) -> Cow<'s, str> {
        if let Operand::Path(path) = left {
            if let [only] = path.node.as_slice() {
                match only.node.as_str() {
                    "text" => {
                        let text = self.text;
                        let lowered = self.lowered.text.get_or_init(|| lower_if_needed(text));
                        return Cow::Borrowed(lowered.as_deref().unwrap_or(text));
                    }
                    "subject" => {
                        let subject = self.subject();
                        let lowered = self
                            .lowered
                            .subject
                            .get_or_init(|| lower_if_needed(subject));
                        return Cow::Borrowed(lowered.as_deref().unwrap_or(subject));
                    }
                    _ => {}
                }
            }
        }
        lower(s)
    }

    fn subject(&self) -> &str {
        self.mail
            .map_or(self.case.subject.as_str(), |m| m.subject.as_str())
    }

    fn operand(&self, left: &Operand) -> Got<'_> {
        match left {
            Operand::Path(path) => self.path(&path.node),
            Operand::Header(name) => self
                .mail
                .and_then(|m| m.header(&name.node))
                .map_or(Got::Missing, |v| Got::Text(Cow::Borrowed(v))),
            Operand::Count(aggregate) => Got::Number(self.count(&aggregate.node) as f64),
        }
    }

    fn path(&self, path: &[super::super::ast::Ident]) -> Got<'_> {
        let first = path.first().map_or("", |p| p.node.as_str());
        let second = path.get(1).map(|p| p.node.as_str());
        let sender = self.mail.map_or(&self.case.sender, |m| &m.sender);
        match (first, second, path.len()) {
            ("subject", None, 1) => Got::Text(borrowed(self.subject())),
            ("text", None, 1) => Got::Text(borrowed(self.text)),
            ("sender", None, 1) | ("sender", Some("email" | "address"), 2) => {
                Got::Text(borrowed(&sender.email))
            }
            ("sender", Some("domain"), 2) => Got::Text(borrowed(sender.domain())),
            ("sender", Some("name"), 2) => sender
                .name
                .as_deref()
                .map_or(Got::Missing, |n| Got::Text(borrowed(n))),
            ("recipients", None, 1) => Got::List(
                self.mail
                    .map(|m| m.recipients.iter().map(|r| borrowed(&r.email)).collect())
                    .unwrap_or_default(),
            ),
            ("channel", None, 1) => {
                let channel = if self.case.channel.is_empty() {
                    self.mail.map_or("", |m| m.channel.as_str())
                } else {
                    self.case.channel.as_str()
                };
                Got::Name(borrowed(channel))
            }
            ("attachments", Some("count"), 2) => {
                Got::Number(self.mail.map_or(0, |m| m.attachments.len()) as f64)
            }
            ("attachments", Some("names"), 2) => Got::List(
                self.mail
                    .map(|m| m.attachments.iter().map(|a| borrowed(&a.name)).collect())
                    .unwrap_or_default(),
            ),
            ("attachments", Some("types"), 2) => Got::List(
                self.mail
                    .map(|m| {
                        m.attachments
                            .iter()
                            .map(|a| borrowed(&a.content_type))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            ("language", None, 1) => {
                let language = self
                    .mail
                    .map(|m| m.language.as_str())
                    .filter(|l| !l.is_empty())
                    .unwrap_or(self.case.language.as_str());
                Got::Name(borrowed(language))
            }
            ("status", None, 1) => Got::Name(borrowed(self.case.state.as_str())),
            ("tags", None, 1) => Got::Tags(self.tags().into_iter().map(borrowed).collect()),
            ("open", None, 1) => Got::Flag(self.case.state.is_open()),
            ("overdue", None, 1) => {
                Got::Flag(self.clocks.values().any(|c| {
                    c.stopped_at.is_none() && c.paused_since.is_none() && c.due <= self.now
                }))
            }
            ("route" | "assignee", None, 1) => {
                self.assignment().map_or(Got::Missing, |(department, _)| {
                    Got::Name(borrowed(department))
                })
            }
            ("reopenings", None, 1) => Got::Number(f64::from(self.case.reopen_count)),
            (field, None, 1) => match self.field(field) {
                None => Got::Missing,
                Some(FieldRef::Name(n)) => Got::Name(borrowed(n)),
                Some(FieldRef::Value(value)) => Got::of_field(value),
            },
            _ => Got::Missing,
        }
    }

    /// An aggregate over other cases, plus this case when it qualifies.
    fn count(&self, aggregate: &Aggregate) -> u64 {
        let until = self.now;
        let case = self.case;
        match aggregate {
            Aggregate::CasesFromSender { window } => {
                let since = clockmath::window_start(until, window.node);
                let others = self
                    .history
                    .cases_from_sender(&case.sender.email, since, until);
                let this = u64::from(case.created_at >= since && case.created_at <= until);
                others + this
            }
            Aggregate::DistinctSenders { key, window } => {
                let since = clockmath::window_start(until, window.node);
                let fingerprint;
                let (group, this_qualifies) = match &key.node {
                    GroupKey::SameCategory => {
                        match self.field("category").and_then(FieldRef::name_or_text) {
                            Some(category) => (SenderGroup::Category(category), true),
                            _ => return 0,
                        }
                    }
                    GroupKey::SameSubject => {
                        fingerprint = subject_fingerprint(&case.subject);
                        (SenderGroup::Subject(&fingerprint), true)
                    }
                    GroupKey::Tag(tag) => (SenderGroup::Tag(&tag.node), self.has_tag(&tag.node)),
                };
                let others =
                    self.history
                        .count_distinct_senders(group, since, until, &case.sender.email);
                let this_counts = this_qualifies
                    && case.created_at >= since
                    && case.created_at <= until
                    && !others.includes;
                others.senders + u64::from(this_counts)
            }
            Aggregate::Reopenings => u64::from(case.reopen_count),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowering_is_skipped_only_when_it_would_change_nothing() {
        assert_eq!(lower_if_needed("燃气泄漏 gas"), None);
        assert_eq!(lower_if_needed("한국어 텍스트"), None);
        assert_eq!(lower_if_needed("燃气 GAS").as_deref(), Some("燃气 gas"));
        assert_eq!(lower_if_needed("ПРИВЕТ мир").as_deref(), Some("привет мир"));
        // A title-case letter is not upper case, but it does lower-case.
        assert_eq!(lower_if_needed("ǅ").as_deref(), Some("ǆ"));
        assert_eq!(lower_if_needed("Ｂｉｌｌ").as_deref(), Some("ｂｉｌｌ"));
    }

    #[test]
    fn characters_said_to_have_no_case_have_none() {
        let caseless = (0..=0x10FFFF_u32)
            .filter_map(char::from_u32)
            .filter(|c| has_no_case(*c));
        for c in caseless {
            assert!(c.to_lowercase().eq([c]), "{c:?} lowers");
        }
        assert!(!has_no_case('Ａ') && !has_no_case('ｚ') && !has_no_case('Σ'));
        // Whatever the shortcut, the result is the standard lower case (the
        // Greek final sigma depends on what follows it).
        for text in ["ΟΔΟΣ，路", "Gas，燃气“漏”", "ＧＡＳ。", "The BILL 账单"] {
            assert_eq!(lower_if_needed(text), Some(text.to_lowercase()), "{text}");
        }
        assert_eq!(lower_if_needed("gas，燃气"), None);
    }

    #[test]
    fn shortened_values_stay_on_one_line_and_mark_the_cut() {
        assert_eq!(shorten("a\nb"), "a b");
        let long = "长".repeat(SEEN_MAX_CHARS + 5);
        let cut = shorten(&long);
        assert_eq!(cut.chars().count(), SEEN_MAX_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(number_text(3.0), "3");
        assert_eq!(number_text(1350.0), "1350");
        assert_eq!(number_text(2.5), "2.5");
        assert!(matches!(
            shortened(Cow::Borrowed("燃气")),
            Cow::Borrowed("燃气")
        ));
        assert_eq!(shortened(Cow::Borrowed("a\u{85}b")), "a b");
        assert_eq!(shortened(Cow::Borrowed(long.as_str())), cut);
    }
}

//! Running the tests written in rule files (`complaintd rules test`).
//!
//! A test is a mail (inline or an `.eml` file), optional earlier cases
//! (`given`), an arrival time and channel, and expectations. The mail is
//! evaluated as a new complaint through the same [`evaluate`] and [`apply`]
//! the daemon uses; then every expectation is compared and every mismatch
//! reported with the expectation's location.

use std::fmt;
use std::path::Path;

use chrono::{DateTime, FixedOffset, Utc};

use super::ast::{
    CompareOp, Expectation, Expr, HistoryCase, Operand, Span, Spanned, TestDecl, TestMail, Value,
};
use super::eval::{apply, evaluate, holds, location_of, HistoryEntry, Input, MemoryHistory};
use super::policy::Policy;
use crate::case::{subject_fingerprint, Address, Case, CaseId, MailFacts};

/// One expectation that did not hold, or a problem running the test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestFailure {
    /// `file:line:col` of the expectation (or of the test).
    pub location: String,
    /// E.g. `expected severity == major, got general`.
    pub message: String,
}

impl fmt::Display for TestFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// The result of one test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestOutcome {
    pub name: String,
    /// `file:line:col` of the test.
    pub location: String,
    pub failures: Vec<TestFailure>,
}

impl TestOutcome {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs every test of the policy; `policy_dir` resolves `mail file` paths.
pub fn run_tests(policy: &Policy, policy_dir: &Path) -> Vec<TestOutcome> {
    policy
        .tests
        .iter()
        .map(|test| run_test(policy, test, policy_dir))
        .collect()
}

/// Renders outcomes as `rules test` prints them: each failed test with its
/// failures, then `N passed, M failed`.
pub fn render_outcomes(outcomes: &[TestOutcome]) -> String {
    let mut out = String::new();
    for outcome in outcomes.iter().filter(|o| !o.passed()) {
        out.push_str(&format!("FAILED {} ({})\n", outcome.name, outcome.location));
        for failure in &outcome.failures {
            out.push_str(&format!("    {failure}\n"));
        }
    }
    let passed = outcomes.iter().filter(|o| o.passed()).count();
    out.push_str(&format!(
        "{passed} passed, {} failed\n",
        outcomes.len() - passed
    ));
    out
}

/// Runs one test.
pub fn run_test(policy: &Policy, test: &TestDecl, policy_dir: &Path) -> TestOutcome {
    let location = location_of(policy, test.span).unwrap_or_default();
    let mut outcome = TestOutcome {
        name: test.name.node.clone(),
        location: location.clone(),
        failures: Vec::new(),
    };
    let at_location = |span: Span| location_of(policy, span).unwrap_or_else(|| location.clone());
    let channel = test
        .channel
        .as_ref()
        .map(|c| c.node.clone())
        .or_else(|| policy.channels.first().map(|c| c.name.node.clone()))
        .unwrap_or_default();
    let parsed = match &test.mail {
        TestMail::Inline { headers, body, .. } => Ok(inline_mail(headers, &body.node)),
        TestMail::File(path) => {
            let full = policy_dir.join(&path.node);
            std::fs::read(&full)
                .map_err(|e| (path.span, format!("cannot read {}: {e}", full.display())))
                .and_then(|raw| mail_from_eml(&raw).map_err(|e| (path.span, e)))
        }
    };
    let (mut mail, date) = match parsed {
        Ok(parsed) => parsed,
        Err((span, message)) => {
            outcome.failures.push(TestFailure {
                location: at_location(span),
                message,
            });
            return outcome;
        }
    };
    let Some(arrival) = test.at.as_ref().map(|a| a.node).or(date) else {
        outcome.failures.push(TestFailure {
            location,
            message: "the test has no `at` and its mail no Date header: when does it arrive?"
                .to_owned(),
        });
        return outcome;
    };
    let now = arrival.with_timezone(&Utc);
    mail.channel = channel.clone();
    mail.received_at = now;
    mail.language = detect_language(&mail.subject, &mail.text, &policy.languages);
    let history = history_of(&test.history);
    let mut case = Case::new(
        CaseId("TEST-000001".to_owned()),
        now,
        &channel,
        mail.sender.clone(),
        &mail.subject,
        &mail.language,
    );
    let evaluation = evaluate(policy, &case, &Input::NewComplaint(&mail), &history, now);
    apply(&mut case, &evaluation.actions, now);
    for expectation in &test.expectations {
        if let Some(message) =
            check_expectation(policy, &case, &evaluation, expectation, &history, now)
        {
            outcome.failures.push(TestFailure {
                location: at_location(expectation.span),
                message,
            });
        }
    }
    outcome
}

fn history_of(given: &[HistoryCase]) -> MemoryHistory {
    MemoryHistory {
        entries: given
            .iter()
            .map(|g| HistoryEntry {
                sender: Address::new(&g.sender.node, None).email,
                opened_at: g.at.node.with_timezone(&Utc),
                category: g.category.as_ref().map(|c| c.node.clone()),
                subject_fingerprint: g
                    .subject
                    .as_ref()
                    .map(|s| subject_fingerprint(&s.node))
                    .unwrap_or_default(),
                tags: g.tags.iter().map(|t| t.node.clone()).collect(),
            })
            .collect(),
    }
}

/// `None` when the expectation holds, else what was expected and what was found.
fn check_expectation(
    policy: &Policy,
    case: &Case,
    evaluation: &super::eval::Evaluation,
    expectation: &Spanned<Expectation>,
    history: &MemoryHistory,
    now: DateTime<Utc>,
) -> Option<String> {
    match &expectation.node {
        Expectation::Field { field, value } => {
            let path: Vec<_> = field
                .node
                .split('.')
                .map(|part| Spanned::new(part.to_owned(), field.span))
                .collect();
            let condition = Expr::Compare {
                left: Operand::Path(Spanned::new(path, field.span)),
                op: Spanned::new(CompareOp::Eq, field.span),
                right: value.clone(),
                span: Span::default(),
            };
            let (ok, seen) = holds(policy, case, &condition, history, now);
            let got = seen
                .into_iter()
                .next()
                .map_or_else(|| "(nothing)".to_owned(), |(_, v)| v);
            (!ok).then(|| {
                format!(
                    "expected {} == {}, got {got}",
                    field.node,
                    value_text(&value.node)
                )
            })
        }
        Expectation::Tag(tag) => (!case.tags.contains(&tag.node))
            .then(|| format!("expected tag {}, got {}", tag.node, tags_text(case))),
        Expectation::NoTag(tag) => case
            .tags
            .contains(&tag.node)
            .then(|| format!("expected no tag {}, but the case has it", tag.node)),
        Expectation::Route { department, cc } => {
            let wanted_cc: Vec<&str> = cc.iter().map(|c| c.node.as_str()).collect();
            let expected = route_text(&department.node, &wanted_cc);
            match &case.assignment {
                None => Some(format!("expected route {expected}, got no route")),
                Some(assignment) => {
                    let mut got_cc: Vec<&str> = assignment.cc.iter().map(String::as_str).collect();
                    let mut want_sorted = wanted_cc.clone();
                    got_cc.sort_unstable();
                    want_sorted.sort_unstable();
                    let same = assignment.department == department.node && got_cc == want_sorted;
                    let got_cc: Vec<&str> = assignment.cc.iter().map(String::as_str).collect();
                    (!same).then(|| {
                        format!(
                            "expected route {expected}, got {} (by {})",
                            route_text(&assignment.department, &got_cc),
                            assignment.rule
                        )
                    })
                }
            }
        }
        Expectation::Due { deadline, at } => {
            let expected = at.node;
            match case.clocks.get(&deadline.node) {
                None => Some(format!(
                    "expected deadline {} due {}, but its clock did not start",
                    deadline.node,
                    expected.to_rfc3339()
                )),
                Some(clock) => {
                    let got = clock.due.with_timezone(expected.offset());
                    let same_minute =
                        clock.due.timestamp().div_euclid(60) == expected.timestamp().div_euclid(60);
                    (!same_minute).then(|| {
                        format!(
                            "expected deadline {} due {}, got {}",
                            deadline.node,
                            expected.to_rfc3339(),
                            got.to_rfc3339()
                        )
                    })
                }
            }
        }
        Expectation::Fired { rule, fired } => {
            let did = evaluation.fired(&rule.node);
            (did != *fired).then(|| {
                if *fired {
                    format!("expected rule {} fired, but it did not fire", rule.node)
                } else {
                    format!("expected rule {} not fired, but it fired", rule.node)
                }
            })
        }
    }
}

fn tags_text(case: &Case) -> String {
    if case.tags.is_empty() {
        "no tags".to_owned()
    } else {
        format!(
            "tags {}",
            case.tags.iter().cloned().collect::<Vec<_>>().join(", ")
        )
    }
}

fn route_text(department: &str, cc: &[&str]) -> String {
    if cc.is_empty() {
        department.to_owned()
    } else {
        format!("{department} cc {}", cc.join(", "))
    }
}

/// A value as the policy writes it.
fn value_text(value: &Value) -> String {
    match value {
        Value::Name(n) => n.clone(),
        Value::Text(t) => format!("\"{t}\""),
        Value::Number(n) => crate::case::FieldValue::Number(*n).to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Date(d) => d.to_string(),
        Value::Capture(n) => format!("${n}"),
    }
}

/// Parses `Name <a@b>` or `a@b` into an address.
pub fn parse_address(text: &str) -> Address {
    let text = text.trim();
    match (text.rfind('<'), text.rfind('>')) {
        (Some(open), Some(close)) if open < close => {
            let name = text[..open].trim().trim_matches('"').trim();
            Address::new(&text[open + 1..close], (!name.is_empty()).then_some(name))
        }
        _ => Address::new(text, None),
    }
}

/// The mail of an inline test: `from`, `to`, `cc`, `subject`, `date` and any
/// other header, and the body. Returns the facts and the parsed `date`, if any.
pub fn inline_mail(
    headers: &[(Spanned<String>, Spanned<String>)],
    body: &str,
) -> (MailFacts, Option<DateTime<FixedOffset>>) {
    let mut mail = MailFacts {
        text: body.to_owned(),
        ..MailFacts::default()
    };
    let mut date = None;
    for (name, value) in headers {
        let key = name.node.to_lowercase();
        let value = &value.node;
        match key.as_str() {
            "from" => mail.sender = parse_address(value),
            "to" | "cc" => mail.recipients.extend(
                value
                    .split(',')
                    .filter(|a| !a.trim().is_empty())
                    .map(parse_address),
            ),
            "subject" => mail.subject = value.clone(),
            "date" => {
                date = DateTime::parse_from_rfc3339(value.trim())
                    .or_else(|_| DateTime::parse_from_rfc2822(value.trim()))
                    .ok();
            }
            _ => {}
        }
        mail.headers.push((key, value.clone()));
    }
    (mail, date)
}

/// The facts of a raw RFC 5322 message, and its Date header, read by the
/// same parser the daemon uses (`mail::inbound`), so a rule test sees a mail
/// exactly as the daemon would.
pub fn mail_from_eml(raw: &[u8]) -> Result<(MailFacts, Option<DateTime<FixedOffset>>), String> {
    let parsed = crate::mail::inbound::parse(raw).map_err(|e| e.to_string())?;
    if parsed.mail.from.is_none() {
        return Err("the mail has no From address".to_owned());
    }
    let date = parsed.mail.date;
    let facts = parsed.mail.to_facts("", date.unwrap_or_default());
    Ok((facts, date.map(|d| d.fixed_offset())))
}

/// The language of a mail among the policy's template languages (ISO 639-1),
/// the policy's first language when detection is unsure or finds another.
pub fn detect_language(subject: &str, text: &str, languages: &[String]) -> String {
    let default = languages.first().cloned().unwrap_or_default();
    let code = crate::mail::lang::detect_mail_language(subject, text);
    if languages.contains(&code) {
        code
    } else {
        default
    }
}

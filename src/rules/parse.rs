//! Parsing rule files: pest grammar (`grammar/rules.pest`) → typed AST with exact spans.
//!
//! [`parse_file`] is the only entry point. Syntax errors from pest are turned
//! into one [`Diagnostic`] that names what was expected in words an
//! administrator knows (`` expected one of `when`, `otherwise` or `}` ``), and
//! values that are well-formed but meaningless (`2026-02-30`, `25:00`, `$0`)
//! are reported the same way, at the value.

use std::collections::VecDeque;

use chrono::{Datelike, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone};
use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::Pair;
use pest::Parser as _;

use super::ast::*;
use super::diag::Diagnostic;

/// The pest parser; kept in a private module so that its `Rule` enum (one
/// variant per grammar rule) does not leak into the crate's API next to
/// [`ast::Rule`](super::ast::Rule).
mod grammar {
    #[derive(pest_derive::Parser)]
    #[grammar = "../grammar/rules.pest"]
    pub struct RulesParser;
}

use grammar::{Rule, RulesParser};

type PResult<T> = Result<T, Diagnostic>;

/// Parses one policy file. `file` is the id the spans will carry.
pub fn parse_file(file: FileId, text: &str) -> Result<File, Diagnostic> {
    let builder = Builder::new(file, text);
    let mut pairs = match RulesParser::parse(Rule::file, text) {
        Ok(pairs) => pairs,
        Err(error) => return Err(builder.syntax_error(&error)),
    };
    match pairs.next() {
        Some(file_pair) => builder.file(file_pair),
        None => Ok(File::default()),
    }
}

/// Clock events a deadline may start or stop on, as written in rule files.
pub const CLOCK_EVENTS: &[(&str, ClockEvent)] = &[
    ("received", ClockEvent::Received),
    ("acknowledged", ClockEvent::Acknowledged),
    ("forwarded", ClockEvent::Forwarded),
    ("accepted", ClockEvent::Accepted),
    ("contacted", ClockEvent::Contacted),
    ("resolved", ClockEvent::Resolved),
    ("answered", ClockEvent::Answered),
    ("closed", ClockEvent::Closed),
    ("reopened", ClockEvent::Reopened),
    ("responsibility_decided", ClockEvent::ResponsibilityDecided),
    ("withdrawn", ClockEvent::Withdrawn),
    ("rejected", ClockEvent::Rejected),
    ("abnormally_closed", ClockEvent::AbnormallyClosed),
    ("merged", ClockEvent::Merged),
    ("follow_up", ClockEvent::FollowUp),
    ("field_set", ClockEvent::FieldSet),
];

/// Moments a `classify` block can run at, as written after `classify on`.
pub const TRIGGERS: &[(&str, Trigger)] = &[
    ("received", Trigger::Received),
    ("customer_reply", Trigger::CustomerReply),
    ("reopened", Trigger::Reopened),
];

const FIELD_TYPES: &[(&str, FieldType)] = &[
    ("text", FieldType::Text),
    ("number", FieldType::Number),
    ("flag", FieldType::Flag),
    ("date", FieldType::Date),
];

const WEEKDAYS: &[&str] = &["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const WEEKDAYS_LONG: &[&str] = &[
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

const MONTHS: &[&str] = &[
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Parentheses and `not`s a condition may nest; real policies use two or three.
/// With [`MAX_CHAIN`] this bounds the depth of a condition's tree, which the
/// checker and the evaluator walk recursively.
const MAX_CONDITION_DEPTH: usize = 16;

/// Parts one `and` or `or` chain may join.
const MAX_CHAIN: usize = 64;

/// Numbers beyond this lose precision as `f64`; no policy needs them.
const MAX_NUMBER_DIGITS: usize = 15;

/// Turns pest pairs into AST nodes, with spans computed from a line table.
struct Builder<'t> {
    file: FileId,
    text: &'t str,
    line_starts: Vec<usize>,
}

/// The children of a pair that carry meaning, in order: keywords and
/// punctuation are dropped, since the rule they appear in already says it all.
struct Cursor<'i> {
    parent: Span,
    pairs: VecDeque<Pair<'i, Rule>>,
}

impl<'i> Cursor<'i> {
    fn next(&mut self) -> PResult<Pair<'i, Rule>> {
        self.pairs
            .pop_front()
            .ok_or_else(|| internal(self.parent, "a part is missing"))
    }

    fn expect(&mut self, rule: Rule) -> PResult<Pair<'i, Rule>> {
        let pair = self.next()?;
        if pair.as_rule() == rule {
            Ok(pair)
        } else {
            Err(internal(
                self.parent,
                &format!("found {:?} where {:?} belongs", pair.as_rule(), rule),
            ))
        }
    }

    fn optional(&mut self, rule: Rule) -> Option<Pair<'i, Rule>> {
        if self.pairs.front().map(Pair::as_rule) == Some(rule) {
            self.pairs.pop_front()
        } else {
            None
        }
    }
}

/// A mismatch between the grammar and this builder: a bug, never the user's fault.
fn internal(span: Span, what: &str) -> Diagnostic {
    Diagnostic::error(span, "the rule parser failed on this text")
        .with_note(format!("internal error: {what}; please report it"))
}

impl<'t> Builder<'t> {
    fn new(file: FileId, text: &'t str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Builder {
            file,
            text,
            line_starts,
        }
    }

    /// The span of `start..end`, with the same line and column as [`super::source::span_at`].
    fn span(&self, start: usize, end: usize) -> Span {
        let line_index = self.line_starts.partition_point(|&s| s <= start) - 1;
        let line_start = self.line_starts[line_index];
        let col = self
            .text
            .get(line_start..start)
            .map_or(0, |s| s.chars().count())
            + 1;
        Span {
            file: self.file,
            start,
            end,
            line: line_index as u32 + 1,
            col: col as u32,
        }
    }

    /// The exact span of a pair: pest lets a rule end after the whitespace
    /// that followed its last token, so the end is taken from that token.
    fn of(&self, pair: &Pair<'_, Rule>) -> Span {
        self.span(pair.as_span().start(), exact_end(pair))
    }

    fn cursor<'i>(&self, pair: Pair<'i, Rule>) -> Cursor<'i> {
        let parent = self.of(&pair);
        Cursor {
            parent,
            pairs: pair
                .into_inner()
                .filter(|p| !is_syntax(p.as_rule()))
                .collect(),
        }
    }

    fn ident(&self, pair: &Pair<'_, Rule>) -> Ident {
        Spanned::new(pair.as_str().to_owned(), self.of(pair))
    }

    // ------------------------------------------------------------ items

    fn file(&self, pair: Pair<'_, Rule>) -> PResult<File> {
        let mut items = Vec::new();
        for item in self.cursor(pair).pairs {
            let item = match item.as_rule() {
                Rule::EOI => continue,
                Rule::include => {
                    let mut c = self.cursor(item);
                    Item::Include(self.string(&c.expect(Rule::string)?)?)
                }
                Rule::severity_decl => Item::Severity(self.severity_decl(item)?),
                Rule::category_decl => Item::Category(self.category_decl(item)?),
                Rule::field_decl => Item::Field(self.field_decl(item)?),
                Rule::channel_decl => Item::Channel(self.channel_decl(item)?),
                Rule::languages_decl => Item::Languages(self.languages_decl(item)?),
                Rule::calendar_decl => Item::Calendar(self.calendar_decl(item)?),
                Rule::department_decl => Item::Department(self.department_decl(item)?),
                Rule::template_decl => Item::Template(self.template_decl(item)?),
                Rule::classify_block => Item::Classify(self.classify_block(item)?),
                Rule::route_block => Item::Route(self.route_block(item)?),
                Rule::deadline_decl => Item::Deadline(self.deadline_decl(item)?),
                Rule::escalate_block => Item::Escalate(self.escalate_block(item)?),
                Rule::schedule_decl => Item::Schedule(self.schedule_decl(item)?),
                Rule::test_decl => Item::Test(self.test_decl(item)?),
                other => {
                    return Err(internal(
                        self.of(&item),
                        &format!("unexpected {other:?} at the top level"),
                    ))
                }
            };
            items.push(item);
        }
        Ok(File { items })
    }

    fn severity_decl(&self, pair: Pair<'_, Rule>) -> PResult<SeverityDecl> {
        let span = self.of(&pair);
        let levels = self
            .cursor(pair)
            .pairs
            .iter()
            .map(|p| self.ident(p))
            .collect();
        Ok(SeverityDecl { levels, span })
    }

    /// `NAME ["display"]`, shared by categories, channels and templates.
    fn name_and_display(&self, pair: Pair<'_, Rule>) -> PResult<(Ident, Option<Spanned<String>>)> {
        let mut c = self.cursor(pair);
        let name = self.ident(&c.expect(Rule::ident)?);
        let display = c
            .optional(Rule::string)
            .map(|s| self.string(&s))
            .transpose()?;
        Ok((name, display))
    }

    fn category_decl(&self, pair: Pair<'_, Rule>) -> PResult<CategoryDecl> {
        let span = self.of(&pair);
        let (name, display) = self.name_and_display(pair)?;
        Ok(CategoryDecl {
            name,
            display,
            span,
        })
    }

    fn channel_decl(&self, pair: Pair<'_, Rule>) -> PResult<ChannelDecl> {
        let span = self.of(&pair);
        let (name, display) = self.name_and_display(pair)?;
        Ok(ChannelDecl {
            name,
            display,
            span,
        })
    }

    fn template_decl(&self, pair: Pair<'_, Rule>) -> PResult<TemplateDecl> {
        let span = self.of(&pair);
        let (name, file_stem) = self.name_and_display(pair)?;
        // Without a file name the template's own name is the file name.
        let file_stem = file_stem.unwrap_or_else(|| name.clone());
        Ok(TemplateDecl {
            name,
            file_stem,
            span,
        })
    }

    fn field_decl(&self, pair: Pair<'_, Rule>) -> PResult<FieldDecl> {
        let span = self.of(&pair);
        let mut c = self.cursor(pair);
        let name = self.ident(&c.expect(Rule::ident)?);
        let ty_pair = c.expect(Rule::field_type)?;
        let ty_span = self.of(&ty_pair);
        let written = ty_pair.as_str();
        let ty = lookup(FIELD_TYPES, written).ok_or_else(|| {
            unknown_name(
                ty_span,
                "field type",
                written,
                FIELD_TYPES.iter().map(|(n, _)| *n),
            )
        })?;
        let display = c
            .optional(Rule::string)
            .map(|s| self.string(&s))
            .transpose()?;
        let set_by_department = c.optional(Rule::set_by_department).map(|p| self.of(&p));
        Ok(FieldDecl {
            name,
            ty: Spanned::new(ty, ty_span),
            display,
            set_by_department,
            span,
        })
    }

    fn languages_decl(&self, pair: Pair<'_, Rule>) -> PResult<LanguagesDecl> {
        let span = self.of(&pair);
        let languages = self
            .cursor(pair)
            .pairs
            .iter()
            .map(|p| self.ident(p))
            .collect();
        Ok(LanguagesDecl { languages, span })
    }

    fn calendar_decl(&self, pair: Pair<'_, Rule>) -> PResult<CalendarDecl> {
        let span = self.of(&pair);
        let mut c = self.cursor(pair);
        let name = self.ident(&c.expect(Rule::ident)?);
        let zone = self.string(&c.expect(Rule::time_zone)?)?;
        let mut entries = Vec::new();
        for entry in c.pairs {
            let entry_span = self.of(&entry);
            let rule = entry.as_rule();
            let mut days = Vec::new();
            let mut intervals = Vec::new();
            let mut dates = Vec::new();
            let mut label = None;
            for part in self.cursor(entry).pairs {
                match part.as_rule() {
                    Rule::weekdays => days.push(self.weekdays(part)?),
                    Rule::time_range => intervals.push(self.time_range(part)?),
                    Rule::date_range => dates.push(self.date_range(part)?),
                    Rule::string => label = Some(self.string(&part)?),
                    other => return Err(internal(entry_span, &format!("{other:?} in a calendar"))),
                }
            }
            entries.push(match rule {
                Rule::hours_entry => CalendarEntry::Hours {
                    days,
                    intervals,
                    span: entry_span,
                },
                Rule::holiday_entry => CalendarEntry::Holiday {
                    dates,
                    label,
                    span: entry_span,
                },
                _ => CalendarEntry::Workday {
                    dates,
                    label,
                    span: entry_span,
                },
            });
        }
        Ok(CalendarDecl {
            name,
            zone,
            entries,
            span,
        })
    }

    fn department_decl(&self, pair: Pair<'_, Rule>) -> PResult<DepartmentDecl> {
        let span = self.of(&pair);
        let mut c = self.cursor(pair);
        let name = self.ident(&c.expect(Rule::ident)?);
        let display = c
            .optional(Rule::string)
            .map(|s| self.string(&s))
            .transpose()?;
        let mut addresses = Vec::new();
        let mut manager: Option<Spanned<String>> = None;
        let mut contacts = Vec::new();
        let mut calendar: Option<Ident> = None;
        for part in c.pairs {
            match part.as_rule() {
                Rule::address => addresses.push(self.address(&part)),
                Rule::dept_manager => {
                    let part_span = self.of(&part);
                    let address = self.address(&self.cursor(part).expect(Rule::address)?);
                    if let Some(first) = &manager {
                        return Err(self.repeated(part_span, "manager", first.span));
                    }
                    manager = Some(address);
                }
                Rule::dept_contact => {
                    let mut parts = self.cursor(part);
                    let role = self.ident(&parts.expect(Rule::ident)?);
                    let address = self.address(&parts.expect(Rule::address)?);
                    contacts.push((role, address));
                }
                Rule::dept_calendar => {
                    let part_span = self.of(&part);
                    let cal = self.ident(&self.cursor(part).expect(Rule::ident)?);
                    if let Some(first) = &calendar {
                        return Err(self.repeated(part_span, "calendar", first.span));
                    }
                    calendar = Some(cal);
                }
                other => return Err(internal(span, &format!("{other:?} in a department"))),
            }
        }
        Ok(DepartmentDecl {
            name,
            display,
            addresses,
            manager,
            contacts,
            calendar,
            span,
        })
    }

    /// A setting given twice in one block: the second one is the error.
    fn repeated(&self, span: Span, what: &str, first: Span) -> Diagnostic {
        Diagnostic::error(span, format!("`{what}` is given twice"))
            .with_note(format!("it was first given on line {}", first.line))
    }

    // ------------------------------------------------------------ classification

    fn classify_block(&self, pair: Pair<'_, Rule>) -> PResult<ClassifyBlock> {
        let span = self.of(&pair);
        let keyword = self.span(span.start, span.start + "classify".len());
        let mut c = self.cursor(pair);
        let trigger = match c.optional(Rule::trigger) {
            Some(t) => {
                let name = self.cursor(t).expect(Rule::ident)?;
                let name_span = self.of(&name);
                let trigger = lookup(TRIGGERS, name.as_str()).ok_or_else(|| {
                    unknown_name(
                        name_span,
                        "moment",
                        name.as_str(),
                        TRIGGERS.iter().map(|(n, _)| *n),
                    )
                })?;
                Spanned::new(trigger, name_span)
            }
            None => Spanned::new(Trigger::Received, keyword),
        };
        let rules = c
            .pairs
            .into_iter()
            .map(|r| self.rule_decl(r))
            .collect::<PResult<_>>()?;
        Ok(ClassifyBlock {
            trigger,
            rules,
            span,
        })
    }

    fn rule_decl(&self, pair: Pair<'_, Rule>) -> PResult<super::ast::Rule> {
        let span = self.of(&pair);
        let mut c = self.cursor(pair);
        let name = self.ident(&c.expect(Rule::ident)?);
        let description = c
            .optional(Rule::string)
            .map(|s| self.string(&s))
            .transpose()?;
        let condition = self.condition(c.expect(Rule::condition)?)?;
        let mut actions = Vec::new();
        let mut stop = false;
        for part in c.pairs {
            match part.as_rule() {
                Rule::action => actions.push(self.action(part)?),
                Rule::stop => stop = true,
                other => return Err(internal(span, &format!("{other:?} in a rule"))),
            }
        }
        Ok(super::ast::Rule {
            name,
            description,
            condition,
            actions,
            stop,
            span,
        })
    }

    fn action(&self, pair: Pair<'_, Rule>) -> PResult<Spanned<RuleAction>> {
        let span = self.of(&pair);
        let inner = self.cursor(pair).next()?;
        let rule = inner.as_rule();
        let mut c = self.cursor(inner);
        let action = match rule {
            Rule::raise_severity => RuleAction::RaiseSeverity(self.ident(&c.expect(Rule::ident)?)),
            Rule::set_severity => RuleAction::SetSeverity(self.ident(&c.expect(Rule::ident)?)),
            Rule::tag_action => RuleAction::Tag(self.ident(&c.expect(Rule::tag_name)?)),
            _ => {
                let field = self.ident(&c.expect(Rule::ident)?);
                let value = self.value(c.expect(Rule::value)?)?;
                RuleAction::Set { field, value }
            }
        };
        Ok(Spanned::new(action, span))
    }

    // ------------------------------------------------------------ routing

    fn route_block(&self, pair: Pair<'_, Rule>) -> PResult<RouteBlock> {
        let span = self.of(&pair);
        let mut routes = Vec::new();
        let mut otherwise = None;
        for part in self.cursor(pair).pairs {
            match part.as_rule() {
                Rule::route_rule => routes.push(self.route_rule(part)?),
                Rule::route_otherwise => {
                    let target = self.cursor(part).expect(Rule::route_target)?;
                    otherwise = Some(self.route_target(target)?);
                }
                other => return Err(internal(span, &format!("{other:?} in a route block"))),
            }
        }
        Ok(RouteBlock {
            routes,
            otherwise,
            span,
        })
    }

    fn route_rule(&self, pair: Pair<'_, Rule>) -> PResult<RouteRule> {
        let span = self.of(&pair);
        let mut c = self.cursor(pair);
        let name = c.optional(Rule::route_label).map(|label| {
            let start = label.as_span().start();
            let name = label.as_str().trim_end_matches(':').trim_end();
            Spanned::new(name.to_owned(), self.span(start, start + name.len()))
        });
        let condition = self.condition(c.expect(Rule::condition)?)?;
        let target = self.route_target(c.expect(Rule::route_target)?)?;
        Ok(RouteRule {
            name,
            condition,
            target,
            span,
        })
    }

    fn route_target(&self, pair: Pair<'_, Rule>) -> PResult<RouteTarget> {
        let span = self.of(&pair);
        let mut c = self.cursor(pair);
        let department = self.ident(&c.expect(Rule::dept_name)?);
        let cc = self.cc_list(c.optional(Rule::cc_list));
        Ok(RouteTarget {
            department,
            cc,
            span,
        })
    }

    fn cc_list(&self, pair: Option<Pair<'_, Rule>>) -> Vec<Ident> {
        pair.map_or_else(Vec::new, |list| {
            self.cursor(list)
                .pairs
                .iter()
                .map(|p| self.ident(p))
                .collect()
        })
    }

    // ------------------------------------------------------------ deadlines

    fn deadline_decl(&self, pair: Pair<'_, Rule>) -> PResult<DeadlineDecl> {
        let span = self.of(&pair);
        let mut c = self.cursor(pair);
        let name = self.ident(&c.expect(Rule::ident)?);
        let display = c
            .optional(Rule::string)
            .map(|s| self.string(&s))
            .transpose()?;
        let mut decl = DeadlineDecl {
            name,
            display,
            calendar: None,
            starts_on: Vec::new(),
            starts_at: None,
            stops_on: Vec::new(),
            pause_while: None,
            hard_stop: None,
            durations: Vec::new(),
            otherwise: None,
            otherwise_none: None,
            misplaced_none: Vec::new(),
            span,
        };
        for part in c.pairs {
            let part_span = self.of(&part);
            match part.as_rule() {
                Rule::deadline_calendar => {
                    if let Some(first) = &decl.calendar {
                        return Err(self.repeated(part_span, "calendar", first.span));
                    }
                    decl.calendar = Some(self.ident(&self.cursor(part).expect(Rule::ident)?));
                }
                Rule::starts_on => decl.starts_on.extend(self.clock_events(part)?),
                Rule::starts_at => {
                    if let Some(first) = &decl.starts_at {
                        return Err(self.repeated(part_span, "starts at", first.span));
                    }
                    decl.starts_at = Some(self.ident(&self.cursor(part).expect(Rule::ident)?));
                }
                Rule::stops_on => decl.stops_on.extend(self.clock_events(part)?),
                Rule::pause_while => {
                    if let Some(first) = &decl.pause_while {
                        return Err(self.repeated(part_span, "pause while", first.span()));
                    }
                    decl.pause_while =
                        Some(self.condition(self.cursor(part).expect(Rule::condition)?)?);
                }
                Rule::hard_stop => {
                    if let Some(first) = decl.hard_stop {
                        return Err(self.repeated(part_span, "hard stop", first));
                    }
                    decl.hard_stop = Some(part_span);
                }
                Rule::duration_rule => {
                    let mut parts = self.cursor(part);
                    let condition = self.condition(parts.expect(Rule::condition)?)?;
                    let length = parts.next()?;
                    if length.as_rule() == Rule::no_clock {
                        decl.misplaced_none.push(self.of(&length));
                        continue;
                    }
                    let duration = self.deadline_length(length)?;
                    decl.durations.push(DurationRule {
                        condition,
                        duration,
                        span: part_span,
                    });
                }
                Rule::deadline_otherwise => {
                    let length = self.cursor(part).next()?;
                    if length.as_rule() == Rule::no_clock {
                        decl.otherwise_none = Some(self.of(&length));
                    } else {
                        decl.otherwise = Some(self.deadline_length(length)?);
                    }
                }
                other => return Err(internal(span, &format!("{other:?} in a deadline"))),
            }
        }
        Ok(decl)
    }

    fn clock_events(&self, pair: Pair<'_, Rule>) -> PResult<Vec<Spanned<ClockEvent>>> {
        self.cursor(pair)
            .pairs
            .into_iter()
            .map(|event| {
                let span = self.of(&event);
                let written = event.as_str();
                lookup(CLOCK_EVENTS, written)
                    .map(|e| Spanned::new(e, span))
                    .ok_or_else(|| {
                        unknown_name(span, "event", written, CLOCK_EVENTS.iter().map(|(n, _)| *n))
                    })
            })
            .collect()
    }

    fn escalate_block(&self, pair: Pair<'_, Rule>) -> PResult<EscalateBlock> {
        let span = self.of(&pair);
        let mut c = self.cursor(pair);
        let deadline = self.ident(&c.expect(Rule::ident)?);
        let steps = c
            .pairs
            .into_iter()
            .map(|s| self.escalation_step(s))
            .collect::<PResult<_>>()?;
        Ok(EscalateBlock {
            deadline,
            steps,
            span,
        })
    }

    fn escalation_step(&self, pair: Pair<'_, Rule>) -> PResult<EscalationStep> {
        let span = self.of(&pair);
        let mut c = self.cursor(pair);
        let at = self.step_offset(c.expect(Rule::step_offset)?)?;
        let mut recipients = Vec::new();
        while let Some(r) = c.optional(Rule::recipient) {
            recipients.push(self.recipient(r)?);
        }
        let template = self.ident(&c.expect(Rule::template_name)?);
        let raise_severity = match c.optional(Rule::step_raise) {
            Some(raise) => Some(self.ident(&self.cursor(raise).expect(Rule::ident)?)),
            None => None,
        };
        let condition = match c.optional(Rule::step_condition) {
            Some(cond) => Some(self.condition(self.cursor(cond).expect(Rule::condition)?)?),
            None => None,
        };
        Ok(EscalationStep {
            at,
            recipients,
            template,
            raise_severity,
            condition,
            span,
        })
    }

    fn step_offset(&self, pair: Pair<'_, Rule>) -> PResult<Spanned<StepOffset>> {
        let span = self.of(&pair);
        let mut c = self.cursor(pair);
        let first = c.next()?;
        let offset = match first.as_rule() {
            Rule::percent => {
                let digits = first.as_str().trim_end_matches('%');
                StepOffset::Percent(self.whole_number(digits, self.of(&first), "a percentage")?)
            }
            Rule::at_due => StepOffset::Percent(100),
            _ => {
                let duration = self.duration(first)?.node;
                match c.pairs.front().map(Pair::as_rule) {
                    Some(Rule::before_due) => StepOffset::BeforeDue(duration),
                    Some(Rule::after_due) => StepOffset::AfterDue(duration),
                    _ => StepOffset::AfterStart(duration),
                }
            }
        };
        Ok(Spanned::new(offset, span))
    }

    fn recipient(&self, pair: Pair<'_, Rule>) -> PResult<Spanned<Recipient>> {
        let span = self.of(&pair);
        let inner = self.cursor(pair).next()?;
        if inner.as_rule() == Rule::address {
            return Ok(Spanned::new(
                Recipient::Address(self.address(&inner).node),
                span,
            ));
        }
        let mut names = self.cursor(inner).pairs.into_iter().map(|p| self.ident(&p));
        let who = names
            .next()
            .ok_or_else(|| internal(span, "a recipient without a name"))?;
        let role = names.next();
        let recipient = match (who.node.as_str(), role) {
            ("assignee", None) => Recipient::Assignee,
            ("assignee", Some(role)) => Recipient::AssigneeRole(role),
            ("customer", None) => Recipient::Customer,
            ("customer", Some(role)) => {
                return Err(Diagnostic::error(
                    role.span,
                    format!("the customer has no `{}`", role.node),
                )
                .with_help("write `customer` alone to mail the complainant"))
            }
            (_, role) => Recipient::Department(who, role),
        };
        Ok(Spanned::new(recipient, span))
    }

    fn schedule_decl(&self, pair: Pair<'_, Rule>) -> PResult<ScheduleDecl> {
        let span = self.of(&pair);
        let mut c = self.cursor(pair);
        let name = self.ident(&c.expect(Rule::ident)?);
        let cron = self.string(&c.expect(Rule::crontab)?)?;
        let mut calendar: Option<Ident> = None;
        let mut filter: Option<(Option<Expr>, Span)> = None;
        let mut recipients: Option<(Vec<Spanned<Recipient>>, Span)> = None;
        let mut template: Option<Ident> = None;
        for part in c.pairs {
            let part_span = self.of(&part);
            match part.as_rule() {
                Rule::schedule_calendar => {
                    if let Some(first) = &calendar {
                        return Err(self.repeated(part_span, "calendar", first.span));
                    }
                    calendar = Some(self.ident(&self.cursor(part).expect(Rule::ident)?));
                }
                Rule::digest_clause => {
                    if let Some((_, first)) = &filter {
                        return Err(self.repeated(part_span, "digest", *first));
                    }
                    let condition = match self.cursor(part).optional(Rule::condition) {
                        Some(cond) => Some(self.condition(cond)?),
                        None => None,
                    };
                    filter = Some((condition, part_span));
                }
                Rule::to_clause => {
                    if let Some((_, first)) = &recipients {
                        return Err(self.repeated(part_span, "to", *first));
                    }
                    let list = self
                        .cursor(part)
                        .pairs
                        .into_iter()
                        .map(|r| self.recipient(r))
                        .collect::<PResult<_>>()?;
                    recipients = Some((list, part_span));
                }
                Rule::using_clause => {
                    if let Some(first) = &template {
                        return Err(self.repeated(part_span, "using", first.span));
                    }
                    template = Some(self.ident(&self.cursor(part).expect(Rule::template_name)?));
                }
                other => return Err(internal(span, &format!("{other:?} in a schedule"))),
            }
        }
        let Some((recipients, _)) = recipients else {
            return Err(Diagnostic::error(
                name.span,
                format!("schedule `{name}` says nobody to send to"),
            )
            .with_help("add a line `to office` (departments, `<address>` or `assignee`)"));
        };
        let Some(template) = template else {
            return Err(
                Diagnostic::error(name.span, format!("schedule `{name}` has no template"))
                    .with_help("add a line `using TEMPLATE` naming a declared template"),
            );
        };
        Ok(ScheduleDecl {
            name,
            cron,
            calendar,
            filter: filter.and_then(|(f, _)| f),
            recipients,
            template,
            span,
        })
    }

    // ------------------------------------------------------------ tests

    fn test_decl(&self, pair: Pair<'_, Rule>) -> PResult<TestDecl> {
        let span = self.of(&pair);
        let mut c = self.cursor(pair);
        let name = self.string(&c.expect(Rule::string)?)?;
        let mut at: Option<Spanned<chrono::DateTime<FixedOffset>>> = None;
        let mut channel: Option<Ident> = None;
        let mut mail: Option<(TestMail, Span)> = None;
        let mut history = Vec::new();
        let mut expectations = Vec::new();
        for part in c.pairs {
            let part_span = self.of(&part);
            match part.as_rule() {
                Rule::test_at => {
                    if let Some(first) = &at {
                        return Err(self.repeated(part_span, "at", first.span));
                    }
                    at = Some(self.datetime(&self.cursor(part).expect(Rule::datetime)?)?);
                }
                Rule::test_channel => {
                    if let Some(first) = &channel {
                        return Err(self.repeated(part_span, "channel", first.span));
                    }
                    channel = Some(self.ident(&self.cursor(part).expect(Rule::ident)?));
                }
                Rule::given_case => history.push(self.given_case(part)?),
                Rule::test_mail => {
                    if let Some((_, first)) = &mail {
                        return Err(self.repeated(part_span, "mail", *first));
                    }
                    mail = Some((self.test_mail(part)?, part_span));
                }
                Rule::expect => expectations.push(self.expectation(part)?),
                other => return Err(internal(span, &format!("{other:?} in a test"))),
            }
        }
        let Some((mail, _)) = mail else {
            return Err(Diagnostic::error(name.span, "this test has no mail")
                .with_help("add `mail file \"name.eml\"` or `mail { from: \"…\" subject: \"…\" body: \"…\" }`"));
        };
        Ok(TestDecl {
            name,
            at,
            channel,
            mail,
            history,
            expectations,
            span,
        })
    }

    fn given_case(&self, pair: Pair<'_, Rule>) -> PResult<HistoryCase> {
        let span = self.of(&pair);
        let mut c = self.cursor(pair);
        let sender_pair = c.next()?;
        let sender = if sender_pair.as_rule() == Rule::address {
            self.address(&sender_pair)
        } else {
            self.string(&sender_pair)?
        };
        let at = self.datetime(&c.expect(Rule::datetime)?)?;
        let mut case = HistoryCase {
            sender,
            at,
            category: None,
            subject: None,
            tags: Vec::new(),
            reopened: 0,
            span,
        };
        let mut reopened_span: Option<Span> = None;
        for detail in c.pairs {
            let detail_span = self.of(&detail);
            let rule = detail.as_rule();
            let value = self.cursor(detail).next()?;
            match rule {
                Rule::given_category => {
                    if let Some(first) = &case.category {
                        return Err(self.repeated(detail_span, "category", first.span));
                    }
                    case.category = Some(self.ident(&value));
                }
                Rule::given_subject => {
                    if let Some(first) = &case.subject {
                        return Err(self.repeated(detail_span, "subject", first.span));
                    }
                    case.subject = Some(self.string(&value)?);
                }
                Rule::given_tag => case.tags.push(self.ident(&value)),
                _ => {
                    if let Some(first) = reopened_span {
                        return Err(self.repeated(detail_span, "reopened", first));
                    }
                    reopened_span = Some(detail_span);
                    case.reopened = self.whole_number(
                        value.as_str(),
                        self.of(&value),
                        "the number of reopenings",
                    )?;
                }
            }
        }
        Ok(case)
    }

    fn test_mail(&self, pair: Pair<'_, Rule>) -> PResult<TestMail> {
        let inner = self.cursor(pair).next()?;
        let span = self.of(&inner);
        if inner.as_rule() == Rule::mail_file {
            return Ok(TestMail::File(
                self.string(&self.cursor(inner).expect(Rule::string)?)?,
            ));
        }
        let mut headers = Vec::new();
        let mut body: Option<Spanned<String>> = None;
        for field in self.cursor(inner).pairs {
            let mut c = self.cursor(field);
            let key = self.ident(&c.expect(Rule::header_name)?);
            let value = self.string(&c.expect(Rule::string)?)?;
            if key.node.eq_ignore_ascii_case("body") {
                if let Some(first) = &body {
                    return Err(self.repeated(key.span, "body", first.span));
                }
                body = Some(value);
            } else {
                headers.push((key, value));
            }
        }
        // A mail may have no body (auto-replies, bounces); it is then empty.
        let body = body.unwrap_or_else(|| Spanned::new(String::new(), span));
        Ok(TestMail::Inline {
            headers,
            body,
            span,
        })
    }

    fn expectation(&self, pair: Pair<'_, Rule>) -> PResult<Spanned<Expectation>> {
        let span = self.of(&pair);
        let inner = self.cursor(pair).next()?;
        let rule = inner.as_rule();
        let mut c = self.cursor(inner);
        let expectation = match rule {
            Rule::expect_no_tag => Expectation::NoTag(self.ident(&c.expect(Rule::tag_name)?)),
            Rule::expect_tag => Expectation::Tag(self.ident(&c.expect(Rule::tag_name)?)),
            Rule::expect_route => {
                let department = self.ident(&c.expect(Rule::dept_name)?);
                let cc = self.cc_list(c.optional(Rule::cc_list));
                Expectation::Route { department, cc }
            }
            Rule::expect_deadline => {
                let deadline = self.ident(&c.expect(Rule::ident)?);
                let at = self.datetime(&c.expect(Rule::datetime)?)?;
                Expectation::Due { deadline, at }
            }
            Rule::expect_rule => {
                let rule = self.ident(&c.expect(Rule::ident)?);
                let fired = c.next()?.as_rule() == Rule::fired;
                Expectation::Fired { rule, fired }
            }
            _ => {
                let field = self.ident(&c.expect(Rule::ident)?);
                let value = self.value(c.expect(Rule::value)?)?;
                Expectation::Field { field, value }
            }
        };
        Ok(Spanned::new(expectation, span))
    }

    // ------------------------------------------------------------ conditions

    /// `a or b or c`, folded to the left; each node spans its operands.
    fn condition(&self, pair: Pair<'_, Rule>) -> PResult<Expr> {
        self.nested_condition(pair, 0)
    }

    /// `depth` counts the parentheses and `not`s around this condition; the
    /// limit keeps a pathological file from exhausting the stack.
    fn nested_condition(&self, pair: Pair<'_, Rule>, depth: usize) -> PResult<Expr> {
        if depth > MAX_CONDITION_DEPTH {
            return Err(
                Diagnostic::error(self.of(&pair), "this condition is nested too deeply").with_note(
                    format!(
                        "at most {MAX_CONDITION_DEPTH} levels of parentheses and `not` are allowed"
                    ),
                ),
            );
        }
        self.fold(pair, Rule::cond_and, Expr::Or, depth)
    }

    fn fold(
        &self,
        pair: Pair<'_, Rule>,
        operand_rule: Rule,
        combine: fn(Box<Expr>, Box<Expr>, Span) -> Expr,
        depth: usize,
    ) -> PResult<Expr> {
        let span = self.of(&pair);
        // Each operand with the end of its text, closing parenthesis included,
        // so that `(a or b) and c` spans from `(` to `c`.
        let mut operand_pairs: Vec<(Pair<'_, Rule>, usize)> = Vec::new();
        for child in pair.into_inner() {
            match child.as_rule() {
                Rule::rparen => {
                    if let Some(last) = operand_pairs.last_mut() {
                        last.1 = child.as_span().end();
                    }
                }
                rule if is_syntax(rule) => {}
                _ => {
                    let end = exact_end(&child);
                    operand_pairs.push((child, end));
                }
            }
        }
        if operand_pairs.len() > MAX_CHAIN {
            let word = if operand_rule == Rule::cond_and {
                "or"
            } else {
                "and"
            };
            return Err(Diagnostic::error(
                span,
                format!("this condition joins more than {MAX_CHAIN} parts with `{word}`"),
            )
            .with_help(
                "split it over several rules, or list the values: `text has any (\"a\", \"b\", …)`",
            ));
        }
        let mut operands = operand_pairs.into_iter();
        let (first, _) = operands
            .next()
            .ok_or_else(|| internal(span, "an empty condition"))?;
        let mut expr = self.operand_expr(first, operand_rule, depth)?;
        for (next, end) in operands {
            let right = self.operand_expr(next, operand_rule, depth)?;
            let start = span.start;
            expr = combine(Box::new(expr), Box::new(right), self.span(start, end));
        }
        Ok(expr)
    }

    fn operand_expr(
        &self,
        pair: Pair<'_, Rule>,
        operand_rule: Rule,
        depth: usize,
    ) -> PResult<Expr> {
        if operand_rule == Rule::cond_and {
            self.fold(pair, Rule::cond_not, Expr::And, depth)
        } else {
            self.unary(pair, depth)
        }
    }

    fn unary(&self, pair: Pair<'_, Rule>, depth: usize) -> PResult<Expr> {
        let span = self.of(&pair);
        match pair.as_rule() {
            Rule::not_cond => {
                if depth >= MAX_CONDITION_DEPTH {
                    return Err(Diagnostic::error(span, "this condition is nested too deeply")
                        .with_note(format!(
                            "at most {MAX_CONDITION_DEPTH} levels of parentheses and `not` are allowed"
                        )));
                }
                let inner = self.cursor(pair).next()?;
                Ok(Expr::Not(Box::new(self.unary(inner, depth + 1)?), span))
            }
            Rule::condition => self.nested_condition(pair, depth + 1),
            Rule::always => Ok(Expr::Always(span)),
            Rule::test_cond => self.test_cond(pair),
            Rule::arrival_cond => self.arrival_cond(pair),
            other => Err(internal(span, &format!("{other:?} in a condition"))),
        }
    }

    fn test_cond(&self, pair: Pair<'_, Rule>) -> PResult<Expr> {
        let span = self.of(&pair);
        let mut c = self.cursor(pair);
        let left = self.operand(c.next()?)?;
        let Some(tail) = c.optional(Rule::cond_tail) else {
            return match left {
                Operand::Path(_) => Ok(Expr::Flag { left, span }),
                Operand::Header(_) => Err(Diagnostic::error(
                    span,
                    "a header is text, not a yes/no flag",
                )
                .with_help("compare it, e.g. `header \"X-Priority\" contains \"1\"`, or ask `header \"X-Priority\" is set`")),
                Operand::Count(_) => Err(Diagnostic::error(
                    span,
                    "`count(…)` is a number, not a yes/no flag",
                )
                .with_help("compare it, e.g. `count(reopenings) >= 2`")),
            };
        };
        let tail = self.cursor(tail).next()?;
        let rule = tail.as_rule();
        let mut t = self.cursor(tail);
        match rule {
            Rule::compare_tail => {
                let op_pair = t.expect(Rule::cmp_op)?;
                let op = match op_pair.as_str() {
                    "==" => CompareOp::Eq,
                    "!=" => CompareOp::Ne,
                    "<" => CompareOp::Lt,
                    "<=" => CompareOp::Le,
                    ">" => CompareOp::Gt,
                    ">=" => CompareOp::Ge,
                    _ => CompareOp::Contains,
                };
                let op = Spanned::new(op, self.of(&op_pair));
                let right = self.value(t.expect(Rule::value)?)?;
                Ok(Expr::Compare {
                    left,
                    op,
                    right,
                    span,
                })
            }
            Rule::has_tail => {
                let all = t
                    .optional(Rule::has_mode)
                    .is_some_and(|mode| mode.as_str() == "all");
                let values = t
                    .pairs
                    .into_iter()
                    .map(|v| self.value(v))
                    .collect::<PResult<_>>()?;
                Ok(Expr::HasAny {
                    left,
                    all,
                    values,
                    span,
                })
            }
            Rule::matches_tail => {
                t.expect(Rule::match_op)?;
                let regex = self.regex(&t.expect(Rule::regex)?)?;
                Ok(Expr::Matches { left, regex, span })
            }
            _ => {
                let state = t.expect(Rule::is_state)?;
                let words: Vec<&str> = state.as_str().split_whitespace().collect();
                let said_not = words.first() == Some(&"not");
                let said_empty = words.last() == Some(&"empty");
                Ok(Expr::IsSet {
                    left,
                    negated: said_not != said_empty,
                    span,
                })
            }
        }
    }

    fn operand(&self, pair: Pair<'_, Rule>) -> PResult<Operand> {
        let span = self.of(&pair);
        match pair.as_rule() {
            Rule::path => {
                let parts = self
                    .cursor(pair)
                    .pairs
                    .iter()
                    .map(|p| self.ident(p))
                    .collect();
                Ok(Operand::Path(Spanned::new(parts, span)))
            }
            Rule::header_operand => {
                let name = self.string(&self.cursor(pair).expect(Rule::string)?)?;
                Ok(Operand::Header(Spanned::new(name.node, span)))
            }
            Rule::count_operand => {
                let inner = self.cursor(pair).next()?;
                let rule = inner.as_rule();
                let mut c = self.cursor(inner);
                let aggregate = match rule {
                    Rule::count_reopenings => Aggregate::Reopenings,
                    Rule::count_cases => Aggregate::CasesFromSender {
                        window: self.duration(c.expect(Rule::duration)?)?,
                    },
                    _ => {
                        let key_pair = c.expect(Rule::group_key)?;
                        let key_span = self.of(&key_pair);
                        let key_inner = self.cursor(key_pair).next()?;
                        let key = if key_inner.as_rule() == Rule::same_what {
                            if key_inner.as_str() == "category" {
                                GroupKey::SameCategory
                            } else {
                                GroupKey::SameSubject
                            }
                        } else {
                            GroupKey::Tag(self.ident(&key_inner))
                        };
                        Aggregate::DistinctSenders {
                            key: Spanned::new(key, key_span),
                            window: self.duration(c.expect(Rule::duration)?)?,
                        }
                    }
                };
                Ok(Operand::Count(Spanned::new(aggregate, span)))
            }
            other => Err(internal(span, &format!("{other:?} as an operand"))),
        }
    }

    fn value(&self, pair: Pair<'_, Rule>) -> PResult<Spanned<Value>> {
        let span = self.of(&pair);
        let inner = self.cursor(pair).next()?;
        let value = match inner.as_rule() {
            Rule::string => Value::Text(self.string(&inner)?.node),
            Rule::date => Value::Date(self.date(&inner)?),
            Rule::number => Value::Number(self.number(&inner)?),
            Rule::boolean => Value::Bool(inner.as_str() == "true"),
            Rule::capture => Value::Capture(self.capture(&inner)?),
            _ => Value::Name(inner.as_str().to_owned()),
        };
        Ok(Spanned::new(value, span))
    }

    // ------------------------------------------------------------ literals

    fn string(&self, pair: &Pair<'_, Rule>) -> PResult<Spanned<String>> {
        let raw = pair.as_str();
        let value = if raw.len() >= 6 && raw.starts_with("\"\"\"") {
            dedent(&raw[3..raw.len() - 3])
        } else {
            unescape(&raw[1..raw.len() - 1])
        };
        Ok(Spanned::new(value, self.of(pair)))
    }

    fn address(&self, pair: &Pair<'_, Rule>) -> Spanned<String> {
        let raw = pair.as_str();
        Spanned::new(raw[1..raw.len() - 1].to_owned(), self.of(pair))
    }

    fn regex(&self, pair: &Pair<'_, Rule>) -> PResult<Spanned<RegexLit>> {
        let raw = pair.as_str();
        let span = self.of(pair);
        let close = raw.rfind('/').unwrap_or(0);
        let pattern = raw.get(1..close).unwrap_or("").to_owned();
        let flags = &raw[close + 1..];
        let case_insensitive = match flags {
            "" => false,
            "i" => true,
            _ => {
                let flag_span = self.span(span.start + close + 1, span.end);
                return Err(
                    Diagnostic::error(flag_span, format!("unknown regex flag `{flags}`"))
                        .with_help(
                            "the only flag is `i` (ignore upper/lower case), as in /refund/i",
                        ),
                );
            }
        };
        Ok(Spanned::new(
            RegexLit {
                pattern,
                case_insensitive,
            },
            span,
        ))
    }

    fn number(&self, pair: &Pair<'_, Rule>) -> PResult<f64> {
        let text = pair.as_str();
        let integer_digits = text
            .trim_start_matches('-')
            .split('.')
            .next()
            .unwrap_or("")
            .trim_start_matches('0')
            .len();
        if integer_digits > MAX_NUMBER_DIGITS {
            return Err(Diagnostic::error(
                self.of(pair),
                format!("the number {text} is too large"),
            )
            .with_note(format!(
                "numbers may have at most {MAX_NUMBER_DIGITS} digits before the decimal point"
            )));
        }
        text.parse::<f64>()
            .map_err(|_| Diagnostic::error(self.of(pair), format!("`{text}` is not a number")))
    }

    /// A whole, non-negative number that fits in `u32`; `what` names it in errors.
    fn whole_number(&self, text: &str, span: Span, what: &str) -> PResult<u32> {
        if text.starts_with('-') {
            return Err(Diagnostic::error(
                span,
                format!("{what} cannot be negative"),
            ));
        }
        if text.contains('.') {
            return Err(Diagnostic::error(
                span,
                format!("{what} must be a whole number, not {text}"),
            )
            .with_help("use a smaller unit for fractions, e.g. `90 minutes` for 1.5 hours"));
        }
        text.parse::<u32>().map_err(|_| {
            Diagnostic::error(span, format!("the number {text} is too large"))
                .with_note(format!("{what} can be at most {}", u32::MAX))
        })
    }

    fn capture(&self, pair: &Pair<'_, Rule>) -> PResult<u8> {
        let digits = &pair.as_str()[1..];
        match digits.parse::<u8>() {
            Ok(n @ 1..=9) if !digits.starts_with('0') => Ok(n),
            _ => Err(Diagnostic::error(
                self.of(pair),
                format!("there is no capture group `${digits}`"),
            )
            .with_help(
                "`$1` to `$9` stand for the parts in ( ) of the regex that matched, counted from the left",
            )),
        }
    }

    /// `received in hours of CAL`, `received on a working day of CAL`.
    fn arrival_cond(&self, pair: Pair<'_, Rule>) -> PResult<Expr> {
        let span = self.of(&pair);
        let mut c = self.cursor(pair);
        let test = match c.next()? {
            test if test.as_rule() == Rule::arrival_hours => ArrivalTest::InHours,
            _ => ArrivalTest::OnWorkingDay,
        };
        let calendar = c.expect(Rule::calendar_name)?;
        Ok(Expr::Arrival {
            test,
            calendar: Spanned::new(calendar.as_str().to_owned(), self.of(&calendar)),
            span,
        })
    }

    /// A deadline's length: a duration or `until end of day`.
    fn deadline_length(&self, pair: Pair<'_, Rule>) -> PResult<Spanned<Duration>> {
        if pair.as_rule() == Rule::end_of_day {
            let unit = DurationUnit::EndOfDay;
            return Ok(Spanned::new(Duration { amount: 0, unit }, self.of(&pair)));
        }
        self.duration(pair)
    }

    fn duration(&self, pair: Pair<'_, Rule>) -> PResult<Spanned<Duration>> {
        let span = self.of(&pair);
        let mut c = self.cursor(pair);
        let number = c.expect(Rule::number)?;
        let amount = self.whole_number(number.as_str(), self.of(&number), "a duration")?;
        let unit_pair = c.expect(Rule::duration_unit)?;
        let parts: Vec<Rule> = self
            .cursor(unit_pair)
            .pairs
            .iter()
            .map(Pair::as_rule)
            .collect();
        let unit = match parts.as_slice() {
            [Rule::working, Rule::unit_minutes] => DurationUnit::WorkingMinutes,
            [Rule::working, Rule::unit_hours] => DurationUnit::WorkingHours,
            [Rule::working, Rule::unit_days] => DurationUnit::WorkingDays,
            [Rule::unit_minutes] => DurationUnit::Minutes,
            [Rule::unit_hours] => DurationUnit::Hours,
            [Rule::unit_weeks] => DurationUnit::Weeks,
            _ => DurationUnit::Days,
        };
        Ok(Spanned::new(Duration { amount, unit }, span))
    }

    fn date(&self, pair: &Pair<'_, Rule>) -> PResult<NaiveDate> {
        parse_date(pair.as_str()).map_err(|why| Diagnostic::error(self.of(pair), why))
    }

    fn date_range(&self, pair: Pair<'_, Rule>) -> PResult<Spanned<DateRange>> {
        let span = self.of(&pair);
        let mut c = self.cursor(pair);
        let first = self.date(&c.expect(Rule::date)?)?;
        let last = match c.optional(Rule::date) {
            Some(last) => self.date(&last)?,
            None => first,
        };
        if last < first {
            return Err(
                Diagnostic::error(span, "this date range ends before it starts")
                    .with_help("write the earlier date first, e.g. 2026-10-01..2026-10-07"),
            );
        }
        Ok(Spanned::new(DateRange { first, last }, span))
    }

    fn datetime(&self, pair: &Pair<'_, Rule>) -> PResult<Spanned<chrono::DateTime<FixedOffset>>> {
        let span = self.of(pair);
        parse_datetime(pair.as_str())
            .map(|dt| Spanned::new(dt, span))
            .map_err(|(why, help)| {
                let d = Diagnostic::error(span, why);
                match help {
                    Some(help) => d.with_help(help),
                    None => d,
                }
            })
    }

    fn weekdays(&self, pair: Pair<'_, Rule>) -> PResult<Spanned<WeekdaySet>> {
        let span = self.of(&pair);
        let names: Vec<Pair<'_, Rule>> = self.cursor(pair).pairs.into_iter().collect();
        let mut days = Vec::new();
        for name in &names {
            let written = name.as_str().to_lowercase();
            let index = WEEKDAYS
                .iter()
                .position(|d| *d == written)
                .or_else(|| WEEKDAYS_LONG.iter().position(|d| *d == written))
                .ok_or_else(|| {
                    unknown_name(
                        self.of(name),
                        "weekday",
                        name.as_str(),
                        WEEKDAYS.iter().copied(),
                    )
                })?;
            days.push(index as u8);
        }
        let first = days.first().copied().unwrap_or(0);
        let last = days.last().copied().unwrap_or(first);
        if last < first {
            return Err(Diagnostic::error(span, "this range of weekdays runs backwards")
                .with_help("weeks run from mon to sun: write e.g. `sat..sun` or `mon..fri`; list both parts of a range that wraps, e.g. `fri..sun mon`"));
        }
        Ok(Spanned::new(WeekdaySet { first, last }, span))
    }

    fn time_range(&self, pair: Pair<'_, Rule>) -> PResult<Spanned<TimeRange>> {
        let span = self.of(&pair);
        let mut c = self.cursor(pair);
        let start_pair = c.expect(Rule::clock_time)?;
        let end_pair = c.expect(Rule::clock_time)?;
        let start_minute = self.clock_time(&start_pair, false)?;
        let end_minute = self.clock_time(&end_pair, true)?;
        if end_minute <= start_minute {
            return Err(Diagnostic::error(span, "these hours end before they start")
                .with_help("hours cannot run past midnight: split them, e.g. `22:00-24:00` and `00:00-06:00` on the next day"));
        }
        Ok(Spanned::new(
            TimeRange {
                start_minute,
                end_minute,
            },
            span,
        ))
    }

    fn clock_time(&self, pair: &Pair<'_, Rule>, is_end: bool) -> PResult<u16> {
        let text = pair.as_str();
        let (hour, minute) = text.split_once(':').unwrap_or((text, "0"));
        let hour: u16 = hour.parse().unwrap_or(u16::MAX);
        let minute: u16 = minute.parse().unwrap_or(u16::MAX);
        let valid = minute < 60 && (hour < 24 || (is_end && hour == 24 && minute == 0));
        if !valid {
            let rule = if is_end {
                "hours go from 00:00 to 24:00 and minutes from 00 to 59"
            } else {
                "hours go from 00:00 to 23:59"
            };
            return Err(
                Diagnostic::error(self.of(pair), format!("`{text}` is not a time of day"))
                    .with_note(rule),
            );
        }
        Ok(hour * 60 + minute)
    }
}

// ---------------------------------------------------------------- helpers

/// The end of the last token inside `pair`: pest lets a rule's span run over
/// the whitespace that an unmatched optional part skipped.
fn exact_end(pair: &Pair<'_, Rule>) -> usize {
    let mut end = pair.as_span().end();
    let mut current = pair.clone();
    while let Some(last) = current.clone().into_inner().last() {
        if last.as_rule() == Rule::EOI {
            break;
        }
        end = last.as_span().end();
        current = last;
    }
    end
}

fn lookup<T: Copy>(table: &[(&str, T)], written: &str) -> Option<T> {
    table.iter().find(|(n, _)| *n == written).map(|(_, v)| *v)
}

fn unknown_name<'a>(
    span: Span,
    what: &str,
    written: &str,
    known: impl Iterator<Item = &'a str> + Clone,
) -> Diagnostic {
    let d = Diagnostic::error(span, format!("unknown {what} `{written}`"));
    match suggest(written, known.clone()) {
        Some(near) => d.with_help(format!("did you mean `{near}`?")),
        None => d.with_help(format!(
            "the {what}s are {}",
            join_list(known.map(|k| format!("`{k}`")).collect(), "and")
        )),
    }
}

/// The known word closest to a misspelt one, if it is a likely typo. Unlike
/// plain edit distance, swapping two neighbouring letters (`thne`) counts as
/// one edit, the most common slip when typing keywords.
fn suggest<'a>(written: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (written.chars().count() / 3).max(1);
    known
        .filter(|k| *k != written)
        .map(|k| (strsim::osa_distance(written, k), k))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, k)| (*distance, *k))
        .map(|(_, k)| k)
}

/// `a`, `a or b`, `a, b or c`.
fn or_list(items: impl Iterator<Item = String>) -> String {
    join_list(items.collect(), "or")
}

fn join_list(items: Vec<String>, last_word: &str) -> String {
    match items.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} {last_word} {last}", rest.join(", ")),
    }
}

fn unescape(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// A `"""` block: the first and last line dropped when blank, the
/// indentation common to all non-blank lines removed, line ends as `\n`.
pub(crate) fn dedent(body: &str) -> String {
    let mut lines: Vec<&str> = body
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    if lines.len() > 1 && lines.first().is_some_and(|l| l.trim().is_empty()) {
        lines.remove(0);
    }
    if lines.len() > 1 && lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    let is_blank = |l: &str| l.trim().is_empty();
    let mut common: Option<&str> = None;
    for line in lines.iter().filter(|l| !is_blank(l)) {
        let indent = &line[..line.len() - line.trim_start_matches([' ', '\t']).len()];
        common = Some(match common {
            None => indent,
            Some(prev) => {
                let shared = prev
                    .bytes()
                    .zip(indent.bytes())
                    .take_while(|(a, b)| a == b)
                    .count();
                &prev[..shared]
            }
        });
    }
    let cut = common.map_or(0, str::len);
    lines
        .iter()
        .map(|l| if is_blank(l) { "" } else { &l[cut..] })
        .collect::<Vec<_>>()
        .join("\n")
}

fn days_in_month(year: i32, month: u32) -> u32 {
    let next = if month == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)
    };
    next.and_then(|n| n.pred_opt()).map_or(31, |d| d.day())
}

/// `2026-10-01` → a date, or why it is not one.
fn parse_date(text: &str) -> Result<NaiveDate, String> {
    let mut parts = text.split('-');
    let year: i32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let month: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let day: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    if !(1..=12).contains(&month) {
        return Err(format!("`{text}` is not a date: there is no month {month}"));
    }
    let month_name = MONTHS[month as usize - 1];
    let max_day = days_in_month(year, month);
    match NaiveDate::from_ymd_opt(year, month, day) {
        Some(date) => Ok(date),
        None if day == 0 => Err(format!("`{text}` is not a date: days start at 1")),
        None => Err(format!(
            "`{text}` is not a date: {month_name} {year} has {max_day} days"
        )),
    }
}

/// `2026-09-30T17:50:00+08:00` → a date-time; the error carries a help line.
fn parse_datetime(text: &str) -> Result<chrono::DateTime<FixedOffset>, (String, Option<String>)> {
    let (date_text, rest) = text
        .split_once(['T', 't'])
        .ok_or_else(|| (format!("`{text}` is not a date and time"), None))?;
    let date = parse_date(date_text).map_err(|e| (e, None))?;
    let offset_at = rest.find(['Z', 'z', '+', '-']);
    let (time_text, offset_text) = match offset_at {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let mut fields = time_text.splitn(3, ':');
    let hour: u32 = fields.next().and_then(|f| f.parse().ok()).unwrap_or(99);
    let minute: u32 = fields.next().and_then(|f| f.parse().ok()).unwrap_or(99);
    let (second, nanos) = match fields.next() {
        None => (0, 0),
        Some(s) => {
            let (whole, fraction) = s.split_once('.').unwrap_or((s, ""));
            let mut digits: String = fraction.chars().take(9).collect();
            while digits.len() < 9 {
                digits.push('0');
            }
            (whole.parse().unwrap_or(99), digits.parse().unwrap_or(0))
        }
    };
    let time = NaiveTime::from_hms_nano_opt(hour, minute, second, nanos).ok_or_else(|| {
        (
            format!("`{text}` is not a valid time: `{time_text}` is not a time of day"),
            Some("hours go from 00 to 23, minutes and seconds from 00 to 59".to_owned()),
        )
    })?;
    if offset_text.is_empty() {
        return Err((
            format!("`{text}` has no time zone"),
            Some(format!(
                "add the offset from UTC, e.g. `{date_text}T{:02}:{:02}:{:02}+08:00` for China",
                hour, minute, second
            )),
        ));
    }
    let offset_seconds = if offset_text.eq_ignore_ascii_case("z") {
        0
    } else {
        let sign = if offset_text.starts_with('-') { -1 } else { 1 };
        let digits: String = offset_text[1..]
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        let hours: i32 = digits.get(..2).and_then(|h| h.parse().ok()).unwrap_or(99);
        let minutes: i32 = digits.get(2..).and_then(|m| m.parse().ok()).unwrap_or(99);
        if hours > 23 || minutes > 59 {
            return Err((
                format!("`{text}` has an impossible time zone offset `{offset_text}`"),
                Some("offsets run from -23:59 to +23:59, e.g. +08:00".to_owned()),
            ));
        }
        sign * (hours * 3600 + minutes * 60)
    };
    let offset = FixedOffset::east_opt(offset_seconds)
        .ok_or_else(|| (format!("`{text}` has an impossible time zone offset"), None))?;
    offset
        .from_local_datetime(&NaiveDateTime::new(date, time))
        .single()
        .ok_or_else(|| (format!("`{text}` is not a date and time"), None))
}

// ---------------------------------------------------------------- syntax errors

/// Keywords and punctuation: their presence is implied by the rule they are in.
fn is_syntax(rule: Rule) -> bool {
    token_text(rule).is_some()
}

/// The text of a keyword or punctuation rule, as the administrator types it.
fn token_text(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::kw_after => "after",
        Rule::kw_and => "and",
        Rule::kw_at => "at",
        Rule::kw_before => "before",
        Rule::kw_by => "by",
        Rule::kw_calendar => "calendar",
        Rule::kw_case => "case",
        Rule::kw_cases => "cases",
        Rule::kw_category => "category",
        Rule::kw_cc => "cc",
        Rule::kw_channel => "channel",
        Rule::kw_classify => "classify",
        Rule::kw_contact => "contact",
        Rule::kw_count => "count",
        Rule::kw_deadline => "deadline",
        Rule::kw_department => "department",
        Rule::kw_digest => "digest",
        Rule::kw_distinct => "distinct",
        Rule::kw_due => "due",
        Rule::kw_escalate => "escalate",
        Rule::kw_expect => "expect",
        Rule::kw_field => "field",
        Rule::kw_file => "file",
        Rule::kw_fired => "fired",
        Rule::kw_from => "from",
        Rule::kw_given => "given",
        Rule::kw_hard => "hard",
        Rule::kw_has => "has",
        Rule::kw_header => "header",
        Rule::kw_holiday => "holiday",
        Rule::kw_hours => "hours",
        Rule::kw_include => "include",
        Rule::kw_is => "is",
        Rule::kw_languages => "languages",
        Rule::kw_mail => "mail",
        Rule::kw_manager => "manager",
        Rule::kw_no => "no",
        Rule::kw_not => "not",
        Rule::kw_notify => "notify",
        Rule::kw_on => "on",
        Rule::kw_or => "or",
        Rule::kw_otherwise => "otherwise",
        Rule::kw_pause => "pause",
        Rule::kw_reopened => "reopened",
        Rule::kw_reopenings => "reopenings",
        Rule::kw_route => "route",
        Rule::kw_rule => "rule",
        Rule::kw_same => "same",
        Rule::kw_schedule => "schedule",
        Rule::kw_sender => "sender",
        Rule::kw_senders => "senders",
        Rule::kw_set => "set",
        Rule::kw_severity => "severity",
        Rule::kw_starts => "starts",
        Rule::kw_stop => "stop",
        Rule::kw_stops => "stops",
        Rule::kw_subject => "subject",
        Rule::kw_tag => "tag",
        Rule::kw_template => "template",
        Rule::kw_test => "test",
        Rule::kw_then => "then",
        Rule::kw_to => "to",
        Rule::kw_using => "using",
        Rule::kw_when => "when",
        Rule::kw_where => "where",
        Rule::kw_while => "while",
        Rule::kw_with => "with",
        Rule::kw_within => "within",
        Rule::kw_workday => "workday",
        Rule::kw_a => "a",
        Rule::kw_day => "day",
        Rule::kw_end => "end",
        Rule::kw_in => "in",
        Rule::kw_of => "of",
        Rule::kw_received => "received",
        Rule::kw_until => "until",
        Rule::kw_none => "none",
        Rule::kw_working => "working",
        Rule::op_lt => "<",
        Rule::op_ge => ">=",
        Rule::op_eq => "==",
        Rule::assign => "=",
        Rule::arrow => "->",
        Rule::lbrace => "{",
        Rule::rbrace => "}",
        Rule::lparen => "(",
        Rule::rparen => ")",
        Rule::colon => ":",
        Rule::comma => ",",
        Rule::dot => ".",
        Rule::range_dots => "..",
        Rule::time_dash => "-",
        _ => return None,
    })
}

/// How an expected rule is named in an error message; `None` hides it
/// (it would only repeat what a neighbouring entry says).
fn describe(rule: Rule) -> Option<String> {
    if let Some(text) = token_text(rule) {
        return Some(format!("`{text}`"));
    }
    let words = match rule {
        Rule::EOI => "the end of the file",
        Rule::file
        | Rule::include
        | Rule::severity_decl
        | Rule::category_decl
        | Rule::field_decl
        | Rule::channel_decl
        | Rule::languages_decl
        | Rule::template_decl
        | Rule::calendar_decl
        | Rule::department_decl
        | Rule::classify_block
        | Rule::route_block
        | Rule::deadline_decl
        | Rule::escalate_block
        | Rule::schedule_decl
        | Rule::test_decl => "a declaration",
        Rule::field_type => "a field type (`text`, `number`, `flag`, `date`)",
        Rule::set_by_department => "`set by department`",
        Rule::hours_entry | Rule::holiday_entry | Rule::workday_entry => {
            "`hours`, `holiday` or `workday`"
        }
        Rule::dept_manager | Rule::dept_contact | Rule::dept_calendar => {
            "`manager`, `contact` or `calendar`"
        }
        Rule::trigger => "`on`",
        Rule::rule_decl => "`rule`",
        Rule::action
        | Rule::raise_severity
        | Rule::set_severity
        | Rule::tag_action
        | Rule::set_field => "an action (`severity >= …`, `tag …`, `field = …`)",
        Rule::route_rule => "`when`",
        Rule::route_label => return None,
        Rule::route_otherwise => "`otherwise`",
        Rule::route_target => "a department",
        Rule::deadline_calendar
        | Rule::starts_on
        | Rule::starts_at
        | Rule::stops_on
        | Rule::pause_while
        | Rule::hard_stop
        | Rule::duration_rule
        | Rule::deadline_otherwise => "a deadline setting",
        Rule::clock_event => "an event such as `received` or `resolved`",
        Rule::escalation_step => "`at`",
        Rule::step_offset => {
            "when to act: `50%`, `due`, or a duration such as `2 hours before due`"
        }
        Rule::at_due => "`due`",
        Rule::before_due => "`before due`",
        Rule::after_due => "`after due`",
        Rule::step_raise => "`severity >= …`",
        Rule::step_condition => "`when`",
        Rule::recipient | Rule::recipient_name => {
            "a recipient (a department, `assignee`, `customer` or an <address>)"
        }
        Rule::schedule_calendar => "`calendar`",
        Rule::digest_clause => "`digest`",
        Rule::to_clause => "`to`",
        Rule::using_clause => "`using`",
        Rule::test_at | Rule::test_channel | Rule::given_case | Rule::test_mail | Rule::expect => {
            "a test line (`at`, `channel`, `given`, `mail`, `expect`)"
        }
        Rule::given_category | Rule::given_subject | Rule::given_tag | Rule::given_reopened => {
            "`category`, `subject`, `tag` or `reopened`"
        }
        Rule::mail_file => "`file`",
        Rule::mail_inline => "`{`",
        Rule::mail_field | Rule::header_name => "a header name such as `subject` or `body`",
        Rule::expect_no_tag
        | Rule::expect_tag
        | Rule::expect_route
        | Rule::expect_deadline
        | Rule::expect_rule
        | Rule::expect_field => "an expectation",
        Rule::fired | Rule::not_fired => "`fired` or `not fired`",
        Rule::condition | Rule::cond_and | Rule::not_cond | Rule::test_cond => "a condition",
        Rule::cmp_op => "a comparison (`==`, `!=`, `<`, `<=`, `>`, `>=`, `contains`)",
        Rule::cond_tail | Rule::compare_tail => {
            "a comparison (`==`, `>=`, `contains`, `has any (…)`, `matches /…/`, `is set`, …)"
        }
        Rule::has_tail => "`has`",
        Rule::has_mode => "`any` or `all`",
        Rule::matches_tail | Rule::match_op => "`matches`",
        Rule::is_tail => "`is`",
        Rule::is_state => "`set` or `empty`",
        Rule::header_operand => "`header`",
        Rule::path => "a name such as `subject` or `sender.domain`",
        Rule::count_operand => "`count`",
        Rule::count_reopenings | Rule::count_cases | Rule::count_senders => {
            "`reopenings`, `cases from same sender …` or `distinct senders with …`"
        }
        Rule::group_key => "`same category`, `same subject` or `tag …`",
        Rule::same_what => "`category` or `subject`",
        Rule::value => "a value",
        Rule::duration => "a duration such as `3 days` or `4 working hours`",
        Rule::end_of_day => "`until end of day`",
        Rule::no_clock => "`none`",
        Rule::arrival_cond => "`received in hours of …` or `received on a working day of …`",
        Rule::arrival_hours => "`in hours`",
        Rule::arrival_workday => "`on a working day`",
        Rule::calendar_name => "a calendar",
        Rule::duration_unit
        | Rule::working
        | Rule::natural
        | Rule::unit_minutes
        | Rule::unit_hours
        | Rule::unit_days
        | Rule::unit_weeks => {
            "a unit (`minutes`, `hours`, `days`, `weeks`, `working hours`, `working days`, …)"
        }
        Rule::percent => "a percentage such as `50%`",
        Rule::ident => "a name",
        Rule::dept_name => "a department",
        Rule::template_name => "a template",
        Rule::tag_name => "a tag",
        Rule::time_zone => "a time zone in quotes, such as \"Asia/Shanghai\"",
        Rule::crontab => "a time in crontab form, such as \"0 9 * * MON\"",
        Rule::cc_list => "`cc`",
        Rule::language => "a language code such as `zh` or `en`",
        Rule::weekdays | Rule::weekday_name => {
            "a weekday such as `mon` or a range such as `mon..fri`"
        }
        Rule::string => "a text in quotes",
        Rule::address => "an address such as <name@example.com>",
        Rule::regex => "a regex such as /refund|退款/",
        Rule::number => "a number",
        Rule::boolean => "`true` or `false`",
        Rule::capture => "a capture such as `$1`",
        Rule::date => "a date such as 2026-10-01",
        Rule::date_range => "a date such as 2026-10-01 or a range such as 2026-10-01..2026-10-07",
        Rule::datetime => "a date and time such as 2026-09-30T17:50:00+08:00",
        Rule::time_range => "hours such as 09:00-12:00",
        Rule::clock_time => "a time of day such as 09:00",
        Rule::stop => "`stop`",
        Rule::always => "`always`",
        _ => return None,
    };
    Some(words.to_owned())
}

/// The declaration keywords, for the top-level "expected a declaration" message.
const DECLARATION_KEYWORDS: &[Rule] = &[
    Rule::kw_include,
    Rule::kw_severity,
    Rule::kw_category,
    Rule::kw_field,
    Rule::kw_channel,
    Rule::kw_languages,
    Rule::kw_calendar,
    Rule::kw_department,
    Rule::kw_template,
    Rule::kw_classify,
    Rule::kw_route,
    Rule::kw_deadline,
    Rule::kw_escalate,
    Rule::kw_schedule,
    Rule::kw_test,
];

/// Full-width punctuation that Chinese input methods produce, and its ASCII form.
const FULL_WIDTH: &[(char, &str)] = &[
    ('，', ","),
    ('：', ":"),
    ('（', "("),
    ('）', ")"),
    ('“', "\""),
    ('”', "\""),
    ('＝', "="),
    ('｛', "{"),
    ('｝', "}"),
    ('；', "nothing (lines need no `;`)"),
    ('。', "nothing"),
    ('－', "-"),
    ('＞', ">"),
    ('＜', "<"),
];

impl Builder<'_> {
    fn syntax_error(&self, error: &pest::error::Error<Rule>) -> Diagnostic {
        let position = match error.location {
            InputLocation::Pos(p) => p,
            InputLocation::Span((start, _)) => start,
        };
        let positives: Vec<Rule> = match &error.variant {
            ErrorVariant::ParsingError { positives, .. } => positives.clone(),
            ErrorVariant::CustomError { message } => {
                // pest gives up with a custom error only when its stack or call
                // budget runs out, which takes absurdly deep nesting.
                let (span, _) = self.found_token(position);
                return Diagnostic::error(span, "this file is nested too deeply to read")
                    .with_note(format!("the parser stopped here: {message}"));
            }
        };
        if let Some(lexical) = self.lexical_error(position, &positives) {
            return lexical;
        }
        let (span, found) = self.found_token(position);

        // Where a declaration may start, pest names either every declaration
        // keyword or (at the very start of a file) the whole file rule; both
        // read best as "a declaration", with the keywords in a help line.
        let top_level = positives.contains(&Rule::file)
            || DECLARATION_KEYWORDS.iter().all(|k| positives.contains(k));
        let mut expected: Vec<String> = Vec::new();
        let mut help: Option<String> = None;
        if top_level {
            expected.push("a declaration".to_owned());
            help = Some(format!(
                "a declaration starts with {}",
                or_list(
                    DECLARATION_KEYWORDS
                        .iter()
                        .filter_map(|k| token_text(*k))
                        .map(|k| format!("`{k}`"))
                )
            ));
        }
        for rule in &positives {
            let part_of_declaration =
                DECLARATION_KEYWORDS.contains(rule) || *rule == Rule::EOI || *rule == Rule::file;
            if top_level && part_of_declaration {
                continue;
            }
            if let Some(words) = describe(*rule) {
                if !expected.contains(&words) {
                    expected.push(words);
                }
            }
        }
        // Words first, then punctuation, then the end of the file: the order
        // in which a reader looks for the fix.
        expected.sort_by_key(|words| {
            if words == "the end of the file" {
                2
            } else if words.starts_with('`') && !words[1..].starts_with(char::is_alphabetic) {
                1
            } else {
                0
            }
        });
        let message = match expected.len() {
            0 => format!("unexpected {found}"),
            1 | 2 => format!("expected {}, found {found}", or_list(expected.into_iter())),
            _ => format!(
                "expected one of {}, found {found}",
                or_list(expected.into_iter())
            ),
        };
        let found_text = self.text.get(span.start..span.end).unwrap_or("");
        let mut candidates = positives.clone();
        if top_level {
            candidates.extend_from_slice(DECLARATION_KEYWORDS);
        }
        let after = self.text.get(span.end..).unwrap_or("");
        let help = self.hint(found_text, after, &candidates).or(help);
        let diagnostic = Diagnostic::error(span, message);
        match help {
            Some(help) => diagnostic.with_help(help),
            None => diagnostic,
        }
    }

    /// A targeted hint: a misspelt keyword, full-width punctuation, `=` for `==`.
    fn hint(&self, found: &str, after: &str, positives: &[Rule]) -> Option<String> {
        let first = found.chars().next()?;
        // A full-width mark right after a name (`安全：`) is as likely the
        // culprit as one standing alone.
        let next = after.trim_start_matches([' ', '\t']).chars().next();
        let full_width = FULL_WIDTH
            .iter()
            .find(|(c, _)| *c == first)
            .or_else(|| FULL_WIDTH.iter().find(|(c, _)| Some(*c) == next));
        if let Some((mark, ascii)) = full_width {
            let first = mark;
            return Some(format!(
                "`{first}` is full-width punctuation from a Chinese input method; write {} instead",
                if ascii.starts_with("nothing") {
                    ascii.to_string()
                } else {
                    format!("`{ascii}`")
                }
            ));
        }
        if found == "="
            && (positives.contains(&Rule::cmp_op) || positives.contains(&Rule::cond_tail))
        {
            return Some("to compare, write `==`; a single `=` sets a field in an action".into());
        }
        if found == "%" {
            return Some("write a percentage without a space: `50%`".into());
        }
        let only_closing = positives == [Rule::rbrace];
        let after_otherwise =
            positives.contains(&Rule::cc_list) && !positives.contains(&Rule::route_rule);
        if found == "when" && (only_closing || after_otherwise) {
            return Some("`otherwise` comes last: move this line above it".into());
        }
        if found == "=" && positives.contains(&Rule::op_eq) {
            return Some("an expectation compares: write `==`".into());
        }
        if first.is_alphabetic() {
            let keywords: Vec<&str> = positives.iter().filter_map(|r| token_text(*r)).collect();
            if let Some(near) = suggest(found, keywords.iter().copied()) {
                return Some(format!("did you mean `{near}`?"));
            }
        }
        None
    }

    /// The token at `position` as the message names it, and its span.
    fn found_token(&self, position: usize) -> (Span, String) {
        let rest = &self.text[position.min(self.text.len())..];
        let Some(first) = rest.chars().next() else {
            // At the end, point just after the last thing written.
            let end = self.text.trim_end().len();
            return (self.span(end, end), "the end of the file".to_owned());
        };
        let len = if first == '"' {
            let line_end = rest.find(['\n', '\r']).unwrap_or(rest.len());
            string_token_len(&rest[..line_end]).unwrap_or(line_end)
        } else if first.is_ascii_digit() {
            // Numbers, dates, times and percentages as one token: `09:00-12:00`.
            rest.find(|c: char| !(c.is_ascii_alphanumeric() || ":.-+%".contains(c)))
                .unwrap_or(rest.len())
        } else if first.is_alphanumeric() || first == '_' {
            rest.find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len())
        } else if "=<>!-~&|".contains(first) {
            rest.find(|c: char| !"=<>!-~&|".contains(c))
                .unwrap_or(rest.len())
        } else {
            first.len_utf8()
        };
        let token = &rest[..len];
        (self.span(position, position + len), format!("`{token}`"))
    }

    /// Errors inside a token pest could only reject whole: an unterminated
    /// string, a bad escape, an unclosed regex or address.
    fn lexical_error(&self, position: usize, positives: &[Rule]) -> Option<Diagnostic> {
        let rest = self.text.get(position..)?;
        let line_end = rest.find(['\n', '\r']).unwrap_or(rest.len());
        let line = &rest[..line_end];
        if let Some(after) = rest.strip_prefix("\"\"\"") {
            if !after.contains("\"\"\"") {
                return Some(
                    Diagnostic::error(
                        self.span(position, position + 3),
                        "this `\"\"\"` text is never closed",
                    )
                    .with_help("end it with `\"\"\"` on a line of its own"),
                );
            }
            return None;
        }
        // pest stops at the opening quote of a malformed text whatever it
        // expected there, so a text is examined even when none was expected.
        if rest.starts_with('"') {
            let mut chars = line.char_indices().skip(1);
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => return None,
                    '\\' => match chars.next() {
                        Some((_, '"' | '\\' | 'n' | 't')) => {}
                        Some((j, other)) => {
                            let start = position + i;
                            let end = position + j + other.len_utf8();
                            return Some(
                                Diagnostic::error(
                                    self.span(start, end),
                                    format!("unknown escape `\\{other}` in a text"),
                                )
                                .with_help(
                                    "the escapes are `\\\"` (quote), `\\\\` (backslash), `\\n` (new line) and `\\t` (tab)",
                                ),
                            );
                        }
                        None => break,
                    },
                    _ => {}
                }
            }
            return Some(
                Diagnostic::error(
                    self.span(position, position + line_end),
                    "this text has no closing `\"`",
                )
                .with_help("a text in quotes ends on the line it starts; use `\"\"\"` for text over several lines"),
            );
        }
        if rest.starts_with('/') && positives.contains(&Rule::regex) {
            let mut escaped = false;
            for (i, c) in line.char_indices().skip(1) {
                match c {
                    '/' if !escaped => {
                        if i == 1 {
                            return Some(Diagnostic::error(
                                self.span(position, position + 2),
                                "this regex is empty",
                            ));
                        }
                        return None;
                    }
                    '\\' => escaped = !escaped,
                    _ => escaped = false,
                }
            }
            return Some(
                Diagnostic::error(
                    self.span(position, position + line_end),
                    "this regex has no closing `/`",
                )
                .with_help("a regex ends on the line it starts; write a `/` inside it as `\\/`"),
            );
        }
        if rest.starts_with('<') && positives.contains(&Rule::address) {
            let close = line.find('>');
            let end = close.map_or(line_end, |c| c + 1);
            let inside = &line[1..close.unwrap_or(line_end)];
            let why = if close.is_none() {
                "this address has no closing `>`".to_owned()
            } else if inside.matches('@').count() != 1 {
                format!("`<{inside}>` is not a mail address: it needs one `@`")
            } else {
                format!("`<{inside}>` is not a mail address")
            };
            return Some(
                Diagnostic::error(self.span(position, position + end), why)
                    .with_help("write addresses as <name@example.com>, without spaces or commas"),
            );
        }
        None
    }
}

/// The length of a complete `"…"` at the start of `line`, if it closes on it.
fn string_token_len(line: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in line.char_indices().skip(1) {
        match c {
            '"' if !escaped => return Some(i + 1),
            '\\' => escaped = !escaped,
            _ => escaped = false,
        }
    }
    None
}

//! The typed syntax tree of a policy: every node carries the span it was parsed from.
//!
//! The parser (`parse.rs`) builds these nodes; the checker (`check.rs`) resolves
//! names and types on them; the evaluator (`eval.rs`) runs the checked policy.
//! Nothing here knows about files on disk beyond the `FileId` in a span.

use std::fmt;

/// Index of a source file in a [`SourceMap`](super::source::SourceMap).
pub type FileId = u32;

/// Where a node came from: a byte range in one source file, plus the
/// 1-based line and column (in characters, not bytes) of its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub file: FileId,
    pub start: usize,
    pub end: usize,
    pub line: u32,
    pub col: u32,
}

impl Span {
    /// The smallest span covering both `self` and `other` (same file assumed).
    pub fn to(self, other: Span) -> Span {
        let (first, _) = if self.start <= other.start {
            (self, other)
        } else {
            (other, self)
        };
        Span {
            file: self.file,
            start: self.start.min(other.start),
            end: self.end.max(other.end),
            line: first.line,
            col: first.col,
        }
    }
}

/// A value with the span it was written at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spanned<T> {
    pub node: T,
    pub span: Span,
}

impl<T> Spanned<T> {
    pub fn new(node: T, span: Span) -> Self {
        Spanned { node, span }
    }
}

/// A name as written by the administrator (Unicode letters allowed).
pub type Ident = Spanned<String>;

impl fmt::Display for Spanned<String> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.node)
    }
}

/// One parsed policy file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct File {
    pub items: Vec<Item>,
}

/// A top-level declaration.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Include(Spanned<String>),
    Severity(SeverityDecl),
    Category(CategoryDecl),
    Field(FieldDecl),
    Channel(ChannelDecl),
    Languages(LanguagesDecl),
    Calendar(CalendarDecl),
    Department(DepartmentDecl),
    Template(TemplateDecl),
    Classify(ClassifyBlock),
    Route(RouteBlock),
    Deadline(DeadlineDecl),
    Escalate(EscalateBlock),
    Schedule(ScheduleDecl),
    Test(TestDecl),
}

/// `severity general < important < hot < major`: levels, lowest first.
#[derive(Debug, Clone, PartialEq)]
pub struct SeverityDecl {
    pub levels: Vec<Ident>,
    pub span: Span,
}

/// `category billing "收费争议"`.
#[derive(Debug, Clone, PartialEq)]
pub struct CategoryDecl {
    pub name: Ident,
    pub display: Option<Spanned<String>>,
    pub span: Span,
}

/// `field loss: number "损失金额"`: a custom case field.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldDecl {
    pub name: Ident,
    pub ty: Spanned<FieldType>,
    pub display: Option<Spanned<String>>,
    /// `set by department`: departments may set it by a `FIELD: VALUE` reply line.
    pub set_by_department: Option<Span>,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Text,
    Number,
    Flag,
    Date,
}

/// `channel hotline "热线批转"`: where a case came in (the config maps mailboxes to channels).
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelDecl {
    pub name: Ident,
    pub display: Option<Spanned<String>>,
    pub span: Span,
}

/// `languages zh en`: template languages, the first is the default.
#[derive(Debug, Clone, PartialEq)]
pub struct LanguagesDecl {
    pub languages: Vec<Ident>,
    pub span: Span,
}

/// `calendar office "Asia/Shanghai" { … }`.
#[derive(Debug, Clone, PartialEq)]
pub struct CalendarDecl {
    pub name: Ident,
    pub zone: Spanned<String>,
    pub entries: Vec<CalendarEntry>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CalendarEntry {
    /// `hours mon..fri 09:00-12:00 13:30-18:00`.
    Hours {
        days: Vec<Spanned<WeekdaySet>>,
        intervals: Vec<Spanned<TimeRange>>,
        span: Span,
    },
    /// `holiday 2026-10-01..2026-10-07 "National Day"`.
    Holiday {
        dates: Vec<Spanned<DateRange>>,
        label: Option<Spanned<String>>,
        span: Span,
    },
    /// `workday 2026-09-20 2026-10-10`: make-up working days on weekends.
    Workday {
        dates: Vec<Spanned<DateRange>>,
        label: Option<Spanned<String>>,
        span: Span,
    },
}

/// Days of the week, Monday = 0; a `mon..fri` range or a single day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeekdaySet {
    pub first: u8,
    pub last: u8,
}

/// `09:00-12:00`, minutes since midnight, end exclusive; `24:00` allowed as an end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub start_minute: u16,
    pub end_minute: u16,
}

/// A date or an inclusive date range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    pub first: chrono::NaiveDate,
    pub last: chrono::NaiveDate,
}

/// `department service "客户服务中心" <a@x>, <b@x> { manager <m@x> … }`.
#[derive(Debug, Clone, PartialEq)]
pub struct DepartmentDecl {
    pub name: Ident,
    pub display: Option<Spanned<String>>,
    pub addresses: Vec<Spanned<String>>,
    pub manager: Option<Spanned<String>>,
    /// Named escalation contacts: `contact supervisor <s@x>`.
    pub contacts: Vec<(Ident, Spanned<String>)>,
    /// `calendar office`: the department's own business hours.
    pub calendar: Option<Ident>,
    pub span: Span,
}

/// `template reminder "reminder"`: files `templates/reminder.<lang>.txt`
/// (and optionally `.html`) for each declared language.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateDecl {
    pub name: Ident,
    pub file_stem: Spanned<String>,
    pub span: Span,
}

/// The lifecycle moment a block of rules runs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// A new complaint was received (the default for `classify`).
    Received,
    /// The customer added correspondence to an open case.
    CustomerReply,
    /// The case was reopened.
    Reopened,
}

/// `classify [on reopened] { rule … }`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifyBlock {
    pub trigger: Spanned<Trigger>,
    pub rules: Vec<Rule>,
    pub span: Span,
}

/// `rule media_threat "媒体曝光": when COND then ACTION, ACTION`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: Ident,
    pub description: Option<Spanned<String>>,
    pub condition: Expr,
    pub actions: Vec<Spanned<RuleAction>>,
    /// `stop`: no later rule in the block runs when this one fires.
    pub stop: bool,
    pub span: Span,
}

/// What a classification rule does when it fires.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleAction {
    /// `severity >= major`: raise, never lower.
    RaiseSeverity(Ident),
    /// `severity = general`: set, lowering if need be (explicit).
    SetSeverity(Ident),
    /// `tag crisis`.
    Tag(Ident),
    /// `category = billing`, `responsibility = ours`, `validity = invalid`,
    /// `loss = $1`, `promised = 2026-10-10`: set a field.
    Set { field: Ident, value: Spanned<Value> },
}

/// A condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Box<Expr>, Box<Expr>, Span),
    Or(Box<Expr>, Box<Expr>, Span),
    Not(Box<Expr>, Span),
    /// `always`: true (used as the catch-all of a table, or in tests).
    Always(Span),
    Compare {
        left: Operand,
        op: Spanned<CompareOp>,
        right: Spanned<Value>,
        span: Span,
    },
    /// `text has any ("发霉", "变质")`, `tags has all (a, b)`.
    HasAny {
        left: Operand,
        all: bool,
        values: Vec<Spanned<Value>>,
        span: Span,
    },
    /// `text matches /曝光|媒体/i`.
    Matches {
        left: Operand,
        regex: Spanned<RegexLit>,
        span: Span,
    },
    /// `field is set` / `field is empty`.
    IsSet {
        left: Operand,
        negated: bool,
        span: Span,
    },
    /// A bare flag: `open`, `overdue`, or a custom `flag` field.
    Flag {
        left: Operand,
        span: Span,
    },
    /// `received in hours of office`, `received on a working day of office`:
    /// the case's arrival instant against a declared calendar.
    Arrival {
        test: ArrivalTest,
        calendar: Ident,
        span: Span,
    },
}

/// What an arrival condition asks of the calendar at the arrival instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArrivalTest {
    /// `in hours`: the calendar is open then.
    InHours,
    /// `on a working day`: the local date has opening hours (holidays and
    /// days without hours are not working days; make-up days are).
    OnWorkingDay,
}

impl Expr {
    pub fn span(&self) -> Span {
        match self {
            Expr::And(_, _, s) | Expr::Or(_, _, s) | Expr::Not(_, s) | Expr::Always(s) => *s,
            Expr::Compare { span, .. }
            | Expr::HasAny { span, .. }
            | Expr::Matches { span, .. }
            | Expr::IsSet { span, .. }
            | Expr::Flag { span, .. }
            | Expr::Arrival { span, .. } => *span,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `contains "x"`: substring, case-insensitive for ASCII.
    Contains,
}

/// The left side of a condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// A mail property or case field by path: `subject`, `text`, `sender.domain`,
    /// `attachments.count`, `severity`, `loss`, `language`, `channel`, `route`.
    Path(Spanned<Vec<Ident>>),
    /// `header "X-Priority"`.
    Header(Spanned<String>),
    /// `count(…)` over other cases, answered by the store.
    Count(Spanned<Aggregate>),
}

impl Operand {
    pub fn span(&self) -> Span {
        match self {
            Operand::Path(p) => p.span,
            Operand::Header(h) => h.span,
            Operand::Count(c) => c.span,
        }
    }
}

/// Aggregate conditions over other cases.
#[derive(Debug, Clone, PartialEq)]
pub enum Aggregate {
    /// `count(cases from same sender within 30 days)`; includes this case.
    CasesFromSender { window: Spanned<Duration> },
    /// `count(distinct senders with same category within 48 hours)`;
    /// `same subject` compares subject fingerprints; `tag crisis` a tag.
    DistinctSenders {
        key: Spanned<GroupKey>,
        window: Spanned<Duration>,
    },
    /// `count(reopenings)`: how often this case was reopened.
    Reopenings,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GroupKey {
    SameCategory,
    SameSubject,
    Tag(Ident),
}

/// A literal or name on the right of a condition or action.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A bare name, resolved by the checker (severity, category, channel,
    /// department, language, responsibility, validity, status, tag, …).
    Name(String),
    Text(String),
    Number(f64),
    Bool(bool),
    Date(chrono::NaiveDate),
    /// `$1`: capture group of the regex that matched in this rule's condition.
    Capture(u8),
}

/// `/…/flags` with the pattern exactly as written between the slashes.
#[derive(Debug, Clone, PartialEq)]
pub struct RegexLit {
    pub pattern: String,
    pub case_insensitive: bool,
}

/// `route { name: when COND -> dept, cc other   …   otherwise -> dept }`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteBlock {
    pub routes: Vec<RouteRule>,
    pub otherwise: Option<RouteTarget>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteRule {
    /// Optional label; unnamed routes are reported as `route #N`.
    pub name: Option<Ident>,
    pub condition: Expr,
    pub target: RouteTarget,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteTarget {
    pub department: Ident,
    pub cc: Vec<Ident>,
    pub span: Span,
}

/// A duration as written: `30 minutes`, `4 working hours`, `3 working days`,
/// `10 days` (natural days).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duration {
    pub amount: u32,
    pub unit: DurationUnit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DurationUnit {
    /// Elapsed minutes, open or closed.
    Minutes,
    /// Elapsed hours, open or closed.
    Hours,
    /// Calendar days at the same local time ("natural days").
    Days,
    /// Calendar weeks at the same local time.
    Weeks,
    /// Minutes counted only while the calendar is open.
    WorkingMinutes,
    /// Hours counted only while the calendar is open.
    WorkingHours,
    /// Working days: see `src/calendar/` and `docs/calendar.md` for the exact rule.
    WorkingDays,
    /// `until end of day`: due at the midnight that ends the local day the
    /// clock starts on (in the calendar's zone); the amount is 0.
    EndOfDay,
}

impl DurationUnit {
    pub fn is_business(self) -> bool {
        matches!(
            self,
            DurationUnit::WorkingMinutes | DurationUnit::WorkingHours | DurationUnit::WorkingDays
        )
    }
}

/// Lifecycle events a deadline clock starts or stops on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClockEvent {
    Received,
    Acknowledged,
    Forwarded,
    Accepted,
    Contacted,
    Resolved,
    Answered,
    Closed,
    Reopened,
    ResponsibilityDecided,
    Withdrawn,
    /// The department did not accept the complaint (`status: reject`).
    Rejected,
    /// Closed because the demands go beyond law and policy.
    AbnormallyClosed,
    /// Merged into another case.
    Merged,
    /// The department called the customer back after the answer.
    FollowUp,
    /// A department set a field by a `FIELD: VALUE` line of its reply.
    FieldSet,
}

/// ```text
/// deadline resolve "处理时限" {
///     calendar office
///     starts on forwarded
///     stops on resolved
///     pause while status == waiting_on_customer
///     hard stop
///     when channel == hotline and severity == major -> 1 day
///     otherwise -> 3 days
/// }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct DeadlineDecl {
    pub name: Ident,
    pub display: Option<Spanned<String>>,
    pub calendar: Option<Ident>,
    pub starts_on: Vec<Spanned<ClockEvent>>,
    /// `starts at promised`: the clock counts from this date field's instant
    /// (a date means the end of that day in the calendar's zone), not from
    /// the moment of the event it starts on.
    pub starts_at: Option<Ident>,
    pub stops_on: Vec<Spanned<ClockEvent>>,
    pub pause_while: Option<Expr>,
    /// No escalation step may lie after the due time.
    pub hard_stop: Option<Span>,
    pub durations: Vec<DurationRule>,
    pub otherwise: Option<Spanned<Duration>>,
    /// `otherwise -> none`: the deadline applies to some cases only; when no
    /// `when` line matches, no clock starts.
    pub otherwise_none: Option<Span>,
    /// `when COND -> none` lines, kept so that the checker can refuse them:
    /// `none` is only the `otherwise` of a deadline.
    pub misplaced_none: Vec<Span>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DurationRule {
    pub condition: Expr,
    pub duration: Spanned<Duration>,
    pub span: Span,
}

/// `escalate resolve { at 50% notify assignee using reminder … }`.
#[derive(Debug, Clone, PartialEq)]
pub struct EscalateBlock {
    pub deadline: Ident,
    pub steps: Vec<EscalationStep>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EscalationStep {
    pub at: Spanned<StepOffset>,
    pub recipients: Vec<Spanned<Recipient>>,
    pub template: Ident,
    pub raise_severity: Option<Ident>,
    /// `when COND`: the step only fires if this holds at that time.
    pub condition: Option<Expr>,
    pub span: Span,
}

/// When a step fires relative to its clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepOffset {
    /// `at 50%`: that share of the deadline's length (business time when the
    /// deadline counts business time). `at 100%` is the due time.
    Percent(u32),
    /// `at 15 minutes`: after the clock started.
    AfterStart(Duration),
    /// `at 2 working hours before due`.
    BeforeDue(Duration),
    /// `at 1 working day after due`.
    AfterDue(Duration),
}

/// Who a mail goes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Recipient {
    /// `assignee`: the department the case is routed to.
    Assignee,
    /// `assignee.manager` or `assignee.<contact>`.
    AssigneeRole(Ident),
    /// A named department, or `office.manager`-style `dept.role`.
    Department(Ident, Option<Ident>),
    /// `customer`: the complainant.
    Customer,
    /// `<someone@corp.example>`.
    Address(String),
}

/// `schedule weekly_majors "0 9 * * MON" calendar office { digest … }`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleDecl {
    pub name: Ident,
    /// Crontab text as written (5 fields: seconds are implied 0; 6–7 as `cron`).
    pub cron: Spanned<String>,
    pub calendar: Option<Ident>,
    pub filter: Option<Expr>,
    pub recipients: Vec<Spanned<Recipient>>,
    pub template: Ident,
    pub span: Span,
}

/// An in-file test: a mail (and optional history) and the expected outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct TestDecl {
    pub name: Spanned<String>,
    /// `at 2026-09-30T17:50:00+08:00`: when the mail arrives (else its Date header).
    pub at: Option<Spanned<chrono::DateTime<chrono::FixedOffset>>>,
    /// `channel hotline`: the channel it arrives through (else the first declared).
    pub channel: Option<Ident>,
    pub mail: TestMail,
    pub history: Vec<HistoryCase>,
    pub expectations: Vec<Spanned<Expectation>>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TestMail {
    /// `mail file "fixtures/leak.eml"`, relative to the policy directory.
    File(Spanned<String>),
    /// Inline `mail { from: … subject: … body: """…""" }` headers.
    Inline {
        headers: Vec<(Ident, Spanned<String>)>,
        body: Spanned<String>,
        span: Span,
    },
}

/// `given case from "a@x" at 2026-09-01T10:00:00+08:00 category billing tag t`.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryCase {
    pub sender: Spanned<String>,
    pub at: Spanned<chrono::DateTime<chrono::FixedOffset>>,
    pub category: Option<Ident>,
    pub subject: Option<Spanned<String>>,
    pub tags: Vec<Ident>,
    pub reopened: u32,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expectation {
    /// `expect severity == major`, `expect category == billing`, `expect loss == 6000`.
    Field { field: Ident, value: Spanned<Value> },
    /// `expect tag crisis`.
    Tag(Ident),
    /// `expect no tag crisis`.
    NoTag(Ident),
    /// `expect route service cc office`.
    Route { department: Ident, cc: Vec<Ident> },
    /// `expect deadline resolve due 2026-10-13T17:50:00+08:00`.
    Due {
        deadline: Ident,
        at: Spanned<chrono::DateTime<chrono::FixedOffset>>,
    },
    /// `expect rule media_threat fired` / `expect rule x not fired`.
    Fired { rule: Ident, fired: bool },
}

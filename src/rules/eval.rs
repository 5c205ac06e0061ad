//! Pure evaluation: a checked policy, a case, an input and an instant → actions.
//!
//! [`evaluate`] is a function of its arguments only: no I/O, no wall clock,
//! no runtime. Later rules see what earlier ones set: the evaluator reads the
//! case through the actions decided so far (the latest field value, tag or
//! route wins) and keeps its own copy of the clocks (made at the first clock
//! action), so the case itself is never copied. The caller applies the returned actions to the real case
//! with [`apply`] (or [`apply_owned`], which moves them into the events) —
//! the daemon, `simulate` and `rules test` all go through it. The
//! evaluations of one ingest share the due times of the clocks they start
//! ([`evaluate_sharing`], [`DueTimes`]): the same answers, counted once.
//!
//! One evaluation runs, in this order:
//! 1. on a new complaint: the default (lowest) severity if none is set;
//! 2. the `classify` blocks whose trigger matches the input, in file order;
//! 3. on a new complaint or a reopening: the route (first match wins);
//! 4. the clock event of the input: clocks stop on their `stops on` events,
//!    then start on their `starts on` events, with escalation timers;
//! 5. on a due timer: the escalation step or the breach;
//! 6. after every input: each `pause while` condition of a live clock.
//!
//! The case's lifecycle state is the caller's: for `Input::Lifecycle` the case
//! passed in already carries the new state (and, for a reopening, the
//! incremented `reopen_count`).
//!
//! Timers are never cancelled: a timer that no longer applies when it
//! arrives (its clock stopped or paused, its step fired, or a pause moved its
//! time later) does nothing, and says why in the trace. A `hard stop` clock
//! stops at its due time.

mod clockmath;
mod condition;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use smallvec::{smallvec, SmallVec};

use super::ast::{
    ClockEvent, DeadlineDecl, EscalationStep, Expr, Recipient, RuleAction, Span, Trigger, Value,
};
use super::policy::Policy;
use crate::calendar::Calendar;
use crate::case::{Assignment, Because, Case, ClockState, Event, EventKind, FieldValue, MailFacts};

use condition::Looked;

/// What happened to a case that the rules must react to.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// A new complaint: the case was just created from this mail.
    NewComplaint(&'a MailFacts),
    /// The customer wrote again about an open case.
    CustomerReply(&'a MailFacts),
    /// A lifecycle event (forwarded, resolved, reopened, …) already reflected
    /// in the case's state.
    Lifecycle(ClockEvent),
    /// A timer scheduled by an earlier [`Action::ScheduleTimer`] fell due.
    Timer { deadline: &'a str, kind: TimerKind },
    /// A field or the state changed outside the rules: re-check pauses.
    Recheck,
}

/// Which timer of a deadline clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "timer", content = "step", rename_all = "snake_case")]
pub enum TimerKind {
    /// The escalation step with this index in the deadline's `escalate` block.
    Step(usize),
    /// The due time itself: a clock still running then is breached.
    Due,
}

/// A resolved recipient of an escalation mail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecipient {
    pub address: String,
    /// How the policy named it: `assignee`, `assignee.manager`, `office`,
    /// `office.manager`, `customer`, `address`.
    pub role: String,
}

/// Something the daemon must do (and record) because of the rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Set a field (also `severity = X`, which may lower it).
    SetField {
        field: String,
        value: FieldValue,
        because: Because,
    },
    /// `severity >= X` when the case was below X.
    RaiseSeverity {
        from: Option<String>,
        to: String,
        because: Because,
    },
    AddTag {
        tag: String,
        because: Because,
    },
    /// Route the case to a department, copying others.
    Assign {
        department: String,
        cc: Vec<String>,
        because: Because,
    },
    StartClock {
        deadline: String,
        calendar: Option<String>,
        started_at: DateTime<Utc>,
        /// The duration as the policy wrote it, e.g. `3 working days`.
        duration: String,
        /// Whether the clock counts business time (working units).
        business: bool,
        due: DateTime<Utc>,
        /// How the due time was computed, for people.
        counted: String,
        because: Because,
    },
    StopClock {
        deadline: String,
        /// Whether it stopped in time.
        met: bool,
        because: Because,
    },
    PauseClock {
        deadline: String,
        because: Because,
    },
    ResumeClock {
        deadline: String,
        /// The due time extended by the paused time.
        due: DateTime<Utc>,
        /// Total paused time of the clock so far, in its own measure.
        paused_seconds: i64,
        counted: String,
        because: Because,
    },
    /// The daemon must deliver `Input::Timer { deadline, kind }` at `fire_at`.
    /// A timer that arrives when it no longer applies is ignored, so earlier
    /// timers of the same clock need not be cancelled.
    ScheduleTimer {
        deadline: String,
        kind: TimerKind,
        fire_at: DateTime<Utc>,
        because: Because,
    },
    /// Send the step's mail. A severity raise of the step follows as its own
    /// [`Action::RaiseSeverity`].
    FireStep {
        deadline: String,
        step: usize,
        template: String,
        recipients: Vec<StepRecipient>,
        because: Because,
    },
    /// The step's time came but its `when` did not hold: it will not fire.
    MarkStepFired {
        deadline: String,
        step: usize,
        because: Because,
    },
    /// The clock passed its due time while running.
    Breach {
        deadline: String,
        due: DateTime<Utc>,
        because: Because,
    },
}

impl Action {
    pub fn because(&self) -> &Because {
        match self {
            Action::SetField { because, .. }
            | Action::RaiseSeverity { because, .. }
            | Action::AddTag { because, .. }
            | Action::Assign { because, .. }
            | Action::StartClock { because, .. }
            | Action::StopClock { because, .. }
            | Action::PauseClock { because, .. }
            | Action::ResumeClock { because, .. }
            | Action::ScheduleTimer { because, .. }
            | Action::FireStep { because, .. }
            | Action::MarkStepFired { because, .. }
            | Action::Breach { because, .. } => because,
        }
    }
}

/// The part of the policy a verdict belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Classify,
    Route,
    Deadline,
    Pause,
    Escalation,
}

/// A `(what, value)` pair a condition looked at, e.g.
/// `("text matches /曝光|媒体/", "媒体")`. Text from the policy is borrowed,
/// so that a trace of rules that did not fire costs next to nothing.
pub type Seen<'p> = (Cow<'p, str>, Cow<'p, str>);

/// The seen pairs of one verdict, kept inline when there are at most two.
pub type SeenList<'p> = SmallVec<[Seen<'p>; 2]>;

/// What one rule (classify rule, route, deadline duration, pause condition,
/// escalation step) made of the input.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict<'p> {
    pub stage: Stage,
    /// Rule name, `route #N`, `otherwise`, `deadline NAME`, `pause NAME`,
    /// `escalate NAME #N`.
    pub rule: Cow<'p, str>,
    pub span: Span,
    pub fired: bool,
    /// The values the condition looked at (most conditions look at one or two).
    pub seen: SeenList<'p>,
    /// What firing changed, or why it changed nothing.
    pub notes: Vec<String>,
}

/// The result of one evaluation; the trace borrows names and condition text
/// from the policy.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Evaluation<'p> {
    pub actions: Vec<Action>,
    pub trace: Vec<Verdict<'p>>,
}

impl<'p> Evaluation<'p> {
    /// Whether a rule of this name fired (any stage).
    pub fn fired(&self, rule: &str) -> bool {
        self.trace.iter().any(|v| v.fired && v.rule == rule)
    }

    /// The verdicts of one stage, in evaluation order.
    pub fn verdicts(&self, stage: Stage) -> impl Iterator<Item = &Verdict<'p>> {
        self.trace.iter().filter(move |v| v.stage == stage)
    }
}

/// Evaluates `input` on `case` under `policy` at `now`. Pure.
pub fn evaluate<'p>(
    policy: &'p Policy,
    case: &Case,
    input: &Input<'_>,
    history: &dyn CaseHistory,
    now: DateTime<Utc>,
) -> Evaluation<'p> {
    evaluate_sharing(
        policy,
        case,
        input,
        history,
        now,
        &mut DueTimes::new(policy),
    )
}

/// [`evaluate`], counting the due times of the clocks it starts in
/// `due_times` or taking them from there: the same evaluation, with the work
/// shared between the evaluations of a batch.
pub fn evaluate_sharing<'p>(
    policy: &'p Policy,
    case: &Case,
    input: &Input<'_>,
    history: &dyn CaseHistory,
    now: DateTime<Utc>,
    due_times: &mut DueTimes<'p>,
) -> Evaluation<'p> {
    let mail = match *input {
        Input::NewComplaint(m) | Input::CustomerReply(m) => Some(m),
        _ => None,
    };
    let text = mail.map_or("", |m| cut_at_char(&m.text, policy.limits.max_text_len));
    let mut evaluator = Evaluator {
        policy,
        history,
        now,
        case,
        clocks: Cow::Borrowed(&case.clocks),
        mail,
        text,
        lowered: condition::Lowered::default(),
        actions: Vec::with_capacity(8),
        trace: Vec::with_capacity(policy.prepared.trace_capacity + 8),
        fired_rules: 0,
        due_times,
    };
    evaluator.run(input);
    Evaluation {
        actions: evaluator.actions,
        trace: evaluator.trace,
    }
}

/// Whether `condition` holds for `case` at `now`, outside any mail (as for
/// a schedule's filter or a test's expectation), with the values it looked at.
pub fn holds<'p>(
    policy: &'p Policy,
    case: &Case,
    condition: &'p Expr,
    history: &dyn CaseHistory,
    now: DateTime<Utc>,
) -> (bool, Vec<(String, String)>) {
    let evaluator = Evaluator {
        policy,
        history,
        now,
        case,
        clocks: Cow::Borrowed(&case.clocks),
        mail: None,
        text: "",
        lowered: condition::Lowered::default(),
        actions: Vec::new(),
        trace: Vec::new(),
        fired_rules: 0,
        due_times: &mut DueTimes::new(policy),
    };
    let mut looked = Looked::default();
    let holds = evaluator.eval_expr(condition, &mut looked);
    (holds, looked.owned())
}

/// Most due times a [`DueTimes`] keeps; past that it starts over.
const MAX_DUE_TIMES: usize = 32;

/// The due times of clocks, with their accounts, counted under one policy,
/// for evaluations to share ([`evaluate_sharing`]). Every complaint of a
/// fetch starts the same clocks at the same `now`, and counting a due time
/// on a business calendar, with the account of how it was counted, costs
/// more than the rest of an evaluation.
#[derive(Debug)]
pub struct DueTimes<'p> {
    policy: &'p Policy,
    counted: Vec<CountedDue>,
}

/// One due time: `duration` from `start` on the calendar named `calendar`.
#[derive(Debug)]
struct CountedDue {
    calendar: Option<String>,
    start: DateTime<Utc>,
    duration: super::ast::Duration,
    due: Result<DueTime, String>,
}

/// A clock's due time with what a started clock tells about it.
#[derive(Debug, Clone)]
struct DueTime {
    due: DateTime<Utc>,
    /// How the due time was counted, for people.
    counted: String,
    /// The duration as the policy writes it, e.g. `3 working days`.
    duration_text: String,
    /// The trace's note on the start: the duration, the due time and how
    /// it was counted.
    note: String,
}

impl DueTime {
    /// `duration` from `start` on `calendar`.
    fn count(
        calendar: Option<&Calendar>,
        start: DateTime<Utc>,
        duration: super::ast::Duration,
    ) -> Result<DueTime, String> {
        let (due, counted) = clockmath::due_after(calendar, start, duration)?;
        let duration_text = clockmath::duration_text(duration);
        let note = format!("{duration_text}: due {} ({counted})", due.to_rfc3339());
        Ok(DueTime {
            due,
            counted,
            duration_text,
            note,
        })
    }
}

impl<'p> DueTimes<'p> {
    /// None counted yet, for evaluations under `policy`.
    pub fn new(policy: &'p Policy) -> Self {
        DueTimes {
            policy,
            counted: Vec::new(),
        }
    }

    /// The policy these due times are counted under.
    pub fn policy(&self) -> &'p Policy {
        self.policy
    }

    /// The due time and account of `duration` from `start` on `calendar`
    /// (the calendar of the policy named `calendar_name`).
    fn due_after(
        &mut self,
        calendar_name: Option<&str>,
        calendar: Option<&Calendar>,
        start: DateTime<Utc>,
        duration: super::ast::Duration,
    ) -> Result<DueTime, String> {
        let known = self.counted.iter().find(|c| {
            c.start == start && c.duration == duration && c.calendar.as_deref() == calendar_name
        });
        if let Some(counted) = known {
            return counted.due.clone();
        }
        let due = DueTime::count(calendar, start, duration);
        if self.counted.len() == MAX_DUE_TIMES {
            self.counted.clear();
        }
        self.counted.push(CountedDue {
            calendar: calendar_name.map(str::to_owned),
            start,
            duration,
            due: due.clone(),
        });
        due
    }
}

/// Applies actions to a case in order and returns the events to log.
/// Timers are the caller's to store; they produce no event.
pub fn apply(case: &mut Case, actions: &[Action], now: DateTime<Utc>) -> Vec<Event> {
    apply_owned(case, actions.to_vec(), now)
}

/// [`apply`], taking the actions: their texts move into the events instead
/// of being copied.
pub fn apply_owned(case: &mut Case, actions: Vec<Action>, now: DateTime<Utc>) -> Vec<Event> {
    let mut events = Vec::with_capacity(actions.len());
    for action in actions {
        mutate(case, &action, now);
        if let Some(kind) = event_of(action) {
            events.push(Event { at: now, kind });
        }
    }
    events
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn cut_at_char(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn mutate(case: &mut Case, action: &Action, now: DateTime<Utc>) {
    match action {
        Action::StartClock { .. }
        | Action::StopClock { .. }
        | Action::PauseClock { .. }
        | Action::ResumeClock { .. }
        | Action::FireStep { .. }
        | Action::MarkStepFired { .. } => mutate_clocks(&mut case.clocks, action, now),
        Action::SetField { field, value, .. } => {
            case.fields.insert(field.clone(), value.clone());
        }
        Action::RaiseSeverity { to, .. } => {
            case.fields
                .insert("severity".to_owned(), FieldValue::Name(to.clone()));
        }
        Action::AddTag { tag, .. } => {
            case.tags.insert(tag.clone());
        }
        Action::Assign {
            department,
            cc,
            because,
        } => {
            case.assignment = Some(Assignment {
                department: department.clone(),
                cc: cc.clone(),
                rule: because.rule.clone(),
            });
        }
        Action::ScheduleTimer { .. } | Action::Breach { .. } => {}
    }
}

/// Applies a clock action (one that [`is_clock_action`]) to the clocks.
fn mutate_clocks(clocks: &mut BTreeMap<String, ClockState>, action: &Action, now: DateTime<Utc>) {
    match action {
        Action::StartClock {
            deadline,
            calendar,
            started_at,
            business,
            due,
            ..
        } => {
            clocks.insert(
                deadline.clone(),
                ClockState {
                    deadline: deadline.clone(),
                    calendar: calendar.clone(),
                    started_at: *started_at,
                    due: *due,
                    paused_since: None,
                    paused_seconds: 0,
                    stopped_at: None,
                    fired_steps: BTreeSet::new(),
                    business: *business,
                },
            );
        }
        Action::StopClock { deadline, .. } => {
            if let Some(clock) = clocks.get_mut(deadline) {
                clock.stopped_at = Some(now);
                clock.paused_since = None;
            }
        }
        Action::PauseClock { deadline, .. } => {
            if let Some(clock) = clocks.get_mut(deadline) {
                clock.paused_since = Some(now);
            }
        }
        Action::ResumeClock {
            deadline,
            due,
            paused_seconds,
            ..
        } => {
            if let Some(clock) = clocks.get_mut(deadline) {
                clock.paused_since = None;
                clock.due = *due;
                clock.paused_seconds = *paused_seconds;
            }
        }
        Action::FireStep { deadline, step, .. } | Action::MarkStepFired { deadline, step, .. } => {
            if let Some(clock) = clocks.get_mut(deadline) {
                clock.fired_steps.insert(*step);
            }
        }
        _ => {}
    }
}

/// Whether an action changes the case's clocks (and nothing else).
fn is_clock_action(action: &Action) -> bool {
    matches!(
        action,
        Action::StartClock { .. }
            | Action::StopClock { .. }
            | Action::PauseClock { .. }
            | Action::ResumeClock { .. }
            | Action::FireStep { .. }
            | Action::MarkStepFired { .. }
    )
}

fn event_of(action: Action) -> Option<EventKind> {
    Some(match action {
        Action::SetField {
            field,
            value,
            because,
        } => EventKind::FieldSet {
            field,
            value,
            because,
        },
        Action::RaiseSeverity { to, because, .. } => EventKind::FieldSet {
            field: "severity".to_owned(),
            value: FieldValue::Name(to),
            because,
        },
        Action::AddTag { tag, because } => EventKind::TagAdded {
            tag,
            because,
        },
        Action::Assign {
            department,
            cc,
            because,
        } => EventKind::Assigned {
            department,
            cc,
            because,
        },
        Action::StartClock {
            deadline,
            calendar,
            due,
            counted,
            because,
            ..
        } => EventKind::ClockStarted {
            deadline,
            due,
            calendar,
            counted,
            because,
        },
        Action::StopClock { deadline, met, .. } => EventKind::ClockStopped {
            deadline,
            met,
        },
        Action::PauseClock { deadline, .. } => EventKind::ClockPaused {
            deadline,
        },
        Action::ResumeClock {
            deadline,
            due,
            paused_seconds,
            ..
        } => EventKind::ClockResumed {
            deadline,
            due,
            paused_seconds,
        },
        Action::FireStep {
            deadline,
            step,
            template,
            recipients,
            because,
        } => EventKind::EscalationFired {
            deadline,
            step,
            template,
            recipients: recipients.into_iter().map(|r| r.address).collect(),
            because,
        },
        Action::MarkStepFired {
            deadline,
            step,
            because,
        } => EventKind::Note {
            text: format!(
                "escalation step #{} of deadline {deadline} skipped: its condition did not hold ({})",
                step + 1,
                because.rule
            ),
        },
        Action::Breach { deadline, .. } => EventKind::ClockBreached {
            deadline,
        },
        Action::ScheduleTimer { .. } => return None,
    })
}

/// The current value of a field, borrowed from an action or the case.
#[derive(Debug, Clone, Copy)]
enum FieldRef<'a> {
    Value(&'a FieldValue),
    /// A severity raised to this level.
    Name(&'a str),
}

impl<'a> FieldRef<'a> {
    /// The value, if it is a declared name.
    fn name(self) -> Option<&'a str> {
        match self {
            FieldRef::Name(name) => Some(name),
            FieldRef::Value(FieldValue::Name(name)) => Some(name),
            FieldRef::Value(_) => None,
        }
    }

    /// The value, if it is a declared name or free text.
    fn name_or_text(self) -> Option<&'a str> {
        match self {
            FieldRef::Value(FieldValue::Text(text)) => Some(text),
            other => other.name(),
        }
    }

    fn is(self, value: &FieldValue) -> bool {
        match (self, value) {
            (FieldRef::Value(current), _) => current == value,
            (FieldRef::Name(current), FieldValue::Name(name)) => current == name,
            (FieldRef::Name(_), _) => false,
        }
    }
}

/// The `Because` of a fired rule, built when its first action needs it:
/// a rule whose actions change nothing costs no copy of what it saw.
struct PendingBecause<'r> {
    rule: &'r str,
    span: Span,
    seen: &'r [Seen<'r>],
    built: Option<Because>,
}

impl PendingBecause<'_> {
    /// The cause for one action; the last action of the rule takes the
    /// original, earlier ones a copy.
    fn take(&mut self, evaluator: &Evaluator<'_, '_>, last: bool) -> Because {
        if last {
            if let Some(built) = self.built.take() {
                return built;
            }
            return evaluator.because(self.rule, self.span, self.seen);
        }
        self.built
            .get_or_insert_with(|| evaluator.because(self.rule, self.span, self.seen))
            .clone()
    }
}

/// The working state of one evaluation.
/// `'p` is the policy's lifetime (the trace borrows from it), `'e` that of
/// the evaluation's other inputs.
struct Evaluator<'p, 'e> {
    policy: &'p Policy,
    history: &'e dyn CaseHistory,
    now: DateTime<Utc>,
    /// The case as it was before this evaluation; what the actions changed
    /// is read from `actions` (see [`Evaluator::field`]) and `clocks`.
    case: &'e Case,
    /// The case's clocks with every clock action applied (copied on the first).
    clocks: Cow<'e, BTreeMap<String, ClockState>>,
    mail: Option<&'e MailFacts>,
    /// The mail text, cut at `limits.max_text_len`.
    text: &'e str,
    lowered: condition::Lowered,
    actions: Vec<Action>,
    trace: Vec<Verdict<'p>>,
    fired_rules: usize,
    /// Due times shared with other evaluations under the same policy.
    due_times: &'e mut DueTimes<'p>,
}

impl<'p, 'e> Evaluator<'p, 'e> {
    fn run(&mut self, input: &Input<'_>) {
        if matches!(input, Input::NewComplaint(_)) {
            self.default_severity();
        }
        let trigger = match input {
            Input::NewComplaint(_) => Some(Trigger::Received),
            Input::CustomerReply(_) => Some(Trigger::CustomerReply),
            Input::Lifecycle(ClockEvent::Reopened) => Some(Trigger::Reopened),
            _ => None,
        };
        if let Some(trigger) = trigger {
            self.classify(trigger);
        }
        if matches!(
            input,
            Input::NewComplaint(_) | Input::Lifecycle(ClockEvent::Reopened)
        ) {
            self.route();
        }
        let clock_event = match input {
            Input::NewComplaint(_) => Some(ClockEvent::Received),
            Input::Lifecycle(event) => Some(*event),
            _ => None,
        };
        if let Some(event) = clock_event {
            self.clock_event(event);
        }
        if let Input::Timer { deadline, kind } = input {
            match kind {
                TimerKind::Step(step) => self.step_timer(deadline, *step),
                TimerKind::Due => self.due_timer(deadline),
            }
        }
        self.check_pauses();
    }

    /// Records an action; a clock action is also applied to the working clocks.
    fn push(&mut self, action: Action) {
        if is_clock_action(&action) {
            mutate_clocks(self.clocks.to_mut(), &action, self.now);
        }
        self.actions.push(action);
    }

    /// The current value of a field: the latest action that set it, else the case's.
    fn field(&self, name: &str) -> Option<FieldRef<'_>> {
        for action in self.actions.iter().rev() {
            match action {
                Action::SetField { field, value, .. } if field == name => {
                    return Some(FieldRef::Value(value));
                }
                Action::RaiseSeverity { to, .. } if name == "severity" => {
                    return Some(FieldRef::Name(to));
                }
                _ => {}
            }
        }
        self.case.field(name).map(FieldRef::Value)
    }

    /// The current severity level, if it is set to a name.
    fn severity(&self) -> Option<&str> {
        self.field("severity")?.name()
    }

    fn has_tag(&self, tag: &str) -> bool {
        self.case.tags.contains(tag)
            || self
                .actions
                .iter()
                .any(|a| matches!(a, Action::AddTag { tag: added, .. } if added == tag))
    }

    /// The current tags, sorted.
    fn tags(&self) -> Vec<&str> {
        let mut tags: Vec<&str> = self.case.tags.iter().map(String::as_str).collect();
        let mut added = false;
        for action in &self.actions {
            if let Action::AddTag { tag, .. } = action {
                tags.push(tag);
                added = true;
            }
        }
        if added {
            tags.sort_unstable();
            tags.dedup();
        }
        tags
    }

    /// The current route: department and copies.
    fn assignment(&self) -> Option<(&str, &[String])> {
        for action in self.actions.iter().rev() {
            if let Action::Assign { department, cc, .. } = action {
                return Some((department, cc));
            }
        }
        self.case
            .assignment
            .as_ref()
            .map(|a| (a.department.as_str(), a.cc.as_slice()))
    }

    fn because(&self, rule: &str, span: Span, seen: &[Seen<'_>]) -> Because {
        Because {
            rule: rule.to_owned(),
            location: self.policy.location(span),
            seen: seen
                .iter()
                .map(|(what, value)| (what.to_string(), value.to_string()))
                .collect(),
        }
    }

    fn severity_rank(&self, level: Option<&str>) -> Option<usize> {
        level.and_then(|l| self.policy.severity_rank(l))
    }

    fn default_severity(&mut self) {
        if self.severity().is_some() {
            return;
        }
        if let Some(lowest) = self.policy.severities.first() {
            let because = Because {
                rule: "default severity".to_owned(),
                location: None,
                seen: vec![("severity".to_owned(), "(not set)".to_owned())],
            };
            self.push(Action::SetField {
                field: "severity".to_owned(),
                value: FieldValue::Name(lowest.clone()),
                because,
            });
        }
    }

    fn classify(&mut self, trigger: Trigger) {
        let policy = self.policy;
        let limit = policy.limits.max_fired_rules;
        for block in policy.classify.iter().filter(|b| b.trigger.node == trigger) {
            for rule in &block.rules {
                if self.fired_rules >= limit {
                    self.trace.push(Verdict {
                        stage: Stage::Classify,
                        rule: Cow::Borrowed(&rule.name.node),
                        span: rule.span,
                        fired: false,
                        seen: SmallVec::new(),
                        notes: vec![format!(
                            "not evaluated: {limit} rules already fired (limits.max_fired_rules)"
                        )],
                    });
                    return;
                }
                let mut looked = Looked::default();
                let fired = self.eval_expr(&rule.condition, &mut looked);
                let mut notes = Vec::new();
                if fired {
                    self.fired_rules += 1;
                    let mut because = PendingBecause {
                        rule: &rule.name.node,
                        span: rule.span,
                        seen: &looked.seen,
                        built: None,
                    };
                    notes.reserve_exact(rule.actions.len() + usize::from(rule.stop));
                    for (index, action) in rule.actions.iter().enumerate() {
                        let last = index + 1 == rule.actions.len();
                        let note = self.rule_action(&action.node, &looked, &mut because, last);
                        notes.push(note);
                    }
                    if rule.stop {
                        notes.push("stop: no later rule of this block runs".to_owned());
                    }
                }
                self.trace.push(Verdict {
                    stage: Stage::Classify,
                    rule: Cow::Borrowed(&rule.name.node),
                    span: rule.span,
                    fired,
                    seen: looked.seen,
                    notes,
                });
                if fired && rule.stop {
                    break;
                }
            }
        }
    }

    /// Carries out one action of a fired rule; returns what it did, for the trace.
    fn rule_action(
        &mut self,
        action: &RuleAction,
        looked: &Looked,
        because: &mut PendingBecause<'_>,
        last: bool,
    ) -> String {
        match action {
            RuleAction::RaiseSeverity(level) => {
                self.raise_severity(&level.node, |evaluator| because.take(evaluator, last))
            }
            RuleAction::SetSeverity(level) => {
                let current = self.severity();
                if current == Some(level.node.as_str()) {
                    return ["severity already ", &level.node].concat();
                }
                let note = [
                    "severity ",
                    current.unwrap_or("(not set)"),
                    " → ",
                    &level.node,
                ]
                .concat();
                let because = because.take(self, last);
                self.push(Action::SetField {
                    field: "severity".to_owned(),
                    value: FieldValue::Name(level.node.clone()),
                    because,
                });
                note
            }
            RuleAction::Tag(tag) => {
                if self.has_tag(&tag.node) {
                    return ["tag ", &tag.node, " already present"].concat();
                }
                let because = because.take(self, last);
                self.push(Action::AddTag {
                    tag: tag.node.clone(),
                    because,
                });
                ["tag ", &tag.node].concat()
            }
            RuleAction::Set { field, value } => {
                match self.field_value(&field.node, &value.node, looked) {
                    Ok(value) => {
                        if self.field(&field.node).is_some_and(|f| f.is(&value)) {
                            return field_note(&field.node, " already ", &value);
                        }
                        let note = field_note(&field.node, " = ", &value);
                        let because = because.take(self, last);
                        self.push(Action::SetField {
                            field: field.node.clone(),
                            value,
                            because,
                        });
                        note
                    }
                    Err(problem) => format!("{} not set: {problem}", field.node),
                }
            }
        }
    }

    /// `severity >= level`; `because` is asked for only when the level changes.
    fn raise_severity(&mut self, level: &str, because: impl FnOnce(&Self) -> Because) -> String {
        let current = self.severity();
        let (Some(target), current_rank) = (
            self.policy.severity_rank(level),
            self.severity_rank(current),
        ) else {
            return format!("severity {level} is not a declared level");
        };
        if current_rank.is_some_and(|rank| rank >= target) {
            return ["severity already ", current.unwrap_or_default()].concat();
        }
        let note = ["severity ", current.unwrap_or("(not set)"), " → ", level].concat();
        let from = current.map(str::to_owned);
        let because = because(self);
        self.push(Action::RaiseSeverity {
            from,
            to: level.to_owned(),
            because,
        });
        note
    }

    /// The field value an action `field = value` stores; `$N` is converted
    /// to the field's declared type.
    fn field_value(
        &self,
        field: &str,
        value: &Value,
        looked: &Looked,
    ) -> Result<FieldValue, String> {
        Ok(match value {
            Value::Name(n) => FieldValue::Name(n.clone()),
            Value::Text(t) => FieldValue::Text(t.clone()),
            Value::Number(n) => FieldValue::Number(*n),
            Value::Bool(b) => FieldValue::Flag(*b),
            Value::Date(d) => FieldValue::Date(*d),
            Value::Capture(group) => {
                let captured = looked
                    .capture(*group)
                    .ok_or_else(|| format!("${group} captured nothing"))?;
                let declared = self.policy.field(field).map(|f| f.ty.node);
                match declared {
                    Some(super::ast::FieldType::Number) => {
                        let digits: String = captured
                            .chars()
                            .filter(|c| !matches!(c, ',' | '，' | ' '))
                            .collect();
                        let number: f64 = digits
                            .parse()
                            .map_err(|_| format!("${group} = \"{captured}\" is not a number"))?;
                        if !number.is_finite() {
                            return Err(format!("${group} = \"{captured}\" is not a number"));
                        }
                        FieldValue::Number(number)
                    }
                    Some(super::ast::FieldType::Date) => FieldValue::Date(
                        chrono::NaiveDate::parse_from_str(captured.trim(), "%Y-%m-%d").map_err(
                            |_| format!("${group} = \"{captured}\" is not a date (YYYY-MM-DD)"),
                        )?,
                    ),
                    Some(super::ast::FieldType::Flag) => match captured.trim() {
                        "true" | "yes" | "是" => FieldValue::Flag(true),
                        "false" | "no" | "否" => FieldValue::Flag(false),
                        other => return Err(format!("${group} = \"{other}\" is not a flag")),
                    },
                    Some(super::ast::FieldType::Text) => FieldValue::Text(captured.to_owned()),
                    None => FieldValue::Name(captured.to_owned()),
                }
            }
        })
    }

    fn route(&mut self) {
        let policy = self.policy;
        let mut chosen = None;
        for (index, route) in policy.routes.routes.iter().enumerate() {
            let name = match policy.prepared.route_names.get(index) {
                Some(name) => Cow::Borrowed(name.as_str()),
                None => route.name.as_ref().map_or_else(
                    || Cow::Owned(format!("route #{}", index + 1)),
                    |n| Cow::Borrowed(n.node.as_str()),
                ),
            };
            let mut looked = Looked::default();
            let fired = self.eval_expr(&route.condition, &mut looked);
            if fired {
                chosen = Some((name.clone(), &route.target, route.span, looked.seen.clone()));
            }
            self.trace.push(Verdict {
                stage: Stage::Route,
                rule: name,
                span: route.span,
                fired,
                seen: looked.seen,
                notes: Vec::new(),
            });
            if fired {
                break;
            }
        }
        if chosen.is_none() {
            if let Some(target) = &policy.routes.otherwise {
                self.trace.push(Verdict {
                    stage: Stage::Route,
                    rule: Cow::Borrowed("otherwise"),
                    span: target.span,
                    fired: true,
                    seen: SmallVec::new(),
                    notes: Vec::new(),
                });
                chosen = Some((
                    Cow::Borrowed("otherwise"),
                    target,
                    target.span,
                    SmallVec::new(),
                ));
            }
        }
        let Some((name, target, span, seen)) = chosen else {
            return;
        };
        let department = target.department.node.as_str();
        let unchanged = self.assignment().is_some_and(|(current, cc)| {
            current == department
                && cc.len() == target.cc.len()
                && cc.iter().zip(&target.cc).all(|(a, b)| *a == b.node)
        });
        let note = if unchanged {
            ["already routed to ", department].concat()
        } else if target.cc.is_empty() {
            ["route to ", department].concat()
        } else {
            let cc: Vec<&str> = target.cc.iter().map(|c| c.node.as_str()).collect();
            format!("route to {department}, cc {}", cc.join(", "))
        };
        if let Some(verdict) = self.trace.last_mut() {
            verdict.notes.push(note);
        }
        if !unchanged {
            let because = self.because(&name, span, &seen);
            self.push(Action::Assign {
                department: department.to_owned(),
                cc: target.cc.iter().map(|c| c.node.clone()).collect(),
                because,
            });
        }
    }

    /// The calendar a deadline counts on: its own, the assignee's, or the default.
    fn calendar_name_for(&self, decl: &'p DeadlineDecl) -> Option<String> {
        if let Some(name) = &decl.calendar {
            return Some(name.node.clone());
        }
        let assigned = self
            .assignment()
            .and_then(|(department, _)| self.policy.department(department))
            .and_then(|d| d.calendar.as_ref())
            .map(|c| c.node.clone());
        assigned.or_else(|| self.policy.default_calendar.clone())
    }

    /// `deadline NAME`, borrowed from the policy when it declares the deadline.
    fn deadline_rule(&self, name: &str) -> Cow<'p, str> {
        let policy = self.policy;
        policy
            .deadlines
            .iter()
            .position(|d| d.name.node == name)
            .and_then(|index| policy.prepared.deadline_rules.get(index))
            .map_or_else(
                || Cow::Owned(format!("deadline {name}")),
                |rule| Cow::Borrowed(rule.as_str()),
            )
    }

    /// `pause NAME`, borrowed from the policy when it declares the deadline.
    fn pause_rule(&self, name: &str) -> Cow<'p, str> {
        let policy = self.policy;
        policy
            .deadlines
            .iter()
            .position(|d| d.name.node == name)
            .and_then(|index| policy.prepared.pause_rules.get(index))
            .map_or_else(
                || Cow::Owned(format!("pause {name}")),
                |rule| Cow::Borrowed(rule.as_str()),
            )
    }

    fn calendar(&self, name: Option<&str>) -> Option<&'p Calendar> {
        let policy = self.policy;
        name.and_then(|n| policy.calendar(n))
    }

    fn clock_event(&mut self, event: ClockEvent) {
        let policy = self.policy;
        for decl in &policy.deadlines {
            let name = decl.name.node.as_str();
            if decl.stops_on.iter().any(|e| e.node == event) {
                self.stop_clock(decl, event);
            }
            if decl.starts_on.iter().any(|e| e.node == event) {
                let live = self
                    .clocks
                    .get(name)
                    .is_some_and(|c| c.stopped_at.is_none());
                if live {
                    self.trace.push(Verdict {
                        stage: Stage::Deadline,
                        rule: self.deadline_rule(name),
                        span: decl.span,
                        fired: false,
                        seen: SmallVec::new(),
                        notes: vec![format!(
                            "already running; not restarted on {}",
                            clock_event_name(event)
                        )],
                    });
                } else {
                    self.start_clock(decl, event);
                }
            }
        }
    }

    fn stop_clock(&mut self, decl: &'p DeadlineDecl, event: ClockEvent) {
        let name = decl.name.node.as_str();
        let Some(clock) = self.clocks.get(name) else {
            return;
        };
        if clock.stopped_at.is_some() {
            return;
        }
        // A paused clock was within its time if it was when it paused.
        let met = clock.paused_since.unwrap_or(self.now) <= clock.due;
        let rule = self.deadline_rule(name);
        let seen: SeenList<'p> = smallvec![
            (
                Cow::Borrowed("event"),
                Cow::Borrowed(clock_event_name(event)),
            ),
            (Cow::Borrowed("due"), Cow::Owned(clock.due.to_rfc3339())),
        ];
        self.trace.push(Verdict {
            stage: Stage::Deadline,
            rule: rule.clone(),
            span: decl.span,
            fired: true,
            seen: seen.clone(),
            notes: vec![format!(
                "stopped on {}: {}",
                clock_event_name(event),
                if met { "met" } else { "late" }
            )],
        });
        let because = self.because(&rule, decl.span, &seen);
        self.push(Action::StopClock {
            deadline: name.to_owned(),
            met,
            because,
        });
    }

    fn start_clock(&mut self, decl: &'p DeadlineDecl, event: ClockEvent) {
        let name = decl.name.node.as_str();
        let rule = self.deadline_rule(name);
        let mut chosen = None;
        for duration_rule in &decl.durations {
            let mut looked = Looked::default();
            let fired = self.eval_expr(&duration_rule.condition, &mut looked);
            self.trace.push(Verdict {
                stage: Stage::Deadline,
                rule: rule.clone(),
                span: duration_rule.span,
                fired,
                seen: looked.seen.clone(),
                notes: Vec::new(),
            });
            if fired {
                chosen = Some((duration_rule.duration, duration_rule.span, looked.seen));
                break;
            }
        }
        if chosen.is_none() {
            if let Some(duration) = decl.otherwise {
                self.trace.push(Verdict {
                    stage: Stage::Deadline,
                    rule: rule.clone(),
                    span: duration.span,
                    fired: true,
                    seen: SmallVec::new(),
                    notes: Vec::new(),
                });
                let span = duration.span;
                chosen = Some((duration, span, SmallVec::new()));
            } else if let Some(span) = decl.otherwise_none {
                self.trace.push(Verdict {
                    stage: Stage::Deadline,
                    rule: rule.clone(),
                    span,
                    fired: true,
                    seen: SmallVec::new(),
                    notes: vec![format!(
                        "otherwise -> none: no `when` line matched, so this case has no `{name}` clock"
                    )],
                });
                return;
            }
        }
        let Some((duration, span, mut seen)) = chosen else {
            if let Some(verdict) = self.trace.last_mut() {
                verdict
                    .notes
                    .push("no duration applies: the clock does not start".to_owned());
            }
            return;
        };
        let calendar_name = self.calendar_name_for(decl);
        let calendar = self.calendar(calendar_name.as_deref());
        let start = match &decl.starts_at {
            None => self.now,
            Some(field) => match self.field_instant(&field.node, calendar) {
                Ok(instant) => {
                    seen.push((
                        Cow::Owned(field.node.clone()),
                        Cow::Owned(instant.to_rfc3339()),
                    ));
                    instant
                }
                Err(problem) => {
                    if let Some(verdict) = self.trace.last_mut() {
                        verdict
                            .notes
                            .push(format!("the clock does not start: {problem}"));
                    }
                    return;
                }
            },
        };
        match self.due_after(calendar_name.as_deref(), calendar, start, duration.node) {
            Ok(DueTime {
                due,
                counted,
                duration_text,
                note,
            }) => {
                seen.push((
                    Cow::Borrowed("starts on"),
                    Cow::Borrowed(clock_event_name(event)),
                ));
                seen.push((Cow::Borrowed("duration"), Cow::Owned(duration_text.clone())));
                if let Some(cal) = &calendar_name {
                    seen.push((Cow::Borrowed("calendar"), Cow::Owned(cal.clone())));
                }
                if let Some(verdict) = self.trace.last_mut() {
                    verdict.notes.push(note);
                }
                let because = self.because(&rule, span, &seen);
                self.push(Action::StartClock {
                    deadline: name.to_owned(),
                    calendar: calendar_name,
                    started_at: start,
                    duration: duration_text,
                    business: duration.node.unit.is_business(),
                    due,
                    counted,
                    because: because.clone(),
                });
                self.schedule_timers(name, &because);
            }
            Err(problem) => {
                if let Some(verdict) = self.trace.last_mut() {
                    verdict
                        .notes
                        .push(format!("the clock does not start: {problem}"));
                }
            }
        }
    }

    /// The due time of `duration` from `start` on `calendar` (named
    /// `calendar_name`), with how it was counted; shared with the other
    /// evaluations of [`Evaluator::due_times`] when that is of this policy.
    fn due_after(
        &mut self,
        calendar_name: Option<&str>,
        calendar: Option<&'p Calendar>,
        start: DateTime<Utc>,
        duration: super::ast::Duration,
    ) -> Result<DueTime, String> {
        if std::ptr::eq(self.policy, self.due_times.policy) {
            self.due_times
                .due_after(calendar_name, calendar, start, duration)
        } else {
            DueTime::count(calendar, start, duration)
        }
    }

    /// The instant a `starts at FIELD` clock counts from: a date is the end of
    /// that day (midnight after it) in the calendar's zone, UTC without a calendar.
    fn field_instant(
        &self,
        field: &str,
        calendar: Option<&Calendar>,
    ) -> Result<DateTime<Utc>, String> {
        let date = match self.field(field) {
            Some(FieldRef::Value(FieldValue::Date(date))) => *date,
            Some(_) => return Err(format!("`{field}` does not hold a date")),
            None => return Err(format!("`{field}` is not set")),
        };
        let next_midnight = date
            .succ_opt()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .ok_or_else(|| format!("`{field}` ({date}) is out of range"))?;
        match calendar {
            Some(calendar) => {
                chrono::TimeZone::from_local_datetime(&calendar.zone(), &next_midnight)
                    .earliest()
                    .map(|local| local.with_timezone(&Utc))
                    .ok_or_else(|| {
                        format!("the end of {date} does not exist in the calendar's zone")
                    })
            }
            None => Ok(next_midnight.and_utc()),
        }
    }

    /// Schedules every unfired escalation step of a live clock, and its due time.
    fn schedule_timers(&mut self, deadline: &str, because: &Because) {
        let policy = self.policy;
        // A timer's cause is the clock's rule; the values it saw are on the clock's start.
        let because = &Because {
            rule: because.rule.clone(),
            location: because.location.clone(),
            seen: Vec::new(),
        };
        let Some(clock) = self.clocks.get(deadline).cloned() else {
            return;
        };
        if let Some(block) = policy.escalation(deadline) {
            for (index, step) in block.steps.iter().enumerate() {
                if clock.fired_steps.contains(&index) {
                    continue;
                }
                match self.step_time(&clock, step) {
                    Ok(fire_at) => self.push(Action::ScheduleTimer {
                        deadline: deadline.to_owned(),
                        kind: TimerKind::Step(index),
                        fire_at,
                        because: because.clone(),
                    }),
                    Err(problem) => {
                        if let Some(verdict) = self.trace.last_mut() {
                            verdict.notes.push(format!(
                                "escalation step #{} not scheduled: {problem}",
                                index + 1
                            ));
                        }
                    }
                }
            }
        }
        self.push(Action::ScheduleTimer {
            deadline: deadline.to_owned(),
            kind: TimerKind::Due,
            fire_at: clock.due,
            because: because.clone(),
        });
    }

    /// When a step of a clock falls due, given the clock's current state.
    fn step_time(
        &self,
        clock: &ClockState,
        step: &EscalationStep,
    ) -> Result<DateTime<Utc>, String> {
        let calendar = self.calendar(clock.calendar.as_deref());
        clockmath::step_time(calendar, clock, step.at.node)
    }

    fn step_timer(&mut self, deadline: &str, index: usize) {
        let policy = self.policy;
        let rule = format!("escalate {deadline} #{}", index + 1);
        let Some(step) = policy
            .escalation(deadline)
            .and_then(|block| block.steps.get(index))
        else {
            self.trace.push(Verdict {
                stage: Stage::Escalation,
                rule: Cow::Owned(rule),
                span: Span::default(),
                fired: false,
                seen: SmallVec::new(),
                notes: vec!["the policy has no such escalation step (any more)".to_owned()],
            });
            return;
        };
        let mut verdict = Verdict {
            stage: Stage::Escalation,
            rule: Cow::Owned(rule.clone()),
            span: step.span,
            fired: false,
            seen: SmallVec::new(),
            notes: Vec::new(),
        };
        let Some(clock) = self.clocks.get(deadline).cloned() else {
            verdict.notes.push("the clock never started".to_owned());
            self.trace.push(verdict);
            return;
        };
        if clock.stopped_at.is_some() {
            verdict.notes.push("the clock has stopped".to_owned());
            self.trace.push(verdict);
            return;
        }
        if clock.paused_since.is_some() {
            verdict
                .notes
                .push("the clock is paused; the step is rescheduled on resume".to_owned());
            self.trace.push(verdict);
            return;
        }
        if clock.fired_steps.contains(&index) {
            verdict.notes.push("already fired".to_owned());
            self.trace.push(verdict);
            return;
        }
        let fire_at = match self.step_time(&clock, step) {
            Ok(t) => t,
            Err(problem) => {
                verdict.notes.push(problem);
                self.trace.push(verdict);
                return;
            }
        };
        if self.now < fire_at {
            verdict.notes.push(format!(
                "early: the step falls due at {} (an earlier schedule)",
                fire_at.to_rfc3339()
            ));
            self.trace.push(verdict);
            return;
        }
        let mut looked = Looked::default();
        let holds = match &step.condition {
            Some(condition) => self.eval_expr(condition, &mut looked),
            None => true,
        };
        verdict.seen = looked.seen.clone();
        let because = self.because(&rule, step.span, &looked.seen);
        if !holds {
            verdict
                .notes
                .push("its condition does not hold: skipped".to_owned());
            self.trace.push(verdict);
            self.push(Action::MarkStepFired {
                deadline: deadline.to_owned(),
                step: index,
                because,
            });
            return;
        }
        verdict.fired = true;
        let (recipients, problems) = self.recipients(step);
        verdict.notes.extend(problems);
        verdict.notes.push(format!(
            "notify {} using {}",
            if recipients.is_empty() {
                "nobody".to_owned()
            } else {
                recipients
                    .iter()
                    .map(|r| format!("{} <{}>", r.role, r.address))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            step.template.node
        ));
        self.push(Action::FireStep {
            deadline: deadline.to_owned(),
            step: index,
            template: step.template.node.clone(),
            recipients,
            because: because.clone(),
        });
        if let Some(level) = &step.raise_severity {
            let note = self.raise_severity(&level.node, |_| because);
            verdict.notes.push(note);
        }
        self.trace.push(verdict);
    }

    /// The addresses of a step's recipients, deduplicated, and what could not be resolved.
    fn recipients(&self, step: &EscalationStep) -> (Vec<StepRecipient>, Vec<String>) {
        let policy = self.policy;
        let mut found: Vec<StepRecipient> = Vec::new();
        let mut problems = Vec::new();
        let assignee = self.assignment().map(|(department, _)| department);
        let mut add = |address: &str, role: String| {
            let address = address.trim().trim_start_matches('<').trim_end_matches('>');
            let address = address.to_lowercase();
            if !found.iter().any(|r| r.address == address) {
                found.push(StepRecipient { address, role });
            }
        };
        for recipient in &step.recipients {
            match &recipient.node {
                Recipient::Assignee => match assignee.and_then(|d| policy.department(d)) {
                    Some(dept) => {
                        for address in &dept.addresses {
                            add(&address.node, "assignee".to_owned());
                        }
                    }
                    None => problems.push("assignee: the case is not routed".to_owned()),
                },
                Recipient::AssigneeRole(role) => {
                    let role_name = format!("assignee.{}", role.node);
                    match assignee.and_then(|d| policy.department(d)) {
                        Some(dept) => match department_role(dept, &role.node) {
                            Some(address) => add(address, role_name),
                            None => problems.push(format!(
                                "{role_name}: department {} has no {}",
                                dept.name.node, role.node
                            )),
                        },
                        None => problems.push(format!("{role_name}: the case is not routed")),
                    }
                }
                Recipient::Department(name, role) => match policy.department(&name.node) {
                    Some(dept) => match role {
                        None => {
                            for address in &dept.addresses {
                                add(&address.node, name.node.clone());
                            }
                        }
                        Some(role) => {
                            let role_name = format!("{}.{}", name.node, role.node);
                            match department_role(dept, &role.node) {
                                Some(address) => add(address, role_name),
                                None => problems.push(format!(
                                    "{role_name}: department {} has no {}",
                                    name.node, role.node
                                )),
                            }
                        }
                    },
                    None => problems.push(format!("{}: no such department", name.node)),
                },
                Recipient::Customer => add(&self.case.sender.email, "customer".to_owned()),
                Recipient::Address(address) => add(address, "address".to_owned()),
            }
        }
        (found, problems)
    }

    fn due_timer(&mut self, deadline: &str) {
        let policy = self.policy;
        let rule = self.deadline_rule(deadline);
        let decl = policy.deadline(deadline);
        let mut verdict = Verdict {
            stage: Stage::Deadline,
            rule: rule.clone(),
            span: decl.map_or_else(Span::default, |d| d.span),
            fired: false,
            seen: SmallVec::new(),
            notes: Vec::new(),
        };
        let Some(clock) = self.clocks.get(deadline).cloned() else {
            verdict.notes.push("the clock never started".to_owned());
            self.trace.push(verdict);
            return;
        };
        if clock.stopped_at.is_some() {
            verdict
                .notes
                .push("the clock has stopped in time".to_owned());
            self.trace.push(verdict);
            return;
        }
        if clock.paused_since.is_some() {
            verdict
                .notes
                .push("the clock is paused; its due time moves on resume".to_owned());
            self.trace.push(verdict);
            return;
        }
        if self.now < clock.due {
            verdict.notes.push(format!(
                "early: due at {} (an earlier schedule)",
                clock.due.to_rfc3339()
            ));
            self.trace.push(verdict);
            return;
        }
        verdict.fired = true;
        verdict.seen = smallvec![(Cow::Borrowed("due"), Cow::Owned(clock.due.to_rfc3339()))];
        verdict.notes.push("breached".to_owned());
        let because = self.because(&rule, verdict.span, &verdict.seen);
        self.push(Action::Breach {
            deadline: deadline.to_owned(),
            due: clock.due,
            because: because.clone(),
        });
        if decl.is_some_and(|d| d.hard_stop.is_some()) {
            verdict
                .notes
                .push("hard stop: the clock stops at its due time".to_owned());
            self.push(Action::StopClock {
                deadline: deadline.to_owned(),
                met: false,
                because,
            });
        }
        self.trace.push(verdict);
    }

    /// Pauses live clocks whose `pause while` holds, resumes paused ones whose
    /// condition no longer holds (extending the due time by the paused time).
    fn check_pauses(&mut self) {
        let policy = self.policy;
        for decl in &policy.deadlines {
            let Some(pause_while) = &decl.pause_while else {
                continue;
            };
            let name = decl.name.node.as_str();
            let Some(clock) = self.clocks.get(name).cloned() else {
                continue;
            };
            if clock.stopped_at.is_some() {
                continue;
            }
            let rule = self.pause_rule(name);
            let mut looked = Looked::default();
            let holds = self.eval_expr(pause_while, &mut looked);
            let mut verdict = Verdict {
                stage: Stage::Pause,
                rule: rule.clone(),
                span: pause_while.span(),
                fired: holds,
                seen: looked.seen.clone(),
                notes: Vec::new(),
            };
            match (clock.paused_since, holds) {
                (None, true) => {
                    verdict.notes.push("paused".to_owned());
                    let because = self.because(&rule, pause_while.span(), &looked.seen);
                    self.push(Action::PauseClock {
                        deadline: name.to_owned(),
                        because,
                    });
                }
                (Some(since), false) => {
                    let calendar = self.calendar(clock.calendar.as_deref());
                    match clockmath::resume(calendar, &clock, since, self.now) {
                        Ok((due, paused_seconds, counted)) => {
                            verdict
                                .notes
                                .push(format!("resumed: due {} ({counted})", due.to_rfc3339()));
                            let because = self.because(&rule, pause_while.span(), &looked.seen);
                            self.push(Action::ResumeClock {
                                deadline: name.to_owned(),
                                due,
                                paused_seconds,
                                counted,
                                because: because.clone(),
                            });
                            self.trace.push(verdict);
                            self.schedule_timers(name, &because);
                            continue;
                        }
                        Err(problem) => verdict.notes.push(format!("cannot resume: {problem}")),
                    }
                }
                (None, false) => {}
                (Some(_), true) => verdict.notes.push("still paused".to_owned()),
            }
            self.trace.push(verdict);
        }
    }
}

/// `field`, `between` and `value` as one note; texts and names are joined
/// without the formatting machinery, which costs more than the note.
fn field_note(field: &str, between: &str, value: &FieldValue) -> String {
    match value {
        FieldValue::Name(text) | FieldValue::Text(text) => [field, between, text].concat(),
        other => format!("{field}{between}{other}"),
    }
}

/// The address of a department's `manager` or named contact.
fn department_role<'d>(dept: &'d super::ast::DepartmentDecl, role: &str) -> Option<&'d str> {
    if role == "manager" {
        return dept.manager.as_ref().map(|m| m.node.as_str());
    }
    dept.contacts
        .iter()
        .find(|(name, _)| name.node == role)
        .map(|(_, address)| address.node.as_str())
}

/// `file:line:col` of a span, when it points into the policy's sources.
pub fn location_of(policy: &Policy, span: Span) -> Option<String> {
    policy.location(span)
}

/// The source text of a span, when it points into the policy's sources.
pub(crate) fn snippet_of(policy: &Policy, span: Span) -> Option<&str> {
    let (_, file) = policy.sources.files().nth(span.file as usize)?;
    file.text
        .get(span.start..span.end)
        .filter(|s| !s.is_empty())
}

/// The name of a lifecycle event as the policy writes it.
pub fn clock_event_name(event: ClockEvent) -> &'static str {
    match event {
        ClockEvent::Received => "received",
        ClockEvent::Acknowledged => "acknowledged",
        ClockEvent::Forwarded => "forwarded",
        ClockEvent::Accepted => "accepted",
        ClockEvent::Contacted => "contacted",
        ClockEvent::Resolved => "resolved",
        ClockEvent::Answered => "answered",
        ClockEvent::Closed => "closed",
        ClockEvent::Reopened => "reopened",
        ClockEvent::ResponsibilityDecided => "responsibility_decided",
        ClockEvent::Withdrawn => "withdrawn",
        ClockEvent::Rejected => "rejected",
        ClockEvent::AbnormallyClosed => "abnormally_closed",
        ClockEvent::Merged => "merged",
        ClockEvent::FollowUp => "follow_up",
        ClockEvent::FieldSet => "field_set",
    }
}

/// What the evaluator may ask about *other* cases, for aggregate conditions.
///
/// The store implements it over its secondary indexes; tests use
/// [`MemoryHistory`]. Counts never include the case being evaluated: the
/// evaluator adds it itself. Windows are inclusive at both ends.
pub trait CaseHistory {
    /// Cases opened by `sender` (lower-cased address) within the window.
    fn cases_from_sender(&self, sender: &str, since: DateTime<Utc>, until: DateTime<Utc>) -> u64;
    /// Distinct senders of cases whose category is `category` within the window.
    fn distinct_senders_with_category(
        &self,
        category: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<String>;
    /// Distinct senders of cases whose subject fingerprint is `fingerprint`
    /// (see [`crate::case::subject_fingerprint`]) within the window.
    fn distinct_senders_with_subject(
        &self,
        fingerprint: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<String>;
    /// Distinct senders of cases carrying `tag` within the window.
    fn distinct_senders_with_tag(
        &self,
        tag: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<String>;

    /// How many distinct senders a group has within the window, and whether
    /// `sender` is one of them: what a `count(distinct senders …)` needs.
    /// This default builds the list; a history that can count without
    /// copying every sender overrides it.
    fn count_distinct_senders(
        &self,
        group: SenderGroup<'_>,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        sender: &str,
    ) -> SenderCount {
        let senders = match group {
            SenderGroup::Category(category) => {
                self.distinct_senders_with_category(category, since, until)
            }
            SenderGroup::Subject(fingerprint) => {
                self.distinct_senders_with_subject(fingerprint, since, until)
            }
            SenderGroup::Tag(tag) => self.distinct_senders_with_tag(tag, since, until),
        };
        SenderCount {
            senders: senders.len() as u64,
            includes: senders.iter().any(|s| s == sender),
        }
    }
}

/// The cases a distinct-senders count groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderGroup<'a> {
    Category(&'a str),
    /// A subject fingerprint ([`crate::case::subject_fingerprint`]).
    Subject(&'a str),
    Tag(&'a str),
}

/// The answer of [`CaseHistory::count_distinct_senders`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderCount {
    pub senders: u64,
    /// Whether the sender asked about is among them.
    pub includes: bool,
}

/// One remembered case, as [`MemoryHistory`] keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub sender: String,
    pub opened_at: DateTime<Utc>,
    pub category: Option<String>,
    pub subject_fingerprint: String,
    pub tags: Vec<String>,
}

/// An in-memory [`CaseHistory`] for tests and `rules test`.
#[derive(Debug, Clone, Default)]
pub struct MemoryHistory {
    pub entries: Vec<HistoryEntry>,
}

impl MemoryHistory {
    fn senders_where(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        keep: impl Fn(&HistoryEntry) -> bool,
    ) -> Vec<String> {
        let mut senders: Vec<String> = self
            .entries
            .iter()
            .filter(|e| e.opened_at >= since && e.opened_at <= until && keep(e))
            .map(|e| e.sender.clone())
            .collect();
        senders.sort();
        senders.dedup();
        senders
    }
}

impl CaseHistory for MemoryHistory {
    fn cases_from_sender(&self, sender: &str, since: DateTime<Utc>, until: DateTime<Utc>) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.sender == sender && e.opened_at >= since && e.opened_at <= until)
            .count() as u64
    }

    fn distinct_senders_with_category(
        &self,
        category: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<String> {
        self.senders_where(since, until, |e| e.category.as_deref() == Some(category))
    }

    fn distinct_senders_with_subject(
        &self,
        fingerprint: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<String> {
        self.senders_where(since, until, |e| e.subject_fingerprint == fingerprint)
    }

    fn distinct_senders_with_tag(
        &self,
        tag: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<String> {
        self.senders_where(since, until, |e| e.tags.iter().any(|t| t == tag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::{Address, CaseId};
    use crate::rules::check::{check, Environment};
    use crate::rules::parse::parse_file;
    use crate::rules::{Limits, SourceMap};

    /// A policy whose office opens at `hours` on weekdays.
    fn policy(hours: &str) -> Policy {
        let text = format!(
            r#"
severity general < major
category other "其他"
channel own
languages zh
calendar office "Asia/Shanghai" {{
    hours mon..fri {hours}
}}
department service "客服" <service@corp.example> {{ calendar office }}
template reminder "reminder"
classify {{
    rule rest:
        when category is empty
        then category = other
}}
route {{
    otherwise -> service
}}
deadline forward {{
    calendar office
    starts on received
    stops on forwarded
    otherwise -> 1 working hour
}}
deadline answer {{
    starts on forwarded
    stops on answered
    otherwise -> 2 working days
}}
escalate answer {{
    at 50% notify assignee using reminder
    at 1 working day after due notify assignee using reminder
}}
"#
        );
        let mut sources = SourceMap::new();
        let file = sources.add("test.rules", &text);
        let parsed = parse_file(file, &text).expect("the test policy parses");
        let checked = check(
            sources,
            &[parsed],
            Limits::default(),
            &Environment::default(),
        );
        checked.policy.expect("the test policy checks")
    }

    fn complaint(n: usize, now: DateTime<Utc>) -> (Case, MailFacts) {
        let sender = Address::new(&format!("c{n}@customers.example"), None);
        let mail = MailFacts {
            subject: format!("停气 {n}"),
            text: "小区停气了".to_owned(),
            sender: sender.clone(),
            language: "zh".to_owned(),
            channel: "own".to_owned(),
            received_at: now,
            ..MailFacts::default()
        };
        let case = Case::new(
            CaseId(String::new()),
            now,
            "own",
            sender,
            &mail.subject,
            "zh",
        );
        (case, mail)
    }

    /// Evaluations sharing due times, under the policy of the shared due
    /// times and under another one whose same calendar opens at other
    /// hours, give what each evaluation gives alone.
    #[test]
    fn evaluations_that_share_due_times_give_what_they_give_alone() {
        let (office, late_office) = (policy("08:30-12:00 14:00-17:30"), policy("10:30-17:00"));
        let now = DateTime::parse_from_rfc3339("2026-11-24T10:00:00+08:00")
            .expect("a time")
            .with_timezone(&Utc);
        let history = MemoryHistory::default();
        let mut shared = DueTimes::new(&office);
        let mut dues = Vec::new();
        for n in 0..6 {
            let policy = if n % 2 == 0 { &office } else { &late_office };
            let (mut case, mail) = complaint(n, now);
            for input in [
                Input::NewComplaint(&mail),
                Input::Lifecycle(ClockEvent::Forwarded),
            ] {
                let alone = evaluate(policy, &case, &input, &history, now);
                let sharing = evaluate_sharing(policy, &case, &input, &history, now, &mut shared);
                assert_eq!(sharing, alone, "complaint {n}, {input:?}");
                dues.extend(alone.actions.iter().filter_map(|action| match action {
                    Action::StartClock { deadline, due, .. } => {
                        Some((n % 2, deadline.clone(), *due))
                    }
                    _ => None,
                }));
                apply(&mut case, &alone.actions, now);
            }
        }
        // Both policies started both clocks each time, and the two offices
        // count the forwarding hour differently.
        assert_eq!(dues.len(), 12);
        let forward_due = |office| dues.iter().find(|(o, d, _)| *o == office && d == "forward");
        assert_ne!(forward_due(0).map(|d| d.2), forward_due(1).map(|d| d.2));
        // The office's policy counted each of its two due times once.
        assert_eq!(shared.counted.len(), 2);
    }
}

//! Replies that work a case through its lifecycle: a verified department's
//! commands, and a customer's satisfaction answer, withdrawal or new letter.
//!
//! Every step of a reply is worked on a scratch copy of the case ([`Work`]);
//! a department reply with any problem is thrown away whole, so a reply
//! applies all its commands or none. What is kept is committed with the
//! message in the ingest batch, like every other mail.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use super::{outgoing_attachments, store_texts_and_attachments, Pending, Run};
use crate::case::{
    Address, Assignment, Because, Case, CaseId, CaseState, Event, EventKind, FieldValue,
};
use crate::engine::clocks::ClockPlan;
use crate::engine::compose::{Content, MailPlan};
use crate::engine::lookup::BatchLink;
use crate::engine::policy::{
    COMMAND_CONFIRMATION_TEMPLATE, COMMAND_ERROR_TEMPLATE, MERGED_NOTICE_TEMPLATE, RESULT_TEMPLATE,
    TRANSITION_REFUSED_TEMPLATE, WITHDRAWAL_CONFIRMATION_TEMPLATE,
};
use crate::engine::EngineError;
use crate::lifecycle::commands::{
    field_value, parse_department_reply_with_fields, Command, DepartmentReply, ReplyField, Status,
};
use crate::lifecycle::customer::{interpret, CustomerIntent};
use crate::lifecycle::{check_transition, merge_note, merged_case_in_note, next_states, words};
use crate::mail::inbound::{AttachmentBlob, IncomingMail};
use crate::mail::template::{MailView, NoticeView};
use crate::rules::ast::ClockEvent;
use crate::rules::eval::{apply_owned, Input};
use crate::store::{CaseRef, ChangeSet};

use super::Outcome;

/// The cause recorded on every step a department's reply takes.
pub const DEPARTMENT_REPLY: &str = "department reply";
/// The cause recorded on every step a customer's reply takes.
pub const CUSTOMER_REPLY: &str = "customer reply";
/// How long after closing a customer's new mail reopens a case, by default.
pub const DEFAULT_REOPEN_WINDOW_DAYS: u32 = 30;
/// Template telling a complainant that the complaint is not accepted, and why.
pub const REJECTION_NOTICE_TEMPLATE: &str = "rejection_notice";
/// Template telling a complainant that the case is closed abnormally, and why.
pub const ABNORMAL_CLOSE_NOTICE_TEMPLATE: &str = "abnormal_close_notice";
/// Template of the result of a case for the complainants of the cases merged into it.
pub const MERGED_RESULT_TEMPLATE: &str = "merged_result";
/// How many merges deep a result or a reply is followed (a case merged
/// into one that was merged in turn).
const MERGE_DEPTH: usize = 8;

/// A reply being applied: the case as it will be, and what goes with it.
pub(super) struct Work {
    pub case: Case,
    pub events: Vec<Event>,
    pub clocks: ClockPlan,
    pub mails: Vec<MailPlan>,
    /// What was done, in words, for the confirmation.
    pub applied: Vec<String>,
    /// Events for other cases (the case a merge goes into), committed with this one.
    pub other_events: Vec<(CaseId, Event)>,
    /// Mails about other cases (a result for the complainant of a case
    /// merged into this one), queued on those cases with their own content.
    pub other_mails: Vec<(CaseId, MailPlan)>,
}

impl Work {
    fn new(case: Case) -> Work {
        Work {
            case,
            events: Vec::new(),
            clocks: ClockPlan::default(),
            mails: Vec::new(),
            applied: Vec::new(),
            other_events: Vec::new(),
            other_mails: Vec::new(),
        }
    }
}

fn because(rule: &str, seen: &str) -> Because {
    Because {
        rule: rule.to_owned(),
        location: None,
        seen: vec![("reply".to_owned(), seen.to_owned())],
    }
}

/// The state and clock event a department's status command means.
fn status_target(status: Status) -> (CaseState, Option<ClockEvent>) {
    match status {
        Status::Accepted => (CaseState::Accepted, Some(ClockEvent::Accepted)),
        Status::InProgress => (CaseState::InProgress, Some(ClockEvent::Contacted)),
        Status::Resolved => (CaseState::Resolved, Some(ClockEvent::Resolved)),
        Status::NeedInfo => (CaseState::WaitingOnCustomer, None),
        Status::Reject => (CaseState::Rejected, Some(ClockEvent::Rejected)),
        Status::FollowUp => (CaseState::FollowUp, Some(ClockEvent::FollowUp)),
        Status::AbnormalClose => (
            CaseState::AbnormallyClosed,
            Some(ClockEvent::AbnormallyClosed),
        ),
    }
}

/// Statuses only the case's own department or the complaint office may set.
fn needs_authority(status: Status) -> bool {
    matches!(status, Status::FollowUp | Status::AbnormalClose)
}

/// A verified department reply being applied: who sent it, and what the
/// commands need besides the case.
struct ReplyContext<'a> {
    department: &'a str,
    mail: &'a IncomingMail,
    received_at: DateTime<Utc>,
    blobs: &'a [AttachmentBlob],
    exclude: &'a CaseRef,
    /// The cases `merge:` lines name, as written, read before the reply is
    /// worked (`None`: no such case).
    merge_targets: HashMap<String, Option<Case>>,
    /// Whether the reply records a follow-up: its `result:` is the
    /// follow-up's outcome, not an answer for the customer.
    follow_up: bool,
    /// The cases merged into this one, whose complainants get its result
    /// too (read only when the reply has a `result:`).
    merged_cases: Vec<Case>,
}

impl Run<'_> {
    /// Moves the case to `to` when the lifecycle allows it, and runs the
    /// rules on the change: the clock event's rules when there is one, else
    /// a re-check of pauses. Staying in the same state changes nothing.
    fn step(
        &self,
        work: &mut Work,
        to: CaseState,
        event: Option<ClockEvent>,
        rule: &str,
        seen: &str,
        exclude: &CaseRef,
    ) -> Result<(), String> {
        if work.case.state == to && to != CaseState::Assigned {
            return Ok(());
        }
        check_transition(work.case.state, to).map_err(|e| e.to_string())?;
        if work.case.state != to {
            work.events.push(self.event(EventKind::StateChanged {
                from: work.case.state,
                to,
                because: because(rule, seen),
            }));
            work.case.state = to;
        }
        if to == CaseState::Reopened {
            work.case.reopen_count += 1;
        }
        self.run_rules(
            work,
            event.map_or(Input::Recheck, Input::Lifecycle),
            exclude,
        );
        Ok(())
    }

    fn run_rules(&self, work: &mut Work, input: Input<'_>, exclude: &CaseRef) {
        let history = self.batch.history(&self.engine.store, Some(exclude));
        let evaluation = self.evaluate(&work.case, &input, &history);
        work.clocks.observe(&evaluation.actions);
        work.events
            .extend(apply_owned(&mut work.case, evaluation.actions, self.now));
    }

    fn set_field(&self, work: &mut Work, field: &str, value: FieldValue, rule: &str, seen: &str) {
        work.case.fields.insert(field.to_owned(), value.clone());
        work.events.push(self.event(EventKind::FieldSet {
            field: field.to_owned(),
            value,
            because: because(rule, seen),
        }));
    }

    /// A notice to `to`, in `language`; a department's copy carries a reply
    /// token for `reply_department`. `description` names it in the case's log.
    #[allow(clippy::too_many_arguments)]
    fn notice_plan(
        &self,
        case: &Case,
        template: &str,
        purpose: &str,
        to: Address,
        language: String,
        notice: NoticeView,
        to_customer: bool,
        reply_department: Option<String>,
        in_reply_to: Option<&IncomingMail>,
        description: String,
    ) -> MailPlan {
        let (in_reply_to, references) = match in_reply_to {
            Some(mail) if !mail.message_id_synthesized => {
                let mut references = mail.references.clone();
                references.push(mail.message_id.clone());
                (Some(mail.message_id.clone()), references)
            }
            _ => (None, Vec::new()),
        };
        MailPlan {
            active: self.active.clone(),
            letterhead: self.letterhead.clone(),
            purpose: purpose.to_owned(),
            template: template.to_owned(),
            language,
            case: Some(Arc::new(case.clone())),
            to: vec![to],
            reply_department,
            reply_to: None,
            in_reply_to,
            references,
            content: Content::Notice {
                notice,
                to_customer,
            },
            description,
        }
    }

    /// The department a transfer names, by name or display name.
    fn department_named(&self, wanted: &str) -> Option<String> {
        let wanted = wanted.trim();
        self.active
            .policy
            .departments
            .iter()
            .find(|d| {
                d.name.node.eq_ignore_ascii_case(wanted)
                    || d.display.as_ref().is_some_and(|s| s.node == wanted)
            })
            .map(|d| d.name.node.clone())
    }

    /// The complaint office that hears appeals: the department `office`,
    /// else the default route's department.
    fn complaint_office(&self) -> Option<String> {
        let policy = &self.active.policy;
        if policy.department("office").is_some() {
            return Some("office".to_owned());
        }
        policy
            .routes
            .otherwise
            .as_ref()
            .map(|target| target.department.node.clone())
    }

    /// Applies the commands of a clean department reply to a copy of `base`;
    /// every problem found when any is.
    fn department_work(
        &self,
        base: &Case,
        reply: &DepartmentReply,
        context: &ReplyContext<'_>,
    ) -> Result<Work, Vec<String>> {
        let exclude = context.exclude;
        let finished = next_states(base.state).is_empty();
        if finished
            && reply
                .commands
                .iter()
                .any(|c| !matches!(c, Command::Note(_)))
        {
            // Repeating the status that finished a case would otherwise be
            // accepted as "no change" and let its other commands rewrite it.
            return Err(vec![format!(
                "the case is {}: it is finished and can change no more; a reply on it may carry only `note:` lines",
                words(base.state)
            )]);
        }
        let mut work = Work::new(base.clone());
        let mut problems = Vec::new();
        let mut result = None;
        for command in &reply.commands {
            if let Err(problem) = self.department_command(&mut work, command, context, &mut result)
            {
                problems.push(problem);
            }
        }
        if let Some(result) = result.filter(|_| work.case.state == CaseState::Resolved) {
            let sender = work.case.sender.clone();
            let what = format!("the result mail to {}", sender.email);
            let plan = self.notice_plan(
                &work.case,
                RESULT_TEMPLATE,
                "result",
                sender.clone(),
                work.case.language.clone(),
                NoticeView {
                    text: result.clone(),
                    items: Vec::new(),
                },
                true,
                None,
                None,
                what,
            );
            if self.check_plan(&plan, &mut work.events) {
                work.mails.push(plan);
                let seen = "result sent to the customer";
                match self.step(
                    &mut work,
                    CaseState::Answered,
                    Some(ClockEvent::Answered),
                    DEPARTMENT_REPLY,
                    seen,
                    exclude,
                ) {
                    Ok(()) => {
                        work.applied
                            .push(format!("the result was sent to {}", sender.email));
                        let told = self.merged_results(&mut work, &result, &context.merged_cases);
                        if !told.is_empty() {
                            work.applied.push(format!(
                                "the result was also sent to the complainants of the cases merged into this one: {}",
                                told.join(", ")
                            ));
                        }
                    }
                    Err(problem) => problems.push(problem),
                }
            } else {
                problems.push(format!(
                    "the result mail to {} cannot be built",
                    sender.email
                ));
            }
        }
        if problems.is_empty() && work.case.state != base.state {
            if let Err(problem) = self.finishing_notice(&mut work) {
                problems.push(problem);
            }
        }
        if problems.is_empty() {
            Ok(work)
        } else {
            Err(problems)
        }
    }

    /// The notice the complainant gets when the reply rejected the case or
    /// closed it abnormally, with the reason (`cause:`) the department gave.
    /// Like the result, it shows the case number and the department's words
    /// only: the complainant is not verified.
    fn finishing_notice(&self, work: &mut Work) -> Result<(), String> {
        let (template, purpose, what) = match work.case.state {
            CaseState::Rejected => (REJECTION_NOTICE_TEMPLATE, "rejection", "rejection notice"),
            CaseState::AbnormallyClosed => (
                ABNORMAL_CLOSE_NOTICE_TEMPLATE,
                "abnormal-close",
                "abnormal close notice",
            ),
            _ => return Ok(()),
        };
        let reason = match work.case.fields.get("cause") {
            Some(FieldValue::Text(text)) => text.clone(),
            _ => return Err(format!("the {what} needs a reason: add `cause: …`")),
        };
        let sender = work.case.sender.clone();
        let description = format!("the {what} to {}", sender.email);
        let plan = self.notice_plan(
            &work.case,
            template,
            purpose,
            sender.clone(),
            work.case.language.clone(),
            NoticeView {
                text: reason,
                items: Vec::new(),
            },
            true,
            None,
            None,
            description.clone(),
        );
        if !self.check_plan(&plan, &mut work.events) {
            return Err(format!("{description} cannot be built"));
        }
        work.mails.push(plan);
        work.applied
            .push(format!("{description} was sent with the reason"));
        Ok(())
    }

    /// The cases merged into `target`, directly or through a case merged
    /// into it in turn: those recorded on its log, and those merged earlier
    /// in this batch. Only cases that are merged and name it are returned.
    fn merged_cases(&self, target: &CaseId) -> Result<Vec<Case>, EngineError> {
        let mut found: Vec<Case> = Vec::new();
        let mut frontier = vec![target.clone()];
        for _ in 0..MERGE_DEPTH {
            let mut next = Vec::new();
            for into in &frontier {
                let mut numbers: Vec<CaseId> = self
                    .engine
                    .store
                    .events(into)?
                    .iter()
                    .filter_map(|e| match &e.kind {
                        EventKind::Note { text } => merged_case_in_note(text),
                        _ => None,
                    })
                    .map(|n| CaseId(n.to_owned()))
                    .collect();
                numbers.extend(
                    self.pending_cases
                        .values()
                        .filter(|c| merged_into(c).as_ref() == Some(into))
                        .map(|c| c.id.clone()),
                );
                for number in numbers {
                    if number == *target || found.iter().any(|c| c.id == number) {
                        continue;
                    }
                    let Some(case) = self.current_case(&number)? else {
                        continue;
                    };
                    if merged_into(&case).as_ref() == Some(into) {
                        next.push(case.id.clone());
                        found.push(case);
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            frontier = next;
        }
        Ok(found)
    }

    /// The result of `work`'s case for the complainants of the cases merged
    /// into it, each on their own case and in its language. An address that
    /// already has the result (the same person complained twice) gets it
    /// once. Returns the addresses told.
    fn merged_results(&self, work: &mut Work, result: &str, merged_cases: &[Case]) -> Vec<String> {
        let mut told = Vec::new();
        let mut addresses = vec![work.case.sender.email.to_lowercase()];
        for merged in merged_cases {
            let address = merged.sender.email.to_lowercase();
            if addresses.contains(&address) {
                work.other_events.push((
                    merged.id.clone(),
                    self.event(EventKind::Note {
                        text: format!(
                            "the result of case {}, which this case was merged into, was not sent again: the complainant already has it",
                            work.case.id
                        ),
                    }),
                ));
                continue;
            }
            let what = format!(
                "the result of case {} to {}, the complainant of merged case {}",
                work.case.id, merged.sender.email, merged.id
            );
            let plan = self.notice_plan(
                merged,
                MERGED_RESULT_TEMPLATE,
                "result",
                merged.sender.clone(),
                merged.language.clone(),
                NoticeView {
                    text: result.to_owned(),
                    items: vec![work.case.id.0.clone()],
                },
                true,
                None,
                None,
                what,
            );
            // A mail that cannot be built is noted and left out: the
            // target's own complainant still gets the result.
            let mut events = Vec::new();
            if self.check_plan(&plan, &mut events) {
                work.other_mails.push((merged.id.clone(), plan));
                work.other_events.push((
                    merged.id.clone(),
                    self.event(EventKind::Note {
                        text: format!(
                            "the result of case {}, which this case was merged into, was sent to the complainant",
                            work.case.id
                        ),
                    }),
                ));
                told.push(format!("{} (case {})", merged.sender.email, merged.id));
                addresses.push(address);
            }
            work.events.extend(events);
        }
        told
    }

    fn department_command(
        &self,
        work: &mut Work,
        command: &Command,
        context: &ReplyContext<'_>,
        result: &mut Option<String>,
    ) -> Result<(), String> {
        let rule = DEPARTMENT_REPLY;
        let ReplyContext {
            department,
            mail,
            received_at,
            blobs,
            exclude,
            ..
        } = *context;
        match command {
            Command::Status(status) => {
                let (to, event) = status_target(*status);
                let seen = format!("status: {}", words(to));
                if needs_authority(*status) {
                    self.may_finish(&work.case, department)
                        .map_err(|e| format!("`{seen}`: {e}"))?;
                }
                self.step(work, to, event, rule, &seen, exclude)
                    .map_err(|e| format!("`{seen}`: {e}"))?;
                work.applied.push(format!("the case is now {}", words(to)));
            }
            Command::Responsibility(verdict) => {
                let seen = format!("responsibility: {}", verdict.as_str());
                let value = FieldValue::Name(verdict.as_str().to_owned());
                self.set_field(work, "responsibility", value, rule, &seen);
                self.run_rules(
                    work,
                    Input::Lifecycle(ClockEvent::ResponsibilityDecided),
                    exclude,
                );
                work.applied
                    .push(format!("responsibility: {}", verdict.as_str()));
            }
            Command::Cause(text) => {
                self.set_field(work, "cause", FieldValue::Text(text.clone()), rule, "cause");
                work.applied.push(format!("cause recorded: {text}"));
            }
            Command::SetField { field, value } => {
                let seen = format!("{field}: {value} (set by department {department})");
                let declared = self.active.policy.field(field).map(|f| f.ty.node);
                let parsed = declared
                    .ok_or_else(|| format!("the field `{field}` is not declared"))
                    .and_then(|ty| field_value(ty, value))
                    .map_err(|e| format!("`{field}: {value}`: {e}"))?;
                // The log names the department that set it.
                let cause = format!("{rule} of {department}");
                self.set_field(work, field, parsed, &cause, &seen);
                self.run_rules(work, Input::Lifecycle(ClockEvent::FieldSet), exclude);
                work.applied.push(format!("{field}: {value}"));
            }
            Command::Note(text) => {
                work.events.push(self.event(EventKind::Note {
                    text: format!("note of department {department}: {text}"),
                }));
                work.applied.push("note recorded".to_owned());
            }
            Command::Result(text) if context.follow_up => {
                self.set_field(
                    work,
                    "follow_up_result",
                    FieldValue::Text(text.clone()),
                    rule,
                    "result of the follow-up",
                );
                work.applied.push("follow-up result recorded".to_owned());
            }
            Command::Result(text) => {
                self.set_field(
                    work,
                    "result",
                    FieldValue::Text(text.clone()),
                    rule,
                    "result",
                );
                *result = Some(text.clone());
                work.applied.push("result recorded".to_owned());
            }
            Command::Transfer {
                department: wanted,
                reason,
            } => {
                let Some(target) = self.department_named(wanted) else {
                    let known: Vec<&str> = self
                        .active
                        .policy
                        .departments
                        .iter()
                        .map(|d| d.name.node.as_str())
                        .collect();
                    return Err(format!(
                        "`transfer: {wanted}`: there is no department `{wanted}`; the departments are: {}",
                        known.join(", ")
                    ));
                };
                let seen = format!("transfer: {target} ({reason})");
                self.step(work, CaseState::Assigned, None, rule, &seen, exclude)
                    .map_err(|e| format!("`transfer: {wanted}`: {e}"))?;
                work.case.assignment = Some(Assignment {
                    department: target.clone(),
                    cc: Vec::new(),
                    rule: rule.to_owned(),
                });
                work.events.push(self.event(EventKind::Assigned {
                    department: target.clone(),
                    cc: Vec::new(),
                    because: because(rule, &seen),
                }));
                self.forward_to(work, &target, mail, received_at, blobs)
                    .map_err(|e| format!("`transfer: {wanted}`: {e}"))?;
                work.applied
                    .push(format!("transferred to {target} ({reason})"));
            }
            Command::Appeal(grounds) => {
                let window = work
                    .case
                    .clocks
                    .get("appeal")
                    .filter(|clock| clock.stopped_at.is_none());
                match window {
                    None => {
                        return Err(format!(
                            "`appeal: {grounds}`: no appeal window is open on this case \
                             (it opens when the responsibility is decided)"
                        ))
                    }
                    Some(clock) if self.now > clock.due => {
                        return Err(format!(
                            "`appeal: {grounds}`: the appeal window closed at {} (UTC)",
                            clock.due.format("%Y-%m-%d %H:%M")
                        ))
                    }
                    Some(_) => {}
                }
                let Some(office) = self.complaint_office() else {
                    return Err(
                        "`appeal`: the policy names no complaint office to hear it".to_owned()
                    );
                };
                let seen = format!("appeal: {grounds}");
                self.step(work, CaseState::Appealed, None, rule, &seen, exclude)
                    .map_err(|e| format!("`appeal`: {e}"))?;
                work.events.push(self.event(EventKind::Note {
                    text: format!("appeal of department {department}: {grounds}"),
                }));
                self.forward_to(work, &office, mail, received_at, blobs)
                    .map_err(|e| format!("`appeal`: {e}"))?;
                work.applied.push(format!("appeal sent to {office}"));
            }
            Command::Merge { into, reason } => {
                let what = format!("`merge: {into}`");
                self.may_finish(&work.case, department)
                    .map_err(|e| format!("{what}: {e}"))?;
                let target = merge_target(&work.case, into, &context.merge_targets)
                    .map_err(|e| format!("{what}: {e}"))?;
                let mut seen = format!("merge: into {}", target.id);
                if !reason.is_empty() {
                    seen.push_str(&format!(" ({reason})"));
                }
                check_transition(work.case.state, CaseState::Merged)
                    .map_err(|e| format!("{what}: {e}"))?;
                self.set_field(
                    work,
                    "merged_into",
                    FieldValue::Text(target.id.0.clone()),
                    rule,
                    &seen,
                );
                self.step(
                    work,
                    CaseState::Merged,
                    Some(ClockEvent::Merged),
                    rule,
                    &seen,
                    exclude,
                )
                .map_err(|e| format!("{what}: {e}"))?;
                let note = merge_note(&work.case.id.0, department, reason);
                work.other_events.push((
                    target.id.clone(),
                    self.event(EventKind::Note { text: note }),
                ));
                let sender = work.case.sender.clone();
                let notice = format!("the merge notice to {}", sender.email);
                let plan = self.notice_plan(
                    &work.case,
                    MERGED_NOTICE_TEMPLATE,
                    "merged",
                    sender.clone(),
                    work.case.language.clone(),
                    NoticeView {
                        text: target.id.0.clone(),
                        items: Vec::new(),
                    },
                    true,
                    None,
                    None,
                    notice.clone(),
                );
                if !self.check_plan(&plan, &mut work.events) {
                    return Err(format!("{what}: {notice} cannot be built"));
                }
                work.mails.push(plan);
                work.applied.push(format!(
                    "merged into case {}; {} was told the new case number",
                    target.id, sender.email
                ));
            }
        }
        Ok(())
    }

    /// Finishing a case other than by a result (an abnormal close, a merge)
    /// and recording its follow-up are for the department the case is
    /// assigned to and for the complaint office, not for a department that
    /// only got a copy or handed the case on.
    fn may_finish(&self, case: &Case, department: &str) -> Result<(), String> {
        let assigned = case.assignment.as_ref().map(|a| a.department.as_str());
        let office = self.complaint_office();
        if assigned == Some(department) || office.as_deref() == Some(department) {
            return Ok(());
        }
        let mut allowed = Vec::new();
        if let Some(assigned) = assigned {
            allowed.push(format!(
                "the department the case is assigned to ({assigned})"
            ));
        }
        if let Some(office) = office {
            allowed.push(format!("the complaint office ({office})"));
        }
        Err(if allowed.is_empty() {
            format!("department {department} may not do this on a case assigned to no department")
        } else {
            format!(
                "only {} may do this, not department {department}",
                allowed.join(" or ")
            )
        })
    }

    /// Queues a forward of `mail` to `department`, with its own reply token.
    fn forward_to(
        &self,
        work: &mut Work,
        department: &str,
        mail: &IncomingMail,
        received_at: DateTime<Utc>,
        blobs: &[AttachmentBlob],
    ) -> Result<(), String> {
        let attachments = Arc::new(outgoing_attachments(mail, blobs));
        let what = format!("the forward to department {department}");
        let view = Arc::new(MailView::new(mail, received_at, self.letterhead.zone));
        let plan = self.forward_plan(
            &Arc::new(work.case.clone()),
            department,
            &view,
            &attachments,
            what.clone(),
        )?;
        if self.check_plan(&plan, &mut work.events) {
            work.mails.push(plan);
            Ok(())
        } else {
            Err(format!("{what} cannot be built"))
        }
    }

    pub(super) fn department_reply(
        &mut self,
        uid: u32,
        mail: IncomingMail,
        blobs: Vec<AttachmentBlob>,
        received_at: DateTime<Utc>,
        case_id: CaseId,
        department: String,
    ) -> Result<(), EngineError> {
        let Some(base) = self.current_case(&case_id)? else {
            // The case vanished between classification and now: failing
            // would stall the mailbox on this message, so it is set aside.
            let id = mail.message_id.clone();
            let why = format!("department reply about case {case_id}, which no longer exists");
            let outcome = Outcome::DepartmentReply {
                case: case_id,
                department,
            };
            return self.discard(uid, &id, received_at, &why, outcome);
        };
        let exclude = CaseRef::Existing(case_id.clone());
        let from = mail.from.clone().unwrap_or_else(|| Address::new("", None));
        let mut head = vec![self.mail_received(&mail, "department")];
        head.extend(self.problems_note(&mail));
        let fields = ReplyField::of_policy(&self.active.policy);
        let reply = parse_department_reply_with_fields(&mail.text, &fields);
        let worked = if reply.is_clean() {
            let context = ReplyContext {
                department: &department,
                mail: &mail,
                received_at,
                blobs: &blobs,
                exclude: &exclude,
                merge_targets: self.merge_targets(&reply)?,
                follow_up: reply.commands.contains(&Command::Status(Status::FollowUp)),
                merged_cases: if reply
                    .commands
                    .iter()
                    .any(|c| matches!(c, Command::Result(_)))
                {
                    self.merged_cases(&case_id)?
                } else {
                    Vec::new()
                },
            };
            self.department_work(&base, &reply, &context)
        } else {
            Err(reply.problems.iter().map(ToString::to_string).collect())
        };
        let language = self.active.default_language();
        let mut work = match worked {
            Ok(mut work) if !work.applied.is_empty() => {
                let still_assigned = work
                    .case
                    .assignment
                    .as_ref()
                    .is_some_and(|a| a.department == department);
                let plan = self.notice_plan(
                    &work.case,
                    COMMAND_CONFIRMATION_TEMPLATE,
                    "confirmation",
                    from.clone(),
                    language,
                    NoticeView {
                        text: String::new(),
                        items: work.applied.clone(),
                    },
                    false,
                    still_assigned.then(|| department.clone()),
                    Some(&mail),
                    "the confirmation to the department".to_owned(),
                );
                if self.check_plan(&plan, &mut work.events) {
                    work.mails.push(plan);
                }
                work
            }
            Ok(work) => work,
            Err(problems) => {
                tracing::info!(case = %case_id, %department, ?problems, "department reply refused: nothing applied");
                let mut work = Work::new(base.clone());
                work.events.push(self.event(EventKind::CommandRejected {
                    from: from.email.clone(),
                    reason: format!("nothing applied: {}", problems.join("; ")),
                }));
                let plan = self.notice_plan(
                    &base,
                    COMMAND_ERROR_TEMPLATE,
                    "command-error",
                    from.clone(),
                    language,
                    NoticeView {
                        text: String::new(),
                        items: problems,
                    },
                    false,
                    Some(department.clone()),
                    Some(&mail),
                    "the error mail to the department".to_owned(),
                );
                if self.check_plan(&plan, &mut work.events) {
                    work.mails.push(plan);
                }
                work
            }
        };
        let mut events = head;
        events.append(&mut work.events);
        work.events = events;
        let outcome = Outcome::DepartmentReply {
            case: case_id.clone(),
            department,
        };
        self.commit_work(
            uid,
            &mail,
            blobs,
            received_at,
            case_id,
            &base,
            work,
            outcome,
        )
    }

    /// The cases the reply's `merge:` lines name, as the pending batch leaves
    /// them: by the number as written, else in capitals.
    fn merge_targets(
        &self,
        reply: &DepartmentReply,
    ) -> Result<HashMap<String, Option<Case>>, EngineError> {
        let mut targets = HashMap::new();
        for command in &reply.commands {
            let Command::Merge { into, .. } = command else {
                continue;
            };
            let mut found = self.current_case(&CaseId(into.clone()))?;
            let capitals = into.to_ascii_uppercase();
            if found.is_none() && capitals != *into {
                found = self.current_case(&CaseId(capitals))?;
            }
            targets.insert(into.clone(), found);
        }
        Ok(targets)
    }

    /// A customer's reply: its intent, applied through the lifecycle, with
    /// the mail recorded and (unless it closes or is refused) forwarded to
    /// the case's department.
    pub(super) fn customer_work(
        &self,
        base: &Case,
        mail: &IncomingMail,
        received_at: DateTime<Utc>,
        blobs: &[AttachmentBlob],
        exclude: &CaseRef,
        mut work: Work,
    ) -> Result<(Work, bool), EngineError> {
        let rule = CUSTOMER_REPLY;
        let intent = interpret(&mail.text);
        let state = base.state;
        let answered = matches!(state, CaseState::Answered | CaseState::FollowUp);
        let mut forward = true;
        let mut reopen = false;
        match &intent {
            CustomerIntent::Satisfaction(score) if answered || state == CaseState::Closed => {
                let seen = format!("satisfaction {score}");
                self.set_field(
                    &mut work,
                    "satisfaction",
                    FieldValue::Number(f64::from(*score)),
                    rule,
                    &seen,
                );
                if *score >= 3 {
                    forward = false;
                    if answered {
                        if let Err(error) = self.step(
                            &mut work,
                            CaseState::Closed,
                            Some(ClockEvent::Closed),
                            rule,
                            &seen,
                            exclude,
                        ) {
                            self.refuse(&mut work, base, mail, error);
                        }
                    }
                } else {
                    reopen = true;
                }
            }
            CustomerIntent::Withdraw { reason } => {
                forward = false;
                match check_transition(state, CaseState::Withdrawn) {
                    Ok(()) => {
                        self.set_field(
                            &mut work,
                            "withdrawal_reason",
                            FieldValue::Text(reason.clone()),
                            rule,
                            "withdraw",
                        );
                        if let Err(error) = self.step(
                            &mut work,
                            CaseState::Withdrawn,
                            Some(ClockEvent::Withdrawn),
                            rule,
                            "withdraw",
                            exclude,
                        ) {
                            self.refuse(&mut work, base, mail, error);
                        }
                        let plan = self.notice_plan(
                            &work.case,
                            WITHDRAWAL_CONFIRMATION_TEMPLATE,
                            "withdrawn",
                            base.sender.clone(),
                            base.language.clone(),
                            NoticeView {
                                text: reason.clone(),
                                items: Vec::new(),
                            },
                            true,
                            None,
                            Some(mail),
                            "the withdrawal confirmation".to_owned(),
                        );
                        if self.check_plan(&plan, &mut work.events) {
                            work.mails.push(plan);
                        }
                        // The department stops work on it: it gets the withdrawal.
                        forward = true;
                    }
                    Err(error) => self.refuse(&mut work, base, mail, error.to_string()),
                }
            }
            _ if state == CaseState::Closed => {
                reopen = true;
            }
            _ if state == CaseState::Merged => {
                forward = !self.forward_to_merge_target(&mut work, mail, received_at, blobs)?;
            }
            _ if state == CaseState::WaitingOnCustomer => {
                if let Err(error) = self.step(
                    &mut work,
                    CaseState::InProgress,
                    None,
                    rule,
                    "the customer answered",
                    exclude,
                ) {
                    self.refuse(&mut work, base, mail, error);
                }
            }
            _ => {}
        }
        if reopen && state == CaseState::Closed {
            let window = Duration::days(i64::from(self.engine.settings.reopen_window_days));
            let closed_at = self.closed_at(&base.id)?;
            if closed_at.is_some_and(|at| self.now - at > window) {
                reopen = false;
                forward = false;
                work.events.push(self.event(EventKind::Note {
                    text: format!(
                        "the case was closed more than {} days ago: the reply is recorded, the case is not reopened",
                        window.num_days()
                    ),
                }));
            }
        }
        if reopen {
            let seen = match &intent {
                CustomerIntent::Satisfaction(score) => format!("satisfaction {score}"),
                _ => "the customer wrote again after closing".to_owned(),
            };
            if let Err(error) = self.step(
                &mut work,
                CaseState::Reopened,
                Some(ClockEvent::Reopened),
                rule,
                &seen,
                exclude,
            ) {
                self.refuse(&mut work, base, mail, error);
            }
            let department = work.case.assignment.as_ref().map(|a| a.department.clone());
            forward = false;
            if let Some(department) = department {
                match self.forward_to(&mut work, &department, mail, received_at, blobs) {
                    Ok(()) => {
                        let seen = format!("forwarded to {department} again");
                        if let Err(error) = self.step(
                            &mut work,
                            CaseState::Assigned,
                            Some(ClockEvent::Forwarded),
                            rule,
                            &seen,
                            exclude,
                        ) {
                            self.refuse(&mut work, base, mail, error);
                        }
                    }
                    Err(error) => work
                        .events
                        .push(self.event(EventKind::Note { text: error })),
                }
            }
        }
        Ok((work, forward))
    }

    /// Forwards a customer's mail on a merged case to the department of the
    /// case it was merged into (following further merges), which handles
    /// the matter now, and notes it on that case. `false` when there is no
    /// such department or the forward cannot be built: the mail then goes
    /// to the merged case's own department, as on any case.
    fn forward_to_merge_target(
        &self,
        work: &mut Work,
        mail: &IncomingMail,
        received_at: DateTime<Utc>,
        blobs: &[AttachmentBlob],
    ) -> Result<bool, EngineError> {
        let mut target = work.case.clone();
        for _ in 0..MERGE_DEPTH {
            let Some(into) = merged_into(&target) else {
                break;
            };
            match self.current_case(&into)? {
                Some(next) => target = next,
                None => break,
            }
        }
        let department = target.assignment.as_ref().map(|a| a.department.clone());
        let Some(department) = department.filter(|_| target.id != work.case.id) else {
            work.events.push(self.event(EventKind::Note {
                text: "the case this one was merged into has no department: the reply goes to this case's department".to_owned(),
            }));
            return Ok(false);
        };
        if let Err(error) = self.forward_to(work, &department, mail, received_at, blobs) {
            work.events
                .push(self.event(EventKind::Note { text: error }));
            return Ok(false);
        }
        work.events.push(self.event(EventKind::Note {
            text: format!(
                "the case was merged into {}: the reply is forwarded to its department {department}",
                target.id
            ),
        }));
        work.other_events.push((
            target.id.clone(),
            self.event(EventKind::Note {
                text: format!(
                    "the complainant of case {}, merged into this case, wrote again; the mail was forwarded to department {department}",
                    work.case.id
                ),
            }),
        ));
        Ok(true)
    }

    /// Records a customer's request the lifecycle refuses, and tells them.
    fn refuse(&self, work: &mut Work, base: &Case, mail: &IncomingMail, reason: String) {
        let from = mail
            .from
            .as_ref()
            .map(|a| a.email.clone())
            .unwrap_or_default();
        work.events.push(self.event(EventKind::CommandRejected {
            from,
            reason: reason.clone(),
        }));
        let plan = self.notice_plan(
            &work.case,
            TRANSITION_REFUSED_TEMPLATE,
            "refused",
            base.sender.clone(),
            base.language.clone(),
            NoticeView {
                text: reason,
                items: Vec::new(),
            },
            true,
            None,
            Some(mail),
            "the refusal to the customer".to_owned(),
        );
        if self.check_plan(&plan, &mut work.events) {
            work.mails.push(plan);
        }
    }

    /// When the case last became closed, from its stored log.
    fn closed_at(&self, case: &CaseId) -> Result<Option<DateTime<Utc>>, EngineError> {
        let events = self.engine.store.events(case)?;
        Ok(events.iter().rev().find_map(|e| match e.kind {
            EventKind::StateChanged {
                to: CaseState::Closed,
                ..
            } => Some(e.at),
            _ => None,
        }))
    }

    /// Commits a worked reply with its message: case, events, clocks, mail.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn commit_work(
        &mut self,
        uid: u32,
        mail: &IncomingMail,
        blobs: Vec<AttachmentBlob>,
        received_at: DateTime<Utc>,
        case_id: CaseId,
        base: &Case,
        work: Work,
        outcome: Outcome,
    ) -> Result<(), EngineError> {
        let mut changes = ChangeSet::for_message(&mail.message_id, received_at)?;
        let case = work.case;
        let case_ref = if &case == base {
            CaseRef::Existing(case_id.clone())
        } else {
            changes.update_case(base, case.clone())?
        };
        for event in work.events {
            changes.append_event(&case_ref, event);
        }
        for (other, event) in work.other_events {
            changes.append_event(&CaseRef::Existing(other), event);
        }
        changes.link_message(&case_ref)?;
        store_texts_and_attachments(&mut changes, &case_ref, mail, blobs);
        work.clocks.write(&mut changes, &case_ref, &case);
        let envelope_from = self.engine.settings.sender_address.clone();
        // The mails show the case as stored, one copy for all of them.
        let mut stored: Option<Arc<Case>> = None;
        for mut plan in work.mails {
            let shown = stored.get_or_insert_with(|| Arc::new(case.clone()));
            plan.case = Some(Arc::clone(shown));
            changes.queue_mail(&case_ref, plan.into_draft(&envelope_from))?;
        }
        for (other, plan) in work.other_mails {
            changes.queue_mail(&CaseRef::Existing(other), plan.into_draft(&envelope_from))?;
        }
        self.pending_cases.insert(case_id.clone(), case);
        let id = mail.message_id.clone();
        self.push(
            uid,
            &id,
            changes,
            BatchLink::Case(case_id),
            Pending::Done(outcome),
        );
        Ok(())
    }
}

/// The open case, other than `case`, that a `merge:` line names.
fn merge_target<'t>(
    case: &Case,
    written: &str,
    targets: &'t HashMap<String, Option<Case>>,
) -> Result<&'t Case, String> {
    let Some(Some(target)) = targets.get(written) else {
        return Err(format!("there is no case {written}"));
    };
    if target.id == case.id {
        return Err("a case cannot be merged into itself".to_owned());
    }
    if !target.state.is_open() {
        return Err(format!(
            "case {} is {}; a case can be merged only into one that is still open",
            target.id,
            words(target.state)
        ));
    }
    Ok(target)
}

/// The case a merged case was merged into.
fn merged_into(case: &Case) -> Option<CaseId> {
    if case.state != CaseState::Merged {
        return None;
    }
    match case.fields.get("merged_into") {
        Some(FieldValue::Text(number)) => Some(CaseId(number.clone())),
        _ => None,
    }
}

/// A fresh scratch copy for a customer's reply.
pub(super) fn customer_start(case: Case, events: Vec<Event>) -> Work {
    let mut work = Work::new(case);
    work.events = events;
    work
}

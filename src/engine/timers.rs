//! Due timers and lifecycle events: the rules run on a stored case, and the
//! case, its events, its timers and the mail they cause commit together, one
//! transaction per case.
//!
//! A timer is removed in the same transaction that acts on it, so a crash
//! before the commit fires it again and a crash after it does not; a step
//! already marked fired (`ClockState::fired_steps`) does nothing but go away.
//! Each escalation step therefore sends its mail exactly once.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::clocks::ClockPlan;
use super::compose::{purpose_or, Content, MailPlan};
use super::policy::ActivePolicy;
use super::{Engine, EngineError};
use crate::case::{Address, Because, CaseId, CaseState, Event, EventKind};
use crate::mail::template::{local, EscalationView};
use crate::rules::ast::ClockEvent;
use crate::rules::eval::{
    apply, apply_owned, clock_event_name, evaluate, Action, Input, StepRecipient, TimerKind,
};
use crate::store::{CaseRef, ChangeSet, Timer};

/// The step number under which a deadline's due-time timer is stored
/// (escalation steps use their index in the `escalate` block).
pub const DUE_TIMER_STEP: usize = u32::MAX as usize;

/// The stored step number of a timer kind.
pub(crate) fn step_of(kind: TimerKind) -> usize {
    match kind {
        TimerKind::Step(index) => index,
        TimerKind::Due => DUE_TIMER_STEP,
    }
}

/// The timer kind of a stored step number.
pub(crate) fn kind_of(step: usize) -> TimerKind {
    if step == DUE_TIMER_STEP {
        TimerKind::Due
    } else {
        TimerKind::Step(step)
    }
}

/// The state a lifecycle event puts a case in; `None` when the event is no
/// state change (receiving, deciding responsibility).
pub fn state_after(event: ClockEvent, current: CaseState) -> Option<CaseState> {
    let state = match event {
        ClockEvent::Received | ClockEvent::ResponsibilityDecided | ClockEvent::FieldSet => {
            return None
        }
        ClockEvent::Acknowledged => CaseState::Acknowledged,
        ClockEvent::Forwarded => CaseState::Assigned,
        ClockEvent::Accepted => CaseState::Accepted,
        ClockEvent::Contacted => CaseState::InProgress,
        ClockEvent::Resolved => CaseState::Resolved,
        ClockEvent::Answered => CaseState::Answered,
        ClockEvent::Closed => CaseState::Closed,
        ClockEvent::Reopened => CaseState::Reopened,
        ClockEvent::Withdrawn => CaseState::Withdrawn,
        ClockEvent::Rejected => CaseState::Rejected,
        ClockEvent::AbnormallyClosed => CaseState::AbnormallyClosed,
        ClockEvent::Merged => CaseState::Merged,
        ClockEvent::FollowUp => CaseState::FollowUp,
    };
    (state != current).then_some(state)
}

impl Engine {
    /// Acts on every timer due at `now`: evaluates it on its case, sends the
    /// escalation mail, records raises and breaches, removes the timer; one
    /// transaction per case, then a flush. Returns how many timers were handled.
    pub fn fire_due(&self, now: DateTime<Utc>) -> Result<usize, EngineError> {
        let _writer = self.write_lock();
        let active = self.policy();
        let mut by_case: BTreeMap<CaseId, Vec<Timer>> = BTreeMap::new();
        let mut order = Vec::new();
        for timer in self.store.due_timers(now)? {
            if !by_case.contains_key(&timer.case) {
                order.push(timer.case.clone());
            }
            by_case.entry(timer.case.clone()).or_default().push(timer);
        }
        let mut handled = 0;
        let mut result = Ok(());
        for case_id in order {
            let timers = by_case.remove(&case_id).unwrap_or_default();
            let count = timers.len();
            result = self.fire_case_timers(&active, &case_id, timers, now);
            if result.is_err() {
                break;
            }
            handled += count;
        }
        // The cases handled before a failure stay committed; make them durable.
        if handled > 0 {
            self.store.flush()?;
        }
        result.map(|()| handled)
    }

    fn fire_case_timers(
        &self,
        active: &Arc<ActivePolicy>,
        case_id: &CaseId,
        timers: Vec<Timer>,
        now: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        let mut changes = ChangeSet::new();
        let Some(base) = self.store.case(case_id)? else {
            tracing::warn!(case = %case_id, "timers of a case that does not exist: removed");
            for timer in &timers {
                changes.remove_timer(timer);
            }
            self.store.apply(&changes)?;
            return Ok(());
        };
        let mut case = base.clone();
        let mut events = Vec::new();
        let mut clocks = ClockPlan::default();
        let mut steps = Vec::new();
        for timer in &timers {
            changes.remove_timer(timer);
            let kind = kind_of(timer.step);
            if let TimerKind::Step(index) = kind {
                let fired = case
                    .clocks
                    .get(&timer.deadline)
                    .is_some_and(|clock| clock.fired_steps.contains(&index));
                if fired {
                    continue;
                }
            }
            let history = self.store.history_excluding(case_id);
            let input = Input::Timer {
                deadline: &timer.deadline,
                kind,
            };
            let evaluation = evaluate(&active.policy, &case, &input, &history, now);
            clocks.observe(&evaluation.actions);
            events.extend(apply(&mut case, &evaluation.actions, now));
            steps.extend(
                evaluation
                    .actions
                    .into_iter()
                    .filter_map(|action| match action {
                        Action::FireStep {
                            deadline,
                            step,
                            template,
                            recipients,
                            ..
                        } => Some((deadline, step, template, recipients)),
                        _ => None,
                    }),
            );
        }
        let case_ref = CaseRef::Existing(case_id.clone());
        let letterhead = self.letterhead(active, now);
        let mut plans = Vec::new();
        for (deadline, step, template, recipients) in steps {
            if recipients.is_empty() {
                events.push(Event {
                    at: now,
                    kind: EventKind::Note {
                        text: format!(
                            "escalation step #{} of deadline {deadline} has nobody to notify",
                            step + 1
                        ),
                    },
                });
                continue;
            }
            let due = case.clocks.get(&deadline).map_or(now, |clock| clock.due);
            let escalation = EscalationView {
                deadline: active.names.deadline(&deadline),
                due: local(due, letterhead.zone),
                step,
            };
            let (customer, staff): (Vec<StepRecipient>, Vec<StepRecipient>) =
                recipients.into_iter().partition(|r| r.role == "customer");
            let stem = active.template_stem(&template);
            let purpose = purpose_or(&stem, "escalation");
            let department = case.assignment.as_ref().map(|a| a.department.clone());
            let to_assignee = staff.iter().any(|r| r.role.starts_with("assignee"));
            for (group, to_customer) in [(staff, false), (customer, true)] {
                if group.is_empty() {
                    continue;
                }
                let what = format!("the {template} mail of deadline {deadline}");
                let plan = MailPlan {
                    active: active.clone(),
                    letterhead: letterhead.clone(),
                    purpose: purpose.clone(),
                    template: template.clone(),
                    language: if to_customer {
                        case.language.clone()
                    } else {
                        active.default_language()
                    },
                    case: Some(Arc::new(case.clone())),
                    to: group
                        .iter()
                        .map(|r| Address::new(&r.address, None))
                        .collect(),
                    reply_department: department.clone().filter(|_| to_assignee && !to_customer),
                    reply_to: None,
                    in_reply_to: None,
                    references: Vec::new(),
                    content: Content::Escalation {
                        escalation: escalation.clone(),
                        department: department.clone(),
                        to_customer,
                    },
                    description: what,
                };
                // A failing template is noted by the commit, which renders the mail.
                match plan.preflight(&self.settings.case_prefix) {
                    Ok(()) => plans.push(plan),
                    Err(error) => {
                        let what = &plan.description;
                        tracing::error!(case = %case_id, %error, "{what} cannot be built");
                        events.push(Event {
                            at: now,
                            kind: EventKind::Note {
                                text: format!("{what} cannot be sent: {error}"),
                            },
                        });
                    }
                }
            }
        }
        if case != base {
            changes.update_case(&base, case.clone())?;
        }
        for event in events {
            changes.append_event(&case_ref, event);
        }
        clocks.write(&mut changes, &case_ref, &case);
        let case = Arc::new(case);
        for mut plan in plans {
            plan.case = Some(Arc::clone(&case));
            changes.queue_mail(&case_ref, plan.into_draft(&self.settings.sender_address))?;
        }
        self.store.apply(&changes)?;
        Ok(())
    }

    /// A lifecycle event on a case (a department's command, an operator, a
    /// test): the case moves to the event's state, the rules run, clocks and
    /// their timers follow, all in one transaction. Returns the events written.
    pub fn lifecycle_event(
        &self,
        case_id: &CaseId,
        event: ClockEvent,
        now: DateTime<Utc>,
    ) -> Result<Vec<Event>, EngineError> {
        let _writer = self.write_lock();
        let active = self.policy();
        let Some(base) = self.store.case(case_id)? else {
            return Err(EngineError::UnknownCase(case_id.clone()));
        };
        let mut case = base.clone();
        let mut events = Vec::new();
        if let Some(to) = state_after(event, case.state) {
            events.push(Event {
                at: now,
                kind: EventKind::StateChanged {
                    from: case.state,
                    to,
                    because: Because {
                        rule: format!("lifecycle {}", clock_event_name(event)),
                        location: None,
                        seen: Vec::new(),
                    },
                },
            });
            case.state = to;
            if event == ClockEvent::Reopened {
                case.reopen_count += 1;
            }
        }
        let history = self.store.history_excluding(case_id);
        let evaluation = evaluate(
            &active.policy,
            &case,
            &Input::Lifecycle(event),
            &history,
            now,
        );
        let mut clocks = ClockPlan::default();
        clocks.observe(&evaluation.actions);
        events.extend(apply_owned(&mut case, evaluation.actions, now));
        let case_ref = CaseRef::Existing(case_id.clone());
        let mut changes = ChangeSet::new();
        if case != base {
            changes.update_case(&base, case.clone())?;
        }
        for event in &events {
            changes.append_event(&case_ref, event.clone());
        }
        clocks.write(&mut changes, &case_ref, &case);
        self.store.apply(&changes)?;
        self.store.flush()?;
        Ok(events)
    }
}

impl Engine {
    /// A state change that is no clock event (`waiting_on_customer`, back to
    /// `in_progress`, …), checked against the lifecycle
    /// (`lifecycle::check_transition`): the case moves with a `StateChanged`
    /// event naming `because`, the rules re-check their `pause while`
    /// conditions (`Input::Recheck`), clocks pause or resume and their timers
    /// follow, all in one transaction. Returns the events written.
    pub fn change_state(
        &self,
        case_id: &CaseId,
        to: CaseState,
        because: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Event>, EngineError> {
        let _writer = self.write_lock();
        let active = self.policy();
        let Some(base) = self.store.case(case_id)? else {
            return Err(EngineError::UnknownCase(case_id.clone()));
        };
        crate::lifecycle::check_transition(base.state, to)
            .map_err(|error| EngineError::Transition(error.to_string()))?;
        let mut case = base.clone();
        let mut events = vec![Event {
            at: now,
            kind: EventKind::StateChanged {
                from: case.state,
                to,
                because: Because {
                    rule: because.to_owned(),
                    location: None,
                    seen: Vec::new(),
                },
            },
        }];
        case.state = to;
        let history = self.store.history_excluding(case_id);
        let evaluation = evaluate(&active.policy, &case, &Input::Recheck, &history, now);
        let mut clocks = ClockPlan::default();
        clocks.observe(&evaluation.actions);
        events.extend(apply_owned(&mut case, evaluation.actions, now));
        let case_ref = CaseRef::Existing(case_id.clone());
        let mut changes = ChangeSet::new();
        changes.update_case(&base, case.clone())?;
        for event in &events {
            changes.append_event(&case_ref, event.clone());
        }
        clocks.write(&mut changes, &case_ref, &case);
        self.store.apply(&changes)?;
        self.store.flush()?;
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_kinds_survive_the_store_step_number() {
        for kind in [TimerKind::Due, TimerKind::Step(0), TimerKind::Step(7)] {
            assert_eq!(kind_of(step_of(kind)), kind);
        }
    }

    #[test]
    fn lifecycle_events_move_the_case_or_leave_it() {
        assert_eq!(
            state_after(ClockEvent::Forwarded, CaseState::Acknowledged),
            Some(CaseState::Assigned)
        );
        assert_eq!(state_after(ClockEvent::Resolved, CaseState::Resolved), None);
        assert_eq!(
            state_after(ClockEvent::ResponsibilityDecided, CaseState::InProgress),
            None
        );
    }
}

//! Keeping the store's timers in step with a case's deadline clocks.
//!
//! The evaluator says what to schedule (`ScheduleTimer`) whenever a clock
//! starts or resumes, always for every unfired step plus the due time, so the
//! timers of a clock after an evaluation are exactly those scheduled since its
//! last start or resume, or none when it ended stopped or paused.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use super::timers::step_of;
use crate::case::Case;
use crate::rules::eval::Action;
use crate::store::{CaseRef, ChangeSet};

/// The timer changes of one case across one or more evaluations.
#[derive(Debug, Default)]
pub(crate) struct ClockPlan {
    /// Deadline → timers scheduled since the clock last started or resumed.
    scheduled: BTreeMap<String, Vec<(usize, DateTime<Utc>)>>,
    /// Deadlines whose clock changed: their stored timers are replaced.
    touched: BTreeSet<String>,
}

impl ClockPlan {
    /// Takes note of the clock actions of one evaluation, in order.
    pub fn observe(&mut self, actions: &[Action]) {
        for action in actions {
            match action {
                Action::StartClock { deadline, .. }
                | Action::ResumeClock { deadline, .. }
                | Action::StopClock { deadline, .. }
                | Action::PauseClock { deadline, .. } => self.touch(deadline).clear(),
                Action::ScheduleTimer {
                    deadline,
                    kind,
                    fire_at,
                    ..
                } => self.touch(deadline).push((step_of(*kind), *fire_at)),
                _ => {}
            }
        }
    }

    /// Marks a deadline's clock touched; its timers scheduled so far. The
    /// deadline's name is copied only the first time.
    fn touch(&mut self, deadline: &str) -> &mut Vec<(usize, DateTime<Utc>)> {
        if !self.touched.contains(deadline) {
            self.touched.insert(deadline.to_owned());
        }
        if !self.scheduled.contains_key(deadline) {
            self.scheduled.insert(deadline.to_owned(), Vec::new());
        }
        self.scheduled
            .get_mut(deadline)
            .expect("the deadline's timers were just made sure of")
    }

    /// Replaces the timers of every touched clock: the scheduled ones while
    /// the clock runs in `case`, none once it stopped or paused.
    pub fn write(mut self, changes: &mut ChangeSet, case_ref: &CaseRef, case: &Case) {
        for deadline in &self.touched {
            let running = case
                .clocks
                .get(deadline)
                .is_some_and(|clock| clock.is_running());
            let timers = if running {
                self.scheduled.remove(deadline).unwrap_or_default()
            } else {
                Vec::new()
            };
            changes.replace_clock_timers(case_ref, deadline, timers);
        }
    }
}

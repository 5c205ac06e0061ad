//! Adding and subtracting working days.
//!
//! The rule (explained with examples in `docs/calendar.md`):
//!
//! - `start` open, at local time of day T on day D: the due time is time T on
//!   the N-th working day after D. If that day is not open at T, it is that
//!   day's next opening after T, or its close of business when it has closed
//!   by T.
//! - `start` in a break of day D (open earlier and later that day): as if
//!   `start` were the opening after the break.
//! - otherwise (before the day's first opening, after close of business, on
//!   a closed day): the day of the next opening is the first of the N working
//!   days and the due time is the close of business of the N-th.
//!
//! The result never decreases when `start` or N grows, and is always an open
//! instant or a close of business.

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};

use super::walk::{from_nanos, to_nanos, DayBuffer};
use super::{zone, Calendar, CalendarError};

/// How counting began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CountStart {
    /// `start` was open; counting runs from its day and time.
    Open,
    /// `start` was in a break; counting runs from the opening after it.
    AfterBreak(DateTime<Utc>),
    /// `start` was outside the day's hours; the day of this opening is day 1.
    Closed(DateTime<Utc>),
}

/// Where on the due day the due time landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Landing {
    /// The same local time of day as the start.
    SameTime,
    /// The due day was closed at that time; its next opening.
    NextOpening,
    /// The close of business of the due day.
    CloseOfBusiness,
}

/// A working-day addition, with what an explanation needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WorkingDayCount {
    pub start: CountStart,
    /// The local time of day carried to the due day, unless counting began closed.
    pub time_of_day: Option<NaiveTime>,
    pub due_day: NaiveDate,
    pub landing: Landing,
    pub due: DateTime<Utc>,
}

impl Calendar {
    /// `start` plus `n` working days, by the rule in the module documentation.
    /// `n = 0` gives `start`.
    pub(crate) fn add_working_days(
        &self,
        start: DateTime<Utc>,
        n: u32,
    ) -> Result<WorkingDayCount, CalendarError> {
        if n == 0 {
            return Ok(WorkingDayCount {
                start: CountStart::Open,
                time_of_day: None,
                due_day: self.local_date(start),
                landing: Landing::SameTime,
                due: start,
            });
        }
        let mut scratch = DayBuffer::default();
        let start_nanos = to_nanos(self, start)?;
        let opening = self.open_spans_from(start)?.next_span()?;
        let opening_at = from_nanos(opening.start);
        let (count_start, anchor) = if opening.start == start_nanos {
            (CountStart::Open, start)
        } else {
            self.fill_day(opening.date, &mut scratch)?;
            let open_earlier_that_day = scratch
                .spans
                .first()
                .is_some_and(|span| span.start < start_nanos);
            if open_earlier_that_day {
                (CountStart::AfterBreak(opening_at), opening_at)
            } else {
                let due_day = self.working_day_after(opening.date, n - 1, &mut scratch)?;
                self.fill_day(due_day, &mut scratch)?;
                let close = scratch.spans.last().ok_or_else(|| self.out_of_range())?.end;
                return Ok(WorkingDayCount {
                    start: CountStart::Closed(opening_at),
                    time_of_day: None,
                    due_day,
                    landing: Landing::CloseOfBusiness,
                    due: from_nanos(close),
                });
            }
        };
        let time_of_day = zone::wall(self.zone, anchor).time();
        let due_day = self.working_day_after(opening.date, n, &mut scratch)?;
        let (due, landing) = self.land_on(due_day, time_of_day, &mut scratch)?;
        Ok(WorkingDayCount {
            start: count_start,
            time_of_day: Some(time_of_day),
            due_day,
            landing,
            due,
        })
    }

    /// `end` minus `n` working days: the local time of day of `end` (or of
    /// the last close before it, when `end` is closed) on the `n`-th working
    /// day before, adjusted as when adding.
    pub(crate) fn subtract_working_days(
        &self,
        end: DateTime<Utc>,
        n: u32,
    ) -> Result<DateTime<Utc>, CalendarError> {
        if n == 0 {
            return Ok(end);
        }
        let mut scratch = DayBuffer::default();
        let last = self.open_spans_before(end)?.next_span()?;
        let time_of_day = zone::wall(self.zone, from_nanos(last.end)).time();
        let due_day = self.working_day_before(last.date, n, &mut scratch)?;
        Ok(self.land_on(due_day, time_of_day, &mut scratch)?.0)
    }

    /// Local time `time_of_day` on the working day `day`, moved to the day's
    /// next opening when closed then, or to its close of business when it
    /// has closed by then.
    fn land_on(
        &self,
        day: NaiveDate,
        time_of_day: NaiveTime,
        scratch: &mut DayBuffer,
    ) -> Result<(DateTime<Utc>, Landing), CalendarError> {
        self.fill_day(day, scratch)?;
        let target = zone::resolve(self.zone, day.and_time(time_of_day))
            .ok_or_else(|| self.out_of_range())?;
        let target_nanos = to_nanos(self, target)?;
        for span in scratch.spans.iter() {
            if target_nanos < span.end {
                return Ok(if target_nanos >= span.start {
                    (target, Landing::SameTime)
                } else {
                    (from_nanos(span.start), Landing::NextOpening)
                });
            }
        }
        let close = scratch.spans.last().ok_or_else(|| self.out_of_range())?.end;
        Ok((from_nanos(close), Landing::CloseOfBusiness))
    }
}

//! Walking a calendar day by day: each day's open intervals as instants.
//!
//! All business-time arithmetic is built on these walkers. They visit whole
//! days and their few intervals, never individual minutes, and give up with
//! [`CalendarError::BeyondHorizon`] after the calendar's search horizon.

use chrono::{DateTime, Days, NaiveDate, Offset, TimeDelta, TimeZone, Utc};

use super::{zone, Calendar, CalendarError, DayKind};

/// An open interval `[start, end)` of one day, as instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpenSpan {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// The local date whose hours this interval belongs to.
    pub date: NaiveDate,
}

impl Calendar {
    /// The open intervals of `date` as instants, in order, empty ones dropped
    /// (an interval can vanish in a DST gap). Replaces the contents of `out`.
    pub(crate) fn fill_day(
        &self,
        date: NaiveDate,
        out: &mut Vec<OpenSpan>,
    ) -> Result<(), CalendarError> {
        out.clear();
        let hours = self.hours_on(date);
        if hours.is_empty() {
            return Ok(());
        }
        let midnight = date.and_time(chrono::NaiveTime::MIN);
        let next_midnight = date
            .checked_add_days(Days::new(1))
            .map(|next| next.and_time(chrono::NaiveTime::MIN))
            .ok_or_else(|| self.out_of_range())?;
        // Fast path: when both midnights have the same single offset, the day
        // has no transition and every local time maps with that offset.
        let same_offset = match (
            self.zone.offset_from_local_datetime(&midnight).single(),
            self.zone
                .offset_from_local_datetime(&next_midnight)
                .single(),
        ) {
            (Some(a), Some(b)) if a.fix() == b.fix() => Some(a.fix().local_minus_utc()),
            _ => None,
        };
        for hours in hours {
            let start_local = midnight + TimeDelta::minutes(i64::from(hours.start_minute));
            let end_local = midnight + TimeDelta::minutes(i64::from(hours.end_minute));
            let (start, end) = match same_offset {
                Some(offset) => {
                    let shift = TimeDelta::seconds(i64::from(offset));
                    (
                        (start_local - shift).and_utc(),
                        (end_local - shift).and_utc(),
                    )
                }
                None => (
                    zone::resolve(self.zone, start_local).ok_or_else(|| self.out_of_range())?,
                    zone::resolve(self.zone, end_local).ok_or_else(|| self.out_of_range())?,
                ),
            };
            if end > start {
                out.push(OpenSpan { start, end, date });
            }
        }
        Ok(())
    }

    /// Whether `date` has any open time.
    pub(crate) fn is_working_day(
        &self,
        date: NaiveDate,
        scratch: &mut Vec<OpenSpan>,
    ) -> Result<bool, CalendarError> {
        if self.hours_on(date).is_empty() {
            return Ok(false);
        }
        self.fill_day(date, scratch)?;
        Ok(!scratch.is_empty())
    }

    /// The local date of an instant.
    pub(crate) fn local_date(&self, at: DateTime<Utc>) -> NaiveDate {
        zone::wall(self.zone, at).date()
    }

    /// Open time from `from` on, in order, each interval cut to start no
    /// earlier than `from`.
    pub(crate) fn open_spans_from(&self, from: DateTime<Utc>) -> Forward<'_> {
        // An interval of the previous local day can reach past midnight only
        // through a DST shift at midnight; starting a day early covers it.
        let first_day = self.local_date(from).pred_opt();
        Forward {
            calendar: self,
            from,
            next_day: first_day,
            days_walked: 0,
            day: Vec::new(),
            position: 0,
        }
    }

    /// Open time before `until`, latest first, each interval cut to end no
    /// later than `until`.
    pub(crate) fn open_spans_before(&self, until: DateTime<Utc>) -> Backward<'_> {
        let first_day = self.local_date(until).succ_opt();
        Backward {
            calendar: self,
            until,
            next_day: first_day,
            days_walked: 0,
            day: Vec::new(),
            remaining: 0,
        }
    }

    /// The `n`-th working day after `date` (`n = 0` is `date` itself).
    pub(crate) fn working_day_after(
        &self,
        date: NaiveDate,
        n: u32,
        scratch: &mut Vec<OpenSpan>,
    ) -> Result<NaiveDate, CalendarError> {
        self.step_working_days(date, n, scratch, NaiveDate::succ_opt)
    }

    /// The `n`-th working day before `date` (`n = 0` is `date` itself).
    pub(crate) fn working_day_before(
        &self,
        date: NaiveDate,
        n: u32,
        scratch: &mut Vec<OpenSpan>,
    ) -> Result<NaiveDate, CalendarError> {
        self.step_working_days(date, n, scratch, NaiveDate::pred_opt)
    }

    fn step_working_days(
        &self,
        date: NaiveDate,
        n: u32,
        scratch: &mut Vec<OpenSpan>,
        step: fn(&NaiveDate) -> Option<NaiveDate>,
    ) -> Result<NaiveDate, CalendarError> {
        let mut current = date;
        let mut counted = 0;
        let mut days_walked = 0u32;
        while counted < n {
            current = step(&current).ok_or_else(|| self.out_of_range())?;
            days_walked += 1;
            if days_walked > self.horizon_days {
                return Err(self.beyond_horizon(date));
            }
            if self.is_working_day(current, scratch)? {
                counted += 1;
            }
        }
        Ok(current)
    }

    /// The kind of each day from `first` to `last` inclusive that is a
    /// holiday or a make-up working day, for explanations.
    pub(crate) fn special_days(
        &self,
        first: NaiveDate,
        last: NaiveDate,
    ) -> impl Iterator<Item = (NaiveDate, DayKind)> + '_ {
        first
            .iter_days()
            .take_while(move |date| *date <= last)
            .map(|date| (date, self.day_kind(date)))
            .filter(|(_, kind)| !matches!(kind, DayKind::Regular))
    }
}

/// Forward walker: see [`Calendar::open_spans_from`].
pub(crate) struct Forward<'a> {
    calendar: &'a Calendar,
    from: DateTime<Utc>,
    next_day: Option<NaiveDate>,
    days_walked: u32,
    day: Vec<OpenSpan>,
    position: usize,
}

impl Forward<'_> {
    /// The next open interval, or an error past the horizon.
    pub(crate) fn next_span(&mut self) -> Result<OpenSpan, CalendarError> {
        loop {
            while let Some(span) = self.day.get(self.position).copied() {
                self.position += 1;
                if span.end > self.from {
                    return Ok(OpenSpan {
                        start: span.start.max(self.from),
                        ..span
                    });
                }
            }
            let date = self.next_day.ok_or_else(|| self.calendar.out_of_range())?;
            // The first day is the day before `from`, and the horizon counts
            // from the day of `from`.
            if self.days_walked > self.calendar.horizon_days {
                let first = self.calendar.local_date(self.from);
                return Err(self.calendar.beyond_horizon(first));
            }
            self.days_walked += 1;
            self.calendar.fill_day(date, &mut self.day)?;
            self.position = 0;
            self.next_day = date.succ_opt();
        }
    }
}

/// Backward walker: see [`Calendar::open_spans_before`].
pub(crate) struct Backward<'a> {
    calendar: &'a Calendar,
    until: DateTime<Utc>,
    next_day: Option<NaiveDate>,
    days_walked: u32,
    day: Vec<OpenSpan>,
    remaining: usize,
}

impl Backward<'_> {
    /// The previous open interval, or an error past the horizon.
    pub(crate) fn next_span(&mut self) -> Result<OpenSpan, CalendarError> {
        loop {
            while self.remaining > 0 {
                self.remaining -= 1;
                let span = self.day[self.remaining];
                if span.start < self.until {
                    return Ok(OpenSpan {
                        end: span.end.min(self.until),
                        ..span
                    });
                }
            }
            let date = self.next_day.ok_or_else(|| self.calendar.out_of_range())?;
            if self.days_walked > self.calendar.horizon_days {
                let first = self.calendar.local_date(self.until);
                return Err(self.calendar.beyond_horizon(first));
            }
            self.days_walked += 1;
            self.calendar.fill_day(date, &mut self.day)?;
            self.remaining = self.day.len();
            self.next_day = date.pred_opt();
        }
    }
}

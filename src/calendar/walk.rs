//! Walking a calendar day by day: each day's open intervals as instants.
//!
//! All business-time arithmetic is built on these walkers. They visit whole
//! days and their few intervals, never individual minutes, and give up with
//! [`CalendarError::BeyondHorizon`] after the calendar's search horizon.
//!
//! Instants are nanoseconds since the Unix epoch ([`Nanos`]) here: chrono's
//! date types are exact but slow to add and subtract, and these loops run for
//! every deadline of every case. That covers the years 1677 to 2262; instants
//! outside are [`CalendarError::OutOfRange`].

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Offset, TimeDelta, TimeZone, Utc};

use super::{zone, Calendar, CalendarError, DayKind};

/// An instant as nanoseconds since 1970-01-01T00:00:00Z.
pub(crate) type Nanos = i64;

pub(crate) const NANOS_PER_SECOND: i64 = 1_000_000_000;

/// An open interval `[start, end)` of one day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpenSpan {
    pub start: Nanos,
    pub end: Nanos,
    /// The local date whose hours this interval belongs to.
    pub date: NaiveDate,
}

/// One day's open intervals, with the UTC offsets of the last midnights
/// looked up: walking day by day, each midnight is looked up once.
#[derive(Debug, Default)]
pub(crate) struct DayBuffer {
    pub spans: Vec<OpenSpan>,
    /// `(local midnight, its offset in seconds if it exists exactly once)`.
    midnights: [Option<(NaiveDate, Option<i32>)>; 2],
}

impl DayBuffer {
    fn midnight_offset(&mut self, zone: chrono_tz::Tz, date: NaiveDate) -> Option<i32> {
        if let Some((_, offset)) = self.midnights.iter().flatten().find(|(d, _)| *d == date) {
            return *offset;
        }
        let offset = zone
            .offset_from_local_datetime(&date.and_time(NaiveTime::MIN))
            .single()
            .map(|offset| offset.fix().local_minus_utc());
        self.midnights = [self.midnights[1], Some((date, offset))];
        offset
    }
}

/// Seconds from 1970-01-01T00:00 to `date`'s midnight, both read as UTC.
fn midnight_timestamp(date: NaiveDate) -> i64 {
    const DAYS_FROM_CE_TO_UNIX_EPOCH: i64 = 719_163;
    (i64::from(date.num_days_from_ce()) - DAYS_FROM_CE_TO_UNIX_EPOCH) * 86_400
}

/// The instant `at` as [`Nanos`], if within range.
pub(crate) fn to_nanos(calendar: &Calendar, at: DateTime<Utc>) -> Result<Nanos, CalendarError> {
    at.timestamp_nanos_opt()
        .ok_or_else(|| calendar.out_of_range())
}

/// The instant of [`Nanos`].
pub(crate) fn from_nanos(nanos: Nanos) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(nanos)
}

impl Calendar {
    /// The open intervals of `date`, in order, empty ones dropped (an
    /// interval can vanish in a DST gap). Replaces `day.spans`.
    pub(crate) fn fill_day(
        &self,
        date: NaiveDate,
        day: &mut DayBuffer,
    ) -> Result<(), CalendarError> {
        day.spans.clear();
        let hours = self.hours_on(date);
        if hours.is_empty() {
            return Ok(());
        }
        let next_date = date.succ_opt().ok_or_else(|| self.out_of_range())?;
        // Fast path: when both midnights have the same single offset, the day
        // has no transition and every local time maps with that offset.
        let same_offset = match (
            day.midnight_offset(self.zone, date),
            day.midnight_offset(self.zone, next_date),
        ) {
            (Some(a), Some(b)) if a == b => Some(a),
            _ => None,
        };
        for hours in hours {
            let start_minute = i64::from(hours.start_minute);
            let end_minute = i64::from(hours.end_minute);
            let (start, end) = match same_offset {
                Some(offset) => {
                    let base = midnight_timestamp(date) - i64::from(offset);
                    let at = |minute: i64| {
                        (base + minute * 60)
                            .checked_mul(NANOS_PER_SECOND)
                            .ok_or_else(|| self.out_of_range())
                    };
                    (at(start_minute)?, at(end_minute)?)
                }
                None => {
                    let at = |minute: i64| {
                        let local = date.and_time(NaiveTime::MIN) + TimeDelta::minutes(minute);
                        zone::resolve(self.zone, local)
                            .ok_or_else(|| self.out_of_range())
                            .and_then(|at| to_nanos(self, at))
                    };
                    (at(start_minute)?, at(end_minute)?)
                }
            };
            if end > start {
                day.spans.push(OpenSpan { start, end, date });
            }
        }
        Ok(())
    }

    /// Whether `date` has any open time.
    pub(crate) fn is_working_day(
        &self,
        date: NaiveDate,
        scratch: &mut DayBuffer,
    ) -> Result<bool, CalendarError> {
        if self.hours_on(date).is_empty() {
            return Ok(false);
        }
        self.fill_day(date, scratch)?;
        Ok(!scratch.spans.is_empty())
    }

    /// The local date of an instant.
    pub(crate) fn local_date(&self, at: DateTime<Utc>) -> NaiveDate {
        zone::wall(self.zone, at).date()
    }

    /// Open time from `from` on, in order, each interval cut to start no
    /// earlier than `from`.
    pub(crate) fn open_spans_from(
        &self,
        from: DateTime<Utc>,
    ) -> Result<Forward<'_>, CalendarError> {
        // An interval of the previous local day could reach past midnight
        // only through a clock change that jumps back over midnight; starting
        // a day early covers it at the cost of one more day looked at.
        let from_date = self.local_date(from);
        Ok(Forward {
            calendar: self,
            from: to_nanos(self, from)?,
            from_date,
            next_day: from_date.pred_opt(),
            days_walked: 0,
            day: DayBuffer::default(),
            position: 0,
        })
    }

    /// Open time before `until`, latest first, each interval cut to end no
    /// later than `until`.
    pub(crate) fn open_spans_before(
        &self,
        until: DateTime<Utc>,
    ) -> Result<Backward<'_>, CalendarError> {
        let until_date = self.local_date(until);
        Ok(Backward {
            calendar: self,
            until: to_nanos(self, until)?,
            until_date,
            next_day: until_date.succ_opt(),
            days_walked: 0,
            day: DayBuffer::default(),
            remaining: 0,
        })
    }

    /// The `n`-th working day after `date` (`n = 0` is `date` itself).
    pub(crate) fn working_day_after(
        &self,
        date: NaiveDate,
        n: u32,
        scratch: &mut DayBuffer,
    ) -> Result<NaiveDate, CalendarError> {
        self.step_working_days(date, n, scratch, NaiveDate::succ_opt)
    }

    /// The `n`-th working day before `date` (`n = 0` is `date` itself).
    pub(crate) fn working_day_before(
        &self,
        date: NaiveDate,
        n: u32,
        scratch: &mut DayBuffer,
    ) -> Result<NaiveDate, CalendarError> {
        self.step_working_days(date, n, scratch, NaiveDate::pred_opt)
    }

    fn step_working_days(
        &self,
        date: NaiveDate,
        n: u32,
        scratch: &mut DayBuffer,
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
    from: Nanos,
    from_date: NaiveDate,
    next_day: Option<NaiveDate>,
    days_walked: u32,
    day: DayBuffer,
    position: usize,
}

impl Forward<'_> {
    /// The next open interval, or an error past the horizon.
    pub(crate) fn next_span(&mut self) -> Result<OpenSpan, CalendarError> {
        loop {
            if let Some(span) = self.next_span_through(None)? {
                return Ok(span);
            }
        }
    }

    /// The next open interval of a day up to `last_day`, `None` when there
    /// is none, or an error past the horizon.
    pub(crate) fn next_span_through(
        &mut self,
        last_day: Option<NaiveDate>,
    ) -> Result<Option<OpenSpan>, CalendarError> {
        loop {
            while let Some(span) = self.day.spans.get(self.position).copied() {
                self.position += 1;
                if span.end > self.from {
                    return Ok(Some(OpenSpan {
                        start: span.start.max(self.from),
                        ..span
                    }));
                }
            }
            let date = self.next_day.ok_or_else(|| self.calendar.out_of_range())?;
            if last_day.is_some_and(|last| date > last) {
                return Ok(None);
            }
            // The walk starts the day before `from`; the horizon counts from
            // the day of `from`.
            if self.days_walked > self.calendar.horizon_days {
                return Err(self.calendar.beyond_horizon(self.from_date));
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
    until: Nanos,
    until_date: NaiveDate,
    next_day: Option<NaiveDate>,
    days_walked: u32,
    day: DayBuffer,
    remaining: usize,
}

impl Backward<'_> {
    /// The previous open interval, or an error past the horizon.
    pub(crate) fn next_span(&mut self) -> Result<OpenSpan, CalendarError> {
        loop {
            while self.remaining > 0 {
                self.remaining -= 1;
                let span = self.day.spans[self.remaining];
                if span.start < self.until {
                    return Ok(OpenSpan {
                        end: span.end.min(self.until),
                        ..span
                    });
                }
            }
            let date = self.next_day.ok_or_else(|| self.calendar.out_of_range())?;
            if self.days_walked > self.calendar.horizon_days {
                return Err(self.calendar.beyond_horizon(self.until_date));
            }
            self.days_walked += 1;
            self.calendar.fill_day(date, &mut self.day)?;
            self.remaining = self.day.spans.len();
            self.next_day = date.pred_opt();
        }
    }
}

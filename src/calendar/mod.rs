//! Business calendars: working hours, holidays, make-up days and business-time arithmetic.
//!
//! A [`Calendar`] knows, in one IANA time zone, the weekly opening hours
//! (several intervals a day, so lunch breaks are closed time), holidays that
//! close a day, and make-up working days that open a day which is normally
//! closed. On it, durations are added in three measures:
//!
//! - elapsed time (`minutes`, `hours`): plain clock time;
//! - natural days (`days`, `weeks`): the same local wall-clock time N days
//!   later, whatever the day is;
//! - business time (`working minutes`, `working hours`, `working days`): only
//!   open time counts.
//!
//! The exact rules, with worked examples, are in `docs/calendar.md`. All
//! instants are `DateTime<Utc>`; the zone is used inside. Nothing here reads
//! the wall clock: every function takes the instants it works on.

mod build;
mod explain;
mod walk;
mod working_days;
mod zone;

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Days, NaiveDate, TimeDelta, Utc, Weekday};
use chrono_tz::Tz;

use crate::rules::ast::{Duration, DurationUnit, TimeRange};

pub use build::{CalendarBuildError, CalendarBuilder, CalendarOptions};

/// Days searched before a computation gives up: twenty years.
pub const DEFAULT_HORIZON_DAYS: u32 = 20 * 366;

/// A business calendar. Built by [`Calendar::from_decl`] or [`CalendarBuilder`].
#[derive(Debug, Clone, PartialEq)]
pub struct Calendar {
    name: String,
    zone: Tz,
    /// Opening hours per weekday, Monday first; sorted and disjoint.
    weekly: [Vec<TimeRange>; 7],
    /// Whose hours a make-up working day uses.
    makeup_weekday: Weekday,
    holidays: Vec<LabelledDates>,
    holiday_index: DateIndex,
    makeup_days: Vec<LabelledDates>,
    makeup_index: DateIndex,
    horizon_days: u32,
}

/// Holidays or make-up days as declared: an inclusive date range and its label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledDates {
    pub first: NaiveDate,
    pub last: NaiveDate,
    pub label: Option<String>,
}

/// What kind of day a date is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DayKind {
    /// An ordinary day with its weekday's hours (possibly none).
    Regular,
    /// A holiday: closed. The index is into [`Calendar::holidays`].
    Holiday(usize),
    /// A make-up working day: open with the make-up hours. The index is into
    /// [`Calendar::makeup_days`].
    MakeupDay(usize),
}

/// Disjoint date ranges keyed by their first date, each naming the declared
/// entry it came from, so a date is looked up in O(log n).
#[derive(Debug, Clone, PartialEq, Default)]
struct DateIndex(BTreeMap<NaiveDate, (NaiveDate, usize)>);

impl DateIndex {
    /// Indexes `entries`; where ranges overlap, the earlier-starting entry wins.
    fn new(entries: &[LabelledDates]) -> Self {
        let mut order: Vec<usize> = (0..entries.len()).collect();
        order.sort_by_key(|&i| (entries[i].first, i));
        let mut index = BTreeMap::new();
        let mut covered_until: Option<NaiveDate> = None;
        for i in order {
            let entry = &entries[i];
            let first = match covered_until {
                Some(until) if until >= entry.first => match until.succ_opt() {
                    Some(next) => next,
                    None => continue,
                },
                _ => entry.first,
            };
            if first <= entry.last {
                index.insert(first, (entry.last, i));
            }
            covered_until = Some(covered_until.map_or(entry.last, |u| u.max(entry.last)));
        }
        DateIndex(index)
    }

    fn get(&self, date: NaiveDate) -> Option<usize> {
        self.0
            .range(..=date)
            .next_back()
            .filter(|(_, (last, _))| *last >= date)
            .map(|(_, (_, i))| *i)
    }
}

/// Why a calendar computation has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    /// The answer lies further away than the calendar's search horizon,
    /// e.g. holidays cover every working day for twenty years.
    #[error("calendar `{calendar}` finds no answer within {horizon_days} days of {from}")]
    BeyondHorizon {
        calendar: String,
        from: NaiveDate,
        horizon_days: u32,
    },
    /// The answer lies outside the dates that can be represented.
    #[error("calendar `{calendar}`: the result lies outside the representable dates")]
    OutOfRange { calendar: String },
}

impl Calendar {
    /// The calendar's name as declared.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The calendar's time zone.
    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The opening hours of an ordinary `weekday`, sorted; empty when closed.
    pub fn weekly_hours(&self, weekday: Weekday) -> &[TimeRange] {
        &self.weekly[weekday.num_days_from_monday() as usize]
    }

    /// The weekday whose hours make-up working days use.
    pub fn makeup_weekday(&self) -> Weekday {
        self.makeup_weekday
    }

    /// Holidays as declared.
    pub fn holidays(&self) -> &[LabelledDates] {
        &self.holidays
    }

    /// Make-up working days as declared.
    pub fn makeup_days(&self) -> &[LabelledDates] {
        &self.makeup_days
    }

    /// How many days a computation searches before giving up.
    pub fn horizon_days(&self) -> u32 {
        self.horizon_days
    }

    /// What kind of day `date` is.
    pub fn day_kind(&self, date: NaiveDate) -> DayKind {
        if let Some(i) = self.holiday_index.get(date) {
            DayKind::Holiday(i)
        } else if let Some(i) = self.makeup_index.get(date) {
            DayKind::MakeupDay(i)
        } else {
            DayKind::Regular
        }
    }

    /// The opening hours that apply on `date` (local), holidays and make-up
    /// days taken into account; empty when the day is closed.
    pub fn hours_on(&self, date: NaiveDate) -> &[TimeRange] {
        match self.day_kind(date) {
            DayKind::Regular => self.weekly_hours(date.weekday()),
            DayKind::Holiday(_) => &[],
            DayKind::MakeupDay(_) => self.weekly_hours(self.makeup_weekday),
        }
    }

    /// Whether the calendar is open at `at` (intervals include their start
    /// and exclude their end: at 17:30 an office open until 17:30 is closed).
    pub fn is_open(&self, at: DateTime<Utc>) -> bool {
        let date = self.local_date(at);
        let mut spans = Vec::new();
        [date.pred_opt(), Some(date)]
            .into_iter()
            .flatten()
            .any(|day| {
                self.fill_day(day, &mut spans).is_ok()
                    && spans.iter().any(|span| span.start <= at && at < span.end)
            })
    }

    /// The first open instant at or after `at`: `at` itself when open.
    pub fn next_open(&self, at: DateTime<Utc>) -> Result<DateTime<Utc>, CalendarError> {
        Ok(self.open_spans_from(at).next_span()?.start)
    }

    /// When the open period containing `at` ends, or, when closed at `at`,
    /// when the next open period ends. Intervals that touch (one ends when
    /// the next begins, e.g. across midnight) are one open period.
    pub fn next_close(&self, at: DateTime<Utc>) -> Result<DateTime<Utc>, CalendarError> {
        let mut spans = self.open_spans_from(at);
        let mut close = spans.next_span()?.end;
        loop {
            let next = spans.next_span()?;
            if next.start > close {
                return Ok(close);
            }
            close = close.max(next.end);
        }
    }

    /// Open time between `from` and `until`, in whole seconds; 0 when
    /// `until <= from`.
    pub fn business_seconds_between(
        &self,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<i64, CalendarError> {
        Ok(self.business_time_between(from, until)?.num_seconds())
    }

    pub(crate) fn business_time_between(
        &self,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<TimeDelta, CalendarError> {
        let mut total = TimeDelta::zero();
        if until <= from {
            return Ok(total);
        }
        let mut spans = self.open_spans_from(from);
        loop {
            let span = spans.next_span()?;
            if span.start >= until {
                return Ok(total);
            }
            total += span.end.min(until) - span.start;
        }
    }

    /// The instant `secs` seconds of open time after `start`.
    ///
    /// Counting starts at the next opening when `start` is closed. The result
    /// is the earliest instant with that much open time since `start`, so an
    /// amount that runs out exactly at a closing time is due at that closing
    /// time. A negative `secs` counts backwards: the latest instant with that
    /// much open time before `start` (exactly at an opening time if it runs
    /// out there). `secs = 0` gives `start`.
    pub fn add_business_seconds(
        &self,
        start: DateTime<Utc>,
        secs: i64,
    ) -> Result<DateTime<Utc>, CalendarError> {
        self.add_business_time(start, TimeDelta::seconds(secs))
    }

    pub(crate) fn add_business_time(
        &self,
        start: DateTime<Utc>,
        amount: TimeDelta,
    ) -> Result<DateTime<Utc>, CalendarError> {
        if amount > TimeDelta::zero() {
            let mut remaining = amount;
            let mut spans = self.open_spans_from(start);
            loop {
                let span = spans.next_span()?;
                let length = span.end - span.start;
                if remaining <= length {
                    return Ok(span.start + remaining);
                }
                remaining -= length;
            }
        } else if amount < TimeDelta::zero() {
            let mut remaining = -amount;
            let mut spans = self.open_spans_before(start);
            loop {
                let span = spans.next_span()?;
                let length = span.end - span.start;
                if remaining <= length {
                    return Ok(span.end - remaining);
                }
                remaining -= length;
            }
        } else {
            Ok(start)
        }
    }

    /// `start` plus `duration`, in the duration's own measure:
    ///
    /// - `minutes`, `hours`: elapsed time;
    /// - `days`, `weeks`: the same local time that many days later (a time
    ///   that does not exist that day becomes the first instant after the DST
    ///   gap; a time that occurs twice becomes its earlier occurrence);
    /// - `working minutes`, `working hours`: see [`Self::add_business_seconds`];
    /// - `working days`: see `docs/calendar.md` ("Working days").
    pub fn add(
        &self,
        start: DateTime<Utc>,
        duration: Duration,
    ) -> Result<DateTime<Utc>, CalendarError> {
        let amount = i64::from(duration.amount);
        match duration.unit {
            DurationUnit::Minutes => self.add_elapsed(start, TimeDelta::minutes(amount)),
            DurationUnit::Hours => self.add_elapsed(start, TimeDelta::hours(amount)),
            DurationUnit::Days => self.shift_natural_days(start, amount),
            DurationUnit::Weeks => self.shift_natural_days(start, amount * 7),
            DurationUnit::WorkingMinutes => {
                self.add_business_time(start, TimeDelta::minutes(amount))
            }
            DurationUnit::WorkingHours => self.add_business_time(start, TimeDelta::hours(amount)),
            DurationUnit::WorkingDays => Ok(self.add_working_days(start, duration.amount)?.due),
        }
    }

    /// `end` minus `duration`, for offsets such as "2 working hours before
    /// due". Elapsed and natural units and working minutes and hours mirror
    /// [`Self::add`]; working days land on the same local time of day (from
    /// `end`, or from the last close before `end` when it is closed) on the
    /// N-th earlier working day, with the same adjustment as adding.
    pub fn subtract(
        &self,
        end: DateTime<Utc>,
        duration: Duration,
    ) -> Result<DateTime<Utc>, CalendarError> {
        let amount = i64::from(duration.amount);
        match duration.unit {
            DurationUnit::Minutes => self.add_elapsed(end, -TimeDelta::minutes(amount)),
            DurationUnit::Hours => self.add_elapsed(end, -TimeDelta::hours(amount)),
            DurationUnit::Days => self.shift_natural_days(end, -amount),
            DurationUnit::Weeks => self.shift_natural_days(end, -amount * 7),
            DurationUnit::WorkingMinutes => {
                self.add_business_time(end, -TimeDelta::minutes(amount))
            }
            DurationUnit::WorkingHours => self.add_business_time(end, -TimeDelta::hours(amount)),
            DurationUnit::WorkingDays => self.subtract_working_days(end, duration.amount),
        }
    }

    /// Moves a due time later by a pause from `paused_from` to `resumed_at`.
    ///
    /// For business units (`unit.is_business()`) the pause is measured in
    /// open time and the due time moves by that much open time; for elapsed
    /// and natural units it is measured and moved in elapsed time. Returns
    /// the new due time and the paused amount in seconds; a pause that does
    /// not end after it starts changes nothing.
    pub fn extend_for_pause(
        &self,
        due: DateTime<Utc>,
        unit: DurationUnit,
        paused_from: DateTime<Utc>,
        resumed_at: DateTime<Utc>,
    ) -> Result<(DateTime<Utc>, i64), CalendarError> {
        if resumed_at <= paused_from {
            return Ok((due, 0));
        }
        if unit.is_business() {
            let paused = self.business_seconds_between(paused_from, resumed_at)?;
            Ok((self.add_business_seconds(due, paused)?, paused))
        } else {
            let paused = (resumed_at - paused_from).num_seconds();
            Ok((self.add_elapsed(due, TimeDelta::seconds(paused))?, paused))
        }
    }

    fn add_elapsed(
        &self,
        start: DateTime<Utc>,
        amount: TimeDelta,
    ) -> Result<DateTime<Utc>, CalendarError> {
        start
            .checked_add_signed(amount)
            .ok_or_else(|| self.out_of_range())
    }

    /// The same local wall-clock time `days` days later (earlier if negative).
    pub(crate) fn shift_natural_days(
        &self,
        start: DateTime<Utc>,
        days: i64,
    ) -> Result<DateTime<Utc>, CalendarError> {
        if days == 0 {
            return Ok(start);
        }
        let local = zone::wall(self.zone, start);
        let count = Days::new(days.unsigned_abs());
        let target = if days > 0 {
            local.checked_add_days(count)
        } else {
            local.checked_sub_days(count)
        };
        target
            .and_then(|target| zone::resolve(self.zone, target))
            .ok_or_else(|| self.out_of_range())
    }

    fn out_of_range(&self) -> CalendarError {
        CalendarError::OutOfRange {
            calendar: self.name.clone(),
        }
    }

    fn beyond_horizon(&self, from: NaiveDate) -> CalendarError {
        CalendarError::BeyondHorizon {
            calendar: self.name.clone(),
            from,
            horizon_days: self.horizon_days,
        }
    }
}

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

use chrono::{DateTime, Datelike, Days, NaiveDate, TimeDelta, Utc, Weekday};
use chrono_tz::Tz;

use crate::rules::ast::{Duration, DurationUnit, TimeRange};

pub use build::{CalendarBuildError, CalendarBuilder, CalendarOptions};
use walk::{from_nanos, to_nanos, Nanos, OpenSpan, NANOS_PER_SECOND};

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
    makeup_days: Vec<LabelledDates>,
    special_days: SpecialDays,
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

/// Holidays and make-up days as disjoint date ranges sorted by date, so the
/// kind of a date is found by binary search.
#[derive(Debug, Clone, PartialEq, Default)]
struct SpecialDays(Vec<(NaiveDate, NaiveDate, DayKind)>);

impl SpecialDays {
    /// Indexes holidays and make-up days, which must not share a date.
    /// Where entries of one kind overlap, the earlier-starting one names the
    /// shared dates.
    fn new(holidays: &[LabelledDates], makeup_days: &[LabelledDates]) -> Self {
        let mut ranges = Vec::new();
        for (entries, kind) in [
            (holidays, DayKind::Holiday as fn(usize) -> DayKind),
            (makeup_days, DayKind::MakeupDay),
        ] {
            let mut order: Vec<usize> = (0..entries.len()).collect();
            order.sort_by_key(|&i| (entries[i].first, i));
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
                    ranges.push((first, entry.last, kind(i)));
                }
                covered_until = Some(covered_until.map_or(entry.last, |u| u.max(entry.last)));
            }
        }
        ranges.sort_by_key(|&(first, _, _)| first);
        SpecialDays(ranges)
    }

    fn get(&self, date: NaiveDate) -> DayKind {
        let after = self.0.partition_point(|&(_, last, _)| last < date);
        match self.0.get(after) {
            Some(&(first, _, kind)) if first <= date => kind,
            _ => DayKind::Regular,
        }
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
        self.special_days.get(date)
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
        let Ok(moment) = to_nanos(self, at) else {
            return false;
        };
        let date = self.local_date(at);
        let mut day = walk::DayBuffer::default();
        [date.pred_opt(), Some(date)]
            .into_iter()
            .flatten()
            .any(|date| {
                self.fill_day(date, &mut day).is_ok()
                    && day
                        .spans
                        .iter()
                        .any(|span| span.start <= moment && moment < span.end)
            })
    }

    /// The first open instant at or after `at`: `at` itself when open.
    pub fn next_open(&self, at: DateTime<Utc>) -> Result<DateTime<Utc>, CalendarError> {
        Ok(from_nanos(self.open_spans_from(at)?.next_span()?.start))
    }

    /// When the open period containing `at` ends, or, when closed at `at`,
    /// when the next open period ends. Intervals that touch (one ends when
    /// the next begins, e.g. across midnight) are one open period, so a
    /// calendar open day and night has no close within its horizon.
    pub fn next_close(&self, at: DateTime<Utc>) -> Result<DateTime<Utc>, CalendarError> {
        let mut spans = self.open_spans_from(at)?;
        let mut close = spans.next_span()?;
        loop {
            // Only an interval of the next day can touch one that ends at
            // midnight; looking further would only search in vain.
            let touching_day = close.date.succ_opt();
            match spans.next_span_through(touching_day)? {
                Some(next) if next.start <= close.end => {
                    close = OpenSpan {
                        end: close.end.max(next.end),
                        ..next
                    };
                }
                _ => return Ok(from_nanos(close.end)),
            }
        }
    }

    /// Open time between `from` and `until`, in whole seconds (a fraction
    /// of a second is dropped); 0 when `until <= from`. Instants further
    /// apart than the calendar's horizon are an error.
    pub fn business_seconds_between(
        &self,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<i64, CalendarError> {
        Ok(self.business_nanos_between(from, until)? / NANOS_PER_SECOND)
    }

    pub(crate) fn business_nanos_between(
        &self,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Nanos, CalendarError> {
        let mut total = 0;
        if until <= from {
            return Ok(total);
        }
        let last_day = self.local_date(until).succ_opt();
        let until = to_nanos(self, until)?;
        let mut spans = self.open_spans_from(from)?;
        while let Some(span) = spans.next_span_through(last_day)? {
            if span.start >= until {
                break;
            }
            total += span.end.min(until) - span.start;
        }
        Ok(total)
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
        // More than 292 years of open time is past any horizon.
        let amount = secs
            .checked_mul(NANOS_PER_SECOND)
            .ok_or_else(|| self.beyond_horizon(self.local_date(start)))?;
        if amount > 0 {
            let mut remaining = amount;
            let mut spans = self.open_spans_from(start)?;
            loop {
                let span = spans.next_span()?;
                let length = span.end - span.start;
                if remaining <= length {
                    return Ok(from_nanos(span.start + remaining));
                }
                remaining -= length;
            }
        } else if amount < 0 {
            let mut remaining = -amount;
            let mut spans = self.open_spans_before(start)?;
            loop {
                let span = spans.next_span()?;
                let length = span.end - span.start;
                if remaining <= length {
                    return Ok(from_nanos(span.end - remaining));
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
            DurationUnit::WorkingMinutes => self.add_business_seconds(start, amount * 60),
            DurationUnit::WorkingHours => self.add_business_seconds(start, amount * 3600),
            DurationUnit::WorkingDays => Ok(self.add_working_days(start, duration.amount)?.due),
            DurationUnit::EndOfDay => self.end_of_local_day(start),
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
            DurationUnit::WorkingMinutes => self.add_business_seconds(end, -amount * 60),
            DurationUnit::WorkingHours => self.add_business_seconds(end, -amount * 3600),
            DurationUnit::WorkingDays => self.subtract_working_days(end, duration.amount),
            // Not a length: nothing lies "until end of day" before an instant.
            DurationUnit::EndOfDay => Ok(end),
        }
    }

    /// The midnight that ends the local day of `at`: 00:00 of the next local
    /// date (the first instant after it if a DST gap swallows midnight).
    pub fn end_of_local_day(&self, at: DateTime<Utc>) -> Result<DateTime<Utc>, CalendarError> {
        self.local_date(at)
            .succ_opt()
            .and_then(|next| zone::resolve(self.zone, next.and_time(chrono::NaiveTime::MIN)))
            .ok_or_else(|| self.out_of_range())
    }

    /// Whether the local date of `at` is a working day: it has opening hours
    /// (a holiday or a weekday without hours has none; a make-up day has).
    pub fn is_working_day_at(&self, at: DateTime<Utc>) -> bool {
        !self.hours_on(self.local_date(at)).is_empty()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn date(m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, m, d).expect("valid test date")
    }

    fn dates(first: NaiveDate, last: NaiveDate, label: &str) -> LabelledDates {
        LabelledDates {
            first,
            last,
            label: Some(label.to_owned()),
        }
    }

    #[test]
    fn overlapping_holidays_close_every_date_and_the_earlier_names_the_shared_ones() {
        let holidays = [
            dates(date(10, 3), date(10, 9), "later"),
            dates(date(10, 1), date(10, 5), "earlier"),
        ];
        let makeup = [dates(date(10, 10), date(10, 10), "make-up")];
        let special = SpecialDays::new(&holidays, &makeup);
        assert_eq!(special.get(date(9, 30)), DayKind::Regular);
        assert_eq!(special.get(date(10, 1)), DayKind::Holiday(1));
        assert_eq!(special.get(date(10, 5)), DayKind::Holiday(1));
        assert_eq!(special.get(date(10, 6)), DayKind::Holiday(0));
        assert_eq!(special.get(date(10, 9)), DayKind::Holiday(0));
        assert_eq!(special.get(date(10, 10)), DayKind::MakeupDay(0));
        assert_eq!(special.get(date(10, 11)), DayKind::Regular);
    }

    #[test]
    fn a_holiday_inside_another_adds_no_range() {
        let holidays = [
            dates(date(10, 1), date(10, 7), "outer"),
            dates(date(10, 2), date(10, 3), "inner"),
        ];
        let special = SpecialDays::new(&holidays, &[]);
        assert_eq!(
            special.0,
            vec![(date(10, 1), date(10, 7), DayKind::Holiday(0))]
        );
    }

    #[test]
    fn makeup_days_use_monday_hours_unless_monday_is_closed() {
        let standard = CalendarBuilder::new("standard", "UTC")
            .hours(Weekday::Mon, Weekday::Mon, "09:00-12:00")
            .hours(Weekday::Tue, Weekday::Fri, "09:00-17:00")
            .workday(date(10, 11), "make-up Sunday")
            .build()
            .expect("valid calendar");
        assert_eq!(standard.makeup_weekday(), Weekday::Mon);
        assert_eq!(
            standard.hours_on(date(10, 11)),
            standard.weekly_hours(Weekday::Mon)
        );

        let shop = CalendarBuilder::new("shop", "UTC")
            .hours(Weekday::Tue, Weekday::Sat, "10:00-19:00")
            .workday(date(10, 12), "open on a Monday")
            .build()
            .expect("valid calendar");
        assert_eq!(shop.makeup_weekday(), Weekday::Tue);
        assert_eq!(
            shop.hours_on(date(10, 12)),
            &[TimeRange {
                start_minute: 600,
                end_minute: 1140
            }]
        );
    }

    #[test]
    fn makeup_days_can_take_the_hours_of_another_weekday() {
        let office = CalendarBuilder::new("office", "UTC")
            .hours(Weekday::Mon, Weekday::Thu, "09:00-17:00")
            .hours(Weekday::Fri, Weekday::Fri, "09:00-12:00")
            .workday(date(10, 10), "short make-up Saturday")
            .makeup_hours_like(Weekday::Fri)
            .build()
            .expect("valid calendar");
        assert_eq!(
            office.hours_on(date(10, 10)),
            office.weekly_hours(Weekday::Fri)
        );
        let closed_weekday = CalendarBuilder::new("office", "UTC")
            .hours(Weekday::Mon, Weekday::Fri, "09:00-17:00")
            .workday(date(10, 10), "make-up Saturday")
            .makeup_hours_like(Weekday::Sun)
            .build()
            .expect_err("Sunday has no hours to lend");
        assert_eq!(
            closed_weekday.to_string(),
            "make-up working days use the hours of Sunday, which has none"
        );
    }

    #[test]
    fn a_holiday_on_a_weekday_closes_it_and_hours_on_follows_the_day_kind() {
        let office = CalendarBuilder::new("office", "UTC")
            .hours(Weekday::Mon, Weekday::Fri, "09:00-17:00")
            .holiday(date(10, 1), date(10, 2), "closed")
            .build()
            .expect("valid calendar");
        assert_eq!(office.day_kind(date(10, 1)), DayKind::Holiday(0));
        assert!(office.hours_on(date(10, 1)).is_empty());
        assert_eq!(office.hours_on(date(10, 5)).len(), 1);
        assert!(office.hours_on(date(10, 4)).is_empty());
    }
}

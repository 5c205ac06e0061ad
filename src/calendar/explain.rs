//! Explaining a duration addition in a line of text, for `rules explain` and the case log.

use std::fmt::Write as _;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike, Utc};

use super::walk::from_nanos;
use super::working_days::{CountStart, Landing, WorkingDayCount};
use super::zone::{self, Resolution};
use super::{Calendar, CalendarError, DayKind, LabelledDates};
use crate::rules::ast::{Duration, DurationUnit};

/// Most days listed one by one before the middle of a list is elided.
const MAX_LISTED_DAYS: usize = 5;

impl Calendar {
    /// `start` plus `duration`, as [`Calendar::add`], with a short account of
    /// how it was counted, e.g. `counted 60 working minutes (Asia/Shanghai):
    /// 2026-10-08 08:30–09:30; skipped holiday 2026-10-01..07 国庆节`.
    pub fn explain_add(
        &self,
        start: DateTime<Utc>,
        duration: Duration,
    ) -> Result<(DateTime<Utc>, String), CalendarError> {
        let due = self.add(start, duration)?;
        let amount = duration.amount;
        let mut text = match duration.unit {
            DurationUnit::Minutes | DurationUnit::Hours => format!(
                "added {} elapsed: {} → {} ({})",
                amount_text(amount, duration.unit),
                self.local_text(start),
                self.local_text(due),
                self.zone.name()
            ),
            DurationUnit::Days | DurationUnit::Weeks => self.explain_natural(start, duration, due),
            DurationUnit::WorkingMinutes | DurationUnit::WorkingHours => {
                self.explain_open_time(start, duration, due)?
            }
            DurationUnit::WorkingDays => {
                let count = self.add_working_days(start, amount)?;
                self.explain_working_days(start, amount, &count)?
            }
            DurationUnit::EndOfDay => format!(
                "until end of day: {} → {} ({})",
                self.local_text(start),
                self.local_text(due),
                self.zone.name()
            ),
        };
        if duration.unit.is_business() && due > start {
            self.append_special_days(&mut text, start, due);
        }
        Ok((due, text))
    }

    fn explain_natural(
        &self,
        start: DateTime<Utc>,
        duration: Duration,
        due: DateTime<Utc>,
    ) -> String {
        let mut text = format!(
            "added {}: {} → {} ({}); weekends and holidays count",
            amount_text(duration.amount, duration.unit),
            self.local_text(start),
            self.local_text(due),
            self.zone.name()
        );
        let wanted: Option<NaiveDateTime> = {
            let days = u64::from(duration.amount)
                * if duration.unit == DurationUnit::Weeks {
                    7
                } else {
                    1
                };
            zone::wall(self.zone, start).checked_add_days(chrono::Days::new(days))
        };
        if let Some(wanted) = wanted.filter(|_| duration.amount > 0) {
            match zone::resolve_explained(self.zone, wanted).map(|(_, how)| how) {
                Some(Resolution::AfterGap) => {
                    let _ = write!(
                        text,
                        "; {} does not exist on {} (clocks go forward), so {}",
                        time_text(wanted),
                        wanted.date(),
                        time_text(zone::wall(self.zone, due))
                    );
                }
                Some(Resolution::Earlier) => {
                    let _ = write!(
                        text,
                        "; {} occurs twice on {} (clocks go back), the earlier one counts",
                        time_text(wanted),
                        wanted.date()
                    );
                }
                _ => {}
            }
        }
        text
    }

    fn explain_open_time(
        &self,
        start: DateTime<Utc>,
        duration: Duration,
        due: DateTime<Utc>,
    ) -> Result<String, CalendarError> {
        let mut days: Vec<(NaiveDate, Vec<String>)> = Vec::new();
        if due > start {
            let mut spans = self.open_spans_from(start)?;
            let last_day = self.local_date(due).succ_opt();
            while let Some(span) = spans.next_span_through(last_day)? {
                let (span_start, span_end) = (from_nanos(span.start), from_nanos(span.end));
                if span_start >= due {
                    break;
                }
                let piece = format!(
                    "{}–{}",
                    time_text(zone::wall(self.zone, span_start)),
                    time_text(zone::wall(self.zone, span_end.min(due)))
                );
                match days.last_mut() {
                    Some((date, pieces)) if *date == span.date => pieces.push(piece),
                    _ => days.push((span.date, vec![piece])),
                }
            }
        }
        let listed: Vec<String> = days
            .into_iter()
            .map(|(date, pieces)| format!("{date} {}", pieces.join(" ")))
            .collect();
        Ok(format!(
            "counted {} ({}): {}",
            amount_text(duration.amount, duration.unit),
            self.zone.name(),
            elide(&listed, "nothing")
        ))
    }

    fn explain_working_days(
        &self,
        start: DateTime<Utc>,
        amount: u32,
        count: &WorkingDayCount,
    ) -> Result<String, CalendarError> {
        let mut text = format!(
            "counted {} ({})",
            amount_text(amount, DurationUnit::WorkingDays),
            self.zone.name()
        );
        if amount == 0 {
            return Ok(text + ": nothing");
        }
        let first_counted = match count.start {
            CountStart::Open => {
                let _ = write!(text, " from {}", self.local_text(start));
                self.local_date(start).succ_opt()
            }
            CountStart::AfterBreak(opening) => {
                let _ = write!(
                    text,
                    " from {} (started at {}, during a break)",
                    self.local_text(opening),
                    time_text(zone::wall(self.zone, start))
                );
                self.local_date(opening).succ_opt()
            }
            CountStart::Closed(opening) => {
                let _ = write!(
                    text,
                    "; {} is outside opening hours, so the day of the next opening ({}) is the first",
                    self.local_text(start),
                    self.local_text(opening)
                );
                Some(self.local_date(opening))
            }
        };
        let mut listed = Vec::new();
        let mut scratch = super::walk::DayBuffer::default();
        if let Some(first) = first_counted {
            for date in first.iter_days().take_while(|date| *date <= count.due_day) {
                if self.is_working_day(date, &mut scratch)? {
                    listed.push(date.to_string());
                }
            }
        }
        let _ = write!(text, ": {}", elide(&listed, "none"));
        let due = self.local_text(count.due);
        let time_of_day = count.time_of_day.map(time_text_of);
        let _ = match (count.landing, time_of_day) {
            (Landing::SameTime, _) => write!(text, "; due at the same time of day, {due}"),
            (Landing::NextOpening, Some(t)) => {
                write!(
                    text,
                    "; closed at {t} that day, so due at its next opening, {due}"
                )
            }
            (Landing::CloseOfBusiness, Some(t)) => {
                write!(
                    text,
                    "; closed by {t} that day, so due at its close of business, {due}"
                )
            }
            (_, None) => write!(text, "; due at close of business, {due}"),
        };
        Ok(text)
    }

    /// Appends the holidays skipped and make-up days worked between the two instants.
    fn append_special_days(&self, text: &mut String, start: DateTime<Utc>, due: DateTime<Utc>) {
        let mut holidays: Vec<usize> = Vec::new();
        let mut makeup: Vec<NaiveDate> = Vec::new();
        for (date, kind) in self.special_days(self.local_date(start), self.local_date(due)) {
            match kind {
                DayKind::Holiday(i) if !holidays.contains(&i) => holidays.push(i),
                DayKind::MakeupDay(_) => makeup.push(date),
                _ => {}
            }
        }
        if !holidays.is_empty() {
            let names: Vec<String> = holidays
                .iter()
                .map(|&i| labelled_text(&self.holidays[i]))
                .collect();
            let noun = if names.len() == 1 {
                "holiday"
            } else {
                "holidays"
            };
            let _ = write!(text, "; skipped {noun} {}", names.join(", "));
        }
        if !makeup.is_empty() {
            let days: Vec<String> = makeup.iter().map(NaiveDate::to_string).collect();
            let noun = if days.len() == 1 { "day" } else { "days" };
            let _ = write!(text, "; worked make-up {noun} {}", days.join(", "));
        }
    }

    /// `2026-10-08 09:30` in the calendar's zone.
    fn local_text(&self, at: DateTime<Utc>) -> String {
        let local = zone::wall(self.zone, at);
        format!("{} {}", local.date(), time_text(local))
    }
}

fn amount_text(amount: u32, unit: DurationUnit) -> String {
    let (one, many) = match unit {
        DurationUnit::Minutes => ("minute", "minutes"),
        DurationUnit::Hours => ("hour", "hours"),
        DurationUnit::Days => ("natural day", "natural days"),
        DurationUnit::Weeks => ("natural week", "natural weeks"),
        DurationUnit::WorkingMinutes => ("working minute", "working minutes"),
        DurationUnit::WorkingHours => ("working hour", "working hours"),
        DurationUnit::WorkingDays => ("working day", "working days"),
        DurationUnit::EndOfDay => return "until end of day".to_owned(),
    };
    format!("{amount} {}", if amount == 1 { one } else { many })
}

/// `09:30`, or `09:30:15` when the seconds are not zero.
fn time_text(local: NaiveDateTime) -> String {
    time_text_of(local.time())
}

fn time_text_of(time: NaiveTime) -> String {
    if time.second() == 0 {
        time.format("%H:%M").to_string()
    } else {
        time.format("%H:%M:%S").to_string()
    }
}

/// `2026-10-01..07 国庆节`: a declared range, shortened where it repeats itself.
fn labelled_text(dates: &LabelledDates) -> String {
    let range = if dates.first == dates.last {
        dates.first.to_string()
    } else {
        let (first, last) = (dates.first, dates.last);
        let last_text = if (first.year(), first.month()) == (last.year(), last.month()) {
            last.format("%d").to_string()
        } else if first.year() == last.year() {
            last.format("%m-%d").to_string()
        } else {
            last.to_string()
        };
        format!("{first}..{last_text}")
    };
    match &dates.label {
        Some(label) => format!("{range} {label}"),
        None => range,
    }
}

/// The items joined by `, `, the middle elided when there are many.
fn elide(items: &[String], empty: &str) -> String {
    match items.len() {
        0 => empty.to_owned(),
        n if n <= MAX_LISTED_DAYS => items.join(", "),
        n => format!("{}, {}, … {} ({n} days)", items[0], items[1], items[n - 1]),
    }
}

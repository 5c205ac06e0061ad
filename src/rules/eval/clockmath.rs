//! Deadline arithmetic for the evaluator: due times, step times, pauses and
//! aggregate windows, on a business calendar when the duration counts business time.

use chrono::{DateTime, Utc};

use super::super::ast::{Duration, DurationUnit, StepOffset};
use crate::calendar::Calendar;
use crate::case::ClockState;

/// A duration as the policy writes it: `30 minutes`, `1 working hour`, `3 days`.
pub fn duration_text(duration: Duration) -> String {
    let (singular, plural) = match duration.unit {
        DurationUnit::Minutes => ("minute", "minutes"),
        DurationUnit::Hours => ("hour", "hours"),
        DurationUnit::Days => ("day", "days"),
        DurationUnit::Weeks => ("week", "weeks"),
        DurationUnit::WorkingMinutes => ("working minute", "working minutes"),
        DurationUnit::WorkingHours => ("working hour", "working hours"),
        DurationUnit::WorkingDays => ("working day", "working days"),
        DurationUnit::EndOfDay => return "until end of day".to_owned(),
    };
    format!(
        "{} {}",
        duration.amount,
        if duration.amount == 1 {
            singular
        } else {
            plural
        }
    )
}

/// Elapsed length of a natural duration; business durations count as their
/// elapsed equivalent here (only aggregate windows use this).
fn elapsed(duration: Duration) -> chrono::Duration {
    let amount = i64::from(duration.amount);
    match duration.unit {
        DurationUnit::Minutes | DurationUnit::WorkingMinutes => chrono::Duration::minutes(amount),
        DurationUnit::Hours | DurationUnit::WorkingHours => chrono::Duration::hours(amount),
        DurationUnit::Days | DurationUnit::WorkingDays => chrono::Duration::days(amount),
        DurationUnit::Weeks => chrono::Duration::weeks(amount),
        // Only deadlines end at the end of a day, and they have a calendar.
        DurationUnit::EndOfDay => chrono::Duration::zero(),
    }
}

/// Start of an aggregate window of `duration` ending at `until`.
pub fn window_start(until: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    until - elapsed(duration)
}

fn no_calendar(duration: Duration) -> String {
    format!(
        "`{}` counts business time, but no calendar applies",
        duration_text(duration)
    )
}

/// The due time of `duration` counted from `start`, with how it was counted.
pub fn due_after(
    calendar: Option<&Calendar>,
    start: DateTime<Utc>,
    duration: Duration,
) -> Result<(DateTime<Utc>, String), String> {
    match calendar {
        Some(calendar) => calendar_add(calendar, start, duration),
        None if duration.unit.is_business() => Err(no_calendar(duration)),
        None if duration.unit == DurationUnit::EndOfDay => Err(
            "`until end of day` needs a calendar for its time zone, but no calendar applies"
                .to_owned(),
        ),
        None => {
            let due = start + elapsed(duration);
            Ok((
                due,
                format!(
                    "{} elapsed from {} to {}",
                    duration_text(duration),
                    start.to_rfc3339(),
                    due.to_rfc3339()
                ),
            ))
        }
    }
}

/// The due time of [`due_after`] without its account, which costs more
/// than the arithmetic. Counting working minutes or hours, the account walks
/// the calendar to the day after the due time and so may run past the
/// calendar's horizon where the sum did not: those keep the full count, so
/// that the answer, an error included, is always that of [`due_after`].
fn due_at(
    calendar: Option<&Calendar>,
    start: DateTime<Utc>,
    duration: Duration,
) -> Result<DateTime<Utc>, String> {
    match (calendar, duration.unit) {
        (_, DurationUnit::WorkingMinutes | DurationUnit::WorkingHours) | (None, _) => {
            due_after(calendar, start, duration).map(|(due, _)| due)
        }
        (Some(calendar), _) => calendar.add(start, duration).map_err(|e| e.to_string()),
    }
}

/// Seconds between two instants in a clock's own measure.
fn measure(
    calendar: Option<&Calendar>,
    business: bool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<i64, String> {
    if !business {
        return Ok((to - from).num_seconds());
    }
    let calendar = calendar.ok_or("the clock counts business time, but its calendar is gone")?;
    calendar_business_seconds(calendar, from, to)
}

/// `from` advanced by `seconds` of a clock's own measure.
fn advance(
    calendar: Option<&Calendar>,
    business: bool,
    from: DateTime<Utc>,
    seconds: i64,
) -> Result<DateTime<Utc>, String> {
    if !business {
        return Ok(from + chrono::Duration::seconds(seconds));
    }
    let calendar = calendar.ok_or("the clock counts business time, but its calendar is gone")?;
    calendar_add_business_seconds(calendar, from, seconds)
}

/// When an escalation step of `clock` falls due. Time the clock spent paused
/// shifts every step that had not yet come when it paused.
pub fn step_time(
    calendar: Option<&Calendar>,
    clock: &ClockState,
    offset: StepOffset,
) -> Result<DateTime<Utc>, String> {
    let business = clock.business;
    match offset {
        StepOffset::Percent(100) => Ok(clock.due),
        StepOffset::Percent(percent) => {
            let total = measure(calendar, business, clock.started_at, clock.due)?;
            let length = total - clock.paused_seconds;
            let share = length * i64::from(percent) / 100;
            advance(
                calendar,
                business,
                clock.started_at,
                share + clock.paused_seconds,
            )
        }
        StepOffset::AfterStart(duration) => {
            let at = due_at(calendar, clock.started_at, duration)?;
            advance(calendar, business, at, clock.paused_seconds)
        }
        StepOffset::AfterDue(duration) => due_at(calendar, clock.due, duration),
        StepOffset::BeforeDue(duration) => before(calendar, clock.due, duration),
    }
}

/// The instant `duration` before `due`.
fn before(
    calendar: Option<&Calendar>,
    due: DateTime<Utc>,
    duration: Duration,
) -> Result<DateTime<Utc>, String> {
    match calendar {
        Some(calendar) => calendar_sub(calendar, due, duration),
        None if duration.unit.is_business() => Err(no_calendar(duration)),
        None => Ok(due - elapsed(duration)),
    }
}

/// A paused clock resuming at `now`: its new due time, its total paused
/// time and how the extension was counted.
pub fn resume(
    calendar: Option<&Calendar>,
    clock: &ClockState,
    paused_since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, i64, String), String> {
    let paused = measure(calendar, clock.business, paused_since, now)?.max(0);
    let due = advance(calendar, clock.business, clock.due, paused)?;
    let measure_name = if clock.business {
        "business time"
    } else {
        "elapsed time"
    };
    Ok((
        due,
        clock.paused_seconds + paused,
        format!(
            "paused {} of {measure_name} from {} to {}; due moved from {} to {}",
            seconds_text(paused),
            paused_since.to_rfc3339(),
            now.to_rfc3339(),
            clock.due.to_rfc3339(),
            due.to_rfc3339()
        ),
    ))
}

/// `2 h 30 min`, `45 s`.
pub fn seconds_text(seconds: i64) -> String {
    let (hours, rest) = (seconds / 3600, seconds % 3600);
    let (minutes, seconds) = (rest / 60, rest % 60);
    let mut parts = Vec::new();
    if hours > 0 {
        parts.push(format!("{hours} h"));
    }
    if minutes > 0 {
        parts.push(format!("{minutes} min"));
    }
    if seconds > 0 || parts.is_empty() {
        parts.push(format!("{seconds} s"));
    }
    parts.join(" ")
}

fn calendar_add(
    calendar: &Calendar,
    start: DateTime<Utc>,
    duration: Duration,
) -> Result<(DateTime<Utc>, String), String> {
    calendar
        .explain_add(start, duration)
        .map_err(|e| e.to_string())
}

fn calendar_business_seconds(
    calendar: &Calendar,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<i64, String> {
    calendar
        .business_seconds_between(from, to)
        .map_err(|e| e.to_string())
}

fn calendar_add_business_seconds(
    calendar: &Calendar,
    from: DateTime<Utc>,
    seconds: i64,
) -> Result<DateTime<Utc>, String> {
    calendar
        .add_business_seconds(from, seconds)
        .map_err(|e| e.to_string())
}

fn calendar_sub(
    calendar: &Calendar,
    due: DateTime<Utc>,
    duration: Duration,
) -> Result<DateTime<Utc>, String> {
    calendar.subtract(due, duration).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, Weekday};

    use super::*;
    use crate::calendar::CalendarBuilder;

    fn office(horizon_days: u32) -> Calendar {
        let holiday = |d| NaiveDate::from_ymd_opt(2026, 10, d).expect("a date");
        CalendarBuilder::new("office", "Asia/Shanghai")
            .hours(Weekday::Mon, Weekday::Fri, "08:30-12:00 14:00-17:30")
            .holiday(holiday(1), holiday(7), "国庆节")
            .horizon_days(horizon_days)
            .build()
            .expect("a calendar")
    }

    const UNITS: [DurationUnit; 8] = [
        DurationUnit::Minutes,
        DurationUnit::Hours,
        DurationUnit::Days,
        DurationUnit::Weeks,
        DurationUnit::WorkingMinutes,
        DurationUnit::WorkingHours,
        DurationUnit::WorkingDays,
        DurationUnit::EndOfDay,
    ];

    /// `due_at` is `due_after` without the account: the same instant, or
    /// the same error, with a calendar or without, near the calendar's
    /// horizon too.
    #[test]
    fn a_due_time_without_its_account_is_the_one_with_it() {
        let (roomy, tight) = (office(366), office(3));
        let starts = [
            "2026-09-30T09:00:00+08:00",
            "2026-10-09T17:29:00+08:00",
            "2026-10-10T20:00:00+08:00",
            "2026-11-24T12:30:00+08:00",
            // 20 or 21 working hours from here end on the third day, the
            // last a horizon of three days reaches: the account then runs
            // past the horizon where the sum did not.
            "2026-11-23T08:30:00+08:00",
        ];
        let mut compared = 0;
        for calendar in [Some(&roomy), Some(&tight), None] {
            for start in starts {
                let start = DateTime::parse_from_rfc3339(start)
                    .expect("a time")
                    .with_timezone(&Utc);
                for unit in UNITS {
                    for amount in [0, 1, 3, 20, 21] {
                        let duration = Duration { amount, unit };
                        let with_account = due_after(calendar, start, duration).map(|(due, _)| due);
                        assert_eq!(
                            due_at(calendar, start, duration),
                            with_account,
                            "{amount} {unit:?} from {start}"
                        );
                        compared += usize::from(with_account.is_err());
                    }
                }
            }
        }
        // Some of the answers compared are errors (no calendar, past the horizon).
        assert!(compared > 0);
    }
}

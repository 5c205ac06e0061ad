//! Business calendars: China 2026 office hours, DST in Berlin, properties, declaration diagnostics.

use chrono::{DateTime, NaiveDate, TimeDelta, Utc, Weekday};
use complaintd::calendar::{Calendar, CalendarBuilder, CalendarError};
use complaintd::rules::ast::{
    CalendarDecl, CalendarEntry, DateRange, Duration, DurationUnit, Span, Spanned, TimeRange,
    WeekdaySet,
};
use complaintd::rules::source::span_at;
use complaintd::rules::SourceMap;

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).expect("valid test date")
}

/// An instant written with its offset, e.g. `2026-09-30T17:50:00+08:00`.
fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("valid test instant")
        .with_timezone(&Utc)
}

fn duration(amount: u32, unit: DurationUnit) -> Duration {
    Duration { amount, unit }
}

/// The service office of the default policy: China 2026 holidays and make-up days.
fn shanghai_office() -> Calendar {
    CalendarBuilder::new("office", "Asia/Shanghai")
        .hours(Weekday::Mon, Weekday::Fri, "08:30-12:00 14:00-17:30")
        .holiday(date(2026, 1, 1), date(2026, 1, 3), "元旦")
        .holiday(date(2026, 2, 15), date(2026, 2, 23), "春节")
        .holiday(date(2026, 4, 4), date(2026, 4, 6), "清明节")
        .holiday(date(2026, 5, 1), date(2026, 5, 5), "劳动节")
        .holiday(date(2026, 6, 19), date(2026, 6, 21), "端午节")
        .holiday(date(2026, 9, 25), date(2026, 9, 27), "中秋节")
        .holiday(date(2026, 10, 1), date(2026, 10, 7), "国庆节")
        .workday(date(2026, 1, 4), "调休上班")
        .workday(date(2026, 2, 14), "调休上班")
        .workday(date(2026, 2, 28), "调休上班")
        .workday(date(2026, 5, 9), "调休上班")
        .workday(date(2026, 9, 20), "调休上班")
        .workday(date(2026, 10, 10), "调休上班")
        .build()
        .expect("the office calendar is valid")
}

/// Wednesday 2026-09-30 17:50, after hours on the last working day before National Day.
fn before_national_day() -> DateTime<Utc> {
    at("2026-09-30T17:50:00+08:00")
}

mod china_2026 {
    use super::*;

    #[test]
    fn one_working_hour_after_hours_before_national_day_is_due_the_morning_after_it() {
        let due = shanghai_office()
            .add(before_national_day(), duration(1, DurationUnit::WorkingHours))
            .unwrap();
        assert_eq!(due, at("2026-10-08T09:30:00+08:00"));
    }

    #[test]
    fn working_hours_skip_the_lunch_break() {
        let office = shanghai_office();
        let start = before_national_day();
        let add = |hours| office.add(start, duration(hours, DurationUnit::WorkingHours)).unwrap();
        assert_eq!(add(4), at("2026-10-08T14:30:00+08:00"));
        assert_eq!(add(8), at("2026-10-09T09:30:00+08:00"));
        let lunch = office
            .add(at("2026-10-08T11:30:00+08:00"), duration(1, DurationUnit::WorkingHours))
            .unwrap();
        assert_eq!(lunch, at("2026-10-08T14:30:00+08:00"));
    }

    #[test]
    fn time_that_runs_out_at_closing_time_is_due_at_closing_time() {
        let office = shanghai_office();
        let full_day = office
            .add(before_national_day(), duration(7, DurationUnit::WorkingHours))
            .unwrap();
        assert_eq!(full_day, at("2026-10-08T17:30:00+08:00"));
        let morning = office
            .add(
                at("2026-10-08T08:30:00+08:00"),
                duration(210, DurationUnit::WorkingMinutes),
            )
            .unwrap();
        assert_eq!(morning, at("2026-10-08T12:00:00+08:00"));
    }

    #[test]
    fn working_minutes_started_before_the_holiday_continue_after_it() {
        let due = shanghai_office()
            .add(
                at("2026-09-30T16:30:00+08:00"),
                duration(120, DurationUnit::WorkingMinutes),
            )
            .unwrap();
        assert_eq!(due, at("2026-10-08T09:30:00+08:00"));
    }

    #[test]
    fn working_days_from_after_hours_end_at_close_of_business_and_count_the_makeup_saturday() {
        let office = shanghai_office();
        let add = |days| {
            office
                .add(before_national_day(), duration(days, DurationUnit::WorkingDays))
                .unwrap()
        };
        assert_eq!(add(1), at("2026-10-08T17:30:00+08:00"));
        // Thursday 10-08, Friday 10-09, make-up Saturday 10-10.
        assert_eq!(add(3), at("2026-10-10T17:30:00+08:00"));
        // … then Monday 10-12 and Tuesday 10-13; Sunday 10-11 is closed.
        assert_eq!(add(5), at("2026-10-13T17:30:00+08:00"));
    }

    #[test]
    fn working_days_from_open_time_keep_the_time_of_day() {
        let office = shanghai_office();
        let friday = at("2026-10-09T10:15:00+08:00");
        let add = |days| office.add(friday, duration(days, DurationUnit::WorkingDays)).unwrap();
        assert_eq!(add(1), at("2026-10-10T10:15:00+08:00"));
        assert_eq!(add(2), at("2026-10-12T10:15:00+08:00"));
    }

    #[test]
    fn working_days_from_the_lunch_break_count_from_the_afternoon_opening() {
        let due = shanghai_office()
            .add(at("2026-10-08T12:30:00+08:00"), duration(1, DurationUnit::WorkingDays))
            .unwrap();
        assert_eq!(due, at("2026-10-09T14:00:00+08:00"));
    }

    #[test]
    fn working_days_before_the_day_opens_count_that_day_as_the_first() {
        let due = shanghai_office()
            .add(at("2026-10-09T07:00:00+08:00"), duration(1, DurationUnit::WorkingDays))
            .unwrap();
        assert_eq!(due, at("2026-10-09T17:30:00+08:00"));
    }

    #[test]
    fn a_shorter_due_day_moves_the_due_time_to_its_close_or_next_opening() {
        let office = CalendarBuilder::new("shop", "Asia/Shanghai")
            .hours(Weekday::Mon, Weekday::Thu, "09:00-18:00")
            .hours(Weekday::Fri, Weekday::Fri, "09:00-12:00")
            .hours(Weekday::Sat, Weekday::Sat, "13:00-17:00")
            .build()
            .unwrap();
        let thursday_afternoon = at("2026-10-15T15:00:00+08:00");
        let one_day = office
            .add(thursday_afternoon, duration(1, DurationUnit::WorkingDays))
            .unwrap();
        assert_eq!(one_day, at("2026-10-16T12:00:00+08:00"));
        let thursday_morning = at("2026-10-15T10:00:00+08:00");
        let two_days = office
            .add(thursday_morning, duration(2, DurationUnit::WorkingDays))
            .unwrap();
        assert_eq!(two_days, at("2026-10-17T13:00:00+08:00"));
    }

    #[test]
    fn natural_days_and_elapsed_time_ignore_the_holiday() {
        let office = shanghai_office();
        let start = before_national_day();
        let add = |amount, unit| office.add(start, duration(amount, unit)).unwrap();
        assert_eq!(add(3, DurationUnit::Days), at("2026-10-03T17:50:00+08:00"));
        assert_eq!(add(1, DurationUnit::Weeks), at("2026-10-07T17:50:00+08:00"));
        assert_eq!(add(30, DurationUnit::Minutes), at("2026-09-30T18:20:00+08:00"));
        assert_eq!(add(24, DurationUnit::Hours), at("2026-10-01T17:50:00+08:00"));
    }

    #[test]
    fn holidays_are_closed_and_makeup_days_open() {
        let office = shanghai_office();
        assert!(!office.is_open(at("2026-10-05T10:00:00+08:00")));
        assert!(office.is_open(at("2026-10-10T10:00:00+08:00")));
        assert!(office.is_open(at("2026-09-20T09:00:00+08:00")));
        assert!(!office.is_open(at("2026-10-11T10:00:00+08:00")));
        assert!(!office.is_open(at("2026-10-08T12:00:00+08:00")));
        assert!(!office.is_open(at("2026-10-08T17:30:00+08:00")));
        assert!(office.is_open(at("2026-10-08T17:29:59+08:00")));
    }

    #[test]
    fn next_open_and_next_close_jump_over_the_holiday() {
        let office = shanghai_office();
        let in_holiday = at("2026-10-01T10:00:00+08:00");
        assert_eq!(office.next_open(in_holiday).unwrap(), at("2026-10-08T08:30:00+08:00"));
        assert_eq!(office.next_close(in_holiday).unwrap(), at("2026-10-08T12:00:00+08:00"));
        let open = at("2026-10-08T15:00:00+08:00");
        assert_eq!(office.next_open(open).unwrap(), open);
        assert_eq!(office.next_close(open).unwrap(), at("2026-10-08T17:30:00+08:00"));
    }

    #[test]
    fn business_seconds_count_only_open_time() {
        let office = shanghai_office();
        let seconds = |from, until| office.business_seconds_between(at(from), at(until)).unwrap();
        assert_eq!(
            seconds("2026-09-30T17:50:00+08:00", "2026-10-08T09:30:00+08:00"),
            3600
        );
        assert_eq!(
            seconds("2026-09-30T08:00:00+08:00", "2026-10-09T00:00:00+08:00"),
            2 * 7 * 3600
        );
        assert_eq!(
            seconds("2026-10-09T00:00:00+08:00", "2026-09-30T08:00:00+08:00"),
            0
        );
    }

    #[test]
    fn subtracting_working_time_walks_back_over_the_holiday() {
        let office = shanghai_office();
        let due = at("2026-10-08T09:30:00+08:00");
        let back = |amount, unit| office.subtract(due, duration(amount, unit)).unwrap();
        assert_eq!(back(2, DurationUnit::WorkingHours), at("2026-09-30T16:30:00+08:00"));
        assert_eq!(back(1, DurationUnit::WorkingHours), at("2026-10-08T08:30:00+08:00"));
        assert_eq!(back(1, DurationUnit::WorkingDays), at("2026-09-30T09:30:00+08:00"));
        assert_eq!(back(2, DurationUnit::Days), at("2026-10-06T09:30:00+08:00"));
    }

    #[test]
    fn a_pause_moves_a_business_due_time_by_the_open_time_paused() {
        let office = shanghai_office();
        let due = at("2026-10-08T09:30:00+08:00");
        let paused_from = at("2026-10-08T11:00:00+08:00");
        let resumed_at = at("2026-10-08T15:00:00+08:00");
        // Open time paused: 11:00–12:00 and 14:00–15:00, two hours.
        let (business, paused) = office
            .extend_for_pause(due, DurationUnit::WorkingHours, paused_from, resumed_at)
            .unwrap();
        assert_eq!(paused, 2 * 3600);
        assert_eq!(business, at("2026-10-08T11:30:00+08:00"));
        let (natural, paused) = office
            .extend_for_pause(due, DurationUnit::Days, paused_from, resumed_at)
            .unwrap();
        assert_eq!(paused, 4 * 3600);
        assert_eq!(natural, at("2026-10-08T13:30:00+08:00"));
        let (unchanged, paused) = office
            .extend_for_pause(due, DurationUnit::WorkingDays, resumed_at, paused_from)
            .unwrap();
        assert_eq!((unchanged, paused), (due, 0));
    }

    #[test]
    fn explanations_name_the_counted_time_and_the_skipped_holiday() {
        let office = shanghai_office();
        let start = before_national_day();
        let (due, text) = office
            .explain_add(start, duration(60, DurationUnit::WorkingMinutes))
            .unwrap();
        assert_eq!(due, at("2026-10-08T09:30:00+08:00"));
        assert_eq!(
            text,
            "counted 60 working minutes (Asia/Shanghai): 2026-10-08 08:30–09:30; \
             skipped holiday 2026-10-01..07 国庆节"
        );
        let (_, text) = office
            .explain_add(start, duration(3, DurationUnit::WorkingDays))
            .unwrap();
        assert_eq!(
            text,
            "counted 3 working days (Asia/Shanghai); 2026-09-30 17:50 is outside opening hours, \
             so the day of the next opening (2026-10-08 08:30) is the first: \
             2026-10-08, 2026-10-09, 2026-10-10; due at close of business, 2026-10-10 17:30; \
             skipped holiday 2026-10-01..07 国庆节; worked make-up day 2026-10-10"
        );
        let (_, text) = office
            .explain_add(start, duration(3, DurationUnit::Days))
            .unwrap();
        assert_eq!(
            text,
            "added 3 natural days: 2026-09-30 17:50 → 2026-10-03 17:50 (Asia/Shanghai); \
             weekends and holidays count"
        );
    }

    #[test]
    fn long_explanations_elide_the_middle_days() {
        let (due, text) = shanghai_office()
            .explain_add(
                at("2026-10-09T10:15:00+08:00"),
                duration(6, DurationUnit::WorkingDays),
            )
            .unwrap();
        assert_eq!(due, at("2026-10-16T10:15:00+08:00"));
        assert_eq!(
            text,
            "counted 6 working days (Asia/Shanghai) from 2026-10-09 10:15: \
             2026-10-10, 2026-10-12, … 2026-10-16 (6 days); \
             due at the same time of day, 2026-10-16 10:15; worked make-up day 2026-10-10"
        );
    }
}

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
            .add(
                before_national_day(),
                duration(1, DurationUnit::WorkingHours),
            )
            .unwrap();
        assert_eq!(due, at("2026-10-08T09:30:00+08:00"));
    }

    #[test]
    fn working_hours_skip_the_lunch_break() {
        let office = shanghai_office();
        let start = before_national_day();
        let add = |hours| {
            office
                .add(start, duration(hours, DurationUnit::WorkingHours))
                .unwrap()
        };
        assert_eq!(add(4), at("2026-10-08T14:30:00+08:00"));
        assert_eq!(add(8), at("2026-10-09T09:30:00+08:00"));
        let lunch = office
            .add(
                at("2026-10-08T11:30:00+08:00"),
                duration(1, DurationUnit::WorkingHours),
            )
            .unwrap();
        assert_eq!(lunch, at("2026-10-08T14:30:00+08:00"));
    }

    #[test]
    fn time_that_runs_out_at_closing_time_is_due_at_closing_time() {
        let office = shanghai_office();
        let full_day = office
            .add(
                before_national_day(),
                duration(7, DurationUnit::WorkingHours),
            )
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
                .add(
                    before_national_day(),
                    duration(days, DurationUnit::WorkingDays),
                )
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
        let add = |days| {
            office
                .add(friday, duration(days, DurationUnit::WorkingDays))
                .unwrap()
        };
        assert_eq!(add(1), at("2026-10-10T10:15:00+08:00"));
        assert_eq!(add(2), at("2026-10-12T10:15:00+08:00"));
    }

    #[test]
    fn working_days_from_the_lunch_break_count_from_the_afternoon_opening() {
        let (due, text) = shanghai_office()
            .explain_add(
                at("2026-10-08T12:30:00+08:00"),
                duration(1, DurationUnit::WorkingDays),
            )
            .unwrap();
        assert_eq!(due, at("2026-10-09T14:00:00+08:00"));
        assert_eq!(
            text,
            "counted 1 working day (Asia/Shanghai) from 2026-10-08 14:00 \
             (started at 12:30, during a break): 2026-10-09; \
             due at the same time of day, 2026-10-09 14:00"
        );
    }

    #[test]
    fn working_days_before_the_day_opens_count_that_day_as_the_first() {
        let due = shanghai_office()
            .add(
                at("2026-10-09T07:00:00+08:00"),
                duration(1, DurationUnit::WorkingDays),
            )
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
        let (one_day, text) = office
            .explain_add(thursday_afternoon, duration(1, DurationUnit::WorkingDays))
            .unwrap();
        assert_eq!(one_day, at("2026-10-16T12:00:00+08:00"));
        assert_eq!(
            text,
            "counted 1 working day (Asia/Shanghai) from 2026-10-15 15:00: 2026-10-16; \
             closed by 15:00 that day, so due at its close of business, 2026-10-16 12:00"
        );
        let thursday_morning = at("2026-10-15T10:00:00+08:00");
        let (two_days, text) = office
            .explain_add(thursday_morning, duration(2, DurationUnit::WorkingDays))
            .unwrap();
        assert_eq!(two_days, at("2026-10-17T13:00:00+08:00"));
        assert_eq!(
            text,
            "counted 2 working days (Asia/Shanghai) from 2026-10-15 10:00: \
             2026-10-16, 2026-10-17; \
             closed at 10:00 that day, so due at its next opening, 2026-10-17 13:00"
        );
    }

    #[test]
    fn natural_days_and_elapsed_time_ignore_the_holiday() {
        let office = shanghai_office();
        let start = before_national_day();
        let add = |amount, unit| office.add(start, duration(amount, unit)).unwrap();
        assert_eq!(add(3, DurationUnit::Days), at("2026-10-03T17:50:00+08:00"));
        assert_eq!(add(1, DurationUnit::Weeks), at("2026-10-07T17:50:00+08:00"));
        assert_eq!(
            add(30, DurationUnit::Minutes),
            at("2026-09-30T18:20:00+08:00")
        );
        assert_eq!(
            add(24, DurationUnit::Hours),
            at("2026-10-01T17:50:00+08:00")
        );
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
        assert_eq!(
            office.next_open(in_holiday).unwrap(),
            at("2026-10-08T08:30:00+08:00")
        );
        assert_eq!(
            office.next_close(in_holiday).unwrap(),
            at("2026-10-08T12:00:00+08:00")
        );
        let open = at("2026-10-08T15:00:00+08:00");
        assert_eq!(office.next_open(open).unwrap(), open);
        assert_eq!(
            office.next_close(open).unwrap(),
            at("2026-10-08T17:30:00+08:00")
        );
    }

    #[test]
    fn business_seconds_count_only_open_time() {
        let office = shanghai_office();
        let seconds = |from, until| {
            office
                .business_seconds_between(at(from), at(until))
                .unwrap()
        };
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
        assert_eq!(
            back(2, DurationUnit::WorkingHours),
            at("2026-09-30T16:30:00+08:00")
        );
        assert_eq!(
            back(1, DurationUnit::WorkingHours),
            at("2026-10-08T08:30:00+08:00")
        );
        assert_eq!(
            back(1, DurationUnit::WorkingDays),
            at("2026-09-30T09:30:00+08:00")
        );
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

/// Berlin office hours, Monday to Friday.
fn berlin_office() -> Calendar {
    CalendarBuilder::new("berlin", "Europe/Berlin")
        .hours(Weekday::Mon, Weekday::Fri, "08:00-17:00")
        .build()
        .unwrap()
}

/// A desk that never closes.
fn berlin_always_open() -> Calendar {
    CalendarBuilder::new("always", "Europe/Berlin")
        .hours(Weekday::Mon, Weekday::Sun, "00:00-24:00")
        .horizon_days(60)
        .build()
        .unwrap()
}

mod daylight_saving_in_berlin {
    use super::*;

    #[test]
    fn a_natural_day_keeps_the_local_time_across_both_changes() {
        let office = berlin_office();
        let day = duration(1, DurationUnit::Days);
        let spring = at("2026-03-28T09:00:00+01:00");
        assert_eq!(
            office.add(spring, day).unwrap(),
            at("2026-03-29T09:00:00+02:00")
        );
        assert_eq!(
            office.add(spring, day).unwrap() - spring,
            TimeDelta::hours(23)
        );
        let autumn = at("2026-10-24T09:00:00+02:00");
        assert_eq!(
            office.add(autumn, day).unwrap(),
            at("2026-10-25T09:00:00+01:00")
        );
        assert_eq!(
            office.add(autumn, day).unwrap() - autumn,
            TimeDelta::hours(25)
        );
    }

    #[test]
    fn a_local_time_that_does_not_exist_becomes_the_end_of_the_gap() {
        let due = berlin_office()
            .add(
                at("2026-03-28T02:30:00+01:00"),
                duration(1, DurationUnit::Days),
            )
            .unwrap();
        assert_eq!(due, at("2026-03-29T03:00:00+02:00"));
    }

    #[test]
    fn a_local_time_that_occurs_twice_is_the_earlier() {
        let due = berlin_office()
            .add(
                at("2026-10-24T02:30:00+02:00"),
                duration(1, DurationUnit::Days),
            )
            .unwrap();
        assert_eq!(due, at("2026-10-25T02:30:00+02:00"));
    }

    #[test]
    fn explanations_mention_the_gap_and_the_repeated_hour() {
        let office = berlin_office();
        let (_, spring) = office
            .explain_add(
                at("2026-03-28T02:30:00+01:00"),
                duration(1, DurationUnit::Days),
            )
            .unwrap();
        assert_eq!(
            spring,
            "added 1 natural day: 2026-03-28 02:30 → 2026-03-29 03:00 (Europe/Berlin); \
             weekends and holidays count; 02:30 does not exist on 2026-03-29 \
             (clocks go forward), so 03:00"
        );
        let (_, autumn) = office
            .explain_add(
                at("2026-10-24T02:30:00+02:00"),
                duration(1, DurationUnit::Days),
            )
            .unwrap();
        assert_eq!(
            autumn,
            "added 1 natural day: 2026-10-24 02:30 → 2026-10-25 02:30 (Europe/Berlin); \
             weekends and holidays count; 02:30 occurs twice on 2026-10-25 \
             (clocks go back), the earlier one counts"
        );
    }

    #[test]
    fn working_hours_across_the_night_of_the_change_count_real_time() {
        let desk = berlin_always_open();
        let four_hours = duration(4, DurationUnit::WorkingHours);
        assert_eq!(
            desk.add(at("2026-03-28T23:00:00+01:00"), four_hours)
                .unwrap(),
            at("2026-03-29T04:00:00+02:00")
        );
        assert_eq!(
            desk.add(at("2026-10-24T23:00:00+02:00"), four_hours)
                .unwrap(),
            at("2026-10-25T02:00:00+01:00")
        );
    }

    #[test]
    fn night_hours_are_shorter_in_spring_and_longer_in_autumn() {
        let night = CalendarBuilder::new("night", "Europe/Berlin")
            .hours(Weekday::Sun, Weekday::Sun, "01:00-04:00")
            .build()
            .unwrap();
        let seconds = |from, until| night.business_seconds_between(at(from), at(until)).unwrap();
        assert_eq!(
            seconds("2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00"),
            2 * 3600
        );
        assert_eq!(
            seconds("2026-10-25T00:00:00+02:00", "2026-10-26T00:00:00+01:00"),
            4 * 3600
        );
    }

    #[test]
    fn hours_that_fall_in_the_gap_make_no_working_day() {
        let odd = CalendarBuilder::new("odd", "Europe/Berlin")
            .hours(Weekday::Sun, Weekday::Sun, "02:00-03:00")
            .hours(Weekday::Mon, Weekday::Mon, "09:00-10:00")
            .build()
            .unwrap();
        assert_eq!(
            odd.business_seconds_between(
                at("2026-03-29T00:00:00+01:00"),
                at("2026-03-30T00:00:00+02:00")
            )
            .unwrap(),
            0
        );
        assert!(odd.is_open(at("2026-04-05T02:30:00+02:00")));
        let due = odd
            .add(
                at("2026-03-28T12:00:00+01:00"),
                duration(1, DurationUnit::WorkingDays),
            )
            .unwrap();
        assert_eq!(due, at("2026-03-30T10:00:00+02:00"));
    }

    #[test]
    fn working_days_and_hours_over_the_weekend_of_the_change() {
        let office = berlin_office();
        let friday = at("2026-03-27T10:00:00+01:00");
        assert_eq!(
            office
                .add(friday, duration(1, DurationUnit::WorkingDays))
                .unwrap(),
            at("2026-03-30T10:00:00+02:00")
        );
        assert_eq!(
            office
                .add(
                    at("2026-03-27T16:00:00+01:00"),
                    duration(2, DurationUnit::WorkingHours)
                )
                .unwrap(),
            at("2026-03-30T09:00:00+02:00")
        );
    }

    #[test]
    fn an_always_open_desk_is_open_through_the_change_and_never_closes() {
        let desk = berlin_always_open();
        assert!(desk.is_open(at("2026-03-29T01:59:59+01:00")));
        assert!(desk.is_open(at("2026-03-29T03:00:00+02:00")));
        assert!(desk.is_open(at("2026-10-25T02:30:00+01:00")));
        assert_eq!(
            desk.next_close(at("2026-03-29T01:00:00+01:00")),
            Err(CalendarError::BeyondHorizon {
                calendar: "always".to_owned(),
                from: date(2026, 3, 29),
                horizon_days: 60,
            })
        );
    }
}

mod limits {
    use super::*;

    #[test]
    fn a_calendar_closed_by_holidays_for_longer_than_its_horizon_gives_an_error() {
        let closed = CalendarBuilder::new("closed", "Asia/Shanghai")
            .hours(Weekday::Mon, Weekday::Fri, "09:00-17:00")
            .holiday(date(2026, 1, 1), date(2099, 12, 31), "closed for good")
            .build()
            .unwrap();
        let start = at("2026-10-08T10:00:00+08:00");
        let horizon = Err(CalendarError::BeyondHorizon {
            calendar: "closed".to_owned(),
            from: date(2026, 10, 8),
            horizon_days: complaintd::calendar::DEFAULT_HORIZON_DAYS,
        });
        assert_eq!(closed.next_open(start), horizon);
        assert_eq!(
            closed.add(start, duration(1, DurationUnit::WorkingHours)),
            horizon
        );
        assert_eq!(
            closed.add(start, duration(1, DurationUnit::WorkingDays)),
            horizon
        );
        assert!(!closed.is_open(start));
        let next_week = at("2026-10-15T10:00:00+08:00");
        assert_eq!(closed.business_seconds_between(start, next_week), Ok(0));
    }

    #[test]
    fn answers_before_a_long_closure_need_no_search_beyond_it() {
        let closing = CalendarBuilder::new("closing", "Asia/Shanghai")
            .hours(Weekday::Mon, Weekday::Fri, "09:00-17:00")
            .holiday(date(2026, 10, 9), date(2099, 12, 31), "closed for good")
            .build()
            .unwrap();
        let last_morning = at("2026-10-08T10:00:00+08:00");
        let last_close = at("2026-10-08T17:00:00+08:00");
        assert_eq!(closing.next_close(last_morning), Ok(last_close));
        assert_eq!(
            closing.business_seconds_between(last_morning, at("2026-10-20T00:00:00+08:00")),
            Ok(7 * 3600)
        );
        let (due, text) = closing
            .explain_add(last_morning, duration(7, DurationUnit::WorkingHours))
            .unwrap();
        assert_eq!(due, last_close);
        assert_eq!(
            text,
            "counted 7 working hours (Asia/Shanghai): 2026-10-08 10:00–17:00"
        );
    }

    #[test]
    fn more_working_days_than_the_horizon_holds_give_an_error() {
        let result = shanghai_office().add(
            before_national_day(),
            duration(u32::MAX, DurationUnit::WorkingDays),
        );
        assert!(
            matches!(result, Err(CalendarError::BeyondHorizon { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn natural_days_past_the_last_representable_date_give_an_error() {
        let result = shanghai_office().add(
            before_national_day(),
            duration(u32::MAX, DurationUnit::Weeks),
        );
        assert_eq!(
            result,
            Err(CalendarError::OutOfRange {
                calendar: "office".to_owned()
            })
        );
    }
}

/// A declaration's text in a source map, so spans point at real text.
struct DeclText {
    sources: SourceMap,
    file: u32,
    text: &'static str,
}

impl DeclText {
    fn new(text: &'static str) -> Self {
        let mut sources = SourceMap::new();
        let file = sources.add("rules/00-calendar.rules", text);
        DeclText {
            sources,
            file,
            text,
        }
    }

    /// The span of the `nth` (0-based) occurrence of `needle`.
    fn span(&self, needle: &str, nth: usize) -> Span {
        let start = self
            .text
            .match_indices(needle)
            .nth(nth)
            .map(|(i, _)| i)
            .unwrap_or_else(|| panic!("`{needle}` #{nth} is not in the test text"));
        span_at(self.file, self.text, start, start + needle.len())
    }

    fn spanned<T>(&self, node: T, needle: &str, nth: usize) -> Spanned<T> {
        Spanned::new(node, self.span(needle, nth))
    }

    fn render(&self, diagnostics: &[complaintd::rules::Diagnostic]) -> Vec<String> {
        diagnostics
            .iter()
            .map(|d| d.render(&self.sources))
            .collect()
    }
}

fn minutes(text: &str) -> u16 {
    let (h, m) = text.split_once(':').unwrap();
    h.parse::<u16>().unwrap() * 60 + m.parse::<u16>().unwrap()
}

/// The time range `08:30-12:00`, spanned at its `nth` occurrence.
fn time_range(decl: &DeclText, text: &str, nth: usize) -> Spanned<TimeRange> {
    let (start, end) = text.split_once('-').unwrap();
    decl.spanned(
        TimeRange {
            start_minute: minutes(start),
            end_minute: minutes(end),
        },
        text,
        nth,
    )
}

/// The date range `2026-10-01..2026-10-07` or the date `2026-10-10`.
fn date_range(decl: &DeclText, text: &str, nth: usize) -> Spanned<DateRange> {
    let (first, last) = text.split_once("..").unwrap_or((text, text));
    decl.spanned(
        DateRange {
            first: first.parse().unwrap(),
            last: last.parse().unwrap(),
        },
        text,
        nth,
    )
}

fn weekdays(decl: &DeclText, text: &str, first: u8, last: u8, nth: usize) -> Spanned<WeekdaySet> {
    decl.spanned(WeekdaySet { first, last }, text, nth)
}

fn calendar_decl(
    decl: &DeclText,
    name: &str,
    zone: &str,
    entries: Vec<CalendarEntry>,
) -> CalendarDecl {
    let quoted = format!("\"{zone}\"");
    CalendarDecl {
        name: decl.spanned(name.to_owned(), name, 0),
        zone: Spanned::new(zone.to_owned(), decl.span(&quoted, 0)),
        entries,
        span: span_at(decl.file, decl.text, 0, decl.text.len()),
    }
}

/// Declarations built by hand, so that checks the parser already makes
/// (reversed ranges, impossible times) are reached too: they still guard the
/// builder and any other code that makes a `CalendarDecl`.
mod declaration_diagnostics {
    use super::*;

    const FAULTY: &str = "\
calendar office \"Asia/Shangai\" {
    hours mon..fri 08:30-12:00 11:00-14:00 17:30-09:00
    hours tue 09:00-09:00
    holiday 2026-10-07..2026-10-01 \"国庆节\"
    holiday 2026-10-01..2026-10-07 \"国庆节\"
    workday 2026-10-05 \"调休\"
}
";

    fn faulty_decl(text: &DeclText) -> CalendarDecl {
        let line = |n: usize| text.span(text.text.lines().nth(n - 1).unwrap().trim(), 0);
        let label = || Some(text.spanned("国庆节".to_owned(), "\"国庆节\"", 0));
        calendar_decl(
            text,
            "office",
            "Asia/Shangai",
            vec![
                CalendarEntry::Hours {
                    days: vec![weekdays(text, "mon..fri", 0, 4, 0)],
                    intervals: vec![
                        time_range(text, "08:30-12:00", 0),
                        time_range(text, "11:00-14:00", 0),
                        time_range(text, "17:30-09:00", 0),
                    ],
                    span: line(2),
                },
                CalendarEntry::Hours {
                    days: vec![weekdays(text, "tue", 1, 1, 0)],
                    intervals: vec![time_range(text, "09:00-09:00", 0)],
                    span: line(3),
                },
                CalendarEntry::Holiday {
                    dates: vec![date_range(text, "2026-10-07..2026-10-01", 0)],
                    label: label(),
                    span: line(4),
                },
                CalendarEntry::Holiday {
                    dates: vec![date_range(text, "2026-10-01..2026-10-07", 0)],
                    label: label(),
                    span: line(5),
                },
                CalendarEntry::Workday {
                    dates: vec![date_range(text, "2026-10-05", 0)],
                    label: Some(text.spanned("调休".to_owned(), "\"调休\"", 0)),
                    span: line(6),
                },
            ],
        )
    }

    #[test]
    fn every_problem_is_reported_at_its_text_in_source_order() {
        let text = DeclText::new(FAULTY);
        let problems = Calendar::from_decl(&faulty_decl(&text)).unwrap_err();
        assert_eq!(
            text.render(&problems),
            vec![
                "error: unknown time zone `Asia/Shangai`\n \
                 --> rules/00-calendar.rules:1:17\n  \
                 |\n\
                 1 | calendar office \"Asia/Shangai\" {\n  \
                 |                 ^^^^^^^^^^^^^^\n  \
                 = help: did you mean `Asia/Shanghai`?\n",
                "error: `11:00-14:00` overlaps `08:30-12:00`\n \
                 --> rules/00-calendar.rules:2:32\n  \
                 |\n\
                 2 |     hours mon..fri 08:30-12:00 11:00-14:00 17:30-09:00\n  \
                 |                                ^^^^^^^^^^^\n  \
                 = help: the intervals of a day must not overlap; \
                 write `08:30-14:00` if one interval is meant\n",
                "error: `17:30-09:00` ends before it starts\n \
                 --> rules/00-calendar.rules:2:44\n  \
                 |\n\
                 2 |     hours mon..fri 08:30-12:00 11:00-14:00 17:30-09:00\n  \
                 |                                            ^^^^^^^^^^^\n  \
                 = help: an interval cannot run past midnight; split it into \
                 `17:30-24:00` on one day and `00:00-09:00` on the next\n",
                "error: Tuesday already has opening hours\n \
                 --> rules/00-calendar.rules:3:11\n  \
                 |\n\
                 3 |     hours tue 09:00-09:00\n  \
                 |           ^^^\n  \
                 = help: give each weekday its hours once; \
                 a day with other hours needs its own `hours` line\n  \
                 = note: Tuesday got its hours on line 2\n",
                "error: `09:00-09:00` is empty: it ends when it starts\n \
                 --> rules/00-calendar.rules:3:15\n  \
                 |\n\
                 3 |     hours tue 09:00-09:00\n  \
                 |               ^^^^^^^^^^^\n  \
                 = help: give it a later end time, or remove it\n",
                "error: date range `2026-10-07..2026-10-01` ends before it starts\n \
                 --> rules/00-calendar.rules:4:13\n  \
                 |\n\
                 4 |     holiday 2026-10-07..2026-10-01 \"国庆节\"\n  \
                 |             ^^^^^^^^^^^^^^^^^^^^^^\n  \
                 = help: write `2026-10-01..2026-10-07`\n",
                "error: 2026-10-05 is both a make-up working day and a holiday\n \
                 --> rules/00-calendar.rules:6:13\n  \
                 |\n\
                 6 |     workday 2026-10-05 \"调休\"\n  \
                 |             ^^^^^^^^^^\n  \
                 = help: a date is either a holiday or a working day; \
                 remove it from one of them\n  \
                 = note: the holiday 2026-10-01..2026-10-07 is declared on line 5\n",
            ]
        );
    }

    #[test]
    fn a_calendar_without_hours_is_never_open() {
        let text = DeclText::new("calendar closed \"UTC\" {\n    holiday 2026-01-01 \"元旦\"\n}\n");
        let decl = calendar_decl(
            &text,
            "closed",
            "UTC",
            vec![CalendarEntry::Holiday {
                dates: vec![date_range(&text, "2026-01-01", 0)],
                label: Some(text.spanned("元旦".to_owned(), "\"元旦\"", 0)),
                span: text.span("holiday 2026-01-01 \"元旦\"", 0),
            }],
        );
        let problems = Calendar::from_decl(&decl).unwrap_err();
        assert_eq!(
            text.render(&problems),
            vec![
                "error: calendar `closed` is never open\n \
                 --> rules/00-calendar.rules:1:10\n  \
                 |\n\
                 1 | calendar closed \"UTC\" {\n  \
                 |          ^^^^^^\n  \
                 = help: give it opening hours, e.g. `hours mon..fri 09:00-17:00`\n"
            ]
        );
    }

    #[test]
    fn unknown_zones_without_a_near_name_get_examples_and_bad_hours_are_refused() {
        let text = DeclText::new(
            "calendar night \"Mars/Olympus\" {\n    hours fri..mon 20:00-24:00 25:00-26:00\n}\n",
        );
        let decl = calendar_decl(
            &text,
            "night",
            "Mars/Olympus",
            vec![CalendarEntry::Hours {
                days: vec![weekdays(&text, "fri..mon", 4, 0, 0)],
                intervals: vec![
                    time_range(&text, "20:00-24:00", 0),
                    time_range(&text, "25:00-26:00", 0),
                ],
                span: text.span("hours fri..mon 20:00-24:00 25:00-26:00", 0),
            }],
        );
        let problems = Calendar::from_decl(&decl).unwrap_err();
        assert_eq!(
            text.render(&problems),
            vec![
                "error: unknown time zone `Mars/Olympus`\n \
                 --> rules/00-calendar.rules:1:16\n  \
                 |\n\
                 1 | calendar night \"Mars/Olympus\" {\n  \
                 |                ^^^^^^^^^^^^^^\n  \
                 = help: use an IANA time zone name such as `Asia/Shanghai` or `Europe/Berlin`\n",
                "error: weekday range `fri..mon` runs backwards\n \
                 --> rules/00-calendar.rules:2:11\n  \
                 |\n\
                 2 |     hours fri..mon 20:00-24:00 25:00-26:00\n  \
                 |           ^^^^^^^^\n  \
                 = help: weeks run from mon to sun; write `fri..sun` and `mon..mon` separately\n",
                "error: `25:00-26:00` is not within one day\n \
                 --> rules/00-calendar.rules:2:32\n  \
                 |\n\
                 2 |     hours fri..mon 20:00-24:00 25:00-26:00\n  \
                 |                                ^^^^^^^^^^^\n  \
                 = help: times of day run from 00:00 to 24:00\n",
            ]
        );
    }

    #[test]
    fn a_valid_declaration_builds_the_calendar_it_describes() {
        let text = DeclText::new(
            "calendar office \"Asia/Shanghai\" {\n    hours mon..fri 08:30-12:00 14:00-17:30\n    \
             holiday 2026-10-01..2026-10-07 \"国庆节\"\n    workday 2026-10-10 \"调休\"\n}\n",
        );
        let decl = calendar_decl(
            &text,
            "office",
            "Asia/Shanghai",
            vec![
                CalendarEntry::Hours {
                    days: vec![weekdays(&text, "mon..fri", 0, 4, 0)],
                    intervals: vec![
                        time_range(&text, "08:30-12:00", 0),
                        time_range(&text, "14:00-17:30", 0),
                    ],
                    span: text.span("hours mon..fri 08:30-12:00 14:00-17:30", 0),
                },
                CalendarEntry::Holiday {
                    dates: vec![date_range(&text, "2026-10-01..2026-10-07", 0)],
                    label: Some(text.spanned("国庆节".to_owned(), "\"国庆节\"", 0)),
                    span: text.span("holiday 2026-10-01..2026-10-07 \"国庆节\"", 0),
                },
                CalendarEntry::Workday {
                    dates: vec![date_range(&text, "2026-10-10", 0)],
                    label: Some(text.spanned("调休".to_owned(), "\"调休\"", 0)),
                    span: text.span("workday 2026-10-10 \"调休\"", 0),
                },
            ],
        );
        let office = Calendar::from_decl(&decl).unwrap();
        assert_eq!(office.name(), "office");
        assert_eq!(office.zone(), chrono_tz::Asia::Shanghai);
        assert_eq!(
            office
                .add(
                    before_national_day(),
                    duration(3, DurationUnit::WorkingDays)
                )
                .unwrap(),
            at("2026-10-10T17:30:00+08:00")
        );
    }

    #[test]
    fn the_builder_reports_problems_as_sentences() {
        let problems = CalendarBuilder::new("office", "Asia/Shanghai")
            .hours(Weekday::Mon, Weekday::Fri, "08:30-12:00 2pm-5pm")
            .hours(Weekday::Fri, Weekday::Fri, "09:00-12:00")
            .build()
            .unwrap_err();
        assert_eq!(
            problems.to_string(),
            "`2pm-5pm` is not an interval like `09:00-17:30`; Friday already has opening hours \
             (give each weekday its hours once; a day with other hours needs its own `hours` line)"
        );
    }
}

mod properties {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;
    use proptest::test_runner::Config;

    /// A calendar with odd hours in a DST zone: a night shift that runs over
    /// midnight into Saturday, Sunday hours across both changes, a lunch
    /// break, a holiday and a make-up Sunday.
    fn berlin_odd() -> Calendar {
        CalendarBuilder::new("odd", "Europe/Berlin")
            .hours(
                Weekday::Mon,
                Weekday::Mon,
                "00:00-02:30 08:00-12:00 13:00-17:00",
            )
            .hours(Weekday::Tue, Weekday::Thu, "08:00-17:00")
            .hours(Weekday::Fri, Weekday::Fri, "22:00-24:00")
            .hours(Weekday::Sat, Weekday::Sat, "00:00-03:00")
            .hours(Weekday::Sun, Weekday::Sun, "01:30-03:30")
            .holiday(date(2026, 12, 24), date(2026, 12, 26), "Weihnachten")
            .workday(date(2026, 12, 27), "Inventur")
            .build()
            .unwrap()
    }

    /// Havana changes its clocks at midnight: 00:00 does not exist on
    /// 2026-03-08 and occurs twice on 2026-11-01. Its hours touch midnight.
    fn havana_midnight() -> Calendar {
        CalendarBuilder::new("havana", "America/Havana")
            .hours(
                Weekday::Mon,
                Weekday::Fri,
                "00:00-00:30 09:00-17:00 23:30-24:00",
            )
            .hours(Weekday::Sat, Weekday::Sun, "00:00-01:30 22:00-24:00")
            .build()
            .unwrap()
    }

    fn calendars() -> impl Strategy<Value = Calendar> {
        prop_oneof![
            Just(shanghai_office()),
            Just(berlin_odd()),
            Just(berlin_office()),
            Just(havana_midnight()),
        ]
    }

    /// Instants in 2026, often near the clock changes in Berlin and
    /// Havana and National Day, sometimes with a fraction of a second.
    fn instants() -> impl Strategy<Value = DateTime<Utc>> {
        let seconds = prop_oneof![
            at("2026-01-01T00:00:00Z").timestamp()..at("2027-01-01T00:00:00Z").timestamp(),
            at("2026-03-27T00:00:00Z").timestamp()..at("2026-04-01T00:00:00Z").timestamp(),
            at("2026-10-23T00:00:00Z").timestamp()..at("2026-10-28T00:00:00Z").timestamp(),
            at("2026-09-29T00:00:00Z").timestamp()..at("2026-10-12T00:00:00Z").timestamp(),
            at("2026-03-07T00:00:00Z").timestamp()..at("2026-03-10T00:00:00Z").timestamp(),
            at("2026-10-31T00:00:00Z").timestamp()..at("2026-11-03T00:00:00Z").timestamp(),
        ];
        let nanos = prop_oneof![3 => Just(0u32), 1 => 0u32..1_000_000_000];
        (seconds, nanos).prop_map(|(s, n)| DateTime::from_timestamp(s, n).unwrap())
    }

    fn business_units() -> impl Strategy<Value = DurationUnit> {
        prop_oneof![
            Just(DurationUnit::WorkingMinutes),
            Just(DurationUnit::WorkingHours),
            Just(DurationUnit::WorkingDays),
        ]
    }

    fn any_unit() -> impl Strategy<Value = DurationUnit> {
        prop_oneof![
            Just(DurationUnit::Minutes),
            Just(DurationUnit::Hours),
            Just(DurationUnit::Days),
            Just(DurationUnit::Weeks),
            business_units(),
        ]
    }

    /// Open at `at`, or exactly at the end of an open interval.
    fn open_or_closing(calendar: &Calendar, at: DateTime<Utc>) -> bool {
        calendar.is_open(at) || calendar.is_open(at - TimeDelta::nanoseconds(1))
    }

    proptest! {
        #![proptest_config(Config::with_cases(512))]

        #[test]
        fn adding_business_seconds_adds_exactly_that_much_open_time(
            calendar in calendars(), start in instants(), secs in 0i64..400 * 3600,
        ) {
            let due = calendar.add_business_seconds(start, secs).unwrap();
            prop_assert_eq!(calendar.business_seconds_between(start, due).unwrap(), secs);
            let back = calendar.add_business_seconds(start, -secs).unwrap();
            prop_assert_eq!(calendar.business_seconds_between(back, start).unwrap(), secs);
        }

        #[test]
        fn business_additions_are_monotonic_in_the_start(
            calendar in calendars(), start in instants(), later_by in 0i64..10 * 86_400,
            unit in business_units(), amount in 0u32..40,
        ) {
            let later = start + TimeDelta::seconds(later_by);
            let d = duration(amount, unit);
            prop_assert!(calendar.add(start, d).unwrap() <= calendar.add(later, d).unwrap());
            prop_assert!(calendar.subtract(start, d).unwrap() <= calendar.subtract(later, d).unwrap());
        }

        #[test]
        fn additions_are_monotonic_in_the_amount(
            calendar in calendars(), start in instants(), unit in any_unit(),
            amount in 0u32..40, more in 0u32..40,
        ) {
            let shorter = calendar.add(start, duration(amount, unit)).unwrap();
            let longer = calendar.add(start, duration(amount + more, unit)).unwrap();
            prop_assert!(shorter <= longer);
            prop_assert!(start <= shorter);
        }

        #[test]
        fn business_results_are_open_or_exactly_at_a_closing_time(
            calendar in calendars(), start in instants(), unit in business_units(),
            amount in 1u32..40,
        ) {
            let due = calendar.add(start, duration(amount, unit)).unwrap();
            prop_assert!(due > start);
            prop_assert!(open_or_closing(&calendar, due), "{} is closed", due);
            let back = calendar.subtract(start, duration(amount, unit)).unwrap();
            prop_assert!(back < start);
            prop_assert!(open_or_closing(&calendar, back), "{} is closed", back);
        }

        #[test]
        fn working_days_on_uniform_hours_keep_the_time_or_end_at_close_of_business(
            start in instants(), days in 1u32..30,
        ) {
            // Every working day of the Shanghai office has the same hours, so
            // no adjustment happens: an open start keeps its time of day (a
            // start in the lunch break counts from 14:00) on the N-th working
            // day after; any other closed start ends at close of business of
            // the N-th working day counting the day of the next opening.
            let office = shanghai_office();
            let zone = office.zone();
            let local = |at: DateTime<Utc>| at.with_timezone(&zone).naive_local();
            let time = |h, m| chrono::NaiveTime::from_hms_opt(h, m, 0).unwrap();
            let due = local(office.add(start, duration(days, DurationUnit::WorkingDays)).unwrap());
            let opening = local(office.next_open(start).unwrap());
            let anchor = if office.is_open(start) {
                Some(local(start))
            } else if opening.date() == local(start).date() && opening.time() == time(14, 0) {
                Some(opening)
            } else {
                None
            };
            match anchor {
                Some(anchor) => {
                    prop_assert_eq!(due.time(), anchor.time());
                    let counted = anchor
                        .date()
                        .iter_days()
                        .skip(1)
                        .take_while(|date| *date <= due.date())
                        .filter(|date| {
                            let same_time = zone.from_local_datetime(&date.and_time(anchor.time()));
                            office.is_open(same_time.unwrap().with_timezone(&Utc))
                        })
                        .count();
                    prop_assert_eq!(counted, days as usize);
                }
                None => {
                    prop_assert_eq!(due.time(), time(17, 30));
                    let counted = opening
                        .date()
                        .iter_days()
                        .take_while(|date| *date <= due.date())
                        .filter(|date| {
                            let morning = zone.from_local_datetime(&date.and_time(time(10, 0)));
                            office.is_open(morning.unwrap().with_timezone(&Utc))
                        })
                        .count();
                    prop_assert_eq!(counted, days as usize);
                }
            }
        }

        #[test]
        fn natural_days_keep_the_local_time_when_it_exists(
            calendar in calendars(), start in instants(), days in 0u32..400,
        ) {
            let zone = calendar.zone();
            let due = calendar.add(start, duration(days, DurationUnit::Days)).unwrap();
            let wanted = start.with_timezone(&zone).naive_local()
                + TimeDelta::days(i64::from(days));
            let got = due.with_timezone(&zone).naive_local();
            match zone.from_local_datetime(&wanted) {
                chrono::LocalResult::Single(exact) => prop_assert_eq!(due, exact.with_timezone(&Utc)),
                chrono::LocalResult::Ambiguous(earlier, _) => {
                    prop_assert!(days == 0 || due == earlier.with_timezone(&Utc));
                    prop_assert_eq!(got, wanted);
                }
                chrono::LocalResult::None => {
                    // The first instant after the gap: its local time is past
                    // the wanted time, a moment earlier it was before it.
                    prop_assert!(got > wanted);
                    let before = (due - TimeDelta::nanoseconds(1)).with_timezone(&zone).naive_local();
                    prop_assert!(before < wanted);
                }
            }
        }

        #[test]
        fn is_open_agrees_with_next_open_and_next_close(
            calendar in calendars(), moment in instants(),
        ) {
            let opening = calendar.next_open(moment).unwrap();
            prop_assert_eq!(calendar.is_open(moment), opening == moment);
            prop_assert!(calendar.is_open(opening));
            prop_assert_eq!(calendar.business_seconds_between(moment, opening).unwrap(), 0);
            let close = calendar.next_close(moment).unwrap();
            prop_assert!(close > opening);
            prop_assert!(!calendar.is_open(close));
            prop_assert!(calendar.is_open(close - TimeDelta::nanoseconds(1)));
            prop_assert_eq!(
                calendar.business_seconds_between(opening, close).unwrap(),
                (close - opening).num_seconds()
            );
        }

        #[test]
        fn a_pause_moves_the_due_time_by_the_time_paused(
            calendar in calendars(), due in instants(), paused_from in instants(),
            paused_for in 0i64..5 * 86_400, unit in any_unit(),
        ) {
            let resumed_at = paused_from + TimeDelta::seconds(paused_for);
            let (new_due, paused) = calendar
                .extend_for_pause(due, unit, paused_from, resumed_at)
                .unwrap();
            prop_assert!(new_due >= due);
            if unit.is_business() {
                prop_assert_eq!(paused, calendar.business_seconds_between(paused_from, resumed_at).unwrap());
                prop_assert_eq!(calendar.business_seconds_between(due, new_due).unwrap(), paused);
            } else {
                prop_assert_eq!(paused, paused_for);
                prop_assert_eq!(new_due - due, TimeDelta::seconds(paused_for));
            }
        }
    }
}

/// Declarations parsed from rule text by the real parser.
mod parsed_declarations {
    use super::*;
    use complaintd::rules::ast::Item;
    use complaintd::rules::parse::parse_file;

    /// The calendars declared in `text`, with the source map to render against.
    fn parse_calendars(path: &str, text: &str) -> (SourceMap, Vec<CalendarDecl>) {
        let mut sources = SourceMap::new();
        let file = sources.add(path, text);
        let parsed = parse_file(file, text)
            .unwrap_or_else(|d| panic!("test text does not parse:\n{}", d.render(&sources)));
        let calendars = parsed
            .items
            .into_iter()
            .filter_map(|item| match item {
                Item::Calendar(decl) => Some(decl),
                _ => None,
            })
            .collect();
        (sources, calendars)
    }

    #[test]
    fn problems_the_parser_lets_through_are_reported_at_the_parsed_spans() {
        let text = "\
calendar office \"asia/shanghai\" {
    hours mon..fri 08:30-12:00 11:00-14:00
    hours sat, tue 09:00-12:00
    holiday 2026-10-01..2026-10-07 \"国庆节\"
    workday 2026-10-06..2026-10-08 \"调休\"
}
";
        let (sources, calendars) = parse_calendars("rules/00-calendar.rules", text);
        let problems = Calendar::from_decl(&calendars[0]).unwrap_err();
        let rendered: Vec<String> = problems.iter().map(|d| d.render(&sources)).collect();
        assert_eq!(
            rendered,
            vec![
                "error: unknown time zone `asia/shanghai`\n \
                 --> rules/00-calendar.rules:1:17\n  \
                 |\n\
                 1 | calendar office \"asia/shanghai\" {\n  \
                 |                 ^^^^^^^^^^^^^^^\n  \
                 = help: did you mean `Asia/Shanghai`?\n",
                "error: `11:00-14:00` overlaps `08:30-12:00`\n \
                 --> rules/00-calendar.rules:2:32\n  \
                 |\n\
                 2 |     hours mon..fri 08:30-12:00 11:00-14:00\n  \
                 |                                ^^^^^^^^^^^\n  \
                 = help: the intervals of a day must not overlap; \
                 write `08:30-14:00` if one interval is meant\n",
                "error: Tuesday already has opening hours\n \
                 --> rules/00-calendar.rules:3:16\n  \
                 |\n\
                 3 |     hours sat, tue 09:00-12:00\n  \
                 |                ^^^\n  \
                 = help: give each weekday its hours once; \
                 a day with other hours needs its own `hours` line\n  \
                 = note: Tuesday got its hours on line 2\n",
                "error: 2026-10-06..2026-10-07 are both make-up working days and holidays\n \
                 --> rules/00-calendar.rules:5:13\n  \
                 |\n\
                 5 |     workday 2026-10-06..2026-10-08 \"调休\"\n  \
                 |             ^^^^^^^^^^^^^^^^^^^^^^\n  \
                 = help: a date is either a holiday or a working day; \
                 remove it from one of them\n  \
                 = note: the holiday 2026-10-01..2026-10-07 is declared on line 4\n",
            ]
        );
    }

    #[test]
    fn a_parsed_calendar_without_hours_is_never_open() {
        let text = "calendar closed \"UTC\" {\n    holiday 2026-01-01 \"元旦\"\n}\n";
        let (sources, calendars) = parse_calendars("rules/00-calendar.rules", text);
        let problems = Calendar::from_decl(&calendars[0]).unwrap_err();
        assert_eq!(
            problems[0].render(&sources),
            "error: calendar `closed` is never open\n \
             --> rules/00-calendar.rules:1:10\n  \
             |\n\
             1 | calendar closed \"UTC\" {\n  \
             |          ^^^^^^\n  \
             = help: give it opening hours, e.g. `hours mon..fri 09:00-17:00`\n"
        );
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn the_default_policy_calendar_counts_national_day_2026_like_the_built_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/rules/00-organisation.rules");
        let text = std::fs::read_to_string(path).expect("the default policy is readable");
        let (_, calendars) = parse_calendars("rules/00-organisation.rules", &text);
        let office = Calendar::from_decl(&calendars[0]).expect("the default calendar is valid");
        assert_eq!(office.holidays(), shanghai_office().holidays());
        assert_eq!(office.makeup_days().len(), 6);
        let start = before_national_day();
        for (amount, unit, due) in [
            (1, DurationUnit::WorkingHours, "2026-10-08T09:30:00+08:00"),
            (3, DurationUnit::WorkingDays, "2026-10-10T17:30:00+08:00"),
            (5, DurationUnit::WorkingDays, "2026-10-13T17:30:00+08:00"),
            (3, DurationUnit::Days, "2026-10-03T17:50:00+08:00"),
        ] {
            assert_eq!(
                office.add(start, duration(amount, unit)).unwrap(),
                at(due),
                "{amount} {unit:?}"
            );
        }
    }
}

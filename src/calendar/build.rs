//! Building a calendar: from a `calendar` declaration with every problem reported, or by hand.

use std::fmt;

use chrono::{NaiveDate, Weekday};
use chrono_tz::Tz;

use super::{Calendar, LabelledDates, SpecialDays, DEFAULT_HORIZON_DAYS};
use crate::rules::ast::{
    CalendarDecl, CalendarEntry, DateRange, Span, Spanned, TimeRange, WeekdaySet,
};
use crate::rules::diag::did_you_mean;
use crate::rules::Diagnostic;

/// Settings of a calendar that its declaration does not carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CalendarOptions {
    /// Whose hours make-up working days use; `None` means Monday, or the
    /// first weekday from Monday on that has hours when Monday has none.
    pub makeup_weekday: Option<Weekday>,
    /// Days a computation searches before giving up.
    pub horizon_days: u32,
}

impl Default for CalendarOptions {
    fn default() -> Self {
        CalendarOptions {
            makeup_weekday: None,
            horizon_days: DEFAULT_HORIZON_DAYS,
        }
    }
}

const WEEKDAY_NAMES: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const WEEKDAY_KEYWORDS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const MINUTES_PER_DAY: u16 = 24 * 60;

impl Calendar {
    /// Builds the calendar a `calendar` declaration describes, or reports
    /// every problem in it, each at the text it is about.
    pub fn from_decl(decl: &CalendarDecl) -> Result<Calendar, Vec<Diagnostic>> {
        Self::from_decl_with(decl, CalendarOptions::default())
    }

    /// Like [`Calendar::from_decl`], with settings the declaration does not carry.
    pub fn from_decl_with(
        decl: &CalendarDecl,
        options: CalendarOptions,
    ) -> Result<Calendar, Vec<Diagnostic>> {
        let mut problems = Vec::new();
        let zone = check_zone(&decl.zone, &mut problems);
        let mut weekly: [Vec<TimeRange>; 7] = Default::default();
        let mut hours_given_at: [Option<Span>; 7] = [None; 7];
        let mut holidays = Vec::new();
        let mut makeup_days = Vec::new();
        // A calendar whose only hours were rejected is not also reported as
        // never open: that would repeat the same problem.
        let mut hours_rejected = false;
        for entry in &decl.entries {
            match entry {
                CalendarEntry::Hours {
                    days, intervals, ..
                } => {
                    let reported = problems.len();
                    let hours = check_intervals(intervals, &mut problems);
                    for set in days {
                        for day in check_weekdays(set, &hours_given_at, &mut problems) {
                            hours_given_at[day] = Some(set.span);
                            weekly[day] = hours.clone();
                        }
                    }
                    hours_rejected |= problems.len() > reported;
                }
                CalendarEntry::Holiday { dates, label, .. } => {
                    holidays.extend(check_dates(dates, label, &mut problems));
                }
                CalendarEntry::Workday { dates, label, .. } => {
                    makeup_days.extend(check_dates(dates, label, &mut problems));
                }
            }
        }
        check_conflicts(&holidays, &makeup_days, &mut problems);
        if !hours_rejected && weekly.iter().all(Vec::is_empty) {
            problems.push(
                Diagnostic::error(
                    decl.name.span,
                    format!("calendar `{}` is never open", decl.name.node),
                )
                .with_help("give it opening hours, e.g. `hours mon..fri 09:00-17:00`"),
            );
        }
        let makeup_weekday = match options.makeup_weekday {
            Some(weekday) => {
                let day = weekday.num_days_from_monday() as usize;
                if weekly[day].is_empty() && !makeup_days.is_empty() {
                    problems.push(Diagnostic::error(
                        decl.name.span,
                        format!(
                            "make-up working days use the hours of {}, which has none",
                            WEEKDAY_NAMES[day]
                        ),
                    ));
                }
                weekday
            }
            None => default_makeup_weekday(&weekly),
        };
        match zone {
            Some(zone) if problems.is_empty() => {
                let holidays: Vec<LabelledDates> = holidays.into_iter().map(|h| h.node).collect();
                let makeup_days: Vec<LabelledDates> =
                    makeup_days.into_iter().map(|m| m.node).collect();
                Ok(Calendar {
                    name: decl.name.node.clone(),
                    zone,
                    weekly,
                    makeup_weekday,
                    special_days: SpecialDays::new(&holidays, &makeup_days),
                    holidays,
                    makeup_days,
                    horizon_days: options.horizon_days,
                })
            }
            _ => {
                problems.sort_by_key(|d| (d.span.file, d.span.start));
                Err(problems)
            }
        }
    }
}

/// Monday, or the first weekday from Monday on that has hours.
fn default_makeup_weekday(weekly: &[Vec<TimeRange>; 7]) -> Weekday {
    let day = weekly
        .iter()
        .position(|hours| !hours.is_empty())
        .unwrap_or(0);
    weekday_from_index(day)
}

fn weekday_from_index(day: usize) -> Weekday {
    match day {
        0 => Weekday::Mon,
        1 => Weekday::Tue,
        2 => Weekday::Wed,
        3 => Weekday::Thu,
        4 => Weekday::Fri,
        5 => Weekday::Sat,
        _ => Weekday::Sun,
    }
}

fn check_zone(zone: &Spanned<String>, problems: &mut Vec<Diagnostic>) -> Option<Tz> {
    if let Ok(tz) = zone.node.parse::<Tz>() {
        return Some(tz);
    }
    let names = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name());
    let help = match did_you_mean(&zone.node, names) {
        Some(name) => format!("did you mean `{name}`?"),
        None => "use an IANA time zone name such as `Asia/Shanghai` or `Europe/Berlin`".to_owned(),
    };
    problems.push(
        Diagnostic::error(zone.span, format!("unknown time zone `{}`", zone.node)).with_help(help),
    );
    None
}

/// `09:00` from minutes since midnight (`24:00` for the end of the day).
pub(crate) fn clock_time(minutes: u16) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

fn time_range_text(range: TimeRange) -> String {
    format!(
        "{}-{}",
        clock_time(range.start_minute),
        clock_time(range.end_minute)
    )
}

/// The valid intervals of one `hours` entry, sorted; problems reported.
fn check_intervals(
    intervals: &[Spanned<TimeRange>],
    problems: &mut Vec<Diagnostic>,
) -> Vec<TimeRange> {
    let mut valid: Vec<&Spanned<TimeRange>> = Vec::new();
    for interval in intervals {
        let range = interval.node;
        let text = time_range_text(range);
        if range.start_minute >= MINUTES_PER_DAY || range.end_minute > MINUTES_PER_DAY {
            problems.push(
                Diagnostic::error(interval.span, format!("`{text}` is not within one day"))
                    .with_help("times of day run from 00:00 to 24:00"),
            );
        } else if range.end_minute < range.start_minute {
            let split = format!(
                "`{}-24:00` on one day and `00:00-{}` on the next",
                clock_time(range.start_minute),
                clock_time(range.end_minute)
            );
            problems.push(
                Diagnostic::error(interval.span, format!("`{text}` ends before it starts"))
                    .with_help(format!(
                        "an interval cannot run past midnight; split it into {split}"
                    )),
            );
        } else if range.end_minute == range.start_minute {
            problems.push(
                Diagnostic::error(
                    interval.span,
                    format!("`{text}` is empty: it ends when it starts"),
                )
                .with_help("give it a later end time, or remove it"),
            );
        } else {
            valid.push(interval);
        }
    }
    valid.sort_by_key(|interval| (interval.node.start_minute, interval.node.end_minute));
    let mut hours: Vec<TimeRange> = Vec::new();
    let mut latest: Option<&Spanned<TimeRange>> = None;
    for interval in valid {
        match latest {
            Some(earlier) if interval.node.start_minute < earlier.node.end_minute => {
                let merged = TimeRange {
                    start_minute: earlier.node.start_minute,
                    end_minute: earlier.node.end_minute.max(interval.node.end_minute),
                };
                problems.push(
                    Diagnostic::error(
                        interval.span,
                        format!(
                            "`{}` overlaps `{}`",
                            time_range_text(interval.node),
                            time_range_text(earlier.node)
                        ),
                    )
                    .with_help(format!(
                        "the intervals of a day must not overlap; write `{}` if one interval is meant",
                        time_range_text(merged)
                    )),
                );
            }
            _ => hours.push(interval.node),
        }
        if latest.is_none_or(|earlier| interval.node.end_minute > earlier.node.end_minute) {
            latest = Some(interval);
        }
    }
    hours
}

fn weekday_set_text(set: WeekdaySet) -> String {
    let name = |day: u8| {
        WEEKDAY_KEYWORDS
            .get(usize::from(day))
            .map_or_else(|| day.to_string(), |k| (*k).to_owned())
    };
    if set.first == set.last {
        name(set.first)
    } else {
        format!("{}..{}", name(set.first), name(set.last))
    }
}

/// The weekdays (Monday = 0) of `set` that may take hours; problems reported.
fn check_weekdays(
    set: &Spanned<WeekdaySet>,
    hours_given_at: &[Option<Span>; 7],
    problems: &mut Vec<Diagnostic>,
) -> Vec<usize> {
    let WeekdaySet { first, last } = set.node;
    if first > 6 || last > 6 {
        problems.push(Diagnostic::error(
            set.span,
            format!("`{}` is not a day of the week", weekday_set_text(set.node)),
        ));
        return Vec::new();
    }
    if first > last {
        problems.push(
            Diagnostic::error(
                set.span,
                format!(
                    "weekday range `{}` runs backwards",
                    weekday_set_text(set.node)
                ),
            )
            .with_help(format!(
                "weeks run from mon to sun; write `{}..sun` and `mon..{}` separately",
                WEEKDAY_KEYWORDS[usize::from(first)],
                WEEKDAY_KEYWORDS[usize::from(last)]
            )),
        );
        return Vec::new();
    }
    let days: Vec<usize> = (usize::from(first)..=usize::from(last)).collect();
    let repeated: Vec<usize> = days
        .iter()
        .copied()
        .filter(|&day| hours_given_at[day].is_some())
        .collect();
    if let Some(&day) = repeated.first() {
        let names: Vec<&str> = repeated.iter().map(|&d| WEEKDAY_NAMES[d]).collect();
        let verb = if repeated.len() == 1 { "has" } else { "have" };
        let mut problem = Diagnostic::error(
            set.span,
            format!("{} already {verb} opening hours", names.join(", ")),
        )
        .with_help(
            "give each weekday its hours once; a day with other hours needs its own `hours` line",
        );
        if let Some(earlier) = hours_given_at[day].filter(|span| span.line > 0) {
            problem = problem.with_note(format!(
                "{} got its hours on line {}",
                names[0], earlier.line
            ));
        }
        problems.push(problem);
    }
    days.into_iter()
        .filter(|&day| hours_given_at[day].is_none())
        .collect()
}

fn date_range_text(range: DateRange) -> String {
    if range.first == range.last {
        range.first.to_string()
    } else {
        format!("{}..{}", range.first, range.last)
    }
}

/// The valid date ranges of a `holiday` or `workday` entry; problems reported.
fn check_dates(
    dates: &[Spanned<DateRange>],
    label: &Option<Spanned<String>>,
    problems: &mut Vec<Diagnostic>,
) -> Vec<Spanned<LabelledDates>> {
    let mut valid = Vec::new();
    for range in dates {
        let DateRange { first, last } = range.node;
        if last < first {
            problems.push(
                Diagnostic::error(
                    range.span,
                    format!("date range `{}..{}` ends before it starts", first, last),
                )
                .with_help(format!("write `{last}..{first}`")),
            );
            continue;
        }
        valid.push(Spanned::new(
            LabelledDates {
                first,
                last,
                label: label.as_ref().map(|l| l.node.clone()),
            },
            range.span,
        ));
    }
    valid
}

/// Reports make-up working days that are also holidays, at the make-up day.
fn check_conflicts(
    holidays: &[Spanned<LabelledDates>],
    makeup_days: &[Spanned<LabelledDates>],
    problems: &mut Vec<Diagnostic>,
) {
    for makeup in makeup_days {
        let clash = holidays.iter().find(|holiday| {
            holiday.node.first <= makeup.node.last && makeup.node.first <= holiday.node.last
        });
        let Some(holiday) = clash else { continue };
        let both = DateRange {
            first: holiday.node.first.max(makeup.node.first),
            last: holiday.node.last.min(makeup.node.last),
        };
        let message = if both.first == both.last {
            format!("{} is both a make-up working day and a holiday", both.first)
        } else {
            format!(
                "{} are both make-up working days and holidays",
                date_range_text(both)
            )
        };
        let mut problem = Diagnostic::error(makeup.span, message)
            .with_help("a date is either a holiday or a working day; remove it from one of them");
        if holiday.span.line > 0 {
            let what = date_range_text(DateRange {
                first: holiday.node.first,
                last: holiday.node.last,
            });
            problem = problem.with_note(format!(
                "the holiday {what} is declared on line {}",
                holiday.span.line
            ));
        }
        problems.push(problem);
    }
}

/// Builds a calendar without a rule file, for tests and for code that has no
/// declaration. Problems are collected and reported by [`CalendarBuilder::build`].
///
/// ```
/// use chrono::{NaiveDate, Weekday};
/// use complaintd::calendar::CalendarBuilder;
///
/// let date = |m, d| NaiveDate::from_ymd_opt(2026, m, d).unwrap();
/// let office = CalendarBuilder::new("office", "Asia/Shanghai")
///     .hours(Weekday::Mon, Weekday::Fri, "08:30-12:00 14:00-17:30")
///     .holiday(date(10, 1), date(10, 7), "国庆节")
///     .workday(date(10, 10), "调休上班")
///     .build()
///     .unwrap();
/// assert_eq!(office.holidays().len(), 1);
/// ```
#[derive(Debug, Clone)]
pub struct CalendarBuilder {
    decl: CalendarDecl,
    options: CalendarOptions,
    problems: Vec<String>,
}

/// Everything wrong with a [`CalendarBuilder`]'s calendar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CalendarBuildError {
    pub problems: Vec<String>,
}

impl fmt::Display for CalendarBuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("; "))
    }
}

impl CalendarBuilder {
    /// A calendar named `name` in the IANA time zone `zone`, closed until
    /// given hours.
    pub fn new(name: &str, zone: &str) -> Self {
        CalendarBuilder {
            decl: CalendarDecl {
                name: Spanned::new(name.to_owned(), Span::default()),
                zone: Spanned::new(zone.to_owned(), Span::default()),
                entries: Vec::new(),
                span: Span::default(),
            },
            options: CalendarOptions::default(),
            problems: Vec::new(),
        }
    }

    /// Opening hours for the weekdays `first..=last`, written like
    /// `"08:30-12:00 14:00-17:30"`; an empty string declares them closed.
    pub fn hours(mut self, first: Weekday, last: Weekday, intervals: &str) -> Self {
        let mut ranges = Vec::new();
        for text in intervals.split_whitespace() {
            match parse_time_range(text) {
                Some(range) => ranges.push(Spanned::new(range, Span::default())),
                None => self
                    .problems
                    .push(format!("`{text}` is not an interval like `09:00-17:30`")),
            }
        }
        let days = WeekdaySet {
            first: first.num_days_from_monday() as u8,
            last: last.num_days_from_monday() as u8,
        };
        self.decl.entries.push(CalendarEntry::Hours {
            days: vec![Spanned::new(days, Span::default())],
            intervals: ranges,
            span: Span::default(),
        });
        self
    }

    /// Holidays from `first` to `last` inclusive.
    pub fn holiday(mut self, first: NaiveDate, last: NaiveDate, label: &str) -> Self {
        self.decl.entries.push(CalendarEntry::Holiday {
            dates: vec![Spanned::new(DateRange { first, last }, Span::default())],
            label: Some(Spanned::new(label.to_owned(), Span::default())),
            span: Span::default(),
        });
        self
    }

    /// A make-up working day on `date`.
    pub fn workday(mut self, date: NaiveDate, label: &str) -> Self {
        self.decl.entries.push(CalendarEntry::Workday {
            dates: vec![Spanned::new(
                DateRange {
                    first: date,
                    last: date,
                },
                Span::default(),
            )],
            label: Some(Spanned::new(label.to_owned(), Span::default())),
            span: Span::default(),
        });
        self
    }

    /// Make-up working days use the hours of `weekday` (default: Monday).
    pub fn makeup_hours_like(mut self, weekday: Weekday) -> Self {
        self.options.makeup_weekday = Some(weekday);
        self
    }

    /// How many days a computation searches before giving up.
    pub fn horizon_days(mut self, days: u32) -> Self {
        self.options.horizon_days = days;
        self
    }

    /// The calendar, or every problem with it.
    pub fn build(self) -> Result<Calendar, CalendarBuildError> {
        let built = Calendar::from_decl_with(&self.decl, self.options);
        let mut problems = self.problems;
        match built {
            Ok(calendar) if problems.is_empty() => Ok(calendar),
            Ok(_) => Err(CalendarBuildError { problems }),
            Err(diagnostics) => {
                problems.extend(diagnostics.into_iter().map(|d| match d.help {
                    Some(help) => format!("{} ({help})", d.message),
                    None => d.message,
                }));
                Err(CalendarBuildError { problems })
            }
        }
    }
}

/// `"09:00-17:30"` as minutes since midnight; `24:00` is allowed.
fn parse_time_range(text: &str) -> Option<TimeRange> {
    let (start, end) = text.split_once('-')?;
    Some(TimeRange {
        start_minute: parse_clock_time(start)?,
        end_minute: parse_clock_time(end)?,
    })
}

fn parse_clock_time(text: &str) -> Option<u16> {
    let (hours, minutes) = text.split_once(':')?;
    let two_digits = |part: &str| part.len() == 2 && part.bytes().all(|b| b.is_ascii_digit());
    if !two_digits(hours) || !two_digits(minutes) {
        return None;
    }
    let hours: u16 = hours.parse().ok()?;
    let minutes: u16 = minutes.parse().ok()?;
    (hours <= 24 && minutes < 60 && hours * 60 + minutes <= MINUTES_PER_DAY)
        .then_some(hours * 60 + minutes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_times_need_two_digit_hours_and_minutes_within_the_day() {
        assert_eq!(parse_clock_time("08:30"), Some(510));
        assert_eq!(parse_clock_time("24:00"), Some(1440));
        assert_eq!(parse_clock_time("8:30"), None);
        assert_eq!(parse_clock_time("+8:30"), None);
        assert_eq!(parse_clock_time("24:30"), None);
        assert_eq!(parse_clock_time("12:60"), None);
        assert_eq!(
            parse_time_range("08:30-12:00"),
            Some(TimeRange {
                start_minute: 510,
                end_minute: 720
            })
        );
        assert_eq!(parse_time_range("08:30–12:00"), None);
    }

    #[test]
    fn builder_problems_are_all_reported() {
        let error = CalendarBuilder::new("office", "Europe/Berln")
            .hours(Weekday::Mon, Weekday::Fri, "9-17 12:00-11:00")
            .build()
            .expect_err("three problems");
        assert_eq!(
            error.problems,
            vec![
                "`9-17` is not an interval like `09:00-17:30`".to_owned(),
                "unknown time zone `Europe/Berln` (did you mean `Europe/Berlin`?)".to_owned(),
                "`12:00-11:00` ends before it starts (an interval cannot run past midnight; \
                 split it into `12:00-24:00` on one day and `00:00-11:00` on the next)"
                    .to_owned(),
            ]
        );
    }

    #[test]
    fn touching_intervals_are_not_overlapping() {
        let calendar = CalendarBuilder::new("office", "UTC")
            .hours(Weekday::Mon, Weekday::Fri, "12:00-17:00 08:00-12:00")
            .build()
            .expect("touching intervals are fine");
        assert_eq!(
            calendar.weekly_hours(Weekday::Mon),
            &[
                TimeRange {
                    start_minute: 480,
                    end_minute: 720
                },
                TimeRange {
                    start_minute: 720,
                    end_minute: 1020
                }
            ]
        );
    }

    #[test]
    fn an_interval_overlapping_several_is_reported_against_the_one_reaching_furthest() {
        let error = CalendarBuilder::new("office", "UTC")
            .hours(
                Weekday::Mon,
                Weekday::Fri,
                "08:00-18:00 09:00-10:00 17:00-19:00",
            )
            .build()
            .expect_err("overlaps");
        assert_eq!(
            error.problems,
            vec![
                "`09:00-10:00` overlaps `08:00-18:00` (the intervals of a day must not overlap; \
                 write `08:00-18:00` if one interval is meant)"
                    .to_owned(),
                "`17:00-19:00` overlaps `08:00-18:00` (the intervals of a day must not overlap; \
                 write `08:00-19:00` if one interval is meant)"
                    .to_owned(),
            ]
        );
    }
}

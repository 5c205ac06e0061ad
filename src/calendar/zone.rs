//! Local wall-clock time to instants in a time zone, with one rule for DST gaps and overlaps.
//!
//! Every local time is resolved the same way: a time that exists once is that
//! instant; a time that occurs twice (clocks go back) is its earlier
//! occurrence; a time that does not exist (clocks go forward) is the first
//! instant after the gap. The mapping never decreases as local time grows, so
//! intervals that are ordered and disjoint in local time stay so as instants.

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;

/// How a local time was turned into an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolution {
    /// The local time exists exactly once.
    Exact,
    /// The local time occurs twice; the earlier occurrence was taken.
    Earlier,
    /// The local time falls in a gap; the first instant after it was taken.
    AfterGap,
}

/// The instant of `local` in `zone` under the module's rule, or `None` at the
/// edges of the representable range.
pub(crate) fn resolve(zone: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    resolve_explained(zone, local).map(|(at, _)| at)
}

/// Like [`resolve`], also saying which case applied.
pub(crate) fn resolve_explained(
    zone: Tz,
    local: NaiveDateTime,
) -> Option<(DateTime<Utc>, Resolution)> {
    match zone.from_local_datetime(&local) {
        LocalResult::Single(at) => Some((at.with_timezone(&Utc), Resolution::Exact)),
        LocalResult::Ambiguous(earlier, _) => {
            Some((earlier.with_timezone(&Utc), Resolution::Earlier))
        }
        LocalResult::None => {
            first_instant_after_gap(zone, local).map(|at| (at, Resolution::AfterGap))
        }
    }
}

/// The wall-clock time of `at` in `zone`.
pub(crate) fn wall(zone: Tz, at: DateTime<Utc>) -> NaiveDateTime {
    at.with_timezone(&zone).naive_local()
}

/// The first instant whose wall-clock time is at or after `local`, for a
/// `local` that falls in a gap.
///
/// UTC offsets lie within ±15 hours, so the jump over `local` happens within
/// 15 hours either side of `local` read as UTC; a binary search over whole
/// seconds finds it in about 17 offset lookups. Gaps are rare, so this is off
/// the hot path.
fn first_instant_after_gap(zone: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    let reaches = |at: DateTime<Utc>| wall(zone, at) >= local;
    let pivot = local.and_utc();
    let mut before = pivot.checked_sub_signed(TimeDelta::hours(15))?;
    let mut after = pivot.checked_add_signed(TimeDelta::hours(15))?;
    if reaches(before) || !reaches(after) {
        return None;
    }
    while after - before > TimeDelta::seconds(1) {
        let middle = before + (after - before) / 2;
        if reaches(middle) {
            after = middle;
        } else {
            before = middle;
        }
    }
    // `after` is within a second of the transition; transitions fall on whole
    // seconds, so rounding down to one finds it exactly when it is reached.
    let whole = DateTime::from_timestamp(after.timestamp(), 0)?;
    Some(if reaches(whole) { whole } else { after })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;
    use chrono_tz::Europe::Berlin;

    fn local(y: i32, m: u32, d: u32, h: u32, min: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(y, m, d)
            .and_then(|date| date.and_hms_opt(h, min, 0))
            .expect("valid test date")
    }

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().expect("valid test instant")
    }

    #[test]
    fn a_time_in_the_spring_gap_becomes_the_end_of_the_gap() {
        // Berlin jumps from 02:00 CET to 03:00 CEST at 01:00 UTC.
        assert_eq!(
            resolve_explained(Berlin, local(2026, 3, 29, 2, 30)),
            Some((utc("2026-03-29T01:00:00Z"), Resolution::AfterGap))
        );
    }

    #[test]
    fn a_repeated_time_in_autumn_is_its_earlier_occurrence() {
        // 02:30 occurs at 00:30 UTC (CEST) and again at 01:30 UTC (CET).
        assert_eq!(
            resolve_explained(Berlin, local(2026, 10, 25, 2, 30)),
            Some((utc("2026-10-25T00:30:00Z"), Resolution::Earlier))
        );
    }

    #[test]
    fn an_ordinary_time_is_exact() {
        assert_eq!(
            resolve_explained(Berlin, local(2026, 7, 1, 9, 0)),
            Some((utc("2026-07-01T07:00:00Z"), Resolution::Exact))
        );
    }
}

//! Serde encoding of `DateTime<Utc>` as chrono writes it (RFC 3339, `Z`, only the
//! fractional digits needed), without chrono's `fmt`-based writer and relaxed parser.
//!
//! Use with `#[serde(with = "crate::serde_time")]` (or `serde_time::option` for an
//! `Option`, together with `#[serde(default)]` so a missing key still means `None`).
//! The bytes are exactly those of chrono's own `Serialize`, and everything chrono's
//! `Deserialize` accepts is still accepted: the common form (the one written here) is
//! read directly, anything else goes through chrono. Events and cases carry several
//! instants each, and chrono's general path was half the cost of encoding an event.

use std::fmt;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveTime, Timelike, Utc};
use serde::{de, Deserializer, Serialize, Serializer};

/// The longest form written here: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
const LONGEST: usize = 30;

/// An instant written as chrono's `Serialize` writes it, in a buffer on the stack.
struct Rfc3339 {
    bytes: [u8; LONGEST],
    len: usize,
}

impl Rfc3339 {
    /// The text of `at`, or `None` where chrono writes a form not handled here
    /// (years outside 0..=9999, leap seconds).
    fn of(at: &DateTime<Utc>) -> Option<Rfc3339> {
        // `DateTime`'s own accessors each add the (zero) offset again; the naive parts do not.
        let naive = at.naive_utc();
        let (date, time) = (naive.date(), naive.time());
        let year = date.year();
        let nanos = time.nanosecond();
        if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
            return None;
        }
        let mut text = Rfc3339 {
            bytes: [0; LONGEST],
            len: 0,
        };
        text.digits(year as u32, 4);
        text.push(b'-');
        text.digits(date.month(), 2);
        text.push(b'-');
        text.digits(date.day(), 2);
        text.push(b'T');
        text.digits(time.hour(), 2);
        text.push(b':');
        text.digits(time.minute(), 2);
        text.push(b':');
        text.digits(time.second(), 2);
        // chrono's `SecondsFormat::AutoSi`: milli-, micro- or nanoseconds, whichever is exact.
        if nanos != 0 {
            text.push(b'.');
            if nanos % 1_000_000 == 0 {
                text.digits(nanos / 1_000_000, 3);
            } else if nanos % 1_000 == 0 {
                text.digits(nanos / 1_000, 6);
            } else {
                text.digits(nanos, 9);
            }
        }
        text.push(b'Z');
        Some(text)
    }

    fn push(&mut self, byte: u8) {
        self.bytes[self.len] = byte;
        self.len += 1;
    }

    /// Writes `value` as exactly `width` decimal digits, zero-padded.
    fn digits(&mut self, mut value: u32, width: usize) {
        for slot in self.bytes[self.len..self.len + width].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
        self.len += width;
    }

    fn as_str(&self) -> &str {
        // Only ASCII digits and punctuation are ever pushed.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

/// Serializes `at` exactly as chrono's `Serialize for DateTime<Utc>` does.
pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    match Rfc3339::of(at) {
        Some(text) => serializer.serialize_str(text.as_str()),
        None => at.serialize(serializer),
    }
}

/// Deserializes what chrono's `Deserialize for DateTime<Utc>` accepts, to the same value.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
    deserializer.deserialize_str(InstantVisitor)
}

/// Reads `YYYY-MM-DDTHH:MM:SS[.fff|.ffffff|.fffffffff]Z`, the form `serialize` writes;
/// `None` for anything else, including invalid dates, which chrono then judges.
fn parse_written_form(text: &str) -> Option<DateTime<Utc>> {
    let bytes = text.as_bytes();
    let fraction_digits = match bytes.len() {
        20 => 0,
        24 => 3,
        27 => 6,
        30 => 9,
        _ => return None,
    };
    let number = |from: usize, width: usize| -> Option<u32> {
        bytes[from..from + width].iter().try_fold(0u32, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
        })
    };
    let punctuation_in_place = bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b'T'
        && bytes[13] == b':'
        && bytes[16] == b':'
        && bytes[bytes.len() - 1] == b'Z'
        && (fraction_digits == 0 || bytes[19] == b'.');
    if !punctuation_in_place {
        return None;
    }
    let nanos = match fraction_digits {
        0 => 0,
        digits => number(20, digits)? * 10u32.pow(9 - digits as u32),
    };
    let date = NaiveDate::from_ymd_opt(number(0, 4)? as i32, number(5, 2)?, number(8, 2)?)?;
    // A second of 60 (a leap second) is left to chrono.
    let time = NaiveTime::from_hms_nano_opt(
        number(11, 2)?,
        number(14, 2)?,
        Some(number(17, 2)?).filter(|s| *s < 60)?,
        nanos,
    )?;
    Some(date.and_time(time).and_utc())
}

struct InstantVisitor;

impl de::Visitor<'_> for InstantVisitor {
    type Value = DateTime<Utc>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an RFC 3339 formatted date and time string")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        match parse_written_form(text) {
            Some(at) => Ok(at),
            None => text
                .parse::<DateTime<FixedOffset>>()
                .map(|at| at.with_timezone(&Utc))
                .map_err(E::custom),
        }
    }
}

/// The same encoding for an `Option<DateTime<Utc>>`: `null` for `None`.
pub mod option {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        at: &Option<DateTime<Utc>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => super::serialize(at, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<DateTime<Utc>>, D::Error> {
        #[derive(Deserialize)]
        struct Instant(#[serde(with = "super")] DateTime<Utc>);
        Ok(Option::<Instant>::deserialize(deserializer)?.map(|Instant(at)| at))
    }
}

/// Reads one instant as `deserialize` does, for hand-written `Deserialize` impls.
pub(crate) struct Rfc3339Seed;

impl<'de> de::DeserializeSeed<'de> for Rfc3339Seed {
    type Value = DateTime<Utc>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<DateTime<Utc>, D::Error> {
        deserialize(deserializer)
    }
}

/// The encoding written by reference to a `DateTime<Utc>`, for hand-written `Serialize` impls.
pub(crate) struct AsRfc3339<'a>(pub &'a DateTime<Utc>);

impl Serialize for AsRfc3339<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize(self.0, serializer)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Fast(#[serde(with = "super")] DateTime<Utc>);

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct FastOption(#[serde(with = "super::option")] Option<DateTime<Utc>>);

    /// Instants over chrono's whole range, with each kind of fraction.
    pub(crate) fn any_instant() -> impl Strategy<Value = DateTime<Utc>> {
        let fraction = prop_oneof![
            Just(0u32),
            (1u32..1000).prop_map(|ms| ms * 1_000_000),
            (1u32..1_000_000).prop_map(|us| us * 1_000),
            0u32..1_000_000_000,
            // Leap seconds.
            1_000_000_000u32..2_000_000_000,
        ];
        let seconds = prop_oneof![
            -62_135_596_800i64..253_402_300_800, // years 1..=9999
            DateTime::<Utc>::MIN_UTC.timestamp()..DateTime::<Utc>::MAX_UTC.timestamp(),
        ];
        (seconds, fraction).prop_filter_map("a representable instant", |(s, n)| {
            Utc.timestamp_opt(s, n).single()
        })
    }

    proptest! {
        #[test]
        fn writes_what_chrono_writes_and_reads_it_back(at in any_instant()) {
            let chrono_json = serde_json::to_string(&at).expect("chrono encodes");
            let fast_json = serde_json::to_string(&Fast(at)).expect("encodes");
            prop_assert_eq!(&fast_json, &chrono_json);
            let read: Fast = serde_json::from_str(&chrono_json).expect("decodes");
            let chrono_read: DateTime<Utc> = serde_json::from_str(&chrono_json).expect("chrono decodes");
            prop_assert_eq!(read.0, chrono_read);
            prop_assert_eq!(read.0, at);
        }

        #[test]
        fn reads_like_chrono_whatever_the_text(
            text in "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,10})?([Zz]|[+-][0-9]{2}:[0-9]{2})?"
        ) {
            let json = serde_json::to_string(&text).expect("a string encodes");
            let fast = serde_json::from_str::<Fast>(&json).map(|f| f.0).map_err(|e| e.to_string());
            let chrono = serde_json::from_str::<DateTime<Utc>>(&json).map_err(|e| e.to_string());
            prop_assert_eq!(fast, chrono);
        }

        #[test]
        fn option_writes_null_or_the_instant(at in proptest::option::of(any_instant())) {
            let chrono_json = serde_json::to_string(&at).expect("chrono encodes");
            prop_assert_eq!(serde_json::to_string(&FastOption(at)).expect("encodes"), chrono_json.clone());
            let read: FastOption = serde_json::from_str(&chrono_json).expect("decodes");
            prop_assert_eq!(read.0, at);
        }
    }

    #[test]
    fn examples_of_each_fraction_length() {
        let at = |nanos| {
            Utc.with_ymd_and_hms(2026, 3, 2, 9, 5, 7)
                .single()
                .expect("valid")
                + chrono::Duration::nanoseconds(nanos)
        };
        let json = |nanos| serde_json::to_string(&Fast(at(nanos))).expect("encodes");
        assert_eq!(json(0), r#""2026-03-02T09:05:07Z""#);
        assert_eq!(json(120_000_000), r#""2026-03-02T09:05:07.120Z""#);
        assert_eq!(json(120_500_000), r#""2026-03-02T09:05:07.120500Z""#);
        assert_eq!(json(120_500_001), r#""2026-03-02T09:05:07.120500001Z""#);
    }

    #[test]
    fn other_offsets_and_bad_text_go_through_chrono() {
        let read = |text: &str| serde_json::from_str::<Fast>(text).map(|f| f.0);
        let expected = Utc
            .with_ymd_and_hms(2026, 3, 2, 1, 0, 0)
            .single()
            .expect("valid");
        assert_eq!(read(r#""2026-03-02T09:00:00+08:00""#).ok(), Some(expected));
        let error = read(r#""2026-02-30T09:00:00Z""#).expect_err("no 30 February");
        assert!(error.to_string().contains("out of range"), "{error}");
        assert!(read("12").is_err());
    }
}

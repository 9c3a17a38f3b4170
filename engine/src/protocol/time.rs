//! RFC 3339 timestamps with millisecond precision, parsed and printed the way mppx (JavaScript
//! `Date`) does: `expires` and receipt `timestamp`.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::ProtocolError;
use super::error::echo;

const MILLIS_PER_DAY: i64 = 86_400_000;
/// 0000-01-01T00:00:00.000Z, the earliest instant `toISOString` prints with four year digits.
const MIN_MILLIS: i64 = -62_167_219_200_000;
/// 9999-12-31T23:59:59.999Z.
const MAX_MILLIS: i64 = 253_402_300_799_999;

/// An instant, as milliseconds since the Unix epoch, within years 0000..=9999.
///
/// The protocol module never reads the clock: callers pass `now` in (see
/// [`Timestamp::from_system_time`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The instant `millis` milliseconds after the Unix epoch; `None` outside years 0000..=9999.
    pub const fn from_unix_millis(millis: i64) -> Option<Self> {
        if millis < MIN_MILLIS || millis > MAX_MILLIS {
            None
        } else {
            Some(Self(millis))
        }
    }

    /// Milliseconds since the Unix epoch.
    pub const fn unix_millis(self) -> i64 {
        self.0
    }

    /// Converts a `SystemTime` (e.g. `SystemTime::now()` read by the caller), truncating to the
    /// millisecond; `None` outside years 0000..=9999.
    pub fn from_system_time(time: SystemTime) -> Option<Self> {
        let millis = match time.duration_since(UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_millis()).ok()?,
            Err(before) => {
                // Round towards negative infinity so that truncation is monotonic.
                let d = before.duration();
                let whole = i64::try_from(d.as_millis()).ok()?;
                if d.subsec_nanos() % 1_000_000 == 0 {
                    -whole
                } else {
                    -whole - 1
                }
            }
        };
        Self::from_unix_millis(millis)
    }

    /// This instant plus `duration` (e.g. `now + 5 min` for a default `expires`); `None` past
    /// year 9999.
    pub fn checked_add(self, duration: Duration) -> Option<Self> {
        let add = i64::try_from(duration.as_millis()).ok()?;
        Self::from_unix_millis(self.0.checked_add(add)?)
    }

    /// Parses an RFC 3339 date-time of the shape mppx accepts:
    /// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
    ///
    /// Fractions beyond milliseconds are truncated (as `Date` does). Unlike `Date`, impossible
    /// calendar values (February 31st, hour 24, second 60) are refused rather than rolled over.
    pub fn parse_rfc3339(text: &str) -> Result<Self, ProtocolError> {
        parse(text.as_bytes()).ok_or_else(|| ProtocolError::InvalidTimestamp { value: echo(text) })
    }

    /// Whether `text` has the shape mppx's schema accepts for `expires`, without checking that
    /// the calendar values exist (mppx defers that to verification).
    pub(crate) fn has_rfc3339_shape(text: &str) -> bool {
        split(text.as_bytes()).is_some()
    }

    /// `YYYY-MM-DDTHH:MM:SS.sssZ`, exactly as JavaScript's `Date.prototype.toISOString()`.
    pub fn to_iso_string(self) -> String {
        let days = self.0.div_euclid(MILLIS_PER_DAY);
        let ms_of_day = self.0.rem_euclid(MILLIS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        let hour = ms_of_day / 3_600_000;
        let minute = ms_of_day / 60_000 % 60;
        let second = ms_of_day / 1000 % 60;
        let milli = ms_of_day % 1000;
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{milli:03}Z")
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_iso_string())
    }
}

/// The digit groups of a date-time: (date-time digits, fraction digits, offset).
struct Parts<'a> {
    fields: [u32; 6],
    fraction: &'a [u8],
    /// Offset east of UTC in minutes.
    offset_minutes: i64,
}

fn digits(bytes: &[u8]) -> Option<u32> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        bytes
            .iter()
            .fold(0, |acc, b| acc * 10 + u32::from(b - b'0')),
    )
}

/// Checks the shape `\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})` and splits it.
fn split(s: &[u8]) -> Option<Parts<'_>> {
    if s.len() < 20 {
        return None;
    }
    let sep_ok = s[4] == b'-' && s[7] == b'-' && s[10] == b'T' && s[13] == b':' && s[16] == b':';
    if !sep_ok {
        return None;
    }
    let fields = [
        digits(&s[0..4])?,
        digits(&s[5..7])?,
        digits(&s[8..10])?,
        digits(&s[11..13])?,
        digits(&s[14..16])?,
        digits(&s[17..19])?,
    ];
    let mut rest = &s[19..];
    let mut fraction: &[u8] = &[];
    if let Some(after_dot) = rest.strip_prefix(b".") {
        let n = after_dot.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        fraction = &after_dot[..n];
        rest = &after_dot[n..];
    }
    let offset_minutes = match rest {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let hours = i64::from(digits(&[*h1, *h2])?);
            let minutes = i64::from(digits(&[*m1, *m2])?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let total = hours * 60 + minutes;
            if *sign == b'+' { total } else { -total }
        }
        _ => return None,
    };
    Some(Parts {
        fields,
        fraction,
        offset_minutes,
    })
}

fn parse(s: &[u8]) -> Option<Timestamp> {
    let Parts {
        fields: [year, month, day, hour, minute, second],
        fraction,
        offset_minutes,
    } = split(s)?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut millis_frac = 0_i64;
    for (i, scale) in [100, 10, 1].into_iter().enumerate() {
        if let Some(d) = fraction.get(i) {
            millis_frac += i64::from(d - b'0') * scale;
        }
    }
    let days = days_from_civil(i64::from(year), month, day);
    let local = days * MILLIS_PER_DAY
        + i64::from(hour) * 3_600_000
        + i64::from(minute) * 60_000
        + i64::from(second) * 1000
        + millis_frac;
    Timestamp::from_unix_millis(local - offset_minutes * 60_000)
}

const fn is_leap(year: u32) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

const fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (era-based day counting).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    // Count years from March so that the leap day is the last day of the counting year.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y.rem_euclid(400);
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn parses_and_prints_like_javascript_date() {
        // Values checked against node's `new Date(s).toISOString()` / `.getTime()`.
        assert_eq!(ts("1970-01-01T00:00:00Z").unix_millis(), 0);
        assert_eq!(ts("2030-01-01T00:00:00Z").unix_millis(), 1_893_456_000_000);
        assert_eq!(
            ts("2030-01-01T00:00:00Z").to_iso_string(),
            "2030-01-01T00:00:00.000Z"
        );
        assert_eq!(
            ts("2030-01-01T00:00:01.000Z").to_iso_string(),
            "2030-01-01T00:00:01.000Z"
        );
        assert_eq!(
            ts("2030-01-01T00:00:00.1Z").to_iso_string(),
            "2030-01-01T00:00:00.100Z"
        );
        assert_eq!(
            ts("2030-01-01T00:00:00.123999Z").to_iso_string(),
            "2030-01-01T00:00:00.123Z"
        );
        assert_eq!(
            ts("2030-01-01T23:59:59+23:59").to_iso_string(),
            "2030-01-01T00:00:59.000Z"
        );
        assert_eq!(
            ts("2030-01-01T00:00:00-01:30").to_iso_string(),
            "2030-01-01T01:30:00.000Z"
        );
        assert_eq!(
            ts("2024-02-29T12:00:00Z").to_iso_string(),
            "2024-02-29T12:00:00.000Z"
        );
        assert_eq!(ts("0000-01-01T00:00:00Z").unix_millis(), MIN_MILLIS);
        assert_eq!(ts("9999-12-31T23:59:59.999Z").unix_millis(), MAX_MILLIS);
        assert_eq!(ts("1969-12-31T23:59:59.999Z").unix_millis(), -1);
    }

    #[test]
    fn refuses_bad_shapes_and_impossible_dates() {
        for bad in [
            "",
            "2030-01-01",
            "2030-01-01T00:00:00",
            "2030-01-01 00:00:00Z",
            "2030-01-01T00:00:00.Z",
            "2030-01-01T00:00:00z",
            "2030-01-01T00:00:00+0100",
            "2030-01-01T00:00:00+24:00",
            "2030-13-01T00:00:00Z",
            "2030-00-01T00:00:00Z",
            "2030-02-29T00:00:00Z",
            "2030-04-31T00:00:00Z",
            "2030-01-01T24:00:00Z",
            "2030-01-01T00:60:00Z",
            "2030-01-01T00:00:60Z",
            "+2030-01-01T00:00:00Z",
            "2030-01-01T00:00:00Z ",
            "0000-01-01T00:00:00+00:01",
        ] {
            assert!(Timestamp::parse_rfc3339(bad).is_err(), "{bad:?}");
        }
        // Shape is fine, calendar is not: accepted by the schema check, refused by the parser.
        assert!(Timestamp::has_rfc3339_shape("2030-02-31T00:00:00Z"));
        assert!(!Timestamp::has_rfc3339_shape("2030-02-31"));
    }

    #[test]
    fn system_time_conversion_truncates_to_millis() {
        let t = UNIX_EPOCH + Duration::from_nanos(1_500_000_123);
        assert_eq!(Timestamp::from_system_time(t).unwrap().unix_millis(), 1_500);
        let before = UNIX_EPOCH - Duration::from_nanos(1_500_000);
        assert_eq!(
            Timestamp::from_system_time(before).unwrap().unix_millis(),
            -2
        );
        let five_min = ts("2030-01-01T00:00:00Z")
            .checked_add(Duration::from_secs(300))
            .unwrap();
        assert_eq!(five_min.to_iso_string(), "2030-01-01T00:05:00.000Z");
        assert_eq!(Timestamp::from_unix_millis(MAX_MILLIS + 1), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn iso_string_round_trips(millis in MIN_MILLIS..=MAX_MILLIS) {
            let t = Timestamp::from_unix_millis(millis).unwrap();
            prop_assert_eq!(Timestamp::parse_rfc3339(&t.to_iso_string()).unwrap(), t);
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,40}") {
            let _ = Timestamp::parse_rfc3339(&s);
        }
    }
}

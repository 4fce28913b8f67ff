//! A strict RFC 3339 date-time parser: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
//!
//! Hand-written rather than chrono's parser because chrono accepts more than
//! the contract allows (a space for `T`, leap seconds) and because this runs
//! three times per entry on the hot path: it reads bytes once and never
//! allocates.

use std::fmt;

/// The expected shape, quoted in every INVALID_DATETIME message.
pub(crate) const EXPECTED_FORMAT: &str = "YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)";

/// Microseconds in one minute.
pub(crate) const MICROS_PER_MINUTE: i64 = 60_000_000;

/// Why a string is not an accepted date-time; displayed inside messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DtError {
    Syntax,
    NoOffset,
    Month(u32),
    Day { year: i64, month: u32, day: u32 },
    Hour(u32),
    Minute(u32),
    Second(u32),
    Offset,
    Trailing,
}

impl fmt::Display for DtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DtError::Syntax => f.write_str("it does not have the form YYYY-MM-DDTHH:MM:SS"),
            DtError::NoOffset => f.write_str("it has no UTC offset (Z or ±HH:MM)"),
            DtError::Month(m) => write!(f, "month {m:02} does not exist"),
            DtError::Day { year, month, day } => {
                write!(f, "day {day:02} does not exist in {year:04}-{month:02}")
            }
            DtError::Hour(h) => write!(f, "hour {h:02} is out of range 00-23"),
            DtError::Minute(m) => write!(f, "minute {m:02} is out of range 00-59"),
            DtError::Second(60) => f.write_str("leap seconds (second 60) are not accepted"),
            DtError::Second(s) => write!(f, "second {s:02} is out of range 00-59"),
            DtError::Offset => {
                f.write_str("the UTC offset is not Z or ±HH:MM with HH 00-23, MM 00-59")
            }
            DtError::Trailing => f.write_str("there are extra characters after the UTC offset"),
        }
    }
}

/// Parses a date-time into microseconds since the Unix epoch (UTC).
///
/// Fraction digits beyond the sixth are accepted and truncated: instants are
/// compared at microsecond precision. Years 0000-9999 fit easily in an `i64`
/// of microseconds, so no arithmetic here can overflow.
///
/// One function on purpose (about 110 lines, a fifth of them the single
/// slice pattern): it runs three times per entry on the validation hot path
/// and reads the bytes once, front to back.
pub(crate) fn parse_rfc3339_micros(s: &str) -> Result<i64, DtError> {
    let b = s.as_bytes();
    // One slice pattern: a single length check, no per-byte bounds checks.
    let [
        y0,
        y1,
        y2,
        y3,
        b'-',
        mo0,
        mo1,
        b'-',
        d0,
        d1,
        b'T' | b't',
        h0,
        h1,
        b':',
        mi0,
        mi1,
        b':',
        s0,
        s1,
        ..,
    ] = *b
    else {
        return Err(DtError::Syntax);
    };
    let (Some(century), Some(yy), Some(month), Some(day), Some(hour), Some(minute), Some(second)) = (
        two(y0, y1),
        two(y2, y3),
        two(mo0, mo1),
        two(d0, d1),
        two(h0, h1),
        two(mi0, mi1),
        two(s0, s1),
    ) else {
        return Err(DtError::Syntax);
    };
    let year = century * 100 + yy;

    let mut i = 19;
    let mut micros: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let frac_start = i;
        while let Some(c) = b.get(i).filter(|c| c.is_ascii_digit()) {
            if i - frac_start < 6 {
                micros = micros * 10 + i64::from(c - b'0');
            }
            i += 1;
        }
        let n = i - frac_start;
        if n == 0 {
            return Err(DtError::Syntax);
        }
        // Scale n < 6 digits up to microseconds; six or more already are.
        const SCALE: [i64; 5] = [100_000, 10_000, 1_000, 100, 10];
        micros *= SCALE.get(n - 1).copied().unwrap_or(1);
    }

    let offset_seconds: i64 = match b.get(i) {
        None => return Err(DtError::NoOffset),
        Some(b'Z' | b'z') => {
            i += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            let Some(&[h0, h1, b':', m0, m1]) = b.get(i + 1..i + 6) else {
                return Err(DtError::Offset);
            };
            let (Some(oh), Some(om)) = (two(h0, h1), two(m0, m1)) else {
                return Err(DtError::Offset);
            };
            if oh > 23 || om > 59 {
                return Err(DtError::Offset);
            }
            i += 6;
            let secs = i64::from(oh) * 3600 + i64::from(om) * 60;
            if sign == b'-' { -secs } else { secs }
        }
        Some(_) => return Err(DtError::Syntax),
    };
    if i != b.len() {
        return Err(DtError::Trailing);
    }

    if !(1..=12).contains(&month) {
        return Err(DtError::Month(month));
    }
    let year = i64::from(year);
    if day < 1 || day > days_in_month(year, month) {
        return Err(DtError::Day { year, month, day });
    }
    if hour > 23 {
        return Err(DtError::Hour(hour));
    }
    if minute > 59 {
        return Err(DtError::Minute(minute));
    }
    if second > 59 {
        return Err(DtError::Second(second));
    }

    let days = days_from_civil(year, month, day);
    let seconds =
        days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second)
            - offset_seconds;
    Ok(seconds * 1_000_000 + micros)
}

/// Two ASCII digits as a number, or `None`.
#[inline]
fn two(a: u8, b: u8) -> Option<u32> {
    let (a, b) = (a.wrapping_sub(b'0'), b.wrapping_sub(b'0'));
    (a < 10 && b < 10).then(|| u32::from(a) * 10 + u32::from(b))
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> i64 {
        parse_rfc3339_micros(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> DtError {
        parse_rfc3339_micros(s).expect_err(s)
    }

    #[test]
    fn agrees_with_chrono_on_valid_inputs() {
        for s in [
            "1970-01-01T00:00:00Z",
            "2024-01-15T08:00:00.000Z",
            "2024-02-29T23:59:59.999999+14:00",
            "2000-02-29T12:00:00-05:30",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.5-23:59",
            "1969-12-31T23:59:59.25Z",
            "2024-03-31T03:00:00+02:00",
        ] {
            let chrono = chrono::DateTime::parse_from_rfc3339(s).unwrap();
            assert_eq!(ok(s), chrono.timestamp_micros(), "{s}");
        }
    }

    #[test]
    fn lowercase_t_and_z_are_rfc_3339() {
        assert_eq!(ok("2024-01-15t08:00:00z"), ok("2024-01-15T08:00:00Z"));
    }

    #[test]
    fn offsets_are_normalised() {
        assert_eq!(ok("2024-01-15T10:00:00+02:00"), ok("2024-01-15T08:00:00Z"));
        assert_eq!(ok("2024-01-15T03:00:00-05:00"), ok("2024-01-15T08:00:00Z"));
        assert_eq!(ok("2024-01-15T08:00:00-00:00"), ok("2024-01-15T08:00:00Z"));
    }

    #[test]
    fn fractions_keep_microseconds_and_truncate_beyond() {
        let base = ok("2024-01-15T08:00:00Z");
        assert_eq!(ok("2024-01-15T08:00:00.5Z") - base, 500_000);
        assert_eq!(ok("2024-01-15T08:00:00.123Z") - base, 123_000);
        assert_eq!(ok("2024-01-15T08:00:00.000001Z") - base, 1);
        assert_eq!(ok("2024-01-15T08:00:00.1234569999Z") - base, 123_456);
    }

    #[test]
    fn rejects_what_the_contract_rejects() {
        assert_eq!(err("2024-01-15T08:00:00"), DtError::NoOffset);
        assert_eq!(err("2024-01-15T08:00:00.000"), DtError::NoOffset);
        assert_eq!(
            err("2024-02-30T08:00:00Z"),
            DtError::Day {
                year: 2024,
                month: 2,
                day: 30
            }
        );
        assert_eq!(
            err("2023-02-29T08:00:00Z"),
            DtError::Day {
                year: 2023,
                month: 2,
                day: 29
            }
        );
        assert_eq!(
            err("1900-02-29T08:00:00Z"),
            DtError::Day {
                year: 1900,
                month: 2,
                day: 29
            }
        );
        assert_eq!(err("2024-13-01T08:00:00Z"), DtError::Month(13));
        assert_eq!(err("2024-00-01T08:00:00Z"), DtError::Month(0));
        assert_eq!(
            err("2024-01-00T08:00:00Z"),
            DtError::Day {
                year: 2024,
                month: 1,
                day: 0
            }
        );
        assert_eq!(err("2024-01-15T24:00:00Z"), DtError::Hour(24));
        assert_eq!(err("2024-01-15T08:60:00Z"), DtError::Minute(60));
        assert_eq!(err("2024-12-31T23:59:60Z"), DtError::Second(60));
        assert_eq!(err("2024-01-15 08:00:00Z"), DtError::Syntax);
        assert_eq!(err("2024-01-15"), DtError::Syntax);
        assert_eq!(err(""), DtError::Syntax);
        assert_eq!(err("2024-1-15T08:00:00Z"), DtError::Syntax);
        assert_eq!(err("+2024-01-15T08:00:00Z"), DtError::Syntax);
        assert_eq!(err("2024-01-15T08:00:00.Z"), DtError::Syntax);
        assert_eq!(err("2024-01-15T08:00Z"), DtError::Syntax);
        assert_eq!(err("2024-01-15T08:00:00+0200"), DtError::Offset);
        assert_eq!(err("2024-01-15T08:00:00+02"), DtError::Offset);
        assert_eq!(err("2024-01-15T08:00:00+24:00"), DtError::Offset);
        assert_eq!(err("2024-01-15T08:00:00+02:60"), DtError::Offset);
        assert_eq!(err("2024-01-15T08:00:00Zjunk"), DtError::Trailing);
        assert_eq!(err("2024-01-15T08:00:00+02:00 "), DtError::Trailing);
        assert_eq!(err("2024-01-15T08:00:00 Z"), DtError::Syntax);
        assert_eq!(err("２０２４-01-15T08:00:00Z"), DtError::Syntax);
    }

    #[test]
    fn never_panics_on_prefixes_of_a_valid_string() {
        let s = "2024-01-15T08:00:00.123456789+02:00";
        for i in 0..s.len() {
            let _ = parse_rfc3339_micros(&s[..i]);
        }
    }
}

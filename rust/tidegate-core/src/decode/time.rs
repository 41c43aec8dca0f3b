//! RFC 3339 timestamps: strict parsing, normalization to UTC, and formatting.
//!
//! Normalization: the offset is applied (UTC, `Z`, `T`), and the fraction is kept as written, to any length,
//! without trailing zeros (none when it is zero). A leap second (`23:59:60` in UTC, on any date: no table of
//! leap seconds is kept) stays `:60`; for arithmetic (the time window, `ingest_lag_ms`) it counts as the second
//! before it, `23:59:59`, as POSIX clocks repeat it. Arithmetic uses the fraction to the nanosecond.

/// A parsed RFC 3339 date-time, normalized to UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    /// Seconds since the Unix epoch, UTC (for a leap second, the second before it).
    pub seconds: i64,
    /// Nanoseconds within the second (digits past the ninth are left out).
    pub nanos: u32,
    /// The time is a leap second, `23:59:60` UTC.
    pub leap: bool,
}

impl Timestamp {
    pub fn unix_millis(&self) -> i64 {
        self.seconds * 1000 + i64::from(self.nanos / 1_000_000)
    }

    /// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; `None` for anything else, including impossible dates.
    pub fn parse(text: &str) -> Option<Timestamp> {
        let b = text.as_bytes();
        let head = b.first_chunk::<19>().filter(|_| b.len() >= 20)?;
        if head[4] != b'-' || head[7] != b'-' || !matches!(head[10], b'T' | b't' | b' ') {
            return None;
        }
        if head[13] != b':' || head[16] != b':' {
            return None;
        }
        // The fourteen digit positions, checked at once.
        let d = |i: usize| u32::from(head[i].wrapping_sub(b'0'));
        let not_digits = (d(0) > 9)
            | (d(1) > 9)
            | (d(2) > 9)
            | (d(3) > 9)
            | (d(5) > 9)
            | (d(6) > 9)
            | (d(8) > 9)
            | (d(9) > 9)
            | (d(11) > 9)
            | (d(12) > 9)
            | (d(14) > 9)
            | (d(15) > 9)
            | (d(17) > 9)
            | (d(18) > 9);
        if not_digits {
            return None;
        }
        let year = d(0) * 1000 + d(1) * 100 + d(2) * 10 + d(3);
        let month = d(5) * 10 + d(6);
        let day = d(8) * 10 + d(9);
        let hour = d(11) * 10 + d(12);
        let minute = d(14) * 10 + d(15);
        let second = d(17) * 10 + d(18);
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return None;
        }
        if hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        let mut pos = 19;
        let mut nanos = 0u32;
        if b[pos] == b'.' {
            pos += 1;
            let start = pos;
            while pos < b.len() && b[pos].is_ascii_digit() {
                pos += 1;
            }
            let fraction = &b[start..pos];
            if fraction.is_empty() {
                return None;
            }
            let fraction = &fraction[..fraction.len().min(9)];
            const SCALE: [u32; 10] = [
                1,
                10,
                100,
                1_000,
                10_000,
                100_000,
                1_000_000,
                10_000_000,
                100_000_000,
                1_000_000_000,
            ];
            nanos = fraction.iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0')) * SCALE[9 - fraction.len()];
        }
        let offset_seconds = match &b[pos..] {
            [b'Z' | b'z'] => 0,
            [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
                let hours = digits(&[*h1, *h2])?;
                let minutes = digits(&[*m1, *m2])?;
                if hours > 23 || minutes > 59 {
                    return None;
                }
                let offset = (hours * 3600 + minutes * 60) as i64;
                if *sign == b'+' { offset } else { -offset }
            }
            _ => return None,
        };
        let days = days_from_civil(year as i64, month, day);
        let seconds = days * 86_400 + (hour * 3600 + minute * 60 + second) as i64 - offset_seconds;
        let leap = second == 60;
        // A leap second ends a UTC day: counted with its 60, it lands on midnight.
        if leap && seconds.rem_euclid(86_400) != 0 {
            return None;
        }
        Some(Timestamp {
            seconds: seconds - i64::from(leap),
            nanos,
            leap,
        })
    }

    /// A time given as seconds since the epoch (CBOR tag 1) and the digits of its fraction: the RFC 3339 text it
    /// stands for, canonical; `None` outside the years 0000 to 9999.
    pub fn epoch_text(seconds: i64, fraction: &[u8]) -> Option<String> {
        if !(-62_167_219_200..=253_402_300_799).contains(&seconds) {
            return None;
        }
        let mut out = Vec::with_capacity(32);
        write_date_time(&mut out, seconds, false);
        write_fraction(&mut out, fraction);
        out.push(b'Z');
        String::from_utf8(out).ok()
    }

    /// Whether `text`, a timestamp that parses, is already its canonical spelling: `T`, `Z`, and a fraction, if
    /// any, without trailing zeros.
    pub(crate) fn is_canonical_text(text: &str) -> bool {
        let b = text.as_bytes();
        b.get(10) == Some(&b'T')
            && b.last() == Some(&b'Z')
            && (b.len() == 20 || (b[19] == b'.' && b.len() > 21 && b[b.len() - 2] != b'0'))
    }

    /// Appends the canonical spelling of `text`, which parsed as this timestamp: UTC, `Z`, its fraction as
    /// written without trailing zeros (none when zero).
    pub fn write_canonical(&self, text: &str, out: &mut Vec<u8>) {
        write_date_time(out, self.seconds, self.leap);
        let fraction = match text.as_bytes().get(19..) {
            Some([b'.', rest @ ..]) => &rest[..rest.iter().position(|b| !b.is_ascii_digit()).unwrap_or(rest.len())],
            _ => &[],
        };
        write_fraction(out, fraction);
        out.push(b'Z');
    }
}

/// Appends `.DIGITS` without trailing zeros, or nothing when they are all zeros.
fn write_fraction(out: &mut Vec<u8>, digits: &[u8]) {
    let end = digits.iter().rposition(|&d| d != b'0').map_or(0, |i| i + 1);
    if end > 0 {
        out.push(b'.');
        out.extend_from_slice(&digits[..end]);
    }
}

/// Appends `YYYY-MM-DDTHH:MM:SS.mmmZ` for a Unix time in milliseconds (always three fraction digits).
pub fn write_millis(out: &mut Vec<u8>, unix_millis: i64) {
    let seconds = unix_millis.div_euclid(1000);
    let nanos = (unix_millis.rem_euclid(1000) * 1_000_000) as u32;
    write_utc(out, seconds, nanos, true);
}

fn write_utc(out: &mut Vec<u8>, seconds: i64, nanos: u32, fixed_millis: bool) {
    write_date_time(out, seconds, false);
    if fixed_millis {
        let millis = nanos / 1_000_000;
        out.extend_from_slice(&[
            b'.',
            b'0' + (millis / 100) as u8,
            b'0' + (millis / 10 % 10) as u8,
            b'0' + (millis % 10) as u8,
        ]);
    } else if nanos != 0 {
        let mut fraction = [0u8; 9];
        let mut rest = nanos;
        for slot in fraction.iter_mut().rev() {
            *slot = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        write_fraction(out, &fraction);
    }
    out.push(b'Z');
}

/// Appends `YYYY-MM-DDTHH:MM:SS` in UTC; `leap`: the second after `seconds` (which ends a day), written `:60`.
fn write_date_time(out: &mut Vec<u8>, seconds: i64, leap: bool) {
    let days = seconds.div_euclid(86_400);
    let secs_of_day = seconds.rem_euclid(86_400) as u32;
    let (year, month, day) = civil_from_days(days);
    if (0..=9999).contains(&year) {
        let year = year as u32;
        let mut text = *b"0000-00-00T00:00:00";
        put2(&mut text[0..2], year / 100);
        put2(&mut text[2..4], year % 100);
        put2(&mut text[5..7], month);
        put2(&mut text[8..10], day);
        put2(&mut text[11..13], secs_of_day / 3600);
        put2(&mut text[14..16], secs_of_day / 60 % 60);
        put2(&mut text[17..19], secs_of_day % 60);
        out.extend_from_slice(&text);
    } else {
        let text = format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
            secs_of_day / 3600,
            secs_of_day / 60 % 60,
            secs_of_day % 60
        );
        out.extend_from_slice(text.as_bytes());
    }
    if leap {
        let at = out.len() - 2;
        out[at..].copy_from_slice(b"60");
    }
}

/// Writes two decimal digits of `n < 100`.
fn put2(slot: &mut [u8], n: u32) {
    slot[0] = b'0' + (n / 10) as u8;
    slot[1] = b'0' + (n % 10) as u8;
}

fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |acc, &d| {
        d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
    })
}

fn is_leap(year: u32) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(text: &str) -> String {
        let mut out = Vec::new();
        Timestamp::parse(text).unwrap().write_canonical(text, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn leap_seconds_and_long_fractions() {
        assert_eq!(canonical("2016-12-31T23:59:60Z"), "2016-12-31T23:59:60Z");
        assert_eq!(canonical("2017-01-01T05:29:60.50+05:30"), "2016-12-31T23:59:60.5Z");
        let leap = Timestamp::parse("2016-12-31T23:59:60.5Z").unwrap();
        let before = Timestamp::parse("2016-12-31T23:59:59.5Z").unwrap();
        assert_eq!((leap.unix_millis(), leap.leap), (before.unix_millis(), true));
        assert!(Timestamp::parse("2016-12-31T12:59:60Z").is_none());
        assert_eq!(
            canonical("2026-03-27T10:15:30.1234567890120Z"),
            "2026-03-27T10:15:30.123456789012Z"
        );
        assert_eq!(
            Timestamp::parse("2026-03-27T10:15:30.1234567899Z").unwrap().nanos,
            123_456_789
        );
        assert_eq!(
            Timestamp::epoch_text(1_482_710_400, b"250").unwrap(),
            "2016-12-26T00:00:00.25Z"
        );
        assert_eq!(Timestamp::epoch_text(253_402_300_800, b""), None);
    }

    #[test]
    fn normalizes_offsets_and_fractions() {
        assert_eq!(canonical("2026-03-27T10:15:30.123Z"), "2026-03-27T10:15:30.123Z");
        assert_eq!(canonical("2026-03-27T12:15:30.1230+02:00"), "2026-03-27T10:15:30.123Z");
        assert_eq!(canonical("2026-03-27t10:15:30z"), "2026-03-27T10:15:30Z");
        assert_eq!(canonical("2024-01-01T00:30:00-01:00"), "2024-01-01T01:30:00Z");
        assert_eq!(Timestamp::parse("1970-01-01T00:00:01.5Z").unwrap().unix_millis(), 1500);
    }

    #[test]
    fn recognizes_canonical_spellings() {
        for text in [
            "2026-03-27T10:15:30.123Z",
            "2026-03-27T12:15:30.1230+02:00",
            "2026-03-27t10:15:30z",
            "2026-03-27T10:15:30Z",
            "2026-03-27T10:15:30.100Z",
            "2026-03-27T10:15:30.000000001Z",
            "2026-03-27 10:15:30.5Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
        ] {
            assert_eq!(Timestamp::is_canonical_text(text), canonical(text) == text, "{text}");
        }
    }

    #[test]
    fn refuses_impossible_dates() {
        for bad in [
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:00:00",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00+2:00",
            "not a date at all!!",
            "2026-01-01T00:00:60Z",
            "2026-01-01T00:00:00.1.2Z",
        ] {
            assert!(Timestamp::parse(bad).is_none(), "{bad}");
        }
        assert!(Timestamp::parse("2024-02-29T00:00:00Z").is_some());
    }

    #[test]
    fn formats_millis() {
        let mut out = Vec::new();
        write_millis(&mut out, 1_774_606_530_123);
        assert_eq!(String::from_utf8(out).unwrap(), "2026-03-27T10:15:30.123Z");
        let mut out = Vec::new();
        write_millis(&mut out, -1);
        write_millis(&mut out, 253_402_300_800_000);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1969-12-31T23:59:59.999Z10000-01-01T00:00:00.000Z"
        );
    }
}

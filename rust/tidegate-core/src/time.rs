//! RFC 3339 timestamps: strict parsing, normalization to UTC, and formatting.

/// A parsed RFC 3339 date-time, normalized to UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    /// Seconds since the Unix epoch, UTC.
    pub seconds: i64,
    /// Nanoseconds within the second.
    pub nanos: u32,
}

impl Timestamp {
    pub fn unix_millis(&self) -> i64 {
        self.seconds * 1000 + i64::from(self.nanos / 1_000_000)
    }

    /// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; `None` for anything else, including impossible dates.
    pub fn parse(text: &str) -> Option<Timestamp> {
        let b = text.as_bytes();
        if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
            return None;
        }
        if b[13] != b':' || b[16] != b':' {
            return None;
        }
        let year = digits(&b[0..4])?;
        let month = digits(&b[5..7])?;
        let day = digits(&b[8..10])?;
        let hour = digits(&b[11..13])?;
        let minute = digits(&b[14..16])?;
        let second = digits(&b[17..19])?;
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return None;
        }
        if hour > 23 || minute > 59 || second > 59 {
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
            if fraction.is_empty() || fraction.len() > 9 {
                return None;
            }
            nanos = fraction.iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'))
                * 10u32.pow(9 - fraction.len() as u32);
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
        Some(Timestamp { seconds, nanos })
    }

    /// Appends the canonical spelling: UTC, `Z`, fraction trimmed of trailing zeros (none when whole).
    pub fn write_canonical(&self, out: &mut Vec<u8>) {
        write_utc(out, self.seconds, self.nanos, false);
    }
}

/// Appends `YYYY-MM-DDTHH:MM:SS.mmmZ` for a Unix time in milliseconds (always three fraction digits).
pub fn write_millis(out: &mut Vec<u8>, unix_millis: i64) {
    let seconds = unix_millis.div_euclid(1000);
    let nanos = (unix_millis.rem_euclid(1000) * 1_000_000) as u32;
    write_utc(out, seconds, nanos, true);
}

fn write_utc(out: &mut Vec<u8>, seconds: i64, nanos: u32, fixed_millis: bool) {
    let days = seconds.div_euclid(86_400);
    let secs_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let text = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60
    );
    out.extend_from_slice(text.as_bytes());
    if fixed_millis {
        out.extend_from_slice(format!(".{:03}", nanos / 1_000_000).as_bytes());
    } else if nanos != 0 {
        let fraction = format!("{nanos:09}");
        out.push(b'.');
        out.extend_from_slice(fraction.trim_end_matches('0').as_bytes());
    }
    out.push(b'Z');
}

fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |acc, &d| {
        d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
    })
}

fn is_leap(year: u32) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
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

fn civil_from_days(days: i64) -> (i64, u32, u32) {
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
        Timestamp::parse(text).unwrap().write_canonical(&mut out);
        String::from_utf8(out).unwrap()
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
    }
}

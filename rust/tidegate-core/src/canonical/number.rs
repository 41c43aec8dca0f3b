//! The canonical spelling of numbers (the rule is in `crate::decode::number`, which reads them).

use super::Writer;
use crate::decode::number::POW10;

/// Appends the canonical spelling of a finite double: its integer's digits when it is an integer of the 64-bit
/// range, else ECMAScript `Number.prototype.toString`, as RFC 8785 (JCS) prescribes. `1.0`, `1.00` and `1` are
/// all `1`; `-0` is `0`; 2^60 is `1152921504606846976` (ECMAScript would write `1152921504606847000`).
pub fn write_canonical(out: &mut Vec<u8>, value: f64) {
    write_canonical_to(&mut Writer::new(out), value);
}

/// 2^64 and 2^63, exactly.
const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;
const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;

pub(crate) fn write_canonical_to(out: &mut Writer<'_>, value: f64) {
    if value == 0.0 {
        out.byte(b'0');
        return;
    }
    let magnitude = value.abs();
    // A double of the 64-bit range is an integer exactly when truncating it loses nothing (no `fract`, a libm
    // call); `as u64` is exact below 2^64.
    if magnitude < TWO_POW_64 && (magnitude as u64) as f64 == magnitude && (value > 0.0 || magnitude <= TWO_POW_63) {
        write_integer(out, value < 0.0, magnitude as u64);
        return;
    }
    if write_short_fraction(out, value) {
        return;
    }
    let mut buffer = ryu_js::Buffer::new();
    out.put(buffer.format_finite(value).as_bytes());
}

/// Appends the digits of an integer, with its sign.
#[inline]
pub(crate) fn write_integer(out: &mut Writer<'_>, negative: bool, magnitude: u64) {
    let (digits, start) = integer_digits(negative, magnitude);
    out.put(&digits[start..]);
}

/// The digits of an integer, with its sign, two at a time: the end of a buffer, from the index returned.
#[inline(always)]
fn integer_digits(negative: bool, magnitude: u64) -> ([u8; 24], usize) {
    let mut buf = [0u8; 24];
    let mut i = buf.len();
    let mut n = magnitude;
    while n >= 100 {
        i -= 2;
        buf[i..i + 2].copy_from_slice(two_digits(n % 100));
        n /= 100;
    }
    if n >= 10 {
        i -= 2;
        buf[i..i + 2].copy_from_slice(two_digits(n));
    } else {
        i -= 1;
        buf[i] = b'0' + n as u8;
    }
    if negative && magnitude != 0 {
        i -= 1;
        buf[i] = b'-';
    }
    (buf, i)
}

/// Appends the canonical spelling of an integer (its digits), without a `Writer`.
pub(crate) fn write_canonical_i64(out: &mut Vec<u8>, n: i64) {
    let (digits, start) = integer_digits(n < 0, n.unsigned_abs());
    out.extend_from_slice(&digits[start..]);
}

/// The two decimal digits of `n < 100`.
#[inline(always)]
fn two_digits(n: u64) -> &'static [u8] {
    const DIGITS: &[u8; 200] = b"\
        0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let i = n as usize * 2;
    &DIGITS[i..i + 2]
}

/// Below this, `m / 10^k` (for the candidates tried) has a unique nearest integer `m` and a unique
/// `k`-fraction-digit decimal in the double's rounding interval; see `write_short_fraction`.
const SHORT_LIMIT: f64 = (1u64 << 50) as f64;

/// The shortest round-tripping spelling of a non-integral double in `[1e-5, 2^50)` (in magnitude), which
/// ECMAScript writes in plain decimal notation, without the general algorithm; `false` (nothing written) when
/// the value is outside that range or needs more than 22 fraction digits.
///
/// For each fraction digit count `k` from 1 up, the candidate is `m = round(|v| × 10^k)`, kept only while
/// `|v| × 10^k < 2^50`. Then the double's rounding interval, scaled by `10^k`, is narrower than 1/4, so at
/// most one `k`-digit decimal lies in it and it is within 1/8 of the exact product, while the computed product
/// is within 1/16 of the exact one: `m` is that decimal whenever it exists. `m / 10^k` is one correctly rounded
/// division of exact doubles (`m < 2^53`, `k <= 22`), so `m / 10^k == |v|` holds exactly when the decimal
/// reads back as `v`. The first `k` that does is the fewest digits, ECMAScript's choice.
fn write_short_fraction(out: &mut Writer<'_>, value: f64) -> bool {
    let magnitude = value.abs();
    if !(1e-5..SHORT_LIMIT).contains(&magnitude) {
        return false;
    }
    for (k, &scale) in POW10.iter().enumerate().skip(1) {
        let scaled = magnitude * scale;
        if scaled >= SHORT_LIMIT {
            return false;
        }
        // Rounds half away from zero without a libm call: below 2^50, `scaled + 0.5` is exact.
        let m = ((scaled + 0.5) as i64) as f64;
        // The decimal, when it exists, is within 3/16 of the computed product: skip the division otherwise.
        if (scaled - m).abs() > 0.25 || m / scale != magnitude {
            continue;
        }
        let mut text = [0u8; 32];
        let mut i = text.len();
        let mut n = m as i64 as u64;
        for _ in 0..k {
            i -= 1;
            text[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        i -= 1;
        text[i] = b'.';
        loop {
            i -= 1;
            text[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        if value < 0.0 {
            i -= 1;
            text[i] = b'-';
        }
        out.put(&text[i..]);
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::number::read;
    use crate::decode::value::Value;

    fn canonical(v: f64) -> String {
        let mut out = Vec::new();
        write_canonical(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    fn read_text(text: &str) -> String {
        let mut out = Vec::new();
        crate::canonical::write_value(&mut out, &read(text).unwrap());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn spellings_of_one_value_agree() {
        for text in ["1", "1.0", "1.00", "10e-1", "0.1e1", "1E0", "0.00001e5"] {
            assert_eq!(read(text), Some(Value::Number(1.0, None)), "{text}");
        }
        for text in [
            "1152921504606846976",
            "1152921504606846976.0",
            "1.152921504606847e18",
            "1.15292150460684698e18",
        ] {
            assert_eq!(read_text(text), "1152921504606846976", "{text}");
        }
    }

    #[test]
    fn integers_of_64_bits_are_exact_and_others_the_nearest_double() {
        let cases = [
            ("9007199254740993", "9007199254740993"),
            ("-9223372036854775808", "-9223372036854775808"),
            ("18446744073709551616", "18446744073709552000"),
            ("1152921504606846976", "1152921504606846976"),
            ("1e19", "10000000000000000000"),
            ("1e20", "100000000000000000000"),
            ("67.200000000000003", "67.2"),
            ("0.10000000000000000001", "0.1"),
            ("1e-400", "0"),
            ("-0", "0"),
            ("1796077072273099777.5", "1796077072273099776"),
            (&format!("1{}", "0".repeat(400)), ""),
        ];
        for (text, expected) in cases {
            if expected.is_empty() {
                assert_eq!(read(text), None, "{text}");
            } else {
                assert_eq!(read_text(text), expected, "{text}");
            }
        }
        assert_eq!(read("1e400"), None);
        assert!(matches!(read("9007199254740993"), Some(Value::Integer(_))));
        assert!(matches!(read("9007199254740992"), Some(Value::Number(..))));
    }

    #[test]
    fn canonical_spelling_matches_ecmascript() {
        assert_eq!(canonical(1.0), "1");
        assert_eq!(canonical(-0.0), "0");
        assert_eq!(canonical(23.5), "23.5");
        assert_eq!(canonical(1e21), "1e+21");
        assert_eq!(canonical(1e20), "100000000000000000000");
        assert_eq!(canonical(1.5e-7), "1.5e-7");
        assert_eq!(canonical(0.000001), "0.000001");
        assert_eq!(canonical(-1013.25), "-1013.25");
        assert_eq!(canonical(0.00001), "0.00001");
        assert_eq!(canonical(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(canonical(123_456_789_012_345.6), "123456789012345.6");
    }

    #[test]
    fn integers_are_spelled_as_their_digits() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for i in 0..100_000i64 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let n = match i % 3 {
                0 => i - 50_000,
                1 => (state >> (state % 64)) as i64,
                _ => state as i64,
            };
            let mut fast = Vec::new();
            write_canonical_i64(&mut fast, n);
            assert_eq!(fast, n.to_string().as_bytes(), "{n}");
            if (n as f64) as i64 == n && n != i64::MAX {
                let mut general = Vec::new();
                write_canonical(&mut general, n as f64);
                assert_eq!(fast, general, "{n}");
            }
        }
    }

    /// The shortcuts agree with the general algorithm (ryu-js) and with `str::parse`.
    #[test]
    fn shortcuts_match_the_general_algorithm() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut buffer = ryu_js::Buffer::new();
        for i in 0..400_000u64 {
            let value = match i % 4 {
                0 => f64::from_bits(next()),
                1 => (next() % 10_000_000) as f64 / POW10[(next() % 12) as usize],
                2 => (next() >> 11) as f64 / POW10[(next() % 23) as usize] * POW10[(next() % 6) as usize],
                _ => f64::from_bits(0x3ee0_0000_0000_0000 + next() % 0x0170_0000_0000_0000),
            };
            if !value.is_finite() {
                continue;
            }
            let expected = if value.abs() < TWO_POW_64 && value.fract() == 0.0 && value >= -TWO_POW_63 {
                format!("{}", value as i128)
            } else {
                buffer.format_finite(value).to_string()
            };
            assert_eq!(canonical(value), expected, "{value:e}");
            let text = format!("{value:e}");
            assert_eq!(
                read(&text).map(|v| read_text(&text) == expected && v == read(&expected).unwrap()),
                Some(true),
                "{text}"
            );
        }
    }
}

//! Numbers: exactness checks on decode and the canonical (ECMAScript / RFC 8785) spelling.

use crate::canonical::Writer;

/// Parses a JSON number that is known to be syntactically valid. `None` when no double holds its value exactly
/// (too many significant digits, overflow to infinity, underflow), so such numbers are never silently rounded.
pub fn exact_f64(text: &str, plain_integer: bool) -> Option<f64> {
    let bytes = text.as_bytes();
    if plain_integer && bytes.len() <= 16 {
        // Up to 15 digits (plus sign) always fits an i64 and is exact as a double.
        let (negative, digits) = match bytes.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, bytes),
        };
        if digits.len() <= 15 {
            let magnitude = digits.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'));
            let value = magnitude as f64;
            return Some(if negative { -value } else { value });
        }
    }
    if let Some(value) = short_decimal(bytes) {
        return Some(value);
    }
    let value: f64 = text.parse().ok()?;
    if !value.is_finite() {
        return None;
    }
    let (digits, exponent) = decimal_parts(text);
    // Any decimal of at most 15 significant digits in the normal range survives a round trip through a double.
    if digits.len() <= 15 && (-300..=300).contains(&exponent) {
        return Some(value);
    }
    let mut buffer = ryu_js::Buffer::new();
    let shortest = buffer.format_finite(value);
    let (shortest_digits, shortest_exponent) = decimal_parts(shortest);
    if (shortest_digits == digits && shortest_exponent == exponent) || is_exact_integer(&digits, exponent, value) {
        return Some(value);
    }
    None
}

/// Exact powers of ten as doubles (every one up to 10^22 is representable).
pub(crate) const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];

/// `-?DIGITS.DIGITS` (no exponent) with at most 15 digits in all: always exact (at most 15 significant digits),
/// and the correctly rounded value is one IEEE division of two exact doubles (Clinger's fast path), the same
/// double `str::parse` gives. `None` for any other shape.
fn short_decimal(bytes: &[u8]) -> Option<f64> {
    let (negative, body) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, bytes),
    };
    if body.len() > 16 {
        return None;
    }
    let mut mantissa = 0u64;
    let mut fraction_digits = None;
    for (i, &b) in body.iter().enumerate() {
        match b {
            b'0'..=b'9' => mantissa = mantissa * 10 + u64::from(b - b'0'),
            b'.' if fraction_digits.is_none() => fraction_digits = Some(body.len() - i - 1),
            _ => return None,
        }
    }
    let fraction_digits = fraction_digits?;
    let value = mantissa as f64 / POW10[fraction_digits];
    Some(if negative { -value } else { value })
}

/// Whether the decimal `0.DIGITS × 10^exponent` is an integer equal to the double exactly, such as
/// 2^60 written out in full (not the shortest spelling, yet no rounding happened).
fn is_exact_integer(digits: &str, exponent: i64, value: f64) -> bool {
    let Ok(zeros) = usize::try_from(exponent - digits.len() as i64) else {
        return false;
    };
    if digits.len() + zeros > 38 {
        return false;
    }
    let spelled: String = digits.chars().chain(std::iter::repeat_n('0', zeros)).collect();
    spelled
        .parse::<u128>()
        .is_ok_and(|n| n as f64 == value.abs() && n == value.abs() as u128)
}

/// The significant digits (no leading or trailing zeros) and the exponent `e` such that the value is
/// `0.DIGITS × 10^e`, ignoring sign. Zero is `("", 0)`.
fn decimal_parts(text: &str) -> (String, i64) {
    let body = text.trim_start_matches('-');
    let (mantissa, exp_part) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], body[i + 1..].parse::<i64>().unwrap_or(0)),
        None => (body, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits: String = int_part.chars().chain(frac_part.chars()).collect();
    let mut exponent = exp_part.saturating_add(int_part.len() as i64);
    let leading = digits.len() - digits.trim_start_matches('0').len();
    digits.drain(..leading);
    exponent = exponent.saturating_sub(leading as i64);
    let trimmed = digits.trim_end_matches('0').len();
    digits.truncate(trimmed);
    if digits.is_empty() {
        return (digits, 0);
    }
    (digits, exponent)
}

/// Appends the canonical spelling of a finite double: ECMAScript `Number.prototype.toString`, as RFC 8785 (JCS)
/// prescribes. `1.0`, `1.00` and `1` are all `1`; `-0` is `0`.
pub fn write_canonical(out: &mut Vec<u8>, value: f64) {
    write_canonical_to(&mut Writer::new(out), value);
}

pub(crate) fn write_canonical_to(out: &mut Writer<'_>, value: f64) {
    if value == 0.0 {
        out.byte(b'0');
        return;
    }
    let magnitude = value.abs();
    // Below 1e15 a double is an integer exactly when truncating it loses nothing (no `fract`, a libm call).
    if magnitude < 1e15 && (magnitude as i64) as f64 == magnitude {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        let mut n = magnitude as i64 as u64;
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
        if value < 0.0 {
            i -= 1;
            buf[i] = b'-';
        }
        out.put(&buf[i..]);
        return;
    }
    if write_short_fraction(out, value) {
        return;
    }
    let mut buffer = ryu_js::Buffer::new();
    out.put(buffer.format_finite(value).as_bytes());
}

/// Appends the canonical spelling of `n as f64` (what [`write_canonical`] writes for it), without a `Writer`
/// for the usual integers below 10^15.
pub(crate) fn write_canonical_i64(out: &mut Vec<u8>, n: i64) {
    if n.unsigned_abs() >= 1_000_000_000_000_000 {
        return write_canonical(out, n as f64);
    }
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut rest = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    out.extend_from_slice(&buf[i..]);
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

    fn canonical(v: f64) -> String {
        let mut out = Vec::new();
        write_canonical(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn spellings_of_one_value_agree() {
        for text in ["1", "1.0", "1.00", "10e-1", "0.1e1", "1E0"] {
            assert_eq!(exact_f64(text, !text.contains(['.', 'e', 'E'])), Some(1.0), "{text}");
        }
    }

    #[test]
    fn inexact_numbers_are_refused() {
        assert_eq!(exact_f64("9007199254740993", true), None);
        assert_eq!(exact_f64("0.10000000000000000001", false), None);
        assert_eq!(exact_f64("1e400", false), None);
        assert_eq!(exact_f64("1e-400", false), None);
        assert_eq!(exact_f64("123456789012345678", true), None);
        assert_eq!(exact_f64("0.1", false), Some(0.1));
        assert_eq!(exact_f64("5e-324", false), Some(5e-324));
        assert_eq!(exact_f64("-0", true), Some(-0.0));
        assert_eq!(
            exact_f64("1152921504606846976", true),
            Some(1_152_921_504_606_846_976.0)
        );
        assert_eq!(exact_f64("41120572465778824", true), Some(41_120_572_465_778_824.0));
        assert_eq!(exact_f64("41120572465778825", true), None);
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
    fn integers_are_spelled_as_their_doubles() {
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
            let (mut fast, mut general) = (Vec::new(), Vec::new());
            write_canonical_i64(&mut fast, n);
            write_canonical(&mut general, n as f64);
            assert_eq!(fast, general, "{n}");
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
            let expected = buffer.format_finite(value);
            assert_eq!(canonical(value), expected, "{value:e}");
            let text = format!("{value}");
            if text.len() <= 16 {
                let plain = !text.contains('.');
                assert_eq!(exact_f64(&text, plain), text.parse().ok(), "{text}");
            }
        }
    }
}

//! Numbers: exactness checks on decode and the canonical (ECMAScript / RFC 8785) spelling.

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
    if value == 0.0 {
        out.push(b'0');
        return;
    }
    if value.fract() == 0.0 && value.abs() < 1e15 {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        let mut n = value.abs() as u64;
        while n > 0 {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        if value < 0.0 {
            out.push(b'-');
        }
        out.extend_from_slice(&buf[i..]);
        return;
    }
    let mut buffer = ryu_js::Buffer::new();
    out.extend_from_slice(buffer.format_finite(value).as_bytes());
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
    }
}

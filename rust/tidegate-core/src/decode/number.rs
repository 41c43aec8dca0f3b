//! Numbers: reading a JSON number as its value (the canonical spelling is `crate::canonical::number`).
//!
//! The rule: a number written as an integer (digits only, as JSON and CBOR integers are) within the 64-bit range
//! (`-2^63 ..= 2^64 - 1`) is that integer, kept exactly; any other number is read as the nearest double. The
//! canonical spelling is a function of the value read: an integer of the 64-bit range (an integer kept exactly,
//! or a double whose value is one) is written as its digits; any other double as ECMAScript writes it
//! (RFC 8785). So `10`, `10.0`, `1e1` and CBOR `10` (integer or float) are one value with one spelling, a double
//! is the same whichever way it is written (shortest, `%.17g`, binary CBOR), and a 64-bit counter keeps every
//! digit.

use crate::decode::value::Value;

/// Reads a JSON number that is known to be syntactically valid (the module has the rule). `None` when
/// its magnitude is beyond every double (`1e400`): no JSON number means infinity. Allocation-free.
pub fn read(text: &str) -> Option<Value<'static>> {
    let bytes = text.as_bytes();
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    if digits.len() <= 20 && digits.iter().all(u8::is_ascii_digit) {
        let magnitude = digits.iter().fold(0i128, |acc, d| acc * 10 + i128::from(d - b'0'));
        let n = if digits.len() < bytes.len() {
            -magnitude
        } else {
            magnitude
        };
        return Some(Value::from_integer(n));
    }
    // `str::parse` rounds correctly at any length.
    let value: f64 = text.parse().ok()?;
    value.is_finite().then_some(Value::Number(value, None))
}

/// Exact powers of ten as doubles (every one up to 10^22 is representable).
pub(crate) const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];

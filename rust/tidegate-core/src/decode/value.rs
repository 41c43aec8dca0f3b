//! The decoded document tree shared by the JSON and CBOR decoders.

use std::borrow::Cow;

/// A decoded value. A number is read as its exact value when that is an integer within the 64-bit range
/// (signed or unsigned), else as the nearest double; each value has one representation (`Number` whenever a
/// double holds it exactly, `Integer` otherwise), so JSON `10`, `10.0`, `1e1` and CBOR `10` (integer or float)
/// are the same value and canonicalize alike.
#[derive(Debug, Clone)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    /// A double, and the text it was decoded from when that text is already its canonical spelling (which then
    /// need not be worked out again; see [`crate::decode::json`]). Two numbers are equal when their doubles are.
    Number(f64, Option<&'a [u8]>),
    /// An integer no double holds exactly: beyond 2^53 in magnitude, within `-2^63 ..= 2^64 - 1`.
    Integer(Integer),
    String(Cow<'a, str>),
    Array(Vec<Value<'a>>),
    /// Keys in document order; duplicates are rejected while decoding.
    Object(Vec<(Cow<'a, str>, Value<'a>)>),
    /// A record-level decoding problem (lone surrogate, inexact number, depth...) kept in place so the rest of
    /// the document can still be decoded and its neighbours validated.
    Invalid(Box<str>),
}

impl PartialEq for Value<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Number(a, _), Value::Number(b, _)) => a == b,
            (Value::Integer(a), Value::Integer(b)) => a == b,
            (Value::String(a), Value::String(b)) => a == b,
            (Value::Array(a), Value::Array(b)) => a == b,
            (Value::Object(a), Value::Object(b)) => a == b,
            (Value::Invalid(a), Value::Invalid(b)) => a == b,
            _ => false,
        }
    }
}

impl<'a> Value<'a> {
    #[inline(always)]
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        match self {
            Value::Object(fields) => fields.iter().find(|(k, _)| same_key(k, key)).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n, _) if is_integer(*n) => "integer",
            Value::Number(..) => "number",
            Value::Integer(_) => "integer",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
            Value::Invalid(_) => "invalid",
        }
    }

    /// The JSON path and message of the first `Invalid` node, depth first.
    pub fn first_invalid(&self) -> Option<(String, String)> {
        if !self.has_invalid() {
            return None;
        }
        let mut path = String::from("$");
        self.find_invalid(&mut path).map(|msg| (path, msg))
    }

    pub fn has_invalid(&self) -> bool {
        match self {
            Value::Invalid(_) => true,
            Value::Array(items) => items.iter().any(Value::has_invalid),
            Value::Object(fields) => fields.iter().any(|(_, v)| v.has_invalid()),
            _ => false,
        }
    }

    fn find_invalid(&self, path: &mut String) -> Option<String> {
        match self {
            Value::Invalid(msg) => Some(msg.to_string()),
            Value::Array(items) => {
                let base = path.len();
                for (i, item) in items.iter().enumerate() {
                    push_index(path, i);
                    if let Some(msg) = item.find_invalid(path) {
                        return Some(msg);
                    }
                    path.truncate(base);
                }
                None
            }
            Value::Object(fields) => {
                let base = path.len();
                for (k, v) in fields {
                    push_key(path, k);
                    if let Some(msg) = v.find_invalid(path) {
                        return Some(msg);
                    }
                    path.truncate(base);
                }
                None
            }
            _ => None,
        }
    }
}

pub fn is_integer(n: f64) -> bool {
    // From 2^52 up every double is an integer; below, truncation is exact only for integers (no libm `fract`).
    n.is_finite() && (n.abs() >= 4_503_599_627_370_496.0 || (n as i64) as f64 == n)
}

/// An integer of the 64-bit range (signed or unsigned), by sign and magnitude so that it fits in 16 bytes with
/// 8-byte alignment (an `i128` would widen every `Value`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Integer {
    pub negative: bool,
    pub magnitude: u64,
}

/// The 64-bit range: `i64::MIN ..= u64::MAX`.
const INTEGER_RANGE: std::ops::RangeInclusive<i128> = (i64::MIN as i128)..=(u64::MAX as i128);

impl Integer {
    pub fn get(self) -> i128 {
        let magnitude = i128::from(self.magnitude);
        if self.negative { -magnitude } else { magnitude }
    }

    /// The nearest double (ties to even).
    pub fn to_f64(self) -> f64 {
        self.get() as f64
    }

    /// How this integer compares with a finite double, exactly.
    pub fn cmp_f64(self, other: f64) -> std::cmp::Ordering {
        let n = self.get();
        // Every double of magnitude 2^64 or more lies outside the 64-bit range, and 2^64 is a double.
        if other >= 18_446_744_073_709_551_616.0 {
            return std::cmp::Ordering::Less;
        }
        if other < -18_446_744_073_709_551_616.0 {
            return std::cmp::Ordering::Greater;
        }
        let whole = other.trunc();
        (n.cmp(&(whole as i128))).then_with(|| 0.0.partial_cmp(&(other - whole)).unwrap_or(std::cmp::Ordering::Equal))
    }
}

impl Value<'static> {
    /// The value of an integer read exactly: a `Number` when a double holds it exactly, an `Integer` when it is
    /// within the 64-bit range, else the nearest double.
    pub fn from_integer(n: i128) -> Value<'static> {
        let double = n as f64;
        // `double as i128` saturates only far outside the 64-bit range, where the comparison fails anyway.
        if double as i128 == n || !INTEGER_RANGE.contains(&n) {
            return Value::Number(double, None);
        }
        Value::Integer(Integer {
            negative: n < 0,
            magnitude: n.unsigned_abs() as u64,
        })
    }
}

/// Appends `[i]` to a JSON path.
pub fn push_index(path: &mut String, i: usize) {
    path.push('[');
    path.push_str(itoa_usize(i).as_str());
    path.push(']');
}

/// Appends `.key`, or `["key"]` when the key is not a plain identifier, to a JSON path.
pub fn push_key(path: &mut String, key: &str) {
    let plain = !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        path.push('.');
        path.push_str(key);
    } else {
        path.push_str("[\"");
        for c in key.chars() {
            match c {
                '"' => path.push_str("\\\""),
                '\\' => path.push_str("\\\\"),
                c if (c as u32) < 0x20 => path.push_str(&format!("\\u{:04x}", c as u32)),
                c => path.push(c),
            }
        }
        path.push_str("\"]");
    }
}

fn itoa_usize(i: usize) -> String {
    i.to_string()
}

/// String equality without a `memcmp` call for the usual short keys: unequal lengths decide at once, and up
/// to 16 bytes are compared as two overlapping words.
#[inline]
pub(crate) fn same_key(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().unwrap_or_default());
    let half = |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().unwrap_or_default());
    match n {
        0..4 => a.iter().zip(b).all(|(x, y)| x == y),
        4..8 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        _ => a.first() == b.first() && a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_is_string_equality() {
        let keys = [
            "",
            "a",
            "ab",
            "abc",
            "abcd",
            "abce",
            "bbcd",
            "temperature",
            "temperaturf",
            "uemperature",
        ];
        let long = [
            "x".repeat(17),
            "x".repeat(16) + "y",
            "y".to_string() + &"x".repeat(16),
            "x".repeat(40),
        ];
        let all: Vec<&str> = keys.iter().copied().chain(long.iter().map(String::as_str)).collect();
        for a in &all {
            for b in &all {
                assert_eq!(same_key(a, b), a == b, "{a:?} {b:?}");
            }
        }
    }
}

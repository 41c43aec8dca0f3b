//! The decoded document tree shared by the JSON and CBOR decoders.

use std::borrow::Cow;

use crate::schema::same_key;

/// A decoded value. Numbers are IEEE doubles: the decoders reject any number a double cannot hold exactly, so
/// JSON `1.0`, `1.00`, `1` and CBOR `1` (integer or float) are the same value and canonicalize alike.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Number(f64),
    String(Cow<'a, str>),
    Array(Vec<Value<'a>>),
    /// Keys in document order; duplicates are rejected while decoding.
    Object(Vec<(Cow<'a, str>, Value<'a>)>),
    /// A record-level decoding problem (lone surrogate, inexact number, depth...) kept in place so the rest of
    /// the document can still be decoded and its neighbours validated.
    Invalid(Box<str>),
}

impl<'a> Value<'a> {
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
            Value::Number(n) if is_integer(*n) => "integer",
            Value::Number(_) => "number",
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

/// Largest integer magnitude a double holds exactly (2^53).
pub const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

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

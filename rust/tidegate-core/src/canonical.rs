//! The canonical JSON form (RFC 8785, JCS): object keys sorted by UTF-16 code units, no insignificant
//! whitespace, ECMAScript number spelling, minimal string escapes. Same logical value, same bytes.

use std::cmp::Ordering;

use crate::number;
use crate::value::Value;

/// Appends the canonical JSON of `value`. `Invalid` nodes never reach here: records holding one are rejected.
pub fn write_value(out: &mut Vec<u8>, value: &Value<'_>) {
    match value {
        Value::Null | Value::Invalid(_) => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => number::write_canonical(out, *n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(fields) => {
            let mut sorted: Vec<(&str, &Value<'_>)> = fields.iter().map(|(k, v)| (k.as_ref(), v)).collect();
            sorted.sort_unstable_by(|a, b| compare_keys(a.0, b.0));
            write_object(out, &sorted);
        }
    }
}

/// Appends an object whose entries are already in canonical key order.
pub fn write_object(out: &mut Vec<u8>, sorted: &[(&str, &Value<'_>)]) {
    out.push(b'{');
    for (i, (key, value)) in sorted.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(out, key);
        out.push(b':');
        write_value(out, value);
    }
    out.push(b'}');
}

/// JCS key order: by UTF-16 code units, which equals byte order for ASCII keys.
pub fn compare_keys(a: &str, b: &str) -> Ordering {
    if a.is_ascii() && b.is_ascii() {
        a.as_bytes().cmp(b.as_bytes())
    } else {
        a.encode_utf16().cmp(b.encode_utf16())
    }
}

/// Appends a JSON string literal with the escapes JCS requires and no others.
pub fn write_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut run_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[run_start..i]);
        if escape.is_empty() {
            out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
        } else {
            out.extend_from_slice(escape);
        }
        run_start = i + 1;
    }
    out.extend_from_slice(&bytes[run_start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Limits;
    use crate::json::parse_one;

    fn canonical(text: &str) -> String {
        let mut out = Vec::new();
        write_value(&mut out, &parse_one(text, &Limits::default()).unwrap());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        assert_eq!(
            canonical(r#"{ "b" : 1.50, "a": [ 1.0, "x" ] }"#),
            r#"{"a":[1,"x"],"b":1.5}"#
        );
        assert_eq!(
            canonical(r#"{"\u00e9":1,"z":2,"\ud83d\ude00":3,"\uffff":4}"#),
            "{\"z\":2,\"é\":1,\"😀\":3,\"\u{ffff}\":4}"
        );
        assert_eq!(canonical(r#""a\u0001\/\"""#), r#""a\u0001/\"""#);
    }
}

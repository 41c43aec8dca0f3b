//! Rendering answers: JSON exactly as Python's `json.dumps(document, separators=(",", ":"))` writes it (ASCII
//! only, `\uXXXX` escapes), RFC 9457 problem documents, and the archive keys of accepted records.

use std::borrow::Cow;

use crate::canonical::id::Id;
use crate::canonical::records::hex;
use crate::contract::Issue;

/// The prefix of every problem's `type`.
pub const PROBLEM_TYPE: &str = "urn:tidegate:problem:";

/// A JSON string as `json.dumps` writes it (`ensure_ascii`): `"`, `\` and the controls escaped, every character
/// outside printable ASCII as `\uXXXX` (a surrogate pair above the BMP), lower-case hex.
pub fn write_str(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let escape = |out: &mut Vec<u8>, unit: u16| {
        out.extend_from_slice(b"\\u");
        for shift in [12, 8, 4, 0] {
            out.push(HEX[usize::from((unit >> shift) & 15)]);
        }
    };
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut start = 0;
    for (index, byte) in bytes.iter().enumerate() {
        if (b' '..=b'~').contains(byte) && *byte != b'"' && *byte != b'\\' {
            continue;
        }
        if byte & 0xC0 == 0x80 {
            continue; // a continuation byte: its character was escaped at its first byte
        }
        out.extend_from_slice(&bytes[start..index]);
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0C => out.extend_from_slice(b"\\f"),
            _ => {
                // `index` starts a character (the text is UTF-8).
                let character = text[index..].chars().next().unwrap_or('\u{FFFD}');
                let mut units = [0u16; 2];
                for unit in character.encode_utf16(&mut units) {
                    escape(out, *unit);
                }
            }
        }
        start = index + 1;
        while start < bytes.len() && bytes[start] & 0xC0 == 0x80 {
            start += 1;
        }
    }
    out.extend_from_slice(&bytes[start.min(bytes.len())..]);
    out.push(b'"');
}

/// `"name":` after a `{` or a `,` the caller wrote.
pub fn key(out: &mut Vec<u8>, name: &str) {
    write_str(out, name);
    out.push(b':');
}

pub fn int(out: &mut Vec<u8>, value: impl std::fmt::Display) {
    use std::io::Write;
    let _ = write!(out, "{value}");
}

pub fn opt_id(out: &mut Vec<u8>, id: Option<&Id>) {
    match id {
        Some(id) => write_str(out, &hex(id)),
        None => out.extend_from_slice(b"null"),
    }
}

pub fn opt_int(out: &mut Vec<u8>, value: Option<i64>) {
    match value {
        Some(value) => int(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

/// `[{"path":..,"message":..}, ...]` (with `"index"` when `with_index` and the issue has one).
pub fn issues(out: &mut Vec<u8>, list: &[&Issue], with_index: bool) {
    out.push(b'[');
    for (n, issue) in list.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.push(b'{');
        key(out, "path");
        write_str(out, &issue.path);
        out.push(b',');
        key(out, "message");
        write_str(out, &issue.message);
        if with_index && let Some(index) = issue.index {
            out.push(b',');
            key(out, "index");
            int(out, index);
        }
        out.push(b'}');
    }
    out.push(b']');
}

pub fn strings(out: &mut Vec<u8>, list: &[&str]) {
    out.push(b'[');
    for (n, text) in list.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        write_str(out, text);
    }
    out.push(b']');
}

/// One field error of a problem document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
    pub index: Option<usize>,
}

/// A client-facing failure, rendered as `application/problem+json` (RFC 9457).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: u16,
    pub slug: Cow<'static, str>,
    pub detail: String,
    pub errors: Vec<FieldError>,
    pub headers: Vec<(&'static str, Vec<u8>)>,
}

pub fn title(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

impl Problem {
    pub fn new(status: u16, slug: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            slug: slug.into(),
            detail: detail.into(),
            errors: Vec::new(),
            headers: Vec::new(),
        }
    }

    pub fn with_error(mut self, path: impl Into<String>, message: impl Into<String>) -> Problem {
        self.errors.push(FieldError {
            path: path.into(),
            message: message.into(),
            index: None,
        });
        self
    }

    /// The problem document.
    pub fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160 + self.detail.len());
        out.push(b'{');
        key(&mut out, "type");
        write_str(&mut out, &format!("{PROBLEM_TYPE}{}", self.slug));
        out.push(b',');
        key(&mut out, "title");
        write_str(&mut out, title(self.status));
        out.push(b',');
        key(&mut out, "status");
        int(&mut out, self.status);
        out.push(b',');
        key(&mut out, "detail");
        write_str(&mut out, &self.detail);
        out.push(b',');
        key(&mut out, "errors");
        out.push(b'[');
        for (n, error) in self.errors.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.push(b'{');
            key(&mut out, "path");
            write_str(&mut out, &error.path);
            out.push(b',');
            key(&mut out, "message");
            write_str(&mut out, &error.message);
            if let Some(index) = error.index {
                out.push(b',');
                key(&mut out, "index");
                int(&mut out, index);
            }
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
        out
    }

    /// A whole-body refusal's reason, as its document gives it: the detail, then each `path: message`.
    pub fn reason(&self) -> String {
        let mut reason = self.detail.clone();
        for error in &self.errors {
            reason.push_str("; ");
            reason.push_str(&error.path);
            reason.push_str(": ");
            reason.push_str(&error.message);
        }
        reason
    }
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01), proleptic Gregorian.
pub fn write_day(out: &mut Vec<u8>, day: i64) {
    // Howard Hinnant's civil_from_days.
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    use std::io::Write;
    let _ = write!(out, "{y:04}-{m:02}-{d:02}");
}

const DAY_MS: i64 = 86_400_000;

/// The archive keys of one request's records: `raw/source=../event_type=../event_date=../ingest_date=../hour=HH/
/// event_id=..` (see `tidegate.archive`); the record's own time is reception less its lag.
pub struct ArchiveKeys {
    head: Vec<u8>,
    tail: Vec<u8>,
    received_ms: i64,
}

impl ArchiveKeys {
    pub fn new(source: &str, event_type: &str, received_ms: i64) -> ArchiveKeys {
        let head = format!("raw/source={source}/event_type={event_type}/event_date=").into_bytes();
        let mut tail = b"/ingest_date=".to_vec();
        write_day(&mut tail, received_ms.div_euclid(DAY_MS));
        tail.extend_from_slice(
            format!(
                "/hour={:02}/event_id=",
                received_ms.div_euclid(3_600_000).rem_euclid(24)
            )
            .as_bytes(),
        );
        ArchiveKeys {
            head,
            tail,
            received_ms,
        }
    }

    /// The key as a JSON string (it is ASCII but for the source, which is too).
    pub fn write(&self, out: &mut Vec<u8>, lag_ms: Option<i64>, id: &Id) {
        let mut text = self.head.clone();
        write_day(&mut text, (self.received_ms - lag_ms.unwrap_or(0)).div_euclid(DAY_MS));
        text.extend_from_slice(&self.tail);
        text.extend_from_slice(hex(id).as_bytes());
        write_str(out, &String::from_utf8_lossy(&text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> String {
        let mut out = Vec::new();
        write_str(&mut out, text);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_are_escaped_as_python_writes_them() {
        assert_eq!(json("plain"), r#""plain""#);
        assert_eq!(json("a\"b\\c\n\r\t\u{8}\u{c}"), r#""a\"b\\c\n\r\t\b\f""#);
        assert_eq!(json("\u{1}\u{7f}"), r#""\u0001\u007f""#);
        assert_eq!(json("température"), r#""temp\u00e9rature""#);
        assert_eq!(json("x😀y"), r#""x\ud83d\ude00y""#);
    }

    #[test]
    fn problem_documents() {
        let mut problem =
            Problem::new(403, "wrong-device", "the key belongs to a, not b").with_error("$.device_id", "must be a");
        problem.errors[0].index = Some(2);
        assert_eq!(
            String::from_utf8(problem.body()).unwrap(),
            r#"{"type":"urn:tidegate:problem:wrong-device","title":"Forbidden","status":403,"detail":"the key belongs to a, not b","errors":[{"path":"$.device_id","message":"must be a","index":2}]}"#
        );
        assert_eq!(problem.reason(), "the key belongs to a, not b; $.device_id: must be a");
    }

    #[test]
    fn days_and_archive_keys() {
        let mut out = Vec::new();
        write_day(&mut out, 0);
        write_day(&mut out, 20_816);
        assert_eq!(out, b"1970-01-012026-12-29");
        let keys = ArchiveKeys::new("http", "telemetry", 1_798_675_200_000 + 5 * 3_600_000);
        let mut out = Vec::new();
        keys.write(&mut out, Some(86_400_000), &[0xab; 16]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "\"raw/source=http/event_type=telemetry/event_date=2026-12-30/ingest_date=2026-12-31/hour=05/event_id={}\"",
                "ab".repeat(16)
            )
        );
    }
}

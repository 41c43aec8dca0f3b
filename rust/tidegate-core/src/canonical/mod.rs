//! The canonical JSON form (RFC 8785, JCS): object keys sorted by UTF-16 code units, no insignificant
//! whitespace, ECMAScript number spelling (integers of the 64-bit range as their digits, see `number`), minimal
//! string escapes. Same logical value, same bytes.

use std::borrow::Cow;
use std::cmp::Ordering;

pub mod id;
pub mod number;
pub mod records;

use crate::decode::json;
use crate::decode::value::Value;

/// Appends the canonical JSON of `value`. `Invalid` nodes never reach here: records holding one are rejected.
pub fn write_value(out: &mut Vec<u8>, value: &Value<'_>) {
    Writer::new(out).value(value);
}

/// Objects up to this many keys are sorted on the stack.
const SMALL_OBJECT: usize = 16;

static NULL: Value<'static> = Value::Null;

/// Calls `f` with the fields of an object in canonical key order, without allocating for small objects.
pub(crate) fn with_sorted<'v, R>(
    fields: &'v [(Cow<'_, str>, Value<'v>)],
    f: impl FnOnce(&[(&'v str, &'v Value<'v>)]) -> R,
) -> R {
    let mut small: [(&str, &Value<'_>); SMALL_OBJECT] = [("", &NULL); SMALL_OBJECT];
    let mut large = Vec::new();
    let sorted: &mut [(&str, &Value<'_>)] = if fields.len() <= SMALL_OBJECT {
        for (slot, (k, v)) in small.iter_mut().zip(fields) {
            *slot = (k.as_ref(), v);
        }
        &mut small[..fields.len()]
    } else {
        large.extend(fields.iter().map(|(k, v)| (k.as_ref(), v)));
        &mut large
    };
    sort_entries(sorted);
    f(sorted)
}

/// Sorts object entries into canonical key order (insertion sort for the usual handful of keys).
pub(crate) fn sort_entries<V>(entries: &mut [(&str, V)]) {
    if entries.len() > SMALL_OBJECT {
        entries.sort_unstable_by(|a, b| compare_keys(a.0, b.0));
        return;
    }
    for i in 1..entries.len() {
        let mut j = i;
        while j > 0 && compare_keys(entries[j - 1].0, entries[j].0) == Ordering::Greater {
            entries.swap(j - 1, j);
            j -= 1;
        }
    }
}

/// Appends an object whose entries are already in canonical key order.
pub fn write_object(out: &mut Vec<u8>, sorted: &[(&str, &Value<'_>)]) {
    Writer::new(out).object(sorted);
}

/// JCS key order: by UTF-16 code units.
///
/// UTF-8 byte order is code point order, which is UTF-16 order except between a supplementary character
/// (4-byte UTF-8, lead byte `F0..=F4`; a surrogate pair in UTF-16, `D800..`) and a character in
/// `U+E000..=U+FFFF` (lead byte `EE` or `EF`). The first differing bytes tell: equal prefixes end on the same
/// character boundary, so two differing lead bytes of those two kinds are the only case to reverse.
#[inline]
pub fn compare_keys(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    // Usually the first bytes differ, and are not a pair to reverse.
    if let (Some(&x), Some(&y)) = (a.first(), b.first())
        && x != y
        && (x < 0xEE || y < 0xEE)
    {
        return x.cmp(&y);
    }
    match a.iter().zip(b).position(|(x, y)| x != y) {
        None => a.len().cmp(&b.len()),
        Some(i) => {
            let (x, y) = (a[i], b[i]);
            if x >= 0xEE && y >= 0xEE && (x >= 0xF0) != (y >= 0xF0) {
                y.cmp(&x)
            } else {
                x.cmp(&y)
            }
        }
    }
}

/// Whether a string holds a byte JSON must escape (`"`, `\\`, a control character). Strings up to 32 bytes are
/// tested as a few overlapping words, without a loop.
#[inline(always)]
fn needs_escape(bytes: &[u8]) -> bool {
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
    let half = |at: usize| u64::from(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default()));
    let n = bytes.len();
    match n {
        0..4 => bytes.iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20),
        4..8 => json::special_bytes(half(0) | half(n - 4) << 32) != 0,
        8..16 => json::special_bytes(word(0)) | json::special_bytes(word(n - 8)) != 0,
        16..=32 => {
            (json::special_bytes(word(0))
                | json::special_bytes(word(8))
                | json::special_bytes(word(n - 16))
                | json::special_bytes(word(n - 8)))
                != 0
        }
        _ => json::scan_plain(bytes, 0) != n,
    }
}

/// Appends a JSON string literal with the escapes JCS requires and no others.
pub fn write_string(out: &mut Vec<u8>, s: &str) {
    Writer::new(out).string(s);
}

/// Zeroed bytes a [`Writer`] keeps past its end: room for any short copy without a growth check of its own.
const SLACK: usize = 64;

/// How much a [`Writer`] grows its buffer by at least, beyond the slack.
const CHUNK: usize = 1024;

/// Appends canonical JSON to a `Vec<u8>`. It keeps [`SLACK`] zeroed bytes past its logical end, so that short
/// copies (keys, strings, numbers) are a few fixed-size word copies rather than a `memcpy` call, and single
/// bytes need no capacity check of their own. Dropping it trims the slack.
pub(crate) struct Writer<'w> {
    buf: &'w mut Vec<u8>,
    pos: usize,
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        self.buf.truncate(self.pos);
    }
}

impl<'w> Writer<'w> {
    pub(crate) fn new(buf: &'w mut Vec<u8>) -> Self {
        Writer::with_room(buf, SLACK)
    }

    /// A writer that makes room for about `room` bytes at once (beyond the slack), to grow less often.
    pub(crate) fn with_room(buf: &'w mut Vec<u8>, room: usize) -> Self {
        let pos = buf.len();
        buf.resize(pos + SLACK + room, 0);
        Writer { buf, pos }
    }

    /// The bytes of the buffer, up to the end of what was written.
    pub(crate) fn written(&self) -> &[u8] {
        &self.buf[..self.pos]
    }

    /// The length of the buffer, up to the end of what was written.
    pub(crate) fn len(&self) -> usize {
        self.pos
    }

    /// Restores the invariant `buf.len() >= pos + SLACK` after a write.
    #[inline(always)]
    fn advance(&mut self, n: usize) {
        self.pos += n;
        if self.buf.len() < self.pos + SLACK {
            self.grow(0);
        }
    }

    #[cold]
    #[inline(never)]
    fn grow(&mut self, extra: usize) {
        self.buf.resize(self.pos + extra + SLACK + CHUNK, 0);
    }

    #[inline(always)]
    pub(crate) fn byte(&mut self, b: u8) {
        self.buf[self.pos] = b;
        self.advance(1);
    }

    /// Appends `bytes`: up to [`SLACK`] bytes as overlapping fixed-size copies.
    #[inline(always)]
    pub(crate) fn put(&mut self, bytes: &[u8]) {
        let n = bytes.len();
        if n > SLACK && self.buf.len() < self.pos + n + SLACK {
            self.grow(n);
        }
        self.copy(self.pos, bytes);
        self.advance(n);
    }

    /// Copies `bytes` to `at`, which has room for them (at most [`SLACK`] bytes past the end, or more after a
    /// growth), without moving the end.
    #[inline(always)]
    fn copy(&mut self, at: usize, bytes: &[u8]) {
        #[inline(always)]
        fn copy<const W: usize>(buf: &mut [u8], at: usize, from: &[u8]) {
            let mut word = [0u8; W];
            word.copy_from_slice(&from[..W]);
            buf[at..at + W].copy_from_slice(&word);
        }
        let n = bytes.len();
        match n {
            0 => {}
            1..4 => {
                for (i, &b) in bytes.iter().enumerate() {
                    self.buf[at + i] = b;
                }
            }
            4..8 => {
                copy::<4>(self.buf, at, bytes);
                copy::<4>(self.buf, at + n - 4, &bytes[n - 4..]);
            }
            8..16 => {
                copy::<8>(self.buf, at, bytes);
                copy::<8>(self.buf, at + n - 8, &bytes[n - 8..]);
            }
            16..=SLACK => {
                let mut i = 0;
                while i + 16 < n {
                    copy::<16>(self.buf, at + i, &bytes[i..]);
                    i += 16;
                }
                copy::<16>(self.buf, at + n - 16, &bytes[n - 16..]);
            }
            _ => self.buf[at..at + n].copy_from_slice(bytes),
        }
    }

    /// The canonical JSON of `value`.
    pub(crate) fn value(&mut self, value: &Value<'_>) {
        match value {
            Value::Null | Value::Invalid(_) => self.put(b"null"),
            Value::Bool(true) => self.put(b"true"),
            Value::Bool(false) => self.put(b"false"),
            Value::Number(_, Some(text)) => self.put(text),
            Value::Number(n, None) => number::write_canonical_to(self, *n),
            Value::Integer(i) => number::write_integer(self, i.negative, i.magnitude),
            Value::String(s) => self.string(s),
            Value::Array(items) => {
                self.byte(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.byte(b',');
                    }
                    self.value(item);
                }
                self.byte(b']');
            }
            Value::Object(fields) => with_sorted(fields, |sorted| self.object(sorted)),
        }
    }

    /// An object whose entries are already in canonical key order.
    pub(crate) fn object(&mut self, sorted: &[(&str, &Value<'_>)]) {
        self.byte(b'{');
        for (i, (key, value)) in sorted.iter().enumerate() {
            if i > 0 {
                self.byte(b',');
            }
            self.member(key, value);
        }
        self.byte(b'}');
    }

    /// `"key":value`.
    #[inline(always)]
    pub(crate) fn member(&mut self, key: &str, value: &Value<'_>) {
        let bytes = key.as_bytes();
        let n = bytes.len();
        if n + 3 <= SLACK && !needs_escape(bytes) {
            // `"key":` at once: the usual key is short and plain.
            let at = self.pos;
            self.buf[at] = b'"';
            self.copy(at + 1, bytes);
            self.buf[at + 1 + n] = b'"';
            self.buf[at + 2 + n] = b':';
            self.advance(n + 3);
        } else {
            self.string(key);
            self.byte(b':');
        }
        // The usual scalars without a call.
        match value {
            Value::Number(_, Some(text)) => self.put(text),
            Value::Number(n, None) => number::write_canonical_to(self, *n),
            Value::String(s) => self.string(s),
            _ => self.value(value),
        }
    }

    /// A JSON string literal with the escapes JCS requires and no others.
    #[inline(always)]
    pub(crate) fn string(&mut self, s: &str) {
        let bytes = s.as_bytes();
        let n = bytes.len();
        if n + 2 <= SLACK && !needs_escape(bytes) {
            let at = self.pos;
            self.buf[at] = b'"';
            self.copy(at + 1, bytes);
            self.buf[at + 1 + n] = b'"';
            self.advance(n + 2);
            return;
        }
        self.long_or_escaped_string(s);
    }

    /// [`Writer::string`] past the usual short plain string.
    #[inline(never)]
    fn long_or_escaped_string(&mut self, s: &str) {
        let bytes = s.as_bytes();
        self.byte(b'"');
        let mut run_start = 0;
        let mut i = json::scan_plain(bytes, 0);
        while i < bytes.len() {
            self.put(&bytes[run_start..i]);
            let b = bytes[i];
            match b {
                b'"' => self.put(b"\\\""),
                b'\\' => self.put(b"\\\\"),
                b'\n' => self.put(b"\\n"),
                b'\r' => self.put(b"\\r"),
                b'\t' => self.put(b"\\t"),
                0x08 => self.put(b"\\b"),
                0x0c => self.put(b"\\f"),
                _ => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    self.put(&[
                        b'\\',
                        b'u',
                        b'0',
                        b'0',
                        HEX[usize::from(b >> 4)],
                        HEX[usize::from(b & 15)],
                    ]);
                }
            }
            run_start = i + 1;
            i = json::scan_plain(bytes, run_start);
        }
        self.put(&bytes[run_start..]);
        self.byte(b'"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Limits;
    use crate::decode::json::parse_one;

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
        assert_eq!(
            canonical(r#""\u0000\u0008\t\n\u000b\f\r\u001f\u007f\\é""#),
            "\"\\u0000\\b\\t\\n\\u000b\\f\\r\\u001f\u{7f}\\\\é\""
        );
    }

    #[test]
    fn writer_copies_any_length() {
        let source: Vec<u8> = (0..200).collect();
        let mut out = vec![255];
        let mut expected = vec![255];
        for n in 0..source.len() {
            let mut writer = Writer::new(&mut out);
            writer.put(&source[..n]);
            writer.byte(7);
            drop(writer);
            expected.extend_from_slice(&source[..n]);
            expected.push(7);
            assert_eq!(out, expected);
        }
    }

    #[test]
    fn escapes_are_found_at_any_position() {
        for n in 0..48 {
            let plain = "é".repeat(n / 2) + &"a".repeat(n % 2);
            assert!(!needs_escape(plain.as_bytes()));
            for at in 0..plain.len() {
                for special in [b'"', b'\\', 0, 0x1f] {
                    let mut bytes = plain.clone().into_bytes();
                    bytes[at] = special;
                    assert!(needs_escape(&bytes), "{n} {at} {special}");
                }
            }
        }
    }

    #[test]
    fn key_order_is_utf16_order() {
        let keys = [
            "",
            "a",
            "ab",
            "b",
            "é",
            "\u{e000}",
            "\u{ffff}",
            "😀",
            "\u{10ffff}",
            "a😀",
            "a\u{ffff}",
            "\u{7ff}",
        ];
        for a in keys {
            for b in keys {
                assert_eq!(
                    compare_keys(a, b),
                    a.encode_utf16().cmp(b.encode_utf16()),
                    "{a:?} {b:?}"
                );
            }
        }
    }
}

//! A strict JSON decoder for untrusted bodies.
//!
//! Syntax errors fail the whole document. Problems confined to one value (duplicate keys, lone surrogates,
//! numbers beyond every double, limits) become `Value::Invalid` so neighbouring records survive.

use std::borrow::Cow;

use crate::decode::number;
use crate::decode::value::{Value, same_key};
use crate::decode::{Limits, PayloadError};

/// Decodes a body holding either one JSON value or a top-level array of records.
/// A top-level array is split into records (bounded by `max_records`); anything else is one record.
pub fn parse_records<'a>(data: &'a [u8], limits: &Limits) -> Result<Vec<Value<'a>>, PayloadError> {
    let mut records = Vec::new();
    for_each_record(data, limits, |_, record| records.push(record))?;
    Ok(records)
}

/// [`parse_records`], handing each record to `f` (with its index) as soon as it is decoded; returns how many
/// there were. On a whole-body error, `f` may have seen the records before it.
pub(crate) fn for_each_record<'a>(
    data: &'a [u8],
    limits: &Limits,
    mut f: impl FnMut(usize, Value<'a>),
) -> Result<usize, PayloadError> {
    let text = std::str::from_utf8(data).map_err(|e| PayloadError::Malformed {
        offset: e.valid_up_to(),
        message: "invalid UTF-8".into(),
    })?;
    let mut scratch = Scratch::default();
    let mut parser = Parser::new(text, limits, &mut scratch);
    let parsed = (|| {
        parser.skip_ws();
        let count = if parser.peek() == Some(b'[') {
            parser.pos += 1;
            parser.top_level_array(&mut f)?
        } else {
            f(0, parser.parse_value(1)?);
            1
        };
        parser.expect_end()?;
        Ok(count)
    })();
    parsed.map_err(|Fail| parser.take_error())
}

/// Decodes exactly one JSON value (one NDJSON line, a JSON Schema document...).
pub fn parse_one<'a>(text: &'a str, limits: &Limits) -> Result<Value<'a>, PayloadError> {
    parse_one_with(text, limits, &mut Scratch::default())
}

/// Scratch space of the decoder, reusable from one document to the next: the containers being decoded and
/// their members and items so far, innermost last. A container collects its own on top, then moves them into a
/// vector of exactly their number.
#[derive(Default)]
pub(crate) struct Scratch<'a> {
    frames: Vec<Frame<'a>>,
    members: Vec<(Cow<'a, str>, Value<'a>)>,
    items: Vec<Value<'a>>,
}

/// A container being decoded.
enum Frame<'a> {
    /// Its members start at `base` in `Scratch::members`; `key` is the key of the member being decoded;
    /// `problem` the first problem found (the object becomes `Invalid`).
    Object {
        base: usize,
        key: Result<Cow<'a, str>, &'static str>,
        problem: Option<String>,
    },
    /// Its items start at `base` in `Scratch::items`; `too_many` when items past the limit were dropped.
    Array { base: usize, too_many: bool },
}

/// [`parse_one`] with caller-provided scratch space (NDJSON decodes many small documents).
pub(crate) fn parse_one_with<'a>(
    text: &'a str,
    limits: &Limits,
    scratch: &mut Scratch<'a>,
) -> Result<Value<'a>, PayloadError> {
    scratch.frames.clear();
    scratch.members.clear();
    scratch.items.clear();
    let mut parser = Parser::new(text, limits, scratch);
    let parsed = (|| {
        let value = parser.parse_value(1)?;
        parser.expect_end()?;
        Ok(value)
    })();
    parsed.map_err(|Fail| parser.take_error())
}

/// For NDJSON: the record of the line starting at `start`, and where the line ends (its newline, or the end),
/// when the line is one value with only spaces, tabs or carriage returns around it; the value is then what
/// [`parse_one_with`] gives for the line alone, found without looking for the line's end first. `None` when the
/// line must be decoded on its own: a syntax error, an empty line, a value or data across lines.
pub(crate) fn parse_line<'a>(
    text: &'a str,
    start: usize,
    limits: &Limits,
    scratch: &mut Scratch<'a>,
) -> Option<(Value<'a>, usize)> {
    scratch.frames.clear();
    scratch.members.clear();
    scratch.items.clear();
    let mut parser = Parser::new(text.get(start..)?, limits, scratch);
    parser.skip_ws();
    let value = parser.parse_value(1).ok()?;
    while let Some(b' ' | b'\t' | b'\r') = parser.peek() {
        parser.pos += 1;
    }
    let ends_line = matches!(parser.peek(), None | Some(b'\n'));
    (ends_line && !parser.crossed_newline).then_some((value, start + parser.pos))
}

/// A syntax failure. The error itself waits in [`Parser::error`], which keeps results small and cheap to move.
struct Fail;

type Parsed<T> = Result<T, Fail>;

/// A short plain number's value, and its text when that is its canonical spelling.
type ShortNumber<'a> = (f64, Option<&'a [u8]>);

struct Parser<'a, 'l, 'm> {
    text: &'a str,
    data: &'a [u8],
    pos: usize,
    limits: &'l Limits,
    error: Option<PayloadError>,
    /// A newline was skipped (between tokens, or in a value nested too deep): the value is not within one line.
    crossed_newline: bool,
    scratch: &'m mut Scratch<'a>,
}

impl<'a, 'l, 'm> Parser<'a, 'l, 'm> {
    fn new(text: &'a str, limits: &'l Limits, scratch: &'m mut Scratch<'a>) -> Self {
        Parser {
            text,
            data: text.as_bytes(),
            pos: 0,
            limits,
            error: None,
            crossed_newline: false,
            scratch,
        }
    }

    fn take_error(&mut self) -> PayloadError {
        self.error.take().unwrap_or_else(|| PayloadError::Malformed {
            offset: self.pos,
            message: "invalid JSON".into(),
        })
    }

    fn peek(&self) -> Option<u8> {
        self.data.get(self.pos).copied()
    }

    #[cold]
    fn fail<T>(&mut self, message: &'static str) -> Parsed<T> {
        self.error = Some(PayloadError::Malformed {
            offset: self.pos,
            message: message.into(),
        });
        Err(Fail)
    }

    #[inline]
    fn skip_ws(&mut self) {
        if let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.skip_ws_slow();
        }
    }

    #[cold]
    fn skip_ws_slow(&mut self) {
        while let Some(b @ (b' ' | b'\t' | b'\n' | b'\r')) = self.peek() {
            self.crossed_newline |= b == b'\n';
            self.pos += 1;
        }
    }

    fn expect_end(&mut self) -> Parsed<()> {
        self.skip_ws();
        if self.pos != self.data.len() {
            return self.fail("unexpected data after the JSON value");
        }
        Ok(())
    }

    /// The items of the top-level array, each handed to `f` as soon as it is decoded; returns their number.
    fn top_level_array(&mut self, f: &mut impl FnMut(usize, Value<'a>)) -> Parsed<usize> {
        let mut count = 0;
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(count);
        }
        loop {
            if count == self.limits.max_records {
                self.error = Some(PayloadError::TooLarge {
                    what: "number of records",
                    limit: self.limits.max_records,
                });
                return Err(Fail);
            }
            f(count, self.parse_value(1)?);
            count += 1;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(count);
                }
                None => return self.fail("unterminated array"),
                _ => return self.fail("expected ',' or ']' in array"),
            }
        }
    }

    /// Decodes one value, at nesting `depth`. Iterative: containers are frames in `scratch`, and values are built
    /// where they are used (returning values from recursive calls costs store-forwarding stalls).
    fn parse_value(&mut self, mut depth: usize) -> Parsed<Value<'a>> {
        let floor = self.scratch.frames.len();
        'value: loop {
            self.skip_ws();
            let mut value: Value<'a>;
            if self.scratch.frames.len() > floor && self.scalar_member()? {
                // A string or number member went straight into the innermost object.
                if self.object_continues()? {
                    continue 'value;
                }
                value = self.close();
                depth -= 1;
            } else {
                value = match self.peek() {
                    Some(b'"') => {
                        self.pos += 1;
                        match self.parse_string()? {
                            Ok(s) if s.len() > self.limits.max_string_bytes => self.string_too_long(),
                            Ok(s) => Value::String(s),
                            Err(problem) => Value::Invalid(problem.into()),
                        }
                    }
                    Some(b'-' | b'0'..=b'9') => {
                        let number = self.parse_number()?;
                        self.number_value(number)
                    }
                    Some(b'{' | b'[') if depth > self.limits.max_depth => {
                        self.skip_nested()?;
                        Value::Invalid(format!("nesting deeper than {} levels", self.limits.max_depth).into())
                    }
                    Some(b'{') => {
                        self.pos += 1;
                        self.skip_ws();
                        if self.peek() == Some(b'}') {
                            self.pos += 1;
                            Value::Object(Vec::new())
                        } else {
                            let key = self.parse_key()?;
                            let base = self.scratch.members.len();
                            self.scratch.frames.push(Frame::Object {
                                base,
                                key,
                                problem: None,
                            });
                            depth += 1;
                            continue 'value;
                        }
                    }
                    Some(b'[') => {
                        self.pos += 1;
                        self.skip_ws();
                        if self.peek() == Some(b']') {
                            self.pos += 1;
                            Value::Array(Vec::new())
                        } else {
                            let base = self.scratch.items.len();
                            self.scratch.frames.push(Frame::Array { base, too_many: false });
                            depth += 1;
                            continue 'value;
                        }
                    }
                    Some(b't') => self.parse_literal("true", Value::Bool(true))?,
                    Some(b'f') => self.parse_literal("false", Value::Bool(false))?,
                    Some(b'n') => self.parse_literal("null", Value::Null)?,
                    Some(b'N') | Some(b'I') => return self.fail("NaN and Infinity are not JSON numbers"),
                    Some(_) => return self.fail("expected a JSON value"),
                    None => return self.fail("unexpected end of input"),
                };
            }
            // `value` is complete: it goes to the innermost open container, which may end with it, and so on up.
            loop {
                if self.scratch.frames.len() == floor {
                    return Ok(value);
                }
                let limits = self.limits;
                let scratch = &mut *self.scratch;
                let more = match scratch.frames.last_mut() {
                    Some(Frame::Object { base, key, problem }) => {
                        match std::mem::replace(key, Err("")) {
                            Err(p) => {
                                problem.get_or_insert_with(|| format!("object key: {p}"));
                            }
                            Ok(k) if k.len() > limits.max_key_bytes => {
                                problem.get_or_insert_with(|| {
                                    format!("object key longer than {} bytes", limits.max_key_bytes)
                                });
                            }
                            Ok(_) if scratch.members.len() - *base >= limits.max_object_keys => {
                                problem.get_or_insert_with(|| {
                                    format!("object with more than {} keys", limits.max_object_keys)
                                });
                            }
                            Ok(k) => scratch.members.push((k, value)),
                        }
                        self.object_continues()?
                    }
                    Some(Frame::Array { base, too_many }) => {
                        if scratch.items.len() - *base < limits.max_array_items {
                            scratch.items.push(value);
                        } else {
                            *too_many = true;
                        }
                        self.skip_ws();
                        match self.peek() {
                            Some(b',') => {
                                self.pos += 1;
                                true
                            }
                            Some(b']') => {
                                self.pos += 1;
                                false
                            }
                            None => return self.fail("unterminated array"),
                            _ => return self.fail("expected ',' or ']' in array"),
                        }
                    }
                    None => return Ok(value),
                };
                if more {
                    continue 'value;
                }
                value = self.close();
                depth -= 1;
            }
        }
    }

    /// When the innermost container is an object whose member value starts here as a string or a number, and
    /// the member is to be kept: decodes it into the object's members, built in place. `false` otherwise.
    #[inline(always)]
    fn scalar_member(&mut self) -> Parsed<bool> {
        let limits = self.limits;
        let first = self.peek();
        if !matches!(first, Some(b'"' | b'-' | b'0'..=b'9')) {
            return Ok(false);
        }
        let scratch = &mut *self.scratch;
        let Some(Frame::Object { base, key, .. }) = scratch.frames.last_mut() else {
            return Ok(false);
        };
        let kept = matches!(key, Ok(k) if k.len() <= limits.max_key_bytes)
            && scratch.members.len() - *base < limits.max_object_keys;
        if !kept {
            return Ok(false);
        }
        let Ok(k) = std::mem::replace(key, Err("")) else {
            return Ok(false);
        };
        // Each outcome is pushed as it is built, so that the member is written once, in place.
        if first == Some(b'"') {
            self.pos += 1;
            match self.parse_string()? {
                Ok(s) if s.len() <= limits.max_string_bytes => self.scratch.members.push((k, Value::String(s))),
                Ok(_) => {
                    let value = self.string_too_long();
                    self.scratch.members.push((k, value));
                }
                Err(problem) => self.scratch.members.push((k, Value::Invalid(problem.into()))),
            }
        } else {
            match self.parse_number()? {
                Ok((n, text)) => self.scratch.members.push((k, Value::Number(n, text))),
                Err(start) => {
                    let value = self.read_number(start);
                    self.scratch.members.push((k, value));
                }
            }
        }
        Ok(true)
    }

    /// After an object member: `true` when another follows (its key is read and stored in the object's frame),
    /// `false` when the object ends here.
    #[inline(always)]
    fn object_continues(&mut self) -> Parsed<bool> {
        self.skip_ws();
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                let key = self.parse_key()?;
                if let Some(Frame::Object { key: slot, .. }) = self.scratch.frames.last_mut() {
                    *slot = key;
                }
                Ok(true)
            }
            Some(b'}') => {
                self.pos += 1;
                Ok(false)
            }
            None => self.fail("unterminated object"),
            _ => self.fail("expected ',' or '}' in object"),
        }
    }

    /// Ends the innermost container, whose closing bracket was just read: its value.
    fn close(&mut self) -> Value<'a> {
        let scratch = &mut *self.scratch;
        match scratch.frames.pop() {
            Some(Frame::Object { base, problem, .. }) => {
                let problem = problem
                    .or_else(|| duplicate_key(&scratch.members[base..]).map(|key| format!("duplicate key {key:?}")));
                match problem {
                    Some(p) => {
                        scratch.members.truncate(base);
                        Value::Invalid(p.into())
                    }
                    None => Value::Object(scratch.members.split_off(base)),
                }
            }
            Some(Frame::Array { base, too_many }) => {
                if too_many {
                    scratch.items.truncate(base);
                    Value::Invalid(format!("array longer than {} items", self.limits.max_array_items).into())
                } else {
                    Value::Array(scratch.items.split_off(base))
                }
            }
            None => Value::Null,
        }
    }

    /// An object member's key and the colon after it.
    #[inline(always)]
    fn parse_key(&mut self) -> Parsed<Result<Cow<'a, str>, &'static str>> {
        self.skip_ws();
        if self.peek() != Some(b'"') {
            return self.fail("expected a string key in object");
        }
        self.pos += 1;
        let key = self.parse_string()?;
        self.skip_ws();
        if self.peek() != Some(b':') {
            return self.fail("expected ':' after object key");
        }
        self.pos += 1;
        Ok(key)
    }

    #[cold]
    fn string_too_long(&self) -> Value<'a> {
        Value::Invalid(format!("string longer than {} bytes", self.limits.max_string_bytes).into())
    }

    fn parse_literal(&mut self, word: &'static str, value: Value<'a>) -> Parsed<Value<'a>> {
        if self.data[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            self.fail("expected a JSON value")
        }
    }

    /// A number: its value when it is short and plain (the usual case, read here), with its text when that is
    /// its canonical spelling too; or where it starts, for [`Parser::read_number`].
    #[inline(always)]
    fn parse_number(&mut self) -> Parsed<Result<ShortNumber<'a>, usize>> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        // The digits accumulate as they are checked; a wrapped mantissa is never used (more than 15 digits).
        let mut mantissa = 0u64;
        let mut accumulate = |d: u8| mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
        let int_start = self.pos;
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                while let Some(&d @ b'0'..=b'9') = self.data.get(self.pos) {
                    accumulate(d);
                    self.pos += 1;
                }
            }
            _ => return self.fail("invalid number"),
        }
        let mut digits = self.pos - int_start;
        let mut fraction_digits = 0;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            let fraction_start = self.pos;
            while let Some(&d @ b'0'..=b'9') = self.data.get(self.pos) {
                accumulate(d);
                self.pos += 1;
            }
            fraction_digits = self.pos - fraction_start;
            if fraction_digits == 0 {
                return self.fail("invalid number: digits expected after '.'");
            }
            digits += fraction_digits;
        }
        let mut has_exponent = false;
        if let Some(b'e' | b'E') = self.peek() {
            has_exponent = true;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return self.fail("invalid number: digits expected in exponent");
            }
            self.skip_digits();
        }
        if let Some(b'N' | b'I') = self.peek() {
            return self.fail("NaN and Infinity are not JSON numbers");
        }
        if !has_exponent && digits <= 15 {
            // At most 15 significant digits: one correctly rounded division of exact doubles (Clinger's fast
            // path), the double `str::parse` gives; an integer is that double exactly.
            let value = mantissa as f64 / number::POW10[fraction_digits];
            // The canonical spelling of a decimal of at most 15 significant digits is that decimal, in its
            // shortest form (a double tells apart all such decimals, so none shorter reads back as it), written
            // plainly from 10^-6 up (`number::write_canonical`): the text, when it has no needless zero.
            let canonical = (fraction_digits == 0 || self.data[self.pos - 1] != b'0')
                && (value >= 1e-6 || (value == 0.0 && !negative));
            let text = canonical.then(|| &self.data[start..self.pos]);
            return Ok(Ok((if negative { -value } else { value }, text)));
        }
        Ok(Err(start))
    }

    /// The value of a number [`Parser::parse_number`] just read.
    #[inline(always)]
    fn number_value(&self, number: Result<ShortNumber<'a>, usize>) -> Value<'a> {
        match number {
            Ok((n, text)) => Value::Number(n, text),
            Err(start) => self.read_number(start),
        }
    }

    /// The value of the long or exponent-form number just read from `start` ([`number::read`]).
    #[cold]
    fn read_number(&self, start: usize) -> Value<'a> {
        let text = &self.text[start..self.pos];
        number::read(text)
            .unwrap_or_else(|| Value::Invalid(format!("number {text} is beyond the range of a double").into()))
    }

    fn skip_digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    /// Parses after the opening quote. The outer error is a syntax failure; the inner one a problem confined to
    /// this string (a lone surrogate).
    #[inline(always)]
    fn parse_string(&mut self) -> Parsed<Result<Cow<'a, str>, &'static str>> {
        let start = self.pos;
        let end = scan_plain(self.data, start);
        if self.data.get(end) == Some(&b'"') {
            self.pos = end + 1;
            return Ok(Ok(Cow::Borrowed(&self.text[start..end])));
        }
        self.parse_string_slow(start)
    }

    #[inline(never)]
    fn parse_string_slow(&mut self, start: usize) -> Parsed<Result<Cow<'a, str>, &'static str>> {
        self.pos = start;
        loop {
            self.pos = scan_plain(self.data, self.pos);
            match self.peek() {
                Some(b'"') => {
                    let s = &self.text[start..self.pos];
                    self.pos += 1;
                    return Ok(Ok(Cow::Borrowed(s)));
                }
                Some(b'\\') => break,
                Some(b) if b < 0x20 => return self.fail("control character in string"),
                Some(_) => self.pos += 1,
                None => return self.fail("unterminated string"),
            }
        }
        let mut owned = String::from(&self.text[start..self.pos]);
        let mut problem = None;
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(match problem {
                        Some(p) => Err(p),
                        None => Ok(Cow::Owned(owned)),
                    });
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let escaped = match self.peek() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            self.pos += 1;
                            let unit = self.parse_hex4()?;
                            match unit {
                                0xD800..=0xDBFF if self.data[self.pos..].starts_with(b"\\u") => {
                                    self.pos += 2;
                                    let low = self.parse_hex4()?;
                                    if (0xDC00..=0xDFFF).contains(&low) {
                                        let c = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                                        owned.push(char::from_u32(c).unwrap_or('\u{FFFD}'));
                                    } else {
                                        problem = Some("lone surrogate in string");
                                    }
                                }
                                0xD800..=0xDFFF => problem = Some("lone surrogate in string"),
                                _ => owned.push(char::from_u32(unit).unwrap_or('\u{FFFD}')),
                            }
                            continue;
                        }
                        _ => return self.fail("invalid escape in string"),
                    };
                    owned.push(escaped);
                    self.pos += 1;
                }
                Some(b) if b < 0x20 => return self.fail("control character in string"),
                Some(_) => {
                    let run_start = self.pos;
                    self.pos = scan_plain(self.data, self.pos);
                    owned.push_str(&self.text[run_start..self.pos]);
                }
                None => return self.fail("unterminated string"),
            }
        }
    }

    fn parse_hex4(&mut self) -> Parsed<u32> {
        let digits = self.data.get(self.pos..self.pos + 4);
        let parsed = digits
            .and_then(|d| std::str::from_utf8(d).ok())
            .filter(|s| s.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|s| u32::from_str_radix(s, 16).ok());
        match parsed {
            Some(v) => {
                self.pos += 4;
                Ok(v)
            }
            None => self.fail("invalid \\u escape"),
        }
    }

    /// Skips a nested value too deep to decode, without recursion, matching brackets outside strings.
    fn skip_nested(&mut self) -> Parsed<()> {
        let start = self.pos;
        self.skip_brackets()?;
        let skipped = &self.data[start..self.pos.min(self.data.len())];
        self.crossed_newline |= skipped.contains(&b'\n');
        Ok(())
    }

    fn skip_brackets(&mut self) -> Parsed<()> {
        let mut depth = 0usize;
        let mut in_string = false;
        while let Some(b) = self.peek() {
            self.pos += 1;
            if in_string {
                match b {
                    b'\\' => self.pos += 1,
                    b'"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'[' | b'{' => depth += 1,
                b']' | b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                _ => {}
            }
        }
        self.fail("unterminated nested value")
    }
}

const LOW: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// A mask with the high bit set in each byte of `word` that is `"`, `\\` or below 0x20. Bits above the lowest
/// set one may be false positives (borrows), so only the lowest is meaningful.
#[inline]
pub(crate) fn special_bytes(word: u64) -> u64 {
    let quote = word ^ (LOW * u64::from(b'"'));
    let backslash = word ^ (LOW * u64::from(b'\\'));
    let zero_in = |x: u64| x.wrapping_sub(LOW) & !x;
    (zero_in(quote) | zero_in(backslash) | (word.wrapping_sub(LOW * 0x20) & !word)) & HIGH
}

/// The position of the first byte at or after `pos` that ends a plain run inside a string: `"`, `\\`, a control
/// character, or the end of the data. Eight bytes at a time.
#[inline]
pub(crate) fn scan_plain(data: &[u8], mut pos: usize) -> usize {
    while let Some(chunk) = data.get(pos..pos + 8) {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        let found = special_bytes(word);
        if found != 0 {
            return pos + (found.trailing_zeros() / 8) as usize;
        }
        pos += 8;
    }
    while let Some(&b) = data.get(pos) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            break;
        }
        pos += 1;
    }
    pos
}

/// The position of the first `byte` at or after `pos`, or the length of `data`. Eight bytes at a time.
pub(crate) fn find_byte(data: &[u8], byte: u8, mut pos: usize) -> usize {
    let pattern = LOW * u64::from(byte);
    while let Some(chunk) = data.get(pos..pos + 8) {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default()) ^ pattern;
        let found = word.wrapping_sub(LOW) & !word & HIGH;
        if found != 0 {
            return pos + (found.trailing_zeros() / 8) as usize;
        }
        pos += 8;
    }
    data[pos.min(data.len())..]
        .iter()
        .position(|&b| b == byte)
        .map_or(data.len(), |i| pos + i)
}

/// The first key that occurs twice, if any.
pub fn duplicate_key<'k, V>(fields: &'k [(Cow<'_, str>, V)]) -> Option<&'k str> {
    if fields.len() <= 16 {
        for (i, (a, _)) in fields.iter().enumerate() {
            if fields[..i].iter().any(|(b, _)| same_key(a, b)) {
                return Some(a);
            }
        }
        return None;
    }
    let mut keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_ref()).collect();
    keys.sort_unstable();
    keys.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Value<'_> {
        parse_one(text, &Limits::default()).unwrap()
    }

    #[test]
    fn decodes_nested_documents() {
        let v = one(r#"{"a": [1, 2.5, "x\n\u00e9\ud83d\ude00"], "b": {"c": null, "d": true}}"#);
        assert_eq!(
            v.get("a"),
            Some(&Value::Array(vec![
                Value::Number(1.0, None),
                Value::Number(2.5, None),
                Value::String("x\né😀".into())
            ]))
        );
    }

    #[test]
    fn confines_value_level_problems() {
        assert!(matches!(one(r#"{"a":1,"a":2}"#), Value::Invalid(_)));
        assert!(matches!(one(r#""\ud800""#), Value::Invalid(_)));
        assert!(matches!(one("9007199254740993"), Value::Integer(_)));
        assert!(matches!(one("1e400"), Value::Invalid(_)));
        assert_eq!(one("9007199254740992"), Value::Number(9_007_199_254_740_992.0, None));
    }

    /// Plain decimals of up to 15 digits keep their text as their canonical spelling only when it is exactly
    /// what the canonical writer computes from the double.
    #[test]
    fn number_text_is_kept_only_when_canonical() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut kept = 0;
        for _ in 0..300_000 {
            let mut text = String::new();
            if next(3) == 0 {
                text.push('-');
            }
            let int_digits = next(16) as usize;
            if int_digits == 0 {
                text.push('0');
            } else {
                text.push(char::from(b'1' + next(9) as u8));
                (1..int_digits).for_each(|_| text.push(char::from(b'0' + next(10) as u8)));
            }
            let fraction_digits = next(16 - int_digits.max(1) as u64) as usize;
            if fraction_digits > 0 {
                text.push('.');
                // Leading zeros often, to cross 10^-6; a trailing zero sometimes.
                let zeros = if int_digits == 0 {
                    next(fraction_digits as u64 + 1) as usize
                } else {
                    0
                };
                (0..fraction_digits).for_each(|i| {
                    let digit = if i < zeros || (i + 1 == fraction_digits && next(4) == 0) {
                        0
                    } else {
                        next(10)
                    };
                    text.push(char::from(b'0' + digit as u8));
                });
            }
            let value = one(&text);
            let Value::Number(n, spelling) = value else {
                panic!("{text}: {value:?}")
            };
            let mut computed = Vec::new();
            crate::canonical::number::write_canonical(&mut computed, n);
            if let Some(spelling) = spelling {
                assert_eq!(
                    String::from_utf8_lossy(spelling),
                    String::from_utf8_lossy(&computed),
                    "{text}"
                );
                kept += 1;
            }
            let mut written = Vec::new();
            crate::canonical::write_value(&mut written, &value);
            assert_eq!(written, computed, "{text}");
        }
        assert!(kept > 100_000, "{kept}");
    }

    #[test]
    fn byte_scans_find_the_first_match() {
        let text = "abcdefghij\"kl\\\u{1}é\u{7f}";
        for start in 0..text.len() {
            let naive = (start..text.len())
                .find(|&i| matches!(text.as_bytes()[i], b'"' | b'\\' | 0..=0x1f))
                .unwrap_or(text.len());
            assert_eq!(scan_plain(text.as_bytes(), start), naive);
            let naive = (start..text.len())
                .find(|&i| text.as_bytes()[i] == b'l')
                .unwrap_or(text.len());
            assert_eq!(find_byte(text.as_bytes(), b'l', start), naive);
        }
        assert_eq!(find_byte(b"", b'\n', 0), 0);
    }

    #[test]
    fn duplicate_keys_are_found() {
        let keys = [
            "a",
            "b",
            "ab",
            "ba",
            "",
            "temperature",
            "humidity",
            "pressure",
            "aa",
            "a\u{e9}",
        ];
        for n in 0..=keys.len() {
            for dup in 0..n {
                let mut fields: Vec<(Cow<'_, str>, ())> = keys[..n].iter().map(|k| (Cow::Borrowed(*k), ())).collect();
                assert_eq!(duplicate_key(&fields), None);
                fields.push((Cow::Borrowed(keys[dup]), ()));
                assert_eq!(duplicate_key(&fields), Some(keys[dup]));
            }
        }
    }

    #[test]
    fn rejects_syntax_errors() {
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\" 1}",
            "NaN",
            "-Infinity",
            "01",
            "1.",
            "\"a",
            "tru",
            "{} x",
            "[1 2]",
        ] {
            assert!(parse_one(bad, &Limits::default()).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn deep_nesting_is_confined_and_bounded() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(one(&deep).first_invalid().is_some());
        let ok = format!("{}{}", "[".repeat(32), "]".repeat(32));
        assert!(matches!(one(&ok), Value::Array(_)));
        let over = format!("{}{}", "[".repeat(33), "]".repeat(33));
        assert!(one(&over).first_invalid().is_some());
    }
}

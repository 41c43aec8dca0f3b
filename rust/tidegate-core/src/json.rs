//! A strict JSON decoder for untrusted bodies.
//!
//! Syntax errors fail the whole document. Problems confined to one value (duplicate keys, lone surrogates,
//! numbers a double cannot hold exactly, limits) become `Value::Invalid` so neighbouring records survive.

use std::borrow::Cow;

use crate::error::{Limits, PayloadError};
use crate::number;
use crate::value::Value;

/// Decodes a body holding either one JSON value or a top-level array of records.
/// A top-level array is split into records (bounded by `max_records`); anything else is one record.
pub fn parse_records<'a>(data: &'a [u8], limits: &Limits) -> Result<Vec<Value<'a>>, PayloadError> {
    let text = std::str::from_utf8(data).map_err(|e| PayloadError::Malformed {
        offset: e.valid_up_to(),
        message: "invalid UTF-8".into(),
    })?;
    let mut parser = Parser::new(text, limits);
    parser.skip_ws();
    let records = if parser.peek() == Some(b'[') {
        parser.pos += 1;
        parser.parse_top_level_array()?
    } else {
        vec![parser.parse_value(1)?]
    };
    parser.expect_end()?;
    Ok(records)
}

/// Decodes exactly one JSON value (one NDJSON line, a JSON Schema document...).
pub fn parse_one<'a>(text: &'a str, limits: &Limits) -> Result<Value<'a>, PayloadError> {
    let mut parser = Parser::new(text, limits);
    let value = parser.parse_value(1)?;
    parser.expect_end()?;
    Ok(value)
}

struct Parser<'a, 'l> {
    text: &'a str,
    data: &'a [u8],
    pos: usize,
    limits: &'l Limits,
}

impl<'a, 'l> Parser<'a, 'l> {
    fn new(text: &'a str, limits: &'l Limits) -> Self {
        Parser {
            text,
            data: text.as_bytes(),
            pos: 0,
            limits,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.data.get(self.pos).copied()
    }

    fn fail<T>(&self, message: impl Into<String>) -> Result<T, PayloadError> {
        Err(PayloadError::Malformed {
            offset: self.pos,
            message: message.into(),
        })
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect_end(&mut self) -> Result<(), PayloadError> {
        self.skip_ws();
        if self.pos != self.data.len() {
            return self.fail("unexpected data after the JSON value");
        }
        Ok(())
    }

    fn parse_top_level_array(&mut self) -> Result<Vec<Value<'a>>, PayloadError> {
        let mut records = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(records);
        }
        loop {
            if records.len() == self.limits.max_records {
                return Err(PayloadError::TooLarge {
                    what: "number of records",
                    limit: self.limits.max_records,
                });
            }
            records.push(self.parse_value(1)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(records);
                }
                None => return self.fail("unterminated array"),
                _ => return self.fail("expected ',' or ']' in array"),
            }
        }
    }

    fn parse_value(&mut self, depth: usize) -> Result<Value<'a>, PayloadError> {
        self.skip_ws();
        match self.peek() {
            Some(b'{') | Some(b'[') if depth > self.limits.max_depth => {
                self.skip_nested()?;
                Ok(Value::Invalid(
                    format!("nesting deeper than {} levels", self.limits.max_depth).into(),
                ))
            }
            Some(b'{') => {
                self.pos += 1;
                self.parse_object(depth)
            }
            Some(b'[') => {
                self.pos += 1;
                self.parse_array(depth)
            }
            Some(b'"') => {
                self.pos += 1;
                let s = self.parse_string()?;
                Ok(match s {
                    Ok(s) if s.len() > self.limits.max_string_bytes => {
                        Value::Invalid(format!("string longer than {} bytes", self.limits.max_string_bytes).into())
                    }
                    Ok(s) => Value::String(s),
                    Err(problem) => Value::Invalid(problem.into()),
                })
            }
            Some(b't') => self.parse_literal("true", Value::Bool(true)),
            Some(b'f') => self.parse_literal("false", Value::Bool(false)),
            Some(b'n') => self.parse_literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.parse_number(),
            Some(b'N') | Some(b'I') => self.fail("NaN and Infinity are not JSON numbers"),
            Some(_) => self.fail("expected a JSON value"),
            None => self.fail("unexpected end of input"),
        }
    }

    fn parse_literal(&mut self, word: &'static str, value: Value<'a>) -> Result<Value<'a>, PayloadError> {
        if self.data[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            self.fail("expected a JSON value")
        }
    }

    fn parse_number(&mut self) -> Result<Value<'a>, PayloadError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.skip_digits(),
            _ => return self.fail("invalid number"),
        }
        let mut plain_integer = true;
        if self.peek() == Some(b'.') {
            plain_integer = false;
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return self.fail("invalid number: digits expected after '.'");
            }
            self.skip_digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            plain_integer = false;
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
        let text = &self.text[start..self.pos];
        Ok(match number::exact_f64(text, plain_integer) {
            Some(n) => Value::Number(n),
            None => Value::Invalid(format!("number {text} cannot be represented exactly").into()),
        })
    }

    fn skip_digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    /// Parses after the opening quote. The outer error is a syntax failure; the inner one a problem confined to
    /// this string (a lone surrogate).
    fn parse_string(&mut self) -> Result<Result<Cow<'a, str>, &'static str>, PayloadError> {
        let start = self.pos;
        loop {
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
                    while let Some(b) = self.peek() {
                        if b == b'"' || b == b'\\' || b < 0x20 {
                            break;
                        }
                        self.pos += 1;
                    }
                    owned.push_str(&self.text[run_start..self.pos]);
                }
                None => return self.fail("unterminated string"),
            }
        }
    }

    fn parse_hex4(&mut self) -> Result<u32, PayloadError> {
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

    fn parse_array(&mut self, depth: usize) -> Result<Value<'a>, PayloadError> {
        let mut items = Vec::new();
        let mut too_many = false;
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            let item = self.parse_value(depth + 1)?;
            if items.len() < self.limits.max_array_items {
                items.push(item);
            } else {
                too_many = true;
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    break;
                }
                None => return self.fail("unterminated array"),
                _ => return self.fail("expected ',' or ']' in array"),
            }
        }
        if too_many {
            return Ok(Value::Invalid(
                format!("array longer than {} items", self.limits.max_array_items).into(),
            ));
        }
        Ok(Value::Array(items))
    }

    fn parse_object(&mut self, depth: usize) -> Result<Value<'a>, PayloadError> {
        let mut fields: Vec<(Cow<'a, str>, Value<'a>)> = Vec::new();
        let mut problem: Option<String> = None;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Object(fields));
        }
        loop {
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
            let value = self.parse_value(depth + 1)?;
            match key {
                Err(p) => problem = problem.or_else(|| Some(format!("object key: {p}"))),
                Ok(k) if k.len() > self.limits.max_key_bytes => {
                    problem =
                        problem.or_else(|| Some(format!("object key longer than {} bytes", self.limits.max_key_bytes)))
                }
                Ok(_) if fields.len() >= self.limits.max_object_keys => {
                    problem =
                        problem.or_else(|| Some(format!("object with more than {} keys", self.limits.max_object_keys)))
                }
                Ok(k) => fields.push((k, value)),
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    break;
                }
                None => return self.fail("unterminated object"),
                _ => return self.fail("expected ',' or '}' in object"),
            }
        }
        if let Some(p) = problem {
            return Ok(Value::Invalid(p.into()));
        }
        if let Some(key) = duplicate_key(&fields) {
            return Ok(Value::Invalid(format!("duplicate key {key:?}").into()));
        }
        Ok(Value::Object(fields))
    }

    /// Skips a nested value too deep to decode, without recursion, matching brackets outside strings.
    fn skip_nested(&mut self) -> Result<(), PayloadError> {
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

/// The first key that occurs twice, if any.
pub fn duplicate_key<'k, V>(fields: &'k [(Cow<'_, str>, V)]) -> Option<&'k str> {
    if fields.len() <= 16 {
        for (i, (a, _)) in fields.iter().enumerate() {
            if fields[..i].iter().any(|(b, _)| a == b) {
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
                Value::Number(1.0),
                Value::Number(2.5),
                Value::String("x\né😀".into())
            ]))
        );
    }

    #[test]
    fn confines_value_level_problems() {
        assert!(matches!(one(r#"{"a":1,"a":2}"#), Value::Invalid(_)));
        assert!(matches!(one(r#""\ud800""#), Value::Invalid(_)));
        assert!(matches!(one("9007199254740993"), Value::Invalid(_)));
        assert!(matches!(one("1e400"), Value::Invalid(_)));
        assert_eq!(one("9007199254740992"), Value::Number(9_007_199_254_740_992.0));
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

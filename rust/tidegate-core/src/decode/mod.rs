//! From request bytes to records: content encoding (bounded decompression) and content type dispatch.

use std::borrow::Cow;
use std::io::Read;

pub mod cbor;
pub mod json;
mod limits;
pub mod number;
pub mod time;
pub mod value;

pub use limits::{Limits, PayloadError};
use value::Value;

/// The body formats tidegate decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON value, or a top-level array of records.
    Json,
    /// Newline-delimited JSON: one record per line; a bad line rejects only that record.
    Ndjson,
    /// One CBOR item, or a top-level array of records.
    Cbor,
}

impl Format {
    /// Maps a `Content-Type` header value (parameters ignored) to a format.
    pub fn from_content_type(content_type: &str) -> Result<Format, PayloadError> {
        let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match essence.as_str() {
            "" | "application/json" | "text/json" => Ok(Format::Json),
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" | "application/json-seq" => {
                Ok(Format::Ndjson)
            }
            "application/cbor" => Ok(Format::Cbor),
            other if other.starts_with("application/") && other.ends_with("+json") => Ok(Format::Json),
            _ => Err(PayloadError::UnsupportedFormat(content_type.to_string())),
        }
    }
}

/// Content encodings tidegate decompresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

impl Encoding {
    /// Maps a `Content-Encoding` header value to an encoding.
    pub fn from_header(value: Option<&str>) -> Result<Encoding, PayloadError> {
        let Some(value) = value else {
            return Ok(Encoding::Identity);
        };
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "identity" => Ok(Encoding::Identity),
            "gzip" | "x-gzip" => Ok(Encoding::Gzip),
            "zstd" => Ok(Encoding::Zstd),
            _ => Err(PayloadError::UnsupportedEncoding(value.to_string())),
        }
    }
}

/// Undoes the content encoding. The size limit applies to the decompressed bytes, so a small bomb is refused
/// after reading at most `max_body_bytes + 1` bytes of output.
pub fn decompress<'a>(body: &'a [u8], encoding: Encoding, limits: &Limits) -> Result<Cow<'a, [u8]>, PayloadError> {
    let too_large = PayloadError::TooLarge {
        what: "decoded body size in bytes",
        limit: limits.max_body_bytes,
    };
    match encoding {
        Encoding::Identity if body.len() > limits.max_body_bytes => Err(too_large),
        Encoding::Identity => Ok(Cow::Borrowed(body)),
        Encoding::Gzip => read_capped(flate2::read::MultiGzDecoder::new(body), limits.max_body_bytes, "gzip"),
        Encoding::Zstd => {
            let decoder = ruzstd::decoding::StreamingDecoder::new(body).map_err(|e| PayloadError::Malformed {
                offset: 0,
                message: format!("invalid zstd stream: {e}"),
            })?;
            read_capped(decoder, limits.max_body_bytes, "zstd")
        }
    }
}

fn read_capped<'a>(reader: impl Read, cap: usize, name: &str) -> Result<Cow<'a, [u8]>, PayloadError> {
    let mut out = Vec::new();
    reader
        .take(cap as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| PayloadError::Malformed {
            offset: 0,
            message: format!("invalid {name} stream: {e}"),
        })?;
    if out.len() > cap {
        return Err(PayloadError::TooLarge {
            what: "decoded body size in bytes",
            limit: cap,
        });
    }
    Ok(Cow::Owned(out))
}

/// Splits a decoded body into records. Whole-body failures are errors; a bad NDJSON line becomes an
/// `Invalid` record so the other lines still count.
pub fn parse_records<'a>(body: &'a [u8], format: Format, limits: &Limits) -> Result<Vec<Value<'a>>, PayloadError> {
    let mut records = Vec::new();
    for_each_record(body, format, limits, |_, record| records.push(record))?;
    Ok(records)
}

/// [`parse_records`], handing each record to `f` (with its index) as soon as it is decoded, so that each
/// record's tree is freed, and its memory reused, before the next is built; returns how many there were. On a
/// whole-body error, `f` may have seen the records before it.
pub(crate) fn for_each_record<'a>(
    body: &'a [u8],
    format: Format,
    limits: &Limits,
    mut f: impl FnMut(usize, Value<'a>),
) -> Result<usize, PayloadError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(PayloadError::Malformed {
            offset: 0,
            message: "empty body".into(),
        });
    }
    match format {
        Format::Json => json::for_each_record(body, limits, f),
        Format::Cbor => cbor::for_each_record(body, limits, f),
        Format::Ndjson => {
            let mut count = 0;
            let mut scratch = json::Scratch::default();
            // Checked once when it all is (one call, not one a line); else line by line, a bad line its own.
            let text = std::str::from_utf8(body).ok();
            let mut start = 0;
            while start < body.len() {
                if let Some(text) = text
                    && let Some((record, end)) = json::parse_line(text, start, limits, &mut scratch)
                {
                    if count == limits.max_records {
                        return Err(PayloadError::TooLarge {
                            what: "number of records",
                            limit: limits.max_records,
                        });
                    }
                    f(count, record);
                    count += 1;
                    start = end + 1;
                    continue;
                }
                let (line_start, end) = (start, json::find_byte(body, b'\n', start));
                let line = &body[line_start..end];
                start = end + 1;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if count == limits.max_records {
                    return Err(PayloadError::TooLarge {
                        what: "number of records",
                        limit: limits.max_records,
                    });
                }
                let line_text = match text {
                    // A line ends at a newline or at the end: on character boundaries.
                    Some(text) => Ok(&text[line_start..end]),
                    None => std::str::from_utf8(line),
                };
                let record = match line_text {
                    Ok(text) => json::parse_one_with(text, limits, &mut scratch)
                        .unwrap_or_else(|e| Value::Invalid(line_problem(&e))),
                    Err(_) => Value::Invalid("invalid UTF-8".into()),
                };
                f(count, record);
                count += 1;
            }
            Ok(count)
        }
    }
}

fn line_problem(error: &PayloadError) -> Box<str> {
    match error {
        PayloadError::Malformed { offset, message } => format!("malformed JSON at column {offset}: {message}").into(),
        other => other.to_string().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines decoded where they start (without looking for their end first) are the lines decoded one by one.
    #[test]
    fn ndjson_is_decoded_line_by_line() {
        let limits = Limits {
            max_depth: 3,
            ..Limits::default()
        };
        let fragments = [
            r#"{"a":1}"#,
            r#"{"a":[1,2],"b":"x"}"#,
            "[[[[1]]]]",
            "[[[[\n]]]]",
            "[[[[\"\\\n\"]]]]",
            "{\"a\":\n1}",
            r#"{"a":"#,
            "1 2",
            "  7  ",
            "\"\t\"",
            "\r",
            " ",
            "",
            "\t{}\r",
            "null",
            r#"{"a":1,"a":2}"#,
            "1e400",
            "é",
            "\"é\"",
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let mut body = String::new();
            for _ in 0..1 + state % 5 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                body.push_str(fragments[(state >> 8) as usize % fragments.len()]);
                if !state.is_multiple_of(3) {
                    body.push('\n');
                }
            }
            if body.trim().is_empty() {
                continue;
            }
            let expected: Vec<Value<'_>> = body
                .split('\n')
                .filter(|line| !line.bytes().all(|b| b.is_ascii_whitespace()))
                .map(|line| json::parse_one(line, &limits).unwrap_or_else(|e| Value::Invalid(line_problem(&e))))
                .collect();
            let records = parse_records(body.as_bytes(), Format::Ndjson, &limits).unwrap();
            assert_eq!(records, expected, "{body:?}");
        }
    }

    #[test]
    fn ndjson_lines_are_text_one_by_one() {
        let limits = Limits::default();
        let valid = "{\"a\":\"\u{e9}\"}\n\n[\"\u{1f600}\"]\r\n  \n1";
        let records = parse_records(valid.as_bytes(), Format::Ndjson, &limits).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].get("a").and_then(Value::as_str), Some("\u{e9}"));
        assert!(records.iter().all(|r| r.first_invalid().is_none()));
        // A line that is not UTF-8 is a bad record of its own.
        let mut body = valid.as_bytes().to_vec();
        body.extend_from_slice(b"\n\"\xff\"\n{\"b\":\"\xc3\xa9\"}");
        let records = parse_records(&body, Format::Ndjson, &limits).unwrap();
        assert_eq!(records.len(), 5);
        assert!(matches!(&records[3], Value::Invalid(problem) if problem.contains("UTF-8")));
        assert_eq!(records[4].get("b").and_then(Value::as_str), Some("\u{e9}"));
    }
}

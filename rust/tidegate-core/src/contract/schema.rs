//! A practical JSON Schema subset, compiled once into a native tree. Unsupported keywords are compile errors,
//! never silently ignored.

use std::cmp::Ordering;
use std::fmt;

use regex::Regex;

use crate::canonical;
use crate::decode::Limits;
use crate::decode::json;
use crate::decode::time::Timestamp;
use crate::decode::value::{Value, is_integer, push_index, push_key, same_key};

/// Why a schema could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// JSON path of the offending keyword in the schema document.
    pub path: String,
    pub message: String,
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid schema at {}: {}", self.path, self.message)
    }
}

impl std::error::Error for SchemaError {}

/// Keywords that only annotate and never constrain.
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "title",
    "description",
    "default",
    "examples",
];

const TYPE_NAMES: [&str; 7] = ["null", "boolean", "integer", "number", "string", "array", "object"];

#[derive(Debug, Clone, Default)]
enum Additional {
    #[default]
    Allowed,
    Forbidden,
    Schema(Box<Schema>),
}

/// A compiled schema node.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    /// Bit i set when `TYPE_NAMES[i]` is allowed; 0 means any type.
    types: u8,
    allowed: Option<Vec<Vec<u8>>>,
    min_length: Option<usize>,
    max_length: Option<usize>,
    pattern: Option<Regex>,
    /// The same pattern as a byte-set check, when it is that simple.
    class_pattern: Option<ClassPattern>,
    date_time: bool,
    minimum: Option<f64>,
    maximum: Option<f64>,
    exclusive_minimum: Option<f64>,
    exclusive_maximum: Option<f64>,
    items: Option<Box<Schema>>,
    min_items: Option<usize>,
    max_items: Option<usize>,
    properties: Vec<(String, Schema)>,
    required: Vec<String>,
    /// Set at compile time: the bit of each required name's property (`required` order), when every required
    /// name is one of at most 64 properties; the object check then tracks the properties seen in a mask.
    required_mask: Option<u64>,
    additional: Additional,
    min_properties: Option<usize>,
    max_properties: Option<usize>,
    /// Set at compile time: the node accepts any value (only decoding problems can fail it).
    unconstrained: bool,
}

/// A node of the path being validated, rendered only when an error is reported.
#[derive(Clone, Copy)]
pub enum Path<'p> {
    Root,
    Key(&'p Path<'p>, &'p str),
    Index(&'p Path<'p>, usize),
}

impl Path<'_> {
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out);
        out
    }

    fn render_into(&self, out: &mut String) {
        match self {
            Path::Root => out.push('$'),
            Path::Key(parent, key) => {
                parent.render_into(out);
                push_key(out, key);
            }
            Path::Index(parent, i) => {
                parent.render_into(out);
                push_index(out, *i);
            }
        }
    }
}

/// One validation failure: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl Schema {
    /// Compiles a JSON Schema document (JSON text).
    pub fn compile_json(text: &str) -> Result<Schema, SchemaError> {
        let limits = Limits {
            max_depth: 64,
            max_string_bytes: 1 << 20,
            ..Limits::default()
        };
        let document = json::parse_one(text, &limits).map_err(|e| SchemaError {
            path: "$".into(),
            message: format!("not valid JSON: {e}"),
        })?;
        if let Some((path, message)) = document.first_invalid() {
            return Err(SchemaError { path, message });
        }
        Schema::compile(&document, &Path::Root)
    }

    fn compile(document: &Value<'_>, path: &Path<'_>) -> Result<Schema, SchemaError> {
        let err = |at: &Path<'_>, message: String| SchemaError {
            path: at.render(),
            message,
        };
        let fields = match document {
            Value::Object(fields) => fields,
            Value::Bool(true) => return Ok(Schema::any()),
            _ => return Err(err(path, "a schema must be an object or true".into())),
        };
        let mut schema = Schema::default();
        for (keyword, value) in fields {
            let here = Path::Key(path, keyword);
            let as_count = |v: &Value<'_>| match v {
                Value::Number(n, _) if is_integer(*n) && *n >= 0.0 => Ok(*n as usize),
                Value::Integer(i) if !i.negative => Ok(usize::try_from(i.magnitude).unwrap_or(usize::MAX)),
                _ => Err(err(&here, "must be a non-negative integer".into())),
            };
            let as_number = |v: &Value<'_>| match v {
                Value::Number(n, _) => Ok(*n),
                Value::Integer(i) => Ok(i.to_f64()),
                _ => Err(err(&here, "must be a number".into())),
            };
            match keyword.as_ref() {
                "type" => {
                    let names: Vec<&str> = match value {
                        Value::String(s) => vec![s.as_ref()],
                        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
                        _ => return Err(err(&here, "must be a type name or a list of them".into())),
                    };
                    for name in names {
                        let bit = TYPE_NAMES
                            .iter()
                            .position(|t| *t == name)
                            .ok_or_else(|| err(&here, format!("unknown type {name:?}")))?;
                        schema.types |= 1 << bit;
                    }
                }
                "enum" => {
                    let Value::Array(options) = value else {
                        return Err(err(&here, "must be an array".into()));
                    };
                    schema.allowed = Some(options.iter().map(canonical_bytes).collect());
                }
                "const" => schema.allowed = Some(vec![canonical_bytes(value)]),
                "pattern" => {
                    let source = value.as_str().ok_or_else(|| err(&here, "must be a string".into()))?;
                    let regex = regex::RegexBuilder::new(&ecma_classes(source))
                        .size_limit(1 << 20)
                        .build()
                        .map_err(|e| err(&here, format!("invalid pattern: {e}")))?;
                    schema.class_pattern = ClassPattern::parse(source);
                    schema.pattern = Some(regex);
                }
                "format" => match value.as_str() {
                    Some("date-time") => schema.date_time = true,
                    Some(other) => return Err(err(&here, format!("unsupported format {other:?} (only date-time)"))),
                    None => return Err(err(&here, "must be a string".into())),
                },
                "minLength" => schema.min_length = Some(as_count(value)?),
                "maxLength" => schema.max_length = Some(as_count(value)?),
                "minimum" => schema.minimum = Some(as_number(value)?),
                "maximum" => schema.maximum = Some(as_number(value)?),
                "exclusiveMinimum" => schema.exclusive_minimum = Some(as_number(value)?),
                "exclusiveMaximum" => schema.exclusive_maximum = Some(as_number(value)?),
                "items" => schema.items = Some(Box::new(Schema::compile(value, &here)?)),
                "minItems" => schema.min_items = Some(as_count(value)?),
                "maxItems" => schema.max_items = Some(as_count(value)?),
                "minProperties" => schema.min_properties = Some(as_count(value)?),
                "maxProperties" => schema.max_properties = Some(as_count(value)?),
                "required" => {
                    let Value::Array(names) = value else {
                        return Err(err(&here, "must be an array of strings".into()));
                    };
                    for name in names {
                        let name = name
                            .as_str()
                            .ok_or_else(|| err(&here, "must be an array of strings".into()))?;
                        schema.required.push(name.to_string());
                    }
                }
                "properties" => {
                    let Value::Object(props) = value else {
                        return Err(err(&here, "must be an object".into()));
                    };
                    for (name, sub) in props {
                        let at = Path::Key(&here, name);
                        schema.properties.push((name.to_string(), Schema::compile(sub, &at)?));
                    }
                }
                "additionalProperties" => {
                    schema.additional = match value {
                        Value::Bool(true) => Additional::Allowed,
                        Value::Bool(false) => Additional::Forbidden,
                        other => Additional::Schema(Box::new(Schema::compile(other, &here)?)),
                    }
                }
                k if ANNOTATIONS.contains(&k) => {}
                k => return Err(err(&here, format!("unsupported keyword {k:?}"))),
            }
        }
        schema.unconstrained = schema.accepts_anything();
        if schema.properties.len() <= 64 {
            schema.required_mask = schema.required.iter().try_fold(0u64, |mask, name| {
                let i = schema.properties.iter().position(|(p, _)| p == name)?;
                Some(mask | 1 << i)
            });
        }
        Ok(schema)
    }

    /// The schema `true`: any value.
    pub fn any() -> Schema {
        Schema {
            unconstrained: true,
            ..Schema::default()
        }
    }

    /// Whether undeclared members are refused (`additionalProperties: false`).
    pub fn forbids_additional(&self) -> bool {
        matches!(self.additional, Additional::Forbidden)
    }

    /// Whether `key` is one of the declared `properties`.
    pub fn declares(&self, key: &str) -> bool {
        self.property_index(key).is_some()
    }

    /// Whether a `null` member `key` means the member is absent: the property is optional and its schema does
    /// not accept `null` as a value.
    pub fn null_means_absent(&self, key: &str) -> bool {
        self.property_index(key).is_some_and(|i| self.null_means_absent_at(i))
    }

    fn null_means_absent_at(&self, i: usize) -> bool {
        let (name, schema) = &self.properties[i];
        let accepts_null = schema.unconstrained
            || (schema.allows(0) && schema.allowed.as_ref().is_none_or(|a| a.iter().any(|v| v == b"null")));
        !accepts_null && !self.required.iter().any(|r| r == name)
    }

    fn allows(&self, type_bit: usize) -> bool {
        self.types == 0 || self.types & (1 << type_bit) != 0
    }

    fn accepts_anything(&self) -> bool {
        self.types == 0
            && self.allowed.is_none()
            && self.properties.is_empty()
            && self.required.is_empty()
            && matches!(self.additional, Additional::Allowed)
            && self.items.is_none()
            && self.pattern.is_none()
            && !self.date_time
            && self.min_length.is_none()
            && self.max_length.is_none()
            && self.minimum.is_none()
            && self.maximum.is_none()
            && self.exclusive_minimum.is_none()
            && self.exclusive_maximum.is_none()
            && self.min_items.is_none()
            && self.max_items.is_none()
            && self.min_properties.is_none()
            && self.max_properties.is_none()
    }

    /// Validates `value`, pushing every failure found. Decoding problems (`Invalid` nodes) anywhere in the value
    /// are failures too, including inside unconstrained subtrees.
    pub fn validate(&self, value: &Value<'_>, path: &Path<'_>, errors: &mut Vec<FieldError>) {
        self.check(value, path, errors, None);
    }

    /// [`Schema::validate`], given a text already known to be a date-time (parsed by the caller, which needs its
    /// value): a `date-time` string equal to it is not parsed again.
    pub(crate) fn validate_knowing_date_time(
        &self,
        value: &Value<'_>,
        path: &Path<'_>,
        errors: &mut Vec<FieldError>,
        date_time: Option<&str>,
    ) {
        self.check(value, path, errors, date_time);
    }

    fn check(&self, value: &Value<'_>, path: &Path<'_>, errors: &mut Vec<FieldError>, date_time: Option<&str>) {
        let fail = |errors: &mut Vec<FieldError>, message: String| {
            errors.push(FieldError {
                path: path.render(),
                message,
            });
        };
        if let Value::Invalid(problem) = value {
            return fail(errors, problem.to_string());
        }
        if self.unconstrained {
            return check_decoded(value, path, errors);
        }
        let type_ok = match value {
            Value::Null => self.allows(0),
            Value::Bool(_) => self.allows(1),
            Value::Number(n, _) => self.allows(3) || (self.allows(2) && is_integer(*n)),
            Value::Integer(_) => self.allows(3) || self.allows(2),
            Value::String(_) => self.allows(4),
            Value::Array(_) => self.allows(5),
            Value::Object(_) => self.allows(6),
            Value::Invalid(_) => false,
        };
        if !type_ok {
            return fail(
                errors,
                format!("expected {}, got {}", self.expected_types(), value.type_name()),
            );
        }
        if let Some(allowed) = &self.allowed {
            let actual = canonical_bytes(value);
            if !allowed.contains(&actual) {
                let options: Vec<String> = allowed
                    .iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                fail(errors, format!("must be one of {}", options.join(", ")));
            }
        }
        match value {
            Value::String(s) => self.validate_string(s, path, errors, date_time),
            Value::Number(n, _) => self.validate_number(|bound| n.partial_cmp(&bound), path, errors),
            Value::Integer(i) => self.validate_number(|bound| Some(i.cmp_f64(bound)), path, errors),
            Value::Array(items) => {
                if let Some(min) = self.min_items.filter(|min| items.len() < *min) {
                    fail(
                        errors,
                        format!("must have at least {min} {}", plural(min, "item", "items")),
                    );
                }
                if let Some(max) = self.max_items.filter(|max| items.len() > *max) {
                    fail(errors, format!("must have at most {max} items"));
                }
                for (i, item) in items.iter().enumerate() {
                    let at = Path::Index(path, i);
                    match &self.items {
                        Some(schema) => schema.check(item, &at, errors, date_time),
                        None => check_decoded(item, &at, errors),
                    }
                }
            }
            Value::Object(fields) => self.validate_object(fields, path, errors, date_time),
            _ => {}
        }
    }

    fn validate_string(&self, s: &str, path: &Path<'_>, errors: &mut Vec<FieldError>, date_time: Option<&str>) {
        let fail = |errors: &mut Vec<FieldError>, message: String| {
            errors.push(FieldError {
                path: path.render(),
                message,
            });
        };
        if self.min_length.is_some() || self.max_length.is_some() {
            let length = s.chars().count();
            if let Some(min) = self.min_length.filter(|min| length < *min) {
                fail(
                    errors,
                    format!("must be at least {min} {} long", plural(min, "character", "characters")),
                );
            }
            if let Some(max) = self.max_length.filter(|max| length > *max) {
                fail(errors, format!("must be at most {max} characters long"));
            }
        }
        let matches = |p: &Regex| match &self.class_pattern {
            Some(class) => class.is_match(s),
            None => p.is_match(s),
        };
        if let Some(pattern) = self.pattern.as_ref().filter(|p| !matches(p)) {
            fail(errors, format!("must match the pattern {}", pattern.as_str()));
        }
        // The known text is usually this very string: the same address is enough.
        let known = || date_time.is_some_and(|known| std::ptr::eq(known, s) || known == s);
        if self.date_time && !known() && Timestamp::parse(s).is_none() {
            fail(errors, "must be an RFC 3339 date-time with a time zone".into());
        }
    }

    /// The bounds, given how the number compares with a bound (`None`: never, for a NaN bound).
    fn validate_number(
        &self,
        compare: impl Fn(f64) -> Option<Ordering>,
        path: &Path<'_>,
        errors: &mut Vec<FieldError>,
    ) {
        let mut fail = |message: String| {
            errors.push(FieldError {
                path: path.render(),
                message,
            })
        };
        let is = |bound: f64, orders: &[Ordering]| compare(bound).is_some_and(|o| orders.contains(&o));
        if let Some(min) = self.minimum.filter(|&min| is(min, &[Ordering::Less])) {
            fail(format!("must be >= {min}"));
        }
        if let Some(max) = self.maximum.filter(|&max| is(max, &[Ordering::Greater])) {
            fail(format!("must be <= {max}"));
        }
        if let Some(min) = self
            .exclusive_minimum
            .filter(|&min| is(min, &[Ordering::Less, Ordering::Equal]))
        {
            fail(format!("must be > {min}"));
        }
        if let Some(max) = self
            .exclusive_maximum
            .filter(|&max| is(max, &[Ordering::Greater, Ordering::Equal]))
        {
            fail(format!("must be < {max}"));
        }
    }

    fn validate_object(
        &self,
        fields: &[(std::borrow::Cow<'_, str>, Value<'_>)],
        path: &Path<'_>,
        errors: &mut Vec<FieldError>,
        date_time: Option<&str>,
    ) {
        // Fast path: each field's property looked up once, required ones tracked in a mask.
        const SMALL: usize = 32;
        let mut small = [u8::MAX; SMALL];
        let found = match self.required_mask {
            Some(required) if fields.len() <= SMALL => {
                let mut seen = 0u64;
                for (slot, (key, _)) in small.iter_mut().zip(fields) {
                    if let Some(i) = self.property_index(key) {
                        *slot = i as u8;
                        seen |= 1 << i;
                    }
                }
                if seen & required != required {
                    self.missing_required(fields, path, errors);
                }
                Some(&small[..fields.len()])
            }
            _ => {
                self.missing_required(fields, path, errors);
                None
            }
        };
        if let Some(min) = self.min_properties.filter(|min| fields.len() < *min) {
            errors.push(FieldError {
                path: path.render(),
                message: format!("must have at least {min} {}", plural(min, "entry", "entries")),
            });
        }
        if let Some(max) = self.max_properties.filter(|max| fields.len() > *max) {
            errors.push(FieldError {
                path: path.render(),
                message: format!("must have at most {max} {}", plural(max, "entry", "entries")),
            });
        }
        for (n, (key, value)) in fields.iter().enumerate() {
            let at = Path::Key(path, key);
            let property = match found {
                Some(found) => Some(usize::from(found[n])).filter(|&i| i < self.properties.len()),
                None => self.property_index(key),
            };
            match property {
                // `null` for an optional member is its absence.
                Some(i) if matches!(value, Value::Null) && self.null_means_absent_at(i) => {}
                Some(i) => self.properties[i].1.check(value, &at, errors, date_time),
                None => match &self.additional {
                    Additional::Allowed => check_decoded(value, &at, errors),
                    Additional::Forbidden => errors.push(FieldError {
                        path: at.render(),
                        message: "unknown field".into(),
                    }),
                    Additional::Schema(schema) => schema.check(value, &at, errors, date_time),
                },
            }
        }
    }

    fn missing_required(
        &self,
        fields: &[(std::borrow::Cow<'_, str>, Value<'_>)],
        path: &Path<'_>,
        errors: &mut Vec<FieldError>,
    ) {
        for name in &self.required {
            if !fields.iter().any(|(k, _)| same_key(k, name)) {
                let at = Path::Key(path, name);
                errors.push(FieldError {
                    path: at.render(),
                    message: "required field is missing".into(),
                });
            }
        }
    }

    #[inline(always)]
    fn property_index(&self, key: &str) -> Option<usize> {
        self.properties.iter().position(|(name, _)| same_key(name, key))
    }

    fn expected_types(&self) -> String {
        let names: Vec<&str> = TYPE_NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.types & (1 << i) != 0)
            .map(|(_, n)| *n)
            .collect();
        names.join(" or ")
    }
}

/// A pattern `^[CLASS]QUANTIFIER$` whose class lists only ASCII letters, digits, `_` and ranges of those (and `-`
/// first or last), with `?`, `*`, `+`, `{n}`, `{n,}` or `{m,n}` (or nothing): matched as a byte-set check, the
/// same as the regex (`$` is the end of the text in the `regex` crate, and every member is one byte).
#[derive(Debug, Clone)]
struct ClassPattern {
    members: [bool; 128],
    min: usize,
    max: usize,
}

impl ClassPattern {
    fn parse(source: &str) -> Option<ClassPattern> {
        let rest = source.strip_prefix("^[")?.strip_suffix('$')?;
        let (class, quantifier) = rest.split_once(']')?;
        let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let mut members = [false; 128];
        let bytes = class.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b == b'-' && (i == 0 || i == bytes.len() - 1) {
                members[usize::from(b)] = true;
                i += 1;
            } else if !plain(b) {
                return None;
            } else if bytes.get(i + 1) == Some(&b'-') && i + 2 < bytes.len() {
                let end = bytes[i + 2];
                if !plain(end) || end < b {
                    return None;
                }
                for m in b..=end {
                    members[usize::from(m)] = true;
                }
                i += 3;
            } else {
                members[usize::from(b)] = true;
                i += 1;
            }
        }
        if bytes.is_empty() {
            return None;
        }
        let count = |text: &str| -> Option<usize> {
            (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())).then(|| text.parse().ok())?
        };
        let (min, max) = match quantifier {
            "" => (1, 1),
            "?" => (0, 1),
            "*" => (0, usize::MAX),
            "+" => (1, usize::MAX),
            _ => {
                let inner = quantifier.strip_prefix('{')?.strip_suffix('}')?;
                match inner.split_once(',') {
                    None => (count(inner)?, count(inner)?),
                    Some((min, "")) => (count(min)?, usize::MAX),
                    Some((min, max)) => (count(min)?, count(max)?),
                }
            }
        };
        (min <= max).then_some(ClassPattern { members, min, max })
    }

    fn is_match(&self, s: &str) -> bool {
        (self.min..=self.max).contains(&s.len())
            && s.bytes()
                .all(|b| self.members.get(usize::from(b)).copied().unwrap_or(false))
    }
}

/// ECMA-262 whitespace (`\s`): WhiteSpace and LineTerminator, as a class body.
const ECMA_SPACE: &str =
    r"\t\n\x0B\f\r \x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}\x{FEFF}";

/// Rewrites the class escapes of a JSON Schema pattern to their ECMA-262 meaning for the `regex` crate, whose own
/// `\d`, `\w` and `\b` follow Unicode: `\d` is `[0-9]`, `\w` `[A-Za-z0-9_]`, `\b` the boundary between those
/// and anything else, `\s` ECMA-262's whitespace; `\D`, `\W`, `\S`, `\B` their complements. The rest of the
/// syntax is the `regex` crate's.
fn ecma_classes(source: &str) -> String {
    let mut out = String::with_capacity(source.len() + 16);
    let mut in_class = false;
    let mut chars = source.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let Some(next) = chars.next() else {
                    out.push(c);
                    break;
                };
                let (body, negated) = match next {
                    'd' => ("0-9", false),
                    'D' => ("0-9", true),
                    'w' => ("A-Za-z0-9_", false),
                    'W' => ("A-Za-z0-9_", true),
                    's' => (ECMA_SPACE, false),
                    'S' => (ECMA_SPACE, true),
                    'b' if !in_class => {
                        out.push_str("(?-u:\\b)");
                        continue;
                    }
                    'B' if !in_class => {
                        out.push_str("(?-u:\\B)");
                        continue;
                    }
                    other => {
                        out.push(c);
                        out.push(other);
                        continue;
                    }
                };
                // A nested class inside a class (the `regex` crate's union), a class outside one.
                out.push_str(if negated { "[^" } else { "[" });
                out.push_str(body);
                out.push(']');
            }
            '[' if !in_class => {
                in_class = true;
                out.push(c);
                // A `]` or `^]` right after the opening bracket is a member, not the end.
                let rest = chars.as_str();
                for prefix in ["^]", "]", "^"] {
                    if let Some(after) = rest.strip_prefix(prefix) {
                        out.push_str(prefix);
                        chars = after.chars();
                        break;
                    }
                }
            }
            ']' if in_class => {
                in_class = false;
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

/// Fails a value that holds a decoding problem anywhere inside it.
#[inline(always)]
fn check_decoded(value: &Value<'_>, path: &Path<'_>, errors: &mut Vec<FieldError>) {
    // Most values are scalars, which hold none.
    if matches!(value, Value::Invalid(_) | Value::Array(_) | Value::Object(_)) {
        report_invalid(value, path, errors);
    }
}

fn report_invalid(value: &Value<'_>, path: &Path<'_>, errors: &mut Vec<FieldError>) {
    if let Some((sub_path, message)) = value.first_invalid() {
        errors.push(FieldError {
            path: format!("{}{}", path.render(), &sub_path[1..]),
            message,
        });
    }
}

fn canonical_bytes(value: &Value<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    canonical::write_value(&mut out, value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(schema: &str, doc: &str) -> Vec<FieldError> {
        let schema = Schema::compile_json(schema).unwrap();
        let value = json::parse_one(doc, &Limits::default()).unwrap();
        let mut errors = Vec::new();
        schema.validate(&value, &Path::Root, &mut errors);
        errors
    }

    #[test]
    fn reports_paths_of_nested_failures() {
        let schema = r#"{"type":"object","required":["a"],"properties":{"a":{"type":"array","items":{"type":"integer","maximum":3}}},"additionalProperties":false}"#;
        assert!(errors(schema, r#"{"a":[1,2,3]}"#).is_empty());
        let found = errors(schema, r#"{"a":[1,4,2.5],"b":1}"#);
        let paths: Vec<&str> = found.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["$.a[1]", "$.a[2]", "$.b"]);
        assert_eq!(errors(schema, "{}")[0].path, "$.a");
    }

    #[test]
    fn enum_const_and_strings() {
        assert!(errors(r#"{"enum":[1,"x",{"a":1}]}"#, r#"{"a":1.0}"#).is_empty());
        assert_eq!(errors(r#"{"const":"x"}"#, r#""y""#).len(), 1);
        assert_eq!(
            errors(r#"{"type":"string","minLength":2,"maxLength":3}"#, r#""é""#).len(),
            1
        );
        assert_eq!(
            errors(r#"{"type":"string","format":"date-time"}"#, r#""yesterday""#).len(),
            1
        );
        assert!(errors(r#"{"type":"string","pattern":"^a+$"}"#, r#""aaa""#).is_empty());
    }

    #[test]
    fn simple_class_patterns_match_like_the_regex() {
        let patterns = [
            ("^[A-Za-z0-9_-]{1,64}$", true),
            ("^[-a-c]+$", true),
            ("^[a]*$", true),
            ("^[0-9]?$", true),
            ("^[x-z_]{2}$", true),
            ("^[a-b]{2,}$", true),
            ("^[a-z]$", true),
            ("^[a-z-0]+$", false),
            ("^[a-z]{1,3}x$", false),
            ("[a-z]+$", false),
            ("^[^a]+$", false),
            ("^[a.]+$", false),
            ("^[\\d]+$", false),
            ("^[a-z]+?$", false),
            ("^[]a]$", false),
            ("^[a-z]{1,3}?$", false),
        ];
        let texts = [
            "", "a", "ab", "abc", "a-b", "-", "_", "xy", "xyz", "AZ09_-", "é", "a\n", "\n", "1", "12", "a.b", "ax",
        ];
        for (source, supported) in patterns {
            let regex = Regex::new(source).unwrap();
            let class = ClassPattern::parse(source);
            assert_eq!(class.is_some(), supported, "{source}");
            if let Some(class) = &class {
                for text in texts.into_iter().chain([&*"a".repeat(64), &*"a".repeat(65)]) {
                    assert_eq!(class.is_match(text), regex.is_match(text), "{source} {text:?}");
                }
            }
        }
    }

    #[test]
    fn pattern_classes_are_ecma_262() {
        let cases = [
            (r"^\d+$", "123", "\u{9e7}"),
            (r"^[\d.]+$", "1.5", "\u{9e7}"),
            (r"^[^\d]$", "\u{9e7}", "5"),
            (r"^\W$", "\u{e9}", "a"),
            (r"^\s$", "\u{feff}", "\u{85}"),
            (r"^[\S]$", "\u{85}", "\u{a0}"),
            (r"^.\bx$", "\u{e9}x", "ax"),
            (r"^\\d$", "\\d", "1"),
            (r"^[\]\d]$", "]", "\u{9e7}"),
        ];
        let json = |text: &str| {
            let mut out = Vec::new();
            canonical::write_string(&mut out, text);
            String::from_utf8(out).unwrap()
        };
        for (source, good, bad) in cases {
            let schema = format!(r#"{{"pattern":{}}}"#, json(source));
            assert!(errors(&schema, &json(good)).is_empty(), "{source} {good:?}");
            assert_eq!(errors(&schema, &json(bad)).len(), 1, "{source} {bad:?}");
        }
    }

    #[test]
    fn unsupported_keywords_fail_at_compile_time() {
        let error = Schema::compile_json(r#"{"properties":{"a":{"oneOf":[]}}}"#).unwrap_err();
        assert_eq!(error.path, "$.properties.a.oneOf");
        assert!(Schema::compile_json(r#"{"format":"email"}"#).is_err());
        assert!(Schema::compile_json(r#"{"pattern":"("}"#).is_err());
        assert!(Schema::compile_json(r#"{"type":"text"}"#).is_err());
    }
}

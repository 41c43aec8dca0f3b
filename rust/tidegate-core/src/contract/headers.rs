//! Request headers that end up in every record of a request (`traceparent`, `tracestate`) or in the dedup window
//! (`X-Idempotency-Key`): checked and bounded before any record is built, so a header can never multiply into
//! megabytes of spool or make a record too large for Kafka.
//!
//! `traceparent` and `tracestate` follow W3C Trace Context (level 1, with level 2's wider `tracestate` keys so
//! that no valid header of either level is refused).

/// Longest `traceparent` accepted. Version `00` is exactly 55 characters; later versions may append fields
/// (`-...`), and the specification asks pass-through services to allow for that and to refuse only
/// prohibitively large headers.
pub const MAX_TRACEPARENT_BYTES: usize = 256;

/// Longest `tracestate` accepted: the 512 characters the specification asks every vendor to propagate.
pub const MAX_TRACESTATE_BYTES: usize = 512;

/// Most list members in a `tracestate` (the specification's limit).
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

/// Longest `X-Idempotency-Key` accepted, as for a batch's `batch_id`.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;

/// Length of a version `00` `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`.
const TRACEPARENT_V00_LEN: usize = 55;

fn is_lower_hex(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A lower-case hex field of exactly `len` digits, not all zero.
fn check_id(field: &[u8], len: usize, name: &str) -> Result<(), String> {
    if field.len() != len || !is_lower_hex(field) {
        return Err(format!("{name} must be {len} lower-case hex digits"));
    }
    if field.iter().all(|&b| b == b'0') {
        return Err(format!("{name} must not be all zeros"));
    }
    Ok(())
}

/// Checks a `traceparent` value: `version-trace_id-parent_id-flags`. Version `00` must be exactly that; a later
/// version (not `ff`, which is forbidden) must start the same way and may continue after a `-`.
pub fn check_traceparent(value: &str) -> Result<(), String> {
    let bytes = value.as_bytes();
    if bytes.len() > MAX_TRACEPARENT_BYTES {
        return Err(format!("longer than {MAX_TRACEPARENT_BYTES} bytes"));
    }
    let version = bytes.get(..2).unwrap_or(bytes);
    if version.len() != 2 || !is_lower_hex(version) || bytes.get(2) != Some(&b'-') {
        return Err("must start with a version of 2 lower-case hex digits and a '-'".into());
    }
    if version == b"ff" {
        return Err("version ff is invalid".into());
    }
    if bytes.len() < TRACEPARENT_V00_LEN {
        return Err("must be version-trace_id-parent_id-flags: 00-<32 hex>-<16 hex>-<2 hex>".into());
    }
    check_id(&bytes[3..35], 32, "trace-id")?;
    if bytes[35] != b'-' {
        return Err("trace-id must be 32 lower-case hex digits followed by '-'".into());
    }
    check_id(&bytes[36..52], 16, "parent-id")?;
    if bytes[52] != b'-' {
        return Err("parent-id must be 16 lower-case hex digits followed by '-'".into());
    }
    if !is_lower_hex(&bytes[53..55]) {
        return Err("trace-flags must be 2 lower-case hex digits".into());
    }
    match (version, bytes.get(TRACEPARENT_V00_LEN)) {
        (_, None) => Ok(()),
        (b"00", Some(_)) => Err("version 00 must end after trace-flags (55 characters)".into()),
        (_, Some(b'-')) => Ok(()),
        (_, Some(_)) => Err("trace-flags must be followed by the end or a '-'".into()),
    }
}

fn is_key_char(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/' | b'@')
}

/// A `tracestate` key: a lower-case letter or digit, then up to 255 of `a-z 0-9 _ - * / @`.
fn check_key(key: &str) -> Result<(), String> {
    let bytes = key.as_bytes();
    match bytes.first() {
        Some(b'a'..=b'z' | b'0'..=b'9') if bytes.len() <= 256 && bytes.iter().all(|&b| is_key_char(b)) => Ok(()),
        _ => Err(format!(
            "key {key:?} must be 1 to 256 of a-z 0-9 _ - * / @, starting with a letter or digit"
        )),
    }
}

/// A `tracestate` value: 1 to 256 printable ASCII characters but `,` and `=`, not ending with a space.
fn check_value(key: &str, value: &str) -> Result<(), String> {
    let bytes = value.as_bytes();
    let printable = bytes
        .iter()
        .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=');
    if bytes.is_empty() || bytes.len() > 256 || !printable || bytes.last() == Some(&b' ') {
        return Err(format!(
            "the value of {key:?} must be 1 to 256 printable ASCII characters other than ',' and '=', not ending \
             with a space"
        ));
    }
    Ok(())
}

/// Checks a `tracestate` value: up to 32 comma-separated `key=value` members (empty members allowed), each key
/// once, at most 512 bytes in all.
pub fn check_tracestate(value: &str) -> Result<(), String> {
    if value.len() > MAX_TRACESTATE_BYTES {
        return Err(format!("longer than {MAX_TRACESTATE_BYTES} bytes"));
    }
    let mut keys: Vec<&str> = Vec::new();
    for member in value.split(',') {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        let Some((key, value)) = member.split_once('=') else {
            return Err(format!("list member {member:?} is not key=value"));
        };
        check_key(key)?;
        check_value(key, value)?;
        if keys.contains(&key) {
            return Err(format!("key {key:?} appears more than once"));
        }
        keys.push(key);
    }
    if keys.len() > MAX_TRACESTATE_MEMBERS {
        return Err(format!("more than {MAX_TRACESTATE_MEMBERS} list members"));
    }
    Ok(())
}

/// Checks an `X-Idempotency-Key`: at most [`MAX_IDEMPOTENCY_KEY_BYTES`].
pub fn check_idempotency_key(value: &str) -> Result<(), String> {
    if value.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return Err(format!("longer than {MAX_IDEMPOTENCY_KEY_BYTES} bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_version_00() {
        assert_eq!(check_traceparent(VALID), Ok(()));
        assert_eq!(
            check_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
            Ok(())
        );
        let invalid = [
            "",
            "00",
            "00-abc-def-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for value in invalid {
            assert!(check_traceparent(value).is_err(), "{value:?} was accepted");
        }
    }

    #[test]
    fn traceparent_future_versions_and_size() {
        assert_eq!(
            check_traceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Ok(())
        );
        assert_eq!(
            check_traceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds"),
            Ok(())
        );
        assert!(check_traceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.").is_err());
        assert!(check_traceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0").is_err());
        let long = format!("cc-{}-{}", &VALID[3..], "x".repeat(MAX_TRACEPARENT_BYTES));
        assert_eq!(
            check_traceparent(&long),
            Err(format!("longer than {MAX_TRACEPARENT_BYTES} bytes"))
        );
        let longest =
            format!("{VALID}-{}", "x".repeat(MAX_TRACEPARENT_BYTES - VALID.len() - 1)).replacen("00", "01", 1);
        assert_eq!(check_traceparent(&longest), Ok(()));
    }

    #[test]
    fn tracestate_members() {
        for value in [
            "",
            " ",
            "congo=t61rcWkgMzE",
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
            "rojo=00f067aa0ba902b7 ,\t congo=t61rcWkgMzE,,",
            "tenant@system=value with spaces inside",
            "1vendor/x*y_z-w=~!",
            "k= leading spaces belong to the value but trailing ones do not ",
        ] {
            assert_eq!(check_tracestate(value), Ok(()), "{value:?}");
        }
        for value in [
            "novalue",
            "=value",
            "Upper=x",
            "_lead=x",
            "k=",
            "k=a=b",
            "k=tab\there",
            "k=é",
            "k=1,k=2",
            "k v=1",
        ] {
            assert!(check_tracestate(value).is_err(), "{value:?} was accepted");
        }
    }

    #[test]
    fn tracestate_limits() {
        let members = |n: usize| (0..n).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",");
        assert_eq!(check_tracestate(&members(32)), Ok(()));
        assert_eq!(check_tracestate(&members(33)), Err("more than 32 list members".into()));
        let at_limit = format!("k={}", "v".repeat(MAX_TRACESTATE_BYTES - 2 - 256 - 3)) + ",l=" + &"w".repeat(256);
        assert_eq!(at_limit.len(), MAX_TRACESTATE_BYTES);
        assert_eq!(check_tracestate(&at_limit), Ok(()));
        assert!(check_tracestate(&format!("{at_limit} ")).is_err());
        assert!(check_tracestate(&format!("k={}", "v".repeat(257))).is_err());
    }

    #[test]
    fn idempotency_key_length() {
        assert_eq!(check_idempotency_key(&"k".repeat(MAX_IDEMPOTENCY_KEY_BYTES)), Ok(()));
        assert!(check_idempotency_key(&"k".repeat(MAX_IDEMPOTENCY_KEY_BYTES + 1)).is_err());
    }
}

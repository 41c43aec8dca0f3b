//! Device and operator keys, verified natively on the request path.
//!
//! A device key reads `tg_<key id>_<secret>`, an operator key `tgo_<key id>_<secret>`. The keys file
//! (`<data dir>/keys.json`, written by `tidegate keys`) holds only `sha256(secret)` in hex per key id. The key id
//! finds the entry; the presented secret's SHA-256 is compared in constant time, and an unknown id is compared
//! against a dummy digest so that timing does not tell ids apart. The file is re-read when it changed (its
//! modification time, size or inode), checked at most every `reload_every`, so a revocation takes effect within a
//! second. A file that cannot be parsed (caught mid-write by a non-atomic writer) leaves the keys as they were and
//! is read again at the next check.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::decode::Limits;
use crate::decode::json::parse_one;
use crate::decode::value::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const DEVICE_PREFIX: &[u8] = b"tg_";
pub const OPERATOR_PREFIX: &[u8] = b"tgo_";

struct Entry {
    owner: Arc<str>,
    digest: [u8; 32],
}

#[derive(Default)]
struct Keys {
    devices: HashMap<Box<[u8]>, Entry>,
    operators: HashMap<Box<[u8]>, Entry>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    mtime_ns: i128,
    size: u64,
    inode: u64,
}

struct Check {
    at: Option<Instant>,
    stamp: Option<Stamp>,
}

/// The keys of one keys file, reloaded when it changes.
pub struct KeyStore {
    path: PathBuf,
    reload_every: Duration,
    keys: RwLock<Arc<Keys>>,
    check: Mutex<Check>,
}

/// A presented key's `(key id, secret)` when it has `prefix`.
fn split<'a>(presented: &'a [u8], prefix: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    let rest = presented.strip_prefix(prefix)?;
    Some(match rest.iter().position(|&b| b == b'_') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    })
}

/// SHA-256 of a presented secret, as the keys file stores it.
pub(crate) fn sha256(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Equality in time independent of where the digests differ (`subtle`, not `==`, which stops at the first byte).
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

fn parse_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

/// The digest an unknown key id is compared with (no secret hashes to it in practice).
const NOBODY: [u8; 32] = [0; 32];

impl Keys {
    fn parse(text: &str) -> Option<Keys> {
        let limits = Limits {
            max_body_bytes: usize::MAX,
            max_depth: 8,
            max_string_bytes: 1 << 20,
            max_key_bytes: 1 << 10,
            max_array_items: usize::MAX,
            max_object_keys: 1 << 10,
            max_records: 1,
        };
        let document = if text.trim().is_empty() {
            Value::Object(Vec::new())
        } else {
            parse_one(text, &limits).ok()?
        };
        let entries = |section: &str, owner_field: &str| -> Option<HashMap<Box<[u8]>, Entry>> {
            let mut map = HashMap::new();
            let items = match document.get(section) {
                None => return Some(map),
                Some(Value::Array(items)) => items,
                Some(_) => return None,
            };
            for item in items {
                let key_id = item.get("key_id")?.as_str()?;
                let owner = item.get(owner_field)?.as_str()?;
                // A digest that is not 64 hex digits matches nothing: the entry is left out.
                if let Some(digest) = item.get("secret_sha256").and_then(Value::as_str).and_then(parse_hex) {
                    let entry = Entry {
                        owner: Arc::from(owner),
                        digest,
                    };
                    map.insert(Box::from(key_id.as_bytes()), entry);
                }
            }
            Some(map)
        };
        Some(Keys {
            devices: entries("keys", "device_id")?,
            operators: entries("operators", "name")?,
        })
    }

    fn verify<'a>(map: &'a HashMap<Box<[u8]>, Entry>, presented: &[u8], prefix: &[u8]) -> Option<&'a Entry> {
        let (key_id, secret) = split(presented, prefix).unwrap_or((&[][..], &[][..]));
        let entry = map.get(key_id);
        // Hashed and compared whether or not the id is known.
        let matches = same(&sha256(secret), entry.map_or(&NOBODY, |e| &e.digest));
        entry.filter(|_| matches && !secret.is_empty())
    }
}

impl KeyStore {
    /// The keys of `path` (none while it does not exist), checked for changes at most every `reload_every`.
    pub fn open(path: &Path, reload_every: Duration) -> KeyStore {
        let store = KeyStore {
            path: path.to_path_buf(),
            reload_every,
            keys: RwLock::new(Arc::new(Keys::default())),
            check: Mutex::new(Check { at: None, stamp: None }),
        };
        store.refresh(Instant::now());
        store
    }

    fn stamp(&self) -> Option<Stamp> {
        let meta = fs::metadata(&self.path).ok()?;
        Some(Stamp {
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            size: meta.size(),
            inode: meta.ino(),
        })
    }

    /// Re-reads the file if `reload_every` passed since the last check and it changed. One caller checks at a
    /// time; the others go on with the keys they have.
    pub fn refresh(&self, now: Instant) {
        let Ok(mut check) = self.check.try_lock() else {
            return;
        };
        if check
            .at
            .is_some_and(|at| now.saturating_duration_since(at) < self.reload_every)
        {
            return;
        }
        check.at = Some(now);
        let stamp = self.stamp();
        if stamp == check.stamp {
            return;
        }
        let keys = match stamp {
            None => Some(Keys::default()),
            Some(_) => fs::read_to_string(&self.path).ok().and_then(|text| Keys::parse(&text)),
        };
        if let Some(keys) = keys {
            *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
            check.stamp = stamp;
        }
    }

    fn current(&self) -> Arc<Keys> {
        self.refresh(Instant::now());
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The device a presented key belongs to; None for a malformed, unknown or revoked key.
    pub fn device_for(&self, presented: &[u8]) -> Option<Arc<str>> {
        let keys = self.current();
        Keys::verify(&keys.devices, presented, DEVICE_PREFIX).map(|e| e.owner.clone())
    }

    /// The name of the operator whose key this is; None for any other key.
    pub fn operator_for(&self, presented: &[u8]) -> Option<Arc<str>> {
        let keys = self.current();
        Keys::verify(&keys.operators, presented, OPERATOR_PREFIX).map(|e| e.owner.clone())
    }
}

fn trim(value: &[u8]) -> &[u8] {
    value.trim_ascii()
}

/// The key a request presents: `X-Device-Token`, else `X-API-Key` (seed 001's header), else `Authorization: Bearer`.
pub fn presented_key<'a>(
    device_token: Option<&'a [u8]>,
    api_key: Option<&'a [u8]>,
    authorization: Option<&'a [u8]>,
) -> Option<&'a [u8]> {
    if let Some(token) = device_token.filter(|t| !t.is_empty()) {
        return Some(trim(token));
    }
    if let Some(key) = api_key.map(trim).filter(|k| !k.is_empty()) {
        return Some(key);
    }
    let authorization = authorization?;
    let at = authorization
        .iter()
        .position(|&b| b == b' ')
        .unwrap_or(authorization.len());
    let (scheme, value) = (&authorization[..at], trim(authorization.get(at + 1..).unwrap_or(&[])));
    (scheme.eq_ignore_ascii_case(b"bearer") && !value.is_empty()).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn hex(digest: [u8; 32]) -> String {
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn write(path: &Path, keys: &[(&str, &str, &str)], operators: &[(&str, &str, &str)]) {
        let item = |field: &str, (id, owner, secret): &(&str, &str, &str)| {
            format!(
                r#"{{"key_id":"{id}","{field}":"{owner}","secret_sha256":"{}","created_at":1.5}}"#,
                hex(sha256(secret.as_bytes()))
            )
        };
        let keys: Vec<String> = keys.iter().map(|k| item("device_id", k)).collect();
        let operators: Vec<String> = operators.iter().map(|k| item("name", k)).collect();
        let tmp = path.with_extension("tmp");
        let mut file = fs::File::create(&tmp).unwrap();
        write!(
            file,
            r#"{{"keys":[{}],"operators":[{}]}}"#,
            keys.join(","),
            operators.join(",")
        )
        .unwrap();
        fs::rename(&tmp, path).unwrap();
    }

    fn dir(name: &str) -> tempfile::TempDir {
        crate::test_dir(&format!("keys-{name}"))
    }

    #[test]
    fn device_and_operator_keys_verify_and_revocation_is_seen() {
        let dir = dir("verify");
        let path = dir.path().join("keys.json");
        write(
            &path,
            &[("a1", "dev-1", "s3cret"), ("a2", "dev-1", "other")],
            &[("o1", "dashboard", "op")],
        );
        let store = KeyStore::open(&path, Duration::ZERO);
        assert_eq!(store.device_for(b"tg_a1_s3cret").as_deref(), Some("dev-1"));
        assert_eq!(store.device_for(b"tg_a2_other").as_deref(), Some("dev-1"));
        assert_eq!(store.device_for(b"tg_a1_s3cres"), None, "a wrong secret");
        assert_eq!(store.device_for(b"tg_a1_"), None, "no secret");
        assert_eq!(store.device_for(b"tg_zz_s3cret"), None, "an unknown id");
        assert_eq!(store.device_for(b"nonsense"), None);
        assert_eq!(store.device_for(b"tgo_o1_op"), None, "an operator key is no device's");
        assert_eq!(store.operator_for(b"tgo_o1_op").as_deref(), Some("dashboard"));
        assert_eq!(
            store.operator_for(b"tg_a1_s3cret"),
            None,
            "a device key is no operator's"
        );
        assert_eq!(store.operator_for(b"tgo_"), None);
        write(&path, &[("a2", "dev-1", "other")], &[]);
        assert_eq!(store.device_for(b"tg_a1_s3cret"), None, "revoked");
        assert_eq!(
            store.device_for(b"tg_a2_other").as_deref(),
            Some("dev-1"),
            "the other key is kept"
        );
        assert_eq!(store.operator_for(b"tgo_o1_op"), None, "revoked");
        fs::remove_file(&path).unwrap();
        assert_eq!(store.device_for(b"tg_a2_other"), None, "no file, no keys");
    }

    #[test]
    fn changes_are_checked_at_most_every_interval_and_a_torn_file_keeps_the_keys() {
        let dir = dir("interval");
        let path = dir.path().join("keys.json");
        write(&path, &[("a1", "dev-1", "s")], &[]);
        let store = KeyStore::open(&path, Duration::from_secs(3600));
        write(&path, &[], &[]);
        assert_eq!(
            store.device_for(b"tg_a1_s").as_deref(),
            Some("dev-1"),
            "not checked yet"
        );
        store.refresh(Instant::now() + Duration::from_secs(3601));
        assert_eq!(store.device_for(b"tg_a1_s"), None, "checked: revoked");
        write(&path, &[("a1", "dev-1", "s")], &[]);
        store.refresh(Instant::now() + Duration::from_secs(7202));
        assert_eq!(store.device_for(b"tg_a1_s").as_deref(), Some("dev-1"));
        fs::write(&path, b"{\"keys\": [").unwrap();
        store.refresh(Instant::now() + Duration::from_secs(10803));
        assert_eq!(
            store.device_for(b"tg_a1_s").as_deref(),
            Some("dev-1"),
            "a torn file changes nothing"
        );
    }

    #[test]
    fn the_presented_key_comes_from_the_first_header_that_has_one() {
        assert_eq!(presented_key(Some(b" k1 "), Some(b"k2"), None), Some(&b"k1"[..]));
        assert_eq!(presented_key(Some(b""), Some(b" k2"), None), Some(&b"k2"[..]));
        assert_eq!(
            presented_key(None, Some(b"  "), Some(b"Bearer  abc ")),
            Some(&b"abc"[..])
        );
        assert_eq!(presented_key(None, None, Some(b"bearer abc")), Some(&b"abc"[..]));
        assert_eq!(presented_key(None, None, Some(b"Basic abc")), None);
        assert_eq!(presented_key(None, None, Some(b"Bearer ")), None);
        assert_eq!(presented_key(None, None, None), None);
    }
}

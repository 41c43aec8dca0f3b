//! Ids for the dedup window (kept in the shared table, `crate::shared`): event ids, and idempotency keys hashed
//! into the same 128-bit space; and a hash set of ids.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

/// A 128-bit identity: an event id, or the hash of an idempotency key.
pub type Id = [u8; 16];

/// Domain separation for idempotency keys hashed into the same window as event ids.
const KEY_DOMAIN: &str = "tidegate:idempotency-key:v1\n";

/// The id an idempotency key (`X-Idempotency-Key`, a batch's `batch_id`) occupies in the window.
pub fn key_id(scope: &str, key: &str) -> Id {
    let mut hasher = blake3::Hasher::new();
    hasher.update(KEY_DOMAIN.as_bytes());
    hasher.update(scope.as_bytes());
    hasher.update(b"\n");
    hasher.update(key.as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    id
}

/// Ids are BLAKE3 output, already uniformly distributed: their first eight bytes are the hash.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }

    fn write_u16(&mut self, value: u16) {
        self.0 = self.0.rotate_left(5) ^ u64::from(value);
    }

    fn write_usize(&mut self, _length: usize) {}
}

/// A hash set of ids (or of pairs holding one) that skips SipHash.
pub type IdSet<T> = HashSet<T, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_scoped() {
        assert_ne!(key_id("batch", "b-1"), key_id("idempotency", "b-1"));
    }
}

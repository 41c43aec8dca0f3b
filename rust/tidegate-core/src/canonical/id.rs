//! The 128-bit identities records are known by (event ids, and the dedup window's hashed idempotency keys), and
//! a hash set of them.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

/// A 128-bit identity: an event id, or the hash of an idempotency key.
pub type Id = [u8; 16];

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

//! The dedup window's ids (kept in the shared table, `crate::state::table`): event ids, and idempotency keys
//! hashed into the same 128-bit space.

use crate::canonical::id::Id;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_scoped() {
        assert_ne!(key_id("batch", "b-1"), key_id("idempotency", "b-1"));
    }
}

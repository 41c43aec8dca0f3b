//! The dedup window: recently seen event ids (and idempotency keys), bounded in count and in time.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;

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
type IdMap<V> = HashMap<Id, V, BuildHasherDefault<IdHasher>>;

struct Inner {
    seen: IdMap<i64>,
    /// Insertion order with insertion time, for expiry and eviction.
    order: VecDeque<(Id, i64)>,
}

/// Ids seen within the last `ttl_ms`, at most `capacity` of them (oldest evicted first). Thread-safe.
pub struct DedupWindow {
    inner: Mutex<Inner>,
    capacity: usize,
    ttl_ms: i64,
}

impl DedupWindow {
    pub fn new(capacity: usize, ttl_ms: i64) -> DedupWindow {
        DedupWindow {
            inner: Mutex::new(Inner {
                seen: IdMap::default(),
                order: VecDeque::new(),
            }),
            capacity: capacity.max(1),
            ttl_ms,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn expire(&self, inner: &mut Inner, now_ms: i64) {
        while let Some(&(id, at)) = inner.order.front() {
            if at > now_ms - self.ttl_ms && inner.order.len() <= self.capacity {
                break;
            }
            inner.order.pop_front();
            if inner.seen.get(&id) == Some(&at) {
                inner.seen.remove(&id);
            }
        }
    }

    /// Marks each id seen at `now_ms`. Returns, per id, whether it was new (claimed) rather than a duplicate;
    /// an id repeated within `ids` is new only the first time.
    pub fn claim(&self, ids: &[Id], now_ms: i64) -> Vec<bool> {
        let mut inner = self.lock();
        self.expire(&mut inner, now_ms);
        let fresh = ids
            .iter()
            .map(|id| {
                if inner.seen.contains_key(id) {
                    return false;
                }
                inner.seen.insert(*id, now_ms);
                inner.order.push_back((*id, now_ms));
                true
            })
            .collect();
        self.expire(&mut inner, now_ms);
        fresh
    }

    /// Forgets ids claimed for records that could not be made durable, so a retry is not called a duplicate.
    pub fn release(&self, ids: &[Id]) {
        let mut inner = self.lock();
        for id in ids {
            inner.seen.remove(id);
        }
    }

    /// Whether `id` was seen within the window (without claiming it).
    pub fn contains(&self, id: &Id, now_ms: i64) -> bool {
        let mut inner = self.lock();
        self.expire(&mut inner, now_ms);
        inner.seen.contains_key(id)
    }

    /// Loads ids seen at the given times (rebuilding after a restart); ids older than the window are skipped.
    pub fn load(&self, seen: impl IntoIterator<Item = (Id, i64)>, now_ms: i64) {
        let mut inner = self.lock();
        for (id, at) in seen {
            if at > now_ms - self.ttl_ms && !inner.seen.contains_key(&id) {
                inner.seen.insert(id, at);
                inner.order.push_back((id, at));
            }
        }
        self.expire(&mut inner, now_ms);
    }

    pub fn len(&self) -> usize {
        self.lock().seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_releases_and_expires() {
        let window = DedupWindow::new(3, 1000);
        assert_eq!(window.claim(&[[1; 16], [2; 16], [1; 16]], 0), [true, true, false]);
        assert_eq!(window.claim(&[[2; 16]], 10), [false]);
        window.release(&[[2; 16]]);
        assert_eq!(window.claim(&[[2; 16]], 20), [true]);
        assert!(!window.contains(&[1; 16], 1000), "expired after the ttl");
        window.claim(&[[3; 16], [4; 16], [5; 16], [6; 16]], 1001);
        assert_eq!(window.len(), 3, "bounded by capacity");
        assert!(!window.contains(&[3; 16], 1001));
        assert_ne!(key_id("batch", "b-1"), key_id("idempotency", "b-1"));
    }
}

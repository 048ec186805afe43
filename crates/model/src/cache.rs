//! The expert cache: decoded experts, least recently used first out, bounded in bytes.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use blyan_primitives::Hash;
use serde::Serialize;

/// Counters of an [`ExpertCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    /// Lookups served from memory.
    pub hits: u64,
    /// Lookups that loaded the expert from its block.
    pub misses: u64,
    /// Experts dropped to stay within the budget.
    pub evictions: u64,
    /// Bytes of the experts held now.
    pub bytes: u64,
    /// Experts held now.
    pub entries: u64,
    /// Bytes decoded by all misses so far.
    pub loaded_bytes: u64,
    /// Time spent loading on misses, in microseconds.
    pub load_us: u64,
}

/// Something the cache can hold: it knows its own size.
pub trait ByteSize {
    /// Bytes it occupies.
    fn bytes(&self) -> usize;
}

/// An LRU map from block hash to a decoded value, bounded by the values' total bytes.
///
/// A lookup that misses runs the loader outside the lock, so a slow load never blocks hits on
/// other experts. Two threads missing the same block may both load it; the first insert wins.
/// A value larger than the whole budget is returned without being kept.
#[derive(Debug)]
pub struct ExpertCache<T> {
    budget_bytes: usize,
    inner: Mutex<Inner<T>>,
}

#[derive(Debug)]
struct Inner<T> {
    entries: HashMap<Hash, Entry<T>>,
    /// Recency order: last-use tick → key. The first entry is the next to evict.
    order: BTreeMap<u64, Hash>,
    tick: u64,
    stats: CacheStats,
}

#[derive(Debug)]
struct Entry<T> {
    value: Arc<T>,
    bytes: usize,
    tick: u64,
}

impl<T: ByteSize> ExpertCache<T> {
    /// An empty cache that holds at most `budget_bytes` of values.
    pub fn new(budget_bytes: usize) -> ExpertCache<T> {
        ExpertCache {
            budget_bytes,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                order: BTreeMap::new(),
                tick: 0,
                stats: CacheStats::default(),
            }),
        }
    }

    /// The byte budget.
    pub fn budget_bytes(&self) -> usize {
        self.budget_bytes
    }

    /// The value for `key`, loading it with `load` on a miss.
    pub fn get_or_load<E>(
        &self,
        key: Hash,
        load: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        {
            let mut inner = self.lock();
            inner.tick += 1;
            let tick = inner.tick;
            if let Some(entry) = inner.entries.get_mut(&key) {
                let old = std::mem::replace(&mut entry.tick, tick);
                let value = entry.value.clone();
                inner.order.remove(&old);
                inner.order.insert(tick, key);
                inner.stats.hits += 1;
                return Ok(value);
            }
        }
        let start = Instant::now();
        let value = Arc::new(load()?);
        let bytes = value.bytes();
        let load_us = start.elapsed().as_micros() as u64;

        let mut inner = self.lock();
        inner.stats.misses += 1;
        inner.stats.loaded_bytes += bytes as u64;
        inner.stats.load_us += load_us;
        if let Some(existing) = inner.entries.get(&key) {
            return Ok(existing.value.clone());
        }
        if bytes > self.budget_bytes {
            return Ok(value);
        }
        while inner.stats.bytes as usize + bytes > self.budget_bytes {
            let Some((_, victim)) = inner.order.pop_first() else {
                break;
            };
            if let Some(gone) = inner.entries.remove(&victim) {
                inner.stats.bytes -= gone.bytes as u64;
                inner.stats.entries -= 1;
                inner.stats.evictions += 1;
            }
        }
        inner.tick += 1;
        let tick = inner.tick;
        inner.order.insert(tick, key);
        inner.entries.insert(
            key,
            Entry {
                value: value.clone(),
                bytes,
                tick,
            },
        );
        inner.stats.bytes += bytes as u64;
        inner.stats.entries += 1;
        Ok(value)
    }

    /// Whether `key` is held now (does not count as a use).
    pub fn contains(&self, key: &Hash) -> bool {
        self.lock().entries.contains_key(key)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CacheStats {
        self.lock().stats
    }

    /// Drops every value; counters other than `bytes` and `entries` are kept.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.entries.clear();
        inner.order.clear();
        inner.stats.bytes = 0;
        inner.stats.entries = 0;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        // The cache's invariants hold between statements, so a panic elsewhere while the lock
        // was held cannot leave it inconsistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Blob(usize);

    impl ByteSize for Blob {
        fn bytes(&self) -> usize {
            self.0
        }
    }

    fn key(i: u8) -> Hash {
        Hash::of(&[i])
    }

    fn get(cache: &ExpertCache<Blob>, i: u8, size: usize) -> Arc<Blob> {
        cache
            .get_or_load(key(i), || Ok::<_, ()>(Blob(size)))
            .unwrap()
    }

    #[test]
    fn evicts_least_recently_used_within_budget() {
        let cache = ExpertCache::new(300);
        get(&cache, 1, 100);
        get(&cache, 2, 100);
        get(&cache, 3, 100);
        get(&cache, 1, 100); // 1 is now the most recent; 2 the least
        get(&cache, 4, 100);
        assert!(!cache.contains(&key(2)));
        for i in [1, 3, 4] {
            assert!(cache.contains(&key(i)), "{i}");
        }
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.evictions), (1, 4, 1));
        assert_eq!((s.bytes, s.entries, s.loaded_bytes), (300, 3, 400));
    }

    #[test]
    fn a_big_value_evicts_several_and_an_oversized_one_is_not_kept() {
        let cache = ExpertCache::new(300);
        for i in 1..=3 {
            get(&cache, i, 100);
        }
        get(&cache, 9, 250);
        assert_eq!(cache.stats().entries, 1);
        assert_eq!(cache.stats().evictions, 3);
        assert_eq!(get(&cache, 10, 301).0, 301);
        assert!(!cache.contains(&key(10)));
        assert!(cache.contains(&key(9)));
        assert!(cache.stats().bytes <= 300);
    }

    #[test]
    fn a_failed_load_leaves_the_cache_as_it_was() {
        let cache = ExpertCache::new(300);
        get(&cache, 1, 100);
        let before = cache.stats();
        assert!(
            cache
                .get_or_load(key(2), || Err::<Blob, _>("bad block"))
                .is_err()
        );
        assert_eq!(cache.stats(), before);
        assert!(!cache.contains(&key(2)));
    }
}

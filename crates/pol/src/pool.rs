//! The hidden evaluation pool: items committed to by a Merkle root, and samples drawn from
//! the items not yet used, with a seed that exists only once the candidate is committed.
//!
//! The seed of an evaluation is `SHA-256("blyan-pol-seed" || candidate payload hash || pool
//! root || proof-chain head)`: the candidate's bytes are fixed before the seed exists, the
//! proof-chain head changes with every verdict, so a contributor cannot choose a candidate for
//! a sample, and the same candidate evaluated again later (a replication) draws a different
//! one. The verdict block extends exactly that head, so anyone can recompute the draw.

use std::collections::BTreeSet;

use blyan_primitives::{Hash, merkle};
use rand::{Rng, SeedableRng};

/// Why a sample cannot be drawn.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// Fewer unused items remain than a sample needs.
    #[error("the hidden pool is exhausted: {remaining} unused items, {wanted} needed")]
    Exhausted {
        /// Items never used.
        remaining: usize,
        /// Items one sample takes.
        wanted: usize,
    },
    /// A sample of no items.
    #[error("a sample needs at least one item")]
    EmptySample,
}

/// The items a validator evaluates on, each in its canonical bytes, in a fixed order.
#[derive(Clone, Debug)]
pub struct Pool {
    items: Vec<Vec<u8>>,
    root: Hash,
}

impl Pool {
    /// A pool of `items`; its root commits to every item and their order.
    pub fn new(items: Vec<Vec<u8>>) -> Pool {
        let root = merkle::merkle_root(&items);
        Pool { items, root }
    }

    /// The Merkle root published on chain before any submission.
    pub fn root(&self) -> Hash {
        self.root
    }

    /// Items in the pool.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the pool has no items.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// A pool of the consecutive, non-overlapping windows of `item_tokens` tokens in
    /// `tokens` (a shorter tail is dropped), each encoded by [`encode_item`].
    pub fn from_tokens(tokens: &[u32], item_tokens: usize) -> Pool {
        Pool::new(
            tokens
                .chunks_exact(item_tokens.max(1))
                .map(encode_item)
                .collect(),
        )
    }

    /// Item `i`'s tokens.
    pub fn tokens(&self, i: u32) -> Option<Vec<u32>> {
        self.item(i).map(decode_item)
    }

    /// The pool file's bytes: `BLYPOOL1`, the item count and each item's length-prefixed
    /// bytes, all integers little-endian u32.
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(12 + self.items.iter().map(|i| 4 + i.len()).sum::<usize>());
        out.extend_from_slice(POOL_MAGIC);
        out.extend_from_slice(&(self.items.len() as u32).to_le_bytes());
        for item in &self.items {
            out.extend_from_slice(&(item.len() as u32).to_le_bytes());
            out.extend_from_slice(item);
        }
        out
    }

    /// Parses a pool file.
    pub fn decode(bytes: &[u8]) -> Result<Pool, String> {
        let rest = bytes
            .strip_prefix(POOL_MAGIC.as_slice())
            .ok_or("not a pool file (bad magic)")?;
        let mut at = 0usize;
        let u32_at = |at: &mut usize| -> Result<usize, String> {
            let b = rest.get(*at..*at + 4).ok_or("the pool file is truncated")?;
            *at += 4;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        };
        let count = u32_at(&mut at)?;
        let mut items = Vec::with_capacity(count.min(rest.len() / 4));
        for _ in 0..count {
            let len = u32_at(&mut at)?;
            let item = rest.get(at..at + len).ok_or("the pool file is truncated")?;
            items.push(item.to_vec());
            at += len;
        }
        if at != rest.len() {
            return Err("the pool file has trailing bytes".into());
        }
        Ok(Pool::new(items))
    }

    /// Item `i`'s bytes.
    pub fn item(&self, i: u32) -> Option<&[u8]> {
        self.items.get(i as usize).map(Vec::as_slice)
    }

    /// Draws `k` distinct items, none of them in `retired`, determined by `seed` alone: the
    /// first `k` of [`Pool::draw_order`], sorted. The caller retires them.
    pub fn draw(
        &self,
        seed: Hash,
        k: usize,
        retired: &BTreeSet<u32>,
    ) -> Result<Vec<u32>, PoolError> {
        let mut sample = self.draw_order(seed, k, retired)?;
        sample.sort_unstable();
        Ok(sample)
    }

    /// Draws `k` distinct items, none of them in `retired`, in the order drawn: the unused
    /// indices in ascending order, shuffled by a partial Fisher–Yates with ChaCha8 seeded
    /// from `seed`, the first `k`. The first `j` items of a draw of `k` are the draw of `j`.
    pub fn draw_order(
        &self,
        seed: Hash,
        k: usize,
        retired: &BTreeSet<u32>,
    ) -> Result<Vec<u32>, PoolError> {
        if k == 0 {
            return Err(PoolError::EmptySample);
        }
        let mut unused: Vec<u32> = (0..self.items.len() as u32)
            .filter(|i| !retired.contains(i))
            .collect();
        if unused.len() < k {
            return Err(PoolError::Exhausted {
                remaining: unused.len(),
                wanted: k,
            });
        }
        let mut rng = rand_chacha::ChaCha8Rng::from_seed(seed.0);
        for i in 0..k {
            let j = rng.random_range(i..unused.len());
            unused.swap(i, j);
        }
        unused.truncate(k);
        Ok(unused)
    }

    /// The ordered sample of a sequential evaluation: up to `stages` stages of
    /// `stage_items` each ([`Pool::draw_order`]), as many whole stages as the unused items
    /// allow. Exhausted when not even one stage remains.
    pub fn draw_stages(
        &self,
        seed: Hash,
        stage_items: usize,
        stages: usize,
        retired: &BTreeSet<u32>,
    ) -> Result<Vec<u32>, PoolError> {
        if stage_items == 0 || stages == 0 {
            return Err(PoolError::EmptySample);
        }
        let unused = self.items.len()
            - retired
                .iter()
                .filter(|&&i| (i as usize) < self.items.len())
                .count();
        let whole = (unused / stage_items).min(stages);
        if whole == 0 {
            return Err(PoolError::Exhausted {
                remaining: unused,
                wanted: stage_items,
            });
        }
        self.draw_order(seed, whole * stage_items, retired)
    }
}

/// Magic bytes of a pool file.
const POOL_MAGIC: &[u8; 8] = b"BLYPOOL1";

/// An item's canonical bytes: its token ids as little-endian u32.
pub fn encode_item(tokens: &[u32]) -> Vec<u8> {
    tokens.iter().flat_map(|t| t.to_le_bytes()).collect()
}

/// The token ids of an item's canonical bytes (a trailing partial id is ignored).
pub fn decode_item(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The seed of one evaluation (see the module documentation).
pub fn evaluation_seed(candidate: &Hash, pool_root: &Hash, proof_head: &Hash) -> Hash {
    let mut bytes = Vec::with_capacity(14 + 96);
    bytes.extend_from_slice(b"blyan-pol-seed");
    bytes.extend_from_slice(&candidate.0);
    bytes.extend_from_slice(&pool_root.0);
    bytes.extend_from_slice(&proof_head.0);
    Hash::of(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Pool {
        Pool::new((0..n).map(|i| format!("item {i}").into_bytes()).collect())
    }

    #[test]
    fn draws_are_deterministic_distinct_and_never_reuse() {
        let p = pool(100);
        let seed = evaluation_seed(&Hash::of(b"c"), &p.root(), &Hash::ZERO);
        let a = p.draw(seed, 30, &BTreeSet::new()).unwrap();
        assert_eq!(a, p.draw(seed, 30, &BTreeSet::new()).unwrap());
        assert_eq!(a.iter().collect::<BTreeSet<_>>().len(), 30);
        let mut retired: BTreeSet<u32> = a.iter().copied().collect();
        let other = evaluation_seed(&Hash::of(b"c"), &p.root(), &Hash::of(b"next verdict"));
        assert_ne!(other, seed);
        let b = p.draw(other, 30, &retired).unwrap();
        assert!(b.iter().all(|i| !retired.contains(i)));
        retired.extend(&b);
        let c = p.draw(seed, 40, &retired).unwrap();
        retired.extend(&c);
        assert_eq!(retired.len(), 100);
        assert_eq!(
            p.draw(seed, 1, &retired),
            Err(PoolError::Exhausted {
                remaining: 0,
                wanted: 1
            })
        );
        assert_eq!(
            p.draw(seed, 0, &BTreeSet::new()),
            Err(PoolError::EmptySample)
        );
    }

    #[test]
    fn staged_draws_are_prefixes_and_shrink_to_what_is_left() {
        let p = pool(100);
        let seed = Hash::of(b"staged");
        let none = BTreeSet::new();
        let order = p.draw_stages(seed, 10, 4, &none).unwrap();
        assert_eq!(order.len(), 40);
        let mut first = order[..10].to_vec();
        first.sort_unstable();
        assert_eq!(
            first,
            p.draw(seed, 10, &none).unwrap(),
            "stage one is the plain draw"
        );
        let retired: BTreeSet<u32> = (0..75).collect();
        let left = p.draw_stages(seed, 10, 4, &retired).unwrap();
        assert_eq!(left.len(), 20, "two whole stages fit in 25 unused items");
        assert!(left.iter().all(|i| *i >= 75));
        let retired: BTreeSet<u32> = (0..95).collect();
        assert_eq!(
            p.draw_stages(seed, 10, 4, &retired),
            Err(PoolError::Exhausted {
                remaining: 5,
                wanted: 10
            })
        );
    }

    #[test]
    fn the_root_commits_to_items_and_order() {
        let mut items: Vec<Vec<u8>> = (0..5).map(|i| vec![i]).collect();
        let root = Pool::new(items.clone()).root();
        items.swap(0, 1);
        assert_ne!(Pool::new(items.clone()).root(), root);
        items.swap(0, 1);
        items[4] = vec![9];
        assert_ne!(Pool::new(items).root(), root);
    }

    #[test]
    fn every_item_is_equally_likely() {
        let p = pool(20);
        let mut counts = [0u32; 20];
        for s in 0..4000u32 {
            for i in p
                .draw(Hash::of(&s.to_le_bytes()), 5, &BTreeSet::new())
                .unwrap()
            {
                counts[i as usize] += 1;
            }
        }
        // 4000 draws × 5 / 20 = 1000 each; binomial sd ≈ 27.
        assert!(
            counts.iter().all(|&c| (850..1150).contains(&c)),
            "{counts:?}"
        );
    }
}

//! The hidden evaluation pool: items committed to by a Merkle root, and samples drawn from
//! the items not yet used, with a seed that exists only once the candidate is committed.
//!
//! The seed of an evaluation is `SHA-256("blyan-pol-seed" || candidate payload hash || pool
//! root || proof-chain head)`: the candidate's bytes are fixed before the seed exists, the
//! proof-chain head changes with every verdict, so a contributor cannot choose a candidate for
//! a sample, and the same candidate evaluated again later (a replication) draws a different
//! one. The verdict block extends exactly that head, so anyone can recompute the draw.

use std::collections::BTreeSet;

use blyan_chain::RevealedItem;
use blyan_primitives::{Hash, keyed_hash, merkle};
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

/// Items to evaluate on, each in its canonical bytes, in a fixed order, under a Merkle root.
///
/// A *hidden* pool commits to each item with a salt derived from the validator's secret
/// ([`Pool::salted`]): leaf `i` is `salt_i ‖ item_i`, so neither the root nor a sibling hash in
/// a proof can be tested against candidate texts. A *public* pool (the validation items)
/// commits to the bare items. A pool rebuilt from reveals ([`Pool::revealed`]) knows only the
/// items opened so far; drawing needs only the count, scoring only the items drawn.
#[derive(Clone, Debug)]
pub struct Pool {
    items: Vec<Option<Vec<u8>>>,
    /// Each item's salt, for a hidden pool whose items are all known.
    salts: Option<Vec<Hash>>,
    root: Hash,
}

/// Domain of an item salt's keyed hash.
const SALT_DOMAIN: &[u8] = b"blyan-pool-salt-v1";

/// Item `i`'s salt under `secret`.
pub fn item_salt(secret: &[u8; 32], i: u32) -> Hash {
    keyed_hash(secret, SALT_DOMAIN, &i.to_le_bytes())
}

fn salted_leaf(salt: &Hash, item: &[u8]) -> Hash {
    let mut bytes = Vec::with_capacity(32 + item.len());
    bytes.extend_from_slice(&salt.0);
    bytes.extend_from_slice(item);
    merkle::leaf_hash(&bytes)
}

impl Pool {
    /// A public pool of `items`; its root commits to every item and their order.
    pub fn new(items: Vec<Vec<u8>>) -> Pool {
        let root = merkle::merkle_root(&items);
        Pool {
            items: items.into_iter().map(Some).collect(),
            salts: None,
            root,
        }
    }

    /// A hidden pool of `items`, item `i` salted with [`item_salt`]`(secret, i)`.
    pub fn salted(items: Vec<Vec<u8>>, secret: &[u8; 32]) -> Pool {
        let salts = (0..items.len() as u32)
            .map(|i| item_salt(secret, i))
            .collect();
        Pool::with_salts(items, salts)
    }

    fn with_salts(items: Vec<Vec<u8>>, salts: Vec<Hash>) -> Pool {
        let leaves: Vec<Hash> = items
            .iter()
            .zip(&salts)
            .map(|(item, salt)| salted_leaf(salt, item))
            .collect();
        let root = merkle::root_of_hashes(leaves);
        Pool {
            items: items.into_iter().map(Some).collect(),
            salts: Some(salts),
            root,
        }
    }

    /// The pool of `len` items under `root` as far as `opened` shows it: the items whose
    /// proofs lead to `root` (salted ones for a hidden pool, bare ones for a public pool).
    /// Returns the indices whose proofs fail, which are left unknown.
    pub fn revealed<'a>(
        root: Hash,
        len: u32,
        opened: impl IntoIterator<Item = &'a RevealedItem>,
    ) -> (Pool, Vec<u32>) {
        let mut items = vec![None; len as usize];
        let mut bad = Vec::new();
        for item in opened {
            let leaf = if item.salt.is_zero() {
                merkle::leaf_hash(&item.bytes)
            } else {
                salted_leaf(&item.salt, &item.bytes)
            };
            if merkle::verify_proof(&root, leaf, item.index as usize, len as usize, &item.proof) {
                items[item.index as usize] = Some(item.bytes.clone());
            } else {
                bad.push(item.index);
            }
        }
        let pool = Pool {
            items,
            salts: None,
            root,
        };
        (pool, bad)
    }

    /// Opens `indices`: each item with its salt (zero in a public pool) and Merkle proof.
    /// `None` when an index is out of range or not known here.
    pub fn reveal(&self, indices: &[u32]) -> Option<Vec<RevealedItem>> {
        let leaves: Vec<Hash> = match &self.salts {
            Some(salts) => self
                .items
                .iter()
                .zip(salts)
                .map(|(item, salt)| item.as_deref().map(|i| salted_leaf(salt, i)))
                .collect::<Option<_>>()?,
            None => self
                .items
                .iter()
                .map(|item| item.as_deref().map(merkle::leaf_hash))
                .collect::<Option<_>>()?,
        };
        let at: Vec<usize> = indices.iter().map(|&i| i as usize).collect();
        let proofs = merkle::proofs_of_hashes(leaves, &at)?;
        indices
            .iter()
            .zip(proofs)
            .map(|(&i, proof)| {
                Some(RevealedItem {
                    index: i,
                    salt: match &self.salts {
                        Some(salts) => *salts.get(i as usize)?,
                        None => Hash::ZERO,
                    },
                    bytes: self.item(i)?.to_vec(),
                    proof,
                })
            })
            .collect()
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

    /// The consecutive, non-overlapping windows of `item_tokens` tokens in `tokens` (a
    /// shorter tail is dropped), each encoded by [`encode_item`].
    pub fn windows(tokens: &[u32], item_tokens: usize) -> Vec<Vec<u8>> {
        tokens
            .chunks_exact(item_tokens.max(1))
            .map(encode_item)
            .collect()
    }

    /// Item `i`'s tokens.
    pub fn tokens(&self, i: u32) -> Option<Vec<u32>> {
        self.item(i).map(decode_item)
    }

    /// Item `i`'s bytes, when known here.
    pub fn item(&self, i: u32) -> Option<&[u8]> {
        self.items.get(i as usize)?.as_deref()
    }

    /// The pool file's bytes: `BLYPOOL2`, then the hidden pool and the validation pool, each
    /// as its item count, a salted flag (1 or 0), and per item its salt (when salted) and its
    /// length-prefixed bytes; all integers little-endian u32. Only a pool whose items are all
    /// known can be written.
    pub fn encode_file(hidden: &Pool, validation: &Pool) -> Option<Vec<u8>> {
        let mut out = POOL_MAGIC.to_vec();
        for pool in [hidden, validation] {
            out.extend_from_slice(&(pool.items.len() as u32).to_le_bytes());
            out.extend_from_slice(&u32::from(pool.salts.is_some()).to_le_bytes());
            for (i, item) in pool.items.iter().enumerate() {
                if let Some(salts) = &pool.salts {
                    out.extend_from_slice(&salts[i].0);
                }
                let item = item.as_deref()?;
                out.extend_from_slice(&(item.len() as u32).to_le_bytes());
                out.extend_from_slice(item);
            }
        }
        Some(out)
    }

    /// Parses a pool file: the hidden pool and the validation pool.
    pub fn decode_file(bytes: &[u8]) -> Result<(Pool, Pool), String> {
        let mut rest = bytes
            .strip_prefix(POOL_MAGIC.as_slice())
            .ok_or("not a pool file of this version (bad magic)")?;
        let mut take = |n: usize| -> Result<&[u8], String> {
            if rest.len() < n {
                return Err("the pool file is truncated".into());
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let mut pools = Vec::with_capacity(2);
        for _ in 0..2 {
            let count = u32_of(take(4)?) as usize;
            let salted = match u32_of(take(4)?) {
                0 => false,
                1 => true,
                other => return Err(format!("bad salted flag {other}")),
            };
            let mut items = Vec::with_capacity(count.min(bytes.len() / 4));
            let mut salts = Vec::new();
            for _ in 0..count {
                if salted {
                    let mut salt = [0u8; 32];
                    salt.copy_from_slice(take(32)?);
                    salts.push(Hash(salt));
                }
                let len = u32_of(take(4)?) as usize;
                items.push(take(len)?.to_vec());
            }
            pools.push(if salted {
                Pool::with_salts(items, salts)
            } else {
                Pool::new(items)
            });
        }
        if !rest.is_empty() {
            return Err("the pool file has trailing bytes".into());
        }
        let validation = pools.pop().unwrap_or_else(|| Pool::new(Vec::new()));
        let hidden = pools.pop().unwrap_or_else(|| Pool::new(Vec::new()));
        Ok((hidden, validation))
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
const POOL_MAGIC: &[u8; 8] = b"BLYPOOL2";

fn u32_of(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

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

    #[test]
    fn a_salted_pool_opens_item_by_item_and_only_to_its_root() {
        let items: Vec<Vec<u8>> = (0..37u32)
            .map(|i| encode_item(&[i, i + 1, i + 2]))
            .collect();
        let secret = [7u8; 32];
        let hidden = Pool::salted(items.clone(), &secret);
        assert_ne!(
            hidden.root(),
            Pool::new(items.clone()).root(),
            "salts change the root"
        );
        assert_ne!(hidden.root(), Pool::salted(items.clone(), &[8; 32]).root());
        let opened = hidden.reveal(&[0, 5, 36]).expect("known items");
        assert!(opened.iter().all(|o| o.salt == item_salt(&secret, o.index)));
        let (partial, bad) = Pool::revealed(hidden.root(), 37, &opened);
        assert!(bad.is_empty());
        assert_eq!(partial.len(), 37);
        assert_eq!(partial.tokens(5), Some(vec![5, 6, 7]));
        assert_eq!(partial.tokens(6), None, "unopened items stay unknown");
        // A changed item, a wrong salt or a proof for another index does not open.
        let mut forged = opened.clone();
        forged[0].bytes = encode_item(&[9, 9, 9]);
        forged[1].salt = Hash::of(b"guess");
        forged[2].index = 35;
        let (partial, bad) = Pool::revealed(hidden.root(), 37, &forged);
        assert_eq!(bad, vec![0, 5, 35]);
        assert_eq!(partial.tokens(0), None);
        // A public pool opens with zero salts.
        let public = Pool::new(items);
        let opened = public.reveal(&[3]).expect("known");
        assert!(opened[0].salt.is_zero());
        assert!(Pool::revealed(public.root(), 37, &opened).1.is_empty());
        assert!(public.reveal(&[37]).is_none());
    }

    #[test]
    fn the_pool_file_round_trips_and_refuses_damage() {
        let hidden = Pool::salted((0..9u32).map(|i| encode_item(&[i; 4])).collect(), &[1; 32]);
        let validation = Pool::new((0..3u32).map(|i| encode_item(&[i; 2])).collect());
        let bytes = Pool::encode_file(&hidden, &validation).expect("complete pools");
        let (h, v) = Pool::decode_file(&bytes).expect("decodes");
        assert_eq!((h.root(), v.root()), (hidden.root(), validation.root()));
        assert_eq!(h.reveal(&[4]), hidden.reveal(&[4]));
        assert!(Pool::decode_file(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Pool::decode_file(&longer).is_err());
        assert!(Pool::decode_file(b"BLYPOOL1\0\0\0\0").is_err());
        let (partial, _) = Pool::revealed(hidden.root(), 9, &hidden.reveal(&[1]).unwrap());
        assert!(Pool::encode_file(&partial, &validation).is_none());
    }
}

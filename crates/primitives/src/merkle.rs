//! Binary Merkle roots over SHA-256 with domain-separated leaves and nodes.
//!
//! A leaf hashes as `SHA-256(0x00 || bytes)` and an inner node as `SHA-256(0x01 || left ||
//! right)`, so a leaf can never be passed off as a node. A level with an odd count carries
//! its last hash up unchanged. The root of no leaves is [`Hash::ZERO`].

use sha2::{Digest, Sha256};

use crate::Hash;

/// The hash of one leaf.
pub fn leaf_hash(bytes: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(bytes);
    Hash(h.finalize().into())
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left.0);
    h.update(right.0);
    Hash(h.finalize().into())
}

/// The Merkle root of `leaves`, in order.
pub fn merkle_root<T: AsRef<[u8]>>(leaves: &[T]) -> Hash {
    root_of_hashes(leaves.iter().map(|l| leaf_hash(l.as_ref())).collect())
}

/// The Merkle root over leaves already hashed with [`leaf_hash`].
pub fn root_of_hashes(mut level: Vec<Hash>) -> Hash {
    if level.is_empty() {
        return Hash::ZERO;
    }
    while level.len() > 1 {
        level = next_level(&level);
    }
    level[0]
}

fn next_level(level: &[Hash]) -> Vec<Hash> {
    level
        .chunks(2)
        .map(|pair| match pair {
            [l, r] => node_hash(l, r),
            [one] => *one,
            _ => unreachable!("chunks(2) yields one or two"),
        })
        .collect()
}

/// The sibling hashes that lead leaf `index` of `leaves` to the root, bottom up: one per
/// level where the leaf's subtree has a sibling (none where it is the odd one carried up).
/// `None` when `index` is out of range.
pub fn proof<T: AsRef<[u8]>>(leaves: &[T], index: usize) -> Option<Vec<Hash>> {
    proof_of_hashes(
        leaves.iter().map(|l| leaf_hash(l.as_ref())).collect(),
        index,
    )
}

/// [`proof`] over leaves already hashed with [`leaf_hash`].
pub fn proof_of_hashes(level: Vec<Hash>, index: usize) -> Option<Vec<Hash>> {
    proofs_of_hashes(level, &[index])?.pop()
}

/// The proofs of several leaves (already hashed with [`leaf_hash`]), in the order of
/// `indices`, building the tree once. `None` when an index is out of range.
pub fn proofs_of_hashes(mut level: Vec<Hash>, indices: &[usize]) -> Option<Vec<Vec<Hash>>> {
    if indices.iter().any(|&i| i >= level.len()) {
        return None;
    }
    let mut at: Vec<usize> = indices.to_vec();
    let mut proofs = vec![Vec::new(); indices.len()];
    while level.len() > 1 {
        for (index, proof) in at.iter_mut().zip(&mut proofs) {
            if let Some(sibling) = level.get(*index ^ 1) {
                proof.push(*sibling);
            }
            *index /= 2;
        }
        level = next_level(&level);
    }
    Some(proofs)
}

/// Whether `leaf` (its hash, [`leaf_hash`]) is leaf `index` of a tree of `len` leaves
/// with root `root`, by `siblings` as [`proof`] gives them. A proof with too few or too
/// many siblings fails.
pub fn verify_proof(root: &Hash, leaf: Hash, index: usize, len: usize, siblings: &[Hash]) -> bool {
    if index >= len {
        return false;
    }
    let (mut acc, mut index, mut len) = (leaf, index, len);
    let mut next = siblings.iter();
    while len > 1 {
        if index ^ 1 < len {
            let Some(s) = next.next() else {
                return false;
            };
            acc = if index % 2 == 0 {
                node_hash(&acc, s)
            } else {
                node_hash(s, &acc)
            };
        }
        index /= 2;
        len = len.div_ceil(2);
    }
    next.next().is_none() && acc == *root
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_depend_on_every_leaf_and_order() {
        assert_eq!(merkle_root::<&[u8]>(&[]), Hash::ZERO);
        assert_eq!(merkle_root(&[b"a"]), leaf_hash(b"a"));
        let abc = merkle_root(&[b"a", b"b", b"c"]);
        assert_eq!(
            abc,
            node_hash(
                &node_hash(&leaf_hash(b"a"), &leaf_hash(b"b")),
                &leaf_hash(b"c")
            )
        );
        assert_ne!(abc, merkle_root(&[b"b", b"a", b"c"]));
        assert_ne!(abc, merkle_root(&[b"a", b"b", b"d"]));
        assert_ne!(abc, merkle_root(&[b"a", b"b"]));
    }

    #[test]
    fn every_leaf_proves_and_nothing_else_does() {
        for n in 1..=17usize {
            let leaves: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; 3]).collect();
            let root = merkle_root(&leaves);
            for i in 0..n {
                let p = proof(&leaves, i).expect("in range");
                assert!(
                    verify_proof(&root, leaf_hash(&leaves[i]), i, n, &p),
                    "{n} {i}"
                );
                let other = leaf_hash(b"other");
                assert!(!verify_proof(&root, other, i, n, &p));
                if n > 1 {
                    assert!(!verify_proof(
                        &root,
                        leaf_hash(&leaves[i]),
                        (i + 1) % n,
                        n,
                        &p
                    ));
                    assert!(!verify_proof(&root, leaf_hash(&leaves[i]), i, n, &p[1..]));
                }
                let mut longer = p.clone();
                longer.push(root);
                assert!(!verify_proof(&root, leaf_hash(&leaves[i]), i, n, &longer));
                assert!(!verify_proof(&root, leaf_hash(&leaves[i]), n, n, &p));
            }
            assert!(proof(&leaves, n).is_none());
            let hashes: Vec<Hash> = leaves.iter().map(|l| leaf_hash(l)).collect();
            let all: Vec<usize> = (0..n).rev().collect();
            let together = proofs_of_hashes(hashes, &all).expect("in range");
            for (i, p) in all.iter().zip(&together) {
                assert_eq!(Some(p.clone()), proof(&leaves, *i));
            }
        }
    }
}

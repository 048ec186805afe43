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
    let mut level: Vec<Hash> = leaves.iter().map(|l| leaf_hash(l.as_ref())).collect();
    if level.is_empty() {
        return Hash::ZERO;
    }
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [l, r] => node_hash(l, r),
                [one] => *one,
                _ => unreachable!("chunks(2) yields one or two"),
            })
            .collect();
    }
    level[0]
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
}

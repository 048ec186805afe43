//! Payloads of the proof chain (P): the hidden pool's commitment, Proof-of-Learning verdicts,
//! the reveals of the items each verdict used, and head migrations (rollbacks) of the
//! parameter chain. The chain checks their structure;
//! `blyan-pol` gives them meaning and recomputes verdicts.

use blyan_primitives::{Address, ExpertId, Hash, Signature, SignatureError, codec};
use borsh::{BorshDeserialize, BorshSerialize};
use serde::Serialize;

use crate::BlockError;

/// What a contributor signs to submit a candidate: SHA-256 of `blyan-submission-v1`,
/// the network (its spec block's hash), the candidate (the hash of the expert-block payload it
/// becomes) and the parent version it was trained from. The signature is EIP-191
/// `personal_sign` of these 32 bytes, as for blocks; the network in it keeps a submission to
/// one network from being replayed on another.
pub fn submission_digest(network: &Hash, candidate: &Hash, parent: &Hash) -> Hash {
    let mut bytes = Vec::with_capacity(19 + 3 * 32);
    bytes.extend_from_slice(b"blyan-submission-v1");
    bytes.extend_from_slice(&network.0);
    bytes.extend_from_slice(&candidate.0);
    bytes.extend_from_slice(&parent.0);
    Hash::of(&bytes)
}

/// Most items one verdict may draw.
pub const VERDICT_ITEMS_MAX: usize = 65_536;

/// Most stages one sequential evaluation may take.
pub const VERDICT_STAGES_MAX: u8 = 4;

/// Longest free-text field (a source description or a reason code) in bytes.
pub const PROOF_TEXT_MAX: usize = 256;

/// The hidden pool a validator evaluates on, published before any submission.
///
/// Which documents are hidden is decided by a secret the validator made (`secret_hash` is
/// SHA-256 of `blyan-pool-secret-v1` and the secret), and each item is committed with a salt
/// derived from it: leaf `i` is the Merkle leaf of `salt_i ‖ item_i`. The root therefore says
/// nothing about the items, even to someone who holds every candidate text; a [`Reveal`]
/// opens the items a verdict used.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, BorshSerialize, BorshDeserialize)]
pub struct PoolCommit {
    /// Merkle root of the salted items, in pool order.
    pub root: Hash,
    /// Items in the pool.
    pub items: u32,
    /// Tokens per item (an item of `n` tokens scores `n − 1` predictions).
    pub item_tokens: u32,
    /// Where the items came from, for people.
    pub source: String,
    /// SHA-256 of `blyan-pool-secret-v1` ‖ the secret that keyed the split and the salts.
    pub secret_hash: Hash,
    /// Merkle root of the public validation items (unsalted), against which a candidate's
    /// hidden gain is compared (the contamination check).
    pub validation_root: Hash,
    /// Validation items.
    pub validation_items: u32,
}

/// One pool item opened: its index, salt (zero for a public validation item), canonical bytes
/// and the Merkle siblings that lead it to the committed root.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, BorshSerialize, BorshDeserialize)]
pub struct RevealedItem {
    /// Index in its pool.
    pub index: u32,
    /// The item's salt; [`Hash::ZERO`] for a validation item.
    pub salt: Hash,
    /// The item's canonical bytes (token ids, little-endian u32).
    pub bytes: Vec<u8>,
    /// Merkle siblings, bottom up.
    pub proof: Vec<Hash>,
}

/// The items a verdict used, opened once the verdict is on chain so that anyone can redo
/// the evaluation from the chain alone: the hidden items it drew (now retired) and the
/// validation items of its contamination check.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, BorshSerialize, BorshDeserialize)]
pub struct Reveal {
    /// The verdict block.
    pub verdict: Hash,
    /// Its hidden items, ascending by index.
    pub hidden: Vec<RevealedItem>,
    /// Its validation items, ascending by index.
    pub validation: Vec<RevealedItem>,
}

/// Most items a pool (hidden or validation) may commit to: 2^20, 64 M tokens of 64-token
/// items. Whoever checks a verdict holds a slot per item and draws from their indices.
pub const POOL_ITEMS_MAX: u32 = 1 << 20;

/// Largest item in a reveal, bytes (4,096 tokens).
pub const REVEAL_ITEM_LEN_MAX: usize = 16 * 1024;
/// Most Merkle siblings in one item's proof.
pub const REVEAL_PROOF_MAX: usize = 32;
/// Largest reveal payload, bytes (a four-stage verdict's reveal is about 200 KB).
pub const REVEAL_LEN_MAX: usize = 32 * 1024 * 1024;

/// How a submission was judged.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Debug,
    Serialize,
    serde::Deserialize,
    BorshSerialize,
    BorshDeserialize,
)]
#[borsh(use_discriminant = true)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum PolMode {
    /// The learning test alone.
    Pol = 0,
    /// The learning test plus a proof-of-work stamp on the submission.
    Hybrid = 1,
    /// No learning test and no rewards (bootstrapping).
    Pow = 2,
}

impl PolMode {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            PolMode::Pol => "pol",
            PolMode::Hybrid => "hybrid",
            PolMode::Pow => "pow",
        }
    }
}

impl std::str::FromStr for PolMode {
    type Err = String;
    fn from_str(s: &str) -> Result<PolMode, String> {
        match s {
            "pol" => Ok(PolMode::Pol),
            "hybrid" => Ok(PolMode::Hybrid),
            "pow" => Ok(PolMode::Pow),
            _ => Err(format!("unknown mode {s:?}; expected pol, hybrid or pow")),
        }
    }
}

/// Everything needed to recompute one Proof-of-Learning verdict.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, BorshSerialize, BorshDeserialize)]
pub struct Verdict {
    /// The expert the candidate is a version of.
    pub expert: ExpertId,
    /// SHA-256 of the candidate's expert-block payload.
    pub candidate: Hash,
    /// The expert block the candidate was trained from.
    pub parent: Hash,
    /// The parameter chain's head when it was judged: with the migrations up to it, this
    /// fixes every other group's version, so the model evaluated is known exactly.
    pub param_head: Hash,
    /// Who submitted it and is paid for it: the address its submission signature recovers.
    pub contributor: Address,
    /// The contributor's signature of [`submission_digest`] (network, candidate, parent),
    /// so anyone can check from the chain who submitted it.
    pub contributor_signature: Signature,
    /// The mode it was judged in.
    pub mode: PolMode,
    /// Proof-of-work nonce (hybrid mode; zero otherwise).
    pub pow_nonce: u64,
    /// The verdict this one replicates, if it is a replication.
    pub replicates: Option<Hash>,
    /// Root of the pool the items came from.
    pub pool_root: Hash,
    /// Seed of the draw.
    pub seed: Hash,
    /// Pool indices used (the stages looked at), ascending; retired by this block.
    pub items: Vec<u32>,
    /// Evaluator version.
    pub evaluator_version: u32,
    /// Significance level of the test, percent (1 or 5).
    pub alpha_percent: u8,
    /// Minimum mean gain per scored position of the counted items, micro-nats.
    pub min_effect_micro: i64,
    /// Largest mixture regression tolerated, basis points of the parent's loss.
    pub mixture_tolerance_bps: u32,
    /// Items per stage of the sequential evaluation (it looks at the evidence after each).
    pub stage_items: u32,
    /// Most stages the evaluation could take (1 to [`VERDICT_STAGES_MAX`]); each look is
    /// tested at α divided by this.
    pub stages: u8,
    /// Items that route at least one position to the expert (the paired test's n).
    pub n: u64,
    /// Σ d over those items, micro-nats (d = parent − child, each item's loss summed over
    /// all its positions).
    pub sum: i128,
    /// Σ d², micro-nats².
    pub sum_sq: i128,
    /// Σ of the parent's loss over those items, micro-nats.
    pub parent_sum: i128,
    /// The whole mixture's loss over every drawn item, parent then child, micro-nats.
    pub mixture_parent: i128,
    /// As above with the candidate swapped in.
    pub mixture_child: i128,
    /// The decision.
    pub accepted: bool,
    /// Stable reason code (`accepted`, `not_significant`, …).
    pub reason: String,
    /// The whole mixture's gain relative to its loss with the parent, basis points (0 if
    /// none).
    pub gain_bps: u32,
    /// Nano-BLY paid to the contributor by this block (half the learning reward at
    /// acceptance; the held half when a replication passes).
    pub reward: u64,
    /// Nano-BLY held in the vesting account until this verdict is replicated (acceptances
    /// only).
    pub vesting: u64,
    /// Nano-BLY minted to the validator by this block.
    pub validator_reward: u64,
    /// The contamination check's margin: a candidate is refused as `suspected_leak` when its
    /// gain per position on the hidden items exceeds that on the validation items by more
    /// than this (micro-nats) and significantly.
    pub leak_margin_micro: i64,
    /// Validation items the check scored, ascending (empty when it did not run: it runs only
    /// for a candidate the learning test accepts).
    pub validation_items: Vec<u32>,
    /// Validation items that route a position to the expert.
    pub validation_n: u64,
    /// Σ d over those, micro-nats.
    pub validation_sum: i128,
    /// Σ d², micro-nats².
    pub validation_sum_sq: i128,
}

/// A change of the version an expert serves by default, recorded on the parameter chain.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, BorshSerialize, BorshDeserialize)]
pub struct Migration {
    /// The tensor group (expert) whose head moves.
    pub group: String,
    /// The version it served before.
    pub from: Hash,
    /// The version it serves from now on (an existing version of the group).
    pub to: Hash,
    /// Why, for people.
    pub reason: String,
}

fn malformed(reason: String) -> BlockError {
    BlockError::MalformedPayload { reason }
}

fn check_text(field: &str, s: &str) -> Result<(), BlockError> {
    if s.len() > PROOF_TEXT_MAX {
        return Err(malformed(format!(
            "{field} is {} bytes; the limit is {PROOF_TEXT_MAX}",
            s.len()
        )));
    }
    Ok(())
}

impl PoolCommit {
    /// The canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes and checks a pool commitment.
    pub fn decode(bytes: &[u8]) -> Result<PoolCommit, BlockError> {
        let c: PoolCommit = codec::decode(bytes, 4096).map_err(|e| malformed(e.to_string()))?;
        if c.items > POOL_ITEMS_MAX || c.validation_items > POOL_ITEMS_MAX {
            return Err(malformed(format!(
                "{} hidden and {} validation items; a pool holds at most {POOL_ITEMS_MAX}",
                c.items, c.validation_items
            )));
        }
        if c.items == 0 || c.item_tokens < 2 {
            return Err(malformed(format!(
                "a pool needs items of at least 2 tokens; this one has {} items of {}",
                c.items, c.item_tokens
            )));
        }
        check_text("source", &c.source)?;
        Ok(c)
    }

    /// SHA-256 of `blyan-pool-secret-v1` ‖ `secret`: what a commitment records of its secret.
    pub fn secret_hash_of(secret: &[u8; 32]) -> Hash {
        let mut bytes = Vec::with_capacity(20 + 32);
        bytes.extend_from_slice(b"blyan-pool-secret-v1");
        bytes.extend_from_slice(secret);
        Hash::of(&bytes)
    }
}

impl Reveal {
    /// The canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes and checks a reveal's structure: indices ascending and distinct in each list,
    /// items and proofs within bounds, validation items unsalted. Whether the items are the
    /// verdict's and open the committed roots is the Proof-of-Learning record's to check.
    pub fn decode(bytes: &[u8]) -> Result<Reveal, BlockError> {
        let r: Reveal =
            codec::decode(bytes, REVEAL_LEN_MAX).map_err(|e| malformed(e.to_string()))?;
        for (name, list) in [("hidden", &r.hidden), ("validation", &r.validation)] {
            if list.len() > VERDICT_ITEMS_MAX {
                return Err(malformed(format!(
                    "{} {name} items; the limit is {VERDICT_ITEMS_MAX}",
                    list.len()
                )));
            }
            if list.windows(2).any(|w| w[0].index >= w[1].index) {
                return Err(malformed(format!(
                    "{name} items must be ascending and distinct"
                )));
            }
            if let Some(item) = list
                .iter()
                .find(|i| i.bytes.len() > REVEAL_ITEM_LEN_MAX || i.proof.len() > REVEAL_PROOF_MAX)
            {
                return Err(malformed(format!(
                    "{name} item {} has {} bytes and {} siblings; the limits are \
                     {REVEAL_ITEM_LEN_MAX} and {REVEAL_PROOF_MAX}",
                    item.index,
                    item.bytes.len(),
                    item.proof.len()
                )));
            }
        }
        if r.validation.iter().any(|i| !i.salt.is_zero()) {
            return Err(malformed("validation items are public and unsalted".into()));
        }
        Ok(r)
    }
}

impl Verdict {
    /// The address that signed this verdict's submission on `network`.
    pub fn submitter(&self, network: &Hash) -> Result<Address, SignatureError> {
        self.contributor_signature
            .recover(&submission_digest(network, &self.candidate, &self.parent).0)
    }

    /// The canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes and checks a verdict's structure: items ascending and distinct, counts that
    /// fit, a known significance level, text within bounds.
    pub fn decode(bytes: &[u8]) -> Result<Verdict, BlockError> {
        let v: Verdict = codec::decode(bytes, 1024 + VERDICT_ITEMS_MAX * 4)
            .map_err(|e| malformed(e.to_string()))?;
        if v.items.len() > VERDICT_ITEMS_MAX {
            return Err(malformed(format!(
                "{} items; the limit is {VERDICT_ITEMS_MAX}",
                v.items.len()
            )));
        }
        if v.items.windows(2).any(|w| w[0] >= w[1]) {
            return Err(malformed("items must be ascending and distinct".into()));
        }
        if v.n > v.items.len() as u64 {
            return Err(malformed(format!(
                "n = {} exceeds the {} items drawn",
                v.n,
                v.items.len()
            )));
        }
        if !matches!(v.alpha_percent, 1 | 5) {
            return Err(malformed(format!(
                "alpha must be 1% or 5%, not {}%",
                v.alpha_percent
            )));
        }
        if !(1..=VERDICT_STAGES_MAX).contains(&v.stages) || v.stage_items == 0 {
            return Err(malformed(format!(
                "{} stages of {} items: stages must be 1 to {VERDICT_STAGES_MAX} and a stage \
                 at least one item",
                v.stages, v.stage_items
            )));
        }
        if v.items.len() as u64 > u64::from(v.stages) * u64::from(v.stage_items) {
            return Err(malformed(format!(
                "{} items exceed {} stages of {}",
                v.items.len(),
                v.stages,
                v.stage_items
            )));
        }
        if v.validation_items.len() > VERDICT_ITEMS_MAX
            || v.validation_items.windows(2).any(|w| w[0] >= w[1])
            || v.validation_n > v.validation_items.len() as u64
        {
            return Err(malformed(
                "validation items must be ascending, distinct and at least n".into(),
            ));
        }
        if v.sum_sq < 0 || v.min_effect_micro < 0 || v.validation_sum_sq < 0 {
            return Err(malformed(
                "negative sum of squares or minimum effect".into(),
            ));
        }
        check_text("reason", &v.reason)?;
        Ok(v)
    }
}

impl Migration {
    /// The canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes and checks a migration's structure.
    pub fn decode(bytes: &[u8]) -> Result<Migration, BlockError> {
        let m: Migration = codec::decode(bytes, 2048).map_err(|e| malformed(e.to_string()))?;
        if m.from == m.to {
            return Err(malformed("a migration must change the head".into()));
        }
        check_text("group", &m.group)?;
        check_text("reason", &m.reason)?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict() -> Verdict {
        Verdict {
            expert: ExpertId::new(1, 2),
            candidate: Hash::of(b"candidate"),
            parent: Hash::of(b"parent"),
            param_head: Hash::of(b"head"),
            contributor: Address::ZERO,
            contributor_signature: Signature([0; 65]),
            mode: PolMode::Pol,
            pow_nonce: 0,
            replicates: None,
            pool_root: Hash::of(b"pool"),
            seed: Hash::of(b"seed"),
            items: (0..128).map(|i| i * 3).collect(),
            evaluator_version: 3,
            alpha_percent: 1,
            min_effect_micro: 1_000,
            mixture_tolerance_bps: 10,
            stage_items: 64,
            stages: 4,
            n: 120,
            sum: 5_000_000,
            sum_sq: 900_000_000_000,
            parent_sum: 1 << 40,
            mixture_parent: 1 << 41,
            mixture_child: (1 << 41) - 9,
            accepted: true,
            reason: "accepted".into(),
            gain_bps: 3,
            reward: 7,
            vesting: 7,
            validator_reward: 1,
            leak_margin_micro: 20_000,
            validation_items: (0..64).collect(),
            validation_n: 60,
            validation_sum: 4_000_000,
            validation_sum_sq: 800_000_000_000,
        }
    }

    #[test]
    fn a_verdict_round_trips_and_malformed_ones_are_refused() {
        let v = verdict();
        assert_eq!(Verdict::decode(&v.encode()).unwrap(), v);
        let bad = [
            Verdict {
                items: vec![3, 1],
                n: 2,
                ..verdict()
            },
            Verdict {
                n: 129,
                ..verdict()
            },
            Verdict {
                alpha_percent: 2,
                ..verdict()
            },
            Verdict {
                stages: 0,
                ..verdict()
            },
            Verdict {
                stages: VERDICT_STAGES_MAX + 1,
                ..verdict()
            },
            Verdict {
                stage_items: 0,
                ..verdict()
            },
            Verdict {
                stage_items: 31,
                ..verdict()
            },
            Verdict {
                min_effect_micro: -1,
                ..verdict()
            },
            Verdict {
                validation_items: vec![2, 2],
                validation_n: 0,
                ..verdict()
            },
            Verdict {
                validation_n: 65,
                ..verdict()
            },
            Verdict {
                reason: "x".repeat(PROOF_TEXT_MAX + 1),
                ..verdict()
            },
        ];
        for v in bad {
            assert!(
                matches!(
                    Verdict::decode(&v.encode()),
                    Err(BlockError::MalformedPayload { .. })
                ),
                "{v:?}"
            );
        }
        assert!(Verdict::decode(&v.encode()[..40]).is_err(), "truncated");
    }

    fn reveal() -> Reveal {
        let item = |index: u32, salt: Hash| RevealedItem {
            index,
            salt,
            bytes: vec![index as u8; 256],
            proof: vec![Hash::of(b"sibling"); 11],
        };
        Reveal {
            verdict: Hash::of(b"verdict"),
            hidden: (0..64).map(|i| item(i * 5, Hash::of(&[i as u8]))).collect(),
            validation: (0..8).map(|i| item(i, Hash::ZERO)).collect(),
        }
    }

    #[test]
    fn a_pool_commitment_is_bounded() {
        let commit = PoolCommit {
            root: Hash::of(b"root"),
            items: 1_600,
            item_tokens: 64,
            source: "test".into(),
            secret_hash: PoolCommit::secret_hash_of(&[1; 32]),
            validation_root: Hash::of(b"validation"),
            validation_items: 300,
        };
        assert_eq!(PoolCommit::decode(&commit.encode()).unwrap(), commit);
        for bad in [
            PoolCommit {
                items: POOL_ITEMS_MAX + 1,
                ..commit.clone()
            },
            PoolCommit {
                validation_items: u32::MAX,
                ..commit.clone()
            },
            PoolCommit {
                items: 0,
                ..commit.clone()
            },
        ] {
            assert!(PoolCommit::decode(&bad.encode()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_reveal_round_trips_and_malformed_ones_are_refused() {
        let r = reveal();
        assert_eq!(Reveal::decode(&r.encode()).unwrap(), r);
        let mut unordered = reveal();
        unordered.hidden.swap(0, 1);
        let mut salted = reveal();
        salted.validation[0].salt = Hash::of(b"salt");
        let mut long = reveal();
        long.hidden[3].proof = vec![Hash::ZERO; REVEAL_PROOF_MAX + 1];
        let mut big = reveal();
        big.validation[1].bytes = vec![0; REVEAL_ITEM_LEN_MAX + 1];
        for bad in [unordered, salted, long, big] {
            assert!(
                matches!(
                    Reveal::decode(&bad.encode()),
                    Err(BlockError::MalformedPayload { .. })
                ),
                "{bad:?}"
            );
        }
        let bytes = r.encode();
        assert!(
            Reveal::decode(&bytes[..bytes.len() - 1]).is_err(),
            "truncated"
        );
    }
}

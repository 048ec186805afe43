//! Payloads of the proof chain (P): the hidden pool's commitment, Proof-of-Learning verdicts,
//! and head migrations (rollbacks) of the parameter chain. The chain checks their structure;
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
#[derive(Clone, PartialEq, Eq, Debug, Serialize, BorshSerialize, BorshDeserialize)]
pub struct PoolCommit {
    /// Merkle root of the items' canonical bytes, in pool order.
    pub root: Hash,
    /// Items in the pool.
    pub items: u32,
    /// Tokens per item (an item of `n` tokens scores `n − 1` predictions).
    pub item_tokens: u32,
    /// Where the items came from, for people.
    pub source: String,
}

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
        if c.items == 0 || c.item_tokens < 2 {
            return Err(malformed(format!(
                "a pool needs items of at least 2 tokens; this one has {} items of {}",
                c.items, c.item_tokens
            )));
        }
        check_text("source", &c.source)?;
        Ok(c)
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
        if v.sum_sq < 0 || v.min_effect_micro < 0 {
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
}

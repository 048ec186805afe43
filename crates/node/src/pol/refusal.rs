//! Why a submission or replication is refused before a verdict: numbered, stable codes.

use super::*;

/// Why a submission or replication is refused before a verdict. Discriminants and codes are
/// stable: clients match on them, and a new refusal gets the next number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u16)]
pub enum PolRefusal {
    /// The file is not a candidate (format, metadata, tensor names or types).
    MalformedCandidate = 1,
    /// A tensor holds NaN or ±∞.
    NonFinite = 2,
    /// A tensor's shape is not the spec's.
    WrongShapes = 3,
    /// The expert is not in the model.
    UnknownExpert = 4,
    /// This payload was judged or stored before.
    DuplicatePayload = 5,
    /// The candidate equals the head it claims to improve.
    HeadCopy = 6,
    /// The parent is no longer (or never was) the expert's head.
    StaleParent = 7,
    /// The change from the parent exceeds the configured bound (model replacement).
    DeltaTooLarge = 8,
    /// Hybrid mode and no proof-of-work nonce.
    PowMissing = 9,
    /// The nonce does not meet the difficulty.
    PowInvalid = 10,
    /// No hidden pool is committed on this node.
    NoPool = 11,
    /// Too few unused items remain for a sample.
    PoolExhausted = 12,
    /// The verdict cannot be replicated (not accepted, a replication, pow mode, or done).
    NotReplicable = 13,
    /// The candidate's bytes are not held here.
    CandidateUnavailable = 14,
    /// The submission signature is malformed, malleable or does not verify.
    BadSignature = 15,
    /// The submission names another contributor than the one who signed it.
    WrongSigner = 16,
}

impl PolRefusal {
    /// Every refusal, in number order.
    pub const ALL: [PolRefusal; 16] = [
        PolRefusal::MalformedCandidate,
        PolRefusal::NonFinite,
        PolRefusal::WrongShapes,
        PolRefusal::UnknownExpert,
        PolRefusal::DuplicatePayload,
        PolRefusal::HeadCopy,
        PolRefusal::StaleParent,
        PolRefusal::DeltaTooLarge,
        PolRefusal::PowMissing,
        PolRefusal::PowInvalid,
        PolRefusal::NoPool,
        PolRefusal::PoolExhausted,
        PolRefusal::NotReplicable,
        PolRefusal::CandidateUnavailable,
        PolRefusal::BadSignature,
        PolRefusal::WrongSigner,
    ];

    /// The stable number.
    pub fn number(self) -> u16 {
        self as u16
    }

    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            PolRefusal::MalformedCandidate => "malformed_candidate",
            PolRefusal::NonFinite => "non_finite",
            PolRefusal::WrongShapes => "wrong_shapes",
            PolRefusal::UnknownExpert => "unknown_expert",
            PolRefusal::DuplicatePayload => "duplicate_payload",
            PolRefusal::HeadCopy => "head_copy",
            PolRefusal::StaleParent => "stale_parent",
            PolRefusal::DeltaTooLarge => "delta_too_large",
            PolRefusal::PowMissing => "pow_missing",
            PolRefusal::PowInvalid => "pow_invalid",
            PolRefusal::NoPool => "no_pool",
            PolRefusal::PoolExhausted => "pool_exhausted",
            PolRefusal::NotReplicable => "not_replicable",
            PolRefusal::CandidateUnavailable => "candidate_unavailable",
            PolRefusal::BadSignature => "bad_signature",
            PolRefusal::WrongSigner => "wrong_signer",
        }
    }

    /// The HTTP status it maps to.
    pub fn http_status(self) -> u16 {
        // Every refusal is placed here on purpose: no default arm.
        match self {
            PolRefusal::DuplicatePayload | PolRefusal::HeadCopy | PolRefusal::StaleParent => 409,
            PolRefusal::NoPool | PolRefusal::PoolExhausted => 503,
            PolRefusal::CandidateUnavailable => 404,
            PolRefusal::BadSignature | PolRefusal::WrongSigner => 401,
            PolRefusal::MalformedCandidate
            | PolRefusal::NonFinite
            | PolRefusal::WrongShapes
            | PolRefusal::UnknownExpert
            | PolRefusal::DeltaTooLarge
            | PolRefusal::PowMissing
            | PolRefusal::PowInvalid
            | PolRefusal::NotReplicable => 422,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn refusals_have_unique_numbers_and_codes_and_list_all() {
        let numbers: BTreeSet<u16> = PolRefusal::ALL.iter().map(|r| r.number()).collect();
        let codes: BTreeSet<&str> = PolRefusal::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(numbers.len(), PolRefusal::ALL.len());
        assert_eq!(codes.len(), PolRefusal::ALL.len());
        // Numbered from 1 without gaps, in the order of `ALL`.
        for (i, r) in PolRefusal::ALL.iter().enumerate() {
            assert_eq!(usize::from(r.number()), i + 1, "{r:?}");
            let json = serde_json::to_value(r).expect("json");
            assert_eq!(json, r.code(), "the serialized name is the code");
            assert!(matches!(r.http_status(), 401 | 404 | 409 | 422 | 503));
        }
    }
}

//! Admission of a submitted candidate in two typed steps: checked alone
//! ([`CheckedCandidate`]), then admitted against the chain ([`AdmittedCandidate`]); only an
//! admitted candidate is evaluated.

use super::*;

/// A submission as the API and CLI make it.
#[derive(Clone, Debug)]
pub struct Submission {
    /// The candidate file's bytes.
    pub candidate: Vec<u8>,
    /// The contributor's signature of the submission digest
    /// ([`blyan_chain::submission_digest`] of the network, the candidate's id and its parent):
    /// the signer is who is paid.
    pub signature: Signature,
    /// The contributor the caller names, if any: refused unless it is the signer.
    pub contributor: Option<Address>,
    /// Proof-of-work nonce (hybrid mode).
    pub pow_nonce: Option<u64>,
    /// The account that pays the submission fee: a caller from another machine. `None` for
    /// the node's own operator (the CLI, local requests), who pays nothing.
    pub payer: Option<Address>,
}

/// Signs the candidate file `candidate` for submission to `network` with `key`: what `blyan
/// submit` does with the local key. The signature is over the network, the candidate's id and
/// the parent the file names.
pub fn sign_submission(
    key: &SigningKey,
    network: &Hash,
    candidate: &[u8],
) -> Result<Signature, NodeError> {
    let (id, parent) = id_and_parent(candidate)?;
    let digest = blyan_chain::submission_digest(network, &id, &parent);
    Ok(Signature::sign(key, &digest.0))
}

/// A candidate file's id (the hash of the expert-block payload it becomes) and the parent it
/// names.
fn id_and_parent(candidate: &[u8]) -> Result<(Hash, Hash), NodeError> {
    let c = Candidate::decode(candidate)
        .map_err(|e| refuse(PolRefusal::MalformedCandidate, e.to_string()))?;
    Ok((Hash::of(&candidate_payload(&c)?.0), c.parent))
}

/// The expert-block payload of a candidate: its three tensors in f32, in spec order.
fn candidate_payload(c: &Candidate) -> Result<(Vec<u8>, Vec<TensorDesc>), NodeError> {
    let descs: Vec<TensorDesc> = c
        .tensors
        .iter()
        .map(|(name, shape, _)| TensorDesc {
            name: name.clone(),
            dtype: DType::F32,
            shape: shape.iter().map(|&d| d as u64).collect(),
        })
        .collect();
    let bytes: Vec<Vec<u8>> = c
        .tensors
        .iter()
        .map(|(_, _, v)| blyan_tensor::f32_to_bytes(v))
        .collect();
    let refs: Vec<(TensorDesc, &[u8])> = descs
        .iter()
        .cloned()
        .zip(bytes.iter().map(Vec::as_slice))
        .collect();
    let payload = blyan_tensor::encode_tensors(&refs)
        .map_err(|e| refuse(PolRefusal::MalformedCandidate, e.to_string()))?;
    let mut sorted = descs;
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((payload, sorted))
}

fn weights_of(c: &Candidate) -> Result<ExpertWeights, NodeError> {
    let tensors: Vec<(String, Vec<f32>)> = c
        .tensors
        .iter()
        .map(|(n, _, v)| (n.clone(), v.clone()))
        .collect();
    expert_weights(&tensors).map_err(|e| refuse(PolRefusal::MalformedCandidate, e))
}

/// The id of a candidate file: the hash of the expert-block payload it becomes (what the
/// proof-of-work stamp and the verdict name).
pub fn candidate_id(candidate: &[u8]) -> Result<Hash, NodeError> {
    Ok(id_and_parent(candidate)?.0)
}

/// Finds the proof-of-work nonce for submitting candidate file `candidate` as `contributor`
/// at difficulty `bits` (about 2^`bits` hashes): what `blyan submit` does in pow and hybrid
/// modes.
pub fn solve_pow(candidate: &[u8], contributor: &Address, bits: u32) -> Result<u64, NodeError> {
    let (id, parent) = id_and_parent(candidate)?;
    Ok(blyan_pol::pow_solve(&id, &parent, contributor, bits))
}

/// A candidate checked without any state: it decodes, every value is finite, its expert is
/// in the model and its tensors have the spec's shapes. The first step of admission.
#[derive(Debug)]
pub(crate) struct CheckedCandidate {
    expert: ExpertId,
    /// The version it says it improves on.
    parent: Hash,
    child: ExpertWeights,
    /// The expert-block payload it would become, and its tensors.
    payload: Vec<u8>,
    descs: Vec<TensorDesc>,
    /// The payload's hash: the candidate's identity.
    id: Hash,
}

/// The proof of work `pow` and `hybrid` modes ask of a submission (the nonce to record; 0 in
/// `pol` mode, which asks none). Checked first, before the chain is read: a submission
/// without its work costs the node one hash.
pub(crate) fn check_pow(
    checked: &CheckedCandidate,
    contributor: &Address,
    settings: &PolSettings,
    pow_nonce: Option<u64>,
) -> Result<u64, NodeError> {
    if settings.mode == PolMode::Pol {
        return Ok(0);
    }
    let nonce = pow_nonce.ok_or_else(|| {
        refuse(
            PolRefusal::PowMissing,
            format!(
                "{} mode needs a proof-of-work nonce: SHA-256(candidate ‖ parent ‖ contributor ‖ \
                 nonce) with {} leading zero bits",
                settings.mode.as_str(),
                settings.pow_bits
            ),
        )
    })?;
    if !blyan_pol::pow_ok(
        &checked.id,
        &checked.parent,
        contributor,
        nonce,
        settings.pow_bits,
    ) {
        return Err(refuse(
            PolRefusal::PowInvalid,
            format!(
                "the stamp has fewer than {} leading zero bits",
                settings.pow_bits
            ),
        ));
    }
    Ok(nonce)
}

impl CheckedCandidate {
    /// The address that signed this candidate's submission to `network`.
    pub(crate) fn signer(
        &self,
        network: &Hash,
        signature: &Signature,
    ) -> Result<Address, NodeError> {
        let digest = blyan_chain::submission_digest(network, &self.id, &self.parent);
        signature.recover(&digest.0).map_err(|e| {
            refuse(
                PolRefusal::BadSignature,
                format!("the submission signature ({}): {e}", e.code()),
            )
        })
    }

    /// Checks `bytes` (a candidate file) against `spec`.
    pub(crate) fn check(
        bytes: &[u8],
        spec: &blyan_chain::spec::ModelSpec,
    ) -> Result<CheckedCandidate, NodeError> {
        let candidate = Candidate::decode(bytes).map_err(|e| match e {
            TrainError::NonFiniteCandidate { .. } => refuse(PolRefusal::NonFinite, e.to_string()),
            e => refuse(PolRefusal::MalformedCandidate, e.to_string()),
        })?;
        if candidate.expert.layer >= spec.num_hidden_layers
            || candidate.expert.expert >= spec.num_local_experts
        {
            return Err(refuse(
                PolRefusal::UnknownExpert,
                format!("expert {} is not in the model", candidate.expert),
            ));
        }
        candidate
            .check_shapes(spec)
            .map_err(|e| refuse(PolRefusal::WrongShapes, e.to_string()))?;
        let child = weights_of(&candidate)?;
        let (payload, descs) = candidate_payload(&candidate)?;
        Ok(CheckedCandidate {
            expert: candidate.expert,
            parent: candidate.parent,
            child,
            id: Hash::of(&payload),
            payload,
            descs,
        })
    }
}

/// A checked candidate admitted against the chain and chain P as they are under the PoL
/// lock: it builds on the expert's head, is not a copy of it, was never submitted or stored
/// before, changes the parent by no more than the bound, and carries the proof of work hybrid
/// mode asks for. Only an admitted candidate is evaluated.
#[derive(Debug)]
pub(crate) struct AdmittedCandidate {
    checked: CheckedCandidate,
    /// The expert's head, which the candidate improves on.
    head: Hash,
    pow_nonce: u64,
    contributor: Address,
}

impl AdmittedCandidate {
    /// The expert it is a version of.
    pub(crate) fn expert(&self) -> ExpertId {
        self.checked.expert
    }

    /// Its weights.
    pub(crate) fn child(&self) -> &ExpertWeights {
        &self.checked.child
    }

    /// Its payload hash.
    pub(crate) fn id(&self) -> Hash {
        self.checked.id
    }

    /// The head it improves on.
    pub(crate) fn head(&self) -> Hash {
        self.head
    }

    /// The proof-of-work nonce (0 outside hybrid mode).
    pub(crate) fn pow_nonce(&self) -> u64 {
        self.pow_nonce
    }

    /// Who submitted it.
    pub(crate) fn contributor(&self) -> Address {
        self.contributor
    }

    /// The expert-block payload it becomes, and its tensors.
    pub(crate) fn into_block_payload(self) -> (Vec<u8>, Vec<TensorDesc>) {
        (self.checked.payload, self.checked.descs)
    }

    /// Admits `checked` from `contributor`, whose proof of work [`check_pow`] accepted; a
    /// refusal writes nothing and spends no item.
    pub(crate) fn admit(
        checked: CheckedCandidate,
        store: &Store,
        record: &PolRecord,
        settings: &PolSettings,
        contributor: Address,
        pow_nonce: u64,
    ) -> Result<AdmittedCandidate, NodeError> {
        let (expert, id) = (checked.expert, checked.id);
        let parent_claimed = checked.parent;
        let head = store.expert_head(expert)?.ok_or_else(|| {
            refuse(
                PolRefusal::UnknownExpert,
                format!("expert {expert} has no version"),
            )
        })?;
        if parent_claimed != head {
            let known = store.expert_versions(expert)?.contains(&parent_claimed);
            return Err(refuse(
                PolRefusal::StaleParent,
                if known {
                    format!(
                        "the candidate builds on {parent_claimed}, but expert {expert} is now at {head}; retrain from the head"
                    )
                } else {
                    format!(
                        "{parent_claimed} is not a version of expert {expert} (its head is {head})"
                    )
                },
            ));
        }
        let parent = expert_weights(&block_tensors(store, &head).map_err(snapshot_err)?)
            .map_err(NodeError::Internal)?;
        if parent == checked.child {
            return Err(refuse(
                PolRefusal::HeadCopy,
                format!("the candidate is a copy of the head {head}"),
            ));
        }
        let stored = store
            .expert_versions(expert)?
            .into_iter()
            .try_fold(false, |hit, v| {
                Ok::<bool, NodeError>(
                    hit || store.header(&v)?.is_some_and(|h| h.payload_hash == id),
                )
            })?;
        if stored || record.seen(&id) {
            return Err(refuse(
                PolRefusal::DuplicatePayload,
                format!("payload {id} was submitted before"),
            ));
        }
        let delta = blyan_pol::delta_norm_ppm(&parent, &checked.child);
        if delta > settings.delta_norm_max_ppm {
            return Err(refuse(
                PolRefusal::DeltaTooLarge,
                format!(
                    "the change is {:.1}% of the parent's norm; the limit is {:.1}%",
                    delta as f64 / 1e4,
                    settings.delta_norm_max_ppm as f64 / 1e4
                ),
            ));
        }
        Ok(AdmittedCandidate {
            checked,
            head,
            pow_nonce,
            contributor,
        })
    }
}

//! Whole-store verification: every header re-hashed, every link followed, and with
//! [`VerifyMode::Full`] every author's signature checked and every payload re-hashed.

use std::collections::HashSet;

use blyan_primitives::{Hash, Hasher, Signature};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::Serialize;

use crate::store::{BY_HEIGHT, GROUP_HEADS, HEADERS, SIGNATURES, VERSIONS, read_header};
use crate::{BlockHeader, ChainError, ChainId, Store, check_signature};

/// How much `verify` re-checks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VerifyMode {
    /// Headers, hashes of headers, links, and payload file presence and length: the cheap
    /// check a node runs at every start.
    Links,
    /// Everything in `Links`, plus every author's signature (one recovery each, ~0.2 ms) and
    /// the SHA-256 of every payload. Both were checked when each block was appended; this
    /// finds what changed on disk since.
    Full,
}

/// What a successful verification covered.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Blocks checked.
    pub blocks: u64,
    /// Blocks per chain, in chain order.
    pub chains: Vec<(ChainId, u64)>,
    /// Header bytes checked.
    pub header_bytes: u64,
    /// Author signatures recovered and checked (one per block; zero unless full).
    pub signatures_checked: u64,
    /// Seconds spent checking them.
    pub signature_seconds: f64,
    /// Payload bytes re-hashed (zero unless full).
    pub payload_bytes_hashed: u64,
}

/// The first bad block found, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyFailure {
    /// The block (or index key) at fault.
    pub block: Hash,
    /// Its chain, where known.
    pub chain: Option<ChainId>,
    /// Its height, where known.
    pub height: Option<u64>,
    /// What is wrong.
    pub cause: String,
}

impl Store {
    /// Verifies the whole store. `progress` is told the payload bytes hashed so far.
    /// The outer error is a failure to read; the inner one the first inconsistency found.
    pub fn verify(
        &self,
        mode: VerifyMode,
        mut progress: impl FnMut(u64),
    ) -> Result<Result<VerifyReport, VerifyFailure>, ChainError> {
        let txn = self.db().begin_read()?;
        let headers = txn.open_table(HEADERS)?;
        let signatures = txn.open_table(SIGNATURES)?;
        let by_height = txn.open_table(BY_HEIGHT)?;
        let mut report = VerifyReport::default();
        let mut seen = HashSet::new();
        for chain in ChainId::ALL {
            let c = chain as u8;
            let mut prev = Hash::ZERO;
            let mut count = 0u64;
            let mut last_ts = 0u64;
            for entry in by_height.range((c, 0)..=(c, u64::MAX))? {
                let (key, value) = entry?;
                let height = key.value().1;
                let hash = Hash(value.value());
                let fail = |cause: String| VerifyFailure {
                    block: hash,
                    chain: Some(chain),
                    height: Some(height),
                    cause,
                };
                let Some(bytes) = headers.get(hash.0)? else {
                    return Ok(Err(fail(
                        "indexed by height but its header is missing".into(),
                    )));
                };
                let bytes = bytes.value();
                report.header_bytes += bytes.len() as u64;
                if Hash::of(bytes) != hash {
                    return Ok(Err(fail(format!(
                        "header bytes hash to {}",
                        Hash::of(bytes)
                    ))));
                }
                let header = match BlockHeader::decode(bytes) {
                    Ok(h) => h,
                    Err(e) => return Ok(Err(fail(format!("header does not decode: {e}")))),
                };
                if header.chain != chain || header.height != height {
                    return Ok(Err(fail(format!(
                        "indexed at {chain}/{height} but header says {}/{}",
                        header.chain, header.height
                    ))));
                }
                let signature = signatures.get(hash.0)?.map(|v| Signature(v.value()));
                if mode == VerifyMode::Full {
                    let started = std::time::Instant::now();
                    let checked = check_signature(&hash, &header.author, signature.as_ref());
                    report.signature_seconds += started.elapsed().as_secs_f64();
                    match checked {
                        Ok(()) => report.signatures_checked += 1,
                        Err(e) => return Ok(Err(fail(format!("{e} ({})", e.code())))),
                    }
                } else if signature.is_none() {
                    return Ok(Err(fail(
                        "the block has no signature (missing_signature): a store written before \
                         blocks were signed must be created anew"
                            .into(),
                    )));
                }
                if height != count {
                    return Ok(Err(fail(format!(
                        "height {height} follows {count} blocks: a gap"
                    ))));
                }
                if header.prev != prev {
                    return Ok(Err(fail(format!(
                        "prev is {}, block below is {prev}",
                        header.prev
                    ))));
                }
                if header.timestamp_ms < last_ts {
                    return Ok(Err(fail("timestamp before the previous block's".into())));
                }
                for p in &header.depends_on {
                    if read_header(&headers, p)?.is_none() {
                        return Ok(Err(fail(format!("depends on {p}, which is not stored"))));
                    }
                }
                let payload = match self.map_payload(hash, &header) {
                    Ok(p) => p,
                    Err(ChainError::Corrupt { detail, .. }) => return Ok(Err(fail(detail))),
                    Err(e) => return Err(e),
                };
                if mode == VerifyMode::Full {
                    let mut hasher = Hasher::new();
                    for chunk in payload.chunks(1 << 20) {
                        hasher.update(chunk);
                        report.payload_bytes_hashed += chunk.len() as u64;
                        progress(report.payload_bytes_hashed);
                    }
                    let actual = hasher.finish();
                    if actual != header.payload_hash {
                        return Ok(Err(fail(format!(
                            "payload hashes to {actual}, header says {}",
                            header.payload_hash
                        ))));
                    }
                }
                seen.insert(hash);
                prev = hash;
                last_ts = header.timestamp_ms;
                count += 1;
            }
            report.chains.push((chain, count));
            report.blocks += count;
        }
        if headers.len()? != report.blocks {
            for entry in headers.iter()? {
                let hash = Hash(entry?.0.value());
                if !seen.contains(&hash) {
                    return Ok(Err(VerifyFailure {
                        block: hash,
                        chain: None,
                        height: None,
                        cause: "header stored but not on any chain".into(),
                    }));
                }
            }
        }
        let versions = txn.open_table(VERSIONS)?;
        let group_heads = txn.open_table(GROUP_HEADS)?;
        let mut referenced = Vec::new();
        for entry in versions.iter()? {
            referenced.push(Hash(entry?.1.value()));
        }
        for entry in group_heads.iter()? {
            referenced.push(Hash(entry?.1.value()));
        }
        if let Some(missing) = referenced.into_iter().find(|h| !seen.contains(h)) {
            return Ok(Err(VerifyFailure {
                block: missing,
                chain: None,
                height: None,
                cause: "a tensor group version refers to a block that is not stored".into(),
            }));
        }
        Ok(Ok(report))
    }
}

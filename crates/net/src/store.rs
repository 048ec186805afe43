//! What the sync engine needs from a node's blocks, and its implementation over the chain
//! store: every block from a peer goes through [`Store::append`], the same
//! [`CheckedBlock`](blyan_chain::CheckedBlock) path as a local append, after the authority
//! check below.

use std::sync::Arc;

use blyan_chain::{
    Block, BlockError, BlockHeader, ChainError, ChainId, PAYLOAD_LEN_MAX, Store, check_signature,
};
use blyan_primitives::Hash;

use crate::wire::Head;

/// Why a block from a peer was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// The block breaks a rule (hash, signature, payload, DAG, spec): whoever served it is at
    /// fault.
    #[error("invalid block: {0}")]
    Invalid(String),
    /// Its author may not write blocks on this network.
    #[error("block by {author}, who may not author blocks on this network")]
    Unauthorized {
        /// The header's author.
        author: String,
    },
    /// A valid block whose place on its chain another block already holds (an author's
    /// fork); kept out, nobody banned.
    #[error("block conflicts with the stored chain: {0}")]
    Conflict(String),
    /// The local store failed; the block was not judged.
    #[error("local store: {0}")]
    Local(String),
    /// The payload a peer sent does not match the header's length or hash: the peer is at
    /// fault, the block (whose hash commits to the right payload) is not judged.
    #[error("payload does not match its header: {0}")]
    WrongPayload(String),
    /// A peer answered a request for one block with another's header: the peer is at fault,
    /// the block asked for is not judged.
    #[error("asked for block {asked}, got the header of {got}")]
    WrongBlock {
        /// The hash asked for.
        asked: Hash,
        /// The hash of what came.
        got: Hash,
    },
}

impl ImportError {
    /// Whether the peer that served the block is to blame.
    pub fn blames_peer(&self) -> bool {
        matches!(
            self,
            ImportError::Invalid(_)
                | ImportError::Unauthorized { .. }
                | ImportError::WrongBlock { .. }
                | ImportError::WrongPayload(_)
        )
    }

    /// Whether the block itself is invalid, whoever serves it (its hash commits to what was
    /// judged), so that it is never asked for again.
    pub fn condemns_block(&self) -> bool {
        matches!(
            self,
            ImportError::Invalid(_) | ImportError::Unauthorized { .. }
        )
    }
}

/// A block's canonical header bytes and its author's 65 signature bytes, as they travel.
pub type SignedHeader = (Vec<u8>, Vec<u8>);

/// The blocks a node holds, as the sync engine reads and extends them. Calls are short and
/// synchronous; the engine makes them from its own task.
pub trait BlockStore: Send + Sync + 'static {
    /// The network's name: the hash of its spec block.
    fn genesis(&self) -> Hash;
    /// The head of each chain held.
    fn heads(&self) -> Result<Vec<Head>, ImportError>;
    /// Whether block `hash` is stored.
    fn has(&self, hash: &Hash) -> Result<bool, ImportError>;
    /// The canonical header bytes and signature of block `hash`.
    fn header(&self, hash: &Hash) -> Result<Option<SignedHeader>, ImportError>;
    /// Up to `max` hashes of `chain` from height `from` on.
    fn hashes(&self, chain: u8, from: u64, max: u32) -> Result<Vec<Hash>, ImportError>;
    /// Up to `len` payload bytes of block `hash` from `offset`.
    fn chunk(&self, hash: &Hash, offset: u64, len: u32) -> Result<Option<Vec<u8>>, ImportError>;
    /// Checks a header fetched as block `hash` before its payload is fetched: its bytes hash
    /// to `hash`, its author signed them and may author blocks here, its payload fits.
    fn check_header(
        &self,
        hash: &Hash,
        header: &[u8],
        signature: &[u8],
    ) -> Result<BlockHeader, ImportError>;
    /// Checks and stores a complete block whose parents are all stored.
    fn import(&self, block: Block) -> Result<(), ImportError>;
    /// Checks and stores complete blocks whose parents are each stored or among them; one
    /// result per block, in the order given. A store may commit them together, but each
    /// block's outcome is what [`BlockStore::import`] of them one by one, parents first,
    /// would give.
    fn import_all(&self, blocks: Vec<Block>) -> Vec<Result<(), ImportError>> {
        blocks.into_iter().map(|b| self.import(b)).collect()
    }
}

/// [`BlockStore`] over the chain store. Only the network's operator (the author of the spec
/// block, whose hash names the network) may author blocks until the admission registry
/// exists.
#[derive(Debug, Clone)]
pub struct ChainStore {
    store: Arc<Store>,
    genesis: Hash,
}

impl ChainStore {
    /// The store of a node of network `genesis`.
    pub fn new(store: Arc<Store>, genesis: Hash) -> ChainStore {
        ChainStore { store, genesis }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn authorize(&self, hash: &Hash, header: &BlockHeader) -> Result<(), ImportError> {
        if *hash == self.genesis {
            return Ok(());
        }
        if header.chain == ChainId::Meta && header.height == 0 {
            return Err(ImportError::Invalid(format!(
                "a spec block {hash} that is not this network's {}",
                self.genesis
            )));
        }
        let operator = self
            .store
            .header(&self.genesis)
            .map_err(local)?
            .map(|h| h.author);
        match operator {
            // Without the spec block nothing else can be judged; the engine fetches it first.
            None => Err(ImportError::Local(
                "the spec block is not stored yet".into(),
            )),
            Some(op) if op == header.author => Ok(()),
            Some(_) => Err(ImportError::Unauthorized {
                author: header.author.to_string(),
            }),
        }
    }
}

fn local(e: ChainError) -> ImportError {
    ImportError::Local(e.to_string())
}

impl BlockStore for ChainStore {
    fn genesis(&self) -> Hash {
        self.genesis
    }

    fn heads(&self) -> Result<Vec<Head>, ImportError> {
        let mut heads = Vec::new();
        for chain in ChainId::ALL {
            if let Some((height, hash)) = self.store.head(chain).map_err(local)? {
                heads.push(Head {
                    chain: chain as u8,
                    height,
                    hash,
                });
            }
        }
        Ok(heads)
    }

    fn has(&self, hash: &Hash) -> Result<bool, ImportError> {
        Ok(self.store.header(hash).map_err(local)?.is_some())
    }

    fn header(&self, hash: &Hash) -> Result<Option<SignedHeader>, ImportError> {
        let Some(header) = self.store.header(hash).map_err(local)? else {
            return Ok(None);
        };
        // A block stored before blocks were signed cannot travel: peers refuse it.
        let Some(signature) = self.store.signature(hash).map_err(local)? else {
            return Ok(None);
        };
        Ok(Some((header.encode(), signature.0.to_vec())))
    }

    fn hashes(&self, chain: u8, from: u64, max: u32) -> Result<Vec<Hash>, ImportError> {
        let Some(chain) = ChainId::ALL.into_iter().find(|c| *c as u8 == chain) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for height in from..from.saturating_add(u64::from(max)) {
            match self.store.at_height(chain, height).map_err(local)? {
                Some(h) => out.push(h),
                None => break,
            }
        }
        Ok(out)
    }

    fn chunk(&self, hash: &Hash, offset: u64, len: u32) -> Result<Option<Vec<u8>>, ImportError> {
        if self.store.header(hash).map_err(local)?.is_none() {
            return Ok(None);
        }
        let payload = self.store.payload(hash).map_err(local)?;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(payload.len());
        let end = start.saturating_add(len as usize).min(payload.len());
        Ok(Some(payload[start..end].to_vec()))
    }

    fn check_header(
        &self,
        hash: &Hash,
        header: &[u8],
        signature: &[u8],
    ) -> Result<BlockHeader, ImportError> {
        let invalid = |e: BlockError| ImportError::Invalid(e.to_string());
        let decoded = BlockHeader::decode(header).map_err(invalid)?;
        let actual = decoded.hash();
        if actual != *hash {
            return Err(ImportError::WrongBlock {
                asked: *hash,
                got: actual,
            });
        }
        let signature = blyan_primitives::Signature::from_slice(signature)
            .map_err(|e| invalid(BlockError::BadSignature(e)))?;
        check_signature(hash, &decoded.author, Some(&signature)).map_err(invalid)?;
        if decoded.payload_len > PAYLOAD_LEN_MAX {
            return Err(invalid(BlockError::PayloadTooLarge {
                len: decoded.payload_len,
                max: PAYLOAD_LEN_MAX,
            }));
        }
        self.authorize(hash, &decoded)?;
        Ok(decoded)
    }

    fn import(&self, block: Block) -> Result<(), ImportError> {
        self.import_all(vec![block])
            .pop()
            .expect("one verdict per block")
    }

    /// One transaction for all the blocks that pass ([`Store::append_each`]).
    fn import_all(&self, blocks: Vec<Block>) -> Vec<Result<(), ImportError>> {
        let mut verdicts: Vec<Option<Result<(), ImportError>>> = Vec::with_capacity(blocks.len());
        let mut passed = Vec::with_capacity(blocks.len());
        for block in blocks {
            match self.authorize(&block.hash(), &block.header) {
                Ok(()) => {
                    verdicts.push(None);
                    passed.push(block);
                }
                Err(e) => verdicts.push(Some(Err(e))),
            }
        }
        let mut stored = match self.store.append_each(passed) {
            Ok(v) => v.into_iter(),
            Err(e) => {
                let e = local(e);
                return verdicts
                    .into_iter()
                    .map(|v| v.unwrap_or_else(|| Err(e.clone())))
                    .collect();
            }
        };
        verdicts
            .into_iter()
            .map(|v| {
                v.unwrap_or_else(|| match stored.next().expect("one verdict per block") {
                    Ok(_) => Ok(()),
                    Err(ChainError::Invalid {
                        error: BlockError::Duplicate { .. },
                        ..
                    }) => Ok(()),
                    Err(e) => Err(import_error(e)),
                })
            })
            .collect()
    }
}

/// What a refused append means for a block from a peer.
fn import_error(e: ChainError) -> ImportError {
    match e {
        ChainError::Invalid { error, .. } => match error {
            e
            @ (BlockError::PayloadHashMismatch { .. } | BlockError::PayloadLenMismatch { .. }) => {
                ImportError::WrongPayload(e.to_string())
            }
            e @ (BlockError::WrongHeight { .. } | BlockError::WrongPrev { .. }) => {
                ImportError::Conflict(e.to_string())
            }
            e => ImportError::Invalid(e.to_string()),
        },
        e => local(e),
    }
}

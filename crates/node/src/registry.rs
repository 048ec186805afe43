//! The admission registry as the node writes and reads it: `admit` appends an admission block
//! to the meta chain (operator only), `registry` reads who holds which role.

use blyan_chain::{Admission, Block, BlockKind, BlockMeta, ChainId, Registry, Role, Store};
use blyan_primitives::{Hash, SigningKey};

use crate::{Node, NodeError};

/// The admission block that gives (or takes) `role` to network key `key`, signed by `signer`,
/// extending the meta chain of `store`. Only the network's operator (the spec block's author)
/// may sign one: anyone else gets `not_admitted` here and `not_operator` from the store.
pub fn admission_block(
    store: &Store,
    signer: &SigningKey,
    key: [u8; 32],
    role: Role,
    admitted: bool,
    now_ms: u64,
) -> Result<Block, NodeError> {
    let network = store
        .at_height(ChainId::Meta, 0)?
        .ok_or_else(|| NodeError::NotFound {
            what: "the network's spec block".into(),
        })?;
    let spec = store
        .header(&network)?
        .ok_or(blyan_chain::ChainError::NotFound(network))?;
    let me = blyan_primitives::address_of(signer);
    if spec.author != me {
        return Err(NodeError::NotAdmitted {
            network: network.to_string(),
            key: me.to_string(),
            what: "admitting a key",
        });
    }
    let (height, prev) = store
        .head(ChainId::Meta)?
        .ok_or(blyan_chain::ChainError::NotFound(network))?;
    let prev_ts = store.header(&prev)?.map_or(0, |h| h.timestamp_ms);
    let payload = Admission {
        key,
        role,
        admitted,
    };
    Ok(Block::new(
        ChainId::Meta,
        height + 1,
        prev,
        vec![network],
        BlockKind::Admission,
        BlockMeta {
            name: "admission".into(),
            ..BlockMeta::default()
        },
        payload.encode(),
        signer,
        now_ms.max(prev_ts),
    ))
}

impl Node {
    /// Gives `role` to network key `key` (or takes it, with `admitted` false) by appending an
    /// admission block; the operator's node only.
    pub fn admit(
        &self,
        key: [u8; 32],
        role: Role,
        admitted: bool,
        now_ms: u64,
    ) -> Result<Hash, NodeError> {
        self.require_writer("admitting a key")?;
        // One writer of the meta chain at a time.
        let _guard = self.meta_writer.lock().unwrap_or_else(|p| p.into_inner());
        let block = admission_block(&self.store, &self.signer, key, role, admitted, now_ms)?;
        self.append_block(block, None)
    }

    /// Who holds which role now.
    pub fn registry(&self) -> Result<Registry, NodeError> {
        Ok(Registry::of(&self.store)?)
    }
}

/// The registry as of the meta chain's head, read again only when that grew; whether it
/// grew is read only when the store appended blocks (one atomic load per call otherwise: a
/// host checks every caller against it).
#[derive(Debug, Default)]
pub(crate) struct RegistryCache(std::sync::Mutex<Option<CachedRegistry>>);

#[derive(Debug)]
struct CachedRegistry {
    generation: u64,
    meta_height: u64,
    registry: std::sync::Arc<Registry>,
}

impl RegistryCache {
    /// The registry of `store` now.
    pub(crate) fn get(&self, store: &Store) -> Result<std::sync::Arc<Registry>, NodeError> {
        // Read before the head: blocks appended after it make the next call look again.
        let generation = store.generation();
        let mut cached = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cached.as_ref()
            && c.generation == generation
        {
            return Ok(c.registry.clone());
        }
        let meta_height = store.head(ChainId::Meta)?.map_or(0, |(h, _)| h);
        if let Some(c) = cached.as_mut()
            && c.meta_height == meta_height
        {
            c.generation = generation;
            return Ok(c.registry.clone());
        }
        let registry = std::sync::Arc::new(Registry::of(store)?);
        *cached = Some(CachedRegistry {
            generation,
            meta_height,
            registry: registry.clone(),
        });
        Ok(registry)
    }
}

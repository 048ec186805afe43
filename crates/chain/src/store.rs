//! The block store: payload files named by their hash plus a redb index.
//!
//! Layout of a store directory:
//!
//! ```text
//! index.redb          hash → header, hash → author's signature, (chain, height) → hash,
//!                     group → versions and head, chain → running totals (blocks, payload
//!                     bytes)
//! payloads/ab/abcd…   payload bytes, named by payload hash, fanned out by first byte
//! tmp/                payloads being written; emptied at open
//! ```
//!
//! Appending writes the payload to `tmp/`, fsyncs it, renames it into `payloads/` and fsyncs
//! the directory, and only then commits the index transaction that makes the block visible.
//! A batch writes and syncs all its payloads (on several threads) before its one commit. A
//! crash before the commit leaves at most unreferenced payload files; a crash after it
//! leaves the blocks complete. Validation runs inside the same write transaction, so a block
//! is checked against exactly the state it is appended to.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use blyan_primitives::{ExpertId, Hash, SIGNATURE_LEN, Signature};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Serialize;

use crate::dag::topo_order;
use crate::spec::{MetaPayload, TensorGroup, expert_group_name};
use crate::validate::{ChainView, validate};
use crate::{
    Block, BlockError, BlockHeader, BlockKind, ChainError, ChainId, CheckedBlock, ValidBlock,
};

/// hash → canonical header bytes.
pub(crate) const HEADERS: TableDefinition<'static, [u8; 32], &'static [u8]> =
    TableDefinition::new("headers");
/// hash → the author's 65-byte signature of it (kept beside the header, which it signs).
pub(crate) const SIGNATURES: TableDefinition<'static, [u8; 32], [u8; SIGNATURE_LEN]> =
    TableDefinition::new("signatures");
/// (chain, height) → hash.
pub(crate) const BY_HEIGHT: TableDefinition<'static, (u8, u64), [u8; 32]> =
    TableDefinition::new("by_height");
/// (group name, version number) → hash, versions numbered from 0 in append order.
pub(crate) const VERSIONS: TableDefinition<'static, (&'static str, u32), [u8; 32]> =
    TableDefinition::new("versions");
/// group name → hash of the version served by default.
pub(crate) const GROUP_HEADS: TableDefinition<'static, &'static str, [u8; 32]> =
    TableDefinition::new("group_heads");

/// chain → (blocks, payload bytes): running totals, updated in every append's transaction,
/// so that counts never need a scan of the chain.
pub(crate) const CHAIN_TOTALS: TableDefinition<'static, u8, (u64, u64)> =
    TableDefinition::new("chain_totals");

type Layout = Arc<BTreeMap<String, TensorGroup>>;

/// One chain's size.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug, Serialize)]
pub struct ChainTotals {
    /// Blocks on the chain.
    pub blocks: u64,
    /// Their payload bytes together.
    pub payload_bytes: u64,
}

/// A crash-safe, append-only store of blocks.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    db: Database,
    /// Decoded tensor layouts by spec block hash; specs are immutable, so entries never go stale.
    layouts: Mutex<HashMap<Hash, Layout>>,
    /// Transactions that appended blocks since this was opened (see [`Store::generation`]).
    appended: std::sync::atomic::AtomicU64,
}

/// One line of `chain log`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct BlockSummary {
    /// Block hash.
    pub hash: Hash,
    /// Chain.
    pub chain: ChainId,
    /// Height on the chain.
    pub height: u64,
    /// Kind.
    pub kind: BlockKind,
    /// Name.
    pub name: String,
    /// Payload bytes.
    pub payload_len: u64,
}

impl BlockSummary {
    fn new(hash: Hash, h: &BlockHeader) -> BlockSummary {
        BlockSummary {
            hash,
            chain: h.chain,
            height: h.height,
            kind: h.kind,
            name: h.meta.name.clone(),
            payload_len: h.payload_len,
        }
    }
}

/// A block's payload, memory-mapped read-only.
#[derive(Debug)]
pub struct Payload(Option<memmap2::Mmap>);

impl Deref for Payload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or(&[])
    }
}

impl Store {
    /// Opens the store in `dir`, creating it if needed. Leftovers of interrupted writes are
    /// removed.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store, ChainError> {
        let dir = dir.as_ref().to_path_buf();
        let tmp = dir.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp)
                .map_err(ChainError::io(format!("clearing {}", tmp.display())))?;
        }
        for d in [&dir, &dir.join("payloads"), &tmp] {
            fs::create_dir_all(d).map_err(ChainError::io(format!("creating {}", d.display())))?;
        }
        let db = Database::create(dir.join("index.redb"))?;
        let txn = db.begin_write()?;
        txn.open_table(HEADERS)?;
        txn.open_table(SIGNATURES)?;
        txn.open_table(BY_HEIGHT)?;
        txn.open_table(VERSIONS)?;
        txn.open_table(GROUP_HEADS)?;
        {
            // A store written before the totals existed gets them once, from one scan.
            let mut totals = txn.open_table(CHAIN_TOTALS)?;
            let headers = txn.open_table(HEADERS)?;
            if totals.is_empty()? && !headers.is_empty()? {
                let by_height = txn.open_table(BY_HEIGHT)?;
                let mut sums: BTreeMap<u8, (u64, u64)> = BTreeMap::new();
                for entry in by_height.iter()? {
                    let (k, v) = entry?;
                    let summary = indexed_summary(&headers, Hash(v.value()))?;
                    let e = sums.entry(k.value().0).or_default();
                    e.0 += 1;
                    e.1 += summary.payload_len;
                }
                for (chain, sum) in sums {
                    totals.insert(chain, sum)?;
                }
            }
        }
        txn.commit()?;
        Ok(Store {
            dir,
            db,
            layouts: Mutex::new(HashMap::new()),
            appended: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Checks and appends one block; returns its hash. On any error nothing is stored.
    pub fn append(&self, block: Block) -> Result<Hash, ChainError> {
        Ok(self.append_batch(vec![block])?[0])
    }

    /// Checks and appends blocks in one transaction, ordering them so that dependencies come
    /// first; returns their hashes in the order given. Either all are stored or none.
    ///
    /// The stateless checks (hashes, signatures) of the blocks run on several threads, and so
    /// do the payload writes: each payload is still written and synced before the one commit
    /// that makes the batch visible, but the syncs overlap instead of queueing one by one.
    pub fn append_batch(&self, blocks: Vec<Block>) -> Result<Vec<Hash>, ChainError> {
        self.append_in_one(blocks, true)?.into_iter().collect()
    }

    /// Checks blocks and appends, in one transaction, those that pass; one verdict per block
    /// in the order given, each the one [`Store::append`] of the blocks one by one, parents
    /// first, would give (a block whose parent in the batch failed fails with it). The outer
    /// error is a store failure, after which none of them is stored.
    pub fn append_each(
        &self,
        blocks: Vec<Block>,
    ) -> Result<Vec<Result<Hash, ChainError>>, ChainError> {
        self.append_in_one(blocks, false)
    }

    /// [`Store::append_batch`] (`all_or_none`: the first refusal refuses the batch) and
    /// [`Store::append_each`].
    fn append_in_one(
        &self,
        blocks: Vec<Block>,
        all_or_none: bool,
    ) -> Result<Vec<Result<Hash, ChainError>>, ChainError> {
        let invalid = |(block, error)| ChainError::Invalid { block, error };
        let mut verdicts: Vec<Result<Hash, ChainError>> = Vec::with_capacity(blocks.len());
        let mut slots: Vec<Option<CheckedBlock>> = Vec::with_capacity(blocks.len());
        for checked in check_all(blocks) {
            match checked {
                Ok(c) => {
                    verdicts.push(Ok(c.hash()));
                    slots.push(Some(c));
                }
                Err(e) if all_or_none => return Err(invalid(e)),
                Err(e) => {
                    verdicts.push(Err(invalid(e)));
                    slots.push(None);
                }
            }
        }
        let nodes: Vec<(Hash, Vec<Hash>)> = slots
            .iter()
            .zip(&verdicts)
            .map(|(c, v)| match (c, v) {
                (Some(c), _) => {
                    let h = &c.block().header;
                    let mut parents = h.depends_on.clone();
                    parents.push(h.prev);
                    (c.hash(), parents)
                }
                // A refused block is skipped in the order; its children still follow it.
                (None, Err(ChainError::Invalid { block, .. })) => (*block, Vec::new()),
                (None, _) => (Hash::ZERO, Vec::new()),
            })
            .collect();
        let order = topo_order(&nodes).map_err(|e| ChainError::Invalid {
            block: e.member,
            error: BlockError::Cycle { block: e.member },
        })?;
        let txn = self.db.begin_write()?;
        let mut valid = Vec::with_capacity(slots.len());
        {
            let mut tables = Tables::open(&txn, self)?;
            for i in order {
                let Some(block) = slots[i].take() else {
                    continue;
                };
                let v = match validate(block, &tables) {
                    Ok(v) => v,
                    Err(e) if all_or_none => return Err(e),
                    Err(e) => {
                        verdicts[i] = Err(e);
                        continue;
                    }
                };
                tables.insert(&v)?;
                if v.block.header.chain == ChainId::Meta {
                    // A later block of the batch may need this spec's layout before its
                    // payload file exists (meta payloads are small).
                    tables.fresh.insert(v.hash, v.block.payload.clone());
                }
                valid.push(v);
            }
        }
        self.write_payloads(&valid)?;
        txn.commit()?;
        if !valid.is_empty() {
            self.appended
                .fetch_add(1, std::sync::atomic::Ordering::Release);
        }
        Ok(verdicts)
    }

    /// A number that changes whenever blocks are appended through this store (it counts the
    /// transactions that appended any since it was opened; the database is opened by one
    /// store at a time): what was derived from the chains at one generation still holds at
    /// the same one, without a read.
    pub fn generation(&self) -> u64 {
        self.appended.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The header of block `hash`.
    pub fn header(&self, hash: &Hash) -> Result<Option<BlockHeader>, ChainError> {
        let txn = self.db.begin_read()?;
        let headers = txn.open_table(HEADERS)?;
        read_header(&headers, hash)
    }

    /// The author's signature of block `hash`. A stored block without one was written by a
    /// build that did not sign blocks; `verify` names it.
    pub fn signature(&self, hash: &Hash) -> Result<Option<Signature>, ChainError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(SIGNATURES)?;
        Ok(t.get(hash.0)?.map(|v| Signature(v.value())))
    }

    /// The height and hash of the last block of `chain`.
    pub fn head(&self, chain: ChainId) -> Result<Option<(u64, Hash)>, ChainError> {
        let txn = self.db.begin_read()?;
        chain_head(&txn.open_table(BY_HEIGHT)?, chain)
    }

    /// The block at `height` on `chain`.
    pub fn at_height(&self, chain: ChainId, height: u64) -> Result<Option<Hash>, ChainError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(BY_HEIGHT)?;
        Ok(t.get((chain as u8, height))?.map(|v| Hash(v.value())))
    }

    /// Number of blocks on every chain together.
    pub fn len(&self) -> Result<u64, ChainError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(HEADERS)?.len()?)
    }

    /// Whether no block is stored.
    pub fn is_empty(&self) -> Result<bool, ChainError> {
        Ok(self.len()? == 0)
    }

    /// Blocks and payload bytes of every chain, from the running totals (no scan).
    pub fn chain_totals(&self) -> Result<BTreeMap<ChainId, ChainTotals>, ChainError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(CHAIN_TOTALS)?;
        let mut out = BTreeMap::new();
        for chain in ChainId::ALL {
            let (blocks, payload_bytes) = t.get(chain as u8)?.map_or((0, 0), |v| v.value());
            out.insert(
                chain,
                ChainTotals {
                    blocks,
                    payload_bytes,
                },
            );
        }
        Ok(out)
    }

    /// One page of the listing of `chain` (or of every chain) in chain then height order:
    /// the total count and at most `limit` summaries from position `offset`. Each chain's
    /// heights run from 0 without gaps, so the page is found from the running totals and
    /// read from the height index directly: the cost is `limit` header reads, whatever the
    /// offset.
    pub fn blocks_page(
        &self,
        chain: Option<ChainId>,
        offset: u64,
        limit: usize,
    ) -> Result<(u64, Vec<BlockSummary>), ChainError> {
        let totals = self.chain_totals()?;
        let chains: Vec<ChainId> = match chain {
            Some(c) => vec![c],
            None => ChainId::ALL.to_vec(),
        };
        let total = chains.iter().map(|c| totals[c].blocks).sum();
        let txn = self.db.begin_read()?;
        let by_height = txn.open_table(BY_HEIGHT)?;
        let headers = txn.open_table(HEADERS)?;
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut skip = offset;
        for c in chains {
            if out.len() >= limit {
                break;
            }
            let count = totals[&c].blocks;
            if skip >= count {
                skip -= count;
                continue;
            }
            let range = by_height.range((c as u8, skip)..=(c as u8, u64::MAX))?;
            skip = 0;
            for entry in range.take(limit - out.len()) {
                out.push(indexed_summary(&headers, Hash(entry?.1.value()))?);
            }
        }
        Ok((total, out))
    }

    /// Summaries of the blocks of `chain` (or of every chain), in chain then height order.
    /// This reads every header; listings that show a page use [`Store::blocks_page`].
    pub fn blocks(&self, chain: Option<ChainId>) -> Result<Vec<BlockSummary>, ChainError> {
        let txn = self.db.begin_read()?;
        let by_height = txn.open_table(BY_HEIGHT)?;
        let headers = txn.open_table(HEADERS)?;
        let (lo, hi) = match chain {
            Some(c) => (c as u8, c as u8),
            None => (0, u8::MAX),
        };
        let mut out = Vec::new();
        for entry in by_height.range((lo, 0)..=(hi, u64::MAX))? {
            out.push(indexed_summary(&headers, Hash(entry?.1.value()))?);
        }
        Ok(out)
    }

    /// Hash of the version of tensor group `name` served by default.
    pub fn group_head(&self, name: &str) -> Result<Option<Hash>, ChainError> {
        let txn = self.db.begin_read()?;
        Ok(txn
            .open_table(GROUP_HEADS)?
            .get(name)?
            .map(|v| Hash(v.value())))
    }

    /// Every version of tensor group `name`, oldest first.
    pub fn group_versions(&self, name: &str) -> Result<Vec<Hash>, ChainError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(VERSIONS)?;
        let mut out = Vec::new();
        for entry in t.range((name, 0)..=(name, u32::MAX))? {
            out.push(Hash(entry?.1.value()));
        }
        Ok(out)
    }

    /// Hash of the head version of expert `id`.
    pub fn expert_head(&self, id: ExpertId) -> Result<Option<Hash>, ChainError> {
        self.group_head(&expert_group_name(id))
    }

    /// Every version of expert `id`, oldest first.
    pub fn expert_versions(&self, id: ExpertId) -> Result<Vec<Hash>, ChainError> {
        self.group_versions(&expert_group_name(id))
    }

    /// The spec and tokenizer of the meta chain's latest spec block (admission blocks follow
    /// it on the same chain).
    pub fn meta(&self) -> Result<Option<(Hash, MetaPayload)>, ChainError> {
        let Some((mut height, mut head)) = self.head(ChainId::Meta)? else {
            return Ok(None);
        };
        loop {
            let header = self.header(&head)?.ok_or(ChainError::NotFound(head))?;
            if header.kind == BlockKind::Spec {
                break;
            }
            let Some(h) = height.checked_sub(1) else {
                return Ok(None);
            };
            height = h;
            head = header.prev;
        }
        let payload = self.payload_verified(&head)?;
        let meta = MetaPayload::decode(&payload).map_err(|e| ChainError::Corrupt {
            block: head,
            detail: e.to_string(),
        })?;
        Ok(Some((head, meta)))
    }

    /// The payload of block `hash`, mapped without re-hashing.
    pub fn payload(&self, hash: &Hash) -> Result<Payload, ChainError> {
        let header = self.header(hash)?.ok_or(ChainError::NotFound(*hash))?;
        self.map_payload(*hash, &header)
    }

    /// The payload of block `hash`, mapped and checked against the header's hash.
    pub fn payload_verified(&self, hash: &Hash) -> Result<Payload, ChainError> {
        let header = self.header(hash)?.ok_or(ChainError::NotFound(*hash))?;
        let payload = self.map_payload(*hash, &header)?;
        Store::check_payload(hash, &header, &payload)?;
        Ok(payload)
    }

    /// Whether `payload` (of block `block`, mapped with [`Store::payload`]) has the hash its
    /// header names: the check of [`Store::payload_verified`], for callers that hash while
    /// they do something else with the mapping.
    pub fn check_payload(
        block: &Hash,
        header: &BlockHeader,
        payload: &[u8],
    ) -> Result<(), ChainError> {
        let actual = Hash::of(payload);
        if actual != header.payload_hash {
            return Err(ChainError::Corrupt {
                block: *block,
                detail: format!(
                    "payload hash is {actual}, header says {}",
                    header.payload_hash
                ),
            });
        }
        Ok(())
    }

    pub(crate) fn map_payload(
        &self,
        block: Hash,
        header: &BlockHeader,
    ) -> Result<Payload, ChainError> {
        let path = self.payload_path(&header.payload_hash);
        let file = File::open(&path).map_err(|e| ChainError::Corrupt {
            block,
            detail: format!("payload file {}: {e}", path.display()),
        })?;
        let len = file
            .metadata()
            .map_err(ChainError::io(format!("stat {}", path.display())))?
            .len();
        if len != header.payload_len {
            return Err(ChainError::Corrupt {
                block,
                detail: format!(
                    "payload file is {len} bytes, header says {}",
                    header.payload_len
                ),
            });
        }
        if len == 0 {
            return Ok(Payload(None));
        }
        // SAFETY: payload files are written once under a temporary name and renamed into
        // place; nothing in Blyan modifies or truncates them afterwards. The length was checked
        // just above, and every reader re-checks the hash where integrity matters.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(ChainError::io(format!("mapping {}", path.display())))?;
        Ok(Payload(Some(map)))
    }

    /// Where the payload with hash `payload_hash` is (or would be) stored.
    pub fn payload_path(&self, payload_hash: &Hash) -> PathBuf {
        let hex = payload_hash.to_string();
        self.dir.join("payloads").join(&hex[..2]).join(hex)
    }

    /// Writes and syncs the payloads of `valid` (once per distinct payload), on up to
    /// [`WRITERS`] threads; returns the first failure.
    fn write_payloads(&self, valid: &[ValidBlock]) -> Result<(), ChainError> {
        let mut seen = std::collections::HashSet::new();
        let distinct: Vec<&ValidBlock> = valid
            .iter()
            .filter(|v| seen.insert(v.block.header.payload_hash))
            .collect();
        let threads = distinct.len().min(WRITERS);
        if threads <= 1 {
            return distinct.iter().try_for_each(|v| self.write_payload(v));
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(v) = distinct.get(i) else {
                                return Ok(());
                            };
                            self.write_payload(v)?;
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("a payload writer panicked"))
                .collect::<Result<Vec<()>, ChainError>>()
                .map(drop)
        })
    }

    fn write_payload(&self, valid: &ValidBlock) -> Result<(), ChainError> {
        let header = &valid.block.header;
        let path = self.payload_path(&header.payload_hash);
        if fs::metadata(&path).is_ok_and(|m| m.len() == header.payload_len) {
            // Same bytes already stored (content addressing): another block shares them.
            return Ok(());
        }
        self.write_payload_file(header, &valid.block.payload)
    }

    /// Replaces the stored payload of block `hash` with `bytes`, which must be exactly the
    /// payload its header names (length and hash): the repair of a payload found missing or
    /// corrupt, with a copy fetched from elsewhere. It is written like any payload (a synced
    /// temporary file renamed into place), so a reader sees the old file or the new one.
    pub fn repair_payload(&self, hash: &Hash, bytes: &[u8]) -> Result<(), ChainError> {
        let header = self.header(hash)?.ok_or(ChainError::NotFound(*hash))?;
        Store::check_payload(hash, &header, bytes)?;
        self.write_payload_file(&header, bytes)
    }

    fn write_payload_file(&self, header: &BlockHeader, payload: &[u8]) -> Result<(), ChainError> {
        let path = self.payload_path(&header.payload_hash);
        let fan = path.parent().expect("payload paths have a parent");
        if !fan.exists() {
            fs::create_dir_all(fan)
                .map_err(ChainError::io(format!("creating {}", fan.display())))?;
            sync_dir(&self.dir.join("payloads"))?;
        }
        let tmp = self.dir.join("tmp").join(header.payload_hash.to_string());
        let mut file =
            File::create(&tmp).map_err(ChainError::io(format!("creating {}", tmp.display())))?;
        file.write_all(payload)
            .and_then(|()| file.sync_all())
            .map_err(ChainError::io(format!("writing {}", tmp.display())))?;
        drop(file);
        fs::rename(&tmp, &path)
            .map_err(ChainError::io(format!("renaming into {}", path.display())))?;
        sync_dir(fan)
    }

    pub(crate) fn db(&self) -> &Database {
        &self.db
    }
}

/// Most threads that write payloads of one batch at once: the work is waiting for the disk,
/// which takes overlapping syncs far faster than a queue of them (docs/BENCHMARKS.md).
const WRITERS: usize = 8;

/// Payload bytes below which a batch is checked on the calling thread alone.
const PARALLEL_CHECK_BYTES: u64 = 4 << 20;

/// One block's stateless verdict: the checked block, or its hash and why it was refused.
type Checked = Result<CheckedBlock, (Hash, BlockError)>;

/// The stateless checks of `blocks`, one verdict each in the order given; on up to as many
/// threads as the machine has cores when the payloads are large.
fn check_all(blocks: Vec<Block>) -> Vec<Checked> {
    let bytes: u64 = blocks.iter().map(|b| b.payload.len() as u64).sum();
    let threads = if bytes < PARALLEL_CHECK_BYTES {
        1
    } else {
        std::thread::available_parallelism().map_or(1, usize::from)
    };
    check_on(blocks, threads)
}

/// [`check_all`] on `threads` threads.
fn check_on(blocks: Vec<Block>, threads: usize) -> Vec<Checked> {
    let threads = threads.min(blocks.len());
    if threads <= 1 {
        return blocks.into_iter().map(CheckedBlock::check_hashed).collect();
    }
    // Deal the blocks out by size, largest first, each to the least loaded thread.
    let mut order: Vec<usize> = (0..blocks.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(blocks[i].payload.len()));
    let mut shares: Vec<(u64, Vec<(usize, Block)>)> =
        (0..threads).map(|_| (0, Vec::new())).collect();
    let mut slots: Vec<Option<Block>> = blocks.into_iter().map(Some).collect();
    for i in order {
        let block = slots[i].take().expect("each index once");
        let share = shares
            .iter_mut()
            .min_by_key(|(load, _)| *load)
            .expect("at least one thread");
        share.0 += block.payload.len() as u64;
        share.1.push((i, block));
    }
    let mut results: Vec<(usize, Checked)> = std::thread::scope(|scope| {
        let workers: Vec<_> = shares
            .into_iter()
            .map(|(_, share)| {
                scope.spawn(move || {
                    share
                        .into_iter()
                        .map(|(i, b)| (i, CheckedBlock::check_hashed(b)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a block checker panicked"))
            .collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

fn sync_dir(dir: &Path) -> Result<(), ChainError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ChainError::io(format!(
            "syncing directory {}",
            dir.display()
        )))
}

pub(crate) fn read_header(
    headers: &impl ReadableTable<[u8; 32], &'static [u8]>,
    hash: &Hash,
) -> Result<Option<BlockHeader>, ChainError> {
    let Some(bytes) = headers.get(hash.0)? else {
        return Ok(None);
    };
    BlockHeader::decode(bytes.value())
        .map(Some)
        .map_err(|e| ChainError::Corrupt {
            block: *hash,
            detail: e.to_string(),
        })
}

/// The summary of block `hash`, which the height index names: its header must exist.
fn indexed_summary(
    headers: &impl ReadableTable<[u8; 32], &'static [u8]>,
    hash: Hash,
) -> Result<BlockSummary, ChainError> {
    let header = read_header(headers, &hash)?.ok_or(ChainError::Corrupt {
        block: hash,
        detail: "indexed by height but has no header".into(),
    })?;
    Ok(BlockSummary::new(hash, &header))
}

fn chain_head(
    by_height: &impl ReadableTable<(u8, u64), [u8; 32]>,
    chain: ChainId,
) -> Result<Option<(u64, Hash)>, ChainError> {
    let c = chain as u8;
    match by_height.range((c, 0)..=(c, u64::MAX))?.next_back() {
        Some(entry) => {
            let (k, v) = entry?;
            Ok(Some((k.value().1, Hash(v.value()))))
        }
        None => Ok(None),
    }
}

/// The index tables of one write transaction: validation reads them, appends write them.
struct Tables<'t> {
    store: &'t Store,
    headers: redb::Table<'t, [u8; 32], &'static [u8]>,
    signatures: redb::Table<'t, [u8; 32], [u8; SIGNATURE_LEN]>,
    by_height: redb::Table<'t, (u8, u64), [u8; 32]>,
    versions: redb::Table<'t, (&'static str, u32), [u8; 32]>,
    group_heads: redb::Table<'t, &'static str, [u8; 32]>,
    totals: redb::Table<'t, u8, (u64, u64)>,
    /// Payloads of the meta-chain blocks inserted in this transaction, whose files are
    /// written just before it commits.
    fresh: HashMap<Hash, Vec<u8>>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t redb::WriteTransaction, store: &'t Store) -> Result<Tables<'t>, ChainError> {
        Ok(Tables {
            store,
            headers: txn.open_table(HEADERS)?,
            signatures: txn.open_table(SIGNATURES)?,
            by_height: txn.open_table(BY_HEIGHT)?,
            versions: txn.open_table(VERSIONS)?,
            group_heads: txn.open_table(GROUP_HEADS)?,
            totals: txn.open_table(CHAIN_TOTALS)?,
            fresh: HashMap::new(),
        })
    }

    fn insert(&mut self, valid: &ValidBlock) -> Result<(), ChainError> {
        let h = &valid.block.header;
        self.headers.insert(valid.hash.0, h.encode().as_slice())?;
        let signature = valid.block.signature.ok_or(ChainError::Invalid {
            block: valid.hash,
            error: BlockError::MissingSignature,
        })?;
        self.signatures.insert(valid.hash.0, signature.0)?;
        self.by_height
            .insert((h.chain as u8, h.height), valid.hash.0)?;
        let (blocks, bytes) = self
            .totals
            .get(h.chain as u8)?
            .map_or((0, 0), |v| v.value());
        self.totals.insert(
            h.chain as u8,
            (blocks + 1, bytes.saturating_add(h.payload_len)),
        )?;
        if h.kind.has_tensors() {
            let name = h.meta.name.as_str();
            let next = match self
                .versions
                .range((name, 0)..=(name, u32::MAX))?
                .next_back()
            {
                Some(entry) => entry?.0.value().1 + 1,
                None => 0,
            };
            self.versions.insert((name, next), valid.hash.0)?;
            self.group_heads.insert(name, valid.hash.0)?;
        }
        if h.kind == BlockKind::Migration {
            // Validation checked the payload against this same transaction's state.
            let m = crate::Migration::decode(&valid.block.payload).map_err(|e| {
                ChainError::Invalid {
                    block: valid.hash,
                    error: e,
                }
            })?;
            self.group_heads.insert(m.group.as_str(), m.to.0)?;
        }
        Ok(())
    }
}

impl ChainView for Tables<'_> {
    fn header(&self, hash: &Hash) -> Result<Option<BlockHeader>, ChainError> {
        read_header(&self.headers, hash)
    }

    fn head(&self, chain: ChainId) -> Result<Option<(u64, Hash)>, ChainError> {
        chain_head(&self.by_height, chain)
    }

    fn has_versions(&self, group: &str) -> Result<bool, ChainError> {
        Ok(self.group_heads.get(group)?.is_some())
    }

    fn group_head(&self, group: &str) -> Result<Option<Hash>, ChainError> {
        Ok(self.group_heads.get(group)?.map(|v| Hash(v.value())))
    }

    fn layout(&self, spec_block: &Hash) -> Result<Layout, ChainError> {
        if let Some(l) = self
            .store
            .layouts
            .lock()
            .expect("layout cache lock")
            .get(spec_block)
        {
            return Ok(l.clone());
        }
        let header = self
            .header(spec_block)?
            .ok_or(ChainError::NotFound(*spec_block))?;
        let mapped;
        let payload: &[u8] = match self.fresh.get(spec_block) {
            Some(p) => p,
            None => {
                mapped = self.store.map_payload(*spec_block, &header)?;
                &mapped
            }
        };
        if Hash::of(payload) != header.payload_hash {
            return Err(ChainError::Corrupt {
                block: *spec_block,
                detail: "spec payload hash mismatch".into(),
            });
        }
        let meta = MetaPayload::decode(payload).map_err(|e| ChainError::Corrupt {
            block: *spec_block,
            detail: e.to_string(),
        })?;
        let layout = Arc::new(meta.spec.layout());
        self.store
            .layouts
            .lock()
            .expect("layout cache lock")
            .insert(*spec_block, layout.clone());
        Ok(layout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::genesis;

    fn tiny_genesis() -> Vec<Block> {
        let tokenizer = crate::spec::byte_level_tokenizer_json();
        let meta = MetaPayload {
            spec: crate::spec::ModelSpec::tiny(Hash::of(&tokenizer)),
            tokenizer,
        };
        genesis::genesis_blocks(
            &meta,
            &mut genesis::RandomWeights { seed: 1 },
            &blyan_primitives::SigningKey::from_slice(&[1; 32]).expect("key"),
        )
        .expect("genesis")
    }

    #[test]
    fn blocks_checked_on_several_threads_get_the_verdicts_of_one() {
        let mut blocks = tiny_genesis();
        assert!(blocks.len() > 6);
        // Two bad blocks: a changed payload byte and a changed header field.
        blocks[3].payload[0] ^= 1;
        blocks[5].header.timestamp_ms += 1;
        let summary = |r: &Checked| match r {
            Ok(c) => format!("ok {}", c.hash()),
            Err((h, e)) => format!("{h}: {e}"),
        };
        let one: Vec<String> = check_on(blocks.clone(), 1).iter().map(summary).collect();
        assert!(
            one[3].contains("payload hash") && one[5].contains("signed by"),
            "{one:?}"
        );
        assert_eq!(
            one.iter().filter(|v| v.starts_with("ok ")).count(),
            blocks.len() - 2
        );
        for threads in [2, 3, 8, 64] {
            let many: Vec<String> = check_on(blocks.clone(), threads)
                .iter()
                .map(summary)
                .collect();
            assert_eq!(many, one, "{threads} threads");
        }
    }

    #[test]
    fn totals_are_rebuilt_for_a_store_written_before_they_existed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let tokenizer = crate::spec::byte_level_tokenizer_json();
        let meta = MetaPayload {
            spec: crate::spec::ModelSpec::tiny(Hash::of(&tokenizer)),
            tokenizer,
        };
        let blocks = genesis::genesis_blocks(
            &meta,
            &mut genesis::RandomWeights { seed: 1 },
            &blyan_primitives::SigningKey::from_slice(&[1; 32]).expect("key"),
        )
        .expect("genesis");
        assert_eq!(store.generation(), 0);
        let spec = blocks[0].clone();
        genesis::init(&store, blocks).expect("init");
        // Appending changes the generation; a refused append does not.
        let generation = store.generation();
        assert!(generation > 0);
        assert!(store.append(spec).is_err(), "already stored");
        assert_eq!(store.generation(), generation);
        let before = store.chain_totals().expect("totals");
        assert!(before[&ChainId::Param].blocks > 0);
        drop(store);
        {
            // What an index of an older build looks like: no totals table.
            let db = Database::create(dir.path().join("index.redb")).expect("db");
            let txn = db.begin_write().expect("txn");
            assert!(txn.delete_table(CHAIN_TOTALS).expect("delete"));
            txn.commit().expect("commit");
        }
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.chain_totals().expect("totals"), before);
    }
}

//! Hugging Face Mixtral checkpoints: `config.json`, `*.safetensors`, `tokenizer.json`.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::{Path, PathBuf},
};

use blyan_chain::{
    Block, BlockMeta, ChainId, Payload, Store,
    genesis::{InitOutcome, WeightSource, genesis_blocks, init},
    spec::{MetaPayload, ModelSpec, TensorGroup},
};
use blyan_primitives::{Hash, SigningKey};
use blyan_tensor::{DType, TensorDesc, TensorSet, encode_tensors};
use safetensors::{Dtype as StDtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::InteropError;

/// Largest `config.json` read.
const CONFIG_LEN_MAX: u64 = 1 << 20;
/// Largest `tokenizer.json` read.
const TOKENIZER_LEN_MAX: u64 = 64 << 20;
/// Most safetensors files in a checkpoint directory.
const SHARDS_MAX: usize = 1024;
/// Tensors some checkpoints carry that the architecture recomputes; skipped on import.
const RECOMPUTED_SUFFIXES: [&str; 1] = ["rotary_emb.inv_freq"];

/// The fields of a Hugging Face Mixtral `config.json` that Blyan reads and writes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HfConfig {
    /// `["MixtralForCausalLM"]`.
    #[serde(default = "default_architectures")]
    pub architectures: Vec<String>,
    /// Must be `"mixtral"`.
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: u32,
    /// Model width.
    pub hidden_size: u32,
    /// Expert hidden width.
    pub intermediate_size: u32,
    /// Decoder layers.
    pub num_hidden_layers: u16,
    /// Query heads.
    pub num_attention_heads: u16,
    /// Key/value heads.
    pub num_key_value_heads: u16,
    /// Experts per layer.
    pub num_local_experts: u16,
    /// Experts per token.
    pub num_experts_per_tok: u16,
    /// Context window.
    pub max_position_embeddings: u32,
    /// RoPE base.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// `float32`, `float16` or `bfloat16`.
    pub torch_dtype: String,
    /// BOS id.
    pub bos_token_id: u32,
    /// EOS id.
    pub eos_token_id: u32,
    /// Must be false: the LM head is its own tensor.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Must be `silu`.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// If present, must equal `hidden_size / num_attention_heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<u32>,
}

fn default_architectures() -> Vec<String> {
    vec!["MixtralForCausalLM".into()]
}

fn default_act() -> String {
    "silu".into()
}

impl HfConfig {
    /// The config describing `spec`.
    pub fn from_spec(spec: &ModelSpec) -> HfConfig {
        HfConfig {
            architectures: default_architectures(),
            model_type: "mixtral".into(),
            vocab_size: spec.vocab_size,
            hidden_size: spec.hidden_size,
            intermediate_size: spec.intermediate_size,
            num_hidden_layers: spec.num_hidden_layers,
            num_attention_heads: spec.num_attention_heads,
            num_key_value_heads: spec.num_key_value_heads,
            num_local_experts: spec.num_local_experts,
            num_experts_per_tok: spec.num_experts_per_tok,
            max_position_embeddings: spec.max_position_embeddings,
            rope_theta: spec.rope_theta,
            rms_norm_eps: spec.rms_norm_eps,
            torch_dtype: torch_dtype(spec.dtype).into(),
            bos_token_id: spec.bos_token_id,
            eos_token_id: spec.eos_token_id,
            tie_word_embeddings: false,
            hidden_act: default_act(),
            head_dim: None,
        }
    }

    /// The spec this config describes, with the given tokenizer.
    pub fn to_spec(&self, tokenizer_hash: Hash) -> Result<ModelSpec, String> {
        if self.model_type != "mixtral" {
            return Err(format!(
                "model_type is {:?}, not \"mixtral\"",
                self.model_type
            ));
        }
        if self.hidden_act != "silu" {
            return Err(format!("hidden_act is {:?}, not \"silu\"", self.hidden_act));
        }
        if self.tie_word_embeddings {
            return Err("tied embeddings are not supported: the LM head is its own block".into());
        }
        let dtype = match self.torch_dtype.as_str() {
            "float32" => DType::F32,
            "float16" => DType::F16,
            "bfloat16" => DType::BF16,
            other => return Err(format!("torch_dtype {other:?} is not supported")),
        };
        let spec = ModelSpec {
            architecture: "mixtral".into(),
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            num_local_experts: self.num_local_experts,
            num_experts_per_tok: self.num_experts_per_tok,
            max_position_embeddings: self.max_position_embeddings,
            rope_theta: self.rope_theta,
            rms_norm_eps: self.rms_norm_eps,
            dtype,
            bos_token_id: self.bos_token_id,
            eos_token_id: self.eos_token_id,
            tokenizer_hash,
        };
        if let Some(hd) = self.head_dim
            && self.num_attention_heads > 0
            && hd != spec.head_dim()
        {
            return Err(format!(
                "head_dim {hd} differs from hidden_size / num_attention_heads = {}",
                spec.head_dim()
            ));
        }
        spec.check().map_err(|e| e.to_string())?;
        Ok(spec)
    }
}

fn torch_dtype(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
    }
}

/// What an import did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImportOutcome {
    /// The store was empty: the checkpoint became the genesis of a new network.
    Created {
        /// The new network (its spec block's hash).
        network: Hash,
        /// Blocks written.
        blocks: usize,
    },
    /// The checkpoint matched the network's spec: changed tensor groups became new versions.
    Updated {
        /// The network.
        network: Hash,
        /// New version blocks, by group name.
        versions: Vec<(String, Hash)>,
        /// Groups identical to their current head, left alone.
        unchanged: usize,
    },
}

/// A checkpoint's tensors by name: descriptor and bytes.
type TensorIndex<'a> = HashMap<String, (TensorDesc, &'a [u8])>;

/// The mapped safetensors files of a checkpoint directory.
struct Checkpoint {
    files: Vec<(PathBuf, memmap2::Mmap)>,
}

impl Checkpoint {
    fn open(dir: &Path) -> Result<Checkpoint, InteropError> {
        let mut paths: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(InteropError::io(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(InteropError::invalid(dir, "no *.safetensors file"));
        }
        if paths.len() > SHARDS_MAX {
            return Err(InteropError::invalid(
                dir,
                format!("more than {SHARDS_MAX} shards"),
            ));
        }
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            let file = fs::File::open(&path).map_err(InteropError::io(&path))?;
            // SAFETY: the checkpoint is read while Blyan runs; as with any mapped input, a
            // concurrent writer could change the bytes, which only makes the import fail its
            // hash or structure checks, never read out of bounds.
            #[allow(unsafe_code)]
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(InteropError::io(&path))?;
            files.push((path, map));
        }
        Ok(Checkpoint { files })
    }

    /// Every tensor by name, with the file it is in. Checks names are unique and known.
    fn index(&self, spec: &ModelSpec) -> Result<TensorIndex<'_>, InteropError> {
        let layout = spec.layout();
        let known: HashMap<&str, &TensorDesc> = layout
            .values()
            .flat_map(|g| g.tensors.iter().map(|t| (t.name.as_str(), t)))
            .collect();
        let mut out = HashMap::new();
        for (path, map) in &self.files {
            let st = SafeTensors::deserialize(map)
                .map_err(|e| InteropError::invalid(path, e.to_string()))?;
            for (name, view) in st.tensors() {
                if RECOMPUTED_SUFFIXES.iter().any(|s| name.ends_with(s)) {
                    continue;
                }
                let Some(&want) = known.get(name.as_str()) else {
                    return Err(InteropError::invalid(
                        path,
                        format!("tensor {name} is not part of the Mixtral layout"),
                    ));
                };
                let dtype = match view.dtype() {
                    StDtype::F32 => DType::F32,
                    StDtype::F16 => DType::F16,
                    StDtype::BF16 => DType::BF16,
                    other => {
                        return Err(InteropError::invalid(
                            path,
                            format!("tensor {name} has unsupported dtype {other:?}"),
                        ));
                    }
                };
                let desc = TensorDesc {
                    name: name.clone(),
                    dtype,
                    shape: view.shape().iter().map(|&d| d as u64).collect(),
                };
                if &desc != want {
                    return Err(InteropError::invalid(
                        path,
                        format!(
                            "tensor {name} is {:?} {:?}; config.json implies {:?} {:?}",
                            desc.dtype, desc.shape, want.dtype, want.shape
                        ),
                    ));
                }
                if out.insert(name.clone(), (desc, view.data())).is_some() {
                    return Err(InteropError::invalid(
                        path,
                        format!("tensor {name} appears twice"),
                    ));
                }
            }
        }
        if let Some(missing) = known.keys().find(|n| !out.contains_key(**n)) {
            return Err(InteropError::invalid(
                &self.files[0].0,
                format!("the checkpoint lacks tensor {missing}"),
            ));
        }
        Ok(out)
    }
}

/// Genesis weights read from a checkpoint.
struct CheckpointWeights<'a> {
    tensors: &'a TensorIndex<'a>,
}

impl WeightSource for CheckpointWeights<'_> {
    fn tensors(&mut self, group: &TensorGroup) -> Vec<(TensorDesc, Vec<u8>)> {
        group
            .tensors
            .iter()
            .map(|d| {
                let (desc, data) = &self.tensors[&d.name];
                (desc.clone(), data.to_vec())
            })
            .collect()
    }
}

fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, InteropError> {
    let len = fs::metadata(path).map_err(InteropError::io(path))?.len();
    if len > limit {
        return Err(InteropError::invalid(
            path,
            format!("{len} bytes; the limit is {limit}"),
        ));
    }
    fs::read(path).map_err(InteropError::io(path))
}

/// Imports the checkpoint in `dir`.
///
/// Into an empty store it becomes a new network's genesis, signed by `signer`. Into a store
/// whose spec and tokenizer equal the checkpoint's, every tensor group that differs from its
/// current head is appended as a new version (signed by `signer`, stamped `timestamp_ms`), all
/// in one atomic batch. Any other store is refused with [`InteropError::SpecMismatch`].
pub fn import_hf(
    store: &Store,
    dir: &Path,
    signer: &SigningKey,
    timestamp_ms: u64,
) -> Result<ImportOutcome, InteropError> {
    let config_path = dir.join("config.json");
    let config: HfConfig = serde_json::from_slice(&read_limited(&config_path, CONFIG_LEN_MAX)?)
        .map_err(|e| InteropError::invalid(&config_path, e.to_string()))?;
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = read_limited(&tokenizer_path, TOKENIZER_LEN_MAX)?;
    let doc: serde_json::Value = serde_json::from_slice(&tokenizer)
        .map_err(|e| InteropError::invalid(&tokenizer_path, e.to_string()))?;
    if doc.get("model").is_none() {
        return Err(InteropError::invalid(
            &tokenizer_path,
            "not a tokenizer.json: no \"model\"",
        ));
    }
    let spec = config
        .to_spec(Hash::of(&tokenizer))
        .map_err(|reason| InteropError::invalid(&config_path, reason))?;
    let checkpoint = Checkpoint::open(dir)?;
    let tensors = checkpoint.index(&spec)?;
    let meta = MetaPayload { spec, tokenizer };

    let Some((network, current)) = store.meta()? else {
        let blocks = genesis_blocks(&meta, &mut CheckpointWeights { tensors: &tensors }, signer)?;
        let count = blocks.len();
        let network = match init(store, blocks).map_err(InteropError::appending)? {
            InitOutcome::Created { network } | InitOutcome::AlreadyPresent { network } => network,
        };
        return Ok(ImportOutcome::Created {
            network,
            blocks: count,
        });
    };
    if current.spec != meta.spec {
        return Err(InteropError::SpecMismatch {
            reason: spec_difference(&current.spec, &meta.spec),
        });
    }
    if current.tokenizer != meta.tokenizer {
        return Err(InteropError::SpecMismatch {
            reason: "tokenizer.json differs".into(),
        });
    }

    let (mut height, mut prev) = store.head(ChainId::Param)?.ok_or(InteropError::NoModel)?;
    let mut blocks = Vec::new();
    let mut names = Vec::new();
    let mut unchanged = 0;
    for group in meta.spec.groups_in_order() {
        let parts: Vec<(TensorDesc, &[u8])> = group
            .tensors
            .iter()
            .map(|d| {
                let (desc, data) = &tensors[&d.name];
                (desc.clone(), *data)
            })
            .collect();
        let payload = encode_tensors(&parts).map_err(blyan_chain::BlockError::from)?;
        let parent = store
            .group_head(&group.name)?
            .ok_or_else(|| InteropError::SpecMismatch {
                reason: format!("the network has no block for {}", group.name),
            })?;
        let parent_header = store.header(&parent)?.ok_or(InteropError::NoModel)?;
        if parent_header.payload_hash == Hash::of(&payload) {
            unchanged += 1;
            continue;
        }
        height += 1;
        let block = Block::new(
            ChainId::Param,
            height,
            prev,
            vec![network, parent],
            group.kind,
            BlockMeta {
                name: group.name.clone(),
                expert: group.expert,
                tensors: parts.into_iter().map(|(d, _)| d).collect(),
            },
            payload,
            signer,
            timestamp_ms,
        );
        prev = block.hash();
        names.push(group.name.clone());
        blocks.push(block);
    }
    let hashes = store
        .append_batch(blocks)
        .map_err(InteropError::appending)?;
    Ok(ImportOutcome::Updated {
        network,
        versions: names.into_iter().zip(hashes).collect(),
        unchanged,
    })
}

fn spec_difference(a: &ModelSpec, b: &ModelSpec) -> String {
    let (ja, jb) = (
        serde_json::to_value(a).unwrap_or_default(),
        serde_json::to_value(b).unwrap_or_default(),
    );
    if let (Some(ma), Some(mb)) = (ja.as_object(), jb.as_object()) {
        for (k, va) in ma {
            if mb.get(k) != Some(va) {
                return format!("{k}: network has {va}, checkpoint has {}", mb[k]);
            }
        }
    }
    "specs differ".into()
}

/// The verified payload of each tensor group's current head, in layout order.
pub(crate) fn head_payloads(
    store: &Store,
) -> Result<(MetaPayload, Vec<(TensorGroup, Payload)>), InteropError> {
    let (_, meta) = store.meta()?.ok_or(InteropError::NoModel)?;
    let mut out = Vec::new();
    for group in meta.spec.groups_in_order() {
        let head = store
            .group_head(&group.name)?
            .ok_or(InteropError::NoModel)?;
        out.push((group, store.payload_verified(&head)?));
    }
    Ok((meta, out))
}

/// Creates `dir` (or accepts it empty); refuses a directory with content.
pub(crate) fn fresh_dir(dir: &Path) -> Result<(), InteropError> {
    if dir.exists() {
        let mut entries = fs::read_dir(dir).map_err(InteropError::io(dir))?;
        if entries.next().is_some() {
            return Err(InteropError::DestinationNotEmpty { path: dir.into() });
        }
    }
    fs::create_dir_all(dir).map_err(InteropError::io(dir))
}

/// Writes `bytes` to `path` through a temporary name, so a failed export leaves no
/// half-written file under the final name.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), InteropError> {
    let tmp = path.with_extension("partial");
    fs::write(&tmp, bytes).map_err(InteropError::io(&tmp))?;
    fs::rename(&tmp, path).map_err(InteropError::io(path))
}

/// Writes the chain's current model to `dir` as a Hugging Face checkpoint: `config.json`,
/// `tokenizer.json` and one `model.safetensors`. Exporting, importing into an empty store and
/// exporting again gives byte-identical files and the same network.
pub fn export_hf(store: &Store, dir: &Path) -> Result<(), InteropError> {
    let (meta, payloads) = head_payloads(store)?;
    fresh_dir(dir)?;
    let mut sets = Vec::with_capacity(payloads.len());
    for (group, payload) in &payloads {
        let set = TensorSet::parse(payload).map_err(|e| {
            InteropError::invalid(store.dir(), format!("block of {}: {e}", group.name))
        })?;
        sets.push(set);
    }
    let mut views = Vec::new();
    for set in &sets {
        for t in set.tensors() {
            let dtype = match t.dtype {
                DType::F32 => StDtype::F32,
                DType::F16 => StDtype::F16,
                DType::BF16 => StDtype::BF16,
            };
            let view = TensorView::new(dtype, t.shape.clone(), t.data)
                .map_err(|e| InteropError::invalid(store.dir(), e.to_string()))?;
            views.push((t.name.clone(), view));
        }
    }
    let metadata = BTreeMap::from([("format".to_owned(), "pt".to_owned())]);
    let bytes = safetensors::serialize(views, Some(metadata.into_iter().collect()))
        .map_err(|e| InteropError::invalid(store.dir(), e.to_string()))?;
    write_file(&dir.join("model.safetensors"), &bytes)?;
    let mut config = serde_json::to_vec_pretty(&HfConfig::from_spec(&meta.spec))
        .map_err(|e| InteropError::invalid(dir, e.to_string()))?;
    config.push(b'\n');
    write_file(&dir.join("config.json"), &config)?;
    write_file(&dir.join("tokenizer.json"), &meta.tokenizer)?;
    Ok(())
}

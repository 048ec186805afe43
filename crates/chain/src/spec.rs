//! The model spec carried by the meta chain, and the tensor layout it implies.
//!
//! Tensor names follow the Hugging Face Mixtral layout. The parameter chain stores one block
//! per *tensor group*: the embeddings, each layer's attention, each layer's two norms, each
//! layer's router, each expert, the final norm and the LM head.

use std::collections::BTreeMap;

use blyan_primitives::{ExpertId, Hash, codec};
use blyan_tensor::{DType, TensorDesc};
use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

use crate::{BlockError, BlockKind, PAYLOAD_LEN_MAX};

/// Limits on a spec, so that a hostile spec cannot make the layout enormous.
const LAYERS_MAX: u16 = 256;
const EXPERTS_MAX: u16 = 256;
const VOCAB_MAX: u32 = 1 << 20;
const DIM_MAX: u32 = 1 << 16;

/// A Mixtral-style sparse MoE decoder, in Hugging Face `config.json` terms.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct ModelSpec {
    /// Always `"mixtral"` for now.
    pub architecture: String,
    /// Rows of the embedding and LM head.
    pub vocab_size: u32,
    /// Model width `d`.
    pub hidden_size: u32,
    /// Width of each expert's SwiGLU hidden layer.
    pub intermediate_size: u32,
    /// Decoder layers.
    pub num_hidden_layers: u16,
    /// Query heads.
    pub num_attention_heads: u16,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: u16,
    /// Experts per layer.
    pub num_local_experts: u16,
    /// Experts each token is routed to.
    pub num_experts_per_tok: u16,
    /// Longest context in tokens.
    pub max_position_embeddings: u32,
    /// RoPE base.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// Element type of every parameter tensor.
    pub dtype: DType,
    /// Beginning-of-sequence token id.
    pub bos_token_id: u32,
    /// End-of-sequence token id.
    pub eos_token_id: u32,
    /// SHA-256 of the tokenizer bytes carried beside the spec.
    pub tokenizer_hash: Hash,
}

impl ModelSpec {
    /// The genesis architecture: 4 layers of 8 experts, top-2, d = 256, for 2 CPU cores.
    pub fn genesis(tokenizer_hash: Hash) -> ModelSpec {
        ModelSpec {
            architecture: "mixtral".into(),
            vocab_size: 4096,
            hidden_size: 256,
            intermediate_size: 512,
            num_hidden_layers: 4,
            num_attention_heads: 8,
            num_key_value_heads: 2,
            num_local_experts: 8,
            num_experts_per_tok: 2,
            max_position_embeddings: 1024,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-5,
            dtype: DType::F32,
            bos_token_id: 256,
            eos_token_id: 257,
            tokenizer_hash,
        }
    }

    /// A model small enough for tests and store benchmarks: 1 layer of 2 experts, d = 8.
    pub fn tiny(tokenizer_hash: Hash) -> ModelSpec {
        ModelSpec {
            vocab_size: 300,
            hidden_size: 8,
            intermediate_size: 16,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            num_local_experts: 2,
            num_experts_per_tok: 1,
            max_position_embeddings: 64,
            ..ModelSpec::genesis(tokenizer_hash)
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> u32 {
        self.hidden_size / u32::from(self.num_attention_heads.max(1))
    }

    /// Checks internal consistency and limits.
    pub fn check(&self) -> Result<(), BlockError> {
        let bad = |detail: String| Err(BlockError::InvalidSpec { detail });
        if self.architecture != "mixtral" {
            return bad(format!(
                "architecture {:?} is not \"mixtral\"",
                self.architecture
            ));
        }
        if !(1..=LAYERS_MAX).contains(&self.num_hidden_layers) {
            return bad(format!("num_hidden_layers must be 1..={LAYERS_MAX}"));
        }
        if !(1..=EXPERTS_MAX).contains(&self.num_local_experts) {
            return bad(format!("num_local_experts must be 1..={EXPERTS_MAX}"));
        }
        if !(1..=self.num_local_experts).contains(&self.num_experts_per_tok) {
            return bad("num_experts_per_tok must be 1..=num_local_experts".into());
        }
        if !(1..=VOCAB_MAX).contains(&self.vocab_size) {
            return bad(format!("vocab_size must be 1..={VOCAB_MAX}"));
        }
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if !(1..=DIM_MAX).contains(&v) {
                return bad(format!("{name} must be 1..={DIM_MAX}"));
            }
        }
        let (heads, kv) = (
            u32::from(self.num_attention_heads),
            u32::from(self.num_key_value_heads),
        );
        if heads == 0
            || kv == 0
            || !self.hidden_size.is_multiple_of(heads)
            || !heads.is_multiple_of(kv)
        {
            return bad(
                "hidden_size must divide into heads, and heads into key/value heads".into(),
            );
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad("head_dim must be even for RoPE".into());
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad("rope_theta must be finite and positive".into());
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return bad("rms_norm_eps must be finite and positive".into());
        }
        if self.bos_token_id >= self.vocab_size || self.eos_token_id >= self.vocab_size {
            return bad("bos and eos token ids must be below vocab_size".into());
        }
        for group in self.layout().values() {
            let bytes: u64 = group.tensors.iter().filter_map(TensorDesc::byte_len).sum();
            if bytes > PAYLOAD_LEN_MAX {
                return bad(format!(
                    "tensor group {} would exceed the payload limit",
                    group.name
                ));
            }
        }
        Ok(())
    }

    /// Every tensor group of the model, keyed by block name.
    pub fn layout(&self) -> BTreeMap<String, TensorGroup> {
        let (d, ffn, vocab) = (
            u64::from(self.hidden_size),
            u64::from(self.intermediate_size),
            u64::from(self.vocab_size),
        );
        let kv_dim = u64::from(self.num_key_value_heads) * u64::from(self.head_dim());
        let t = |name: String, shape: Vec<u64>| TensorDesc {
            name,
            dtype: self.dtype,
            shape,
        };
        let mut groups = Vec::new();
        groups.push(TensorGroup::dense(
            "model.embed_tokens",
            vec![t("model.embed_tokens.weight".into(), vec![vocab, d])],
        ));
        for l in 0..self.num_hidden_layers {
            let p = format!("model.layers.{l}");
            groups.push(TensorGroup::dense(
                &format!("{p}.self_attn"),
                vec![
                    t(format!("{p}.self_attn.q_proj.weight"), vec![d, d]),
                    t(format!("{p}.self_attn.k_proj.weight"), vec![kv_dim, d]),
                    t(format!("{p}.self_attn.v_proj.weight"), vec![kv_dim, d]),
                    t(format!("{p}.self_attn.o_proj.weight"), vec![d, d]),
                ],
            ));
            groups.push(TensorGroup::dense(
                &format!("{p}.norms"),
                vec![
                    t(format!("{p}.input_layernorm.weight"), vec![d]),
                    t(format!("{p}.post_attention_layernorm.weight"), vec![d]),
                ],
            ));
            let gate = format!("{p}.block_sparse_moe.gate");
            groups.push(TensorGroup {
                kind: BlockKind::Router,
                expert: None,
                tensors: vec![t(
                    format!("{gate}.weight"),
                    vec![u64::from(self.num_local_experts), d],
                )],
                name: gate,
            });
            for e in 0..self.num_local_experts {
                let name = expert_group_name(ExpertId::new(l, e));
                groups.push(TensorGroup {
                    kind: BlockKind::Expert,
                    expert: Some(ExpertId::new(l, e)),
                    tensors: vec![
                        t(format!("{name}.w1.weight"), vec![ffn, d]),
                        t(format!("{name}.w2.weight"), vec![d, ffn]),
                        t(format!("{name}.w3.weight"), vec![ffn, d]),
                    ],
                    name,
                });
            }
        }
        groups.push(TensorGroup::dense(
            "model.norm",
            vec![t("model.norm.weight".into(), vec![d])],
        ));
        groups.push(TensorGroup::dense(
            "lm_head",
            vec![t("lm_head.weight".into(), vec![vocab, d])],
        ));
        groups
            .into_iter()
            .map(|mut g| {
                g.tensors.sort_by(|a, b| a.name.cmp(&b.name));
                (g.name.clone(), g)
            })
            .collect()
    }

    /// The groups in the order genesis writes them: embeddings, then layer by layer
    /// (attention, norms, router, experts), then the final norm and the LM head.
    pub fn groups_in_order(&self) -> Vec<TensorGroup> {
        let mut layout = self.layout();
        let mut names = vec!["model.embed_tokens".to_owned()];
        for l in 0..self.num_hidden_layers {
            let p = format!("model.layers.{l}");
            names.push(format!("{p}.self_attn"));
            names.push(format!("{p}.norms"));
            names.push(format!("{p}.block_sparse_moe.gate"));
            names.extend(
                (0..self.num_local_experts).map(|e| expert_group_name(ExpertId::new(l, e))),
            );
        }
        names.push("model.norm".into());
        names.push("lm_head".into());
        names.iter().filter_map(|n| layout.remove(n)).collect()
    }
}

/// The block name of an expert's tensor group.
pub fn expert_group_name(id: ExpertId) -> String {
    format!(
        "model.layers.{}.block_sparse_moe.experts.{}",
        id.layer, id.expert
    )
}

/// The expert whose tensor group is `name`, if it is an expert's ([`expert_group_name`]
/// read back).
pub fn expert_of_group(name: &str) -> Option<ExpertId> {
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, expert) = rest.split_once(".block_sparse_moe.experts.")?;
    let id = ExpertId {
        layer: layer.parse().ok()?,
        expert: expert.parse().ok()?,
    };
    // Only the canonical spelling (no leading zeros or signs) names the group.
    (expert_group_name(id) == name).then_some(id)
}

/// One parameter block's worth of tensors, as the spec expects them.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TensorGroup {
    /// Block name.
    pub name: String,
    /// Block kind.
    pub kind: BlockKind,
    /// The expert, for expert groups.
    pub expert: Option<ExpertId>,
    /// Expected tensors, sorted by name.
    pub tensors: Vec<TensorDesc>,
}

impl TensorGroup {
    fn dense(name: &str, tensors: Vec<TensorDesc>) -> TensorGroup {
        TensorGroup {
            name: name.to_owned(),
            kind: BlockKind::Dense,
            expert: None,
            tensors,
        }
    }
}

/// The payload of a spec block: the spec and the tokenizer it names.
#[derive(Clone, PartialEq, Debug, BorshSerialize, BorshDeserialize)]
pub struct MetaPayload {
    /// The model spec.
    pub spec: ModelSpec,
    /// The tokenizer, as a Hugging Face `tokenizer.json` document.
    pub tokenizer: Vec<u8>,
}

impl MetaPayload {
    /// Canonical bytes; fails if the spec is inconsistent.
    pub fn encode(&self) -> Result<Vec<u8>, BlockError> {
        self.check()?;
        Ok(codec::encode(self))
    }

    /// Decodes and checks a spec payload.
    pub fn decode(bytes: &[u8]) -> Result<MetaPayload, BlockError> {
        let payload: MetaPayload = codec::decode(bytes, PAYLOAD_LEN_MAX as usize).map_err(|e| {
            BlockError::MalformedPayload {
                reason: e.to_string(),
            }
        })?;
        payload.check()?;
        Ok(payload)
    }

    /// Checks the spec and that it names this tokenizer.
    pub fn check(&self) -> Result<(), BlockError> {
        self.spec.check()?;
        let actual = Hash::of(&self.tokenizer);
        if actual != self.spec.tokenizer_hash {
            return Err(BlockError::InvalidSpec {
                detail: format!(
                    "tokenizer hash is {actual}, spec says {}",
                    self.spec.tokenizer_hash
                ),
            });
        }
        Ok(())
    }
}

/// The byte-level BPE tokenizer with no merges: every byte is a token (ids 0..256), then
/// `<s>` (256) and `</s>` (257). It round-trips any text exactly; the trained tokenizer of
/// the training work replaces it.
pub fn byte_level_tokenizer_json() -> Vec<u8> {
    let vocab: serde_json::Map<String, serde_json::Value> = (0u8..=255)
        .map(|b| (byte_level_char(b).to_string(), serde_json::Value::from(b)))
        .collect();
    let special = |id: u32, content: &str| {
        serde_json::json!({
            "id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        })
    };
    let byte_level = serde_json::json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
    });
    let doc = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(256, "<s>"), special(257, "</s>")],
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": null,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": []
        }
    });
    serde_json::to_vec(&doc).expect("serialising a JSON value is infallible")
}

/// The printable character GPT-2's byte-level scheme assigns to a byte: printable Latin-1
/// bytes stand for themselves; the others are shifted past U+0100 in order.
fn byte_level_char(b: u8) -> char {
    let printable = |x: u8| matches!(x, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return char::from(b);
    }
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + rank).expect("U+0100..U+0144 are valid scalar values")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expert_groups_read_back_to_their_expert() {
        for (layer, expert) in [(0, 0), (3, 7), (65_535, 12)] {
            let id = ExpertId { layer, expert };
            assert_eq!(expert_of_group(&expert_group_name(id)), Some(id));
        }
        for name in [
            "model.layers.1.self_attn",
            "model.layers.01.block_sparse_moe.experts.2",
            "model.layers.1.block_sparse_moe.experts.+2",
            "model.layers.1.block_sparse_moe.experts.70000",
            "model.layers.1.block_sparse_moe.gate",
        ] {
            assert_eq!(expert_of_group(name), None, "{name}");
        }
    }

    #[test]
    fn genesis_spec_is_consistent() {
        let tok = byte_level_tokenizer_json();
        let spec = ModelSpec::genesis(Hash::of(&tok));
        spec.check().unwrap();
        let layout = spec.layout();
        // embed + 4 × (attn, norms, router, 8 experts) + final norm + LM head
        assert_eq!(layout.len(), 1 + 4 * 11 + 2);
        assert_eq!(spec.groups_in_order().len(), layout.len());
        let expert = &layout[&expert_group_name(ExpertId::new(2, 5))];
        assert_eq!(expert.expert, Some(ExpertId::new(2, 5)));
        assert_eq!(
            expert.tensors[1].name,
            "model.layers.2.block_sparse_moe.experts.5.w2.weight"
        );
        assert_eq!(expert.tensors[1].shape, [256, 512]);
        let attn = &layout["model.layers.0.self_attn"];
        assert_eq!(
            attn.tensors
                .iter()
                .find(|t| t.name.ends_with("k_proj.weight"))
                .unwrap()
                .shape,
            [64, 256]
        );
        let payload = MetaPayload {
            spec,
            tokenizer: tok,
        };
        assert_eq!(
            MetaPayload::decode(&payload.encode().unwrap()).unwrap(),
            payload
        );
    }

    #[test]
    fn inconsistent_specs_are_refused() {
        let good = ModelSpec::genesis(Hash::ZERO);
        let cases: [fn(&mut ModelSpec); 7] = [
            |s| s.num_experts_per_tok = 9,
            |s| s.num_key_value_heads = 3,
            |s| s.hidden_size = 0,
            |s| s.rope_theta = f32::NAN,
            |s| s.bos_token_id = 5000,
            |s| s.architecture = "llama".into(),
            |s| s.num_hidden_layers = 1000,
        ];
        for mutate in cases {
            let mut s = good.clone();
            mutate(&mut s);
            assert!(
                matches!(s.check(), Err(BlockError::InvalidSpec { .. })),
                "{s:?}"
            );
        }
        let wrong_tokenizer = MetaPayload {
            spec: good,
            tokenizer: b"{}".to_vec(),
        };
        assert!(wrong_tokenizer.encode().is_err());
    }

    #[test]
    fn byte_level_alphabet_is_a_bijection() {
        let chars: std::collections::BTreeSet<char> = (0u8..=255).map(byte_level_char).collect();
        assert_eq!(chars.len(), 256);
        assert_eq!(byte_level_char(b'A'), 'A');
        assert_eq!(byte_level_char(b' '), '\u{120}');
        assert_eq!(byte_level_char(0), '\u{100}');
    }
}

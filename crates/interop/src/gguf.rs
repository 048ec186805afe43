//! GGUF export: the chain's current model as a llama.cpp-loadable Mixtral.
//!
//! llama.cpp runs Mixtral as its `llama` architecture with stacked expert tensors
//! (`blk.N.ffn_{gate,up,down}_exps.weight`). Its RoPE rotates adjacent pairs, while the
//! Hugging Face layout rotates the two halves of each head, so the rows of `q_proj` and
//! `k_proj` are permuted within each head on export (pair `(i, i + half)` moves to
//! `(2i, 2i + 1)`), exactly as llama.cpp's own converter does.

use std::path::Path;

use blyan_chain::{Store, spec::ModelSpec};
use blyan_tensor::{Q8_0_BLOCK_LEN, TensorSet, quantize_q8_0};

use crate::{
    InteropError,
    hf::{head_payloads, write_file},
};

/// GGUF format version written.
const GGUF_VERSION: u32 = 3;
/// Alignment of the tensor data section and of every tensor in it.
const ALIGNMENT: usize = 32;

/// Encoding of the weight matrices in the exported file. Norms and routers are always f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufType {
    /// 32-bit floats.
    F32,
    /// Q8_0 blocks.
    Q8_0,
}

impl GgufType {
    /// The `ggml_type` id.
    fn ggml_type(self) -> u32 {
        match self {
            GgufType::F32 => 0,
            GgufType::Q8_0 => 8,
        }
    }

    /// `general.file_type`: all f32, or mostly Q8_0.
    fn file_type(self) -> u32 {
        match self {
            GgufType::F32 => 0,
            GgufType::Q8_0 => 7,
        }
    }
}

/// One tensor of the file: name, row-major shape, encoding and encoded bytes.
struct GgufTensor {
    name: String,
    shape: Vec<usize>,
    ty: GgufType,
    data: Vec<u8>,
}

impl GgufTensor {
    fn new(name: String, shape: Vec<usize>, values: &[f32], ty: GgufType) -> GgufTensor {
        let inner = shape.last().copied().unwrap_or(0);
        // Vectors, and matrices whose rows are not whole Q8_0 blocks, stay f32.
        let ty = if shape.len() < 2 || !inner.is_multiple_of(Q8_0_BLOCK_LEN) {
            GgufType::F32
        } else {
            ty
        };
        let data = match ty {
            GgufType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            GgufType::Q8_0 => {
                let mut out = Vec::new();
                quantize_q8_0(values, &mut out);
                out
            }
        };
        GgufTensor {
            name,
            shape,
            ty,
            data,
        }
    }
}

/// Metadata values.
enum Value {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

/// Writes the chain's current model to `path` as GGUF.
pub fn export_gguf(store: &Store, path: &Path, ty: GgufType) -> Result<(), InteropError> {
    let (meta, payloads) = head_payloads(store)?;
    let spec = &meta.spec;
    let mut values = std::collections::HashMap::new();
    for (group, payload) in &payloads {
        let set = TensorSet::parse(payload).map_err(|e| {
            InteropError::invalid(store.dir(), format!("block of {}: {e}", group.name))
        })?;
        for t in set.tensors() {
            values.insert(t.name.clone(), (t.shape.clone(), t.to_f32()));
        }
    }
    // Each tensor is used once, so it is moved out rather than copied.
    let mut take = |name: &str| {
        values
            .remove(name)
            .ok_or_else(|| InteropError::invalid(store.dir(), format!("no tensor {name}")))
    };

    let mut tensors = Vec::new();
    let (shape, v) = take("model.embed_tokens.weight")?;
    tensors.push(GgufTensor::new("token_embd.weight".into(), shape, &v, ty));
    let hd = spec.head_dim() as usize;
    for l in 0..usize::from(spec.num_hidden_layers) {
        let p = format!("model.layers.{l}");
        let b = format!("blk.{l}");
        let (shape, v) = take(&format!("{p}.input_layernorm.weight"))?;
        tensors.push(GgufTensor::new(
            format!("{b}.attn_norm.weight"),
            shape,
            &v,
            ty,
        ));
        for (hf, gg, heads) in [
            (
                "q_proj",
                "attn_q",
                Some(usize::from(spec.num_attention_heads)),
            ),
            (
                "k_proj",
                "attn_k",
                Some(usize::from(spec.num_key_value_heads)),
            ),
            ("v_proj", "attn_v", None),
            ("o_proj", "attn_output", None),
        ] {
            let (shape, mut v) = take(&format!("{p}.self_attn.{hf}.weight"))?;
            if let Some(heads) = heads {
                v = interleave_rope_rows(&v, heads, hd, shape[1]);
            }
            tensors.push(GgufTensor::new(format!("{b}.{gg}.weight"), shape, &v, ty));
        }
        let (shape, v) = take(&format!("{p}.post_attention_layernorm.weight"))?;
        tensors.push(GgufTensor::new(
            format!("{b}.ffn_norm.weight"),
            shape,
            &v,
            ty,
        ));
        let (shape, v) = take(&format!("{p}.block_sparse_moe.gate.weight"))?;
        tensors.push(GgufTensor::new(
            format!("{b}.ffn_gate_inp.weight"),
            shape,
            &v,
            GgufType::F32,
        ));
        for (w, gg) in [
            ("w1", "ffn_gate_exps"),
            ("w2", "ffn_down_exps"),
            ("w3", "ffn_up_exps"),
        ] {
            let mut stacked = Vec::new();
            let mut inner = Vec::new();
            for e in 0..spec.num_local_experts {
                let (shape, v) = take(&format!("{p}.block_sparse_moe.experts.{e}.{w}.weight"))?;
                inner = shape;
                stacked.extend(v);
            }
            let mut shape = vec![usize::from(spec.num_local_experts)];
            shape.extend(inner);
            tensors.push(GgufTensor::new(
                format!("{b}.{gg}.weight"),
                shape,
                &stacked,
                ty,
            ));
        }
    }
    let (shape, v) = take("model.norm.weight")?;
    tensors.push(GgufTensor::new("output_norm.weight".into(), shape, &v, ty));
    let (shape, v) = take("lm_head.weight")?;
    tensors.push(GgufTensor::new("output.weight".into(), shape, &v, ty));

    let mut kv = model_metadata(spec, ty);
    kv.extend(
        tokenizer_metadata(spec, &meta.tokenizer)
            .map_err(|reason| InteropError::invalid(store.dir(), format!("tokenizer: {reason}")))?,
    );
    write_file(path, &encode(&kv, &tensors))?;
    Ok(())
}

/// Reorders the rows of a `[heads · head_dim, cols]` projection from half-split RoPE pairs
/// to adjacent pairs: new row `2i + j` of a head is old row `j · half + i`.
fn interleave_rope_rows(v: &[f32], heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0f32; v.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let from = (h * head_dim + j * half + i) * cols;
                let to = (h * head_dim + 2 * i + j) * cols;
                out[to..to + cols].copy_from_slice(&v[from..from + cols]);
            }
        }
    }
    out
}

fn model_metadata(spec: &ModelSpec, ty: GgufType) -> Vec<(String, Value)> {
    let a = "llama";
    vec![
        ("general.architecture".into(), Value::Str(a.into())),
        ("general.name".into(), Value::Str("blyan".into())),
        ("general.alignment".into(), Value::U32(ALIGNMENT as u32)),
        ("general.file_type".into(), Value::U32(ty.file_type())),
        (format!("{a}.vocab_size"), Value::U32(spec.vocab_size)),
        (
            format!("{a}.context_length"),
            Value::U32(spec.max_position_embeddings),
        ),
        (
            format!("{a}.embedding_length"),
            Value::U32(spec.hidden_size),
        ),
        (
            format!("{a}.block_count"),
            Value::U32(u32::from(spec.num_hidden_layers)),
        ),
        (
            format!("{a}.feed_forward_length"),
            Value::U32(spec.intermediate_size),
        ),
        (
            format!("{a}.attention.head_count"),
            Value::U32(u32::from(spec.num_attention_heads)),
        ),
        (
            format!("{a}.attention.head_count_kv"),
            Value::U32(u32::from(spec.num_key_value_heads)),
        ),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(spec.rms_norm_eps),
        ),
        (format!("{a}.rope.freq_base"), Value::F32(spec.rope_theta)),
        (
            format!("{a}.rope.dimension_count"),
            Value::U32(spec.head_dim()),
        ),
        (
            format!("{a}.expert_count"),
            Value::U32(u32::from(spec.num_local_experts)),
        ),
        (
            format!("{a}.expert_used_count"),
            Value::U32(u32::from(spec.num_experts_per_tok)),
        ),
    ]
}

/// The GPT-2-style BPE vocabulary of a `tokenizer.json`, padded to the model's vocabulary.
fn tokenizer_metadata(spec: &ModelSpec, json: &[u8]) -> Result<Vec<(String, Value)>, String> {
    const NORMAL: i32 = 1;
    const CONTROL: i32 = 3;
    const UNUSED: i32 = 5;
    let doc: serde_json::Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let model = &doc["model"];
    if model["type"] != "BPE" {
        return Err(format!("model type {} is not BPE", model["type"]));
    }
    let n = spec.vocab_size as usize;
    let mut tokens: Vec<Option<String>> = vec![None; n];
    let mut types = vec![UNUSED; n];
    let vocab = model["vocab"].as_object().ok_or("no vocab")?;
    for (token, id) in vocab {
        let id = id.as_u64().ok_or("vocab id is not a number")? as usize;
        if id >= n {
            return Err(format!(
                "token id {id} is beyond the model's vocabulary of {n}"
            ));
        }
        tokens[id] = Some(token.clone());
        types[id] = NORMAL;
    }
    for added in doc["added_tokens"].as_array().into_iter().flatten() {
        let id = added["id"].as_u64().ok_or("added token id")? as usize;
        let content = added["content"].as_str().ok_or("added token content")?;
        if id >= n {
            return Err(format!(
                "token id {id} is beyond the model's vocabulary of {n}"
            ));
        }
        tokens[id] = Some(content.to_owned());
        types[id] = if added["special"] == true {
            CONTROL
        } else {
            NORMAL
        };
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]")))
        .collect();
    let merges: Vec<String> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Array(pair) if pair.len() == 2 => Ok(format!(
                "{} {}",
                pair[0].as_str().unwrap_or_default(),
                pair[1].as_str().unwrap_or_default()
            )),
            _ => Err("a merge is neither \"a b\" nor [a, b]".to_owned()),
        })
        .collect::<Result<_, _>>()?;
    Ok(vec![
        ("tokenizer.ggml.model".into(), Value::Str("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::Str("default".into())),
        ("tokenizer.ggml.tokens".into(), Value::Strs(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::I32s(types)),
        ("tokenizer.ggml.merges".into(), Value::Strs(merges)),
        (
            "tokenizer.ggml.bos_token_id".into(),
            Value::U32(spec.bos_token_id),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32(spec.eos_token_id),
        ),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
    ])
}

/// The whole file: header, metadata, tensor infos, then the aligned tensor data.
fn encode(kv: &[(String, Value)], tensors: &[GgufTensor]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&GGUF_VERSION.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(kv.len() as u64).to_le_bytes());
    let string = |out: &mut Vec<u8>, s: &str| {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    for (key, value) in kv {
        string(&mut out, key);
        match value {
            Value::U32(v) => {
                out.extend_from_slice(&4u32.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
            Value::F32(v) => {
                out.extend_from_slice(&6u32.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
            Value::Bool(v) => {
                out.extend_from_slice(&7u32.to_le_bytes());
                out.push(u8::from(*v));
            }
            Value::Str(s) => {
                out.extend_from_slice(&8u32.to_le_bytes());
                string(&mut out, s);
            }
            Value::Strs(items) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&8u32.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for s in items {
                    string(&mut out, s);
                }
            }
            Value::I32s(items) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&5u32.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for v in items {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    let mut offset = 0usize;
    for t in tensors {
        string(&mut out, &t.name);
        out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        // GGUF lists dimensions innermost first.
        for &d in t.shape.iter().rev() {
            out.extend_from_slice(&(d as u64).to_le_bytes());
        }
        out.extend_from_slice(&t.ty.ggml_type().to_le_bytes());
        out.extend_from_slice(&(offset as u64).to_le_bytes());
        offset += t.data.len().next_multiple_of(ALIGNMENT);
    }
    out.resize(out.len().next_multiple_of(ALIGNMENT), 0);
    for t in tensors {
        out.extend_from_slice(&t.data);
        out.resize(out.len().next_multiple_of(ALIGNMENT), 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_rows_are_interleaved_per_head() {
        // 2 heads of 4 rows, 1 column: rows numbered by value.
        let v: Vec<f32> = (0..8).map(|x| x as f32).collect();
        assert_eq!(
            interleave_rope_rows(&v, 2, 4, 1),
            [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]
        );
    }
}

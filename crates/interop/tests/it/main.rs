//! Integration tests of Hugging Face import/export and GGUF export on a small network.

#![allow(clippy::unwrap_used)]

use std::{collections::HashMap, fs, path::Path};

use blyan_chain::{
    ChainId, Store,
    genesis::{RandomWeights, genesis_blocks, init},
    spec::{MetaPayload, ModelSpec, byte_level_tokenizer_json},
};
use blyan_interop::{GgufType, ImportOutcome, export_gguf, export_hf, import_hf};
use blyan_primitives::{Hash, SigningKey, address_of};
use safetensors::{SafeTensors, tensor::TensorView};

fn small_meta() -> MetaPayload {
    let tokenizer = byte_level_tokenizer_json();
    let spec = ModelSpec {
        vocab_size: 320,
        hidden_size: 64,
        intermediate_size: 96,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        num_local_experts: 3,
        num_experts_per_tok: 2,
        max_position_embeddings: 128,
        ..ModelSpec::genesis(Hash::of(&tokenizer))
    };
    MetaPayload { spec, tokenizer }
}

/// The key that signs the test networks.
fn key() -> SigningKey {
    SigningKey::from_slice(&[3; 32]).unwrap()
}

fn network() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("chain")).unwrap();
    init(
        &store,
        genesis_blocks(&small_meta(), &mut RandomWeights { seed: 3 }, &key()).unwrap(),
    )
    .unwrap();
    (dir, store)
}

fn empty_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("chain")).unwrap();
    (dir, store)
}

/// Rewrites `dir/model.safetensors` after `edit` changes the tensors (name → f32 values).
fn edit_checkpoint(dir: &Path, edit: impl FnOnce(&mut HashMap<String, (Vec<usize>, Vec<f32>)>)) {
    let bytes = fs::read(dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: HashMap<String, (Vec<usize>, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            let values = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (n, (v.shape().to_vec(), values))
        })
        .collect();
    edit(&mut tensors);
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, (s, v))| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
}

#[test]
fn export_import_export_is_bit_identical_and_recreates_the_network() {
    let (_a, store) = network();
    let out = tempfile::tempdir().unwrap();
    let first = out.path().join("first");
    export_hf(&store, &first).unwrap();

    let (_b, fresh) = empty_store();
    let outcome = import_hf(&fresh, &first, &key(), 0).unwrap();
    let network = store.meta().unwrap().unwrap().0;
    assert_eq!(
        outcome,
        ImportOutcome::Created {
            network,
            blocks: store.len().unwrap() as usize
        }
    );
    for group in small_meta().spec.layout().keys() {
        assert_eq!(
            fresh.group_head(group).unwrap(),
            store.group_head(group).unwrap()
        );
    }
    let second = out.path().join("second");
    export_hf(&fresh, &second).unwrap();
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert_eq!(
            fs::read(first.join(file)).unwrap(),
            fs::read(second.join(file)).unwrap(),
            "{file}"
        );
    }
    // Importing the unchanged checkpoint into its own network changes nothing.
    match import_hf(&store, &first, &key(), 0).unwrap() {
        ImportOutcome::Updated {
            versions,
            unchanged,
            ..
        } => assert_eq!((versions.len(), unchanged), (0, 15)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_changed_expert_becomes_one_new_version() {
    let (_a, store) = network();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("ckpt");
    export_hf(&store, &dir).unwrap();
    let name = "model.layers.1.block_sparse_moe.experts.2.w2.weight";
    edit_checkpoint(&dir, |t| t.get_mut(name).unwrap().1[5] += 0.5);
    let before = store.len().unwrap();
    let old_head = store
        .group_head("model.layers.1.block_sparse_moe.experts.2")
        .unwrap()
        .unwrap();
    let ts = store
        .header(&store.head(ChainId::Param).unwrap().unwrap().1)
        .unwrap()
        .unwrap()
        .timestamp_ms
        + 1;
    let importer = SigningKey::from_slice(&[5; 32]).unwrap();
    let outcome = import_hf(&store, &dir, &importer, ts).unwrap();
    let ImportOutcome::Updated {
        versions,
        unchanged,
        ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].0, "model.layers.1.block_sparse_moe.experts.2");
    assert_eq!(unchanged, 14);
    assert_eq!(store.len().unwrap(), before + 1);
    let head = store
        .group_head("model.layers.1.block_sparse_moe.experts.2")
        .unwrap()
        .unwrap();
    assert_eq!(head, versions[0].1);
    let header = store.header(&head).unwrap().unwrap();
    assert_eq!(header.author, address_of(&importer));
    assert!(
        store
            .header(&head)
            .unwrap()
            .unwrap()
            .depends_on
            .contains(&old_head)
    );
}

#[test]
fn bad_checkpoints_are_refused_and_nothing_is_written() {
    let (_a, store) = network();
    let out = tempfile::tempdir().unwrap();
    let base = out.path().join("base");
    export_hf(&store, &base).unwrap();
    let before = store.len().unwrap();
    let variant = |tag: &str, edit: &dyn Fn(&Path)| {
        let dir = out.path().join(tag);
        fs::create_dir_all(&dir).unwrap();
        for f in ["config.json", "tokenizer.json", "model.safetensors"] {
            fs::copy(base.join(f), dir.join(f)).unwrap();
        }
        edit(&dir);
        dir
    };
    let cases: Vec<(&str, std::path::PathBuf, &str)> = vec![
        (
            "nan",
            variant("nan", &|d| {
                edit_checkpoint(d, |t| {
                    t.get_mut("model.layers.0.self_attn.q_proj.weight")
                        .unwrap()
                        .1[0] = f32::NAN;
                })
            }),
            "block_refused",
        ),
        (
            "missing",
            variant("missing", &|d| {
                edit_checkpoint(d, |t| {
                    t.remove("lm_head.weight");
                })
            }),
            "invalid_input",
        ),
        (
            "unknown",
            variant("unknown", &|d| {
                edit_checkpoint(d, |t| {
                    t.insert("model.secret.weight".into(), (vec![2], vec![1.0, 2.0]));
                })
            }),
            "invalid_input",
        ),
        (
            "config-garbage",
            variant("config-garbage", &|d| {
                fs::write(d.join("config.json"), b"{\"model_type\": 7").unwrap()
            }),
            "invalid_input",
        ),
        (
            "rope",
            variant("rope", &|d| {
                let c = fs::read_to_string(d.join("config.json")).unwrap();
                fs::write(d.join("config.json"), c.replace("10000.0", "500000.0")).unwrap()
            }),
            "spec_mismatch",
        ),
        (
            "wrong-arch",
            variant("wrong-arch", &|d| {
                let c = fs::read_to_string(d.join("config.json")).unwrap();
                fs::write(d.join("config.json"), c.replace("\"mixtral\"", "\"llama\"")).unwrap()
            }),
            "invalid_input",
        ),
        (
            "no-tokenizer",
            variant("no-tokenizer", &|d| {
                fs::remove_file(d.join("tokenizer.json")).unwrap()
            }),
            "io",
        ),
    ];
    for (tag, dir, code) in cases {
        let err = import_hf(&store, &dir, &key(), u64::MAX / 2).unwrap_err();
        assert_eq!(err.code(), code, "{tag}: {err}");
        assert_eq!(store.len().unwrap(), before, "{tag}: nothing written");
    }
    let err = export_hf(&store, &base).unwrap_err();
    assert_eq!(err.code(), "destination_not_empty");
}

/// A minimal GGUF reader for the test: metadata keys and tensor infos with their data.
struct Gguf {
    keys: Vec<String>,
    tensors: HashMap<String, (Vec<u64>, u32, Vec<u8>)>,
}

fn read_gguf(bytes: &[u8]) -> Gguf {
    let mut pos = 0usize;
    let mut take = |n: usize| {
        let s = &bytes[pos..pos + n];
        pos += n;
        s
    };
    assert_eq!(take(4), b"GGUF");
    assert_eq!(u32::from_le_bytes(take(4).try_into().unwrap()), 3);
    let n_tensors = u64::from_le_bytes(take(8).try_into().unwrap());
    let n_kv = u64::from_le_bytes(take(8).try_into().unwrap());
    fn string(take: &mut dyn FnMut(usize) -> Vec<u8>) -> String {
        let n = u64::from_le_bytes(take(8).try_into().unwrap()) as usize;
        String::from_utf8(take(n)).unwrap()
    }
    let mut take_vec = |n: usize| take(n).to_vec();
    let mut keys = Vec::new();
    fn skip_value(ty: u32, take: &mut dyn FnMut(usize) -> Vec<u8>) {
        match ty {
            4..=6 => {
                take(4);
            }
            7 => {
                take(1);
            }
            8 => {
                string(take);
            }
            9 => {
                let elem = u32::from_le_bytes(take(4).try_into().unwrap());
                let n = u64::from_le_bytes(take(8).try_into().unwrap());
                for _ in 0..n {
                    skip_value(elem, take);
                }
            }
            other => panic!("type {other}"),
        }
    }
    for _ in 0..n_kv {
        keys.push(string(&mut take_vec));
        let ty = u32::from_le_bytes(take_vec(4).try_into().unwrap());
        skip_value(ty, &mut take_vec);
    }
    let mut infos = Vec::new();
    for _ in 0..n_tensors {
        let name = string(&mut take_vec);
        let dims = u32::from_le_bytes(take_vec(4).try_into().unwrap());
        let shape: Vec<u64> = (0..dims)
            .map(|_| u64::from_le_bytes(take_vec(8).try_into().unwrap()))
            .collect();
        let ty = u32::from_le_bytes(take_vec(4).try_into().unwrap());
        let offset = u64::from_le_bytes(take_vec(8).try_into().unwrap()) as usize;
        infos.push((name, shape, ty, offset));
    }
    let data_start = pos.next_multiple_of(32);
    let mut tensors = HashMap::new();
    for (name, shape, ty, offset) in infos {
        assert_eq!(offset % 32, 0);
        let numel: u64 = shape.iter().product();
        let len = if ty == 0 { numel * 4 } else { numel / 32 * 34 } as usize;
        let start = data_start + offset;
        tensors.insert(name, (shape, ty, bytes[start..start + len].to_vec()));
    }
    Gguf { keys, tensors }
}

#[test]
fn gguf_has_llama_mixtral_names_metadata_and_permuted_rope_rows() {
    let (_a, store) = network();
    let out = tempfile::tempdir().unwrap();
    let hf = out.path().join("hf");
    export_hf(&store, &hf).unwrap();
    let st_bytes = fs::read(hf.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&st_bytes).unwrap();
    let f32s = |name: &str| -> Vec<f32> {
        st.tensor(name)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };

    for ty in [GgufType::F32, GgufType::Q8_0] {
        let path = out.path().join(format!("{ty:?}.gguf"));
        export_gguf(&store, &path, ty).unwrap();
        let g = read_gguf(&fs::read(&path).unwrap());
        for key in [
            "general.architecture",
            "llama.expert_count",
            "llama.expert_used_count",
            "llama.attention.head_count_kv",
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.merges",
        ] {
            assert!(g.keys.iter().any(|k| k == key), "{key}");
        }
        // 1 embedding + 2 × (2 norms, 4 attention, router, 3 stacked experts) + norm + head.
        assert_eq!(g.tensors.len(), 1 + 2 * 10 + 2);
        let (shape, _, _) = &g.tensors["blk.1.ffn_down_exps.weight"];
        assert_eq!(shape, &[96, 64, 3], "innermost first: [ffn, d, experts]");
        let values = |name: &str| -> Vec<f32> {
            let (_, t, data) = &g.tensors[name];
            if *t == 0 {
                data.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect()
            } else {
                blyan_tensor::dequantize_q8_0(data)
            }
        };
        // Row 1 of each head of k comes from row `half` (head_dim 16, so 8) of the same head.
        let k = f32s("model.layers.0.self_attn.k_proj.weight");
        let gk = values("blk.0.attn_k.weight");
        let tol = if ty == GgufType::F32 { 0.0 } else { 2e-3 };
        for c in 0..64 {
            assert!((gk[64 + c] - k[8 * 64 + c]).abs() <= tol);
            assert!((gk[c] - k[c]).abs() <= tol);
        }
        // Expert 2's gate matrix is the third slab of the stack.
        let w1 = f32s("model.layers.1.block_sparse_moe.experts.2.w1.weight");
        let stacked = values("blk.1.ffn_gate_exps.weight");
        let slab = &stacked[2 * w1.len()..3 * w1.len()];
        assert!(w1.iter().zip(slab).all(|(a, b)| (a - b).abs() <= tol));
        assert_eq!(
            g.tensors["blk.0.ffn_gate_inp.weight"].1, 0,
            "router stays f32"
        );
    }
}

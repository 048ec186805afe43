//! A compact file of many f32 tensors: matrices whose rows are a multiple of 32 values are
//! stored as Q8_0, everything else (norm vectors, odd shapes) as f32.
//!
//! It is a safetensors file whose tensors are all `U8` byte arrays; the header's metadata
//! maps each tensor name to `q8_0:D0,D1,…` or `f32:D0,D1,…`, its encoding and real shape.
//! The bundled genesis model ships in this form (16 MB instead of 61 MB of f32).

use std::collections::HashMap;

use crate::q8_0::{Q8_0_BLOCK_BYTES, Q8_0_BLOCK_LEN, dequantize_q8_0, quantize_q8_0};
use crate::{TensorError, f32_from_bytes, f32_to_bytes};

/// Most tensors in one bundle.
pub const BUNDLE_TENSORS_MAX: usize = 4096;

/// One decoded tensor of a bundle: name, shape and values.
pub type BundleTensor = (String, Vec<usize>, Vec<f32>);

/// Encodes tensors (name, shape, values) as a bundle. Values must be finite.
pub fn encode_bundle(tensors: &[BundleTensor]) -> Result<Vec<u8>, TensorError> {
    if tensors.len() > BUNDLE_TENSORS_MAX {
        return Err(TensorError::TooManyTensors {
            count: tensors.len(),
        });
    }
    let mut encoded = Vec::with_capacity(tensors.len());
    let mut meta = HashMap::new();
    for (name, shape, values) in tensors {
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| TensorError::Overflow { name: name.clone() })?;
        if numel != values.len() {
            return Err(TensorError::DataLen {
                name: name.clone(),
                len: values.len() * 4,
                expected: numel as u64 * 4,
            });
        }
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            return Err(TensorError::NonFinite {
                name: name.clone(),
                index,
            });
        }
        let dims = shape
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let q8 = shape.len() >= 2 && shape.last().is_some_and(|&d| d % Q8_0_BLOCK_LEN == 0);
        let bytes = if q8 {
            meta.insert(name.clone(), format!("q8_0:{dims}"));
            let mut out = Vec::with_capacity(numel / Q8_0_BLOCK_LEN * Q8_0_BLOCK_BYTES);
            quantize_q8_0(values, &mut out);
            out
        } else {
            meta.insert(name.clone(), format!("f32:{dims}"));
            f32_to_bytes(values)
        };
        encoded.push((name.clone(), bytes));
    }
    let views = encoded
        .iter()
        .map(|(name, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::U8, vec![bytes.len()], bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| TensorError::Format(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize(views, Some(meta)).map_err(|e| TensorError::Format(e.to_string()))
}

/// Decodes a bundle into (name, shape, values), sorted by name.
pub fn decode_bundle(bytes: &[u8]) -> Result<Vec<BundleTensor>, TensorError> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| TensorError::Format(e.to_string()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| TensorError::Format(e.to_string()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if st.len() > BUNDLE_TENSORS_MAX {
        return Err(TensorError::TooManyTensors { count: st.len() });
    }
    let mut out = Vec::with_capacity(st.len());
    for (name, view) in st.tensors() {
        let bad = |what: &str| TensorError::Format(format!("bundle tensor {name}: {what}"));
        let spec = meta.get(&name).ok_or_else(|| bad("no metadata"))?;
        let (kind, dims) = spec.split_once(':').ok_or_else(|| bad("bad metadata"))?;
        let shape = dims
            .split(',')
            .map(|d| d.parse::<usize>().map_err(|_| bad("bad shape")))
            .collect::<Result<Vec<_>, _>>()?;
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad("shape overflows"))?;
        let data = view.data();
        let values = match kind {
            "q8_0" => {
                if numel % Q8_0_BLOCK_LEN != 0
                    || data.len() != numel / Q8_0_BLOCK_LEN * Q8_0_BLOCK_BYTES
                {
                    return Err(bad("Q8_0 data does not match the shape"));
                }
                dequantize_q8_0(data)
            }
            "f32" => {
                if Some(data.len()) != numel.checked_mul(4) {
                    return Err(bad("f32 data does not match the shape"));
                }
                f32_from_bytes(data)
            }
            _ => return Err(bad("unknown encoding")),
        };
        if values.iter().any(|v| !v.is_finite()) {
            return Err(bad("non-finite value"));
        }
        out.push((name, shape, values));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_within_q8_0_error() {
        let m: Vec<f32> = (0..64 * 3)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        let v: Vec<f32> = (0..5).map(|i| i as f32 * 0.25).collect();
        let tensors = vec![
            ("b.matrix".to_string(), vec![3, 64], m.clone()),
            ("a.norm".to_string(), vec![5], v.clone()),
        ];
        let bytes = encode_bundle(&tensors).expect("encodes");
        let back = decode_bundle(&bytes).expect("decodes");
        assert_eq!(back[0].0, "a.norm");
        assert_eq!(back[0].2, v, "f32 tensors are exact");
        assert_eq!(back[1].1, vec![3, 64]);
        for (a, b) in back[1].2.iter().zip(&m) {
            assert!((a - b).abs() <= 1.25 / 127.0 * 0.51 + 1e-6, "{a} vs {b}");
        }
        assert!(bytes.len() < 3 * 64 * 4, "smaller than f32");
    }

    #[test]
    fn refuses_garbage_and_non_finite() {
        assert!(decode_bundle(b"not a bundle").is_err());
        let nan = vec![("x".to_string(), vec![1], vec![f32::NAN])];
        assert!(encode_bundle(&nan).is_err());
        let short = vec![("x".to_string(), vec![2], vec![1.0])];
        assert!(encode_bundle(&short).is_err());
    }
}

//! Writing and reading the safetensors payload of a parameter block.

use std::collections::BTreeMap;

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

use crate::{DIMS_MAX, DType, NAME_LEN_MAX, TENSORS_MAX};

/// Name, element type and shape of one tensor: what a block header says about its payload.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct TensorDesc {
    /// Full Hugging Face name, e.g. `model.layers.0.block_sparse_moe.experts.3.w1.weight`.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions, outermost first.
    pub shape: Vec<u64>,
}

impl TensorDesc {
    /// Number of elements, or `None` on overflow.
    pub fn numel(&self) -> Option<u64> {
        self.shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
    }

    /// Number of data bytes, or `None` on overflow.
    pub fn byte_len(&self) -> Option<u64> {
        self.numel()?.checked_mul(self.dtype.size() as u64)
    }

    /// Checks the limits every descriptor from outside must respect.
    pub fn check_limits(&self) -> Result<(), TensorError> {
        if self.name.is_empty() || self.name.len() > NAME_LEN_MAX {
            return Err(TensorError::Name {
                name: self.name.clone(),
            });
        }
        if self.shape.len() > DIMS_MAX {
            return Err(TensorError::TooManyDims {
                name: self.name.clone(),
                dims: self.shape.len(),
            });
        }
        if self.byte_len().is_none() {
            return Err(TensorError::Overflow {
                name: self.name.clone(),
            });
        }
        Ok(())
    }
}

/// Why a payload is not an acceptable set of tensors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    /// Not a well-formed safetensors file.
    #[error("payload is not a valid safetensors file: {0}")]
    Format(String),
    /// An element type Blyan does not accept for weights.
    #[error("tensor {name}: unsupported dtype {dtype}")]
    UnsupportedDType {
        /// Tensor name.
        name: String,
        /// The type found, as safetensors names it.
        dtype: String,
    },
    /// Empty or over-long name.
    #[error("tensor name {name:?} is empty or longer than {NAME_LEN_MAX} bytes")]
    Name {
        /// Offending name.
        name: String,
    },
    /// More than [`DIMS_MAX`] dimensions.
    #[error("tensor {name} has {dims} dimensions, at most {DIMS_MAX} allowed")]
    TooManyDims {
        /// Tensor name.
        name: String,
        /// Dimensions found.
        dims: usize,
    },
    /// Element count times element size overflows.
    #[error("tensor {name}: size overflows")]
    Overflow {
        /// Tensor name.
        name: String,
    },
    /// More than [`TENSORS_MAX`] tensors.
    #[error("{count} tensors in one payload, at most {TENSORS_MAX} allowed")]
    TooManyTensors {
        /// Tensors found.
        count: usize,
    },
    /// The same name twice.
    #[error("tensor {name} appears twice")]
    Duplicate {
        /// Repeated name.
        name: String,
    },
    /// The data length does not match dtype and shape.
    #[error("tensor {name}: {len} data bytes, dtype and shape need {expected}")]
    DataLen {
        /// Tensor name.
        name: String,
        /// Bytes given.
        len: usize,
        /// Bytes needed.
        expected: u64,
    },
    /// A NaN or infinity among the weights.
    #[error("tensor {name}: element {index} is not finite")]
    NonFinite {
        /// Tensor name.
        name: String,
        /// Flat index of the first bad element.
        index: usize,
    },
}

/// A tensor inside a payload; its data is borrowed from the payload bytes.
#[derive(Clone, Debug)]
pub struct TensorRef<'a> {
    /// Full name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Little-endian element bytes.
    pub data: &'a [u8],
}

impl TensorRef<'_> {
    /// The descriptor of this tensor.
    pub fn desc(&self) -> TensorDesc {
        TensorDesc {
            name: self.name.clone(),
            dtype: self.dtype,
            shape: self.shape.iter().map(|&d| d as u64).collect(),
        }
    }

    /// The elements as `f32`, converting from half types.
    pub fn to_f32(&self) -> Vec<f32> {
        match self.dtype {
            DType::F32 => f32_from_bytes(self.data),
            DType::F16 => self
                .data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::BF16 => self
                .data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        }
    }
}

/// A parsed payload: its tensors, sorted by name.
#[derive(Debug)]
pub struct TensorSet<'a> {
    tensors: Vec<TensorRef<'a>>,
}

impl<'a> TensorSet<'a> {
    /// Parses a safetensors payload, checking structure, dtypes and limits (not values).
    pub fn parse(bytes: &'a [u8]) -> Result<TensorSet<'a>, TensorError> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| TensorError::Format(e.to_string()))?;
        if st.len() > TENSORS_MAX {
            return Err(TensorError::TooManyTensors { count: st.len() });
        }
        let mut tensors = Vec::with_capacity(st.len());
        for (name, view) in st.iter() {
            let dtype = DType::from_safetensors(view.dtype()).ok_or_else(|| {
                TensorError::UnsupportedDType {
                    name: name.to_owned(),
                    dtype: format!("{:?}", view.dtype()),
                }
            })?;
            let t = TensorRef {
                name: name.to_owned(),
                dtype,
                shape: view.shape().to_vec(),
                data: view.data(),
            };
            t.desc().check_limits()?;
            tensors.push(t);
        }
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(TensorSet { tensors })
    }

    /// The tensors, sorted by name.
    pub fn tensors(&self) -> &[TensorRef<'a>] {
        &self.tensors
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&TensorRef<'a>> {
        self.tensors
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.tensors[i])
    }

    /// Descriptors of all tensors, sorted by name.
    pub fn descs(&self) -> Vec<TensorDesc> {
        self.tensors.iter().map(TensorRef::desc).collect()
    }

    /// Fails on the first NaN or infinity in any tensor.
    pub fn check_finite(&self) -> Result<(), TensorError> {
        self.tensors
            .iter()
            .try_for_each(|t| check_finite(&t.name, t.dtype, t.data))
    }
}

/// Fails on the first NaN or infinity among `data`'s elements.
pub fn check_finite(name: &str, dtype: DType, data: &[u8]) -> Result<(), TensorError> {
    let bad = match dtype {
        // An f32 is non-finite exactly when its exponent bits are all ones.
        DType::F32 => data.chunks_exact(4).position(|c| {
            u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7f80_0000 == 0x7f80_0000
        }),
        DType::F16 => data
            .chunks_exact(2)
            .position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7c00 == 0x7c00),
        DType::BF16 => data
            .chunks_exact(2)
            .position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7f80 == 0x7f80),
    };
    match bad {
        Some(index) => Err(TensorError::NonFinite {
            name: name.to_owned(),
            index,
        }),
        None => Ok(()),
    }
}

/// Little-endian bytes of `values`.
pub fn f32_to_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Little-endian `f32` bytes as values (the inverse of [`f32_to_bytes`]); a trailing partial
/// value is ignored.
pub fn f32_from_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Writes tensors as a deterministic safetensors file: sorted by name, data contiguous in
/// that order, header JSON with sorted keys and padded with spaces to a multiple of 8 bytes
/// (so that every tensor's data is 8-byte aligned when the file is mapped).
pub fn encode_tensors(tensors: &[(TensorDesc, &[u8])]) -> Result<Vec<u8>, TensorError> {
    if tensors.len() > TENSORS_MAX {
        return Err(TensorError::TooManyTensors {
            count: tensors.len(),
        });
    }
    let mut sorted: Vec<&(TensorDesc, &[u8])> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let mut header = BTreeMap::new();
    let mut offset = 0u64;
    for pair in sorted.windows(2) {
        if pair[0].0.name == pair[1].0.name {
            return Err(TensorError::Duplicate {
                name: pair[0].0.name.clone(),
            });
        }
    }
    for (desc, data) in &sorted {
        desc.check_limits()?;
        let expected = desc.byte_len().ok_or_else(|| TensorError::Overflow {
            name: desc.name.clone(),
        })?;
        if data.len() as u64 != expected {
            return Err(TensorError::DataLen {
                name: desc.name.clone(),
                len: data.len(),
                expected,
            });
        }
        header.insert(
            desc.name.clone(),
            serde_json::json!({
                "dtype": desc.dtype.as_str(),
                "shape": desc.shape,
                "data_offsets": [offset, offset + expected],
            }),
        );
        offset += expected;
    }
    let mut json =
        serde_json::to_string(&header).map_err(|e| TensorError::Format(e.to_string()))?;
    while (8 + json.len()) % 8 != 0 {
        json.push(' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + offset as usize);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(json.as_bytes());
    for (_, data) in &sorted {
        out.extend_from_slice(data);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(name: &str, shape: &[u64]) -> TensorDesc {
        TensorDesc {
            name: name.into(),
            dtype: DType::F32,
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn round_trip_sorted_and_aligned() {
        let a = f32_to_bytes(&[1.0, 2.0, 3.0]);
        let b = f32_to_bytes(&[4.0, 5.0]);
        let bytes = encode_tensors(&[(desc("z", &[3]), &a), (desc("a", &[1, 2]), &b)]).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!((8 + header_len) % 8, 0);
        let set = TensorSet::parse(&bytes).unwrap();
        let names: Vec<_> = set.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "z"]);
        assert_eq!(set.get("z").unwrap().to_f32(), [1.0, 2.0, 3.0]);
        assert_eq!(set.get("a").unwrap().shape, [1, 2]);
        // Input order does not change the bytes.
        let again = encode_tensors(&[(desc("a", &[1, 2]), &b), (desc("z", &[3]), &a)]).unwrap();
        assert_eq!(bytes, again);
    }

    #[test]
    fn rejects_bad_tensors() {
        let a = f32_to_bytes(&[1.0]);
        assert!(matches!(
            encode_tensors(&[(desc("a", &[2]), &a)]),
            Err(TensorError::DataLen { .. })
        ));
        assert!(matches!(
            encode_tensors(&[(desc("a", &[1]), &a), (desc("a", &[1]), &a)]),
            Err(TensorError::Duplicate { .. })
        ));
        assert!(matches!(
            encode_tensors(&[(desc("a", &[1; 9]), &a)]),
            Err(TensorError::TooManyDims { .. })
        ));
        assert!(matches!(
            TensorSet::parse(b"garbage"),
            Err(TensorError::Format(_))
        ));
    }

    #[test]
    fn finds_non_finite_in_every_dtype() {
        let nan = f32_to_bytes(&[0.0, f32::NAN]);
        assert_eq!(
            check_finite("t", DType::F32, &nan),
            Err(TensorError::NonFinite {
                name: "t".into(),
                index: 1
            })
        );
        assert!(check_finite("t", DType::F32, &f32_to_bytes(&[f32::NEG_INFINITY])).is_err());
        assert!(check_finite("t", DType::F32, &f32_to_bytes(&[f32::MAX, -0.0, 1e-45])).is_ok());
        let h = |v: f32| half::f16::from_f32(v).to_le_bytes();
        assert!(check_finite("t", DType::F16, &h(f32::INFINITY)).is_err());
        assert!(check_finite("t", DType::F16, &h(65504.0)).is_ok());
        let b = |v: f32| half::bf16::from_f32(v).to_le_bytes();
        assert!(check_finite("t", DType::BF16, &b(f32::NAN)).is_err());
        assert!(check_finite("t", DType::BF16, &b(3.0e38)).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = TensorSet::parse(&bytes);
        }
    }
}

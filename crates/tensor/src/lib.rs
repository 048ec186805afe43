//! Tensor payloads of parameter blocks: a deterministic safetensors layout, dtypes, weight
//! sanity checks and Q8_0 quantization.
//!
//! A parameter block's payload is a safetensors file. Blyan writes it deterministically
//! (tensors sorted by name, data in that order, header padded to 8 bytes) so that the same
//! tensors always give the same payload hash, and any safetensors reader can open it.

#![warn(missing_docs)]

mod bundle;
mod dtype;
mod payload;
mod q8_0;

pub use bundle::{BUNDLE_TENSORS_MAX, BundleTensor, decode_bundle, encode_bundle};
pub use dtype::DType;
pub use payload::{
    TensorDesc, TensorError, TensorRef, TensorSet, check_finite, encode_tensors, f32_from_bytes,
    f32_to_bytes,
};
pub use q8_0::{
    Q8_0_BLOCK_BYTES, Q8_0_BLOCK_LEN, dequantize_q8_0, quantize_q8_0, quantize_q8_0_block,
    quantize_q8_0_le_bytes,
};

/// Most dimensions a tensor may have.
pub const DIMS_MAX: usize = 8;

/// Longest tensor name in bytes.
pub const NAME_LEN_MAX: usize = 256;

/// Most tensors in one payload.
pub const TENSORS_MAX: usize = 64;

//! Weight matrices in f32 or Q8_0, applied as `x · Wᵀ`.

use blyan_tensor::{
    DType as TensorDType, Q8_0_BLOCK_LEN, TensorRef, quantize_q8_0, quantize_q8_0_le_bytes,
};
use candle_core::{Device, Module, Tensor, quantized::QMatMul};

use crate::{ModelError, Precision, kernels::Q8Matrix};

fn check_q8_width(cols: usize) -> Result<(), ModelError> {
    if cols.is_multiple_of(Q8_0_BLOCK_LEN) {
        Ok(())
    } else {
        Err(ModelError::Unsupported {
            reason: format!(
                "int8 needs input widths divisible by {Q8_0_BLOCK_LEN}; this matrix has {cols}"
            ),
        })
    }
}

/// A `[out, in]` weight matrix.
#[derive(Debug)]
pub(crate) struct Linear {
    inner: Weights,
    bytes: usize,
}

#[derive(Debug)]
enum Weights {
    /// f32 weights: candle's matmul.
    Candle(QMatMul),
    /// Q8_0 in our tiled layout, multiplied on the calling thread.
    Tiled(Q8Matrix),
}

impl Linear {
    /// The matrix made of `parts` (payload tensors `[rows_i, in]`) stacked by rows, built
    /// straight from the payload bytes: for int8 the f32 bytes are quantized without an
    /// intermediate copy.
    pub(crate) fn stacked(
        parts: &[&TensorRef<'_>],
        precision: Precision,
    ) -> Result<Linear, ModelError> {
        if parts.is_empty() {
            return Err(ModelError::Unsupported {
                reason: "a weight matrix needs at least one part".into(),
            });
        }
        let cols = parts
            .first()
            .and_then(|t| t.shape.get(1))
            .copied()
            .unwrap_or(0);
        if parts
            .iter()
            .any(|t| t.shape.len() != 2 || t.shape[1] != cols)
        {
            return Err(ModelError::Unsupported {
                reason: "stacked matrices must be 2-D with equal widths".into(),
            });
        }
        let rows: usize = parts.iter().map(|t| t.shape[0]).sum();
        match precision {
            Precision::F32 => {
                let mut values = Vec::with_capacity(rows * cols);
                for t in parts {
                    values.extend(t.to_f32());
                }
                Ok(Linear {
                    bytes: rows * cols * 4,
                    inner: Weights::Candle(QMatMul::Tensor(Tensor::from_vec(
                        values,
                        (rows, cols),
                        &Device::Cpu,
                    )?)),
                })
            }
            Precision::Int8 => {
                check_q8_width(cols)?;
                let mut blocks = Vec::new();
                for t in parts {
                    match t.dtype {
                        TensorDType::F32 => quantize_q8_0_le_bytes(t.data, &mut blocks),
                        _ => quantize_q8_0(&t.to_f32(), &mut blocks),
                    }
                }
                let matrix = Q8Matrix::from_ggml_blocks(rows, cols, &blocks).ok_or_else(|| {
                    ModelError::Unsupported {
                        reason: "the Q8_0 blocks do not fill the matrix".into(),
                    }
                })?;
                Ok(Linear {
                    bytes: matrix.bytes(),
                    inner: Weights::Tiled(matrix),
                })
            }
        }
    }

    /// `x · Wᵀ` for `x` of shape `[tokens, in]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        match &self.inner {
            Weights::Candle(m) => Ok(m.forward(x)?),
            // int8 matrices are multiplied by the flat pass (`model/flat.rs`), never here.
            Weights::Tiled(_) => Err(ModelError::Unsupported {
                reason: "a tiled Q8_0 matrix runs in the flat pass, not as a tensor op".into(),
            }),
        }
    }

    /// The matrix in the tiled Q8_0 layout, if it is held that way.
    pub(crate) fn tiled(&self) -> Option<&Q8Matrix> {
        match &self.inner {
            Weights::Tiled(m) => Some(m),
            Weights::Candle(_) => None,
        }
    }

    /// Bytes the matrix occupies in memory.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};

    #[test]
    fn our_q8_0_blocks_are_candles() {
        let values: Vec<f32> = (0..64 * 96)
            .map(|i| ((i * 7919) % 1000) as f32 / 313.0 - 1.6)
            .collect();
        let t = Tensor::from_vec(values.clone(), (96, 64), &Device::Cpu).unwrap();
        let theirs = QTensor::quantize(&t, GgmlDType::Q8_0).unwrap();
        let mut ours = Vec::new();
        quantize_q8_0(&values, &mut ours);
        assert_eq!(theirs.data().unwrap().as_ref(), ours.as_slice());
    }
}

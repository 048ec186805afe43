//! Weight matrices in f32 or Q8_0, applied as `x · Wᵀ`.

use candle_core::{
    Module, Tensor,
    quantized::{GgmlDType, QMatMul, QTensor},
};

use crate::{ModelError, Precision};

/// Q8_0 quantizes rows in blocks of this many values.
pub(crate) const Q8_BLOCK: usize = 32;

/// A `[out, in]` weight matrix.
#[derive(Debug)]
pub(crate) struct Linear {
    inner: QMatMul,
    bytes: usize,
}

impl Linear {
    /// Wraps an f32 `[out, in]` matrix, quantizing it for [`Precision::Int8`].
    pub(crate) fn new(weight: Tensor, precision: Precision) -> Result<Linear, ModelError> {
        let (rows, cols) = weight.dims2()?;
        match precision {
            Precision::F32 => Ok(Linear {
                bytes: rows * cols * 4,
                inner: QMatMul::Tensor(weight),
            }),
            Precision::Int8 => {
                if !cols.is_multiple_of(Q8_BLOCK) {
                    return Err(ModelError::Unsupported {
                        reason: format!(
                            "int8 needs input widths divisible by {Q8_BLOCK}; this matrix has {cols}"
                        ),
                    });
                }
                let q = QTensor::quantize(&weight, GgmlDType::Q8_0)?;
                Ok(Linear {
                    bytes: q.storage_size_in_bytes(),
                    inner: QMatMul::from_qtensor(q)?,
                })
            }
        }
    }

    /// `x · Wᵀ` for `x` of shape `[tokens, in]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        Ok(self.inner.forward(x)?)
    }

    /// Bytes the matrix occupies in memory.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

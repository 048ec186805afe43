//! Q8_0: blocks of 32 values stored as one f16 scale and 32 signed bytes (the GGML layout).
//!
//! A block's scale is `max|x| / 127` and each value is `round(x / scale)`, so the error of any
//! value is at most half a step, `max|x| / 254`. Rows must be whole blocks.

/// Values per block.
pub const Q8_0_BLOCK_LEN: usize = 32;
/// Bytes per block: the f16 scale, then 32 `i8`.
pub const Q8_0_BLOCK_BYTES: usize = 2 + Q8_0_BLOCK_LEN;

/// Quantizes little-endian f32 bytes (a whole number of blocks) and appends the blocks to
/// `out`. Reading the bytes directly spares a copy when they come from a mapped payload.
pub fn quantize_q8_0_le_bytes(data: &[u8], out: &mut Vec<u8>) {
    assert!(
        data.len().is_multiple_of(4 * Q8_0_BLOCK_LEN),
        "Q8_0 input must be whole blocks of {Q8_0_BLOCK_LEN} f32 values"
    );
    out.reserve(data.len() / (4 * Q8_0_BLOCK_LEN) * Q8_0_BLOCK_BYTES);
    let mut block = [0f32; Q8_0_BLOCK_LEN];
    for chunk in data.chunks_exact(4 * Q8_0_BLOCK_LEN) {
        for (v, b) in block.iter_mut().zip(chunk.chunks_exact(4)) {
            *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        quantize_block(&block, out);
    }
}

/// Quantizes f32 values (a whole number of blocks), appending the blocks to `out`.
pub fn quantize_q8_0(values: &[f32], out: &mut Vec<u8>) {
    assert!(
        values.len().is_multiple_of(Q8_0_BLOCK_LEN),
        "Q8_0 input must be whole blocks of {Q8_0_BLOCK_LEN} values"
    );
    out.reserve(values.len() / Q8_0_BLOCK_LEN * Q8_0_BLOCK_BYTES);
    for block in values.chunks_exact(Q8_0_BLOCK_LEN) {
        quantize_block(block, out);
    }
}

fn quantize_block(block: &[f32], out: &mut Vec<u8>) {
    let (scale, quants) = quantize_q8_0_block(block);
    out.extend_from_slice(&half::f16::from_f32(scale).to_le_bytes());
    out.extend(quants.iter().map(|&q| q as u8));
}

/// One block of 32 values: its scale `max|x| / 127` in full f32 precision (GGML stores it
/// rounded to f16) and the quants `round(x / scale)`, all within [-127, 127].
///
/// # Panics
/// If `block` does not hold exactly 32 values.
// Always inlined, so that callers compiled for a wider vector unit (the model's AVX2
// clones) vectorise it with their own instructions.
#[inline(always)]
pub fn quantize_q8_0_block(block: &[f32]) -> (f32, [i8; Q8_0_BLOCK_LEN]) {
    assert_eq!(block.len(), Q8_0_BLOCK_LEN, "a Q8_0 block holds 32 values");
    let Ok(block) = <&[f32; Q8_0_BLOCK_LEN]>::try_from(block) else {
        unreachable!("the length was checked above");
    };
    // Eight running maxima, one vector, fed a row of eight values at a time so that the
    // loop vectorises; written as comparisons (NaN never wins, as with `f32::max`, which
    // compiles to a scalar chain here).
    let mut lanes = [0f32; 8];
    for row in block.chunks_exact(8) {
        for (l, &x) in lanes.iter_mut().zip(row) {
            let a = x.abs();
            *l = if a > *l { a } else { *l };
        }
    }
    let amax = lanes.iter().copied().fold(0f32, f32::max);
    let scale = amax / 127.0;
    let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    // 1.5 · 2^23: adding it to an integer-valued f32 of magnitude below 2^22 leaves the
    // integer in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let mut quants = [0i8; Q8_0_BLOCK_LEN];
    for (q, &x) in quants.iter_mut().zip(block) {
        // `round(x / scale) as i8` in selects and arithmetic that vectorise: the value
        // saturates to the i8 range and NaN gives 0, as the cast does.
        let r = (x * inv).round();
        let r = if r > 127.0 { 127.0 } else { r };
        let r = if r < -128.0 { -128.0 } else { r };
        let r = if r.is_nan() { 0.0 } else { r };
        *q = ((r + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32) as i8;
    }
    (scale, quants)
}

/// Expands Q8_0 blocks back to f32 values.
pub fn dequantize_q8_0(blocks: &[u8]) -> Vec<f32> {
    assert!(
        blocks.len().is_multiple_of(Q8_0_BLOCK_BYTES),
        "Q8_0 data must be whole blocks of {Q8_0_BLOCK_BYTES} bytes"
    );
    let mut out = Vec::with_capacity(blocks.len() / Q8_0_BLOCK_BYTES * Q8_0_BLOCK_LEN);
    for block in blocks.chunks_exact(Q8_0_BLOCK_BYTES) {
        let scale = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
        out.extend(block[2..].iter().map(|&q| f32::from(q as i8) * scale));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_error_is_at_most_half_a_step() {
        let values: Vec<f32> = (0..256)
            .map(|i| ((i * 37) % 101) as f32 / 7.0 - 6.5)
            .collect();
        let mut q = Vec::new();
        quantize_q8_0(&values, &mut q);
        assert_eq!(q.len(), 8 * Q8_0_BLOCK_BYTES);
        let back = dequantize_q8_0(&q);
        for (block, got) in values.chunks(32).zip(back.chunks(32)) {
            let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
            for (a, b) in block.iter().zip(got) {
                // Half a step, plus the f16 rounding of the scale.
                assert!((a - b).abs() <= amax / 254.0 * 1.01 + 1e-6, "{a} vs {b}");
            }
        }
        let mut from_bytes = Vec::new();
        quantize_q8_0_le_bytes(&crate::f32_to_bytes(&values), &mut from_bytes);
        assert_eq!(from_bytes, q);
    }

    #[test]
    fn block_quants_are_the_rounded_and_saturated_cast() {
        // Ties, values near the edges of the range, and non-finite inputs: every quant must
        // be what `(x / scale).round() as i8` gives.
        let mut block = [0f32; Q8_0_BLOCK_LEN];
        for (i, v) in block.iter_mut().enumerate() {
            *v = (i as f32 - 15.5) * 0.25;
        }
        block[0] = 3.875; // amax: every step 1/127 of it
        for extra in [f32::NAN, 1e-30, -3.875, 2.5 * 3.875 / 127.0] {
            block[31] = extra;
            let (scale, quants) = quantize_q8_0_block(&block);
            let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
            for (q, &x) in quants.iter().zip(&block) {
                assert_eq!(*q, (x * inv).round() as i8, "{x} with {extra}");
            }
        }
        let mut wild = block;
        wild[3] = f32::INFINITY;
        let (scale, quants) = quantize_q8_0_block(&wild);
        assert_eq!(scale, f32::INFINITY);
        assert!(
            quants.iter().all(|&q| q == 0),
            "inf · 0 is NaN, which casts to 0"
        );
    }

    #[test]
    fn zero_blocks_and_extremes() {
        let mut q = Vec::new();
        quantize_q8_0(&[0.0; 32], &mut q);
        assert_eq!(dequantize_q8_0(&q), vec![0.0; 32]);
        let mut block = [0.0f32; 32];
        block[3] = -2.0;
        block[9] = 1.0;
        q.clear();
        quantize_q8_0(&block, &mut q);
        assert_eq!(q[2 + 3] as i8, -127);
        assert_eq!(q[2 + 9] as i8, 64); // 63.5 rounds away from zero
    }
}

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
pub fn quantize_q8_0_block(block: &[f32]) -> (f32, [i8; Q8_0_BLOCK_LEN]) {
    assert_eq!(block.len(), Q8_0_BLOCK_LEN, "a Q8_0 block holds 32 values");
    // Eight running maxima so the reduction vectorises.
    let mut lanes = [0f32; 8];
    for group in block.chunks_exact(8) {
        for (m, x) in lanes.iter_mut().zip(group) {
            *m = m.max(x.abs());
        }
    }
    let amax = lanes.iter().copied().fold(0f32, f32::max);
    let scale = amax / 127.0;
    let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    (
        scale,
        std::array::from_fn(|t| (block[t] * inv).round() as i8),
    )
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

//! Matrix products `y = x · Wᵀ` for a few token rows at a time, without threads.
//!
//! Decoding multiplies a handful of token rows by each weight matrix. These kernels are
//! *weight-stationary*: each piece of a weight matrix is read once per call and applied to
//! every token row while it is in L1, so a batch of sequences pays for the weights once. Every
//! output element is computed by the same operations in the same order whatever the number of
//! rows, so a sequence's logits do not depend on which other sequences share its batch. They
//! run on the calling thread, so several engine lanes can multiply at the same time.
//!
//! **f32** ([`matmul_f32`]): four weight rows per activation load, AVX2/FMA when the CPU has
//! it. It replaces candle's f32 matmul for the routers because candle's asks the OS for the
//! number of physical cores on every call (it parses `/proc/cpuinfo` each time).
//!
//! **Q8_0** ([`Q8Matrix`]): GGML's Q8_0 (blocks of 32 weights, one scale each, `d = amax/127`,
//! `q = round(w/d)`, the scale rounded to f16), rearranged at load into tiles of 16 output
//! rows: per block, the 16 scales (widened to f32), then eight groups of four consecutive
//! inputs, each holding those four quants of all 16 rows offset by +128. One AVX-512 VNNI
//! `vpdpbusd` then adds four products into each of 16 outputs at once, with the activation's
//! four quants broadcast; the +128 is cancelled exactly by starting the sum at `-128 · Σ x_q`.
//! Activations are quantized per row by the same rule (scale kept in f32) and each block adds
//! `d_w · d_x · Σ q_w·q_x`, as GGML's Q8_0 dot product does. No horizontal sums are needed:
//! the 16 lanes are 16 outputs.
//!
//! The intrinsics take their operands by value (arrays cast to vectors), so the only `unsafe`
//! is the call made after the CPU feature check. Portable loops compute the same sums and are
//! the reference the vector code is tested against; [`q8_fast`] says whether this CPU has the
//! vector Q8_0 kernel (the model uses candle's quantized matmul where it does not).

use blyan_tensor::{Q8_0_BLOCK_BYTES, Q8_0_BLOCK_LEN, quantize_q8_0_block};

const QK: usize = Q8_0_BLOCK_LEN;

/// Output rows per tile: one AVX-512 register of i32 or f32.
const TILE: usize = 16;

/// One block of 32 inputs for the 16 rows of a tile.
#[derive(Debug, Clone, Copy)]
struct TileBlock {
    scales: [f32; TILE],
    /// `groups[g][4r + c] = q[r][4g + c] + 128`.
    groups: [[u8; 4 * TILE]; QK / 4],
}

/// A `[rows, cols]` Q8_0 matrix in 16-row tiles (see the module notes).
#[derive(Debug, Clone)]
pub(crate) struct Q8Matrix {
    rows: usize,
    cols: usize,
    /// `tiles[t · cols/32 + b]`: block `b` of tile `t`; rows past `rows` are zero.
    tiles: Vec<TileBlock>,
}

/// Whether this CPU runs the vector Q8_0 kernel.
pub(crate) fn q8_fast() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        vnni::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl Q8Matrix {
    /// The matrix held in GGML Q8_0 bytes (34 per block: f16 scale, 32 quants), row-major;
    /// `None` unless `cols` is a positive multiple of 32 and the bytes are exactly
    /// `rows · cols / 32` blocks.
    pub(crate) fn from_ggml_blocks(rows: usize, cols: usize, ggml: &[u8]) -> Option<Q8Matrix> {
        if cols == 0
            || !cols.is_multiple_of(QK)
            || ggml.len() != rows * cols / QK * Q8_0_BLOCK_BYTES
        {
            return None;
        }
        let kb = cols / QK;
        let mut tiles = Vec::with_capacity(rows.div_ceil(TILE) * kb);
        for t in 0..rows.div_ceil(TILE) {
            for b in 0..kb {
                let mut tile = TileBlock {
                    scales: [0.0; TILE],
                    groups: [[128; 4 * TILE]; QK / 4],
                };
                for r in 0..TILE.min(rows - t * TILE) {
                    let at = ((t * TILE + r) * kb + b) * Q8_0_BLOCK_BYTES;
                    let block = &ggml[at..at + Q8_0_BLOCK_BYTES];
                    tile.scales[r] = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                    for (k, &q) in block[2..].iter().enumerate() {
                        // Two's complement i8 plus 128 is the byte with its top bit flipped.
                        tile.groups[k / 4][4 * r + k % 4] = q ^ 0x80;
                    }
                }
                tiles.push(tile);
            }
        }
        Some(Q8Matrix { rows, cols, tiles })
    }

    /// Output width.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Input width.
    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.tiles.len() * std::mem::size_of::<TileBlock>()
    }

    /// `out[i·rows + j] = Σ_k x[i][k] · W[j][k]` for every row `i` of `x`.
    pub(crate) fn matmul(&self, x: &QuantRows, out: &mut [f32]) {
        assert_eq!(
            x.cols, self.cols,
            "activation width differs from the matrix"
        );
        assert!(out.len() >= x.rows * self.rows, "output buffer too small");
        #[cfg(target_arch = "x86_64")]
        if vnni::available() {
            vnni::matmul_q8_checked(self, x, out);
            return;
        }
        portable::matmul_q8(self, x, out);
    }
}

/// Rows of activations quantized to Q8_0 for [`Q8Matrix::matmul`]; reused between calls.
#[derive(Debug, Default)]
pub(crate) struct QuantRows {
    rows: usize,
    cols: usize,
    /// Per block, its 32 quants as eight groups of four bytes.
    blocks: Vec<[i32; QK / 4]>,
    scales: Vec<f32>,
    /// Per block, `-128 · Σ q`: the start value that cancels the weights' offset.
    offsets: Vec<i32>,
}

impl QuantRows {
    /// Quantizes `x`: rows of `cols` values, `cols` a positive multiple of 32.
    pub(crate) fn quantize(&mut self, x: &[f32], cols: usize) {
        assert!(
            cols > 0 && cols.is_multiple_of(QK) && x.len().is_multiple_of(cols),
            "activations must be whole rows of whole blocks"
        );
        self.rows = x.len() / cols;
        self.cols = cols;
        self.blocks.clear();
        self.scales.clear();
        self.offsets.clear();
        for chunk in x.chunks_exact(QK) {
            let (d, q) = quantize_q8_0_block(chunk);
            self.scales.push(d);
            self.offsets
                .push(-128 * q.iter().map(|&v| i32::from(v)).sum::<i32>());
            self.blocks.push(bytemuck::cast(q));
        }
    }
}

impl QuantRows {
    /// Copies rows `rows` (in that order) into `into`.
    pub(crate) fn gather(&self, rows: &[u32], into: &mut QuantRows) {
        let kb = self.cols / QK;
        into.rows = rows.len();
        into.cols = self.cols;
        into.blocks.clear();
        into.scales.clear();
        into.offsets.clear();
        for &r in rows {
            let span = r as usize * kb..(r as usize + 1) * kb;
            into.blocks.extend_from_slice(&self.blocks[span.clone()]);
            into.scales.extend_from_slice(&self.scales[span.clone()]);
            into.offsets.extend_from_slice(&self.offsets[span]);
        }
    }
}

/// `out[i·n + j] = Σ_k x[i·k_len + k] · w[j·k_len + k]` for f32 weights `w` (`n` rows of
/// `k_len`) and `x` (rows of `k_len`).
pub(crate) fn matmul_f32(w: &[f32], k_len: usize, x: &[f32], out: &mut [f32]) {
    assert!(
        k_len > 0 && w.len().is_multiple_of(k_len) && x.len().is_multiple_of(k_len),
        "matrix and rows must have the same width"
    );
    assert!(
        out.len() >= (x.len() / k_len) * (w.len() / k_len),
        "output buffer too small"
    );
    #[cfg(target_arch = "x86_64")]
    if simd::available() && k_len.is_multiple_of(8) {
        simd::matmul_f32_checked(w, k_len, x, out);
        return;
    }
    portable::matmul_f32(w, k_len, x, out);
}

/// Plain Rust: the reference the vector kernels are held to, and the path on other CPUs.
mod portable {
    use super::{Q8Matrix, QK, QuantRows, TILE};

    pub(super) fn matmul_q8(w: &Q8Matrix, x: &QuantRows, out: &mut [f32]) {
        let (n, kb) = (w.rows, w.cols / QK);
        for i in 0..x.rows {
            for j in 0..n {
                let (t, r) = (j / TILE, j % TILE);
                let mut acc = 0f32;
                for b in 0..kb {
                    let tile = &w.tiles[t * kb + b];
                    let xq: [i8; QK] = bytemuck::cast(x.blocks[i * kb + b]);
                    let mut s = 0i32;
                    for (k, &q) in xq.iter().enumerate() {
                        s += (i32::from(tile.groups[k / 4][4 * r + k % 4]) - 128) * i32::from(q);
                    }
                    acc += s as f32 * (tile.scales[r] * x.scales[i * kb + b]);
                }
                out[i * n + j] = acc;
            }
        }
    }

    pub(super) fn matmul_f32(w: &[f32], k_len: usize, x: &[f32], out: &mut [f32]) {
        let n = w.len() / k_len;
        for (j, wr) in w.chunks_exact(k_len).enumerate() {
            for (i, xr) in x.chunks_exact(k_len).enumerate() {
                out[i * n + j] = wr.iter().zip(xr).map(|(a, b)| a * b).sum();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::{__m256, _mm256_fmadd_ps, _mm256_setzero_ps};
    use std::sync::OnceLock;

    /// Whether this CPU runs the AVX2/FMA kernel.
    pub(super) fn available() -> bool {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }

    #[allow(unsafe_code)]
    pub(super) fn matmul_f32_checked(w: &[f32], k_len: usize, x: &[f32], out: &mut [f32]) {
        assert!(available() && k_len.is_multiple_of(8));
        // SAFETY: the function needs AVX2 and FMA, which `available` detected on this CPU.
        unsafe { matmul_f32(w, k_len, x, out) }
    }

    /// The eight lanes of `v` added pairwise: `((0+4)+(1+5))+((2+6)+(3+7))`.
    #[target_feature(enable = "avx2,fma")]
    fn sum_lanes(v: __m256) -> f32 {
        let a: [f32; 8] = bytemuck::cast(v);
        ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
    }

    /// Eight f32 from `s[at..at + 8]`.
    #[target_feature(enable = "avx2,fma")]
    fn load8(s: &[f32], at: usize) -> __m256 {
        let mut a = [0f32; 8];
        a.copy_from_slice(&s[at..at + 8]);
        bytemuck::cast(a)
    }

    /// Weight rows four at a time: each activation load feeds four independent accumulator
    /// chains. A row outside a group of four gets the same operations on its own, so every
    /// output has the same bits however the rows are grouped.
    #[target_feature(enable = "avx2,fma")]
    fn matmul_f32(w: &[f32], k_len: usize, x: &[f32], out: &mut [f32]) {
        let (n, m) = (w.len() / k_len, x.len() / k_len);
        let mut j = 0;
        while j < n {
            let tile = if j + 4 <= n { 4 } else { 1 };
            for i in 0..m {
                let mut acc = [_mm256_setzero_ps(); 4];
                for c in (0..k_len).step_by(8) {
                    let xv = load8(x, i * k_len + c);
                    for (r, a) in acc.iter_mut().enumerate().take(tile) {
                        *a = _mm256_fmadd_ps(load8(w, (j + r) * k_len + c), xv, *a);
                    }
                }
                for (r, a) in acc.into_iter().enumerate().take(tile) {
                    out[i * n + j + r] = sum_lanes(a);
                }
            }
            j += tile;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::{
        __m512, __m512i, _mm512_cvtepi32_ps, _mm512_dpbusd_epi32, _mm512_fmadd_ps, _mm512_mul_ps,
        _mm512_set1_epi32, _mm512_set1_ps, _mm512_setzero_ps,
    };
    use std::sync::OnceLock;

    use super::{Q8Matrix, QK, QuantRows, TILE};

    /// Whether this CPU has AVX-512F/BW and VNNI.
    pub(super) fn available() -> bool {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
        })
    }

    #[allow(unsafe_code)]
    pub(super) fn matmul_q8_checked(w: &Q8Matrix, x: &QuantRows, out: &mut [f32]) {
        assert!(available());
        // SAFETY: the function needs AVX-512F/BW/VNNI, which `available` detected on this CPU.
        unsafe { matmul_q8(w, x, out) }
    }

    /// Token rows four at a time (each weight group loaded once for four of them), then one
    /// at a time; either way a row gets the same operations.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn matmul_q8(w: &Q8Matrix, x: &QuantRows, out: &mut [f32]) {
        let (n, kb, m) = (w.rows, w.cols / QK, x.rows);
        for t in 0..n.div_ceil(TILE) {
            let tile = &w.tiles[t * kb..(t + 1) * kb];
            let mut i = 0;
            while i + 4 <= m {
                rows_tile::<4>(tile, x, i, t, n, out);
                i += 4;
            }
            while i < m {
                rows_tile::<1>(tile, x, i, t, n, out);
                i += 1;
            }
        }
    }

    /// Outputs `t·16 ..` of token rows `i .. i + R`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn rows_tile<const R: usize>(
        tile: &[super::TileBlock],
        x: &QuantRows,
        i: usize,
        t: usize,
        n: usize,
        out: &mut [f32],
    ) {
        let kb = tile.len();
        let mut acc = [_mm512_setzero_ps(); R];
        for (b, block) in tile.iter().enumerate() {
            let mut sums: [__m512i; R] =
                std::array::from_fn(|r| _mm512_set1_epi32(x.offsets[(i + r) * kb + b]));
            for (g, group) in block.groups.iter().enumerate() {
                let wv: __m512i = bytemuck::cast(*group);
                for (r, s) in sums.iter_mut().enumerate() {
                    let xv = _mm512_set1_epi32(x.blocks[(i + r) * kb + b][g]);
                    *s = _mm512_dpbusd_epi32(*s, wv, xv);
                }
            }
            let ws: __m512 = bytemuck::cast(block.scales);
            for (r, a) in acc.iter_mut().enumerate() {
                let d = _mm512_mul_ps(ws, _mm512_set1_ps(x.scales[(i + r) * kb + b]));
                *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[r]), d, *a);
            }
        }
        let valid = TILE.min(n - t * TILE);
        for (r, a) in acc.into_iter().enumerate() {
            let v: [f32; TILE] = bytemuck::cast(a);
            let at = (i + r) * n + t * TILE;
            out[at..at + valid].copy_from_slice(&v[..valid]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i + seed) * 7919) % 1013) as f32 / 500.0 - 1.0)
            .collect()
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "element {i}: {x} vs {y}"
            );
        }
    }

    #[test]
    fn the_product_matches_the_portable_one() {
        for k in [8, 24, 256] {
            let w = values(33 * k, 3);
            let x = values(6 * k, 4);
            let mut out = vec![0f32; 6 * 33];
            matmul_f32(&w, k, &x, &mut out);
            let mut reference = vec![0f32; 6 * 33];
            portable::matmul_f32(&w, k, &x, &mut reference);
            close(&out, &reference, 1e-5);
        }
        // A width that is not a multiple of eight takes the portable path.
        let mut odd = vec![0f32; 2];
        matmul_f32(
            &[1.0, 2.0, 3.0],
            3,
            &[1.0, 1.0, 1.0, 2.0, 0.0, 1.0],
            &mut odd,
        );
        assert_eq!(odd, [6.0, 5.0]);
    }

    #[test]
    fn a_row_gives_the_same_bits_in_any_batch() {
        let w = values(27 * 64, 5);
        let x = values(7 * 64, 6);
        let mut all = vec![0f32; 7 * 27];
        matmul_f32(&w, 64, &x, &mut all);
        for i in 0..7 {
            let mut one = vec![0f32; 27];
            matmul_f32(&w, 64, &x[i * 64..(i + 1) * 64], &mut one);
            assert_eq!(one, all[i * 27..(i + 1) * 27], "row {i}");
        }
    }

    fn q8(rows: usize, cols: usize, seed: usize) -> (Q8Matrix, Vec<f32>) {
        let w = values(rows * cols, seed);
        let mut ggml = Vec::new();
        blyan_tensor::quantize_q8_0(&w, &mut ggml);
        (Q8Matrix::from_ggml_blocks(rows, cols, &ggml).unwrap(), w)
    }

    #[test]
    fn q8_product_matches_the_reference_and_the_dequantized_product() {
        // 40 rows: two whole tiles and a partial one.
        for (n, k, m) in [(40, 96, 5), (16, 32, 1), (37, 256, 9)] {
            let (w, dense) = q8(n, k, 1);
            let x = values(m * k, 2);
            let mut rows = QuantRows::default();
            rows.quantize(&x, k);
            let mut out = vec![f32::NAN; m * n];
            w.matmul(&rows, &mut out);
            let mut reference = vec![0f32; m * n];
            portable::matmul_q8(&w, &rows, &mut reference);
            close(&out, &reference, 1e-5);
            let mut exact = vec![0f32; m * n];
            portable::matmul_f32(&dense, k, &x, &mut exact);
            // Quantizing both sides costs about 1% of a typical term.
            let scale = exact.iter().fold(0f32, |a, v| a.max(v.abs()));
            for (o, e) in out.iter().zip(&exact) {
                assert!((o - e).abs() <= 0.02 * scale, "{o} vs {e}");
            }
        }
    }

    #[test]
    fn q8_rows_give_the_same_bits_in_any_batch() {
        let (w, _) = q8(48, 64, 5);
        let x = values(7 * 64, 6);
        let mut rows = QuantRows::default();
        rows.quantize(&x, 64);
        let mut all = vec![0f32; 7 * 48];
        w.matmul(&rows, &mut all);
        for i in 0..7 {
            rows.quantize(&x[i * 64..(i + 1) * 64], 64);
            let mut one = vec![0f32; 48];
            w.matmul(&rows, &mut one);
            assert_eq!(one, all[i * 48..(i + 1) * 48], "row {i}");
        }
    }

    #[test]
    fn gathered_rows_are_the_rows_quantized_alone() {
        let x = values(5 * 64, 8);
        let mut all = QuantRows::default();
        all.quantize(&x, 64);
        let mut picked = QuantRows::default();
        all.gather(&[3, 0, 3], &mut picked);
        let mut direct = QuantRows::default();
        let rows: Vec<f32> = [3, 0, 3]
            .iter()
            .flat_map(|&r| x[r * 64..(r + 1) * 64].iter().copied())
            .collect();
        direct.quantize(&rows, 64);
        assert_eq!((picked.rows, picked.cols), (3, 64));
        assert_eq!(picked.blocks, direct.blocks);
        assert_eq!(picked.scales, direct.scales);
        assert_eq!(picked.offsets, direct.offsets);
    }

    #[test]
    fn quantized_rows_follow_q8_0() {
        let x = values(64, 7);
        let mut rows = QuantRows::default();
        rows.quantize(&x, 32);
        assert_eq!((rows.rows, rows.blocks.len()), (2, 2));
        for (b, chunk) in x.chunks_exact(32).enumerate() {
            let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = rows.scales[b];
            assert_eq!(d, amax / 127.0);
            let q: [i8; 32] = bytemuck::cast(rows.blocks[b]);
            assert!(q.iter().any(|&v| v.abs() == 127));
            for (v, x) in q.iter().zip(chunk) {
                assert!((f32::from(*v) * d - x).abs() <= d / 2.0 + 1e-7);
            }
            let sum: i32 = q.iter().map(|&v| i32::from(v)).sum();
            assert_eq!(rows.offsets[b], -128 * sum);
        }
        rows.quantize(&[0.0; 32], 32);
        assert_eq!((rows.scales[0], rows.blocks[0]), (0.0, [0; 8]));
    }

    #[test]
    fn malformed_ggml_bytes_are_refused() {
        assert!(Q8Matrix::from_ggml_blocks(2, 32, &[0; 67]).is_none());
        assert!(Q8Matrix::from_ggml_blocks(2, 48, &[0; 102]).is_none());
        assert!(Q8Matrix::from_ggml_blocks(2, 0, &[]).is_none());
        assert!(Q8Matrix::from_ggml_blocks(2, 32, &[0; 68]).is_some());
    }

    #[test]
    #[ignore = "timing; run with --release -- --ignored --nocapture"]
    fn q8_timing_against_candle() {
        use candle_core::{
            Device, Module, Tensor,
            quantized::{GgmlDType, QMatMul, QTensor},
        };
        for (n, k) in [(1024usize, 256usize), (256, 512), (4096, 256)] {
            let (ours, w) = q8(n, k, 0);
            let t = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap();
            let theirs =
                QMatMul::from_qtensor(QTensor::quantize(&t, GgmlDType::Q8_0).unwrap()).unwrap();
            for m in [1usize, 2, 4, 8] {
                let x = values(m * k, 9);
                let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
                let reps = 2000;
                let start = std::time::Instant::now();
                for _ in 0..reps {
                    std::hint::black_box(theirs.forward(&xt).unwrap());
                }
                let candle_us = start.elapsed().as_secs_f64() * 1e6 / f64::from(reps);
                let mut rows = QuantRows::default();
                let mut out = vec![0f32; m * n];
                let start = std::time::Instant::now();
                for _ in 0..reps {
                    rows.quantize(&x, k);
                    ours.matmul(&rows, &mut out);
                    std::hint::black_box(&out);
                }
                let ours_us = start.elapsed().as_secs_f64() * 1e6 / f64::from(reps);
                println!("{n}x{k} m {m}: candle {candle_us:.1} us, ours {ours_us:.1} us");
            }
        }
    }

    #[test]
    #[should_panic(expected = "same width")]
    fn mismatched_widths_are_refused() {
        let mut out = vec![0f32; 4];
        matmul_f32(&[1.0; 8], 4, &[1.0; 6], &mut out);
    }
}

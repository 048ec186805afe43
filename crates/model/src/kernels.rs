//! Matrix products `y = x · Wᵀ` for a few token rows at a time, without threads.
//!
//! Decoding multiplies a handful of token rows by each weight matrix. These kernels are
//! *weight-stationary*: each piece of a weight matrix is read once per call and applied to
//! every token row while it is in L1, so a batch of sequences pays for the weights once. Every
//! output element is computed by the same operations in the same order whatever the number of
//! rows, so a sequence's logits do not depend on which other sequences share its batch. They
//! run on the calling thread, so several threads (engine lanes, or the threads of a pass
//! spread over a pool) can multiply at the same time.
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
//! the 16 lanes are 16 outputs. The product runs in register blocks of up to 4 rows × 8
//! tiles, so that even one row keeps several independent `vpdpbusd` chains in flight. CPUs
//! with AVX2 and FMA but without VNNI run the same tiles in 256-bit halves (see
//! `simd::matmul_q8`).
//!
//! The intrinsics take their operands by value (arrays cast to vectors), so the only `unsafe`
//! is the call made after the CPU feature check. Portable loops compute the same sums in the
//! same order, each block's scale applied by one fused multiply-add, and every vector kernel
//! is tested to give their exact bits, so an int8 model computes the same logits on every
//! CPU; the portable loops are also the product on CPUs without AVX2.

use std::ops::Range;

use blyan_tensor::{Q8_0_BLOCK_BYTES, Q8_0_BLOCK_LEN, quantize_q8_0_block};

pub(crate) const QK: usize = Q8_0_BLOCK_LEN;

/// Output rows per tile: one AVX-512 register of i32 or f32.
pub(crate) const TILE: usize = 16;

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

/// The Q8_0 product this CPU runs: `"avx512-vnni"`, `"avx2"` or `"portable"`. Each gives the
/// same bits; only the speed differs.
pub fn q8_kernel() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if vnni::available() {
            return "avx512-vnni";
        }
        if simd::available() {
            return "avx2";
        }
    }
    "portable"
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

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.tiles.len() * std::mem::size_of::<TileBlock>()
    }

    /// `out[i·rows + j] = Σ_k x[i][k] · W[j][k]` for every row `i` of `x`.
    pub(crate) fn matmul(&self, x: &QuantRows, out: &mut [f32]) {
        self.matmul_rows(x, 0..self.rows, out);
    }

    /// The outputs of weight rows `range` only: `out[i·len + j − start]` for `j` in `range`
    /// (`len` its length), each the same bits as in [`Q8Matrix::matmul`]. `range.start`
    /// must be a multiple of 16 (a tile) and `range.end` one or the row count.
    pub(crate) fn matmul_rows(&self, x: &QuantRows, range: Range<usize>, out: &mut [f32]) {
        assert_eq!(
            x.cols, self.cols,
            "activation width differs from the matrix"
        );
        assert!(
            range.start.is_multiple_of(TILE)
                && range.start <= range.end
                && range.end <= self.rows
                && (range.end.is_multiple_of(TILE) || range.end == self.rows),
            "row range {range:?} is not whole tiles of {} rows",
            self.rows
        );
        assert!(out.len() >= x.rows * range.len(), "output buffer too small");
        #[cfg(target_arch = "x86_64")]
        if vnni::available() {
            vnni::matmul_q8_checked(self, x, range, out);
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if simd::available() {
            simd::matmul_q8_checked(self, x, range, out);
            return;
        }
        portable::matmul_q8(self, x, range, out);
    }
}

/// Rows of activations quantized to Q8_0 for [`Q8Matrix::matmul`]; reused between calls.
#[derive(Clone, Debug, Default)]
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
        quantize_blocks(x, &mut self.blocks, &mut self.scales, &mut self.offsets);
    }
}

/// Appends the Q8_0 blocks of `x` (whole blocks of 32) to the three columns of [`QuantRows`].
#[multiversion::multiversion(targets("x86_64+avx2+fma"))]
fn quantize_blocks(
    x: &[f32],
    blocks: &mut Vec<[i32; QK / 4]>,
    scales: &mut Vec<f32>,
    offsets: &mut Vec<i32>,
) {
    let n = x.len() / QK;
    blocks.reserve(n);
    scales.reserve(n);
    offsets.reserve(n);
    for chunk in x.chunks_exact(QK) {
        let (d, q) = quantize_q8_0_block(chunk);
        scales.push(d);
        // Eight lane sums, so that the widening adds vectorise.
        let mut sums = [0i32; 8];
        for row in q.chunks_exact(8) {
            for (s, &v) in sums.iter_mut().zip(row) {
                *s += i32::from(v);
            }
        }
        offsets.push(-128 * sums.iter().sum::<i32>());
        blocks.push(bytemuck::cast(q));
    }
}

impl QuantRows {
    /// How many rows.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Their width.
    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// Blocks held (rows times blocks per row).
    pub(crate) fn block_count(&self) -> usize {
        self.scales.len()
    }

    /// Block `b`'s scale and quants.
    pub(crate) fn block(&self, b: usize) -> (f32, [i8; QK]) {
        (self.scales[b], bytemuck::cast(self.blocks[b]))
    }

    /// Appends one block (its offset computed as quantizing computes it); rows are counted
    /// by [`QuantRows::finish_rows`].
    pub(crate) fn push_block(&mut self, scale: f32, quants: [i8; QK]) {
        let mut sums = [0i32; 8];
        for row in quants.chunks_exact(8) {
            for (s, &v) in sums.iter_mut().zip(row) {
                *s += i32::from(v);
            }
        }
        self.offsets.push(-128 * sums.iter().sum::<i32>());
        self.scales.push(scale);
        self.blocks.push(bytemuck::cast(quants));
    }

    /// Sets the row count after blocks were pushed one by one.
    pub(crate) fn finish_rows(&mut self, rows: usize) {
        debug_assert_eq!(rows * (self.cols / QK), self.blocks.len());
        self.rows = rows;
    }

    /// Empties the rows and sets their width.
    pub(crate) fn clear(&mut self, cols: usize) {
        self.rows = 0;
        self.cols = cols;
        self.blocks.clear();
        self.scales.clear();
        self.offsets.clear();
    }

    /// Appends row `r` of `from`, which must have this width.
    pub(crate) fn push_row(&mut self, from: &QuantRows, r: usize) {
        assert_eq!(from.cols, self.cols, "rows of different widths");
        let kb = self.cols / QK;
        let span = r * kb..(r + 1) * kb;
        self.blocks.extend_from_slice(&from.blocks[span.clone()]);
        self.scales.extend_from_slice(&from.scales[span.clone()]);
        self.offsets.extend_from_slice(&from.offsets[span]);
        self.rows += 1;
    }

    /// Appends one row made of row `r` of each of `pieces`, side by side: column blocks
    /// quantized apart are the blocks of the row quantized whole. Their widths must add up
    /// to this width.
    pub(crate) fn push_joined_row<'a>(
        &mut self,
        pieces: impl Iterator<Item = &'a QuantRows>,
        r: usize,
    ) {
        let at = self.blocks.len();
        for from in pieces {
            let kb = from.cols / QK;
            let span = r * kb..(r + 1) * kb;
            self.blocks.extend_from_slice(&from.blocks[span.clone()]);
            self.scales.extend_from_slice(&from.scales[span.clone()]);
            self.offsets.extend_from_slice(&from.offsets[span]);
        }
        assert_eq!(
            (self.blocks.len() - at) * QK,
            self.cols,
            "pieces do not add up to the row width"
        );
        self.rows += 1;
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

/// `e^x` in branch-free arithmetic, so that a loop applying it to a slice vectorises (libm's
/// `expf` is a call per element). Within 2 ulp of the exact value wherever that is a normal
/// f32; results below the normal range (`x < -87.33`) are 0, `x > 88.72` gives +∞ and NaN stays
/// NaN.
///
/// `x = n·ln 2 + r` with `n` the nearest integer to `x·log2 e` and `|r| ≤ ln 2 / 2`; `e^r` is
/// its Taylor polynomial to degree 7 (truncation error below 6e-9 relative) and `2^n` is built
/// in the exponent bits.
#[inline]
pub(crate) fn exp(x: f32) -> f32 {
    // ln 2 in two parts: `n · LN2_HI` is exact for the |n| ≤ 128 used here.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 · 2^23: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    const LOW: f32 = -87.33;
    const HIGH: f32 = 88.72;
    let xc = x.clamp(LOW, HIGH);
    let n = (xc * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, xc));
    let mut p: f32 = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p.mul_add(r, c);
    }
    // 2^128 is not an f32: take 2^127 and double the polynomial instead.
    let e = n.min(127.0);
    // 2^e from its exponent field e + 127 (in 1..=254): adding 2^23 puts that integer in the
    // low mantissa bits, and the shift moves it into the exponent field. Unlike a float to
    // integer cast, this vectorises.
    const TWO_23: f32 = 8_388_608.0;
    let two_e = f32::from_bits((e + (127.0 + TWO_23)).to_bits() << 23);
    let y = p * (1.0 + (n - e)) * two_e;
    if x < LOW {
        0.0
    } else if x > HIGH {
        f32::INFINITY
    } else {
        y
    }
}

/// The weight rows a vector kernel writes the outputs of, and so the output row width.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Out {
    start: usize,
    end: usize,
}

#[cfg(target_arch = "x86_64")]
impl Out {
    /// Writes tile `t`'s 16 outputs for token row `i`, those of rows below `end`.
    #[inline(always)]
    fn store(self, out: &mut [f32], i: usize, t: usize, values: [f32; TILE]) {
        let first = t * TILE;
        if first >= self.end {
            return;
        }
        let valid = TILE.min(self.end - first);
        let at = i * (self.end - self.start) + first - self.start;
        out[at..at + valid].copy_from_slice(&values[..valid]);
    }
}

/// Plain Rust: the reference the vector kernels are held to, and the path on other CPUs.
mod portable {
    use std::ops::Range;

    use super::{Q8Matrix, QK, QuantRows, TILE};

    /// A tile's 16 outputs at a time, each block's integer sums first (exact), then its scale
    /// applied by one fused multiply-add: the vector kernels' operations in their order.
    pub(super) fn matmul_q8(w: &Q8Matrix, x: &QuantRows, range: Range<usize>, out: &mut [f32]) {
        let (n, kb) = (range.len(), w.cols / QK);
        for i in 0..x.rows {
            for t in range.start / TILE..range.end.div_ceil(TILE) {
                let mut acc = [0f32; TILE];
                for b in 0..kb {
                    let tile = &w.tiles[t * kb + b];
                    let xq: [i8; QK] = bytemuck::cast(x.blocks[i * kb + b]);
                    let mut sums = [0i32; TILE];
                    for (g, group) in tile.groups.iter().enumerate() {
                        for (r, s) in sums.iter_mut().enumerate() {
                            for c in 0..4 {
                                *s +=
                                    (i32::from(group[4 * r + c]) - 128) * i32::from(xq[4 * g + c]);
                            }
                        }
                    }
                    let xd = x.scales[i * kb + b];
                    for ((a, &s), &ws) in acc.iter_mut().zip(&sums).zip(&tile.scales) {
                        *a = (s as f32).mul_add(ws * xd, *a);
                    }
                }
                for (r, &a) in acc.iter().enumerate() {
                    let j = t * TILE + r;
                    if range.contains(&j) {
                        out[i * n + j - range.start] = a;
                    }
                }
            }
        }
    }

    /// For widths that are multiples of eight, the vector kernel's sums: eight lanes of
    /// fused multiply-adds, added pairwise at the end; otherwise one plain sum.
    pub(super) fn matmul_f32(w: &[f32], k_len: usize, x: &[f32], out: &mut [f32]) {
        let n = w.len() / k_len;
        for (j, wr) in w.chunks_exact(k_len).enumerate() {
            for (i, xr) in x.chunks_exact(k_len).enumerate() {
                out[i * n + j] = if k_len.is_multiple_of(8) {
                    let mut a = [0f32; 8];
                    for (wc, xc) in wr.chunks_exact(8).zip(xr.chunks_exact(8)) {
                        for l in 0..8 {
                            a[l] = wc[l].mul_add(xc[l], a[l]);
                        }
                    }
                    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
                } else {
                    wr.iter().zip(xr).map(|(a, b)| a * b).sum()
                };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::{
        __m256, __m256i, _mm256_abs_epi8, _mm256_add_epi32, _mm256_cvtepi32_ps, _mm256_fmadd_ps,
        _mm256_madd_epi16, _mm256_maddubs_epi16, _mm256_mul_ps, _mm256_set1_epi8,
        _mm256_set1_epi16, _mm256_set1_epi32, _mm256_set1_ps, _mm256_setzero_ps,
        _mm256_setzero_si256, _mm256_sign_epi8, _mm256_xor_si256,
    };
    use std::{ops::Range, sync::OnceLock};

    use super::{Out, Q8Matrix, QK, QuantRows, TILE};

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

    #[allow(unsafe_code)]
    pub(super) fn matmul_q8_checked(
        w: &Q8Matrix,
        x: &QuantRows,
        range: Range<usize>,
        out: &mut [f32],
    ) {
        assert!(available());
        // SAFETY: the function needs AVX2 and FMA, which `available` detected on this CPU.
        unsafe { matmul_q8(w, x, range, out) }
    }

    /// The tiled Q8_0 product with 256-bit vectors, giving the VNNI kernel's bits.
    ///
    /// A tile's group (four inputs of 16 rows, 64 bytes) is two vectors of eight rows. Without
    /// `vpdpbusd`, each four-product sum is `vpmaddubsw` then `vpmaddwd` by ones; to keep the
    /// 16-bit pair sums from saturating, the weights are made signed again (the +128 undone)
    /// and the sign moved to the activation: `|q_w| · (q_x · sign q_w)`, at most
    /// 2 · 128 · 127 = 32,512 in magnitude. The block's integer sums are thus exact, equal to
    /// VNNI's, and its scale is applied by the same multiply and fused multiply-add.
    #[target_feature(enable = "avx2,fma")]
    fn matmul_q8(w: &Q8Matrix, x: &QuantRows, range: Range<usize>, out: &mut [f32]) {
        let (tiles, m) = (range.end.div_ceil(TILE), x.rows);
        let o = Out {
            start: range.start,
            end: range.end,
        };
        let mut t = range.start / TILE;
        while t < tiles {
            if tiles - t >= 2 {
                let mut i = 0;
                while i + 3 <= m {
                    block::<3, 2>(w, x, i, t, o, out);
                    i += 3;
                }
                match m - i {
                    2 => block::<2, 2>(w, x, i, t, o, out),
                    1 => block::<1, 2>(w, x, i, t, o, out),
                    _ => {}
                }
                t += 2;
                continue;
            }
            for i in 0..m {
                block::<1, 1>(w, x, i, t, o, out);
            }
            t += 1;
        }
    }

    /// Outputs of tiles `t .. t + T` for token rows `i .. i + R`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn block<const R: usize, const T: usize>(
        w: &Q8Matrix,
        x: &QuantRows,
        i: usize,
        t: usize,
        o: Out,
        out: &mut [f32],
    ) {
        let kb = w.cols / QK;
        let tiles = &w.tiles[t * kb..(t + T) * kb];
        let xb = &x.blocks[i * kb..(i + R) * kb];
        let xs = &x.scales[i * kb..(i + R) * kb];
        let flip = _mm256_set1_epi8(-128);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[[_mm256_setzero_ps(); 2]; T]; R];
        for b in 0..kb {
            let mut sums = [[[_mm256_setzero_si256(); 2]; T]; R];
            // Per group, the rows' four activation quants.
            let xg: [[i32; R]; QK / 4] =
                std::array::from_fn(|g| std::array::from_fn(|r| xb[r * kb + b][g]));
            for (g, quads) in xg.iter().enumerate() {
                let xv: [__m256i; R] = quads.map(|q| _mm256_set1_epi32(q));
                for u in 0..T {
                    let halves: [__m256i; 2] = bytemuck::cast(tiles[u * kb + b].groups[g]);
                    for (h, &half) in halves.iter().enumerate() {
                        let signed = _mm256_xor_si256(half, flip);
                        let magnitude = _mm256_abs_epi8(signed);
                        for (row, &xr) in sums.iter_mut().zip(&xv) {
                            let pairs =
                                _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(xr, signed));
                            row[u][h] = _mm256_add_epi32(row[u][h], _mm256_madd_epi16(pairs, ones));
                        }
                    }
                }
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let xd = _mm256_set1_ps(xs[r * kb + b]);
                for (u, tile_acc) in row.iter_mut().enumerate() {
                    let ws: [__m256; 2] = bytemuck::cast(tiles[u * kb + b].scales);
                    for (h, a) in tile_acc.iter_mut().enumerate() {
                        let d = _mm256_mul_ps(ws[h], xd);
                        *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[r][u][h]), d, *a);
                    }
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (u, &a) in row.iter().enumerate() {
                o.store(out, i + r, t + u, bytemuck::cast(a));
            }
        }
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
    use std::{ops::Range, sync::OnceLock};

    use super::{Out, Q8Matrix, QK, QuantRows, TILE};

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
    pub(super) fn matmul_q8_checked(
        w: &Q8Matrix,
        x: &QuantRows,
        range: Range<usize>,
        out: &mut [f32],
    ) {
        assert!(available());
        // SAFETY: the function needs AVX-512F/BW/VNNI, which `available` detected on this CPU.
        unsafe { matmul_q8(w, x, range, out) }
    }

    /// Register blocks of up to four token rows by up to eight tiles: each weight group is
    /// loaded once for all the block's rows, and the block's rows × tiles sums are independent
    /// chains of `vpdpbusd`, enough to hide its latency even for one row. Whatever the blocking,
    /// each output gets the same operations in the same order.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn matmul_q8(w: &Q8Matrix, x: &QuantRows, range: Range<usize>, out: &mut [f32]) {
        let (tiles, m) = (range.end.div_ceil(TILE), x.rows);
        let o = Out {
            start: range.start,
            end: range.end,
        };
        let mut t = range.start / TILE;
        while t < tiles {
            let left = tiles - t;
            if left >= 8 && m == 1 {
                // One row: as many tiles as the registers hold.
                block::<1, 8>(w, x, 0, t, o, out);
                t += 8;
                continue;
            }
            if left >= 4 {
                let mut i = 0;
                while i + 4 <= m {
                    block::<4, 2>(w, x, i, t, o, out);
                    block::<4, 2>(w, x, i, t + 2, o, out);
                    i += 4;
                }
                match m - i {
                    3 => block::<3, 4>(w, x, i, t, o, out),
                    2 => block::<2, 4>(w, x, i, t, o, out),
                    1 => block::<1, 4>(w, x, i, t, o, out),
                    _ => {}
                }
                t += 4;
                continue;
            }
            for i in 0..m {
                block::<1, 1>(w, x, i, t, o, out);
            }
            t += 1;
        }
    }

    /// Outputs of tiles `t .. t + T` for token rows `i .. i + R`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[inline]
    fn block<const R: usize, const T: usize>(
        w: &Q8Matrix,
        x: &QuantRows,
        i: usize,
        t: usize,
        o: Out,
        out: &mut [f32],
    ) {
        let kb = w.cols / QK;
        let tiles = &w.tiles[t * kb..(t + T) * kb];
        let xb = &x.blocks[i * kb..(i + R) * kb];
        let xs = &x.scales[i * kb..(i + R) * kb];
        let xo = &x.offsets[i * kb..(i + R) * kb];
        let mut acc = [[_mm512_setzero_ps(); T]; R];
        for b in 0..kb {
            let mut sums: [[__m512i; T]; R] =
                std::array::from_fn(|r| [_mm512_set1_epi32(xo[r * kb + b]); T]);
            let xq: [&[i32; QK / 4]; R] = std::array::from_fn(|r| &xb[r * kb + b]);
            for (g, group) in tiles[b].groups.iter().enumerate() {
                let wv: [__m512i; T] = std::array::from_fn(|u| {
                    bytemuck::cast(if u == 0 {
                        *group
                    } else {
                        tiles[u * kb + b].groups[g]
                    })
                });
                for (row, xr) in sums.iter_mut().zip(&xq) {
                    let xv = _mm512_set1_epi32(xr[g]);
                    for (s, &wu) in row.iter_mut().zip(&wv) {
                        *s = _mm512_dpbusd_epi32(*s, wu, xv);
                    }
                }
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let xd = _mm512_set1_ps(xs[r * kb + b]);
                for (u, a) in row.iter_mut().enumerate() {
                    let ws: __m512 = bytemuck::cast(tiles[u * kb + b].scales);
                    let d = _mm512_mul_ps(ws, xd);
                    *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[r][u]), d, *a);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (u, &a) in row.iter().enumerate() {
                o.store(out, i + r, t + u, bytemuck::cast(a));
            }
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

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    type Q8Kernel = fn(&Q8Matrix, &QuantRows, Range<usize>, &mut [f32]);

    /// Every vector Q8_0 kernel this CPU can run, by name.
    fn vector_q8_kernels() -> Vec<(&'static str, Q8Kernel)> {
        let mut kernels: Vec<(&'static str, Q8Kernel)> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if vnni::available() {
                kernels.push(("avx512-vnni", vnni::matmul_q8_checked));
            }
            if simd::available() {
                kernels.push(("avx2", simd::matmul_q8_checked));
            }
        }
        kernels
    }

    #[test]
    fn every_q8_kernel_gives_the_portable_bits_at_the_extremes() {
        // Weights and activations at ±127 (and weights at -128, which a GGUF file may hold):
        // the largest pair sums the AVX2 kernel forms must not saturate.
        let (n, k) = (48, 64);
        let mut ggml = Vec::new();
        for r in 0..n {
            for b in 0..k / QK {
                ggml.extend_from_slice(&half::f16::from_f32(0.5 + r as f32 / 64.0).to_le_bytes());
                for c in 0..QK {
                    let q: i8 = match (r + b + c) % 4 {
                        0 => 127,
                        1 => -128,
                        2 => -127,
                        _ => (r * 7 + c) as i8,
                    };
                    ggml.push(q as u8);
                }
            }
        }
        let w = Q8Matrix::from_ggml_blocks(n, k, &ggml).unwrap();
        for m in 1..=4 {
            let x: Vec<f32> = (0..m * k)
                .map(|i| match i % 3 {
                    0 => 1.0,
                    1 => -1.0,
                    _ => (i % 7) as f32 / 7.0 - 0.5,
                })
                .collect();
            let mut rows = QuantRows::default();
            rows.quantize(&x, k);
            let mut reference = vec![0f32; m * n];
            portable::matmul_q8(&w, &rows, 0..n, &mut reference);
            assert!(reference.iter().all(|v| v.is_finite()));
            for (name, kernel) in vector_q8_kernels() {
                let mut theirs = vec![f32::NAN; m * n];
                kernel(&w, &rows, 0..n, &mut theirs);
                assert_eq!(bits(&theirs), bits(&reference), "{name}, {m} rows");
            }
        }
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_exact_value() {
        let mut x = -87.3f32;
        let mut worst = 0f64;
        while x < 88.7 {
            let exact = f64::from(x).exp();
            let ulp = f64::from(f32::EPSILON) * exact;
            worst = worst.max((f64::from(exp(x)) - exact).abs() / ulp);
            x += 0.000_37;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert!(exp(88.72).is_finite() && exp(88.72) > 3.3e38);
        assert!(exp(f32::NAN).is_nan());
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
            assert_eq!(bits(&out), bits(&reference), "width {k}");
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
        // 40 rows: two whole tiles and a partial one. 213 rows: 14 tiles, so that one row
        // takes blocks of eight, four and one tiles, and 1 to 7 rows every row blocking.
        let mut shapes = vec![(40, 96, 5), (16, 32, 1), (37, 256, 9)];
        shapes.extend((1..=7).map(|m| (213, 64, m)));
        for (n, k, m) in shapes {
            let (w, dense) = q8(n, k, 1);
            let x = values(m * k, 2);
            let mut rows = QuantRows::default();
            rows.quantize(&x, k);
            let mut out = vec![f32::NAN; m * n];
            w.matmul(&rows, &mut out);
            let mut reference = vec![0f32; m * n];
            portable::matmul_q8(&w, &rows, 0..n, &mut reference);
            assert_eq!(bits(&out), bits(&reference), "{n}x{k}, {m} rows");
            for (name, kernel) in vector_q8_kernels() {
                let mut theirs = vec![f32::NAN; m * n];
                kernel(&w, &rows, 0..n, &mut theirs);
                assert_eq!(bits(&theirs), bits(&reference), "{name}: {n}x{k}, {m} rows");
            }
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
        // 14 tiles, the last one partial: every register blocking of rows and tiles occurs.
        let n = 213;
        let (w, _) = q8(n, 64, 5);
        let x = values(7 * 64, 6);
        let mut rows = QuantRows::default();
        let alone: Vec<Vec<f32>> = (0..7)
            .map(|i| {
                rows.quantize(&x[i * 64..(i + 1) * 64], 64);
                let mut one = vec![0f32; n];
                w.matmul(&rows, &mut one);
                one
            })
            .collect();
        for m in 2..=7 {
            rows.quantize(&x[..m * 64], 64);
            let mut all = vec![0f32; m * n];
            w.matmul(&rows, &mut all);
            for (i, one) in alone.iter().take(m).enumerate() {
                assert_eq!(one[..], all[i * n..(i + 1) * n], "row {i} of {m}");
            }
        }
    }

    #[test]
    fn a_row_range_gives_the_bits_of_the_whole_product() {
        let (n, k) = (213, 64);
        let (w, _) = q8(n, k, 11);
        for m in 1..=7 {
            let x = values(m * k, 12 + m);
            let mut rows = QuantRows::default();
            rows.quantize(&x, k);
            let mut all = vec![0f32; m * n];
            w.matmul(&rows, &mut all);
            for range in [0..16, 16..64, 32..48, 64..213, 0..208, 208..213, 48..48] {
                let width = range.len();
                let mut part = vec![f32::NAN; m * width];
                w.matmul_rows(&rows, range.clone(), &mut part);
                for i in 0..m {
                    assert_eq!(
                        part[i * width..(i + 1) * width],
                        all[i * n + range.start..i * n + range.end],
                        "rows {range:?}, token row {i} of {m}"
                    );
                }
            }
        }
    }

    #[test]
    fn rows_joined_from_column_pieces_are_the_rows_quantized_whole() {
        let x = values(3 * 128, 13);
        let mut whole = QuantRows::default();
        whole.quantize(&x, 128);
        let pieces: Vec<QuantRows> = [0..64, 64..96, 96..128]
            .into_iter()
            .map(|cols| {
                let part: Vec<f32> = (0..3)
                    .flat_map(|r| x[r * 128 + cols.start..r * 128 + cols.end].iter().copied())
                    .collect();
                let mut q = QuantRows::default();
                q.quantize(&part, cols.len());
                q
            })
            .collect();
        let mut joined = QuantRows::default();
        joined.clear(128);
        for r in 0..3 {
            joined.push_joined_row(pieces.iter(), r);
        }
        assert_eq!((joined.rows, joined.cols), (3, 128));
        assert_eq!(joined.blocks, whole.blocks);
        assert_eq!(joined.scales, whole.scales);
        assert_eq!(joined.offsets, whole.offsets);
    }

    #[test]
    fn gathered_rows_are_the_rows_quantized_alone() {
        let x = values(5 * 64, 8);
        let mut all = QuantRows::default();
        all.quantize(&x, 64);
        let mut picked = QuantRows::default();
        picked.clear(64);
        for r in [3, 0, 3] {
            picked.push_row(&all, r);
        }
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
    fn q8_timing_from_l3() {
        // 32 expert-sized matrices (9 MiB): every product reads its weights from L3, as a
        // decode step does.
        let count: usize = std::env::var("Q8_MATS").map_or(32, |v| v.parse().unwrap());
        let mats: Vec<Q8Matrix> = (0..count).map(|s| q8(1024, 256, s).0).collect();
        for m in 1usize..=8 {
            let x = values(m * 256, 9);
            let mut rows = QuantRows::default();
            rows.quantize(&x, 256);
            let mut out = vec![0f32; m * 1024];
            let reps = 200;
            let start = std::time::Instant::now();
            for _ in 0..reps {
                for w in &mats {
                    w.matmul(&rows, &mut out);
                    std::hint::black_box(&out);
                }
            }
            let us = start.elapsed().as_secs_f64() * 1e6 / (reps * count) as f64;
            println!(
                "1024x256 from L3, m {m}: {us:.2} us, {:.2} us/row",
                us / m as f64
            );
        }
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

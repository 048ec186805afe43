//! The f32 matrix product `y = x · Wᵀ` for a few token rows at a time, without threads.
//!
//! Decoding multiplies a handful of token rows by each weight matrix. This kernel is
//! *weight-stationary*: each weight row is read once per call and applied to every token row
//! while it is in L1, so a batch of sequences pays for the weights once. Every output element
//! is computed by the same operations in the same order whatever the number of rows, so a
//! sequence's logits do not depend on which other sequences share its batch.
//!
//! It replaces candle's f32 matmul on the decode path because candle's asks the OS for the
//! number of physical cores on every call (it parses `/proc/cpuinfo` each time; about as long
//! as a whole decode step's router products here), and a general GEMM packs its operands,
//! which does not pay off for one to a few rows.
//!
//! Two implementations compute the same sums: a portable one, and one with AVX2/FMA
//! intrinsics chosen at run time when the CPU has them. The intrinsics take their operands by
//! value (eight f32 copied into a vector), so the only `unsafe` is the call made after the
//! feature check. Tests hold the two to agreement. On one machine the choice depends only on
//! the CPU and the matrix width, so outputs are reproducible there.

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

/// Plain Rust: the reference the vector kernel is held to, and the path on other CPUs.
mod portable {
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

    #[test]
    #[should_panic(expected = "same width")]
    fn mismatched_widths_are_refused() {
        let mut out = vec![0f32; 4];
        matmul_f32(&[1.0; 8], 4, &[1.0; 6], &mut out);
    }
}

//! Symmetric `i8` quantization: weights once per output channel at load, activations per block
//! of [`BLOCK`] inputs on every int8 pass.
//!
//! Every path rounds the same way (to nearest, ties to even: `round_ties_even` in Rust, the
//! default MXCSR mode of `_mm256_cvtps_epi32`), so the AVX2 quantizer and the portable one give
//! the same bytes and scales.

use rayon::prelude::*;

/// Inputs per activation scale. One scale per row would let a single outlier feature (BERT's
/// residual stream has a few, hundreds of times the typical magnitude) flatten every other input
/// of the row to a handful of levels (min cosine to f32 0.982 measured, against 0.9945 with
/// blocks of 32); one per 32 inputs confines it to its block.
pub(super) const BLOCK: usize = 32;

/// Symmetric `i8` quantization of `src` into `dst`; returns the scale (`src ≈ scale · dst`).
/// A row with a non-finite value gets a NaN scale, so whatever uses it is caught as non-finite.
pub(super) fn quantize_row(src: &[f32], dst: &mut [i8]) -> f32 {
    if src.iter().any(|v| !v.is_finite()) {
        dst.fill(0);
        return f32::NAN;
    }
    let max = src.iter().fold(0f32, |m, v| m.max(v.abs()));
    if max == 0.0 {
        dst.fill(0);
        return 0.0;
    }
    let inv = 127.0 / max;
    for (d, &v) in dst.iter_mut().zip(src) {
        *d = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
    }
    max / 127.0
}

/// Whether a kernel also reads `|q|` next to the signed bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Aux {
    /// `|q|`, the unsigned side of the AVX2 sign-transfer trick.
    Abs,
    /// None (left empty).
    None,
}

/// Token rows quantized in blocks of [`BLOCK`]: signed bytes, their [`Aux`] form (empty for
/// [`Aux::None`]), and one scale per block (row-major, `k.div_ceil(BLOCK)` per row).
pub(super) struct QuantRows {
    pub(super) q: Vec<i8>,
    pub(super) aux: Vec<u8>,
    pub(super) scales: Vec<f32>,
}

/// Quantizes `rows` token rows of `k` inputs (AVX2 when `simd` and `k` is a multiple of
/// [`BLOCK`]; rows in parallel for large passes when `parallel`).
pub(super) fn quantize_acts(
    x: &[f32],
    rows: usize,
    k: usize,
    aux: Aux,
    simd: bool,
    parallel: bool,
) -> QuantRows {
    let nb = k.div_ceil(BLOCK);
    let mut out = QuantRows {
        q: vec![0i8; rows * k],
        aux: vec![0u8; if aux == Aux::Abs { rows * k } else { 0 }],
        scales: vec![0f32; rows * nb],
    };
    let row = |((src, q), s): ((&[f32], &mut [i8]), &mut [f32])| quantize_acts_row(src, q, s, simd);
    let x = &x[..rows * k];
    if parallel && rows >= 64 {
        x.par_chunks_exact(k)
            .zip(out.q.par_chunks_exact_mut(k))
            .zip(out.scales.par_chunks_exact_mut(nb))
            .for_each(row);
    } else {
        x.chunks_exact(k)
            .zip(out.q.chunks_exact_mut(k))
            .zip(out.scales.chunks_exact_mut(nb))
            .for_each(row);
    }
    for (d, &v) in out.aux.iter_mut().zip(&out.q) {
        *d = v.unsigned_abs();
    }
    out
}

/// One token row: its blocks and their scales.
fn quantize_acts_row(src: &[f32], q: &mut [i8], s: &mut [f32], simd: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        if simd && src.len().is_multiple_of(BLOCK) && super::precision::cpu_has_avx2_fma_f16c() {
            for ((sb, qb), sc) in src
                .chunks_exact(BLOCK)
                .zip(q.chunks_exact_mut(BLOCK))
                .zip(s.iter_mut())
            {
                // SAFETY: AVX2 was detected just above; each chunk holds exactly BLOCK values.
                *sc = unsafe { avx2::block(sb, qb) };
            }
            return;
        }
    }
    let _ = simd;
    for ((sb, qb), sc) in src.chunks(BLOCK).zip(q.chunks_mut(BLOCK)).zip(s.iter_mut()) {
        *sc = quantize_row(sb, qb);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// [`super::quantize_row`] on one block of 32.
    ///
    /// # Safety
    /// The CPU has AVX2; each slice holds at least 32 values.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn block(src: &[f32], q: &mut [i8]) -> f32 {
        let p = src.as_ptr();
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        // x · 0 is NaN exactly for the non-finite lanes.
        let zero = _mm256_setzero_ps();
        let mut bad = _mm256_setzero_ps();
        let mut max = _mm256_setzero_ps();
        let sign = _mm256_set1_ps(-0.0);
        for x in v {
            let z = _mm256_mul_ps(x, zero);
            bad = _mm256_or_ps(bad, _mm256_cmp_ps::<_CMP_UNORD_Q>(z, z));
            max = _mm256_max_ps(max, _mm256_andnot_ps(sign, x));
        }
        if _mm256_movemask_ps(bad) != 0 {
            q[..32].fill(0);
            return f32::NAN;
        }
        let m128 = _mm_max_ps(_mm256_castps256_ps128(max), _mm256_extractf128_ps::<1>(max));
        let m64 = _mm_max_ps(m128, _mm_movehl_ps(m128, m128));
        let m = _mm_cvtss_f32(_mm_max_ss(m64, _mm_shuffle_ps::<1>(m64, m64)));
        if m == 0.0 {
            q[..32].fill(0);
            return 0.0;
        }
        let inv = _mm256_set1_ps(127.0 / m);
        let i = v.map(|x| _mm256_cvtps_epi32(_mm256_mul_ps(x, inv)));
        // packs work within 128-bit lanes; the permute restores input order.
        let w16a = _mm256_packs_epi32(i[0], i[1]);
        let w16b = _mm256_packs_epi32(i[2], i[3]);
        let b8 = _mm256_packs_epi16(w16a, w16b);
        let b8 = _mm256_permutevar8x32_epi32(b8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, b8);
        m / 127.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_symmetric_per_channel() {
        let mut q = [0i8; 4];
        let s = quantize_row(&[0.5, -1.0, 0.25, 0.0], &mut q);
        assert_eq!(q, [64, -127, 32, 0]);
        assert!((s - 1.0 / 127.0).abs() < 1e-9);
        assert!(quantize_row(&[1.0, f32::NAN, 0.0, 0.0], &mut q).is_nan());
    }

    /// The AVX2 quantizer gives the portable one's bytes and scales, ties and outliers,
    /// zero blocks and non-finite blocks included.
    #[test]
    fn simd_and_portable_quantizers_agree() {
        let k = 4 * BLOCK;
        let mut x: Vec<f32> = (0..3 * k)
            .map(|i| ((i * 7_919 % 1_013) as f32 / 506.5 - 1.0) * (1 + i % 5) as f32)
            .collect();
        // A block of exact half-steps (ties), an all-zero block, a block with an infinity.
        for (i, v) in x[..BLOCK].iter_mut().enumerate() {
            *v = if i == 0 { 127.0 } else { i as f32 + 0.5 };
        }
        x[BLOCK..2 * BLOCK].fill(0.0);
        x[k + 3] = f32::INFINITY;
        for aux in [Aux::Abs, Aux::None] {
            let a = quantize_acts(&x, 3, k, aux, false, false);
            let b = quantize_acts(&x, 3, k, aux, true, true);
            assert_eq!(a.q, b.q);
            assert_eq!(a.aux, b.aux);
            for (s, t) in a.scales.iter().zip(&b.scales) {
                assert!(s == t || (s.is_nan() && t.is_nan()), "{s} vs {t}");
            }
            assert!(a.scales[k / BLOCK].is_nan());
            assert_eq!(a.q[1], 2, "1.5 rounds to even");
            assert_eq!(a.q[2], 2, "2.5 rounds to even");
        }
    }
}

//! Dot products over `f32` slices, and the clamped dot distance between unit vectors.
//!
//! On x86-64 with AVX2 and FMA (detected at run time, once) the kernel uses 256-bit fused
//! multiply-adds with four independent accumulators; elsewhere a portable kernel with eight
//! accumulators that compilers turn into packed SIMD.

use std::sync::OnceLock;

type DotFn = fn(&[f32], &[f32]) -> f32;

fn select_kernel() -> DotFn {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return dot_avx2_entry;
        }
    }
    dot_portable
}

static KERNEL: OnceLock<DotFn> = OnceLock::new();

/// Dot product of `a` and `b` over their common length.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let kernel = KERNEL.get_or_init(select_kernel);
    kernel(a, b)
}

/// Portable dot product: eight independent accumulators so the loop vectorises.
pub fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]) + tail
}

#[cfg(target_arch = "x86_64")]
fn dot_avx2_entry(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: this function is only selected after AVX2 and FMA were detected at run time.
    unsafe { dot_avx2(a, b) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let pa = a.as_ptr();
    let pb = b.as_ptr();
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut acc2 = _mm256_setzero_ps();
    let mut acc3 = _mm256_setzero_ps();
    let mut i = 0usize;
    // SAFETY (all loads below): every offset read is < n, the common length of both slices.
    while i + 32 <= n {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        acc1 = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i + 8)),
            _mm256_loadu_ps(pb.add(i + 8)),
            acc1,
        );
        acc2 = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i + 16)),
            _mm256_loadu_ps(pb.add(i + 16)),
            acc2,
        );
        acc3 = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i + 24)),
            _mm256_loadu_ps(pb.add(i + 24)),
            acc3,
        );
        i += 32;
    }
    while i + 8 <= n {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        i += 8;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3));
    let hi = _mm256_extractf128_ps(sum, 1);
    let lo = _mm256_castps256_ps128(sum);
    let s4 = _mm_add_ps(hi, lo);
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 0x55));
    let mut total = _mm_cvtss_f32(s1);
    while i < n {
        total += *pa.add(i) * *pb.add(i);
        i += 1;
    }
    total
}

/// Distance between unit vectors: `1 - dot`, clamped at zero.
///
/// Rounding makes `dot` of near-duplicates exceed 1 slightly; the clamp keeps distances
/// non-negative (HNSW libraries such as hnsw_rs assert that). Non-finite results map to 2 (the largest
/// distance between unit vectors) so they never win a comparison.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClampedDot;

impl ClampedDot {
    /// The distance between two unit vectors.
    #[inline]
    pub fn distance(a: &[f32], b: &[f32]) -> f32 {
        let d = 1.0 - dot(a, b);
        if d.is_nan() {
            2.0
        } else {
            d.max(0.0)
        }
    }
}

/// Scales `v` to unit length in place; returns `false` (leaving `v` unchanged) for a zero or
/// non-finite vector.
pub fn normalize(v: &mut [f32]) -> bool {
    let norm = dot_portable(v, v).sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return false;
    }
    for x in v.iter_mut() {
        *x /= norm;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn kernels_agree_with_naive_sum_on_odd_lengths() {
        for n in [0usize, 1, 7, 8, 9, 31, 32, 33, 100, 384, 385] {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 7 + 3) % 11) as f32 / 11.0 - 0.4)
                .collect();
            let b: Vec<f32> = (0..n)
                .map(|i| ((i * 5 + 1) % 13) as f32 / 13.0 - 0.5)
                .collect();
            let want = naive(&a, &b);
            assert!((dot(&a, &b) - want).abs() < 1e-4, "dispatch n={n}");
            assert!((dot_portable(&a, &b) - want).abs() < 1e-4, "portable n={n}");
        }
    }

    #[test]
    fn clamped_distance_never_negative_and_nan_is_far() {
        let mut v = vec![0.3f32; 384];
        assert!(normalize(&mut v));
        let scaled: Vec<f32> = v.iter().map(|x| x * 1.0001).collect();
        assert_eq!(ClampedDot::distance(&v, &scaled), 0.0);
        let nan = vec![f32::NAN; 384];
        assert_eq!(ClampedDot::distance(&v, &nan), 2.0);
        let neg: Vec<f32> = v.iter().map(|x| -x).collect();
        assert!((ClampedDot::distance(&v, &neg) - 2.0).abs() < 1e-5);
    }

    #[test]
    fn normalize_rejects_zero() {
        let mut z = vec![0.0f32; 4];
        assert!(!normalize(&mut z));
    }
}

//! Elementwise math of the encoder: GELU (erf form, as BERT's `gelu`) and the polynomial `exp`
//! that GELU and the attention softmax share. Plain arithmetic and bit casts only, so loops over
//! them vectorise; `FMA` builds (inside `avx2,fma` functions) fuse the multiply-adds.

use super::precision::Kernel;

/// GELU with erf, as BERT's `gelu`, over a slice: the AVX2 + FMA build on the SIMD kernels, 512-bit
/// vectors on the AVX-512 tier (elementwise, the same operations: the same bits either way).
pub(super) fn gelu_in_place(xs: &mut [f32], kernel: Kernel) {
    #[cfg(target_arch = "x86_64")]
    {
        if kernel.vnni() && super::precision::cpu_has_avx512_vnni() {
            // SAFETY: AVX-512F detected just above; AVX2 and FMA come with the SIMD kernels.
            unsafe { gelu_avx512(xs) };
            return;
        }
        if kernel.simd() {
            // SAFETY: `simd()` only holds when the CPU has AVX2 and FMA (`Kernel::resolve`).
            unsafe { gelu_avx2(xs) };
            return;
        }
    }
    let _ = kernel;
    gelu_body::<false>(xs);
}

/// The AVX-512 build of [`gelu_avx2`]: sixteen lanes per instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f")]
unsafe fn gelu_avx512(xs: &mut [f32]) {
    gelu_body::<true>(xs);
}

/// The AVX2 + FMA build: the polynomials' multiply-adds fuse.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_avx2(xs: &mut [f32]) {
    gelu_body::<true>(xs);
}

/// Branch-free, so the loop vectorises.
#[inline(always)]
fn gelu_body<const FMA: bool>(xs: &mut [f32]) {
    for v in xs.iter_mut() {
        let x = *v;
        *v = 0.5 * x * (1.0 + erf::<FMA>(x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// `a · b + c`, fused where the build has FMA (`FMA` is only set inside `avx2,fma` functions;
/// elsewhere `mul_add` would be a library call).
#[inline(always)]
pub(super) fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// erf by Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7, below f32 resolution near 1).
#[inline(always)]
fn erf<const FMA: bool>(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_7;
    const A4: f32 = -1.453_152;
    const A5: f32 = 1.061_405_4;
    let m = madd::<FMA>;
    let a = x.abs();
    let t = 1.0 / m(P, a, 1.0);
    let poly = m(m(m(m(A5, t, A4), t, A3), t, A2), t, A1) * t;
    let y = m(-poly, exp_neg::<FMA>(-a * a), 1.0);
    y.copysign(x)
}

/// e^x for x ≤ 0 (clamped at -87), by range reduction to 2^n · e^r and a degree-6 polynomial;
/// relative error about 2e-7. Plain arithmetic and bit casts only, so loops over it vectorise.
#[inline(always)]
pub(super) fn exp_neg<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
    let m = madd::<FMA>;
    let x = x.max(-87.0);
    let n = m(x, LOG2E, ROUND) - ROUND;
    let r = m(-n, LN2_LO, m(-n, LN2_HI, x));
    let p = m(
        m(
            m(
                m(
                    m(m(1.0 / 720.0, r, 1.0 / 120.0), r, 1.0 / 24.0),
                    r,
                    1.0 / 6.0,
                ),
                r,
                0.5,
            ),
            r,
            1.0,
        ),
        r,
        1.0,
    );
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_libm() {
        let mut worst = 0f32;
        for i in -6000..=6000 {
            let x = i as f32 / 1000.0;
            for d in [erf::<false>(x), erf::<true>(x)] {
                worst = worst.max((d - candle_core::cpu::erf::erf_f32(x)).abs());
            }
        }
        assert!(worst < 1e-6, "erf off by {worst}");
    }

    #[test]
    fn exp_matches_std() {
        for i in 0..=8700 {
            let x = -(i as f32) / 100.0;
            let b = x.exp();
            for a in [exp_neg::<false>(x), exp_neg::<true>(x)] {
                assert!(
                    (a - b).abs() <= 4e-7 * b + f32::MIN_POSITIVE,
                    "exp({x}): {a} vs {b}"
                );
            }
        }
    }

    /// Every SIMD build of GELU gives the same bits (the 512-bit build runs the same operations
    /// on wider vectors, remainders included), and all agree with the portable one.
    #[test]
    fn gelu_builds_agree() {
        let xs: Vec<f32> = (-9_000..9_000).map(|i| i as f32 / 997.0).collect();
        let mut portable = xs.clone();
        gelu_in_place(&mut portable, Kernel::Scalar);
        let mut runs = Vec::new();
        for choice in [
            crate::embed::KernelChoice::Avx2,
            crate::embed::KernelChoice::Auto,
        ] {
            let kernel = Kernel::resolve(choice);
            // Odd lengths and offsets, so every build's remainder loop runs too.
            let mut got = xs.clone();
            for chunk in got.chunks_mut(4_093) {
                gelu_in_place(chunk, kernel);
            }
            for (g, p) in got.iter().zip(&portable) {
                assert!((g - p).abs() <= 1e-6, "{kernel}: {g} vs {p}");
            }
            runs.push(got);
        }
        assert_eq!(runs[0], runs[1], "the AVX2 and AVX-512 builds differ");
    }
}

//! The row-dot kernels: each weight row is read once, sequentially, and dotted with a tile of
//! token rows that stays in cache (AVX2 + FMA + F16C, and portable loops), for `f32`, `f16` and
//! `int8` weights. `dense.rs` decides when they run and splits the channels across threads.
//!
//! `f16` weights are widened in registers (`_mm256_cvtph_ps`); `i8` weights are dotted with `i8`
//! activations quantized on the fly (one scale per 32 inputs) in `i32`
//! (`_mm256_maddubs_epi16` + `_mm256_madd_epi16`, the sign moved onto the weight with
//! `_mm256_sign_epi8`, so no `i16` saturation is possible).

use super::precision::Kernel;
use super::quant::BLOCK as I8_BLOCK;

/// `dst[t] = bias + x[t] · w` for f32 weights (AVX2+FMA build when `simd`).
pub(super) fn dot_rows_f32(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    bias: f32,
    dst: &mut [f32],
    simd: bool,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if simd && k.is_multiple_of(8) && x.len() >= rows * k && w.len() >= k && dst.len() >= rows {
            // SAFETY: `simd` is only set when the CPU has AVX2, FMA and F16C
            // (`Kernel::resolve`); the lengths are checked just above.
            unsafe { avx2::dot_rows::<avx2::F32Row>(x, rows, k, w.as_ptr(), bias, dst) };
            return;
        }
    }
    let _ = simd;
    dot_rows_scalar(x, rows, k, w, bias, dst);
}

/// Two weight rows of one precision, for [`dot_rows_pair`].
pub(super) enum PairRows<'a> {
    /// Two `f32` rows.
    F32([&'a [f32]; 2]),
    /// Two rows of IEEE half bits.
    F16([&'a [u16]; 2]),
}

/// Two output channels at once on the AVX2 path; `false` when the caller must fall back to one
/// channel at a time (no SIMD, or shapes the kernel does not take).
pub(super) fn dot_rows_pair(
    x: &[f32],
    rows: usize,
    k: usize,
    w: PairRows,
    bias: [f32; 2],
    dst: [&mut [f32]; 2],
    kernel: Kernel,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if kernel.simd()
            && k.is_multiple_of(8)
            && x.len() >= rows * k
            && dst.iter().all(|d| d.len() >= rows)
        {
            match w {
                PairRows::F32(w) if w.iter().all(|w| w.len() >= k) => {
                    // SAFETY: `kernel.simd()` holds only when the CPU has AVX2, FMA and F16C
                    // (`Kernel::resolve`); the lengths are checked above.
                    let w = [w[0].as_ptr(), w[1].as_ptr()];
                    unsafe { avx2::dot_rows_pair::<avx2::F32Row>(x, rows, k, w, bias, dst) };
                    return true;
                }
                PairRows::F16(w) if w.iter().all(|w| w.len() >= k) => {
                    // SAFETY: as above.
                    let w = [w[0].as_ptr(), w[1].as_ptr()];
                    unsafe { avx2::dot_rows_pair::<avx2::F16Row>(x, rows, k, w, bias, dst) };
                    return true;
                }
                _ => {}
            }
        }
    }
    let _ = (x, rows, k, w, bias, dst, kernel);
    false
}

/// `dst[t] = bias + x[t] · w` for f16 weights, widened in registers (F16C) when `simd`, else
/// widened into `scratch` first.
#[allow(clippy::too_many_arguments)]
pub(super) fn dot_rows_f16(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[u16],
    bias: f32,
    dst: &mut [f32],
    simd: bool,
    scratch: &mut Vec<f32>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if simd && k.is_multiple_of(8) && x.len() >= rows * k && w.len() >= k && dst.len() >= rows {
            // SAFETY: as in `dot_rows_f32`: F16C, AVX2 and FMA present; lengths checked.
            unsafe { avx2::dot_rows::<avx2::F16Row>(x, rows, k, w.as_ptr(), bias, dst) };
            return;
        }
    }
    scratch.clear();
    scratch.extend(w[..k].iter().map(|&h| half::f16::from_bits(h).to_f32()));
    dot_rows_scalar(x, rows, k, scratch, bias, dst);
}

/// A tile's quantized activations: `i8` values, their absolute values and one scale per
/// [`I8_BLOCK`] inputs of each row.
pub(super) struct I8Rows<'a> {
    pub(super) q: &'a [i8],
    pub(super) abs: &'a [u8],
    pub(super) scales: &'a [f32],
}

/// [`dot_rows_pair`] for int8 weights: two channels per pass over the tile, each activation
/// block's loads and scale shared by both; `false` when the caller must fall back.
#[allow(clippy::too_many_arguments)]
pub(super) fn dot_rows_pair_i8(
    x: I8Rows,
    rows: usize,
    k: usize,
    w: [&[i8]; 2],
    sw: [f32; 2],
    bias: [f32; 2],
    dst: [&mut [f32]; 2],
    simd: bool,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let nb = k / I8_BLOCK;
        if simd
            && k.is_multiple_of(I8_BLOCK)
            && x.q.len() >= rows * k
            && x.abs.len() >= rows * k
            && x.scales.len() >= rows * nb
            && w.iter().all(|w| w.len() >= k)
            && dst.iter().all(|d| d.len() >= rows)
        {
            // SAFETY: `simd` implies AVX2 and FMA (`Kernel::resolve`); lengths checked above.
            unsafe {
                avx2::dot_rows_pair_i8(
                    x.q,
                    x.abs,
                    x.scales,
                    rows,
                    k,
                    [w[0].as_ptr(), w[1].as_ptr()],
                    sw,
                    bias,
                    dst,
                )
            };
            return true;
        }
    }
    let _ = (x, rows, k, w, sw, bias, dst, simd);
    false
}

/// `dst[t] = bias + sw · Σ_b (q[t]_b · w_b) · sx[t, b]`: `i8` products summed in `i32` within
/// each block `b` of [`I8_BLOCK`] inputs, then scaled by the block's activation scale in `f32`.
#[allow(clippy::too_many_arguments)]
pub(super) fn dot_rows_i8(
    q: &[i8],
    abs: &[u8],
    sx: &[f32],
    k: usize,
    w: &[i8],
    sw: f32,
    bias: f32,
    dst: &mut [f32],
    simd: bool,
) {
    let nb = k.div_ceil(I8_BLOCK);
    let rows = dst.len().min(sx.len() / nb);
    #[cfg(target_arch = "x86_64")]
    {
        if simd
            && k.is_multiple_of(I8_BLOCK)
            && q.len() >= rows * k
            && abs.len() >= rows * k
            && w.len() >= k
        {
            // SAFETY: `simd` implies AVX2 and FMA (`Kernel::resolve`); lengths checked above.
            unsafe { avx2::dot_rows_i8(q, abs, sx, rows, k, &w[..k], sw, bias, dst) };
            return;
        }
    }
    let _ = (simd, abs);
    for (t, d) in dst[..rows].iter_mut().enumerate() {
        let row = &q[t * k..(t + 1) * k];
        let mut acc = 0f32;
        for (b, (xb, wb)) in row
            .chunks(I8_BLOCK)
            .zip(w[..k].chunks(I8_BLOCK))
            .enumerate()
        {
            let s: i32 = xb.iter().zip(wb).map(|(&a, &c)| a as i32 * c as i32).sum();
            acc += s as f32 * sx[t * nb + b];
        }
        *d = bias + acc * sw;
    }
}

/// Portable f32 row dots: four token rows share each load of `w`; eight lanes per accumulator.
fn dot_rows_scalar(x: &[f32], rows: usize, k: usize, w: &[f32], bias: f32, dst: &mut [f32]) {
    let lanes = k / 8 * 8;
    let mut t = 0;
    while t + 4 <= rows {
        let x0 = &x[t * k..t * k + k];
        let x1 = &x[(t + 1) * k..(t + 1) * k + k];
        let x2 = &x[(t + 2) * k..(t + 2) * k + k];
        let x3 = &x[(t + 3) * k..(t + 3) * k + k];
        let mut a = [[0f32; 8]; 4];
        let mut i = 0;
        while i < lanes {
            let wv = &w[i..i + 8];
            for l in 0..8 {
                a[0][l] += x0[i + l] * wv[l];
                a[1][l] += x1[i + l] * wv[l];
                a[2][l] += x2[i + l] * wv[l];
                a[3][l] += x3[i + l] * wv[l];
            }
            i += 8;
        }
        for (r, acc) in a.iter().enumerate() {
            let xr = &x[(t + r) * k..(t + r) * k + k];
            let mut s = acc.iter().sum::<f32>();
            for i in lanes..k {
                s += xr[i] * w[i];
            }
            dst[t + r] = bias + s;
        }
        t += 4;
    }
    while t < rows {
        let xr = &x[t * k..t * k + k];
        let mut acc = [0f32; 8];
        let mut i = 0;
        while i < lanes {
            for l in 0..8 {
                acc[l] += xr[i + l] * w[i + l];
            }
            i += 8;
        }
        let mut s = acc.iter().sum::<f32>();
        for i in lanes..k {
            s += xr[i] * w[i];
        }
        dst[t] = bias + s;
        t += 1;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// How a weight row's eight lanes at `i` are loaded as `f32`.
    pub(super) trait WeightRow {
        type Elem;
        /// # Safety
        /// `w.add(i)..w.add(i + 8)` must be readable and the CPU must have AVX2 and F16C.
        unsafe fn load8(w: *const Self::Elem, i: usize) -> __m256;
    }

    pub(super) struct F32Row;
    impl WeightRow for F32Row {
        type Elem = f32;
        #[inline(always)]
        unsafe fn load8(w: *const f32, i: usize) -> __m256 {
            _mm256_loadu_ps(w.add(i))
        }
    }

    pub(super) struct F16Row;
    impl WeightRow for F16Row {
        type Elem = u16;
        #[inline(always)]
        unsafe fn load8(w: *const u16, i: usize) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(w.add(i) as *const __m128i))
        }
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Both lanes' sums of `a` and `b`: `(Σa, Σb)` with two horizontal adds.
    #[inline(always)]
    unsafe fn hsum2(a: __m256, b: __m256) -> (f32, f32) {
        // [a01 a23 b01 b23 | a45 a67 b45 b67]
        let h = _mm256_hadd_ps(a, b);
        let s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        // [Σa Σb Σa Σb]
        let s = _mm_hadd_ps(s, s);
        (_mm_cvtss_f32(s), _mm_cvtss_f32(_mm_shuffle_ps(s, s, 1)))
    }

    /// `R` token rows from `t` against two weight rows: `2R` accumulators, one activation load
    /// per two FMAs. A non-null `pf` is prefetched alongside (see `dot_rows_pair`).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn pair_tile<W: WeightRow, const R: usize>(
        xp: *const f32,
        t: usize,
        k: usize,
        w: [*const W::Elem; 2],
        bias: [f32; 2],
        dst0: &mut [f32],
        dst1: &mut [f32],
        pf: *const u8,
    ) {
        let r: [*const f32; R] = std::array::from_fn(|q| xp.add((t + q) * k));
        let mut a0 = [_mm256_setzero_ps(); R];
        let mut a1 = [_mm256_setzero_ps(); R];
        let size = std::mem::size_of::<W::Elem>();
        let mut i = 0;
        while i < k {
            if !pf.is_null() {
                // Two rows' worth of the bytes this step reads from each of its own two rows.
                _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(2 * i * size) as *const i8);
            }
            let v0 = W::load8(w[0], i);
            let v1 = W::load8(w[1], i);
            for q in 0..R {
                let xv = _mm256_loadu_ps(r[q].add(i));
                a0[q] = _mm256_fmadd_ps(xv, v0, a0[q]);
                a1[q] = _mm256_fmadd_ps(xv, v1, a1[q]);
            }
            i += 8;
        }
        for q in 0..R {
            let (s0, s1) = hsum2(a0[q], a1[q]);
            dst0[t + q] = bias[0] + s0;
            dst1[t + q] = bias[1] + s1;
        }
    }

    /// `dst[c][t] = bias[c] + x[t] · w[c]` for two weight rows at once, up to six token rows
    /// per step: up to twelve accumulators, two weight and one activation register,
    /// so each activation load feeds two FMAs instead of one. A channel's sum order does not
    /// depend on how many rows the pass has, so a text gets the same bits alone or in a batch.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `k % 8 == 0`; `x` holds `rows · k` values, each `w[c]`
    /// `k`, each `dst[c]` `rows`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_rows_pair<W: WeightRow>(
        x: &[f32],
        rows: usize,
        k: usize,
        w: [*const W::Elem; 2],
        bias: [f32; 2],
        dst: [&mut [f32]; 2],
    ) {
        pair_tiles::<W, 6>(x, rows, k, w, bias, dst)
    }

    /// The tiles of [`dot_rows_pair`], at most `MAX` rows each.
    #[inline(always)]
    unsafe fn pair_tiles<W: WeightRow, const MAX: usize>(
        x: &[f32],
        rows: usize,
        k: usize,
        w: [*const W::Elem; 2],
        bias: [f32; 2],
        dst: [&mut [f32]; 2],
    ) {
        let xp = x.as_ptr();
        let [dst0, dst1] = dst;
        // The next two weight rows follow `w[1]` in memory (rows are contiguous): the first tile
        // prefetches them at the pace it reads its own two, so the next pair does not wait on
        // L3 or DRAM. A prefetch never faults, so lines past the matrix's end on the last pair
        // are harmless (`wrapping_add`: no out-of-bounds pointer is formed by `add`).
        let next = (w[1] as *const u8).wrapping_add(k * std::mem::size_of::<W::Elem>());
        // As few tiles as `MAX` rows allow, sized evenly (20 rows at six: 5+5+5+5, not
        // 6+6+6+2): a tile of one or two rows has too few accumulators to hide the FMA latency.
        let tiles = rows.div_ceil(MAX);
        let mut t = 0;
        for n in 0..tiles {
            let r = (rows - t) / (tiles - n);
            let pf = if n == 0 { next } else { std::ptr::null() };
            match r {
                6 => pair_tile::<W, 6>(xp, t, k, w, bias, dst0, dst1, pf),
                5 => pair_tile::<W, 5>(xp, t, k, w, bias, dst0, dst1, pf),
                4 => pair_tile::<W, 4>(xp, t, k, w, bias, dst0, dst1, pf),
                3 => pair_tile::<W, 3>(xp, t, k, w, bias, dst0, dst1, pf),
                2 => pair_tile::<W, 2>(xp, t, k, w, bias, dst0, dst1, pf),
                _ => pair_tile::<W, 1>(xp, t, k, w, bias, dst0, dst1, pf),
            }
            t += r;
        }
    }

    /// `dst[t] = bias + x[t] · w` with eight token rows (then four, then one) sharing each
    /// widened load of `w`.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `k % 8 == 0`; `x` holds `rows · k` values, `w` `k`,
    /// `dst` `rows`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_rows<W: WeightRow>(
        x: &[f32],
        rows: usize,
        k: usize,
        wp: *const W::Elem,
        bias: f32,
        dst: &mut [f32],
    ) {
        let xp = x.as_ptr();
        let mut t = 0;
        while t + 8 <= rows {
            let r: [*const f32; 8] = std::array::from_fn(|q| xp.add((t + q) * k));
            let mut acc = [_mm256_setzero_ps(); 8];
            let mut i = 0;
            while i < k {
                let wv = W::load8(wp, i);
                for q in 0..8 {
                    acc[q] = _mm256_fmadd_ps(_mm256_loadu_ps(r[q].add(i)), wv, acc[q]);
                }
                i += 8;
            }
            for q in 0..8 {
                dst[t + q] = bias + hsum(acc[q]);
            }
            t += 8;
        }
        while t + 4 <= rows {
            let r: [*const f32; 4] = std::array::from_fn(|q| xp.add((t + q) * k));
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i < k {
                let wv = W::load8(wp, i);
                for q in 0..4 {
                    acc[q] = _mm256_fmadd_ps(_mm256_loadu_ps(r[q].add(i)), wv, acc[q]);
                }
                i += 8;
            }
            for q in 0..4 {
                dst[t + q] = bias + hsum(acc[q]);
            }
            t += 4;
        }
        while t < rows {
            let r0 = xp.add(t * k);
            let mut a0 = _mm256_setzero_ps();
            let mut i = 0;
            while i < k {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r0.add(i)), W::load8(wp, i), a0);
                i += 8;
            }
            dst[t] = bias + hsum(a0);
            t += 1;
        }
    }

    /// One block of 32 `i8` products, as `f32` lanes: `maddubs` takes unsigned × signed, so the
    /// sign of `x` moves onto `w` (`_mm256_sign_epi8`) and `|x|` is the unsigned side. Both
    /// factors lie in `[-127, 127]`, so a pair sum is at most 2 · 127 · 127 = 32,258 and the
    /// `i16` never saturates; `madd` with ones widens the pairs to `i32`.
    #[inline(always)]
    unsafe fn block(xabs: __m256i, xq: __m256i, w: __m256i, ones: __m256i) -> __m256 {
        let p16 = _mm256_maddubs_epi16(xabs, _mm256_sign_epi8(w, xq));
        _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones))
    }

    /// `R` token rows from `t` against two int8 weight rows (see `dot_rows_pair_i8`).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn pair_tile_i8<const R: usize>(
        qp: *const i8,
        ap: *const u8,
        sp: *const f32,
        t: usize,
        k: usize,
        w: [*const i8; 2],
        sw: [f32; 2],
        bias: [f32; 2],
        dst0: &mut [f32],
        dst1: &mut [f32],
        pf: *const u8,
    ) {
        let ones = _mm256_set1_epi16(1);
        let nb = k / 32;
        let ld = |p: *const i8| _mm256_loadu_si256(p as *const __m256i);
        let ldu = |p: *const u8| _mm256_loadu_si256(p as *const __m256i);
        let mut a0 = [_mm256_setzero_ps(); R];
        let mut a1 = [_mm256_setzero_ps(); R];
        for b in 0..nb {
            let i = b * 32;
            if !pf.is_null() {
                // The next pair's two rows, at the pace this step reads its own.
                _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(2 * i) as *const i8);
            }
            let w0 = ld(w[0].add(i));
            let w1 = ld(w[1].add(i));
            for r in 0..R {
                let o = (t + r) * k + i;
                let (xa, xq) = (ldu(ap.add(o)), ld(qp.add(o)));
                let s = _mm256_broadcast_ss(&*sp.add((t + r) * nb + b));
                a0[r] = _mm256_fmadd_ps(block(xa, xq, w0, ones), s, a0[r]);
                a1[r] = _mm256_fmadd_ps(block(xa, xq, w1, ones), s, a1[r]);
            }
        }
        for r in 0..R {
            let (s0, s1) = hsum2(a0[r], a1[r]);
            dst0[t + r] = bias[0] + s0 * sw[0];
            dst1[t + r] = bias[1] + s1 * sw[1];
        }
    }

    /// Two int8 channels at once, up to four token rows per step, rows split into even tiles;
    /// the first tile prefetches the next pair's rows (as `dot_rows_pair`).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `k % 32 == 0`; `q` and `abs` hold `rows · k` values, `sx`
    /// `rows · k / 32`, each `w[c]` `k`, each `dst[c]` `rows`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_rows_pair_i8(
        q: &[i8],
        abs: &[u8],
        sx: &[f32],
        rows: usize,
        k: usize,
        w: [*const i8; 2],
        sw: [f32; 2],
        bias: [f32; 2],
        dst: [&mut [f32]; 2],
    ) {
        let (qp, ap, sp) = (q.as_ptr(), abs.as_ptr(), sx.as_ptr());
        let [dst0, dst1] = dst;
        let next = (w[1] as *const u8).wrapping_add(k);
        let tiles = rows.div_ceil(4);
        let mut t = 0;
        for n in 0..tiles {
            let r = (rows - t) / (tiles - n);
            let pf = if n == 0 { next } else { std::ptr::null() };
            match r {
                4 => pair_tile_i8::<4>(qp, ap, sp, t, k, w, sw, bias, dst0, dst1, pf),
                3 => pair_tile_i8::<3>(qp, ap, sp, t, k, w, sw, bias, dst0, dst1, pf),
                2 => pair_tile_i8::<2>(qp, ap, sp, t, k, w, sw, bias, dst0, dst1, pf),
                _ => pair_tile_i8::<1>(qp, ap, sp, t, k, w, sw, bias, dst0, dst1, pf),
            }
            t += r;
        }
    }

    /// `dst[t] = bias + sw · Σ_b (q[t]_b · w_b) · sx[t, b]` over blocks of 32, four token rows
    /// sharing each load of `w`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `k % 32 == 0`; `q` and `abs` hold `rows · k` values, `sx`
    /// `rows · k / 32`, `w` `k`, `dst` `rows`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_rows_i8(
        q: &[i8],
        abs: &[u8],
        sx: &[f32],
        rows: usize,
        k: usize,
        w: &[i8],
        sw: f32,
        bias: f32,
        dst: &mut [f32],
    ) {
        let ones = _mm256_set1_epi16(1);
        let nb = k / 32;
        let (qp, ap, wp, sp) = (q.as_ptr(), abs.as_ptr(), w.as_ptr(), sx.as_ptr());
        let ld = |p: *const i8| _mm256_loadu_si256(p as *const __m256i);
        let ldu = |p: *const u8| _mm256_loadu_si256(p as *const __m256i);
        let mut t = 0;
        while t + 4 <= rows {
            let mut acc = [_mm256_setzero_ps(); 4];
            for b in 0..nb {
                let i = b * 32;
                let wv = ld(wp.add(i));
                for (r, a) in acc.iter_mut().enumerate() {
                    let o = (t + r) * k + i;
                    let s = _mm256_broadcast_ss(&*sp.add((t + r) * nb + b));
                    *a = _mm256_fmadd_ps(block(ldu(ap.add(o)), ld(qp.add(o)), wv, ones), s, *a);
                }
            }
            for (r, a) in acc.iter().enumerate() {
                dst[t + r] = bias + hsum(*a) * sw;
            }
            t += 4;
        }
        while t < rows {
            let mut a = _mm256_setzero_ps();
            for b in 0..nb {
                let i = b * 32;
                let o = t * k + i;
                let s = _mm256_broadcast_ss(&*sp.add(t * nb + b));
                a = _mm256_fmadd_ps(
                    block(ldu(ap.add(o)), ld(qp.add(o)), ld(wp.add(i)), ones),
                    s,
                    a,
                );
            }
            dst[t] = bias + hsum(a) * sw;
            t += 1;
        }
    }
}

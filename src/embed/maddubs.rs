//! The int8 projection on AVX2 without VNNI: weights packed so that eight output channels share
//! a register and no product ever needs a horizontal sum (the AVX2 counterpart of `vnni.rs`).
//!
//! The packed layout puts four consecutive inputs of eight channels in one 32-byte register
//! (`[group][k / 4][channel][4]`, signed bytes as quantized). Four inputs of one token row,
//! broadcast to every lane, meet eight channels at once: `_mm256_sign_epi8` moves each
//! activation's sign onto its weight, `_mm256_maddubs_epi16` multiplies by the activation's
//! absolute value (both factors lie in `[-127, 127]`, so a pair sum is at most 32,258 and the
//! `i16` never saturates), and `_mm256_madd_epi16` with ones adds the pairs into the channel's
//! `i32` lane. That is four instructions per 32 multiply-adds, against five plus a horizontal
//! sum per row in the row-dot kernel (`rowdot.rs`), whose every 32-input step also converts and
//! scales. Here each block of 32 inputs is summed in `i32` and scaled once in `f32`, in input
//! order, so each block sum is the exact integer the other int8 kernels compute.

use super::outptr::OutPtr;
use super::precision::cpu_has_avx2_fma_f16c;

/// Output channels per register.
const LANES: usize = 8;
/// Inputs per activation scale (the int8 kernels' block).
const BLOCK: usize = 32;
/// Channels per tile: two registers of eight.
const TILE_COLS: usize = 2 * LANES;
/// Token rows per step of a tile: 2 × 4 `i32` accumulators, two weight registers, the ones and
/// the two broadcasts fill AVX2's sixteen registers; the 2 × 4 `f32` accumulators, touched once
/// per block of 32 inputs, live on the stack (a measured choice: the kernel runs at the measured
/// rate of its instruction step, BENCHMARKS.md §1b run 8).
const MAX_ROWS: usize = 4;
/// Token rows whose activations stay in L2 while a job's weights stream past them.
const ROW_TILE: usize = 64;

/// A projection's `i8` weights in the packed AVX2 layout.
pub(super) struct PackedI8 {
    /// `[n / 8][k / 4][8][4]` bytes of the `(out, in)` `i8` matrix.
    packed: Vec<i8>,
}

impl PackedI8 {
    /// Packs the `(n, k)` row-major `i8` matrix; `None` when `n` is not a multiple of 16 or `k`
    /// of 32 (then the row-dot kernel runs).
    pub(super) fn pack(rows: &[i8], n: usize, k: usize) -> Option<PackedI8> {
        if n == 0 || k == 0 || !n.is_multiple_of(TILE_COLS) || !k.is_multiple_of(BLOCK) {
            return None;
        }
        if rows.len() < n * k {
            return None;
        }
        let mut packed = Vec::with_capacity(n * k);
        for g in 0..n / LANES {
            let group = &rows[g * LANES * k..(g + 1) * LANES * k];
            for q in 0..k / 4 {
                for l in 0..LANES {
                    packed.extend_from_slice(&group[l * k + 4 * q..l * k + 4 * q + 4]);
                }
            }
        }
        Some(PackedI8 { packed })
    }
}

/// The quantized activations the kernel reads: `rows · k` signed bytes, their absolute values,
/// and one scale per (row, block of 32).
pub(super) struct Acts<'a> {
    pub(super) q: &'a [i8],
    pub(super) abs: &'a [u8],
    pub(super) scales: &'a [f32],
}

/// `out (rows, n) = x · Wᵀ + b` over the channels `first..first + count` (a multiple of 16);
/// `false` when the CPU lacks the instructions or a length is off (the caller falls back).
///
/// # Safety
/// `out` points at a buffer of at least `rows · n` values, and no one else writes its channels
/// `first..first + count` during the call.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn channels(
    x: &Acts,
    rows: usize,
    k: usize,
    n: usize,
    w: &PackedI8,
    sw: &[f32],
    bias: &[f32],
    out: &OutPtr,
    first: usize,
    count: usize,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let nb = k / BLOCK;
        if cpu_has_avx2_fma_f16c()
            && k.is_multiple_of(BLOCK)
            && n.is_multiple_of(TILE_COLS)
            && first.is_multiple_of(TILE_COLS)
            && count.is_multiple_of(TILE_COLS)
            && first + count <= n
            && x.q.len() >= rows * k
            && x.abs.len() >= rows * k
            && x.scales.len() >= rows * nb
            && w.packed.len() >= n * k
            && sw.len() >= n
            && bias.len() >= n
        {
            // SAFETY: AVX2 and FMA were detected just above; every length the kernel reads is
            // checked above; the output is as this function's contract requires.
            unsafe { x86::channels(x, rows, k, n, w, sw, bias, out, first, count) };
            return true;
        }
    }
    let _ = (x, rows, k, n, w, sw, bias, out, first, count);
    false
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Acts, OutPtr, PackedI8, BLOCK, LANES, MAX_ROWS, ROW_TILE, TILE_COLS};

    /// `R` token rows from `t` against the 16 channels from `j`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize>(
        xq: *const i8,
        xa: *const u8,
        sx: *const f32,
        t: usize,
        k: usize,
        n: usize,
        w: [*const i8; 2],
        sw: *const f32,
        bias: *const f32,
        out: &OutPtr,
        j: usize,
    ) {
        let nb = k / BLOCK;
        let ones = _mm256_set1_epi16(1);
        let mut f0 = [_mm256_setzero_ps(); R];
        let mut f1 = [_mm256_setzero_ps(); R];
        for b in 0..nb {
            let mut a0 = [_mm256_setzero_si256(); R];
            let mut a1 = [_mm256_setzero_si256(); R];
            for q in 0..BLOCK / 4 {
                let kq = b * BLOCK / 4 + q;
                let w0 = _mm256_loadu_si256(w[0].add(kq * 4 * LANES) as *const __m256i);
                let w1 = _mm256_loadu_si256(w[1].add(kq * 4 * LANES) as *const __m256i);
                for r in 0..R {
                    let o = (t + r) * k + kq * 4;
                    let sv = _mm256_set1_epi32((xq.add(o) as *const i32).read_unaligned());
                    let av = _mm256_set1_epi32((xa.add(o) as *const i32).read_unaligned());
                    let p0 = _mm256_maddubs_epi16(av, _mm256_sign_epi8(w0, sv));
                    let p1 = _mm256_maddubs_epi16(av, _mm256_sign_epi8(w1, sv));
                    a0[r] = _mm256_add_epi32(a0[r], _mm256_madd_epi16(p0, ones));
                    a1[r] = _mm256_add_epi32(a1[r], _mm256_madd_epi16(p1, ones));
                }
            }
            for r in 0..R {
                let s = _mm256_set1_ps(*sx.add((t + r) * nb + b));
                f0[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a0[r]), s, f0[r]);
                f1[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a1[r]), s, f1[r]);
            }
        }
        for (c, f) in [f0, f1].iter().enumerate() {
            let s = _mm256_loadu_ps(sw.add(j + c * LANES));
            let bb = _mm256_loadu_ps(bias.add(j + c * LANES));
            for (r, v) in f.iter().enumerate() {
                _mm256_storeu_ps(
                    out.at((t + r) * n + j + c * LANES),
                    _mm256_fmadd_ps(*v, s, bb),
                );
            }
        }
    }

    /// See [`super::channels`].
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; the lengths are as [`super::channels`] checks; the caller owns
    /// the output channels `first..first + count` of every row.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn channels(
        x: &Acts,
        rows: usize,
        k: usize,
        n: usize,
        w: &PackedI8,
        sw: &[f32],
        bias: &[f32],
        out: &OutPtr,
        first: usize,
        count: usize,
    ) {
        let (xq, xa, sx) = (x.q.as_ptr(), x.abs.as_ptr(), x.scales.as_ptr());
        let wp = w.packed.as_ptr();
        let (sw, bias) = (sw.as_ptr(), bias.as_ptr());
        for t0 in (0..rows).step_by(ROW_TILE) {
            let tr = ROW_TILE.min(rows - t0);
            for j in (first..first + count).step_by(TILE_COLS) {
                let g = j / LANES;
                let wt = [wp.add(g * LANES * k), wp.add((g + 1) * LANES * k)];
                // Rows split into even steps of at most four, so a 20-token query runs five steps of four.
                let steps = tr.div_ceil(MAX_ROWS);
                let mut t = t0;
                for s in 0..steps {
                    let r = (t0 + tr - t) / (steps - s);
                    match r {
                        4 => tile::<4>(xq, xa, sx, t, k, n, wt, sw, bias, out, j),
                        3 => tile::<3>(xq, xa, sx, t, k, n, wt, sw, bias, out, j),
                        2 => tile::<2>(xq, xa, sx, t, k, n, wt, sw, bias, out, j),
                        _ => tile::<1>(xq, xa, sx, t, k, n, wt, sw, bias, out, j),
                    }
                    debug_assert!((1..=MAX_ROWS).contains(&r), "a step of {r} rows");
                    t += r;
                }
            }
        }
    }
}

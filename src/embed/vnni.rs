//! The int8 projection on AVX-512 VNNI: weights packed for `vpdpbusd`, sixteen output channels
//! per register, so no product ever needs a horizontal sum.
//!
//! `vpdpbusd` multiplies unsigned bytes by signed bytes and adds each group of four products
//! into an `i32` lane. The packed layout puts four consecutive inputs of sixteen channels in one
//! 64-byte register (`[group][k / 4][channel][4]`); four inputs of one token row, broadcast to
//! every lane, then feed sixteen channels with one instruction. The weights are the unsigned
//! side, offset by 128 (`w ^ 0x80`) at load; the activations are the same symmetric `i8` blocks
//! as the AVX2 kernel's (one scale per 32 inputs). The offset adds `128 · Σ x` over each block,
//! the same for every channel: its negation, one `i32` per (row, block), seeds the block's
//! accumulators, so each block sum is the exact integer the other int8 kernels compute and the
//! weights stay one byte each. Each block's sum is scaled once in `f32`, in input order, so a
//! channel's result does not depend on how many rows share the pass.

use super::outptr::OutPtr;
use super::precision::cpu_has_avx512_vnni;

/// Output channels per register.
const LANES: usize = 16;
/// Inputs per activation scale (the int8 kernels' block).
const BLOCK: usize = 32;
/// Channels per tile: two registers of sixteen.
const TILE_COLS: usize = 2 * LANES;
/// Token rows per step of a tile: 2 × 6 `i32` and 2 × 6 `f32` accumulators fit the 32 registers.
const MAX_ROWS: usize = 6;
/// Token rows whose activations stay in L2 while a job's weights stream past them.
const ROW_TILE: usize = 64;

/// A projection's `i8` weights in the `vpdpbusd` layout.
pub(super) struct VnniWeights {
    /// `[n / 16][k / 4][16][4]` bytes of the `(out, in)` `i8` matrix, each plus 128.
    packed: Vec<u8>,
}

impl VnniWeights {
    /// Packs the `(n, k)` row-major `i8` matrix; `None` when `n` is not a multiple of 32 or `k`
    /// of 32 (then the AVX2 kernel runs).
    pub(super) fn pack(rows: &[i8], n: usize, k: usize) -> Option<VnniWeights> {
        if n == 0 || k == 0 || !n.is_multiple_of(TILE_COLS) || !k.is_multiple_of(BLOCK) {
            return None;
        }
        if rows.len() < n * k {
            return None;
        }
        // Written in output order (sequential stores; sixteen rows read in step).
        let mut packed = Vec::with_capacity(n * k);
        for g in 0..n / LANES {
            let group = &rows[g * LANES * k..(g + 1) * LANES * k];
            for q in 0..k / 4 {
                for l in 0..LANES {
                    let four = &group[l * k + 4 * q..l * k + 4 * q + 4];
                    packed.extend(four.iter().map(|&w| (w as u8) ^ 0x80));
                }
            }
        }
        Some(VnniWeights { packed })
    }
}

/// The quantized activations the kernel reads: `rows · k` signed bytes, and per (row, block)
/// the scale and `-128 · Σ q` over the block.
pub(super) struct Acts<'a> {
    pub(super) q: &'a [i8],
    pub(super) scales: &'a [f32],
    pub(super) neg_offset: &'a [i32],
}

impl Acts<'_> {
    /// `-128 · Σ q` over each block of `q` (row-major blocks of 32).
    pub(super) fn offsets(q: &[i8]) -> Vec<i32> {
        q.chunks(BLOCK)
            .map(|b| -128 * b.iter().map(|&v| v as i32).sum::<i32>())
            .collect()
    }
}

/// `out (rows, n) = x · Wᵀ + b` over the channels `first..first + count` (a multiple of 32);
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
    w: &VnniWeights,
    sw: &[f32],
    bias: &[f32],
    out: &OutPtr,
    first: usize,
    count: usize,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let nb = k / BLOCK;
        if cpu_has_avx512_vnni()
            && k.is_multiple_of(BLOCK)
            && n.is_multiple_of(TILE_COLS)
            && first.is_multiple_of(TILE_COLS)
            && count.is_multiple_of(TILE_COLS)
            && first + count <= n
            && x.q.len() >= rows * k
            && x.scales.len() >= rows * nb
            && x.neg_offset.len() >= rows * nb
            && w.packed.len() >= n * k
            && sw.len() >= n
            && bias.len() >= n
        {
            // SAFETY: AVX-512F and VNNI were detected just above; every length the kernel
            // reads is checked above; the output is as this function's contract requires.
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

    use super::{Acts, OutPtr, VnniWeights, BLOCK, LANES, MAX_ROWS, ROW_TILE, TILE_COLS};

    /// `R` token rows from `t` against the 32 channels from `j`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize>(
        xq: *const i8,
        sx: *const f32,
        neg: *const i32,
        t: usize,
        k: usize,
        n: usize,
        w: [*const u8; 2],
        sw: *const f32,
        bias: *const f32,
        out: &OutPtr,
        j: usize,
    ) {
        let nb = k / BLOCK;
        let mut f0 = [_mm512_setzero_ps(); R];
        let mut f1 = [_mm512_setzero_ps(); R];
        for b in 0..nb {
            let mut a0: [__m512i; R] =
                std::array::from_fn(|r| _mm512_set1_epi32(*neg.add((t + r) * nb + b)));
            let mut a1 = a0;
            for q in 0..BLOCK / 4 {
                let kq = b * BLOCK / 4 + q;
                let w0 = _mm512_loadu_si512(w[0].add(kq * 4 * LANES) as *const __m512i);
                let w1 = _mm512_loadu_si512(w[1].add(kq * 4 * LANES) as *const __m512i);
                for r in 0..R {
                    let four = (xq.add((t + r) * k + kq * 4) as *const i32).read_unaligned();
                    let xv = _mm512_set1_epi32(four);
                    a0[r] = _mm512_dpbusd_epi32(a0[r], w0, xv);
                    a1[r] = _mm512_dpbusd_epi32(a1[r], w1, xv);
                }
            }
            for r in 0..R {
                let s = _mm512_set1_ps(*sx.add((t + r) * nb + b));
                f0[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a0[r]), s, f0[r]);
                f1[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a1[r]), s, f1[r]);
            }
        }
        for (c, f) in [f0, f1].iter().enumerate() {
            let s = _mm512_loadu_ps(sw.add(j + c * LANES));
            let bb = _mm512_loadu_ps(bias.add(j + c * LANES));
            for (r, v) in f.iter().enumerate() {
                _mm512_storeu_ps(
                    out.at((t + r) * n + j + c * LANES),
                    _mm512_fmadd_ps(*v, s, bb),
                );
            }
        }
    }

    /// See [`super::channels`].
    ///
    /// # Safety
    /// The CPU has AVX-512F and VNNI; the lengths are as [`super::channels`] checks; the caller
    /// owns the output channels `first..first + count` of every row.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) unsafe fn channels(
        x: &Acts,
        rows: usize,
        k: usize,
        n: usize,
        w: &VnniWeights,
        sw: &[f32],
        bias: &[f32],
        out: &OutPtr,
        first: usize,
        count: usize,
    ) {
        let (xq, sx, neg) = (x.q.as_ptr(), x.scales.as_ptr(), x.neg_offset.as_ptr());
        let wp = w.packed.as_ptr();
        let (sw, bias) = (sw.as_ptr(), bias.as_ptr());
        for t0 in (0..rows).step_by(ROW_TILE) {
            let tr = ROW_TILE.min(rows - t0);
            for j in (first..first + count).step_by(TILE_COLS) {
                let g = j / LANES;
                let wt = [wp.add(g * LANES * k), wp.add((g + 1) * LANES * k)];
                // Rows split into even steps of at most six, so a 20-token query runs 5+5+5+5.
                let steps = tr.div_ceil(MAX_ROWS);
                let mut t = t0;
                for s in 0..steps {
                    let r = (t0 + tr - t) / (steps - s);
                    match r {
                        6 => tile::<6>(xq, sx, neg, t, k, n, wt, sw, bias, out, j),
                        5 => tile::<5>(xq, sx, neg, t, k, n, wt, sw, bias, out, j),
                        4 => tile::<4>(xq, sx, neg, t, k, n, wt, sw, bias, out, j),
                        3 => tile::<3>(xq, sx, neg, t, k, n, wt, sw, bias, out, j),
                        2 => tile::<2>(xq, sx, neg, t, k, n, wt, sw, bias, out, j),
                        _ => tile::<1>(xq, sx, neg, t, k, n, wt, sw, bias, out, j),
                    }
                    t += r;
                }
            }
        }
    }
}

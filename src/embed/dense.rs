//! The encoder's dense projections in three weight precisions, and the kernels that apply them.
//!
//! A projection is `out (rows, n_out) = x (rows, n_in) · Wᵀ + b` with `W` stored `(out, in)` as in
//! the checkpoint. Four kernels apply it:
//!
//! * on CPUs with the AVX-512 tier ([`Kernel::Avx512Vnni`]: AVX-512F, VL and VNNI), **every
//!   `f32` and `f16` pass** runs the panel kernel in `panels.rs` (weights packed in 32-channel
//!   panels, 512-bit outer products, no horizontal sums), and **every int8 pass** the packed
//!   `vpdpbusd` kernel in `vnni.rs` (same activation blocks and integer sums as the AVX2 int8
//!   kernel below);
//! * the **row-dot kernel** (AVX2 or portable: few rows, and every int8 pass without VNNI): each
//!   weight row is read once, sequentially, and dotted with a tile of token rows that stays in
//!   cache; output channels are split across threads. `f16` weights are widened in registers
//!   (`_mm256_cvtph_ps`), `i8` weights are dotted with `i8` activations quantized on the fly
//!   (one scale per 32 inputs) in `i32` (`_mm256_maddubs_epi16` + `_mm256_madd_epi16`, the sign
//!   moved onto the weight with `_mm256_sign_epi8`, no `i16` saturation possible);
//! * **gemm** (AVX2, more rows, `f32` and `f16`): the `gemm` crate's packed kernel. `f16` weights
//!   are kept a second time in the `(in, out)` layout gemm reads without repacking, and widened
//!   into a per-thread `f32` scratch (≤ 2.4 MB) right before the same gemm call as the `f32`
//!   path: one sequential pass over the matrix (≈ 0.1 ms) per pass of 33–768 tokens, under 1 %
//!   of that pass's arithmetic.

use rayon::prelude::*;

use super::f32buf::F32Buf;
use super::outptr::OutPtr;
use super::panels::{self, Panels};
use super::precision::{Kernel, Precision};
use super::quant::{quantize_acts, quantize_row, Aux, BLOCK as I8_BLOCK};
use super::vnni::{self, VnniWeights};

/// The stored weight of one projection.
pub(super) enum Weights {
    /// The checkpoint's `f32`: `rows` `(out, in)` in place for the row-dot kernel, `cols` the
    /// `(in, out)` transpose that gemm reads without repacking.
    F32 { rows: F32Buf, cols: Vec<f32> },
    /// IEEE half bits: `rows` `(out, in)` for the row-dot kernel, `cols` `(in, out)` for gemm.
    F16 { rows: Vec<u16>, cols: Vec<u16> },
    /// `f32` weights in 32-channel panels for the AVX-512F kernel, which then runs every pass.
    PanelsF32(Panels<f32>),
    /// IEEE half bits in 32-channel panels for the AVX-512F kernel, which then runs every pass.
    PanelsF16(Panels<u16>),
    /// Symmetric per-output-channel `i8` in `[-127, 127]`, `(out, in)`, and each channel's scale;
    /// `vnni` the same matrix packed for the AVX-512 VNNI kernel when that kernel runs.
    Int8 {
        rows: Vec<i8>,
        scales: Vec<f32>,
        vnni: Option<VnniWeights>,
    },
}

/// One dense projection.
pub(super) struct Dense {
    pub(super) w: Weights,
    pub(super) b: F32Buf,
    pub(super) n_in: usize,
    pub(super) n_out: usize,
}

impl Dense {
    /// Builds the projection from the checkpoint's `(out, in)` weight in the given precision,
    /// laid out for `kernel`.
    pub(super) fn new(
        rows: F32Buf,
        b: F32Buf,
        n_in: usize,
        n_out: usize,
        precision: Precision,
        kernel: Kernel,
    ) -> Dense {
        // The AVX-512 kernels' tier packs `f32` and `f16` weights for the panel kernel only: it
        // runs every pass of any size, so neither the row-dot layout nor gemm's is kept.
        let panels = kernel.vnni() && super::precision::cpu_has_avx512_vnni();
        let w = match precision {
            Precision::F32 if panels => Weights::PanelsF32(Panels::pack(&rows, n_out, n_in)),
            Precision::F16 if panels => Weights::PanelsF16(Panels::pack(&rows, n_out, n_in)),
            Precision::F32 => Weights::F32 {
                cols: transpose(&rows, n_out, n_in),
                rows,
            },
            Precision::F16 => {
                let half = |v: &f32| half::f16::from_f32(*v).to_bits();
                Weights::F16 {
                    cols: transpose(&rows, n_out, n_in).iter().map(half).collect(),
                    rows: rows.iter().map(half).collect(),
                }
            }
            Precision::Int8 => {
                let mut q = vec![0i8; n_out * n_in];
                let scales = rows
                    .chunks_exact(n_in)
                    .zip(q.chunks_exact_mut(n_in))
                    .map(|(src, dst)| quantize_row(src, dst))
                    .collect();
                let vnni = if kernel.vnni() {
                    VnniWeights::pack(&q, n_out, n_in)
                } else {
                    None
                };
                Weights::Int8 {
                    rows: q,
                    scales,
                    vnni,
                }
            }
        };
        Dense { w, b, n_in, n_out }
    }

    /// Bytes of weight one pass streams.
    pub(super) fn weight_bytes(&self) -> usize {
        let n = self.n_in * self.n_out;
        match self.w {
            Weights::F32 { .. } | Weights::PanelsF32(_) => 4 * n,
            Weights::F16 { .. } | Weights::PanelsF16(_) => 2 * n,
            Weights::Int8 { .. } => n + 4 * self.n_out,
        }
    }
}

/// Transposes a row-major `(rows, cols)` matrix, in cache-sized tiles.
pub(super) fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut out = vec![0f32; rows * cols];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = m[r * cols + c];
                }
            }
        }
    }
    out
}

/// Passes of at most this many tokens use the row-dot kernel instead of gemm.
const SMALL_PASS_ROWS: usize = 32;

/// `out = x · Wᵀ + b` for `rows` token rows.
///
/// `parallel` splits the work over the rayon pool; callers that already run several batches side
/// by side pass `false`.
pub(super) fn linear(
    x: &[f32],
    rows: usize,
    layer: &Dense,
    out: &mut [f32],
    parallel: bool,
    kernel: Kernel,
) {
    let use_gemm = kernel.simd() && rows > SMALL_PASS_ROWS;
    match &layer.w {
        Weights::PanelsF32(p) => panels::linear(x, rows, p, &layer.b, out, parallel),
        Weights::PanelsF16(p) => panels::linear(x, rows, p, &layer.b, out, parallel),
        Weights::F32 { cols, .. } if use_gemm => gemm_bias(x, rows, layer, cols, out, parallel),
        Weights::F16 { cols, .. } if use_gemm => gemm_f16(x, rows, layer, cols, out, parallel),
        Weights::Int8 {
            vnni: Some(w),
            scales,
            ..
        } if kernel.vnni() && vnni_linear(x, rows, layer, w, scales, out, parallel) => {}
        _ => row_dot_linear(x, rows, layer, out, parallel, kernel),
    }
}

fn gemm_parallelism(parallel: bool) -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if parallel && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// Fills every output row with the bias, so gemm accumulates onto it.
fn fill_bias(out: &mut [f32], rows: usize, layer: &Dense, parallel: bool) {
    let out = &mut out[..rows * layer.n_out];
    if parallel {
        out.par_chunks_mut(layer.n_out)
            .for_each(|row| row.copy_from_slice(&layer.b[..]));
    } else {
        out.chunks_exact_mut(layer.n_out)
            .for_each(|row| row.copy_from_slice(&layer.b[..]));
    }
}

/// gemm with `W` stored `(in, out)`.
fn gemm_bias(x: &[f32], rows: usize, layer: &Dense, w: &[f32], out: &mut [f32], parallel: bool) {
    let (k, n) = (layer.n_in, layer.n_out);
    assert!(x.len() >= rows * k && w.len() >= k * n && out.len() >= rows * n);
    fill_bias(out, rows, layer, parallel);
    // SAFETY: `x` holds rows*k floats, `w` k*n, `out` rows*n (asserted above), all row-major.
    unsafe {
        gemm::gemm(
            rows,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            true,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm_parallelism(parallel),
        );
    }
}

/// gemm over f16 weights: the `(in, out)` copy is widened to `f32` in a per-thread scratch
/// (at most 2.4 MB for this model) right before the same gemm call as the `f32` path makes.
fn gemm_f16(x: &[f32], rows: usize, layer: &Dense, cols: &[u16], out: &mut [f32], parallel: bool) {
    thread_local! {
        static WIDE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    // The scratch is taken out of the slot for the call, not borrowed across it: while this
    // thread waits inside a rayon operation it may run another batch's job, which reaches this
    // function again on the same thread and then simply finds the slot empty.
    let mut wide = WIDE.with(|cell| cell.take());
    let len = layer.n_in * layer.n_out;
    wide.resize(len, 0.0);
    widen_f16(&cols[..len], &mut wide[..], true);
    gemm_bias(x, rows, layer, &wide, out, parallel);
    WIDE.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.capacity() < wide.capacity() {
            *slot = wide;
        }
    });
}

/// Widens IEEE half bits to `f32` (F16C when `simd`).
fn widen_f16(src: &[u16], dst: &mut [f32], simd: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        if simd && super::precision::cpu_has_avx2_fma_f16c() {
            // SAFETY: the CPU has F16C and AVX, checked just above.
            unsafe { widen_f16_f16c(src, dst) };
            return;
        }
    }
    let _ = simd;
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = half::f16::from_bits(s).to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn widen_f16_f16c(src: &[u16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 8 <= n {
        let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        i += 8;
    }
    for j in i..n {
        dst[j] = half::f16::from_bits(src[j]).to_f32();
    }
}

/// Token rows per tile of the row-dot kernel: a tile's activations stay in L2 while every
/// weight row of the job's channels streams past them.
const ROW_TILE: usize = 64;
/// Output channels per parallel job of the row-dot kernel.
const COLS_PER_JOB: usize = 64;

/// `out = x · Wᵀ + b` on the AVX-512 VNNI kernel, channel jobs in parallel; `false` (nothing
/// written) when the kernel cannot take this shape or CPU.
#[allow(clippy::too_many_arguments)]
fn vnni_linear(
    x: &[f32],
    rows: usize,
    layer: &Dense,
    w: &VnniWeights,
    sw: &[f32],
    out: &mut [f32],
    parallel: bool,
) -> bool {
    let (k, n) = (layer.n_in, layer.n_out);
    if !super::precision::cpu_has_avx512_vnni() || x.len() < rows * k || out.len() < rows * n {
        return false;
    }
    let qr = quantize_acts(x, rows, k, Aux::None, true, parallel);
    let acts = vnni::Acts {
        q: &qr.q,
        scales: &qr.scales,
        neg_offset: &vnni::Acts::offsets(&qr.q),
    };
    let dest = OutPtr(out.as_mut_ptr());
    let b = &layer.b[..];
    let job = |first: usize| {
        let count = COLS_PER_JOB.min(n - first);
        vnni::channels(&acts, rows, k, n, w, sw, b, &dest, first, count)
    };
    if parallel {
        (0..n).into_par_iter().step_by(COLS_PER_JOB).all(job)
    } else {
        (0..n).step_by(COLS_PER_JOB).all(job)
    }
}

/// The activations in the form a precision's dot kernel reads.
enum Activations<'a> {
    F32(&'a [f32]),
    /// `i8` rows, their absolute values (for the sign-transfer trick) and one scale per
    /// [`I8_BLOCK`] inputs of each row.
    Int8 {
        q: Vec<i8>,
        abs: Vec<u8>,
        scales: Vec<f32>,
    },
}

/// `out = x · Wᵀ + b`, one weight row at a time against a tile of token rows.
fn row_dot_linear(
    x: &[f32],
    rows: usize,
    layer: &Dense,
    out: &mut [f32],
    parallel: bool,
    kernel: Kernel,
) {
    let (k, n) = (layer.n_in, layer.n_out);
    let simd = kernel.simd();
    let acts = match layer.w {
        Weights::Int8 { .. } => {
            let qr = quantize_acts(x, rows, k, Aux::Abs, simd, parallel);
            Activations::Int8 {
                q: qr.q,
                abs: qr.aux,
                scales: qr.scales,
            }
        }
        _ => Activations::F32(&x[..rows * k]),
    };
    let b = &layer.b[..];
    // Column-major scratch (n, rows) so each job writes one contiguous block, then scatters
    // its channels into the row-major `out` while the block is still in L1.
    let mut cols = vec![0f32; n * rows];
    let out = &mut out[..rows * n];
    let dest = OutPtr(out.as_mut_ptr());
    let job = |(jb, block): (usize, &mut [f32])| {
        let first = jb * COLS_PER_JOB;
        let count = block.len() / rows;
        let mut widened = Vec::new();
        for t0 in (0..rows).step_by(ROW_TILE) {
            let tr = ROW_TILE.min(rows - t0);
            let mut dj = 0;
            while dj < count {
                let j = first + dj;
                if dj + 1 < count {
                    // Two output channels per pass over the tile: each activation load feeds
                    // two FMAs (see `avx2::dot_rows_pair`).
                    let (lo, hi) = block.split_at_mut((dj + 1) * rows);
                    let dst0 = &mut lo[dj * rows + t0..dj * rows + t0 + tr];
                    let dst1 = &mut hi[t0..t0 + tr];
                    let pair = if let (
                        Weights::Int8 {
                            rows: w, scales, ..
                        },
                        Activations::Int8 { q, abs, scales: sx },
                    ) = (&layer.w, &acts)
                    {
                        let nb = k.div_ceil(I8_BLOCK);
                        dot_rows_pair_i8(
                            I8Rows {
                                q: &q[t0 * k..],
                                abs: &abs[t0 * k..],
                                scales: &sx[t0 * nb..(t0 + tr) * nb],
                            },
                            tr,
                            k,
                            [&w[j * k..(j + 1) * k], &w[(j + 1) * k..(j + 2) * k]],
                            [scales[j], scales[j + 1]],
                            [b[j], b[j + 1]],
                            [dst0, dst1],
                            simd,
                        )
                    } else {
                        match (&layer.w, &acts) {
                            (Weights::F32 { rows: w, .. }, Activations::F32(x)) => Some((
                                x,
                                PairRows::F32([
                                    &w[j * k..(j + 1) * k],
                                    &w[(j + 1) * k..(j + 2) * k],
                                ]),
                            )),
                            (Weights::F16 { rows: w, .. }, Activations::F32(x)) => Some((
                                x,
                                PairRows::F16([
                                    &w[j * k..(j + 1) * k],
                                    &w[(j + 1) * k..(j + 2) * k],
                                ]),
                            )),
                            _ => None,
                        }
                        .is_some_and(|(x, w)| {
                            dot_rows_pair(
                                &x[t0 * k..],
                                tr,
                                k,
                                w,
                                [b[j], b[j + 1]],
                                [dst0, dst1],
                                kernel,
                            )
                        })
                    };
                    if pair {
                        dj += 2;
                        continue;
                    }
                }
                let dst = &mut block[dj * rows + t0..dj * rows + t0 + tr];
                dj += 1;
                match (&layer.w, &acts) {
                    (Weights::F32 { rows: w, .. }, Activations::F32(x)) => {
                        dot_rows_f32(&x[t0 * k..], tr, k, &w[j * k..(j + 1) * k], b[j], dst, simd)
                    }
                    (Weights::F16 { rows: w, .. }, Activations::F32(x)) => dot_rows_f16(
                        &x[t0 * k..],
                        tr,
                        k,
                        &w[j * k..(j + 1) * k],
                        b[j],
                        dst,
                        simd,
                        &mut widened,
                    ),
                    (
                        Weights::Int8 {
                            rows: w, scales, ..
                        },
                        Activations::Int8 { q, abs, scales: sx },
                    ) => dot_rows_i8(
                        &q[t0 * k..],
                        &abs[t0 * k..],
                        &sx[t0 * k.div_ceil(I8_BLOCK)..(t0 + tr) * k.div_ceil(I8_BLOCK)],
                        k,
                        &w[j * k..(j + 1) * k],
                        scales[j],
                        b[j],
                        dst,
                        simd,
                    ),
                    // `acts` is built from `layer.w` just above, so the pairs always match.
                    _ => dst.fill(f32::NAN),
                }
            }
        }
        for t in 0..rows {
            for dj in 0..count {
                // SAFETY: each job owns the channels `first..first + count`, so no two jobs
                // write the same element, and `t * n + first + dj < rows * n == out.len()`.
                unsafe { *dest.at(t * n + first + dj) = block[dj * rows + t] };
            }
        }
    };
    if parallel {
        cols.par_chunks_mut(COLS_PER_JOB * rows)
            .enumerate()
            .for_each(job);
    } else {
        cols.chunks_mut(COLS_PER_JOB * rows)
            .enumerate()
            .for_each(job);
    }
}

/// `dst[t] = bias + x[t] · w` for f32 weights (AVX2+FMA build when `simd`).
fn dot_rows_f32(
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
enum PairRows<'a> {
    F32([&'a [f32]; 2]),
    F16([&'a [u16]; 2]),
}

/// Two output channels at once on the AVX2 path; `false` when the caller must fall back to one
/// channel at a time (no SIMD, or shapes the kernel does not take).
fn dot_rows_pair(
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
fn dot_rows_f16(
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
struct I8Rows<'a> {
    q: &'a [i8],
    abs: &'a [u8],
    scales: &'a [f32],
}

/// [`dot_rows_pair`] for int8 weights: two channels per pass over the tile, each activation
/// block's loads and scale shared by both; `false` when the caller must fall back.
#[allow(clippy::too_many_arguments)]
fn dot_rows_pair_i8(
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
fn dot_rows_i8(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::KernelChoice;

    fn layer(n_in: usize, n_out: usize, precision: Precision, kernel: Kernel) -> (Vec<f32>, Dense) {
        let w: Vec<f32> = (0..n_in * n_out)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.1)
            .collect();
        let b: Vec<f32> = (0..n_out).map(|j| j as f32 * 0.01).collect();
        let d = Dense::new(
            F32Buf::Owned(w.clone()),
            F32Buf::Owned(b),
            n_in,
            n_out,
            precision,
            kernel,
        );
        (w, d)
    }

    fn reference(x: &[f32], rows: usize, w: &[f32], d: &Dense) -> Vec<f32> {
        let (k, n) = (d.n_in, d.n_out);
        let mut out = vec![0f32; rows * n];
        for t in 0..rows {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|i| x[t * k + i] as f64 * w[j * k + i] as f64)
                    .sum();
                out[t * n + j] = s as f32 + d.b[j];
            }
        }
        out
    }

    /// Every kernel this CPU has, from the portable one up.
    fn kernels() -> Vec<Kernel> {
        let mut all = vec![Kernel::Scalar];
        for choice in [KernelChoice::Avx2, KernelChoice::Auto] {
            let k = Kernel::resolve(choice);
            if !all.contains(&k) {
                all.push(k);
            }
        }
        all
    }

    /// Every precision, kernel and pass size against an f64 reference: f32 and f16 to float
    /// rounding, int8 to its quantization step.
    #[test]
    fn kernels_agree_with_a_plain_product() {
        // 99 channels: jobs of 64 and 35, so paired channels and a lone last one (and no VNNI
        // packing); 160 channels: VNNI jobs of 64, 64 and 32. Row counts cover every tile size
        // of the paired and VNNI kernels (1 to 6 rows), several row tiles, and the gemm path.
        for (precision, n) in [Precision::F32, Precision::F16, Precision::Int8]
            .into_iter()
            .flat_map(|p| [(p, 160), (p, 99)])
        {
            let k = 96;
            for rows in [1, 2, 3, 5, 7, 9, 20, 32, 33, 70, 131] {
                let x: Vec<f32> = (0..rows * k)
                    .map(|i| (i * 104_729 % 997) as f32 / 498.5 - 1.0)
                    .collect();
                for kernel in kernels() {
                    let (w, d) = layer(k, n, precision, kernel);
                    let want = reference(&x, rows, &w, &d);
                    let mut got = vec![0f32; rows * n];
                    linear(&x, rows, &d, &mut got, true, kernel);
                    let tol = match precision {
                        Precision::F32 => 1e-4,
                        Precision::F16 => 2e-2,
                        Precision::Int8 => 6e-2,
                    };
                    for (g, e) in got.iter().zip(&want) {
                        assert!(
                            (g - e).abs() <= tol,
                            "{precision} {kernel} rows {rows}: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }

    /// The int8 kernels sum the same integers: they differ only in the order the per-block
    /// `f32` terms are added, far below the quantization step. Where the CPU has AVX-512 VNNI,
    /// the packed kernel is the one that ran.
    #[test]
    fn int8_kernels_compute_the_same_sums() {
        let (k, n) = (384, 64);
        for rows in [1, 5, 20, 70] {
            let x: Vec<f32> = (0..rows * k)
                .map(|i| ((i * 7_919 % 1_009) as f32 / 504.5 - 1.0) * (1 + i % 7) as f32)
                .collect();
            let runs: Vec<(Kernel, Vec<f32>)> = kernels()
                .into_iter()
                .map(|kernel| {
                    let (_, d) = layer(k, n, Precision::Int8, kernel);
                    if let Weights::Int8 { vnni, .. } = &d.w {
                        assert_eq!(vnni.is_some(), kernel.vnni(), "{kernel}");
                    }
                    let mut got = vec![0f32; rows * n];
                    linear(&x, rows, &d, &mut got, rows > 10, kernel);
                    (kernel, got)
                })
                .collect();
            let (k0, base) = &runs[0];
            for (kernel, got) in &runs[1..] {
                for (g, e) in got.iter().zip(base) {
                    assert!(
                        (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                        "{kernel} vs {k0}, rows {rows}: {g} vs {e}"
                    );
                }
            }
        }
    }
}

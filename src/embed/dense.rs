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
//! * the **row-dot kernels** in `rowdot.rs` (AVX2 or portable: few rows, and every int8 pass
//!   without VNNI): each weight row is read once, sequentially, and dotted with a tile of token
//!   rows that stays in cache; [`row_dot_linear`] here splits the output channels across threads;
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
use super::rowdot::{
    dot_rows_f16, dot_rows_f32, dot_rows_i8, dot_rows_pair, dot_rows_pair_i8, I8Rows, PairRows,
};
use super::vnni::{self, VnniWeights};

/// The stored weight of one projection.
pub(super) enum Weights {
    /// The checkpoint's `f32`: `rows` `(out, in)` in place for the row-dot kernel, `cols` the
    /// `(in, out)` transpose that gemm reads without repacking.
    F32 { rows: F32Buf, cols: Vec<f32> },
    /// IEEE half bits: `rows` `(out, in)` for the row-dot kernel, `cols` `(in, out)` for gemm.
    F16 { rows: Vec<u16>, cols: Vec<u16> },
    /// `f32` weights in 32-channel panels for the 512-bit kernel (`panels.rs`), on the AVX-512
    /// tier, which then runs every pass.
    PanelsF32(Panels<f32>),
    /// IEEE half bits in 32-channel panels for the 512-bit kernel, on the AVX-512 tier.
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

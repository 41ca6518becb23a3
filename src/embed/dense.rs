//! The encoder's dense projections in three weight precisions, and the kernels that apply them.
//!
//! A projection is `out (rows, n_out) = x (rows, n_in) · Wᵀ + b` with `W` stored `(out, in)` as in
//! the checkpoint. Four kernels apply it:
//!
//! * on both SIMD tiers, **every `f32` and `f16` pass** runs the panel kernel in `panels.rs`
//!   (weights packed in 32-channel panels, outer products, no horizontal sums): on 512-bit
//!   registers on the AVX-512 tier ([`Kernel::Avx512Vnni`]: AVX-512F, VL and VNNI), on 256-bit
//!   ones on the AVX2 tier, with the same bits;
//! * on the AVX-512 tier, **every int8 pass** whose shape packs (channels a multiple of 32,
//!   inputs of 32) runs the packed `vpdpbusd` kernel in `vnni.rs`;
//! * on the AVX2 tier, **every int8 pass** whose shape packs (channels a multiple of 16, inputs
//!   of 32) runs the packed `maddubs` kernel in `maddubs.rs` (eight channels per register; the
//!   same activation blocks and integer sums as the VNNI kernel);
//! * the **row-dot kernels** in `rowdot.rs` (portable, and int8 shapes neither packed kernel
//!   takes): each weight row is read once, sequentially, and dotted with a tile of token rows
//!   that stays in cache; [`row_dot_linear`] here splits the output channels across threads.
//!
//! The `gemm` crate ran the AVX2 tier's bulk `f32`/`f16` passes until the 256-bit panels
//! replaced it (BENCHMARKS.md §1b, run 8); the benchmark examples still measure its rate as a
//! reference peak.

use rayon::prelude::*;

use super::f32buf::F32Buf;
use super::maddubs::{self, PackedI8};
use super::outptr::OutPtr;
use super::panels::{self, PanelTier, Panels};
use super::precision::{Kernel, Precision};
use super::quant::{quantize_acts, quantize_row, Aux, BLOCK as I8_BLOCK};
use super::rowdot::{
    dot_rows_f16, dot_rows_f32, dot_rows_i8, dot_rows_pair, dot_rows_pair_i8, I8Rows, PairRows,
};
use super::vnni::{self, VnniWeights};

/// The stored weight of one projection.
pub(super) enum Weights {
    /// The checkpoint's `f32` `(out, in)`, in place, for the portable row-dot kernel.
    F32 { rows: F32Buf },
    /// IEEE half bits `(out, in)` for the portable row-dot kernel.
    F16 { rows: Vec<u16> },
    /// `f32` weights in 32-channel panels for the panel kernel (`panels.rs`), on a SIMD tier,
    /// which then runs every pass.
    PanelsF32(Panels<f32>),
    /// IEEE half bits in 32-channel panels for the panel kernel, on a SIMD tier.
    PanelsF16(Panels<u16>),
    /// Symmetric per-output-channel `i8` in `[-127, 127]`, `(out, in)`, and each channel's scale;
    /// `packed` the same matrix laid out for the tier's packed kernel where the shape allows.
    Int8 {
        rows: Vec<i8>,
        scales: Vec<f32>,
        packed: Option<PackedInt8>,
    },
}

/// An int8 matrix packed for one tier's outer-product kernel.
pub(super) enum PackedInt8 {
    /// `vpdpbusd` layout (`vnni.rs`), on the AVX-512 tier.
    Vnni(VnniWeights),
    /// `maddubs` layout (`maddubs.rs`), on the AVX2 tier.
    Avx2(PackedI8),
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
        // The SIMD tiers pack `f32` and `f16` weights for the panel kernel only: it runs every
        // pass of any size, so neither the row-dot layout nor gemm's is kept.
        let tier = match kernel {
            Kernel::Avx512Vnni if super::precision::cpu_has_avx512_vnni() => {
                Some(PanelTier::Avx512)
            }
            Kernel::Avx512Vnni | Kernel::Avx2F16c => Some(PanelTier::Avx2),
            Kernel::Scalar => None,
        };
        let w = match (precision, tier) {
            (Precision::F32, Some(t)) => Weights::PanelsF32(Panels::pack(&rows, n_out, n_in, t)),
            (Precision::F16, Some(t)) => Weights::PanelsF16(Panels::pack(&rows, n_out, n_in, t)),
            (precision, _) => match precision {
                Precision::F32 => Weights::F32 { rows },
                Precision::F16 => Weights::F16 {
                    rows: rows
                        .iter()
                        .map(|v| half::f16::from_f32(*v).to_bits())
                        .collect(),
                },
                Precision::Int8 => {
                    let mut q = vec![0i8; n_out * n_in];
                    let scales = rows
                        .chunks_exact(n_in)
                        .zip(q.chunks_exact_mut(n_in))
                        .map(|(src, dst)| quantize_row(src, dst))
                        .collect();
                    let packed = match kernel {
                        Kernel::Avx512Vnni => {
                            VnniWeights::pack(&q, n_out, n_in).map(PackedInt8::Vnni)
                        }
                        Kernel::Avx2F16c => PackedI8::pack(&q, n_out, n_in).map(PackedInt8::Avx2),
                        Kernel::Scalar => None,
                    };
                    Weights::Int8 {
                        rows: q,
                        scales,
                        packed,
                    }
                }
            },
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
    match &layer.w {
        Weights::PanelsF32(p) => panels::linear(x, rows, p, &layer.b, out, parallel),
        Weights::PanelsF16(p) => panels::linear(x, rows, p, &layer.b, out, parallel),
        Weights::Int8 {
            packed: Some(PackedInt8::Vnni(w)),
            scales,
            ..
        } if kernel.vnni() && vnni_linear(x, rows, layer, w, scales, out, parallel) => {}
        Weights::Int8 {
            packed: Some(PackedInt8::Avx2(w)),
            scales,
            ..
        } if kernel.simd() && maddubs_linear(x, rows, layer, w, scales, out, parallel) => {}
        _ => row_dot_linear(x, rows, layer, out, parallel, kernel),
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
        // SAFETY: `out` holds `rows · n` values (checked above) and each job owns the channels
        // `first..first + count`: the jobs' channel ranges do not overlap.
        unsafe { vnni::channels(&acts, rows, k, n, w, sw, b, &dest, first, count) }
    };
    if parallel {
        (0..n).into_par_iter().step_by(COLS_PER_JOB).all(job)
    } else {
        (0..n).step_by(COLS_PER_JOB).all(job)
    }
}

/// `out = x · Wᵀ + b` on the packed AVX2 int8 kernel, channel jobs in parallel; `false`
/// (nothing written) when the kernel cannot take this shape or CPU.
#[allow(clippy::too_many_arguments)]
fn maddubs_linear(
    x: &[f32],
    rows: usize,
    layer: &Dense,
    w: &PackedI8,
    sw: &[f32],
    out: &mut [f32],
    parallel: bool,
) -> bool {
    let (k, n) = (layer.n_in, layer.n_out);
    if !super::precision::cpu_has_avx2_fma_f16c() || x.len() < rows * k || out.len() < rows * n {
        return false;
    }
    let qr = quantize_acts(x, rows, k, Aux::Abs, true, parallel);
    let acts = maddubs::Acts {
        q: &qr.q,
        abs: &qr.aux,
        scales: &qr.scales,
    };
    let dest = OutPtr(out.as_mut_ptr());
    let b = &layer.b[..];
    let job = |first: usize| {
        let count = COLS_PER_JOB.min(n - first);
        // SAFETY: `out` holds `rows · n` values (checked above) and each job owns the channels
        // `first..first + count`: the jobs' channel ranges do not overlap.
        unsafe { maddubs::channels(&acts, rows, k, n, w, sw, b, &dest, first, count) }
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
        // 99 channels: jobs of 64 and 35, so the portable kernels' paired channels and a lone
        // last one (and no int8 packing, so AVX2 int8 row-dot); 160 channels: packed int8 jobs of
        // 64, 64 and 32; 80 channels: a maddubs job of 16 (VNNI declines and falls back). Row
        // counts give the row-dot, panel and packed kernels short, uneven and full micro-tiles
        // and several row tiles.
        for (precision, n) in [Precision::F32, Precision::F16, Precision::Int8]
            .into_iter()
            .flat_map(|p| [(p, 160), (p, 99), (p, 80)])
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
                    if let Weights::Int8 { packed, .. } = &d.w {
                        let tier = match packed {
                            Some(PackedInt8::Vnni(_)) => Kernel::Avx512Vnni,
                            Some(PackedInt8::Avx2(_)) => Kernel::Avx2F16c,
                            None => Kernel::Scalar,
                        };
                        assert_eq!(tier, kernel, "the tier's packed layout");
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

//! The `f32` and `f16` projections on both SIMD tiers: weights packed in panels of 32 output
//! channels, applied as outer products, so no dot product ever needs a horizontal sum. What
//! follows describes the 512-bit kernel; the 256-bit one is the same in halves (below).
//!
//! A panel holds, for each input `i`, the weights of its 32 channels side by side
//! (`[panel][i][32]`, the last panel padded with zero channels). One step of the kernel loads
//! those 32 weights into two 512-bit registers (widened from `f16` with `vcvtph2ps` where the
//! weights are half precision), broadcasts input `i` of each of up to twelve token rows, and
//! adds the products into 2 × 12 accumulators: 24 FMAs of sixteen lanes per 64 (`f16`) or 128
//! (`f32`) bytes of weight and twelve broadcasts. Each output element is one accumulator summed
//! in input order and then offset by its bias, whatever the tiling: a text gets the same bits
//! alone, in a batch, or in a pass of any size, and the results go straight into the row-major
//! output, no scatter.
//!
//! On the AVX-512 kernel tier ([`super::Kernel::Avx512Vnni`]: AVX-512F, VL and VNNI; the kernel
//! itself needs only AVX-512F) this replaces both the row-dot kernel and gemm for these two
//! precisions: 512-bit FMAs do twice the work per instruction of the 256-bit ones the `gemm`
//! crate issues on stable Rust (BENCHMARKS.md §1b, run 7). On the AVX2 tier the same panels run
//! on 256-bit registers, each panel in two halves of sixteen channels and micro-tiles of up to
//! six rows, with the same fused multiply-adds in the same order, so both tiers give the same
//! bits; there it replaces the row-dot kernel, whose horizontal sums held a query to about half
//! the FMA peak (BENCHMARKS.md §1b, run 8).

use rayon::prelude::*;

use super::outptr::OutPtr;

/// Output channels per panel: two registers of sixteen.
const PANEL: usize = 32;
/// Token rows per micro-tile: 2 × 12 accumulators, two weight registers and a broadcast fit the
/// 32 vector registers.
const MAX_ROWS: usize = 12;
/// Token rows per micro-tile on 256-bit registers: 2 × 6 accumulators, two weight registers and
/// a broadcast fit AVX2's sixteen.
const MAX_ROWS_AVX2: usize = 6;
/// Weight bytes one job keeps hot in L2 while its row tiles pass.
const JOB_WEIGHT_BYTES: usize = 384 * 1024;

/// A weight element the panel kernel widens to `f32`: `f32` itself or IEEE half bits.
pub(super) trait PanelElem: Copy + Send + Sync + 'static {
    /// The zero weight of the padding channels.
    const ZERO: Self;
    /// Whether the element is IEEE half bits (widened with `vcvtph2ps`).
    const HALF: bool;
    /// Rounds a checkpoint weight to this element.
    fn from_f32(v: f32) -> Self;
    /// Widens the element back to `f32`.
    fn to_f32(self) -> f32;
}

impl PanelElem for f32 {
    const ZERO: f32 = 0.0;
    const HALF: bool = false;
    fn from_f32(v: f32) -> f32 {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
}

/// IEEE half bits.
impl PanelElem for u16 {
    const ZERO: u16 = 0;
    const HALF: bool = true;
    fn from_f32(v: f32) -> u16 {
        half::f16::from_f32(v).to_bits()
    }
    fn to_f32(self) -> f32 {
        half::f16::from_bits(self).to_f32()
    }
}

/// Which vector width applies the panels: the same packing, the same sums in the same order,
/// so both give the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PanelTier {
    /// 512-bit registers, micro-tiles of up to twelve rows (AVX-512F).
    Avx512,
    /// 256-bit registers, each panel in two halves of sixteen channels, micro-tiles of up to six
    /// rows (AVX2 + FMA + F16C).
    Avx2,
}

impl PanelTier {
    /// Token rows per micro-tile.
    fn max_rows(self) -> usize {
        match self {
            PanelTier::Avx512 => MAX_ROWS,
            PanelTier::Avx2 => MAX_ROWS_AVX2,
        }
    }
}

/// A `(n, k)` projection weight packed in panels of 32 channels.
pub(super) struct Panels<E> {
    /// `[n.div_ceil(32)][k][32]`, channels past `n` zero.
    data: Vec<E>,
    n: usize,
    k: usize,
    tier: PanelTier,
}

impl<E: PanelElem> Panels<E> {
    /// Packs the row-major `(n, k)` matrix `rows` (the checkpoint's `(out, in)` layout), rounding
    /// each weight to `E`, for the kernel of `tier`. The loader has checked the tensor's shape,
    /// so `rows` holds `n · k`.
    pub(super) fn pack(rows: &[f32], n: usize, k: usize, tier: PanelTier) -> Panels<E> {
        assert!(
            n.checked_mul(k).is_some_and(|nk| rows.len() >= nk),
            "a ({n}, {k}) weight needs {n}·{k} values"
        );
        let panels = n.div_ceil(PANEL);
        let mut data = Vec::with_capacity(panels * k * PANEL);
        for p in 0..panels {
            for i in 0..k {
                for lane in 0..PANEL {
                    let c = p * PANEL + lane;
                    data.push(match rows.get(c * k + i) {
                        Some(&v) if c < n => E::from_f32(v),
                        _ => E::ZERO,
                    });
                }
            }
        }
        Panels { data, n, k, tier }
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }
}

/// `out (rows, n) = x (rows, k) · Wᵀ + b`, jobs of whole panels and row ranges in parallel when
/// `parallel`.
pub(super) fn linear<E: PanelElem>(
    x: &[f32],
    rows: usize,
    w: &Panels<E>,
    bias: &[f32],
    out: &mut [f32],
    parallel: bool,
) {
    let (k, n) = (w.k, w.n);
    let fits = |len: usize, a: usize, b: usize| a.checked_mul(b).is_some_and(|ab| len >= ab);
    assert!(
        fits(x.len(), rows, k) && fits(out.len(), rows, n) && bias.len() >= n,
        "projection buffers shorter than their shape"
    );
    if rows == 0 || n == 0 {
        return;
    }
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    let plan = Plan::new(
        rows,
        w.panels(),
        k * PANEL * std::mem::size_of::<E>(),
        threads,
        w.tier.max_rows(),
    );
    let dest = OutPtr(out.as_mut_ptr());
    let job = |j: usize| {
        let (g, c) = (j / plan.row_chunks, j % plan.row_chunks);
        let p0 = g * plan.group;
        let p1 = (p0 + plan.group).min(w.panels());
        let t0 = c * plan.chunk_rows;
        let t1 = (t0 + plan.chunk_rows).min(rows);
        if t0 < t1 {
            // SAFETY: every job owns the output rows `t0..t1` × channels of panels `p0..p1`, so
            // no two jobs write one element; the lengths were asserted above.
            unsafe { run(x, t0, t1, w, p0, p1, bias, &dest) };
        }
    };
    let jobs = plan.groups * plan.row_chunks;
    if threads > 1 && jobs > 1 {
        (0..jobs).into_par_iter().for_each(job);
    } else {
        (0..jobs).for_each(job);
    }
}

/// How a pass is cut into jobs: groups of panels whose weights stay in L2, times row chunks.
struct Plan {
    group: usize,
    groups: usize,
    chunk_rows: usize,
    row_chunks: usize,
}

impl Plan {
    fn new(rows: usize, panels: usize, panel_bytes: usize, threads: usize, tile: usize) -> Plan {
        debug_assert!(rows > 0 && panels > 0, "an empty pass has no plan");
        let by_cache = (JOB_WEIGHT_BYTES / panel_bytes.max(1)).max(1);
        if threads <= 1 {
            // Sequential: one job per L2-sized group of panels, each over every row.
            let group = by_cache.min(panels).max(1);
            return Plan {
                group,
                groups: panels.div_ceil(group),
                chunk_rows: rows,
                row_chunks: 1,
            };
        }
        // Enough jobs that work stealing evens out the threads: a few per thread for a short
        // pass (a query's weights are read once, so split the channels), more for a long one.
        let want = if rows <= 2 * tile {
            4 * threads
        } else {
            16 * threads
        };
        let group = by_cache.min(panels.div_ceil(want)).max(1);
        let groups = panels.div_ceil(group);
        let row_chunks = want.div_ceil(groups).min(rows.div_ceil(tile)).max(1);
        // Whole micro-tiles per chunk, so chunking never changes how rows are tiled more than
        // necessary (the results do not depend on it either way).
        let chunk_rows = rows.div_ceil(row_chunks).next_multiple_of(tile).min(rows);
        Plan {
            group,
            groups,
            chunk_rows,
            row_chunks: rows.div_ceil(chunk_rows),
        }
    }
}

/// Rows `t0..t1` against panels `p0..p1`, on the panels' tier when the CPU has it.
///
/// # Safety
/// The caller owns those rows × channels of the `(rows, n)` buffer behind `out`; `x` holds
/// `t1 · k` values and `bias` `n`.
#[allow(clippy::too_many_arguments)]
unsafe fn run<E: PanelElem>(
    x: &[f32],
    t0: usize,
    t1: usize,
    w: &Panels<E>,
    p0: usize,
    p1: usize,
    bias: &[f32],
    out: &OutPtr,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if w.tier == PanelTier::Avx512 && is_x86_feature_detected!("avx512f") {
            x86::run(x, t0, t1, w, p0, p1, bias, out);
            return;
        }
        if super::precision::cpu_has_avx2_fma_f16c() {
            x86::run_avx2(x, t0, t1, w, p0, p1, bias, out);
            return;
        }
    }
    portable(x, t0, t1, w, p0, p1, bias, out)
}

/// The same sums without SIMD, in the same order (input order, then the bias) but with a separate
/// multiply and add, so not bit-identical to the fused kernels: for CPUs without them. The
/// packing is only chosen where the CPU has AVX2 at least, so this runs only if that ever
/// changes.
///
/// # Safety
/// As [`run`].
#[allow(clippy::too_many_arguments)]
unsafe fn portable<E: PanelElem>(
    x: &[f32],
    t0: usize,
    t1: usize,
    w: &Panels<E>,
    p0: usize,
    p1: usize,
    bias: &[f32],
    out: &OutPtr,
) {
    let (k, n) = (w.k, w.n);
    for p in p0..p1 {
        let panel = &w.data[p * k * PANEL..(p + 1) * k * PANEL];
        for t in t0..t1 {
            let xr = &x[t * k..(t + 1) * k];
            for lane in 0..PANEL.min(n - p * PANEL) {
                let c = p * PANEL + lane;
                let s: f32 = xr
                    .iter()
                    .enumerate()
                    .fold(0.0, |s, (i, &v)| s + v * panel[i * PANEL + lane].to_f32());
                *out.at(t * n + c) = s + bias[c];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{OutPtr, PanelElem, Panels, MAX_ROWS, MAX_ROWS_AVX2, PANEL};

    /// `R` token rows from `t` against one panel: `2R` accumulators.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize, const F16: bool>(
        xp: *const f32,
        t: usize,
        k: usize,
        n: usize,
        panel: *const u8,
        c0: usize,
        bias: [__m512; 2],
        masks: [__mmask16; 2],
        out: &OutPtr,
        pf: *const u8,
    ) {
        let size = if F16 { 2 } else { 4 };
        let r: [*const f32; R] = std::array::from_fn(|q| xp.add((t + q) * k));
        let mut a0 = [_mm512_setzero_ps(); R];
        let mut a1 = [_mm512_setzero_ps(); R];
        for i in 0..k {
            let wp = panel.add(i * PANEL * size);
            if !pf.is_null() {
                let ahead = pf.wrapping_add(i * PANEL * size) as *const i8;
                _mm_prefetch::<_MM_HINT_T0>(ahead);
                if !F16 {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
                }
            }
            let (w0, w1) = if F16 {
                (
                    _mm512_cvtph_ps(_mm256_loadu_si256(wp as *const __m256i)),
                    _mm512_cvtph_ps(_mm256_loadu_si256(wp.add(32) as *const __m256i)),
                )
            } else {
                (
                    _mm512_loadu_ps(wp as *const f32),
                    _mm512_loadu_ps(wp.add(64) as *const f32),
                )
            };
            for q in 0..R {
                let xv = _mm512_set1_ps(*r[q].add(i));
                a0[q] = _mm512_fmadd_ps(xv, w0, a0[q]);
                a1[q] = _mm512_fmadd_ps(xv, w1, a1[q]);
            }
        }
        for q in 0..R {
            let o = out.at((t + q) * n + c0);
            _mm512_mask_storeu_ps(o, masks[0], _mm512_add_ps(a0[q], bias[0]));
            _mm512_mask_storeu_ps(o.wrapping_add(16), masks[1], _mm512_add_ps(a1[q], bias[1]));
        }
    }

    /// Rows `t0..t1` × panels `p0..p1`, micro-tiles of at most twelve rows sized evenly (20 rows
    /// run as 10 + 10), every panel of the group per micro-tile so its rows stay in L1.
    ///
    /// # Safety
    /// The CPU has AVX-512F; as [`super::run`] otherwise.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn run<E: PanelElem>(
        x: &[f32],
        t0: usize,
        t1: usize,
        w: &Panels<E>,
        p0: usize,
        p1: usize,
        bias: &[f32],
        out: &OutPtr,
    ) {
        let f16 = E::HALF;
        let (k, n) = (w.k, w.n);
        let xp = x.as_ptr();
        let base = w.data.as_ptr() as *const u8;
        let panel_bytes = k * PANEL * std::mem::size_of::<E>();
        let rows = t1 - t0;
        let tiles = rows.div_ceil(MAX_ROWS);
        let mut t = t0;
        for s in 0..tiles {
            let r = (t1 - t) / (tiles - s);
            for p in p0..p1 {
                let c0 = p * PANEL;
                let live = n - c0;
                let masks = [lane_mask(live), lane_mask(live.saturating_sub(16))];
                let bias = [
                    _mm512_maskz_loadu_ps(masks[0], bias.as_ptr().add(c0)),
                    // Masked off (nothing read) where the panel has no live upper half.
                    _mm512_maskz_loadu_ps(masks[1], bias.as_ptr().wrapping_add(c0 + 16)),
                ];
                let panel = base.add(p * panel_bytes);
                // The first micro-tile brings the next panel in while it reads its own, at the
                // same pace: a short pass reads each weight once, from L3 or memory.
                let pf = if s == 0 {
                    panel.wrapping_add(panel_bytes)
                } else {
                    std::ptr::null()
                };
                macro_rules! go {
                    ($($n:literal)*) => {
                        match r {
                            $($n => if f16 {
                                tile::<$n, true>(xp, t, k, n, panel, c0, bias, masks, out, pf)
                            } else {
                                tile::<$n, false>(xp, t, k, n, panel, c0, bias, masks, out, pf)
                            },)*
                            _ => {}
                        }
                    };
                }
                go!(1 2 3 4 5 6 7 8 9 10 11 12);
                debug_assert!((1..=MAX_ROWS).contains(&r), "a micro-tile of {r} rows");
            }
            t += r;
        }
    }

    /// `R` token rows from `t` against sixteen channels of one panel (its half `h`, channels
    /// from `c0`), on 256-bit registers: `2R` accumulators, each summed in input order with the
    /// same fused multiply-adds as [`tile`], so each output has the same bits.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_avx2<const R: usize, const F16: bool>(
        xp: *const f32,
        t: usize,
        k: usize,
        n: usize,
        panel: *const u8,
        h: usize,
        c0: usize,
        bias: [__m256; 2],
        masks: [__m256i; 2],
        out: &OutPtr,
        pf: *const u8,
    ) {
        let size = if F16 { 2 } else { 4 };
        let r: [*const f32; R] = std::array::from_fn(|q| xp.add((t + q) * k));
        let mut a0 = [_mm256_setzero_ps(); R];
        let mut a1 = [_mm256_setzero_ps(); R];
        // `wrapping_add`: with no inputs (`k == 0`) the panel is empty and nothing is read.
        let half = panel.wrapping_add(h * 16 * size);
        for i in 0..k {
            let wp = half.add(i * PANEL * size);
            if !pf.is_null() {
                let ahead = pf.wrapping_add(i * PANEL * size) as *const i8;
                _mm_prefetch::<_MM_HINT_T0>(ahead);
                if !F16 {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
                }
            }
            let (w0, w1) = if F16 {
                (
                    _mm256_cvtph_ps(_mm_loadu_si128(wp as *const __m128i)),
                    _mm256_cvtph_ps(_mm_loadu_si128(wp.add(16) as *const __m128i)),
                )
            } else {
                (
                    _mm256_loadu_ps(wp as *const f32),
                    _mm256_loadu_ps(wp.add(32) as *const f32),
                )
            };
            for q in 0..R {
                let xv = _mm256_broadcast_ss(&*r[q].add(i));
                a0[q] = _mm256_fmadd_ps(xv, w0, a0[q]);
                a1[q] = _mm256_fmadd_ps(xv, w1, a1[q]);
            }
        }
        for q in 0..R {
            let o = out.at((t + q) * n + c0);
            _mm256_maskstore_ps(o, masks[0], _mm256_add_ps(a0[q], bias[0]));
            _mm256_maskstore_ps(o.wrapping_add(8), masks[1], _mm256_add_ps(a1[q], bias[1]));
        }
    }

    /// [`run`] on 256-bit registers: micro-tiles of at most six rows sized evenly (20 rows run
    /// as 5 + 5 + 5 + 5), each panel in two halves of sixteen channels.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; as [`super::run`] otherwise.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn run_avx2<E: PanelElem>(
        x: &[f32],
        t0: usize,
        t1: usize,
        w: &Panels<E>,
        p0: usize,
        p1: usize,
        bias: &[f32],
        out: &OutPtr,
    ) {
        let f16 = E::HALF;
        let (k, n) = (w.k, w.n);
        let xp = x.as_ptr();
        let base = w.data.as_ptr() as *const u8;
        let panel_bytes = k * PANEL * std::mem::size_of::<E>();
        let rows = t1 - t0;
        let tiles = rows.div_ceil(MAX_ROWS_AVX2);
        let mut t = t0;
        for s in 0..tiles {
            let r = (t1 - t) / (tiles - s);
            for p in p0..p1 {
                let panel = base.add(p * panel_bytes);
                for h in 0..2 {
                    let c0 = p * PANEL + h * 16;
                    if c0 >= n {
                        break;
                    }
                    let live = n - c0;
                    let masks = [lane_mask8(live), lane_mask8(live.saturating_sub(8))];
                    let bias = [
                        _mm256_maskload_ps(bias.as_ptr().add(c0), masks[0]),
                        // Masked off (nothing read) where these lanes have no live channel.
                        _mm256_maskload_ps(bias.as_ptr().wrapping_add(c0 + 8), masks[1]),
                    ];
                    // The first micro-tile brings the next panel in while its first half reads
                    // its own, as the 512-bit kernel does.
                    let pf = if s == 0 && h == 0 {
                        panel.wrapping_add(panel_bytes)
                    } else {
                        std::ptr::null()
                    };
                    macro_rules! go {
                        ($($n:literal)*) => {
                            match r {
                                $($n => if f16 {
                                    tile_avx2::<$n, true>(
                                        xp, t, k, n, panel, h, c0, bias, masks, out, pf,
                                    )
                                } else {
                                    tile_avx2::<$n, false>(
                                        xp, t, k, n, panel, h, c0, bias, masks, out, pf,
                                    )
                                },)*
                                _ => {}
                            }
                        };
                    }
                    go!(1 2 3 4 5 6);
                    debug_assert!((1..=MAX_ROWS_AVX2).contains(&r), "a micro-tile of {r} rows");
                }
            }
            t += r;
        }
    }

    /// The first `live` of eight lanes (all when `live ≥ 8`), as `maskload`/`maskstore` read it.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    unsafe fn lane_mask8(live: usize) -> __m256i {
        let l = live.min(8) as i32;
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(l),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }

    /// The first `live` of sixteen lanes (all when `live ≥ 16`).
    fn lane_mask(live: usize) -> __mmask16 {
        if live >= 16 {
            0xffff
        } else {
            ((1u32 << live) - 1) as __mmask16
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(n: usize, k: usize) -> Vec<f32> {
        (0..n * k)
            .map(|i| ((i * 7_919 % 1_000) as f32 / 500.0 - 1.0) * 0.1)
            .collect()
    }

    fn acts(rows: usize, k: usize) -> Vec<f32> {
        (0..rows * k)
            .map(|i| (i * 104_729 % 997) as f32 / 498.5 - 1.0)
            .collect()
    }

    /// `x · Wᵀ + b` in `f64` over the weights as `E` rounds them.
    fn reference<E: PanelElem>(x: &[f32], rows: usize, w: &[f32], b: &[f32], k: usize) -> Vec<f32> {
        let n = b.len();
        let mut out = vec![0f32; rows * n];
        for t in 0..rows {
            for c in 0..n {
                let s: f64 = (0..k)
                    .map(|i| x[t * k + i] as f64 * E::from_f32(w[c * k + i]).to_f32() as f64)
                    .sum();
                out[t * n + c] = (s + b[c] as f64) as f32;
            }
        }
        out
    }

    /// The tiers this CPU runs: AVX2 always (the tests run on x86-64 CI machines with AVX2 or
    /// fall back to the portable loop), AVX-512 where present.
    fn tiers() -> Vec<PanelTier> {
        let mut tiers = vec![PanelTier::Avx2];
        if crate::embed::cpu_has_avx512_vnni() {
            tiers.push(PanelTier::Avx512);
        }
        tiers
    }

    fn check<E: PanelElem>(n: usize, k: usize, tier: PanelTier) {
        let w = matrix(n, k);
        let b: Vec<f32> = (0..n).map(|c| c as f32 * 0.01 - 0.3).collect();
        let p = Panels::<E>::pack(&w, n, k, tier);
        for rows in [1, 2, 5, 11, 12, 13, 20, 25, 40, 131] {
            let x = acts(rows, k);
            let want = reference::<E>(&x, rows, &w, &b, k);
            // A tail past the output catches any store beyond `rows · n`.
            const TAIL: f32 = 12_345.0;
            let mut par = vec![TAIL; rows * n + 40];
            let mut seq = vec![TAIL; rows * n + 40];
            linear(&x, rows, &p, &b, &mut par, true);
            linear(&x, rows, &p, &b, &mut seq, false);
            for buf in [&mut par, &mut seq] {
                assert!(
                    buf[rows * n..].iter().all(|&v| v == TAIL),
                    "n {n} k {k}: wrote past"
                );
                buf.truncate(rows * n);
            }
            assert_eq!(par, seq, "n {n} k {k} rows {rows}: threads change the bits");
            // f32 rounding of a k-term sum, against the f64 reference.
            let tol = |e: f32| 1e-4 * (1.0 + e.abs()) * (k as f32 / 384.0).max(1.0);
            for (g, e) in par.iter().zip(&want) {
                assert!(
                    (g - e).abs() <= tol(*e),
                    "n {n} k {k} rows {rows}: {g} vs {e}"
                );
            }
            // Every row alone gives the bits it got inside the pass.
            for t in [0, rows / 2, rows - 1] {
                let mut one = vec![f32::NAN; n];
                linear(&x[t * k..(t + 1) * k], 1, &p, &b, &mut one, true);
                assert_eq!(
                    one[..],
                    par[t * n..(t + 1) * n],
                    "n {n} k {k} row {t} of {rows}"
                );
            }
        }
    }

    /// Panel kernel against an `f64` product, for channel counts that fill panels exactly and
    /// that leave a masked tail, odd input widths, every micro-tile size and both element types;
    /// threads and pass size never change a result's bits.
    #[test]
    fn panels_compute_the_plain_product() {
        // (40, 3_100): f32 panels over the L2 budget, so jobs of one panel each; the small ones
        // leave an empty or partial upper half in the last panel, or take one or two inputs.
        for (n, k) in [
            (64, 96),
            (99, 37),
            (160, 384),
            (7, 5),
            (40, 3_100),
            (16, 3),
            (17, 1),
            (33, 2),
            (48, 17),
            (1, 1),
        ] {
            for tier in tiers() {
                check::<f32>(n, k, tier);
                check::<u16>(n, k, tier);
            }
        }
    }

    /// The 256-bit and 512-bit kernels add the same products in the same order: same bits.
    #[test]
    fn both_tiers_give_the_same_bits() {
        if !crate::embed::cpu_has_avx512_vnni() || !crate::embed::cpu_has_avx2_fma_f16c() {
            return;
        }
        for (n, k, rows) in [
            (99, 70, 23),
            (384, 384, 20),
            (40, 3_100, 7),
            (1_536, 384, 33),
        ] {
            let w = matrix(n, k);
            let b: Vec<f32> = (0..n).map(|c| c as f32 * 0.02).collect();
            let x = acts(rows, k);
            let half = |tier| {
                let mut out = vec![f32::NAN; rows * n];
                let p = Panels::<u16>::pack(&w, n, k, tier);
                linear(&x, rows, &p, &b, &mut out, true);
                out
            };
            let full = |tier| {
                let mut out = vec![f32::NAN; rows * n];
                let p = Panels::<f32>::pack(&w, n, k, tier);
                linear(&x, rows, &p, &b, &mut out, true);
                out
            };
            let shape = (n, k, rows);
            assert_eq!(
                half(PanelTier::Avx2),
                half(PanelTier::Avx512),
                "f16 {shape:?}"
            );
            assert_eq!(
                full(PanelTier::Avx2),
                full(PanelTier::Avx512),
                "f32 {shape:?}"
            );
        }
    }

    /// Every plan's jobs cover each (row, panel) exactly once, whatever the shape and threads.
    #[test]
    fn plans_cover_every_row_and_panel_once() {
        for threads in [1, 2, 3, 8] {
            for panels in [1, 2, 5, 12, 48] {
                for panel_bytes in [1_024, 24_576, 98_304, 400_000] {
                    for (rows, tile) in [1, 7, 20, 24, 25, 131, 1_568]
                        .into_iter()
                        .flat_map(|r| [(r, MAX_ROWS), (r, MAX_ROWS_AVX2)])
                    {
                        let plan = Plan::new(rows, panels, panel_bytes, threads, tile);
                        let mut seen = vec![0u8; rows * panels];
                        for j in 0..plan.groups * plan.row_chunks {
                            let (g, c) = (j / plan.row_chunks, j % plan.row_chunks);
                            let p0 = g * plan.group;
                            let t0 = c * plan.chunk_rows;
                            for p in p0..(p0 + plan.group).min(panels) {
                                for t in t0..(t0 + plan.chunk_rows).min(rows) {
                                    seen[t * panels + p] += 1;
                                }
                            }
                        }
                        let shape = (threads, panels, panel_bytes, rows, tile);
                        assert!(seen.iter().all(|&v| v == 1), "{shape:?}");
                        assert!(
                            plan.group == 1 || plan.group * panel_bytes <= JOB_WEIGHT_BYTES,
                            "{shape:?}: a job's weights overflow L2"
                        );
                    }
                }
            }
        }
    }

    /// The portable loop (CPUs without AVX2) agrees with the SIMD kernels.
    #[test]
    fn portable_panels_agree() {
        let (n, k, rows) = (99, 70, 23);
        let w = matrix(n, k);
        let b: Vec<f32> = (0..n).map(|c| c as f32 * 0.02).collect();
        let x = acts(rows, k);
        for (half, tier) in [false, true]
            .into_iter()
            .flat_map(|h| tiers().into_iter().map(move |t| (h, t)))
        {
            let mut simd = vec![f32::NAN; rows * n];
            let mut plain = vec![f32::NAN; rows * n];
            let dest = OutPtr(plain.as_mut_ptr());
            if half {
                let p = Panels::<u16>::pack(&w, n, k, tier);
                linear(&x, rows, &p, &b, &mut simd, false);
                // SAFETY: the whole output is this call's; `x` and `b` cover the shape.
                unsafe { portable(&x, 0, rows, &p, 0, p.panels(), &b, &dest) };
            } else {
                let p = Panels::<f32>::pack(&w, n, k, tier);
                linear(&x, rows, &p, &b, &mut simd, false);
                // SAFETY: as above.
                unsafe { portable(&x, 0, rows, &p, 0, p.panels(), &b, &dest) };
            }
            for (g, e) in simd.iter().zip(&plain) {
                assert!((g - e).abs() <= 1e-4, "half {half} {tier:?}: {g} vs {e}");
            }
        }
    }
}

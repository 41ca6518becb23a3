//! Scaled dot-product attention for one (sequence, head): `ctx[i] = Σ_j softmax_j(q_i·k_j) v_j`.
//!
//! The AVX2 kernel (head dimension 32, as all-MiniLM-L6-v2's) blocks both products in registers:
//! scores for four query rows × sixteen keys at a time over K transposed, a vectorised softmax,
//! then four output rows × 16 dimensions (twice) accumulated over the keys, all within AVX2's
//! sixteen registers; where AVX-512VL gives 32 registers, up to eight query rows per block (the
//! same sums in the same order, so the same bits). The portable body is the reference every
//! other CPU runs.

use super::precision::Kernel;

/// One head of one sequence inside the fused QKV buffer.
pub(super) struct HeadView<'a> {
    /// The fused `(rows, 3 · hidden)` QKV buffer of the whole pass.
    pub(super) qkv: &'a [f32],
    /// The sequence's first row in `qkv`.
    pub(super) first_row: usize,
    /// The sequence's length in tokens.
    pub(super) len: usize,
    /// The model's hidden size.
    pub(super) hidden: usize,
    /// The head's first column within each of Q, K and V.
    pub(super) col: usize,
    /// The head's dimension.
    pub(super) dim: usize,
}

impl HeadView<'_> {
    #[inline(always)]
    fn row(&self, part: usize, i: usize) -> &[f32] {
        let start = (self.first_row + i) * 3 * self.hidden + part * self.hidden + self.col;
        &self.qkv[start..start + self.dim]
    }
}

/// Attention for one head (the scale is already in q). `ctx_rows` starts at the sequence's first
/// row of the context buffer; the head writes columns `col..col + dim` of each of its rows.
pub(super) fn attend(head: &HeadView, scores: &mut Vec<f32>, ctx_rows: &mut [f32], kernel: Kernel) {
    #[cfg(target_arch = "x86_64")]
    {
        if kernel.simd()
            && head.dim == avx2::DIM
            && ctx_rows.len() >= head.len.saturating_sub(1) * head.hidden + head.col + head.dim
        {
            if kernel.vnni() && super::precision::cpu_has_avx512_vnni() {
                // SAFETY: AVX2 and FMA as below; AVX-512F and VL checked just above.
                unsafe { avx2::attend32_wide(head, scores, ctx_rows) };
            } else {
                // SAFETY: `kernel.simd()` only holds when the CPU has AVX2 and FMA
                // (`Kernel::resolve`); the head dimension and the output length are checked
                // just above.
                unsafe { avx2::attend32(head, scores, ctx_rows) };
            }
            return;
        }
    }
    let _ = kernel;
    attend_body(head, scores, ctx_rows);
}

/// The portable attention: scores over K transposed, softmax, weighted sum of V.
fn attend_body(head: &HeadView, scratch: &mut Vec<f32>, ctx_rows: &mut [f32]) {
    let (len, d) = (head.len, head.dim);
    // scratch = [K transposed (d × len) | scores (len)]: with K transposed, q·K for all keys is
    // d axpy passes over contiguous memory, which vectorise over the keys.
    scratch.clear();
    scratch.resize(d * len + len, 0.0);
    let (kt, scores) = scratch.split_at_mut(d * len);
    for j in 0..len {
        for (t, &k) in head.row(1, j).iter().enumerate() {
            kt[t * len + j] = k;
        }
    }
    for i in 0..len {
        let q = head.row(0, i);
        scores.fill(0.0);
        for (t, &qt) in q.iter().enumerate() {
            for (s, &k) in scores.iter_mut().zip(&kt[t * len..(t + 1) * len]) {
                *s += qt * k;
            }
        }
        softmax_in_place(scores);
        let out = &mut ctx_rows[i * head.hidden + head.col..][..d];
        out.fill(0.0);
        for (j, &p) in scores.iter().enumerate() {
            for (o, v) in out.iter_mut().zip(head.row(2, j)) {
                *o += p * v;
            }
        }
    }
}

fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::mathf::exp_neg;
    use super::HeadView;

    /// The head dimension this kernel is built for.
    pub(super) const DIM: usize = 32;

    /// # Safety
    /// The CPU has AVX2 and FMA; `head.dim == DIM`; `ctx_rows` holds
    /// `(len - 1) · hidden + col + DIM` values.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn attend32(head: &HeadView, scratch: &mut Vec<f32>, ctx_rows: &mut [f32]) {
        blocks::<4>(head, scratch, ctx_rows)
    }

    /// [`attend32`] with eight query rows per block where AVX-512VL gives 32 vector registers
    /// (16 score and 16 context accumulators): each key and value load feeds twice the FMAs.
    /// Every score and output is summed in the same order, so the bits are the same.
    ///
    /// # Safety
    /// As [`attend32`], and the CPU has AVX-512F and AVX-512VL.
    #[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
    pub(super) unsafe fn attend32_wide(
        head: &HeadView,
        scratch: &mut Vec<f32>,
        ctx_rows: &mut [f32],
    ) {
        blocks::<8>(head, scratch, ctx_rows)
    }

    /// The query rows in blocks of at most `ROWS`.
    #[inline(always)]
    unsafe fn blocks<const ROWS: usize>(
        head: &HeadView,
        scratch: &mut Vec<f32>,
        ctx_rows: &mut [f32],
    ) {
        let len = head.len;
        // Keys padded to a multiple of 8 with zeros; scores past `len` are never used.
        let lp = len.next_multiple_of(8);
        scratch.clear();
        scratch.resize(DIM * lp + ROWS * lp, 0.0);
        let (kt, sc) = scratch.split_at_mut(DIM * lp);
        for j in 0..len {
            for (t, &k) in head.row(1, j).iter().enumerate() {
                kt[t * lp + j] = k;
            }
        }
        // Blocks sized evenly (20 rows at eight: 6 + 7 + 7, not 8 + 8 + 4): a short block has
        // too few accumulators to hide the FMA latency. Each row's sums do not depend on it.
        let blocks = len.div_ceil(ROWS);
        let mut i = 0;
        for b in 0..blocks {
            let r = (len - i) / (blocks - b);
            match r {
                8 => rows::<8>(head, kt, sc, lp, i, ctx_rows),
                7 => rows::<7>(head, kt, sc, lp, i, ctx_rows),
                6 => rows::<6>(head, kt, sc, lp, i, ctx_rows),
                5 => rows::<5>(head, kt, sc, lp, i, ctx_rows),
                4 => rows::<4>(head, kt, sc, lp, i, ctx_rows),
                3 => rows::<3>(head, kt, sc, lp, i, ctx_rows),
                2 => rows::<2>(head, kt, sc, lp, i, ctx_rows),
                _ => rows::<1>(head, kt, sc, lp, i, ctx_rows),
            }
            i += r;
        }
    }

    /// Query rows `i..i + R`: their scores, softmax, and context rows.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // `t` indexes K transposed and every query row at once
    unsafe fn rows<const R: usize>(
        head: &HeadView,
        kt: &[f32],
        sc: &mut [f32],
        lp: usize,
        i: usize,
        ctx_rows: &mut [f32],
    ) {
        let len = head.len;
        let q: [&[f32]; R] = std::array::from_fn(|r| head.row(0, i + r));
        let ktp = kt.as_ptr();
        // Sixteen keys per step (each broadcast query value feeds two FMAs), then eight.
        let mut j0 = 0;
        while j0 + 16 <= lp {
            let mut lo = [_mm256_setzero_ps(); R];
            let mut hi = [_mm256_setzero_ps(); R];
            for t in 0..DIM {
                let k0 = _mm256_loadu_ps(ktp.add(t * lp + j0));
                let k1 = _mm256_loadu_ps(ktp.add(t * lp + j0 + 8));
                for r in 0..R {
                    let qv = _mm256_set1_ps(q[r][t]);
                    lo[r] = _mm256_fmadd_ps(qv, k0, lo[r]);
                    hi[r] = _mm256_fmadd_ps(qv, k1, hi[r]);
                }
            }
            for r in 0..R {
                _mm256_storeu_ps(sc.as_mut_ptr().add(r * lp + j0), lo[r]);
                _mm256_storeu_ps(sc.as_mut_ptr().add(r * lp + j0 + 8), hi[r]);
            }
            j0 += 16;
        }
        if j0 < lp {
            let mut acc = [_mm256_setzero_ps(); R];
            for t in 0..DIM {
                let kv = _mm256_loadu_ps(ktp.add(t * lp + j0));
                for r in 0..R {
                    acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(q[r][t]), kv, acc[r]);
                }
            }
            for (r, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(sc.as_mut_ptr().add(r * lp + j0), *a);
            }
        }
        for r in 0..R {
            softmax(&mut sc[r * lp..r * lp + len]);
        }
        // The context in two halves of 16 dimensions: R rows × 2 accumulators and 2 value loads
        // stay within the registers (4 rows in AVX2's sixteen, 8 in AVX-512VL's 32; all 32
        // dimensions at once would spill).
        for half in 0..2 {
            let mut o = [[_mm256_setzero_ps(); 2]; R];
            for j in 0..len {
                let v = head.row(2, j).as_ptr().add(16 * half);
                let (v0, v1) = (_mm256_loadu_ps(v), _mm256_loadu_ps(v.add(8)));
                for r in 0..R {
                    let p = _mm256_set1_ps(sc[r * lp + j]);
                    o[r][0] = _mm256_fmadd_ps(p, v0, o[r][0]);
                    o[r][1] = _mm256_fmadd_ps(p, v1, o[r][1]);
                }
            }
            for (r, acc) in o.iter().enumerate() {
                let out = &mut ctx_rows[(i + r) * head.hidden + head.col + 16 * half..][..16];
                _mm256_storeu_ps(out.as_mut_ptr(), acc[0]);
                _mm256_storeu_ps(out.as_mut_ptr().add(8), acc[1]);
            }
        }
    }

    /// Softmax with the polynomial `exp` (relative error ≈ 2e-7, FMA build), so the exponentials vectorise;
    /// the sum is a separate loop because an ordered float sum would keep them scalar.
    #[inline(always)]
    fn softmax(row: &mut [f32]) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for v in row.iter_mut() {
            *v = exp_neg::<true>(*v - max);
        }
        let inv = 1.0 / row.iter().sum::<f32>();
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::KernelChoice;

    /// Every kernel against the portable body for sequence lengths that cover every block size
    /// (1 to 8 query rows) and key tail; the four- and eight-row SIMD blocks give the same bits.
    #[test]
    fn attention_kernels_agree() {
        let (hidden, dim) = (64, 32);
        for len in (1..=41).chain([64, 129]) {
            let qkv: Vec<f32> = (0..len * 3 * hidden)
                .map(|i| ((i * 7_919 % 2_003) as f32 / 1_001.5 - 1.0) * 0.7)
                .collect();
            let run = |kernel: Kernel| {
                let mut ctx = vec![f32::NAN; len * hidden];
                let mut scratch = Vec::new();
                for col in [0, dim] {
                    let head = HeadView {
                        qkv: &qkv,
                        first_row: 0,
                        len,
                        hidden,
                        col,
                        dim,
                    };
                    attend(&head, &mut scratch, &mut ctx, kernel);
                }
                ctx
            };
            let want = run(Kernel::Scalar);
            let narrow = run(Kernel::resolve(KernelChoice::Avx2));
            let wide = run(Kernel::resolve(KernelChoice::Auto));
            for (g, e) in wide.iter().zip(&want) {
                assert!((g - e).abs() <= 1e-5, "len {len}: {g} vs {e}");
            }
            assert_eq!(
                wide.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                narrow.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "len {len}"
            );
        }
    }
}

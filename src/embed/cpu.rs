//! The CPU forward pass: BERT over packed, padding-free token rows with fused kernels.
//!
//! candle's tensor ops run one elementwise pass per op on one thread, and a padded batch spends
//! work on padding. On CPU the encoder therefore runs here, on plain `f32` buffers:
//!
//! * all sequences of a batch are packed row after row (`T` rows, no padding anywhere);
//! * every projection is one `gemm` call whose destination is pre-filled with the bias
//!   (`dst = dst + x·Wᵀ`), so bias adds cost no extra pass; Q, K and V are one fused projection
//!   with the attention scale folded into Q;
//! * attention runs per (sequence, head) on strided views of the QKV rows, in parallel, so it never
//!   sees another sequence's tokens and needs no mask;
//! * residual add + LayerNorm and bias + GELU are single fused passes, parallel over rows.
//!
//! Weights are used in place from the memory-mapped safetensors file (zero-copy: the checkpoint's
//! `(out, in)` matrices are handed to gemm with transposed strides), so loading costs a header
//! parse and the fused QKV copy, and pages fault in as the first forward pass touches them. The
//! candle encoder in `bert.rs` stays the path for GPUs.

use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::SafeTensors;

use super::bert::BertConfig;

type LoadResult<T> = Result<T, String>;

/// A raw pointer that may cross threads; every user writes a disjoint region.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: used only to hand disjoint output regions to parallel tasks (see `attention`).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// `f32` values either owned or borrowed in place from the mapped checkpoint.
enum F32Buf {
    Owned(Vec<f32>),
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
}

impl Deref for F32Buf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            F32Buf::Owned(v) => v,
            // SAFETY: `Mapped` is only built by `read` after checking that offset + 4·len lies
            // inside the map, that the address is 4-byte aligned and that the host is little
            // endian (the file's byte order); the map is read-only and lives as long as `self`.
            F32Buf::Mapped { map, offset, len } => unsafe {
                std::slice::from_raw_parts(map.as_ptr().add(*offset) as *const f32, *len)
            },
        }
    }
}

struct Dense {
    /// The weight as an `(in, out)` row-major matrix: the checkpoint's `(out, in)` transposed
    /// once at load. gemm then reads it as a column-major left operand and can skip repacking it
    /// on every call.
    w: Vec<f32>,
    /// The checkpoint's own `(out, in)` layout (mapped in place), streamed row by row by the
    /// small-pass kernel: a handful of tokens reads every weight exactly once, sequentially.
    w_rows: F32Buf,
    b: F32Buf,
    n_in: usize,
    n_out: usize,
}

struct Norm {
    gamma: F32Buf,
    beta: F32Buf,
}

struct Layer {
    qkv: Dense,
    attn_out: Dense,
    attn_norm: Norm,
    ffn_in: Dense,
    ffn_out: Dense,
    ffn_norm: Norm,
}

/// The BERT encoder on CPU buffers.
pub struct CpuEncoder {
    word: F32Buf,
    position: F32Buf,
    type0: Vec<f32>,
    emb_norm: Norm,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    vocab: usize,
    max_positions: usize,
    eps: f32,
}

/// Transposes a row-major `(rows, cols)` matrix, in cache-sized tiles.
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
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

/// The mapped checkpoint and its parsed header.
struct Checkpoint<'a> {
    map: &'a Arc<Mmap>,
    st: SafeTensors<'a>,
}

impl Checkpoint<'_> {
    /// The tensor `name`, checked for dtype and shape, borrowed in place when possible.
    fn read(&self, name: &str, shape: &[usize]) -> LoadResult<F32Buf> {
        let view = self
            .st
            .tensor(name)
            .map_err(|e| format!("tensor {name}: {e}"))?;
        if view.shape() != shape {
            return Err(format!(
                "tensor {name} has shape {:?}, expected {shape:?}",
                view.shape()
            ));
        }
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(format!("tensor {name} is {:?}, expected F32", view.dtype()));
        }
        let bytes = view.data();
        let len = shape.iter().product::<usize>();
        if bytes.len() != len * 4 {
            return Err(format!(
                "tensor {name} holds {} bytes, expected {}",
                bytes.len(),
                len * 4
            ));
        }
        let offset = bytes.as_ptr() as usize - self.map.as_ptr() as usize;
        if cfg!(target_endian = "little") && (bytes.as_ptr() as usize) % 4 == 0 {
            return Ok(F32Buf::Mapped {
                map: Arc::clone(self.map),
                offset,
                len,
            });
        }
        Ok(F32Buf::Owned(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ))
    }

    fn dense(&self, prefix: &str, n_in: usize, n_out: usize) -> LoadResult<Dense> {
        let w_rows = self.read(&format!("{prefix}.weight"), &[n_out, n_in])?;
        Ok(Dense {
            w: transpose(&w_rows, n_out, n_in),
            w_rows,
            b: self.read(&format!("{prefix}.bias"), &[n_out])?,
            n_in,
            n_out,
        })
    }

    fn norm(&self, prefix: &str, dim: usize) -> LoadResult<Norm> {
        Ok(Norm {
            gamma: self.read(&format!("{prefix}.weight"), &[dim])?,
            beta: self.read(&format!("{prefix}.bias"), &[dim])?,
        })
    }
}

impl CpuEncoder {
    /// Maps the checkpoint at `path` and builds the encoder over it.
    pub fn load(path: &Path, cfg: &BertConfig) -> LoadResult<Self> {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        // SAFETY: the map is read-only; memex never writes model files in place (`memex model
        // fetch` replaces them by atomic rename), so the bytes do not change under the map.
        let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| e.to_string())?);
        let st = SafeTensors::deserialize(&map[..])
            .map_err(|e| format!("not a readable safetensors file: {e}"))?;
        let ck = Checkpoint { map: &map, st };
        let h = cfg.hidden_size;
        let heads = cfg.num_attention_heads;
        if heads == 0 || h % heads != 0 {
            return Err("hidden size is not a multiple of the number of heads".into());
        }
        let scale = 1.0 / ((h / heads) as f32).sqrt();
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let sa = format!("{p}.attention.self");
            // Q, K and V stacked into one (3h, h) matrix, the attention scale folded into Q.
            let mut w = Vec::with_capacity(3 * h * h);
            let mut b = Vec::with_capacity(3 * h);
            for (part, factor) in [("query", scale), ("key", 1.0), ("value", 1.0)] {
                w.extend(
                    ck.read(&format!("{sa}.{part}.weight"), &[h, h])?
                        .iter()
                        .map(|x| x * factor),
                );
                b.extend(
                    ck.read(&format!("{sa}.{part}.bias"), &[h])?
                        .iter()
                        .map(|x| x * factor),
                );
            }
            layers.push(Layer {
                qkv: Dense {
                    w: transpose(&w, 3 * h, h),
                    w_rows: F32Buf::Owned(w),
                    b: F32Buf::Owned(b),
                    n_in: h,
                    n_out: 3 * h,
                },
                attn_out: ck.dense(&format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: ck.norm(&format!("{p}.attention.output.LayerNorm"), h)?,
                ffn_in: ck.dense(&format!("{p}.intermediate.dense"), h, cfg.intermediate_size)?,
                ffn_out: ck.dense(&format!("{p}.output.dense"), cfg.intermediate_size, h)?,
                ffn_norm: ck.norm(&format!("{p}.output.LayerNorm"), h)?,
            });
        }
        let type_emb = ck.read(
            "embeddings.token_type_embeddings.weight",
            &[cfg.type_vocab_size, h],
        )?;
        Ok(Self {
            word: ck.read("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?,
            position: ck.read(
                "embeddings.position_embeddings.weight",
                &[cfg.max_position_embeddings, h],
            )?,
            type0: type_emb[..h].to_vec(),
            emb_norm: ck.norm("embeddings.LayerNorm", h)?,
            layers,
            hidden: h,
            heads,
            vocab: cfg.vocab_size,
            max_positions: cfg.max_position_embeddings,
            eps: cfg.layer_norm_eps as f32,
        })
    }

    /// Hidden size.
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// Encodes the packed sequences and returns one mean-pooled, L2-normalised vector per sequence.
    ///
    /// `parallel_gemm` splits each matrix product over the rayon pool; callers that already run
    /// several batches side by side pass `false` so each batch's products stay on one thread.
    pub fn embed(&self, seqs: &[&[u32]], parallel_gemm: bool) -> Result<Vec<Vec<f32>>, String> {
        let h = self.hidden;
        let total: usize = seqs.iter().map(|s| s.len()).sum();
        let mut offsets = Vec::with_capacity(seqs.len());
        let mut acc = 0;
        for s in seqs {
            if s.is_empty() || s.len() > self.max_positions {
                return Err(format!("sequence of {} tokens is out of range", s.len()));
            }
            if let Some(bad) = s.iter().find(|&&id| id as usize >= self.vocab) {
                return Err(format!("token id {bad} is outside the vocabulary"));
            }
            offsets.push(acc);
            acc += s.len();
        }

        // Embeddings + LayerNorm.
        let mut x = vec![0f32; total * h];
        let mut rows: Vec<(u32, usize)> = Vec::with_capacity(total);
        for s in seqs {
            rows.extend(s.iter().enumerate().map(|(p, &id)| (id, p)));
        }
        x.par_chunks_mut(h)
            .zip(rows.par_iter())
            .for_each(|(row, &(id, pos))| {
                let w = &self.word[id as usize * h..][..h];
                let p = &self.position[pos * h..][..h];
                for i in 0..h {
                    row[i] = w[i] + p[i] + self.type0[i];
                }
                layer_norm_row(row, &self.emb_norm, self.eps);
            });

        let inter = self.layers.first().map_or(0, |l| l.ffn_in.n_out);
        let mut qkv = vec![0f32; total * 3 * h];
        let mut ctx = vec![0f32; total * h];
        let mut tmp = vec![0f32; total * h];
        let mut ffn = vec![0f32; total * inter];
        for layer in &self.layers {
            linear(&x, total, &layer.qkv, &mut qkv, parallel_gemm);
            self.attention(&qkv, seqs, &offsets, &mut ctx);
            linear(&ctx, total, &layer.attn_out, &mut tmp, parallel_gemm);
            add_norm(&mut x, &tmp, &layer.attn_norm, h, self.eps);
            linear(&x, total, &layer.ffn_in, &mut ffn, parallel_gemm);
            ffn.par_chunks_mut(4096).for_each(gelu_in_place);
            linear(&ffn, total, &layer.ffn_out, &mut tmp, parallel_gemm);
            add_norm(&mut x, &tmp, &layer.ffn_norm, h, self.eps);
        }

        Ok(seqs
            .par_iter()
            .zip(offsets.par_iter())
            .map(|(s, &off)| {
                let mut mean = vec![0f64; h];
                for row in x[off * h..(off + s.len()) * h].chunks_exact(h) {
                    for (m, v) in mean.iter_mut().zip(row) {
                        *m += *v as f64;
                    }
                }
                let n = s.len() as f64;
                let norm = mean
                    .iter()
                    .map(|m| (m / n) * (m / n))
                    .sum::<f64>()
                    .sqrt()
                    .max(1e-12);
                mean.iter().map(|m| (m / n / norm) as f32).collect()
            })
            .collect())
    }

    /// Scaled dot-product attention per (sequence, head) over the fused QKV rows.
    fn attention(&self, qkv: &[f32], seqs: &[&[u32]], offsets: &[usize], ctx: &mut [f32]) {
        let h = self.hidden;
        let d = h / self.heads;
        let out = SharedMut(ctx.as_mut_ptr());
        let jobs: Vec<(usize, usize)> = (0..seqs.len())
            .flat_map(|s| (0..self.heads).map(move |hd| (s, hd)))
            .collect();
        jobs.par_iter()
            .for_each_init(Vec::new, |scores: &mut Vec<f32>, &(s, hd)| {
                let head = HeadView {
                    qkv,
                    first_row: offsets[s],
                    len: seqs[s].len(),
                    hidden: h,
                    col: hd * d,
                    dim: d,
                };
                let dst = out;
                // SAFETY: this job writes only rows offsets[s]..offsets[s]+len, columns
                // hd*d..(hd+1)*d of ctx; no other job writes that region, nobody reads it now.
                let ctx_rows = unsafe {
                    std::slice::from_raw_parts_mut(
                        dst.0.add(offsets[s] * h),
                        (seqs[s].len() - 1) * h + hd * d + d,
                    )
                };
                attend(&head, scores, ctx_rows);
            });
    }
}

/// One head of one sequence inside the fused QKV buffer.
struct HeadView<'a> {
    qkv: &'a [f32],
    first_row: usize,
    len: usize,
    hidden: usize,
    col: usize,
    dim: usize,
}

impl HeadView<'_> {
    #[inline(always)]
    fn row(&self, part: usize, i: usize) -> &[f32] {
        let start = (self.first_row + i) * 3 * self.hidden + part * self.hidden + self.col;
        &self.qkv[start..start + self.dim]
    }
}

/// Attention for one head: `ctx[i] = Σ_j softmax_j(q_i·k_j) v_j` (the scale is already in q).
/// Dispatches to an AVX2 build of the same code when the CPU has it.
fn attend(head: &HeadView, scores: &mut Vec<f32>, ctx_rows: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { attend_avx2(head, scores, ctx_rows) };
            return;
        }
    }
    attend_body(head, scores, ctx_rows);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn attend_avx2(head: &HeadView, scores: &mut Vec<f32>, ctx_rows: &mut [f32]) {
    attend_body(head, scores, ctx_rows);
}

#[inline(always)]
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

/// `out (rows, n_out) = x (rows, n_in) · W + b` with `W` stored `(in, out)`, the bias pre-filled
/// so gemm accumulates onto it.
fn linear(x: &[f32], rows: usize, layer: &Dense, out: &mut [f32], parallel_gemm: bool) {
    let (k, n) = (layer.n_in, layer.n_out);
    if rows <= SMALL_PASS_ROWS {
        small_linear(x, rows, layer, out, parallel_gemm);
        return;
    }
    out[..rows * n]
        .par_chunks_mut(n)
        .for_each(|row| row.copy_from_slice(&layer.b[..]));
    let threads = rayon::current_num_threads();
    let parallelism = if parallel_gemm && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: `x` holds rows*k floats, `layer.w` k*n, `out` rows*n, all row-major.
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
            layer.w.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Passes of at most this many tokens use [`small_linear`] instead of gemm.
const SMALL_PASS_ROWS: usize = 32;

/// `out = x · Wᵀ + b` for a few rows: each weight row is read once, sequentially, and dotted
/// with every token row (which stay in L1); output columns are split across threads.
fn small_linear(x: &[f32], rows: usize, layer: &Dense, out: &mut [f32], parallel: bool) {
    const COLS_PER_JOB: usize = 64;
    let (k, n) = (layer.n_in, layer.n_out);
    let w = &layer.w_rows[..];
    let b = &layer.b[..];
    // Column-major scratch (n, rows) so each job writes one contiguous block.
    let mut cols = vec![0f32; n * rows];
    let job = |(jb, block): (usize, &mut [f32])| {
        for (dj, dst) in block.chunks_exact_mut(rows).enumerate() {
            let j = jb * COLS_PER_JOB + dj;
            dot_rows(x, rows, k, &w[j * k..(j + 1) * k], b[j], dst);
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
    for j in 0..n {
        for t in 0..rows {
            out[t * n + j] = cols[j * rows + t];
        }
    }
}

/// `dst[t] = bias + x[t] · w` for every row `t` (AVX2+FMA build when the CPU has them).
fn dot_rows(x: &[f32], rows: usize, k: usize, w: &[f32], bias: f32, dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above.
            unsafe { dot_rows_avx2(x, rows, k, w, bias, dst) };
            return;
        }
    }
    dot_rows_body(x, rows, k, w, bias, dst);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2(x: &[f32], rows: usize, k: usize, w: &[f32], bias: f32, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
    if k % 8 != 0 || x.len() < rows * k || w.len() < k || dst.len() < rows {
        dot_rows_body(x, rows, k, w, bias, dst);
        return;
    }
    let wp = w.as_ptr();
    let xp = x.as_ptr();
    let mut t = 0;
    while t + 8 <= rows {
        let r: [*const f32; 8] = std::array::from_fn(|q| xp.add((t + q) * k));
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut i = 0;
        while i < k {
            let wv = _mm256_loadu_ps(wp.add(i));
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
        let (r0, r1, r2, r3) = (
            xp.add(t * k),
            xp.add((t + 1) * k),
            xp.add((t + 2) * k),
            xp.add((t + 3) * k),
        );
        let (mut a0, mut a1, mut a2, mut a3) = (
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
        );
        let mut i = 0;
        while i < k {
            let wv = _mm256_loadu_ps(wp.add(i));
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r0.add(i)), wv, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(r1.add(i)), wv, a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(r2.add(i)), wv, a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(r3.add(i)), wv, a3);
            i += 8;
        }
        dst[t] = bias + hsum(a0);
        dst[t + 1] = bias + hsum(a1);
        dst[t + 2] = bias + hsum(a2);
        dst[t + 3] = bias + hsum(a3);
        t += 4;
    }
    while t < rows {
        let r0 = xp.add(t * k);
        let mut a0 = _mm256_setzero_ps();
        let mut i = 0;
        while i < k {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r0.add(i)), _mm256_loadu_ps(wp.add(i)), a0);
            i += 8;
        }
        dst[t] = bias + hsum(a0);
        t += 1;
    }
}

/// Four token rows at a time share each load of `w`; eight lanes per accumulator.
#[inline(always)]
fn dot_rows_body(x: &[f32], rows: usize, k: usize, w: &[f32], bias: f32, dst: &mut [f32]) {
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

/// `x = LayerNorm(x + delta)`, row by row in parallel.
fn add_norm(x: &mut [f32], delta: &[f32], norm: &Norm, h: usize, eps: f32) {
    x.par_chunks_mut(h)
        .zip(delta.par_chunks(h))
        .for_each(|(row, d)| {
            for (a, b) in row.iter_mut().zip(d) {
                *a += *b;
            }
            layer_norm_row(row, norm, eps);
        });
}

fn layer_norm_row(row: &mut [f32], norm: &Norm, eps: f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, g), b) in row.iter_mut().zip(norm.gamma.iter()).zip(norm.beta.iter()) {
        *v = (*v - mean) * inv * g + b;
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

/// GELU with erf, as BERT's `gelu`, over a slice (AVX2 build when the CPU has it).
fn gelu_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { gelu_avx2(xs) };
            return;
        }
    }
    gelu_body(xs);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gelu_avx2(xs: &mut [f32]) {
    gelu_body(xs);
}

/// Branch-free, so the loop vectorises.
#[inline(always)]
fn gelu_body(xs: &mut [f32]) {
    for v in xs.iter_mut() {
        let x = *v;
        *v = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// erf by Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7, below f32 resolution near 1).
#[inline(always)]
fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_7;
    const A4: f32 = -1.453_152;
    const A5: f32 = 1.061_405_4;
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = ((((A5 * t + A4) * t + A3) * t + A2) * t + A1) * t;
    let y = 1.0 - poly * exp_neg(-a * a);
    y.copysign(x)
}

/// e^x for x ≤ 0 (clamped at -87), by range reduction to 2^n · e^r and a degree-6 polynomial;
/// relative error about 2e-7. Plain arithmetic and bit casts only, so loops over it vectorise.
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
    let x = x.max(-87.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
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
            let d = (erf(x) - candle_core::cpu::erf::erf_f32(x)).abs();
            worst = worst.max(d);
        }
        assert!(worst < 1e-6, "erf off by {worst}");
    }

    #[test]
    fn exp_matches_std() {
        for i in 0..=8700 {
            let x = -(i as f32) / 100.0;
            let (a, b) = (exp_neg(x), x.exp());
            assert!(
                (a - b).abs() <= 4e-7 * b + f32::MIN_POSITIVE,
                "exp({x}): {a} vs {b}"
            );
        }
    }
}

//! The CPU forward pass: BERT over packed, padding-free token rows with fused kernels.
//!
//! candle's tensor ops run one elementwise pass per op on one thread, and a padded batch spends
//! work on padding. On CPU the encoder therefore runs here, on plain `f32` buffers:
//!
//! * all sequences of a batch are packed row after row (`T` rows, no padding anywhere);
//! * every projection is one kernel call (`dense.rs`) that adds the bias as it stores, so bias
//!   adds cost no extra pass; Q, K and V are one fused projection with the attention scale
//!   folded into Q;
//! * attention runs per (sequence, head) on strided views of the QKV rows, in parallel, so it never
//!   sees another sequence's tokens and needs no mask;
//! * residual add + LayerNorm and bias + GELU are single fused passes, parallel over rows.
//!
//! The projections' weights are held in the [`Precision`] asked for (`dense.rs`: `f16` by
//! default, `f32` packed into panels on the SIMD tiers and mapped in place from the safetensors
//! file on the portable one, or `int8`); embeddings, LayerNorm
//! parameters and biases are always the checkpoint's `f32`, mapped in place. Every kernel has an
//! AVX2 build and a portable one; which runs is decided once, at load ([`Kernel`]). The candle
//! encoder in `bert.rs` stays the path for GPUs.

use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::SafeTensors;

use super::attention::{attend, HeadView};
use super::bert::BertConfig;
use super::dense::{linear, Dense};
use super::f32buf::F32Buf;
use super::mathf::gelu_in_place;
use super::precision::{Kernel, Precision};

type LoadResult<T> = Result<T, String>;

/// A raw pointer that may cross threads; every user writes a disjoint region.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: used only to hand disjoint output regions to parallel tasks (see `attention`).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

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
    precision: Precision,
    kernel: Kernel,
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
        if cfg!(target_endian = "little") && (bytes.as_ptr() as usize).is_multiple_of(4) {
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

    fn dense(
        &self,
        prefix: &str,
        n_in: usize,
        n_out: usize,
        (p, kernel): (Precision, Kernel),
    ) -> LoadResult<Dense> {
        Ok(Dense::new(
            self.read(&format!("{prefix}.weight"), &[n_out, n_in])?,
            self.read(&format!("{prefix}.bias"), &[n_out])?,
            n_in,
            n_out,
            p,
            kernel,
        ))
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
    pub fn load(
        path: &Path,
        cfg: &BertConfig,
        precision: Precision,
        kernel: Kernel,
    ) -> LoadResult<Self> {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        // SAFETY: the map is read-only; memex never writes model files in place (`memex model
        // fetch` replaces them by atomic rename), so the bytes do not change under the map.
        let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| e.to_string())?);
        let st = SafeTensors::deserialize(&map[..])
            .map_err(|e| format!("not a readable safetensors file: {e}"))?;
        let ck = Checkpoint { map: &map, st };
        let h = cfg.hidden_size;
        let heads = cfg.num_attention_heads;
        if heads == 0 || !h.is_multiple_of(heads) {
            return Err("hidden size is not a multiple of the number of heads".into());
        }
        let scale = 1.0 / ((h / heads) as f32).sqrt();
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        let pk = (precision, kernel);
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
                qkv: Dense::new(
                    F32Buf::Owned(w),
                    F32Buf::Owned(b),
                    h,
                    3 * h,
                    precision,
                    kernel,
                ),
                attn_out: ck.dense(&format!("{p}.attention.output.dense"), h, h, pk)?,
                attn_norm: ck.norm(&format!("{p}.attention.output.LayerNorm"), h)?,
                ffn_in: ck.dense(
                    &format!("{p}.intermediate.dense"),
                    h,
                    cfg.intermediate_size,
                    pk,
                )?,
                ffn_out: ck.dense(&format!("{p}.output.dense"), cfg.intermediate_size, h, pk)?,
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
            precision,
            kernel,
        })
    }

    /// The weight precision in use.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The kernels in use.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Bytes of projection weights one forward pass streams (embeddings excluded: a pass reads
    /// only its tokens' rows of them).
    pub fn weight_bytes_per_pass(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                l.qkv.weight_bytes()
                    + l.attn_out.weight_bytes()
                    + l.ffn_in.weight_bytes()
                    + l.ffn_out.weight_bytes()
            })
            .sum()
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
        let kernel = self.kernel;
        for layer in &self.layers {
            linear(&x, total, &layer.qkv, &mut qkv, parallel_gemm, kernel);
            self.attention(&qkv, seqs, &offsets, &mut ctx);
            linear(
                &ctx,
                total,
                &layer.attn_out,
                &mut tmp,
                parallel_gemm,
                kernel,
            );
            add_norm(&mut x, &tmp, &layer.attn_norm, h, self.eps);
            linear(&x, total, &layer.ffn_in, &mut ffn, parallel_gemm, kernel);
            ffn.par_chunks_mut(4096)
                .for_each(|c| gelu_in_place(c, kernel));
            linear(&ffn, total, &layer.ffn_out, &mut tmp, parallel_gemm, kernel);
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
        let kernel = self.kernel;
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
                attend(&head, scores, ctx_rows, kernel);
            });
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

/// `Σ f(v)` in eight independent lanes, so it vectorises (an ordered float sum cannot); the
/// order is fixed, so every kernel and batching sums a row the same way.
#[inline(always)]
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn layer_norm_row(row: &mut [f32], norm: &Norm, eps: f32) {
    let n = row.len() as f32;
    let mean = lane_sum(row, |v| v) / n;
    let var = lane_sum(row, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, g), b) in row.iter_mut().zip(norm.gamma.iter()).zip(norm.beta.iter()) {
        *v = (*v - mean) * inv * g + b;
    }
}

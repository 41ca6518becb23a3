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
//! Weights are read straight from the memory-mapped safetensors file into row-major `(in, out)`
//! buffers. The candle encoder in `bert.rs` stays the path for GPUs.

use candle_core::safetensors::MmapedSafetensors;
use rayon::prelude::*;

use super::bert::BertConfig;

type LoadResult<T> = Result<T, String>;

/// A raw pointer that may cross threads; every user writes a disjoint region.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: used only to hand disjoint output regions to parallel tasks (see `attention`).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

struct Dense {
    /// `(in, out)` row-major, i.e. the transpose of the checkpoint's `(out, in)`.
    w: Vec<f32>,
    b: Vec<f32>,
    n_in: usize,
    n_out: usize,
}

struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
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
    word: Vec<f32>,
    position: Vec<f32>,
    type0: Vec<f32>,
    emb_norm: Norm,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    vocab: usize,
    max_positions: usize,
    eps: f32,
}

fn read(st: &MmapedSafetensors, name: &str, shape: &[usize]) -> LoadResult<Vec<f32>> {
    let view = st.get(name).map_err(|e| format!("tensor {name}: {e}"))?;
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
    let expected = shape.iter().product::<usize>() * 4;
    if bytes.len() != expected {
        return Err(format!(
            "tensor {name} holds {} bytes, expected {expected}",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Transposes a row-major `(rows, cols)` matrix.
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = m[r * cols + c];
        }
    }
    out
}

fn dense(st: &MmapedSafetensors, prefix: &str, n_in: usize, n_out: usize) -> LoadResult<Dense> {
    let w = read(st, &format!("{prefix}.weight"), &[n_out, n_in])?;
    Ok(Dense {
        w: transpose(&w, n_out, n_in),
        b: read(st, &format!("{prefix}.bias"), &[n_out])?,
        n_in,
        n_out,
    })
}

fn norm(st: &MmapedSafetensors, prefix: &str, dim: usize) -> LoadResult<Norm> {
    Ok(Norm {
        gamma: read(st, &format!("{prefix}.weight"), &[dim])?,
        beta: read(st, &format!("{prefix}.bias"), &[dim])?,
    })
}

impl CpuEncoder {
    /// Reads the weights from the memory-mapped checkpoint.
    pub fn load(st: &MmapedSafetensors, cfg: &BertConfig) -> LoadResult<Self> {
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
            let q = read(st, &format!("{sa}.query.weight"), &[h, h])?;
            let k = read(st, &format!("{sa}.key.weight"), &[h, h])?;
            let v = read(st, &format!("{sa}.value.weight"), &[h, h])?;
            let mut fused: Vec<f32> = q.iter().map(|x| x * scale).collect();
            fused.extend_from_slice(&k);
            fused.extend_from_slice(&v);
            let mut bias: Vec<f32> = read(st, &format!("{sa}.query.bias"), &[h])?
                .iter()
                .map(|x| x * scale)
                .collect();
            bias.extend(read(st, &format!("{sa}.key.bias"), &[h])?);
            bias.extend(read(st, &format!("{sa}.value.bias"), &[h])?);
            layers.push(Layer {
                qkv: Dense {
                    w: transpose(&fused, 3 * h, h),
                    b: bias,
                    n_in: h,
                    n_out: 3 * h,
                },
                attn_out: dense(st, &format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: norm(st, &format!("{p}.attention.output.LayerNorm"), h)?,
                ffn_in: dense(
                    st,
                    &format!("{p}.intermediate.dense"),
                    h,
                    cfg.intermediate_size,
                )?,
                ffn_out: dense(st, &format!("{p}.output.dense"), cfg.intermediate_size, h)?,
                ffn_norm: norm(st, &format!("{p}.output.LayerNorm"), h)?,
            });
        }
        let type_emb = read(
            st,
            "embeddings.token_type_embeddings.weight",
            &[cfg.type_vocab_size, h],
        )?;
        Ok(Self {
            word: read(
                st,
                "embeddings.word_embeddings.weight",
                &[cfg.vocab_size, h],
            )?,
            position: read(
                st,
                "embeddings.position_embeddings.weight",
                &[cfg.max_position_embeddings, h],
            )?,
            type0: type_emb[..h].to_vec(),
            emb_norm: norm(st, "embeddings.LayerNorm", h)?,
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
    pub fn embed(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, String> {
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
            linear(&x, total, &layer.qkv, &mut qkv);
            self.attention(&qkv, seqs, &offsets, &mut ctx);
            linear(&ctx, total, &layer.attn_out, &mut tmp);
            add_norm(&mut x, &tmp, &layer.attn_norm, h, self.eps);
            linear(&x, total, &layer.ffn_in, &mut ffn);
            ffn.par_chunks_mut(4096)
                .for_each(|c| c.iter_mut().for_each(|v| *v = gelu(*v)));
            linear(&ffn, total, &layer.ffn_out, &mut tmp);
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
        let heads = self.heads;
        let d = h / heads;
        let stride = 3 * h;
        let out = SharedMut(ctx.as_mut_ptr());
        let jobs: Vec<(usize, usize)> = (0..seqs.len())
            .flat_map(|s| (0..heads).map(move |hd| (s, hd)))
            .collect();
        jobs.par_iter()
            .for_each_init(Vec::new, |scores: &mut Vec<f32>, &(s, hd)| {
                let len = seqs[s].len();
                let base = offsets[s] * stride;
                scores.clear();
                scores.resize(len * len, 0.0);
                let q = &qkv[base + hd * d..];
                let k = &qkv[base + h + hd * d..];
                let v = &qkv[base + 2 * h + hd * d..];
                // SAFETY: all pointers stay inside `qkv`/`scores`/`ctx` for the given sizes and strides;
                // each job writes only rows offsets[s]..offsets[s]+len, columns hd*d..(hd+1)*d of ctx,
                // which no other job touches.
                unsafe {
                    gemm::gemm(
                        len,
                        len,
                        d,
                        scores.as_mut_ptr(),
                        1,
                        len as isize,
                        false,
                        q.as_ptr(),
                        1,
                        stride as isize,
                        k.as_ptr(),
                        stride as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                for row in scores.chunks_exact_mut(len) {
                    softmax_in_place(row);
                }
                let dst = out;
                unsafe {
                    gemm::gemm(
                        len,
                        d,
                        len,
                        dst.0.add(offsets[s] * h + hd * d),
                        1,
                        h as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        len as isize,
                        v.as_ptr(),
                        1,
                        stride as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            });
    }
}

/// `out (rows, n_out) = x (rows, n_in) · W + b`, the bias pre-filled so gemm accumulates onto it.
fn linear(x: &[f32], rows: usize, layer: &Dense, out: &mut [f32]) {
    let (k, n) = (layer.n_in, layer.n_out);
    out[..rows * n]
        .par_chunks_mut(n)
        .for_each(|row| row.copy_from_slice(&layer.b));
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
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
    for ((v, g), b) in row.iter_mut().zip(&norm.gamma).zip(&norm.beta) {
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

/// GELU with the exact erf, as BERT's `gelu`.
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + candle_core::cpu::erf::erf_f32(x * std::f32::consts::FRAC_1_SQRT_2))
}

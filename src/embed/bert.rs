//! A BERT encoder forward pass tuned for sentence embedding on CPU.
//!
//! Differs from candle-transformers' `bert.rs` in ways that matter for speed, not results:
//! Q, K and V are one fused projection (one matmul instead of three), the attention scale is
//! folded into the query weights at load time, weights are pre-transposed once so every
//! projection is a plain row-major matmul, softmax uses candle's fused last-dimension kernel, and
//! a batch of one (the agent's query) skips the attention mask entirely. Pooling lives outside.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::VarBuilder;
use serde::Deserialize;

/// The fields of the Hugging Face `config.json` this encoder reads.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size (384 for MiniLM-L6).
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Feed-forward inner size.
    pub intermediate_size: usize,
    /// Activation; only `gelu` (erf) is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Positions the model knows.
    pub max_position_embeddings: usize,
    /// Token type vocabulary size.
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

/// A linear layer with a pre-transposed `(in, out)` weight.
struct Linear {
    weight_t: Tensor,
    bias: Tensor,
}

impl Linear {
    fn from_parts(weight: Tensor, bias: Tensor) -> candle_core::Result<Self> {
        Ok(Self {
            weight_t: weight.t()?.contiguous()?,
            bias,
        })
    }

    fn load(vb: VarBuilder, in_dim: usize, out_dim: usize) -> candle_core::Result<Self> {
        let w = vb.get((out_dim, in_dim), "weight")?;
        let b = vb.get(out_dim, "bias")?;
        Self::from_parts(w, b)
    }

    /// `x`: `(rows, in)` → `(rows, out)`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight_t)?.broadcast_add(&self.bias)
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    fn load(vb: VarBuilder, dim: usize, eps: f64) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

struct Layer {
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    ffn_in: Linear,
    ffn_out: Linear,
    ffn_norm: LayerNorm,
}

impl Layer {
    fn load(vb: VarBuilder, cfg: &BertConfig) -> candle_core::Result<Self> {
        let h = cfg.hidden_size;
        let head_dim = h / cfg.num_attention_heads;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let sa = vb.pp("attention").pp("self");
        let q_w = (sa.get((h, h), "query.weight")? * scale)?;
        let q_b = (sa.get(h, "query.bias")? * scale)?;
        let k_w = sa.get((h, h), "key.weight")?;
        let k_b = sa.get(h, "key.bias")?;
        let v_w = sa.get((h, h), "value.weight")?;
        let v_b = sa.get(h, "value.bias")?;
        let qkv = Linear::from_parts(
            Tensor::cat(&[&q_w, &k_w, &v_w], 0)?,
            Tensor::cat(&[&q_b, &k_b, &v_b], 0)?,
        )?;
        let ao = vb.pp("attention").pp("output");
        Ok(Self {
            qkv,
            attn_out: Linear::load(ao.pp("dense"), h, h)?,
            attn_norm: LayerNorm::load(ao.pp("LayerNorm"), h, cfg.layer_norm_eps)?,
            ffn_in: Linear::load(vb.pp("intermediate").pp("dense"), h, cfg.intermediate_size)?,
            ffn_out: Linear::load(vb.pp("output").pp("dense"), cfg.intermediate_size, h)?,
            ffn_norm: LayerNorm::load(vb.pp("output").pp("LayerNorm"), h, cfg.layer_norm_eps)?,
        })
    }

    /// `x`: `(batch * seq, hidden)`; `mask_bias`: `(batch, 1, 1, seq)` additive, or `None`.
    fn forward(
        &self,
        x: &Tensor,
        batch: usize,
        seq: usize,
        heads: usize,
        mask_bias: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let hidden = x.dim(1)?;
        let head_dim = hidden / heads;
        let qkv = self.qkv.forward(x)?; // (b*s, 3h)
        let qkv = qkv
            .reshape((batch, seq, 3, heads, head_dim))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?; // (3, b, heads, s, d)
        let q = qkv.get(0)?;
        let k = qkv.get(1)?;
        let v = qkv.get(2)?;
        let scores = q.matmul(&k.t()?)?; // (b, heads, s, s), already scaled
        let scores = match mask_bias {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs
            .matmul(&v)? // (b, heads, s, d)
            .transpose(1, 2)?
            .contiguous()?
            .reshape((batch * seq, hidden))?;
        let attn = self.attn_out.forward(&ctx)?;
        let x = self.attn_norm.forward(&(attn + x)?)?;
        let inner = self.ffn_in.forward(&x)?.gelu_erf()?;
        let out = self.ffn_out.forward(&inner)?;
        self.ffn_norm.forward(&(out + x)?)
    }
}

/// The BERT encoder (embeddings + layers), without the pooler.
pub struct BertEncoder {
    word: candle_nn::Embedding,
    position: Tensor,
    token_type0: Tensor,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
    max_positions: usize,
    device: Device,
}

impl BertEncoder {
    /// Builds the encoder from a `VarBuilder` over the model's safetensors.
    pub fn load(vb: VarBuilder, cfg: &BertConfig) -> candle_core::Result<Self> {
        if cfg.hidden_act != "gelu" {
            candle_core::bail!("unsupported activation {:?} (only gelu)", cfg.hidden_act);
        }
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            candle_core::bail!("hidden size is not a multiple of the number of heads");
        }
        let h = cfg.hidden_size;
        let emb = vb.pp("embeddings");
        let word =
            candle_nn::Embedding::new(emb.get((cfg.vocab_size, h), "word_embeddings.weight")?, h);
        let position = emb.get(
            (cfg.max_position_embeddings, h),
            "position_embeddings.weight",
        )?;
        let token_type0 = emb
            .get((cfg.type_vocab_size, h), "token_type_embeddings.weight")?
            .get(0)?;
        let emb_norm = LayerNorm::load(emb.pp("LayerNorm"), h, cfg.layer_norm_eps)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(vb.pp(format!("encoder.layer.{i}")), cfg))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            word,
            position,
            token_type0,
            emb_norm,
            layers,
            heads: cfg.num_attention_heads,
            hidden: h,
            max_positions: cfg.max_position_embeddings,
            device: vb.device().clone(),
        })
    }

    /// Hidden size.
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// Most positions one sequence may have.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs the encoder over a right-padded batch.
    ///
    /// `ids`: `batch * seq` token ids, row-major; `lens`: the real length of each row (padding
    /// follows it). Returns the final hidden states `(batch, seq, hidden)`.
    pub fn forward(&self, ids: &[u32], lens: &[usize], seq: usize) -> candle_core::Result<Tensor> {
        let batch = lens.len();
        if ids.len() != batch * seq {
            candle_core::bail!("ids length {} != batch {batch} x seq {seq}", ids.len());
        }
        if seq > self.max_positions {
            candle_core::bail!(
                "sequence of {seq} tokens exceeds {} positions",
                self.max_positions
            );
        }
        let ids_t = Tensor::from_slice(ids, batch * seq, &self.device)?;
        let words = self
            .word
            .forward(&ids_t)?
            .reshape((batch, seq, self.hidden))?;
        let pos = self.position.narrow(0, 0, seq)?;
        let x = words
            .broadcast_add(&pos)?
            .broadcast_add(&self.token_type0)?
            .reshape((batch * seq, self.hidden))?;
        let mut x = self.emb_norm.forward(&x)?;

        let needs_mask = lens.iter().any(|&l| l < seq);
        let mask_bias = if needs_mask {
            let mut bias = vec![0f32; batch * seq];
            for (row, &len) in lens.iter().enumerate() {
                for v in &mut bias[row * seq + len..(row + 1) * seq] {
                    *v = f32::NEG_INFINITY;
                }
            }
            // -inf on padded keys; every row keeps at least its [CLS], so softmax stays finite.
            Some(Tensor::from_vec(bias, (batch, 1, 1, seq), &self.device)?.to_dtype(DType::F32)?)
        } else {
            None
        };
        for layer in &self.layers {
            x = layer.forward(&x, batch, seq, self.heads, mask_bias.as_ref())?;
        }
        x.reshape((batch, seq, self.hidden))
    }
}

/// Masked mean pooling over `(batch, seq, hidden)` followed by L2 normalisation.
pub fn mean_pool_normalize(hidden: &Tensor, lens: &[usize]) -> candle_core::Result<Vec<Vec<f32>>> {
    let (batch, seq, dim) = hidden.dims3()?;
    let mut mask = vec![0f32; batch * seq];
    for (row, &len) in lens.iter().enumerate() {
        for v in &mut mask[row * seq..row * seq + len.min(seq)] {
            *v = 1.0;
        }
    }
    let mask = Tensor::from_vec(mask, (batch, seq, 1), hidden.device())?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (batch, dim)
    let counts: Vec<f32> = lens.iter().map(|&l| l.max(1) as f32).collect();
    let counts = Tensor::from_vec(counts, (batch, 1), hidden.device())?;
    let mean = summed.broadcast_div(&counts)?;
    let norm = mean
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f32::MAX)?;
    let unit = mean.broadcast_div(&norm)?;
    let rows = unit.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    debug_assert!(rows.iter().all(|r| r.len() == dim));
    Ok(rows)
}

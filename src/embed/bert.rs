//! The model's `config.json` fields ([`BertConfig`], read by the CPU encoder too) and the
//! candle tensor path GPUs take: candle-transformers' `BertModel` ([`CandleEncoder`]) followed
//! by memex's masked mean pooling and L2 normalisation ([`mean_pool_normalize`]).
//!
//! The CPU default is `cpu.rs`, memex's own forward pass (its measured reason is in
//! ARCHITECTURE.md); this path runs on the CPU too with `candle_forward`, which is how CI checks
//! it against sentence-transformers without a GPU.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as CandleConfig};
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
    /// Activation. The pinned `config.json` says `gelu` (the erf form), which both forward
    /// passes compute; another model's config is refused earlier by its sha256.
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

/// candle-transformers' BERT encoder over the model's weights (the pooler is not loaded).
pub struct CandleEncoder {
    model: BertModel,
    hidden: usize,
    max_positions: usize,
}

impl CandleEncoder {
    /// Builds the encoder from a `VarBuilder` over the model's safetensors and the text of
    /// `config.json` (candle-transformers reads its own fields from it).
    pub fn load(vb: VarBuilder, config_json: &str) -> candle_core::Result<Self> {
        let cfg: CandleConfig = serde_json::from_str(config_json)
            .map_err(|e| candle_core::Error::Msg(format!("not a BERT config: {e}")))?;
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            candle_core::bail!("hidden size is not a multiple of the number of heads");
        }
        Ok(Self {
            model: BertModel::load(vb, &cfg)?,
            hidden: cfg.hidden_size,
            max_positions: cfg.max_position_embeddings,
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
        &self.model.device
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
        let device = self.device();
        let ids_t = Tensor::from_slice(ids, (batch, seq), device)?;
        let types = Tensor::zeros((batch, seq), DType::U32, device)?;
        let mask = if lens.iter().any(|&l| l < seq) {
            let mut m = vec![0u32; batch * seq];
            for (row, &len) in lens.iter().enumerate() {
                for v in &mut m[row * seq..row * seq + len.min(seq)] {
                    *v = 1;
                }
            }
            Some(Tensor::from_vec(m, (batch, seq), device)?)
        } else {
            None
        };
        self.model.forward(&ids_t, &types, mask.as_ref())
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

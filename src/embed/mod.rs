//! Sentence embeddings: all-MiniLM-L6-v2 in-process with candle.
//!
//! The seam is [`Embedder`]; the real implementation is [`MiniLmEmbedder`]. Model files are put
//! on disk by [`fetch::fetch_model`].

mod attention;
mod batching;
mod bert;
mod cpu;
mod dense;
mod error;
mod f32buf;
pub mod fetch;
mod maddubs;
mod mathf;
mod minilm;
mod outptr;
mod panels;
mod precision;
mod quant;
pub mod queue;
mod rowdot;
mod vnni;

pub use batching::{plan_batches, Batch};
pub use bert::{BertConfig, CandleEncoder};
pub use error::EmbedError;
pub use minilm::{
    DeviceChoice, EmbeddedText, EmbedderOptions, MiniLmEmbedder, DEFAULT_MAX_TOKENS, MINILM_DIM,
};
pub use precision::{cpu_has_avx2_fma_f16c, cpu_has_avx512_vnni, Kernel, KernelChoice, Precision};

/// Something that turns texts into unit-length vectors of a fixed dimension.
///
/// Implementations must be deterministic (same input, same bytes) and return vectors in the
/// order of the input texts.
pub trait Embedder: Send + Sync {
    /// Dimension of every vector this embedder returns (384 for all-MiniLM-L6-v2).
    fn dim(&self) -> usize;

    /// Embeds `texts`, returning one L2-normalised vector per text, in input order.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError>;

    /// Number of model tokens of `text`, `[CLS]` and `[SEP]` included, before truncation.
    fn count_tokens(&self, text: &str) -> Result<usize, EmbedError>;

    /// Longest input in tokens (`[CLS]`/`[SEP]` included); longer texts are truncated.
    fn max_tokens(&self) -> usize;

    /// The weight precision that produced the vectors. The knowledge base records it and refuses
    /// to mix vectors of different precisions in one index.
    fn precision(&self) -> Precision {
        Precision::F32
    }

    /// Embeds a single text.
    fn embed_one(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        let mut v = self.embed(&[text])?;
        v.pop()
            .ok_or_else(|| EmbedError::Inference("the model returned no vector".into()))
    }
}

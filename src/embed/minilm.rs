//! [`MiniLmEmbedder`]: tokenizer + forward pass (memex's CPU encoder, or candle-transformers'
//! BERT on GPUs) + mean pooling + L2 normalisation.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use rayon::prelude::*;
use tokenizers::Tokenizer;

use super::batching::plan_batches;
use super::bert::{mean_pool_normalize, BertConfig, CandleEncoder};
use super::cpu::CpuEncoder;
use super::fetch;
use super::precision::{Kernel, KernelChoice, Precision};
use super::{EmbedError, Embedder};

/// Output dimension of all-MiniLM-L6-v2.
pub const MINILM_DIM: usize = 384;
/// Longest input in tokens, as sentence-transformers' `max_seq_length` for this model.
pub const DEFAULT_MAX_TOKENS: usize = 256;
const CLS_ID: u32 = 101;
const SEP_ID: u32 = 102;
const PAD_ID: u32 = 0;
/// Most tokens in one CPU forward pass (see `embed_detailed_inner`).
const CPU_PASS_TOKENS: usize = 768;

/// Where the forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The CPU (default).
    #[default]
    Cpu,
    /// The first CUDA GPU (needs the `cuda` cargo feature).
    Cuda,
    /// The Metal GPU (needs the `metal` cargo feature).
    Metal,
    /// CUDA if available, else Metal, else the CPU.
    Auto,
}

impl std::str::FromStr for DeviceChoice {
    type Err = EmbedError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda),
            "metal" => Ok(Self::Metal),
            "auto" => Ok(Self::Auto),
            other => Err(EmbedError::Device(format!(
                "{other:?} is unknown: use cpu, cuda, metal or auto"
            ))),
        }
    }
}

impl DeviceChoice {
    fn open(self) -> Result<Device, EmbedError> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda => {
                if !cfg!(feature = "cuda") {
                    return Err(EmbedError::Device(
                        "cuda is not compiled in: rebuild with `--features cuda`".into(),
                    ));
                }
                Device::new_cuda(0)
                    .map_err(|e| EmbedError::Device(format!("cuda unavailable: {e}")))
            }
            Self::Metal => {
                if !cfg!(feature = "metal") {
                    return Err(EmbedError::Device(
                        "metal is not compiled in: rebuild with `--features metal`".into(),
                    ));
                }
                Device::new_metal(0)
                    .map_err(|e| EmbedError::Device(format!("metal unavailable: {e}")))
            }
            Self::Auto => Ok(Self::Cuda
                .open()
                .or_else(|_| Self::Metal.open())
                .unwrap_or(Device::Cpu)),
        }
    }
}

/// Settings of [`MiniLmEmbedder`].
#[derive(Debug, Clone)]
pub struct EmbedderOptions {
    /// Compute device.
    pub device: DeviceChoice,
    /// CPU threads for the forward pass; `None` uses all cores.
    pub threads: Option<usize>,
    /// Truncation length in tokens, `[CLS]` and `[SEP]` included.
    pub max_tokens: usize,
    /// Most texts in one batch.
    pub max_batch: usize,
    /// Most padded tokens in one batch (count × longest).
    pub max_batch_tokens: usize,
    /// Run candle's tensor forward pass even on the CPU. It is the path GPUs take; on a CPU it is
    /// slower than the default kernels and exists to check that path against the reference.
    pub candle_forward: bool,
    /// Weight precision of the CPU encoder (`f16` by default; the candle path is always `f32`).
    pub precision: Precision,
    /// Which CPU kernels may run (`Auto`: AVX2+FMA+F16C when the CPU has them).
    pub kernel: KernelChoice,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        Self {
            device: DeviceChoice::Cpu,
            threads: None,
            max_tokens: DEFAULT_MAX_TOKENS,
            max_batch: 32,
            max_batch_tokens: 32 * 128,
            candle_forward: false,
            precision: Precision::default(),
            kernel: KernelChoice::default(),
        }
    }
}

/// One embedded text.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddedText {
    /// The unit-length vector.
    pub vector: Vec<f32>,
    /// Token count before truncation, `[CLS]` and `[SEP]` included.
    pub n_tokens: usize,
}

/// all-MiniLM-L6-v2 computed in-process: the same vectors as sentence-transformers.
///
/// Texts are tokenised with truncation at `max_tokens` (256) and no fixed padding (the shipped
/// `tokenizer.json` says 128 for both; that is overridden), sorted by length and batched so that
/// padding stays small, run through the encoder, mean-pooled over real tokens and L2-normalised.
/// The empty string and whitespace-only strings tokenise to `[CLS] [SEP]` and get that sequence's
/// embedding, exactly as sentence-transformers gives them.
pub struct MiniLmEmbedder {
    tokenizer: Tokenizer,
    encoder: Backend,
    opts: EmbedderOptions,
    pool: Option<rayon::ThreadPool>,
    model_dir: PathBuf,
}

impl std::fmt::Debug for MiniLmEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLmEmbedder")
            .field("model_dir", &self.model_dir)
            .field("opts", &self.opts)
            .finish()
    }
}

/// The forward pass in use: hand-tuned kernels on CPU, candle tensors on GPUs.
enum Backend {
    Cpu(CpuEncoder),
    Candle(CandleEncoder),
}

impl Backend {
    fn hidden_size(&self) -> usize {
        match self {
            Backend::Cpu(e) => e.hidden_size(),
            Backend::Candle(e) => e.hidden_size(),
        }
    }
}

/// Refuses `bytes` (the content of `path`) unless they hash to the pinned `want`.
fn pinned(path: &Path, bytes: &[u8], want: &str) -> Result<(), EmbedError> {
    let got = fetch::sha256_bytes(bytes);
    if got == want {
        return Ok(());
    }
    Err(EmbedError::BadFile {
        path: path.to_path_buf(),
        reason: format!(
            "sha256 {got} is not the pinned {want} of {}; the file was changed or belongs to \
             another model: run `memex model fetch` into an empty directory",
            fetch::HF_REPO
        ),
    })
}

fn required(dir: &Path, name: &str) -> Result<PathBuf, EmbedError> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(EmbedError::MissingFile { path })
    }
}

impl MiniLmEmbedder {
    /// Loads the model from `model_dir` (config.json, tokenizer.json, model.safetensors).
    ///
    /// The weights are memory-mapped. A missing, truncated or mismatching file is an
    /// [`EmbedError`] naming the file, never a panic.
    pub fn load(model_dir: &Path, opts: EmbedderOptions) -> Result<Self, EmbedError> {
        let config_path = required(model_dir, "config.json")?;
        let tokenizer_path = required(model_dir, "tokenizer.json")?;
        let weights_path = required(model_dir, "model.safetensors")?;

        let bad = |path: &Path, reason: String| EmbedError::BadFile {
            path: path.to_path_buf(),
            reason,
        };
        let config_text =
            std::fs::read_to_string(&config_path).map_err(|e| bad(&config_path, e.to_string()))?;
        let config: BertConfig = serde_json::from_str(&config_text)
            .map_err(|e| bad(&config_path, format!("not a BERT config: {e}")))?;
        if opts.max_tokens < 2 || opts.max_tokens > config.max_position_embeddings {
            return Err(EmbedError::Inference(format!(
                "max_tokens must be between 2 and {}",
                config.max_position_embeddings
            )));
        }

        // The two small files are hashed on every load (about a millisecond): a tampered
        // tokenizer would change every vector silently. The weights are hashed by `memex model
        // fetch|verify` (hashing 90 MB on every start would cost more than the cold start).
        pinned(&config_path, config_text.as_bytes(), fetch::CONFIG_SHA256)?;
        let tokenizer_bytes =
            std::fs::read(&tokenizer_path).map_err(|e| bad(&tokenizer_path, e.to_string()))?;
        pinned(&tokenizer_path, &tokenizer_bytes, fetch::TOKENIZER_SHA256)?;
        let mut tokenizer = Tokenizer::from_bytes(&tokenizer_bytes)
            .map_err(|e| bad(&tokenizer_path, format!("not a tokenizer: {e}")))?;
        // Truncation is done by hand (to report the untruncated length); padding per batch.
        tokenizer
            .with_truncation(None)
            .map_err(|e| bad(&tokenizer_path, e.to_string()))?;
        tokenizer.with_padding(None);

        let device = opts.device.open()?;
        let unreadable = |e: candle_core::Error| {
            bad(
                &weights_path,
                format!("not a readable safetensors file: {e}"),
            )
        };
        let mismatch = |e: String| {
            bad(
                &weights_path,
                format!("weights do not match config.json: {e}"),
            )
        };
        let encoder = if device.is_cpu() && !opts.candle_forward {
            Backend::Cpu(
                CpuEncoder::load(
                    &weights_path,
                    &config,
                    opts.precision,
                    Kernel::resolve(opts.kernel),
                )
                .map_err(|e| bad(&weights_path, e))?,
            )
        } else {
            // SAFETY: the file is mapped read-only; memex never writes to it while mapped, and
            // `memex model fetch` replaces model files by atomic rename, not in place.
            let vb = unsafe {
                VarBuilder::from_mmaped_safetensors(&[&weights_path], DType::F32, &device)
            }
            .map_err(unreadable)?;
            Backend::Candle(
                CandleEncoder::load(vb, &config_text).map_err(|e| mismatch(e.to_string()))?,
            )
        };

        let pool = match opts.threads {
            Some(n) if n > 0 => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .map_err(|e| EmbedError::Inference(format!("cannot start {n} threads: {e}")))?,
            ),
            _ => None,
        };
        Ok(Self {
            tokenizer,
            encoder,
            opts,
            pool,
            model_dir: model_dir.to_path_buf(),
        })
    }

    /// The options in force.
    pub fn options(&self) -> &EmbedderOptions {
        &self.opts
    }

    /// The kernels the forward pass runs: `None` on the candle (GPU) path.
    pub fn kernel(&self) -> Option<Kernel> {
        match &self.encoder {
            Backend::Cpu(e) => Some(e.kernel()),
            Backend::Candle(_) => None,
        }
    }

    /// Bytes of projection weights one CPU forward pass streams (`None` on the candle path).
    pub fn weight_bytes_per_pass(&self) -> Option<usize> {
        match &self.encoder {
            Backend::Cpu(e) => Some(e.weight_bytes_per_pass()),
            Backend::Candle(_) => None,
        }
    }

    /// Threads the forward pass may use.
    pub fn threads(&self) -> usize {
        match &self.pool {
            Some(pool) => pool.current_num_threads(),
            None => rayon::current_num_threads(),
        }
    }

    /// Tokenises `texts` into `[CLS] … [SEP]` id sequences truncated to `max_tokens`, returning
    /// each sequence with its untruncated length.
    fn tokenize(&self, texts: &[&str]) -> Result<Vec<(Vec<u32>, usize)>, EmbedError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        let max = self.opts.max_tokens;
        Ok(encodings
            .into_iter()
            .map(|enc| {
                let mut ids = enc.get_ids().to_vec();
                let n = ids.len();
                if ids.len() < 2 {
                    ids = vec![CLS_ID, SEP_ID];
                }
                if ids.len() > max {
                    ids.truncate(max - 1);
                    ids.push(SEP_ID);
                }
                (ids, n.max(2))
            })
            .collect())
    }

    /// Embeds `texts` and reports each one's token count, in input order.
    pub fn embed_detailed(&self, texts: &[&str]) -> Result<Vec<EmbeddedText>, EmbedError> {
        match &self.pool {
            Some(pool) => pool.install(|| self.embed_detailed_inner(texts)),
            None => self.embed_detailed_inner(texts),
        }
    }

    fn embed_detailed_inner(&self, texts: &[&str]) -> Result<Vec<EmbeddedText>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let tokens = self.tokenize(texts)?;
        let lengths: Vec<usize> = tokens.iter().map(|(ids, _)| ids.len()).collect();
        let mut out: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        // On CPU a forward pass is also capped at CPU_PASS_TOKENS real tokens, whatever the batch
        // size: the activations of a bigger pass fall out of cache and every elementwise pass
        // then streams from memory (measured: 4,450 tokens/s at 256–768 tokens per pass against
        // 2,430 at 4,096 on the 2-core benchmark machine).
        let budget = match self.encoder {
            Backend::Cpu(_) => self.opts.max_batch_tokens.min(CPU_PASS_TOKENS),
            Backend::Candle(_) => self.opts.max_batch_tokens,
        };
        let batches = plan_batches(&lengths, self.opts.max_batch, budget);
        let results: Vec<Result<Vec<Vec<f32>>, EmbedError>> = match &self.encoder {
            Backend::Cpu(enc) => {
                let run = |batch: &super::Batch, parallel_gemm: bool| {
                    let seqs: Vec<&[u32]> = batch
                        .members
                        .iter()
                        .map(|&m| tokens[m].0.as_slice())
                        .collect();
                    enc.embed(&seqs, parallel_gemm)
                        .map_err(EmbedError::Inference)
                };
                if batches.len() >= 2 && rayon::current_num_threads() > 1 {
                    // Whole batches side by side, one thread each: no synchronisation inside.
                    batches.par_iter().map(|b| run(b, false)).collect()
                } else {
                    batches.iter().map(|b| run(b, true)).collect()
                }
            }
            Backend::Candle(enc) => batches
                .iter()
                .map(|b| candle_batch(enc, &tokens, b))
                .collect(),
        };
        for (batch, vectors) in batches.iter().zip(results) {
            for (&m, v) in batch.members.iter().zip(vectors?) {
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(EmbedError::Inference(format!(
                        "the model produced non-finite values; are the weights in {} corrupt?",
                        self.model_dir.display()
                    )));
                }
                out[m] = Some(v);
            }
        }
        out.into_iter()
            .zip(tokens)
            .map(|(v, (_, n_tokens))| {
                v.map(|vector| EmbeddedText { vector, n_tokens })
                    .ok_or_else(|| {
                        EmbedError::Inference("a text was left out of every batch".into())
                    })
            })
            .collect()
    }
}

/// One right-padded batch through the candle encoder (the GPU path).
fn candle_batch(
    encoder: &CandleEncoder,
    tokens: &[(Vec<u32>, usize)],
    batch: &super::Batch,
) -> Result<Vec<Vec<f32>>, EmbedError> {
    let seq = batch.padded_len;
    let mut ids = Vec::with_capacity(batch.members.len() * seq);
    let mut lens = Vec::with_capacity(batch.members.len());
    for &m in &batch.members {
        let row = &tokens[m].0;
        ids.extend_from_slice(row);
        ids.extend(std::iter::repeat_n(PAD_ID, seq - row.len()));
        lens.push(row.len());
    }
    let hidden = encoder
        .forward(&ids, &lens, seq)
        .map_err(|e| EmbedError::Inference(e.to_string()))?;
    mean_pool_normalize(&hidden, &lens).map_err(|e| EmbedError::Inference(e.to_string()))
}

impl Embedder for MiniLmEmbedder {
    fn dim(&self) -> usize {
        self.encoder.hidden_size()
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(self
            .embed_detailed(texts)?
            .into_iter()
            .map(|e| e.vector)
            .collect())
    }

    fn count_tokens(&self, text: &str) -> Result<usize, EmbedError> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().len().max(2))
    }

    fn max_tokens(&self) -> usize {
        self.opts.max_tokens
    }

    fn precision(&self) -> Precision {
        match &self.encoder {
            Backend::Cpu(e) => e.precision(),
            Backend::Candle(_) => Precision::F32,
        }
    }
}

use std::path::PathBuf;

/// Errors from loading the model or computing embeddings.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// A model file is missing.
    #[error("model file {path} is missing; run `memex model fetch` (or point --model-dir / MEMEX_MODEL_DIR at a directory holding config.json, tokenizer.json and model.safetensors)")]
    MissingFile {
        /// The file that was looked for.
        path: PathBuf,
    },
    /// A model file exists but cannot be used.
    #[error("model file {path} is unusable: {reason}")]
    BadFile {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The requested device is not available in this build or on this machine.
    #[error("device {0}")]
    Device(String),
    /// Tokenisation failed.
    #[error("tokenizer failed: {0}")]
    Tokenizer(String),
    /// The forward pass failed.
    #[error("embedding failed: {0}")]
    Inference(String),
}

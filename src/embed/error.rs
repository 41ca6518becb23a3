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
    /// An embedder option has a value memex does not know.
    #[error("{0}")]
    Option(String),
    /// Tokenisation failed.
    #[error("tokenizer failed: {0}")]
    Tokenizer(String),
    /// The forward pass failed.
    #[error("embedding failed: {0}")]
    Inference(String),
    /// The shared embedding queue of a server is full: nothing was embedded; retry shortly.
    #[error("the embedding queue is full ({waiting} requests waiting); retry shortly")]
    Overloaded {
        /// Requests already waiting.
        waiting: usize,
    },
}

impl EmbedError {
    /// Whether `e` or any error in its source chain is an [`EmbedError::Overloaded`]: a caller
    /// several layers up (a KB search, an agent turn) can answer "busy, retry" instead of a
    /// failure.
    pub fn is_overloaded_in(e: &(dyn std::error::Error + 'static)) -> bool {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            if matches!(
                err.downcast_ref::<EmbedError>(),
                Some(EmbedError::Overloaded { .. })
            ) {
                return true;
            }
            cur = err.source();
        }
        false
    }
}

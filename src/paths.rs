//! Where memex keeps its files: the data directory and the model directory.

use std::path::{Path, PathBuf};

/// Name of the model directory under `models/`.
pub const MODEL_NAME: &str = "all-MiniLM-L6-v2";

/// The default data directory: `$MEMEX_DATA_DIR` is handled by the CLI; this is the fallback, `./.memex`.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from(".memex")
}

/// The default model directory.
///
/// `./models/all-MiniLM-L6-v2` when it exists in the current directory, else the copy beside the
/// crate's own sources (where `memex model fetch` puts it when run from the repository).
pub fn default_model_dir() -> PathBuf {
    let local = Path::new("models").join(MODEL_NAME);
    if local.join("config.json").exists() {
        return local;
    }
    let beside_crate = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(MODEL_NAME);
    if beside_crate.exists() {
        return beside_crate;
    }
    local
}

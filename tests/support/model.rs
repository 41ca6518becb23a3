//! Locating the real model for tests. The model must be fetched (`memex model fetch`, which
//! `.ci/run` does); a missing model fails the test with a clear message, it never skips it.
#![allow(dead_code)]

use std::path::PathBuf;

/// The model directory tests use: `MEMEX_MODEL_DIR` when set, else the crate's `models/` copy.
pub fn model_dir() -> PathBuf {
    let dir = std::env::var_os("MEMEX_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2")
        });
    assert!(
        dir.join("model.safetensors").is_file(),
        "the model is not in {}: run `cargo run --release -- model fetch` first",
        dir.display()
    );
    dir
}

/// Loads the real embedder with default options.
pub fn embedder() -> memex::embed::MiniLmEmbedder {
    memex::embed::MiniLmEmbedder::load(&model_dir(), memex::embed::EmbedderOptions::default())
        .expect("the real model loads")
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

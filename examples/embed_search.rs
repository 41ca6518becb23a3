//! Embed a few texts with the in-process MiniLM model and search them with an HNSW index.
//!
//! ```sh
//! memex model fetch                      # once: puts the model in models/all-MiniLM-L6-v2
//! cargo run --release --example embed_search -- "how long does a refund take?"
//! ```
//!
//! The model directory is `$MEMEX_MODEL_DIR` when set (the variable the CLI reads), else the
//! CLI's default ([`memex::paths::default_model_dir`]).

use std::path::PathBuf;

use memex::embed::{Embedder, EmbedderOptions, MiniLmEmbedder};
use memex::index::{HnswIndex, HnswParams, VectorIndex};

fn main() -> anyhow::Result<()> {
    // 1. Load the embedder: all-MiniLM-L6-v2, run on the CPU inside this process.
    let model_dir = std::env::var_os("MEMEX_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(memex::paths::default_model_dir);
    let embedder = MiniLmEmbedder::load(&model_dir, EmbedderOptions::default())?;
    println!(
        "model: {} ({} dimensions)",
        model_dir.display(),
        embedder.dim()
    );

    // 2. Embed the documents: one unit-length vector per text, in input order.
    let docs = [
        "Refunds reach the customer's card in 5 to 7 working days.",
        "Settlements are paid out to your bank account every working day (T+2).",
        "A chargeback is a dispute raised by the cardholder with their bank.",
        "Rotate your API keys from the dashboard under Settings > API keys.",
        "UPI payments can fail when the customer's bank is down.",
    ];
    let vectors = embedder.embed(&docs)?;

    // 3. Build an HNSW index over them. Ids are yours to choose; here, the position in `docs`.
    //    (`HnswIndex::new` + `add` works too, and `FlatIndex` is the exact alternative.)
    let ids: Vec<u64> = (0..docs.len() as u64).collect();
    let flat: Vec<f32> = vectors.concat();
    let index = HnswIndex::build(embedder.dim(), HnswParams::default(), ids, flat)?;

    // 4. Search: embed the query the same way, ask for the 3 nearest. Scores are cosine
    //    similarities (dot products of unit vectors): higher is closer.
    let query = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "when will my customer get the money back?".to_string());
    let q = embedder.embed_one(&query)?;
    println!("query: {query}");
    for (rank, (id, score)) in index.search(&q, 3)?.into_iter().enumerate() {
        println!("  {}. {score:.3}  {}", rank + 1, docs[id as usize]);
    }
    Ok(())
}

//! Episodic memory: remember past conversations per merchant and recall the relevant ones.
//!
//! ```sh
//! cargo run --release --example episodes
//! ```
//!
//! Episodes are stored in SQLite (`episodes.db` in a temporary directory here; Redis is the
//! other backend, same trait). Every call is scoped to one merchant in the storage query
//! itself, so one merchant never sees another's episodes. With the model fetched
//! (`memex model fetch`, or `$MEMEX_MODEL_DIR`), summaries and the query are embedded and the
//! search is hybrid (cosine + BM25); without it the search runs on keywords only.

use std::path::PathBuf;

use memex::embed::{Embedder, EmbedderOptions, MiniLmEmbedder};
use memex::episodic::{EpisodeDraft, SearchQuery};
use memex::merchant::MerchantId;
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The embedder is optional for episodes: the store keeps vectors, it does not compute them.
    let model_dir = std::env::var_os("MEMEX_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(memex::paths::default_model_dir);
    // Without the weights (`memex model fetch` not run yet) search is keyword-only; a model
    // that is there but fails to load (corrupt, tampered) is an error, never silently skipped.
    let embedder = if model_dir.join("model.safetensors").is_file() {
        Some(MiniLmEmbedder::load(
            &model_dir,
            EmbedderOptions::default(),
        )?)
    } else {
        println!(
            "(no model in {}: keyword search only; run `memex model fetch`)",
            model_dir.display()
        );
        None
    };
    let embed = |text: &str| -> anyhow::Result<Option<Vec<f32>>> {
        Ok(match &embedder {
            Some(e) => Some(e.embed_one(text)?),
            None => None,
        })
    };

    // `open(None, dir)` opens (or creates) `dir/episodes.db`; `open(Some("redis://..."), _)`
    // would connect to Redis instead. Both return an `Arc<dyn EpisodicStore>`.
    let dir = tempfile::tempdir()?;
    let store = memex::episodic::open(None, dir.path()).await?;

    // Merchant ids are validated once (ASCII letters, digits, `_`, `-`).
    let acme = MerchantId::parse("acme")?;
    let globex = MerchantId::parse("globex")?;

    // Record what happened in a few past sessions of `acme`: a summary, optional JSON metadata,
    // and the summary's embedding.
    let past = [
        (
            "Settlement setl_9Q2 was delayed by a bank holiday; paid out the next working day.",
            json!({"outcome": "resolved"}),
        ),
        (
            "Customer disputed payment pay_77A; chargeback evidence uploaded, ticket tkt_120.",
            json!({"outcome": "escalated", "ticket": "tkt_120"}),
        ),
        (
            "Merchant asked how to rotate API keys; walked through Settings > API keys.",
            json!({"outcome": "resolved"}),
        ),
    ];
    for (summary, metadata) in past {
        let mut draft = EpisodeDraft::new(summary).with_metadata(metadata);
        if let Some(v) = embed(summary)? {
            draft = draft.with_embedding(v);
        }
        store.save(&acme, draft).await?;
    }
    // And one for another merchant.
    let other = "Settlement for globex held for KYC review.";
    let mut draft = EpisodeDraft::new(other);
    if let Some(v) = embed(other)? {
        draft = draft.with_embedding(v);
    }
    store.save(&globex, draft).await?;
    println!(
        "stored: acme {}, globex {}",
        store.count(&acme).await?,
        store.count(&globex).await?
    );

    // Recall: the episodes of one merchant most relevant to what it asks now.
    let question = "why is my settlement late?";
    let query = SearchQuery::new(question, embed(question)?, 2);
    for merchant in [&acme, &globex] {
        println!("\n{merchant} asks: {question}");
        for hit in store.search(merchant, &query).await? {
            let e = &hit.episode;
            println!("  [{:.3}] {}  {}", hit.score, e.summary, e.metadata);
        }
    }
    // Newest first, without a query.
    if let Some(latest) = store.recent(&acme, 1).await?.first() {
        println!("\nacme's latest episode: {}", latest.summary);
    }
    Ok(())
}

//! Ingest a folder of documents into a knowledge base and ask it a question (hybrid search:
//! HNSW vectors and BM25 keywords, fused by reciprocal rank).
//!
//! ```sh
//! memex model fetch                      # once: puts the model in models/all-MiniLM-L6-v2
//! cargo run --release --example kb_ask                                   # data/kb, a default question
//! cargo run --release --example kb_ask -- path/to/docs "how do I rotate my API key?"
//! ```
//!
//! Markdown, HTML, text and JSONL files are read (see [`memex::kb::loader`]); the knowledge base
//! lives in a temporary directory that is deleted at the end.

use std::path::PathBuf;
use std::sync::Arc;

use memex::embed::{EmbedderOptions, MiniLmEmbedder};
use memex::kb::{escape_controls, IngestOptions, KnowledgeBase, SearchMode};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    // The folder to ingest: the payments help-centre articles shipped with memex by default
    // (what `memex init --demo` ingests).
    let folder = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/kb"));
    let question = args
        .next()
        .unwrap_or_else(|| "my settlement has not arrived, what should I check?".to_string());

    // The embedder is shared (`Arc<dyn Embedder>`): the knowledge base embeds chunks while
    // ingesting and the question while searching.
    let model_dir = std::env::var_os("MEMEX_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(memex::paths::default_model_dir);
    let embedder = Arc::new(MiniLmEmbedder::load(
        &model_dir,
        EmbedderOptions::default(),
    )?);

    // A knowledge base is a directory: `kb.db` (SQLite + FTS5, the source of truth) and
    // `kb.hnsw` (the vector index, a cache rebuilt from the database when needed).
    let dir = tempfile::tempdir()?;
    let kb = KnowledgeBase::open(dir.path(), embedder)?;

    // Ingest: walk the folder, chunk each file by its structure (headings, paragraphs), embed
    // the chunks, store them. Re-ingesting skips unchanged files by content hash.
    let report = kb.ingest(std::slice::from_ref(&folder), &IngestOptions::default())?;
    println!(
        "ingested {}: {} files, {} chunks in {:.1} s",
        folder.display(),
        report.files_seen,
        report.chunks_added,
        report.seconds
    );

    // Ask: the 3 best chunks, each with where it came from.
    println!("\nQ: {question}");
    for hit in kb.search(&question, 3, SearchMode::Hybrid)? {
        let snippet: String = hit.text.split_whitespace().collect::<Vec<_>>().join(" ");
        let snippet: String = snippet.chars().take(160).collect();
        // Document names and text come from files: escape control characters before they
        // reach a terminal, as the CLI does.
        println!(
            "\n[{:.4}] {}:{}-{}  ({})",
            hit.score,
            escape_controls(&hit.source),
            hit.line_start,
            hit.line_end,
            escape_controls(&hit.heading)
        );
        // Where the hit ranked in each leg of the hybrid search (`-`: not found by that leg).
        let rank = |r: Option<usize>| r.map_or("-".to_string(), |r| r.to_string());
        println!(
            "  vector rank {}, keyword rank {}",
            rank(hit.vector_rank),
            rank(hit.keyword_rank)
        );
        println!("  {}…", escape_controls(&snippet));
    }
    Ok(())
}

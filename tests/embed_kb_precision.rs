//! What int8 costs in retrieval, and why precisions never mix: `data/kb` ingested at f32 and at
//! int8 into two knowledge bases, searched with every labelled query, and each knowledge base
//! refusing an embedder of the other precision.

use crate::support::model;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use memex::embed::{EmbedderOptions, MiniLmEmbedder, Precision};
use memex::kb::{IngestOptions, KbError, KnowledgeBase, SearchMode};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn embedder(precision: Precision) -> Arc<MiniLmEmbedder> {
    Arc::new(
        MiniLmEmbedder::load(
            &model::model_dir(),
            EmbedderOptions {
                precision,
                ..EmbedderOptions::default()
            },
        )
        .expect("the real model loads"),
    )
}

fn queries() -> Vec<String> {
    std::fs::read_to_string(repo().join("tests/fixtures/kb_queries.jsonl"))
        .expect("kb_queries.jsonl is readable")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("each line is JSON");
            v["query"].as_str().expect("query").to_string()
        })
        .collect()
}

fn ingest(dir: &std::path::Path, precision: Precision) -> KnowledgeBase {
    let kb = KnowledgeBase::open(dir, embedder(precision)).unwrap();
    let report = kb
        .ingest(&[repo().join("data/kb")], &IngestOptions::default())
        .unwrap();
    assert!(report.files_new >= 40, "{report:?}");
    kb
}

#[test]
fn int8_retrieval_agrees_with_f32_and_precisions_never_mix() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let exact = ingest(a.path(), Precision::F32);
    let int8 = ingest(b.path(), Precision::Int8);

    let queries = queries();
    assert!(queries.len() >= 50);
    // A chunk is the same chunk in both knowledge bases when its file and text are.
    let key = |h: &memex::kb::SearchHit| (h.source.clone(), h.text.clone());
    let (mut shared, mut total) = (0usize, 0usize);
    for q in &queries {
        let hits = exact.search(q, 10, SearchMode::Vector).unwrap();
        assert_eq!(hits.len(), 10, "{q:?}");
        let want: HashSet<_> = hits.iter().map(key).collect();
        let got: HashSet<_> = int8
            .search(q, 10, SearchMode::Vector)
            .unwrap()
            .iter()
            .map(key)
            .collect();
        shared += want.intersection(&got).count();
        total += want.len();
    }
    let overlap = shared as f64 / total as f64;
    println!(
        "int8 vs f32 vector overlap@10 over {} queries: {overlap:.4}",
        queries.len()
    );
    assert!(overlap >= 0.95, "overlap@10 {overlap}");
    drop((exact, int8));

    // Each knowledge base refuses the other precision, naming the way out.
    for (dir, stored, other) in [
        (a.path(), "f32", Precision::Int8),
        (b.path(), "int8", Precision::F16),
    ] {
        let err = KnowledgeBase::open(dir, embedder(other)).unwrap_err();
        assert!(matches!(err, KbError::PrecisionMismatch { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("--precision {stored}")) && msg.contains(other.as_str()),
            "{msg}"
        );
    }
    // And opens again at its own precision.
    KnowledgeBase::open(b.path(), embedder(Precision::Int8)).unwrap();
}

#[test]
fn an_empty_knowledge_base_takes_the_precision_of_its_first_embedder() {
    let dir = tempfile::tempdir().unwrap();
    drop(KnowledgeBase::open(dir.path(), embedder(Precision::F16)).unwrap());
    // Nothing stored yet: nothing can mix, so another precision may take it over.
    let kb = KnowledgeBase::open(dir.path(), embedder(Precision::F32)).unwrap();
    kb.ingest(
        &[repo().join("data/kb/refund-timelines.md")],
        &IngestOptions::default(),
    )
    .unwrap();
    drop(kb);
    let err = KnowledgeBase::open(dir.path(), embedder(Precision::F16)).unwrap_err();
    assert!(err.to_string().contains("--precision f32"), "{err}");
}

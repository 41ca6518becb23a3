//! Shared helpers for the knowledge-base and index tests: a counting wrapper around the real
//! embedder, repository data paths, and the cached set of real(-derived) MiniLM vectors.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use memex::embed::{EmbedError, Embedder, MiniLmEmbedder};
use memex::testkit::dataset::{self, VectorSet};

use super::model;

/// The real embedder, counting calls and texts embedded.
pub struct Counting {
    pub inner: Arc<MiniLmEmbedder>,
    pub calls: AtomicUsize,
    pub texts: AtomicUsize,
}

impl Counting {
    pub fn new() -> Arc<Counting> {
        Arc::new(Counting {
            inner: shared_embedder(),
            calls: AtomicUsize::new(0),
            texts: AtomicUsize::new(0),
        })
    }
    pub fn texts(&self) -> usize {
        self.texts.load(Ordering::SeqCst)
    }
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Embedder for Counting {
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.texts.fetch_add(texts.len(), Ordering::SeqCst);
        self.inner.embed(texts)
    }
    fn count_tokens(&self, text: &str) -> Result<usize, EmbedError> {
        self.inner.count_tokens(text)
    }
    fn max_tokens(&self) -> usize {
        self.inner.max_tokens()
    }
    fn precision(&self) -> memex::embed::Precision {
        self.inner.precision()
    }
}

/// One real embedder per test binary.
pub fn shared_embedder() -> Arc<MiniLmEmbedder> {
    static E: OnceLock<Arc<MiniLmEmbedder>> = OnceLock::new();
    E.get_or_init(|| Arc::new(model::embedder())).clone()
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `data/kb`: the payments-support knowledge base.
pub fn kb_dir() -> PathBuf {
    let d = repo().join("data/kb");
    assert!(d.is_dir(), "{} is missing", d.display());
    d
}

/// Labelled queries `(query, expected file name)`.
pub fn labelled_queries() -> Vec<(String, String)> {
    let path = repo().join("tests/fixtures/kb_queries.jsonl");
    let text = std::fs::read_to_string(&path).expect("kb_queries.jsonl is readable");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("each line is JSON");
            (
                v["query"].as_str().expect("query").to_string(),
                v["expected"].as_str().expect("expected").to_string(),
            )
        })
        .collect()
}

/// Number of real texts embedded for the vector set (the rest are perturbations).
pub const REAL_TEXTS: usize = 3000;

/// At least `n` real(-derived) vectors: real MiniLM embeddings of the repository's corpus and
/// knowledge base, extended by small perturbations; cached under the target dir.
pub fn real_vectors(n: usize) -> VectorSet {
    // Tests in one binary run on parallel threads: embed the corpus once, not once per thread.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("memex-kb-test-vectors-v1.bin");
    if let Ok(set) = VectorSet::load(&cache) {
        if set.len() >= n {
            return set.truncated(n);
        }
    }
    let mut texts = dataset::corpus_texts(&repo());
    assert!(texts.len() >= 1000, "only {} corpus texts", texts.len());
    texts.truncate(REAL_TEXTS);
    let e = shared_embedder();
    dataset::real_vectors(e.as_ref(), &texts, n.max(20_000), &cache)
        .expect("embedding the corpus")
        .truncated(n)
}

/// Runs `sql` returning one integer on the store in `dir`.
pub fn count(dir: &Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(dir.join(memex::kb::DB_FILE)).expect("open kb.db");
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .unwrap();
    conn.query_row(sql, [], |r| r.get(0)).expect("query")
}

/// Asserts the store is internally consistent: chunk counts match documents, FTS matches
/// chunks, SQLite's own checks pass.
pub fn assert_consistent(dir: &Path) {
    let conn = rusqlite::Connection::open(dir.join(memex::kb::DB_FILE)).expect("open kb.db");
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .unwrap();
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let mismatched: i64 = conn
        .query_row(
            "SELECT count(*) FROM documents d WHERE d.chunk_count !=
               (SELECT count(*) FROM chunks c WHERE c.doc_id = d.id)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(mismatched, 0, "documents whose chunks are incomplete");
    let orphans: i64 = conn
        .query_row(
            "SELECT count(*) FROM chunks WHERE doc_id NOT IN (SELECT id FROM documents)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(orphans, 0);
    conn.execute(
        "INSERT INTO chunks_fts(chunks_fts, rank) VALUES('integrity-check', 1)",
        [],
    )
    .expect("FTS index agrees with the chunks table");
}

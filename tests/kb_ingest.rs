//! The knowledge base through its library API with the real embedder: retrieval quality on
//! data/kb, idempotency, change and prune, skipped files, corrupt index files, hostile queries.

use crate::support::kb as support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use memex::index::HnswIndex;
use memex::kb::{IngestOptions, KnowledgeBase, SearchMode, INDEX_FILE};

fn file_name(source: &str) -> String {
    Path::new(source)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[test]
fn data_kb_hit_at_3_idempotent_reingest_and_corrupt_index_recovery() {
    let data = tempfile::tempdir().unwrap();
    let embedder = support::Counting::new();
    let kb = KnowledgeBase::open(data.path(), embedder.clone()).unwrap();
    let report = kb
        .ingest(&[support::kb_dir()], &IngestOptions::default())
        .unwrap();
    assert!(report.files_new >= 40, "{report:?}");
    assert_eq!(report.files_skipped, 0);
    assert_eq!(report.chunks_embedded, report.chunks_added);
    assert_eq!(embedder.texts(), report.chunks_added);
    support::assert_consistent(data.path());

    // Every chunk stays within the model's 256 tokens, heading context included.
    let conn = rusqlite::Connection::open(data.path().join("kb.db")).unwrap();
    let mut stmt = conn.prepare("SELECT heading, text FROM chunks").unwrap();
    let rows: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    use memex::embed::Embedder;
    for (heading, text) in &rows {
        let full = if heading.is_empty() {
            text.clone()
        } else {
            format!("{heading}\n{text}")
        };
        let n = embedder.count_tokens(&full).unwrap();
        assert!(n <= 256, "chunk of {n} tokens: {full}");
    }

    // Labelled queries: hit@3.
    let queries = support::labelled_queries();
    assert!(queries.len() >= 30);
    let mut hits = 0;
    let mut misses = Vec::new();
    for (q, expected) in &queries {
        let results = kb.search(q, 3, SearchMode::Hybrid).unwrap();
        if results.iter().any(|h| &file_name(&h.source) == expected) {
            hits += 1;
        } else {
            misses.push((
                q.clone(),
                expected.clone(),
                results.first().map(|h| file_name(&h.source)),
            ));
        }
    }
    let hit3 = hits as f64 / queries.len() as f64;
    println!(
        "hybrid hit@3 over {} labelled queries: {hit3:.3} ({hits} hits)",
        queries.len()
    );
    for m in &misses {
        println!("  miss: {m:?}");
    }
    assert!(hit3 >= 0.9, "hit@3 = {hit3}");

    // Exact tokens: keyword and hybrid both find GATEWAY_ERROR's definition.
    for mode in [SearchMode::Keyword, SearchMode::Hybrid] {
        let r = kb.search("what does GATEWAY_ERROR mean", 5, mode).unwrap();
        assert!(r.iter().any(|h| h.text.contains("GATEWAY_ERROR")), "{mode}");
        assert!(r
            .iter()
            .all(|h| h.line_start >= 1 && h.line_end >= h.line_start));
    }
    let v = kb
        .search("refund timelines for cards", 5, SearchMode::Vector)
        .unwrap();
    assert_eq!(v.len(), 5);
    assert!(v
        .iter()
        .all(|h| h.vector_rank.is_some() && h.keyword_rank.is_none()));

    // Second ingest: nothing to embed.
    let calls_before = embedder.calls();
    let texts_before = embedder.texts();
    let again = kb
        .ingest(&[support::kb_dir()], &IngestOptions::default())
        .unwrap();
    assert_eq!(again.files_unchanged, report.files_new);
    assert_eq!(
        (again.files_new, again.files_changed, again.chunks_added),
        (0, 0, 0)
    );
    assert_eq!(embedder.calls(), calls_before);
    assert_eq!(embedder.texts(), texts_before);
    drop(kb);

    // A fresh process-like open with a corrupt, then truncated, then missing index file.
    let index_path = data.path().join(INDEX_FILE);
    let good = std::fs::read(&index_path).unwrap();
    let baseline = {
        let kb = KnowledgeBase::open(data.path(), embedder.clone()).unwrap();
        kb.search("GST invoice for fees", 5, SearchMode::Vector)
            .unwrap()
    };
    let damaged: Vec<Vec<u8>> = vec![
        good[..good.len() / 2].to_vec(),
        b"this is not an index".to_vec(),
        {
            let mut b = good.clone();
            let i = b.len() / 2;
            b[i] ^= 0xff;
            b
        },
        Vec::new(),
    ];
    for bytes in damaged {
        std::fs::write(&index_path, &bytes).unwrap();
        let kb = KnowledgeBase::open(data.path(), embedder.clone()).unwrap();
        let r = kb
            .search("GST invoice for fees", 5, SearchMode::Vector)
            .unwrap();
        let ids: Vec<u64> = r.iter().map(|h| h.chunk_id).collect();
        let base: Vec<u64> = baseline.iter().map(|h| h.chunk_id).collect();
        assert_eq!(ids, base);
        // The rebuilt index was written back and is valid.
        assert!(HnswIndex::load(&index_path).is_ok());
    }
    std::fs::remove_file(&index_path).unwrap();
    let kb = KnowledgeBase::open(data.path(), embedder.clone()).unwrap();
    assert_eq!(
        kb.search("GST invoice for fees", 5, SearchMode::Vector)
            .unwrap()
            .len(),
        5
    );
    assert!(index_path.exists());

    // Hostile keyword queries never error.
    for q in [
        "\"",
        "\"\"",
        "*",
        "NEAR",
        "NEAR(a b)",
        "-",
        "--x",
        "(",
        ")",
        "a OR",
        "AND",
        "NOT x",
        "col:term",
        "^start",
        "a\"b*c",
        "'; DROP TABLE chunks; --",
        "{x}",
        "[y]",
        "™✓€",
        "",
        "   ",
        "pay_ABC123*",
        "\u{0}",
    ] {
        for mode in [SearchMode::Keyword, SearchMode::Hybrid] {
            kb.search(q, 5, mode)
                .unwrap_or_else(|e| panic!("query {q:?} in {mode} failed: {e}"));
        }
    }
    support::assert_consistent(data.path());
}

fn write(dir: &Path, name: &str, body: &[u8]) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn change_prune_skips_and_formats() {
    let data = tempfile::tempdir().unwrap();
    let docs = tempfile::tempdir().unwrap();
    let d = docs.path();
    write(
        d,
        "a.md",
        b"# Alpha\n\nSettlement happens on T+2 business days.\n",
    );
    write(
        d,
        "b.txt",
        b"Refunds to UPI accounts arrive within 24 hours.\n\nSecond paragraph.\n",
    );
    write(
        d,
        "sub/c.html",
        b"<html><head><style>x{}</style></head><body><h1>Chargebacks</h1><p>Respond within 7 days.</p><script>alert(1)</script></body></html>",
    );
    write(
        d,
        "r.jsonl",
        b"{\"id\": \"faq-1\", \"text\": \"Webhook retries use exponential backoff.\", \"metadata\": {\"topic\": \"webhooks\"}}\n{\"text\": \"KYC needs a PAN card.\"}\nnot json\n",
    );
    write(d, "empty.md", b"   \n");
    write(d, "binary.txt", b"abc\0def");
    write(d, "latin1.txt", &[0x63, 0x61, 0x66, 0xe9, 0x0a]);
    write(d, "ignored.pdf", b"%PDF");
    write(d, ".hidden/secret.md", b"# hidden\n\ntext\n");

    let embedder = support::Counting::new();
    let kb = KnowledgeBase::open(data.path(), embedder.clone()).unwrap();
    let r = kb
        .ingest(&[d.to_path_buf()], &IngestOptions::default())
        .unwrap();
    assert_eq!(r.files_seen, 7, "{r:?}");
    assert_eq!(r.files_new, 4);
    assert_eq!(r.files_skipped, 3);
    assert_eq!(r.chunks_added, 1 + 1 + 1 + 2);

    // Visible HTML text only, heading path kept; JSONL metadata kept.
    let html = kb
        .search("chargeback respond", 3, SearchMode::Keyword)
        .unwrap();
    assert_eq!(html[0].heading, "Chargebacks");
    assert_eq!(html[0].text, "Respond within 7 days.");
    let faq = kb
        .search("webhook backoff", 1, SearchMode::Keyword)
        .unwrap();
    assert!(faq[0].metadata.as_deref().unwrap_or("").contains("faq-1"));
    assert!(kb
        .search("alert", 5, SearchMode::Keyword)
        .unwrap()
        .is_empty());

    // Change one file: only its chunks are embedded again and replaced.
    let before = embedder.texts();
    write(
        d,
        "a.md",
        b"# Alpha\n\nSettlement happens on T+1 for premium merchants.\n",
    );
    let r = kb
        .ingest(&[d.to_path_buf()], &IngestOptions::default())
        .unwrap();
    assert_eq!((r.files_changed, r.files_unchanged, r.files_new), (1, 3, 0));
    assert_eq!((r.chunks_added, r.chunks_removed), (1, 1));
    assert_eq!(embedder.texts() - before, 1);
    let hits = kb
        .search("settlement premium", 3, SearchMode::Keyword)
        .unwrap();
    assert!(hits[0].text.contains("T+1"));
    assert!(kb
        .search("T+2 business days", 5, SearchMode::Keyword)
        .unwrap()
        .iter()
        .all(|h| !h.text.contains("T+2 business")));

    // Delete a file: without --prune it stays, with --prune it goes (from search too).
    std::fs::remove_file(d.join("b.txt")).unwrap();
    let r = kb
        .ingest(&[d.to_path_buf()], &IngestOptions::default())
        .unwrap();
    assert_eq!(r.files_pruned, 0);
    assert!(!kb
        .search("UPI refunds", 5, SearchMode::Keyword)
        .unwrap()
        .is_empty());
    let r = kb
        .ingest(
            &[d.to_path_buf()],
            &IngestOptions {
                prune: true,
                ..IngestOptions::default()
            },
        )
        .unwrap();
    assert_eq!((r.files_pruned, r.chunks_removed), (1, 1));
    assert!(kb
        .search("UPI refunds", 5, SearchMode::Keyword)
        .unwrap()
        .is_empty());
    let v = kb
        .search("refunds to UPI accounts", 10, SearchMode::Vector)
        .unwrap();
    assert!(v.iter().all(|h| !h.source.ends_with("b.txt")));
    let stats = kb.stats().unwrap();
    assert_eq!((stats.documents, stats.chunks), (3, 4));
    assert_eq!(stats.indexed, 4);
    support::assert_consistent(data.path());

    // Reindex rebuilds from SQLite alone.
    assert_eq!(kb.reindex().unwrap(), 4);
    drop(kb);
    let kb = KnowledgeBase::open(data.path(), embedder.clone()).unwrap();
    assert_eq!(kb.stats().unwrap().indexed, 4);
}

#[test]
fn a_store_from_another_embedder_dimension_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(data.path().join("kb.db")).unwrap();
    conn.execute_batch("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL); INSERT INTO meta VALUES ('dim', '768');")
        .unwrap();
    drop(conn);
    let err = KnowledgeBase::open(data.path(), support::Counting::new() as Arc<_>).unwrap_err();
    assert!(err.to_string().contains("768"), "{err}");
}

/// At a scale where the query's common words match far more chunks than the keyword budget,
/// the keyword leg still finds the chunks holding rare exact tokens (and ranks them first),
/// and a query made only of common words still returns keyword results.
#[test]
fn exact_tokens_are_found_among_thousands_of_common_matches() {
    use memex::embed::Embedder;
    use memex::kb::{Chunk, KbOptions};
    let data = tempfile::tempdir().unwrap();
    let embedder = support::Counting::new();
    let options = KbOptions {
        keyword_budget: 200,
        ..KbOptions::default()
    };
    let kb = KnowledgeBase::open_with(data.path(), embedder.clone(), options).unwrap();
    let common = [
        "The refund for this payment was processed and the merchant settlement is pending.",
        "Payment status: the refund request for the customer payment is under review.",
        "Settlement of the payment batch happens on T+2; refund amounts are netted off.",
    ];
    let special = [
        "Refund payment pay_ABC123 failed with GATEWAY_ERROR at the acquirer.",
        "Payment pay_ZZ9 refunded; settlement note for the merchant.",
    ];
    let texts: Vec<&str> = common.iter().chain(&special).copied().collect();
    let vectors = embedder.inner.embed(&texts).unwrap();
    let chunk = |text: &str, i: usize| Chunk {
        heading: vec![format!("Doc {i}")],
        text: text.to_string(),
        line_start: 1,
        line_end: 1,
        metadata: None,
    };
    for d in 0..30 {
        let n = 100;
        let chunks: Vec<Chunk> = (0..n).map(|i| chunk(common[i % 3], d)).collect();
        let vs: Vec<Vec<f32>> = (0..n).map(|i| vectors[i % 3].clone()).collect();
        kb.insert_embedded(&format!("bulk/{d}.md"), &chunks, &vs)
            .unwrap();
    }
    let chunks: Vec<Chunk> = special.iter().map(|t| chunk(t, 99)).collect();
    kb.insert_embedded("special.md", &chunks, &vectors[3..])
        .unwrap();
    for mode in [SearchMode::Keyword, SearchMode::Hybrid] {
        for (q, want) in [
            (
                "refund status of payment pay_ABC123 settlement",
                "pay_ABC123",
            ),
            (
                "what does GATEWAY_ERROR mean for my refund payment",
                "GATEWAY_ERROR",
            ),
            ("payment pay_ZZ9 settlement refund", "pay_ZZ9"),
        ] {
            let hits = kb.search(q, 5, mode).unwrap();
            assert!(
                hits.first().is_some_and(|h| h.text.contains(want)),
                "{mode}: {q:?} -> {:?}",
                hits.iter().map(|h| &h.text).collect::<Vec<_>>()
            );
        }
    }
    let hits = kb
        .search("refund payment settlement", 10, SearchMode::Keyword)
        .unwrap();
    assert_eq!(
        hits.len(),
        10,
        "a query of common words still returns matches"
    );
    assert!(hits
        .iter()
        .all(|h| h.text.to_lowercase().contains("refund")));
    let none = kb
        .search("zzqx unknownword", 10, SearchMode::Keyword)
        .unwrap();
    assert!(none.is_empty());
}

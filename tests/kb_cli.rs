//! `memex ingest` / `memex search` / `memex reindex` through the real binary: JSON shapes, a
//! killed ingestion, searching while another process ingests, a damaged index file.

use crate::support::bin::memex;
use crate::support::kb as support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("memex runs");
    assert!(
        out.status.success(),
        "memex failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `n` small Markdown files, one chunk each.
fn small_tree(dir: &Path, n: usize) {
    let topics = [
        "refund",
        "settlement",
        "chargeback",
        "webhook",
        "UPI limit",
        "KYC",
    ];
    for i in 0..n {
        let t = topics[i % topics.len()];
        let body = format!(
            "# Note {i} about {t}\n\nMerchant note number {i}: the {t} case for order ord_{i:05} was handled by the support desk on day {}.\n",
            i % 28 + 1
        );
        std::fs::write(dir.join(format!("note-{i:04}.md")), body).unwrap();
    }
}

#[test]
fn ingest_and_search_json_shapes_and_damaged_index() {
    let data = tempfile::tempdir().unwrap();
    let docs = tempfile::tempdir().unwrap();
    small_tree(docs.path(), 12);
    std::fs::write(docs.path().join("bad.txt"), b"\xff\xfe\xfd").unwrap();

    let out = run(memex(data.path())
        .arg("ingest")
        .arg(docs.path())
        .arg("--json"));
    let summary = json(&out);
    for key in [
        "files_seen",
        "files_new",
        "files_changed",
        "files_unchanged",
        "files_skipped",
        "chunks_added",
        "chunks_removed",
        "seconds",
    ] {
        assert!(summary.get(key).is_some(), "summary lacks {key}: {summary}");
    }
    assert_eq!(summary["files_new"], 12);
    assert_eq!(summary["files_skipped"], 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.lines().filter(|l| l.contains("bad.txt")).count(),
        1,
        "one warning line for the bad file: {stderr}"
    );

    let out = run(memex(data.path()).args(["search", "ord_00007", "-k", "3", "--json"]));
    let hits = json(&out);
    let hits = hits.as_array().expect("a JSON list");
    assert!(!hits.is_empty() && hits.len() <= 3);
    let first = &hits[0];
    for key in [
        "chunk_id",
        "source",
        "heading",
        "text",
        "score",
        "vector_rank",
        "keyword_rank",
    ] {
        assert!(first.get(key).is_some(), "hit lacks {key}: {first}");
    }
    assert!(first["text"].as_str().unwrap().contains("ord_00007"));
    assert!(first["keyword_rank"].is_u64());

    let out = run(memex(data.path()).args([
        "search",
        "--mode",
        "keyword",
        "--json",
        "--",
        "NEAR(\"x* -(",
        "-k",
    ]));
    assert!(json(&out).is_array());
    let out = run(memex(data.path()).args(["search", "settlement", "--mode", "vector", "--json"]));
    let hits = json(&out);
    assert!(hits
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["keyword_rank"].is_null()));

    // A damaged index file: search still answers and the file is rebuilt.
    let index = data.path().join(memex::kb::INDEX_FILE);
    let len = std::fs::metadata(&index).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&index)
        .unwrap();
    f.set_len(len / 3).unwrap();
    drop(f);
    let out = run(memex(data.path()).args(["search", "chargeback", "-k", "2", "--json"]));
    assert_eq!(json(&out).as_array().unwrap().len(), 2);
    assert!(memex::index::HnswIndex::load(&index).is_ok());

    let out = run(memex(data.path()).args(["reindex", "--json"]));
    assert_eq!(json(&out)["vectors"], 12);
}

#[test]
fn killed_ingestion_leaves_a_consistent_store_and_the_next_run_completes_it() {
    let data = tempfile::tempdir().unwrap();
    let docs = tempfile::tempdir().unwrap();
    let n = 400;
    small_tree(docs.path(), n);
    let mut child = memex(data.path())
        .arg("ingest")
        .arg(docs.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until some documents are committed, then kill it mid-way.
    let db = data.path().join("kb.db");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        assert!(
            Instant::now() < deadline,
            "ingestion never committed a document"
        );
        if let Ok(Some(status)) = child.try_wait() {
            panic!("ingestion finished before it could be killed: {status}");
        }
        if db.exists() {
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.busy_timeout(Duration::from_secs(5)).unwrap();
            let docs: i64 = conn
                .query_row("SELECT count(*) FROM documents", [], |r| r.get(0))
                .unwrap_or(0);
            if docs > 0 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    support::assert_consistent(data.path());
    let committed = support::count(data.path(), "SELECT count(*) FROM documents");
    assert!(
        committed > 0 && committed < n as i64,
        "committed {committed}"
    );

    let out = run(memex(data.path())
        .arg("ingest")
        .arg(docs.path())
        .arg("--json"));
    let summary = json(&out);
    assert_eq!(summary["files_unchanged"], committed);
    assert_eq!(summary["files_new"], n as i64 - committed);
    support::assert_consistent(data.path());
    assert_eq!(
        support::count(data.path(), "SELECT count(*) FROM documents"),
        n as i64
    );
    let out = run(memex(data.path()).args(["search", "ord_00399", "-k", "1", "--json"]));
    assert!(json(&out)[0]["text"]
        .as_str()
        .unwrap()
        .contains("ord_00399"));
}

#[test]
fn search_works_while_another_process_ingests() {
    let data = tempfile::tempdir().unwrap();
    let docs = tempfile::tempdir().unwrap();
    small_tree(docs.path(), 20);
    run(memex(data.path()).arg("ingest").arg(docs.path()));
    let more = tempfile::tempdir().unwrap();
    small_tree(more.path(), 300);
    let mut child = memex(data.path())
        .arg("ingest")
        .arg(more.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut searches = 0;
    while child.try_wait().unwrap().is_none() || searches < 2 {
        let out = run(memex(data.path()).args(["search", "refund case", "-k", "5", "--json"]));
        assert_eq!(json(&out).as_array().unwrap().len(), 5);
        searches += 1;
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(searches >= 2);
    support::assert_consistent(data.path());
    assert_eq!(
        support::count(data.path(), "SELECT count(*) FROM documents"),
        320
    );
}

//! Damaged knowledge bases through the real binary: a NaN vector written into a real kb.db,
//! a read-only data directory, a missing one.

use crate::support::bin::memex;
use crate::support::kb as support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        stderr(out)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn docs() -> tempfile::TempDir {
    let docs = tempfile::tempdir().unwrap();
    for (name, body) in [
        ("fees.md", "# Fees\n\nCard payments cost two percent.\n"),
        ("upi.md", "# UPI\n\nUPI transfers settle instantly.\n"),
        (
            "kyc.md",
            "# KYC\n\nKYC needs a PAN card and a bank statement.\n",
        ),
    ] {
        std::fs::write(docs.path().join(name), body).unwrap();
    }
    docs
}

/// Writes NaN into the vector of the chunk from `file`; returns its id.
fn poison(data: &Path, file: &str) -> i64 {
    let conn = rusqlite::Connection::open(data.join(memex::kb::DB_FILE)).unwrap();
    let id: i64 = conn
        .query_row(
            "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE d.path LIKE ?1",
            [format!("%{file}")],
            |r| r.get(0),
        )
        .unwrap();
    let nan = memex::kb::vector_to_blob(&vec![f32::NAN; 384]);
    conn.execute(
        "UPDATE chunks SET vector = ?1 WHERE id = ?2",
        rusqlite::params![nan, id],
    )
    .unwrap();
    id
}

fn finite(data: &Path, id: i64) -> bool {
    let conn = rusqlite::Connection::open(data.join(memex::kb::DB_FILE)).unwrap();
    let blob: Vec<u8> = conn
        .query_row("SELECT vector FROM chunks WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap();
    memex::kb::blob_to_vector(&blob)
        .is_some_and(|v| v.len() == 384 && v.iter().all(|x| x.is_finite()))
}

#[test]
fn a_nan_vector_is_named_skipped_and_repaired() {
    let data = tempfile::tempdir().unwrap();
    let docs = docs();
    json(
        &memex(data.path())
            .arg("ingest")
            .arg(docs.path())
            .arg("--json")
            .output()
            .unwrap(),
    );
    let bad = poison(data.path(), "upi.md");
    // Force the index to be rebuilt from the store, as after a crash or `reindex`.
    std::fs::remove_file(data.path().join(memex::kb::INDEX_FILE)).unwrap();

    let out = memex(data.path())
        .args([
            "search",
            "instant UPI settlement",
            "--mode",
            "vector",
            "--json",
        ])
        .output()
        .unwrap();
    let hits = json(&out);
    let ids: Vec<i64> = hits
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["chunk_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{hits}");
    assert!(!ids.contains(&bad));
    let err = stderr(&out);
    let warnings: Vec<&str> = err
        .lines()
        .filter(|l| l.contains(&format!("chunk {bad} ")))
        .collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("upi.md") && warnings[0].contains("damaged"),
        "{err}"
    );

    // Hybrid search still works and finds the chunk by keyword.
    let out = memex(data.path())
        .args(["search", "UPI transfers", "--json"])
        .output()
        .unwrap();
    assert!(json(&out)
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["chunk_id"].as_i64() == Some(bad)));

    // reindex re-embeds it.
    let out = memex(data.path())
        .args(["reindex", "--json"])
        .output()
        .unwrap();
    assert_eq!(json(&out)["vectors"], 3);
    assert!(finite(data.path(), bad));
    let out = memex(data.path())
        .args([
            "search",
            "instant UPI settlement",
            "--mode",
            "vector",
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(json(&out)[0]["chunk_id"].as_i64(), Some(bad));
    assert!(!stderr(&out).contains("damaged"), "{}", stderr(&out));

    // So does ingest, though the file did not change.
    let bad = poison(data.path(), "kyc.md");
    let out = memex(data.path())
        .arg("ingest")
        .arg(docs.path())
        .arg("--json")
        .output()
        .unwrap();
    let report = json(&out);
    assert_eq!(report["files_unchanged"], 3, "{report}");
    assert_eq!(report["chunks_repaired"], 1, "{report}");
    assert!(finite(data.path(), bad));
    support::assert_consistent(data.path());
}

#[test]
fn search_names_a_read_only_or_missing_knowledge_base_and_creates_nothing() {
    let data = tempfile::tempdir().unwrap();
    let docs = docs();
    json(
        &memex(data.path())
            .arg("ingest")
            .arg(docs.path())
            .arg("--json")
            .output()
            .unwrap(),
    );
    let set = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let db = data.path().join(memex::kb::DB_FILE);
    for (path, mode, restore) in [(data.path(), 0o555, 0o700), (db.as_path(), 0o444, 0o644)] {
        set(path, mode);
        let out = memex(data.path())
            .args(["search", "card fees"])
            .output()
            .unwrap();
        set(path, restore);
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(err.contains("read-only"), "{err}");
        assert!(!err.contains("unable to open database file"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }

    let missing = data.path().join("nowhere/deeper");
    let out = memex(&missing)
        .args(["search", "card fees"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no knowledge base"),
        "{}",
        stderr(&out)
    );
    assert!(
        !data.path().join("nowhere").exists(),
        "search created a directory"
    );
}

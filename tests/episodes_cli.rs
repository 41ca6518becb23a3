//! `memex episodes` through the real binary, with the real model, on SQLite and Redis.

use crate::support::bin::memex;
use crate::support::redis as redis_support;

use std::process::{Command, Output};

use serde_json::Value;

fn ok(out: Output) -> String {
    let stdout = String::from_utf8(out.stdout).expect("stdout is UTF-8");
    assert!(
        out.status.success(),
        "memex failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn json(out: Output) -> Value {
    let s = ok(out);
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// Runs and expects failure; returns stderr.
fn fails(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "expected failure, got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

fn add(cmd: &mut Command, merchant: &str, summary: &str, metadata: Option<&str>) -> Value {
    cmd.args([
        "episodes",
        "add",
        "--merchant",
        merchant,
        "--summary",
        summary,
        "--json",
    ]);
    if let Some(m) = metadata {
        cmd.args(["--metadata", m]);
    }
    json(cmd.output().unwrap())
}

fn assert_episode_shape(v: &Value) {
    let obj = v.as_object().expect("an episode is an object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "created_at",
            "id",
            "merchant_id",
            "metadata",
            "occurred_at",
            "summary"
        ]
    );
    chrono::DateTime::parse_from_rfc3339(v["created_at"].as_str().unwrap()).expect("RFC3339");
    uuid::Uuid::parse_str(v["id"].as_str().unwrap()).expect("a UUID id");
}

/// The whole workflow against whatever store `cmd_for` points at.
fn workflow(cmd_for: &dyn Fn() -> Command, a: &str, b: &str) {
    let payout = add(
        &mut cmd_for(),
        a,
        "Merchant asked why the weekly payout had not arrived; it was held for a bank holiday and lands on Tuesday.",
        Some(r#"{"outcome":"resolved","ticket":4211}"#),
    );
    assert_episode_shape(&payout);
    assert_eq!(payout["merchant_id"], a);
    assert_eq!(payout["metadata"]["ticket"], 4211);
    add(
        &mut cmd_for(),
        a,
        "Merchant wanted to change the bank account used for settlements.",
        None,
    );
    add(
        &mut cmd_for(),
        a,
        "Customer opened a chargeback dispute for order 551; evidence was uploaded.",
        None,
    );
    // Another merchant with a payout episode that must never appear for `a`.
    let other = add(
        &mut cmd_for(),
        b,
        "Payout arrived late because of a bank holiday.",
        None,
    );

    let list = json(
        cmd_for()
            .args(["episodes", "list", "--merchant", a, "--json"])
            .output()
            .unwrap(),
    );
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3);
    list.iter().for_each(assert_episode_shape);
    assert!(
        list[0]["summary"].as_str().unwrap().contains("chargeback"),
        "newest first"
    );
    assert_eq!(list[2]["id"], payout["id"]);
    assert_eq!(list[2]["metadata"], payout["metadata"]);

    let two = json(
        cmd_for()
            .args([
                "episodes",
                "list",
                "--merchant",
                a,
                "--limit",
                "2",
                "--json",
            ])
            .output()
            .unwrap(),
    );
    assert_eq!(two.as_array().unwrap().len(), 2);

    let hits = json(
        cmd_for()
            .args([
                "episodes",
                "search",
                "--merchant",
                a,
                "when will my money be paid out?",
                "-k",
                "2",
                "--json",
            ])
            .output()
            .unwrap(),
    );
    let hits = hits.as_array().unwrap();
    assert_eq!(hits.len(), 2);
    assert_eq!(
        hits[0]["id"], payout["id"],
        "the payout episode ranks first: {hits:?}"
    );
    let s0 = hits[0]["score"].as_f64().unwrap();
    let s1 = hits[1]["score"].as_f64().unwrap();
    assert!(s0 >= s1 && s0 > 0.3 && s0 <= 1.0, "{s0} {s1}");
    for h in hits {
        assert_eq!(h["merchant_id"], a);
        assert_ne!(h["id"], other["id"]);
        let mut keys: Vec<&str> = h.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "created_at",
                "id",
                "merchant_id",
                "metadata",
                "occurred_at",
                "score",
                "summary"
            ]
        );
    }

    let human = ok(cmd_for()
        .args(["episodes", "list", "--merchant", a])
        .output()
        .unwrap());
    assert_eq!(human.lines().count(), 3);
    assert!(human.contains(payout["id"].as_str().unwrap()));
    let human = ok(cmd_for()
        .args(["episodes", "search", "--merchant", a, "bank account"])
        .output()
        .unwrap());
    assert!(
        human.lines().next().unwrap().contains("bank account"),
        "{human}"
    );

    let gone = json(
        cmd_for()
            .args(["episodes", "forget", "--merchant", a, "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(gone, serde_json::json!({"merchant_id": a, "forgotten": 3}));
    let list = json(
        cmd_for()
            .args(["episodes", "list", "--merchant", a, "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(list, serde_json::json!([]));
    let empty = ok(cmd_for()
        .args(["episodes", "list", "--merchant", a])
        .output()
        .unwrap());
    assert!(empty.contains("no episodes"), "{empty}");
    let list_b = json(
        cmd_for()
            .args(["episodes", "list", "--merchant", b, "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(
        list_b.as_array().unwrap().len(),
        1,
        "forgetting {a} touched {b}"
    );
    let human = ok(cmd_for()
        .args(["episodes", "forget", "--merchant", b])
        .output()
        .unwrap());
    assert!(human.contains("forgot 1 episode"), "{human}");
}

#[test]
fn sqlite_workflow_in_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The data directory from `MEMEX_DATA_DIR` (the other tests pass `--data-dir`).
    let cmd = || {
        let mut c = crate::support::bin::bare();
        c.env("MEMEX_MODEL_DIR", crate::support::model::model_dir())
            .env("MEMEX_DATA_DIR", &data);
        c
    };
    workflow(&cmd, "MID001", "MID0010");
    assert!(
        data.join("episodes.db").is_file(),
        "the default store is episodes.db in the data dir named by MEMEX_DATA_DIR"
    );
}

#[test]
fn redis_workflow_via_episodic_url() {
    let server = redis_support::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = server.url();
    // Unique merchants keep runs apart on a shared $REDIS_URL.
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let (a, b) = (format!("CLI{tag}"), format!("CLI{tag}0"));
    workflow(
        &|| {
            let mut c = memex(dir.path());
            c.env("MEMEX_EPISODIC_URL", &url);
            c
        },
        &a,
        &b,
    );
    assert!(
        !dir.path().join("episodes.db").exists(),
        "Redis was used, not SQLite"
    );
}

#[test]
fn bad_input_is_a_clear_error_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let long = "A".repeat(10 * 1024);
    for bad in [
        "MID001:*",
        "*",
        "..",
        "a b",
        "",
        "MID\u{1b}[2J",
        "商户",
        long.as_str(),
    ] {
        let err = fails(
            memex(dir.path())
                .args(["episodes", "add", "--merchant", bad, "--summary", "x"])
                .output()
                .unwrap(),
        );
        assert!(err.contains("invalid --merchant: merchant id"), "{err}");
        assert!(
            err.len() < 300,
            "the error echoes the input: {} bytes",
            err.len()
        );
        fails(
            memex(dir.path())
                .args(["episodes", "list", "--merchant", bad])
                .output()
                .unwrap(),
        );
    }
    let err = fails(
        memex(dir.path())
            .args([
                "episodes",
                "add",
                "--merchant",
                "MID1",
                "--summary",
                "x",
                "--metadata",
                "{oops",
            ])
            .output()
            .unwrap(),
    );
    assert!(err.contains("--metadata is not valid JSON"), "{err}");
    let err = fails(
        memex(dir.path())
            .args([
                "episodes",
                "add",
                "--merchant",
                "MID1",
                "--summary",
                "x",
                "--metadata",
                "[1,2]",
            ])
            .output()
            .unwrap(),
    );
    assert!(err.contains("metadata must be a JSON object"), "{err}");
    let err = fails(
        memex(dir.path())
            .args(["episodes", "add", "--merchant", "MID1", "--summary", "   "])
            .output()
            .unwrap(),
    );
    assert!(err.contains("summary is empty"), "{err}");
    let err = fails(
        memex(dir.path())
            .args([
                "--episodic",
                "postgres://u:hunter2@db/x",
                "episodes",
                "list",
                "--merchant",
                "MID1",
            ])
            .output()
            .unwrap(),
    );
    assert!(
        err.contains("sqlite://PATH or redis://") && !err.contains("hunter2"),
        "{err}"
    );
    let list = json(
        memex(dir.path())
            .args(["episodes", "list", "--merchant", "MID1", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(list, serde_json::json!([]));
}

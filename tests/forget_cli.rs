//! `memex forget` and `memex prune` through the real binary on SQLite and Redis: only the named
//! merchant's episodes go (optionally only those before a date), re-running is safe, and the
//! other merchant is untouched.

use crate::support::bin::memex;
use crate::support::redis as redis_support;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

fn json_out(out: Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn import(mut cmd: Command, merchant: &str, lines: &str) {
    cmd.args(["episodes", "import", "--merchant", merchant, "-", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    json_out(child.wait_with_output().unwrap());
}

fn count(mut cmd: Command, merchant: &str) -> usize {
    cmd.args(["episodes", "list", "--merchant", merchant, "--json"]);
    json_out(cmd.output().unwrap()).as_array().unwrap().len()
}

fn workflow(cmd_for: &dyn Fn() -> Command) {
    let lines = "{\"summary\":\"old refund\",\"occurred_at\":\"2020-01-01\"}\n\
                 {\"summary\":\"old payout\",\"occurred_at\":\"2021-06-01\"}\n\
                 {\"summary\":\"new chargeback\",\"occurred_at\":\"2025-01-01\"}\n";
    import(cmd_for(), "FA", lines);
    import(cmd_for(), "FB", lines);

    let mut c = cmd_for();
    c.args([
        "forget",
        "--merchant",
        "FA",
        "--before",
        "2022-01-01",
        "--json",
    ]);
    let v = json_out(c.output().unwrap());
    assert_eq!(v["removed"], json!({"episodes": 2, "conversations": 0}));
    assert_eq!(v["merchant_id"], "FA");
    assert_eq!(count(cmd_for(), "FA"), 1);

    let mut c = cmd_for();
    c.args(["forget", "--merchant", "FA", "--json"]);
    assert_eq!(
        json_out(c.output().unwrap())["removed"],
        json!({"episodes": 1, "conversations": 0})
    );
    // Re-running (e.g. after a crash) is safe and finds nothing left.
    let mut c = cmd_for();
    c.args(["forget", "--merchant", "FA", "--json"]);
    assert_eq!(
        json_out(c.output().unwrap())["removed"],
        json!({"episodes": 0, "conversations": 0})
    );
    assert_eq!(count(cmd_for(), "FA"), 0);
    assert_eq!(count(cmd_for(), "FB"), 3, "the other merchant is untouched");

    // Retention: nothing is older than 1 day yet; no setting at all is a clear error.
    let mut c = cmd_for();
    c.args(["prune", "--episodes-retention-days", "1", "--json"]);
    assert_eq!(
        json_out(c.output().unwrap())["removed"],
        json!({"episodes": 0})
    );
    let mut c = cmd_for();
    c.args(["prune", "--json"]);
    let out = c.output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("retention"));
    let mut c = cmd_for();
    c.args(["forget", "--merchant", "FB", "--before", "yesterday"]);
    let out = c.output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--before"));
    assert_eq!(count(cmd_for(), "FB"), 3);
}

#[test]
fn forget_and_prune_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    workflow(&|| memex(dir.path()));
}

#[test]
fn forget_and_prune_on_redis() {
    let server = redis_support::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = server.url();
    workflow(&|| {
        let mut c = memex(dir.path());
        c.env("MEMEX_EPISODIC_URL", &url);
        c
    });
}

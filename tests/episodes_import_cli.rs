//! `memex episodes import` and batch `search` through the real binary, with the real model, on
//! SQLite and Redis: bad lines, stdin, re-runs after an interrupted import, `occurred_at`
//! ordering, query order, and read-only commands that create nothing.

use crate::support::bin::memex;
use crate::support::redis as redis_support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

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

fn with_stdin(mut cmd: Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `n` import lines: topic-specific summaries, dates ascending from 2023-01-01.
fn lines(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            json!({
                "summary": format!("episode {i}: merchant call about ticket TK{i:04}"),
                "metadata": {"line": i},
                "occurred_at": format!("2023-01-{:02}", 1 + i % 28),
            })
            .to_string()
        })
        .collect()
}

fn list(cmd: Command, merchant: &str) -> Vec<Value> {
    let mut cmd = cmd;
    cmd.args([
        "episodes",
        "list",
        "--merchant",
        merchant,
        "--limit",
        "1000",
        "--json",
    ]);
    json(cmd.output().unwrap()).as_array().unwrap().clone()
}

fn import_workflow(cmd_for: &dyn Fn() -> Command, dir: &Path) {
    let all = lines(150);
    // Stdin, with a bad line at 100: the 99 lines before it stay, the error names line 100.
    let mut bad = all.clone();
    bad[99] = "{\"summary\": 42}".into();
    let mut cmd = cmd_for();
    cmd.args(["episodes", "import", "--merchant", "IMP", "-", "--json"]);
    let out = with_stdin(cmd, &(bad.join("\n") + "\n"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // With --json the error is one JSON object on stderr.
    let parsed: serde_json::Value = serde_json::from_str(err.trim()).expect("a JSON error");
    let message = parsed["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("line 100"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(list(cmd_for(), "IMP").len(), 99);

    // An interrupted run (only the first 120 lines made it) and then the full file: no duplicates.
    let head = dir.join("head.jsonl");
    std::fs::write(&head, all[..120].join("\n")).unwrap();
    let mut cmd = cmd_for();
    cmd.args(["episodes", "import", "--merchant", "IMP", "--json"])
        .arg(&head);
    assert_eq!(json(cmd.output().unwrap()), json!({"imported": 120}));
    let full = dir.join("full.jsonl");
    std::fs::write(&full, all.join("\n") + "\n\n").unwrap();
    let mut cmd = cmd_for();
    cmd.args(["episodes", "import", "--merchant", "IMP", "--json"])
        .arg(&full);
    assert_eq!(json(cmd.output().unwrap()), json!({"imported": 150}));
    let stored = list(cmd_for(), "IMP");
    assert_eq!(stored.len(), 150, "no duplicates after the re-run");
    let mut seen: Vec<i64> = stored
        .iter()
        .map(|e| e["metadata"]["line"].as_i64().unwrap())
        .collect();
    seen.sort();
    assert_eq!(seen, (0..150).collect::<Vec<i64>>());

    // Newest first by occurred_at: the first entries are dated 2023-01-28.
    assert_eq!(stored[0]["occurred_at"], "2023-01-28T00:00:00Z");
    let dates: Vec<&str> = stored
        .iter()
        .map(|e| e["occurred_at"].as_str().unwrap())
        .collect();
    assert!(dates.windows(2).all(|w| w[0] >= w[1]), "{dates:?}");

    // Another merchant sees none of it.
    assert!(list(cmd_for(), "IMP2").is_empty());

    // Batch search: one JSON line per query, in input order, each finding its ticket.
    let queries = "ticket TK0007\n{\"query\": \"what about TK0142?\"}\n\nTK0031\n";
    let mut cmd = cmd_for();
    cmd.args([
        "episodes",
        "search",
        "--merchant",
        "IMP",
        "--input",
        "-",
        "-k",
        "3",
        "--json",
    ]);
    let out = ok(with_stdin(cmd, queries));
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    for (row, (q, ticket)) in rows.iter().zip([
        ("ticket TK0007", "TK0007"),
        ("what about TK0142?", "TK0142"),
        ("TK0031", "TK0031"),
    ]) {
        assert_eq!(row["query"], q);
        let results = row["results"].as_array().unwrap();
        assert_eq!(results.len(), 3);
        assert!(
            results[0]["summary"].as_str().unwrap().contains(ticket),
            "{q}: {results:?}"
        );
        let s = results[0]["score"].as_f64().unwrap();
        assert!(s > 0.0 && s <= 1.0);
        assert!(results[0]["occurred_at"].is_string());
    }

    // Speaker and date hints: `metadata.speaker` named in a query, or a date it gives, ranks
    // the matching episodes first (Ben's episode matches the words best).
    let convo = [
        ("Ana", "2024-03-01", "Ana: the refund for my shoes was late"),
        (
            "Ben",
            "2024-03-15",
            "Ben: my refund was late, so late, the refund for shoes is late",
        ),
        ("Ana", "2024-04-02", "Ana: a refund for shoes again"),
    ]
    .iter()
    .map(|(who, when, text)| {
        json!({"summary": text, "metadata": {"speaker": who}, "occurred_at": when}).to_string()
    })
    .collect::<Vec<_>>()
    .join("\n");
    let mut cmd = cmd_for();
    cmd.args(["episodes", "import", "--merchant", "SPK", "-"]);
    ok(with_stdin(cmd, &convo));
    let queries = "late shoes refund\nwhat did Ana say about the late shoes refund?\n\
                   late shoes refund on 2 April, 2024\n";
    let mut cmd = cmd_for();
    cmd.args([
        "episodes",
        "search",
        "--merchant",
        "SPK",
        "--input",
        "-",
        "-k",
        "3",
        "--json",
    ]);
    let out = ok(with_stdin(cmd, queries));
    let firsts: Vec<String> = out
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["results"][0]["summary"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(firsts[0].starts_with("Ben:"), "{firsts:?}");
    assert!(firsts[1].starts_with("Ana: the refund"), "{firsts:?}");
    assert!(firsts[2].starts_with("Ana: a refund"), "{firsts:?}");
}

#[test]
fn import_and_batch_search_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    import_workflow(&|| memex(&data), dir.path());
}

#[test]
fn import_and_batch_search_on_redis() {
    let server = redis_support::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = server.url();
    import_workflow(
        &|| {
            let mut c = memex(dir.path());
            c.env("MEMEX_EPISODIC_URL", &url);
            c
        },
        dir.path(),
    );
}

#[test]
fn bad_import_lines_are_named() {
    let dir = tempfile::tempdir().unwrap();
    for (input, needle) in [
        (
            "{\"summary\":\"ok\"}\nnot json\n",
            "line 2 is not valid JSON",
        ),
        ("[1]\n", "line 1 is not a JSON object"),
        ("{\"summary\":\"  \"}\n", "line 1 has an empty"),
        (
            "{\"summary\":\"x\",\"metadata\":[1]}\n",
            "line 1 has a \"metadata\"",
        ),
        (
            "{\"summary\":\"x\",\"occurred_at\":\"May 8\"}\n",
            "line 1 has an \"occurred_at\"",
        ),
    ] {
        let mut cmd = memex(dir.path());
        cmd.args(["episodes", "import", "--merchant", "BAD", "-"]);
        let out = with_stdin(cmd, input);
        assert!(!out.status.success(), "{input}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{input}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    let mut cmd = memex(dir.path());
    cmd.args([
        "episodes",
        "import",
        "--merchant",
        "BAD",
        "/no/such/file.jsonl",
    ]);
    assert!(!cmd.output().unwrap().status.success());

    // A line longer than the limit (no newline for 3 MiB) is refused by number without being
    // held whole; the lines before it stay imported.
    let file = dir.path().join("long.jsonl");
    let long = format!(
        "{{\"summary\":\"first\"}}\n{{\"summary\":\"second\"}}\n{{\"summary\":\"{}\"}}\n",
        "y".repeat(3 * 1024 * 1024)
    );
    std::fs::write(&file, long).unwrap();
    let mut cmd = memex(dir.path());
    cmd.args(["episodes", "import", "--merchant", "LONG"])
        .arg(&file);
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 3") && err.contains("longer than"),
        "{err}"
    );
    assert_eq!(list(memex(dir.path()), "LONG").len(), 2);
}

#[test]
fn read_only_commands_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nonexistent/dir/x.db");
    let url = format!("sqlite://{}", missing.display());
    for args in [
        vec!["episodes", "list", "--merchant", "M1"],
        vec!["episodes", "search", "--merchant", "M1", "refund"],
    ] {
        let mut cmd = memex(&dir.path().join("data"));
        cmd.args(&args).args(["--episodic", &url]);
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("does not exist"), "{err}");
        assert!(
            !dir.path().join("nonexistent").exists(),
            "{args:?} created a directory"
        );
    }
    // Without --episodic, a fresh data dir lists nothing and still creates nothing.
    let data = dir.path().join("fresh");
    let mut cmd = memex(&data);
    cmd.args(["episodes", "list", "--merchant", "M1", "--json"]);
    assert_eq!(json(cmd.output().unwrap()), json!([]));
    assert!(!data.exists());
}

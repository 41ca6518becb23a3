//! `memex forget` reaches every store memex writes for a merchant, through the real binary and
//! the fake OpenAI-compatible server: the merchant's conversation turns and summaries are
//! deleted, its audit rows and turn records keep their rows with the text redacted, its
//! episodes go; another merchant is untouched, and a re-run is safe.

#[path = "support/cli.rs"]
mod cli;
#[path = "support/fake_openai.rs"]
mod fake_openai;
#[path = "support/model.rs"]
mod model;

use std::path::Path;

use cli::{json_of, memex};
use fake_openai::{FakeOpenAi, Reply};
use serde_json::json;

/// One turn for `merchant` in which the model calls a tool, then answers; returns the session.
async fn turn_with_tool_call(server: &FakeOpenAi, data: &Path, merchant: &str) -> String {
    server.push(Reply::tool_calls(&[(
        "call_1",
        "get_merchant_account",
        "{}",
    )]));
    server.push(Reply::text(&format!("Account of {merchant} checked.")));
    let out = memex(
        data,
        &server.base_url(),
        &[
            "ask",
            "--merchant",
            merchant,
            "--json",
            &format!("secret-note-{merchant}: where is my payout?"),
        ],
    )
    .await;
    json_of(&out)["session"].as_str().unwrap().to_string()
}

fn conversation_rows(data: &Path, session: &str) -> i64 {
    let conn = rusqlite::Connection::open(data.join("conversations.sqlite3")).unwrap();
    conn.query_row(
        "SELECT COUNT(*) FROM conversation_messages WHERE session_id = ?1",
        [session],
        |r| r.get(0),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_removes_conversations_and_redacts_audit_of_one_merchant_only() {
    let server = FakeOpenAi::start().await;
    let url = server.base_url();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();

    let a = turn_with_tool_call(&server, data, "FGA1").await;
    let b = turn_with_tool_call(&server, data, "FGB1").await;
    let ep = memex(
        data,
        &url,
        &[
            "episodes",
            "add",
            "--merchant",
            "FGA1",
            "--summary",
            "payout held",
            "--json",
        ],
    )
    .await;
    json_of(&ep);
    assert!(conversation_rows(data, &a) > 0 && conversation_rows(data, &b) > 0);
    let audit_a = json_of(&memex(data, &url, &["audit", "--session", &a, "--json"]).await);
    assert_eq!(audit_a.as_array().unwrap().len(), 1, "{audit_a}");

    let v = json_of(&memex(data, &url, &["forget", "--merchant", "FGA1", "--json"]).await);
    assert_eq!(v["merchant_id"], "FGA1");
    assert_eq!(v["removed"], json!({"episodes": 1, "conversations": 1}));
    assert_eq!(v["redacted"], json!({"audit_rows": 1, "turns": 1}));

    // A's conversation is gone; its audit row stays, with the text redacted.
    assert_eq!(conversation_rows(data, &a), 0);
    let audit_a = json_of(&memex(data, &url, &["audit", "--session", &a, "--json"]).await);
    let rows = audit_a.as_array().unwrap();
    assert_eq!(rows.len(), 1, "the audit row is kept");
    assert_eq!(rows[0]["tool"], "get_merchant_account");
    assert_eq!(rows[0]["args"], "[forgotten]");
    assert_eq!(rows[0]["result"], "[forgotten]");
    let db = rusqlite::Connection::open(data.join("agent.db")).unwrap();
    let (turns, redacted): (i64, i64) = db
        .query_row(
            "SELECT COUNT(*), SUM(context = '{\"forgotten\":true}') FROM turns WHERE session_id = ?1",
            [&a],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (turns, redacted),
        (1, 1),
        "the turn record stays, its context redacted"
    );

    // B is untouched.
    assert!(conversation_rows(data, &b) > 0);
    let audit_b = json_of(&memex(data, &url, &["audit", "--session", &b, "--json"]).await);
    assert_ne!(audit_b[0]["result"], "[forgotten]");

    // A re-run (as after a crash) is safe and finds nothing left to change.
    let v = json_of(&memex(data, &url, &["forget", "--merchant", "FGA1", "--json"]).await);
    assert_eq!(v["removed"], json!({"episodes": 0, "conversations": 0}));
    assert_eq!(v["redacted"], json!({"audit_rows": 0, "turns": 0}));
    assert!(conversation_rows(data, &b) > 0);
}

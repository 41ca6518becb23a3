//! `memex forget` reaches every store memex writes for a merchant, through the real binary and
//! the fake OpenAI-compatible server: the merchant's conversation turns and summaries are
//! deleted, its audit rows and turn records keep their rows with the text redacted, its
//! episodes go; another merchant is untouched, and a re-run is safe.

use crate::support::cli;
use crate::support::fake_openai;

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

/// Every byte of `path` and of its `-wal` file, if any.
fn raw_bytes(path: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap_or_default();
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    bytes.extend(std::fs::read(Path::new(&wal)).unwrap_or_default());
    bytes
}

fn occurrences(haystack: &[u8], needle: &str) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle.as_bytes())
        .count()
}

/// Forget means every store and no recoverable copy: after a merchant's episodes (hundreds,
/// each with a marker), a conversation, a refund held for approval (its free-text reason) and a
/// plan (its task, step descriptions and arguments), `forget` leaves none of the merchant's
/// markers anywhere in the raw bytes of `episodes.db`, `conversations.sqlite3` or `agent.db`
/// (their write-ahead logs included), while another merchant's markers stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_leaves_no_text_in_the_sqlite_files() {
    let server = FakeOpenAi::start().await;
    let url = server.base_url();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    json_of(&memex(data, &url, &["init", "--demo", "--json"]).await);

    // 300 episodes for MID001, each with a marker; a few for MID002.
    let lines: String = (0..300)
        .map(|i| {
            format!(
                "{}\n",
                json!({"summary": format!("zqxforgetme{i:03} merchant call about a payout"),
                       "occurred_at": "2024-05-01"})
            )
        })
        .collect();
    let import = data.join("eps.jsonl");
    std::fs::write(&import, lines).unwrap();
    let path = import.display().to_string();
    json_of(
        &memex(
            data,
            &url,
            &[
                "episodes",
                "import",
                "--merchant",
                "MID001",
                &path,
                "--json",
            ],
        )
        .await,
    );
    std::fs::remove_file(&import).unwrap();
    json_of(
        &memex(
            data,
            &url,
            &[
                "episodes",
                "add",
                "--merchant",
                "MID002",
                "--summary",
                "zqxkeepme other merchant call",
                "--json",
            ],
        )
        .await,
    );

    // A turn whose model asks for a refund with a free-text reason: held for approval.
    server.push(Reply::tool_calls(&[(
        "call_1",
        "initiate_refund",
        r#"{"transaction_id": "pay_ABC123", "amount": 100, "reason": "zqxreasonmarker customer cancelled"}"#,
    )]));
    let asked = json_of(
        &memex(
            data,
            &url,
            &[
                "ask",
                "--merchant",
                "MID001",
                "--json",
                "zqxaskmarker please refund pay_ABC123",
            ],
        )
        .await,
    );
    assert!(asked["pending_action"]["id"].is_string(), "{asked}");

    // A plan whose irreversible step waits for approval.
    server.push(Reply::text(
        &json!({"steps": [
            {"id": "1", "description": "zqxstepmarker refund the payment", "tool": "initiate_refund",
             "args": {"transaction_id": "pay_ABC123", "amount": 50, "reason": "zqxplanreason late delivery"}}
        ]})
        .to_string(),
    ));
    let plan = json_of(
        &memex(
            data,
            &url,
            &[
                "plan",
                "--merchant",
                "MID001",
                "--json",
                "zqxtaskmarker refund 50",
            ],
        )
        .await,
    );
    assert_eq!(plan["status"], "awaiting_approval", "{plan}");

    let files = ["episodes.db", "conversations.sqlite3", "agent.db"];
    let all = |name: &str| raw_bytes(&data.join(name));
    let markers = [
        "zqxforgetme",
        "zqxreasonmarker",
        "zqxaskmarker",
        "zqxstepmarker",
        "zqxplanreason",
        "zqxtaskmarker",
    ];
    let before: usize = files
        .iter()
        .map(|f| {
            markers
                .iter()
                .map(|m| occurrences(&all(f), m))
                .sum::<usize>()
        })
        .sum();
    assert!(before >= 300, "the markers were written ({before})");

    let v = json_of(&memex(data, &url, &["forget", "--merchant", "MID001", "--json"]).await);
    // The 300 imported and the demo's own episodes of MID001.
    assert!(v["removed"]["episodes"].as_u64().unwrap() >= 300, "{v}");
    assert!(v["redacted_actions"].as_u64().unwrap() >= 2, "{v}");
    assert!(v["redacted_plans"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v["skipped"], json!([]), "{v}");

    for f in files {
        let bytes = all(f);
        for m in markers {
            assert_eq!(occurrences(&bytes, m), 0, "{m} is still readable in {f}");
        }
    }
    assert_eq!(
        occurrences(&all("episodes.db"), "zqxkeepme"),
        1,
        "MID002 keeps its episode"
    );

    // The held refund can never run with forgotten words: it was rejected.
    let action = asked["pending_action"]["id"].as_str().unwrap();
    let out = memex(data, &url, &["approve", action, "--json"]).await;
    assert!(!out.status.success(), "a forgotten action must not run");
}

/// One session row with a hostile id (stored by a release that did not check ids) never stops
/// `forget`: it finishes every store, reports the session as skipped in a short line, and
/// exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_is_never_blocked_by_one_bad_session_row() {
    let server = FakeOpenAi::start().await;
    let url = server.base_url();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let good = turn_with_tool_call(&server, data, "FGC1").await;
    let huge = "x".repeat(1_500_000);
    {
        let db = rusqlite::Connection::open(data.join("agent.db")).unwrap();
        for bad in ["", huge.as_str(), "../x\u{0}y"] {
            db.execute(
                "INSERT INTO sessions(id, merchant_id, created_at) VALUES (?1, 'FGC1', '2020-01-01T00:00:00.000Z')",
                [bad],
            )
            .unwrap();
            db.execute(
                "INSERT INTO audit(session_id, merchant_id, turn, call_id, tool, args, result, status, latency_ms, at)
                 VALUES (?1, 'FGC1', 1, 'c', 'get_merchant_account', '{\"zqxbadrow\":1}', '{}', 'ok', 1.0, '2020-01-01T00:00:00.000Z')",
                [bad],
            )
            .unwrap();
        }
    }
    let out = memex(data, &url, &["forget", "--merchant", "FGC1", "--json"]).await;
    assert!(out.stdout.len() < 10_000, "the report stays short");
    let v = json_of(&out);
    assert_eq!(v["removed"]["conversations"], 1, "{v}");
    assert_eq!(v["redacted"]["audit_rows"], 4, "{v}");
    assert_eq!(v["skipped"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(conversation_rows(data, &good), 0);
    assert_eq!(
        occurrences(&raw_bytes(&data.join("agent.db")), "zqxbadrow"),
        0
    );
}

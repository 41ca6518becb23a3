//! Production sessions as the test set: `memex eval export` writes stored sessions as cases
//! (messages, memory seen, tools with arguments and outcomes, the final outcome), and
//! `memex eval agent` replays them against the configured model with the tools answering from
//! the recording. Through the real binary against the fake OpenAI-compatible server.

use crate::support::cli;
use crate::support::fake_openai;

use std::path::Path;

use cli::{json_of, memex};
use fake_openai::{FakeOpenAi, Reply};
use serde_json::Value;

const WHERE: &str = "Where is the settlement for pay_ABC123?";
const AMBIGUOUS: &str = "refund my last payment";
const REPLY: &str = "the one from yesterday, pay_ABC123";
const REFUND: &str = "refund 1000 of pay_ABC123 please";
const STUCK: &str = "check pay_ABC123 again and again";

/// What the model answers in each recorded turn, in the order the cases are replayed.
fn script(server: &FakeOpenAi, changed: bool) {
    // Case 1: one lookup, then the answer (the changed script looks up the account instead).
    if changed {
        server.push(Reply::tool_calls(&[("c1", "get_merchant_account", "{}")]));
    } else {
        server.push(Reply::tool_calls(&[(
            "c1",
            "get_transaction",
            r#"{"transaction_id":"pay_ABC123"}"#,
        )]));
    }
    server.push(Reply::text("pay_ABC123 settles on T+2."));
    // Case 2: a clarifying question, then an answer to the merchant's reply.
    server.push(Reply::tool_calls(&[(
        "q1",
        "ask_user",
        r#"{"question":"Which payment should be refunded?"}"#,
    )]));
    server.push(Reply::text("Thanks: pay_ABC123 it is."));
    // Case 3: a refund, held for a human; the lookup in the same reply is never run (the turn
    // stops at the held action, and the audit has no row for it).
    server.push(Reply::tool_calls(&[
        (
            "r1",
            "initiate_refund",
            r#"{"transaction_id":"pay_ABC123","amount":1000,"reason":"merchant asked"}"#,
        ),
        (
            "r2",
            "get_transaction",
            r#"{"transaction_id":"pay_ABC123"}"#,
        ),
    ]));
    // Case 4: nine calls in one reply: seven repeats are loops, the ninth passes the cap of
    // eight and the turn escalates with a ticket.
    let calls: Vec<(String, &str, &str)> = (0..9)
        .map(|i| {
            (
                format!("l{i}"),
                "get_transaction",
                r#"{"transaction_id":"pay_ABC123"}"#,
            )
        })
        .collect();
    let refs: Vec<(&str, &str, &str)> =
        calls.iter().map(|(a, b, c)| (a.as_str(), *b, *c)).collect();
    server.push(Reply::tool_calls(&refs));
}

/// `memex eval agent FILE --json` with the model scripted as recorded (or `changed`).
async fn replay(server: &FakeOpenAi, data: &Path, file: &Path, changed: bool) -> Value {
    script(server, changed);
    let file = file.to_str().unwrap();
    json_of(&memex(data, &server.base_url(), &["eval", "agent", file, "--json"]).await)
}

async fn ask(data: &Path, url: &str, merchant: &str, session: &str, msg: &str) -> Value {
    json_of(
        &memex(
            data,
            url,
            &[
                "ask",
                "--merchant",
                merchant,
                "--session",
                session,
                "--json",
                msg,
            ],
        )
        .await,
    )
}

fn lines(out: &std::process::Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a case ({e}): {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_replay_reproduces_tools_and_outcomes_and_reports_a_changed_model() {
    let server = FakeOpenAi::start().await;
    let url = server.base_url();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    json_of(&memex(data, &url, &["init", "--demo", "--json"]).await);

    // Four recorded sessions.
    script(&server, false);
    let r = ask(data, &url, "MID001", "ses_where", WHERE).await;
    assert_eq!(r["tool_calls"][0]["status"], "ok");
    let r = ask(data, &url, "MID001", "ses_ambiguous", AMBIGUOUS).await;
    assert!(r["clarification"]["question"].is_string(), "{r}");
    ask(data, &url, "MID001", "ses_ambiguous", REPLY).await;
    let r = ask(data, &url, "MID002", "ses_refund", REFUND).await;
    assert_eq!(r["pending_action"]["tool"], "initiate_refund", "{r}");
    let r = ask(data, &url, "MID001", "ses_stuck", STUCK).await;
    assert!(r["escalation"]["ticket_id"].is_string(), "{r}");
    let stats_before = json_of(&memex(data, &url, &["stats", "--json"]).await);

    // Export: every session, in creation order, with what the issue asks for.
    let cases = lines(&memex(data, &url, &["eval", "export"]).await);
    let ids: Vec<&str> = cases.iter().map(|c| c["case"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ["ses_where", "ses_ambiguous", "ses_refund", "ses_stuck"]
    );
    let where_case = &cases[0];
    assert_eq!(where_case["merchant_id"], "MID001");
    assert_eq!(where_case["outcome"], "answer");
    let t = &where_case["turns"][0];
    assert_eq!(t["message"], WHERE);
    assert_eq!(t["kind"], "message");
    assert_eq!(t["answer"], "pay_ABC123 settles on T+2.");
    assert_eq!(t["tool_calls"][0]["tool"], "get_transaction");
    assert_eq!(t["tool_calls"][0]["args"]["transaction_id"], "pay_ABC123");
    assert_eq!(t["tool_calls"][0]["status"], "ok");
    assert_eq!(t["tool_calls"][0]["model"], "fake-model");
    assert!(
        t["tool_calls"][0]["result"]
            .to_string()
            .contains("Priya Sharma"),
        "{t}"
    );
    let kb = t["memory"]["kb"].as_array().unwrap();
    assert!(!kb.is_empty(), "the memory the turn saw: {t}");
    assert!(
        kb[0]["text"].as_str().is_some_and(|s| !s.is_empty()),
        "the hits' text is kept for a replay: {}",
        kb[0]
    );
    assert_eq!(t["models"][0]["model"], "fake-model");
    assert_eq!(cases[1]["turns"].as_array().unwrap().len(), 2);
    assert_eq!(cases[1]["tags"], serde_json::json!(["clarified"]));
    assert_eq!(cases[2]["outcome"], "pending_action");
    assert_eq!(
        cases[2]["turns"][0]["tool_calls"].as_array().unwrap().len(),
        1,
        "only the held refund reached the audit"
    );
    assert_eq!(cases[3]["outcome"], "escalation");
    assert_eq!(
        cases[3]["tags"],
        serde_json::json!(["escalated", "ticketed"])
    );

    // The filters.
    let only = |args: &'static [&'static str]| {
        let (data, url) = (data.to_path_buf(), url.clone());
        async move {
            let mut a = vec!["eval", "export"];
            a.extend_from_slice(args);
            lines(&memex(&data, &url, &a).await)
                .iter()
                .map(|c| c["case"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(only(&["--only", "clarified"]).await, ["ses_ambiguous"]);
    assert_eq!(only(&["--only", "escalated"]).await, ["ses_stuck"]);
    assert_eq!(only(&["--only", "ticketed"]).await, ["ses_stuck"]);
    assert!(only(&["--only", "failed"]).await.is_empty());
    assert_eq!(
        only(&["--only", "clarified,escalated"]).await,
        ["ses_ambiguous", "ses_stuck"]
    );
    assert_eq!(only(&["--merchant", "MID002"]).await, ["ses_refund"]);
    assert!(only(&["--since", "2999-01-01"]).await.is_empty());
    assert_eq!(only(&["--since", "2000-01-01"]).await.len(), 4);
    let bad = memex(data, &url, &["eval", "export", "--only", "everything"]).await;
    assert!(!bad.status.success());
    let bad = memex(data, &url, &["eval", "export", "--since", "last tuesday"]).await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since"));

    // The recording answers the tools: a result edited in the file is what the model sees.
    let mut edited = cases.clone();
    let result = &mut edited[0]["turns"][0]["tool_calls"][0]["result"];
    let text = result
        .to_string()
        .replace("Priya Sharma", "Recorded Person");
    *result = serde_json::from_str(&text).unwrap();
    let file = dir.path().join("cases.jsonl");
    let body: String = edited.iter().map(|c| format!("{c}\n")).collect();
    std::fs::write(&file, body).unwrap();

    // Replay with the same script: the same tools, arguments and outcomes.
    let before = server.requests().len();
    let report = replay(&server, data, &file, false).await;
    let s = &report["summary"];
    assert_eq!(s["cases"], 4, "{report}");
    assert_eq!(s["turns"], 5, "{report}");
    assert_eq!(s["differences"], 0, "{report}");
    assert_eq!(s["tools_exact"], 1.0);
    assert_eq!(s["tools_set"], 1.0);
    assert_eq!(s["outcome_match"], 1.0);
    assert_eq!(s["loops"], 7, "{report}");
    assert_eq!(s["recorded_loops"], 7);
    assert_eq!(s["errors"], 0);
    assert_eq!(s["tool_calls"], s["recorded_tool_calls"]);
    assert!(s["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(report["cases"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["same"] == true));
    let replay_requests: Vec<_> = server.requests().into_iter().skip(before).collect();
    let seen = serde_json::to_string(
        &replay_requests
            .iter()
            .map(|r| r.body.clone())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(
        seen.contains("Recorded Person") && !seen.contains("Priya Sharma"),
        "the replayed lookup answered from the recording, not the payments database"
    );
    // The recorded memory reached the model again.
    let kb_text: String = cases[0]["turns"][0]["memory"]["kb"][0]["text"]
        .as_str()
        .unwrap()
        .trim()
        .chars()
        .take(40)
        .collect();
    assert!(
        replay_requests
            .iter()
            .any(|r| r.body["messages"][0]["content"]
                .as_str()
                .is_some_and(|system| system.contains(&kb_text))),
        "the recorded knowledge-base text is in the replayed prompt: {kb_text}"
    );
    // Nothing was written to the real state: no turn, no action, no refund.
    let stats_after = json_of(&memex(data, &url, &["stats", "--json"]).await);
    assert_eq!(stats_before, stats_after);

    // A changed model (here: a script that looks up the account) is reported as a difference.
    let before = server.requests().len();
    let report = replay(&server, data, &file, true).await;
    assert_eq!(report["summary"]["differences"], 1, "{report}");
    let first = &report["cases"][0];
    assert_eq!(first["case"], "ses_where");
    assert_eq!(first["same"], false);
    assert_eq!(first["tools_exact"], false);
    assert_eq!(first["outcome_match"], true);
    assert_eq!(first["turns"][0]["recorded"]["tools"][0], "get_transaction");
    assert_eq!(
        first["turns"][0]["replayed"]["tools"][0],
        "get_merchant_account"
    );
    assert_eq!(
        first["turns"][0]["replayed"]["answer"],
        "pay_ABC123 settles on T+2."
    );
    // The account was never recorded for this case: the model is told so; nothing is read.
    let told: String = server
        .requests()
        .into_iter()
        .skip(before)
        .map(|r| r.body.to_string())
        .collect();
    assert!(
        told.contains("has no result for get_merchant_account"),
        "{told}"
    );

    // As a CI gate, and in words.
    script(&server, true);
    let out = memex(
        data,
        &url,
        &[
            "eval",
            "agent",
            file.to_str().unwrap(),
            "--fail-on-difference",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DIFF ses_where"), "{text}");
    assert!(text.contains("different 1"), "{text}");

    // A forgotten merchant's sessions are no longer cases.
    json_of(&memex(data, &url, &["forget", "--merchant", "MID002", "--json"]).await);
    let after = lines(&memex(data, &url, &["eval", "export"]).await);
    assert_eq!(after.len(), 3);
    assert!(after.iter().all(|c| c["merchant_id"] != "MID002"));
    assert!(!after.iter().any(|c| c.to_string().contains("refund 1000")));

    // A file that is not cases is refused, naming the line.
    std::fs::write(&file, "{\"case\": 1}\n").unwrap();
    let out = memex(data, &url, &["eval", "agent", file.to_str().unwrap()]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 1"),
        "{out:?}"
    );
}

/// A store written by an older release (no message, answer, model columns), read by commands
/// that open it read-only: `stats`, `audit` and `eval export` work with the defaults, and a
/// replay skips the turn that has no message; a writer then adds the columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_agent_store_is_read_with_defaults_then_migrated() {
    let server = FakeOpenAi::start().await;
    let url = server.base_url();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let db = data.join("agent.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE sessions(
                id TEXT PRIMARY KEY, merchant_id TEXT NOT NULL, created_at TEXT NOT NULL,
                turns INTEGER NOT NULL DEFAULT 0, ended_at TEXT, episode_id TEXT);
             CREATE TABLE turns(
                id INTEGER PRIMARY KEY, session_id TEXT NOT NULL, merchant_id TEXT NOT NULL,
                turn INTEGER NOT NULL, at TEXT NOT NULL, outcome TEXT NOT NULL,
                latency_ms REAL NOT NULL, prompt_tokens INTEGER NOT NULL,
                completion_tokens INTEGER NOT NULL, context TEXT NOT NULL);
             CREATE TABLE audit(
                id INTEGER PRIMARY KEY, session_id TEXT NOT NULL, merchant_id TEXT NOT NULL,
                turn INTEGER NOT NULL, call_id TEXT NOT NULL, tool TEXT NOT NULL,
                args TEXT NOT NULL, result TEXT NOT NULL, status TEXT NOT NULL,
                latency_ms REAL NOT NULL, at TEXT NOT NULL);
             INSERT INTO sessions VALUES ('ses_old', 'MID001', '2026-01-01T00:00:00.000Z', 1,
                                          NULL, NULL);
             INSERT INTO turns(session_id, merchant_id, turn, at, outcome, latency_ms,
                               prompt_tokens, completion_tokens, context)
                  VALUES ('ses_old', 'MID001', 1, '2026-01-01T00:00:01.000Z', 'answer', 12.0,
                          30, 7, '{\"kb\":[],\"episodes\":[],\"summary\":null}');
             INSERT INTO audit(session_id, merchant_id, turn, call_id, tool, args, result,
                               status, latency_ms, at)
                  VALUES ('ses_old', 'MID001', 1, 'c1', 'get_transaction',
                          '{\"transaction_id\":\"pay_ABC123\"}', '{\"status\":\"settled\"}',
                          'ok', 1.5, '2026-01-01T00:00:01.000Z');",
        )
        .unwrap();
    }
    let stats = json_of(&memex(data, &url, &["stats", "--json"]).await);
    assert_eq!(stats["turns"], 1);
    assert_eq!(stats["llm_tokens"], 37);
    assert_eq!(stats["models"], serde_json::json!([]));
    let audit = json_of(&memex(data, &url, &["audit", "--session", "ses_old", "--json"]).await);
    assert_eq!(audit[0]["tool"], "get_transaction");
    assert!(audit[0]["model"].is_null(), "{audit}");
    let cases = lines(&memex(data, &url, &["eval", "export"]).await);
    assert_eq!(cases.len(), 1);
    assert_eq!(cases[0]["turns"][0]["kind"], "message");
    assert_eq!(cases[0]["turns"][0]["message"], "");
    assert_eq!(cases[0]["turns"][0]["tool_calls"][0]["status"], "ok");
    let file = data.join("old.jsonl");
    std::fs::write(&file, format!("{}\n", cases[0])).unwrap();
    let report = json_of(
        &memex(
            data,
            &url,
            &["eval", "agent", file.to_str().unwrap(), "--json"],
        )
        .await,
    );
    assert_eq!(report["summary"]["skipped"], 1, "{report}");
    assert_eq!(report["summary"]["cases"], 0);
    assert!(
        server.requests().is_empty(),
        "nothing to replay, no model call"
    );

    // A writer adds the columns; what was there reads the same.
    let store = memex::agent::AgentStore::open(&db).unwrap();
    let turns = store.turn_records("ses_old").unwrap();
    assert_eq!(
        (turns[0].kind.as_str(), turns[0].outcome.as_str()),
        ("message", "answer")
    );
    assert!(turns[0].models.is_empty());
    assert_eq!(store.audit_log("ses_old").unwrap()[0].model, None);
    drop(store);
    let stats_after = json_of(&memex(data, &url, &["stats", "--json"]).await);
    assert_eq!(stats, stats_after);
}

//! The agent through the real binary against a fake OpenAI-compatible server on loopback:
//! `init --demo`, `ask`, `approve`, `audit`, `stats`, the JSON contract and exit codes.

use crate::support::cli;
use crate::support::fake_openai;
use crate::support::redis as redis_support;

use std::path::Path;
use std::process::Output;

use cli::{json_of, memex, TEST_KEY};
use fake_openai::{FakeOpenAi, Reply};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_approve_audit_and_stats_through_the_cli() {
    let server = FakeOpenAi::start().await;
    let url = server.base_url();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();

    let init = json_of(&memex(data, &url, &["init", "--demo", "--json"]).await);
    assert_eq!(init["payments"]["transactions_added"], 60);
    let again = json_of(&memex(data, &url, &["init", "--demo", "--json"]).await);
    assert_eq!(again["kb"]["chunks_added"], 0, "init is idempotent");
    assert_eq!(again["episodes_added"], 0);

    // 429 with Retry-After, then a tool call, then the answer.
    server
        .push(Reply::status(429, "slow down").header("Retry-After", "0"))
        .push(Reply::tool_calls(&[(
            "call_1",
            "get_transaction",
            r#"{"transaction_id":"pay_ABC123"}"#,
        )]))
        .push(Reply::text(
            "pay_ABC123 was captured on 2026-03-28 and settles on T+2.",
        ));
    let r = json_of(
        &memex(
            data,
            &url,
            &[
                "ask",
                "--merchant",
                "MID001",
                "--json",
                "Where is the settlement for pay_ABC123?",
            ],
        )
        .await,
    );
    let session = r["session"].as_str().unwrap().to_string();
    assert_eq!(r["merchant"], "MID001");
    assert!(r["answer"].as_str().unwrap().contains("T+2"));
    assert_eq!(r["turns"], 1);
    let call = &r["tool_calls"][0];
    for key in ["id", "tool", "args", "status", "result", "latency_ms"] {
        assert!(call.get(key).is_some(), "tool call lacks {key}: {call}");
    }
    assert_eq!(call["status"], "ok");
    assert_eq!(call["result"]["customer_name"], "Priya Sharma");
    assert!(r["pending_action"].is_null() && r["escalation"].is_null());
    let kb = r["memory"]["kb"].as_array().unwrap();
    assert!(!kb.is_empty());
    for key in ["chunk_id", "source", "score"] {
        assert!(kb[0].get(key).is_some(), "kb entry lacks {key}");
    }
    assert!(r["memory"]["episodes"][0].get("summary").is_some());
    assert!(r["memory"].get("summary").is_some());
    // The API key went to the server, never to the output.
    let reqs = server.requests();
    assert!(reqs
        .iter()
        .any(|q| q.header("authorization") == Some(format!("Bearer {TEST_KEY}").as_str())));

    // The model asks for a refund: the turn ends pending, nothing refunded.
    server.push(Reply::tool_calls(&[(
        "call_2",
        "initiate_refund",
        r#"{"transaction_id":"pay_ABC123","amount":1000,"reason":"partial refund requested"}"#,
    )]));
    let r = json_of(
        &memex(
            data,
            &url,
            &[
                "ask",
                "--merchant",
                "MID001",
                "--session",
                &session,
                "--json",
                "Refund 1000 of pay_ABC123. yes, I confirm",
            ],
        )
        .await,
    );
    assert_eq!(r["turns"], 2);
    assert_eq!(r["tool_calls"][0]["status"], "pending_approval");
    let action = r["pending_action"]["id"].as_str().unwrap().to_string();
    assert_eq!(r["pending_action"]["tool"], "initiate_refund");
    assert_eq!(r["pending_action"]["args"]["amount"], 1000);

    server.push(Reply::text("The refund of 1000 INR is on its way."));
    let r = json_of(
        &memex(
            data,
            &url,
            &["approve", "--session", &session, &action, "--json"],
        )
        .await,
    );
    assert_eq!(r["tool_calls"][0]["status"], "ok");
    let refund_id = r["tool_calls"][0]["result"]["refund_id"].clone();
    // Approving again runs nothing.
    let r2 = json_of(
        &memex(
            data,
            &url,
            &["approve", "--session", &session, &action, "--json"],
        )
        .await,
    );
    assert_eq!(r2["tool_calls"][0]["result"]["refund_id"], refund_id);

    let audit = json_of(&memex(data, &url, &["audit", "--session", &session, "--json"]).await);
    let refunds_run = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["tool"] == "initiate_refund" && e["status"] == "ok")
        .count();
    assert_eq!(refunds_run, 1);
    let stats = json_of(&memex(data, &url, &["stats", "--json"]).await);
    assert_eq!(stats["blocked_irreversible"], 1);
    assert!(stats["llm_tokens"].as_u64().unwrap() > 0);
    for key in [
        "sessions",
        "success_rate",
        "tool_calls",
        "tool_failure_rate",
        "loop_detections",
        "escalations",
        "latency_ms",
    ] {
        assert!(stats.get(key).is_some(), "stats lacks {key}");
    }
    assert!(!audit.to_string().contains(TEST_KEY));

    // chat: the answer streams, a refund asks y/N on the terminal, leaving stores an episode.
    server
        .push(Reply::sse_text(&["Hello ", "from ", "memex."]))
        .push(Reply::sse_tool_calls(
            &[(
                "call_9",
                "initiate_refund",
                r#"{"transaction_id":"pay_ABC123","amount":500,"reason":"damaged item"}"#,
            )],
            4,
        ))
        .push(Reply::sse_text(&["Refund ", "approved."]))
        .push(Reply::text(
            "MID001 chatted; a 500 INR refund of pay_ABC123 was approved.",
        ));
    let out = chat(data, &url, "hi\nrefund 500 of pay_ABC123\ny\n").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("agent> Hello from memex."), "{stdout}");
    assert!(stdout.contains("[y/N]"), "{stdout}");
    assert!(stdout.contains("Refund approved."), "{stdout}");
    assert!(stdout.contains("session saved as episode"), "{stdout}");
}

async fn chat(data: &Path, base_url: &str, stdin: &str) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut cmd = cli::command(data, base_url, &["chat", "--merchant", "MID001"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let input = stdin.to_string();
    tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("memex chat starts");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_llm_is_a_one_sentence_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = memex(
        dir.path(),
        "http://127.0.0.1:9/v1",
        &["ask", "--merchant", "MID001", "hello"],
    )
    .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: ") && last.contains("LLM"), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains(TEST_KEY),
        "{err}"
    );

    let out = memex(
        dir.path(),
        "http://127.0.0.1:9/v1",
        &["ask", "--merchant", "MID 001; DROP", "hello"],
    )
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid --merchant"));
}

/// `--llm-rate N` paces what one process sends the model: bursts of 3·N, then N per second.
/// With `--llm-rate 1`, a turn needing four model requests sends the fourth at least a second
/// after the first; a rate that is not a number is refused before anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_llm_rate_flag_paces_requests_to_the_model() {
    let server = FakeOpenAi::start().await;
    let url = server.base_url();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    json_of(&memex(data, &url, &["init", "--demo", "--json"]).await);
    for id in ["pay_ABC123", "pay_NOPE01", "pay_NOPE02"] {
        let args = format!(r#"{{"transaction_id":"{id}"}}"#);
        server.push(Reply::tool_calls(&[("call", "get_transaction", &args)]));
    }
    server.push(Reply::text("Done."));
    let started = std::time::Instant::now();
    let r = json_of(
        &memex(
            data,
            &url,
            &[
                "--llm-rate",
                "1",
                "ask",
                "--merchant",
                "MID001",
                "--json",
                "Look up three payments",
            ],
        )
        .await,
    );
    let elapsed = started.elapsed();
    assert_eq!(r["answer"], "Done.", "{r}");
    assert_eq!(server.request_count(), 4);
    assert!(
        elapsed >= std::time::Duration::from_millis(900),
        "four requests at 1/s with a burst of 3 took only {elapsed:?}"
    );

    let bad = memex(
        data,
        &url,
        &["--llm-rate", "fast", "ask", "--merchant", "MID001", "hi"],
    )
    .await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--llm-rate"));
}

/// An ambiguous message: the model asks the merchant one question (the built-in `ask_user`)
/// instead of guessing. `ask --json` reports `clarification: {question}`, never a tool call; a
/// call the model made beside it does not run; the reply continues the session with the
/// question in the history; `stats` counts the clarification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_message_gets_one_clarifying_question_not_a_tool_call() {
    let server = FakeOpenAi::start().await;
    let url = server.base_url();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    json_of(&memex(data, &url, &["init", "--demo", "--json"]).await);

    server.push(Reply::tool_calls(&[
        (
            "call_q",
            "ask_user",
            r#"{"question": "You have several recent payments. Which one should be refunded: pay_ABC123 or another?"}"#,
        ),
        (
            "call_r",
            "initiate_refund",
            r#"{"transaction_id": "pay_ABC123", "amount": 100, "reason": "guess"}"#,
        ),
    ]));
    let r = json_of(
        &memex(
            data,
            &url,
            &[
                "ask",
                "--merchant",
                "MID001",
                "--json",
                "refund my last payment",
            ],
        )
        .await,
    );
    let question = r["clarification"]["question"].as_str().unwrap();
    assert!(question.contains("Which one"), "{r}");
    assert_eq!(r["answer"], question);
    assert_eq!(
        r["tool_calls"],
        serde_json::json!([]),
        "a clarification is no tool call"
    );
    assert!(r["pending_action"].is_null(), "nothing was held: {r}");
    // The model was offered ask_user beside the real tools.
    let body = server.requests().last().unwrap().body.clone();
    assert!(body.to_string().contains("\"ask_user\""), "{body}");

    // The merchant answers; the question is in the history the model sees.
    let session = r["session"].as_str().unwrap();
    server.push(Reply::text("Thanks; I will look at pay_ABC123."));
    let next = json_of(
        &memex(
            data,
            &url,
            &[
                "ask",
                "--merchant",
                "MID001",
                "--session",
                session,
                "--json",
                "pay_ABC123",
            ],
        )
        .await,
    );
    assert!(next["clarification"].is_null());
    let body = server.requests().last().unwrap().body.to_string();
    assert!(body.contains("Which one should be refunded"), "{body}");

    let stats = json_of(&memex(data, &url, &["stats", "--json"]).await);
    assert_eq!(stats["clarifications"], 1, "{stats}");
    assert!(
        (stats["clarification_rate"].as_f64().unwrap() - 0.5).abs() < 1e-9,
        "{stats}"
    );
    let audit = json_of(&memex(data, &url, &["audit", "--session", session, "--json"]).await);
    assert!(
        !audit.to_string().contains("initiate_refund"),
        "the refund beside the question never reached the gate: {audit}"
    );
}

/// The shared tool cache (`--shared-tool-cache`) on a Redis state, through separate `memex`
/// processes (as separate workers): a second session's `get_transaction` for the same id is a
/// cache hit that never reaches the payments database; another merchant's identical call does
/// not hit it; an approved refund of the merchant clears it, so the next read runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_tool_cache_spans_sessions_and_workers_and_a_refund_clears_it() {
    let redis = redis_support::RedisServer::spawn();
    let server = FakeOpenAi::start().await;
    let url = server.base_url();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let run = |args: &[&str]| {
        let mut cmd = cli::command(data, &url, args);
        cmd.env("MEMEX_STATE_URL", redis.url())
            .env("MEMEX_SHARED_TOOL_CACHE", "true")
            .env("MEMEX_TOOL_CACHE_TTL", "get_transaction=600");
        let out = cmd.output().expect("memex runs");
        json_of(&out)
    };
    run(&["init", "--demo", "--json"]);
    let lookup = |merchant: &'static str, txn: &'static str| {
        server
            .push(Reply::tool_calls(&[(
                "call_1",
                "get_transaction",
                &format!(r#"{{"transaction_id":"{txn}"}}"#),
            )]))
            .push(Reply::text("Looked it up."));
        let r = run(&[
            "ask",
            "--merchant",
            merchant,
            "--json",
            "where is my payment?",
        ]);
        r["tool_calls"][0]["status"].as_str().unwrap().to_string()
    };
    assert_eq!(lookup("MID001", "pay_ABC123"), "ok", "the first read runs");
    assert_eq!(
        lookup("MID001", "pay_ABC123"),
        "cached",
        "another session, another process: a hit"
    );
    // Another merchant asking the same never sees MID001's cached result.
    let other = lookup("MID002", "pay_ABC123");
    assert_ne!(other, "cached", "never shared between merchants");

    // A refund of MID001, approved: its cached reads are gone.
    server.push(Reply::tool_calls(&[(
        "call_r",
        "initiate_refund",
        r#"{"transaction_id": "pay_ABC123", "amount": 100, "reason": "customer cancelled"}"#,
    )]));
    let held = run(&[
        "ask",
        "--merchant",
        "MID001",
        "--json",
        "refund 100 of pay_ABC123",
    ]);
    let session = held["session"].as_str().unwrap().to_string();
    let action = held["pending_action"]["id"].as_str().unwrap().to_string();
    server.push(Reply::text("Refunded."));
    run(&["approve", "--session", &session, &action, "--json"]);
    assert_eq!(
        lookup("MID001", "pay_ABC123"),
        "ok",
        "the refund cleared the cached read"
    );
    assert_eq!(lookup("MID001", "pay_ABC123"), "cached");
}

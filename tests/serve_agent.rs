//! The agent routes of `memex serve` (real binary, loopback, reqwest) against the fake
//! OpenAI-compatible server: ask as JSON and as SSE (event order, the `done` payload), the
//! approval matrix, audit and actions, plans, and 64 concurrent clients mixing searches,
//! episode writes and asks.

use crate::support::fake_openai;
use crate::support::serve;

use fake_openai::{FakeOpenAi, Reply};
use serde_json::{json, Value};
use serve::{client, create_key, memex_json, Server};

async fn body(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

/// Parses an SSE body into (event, data as JSON) pairs.
fn sse_events(text: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut name = None;
        let mut data = String::new();
        for line in block.lines() {
            if let Some(n) = line.strip_prefix("event:") {
                name = Some(n.trim().to_owned());
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
            }
        }
        if let Some(n) = name {
            out.push((
                n,
                serde_json::from_str(&data).unwrap_or(Value::String(data)),
            ));
        }
    }
    out
}

fn init_demo(data: &std::path::Path, url: &str) {
    let v = memex_json(data, Some(url), &["init", "--demo"]);
    assert_eq!(v["payments"]["transactions_added"], 60, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ask_json_and_sse_approvals_audit_actions_and_plans() {
    let llm = FakeOpenAi::start().await;
    let url = llm.base_url();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_path_buf();
    let d2 = data.clone();
    let u2 = url.clone();
    tokio::task::spawn_blocking(move || init_demo(&d2, &u2))
        .await
        .expect("init");
    let (_, m1) = create_key(&data, &["--merchant", "MID001"]);
    let (_, m2) = create_key(&data, &["--merchant", "MID002"]);
    let (_, admin) = create_key(&data, &["--admin"]);
    let server = Server::start(&data, Some(&url), &[]);
    let a = client(&m1);
    let b = client(&m2);
    let adm = client(&admin);

    // JSON: a tool call, then the answer — the `ask --json` object.
    llm.push(Reply::tool_calls(&[(
        "call_1",
        "get_transaction",
        r#"{"transaction_id":"pay_ABC123"}"#,
    )]))
    .push(Reply::text("pay_ABC123 settles on T+2."));
    let (s, r) = body(
        a.post(server.url("/v1/merchants/MID001/ask"))
            .json(&json!({"message": "Where is the settlement for pay_ABC123?"}))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let session = r["session"].as_str().expect("session").to_owned();
    assert_eq!(r["merchant"], "MID001");
    assert_eq!(r["turns"], 1);
    assert!(r["answer"].as_str().expect("answer").contains("T+2"));
    assert_eq!(r["tool_calls"][0]["status"], "ok");
    for key in ["kb", "episodes", "summary"] {
        assert!(r["memory"].get(key).is_some(), "memory lacks {key}");
    }

    // Another merchant cannot continue that session, nor read its audit.
    let (s, _) = body(
        b.post(server.url("/v1/merchants/MID002/ask"))
            .json(&json!({"message": "hi", "session": session}))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 404);
    let (s, v) = body(
        b.get(server.url(&format!("/v1/sessions/{session}/audit")))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 404, "{v}");
    let (s, audit) = body(
        a.get(server.url(&format!("/v1/sessions/{session}/audit")))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200);
    let cli_audit = memex_json(&data, Some(&url), &["audit", "--session", &session]);
    assert_eq!(audit, cli_audit, "audit equals `memex audit --json`");
    assert_eq!(audit[0]["tool"], "get_transaction");

    // SSE: memory, tool_call, tool_result, delta…, done (the whole ask object).
    llm.push(Reply::sse_tool_calls(
        &[(
            "call_2",
            "get_transaction",
            r#"{"transaction_id":"pay_ABC123"}"#,
        )],
        2,
    ))
    .push(Reply::sse_text(&["It was ", "captured on ", "2026-03-28."]));
    let resp = a
        .post(server.url("/v1/merchants/MID001/ask"))
        .header("accept", "text/event-stream")
        .json(&json!({"message": "When was pay_ABC123 captured?", "session": session}))
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 200);
    assert!(resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream")));
    let events = sse_events(&resp.text().await.expect("sse"));
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let pos = |n: &str| names.iter().position(|x| *x == n).unwrap_or(usize::MAX);
    assert_eq!(names.first(), Some(&"memory"), "{names:?}");
    assert!(pos("memory") < pos("tool_call"), "{names:?}");
    assert!(pos("tool_call") < pos("tool_result"), "{names:?}");
    assert!(pos("tool_result") < pos("delta"), "{names:?}");
    assert_eq!(names.last(), Some(&"done"), "{names:?}");
    let done = &events.last().expect("done").1;
    assert_eq!(done["session"], session.as_str());
    assert_eq!(done["turns"], 2);
    let streamed: String = events
        .iter()
        .filter(|(n, _)| n == "delta")
        .map(|(_, d)| d["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(streamed, done["answer"].as_str().expect("answer"));
    assert!(streamed.contains("2026-03-28"));
    assert_eq!(events[pos("tool_call")].1["tool"], "get_transaction");

    // A refund: pending, listed for the admin, not approvable by the merchant's own key.
    llm.push(Reply::tool_calls(&[(
        "call_3",
        "initiate_refund",
        r#"{"transaction_id":"pay_ABC123","amount":1000,"reason":"partial refund requested"}"#,
    )]));
    let (s, r) = body(
        a.post(server.url("/v1/merchants/MID001/ask"))
            .json(&json!({"message": "Refund 1000 of pay_ABC123. yes, I confirm", "session": session}))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let action = r["pending_action"]["id"]
        .as_str()
        .expect("pending")
        .to_owned();
    let (s, v) = body(
        a.post(server.url(&format!("/v1/actions/{action}/approve")))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 403, "a merchant key approved its own refund: {v}");
    let (s, pending) = body(
        adm.get(server.url("/v1/actions?status=pending"))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200);
    assert!(pending
        .as_array()
        .expect("array")
        .iter()
        .any(|p| p["id"] == action.as_str() && p["tool"] == "initiate_refund"));
    llm.push(Reply::text("The refund of 1000 INR is on its way."));
    let (s, r) = body(
        adm.post(server.url(&format!("/v1/actions/{action}/approve")))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["session"], session.as_str());
    assert!(r["answer"].as_str().expect("answer").contains("refund"));
    let (s, again) = body(
        adm.post(server.url(&format!("/v1/actions/{action}/reject")))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 409, "{again}");
    let (s, pending) = body(
        adm.get(server.url("/v1/actions"))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200);
    assert!(!pending
        .as_array()
        .expect("array")
        .iter()
        .any(|p| p["id"] == action.as_str()));
    let (s, _) = body(
        adm.post(server.url("/v1/actions/act_missing/approve"))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 404);

    // Plans: a dry run is planned and stored; its merchant sees it, another does not.
    llm.push(Reply::text(
        &json!({"steps": [
            {"id": "1", "description": "Look up the payment", "tool": "get_transaction",
             "args": {"transaction_id": "pay_ABC123"}, "depends_on": []}
        ]})
        .to_string(),
    ));
    let (s, plan) = body(
        a.post(server.url("/v1/merchants/MID001/plans"))
            .json(&json!({"task": "look up pay_ABC123", "dry_run": true}))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200, "{plan}");
    let plan_id = plan["plan_id"].as_str().expect("plan id").to_owned();
    assert_eq!(plan["steps"][0]["status"], "pending");
    let (s, shown) = body(
        a.get(server.url(&format!("/v1/plans/{plan_id}")))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(shown["plan_id"], plan_id.as_str());
    let cli = memex_json(&data, Some(&url), &["plan", "show", &plan_id]);
    assert_eq!(
        shown, cli,
        "GET /v1/plans/{{id}} equals `memex plan show --json`"
    );
    let (s, _) = body(
        b.get(server.url(&format!("/v1/plans/{plan_id}")))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = body(
        b.post(server.url(&format!("/v1/plans/{plan_id}/resume")))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 404);
    llm.push(Reply::text("Looked up pay_ABC123."));
    let (s, done) = body(
        a.post(server.url(&format!("/v1/plans/{plan_id}/resume")))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200, "{done}");
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["steps"][0]["status"], "done");

    let metrics = adm
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("req")
        .text()
        .await
        .expect("text");
    // Every series also carries the worker label (`worker="…"`, last in name order).
    assert!(
        metrics.contains("memex_tool_calls_total{status=\"ok\",worker=\""),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l
            .starts_with("memex_approvals_total{decision=\"approved\",worker=\"")
            && l.ends_with("} 1")),
        "{metrics}"
    );
    assert!(metrics.contains("memex_llm_tokens"), "{metrics}");
}

/// A bad session id (empty, 1.5 MB, or a path with a NUL) is refused with 400 before anything
/// is written: no session row is kept, the model is never called, and `memex forget` for the
/// merchant then succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_session_ids_get_400_and_write_nothing() {
    let llm = FakeOpenAi::start().await;
    let url = llm.base_url();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_path_buf();
    let d2 = data.clone();
    let u2 = url.clone();
    tokio::task::spawn_blocking(move || init_demo(&d2, &u2))
        .await
        .expect("init");
    let (_, m1) = create_key(&data, &["--merchant", "MID001"]);
    let server = Server::start(&data, Some(&url), &[]);
    let a = client(&m1);
    let huge = "s".repeat(1_500_000);
    for bad in ["", huge.as_str(), "../x\u{0}y"] {
        let (s, v) = body(
            a.post(server.url("/v1/merchants/MID001/ask"))
                .json(&json!({"message": "refund please", "session": bad}))
                .send()
                .await
                .expect("req"),
        )
        .await;
        assert_eq!(
            s,
            400,
            "{}",
            v.to_string().chars().take(300).collect::<String>()
        );
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("session id"), "{message}");
        assert!(message.len() < 300, "the error stays short");
    }
    // The audit route refuses a bad id the same way.
    let (s, _) = body(
        a.get(server.url("/v1/sessions/%0A/audit"))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 400);
    drop(server);
    let db = rusqlite::Connection::open(data.join("agent.db")).expect("agent.db");
    let sessions: i64 = db
        .query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0))
        .expect("count");
    assert_eq!(sessions, 0, "nothing was written for a bad id");
    let v = memex_json(&data, Some(&url), &["forget", "--merchant", "MID001"]);
    assert_eq!(v["skipped"], json!([]), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn sixty_four_concurrent_clients_mixing_search_episode_writes_and_asks() {
    let llm = FakeOpenAi::start().await;
    llm.set_fallback(Reply::text("Settlements arrive on T+2."));
    let url = llm.base_url();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_path_buf();
    let d2 = data.clone();
    let u2 = url.clone();
    tokio::task::spawn_blocking(move || init_demo(&d2, &u2))
        .await
        .expect("init");
    let (_, key) = create_key(&data, &["--merchant", "MID001"]);
    let server = Server::start(&data, Some(&url), &[]);
    let c = client(&key);
    let mut tasks = Vec::new();
    for i in 0..64u32 {
        let c = c.clone();
        let base = server.base.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for j in 0..3u32 {
                let resp = match (i + j) % 3 {
                    0 => c
                        .post(format!("{base}/v1/search"))
                        .json(&json!({"query": format!("settlement timeline {i}"), "k": 3}))
                        .send()
                        .await,
                    1 => c
                        .post(format!("{base}/v1/merchants/MID001/episodes"))
                        .json(&json!({"summary": format!("client {i} write {j}: asked about a refund")}))
                        .send()
                        .await,
                    _ => c
                        .post(format!("{base}/v1/merchants/MID001/ask"))
                        .json(&json!({"message": format!("When do settlements arrive? ({i})")}))
                        .send()
                        .await,
                };
                let resp = resp.expect("request sent");
                let status = resp.status().as_u16();
                let v: Value = resp.json().await.unwrap_or(Value::Null);
                assert!(status < 500, "5xx under load: {status} {v}");
                assert_eq!(status, 200, "{v}");
                if (i + j) % 3 == 1 {
                    acked.push(v["id"].as_str().expect("id").to_owned());
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.expect("client"));
    }
    assert_eq!(acked.len(), 64);
    let stored = memex_json(
        &data,
        None,
        &[
            "episodes",
            "list",
            "--merchant",
            "MID001",
            "--limit",
            "10000",
        ],
    );
    let stored: Vec<&str> = stored
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["id"].as_str().expect("id"))
        .collect();
    for id in &acked {
        assert!(
            stored.contains(&id.as_str()),
            "acknowledged episode {id} is missing"
        );
    }
}

//! Three `memex serve` workers sharing one Redis for their agent state (`--state`) and their
//! conversations and episodes (`--episodic`), each with its own data directory, the demo
//! payments database shared on this host (`--payments-db`), driven through the fake
//! OpenAI-compatible server: a refund held on worker A and approved concurrently on B and C
//! runs exactly once; a session that alternates workers turn by turn keeps its memory.

use crate::support::fake_openai;
use crate::support::redis as redis_support;
use crate::support::serve;

use std::path::{Path, PathBuf};

use fake_openai::{FakeOpenAi, Reply};
use serde_json::{json, Value};
use serve::{client, memex_command, Server};

async fn body(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

/// The flags every worker and CLI call shares.
fn shared_flags(redis: &str, payments: &Path) -> Vec<String> {
    vec![
        "--state".into(),
        redis.into(),
        "--episodic".into(),
        redis.into(),
        "--payments-db".into(),
        payments.display().to_string(),
    ]
}

/// `memex FLAGS… ARGS --json` in `data`.
fn memex_json(data: &Path, llm: Option<&str>, flags: &[String], args: &[&str]) -> Value {
    let mut all: Vec<&str> = flags.iter().map(String::as_str).collect();
    all.extend_from_slice(args);
    let out = memex_command(data, llm, &all)
        .arg("--json")
        .output()
        .expect("memex runs");
    assert!(
        out.status.success(),
        "memex {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

struct Cluster {
    _dirs: tempfile::TempDir,
    _redis: redis_support::RedisServer,
    workers: Vec<Server>,
    payments: PathBuf,
    admin: String,
    merchant: String,
}

fn start_cluster(llm: &str) -> Cluster {
    let redis = redis_support::RedisServer::spawn();
    let dirs = tempfile::tempdir().expect("tempdir");
    let payments = dirs.path().join("payments.db");
    let flags = shared_flags(&redis.url(), &payments);
    let datas: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .map(|n| dirs.path().join(n))
        .collect();
    for d in &datas {
        memex_json(d, Some(llm), &flags, &["init", "--demo"]);
    }
    // Keys are created once, on the shared state, from any data directory.
    let admin = memex_json(&datas[0], None, &flags, &["keys", "create", "--admin"]);
    let merchant = memex_json(
        &datas[1],
        None,
        &flags,
        &["keys", "create", "--merchant", "MID001"],
    );
    let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let workers = datas
        .iter()
        .map(|d| Server::start(d, Some(llm), &flag_refs))
        .collect();
    Cluster {
        _dirs: dirs,
        _redis: redis,
        workers,
        payments,
        admin: admin["key"].as_str().expect("key").to_owned(),
        merchant: merchant["key"].as_str().expect("key").to_owned(),
    }
}

fn refunds(payments: &Path, key: &str) -> i64 {
    let db = rusqlite::Connection::open(payments).expect("payments db");
    db.query_row(
        "SELECT COUNT(*) FROM refunds WHERE idempotency_key = ?1",
        [key],
        |r| r.get(0),
    )
    .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_held_on_a_is_approved_once_across_b_and_c() {
    let llm = FakeOpenAi::start().await;
    let url = llm.base_url();
    let u2 = url.clone();
    let c = tokio::task::spawn_blocking(move || start_cluster(&u2))
        .await
        .expect("cluster");
    let (m, adm) = (client(&c.merchant), client(&c.admin));

    llm.push(Reply::tool_calls(&[(
        "call_1",
        "initiate_refund",
        r#"{"transaction_id":"pay_ABC123","amount":1000,"reason":"partial refund requested"}"#,
    )]));
    let (s, r) = body(
        m.post(c.workers[0].url("/v1/merchants/MID001/ask"))
            .json(&json!({"message": "Refund 1000 of pay_ABC123. yes, I confirm"}))
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
    // Worker C lists the action held on A.
    let (s, pending) = body(
        adm.get(c.workers[2].url("/v1/actions?status=pending"))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200, "{pending}");
    assert!(pending
        .as_array()
        .expect("array")
        .iter()
        .any(|p| p["id"] == action.as_str()));

    llm.set_fallback(Reply::text("The refund of 1000 INR is on its way."));
    let approve = |w: usize| {
        adm.post(c.workers[w].url(&format!("/v1/actions/{action}/approve")))
            .send()
    };
    let (rb, rc) = tokio::join!(approve(1), approve(2));
    let (sb, vb) = body(rb.expect("req")).await;
    let (sc, vc) = body(rc.expect("req")).await;
    // One approval runs the refund; the other is told it was already decided/executed (409
    // while the first still runs, or 200 "already approved … not run again" once it is done).
    let ran_now = |s: u16, v: &Value| {
        s == 200
            && !v["answer"]
                .as_str()
                .unwrap_or_default()
                .contains("not run again")
    };
    let consistent_refusal = |s: u16, v: &Value| {
        let text = v.to_string();
        (s == 409 && (text.contains("already") || text.contains("busy")))
            || (s == 200 && text.contains("not run again"))
    };
    assert!(
        (ran_now(sb, &vb) && consistent_refusal(sc, &vc))
            || (ran_now(sc, &vc) && consistent_refusal(sb, &vb)),
        "B: {sb} {vb}; C: {sc} {vc}"
    );
    assert_eq!(refunds(&c.payments, &action), 1, "exactly one refund");

    // Every worker now sees it executed: a third approval, on A, runs nothing.
    let (s, v) = body(approve(0).await.expect("req")).await;
    assert!(consistent_refusal(s, &v), "{s} {v}");
    assert_eq!(refunds(&c.payments, &action), 1);
    let (s, v) = body(
        adm.get(c.workers[1].url("/v1/actions?status=executed"))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(v
        .as_array()
        .expect("array")
        .iter()
        .any(|p| p["id"] == action.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_alternating_workers_keeps_its_first_turn() {
    let llm = FakeOpenAi::start().await;
    let url = llm.base_url();
    let u2 = url.clone();
    let c = tokio::task::spawn_blocking(move || start_cluster(&u2))
        .await
        .expect("cluster");
    let m = client(&c.merchant);
    llm.set_fallback(Reply::text("Noted."));
    let fact = "my settlement account ends in 4417-ZEBRA";
    let mut session: Option<String> = None;
    let messages = [
        format!("Please remember: {fact}."),
        "What is the settlement cycle?".to_string(),
        "And for UPI?".to_string(),
        "Which account did I mention at the start?".to_string(),
    ];
    for (i, msg) in messages.iter().enumerate() {
        let w = &c.workers[i % 3];
        let mut req = json!({"message": msg});
        if let Some(s) = &session {
            req["session"] = json!(s);
        }
        let (s, r) = body(
            m.post(w.url("/v1/merchants/MID001/ask"))
                .json(&req)
                .send()
                .await
                .expect("req"),
        )
        .await;
        assert_eq!(s, 200, "turn {} on worker {}: {r}", i + 1, i % 3);
        assert_eq!(r["turns"], i + 1, "{r}");
        session = Some(r["session"].as_str().expect("session").to_owned());
    }
    let requests = llm.requests();
    let last = requests.last().expect("the model was called");
    assert!(
        last.body.to_string().contains("4417-ZEBRA"),
        "the last request lacks turn 1's fact: {}",
        last.body
    );
    // The audit and turn count live on the shared state: any worker reports them.
    let session = session.expect("session");
    let (s, _) = body(
        m.get(c.workers[2].url(&format!("/v1/sessions/{session}/audit")))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200);
}

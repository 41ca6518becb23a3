//! `memex mcp` driven by the official MCP Python SDK (PyPI `mcp`, from `scripts/pyclients.sh`)
//! over both transports: stdio (`memex mcp --merchant MID`) and streamable HTTP (`memex mcp
//! --http ADDR`, and the library's `/mcp` service with bearer keys deciding the merchant, as
//! `memex serve` mounts it). Tools and annotations, KB search equal to `memex search --json`,
//! episodes saved and recalled, merchant isolation, an irreversible tool that only creates a
//! pending action which `memex approve` executes exactly once, and tool errors for bad calls.

use crate::support::cli;
use crate::support::fake_openai;
use crate::support::model;
use crate::support::serve;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use cli::{json_of, memex};
use fake_openai::{FakeOpenAi, Reply};
use serde_json::{json, Value};

/// The interpreter with the pinned `mcp` SDK: `$MEMEX_TEST_PYTHON`, else the venv that
/// `scripts/pyclients.sh` creates. Missing: the test fails (it never skips).
fn python() -> PathBuf {
    let p = std::env::var_os("MEMEX_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pyclients/bin/python")
        });
    assert!(
        p.is_file(),
        "no Python with the MCP SDK at {}: run `bash scripts/pyclients.sh` (or set MEMEX_TEST_PYTHON)",
        p.display()
    );
    p
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/mcp_client.py")
}

/// Runs the Python MCP client with `transport` arguments and `calls`; returns its JSON.
async fn client(transport: Vec<String>, calls: Value) -> Value {
    client_in("session", transport, calls).await
}

/// [`client`] with the SDK's high-level `Client` in `mode` (`auto`: discover, then fall back;
/// `legacy`: the handshake), or `session` for `ClientSession` + `initialize()`.
async fn client_in(mode: &str, transport: Vec<String>, calls: Value) -> Value {
    let mut cmd = Command::new(python());
    cmd.arg(script())
        .arg("--mode")
        .arg(mode)
        .arg("--calls")
        .arg(calls.to_string())
        .args(transport)
        .env("MEMEX_MODEL_DIR", model::model_dir())
        .env_remove("MEMEX_EPISODIC_URL")
        .env_remove("MEMEX_JSON");
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("python runs"))
        .await
        .expect("the client's thread finishes");
    assert!(
        out.status.success(),
        "the MCP client failed ({:?}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the MCP client printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `--stdio memex --data-dir DATA mcp --merchant MID`.
fn stdio(data: &Path, merchant: &str) -> Vec<String> {
    vec![
        "--stdio".into(),
        env!("CARGO_BIN_EXE_memex").into(),
        "--data-dir".into(),
        data.display().to_string(),
        "mcp".into(),
        "--merchant".into(),
        merchant.into(),
    ]
}

fn http(url: &str, bearer: Option<&str>) -> Vec<String> {
    let mut v = vec!["--url".to_string(), url.to_string()];
    if let Some(b) = bearer {
        v.push("--bearer".into());
        v.push(b.into());
    }
    v
}

/// A data directory with the payments demo (`memex init --demo`).
async fn demo(url: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let init = json_of(&memex(dir.path(), url, &["init", "--demo", "--json"]).await);
    assert!(init["kb"]["chunks_added"].as_u64().unwrap() > 0);
    dir
}

fn tool<'a>(listing: &'a Value, name: &str) -> &'a Value {
    listing["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tool {name} in {}", listing["tools"]))
}

/// Names, schemas and annotations of the listing.
fn check_listing(listing: &Value) {
    let names: Vec<&str> = listing["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for want in [
        "search_knowledge_base",
        "recall_episodes",
        "save_episode",
        "get_transaction",
        "get_merchant_account",
        "create_support_ticket",
        "initiate_refund",
    ] {
        assert_eq!(
            names.iter().filter(|n| **n == want).count(),
            1,
            "{want} once in {names:?}"
        );
    }
    assert_eq!(listing["server"]["name"], "memex");
    let search = tool(listing, "search_knowledge_base");
    assert_eq!(search["inputSchema"]["type"], "object");
    assert_eq!(search["inputSchema"]["required"], json!(["query"]));
    assert_eq!(
        search["inputSchema"]["properties"]["k"]["type"], "integer",
        "{search}"
    );
    let hints = |name: &str| {
        let a = &tool(listing, name)["annotations"];
        (
            a["readOnlyHint"].as_bool(),
            a["destructiveHint"].as_bool(),
            a["idempotentHint"].as_bool(),
        )
    };
    assert_eq!(
        hints("search_knowledge_base"),
        (Some(true), Some(false), Some(true))
    );
    assert_eq!(
        hints("recall_episodes"),
        (Some(true), Some(false), Some(true))
    );
    assert_eq!(
        hints("get_transaction"),
        (Some(true), Some(false), Some(true))
    );
    assert_eq!(
        hints("save_episode"),
        (Some(false), Some(false), Some(false))
    );
    assert_eq!(
        hints("initiate_refund"),
        (Some(false), Some(true), Some(false))
    );
    let refund = tool(listing, "initiate_refund");
    assert!(refund["description"]
        .as_str()
        .unwrap()
        .contains("memex approve"));
    assert_eq!(
        refund["inputSchema"]["required"],
        json!(["transaction_id", "amount", "reason"])
    );
}

fn result(out: &Value, i: usize) -> &Value {
    &out["results"][i]
}

/// A successful call's value (structured content, equal to its JSON text).
fn ok(out: &Value, i: usize) -> &Value {
    let r = result(out, i);
    assert_eq!(r["is_error"], false, "call {i} failed: {r}");
    let text: Value = serde_json::from_str(r["text"].as_str().unwrap()).unwrap();
    assert!(
        same_json(&text, &r["structured"]),
        "the text content is the structured JSON: {text} vs {}",
        r["structured"]
    );
    &r["structured"]
}

/// JSON equality where numbers compare by value (a JavaScript client turns `1.0` into `1`).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_json(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// A failed call's message.
fn err(out: &Value, i: usize) -> String {
    let r = result(out, i);
    assert_eq!(r["is_error"], true, "call {i} should be a tool error: {r}");
    r["text"].as_str().unwrap().to_string()
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

/// Everything but approval over stdio; then `memex approve` executes the held refund once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_serves_memory_and_domain_tools_for_one_merchant() {
    let server = FakeOpenAi::start().await;
    let url = server.base_url();
    let dir = demo(&url).await;
    let data = dir.path();

    let calls = json!([
        {"tool": "search_knowledge_base", "args": {"query": "refund timeline for UPI", "k": 3}},
        {"tool": "save_episode", "args": {"summary": "Over MCP: merchant asked why the UPI refund for pay_ABC123 is slow; explained the 5-7 day timeline", "metadata": {"via": "mcp"}}},
        {"tool": "recall_episodes", "args": {"query": "UPI refund slow pay_ABC123", "k": 3}},
        {"tool": "get_transaction", "args": {"transaction_id": "pay_ABC123"}},
        {"tool": "initiate_refund", "args": {"transaction_id": "pay_ABC123", "amount": 100, "reason": "customer cancelled"}},
        {"tool": "search_knowledge_base", "args": {"query": 5}},
        {"tool": "initiate_refund", "args": {"transaction_id": "pay_ABC123"}},
        {"tool": "no_such_tool", "args": {}},
        {"tool": "save_episode", "args": {"summary": "   "}},
    ]);
    let a = client(stdio(data, "MID001"), calls).await;
    check_listing(&a);

    // The knowledge base: the same hits as `memex search --json`.
    let cli_hits = json_of(
        &memex(
            data,
            &url,
            &["search", "--json", "-k", "3", "refund timeline for UPI"],
        )
        .await,
    );
    let hits = &ok(&a, 0)["results"];
    assert_eq!(hits.as_array().unwrap().len(), 3);
    for (mcp, cli) in hits
        .as_array()
        .unwrap()
        .iter()
        .zip(cli_hits.as_array().unwrap())
    {
        for key in [
            "chunk_id",
            "source",
            "heading",
            "text",
            "line_start",
            "line_end",
        ] {
            assert_eq!(mcp[key], cli[key], "{key}");
        }
        let (x, y) = (
            mcp["score"].as_f64().unwrap(),
            cli["score"].as_f64().unwrap(),
        );
        assert!((x - y).abs() < 1e-6, "score {x} vs {y}");
    }

    // Episodes: saved for MID001, recalled by meaning, listed by the CLI.
    let saved = ok(&a, 1);
    assert_eq!(saved["merchant_id"], "MID001");
    assert_eq!(saved["metadata"]["via"], "mcp");
    let episode_id = saved["id"].as_str().unwrap().to_string();
    let recalled = ok(&a, 2);
    assert_eq!(
        recalled["similar"][0]["id"],
        episode_id.as_str(),
        "{recalled}"
    );
    assert!(recalled["similar"][0]["score"].as_f64().unwrap() > 0.0);
    assert!(ids(&recalled["recent"]).contains(&episode_id));
    let listed = json_of(
        &memex(
            data,
            &url,
            &["episodes", "list", "--merchant", "MID001", "--json"],
        )
        .await,
    );
    assert!(ids(&listed).contains(&episode_id));

    // A read-only domain tool runs for this merchant.
    let txn = ok(&a, 3);
    assert_eq!(txn["id"], "pay_ABC123", "{txn}");
    assert_eq!(txn["refunded_amount"], 0);

    // The irreversible tool only creates a pending action.
    let pending = ok(&a, 4);
    assert_eq!(pending["status"], "pending_approval");
    let action = pending["action_id"].as_str().unwrap().to_string();
    assert!(action.starts_with("act_"), "{pending}");
    let session = pending["session"].as_str().unwrap().to_string();
    assert!(session.starts_with("mcp_"));

    // Bad calls are tool errors with a clear message.
    let e = err(&a, 5);
    assert!(e.contains("invalid_args") && e.contains("query"), "{e}");
    let e = err(&a, 6);
    assert!(e.contains("amount") && e.contains("reason"), "{e}");
    let e = err(&a, 7);
    assert!(
        e.contains("unknown tool") && e.contains("search_knowledge_base"),
        "{e}"
    );
    let e = err(&a, 8);
    assert!(e.contains("summary"), "{e}");

    // The audit log of the MCP session records the calls.
    let audit = json_of(&memex(data, &url, &["audit", "--session", &session, "--json"]).await);
    let statuses: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert!(statuses.contains(&"pending_approval"), "{audit}");

    // Merchant B sees neither A's episode nor A's payment, and nothing was refunded yet.
    let b = client(
        stdio(data, "MID002"),
        json!([
            {"tool": "recall_episodes", "args": {"query": "UPI refund slow pay_ABC123", "k": 50}},
            {"tool": "get_transaction", "args": {"transaction_id": "pay_ABC123"}},
            {"tool": "initiate_refund", "args": {"transaction_id": "pay_ABC123", "amount": 100, "reason": "customer cancelled"}},
        ]),
    )
    .await;
    let recalled = ok(&b, 0);
    for list in ["similar", "recent"] {
        for e in recalled[list].as_array().unwrap() {
            assert_eq!(e["merchant_id"], "MID002", "{e}");
            assert_ne!(e["id"], episode_id.as_str());
        }
    }
    let e = err(&b, 1);
    assert!(e.contains("not_found"), "{e}");
    // B's refund request is held too; executing it would find no such payment for MID002.
    let b_action = ok(&b, 2)["action_id"].as_str().unwrap().to_string();

    // A human approves A's action through the CLI: it executes exactly once.
    server.set_fallback(Reply::text("The refund of INR 100 was issued."));
    let out = memex(data, &url, &["approve", &action]).await;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with(&format!("executed: initiate_refund (action {action})")),
        "{stdout}"
    );
    let again = memex(data, &url, &["approve", &action]).await;
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("already decided earlier"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    // B's approval runs in B's scope: pay_ABC123 is not B's payment.
    let out_b = memex(data, &url, &["approve", &b_action]).await;
    assert!(
        String::from_utf8_lossy(&out_b.stdout).starts_with("failed: initiate_refund"),
        "{}",
        String::from_utf8_lossy(&out_b.stdout)
    );

    let after = client(
        stdio(data, "MID001"),
        json!([{"tool": "get_transaction", "args": {"transaction_id": "pay_ABC123"}}]),
    )
    .await;
    let txn = ok(&after, 0);
    assert_eq!(txn["refunded_amount"], 100, "refunded once: {txn}");
    assert_eq!(txn["refunds"].as_array().unwrap().len(), 1);
}

/// stdout of `memex mcp` carries JSON-RPC only, even with logs raised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_stdout_is_only_json_rpc() {
    let server = FakeOpenAi::start().await;
    let url = server.base_url();
    let dir = demo(&url).await;
    let mut child = cli::command(dir.path(), &url, &["mcp", "--merchant", "MID001"])
        .env("MEMEX_LOG", "debug")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let lines = [
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"}}}),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
            "name": "get_merchant_account", "arguments": {}}}),
    ];
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("stdout line is not JSON-RPC ({e}): {line}"));
            assert_eq!(v["jsonrpc"], "2.0", "{line}");
            seen.push(v);
            // Answers may come in any order: read until both requests (2 and 3) are answered.
            if [2, 3].iter().all(|id| seen.iter().any(|s| s["id"] == *id)) {
                break;
            }
        }
        seen
    });
    for l in &lines {
        writeln!(stdin, "{l}").unwrap();
    }
    stdin.flush().unwrap();
    let seen = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    drop(stdin);
    let _ = child.wait();
    let account = seen.iter().find(|v| v["id"] == 3).unwrap();
    let text = account["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("MID001"), "{text}");
    assert_eq!(seen.iter().filter(|v| v["id"] == 2).count(), 1);
}

/// A `memex mcp --http` child process and the address it listens on.
struct HttpServer {
    child: Child,
    addr: SocketAddr,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_http(data: &Path, url: &str, merchant: &str) -> HttpServer {
    let mut child = cli::command(
        data,
        url,
        &["mcp", "--merchant", merchant, "--http", "127.0.0.1:0"],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("memex mcp --http printed `listening on ADDR`")
            .unwrap();
        if let Some(a) = line.strip_prefix("listening on ") {
            break a.trim().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    HttpServer { child, addr }
}

/// `memex mcp --http`: the same tools over streamable HTTP, one merchant per server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamable_http_from_the_binary() {
    let server = FakeOpenAi::start().await;
    let url = server.base_url();
    let dir = demo(&url).await;
    let data = dir.path();

    let refused = memex(
        data,
        &url,
        &["mcp", "--merchant", "MID001", "--http", "0.0.0.0:0"],
    )
    .await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("loopback"));

    let a = spawn_http(data, &url, "MID001");
    let out = client(
        http(&format!("http://{}/mcp", a.addr), None),
        json!([
            {"tool": "save_episode", "args": {"summary": "HTTP MCP: merchant asked to move payouts to weekly"}},
            {"tool": "recall_episodes", "args": {"query": "weekly payouts", "k": 2}},
            {"tool": "initiate_refund", "args": {"transaction_id": "pay_ABC123", "amount": 50, "reason": "duplicate charge"}},
            {"tool": "search_knowledge_base", "args": {"query": "refund", "k": 0}},
        ]),
    )
    .await;
    check_listing(&out);
    let id = ok(&out, 0)["id"].as_str().unwrap().to_string();
    assert_eq!(ok(&out, 1)["similar"][0]["id"], id.as_str());
    assert_eq!(ok(&out, 2)["status"], "pending_approval");
    assert!(err(&out, 3).contains("k"));

    let b = spawn_http(data, &url, "MID002");
    let out = client(
        http(&format!("http://{}/mcp", b.addr), None),
        json!([{"tool": "recall_episodes", "args": {"query": "weekly payouts", "k": 50}}]),
    )
    .await;
    let r = ok(&out, 0);
    assert!(!ids(&r["similar"]).contains(&id) && !ids(&r["recent"]).contains(&id));
}

/// The library's `/mcp` service as `memex serve` mounts it: the bearer key decides the
/// merchant, a missing or unknown key gets 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_service_takes_the_merchant_from_the_bearer_key() {
    use memex::merchant::MerchantId;
    let server = FakeOpenAi::start().await;
    let url = server.base_url();
    let dir = demo(&url).await;
    let data = dir.path().to_path_buf();

    let deps = Arc::new(build_deps(&data).await);
    let merchant_of: memex::mcp::http::MerchantOf = Arc::new(|parts: &http::request::Parts| {
        let key = parts
            .headers
            .get(http::header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?;
        match key {
            "key-a" => MerchantId::parse("MID001").ok(),
            "key-b" => MerchantId::parse("MID002").ok(),
            _ => None,
        }
    });
    let service = memex::mcp::http::streamable_http_service(deps, merchant_of);
    let app = axum::Router::new().route_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(async move { axum::serve(listener, app).await });
    let mcp_url = format!("http://{addr}/mcp");

    let a = client(
        http(&mcp_url, Some("key-a")),
        json!([
            {"tool": "save_episode", "args": {"summary": "Bearer MCP: merchant wants settlement reports by email"}},
            {"tool": "get_transaction", "args": {"transaction_id": "pay_ABC123"}},
        ]),
    )
    .await;
    check_listing(&a);
    let id = ok(&a, 0)["id"].as_str().unwrap().to_string();
    assert_eq!(ok(&a, 0)["merchant_id"], "MID001");
    assert_eq!(ok(&a, 1)["id"], "pay_ABC123");

    let b = client(
        http(&mcp_url, Some("key-b")),
        json!([
            {"tool": "recall_episodes", "args": {"query": "settlement reports by email", "k": 50}},
            {"tool": "get_transaction", "args": {"transaction_id": "pay_ABC123"}},
        ]),
    )
    .await;
    let r = ok(&b, 0);
    assert!(!ids(&r["similar"]).contains(&id) && !ids(&r["recent"]).contains(&id));
    assert!(err(&b, 1).contains("not_found"));

    for bearer in [Some("wrong-key"), None] {
        let refused = client(http(&mcp_url, bearer), json!([])).await;
        let e = refused["error"].as_str().unwrap_or_default();
        assert!(!e.is_empty(), "{refused}");
        assert!(!e.contains("wrong-key"), "the key is never echoed: {e}");
    }
    // The raw answer: 401 with a JSON-RPC error body.
    let raw = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        write!(
            s,
            "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer nope\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert!(raw.starts_with("HTTP/1.1 401"), "{raw}");
    let body: Value = serde_json::from_str(raw.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["error"]["code"], -32001);

    // A session belongs to the merchant that opened it: another key cannot use it.
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .unwrap();
    let post = |key: &str, session: Option<&str>, body: Value| {
        let mut req = http
            .post(&mcp_url)
            .bearer_auth(key)
            .header("Accept", "application/json, text/event-stream")
            .header("MCP-Protocol-Version", "2025-06-18")
            .json(&body);
        if let Some(s) = session {
            req = req.header("Mcp-Session-Id", s);
        }
        req.send()
    };
    let init = post(
        "key-a",
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"}}}),
    )
    .await
    .unwrap();
    assert!(init.status().is_success(), "{}", init.status());
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let _ = init.text().await.unwrap();
    let note = post(
        "key-a",
        Some(&session),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await
    .unwrap();
    assert!(note.status().is_success(), "{}", note.status());
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                      "params": {"name": "get_merchant_account", "arguments": {}}});
    // To another merchant the session does not exist: rmcp's 404 for an unknown session.
    let as_b = post("key-b", Some(&session), call.clone()).await.unwrap();
    assert_eq!(as_b.status().as_u16(), 404);
    let as_b = as_b.text().await.unwrap();
    assert_eq!(as_b, "Not Found: Session not found");
    let as_a = post("key-a", Some(&session), call)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(as_a.contains("MID001"), "{as_a}");
    serving.abort();
}

/// The MCP dependencies over the demo data directory, built as `memex mcp` builds them.
async fn build_deps(data: &Path) -> memex::mcp::McpDeps {
    use memex::domain::payments::KbSearch;
    use memex::domain::payments::{payments_tools, PaymentsDb};
    use memex::embed::Embedder;
    let embedder: Arc<dyn Embedder> = Arc::new(model::embedder());
    let kb = Arc::new(memex::kb::KnowledgeBase::open(data, Arc::clone(&embedder)).unwrap());
    let episodes = memex::episodic::open(None, data).await.unwrap();
    let payments = Arc::new(PaymentsDb::open_in_dir(data).unwrap());
    let domain = payments_tools(payments, Arc::new(KbSearch(Arc::clone(&kb))));
    let store = Arc::new(memex::agent::AgentStore::open_in(data).unwrap());
    memex::mcp::McpDeps::new(embedder, Some(kb), episodes, domain, store).unwrap()
}

/// `memex serve` mounts the MCP service at `/mcp` behind its own bearer keys: a merchant key's
/// MCP session acts for that merchant only, an irreversible tool is held for an admin's
/// approval over HTTP, and an admin key (no merchant), a revoked key or no key get nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memex_serve_serves_mcp_at_slash_mcp_with_the_bearer_key_deciding_the_merchant() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let init = serve::memex_json(data, None, &["init", "--demo"]);
    assert!(init["kb"]["chunks_added"].as_u64().unwrap() > 0, "{init}");
    let (_, key_a) = serve::create_key(data, &["--merchant", "MID001"]);
    let (b_id, key_b) = serve::create_key(data, &["--merchant", "MID002"]);
    let (_, admin) = serve::create_key(data, &["--admin"]);
    let server = serve::Server::start(data, None, &[]);
    let mcp_url = server.url("/mcp");

    let a = client(
        http(&mcp_url, Some(&key_a)),
        json!([
            {"tool": "save_episode", "args": {"summary": "Served MCP: merchant wants payout alerts by SMS"}},
            {"tool": "get_transaction", "args": {"transaction_id": "pay_ABC123"}},
            {"tool": "initiate_refund", "args": {"transaction_id": "pay_ABC123", "amount": 100, "reason": "customer cancelled"}},
            {"tool": "search_knowledge_base", "args": {"query": "what does GATEWAY_ERROR mean", "k": 3}},
        ]),
    )
    .await;
    check_listing(&a);
    let episode = ok(&a, 0)["id"].as_str().unwrap().to_string();
    assert_eq!(ok(&a, 0)["merchant_id"], "MID001");
    assert_eq!(ok(&a, 1)["id"], "pay_ABC123");
    let held = ok(&a, 2);
    assert_eq!(held["status"], "pending_approval", "{held}");
    let action = held["action_id"].as_str().unwrap().to_string();
    assert_eq!(ok(&a, 3)["results"].as_array().expect("hits").len(), 3);

    // B sees neither A's episode nor A's payment.
    let b = client(
        http(&mcp_url, Some(&key_b)),
        json!([
            {"tool": "recall_episodes", "args": {"query": "payout alerts by SMS", "k": 50}},
            {"tool": "get_transaction", "args": {"transaction_id": "pay_ABC123"}},
        ]),
    )
    .await;
    let r = ok(&b, 0);
    assert!(!ids(&r["similar"]).contains(&episode) && !ids(&r["recent"]).contains(&episode));
    assert!(err(&b, 1).contains("not_found"));

    // The held refund is an admin's to decide, over HTTP; the merchant's key cannot.
    let http_client = |key: &str| {
        reqwest::Client::builder()
            .default_headers({
                let mut h = reqwest::header::HeaderMap::new();
                h.insert(
                    reqwest::header::AUTHORIZATION,
                    format!("Bearer {key}").parse().unwrap(),
                );
                h
            })
            .build()
            .unwrap()
    };
    let pending: Value = http_client(&admin)
        .get(server.url("/v1/actions?status=pending"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(pending.to_string().contains(&action), "{pending}");
    let denied = http_client(&key_a)
        .post(server.url(&format!("/v1/actions/{action}/approve")))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status().as_u16(), 403);

    // /mcp has the server's body limit (2 MiB by default): a request declaring a bigger body
    // is answered 413 before any of it is read. Sent by hand over TCP: the server answers and
    // closes without reading the body, so a client still writing 3 MiB sees a broken pipe
    // instead of the answer (a race that failed CI once).
    let status_line = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let host = server.base.trim_start_matches("http://").to_string();
        let mut tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
        let head = format!(
            "POST /mcp HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {key_a}\r\n\
             content-type: application/json\r\naccept: application/json, text/event-stream\r\n\
             content-length: {}\r\n\r\n",
            3 * 1024 * 1024
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        let read = async {
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), read)
            .await
            .expect("the server answers an oversized request without waiting for its body");
        let text = String::from_utf8_lossy(&answer).to_string();
        text.lines().next().unwrap_or_default().to_string()
    };
    assert!(status_line.starts_with("HTTP/1.1 413"), "{status_line}");

    // An admin key has no merchant: /mcp refuses it, as it refuses a revoked key and no key.
    let revoked = serve::memex_command(data, None, &["keys", "revoke", &b_id])
        .output()
        .unwrap();
    assert!(revoked.status.success());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    for bearer in [Some(admin.as_str()), Some(key_b.as_str()), None] {
        let refused = client(http(&mcp_url, bearer), json!([])).await;
        let e = refused["error"].as_str().unwrap_or_default();
        assert!(!e.is_empty(), "{refused}");
        if let Some(k) = bearer {
            assert!(!e.contains(k), "the key is never echoed: {e}");
        }
    }
}

/// Every MCP call goes through the agent's one guarded call path: an identical write repeated
/// on one MCP session makes one ticket (the loop guard answers the rest with the earlier
/// result), a burst of distinct writes meets the per-tool rate limit, and every call leaves an
/// audit row under the connection's `mcp_…` session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_calls_go_through_the_guarded_call_path() {
    let server = FakeOpenAi::start().await;
    let url = server.base_url();
    let dir = demo(&url).await;
    let data = dir.path();
    let ticket = |subject: &str| {
        json!({"tool": "create_support_ticket", "args": {
            "subject": subject,
            "description": "The merchant reports a settlement that did not arrive.",
            "priority": "medium",
            "type": "settlement"}})
    };
    let mut calls: Vec<Value> = (0..12).map(|_| ticket("gate-same-ticket")).collect();
    calls.extend((0..40).map(|i| ticket(&format!("gate-burst-{i:02}"))));
    let out = client(stdio(data, "MID001"), Value::Array(calls)).await;
    let results = out["results"].as_array().unwrap();
    assert_eq!(results.len(), 52);

    // The first identical call made the ticket; the eleven repeats were not made again.
    assert_eq!(results[0]["is_error"], false, "{}", results[0]);
    for r in &results[1..12] {
        let text = r["text"].as_str().unwrap();
        assert!(
            r["is_error"] == true && text.contains("loop_detected"),
            "a repeated write must be refused: {r}"
        );
    }
    let payments = rusqlite::Connection::open(data.join("payments.db")).unwrap();
    let count = |pattern: &str| -> i64 {
        payments
            .query_row(
                "SELECT COUNT(*) FROM tickets WHERE merchant_id = 'MID001' AND subject LIKE ?1",
                [pattern],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(
        count("gate-same-ticket"),
        1,
        "one ticket for twelve identical calls"
    );

    // Forty distinct writes back to back: the tool's token bucket refuses some of them.
    let limited = results[12..]
        .iter()
        .filter(|r| r["is_error"] == true && r["text"].as_str().unwrap().contains("rate_limited"))
        .count();
    let made = count("gate-burst-%");
    assert!(limited > 0, "no call was rate limited: {results:?}");
    assert_eq!(
        made as usize + limited,
        40,
        "each call either ran or was limited"
    );

    // Every call is in the audit log, under the connection's session.
    let agent = rusqlite::Connection::open(data.join("agent.db")).unwrap();
    let audited: i64 = agent
        .query_row(
            "SELECT COUNT(*) FROM audit WHERE session_id LIKE 'mcp\\_%' ESCAPE '\\' \
             AND merchant_id = 'MID001' AND tool = 'create_support_ticket'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(audited, 52, "one audit row per call");
}

/// The calls every SDK client makes in [`every_sdk_client_on_both_transports`].
fn sdk_calls(tag: &str) -> Value {
    json!([
        {"tool": "search_knowledge_base", "args": {"query": "refund timeline for UPI", "k": 3}},
        {"tool": "save_episode", "args": {"summary": format!("{tag}: merchant asked about the UPI refund timeline")}},
        {"tool": "recall_episodes", "args": {"query": "UPI refund timeline", "k": 5}},
        {"tool": "initiate_refund", "args": {"transaction_id": "pay_ABC123", "amount": 100, "reason": format!("{tag} customer cancelled")}},
        {"tool": "get_merchant_account", "args": {"merchant_id": "MID002"}},
        {"tool": "search_knowledge_base", "args": {"query": 5}},
    ])
}

/// What every SDK client must have seen: tools with output schemas, results that validate
/// against them (the SDK checks `structuredContent`), a refund held pending, another
/// merchant's account refused, and errors in the HTTP API's `{error: {code, message}}` shape.
fn check_sdk_run(out: &Value, tag: &str) {
    assert!(
        out.get("error").is_none(),
        "{tag}: the client failed: {out}"
    );
    for t in out["tools"].as_array().unwrap() {
        assert_eq!(t["outputSchema"]["type"], "object", "{tag}: {t}");
    }
    for r in out["results"].as_array().unwrap() {
        assert!(r.get("client_error").is_none(), "{tag}: {r}");
    }
    assert_eq!(ok(out, 0)["results"].as_array().unwrap().len(), 3, "{tag}");
    let episode = ok(out, 1)["id"].as_str().unwrap().to_string();
    assert!(ids(&ok(out, 2)["recent"]).contains(&episode), "{tag}");
    let held = ok(out, 3);
    assert_eq!(held["status"], "pending_approval", "{tag}: {held}");
    assert!(held["action_id"].as_str().unwrap().starts_with("act_"));
    assert!(err(out, 4).contains("not_found"), "{tag}");
    assert_eq!(
        result(out, 4)["structured"]["error"]["code"],
        "not_found",
        "{tag}"
    );
    let bad = &result(out, 5)["structured"]["error"];
    assert_eq!(bad["code"], "invalid_args", "{tag}: {bad}");
    assert!(bad["message"].is_string());
}

/// The official Python SDK's default `Client` (auto: `server/discover`, falling back to the
/// handshake where needed), its `mode="legacy"`, and `ClientSession` + `initialize()`, over stdio
/// (`memex mcp`) and over `memex serve`'s `/mcp` with a merchant key: each lists the tools and
/// calls the memory tools and the refund, which stays pending. Auto settles on 2026-07-28,
/// legacy on a handshake-era revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sdk_client_on_both_transports() {
    let llm = FakeOpenAi::start().await;
    let url = llm.base_url();
    let dir = demo(&url).await;
    let data = dir.path();
    let (_, key_a) = serve::create_key(data, &["--merchant", "MID001"]);
    let server = serve::Server::start(data, None, &[]);
    let mcp_url = server.url("/mcp");
    for mode in ["auto", "legacy", "session"] {
        for (name, transport) in [
            ("stdio", stdio(data, "MID001")),
            ("http", http(&mcp_url, Some(&key_a))),
        ] {
            let tag = format!("{mode}-{name}");
            let out = client_in(mode, transport, sdk_calls(&tag)).await;
            check_sdk_run(&out, &tag);
            match mode {
                "auto" => assert_eq!(out["protocol_version"], "2026-07-28", "{tag}"),
                "legacy" => {
                    let v = out["protocol_version"].as_str().unwrap();
                    assert!(v < "2026-07-28", "{tag}: {v}");
                }
                _ => {}
            }
        }
    }
    // Every refund asked for is pending, none ran.
    let payments = rusqlite::Connection::open(data.join("payments.db")).unwrap();
    let refunds: i64 = payments
        .query_row(
            "SELECT COUNT(*) FROM refunds WHERE reason LIKE '%customer cancelled'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(refunds, 0, "no refund ran from MCP");
    // A session-less (2026-07-28) request has no Mcp-Session-Id: the merchant still comes from
    // the key on every request, so B's key never sees A's episodes.
    let (_, key_b) = serve::create_key(data, &["--merchant", "MID002"]);
    let b = client_in(
        "auto",
        http(&mcp_url, Some(&key_b)),
        json!([{"tool": "recall_episodes", "args": {"query": "UPI refund timeline", "k": 50}}]),
    )
    .await;
    assert_eq!(b["protocol_version"], "2026-07-28");
    let seen = ok(&b, 0).to_string();
    assert!(
        !seen.contains("MID001") && !seen.contains("auto-http"),
        "{seen}"
    );
}

/// Raw JSON-RPC over stdio, as a 2026-07-28 client probes: `server/discover` first is answered
/// with the supported revisions (and cache hints), and the connection stays open for either
/// lifecycle: a handshake after it works, as does a session-less request after a probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_answers_server_discover_first_then_either_lifecycle() {
    let llm = FakeOpenAi::start().await;
    let url = llm.base_url();
    let dir = demo(&url).await;
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"},
    });
    let scripts = [
        // discover, then the handshake.
        vec![
            json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": meta}}),
            json!({"jsonrpc": "2.0", "id": 2, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"}}}),
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
                "name": "get_merchant_account", "arguments": {}}}),
        ],
        // discover, then a session-less request carrying its own _meta.
        vec![
            json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": meta}}),
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
                "name": "get_merchant_account", "arguments": {}, "_meta": meta}}),
        ],
    ];
    for lines in scripts {
        let mut child = cli::command(dir.path(), &url, &["mcp", "--merchant", "MID001"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON-RPC ({e}): {line}"));
                seen.push(v);
                if seen.iter().any(|s| s["id"] == 3) {
                    break;
                }
            }
            seen
        });
        for l in &lines {
            writeln!(stdin, "{l}").unwrap();
        }
        stdin.flush().unwrap();
        let seen = tokio::task::spawn_blocking(move || reader.join().unwrap())
            .await
            .unwrap();
        drop(stdin);
        let _ = child.wait();
        let discover = seen
            .iter()
            .find(|v| v["id"] == 1)
            .expect("discover answered");
        let versions = discover["result"]["supportedVersions"].as_array().unwrap();
        assert!(versions.contains(&json!("2026-07-28")), "{discover}");
        assert!(versions.contains(&json!("2025-11-25")), "{discover}");
        assert!(discover["result"]["ttlMs"].is_u64(), "{discover}");
        assert_eq!(discover["result"]["cacheScope"], "private", "{discover}");
        let account = seen.iter().find(|v| v["id"] == 3).expect("call answered");
        let text = account["result"]["content"][0]["text"].as_str().unwrap();
        assert!(text.contains("MID001"), "{account}");
    }
}

/// The TypeScript SDK's client (`tests/js/mcp_client.mjs`, npm `@modelcontextprotocol/sdk` from
/// `scripts/jsclients.sh`) with `transport` arguments and `calls`.
async fn ts_client(transport: Vec<String>, calls: Value) -> Value {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let sdk = std::env::var_os("MEMEX_JS_CLIENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("target/jsclients"));
    assert!(
        sdk.join("node_modules/@modelcontextprotocol/sdk").is_dir(),
        "no MCP TypeScript SDK at {}: run `bash scripts/jsclients.sh`",
        sdk.display()
    );
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("tests/js/mcp_client.mjs"))
        .arg("--calls")
        .arg(calls.to_string())
        .args(transport)
        .env("MEMEX_JS_CLIENTS", &sdk)
        .env("MEMEX_MODEL_DIR", model::model_dir())
        .env_remove("MEMEX_EPISODIC_URL")
        .env_remove("MEMEX_JSON");
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("node runs"))
        .await
        .expect("joined");
    assert!(
        out.status.success(),
        "the TypeScript client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON from the TypeScript client ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The official TypeScript SDK's `Client` (a handshake-era client) over stdio and over `memex
/// serve`'s `/mcp`: the same calls, output schemas, pending refund and isolation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_sdk_client_on_both_transports() {
    let llm = FakeOpenAi::start().await;
    let url = llm.base_url();
    let dir = demo(&url).await;
    let data = dir.path();
    let (_, key_a) = serve::create_key(data, &["--merchant", "MID001"]);
    let server = serve::Server::start(data, None, &[]);
    let mcp_url = server.url("/mcp");
    for (name, transport) in [
        ("ts-stdio", stdio(data, "MID001")),
        ("ts-http", http(&mcp_url, Some(&key_a))),
    ] {
        let out = ts_client(transport, sdk_calls(name)).await;
        check_sdk_run(&out, name);
        assert_eq!(out["server"]["name"], "memex", "{name}");
    }
    // No key, or an admin key: refused, nothing served.
    let refused = ts_client(http(&mcp_url, None), json!([])).await;
    assert!(refused["error"].is_string(), "{refused}");
}

/// The fenced block after `<!-- ci:NAME -->` in README.md.
fn readme_snippet(name: &str) -> String {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .expect("README.md");
    let marker = format!("<!-- ci:{name} -->");
    let after = &readme[readme.find(&marker).expect("marker in README")..];
    let start = after.find("```python\n").expect("python block") + "```python\n".len();
    let body = &after[start..];
    body[..body.find("```").expect("block end")].to_string()
}

/// The README's MCP snippets, exactly as written, run with the official Python SDK: over stdio
/// (`memex` on PATH, run from the folder holding `.memex`) and over `memex serve`'s `/mcp` with a
/// merchant key. Both settle on the current revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_mcp_snippets_run() {
    let llm = FakeOpenAi::start().await;
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join(".memex");
    json_of(&memex(&data, &llm.base_url(), &["init", "--demo", "--json"]).await);
    let (_, key) = serve::create_key(&data, &["--merchant", "MID001"]);
    let server = serve::Server::start(&data, None, &[]);
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_memex"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for name in ["mcp-stdio", "mcp-http"] {
        let file = work.path().join(format!("{name}.py"));
        std::fs::write(&file, readme_snippet(name)).unwrap();
        let mut cmd = Command::new(python());
        cmd.arg(&file)
            .current_dir(work.path())
            .env("PATH", &path)
            .env("MEMEX_KEY", &key)
            .env("MEMEX_MCP_URL", server.url("/mcp"))
            .env_remove("MEMEX_DATA_DIR")
            .env_remove("MEMEX_EPISODIC_URL");
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{name}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("2026-07-28"), "{name}: {stdout}");
    }
}

//! What memex adds to a call to an outside tool: the `CallGate` (validation, merchant binding,
//! loop guard, cache lookup, rate limit, audit row in SQLite, metrics) plus memex's client for
//! the source, against calling the same server directly from the same process.
//!
//! * OpenAPI: an axum service in this process (`GET /v1/orders/{id}?merchant_id=`, its
//!   `openapi.json`); direct = one `reqwest` GET; memex = `CallGate::call` on the tool
//!   `[[tools.openapi]]` makes of it.
//! * MCP: `tests/py/faulty_tools.py mcp` (the official Python SDK) over stdio, tool
//!   `plain_text`; direct = an rmcp client's `call_tool`; memex = `CallGate::call` on the tool
//!   `[[tools.mcp]]` makes (each side has its own server process).
//!
//! Calls alternate direct/memex; every call has new arguments, so the cache never answers.
//! `cargo run --release --example tool_overhead -- [CALLS]` (Python: `$MEMEX_TEST_PYTHON`,
//! else `target/pyclients/bin/python`; run `scripts/pyclients.sh` first).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query};
use axum::routing::get;
use axum::Json;
use memex::agent::{AgentConfig, AgentStore, CallRequest, NoHook, NoLoopGuard, Silent};
use memex::merchant::MerchantId;
use memex::sources::{assemble, McpSourceConfig, OpenApiSourceConfig, Reachability, ToolsConfig};
use rmcp::model::CallToolRequestParams;
use rmcp::service::ServiceExt;
use serde_json::{json, Value};

fn spec(port: u16) -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {"title": "bench", "version": "1"},
        "servers": [{"url": format!("http://127.0.0.1:{port}")}],
        "paths": {"/v1/orders/{order_id}": {"get": {
            "operationId": "lookup_order",
            "summary": "Look up an order",
            "parameters": [
                {"name": "order_id", "in": "path", "required": true, "schema": {"type": "string"}},
                {"name": "merchant_id", "in": "query", "required": true, "schema": {"type": "string"}}
            ]
        }}}
    })
}

fn pct(mut v: Vec<Duration>, p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e6
}

fn report(what: &str, direct: Vec<Duration>, memex: Vec<Duration>) {
    let (d50, d99) = (pct(direct.clone(), 0.5), pct(direct, 0.99));
    let (m50, m99) = (pct(memex.clone(), 0.5), pct(memex, 0.99));
    println!(
        "{what:8} direct p50 {d50:8.1} µs p99 {d99:8.1} µs | memex p50 {m50:8.1} µs p99 {m99:8.1} µs | added p50 {:7.1} µs p99 {:7.1} µs",
        m50 - d50,
        m99 - d99
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let calls: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var_os("MEMEX_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/pyclients/bin/python"));

    // The OpenAPI service, in process.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let doc = spec(port);
    let app = axum::Router::new()
        .route("/openapi.json", get(move || async move { Json(doc) }))
        .route(
            "/v1/orders/{order_id}",
            get(
                |Path(id): Path<String>,
                 Query(q): Query<std::collections::HashMap<String, String>>| async move {
                    Json(json!({"order_id": id, "merchant_id": q.get("merchant_id"), "status": "paid", "total_cents": 4500}))
                },
            ),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().expect("tempdir");
    let config = ToolsConfig {
        mcp: vec![McpSourceConfig {
            name: "faulty".into(),
            command: Some(vec![
                python.display().to_string(),
                root.join("tests/py/faulty_tools.py").display().to_string(),
                "mcp".into(),
            ]),
            env: Default::default(),
            url: None,
            headers: Default::default(),
            merchant_arg: None,
            irreversible: vec![],
            reversible: vec![],
            tools: Some(vec!["plain_text".into()]),
            timeout_ms: None,
        }],
        openapi: vec![OpenApiSourceConfig {
            name: "bench".into(),
            spec: format!("http://127.0.0.1:{port}/openapi.json"),
            base_url: None,
            operations: None,
            merchant_arg: Some("merchant_id".into()),
            irreversible: vec![],
            headers: Default::default(),
            timeout_ms: None,
        }],
        fallbacks: Default::default(),
    };
    let assembled = assemble(vec![], &config, dir.path(), Reachability::Required)
        .await
        .expect("sources");
    let store = Arc::new(
        AgentStore::open_state(&memex::state::StateUrl::Sqlite(dir.path().join("agent.db")))
            .expect("store"),
    );
    let agent_config = AgentConfig {
        tool_rate: (1e12, 1e12),
        ..AgentConfig::default()
    };
    let policy = agent_config.call_policy();
    let gate = agent_config.call_gate(assembled.registry, store);
    let merchant = MerchantId::parse("m_bench").expect("merchant");

    let http = reqwest::Client::new();
    let mut child = tokio::process::Command::new(&python);
    child.arg(root.join("tests/py/faulty_tools.py")).arg("mcp");
    let mcp_direct =
        ().serve(rmcp::transport::TokioChildProcess::new(child).expect("spawn"))
            .await
            .expect("mcp client");

    let via_gate = |tool: &'static str, raw: String| {
        let gate = &gate;
        let merchant = &merchant;
        let policy = &policy;
        async move {
            let call_id = format!("c{}", uuid::Uuid::new_v4());
            let req = CallRequest {
                merchant,
                session: "bench",
                turn: 1,
                call_id: &call_id,
                tool,
                raw_args: &raw,
                idempotency_key: None,
                policy,
                model: None,
            };
            let t = Instant::now();
            let r = gate
                .call(&req, &mut NoLoopGuard, &NoHook, &Silent)
                .await
                .expect("gate");
            let took = t.elapsed();
            assert!(r.outcome.succeeded(), "{:?}", r.outcome);
            took
        }
    };

    // Warm up both paths.
    for i in 0..50 {
        let _ = via_gate(
            "lookup_order",
            json!({"order_id": format!("w{i}")}).to_string(),
        )
        .await;
        let _ = via_gate("plain_text", json!({"text": format!("w{i}")}).to_string()).await;
    }
    let (mut d_api, mut m_api, mut d_mcp, mut m_mcp) = (vec![], vec![], vec![], vec![]);
    for i in 0..calls {
        let t = Instant::now();
        let body: Value = http
            .get(format!("http://127.0.0.1:{port}/v1/orders/d{i}"))
            .query(&[("merchant_id", "m_bench")])
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        d_api.push(t.elapsed());
        assert_eq!(body["status"], "paid");
        m_api.push(
            via_gate(
                "lookup_order",
                json!({"order_id": format!("o{i}")}).to_string(),
            )
            .await,
        );

        let t = Instant::now();
        let mut p = CallToolRequestParams::new("plain_text");
        p.arguments = json!({"text": format!("d{i}")}).as_object().cloned();
        let r = mcp_direct.call_tool(p).await.expect("call");
        d_mcp.push(t.elapsed());
        assert_ne!(r.is_error, Some(true));
        m_mcp.push(via_gate("plain_text", json!({"text": format!("m{i}")}).to_string()).await);
    }
    println!(
        "{calls} calls each, alternating; gate audits into SQLite ({})",
        dir.path().display()
    );
    report("openapi", d_api, m_api);
    report("mcp", d_mcp, m_mcp);
}

//! Tools from outside memex, declared in memex.toml only: an MCP server written with the
//! official Python SDK (over stdio and streamable HTTP) and a FastAPI service read through its
//! generated `openapi.json` (the shop example in `examples/shop/`), driven through the real
//! binary with a scripted fake model. Checks what the servers themselves saw (their call
//! logs): the merchant memex bound, and irreversible calls run exactly once after approval.

use crate::support::cli;
use crate::support::fake_openai;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cli::json_of;
use fake_openai::{FakeOpenAi, Reply};
use serde_json::{json, Value};

/// The interpreter with the pinned SDKs (mcp, fastapi, uvicorn).
fn python() -> PathBuf {
    let p = std::env::var_os("MEMEX_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pyclients/bin/python")
        });
    assert!(
        p.exists(),
        "no Python with the SDKs at {}: run scripts/pyclients.sh (or set MEMEX_TEST_PYTHON)",
        p.display()
    );
    p
}

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server process killed when dropped.
struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `args` under the test Python with `env`, and waits until `ready` (a URL) answers.
fn start(args: &[&str], env: &[(&str, &Path)], ready: &str) -> Server {
    let mut cmd = Command::new(python());
    cmd.args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let server = Server(cmd.spawn().expect("the server starts"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = std::net::TcpStream::connect_timeout(
            &ready
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap(),
            Duration::from_millis(200),
        )
        .is_ok();
        if up {
            return server;
        }
        assert!(Instant::now() < deadline, "{ready} did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The JSON lines a server logged.
fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `memex --config CONFIG ARGS` with the fake model.
async fn memex(
    data: &Path,
    config: &Path,
    url: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let mut full = vec!["--config", config.to_str().unwrap()];
    full.extend_from_slice(args);
    let mut cmd = cli::command(data, url, &full);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::task::spawn_blocking(move || cmd.output().expect("memex runs"))
        .await
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The shop example's two servers declared for memex: the MCP server over stdio (memex
/// starts it, with its call log passed through `env` and `${VAR}`), the FastAPI service on
/// `port`.
fn shop_config(dir: &Path, port: u16) -> PathBuf {
    let config = dir.join("memex.toml");
    let text = format!(
        r#"domain = "none"
[[tools.mcp]]
name = "orders"
command = ["{py}", "{mcp}"]
env = {{ ORDERS_CALL_LOG = "${{TEST_ORDERS_LOG}}" }}
merchant_arg = "merchant_id"

[[tools.openapi]]
name = "shop"
spec = "http://127.0.0.1:{port}/openapi.json"
base_url = "http://127.0.0.1:{port}"
operations = ["lookup_order", "list_orders", "refund_order", "add_order_note"]
merchant_arg = "merchant_id"
irreversible = ["refund_order"]
"#,
        py = python().display(),
        mcp = repo("examples/shop/orders_mcp.py").display(),
    );
    std::fs::write(&config, text).unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_acts_through_mcp_and_openapi_tools_declared_in_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let shop_log = dir.path().join("shop.jsonl");
    let orders_log = dir.path().join("orders.jsonl");
    let port = free_port();
    let shop_api = || {
        start(
            &[
                repo("examples/shop/shop_api.py").to_str().unwrap(),
                "--port",
                &port.to_string(),
                "--log-level",
                "warning",
            ],
            &[("SHOP_CALL_LOG", &shop_log)],
            &format!("http://127.0.0.1:{port}/openapi.json"),
        )
    };
    let mut api = shop_api();
    let config = shop_config(dir.path(), port);
    let server = FakeOpenAi::start().await;
    let url = server.base_url();
    let orders_env = [("TEST_ORDERS_LOG", orders_log.to_str().unwrap())];

    // tools list: every tool with its source and policy; the merchant argument is hidden.
    let listed = json_of(
        &memex(
            &data,
            &config,
            &url,
            &["tools", "list", "--json"],
            &orders_env,
        )
        .await,
    );
    let by_name = |n: &str| -> Value {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("{n} not listed: {listed}"))
    };
    assert_eq!(by_name("lookup_order")["kind"], "openapi");
    assert_eq!(by_name("lookup_order")["source"], "shop");
    assert_eq!(by_name("lookup_order")["policy"], "read_only");
    assert_eq!(by_name("refund_order")["policy"], "irreversible");
    assert_eq!(by_name("add_order_note")["policy"], "write");
    assert_eq!(by_name("track_shipment")["kind"], "mcp");
    assert_eq!(by_name("track_shipment")["policy"], "read_only");
    assert_eq!(by_name("cancel_order")["policy"], "irreversible");
    assert_eq!(by_name("update_shipping_address")["policy"], "write");
    assert_eq!(by_name("search_knowledge_base")["kind"], "builtin");
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["name"] != "get_transaction"),
        "domain = none drops the payments tools"
    );
    for t in listed.as_array().unwrap() {
        assert!(
            t["parameters"]["properties"].get("merchant_id").is_none(),
            "{t}"
        );
        assert!(
            !t["parameters"].to_string().contains("\"merchant_id\""),
            "{t}"
        );
    }
    assert!(
        by_name("refund_order")["parameters"]["properties"]
            .get("amount_cents")
            .is_some(),
        "body fields are flattened"
    );

    // A read through OpenAPI, with another merchant's id supplied by the model: the service
    // receives the session's merchant, the result reaches the answer, the audit says so.
    server
        .push(Reply::tool_calls(&[(
            "c1",
            "lookup_order",
            r#"{"order_id": "ord_1001", "merchant_id": "shop_beta"}"#,
        )]))
        .push(Reply::text("Order ord_1001 has shipped with DHL."));
    let r = json_of(
        &memex(
            &data,
            &config,
            &url,
            &[
                "ask",
                "--merchant",
                "shop_alpha",
                "--json",
                "Where is ord_1001?",
            ],
            &orders_env,
        )
        .await,
    );
    let call = &r["tool_calls"][0];
    assert_eq!(call["status"], "ok", "{call}");
    assert_eq!(call["result"]["order_id"], "ord_1001");
    assert_eq!(call["result"]["merchant_id"], "shop_alpha");
    assert!(r["answer"].as_str().unwrap().contains("DHL"));
    // The model saw the tool result (the second model request carries it).
    let second = server.requests()[1].body.to_string();
    assert!(
        second.contains("JD014600006281230011"),
        "the order reached the model"
    );
    let seen = log_lines(&shop_log);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["op"], "lookup_order");
    assert_eq!(
        seen[0]["merchant_id"], "shop_alpha",
        "memex bound the merchant, not the model"
    );
    let session = r["session"].as_str().unwrap().to_string();
    let audit = json_of(
        &memex(
            &data,
            &config,
            &url,
            &["audit", "--session", &session, "--json"],
            &orders_env,
        )
        .await,
    );
    let row = &audit[0];
    assert_eq!(row["tool"], "lookup_order");
    assert_eq!(
        row["args"]["$merchant_override"]["model"], "shop_beta",
        "{row}"
    );
    assert_eq!(
        row["args"]["$merchant_override"]["used"], "shop_alpha",
        "{row}"
    );
    assert_eq!(row["args"]["merchant_id"], "shop_alpha");

    // Another merchant's order is not found for this merchant.
    server
        .push(Reply::tool_calls(&[(
            "c2",
            "lookup_order",
            r#"{"order_id": "ord_1005"}"#,
        )]))
        .push(Reply::text("I cannot find that order."));
    let r = json_of(
        &memex(
            &data,
            &config,
            &url,
            &["ask", "--merchant", "shop_alpha", "--json", "ord_1005?"],
            &orders_env,
        )
        .await,
    );
    assert_eq!(r["tool_calls"][0]["status"], "error", "{r}");
    assert_eq!(r["tool_calls"][0]["result"]["error"], "not_found");

    // A path parameter cannot climb out of its segment (`..` would reach another endpoint).
    server
        .push(Reply::tool_calls(&[(
            "c2b",
            "lookup_order",
            r#"{"order_id": ".."}"#,
        )]))
        .push(Reply::text("That is not an order id."));
    let r = json_of(
        &memex(
            &data,
            &config,
            &url,
            &["ask", "--merchant", "shop_alpha", "--json", "order .."],
            &orders_env,
        )
        .await,
    );
    assert_eq!(r["tool_calls"][0]["result"]["error"], "invalid_args", "{r}");

    // A read through the MCP server (stdio, started by memex).
    server
        .push(Reply::tool_calls(&[(
            "c3",
            "track_shipment",
            r#"{"order_id": "ord_1001", "merchant_id": "shop_beta"}"#,
        )]))
        .push(Reply::text("In transit."));
    let r = json_of(
        &memex(
            &data,
            &config,
            &url,
            &[
                "ask",
                "--merchant",
                "shop_alpha",
                "--json",
                "Track ord_1001",
            ],
            &orders_env,
        )
        .await,
    );
    assert_eq!(r["tool_calls"][0]["status"], "ok", "{r}");
    assert_eq!(
        r["tool_calls"][0]["result"]["tracking_number"], "JD014600006281230011",
        "{r}"
    );
    let calls = log_lines(&orders_log);
    assert_eq!(
        calls.last().unwrap()["args"]["merchant_id"],
        "shop_alpha",
        "{calls:?}"
    );

    // An irreversible OpenAPI call is held; approval runs it exactly once on the service.
    server.push(Reply::tool_calls(&[(
        "c4",
        "refund_order",
        r#"{"order_id": "ord_1002", "amount_cents": 1000, "reason": "damaged mug"}"#,
    )]));
    let r = json_of(
        &memex(
            &data,
            &config,
            &url,
            &[
                "ask",
                "--merchant",
                "shop_alpha",
                "--json",
                "Refund 10 EUR on ord_1002",
            ],
            &orders_env,
        )
        .await,
    );
    assert_eq!(r["tool_calls"][0]["status"], "pending_approval", "{r}");
    let action = r["pending_action"]["id"].as_str().unwrap().to_string();
    let session = r["session"].as_str().unwrap().to_string();
    assert!(
        log_lines(&shop_log)
            .iter()
            .all(|l| l["op"] != "refund_order"),
        "nothing ran before approval"
    );
    // The service is down when the operator approves: nothing runs, nothing is failed, and
    // the action can be approved again once the service is back.
    drop(api);
    let out = memex(
        &data,
        &config,
        &url,
        &["approve", "--session", &session, &action, "--json"],
        &orders_env,
    )
    .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("approve it again"),
        "{}",
        stderr(&out)
    );
    api = shop_api();
    server.push(Reply::text("The refund is done."));
    let d = json_of(
        &memex(
            &data,
            &config,
            &url,
            &["approve", "--session", &session, &action, "--json"],
            &orders_env,
        )
        .await,
    );
    assert_eq!(d["tool_calls"][0]["status"], "ok", "{d}");
    assert_eq!(d["tool_calls"][0]["result"]["status"], "refunded", "{d}");
    let again = memex(
        &data,
        &config,
        &url,
        &["approve", "--session", &session, &action, "--json"],
        &orders_env,
    )
    .await;
    let again = String::from_utf8_lossy(&again.stdout).to_string() + &stderr(&again);
    assert!(
        again.contains("already"),
        "approving again runs nothing: {again}"
    );
    let refunds: Vec<Value> = log_lines(&shop_log)
        .into_iter()
        .filter(|l| l["op"] == "refund_order")
        .collect();
    assert_eq!(refunds.len(), 1, "executed exactly once: {refunds:?}");
    assert_eq!(refunds[0]["merchant_id"], "shop_alpha");
    assert_eq!(
        refunds[0]["idempotency_key"],
        action.as_str(),
        "the approval id is the idempotency key"
    );

    // An irreversible MCP tool (no destructiveHint: false) is held the same way.
    server.push(Reply::tool_calls(&[(
        "c5",
        "cancel_order",
        r#"{"order_id": "ord_1002", "reason": "customer asked"}"#,
    )]));
    let r = json_of(
        &memex(
            &data,
            &config,
            &url,
            &[
                "ask",
                "--merchant",
                "shop_alpha",
                "--json",
                "Cancel ord_1002",
            ],
            &orders_env,
        )
        .await,
    );
    assert_eq!(r["tool_calls"][0]["status"], "pending_approval", "{r}");
    let action = r["pending_action"]["id"].as_str().unwrap().to_string();
    let session = r["session"].as_str().unwrap().to_string();
    assert!(log_lines(&orders_log)
        .iter()
        .all(|l| l["tool"] != "cancel_order"));
    server.push(Reply::text("Cancelled."));
    let d = json_of(
        &memex(
            &data,
            &config,
            &url,
            &["approve", "--session", &session, &action, "--json"],
            &orders_env,
        )
        .await,
    );
    assert_eq!(d["tool_calls"][0]["status"], "ok", "{d}");
    let cancels: Vec<Value> = log_lines(&orders_log)
        .into_iter()
        .filter(|l| l["tool"] == "cancel_order")
        .collect();
    assert_eq!(cancels.len(), 1, "{cancels:?}");
    assert_eq!(cancels[0]["args"]["merchant_id"], "shop_alpha");

    // The planner: one plan, steps on both sources.
    let plan = json!({"steps": [
        {"id": "1", "description": "Look up the order", "tool": "lookup_order", "args": {"order_id": "ord_1001"}, "depends_on": []},
        {"id": "2", "description": "Track it", "tool": "track_shipment", "args": {"order_id": {"$ref": "1.result.order_id"}}, "depends_on": ["1"]},
        {"id": "3", "description": "Note it", "tool": "add_order_note", "args": {"order_id": "ord_1001", "note": "customer asked about delivery"}, "depends_on": ["2"]}
    ]});
    server
        .push(Reply::text(&plan.to_string()))
        .push(Reply::text("Tracked and noted."));
    let done = json_of(
        &memex(
            &data,
            &config,
            &url,
            &[
                "plan",
                "--merchant",
                "shop_alpha",
                "--json",
                "track ord_1001 and leave a note",
            ],
            &orders_env,
        )
        .await,
    );
    assert_eq!(done["summary"]["done"], 3, "{done}");
    let notes: Vec<Value> = log_lines(&shop_log)
        .into_iter()
        .filter(|l| l["op"] == "add_order_note")
        .collect();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0]["merchant_id"], "shop_alpha");
    drop(api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_server_over_http_with_a_bearer_token_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let orders_log = dir.path().join("orders.jsonl");
    let port = free_port();
    let mut cmd_env: Vec<(&str, &Path)> = vec![("ORDERS_CALL_LOG", &orders_log)];
    let secret = Path::new("tok-s3cret-42");
    cmd_env.push(("ORDERS_TOKEN", secret));
    let _mcp = start(
        &[
            repo("examples/shop/orders_mcp.py").to_str().unwrap(),
            "--http",
            &port.to_string(),
        ],
        &cmd_env,
        &format!("http://127.0.0.1:{port}/mcp"),
    );
    let config = dir.path().join("memex.toml");
    std::fs::write(
        &config,
        format!(
            r#"domain = "none"
[[tools.mcp]]
name = "orders"
url = "http://127.0.0.1:{port}/mcp"
headers = {{ Authorization = "Bearer ${{TEST_ORDERS_TOKEN}}" }}
merchant_arg = "merchant_id"
reversible = ["cancel_order"]
"#
        ),
    )
    .unwrap();
    let server = FakeOpenAi::start().await;
    let url = server.base_url();

    // The token's variable unset: memex stops at start, naming it.
    let out = memex(&data, &config, &url, &["tools", "list", "--json"], &[]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("TEST_ORDERS_TOKEN"),
        "{}",
        stderr(&out)
    );
    // A wrong token: the server refuses, tools list names the source.
    let out = memex(
        &data,
        &config,
        &url,
        &["tools", "list"],
        &[("TEST_ORDERS_TOKEN", "wrong")],
    )
    .await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("orders"), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("wrong"),
        "the header value is not echoed: {}",
        stderr(&out)
    );

    let env = [("TEST_ORDERS_TOKEN", "tok-s3cret-42")];
    let listed = json_of(&memex(&data, &config, &url, &["tools", "list", "--json"], &env).await);
    let cancel = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "cancel_order")
        .unwrap();
    assert_eq!(
        cancel["policy"], "write",
        "`reversible` overrides destructiveHint"
    );

    // A write (reversible here) runs at once, with the session's merchant.
    server
        .push(Reply::tool_calls(&[(
            "c1",
            "cancel_order",
            r#"{"order_id": "ord_1005", "reason": "dup", "merchant_id": "shop_alpha"}"#,
        )]))
        .push(Reply::text("Cancelled."));
    let out = memex(
        &data,
        &config,
        &url,
        &[
            "ask",
            "--merchant",
            "shop_beta",
            "--json",
            "cancel ord_1005",
        ],
        &env,
    )
    .await;
    let r = json_of(&out);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("tok-s3cret-42"));
    assert!(!stderr(&out).contains("tok-s3cret-42"));
    let call = &r["tool_calls"][0];
    assert_eq!(call["status"], "ok", "a reversible write runs at once: {r}");
    assert_eq!(call["result"]["status"], "cancelled", "{r}");
    assert_eq!(
        call["args"]["$merchant_override"]["model"], "shop_alpha",
        "{r}"
    );
    assert_eq!(
        call["args"]["$merchant_override"]["used"], "shop_beta",
        "{r}"
    );
    let lines = log_lines(&orders_log);
    assert_eq!(lines.len(), 1, "{r} {lines:?}");
    assert_eq!(lines[0]["args"]["merchant_id"], "shop_beta");
}

/// The fault-injection servers of `tests/py/faulty_tools.py`, declared with short timeouts.
fn faulty_config(dir: &Path, api_port: u16, extra: &str) -> PathBuf {
    let config = dir.join("memex.toml");
    let text = format!(
        r#"domain = "none"
[[tools.mcp]]
name = "faulty_mcp"
command = ["{py}", "{script}", "mcp"]
timeout_ms = 1500

[[tools.openapi]]
name = "faulty_api"
spec = "http://127.0.0.1:{api_port}/openapi.json"
timeout_ms = 1500
{extra}
"#,
        py = python().display(),
        script = repo("tests/py/faulty_tools.py").display(),
    );
    std::fs::write(&config, text).unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_times_out_answers_garbage_or_is_down_never_stops_the_turn() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("faulty.jsonl");
    let port = free_port();
    let _api = start(
        &[
            repo("tests/py/faulty_tools.py").to_str().unwrap(),
            "api",
            "--port",
            &port.to_string(),
        ],
        &[("FAULTY_CALL_LOG", &log)],
        &format!("http://127.0.0.1:{port}/openapi.json"),
    );
    let server = FakeOpenAi::start().await;
    let url = server.base_url();

    // No base_url and a document without an absolute server: refused at start, naming it.
    let config = faulty_config(dir.path(), port, "");
    let out = memex(&data, &config, &url, &["tools", "list"], &[]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("faulty_api") && stderr(&out).contains("base_url"),
        "{}",
        stderr(&out)
    );

    let config = faulty_config(
        dir.path(),
        port,
        &format!("base_url = \"http://127.0.0.1:{port}\"\n[tools.fallbacks]\nslow_echo = \"plain_text\"\n"),
    );
    let listed = json_of(&memex(&data, &config, &url, &["tools", "list", "--json"], &[]).await);
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "slow_echo")
        .unwrap()
        .clone();
    assert_eq!(row["fallback"], "plain_text");
    assert_eq!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "explode_write")
            .unwrap()["policy"],
        "write"
    );

    // One turn: a timeout (MCP, read: retried, then its fallback), garbage (OpenAPI), a 503
    // that recovers on retry, a write that fails (not retried), a tool error, plain text.
    server
        .push(Reply::tool_calls(&[
            ("t1", "slow_echo", r#"{"text": "hi", "seconds": 5}"#),
            ("t2", "garbage_lookup", "{}"),
            ("t3", "flaky_lookup", r#"{"fail": 1}"#),
            ("t4", "explode_write", r#"{"text": "x"}"#),
            ("t5", "fails", r#"{"text": "boom"}"#),
            ("t6", "plain_text", r#"{"text": "hello"}"#),
            ("t7", "slow_write", r#"{"seconds": 4}"#),
        ]))
        .push(Reply::text(
            "Some of the tools failed; here is what I found.",
        ));
    let started = Instant::now();
    let out = memex(
        &data,
        &config,
        &url,
        &["ask", "--merchant", "m1", "--json", "try everything"],
        &[],
    )
    .await;
    let r = json_of(&out);
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(
        r["answer"]
            .as_str()
            .unwrap()
            .contains("here is what I found"),
        "{r}"
    );
    let by_id = |id: &str| -> Value {
        r["tool_calls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .cloned()
            .unwrap()
    };
    let slow = by_id("t1");
    assert_eq!(slow["status"], "ok", "the fallback answered: {slow}");
    assert_eq!(slow["result"]["fallback"]["tool"], "plain_text", "{slow}");
    assert_eq!(slow["result"]["fallback"]["for"], "slow_echo");
    assert_eq!(by_id("t2")["status"], "error");
    assert!(
        by_id("t2")["result"]["message"]
            .as_str()
            .unwrap()
            .contains("not JSON"),
        "{}",
        by_id("t2")
    );
    assert_eq!(
        by_id("t3")["status"],
        "ok",
        "the 503 was retried: {}",
        by_id("t3")
    );
    assert_eq!(by_id("t7")["status"], "error");
    assert_eq!(
        by_id("t7")["result"]["error"],
        "unavailable",
        "a write that timed out: {}",
        by_id("t7")
    );
    assert_eq!(by_id("t4")["status"], "error");
    assert_eq!(
        by_id("t4")["result"]["error"],
        "unavailable",
        "{}",
        by_id("t4")
    );
    assert_eq!(by_id("t5")["status"], "error");
    assert!(
        by_id("t5")["result"]["message"]
            .as_str()
            .unwrap()
            .contains("boom"),
        "{}",
        by_id("t5")
    );
    assert_eq!(by_id("t6")["status"], "ok");
    assert!(by_id("t6")["result"].to_string().contains("hello"));
    let lines = log_lines(&log);
    assert_eq!(
        lines.iter().filter(|l| l["op"] == "explode_write").count(),
        1,
        "a failed write is not retried: {lines:?}"
    );
    assert_eq!(
        lines.iter().filter(|l| l["op"] == "flaky_lookup").count(),
        2,
        "{lines:?}"
    );
    assert_eq!(
        lines.iter().filter(|l| l["op"] == "slow_write").count(),
        1,
        "a write that timed out is not retried: {lines:?}"
    );
    // The audit has the failed attempts and the fallback's row.
    let session = r["session"].as_str().unwrap();
    let audit = json_of(
        &memex(
            &data,
            &config,
            &url,
            &["audit", "--session", session, "--json"],
            &[],
        )
        .await,
    );
    let rows = audit.as_array().unwrap();
    assert!(
        rows.iter()
            .filter(|a| a["tool"] == "slow_echo" && a["status"] == "error")
            .count()
            >= 2,
        "the read was retried before its fallback: {audit}"
    );
    assert!(
        rows.iter()
            .any(|a| a["tool"] == "plain_text" && a["call_id"] == "t1" && a["status"] == "ok"),
        "{audit}"
    );

    // The gate's own time limit (--tool-timeout) on an outside write: not retried either.
    server
        .push(Reply::tool_calls(&[(
            "w1",
            "slow_write",
            r#"{"seconds": 3}"#,
        )]))
        .push(Reply::text("The write did not finish."));
    let r = json_of(
        &memex(
            &data,
            &config,
            &url,
            &[
                "ask",
                "--merchant",
                "m1",
                "--json",
                "--tool-timeout",
                "1",
                "write",
            ],
            &[],
        )
        .await,
    );
    assert_eq!(r["tool_calls"][0]["result"]["error"], "unavailable", "{r}");
    let writes = log_lines(&log)
        .iter()
        .filter(|l| l["op"] == "slow_write")
        .count();
    assert_eq!(writes, 2, "one call per turn, never retried");

    // A source that is not running: ask goes on without its tools and says so; tools list
    // fails naming it.
    let dead = free_port();
    let down = dir.path().join("down.toml");
    std::fs::write(
        &down,
        format!("domain = \"none\"\n[[tools.openapi]]\nname = \"gone\"\nspec = \"http://127.0.0.1:{dead}/openapi.json\"\nbase_url = \"http://127.0.0.1:{dead}\"\n[[tools.mcp]]\nname = \"nohost\"\nurl = \"http://127.0.0.1:{dead}/mcp\"\n"),
    )
    .unwrap();
    let out = memex(&data, &down, &url, &["tools", "list"], &[]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("gone") || stderr(&out).contains("nohost"),
        "{}",
        stderr(&out)
    );
    server.push(Reply::text("I can still answer."));
    let out = memex(
        &data,
        &down,
        &url,
        &["ask", "--merchant", "m1", "--json", "hello"],
        &[],
    )
    .await;
    let r = json_of(&out);
    assert_eq!(r["answer"], "I can still answer.");
    assert!(
        stderr(&out).contains("\"gone\" is unavailable"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("\"nohost\" is unavailable"),
        "{}",
        stderr(&out)
    );

    // A stdio "server" that prints garbage.
    let junk = dir.path().join("junk.toml");
    std::fs::write(
        &junk,
        "[[tools.mcp]]\nname = \"junk\"\ncommand = [\"sh\", \"-c\", \"echo not-json; sleep 5\"]\n",
    )
    .unwrap();
    let out = memex(&data, &junk, &url, &["tools", "list"], &[]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("junk"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_declarations_are_refused_at_start_with_one_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let _api = start(
        &[
            repo("tests/py/faulty_tools.py").to_str().unwrap(),
            "api",
            "--port",
            &port.to_string(),
        ],
        &[],
        &format!("http://127.0.0.1:{port}/openapi.json"),
    );
    let server = FakeOpenAi::start().await;
    let url = server.base_url();
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let api = |name: &str| {
        format!("[[tools.openapi]]\nname = \"{name}\"\nspec = \"http://127.0.0.1:{port}/openapi.json\"\nbase_url = \"http://127.0.0.1:{port}\"\n")
    };
    let cases = [
        // Two sources defining one name: both named.
        (write("dup.toml", format!("{}{}", api("one"), api("two"))), vec!["defined twice", "\"one\"", "\"two\""]),
        // A name that clashes with a built-in.
        (write("builtin.toml", format!("{}operations = [\"slow_lookup\"]\n[[tools.openapi]]\nname = \"kb\"\nspec = \"{}\"\n", api("one"), repo("tests/fixtures/openapi_kb_clash.json").display())), vec!["search_knowledge_base", "built-in"]),
        // An unknown key in a source.
        (write("unknown.toml", format!("{}merchant = \"x\"\n", api("one"))), vec!["merchant", "unknown field"]),
        // A fallback for a write, and a loop.
        (write("fb_write.toml", format!("{}[tools.fallbacks]\nexplode_write = \"slow_lookup\"\n", api("one"))), vec!["explode_write", "read-only"]),
        (write("fb_loop.toml", format!("{}[tools.fallbacks]\nslow_lookup = \"flaky_lookup\"\nflaky_lookup = \"slow_lookup\"\n", api("one"))), vec!["loops"]),
        // An operation that is not in the document.
        (write("op.toml", format!("{}operations = [\"nope\"]\n", api("one"))), vec!["nope", "operationId"]),
    ];
    for (config, needles) in cases {
        for args in [
            &["tools", "list"][..],
            &["ask", "--merchant", "m1", "hi"][..],
        ] {
            let out = memex(&data, &config, &url, args, &[]).await;
            assert!(
                !out.status.success(),
                "{} {args:?} should fail",
                config.display()
            );
            let err = stderr(&out);
            for n in &needles {
                assert!(
                    err.contains(n),
                    "{}: {n} missing from: {err}",
                    config.display()
                );
            }
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    assert_eq!(server.request_count(), 0, "nothing reached the model");
}

use crate::support::serve as serve_support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_mcp_offer_the_same_outside_tools_and_any_worker_approves_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let shop_log = dir.path().join("shop.jsonl");
    let orders_log = dir.path().join("orders.jsonl");
    let port = free_port();
    let _api = start(
        &[
            repo("examples/shop/shop_api.py").to_str().unwrap(),
            "--port",
            &port.to_string(),
            "--log-level",
            "warning",
        ],
        &[("SHOP_CALL_LOG", &shop_log)],
        &format!("http://127.0.0.1:{port}/openapi.json"),
    );
    let config = shop_config(dir.path(), port);
    let cfg = config.to_str().unwrap();
    let llm = FakeOpenAi::start().await;
    let url = llm.base_url();
    let (_, merchant_key) = serve_support::create_key(&data, &["--merchant", "shop_alpha"]);
    let (_, admin_key) = serve_support::create_key(&data, &["--admin"]);
    let server = serve_support::Server::start_with_env(
        &data,
        Some(&url),
        &["--config", cfg],
        &[("TEST_ORDERS_LOG", orders_log.to_str().unwrap())],
    );
    let a = serve_support::client(&merchant_key);
    let adm = serve_support::client(&admin_key);

    // The HTTP ask route: an irreversible outside tool is held, with the session's merchant.
    llm.push(Reply::tool_calls(&[(
        "h1",
        "refund_order",
        r#"{"order_id": "ord_1002", "amount_cents": 700, "reason": "late", "merchant_id": "shop_beta"}"#,
    )]));
    let r: Value = a
        .post(server.url("/v1/merchants/shop_alpha/ask"))
        .json(&json!({"message": "refund 7 EUR on ord_1002"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["tool_calls"][0]["status"], "pending_approval", "{r}");
    assert_eq!(
        r["tool_calls"][0]["args"]["$merchant_override"]["model"], "shop_beta",
        "{r}"
    );
    let action = r["pending_action"]["id"].as_str().unwrap().to_string();
    let session = r["session"].as_str().unwrap().to_string();

    // Another worker (the CLI, its own process over the same state) approves it: it runs once.
    llm.push(Reply::text("Refunded 7 EUR."));
    let out = memex(
        &data,
        &config,
        &url,
        &["approve", "--session", &session, &action, "--json"],
        &[("TEST_ORDERS_LOG", orders_log.to_str().unwrap())],
    )
    .await;
    let d = json_of(&out);
    assert_eq!(d["tool_calls"][0]["status"], "ok", "{d}");
    let resp = adm
        .post(server.url(&format!("/v1/actions/{action}/approve")))
        .send()
        .await
        .unwrap();
    // Approving again is answered from the stored result (or refused); it runs nothing.
    assert!(
        matches!(resp.status().as_u16(), 200 | 409),
        "{}",
        resp.status()
    );
    let refunds: Vec<Value> = log_lines(&shop_log)
        .into_iter()
        .filter(|l| l["op"] == "refund_order")
        .collect();
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(refunds[0]["merchant_id"], "shop_alpha");

    // The MCP route of the same server: the outside tools are offered (merchant hidden), and
    // a read through it reaches the service with the key's merchant.
    let out = Command::new(python())
        .arg(repo("tests/py/mcp_client.py"))
        .args(["--url", &server.url("/mcp"), "--bearer", &merchant_key])
        .args(["--calls", r#"[{"tool": "lookup_order", "args": {"order_id": "ord_1002", "merchant_id": "shop_beta"}}]"#])
        .output()
        .unwrap();
    let seen: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    let tools = seen["tools"].as_array().unwrap_or_else(|| panic!("{seen}"));
    let lookup = tools
        .iter()
        .find(|t| t["name"] == "lookup_order")
        .unwrap_or_else(|| panic!("{seen}"));
    assert!(
        lookup["inputSchema"]["properties"]
            .get("merchant_id")
            .is_none(),
        "{lookup}"
    );
    assert!(tools.iter().any(|t| t["name"] == "track_shipment"));
    let result = &seen["results"][0];
    assert_eq!(result["is_error"], false, "{seen}");
    let last = log_lines(&shop_log).into_iter().last().unwrap();
    assert_eq!(last["op"], "lookup_order");
    assert_eq!(last["merchant_id"], "shop_alpha");
    assert!(result.to_string().contains("refunded_cents"), "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_paths_in_a_config_start_from_its_folder_and_stdio_servers_get_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("conf");
    std::fs::create_dir_all(sub.join("bin")).unwrap();
    let env_dump = dir.path().join("env.txt");
    // A relative program (run from the config's folder) that records its environment, then
    // becomes the MCP server.
    let script = sub.join("bin/server.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nenv > \"{}\"\nexec \"{}\" \"{}\" mcp\n",
            env_dump.display(),
            python().display(),
            repo("tests/py/faulty_tools.py").display()
        ),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(
        sub.join("memex.toml"),
        "domain = \"none\"\n[[tools.mcp]]\nname = \"rel\"\ncommand = [\"./bin/server.sh\"]\nenv = { GIVEN = \"yes\" }\n",
    )
    .unwrap();
    let server = FakeOpenAi::start().await;
    let mut cmd = cli::command(
        &dir.path().join("data"),
        &server.base_url(),
        &["--config", "conf/memex.toml", "tools", "list", "--json"],
    );
    cmd.current_dir(dir.path());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let listed = json_of(&out);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "plain_text"),
        "{listed}"
    );
    let env = std::fs::read_to_string(&env_dump).unwrap();
    assert!(env.contains("GIVEN=yes"), "{env}");
    assert!(
        !env.contains(cli::TEST_KEY),
        "memex's API key reached the server: {env}"
    );
    // Exactly PATH, HOME and what `env` names, plus what the shell sets itself.
    let names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    for name in &names {
        assert!(
            ["PATH", "HOME", "GIVEN", "PWD", "OLDPWD", "SHLVL", "_"].contains(name),
            "the server got {name}: {env}"
        );
    }
    assert!(names.contains(&"PATH"));
}

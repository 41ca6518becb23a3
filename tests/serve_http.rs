//! `memex serve` through the real binary on loopback and a real HTTP client (reqwest): keys,
//! the auth matrix, every non-agent route, shapes equal to the CLI's `--json`, limits, the
//! batching queue's 503, SIGTERM under load, and the OpenAI Python SDK.

use crate::support::redis as redis_support;
use crate::support::serve;

use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use serve::{client, create_key, memex_command, memex_json, Server};

async fn body(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

fn assert_error(v: &Value, code: &str) {
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_cli_and_the_auth_matrix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let (a_id, a_key) = create_key(data, &["--merchant", "MID_A", "--name", "bot-a"]);
    let (_b_id, b_key) = create_key(data, &["--merchant", "MID_B"]);
    let (_, admin) = create_key(data, &["--admin"]);
    let created = memex_json(data, None, &["keys", "create", "--admin"]);
    assert_eq!(created["role"], "admin");
    assert!(created["merchant"].is_null());
    assert!(created["key"].as_str().expect("key").starts_with("mx_"));
    let listed = memex_json(data, None, &["keys", "list"]);
    let listed_text = listed.to_string();
    assert_eq!(listed.as_array().expect("array").len(), 4);
    for k in [&a_key, &b_key, &admin] {
        assert!(!listed_text.contains(k.as_str()), "keys list printed a key");
    }
    assert_eq!(listed[0]["merchant"], "MID_A");
    assert_eq!(listed[0]["role"], "merchant");
    // Neither --merchant nor --admin: a usage error.
    let out = memex_command(data, None, &["keys", "create"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));

    let server = Server::start(data, None, &[]);
    let anon = reqwest::Client::new();
    let (s, v) = body(
        anon.get(server.url("/healthz"))
            .send()
            .await
            .expect("healthz"),
    )
    .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("ok")));

    // No key, a wrong key, a malformed header: 401 with the JSON error, never echoing the key.
    let (s, v) = body(anon.get(server.url("/readyz")).send().await.expect("req")).await;
    assert_eq!(s, 401);
    assert_error(&v, "unauthorized");
    let wrong = "mx_0000000000000000000000000000000000000000000000000000000000000000";
    let resp = client(wrong)
        .post(server.url("/v1/search"))
        .json(&json!({"query": "refund"}))
        .send()
        .await
        .expect("req");
    assert_eq!(
        resp.headers()
            .get("www-authenticate")
            .map(|h| h.to_str().ok()),
        Some(Some("Bearer"))
    );
    let (s, v) = body(resp).await;
    assert_eq!(s, 401);
    assert!(!v.to_string().contains(wrong));
    let (s, _) = body(
        anon.get(server.url("/metrics"))
            .header("authorization", format!("Basic {a_key}"))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 401);

    let a = client(&a_key);
    let b = client(&b_key);
    let adm = client(&admin);
    // A merchant key learns ready or not, nothing about the fleet; the admin sees the stores.
    let (s, v) = body(a.get(server.url("/readyz")).send().await.expect("req")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v, json!({"status": "ready", "unready": []}));
    let (s, v) = body(adm.get(server.url("/readyz")).send().await.expect("req")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "ready");
    assert!(v["stores"].is_object() && v["worker"].is_string(), "{v}");
    // Metrics are fleet-wide: admin keys only.
    let (s, v) = body(a.get(server.url("/metrics")).send().await.expect("req")).await;
    assert_eq!(s, 403, "{v}");
    assert_error(&v, "forbidden");
    let resp = adm.get(server.url("/metrics")).send().await.expect("req");
    assert_eq!(resp.status(), 200);

    // A merchant key on another merchant's path: exactly the answer for a missing merchant.
    let (s, own) = body(
        a.post(server.url("/v1/merchants/MID_A/episodes"))
            .json(&json!({"summary": "Asked about settlement timing"}))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200, "{own}");
    for path in [
        "/v1/merchants/MID_A/episodes",
        "/v1/merchants/NO_SUCH_MERCHANT/episodes",
    ] {
        let (s, v) = body(b.get(server.url(path)).send().await.expect("req")).await;
        assert_eq!(s, 404, "{path}: {v}");
        assert_eq!(
            v,
            json!({"error": {"code": "not_found", "message": "no such merchant"}})
        );
    }
    let (s1, v1) = body(
        b.delete(server.url("/v1/merchants/MID_A/episodes"))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!((s1, &v1["error"]["code"]), (404, &json!("not_found")));
    let (s, v) = body(
        b.post(server.url("/v1/merchants/MID_A/episodes/search"))
            .json(&json!({"query": "settlement"}))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 404, "{v}");
    // A's episode is still there, and the admin sees it.
    let (s, v) = body(
        adm.get(server.url("/v1/merchants/MID_A/episodes"))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v[0]["id"], own["id"]);

    // Admin-only routes refuse merchant keys.
    let (s, v) = body(
        a.post(server.url("/v1/documents"))
            .json(&json!({"documents": [{"id": "x", "text": "hello"}]}))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 403);
    assert_error(&v, "forbidden");
    let (s, _) = body(
        a.post(server.url("/v1/actions/act_x/approve"))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = body(
        a.get(server.url("/v1/actions?status=pending"))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 403);

    // Revoked while the server runs: refused within a second, no restart.
    let out = memex_command(data, None, &["keys", "revoke", &a_id])
        .output()
        .expect("runs");
    assert!(out.status.success());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (s, v) = body(a.get(server.url("/readyz")).send().await.expect("req")).await;
    assert_eq!(s, 401);
    assert_error(&v, "unauthorized");
    // A key created now works at once.
    let (_, c_key) = create_key(data, &["--merchant", "MID_C"]);
    let (s, _) = body(
        client(&c_key)
            .get(server.url("/v1/merchants/MID_C/episodes?limit=5"))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200);
    // One access-log line per request, with the key id and never a key.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = server.log();
    assert!(log.contains("route=/v1/merchants/{mid}/episodes"), "{log}");
    assert!(log.contains(&format!("key_id={a_id}")), "{log}");
    for k in [&a_key, &b_key, &admin, &c_key] {
        assert!(!log.contains(k.as_str()), "the log holds a key");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn documents_search_episodes_and_service_routes_match_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let (_, admin) = create_key(data, &["--admin"]);
    let (_, m_key) = create_key(data, &["--merchant", "MID001"]);
    let server = Server::start(data, None, &[]);
    let adm = client(&admin);
    let m = client(&m_key);

    let docs = json!({"documents": [
        {"id": "refunds", "format": "md", "text": "# Refunds\n\nA refund of a captured payment reaches the customer in 5 to 7 working days.\n\n## Partial refunds\n\nPartial refunds are allowed up to the captured amount."},
        {"id": "settlements", "text": "Settlements are paid out on T+2 working days after capture.", "metadata": {"team": "finance"}},
        {"id": "disputes", "format": "html", "text": "<html><body><h1>Disputes</h1><p>Respond to a chargeback within 7 days with evidence.</p></body></html>"}
    ]});
    let (s, first) = body(
        adm.post(server.url("/v1/documents"))
            .json(&docs)
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["files_new"], 3, "{first}");
    assert!(first["chunks_added"].as_u64().expect("n") >= 3);
    let (s, again) = body(
        adm.post(server.url("/v1/documents"))
            .json(&docs)
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(again["files_unchanged"], 3, "{again}");
    assert_eq!(again["chunks_added"], 0);
    assert_eq!(again["chunks_embedded"], 0);
    let (s, v) = body(
        adm.post(server.url("/v1/documents"))
            .json(&json!({"documents": [{"id": "../escape", "text": "x"}]}))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 400);
    assert_error(&v, "bad_request");

    // Search: the same hits as `memex search --json` on the same store.
    let (s, v) = body(
        m.post(server.url("/v1/search"))
            .json(&json!({"query": "how long does a refund take", "k": 3, "mode": "hybrid"}))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let results = v["results"].as_array().expect("results");
    assert!(!results.is_empty());
    for key in [
        "chunk_id",
        "source",
        "heading",
        "text",
        "score",
        "vector_rank",
        "keyword_rank",
        "line_start",
        "line_end",
    ] {
        assert!(results[0].get(key).is_some(), "hit lacks {key}");
    }
    assert!(results[0]["text"]
        .as_str()
        .expect("text")
        .contains("5 to 7"));
    let cli = memex_json(
        data,
        None,
        &["search", "-k", "3", "how long does a refund take"],
    );
    let ids = |v: &Value| -> Vec<u64> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|h| h["chunk_id"].as_u64().expect("id"))
            .collect()
    };
    assert_eq!(ids(&v["results"]), ids(&cli));
    let (s, v) = body(
        m.post(server.url("/v1/search"))
            .json(&json!({"query": "chargeback", "mode": "keyword"}))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200);
    assert!(v["results"][0]["text"]
        .as_str()
        .expect("t")
        .contains("chargeback"));
    for bad in [
        json!({"query": "x", "k": 0}),
        json!({"query": "x", "mode": "fuzzy"}),
        json!({"k": 3}),
    ] {
        let (s, v) = body(
            m.post(server.url("/v1/search"))
                .json(&bad)
                .send()
                .await
                .expect("req"),
        )
        .await;
        assert!(s == 400 || s == 422, "{bad}: {s} {v}");
        assert!(v["error"]["code"].is_string(), "{v}");
    }
    let (s, v) = body(
        m.post(server.url("/v1/search"))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 400);
    assert_error(&v, "bad_request");

    // Episodes: add, list, search, forget — shapes as `memex episodes … --json`.
    let mut ids_added = Vec::new();
    for (summary, at) in [
        (
            "Merchant asked why settlement of pay_ABC123 was late; explained T+2",
            "2026-03-01",
        ),
        (
            "Merchant requested a partial refund of 500 INR on pay_XYZ",
            "2026-03-02",
        ),
    ] {
        let (s, v) = body(
            m.post(server.url("/v1/merchants/MID001/episodes"))
                .json(&json!({"summary": summary, "metadata": {"channel": "chat"}, "occurred_at": at}))
                .send()
                .await
                .expect("req"),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        for key in [
            "id",
            "merchant_id",
            "summary",
            "metadata",
            "created_at",
            "occurred_at",
        ] {
            assert!(v.get(key).is_some(), "episode lacks {key}");
        }
        assert!(v.get("embedding").is_none());
        ids_added.push(v["id"].clone());
    }
    let (s, listed) = body(
        m.get(server.url("/v1/merchants/MID001/episodes?limit=10"))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200);
    let cli = memex_json(data, None, &["episodes", "list", "--merchant", "MID001"]);
    assert_eq!(
        listed, cli,
        "GET episodes equals `memex episodes list --json`"
    );
    let (s, found) = body(
        m.post(server.url("/v1/merchants/MID001/episodes/search"))
            .json(&json!({"query": "refund", "k": 1}))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(found.as_array().expect("a").len(), 1);
    assert_eq!(found[0]["id"], ids_added[1]);
    assert!(found[0]["score"].is_number());
    let cli = memex_json(
        data,
        None,
        &[
            "episodes",
            "search",
            "--merchant",
            "MID001",
            "-k",
            "1",
            "refund",
        ],
    );
    assert_eq!(found[0]["id"], cli[0]["id"]);
    let (s, v) = body(
        m.post(server.url("/v1/merchants/MID001/episodes"))
            .json(&json!({"summary": "x", "metadata": [1]}))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = body(
        m.delete(server.url("/v1/merchants/MID001/episodes"))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v, json!({"merchant_id": "MID001", "forgotten": 2}));

    // OpenAPI, metrics, unknown route.
    let (s, doc) = body(
        m.get(server.url("/openapi.json"))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().expect("v").starts_with("3."));
    for path in [
        "/v1/embeddings",
        "/v1/search",
        "/v1/documents",
        "/v1/merchants/{mid}/episodes",
        "/v1/merchants/{mid}/ask",
        "/v1/actions/{id}/approve",
        "/v1/plans/{id}/resume",
    ] {
        assert!(doc["paths"][path].is_object(), "openapi lacks {path}");
    }
    let resp = adm.get(server.url("/metrics")).send().await.expect("req");
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("text");
    for needle in [
        // Every series also carries the worker label (`worker="…"`, last in name order).
        "memex_http_requests_total{method=\"POST\",route=\"/v1/search\",status=\"200\",worker=\"",
        "memex_http_request_duration_seconds_bucket",
        "memex_embed_batch_size_bucket",
        "memex_embed_queue_depth",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
    let (s, v) = body(m.get(server.url("/v1/nothing")).send().await.expect("req")).await;
    assert_eq!(s, 404);
    assert_error(&v, "not_found");
    // The agent routes without an LLM: 503, said plainly.
    let (s, v) = body(
        m.post(server.url("/v1/merchants/MID001/ask"))
            .json(&json!({"message": "hi"}))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 503);
    assert_error(&v, "llm_not_configured");
}

/// `memex embed`'s vectors for `texts`.
fn cli_vectors(data: &std::path::Path, texts: &[&str]) -> Vec<Vec<f32>> {
    let mut args = vec!["embed"];
    args.extend_from_slice(texts);
    let out = memex_command(data, None, &args).output().expect("embed");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json line");
            v["embedding"]
                .as_array()
                .expect("embedding")
                .iter()
                .map(|x| x.as_f64().expect("f") as f32)
                .collect()
        })
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embeddings_float_and_base64_equal_memex_embed_through_reqwest_and_the_openai_sdk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let (_, key) = create_key(data, &["--merchant", "MID001"]);
    let server = Server::start(data, None, &[]);
    let texts = ["Where is my settlement?", "Refund pay_ABC123 please", "ok"];
    let expected = cli_vectors(data, &texts);
    assert_eq!(expected.len(), 3);

    let c = client(&key);
    let (s, v) = body(
        c.post(server.url("/v1/embeddings"))
            .json(&json!({"model": "all-MiniLM-L6-v2", "input": texts}))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "all-MiniLM-L6-v2");
    assert!(v["usage"]["prompt_tokens"].as_u64().expect("n") > 3);
    assert_eq!(v["usage"]["prompt_tokens"], v["usage"]["total_tokens"]);
    for (i, d) in v["data"].as_array().expect("data").iter().enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        let got: Vec<f32> = d["embedding"]
            .as_array()
            .expect("floats")
            .iter()
            .map(|x| x.as_f64().expect("f") as f32)
            .collect();
        assert!(max_diff(&got, &expected[i]) < 1e-5, "text {i}");
    }
    let (s, v) = body(
        c.post(server.url("/v1/embeddings"))
            .json(&json!({"model": "m", "input": texts[1], "encoding_format": "base64"}))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["data"][0]["embedding"].as_str().expect("b64"))
        .expect("base64");
    let got: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert!(max_diff(&got, &expected[1]) < 1e-5);
    for bad in [
        json!({"input": []}),
        json!({"input": [1, 2]}),
        json!({"input": "x", "encoding_format": "hex"}),
        json!({"input": "x", "dimensions": 8}),
    ] {
        let (s, v) = body(
            c.post(server.url("/v1/embeddings"))
                .json(&bad)
                .send()
                .await
                .expect("req"),
        )
        .await;
        assert!(s == 400 || s == 422, "{bad}: {s}");
        assert!(v["error"]["code"].is_string());
    }

    // The official OpenAI Python SDK (base64 by default, then float).
    let python = serve::python();
    let script = serve::py_script("openai_embeddings.py");
    let base = server.base.clone();
    let key2 = key.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(base)
            .arg(key2)
            .args(texts)
            .output()
            .expect("python runs")
    })
    .await
    .expect("thread");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let py: Value = serde_json::from_slice(&out.stdout).expect("json");
    let as_vec = |v: &Value| -> Vec<f32> {
        v.as_array()
            .expect("vector")
            .iter()
            .map(|x| x.as_f64().expect("f") as f32)
            .collect()
    };
    for i in 0..3 {
        assert!(
            max_diff(&as_vec(&py["default"][i]), &expected[i]) < 1e-5,
            "base64 {i}"
        );
        assert!(
            max_diff(&as_vec(&py["float"][i]), &expected[i]) < 1e-5,
            "float {i}"
        );
    }
    assert_eq!(py["default_index"], json!([0, 1, 2]));
    assert!(max_diff(&as_vec(&py["single"]), &expected[0]) < 1e-5);
    assert_eq!(py["model"], "all-MiniLM-L6-v2");
    assert_eq!(py["bad_key"], 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_body_413_full_queue_503_and_rate_limit_429() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let (_, key) = create_key(data, &["--merchant", "MID001"]);
    let server = Server::start(
        data,
        None,
        &[
            "--body-limit",
            "65536",
            "--embed-queue",
            "1",
            "--embed-batch",
            "1",
            "--rate-limit",
            "2",
            "--rate-burst",
            "100",
        ],
    );
    let c = client(&key);
    let big = "word ".repeat(20_000);
    let (s, v) = body(
        c.post(server.url("/v1/embeddings"))
            .json(&json!({"input": big}))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 413, "{v}");
    assert_error(&v, "payload_too_large");

    // 48 requests at once against a queue of one: some are refused with 503 + Retry-After,
    // the others answered; none waits without bound.
    let text = "a sentence long enough to keep the model busy for a moment ".repeat(8);
    let mut tasks = Vec::new();
    for _ in 0..48 {
        let c = c.clone();
        let url = server.url("/v1/embeddings");
        let input = vec![text.clone(); 16];
        tasks.push(tokio::spawn(async move {
            let resp = c
                .post(url)
                .json(&json!({"input": input}))
                .send()
                .await
                .expect("req");
            let retry = resp.headers().get("retry-after").is_some();
            let (s, v) = body(resp).await;
            (s, retry, v)
        }));
    }
    let mut ok = 0;
    let mut full = 0;
    for t in tasks {
        let (s, retry, v) = t.await.expect("task");
        match s {
            200 => ok += 1,
            503 => {
                assert!(retry, "503 without Retry-After");
                assert_error(&v, "queue_full");
                full += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert!(ok >= 1 && full >= 1, "ok {ok}, full {full}");

    // The rate limit: the burst is spent, the next request waits with 429 + Retry-After.
    let mut limited = None;
    for _ in 0..200 {
        let resp = c.get(server.url("/readyz")).send().await.expect("req");
        if resp.status() == 429 {
            limited = Some(resp);
            break;
        }
    }
    let resp = limited.expect("a 429 within 200 requests at 2/s");
    assert!(resp.headers().get("retry-after").is_some());
    let (_, v) = body(resp).await;
    assert_error(&v, "rate_limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_drains_and_keeps_every_acknowledged_episode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let (_, key) = create_key(data, &["--merchant", "MID001"]);
    let mut server = Server::start(data, None, &[]);
    let c = client(&key);
    let url = server.url("/v1/merchants/MID001/episodes");
    let mut tasks = Vec::new();
    for i in 0..40 {
        let c = c.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 15)).await;
            let resp = c
                .post(url)
                .json(&json!({"summary": format!("episode number {i} about a delayed settlement")}))
                .send()
                .await;
            match resp {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    Some((status, v))
                }
                Err(_) => None, // refused after the listener closed
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.sigterm();
    let mut acked = Vec::new();
    for t in tasks {
        if let Some((status, v)) = t.await.expect("task") {
            assert!(status < 500, "a 5xx during shutdown: {status} {v}");
            if status == 200 {
                acked.push(v["id"].as_str().expect("id").to_owned());
            }
        }
    }
    let status = server
        .wait(Duration::from_secs(60))
        .expect("exits after SIGTERM");
    assert!(status.success(), "exit {status:?}: {}", server.log());
    assert!(
        !acked.is_empty(),
        "nothing was acknowledged before the shutdown"
    );
    let stored = memex_json(
        data,
        None,
        &[
            "episodes",
            "list",
            "--merchant",
            "MID001",
            "--limit",
            "1000",
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
            "acknowledged episode {id} lost"
        );
    }
}

/// An MCP session belongs to the merchant that opened it: another merchant's DELETE, GET
/// stream and POST on it get exactly the unknown-session answer (404) and change nothing.
/// An admin key on `/mcp` is told that MCP needs a merchant key (403); no key or a wrong key
/// gets 401 with `WWW-Authenticate: Bearer` saying the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mcp_sessions_belong_to_the_merchant_that_opened_them() {
    use reqwest::Method;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let (_, a_key) = create_key(data, &["--merchant", "MID_A"]);
    let (_, b_key) = create_key(data, &["--merchant", "MID_B"]);
    let (_, admin) = create_key(data, &["--admin"]);
    let server = Server::start(data, None, &[]);
    let url = server.url("/mcp");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let req = |method: Method, key: Option<&str>, session: Option<&str>| {
        let mut r = http
            .request(method, &url)
            .header("Accept", "application/json, text/event-stream")
            .header("MCP-Protocol-Version", "2025-06-18");
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        if let Some(s) = session {
            r = r.header("Mcp-Session-Id", s);
        }
        r
    };
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "break-test", "version": "0"}}});
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let resp = req(Method::POST, Some(&a_key), None)
        .json(&init)
        .send()
        .await
        .expect("initialize");
    assert!(resp.status().is_success(), "{}", resp.status());
    let session = resp.headers()["mcp-session-id"]
        .to_str()
        .expect("session id")
        .to_string();
    let _ = resp.text().await;
    let note = req(Method::POST, Some(&a_key), Some(&session))
        .json(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .send()
        .await
        .expect("initialized");
    assert!(note.status().is_success(), "{}", note.status());

    // B on A's session, for every method: the very answer of a session that does not exist.
    let unknown = "0c5d7e0f-1111-4222-8333-944445555666";
    for method in [Method::DELETE, Method::GET, Method::POST] {
        let mut answers = Vec::new();
        for s in [session.as_str(), unknown] {
            let mut r = req(method.clone(), Some(&b_key), Some(s));
            if method == Method::POST {
                r = r.json(&list);
            }
            let resp = r.send().await.expect("request");
            answers.push((resp.status().as_u16(), resp.text().await.expect("text")));
        }
        assert_eq!(answers[0].0, 404, "{method} as B: {answers:?}");
        assert_eq!(
            answers[0], answers[1],
            "{method}: B can tell A's session exists"
        );
    }
    // A's session is untouched: its tools list, and its event stream opens.
    let resp = req(Method::POST, Some(&a_key), Some(&session))
        .json(&list)
        .send()
        .await
        .expect("tools/list");
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("text");
    assert!(text.contains("search_knowledge_base"), "{text}");
    let stream = req(Method::GET, Some(&a_key), Some(&session))
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), 200);
    drop(stream);

    // An admin key: 403, MCP needs a merchant key. No key, a wrong key: 401 + Bearer.
    let (s, v) = body(
        req(Method::POST, Some(&admin), None)
            .json(&init)
            .send()
            .await
            .expect("admin"),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    assert!(v.to_string().contains("merchant key"), "{v}");
    let wrong = "mx_1111111111111111111111111111111111111111111111111111111111111111";
    for key in [None, Some(wrong)] {
        let resp = req(Method::POST, key, None)
            .json(&init)
            .send()
            .await
            .expect("anon");
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        let text = resp.text().await.expect("text");
        assert!(text.contains("merchant key"), "{text}");
        assert!(!text.contains(wrong), "{text}");
    }

    // A ends its own session; then it is gone for A too.
    let resp = req(Method::DELETE, Some(&a_key), Some(&session))
        .send()
        .await
        .expect("delete");
    assert!(resp.status().is_success(), "{}", resp.status());
    let resp = req(Method::POST, Some(&a_key), Some(&session))
        .json(&list)
        .send()
        .await
        .expect("after delete");
    assert_eq!(resp.status(), 404);
}

/// Failed authentications are limited per client address: past the burst, a failing request
/// gets 429 with `Retry-After` instead of 401; a valid key from the same address still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_authentications_are_rate_limited_per_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let (_, key) = create_key(data, &["--merchant", "MID_A"]);
    let server = Server::start(
        data,
        None,
        &["--auth-fail-rate", "0.01", "--auth-fail-burst", "5"],
    );
    let wrong = client("mx_2222222222222222222222222222222222222222222222222222222222222222");
    let anon = reqwest::Client::new();
    let mut statuses = Vec::new();
    for i in 0..8 {
        let resp = if i % 2 == 0 {
            wrong.get(server.url("/readyz")).send().await
        } else {
            anon.get(server.url("/readyz")).send().await
        }
        .expect("req");
        let status = resp.status().as_u16();
        if status == 429 {
            let wait: u64 = resp.headers()["retry-after"]
                .to_str()
                .expect("ascii")
                .parse()
                .expect("seconds");
            assert!(wait >= 1, "{wait}");
            let (_, v) = body(resp).await;
            assert_error(&v, "rate_limited");
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429, 429]);
    let (s, v) = body(
        client(&key)
            .get(server.url("/v1/merchants/MID_A/episodes"))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200, "{v}");
}

/// Reads what the server sends on `tcp` until it closes or `limit` passes; `None` on timeout.
async fn read_until_closed(tcp: &mut tokio::net::TcpStream, limit: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read).await.ok()?;
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Slow clients: a request head that never completes is cut off after the header timeout, a
/// body that stalls gets 408 after the body timeout, and meanwhile others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_headers_are_cut_off_and_a_stalled_body_gets_408() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let (_, admin) = create_key(data, &["--admin"]);
    let server = Server::start(
        data,
        None,
        &["--header-timeout", "1", "--body-timeout", "2"],
    );
    let host = server.base.trim_start_matches("http://").to_string();

    // Slowloris: 20 connections that send half a head and then nothing, and 10 that send
    // nothing at all (before any byte, hyper has not chosen a protocol to time).
    let started = std::time::Instant::now();
    let mut slow = Vec::new();
    for _ in 0..10 {
        slow.push(
            tokio::net::TcpStream::connect(&host)
                .await
                .expect("connect"),
        );
    }
    for _ in 0..20 {
        let mut tcp = tokio::net::TcpStream::connect(&host)
            .await
            .expect("connect");
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .expect("write");
        slow.push(tcp);
    }
    // Served meanwhile.
    let resp = reqwest::get(server.url("/healthz")).await.expect("healthz");
    assert_eq!(resp.status(), 200);
    for tcp in &mut slow {
        let got = read_until_closed(tcp, Duration::from_secs(10)).await;
        assert!(got.is_some(), "a slow head was held past 10 s");
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );

    // A body that stalls after 10 of 100 bytes: 408 after about 2 s.
    let mut tcp = tokio::net::TcpStream::connect(&host)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/search HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {admin}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"query\":"
    );
    tcp.write_all(head.as_bytes()).await.expect("write");
    let started = std::time::Instant::now();
    let got = read_until_closed(&mut tcp, Duration::from_secs(20))
        .await
        .expect("an answer to a stalled body within 20 s");
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("request_timeout"), "{got}");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    // An ordinary request is unaffected.
    let (s, v) = body(
        client(&admin)
            .post(server.url("/v1/search"))
            .json(&json!({"query": "refund", "mode": "keyword"}))
            .send()
            .await
            .expect("search"),
    )
    .await;
    assert_eq!(s, 200, "{v}");
}

/// Document ids are relative paths, as `memex ingest` names files under its root; a search
/// shows such a document's source as its id — never the server's path. Ids that climb out,
/// start at `/`, hold control characters or empty segments are 400. A path parameter that does
/// not decode is a JSON 400, never a 500 or a plain-text answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn document_ids_are_relative_paths_and_sources_never_show_server_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let (_, admin) = create_key(data, &["--admin"]);
    let (_, m_key) = create_key(data, &["--merchant", "MID_A"]);
    let server = Server::start(data, None, &[]);
    let adm = client(&admin);
    let m = client(&m_key);
    let docs = json!({"documents": [
        {"id": "guides/refunds.md", "format": "md", "text": "# Refunds\n\nA wombatpay refund reaches the customer in 5 to 7 working days."},
        {"id": "faq/settlements", "text": "Settlements of wombatpay are paid out on T+2."}
    ]});
    let (s, v) = body(
        adm.post(server.url("/v1/documents"))
            .json(&docs)
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["files_new"], 2, "{v}");
    let (s, v) = body(
        m.post(server.url("/v1/search"))
            .json(&json!({"query": "wombatpay", "k": 5, "mode": "keyword"}))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let mut sources: Vec<&str> = v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|h| h["source"].as_str().expect("source"))
        .collect();
    sources.sort();
    assert_eq!(sources, ["faq/settlements.txt", "guides/refunds.md"], "{v}");
    let data_text = data.to_string_lossy().to_string();
    assert!(!v.to_string().contains(&data_text), "a server path: {v}");

    // The MCP memory tool shows the same relative source to the merchant.
    let mcp = |session: Option<&str>, body: Value| {
        let mut r = m
            .post(server.url("/mcp"))
            .header("Accept", "application/json, text/event-stream")
            .header("MCP-Protocol-Version", "2025-06-18")
            .json(&body);
        if let Some(s) = session {
            r = r.header("Mcp-Session-Id", s);
        }
        r.send()
    };
    let init = mcp(
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "t", "version": "0"}}}),
    )
    .await
    .expect("initialize");
    assert!(init.status().is_success(), "{}", init.status());
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .expect("id")
        .to_string();
    let _ = init.text().await;
    let _ = mcp(
        Some(&session),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await
    .expect("initialized");
    let hits = mcp(
        Some(&session),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "search_knowledge_base", "arguments": {"query": "wombatpay refund", "k": 5}}}),
    )
    .await
    .expect("tools/call")
    .text()
    .await
    .expect("text");
    assert!(hits.contains("guides/refunds.md"), "{hits}");
    assert!(!hits.contains(&data_text), "a server path over MCP: {hits}");

    for bad in [
        "../escape",
        "guides/../../escape",
        "/etc/passwd",
        "a//b",
        "a/./b",
        "trailing/",
        "bell\u{7}",
        "back\\slash",
        ".hidden/x",
        "",
    ] {
        let (s, v) = body(
            adm.post(server.url("/v1/documents"))
                .json(&json!({"documents": [{"id": bad, "text": "x"}]}))
                .send()
                .await
                .expect("req"),
        )
        .await;
        assert_eq!(s, 400, "{bad:?}: {v}");
        assert_error(&v, "bad_request");
    }
    let long = "a/".repeat(300) + "b";
    let (s, _) = body(
        adm.post(server.url("/v1/documents"))
            .json(&json!({"documents": [{"id": long, "text": "x"}]}))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 400);

    // A path parameter that is not UTF-8 once decoded: 400 with the JSON error.
    let (s, v) = body(
        m.get(server.url("/v1/merchants/%FF%FE/episodes"))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_error(&v, "bad_request");
    let (s, v) = body(
        m.get(server.url("/v1/merchants/MID_A/episodes?limit=1&limit=x"))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert!(s == 400 || s == 200, "{s}: {v}");
    assert!(
        v.get("error").is_none() || v["error"]["code"] == "bad_request",
        "{v}"
    );
}

/// A Redis state store that goes away: every route answers 503 `unavailable` with
/// `Retry-After` (never 500, never the URL's password), and the first request after Redis
/// is back succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_outage_is_503_with_retry_after_and_the_first_request_after_succeeds() {
    let mut redis = redis_support::RedisServer::spawn_persistent();
    let url = redis.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let key = memex_json(
        data,
        None,
        &["--state", &url, "keys", "create", "--merchant", "MID_A"],
    )["key"]
        .as_str()
        .expect("key")
        .to_owned();
    let admin = memex_json(data, None, &["--state", &url, "keys", "create", "--admin"])["key"]
        .as_str()
        .expect("key")
        .to_owned();
    let server = Server::start(data, None, &["--state", &url]);
    let m = client(&key);
    let adm = client(&admin);
    let episodes = server.url("/v1/merchants/MID_A/episodes");
    let (s, v) = body(m.get(&episodes).send().await.expect("req")).await;
    assert_eq!(s, 200, "{v}");
    // A probe before the outage too: the one after it must not reuse a connection that died.
    let (s, v) = body(adm.get(server.url("/readyz")).send().await.expect("req")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["stores"]["state"]["reachable"], true, "{v}");

    redis.stop();
    for (c, path) in [
        (&m, episodes.clone()),
        (&adm, server.url("/readyz")),
        (&adm, server.url("/metrics")),
    ] {
        let resp = c.get(&path).send().await.expect("req");
        let status = resp.status().as_u16();
        let retry = resp.headers().get("retry-after").cloned();
        let (_, v) = body(resp).await;
        assert_eq!(status, 503, "{path}: {v}");
        assert!(retry.is_some(), "{path}: 503 without Retry-After");
        assert_error(&v, "unavailable");
        assert!(v.to_string().contains("state"), "{path}: {v}");
    }

    redis.restart();
    let (s, v) = body(m.get(&episodes).send().await.expect("req")).await;
    assert_eq!(s, 200, "the first request after Redis came back: {v}");
    let (s, v) = body(adm.get(server.url("/readyz")).send().await.expect("req")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["stores"]["state"]["reachable"], true, "{v}");
    let log = server.log();
    assert!(
        log.contains("unreachable"),
        "the log names the outage:\n{log}"
    );
}

//! `POST /v1/merchants/{mid}/episodes/import` through the real binary and real HTTP clients
//! (reqwest, and `curl` itself when installed): JSONL and JSON-array bodies,
//! `{"imported": NEW, "already_present": SEEN}`, the same idempotency keys as the CLI (a re-post or a
//! CLI import of the same lines stores nothing twice), a bad line named with the lines before
//! it kept, merchant scoping (another merchant's key → 404), 413 and 415; on SQLite and Redis.

use crate::support::redis as redis_support;
use crate::support::serve;

use std::io::Write;
use std::process::Command;

use serde_json::{json, Value};
use serve::{client, create_key, memex_command, Server};

async fn body(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

/// `n` JSONL lines; line 1 holds a rare token, every third line an `occurred_at`.
fn jsonl(n: usize, tag: &str) -> String {
    let mut out = String::new();
    for i in 1..=n {
        let summary = if i == 1 {
            format!("{tag}: chargeback ZQ-7781 disputed by the card issuer")
        } else {
            format!("{tag}: routine payout question number {i} about settlement days")
        };
        let mut line = json!({"summary": summary, "metadata": {"line": i}});
        if i % 3 == 0 {
            line["occurred_at"] = json!("2024-05-01");
        }
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out
}

async fn post_import(
    c: &reqwest::Client,
    server: &Server,
    mid: &str,
    content_type: &str,
    payload: String,
) -> (u16, Value) {
    body(
        c.post(server.url(&format!("/v1/merchants/{mid}/episodes/import")))
            .header("content-type", content_type)
            .body(payload)
            .send()
            .await
            .expect("request"),
    )
    .await
}

async fn listing(c: &reqwest::Client, server: &Server, mid: &str) -> Vec<Value> {
    let (s, v) = body(
        c.get(server.url(&format!("/v1/merchants/{mid}/episodes?limit=10000")))
            .send()
            .await
            .expect("list"),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v.as_array().expect("array").clone()
}

/// The checks shared by both backends; `extra` are `memex serve` flags, `env` its variables.
async fn import_workflow(extra: &[&str], env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let (_, a_key) = create_key(data, &["--merchant", "MID_A"]);
    let (_, b_key) = create_key(data, &["--merchant", "MID_B"]);
    let mut flags = vec!["--body-limit", "262144"];
    flags.extend_from_slice(extra);
    let server = Server::start_with_env(data, None, &flags, env);
    let a = client(&a_key);
    let b = client(&b_key);

    // 150 lines: three batches of the library import.
    let lines = jsonl(150, "A");
    let (s, v) = post_import(&a, &server, "MID_A", "application/x-ndjson", lines.clone()).await;
    assert_eq!(
        (s, &v),
        (200, &json!({"imported": 150, "already_present": 0})),
        "{v}"
    );
    let listed = listing(&a, &server, "MID_A").await;
    assert_eq!(listed.len(), 150);
    let third = listed
        .iter()
        .find(|e| e["metadata"]["line"] == 3)
        .expect("line 3 stored");
    assert_eq!(third["occurred_at"], "2024-05-01T00:00:00Z");
    assert_eq!(third["merchant_id"], "MID_A");

    // The rare token is found by the hybrid search of the imported episodes.
    let (s, hits) = body(
        a.post(server.url("/v1/merchants/MID_A/episodes/search"))
            .json(&json!({"query": "ZQ-7781", "k": 3}))
            .send()
            .await
            .expect("search"),
    )
    .await;
    assert_eq!(s, 200, "{hits}");
    assert!(
        hits[0]["summary"]
            .as_str()
            .expect("summary")
            .contains("ZQ-7781"),
        "{hits}"
    );

    // Re-posting the same body (or the other JSONL media type) stores nothing twice, and says
    // so: nothing imported, every line already present.
    let (s, v) = post_import(&a, &server, "MID_A", "application/jsonl", lines.clone()).await;
    assert_eq!(
        (s, &v),
        (200, &json!({"imported": 0, "already_present": 150})),
        "{v}"
    );
    // A prefix of the same body: every line already present, none imported.
    let mixed: String = lines.lines().take(75).map(|l| format!("{l}\n")).collect();
    let (s, v) = post_import(&a, &server, "MID_A", "application/x-ndjson", mixed).await;
    assert_eq!(
        (s, &v),
        (200, &json!({"imported": 0, "already_present": 75})),
        "{v}"
    );
    assert_eq!(listing(&a, &server, "MID_A").await.len(), 150);

    // The CLI keys lines exactly as the route does: importing the same file adds nothing.
    let file = data.join("a.jsonl");
    std::fs::write(&file, &lines).expect("write");
    let mut cli = memex_command(
        data,
        None,
        &["episodes", "import", "--merchant", "MID_A", "--json"],
    );
    for (k, v) in env {
        cli.env(k, v);
    }
    let out = cli.arg(&file).output().expect("memex runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(printed, json!({"imported": 150}));
    assert_eq!(listing(&a, &server, "MID_A").await.len(), 150);

    // A bad line: 400 naming it; the two lines before it are stored, nothing after it.
    let bad = format!(
        "{}\n{}\n{}\n{}\n",
        json!({"summary": "A: new line one"}),
        json!({"summary": "A: new line two"}),
        json!({"metadata": {"no": "summary"}}),
        json!({"summary": "A: after the bad line"}),
    );
    let (s, v) = post_import(&a, &server, "MID_A", "application/x-ndjson", bad).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "bad_request");
    let message = v["error"]["message"].as_str().expect("message");
    assert!(message.contains("line 3"), "{message}");
    assert!(message.contains("imported 2 new"), "{message}");
    let listed = listing(&a, &server, "MID_A").await;
    assert_eq!(listed.len(), 152);
    assert!(listed.iter().any(|e| e["summary"] == "A: new line two"));
    assert!(!listed
        .iter()
        .any(|e| e["summary"] == "A: after the bad line"));

    // A JSON array body; a bad item is named by its position.
    let arr = json!([
        {"summary": "A: array one", "occurred_at": "2024-06-02T10:00:00Z"},
        {"summary": "A: array two", "metadata": {"k": "v"}},
    ]);
    let (s, v) = post_import(&a, &server, "MID_A", "application/json", arr.to_string()).await;
    assert_eq!(
        (s, &v),
        (200, &json!({"imported": 2, "already_present": 0})),
        "{v}"
    );
    let arr = json!([{"summary": "A: array three"}, {"summary": 7}]);
    let (s, v) = post_import(&a, &server, "MID_A", "application/json", arr.to_string()).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("m")
            .contains("item 2"),
        "{v}"
    );
    let (s, v) = post_import(&a, &server, "MID_A", "application/json", "{}".into()).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(listing(&a, &server, "MID_A").await.len(), 155);

    // Merchant scoping: B's key on A's import is a 404, exactly as for a missing merchant;
    // nothing lands anywhere. B's own import lands only with B.
    let (s, v) = post_import(&b, &server, "MID_A", "application/x-ndjson", jsonl(5, "B")).await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(
        v,
        json!({"error": {"code": "not_found", "message": "no such merchant"}})
    );
    assert_eq!(listing(&a, &server, "MID_A").await.len(), 155);
    let (s, v) = post_import(&b, &server, "MID_B", "application/x-ndjson", jsonl(5, "B")).await;
    assert_eq!(
        (s, &v),
        (200, &json!({"imported": 5, "already_present": 0})),
        "{v}"
    );
    let b_listed = listing(&b, &server, "MID_B").await;
    assert_eq!(b_listed.len(), 5);
    assert!(b_listed
        .iter()
        .all(|e| e["summary"].as_str().expect("s").starts_with("B: ")));
    assert!(listing(&a, &server, "MID_A")
        .await
        .iter()
        .all(|e| e["summary"].as_str().expect("s").starts_with("A: ")));

    // Unsupported media type and an oversized body (the server's --body-limit).
    let (s, v) = post_import(&a, &server, "MID_A", "text/plain", jsonl(2, "A")).await;
    assert_eq!(s, 415, "{v}");
    assert_eq!(v["error"]["code"], "unsupported_media_type");
    let (s, v) = post_import(
        &a,
        &server,
        "MID_A",
        "application/x-ndjson",
        jsonl(2600, "A"),
    )
    .await;
    assert_eq!(s, 413, "{v}");
    assert_eq!(listing(&a, &server, "MID_A").await.len(), 155);

    // `curl` itself (installed on CI), with a file body as a shell user would send it.
    match Command::new("curl").arg("--version").output() {
        Ok(o) if o.status.success() => {
            let file = data.join("c.jsonl");
            let mut f = std::fs::File::create(&file).expect("create");
            for i in 1..=70 {
                writeln!(f, "{}", json!({"summary": format!("A: curl line {i}")})).expect("w");
            }
            drop(f);
            let out = Command::new("curl")
                .args(["-sS", "--fail-with-body", "-X", "POST"])
                .arg("-H")
                .arg(format!("Authorization: Bearer {a_key}"))
                .args(["-H", "Content-Type: application/x-ndjson", "--data-binary"])
                .arg(format!("@{}", file.display()))
                .arg(server.url("/v1/merchants/MID_A/episodes/import"))
                .output()
                .expect("curl runs");
            assert!(
                out.status.success(),
                "curl: {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let v: Value = serde_json::from_slice(&out.stdout).expect("curl printed JSON");
            assert_eq!(v, json!({"imported": 70, "already_present": 0}));
            assert_eq!(listing(&a, &server, "MID_A").await.len(), 225);
        }
        _ => eprintln!("curl is not installed; the curl request was not sent"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn import_over_http_on_sqlite() {
    import_workflow(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn import_over_http_on_redis() {
    let redis = redis_support::RedisServer::spawn();
    let url = redis.url();
    import_workflow(&[], &[("MEMEX_EPISODIC_URL", url.as_str())]).await;
}

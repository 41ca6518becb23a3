//! Load generator for `memex serve` (and its FastAPI peer in `benches/peers/serve_peer.py`):
//! N concurrent clients POST to `/v1/search`, `/v1/embeddings` or an agent turn
//! (`/v1/merchants/{mid}/ask`) for a fixed time; prints throughput, p50 and p99 per client
//! count, and the batching gain (throughput at 32 ÷ at 1).
//!
//! `--url` takes several workers separated by commas: client `c` talks to worker `c mod n`, as
//! a round-robin load balancer would. `--fake-llm ADDR` also serves an OpenAI-compatible
//! `/v1/chat/completions` on ADDR that answers every request at once with a short text, so
//! workers started with `MEMEX_LLM_BASE_URL=http://ADDR/v1` measure memex's own cost of a turn
//! (`--route none` runs only that fake model, until killed).
//!
//! ```sh
//! cargo run --release --example serve_load -- --url http://127.0.0.1:8080 --key mx_… \
//!     --route search --clients 1,8,32,64 --seconds 10
//! ```

use std::time::{Duration, Instant};

use serde_json::json;

struct Args {
    urls: Vec<String>,
    key: String,
    route: String,
    merchant: String,
    clients: Vec<usize>,
    seconds: u64,
    fake_llm: Option<String>,
}

fn parse() -> Args {
    let mut a = Args {
        urls: vec!["http://127.0.0.1:8080".into()],
        key: String::new(),
        route: "search".into(),
        merchant: "MID001".into(),
        clients: vec![1, 8, 32, 64],
        seconds: 10,
        fake_llm: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--url" => {
                a.urls = value
                    .split(',')
                    .map(|u| u.trim().trim_end_matches('/').to_string())
                    .filter(|u| !u.is_empty())
                    .collect()
            }
            "--merchant" => a.merchant = value,
            "--fake-llm" => a.fake_llm = Some(value),
            "--key" => a.key = value,
            "--route" => a.route = value,
            "--clients" => {
                a.clients = value
                    .split(',')
                    .filter_map(|s| s.trim().parse().ok())
                    .collect()
            }
            "--seconds" => a.seconds = value.parse().unwrap_or(10),
            other => eprintln!("ignoring unknown flag {other}"),
        }
    }
    a
}

const QUERIES: [&str; 8] = [
    "how long does a refund take",
    "settlement timeline T+2",
    "what does GATEWAY_ERROR mean",
    "respond to a chargeback",
    "partial refund of a captured payment",
    "why was my payout delayed",
    "card declined insufficient funds",
    "change the settlement bank account",
];

/// A chat completion answering at once, as JSON or (when asked to stream) as SSE.
async fn fake_completion(
    axum::Json(body): axum::Json<serde_json::Value>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let text = "Thanks for reaching out; your refund is on its way.";
    let usage = json!({"prompt_tokens": 300, "completion_tokens": 12, "total_tokens": 312});
    if body["stream"].as_bool() == Some(true) {
        let chunk = json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "fake",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage});
        let sse = format!("data: {chunk}\n\ndata: [DONE]\n\n");
        return ([("content-type", "text/event-stream")], sse).into_response();
    }
    axum::Json(json!({"id": "c", "object": "chat.completion", "created": 0, "model": "fake",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": usage}))
    .into_response()
}

async fn start_fake_llm(addr: &str) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {addr}: {e}");
            std::process::exit(2);
        }
    };
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(fake_completion))
        .route("/chat/completions", axum::routing::post(fake_completion));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
}

#[tokio::main]
async fn main() {
    let args = parse();
    if let Some(addr) = &args.fake_llm {
        start_fake_llm(addr).await;
        if args.route == "none" {
            // Only the fake model (`--route none`): answer until killed.
            std::future::pending::<()>().await;
        }
    }
    let client = reqwest::Client::new();
    let mut first = None;
    for &n in &args.clients {
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        let mut tasks = Vec::new();
        for c in 0..n {
            let client = client.clone();
            let base = &args.urls[c % args.urls.len().max(1)];
            let url = if args.route == "ask" {
                format!("{base}/v1/merchants/{}/ask", args.merchant)
            } else {
                format!("{base}/v1/{}", args.route)
            };
            let key = args.key.clone();
            let route = args.route.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0usize;
                let mut i = c;
                while Instant::now() < deadline {
                    let q = QUERIES[i % QUERIES.len()];
                    i += 1;
                    let body = if route == "embeddings" {
                        json!({"model": "all-MiniLM-L6-v2", "input": q})
                    } else if route == "ask" {
                        json!({"message": q})
                    } else {
                        json!({"query": q, "k": 10})
                    };
                    let t = Instant::now();
                    let ok = client
                        .post(&url)
                        .bearer_auth(&key)
                        .json(&body)
                        .send()
                        .await
                        .map(|r| r.status().is_success())
                        .unwrap_or(false);
                    if ok {
                        lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    } else {
                        errors += 1;
                    }
                }
                (lat, errors)
            }));
        }
        let mut lat = Vec::new();
        let mut errors = 0;
        for t in tasks {
            if let Ok((l, e)) = t.await {
                lat.extend(l);
                errors += e;
            }
        }
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or(f64::NAN)
        };
        let rps = lat.len() as f64 / args.seconds as f64;
        if n == 1 {
            first = Some(rps);
        }
        println!(
            "{} workers={} clients={n:>3}  {rps:>8.1} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {errors}",
            args.route,
            args.urls.len(),
            pct(0.50),
            pct(0.99)
        );
        if n == 32 {
            if let Some(one) = first {
                println!("batching gain (32 ÷ 1): {:.2}×", rps / one);
            }
        }
    }
}

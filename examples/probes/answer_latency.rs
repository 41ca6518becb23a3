//! Turn latency with and without the answer model (`--llm-answer-model`), against a loopback
//! OpenAI-compatible server that answers slowly for the large model and quickly for the small
//! one (first token after `TTFT`, then one token every `PER_TOKEN`, streamed when asked).
//!
//! Each turn is one lookup and an answer (`get_transaction`, then text), through the real agent
//! (real MiniLM recall, payments tools, SQLite stores, the HTTP client):
//! * `large only`: the large model chooses the tool and writes the answer (streamed);
//! * `small + large answer`: the small model chooses the tool, the large one writes the answer.
//!
//! Prints time to the first answer token and total turn time, p50 and p99.
//! Run: `cargo run --release --example answer_latency -- [TURNS]` (default 40).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use memex::agent::{Agent, AgentConfig, AgentParts, AgentStore, Progress};
use memex::conversation::SqliteConversationStore;
use memex::domain::payments::{payments_registry, KbSearch, PaymentsDb, PaymentsDomain};
use memex::embed::{Embedder, EmbedderOptions, MiniLmEmbedder};
use memex::kb::KnowledgeBase;
use memex::llm::{LlmConfig, OpenAiCompatible};
use memex::merchant::MerchantId;
use serde_json::{json, Value};

const LARGE: &str = "large-model";
const SMALL: &str = "small-model";
/// Large model: first token after 300 ms, then 50 tokens/s.
const LARGE_TTFT: Duration = Duration::from_millis(300);
const LARGE_PER_TOKEN: Duration = Duration::from_millis(20);
/// Small model: first token after 30 ms, then 500 tokens/s.
const SMALL_TTFT: Duration = Duration::from_millis(30);
const SMALL_PER_TOKEN: Duration = Duration::from_millis(2);
/// Tokens in an answer, and in a tool call.
const ANSWER_TOKENS: usize = 60;
const TOOL_TOKENS: usize = 12;

fn chunk(delta: Value, finish: Option<&str>) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    )
}

async fn chat(Json(body): Json<Value>) -> Response {
    let model = body["model"].as_str().unwrap_or_default();
    let (ttft, per_token) = if model == LARGE {
        (LARGE_TTFT, LARGE_PER_TOKEN)
    } else {
        (SMALL_TTFT, SMALL_PER_TOKEN)
    };
    let last_is_tool = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .is_some_and(|m| m["role"] == "tool");
    let call_tool = body.get("tools").is_some() && !last_is_tool;
    let stream = body["stream"] == true;
    let usage = json!({"prompt_tokens": 100, "completion_tokens": if call_tool { TOOL_TOKENS } else { ANSWER_TOKENS }});
    let call = json!({"id": "call_1", "type": "function", "function": {
        "name": "get_transaction", "arguments": "{\"transaction_id\":\"pay_ABC123\"}"}});
    if !stream {
        let tokens = if call_tool {
            TOOL_TOKENS
        } else {
            ANSWER_TOKENS
        };
        tokio::time::sleep(ttft + per_token * tokens as u32).await;
        let message = if call_tool {
            json!({"role": "assistant", "content": null, "tool_calls": [call]})
        } else {
            json!({"role": "assistant", "content": "word ".repeat(ANSWER_TOKENS)})
        };
        return Json(
            json!({"id": "c", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": message,
                         "finish_reason": if call_tool { "tool_calls" } else { "stop" }}],
            "usage": usage}),
        )
        .into_response();
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(8);
    tokio::spawn(async move {
        tokio::time::sleep(ttft).await;
        if call_tool {
            tokio::time::sleep(per_token * TOOL_TOKENS as u32).await;
            let mut c = call.clone();
            c["index"] = json!(0);
            let _ = tx
                .send(Ok(chunk(
                    json!({"role": "assistant", "tool_calls": [c]}),
                    None,
                )))
                .await;
            let _ = tx.send(Ok(chunk(json!({}), Some("tool_calls")))).await;
        } else {
            for i in 0..ANSWER_TOKENS {
                if i > 0 {
                    tokio::time::sleep(per_token).await;
                }
                let _ = tx.send(Ok(chunk(json!({"content": "word "}), None))).await;
            }
            let _ = tx.send(Ok(chunk(json!({}), Some("stop")))).await;
        }
        let u = json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                       "choices": [], "usage": usage});
        let _ = tx.send(Ok(format!("data: {u}\n\n"))).await;
        let _ = tx.send(Ok("data: [DONE]\n\n".into())).await;
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap_or_else(|_| "bad stream".into_response())
}

/// Records when the first answer token arrives.
struct FirstToken {
    started: Instant,
    first: Mutex<Option<Duration>>,
}

impl Progress for FirstToken {
    fn wants_stream(&self) -> bool {
        true
    }
    fn text_delta(&self, delta: &str) {
        if delta.is_empty() {
            return;
        }
        if let Ok(mut f) = self.first.lock() {
            f.get_or_insert_with(|| self.started.elapsed());
        }
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let turns: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(40);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let app = Router::new().route("/v1/chat/completions", post(chat));
        let _ = axum::serve(listener, app).await;
    });
    let base = format!("http://{addr}/v1");

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir()?;
    let embedder: Arc<dyn Embedder> = Arc::new(MiniLmEmbedder::load(
        &root.join("models/all-MiniLM-L6-v2"),
        EmbedderOptions::default(),
    )?);
    let kb = Arc::new(KnowledgeBase::open(dir.path(), Arc::clone(&embedder))?);
    let payments = Arc::new(PaymentsDb::open_in_dir(dir.path())?);
    payments.seed_from_file(&root.join("data/payments/seed.json"))?;
    let episodes = memex::episodic::open(None, dir.path()).await?;
    let client = |model: &str| {
        OpenAiCompatible::new(
            LlmConfig::from_lookup(|_| None)
                .with_base_url(base.clone())
                .with_api_key("sk-bench")
                .with_model(model.to_string()),
        )
    };
    let merchant = MerchantId::parse("MID001")?;
    println!("answer-model latency, {turns} turns each (one lookup, then a {ANSWER_TOKENS}-token answer)");
    println!(
        "large: first token {} ms, {} ms/token; small: {} ms, {} ms/token",
        LARGE_TTFT.as_millis(),
        LARGE_PER_TOKEN.as_millis(),
        SMALL_TTFT.as_millis(),
        SMALL_PER_TOKEN.as_millis()
    );
    for with_answer_model in [false, true] {
        let main = if with_answer_model { SMALL } else { LARGE };
        let agent = Agent::new(AgentParts {
            model: Arc::new(client(main)?),
            tools: payments_registry(Arc::clone(&payments), Arc::new(KbSearch(Arc::clone(&kb))))?,
            embedder: Arc::clone(&embedder),
            kb: Some(Arc::clone(&kb)),
            episodes: Arc::clone(&episodes),
            conversations: Arc::new(SqliteConversationStore::open_in(dir.path())?),
            store: Arc::new(AgentStore::open_in(dir.path())?),
            config: AgentConfig::default(),
        })
        .with_domain(Arc::new(PaymentsDomain))
        .with_model_name(main);
        let agent = if with_answer_model {
            agent.with_answer_model(Arc::new(client(LARGE)?), LARGE)
        } else {
            agent
        };
        let (mut first, mut total) = (Vec::new(), Vec::new());
        for i in 0..turns + 2 {
            let progress = FirstToken {
                started: Instant::now(),
                first: Mutex::new(None),
            };
            let session = format!("bench_{with_answer_model}_{i}");
            let r = agent
                .ask(
                    &merchant,
                    &session,
                    "Where is the settlement for pay_ABC123?",
                    &progress,
                )
                .await?;
            let elapsed = progress.started.elapsed();
            assert_eq!(r.tool_calls.len(), 1, "one lookup per turn");
            if i < 2 {
                continue; // warm-up
            }
            let ttft = progress
                .first
                .lock()
                .ok()
                .and_then(|f| *f)
                .ok_or("no answer token was streamed")?;
            first.push(ttft.as_secs_f64() * 1e3);
            total.push(elapsed.as_secs_f64() * 1e3);
        }
        println!(
            "{:<22} first answer token p50 {:>6.0} ms p99 {:>6.0} ms | total p50 {:>6.0} ms p99 {:>6.0} ms",
            if with_answer_model {
                "small + large answer"
            } else {
                "large only"
            },
            pct(&mut first, 0.50),
            pct(&mut first, 0.99),
            pct(&mut total, 0.50),
            pct(&mut total, 0.99)
        );
    }
    Ok(())
}

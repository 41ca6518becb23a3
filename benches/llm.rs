//! LLM client overhead: request serialisation, response and SSE parsing, and whole calls
//! against the loopback fake OpenAI server, next to a raw `reqwest` POST of a pre-serialised
//! body to the same server (the floor: HTTP + loopback + the server's own work). The client's
//! overhead per call is the difference between the two.
//!
//! Run: `cargo bench --bench llm` (about a minute).

#[path = "../tests/support/fake_openai.rs"]
mod fake_openai;

use std::collections::VecDeque;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fake_openai::{FakeOpenAi, Reply};
use memex::llm::sse::{SseParser, StreamAssembler};
use memex::llm::{
    collect_stream, parse_completion, ChatModel, ChatRequest, LlmConfig, Message, OpenAiCompatible,
    RetryPolicy, ToolCall, ToolDefinition,
};
use serde_json::json;

/// A realistic agent request: system prompt, 12 messages with a tool exchange, 4 tools.
fn request() -> ChatRequest {
    let mut messages = vec![Message::system(
        "You are the support agent of a payments company. Answer merchants precisely. ".repeat(6),
    )];
    for i in 0..4 {
        messages.push(Message::user(format!(
            "Question {i}: why was payment pay_{i:04}XK for ₹1,2{i}0.00 not settled yesterday?"
        )));
        messages.push(Message::assistant_tool_calls(vec![ToolCall::new(
            format!("call_{i}"),
            "lookup_transaction",
            format!(r#"{{"id":"pay_{i:04}XK"}}"#),
        )]));
        messages.push(Message::tool(
            format!("call_{i}"),
            format!(r#"{{"id":"pay_{i:04}XK","status":"settlement_delayed","reason":"bank holiday","expected":"2024-05-0{i}"}}"#),
        ));
    }
    messages.push(Message::user("And what about the refund?"));
    let tools = (0..4)
        .map(|t| {
            ToolDefinition::function(
                format!("tool_{t}"),
                "Look something up in the payments ledger by identifier.",
                json!({"type": "object", "properties": {
                    "id": {"type": "string", "description": "The identifier"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 50}},
                    "required": ["id"]}),
            )
        })
        .collect();
    ChatRequest::new(messages)
        .with_tools(tools)
        .with_temperature(0.2)
        .with_max_tokens(512)
}

fn answer_text() -> String {
    "Your refund rf_55AB1 of ₹1,250.00 was processed on 2024-05-03 and should reach the customer within 5-7 working days. ".repeat(3)
}

/// The SSE body of a streamed answer: 60 text chunks, then a tool call split into 40 chunks.
fn sse_body() -> Vec<u8> {
    let text = answer_text();
    let mut events = vec![fake_openai::chunk(
        json!({"role": "assistant", "content": ""}),
        None,
    )];
    for piece in fake_openai::split_chars(&text, 60) {
        events.push(fake_openai::chunk(json!({"content": piece}), None));
    }
    if let Reply::Sse { events: more, .. } = Reply::sse_tool_calls(
        &[(
            "call_9",
            "create_refund",
            r#"{"transaction_id":"pay_0001XK","amount":"₹1,250.00","reason":"duplicate charge"}"#,
        )],
        40,
    ) {
        events.extend(more.into_iter().skip(1));
    }
    events
        .iter()
        .map(|e| format!("data: {e}\n\n"))
        .collect::<String>()
        .into_bytes()
}

fn offline(c: &mut Criterion) {
    let client = OpenAiCompatible::new(LlmConfig::default().with_api_key("k")).unwrap();
    let req = request();
    let mut g = c.benchmark_group("llm_offline");
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("serialise_request", |b| {
        b.iter(|| client.request_body(&req, false).unwrap())
    });
    let body = json!({
        "id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer_text()}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 900, "completion_tokens": 80, "total_tokens": 980}
    })
    .to_string()
    .into_bytes();
    g.bench_function("parse_response", |b| {
        b.iter(|| parse_completion(&body).unwrap())
    });
    let sse = sse_body();
    g.throughput(Throughput::Bytes(sse.len() as u64));
    g.bench_function("sse_parse_and_assemble_100_chunks", |b| {
        b.iter(|| {
            let mut parser = SseParser::new();
            let mut asm = StreamAssembler::new();
            let mut datas = Vec::new();
            let mut events = VecDeque::new();
            // Feed in 512-byte reads, as a socket would.
            for piece in sse.chunks(512) {
                parser.push(piece, &mut datas).unwrap();
                for d in datas.drain(..) {
                    asm.on_data(&d, &mut events).unwrap();
                }
            }
            asm.end_of_input(&mut events).unwrap();
            events.len()
        })
    });
    g.finish();
}

fn loopback(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(FakeOpenAi::start());
    server.forget_requests();
    let text_reply = Reply::text(&answer_text());
    server.set_fallback(text_reply);
    let client = OpenAiCompatible::new(
        LlmConfig::default()
            .with_base_url(server.base_url())
            .with_model("fake-model")
            .with_api_key("k")
            .with_retry(RetryPolicy::none()),
    )
    .unwrap();
    let req = request();
    let raw_body = client.request_body(&req, false).unwrap();
    let raw = reqwest::Client::new();
    let url = format!("{}/chat/completions", server.base_url());

    let mut g = c.benchmark_group("llm_loopback");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("raw_reqwest_post_floor", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = raw
                    .post(&url)
                    .header("content-type", "application/json")
                    .bearer_auth("k")
                    .body(raw_body.clone())
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
                r.bytes().await.unwrap().len()
            })
        })
    });
    g.bench_function("memex_chat", |b| {
        b.iter(|| rt.block_on(client.chat(req.clone())).unwrap())
    });

    // Streaming: the server sends the 100-chunk SSE answer.
    let events: Vec<String> = String::from_utf8(sse_body())
        .unwrap()
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: ").map(str::to_string))
        .collect();
    server.set_fallback(Reply::Sse {
        events,
        delay: Duration::ZERO,
    });
    let raw_stream_body = client.request_body(&req, true).unwrap();
    g.bench_function("raw_reqwest_stream_floor", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = raw
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(raw_stream_body.clone())
                    .send()
                    .await
                    .unwrap();
                r.bytes().await.unwrap().len()
            })
        })
    });
    g.bench_function("memex_stream_100_chunks", |b| {
        b.iter(|| {
            rt.block_on(async {
                let s = client.stream(req.clone()).await.unwrap();
                collect_stream(s).await.unwrap()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, offline, loopback);
criterion_main!(benches);

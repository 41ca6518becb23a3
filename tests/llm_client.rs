//! The OpenAI-compatible client against a real HTTP server on loopback.

use crate::support::cli;
use crate::support::fake_openai;

use std::time::{Duration, Instant};

use fake_openai::{FakeOpenAi, Reply};
use futures::StreamExt;
use memex::llm::{
    collect_stream, ChatModel, ChatRequest, FinishReason, LlmConfig, LlmError, Message,
    OpenAiCompatible, RetryPolicy, StreamEvent, ToolCall, ToolChoice, ToolDefinition, Usage,
};
use serde_json::json;

const KEY: &str = "gsk_test_SECRET_0123456789abcdef";

fn fast_retry(max_retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        max_elapsed: Duration::from_secs(20),
        jitter: true,
    }
}

fn config(server: &FakeOpenAi) -> LlmConfig {
    LlmConfig::default()
        .with_base_url(server.base_url())
        .with_model("fake-model")
        .with_api_key(KEY)
        .with_retry(fast_retry(3))
        .with_timeouts(Duration::from_secs(2), Duration::from_secs(5))
}

fn client(server: &FakeOpenAi) -> OpenAiCompatible {
    OpenAiCompatible::new(config(server)).expect("valid config")
}

fn ask(text: &str) -> ChatRequest {
    ChatRequest::new(vec![
        Message::system("You are a payments support agent."),
        Message::user(text),
    ])
}

fn lookup_tool() -> ToolDefinition {
    ToolDefinition::function(
        "lookup_transaction",
        "Look up a transaction by ID",
        json!({"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}),
    )
}

fn assert_no_key(err: &LlmError) {
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(KEY), "the key leaked: {shown}");
    assert!(!shown.contains("SECRET"), "part of the key leaked: {shown}");
}

#[tokio::test]
async fn plain_answer() {
    let server = FakeOpenAi::start().await;
    server.push(Reply::text("Your settlement is scheduled for tomorrow."));
    let llm = client(&server);

    let answer = llm.chat(ask("When is my settlement?")).await.unwrap();

    assert_eq!(
        answer.content.as_deref(),
        Some("Your settlement is scheduled for tomorrow.")
    );
    assert!(answer.tool_calls.is_empty());
    assert_eq!(answer.finish_reason, FinishReason::Stop);
    assert_eq!(answer.model, "fake-model");
    let expected = Usage {
        prompt_tokens: 12,
        completion_tokens: 5,
        total_tokens: 17,
    };
    assert_eq!(answer.usage, expected);
    let totals = llm.usage_totals();
    assert_eq!((totals.calls, totals.usage), (1, expected));

    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/v1/chat/completions");
    assert_eq!(
        reqs[0].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(
        reqs[0].body,
        json!({
            "model": "fake-model",
            "messages": [
                {"role": "system", "content": "You are a payments support agent."},
                {"role": "user", "content": "When is my settlement?"}
            ],
            "max_tokens": 1024,
            "stream": false
        })
    );
}

#[tokio::test]
async fn tool_calls_and_request_options() {
    let server = FakeOpenAi::start().await;
    server.push(Reply::tool_calls(&[
        ("call_1", "lookup_transaction", r#"{"id":"pay_9XK2"}"#),
        ("call_2", "lookup_transaction", r#"{"id":"pay_7QZ1"}"#),
    ]));
    let llm = client(&server);
    let request = ask("Check pay_9XK2 and pay_7QZ1")
        .with_tools(vec![lookup_tool()])
        .with_tool_choice(ToolChoice::Required)
        .with_temperature(0.2)
        .with_max_tokens(256);

    let answer = llm.chat(request).await.unwrap();

    assert_eq!(answer.finish_reason, FinishReason::ToolCalls);
    assert_eq!(answer.content, None);
    assert_eq!(
        answer.tool_calls,
        vec![
            ToolCall::new("call_1", "lookup_transaction", r#"{"id":"pay_9XK2"}"#),
            ToolCall::new("call_2", "lookup_transaction", r#"{"id":"pay_7QZ1"}"#),
        ]
    );
    assert_eq!(
        answer.tool_calls[0].arguments_json().unwrap(),
        json!({"id": "pay_9XK2"})
    );

    let body = &server.requests()[0].body;
    assert_eq!(body["tools"][0]["type"], "function");
    assert_eq!(body["tools"][0]["function"]["name"], "lookup_transaction");
    assert_eq!(
        body["tools"][0]["function"]["parameters"]["required"],
        json!(["id"])
    );
    assert_eq!(body["tool_choice"], "required");
    assert!((body["temperature"].as_f64().unwrap() - 0.2).abs() < 1e-6);
    assert_eq!(body["max_tokens"], 256);

    // The follow-up with the tool results is accepted by the server's order validation.
    let mut messages = ask("Check pay_9XK2 and pay_7QZ1").messages;
    messages.push(answer.to_message());
    messages.push(Message::tool("call_1", r#"{"status":"settled"}"#));
    messages.push(Message::tool("call_2", r#"{"status":"failed"}"#));
    server.push(Reply::text("pay_9XK2 settled, pay_7QZ1 failed."));
    let follow = llm
        .chat(ChatRequest::new(messages).with_tools(vec![lookup_tool()]))
        .await
        .unwrap();
    assert_eq!(
        follow.content.as_deref(),
        Some("pay_9XK2 settled, pay_7QZ1 failed.")
    );
    let sent = &server.requests()[1].body["messages"];
    assert_eq!(sent[2]["role"], "assistant");
    assert_eq!(sent[2]["content"], json!(null));
    assert_eq!(sent[2]["tool_calls"][1]["id"], "call_2");
    assert_eq!(
        sent[3],
        json!({"role": "tool", "tool_call_id": "call_1", "content": "{\"status\":\"settled\"}"})
    );
}

#[tokio::test]
async fn json_mode_and_named_tool_choice_are_sent() {
    let server = FakeOpenAi::start().await;
    server.push(Reply::text(r#"{"intent":"refund_status"}"#));
    let llm = client(&server);
    let request = ask("Classify")
        .with_tools(vec![lookup_tool()])
        .with_tool_choice(ToolChoice::Function("lookup_transaction".into()))
        .json_mode();
    llm.chat(request).await.unwrap();
    let body = &server.requests()[0].body;
    assert_eq!(body["response_format"], json!({"type": "json_object"}));
    assert_eq!(
        body["tool_choice"],
        json!({"type": "function", "function": {"name": "lookup_transaction"}})
    );
}

#[tokio::test]
async fn misordered_tool_message_is_rejected_not_retried() {
    let server = FakeOpenAi::start().await;
    server.push(Reply::text("never sent"));
    let llm = client(&server);
    let request = ChatRequest::new(vec![Message::user("hi"), Message::tool("call_404", "{}")]);
    let err = llm.chat(request).await.unwrap_err();
    assert!(
        matches!(err, LlmError::Rejected { status: 400, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("tool"), "{err}");
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn streaming_text() {
    let server = FakeOpenAi::start().await;
    server.push(Reply::sse_text(&[
        "Your ",
        "refund ",
        "of ₹1,250.00 ",
        "is on its way.",
    ]));
    let llm = client(&server);

    let stream = llm.stream(ask("Where is my refund?")).await.unwrap();
    let events: Vec<StreamEvent> = stream.map(|e| e.unwrap()).collect().await;

    let text: String = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::TextDelta(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "Your refund of ₹1,250.00 is on its way.");
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, StreamEvent::TextDelta(_)))
            .count(),
        4
    );
    assert_eq!(
        events.last(),
        Some(&StreamEvent::Done {
            usage: Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 5,
                total_tokens: 17
            }),
            finish_reason: FinishReason::Stop
        })
    );
    let body = &server.requests()[0].body;
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(llm.usage_totals().calls, 1);
    assert_eq!(llm.usage_totals().usage.total_tokens, 17);
}

#[tokio::test]
async fn streaming_tool_call_arguments_split_across_many_chunks() {
    let server = FakeOpenAi::start().await;
    let args1 = r#"{"id":"pay_9XK2","include":["refunds","disputes"],"note":"amount ₹4,999.00"}"#;
    let args2 = r#"{"merchant_id":"m_042","from":"2024-05-01"}"#;
    server.push(Reply::sse_tool_calls(
        &[
            ("call_a", "lookup_transaction", args1),
            ("call_b", "list_settlements", args2),
        ],
        40,
    ));
    let llm = client(&server);

    let stream = llm
        .stream(ask("check").with_tools(vec![lookup_tool()]))
        .await
        .unwrap();
    let answer = collect_stream(stream).await.unwrap();

    assert_eq!(
        answer.tool_calls,
        vec![
            ToolCall::new("call_a", "lookup_transaction", args1),
            ToolCall::new("call_b", "list_settlements", args2),
        ]
    );
    assert_eq!(answer.finish_reason, FinishReason::ToolCalls);
    assert_eq!(
        answer.tool_calls[0].arguments_json().unwrap()["id"],
        "pay_9XK2"
    );
    assert_eq!(answer.usage.total_tokens, 17);
}

#[tokio::test]
async fn stream_cut_off_before_finish_is_an_error() {
    let server = FakeOpenAi::start().await;
    server.push(Reply::Sse {
        events: vec![fake_openai::chunk(json!({"content": "Your payout"}), None)],
        delay: Duration::ZERO,
    });
    let llm = client(&server);
    let mut stream = llm.stream(ask("payout?")).await.unwrap();
    assert_eq!(
        stream.next().await.unwrap().unwrap(),
        StreamEvent::TextDelta("Your payout".into())
    );
    let err = stream.next().await.unwrap().unwrap_err();
    assert!(matches!(err, LlmError::BadResponse(_)), "{err:?}");
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn stalled_stream_times_out() {
    let server = FakeOpenAi::start().await;
    server.push(Reply::sse_text(&["a", "b"]).with_delay(Duration::from_secs(3)));
    let mut cfg = config(&server);
    cfg.stream_idle_timeout = Duration::from_millis(200);
    let llm = OpenAiCompatible::new(cfg).unwrap();
    let stream = llm.stream(ask("x")).await.unwrap();
    let err = collect_stream(stream).await.unwrap_err();
    assert!(matches!(err, LlmError::Stalled { .. }), "{err:?}");
    assert!(err.to_string().contains("0.2 s"), "{err}");
}

#[tokio::test]
async fn rate_limited_with_retry_after_then_success() {
    let server = FakeOpenAi::start().await;
    server.push(Reply::status(429, "Rate limit reached for model").header("Retry-After", "1"));
    server.push(Reply::text("ok after waiting"));
    let llm = client(&server);

    let started = Instant::now();
    let answer = llm.chat(ask("hi")).await.unwrap();

    assert_eq!(answer.content.as_deref(), Some("ok after waiting"));
    assert_eq!(server.request_count(), 2);
    // The computed backoff is at most 40 ms: waiting a second means Retry-After was honoured.
    assert!(started.elapsed() >= Duration::from_millis(950));
    assert_eq!(llm.usage_totals().calls, 1);
}

#[tokio::test]
async fn retry_after_beyond_the_time_budget_gives_up_at_once() {
    let server = FakeOpenAi::start().await;
    server.push(Reply::status(429, "slow down").header("Retry-After", "120"));
    server.push(Reply::text("too late"));
    let llm = client(&server);
    let err = llm.chat(ask("hi")).await.unwrap_err();
    match &err {
        LlmError::RateLimited {
            retry_after,
            attempts,
            ..
        } => {
            // Clamped to the call's time budget (the wait could never be honoured anyway).
            let budget = client(&server).config().retry.max_elapsed;
            assert!(budget < Duration::from_secs(120));
            assert_eq!(*retry_after, Some(budget));
            assert_eq!(*attempts, 1);
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert!(err.to_string().contains("429"), "{err}");
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn server_error_then_success() {
    let server = FakeOpenAi::start().await;
    server.push(Reply::status(500, "internal error"));
    server.push(Reply::text("recovered"));
    let llm = client(&server);
    let answer = llm.chat(ask("hi")).await.unwrap();
    assert_eq!(answer.content.as_deref(), Some("recovered"));
    assert_eq!(server.request_count(), 2);
}

#[tokio::test]
async fn streaming_request_is_retried_too() {
    let server = FakeOpenAi::start().await;
    server.push(Reply::status(503, "overloaded"));
    server.push(Reply::sse_text(&["fine"]));
    let llm = client(&server);
    let answer = collect_stream(llm.stream(ask("hi")).await.unwrap())
        .await
        .unwrap();
    assert_eq!(answer.content.as_deref(), Some("fine"));
    assert_eq!(server.request_count(), 2);
}

#[tokio::test]
async fn repeated_server_errors_exhaust_the_retry_budget() {
    let server = FakeOpenAi::start().await;
    server.set_fallback(Reply::status(502, "bad gateway"));
    let llm = OpenAiCompatible::new(config(&server).with_retry(fast_retry(2))).unwrap();
    let err = llm.chat(ask("hi")).await.unwrap_err();
    match &err {
        LlmError::Server {
            status, attempts, ..
        } => assert_eq!((*status, *attempts), (502, 3)),
        other => panic!("expected Server, got {other:?}"),
    }
    assert!(err.to_string().contains("bad gateway"), "{err}");
    assert_eq!(server.request_count(), 3);
    assert_eq!(llm.usage_totals().calls, 0);
}

#[tokio::test]
async fn retries_stop_at_the_time_budget() {
    let server = FakeOpenAi::start().await;
    server.set_fallback(Reply::status(500, "down"));
    let policy = RetryPolicy {
        max_retries: 1000,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(50),
        max_elapsed: Duration::from_millis(400),
        jitter: false,
    };
    let llm = OpenAiCompatible::new(config(&server).with_retry(policy)).unwrap();
    let err = llm.chat(ask("hi")).await.unwrap_err();
    assert!(matches!(err, LlmError::Server { .. }), "{err:?}");
    let n = server.request_count();
    assert!(
        (2..=9).contains(&n),
        "{n} attempts within a 400 ms budget of 50 ms waits"
    );
}

#[tokio::test]
async fn hung_server_times_out() {
    let server = FakeOpenAi::start().await;
    server.set_fallback(Reply::Hang);
    let cfg = config(&server)
        .with_timeouts(Duration::from_secs(1), Duration::from_millis(300))
        .with_retry(fast_retry(1));
    let llm = OpenAiCompatible::new(cfg).unwrap();
    let err = llm.chat(ask("hi")).await.unwrap_err();
    match &err {
        LlmError::Timeout { after, attempts } => {
            // The figure is the time really spent: two 300 ms attempts and the wait between.
            assert!(*after >= Duration::from_millis(600), "{after:?}");
            assert!(*after < Duration::from_secs(5), "{after:?}");
            assert_eq!(*attempts, 2);
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(err.to_string().contains("did not answer"), "{err}");
    assert_eq!(server.request_count(), 2);
}

#[tokio::test]
async fn malformed_json_is_a_bad_response_and_not_retried() {
    let server = FakeOpenAi::start().await;
    server.push(Reply::malformed());
    server.push(Reply::text("should not be reached"));
    let llm = client(&server);
    let err = llm.chat(ask("hi")).await.unwrap_err();
    assert!(matches!(err, LlmError::BadResponse(_)), "{err:?}");
    assert!(err.to_string().contains("not a chat completion"), "{err}");
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn empty_choices_is_a_bad_response() {
    let server = FakeOpenAi::start().await;
    server.push(Reply::empty_choices());
    let llm = client(&server);
    let err = llm.chat(ask("hi")).await.unwrap_err();
    assert!(matches!(err, LlmError::BadResponse(_)), "{err:?}");
    assert!(err.to_string().contains("no choices"), "{err}");
}

#[tokio::test]
async fn dropped_connection_is_retried() {
    let server = FakeOpenAi::start().await;
    server.push(Reply::Drop);
    server.push(Reply::text("second try"));
    let llm = client(&server);
    let answer = llm.chat(ask("hi")).await.unwrap();
    assert_eq!(answer.content.as_deref(), Some("second try"));
    assert_eq!(server.request_count(), 2);
}

#[tokio::test]
async fn unauthorised_is_an_auth_error_without_the_key() {
    let server = FakeOpenAi::start().await;
    server.require_api_key("gsk_the_right_one");
    server.push(Reply::text("never"));
    let llm = client(&server);
    let err = llm.chat(ask("hi")).await.unwrap_err();
    assert!(matches!(err, LlmError::Auth { status: 401, .. }), "{err:?}");
    // The server quoted the key it received; the client scrubbed it.
    assert!(
        err.to_string().contains("Incorrect API key provided"),
        "{err}"
    );
    assert!(err.to_string().contains("[redacted]"), "{err}");
    assert!(err.to_string().contains("MEMEX_LLM_API_KEY"), "{err}");
    assert_no_key(&err);
    assert_eq!(server.request_count(), 1, "auth errors are not retried");

    // With the right key the same server answers.
    let ok = OpenAiCompatible::new(config(&server).with_api_key("gsk_the_right_one"))
        .unwrap()
        .chat(ask("hi"))
        .await
        .unwrap();
    assert_eq!(ok.content.as_deref(), Some("never"));
}

#[tokio::test]
async fn key_never_appears_in_debug_or_errors() {
    let server = FakeOpenAi::start().await;
    let llm = client(&server);
    let shown = format!("{llm:?} {:?}", llm.config());
    assert!(!shown.contains(KEY) && !shown.contains("SECRET"), "{shown}");

    // Connection refused: find a free port, then close it.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = LlmConfig::default()
        .with_base_url(format!("http://127.0.0.1:{port}/v1"))
        .with_api_key(KEY)
        .with_retry(fast_retry(2));
    let err = OpenAiCompatible::new(cfg)
        .unwrap()
        .chat(ask("hi"))
        .await
        .unwrap_err();
    match &err {
        LlmError::Connect { attempts, url, .. } => {
            assert_eq!(*attempts, 3);
            assert!(url.contains(&port.to_string()));
        }
        other => panic!("expected Connect, got {other:?}"),
    }
    assert_no_key(&err);

    // Errors from every other path too.
    server.push(Reply::status(500, &format!("echo {KEY}")));
    let err = OpenAiCompatible::new(config(&server).with_retry(RetryPolicy::none()))
        .unwrap()
        .chat(ask("hi"))
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::Server { .. }));
    assert_no_key(&err);
}

#[tokio::test]
async fn a_server_that_ignores_stream_true_still_streams() {
    let server = FakeOpenAi::start().await;
    server.push(Reply::tool_calls(&[(
        "call_1",
        "lookup_transaction",
        r#"{"id":"pay_1"}"#,
    )]));
    let llm = client(&server);
    let events: Vec<StreamEvent> = llm
        .stream(ask("x").with_tools(vec![lookup_tool()]))
        .await
        .unwrap()
        .map(|e| e.unwrap())
        .collect()
        .await;
    assert_eq!(
        events,
        vec![
            StreamEvent::ToolCall(ToolCall::new(
                "call_1",
                "lookup_transaction",
                r#"{"id":"pay_1"}"#
            )),
            StreamEvent::Done {
                usage: Some(Usage {
                    prompt_tokens: 12,
                    completion_tokens: 5,
                    total_tokens: 17
                }),
                finish_reason: FinishReason::ToolCalls
            }
        ]
    );
    assert_eq!(server.requests()[0].body["stream"], true);
}

/// A completion cut off by `max_tokens`: `finish_reason` `length` with the text so far.
fn cut_off(content: &str) -> Reply {
    Reply::json(json!({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": "fake-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "length"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 64, "total_tokens": 76}
    }))
}

/// Every call carries a cap on completion tokens (a small local model that rambles would
/// otherwise run to the end of its context): 1024 by default, the configured number, a
/// request's own smaller number, or none when the cap is off.
#[tokio::test]
async fn every_call_is_capped_in_completion_tokens() {
    let server = FakeOpenAi::start().await;
    server.set_fallback(Reply::text("ok"));
    let sent = |i: usize| server.requests()[i].body.get("max_tokens").cloned();

    client(&server).chat(ask("a")).await.unwrap();
    assert_eq!(sent(0), Some(json!(1024)), "the default cap");
    let capped = OpenAiCompatible::new(config(&server).with_max_tokens(Some(64))).unwrap();
    capped.chat(ask("b")).await.unwrap();
    assert_eq!(sent(1), Some(json!(64)));
    capped.chat(ask("c").with_max_tokens(400)).await.unwrap();
    assert_eq!(
        sent(2),
        Some(json!(64)),
        "a request cannot ask past the cap"
    );
    capped.chat(ask("d").with_max_tokens(16)).await.unwrap();
    assert_eq!(sent(3), Some(json!(16)), "a request may ask for fewer");
    let events: Vec<_> = capped.stream(ask("e")).await.unwrap().collect().await;
    assert!(events.iter().all(Result::is_ok));
    assert_eq!(sent(4), Some(json!(64)), "streamed calls too");
    let off = OpenAiCompatible::new(config(&server).with_max_tokens(None)).unwrap();
    off.chat(ask("f")).await.unwrap();
    assert_eq!(sent(5), None, "no cap: no field");
}

/// An answer cut off at the cap is an answer (its text, `finish_reason` `length`), not an
/// error, streamed or not.
#[tokio::test]
async fn an_answer_cut_off_at_the_cap_is_returned_as_it_stands() {
    let server = FakeOpenAi::start().await;
    server.push(cut_off("Your settlement is scheduled for"));
    let llm = client(&server);
    let answer = llm.chat(ask("When is my settlement?")).await.unwrap();
    assert_eq!(answer.finish_reason, FinishReason::Length);
    assert_eq!(
        answer.content.as_deref(),
        Some("Your settlement is scheduled for")
    );

    let events = vec![
        fake_openai::chunk(
            json!({"role": "assistant", "content": "Your settlement "}),
            None,
        ),
        fake_openai::chunk(json!({"content": "is scheduled for"}), None),
        fake_openai::chunk(json!({}), Some("length")),
        "[DONE]".to_string(),
    ];
    server.push(Reply::Sse {
        events,
        delay: Duration::ZERO,
    });
    let answer = collect_stream(llm.stream(ask("When?")).await.unwrap())
        .await
        .unwrap();
    assert_eq!(answer.finish_reason, FinishReason::Length);
    assert_eq!(
        answer.content.as_deref(),
        Some("Your settlement is scheduled for")
    );
}

/// The max_tokens of the last request the server received.
fn last_max_tokens(server: &FakeOpenAi) -> Option<serde_json::Value> {
    server
        .requests()
        .last()
        .and_then(|r| r.body.get("max_tokens").cloned())
}

/// Through the real binary: `memex ask` sends `max_tokens` from `--llm-max-tokens`, else
/// `MEMEX_LLM_MAX_TOKENS`, else the config file's `llm_max_tokens`, else 1024; an answer cut off
/// at the cap is the turn's answer, and a tool call cut off mid-arguments becomes an error the
/// model is told about (then it answers), never a failure of the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_caps_each_answer_from_flag_env_file_or_default() {
    let server = FakeOpenAi::start().await;
    let url = server.base_url();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let init = cli::memex(&data, &url, &["init", "--demo", "--json"]).await;
    cli::json_of(&init);
    let ask_with = |extra: &[&str], env: Option<&str>| {
        let mut args = vec!["ask", "--merchant", "MID001", "--json"];
        args.extend_from_slice(extra);
        args.push("When is my next settlement?");
        let mut cmd = cli::command(&data, &url, &args);
        cmd.env_remove("MEMEX_LLM_MAX_TOKENS");
        if let Some(v) = env {
            cmd.env("MEMEX_LLM_MAX_TOKENS", v);
        }
        cmd
    };
    let run = |mut cmd: std::process::Command| async move {
        tokio::task::spawn_blocking(move || cmd.output().expect("memex runs"))
            .await
            .expect("joined")
    };

    server.push(Reply::text("Tomorrow."));
    cli::json_of(&run(ask_with(&[], None)).await);
    assert_eq!(last_max_tokens(&server), Some(json!(1024)), "default");

    server.push(Reply::text("Tomorrow."));
    cli::json_of(&run(ask_with(&[], Some("300"))).await);
    assert_eq!(last_max_tokens(&server), Some(json!(300)), "env");

    server.push(Reply::text("Tomorrow."));
    cli::json_of(&run(ask_with(&["--llm-max-tokens", "77"], Some("300"))).await);
    assert_eq!(last_max_tokens(&server), Some(json!(77)), "flag over env");

    std::fs::write(data.join("memex.toml"), "llm_max_tokens = 55\n").unwrap();
    server.push(Reply::text("Tomorrow."));
    cli::json_of(&run(ask_with(&[], None)).await);
    assert_eq!(last_max_tokens(&server), Some(json!(55)), "config file");
    std::fs::remove_file(data.join("memex.toml")).unwrap();

    let out = run(ask_with(&["--llm-max-tokens", "-5"], None)).await;
    assert_eq!(out.status.code(), Some(2), "a bad cap is a usage error");

    // Cut off at the cap: the text so far is the answer.
    server.push(cut_off("Your next settlement is on"));
    let r = cli::json_of(&run(ask_with(&[], None)).await);
    assert_eq!(r["answer"], "Your next settlement is on");

    // A tool call cut off mid-arguments: the model is told the arguments are not JSON, and
    // its next answer ends the turn.
    server.push(Reply::json(json!({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": "fake-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
            "tool_calls": [{"id": "call_1", "type": "function", "function":
                {"name": "get_transaction", "arguments": "{\"transaction_id\": \"pay_AB"}}]},
            "finish_reason": "length"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 64, "total_tokens": 76}
    })));
    server.push(Reply::text("Which transaction do you mean?"));
    let out = run(ask_with(&[], None)).await;
    let r = cli::json_of(&out);
    assert_eq!(r["answer"], "Which transaction do you mean?");
    assert_eq!(r["tool_calls"][0]["status"], "invalid_args", "{r}");
    let told = server.requests().last().unwrap().body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap_or("").to_string())
        .unwrap_or_default();
    assert!(told.contains("invalid_json"), "the model is told: {told}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

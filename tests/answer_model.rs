//! The optional answer model (`--llm-answer-model`): the main model chooses tools, the answer
//! model writes only the final answer, once per turn and never with tools; `ask --json` reports
//! each model's share. Through the real binary against the fake OpenAI-compatible server.

use crate::support::cli;
use crate::support::fake_openai;

use cli::{json_of, memex};
use fake_openai::{FakeOpenAi, Reply};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_model_writes_the_answer_once_and_never_sees_tools() {
    let server = FakeOpenAi::start().await;
    let url = server.base_url();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    json_of(&memex(data, &url, &["init", "--demo", "--json"]).await);
    let before = server.requests().len();

    server
        .push(Reply::tool_calls(&[(
            "c1",
            "get_transaction",
            r#"{"transaction_id":"pay_ABC123"}"#,
        )]))
        .push(Reply::text("small model's draft, never shown"))
        .push(Reply::text(
            "pay_ABC123 settles on T+2 (from the answer model).",
        ));
    let r = json_of(
        &memex(
            data,
            &url,
            &[
                "ask",
                "--merchant",
                "MID001",
                "--json",
                "--llm-answer-model",
                "big-model",
                "Where is the settlement for pay_ABC123?",
            ],
        )
        .await,
    );
    assert_eq!(
        r["answer"],
        "pay_ABC123 settles on T+2 (from the answer model)."
    );
    assert_eq!(r["tool_calls"][0]["status"], "ok");
    let first_session = r["session"].as_str().unwrap().to_string();
    let reqs: Vec<_> = server.requests().into_iter().skip(before).collect();
    let chat: Vec<_> = reqs
        .iter()
        .filter(|q| q.body.get("messages").is_some() && q.body.get("response_format").is_none())
        .collect();
    let answer_calls: Vec<_> = chat
        .iter()
        .filter(|q| q.body["model"] == "big-model")
        .collect();
    let seen: Vec<String> = reqs.iter().map(|q| q.body["model"].to_string()).collect();
    assert_eq!(
        answer_calls.len(),
        1,
        "the answer model is called exactly once: {seen:?}"
    );
    assert!(
        answer_calls[0].body.get("tools").is_none(),
        "the answer model is never offered tools: {}",
        answer_calls[0].body
    );
    let answer_prompt = answer_calls[0].body["messages"].to_string();
    assert!(
        answer_prompt.contains("Priya Sharma"),
        "the tool result reaches the answer model"
    );
    assert!(!answer_prompt.contains("never shown"));
    let main_calls: Vec<_> = chat
        .iter()
        .filter(|q| q.body["model"] == "fake-model")
        .collect();
    assert_eq!(main_calls.len(), 2, "two tool-selection rounds");
    assert!(main_calls.iter().all(|q| q.body.get("tools").is_some()));

    let models = r["models"].as_array().unwrap();
    assert_eq!(models.len(), 2, "{r}");
    assert_eq!(models[0]["model"], "fake-model");
    assert_eq!(models[0]["role"], "tools");
    assert_eq!(models[0]["calls"], 2);
    assert_eq!(models[1]["model"], "big-model");
    assert_eq!(models[1]["role"], "answer");
    assert_eq!(models[1]["calls"], 1);
    for m in models {
        for key in ["prompt_tokens", "completion_tokens", "latency_ms"] {
            assert!(m.get(key).is_some(), "{m}");
        }
    }

    // Unset: one model does both, as before.
    let before = server.requests().len();
    server.push(Reply::text("Hello."));
    let r = json_of(&memex(data, &url, &["ask", "--merchant", "MID001", "--json", "hi"]).await);
    assert_eq!(r["answer"], "Hello.");
    assert_eq!(r["models"].as_array().unwrap().len(), 1);
    assert_eq!(r["models"][0]["role"], "tools_and_answer");
    assert!(server
        .requests()
        .iter()
        .skip(before)
        .all(|q| q.body["model"] != "big-model"));

    // The audit names the model that chose each call; `memex stats` has each model's share.
    let audit = json_of(
        &memex(
            data,
            &url,
            &["audit", "--session", &first_session, "--json"],
        )
        .await,
    );
    assert_eq!(audit[0]["tool"], "get_transaction");
    assert_eq!(audit[0]["model"], "fake-model", "{audit}");
    let text = memex(data, &url, &["audit", "--session", &first_session]).await;
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("chosen by fake-model"),
        "{text:?}"
    );
    let stats = json_of(&memex(data, &url, &["stats", "--json"]).await);
    let per_model = stats["models"].as_array().unwrap();
    let find = |model: &str, role: &str| {
        per_model
            .iter()
            .find(|m| m["model"] == model && m["role"] == role)
            .unwrap_or_else(|| panic!("no {model}/{role} in {stats}"))
            .clone()
    };
    let tools = find("fake-model", "tools");
    assert_eq!(tools["turns"], 1);
    assert_eq!(tools["calls"], 2);
    assert_eq!(
        tools["prompt_tokens"], 24,
        "the fake reports 12 + 5 per call"
    );
    assert_eq!(tools["completion_tokens"], 10);
    let answer = find("big-model", "answer");
    assert_eq!(
        (answer["turns"].clone(), answer["calls"].clone()),
        (1.into(), 1.into())
    );
    assert_eq!(answer["prompt_tokens"], 12);
    assert!(answer["latency_ms"].as_f64().unwrap() > 0.0, "{answer}");
    let both = find("fake-model", "tools_and_answer");
    assert_eq!(both["calls"], 1);
    assert_eq!(per_model.len(), 3, "{stats}");
    let text = memex(data, &url, &["stats"]).await;
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("model big-model (answer)"),
        "{text:?}"
    );
}

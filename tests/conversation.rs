//! The conversation buffer: budget, compression rules, persistence in a real SQLite file,
//! failure and crash behaviour, fact retention.

use crate::support::conv;
use crate::support::fake_openai;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use conv::{faithful, filler};
use fake_openai::{validate_request, FakeOpenAi, Reply};
use memex::conversation::{
    Compression, ConversationBuffer, ConversationConfig, ConversationError, ConversationStore,
    EstimatedTokens, SqliteConversationStore, StoredSession, TokenCounter, SUMMARY_HEADING,
};
use memex::llm::{
    ChatModel, ChatRequest, ChatResponse, FinishReason, LlmConfig, LlmError, Message,
    OpenAiCompatible, RetryPolicy, ScriptedModel, ToolCall,
};
use tempfile::TempDir;

const SESSION: &str = "merchant-42/session-1";
const TXN: &str = "pay_7Q2XK9";
const AMOUNT: &str = "₹12,480.50";

fn config(budget: usize, keep: usize) -> ConversationConfig {
    ConversationConfig {
        system_prompt: "You are the support agent of a payments company.".into(),
        token_budget: budget,
        keep_recent_turns: keep,
        compress_target: 0.5,
        summary_max_tokens: 400,
        preserve_identifiers: false,
    }
}

fn sqlite(dir: &TempDir) -> Arc<SqliteConversationStore> {
    Arc::new(SqliteConversationStore::open_in(dir.path()).expect("open store"))
}

async fn open(
    store: Arc<dyn ConversationStore>,
    model: Arc<dyn ChatModel>,
    cfg: ConversationConfig,
) -> ConversationBuffer {
    ConversationBuffer::open(store, model, SESSION, cfg)
        .await
        .expect("open buffer")
}

/// Every assistant message with tool calls is followed, immediately, by a result for each call
/// (except the exchange still in progress at the end), and no tool result is orphaned.
fn assert_exchanges_whole(messages: &[Message]) {
    for (i, m) in messages.iter().enumerate() {
        let calls = m.tool_calls();
        if calls.is_empty() {
            if let Message::Tool { tool_call_id, .. } = m {
                let owner = messages[..i]
                    .iter()
                    .rev()
                    .find(|p| !matches!(p, Message::Tool { .. }));
                assert!(
                    owner.is_some_and(|o| o.tool_calls().iter().any(|c| &c.id == tool_call_id)),
                    "orphan tool result {tool_call_id} at {i}"
                );
            }
            continue;
        }
        for (k, call) in calls.iter().enumerate() {
            match messages.get(i + 1 + k) {
                Some(Message::Tool { tool_call_id, .. }) => assert_eq!(tool_call_id, &call.id),
                // The exchange in progress: its results are not appended yet.
                None => {}
                other => panic!("call {} at {i} lost its result: {other:?}", call.id),
            }
        }
    }
}

#[tokio::test]
async fn compression_triggers_at_the_budget_and_not_before() {
    let dir = TempDir::new().unwrap();
    let model = faithful();
    let budget = 400;
    let mut buf = open(sqlite(&dir), model.clone(), config(budget, 1)).await;
    let counter = EstimatedTokens;

    // Fill with whole turns while they fit with room to spare.
    let mut i = 0;
    loop {
        let turn = filler(i);
        let need: usize = turn.iter().map(|m| counter.message(m)).sum();
        if buf.token_count() + need + 12 > budget {
            break;
        }
        for m in turn {
            let report = buf.append(m).await.unwrap();
            assert_eq!(report.compression, Compression::NotNeeded);
        }
        i += 1;
    }
    assert!(i >= 3, "the budget should hold a few turns, held {i}");
    // Land exactly on the budget: still no compression.
    let room = budget - buf.token_count();
    let exact = Message::user("x".repeat((room - memex::conversation::MESSAGE_OVERHEAD) * 4));
    let report = buf.append(exact).await.unwrap();
    assert_eq!(buf.token_count(), budget);
    assert_eq!(report.compression, Compression::NotNeeded);
    assert_eq!(
        model.request_count(),
        0,
        "no summarisation at or under the budget"
    );

    // One more message crosses it.
    let report = buf
        .append(Message::assistant("That is everything, thank you."))
        .await
        .unwrap();
    match report.compression {
        Compression::Compressed {
            turns,
            tokens_before,
            tokens_after,
            ..
        } => {
            assert!(turns >= 1);
            assert!(tokens_before > budget);
            assert!(tokens_after <= budget, "{tokens_after} > {budget}");
        }
        other => panic!("expected a compression, got {other:?}"),
    }
    assert_eq!(model.request_count(), 1);
    let request = model.last_request().unwrap();
    assert!(request.messages[0]
        .content()
        .unwrap()
        .contains("every identifier"));
    assert!(request.messages[1]
        .content()
        .unwrap()
        .contains("Question 0"));
    assert!(buf.summary().contains("Question 0"));
    assert_eq!(buf.compressions(), 1);
    // The summary is a labelled section of the one system message.
    let msgs = buf.messages();
    let system = msgs[0].content().unwrap();
    assert!(system.starts_with("You are the support agent"));
    assert!(system.contains(SUMMARY_HEADING));
    assert_eq!(msgs.iter().filter(|m| m.role() == "system").count(), 1);
}

/// A support turn with a tool exchange of `calls` parallel calls.
fn tool_turn(i: usize, calls: usize) -> Vec<Message> {
    let ids: Vec<String> = (0..calls).map(|k| format!("call_{i}_{k}")).collect();
    let mut turn = vec![
        Message::user(format!(
            "Turn {i}: what happened to payment pay_{i:04}X and its refund?"
        )),
        Message::assistant_tool_calls(
            ids.iter()
                .map(|id| {
                    ToolCall::new(
                        id.clone(),
                        "lookup_transaction",
                        format!(r#"{{"id":"pay_{i:04}X"}}"#),
                    )
                })
                .collect(),
        ),
    ];
    for id in &ids {
        turn.push(Message::tool(
            id.clone(),
            format!(r#"{{"id":"pay_{i:04}X","status":"refunded","amount":"₹{i}00.00","note":"refund processed by the bank"}}"#),
        ));
    }
    turn.push(Message::assistant(format!(
        "Payment pay_{i:04}X was refunded; the money is back with your customer."
    )));
    turn
}

#[tokio::test]
async fn tool_exchanges_stay_whole_and_the_server_accepts_the_history() {
    let server = FakeOpenAi::start().await;
    server.set_fallback(Reply::text(
        "The merchant asked about several refunded payments; all were refunded.",
    ));
    let llm = Arc::new(
        OpenAiCompatible::new(
            LlmConfig::default()
                .with_base_url(server.base_url())
                .with_model("fake-model")
                .with_retry(RetryPolicy::none()),
        )
        .unwrap(),
    );
    let dir = TempDir::new().unwrap();
    let mut buf = open(sqlite(&dir), llm.clone(), config(450, 1)).await;

    let mut compressed = 0;
    for i in 0..12 {
        for m in tool_turn(i, 1 + i % 3) {
            let report = buf.append(m).await.unwrap();
            match report.compression {
                Compression::Compressed { .. } => compressed += 1,
                Compression::Failed { reason } => panic!("compression failed: {reason}"),
                _ => {}
            }
            assert_exchanges_whole(buf.recent());
        }
        // At the end of each turn the prompt is a valid OpenAI conversation.
        let body = serde_json::json!({
            "model": "fake-model",
            "messages": serde_json::to_value(buf.messages()).unwrap(),
        });
        validate_request(&body).unwrap_or_else(|e| panic!("turn {i}: {e}"));
        assert!(
            matches!(buf.recent().first(), Some(Message::User { .. })),
            "the verbatim part starts with a user message"
        );
    }
    assert!(compressed >= 3, "only {compressed} compressions");

    // And the real client gets a 200 for it from the validating server.
    let before = server.request_count();
    let answer = llm
        .chat(ChatRequest::new(buf.messages()))
        .await
        .expect("the compressed history is accepted");
    assert!(answer.content.is_some());
    assert_eq!(server.request_count(), before + 1);
    let summariser_requests = server.requests().len() - 1;
    assert_eq!(summariser_requests, compressed);
}

#[tokio::test]
async fn restart_resumes_the_same_buffer() {
    let dir = TempDir::new().unwrap();
    let model = faithful();
    let (summary, recent, messages, watermark, compressions);
    {
        let mut buf = open(sqlite(&dir), model.clone(), config(300, 1)).await;
        for i in 0..8 {
            for m in filler(i) {
                buf.append(m).await.unwrap();
            }
        }
        assert!(buf.compressions() >= 1);
        summary = buf.summary().to_string();
        recent = buf.recent().to_vec();
        messages = buf.messages();
        watermark = buf.watermark();
        compressions = buf.compressions();
    } // Buffer and store dropped: the "process" ends.

    let mut buf = open(sqlite(&dir), model.clone(), config(300, 1)).await;
    assert_eq!(buf.summary(), summary);
    assert_eq!(buf.recent(), recent.as_slice());
    assert_eq!(buf.messages(), messages);
    assert_eq!(buf.watermark(), watermark);
    assert_eq!(buf.compressions(), compressions);

    // It goes on from there, and numbering continues after the old messages.
    let report = buf.append(Message::user("Still there?")).await.unwrap();
    assert!(report.seq > watermark);
    assert!(report.seq > 16 - 1);
    let again = open(sqlite(&dir), model, config(300, 1)).await;
    assert_eq!(again.recent().last(), Some(&Message::user("Still there?")));

    // Another session in the same file is independent.
    let other = ConversationBuffer::open(sqlite(&dir), faithful(), "merchant-7/s", config(300, 1))
        .await
        .unwrap();
    assert!(other.recent().is_empty() && other.summary().is_empty());
}

async fn fill_past_budget(buf: &mut ConversationBuffer, from: usize) -> Vec<Compression> {
    let mut reports = Vec::new();
    let mut i = from;
    while reports.is_empty() {
        for m in filler(i) {
            let r = buf.append(m).await.unwrap();
            if r.compression != Compression::NotNeeded {
                reports.push(r.compression);
            }
        }
        i += 1;
    }
    reports
}

#[tokio::test]
async fn failed_or_garbage_summaries_lose_nothing_and_are_retried() {
    let dir = TempDir::new().unwrap();
    let model = Arc::new(ScriptedModel::new());
    model
        .push_error(LlmError::Server {
            status: 500,
            attempts: 3,
            message: "down".into(),
        })
        .push_text("   \n ")
        .push_response(ChatResponse {
            finish_reason: FinishReason::Length,
            ..ChatResponse::text("The merchant asked about settle")
        })
        .push_text("Merchant asked about settlements 0 to 2; answered.");
    let mut buf = open(sqlite(&dir), model.clone(), config(300, 1)).await;

    let mut all: Vec<Message> = Vec::new();
    let mut i = 0;
    let mut outcomes = Vec::new();
    while outcomes.len() < 4 {
        for m in filler(i) {
            all.push(m.clone());
            let report = buf.append(m).await.unwrap();
            if report.compression != Compression::NotNeeded {
                outcomes.push(report.compression);
                if outcomes.len() < 4 {
                    // Nothing lost, in memory or on disk, after each failure.
                    assert_eq!(buf.recent(), all.as_slice());
                    assert!(buf.summary().is_empty());
                    assert!(buf.last_compression_error().is_some());
                    let reopened = open(sqlite(&dir), model.clone(), config(300, 1)).await;
                    assert_eq!(reopened.recent(), all.as_slice());
                    assert!(reopened.summary().is_empty());
                }
            }
        }
        i += 1;
    }
    let reasons: Vec<String> = outcomes[..3]
        .iter()
        .map(|c| match c {
            Compression::Failed { reason } => reason.clone(),
            other => panic!("expected a failure, got {other:?}"),
        })
        .collect();
    assert!(reasons[0].contains("summariser failed"), "{}", reasons[0]);
    assert!(reasons[1].contains("empty"), "{}", reasons[1]);
    assert!(reasons[2].contains("cut off"), "{}", reasons[2]);
    // Retried at each following append, and the fourth attempt works.
    assert!(matches!(outcomes[3], Compression::Compressed { .. }));
    assert_eq!(model.request_count(), 4);
    assert_eq!(
        buf.summary(),
        "Merchant asked about settlements 0 to 2; answered."
    );
    assert!(buf.last_compression_error().is_none());
    // Summary plus verbatim turns still account for every message: the folded ones are gone
    // from the store, the rest are there.
    let reopened = open(sqlite(&dir), model, config(300, 1)).await;
    assert_eq!(reopened.recent(), buf.recent());
    assert_eq!(reopened.recent(), &all[all.len() - buf.recent().len()..]);
}

#[tokio::test]
async fn a_crash_while_summarising_loses_nothing() {
    let dir = TempDir::new().unwrap();
    let hanging = Arc::new(ScriptedModel::new());
    hanging.push_hang();
    let mut buf = open(sqlite(&dir), hanging.clone(), config(300, 1)).await;
    let mut all = Vec::new();
    // Append until an append gets stuck in summarisation, then "crash" it (cancel the future).
    let mut i = 0;
    'outer: loop {
        for m in filler(i) {
            all.push(m.clone());
            match tokio::time::timeout(Duration::from_millis(300), buf.append(m)).await {
                Ok(r) => assert_eq!(r.unwrap().compression, Compression::NotNeeded),
                Err(_) => break 'outer,
            }
        }
        i += 1;
    }
    assert_eq!(hanging.request_count(), 1);
    drop(buf);

    // After the "restart", every message is there and the session compresses normally.
    let model = faithful();
    let mut buf = open(sqlite(&dir), model.clone(), config(300, 1)).await;
    assert_eq!(buf.recent(), all.as_slice());
    assert!(buf.summary().is_empty());
    let report = buf.append(Message::user("Hello again")).await.unwrap();
    assert!(matches!(report.compression, Compression::Compressed { .. }));
    assert!(buf.summary().contains("Question 0"));
}

/// A store whose summary commits fail, as if the process died between summarising and saving.
struct FailingCommits(Arc<SqliteConversationStore>);

#[async_trait]
impl ConversationStore for FailingCommits {
    async fn load(&self, s: &str) -> Result<StoredSession, ConversationError> {
        self.0.load(s).await
    }
    async fn append(&self, s: &str, seq: u64, m: &Message) -> Result<(), ConversationError> {
        self.0.append(s, seq, m).await
    }
    async fn commit_summary(&self, s: &str, _: &str, _: u64) -> Result<(), ConversationError> {
        Err(ConversationError::Store {
            action: format!("commit the summary of session `{s}`"),
            message: "disk I/O error".into(),
        })
    }
    async fn delete(&self, s: &str) -> Result<(), ConversationError> {
        self.0.delete(s).await
    }
}

#[tokio::test]
async fn a_failed_save_after_summarising_loses_nothing() {
    let dir = TempDir::new().unwrap();
    let inner = sqlite(&dir);
    let mut buf = open(
        Arc::new(FailingCommits(inner.clone())),
        faithful(),
        config(300, 1),
    )
    .await;
    let reports = fill_past_budget(&mut buf, 0).await;
    match &reports[0] {
        Compression::Failed { reason } => assert!(reason.contains("disk I/O error"), "{reason}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(buf.summary().is_empty());
    let n = buf.recent().len();
    let reopened = open(inner, faithful(), config(300, 1)).await;
    assert_eq!(reopened.recent().len(), n);
    assert_eq!(reopened.recent(), buf.recent());
}

#[tokio::test]
async fn the_summary_commit_is_one_transaction() {
    let dir = TempDir::new().unwrap();
    let store = sqlite(&dir);
    let model = faithful();
    let mut buf = open(store.clone(), model.clone(), config(300, 1)).await;
    // A first successful compression, so there is an old summary to protect.
    fill_past_budget(&mut buf, 0).await;
    let old_summary = buf.summary().to_string();
    let old_watermark = buf.watermark();
    assert!(!old_summary.is_empty());

    // Make the last step of the commit (deleting the folded messages) fail inside SQLite, after
    // the summary row was already updated in the same transaction.
    let raw = rusqlite::Connection::open(store.path()).unwrap();
    raw.execute_batch(
        "CREATE TRIGGER crash_on_delete BEFORE DELETE ON conversation_messages
         BEGIN SELECT RAISE(ABORT, 'simulated crash mid-commit'); END;",
    )
    .unwrap();
    let reports = fill_past_budget(&mut buf, 100).await;
    match &reports[0] {
        Compression::Failed { reason } => {
            assert!(reason.contains("simulated crash"), "{reason}")
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    // Nothing of the failed commit is visible: old summary, old watermark, every message.
    let reopened = open(sqlite(&dir), model.clone(), config(300, 1)).await;
    assert_eq!(reopened.summary(), old_summary);
    assert_eq!(reopened.watermark(), old_watermark);
    assert_eq!(reopened.recent(), buf.recent());
    let (summary, watermark): (String, i64) = raw
        .query_row(
            "SELECT summary, watermark FROM conversation_sessions WHERE session_id = ?1",
            [SESSION],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (summary.as_str(), watermark as u64),
        (old_summary.as_str(), old_watermark)
    );

    // Once the fault is gone, the next append compresses.
    raw.execute_batch("DROP TRIGGER crash_on_delete").unwrap();
    let report = buf.append(Message::user("and now?")).await.unwrap();
    assert!(matches!(report.compression, Compression::Compressed { .. }));
    assert!(buf.watermark() > old_watermark);
}

async fn three_compressions(model: Arc<dyn ChatModel>, guard: bool) -> ConversationBuffer {
    let dir = TempDir::new().unwrap();
    let mut cfg = config(350, 1);
    cfg.preserve_identifiers = guard;
    let mut buf = open(sqlite(&dir), model, cfg).await;
    buf.append(Message::user(format!(
        "My customer was charged twice: transaction {TXN} for {AMOUNT}. Please refund one."
    )))
    .await
    .unwrap();
    buf.append(Message::assistant_tool_calls(vec![ToolCall::new(
        "call_refund",
        "create_refund",
        format!(r#"{{"transaction_id":"{TXN}","amount":"{AMOUNT}"}}"#),
    )]))
    .await
    .unwrap();
    buf.append(Message::tool(
        "call_refund",
        r#"{"refund_id":"rf_55AB1","status":"pending"}"#,
    ))
    .await
    .unwrap();
    buf.append(Message::assistant(
        "I have started the refund; it is pending with the bank.",
    ))
    .await
    .unwrap();
    let mut i = 0;
    while buf.compressions() < 3 {
        for m in filler(i) {
            let report = buf.append(m).await.unwrap();
            assert!(!matches!(report.compression, Compression::Failed { .. }));
        }
        i += 1;
        assert!(i < 200, "never reached three compressions");
    }
    // The planted turn is long gone from the verbatim part.
    assert!(buf
        .recent()
        .iter()
        .all(|m| !m.content().unwrap_or("").contains(TXN)));
    dir.close().unwrap();
    buf
}

#[tokio::test]
async fn facts_planted_early_survive_three_compressions() {
    let model = faithful();
    let buf = three_compressions(model.clone(), false).await;
    let prompt = buf.messages()[0].content().unwrap().to_string();
    assert!(prompt.contains(TXN), "{prompt}");
    assert!(prompt.contains(AMOUNT), "{prompt}");
    assert!(prompt.contains("rf_55AB1"), "{prompt}");
    // Each summarisation was handed the previous summary to fold in.
    let requests = model.requests();
    assert_eq!(requests.len(), 3);
    for r in &requests[1..] {
        let user = r.messages[1].content().unwrap();
        assert!(user.starts_with("Previous summary:\n"));
        assert!(!user.starts_with("Previous summary:\n(none yet)"));
        assert!(user.contains(TXN), "the previous summary was not folded in");
    }
}

#[tokio::test]
async fn the_identifier_guard_catches_a_forgetful_summariser() {
    let forgetful = Arc::new(ScriptedModel::from_fn(|_| {
        Ok(ChatResponse::text("The merchant asked several questions."))
    }));
    let buf = three_compressions(forgetful.clone(), true).await;
    let prompt = buf.messages()[0].content().unwrap().to_string();
    assert!(prompt.contains(TXN), "{prompt}");
    assert!(prompt.contains(AMOUNT), "{prompt}");
    assert!(prompt.contains("rf_55AB1"), "{prompt}");
    assert!(prompt.contains("The merchant asked several questions."));
    // Without the guard the same summariser loses them (the guard is what saved them).
    let unguarded = three_compressions(forgetful, false).await;
    assert!(!unguarded.messages()[0].content().unwrap().contains(TXN));
}

#[tokio::test]
async fn the_last_turns_are_kept_verbatim_even_over_budget() {
    let dir = TempDir::new().unwrap();
    let model = faithful();
    let mut buf = open(sqlite(&dir), model.clone(), config(200, 3)).await;
    let long = "a very long message about a disputed chargeback ".repeat(10);
    for k in 0..3 {
        buf.append(Message::user(format!("{k}: {long}")))
            .await
            .unwrap();
    }
    // Three turns, all protected: over budget, nothing to compress, no model call.
    assert!(buf.token_count() > 200);
    let report = buf.append(Message::assistant("noted")).await.unwrap();
    assert_eq!(report.compression, Compression::NothingToCompress);
    assert_eq!(model.request_count(), 0);
    // A fourth turn makes the first one eligible; the last three stay verbatim.
    let report = buf
        .append(Message::user(format!("3: {long}")))
        .await
        .unwrap();
    assert!(matches!(
        report.compression,
        Compression::Compressed { turns: 1, .. }
    ));
    let users: Vec<&str> = buf
        .recent()
        .iter()
        .filter(|m| m.role() == "user")
        .map(|m| &m.content().unwrap()[..1])
        .collect();
    assert_eq!(users, vec!["1", "2", "3"]);
}

#[tokio::test]
async fn bad_session_ids_are_refused() {
    let dir = TempDir::new().unwrap();
    for bad in ["", "a\nb", &"x".repeat(300)] {
        let err = ConversationBuffer::open(sqlite(&dir), faithful(), bad, config(300, 1))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ConversationError::InvalidSession(_)),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn a_corrupt_row_is_reported_not_dropped() {
    let dir = TempDir::new().unwrap();
    let store = sqlite(&dir);
    let mut buf = open(store.clone(), faithful(), config(300, 1)).await;
    buf.append(Message::user("hello")).await.unwrap();
    let raw = rusqlite::Connection::open(store.path()).unwrap();
    raw.execute(
        "UPDATE conversation_messages SET message = '{\"role\":\"wizard\"}' WHERE session_id = ?1",
        [SESSION],
    )
    .unwrap();
    let err = ConversationBuffer::open(sqlite(&dir), faithful(), SESSION, config(300, 1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConversationError::Corrupt { seq: 1, .. }),
        "{err:?}"
    );
    let count: i64 = raw
        .query_row("SELECT count(*) FROM conversation_messages", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(count, 1);
}

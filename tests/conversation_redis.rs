//! The conversation buffer on the Redis store (a real `redis-server`, started by the test).

use crate::support::conv;
use crate::support::redis as redis_support;

use std::sync::Arc;

use conv::{faithful, filler};
use memex::conversation::{
    Compression, ConversationBuffer, ConversationConfig, ConversationError, ConversationStore,
    RedisConversationStore,
};
use memex::llm::{LlmError, Message, ScriptedModel, ToolCall};

const SESSION: &str = "merchant-42:session-9";

fn config() -> ConversationConfig {
    ConversationConfig {
        system_prompt: "You are the support agent of a payments company.".into(),
        token_budget: 300,
        keep_recent_turns: 1,
        compress_target: 0.5,
        summary_max_tokens: 400,
        preserve_identifiers: true,
    }
}

async fn store(redis: &redis_support::RedisServer, prefix: &str) -> Arc<RedisConversationStore> {
    Arc::new(
        RedisConversationStore::connect(&redis.url(), prefix)
            .await
            .expect("connect to Redis"),
    )
}

#[tokio::test]
async fn compresses_and_resumes_after_restart() {
    let redis = redis_support::RedisServer::start();
    let prefix = redis_support::prefix();
    let model = faithful();
    let (messages, watermark, compressions);
    {
        let mut buf = ConversationBuffer::open(
            store(&redis, &prefix).await,
            model.clone(),
            SESSION,
            config(),
        )
        .await
        .unwrap();
        buf.append(Message::user("Refund pay_7Q2XK9 for ₹12,480.50 please"))
            .await
            .unwrap();
        buf.append(Message::assistant_tool_calls(vec![ToolCall::new(
            "c1",
            "create_refund",
            r#"{"id":"pay_7Q2XK9"}"#,
        )]))
        .await
        .unwrap();
        // Two equal messages must both be kept.
        buf.append(Message::tool("c1", "ok")).await.unwrap();
        buf.append(Message::assistant("ok")).await.unwrap();
        for i in 0..8 {
            for m in filler(i) {
                let r = buf.append(m).await.unwrap();
                assert!(!matches!(r.compression, Compression::Failed { .. }));
            }
        }
        assert!(buf.compressions() >= 2);
        assert!(buf.messages()[0].content().unwrap().contains("pay_7Q2XK9"));
        messages = buf.messages();
        watermark = buf.watermark();
        compressions = buf.compressions();
    }
    let buf = ConversationBuffer::open(store(&redis, &prefix).await, model, SESSION, config())
        .await
        .unwrap();
    assert_eq!(buf.messages(), messages);
    assert_eq!(buf.watermark(), watermark);
    assert_eq!(buf.compressions(), compressions);
}

#[tokio::test]
async fn equal_messages_are_distinct_and_nothing_is_lost_on_failure() {
    let redis = redis_support::RedisServer::start();
    let prefix = redis_support::prefix();
    let model = Arc::new(ScriptedModel::new());
    model.push_error(LlmError::BadResponse("garbage".into()));
    let mut buf = ConversationBuffer::open(
        store(&redis, &prefix).await,
        model.clone(),
        SESSION,
        config(),
    )
    .await
    .unwrap();
    let mut all = Vec::new();
    let mut failed = false;
    let mut i = 0;
    while !failed {
        for m in [Message::user("same"), Message::assistant("same")]
            .into_iter()
            .chain(filler(i))
        {
            all.push(m.clone());
            let r = buf.append(m).await.unwrap();
            failed |= matches!(r.compression, Compression::Failed { .. });
        }
        i += 1;
    }
    let reopened =
        ConversationBuffer::open(store(&redis, &prefix).await, faithful(), SESSION, config())
            .await
            .unwrap();
    assert_eq!(reopened.recent(), all.as_slice());
    assert!(reopened.summary().is_empty());
}

#[tokio::test]
async fn commit_is_checked_against_the_stored_watermark() {
    let redis = redis_support::RedisServer::start();
    let prefix = redis_support::prefix();
    let s = store(&redis, &prefix).await;
    for seq in 1..=5 {
        s.append(SESSION, seq, &Message::user(format!("m{seq}")))
            .await
            .unwrap();
    }
    s.commit_summary(SESSION, "first three", 3).await.unwrap();
    let loaded = s.load(SESSION).await.unwrap();
    assert_eq!(loaded.summary, "first three");
    assert_eq!((loaded.watermark, loaded.compressions), (3, 1));
    assert_eq!(
        loaded.messages.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        vec![4, 5]
    );
    // A stale writer cannot move the session back.
    let err = s.commit_summary(SESSION, "stale", 2).await.unwrap_err();
    assert!(
        matches!(
            err,
            ConversationError::Conflict {
                stored: 3,
                ours: 2,
                ..
            }
        ),
        "{err:?}"
    );
    let again = s.load(SESSION).await.unwrap();
    assert_eq!(again, loaded);

    // Sessions are separate, and delete removes one entirely.
    s.append("other", 1, &Message::user("x")).await.unwrap();
    s.delete(SESSION).await.unwrap();
    assert_eq!(s.load(SESSION).await.unwrap(), Default::default());
    assert_eq!(s.load("other").await.unwrap().messages.len(), 1);
}

#[tokio::test]
async fn unreachable_redis_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err =
        RedisConversationStore::connect(&format!("redis://:hunter2@127.0.0.1:{port}/"), "memex")
            .await
            .unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("connect to Redis"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

/// Appends `n` user messages to `session`.
async fn fill(s: &dyn ConversationStore, session: &str, n: u64) {
    for seq in 1..=n {
        s.append(session, seq, &Message::user(format!("{session} m{seq}")))
            .await
            .unwrap();
    }
}

/// A cutoff strictly between what was appended before and what is appended after it.
async fn cutoff_now() -> chrono::DateTime<chrono::Utc> {
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let t = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    t
}

/// Retention on one store: idle sessions go whole, active ones stay, a re-run removes nothing.
async fn retention_on(s: &dyn ConversationStore) -> chrono::DateTime<chrono::Utc> {
    fill(s, "idle", 3).await;
    s.commit_summary("idle", "first one", 1).await.unwrap();
    fill(s, "busy-but-old-start", 1).await;
    let cutoff = cutoff_now().await;
    // A session that began before the cutoff but is still active is kept.
    s.append("busy-but-old-start", 2, &Message::user("still here"))
        .await
        .unwrap();
    fill(s, "fresh", 2).await;
    let report = s.prune_before(cutoff).await.unwrap();
    assert_eq!((report.sessions, report.messages), (1, 2), "{report:?}");
    assert_eq!(s.load("idle").await.unwrap(), Default::default());
    assert_eq!(
        s.load("busy-but-old-start").await.unwrap().messages.len(),
        2
    );
    assert_eq!(s.load("fresh").await.unwrap().messages.len(), 2);
    let again = s.prune_before(cutoff).await.unwrap();
    assert_eq!((again.sessions, again.messages), (0, 0), "{again:?}");
    cutoff
}

#[tokio::test]
async fn retention_prunes_idle_sessions_on_redis_and_keeps_untimed_ones() {
    let redis = redis_support::RedisServer::start();
    let prefix = redis_support::prefix();
    let s = store(&redis, &prefix).await;
    retention_on(&*s).await;
    // A session written before append times were kept: only its keys, no time.
    let client = redis::Client::open(redis.url().as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let legacy = serde_json::to_string(&Message::user("legacy turn")).unwrap();
    let _: i64 = redis::cmd("ZADD")
        .arg(format!("{prefix}:conv:{{legacy}}:msgs"))
        .arg(1)
        .arg(format!("{:020}|{legacy}", 1))
        .query_async(&mut conn)
        .await
        .unwrap();
    // Even a cutoff in the future removes only timed sessions: the untimed one is kept,
    // reported, and stamped so that its retention counts from now.
    let far = chrono::Utc::now() + chrono::Duration::days(1);
    let report = s.prune_before(far).await.unwrap();
    assert_eq!(
        (report.sessions, report.messages, report.untimed),
        (2, 4, 1),
        "{report:?}"
    );
    assert_eq!(s.load("legacy").await.unwrap().messages.len(), 1);
    assert_eq!(s.load("fresh").await.unwrap(), Default::default());
    // The next prune sees it timed (stamped by the first); its time is before `far`.
    let report = s.prune_before(far).await.unwrap();
    assert_eq!(
        (report.sessions, report.messages, report.untimed),
        (1, 1, 0),
        "{report:?}"
    );
    assert_eq!(s.load("legacy").await.unwrap(), Default::default());
    // Nothing of the store is left behind, not even the time index.
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    // Deleting a session drops its time too.
    fill(&*s, "gone", 1).await;
    s.delete("gone").await.unwrap();
    let report = s
        .prune_before(chrono::Utc::now() + chrono::Duration::days(2))
        .await
        .unwrap();
    assert_eq!(report, Default::default());
}

#[tokio::test]
async fn retention_prunes_idle_sessions_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let s = memex::conversation::SqliteConversationStore::open_in(dir.path()).unwrap();
    retention_on(&s).await;
    let report = s
        .prune_before(chrono::Utc::now() + chrono::Duration::days(1))
        .await
        .unwrap();
    assert_eq!((report.sessions, report.messages), (2, 4), "{report:?}");
}

/// Redis restarts under a live store: nothing acknowledged is lost, the first call after the
/// restart succeeds (the one Redis layer reconnects and retries what is safe to repeat), and a
/// call while Redis is down is a clear error naming the store and never the password.
#[tokio::test]
async fn a_redis_restart_loses_nothing_and_the_next_call_succeeds() {
    let mut redis = redis_support::RedisServer::spawn_persistent();
    let prefix = redis_support::prefix();
    let s = store(&redis, &prefix).await;
    s.append("live", 1, &Message::user("before the restart"))
        .await
        .unwrap();
    redis.stop();
    let down = s
        .append("live", 2, &Message::user("while down"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        down.contains("conversations") && down.contains("Redis at 127.0.0.1"),
        "{down}"
    );
    redis.restart();
    s.append("live", 2, &Message::user("after the restart"))
        .await
        .expect("the first append after a restart succeeds");
    s.commit_summary("live", "first turn", 1)
        .await
        .expect("a commit after a restart succeeds");
    let got = s.load("live").await.unwrap();
    assert_eq!((got.summary.as_str(), got.watermark), ("first turn", 1));
    assert_eq!(
        got.messages,
        vec![(2, Message::user("after the restart"))],
        "{got:?}"
    );
}

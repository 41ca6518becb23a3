//! One conformance suite for `ConversationStore`, run against both backends: SQLite (a real
//! file) and Redis (a real `redis-server` started by the test, or `$REDIS_URL` with a fresh key
//! prefix). Every case is written once against the trait, so the two stores cannot drift.

use crate::support::redis as redis_support;

use std::sync::Arc;

use memex::conversation::{
    ConversationError, ConversationStore, RedisConversationStore, SqliteConversationStore,
};
use memex::llm::{Message, ToolCall};

/// A store and whatever keeps its backend alive for the test.
struct Fixture {
    store: Arc<dyn ConversationStore>,
    _guard: Box<dyn std::any::Any + Send>,
}

async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteConversationStore::open_in(dir.path()).unwrap();
    Fixture {
        store: Arc::new(store),
        _guard: Box::new(dir),
    }
}

async fn redis() -> Fixture {
    let server = redis_support::RedisServer::start();
    let store = RedisConversationStore::connect(&server.url(), &redis_support::prefix())
        .await
        .unwrap();
    Fixture {
        store: Arc::new(store),
        _guard: Box::new(server),
    }
}

mod cases {
    use super::*;

    fn sample() -> Vec<Message> {
        vec![
            Message::user("Refund pay_7Q2XK9 for ₹12,480.50 please — «urgent» 🙏"),
            Message::assistant_tool_calls(vec![ToolCall::new(
                "c1",
                "create_refund",
                r#"{"id":"pay_7Q2XK9","note":"line\nbreak \"quoted\""}"#,
            )]),
            Message::tool("c1", r#"{"status":"held","id":"act_1"}"#),
            Message::assistant("The refund is held for approval."),
            Message::user("|pipes| and 00000000000000000001|look-alike prefixes"),
        ]
    }

    pub async fn an_unknown_session_loads_empty(s: Arc<dyn ConversationStore>) {
        assert_eq!(s.load("never-written").await.unwrap(), Default::default());
    }

    pub async fn appended_messages_load_back_exactly_in_order(s: Arc<dyn ConversationStore>) {
        let msgs = sample();
        for (i, m) in msgs.iter().enumerate() {
            s.append("sess", i as u64 + 1, m).await.unwrap();
        }
        let got = s.load("sess").await.unwrap();
        assert_eq!(got.summary, "");
        assert_eq!((got.watermark, got.compressions), (0, 0));
        let want: Vec<(u64, Message)> = msgs
            .into_iter()
            .enumerate()
            .map(|(i, m)| (i as u64 + 1, m))
            .collect();
        assert_eq!(got.messages, want);
    }

    pub async fn equal_messages_stay_distinct(s: Arc<dyn ConversationStore>) {
        for seq in 1..=3 {
            s.append("same", seq, &Message::user("ok")).await.unwrap();
        }
        let got = s.load("same").await.unwrap();
        let seqs: Vec<u64> = got.messages.iter().map(|(n, _)| *n).collect();
        assert_eq!(seqs, [1, 2, 3]);
    }

    pub async fn a_summary_commit_folds_what_it_covers(s: Arc<dyn ConversationStore>) {
        for (i, m) in sample().iter().enumerate() {
            s.append("fold", i as u64 + 1, m).await.unwrap();
        }
        s.commit_summary("fold", "refund pay_7Q2XK9 held", 3)
            .await
            .unwrap();
        let got = s.load("fold").await.unwrap();
        assert_eq!(got.summary, "refund pay_7Q2XK9 held");
        assert_eq!((got.watermark, got.compressions), (3, 1));
        let seqs: Vec<u64> = got.messages.iter().map(|(n, _)| *n).collect();
        assert_eq!(seqs, [4, 5]);
        // A second, later commit replaces the summary and counts again.
        s.append("fold", 6, &Message::user("and pay_9"))
            .await
            .unwrap();
        s.commit_summary("fold", "both", 5).await.unwrap();
        let got = s.load("fold").await.unwrap();
        assert_eq!(
            (got.summary.as_str(), got.watermark, got.compressions),
            ("both", 5, 2)
        );
        assert_eq!(got.messages.len(), 1);
    }

    pub async fn a_stale_commit_is_a_conflict_and_changes_nothing(s: Arc<dyn ConversationStore>) {
        for seq in 1..=4 {
            s.append("race", seq, &Message::user(format!("m{seq}")))
                .await
                .unwrap();
        }
        s.commit_summary("race", "winner", 3).await.unwrap();
        let before = s.load("race").await.unwrap();
        for stale in [3, 2] {
            match s.commit_summary("race", "loser", stale).await {
                Err(ConversationError::Conflict { stored, ours, .. }) => {
                    assert_eq!((stored, ours), (3, stale));
                }
                other => panic!("a stale commit must conflict: {other:?}"),
            }
        }
        assert_eq!(s.load("race").await.unwrap(), before);
    }

    pub async fn sessions_never_see_each_other(s: Arc<dyn ConversationStore>) {
        // Ids that would collide if a backend built keys or patterns from them carelessly.
        let ids = ["a", "a}", "{a}", "a*", "a:msgs", "a b", "ä", "a|1"];
        for (i, id) in ids.iter().enumerate() {
            s.append(id, 1, &Message::user(format!("only {i}")))
                .await
                .unwrap();
        }
        for (i, id) in ids.iter().enumerate() {
            let got = s.load(id).await.unwrap();
            assert_eq!(
                got.messages,
                vec![(1, Message::user(format!("only {i}")))],
                "session {id:?}"
            );
        }
        s.commit_summary("a", "summary of a", 1).await.unwrap();
        s.delete("a*").await.unwrap();
        for (i, id) in ids.iter().enumerate() {
            let got = s.load(id).await.unwrap();
            match *id {
                "a" => assert_eq!((got.watermark, got.messages.len()), (1, 0)),
                "a*" => assert_eq!(got, Default::default()),
                _ => assert_eq!(got.messages.len(), 1, "{id:?} (#{i}) lost its message"),
            }
            if *id != "a" {
                assert_eq!(got.summary, "", "{id:?} got a's summary");
            }
        }
    }

    pub async fn delete_leaves_nothing_and_is_idempotent(s: Arc<dyn ConversationStore>) {
        for seq in 1..=3 {
            s.append("gone", seq, &Message::user("x")).await.unwrap();
        }
        s.commit_summary("gone", "sum", 2).await.unwrap();
        s.delete("gone").await.unwrap();
        assert_eq!(s.load("gone").await.unwrap(), Default::default());
        s.delete("gone").await.unwrap();
        // The session can start over from nothing.
        s.append("gone", 1, &Message::user("again")).await.unwrap();
        let got = s.load("gone").await.unwrap();
        assert_eq!((got.watermark, got.messages.len()), (0, 1));
    }

    pub async fn bad_session_ids_are_refused_everywhere(s: Arc<dyn ConversationStore>) {
        let long = "x".repeat(257);
        for bad in ["", "tab\there", "nul\0", long.as_str()] {
            let m = Message::user("x");
            let errs = [
                s.load(bad).await.err(),
                s.append(bad, 1, &m).await.err(),
                s.commit_summary(bad, "s", 1).await.err(),
                s.delete(bad).await.err(),
            ];
            for e in errs {
                assert!(
                    matches!(e, Some(ConversationError::InvalidSession(_))),
                    "{bad:?}: {e:?}"
                );
            }
        }
        let longest = "y".repeat(256);
        s.append(&longest, 1, &Message::user("ok")).await.unwrap();
        assert_eq!(s.load(&longest).await.unwrap().messages.len(), 1);
    }

    pub async fn concurrent_appends_lose_nothing(s: Arc<dyn ConversationStore>) {
        let mut tasks = Vec::new();
        for w in 0..8u64 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let session = format!("worker-{}", w % 2);
                for i in 0..20u64 {
                    let seq = 1 + w / 2 + 4 * i;
                    s.append(&session, seq, &Message::user(format!("{w}/{i}")))
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        for session in ["worker-0", "worker-1"] {
            let got = s.load(session).await.unwrap();
            let seqs: Vec<u64> = got.messages.iter().map(|(n, _)| *n).collect();
            assert_eq!(seqs, (1..=80).collect::<Vec<_>>(), "{session}");
        }
    }

    pub async fn retention_removes_idle_sessions_whole(s: Arc<dyn ConversationStore>) {
        for seq in 1..=3 {
            s.append("idle", seq, &Message::user("old")).await.unwrap();
        }
        s.commit_summary("idle", "old summary", 1).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let cutoff = chrono::Utc::now();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        s.append("fresh", 1, &Message::user("new")).await.unwrap();
        let report = s.prune_before(cutoff).await.unwrap();
        assert_eq!((report.sessions, report.messages), (1, 2), "{report:?}");
        assert_eq!(s.load("idle").await.unwrap(), Default::default());
        assert_eq!(s.load("fresh").await.unwrap().messages.len(), 1);
        let again = s.prune_before(cutoff).await.unwrap();
        assert_eq!((again.sessions, again.messages), (0, 0), "{again:?}");
    }
}

macro_rules! conformance_suite {
    ($name:ident, $fixture:ident, [$($case:ident),* $(,)?]) => {
        mod $name {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let f = $fixture().await;
                    cases::$case(Arc::clone(&f.store)).await;
                }
            )*
        }
    };
}

macro_rules! both_backends {
    ($($case:ident),* $(,)?) => {
        conformance_suite!(sqlite_backend, sqlite, [$($case),*]);
        conformance_suite!(redis_backend, redis, [$($case),*]);
    };
}

both_backends!(
    an_unknown_session_loads_empty,
    appended_messages_load_back_exactly_in_order,
    equal_messages_stay_distinct,
    a_summary_commit_folds_what_it_covers,
    a_stale_commit_is_a_conflict_and_changes_nothing,
    sessions_never_see_each_other,
    delete_leaves_nothing_and_is_idempotent,
    bad_session_ids_are_refused_everywhere,
    concurrent_appends_lose_nothing,
    retention_removes_idle_sessions_whole,
);

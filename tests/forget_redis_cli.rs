//! `memex forget --merchant MID` with `--episodic redis://…`, through the real binary, a real
//! `redis-server` and the fake OpenAI-compatible server: the merchant's conversation turns and
//! summaries (Redis) and episodes (Redis) are gone, its audit rows redacted, another merchant
//! untouched — also when earlier runs were SIGKILLed mid-way and the command was re-run.

use crate::support::cli;
use crate::support::fake_openai;
use crate::support::redis as redis_support;
use crate::support::serve;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cli::json_of;
use fake_openai::{FakeOpenAi, Reply};
use memex::conversation::{ConversationStore, RedisConversationStore};
use memex::episodic::{EpisodeDraft, EpisodicStore, RedisEpisodicStore, RedisOptions};
use memex::merchant::MerchantId;
use serde_json::json;

/// `memex …` on `redis_url` (episodes and conversations both follow `--episodic`).
fn command(data: &Path, llm: &str, redis_url: &str, args: &[&str]) -> Command {
    let mut cmd = cli::command(data, llm, args);
    cmd.env("MEMEX_EPISODIC_URL", redis_url);
    cmd
}

async fn run(mut cmd: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("memex runs"))
        .await
        .expect("joined")
}

/// One agent turn (a tool call, then an answer) for `merchant`; returns its session id.
async fn turn(server: &FakeOpenAi, data: &Path, redis_url: &str, merchant: &str) -> String {
    server.push(Reply::tool_calls(&[(
        "call_1",
        "get_merchant_account",
        "{}",
    )]));
    server.push(Reply::text(&format!("Account of {merchant} checked.")));
    let out = run(command(
        data,
        &server.base_url(),
        redis_url,
        &[
            "ask",
            "--merchant",
            merchant,
            "--json",
            &format!("secret-note-{merchant}: where is my payout?"),
        ],
    ))
    .await;
    json_of(&out)["session"]
        .as_str()
        .expect("session")
        .to_string()
}

/// Keys of `merchant`'s episodes left in Redis (the version counter is kept on purpose).
async fn episode_keys(url: &str, merchant: &str) -> Vec<String> {
    let client = redis::Client::open(url).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("memex:ep:{{{merchant}}}:*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    keys.into_iter().filter(|k| !k.ends_with(":v")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_on_redis_survives_sigkill_mid_way_and_spares_the_other_merchant() {
    let redis = redis_support::RedisServer::spawn();
    let url = redis.url();
    let llm = FakeOpenAi::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let (a, b) = (
        MerchantId::parse("FRA").unwrap(),
        MerchantId::parse("FRB").unwrap(),
    );

    // Conversations on Redis: two sessions of A, one of B; each gets a rolling summary too.
    let a1 = turn(&llm, data, &url, "FRA").await;
    let a2 = turn(&llm, data, &url, "FRA").await;
    let b1 = turn(&llm, data, &url, "FRB").await;
    let conv = RedisConversationStore::connect(&url, "memex:conv")
        .await
        .expect("conversation store");
    for s in [&a1, &a2, &b1] {
        let held = conv.load(s).await.expect("load");
        assert!(held.messages.len() >= 2, "{s}: {held:?}");
        conv.commit_summary(s, &format!("summary of {s}: secret payout"), 1)
            .await
            .expect("summary");
    }
    // Many episodes for A (so a forget is still running when killed early), a few for B.
    let episodes = RedisEpisodicStore::connect(&url, RedisOptions::default())
        .await
        .expect("episodic store");
    for chunk in 0..10 {
        let drafts = (0..500)
            .map(|i| EpisodeDraft::new(format!("A episode {chunk}-{i}: payout held")))
            .collect();
        episodes.save_many(&a, drafts).await.expect("save A");
    }
    let drafts = (0..30)
        .map(|i| EpisodeDraft::new(format!("B episode {i}")))
        .collect();
    episodes.save_many(&b, drafts).await.expect("save B");
    assert!(episodes.count(&a).await.unwrap() >= 5000);
    // `ask` may have saved episodes of its own: B's count is whatever it is now.
    let b_count = episodes.count(&b).await.unwrap();
    assert!(b_count >= 30);

    // Kill `memex forget` after growing delays until one run finishes on its own.
    let mut killed = 0;
    let mut finished = None;
    for delay_ms in [0u64, 5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120] {
        let mut child = command(
            data,
            &llm.base_url(),
            &url,
            &["forget", "--merchant", "FRA", "--json"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn forget");
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        match child.try_wait().expect("try_wait") {
            Some(_) => {
                finished = Some(
                    tokio::task::spawn_blocking(move || child.wait_with_output())
                        .await
                        .expect("joined")
                        .expect("output"),
                );
                break;
            }
            None => {
                child.kill().expect("SIGKILL");
                let status = child.wait().expect("wait");
                if !status.success() {
                    killed += 1;
                }
            }
        }
    }
    eprintln!("forget was SIGKILLed {killed} time(s) before a run completed");
    // Whatever the kills left, one more run completes and reports it.
    let last = match finished {
        Some(out) if out.status.success() => out,
        _ => {
            run(command(
                data,
                &llm.base_url(),
                &url,
                &["forget", "--merchant", "FRA", "--json"],
            ))
            .await
        }
    };
    let v = json_of(&last);
    assert_eq!(v["merchant_id"], "FRA");

    // Everything of A is gone: episodes (no key left but the version counter), both
    // conversations with their summaries, the audit text.
    assert_eq!(episodes.count(&a).await.unwrap(), 0);
    assert!(episodes.recent(&a, 10).await.unwrap().is_empty());
    assert!(episode_keys(&url, "FRA").await.is_empty());
    for s in [&a1, &a2] {
        assert_eq!(conv.load(s).await.unwrap(), Default::default(), "{s}");
    }
    let audit = json_of(
        &run(command(
            data,
            &llm.base_url(),
            &url,
            &["audit", "--session", &a1, "--json"],
        ))
        .await,
    );
    assert_eq!(audit[0]["result"], "[forgotten]", "{audit}");

    // B is untouched: episodes, conversation and summary, audit text.
    assert_eq!(episodes.count(&b).await.unwrap(), b_count);
    let held = conv.load(&b1).await.unwrap();
    assert!(held.summary.contains("secret payout"), "{held:?}");
    assert!(!held.messages.is_empty());
    let audit = json_of(
        &run(command(
            data,
            &llm.base_url(),
            &url,
            &["audit", "--session", &b1, "--json"],
        ))
        .await,
    );
    assert_ne!(audit[0]["result"], "[forgotten]", "{audit}");

    // A re-run finds nothing left.
    let v = json_of(
        &run(command(
            data,
            &llm.base_url(),
            &url,
            &["forget", "--merchant", "FRA", "--json"],
        ))
        .await,
    );
    assert_eq!(v["removed"], json!({"episodes": 0, "conversations": 0}));
    assert_eq!(episodes.count(&b).await.unwrap(), b_count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_conversations_on_redis_through_the_cli() {
    let redis = redis_support::RedisServer::spawn();
    let url = redis.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let conv = RedisConversationStore::connect(&url, "memex:conv")
        .await
        .expect("conversation store");
    for s in ["old-session", "new-session"] {
        for seq in 1..=3 {
            conv.append(s, seq, &memex::llm::Message::user(format!("{s} {seq}")))
                .await
                .expect("append");
        }
    }
    // Age one session by 40 days in the time index; add one with no time at all.
    let client = redis::Client::open(url.as_str()).expect("client");
    let mut c = client.get_multiplexed_async_connection().await.expect("c");
    let old = (chrono::Utc::now() - chrono::Duration::days(40)).timestamp_micros();
    let _: i64 = redis::cmd("ZADD")
        .arg("memex:conv:conv:active")
        .arg("XX")
        .arg("CH")
        .arg(old)
        .arg("old-session")
        .query_async(&mut c)
        .await
        .expect("ZADD");
    let legacy = serde_json::to_string(&memex::llm::Message::user("legacy")).unwrap();
    let _: i64 = redis::cmd("ZADD")
        .arg("memex:conv:conv:{legacy-session}:msgs")
        .arg(1)
        .arg(format!("{:020}|{legacy}", 1))
        .query_async(&mut c)
        .await
        .expect("ZADD");

    let out = run({
        let mut cmd = command(
            data,
            "http://127.0.0.1:9",
            &url,
            &["prune", "--conversations-retention-days", "30", "--json"],
        );
        cmd.env_remove("MEMEX_EPISODES_RETENTION_DAYS");
        cmd
    })
    .await;
    let v = json_of(&out);
    assert_eq!(
        v["removed"],
        json!({"conversations": 1, "messages": 3}),
        "{v}"
    );
    assert_eq!(v["kept_untimed"], json!({"conversations": 1}), "{v}");
    assert!(v["conversations_before"].is_string(), "{v}");
    assert_eq!(conv.load("old-session").await.unwrap(), Default::default());
    assert_eq!(conv.load("new-session").await.unwrap().messages.len(), 3);
    assert_eq!(conv.load("legacy-session").await.unwrap().messages.len(), 1);
    // Both retentions at once keep the episodes' part of the answer as before.
    let out = run({
        let mut cmd = command(
            data,
            "http://127.0.0.1:9",
            &url,
            &[
                "prune",
                "--conversations-retention-days",
                "30",
                "--episodes-retention-days",
                "30",
                "--json",
            ],
        );
        cmd.env_remove("MEMEX_EPISODES_RETENTION_DAYS");
        cmd
    })
    .await;
    let v = json_of(&out);
    assert_eq!(
        v["removed"],
        json!({"episodes": 0, "conversations": 0, "messages": 0}),
        "{v}"
    );
    assert_eq!(v["kept_untimed"], json!({"conversations": 0}), "{v}");
    assert_eq!(conv.load("legacy-session").await.unwrap().messages.len(), 1);

    // `memex serve` applies the same retention on its schedule (at start, then hourly).
    let _: i64 = redis::cmd("ZADD")
        .arg("memex:conv:conv:active")
        .arg("XX")
        .arg("CH")
        .arg(old)
        .arg("new-session")
        .query_async(&mut c)
        .await
        .expect("ZADD");
    let server = serve::Server::start_with_env(
        data,
        None,
        &["--conversations-retention-days", "30"],
        &[("MEMEX_EPISODIC_URL", url.as_str())],
    );
    let started = std::time::Instant::now();
    while !conv.load("new-session").await.unwrap().messages.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "serve did not prune: {}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(conv.load("legacy-session").await.unwrap().messages.len(), 1);
}

/// Every value in the Redis at `url`, as text (strings, hash fields and values, list, set and
/// sorted-set members), for grepping.
async fn all_redis_text(url: &str) -> String {
    let client = redis::Client::open(url).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    let mut out = String::new();
    for k in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&k)
            .query_async(&mut conn)
            .await
            .expect("TYPE");
        let values: Vec<Vec<u8>> = match kind.as_str() {
            "string" => vec![redis::cmd("GET")
                .arg(&k)
                .query_async(&mut conn)
                .await
                .expect("GET")],
            "hash" => redis::cmd("HGETALL")
                .arg(&k)
                .query_async(&mut conn)
                .await
                .expect("HGETALL"),
            "list" => redis::cmd("LRANGE")
                .arg(&k)
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .expect("LRANGE"),
            "set" => redis::cmd("SMEMBERS")
                .arg(&k)
                .query_async(&mut conn)
                .await
                .expect("SMEMBERS"),
            "zset" => redis::cmd("ZRANGE")
                .arg(&k)
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .expect("ZRANGE"),
            _ => Vec::new(),
        };
        out.push_str(&k);
        for v in values {
            out.push_str(&String::from_utf8_lossy(&v));
            out.push('\n');
        }
    }
    out
}

/// With the agent state and the memories on Redis, `forget` leaves none of the merchant's
/// words in any Redis value: episodes, conversation, the free-text reason of a refund held
/// for approval, and a plan's task, step descriptions and arguments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_on_redis_leaves_no_text_in_any_value() {
    let redis = redis_support::RedisServer::spawn();
    let url = redis.url();
    let llm = FakeOpenAi::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let cmd = |args: &[&str]| {
        let mut c = command(data, &llm.base_url(), &url, args);
        c.env("MEMEX_STATE_URL", &url);
        c
    };
    json_of(&run(cmd(&["init", "--demo", "--json"])).await);
    let episodes = RedisEpisodicStore::connect(&url, RedisOptions::default())
        .await
        .expect("episodic store");
    let mid = MerchantId::parse("MID001").unwrap();
    let drafts = (0..50)
        .map(|i| EpisodeDraft::new(format!("zqxepmarker{i:02} payout held")))
        .collect();
    episodes.save_many(&mid, drafts).await.expect("save");

    llm.push(Reply::tool_calls(&[(
        "call_1",
        "initiate_refund",
        r#"{"transaction_id": "pay_ABC123", "amount": 100, "reason": "zqxreasonmarker customer cancelled"}"#,
    )]));
    let asked = json_of(
        &run(cmd(&[
            "ask",
            "--merchant",
            "MID001",
            "--json",
            "zqxaskmarker refund pay_ABC123",
        ]))
        .await,
    );
    assert!(asked["pending_action"]["id"].is_string(), "{asked}");
    llm.push(Reply::text(
        &json!({"steps": [
            {"id": "1", "description": "zqxstepmarker refund", "tool": "initiate_refund",
             "args": {"transaction_id": "pay_ABC123", "amount": 50, "reason": "zqxplanreason late"}}
        ]})
        .to_string(),
    ));
    let plan = json_of(
        &run(cmd(&[
            "plan",
            "--merchant",
            "MID001",
            "--json",
            "zqxtaskmarker refund 50",
        ]))
        .await,
    );
    assert_eq!(plan["status"], "awaiting_approval", "{plan}");
    let markers = [
        "zqxepmarker",
        "zqxreasonmarker",
        "zqxaskmarker",
        "zqxstepmarker",
        "zqxplanreason",
        "zqxtaskmarker",
    ];
    let before = all_redis_text(&url).await;
    for m in markers {
        assert!(before.contains(m), "{m} was written");
    }

    let v = json_of(&run(cmd(&["forget", "--merchant", "MID001", "--json"])).await);
    assert!(v["removed"]["episodes"].as_u64().unwrap() >= 50, "{v}");
    assert!(v["redacted_plans"].as_u64().unwrap() >= 1, "{v}");
    let after = all_redis_text(&url).await;
    for m in markers {
        assert!(!after.contains(m), "{m} is still in Redis");
    }
}

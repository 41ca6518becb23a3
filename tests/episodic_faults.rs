//! Faults: Redis killed mid-run and brought back, Redis absent, a locked SQLite file, a
//! read-only SQLite file, unusable paths and URLs.

use crate::support::redis as redis_support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memex::episodic::{
    self, EpisodeDraft, EpisodeId, EpisodicError, EpisodicStore, RedisEpisodicStore, RedisOptions,
    SqliteEpisodicStore, SqliteOptions,
};
use memex::merchant::MerchantId;
use redis_support::RedisServer;

fn mid(s: &str) -> MerchantId {
    MerchantId::parse(s).unwrap()
}

fn quick_retries() -> RedisOptions {
    RedisOptions {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
        ..RedisOptions::default()
    }
}

fn assert_unavailable(err: &EpisodicError, attempts: u32) {
    match err {
        EpisodicError::Unavailable {
            attempts: a,
            endpoint,
            ..
        } => {
            assert_eq!(*a, attempts);
            assert!(endpoint.starts_with("127.0.0.1:"), "{endpoint}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("is unavailable") && msg.contains("attempts"),
        "{msg}"
    );
}

/// Checks, with a raw connection, that every episode is whole: each timeline member has its
/// hash with summary, metadata and time, and no hash exists without a timeline entry.
async fn assert_no_partial_episodes(url: &str, merchant: &MerchantId) -> usize {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let prefix = format!("memex:ep:{{{merchant}}}");
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{prefix}:t"))
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    for id in &members {
        let (s, m, ts): (Option<String>, Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(format!("{prefix}:e:{id}"))
            .arg(&["s", "m", "c"])
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(
            s.is_some() && m.is_some() && ts.is_some(),
            "episode {id} is partial"
        );
    }
    let hashes: Vec<String> = redis::cmd("KEYS")
        .arg(format!("memex:ep:{{{merchant}}}:e:*"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        hashes.len(),
        members.len(),
        "episode hashes without a timeline entry"
    );
    members.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_mid_run_fails_cleanly_and_recovers() {
    let mut server = RedisServer::spawn_persistent();
    let url = server.url();
    let store: Arc<dyn EpisodicStore> = Arc::new(
        RedisEpisodicStore::connect(&url, quick_retries())
            .await
            .unwrap(),
    );
    let m = mid("MIDFAULT");
    for i in 0..5 {
        store
            .save(
                &m,
                EpisodeDraft::new(format!("before {i}")).with_embedding(vec![1.0, 0.0]),
            )
            .await
            .unwrap();
    }

    // Writers keep saving while the server is killed under them.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for t in 0..4 {
        let store = Arc::clone(&store);
        let m = m.clone();
        let stop = Arc::clone(&stop);
        writers.push(tokio::spawn(async move {
            let mut results = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let summary = format!("writer {t} save {i}");
                let r = store
                    .save(
                        &m,
                        EpisodeDraft::new(summary.clone()).with_embedding(vec![1.0, i as f32]),
                    )
                    .await;
                results.push((summary, r));
                i += 1;
            }
            results
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.stop();

    // While it is down: clear, bounded errors from every kind of call, no panic.
    let started = Instant::now();
    let err = store
        .save(&m, EpisodeDraft::new("while down"))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_unavailable(&err, 4);
    assert!(took < Duration::from_secs(20), "retries took {took:?}");
    assert!(
        took >= Duration::from_millis(50 + 100 + 200),
        "gave up after {took:?}, before the backoff schedule"
    );
    assert_unavailable(&store.recent(&m, 10).await.unwrap_err(), 4);
    assert_unavailable(&store.similar(&m, &[1.0, 0.0], 3).await.unwrap_err(), 4);
    assert_unavailable(&store.count(&m).await.unwrap_err(), 4);
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for w in writers {
        outcomes.extend(w.await.expect("a writer task panicked"));
    }
    let failed = outcomes.iter().filter(|(_, r)| r.is_err()).count();
    assert!(failed > 0, "no save failed while Redis was down");
    for (_, r) in &outcomes {
        if let Err(e) = r {
            assert!(matches!(e, EpisodicError::Unavailable { .. }), "{e:?}");
        }
    }

    // Back up: the same store object works again.
    server.restart();
    let after = store
        .save(
            &m,
            EpisodeDraft::new("after restart").with_embedding(vec![0.0, 1.0]),
        )
        .await
        .expect("the store reconnects once Redis is back");
    assert_eq!(store.get(&m, after.id).await.unwrap().unwrap(), after);

    // Nothing acknowledged was lost, nothing is duplicated or partial.
    let stored = store.recent(&m, 100_000).await.unwrap();
    let by_id: HashMap<EpisodeId, &memex::episodic::Episode> =
        stored.iter().map(|e| (e.id, e)).collect();
    assert_eq!(by_id.len(), stored.len(), "duplicate ids");
    let summaries: HashSet<&str> = stored.iter().map(|e| e.summary.as_str()).collect();
    assert_eq!(summaries.len(), stored.len(), "a save was stored twice");
    let mut acked = 0;
    for (summary, r) in &outcomes {
        match r {
            Ok(e) => {
                acked += 1;
                let s = by_id
                    .get(&e.id)
                    .unwrap_or_else(|| panic!("acknowledged {summary} lost"));
                assert_eq!(&s.summary, summary);
            }
            Err(_) => {
                // A failed save may have landed before the reply was lost; then it is whole.
                if let Some(s) = stored.iter().find(|s| &s.summary == summary) {
                    assert!(s.embedding.is_some());
                }
            }
        }
    }
    assert!(acked > 0, "no save succeeded before the kill");
    assert!(
        stored.len() > 5 + acked,
        "5 seeded + acknowledged + 1 after restart"
    );
    let whole = assert_no_partial_episodes(&url, &m).await;
    assert_eq!(whole, stored.len());
}

#[tokio::test]
async fn redis_absent_at_connect_is_a_clear_error() {
    let port = {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("redis://:s3cret-pass@127.0.0.1:{port}/3");
    let err = RedisEpisodicStore::connect(&url, quick_retries())
        .await
        .unwrap_err();
    assert_unavailable(&err, 4);
    let msg = err.to_string();
    assert!(msg.contains(&format!("127.0.0.1:{port}/3")), "{msg}");
    assert!(!msg.contains("s3cret"), "password in error: {msg}");
    assert!(!format!("{err:?}").contains("s3cret"));
}

#[tokio::test]
async fn redis_store_never_reveals_the_password() {
    let server = RedisServer::spawn_with_password("s3cret-pass");
    assert!(server.url().contains("s3cret-pass"));
    let store = RedisEpisodicStore::connect(&server.url(), RedisOptions::default())
        .await
        .unwrap();
    let m = mid("MID1");
    store.save(&m, EpisodeDraft::new("x")).await.unwrap();
    assert_eq!(store.count(&m).await.unwrap(), 1);
    assert_eq!(
        store.describe(),
        format!("redis://127.0.0.1:{}/0", server.port())
    );
    let dbg = format!("{store:?}");
    assert!(
        dbg.contains("127.0.0.1") && !dbg.contains("s3cret"),
        "{dbg}"
    );

    // A wrong password is refused at once, without retries and without echoing it.
    let wrong = format!("redis://:not-the-pass@127.0.0.1:{}/0", server.port());
    let err = RedisEpisodicStore::connect(&wrong, RedisOptions::default())
        .await
        .unwrap_err();
    // `Redis`, not `Unavailable`: an authentication failure is not retried.
    assert!(matches!(err, EpisodicError::Redis { .. }), "{err:?}");
    assert!(!err.to_string().contains("not-the-pass"), "{err}");
}

#[tokio::test]
async fn invalid_urls_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [
        "postgres://user:pw@host/db",
        "episodes.db",
        "sqlite://",
        "redis://[::1",
    ] {
        let err = match episodic::open(Some(bad), dir.path()).await {
            Err(e) => e,
            Ok(s) => panic!("{bad} opened {}", s.describe()),
        };
        let msg = err.to_string();
        assert!(msg.starts_with("episodic store URL"), "{bad}: {msg}");
        assert!(!msg.contains("pw@"), "{msg}");
    }
}

#[tokio::test]
async fn open_defaults_to_sqlite_in_the_data_dir_and_parses_sqlite_urls() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("nested").join("data");
    let store = episodic::open(None, &data).await.unwrap();
    store
        .save(&mid("MID1"), EpisodeDraft::new("x"))
        .await
        .unwrap();
    assert!(data.join("episodes.db").is_file());
    assert_eq!(
        store.describe(),
        format!("sqlite://{}", data.join("episodes.db").display())
    );

    let other = dir.path().join("other.db");
    let url = format!("sqlite://{}", other.display());
    let store = episodic::open(Some(&url), &data).await.unwrap();
    store
        .save(&mid("MID1"), EpisodeDraft::new("y"))
        .await
        .unwrap();
    assert_eq!(store.count(&mid("MID1")).await.unwrap(), 1);
    assert!(other.is_file());
}

#[tokio::test]
async fn sqlite_episodes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("episodes.db");
    let m = mid("MID1");
    let saved = {
        let store = SqliteEpisodicStore::open(&path, SqliteOptions::default())
            .await
            .unwrap();
        store
            .save(
                &m,
                EpisodeDraft::new("kept").with_embedding(vec![0.1, 0.2, 0.3]),
            )
            .await
            .unwrap()
    };
    let store = SqliteEpisodicStore::open(&path, SqliteOptions::default())
        .await
        .unwrap();
    assert_eq!(store.get(&m, saved.id).await.unwrap(), Some(saved));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_beyond_busy_timeout_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("episodes.db");
    let opts = SqliteOptions {
        busy_timeout: Duration::from_millis(100),
        ..SqliteOptions::default()
    };
    let store = SqliteEpisodicStore::open(&path, opts).await.unwrap();
    let m = mid("MID1");
    store.save(&m, EpisodeDraft::new("first")).await.unwrap();

    // Another process holds the write lock, with an uncommitted episode of its own.
    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute_batch(
            "BEGIN EXCLUSIVE;
             INSERT INTO episodes (id, merchant_id, summary, metadata, created_at_us)
             VALUES ('01a20ca6-0000-7000-8000-000000000000', 'MID1', 'uncommitted', '{}', 1);",
        )
        .unwrap();
    let err = store
        .save(&m, EpisodeDraft::new("blocked"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, EpisodicError::Locked { waited_ms: 100, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("is locked by another process") && msg.contains(path.to_str().unwrap()),
        "{msg}"
    );
    assert!(store.forget(&m).await.is_err());
    // Readers are not blocked (WAL) and see neither the failed save nor the uncommitted row.
    let seen: Vec<String> = store
        .recent(&m, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.summary)
        .collect();
    assert_eq!(seen, vec!["first".to_string()]);
    other.execute_batch("ROLLBACK").unwrap();
    drop(other);

    // Lock gone: the same store works again and holds exactly what was committed.
    store.save(&m, EpisodeDraft::new("second")).await.unwrap();
    let seen: Vec<String> = store
        .recent(&m, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.summary)
        .collect();
    assert_eq!(seen, vec!["second".to_string(), "first".to_string()]);
}

#[tokio::test]
async fn sqlite_read_only_file_is_a_clear_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("episodes.db");
    {
        let store = SqliteEpisodicStore::open(&path, SqliteOptions::default())
            .await
            .unwrap();
        store
            .save(&mid("MID1"), EpisodeDraft::new("x"))
            .await
            .unwrap();
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let err = SqliteEpisodicStore::open(&path, SqliteOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, EpisodicError::ReadOnly { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("is read-only") && msg.contains(path.to_str().unwrap()),
        "{msg}"
    );
    let url = format!("sqlite://{}", path.display());
    assert!(matches!(
        episodic::open(Some(&url), dir.path()).await,
        Err(EpisodicError::ReadOnly { .. })
    ));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = SqliteEpisodicStore::open(&path, SqliteOptions::default())
        .await
        .unwrap();
    assert_eq!(
        store.count(&mid("MID1")).await.unwrap(),
        1,
        "the data is intact"
    );
}

#[tokio::test]
async fn sqlite_unusable_paths_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    // The path is a directory.
    let err = SqliteEpisodicStore::open(dir.path(), SqliteOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, EpisodicError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("not a regular file"), "{err}");
    // The parent "directory" is a file.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let err = SqliteEpisodicStore::open(&file.join("episodes.db"), SqliteOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot create directory"), "{err}");
    // A file that is not a database.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![b'z'; 4096]).unwrap();
    let err = SqliteEpisodicStore::open(&junk, SqliteOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains(junk.to_str().unwrap()), "{err}");
}

/// A Redis store written by memex before episodes had an `occurred_at` order (no `:w` sorted
/// set) keeps every episode visible to `recent`: the order is rebuilt from the timeline.
#[tokio::test]
async fn redis_episodes_saved_before_the_when_order_stay_visible() {
    let server = RedisServer::start();
    let store = RedisEpisodicStore::connect(&server.url(), quick_retries())
        .await
        .unwrap();
    let m = mid("OLDFMT1");
    for i in 0..3 {
        store
            .save(
                &m,
                EpisodeDraft::new(format!("old episode {i}")).with_embedding(vec![1.0, 0.0]),
            )
            .await
            .unwrap();
    }
    // What an older memex left behind: the timeline and the hashes, no `:w` order.
    let client = redis::Client::open(server.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let when_key = format!("{}:ep:{{{}}}:w", store.namespace(), m.as_str());
    let removed: i64 = redis::cmd("DEL")
        .arg(&when_key)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(removed, 1, "the test must remove the real key");
    let recent = store.recent(&m, 10).await.unwrap();
    let summaries: Vec<&str> = recent.iter().map(|e| e.summary.as_str()).collect();
    assert_eq!(
        summaries,
        ["old episode 2", "old episode 1", "old episode 0"],
        "newest first, none hidden"
    );
    // Forgetting by date reaches them too, even when the order has not been rebuilt yet.
    let _: i64 = redis::cmd("DEL")
        .arg(&when_key)
        .query_async(&mut con)
        .await
        .unwrap();
    let cutoff = chrono::Utc::now() + chrono::Duration::days(1);
    let removed = store.forget_before(&m, cutoff).await.unwrap();
    assert_eq!(removed, 3);
    assert!(store.recent(&m, 10).await.unwrap().is_empty());
}

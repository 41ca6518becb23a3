//! Episodic durability across workers (issue 14): one `redis-server`, three `memex serve`
//! workers sharing it as their episodic store (each its own data dir and keys), 48 client tasks
//! writing episodes for 8 merchants while one worker is SIGKILLed mid-run. Every acknowledged
//! episode is then present exactly once, through a surviving worker and through the Redis
//! backend directly, and each merchant's listing holds only its own episodes.

use crate::support::redis as redis_support;
use crate::support::serve;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memex::episodic::{EpisodicStore, RedisEpisodicStore, RedisOptions};
use memex::merchant::MerchantId;
use serde_json::{json, Value};
use serve::{client, create_key, Server};

const WORKERS: usize = 3;
const CLIENTS_PER_WORKER: usize = 16;
const MERCHANTS: usize = 8;
/// How long the clients write (no timing is asserted; slow boxes just write fewer).
const RUN: Duration = Duration::from_secs(10);
/// When the third worker is killed.
const KILL_AFTER: Duration = Duration::from_secs(4);

fn merchant(i: usize) -> String {
    format!("SCALE_M{i}")
}

/// One acknowledged write: (merchant, episode id, summary).
type Ack = (String, String, String);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_episodes_survive_a_killed_worker_exactly_once() {
    let redis = redis_support::RedisServer::spawn();
    let url = redis.url();
    let dirs: Vec<tempfile::TempDir> = (0..WORKERS)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    // keys[w][m]: a key of merchant m in worker w's data dir.
    let keys: Vec<Vec<String>> = dirs
        .iter()
        .map(|d| {
            (0..MERCHANTS)
                .map(|m| create_key(d.path(), &["--merchant", &merchant(m)]).1)
                .collect()
        })
        .collect();
    let paths: Vec<PathBuf> = dirs.iter().map(|d| d.path().to_path_buf()).collect();
    let servers: Vec<Server> = std::thread::scope(|s| {
        let handles: Vec<_> = paths
            .iter()
            .map(|p| {
                let url = url.clone();
                s.spawn(move || {
                    Server::start_with_env(
                        p,
                        None,
                        &["--rate-limit", "0"],
                        &[("MEMEX_EPISODIC_URL", url.as_str())],
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("server thread"))
            .collect()
    });
    let bases: Arc<Vec<String>> = Arc::new(servers.iter().map(|s| s.base.clone()).collect());
    let keys = Arc::new(keys);
    let dead = Arc::new(
        (0..WORKERS)
            .map(|_| AtomicBool::new(false))
            .collect::<Vec<_>>(),
    );

    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..WORKERS * CLIENTS_PER_WORKER {
        let (bases, keys, dead) = (Arc::clone(&bases), Arc::clone(&keys), Arc::clone(&dead));
        tasks.push(tokio::spawn(async move {
            let m = t % MERCHANTS;
            let mid = merchant(m);
            let mut worker = t % WORKERS;
            let clients: Vec<reqwest::Client> = (0..WORKERS).map(|w| client(&keys[w][m])).collect();
            let mut acks: Vec<Ack> = Vec::new();
            let mut failures = 0u32;
            let mut n = 0u64;
            while start.elapsed() < RUN {
                if dead[worker].load(Ordering::SeqCst) {
                    // Move to the next live worker (keys exist for every merchant in each).
                    worker = (worker + 1) % WORKERS;
                    continue;
                }
                n += 1;
                let summary = format!("{mid} client {t} write {n}");
                let resp = clients[worker]
                    .post(format!("{}/v1/merchants/{mid}/episodes", bases[worker]))
                    .json(&json!({"summary": summary, "metadata": {"client": t, "n": n}}))
                    .timeout(Duration::from_secs(60))
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status().is_success() => {
                        let v: Value = r.json().await.expect("episode JSON");
                        let id = v["id"].as_str().expect("id").to_owned();
                        assert_eq!(v["summary"], summary.as_str());
                        acks.push((mid.clone(), id, summary));
                    }
                    Ok(r) if r.status().as_u16() == 503 => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Ok(r) => panic!("unexpected {} from worker {worker}", r.status()),
                    Err(_) => {
                        // Connection refused or reset: this worker is gone; try another.
                        failures += 1;
                        assert!(failures < 10_000, "every worker failing");
                        worker = (worker + 1) % WORKERS;
                    }
                }
            }
            acks
        }));
    }
    tokio::time::sleep(KILL_AFTER).await;
    let status = std::process::Command::new("kill")
        .arg("-KILL")
        .arg(servers[2].pid().to_string())
        .status()
        .expect("kill runs");
    assert!(status.success());
    dead[2].store(true, Ordering::SeqCst);

    let mut acks: Vec<Ack> = Vec::new();
    for t in tasks {
        acks.extend(t.await.expect("client task"));
    }
    assert!(!acks.is_empty(), "no write was acknowledged");
    let ids: HashSet<&str> = acks.iter().map(|a| a.1.as_str()).collect();
    assert_eq!(ids.len(), acks.len(), "an id was acknowledged twice");
    eprintln!(
        "{} acknowledged episodes in {:?} over {WORKERS} workers (one killed)",
        acks.len(),
        start.elapsed()
    );

    let mut by_merchant: HashMap<String, Vec<&Ack>> = HashMap::new();
    for a in &acks {
        by_merchant.entry(a.0.clone()).or_default().push(a);
    }
    let store = RedisEpisodicStore::connect(&url, RedisOptions::default())
        .await
        .expect("Redis store");
    for m in 0..MERCHANTS {
        let mid = merchant(m);
        let acked = by_merchant.get(&mid).cloned().unwrap_or_default();
        // Through a surviving worker (0 and 1 alike).
        for w in [0, 1] {
            let resp = client(&keys[w][m])
                .get(format!(
                    "{}/v1/merchants/{mid}/episodes?limit=10000",
                    bases[w]
                ))
                .send()
                .await
                .expect("list");
            assert_eq!(resp.status().as_u16(), 200);
            let listed: Vec<Value> = resp.json().await.expect("JSON");
            let listed_ids: Vec<&str> = listed
                .iter()
                .map(|e| e["id"].as_str().expect("id"))
                .collect();
            let unique: HashSet<&str> = listed_ids.iter().copied().collect();
            assert_eq!(
                unique.len(),
                listed_ids.len(),
                "{mid}: duplicated in the listing"
            );
            for e in &listed {
                assert_eq!(e["merchant_id"], mid.as_str());
                let s = e["summary"].as_str().expect("summary");
                assert!(s.starts_with(&format!("{mid} ")), "{mid} lists {s:?}");
            }
            for a in &acked {
                assert_eq!(
                    listed_ids.iter().filter(|id| **id == a.1).count(),
                    1,
                    "{mid}: acknowledged {} not listed exactly once by worker {w}",
                    a.1
                );
            }
        }
        // Through the backend itself.
        let id = MerchantId::parse(&mid).expect("merchant id");
        let all = store.recent(&id, 100_000).await.expect("recent");
        assert_eq!(store.count(&id).await.expect("count"), all.len() as u64);
        let stored: HashMap<String, &str> = all
            .iter()
            .map(|e| (e.id.to_string(), e.summary.as_str()))
            .collect();
        assert_eq!(stored.len(), all.len(), "{mid}: duplicate ids in Redis");
        for a in &acked {
            assert_eq!(
                stored.get(&a.1).copied(),
                Some(a.2.as_str()),
                "{mid}: {}",
                a.1
            );
        }
        assert!(all.iter().all(|e| e.merchant_id.as_str() == mid));
    }
}

//! Episodic store latency and throughput, SQLite vs Redis, at 10,000 merchants × 20 episodes.
//!
//! `cargo bench --bench episodic` seeds each backend with 200,000 episodes (random unit vectors,
//! 384 dimensions, precomputed: this measures the store, not the embedder), then measures
//! single-client `save`, `recent(10)` and `similar(k = 5)` on random merchants with criterion,
//! printing p50/p99 of the individual calls, and the throughput of 8 and 32 tasks saving at once.
//!
//! Knobs: `MEMEX_BENCH_MERCHANTS` (10000), `MEMEX_BENCH_PER_MERCHANT` (20),
//! `MEMEX_BENCH_BACKENDS` (`sqlite,redis`), `REDIS_URL` (else a private `redis-server`).

#[path = "../tests/support/redis.rs"]
mod redis_support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use futures::StreamExt;
use memex::episodic::{
    EpisodeDraft, EpisodicStore, RedisEpisodicStore, RedisOptions, SqliteEpisodicStore,
    SqliteOptions,
};
use memex::merchant::MerchantId;
use rand::{Rng, SeedableRng};

const DIM: usize = 384;
const VECTOR_POOL: usize = 4096;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn unit_vectors(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let mut v: Vec<f32> = (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            v
        })
        .collect()
}

fn merchant(i: usize) -> MerchantId {
    MerchantId::parse(&format!("MID{i:06}")).expect("generated ids are valid")
}

fn draft(i: usize, vectors: &[Vec<f32>]) -> EpisodeDraft {
    EpisodeDraft::new(format!(
        "Episode {i}: merchant asked about payout timing and settlement fees; agent explained the schedule."
    ))
    .with_metadata(serde_json::json!({"outcome": "resolved", "n": i}))
    .with_embedding(vectors[i % vectors.len()].clone())
}

async fn seed(
    store: &Arc<dyn EpisodicStore>,
    merchants: usize,
    per: usize,
    vectors: &Arc<Vec<Vec<f32>>>,
) {
    let started = Instant::now();
    futures::stream::iter(0..merchants * per)
        .for_each_concurrent(32, |i| {
            let store = Arc::clone(store);
            let vectors = Arc::clone(vectors);
            async move {
                store
                    .save(&merchant(i % merchants), draft(i, &vectors))
                    .await
                    .expect("seeding save");
            }
        })
        .await;
    let n = merchants * per;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}: seeded {n} episodes in {secs:.1} s ({:.0} saves/s with 32 tasks)",
        store.describe(),
        n as f64 / secs
    );
    assert_eq!(
        store.count(&merchant(0)).await.expect("count") as usize,
        per
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn report(backend: &str, op: &str, lat: &Mutex<Vec<Duration>>) {
    let mut v = lat.lock().map(|g| g.clone()).unwrap_or_default();
    v.sort();
    if v.is_empty() {
        return;
    }
    println!(
        "RESULT {backend:<6} {op:<14} n={:<7} p50={:>8.1} µs  p99={:>8.1} µs  max={:>8.1} µs",
        v.len(),
        percentile(&v, 0.50).as_secs_f64() * 1e6,
        percentile(&v, 0.99).as_secs_f64() * 1e6,
        v[v.len() - 1].as_secs_f64() * 1e6,
    );
}

async fn throughput(
    store: &Arc<dyn EpisodicStore>,
    tasks: usize,
    per_task: usize,
    merchants: usize,
    vectors: &Arc<Vec<Vec<f32>>>,
) -> f64 {
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = Arc::clone(store);
        let vectors = Arc::clone(vectors);
        handles.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64);
            for i in 0..per_task {
                let m = merchant(rng.random_range(0..merchants));
                store.save(&m, draft(i, &vectors)).await.expect("save");
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    (tasks * per_task) as f64 / started.elapsed().as_secs_f64()
}

fn bench_backend(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    backend: &str,
    store: Arc<dyn EpisodicStore>,
    merchants: usize,
    vectors: &Arc<Vec<Vec<f32>>>,
) {
    let queries = unit_vectors(256, 99);
    let mut group = c.benchmark_group(format!("episodic_{backend}"));
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4));

    let ops: [&str; 3] = ["recent_10", "similar_k5", "save"];
    for op in ops {
        let lat = Arc::new(Mutex::new(Vec::<Duration>::new()));
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        group.bench_function(BenchmarkId::new(op, "10k_x_20"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    let mut local = Vec::with_capacity(iters as usize);
                    for i in 0..iters as usize {
                        let m = merchant(rng.random_range(0..merchants));
                        let t = Instant::now();
                        match op {
                            "recent_10" => {
                                let r = store.recent(&m, 10).await.expect("recent");
                                assert_eq!(r.len(), 10);
                            }
                            "similar_k5" => {
                                let r = store
                                    .similar(&m, &queries[i % queries.len()], 5)
                                    .await
                                    .expect("similar");
                                assert_eq!(r.len(), 5);
                            }
                            _ => {
                                store.save(&m, draft(i, vectors)).await.expect("save");
                            }
                        }
                        let d = t.elapsed();
                        total += d;
                        local.push(d);
                    }
                    if let Ok(mut g) = lat.lock() {
                        g.extend(local);
                    }
                    total
                })
            })
        });
        report(backend, op, &lat);
    }
    group.finish();

    for tasks in [8, 32] {
        let per_task = 4000 / tasks;
        let rate = rt.block_on(throughput(&store, tasks, per_task, merchants, vectors));
        println!(
            "RESULT {backend:<6} concurrent_save tasks={tasks:<3} {:.0} saves/s",
            rate
        );
    }
}

fn main() {
    let merchants = env_usize("MEMEX_BENCH_MERCHANTS", 10_000);
    let per = env_usize("MEMEX_BENCH_PER_MERCHANT", 20);
    let backends = std::env::var("MEMEX_BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,redis".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let vectors = Arc::new(unit_vectors(VECTOR_POOL, 1));
    let mut c = Criterion::default().configure_from_args();

    if backends.split(',').any(|b| b.trim() == "sqlite") {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn EpisodicStore> = Arc::new(
            rt.block_on(SqliteEpisodicStore::open(
                &dir.path().join("episodes.db"),
                SqliteOptions::default(),
            ))
            .expect("open SQLite"),
        );
        rt.block_on(seed(&store, merchants, per, &vectors));
        bench_backend(&mut c, &rt, "sqlite", store, merchants, &vectors);
    }
    if backends.split(',').any(|b| b.trim() == "redis") {
        let server = redis_support::RedisServer::start();
        let opts = RedisOptions {
            namespace: format!("bench{}", std::process::id()),
            ..RedisOptions::default()
        };
        let store: Arc<dyn EpisodicStore> = Arc::new(
            rt.block_on(RedisEpisodicStore::connect(&server.url(), opts))
                .expect("connect to Redis"),
        );
        rt.block_on(seed(&store, merchants, per, &vectors));
        bench_backend(
            &mut c,
            &rt,
            "redis",
            Arc::clone(&store),
            merchants,
            &vectors,
        );
        if server.is_external() {
            // Leave a shared Redis as we found it.
            let everything = chrono::Utc::now() + chrono::Duration::days(1);
            rt.block_on(store.prune(everything)).expect("clean up");
        }
        drop(server);
    }
    c.final_summary();
}

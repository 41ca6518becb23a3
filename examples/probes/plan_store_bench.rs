//! The plan store's cost per operation on SQLite (`agent.db` in a temp dir, WAL) and on Redis
//! (a `redis-server` of its own on loopback, persistence off; or `$REDIS_URL`), in one run:
//! `update_step` (the executor's write per step transition), `steps` (the read of a whole plan)
//! and `claim` + `release`.
//!
//! `cargo run --release --locked --example plan_store_bench [-- UPDATES]` (default 5000).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use memex::planner::plan::DraftStep;
use memex::planner::store::{PlanRow, PlanStore};
use memex::planner::{PlanStatus, StepStatus};
use serde_json::json;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(backend: &str, what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let total: Duration = samples.iter().sum();
    println!(
        "{backend:<7} {what:<16} n={:<6} mean={:>8.1} µs  p50={:>8.1} µs  p99={:>8.1} µs",
        samples.len(),
        total.as_secs_f64() * 1e6 / samples.len() as f64,
        percentile(&samples, 0.50).as_secs_f64() * 1e6,
        percentile(&samples, 0.99).as_secs_f64() * 1e6,
    );
}

fn run(backend: &str, store: &PlanStore, updates: usize) {
    let steps: Vec<DraftStep> = (0..8)
        .map(|i| DraftStep {
            id: format!("s{i}"),
            description: format!("step {i}"),
            tool: "get_transaction".into(),
            args: json!({"transaction_id": format!("pay_{i}")}),
            depends_on: Vec::new(),
        })
        .collect();
    let id = format!("plan_bench_{}", uuid::Uuid::new_v4().simple());
    let row = PlanRow {
        id: id.clone(),
        session: format!("ses_{}", uuid::Uuid::new_v4().simple()),
        merchant: "MID001".into(),
        task: "bench".into(),
        status: PlanStatus::Planned,
        answer: None,
        turn: 1,
    };
    store.insert(&row, &steps).expect("insert");
    let result =
        json!({"id": "pay_1", "amount": 4999, "status": "captured", "note": "x".repeat(200)});
    let mut samples = Vec::with_capacity(updates);
    for i in 0..updates {
        let step = format!("s{}", i % 8);
        let (status, res) = if i % 2 == 0 {
            (StepStatus::Running, None)
        } else {
            (StepStatus::Done, Some(&result))
        };
        let t = Instant::now();
        store
            .update_step(&id, &step, status, (i / 8) as u32, None, res, None, None)
            .expect("update");
        samples.push(t.elapsed());
    }
    report(backend, "update_step", samples);
    let mut samples = Vec::new();
    for _ in 0..(updates / 5).max(1) {
        let t = Instant::now();
        let s = store.steps(&id).expect("steps");
        samples.push(t.elapsed());
        assert_eq!(s.len(), 8);
    }
    report(backend, "steps (8)", samples);
    let mut samples = Vec::new();
    for i in 0..(updates / 5).max(1) {
        let runner = format!("r{i}");
        let t = Instant::now();
        assert!(store.claim(&id, &runner, |_| false).expect("claim"));
        store.release(&id, &runner).expect("release");
        samples.push(t.elapsed());
    }
    report(backend, "claim+release", samples);
}

fn spawn_redis(dir: &std::path::Path) -> (Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child =
        Command::new(std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into()))
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (install it or set REDIS_URL)");
    (child, format!("redis://127.0.0.1:{port}/0"))
}

fn main() {
    let updates: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5000);
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = PlanStore::open(&dir.path().join("agent.db")).expect("sqlite");
    run("sqlite", &sqlite, updates);

    let (mut child, url) = match std::env::var("REDIS_URL") {
        Ok(u) if !u.trim().is_empty() => (None, u),
        _ => {
            let (c, u) = spawn_redis(dir.path());
            (Some(c), u)
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let redis = loop {
        match PlanStore::open_redis(&url) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => panic!("redis: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    run("redis", &redis, updates);
    if let Some(c) = child.as_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

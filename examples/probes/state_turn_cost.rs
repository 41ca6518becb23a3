//! What the agent store costs per agent turn on SQLite and on Redis: the store calls one chat turn
//! makes (session lease, `lock_session`, `begin_session`, `next_turn`, one audit row per tool
//! call, `record_turn`, `unlock_session`, lease release), timed per turn, and on Redis the
//! commands sent (from `INFO commandstats` before and after).
//!
//! `cargo run --release --example state_turn_cost -- [TURNS] [TOOL_CALLS_PER_TURN]`
//! (spawns its own `redis-server` on a free loopback port; `$REDIS_SERVER` names the binary).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use memex::agent::{AgentStore, AuditEntry, ModelUse, TurnRecord};
use memex::merchant::MerchantId;
use serde_json::json;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(6399)
}

fn turn(store: &AgentStore, session: &str, m: &MerchantId, tools: usize) {
    let owner = store
        .runner_locks()
        .try_own("session", session)
        .expect("lease")
        .expect("free");
    store
        .lock_session(session, owner.token(), |_| false)
        .expect("lock");
    store.begin_session(session, m).expect("begin");
    let n = store.next_turn(session).expect("turn");
    for i in 0..tools {
        store
            .audit(&AuditEntry {
                session: session.into(),
                merchant: m.as_str().into(),
                turn: n,
                call_id: format!("call_{i}"),
                tool: "get_transaction".into(),
                args: json!({"transaction_id": "pay_ABC123"}),
                result: json!({"status": "captured", "amount": 1000}),
                status: "ok".into(),
                latency_ms: 0.4,
                at: "2026-01-01T00:00:00.000Z".into(),
                model: Some("fake-model".into()),
            })
            .expect("audit");
    }
    store
        .record_turn(
            session,
            m,
            n,
            &TurnRecord {
                outcome: "answer".into(),
                latency_ms: 12.0,
                prompt_tokens: 900,
                completion_tokens: 40,
                context: json!({"kb": ["chunk 1", "chunk 2"], "episodes": [], "summary": ""}),
                kind: "message".into(),
                message: "Where is the settlement for pay_ABC123?".into(),
                answer: "It settles on T+2.".into(),
                models: vec![ModelUse {
                    model: "fake-model".into(),
                    role: "tools_and_answer".into(),
                    calls: 2,
                    prompt_tokens: 900,
                    completion_tokens: 40,
                    latency_ms: 10.0,
                }],
            },
        )
        .expect("record");
    store
        .unlock_session(session, owner.token())
        .expect("unlock");
    drop(owner);
}

fn run(store: &AgentStore, turns: usize, tools: usize) -> Duration {
    let m = MerchantId::parse("MID001").expect("merchant");
    // Warm-up (connections, statement caches).
    for i in 0..20 {
        turn(store, &format!("warm{}", i % 4), &m, tools);
    }
    let start = Instant::now();
    for i in 0..turns {
        turn(store, &format!("ses_{}", i % 16), &m, tools);
    }
    start.elapsed() / turns as u32
}

fn total_calls(url: &str) -> u64 {
    let client = redis::Client::open(url).expect("url");
    let mut c = client.get_connection().expect("connect");
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut c)
        .expect("info");
    info.lines()
        .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info"))
        .filter_map(|l| l.split("calls=").nth(1))
        .filter_map(|v| v.split(',').next())
        .filter_map(|v| v.parse::<u64>().ok())
        .sum()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let turns: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let tools: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);

    let dir = tempfile::tempdir()?;
    let sqlite = AgentStore::open(&dir.path().join("agent.db"))?;
    let per_sqlite = run(&sqlite, turns, tools);

    let port = free_port();
    let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let mut child = Command::new(binary)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()?;
    let url = format!("redis://127.0.0.1:{port}/0");
    let deadline = Instant::now() + Duration::from_secs(10);
    let store = loop {
        match AgentStore::open_redis(&url, Duration::from_secs(6)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(e.into()),
        }
    };
    let m = MerchantId::parse("MID001")?;
    for i in 0..20 {
        turn(&store, &format!("warm{}", i % 4), &m, tools);
    }
    let before = total_calls(&url);
    let trips_before = store.state_round_trips().unwrap_or(0);
    let start = Instant::now();
    for i in 0..turns {
        turn(&store, &format!("ses_{}", i % 16), &m, tools);
    }
    let per_redis = start.elapsed() / turns as u32;
    let after = total_calls(&url);
    let trips = (store.state_round_trips().unwrap_or(0) - trips_before) as f64 / turns as f64;
    let _ = child.kill();
    let _ = child.wait();

    let commands = (after - before) as f64 / turns as f64;
    println!("turns: {turns}, tool calls per turn: {tools}");
    println!("sqlite: {:.3} ms/turn", per_sqlite.as_secs_f64() * 1e3);
    println!(
        "redis:  {:.3} ms/turn, {trips:.2} round trips per turn ({commands:.2} commands executed by the server, scripts' inner calls included)",
        per_redis.as_secs_f64() * 1e3
    );
    println!(
        "added by redis: {:+.3} ms/turn",
        (per_redis.as_secs_f64() - per_sqlite.as_secs_f64()) * 1e3
    );
    Ok(())
}

//! A Redis for the conversation-store tests: `REDIS_URL` when set, else a private
//! `redis-server` on a free loopback port, stopped when the handle is dropped.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running Redis.
pub struct TestRedis {
    child: Option<Child>,
    /// `redis://127.0.0.1:PORT/`.
    pub url: String,
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts (or finds) Redis.
pub fn start() -> TestRedis {
    if let Ok(url) = std::env::var("REDIS_URL") {
        return TestRedis { child: None, url };
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (or set REDIS_URL)");
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "redis-server did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    TestRedis {
        child: Some(child),
        url: format!("redis://127.0.0.1:{port}/"),
    }
}

/// A key prefix unique to one test, so tests can share a `REDIS_URL`.
pub fn prefix() -> String {
    format!("memex-test-{}", uuid::Uuid::new_v4().simple())
}

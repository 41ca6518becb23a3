//! A real Redis for integration tests.
//!
//! [`RedisServer::start`] uses `$REDIS_URL` when it is set, else spawns its own `redis-server`
//! (from `$REDIS_SERVER` or `PATH`) on a free 127.0.0.1 port in a temporary directory, with
//! persistence off, and kills it on drop. [`RedisServer::spawn`] always spawns one (tests that
//! stop and restart the server need that); [`RedisServer::spawn_persistent`] additionally keeps
//! an append-only file fsynced on every write, so data survives [`RedisServer::stop`] +
//! [`RedisServer::restart`] on the same port.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Redis server for one test: owned (spawned here) or external (`$REDIS_URL`).
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    persistent: bool,
    password: Option<String>,
    dir: Option<tempfile::TempDir>,
    external: Option<String>,
}

impl RedisServer {
    /// `$REDIS_URL` when set, else a fresh server of our own.
    pub fn start() -> RedisServer {
        match std::env::var("REDIS_URL") {
            Ok(url) if !url.trim().is_empty() => RedisServer {
                child: None,
                port: 0,
                persistent: false,
                password: None,
                dir: None,
                external: Some(url.trim().to_owned()),
            },
            _ => RedisServer::spawn(),
        }
    }

    /// A fresh server of our own, without persistence.
    pub fn spawn() -> RedisServer {
        Self::spawn_with(false)
    }

    /// A fresh server of our own whose data survives stop/restart (AOF, fsync always).
    pub fn spawn_persistent() -> RedisServer {
        Self::spawn_with(true)
    }

    /// A fresh server of our own that requires `password` (`url()` carries it).
    pub fn spawn_with_password(password: &str) -> RedisServer {
        Self::spawn_inner(false, Some(password.to_owned()))
    }

    fn spawn_with(persistent: bool) -> RedisServer {
        Self::spawn_inner(persistent, None)
    }

    fn spawn_inner(persistent: bool, password: Option<String>) -> RedisServer {
        let dir = tempfile::tempdir().expect("create a temporary directory for redis-server");
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            persistent,
            password,
            dir: Some(dir),
            external: None,
        };
        server.launch();
        server
    }

    /// The URL to connect to (database 0 of our own server, or `$REDIS_URL`).
    pub fn url(&self) -> String {
        match &self.external {
            Some(u) => u.clone(),
            None => match &self.password {
                Some(pw) => format!("redis://:{pw}@127.0.0.1:{}/0", self.port),
                None => format!("redis://127.0.0.1:{}/0", self.port),
            },
        }
    }

    /// Whether this is `$REDIS_URL` rather than a server spawned here.
    pub fn is_external(&self) -> bool {
        self.external.is_some()
    }

    /// The port of our own server.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills our own server (SIGKILL, like a crash) and waits until it is gone.
    pub fn stop(&mut self) {
        assert!(self.external.is_none(), "cannot stop an external Redis");
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not stop",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts our own server again on the same port (and, if persistent, with the same data).
    pub fn restart(&mut self) {
        assert!(self.external.is_none(), "cannot restart an external Redis");
        if self.child.is_some() {
            self.stop();
        }
        self.launch();
    }

    fn launch(&mut self) {
        let dir: PathBuf = self
            .dir
            .as_ref()
            .expect("an owned server has a directory")
            .path()
            .to_path_buf();
        let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let mut cmd = Command::new(&binary);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(&dir)
            .arg("--save")
            .arg("")
            .arg("--daemonize")
            .arg("no")
            .arg("--logfile")
            .arg(dir.join("redis.log"));
        if let Some(pw) = &self.password {
            cmd.arg("--requirepass").arg(pw);
        }
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {binary:?} ({e}); install redis-server or set REDIS_URL to a running Redis"
                )
            });
        self.child = Some(child);
        self.wait_ready(&dir);
    }

    fn wait_ready(&mut self, dir: &std::path::Path) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
                    panic!("redis-server exited with {status} before answering:\n{log}");
                }
            }
            // Ready when the server on the port is ours: on a restart another test's server
            // may have taken the port meanwhile (then ours exits, and the check above says so).
            let ours = self.child.as_ref().map(Child::id);
            if ping(self.port)
                && ours.is_some()
                && server_pid(self.port, self.password.as_deref()) == ours
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

/// Whether a server on `port` answers `PING` with `+PONG` (and has finished loading data).
fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        // A password-protected server answers NOAUTH once it is ready.
        Ok(n) => buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"),
        Err(_) => false,
    }
}

/// The `process_id` the Redis server on `port` reports (`INFO server`, after `AUTH` when it
/// has a password); `None` when it does not answer.
fn server_pid(port: u16, password: Option<&str>) -> Option<u32> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    if let Some(pw) = password {
        let auth = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{pw}\r\n", pw.len());
        s.write_all(auth.as_bytes()).ok()?;
    }
    s.write_all(b"INFO server\r\n").ok()?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&reply).contains("\r\nrun_id:") {
        let n = s.read(&mut buf).ok()?;
        if n == 0 || reply.len() > 64 * 1024 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&reply)
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A key prefix unique to one test, so tests can share one Redis (`$REDIS_URL` included).
pub fn prefix() -> String {
    format!("memex-test-{}", uuid::Uuid::new_v4().simple())
}

//! Running `memex serve` in tests: the real binary on a free loopback port, keys created with
//! `memex keys create`, and the Python interpreter of the pinned client SDKs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::model;

/// A running `memex serve`.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    log: Arc<Mutex<String>>,
}

/// `memex --data-dir DATA --model-dir … ARGS`, LLM pointed at `llm` when given.
pub fn memex_command(data: &Path, llm: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_memex"));
    cmd.arg("--data-dir")
        .arg(data)
        .arg("--model-dir")
        .arg(model::model_dir())
        .args(args)
        .env_remove("MEMEX_JSON")
        .env_remove("MEMEX_EPISODIC_URL")
        .env_remove("MEMEX_STATE_URL")
        .env_remove("MEMEX_BIND")
        .env_remove("GROQ_API_KEY")
        .env_remove("OPENAI_API_KEY")
        .env_remove("MEMEX_LLM_BASE_URL")
        .env_remove("MEMEX_LLM_API_KEY");
    if let Some(url) = llm {
        cmd.env("MEMEX_LLM_BASE_URL", url)
            .env("MEMEX_LLM_API_KEY", "sk-test-secret-123")
            .env("MEMEX_LLM_MODEL", "fake-model");
    }
    cmd
}

/// Runs `memex … ARGS --json` and parses its stdout (panics with stderr on failure).
pub fn memex_json(data: &Path, llm: Option<&str>, args: &[&str]) -> Value {
    let out = memex_command(data, llm, args)
        .arg("--json")
        .output()
        .expect("memex runs");
    assert!(
        out.status.success(),
        "memex {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// `memex keys create … --json`: returns `(id, key)`.
pub fn create_key(data: &Path, owner: &[&str]) -> (String, String) {
    let mut args = vec!["keys", "create"];
    args.extend_from_slice(owner);
    let v = memex_json(data, None, &args);
    (
        v["id"].as_str().expect("id").to_owned(),
        v["key"].as_str().expect("key").to_owned(),
    )
}

impl Server {
    /// Starts `memex serve --bind 127.0.0.1:0 EXTRA` and waits for `listening on ADDR`.
    pub fn start(data: &Path, llm: Option<&str>, extra: &[&str]) -> Server {
        Self::start_with_env(data, llm, extra, &[])
    }

    /// [`Server::start`] with extra environment variables.
    pub fn start_with_env(
        data: &Path,
        llm: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let mut args = vec!["serve", "--bind", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut cmd = memex_command(data, llm, &args);
        cmd.env("MEMEX_LOG", "memex::serve=info,warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("memex serve starts");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.trim().to_owned());
                    }
                }
                if let Ok(mut l) = sink.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(180)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "memex serve did not start: {}",
                    log.lock().map(|l| l.clone()).unwrap_or_default()
                );
            }
        };
        Server {
            child,
            base: format!("http://{addr}"),
            log,
        }
    }

    /// `BASE` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Everything the server wrote on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit (up to `limit`).
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A reqwest client with `Authorization: Bearer KEY`.
pub fn client(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse().expect("header"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(300))
        .build()
        .expect("client")
}

/// The Python of the pinned client SDKs: `$MEMEX_TEST_PYTHON`, else `target/pyclients/bin/python`.
/// Missing is a failure (run `scripts/pyclients.sh`), never a skip.
pub fn python() -> PathBuf {
    let p = std::env::var_os("MEMEX_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pyclients/bin/python")
        });
    assert!(
        p.exists(),
        "the Python client SDKs are missing at {}: run scripts/pyclients.sh (or set MEMEX_TEST_PYTHON)",
        p.display()
    );
    p
}

/// A script under `tests/py/`.
pub fn py_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(name)
}

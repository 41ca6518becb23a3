//! Running the real `memex` binary in tests: against a data directory and an OpenAI-compatible
//! base URL (the loopback fake server), with a known test API key that must never be printed.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use super::model;

/// The API key every CLI test passes; outputs and logs must never contain it.
pub const TEST_KEY: &str = "sk-test-secret-123";

/// `memex --data-dir DATA --model-dir … ARGS` with the LLM settings pointing at `base_url`.
pub fn command(data: &Path, base_url: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_memex"));
    cmd.arg("--data-dir")
        .arg(data)
        .arg("--model-dir")
        .arg(model::model_dir())
        .args(args)
        .env("MEMEX_LLM_BASE_URL", base_url)
        .env("MEMEX_LLM_API_KEY", TEST_KEY)
        .env("MEMEX_LLM_MODEL", "fake-model")
        .env_remove("MEMEX_JSON")
        .env_remove("MEMEX_EPISODIC_URL")
        .env_remove("MEMEX_STATE_URL");
    cmd
}

/// Runs [`command`] to completion off the async runtime's threads.
pub async fn memex(data: &Path, base_url: &str, args: &[&str]) -> Output {
    let mut cmd = command(data, base_url, args);
    tokio::task::spawn_blocking(move || cmd.output().expect("memex runs"))
        .await
        .expect("the command's thread finishes")
}

/// The JSON a successful run printed (panics with stderr when it failed).
pub fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

//! The real `memex` binary, run from a test with a known environment.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use super::model;

/// Variables a developer's shell may carry that would change what a test's `memex` does: the
/// output format and the remote stores. Tests that want one set it after this.
const INHERITED: &[&str] = &[
    "MEMEX_JSON",
    "MEMEX_EPISODIC_URL",
    "MEMEX_STATE_URL",
    "MEMEX_EPISODES_RETENTION_DAYS",
];

/// `memex` with none of [`INHERITED`] and logs at `warn`; no data or model directory chosen.
pub fn bare() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_memex"));
    for v in INHERITED {
        cmd.env_remove(v);
    }
    cmd.env("MEMEX_LOG", "warn");
    cmd
}

/// `memex --data-dir DATA` with the real model ([`bare`] plus `MEMEX_MODEL_DIR`).
pub fn memex(data: &Path) -> Command {
    let mut cmd = bare();
    cmd.env("MEMEX_MODEL_DIR", model::model_dir())
        .arg("--data-dir")
        .arg(data);
    cmd
}

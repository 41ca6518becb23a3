//! The real `memex` binary, run from a test with a known environment.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use super::model;

/// `memex` with logs at `warn` and none of the `MEMEX_*` variables the test process inherited
/// (a developer's shell may set the output format, the stores or a config file); a test that
/// wants one sets it after this. No data or model directory is chosen.
pub fn bare() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_memex"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("MEMEX_") {
            cmd.env_remove(&name);
        }
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

//! Command-line conventions through the real binary: `NO_COLOR`, JSON errors with unchanged exit
//! codes, shell completions, closed choices and environment variables in `--help`, the
//! immediate no-LLM message, and `--index` over every vector index backend.

use crate::support::model;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

/// Variables that would configure an LLM or change the output; removed for every run.
const CLEARED: [&str; 9] = [
    "MEMEX_JSON",
    "MEMEX_LLM_BASE_URL",
    "MEMEX_LLM_API_KEY",
    "MEMEX_LLM_MODEL",
    "GROQ_API_KEY",
    "OPENAI_API_KEY",
    "MEMEX_INDEX",
    "NO_COLOR",
    "CLICOLOR_FORCE",
];

fn memex(data: &Path) -> Command {
    let mut cmd = crate::support::bin::bare();
    for v in CLEARED {
        cmd.env_remove(v);
    }
    cmd.env("MEMEX_LOG", "warn")
        .env("MEMEX_MODEL_DIR", model::model_dir())
        .arg("--data-dir")
        .arg(data);
    cmd
}

fn output(cmd: &mut Command) -> Output {
    cmd.output().expect("memex runs")
}

fn ok(cmd: &mut Command) -> Output {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "memex failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The single JSON error object on stderr.
fn json_error(out: &Output) -> (String, String) {
    let text = stderr(out);
    let line = text
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON on stderr: {text}"));
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let err = &v["error"];
    assert_eq!(err.as_object().map(|o| o.len()), Some(2), "{v}");
    (
        err["code"].as_str().unwrap().to_owned(),
        err["message"].as_str().unwrap().to_owned(),
    )
}

fn notes(dir: &Path) {
    let topics = [
        (
            "refunds",
            "A refund goes back to the original payment method within 5 to 7 working days.",
        ),
        (
            "settlements",
            "Settlements reach the merchant's bank account on a T+2 schedule.",
        ),
        (
            "chargebacks",
            "A chargeback must be answered with evidence within 7 days.",
        ),
        (
            "webhooks",
            "Webhooks are retried with exponential backoff for 24 hours.",
        ),
    ];
    for (name, text) in topics {
        std::fs::write(
            dir.join(format!("{name}.md")),
            format!("# {name}\n\n{text}\n"),
        )
        .unwrap();
    }
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    let data = tempfile::tempdir().unwrap();
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef memex"),
        ("fish", "complete -c memex"),
    ] {
        let out = ok(memex(data.path()).args(["completions", shell]));
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker), "{shell}: {script:.200}");
        for sub in ["ingest", "search", "completions"] {
            assert!(script.contains(sub), "{shell} lacks {sub}");
        }
        assert!(script.contains("hnsw_rs"), "{shell}: the --index values");
    }
    let out = output(memex(data.path()).args(["completions", "tcsh"]));
    assert_eq!(out.status.code(), Some(2));
}

/// Runs `memex ARGS` with stdout a pipe whose reader has gone away before the first write
/// (what `memex … | head -1` becomes once `head` exits), so any write fails with `EPIPE`
/// whatever the output's size; returns the exit code and stderr.
fn with_reader_gone(data: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut child = memex(data)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("memex starts");
    drop(child.stdout.take().expect("piped stdout"));
    let out = child.wait_with_output().expect("memex ends");
    (out.status.code(), stderr(&out))
}

/// A reader that stops early (`memex completions bash | head -1`) ends every command quietly:
/// no panic (exit 101) and no message, the broken-pipe status 141 where output was cut.
#[test]
fn a_closed_stdout_ends_commands_quietly() {
    let data = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let (code, err) = with_reader_gone(data.path(), &["completions", shell]);
        assert_ne!(code, Some(101), "completions {shell} panicked: {err}");
        assert!(!err.contains("panicked"), "completions {shell}: {err}");
        assert!(err.is_empty(), "completions {shell} said: {err}");
        assert_eq!(code, Some(141), "completions {shell}");
    }
    for args in [&["config", "show"][..], &["--help"], &["search", "--help"]] {
        let (code, err) = with_reader_gone(data.path(), args);
        assert_ne!(code, Some(101), "{args:?} panicked: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn help_lists_closed_choices_and_environment_variables() {
    let data = tempfile::tempdir().unwrap();
    let out = ok(memex(data.path()).args(["search", "--help"]));
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "- hnsw:",
        "- hnsw_rs:",
        "- flat:",
        "[env: MEMEX_INDEX=]",
        "- hybrid:",
        "- vector:",
        "- keyword:",
        "[possible values: cpu, cuda, metal, auto]",
        "[env: MEMEX_DEVICE=",
        "[env: MEMEX_DATA_DIR=",
        "[env: MEMEX_LLM_BASE_URL=]",
        "[env: MEMEX_LLM_MODEL=]",
        "[env: MEMEX_LLM_API_KEY]",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
    let out = output(memex(data.path()).args(["search", "--device", "tpu", "x"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("possible values"), "{}", stderr(&out));
    // The short help lists the choices inline.
    let out = ok(memex(data.path()).args(["search", "-h"]));
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(
        help.contains("[possible values: hnsw, hnsw_rs, flat]"),
        "{help}"
    );
    assert!(
        help.contains("[possible values: hybrid, vector, keyword]"),
        "{help}"
    );
}

#[test]
fn json_errors_keep_the_exit_code() {
    let data = tempfile::tempdir().unwrap();
    let missing = data.path().join("no-model-here");
    // A failure while running: exit 1 either way, JSON only with --json.
    let plain = output(
        memex(data.path())
            .arg("--model-dir")
            .arg(&missing)
            .args(["search", "refunds"]),
    );
    assert_eq!(plain.status.code(), Some(1));
    assert!(stderr(&plain).starts_with("error: "), "{}", stderr(&plain));
    let json = output(
        memex(data.path())
            .arg("--model-dir")
            .arg(&missing)
            .args(["--json", "search", "refunds"]),
    );
    assert_eq!(json.status.code(), Some(1));
    let (code, message) = json_error(&json);
    assert_eq!(code, "model");
    assert!(message.contains("no-model-here"), "{message}");
    assert!(json.stdout.is_empty());
    // MEMEX_JSON does the same.
    let env = output(
        memex(data.path())
            .env("MEMEX_JSON", "1")
            .arg("--model-dir")
            .arg(&missing)
            .args(["search", "refunds"]),
    );
    assert_eq!(json_error(&env).0, "model");

    // A usage error: exit 2 either way.
    let plain = output(memex(data.path()).args(["search", "--index", "annoy", "x"]));
    assert_eq!(plain.status.code(), Some(2));
    let json = output(memex(data.path()).args(["--json", "search", "--index", "annoy", "x"]));
    assert_eq!(json.status.code(), Some(2));
    let (code, message) = json_error(&json);
    assert_eq!(code, "usage");
    assert!(message.contains("annoy"), "{message}");
    // Help is still help.
    let help = ok(memex(data.path()).args(["--json", "--help"]));
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage"));
}

#[test]
fn without_an_llm_ask_chat_and_plan_fail_at_once_naming_what_to_set() {
    let data = tempfile::tempdir().unwrap();
    for args in [
        vec!["ask", "--merchant", "MID001", "where is my settlement?"],
        vec!["chat", "--merchant", "MID001"],
        vec!["plan", "--merchant", "MID001", "refund pay_ABC123"],
    ] {
        let out = output(memex(data.path()).args(&args));
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        for needle in [
            "MEMEX_LLM_BASE_URL",
            "GROQ_API_KEY",
            "http://127.0.0.1:11434/v1",
        ] {
            assert!(err.contains(needle), "{args:?}: {err}");
        }
        let out = output(memex(data.path()).arg("--json").args(&args));
        assert_eq!(json_error(&out).0, "llm_not_configured");
    }
    // Nothing was created for a command that could not run.
    assert!(!data.path().join("agent.db").exists());
}

#[test]
fn no_color_turns_off_ansi_on_stderr() {
    let data = tempfile::tempdir().unwrap();
    let docs = tempfile::tempdir().unwrap();
    notes(docs.path());
    ok(memex(data.path()).arg("ingest").arg(docs.path()));
    let index = data.path().join("kb.hnsw");
    assert!(index.is_file());
    let damage = || std::fs::write(&index, b"not an index").unwrap();

    // A damaged index file is logged (a warning) and rebuilt.
    damage();
    let forced = ok(memex(data.path())
        .env("CLICOLOR_FORCE", "1")
        .args(["search", "refund"]));
    let forced = stderr(&forced);
    assert!(forced.contains("rebuilding"), "{forced}");
    assert!(forced.contains('\u{1b}'), "colour is forced: {forced:?}");

    damage();
    let plain = ok(memex(data.path())
        .env("CLICOLOR_FORCE", "1")
        .env("NO_COLOR", "1")
        .args(["search", "refund"]));
    let plain = stderr(&plain);
    assert!(plain.contains("rebuilding"), "{plain}");
    assert!(!plain.contains('\u{1b}'), "NO_COLOR wins: {plain:?}");
}

#[test]
fn every_index_backend_ingests_searches_and_reindexes() {
    let docs = tempfile::tempdir().unwrap();
    notes(docs.path());
    let mut tops = Vec::new();
    for (kind, file) in [
        ("hnsw", "kb.hnsw"),
        ("hnsw_rs", "kb.hnsw_rs.vec"),
        ("flat", "kb.flat.vec"),
    ] {
        let data = tempfile::tempdir().unwrap();
        ok(memex(data.path())
            .args(["ingest", "--index", kind])
            .arg(docs.path()));
        assert!(data.path().join(file).is_file(), "{kind}: {file}");
        let out = ok(memex(data.path()).args([
            "--json",
            "search",
            "--mode",
            "vector",
            "--index",
            kind,
            "-k",
            "4",
            "how long until money is back on the card after a refund",
        ]));
        let hits: Value = serde_json::from_slice(&out.stdout).unwrap();
        let hits = hits.as_array().unwrap_or_else(|| panic!("{hits}"));
        assert_eq!(hits.len(), 4, "{kind}");
        let sources: Vec<String> = hits
            .iter()
            .map(|h| h["source"].as_str().unwrap().to_owned())
            .collect();
        assert!(sources[0].ends_with("refunds.md"), "{kind}: {sources:?}");
        tops.push(sources);

        // MEMEX_INDEX selects the backend too.
        let out = ok(memex(data.path())
            .env("MEMEX_INDEX", kind)
            .args(["--json", "reindex"]));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["vectors"], 4, "{kind}: {v}");
        assert!(v["index"].as_str().unwrap().ends_with(file), "{kind}: {v}");
    }
    // Four chunks: every backend is exact here, so all agree.
    assert_eq!(tops[0], tops[1]);
    assert_eq!(tops[0], tops[2]);
}

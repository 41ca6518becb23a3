//! The config file through the real binary: where it is found (`--config`, `MEMEX_CONFIG`, the
//! data directory), the precedence flag > env > file > default on real commands and in
//! `memex config show`, redaction of secrets, and clear errors naming the file and key.

use crate::support::model;

use std::path::Path;
use std::process::{Command, Output};

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;

/// Variables that would change what these tests observe; removed for every run.
const CLEARED: [&str; 18] = [
    "MEMEX_CHUNK_TOKENS",
    "MEMEX_CHUNK_OVERLAP",
    "MEMEX_KB_K",
    "MEMEX_CONFIG",
    "MEMEX_DATA_DIR",
    "MEMEX_JSON",
    "MEMEX_THREADS",
    "MEMEX_KERNEL",
    "MEMEX_PRECISION",
    "MEMEX_DEVICE",
    "MEMEX_LLM_BASE_URL",
    "MEMEX_LLM_API_KEY",
    "MEMEX_LLM_MODEL",
    "MEMEX_LLM_MAX_TOKENS",
    "MEMEX_EPISODIC_URL",
    "MEMEX_EPISODES_RETENTION_DAYS",
    "GROQ_API_KEY",
    "OPENAI_API_KEY",
];

const SECRET: &str = "sk-file-secret-456";

/// `memex --data-dir DATA ARGS`, run in DATA's parent with a clean environment.
fn memex(data: &Path, args: &[&str]) -> Command {
    let mut cmd = crate::support::bin::bare();
    for v in CLEARED {
        cmd.env_remove(v);
    }
    cmd.env("MEMEX_LOG", "warn")
        .current_dir(data.parent().expect("data dir has a parent"))
        .arg("--data-dir")
        .arg(data)
        .args(args);
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("memex runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "memex failed: {}", stderr(out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// A data directory with `memex.toml` holding `toml`.
fn data_with(toml: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(data.join("memex.toml"), toml).expect("write memex.toml");
    (tmp, data)
}

fn show(cmd: &mut Command) -> Value {
    json_of(&run(cmd.args(["--json", "config", "show"])))
}

fn setting<'a>(shown: &'a Value, key: &str) -> (&'a Value, &'a str) {
    let s = &shown["settings"][key];
    assert!(s.is_object(), "no setting {key} in {shown}");
    (&s["value"], s["source"].as_str().expect("source"))
}

/// The retention cutoff `memex prune --json` reports, in whole days before now.
fn prune_days(out: &Output) -> i64 {
    let v = json_of(out);
    let before: DateTime<Utc> = v["before"]
        .as_str()
        .expect("before")
        .parse()
        .expect("RFC 3339");
    let days = (Utc::now() - before + Duration::hours(1)).num_days();
    assert_eq!(v["removed"]["episodes"], 0, "{v}");
    days
}

#[test]
fn file_values_reach_real_commands_with_flag_over_env_over_file() {
    let (_tmp, data) = data_with("[prune]\nepisodes_retention_days = 30\n");
    // Default: no retention is set, so prune refuses.
    let (_t2, bare) = data_with("");
    let out = run(&mut memex(&bare, &["prune"]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // File.
    assert_eq!(
        prune_days(&run(&mut memex(&data, &["--json", "prune"]))),
        30
    );
    // Env over file.
    let mut cmd = memex(&data, &["--json", "prune"]);
    cmd.env("MEMEX_EPISODES_RETENTION_DAYS", "10");
    assert_eq!(prune_days(&run(&mut cmd)), 10);
    // Flag over env.
    let mut cmd = memex(
        &data,
        &["--json", "prune", "--episodes-retention-days", "5"],
    );
    cmd.env("MEMEX_EPISODES_RETENTION_DAYS", "10");
    assert_eq!(prune_days(&run(&mut cmd)), 5);
}

#[test]
fn a_global_boolean_in_the_file_switches_json_output() {
    let (_tmp, data) = data_with("json = true\n[prune]\nepisodes_retention_days = 7\n");
    let out = run(&mut memex(&data, &["prune"]));
    assert_eq!(prune_days(&out), 7);
    // The environment still wins over the file.
    let mut cmd = memex(&data, &["prune"]);
    cmd.env("MEMEX_JSON", "false");
    let out = run(&mut cmd);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("pruned 0 episode(s)"), "{text}");
}

#[test]
fn config_show_names_each_settings_source() {
    let (_tmp, data) = data_with(&format!(
        "kernel = \"scalar\"\nthreads = 3\nllm_model = \"file-model\"\nllm_max_tokens = 200\n\
         llm_api_key = \"{SECRET}\"\n\n[prune]\nepisodes_retention_days = 30\n\n\
         [episodes.search]\ntop_k = 2\n\n[eval.locomo]\nk = [1, 5]\n"
    ));
    let mut cmd = memex(&data, &["--llm-model", "flag-model"]);
    cmd.env("MEMEX_LLM_MODEL", "env-model")
        .env("MEMEX_THREADS", "2")
        .env("MEMEX_EPISODES_RETENTION_DAYS", "9");
    let out = run(cmd.args(["--json", "config", "show"]));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(SECRET),
        "the API key was printed"
    );
    let shown = json_of(&out);
    assert_eq!(shown["file"]["loaded"], true);
    assert_eq!(shown["file"]["source"], "default");
    assert!(shown["file"]["path"]
        .as_str()
        .expect("path")
        .ends_with("memex.toml"));
    assert_eq!(setting(&shown, "llm_model"), (&"flag-model".into(), "flag"));
    assert_eq!(setting(&shown, "threads"), (&"2".into(), "env"));
    assert_eq!(setting(&shown, "kernel"), (&"scalar".into(), "file"));
    assert_eq!(setting(&shown, "precision"), (&"f16".into(), "default"));
    assert_eq!(setting(&shown, "llm_max_tokens"), (&"200".into(), "file"));
    assert_eq!(setting(&shown, "episodic"), (&Value::Null, "unset"));
    assert_eq!(
        setting(&shown, "llm_api_key"),
        (&"<redacted>".into(), "file")
    );
    assert_eq!(
        setting(&shown, "prune.episodes_retention_days"),
        (&"9".into(), "env")
    );
    assert_eq!(
        setting(&shown, "episodes.search.top_k"),
        (&"2".into(), "file")
    );
    // A list flag (`-k 1,5`) takes an array.
    assert_eq!(
        setting(&shown, "eval.locomo.k"),
        (&serde_json::json!(["1", "5"]), "file")
    );
    assert_eq!(shown["settings"]["device"]["env"], "MEMEX_DEVICE");

    // The text form reads as a config file and redacts the key too.
    let out = run(&mut memex(&data, &["config", "show"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains(SECRET), "{text}");
    assert!(
        text.contains("kernel = \"scalar\"  # file, env MEMEX_KERNEL"),
        "{text}"
    );
    assert!(text.contains("[episodes.search]\n"), "{text}");
    assert!(text.contains("llm_api_key = \"<redacted>\""), "{text}");
    // Booleans print as TOML booleans, so the text can be pasted into a file.
    assert!(text.contains("\njson = false  # default"), "{text}");
}

#[test]
fn config_path_from_flag_then_env_then_data_dir() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(data.join("memex.toml"), "kernel = \"scalar\"\n").expect("write");
    let by_env = tmp.path().join("env.toml");
    std::fs::write(&by_env, "precision = \"int8\"\n").expect("write");
    let by_flag = tmp.path().join("flag.toml");
    std::fs::write(&by_flag, "precision = \"f32\"\n").expect("write");

    let shown = show(&mut memex(&data, &[]));
    assert_eq!(setting(&shown, "kernel"), (&"scalar".into(), "file"));

    let mut cmd = memex(&data, &[]);
    cmd.env("MEMEX_CONFIG", &by_env);
    let shown = show(&mut cmd);
    assert_eq!(shown["file"]["source"], "env");
    assert_eq!(setting(&shown, "precision"), (&"int8".into(), "file"));
    // Only one file is read: the data dir's is not merged in.
    assert_eq!(setting(&shown, "kernel"), (&"auto".into(), "default"));

    let mut cmd = memex(&data, &["--config"]);
    cmd.arg(&by_flag).env("MEMEX_CONFIG", &by_env);
    let shown = show(&mut cmd);
    assert_eq!(shown["file"]["source"], "flag");
    assert_eq!(setting(&shown, "precision"), (&"f32".into(), "file"));

    // An explicit file must exist; the data dir's may be absent.
    let missing = tmp.path().join("missing.toml");
    let out = run(memex(&data, &["config", "show", "--config"]).arg(&missing));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&missing.display().to_string()),
        "{}",
        stderr(&out)
    );
    let empty = tmp.path().join("empty");
    let shown = show(&mut memex(&empty, &[]));
    assert_eq!(shown["file"]["loaded"], false);

    // A file named by --config may move the data dir; the data dir's own file may not.
    let moved = tmp.path().join("moved.toml");
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::write(
        &moved,
        format!("data_dir = {:?}\n", elsewhere.display().to_string()),
    )
    .expect("write");
    let mut cmd = crate::support::bin::bare();
    for v in CLEARED {
        cmd.env_remove(v);
    }
    cmd.current_dir(tmp.path())
        .arg("--config")
        .arg(&moved)
        .args(["--json", "config", "show"]);
    let shown = json_of(&run(&mut cmd));
    assert_eq!(
        setting(&shown, "data_dir"),
        (&elsewhere.display().to_string().into(), "file")
    );
    let (_t, data2) = data_with("data_dir = \"/elsewhere\"\n");
    let out = run(&mut memex(&data2, &["config", "show"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("`data_dir`"), "{}", stderr(&out));
}

/// Runs `config show` on a file holding `toml`; returns the exit code and stderr.
fn refused(toml: &str) -> (Option<i32>, String, std::path::PathBuf) {
    let (tmp, data) = data_with(toml);
    let out = run(&mut memex(&data, &["config", "show"]));
    let path = data.join("memex.toml");
    drop(tmp);
    (out.status.code(), stderr(&out), path)
}

#[test]
fn unknown_keys_and_wrong_types_are_errors_naming_file_and_key() {
    let cases: [(&str, &str, &str); 9] = [
        ("colour = true\n", "`colour`", "no flag --colour"),
        ("[nosuch]\nx = 1\n", "`nosuch`", "no subcommand `nosuch`"),
        ("[prune]\nbogus = 1\n", "`prune.bogus`", "no flag --bogus"),
        (
            "[prune]\ndevice = \"cpu\"\n",
            "`prune.device`",
            "global flags go at the top",
        ),
        ("threads = \"four\"\n", "`threads`", "invalid value 'four'"),
        ("device = \"gpu\"\n", "`device`", "invalid value 'gpu'"),
        (
            "[eval.locomo]\nk = [1, \"x\"]\n",
            "`eval.locomo.k`",
            "invalid value 'x'",
        ),
        (
            "json = \"yes\"\n",
            "`json`",
            "expected true or false, found string",
        ),
        (
            "[forget]\nmerchant = \"m_1\"\n",
            "`forget.merchant`",
            "cannot be set in a config file",
        ),
    ];
    for (toml, key, why) in cases {
        let (code, err, path) = refused(toml);
        assert_eq!(code, Some(2), "{toml}: {err}");
        assert!(err.contains(key), "{toml}: {err}");
        assert!(err.contains(why), "{toml}: {err}");
        assert!(err.contains(&path.display().to_string()), "{toml}: {err}");
        assert_eq!(err.lines().count(), 1, "{toml}: {err}");
    }
    let (code, err, path) = refused("threads = [1\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("not valid TOML"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");

    // Bounds are the flag's own: retention days are 1..=36500.
    let (code, err, _) = refused("[prune]\nepisodes_retention_days = 0\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("`prune.episodes_retention_days`"), "{err}");
}

/// Runs `cmd`, killing it after 10 s (a read that never ends fails the test, not the suite).
fn run_within_10s(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("memex starts");
    let started = std::time::Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > std::time::Duration::from_secs(10) {
            let _ = child.kill();
            let out = child.wait_with_output().expect("killed");
            panic!("memex still running after 10 s: {}", stderr(&out));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// A config file that is a FIFO (which blocked every command), a link to /dev/zero (read
/// without end: gigabytes in seconds) or larger than 1 MiB is refused at once with one
/// sentence naming the file, whether named by --config, MEMEX_CONFIG or the data directory;
/// a link to a regular file is followed.
#[cfg(unix)]
#[test]
fn config_files_that_are_not_small_regular_files_are_refused_at_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let fifo = tmp.path().join("fifo.toml");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let zero = tmp.path().join("zero.toml");
    std::os::unix::fs::symlink("/dev/zero", &zero).expect("symlink");
    let big = tmp.path().join("big.toml");
    let mut text = String::from("kernel = \"scalar\"\n");
    while text.len() <= 1024 * 1024 {
        text.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    std::fs::write(&big, &text).expect("write");
    let cases = [
        (&fifo, "FIFO"),
        (&zero, "character device"),
        (&big, "larger than 1 MiB"),
    ];
    for (path, why) in cases {
        for how in ["flag", "env"] {
            let mut cmd = memex(&data, &["config", "show"]);
            match how {
                "flag" => cmd.arg("--config").arg(path),
                _ => cmd.env("MEMEX_CONFIG", path),
            };
            let out = run_within_10s(&mut cmd);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{how} {why}: {err}");
            assert!(err.contains(why), "{how} {why}: {err}");
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }
    // The data directory's own memex.toml as a FIFO: refused too, not waited on.
    std::fs::rename(&fifo, data.join("memex.toml")).expect("move the fifo");
    let out = run_within_10s(&mut memex(&data, &["config", "show"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("FIFO"), "{}", stderr(&out));
    // A link to a regular file is a normal config file.
    std::fs::remove_file(data.join("memex.toml")).expect("rm");
    let real = tmp.path().join("real.toml");
    std::fs::write(&real, "kernel = \"scalar\"\n").expect("write");
    std::os::unix::fs::symlink(&real, data.join("memex.toml")).expect("symlink");
    let shown = show(&mut memex(&data, &[]));
    assert_eq!(setting(&shown, "kernel"), (&"scalar".into(), "file"));
}

#[test]
fn config_errors_are_json_with_json() {
    let (_tmp, data) = data_with("colour = true\n");
    let out = run(&mut memex(&data, &["--json", "config", "show"]));
    assert_eq!(out.status.code(), Some(2));
    let err: Value = serde_json::from_str(stderr(&out).trim()).expect("one JSON object");
    assert_eq!(err["error"]["code"], "config");
    assert!(err["error"]["message"]
        .as_str()
        .expect("message")
        .contains("`colour`"));
}

/// Chunks `memex ingest --json` reports for one long Markdown section in `data`.
fn chunks_ingested(data: &Path, extra: &[&str]) -> u64 {
    let docs = data.parent().expect("parent").join("docs");
    std::fs::create_dir_all(&docs).expect("docs dir");
    let body: String = (0..60)
        .map(|i| {
            format!("Settlement note {i}: the payout for order ord_{i:04} was held for review. ")
        })
        .collect();
    std::fs::write(docs.join("long.md"), format!("# Settlements\n\n{body}\n")).expect("doc");
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["ingest", docs.to_str().expect("utf-8 path")]);
    let mut cmd = memex(data, &args);
    cmd.env("MEMEX_MODEL_DIR", model::model_dir());
    let v = json_of(&run(&mut cmd));
    v["chunks_added"].as_u64().expect("chunks_added")
}

#[test]
fn tuning_settings_without_a_command_of_their_own_come_from_the_file() {
    // Chunking: the file's chunk size reaches ingestion; a flag still beats it.
    let (_t1, default_data) = data_with("");
    let (_t2, small) = data_with("chunk_tokens = 48\nchunk_overlap = 0\n");
    let (_t3, flagged) = data_with("chunk_tokens = 48\nchunk_overlap = 0\n");
    let default_chunks = chunks_ingested(&default_data, &[]);
    let small_chunks = chunks_ingested(&small, &[]);
    let flag_chunks = chunks_ingested(
        &flagged,
        &["--chunk-tokens", "256", "--chunk-overlap", "32"],
    );
    assert!(
        small_chunks >= 3 * default_chunks,
        "48-token chunks from the file: {small_chunks}, default: {default_chunks}"
    );
    assert_eq!(flag_chunks, default_chunks, "the flag beats the file");

    // Every group the issue names is in `config show`, with its source.
    let (_t4, data) = data_with(
        "max_tool_calls = 3\ncache_ttl = 60\ntool_rate = 2\nconversation_budget = 1200\n\
         hnsw_ef_search = 128\nhnsw_m = 24\nkb_k = 6\nsimilar_episodes = 5\n",
    );
    let mut cmd = memex(&data, &[]);
    cmd.env("MEMEX_KB_K", "7");
    let shown = show(&mut cmd);
    assert_eq!(setting(&shown, "max_tool_calls"), (&"3".into(), "file"));
    assert_eq!(setting(&shown, "cache_ttl"), (&"60".into(), "file"));
    assert_eq!(setting(&shown, "tool_rate"), (&"2".into(), "file"));
    assert_eq!(
        setting(&shown, "conversation_budget"),
        (&"1200".into(), "file")
    );
    assert_eq!(setting(&shown, "hnsw_ef_search"), (&"128".into(), "file"));
    assert_eq!(setting(&shown, "hnsw_m"), (&"24".into(), "file"));
    assert_eq!(setting(&shown, "kb_k"), (&"7".into(), "env"));
    assert_eq!(setting(&shown, "similar_episodes"), (&"5".into(), "file"));
    assert_eq!(setting(&shown, "chunk_tokens"), (&"256".into(), "default"));
    assert_eq!(shown["settings"]["cache_ttl"]["env"], "MEMEX_CACHE_TTL");

    // Out-of-range values in the file are refused with the flag's own bounds.
    let (code, err, _) = refused("max_tool_calls = 1000\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("max_tool_calls"), "{err}");
    // An overlap of half a chunk or more is a clear error, not a silent clamp.
    let (_t5, bad) = data_with("chunk_tokens = 64\nchunk_overlap = 40\n");
    let mut cmd = memex(&bad, &["search", "refund"]);
    cmd.env("MEMEX_MODEL_DIR", model::model_dir());
    let out = run(&mut cmd);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--chunk-overlap 40 must be less than half of --chunk-tokens 64"),
        "{}",
        stderr(&out)
    );
}

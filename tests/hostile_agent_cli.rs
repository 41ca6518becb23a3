//! Regression tests for the defects break-testing found outside the knowledge base (issue 11),
//! all through the real binary against the fake OpenAI-compatible server on loopback.

use crate::support::cli;
use crate::support::fake_openai;

use std::path::Path;
use std::process::Output;

use cli::{json_of, memex, TEST_KEY};
use fake_openai::{FakeOpenAi, Reply};

/// Runs `memex ARGS` with extra environment variables.
async fn memex_env(data: &Path, url: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = cli::command(data, url, args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::task::spawn_blocking(move || cmd.output().expect("memex runs"))
        .await
        .expect("the command's thread finishes")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Neither a panic nor a leaked key.
fn assert_no_panic(out: &Output) {
    let err = stderr(out);
    assert_ne!(out.status.code(), Some(101), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains(TEST_KEY), "{err}");
}

async fn turns(data: &Path, url: &str) -> u64 {
    json_of(&memex(data, url, &["stats", "--json"]).await)["turns"]
        .as_u64()
        .expect("stats has a turn count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_retry_after_values_never_panic_and_the_turn_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    // (header, value, whether the wait is usable and so clamped to the budget: the client
    // then gives up at once, as the wait would end past it).
    let cases = [
        ("Retry-After", "1e20", true),
        ("Retry-After", "1e308", true),
        ("retry-after-ms", "1e25", true),
        ("Retry-After", "Fri, 31 Dec 9999 23:59:59 GMT", true),
        ("Retry-After", "NaN", false),
        ("Retry-After", "-5", false),
        ("Retry-After", "inf", false),
        ("retry-after-ms", "-inf", false),
        ("Retry-After", "soon, maybe \u{1b}[31m", false),
    ];
    let mut expected_turns = 0;
    for (name, value, clamped) in cases {
        let server = FakeOpenAi::start().await;
        let url = server.base_url();
        server
            .push(Reply::status(429, "slow down").header(name, value))
            .push(Reply::text("answered after the rate limit"));
        let out = memex_env(
            data,
            &url,
            &["ask", "--merchant", "MID001", "hello"],
            &[("MEMEX_LLM_RETRY_BUDGET", "20")],
        )
        .await;
        assert_no_panic(&out);
        expected_turns += 1;
        if clamped {
            assert_eq!(
                out.status.code(),
                Some(1),
                "{name}: {value}: {}",
                stderr(&out)
            );
            let err = stderr(&out);
            assert!(
                err.contains("rate limiting") && err.contains("wait 20.0 s"),
                "{name}: {value}: {err}"
            );
            assert_eq!(server.request_count(), 1, "{name}: {value}");
        } else {
            // An unusable value is ignored: the normal backoff applies and the retry succeeds.
            assert!(out.status.success(), "{name}: {value}: {}", stderr(&out));
            assert!(String::from_utf8_lossy(&out.stdout).contains("answered after"));
            assert_eq!(server.request_count(), 2, "{name}: {value}");
        }
        assert_eq!(turns(data, &url).await, expected_turns, "{name}: {value}");
    }
}

/// Asks for a refund of `payment` in a new session of MID001; returns (session, action id).
async fn pending_refund(data: &Path, server: &FakeOpenAi, payment: &str) -> (String, String) {
    let args =
        format!(r#"{{"transaction_id":"{payment}","amount":1000,"reason":"customer asked"}}"#);
    server.push(Reply::tool_calls(&[("call_r", "initiate_refund", &args)]));
    let r = json_of(
        &memex(
            data,
            &server.base_url(),
            &[
                "ask",
                "--merchant",
                "MID001",
                "--json",
                &format!("Refund 1000 of {payment}. yes, I confirm"),
            ],
        )
        .await,
    );
    let action = r["pending_action"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no pending action: {r}"))
        .to_string();
    (r["session"].as_str().unwrap().to_string(), action)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_states_the_real_outcome_before_the_models_story() {
    let server = FakeOpenAi::start().await;
    let url = server.base_url();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    json_of(&memex(data, &url, &["init", "--demo", "--json"]).await);

    // A refund that succeeds, told by the model as a failure.
    let (_, action) = pending_refund(data, &server, "pay_ABC123").await;
    server.push(Reply::text("Sorry, the refund could not be processed."));
    let out = memex(data, &url, &["approve", &action]).await;
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let first = stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!(
            "executed: initiate_refund (action {action}): refund "
        )),
        "{stdout}"
    );
    assert!(first.contains("of 1000 INR"), "{stdout}");
    assert!(stdout.contains("Sorry, the refund could not be processed."));

    // Another merchant's payment: the refund fails, told by the model as a success.
    let (_, action) = pending_refund(data, &server, "pay_J6A7lY7PTimgbY").await;
    server.push(Reply::text("Done! The refund went through."));
    let out = memex(data, &url, &["approve", &action]).await;
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let first = stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("failed: initiate_refund (action {action}): ")),
        "{stdout}"
    );
    assert!(!first.contains("already decided"), "{stdout}");
    assert!(stdout.contains("Done! The refund went through."));

    // Approving it again runs nothing and says so, with the same failure status.
    let requests = server.request_count();
    let out = memex(data, &url, &["approve", &action]).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        stdout.starts_with(&format!(
            "failed: initiate_refund (action {action}) (already decided earlier"
        )),
        "{stdout}"
    );
    assert_eq!(
        server.request_count(),
        requests,
        "no model call for a decided action"
    );

    // --json keeps its shape; the exit status tells the failure there too.
    let out = memex(data, &url, &["approve", &action, "--json"]).await;
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["tool_calls"][0]["status"], "error");
    assert!(v.get("answer").is_some() && v.get("session").is_some());

    // A rejection says nothing ran.
    let (_, action) = pending_refund(data, &server, "pay_ABC123").await;
    server.push(Reply::text("Understood, no refund."));
    let out = memex(data, &url, &["reject", &action]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        stdout.starts_with(&format!(
            "rejected: initiate_refund (action {action}); it was not run"
        )),
        "{stdout}"
    );
}

/// Runs `memex ARGS` with stdout on a pipe (and `stdin` fed to it), reads one line, closes the
/// pipe and waits: the process must end quietly (status 0 or 141, nothing on stderr).
fn read_one_line_then_close(data: &Path, url: &str, args: &[&str], stdin: &str) {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    let mut cmd = cli::command(data, url, args);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("memex starts");
    let mut input = child.stdin.take().unwrap();
    let text = stdin.to_string();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(text.as_bytes());
    });
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).expect("one line");
    assert!(!line.is_empty(), "{args:?} printed nothing");
    drop(reader);
    let out = child.wait_with_output().expect("memex ends");
    let _ = feeder.join();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(0) | Some(141)),
        "{args:?}: {:?}: {err}",
        out.status
    );
    assert!(err.trim().is_empty(), "{args:?}: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_every_command_quietly() {
    let server = FakeOpenAi::start().await;
    let url = server.base_url();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    json_of(&memex(&data, &url, &["init", "--demo", "--json"]).await);
    // Plenty of output: the pipe is closed while the command is still writing.
    for i in 0..12 {
        let summary = format!(
            "Merchant MID001 asked about payout delay number {i}. {}",
            "x".repeat(800)
        );
        let out = memex(
            &data,
            &url,
            &[
                "episodes",
                "add",
                "--merchant",
                "MID001",
                "--summary",
                &summary,
            ],
        )
        .await;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let many_texts: String = (0..400).map(|i| format!("text number {i}\n")).collect();
    tokio::task::spawn_blocking(move || {
        for round in 0..5 {
            read_one_line_then_close(
                &data,
                &url,
                &["search", "-k", "50", "refund settlement"],
                "",
            );
            read_one_line_then_close(
                &data,
                &url,
                &["episodes", "list", "--merchant", "MID001", "--limit", "100"],
                "",
            );
            read_one_line_then_close(&data, &url, &["--help"], "");
            if round < 2 {
                read_one_line_then_close(&data, &url, &["search", "-k", "50", "--json", "x"], "");
                read_one_line_then_close(&data, &url, &["embed", "--input", "-"], &many_texts);
            }
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_counts_are_bounded_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let url = "http://127.0.0.1:9/v1";
    let cases: [(&[&str], &str); 15] = [
        (
            &["prune", "--episodes-retention-days", "4000000000"],
            "--episodes-retention-days",
        ),
        (
            &["prune", "--episodes-retention-days", "0"],
            "--episodes-retention-days",
        ),
        (
            &[
                "episodes",
                "list",
                "--merchant",
                "MID001",
                "--limit",
                "100000000000",
            ],
            "--limit",
        ),
        (
            &[
                "episodes",
                "search",
                "--merchant",
                "MID001",
                "-k",
                "9223372036854775807",
                "q",
            ],
            "--top-k",
        ),
        (&["embed", "--batch-size", "0", "hello"], "--batch-size"),
        (&["eval", "locomo", "-k", "1,100000000", "x.json"], "--k"),
        (&["--threads", "10000", "stats"], "--threads"),
        (&["--threads", "0", "stats"], "--threads"),
        (&["--threads=-3", "stats"], "--threads"),
        (
            &[
                "plan",
                "--merchant",
                "MID001",
                "--max-steps",
                "100000000000",
                "t",
            ],
            "--max-steps",
        ),
        (
            &["plan", "--merchant", "MID001", "--concurrency", "0", "t"],
            "--concurrency",
        ),
        (
            &[
                "plan",
                "resume",
                "plan_x",
                "--concurrency",
                "9223372036854775807",
            ],
            "--concurrency",
        ),
        (
            &["plan", "list", "--limit", "99999999999999999999"],
            "--limit",
        ),
        (&["plan", "list", "--limit", "0"], "--limit"),
        (
            &[
                "ask",
                "--merchant",
                "MID001",
                "--max-tool-calls",
                "1000",
                "hi",
            ],
            "--max-tool-calls",
        ),
    ];
    for (args, flag) in cases {
        let out = memex(data, url, args).await;
        assert_no_panic(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: invalid value") && first.contains(flag),
            "{args:?}: {err}"
        );
    }
    // The environment variable is checked the same way.
    let out = memex_env(data, url, &["stats"], &[("MEMEX_THREADS", "10000")]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // Within the bounds, the command runs.
    let out = memex(data, url, &["--threads", "1", "stats"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = memex(data, url, &["plan", "list", "--limit", "10000"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The text of every message a recorded request carried, in order.
fn message_texts(body: &serde_json::Value) -> Vec<String> {
    body["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|x| x["content"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_asks_on_one_session_run_one_after_the_other() {
    let server = FakeOpenAi::start().await;
    let url = server.base_url();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let session = "ses_concurrent_1";
    // The first turn is held up by a 429 asking for 2 s, with the session held.
    server
        .push(Reply::status(429, "slow down").header("Retry-After", "2"))
        .push(Reply::text("first answer"))
        .push(Reply::text("second answer"));
    let first = {
        let (data, url) = (data.clone(), url.clone());
        tokio::spawn(async move {
            memex(
                &data,
                &url,
                &[
                    "ask",
                    "--merchant",
                    "MID001",
                    "--session",
                    session,
                    "--json",
                    "first question",
                ],
            )
            .await
        })
    };
    // Start the second once the first has sent its request (and so holds the session).
    let t0 = std::time::Instant::now();
    while server.request_count() == 0 {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "the first ask never called the model"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let second = memex(
        &data,
        &url,
        &[
            "ask",
            "--merchant",
            "MID001",
            "--session",
            session,
            "--json",
            "second question",
        ],
    )
    .await;
    let first = first.await.unwrap();
    for out in [&first, &second] {
        assert_no_panic(out);
        assert!(!stderr(out).contains("UNIQUE"), "{}", stderr(out));
    }
    let (a, b) = (json_of(&first), json_of(&second));
    assert_eq!(a["answer"], "first answer");
    assert_eq!(b["answer"], "second answer");
    assert_eq!(
        (a["turns"].as_u64(), b["turns"].as_u64()),
        (Some(1), Some(2))
    );
    // The second turn ran after the first had finished: its request carries the whole first
    // exchange, then its own message. Nothing was lost.
    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    let texts = message_texts(&requests[2].body);
    let pos = |needle: &str| texts.iter().position(|t| t == needle);
    let (q1, a1, q2) = (
        pos("first question"),
        pos("first answer"),
        pos("second question"),
    );
    assert!(q1.is_some() && a1.is_some() && q2.is_some(), "{texts:?}");
    assert!(q1 < a1 && a1 < q2, "{texts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_session_twice_saves_one_episode() {
    let server = FakeOpenAi::start().await;
    let url = server.base_url();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    server
        .push(Reply::text("Your payout is on its way."))
        .push(Reply::text(
            "MID001 asked about a payout; it is on its way.",
        ));
    let r = json_of(
        &memex(
            data,
            &url,
            &[
                "ask",
                "--merchant",
                "MID001",
                "--json",
                "where is my payout?",
            ],
        )
        .await,
    );
    let session = r["session"].as_str().unwrap().to_string();
    let count = |out: &Output| json_of(out).as_array().map(Vec::len).unwrap_or(0);
    let list = ["episodes", "list", "--merchant", "MID001", "--json"];
    assert_eq!(count(&memex(data, &url, &list).await), 0);
    let e1 = json_of(&memex(data, &url, &["session", "end", &session, "--json"]).await);
    let e2 = json_of(&memex(data, &url, &["session", "end", &session, "--json"]).await);
    assert_eq!(e1["episode"]["id"], e2["episode"]["id"]);
    assert_eq!(e1["episode"]["summary"], e2["episode"]["summary"]);
    assert_eq!(count(&memex(data, &url, &list).await), 1);
    assert_eq!(
        server.request_count(),
        2,
        "the second end asks the model nothing"
    );
    // A new turn after the end: ending again summarises the session anew.
    server.push(Reply::text("Anything else?")).push(Reply::text(
        "MID001 asked about a payout and then said thanks.",
    ));
    json_of(
        &memex(
            data,
            &url,
            &[
                "ask",
                "--merchant",
                "MID001",
                "--session",
                &session,
                "--json",
                "thanks",
            ],
        )
        .await,
    );
    let e3 = json_of(&memex(data, &url, &["session", "end", &session, "--json"]).await);
    assert_ne!(e3["episode"]["id"], e1["episode"]["id"]);
    assert_eq!(count(&memex(data, &url, &list).await), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_plan_is_refused_and_not_echoed_back() {
    let server = FakeOpenAi::start().await;
    let url = server.base_url();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    // A 3 MB plan of 40 000 invalid steps, then a good one.
    let step = serde_json::json!({"id": "s", "tool": "wire_money", "args": {"to": "x".repeat(40)}});
    let huge = serde_json::json!({"steps": vec![step; 40_000]}).to_string();
    assert!(huge.len() > 2_000_000);
    let good = serde_json::json!({"steps": [
        {"id": "1", "tool": "get_merchant_account", "args": {}}
    ]})
    .to_string();
    server.push(Reply::text(&huge)).push(Reply::text(&good));
    let out = memex(
        data,
        &url,
        &[
            "plan",
            "--merchant",
            "MID001",
            "--dry-run",
            "--json",
            "check my account",
        ],
    )
    .await;
    assert_no_panic(&out);
    let plan = json_of(&out);
    assert_eq!(plan["steps"].as_array().map(Vec::len), Some(1));
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    let correction = requests[1].body.to_string();
    assert!(
        correction.len() < 64 * 1024,
        "{} bytes sent back",
        correction.len()
    );
    assert!(
        correction.contains("bytes long and at most"),
        "{correction}"
    );

    // Many small problems: the correction lists a capped number of them.
    let bad_step = serde_json::json!({"id": "s", "tool": "wire_money", "args": {}});
    let many = serde_json::json!({"steps": vec![bad_step; 500]}).to_string();
    server.push(Reply::text(&many)).push(Reply::text(&huge));
    let out = memex(
        data,
        &url,
        &[
            "plan",
            "--merchant",
            "MID001",
            "--dry-run",
            "check my account",
        ],
    )
    .await;
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("could not produce a valid plan") && err.contains("bytes long"),
        "{err}"
    );
    assert!(err.len() < 4096, "{} bytes of error", err.len());
    let requests = server.requests();
    let correction = requests[3].body.to_string();
    assert!(
        correction.len() < 64 * 1024,
        "{} bytes sent back",
        correction.len()
    );
    assert!(correction.contains("more problem(s)"), "{correction}");
}

/// The first "within N s" figure in `text`.
fn within_seconds(text: &str) -> Option<f64> {
    let rest = &text[text.find("within ")? + "within ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_is_reported_with_the_time_really_waited() {
    let server = FakeOpenAi::start().await;
    server.set_fallback(Reply::Hang);
    let url = server.base_url();
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = memex_env(
        dir.path(),
        &url,
        &["ask", "--merchant", "MID001", "hello"],
        &[
            ("MEMEX_LLM_TIMEOUT", "0.5"),
            ("MEMEX_LLM_RETRY_BUDGET", "3"),
        ],
    )
    .await;
    let wall = started.elapsed().as_secs_f64();
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{err}");
    let said = within_seconds(last).unwrap_or_else(|| panic!("no figure: {err}"));
    let attempts = server.request_count() as f64;
    assert!(attempts >= 2.0, "{err}");
    // The figure covers every attempt, and is no more than the command's own run time.
    assert!(
        said >= 0.5 * attempts - 0.05,
        "said {said} s after {attempts} attempts: {err}"
    );
    assert!(said <= wall + 0.05, "said {said} s, ran {wall:.2} s: {err}");
    assert!(
        err.contains(&format!("after {attempts} attempt(s)")),
        "{err}"
    );

    // A bad timeout setting is a one-line error.
    let out = memex_env(
        dir.path(),
        &url,
        &["ask", "--merchant", "MID001", "hello"],
        &[("MEMEX_LLM_TIMEOUT", "1e20")],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("MEMEX_LLM_TIMEOUT must be"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_comments_do_not_extend_a_streamed_answer_past_its_deadline() {
    use std::io::Write;
    use std::process::Stdio;
    let server = FakeOpenAi::start().await;
    let url = server.base_url();
    let dir = tempfile::tempdir().unwrap();
    // 60 keep-alive comments a quarter second apart (15 s), and never an answer.
    server.push(Reply::Sse {
        events: vec!["\n: keep-alive".to_string(); 60],
        delay: std::time::Duration::from_millis(250),
    });
    server.push(Reply::text("MID001 said hi; the answer timed out."));
    let mut cmd = cli::command(dir.path(), &url, &["chat", "--merchant", "MID001"]);
    cmd.env("MEMEX_LLM_STREAM_TIMEOUT", "2")
        .env("MEMEX_LLM_STREAM_IDLE_TIMEOUT", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("memex chat starts");
        child.stdin.take().unwrap().write_all(b"hi\n").unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let wall = started.elapsed().as_secs_f64();
    assert_no_panic(&out);
    let err = stderr(&out);
    let said = within_seconds(&err).unwrap_or_else(|| panic!("no timeout reported: {err}"));
    assert!((2.0..4.0).contains(&said), "said {said} s: {err}");
    assert!(
        wall < 12.0,
        "chat waited {wall:.1} s for a 2 s deadline: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_audit_create_nothing_and_read_a_read_only_data_dir() {
    let server = FakeOpenAi::start().await;
    let url = server.base_url();
    let dir = tempfile::tempdir().unwrap();

    // No data directory yet: zeros and an empty log, and nothing is created.
    let missing = dir.path().join("not").join("there");
    let s = json_of(&memex(&missing, &url, &["stats", "--json"]).await);
    assert_eq!(s["turns"], 0);
    assert_eq!(s["sessions"], 0);
    let log = json_of(&memex(&missing, &url, &["audit", "--session", "ses_x", "--json"]).await);
    assert_eq!(log, serde_json::json!([]));
    let plans = json_of(&memex(&missing, &url, &["plan", "list", "--json"]).await);
    assert_eq!(plans, serde_json::json!([]));
    let show = memex(&missing, &url, &["plan", "show", "plan_x"]).await;
    assert!(!show.status.success());
    assert!(
        stderr(&show).contains("no plan plan_x"),
        "{}",
        stderr(&show)
    );
    assert!(
        !dir.path().join("not").exists(),
        "a read-only command created directories"
    );

    // A data directory this user cannot write: run as `nobody` (root can write anything).
    let data = dir.path().join("data");
    server.push(Reply::text("hello there"));
    let r = json_of(
        &memex(
            &data,
            &url,
            &["ask", "--merchant", "MID001", "--json", "hi"],
        )
        .await,
    );
    let session = r["session"].as_str().unwrap().to_string();
    let before: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o555)).unwrap();
    let nobody = std::process::Command::new("id")
        .arg("-u")
        .arg("nobody")
        .output();
    let has_nobody = nobody.is_ok_and(|o| o.status.success());
    let setpriv = std::path::Path::new("/usr/bin/setpriv").exists();
    if !(has_nobody && setpriv) {
        eprintln!("SKIPPED the read-only part: no `nobody` user or no /usr/bin/setpriv here");
        return;
    }
    for args in [
        vec!["stats", "--json"],
        vec!["audit", "--session", session.as_str(), "--json"],
    ] {
        let mut cmd = std::process::Command::new("/usr/bin/setpriv");
        cmd.args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_memex"))
            .arg("--data-dir")
            .arg(&data)
            .args(&args)
            .env("MEMEX_LLM_BASE_URL", &url)
            .env_remove("MEMEX_JSON")
            .env_remove("MEMEX_EPISODIC_URL");
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        assert_no_panic(&out);
        let err = stderr(&out);
        assert!(
            !err.contains("unable to open database file"),
            "{args:?}: {err}"
        );
        let v = json_of(&out);
        if args[0] == "stats" {
            assert_eq!(v["turns"], 1, "{v}");
        } else {
            assert!(v.is_array(), "{v}");
        }
    }
    let after: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after);
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
}

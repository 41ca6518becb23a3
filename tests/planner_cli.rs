//! `memex plan` through the real binary against a fake OpenAI-compatible server on loopback:
//! the JSON contract, `--dry-run` then `plan resume`, `plan show`, a paused plan continued by
//! `memex approve`, an invalid plan refused, and a process killed mid-plan resumed.

use crate::support::cli;
use crate::support::fake_openai;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use cli::{command, json_of, memex, TEST_KEY};
use fake_openai::{FakeOpenAi, Reply};
use serde_json::{json, Value};

fn step<'a>(plan: &'a Value, id: &str) -> &'a Value {
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no step {id} in {plan}"))
}

fn dispute_plan() -> String {
    json!({"steps": [
        {"id": "1", "description": "Look up the payment", "tool": "get_transaction",
         "args": {"transaction_id": "pay_ABC123"}, "depends_on": []},
        {"id": "2", "description": "Check the account", "tool": "get_merchant_account",
         "args": {"merchant_id": {"$ref": "1.result.merchant_id"}}, "depends_on": ["1"]},
        {"id": "3", "description": "Settlement policy", "tool": "search_knowledge_base",
         "args": {"query": "settlement timeline T+2"}, "depends_on": []},
        {"id": "4", "description": "Escalate", "tool": "create_support_ticket",
         "args": {"subject": "Settlement missing for pay_ABC123",
                  "description": "Captured 4999 INR on 2026-03-28, not settled.",
                  "priority": "high", "type": "settlement",
                  "transaction_id": {"$ref": "1.result.id"}},
         "depends_on": ["1", "2", "3"]}
    ]})
    .to_string()
}

const TASK: &str = "merchant MID001 says pay_ABC123 was charged but never settled: look up the transaction, check the account, search the settlement policy, and if unresolved open a high-priority ticket";

fn ok_tickets(data: &Path, url: &str, session: &str) -> impl std::future::Future<Output = usize> {
    let data = data.to_path_buf();
    let url = url.to_string();
    let session = session.to_string();
    async move {
        let audit = json_of(&memex(&data, &url, &["audit", "--session", &session, "--json"]).await);
        audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["tool"] == "create_support_ticket" && e["status"] == "ok")
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_dry_run_resume_show_approve_and_errors_through_the_cli() {
    let server = FakeOpenAi::start().await;
    let url = server.base_url();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    json_of(&memex(data, &url, &["init", "--demo", "--json"]).await);

    // --dry-run: planned and stored, nothing executed.
    server.push(Reply::text(&dispute_plan()));
    let planned = json_of(
        &memex(
            data,
            &url,
            &["plan", "--merchant", "MID001", "--json", "--dry-run", TASK],
        )
        .await,
    );
    let plan_id = planned["plan_id"].as_str().unwrap().to_string();
    assert!(plan_id.starts_with("plan_"));
    assert_eq!(planned["steps"].as_array().unwrap().len(), 4);
    for s in planned["steps"].as_array().unwrap() {
        for key in [
            "id",
            "description",
            "tool",
            "args",
            "depends_on",
            "status",
            "attempts",
            "result",
            "error",
        ] {
            assert!(s.get(key).is_some(), "step lacks {key}: {s}");
        }
        assert_eq!(s["status"], "pending");
        assert_eq!(s["attempts"], 0);
    }
    assert_eq!(
        planned["summary"],
        json!({"total": 4, "done": 0, "failed": 0, "skipped": 0, "pending_approval": 0})
    );
    assert_eq!(
        server.request_count(),
        1,
        "a dry run makes only the planning call"
    );
    let planning = server.requests()[0].body.clone();
    assert_eq!(planning["response_format"]["type"], "json_object");
    let session = planned["session"].as_str().unwrap().to_string();
    assert_eq!(ok_tickets(data, &url, &session).await, 0);

    // resume executes it; show reads it back.
    server.push(Reply::text(
        "pay_ABC123 (4999 INR) is captured and not settled yet; ticket opened.",
    ));
    let done = json_of(&memex(data, &url, &["plan", "resume", &plan_id, "--json"]).await);
    assert_eq!(
        done["summary"],
        json!({"total": 4, "done": 4, "failed": 0, "skipped": 0, "pending_approval": 0})
    );
    assert_eq!(step(&done, "2")["args"]["merchant_id"], "MID001");
    assert_eq!(step(&done, "1")["result"]["customer_name"], "Priya Sharma");
    assert!(step(&done, "4")["result"]["ticket_id"]
        .as_str()
        .unwrap()
        .starts_with("tkt_"));
    assert!(done["answer"].as_str().unwrap().contains("pay_ABC123"));
    for s in done["steps"].as_array().unwrap() {
        let (a, b) = (
            s["started_at"].as_str().unwrap(),
            s["finished_at"].as_str().unwrap(),
        );
        assert!(a <= b, "{s}");
    }
    let shown = json_of(&memex(data, &url, &["plan", "show", &plan_id, "--json"]).await);
    assert_eq!(shown, done);
    let text = memex(data, &url, &["plan", "show", &plan_id]).await;
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("[done] 4 create_support_ticket"), "{text}");
    assert_eq!(ok_tickets(data, &url, &session).await, 1);

    // A refund step pauses the plan; `memex approve ACTION` (no --session) continues it.
    server.push(Reply::text(
        &json!({"steps": [
            {"id": "1", "tool": "get_transaction", "args": {"transaction_id": "pay_ABC123"}},
            {"id": "2", "tool": "initiate_refund", "depends_on": ["1"],
             "args": {"transaction_id": {"$ref": "1.result.id"}, "amount": 700, "reason": "duplicate charge"}},
            {"id": "3", "tool": "create_support_ticket", "depends_on": ["2"],
             "args": {"subject": "Refund for pay_ABC123", "description": "Refunded 700 INR for a duplicate charge.", "priority": "low", "type": "refund"}}
        ]})
        .to_string(),
    ));
    let paused = json_of(
        &memex(
            data,
            &url,
            &[
                "plan",
                "--merchant",
                "MID001",
                "--json",
                "refund 700 on pay_ABC123, approved by me",
            ],
        )
        .await,
    );
    assert_eq!(step(&paused, "2")["status"], "pending_approval");
    assert_eq!(step(&paused, "3")["status"], "pending");
    assert_eq!(paused["summary"]["pending_approval"], 1);
    let action = step(&paused, "2")["result"]["action_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(action.starts_with("act_"));
    let refund_session = paused["session"].as_str().unwrap().to_string();

    server.push(Reply::text(
        "Refunded 700 INR on pay_ABC123 and logged a ticket.",
    ));
    let resumed = json_of(&memex(data, &url, &["approve", &action, "--json"]).await);
    assert_eq!(resumed["plan_id"], paused["plan_id"]);
    assert_eq!(step(&resumed, "2")["status"], "done");
    assert_eq!(step(&resumed, "2")["result"]["amount"], 700);
    assert_eq!(step(&resumed, "3")["status"], "done");
    // It also carries the fields of every `approve --json`.
    assert_eq!(resumed["tool_calls"][0]["id"], action.as_str());
    assert_eq!(resumed["tool_calls"][0]["status"], "ok");
    assert!(resumed["pending_action"].is_null() && resumed["escalation"].is_null());
    // A second approval (the session named by the plan's session or by the plan id) runs nothing.
    let again = json_of(
        &memex(
            data,
            &url,
            &["approve", "--session", &refund_session, &action, "--json"],
        )
        .await,
    );
    assert_eq!(again["summary"], resumed["summary"]);
    let plan2 = paused["plan_id"].as_str().unwrap();
    let again = json_of(
        &memex(
            data,
            &url,
            &["approve", "--session", plan2, &action, "--json"],
        )
        .await,
    );
    assert_eq!(again["summary"], resumed["summary"]);
    let wrong = memex(data, &url, &["approve", "--session", "ses_other", &action]).await;
    assert!(
        !wrong.status.success(),
        "an action is only found in its own session"
    );
    let audit = json_of(
        &memex(
            data,
            &url,
            &["audit", "--session", &refund_session, "--json"],
        )
        .await,
    );
    let refunds = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["tool"] == "initiate_refund" && e["status"] == "ok")
        .count();
    assert_eq!(refunds, 1);

    // A rejection, naming the step by plan id and step id: its dependents are skipped.
    server.push(Reply::text(
        &json!({"steps": [
            {"id": "1", "tool": "initiate_refund", "args": {"transaction_id": "pay_ABC123", "amount": 100, "reason": "goodwill"}},
            {"id": "2", "tool": "create_support_ticket", "depends_on": ["1"],
             "args": {"subject": "Goodwill refund logged", "description": "Refunded 100 INR as goodwill.", "priority": "low", "type": "refund"}}
        ]})
        .to_string(),
    ));
    let paused = json_of(
        &memex(
            data,
            &url,
            &["plan", "--merchant", "MID001", "--json", "goodwill refund"],
        )
        .await,
    );
    let plan3 = paused["plan_id"].as_str().unwrap().to_string();
    server.push(Reply::text(
        "The refund was rejected; nothing was refunded.",
    ));
    let rejected =
        json_of(&memex(data, &url, &["reject", "--session", &plan3, "1", "--json"]).await);
    assert_eq!(step(&rejected, "1")["status"], "rejected");
    assert_eq!(step(&rejected, "2")["status"], "skipped");
    assert_eq!(rejected["status"], "completed");
    // A completed plan has no step waiting: naming the plan is a clear error.
    let out = memex(data, &url, &["approve", &plan3]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no step waiting for approval"));

    // Naming the plan alone approves its single waiting step.
    server.push(Reply::text(
        &json!({"steps": [
            {"id": "1", "tool": "initiate_refund", "args": {"transaction_id": "pay_ABC123", "amount": 50, "reason": "late delivery"}}
        ]})
        .to_string(),
    ));
    let paused = json_of(
        &memex(
            data,
            &url,
            &["plan", "--merchant", "MID001", "--json", "refund 50"],
        )
        .await,
    );
    let plan4 = paused["plan_id"].as_str().unwrap().to_string();
    server.push(Reply::text("Refunded 50 INR."));
    let approved = json_of(&memex(data, &url, &["approve", &plan4, "--json"]).await);
    assert_eq!(step(&approved, "1")["status"], "done");
    assert_eq!(step(&approved, "1")["result"]["amount"], 50);

    // Two invalid plans: a clear one-line error, a non-zero exit, nothing executed.
    let bad = json!({"steps": [{"id": "1", "tool": "wire_money", "args": {}}]}).to_string();
    server.push(Reply::text(&bad)).push(Reply::text(&bad));
    let out = memex(
        data,
        &url,
        &["plan", "--merchant", "MID001", "--json", "send money"],
    )
    .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nothing was executed") && err.contains("unknown tool"),
        "{err}"
    );
    assert!(!err.contains(TEST_KEY));

    let out = memex(data, &url, &["plan", "show", "plan_doesnotexist"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no plan plan_doesnotexist"));
    let out = memex(data, &url, &["plan", "--merchant", "MID 001", "x"]).await;
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_plan_resumes_without_a_second_ticket() {
    let server = FakeOpenAi::start().await;
    let url = server.base_url();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    json_of(&memex(data, &url, &["init", "--demo", "--json"]).await);

    // The plan runs; the summary call hangs, and the process is killed there.
    server.push(Reply::text(&dispute_plan())).push(Reply::Hang);
    let mut child = command(
        data,
        &url,
        &["plan", "--merchant", "MID001", "--json", TASK],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let plan_id = loop {
        assert!(
            Instant::now() < deadline,
            "the plan never reached its summary"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        if server.request_count() >= 2 {
            let list = json_of(&memex(data, &url, &["plan", "list", "--json"]).await);
            break list[0]["plan_id"].as_str().unwrap().to_string();
        }
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = json_of(&memex(data, &url, &["plan", "show", &plan_id, "--json"]).await);
    assert_eq!(
        killed["status"], "running",
        "the kill left the plan unfinished"
    );
    assert_eq!(killed["summary"]["done"], 4);
    let session = killed["session"].as_str().unwrap().to_string();
    let ticket = step(&killed, "4")["result"]["ticket_id"].clone();
    // Make it as if the kill had come while the ticket step was running, after its write.
    let db = rusqlite::Connection::open(data.join("agent.db")).unwrap();
    db.execute(
        "UPDATE plan_steps SET status = 'running', result = NULL WHERE plan_id = ?1 AND step_id = '4'",
        [&plan_id],
    )
    .unwrap();
    drop(db);

    // The dead process's hold on the plan is taken over; done steps are not run again; the
    // interrupted ticket step gets its first ticket back, not a second one.
    server.push(Reply::text("Ticket opened for pay_ABC123."));
    let done = json_of(&memex(data, &url, &["plan", "resume", &plan_id, "--json"]).await);
    assert_eq!(done["status"], "completed");
    assert_eq!(done["summary"]["done"], 4);
    for id in ["1", "2", "3"] {
        assert_eq!(step(&done, id)["attempts"], 1, "step {id} ran again");
    }
    assert_eq!(step(&done, "4")["attempts"], 2);
    assert_eq!(step(&done, "4")["result"]["ticket_id"], ticket);
    assert_eq!(step(&done, "4")["result"]["idempotent_replay"], true);
    let again = json_of(&memex(data, &url, &["plan", "resume", &plan_id, "--json"]).await);
    assert_eq!(again, done, "resuming a completed plan changes nothing");
    assert_eq!(
        ok_tickets(data, &url, &session).await,
        2,
        "two calls, one ticket"
    );
}

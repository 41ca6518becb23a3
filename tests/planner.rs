//! The planner with scripted plans over the real payments tools, knowledge base and stores:
//! the seed's dispute task, validation and re-planning, skips, concurrency, references, the
//! approval gate across restarts, crash recovery and the agent's guards on plan steps.

use crate::support::demo;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use demo::{embedder, shared_kb_dir, Flaky};
use memex::agent::{Agent, AgentConfig, AgentParts, AgentStore, Silent};
use memex::conversation::SqliteConversationStore;
use memex::domain::payments::{payments_tools, KbSearch, PaymentsDb, PaymentsDomain};
use memex::kb::KnowledgeBase;
use memex::llm::{ResponseFormat, ScriptedModel};
use memex::merchant::MerchantId;
use memex::planner::{PlanError, PlanReport, PlanStatus, Planner, PlannerConfig, StepStatus};
use memex::tools::{Tool, ToolContext, ToolError, ToolRegistry};
use serde_json::{json, Value};

/// A slow read-only tool that records when each call ran.
struct Slow {
    name: &'static str,
    pause_ms: Arc<AtomicU64>,
    schema: Value,
    spans: Arc<Mutex<Vec<(String, Instant, Instant)>>>,
}

#[async_trait]
impl Tool for Slow {
    fn name(&self) -> &str {
        self.name
    }
    fn description(&self) -> &str {
        "Checks something slowly."
    }
    fn parameters(&self) -> &Value {
        &self.schema
    }
    fn read_only(&self) -> bool {
        true
    }
    async fn call(&self, args: Value, _ctx: &ToolContext) -> Result<Value, ToolError> {
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_millis(self.pause_ms.load(Ordering::SeqCst))).await;
        let label = args["label"].as_str().unwrap_or("").to_string();
        self.spans
            .lock()
            .unwrap()
            .push((label.clone(), t0, Instant::now()));
        Ok(json!({"label": label, "ok": true}))
    }
}

/// An irreversible tool that fails transiently `fail_first` times, then "refunds".
struct FlakyRefund {
    calls: AtomicUsize,
    fail_first: usize,
    keys: Mutex<Vec<String>>,
    schema: Value,
}

#[async_trait]
impl Tool for FlakyRefund {
    fn name(&self) -> &str {
        "flaky_refund"
    }
    fn description(&self) -> &str {
        "Refunds through a flaky gateway."
    }
    fn parameters(&self) -> &Value {
        &self.schema
    }
    fn irreversible(&self) -> bool {
        true
    }
    fn read_only(&self) -> bool {
        false
    }
    async fn call(&self, _args: Value, ctx: &ToolContext) -> Result<Value, ToolError> {
        let key = ctx
            .idempotency_key
            .clone()
            .ok_or_else(|| ToolError::Refused("no approval key".into()))?;
        self.keys.lock().unwrap().push(key);
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n < self.fail_first {
            Err(ToolError::Transient("the refund gateway timed out".into()))
        } else {
            Ok(json!({"refund": "ok"}))
        }
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    model: Arc<ScriptedModel>,
    payments: Arc<PaymentsDb>,
    spans: Arc<Mutex<Vec<(String, Instant, Instant)>>>,
    flaky: Arc<Flaky>,
    very_slow_ms: Arc<AtomicU64>,
    flaky_refund: Arc<FlakyRefund>,
}

impl Fixture {
    fn new() -> Fixture {
        Self::with_flaky(usize::MAX)
    }

    fn with_flaky(fail_first: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let payments = Arc::new(PaymentsDb::open_in_dir(dir.path()).unwrap());
        payments
            .seed_from_file(
                &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/payments/seed.json"),
            )
            .unwrap();
        Fixture {
            dir,
            model: Arc::new(ScriptedModel::new()),
            payments,
            spans: Arc::default(),
            very_slow_ms: Arc::new(AtomicU64::new(30_000)),
            flaky_refund: Arc::new(FlakyRefund {
                calls: AtomicUsize::new(0),
                fail_first: 1,
                keys: Mutex::default(),
                schema: json!({"type": "object", "properties": {"amount": {"type": "integer"}}, "additionalProperties": false}),
            }),
            flaky: Flaky::new(fail_first),
        }
    }

    /// A fresh planner over the same files, as a new process would build it.
    fn planner(&self, config: PlannerConfig) -> Planner {
        let kb = Arc::new(KnowledgeBase::open(shared_kb_dir(), embedder()).unwrap());
        let mut tools = payments_tools(
            Arc::clone(&self.payments),
            Arc::new(KbSearch(Arc::clone(&kb))),
        );
        let slow_schema = json!({
            "type": "object",
            "properties": {"label": {"type": "string"}},
            "required": ["label"],
            "additionalProperties": false,
        });
        let slow_ms = Arc::new(AtomicU64::new(200));
        for (name, ms) in [
            ("slow_check", slow_ms),
            ("very_slow_check", Arc::clone(&self.very_slow_ms)),
        ] {
            tools.push(Arc::new(Slow {
                name,
                pause_ms: ms,
                schema: slow_schema.clone(),
                spans: Arc::clone(&self.spans),
            }) as Arc<dyn Tool>);
        }
        tools.push(Arc::clone(&self.flaky) as Arc<dyn Tool>);
        tools.push(Arc::clone(&self.flaky_refund) as Arc<dyn Tool>);
        let rt = tokio::runtime::Handle::current();
        let episodes = tokio::task::block_in_place(|| {
            rt.block_on(memex::episodic::open(None, self.dir.path()))
        })
        .unwrap();
        let agent = Agent::new(AgentParts {
            model: Arc::clone(&self.model) as _,
            tools: ToolRegistry::with_tools(tools).unwrap(),
            embedder: embedder(),
            kb: Some(kb),
            episodes,
            conversations: Arc::new(SqliteConversationStore::open_in(self.dir.path()).unwrap()),
            store: Arc::new(AgentStore::open_in(self.dir.path()).unwrap()),
            config: AgentConfig::default(),
        })
        .with_domain(Arc::new(PaymentsDomain));
        Planner::new(Arc::new(agent), config).unwrap()
    }

    fn default_planner(&self) -> Planner {
        self.planner(PlannerConfig {
            retry_backoff: Duration::from_millis(5),
            ..PlannerConfig::default()
        })
    }

    fn tickets(&self, merchant: &str) -> usize {
        self.payments.list_tickets(&mid(merchant)).unwrap().len()
    }

    fn refunds(&self, merchant: &str) -> usize {
        self.payments.list_refunds(&mid(merchant)).unwrap().len()
    }

    fn push_plan(&self, plan: Value) {
        self.model.push_text(plan.to_string());
    }
}

fn mid(s: &str) -> MerchantId {
    MerchantId::parse(s).unwrap()
}

fn status(r: &PlanReport, id: &str) -> StepStatus {
    step(r, id).status
}

fn step<'a>(r: &'a PlanReport, id: &str) -> &'a memex::planner::Step {
    r.steps.iter().find(|s| s.id == id).expect("step exists")
}

const DISPUTE: &str = "Merchant MID001 reports that transaction pay_ABC123 was charged to the customer but the merchant did not receive settlement. Look up the transaction, check the account, search the settlement policy, and if unresolved open a high-priority ticket.";

fn dispute_plan() -> Value {
    json!({"steps": [
        {"id": "1", "description": "Look up the payment", "tool": "get_transaction",
         "args": {"transaction_id": "pay_ABC123"}, "depends_on": []},
        {"id": "2", "description": "Check the merchant's account and settlements", "tool": "get_merchant_account",
         "args": {"merchant_id": {"$ref": "1.result.merchant_id"}}, "depends_on": ["1"]},
        {"id": "3", "description": "Find the settlement policy", "tool": "search_knowledge_base",
         "args": {"query": "settlement timeline T+2 delayed settlement"}, "depends_on": []},
        {"id": "4", "description": "Open a high-priority ticket", "tool": "create_support_ticket",
         "args": {"subject": "Settlement missing for pay_ABC123",
                  "description": "Captured payment pay_ABC123 (4999 INR) not settled; account and policy checked.",
                  "priority": "high", "type": "settlement",
                  "transaction_id": {"$ref": "1.result.id"}},
         "depends_on": ["1", "2", "3"]}
    ]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_dispute_task_runs_end_to_end() {
    let f = Fixture::new();
    let planner = f.default_planner();
    f.push_plan(dispute_plan());
    f.model.push_text(
        "pay_ABC123 (4999 INR, captured 2026-03-28) has not settled yet; ticket opened with high priority.",
    );
    let r = planner.run(&mid("MID001"), DISPUTE, &Silent).await.unwrap();
    assert_eq!(r.status, PlanStatus::Completed);
    for id in ["1", "2", "3", "4"] {
        assert_eq!(status(&r, id), StepStatus::Done, "{:?}", step(&r, id));
        assert_eq!(step(&r, id).attempts, 1);
        assert!(step(&r, id).error.is_none());
    }
    assert_eq!(
        (
            r.summary.total,
            r.summary.done,
            r.summary.failed,
            r.summary.skipped,
            r.summary.pending_approval
        ),
        (4, 4, 0, 0, 0)
    );
    assert_eq!(step(&r, "1").result["amount"], 4999);
    assert_eq!(step(&r, "1").result["customer_name"], "Priya Sharma");
    // The references were resolved from step 1's result.
    assert_eq!(step(&r, "2").args, json!({"merchant_id": "MID001"}));
    assert_eq!(step(&r, "2").result["merchant_id"], "MID001");
    assert_eq!(step(&r, "4").args["transaction_id"], "pay_ABC123");
    assert!(step(&r, "3")
        .result
        .to_string()
        .to_lowercase()
        .contains("settle"));
    // Exactly one ticket, for this merchant and payment.
    let tickets = f.payments.list_tickets(&mid("MID001")).unwrap();
    assert_eq!(tickets.len(), 1);
    assert_eq!(tickets[0].transaction_id.as_deref(), Some("pay_ABC123"));
    assert!(r.answer.as_deref().unwrap().contains("pay_ABC123"));
    // One planning call in JSON mode with the tools and memory; one summary call with the results.
    let requests = f.model.requests();
    assert_eq!(requests.len(), 2);
    assert!(matches!(
        requests[0].response_format,
        Some(ResponseFormat::JsonObject)
    ));
    let planning = serde_json::to_string(&requests[0].messages).unwrap();
    for needle in [
        "get_transaction",
        "initiate_refund",
        "$ref",
        "<memory",
        "pay_ABC123",
    ] {
        assert!(planning.contains(needle), "planning prompt lacks {needle}");
    }
    let summary = serde_json::to_string(&requests[1].messages).unwrap();
    assert!(summary.contains("Priya Sharma") && summary.contains("tkt_"));
    // Every step is in the session's audit log, and the plan reads back the same.
    let audit = planner.agent().store().audit_log(&r.session).unwrap();
    assert_eq!(audit.len(), 4);
    assert!(audit
        .iter()
        .all(|e| e.call_id.starts_with(&r.plan_id) && e.status == "ok"));
    assert_eq!(planner.show(&r.plan_id).unwrap(), r);
    let stats = planner.agent().store().stats().unwrap();
    assert_eq!((stats.sessions, stats.turns, stats.tool_calls), (1, 1, 4));
    // The outcome joins the merchant's episodic memory (and only that merchant's).
    let episodes = memex::episodic::open(None, f.dir.path()).await.unwrap();
    let recent = episodes.recent(&mid("MID001"), 5).await.unwrap();
    assert_eq!(recent.len(), 1);
    assert!(recent[0].summary.contains("pay_ABC123"));
    assert_eq!(recent[0].metadata["plan_id"], r.plan_id.as_str());
    assert!(episodes.recent(&mid("MID002"), 5).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_tool_call_times_out_and_is_retried_then_fails() {
    let f = Fixture::new();
    let planner = f.planner(PlannerConfig {
        step_timeout: Duration::from_millis(50),
        max_attempts: 2,
        retry_backoff: Duration::from_millis(1),
        ..PlannerConfig::default()
    });
    f.push_plan(json!({"steps": [
        {"id": "1", "tool": "very_slow_check", "args": {"label": "hung"}},
        {"id": "2", "tool": "get_merchant_account", "args": {}}
    ]}));
    f.model.push_text("the check hung");
    let r = planner.run(&mid("MID001"), "check", &Silent).await.unwrap();
    assert_eq!(status(&r, "1"), StepStatus::Failed);
    assert_eq!(step(&r, "1").attempts, 2);
    assert!(step(&r, "1")
        .error
        .as_deref()
        .unwrap()
        .contains("did not answer"));
    assert_eq!(status(&r, "2"), StepStatus::Done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_and_an_unknown_tool_are_sent_back_and_the_corrected_plan_runs() {
    let f = Fixture::new();
    let planner = f.default_planner();
    f.push_plan(json!({"steps": [
        {"id": "1", "tool": "get_transaction", "args": {"transaction_id": "pay_ABC123"}, "depends_on": ["2"]},
        {"id": "2", "tool": "get_merchant_account", "args": {}, "depends_on": ["1"]},
        {"id": "3", "tool": "check_weather", "args": {"city": "Pune"}, "depends_on": []}
    ]}));
    f.push_plan(json!({"steps": [
        {"id": "1", "tool": "get_transaction", "args": {"transaction_id": "pay_ABC123"}, "depends_on": []},
        {"id": "2", "tool": "get_merchant_account", "args": {}, "depends_on": ["1"]}
    ]}));
    f.model.push_text("Both lookups succeeded.");
    let r = planner
        .run(&mid("MID001"), "check pay_ABC123 and my account", &Silent)
        .await
        .unwrap();
    assert_eq!(r.summary.done, 2);
    let requests = f.model.requests();
    assert_eq!(requests.len(), 3);
    let correction = requests[1]
        .messages
        .last()
        .unwrap()
        .content()
        .unwrap()
        .to_string();
    assert!(correction.contains("cycle"), "{correction}");
    assert!(
        correction.contains("unknown tool \"check_weather\""),
        "{correction}"
    );
    assert!(
        correction.contains("get_transaction"),
        "the available tools are listed: {correction}"
    );
    assert!(matches!(
        requests[1].response_format,
        Some(ResponseFormat::JsonObject)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_invalid_plan_is_a_clear_error_and_nothing_runs() {
    let f = Fixture::new();
    let planner = f.default_planner();
    f.push_plan(json!({"steps": [
        {"id": "1", "tool": "create_support_ticket", "args": {"subject": "x"}, "depends_on": ["1"]}
    ]}));
    f.model.push_text("this is not a plan");
    let err = planner
        .run(&mid("MID001"), "open a ticket", &Silent)
        .await
        .unwrap_err();
    assert!(matches!(err, PlanError::InvalidPlan { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("nothing was executed") && text.contains("not JSON"),
        "{text}"
    );
    let first = f.model.requests()[1]
        .messages
        .last()
        .unwrap()
        .content()
        .unwrap()
        .to_string();
    assert!(first.contains("depends on itself"), "{first}");
    assert!(first.contains("missing required property"), "{first}");
    assert_eq!(f.tickets("MID001"), 0);
    assert_eq!(f.model.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_catches_every_kind_of_bad_plan() {
    let f = Fixture::new();
    let planner = f.default_planner();
    let cases = [
        (json!({"steps": []}), "no steps"),
        (
            json!({"steps": [{"id": "1", "tool": "get_transaction", "args": {"transaction_id": "pay_ABC123"}, "depends_on": ["9"]}]}),
            "not a step of this plan",
        ),
        (
            json!({"steps": [{"id": "1", "tool": "get_transaction", "args": {"transaction_id": "pay_ABC123"}},
                          {"id": "1", "tool": "get_merchant_account", "args": {}}]}),
            "more than one step",
        ),
        (
            json!({"steps": [{"id": "1", "tool": "get_transaction", "args": {"transaction_id": "pay_ABC123"}},
                          {"id": "2", "tool": "get_transaction", "args": {"transaction_id": "pay_ABC123"}}]}),
            "repeats step",
        ),
        (
            json!({"steps": [{"id": "1", "tool": "get_transaction", "args": {"transaction_id": "pay_ABC123"}},
                          {"id": "2", "tool": "get_merchant_account", "args": {"merchant_id": {"$ref": "3.result.merchant_id"}}}]}),
            "not in the plan",
        ),
        (
            json!({"steps": [{"id": "1", "tool": "get_transaction", "args": {"transaction_id": {"$ref": "2.result.id"}}},
                          {"id": "2", "tool": "get_transaction", "args": {"transaction_id": {"$ref": "1.result.id"}}}]}),
            "cycle",
        ),
        (
            json!({"steps": [{"id": "1", "tool": "get_transaction", "args": {"transaction_id": {"$ref": "1.result.id"}}}]}),
            "refers to the step itself",
        ),
        (
            json!({"steps": [{"id": "1", "tool": "get_transaction", "args": {"transaction_id": 42}}]}),
            "invalid arguments for get_transaction",
        ),
        (
            json!({"steps": [{"id": "1", "tool": "get_transaction", "args": {"transaction_id": {"$ref": "one.output"}}}]}),
            "STEP.result",
        ),
        (
            json!({"steps": (1..=13).map(|i| json!({"id": i.to_string(), "tool": "search_knowledge_base", "args": {"query": format!("query {i}")}})).collect::<Vec<_>>()}),
            "the limit is 12",
        ),
        (
            json!({"steps": [{"id": "a.b", "tool": "get_merchant_account", "args": {}}]}),
            "step id must be",
        ),
    ];
    for (plan, needle) in cases {
        f.push_plan(plan.clone());
        f.push_plan(plan.clone());
        let err = planner.create(&mid("MID001"), "do it").await.unwrap_err();
        assert!(err.to_string().contains(needle), "{needle}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ref_to_a_step_not_in_depends_on_makes_it_a_dependency() {
    let f = Fixture::new();
    let planner = f.default_planner();
    // Step 1 refers to step 2 without listing it: step 2 must run first.
    f.push_plan(json!({"steps": [
        {"id": "1", "tool": "get_merchant_account", "args": {"merchant_id": {"$ref": "2.result.merchant_id"}}},
        {"id": "2", "tool": "get_transaction", "args": {"transaction_id": "pay_ABC123"}}
    ]}));
    f.model.push_text("done");
    let r = planner.run(&mid("MID001"), "check", &Silent).await.unwrap();
    assert_eq!(step(&r, "1").depends_on, vec!["2"]);
    assert_eq!(status(&r, "1"), StepStatus::Done);
    assert_eq!(step(&r, "1").args, json!({"merchant_id": "MID001"}));
    assert_eq!(f.model.request_count(), 2, "valid at the first attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_skips_its_dependents_transitively_while_a_sibling_branch_completes() {
    let f = Fixture::new();
    let planner = f.default_planner();
    f.push_plan(json!({"steps": [
        {"id": "1", "tool": "get_transaction", "args": {"transaction_id": "pay_NOPE999"}},
        {"id": "2", "tool": "get_merchant_account", "args": {"merchant_id": {"$ref": "1.result.merchant_id"}}, "depends_on": ["1"]},
        {"id": "3", "tool": "create_support_ticket", "args": {"subject": "Follow-up on the payment", "description": "Check the payment found in step 1.", "priority": "low", "type": "other"}, "depends_on": ["2"]},
        {"id": "4", "tool": "search_knowledge_base", "args": {"query": "refund timelines"}},
        {"id": "5", "tool": "get_transaction", "args": {"transaction_id": "pay_ABC123"}, "depends_on": ["4"]}
    ]}));
    f.model
        .push_text("The payment was not found; the rest is done.");
    let r = planner
        .run(&mid("MID001"), "check pay_NOPE999", &Silent)
        .await
        .unwrap();
    assert_eq!(status(&r, "1"), StepStatus::Failed);
    assert_eq!(step(&r, "1").attempts, 1, "not_found is not retried");
    assert!(step(&r, "1")
        .error
        .as_deref()
        .unwrap()
        .starts_with("not_found"));
    assert_eq!(step(&r, "1").result["error"], "not_found");
    assert_eq!(status(&r, "2"), StepStatus::Skipped);
    assert_eq!(status(&r, "3"), StepStatus::Skipped);
    assert_eq!(step(&r, "3").attempts, 0);
    assert!(step(&r, "3").error.as_deref().unwrap().contains("step 2"));
    assert_eq!(status(&r, "4"), StepStatus::Done);
    assert_eq!(status(&r, "5"), StepStatus::Done);
    assert_eq!(
        (
            r.summary.total,
            r.summary.done,
            r.summary.failed,
            r.summary.skipped
        ),
        (5, 2, 1, 2)
    );
    assert_eq!(r.status, PlanStatus::Completed);
    assert_eq!(f.tickets("MID001"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_with_backoff_then_fail_the_step() {
    let f = Fixture::with_flaky(2);
    let planner = f.default_planner();
    f.push_plan(json!({"steps": [{"id": "1", "tool": "check_gateway_status", "args": {}}]}));
    f.model.push_text("ok");
    let r = planner
        .run(&mid("MID001"), "is the gateway up?", &Silent)
        .await
        .unwrap();
    assert_eq!(status(&r, "1"), StepStatus::Done);
    assert_eq!(step(&r, "1").attempts, 3);

    let f = Fixture::with_flaky(usize::MAX);
    let planner = f.default_planner();
    f.push_plan(json!({"steps": [
        {"id": "1", "tool": "check_gateway_status", "args": {}},
        {"id": "2", "tool": "get_merchant_account", "args": {}, "depends_on": ["1"]}
    ]}));
    f.model.push_text("the gateway check failed");
    let r = planner
        .run(&mid("MID001"), "is the gateway up?", &Silent)
        .await
        .unwrap();
    assert_eq!(status(&r, "1"), StepStatus::Failed);
    assert_eq!(step(&r, "1").attempts, 3);
    assert!(step(&r, "1")
        .error
        .as_deref()
        .unwrap()
        .contains("after 3 attempts"));
    assert_eq!(status(&r, "2"), StepStatus::Skipped);
    assert_eq!(f.flaky.calls(), 3);
    let audit = planner.agent().store().audit_log(&r.session).unwrap();
    assert_eq!(audit.iter().filter(|e| e.status == "error").count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_slow_steps_overlap_in_time() {
    let f = Fixture::new();
    let planner = f.default_planner();
    f.push_plan(json!({"steps": [
        {"id": "a", "tool": "slow_check", "args": {"label": "a"}},
        {"id": "b", "tool": "slow_check", "args": {"label": "b"}},
        {"id": "c", "tool": "get_merchant_account", "args": {}, "depends_on": ["a", "b"]}
    ]}));
    f.model.push_text("done");
    let r = planner
        .run(&mid("MID001"), "check both", &Silent)
        .await
        .unwrap();
    assert_eq!(r.summary.done, 3);
    let spans = f.spans.lock().unwrap().clone();
    assert_eq!(spans.len(), 2);
    let (a, b) = (&spans[0], &spans[1]);
    // Each started before the other finished: they ran at the same time.
    assert!(a.1 < b.2 && b.1 < a.2, "the two slow steps did not overlap");
    // The stored step times say the same.
    let (sa, sb) = (step(&r, "a"), step(&r, "b"));
    let (a0, a1) = (
        sa.started_at.clone().unwrap(),
        sa.finished_at.clone().unwrap(),
    );
    let (b0, b1) = (
        sb.started_at.clone().unwrap(),
        sb.finished_at.clone().unwrap(),
    );
    assert!(a0 < b1 && b0 < a1, "{a0}..{a1} vs {b0}..{b1}");
    assert!(step(&r, "c").started_at.clone().unwrap() >= a1.max(b1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_bound_serialises_steps_when_it_is_one() {
    let f = Fixture::new();
    let planner = f.planner(PlannerConfig {
        max_concurrency: 1,
        ..PlannerConfig::default()
    });
    f.push_plan(json!({"steps": [
        {"id": "a", "tool": "slow_check", "args": {"label": "a"}},
        {"id": "b", "tool": "slow_check", "args": {"label": "b"}}
    ]}));
    f.model.push_text("done");
    planner
        .run(&mid("MID001"), "check both", &Silent)
        .await
        .unwrap();
    let spans = f.spans.lock().unwrap().clone();
    assert!(
        spans[0].2 <= spans[1].1,
        "with one slot the steps must not overlap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_ref_fails_its_step_cleanly_and_a_ref_to_the_same_call_hits_the_cache() {
    let f = Fixture::new();
    let planner = f.default_planner();
    f.push_plan(json!({"steps": [
        {"id": "1", "tool": "get_transaction", "args": {"transaction_id": "pay_ABC123"}},
        {"id": "2", "tool": "get_transaction", "args": {"transaction_id": {"$ref": "1.result.settlement_reference"}}, "depends_on": ["1"]},
        {"id": "3", "tool": "get_merchant_account", "args": {}, "depends_on": ["2"]},
        {"id": "4", "tool": "get_transaction", "args": {"transaction_id": {"$ref": "1.result.id"}}, "depends_on": ["1"]}
    ]}));
    f.model.push_text("done");
    let r = planner
        .run(&mid("MID001"), "look it up", &Silent)
        .await
        .unwrap();
    assert_eq!(status(&r, "2"), StepStatus::Failed);
    let e = step(&r, "2").error.clone().unwrap();
    assert!(
        e.starts_with("unresolved_ref") && e.contains("settlement_reference"),
        "{e}"
    );
    assert_eq!(step(&r, "2").attempts, 0, "the tool was never called");
    assert_eq!(status(&r, "3"), StepStatus::Skipped);
    // Step 4 resolves to step 1's exact call: the read-only cache answers it.
    assert_eq!(status(&r, "4"), StepStatus::Done);
    assert_eq!(step(&r, "4").result, step(&r, "1").result);
    let audit = planner.agent().store().audit_log(&r.session).unwrap();
    assert_eq!(audit.iter().filter(|e| e.status == "cached").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_steps_are_scoped_to_the_plans_merchant() {
    let f = Fixture::new();
    let planner = f.default_planner();
    f.push_plan(json!({"steps": [
        {"id": "1", "tool": "get_transaction", "args": {"transaction_id": "pay_ABC123"}},
        {"id": "2", "tool": "get_merchant_account", "args": {"merchant_id": "MID001"}}
    ]}));
    f.model.push_text("nothing found");
    let r = planner
        .run(&mid("MID002"), "look at MID001's payment", &Silent)
        .await
        .unwrap();
    assert_eq!(status(&r, "1"), StepStatus::Failed);
    assert_eq!(status(&r, "2"), StepStatus::Failed);
    assert!(step(&r, "1")
        .error
        .as_deref()
        .unwrap()
        .starts_with("not_found"));
    assert!(step(&r, "2")
        .error
        .as_deref()
        .unwrap()
        .starts_with("not_found"));
    assert!(!serde_json::to_string(&r).unwrap().contains("Priya Sharma"));
}

fn refund_plan() -> Value {
    json!({"steps": [
        {"id": "1", "tool": "get_transaction", "args": {"transaction_id": "pay_ABC123"}},
        {"id": "2", "description": "Refund the customer", "tool": "initiate_refund",
         "args": {"transaction_id": {"$ref": "1.result.id"}, "amount": 500, "reason": "customer dispute, partial refund"},
         "depends_on": ["1"]},
        {"id": "3", "tool": "create_support_ticket",
         "args": {"subject": "Refund issued for pay_ABC123", "description": "Partial refund of 500 INR after a dispute.", "priority": "low", "type": "refund", "transaction_id": "pay_ABC123"},
         "depends_on": ["2"]},
        {"id": "4", "tool": "search_knowledge_base", "args": {"query": "refund processing time"}}
    ]})
}

/// Runs [`refund_plan`] for MID001 until it waits for approval; the report and the action id.
async fn paused_refund(f: &Fixture, planner: &Planner) -> (PlanReport, String) {
    f.push_plan(refund_plan());
    let r = planner
        .run(&mid("MID001"), "refund 500 of pay_ABC123", &Silent)
        .await
        .unwrap();
    assert_eq!(r.status, PlanStatus::AwaitingApproval);
    let action = r.pending_actions[0].action_id.clone();
    (r, action)
}

/// Runs `statements` (each with the plan id as `?1`) on `agent.db`, leaving the store as a
/// crash at some point would have; returns the connection for further checks.
fn crash_state(f: &Fixture, plan_id: &str, statements: &[&str]) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(f.dir.path().join("agent.db")).unwrap();
    for sql in statements {
        db.execute(sql, [plan_id]).unwrap();
    }
    db
}

/// The store after a kill between writing step 2's approval and linking the step to it.
const UNLINKED_STEP_2: [&str; 2] = [
    "UPDATE plan_steps SET status = 'pending', action_id = NULL, result = NULL WHERE plan_id = ?1 AND step_id = '2'",
    "UPDATE plans SET status = 'running' WHERE id = ?1",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_irreversible_step_pauses_the_plan_and_resumes_after_approval_exactly_once() {
    let f = Fixture::new();
    let planner = f.default_planner();
    f.push_plan(refund_plan());
    let r = planner
        .run(
            &mid("MID001"),
            "refund 500 of pay_ABC123 — I confirm, it is approved",
            &Silent,
        )
        .await
        .unwrap();
    assert_eq!(r.status, PlanStatus::AwaitingApproval);
    assert_eq!(status(&r, "1"), StepStatus::Done);
    assert_eq!(status(&r, "2"), StepStatus::PendingApproval);
    assert_eq!(status(&r, "3"), StepStatus::Pending);
    assert_eq!(
        status(&r, "4"),
        StepStatus::Done,
        "an unrelated branch goes on"
    );
    assert_eq!(r.summary.pending_approval, 1);
    assert_eq!(
        f.refunds("MID001"),
        0,
        "nothing refunded before the approval"
    );
    let action = r.pending_actions[0].action_id.clone();
    assert_eq!(step(&r, "2").result["action_id"], action.as_str());
    assert_eq!(r.pending_actions[0].args["transaction_id"], "pay_ABC123");
    assert_eq!(f.model.request_count(), 1, "no summary while paused");
    drop(planner);

    // A restarted process approves; the plan continues from its stored state.
    let planner = f.default_planner();
    f.model
        .push_text("Refunded 500 INR on pay_ABC123 and logged a ticket.");
    let r = planner.approve(&action, &Silent).await.unwrap();
    assert_eq!(r.status, PlanStatus::Completed);
    assert_eq!(status(&r, "2"), StepStatus::Done);
    assert_eq!(step(&r, "2").attempts, 1);
    assert_eq!(step(&r, "2").result["amount"], 500);
    assert_eq!(status(&r, "3"), StepStatus::Done);
    assert_eq!(step(&r, "1").attempts, 1, "done steps are not run again");
    assert_eq!(f.refunds("MID001"), 1);
    assert_eq!(f.tickets("MID001"), 1);

    // Approving again (or resuming) runs nothing more.
    let again = planner.approve(&action, &Silent).await.unwrap();
    assert_eq!(again.status, PlanStatus::Completed);
    assert_eq!(
        again.answer, r.answer,
        "nothing was re-run or re-summarised"
    );
    planner.resume(&r.plan_id, &Silent).await.unwrap();
    assert_eq!(f.refunds("MID001"), 1);
    assert_eq!(f.tickets("MID001"), 1);
    let audit = planner.agent().store().audit_log(&r.session).unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|e| e.tool == "initiate_refund" && e.status == "ok")
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_step_skips_its_dependents_and_refunds_nothing() {
    let f = Fixture::new();
    let planner = f.default_planner();
    let (_, action) = paused_refund(&f, &planner).await;
    f.model.push_text("The refund was rejected by an operator.");
    let r = planner.reject(&action, &Silent).await.unwrap();
    assert_eq!(r.status, PlanStatus::Completed);
    assert_eq!(status(&r, "2"), StepStatus::Rejected);
    assert_eq!(status(&r, "3"), StepStatus::Skipped);
    assert_eq!(f.refunds("MID001"), 0);
    assert!(
        planner.approve(&action, &Silent).await.is_err(),
        "a rejected action cannot be approved"
    );
    assert_eq!(f.refunds("MID001"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_steps_resumes_without_repeating_side_effects() {
    let f = Fixture::new();
    f.push_plan(json!({"steps": [
        {"id": "1", "tool": "create_support_ticket", "args": {"subject": "First ticket of the plan", "description": "Opened before the crash.", "priority": "low", "type": "other"}},
        {"id": "2", "tool": "very_slow_check", "args": {"label": "x"}, "depends_on": ["1"]},
        {"id": "3", "tool": "create_support_ticket", "args": {"subject": "Second ticket of the plan", "description": "Opened after the resume.", "priority": "low", "type": "other"}, "depends_on": ["2"]}
    ]}));
    let planner = f.default_planner();
    // The "crash": the run is dropped while step 2 is in the middle of its call.
    let cut = tokio::time::timeout(
        Duration::from_millis(1500),
        planner.run(&mid("MID001"), "two tickets", &Silent),
    )
    .await;
    assert!(cut.is_err(), "the run was interrupted");
    drop(planner);
    assert_eq!(f.tickets("MID001"), 1);
    let planner = f.default_planner();
    let plan_id = planner.list(None, 10).unwrap()[0].plan_id.clone();
    let before = planner.show(&plan_id).unwrap();
    assert_eq!(status(&before, "1"), StepStatus::Done);
    assert_eq!(status(&before, "2"), StepStatus::Running);
    assert_eq!(before.status, PlanStatus::Running);

    // The restarted process's tool answers quickly this time.
    f.very_slow_ms.store(10, Ordering::SeqCst);
    f.model.push_text("Both tickets are open.");
    let resumed =
        tokio::time::timeout(Duration::from_secs(60), planner.resume(&plan_id, &Silent)).await;
    let r = resumed.expect("resume finishes").unwrap();
    assert_eq!(r.status, PlanStatus::Completed);
    assert_eq!(step(&r, "1").attempts, 1, "the done step did not run again");
    assert_eq!(step(&r, "2").attempts, 2, "the interrupted step ran again");
    assert_eq!(f.tickets("MID001"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_interrupted_after_its_write_does_not_write_twice() {
    let f = Fixture::new();
    let planner = f.default_planner();
    f.push_plan(json!({"steps": [
        {"id": "1", "tool": "create_support_ticket", "args": {"subject": "Only one ticket, please", "description": "Idempotent across a crash.", "priority": "medium", "type": "other"}}
    ]}));
    f.model.push_text("ticket opened");
    let r = planner
        .run(&mid("MID001"), "open a ticket", &Silent)
        .await
        .unwrap();
    let ticket = step(&r, "1").result["ticket_id"].clone();
    assert_eq!(f.tickets("MID001"), 1);
    // Simulate a kill after the tool committed but before the step was marked done.
    let db = rusqlite::Connection::open(f.dir.path().join("agent.db")).unwrap();
    db.execute(
        "UPDATE plan_steps SET status = 'running', result = NULL WHERE plan_id = ?1",
        [&r.plan_id],
    )
    .unwrap();
    db.execute(
        "UPDATE plans SET status = 'running' WHERE id = ?1",
        [&r.plan_id],
    )
    .unwrap();
    f.model.push_text("ticket opened");
    let r = planner.resume(&r.plan_id, &Silent).await.unwrap();
    assert_eq!(status(&r, "1"), StepStatus::Done);
    assert_eq!(
        step(&r, "1").result["ticket_id"],
        ticket,
        "the same ticket came back"
    );
    assert_eq!(f.tickets("MID001"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_stores_the_plan_and_executes_nothing_until_resumed() {
    let f = Fixture::new();
    let planner = f.default_planner();
    f.push_plan(dispute_plan());
    let r = planner.create(&mid("MID001"), DISPUTE).await.unwrap();
    assert_eq!(r.status, PlanStatus::Planned);
    assert!(r
        .steps
        .iter()
        .all(|s| s.status == StepStatus::Pending && s.attempts == 0));
    assert_eq!(
        step(&r, "2").args,
        json!({"merchant_id": {"$ref": "1.result.merchant_id"}})
    );
    assert_eq!(f.tickets("MID001"), 0);
    f.model.push_text("done");
    let r = planner.resume(&r.plan_id, &Silent).await.unwrap();
    assert_eq!(r.summary.done, 4);
    assert_eq!(f.tickets("MID001"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_or_hung_summary_call_is_replaced_by_a_plain_account() {
    let f = Fixture::new();
    let planner = f.planner(PlannerConfig {
        summary_timeout: Duration::from_millis(200),
        ..PlannerConfig::default()
    });
    let failure = memex::llm::LlmError::Timeout {
        attempts: 3,
        after: Duration::from_secs(30),
    };
    for summary_call in [Err(failure), Ok(())] {
        f.push_plan(json!({"steps": [{"id": "1", "tool": "get_merchant_account", "args": {}}]}));
        match summary_call {
            Err(e) => f.model.push_error(e),
            Ok(()) => f.model.push_hang(),
        };
        let r = planner
            .run(&mid("MID001"), "check my account", &Silent)
            .await
            .unwrap();
        assert_eq!(r.status, PlanStatus::Completed);
        assert!(r.answer.as_deref().unwrap().contains("1 of 1 steps done"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_asking_for_approval_and_recording_it_asks_only_once() {
    let f = Fixture::new();
    let planner = f.default_planner();
    let (r, action) = paused_refund(&f, &planner).await;
    // The kill came after the approval row was written but before the step was linked to it.
    let db = crash_state(&f, &r.plan_id, &UNLINKED_STEP_2);
    // Approving that action finds its plan by the action's call id, and runs it once.
    f.model.push_text("Refunded.");
    let done = planner.approve(&action, &Silent).await.unwrap();
    assert_eq!(status(&done, "2"), StepStatus::Done);
    assert_eq!(step(&done, "2").result["amount"], 500);
    let actions: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM actions WHERE session_id = ?1",
            [&r.session],
            |x| x.get(0),
        )
        .unwrap();
    assert_eq!(actions, 1, "no second approval was asked for");
    assert_eq!(f.refunds("MID001"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_after_that_crash_reuses_the_same_approval() {
    let f = Fixture::new();
    let planner = f.default_planner();
    let (r, action) = paused_refund(&f, &planner).await;
    crash_state(&f, &r.plan_id, &UNLINKED_STEP_2);
    let again = planner.resume(&r.plan_id, &Silent).await.unwrap();
    assert_eq!(again.status, PlanStatus::AwaitingApproval);
    assert_eq!(again.pending_actions.len(), 1);
    assert_eq!(again.pending_actions[0].action_id, action);
    assert_eq!(f.refunds("MID001"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_action_gets_the_steps_retries_with_its_approval_as_key() {
    let f = Fixture::new();
    let planner = f.default_planner();
    f.push_plan(json!({"steps": [{"id": "r", "tool": "flaky_refund", "args": {"amount": 10}}]}));
    let r = planner
        .run(&mid("MID001"), "refund 10", &Silent)
        .await
        .unwrap();
    assert_eq!(status(&r, "r"), StepStatus::PendingApproval);
    assert_eq!(f.flaky_refund.calls.load(Ordering::SeqCst), 0);
    let action = r.pending_actions[0].action_id.clone();
    f.model.push_text("refunded after a retry");
    let r = planner.approve(&action, &Silent).await.unwrap();
    assert_eq!(status(&r, "r"), StepStatus::Done);
    assert_eq!(step(&r, "r").attempts, 2);
    assert_eq!(f.flaky_refund.calls.load(Ordering::SeqCst), 2);
    let keys = f.flaky_refund.keys.lock().unwrap().clone();
    assert_eq!(
        keys,
        vec![action.clone(), action.clone()],
        "every attempt carries the approval id"
    );
    let stored = planner
        .agent()
        .store()
        .action_by_id(&action)
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, memex::agent::ActionStatus::Executed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_racing_approvals_run_the_refund_once() {
    let f = Fixture::new();
    let first = f.default_planner();
    let (_, action) = paused_refund(&f, &first).await;
    let second = f.default_planner();
    f.model.push_text("Refunded.");
    f.model.push_text("Refunded.");
    let (a, b) = tokio::join!(
        first.approve(&action, &Silent),
        second.approve(&action, &Silent)
    );
    assert!(a.is_ok() || b.is_ok(), "{a:?} {b:?}");
    for outcome in [&a, &b] {
        if let Err(e) = outcome {
            assert!(
                matches!(e, PlanError::Busy(_) | PlanError::AlreadyDecided { .. }),
                "{e}"
            );
        }
    }
    assert_eq!(f.refunds("MID001"), 1);
    assert_eq!(f.tickets("MID001"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_skips_dependents_transitively_and_the_agent_path_refuses_plan_actions() {
    let f = Fixture::new();
    let planner = f.default_planner();
    f.push_plan(json!({"steps": [
        {"id": "1", "tool": "initiate_refund", "args": {"transaction_id": "pay_ABC123", "amount": 200, "reason": "damaged goods"}},
        {"id": "2", "tool": "create_support_ticket", "depends_on": ["1"],
         "args": {"subject": "Refund follow-up", "description": "Refund of 200 INR issued.", "priority": "low", "type": "refund"}},
        {"id": "3", "tool": "get_merchant_account", "args": {}, "depends_on": ["2"]},
        {"id": "4", "tool": "get_transaction", "args": {"transaction_id": "pay_ABC123"}}
    ]}));
    let r = planner
        .run(&mid("MID001"), "refund 200", &Silent)
        .await
        .unwrap();
    let action = r.pending_actions[0].action_id.clone();
    // The agent's own approval path does not run a plan's action.
    let err = planner
        .agent()
        .approve(&r.session, &action, &Silent)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("plan step"), "{err}");
    assert_eq!(f.refunds("MID001"), 0);
    f.model.push_text("rejected");
    let r = planner.reject(&action, &Silent).await.unwrap();
    assert_eq!(status(&r, "1"), StepStatus::Rejected);
    assert_eq!(status(&r, "2"), StepStatus::Skipped);
    assert_eq!(status(&r, "3"), StepStatus::Skipped);
    assert_eq!(status(&r, "4"), StepStatus::Done);
    let err = planner.reject(&action, &Silent).await.unwrap_err();
    assert!(err.to_string().contains("already rejected"), "{err}");
    assert_eq!(f.refunds("MID001"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_the_bound_of_steps_run_at_once() {
    let f = Fixture::new();
    let planner = f.planner(PlannerConfig {
        max_concurrency: 2,
        ..PlannerConfig::default()
    });
    let steps: Vec<Value> = ["a", "b", "c", "d"]
        .iter()
        .map(|l| json!({"id": l, "tool": "slow_check", "args": {"label": l}}))
        .collect();
    f.push_plan(json!({ "steps": steps }));
    f.model.push_text("done");
    let r = planner
        .run(&mid("MID001"), "four checks", &Silent)
        .await
        .unwrap();
    assert_eq!(r.summary.done, 4);
    let spans = f.spans.lock().unwrap().clone();
    let most = spans
        .iter()
        .map(|(_, start, _)| {
            spans
                .iter()
                .filter(|(_, s, e)| s <= start && start < e)
                .count()
        })
        .max()
        .unwrap();
    assert_eq!(most, 2, "two at a time, never more, never fewer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_being_executed_is_not_taken_over_unless_its_executor_is_gone() {
    let f = Fixture::new();
    let store = AgentStore::open_in(f.dir.path()).unwrap();
    store.begin_session("ses_x", &mid("MID001")).unwrap();
    let id = store
        .create_action(
            "ses_x",
            &mid("MID001"),
            1,
            "call_1",
            "initiate_refund",
            &json!({}),
        )
        .unwrap();
    assert!(store.claim_execution(&id, "111:a", |_| true).unwrap());
    assert!(
        !store.claim_execution(&id, "222:b", |_| true).unwrap(),
        "a live executor keeps it"
    );
    assert!(
        store.claim_execution(&id, "222:b", |_| false).unwrap(),
        "a dead one is taken over"
    );
    store
        .transition(
            &id,
            &[memex::agent::ActionStatus::Approved],
            memex::agent::ActionStatus::Executed,
            Some(&json!({})),
        )
        .unwrap();
    assert!(
        !store.claim_execution(&id, "333:c", |_| false).unwrap(),
        "executed is final"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_an_approved_refund_ran_is_finished_by_the_resume_with_the_same_key() {
    let f = Fixture::new();
    let planner = f.default_planner();
    f.push_plan(json!({"steps": [{"id": "r", "tool": "flaky_refund", "args": {"amount": 10}}]}));
    let r = planner
        .run(&mid("MID001"), "refund 10", &Silent)
        .await
        .unwrap();
    let action = r.pending_actions[0].action_id.clone();
    // As if a process approved it, started the call and was killed.
    let db = rusqlite::Connection::open(f.dir.path().join("agent.db")).unwrap();
    db.execute(
        "UPDATE actions SET status = 'approved', executor = '2000000000:gone' WHERE id = ?1",
        [&action],
    )
    .unwrap();
    db.execute(
        "UPDATE plan_steps SET status = 'running', attempts = 1 WHERE plan_id = ?1",
        [&r.plan_id],
    )
    .unwrap();
    db.execute(
        "UPDATE plans SET status = 'running' WHERE id = ?1",
        [&r.plan_id],
    )
    .unwrap();
    f.model.push_text("refunded");
    let r = planner.resume(&r.plan_id, &Silent).await.unwrap();
    assert_eq!(status(&r, "r"), StepStatus::Done);
    assert_eq!(r.status, PlanStatus::Completed);
    let keys = f.flaky_refund.keys.lock().unwrap().clone();
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k == &action),
        "{keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_interrupted_before_its_step_was_updated_can_be_repeated() {
    let f = Fixture::new();
    let planner = f.default_planner();
    let (r, action) = paused_refund(&f, &planner).await;
    // The kill came after the rejection was recorded, before the step was.
    crash_state(
        &f,
        &r.plan_id,
        &["UPDATE actions SET status = 'rejected' WHERE id = (SELECT action_id FROM plan_steps WHERE plan_id = ?1 AND step_id = '2')"],
    );
    f.model.push_text("rejected");
    let r = planner.reject(&action, &Silent).await.unwrap();
    assert_eq!(status(&r, "2"), StepStatus::Rejected);
    assert_eq!(status(&r, "3"), StepStatus::Skipped);
    assert!(planner.approve(&action, &Silent).await.is_err());
    assert_eq!(f.refunds("MID001"), 0);
}

#[test]
fn an_agent_store_from_before_the_executor_column_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let db = rusqlite::Connection::open(dir.path().join("agent.db")).unwrap();
    db.execute_batch(
        "CREATE TABLE actions(
            id TEXT PRIMARY KEY, session_id TEXT NOT NULL, merchant_id TEXT NOT NULL,
            turn INTEGER NOT NULL, call_id TEXT NOT NULL, tool TEXT NOT NULL,
            args TEXT NOT NULL, status TEXT NOT NULL, result TEXT,
            created_at TEXT NOT NULL, decided_at TEXT, executed_at TEXT);
         INSERT INTO actions VALUES ('act_old', 'ses_old', 'MID001', 1, 'call_1', 'initiate_refund',
            '{}', 'pending', NULL, '2026-01-01T00:00:00Z', NULL, NULL);",
    )
    .unwrap();
    drop(db);
    let store = AgentStore::open_in(dir.path()).unwrap();
    let old = store.action_by_id("act_old").unwrap().unwrap();
    assert_eq!(old.status, memex::agent::ActionStatus::Pending);
    assert!(store.claim_execution("act_old", "1:a", |_| true).unwrap());
    // Opening again is a no-op.
    AgentStore::open_in(dir.path()).unwrap();
}

/// A process that holds plan `plan_id`'s lock file (`flock(1)`, the same OS lock memex
/// takes; `--no-fork`, so the process holding the lock is the one killed) until it is killed;
/// returned once the lock is held.
fn hold_plan_lock(f: &Fixture, plan_id: &str) -> std::process::Child {
    let locks = memex::agent::runner::LockDir::beside(&f.dir.path().join("agent.db"));
    let path = locks.path("plan", plan_id);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let child = std::process::Command::new("flock")
        .args(["--exclusive", "--no-fork"])
        .arg(&path)
        .args(["sleep", "60"])
        .spawn()
        .expect("flock(1) runs");
    let deadline = Instant::now() + Duration::from_secs(10);
    while locks.try_own("plan", plan_id).unwrap().is_some() {
        assert!(Instant::now() < deadline, "the holder never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_holder_blocks_a_second_runner_and_a_killed_one_is_taken_over_at_once() {
    let f = Fixture::new();
    let planner = f.default_planner();
    f.push_plan(json!({"steps": [{"id": "1", "tool": "get_merchant_account", "args": {}}]}));
    let r = planner
        .create(&mid("MID001"), "look at the account")
        .await
        .unwrap();
    let mut holder = hold_plan_lock(&f, &r.plan_id);
    let err = planner.resume(&r.plan_id, &Silent).await.unwrap_err();
    assert!(matches!(err, PlanError::Busy(_)), "{err}");
    // --force does not run a plan another live process holds either.
    let err = planner
        .resume_forced(&r.plan_id, &Silent)
        .await
        .unwrap_err();
    assert!(matches!(err, PlanError::Busy(_)), "{err}");
    assert_eq!(
        planner.show(&r.plan_id).unwrap().status,
        PlanStatus::Planned
    );
    holder.kill().unwrap(); // SIGKILL: no chance to clean up
    holder.wait().unwrap();
    f.model.push_text("Account checked.");
    let t0 = Instant::now();
    let done = planner.resume(&r.plan_id, &Silent).await.unwrap();
    assert_eq!(done.status, PlanStatus::Completed);
    assert!(t0.elapsed() < Duration::from_secs(10), "taken over at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_pid_now_owned_by_another_process_does_not_block() {
    let f = Fixture::new();
    let planner = f.default_planner();
    f.push_plan(json!({"steps": [{"id": "1", "tool": "get_merchant_account", "args": {}}]}));
    let r = planner
        .create(&mid("MID001"), "look at the account")
        .await
        .unwrap();
    // The store names a runner whose PID is alive — but is some other program (as after a
    // reboot, or PID reuse): it holds no lock, so it owns nothing.
    let mut other = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let db = crash_state(
        &f,
        &r.plan_id,
        &["UPDATE plans SET status = 'running' WHERE id = ?1"],
    );
    db.execute(
        "UPDATE plans SET runner = ?1 WHERE id = ?2",
        rusqlite::params![format!("{}:0123456789abcdef", other.id()), r.plan_id],
    )
    .unwrap();
    drop(db);
    f.model.push_text("Account checked.");
    let done = planner.resume(&r.plan_id, &Silent).await.unwrap();
    assert_eq!(done.status, PlanStatus::Completed);
    other.kill().unwrap();
    other.wait().unwrap();
}

//! One table of cases sent through both call paths — a chat turn (`Agent::ask`) and a plan step
//! (`Planner::run`) — asserting the same outcome for each: the gate (`agent::gate::CallGate`)
//! is the one guarded path, so the paths must not drift apart. Decisions go through the library
//! operation `memex::approvals::decide`, as the CLI and the server do.

use crate::support::demo;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use demo::embedder;
use memex::agent::{ActionStatus, Agent, AgentConfig, AgentParts, AgentStore, Silent};
use memex::approvals::{self, DecisionRequest, Verdict};
use memex::conversation::SqliteConversationStore;
use memex::domain::payments::{
    payments_tools, KnowledgeError, KnowledgeHit, KnowledgeSearch, PaymentsDb, PaymentsDomain,
};
use memex::llm::{ScriptedModel, ToolCall};
use memex::merchant::MerchantId;
use memex::planner::{Planner, PlannerConfig};
use memex::tools::{Tool, ToolContext, ToolError, ToolRegistry};
use serde_json::{json, Value};

struct NoKb;

impl KnowledgeSearch for NoKb {
    fn search(&self, _q: &str, _k: usize) -> Result<Vec<KnowledgeHit>, KnowledgeError> {
        Ok(Vec::new())
    }
}

/// An irreversible tool failing transiently on its first call; records every idempotency key.
struct FlakyRefund {
    calls: AtomicUsize,
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
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
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
    flaky: Arc<FlakyRefund>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Chat,
    Plan,
}

impl Fixture {
    fn new() -> Fixture {
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
            flaky: Arc::new(FlakyRefund {
                calls: AtomicUsize::new(0),
                keys: Mutex::default(),
                schema: json!({"type": "object", "properties": {"amount": {"type": "integer"}}, "additionalProperties": false}),
            }),
        }
    }

    /// A planner (and its agent) over the fixture's files, as a new process would build it;
    /// without `flaky_refund` when `with_flaky` is false.
    async fn planner(&self, with_flaky: bool) -> Planner {
        let mut tools = payments_tools(Arc::clone(&self.payments), Arc::new(NoKb));
        if with_flaky {
            tools.push(Arc::clone(&self.flaky) as Arc<dyn Tool>);
        }
        let config = AgentConfig {
            tool_retry_backoff: std::time::Duration::from_millis(5),
            action_policy: memex::agent::CallPolicy {
                backoff: std::time::Duration::from_millis(5),
                ..Default::default()
            },
            ..AgentConfig::default()
        };
        let agent = Agent::new(AgentParts {
            model: Arc::clone(&self.model) as _,
            tools: ToolRegistry::with_tools(tools).unwrap(),
            embedder: embedder(),
            kb: None,
            episodes: memex::episodic::open(None, self.dir.path()).await.unwrap(),
            conversations: Arc::new(SqliteConversationStore::open_in(self.dir.path()).unwrap()),
            store: Arc::new(AgentStore::open_in(self.dir.path()).unwrap()),
            config,
        })
        .with_domain(Arc::new(PaymentsDomain));
        Planner::new(
            Arc::new(agent),
            PlannerConfig {
                retry_backoff: std::time::Duration::from_millis(5),
                use_memory: false,
                save_episode: false,
                ..PlannerConfig::default()
            },
        )
        .unwrap()
    }

    /// Sends `calls` (tool, args) through `path` for `merchant`: one chat turn calling them in
    /// order, or one plan with a step per call (each depending on the one before). Returns the
    /// session.
    async fn send(
        &self,
        planner: &Planner,
        path: Path,
        merchant: &str,
        calls: &[(&str, Value)],
    ) -> String {
        let merchant = MerchantId::parse(merchant).unwrap();
        match path {
            Path::Chat => {
                for (i, (tool, args)) in calls.iter().enumerate() {
                    self.model.push_tool_calls(vec![ToolCall::new(
                        format!("c{i}"),
                        *tool,
                        args.to_string(),
                    )]);
                }
                self.model.push_text("Done.");
                let session = Agent::new_session_id();
                planner
                    .agent()
                    .ask(&merchant, &session, "please help", &Silent)
                    .await
                    .unwrap();
                session
            }
            Path::Plan => {
                let steps: Vec<Value> = calls
                    .iter()
                    .enumerate()
                    .map(|(i, (tool, args))| {
                        let deps: Vec<String> = if i == 0 {
                            vec![]
                        } else {
                            vec![format!("s{}", i - 1)]
                        };
                        json!({"id": format!("s{i}"), "tool": tool, "args": args, "depends_on": deps})
                    })
                    .collect();
                self.model.push_text(json!({ "steps": steps }).to_string());
                self.model.push_text("Summary.");
                planner
                    .run(&merchant, "please help", &Silent)
                    .await
                    .unwrap()
                    .session
            }
        }
    }

    /// The audit statuses of `tool`'s calls in `session`, in order.
    fn statuses(&self, planner: &Planner, session: &str, tool: &str) -> Vec<String> {
        planner
            .agent()
            .store()
            .audit_log(session)
            .unwrap()
            .into_iter()
            .filter(|e| e.tool == tool)
            .map(|e| e.status)
            .collect()
    }

    fn refunds(&self, merchant: &str) -> usize {
        self.payments
            .list_refunds(&MerchantId::parse(merchant).unwrap())
            .unwrap()
            .len()
    }

    fn tickets(&self, merchant: &str) -> usize {
        self.payments
            .list_tickets(&MerchantId::parse(merchant).unwrap())
            .unwrap()
            .len()
    }

    /// The one action of `session`.
    fn action(&self, planner: &Planner, session: &str) -> memex::agent::PendingAction {
        let db = rusqlite::Connection::open(self.dir.path().join("agent.db")).unwrap();
        let id: String = db
            .query_row(
                "SELECT id FROM actions WHERE session_id = ?1",
                [session],
                |r| r.get(0),
            )
            .unwrap();
        planner.agent().store().action_by_id(&id).unwrap().unwrap()
    }
}

fn refund_args() -> Value {
    json!({"transaction_id": "pay_ABC123", "amount": 100, "reason": "customer asked for a refund"})
}

fn decision(id: &str) -> DecisionRequest {
    DecisionRequest {
        action: id.to_string(),
        session: None,
    }
}

/// What a case observed, compared across the two paths.
#[derive(Debug, PartialEq)]
struct Observed {
    statuses: Vec<String>,
    action: Option<ActionStatus>,
    refunds: usize,
    tickets: usize,
    tool_calls: usize,
    keys_are_the_action: bool,
}

async fn case(name: &str, path: Path) -> Observed {
    let f = Fixture::new();
    let planner = f.planner(true).await;
    let mut action = None;
    let (session, tool) = match name {
        "held" | "reject" | "approve_twice" => {
            let s = f
                .send(
                    &planner,
                    path,
                    "MID001",
                    &[("initiate_refund", refund_args())],
                )
                .await;
            let act = f.action(&planner, &s);
            if name == "reject" {
                f.model.push_text("Rejected.");
                approvals::decide(&planner, &decision(&act.id), Verdict::Reject, &Silent)
                    .await
                    .unwrap();
            }
            if name == "approve_twice" {
                f.model.push_text("Refunded.");
                f.model.push_text("Refunded.");
                let other = f.planner(true).await;
                let req = decision(&act.id);
                let (a, b) = tokio::join!(
                    approvals::decide(&planner, &req, Verdict::Approve, &Silent),
                    approvals::decide(&other, &req, Verdict::Approve, &Silent)
                );
                assert!(a.is_ok() || b.is_ok(), "{name} {path:?}: {a:?} {b:?}");
            }
            action = Some(act.id);
            (s, "initiate_refund")
        }
        "flaky_retried" | "missing_tool" => {
            let s = f
                .send(
                    &planner,
                    path,
                    "MID001",
                    &[("flaky_refund", json!({"amount": 10}))],
                )
                .await;
            let act = f.action(&planner, &s);
            f.model.push_text("Done.");
            let decider = f.planner(name == "flaky_retried").await;
            let d = approvals::decide(&decider, &decision(&act.id), Verdict::Approve, &Silent)
                .await
                .unwrap();
            if name == "missing_tool" {
                assert!(d.failed(), "{path:?}: {:?}", d.action);
                let msg = d.action.result.clone().unwrap_or_default().to_string();
                assert!(msg.contains("no longer registered"), "{msg}");
            }
            action = Some(act.id);
            (s, "flaky_refund")
        }
        "loop_guard" => {
            let ticket = json!({"subject": "Settlement question", "description": "Where is my settlement?", "priority": "low", "type": "settlement"});
            // A plan's draft may not repeat a call (validation), so the repeat comes from a
            // `$ref` that resolves to the same subject at run time.
            let mut again = ticket.clone();
            if path == Path::Plan {
                again["subject"] = json!({"$ref": "s0.result.subject"});
            }
            let s = f
                .send(
                    &planner,
                    path,
                    "MID001",
                    &[
                        ("create_support_ticket", ticket),
                        ("create_support_ticket", again),
                    ],
                )
                .await;
            (s, "create_support_ticket")
        }
        "schema_error" => {
            // A plan's draft is validated before it runs, so the bad value comes from a `$ref`
            // resolved at run time (the account's balance, a number, as a transaction id).
            let s = match path {
                Path::Chat => {
                    f.send(
                        &planner,
                        path,
                        "MID001",
                        &[("get_transaction", json!({"transaction_id": 42}))],
                    )
                    .await
                }
                Path::Plan => {
                    f.send(
                        &planner,
                        path,
                        "MID001",
                        &[
                            ("get_merchant_account", json!({})),
                            (
                                "get_transaction",
                                json!({"transaction_id": {"$ref": "s0.result.balance"}}),
                            ),
                        ],
                    )
                    .await
                }
            };
            (s, "get_transaction")
        }
        "cross_merchant" => {
            let s = f
                .send(
                    &planner,
                    path,
                    "MID002",
                    &[("get_transaction", json!({"transaction_id": "pay_ABC123"}))],
                )
                .await;
            (s, "get_transaction")
        }
        other => panic!("no case {other}"),
    };
    let action_status = action.as_ref().map(|id| {
        planner
            .agent()
            .store()
            .action_by_id(id)
            .unwrap()
            .unwrap()
            .status
    });
    let keys = f.flaky.keys.lock().unwrap().clone();
    Observed {
        statuses: f.statuses(&planner, &session, tool),
        action: action_status,
        refunds: f.refunds("MID001"),
        tickets: f.tickets("MID001"),
        tool_calls: f.flaky.calls.load(Ordering::SeqCst),
        keys_are_the_action: keys.iter().all(|k| Some(k) == action.as_ref()),
    }
}

/// (case, audit statuses of its tool, action status, refunds, tickets, runs of `flaky_refund`)
type Row = (
    &'static str,
    Vec<String>,
    Option<ActionStatus>,
    usize,
    usize,
    usize,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_has_the_same_outcome_through_chat_and_plan() {
    use ActionStatus::*;
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let table: Vec<Row> = vec![
        ("held", s(&["pending_approval"]), Some(Pending), 0, 0, 0),
        (
            "approve_twice",
            s(&["pending_approval", "ok"]),
            Some(Executed),
            1,
            0,
            0,
        ),
        (
            "flaky_retried",
            s(&["pending_approval", "error", "ok"]),
            Some(Executed),
            0,
            0,
            2,
        ),
        (
            "missing_tool",
            s(&["pending_approval", "error"]),
            Some(Failed),
            0,
            0,
            0,
        ),
        (
            "reject",
            s(&["pending_approval", "rejected"]),
            Some(Rejected),
            0,
            0,
            0,
        ),
        ("loop_guard", s(&["ok", "loop_detected"]), None, 0, 1, 0),
        ("schema_error", s(&["invalid_args"]), None, 0, 0, 0),
        ("cross_merchant", s(&["error"]), None, 0, 0, 0),
    ];
    for (name, statuses, action, refunds, tickets, runs) in table {
        let expected = Observed {
            statuses,
            action,
            refunds,
            tickets,
            tool_calls: runs,
            keys_are_the_action: true,
        };
        let chat = case(name, Path::Chat).await;
        let plan = case(name, Path::Plan).await;
        assert_eq!(chat, expected, "case {name} through chat");
        assert_eq!(plan, expected, "case {name} through a plan");
    }
}

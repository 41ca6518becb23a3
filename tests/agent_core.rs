//! The agent core without the payments demo: a second domain defined only here (a library
//! desk: two small tools, its own rules and escalation) runs agent turns end to end, proving the
//! core is domain-free; and the per-session result cache stays bounded over 10,000 sessions.

use crate::support::demo;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use demo::embedder;
use memex::agent::{
    Agent, AgentConfig, AgentParts, AgentStore, CacheBounds, CallGate, CallOutcome, CallPolicy,
    CallRequest, Domain, EscalationCall, EscalationCase, NoHook, NoLoopGuard, Silent,
};
use memex::conversation::SqliteConversationStore;
use memex::llm::{ScriptedModel, ToolCall};
use memex::merchant::MerchantId;
use memex::tools::{Tool, ToolContext, ToolError, ToolRegistry};
use serde_json::{json, Value};

/// `find_book`: read-only lookup of a title, scoped to the caller (the merchant is the branch).
struct FindBook {
    schema: Value,
    calls: AtomicUsize,
}

#[async_trait]
impl Tool for FindBook {
    fn name(&self) -> &str {
        "find_book"
    }
    fn description(&self) -> &str {
        "Finds a book by title in this branch's catalogue."
    }
    fn parameters(&self) -> &Value {
        &self.schema
    }
    fn read_only(&self) -> bool {
        true
    }
    async fn call(&self, args: Value, ctx: &ToolContext) -> Result<Value, ToolError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let title = args["title"].as_str().unwrap_or_default();
        Ok(json!({"title": title, "branch": ctx.merchant.as_str(), "on_shelf": 2}))
    }
}

/// `page_librarian`: the library's escalation, a write that returns a page id.
struct PageLibrarian {
    schema: Value,
    pages: std::sync::Mutex<Vec<Value>>,
}

#[async_trait]
impl Tool for PageLibrarian {
    fn name(&self) -> &str {
        "page_librarian"
    }
    fn description(&self) -> &str {
        "Pages a human librarian."
    }
    fn parameters(&self) -> &Value {
        &self.schema
    }
    fn read_only(&self) -> bool {
        false
    }
    async fn call(&self, args: Value, _ctx: &ToolContext) -> Result<Value, ToolError> {
        let mut pages = self.pages.lock().unwrap();
        pages.push(args);
        Ok(json!({"page": format!("page_{}", pages.len())}))
    }
}

/// The library desk: its rules and its escalation.
struct Library;

impl Domain for Library {
    fn rules(&self, merchant: &MerchantId) -> String {
        format!("You are the reference desk of library branch {merchant}. Quote shelf counts.")
    }
    fn escalation(&self, case: &EscalationCase<'_>) -> Option<EscalationCall> {
        Some(EscalationCall {
            tool: "page_librarian".into(),
            args: json!({"why": case.reason}),
        })
    }
    fn escalation_ref(&self, result: &Value) -> Option<String> {
        result["page"].as_str().map(str::to_string)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_defined_only_in_tests_runs_a_turn_and_escalates_its_own_way() {
    let dir = tempfile::tempdir().unwrap();
    let find = Arc::new(FindBook {
        schema: json!({"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"], "additionalProperties": false}),
        calls: AtomicUsize::new(0),
    });
    let page = Arc::new(PageLibrarian {
        schema: json!({"type": "object", "properties": {"why": {"type": "string"}}, "required": ["why"], "additionalProperties": false}),
        pages: Default::default(),
    });
    let model = Arc::new(ScriptedModel::new());
    let agent = Agent::new(AgentParts {
        model: Arc::clone(&model) as _,
        tools: ToolRegistry::with_tools(vec![
            Arc::clone(&find) as Arc<dyn Tool>,
            Arc::clone(&page) as Arc<dyn Tool>,
        ])
        .unwrap(),
        embedder: embedder(),
        kb: None,
        episodes: memex::episodic::open(None, dir.path()).await.unwrap(),
        conversations: Arc::new(SqliteConversationStore::open_in(dir.path()).unwrap()),
        store: Arc::new(AgentStore::open_in(dir.path()).unwrap()),
        config: AgentConfig {
            max_tool_calls: 1,
            ..AgentConfig::default()
        },
    })
    .with_domain(Arc::new(Library));
    let branch = MerchantId::parse("BR001").unwrap();
    // A server spawns turns on its runtime: the turn's future must be `Send`.
    fn assert_send<T: Send>(t: T) -> T {
        t
    }

    // A turn that answers from a tool result.
    model
        .push_tool_calls(vec![ToolCall::new(
            "c1",
            "find_book",
            json!({"title": "Dune"}).to_string(),
        )])
        .push_text("Two copies of Dune are on the shelf.");
    let r = assert_send(agent.ask(&branch, "s-lib", "is Dune in?", &Silent))
        .await
        .unwrap();
    assert_eq!(r.tool_calls[0].status, "ok");
    assert_eq!(r.tool_calls[0].result["branch"], "BR001");
    assert_eq!(r.answer, "Two copies of Dune are on the shelf.");
    let request = model.last_request().unwrap();
    let system = request.messages[0]
        .content()
        .unwrap_or_default()
        .to_string();
    assert!(
        system.contains("reference desk of library branch BR001"),
        "{system}"
    );
    assert!(
        !system.contains("refund"),
        "no payments rules leak in: {system}"
    );

    // A turn over its tool cap escalates through the domain's own escalation call.
    model.push_tool_calls(vec![
        ToolCall::new("c2", "find_book", json!({"title": "Emma"}).to_string()),
        ToolCall::new("c3", "find_book", json!({"title": "Ulysses"}).to_string()),
    ]);
    let r = agent
        .ask(&branch, "s-lib", "find two books", &Silent)
        .await
        .unwrap();
    let escalation = r.escalation.expect("escalated");
    assert_eq!(escalation.ticket_id, "page_1");
    assert_eq!(page.pages.lock().unwrap().len(), 1);
    assert!(r.answer.contains("page_1"), "{}", r.answer);
    assert_eq!(find.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_sessions_keep_the_result_cache_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let find = Arc::new(FindBook {
        schema: json!({"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"], "additionalProperties": false}),
        calls: AtomicUsize::new(0),
    });
    let bounds = CacheBounds {
        max_sessions: 500,
        max_entries_per_session: 4,
        ttl: std::time::Duration::from_secs(3600),
    };
    let gate = CallGate::new(
        ToolRegistry::with_tools(vec![Arc::clone(&find) as Arc<dyn Tool>]).unwrap(),
        Arc::new(AgentStore::open_in(dir.path()).unwrap()),
        bounds,
        (1e9, 1e9),
        CallPolicy::default(),
    );
    let branch = MerchantId::parse("BR001").unwrap();
    let policy = CallPolicy::default();
    let raw = json!({"title": "Dune"}).to_string();
    let mut most = 0;
    for i in 0..10_000 {
        let session = format!("ses_{i}");
        let req = CallRequest {
            merchant: &branch,
            session: &session,
            turn: 1,
            call_id: "c1",
            tool: "find_book",
            raw_args: &raw,
            idempotency_key: None,
            policy: &policy,
            model: None,
        };
        let r = gate
            .call(&req, &mut NoLoopGuard, &NoHook, &Silent)
            .await
            .unwrap();
        assert!(matches!(r.outcome, CallOutcome::Ok(_)), "{:?}", r.outcome);
        if i % 1000 == 999 {
            most = most.max(gate.cached_sessions());
        }
    }
    let now = gate.cached_sessions();
    assert!(now <= bounds.max_sessions, "{now} sessions cached");
    assert!(
        most <= bounds.max_sessions,
        "{most} sessions cached at a peak"
    );
    assert!(now > 0, "the cache is used at all");
    // The cache still serves: the same call in a recent session is a hit.
    let session = "ses_9999".to_string();
    let req = CallRequest {
        merchant: &branch,
        session: &session,
        turn: 2,
        call_id: "c2",
        tool: "find_book",
        raw_args: &raw,
        idempotency_key: None,
        policy: &policy,
        model: None,
    };
    let r = gate
        .call(&req, &mut NoLoopGuard, &NoHook, &Silent)
        .await
        .unwrap();
    assert_eq!(r.outcome.status(), "cached");
    assert_eq!(find.calls.load(Ordering::SeqCst), 10_000);
    assert_eq!(gate.metrics().calls, 10_001);
}

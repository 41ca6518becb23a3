//! The MCP server handler: lists memex's tools with their schemas and annotations and runs
//! them for one merchant. Irreversible tools never run here: they become pending actions in
//! the agent store, for a human to approve (`memex approve ACTION_ID`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, CallToolResult, DiscoverResult,
    Implementation, InitializeRequestParams, InitializeResult, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool as McpTool, ToolAnnotations,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData, ServerHandler};
use serde_json::{json, Value};

use crate::agent::gate::{CallGate, CallOutcome, CallPolicy, CallRequest, LoopGuard, NoHook};
use crate::agent::guards::call_key;
use crate::agent::Silent;
use crate::merchant::MerchantId;
use crate::tools::Tool;

/// The merchant a request acts for, as the HTTP layer decided it (from the bearer key); put in
/// the request's extensions by [`McpHttpService`](super::http::McpHttpService).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpMerchant(pub MerchantId);

/// Where a handler's merchant comes from.
#[derive(Clone)]
pub(crate) enum Scope {
    /// One merchant for the whole connection (`memex mcp --merchant MID`).
    Fixed(MerchantId),
    /// Per request, from the [`McpMerchant`] the HTTP layer put in the request's extensions
    /// (decided by the bearer key).
    PerRequest,
}

/// What one MCP session remembers: its agent session (`mcp_…`, registered for its merchant on
/// first use), the merchant it is bound to, and the writes it made recently (its loop guard).
pub(crate) struct SessionState {
    session: String,
    bound: Mutex<Option<MerchantId>>,
    writes: moka::sync::Cache<String, Value>,
}

impl SessionState {
    pub(crate) fn new() -> Self {
        SessionState {
            session: format!("mcp_{}", uuid::Uuid::new_v4().simple()),
            bound: Mutex::new(None),
            writes: moka::sync::Cache::builder()
                .max_capacity(WRITE_MEMORY_ENTRIES)
                .time_to_live(WRITE_MEMORY)
                .build(),
        }
    }
}

/// The state of session-less (2026-07-28) requests over HTTP, one per merchant: such a request
/// names no session, so each merchant's calls share one agent session and one loop guard in
/// this process. Bounded; an idle merchant's entry goes after an hour.
pub(crate) type StatelessStates = moka::sync::Cache<String, Arc<SessionState>>;

/// A new [`StatelessStates`].
pub(crate) fn stateless_states() -> StatelessStates {
    moka::sync::Cache::builder()
        .max_capacity(10_000)
        .time_to_idle(Duration::from_secs(3600))
        .build()
}

/// The handler of one MCP connection (a stdio process, one handshake-era streamable-HTTP
/// session, or one session-less HTTP request): the guarded call path over the MCP tools, and
/// the session state its calls are recorded under.
pub struct MemexMcp {
    /// The guarded call path, over the MCP registry (shared by every connection).
    gate: Arc<CallGate>,
    /// How each call is attempted (the agent's chat-call policy: no wait for a rate limit).
    policy: CallPolicy,
    scope: Scope,
    /// This connection's own state (stdio, handshake-era sessions).
    own: Arc<SessionState>,
    /// Per-merchant state of session-less requests (shared by every handler of the process).
    stateless: StatelessStates,
}

impl MemexMcp {
    pub(crate) fn new(
        gate: Arc<CallGate>,
        policy: CallPolicy,
        scope: Scope,
        stateless: StatelessStates,
    ) -> Self {
        MemexMcp {
            gate,
            policy,
            scope,
            own: Arc::new(SessionState::new()),
            stateless,
        }
    }

    /// The agent session id of this connection (`mcp_…`).
    pub fn session_id(&self) -> &str {
        &self.own.session
    }

    /// The merchant of this request and the session state it is recorded under; binds the
    /// state to the merchant on first use. A handshake-era HTTP session, or a stdio process,
    /// keeps its own state; a session-less (2026-07-28) HTTP request uses its merchant's.
    fn scoped(
        &self,
        ctx: &RequestContext<RoleServer>,
        opening: bool,
    ) -> Result<(MerchantId, Arc<SessionState>, bool), ErrorData> {
        let merchant = match &self.scope {
            Scope::Fixed(m) => m.clone(),
            Scope::PerRequest => ctx
                .extensions
                .get::<http::request::Parts>()
                .and_then(|p| p.extensions.get::<McpMerchant>())
                .map(|m| m.0.clone())
                .ok_or_else(|| {
                    ErrorData::invalid_request("this request carries no valid key", None)
                })?,
        };
        // Session-less: an HTTP request that names no MCP session (whatever revision its
        // `_meta` selects); its handler lives for this request only.
        let sessionless = matches!(self.scope, Scope::PerRequest)
            && !opening
            && ctx
                .extensions
                .get::<http::request::Parts>()
                .is_some_and(|p| !p.headers.contains_key("mcp-session-id"));
        let state = if sessionless {
            self.stateless.get_with(merchant.as_str().to_string(), || {
                Arc::new(SessionState::new())
            })
        } else {
            Arc::clone(&self.own)
        };
        let mut bound = state
            .bound
            .lock()
            .map_err(|_| ErrorData::internal_error("the session state is unusable", None))?;
        match bound.as_ref() {
            Some(b) if *b != merchant => {
                return Err(ErrorData::invalid_request(
                    "this MCP session belongs to another merchant; start a new session",
                    None,
                ))
            }
            Some(_) => {}
            None => {
                self.gate
                    .store()
                    .begin_session(&state.session, &merchant)
                    .map_err(|e| {
                        tracing::error!(session = %state.session, error = %e, "cannot start an MCP session");
                        ErrorData::internal_error("cannot start the session; try again later", None)
                    })?;
                *bound = Some(merchant.clone());
            }
        }
        drop(bound);
        Ok((merchant, state, sessionless))
    }

    /// Runs one call through the gate (validation, merchant scope, this connection's loop guard,
    /// the approval gate, the shared cache and rate limits, timeout and retries, audit rows,
    /// metrics) and turns its outcome into an MCP tool result.
    ///
    /// `in_session`: the call belongs to an MCP session (stdio, or a handshake-era HTTP
    /// session), whose repeated writes the loop guard and the idempotency key collapse. A
    /// session-less request stands alone: it gets neither (the same ticket filed next week is a
    /// new ticket), but every other guard.
    async fn run(
        &self,
        merchant: &MerchantId,
        state: &SessionState,
        in_session: bool,
        call_id: &str,
        name: &str,
        args: &Value,
    ) -> Result<CallToolResult, ErrorData> {
        let read_only = self.gate.tools().get(name).is_some_and(|t| t.read_only());
        let alone = moka::sync::Cache::new(0);
        let seen = if in_session { &state.writes } else { &alone };
        let raw = args.to_string();
        let req = CallRequest {
            merchant,
            session: &state.session,
            turn: 1,
            call_id,
            tool: name,
            raw_args: &raw,
            // A write repeated on this connection is the same write: the tool sees the same key
            // (a payments ticket is created once), whatever the loop guard's window.
            idempotency_key: (in_session && !read_only)
                .then(|| idempotency_key(&state.session, name, args)),
            policy: &self.policy,
            model: None,
        };
        let mut guard = ConnectionGuard { seen, read_only };
        let done = self
            .gate
            .call(&req, &mut guard, &NoHook, &Silent)
            .await
            .map_err(|e| {
                // The detail (a store's host, a path) is for the log, not for the client.
                tracing::error!(session = %state.session, tool = name, error = %e, "an MCP call failed");
                ErrorData::internal_error("the call could not be completed; try again later", None)
            })?;
        Ok(match done.outcome {
            CallOutcome::Ok(v) | CallOutcome::Cached(v) => CallToolResult::structured(v),
            CallOutcome::PendingApproval { action_id } => CallToolResult::structured(json!({
                "status": "pending_approval",
                "action_id": action_id,
                "tool": name,
                "args": done.args,
                "session": state.session,
                "message": format!("NOT executed. This irreversible action waits for a human to approve it (memex approve {action_id}); it is never run from MCP."),
            })),
            other => CallToolResult::structured_error(error_shape(other.result())),
        })
    }
}

/// The idempotency key of a write made on MCP session `session`: the session and a digest of
/// the tool and its canonical arguments (at most 73 bytes, within every tool's bound).
fn idempotency_key(session: &str, tool: &str, args: &Value) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(call_key(tool, args).as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{session}:{hex}")
}

/// A connection's loop guard: a write (or an irreversible call) repeated with the same
/// arguments within [`WRITE_MEMORY`] is not made again; the client gets the earlier result.
/// Reads repeat freely (the gate's cache answers them). Failed calls are not remembered, so a
/// client may retry them.
struct ConnectionGuard<'a> {
    seen: &'a moka::sync::Cache<String, Value>,
    read_only: bool,
}

impl LoopGuard for ConnectionGuard<'_> {
    fn earlier(&self, key: &str, read_only: bool) -> Option<Value> {
        if read_only {
            return None;
        }
        self.seen.get(key).map(|previous| {
            json!({
                "error": "loop_detected",
                "message": "this exact call was already made on this MCP session and was not repeated; its result is previous_result",
                "previous_result": previous,
            })
        })
    }
    fn record(&mut self, key: String, result: &Value) {
        if !self.read_only && !result.get("error").is_some_and(Value::is_string) {
            self.seen.insert(key, result.clone());
        }
    }
}

/// How long a connection remembers its writes for the loop guard.
const WRITE_MEMORY: Duration = Duration::from_secs(600);

/// Most writes a connection remembers for the loop guard.
const WRITE_MEMORY_ENTRIES: u64 = 1024;

/// The MCP annotations of `tool`: read-only tools are safe to repeat; irreversible ones are
/// destructive; every other write (an episode, a ticket) adds without destroying.
pub(crate) fn annotations(tool: &dyn Tool) -> ToolAnnotations {
    let a = ToolAnnotations::new().open_world(false);
    if tool.read_only() {
        a.read_only(true).destructive(false).idempotent(true)
    } else if tool.irreversible() {
        a.read_only(false).destructive(true).idempotent(false)
    } else {
        a.read_only(false).destructive(false).idempotent(false)
    }
}

/// The MCP description of `tool` (an irreversible one says that it only asks for approval).
fn description(tool: &dyn Tool) -> String {
    if tool.irreversible() {
        format!(
            "{} Over MCP this tool never executes: it creates a pending action and returns its \
             action_id; a human approves it with `memex approve ACTION_ID`.",
            tool.description()
        )
    } else {
        tool.description().to_string()
    }
}

/// What an irreversible tool returns over MCP: always a pending action, never its own result.
fn pending_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "status": {"const": "pending_approval"},
            "action_id": {"type": "string"},
            "tool": {"type": "string"},
            "args": {"type": "object"},
            "session": {"type": "string"},
            "message": {"type": "string"},
        },
        "required": ["status", "action_id", "tool", "args", "session", "message"],
    })
}

/// A failed call's structured content: the HTTP API's error object.
fn error_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                "required": ["code", "message"],
            },
        },
        "required": ["error"],
    })
}

/// The `outputSchema` of `tool` over MCP: a pending action for an irreversible tool, else the
/// tool's own result schema (any object when it declares none), or the error object of a
/// failed call (`isError`; some clients validate those too). Always an object schema at the
/// root, so every protocol revision keeps it.
pub(crate) fn output_schema(tool: &dyn Tool) -> serde_json::Map<String, Value> {
    let success = if tool.irreversible() {
        pending_schema()
    } else {
        tool.output_schema()
            .filter(|s| s.get("type") == Some(&json!("object")))
            .unwrap_or_else(|| json!({"type": "object"}))
    };
    let schema = json!({"type": "object", "anyOf": [success, error_schema()]});
    match schema {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// The MCP definition of `tool`.
pub(crate) fn definition(tool: &dyn Tool) -> McpTool {
    let schema = match tool.parameters() {
        Value::Object(map) => map.clone(),
        _ => serde_json::Map::new(),
    };
    McpTool::new(tool.name().to_string(), description(tool), schema)
        .with_annotations(annotations(tool))
        .with_raw_output_schema(Arc::new(output_schema(tool)))
}

/// A refusal or failure in the HTTP API's shape: `{"error": {"code", "message"}}`, with any
/// other fields of the gate's object (`previous_result` of a refused repeat) kept beside it.
fn error_shape(v: Value) -> Value {
    let Value::Object(mut map) = v else {
        return json!({"error": {"code": "error", "message": v.to_string()}});
    };
    let code = match map.remove("error") {
        Some(Value::String(c)) => c,
        Some(other) => other.to_string(),
        None => "error".to_string(),
    };
    let message = match map.remove("message") {
        Some(Value::String(m)) => m,
        _ => format!("the call ended with {code}"),
    };
    map.remove("retryable");
    map.insert("error".into(), json!({"code": code, "message": message}));
    Value::Object(map)
}

/// A tool error for the client: `isError` with `{"error": {"code", "message"}}`.
fn tool_error(kind: &str, message: String) -> CallToolResult {
    CallToolResult::structured_error(json!({"error": {"code": kind, "message": message}}))
}

/// How long a client may reuse the tool list and the discovery answer: the tools change only
/// with a new memex release.
const LIST_TTL_MS: u64 = 300_000;

impl ServerHandler for MemexMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("memex", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "memex: memory for one merchant. search_knowledge_base for policies and facts, \
                 recall_episodes before answering, save_episode after resolving something. \
                 Irreversible tools only create a pending action for a human to approve.",
            )
    }

    async fn discover(
        &self,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<DiscoverResult, ErrorData> {
        // The bearer key was checked before this (HTTP); the answer names no merchant, but a
        // keyed endpoint's answers are never shared between keys.
        Ok(DiscoverResult::from_server_info(
            self.supported_protocol_versions().into_owned(),
            self.get_info(),
        )
        .with_ttl_ms(LIST_TTL_MS)
        .with_cache_scope(CacheScope::Private))
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        // The session belongs to the merchant of the request that opened it.
        self.scoped(&ctx, true)?;
        ctx.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        self.scoped(&ctx, false)?;
        Ok(ListToolsResult::with_all_items(
            self.gate
                .tools()
                .tools()
                .map(|t| definition(t.as_ref()))
                .collect(),
        )
        .with_ttl_ms(LIST_TTL_MS)
        .with_cache_scope(CacheScope::Private))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let (merchant, state, sessionless) = self.scoped(&ctx, false)?;
        let name = request.name.as_ref();
        let args = Value::Object(request.arguments.clone().unwrap_or_default());
        if self.gate.tools().get(name).is_none() {
            return Ok(tool_error(
                "unknown_tool",
                format!(
                    "unknown tool {}; available tools: {}",
                    crate::tools::quote_for_display(name),
                    self.gate.tools().names().join(", ")
                ),
            )
            .into());
        }
        // Call ids are unique (JSON-RPC ids repeat across clients of one merchant's state).
        let call_id = format!("mcp:{}:{}", uuid::Uuid::new_v4().simple(), ctx.id);
        Ok(self
            .run(&merchant, &state, !sessionless, &call_id, name, &args)
            .await?
            .into())
    }
}

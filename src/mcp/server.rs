//! The MCP server handler: lists memex's tools with their schemas and annotations and runs
//! them for one merchant. Irreversible tools never run here: they become pending actions in
//! the agent store, for a human to approve (`memex approve ACTION_ID`).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use rmcp::model::{
    CallToolRequestParams, CallToolResult, Implementation, InitializeRequestParams,
    InitializeResult, ListToolsResult, PaginatedRequestParams, ProtocolVersion, ServerCapabilities,
    ServerInfo, Tool as McpTool, ToolAnnotations,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData, ServerHandler};
use serde_json::{json, Value};

use crate::agent::guards::redact;
use crate::agent::{AgentStore, AuditEntry};
use crate::merchant::MerchantId;
use crate::tools::{Tool, ToolContext, ToolRegistry};

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

/// One MCP connection (a stdio process, or one streamable-HTTP session): the tools, the agent
/// store that holds pending actions, and the agent session this connection's actions and audit
/// rows belong to.
pub struct MemexMcp {
    tools: Arc<ToolRegistry>,
    store: Arc<AgentStore>,
    scope: Scope,
    /// `mcp_…`: the agent session of this connection, registered for its merchant on first use.
    session: String,
    /// The merchant the session was registered for; a later request for another merchant on
    /// the same connection is refused.
    bound: Mutex<Option<MerchantId>>,
}

impl MemexMcp {
    pub(crate) fn new(tools: Arc<ToolRegistry>, store: Arc<AgentStore>, scope: Scope) -> Self {
        MemexMcp {
            tools,
            store,
            scope,
            session: format!("mcp_{}", uuid::Uuid::new_v4().simple()),
            bound: Mutex::new(None),
        }
    }

    /// The agent session id of this connection (`mcp_…`).
    pub fn session_id(&self) -> &str {
        &self.session
    }

    /// The merchant of this request; binds the connection to it on first use.
    fn merchant(&self, ctx: &RequestContext<RoleServer>) -> Result<MerchantId, ErrorData> {
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
        let mut bound = self
            .bound
            .lock()
            .map_err(|_| ErrorData::internal_error("the session state is unusable", None))?;
        match bound.as_ref() {
            Some(b) if *b != merchant => Err(ErrorData::invalid_request(
                "this MCP session belongs to another merchant; start a new session",
                None,
            )),
            Some(_) => Ok(merchant),
            None => {
                self.store
                    .begin_session(&self.session, &merchant)
                    .map_err(|e| {
                        ErrorData::internal_error(format!("cannot start the session: {e}"), None)
                    })?;
                *bound = Some(merchant.clone());
                Ok(merchant)
            }
        }
    }

    /// Records one call in the audit log (`memex audit --session mcp_…`); a failure to record
    /// is logged, never turned into a failed call.
    fn audit(&self, merchant: &MerchantId, call: &Call<'_>, status: &str, result: &Value) {
        let entry = AuditEntry {
            session: self.session.clone(),
            merchant: merchant.as_str().to_string(),
            turn: 1,
            call_id: call.id.clone(),
            tool: call.tool.to_string(),
            args: redact(call.args),
            result: redact(result),
            status: status.to_string(),
            latency_ms: call.started.elapsed().as_secs_f64() * 1e3,
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        };
        if let Err(e) = self.store.audit(&entry) {
            tracing::warn!(session = %self.session, "cannot record an MCP call in the audit log: {e}");
        }
    }

    /// Runs a call whose tool exists and whose arguments are valid.
    async fn run(
        &self,
        merchant: &MerchantId,
        tool: Arc<dyn Tool>,
        call: &Call<'_>,
    ) -> Result<CallToolResult, ErrorData> {
        if tool.irreversible() {
            let id = self
                .store
                .create_action(&self.session, merchant, 1, &call.id, call.tool, call.args)
                .map_err(|e| {
                    ErrorData::internal_error(format!("cannot store the pending action: {e}"), None)
                })?;
            let result = json!({
                "status": "pending_approval",
                "action_id": id,
                "tool": call.tool,
                "args": call.args,
                "session": self.session,
                "message": format!("NOT executed. This irreversible action waits for a human to approve it (memex approve {id}); it is never run from MCP."),
            });
            self.audit(merchant, call, "pending_approval", &result);
            return Ok(CallToolResult::structured(result));
        }
        let ctx = ToolContext::new(merchant.clone(), self.session.clone());
        match tool.call(call.args.clone(), &ctx).await {
            Ok(result) => {
                self.audit(merchant, call, "ok", &result);
                Ok(CallToolResult::structured(result))
            }
            Err(e) => {
                let result = e.to_json();
                self.audit(merchant, call, "error", &result);
                Ok(CallToolResult::structured_error(result))
            }
        }
    }
}

/// One tool call being served.
struct Call<'a> {
    id: String,
    tool: &'a str,
    args: &'a Value,
    started: Instant,
}

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

/// The MCP definition of `tool`.
pub(crate) fn definition(tool: &dyn Tool) -> McpTool {
    let schema = match tool.parameters() {
        Value::Object(map) => map.clone(),
        _ => serde_json::Map::new(),
    };
    McpTool::new(tool.name().to_string(), description(tool), schema)
        .with_annotations(annotations(tool))
}

/// A tool error for the client: `isError` with `{"error", "message"}` as JSON text.
fn tool_error(kind: &str, message: String) -> CallToolResult {
    CallToolResult::structured_error(json!({"error": kind, "message": message}))
}

impl ServerHandler for MemexMcp {
    fn get_info(&self) -> ServerInfo {
        ServerInfo::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("memex", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "memex: memory for one merchant. search_knowledge_base for policies and facts, \
                 recall_episodes before answering, save_episode after resolving something. \
                 Irreversible tools only create a pending action for a human to approve.",
            )
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        // The session belongs to the merchant of the request that opened it.
        self.merchant(&ctx)?;
        ctx.peer.set_peer_info(request.clone());
        let mut info = self.get_info();
        if ProtocolVersion::KNOWN_VERSIONS.contains(&request.protocol_version) {
            info.protocol_version = request.protocol_version;
        }
        Ok(info)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        self.merchant(&ctx)?;
        Ok(ListToolsResult::with_all_items(
            self.tools.tools().map(|t| definition(t.as_ref())).collect(),
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let merchant = self.merchant(&ctx)?;
        let name = request.name.as_ref();
        let args = Value::Object(request.arguments.clone().unwrap_or_default());
        let call = Call {
            id: format!("mcp:{}", ctx.id),
            tool: name,
            args: &args,
            started: Instant::now(),
        };
        let Some(tool) = self.tools.get(name) else {
            let e = tool_error(
                "unknown_tool",
                format!(
                    "unknown tool {}; available tools: {}",
                    crate::tools::quote_for_display(name),
                    self.tools.names().join(", ")
                ),
            );
            return Ok(e);
        };
        let checked = match self.tools.validate(name, &args.to_string()) {
            Ok(v) => v,
            Err(e) => {
                let result = e.to_json();
                self.audit(&merchant, &call, e.kind(), &result);
                return Ok(CallToolResult::structured_error(result));
            }
        };
        let call = Call {
            args: &checked,
            ..call
        };
        self.run(&merchant, tool, &call).await
    }
}

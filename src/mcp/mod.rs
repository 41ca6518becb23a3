//! memex as an MCP server (Model Context Protocol), on the official Rust SDK `rmcp`.
//!
//! * [`McpDeps`] — what the server serves: the memory tools (`search_knowledge_base`,
//!   `recall_episodes`, `save_episode`, in [`memory_tools`]) plus a domain's tools (the
//!   payments registry), and the agent store where irreversible calls wait for a human;
//! * [`MemexMcp`] — the [`rmcp::ServerHandler`] of one connection: tools with their JSON
//!   schemas and `readOnlyHint`/`destructiveHint`/`idempotentHint` annotations, each call
//!   made through the agent's one guarded call path ([`CallGate`]: schema validation, the
//!   connection's merchant, a loop guard on repeated writes, rate limits, cache, timeout,
//!   retries, audit rows, metrics). An irreversible tool
//!   never runs: it becomes a pending action of the connection's agent session (`mcp_…`), which
//!   a human approves with `memex approve ACTION_ID`;
//! * [`serve_stdio`] — `memex mcp --merchant MID` (stdout carries only JSON-RPC);
//! * [`http::streamable_http_service`] — the streamable-HTTP transport as a tower service that
//!   `memex serve` mounts at `/mcp`, where a caller-supplied function maps each request (its
//!   bearer key) to a merchant, and [`http::serve_loopback`] for `memex mcp --http ADDR`.
//!
//! Tool results are data: JSON text content plus the same value as structured content;
//! failures (bad arguments, unknown tool, a tool's own error) are tool errors (`isError`) with
//! `{"error", "message"}`, never a panic or a protocol failure.

pub mod http;
pub mod memory_tools;
mod server;

use std::sync::Arc;

use rmcp::ServiceExt;

use crate::agent::{AgentConfig, AgentStore, CallGate, CallPolicy};
use crate::embed::Embedder;
use crate::episodic::EpisodicStore;
use crate::kb::KnowledgeBase;
use crate::merchant::MerchantId;
use crate::tools::{RegistryError, Tool, ToolRegistry};

use server::Scope;
pub use server::{McpMerchant, MemexMcp};

/// Why the MCP server could not be built or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    /// Two tools share a name, or a tool's schema is invalid.
    #[error("cannot register the MCP tools: {0}")]
    Registry(#[from] RegistryError),
    /// The address is not a loopback address (`memex mcp --http` serves this machine only).
    #[error("{0} is not a loopback address; memex mcp --http serves 127.0.0.1 or ::1 only (use memex serve for a network service)")]
    NotLoopback(std::net::SocketAddr),
    /// Binding or serving the socket failed.
    #[error("cannot serve MCP over HTTP on {addr}")]
    Io {
        /// The address.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The MCP handshake over stdio failed.
    #[error("the MCP client did not complete the handshake")]
    Initialize(#[source] Box<rmcp::service::ServerInitializeError>),
    /// The stdio server task stopped abnormally.
    #[error("the MCP server stopped abnormally")]
    Join(#[source] tokio::task::JoinError),
}

/// Everything an MCP connection needs, shared by all connections of a process: the guarded
/// call path over the MCP tools and the policy each call is attempted under.
pub struct McpDeps {
    gate: Arc<CallGate>,
    policy: CallPolicy,
    /// Per-merchant state of session-less (2026-07-28) HTTP requests.
    stateless: server::StatelessStates,
}

impl McpDeps {
    /// The memory tools over `kb` (`None`: none ingested) and `episodes`, followed by
    /// `domain_tools` (a domain tool named like a memory tool — the payments
    /// `search_knowledge_base` — is left out: the memory tool serves it); every call goes
    /// through a [`CallGate`] with the default [`AgentConfig`]'s guards, auditing and holding
    /// pending actions in `store`.
    pub fn new(
        embedder: Arc<dyn Embedder>,
        kb: Option<Arc<KnowledgeBase>>,
        episodes: Arc<dyn EpisodicStore>,
        domain_tools: Vec<Arc<dyn Tool>>,
        store: Arc<AgentStore>,
    ) -> Result<Self, McpError> {
        let config = AgentConfig::default();
        let policy = config.call_policy();
        Self::with_gate(
            embedder,
            kb,
            episodes,
            domain_tools,
            |tools| config.call_gate(tools, store),
            policy,
        )
    }

    /// [`McpDeps::new`] with the gate of one's choosing: the memory tools and `domain_tools`
    /// as there; every call goes through the [`CallGate`] that `gate` makes over that
    /// registry (audit rows and pending actions in its store; its rate limits, cache and
    /// metrics — pass `|tools| agent.gate().with_tools(tools)` to share the agent's),
    /// attempted under `policy`.
    pub fn with_gate(
        embedder: Arc<dyn Embedder>,
        kb: Option<Arc<KnowledgeBase>>,
        episodes: Arc<dyn EpisodicStore>,
        domain_tools: Vec<Arc<dyn Tool>>,
        gate: impl FnOnce(ToolRegistry) -> CallGate,
        policy: CallPolicy,
    ) -> Result<Self, McpError> {
        let mut tools: Vec<Arc<dyn Tool>> = vec![
            Arc::new(memory_tools::KbSearchTool::new(kb)),
            Arc::new(memory_tools::RecallEpisodesTool::new(
                Arc::clone(&embedder),
                Arc::clone(&episodes),
            )),
            Arc::new(memory_tools::SaveEpisodeTool::new(embedder, episodes)),
        ];
        let taken: Vec<String> = tools.iter().map(|t| t.name().to_string()).collect();
        tools.extend(
            domain_tools
                .into_iter()
                .filter(|t| !taken.iter().any(|n| n == t.name())),
        );
        Ok(McpDeps {
            gate: Arc::new(gate(ToolRegistry::with_tools(tools)?)),
            policy,
            stateless: server::stateless_states(),
        })
    }

    /// The names of the tools served, in listing order.
    pub fn tool_names(&self) -> Vec<String> {
        self.gate.tools().names()
    }

    /// A handler for one connection of `merchant` (stdio, or any transport with a fixed merchant).
    pub fn handler(&self, merchant: MerchantId) -> MemexMcp {
        MemexMcp::new(
            Arc::clone(&self.gate),
            self.policy.clone(),
            Scope::Fixed(merchant),
            self.stateless.clone(),
        )
    }

    /// A handler whose merchant comes from each request's [`McpMerchant`] extension.
    pub(crate) fn per_request_handler(&self) -> MemexMcp {
        MemexMcp::new(
            Arc::clone(&self.gate),
            self.policy.clone(),
            Scope::PerRequest,
            self.stateless.clone(),
        )
    }
}

/// Serves MCP for `merchant` over this process's stdin/stdout until the client closes them.
pub async fn serve_stdio(deps: Arc<McpDeps>, merchant: MerchantId) -> Result<(), McpError> {
    let handler = deps.handler(merchant);
    tracing::info!(session = handler.session_id(), "serving MCP over stdio");
    let running = match handler.serve(rmcp::transport::stdio()).await {
        Ok(r) => r,
        // A client that only probed (`server/discover`) or left before starting is done.
        Err(rmcp::service::ServerInitializeError::ConnectionClosed(_)) => return Ok(()),
        Err(e) => return Err(McpError::Initialize(Box::new(e))),
    };
    running.waiting().await.map_err(McpError::Join)?;
    Ok(())
}

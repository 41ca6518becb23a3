//! The tool layer: what an agent can call, and how a model's calls are checked before they
//! run.
//!
//! * [`Tool`] — a named operation with a description, a JSON-schema for its parameters, and
//!   flags saying whether it only reads ([`Tool::read_only`]) and whether its effect cannot be
//!   undone ([`Tool::irreversible`]);
//! * [`ToolContext`] — who is calling: the session's merchant (every tool is scoped to it), the
//!   session id and, for approved actions, an idempotency key;
//! * [`ToolRegistry`] — the registered tools, the OpenAI `tools` list, and
//!   [`ToolRegistry::validate`], which turns a model's raw arguments into checked JSON or a
//!   structured [`ArgError`];
//! * [`Schema`] — a tool's JSON Schema (draft 2020-12, enforced by the `jsonschema` crate)
//!   with model-readable violation messages; [`Pattern`] — one schema `pattern` on its own;
//! * [`canonical_json`] — key-sorted JSON text for loop detection and caching.
//!
//! This module knows nothing about payments, approvals or retries: tools report failures as
//! [`ToolError`] (with [`ToolError::retryable`] telling transient ones apart) and the agent
//! decides what to do with them.

mod canonical;
mod error;
mod pattern;
mod registry;
mod schema;

use async_trait::async_trait;
use serde_json::Value;

use crate::merchant::MerchantId;

pub use canonical::canonical_json;
pub use error::{ArgError, RegistryError, ToolError};
pub use pattern::Pattern;
pub use registry::{ToolRegistry, MAX_ARGUMENT_BYTES};
pub use schema::{Schema, SchemaError, MAX_VIOLATIONS};

/// Who is calling a tool. Every tool reads and writes only `merchant`'s data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolContext {
    /// The merchant the session belongs to.
    pub merchant: MerchantId,
    /// The agent session making the call (recorded with what the tool writes).
    pub session_id: String,
    /// Makes a write happen at most once: a second call with the same key returns the first
    /// call's result instead of acting again. The agent passes the approval id for approved
    /// irreversible actions; irreversible tools refuse to run without one.
    pub idempotency_key: Option<String>,
}

impl ToolContext {
    /// A context for `merchant` and `session_id`, without an idempotency key.
    pub fn new(merchant: MerchantId, session_id: impl Into<String>) -> Self {
        ToolContext {
            merchant,
            session_id: session_id.into(),
            idempotency_key: None,
        }
    }

    /// The same context with `key` as its idempotency key.
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

/// Where a tool comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOrigin {
    /// `builtin`, `mcp` or `openapi`.
    pub kind: &'static str,
    /// The source's name in the config (`orders`), or the built-in group (`memex`).
    pub source: String,
}

impl ToolOrigin {
    /// A tool compiled into memex.
    pub fn builtin() -> Self {
        ToolOrigin {
            kind: "builtin",
            source: "memex".into(),
        }
    }

    /// How a sentence names the source: `the MCP server "orders"`, `memex's built-in tools`.
    pub fn describe(&self) -> String {
        match self.kind {
            "mcp" => format!("the MCP server \"{}\"", self.source),
            "openapi" => format!("the OpenAPI service \"{}\"", self.source),
            _ => "memex's built-in tools".to_string(),
        }
    }
}

/// An operation the model can ask the agent to perform.
///
/// Implementations validate nothing that the parameter schema already guarantees (the
/// registry checks arguments before any call) but must still treat `args` defensively: a
/// missing or mistyped field is an [`ToolError::InvalidArgs`], never a panic.
#[async_trait]
pub trait Tool: Send + Sync {
    /// The function name shown to the model (1–64 ASCII letters, digits, `_`, `-`).
    fn name(&self) -> &str;

    /// What the tool does, when to use it and what it returns, written for the model.
    fn description(&self) -> &str;

    /// The JSON schema of the arguments: a draft 2020-12 object schema that [`Schema`]
    /// accepts.
    fn parameters(&self) -> &Value;

    /// Whether the effect cannot be undone (a refund, a payout). The agent never runs an
    /// irreversible call without a human approval.
    fn irreversible(&self) -> bool {
        false
    }

    /// Whether the tool only reads. Results of read-only tools may be cached; any other tool
    /// invalidates such caches.
    fn read_only(&self) -> bool;

    /// The JSON schema of a successful result: an object schema (MCP's `outputSchema`; every
    /// result the tool returns must validate against it). `None`: any JSON object.
    fn output_schema(&self) -> Option<Value> {
        None
    }

    /// Where the tool comes from (built in, an MCP server, an OpenAPI service), for
    /// `memex tools list` and error messages. The default: built in.
    fn origin(&self) -> ToolOrigin {
        ToolOrigin::builtin()
    }

    /// The argument that carries the merchant on the tool's own side, when the tool binds it
    /// itself from [`ToolContext::merchant`]: the schema the model sees ([`Tool::parameters`])
    /// does not have it, and a value the model supplies anyway is removed before validation
    /// and recorded as overridden. `None` (the default): the tool takes the merchant from the
    /// context only.
    fn merchant_arg(&self) -> Option<&str> {
        None
    }

    /// A short progress line for a user interface, such as
    /// `Looking up transaction pay_ABC123`. `args` have been validated. The default names the
    /// tool.
    fn progress(&self, args: &Value) -> String {
        let _ = args;
        format!("Running {}", self.name())
    }

    /// Performs the call for `ctx.merchant` with validated `args`, returning a JSON result
    /// for the model.
    async fn call(&self, args: Value, ctx: &ToolContext) -> Result<Value, ToolError>;
}

/// `s` as a JSON string literal, cut to 64 characters: safe to show in a terminal or log
/// line even when a model wrote it.
pub fn quote_for_display(s: &str) -> String {
    schema::quote(s)
}

/// `id` with every character other than ASCII letters, digits, `_` and `-` removed, cut to 64
/// characters: for showing ids in progress lines.
pub fn sanitize_id(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(64)
        .collect()
}

/// The string argument `key` of already validated `args`, or [`ToolError::InvalidArgs`].
pub fn str_arg<'a>(args: &'a Value, key: &str) -> Result<&'a str, ToolError> {
    args.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| ToolError::InvalidArgs(format!("{key} must be a string")))
}

/// The integer argument `key` of already validated `args`, or [`ToolError::InvalidArgs`].
pub fn int_arg(args: &Value, key: &str) -> Result<i64, ToolError> {
    args.get(key)
        .and_then(Value::as_i64)
        .ok_or_else(|| ToolError::InvalidArgs(format!("{key} must be an integer")))
}

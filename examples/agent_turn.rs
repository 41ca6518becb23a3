//! One agent turn with a custom tool and a scripted model: the model first calls the tool, then
//! answers from its result. No API key, no network.
//!
//! ```sh
//! memex model fetch                      # once: the agent embeds each message to recall memory
//! cargo run --release --example agent_turn
//! ```
//!
//! `ScriptedModel` is a test double behind the `test-util` feature (memex's examples get it via
//! the dev-dependency on itself). In an application the model is
//! [`memex::llm::OpenAiCompatible`] (Groq, OpenAI, Ollama, vLLM, ...) and nothing else changes.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use memex::agent::{Agent, AgentConfig, AgentParts, AgentStore, Silent};
use memex::conversation::SqliteConversationStore;
use memex::embed::{EmbedderOptions, MiniLmEmbedder};
use memex::llm::{ScriptedModel, ToolCall};
use memex::merchant::MerchantId;
use memex::tools::{Tool, ToolContext, ToolError, ToolRegistry};
use serde_json::{json, Value};

/// A tool of your own: what the model sees (name, description, JSON schema of the arguments)
/// and what runs (`call`). The agent validates the arguments against the schema first.
struct OrderStatus {
    schema: Value,
}

#[async_trait]
impl Tool for OrderStatus {
    fn name(&self) -> &str {
        "get_order_status"
    }
    fn description(&self) -> &str {
        "Looks up an order of the current merchant by id; returns its status and carrier."
    }
    fn parameters(&self) -> &Value {
        &self.schema
    }
    // Read-only results may be cached within a session; irreversible tools (not this one)
    // need a human approval before they run.
    fn read_only(&self) -> bool {
        true
    }
    async fn call(&self, args: Value, ctx: &ToolContext) -> Result<Value, ToolError> {
        // The merchant comes from the session, never from the model.
        match args["order_id"].as_str() {
            Some("ord_1001") => Ok(json!({
                "order_id": "ord_1001", "merchant": ctx.merchant.as_str(),
                "status": "shipped", "carrier": "BlueDart", "eta": "2 days",
            })),
            Some(other) => Err(ToolError::NotFound(format!("no order {other}"))),
            None => Err(ToolError::InvalidArgs("order_id is required".into())),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The model's script: a call to our tool, then the final answer.
    let model = Arc::new(ScriptedModel::new());
    let call = ToolCall::new("call_1", "get_order_status", r#"{"order_id": "ord_1001"}"#);
    model
        .push_tool_calls(vec![call])
        .push_text("Order ord_1001 has shipped with BlueDart and should arrive in 2 days.");

    let tool = OrderStatus {
        schema: json!({
            "type": "object",
            "properties": {"order_id": {"type": "string", "description": "Order id, e.g. ord_1001"}},
            "required": ["order_id"],
            "additionalProperties": false,
        }),
    };
    let tools = ToolRegistry::with_tools([Arc::new(tool) as Arc<dyn Tool>])?;

    // The agent's memories and state, all SQLite files in one directory: episodes, the
    // conversation buffer, and the agent store (audit log, approvals, stats).
    let dir = tempfile::tempdir()?;
    let model_dir = std::env::var_os("MEMEX_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(memex::paths::default_model_dir);
    let embedder = MiniLmEmbedder::load(&model_dir, EmbedderOptions::default())?;
    let agent = Agent::new(AgentParts {
        model: Arc::clone(&model) as _,
        tools,
        embedder: Arc::new(embedder),
        // No knowledge base in this example (see kb_ask.rs for one).
        kb: None,
        episodes: memex::episodic::open(None, dir.path()).await?,
        conversations: Arc::new(SqliteConversationStore::open_in(dir.path())?),
        store: Arc::new(AgentStore::open_in(dir.path())?),
        config: AgentConfig::default(),
    });

    // One user turn: recall memory, call the model, run the tool through the guards, call the
    // model again with the result, stop at the answer.
    let merchant = MerchantId::parse("acme")?;
    let session = Agent::new_session_id();
    let report = agent
        .ask(&merchant, &session, "Where is my order ord_1001?", &Silent)
        .await?;

    println!("answer: {}", report.answer);
    for call in &report.tool_calls {
        println!(
            "tool call: {}({}) -> {} {} ({:.2} ms)",
            call.tool, call.args, call.status, call.result, call.latency_ms
        );
    }
    // The second request the model received carried the tool's result.
    println!("model requests: {}", model.request_count());
    Ok(())
}

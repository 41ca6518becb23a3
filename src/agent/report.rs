//! What a tool call reports and how a turn shows progress: shared by the loop (`mod.rs`) and
//! the gate (`gate.rs`), kept apart so that neither file imports the other.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One tool call as reported by `ask`/`approve`/`reject`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ToolCallReport {
    /// The model's call id.
    pub id: String,
    /// Tool name.
    pub tool: String,
    /// Arguments (parsed when they were JSON, else the raw text).
    pub args: Value,
    /// `ok`, `error`, `invalid_args`, `unknown_tool`, `loop_detected`, `pending_approval`,
    /// `cached`, `rate_limited` or `rejected`.
    pub status: String,
    /// What the model was told.
    pub result: Value,
    /// Execution time in milliseconds.
    pub latency_ms: f64,
}

/// Live progress of a turn, for interactive front ends.
pub trait Progress: Send + Sync {
    /// A tool is about to run (e.g. "Looking up transaction pay_ABC123…").
    fn tool_started(&self, _line: &str) {}
    /// Whether the model's answer should be streamed to [`Progress::text_delta`].
    fn wants_stream(&self) -> bool {
        false
    }
    /// A piece of the model's answer as it arrives (only when streaming).
    fn text_delta(&self, _delta: &str) {}
    /// The memory this turn recalled, as `ask --json` shows it (only when streaming), before
    /// the first model call.
    fn memory_ready(&self, _memory: &Value) {}
    /// The model asked for a tool call; it goes through the guards next (only when streaming).
    fn tool_call(&self, _id: &str, _tool: &str, _args: &Value) {}
    /// A tool call's outcome as `ask --json` reports it (only when streaming).
    fn tool_result(&self, _report: &ToolCallReport) {}
}

/// A [`Progress`] that shows nothing.
#[derive(Debug, Default)]
pub struct Silent;
impl Progress for Silent {}

/// One model's share of a turn.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ModelUse {
    /// The model's name as sent to the API.
    pub model: String,
    /// `tools` (chose the tool calls), `answer` (wrote the final answer) or
    /// `tools_and_answer`.
    pub role: String,
    /// Completed calls.
    pub calls: u32,
    /// Prompt tokens, as the API reported them.
    pub prompt_tokens: u64,
    /// Completion tokens, as the API reported them.
    pub completion_tokens: u64,
    /// Time in the model's calls, milliseconds.
    pub latency_ms: f64,
}

impl ModelUse {
    /// Counts one completed call of `usage` that took `elapsed`.
    pub(crate) fn add(&mut self, usage: &crate::llm::Usage, elapsed: Duration) {
        self.calls += 1;
        self.prompt_tokens += usage.prompt_tokens;
        self.completion_tokens += usage.completion_tokens;
        self.latency_ms += elapsed.as_secs_f64() * 1e3;
    }
}

//! The agent store's records and the backend seam, shared by the facade ([`super::AgentStore`])
//! and its backends (`sqlite.rs`, `redis.rs`), so that no backend names the facade.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agent::error::AgentError;
use crate::agent::report::ModelUse;
use crate::merchant::MerchantId;

/// What [`super::AgentStore::redact_sessions`] changed.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Redacted {
    /// Audit rows whose arguments and results were redacted.
    pub audit_rows: u64,
    /// Turn records whose memory context was redacted.
    pub turns: u64,
    /// Actions whose arguments and result were redacted (a pending one is also rejected, so
    /// nothing can ever run with the merchant's forgotten words).
    pub actions: u64,
}

/// One row of the audit log.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditEntry {
    /// Session the call belongs to.
    pub session: String,
    /// Merchant of the session.
    pub merchant: String,
    /// User turn number within the session (1-based).
    pub turn: u32,
    /// The model's tool-call id.
    pub call_id: String,
    /// Tool name as the model gave it.
    pub tool: String,
    /// Arguments (secrets redacted).
    pub args: Value,
    /// Result or error (secrets redacted).
    pub result: Value,
    /// Outcome status (`ok`, `error`, `invalid_args`, …).
    pub status: String,
    /// Time spent executing, in milliseconds.
    pub latency_ms: f64,
    /// When it happened (RFC 3339).
    pub at: String,
    /// The model that chose the call (`null` for calls memex or a human made: an escalation,
    /// an approval, a plan step, an MCP client's call).
    pub model: Option<String>,
}

/// Status of an irreversible action awaiting or past a human decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    /// Waiting for a human.
    Pending,
    /// Approved; execution started (or crashed before it was recorded).
    Approved,
    /// Approved and executed; its result is stored.
    Executed,
    /// Rejected by a human.
    Rejected,
    /// Approved, but the tool failed.
    Failed,
}

impl ActionStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ActionStatus::Pending => "pending",
            ActionStatus::Approved => "approved",
            ActionStatus::Executed => "executed",
            ActionStatus::Rejected => "rejected",
            ActionStatus::Failed => "failed",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self, AgentError> {
        Ok(match s {
            "pending" => ActionStatus::Pending,
            "approved" => ActionStatus::Approved,
            "executed" => ActionStatus::Executed,
            "rejected" => ActionStatus::Rejected,
            "failed" => ActionStatus::Failed,
            other => {
                return Err(AgentError::Corrupt {
                    what: "an action's status".into(),
                    source: format!("unknown action status {other:?}").into(),
                })
            }
        })
    }
}

/// An irreversible action the model asked for.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PendingAction {
    /// The approval id (`act_…`), also the tool's idempotency key.
    pub id: String,
    /// Session it belongs to.
    pub session: String,
    /// Merchant of the session.
    pub merchant: String,
    /// The tool to run.
    pub tool: String,
    /// The exact arguments that an approval executes.
    pub args: Value,
    /// Where it stands.
    pub status: ActionStatus,
    /// The tool's result once executed.
    pub result: Option<Value>,
    /// The tool call it was created for (the model's call id, or `PLAN:STEP` for a plan step).
    pub call_id: String,
}

/// What one finished turn leaves behind for `memex stats` and `memex eval export`.
#[derive(Debug, Clone, Default)]
pub struct TurnRecord {
    /// `answer`, `pending_action`, `escalation`, `clarification` or `error`.
    pub outcome: String,
    /// What started the turn: `message` (the merchant wrote), `approve` or `reject` (an
    /// operator decided a pending action).
    pub kind: String,
    /// The merchant's message, or the operator's note for a decision.
    pub message: String,
    /// What the agent answered (empty when the turn failed).
    pub answer: String,
    /// Which model produced what, with its calls, tokens and time.
    pub models: Vec<ModelUse>,
    /// Wall time of the turn in milliseconds.
    pub latency_ms: f64,
    /// Prompt tokens over the turn's LLM calls.
    pub prompt_tokens: u64,
    /// Completion tokens over the turn's LLM calls.
    pub completion_tokens: u64,
    /// The memory context used, as JSON.
    pub context: Value,
}

/// A finished turn as stored, for `memex eval export`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredTurn {
    /// Turn number within the session (1-based).
    pub turn: u32,
    /// When it finished (RFC 3339).
    pub at: String,
    /// See [`TurnRecord::kind`] (`message` for turns stored before it existed).
    pub kind: String,
    /// See [`TurnRecord::message`] (empty for turns stored before it existed).
    pub message: String,
    /// See [`TurnRecord::answer`].
    pub answer: String,
    /// See [`TurnRecord::outcome`].
    pub outcome: String,
    /// Wall time of the turn in milliseconds.
    pub latency_ms: f64,
    /// Prompt tokens over the turn's LLM calls.
    pub prompt_tokens: u64,
    /// Completion tokens over the turn's LLM calls.
    pub completion_tokens: u64,
    /// See [`TurnRecord::models`].
    pub models: Vec<ModelUse>,
    /// The memory context the turn used.
    pub context: Value,
}

/// A session as listed for `memex eval export`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SessionInfo {
    /// Session id.
    pub id: String,
    /// Its merchant.
    pub merchant: String,
    /// When it was created (RFC 3339).
    pub created_at: String,
}

/// One model's totals over every recorded turn, for `memex stats`.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct ModelStats {
    /// The model's name as sent to the API.
    pub model: String,
    /// What it did: `tools`, `answer` or `tools_and_answer` (see [`ModelUse::role`]).
    pub role: String,
    /// Turns it took part in.
    pub turns: u64,
    /// Its completed calls.
    pub calls: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Time in its calls, milliseconds, in all.
    pub latency_ms: f64,
    /// Mean time of one call, milliseconds.
    pub mean_call_ms: f64,
}

/// `models` with the most tokens first (then by name and role, so the order is stable).
pub(crate) fn sorted_models(mut models: Vec<ModelStats>) -> Vec<ModelStats> {
    models.sort_by(|a, b| {
        (b.prompt_tokens + b.completion_tokens)
            .cmp(&(a.prompt_tokens + a.completion_tokens))
            .then_with(|| a.model.cmp(&b.model))
            .then_with(|| a.role.cmp(&b.role))
    });
    models
}

/// Aggregates for `memex stats` (all zero for a data directory with no store yet).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Stats {
    /// Sessions started.
    pub sessions: u64,
    /// User turns run (including approve/reject continuations).
    pub turns: u64,
    /// Share of turns that ended with an answer, a pending action or a clarifying question
    /// (not an error).
    pub success_rate: f64,
    /// Tool calls recorded in the audit log.
    pub tool_calls: u64,
    /// Share of tool calls whose status is `error`.
    pub tool_failure_rate: f64,
    /// Calls refused as repeats within a turn.
    pub loop_detections: u64,
    /// Irreversible calls stopped at the approval gate.
    pub blocked_irreversible: u64,
    /// Turns that ended in an escalation.
    pub escalations: u64,
    /// Turns that ended with a clarifying question to the merchant.
    pub clarifications: u64,
    /// Share of turns that ended with a clarifying question.
    pub clarification_rate: f64,
    /// Prompt + completion tokens.
    pub llm_tokens: u64,
    /// Turn latency percentiles in milliseconds.
    pub latency_ms: Percentiles,
    /// Each model's calls, tokens and time, by model and role (most tokens first).
    pub models: Vec<ModelStats>,
}

/// p50/p95/p99.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
}
/// One backend of the agent store. Every method has the meaning of the [`super::AgentStore`] method
/// of the same name; implementations must keep its atomicity.
pub trait AgentStateBackend: Send + Sync {
    /// See [`super::AgentStore::merchant_sessions`].
    fn merchant_sessions(
        &self,
        merchant: &MerchantId,
        before: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<String>, AgentError>;
    /// See [`super::AgentStore::redact_sessions`].
    fn redact_sessions(
        &self,
        merchant: &MerchantId,
        sessions: &[String],
    ) -> Result<Redacted, AgentError>;
    /// See [`super::AgentStore::begin_session`].
    fn begin_session(&self, session: &str, merchant: &MerchantId) -> Result<u32, AgentError>;
    /// See [`super::AgentStore::session_merchant`].
    fn session_merchant(&self, session: &str) -> Result<Option<MerchantId>, AgentError>;
    /// See [`super::AgentStore::next_turn`].
    fn next_turn(&self, session: &str) -> Result<u32, AgentError>;
    /// See [`super::AgentStore::record_turn`].
    fn record_turn(
        &self,
        session: &str,
        merchant: &MerchantId,
        turn: u32,
        rec: &TurnRecord,
    ) -> Result<(), AgentError>;
    /// See [`super::AgentStore::turn_contexts`].
    fn turn_contexts(&self, session: &str) -> Result<Vec<Value>, AgentError>;
    /// See [`super::AgentStore::sessions`].
    fn sessions(
        &self,
        merchant: Option<&MerchantId>,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<SessionInfo>, AgentError>;
    /// See [`super::AgentStore::turn_records`].
    fn turn_records(&self, session: &str) -> Result<Vec<StoredTurn>, AgentError>;
    /// See [`super::AgentStore::audit`].
    fn audit(&self, e: &AuditEntry) -> Result<(), AgentError>;
    /// See [`super::AgentStore::audit_log`].
    fn audit_log(&self, session: &str) -> Result<Vec<AuditEntry>, AgentError>;
    /// See [`super::AgentStore::create_action`].
    fn create_action(
        &self,
        session: &str,
        merchant: &MerchantId,
        turn: u32,
        call_id: &str,
        tool: &str,
        args: &Value,
    ) -> Result<String, AgentError>;
    /// See [`super::AgentStore::action`].
    fn action(&self, session: &str, id: &str) -> Result<Option<PendingAction>, AgentError>;
    /// See [`super::AgentStore::action_by_call`].
    fn action_by_call(
        &self,
        session: &str,
        call_id: &str,
    ) -> Result<Option<PendingAction>, AgentError>;
    /// See [`super::AgentStore::action_by_id`].
    fn action_by_id(&self, id: &str) -> Result<Option<PendingAction>, AgentError>;
    /// See [`super::AgentStore::claim_execution`].
    fn claim_execution(
        &self,
        id: &str,
        runner: &str,
        alive: &dyn Fn(&str) -> bool,
    ) -> Result<bool, AgentError>;
    /// See [`super::AgentStore::transition`].
    fn transition(
        &self,
        id: &str,
        from: &[ActionStatus],
        to: ActionStatus,
        result: Option<&Value>,
    ) -> Result<bool, AgentError>;
    /// See [`super::AgentStore::end_session`].
    fn end_session(&self, session: &str, episode_id: &str) -> Result<(), AgentError>;
    /// See [`super::AgentStore::ended_episode`].
    fn ended_episode(&self, session: &str) -> Result<Option<String>, AgentError>;
    /// See [`super::AgentStore::lock_session`].
    fn lock_session(
        &self,
        session: &str,
        holder: &str,
        alive: &dyn Fn(&str) -> bool,
    ) -> Result<bool, AgentError>;
    /// See [`super::AgentStore::unlock_session`].
    fn unlock_session(&self, session: &str, holder: &str) -> Result<(), AgentError>;
    /// See [`super::AgentStore::stats`].
    fn stats(&self) -> Result<Stats, AgentError>;
    /// See [`super::AgentStore::actions_with_status`].
    fn actions_with_status(
        &self,
        status: Option<ActionStatus>,
        limit: usize,
    ) -> Result<Vec<PendingAction>, AgentError>;
}

//! The agent loop: memory before every turn, tool calls behind guards enforced in code, an
//! approval gate for irreversible actions, an audit log and metrics.
//!
//! One user turn: embed the message once; gather knowledge-base hits, this merchant's recent and
//! similar episodes and the conversation buffer; call the model; validate every tool call
//! (schema, loop detection, cap, rate limit, cache, approval gate); run it with one retry; feed
//! results back; stop at an answer, a pending irreversible action or an escalation.

mod error;
pub mod guards;
pub mod kb_adapter;
pub mod prompt;
pub mod runner;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

pub use error::AgentError;
use guards::{call_key, redact, ResultCache, TokenBucket};
use prompt::{EpisodeContext, KbContext, MemoryContext};
pub use store::{ActionStatus, AgentStore, AuditEntry, PendingAction, Stats, TurnRecord};

use crate::conversation::{ConversationBuffer, ConversationConfig, ConversationStore};
use crate::embed::Embedder;
use crate::episodic::{EpisodeDraft, EpisodicStore};
use crate::kb::{KnowledgeBase, SearchMode};
use crate::llm::{ChatModel, ChatRequest, Message, ToolCall, ToolDefinition, Usage};
use crate::merchant::MerchantId;
use crate::tools::{ToolContext, ToolError, ToolRegistry};

/// Tunables of the agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Hard cap on tool calls per user turn; the next one escalates.
    pub max_tool_calls: usize,
    /// Most model calls in one turn (a second safety net beside the tool cap).
    pub max_llm_rounds: usize,
    /// Knowledge-base chunks put in the prompt.
    pub kb_k: usize,
    /// Recent episodes put in the prompt.
    pub recent_episodes: usize,
    /// Similar episodes put in the prompt.
    pub similar_episodes: usize,
    /// Time to live of cached read-only tool results.
    pub cache_ttl: Duration,
    /// Per-tool token bucket: capacity and refill per second.
    pub tool_rate: (f64, f64),
    /// LLM token bucket: capacity and refill per second.
    pub llm_rate: (f64, f64),
    /// Backoff before retrying a transient tool error.
    pub tool_retry_backoff: Duration,
    /// Conversation buffer settings (its system prompt is replaced by the agent's rules).
    pub conversation: ConversationConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            max_tool_calls: 8,
            max_llm_rounds: 12,
            kb_k: 4,
            recent_episodes: 3,
            similar_episodes: 3,
            cache_ttl: Duration::from_secs(300),
            tool_rate: (10.0, 5.0),
            llm_rate: (30.0, 10.0),
            tool_retry_backoff: Duration::from_millis(200),
            conversation: ConversationConfig::default(),
        }
    }
}

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

/// An irreversible call held for approval.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PendingRef {
    /// Approval id.
    pub id: String,
    /// Tool.
    pub tool: String,
    /// Exact arguments an approval executes.
    pub args: Value,
}

/// The escalation ticket.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EscalationRef {
    /// Ticket id.
    pub ticket_id: String,
}

/// The outcome of one turn, in the shape `memex ask --json` prints.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TurnReport {
    /// Session id.
    pub session: String,
    /// Merchant id.
    pub merchant: String,
    /// What the agent says.
    pub answer: String,
    /// User turns in the session so far, this one included.
    pub turns: u32,
    /// Tool calls of this turn.
    pub tool_calls: Vec<ToolCallReport>,
    /// An irreversible action waiting for a human.
    pub pending_action: Option<PendingRef>,
    /// The escalation ticket, when the turn escalated.
    pub escalation: Option<EscalationRef>,
    /// The memory the turn used.
    pub memory: MemoryContext,
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
}

/// A [`Progress`] that shows nothing.
#[derive(Debug, Default)]
pub struct Silent;
impl Progress for Silent {}

/// The agent over its memories, tools and model.
pub struct Agent {
    model: Arc<dyn ChatModel>,
    tools: ToolRegistry,
    embedder: Arc<dyn Embedder>,
    kb: Option<Arc<KnowledgeBase>>,
    episodes: Arc<dyn EpisodicStore>,
    conversations: Arc<dyn ConversationStore>,
    store: Arc<AgentStore>,
    config: AgentConfig,
    cache: Mutex<HashMap<String, ResultCache>>,
    tool_buckets: Mutex<HashMap<String, TokenBucket>>,
    llm_bucket: Mutex<TokenBucket>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("tools", &self.tools.names())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Everything a turn accumulates.
struct TurnState {
    merchant: MerchantId,
    session: String,
    turn: u32,
    started: Instant,
    calls: Vec<ToolCallReport>,
    executed: usize,
    seen: HashMap<String, Value>,
    usage: Usage,
    memory: MemoryContext,
}

enum Stop {
    Answer(String),
    Pending(PendingRef, String),
    Escalate(String),
}

impl Agent {
    /// Builds an agent. `kb` may be absent (no knowledge base ingested yet).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: Arc<dyn ChatModel>,
        tools: ToolRegistry,
        embedder: Arc<dyn Embedder>,
        kb: Option<Arc<KnowledgeBase>>,
        episodes: Arc<dyn EpisodicStore>,
        conversations: Arc<dyn ConversationStore>,
        store: Arc<AgentStore>,
        config: AgentConfig,
    ) -> Self {
        let llm_bucket = TokenBucket::new(config.llm_rate.0, config.llm_rate.1);
        Self {
            model,
            tools,
            embedder,
            kb,
            episodes,
            conversations,
            store,
            config,
            cache: Mutex::new(HashMap::new()),
            tool_buckets: Mutex::new(HashMap::new()),
            llm_bucket: Mutex::new(llm_bucket),
        }
    }

    /// The agent's store (audit log, actions, stats).
    pub fn store(&self) -> &Arc<AgentStore> {
        &self.store
    }

    /// The registered tools.
    pub fn tools(&self) -> &ToolRegistry {
        &self.tools
    }

    /// The chat model.
    pub fn model(&self) -> &Arc<dyn ChatModel> {
        &self.model
    }

    /// The agent's tunables.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Waits (at most `max_wait`) for a token of `tool`'s rate limit; false when none came.
    pub(crate) async fn acquire_tool_token(&self, tool: &str, max_wait: Duration) -> bool {
        let deadline = Instant::now() + max_wait;
        loop {
            let wait = match self.tool_buckets.lock() {
                Ok(mut b) => {
                    let bucket = b.entry(tool.to_string()).or_insert_with(|| {
                        TokenBucket::new(self.config.tool_rate.0, self.config.tool_rate.1)
                    });
                    if bucket.try_take() {
                        return true;
                    }
                    bucket.wait_time()
                }
                Err(_) => return false,
            };
            let now = Instant::now();
            if now + wait > deadline {
                return false;
            }
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }

    /// A new session id.
    pub fn new_session_id() -> String {
        format!("ses_{}", uuid::Uuid::new_v4().simple())
    }

    async fn open_buffer(
        &self,
        merchant: &MerchantId,
        session: &str,
    ) -> Result<ConversationBuffer, AgentError> {
        let mut cfg = self.config.conversation.clone();
        cfg.system_prompt = prompt::rules(merchant.as_str());
        ConversationBuffer::open(
            Arc::clone(&self.conversations),
            Arc::clone(&self.model),
            session,
            cfg,
        )
        .await
        .map_err(|e| AgentError::Memory(e.to_string()))
    }

    /// Runs one user turn.
    pub async fn ask(
        &self,
        merchant: &MerchantId,
        session: &str,
        message: &str,
        progress: &dyn Progress,
    ) -> Result<TurnReport, AgentError> {
        if message.trim().is_empty() {
            return Err(AgentError::Invalid("the message is empty".into()));
        }
        self.store.begin_session(session, merchant)?;
        let mut buffer = self.open_buffer(merchant, session).await?;
        buffer
            .append(Message::user(message))
            .await
            .map_err(|e| AgentError::Memory(e.to_string()))?;
        let turn = self.store.next_turn(session)?;
        self.run_turn(
            merchant,
            session,
            turn,
            message,
            buffer,
            Vec::new(),
            progress,
        )
        .await
    }

    /// A human approves action `action_id` of `session`: it runs (at most once, ever) with
    /// exactly the stored arguments, and the agent continues the session.
    pub async fn approve(
        &self,
        session: &str,
        action_id: &str,
        progress: &dyn Progress,
    ) -> Result<TurnReport, AgentError> {
        self.decide(session, action_id, true, progress).await
    }

    /// A human rejects action `action_id` of `session`; the model is told and answers.
    pub async fn reject(
        &self,
        session: &str,
        action_id: &str,
        progress: &dyn Progress,
    ) -> Result<TurnReport, AgentError> {
        self.decide(session, action_id, false, progress).await
    }

    async fn decide(
        &self,
        session: &str,
        action_id: &str,
        approve: bool,
        progress: &dyn Progress,
    ) -> Result<TurnReport, AgentError> {
        let merchant = self
            .store
            .session_merchant(session)?
            .ok_or_else(|| AgentError::UnknownSession(session.to_string()))?;
        let action =
            self.store
                .action(session, action_id)?
                .ok_or_else(|| AgentError::UnknownAction {
                    session: session.to_string(),
                    action: action_id.to_string(),
                })?;
        if is_plan_call(&action.call_id) {
            // A plan step's approval runs inside its plan (retries, then the plan continues).
            return Err(AgentError::Invalid(format!(
                "action {} belongs to a plan step; decide it through the planner (memex approve {})",
                action.id, action.id
            )));
        }
        let turn = self.store.next_turn(session)?;
        let mut report = ToolCallReport {
            id: action.id.clone(),
            tool: action.tool.clone(),
            args: action.args.clone(),
            status: String::new(),
            result: Value::Null,
            latency_ms: 0.0,
        };
        let note = if approve {
            let (executed, ran_now) = self
                .execute_action(&merchant, session, &action, progress)
                .await?;
            report = executed;
            if !ran_now {
                // Already ran: report what happened, run nothing again.
                let answer = format!(
                    "Action {} was already approved earlier and was not run again.",
                    action.id
                );
                return Ok(TurnReport {
                    session: session.to_string(),
                    merchant: merchant.as_str().to_string(),
                    answer,
                    turns: turn,
                    tool_calls: vec![report],
                    pending_action: None,
                    escalation: None,
                    memory: MemoryContext::default(),
                });
            }
            format!(
                "[operator] A human operator APPROVED action {} ({} with {}). It was executed; \
                 result: {}",
                action.id, action.tool, action.args, report.result
            )
        } else {
            if !self.store.transition(
                &action.id,
                &[ActionStatus::Pending],
                ActionStatus::Rejected,
                None,
            )? {
                return Err(AgentError::AlreadyDecided {
                    action: action.id,
                    status: format!("{:?}", action.status).to_lowercase(),
                });
            }
            report.status = "rejected".into();
            report.result = json!({"status": "rejected", "message": "a human operator rejected this action; it was not executed"});
            format!(
                "[operator] A human operator REJECTED action {} ({} with {}). It was NOT \
                 executed. Tell the merchant and offer alternatives.",
                action.id, action.tool, action.args
            )
        };
        self.audit(&merchant, session, turn, &report)?;
        let mut buffer = self.open_buffer(&merchant, session).await?;
        buffer
            .append(Message::user(note.clone()))
            .await
            .map_err(|e| AgentError::Memory(e.to_string()))?;
        self.run_turn(
            &merchant,
            session,
            turn,
            &note,
            buffer,
            vec![report],
            progress,
        )
        .await
    }

    /// Runs the approved irreversible `action` at most once, ever: `pending`/`approved` →
    /// `approved` → `executed`/`failed`, with the action id as the tool's idempotency key (an
    /// `approved` row left by a crash mid-execution is finished safely). Returns the call's
    /// report and whether it ran now (`false`: it had already run and its stored result is
    /// reported). A rejected action is an error. Not audited here: callers audit the report.
    pub(crate) async fn execute_action(
        &self,
        merchant: &MerchantId,
        session: &str,
        action: &PendingAction,
        progress: &dyn Progress,
    ) -> Result<(ToolCallReport, bool), AgentError> {
        let mut report = ToolCallReport {
            id: action.id.clone(),
            tool: action.tool.clone(),
            args: action.args.clone(),
            status: String::new(),
            result: Value::Null,
            latency_ms: 0.0,
        };
        match action.status {
            ActionStatus::Rejected => {
                return Err(AgentError::AlreadyDecided {
                    action: action.id.clone(),
                    status: "rejected".into(),
                })
            }
            ActionStatus::Executed | ActionStatus::Failed => {
                report.status = if action.status == ActionStatus::Executed {
                    "ok".into()
                } else {
                    "error".into()
                };
                report.result = action.result.clone().unwrap_or(Value::Null);
                return Ok((report, false));
            }
            ActionStatus::Pending | ActionStatus::Approved => {}
        }
        // Pending → approved atomically, and only once: a concurrent approval loses here. An
        // `approved` row whose executor is gone is a crash mid-execution, which the idempotency
        // key makes safe to finish.
        let runner = runner::RunnerToken::new();
        if !self
            .store
            .claim_execution(&action.id, runner.as_str(), runner::alive)?
        {
            return Err(AgentError::AlreadyDecided {
                action: action.id.clone(),
                status: "being executed by another approval".into(),
            });
        }
        let tool = self.tools.get(&action.tool).ok_or_else(|| {
            AgentError::Invalid(format!("tool {} is no longer registered", action.tool))
        })?;
        progress.tool_started(&tool.progress(&action.args));
        let ctx = ToolContext::new(merchant.clone(), session).with_idempotency_key(&action.id);
        let t0 = Instant::now();
        let outcome = tool.call(action.args.clone(), &ctx).await;
        report.latency_ms = t0.elapsed().as_secs_f64() * 1e3;
        match outcome {
            Ok(result) => {
                self.store.transition(
                    &action.id,
                    &[ActionStatus::Approved],
                    ActionStatus::Executed,
                    Some(&result),
                )?;
                self.invalidate_cache(session);
                report.status = "ok".into();
                report.result = result;
            }
            Err(e) => {
                self.store.transition(
                    &action.id,
                    &[ActionStatus::Approved],
                    ActionStatus::Failed,
                    Some(&e.to_json()),
                )?;
                report.status = "error".into();
                report.result = e.to_json();
            }
        }
        Ok((report, true))
    }

    /// The loop of one turn, from the model's first call to an answer, a pending action or an
    /// escalation.
    #[allow(clippy::too_many_arguments)]
    async fn run_turn(
        &self,
        merchant: &MerchantId,
        session: &str,
        turn: u32,
        query: &str,
        mut buffer: ConversationBuffer,
        prior_calls: Vec<ToolCallReport>,
        progress: &dyn Progress,
    ) -> Result<TurnReport, AgentError> {
        let mut st = TurnState {
            merchant: merchant.clone(),
            session: session.to_string(),
            turn,
            started: Instant::now(),
            calls: prior_calls,
            executed: 0,
            seen: HashMap::new(),
            usage: Usage::default(),
            memory: MemoryContext::default(),
        };
        st.memory = self.recall(merchant, query).await?;
        st.memory.summary = Some(buffer.summary().to_string()).filter(|s| !s.is_empty());
        let sections = prompt::memory_sections(&st.memory);
        let tool_defs: Vec<ToolDefinition> = self
            .tools
            .tools()
            .map(|t| ToolDefinition::function(t.name(), t.description(), t.parameters().clone()))
            .collect();

        let mut stop = None;
        for _round in 0..self.config.max_llm_rounds {
            let mut messages = buffer.messages();
            match messages.first_mut() {
                Some(Message::System { content }) => content.push_str(&sections),
                _ => messages.insert(0, Message::system(sections.clone())),
            }
            self.pace_llm().await;
            let request = ChatRequest::new(messages).with_tools(tool_defs.clone());
            let response = match self.call_model(request, progress).await {
                Ok(r) => r,
                Err(e) => {
                    self.finish(&st, "error")?;
                    return Err(AgentError::Llm(e));
                }
            };
            st.usage += response.usage;
            if response.tool_calls.is_empty() {
                let answer = response.content.clone().unwrap_or_default();
                buffer
                    .append(Message::assistant(answer.clone()))
                    .await
                    .map_err(|e| AgentError::Memory(e.to_string()))?;
                stop = Some(Stop::Answer(answer));
                break;
            }
            buffer
                .append(Message::Assistant {
                    content: response.content.clone(),
                    tool_calls: response.tool_calls.clone(),
                })
                .await
                .map_err(|e| AgentError::Memory(e.to_string()))?;
            let mut outcome = None;
            for call in &response.tool_calls {
                let (report, next) = if outcome.is_some() {
                    // The turn is already stopping: answer the remaining calls without running them.
                    (self.skipped(call), None)
                } else {
                    self.handle_call(&mut st, call, progress).await?
                };
                buffer
                    .append(Message::tool(call.id.clone(), report.result.to_string()))
                    .await
                    .map_err(|e| AgentError::Memory(e.to_string()))?;
                if outcome.is_none() {
                    outcome = next;
                }
                st.calls.push(report);
            }
            if let Some(s) = outcome {
                stop = Some(s);
                break;
            }
        }
        let stop = stop.unwrap_or_else(|| {
            Stop::Escalate(format!(
                "the model did not finish within {} rounds",
                self.config.max_llm_rounds
            ))
        });
        let (answer, pending, escalation, outcome) = match stop {
            Stop::Answer(a) => (a, None, None, "answer"),
            Stop::Pending(p, a) => {
                buffer
                    .append(Message::assistant(a.clone()))
                    .await
                    .map_err(|e| AgentError::Memory(e.to_string()))?;
                (a, Some(p), None, "pending_action")
            }
            Stop::Escalate(reason) => {
                let ticket = self.escalate(&mut st, &reason).await?;
                let a = format!(
                    "I couldn't resolve this automatically ({reason}), so I've escalated it to our \
                     support team: ticket {ticket} (priority high). They will follow up."
                );
                buffer
                    .append(Message::assistant(a.clone()))
                    .await
                    .map_err(|e| AgentError::Memory(e.to_string()))?;
                (
                    a,
                    None,
                    Some(EscalationRef { ticket_id: ticket }),
                    "escalation",
                )
            }
        };
        st.memory.summary = Some(buffer.summary().to_string()).filter(|s| !s.is_empty());
        self.finish(&st, outcome)?;
        Ok(TurnReport {
            session: session.to_string(),
            merchant: merchant.as_str().to_string(),
            answer,
            turns: turn,
            tool_calls: st.calls,
            pending_action: pending,
            escalation,
            memory: st.memory,
        })
    }

    /// One model call; streamed to `progress` when it asks for that.
    async fn call_model(
        &self,
        request: ChatRequest,
        progress: &dyn Progress,
    ) -> Result<crate::llm::ChatResponse, crate::llm::LlmError> {
        if !progress.wants_stream() {
            return self.model.chat(request).await;
        }
        let events = self.model.stream(request).await?;
        crate::llm::collect_stream_with(events, |delta| progress.text_delta(delta)).await
    }

    fn finish(&self, st: &TurnState, outcome: &str) -> Result<(), AgentError> {
        self.store.record_turn(
            &st.session,
            &st.merchant,
            st.turn,
            &TurnRecord {
                outcome: outcome.to_string(),
                latency_ms: st.started.elapsed().as_secs_f64() * 1e3,
                prompt_tokens: st.usage.prompt_tokens,
                completion_tokens: st.usage.completion_tokens,
                context: serde_json::to_value(&st.memory).unwrap_or(Value::Null),
            },
        )
    }

    pub(crate) async fn pace_llm(&self) {
        let wait = match self.llm_bucket.lock() {
            Ok(mut b) => {
                if b.try_take() {
                    Duration::ZERO
                } else {
                    b.wait_time()
                }
            }
            Err(_) => Duration::ZERO,
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
            if let Ok(mut b) = self.llm_bucket.lock() {
                b.try_take();
            }
        }
    }

    /// Knowledge-base hits and this merchant's recent and similar episodes for `query`, which
    /// is embedded once. The conversation summary is left empty (callers with a buffer add it).
    pub(crate) async fn recall(
        &self,
        merchant: &MerchantId,
        query: &str,
    ) -> Result<MemoryContext, AgentError> {
        let vector = self
            .embedder
            .embed_one(query)
            .map_err(|e| AgentError::Memory(e.to_string()))?;
        let kb = match &self.kb {
            Some(kb) => kb
                .search_with_vector(query, &vector, self.config.kb_k, SearchMode::Hybrid)
                .map_err(|e| AgentError::Memory(e.to_string()))?
                .into_iter()
                .map(|h| KbContext {
                    chunk_id: h.chunk_id,
                    source: h.source,
                    heading: h.heading,
                    text: h.text,
                    score: h.score,
                })
                .collect(),
            None => Vec::new(),
        };
        let mut episodes: Vec<EpisodeContext> = Vec::new();
        let recent = self
            .episodes
            .recent(merchant, self.config.recent_episodes)
            .await
            .map_err(|e| AgentError::Memory(e.to_string()))?;
        let similar = self
            .episodes
            .similar(merchant, &vector, self.config.similar_episodes)
            .await
            .map_err(|e| AgentError::Memory(e.to_string()))?;
        for ep in recent
            .into_iter()
            .chain(similar.into_iter().map(|s| s.episode))
        {
            let id = ep.id.to_string();
            if episodes.iter().all(|e| e.id != id) {
                episodes.push(EpisodeContext {
                    id,
                    summary: ep.summary,
                    created_at: ep.created_at.to_rfc3339(),
                });
            }
        }
        Ok(MemoryContext {
            kb,
            episodes,
            summary: None,
        })
    }

    fn skipped(&self, call: &ToolCall) -> ToolCallReport {
        ToolCallReport {
            id: call.id.clone(),
            tool: call.name().to_string(),
            args: parse_args(&call.function.arguments),
            status: "error".into(),
            result: json!({"error": "not_executed", "message": "not run: this turn stopped at an earlier call"}),
            latency_ms: 0.0,
        }
    }

    /// Applies every guard to one call and runs it when they allow.
    async fn handle_call(
        &self,
        st: &mut TurnState,
        call: &ToolCall,
        progress: &dyn Progress,
    ) -> Result<(ToolCallReport, Option<Stop>), AgentError> {
        let name = call.name().to_string();
        let mut report = ToolCallReport {
            id: call.id.clone(),
            tool: name.clone(),
            args: parse_args(&call.function.arguments),
            status: String::new(),
            result: Value::Null,
            latency_ms: 0.0,
        };
        if st.executed >= self.config.max_tool_calls {
            report.status = "error".into();
            report.result = json!({"error": "tool_call_limit", "message": format!("the limit of {} tool calls per turn was reached", self.config.max_tool_calls)});
            self.audit(&st.merchant, &st.session, st.turn, &report)?;
            let reason = format!(
                "the limit of {} tool calls per turn was reached",
                self.config.max_tool_calls
            );
            return Ok((report, Some(Stop::Escalate(reason))));
        }
        st.executed += 1;
        let args = match self.tools.validate(&name, &call.function.arguments) {
            Ok(a) => a,
            Err(e) => {
                report.status = match e.kind() {
                    "unknown_tool" => "unknown_tool",
                    _ => "invalid_args",
                }
                .into();
                report.result = e.to_json();
                self.audit(&st.merchant, &st.session, st.turn, &report)?;
                return Ok((report, None));
            }
        };
        report.args = args.clone();
        let Some(tool) = self.tools.get(&name) else {
            report.status = "unknown_tool".into();
            report.result =
                json!({"error": "unknown_tool", "message": format!("unknown tool {name}")});
            self.audit(&st.merchant, &st.session, st.turn, &report)?;
            return Ok((report, None));
        };
        let key = call_key(&name, &args);
        if let Some(previous) = st.seen.get(&key) {
            report.status = "loop_detected".into();
            report.result = json!({
                "error": "loop_detected",
                "message": "this exact call was already made in this turn and was not repeated; use its result",
                "previous_result": previous,
            });
            self.audit(&st.merchant, &st.session, st.turn, &report)?;
            return Ok((report, None));
        }
        if tool.irreversible() {
            let id = self.store.create_action(
                &st.session,
                &st.merchant,
                st.turn,
                &call.id,
                &name,
                &args,
            )?;
            report.status = "pending_approval".into();
            report.result = json!({
                "status": "pending_approval",
                "action_id": id,
                "message": "NOT executed. This irreversible action is held until a human operator approves it. Do not say it was done.",
            });
            st.seen.insert(key, report.result.clone());
            self.audit(&st.merchant, &st.session, st.turn, &report)?;
            let answer = format!(
                "This needs a human's approval before it can run: {} with {}. Action id: {}.",
                name, args, id
            );
            let pending = PendingRef {
                id,
                tool: name,
                args,
            };
            return Ok((report, Some(Stop::Pending(pending, answer))));
        }
        if tool.read_only() {
            if let Some(hit) = self.cache_get(&st.session, &key) {
                report.status = "cached".into();
                report.result = hit.clone();
                st.seen.insert(key, hit);
                self.audit(&st.merchant, &st.session, st.turn, &report)?;
                return Ok((report, None));
            }
        }
        if !self.take_tool_token(&name) {
            report.status = "rate_limited".into();
            report.result = json!({"error": "rate_limited", "message": format!("{name} is being called too often; wait before calling it again")});
            self.audit(&st.merchant, &st.session, st.turn, &report)?;
            return Ok((report, None));
        }
        progress.tool_started(&tool.progress(&args));
        let ctx = ToolContext::new(st.merchant.clone(), st.session.clone());
        let t0 = Instant::now();
        let mut result = tool.call(args.clone(), &ctx).await;
        if let Err(e) = &result {
            if matches!(e, ToolError::Transient(_) | ToolError::Internal(_)) {
                if e.retryable() {
                    tokio::time::sleep(self.config.tool_retry_backoff).await;
                }
                result = tool.call(args.clone(), &ctx).await;
            }
        }
        report.latency_ms = t0.elapsed().as_secs_f64() * 1e3;
        match result {
            Ok(value) => {
                report.status = "ok".into();
                report.result = value.clone();
                if tool.read_only() {
                    self.cache_put(&st.session, key.clone(), value.clone());
                } else {
                    self.invalidate_cache(&st.session);
                }
                st.seen.insert(key, value);
                self.audit(&st.merchant, &st.session, st.turn, &report)?;
                Ok((report, None))
            }
            Err(e) => {
                report.status = "error".into();
                report.result = e.to_json();
                st.seen.insert(key, report.result.clone());
                self.audit(&st.merchant, &st.session, st.turn, &report)?;
                if matches!(e, ToolError::Transient(_) | ToolError::Internal(_)) {
                    // Failed twice: stop guessing and hand the case to a human.
                    let reason = format!("{name} failed twice");
                    Ok((report, Some(Stop::Escalate(reason))))
                } else {
                    Ok((report, None))
                }
            }
        }
    }

    /// Opens a high-priority ticket for the turn and returns its id.
    async fn escalate(&self, st: &mut TurnState, reason: &str) -> Result<String, AgentError> {
        let Some(tool) = self.tools.get("create_support_ticket") else {
            return Err(AgentError::Invalid(
                "cannot escalate: no create_support_ticket tool".into(),
            ));
        };
        let tools_tried = st
            .calls
            .iter()
            .map(|c| c.tool.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let args = json!({
            "subject": format!("Escalation from the support agent (session {})", st.session),
            "description": format!("Automatic escalation: {reason}. Tools tried this turn: {}.", if tools_tried.is_empty() { "none" } else { &tools_tried }),
            "priority": "high",
            "type": "other",
        });
        let ctx = ToolContext::new(st.merchant.clone(), st.session.clone());
        let t0 = Instant::now();
        let result = tool.call(args.clone(), &ctx).await;
        let mut report = ToolCallReport {
            id: format!("escalation_{}", st.turn),
            tool: "create_support_ticket".into(),
            args,
            status: "ok".into(),
            result: Value::Null,
            latency_ms: t0.elapsed().as_secs_f64() * 1e3,
        };
        let ticket = match result {
            Ok(v) => {
                report.result = v.clone();
                v.get("ticket_id")
                    .or_else(|| v.get("id"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| "unknown".into())
            }
            Err(e) => {
                report.status = "error".into();
                report.result = e.to_json();
                self.audit(&st.merchant, &st.session, st.turn, &report)?;
                return Err(AgentError::Invalid(format!(
                    "escalation failed: could not create a ticket ({e})"
                )));
            }
        };
        self.audit(&st.merchant, &st.session, st.turn, &report)?;
        st.calls.push(report);
        Ok(ticket)
    }

    pub(crate) fn audit(
        &self,
        merchant: &MerchantId,
        session: &str,
        turn: u32,
        r: &ToolCallReport,
    ) -> Result<(), AgentError> {
        self.store.audit(&AuditEntry {
            session: session.to_string(),
            merchant: merchant.as_str().to_string(),
            turn,
            call_id: r.id.clone(),
            tool: r.tool.clone(),
            args: redact(&r.args),
            result: redact(&r.result),
            status: r.status.clone(),
            latency_ms: r.latency_ms,
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        })
    }

    pub(crate) fn cache_get(&self, session: &str, key: &str) -> Option<Value> {
        self.cache.lock().ok()?.get_mut(session)?.get(key)
    }

    pub(crate) fn cache_put(&self, session: &str, key: String, value: Value) {
        if let Ok(mut c) = self.cache.lock() {
            c.entry(session.to_string())
                .or_insert_with(|| ResultCache::new(self.config.cache_ttl))
                .put(key, value);
        }
    }

    pub(crate) fn invalidate_cache(&self, session: &str) {
        if let Ok(mut c) = self.cache.lock() {
            if let Some(entry) = c.get_mut(session) {
                entry.clear();
            }
        }
    }

    pub(crate) fn take_tool_token(&self, tool: &str) -> bool {
        match self.tool_buckets.lock() {
            Ok(mut b) => b
                .entry(tool.to_string())
                .or_insert_with(|| {
                    TokenBucket::new(self.config.tool_rate.0, self.config.tool_rate.1)
                })
                .try_take(),
            Err(_) => false,
        }
    }

    /// Saves `summary` as an episode of `merchant` (embedded for similarity search), with
    /// `metadata`.
    pub(crate) async fn remember(
        &self,
        merchant: &MerchantId,
        summary: &str,
        metadata: Value,
    ) -> Result<crate::episodic::Episode, AgentError> {
        let vector = self
            .embedder
            .embed_one(summary)
            .map_err(|e| AgentError::Memory(e.to_string()))?;
        let draft = EpisodeDraft::new(summary)
            .with_metadata(metadata)
            .with_embedding(vector);
        self.episodes
            .save(merchant, draft)
            .await
            .map_err(|e| AgentError::Memory(e.to_string()))
    }

    /// Ends `session`: summarises it into an episode for its merchant (the model writes the
    /// summary; if it cannot, a plain transcript digest is kept instead, so nothing is lost).
    pub async fn end_session(&self, session: &str) -> Result<crate::episodic::Episode, AgentError> {
        let merchant = self
            .store
            .session_merchant(session)?
            .ok_or_else(|| AgentError::UnknownSession(session.to_string()))?;
        let buffer = self.open_buffer(&merchant, session).await?;
        let transcript = crate::conversation::render_transcript(buffer.recent().iter());
        let previous = buffer.summary().to_string();
        let request = crate::conversation::summary_request(&previous, buffer.recent(), 400);
        let summary = match self.model.chat(request).await {
            Ok(r) => r.content.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let summary = if summary.trim().is_empty() {
            let mut digest = previous.clone();
            if !digest.is_empty() {
                digest.push('\n');
            }
            digest.push_str(&transcript);
            digest.chars().take(4000).collect()
        } else {
            summary
        };
        let summary = if summary.trim().is_empty() {
            format!("Session {session} with no messages.")
        } else {
            summary
        };
        let audit = self.store.audit_log(session)?;
        let metadata = json!({
            "session_id": session,
            "tool_calls": audit.len(),
            "tools": audit.iter().map(|a| a.tool.clone()).collect::<Vec<_>>(),
        });
        let episode = self.remember(&merchant, &summary, metadata).await?;
        self.store.end_session(session, &episode.id.to_string())?;
        Ok(episode)
    }
}

fn parse_args(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()))
}

/// Whether `call_id` is a plan step's (`plan_` + 32 hex digits + `:` + step id), as the planner
/// writes them; a model's tool-call ids never have that form.
pub fn is_plan_call(call_id: &str) -> bool {
    let Some((plan, step)) = call_id.split_once(':') else {
        return false;
    };
    let Some(hex) = plan.strip_prefix("plan_") else {
        return false;
    };
    hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) && !step.is_empty()
}

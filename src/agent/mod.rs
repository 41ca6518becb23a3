//! The agent loop: memory before every turn, tool calls behind guards enforced in code, an
//! approval gate for irreversible actions, an audit log and metrics.
//!
//! One user turn: embed the message once; gather knowledge-base hits, this merchant's recent and
//! similar episodes and the conversation buffer; call the model; send every tool call through
//! the one guarded call path ([`gate::CallGate`]); feed results back; stop at an answer, a
//! pending irreversible action or an escalation.
//!
//! The agent knows no business domain: its rules and escalation come from a
//! [`domain::Domain`], its tools from a [`ToolRegistry`].

pub mod domain;
mod error;
pub mod gate;
pub mod guards;
pub mod prompt;
mod report;
pub mod runner;
pub mod shared_cache;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

pub use domain::{Domain, EscalationCall, EscalationCase, NoDomain, PlannerHints};
pub use error::AgentError;
pub use gate::{
    AttemptHook, CacheBounds, CallGate, CallOutcome, CallPolicy, CallRequest, GateResult,
    LoopGuard, NoHook, NoLoopGuard,
};
use guards::TokenBucket;
use prompt::{EpisodeContext, KbContext, MemoryContext};
pub use report::{ModelUse, Progress, Silent, ToolCallReport};
pub use store::{
    ActionStatus, AgentStore, AuditEntry, ModelStats, PendingAction, Redacted, SessionInfo, Stats,
    StoredTurn, TurnRecord,
};

use crate::conversation::{ConversationBuffer, ConversationConfig, ConversationStore};
use crate::embed::Embedder;
use crate::episodic::{EpisodeDraft, EpisodicStore};
use crate::kb::{KnowledgeBase, SearchMode};
use crate::llm::{ChatModel, ChatRequest, Message, ToolCall, ToolDefinition, Usage};
use crate::merchant::MerchantId;
use crate::tools::{ToolError, ToolRegistry};

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
    /// Backoff before retrying a transient tool error (doubled for each further retry).
    pub tool_retry_backoff: Duration,
    /// Attempts of a chat turn's tool call (transient and internal failures are retried).
    pub tool_attempts: u32,
    /// Longest one attempt of a tool call may take.
    pub tool_timeout: Duration,
    /// How approved irreversible actions run, whichever path approves them.
    pub action_policy: CallPolicy,
    /// Most sessions holding cached read-only results at once.
    pub cache_max_sessions: u64,
    /// Most cached results per session.
    pub cache_max_entries: u64,
    /// Conversation buffer settings (its system prompt is replaced by the agent's rules).
    pub conversation: ConversationConfig,
    /// Longest wait for another turn of the same session to finish before answering
    /// [`AgentError::SessionBusy`] (turns of one session run one at a time).
    pub session_wait: Duration,
    /// Share read-only tool results across sessions, per merchant (in this process, or on the
    /// Redis of a Redis state so workers share them); see [`shared_cache`].
    pub shared_tool_cache: bool,
    /// Time to live of a tool's results in the shared cache, by tool name (others:
    /// [`AgentConfig::cache_ttl`]).
    pub tool_cache_ttls: HashMap<String, Duration>,
    /// `[tools.fallbacks]`: a read-only tool → the read-only tool called with the same
    /// arguments when it still fails after its retries (checked when the registry is built,
    /// `sources::check_fallbacks`).
    pub tool_fallbacks: HashMap<String, String>,
    /// Tool sources that were down when the registry was built (see
    /// [`CallGate::with_unavailable_sources`]).
    pub unavailable_sources: Vec<String>,
}

impl AgentConfig {
    /// The policy of a chat turn's tool calls: no wait for the rate limit (a refusal goes back
    /// to the model), [`AgentConfig::tool_attempts`] attempts.
    pub fn call_policy(&self) -> CallPolicy {
        CallPolicy {
            timeout: self.tool_timeout,
            max_attempts: self.tool_attempts,
            backoff: self.tool_retry_backoff,
            rate_limit_wait: Duration::ZERO,
        }
    }

    /// The guarded call path over `tools` with these settings (cache bounds, per-tool rate,
    /// action policy), auditing into `store`: what [`Agent::new`] builds, and what a surface
    /// without an agent (`memex mcp`) builds the same way.
    pub fn call_gate(&self, tools: ToolRegistry, store: Arc<AgentStore>) -> CallGate {
        let shared: Option<Arc<dyn shared_cache::SharedToolCache>> = if self.shared_tool_cache {
            let longest = self
                .tool_cache_ttls
                .values()
                .copied()
                .chain([self.cache_ttl])
                .max()
                .unwrap_or(self.cache_ttl);
            Some(match store.redis_pool() {
                Some(pool) => Arc::new(shared_cache::RedisToolCache::new(pool.named("tool cache"))),
                None => Arc::new(shared_cache::InProcessToolCache::new(
                    self.cache_max_sessions
                        .saturating_mul(self.cache_max_entries),
                    longest,
                )),
            })
        } else {
            None
        };
        CallGate::new(
            tools,
            store,
            CacheBounds {
                max_sessions: self.cache_max_sessions,
                max_entries_per_session: self.cache_max_entries,
                ttl: self.cache_ttl,
            },
            self.tool_rate,
            self.action_policy.clone(),
        )
        .with_shared_cache(shared, self.tool_cache_ttls.clone())
        .with_fallbacks(self.tool_fallbacks.clone())
        .with_unavailable_sources(self.unavailable_sources.clone())
    }
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
            tool_attempts: 2,
            tool_timeout: Duration::from_secs(60),
            action_policy: CallPolicy::default(),
            cache_max_sessions: 10_000,
            cache_max_entries: 256,
            conversation: ConversationConfig::default(),
            session_wait: Duration::from_secs(120),
            shared_tool_cache: false,
            tool_cache_ttls: HashMap::new(),
            tool_fallbacks: HashMap::new(),
            unavailable_sources: Vec::new(),
        }
    }
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

/// A question the agent asked the merchant instead of guessing (the built-in
/// [`ASK_USER_TOOL`]); the merchant's reply is the next turn.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Clarification {
    /// The question, as the model wrote it.
    pub question: String,
}

/// The built-in tool a model calls to ask the merchant one clarifying question. It is never
/// executed and never reaches the gate: the turn ends with [`TurnReport::clarification`].
pub const ASK_USER_TOOL: &str = "ask_user";

/// Longest clarifying question kept (characters).
const MAX_QUESTION_CHARS: usize = 500;

/// The definition of [`ASK_USER_TOOL`] the model sees.
fn ask_user_definition() -> ToolDefinition {
    ToolDefinition::function(
        ASK_USER_TOOL,
        "Ask the merchant ONE short clarifying question instead of guessing, when the request \
         is ambiguous: several payments or refunds could match, an id does not look like a \
         valid one, or the message is unclear. The turn ends and the merchant's reply comes \
         next. Do not use it to confirm an irreversible action (those are held for a human \
         automatically) or when the memory or a lookup can settle the question.",
        json!({
            "type": "object",
            "properties": {"question": {"type": "string", "minLength": 1, "maxLength": 500,
                                        "description": "The question to the merchant."}},
            "required": ["question"],
            "additionalProperties": false,
        }),
    )
}

/// The question of an `ask_user` call, when its arguments carry a non-blank one.
fn clarifying_question(raw_args: &str) -> Option<String> {
    let v: Value = serde_json::from_str(raw_args).ok()?;
    let q = v.get("question")?.as_str()?.trim();
    if q.is_empty() {
        return None;
    }
    Some(q.chars().take(MAX_QUESTION_CHARS).collect())
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
    /// The question asked instead of acting, when the turn ended with one (at most one per
    /// user turn; never a tool call).
    pub clarification: Option<Clarification>,
    /// The memory the turn used.
    pub memory: MemoryContext,
    /// Which model produced what in this turn, with its calls, tokens and time: the main
    /// model (`role` `tools`, or `tools_and_answer` without an answer model) and the answer
    /// model (`answer`) when one is configured.
    pub models: Vec<ModelUse>,
}

/// Memory recorded earlier, given to a turn instead of what the memories would recall now
/// (`memex eval agent` replays a stored session with the memory it saw).
pub trait RecordedMemory: Send + Sync {
    /// The memory for a turn of `session` that starts with `message`; `None` recalls as usual.
    fn memory_for(
        &self,
        merchant: &MerchantId,
        session: &str,
        message: &str,
    ) -> Option<MemoryContext>;
}

/// The optional second model that writes only a turn's final answer.
struct AnswerModel {
    model: Arc<dyn ChatModel>,
    name: String,
}

/// The agent over its memories, tools and model.
pub struct Agent {
    model: Arc<dyn ChatModel>,
    gate: CallGate,
    domain: Arc<dyn Domain>,
    embedder: Arc<dyn Embedder>,
    kb: Option<Arc<KnowledgeBase>>,
    episodes: Arc<dyn EpisodicStore>,
    conversations: Arc<dyn ConversationStore>,
    store: Arc<AgentStore>,
    config: AgentConfig,
    llm_bucket: Mutex<TokenBucket>,
    /// The main model's name (for reports).
    model_name: String,
    /// Writes the final answer when set; the main model then only chooses tools.
    answer_model: Option<AnswerModel>,
    /// Recorded memory used instead of recalling (replays only).
    recorded_memory: Option<Arc<dyn RecordedMemory>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("tools", &self.gate.tools().names())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A session held for one turn (an OS lock on its lock file); dropping it (even by
/// cancellation) lets the next one run.
struct SessionHold<'a> {
    store: &'a AgentStore,
    session: String,
    owner: runner::Ownership,
}

impl Drop for SessionHold<'_> {
    fn drop(&mut self) {
        let _ = self.store.unlock_session(&self.session, self.owner.token());
    }
}

/// A turn's loop guard: a call repeating one made earlier in the turn is not run again; the
/// model gets the earlier result.
struct TurnLoopGuard<'a>(&'a mut HashMap<String, Value>);

impl LoopGuard for TurnLoopGuard<'_> {
    fn earlier(&self, key: &str, _read_only: bool) -> Option<Value> {
        self.0.get(key).map(|previous| {
            json!({
                "error": "loop_detected",
                "message": "this exact call was already made in this turn and was not repeated; use its result",
                "previous_result": previous,
            })
        })
    }
    fn record(&mut self, key: String, result: &Value) {
        self.0.insert(key, result.clone());
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
    /// The main model's share.
    main_use: ModelUse,
    /// The answer model's share.
    answer_use: Option<ModelUse>,
    /// What started the turn (`message`, `approve`, `reject`).
    kind: &'static str,
    /// The merchant's message or the operator's note.
    message: String,
}

enum Stop {
    Answer(String),
    Clarify(String),
    Pending(PendingRef, String),
    Escalate(String),
}

/// What an [`Agent`] is built from: its model, its tools, the three memories, the agent store
/// and the guards' settings. Named fields, so a caller cannot swap two stores by position.
pub struct AgentParts {
    /// The chat model that chooses tools (and writes the answer unless an answer model is set).
    pub model: Arc<dyn ChatModel>,
    /// Every tool the agent may call; each call goes through the agent's [`CallGate`].
    pub tools: ToolRegistry,
    /// Embeds each message once for the knowledge base and episode recall.
    pub embedder: Arc<dyn Embedder>,
    /// The knowledge base; absent when none was ingested yet.
    pub kb: Option<Arc<KnowledgeBase>>,
    /// Episodic memory (per merchant).
    pub episodes: Arc<dyn EpisodicStore>,
    /// Conversation memory (per session).
    pub conversations: Arc<dyn ConversationStore>,
    /// Sessions, turns, the audit log and actions.
    pub store: Arc<AgentStore>,
    /// Limits, guards and prompt sizes.
    pub config: AgentConfig,
}

impl Agent {
    /// Builds an agent from its parts.
    pub fn new(parts: AgentParts) -> Self {
        let AgentParts {
            model,
            tools,
            embedder,
            kb,
            episodes,
            conversations,
            store,
            config,
        } = parts;
        let llm_bucket = TokenBucket::new(config.llm_rate.0, config.llm_rate.1);
        let gate = config.call_gate(tools, Arc::clone(&store));
        Self {
            model,
            gate,
            domain: Arc::new(NoDomain),
            embedder,
            kb,
            episodes,
            conversations,
            store,
            config,
            llm_bucket: Mutex::new(llm_bucket),
            model_name: "main".to_string(),
            answer_model: None,
            recorded_memory: None,
        }
    }

    /// The same agent taking each turn's memory from `memory` where it has one, instead of
    /// recalling it (for replays of recorded sessions).
    pub fn with_recorded_memory(mut self, memory: Arc<dyn RecordedMemory>) -> Self {
        self.recorded_memory = Some(memory);
        self
    }

    /// The same agent serving `domain` (its rules and escalation). Without one the agent has
    /// neutral rules and cannot escalate.
    pub fn with_domain(mut self, domain: Arc<dyn Domain>) -> Self {
        self.domain = domain;
        self
    }

    /// The same agent reporting its main model as `name` in [`TurnReport::models`].
    pub fn with_model_name(mut self, name: impl Into<String>) -> Self {
        self.model_name = name.into();
        self
    }

    /// The same agent with a second model, `name`, that writes each turn's final answer
    /// (streamed when the caller streams), given the conversation, memory and tool results,
    /// and never offered tools. The main model then only chooses tools: its closing text is
    /// replaced by the answer model's.
    pub fn with_answer_model(mut self, model: Arc<dyn ChatModel>, name: impl Into<String>) -> Self {
        self.answer_model = Some(AnswerModel {
            model,
            name: name.into(),
        });
        self
    }

    /// The one guarded call path every tool call goes through.
    pub fn gate(&self) -> &CallGate {
        &self.gate
    }

    /// The domain the agent serves.
    pub fn domain(&self) -> &Arc<dyn Domain> {
        &self.domain
    }

    /// The agent's store (audit log, actions, stats).
    pub fn store(&self) -> &Arc<AgentStore> {
        &self.store
    }

    /// The registered tools.
    pub fn tools(&self) -> &ToolRegistry {
        self.gate.tools()
    }

    /// The chat model.
    pub fn model(&self) -> &Arc<dyn ChatModel> {
        &self.model
    }

    /// The agent's tunables.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Waits (at most [`AgentConfig::session_wait`]) until no other turn of `session` runs,
    /// and holds it until the returned guard is dropped.
    async fn hold_session(&self, session: &str) -> Result<SessionHold<'_>, AgentError> {
        let deadline = Instant::now() + self.config.session_wait;
        loop {
            if let Some(owner) = self.gate.locks().try_own("session", session)? {
                // Holding the lock, any holder recorded in the row is gone.
                let (s, token) = (session.to_string(), owner.token().to_string());
                self.blocking(move |st| st.lock_session(&s, &token, |_| false))
                    .await?;
                return Ok(SessionHold {
                    store: &self.store,
                    session: session.to_string(),
                    owner,
                });
            }
            if Instant::now() >= deadline {
                return Err(AgentError::SessionBusy(session.to_string()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Checks a session id a caller named (1 to 256 characters, no control characters)
    /// before anything is written for it: [`AgentError::Invalid`] otherwise.
    pub fn check_session_id(session: &str) -> Result<(), AgentError> {
        crate::conversation::validate_session_id(session).map_err(|e| match e {
            crate::conversation::ConversationError::InvalidSession(m) => {
                AgentError::Invalid(format!("invalid session id: {m}"))
            }
            other => AgentError::Invalid(other.to_string()),
        })
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
        cfg.system_prompt = self.domain.rules(merchant);
        Ok(ConversationBuffer::open(
            Arc::clone(&self.conversations),
            Arc::clone(&self.model),
            session,
            cfg,
        )
        .await?)
    }

    /// Runs one user turn.
    pub async fn ask(
        &self,
        merchant: &MerchantId,
        session: &str,
        message: &str,
        progress: &dyn Progress,
    ) -> Result<TurnReport, AgentError> {
        Self::check_session_id(session)?;
        if message.trim().is_empty() {
            return Err(AgentError::Invalid("the message is empty".into()));
        }
        let _hold = self.hold_session(session).await?;
        let (s, m) = (session.to_string(), merchant.clone());
        self.blocking(move |st| st.begin_session(&s, &m)).await?;
        let mut buffer = self.open_buffer(merchant, session).await?;
        buffer.append(Message::user(message)).await?;
        let s = session.to_string();
        let turn = self.blocking(move |st| st.next_turn(&s)).await?;
        self.run_turn(
            merchant,
            session,
            turn,
            message,
            buffer,
            Vec::new(),
            "message",
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
        Self::check_session_id(session)?;
        let _hold = self.hold_session(session).await?;
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
            return Err(AgentError::PlanAction(action.id));
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
            let run = self
                .gate
                .execute_approved(&action, turn, &NoHook, progress)
                .await?;
            report = run.result.report(&action.id, &action.tool);
            if !run.ran_now {
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
                    clarification: None,
                    memory: MemoryContext::default(),
                    models: Vec::new(),
                });
            }
            let how = if run.result.outcome.succeeded() {
                "It was executed"
            } else {
                "It was run but FAILED"
            };
            // Secrets stay out of the note: it reaches the model, the conversation and the
            // turn record (the audit redacts them too).
            format!(
                "[operator] A human operator APPROVED action {} ({} with {}). {how}; \
                 result: {}",
                action.id,
                action.tool,
                guards::redact(&action.args),
                guards::redact(&report.result)
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
            self.gate.audit(&merchant, session, turn, &report, None)?;
            format!(
                "[operator] A human operator REJECTED action {} ({} with {}). It was NOT \
                 executed. Tell the merchant and offer alternatives.",
                action.id,
                action.tool,
                guards::redact(&action.args)
            )
        };
        let mut buffer = self.open_buffer(&merchant, session).await?;
        buffer.append(Message::user(note.clone())).await?;
        self.run_turn(
            &merchant,
            session,
            turn,
            &note,
            buffer,
            vec![report],
            if approve { "approve" } else { "reject" },
            progress,
        )
        .await
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
        kind: &'static str,
        progress: &dyn Progress,
    ) -> Result<TurnReport, AgentError> {
        // Only a merchant's message may end with a clarifying question (not an operator's
        // continuation).
        let may_clarify = kind == "message";
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
            main_use: ModelUse {
                model: self.model_name.clone(),
                role: if self.answer_model.is_some() {
                    "tools"
                } else {
                    "tools_and_answer"
                }
                .into(),
                ..ModelUse::default()
            },
            answer_use: None,
            kind,
            message: query.to_string(),
        };
        let recorded = self
            .recorded_memory
            .as_ref()
            .and_then(|r| r.memory_for(merchant, session, query));
        st.memory = match recorded {
            Some(m) => m,
            None => self.recall(merchant, query).await?,
        };
        st.memory.summary = Some(buffer.summary().to_string()).filter(|s| !s.is_empty());
        if progress.wants_stream() {
            progress.memory_ready(&serde_json::to_value(&st.memory).unwrap_or(Value::Null));
        }
        let sections = prompt::memory_sections(&st.memory);
        let mut tool_defs: Vec<ToolDefinition> = self
            .tools()
            .tools()
            .map(|t| ToolDefinition::function(t.name(), t.description(), t.parameters().clone()))
            .collect();
        // A user turn may end with one clarifying question (not when a registered tool already
        // has the name).
        let may_clarify = may_clarify && self.tools().get(ASK_USER_TOOL).is_none();
        if may_clarify {
            tool_defs.push(ask_user_definition());
        }

        let mut stop = None;
        for _round in 0..self.config.max_llm_rounds {
            let mut messages = buffer.messages();
            match messages.first_mut() {
                Some(Message::System { content }) => content.push_str(&sections),
                _ => messages.insert(0, Message::system(sections.clone())),
            }
            self.pace_llm().await;
            let request = ChatRequest::new(messages.clone()).with_tools(tool_defs.clone());
            // With an answer model, the main model's text is never shown: it is not streamed.
            let stream_main = self.answer_model.is_none();
            let t0 = Instant::now();
            let response = match self
                .call_model(&*self.model, request, progress, stream_main)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    self.finish(&st, "error", "").await?;
                    return Err(AgentError::Llm(e));
                }
            };
            st.usage += response.usage;
            st.main_use.add(&response.usage, t0.elapsed());
            if response.tool_calls.is_empty() {
                let answer = match &self.answer_model {
                    None => response.content.clone().unwrap_or_default(),
                    Some(am) => {
                        // The answer model writes the reply from the same conversation, memory
                        // and tool results, without tools.
                        self.pace_llm().await;
                        let t1 = Instant::now();
                        let written = match self
                            .call_model(&*am.model, ChatRequest::new(messages), progress, true)
                            .await
                        {
                            Ok(r) => r,
                            Err(e) => {
                                self.finish(&st, "error", "").await?;
                                return Err(AgentError::Llm(e));
                            }
                        };
                        st.usage += written.usage;
                        let mut used = ModelUse {
                            model: am.name.clone(),
                            role: "answer".into(),
                            ..ModelUse::default()
                        };
                        used.add(&written.usage, t1.elapsed());
                        st.answer_use = Some(used);
                        written.content.unwrap_or_default()
                    }
                };
                buffer.append(Message::assistant(answer.clone())).await?;
                stop = Some(Stop::Answer(answer));
                break;
            }
            buffer
                .append(Message::Assistant {
                    content: response.content.clone(),
                    tool_calls: response.tool_calls.clone(),
                })
                .await?;
            // A clarifying question ends the turn before any call of the same reply runs.
            let question = response
                .tool_calls
                .iter()
                .filter(|c| may_clarify && c.name() == ASK_USER_TOOL)
                .find_map(|c| clarifying_question(&c.function.arguments));
            if let Some(q) = question {
                for call in &response.tool_calls {
                    let told = if call.name() == ASK_USER_TOOL {
                        json!({"status": "asked", "message": "the question was shown to the merchant; wait for the reply"})
                    } else {
                        json!({"error": "not_executed", "message": "not run: the turn asked the merchant a question first"})
                    };
                    buffer
                        .append(Message::tool(call.id.clone(), told.to_string()))
                        .await?;
                }
                stop = Some(Stop::Clarify(q));
                break;
            }
            let mut outcome = None;
            for call in &response.tool_calls {
                if progress.wants_stream() {
                    let raw = &call.function.arguments;
                    let args =
                        serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.clone()));
                    progress.tool_call(&call.id, &call.function.name, &args);
                }
                let (report, next) = if outcome.is_some() {
                    // The turn is already stopping: answer the remaining calls without running them.
                    (self.skipped(call), None)
                } else {
                    self.handle_call(&mut st, call, progress).await?
                };
                buffer
                    .append(Message::tool(call.id.clone(), report.result.to_string()))
                    .await?;
                if outcome.is_none() {
                    outcome = next;
                }
                if progress.wants_stream() {
                    progress.tool_result(&report);
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
        let mut clarification = None;
        let (answer, pending, escalation, outcome) = match stop {
            Stop::Answer(a) => (a, None, None, "answer"),
            Stop::Clarify(q) => {
                buffer.append(Message::assistant(q.clone())).await?;
                clarification = Some(Clarification {
                    question: q.clone(),
                });
                (q, None, None, "clarification")
            }
            Stop::Pending(p, a) => {
                buffer.append(Message::assistant(a.clone())).await?;
                (a, Some(p), None, "pending_action")
            }
            Stop::Escalate(reason) => {
                let ticket = self.escalate(&mut st, &reason, progress).await?;
                let a = format!(
                    "I couldn't resolve this automatically ({reason}), so I've escalated it to our \
                     support team: ticket {ticket} (priority high). They will follow up."
                );
                buffer.append(Message::assistant(a.clone())).await?;
                (
                    a,
                    None,
                    Some(EscalationRef { ticket_id: ticket }),
                    "escalation",
                )
            }
        };
        st.memory.summary = Some(buffer.summary().to_string()).filter(|s| !s.is_empty());
        self.finish(&st, outcome, &answer).await?;
        let mut models = vec![st.main_use];
        models.extend(st.answer_use);
        Ok(TurnReport {
            session: session.to_string(),
            merchant: merchant.as_str().to_string(),
            answer,
            turns: turn,
            tool_calls: st.calls,
            pending_action: pending,
            escalation,
            clarification,
            memory: st.memory,
            models,
        })
    }

    /// One call of `model`; streamed to `progress` when it asks for that and `stream` allows.
    async fn call_model(
        &self,
        model: &dyn ChatModel,
        request: ChatRequest,
        progress: &dyn Progress,
        stream: bool,
    ) -> Result<crate::llm::ChatResponse, crate::llm::LlmError> {
        if !(stream && progress.wants_stream()) {
            return model.chat(request).await;
        }
        let events = model.stream(request).await?;
        crate::llm::collect_stream_with(events, |delta| progress.text_delta(delta)).await
    }

    /// Records the finished turn (on the blocking pool).
    async fn finish(&self, st: &TurnState, outcome: &str, answer: &str) -> Result<(), AgentError> {
        let mut models = vec![st.main_use.clone()];
        models.extend(st.answer_use.clone());
        let record = TurnRecord {
            outcome: outcome.to_string(),
            kind: st.kind.to_string(),
            message: st.message.clone(),
            answer: answer.to_string(),
            models,
            latency_ms: st.started.elapsed().as_secs_f64() * 1e3,
            prompt_tokens: st.usage.prompt_tokens,
            completion_tokens: st.usage.completion_tokens,
            context: prompt::record_json(&st.memory),
        };
        let (session, merchant, turn) = (st.session.clone(), st.merchant.clone(), st.turn);
        self.blocking(move |store| store.record_turn(&session, &merchant, turn, &record))
            .await
    }

    /// Runs `f` on the agent's store without holding an async worker (`crate::offload`).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&AgentStore) -> Result<T, AgentError> + Send + 'static,
    ) -> Result<T, AgentError> {
        let store = Arc::clone(&self.store);
        crate::offload::blocking(move || f(&store)).await?
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
        // Embedding and the knowledge-base search are CPU and SQLite work: off the async
        // workers, on the blocking pool.
        let embedder = Arc::clone(&self.embedder);
        let kb = self.kb.clone();
        let k = self.config.kb_k;
        let text = query.to_string();
        let (vector, kb) = tokio::task::spawn_blocking(move || {
            let vector = embedder.embed_one(&text)?;
            let hits = match kb {
                Some(kb) => kb
                    .search_with_vector(&text, &vector, k, SearchMode::Hybrid)?
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
            Ok::<_, AgentError>((vector, hits))
        })
        .await??;
        let mut episodes: Vec<EpisodeContext> = Vec::new();
        let recent = self
            .episodes
            .recent(merchant, self.config.recent_episodes)
            .await?;
        let similar = self
            .episodes
            .similar(merchant, &vector, self.config.similar_episodes)
            .await?;
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
                    occurred_at: ep.occurred_at.map(|t| t.to_rfc3339()),
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
            args: gate::parse_args(&call.function.arguments),
            status: "error".into(),
            result: json!({"error": "not_executed", "message": "not run: this turn stopped at an earlier call"}),
            latency_ms: 0.0,
        }
    }

    /// Sends one call through the gate (after the turn's own cap) and decides whether the turn
    /// goes on.
    async fn handle_call(
        &self,
        st: &mut TurnState,
        call: &ToolCall,
        progress: &dyn Progress,
    ) -> Result<(ToolCallReport, Option<Stop>), AgentError> {
        let name = call.name().to_string();
        if st.executed >= self.config.max_tool_calls {
            let reason = format!(
                "the limit of {} tool calls per turn was reached",
                self.config.max_tool_calls
            );
            let report = ToolCallReport {
                id: call.id.clone(),
                tool: name,
                args: gate::parse_args(&call.function.arguments),
                status: "error".into(),
                result: json!({"error": "tool_call_limit", "message": reason}),
                latency_ms: 0.0,
            };
            self.gate.audit(
                &st.merchant,
                &st.session,
                st.turn,
                &report,
                Some(&self.model_name),
            )?;
            return Ok((report, Some(Stop::Escalate(reason))));
        }
        st.executed += 1;
        let policy = self.config.call_policy();
        let req = CallRequest {
            merchant: &st.merchant,
            session: &st.session,
            turn: st.turn,
            call_id: &call.id,
            tool: &name,
            raw_args: &call.function.arguments,
            idempotency_key: None,
            policy: &policy,
            model: Some(&self.model_name),
        };
        let result = self
            .gate
            .call(&req, &mut TurnLoopGuard(&mut st.seen), &NoHook, progress)
            .await?;
        let report = result.report(&call.id, &name);
        let stop = match &result.outcome {
            CallOutcome::PendingApproval { action_id } => {
                let answer = format!(
                    "This needs a human's approval before it can run: {} with {}. Action id: {}.",
                    name,
                    guards::redact(&result.args),
                    action_id
                );
                let pending = PendingRef {
                    id: action_id.clone(),
                    tool: name.clone(),
                    args: result.args.clone(),
                };
                Some(Stop::Pending(pending, answer))
            }
            CallOutcome::Failed(ToolError::Transient(_) | ToolError::Internal(_)) => {
                // Failed after the retries: stop guessing and hand the case to a human.
                Some(Stop::Escalate(format!(
                    "{name} failed {} times",
                    result.attempts
                )))
            }
            _ => None,
        };
        Ok((report, stop))
    }

    /// Escalates the turn through the domain's escalation call (through the gate like any
    /// call) and returns the reference people quote (a ticket id).
    async fn escalate(
        &self,
        st: &mut TurnState,
        reason: &str,
        progress: &dyn Progress,
    ) -> Result<String, AgentError> {
        let case = EscalationCase {
            session: &st.session,
            merchant: &st.merchant,
            reason,
            tools_tried: st.calls.iter().map(|c| c.tool.as_str()).collect(),
        };
        let Some(call) = self.domain.escalation(&case) else {
            return Err(AgentError::Escalation(format!(
                "{reason}, and this domain names no escalation"
            )));
        };
        let policy = CallPolicy {
            rate_limit_wait: Duration::from_secs(10),
            ..self.config.call_policy()
        };
        let raw = call.args.to_string();
        let call_id = format!("escalation_{}", st.turn);
        if progress.wants_stream() {
            progress.tool_call(&call_id, &call.tool, &call.args);
        }
        let req = CallRequest {
            merchant: &st.merchant,
            session: &st.session,
            turn: st.turn,
            call_id: &call_id,
            tool: &call.tool,
            raw_args: &raw,
            idempotency_key: None,
            policy: &policy,
            model: None,
        };
        let result = self
            .gate
            .call(&req, &mut NoLoopGuard, &NoHook, &Silent)
            .await?;
        let report = result.report(&call_id, &call.tool);
        let ticket = match &result.outcome {
            CallOutcome::Ok(v) => self
                .domain
                .escalation_ref(v)
                .unwrap_or_else(|| "unknown".into()),
            other => {
                return Err(AgentError::Escalation(format!(
                    "{} did not open a case: {}",
                    call.tool,
                    other.error_text().unwrap_or_default()
                )));
            }
        };
        if progress.wants_stream() {
            progress.tool_result(&report);
        }
        st.calls.push(report);
        Ok(ticket)
    }

    /// Saves `summary` as an episode of `merchant` (embedded for similarity search), with
    /// `metadata`.
    pub(crate) async fn remember(
        &self,
        merchant: &MerchantId,
        summary: &str,
        metadata: Value,
    ) -> Result<crate::episodic::Episode, AgentError> {
        let embedder = Arc::clone(&self.embedder);
        let text = summary.to_string();
        let vector = tokio::task::spawn_blocking(move || embedder.embed_one(&text)).await??;
        let draft = EpisodeDraft::new(summary)
            .with_metadata(metadata)
            .with_embedding(vector);
        Ok(self.episodes.save(merchant, draft).await?)
    }

    /// Ends `session`: summarises it into an episode for its merchant (the model writes the
    /// summary; if it cannot, a plain transcript digest is kept instead, so nothing is lost).
    ///
    /// Idempotent: ending a session again without a new turn since returns the episode saved
    /// the first time and saves nothing.
    pub async fn end_session(&self, session: &str) -> Result<crate::episodic::Episode, AgentError> {
        Self::check_session_id(session)?;
        let _hold = self.hold_session(session).await?;
        let merchant = self
            .store
            .session_merchant(session)?
            .ok_or_else(|| AgentError::UnknownSession(session.to_string()))?;
        if let Some(id) = self.store.ended_episode(session)? {
            let saved = match id.parse::<crate::episodic::EpisodeId>() {
                Ok(id) => self.episodes.get(&merchant, id).await?,
                Err(_) => None,
            };
            // An episode erased since (`episodes forget`) is written again below.
            if let Some(episode) = saved {
                return Ok(episode);
            }
        }
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

//! The one guarded call path: every tool call memex makes — a chat turn's calls, a plan's steps,
//! an approved action, an escalation — goes through [`CallGate`], in this order:
//!
//! 1. argument parsing and schema validation (`invalid_args`, `unknown_tool`);
//! 2. merchant scope (the [`ToolContext`] carries the caller's merchant; tools filter on it);
//! 3. the loop guard the caller supplies ([`LoopGuard`]: `loop_detected`);
//! 4. the approval gate: an irreversible tool becomes an `actions` row (`pending_approval`);
//! 5. the per-session cache of read-only results (`cached`);
//! 6. the per-tool rate limit (`rate_limited`), waited for up to the policy's bound;
//! 7. the call, under one [`CallPolicy`] (timeout per attempt, retries of transient and
//!    internal failures with doubling backoff; a result object carrying `"error"` is a failure);
//! 8. an audit row per attempt and per refusal;
//! 9. metrics ([`GateMetrics`]).
//!
//! Approved actions have one executor, [`CallGate::execute_approved`]: the same claim (an OS
//! lock on the action plus a conditional UPDATE), the same policy, and the same final status
//! (`executed` or `failed`, never left `approved`) wherever the action came from.
//!
//! Chat and planner keep their own control flow (turn loop, step scheduler) and only call this.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use super::error::AgentError;
use super::guards::{call_key, redact, TokenBucket};
use super::report::{Progress, ToolCallReport};
use super::runner::RunnerLocks;
use super::shared_cache::SharedToolCache;
use super::store::{ActionStatus, AgentStore, AuditEntry, PendingAction};
use crate::merchant::MerchantId;
use crate::tools::{Tool, ToolContext, ToolError, ToolRegistry};

/// How a call is attempted: one policy shape for every path.
#[derive(Debug, Clone, PartialEq)]
pub struct CallPolicy {
    /// Longest a single attempt may take (then it is a transient failure).
    pub timeout: Duration,
    /// Attempts before a transient or internal failure is final (at least 1).
    pub max_attempts: u32,
    /// Wait before the first retry; doubled for each further one.
    pub backoff: Duration,
    /// Longest wait for the tool's rate limit (zero: refuse at once with `rate_limited`).
    pub rate_limit_wait: Duration,
}

impl Default for CallPolicy {
    fn default() -> Self {
        CallPolicy {
            timeout: Duration::from_secs(60),
            max_attempts: 3,
            backoff: Duration::from_millis(200),
            rate_limit_wait: Duration::from_secs(10),
        }
    }
}

/// How a guarded call ended. The JSON status words are today's: see [`CallOutcome::status`].
#[derive(Debug, Clone, PartialEq)]
pub enum CallOutcome {
    /// The tool ran and returned this result.
    Ok(Value),
    /// A fresh cached result of the same read-only call in this session.
    Cached(Value),
    /// The arguments did not parse or did not match the schema (the error object).
    InvalidArgs(Value),
    /// No such tool (the error object).
    UnknownTool(Value),
    /// The caller's loop guard refused a repeat (the object told to the model).
    LoopDetected(Value),
    /// An irreversible call held for a human: the approval id.
    PendingApproval {
        /// The approval (`act_…`).
        action_id: String,
    },
    /// No call slot within the policy's wait.
    RateLimited(Value),
    /// The tool failed for good (after the policy's retries when it was transient).
    Failed(ToolError),
}

impl CallOutcome {
    /// The status word of the audit log and `--json` reports.
    pub fn status(&self) -> &'static str {
        match self {
            CallOutcome::Ok(_) => "ok",
            CallOutcome::Cached(_) => "cached",
            CallOutcome::InvalidArgs(_) => "invalid_args",
            CallOutcome::UnknownTool(_) => "unknown_tool",
            CallOutcome::LoopDetected(_) => "loop_detected",
            CallOutcome::PendingApproval { .. } => "pending_approval",
            CallOutcome::RateLimited(_) => "rate_limited",
            CallOutcome::Failed(_) => "error",
        }
    }

    /// What the caller (the model, a plan step) is told.
    pub fn result(&self) -> Value {
        match self {
            CallOutcome::Ok(v)
            | CallOutcome::Cached(v)
            | CallOutcome::InvalidArgs(v)
            | CallOutcome::UnknownTool(v)
            | CallOutcome::LoopDetected(v)
            | CallOutcome::RateLimited(v) => v.clone(),
            CallOutcome::PendingApproval { action_id } => pending_result(action_id),
            CallOutcome::Failed(e) => e.to_json(),
        }
    }

    /// Whether the tool's result is usable (`ok` or `cached`).
    pub fn succeeded(&self) -> bool {
        matches!(self, CallOutcome::Ok(_) | CallOutcome::Cached(_))
    }

    /// `kind: message` of a refusal or failure (`None` when it succeeded or waits).
    pub fn error_text(&self) -> Option<String> {
        match self {
            CallOutcome::Ok(_) | CallOutcome::Cached(_) | CallOutcome::PendingApproval { .. } => {
                None
            }
            CallOutcome::Failed(e) => Some(format!("{}: {}", e.kind(), e.message())),
            other => {
                let v = other.result();
                let message = v.get("message").and_then(Value::as_str).unwrap_or("");
                Some(format!("{}: {message}", other.status()))
            }
        }
    }
}

/// What a pending approval tells the model or the plan.
pub fn pending_result(action_id: &str) -> Value {
    json!({
        "status": "pending_approval",
        "action_id": action_id,
        "message": "NOT executed. This irreversible action is held until a human operator approves it. Do not say it was done.",
    })
}

/// A finished trip through the gate.
#[derive(Debug, Clone, PartialEq)]
pub struct GateResult {
    /// How it ended.
    pub outcome: CallOutcome,
    /// The arguments: validated when they were valid, else parsed (or the raw text).
    pub args: Value,
    /// Tool calls made (0 when a guard settled it).
    pub attempts: u32,
    /// Time spent in the tool, in milliseconds.
    pub latency_ms: f64,
}

impl GateResult {
    /// The report of this call as `ask --json` prints it.
    pub fn report(&self, call_id: &str, tool: &str) -> ToolCallReport {
        ToolCallReport {
            id: call_id.to_string(),
            tool: tool.to_string(),
            args: self.args.clone(),
            status: self.outcome.status().to_string(),
            result: self.outcome.result(),
            latency_ms: self.latency_ms,
        }
    }
}

/// One call asked of the gate.
#[derive(Debug, Clone)]
pub struct CallRequest<'a> {
    /// The merchant every tool is scoped to.
    pub merchant: &'a MerchantId,
    /// The session (cache, audit, actions).
    pub session: &'a str,
    /// Turn number for the audit log.
    pub turn: u32,
    /// The call id (model's id, `PLAN:STEP`, `escalation_N`); also an approval's call id.
    pub call_id: &'a str,
    /// The tool name as asked.
    pub tool: &'a str,
    /// The raw JSON arguments.
    pub raw_args: &'a str,
    /// Idempotency key for a write (a plan step's `PLAN:STEP`), if any.
    pub idempotency_key: Option<String>,
    /// Attempts, timeout, backoff, rate-limit wait.
    pub policy: &'a CallPolicy,
    /// The model that chose the call, for the audit (`None` for memex's own calls, a human's
    /// approval, a plan step, an MCP client).
    pub model: Option<&'a str>,
}

/// The caller's memory of calls already made (a turn's calls, a plan's steps).
pub trait LoopGuard: Send {
    /// What to tell the caller when `key` (tool + canonical arguments) repeats an earlier call
    /// that must not be repeated; `None` lets the call through.
    fn earlier(&self, key: &str, read_only: bool) -> Option<Value>;
    /// Remembers the outcome of `key`.
    fn record(&mut self, key: String, result: &Value);
}

/// A loop guard that lets everything through (escalations, approved actions).
#[derive(Debug, Default)]
pub struct NoLoopGuard;

impl LoopGuard for NoLoopGuard {
    fn earlier(&self, _key: &str, _read_only: bool) -> Option<Value> {
        None
    }
    fn record(&mut self, _key: String, _result: &Value) {}
}

/// Told before each attempt (the planner counts attempts in its store before they start, so a
/// crash leaves the step `running`).
pub trait AttemptHook: Sync {
    /// Attempt `n` (1-based) of this call is about to start with `args`.
    fn before_attempt(&self, n: u32, args: &Value) -> Result<(), AgentError>;
}

/// An attempt hook that does nothing.
#[derive(Debug, Default)]
pub struct NoHook;

impl AttemptHook for NoHook {
    fn before_attempt(&self, _n: u32, _args: &Value) -> Result<(), AgentError> {
        Ok(())
    }
}

/// Counters of the gate since the process started.
#[derive(Debug, Default)]
pub struct GateMetrics {
    calls: AtomicU64,
    attempts: AtomicU64,
    by_status: Mutex<HashMap<&'static str, u64>>,
}

/// A copy of [`GateMetrics`].
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct GateMetricsSnapshot {
    /// Calls that went through the gate.
    pub calls: u64,
    /// Tool invocations made (retries included).
    pub attempts: u64,
    /// Calls by final status word.
    pub by_status: std::collections::BTreeMap<String, u64>,
}

impl GateMetrics {
    fn record(&self, outcome: &CallOutcome, attempts: u32) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.attempts
            .fetch_add(u64::from(attempts), Ordering::Relaxed);
        if let Ok(mut m) = self.by_status.lock() {
            *m.entry(outcome.status()).or_insert(0) += 1;
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> GateMetricsSnapshot {
        GateMetricsSnapshot {
            calls: self.calls.load(Ordering::Relaxed),
            attempts: self.attempts.load(Ordering::Relaxed),
            by_status: self
                .by_status
                .lock()
                .map(|m| m.iter().map(|(k, v)| (k.to_string(), *v)).collect())
                .unwrap_or_default(),
        }
    }
}

/// Bounds of the per-session result cache.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheBounds {
    /// Sessions with a cache at once (least recently used dropped first).
    pub max_sessions: u64,
    /// Cached results per session.
    pub max_entries_per_session: u64,
    /// Time to live of one result.
    pub ttl: Duration,
}

impl Default for CacheBounds {
    fn default() -> Self {
        CacheBounds {
            max_sessions: 10_000,
            max_entries_per_session: 256,
            ttl: Duration::from_secs(300),
        }
    }
}

type SessionCache = moka::sync::Cache<String, Value>;

/// The per-session cache of read-only results, bounded in sessions, entries and age (moka).
struct ResultCaches {
    bounds: CacheBounds,
    sessions: moka::sync::Cache<String, Arc<SessionCache>>,
}

impl ResultCaches {
    fn new(bounds: CacheBounds) -> Self {
        ResultCaches {
            bounds,
            sessions: moka::sync::Cache::builder()
                .max_capacity(bounds.max_sessions)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .time_to_idle(bounds.ttl)
                .build(),
        }
    }

    fn get(&self, session: &str, key: &str) -> Option<Value> {
        self.sessions.get(session)?.get(key)
    }

    fn put(&self, session: &str, key: String, value: Value) {
        let bounds = self.bounds;
        let cache = self.sessions.get_with(session.to_string(), || {
            Arc::new(
                moka::sync::Cache::builder()
                    .max_capacity(bounds.max_entries_per_session)
                    .eviction_policy(moka::policy::EvictionPolicy::lru())
                    .time_to_live(bounds.ttl)
                    .build(),
            )
        });
        cache.insert(key, value);
    }

    fn clear(&self, session: &str) {
        self.sessions.invalidate(session);
    }
}

/// The guarded call path (see the module docs).
///
/// A gate's registry is its own; its store, runner locks, result cache, rate-limit buckets and
/// metrics can be shared with gates over other registries ([`CallGate::with_tools`]), so the
/// MCP server's tools and the agent's are limited, cached and counted as one.
pub struct CallGate {
    tools: ToolRegistry,
    store: Arc<AgentStore>,
    locks: Arc<dyn RunnerLocks>,
    caches: Arc<ResultCaches>,
    tool_rate: (f64, f64),
    buckets: Arc<Mutex<HashMap<String, TokenBucket>>>,
    action_policy: CallPolicy,
    metrics: Arc<GateMetrics>,
    /// The cross-session cache of read-only results, when turned on.
    shared: Option<Arc<dyn SharedToolCache>>,
    /// Time to live in the shared cache by tool (others: the session cache's TTL).
    shared_ttls: Arc<HashMap<String, Duration>>,
    /// A read-only tool → the read-only tool called when it still fails after its retries.
    fallbacks: Arc<HashMap<String, String>>,
    /// Tool sources that could not be reached when the registry was built: an approved
    /// action whose tool is missing may be one of theirs, so it is left for later.
    unavailable: Arc<Vec<String>>,
}

impl std::fmt::Debug for CallGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallGate")
            .field("tools", &self.tools.names())
            .field("action_policy", &self.action_policy)
            .finish_non_exhaustive()
    }
}

impl CallGate {
    /// A gate over `tools`, auditing into `store`; `tool_rate` is each tool's token bucket
    /// (capacity, refill per second); approved actions run under `action_policy`.
    pub fn new(
        tools: ToolRegistry,
        store: Arc<AgentStore>,
        cache: CacheBounds,
        tool_rate: (f64, f64),
        action_policy: CallPolicy,
    ) -> Self {
        let locks = store.runner_locks();
        CallGate {
            tools,
            store,
            locks,
            caches: Arc::new(ResultCaches::new(cache)),
            tool_rate,
            buckets: Arc::new(Mutex::new(HashMap::new())),
            action_policy,
            metrics: Arc::new(GateMetrics::default()),
            shared: None,
            shared_ttls: Arc::new(HashMap::new()),
            fallbacks: Arc::new(HashMap::new()),
            unavailable: Arc::new(Vec::new()),
        }
    }

    /// The same gate knowing that the tool sources `sources` were down when its registry was
    /// built: an approved action whose tool is not registered is then left as it is (to be
    /// approved again) instead of failed.
    pub fn with_unavailable_sources(mut self, sources: Vec<String>) -> Self {
        self.unavailable = Arc::new(sources);
        self
    }

    /// The same gate with `fallbacks` (tool → fallback tool). Only read-only tools fall back,
    /// and only to read-only tools; `sources::check_fallbacks` refuses other tables at start.
    pub fn with_fallbacks(mut self, fallbacks: HashMap<String, String>) -> Self {
        self.fallbacks = Arc::new(fallbacks);
        self
    }

    /// The same gate with read-only results also cached across sessions, per merchant, in
    /// `cache` (`None`: per session only), each tool's for its TTL in `ttls` (others: the
    /// session cache's). Any write or executed irreversible call of a merchant clears its
    /// entries.
    pub fn with_shared_cache(
        mut self,
        cache: Option<Arc<dyn SharedToolCache>>,
        ttls: HashMap<String, Duration>,
    ) -> Self {
        self.shared = cache;
        self.shared_ttls = Arc::new(ttls);
        self
    }

    /// Forgets cached results after a write of `merchant` in `session`.
    fn invalidate_after_write(&self, merchant: &MerchantId, session: &str) {
        self.invalidate_cache(session);
        if let Some(shared) = &self.shared {
            shared.invalidate(merchant);
        }
    }

    /// A gate over `tools` that shares this one's store, runner locks, result cache,
    /// rate-limit buckets (per tool name), action policy and metrics: a tool reachable from
    /// both registries has one rate limit and one set of counters.
    pub fn with_tools(&self, tools: ToolRegistry) -> CallGate {
        CallGate {
            tools,
            store: Arc::clone(&self.store),
            locks: Arc::clone(&self.locks),
            caches: Arc::clone(&self.caches),
            tool_rate: self.tool_rate,
            buckets: Arc::clone(&self.buckets),
            action_policy: self.action_policy.clone(),
            metrics: Arc::clone(&self.metrics),
            shared: self.shared.clone(),
            shared_ttls: Arc::clone(&self.shared_ttls),
            fallbacks: Arc::clone(&self.fallbacks),
            unavailable: Arc::clone(&self.unavailable),
        }
    }

    /// The registered tools.
    pub fn tools(&self) -> &ToolRegistry {
        &self.tools
    }

    /// The store the gate audits into.
    pub fn store(&self) -> &Arc<AgentStore> {
        &self.store
    }

    /// Runner ownership on the store's state (file locks for SQLite, leases for Redis).
    pub fn locks(&self) -> &dyn RunnerLocks {
        self.locks.as_ref()
    }

    /// The counters since the gate was built.
    pub fn metrics(&self) -> GateMetricsSnapshot {
        self.metrics.snapshot()
    }

    /// The policy approved actions run under.
    pub fn action_policy(&self) -> &CallPolicy {
        &self.action_policy
    }

    /// Sessions holding cached results now (after pending evictions are applied).
    pub fn cached_sessions(&self) -> u64 {
        self.caches.sessions.run_pending_tasks();
        self.caches.sessions.entry_count()
    }

    /// Forgets `session`'s cached results (a write happened).
    pub fn invalidate_cache(&self, session: &str) {
        self.caches.clear(session);
    }

    /// Runs one call through every guard (see the module docs).
    pub async fn call(
        &self,
        req: &CallRequest<'_>,
        guard: &mut dyn LoopGuard,
        hook: &dyn AttemptHook,
        progress: &dyn Progress,
    ) -> Result<GateResult, AgentError> {
        let settled = |outcome: CallOutcome, args: Value| GateResult {
            outcome,
            args,
            attempts: 0,
            latency_ms: 0.0,
        };
        // 1. Parse and validate; a merchant argument the model supplied to a tool that binds
        // it is removed first (the schema it saw has no such argument) and noted.
        let merchant_arg = self
            .tools
            .get(req.tool)
            .and_then(|t| t.merchant_arg().map(str::to_string));
        let (raw, model_merchant) = match &merchant_arg {
            Some(arg) => strip_argument(req.raw_args, arg),
            None => (req.raw_args.to_string(), None),
        };
        let args = match self.tools.validate(req.tool, &raw) {
            Ok(a) => a,
            Err(e) => {
                let outcome = if e.kind() == "unknown_tool" {
                    CallOutcome::UnknownTool(e.to_json())
                } else {
                    CallOutcome::InvalidArgs(e.to_json())
                };
                return self
                    .finish(req, settled(outcome, parse_args(req.raw_args)))
                    .await;
            }
        };
        let Some(tool) = self.tools.get(req.tool) else {
            let e =
                json!({"error": "unknown_tool", "message": format!("unknown tool {}", req.tool)});
            return self
                .finish(req, settled(CallOutcome::UnknownTool(e), args))
                .await;
        };
        // 2. Merchant scope: the tool's own merchant argument is the session's merchant.
        let args = bind_merchant(args, merchant_arg.as_deref(), req.merchant);
        let shown = note_override(&args, merchant_arg.as_deref(), model_merchant, req.merchant);
        let mut ctx = ToolContext::new(req.merchant.clone(), req.session);
        if let (false, Some(key)) = (tool.read_only(), &req.idempotency_key) {
            ctx = ctx.with_idempotency_key(key.clone());
        }
        // 3. Loop guard.
        let key = call_key(req.tool, &args);
        if let Some(told) = guard.earlier(&key, tool.read_only()) {
            return self
                .finish(req, settled(CallOutcome::LoopDetected(told), shown))
                .await;
        }
        // 4. Approval gate.
        if tool.irreversible() {
            let store = Arc::clone(&self.store);
            let (session, merchant, turn) =
                (req.session.to_string(), req.merchant.clone(), req.turn);
            let (call_id, tool, held) =
                (req.call_id.to_string(), req.tool.to_string(), args.clone());
            let action_id = crate::offload::blocking(move || {
                store.create_action(&session, &merchant, turn, &call_id, &tool, &held)
            })
            .await??;
            let outcome = CallOutcome::PendingApproval { action_id };
            guard.record(key, &outcome.result());
            return self.finish(req, settled(outcome, shown)).await;
        }
        // 5. Cache: the merchant's shared one when on, else this session's.
        if tool.read_only() {
            let hit = match &self.shared {
                Some(shared) => {
                    let merchant = req.merchant.clone();
                    let (shared, k) = (Arc::clone(shared), key.clone());
                    crate::offload::blocking(move || shared.get(&merchant, &k))
                        .await
                        .ok()
                        .flatten()
                }
                None => self.caches.get(req.session, &key),
            };
            if let Some(hit) = hit {
                guard.record(key, &hit);
                return self
                    .finish(req, settled(CallOutcome::Cached(hit), shown))
                    .await;
            }
        }
        // 6. Rate limit.
        if !self
            .acquire_token(req.tool, req.policy.rate_limit_wait)
            .await
        {
            let told = json!({"error": "rate_limited", "message": format!("{} is being called too often; wait before calling it again", req.tool)});
            return self
                .finish(req, settled(CallOutcome::RateLimited(told), shown))
                .await;
        }
        // 7–8. The call under the policy, each attempt audited.
        let result = self
            .attempt(req, tool.as_ref(), &args, &shown, &ctx, hook, progress)
            .await?;
        // 9. Graceful degradation: a read-only tool that still failed tries its fallback.
        // Only when the source failed (down, timed out, broken): a definite answer such as
        // `not_found` or `refused` is not replaced by a fallback's.
        let source_failed = matches!(
            result.outcome,
            CallOutcome::Failed(
                ToolError::Transient(_) | ToolError::Unavailable(_) | ToolError::Internal(_)
            )
        );
        if tool.read_only() && source_failed && self.fallbacks.contains_key(req.tool) {
            if let Some(degraded) = self.fall_back(req, &args, &result, hook, progress).await? {
                guard.record(key, &degraded.outcome.result());
                self.metrics.record(&degraded.outcome, degraded.attempts);
                return Ok(degraded);
            }
        }
        match &result.outcome {
            CallOutcome::Ok(value) => {
                if tool.read_only() {
                    self.caches.put(req.session, key.clone(), value.clone());
                    if let Some(shared) = &self.shared {
                        let ttl = self
                            .shared_ttls
                            .get(req.tool)
                            .copied()
                            .unwrap_or(self.caches.bounds.ttl);
                        let (shared, merchant) = (Arc::clone(shared), req.merchant.clone());
                        let (k, v) = (key.clone(), value.clone());
                        let _ =
                            crate::offload::blocking(move || shared.put(&merchant, &k, &v, ttl))
                                .await;
                    }
                } else {
                    let (this_merchant, session) = (req.merchant.clone(), req.session.to_string());
                    if let Some(shared) = self.shared.clone() {
                        let _ = crate::offload::blocking(move || shared.invalidate(&this_merchant))
                            .await;
                    }
                    self.invalidate_cache(&session);
                }
                guard.record(key, value);
            }
            other => guard.record(key, &other.result()),
        }
        self.metrics.record(&result.outcome, result.attempts);
        Ok(result)
    }

    /// Audits and counts a call settled without running the tool.
    async fn finish(&self, req: &CallRequest<'_>, r: GateResult) -> Result<GateResult, AgentError> {
        self.audit_off_worker(
            req.merchant,
            req.session,
            req.turn,
            &r.report(req.call_id, req.tool),
            req.model,
        )
        .await?;
        self.metrics.record(&r.outcome, 0);
        Ok(r)
    }

    /// Calls the fallbacks of `req.tool` in turn (same arguments, each bound to the merchant
    /// its own way, each attempt audited under its own name and the same call id) until one
    /// succeeds: its result goes back marked as a fallback's. `None` when none did (or none
    /// could take the arguments): the original failure stands.
    async fn fall_back(
        &self,
        req: &CallRequest<'_>,
        args: &Value,
        failed: &GateResult,
        hook: &dyn AttemptHook,
        progress: &dyn Progress,
    ) -> Result<Option<GateResult>, AgentError> {
        let first_error = failed.outcome.error_text().unwrap_or_default();
        let mut from = req.tool.to_string();
        let mut attempts = failed.attempts;
        let mut latency_ms = failed.latency_ms;
        let primary_arg = self
            .tools
            .get(req.tool)
            .and_then(|t| t.merchant_arg().map(str::to_string));
        for _ in 0..self.fallbacks.len() {
            let Some(next) = self.fallbacks.get(&from).cloned() else {
                break;
            };
            let Some(fb) = self.tools.get(&next) else {
                break;
            };
            if !fb.read_only() {
                break;
            }
            let mut plain = args.clone();
            if let (Some(arg), Some(obj)) = (&primary_arg, plain.as_object_mut()) {
                obj.remove(arg);
            }
            let fb_arg = fb.merchant_arg().map(str::to_string);
            let (raw, _) = match &fb_arg {
                Some(arg) => strip_argument(&plain.to_string(), arg),
                None => (plain.to_string(), None),
            };
            let Ok(valid) = self.tools.validate(&next, &raw) else {
                break;
            };
            let valid = bind_merchant(valid, fb_arg.as_deref(), req.merchant);
            if !self.acquire_token(&next, req.policy.rate_limit_wait).await {
                break;
            }
            let sub = CallRequest {
                tool: &next,
                ..req.clone()
            };
            let ctx = ToolContext::new(req.merchant.clone(), req.session);
            let r = self
                .attempt(&sub, fb.as_ref(), &valid, &valid, &ctx, hook, progress)
                .await?;
            attempts += r.attempts;
            latency_ms += r.latency_ms;
            if let CallOutcome::Ok(value) = r.outcome {
                return Ok(Some(GateResult {
                    outcome: CallOutcome::Ok(json!({
                        "fallback": {
                            "for": req.tool,
                            "tool": next,
                            "because": first_error,
                            "note": format!("{} failed; this is the result of its fallback {next}, which may be less complete or less fresh", req.tool),
                        },
                        "result": value,
                    })),
                    args: failed.args.clone(),
                    attempts,
                    latency_ms,
                }));
            }
            from = next;
        }
        Ok(None)
    }

    /// The attempt loop: each attempt told to `hook`, cut at the timeout, audited (with
    /// `shown`, the arguments as the audit records them); a result object carrying `"error"`
    /// is a failure; transient and internal failures are retried with doubling backoff up to
    /// the policy's attempts.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        req: &CallRequest<'_>,
        tool: &dyn Tool,
        args: &Value,
        shown: &Value,
        ctx: &ToolContext,
        hook: &dyn AttemptHook,
        progress: &dyn Progress,
    ) -> Result<GateResult, AgentError> {
        let max = req.policy.max_attempts.max(1);
        // A write to an outside service that failed in transit may have happened: it is never
        // retried, and a timeout is reported as `unavailable`, not as transient.
        let outside_write = !tool.read_only() && tool.origin().kind != "builtin";
        let mut tries = 0u32;
        let mut total_ms = 0.0;
        loop {
            tries += 1;
            hook.before_attempt(tries, args)?;
            progress.tool_started(&tool.progress(args));
            let t0 = Instant::now();
            let limit = req.policy.timeout;
            let outcome = match tokio::time::timeout(limit, tool.call(args.clone(), ctx)).await {
                Ok(r) => r,
                Err(_) if outside_write => Err(ToolError::Unavailable(format!(
                    "{} did not answer within {:.1} s; the call was not retried (it may have reached the service)",
                    req.tool,
                    limit.as_secs_f64()
                ))),
                Err(_) => Err(ToolError::Transient(format!(
                    "{} did not answer within {:.1} s",
                    req.tool,
                    limit.as_secs_f64()
                ))),
            };
            let outcome = match outcome {
                Ok(v) if v.get("error").is_some_and(Value::is_string) => Err(from_result(&v)),
                other => other,
            };
            let latency_ms = t0.elapsed().as_secs_f64() * 1e3;
            total_ms += latency_ms;
            let result = GateResult {
                outcome: match outcome {
                    Ok(v) => CallOutcome::Ok(v),
                    Err(e) => CallOutcome::Failed(e),
                },
                args: shown.clone(),
                attempts: tries,
                latency_ms,
            };
            self.audit_off_worker(
                req.merchant,
                req.session,
                req.turn,
                &result.report(req.call_id, req.tool),
                req.model,
            )
            .await?;
            if let CallOutcome::Failed(e) = &result.outcome {
                let transient = matches!(e, ToolError::Transient(_) | ToolError::Internal(_));
                if transient && tries < max && !outside_write {
                    let backoff = req.policy.backoff * 2u32.saturating_pow(tries - 1);
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            }
            return Ok(GateResult {
                latency_ms: total_ms,
                ..result
            });
        }
    }

    /// Waits (at most `max_wait`) for a token of `tool`'s rate limit; false when none came.
    pub async fn acquire_token(&self, tool: &str, max_wait: Duration) -> bool {
        let deadline = Instant::now() + max_wait;
        loop {
            let wait = match self.buckets.lock() {
                Ok(mut b) => {
                    let bucket = b
                        .entry(tool.to_string())
                        .or_insert_with(|| TokenBucket::new(self.tool_rate.0, self.tool_rate.1));
                    if bucket.try_take() {
                        return true;
                    }
                    bucket.wait_time()
                }
                Err(_) => return false,
            };
            if Instant::now() + wait > deadline {
                return false;
            }
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }

    /// Runs the approved irreversible `action` at most once, ever, wherever it came from: it
    /// is claimed (an OS lock on the action, then `pending`/`approved` → `approved` in one
    /// transaction; an `approved` row whose executor died is taken over), called under the
    /// gate's action policy with the action id as the tool's idempotency key and the action's
    /// merchant as its scope, every attempt audited under the action id, and left `executed`
    /// or `failed` — a tool that is no longer registered fails it too.
    ///
    /// An action that already ran reports its stored result with `ran_now: false`; a
    /// rejected one, or one another live approval is executing, is
    /// [`AgentError::AlreadyDecided`].
    pub async fn execute_approved(
        &self,
        action: &PendingAction,
        turn: u32,
        hook: &dyn AttemptHook,
        progress: &dyn Progress,
    ) -> Result<ApprovedRun, AgentError> {
        match action.status {
            ActionStatus::Rejected => {
                return Err(AgentError::AlreadyDecided {
                    action: action.id.clone(),
                    status: "rejected".into(),
                })
            }
            ActionStatus::Executed | ActionStatus::Failed => {
                let stored = action.result.clone().unwrap_or(Value::Null);
                let outcome = if action.status == ActionStatus::Executed {
                    CallOutcome::Ok(stored)
                } else {
                    CallOutcome::Failed(from_result(&stored))
                };
                return Ok(ApprovedRun {
                    result: GateResult {
                        outcome,
                        args: action.args.clone(),
                        attempts: 0,
                        latency_ms: 0.0,
                    },
                    ran_now: false,
                });
            }
            ActionStatus::Pending | ActionStatus::Approved => {}
        }
        if self.tools.get(&action.tool).is_none() && !self.unavailable.is_empty() {
            return Err(AgentError::ToolUnavailable {
                action: action.id.clone(),
                tool: crate::tools::quote_for_display(&action.tool),
                sources: self.unavailable.join(", "),
            });
        }
        let busy = || AgentError::AlreadyDecided {
            action: action.id.clone(),
            status: "being executed by another approval".into(),
        };
        let Some(owner) = self.locks.try_own("action", &action.id)? else {
            return Err(busy());
        };
        // Holding the lock, any executor recorded in the row is gone.
        if !self
            .store
            .claim_execution(&action.id, owner.token(), |_| false)?
        {
            return Err(busy());
        }
        let merchant = MerchantId::parse(&action.merchant).map_err(|e| AgentError::Corrupt {
            what: format!("the merchant of action {}", action.id),
            source: Box::new(e),
        })?;
        let req = CallRequest {
            merchant: &merchant,
            session: &action.session,
            turn,
            call_id: &action.id,
            tool: &action.tool,
            raw_args: "",
            idempotency_key: Some(action.id.clone()),
            policy: &self.action_policy,
            model: None,
        };
        let result = match self.tools.get(&action.tool) {
            None => {
                let e = ToolError::Internal(format!(
                    "tool {} is no longer registered",
                    crate::tools::quote_for_display(&action.tool)
                ));
                let r = GateResult {
                    outcome: CallOutcome::Failed(e),
                    args: action.args.clone(),
                    attempts: 0,
                    latency_ms: 0.0,
                };
                self.audit_off_worker(
                    &merchant,
                    &action.session,
                    turn,
                    &r.report(&action.id, &action.tool),
                    None,
                )
                .await?;
                r
            }
            Some(tool) => {
                let ctx = ToolContext::new(merchant.clone(), action.session.clone())
                    .with_idempotency_key(&action.id);
                self.attempt(
                    &req,
                    tool.as_ref(),
                    &action.args,
                    &action.args,
                    &ctx,
                    hook,
                    progress,
                )
                .await?
            }
        };
        let (to, stored) = match &result.outcome {
            CallOutcome::Ok(v) => (ActionStatus::Executed, v.clone()),
            other => (ActionStatus::Failed, other.result()),
        };
        self.store
            .transition(&action.id, &[ActionStatus::Approved], to, Some(&stored))?;
        self.invalidate_after_write(&merchant, &action.session);
        self.metrics.record(&result.outcome, result.attempts);
        drop(owner);
        Ok(ApprovedRun {
            result,
            ran_now: true,
        })
    }

    /// [`CallGate::audit`] on the blocking pool (SQLite is synchronous; async workers stay free).
    async fn audit_off_worker(
        &self,
        merchant: &MerchantId,
        session: &str,
        turn: u32,
        r: &ToolCallReport,
        model: Option<&str>,
    ) -> Result<(), AgentError> {
        let entry = audit_entry(merchant, session, turn, r, model);
        let store = Arc::clone(&self.store);
        crate::offload::blocking(move || store.audit(&entry)).await?
    }

    /// Writes one audit row (secrets redacted); `model` chose the call, if a model did.
    pub fn audit(
        &self,
        merchant: &MerchantId,
        session: &str,
        turn: u32,
        r: &ToolCallReport,
        model: Option<&str>,
    ) -> Result<(), AgentError> {
        self.store
            .audit(&audit_entry(merchant, session, turn, r, model))
    }
}

/// The audit row of `r` (secrets redacted).
fn audit_entry(
    merchant: &MerchantId,
    session: &str,
    turn: u32,
    r: &ToolCallReport,
    model: Option<&str>,
) -> AuditEntry {
    AuditEntry {
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
        model: model.map(str::to_string),
    }
}

/// What [`CallGate::execute_approved`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovedRun {
    /// The call's result (stored result when it ran earlier).
    pub result: GateResult,
    /// False when the action had already run and nothing ran now.
    pub ran_now: bool,
}

/// `raw` without the argument `arg` (re-serialised), and the value the model gave it, when
/// `raw` is a JSON object that has it; else `raw` unchanged.
fn strip_argument(raw: &str, arg: &str) -> (String, Option<Value>) {
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(mut obj)) => match obj.remove(arg) {
            Some(given) => (Value::Object(obj).to_string(), Some(given)),
            None => (raw.to_string(), None),
        },
        _ => (raw.to_string(), None),
    }
}

/// `args` with the tool's merchant argument set to the session's merchant.
fn bind_merchant(mut args: Value, arg: Option<&str>, merchant: &MerchantId) -> Value {
    if let (Some(arg), Some(obj)) = (arg, args.as_object_mut()) {
        obj.insert(
            arg.to_string(),
            Value::String(merchant.as_str().to_string()),
        );
    }
    args
}

/// The arguments as reports and the audit show them: the call's, plus
/// `"$merchant_override": {"argument", "model", "used"}` when the model supplied the merchant
/// argument itself (memex used the session's merchant instead).
fn note_override(
    args: &Value,
    arg: Option<&str>,
    model: Option<Value>,
    merchant: &MerchantId,
) -> Value {
    let mut shown = args.clone();
    if let (Some(arg), Some(model), Some(obj)) = (arg, model, shown.as_object_mut()) {
        obj.insert(
            "$merchant_override".into(),
            json!({"argument": arg, "model": model, "used": merchant.as_str()}),
        );
    }
    shown
}

/// The arguments as given: parsed JSON, else the raw text.
pub fn parse_args(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()))
}

/// A [`ToolError`] from a result object that reports an error (`{"error": KIND, "message",
/// "retryable"}`).
pub fn from_result(v: &Value) -> ToolError {
    let kind = v.get("error").and_then(Value::as_str).unwrap_or("error");
    let message = v
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("the tool reported {kind}"));
    let retryable = v.get("retryable").and_then(Value::as_bool).unwrap_or(false);
    match kind {
        "not_found" => ToolError::NotFound(message),
        "invalid_args" => ToolError::InvalidArgs(message),
        _ if retryable || kind == "transient" => ToolError::Transient(message),
        "internal" => ToolError::Internal(message),
        "unavailable" => ToolError::Unavailable(message),
        _ => ToolError::Refused(message),
    }
}

//! The executor: runs a stored plan's ready steps concurrently (bounded), each through the
//! agent's one guarded call path ([`CallGate`](crate::agent::CallGate): schema check of the
//! resolved arguments, merchant scope, the plan's loop guard, the approval gate, the read-only
//! cache, rate limits, the call under the plan's timeout and retry policy, the audit log), and
//! records every state change before moving on.
//!
//! Scheduling is a loop over the stored step states: skip what depends on a failed, skipped or
//! rejected step; start every pending step whose dependencies are done (up to the concurrency
//! bound); wait for one to finish; repeat until nothing runs and nothing can start.
//!
//! An irreversible step asks for one approval (`actions` row keyed by the call id
//! `PLAN:STEP`, so a crash never makes a second one) and waits. An approved action runs
//! through the gate's one executor for approved actions (the same claim, policy and final
//! status as a chat approval), under the plan's claim, with the step's attempts counted.

use std::collections::HashMap;
use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::{json, Value};

use super::blocking;
use super::config::PlannerConfig;
use super::error::PlanError;
use super::plan::{Step, StepStatus};
use super::refs;
use super::store::PlanStore;
use crate::agent::gate::{self, AttemptHook, CallOutcome, CallPolicy, CallRequest, LoopGuard};
use crate::agent::guards::call_key;
use crate::agent::{ActionStatus, Agent, AgentError, PendingAction, Progress, ToolCallReport};
use crate::merchant::MerchantId;
use crate::tools::ToolError;

/// A human decision taken in this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decision {
    /// Run this action.
    Approve(String),
    /// Never run this action.
    Reject(String),
}

/// What one execution of a plan works with.
pub(super) struct RunContext {
    pub plan_id: String,
    pub session: String,
    pub merchant: MerchantId,
    pub turn: u32,
    /// The decision this run carries out, if any.
    pub decision: Option<Decision>,
}

impl RunContext {
    fn approves(&self, action_id: &str) -> bool {
        matches!(&self.decision, Some(Decision::Approve(a)) if a == action_id)
    }
}

/// How a step's execution ended.
struct Outcome {
    index: usize,
    status: StepStatus,
    attempts: u32,
    result: Value,
    error: Option<String>,
    args: Value,
    action_id: Option<String>,
}

/// A step handed to [`Executor::run_step`].
struct Job {
    index: usize,
    step_id: String,
    tool_name: String,
    attempts: u32,
    /// The loop guard's view: `(step id, call key)` of the plan's other steps that made (or
    /// are making, or wait to make) a call.
    earlier: Vec<(String, String)>,
}

/// What [`Executor::prepare`] decided.
enum Prepared {
    /// Send the step's call, with these resolved arguments, through the gate.
    Run(Value),
    /// The step is settled without a call (a broken `$ref`, or an approval asked before).
    Settled(Settled),
}

/// A step state decided without running the tool.
struct Settled {
    status: StepStatus,
    result: Value,
    error: Option<String>,
    args: Option<Value>,
    action_id: Option<String>,
}

impl Settled {
    fn failed(kind: &str, msg: String, args: Option<Value>) -> Self {
        Settled {
            status: StepStatus::Failed,
            result: json!({"error": kind, "message": msg}),
            error: Some(format!("{kind}: {msg}")),
            args,
            action_id: None,
        }
    }
}

/// What one execution of a plan runs with: the agent (its gate and store), the plan store and
/// the planner's tunables, passed in by the planner.
pub(super) struct Executor<'a> {
    pub agent: &'a Agent,
    pub store: &'a Arc<PlanStore>,
    pub config: &'a PlannerConfig,
}

impl Executor<'_> {
    /// Drives the plan until no step runs and none can start.
    pub(super) async fn drive(
        &self,
        ctx: &RunContext,
        progress: &dyn Progress,
    ) -> Result<(), PlanError> {
        let plan_id = ctx.plan_id.clone();
        let (mut steps, planned) = blocking::plans(self.store, move |store| {
            Ok((store.steps(&plan_id)?, store.planned_args(&plan_id)?))
        })
        .await?;
        let planned: HashMap<String, Value> = planned.into_iter().collect();
        let index: HashMap<String, usize> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.clone(), i))
            .collect();
        // A step left `running` was interrupted: it runs again (same idempotency key). One
        // interrupted while executing its approved action goes back to its approval, which
        // finishes it (or records how it ended) without re-checking anything.
        for s in steps.iter_mut() {
            if s.status == StepStatus::Running {
                s.status = if s.action_id.is_some() {
                    StepStatus::PendingApproval
                } else {
                    StepStatus::Pending
                };
                self.save(ctx, s, None).await?;
            }
        }
        for step in steps.iter_mut() {
            if step.status == StepStatus::PendingApproval {
                self.settle_approval(ctx, step, progress).await?;
            }
        }

        let mut running = FuturesUnordered::new();
        let mut in_flight = vec![false; steps.len()];
        loop {
            let mut changed = true;
            while changed {
                changed = false;
                // Skip whatever can never run.
                for i in 0..steps.len() {
                    if steps[i].status != StepStatus::Pending {
                        continue;
                    }
                    let blocker = steps[i]
                        .depends_on
                        .iter()
                        .filter_map(|d| index.get(d))
                        .find(|&&d| steps[d].status.blocks_dependents())
                        .copied();
                    if let Some(d) = blocker {
                        let why =
                            format!("skipped: step {} {}", steps[d].id, steps[d].status.as_str());
                        steps[i].status = StepStatus::Skipped;
                        steps[i].error = Some(why);
                        steps[i].result = Value::Null;
                        self.save(ctx, &steps[i], None).await?;
                        changed = true;
                    }
                }
                // Start what is ready.
                for i in 0..steps.len() {
                    if running.len() >= self.config.max_concurrency.max(1) {
                        break;
                    }
                    if steps[i].status != StepStatus::Pending || in_flight[i] {
                        continue;
                    }
                    let ready = steps[i].depends_on.iter().all(|d| {
                        index
                            .get(d)
                            .is_some_and(|&j| steps[j].status == StepStatus::Done)
                    });
                    if !ready {
                        continue;
                    }
                    let planned_args = planned.get(&steps[i].id).cloned().unwrap_or(Value::Null);
                    match self.prepare(ctx, &steps, i, &planned_args).await? {
                        Prepared::Run(args) => {
                            let earlier = steps
                                .iter()
                                .filter(|s| {
                                    s.id != steps[i].id
                                        && matches!(
                                            s.status,
                                            StepStatus::Done
                                                | StepStatus::Running
                                                | StepStatus::PendingApproval
                                        )
                                })
                                .map(|s| (s.id.clone(), call_key(&s.tool, &s.args)))
                                .collect();
                            steps[i].args = args.clone();
                            steps[i].status = StepStatus::Running;
                            in_flight[i] = true;
                            let job = Job {
                                index: i,
                                step_id: steps[i].id.clone(),
                                tool_name: steps[i].tool.clone(),
                                attempts: steps[i].attempts,
                                earlier,
                            };
                            running.push(self.run_step(ctx, job, args, progress));
                        }
                        Prepared::Settled(s) => {
                            let step = &mut steps[i];
                            if let Some(a) = s.args {
                                step.args = a;
                            }
                            step.status = s.status;
                            step.result = s.result;
                            step.error = s.error;
                            if s.action_id.is_some() {
                                step.action_id = s.action_id;
                            }
                            let resolved = step.args.clone();
                            self.save(ctx, step, Some(&resolved)).await?;
                            if step.status == StepStatus::PendingApproval {
                                // Approved already (this run's decision, or before a crash)?
                                self.settle_approval(ctx, step, progress).await?;
                            }
                            changed = true;
                        }
                    }
                }
            }
            let Some(done) = running.next().await else {
                break;
            };
            let done: Outcome = done?;
            in_flight[done.index] = false;
            let s = &mut steps[done.index];
            s.status = done.status;
            s.attempts = done.attempts;
            s.result = done.result;
            s.error = done.error;
            s.args = done.args;
            if done.action_id.is_some() {
                s.action_id = done.action_id;
            }
            let resolved = s.args.clone();
            self.save(ctx, s, Some(&resolved)).await?;
        }
        Ok(())
    }

    /// Persists `step`'s state (and its resolved arguments when given), on the blocking pool.
    async fn save(
        &self,
        ctx: &RunContext,
        step: &Step,
        resolved: Option<&Value>,
    ) -> Result<(), PlanError> {
        let plan_id = ctx.plan_id.clone();
        let step_id = step.id.clone();
        let (status, attempts) = (step.status, step.attempts);
        let resolved = resolved.cloned();
        let result = (!step.result.is_null()).then(|| step.result.clone());
        let error = step.error.clone();
        let action_id = step.action_id.clone();
        blocking::plans(self.store, move |store| {
            store.update_step(
                &plan_id,
                &step_id,
                status,
                attempts,
                resolved.as_ref(),
                result.as_ref(),
                error.as_deref(),
                action_id.as_deref(),
            )
        })
        .await
    }

    /// Brings a step waiting for approval up to date with its action: runs it when a human
    /// approved it (in this run, or before a crash that interrupted its execution), records a
    /// rejection or an earlier execution, and otherwise leaves it waiting.
    async fn settle_approval(
        &self,
        ctx: &RunContext,
        step: &mut Step,
        progress: &dyn Progress,
    ) -> Result<(), PlanError> {
        let Some(action_id) = step.action_id.clone() else {
            return Ok(());
        };
        let Some(action) = self.action_by_id(&action_id).await? else {
            return Ok(());
        };
        match action.status {
            ActionStatus::Pending if !ctx.approves(&action_id) => {}
            ActionStatus::Pending | ActionStatus::Approved => {
                self.execute_approved(ctx, step, &action, progress).await?;
            }
            ActionStatus::Executed => {
                step.status = StepStatus::Done;
                step.result = action.result.unwrap_or(Value::Null);
                step.error = None;
                self.save(ctx, step, None).await?;
            }
            ActionStatus::Failed => {
                step.status = StepStatus::Failed;
                step.result = action.result.unwrap_or(Value::Null);
                step.error = Some(error_text(&step.result));
                self.save(ctx, step, None).await?;
            }
            ActionStatus::Rejected => {
                step.status = StepStatus::Rejected;
                step.error = Some(
                    "rejected: a human operator rejected this action; it was not executed".into(),
                );
                step.result = json!({"status": "rejected", "action_id": action_id});
                self.save(ctx, step, None).await?;
                let report = ToolCallReport {
                    id: action_id.clone(),
                    tool: step.tool.clone(),
                    args: step.args.clone(),
                    status: "rejected".into(),
                    result: step.result.clone(),
                    latency_ms: 0.0,
                };
                self.audit_once(ctx, report).await?;
            }
        }
        Ok(())
    }

    /// Runs an approved irreversible action for its step through the gate's one executor of
    /// approved actions (claim, policy, `executed`/`failed`), counting its attempts on the step.
    async fn execute_approved(
        &self,
        ctx: &RunContext,
        step: &mut Step,
        action: &PendingAction,
        progress: &dyn Progress,
    ) -> Result<(), PlanError> {
        let hook = StepAttempts {
            store: self.store,
            plan_id: &ctx.plan_id,
            step_id: &step.id,
            base: step.attempts,
        };
        let run = self
            .agent
            .gate()
            .execute_approved(action, ctx.turn, &hook, progress)
            .await
            .map_err(unwrap_hook)?;
        let r = run.result;
        step.attempts += r.attempts;
        step.args = action.args.clone();
        match r.outcome {
            CallOutcome::Ok(value) => {
                step.status = StepStatus::Done;
                step.result = value;
                step.error = None;
            }
            ref other => {
                let mut error = other.error_text().unwrap_or_default();
                if r.attempts > 1 {
                    error = format!("{error} (after {} attempts)", r.attempts);
                }
                step.status = StepStatus::Failed;
                step.result = other.result();
                step.error = Some(error);
            }
        }
        let resolved = step.args.clone();
        self.save(ctx, step, Some(&resolved)).await
    }

    /// Audits a decision once (a resume must not log the same rejection again).
    async fn audit_once(&self, ctx: &RunContext, report: ToolCallReport) -> Result<(), PlanError> {
        let session = ctx.session.clone();
        let (call_id, status) = (report.id.clone(), report.status.clone());
        let already = blocking::agent(self.agent.store(), move |store| {
            Ok(store
                .audit_log(&session)?
                .iter()
                .any(|e| e.call_id == call_id && e.status == status))
        })
        .await?;
        if !already {
            self.agent
                .gate()
                .audit(&ctx.merchant, &ctx.session, ctx.turn, &report, None)?;
        }
        Ok(())
    }

    /// The action `id`, read on the blocking pool.
    async fn action_by_id(&self, id: &str) -> Result<Option<PendingAction>, PlanError> {
        let id = id.to_string();
        blocking::agent(
            self.agent.store(),
            move |store| Ok(store.action_by_id(&id)?),
        )
        .await
    }

    /// Resolves a ready step's references; finds an approval the step asked for before a
    /// crash. Everything else (validation, loop guard, approval gate) is the gate's.
    async fn prepare(
        &self,
        ctx: &RunContext,
        steps: &[Step],
        i: usize,
        planned_args: &Value,
    ) -> Result<Prepared, PlanError> {
        let step = &steps[i];
        // A step that already asked for approval (a crash came before it was recorded as
        // waiting) goes straight back to that approval, with the arguments it holds.
        let irreversible = self
            .agent
            .tools()
            .get(&step.tool)
            .is_some_and(|t| t.irreversible());
        let existing = match &step.action_id {
            Some(id) => self.action_by_id(id).await?,
            None if irreversible => {
                let (session, call) = (ctx.session.clone(), call_id(ctx, step));
                blocking::agent(self.agent.store(), move |store| {
                    Ok(store.action_by_call(&session, &call)?)
                })
                .await?
            }
            None => None,
        };
        if let Some(action) = existing {
            return Ok(Prepared::Settled(Settled {
                status: StepStatus::PendingApproval,
                result: gate::pending_result(&action.id),
                error: None,
                args: Some(action.args),
                action_id: Some(action.id),
            }));
        }
        let results: HashMap<&str, &Value> = steps
            .iter()
            .filter(|s| s.status == StepStatus::Done)
            .map(|s| (s.id.as_str(), &s.result))
            .collect();
        match refs::resolve(planned_args, &results) {
            Ok(a) => Ok(Prepared::Run(a)),
            Err(e) => Ok(Prepared::Settled(Settled::failed(
                "unresolved_ref",
                e.to_string(),
                None,
            ))),
        }
    }

    /// Runs one ready step through the agent's gate (validation, merchant scope, the plan's
    /// loop guard, the approval gate, cache, rate limit, the call under the plan's policy,
    /// audit) and turns the outcome into the step's new state.
    async fn run_step(
        &self,
        ctx: &RunContext,
        job: Job,
        args: Value,
        progress: &dyn Progress,
    ) -> Result<Outcome, PlanError> {
        let Job {
            index,
            step_id,
            tool_name: name,
            attempts,
            earlier,
        } = job;
        let call_id = format!("{}:{}", ctx.plan_id, step_id);
        let raw = args.to_string();
        let policy = self.policy();
        let req = CallRequest {
            merchant: &ctx.merchant,
            session: &ctx.session,
            turn: ctx.turn,
            call_id: &call_id,
            tool: &name,
            raw_args: &raw,
            // A step that is run again after a crash must not act twice.
            idempotency_key: Some(call_id.clone()),
            policy: &policy,
            model: None,
        };
        let hook = StepAttempts {
            store: self.store,
            plan_id: &ctx.plan_id,
            step_id: &step_id,
            base: attempts,
        };
        let mut guard = PlanLoopGuard { earlier };
        let r = self
            .agent
            .gate()
            .call(&req, &mut guard, &hook, progress)
            .await
            .map_err(unwrap_hook)?;
        let attempts = attempts + r.attempts;
        Ok(match r.outcome {
            CallOutcome::Ok(value) | CallOutcome::Cached(value) => Outcome {
                index,
                status: StepStatus::Done,
                attempts,
                result: value,
                error: None,
                args: r.args,
                action_id: None,
            },
            CallOutcome::PendingApproval { action_id } => Outcome {
                index,
                status: StepStatus::PendingApproval,
                attempts,
                result: gate::pending_result(&action_id),
                error: None,
                args: r.args,
                action_id: Some(action_id),
            },
            ref other => {
                let mut error = other.error_text().unwrap_or_default();
                let transient = matches!(
                    other,
                    CallOutcome::Failed(ToolError::Transient(_) | ToolError::Internal(_))
                );
                if transient && r.attempts > 1 {
                    error = format!("{error} (after {} attempts)", r.attempts);
                }
                Outcome {
                    index,
                    status: StepStatus::Failed,
                    attempts,
                    result: other.result(),
                    error: Some(error),
                    args: r.args,
                    action_id: None,
                }
            }
        })
    }

    /// The plan's call policy.
    fn policy(&self) -> CallPolicy {
        CallPolicy {
            timeout: self.config.step_timeout,
            max_attempts: self.config.max_attempts,
            backoff: self.config.retry_backoff,
            rate_limit_wait: self.config.rate_limit_wait,
        }
    }
}

/// The plan's loop guard: a write (or an approval request) identical to one another step of
/// the plan already made is not repeated. Reads are never refused.
struct PlanLoopGuard {
    /// `(step id, call key)` of the steps done, running or waiting for approval.
    earlier: Vec<(String, String)>,
}

impl LoopGuard for PlanLoopGuard {
    fn earlier(&self, key: &str, read_only: bool) -> Option<Value> {
        if read_only {
            return None;
        }
        let (step, _) = self.earlier.iter().find(|(_, k)| k == key)?;
        Some(json!({
            "error": "loop_detected",
            "message": format!("this exact call was already made by step {step}; it was not repeated"),
        }))
    }
    fn record(&mut self, _key: String, _result: &Value) {}
}

/// Counts each attempt of a step in the store before it starts, so a crash leaves it
/// `running` with its attempts (and its resolved arguments) recorded.
struct StepAttempts<'a> {
    store: &'a PlanStore,
    plan_id: &'a str,
    step_id: &'a str,
    base: u32,
}

impl AttemptHook for StepAttempts<'_> {
    fn before_attempt(&self, n: u32, args: &Value) -> Result<(), AgentError> {
        self.store
            .update_step(
                self.plan_id,
                self.step_id,
                StepStatus::Running,
                self.base + n,
                (n == 1).then_some(args),
                None,
                None,
                None,
            )
            .map_err(|e| AgentError::Hook(Box::new(e)))
    }
}

/// A plan-store failure inside a hook is the plan's own error again.
fn unwrap_hook(e: AgentError) -> PlanError {
    match e {
        AgentError::Hook(inner) => match inner.downcast::<PlanError>() {
            Ok(plan) => *plan,
            Err(other) => PlanError::Agent(AgentError::Hook(other)),
        },
        AgentError::AlreadyDecided { action, status } => {
            PlanError::AlreadyDecided { action, status }
        }
        other => PlanError::Agent(other),
    }
}

/// The audit log's call id of a plan step.
fn call_id(ctx: &RunContext, step: &Step) -> String {
    format!("{}:{}", ctx.plan_id, step.id)
}

/// `kind: message` of an error result object.
fn error_text(result: &Value) -> String {
    let kind = result
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("error");
    let message = result.get("message").and_then(Value::as_str).unwrap_or("");
    format!("{kind}: {message}")
}

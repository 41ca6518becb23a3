//! The executor: runs a stored plan's ready steps concurrently (bounded), each with retries
//! and backoff for transient failures, behind the agent's guards (schema check of the
//! resolved arguments, merchant-scoped tool context, rate limits, the read-only cache, the
//! audit log, the approval gate), and records every state change before moving on.
//!
//! Scheduling is a loop over the stored step states: skip what depends on a failed, skipped or
//! rejected step; start every pending step whose dependencies are done (up to the concurrency
//! bound); wait for one to finish; repeat until nothing runs and nothing can start.
//!
//! An irreversible step asks for one approval (`actions` row keyed by the call id
//! `PLAN:STEP`, so a crash never makes a second one) and waits. An approved action runs here,
//! under the plan's claim, through the same attempt loop as any step (timeout, retries with
//! backoff, error results) with the approval id as the tool's idempotency key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::{json, Value};

use super::plan::{shown, Step, StepStatus};
use super::{refs, PlanError, Planner};
use crate::agent::guards::call_key;
use crate::agent::runner::{self, RunnerToken};
use crate::agent::{ActionStatus, PendingAction, Progress, ToolCallReport};
use crate::merchant::MerchantId;
use crate::tools::{Tool, ToolContext, ToolError};

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
}

/// A step handed to [`Planner::run_step`].
struct Job {
    index: usize,
    step_id: String,
    tool_name: String,
    attempts: u32,
}

/// What [`Planner::prepare`] decided.
enum Prepared {
    /// Run the tool with these (resolved, validated) arguments.
    Run(Arc<dyn Tool>, Value),
    /// The step is settled without running (failed before the call, or waiting for approval).
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

impl Planner {
    /// Drives the plan until no step runs and none can start.
    pub(super) async fn drive(
        &self,
        ctx: &RunContext,
        progress: &dyn Progress,
    ) -> Result<(), PlanError> {
        let mut steps = self.store.steps(&ctx.plan_id)?;
        let planned: HashMap<String, Value> =
            self.store.planned_args(&ctx.plan_id)?.into_iter().collect();
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
                self.save(ctx, s, None)?;
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
                        self.save(ctx, &steps[i], None)?;
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
                    match self.prepare(ctx, &steps, i, &planned_args)? {
                        Prepared::Run(tool, args) => {
                            steps[i].args = args.clone();
                            steps[i].status = StepStatus::Running;
                            in_flight[i] = true;
                            let job = Job {
                                index: i,
                                step_id: steps[i].id.clone(),
                                tool_name: steps[i].tool.clone(),
                                attempts: steps[i].attempts,
                            };
                            running.push(self.run_step(ctx, job, tool, args, progress));
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
                            self.save(ctx, step, Some(&resolved))?;
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
            let resolved = s.args.clone();
            self.save(ctx, s, Some(&resolved))?;
        }
        Ok(())
    }

    /// Persists `step`'s state (and its resolved arguments when given).
    fn save(
        &self,
        ctx: &RunContext,
        step: &Step,
        resolved: Option<&Value>,
    ) -> Result<(), PlanError> {
        let result = (!step.result.is_null()).then_some(&step.result);
        self.store.update_step(
            &ctx.plan_id,
            &step.id,
            step.status,
            step.attempts,
            resolved,
            result,
            step.error.as_deref(),
            step.action_id.as_deref(),
        )
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
        let Some(action) = self.agent.store().action_by_id(&action_id)? else {
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
                self.save(ctx, step, None)?;
            }
            ActionStatus::Failed => {
                step.status = StepStatus::Failed;
                step.result = action.result.unwrap_or(Value::Null);
                step.error = Some(error_text(&step.result));
                self.save(ctx, step, None)?;
            }
            ActionStatus::Rejected => {
                step.status = StepStatus::Rejected;
                step.error = Some(
                    "rejected: a human operator rejected this action; it was not executed".into(),
                );
                step.result = json!({"status": "rejected", "action_id": action_id});
                self.save(ctx, step, None)?;
                let report = ToolCallReport {
                    id: action_id.clone(),
                    tool: step.tool.clone(),
                    args: step.args.clone(),
                    status: "rejected".into(),
                    result: step.result.clone(),
                    latency_ms: 0.0,
                };
                self.audit_once(ctx, &report)?;
            }
        }
        Ok(())
    }

    /// Runs an approved irreversible action for its step: `pending`/`approved` → `approved`
    /// (only one execution can win that transition), the attempt loop with the approval id as
    /// the idempotency key, then `executed`/`failed` with the result.
    async fn execute_approved(
        &self,
        ctx: &RunContext,
        step: &mut Step,
        action: &PendingAction,
        progress: &dyn Progress,
    ) -> Result<(), PlanError> {
        let store = self.agent.store();
        let runner = RunnerToken::new();
        if !store.claim_execution(&action.id, runner.as_str(), runner::alive)? {
            return Err(PlanError::AlreadyDecided {
                action: action.id.clone(),
                status: "being executed by another approval".into(),
            });
        }
        let Some(tool) = self.agent.tools().get(&action.tool) else {
            let e = ToolError::Internal(format!(
                "tool {} is no longer registered",
                shown(&action.tool)
            ));
            store.transition(
                &action.id,
                &[ActionStatus::Approved],
                ActionStatus::Failed,
                Some(&e.to_json()),
            )?;
            step.status = StepStatus::Failed;
            step.result = e.to_json();
            step.error = Some(format!("{}: {}", e.kind(), e.message()));
            return self.save(ctx, step, None);
        };
        let tool_ctx = ToolContext::new(ctx.merchant.clone(), ctx.session.clone())
            .with_idempotency_key(&action.id);
        let (outcome, attempts) = self
            .call_with_retries(
                ctx,
                &step.id,
                &action.id,
                tool.as_ref(),
                &action.args,
                &tool_ctx,
                step.attempts,
                progress,
            )
            .await?;
        step.attempts = attempts;
        step.args = action.args.clone();
        match outcome {
            Ok(value) => {
                store.transition(
                    &action.id,
                    &[ActionStatus::Approved],
                    ActionStatus::Executed,
                    Some(&value),
                )?;
                self.agent.invalidate_cache(&ctx.session);
                step.status = StepStatus::Done;
                step.result = value;
                step.error = None;
            }
            Err((e, error)) => {
                store.transition(
                    &action.id,
                    &[ActionStatus::Approved],
                    ActionStatus::Failed,
                    Some(&e.to_json()),
                )?;
                step.status = StepStatus::Failed;
                step.result = e.to_json();
                step.error = Some(error);
            }
        }
        let resolved = step.args.clone();
        self.save(ctx, step, Some(&resolved))
    }

    /// Audits a decision once (a resume must not log the same rejection again).
    fn audit_once(&self, ctx: &RunContext, report: &ToolCallReport) -> Result<(), PlanError> {
        let already = self
            .agent
            .store()
            .audit_log(&ctx.session)?
            .iter()
            .any(|e| e.call_id == report.id && e.status == report.status);
        if !already {
            self.agent
                .audit(&ctx.merchant, &ctx.session, ctx.turn, report)?;
        }
        Ok(())
    }

    fn audit_report(
        &self,
        ctx: &RunContext,
        step: &Step,
        args: &Value,
        status: &str,
        result: &Value,
    ) -> Result<(), PlanError> {
        let report = ToolCallReport {
            id: call_id(ctx, step),
            tool: step.tool.clone(),
            args: args.clone(),
            status: status.into(),
            result: result.clone(),
            latency_ms: 0.0,
        };
        Ok(self
            .agent
            .audit(&ctx.merchant, &ctx.session, ctx.turn, &report)?)
    }

    /// Resolves a ready step's references and checks its arguments; decides whether it runs,
    /// fails before running, or waits for approval.
    fn prepare(
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
            Some(id) => self.agent.store().action_by_id(id)?,
            None if irreversible => self
                .agent
                .store()
                .action_by_call(&ctx.session, &call_id(ctx, step))?,
            None => None,
        };
        if let Some(action) = existing {
            return Ok(Prepared::Settled(Settled {
                status: StepStatus::PendingApproval,
                result: pending_result(&action.id),
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
        let args = match refs::resolve(planned_args, &results) {
            Ok(a) => a,
            Err(msg) => {
                return Ok(Prepared::Settled(Settled::failed(
                    "unresolved_ref",
                    msg,
                    None,
                )))
            }
        };
        let Some(tool) = self.agent.tools().get(&step.tool) else {
            let msg = format!("tool {} is no longer registered", shown(&step.tool));
            return Ok(Prepared::Settled(Settled::failed(
                "unknown_tool",
                msg,
                Some(args),
            )));
        };
        let args = match self.agent.tools().validate(&step.tool, &args.to_string()) {
            Ok(a) => a,
            Err(e) => {
                self.audit_report(ctx, step, &args, "invalid_args", &e.to_json())?;
                return Ok(Prepared::Settled(Settled {
                    status: StepStatus::Failed,
                    result: e.to_json(),
                    error: Some(format!("invalid_args: {e}")),
                    args: Some(args),
                    action_id: None,
                }));
            }
        };
        // The loop guard: a write (or an approval request) identical to one this plan already
        // made is not repeated.
        if !tool.read_only() {
            let key = call_key(&step.tool, &args);
            if let Some(earlier) = steps.iter().find(|s| {
                s.id != step.id
                    && s.tool == step.tool
                    && matches!(
                        s.status,
                        StepStatus::Done | StepStatus::Running | StepStatus::PendingApproval
                    )
                    && call_key(&s.tool, &s.args) == key
            }) {
                let msg = format!(
                    "this exact call was already made by step {}; it was not repeated",
                    earlier.id
                );
                let result = json!({"error": "loop_detected", "message": msg});
                self.audit_report(ctx, step, &args, "loop_detected", &result)?;
                return Ok(Prepared::Settled(Settled {
                    status: StepStatus::Failed,
                    result,
                    error: Some(format!("loop_detected: {msg}")),
                    args: Some(args),
                    action_id: None,
                }));
            }
        }
        if tool.irreversible() {
            // The approval gate: the exact resolved arguments are held for a human. One
            // approval per step, ever: a resume after a crash finds it again by call id.
            let action_id = self.agent.store().create_action(
                &ctx.session,
                &ctx.merchant,
                ctx.turn,
                &call_id(ctx, step),
                &step.tool,
                &args,
            )?;
            let result = pending_result(&action_id);
            self.audit_report(ctx, step, &args, "pending_approval", &result)?;
            return Ok(Prepared::Settled(Settled {
                status: StepStatus::PendingApproval,
                result,
                error: None,
                args: Some(args),
                action_id: Some(action_id),
            }));
        }
        Ok(Prepared::Run(tool, args))
    }

    /// Runs one step: the read-only cache, then the attempt loop.
    async fn run_step(
        &self,
        ctx: &RunContext,
        job: Job,
        tool: Arc<dyn Tool>,
        args: Value,
        progress: &dyn Progress,
    ) -> Result<Outcome, PlanError> {
        let Job {
            index,
            step_id,
            tool_name: name,
            attempts,
        } = job;
        let key = call_key(&name, &args);
        let report_id = format!("{}:{}", ctx.plan_id, step_id);
        if tool.read_only() {
            if let Some(hit) = self.agent.cache_get(&ctx.session, &key) {
                let report = ToolCallReport {
                    id: report_id,
                    tool: name,
                    args,
                    status: "cached".into(),
                    result: hit.clone(),
                    latency_ms: 0.0,
                };
                self.agent
                    .audit(&ctx.merchant, &ctx.session, ctx.turn, &report)?;
                return Ok(Outcome {
                    index,
                    status: StepStatus::Done,
                    attempts,
                    result: hit,
                    error: None,
                });
            }
        }
        let mut tool_ctx = ToolContext::new(ctx.merchant.clone(), ctx.session.clone());
        if !tool.read_only() {
            // A step that is run again after a crash must not act twice.
            tool_ctx = tool_ctx.with_idempotency_key(report_id.clone());
        }
        let (outcome, attempts) = self
            .call_with_retries(
                ctx,
                &step_id,
                &report_id,
                tool.as_ref(),
                &args,
                &tool_ctx,
                attempts,
                progress,
            )
            .await?;
        Ok(match outcome {
            Ok(value) => {
                if tool.read_only() {
                    self.agent.cache_put(&ctx.session, key, value.clone());
                } else {
                    self.agent.invalidate_cache(&ctx.session);
                }
                Outcome {
                    index,
                    status: StepStatus::Done,
                    attempts,
                    result: value,
                    error: None,
                }
            }
            Err((e, error)) => Outcome {
                index,
                status: StepStatus::Failed,
                attempts,
                result: e.to_json(),
                error: Some(error),
            },
        })
    }

    /// Calls `tool` until it succeeds, fails for good, or `max_attempts` are spent: each
    /// attempt counted in the store before it starts (a crash leaves the step `running`),
    /// rate limited, cut at `step_timeout`, audited; a result object carrying `"error"` is a
    /// failure; transient and internal failures are retried with doubling backoff. Returns
    /// the outcome (the error with its `kind: message` text) and the attempt count.
    #[allow(clippy::too_many_arguments)]
    async fn call_with_retries(
        &self,
        ctx: &RunContext,
        step_id: &str,
        report_id: &str,
        tool: &dyn Tool,
        args: &Value,
        tool_ctx: &ToolContext,
        mut attempts: u32,
        progress: &dyn Progress,
    ) -> Result<(Result<Value, (ToolError, String)>, u32), PlanError> {
        let name = tool.name().to_string();
        let max = self.config.max_attempts.max(1);
        let mut report = ToolCallReport {
            id: report_id.to_string(),
            tool: name.clone(),
            args: args.clone(),
            status: String::new(),
            result: Value::Null,
            latency_ms: 0.0,
        };
        let mut tries = 0;
        loop {
            tries += 1;
            attempts += 1;
            self.store.update_step(
                &ctx.plan_id,
                step_id,
                StepStatus::Running,
                attempts,
                (tries == 1).then_some(args),
                None,
                None,
                None,
            )?;
            let t0 = Instant::now();
            let outcome: Result<Value, ToolError> = if self
                .agent
                .acquire_tool_token(&name, self.config.rate_limit_wait)
                .await
            {
                progress.tool_started(&tool.progress(args));
                let limit = self.config.step_timeout;
                match tokio::time::timeout(limit, tool.call(args.clone(), tool_ctx)).await {
                    Ok(r) => r,
                    Err(_) => Err(ToolError::Transient(format!(
                        "{name} did not answer within {:.1} s",
                        limit.as_secs_f64()
                    ))),
                }
            } else {
                Err(ToolError::Transient(format!(
                    "{name} is rate limited; no call slot within {:?}",
                    self.config.rate_limit_wait
                )))
            };
            report.latency_ms = t0.elapsed().as_secs_f64() * 1e3;
            // A result object carrying an "error" is a failure too.
            let outcome = match outcome {
                Ok(v) if v.get("error").is_some_and(|e| e.is_string()) => Err(from_result(&v)),
                other => other,
            };
            match outcome {
                Ok(value) => {
                    report.status = "ok".into();
                    report.result = value.clone();
                    self.agent
                        .audit(&ctx.merchant, &ctx.session, ctx.turn, &report)?;
                    return Ok((Ok(value), attempts));
                }
                Err(e) => {
                    report.status = "error".into();
                    report.result = e.to_json();
                    self.agent
                        .audit(&ctx.merchant, &ctx.session, ctx.turn, &report)?;
                    let transient = matches!(e, ToolError::Transient(_) | ToolError::Internal(_));
                    if transient && tries < max {
                        let backoff = self.config.retry_backoff * 2u32.saturating_pow(tries - 1);
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                    let error = if transient && tries > 1 {
                        format!("{}: {} (after {tries} attempts)", e.kind(), e.message())
                    } else {
                        format!("{}: {}", e.kind(), e.message())
                    };
                    return Ok((Err((e, error)), attempts));
                }
            }
        }
    }
}

/// What a step waiting for approval reports as its result.
fn pending_result(action_id: &str) -> Value {
    json!({
        "status": "pending_approval",
        "action_id": action_id,
        "message": "NOT executed. This irreversible action is held until a human operator approves it.",
    })
}

/// The audit log's call id of a plan step.
fn call_id(ctx: &RunContext, step: &Step) -> String {
    format!("{}:{}", ctx.plan_id, step.id)
}

/// A [`ToolError`] from a result object that reports an error (`{"error": KIND, "message",
/// "retryable"}`).
fn from_result(v: &Value) -> ToolError {
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
        _ => ToolError::Refused(message),
    }
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

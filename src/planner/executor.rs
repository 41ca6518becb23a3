//! The executor: runs a stored plan's ready steps concurrently (bounded), each with retries
//! and backoff for transient failures, behind the agent's guards (schema check of the
//! resolved arguments, merchant-scoped tool context, rate limits, the read-only cache, the
//! audit log, the approval gate), and records every state change before moving on.
//!
//! Scheduling is a loop over the stored step states: skip what depends on a failed, skipped or
//! rejected step; start every pending step whose dependencies are done (up to the concurrency
//! bound); wait for one to finish; repeat until nothing runs and nothing can start.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::{json, Value};

use super::plan::{shown, Step, StepStatus};
use super::{refs, PlanError, Planner};
use crate::agent::guards::call_key;
use crate::agent::{ActionStatus, Progress, ToolCallReport};
use crate::merchant::MerchantId;
use crate::tools::{Tool, ToolContext, ToolError};

/// What one execution of a plan works with.
pub(super) struct RunContext {
    pub plan_id: String,
    pub session: String,
    pub merchant: MerchantId,
    pub turn: u32,
    /// Actions a human approved for this run: executed when their step is reached.
    pub approved: HashSet<String>,
}

/// How a step's execution ended.
struct Outcome {
    index: usize,
    status: StepStatus,
    attempts: u32,
    result: Value,
    error: Option<String>,
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
        // A step left `running` was interrupted: it runs again (same idempotency key).
        for s in steps.iter_mut() {
            if s.status == StepStatus::Running {
                s.status = StepStatus::Pending;
                self.save(ctx, s, None)?;
            }
        }
        self.sync_approvals(ctx, &mut steps, progress).await?;

        let mut running = FuturesUnordered::new();
        let mut in_flight: HashSet<usize> = HashSet::new();
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
                    if steps[i].status != StepStatus::Pending || in_flight.contains(&i) {
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
                            in_flight.insert(i);
                            let job = Job {
                                index: i,
                                step_id: steps[i].id.clone(),
                                tool_name: steps[i].tool.clone(),
                                attempts: steps[i].attempts,
                            };
                            running.push(self.run_step(ctx, job, tool, args, progress));
                        }
                        Prepared::Finished(status, result, error, args, action_id) => {
                            if let Some(a) = args {
                                steps[i].args = a;
                            }
                            steps[i].status = status;
                            steps[i].result = result;
                            steps[i].error = error;
                            if action_id.is_some() {
                                steps[i].action_id = action_id;
                            }
                            let resolved = steps[i].args.clone();
                            self.save(ctx, &steps[i], Some(&resolved))?;
                            changed = true;
                        }
                    }
                }
            }
            let Some(done) = running.next().await else {
                break;
            };
            let done: Outcome = done?;
            in_flight.remove(&done.index);
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

    /// Brings steps waiting for approval up to date with their actions: executes those a
    /// human approved (now, or before a crash), records rejections and earlier executions.
    async fn sync_approvals(
        &self,
        ctx: &RunContext,
        steps: &mut [Step],
        progress: &dyn Progress,
    ) -> Result<(), PlanError> {
        for s in steps.iter_mut() {
            if s.status != StepStatus::PendingApproval {
                continue;
            }
            let Some(action_id) = s.action_id.clone() else {
                continue;
            };
            let Some(action) = self.agent.store().action_by_id(&action_id)? else {
                continue;
            };
            let run_now = match action.status {
                ActionStatus::Pending => ctx.approved.contains(&action_id),
                ActionStatus::Approved => true,
                ActionStatus::Executed | ActionStatus::Failed => true,
                ActionStatus::Rejected => {
                    s.status = StepStatus::Rejected;
                    s.error = Some(
                        "rejected: a human operator rejected this action; it was not executed"
                            .into(),
                    );
                    s.result = json!({"status": "rejected", "action_id": action_id});
                    self.save(ctx, s, None)?;
                    let report = ToolCallReport {
                        id: action_id.clone(),
                        tool: s.tool.clone(),
                        args: s.args.clone(),
                        status: "rejected".into(),
                        result: s.result.clone(),
                        latency_ms: 0.0,
                    };
                    self.audit_once(ctx, &report, "rejected")?;
                    continue;
                }
            };
            if !run_now {
                continue;
            }
            let (report, ran_now) = self
                .agent
                .execute_action(&ctx.merchant, &ctx.session, &action, progress)
                .await?;
            if ran_now {
                self.agent
                    .audit(&ctx.merchant, &ctx.session, ctx.turn, &report)?;
                s.attempts += 1;
            }
            if report.status == "ok" {
                s.status = StepStatus::Done;
                s.error = None;
            } else {
                s.status = StepStatus::Failed;
                s.error = Some(error_text(&report.result));
            }
            s.result = report.result;
            self.save(ctx, s, None)?;
        }
        Ok(())
    }

    /// Audits a decision once (a resume must not log the same rejection again).
    fn audit_once(
        &self,
        ctx: &RunContext,
        report: &ToolCallReport,
        status: &str,
    ) -> Result<(), PlanError> {
        let already = self
            .agent
            .store()
            .audit_log(&ctx.session)?
            .iter()
            .any(|e| e.call_id == report.id && e.status == status);
        if !already {
            self.agent
                .audit(&ctx.merchant, &ctx.session, ctx.turn, report)?;
        }
        Ok(())
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
        let results: HashMap<&str, &Value> = steps
            .iter()
            .filter(|s| s.status == StepStatus::Done)
            .map(|s| (s.id.as_str(), &s.result))
            .collect();
        let args = match refs::resolve(planned_args, &results) {
            Ok(a) => a,
            Err(msg) => {
                return Ok(Prepared::Finished(
                    StepStatus::Failed,
                    json!({"error": "unresolved_ref", "message": msg}),
                    Some(format!("unresolved_ref: {msg}")),
                    None,
                    None,
                ))
            }
        };
        let Some(tool) = self.agent.tools().get(&step.tool) else {
            let msg = format!("tool {} is no longer registered", shown(&step.tool));
            return Ok(Prepared::Finished(
                StepStatus::Failed,
                json!({"error": "unknown_tool", "message": msg}),
                Some(format!("unknown_tool: {msg}")),
                Some(args),
                None,
            ));
        };
        let args = match self.agent.tools().validate(&step.tool, &args.to_string()) {
            Ok(a) => a,
            Err(e) => {
                let report = ToolCallReport {
                    id: call_id(ctx, step),
                    tool: step.tool.clone(),
                    args: args.clone(),
                    status: "invalid_args".into(),
                    result: e.to_json(),
                    latency_ms: 0.0,
                };
                self.agent
                    .audit(&ctx.merchant, &ctx.session, ctx.turn, &report)?;
                return Ok(Prepared::Finished(
                    StepStatus::Failed,
                    e.to_json(),
                    Some(format!("invalid_args: {e}")),
                    Some(args),
                    None,
                ));
            }
        };
        if tool.irreversible() {
            // The approval gate: the exact resolved arguments are held for a human.
            let action_id = self.agent.store().create_action(
                &ctx.session,
                &ctx.merchant,
                ctx.turn,
                &call_id(ctx, step),
                &step.tool,
                &args,
            )?;
            let result = json!({
                "status": "pending_approval",
                "action_id": action_id,
                "message": "NOT executed. This irreversible action is held until a human operator approves it.",
            });
            let report = ToolCallReport {
                id: call_id(ctx, step),
                tool: step.tool.clone(),
                args: args.clone(),
                status: "pending_approval".into(),
                result: result.clone(),
                latency_ms: 0.0,
            };
            self.agent
                .audit(&ctx.merchant, &ctx.session, ctx.turn, &report)?;
            return Ok(Prepared::Finished(
                StepStatus::PendingApproval,
                result,
                None,
                Some(args),
                Some(action_id),
            ));
        }
        // The loop guard: a write identical to one this plan already made is not repeated.
        if !tool.read_only() {
            let key = call_key(&step.tool, &args);
            if let Some(earlier) = steps.iter().find(|s| {
                s.id != step.id
                    && s.tool == step.tool
                    && matches!(s.status, StepStatus::Done | StepStatus::Running)
                    && call_key(&s.tool, &s.args) == key
            }) {
                let msg = format!(
                    "this exact call was already made by step {}; it was not repeated",
                    earlier.id
                );
                let report = ToolCallReport {
                    id: call_id(ctx, step),
                    tool: step.tool.clone(),
                    args: args.clone(),
                    status: "loop_detected".into(),
                    result: json!({"error": "loop_detected", "message": msg}),
                    latency_ms: 0.0,
                };
                self.agent
                    .audit(&ctx.merchant, &ctx.session, ctx.turn, &report)?;
                return Ok(Prepared::Finished(
                    StepStatus::Failed,
                    report.result,
                    Some(format!("loop_detected: {msg}")),
                    Some(args),
                    None,
                ));
            }
        }
        Ok(Prepared::Run(tool, args))
    }

    /// Runs one step: cache, rate limit, the call, retries with backoff for transient
    /// failures; every attempt audited and its count recorded before it starts.
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
            mut attempts,
        } = job;
        let key = call_key(&name, &args);
        let mut report = ToolCallReport {
            id: format!("{}:{}", ctx.plan_id, step_id),
            tool: name.clone(),
            args: args.clone(),
            status: String::new(),
            result: Value::Null,
            latency_ms: 0.0,
        };
        if tool.read_only() {
            if let Some(hit) = self.agent.cache_get(&ctx.session, &key) {
                report.status = "cached".into();
                report.result = hit.clone();
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
            tool_ctx = tool_ctx.with_idempotency_key(format!("{}:{}", ctx.plan_id, step_id));
        }
        let max = self.config.max_attempts.max(1);
        let mut tries = 0;
        loop {
            tries += 1;
            attempts += 1;
            // Recorded before the call: a crash now leaves the step `running`, to run again.
            self.store.update_step(
                &ctx.plan_id,
                &step_id,
                StepStatus::Running,
                attempts,
                (tries == 1).then_some(&args),
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
                progress.tool_started(&tool.progress(&args));
                let limit = self.config.step_timeout;
                match tokio::time::timeout(limit, tool.call(args.clone(), &tool_ctx)).await {
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
                    if tool.read_only() {
                        self.agent.cache_put(&ctx.session, key, value.clone());
                    } else {
                        self.agent.invalidate_cache(&ctx.session);
                    }
                    return Ok(Outcome {
                        index,
                        status: StepStatus::Done,
                        attempts,
                        result: value,
                        error: None,
                    });
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
                    return Ok(Outcome {
                        index,
                        status: StepStatus::Failed,
                        attempts,
                        result: e.to_json(),
                        error: Some(error),
                    });
                }
            }
        }
    }
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
    /// The step is settled without running: status, result, error, resolved arguments and
    /// the approval id of a held irreversible step.
    Finished(
        StepStatus,
        Value,
        Option<String>,
        Option<Value>,
        Option<String>,
    ),
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

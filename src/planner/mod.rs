//! Task planning: one LLM call turns a task into a dependency graph of tool calls, which is
//! validated, stored, and executed with the agent's guards.
//!
//! * [`plan`] — the data: draft steps as the model writes them, [`Step`]/[`StepStatus`], and
//!   the [`PlanReport`] every command prints;
//! * [`validate`] — checks a draft before anything runs (tools, schemas, dependencies, cycles,
//!   references, repeated calls, the step limit);
//! * [`refs`] — `{"$ref": "STEP.result.FIELD"}` arguments, resolved just before a step runs;
//! * [`store`] — plans and step states in SQLite (`agent.db`), one committed write per change;
//! * `executor` — runs ready steps concurrently (bounded), retries transient failures with
//!   backoff, skips the dependents of failed steps, holds irreversible steps for approval;
//! * [`prompt`] — the planning, correction and summary requests.
//!
//! A plan runs inside an agent session of its own, so every step is audited (`memex audit`),
//! counted (`memex stats`), rate limited and cached exactly like the agent's own calls, and an
//! irreversible step becomes an approval (`act_…`) that only `memex approve` executes — after
//! which the plan continues from its stored state, in this process or a later one.

mod error;
mod executor;
pub mod plan;
pub mod prompt;
pub mod refs;
pub mod store;
pub mod validate;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub use error::PlanError;
pub use plan::{PendingStep, PlanReport, PlanStatus, PlanSummary, Step, StepStatus};
use store::{PlanRow, PlanStore};

use crate::agent::runner::{self, RunnerToken};
use crate::agent::{ActionStatus, Agent, Progress, TurnRecord};
use crate::llm::Usage;
use crate::merchant::MerchantId;

/// Tunables of the planner.
#[derive(Debug, Clone)]
pub struct PlannerConfig {
    /// Most steps a plan may have (a longer plan is invalid).
    pub max_steps: usize,
    /// Most steps executing at the same time.
    pub max_concurrency: usize,
    /// Tool calls per step before a transient failure fails it.
    pub max_attempts: u32,
    /// Backoff before the first retry; doubled for each further one.
    pub retry_backoff: Duration,
    /// Longest wait for a tool's rate limit before the attempt counts as failed.
    pub rate_limit_wait: Duration,
    /// Whether the planning call gets the knowledge-base and episode memory blocks.
    pub use_memory: bool,
    /// Whether a completed plan's summary is saved as an episode of its merchant.
    pub save_episode: bool,
    /// Longest a single tool call may take before the attempt counts as a transient failure.
    pub step_timeout: Duration,
    /// Longest wait for the final summary call (then a plain account is written instead).
    pub summary_timeout: Duration,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            max_steps: 12,
            max_concurrency: 4,
            max_attempts: 3,
            retry_backoff: Duration::from_millis(200),
            rate_limit_wait: Duration::from_secs(10),
            use_memory: true,
            save_episode: true,
            step_timeout: Duration::from_secs(60),
            summary_timeout: Duration::from_secs(30),
        }
    }
}

/// Plans tasks and executes plans through an [`Agent`]'s tools and guards.
pub struct Planner {
    agent: Arc<Agent>,
    store: PlanStore,
    config: PlannerConfig,
}

impl std::fmt::Debug for Planner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Planner")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// An execution's hold on a plan; dropping it (even by cancellation) ends the hold.
struct Claim<'a> {
    store: &'a PlanStore,
    plan: String,
    token: RunnerToken,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let _ = self.store.release(&self.plan, self.token.as_str());
    }
}

impl Planner {
    /// A planner over `agent`; its tables live in the agent's store file.
    pub fn new(agent: Arc<Agent>, config: PlannerConfig) -> Result<Self, PlanError> {
        let store = PlanStore::open(agent.store().path())?;
        Ok(Planner {
            agent,
            store,
            config,
        })
    }

    /// The agent the planner acts through.
    pub fn agent(&self) -> &Arc<Agent> {
        &self.agent
    }

    /// Asks the model for a plan for `task`, validates it (sending it back once with the exact
    /// errors when invalid) and stores it as `planned`, without executing anything.
    pub async fn create(&self, merchant: &MerchantId, task: &str) -> Result<PlanReport, PlanError> {
        let (report, _, _) = self.create_inner(merchant, task).await?;
        Ok(report)
    }

    /// Plans `task` and executes the plan until every step is finished or waits for approval;
    /// a final model call summarises the outcome.
    pub async fn run(
        &self,
        merchant: &MerchantId,
        task: &str,
        progress: &dyn Progress,
    ) -> Result<PlanReport, PlanError> {
        let (report, usage, memory) = self.create_inner(merchant, task).await?;
        self.execute(&report.plan_id, progress, usage, memory).await
    }

    /// Continues plan `plan_id` from its stored state: done steps are never run again, steps
    /// interrupted by a crash run again with the same idempotency key, decided approvals are
    /// taken into account. A finished plan is reported as it is. Refused while another live
    /// process executes the plan.
    pub async fn resume(
        &self,
        plan_id: &str,
        progress: &dyn Progress,
    ) -> Result<PlanReport, PlanError> {
        self.run_stored(plan_id, progress, None, false).await
    }

    /// [`Planner::resume`] even when the store says another process holds the plan — for a
    /// holder that is known to be gone (its process id was reused, or no `/proc`). Never use it
    /// while another process may really be executing the plan.
    pub async fn resume_forced(
        &self,
        plan_id: &str,
        progress: &dyn Progress,
    ) -> Result<PlanReport, PlanError> {
        self.run_stored(plan_id, progress, None, true).await
    }

    /// The stored plan `plan_id`.
    pub fn show(&self, plan_id: &str) -> Result<PlanReport, PlanError> {
        load_report(&self.store, plan_id)
    }

    /// Plans of `merchant` (or all), newest first.
    pub fn list(
        &self,
        merchant: Option<&MerchantId>,
        limit: usize,
    ) -> Result<Vec<store::PlanListing>, PlanError> {
        self.store.list(merchant.map(MerchantId::as_str), limit)
    }

    /// The plan whose step holds approval `action_id`, if any.
    pub fn plan_of_action(&self, action_id: &str) -> Result<Option<String>, PlanError> {
        Ok(self.store.step_for_action(action_id)?.map(|(p, _)| p))
    }

    /// A human approves the plan step holding `action_id`: it runs (at most once, ever, with
    /// exactly the stored arguments, with the step's retries and timeout) and the plan
    /// continues. Approving an action that already ran runs nothing.
    pub async fn approve(
        &self,
        action_id: &str,
        progress: &dyn Progress,
    ) -> Result<PlanReport, PlanError> {
        self.decide(executor::Decision::Approve(action_id.to_string()), progress)
            .await
    }

    /// A human rejects the plan step holding `action_id`: it never runs, the steps depending
    /// on it are skipped and the rest of the plan continues.
    pub async fn reject(
        &self,
        action_id: &str,
        progress: &dyn Progress,
    ) -> Result<PlanReport, PlanError> {
        self.decide(executor::Decision::Reject(action_id.to_string()), progress)
            .await
    }

    async fn decide(
        &self,
        decision: executor::Decision,
        progress: &dyn Progress,
    ) -> Result<PlanReport, PlanError> {
        let (executor::Decision::Approve(action_id) | executor::Decision::Reject(action_id)) =
            &decision;
        let plan_id = self.plan_holding(action_id)?;
        self.run_stored(&plan_id, progress, Some(decision), false)
            .await
    }

    /// The plan whose step asked for approval `action_id`: by the step's link, or by the
    /// action's call id (`PLAN:STEP`) when a crash came between the two writes.
    fn plan_holding(&self, action_id: &str) -> Result<String, PlanError> {
        if let Some((plan, _)) = self.store.step_for_action(action_id)? {
            return Ok(plan);
        }
        let action = self
            .agent
            .store()
            .action_by_id(action_id)?
            .ok_or_else(|| PlanError::UnknownAction(action_id.to_string()))?;
        if !crate::agent::is_plan_call(&action.call_id) {
            return Err(PlanError::UnknownAction(action_id.to_string()));
        }
        let plan = action.call_id.split(':').next().unwrap_or_default();
        self.row(plan)?;
        Ok(plan.to_string())
    }

    fn row(&self, plan_id: &str) -> Result<PlanRow, PlanError> {
        self.store
            .plan(plan_id)?
            .ok_or_else(|| PlanError::UnknownPlan(plan_id.to_string()))
    }

    /// Plans, validates (one correction round) and stores. Returns the report, the planning
    /// calls' usage and the memory context used.
    async fn create_inner(
        &self,
        merchant: &MerchantId,
        task: &str,
    ) -> Result<(PlanReport, Usage, Value), PlanError> {
        let task = task.trim();
        if task.is_empty() {
            return Err(PlanError::Invalid("the task is empty".into()));
        }
        let memory = if self.config.use_memory {
            Some(self.agent.recall(merchant, task).await?)
        } else {
            None
        };
        let system = prompt::planning_system(
            merchant.as_str(),
            self.agent.tools(),
            self.config.max_steps,
            memory.as_ref(),
        );
        let first = prompt::planning_request(system, task);
        let mut usage = Usage::default();
        self.agent.pace_llm().await;
        let reply = self.agent.model().chat(first.clone()).await?;
        usage += reply.usage;
        let text = reply.content.unwrap_or_default();
        let steps = match self.check(&text) {
            Ok(steps) => steps,
            Err(errors) => {
                let retry = prompt::replan_request(&first, &text, &errors);
                self.agent.pace_llm().await;
                let reply = self.agent.model().chat(retry).await?;
                usage += reply.usage;
                let text = reply.content.unwrap_or_default();
                self.check(&text)
                    .map_err(|errors| PlanError::InvalidPlan { errors })?
            }
        };
        let session = Agent::new_session_id();
        self.agent.store().begin_session(&session, merchant)?;
        let turn = self.agent.store().next_turn(&session)?;
        let row = PlanRow {
            id: format!("plan_{}", uuid::Uuid::new_v4().simple()),
            session,
            merchant: merchant.as_str().to_string(),
            task: task.to_string(),
            status: PlanStatus::Planned,
            answer: None,
            turn,
        };
        self.store.insert(&row, &steps)?;
        let memory = memory
            .map(|m| serde_json::to_value(m).unwrap_or(Value::Null))
            .unwrap_or(Value::Null);
        let report = report_of(&row, self.store.steps(&row.id)?);
        Ok((report, usage, memory))
    }

    fn check(&self, reply: &str) -> Result<Vec<plan::DraftStep>, Vec<String>> {
        let draft = plan::parse_draft(reply)?;
        validate::validate(&draft, self.agent.tools(), self.config.max_steps)
    }

    async fn execute(
        &self,
        plan_id: &str,
        progress: &dyn Progress,
        usage: Usage,
        memory: Value,
    ) -> Result<PlanReport, PlanError> {
        self.execute_with(plan_id, progress, usage, memory, None, false)
            .await
    }

    async fn run_stored(
        &self,
        plan_id: &str,
        progress: &dyn Progress,
        decision: Option<executor::Decision>,
        force: bool,
    ) -> Result<PlanReport, PlanError> {
        self.execute_with(
            plan_id,
            progress,
            Usage::default(),
            Value::Null,
            decision,
            force,
        )
        .await
    }

    /// Claims the plan, carries out `decision`, drives the plan to a stopping point, writes
    /// the summary and records the execution as a turn of the plan's session.
    async fn execute_with(
        &self,
        plan_id: &str,
        progress: &dyn Progress,
        mut usage: Usage,
        memory: Value,
        decision: Option<executor::Decision>,
        force: bool,
    ) -> Result<PlanReport, PlanError> {
        let started = Instant::now();
        self.row(plan_id)?;
        let claim = Claim {
            store: &self.store,
            plan: plan_id.to_string(),
            token: RunnerToken::new(),
        };
        let token = claim.token.as_str();
        let claimed = if force {
            self.store.claim(plan_id, token, |_| false)?
        } else {
            self.store.claim(plan_id, token, runner::alive)?
        };
        if !claimed {
            return Err(PlanError::Busy(plan_id.to_string()));
        }
        // Read under the claim: another process may have finished the plan meanwhile.
        let row = self.row(plan_id)?;
        let merchant = MerchantId::parse(&row.merchant)
            .map_err(|e| PlanError::Store(format!("plan {plan_id}: {e}")))?;
        match &decision {
            Some(executor::Decision::Reject(action_id)) => {
                self.record_rejection(action_id, &self.store.steps(plan_id)?)?;
            }
            Some(executor::Decision::Approve(action_id)) => {
                let action = self
                    .agent
                    .store()
                    .action_by_id(action_id)?
                    .ok_or_else(|| PlanError::UnknownAction(action_id.clone()))?;
                if action.status == ActionStatus::Rejected {
                    return Err(PlanError::AlreadyDecided {
                        action: action_id.clone(),
                        status: "rejected".into(),
                    });
                }
            }
            None => {}
        }
        if row.status == PlanStatus::Completed {
            // Finished plans are never executed again (a repeated approval lands here).
            return self.show(plan_id);
        }
        // The first execution uses the turn counted at planning; later ones count a new turn.
        let turn = if row.status == PlanStatus::Planned {
            row.turn
        } else {
            self.agent.store().next_turn(&row.session)?
        };
        self.store.set_status(plan_id, PlanStatus::Running, None)?;
        let ctx = executor::RunContext {
            plan_id: plan_id.to_string(),
            session: row.session.clone(),
            merchant: merchant.clone(),
            turn,
            decision,
        };
        if let Err(e) = self.drive(&ctx, progress).await {
            // The plan stays `running` (resumable); the error is what the caller needs to see.
            let _ = self.agent.store().record_turn(
                &row.session,
                &merchant,
                turn,
                &TurnRecord {
                    outcome: "error".into(),
                    latency_ms: started.elapsed().as_secs_f64() * 1e3,
                    prompt_tokens: usage.prompt_tokens,
                    completion_tokens: usage.completion_tokens,
                    context: serde_json::json!({"plan_id": plan_id, "memory": memory}),
                },
            );
            return Err(e);
        }
        let steps = self.store.steps(plan_id)?;
        // Nothing can start any more: what is not finished waits for an approval.
        let (status, answer, outcome) = if steps
            .iter()
            .any(|s| s.status == StepStatus::PendingApproval)
        {
            let a = prompt::plain_summary(PlanStatus::AwaitingApproval, &steps);
            (PlanStatus::AwaitingApproval, Some(a), "pending_action")
        } else if steps.iter().any(|s| !s.status.is_final()) {
            (PlanStatus::Running, None, "error")
        } else {
            let a = self.summarise(&row, &steps, &mut usage).await;
            if self.config.save_episode {
                self.remember(&row, &merchant, &steps, &a).await;
            }
            (PlanStatus::Completed, Some(a), "answer")
        };
        self.store.set_status(plan_id, status, answer.as_deref())?;
        self.agent.store().record_turn(
            &row.session,
            &merchant,
            turn,
            &TurnRecord {
                outcome: outcome.to_string(),
                latency_ms: started.elapsed().as_secs_f64() * 1e3,
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                context: serde_json::json!({"plan_id": plan_id, "memory": memory}),
            },
        )?;
        drop(claim);
        self.show(plan_id)
    }

    /// Records a human rejection (only of an action still waiting). A rejection recorded
    /// before its step was (a crash in between) is carried out, not refused.
    fn record_rejection(&self, action_id: &str, steps: &[Step]) -> Result<(), PlanError> {
        let store = self.agent.store();
        if store.transition(
            action_id,
            &[ActionStatus::Pending],
            ActionStatus::Rejected,
            None,
        )? {
            return Ok(());
        }
        let action = store
            .action_by_id(action_id)?
            .ok_or_else(|| PlanError::UnknownAction(action_id.to_string()))?;
        let step_open = steps.iter().any(|s| {
            s.action_id.as_deref() == Some(action_id) && s.status == StepStatus::PendingApproval
        });
        if action.status == ActionStatus::Rejected && step_open {
            return Ok(());
        }
        Err(PlanError::AlreadyDecided {
            action: action_id.to_string(),
            status: format!("{:?}", action.status).to_lowercase(),
        })
    }

    /// Saves the completed plan's outcome in the merchant's episodic memory, so later sessions
    /// and plans see it. A failure here is logged, not fatal: the plan itself is done.
    async fn remember(&self, row: &PlanRow, merchant: &MerchantId, steps: &[Step], answer: &str) {
        let summary = PlanSummary::of(steps);
        let metadata = serde_json::json!({
            "plan_id": row.id,
            "session_id": row.session,
            "task": row.task,
            "tools": steps.iter().map(|s| s.tool.clone()).collect::<Vec<_>>(),
            "done": summary.done,
            "failed": summary.failed,
            "skipped": summary.skipped,
        });
        let text = format!("Plan for \"{}\": {answer}", row.task);
        if let Err(e) = self.agent.remember(merchant, &text, metadata).await {
            tracing::warn!(plan = %row.id, error = %e, "could not save the plan as an episode");
        }
    }

    /// The final human summary: the model's, or a plain account when it cannot write one.
    async fn summarise(&self, row: &PlanRow, steps: &[Step], usage: &mut Usage) -> String {
        let request = prompt::summary_request(&row.merchant, &row.task, steps);
        self.agent.pace_llm().await;
        let reply = tokio::time::timeout(
            self.config.summary_timeout,
            self.agent.model().chat(request),
        )
        .await;
        match reply {
            Ok(Ok(r)) => {
                *usage += r.usage;
                match r.content {
                    Some(text) if !text.trim().is_empty() => text.trim().to_string(),
                    _ => prompt::plain_summary(PlanStatus::Completed, steps),
                }
            }
            Ok(Err(_)) | Err(_) => prompt::plain_summary(PlanStatus::Completed, steps),
        }
    }
}

/// The stored plan `plan_id` read straight from `store` (no model, no embedder needed).
pub fn load_report(store: &PlanStore, plan_id: &str) -> Result<PlanReport, PlanError> {
    let row = store
        .plan(plan_id)?
        .ok_or_else(|| PlanError::UnknownPlan(plan_id.to_string()))?;
    let steps = store.steps(plan_id)?;
    Ok(report_of(&row, steps))
}

fn report_of(row: &PlanRow, steps: Vec<Step>) -> PlanReport {
    PlanReport::new(
        row.id.clone(),
        steps,
        row.status,
        row.merchant.clone(),
        row.session.clone(),
        row.task.clone(),
        row.answer.clone(),
    )
}

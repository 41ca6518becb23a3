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

mod blocking;
mod config;
mod error;
mod executor;
pub mod plan;
pub mod prompt;
pub mod refs;
pub mod store;
pub mod validate;

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

pub use config::PlannerConfig;
pub use error::PlanError;
pub use plan::{PendingStep, PlanReport, PlanStatus, PlanSummary, Step, StepStatus};
use store::{PlanRow, PlanStore};

use crate::agent::runner::Ownership;
use crate::agent::{
    ActionStatus, Agent, AgentError, AgentStore, PendingAction, Progress, TurnRecord,
};
use crate::llm::Usage;
use crate::merchant::MerchantId;

/// Longest plan reply accepted from the model, in bytes; a longer one is invalid unread.
pub const MAX_PLAN_REPLY_BYTES: usize = 256 * 1024;
/// Most validation problems reported (to the model and in errors); the rest are counted.
pub const MAX_PLAN_ERRORS: usize = 20;

/// Largest `max_steps` a planner accepts.
pub const MAX_STEPS_LIMIT: usize = 100;
/// Largest `max_concurrency` a planner accepts.
pub const MAX_CONCURRENCY_LIMIT: usize = 64;

/// Plans tasks and executes plans through an [`Agent`]'s tools and guards.
pub struct Planner {
    agent: Arc<Agent>,
    store: Arc<PlanStore>,
    config: PlannerConfig,
}

impl std::fmt::Debug for Planner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Planner")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The first [`MAX_PLAN_ERRORS`] problems, each cut to 300 characters, and a count of the rest.
fn cap_errors(mut errors: Vec<String>) -> Vec<String> {
    let extra = errors.len().saturating_sub(MAX_PLAN_ERRORS);
    errors.truncate(MAX_PLAN_ERRORS);
    for e in &mut errors {
        if e.chars().count() > 300 {
            *e = e.chars().take(300).collect::<String>() + "…";
        }
    }
    if extra > 0 {
        errors.push(format!("… and {extra} more problem(s)"));
    }
    errors
}

/// An execution's hold on a plan: the OS lock on the plan's lock file (none only when forced on
/// a file system without locks) and the label recorded in `plans.runner`; dropping it (even by
/// cancellation) ends the hold.
struct Claim<'a> {
    store: &'a PlanStore,
    plan: String,
    token: String,
    _owner: Option<Ownership>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let _ = self.store.release(&self.plan, &self.token);
    }
}

impl Planner {
    /// A planner over `agent`; its tables live in the agent's store file.
    pub fn new(agent: Arc<Agent>, config: PlannerConfig) -> Result<Self, PlanError> {
        if !(1..=MAX_STEPS_LIMIT).contains(&config.max_steps) {
            return Err(PlanError::Invalid(format!(
                "max_steps must be 1 to {MAX_STEPS_LIMIT}, not {}",
                config.max_steps
            )));
        }
        if !(1..=MAX_CONCURRENCY_LIMIT).contains(&config.max_concurrency) {
            return Err(PlanError::Invalid(format!(
                "max_concurrency must be 1 to {MAX_CONCURRENCY_LIMIT}, not {}",
                config.max_concurrency
            )));
        }
        let store = PlanStore::open_state(agent.store().state())?;
        Ok(Planner {
            agent,
            store: Arc::new(store),
            config,
        })
    }

    /// The agent the planner acts through.
    pub fn agent(&self) -> &Arc<Agent> {
        &self.agent
    }

    /// The plan store (plans and step states in the agent's `agent.db`).
    pub fn plans(&self) -> &Arc<PlanStore> {
        &self.store
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

    /// [`Planner::resume`] even when the plan's lock cannot be taken because the file system
    /// refuses locks (a plan another live process holds is still refused: ownership is an OS
    /// lock, so a dead or reused holder never blocks a plain resume).
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
        let plan_id = self.plan_holding(action_id).await?;
        self.run_stored(&plan_id, progress, Some(decision), false)
            .await
    }

    /// The plan whose step asked for approval `action_id`: by the step's link, or by the
    /// action's call id (`PLAN:STEP`) when a crash came between the two writes.
    async fn plan_holding(&self, action_id: &str) -> Result<String, PlanError> {
        let id = action_id.to_string();
        if let Some((plan, _)) =
            blocking::plans(&self.store, move |store| store.step_for_action(&id)).await?
        {
            return Ok(plan);
        }
        let action = self
            .action_by_id(action_id)
            .await?
            .ok_or_else(|| PlanError::UnknownAction(action_id.to_string()))?;
        if !crate::agent::is_plan_call(&action.call_id) {
            return Err(PlanError::UnknownAction(action_id.to_string()));
        }
        let plan = action.call_id.split(':').next().unwrap_or_default();
        self.row(plan).await?;
        Ok(plan.to_string())
    }

    /// The stored plan row `plan_id`, read on the blocking pool.
    async fn row(&self, plan_id: &str) -> Result<PlanRow, PlanError> {
        let id = plan_id.to_string();
        blocking::plans(&self.store, move |store| {
            store.plan(&id)?.ok_or(PlanError::UnknownPlan(id))
        })
        .await
    }

    /// The action `action_id`, read on the blocking pool.
    async fn action_by_id(&self, action_id: &str) -> Result<Option<PendingAction>, PlanError> {
        let id = action_id.to_string();
        blocking::agent(
            self.agent.store(),
            move |store| Ok(store.action_by_id(&id)?),
        )
        .await
    }

    /// The stored plan `plan_id` as a report, read on the blocking pool.
    async fn report(&self, plan_id: &str) -> Result<PlanReport, PlanError> {
        let id = plan_id.to_string();
        blocking::plans(&self.store, move |store| load_report(store, &id)).await
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
            &self.agent.domain().planner_hints(),
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
        let (s, m) = (session.clone(), merchant.clone());
        let turn = blocking::agent(self.agent.store(), move |store| {
            store.begin_session(&s, &m)?;
            Ok(store.next_turn(&s)?)
        })
        .await?;
        let row = PlanRow {
            id: format!("plan_{}", uuid::Uuid::new_v4().simple()),
            session,
            merchant: merchant.as_str().to_string(),
            task: task.to_string(),
            status: PlanStatus::Planned,
            answer: None,
            turn,
        };
        let id = row.id.clone();
        blocking::plans(&self.store, move |store| store.insert(&row, &steps)).await?;
        let memory = memory
            .map(|m| serde_json::to_value(m).unwrap_or(Value::Null))
            .unwrap_or(Value::Null);
        let report = self.report(&id).await?;
        Ok((report, usage, memory))
    }

    fn check(&self, reply: &str) -> Result<Vec<plan::DraftStep>, Vec<String>> {
        if reply.len() > MAX_PLAN_REPLY_BYTES {
            return Err(vec![format!(
                "the plan is {} bytes long and at most {MAX_PLAN_REPLY_BYTES} are accepted:                  reply with a plan of at most {} short steps",
                reply.len(),
                self.config.max_steps
            )]);
        }
        let draft = plan::parse_draft(reply).map_err(cap_errors)?;
        validate::validate(&draft, self.agent.tools(), self.config.max_steps).map_err(cap_errors)
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
        self.row(plan_id).await?;
        let owner = match self.agent.gate().locks().try_own("plan", plan_id) {
            Ok(Some(owner)) => Some(owner),
            Ok(None) => return Err(PlanError::Busy(plan_id.to_string())),
            Err(e) if force => {
                tracing::warn!(plan = %plan_id, error = %e, "no lock; --force runs the plan without one");
                None
            }
            Err(e) => return Err(AgentError::from(e).into()),
        };
        let claim = Claim {
            store: &self.store,
            plan: plan_id.to_string(),
            token: owner.as_ref().map_or_else(
                || format!("forced:{}", uuid::Uuid::new_v4().simple()),
                |o| o.token().to_string(),
            ),
            _owner: owner,
        };
        // Holding the lock, whoever `plans.runner` names is gone.
        let (id, token) = (plan_id.to_string(), claim.token.clone());
        if !blocking::plans(&self.store, move |store| {
            store.claim(&id, &token, |_| false)
        })
        .await?
        {
            return Err(PlanError::Busy(plan_id.to_string()));
        }
        // Read under the claim: another process may have finished the plan meanwhile.
        let row = self.row(plan_id).await?;
        let merchant = MerchantId::parse(&row.merchant).map_err(|e| PlanError::Corrupt {
            what: format!("the merchant of plan {plan_id}"),
            source: Box::new(e),
        })?;
        match &decision {
            Some(executor::Decision::Reject(action_id)) => {
                let (plan, action) = (plan_id.to_string(), action_id.clone());
                let agent_store = Arc::clone(self.agent.store());
                blocking::plans(&self.store, move |store| {
                    record_rejection(&agent_store, &action, &store.steps(&plan)?)
                })
                .await?;
            }
            Some(executor::Decision::Approve(action_id)) => {
                let action = self
                    .action_by_id(action_id)
                    .await?
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
            return self.report(plan_id).await;
        }
        // The first execution uses the turn counted at planning; later ones count a new turn.
        let turn = if row.status == PlanStatus::Planned {
            row.turn
        } else {
            let session = row.session.clone();
            blocking::agent(self.agent.store(), move |store| {
                Ok(store.next_turn(&session)?)
            })
            .await?
        };
        let id = plan_id.to_string();
        blocking::plans(&self.store, move |store| {
            store.set_status(&id, PlanStatus::Running, None)
        })
        .await?;
        let ctx = executor::RunContext {
            plan_id: plan_id.to_string(),
            session: row.session.clone(),
            merchant: merchant.clone(),
            turn,
            decision,
        };
        let executor = executor::Executor {
            agent: &self.agent,
            store: &self.store,
            config: &self.config,
        };
        if let Err(e) = executor.drive(&ctx, progress).await {
            // The plan stays `running` (resumable); the error is what the caller needs to see.
            let record = TurnRecord {
                outcome: "error".into(),
                kind: "plan".into(),
                message: row.task.clone(),
                latency_ms: started.elapsed().as_secs_f64() * 1e3,
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                context: serde_json::json!({"plan_id": plan_id, "memory": memory}),
                ..TurnRecord::default()
            };
            let (session, m) = (row.session.clone(), merchant.clone());
            let _ = blocking::agent(self.agent.store(), move |store| {
                Ok(store.record_turn(&session, &m, turn, &record)?)
            })
            .await;
            return Err(e);
        }
        let id = plan_id.to_string();
        let steps = blocking::plans(&self.store, move |store| store.steps(&id)).await?;
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
        let id = plan_id.to_string();
        let answer_text = answer.clone().unwrap_or_default();
        blocking::plans(&self.store, move |store| {
            store.set_status(&id, status, answer.as_deref())
        })
        .await?;
        let record = TurnRecord {
            outcome: outcome.to_string(),
            kind: "plan".into(),
            message: row.task.clone(),
            answer: answer_text,
            latency_ms: started.elapsed().as_secs_f64() * 1e3,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            context: serde_json::json!({"plan_id": plan_id, "memory": memory}),
            ..TurnRecord::default()
        };
        let (session, m) = (row.session.clone(), merchant.clone());
        blocking::agent(self.agent.store(), move |store| {
            Ok(store.record_turn(&session, &m, turn, &record)?)
        })
        .await?;
        drop(claim);
        self.report(plan_id).await
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
        let hints = self.agent.domain().planner_hints();
        let request = prompt::summary_request(&row.merchant, &row.task, steps, &hints);
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

/// Records a human rejection (only of an action still waiting). A rejection recorded before
/// its step was (a crash in between) is carried out, not refused.
fn record_rejection(store: &AgentStore, action_id: &str, steps: &[Step]) -> Result<(), PlanError> {
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

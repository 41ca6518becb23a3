//! Approvals as one library operation: "approve (or reject) action X" finds by itself whether X
//! is held by a chat session or by a plan step and continues the right one — the session's next
//! turn ([`Agent::approve`](crate::agent::Agent::approve)) or the plan
//! ([`Planner::approve`](crate::planner::Planner::approve)). Both run the action through the
//! gate's one executor of approved actions. The CLI (`memex approve|reject`) and the server
//! only call [`decide`] and print the [`Decided`] it returns.
//!
//! An action may be named by its id (`act_…`), by a plan id whose single step waits
//! (`plan_…`), or by a step id with `session` set to its plan id.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::agent::{ActionStatus, AgentError, AgentStore, PendingAction, Progress, TurnReport};
use crate::merchant::MerchantId;
use crate::planner::store::PlanStore;
use crate::planner::{load_report, PlanError, PlanReport, Planner, StepStatus};

/// Approve or reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Run the action (at most once, ever).
    Approve,
    /// Never run it.
    Reject,
}

/// Which action a human decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRequest {
    /// `act_…`, a plan id with one waiting step, or a step id (with `session` = the plan id).
    pub action: String,
    /// The session (or plan) the action must belong to, if given.
    pub session: Option<String>,
}

/// What continued after the decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Continuation {
    /// The chat session's next turn.
    Chat(TurnReport),
    /// The plan, and the plan session's turn count.
    Plan {
        /// The plan as it stands now.
        report: PlanReport,
        /// User turns of the plan's session.
        turns: u32,
    },
}

/// The outcome of a decision, read back from the store afterwards.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    /// The action as stored now (`executed`, `failed`, `rejected`).
    pub action: PendingAction,
    /// Its status before this decision (to tell an earlier decision from this one).
    pub before: ActionStatus,
    /// The continued session or plan.
    pub continuation: Continuation,
}

/// Why nothing was decided.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// No such action.
    #[error("no action {0}")]
    UnknownAction(String),
    /// The action is not in the named session (or plan).
    #[error("no action {action} in session {session}")]
    NotInSession {
        /// The action id.
        action: String,
        /// The session named.
        session: String,
    },
    /// A plan id was given and no step of it waits for approval.
    #[error("plan {0} has no step waiting for approval")]
    NothingWaiting(String),
    /// A plan id was given and several of its steps wait.
    #[error("plan {plan} has {} steps waiting for approval; name one: {}", .waiting.len(), .waiting.join(", "))]
    Ambiguous {
        /// The plan.
        plan: String,
        /// `ACTION (step STEP)` of each waiting step.
        waiting: Vec<String>,
    },
    /// The agent failed (its store, the session, the action's execution).
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The planner failed (its store, the plan, a busy runner).
    #[error(transparent)]
    Plan(#[from] PlanError),
}

impl Decided {
    /// Whether the approved action ran and failed.
    pub fn failed(&self) -> bool {
        self.action.status == ActionStatus::Failed
    }

    /// Whether the action had been decided before this decision (nothing ran now).
    pub fn decided_earlier(&self) -> bool {
        matches!(
            self.before,
            ActionStatus::Executed | ActionStatus::Failed | ActionStatus::Rejected
        )
    }

    /// The action's real outcome in one line (`executed: …`, `failed: …`, `rejected: …`).
    pub fn outcome_line(&self) -> String {
        let action = &self.action;
        let earlier = if self.decided_earlier() {
            " (already decided earlier; nothing was run now)"
        } else {
            ""
        };
        let what = format!("{} (action {})", action.tool, action.id);
        let result = action.result.clone().unwrap_or(Value::Null);
        match action.status {
            ActionStatus::Executed => {
                format!("executed: {what}{earlier}: {}", result_summary(&result))
            }
            ActionStatus::Failed => {
                let reason = result
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| one_line(&result.to_string(), 200));
                format!("failed: {what}{earlier}: {reason}")
            }
            ActionStatus::Rejected => format!("rejected: {what}{earlier}; it was not run"),
            ActionStatus::Pending | ActionStatus::Approved => {
                format!("undecided: {what} is still {:?}", action.status).to_lowercase()
            }
        }
    }

    /// The `approve --json` document: a chat session's turn report; for a plan, the plan
    /// report plus the fields every `approve --json` prints (`turns`, `tool_calls` with the
    /// decided call, `pending_action`, `escalation`, `memory`).
    pub fn to_json(&self) -> Value {
        match &self.continuation {
            Continuation::Chat(report) => serde_json::to_value(report).unwrap_or(Value::Null),
            Continuation::Plan { report, turns } => plan_json(report, &self.action.id, *turns),
        }
    }
}

/// Finds the action `req` names.
pub fn resolve(
    store: &AgentStore,
    plans: &PlanStore,
    req: &DecisionRequest,
) -> Result<PendingAction, ApprovalError> {
    let mut action_id = req.action.trim().to_string();
    if action_id.starts_with("plan_") {
        let report = load_report(plans, &action_id)?;
        match report.pending_actions.as_slice() {
            [one] => action_id = one.action_id.clone(),
            [] => return Err(ApprovalError::NothingWaiting(action_id)),
            many => {
                return Err(ApprovalError::Ambiguous {
                    plan: action_id,
                    waiting: many
                        .iter()
                        .map(|p| format!("{} (step {})", p.action_id, p.step))
                        .collect(),
                })
            }
        }
    }
    if store.action_by_id(&action_id)?.is_none() {
        // `--session PLAN_ID STEP_ID`: the waiting step of a plan, named by its step id.
        if let Some(plan_id) = req.session.as_deref().filter(|s| s.starts_with("plan_")) {
            let report = load_report(plans, plan_id)?;
            if let Some(p) = report.pending_actions.iter().find(|p| p.step == action_id) {
                action_id = p.action_id.clone();
            }
        }
    }
    let action = store
        .action_by_id(&action_id)?
        .ok_or_else(|| ApprovalError::UnknownAction(action_id.clone()))?;
    if let Some(s) = &req.session {
        // The session is the action's; for a plan step the plan id names it as well.
        let plan_matches = plans
            .step_for_action(&action_id)?
            .is_some_and(|(p, _)| &p == s)
            || action.call_id.starts_with(&format!("{s}:"));
        if s != &action.session && !plan_matches {
            return Err(ApprovalError::NotInSession {
                action: action_id,
                session: s.clone(),
            });
        }
    }
    Ok(action)
}

/// Whether `action` is held by a plan step (the step's link, or its `PLAN:STEP` call id).
pub fn held_by_plan(plans: &PlanStore, action: &PendingAction) -> Result<bool, ApprovalError> {
    Ok(plans.step_for_action(&action.id)?.is_some() || crate::agent::is_plan_call(&action.call_id))
}

/// Approves or rejects the action `req` names and continues whatever holds it; returns the
/// action's real outcome and the continued session or plan.
pub async fn decide(
    planner: &Planner,
    req: &DecisionRequest,
    verdict: Verdict,
    progress: &dyn Progress,
) -> Result<Decided, ApprovalError> {
    let agent = planner.agent();
    let (store, plans, request) = (
        Arc::clone(agent.store()),
        Arc::clone(planner.plans()),
        req.clone(),
    );
    let (action, by_plan) = on_pool(move || {
        let action = resolve(&store, &plans, &request)?;
        let by_plan = held_by_plan(&plans, &action)?;
        Ok((action, by_plan))
    })
    .await?;
    let before = action.status;
    let continuation = if by_plan {
        let report = match verdict {
            Verdict::Approve => planner.approve(&action.id, progress).await?,
            Verdict::Reject => planner.reject(&action.id, progress).await?,
        };
        let merchant = MerchantId::parse(&report.merchant).map_err(|e| PlanError::Corrupt {
            what: format!("the merchant of plan {}", report.plan_id),
            source: Box::new(e),
        })?;
        let (store, session) = (Arc::clone(agent.store()), report.session.clone());
        let turns = on_pool(move || Ok(store.begin_session(&session, &merchant)?)).await?;
        Continuation::Plan { report, turns }
    } else {
        let report = match verdict {
            Verdict::Approve => agent.approve(&action.session, &action.id, progress).await?,
            Verdict::Reject => agent.reject(&action.session, &action.id, progress).await?,
        };
        Continuation::Chat(report)
    };
    let (store, id) = (Arc::clone(agent.store()), action.id.clone());
    let action = on_pool(move || {
        store
            .action_by_id(&id)?
            .ok_or(ApprovalError::UnknownAction(id))
    })
    .await?;
    Ok(Decided {
        action,
        before,
        continuation,
    })
}

/// Runs the synchronous store reads and writes of a decision without holding an async worker
/// (`crate::offload`).
async fn on_pool<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApprovalError> + Send + 'static,
) -> Result<T, ApprovalError> {
    crate::offload::blocking(f)
        .await
        .map_err(|e| ApprovalError::Agent(AgentError::Join(e)))?
}

fn plan_json(r: &PlanReport, action_id: &str, turns: u32) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    let decided = r
        .steps
        .iter()
        .find(|s| s.action_id.as_deref() == Some(action_id));
    let tool_calls: Vec<Value> = decided
        .map(|s| {
            let status = match s.status {
                StepStatus::Done => "ok",
                StepStatus::Rejected => "rejected",
                StepStatus::PendingApproval => "pending_approval",
                _ => "error",
            };
            json!({"id": action_id, "tool": s.tool, "args": s.args, "status": status,
                "result": s.result, "latency_ms": 0.0})
        })
        .into_iter()
        .collect();
    let pending = r
        .pending_actions
        .first()
        .map(|p| json!({"id": p.action_id, "tool": p.tool, "args": p.args}));
    if let Some(o) = v.as_object_mut() {
        o.insert("turns".into(), turns.into());
        o.insert("tool_calls".into(), tool_calls.into());
        o.insert("pending_action".into(), pending.unwrap_or(Value::Null));
        o.insert("escalation".into(), Value::Null);
        o.insert(
            "memory".into(),
            json!({"kb": [], "episodes": [], "summary": null}),
        );
        if o.get("answer").is_some_and(Value::is_null) {
            o.insert("answer".into(), "".into());
        }
    }
    v
}

/// The result of an executed action in a few words: the refund id and amount when it is a
/// refund, else the result's JSON cut to one line.
fn result_summary(result: &Value) -> String {
    match result.get("refund_id").and_then(Value::as_str) {
        Some(refund) => {
            let amount = match (result.get("amount"), result.get("currency")) {
                (Some(a), Some(Value::String(c))) => format!(" of {a} {c}"),
                _ => String::new(),
            };
            format!("refund {refund}{amount}")
        }
        None => one_line(&result.to_string(), 200),
    }
}

/// `text` on one line, at most `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max).collect();
    cut.push('…');
    cut
}

//! The seam between [`super::PlanStore`] and where plans are kept: the [`PlanBackend`] trait,
//! the rows both backends return, and the decoding of a stored step, shared so that SQLite and
//! Redis read the same text into the same [`Step`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::planner::error::PlanError;
use crate::planner::plan::{DraftStep, PlanStatus, Step, StepStatus};

/// A plan row.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRow {
    /// Plan id.
    pub id: String,
    /// The agent session its calls are audited under.
    pub session: String,
    /// Merchant id.
    pub merchant: String,
    /// The task.
    pub task: String,
    /// Status.
    pub status: PlanStatus,
    /// The human summary, once written.
    pub answer: Option<String>,
    /// The session turn the plan's calls are recorded under.
    pub turn: u32,
}

/// One line of `memex plan list`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PlanListing {
    /// Plan id.
    pub plan_id: String,
    /// Merchant id.
    pub merchant: String,
    /// Plan status.
    pub status: String,
    /// The task.
    pub task: String,
    /// When it was planned (RFC 3339).
    pub created_at: String,
}

/// A step's new state, as [`super::PlanStore::update_step`] records it. `resolved_args` and
/// `action_id` are kept when `None`; `result`, `error` and the finish time are replaced.
#[derive(Debug, Clone, Copy)]
pub struct StepUpdate<'a> {
    /// Plan id.
    pub plan: &'a str,
    /// Step id.
    pub step: &'a str,
    /// New status.
    pub status: StepStatus,
    /// Tool calls made so far.
    pub attempts: u32,
    /// The arguments with their references resolved (kept when `None`).
    pub resolved_args: Option<&'a Value>,
    /// The tool's result (cleared when `None`).
    pub result: Option<&'a Value>,
    /// Why it failed (cleared when `None`).
    pub error: Option<&'a str>,
    /// The approval holding the step (kept when `None`).
    pub action_id: Option<&'a str>,
}

impl StepUpdate<'_> {
    /// `(started_at, finished_at)` to record at time `at`: a running step starts now, a final
    /// one finishes now; `None` keeps the start time and clears the finish time.
    pub fn times(&self, at: &str) -> (Option<String>, Option<String>) {
        match self.status {
            StepStatus::Running => (Some(at.to_string()), None),
            s if s.is_final() => (None, Some(at.to_string())),
            _ => (None, None),
        }
    }
}

/// Where plans live: SQLite (`agent.db`) or Redis. Each method has the guarantees documented
/// on the [`super::PlanStore`] method of the same name, on every backend.
pub trait PlanBackend: Send + Sync {
    /// Stores a new plan with all steps `pending`, atomically.
    fn insert(&self, row: &PlanRow, steps: &[DraftStep], at: &str) -> Result<(), PlanError>;
    /// The plan `id`, if stored.
    fn plan(&self, id: &str) -> Result<Option<PlanRow>, PlanError>;
    /// The steps of plan `id` as stored, in plan order.
    fn step_records(&self, id: &str) -> Result<Vec<StepRecord>, PlanError>;
    /// Records a step's new state atomically (a missing step is left alone).
    fn update_step(&self, update: &StepUpdate<'_>, at: &str) -> Result<(), PlanError>;
    /// Sets the plan's status (and answer when given) atomically.
    fn set_status(
        &self,
        plan: &str,
        status: PlanStatus,
        answer: Option<&str>,
        at: &str,
    ) -> Result<(), PlanError>;
    /// Records `runner` as the plan's runner unless a live other one is recorded. `alive` runs
    /// inside the store's transaction (on Redis, while a pooled connection is held): it must
    /// not call the store, or any other Redis store, itself.
    fn claim(
        &self,
        plan: &str,
        runner: &str,
        alive: &dyn Fn(&str) -> bool,
    ) -> Result<bool, PlanError>;
    /// Clears the recorded runner if it is `runner`.
    fn release(&self, plan: &str, runner: &str) -> Result<(), PlanError>;
    /// The plan and step that hold approval `action_id`.
    fn step_for_action(&self, action_id: &str) -> Result<Option<(String, String)>, PlanError>;
    /// Plans, newest first (ties by id), optionally of one merchant, at most `limit`.
    fn list(&self, merchant: Option<&str>, limit: usize) -> Result<Vec<PlanListing>, PlanError>;
    /// Redacts the text of `merchant`'s plans run in `sessions` (a plan of another merchant is
    /// never touched): the task, the answer, and each step's description, arguments, results
    /// and error become `"[forgotten]"` (JSON documents: its JSON string); a plan not yet
    /// completed is marked completed, so it never resumes. Safe to repeat; returns the plans
    /// that changed.
    fn forget(&self, merchant: &str, sessions: &[String]) -> Result<u64, PlanError>;
}

/// What forgotten text reads as in the plan store.
pub const FORGOTTEN: &str = "[forgotten]";

/// [`FORGOTTEN`] as a JSON document (the arguments and results columns hold JSON).
pub const FORGOTTEN_JSON: &str = "\"[forgotten]\"";

/// A step as stored: the text both backends keep (JSON documents as text, like the SQLite
/// columns; on Redis this record is the JSON value of the step's field).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Position in the plan.
    pub idx: u32,
    /// Step id.
    pub step_id: String,
    /// What the step does.
    pub description: String,
    /// The tool it calls.
    pub tool: String,
    /// The planned arguments (JSON text, with `$ref`s).
    pub args: String,
    /// The resolved arguments (JSON text), once the step ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_args: Option<String>,
    /// The ids it depends on (a JSON array as text).
    pub depends_on: String,
    /// Step status.
    pub status: String,
    /// Tool calls made.
    #[serde(default)]
    pub attempts: u32,
    /// The tool's result (JSON text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The approval holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_id: Option<String>,
    /// When it started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

fn corrupt(e: impl std::error::Error + Send + Sync + 'static) -> PlanError {
    PlanError::Corrupt {
        what: "a plan row".into(),
        source: Box::new(e),
    }
}

fn parse_json(text: &str) -> Result<Value, PlanError> {
    serde_json::from_str(text).map_err(corrupt)
}

impl StepRecord {
    /// The record of a newly planned step `idx`: `pending`, nothing run.
    pub fn planned(idx: usize, s: &DraftStep) -> Self {
        StepRecord {
            idx: u32::try_from(idx).unwrap_or(u32::MAX),
            step_id: s.id.clone(),
            description: s.description.clone(),
            tool: s.tool.clone(),
            args: s.args.to_string(),
            depends_on: serde_json::to_string(&s.depends_on).unwrap_or_else(|_| "[]".into()),
            status: StepStatus::Pending.as_str().to_string(),
            ..StepRecord::default()
        }
    }

    /// The planned arguments (with their `$ref`s).
    pub fn planned_args(&self) -> Result<Value, PlanError> {
        parse_json(&self.args)
    }

    /// The step, reporting its resolved arguments once it ran.
    pub fn into_step(self) -> Result<Step, PlanError> {
        let depends_on: Vec<String> = serde_json::from_str(&self.depends_on).map_err(corrupt)?;
        let status = StepStatus::parse(&self.status)
            .ok_or_else(|| PlanError::Store(format!("unknown step status {:?}", self.status)))?;
        Ok(Step {
            args: match &self.resolved_args {
                Some(r) => parse_json(r)?,
                None => parse_json(&self.args)?,
            },
            result: match &self.result {
                Some(r) => parse_json(r)?,
                None => Value::Null,
            },
            id: self.step_id,
            description: self.description,
            tool: self.tool,
            depends_on,
            status,
            attempts: self.attempts,
            error: self.error,
            started_at: self.started_at,
            finished_at: self.finished_at,
            action_id: self.action_id,
        })
    }
}

/// Parses a stored plan status.
pub fn plan_status(raw: &str) -> Result<PlanStatus, PlanError> {
    PlanStatus::parse(raw).ok_or_else(|| PlanError::Store(format!("unknown plan status {raw:?}")))
}

//! Plans and their step states, on the agent's state backend (`--state`): SQLite tables in
//! `agent.db` (the embedded default, `on_sqlite`) or keys under `memex:st:plan:` in a Redis
//! shared by many workers (`on_redis`). [`PlanStore`] is the one face callers see; every
//! backend gives the same guarantees: a plan is inserted with its steps atomically, each step
//! update and status change is one atomic write (a crash loses at most the step that was
//! running, which a resume runs again with the same idempotency key), the recorded runner is
//! claimed and released atomically, and a merchant's listing holds only its own plans.

mod backend;
mod on_redis;
mod on_sqlite;

use std::path::Path;

use serde_json::Value;

pub use backend::{PlanBackend, PlanListing, PlanRow, StepRecord, StepUpdate};

use crate::planner::error::PlanError;
use crate::planner::plan::{DraftStep, PlanStatus, Step, StepStatus};
use crate::state::StateUrl;

/// Key prefix of the plan store on Redis.
pub const REDIS_PREFIX: &str = "memex:st:plan:";

/// The planner's store (see the module docs).
pub struct PlanStore {
    backend: Box<dyn PlanBackend>,
    kind: &'static str,
}

impl std::fmt::Debug for PlanStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanStore")
            .field("backend", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Now, as stored (RFC 3339, milliseconds, UTC).
fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl PlanStore {
    /// Opens (creating the tables in) the SQLite file at `path`.
    pub fn open(path: &Path) -> Result<Self, PlanError> {
        Ok(PlanStore {
            backend: Box::new(on_sqlite::SqlitePlans::open(path)?),
            kind: "sqlite",
        })
    }

    /// Opens the plan store of the state backend `state`: the SQLite file, or the Redis
    /// (connecting now, so an unreachable Redis is reported here).
    pub fn open_state(state: &StateUrl) -> Result<Self, PlanError> {
        match state {
            StateUrl::Sqlite(path) => Self::open(path),
            StateUrl::Redis(url) => Self::open_redis(url),
        }
    }

    /// Connects to the Redis at `url` (`redis://HOST:PORT/DB`); keys start with
    /// [`REDIS_PREFIX`].
    pub fn open_redis(url: &str) -> Result<Self, PlanError> {
        Ok(PlanStore {
            backend: Box::new(on_redis::RedisPlans::connect(url, REDIS_PREFIX)?),
            kind: "redis",
        })
    }

    /// A store over any backend (for a backend of one's own).
    pub fn with_backend(backend: Box<dyn PlanBackend>) -> Self {
        PlanStore {
            backend,
            kind: "custom",
        }
    }

    /// Stores a new validated plan, all steps `pending`, atomically.
    pub fn insert(&self, row: &PlanRow, steps: &[DraftStep]) -> Result<(), PlanError> {
        self.backend.insert(row, steps, &now())
    }

    /// The plan `id`, if stored.
    pub fn plan(&self, id: &str) -> Result<Option<PlanRow>, PlanError> {
        self.backend.plan(id)
    }

    /// The steps of plan `id` in plan order. A step that ran reports its resolved arguments.
    pub fn steps(&self, id: &str) -> Result<Vec<Step>, PlanError> {
        self.backend
            .step_records(id)?
            .into_iter()
            .map(StepRecord::into_step)
            .collect()
    }

    /// The planned arguments (with their `$ref`s) of every step of plan `id`, by step id.
    pub fn planned_args(&self, id: &str) -> Result<Vec<(String, Value)>, PlanError> {
        self.backend
            .step_records(id)?
            .into_iter()
            .map(|r| r.planned_args().map(|v| (r.step_id, v)))
            .collect()
    }

    /// Records a step's new state (one atomic write).
    #[allow(clippy::too_many_arguments)]
    pub fn update_step(
        &self,
        plan: &str,
        step: &str,
        status: StepStatus,
        attempts: u32,
        resolved_args: Option<&Value>,
        result: Option<&Value>,
        error: Option<&str>,
        action_id: Option<&str>,
    ) -> Result<(), PlanError> {
        let update = StepUpdate {
            plan,
            step,
            status,
            attempts,
            resolved_args,
            result,
            error,
            action_id,
        };
        self.backend.update_step(&update, &now())
    }

    /// Sets the plan's status (and its answer, when given).
    pub fn set_status(
        &self,
        plan: &str,
        status: PlanStatus,
        answer: Option<&str>,
    ) -> Result<(), PlanError> {
        self.backend.set_status(plan, status, answer, &now())
    }

    /// Takes the plan for `runner` when nobody else holds it, or when its holder is gone
    /// (`alive` says whether a holder is still running). False when a live runner holds it.
    pub fn claim(
        &self,
        plan: &str,
        runner: &str,
        alive: impl Fn(&str) -> bool,
    ) -> Result<bool, PlanError> {
        self.backend.claim(plan, runner, &alive)
    }

    /// Lets go of the plan if `runner` holds it.
    pub fn release(&self, plan: &str, runner: &str) -> Result<(), PlanError> {
        self.backend.release(plan, runner)
    }

    /// The plan and step that hold approval `action_id`, if a plan step does.
    pub fn step_for_action(&self, action_id: &str) -> Result<Option<(String, String)>, PlanError> {
        self.backend.step_for_action(action_id)
    }

    /// Redacts the text of `merchant`'s plans run in `sessions` (see [`PlanBackend::forget`]);
    /// returns the plans that changed.
    pub fn forget(&self, merchant: &str, sessions: &[String]) -> Result<u64, PlanError> {
        self.backend.forget(merchant, sessions)
    }

    /// Plans, newest first, optionally of one merchant.
    pub fn list(
        &self,
        merchant: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PlanListing>, PlanError> {
        self.backend.list(merchant, limit)
    }
}

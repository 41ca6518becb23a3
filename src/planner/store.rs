//! Plans and their step states in SQLite, in the agent's own `agent.db` (so a plan's session,
//! audit log and approvals sit beside it). Every state change is one small committed write, so
//! a crash loses at most the step that was running, which a resume runs again with the same
//! idempotency key.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use super::error::PlanError;
use super::plan::{DraftStep, PlanStatus, Step, StepStatus};

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

/// The planner's tables.
pub struct PlanStore {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for PlanStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanStore").finish_non_exhaustive()
    }
}

fn db_err(e: rusqlite::Error) -> PlanError {
    PlanError::Store(e.to_string())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl PlanStore {
    /// Opens (creating the tables in) the SQLite file at `path`.
    pub fn open(path: &Path) -> Result<Self, PlanError> {
        let conn = crate::agent::store::open_wal(path).map_err(db_err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS plans(
                id TEXT PRIMARY KEY, session_id TEXT NOT NULL, merchant_id TEXT NOT NULL,
                task TEXT NOT NULL, status TEXT NOT NULL, answer TEXT, turn INTEGER NOT NULL,
                runner TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS plan_steps(
                plan_id TEXT NOT NULL, idx INTEGER NOT NULL, step_id TEXT NOT NULL,
                description TEXT NOT NULL, tool TEXT NOT NULL, args TEXT NOT NULL,
                resolved_args TEXT, depends_on TEXT NOT NULL, status TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0, result TEXT, error TEXT, action_id TEXT,
                started_at TEXT, finished_at TEXT,
                PRIMARY KEY(plan_id, step_id));
             CREATE INDEX IF NOT EXISTS plan_steps_action ON plan_steps(action_id);",
        )
        .map_err(db_err)?;
        Ok(PlanStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, PlanError> {
        self.conn
            .lock()
            .map_err(|_| PlanError::Store("the plan store lock was poisoned".into()))
    }

    /// Stores a new validated plan, all steps `pending`, in one transaction.
    pub fn insert(&self, row: &PlanRow, steps: &[DraftStep]) -> Result<(), PlanError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction().map_err(db_err)?;
        let at = now();
        tx.execute(
            "INSERT INTO plans(id, session_id, merchant_id, task, status, answer, turn,
               created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6, ?7, ?7)",
            params![
                row.id,
                row.session,
                row.merchant,
                row.task,
                row.status.as_str(),
                row.turn,
                at
            ],
        )
        .map_err(db_err)?;
        {
            let mut stmt = tx
                .prepare(
                    "INSERT INTO plan_steps(plan_id, idx, step_id, description, tool, args,
                       depends_on, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending')",
                )
                .map_err(db_err)?;
            for (i, s) in steps.iter().enumerate() {
                stmt.execute(params![
                    row.id,
                    i as i64,
                    s.id,
                    s.description,
                    s.tool,
                    s.args.to_string(),
                    serde_json::to_string(&s.depends_on).unwrap_or_else(|_| "[]".into()),
                ])
                .map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    /// The plan `id`, if stored.
    pub fn plan(&self, id: &str) -> Result<Option<PlanRow>, PlanError> {
        let conn = self.conn()?;
        let row: Option<(String, String, String, String, Option<String>, u32)> = conn
            .query_row(
                "SELECT session_id, merchant_id, task, status, answer, turn FROM plans
                 WHERE id = ?1",
                params![id],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )
            .optional()
            .map_err(db_err)?;
        row.map(|(session, merchant, task, status, answer, turn)| {
            Ok(PlanRow {
                id: id.to_string(),
                session,
                merchant,
                task,
                status: PlanStatus::parse(&status)
                    .ok_or_else(|| PlanError::Store(format!("unknown plan status {status:?}")))?,
                answer,
                turn,
            })
        })
        .transpose()
    }

    /// The steps of plan `id` in plan order. A step that ran reports its resolved arguments.
    pub fn steps(&self, id: &str) -> Result<Vec<Step>, PlanError> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT step_id, description, tool, args, resolved_args, depends_on, status,
                        attempts, result, error, action_id, started_at, finished_at
                 FROM plan_steps WHERE plan_id = ?1 ORDER BY idx",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, u32>(7)?,
                    r.get::<_, Option<String>>(8)?,
                    r.get::<_, Option<String>>(9)?,
                    r.get::<_, Option<String>>(10)?,
                    r.get::<_, Option<String>>(11)?,
                    r.get::<_, Option<String>>(12)?,
                ))
            })
            .map_err(db_err)?;
        let parse = |t: &str| -> Result<Value, PlanError> {
            serde_json::from_str(t).map_err(|e| PlanError::Store(format!("corrupt plan row: {e}")))
        };
        rows.map(|row| {
            let (
                step_id,
                description,
                tool,
                args,
                resolved,
                deps,
                status,
                attempts,
                result,
                error,
                action_id,
                started_at,
                finished_at,
            ) = row.map_err(db_err)?;
            let depends_on: Vec<String> = serde_json::from_str(&deps)
                .map_err(|e| PlanError::Store(format!("corrupt plan row: {e}")))?;
            Ok(Step {
                id: step_id,
                description,
                tool,
                args: match resolved {
                    Some(r) => parse(&r)?,
                    None => parse(&args)?,
                },
                depends_on,
                status: StepStatus::parse(&status)
                    .ok_or_else(|| PlanError::Store(format!("unknown step status {status:?}")))?,
                attempts,
                result: match result {
                    Some(r) => parse(&r)?,
                    None => Value::Null,
                },
                error,
                started_at,
                finished_at,
                action_id,
            })
        })
        .collect()
    }

    /// The planned arguments (with their `$ref`s) of every step of plan `id`, by step id.
    pub fn planned_args(&self, id: &str) -> Result<Vec<(String, Value)>, PlanError> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare_cached("SELECT step_id, args FROM plan_steps WHERE plan_id = ?1 ORDER BY idx")
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(db_err)?;
        rows.map(|row| {
            let (step, args) = row.map_err(db_err)?;
            let v = serde_json::from_str(&args)
                .map_err(|e| PlanError::Store(format!("corrupt plan row: {e}")))?;
            Ok((step, v))
        })
        .collect()
    }

    /// Records a step's new state.
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
        let conn = self.conn()?;
        let at = now();
        let (started, finished) = match status {
            StepStatus::Running => (Some(at.as_str()), None),
            s if s.is_final() => (None, Some(at.as_str())),
            _ => (None, None),
        };
        conn.prepare_cached(
            "UPDATE plan_steps SET status = ?1, attempts = ?2,
               resolved_args = COALESCE(?3, resolved_args), result = ?4, error = ?5,
               action_id = COALESCE(?6, action_id), started_at = COALESCE(?7, started_at),
               finished_at = ?8
             WHERE plan_id = ?9 AND step_id = ?10",
        )
        .and_then(|mut s| {
            s.execute(params![
                status.as_str(),
                attempts,
                resolved_args.map(|v| v.to_string()),
                result.map(|v| v.to_string()),
                error,
                action_id,
                started,
                finished,
                plan,
                step
            ])
        })
        .map_err(db_err)?;
        Ok(())
    }

    /// Sets the plan's status (and its answer, when given).
    pub fn set_status(
        &self,
        plan: &str,
        status: PlanStatus,
        answer: Option<&str>,
    ) -> Result<(), PlanError> {
        self.conn()?
            .prepare_cached(
                "UPDATE plans SET status = ?1, answer = COALESCE(?2, answer), updated_at = ?3
                 WHERE id = ?4",
            )
            .and_then(|mut s| s.execute(params![status.as_str(), answer, now(), plan]))
            .map_err(db_err)?;
        Ok(())
    }

    /// Takes the plan for `runner` when nobody else holds it, or when its holder is gone
    /// (`alive` says whether a holder is still running). False when a live runner holds it.
    pub fn claim(
        &self,
        plan: &str,
        runner: &str,
        alive: impl Fn(&str) -> bool,
    ) -> Result<bool, PlanError> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let holder: Option<Option<String>> = tx
            .query_row(
                "SELECT runner FROM plans WHERE id = ?1",
                params![plan],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        let Some(holder) = holder else {
            return Err(PlanError::UnknownPlan(plan.to_string()));
        };
        if let Some(h) = holder {
            if h != runner && alive(&h) {
                return Ok(false);
            }
        }
        tx.execute(
            "UPDATE plans SET runner = ?1 WHERE id = ?2",
            params![runner, plan],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(true)
    }

    /// Lets go of the plan if `runner` holds it.
    pub fn release(&self, plan: &str, runner: &str) -> Result<(), PlanError> {
        self.conn()?
            .execute(
                "UPDATE plans SET runner = NULL WHERE id = ?1 AND runner = ?2",
                params![plan, runner],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// The plan and step that hold approval `action_id`, if a plan step does.
    pub fn step_for_action(&self, action_id: &str) -> Result<Option<(String, String)>, PlanError> {
        self.conn()?
            .query_row(
                "SELECT plan_id, step_id FROM plan_steps WHERE action_id = ?1",
                params![action_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db_err)
    }

    /// Plans, newest first, optionally of one merchant.
    pub fn list(
        &self,
        merchant: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PlanListing>, PlanError> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare(
                "SELECT id, merchant_id, status, task, created_at FROM plans
                 WHERE ?1 IS NULL OR merchant_id = ?1 ORDER BY created_at DESC, id LIMIT ?2",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![merchant, limit as i64], |r| {
                Ok(PlanListing {
                    plan_id: r.get(0)?,
                    merchant: r.get(1)?,
                    status: r.get(2)?,
                    task: r.get(3)?,
                    created_at: r.get(4)?,
                })
            })
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)
    }
}

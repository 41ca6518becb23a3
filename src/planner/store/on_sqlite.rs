//! Plans and their step states in SQLite, in the agent's own `agent.db` (so a plan's session,
//! audit log and approvals sit beside it). Every state change is one small committed write, so
//! a crash loses at most the step that was running, which a resume runs again with the same
//! idempotency key.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::backend::{
    plan_status, PlanBackend, PlanListing, PlanRow, StepRecord, StepUpdate, FORGOTTEN,
    FORGOTTEN_JSON,
};
use crate::planner::error::PlanError;
use crate::planner::plan::{DraftStep, PlanStatus};

/// The planner's tables in a SQLite file.
pub struct SqlitePlans {
    conn: crate::sqlite::SharedConn,
}

fn db_err(e: rusqlite::Error) -> PlanError {
    PlanError::Sqlite(e)
}

impl SqlitePlans {
    /// Opens (creating the tables in) the SQLite file at `path`.
    pub fn open(path: &Path) -> Result<Self, PlanError> {
        // The process's one writer connection on the file, shared with the agent store.
        let conn = crate::sqlite::shared_wal(path)?;
        crate::sqlite::lock(&conn)
            .execute_batch(
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
        Ok(SqlitePlans { conn })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        crate::sqlite::lock(&self.conn)
    }
}

impl PlanBackend for SqlitePlans {
    fn insert(&self, row: &PlanRow, steps: &[DraftStep], at: &str) -> Result<(), PlanError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db_err)?;
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
                       depends_on, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(db_err)?;
            for (i, s) in steps.iter().enumerate() {
                let r = StepRecord::planned(i, s);
                stmt.execute(params![
                    row.id,
                    r.idx,
                    r.step_id,
                    r.description,
                    r.tool,
                    r.args,
                    r.depends_on,
                    r.status,
                ])
                .map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    fn plan(&self, id: &str) -> Result<Option<PlanRow>, PlanError> {
        let conn = self.conn();
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
                status: plan_status(&status)?,
                answer,
                turn,
            })
        })
        .transpose()
    }

    fn step_records(&self, id: &str) -> Result<Vec<StepRecord>, PlanError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT idx, step_id, description, tool, args, resolved_args, depends_on,
                        status, attempts, result, error, action_id, started_at, finished_at
                 FROM plan_steps WHERE plan_id = ?1 ORDER BY idx",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![id], |r| {
                Ok(StepRecord {
                    idx: r.get(0)?,
                    step_id: r.get(1)?,
                    description: r.get(2)?,
                    tool: r.get(3)?,
                    args: r.get(4)?,
                    resolved_args: r.get(5)?,
                    depends_on: r.get(6)?,
                    status: r.get(7)?,
                    attempts: r.get(8)?,
                    result: r.get(9)?,
                    error: r.get(10)?,
                    action_id: r.get(11)?,
                    started_at: r.get(12)?,
                    finished_at: r.get(13)?,
                })
            })
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)
    }

    fn update_step(&self, u: &StepUpdate<'_>, at: &str) -> Result<(), PlanError> {
        let conn = self.conn();
        let (started, finished) = u.times(at);
        conn.prepare_cached(
            "UPDATE plan_steps SET status = ?1, attempts = ?2,
               resolved_args = COALESCE(?3, resolved_args), result = ?4, error = ?5,
               action_id = COALESCE(?6, action_id), started_at = COALESCE(?7, started_at),
               finished_at = ?8
             WHERE plan_id = ?9 AND step_id = ?10",
        )
        .and_then(|mut s| {
            s.execute(params![
                u.status.as_str(),
                u.attempts,
                u.resolved_args.map(|v| v.to_string()),
                u.result.map(|v| v.to_string()),
                u.error,
                u.action_id,
                started,
                finished,
                u.plan,
                u.step
            ])
        })
        .map_err(db_err)?;
        Ok(())
    }

    fn set_status(
        &self,
        plan: &str,
        status: PlanStatus,
        answer: Option<&str>,
        at: &str,
    ) -> Result<(), PlanError> {
        self.conn()
            .prepare_cached(
                "UPDATE plans SET status = ?1, answer = COALESCE(?2, answer), updated_at = ?3
                 WHERE id = ?4",
            )
            .and_then(|mut s| s.execute(params![status.as_str(), answer, at, plan]))
            .map_err(db_err)?;
        Ok(())
    }

    fn claim(
        &self,
        plan: &str,
        runner: &str,
        alive: &dyn Fn(&str) -> bool,
    ) -> Result<bool, PlanError> {
        let mut conn = self.conn();
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

    fn release(&self, plan: &str, runner: &str) -> Result<(), PlanError> {
        self.conn()
            .execute(
                "UPDATE plans SET runner = NULL WHERE id = ?1 AND runner = ?2",
                params![plan, runner],
            )
            .map_err(db_err)?;
        Ok(())
    }

    fn step_for_action(&self, action_id: &str) -> Result<Option<(String, String)>, PlanError> {
        self.conn()
            .query_row(
                "SELECT plan_id, step_id FROM plan_steps WHERE action_id = ?1",
                params![action_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db_err)
    }

    fn list(&self, merchant: Option<&str>, limit: usize) -> Result<Vec<PlanListing>, PlanError> {
        let conn = self.conn();
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

    fn forget(&self, merchant: &str, sessions: &[String]) -> Result<u64, PlanError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db_err)?;
        let mut n = 0u64;
        for session in sessions {
            tx.execute(
                "UPDATE plan_steps SET description = ?3, args = ?4,
                   resolved_args = CASE WHEN resolved_args IS NULL THEN NULL ELSE ?4 END,
                   result = CASE WHEN result IS NULL THEN NULL ELSE ?4 END,
                   error = CASE WHEN error IS NULL THEN NULL ELSE ?3 END
                 WHERE plan_id IN (SELECT id FROM plans WHERE merchant_id = ?1 AND session_id = ?2)",
                params![merchant, session, FORGOTTEN, FORGOTTEN_JSON],
            )
            .map_err(db_err)?;
            n += tx
                .execute(
                    "UPDATE plans SET task = ?3,
                       answer = CASE WHEN answer IS NULL THEN NULL ELSE ?3 END,
                       status = 'completed'
                     WHERE merchant_id = ?1 AND session_id = ?2
                       AND (task != ?3 OR status != 'completed')",
                    params![merchant, session, FORGOTTEN],
                )
                .map_err(db_err)? as u64;
        }
        tx.commit().map_err(db_err)?;
        Ok(n)
    }
}

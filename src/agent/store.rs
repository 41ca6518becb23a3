//! The agent's own SQLite file (`agent.db`): sessions, turns (with the memory context used),
//! the audit log of every tool call, and pending irreversible actions with their decisions.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::Value;

use super::error::AgentError;
use crate::merchant::MerchantId;

/// One row of the audit log.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditEntry {
    /// Session the call belongs to.
    pub session: String,
    /// Merchant of the session.
    pub merchant: String,
    /// User turn number within the session (1-based).
    pub turn: u32,
    /// The model's tool-call id.
    pub call_id: String,
    /// Tool name as the model gave it.
    pub tool: String,
    /// Arguments (secrets redacted).
    pub args: Value,
    /// Result or error (secrets redacted).
    pub result: Value,
    /// Outcome status (`ok`, `error`, `invalid_args`, …).
    pub status: String,
    /// Time spent executing, in milliseconds.
    pub latency_ms: f64,
    /// When it happened (RFC 3339).
    pub at: String,
}

/// Status of an irreversible action awaiting or past a human decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    /// Waiting for a human.
    Pending,
    /// Approved; execution started (or crashed before it was recorded).
    Approved,
    /// Approved and executed; its result is stored.
    Executed,
    /// Rejected by a human.
    Rejected,
    /// Approved, but the tool failed.
    Failed,
}

impl ActionStatus {
    fn as_str(self) -> &'static str {
        match self {
            ActionStatus::Pending => "pending",
            ActionStatus::Approved => "approved",
            ActionStatus::Executed => "executed",
            ActionStatus::Rejected => "rejected",
            ActionStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<Self, AgentError> {
        Ok(match s {
            "pending" => ActionStatus::Pending,
            "approved" => ActionStatus::Approved,
            "executed" => ActionStatus::Executed,
            "rejected" => ActionStatus::Rejected,
            "failed" => ActionStatus::Failed,
            other => {
                return Err(AgentError::Store(format!(
                    "unknown action status {other:?}"
                )))
            }
        })
    }
}

/// An irreversible action the model asked for.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PendingAction {
    /// The approval id (`act_…`), also the tool's idempotency key.
    pub id: String,
    /// Session it belongs to.
    pub session: String,
    /// Merchant of the session.
    pub merchant: String,
    /// The tool to run.
    pub tool: String,
    /// The exact arguments that an approval executes.
    pub args: Value,
    /// Where it stands.
    pub status: ActionStatus,
    /// The tool's result once executed.
    pub result: Option<Value>,
    /// The tool call it was created for (the model's call id, or `PLAN:STEP` for a plan step).
    pub call_id: String,
}

/// What one finished turn leaves behind for `memex stats`.
#[derive(Debug, Clone, Default)]
pub struct TurnRecord {
    /// `answer`, `pending_action`, `escalation` or `error`.
    pub outcome: String,
    /// Wall time of the turn in milliseconds.
    pub latency_ms: f64,
    /// Prompt tokens over the turn's LLM calls.
    pub prompt_tokens: u64,
    /// Completion tokens over the turn's LLM calls.
    pub completion_tokens: u64,
    /// The memory context used, as JSON.
    pub context: Value,
}

/// Aggregates for `memex stats`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Stats {
    /// Sessions started.
    pub sessions: u64,
    /// User turns run (including approve/reject continuations).
    pub turns: u64,
    /// Share of turns that ended with an answer or a pending action (not an error).
    pub success_rate: f64,
    /// Tool calls recorded in the audit log.
    pub tool_calls: u64,
    /// Share of tool calls whose status is `error`.
    pub tool_failure_rate: f64,
    /// Calls refused as repeats within a turn.
    pub loop_detections: u64,
    /// Irreversible calls stopped at the approval gate.
    pub blocked_irreversible: u64,
    /// Turns that ended in an escalation.
    pub escalations: u64,
    /// Prompt + completion tokens.
    pub llm_tokens: u64,
    /// Turn latency percentiles in milliseconds.
    pub latency_ms: Percentiles,
}

/// p50/p95/p99.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// The agent's SQLite store.
pub struct AgentStore {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl std::fmt::Debug for AgentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentStore")
            .field("path", &self.path)
            .finish()
    }
}

/// Opens the SQLite file at `path` the way every table in `agent.db` expects: a 5 s busy
/// timeout, WAL journal, `synchronous=NORMAL`.
pub(crate) fn open_wal(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")?;
    Ok(conn)
}

fn db_err(e: rusqlite::Error) -> AgentError {
    AgentError::Store(e.to_string())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl AgentStore {
    /// Opens (creating) `agent.db` in `data_dir`.
    pub fn open_in(data_dir: &Path) -> Result<Self, AgentError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| AgentError::Store(format!("cannot create {}: {e}", data_dir.display())))?;
        Self::open(&data_dir.join("agent.db"))
    }

    /// Opens (creating) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, AgentError> {
        let conn = open_wal(path).map_err(db_err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS sessions(
                id TEXT PRIMARY KEY, merchant_id TEXT NOT NULL, created_at TEXT NOT NULL,
                turns INTEGER NOT NULL DEFAULT 0, ended_at TEXT, episode_id TEXT);
             CREATE TABLE IF NOT EXISTS turns(
                id INTEGER PRIMARY KEY, session_id TEXT NOT NULL, merchant_id TEXT NOT NULL,
                turn INTEGER NOT NULL, at TEXT NOT NULL, outcome TEXT NOT NULL,
                latency_ms REAL NOT NULL, prompt_tokens INTEGER NOT NULL,
                completion_tokens INTEGER NOT NULL, context TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS audit(
                id INTEGER PRIMARY KEY, session_id TEXT NOT NULL, merchant_id TEXT NOT NULL,
                turn INTEGER NOT NULL, call_id TEXT NOT NULL, tool TEXT NOT NULL,
                args TEXT NOT NULL, result TEXT NOT NULL, status TEXT NOT NULL,
                latency_ms REAL NOT NULL, at TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS audit_session ON audit(session_id, id);
             CREATE TABLE IF NOT EXISTS actions(
                id TEXT PRIMARY KEY, session_id TEXT NOT NULL, merchant_id TEXT NOT NULL,
                turn INTEGER NOT NULL, call_id TEXT NOT NULL, tool TEXT NOT NULL,
                args TEXT NOT NULL, status TEXT NOT NULL, result TEXT,
                created_at TEXT NOT NULL, decided_at TEXT, executed_at TEXT);
             CREATE INDEX IF NOT EXISTS actions_call ON actions(session_id, call_id);",
        )
        .map_err(db_err)?;
        // Stores made before `executor` existed get the column (NULL: nobody executing).
        let has_executor: bool = conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('actions') WHERE name = 'executor'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(db_err)?
            > 0;
        if !has_executor {
            conn.execute_batch("ALTER TABLE actions ADD COLUMN executor TEXT;")
                .map_err(db_err)?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    /// The database file (the planner keeps its tables in the same file).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, AgentError> {
        self.conn
            .lock()
            .map_err(|_| AgentError::Store("the agent store lock was poisoned".into()))
    }

    /// Registers `session` for `merchant`, or checks that an existing one belongs to it.
    /// Returns the number of turns the session already has.
    pub fn begin_session(&self, session: &str, merchant: &MerchantId) -> Result<u32, AgentError> {
        let conn = self.conn()?;
        let existing: Option<(String, u32)> = conn
            .query_row(
                "SELECT merchant_id, turns FROM sessions WHERE id = ?1",
                params![session],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db_err)?;
        match existing {
            Some((owner, _)) if owner != merchant.as_str() => Err(AgentError::SessionMerchant {
                session: session.to_string(),
            }),
            Some((_, turns)) => Ok(turns),
            None => {
                conn.execute(
                    "INSERT INTO sessions(id, merchant_id, created_at) VALUES (?1, ?2, ?3)",
                    params![session, merchant.as_str(), now()],
                )
                .map_err(db_err)?;
                Ok(0)
            }
        }
    }

    /// The merchant that owns `session`, if the session exists.
    pub fn session_merchant(&self, session: &str) -> Result<Option<MerchantId>, AgentError> {
        let conn = self.conn()?;
        let owner: Option<String> = conn
            .query_row(
                "SELECT merchant_id FROM sessions WHERE id = ?1",
                params![session],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        owner
            .map(|o| MerchantId::parse(&o).map_err(|e| AgentError::Store(e.to_string())))
            .transpose()
    }

    /// Counts a new turn for `session` and returns its number.
    pub fn next_turn(&self, session: &str) -> Result<u32, AgentError> {
        let conn = self.conn()?;
        conn.execute(
            "UPDATE sessions SET turns = turns + 1 WHERE id = ?1",
            params![session],
        )
        .map_err(db_err)?;
        conn.query_row(
            "SELECT turns FROM sessions WHERE id = ?1",
            params![session],
            |r| r.get(0),
        )
        .map_err(db_err)
    }

    /// Records a finished turn.
    pub fn record_turn(
        &self,
        session: &str,
        merchant: &MerchantId,
        turn: u32,
        rec: &TurnRecord,
    ) -> Result<(), AgentError> {
        self.conn()?
            .execute(
                "INSERT INTO turns(session_id, merchant_id, turn, at, outcome, latency_ms,
                   prompt_tokens, completion_tokens, context)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    session,
                    merchant.as_str(),
                    turn,
                    now(),
                    rec.outcome,
                    rec.latency_ms,
                    rec.prompt_tokens as i64,
                    rec.completion_tokens as i64,
                    rec.context.to_string()
                ],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// The memory context recorded for each turn of `session`, oldest first.
    pub fn turn_contexts(&self, session: &str) -> Result<Vec<Value>, AgentError> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare("SELECT context FROM turns WHERE session_id = ?1 ORDER BY id")
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![session], |r| r.get::<_, String>(0))
            .map_err(db_err)?;
        rows.map(|r| {
            let text = r.map_err(db_err)?;
            serde_json::from_str(&text).map_err(|e| AgentError::Store(e.to_string()))
        })
        .collect()
    }

    /// Appends one audit entry.
    pub fn audit(&self, e: &AuditEntry) -> Result<(), AgentError> {
        self.conn()?
            .execute(
                "INSERT INTO audit(session_id, merchant_id, turn, call_id, tool, args, result,
                   status, latency_ms, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    e.session,
                    e.merchant,
                    e.turn,
                    e.call_id,
                    e.tool,
                    e.args.to_string(),
                    e.result.to_string(),
                    e.status,
                    e.latency_ms,
                    e.at
                ],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// The audit log of `session`, in order.
    pub fn audit_log(&self, session: &str) -> Result<Vec<AuditEntry>, AgentError> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare(
                "SELECT session_id, merchant_id, turn, call_id, tool, args, result, status,
                        latency_ms, at FROM audit WHERE session_id = ?1 ORDER BY id",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![session], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, u32>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, String>(7)?,
                    r.get::<_, f64>(8)?,
                    r.get::<_, String>(9)?,
                ))
            })
            .map_err(db_err)?;
        rows.map(|row| {
            let (session, merchant, turn, call_id, tool, args, result, status, latency_ms, at) =
                row.map_err(db_err)?;
            Ok(AuditEntry {
                session,
                merchant,
                turn,
                call_id,
                tool,
                args: serde_json::from_str(&args).unwrap_or(Value::String(args)),
                result: serde_json::from_str(&result).unwrap_or(Value::String(result)),
                status,
                latency_ms,
                at,
            })
        })
        .collect()
    }

    /// Stores a new pending action and returns its id.
    pub fn create_action(
        &self,
        session: &str,
        merchant: &MerchantId,
        turn: u32,
        call_id: &str,
        tool: &str,
        args: &Value,
    ) -> Result<String, AgentError> {
        let id = format!("act_{}", uuid::Uuid::new_v4().simple());
        self.conn()?
            .execute(
                "INSERT INTO actions(id, session_id, merchant_id, turn, call_id, tool, args,
                   status, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8)",
                params![
                    id,
                    session,
                    merchant.as_str(),
                    turn,
                    call_id,
                    tool,
                    args.to_string(),
                    now()
                ],
            )
            .map_err(db_err)?;
        Ok(id)
    }

    /// The action `id` of `session`, if any.
    pub fn action(&self, session: &str, id: &str) -> Result<Option<PendingAction>, AgentError> {
        self.action_where("id = ?1 AND session_id = ?2", id, session)
    }

    /// The action of `session` created for tool call `call_id`, if any (the planner uses it
    /// so that a step asks for at most one approval, even across a crash).
    pub fn action_by_call(
        &self,
        session: &str,
        call_id: &str,
    ) -> Result<Option<PendingAction>, AgentError> {
        self.action_where("call_id = ?1 AND session_id = ?2", call_id, session)
    }

    fn action_where(
        &self,
        condition: &str,
        a: &str,
        session: &str,
    ) -> Result<Option<PendingAction>, AgentError> {
        let conn = self.conn()?;
        type Row = (
            String,
            String,
            String,
            String,
            String,
            Option<String>,
            String,
        );
        let row: Option<Row> = conn
            .query_row(
                &format!(
                    "SELECT id, merchant_id, tool, args, status, result, call_id FROM actions
                     WHERE {condition} ORDER BY created_at LIMIT 1"
                ),
                params![a, session],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
                },
            )
            .optional()
            .map_err(db_err)?;
        row.map(|(id, merchant, tool, args, status, result, call_id)| {
            Ok(PendingAction {
                id,
                session: session.to_string(),
                merchant,
                tool,
                args: serde_json::from_str(&args).map_err(|e| AgentError::Store(e.to_string()))?,
                status: ActionStatus::parse(&status)?,
                result: result.and_then(|r| serde_json::from_str(&r).ok()),
                call_id,
            })
        })
        .transpose()
    }

    /// The action `id`, whatever its session (action ids are unique), if any.
    pub fn action_by_id(&self, id: &str) -> Result<Option<PendingAction>, AgentError> {
        let session: Option<String> = self
            .conn()?
            .query_row(
                "SELECT session_id FROM actions WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        match session {
            Some(session) => self.action(&session, id),
            None => Ok(None),
        }
    }

    /// Takes action `id` for execution by `runner` (`PID:TOKEN`), atomically: a `pending`
    /// action becomes `approved`; an `approved` one (an execution that was interrupted) is taken
    /// over only when its recorded executor is no longer `alive`. False when the action is in
    /// any other state or another live execution holds it — so two approvals never both run it.
    pub fn claim_execution(
        &self,
        id: &str,
        runner: &str,
        alive: impl Fn(&str) -> bool,
    ) -> Result<bool, AgentError> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let row: Option<(String, Option<String>)> = tx
            .query_row(
                "SELECT status, executor FROM actions WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db_err)?;
        let free = match row {
            Some((status, _)) if status == "pending" => true,
            Some((status, executor)) if status == "approved" => {
                executor.is_none_or(|e| e == runner || !alive(&e))
            }
            _ => false,
        };
        if !free {
            return Ok(false);
        }
        tx.execute(
            "UPDATE actions SET status = 'approved', executor = ?1,
               decided_at = COALESCE(decided_at, ?2) WHERE id = ?3",
            params![runner, now(), id],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(true)
    }

    /// Moves action `id` from `from` to `to` atomically; false when it was not in `from`.
    pub fn transition(
        &self,
        id: &str,
        from: &[ActionStatus],
        to: ActionStatus,
        result: Option<&Value>,
    ) -> Result<bool, AgentError> {
        let conn = self.conn()?;
        let from_list = from
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(",");
        let column = match to {
            ActionStatus::Executed | ActionStatus::Failed => "executed_at",
            _ => "decided_at",
        };
        let sql = format!(
            "UPDATE actions SET status = ?1, result = COALESCE(?2, result), {column} = ?3
             WHERE id = ?4 AND status IN ({from_list})"
        );
        let n = conn
            .execute(
                &sql,
                params![to.as_str(), result.map(|r| r.to_string()), now(), id],
            )
            .map_err(db_err)?;
        Ok(n == 1)
    }

    /// Marks the session ended with the episode that summarises it.
    pub fn end_session(&self, session: &str, episode_id: &str) -> Result<(), AgentError> {
        self.conn()?
            .execute(
                "UPDATE sessions SET ended_at = ?1, episode_id = ?2 WHERE id = ?3",
                params![now(), episode_id, session],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// Aggregates over every session.
    pub fn stats(&self) -> Result<Stats, AgentError> {
        let conn = self.conn()?;
        let one = |sql: &str| -> Result<u64, AgentError> {
            conn.query_row(sql, [], |r| r.get::<_, i64>(0))
                .map(|v| v.max(0) as u64)
                .map_err(db_err)
        };
        let sessions = one("SELECT COUNT(*) FROM sessions")?;
        let turns = one("SELECT COUNT(*) FROM turns")?;
        let ok_turns =
            one("SELECT COUNT(*) FROM turns WHERE outcome IN ('answer','pending_action')")?;
        let escalations = one("SELECT COUNT(*) FROM turns WHERE outcome = 'escalation'")?;
        let tool_calls = one("SELECT COUNT(*) FROM audit")?;
        let failures = one("SELECT COUNT(*) FROM audit WHERE status = 'error'")?;
        let loops = one("SELECT COUNT(*) FROM audit WHERE status = 'loop_detected'")?;
        let blocked = one("SELECT COUNT(*) FROM audit WHERE status = 'pending_approval'")?;
        let tokens = one("SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM turns")?;
        let mut stmt = conn
            .prepare("SELECT latency_ms FROM turns ORDER BY latency_ms")
            .map_err(db_err)?;
        let lat: Vec<f64> = stmt
            .query_map([], |r| r.get(0))
            .map_err(db_err)?
            .collect::<Result<_, _>>()
            .map_err(db_err)?;
        let pct = |p: f64| -> f64 {
            if lat.is_empty() {
                return 0.0;
            }
            let idx = ((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1;
            lat[idx]
        };
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        Ok(Stats {
            sessions,
            turns,
            success_rate: ratio(ok_turns, turns),
            tool_calls,
            tool_failure_rate: ratio(failures, tool_calls),
            loop_detections: loops,
            blocked_irreversible: blocked,
            escalations,
            llm_tokens: tokens,
            latency_ms: Percentiles {
                p50: pct(0.50),
                p95: pct(0.95),
                p99: pct(0.99),
            },
        })
    }
}

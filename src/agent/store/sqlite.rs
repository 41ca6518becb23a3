//! The SQLite backend of the agent store: `agent.db` (sessions, turns, audit, actions,
//! session locks), with runner ownership through OS lock files beside it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use super::types::{
    ActionStatus, AgentStateBackend, AuditEntry, ModelStats, PendingAction, Percentiles, Redacted,
    SessionInfo, Stats, StoredTurn, TurnRecord,
};
use crate::agent::error::AgentError;
use crate::merchant::MerchantId;

/// The agent store in one SQLite file.
pub struct SqliteAgentState {
    conn: crate::sqlite::SharedConn,
    path: PathBuf,
    /// Whether `turns` has `kind`, `message`, `answer`, `models` and `audit` has `model`: always
    /// after [`SqliteAgentState::open`] (which adds them); a store from an older release opened
    /// read-only may lack them, and is then read with their defaults.
    newer: bool,
}

/// The columns later releases added, as `(table, column, declaration)`.
const ADDED_COLUMNS: [(&str, &str, &str); 5] = [
    ("turns", "kind", "TEXT NOT NULL DEFAULT 'message'"),
    ("turns", "message", "TEXT NOT NULL DEFAULT ''"),
    ("turns", "answer", "TEXT NOT NULL DEFAULT ''"),
    ("turns", "models", "TEXT NOT NULL DEFAULT '[]'"),
    ("audit", "model", "TEXT"),
];

/// Whether `table` has `column`.
fn has_column(conn: &Connection, table: &str, column: &str) -> Result<bool, AgentError> {
    conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
        params![table, column],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
    .map_err(db_err)
}

/// Whether this process may create files in `dir`.
fn dir_writable(dir: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
    }
    #[cfg(not(unix))]
    {
        !std::fs::metadata(dir).is_ok_and(|m| m.permissions().readonly())
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn db_err(e: rusqlite::Error) -> AgentError {
    AgentError::Sqlite(e)
}

fn corrupt(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> AgentError {
    AgentError::Corrupt {
        what: what.to_string(),
        source: Box::new(e),
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl SqliteAgentState {
    /// Opens the SQLite file `path` for reading only, creating nothing: `None` when there
    /// is no store yet. In a directory this process cannot write (where SQLite cannot make the
    /// WAL index beside the file), the file is read as immutable, unless its write-ahead log
    /// still holds changes, which is then a clear error saying the directory is read-only.
    pub fn open_read_only(path: &Path) -> Result<Option<Self>, AgentError> {
        let path = path.to_path_buf();
        let data_dir = path.parent().unwrap_or_else(|| Path::new("."));
        if !path.is_file() {
            return Ok(None);
        }
        let probe = |conn: &Connection| {
            conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })
        };
        let open_probe = |opts: crate::sqlite::OpenOptions| -> Result<Connection, BoxError> {
            let c = opts.open(&path).map_err(|e| Box::new(e) as BoxError)?;
            probe(&c).map_err(|e| Box::new(e) as BoxError)?;
            Ok(c)
        };
        let first = open_probe(crate::sqlite::OpenOptions::new().read_only());
        let conn = match first {
            Ok(c) => c,
            Err(_) if !dir_writable(data_dir) => {
                let mut wal = path.clone().into_os_string();
                wal.push("-wal");
                if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
                    return Err(AgentError::ReadOnlyWal {
                        dir: data_dir.to_path_buf(),
                    });
                }
                open_probe(crate::sqlite::OpenOptions::new().immutable()).map_err(|source| {
                    AgentError::Unreadable {
                        path: path.clone(),
                        read_only_dir: true,
                        source,
                    }
                })?
            }
            Err(source) => {
                return Err(AgentError::Unreadable {
                    path,
                    read_only_dir: false,
                    source,
                })
            }
        };
        let mut newer = true;
        for (table, column, _) in ADDED_COLUMNS {
            newer &= has_column(&conn, table, column)?;
        }
        Ok(Some(Self {
            conn: std::sync::Arc::new(Mutex::new(conn)),
            path,
            newer,
        }))
    }

    /// Opens (creating) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, AgentError> {
        // The process's one writer connection on the file (the plan store shares it).
        let shared = crate::sqlite::shared_wal(path)?;
        let mut conn = crate::sqlite::lock(&shared);
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
             CREATE INDEX IF NOT EXISTS actions_call ON actions(session_id, call_id);
             CREATE TABLE IF NOT EXISTS session_locks(
                session_id TEXT PRIMARY KEY, holder TEXT NOT NULL, since TEXT NOT NULL);",
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
        // Stores made before idempotent `session end` get the turn count at the end.
        let has_ended_turns: bool = conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('sessions') WHERE name = 'ended_turns'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(db_err)?
            > 0;
        if !has_ended_turns {
            // Sessions ended before the column existed count as ended at their last turn, so
            // ending one again saves no second episode.
            // One transaction that rolls back on any error (the connection is shared).
            crate::sqlite::apply_schema(
                &mut conn,
                "ALTER TABLE sessions ADD COLUMN ended_turns INTEGER;
                 UPDATE sessions SET ended_turns = turns
                  WHERE ended_at IS NOT NULL AND episode_id IS NOT NULL;",
            )
            .map_err(db_err)?;
        }
        // Stores made before `memex eval export` and per-model stats get the columns (turns
        // recorded before them read as message turns with no text and no model figures). Two
        // processes may race to add one: the loser's "duplicate column" is success.
        for (table, column, decl) in ADDED_COLUMNS {
            if has_column(&conn, table, column)? {
                continue;
            }
            if let Err(e) =
                conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl};"))
            {
                if !(e.to_string().contains("duplicate column")
                    && has_column(&conn, table, column)?)
                {
                    return Err(db_err(e));
                }
            }
        }
        drop(conn);
        Ok(Self {
            conn: shared,
            path: path.to_path_buf(),
            newer: true,
        })
    }

    /// The database file (the planner keeps its tables in the same file).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, AgentError> {
        Ok(crate::sqlite::lock(&self.conn))
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
                     WHERE {condition} ORDER BY created_at, rowid LIMIT 1"
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
                args: serde_json::from_str(&args)
                    .map_err(|e| corrupt("an action's arguments", e))?,
                status: ActionStatus::parse(&status)?,
                result: result.and_then(|r| serde_json::from_str(&r).ok()),
                call_id,
            })
        })
        .transpose()
    }
}

impl AgentStateBackend for SqliteAgentState {
    fn merchant_sessions(
        &self,
        merchant: &MerchantId,
        before: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<String>, AgentError> {
        // `created_at` is RFC 3339 in UTC with milliseconds, so text order is time order.
        let cutoff = before
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| "9999".to_string());
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare(
                "SELECT id FROM sessions WHERE merchant_id = ?1 AND created_at < ?2
                 ORDER BY created_at, id",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![merchant.as_str(), cutoff], |r| {
                r.get::<_, String>(0)
            })
            .map_err(db_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
    }

    /// Redacts, in one transaction, the text the agent store keeps about `sessions` of
    /// `merchant` (a session of another merchant is never touched): audit rows keep their
    /// tool, status, latency and time while their arguments and results become
    /// `"[forgotten]"`; turn records keep their counters while their memory context becomes
    /// `{"forgotten": true}`; actions keep their tool and status while their arguments and
    /// result become `"[forgotten]"` (a pending one is rejected). Safe to repeat; returns what
    /// changed this time.
    fn redact_sessions(
        &self,
        merchant: &MerchantId,
        sessions: &[String],
    ) -> Result<Redacted, AgentError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction().map_err(db_err)?;
        let mut out = Redacted::default();
        for session in sessions {
            out.audit_rows += tx
                .execute(
                    "UPDATE audit SET args = '\"[forgotten]\"', result = '\"[forgotten]\"'
                     WHERE session_id = ?1 AND merchant_id = ?2
                       AND (args != '\"[forgotten]\"' OR result != '\"[forgotten]\"')",
                    params![session, merchant.as_str()],
                )
                .map_err(db_err)? as u64;
            out.turns += tx
                .execute(
                    "UPDATE turns SET context = '{\"forgotten\":true}',
                       message = '[forgotten]', answer = '[forgotten]'
                     WHERE session_id = ?1 AND merchant_id = ?2
                       AND (context != '{\"forgotten\":true}' OR message != '[forgotten]'
                            OR answer != '[forgotten]')",
                    params![session, merchant.as_str()],
                )
                .map_err(db_err)? as u64;
            // A pending action is rejected first (its arguments would run as written).
            tx.execute(
                "UPDATE actions SET status = 'rejected', decided_at = ?3
                 WHERE session_id = ?1 AND merchant_id = ?2 AND status = 'pending'",
                params![session, merchant.as_str(), now()],
            )
            .map_err(db_err)?;
            out.actions += tx
                .execute(
                    "UPDATE actions SET args = '\"[forgotten]\"',
                       result = CASE WHEN result IS NULL THEN NULL ELSE '\"[forgotten]\"' END
                     WHERE session_id = ?1 AND merchant_id = ?2
                       AND (args != '\"[forgotten]\"'
                            OR (result IS NOT NULL AND result != '\"[forgotten]\"'))",
                    params![session, merchant.as_str()],
                )
                .map_err(db_err)? as u64;
        }
        tx.commit().map_err(db_err)?;
        Ok(out)
    }

    /// Registers `session` for `merchant`, or checks that an existing one belongs to it.
    /// Returns the number of turns the session already has.
    fn begin_session(&self, session: &str, merchant: &MerchantId) -> Result<u32, AgentError> {
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
    fn session_merchant(&self, session: &str) -> Result<Option<MerchantId>, AgentError> {
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
            .map(|o| MerchantId::parse(&o).map_err(|e| corrupt("a session's merchant", e)))
            .transpose()
    }

    /// Counts a new turn for `session` and returns its number.
    fn next_turn(&self, session: &str) -> Result<u32, AgentError> {
        // One statement: two connections (two processes) counting at once never read the same
        // number (an UPDATE then a SELECT could both see the second increment).
        let conn = self.conn()?;
        conn.query_row(
            "UPDATE sessions SET turns = turns + 1 WHERE id = ?1 RETURNING turns",
            params![session],
            |r| r.get(0),
        )
        .map_err(db_err)
    }

    /// Records a finished turn.
    fn record_turn(
        &self,
        session: &str,
        merchant: &MerchantId,
        turn: u32,
        rec: &TurnRecord,
    ) -> Result<(), AgentError> {
        self.conn()?
            .execute(
                "INSERT INTO turns(session_id, merchant_id, turn, at, outcome, latency_ms,
                   prompt_tokens, completion_tokens, context, kind, message, answer, models)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    session,
                    merchant.as_str(),
                    turn,
                    now(),
                    rec.outcome,
                    rec.latency_ms,
                    rec.prompt_tokens as i64,
                    rec.completion_tokens as i64,
                    rec.context.to_string(),
                    rec.kind,
                    rec.message,
                    rec.answer,
                    serde_json::to_string(&rec.models).unwrap_or_else(|_| "[]".into())
                ],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// The memory context recorded for each turn of `session`, oldest first.
    fn turn_contexts(&self, session: &str) -> Result<Vec<Value>, AgentError> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare("SELECT context FROM turns WHERE session_id = ?1 ORDER BY id")
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![session], |r| r.get::<_, String>(0))
            .map_err(db_err)?;
        rows.map(|r| {
            let text = r.map_err(db_err)?;
            serde_json::from_str(&text).map_err(|e| corrupt("a turn's memory context", e))
        })
        .collect()
    }

    fn sessions(
        &self,
        merchant: Option<&MerchantId>,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<SessionInfo>, AgentError> {
        // `created_at` is RFC 3339 in UTC with milliseconds, so text order is time order.
        let from = since
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default();
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare(
                "SELECT id, merchant_id, created_at FROM sessions
                 WHERE created_at >= ?1 AND (?2 IS NULL OR merchant_id = ?2)
                 ORDER BY created_at, id",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![from, merchant.map(|m| m.as_str())], |r| {
                Ok(SessionInfo {
                    id: r.get(0)?,
                    merchant: r.get(1)?,
                    created_at: r.get(2)?,
                })
            })
            .map_err(db_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
    }

    fn turn_records(&self, session: &str) -> Result<Vec<StoredTurn>, AgentError> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare(if self.newer {
                "SELECT turn, at, kind, message, answer, outcome, latency_ms, prompt_tokens,
                        completion_tokens, models, context
                 FROM turns WHERE session_id = ?1 ORDER BY id"
            } else {
                "SELECT turn, at, 'message', '', '', outcome, latency_ms, prompt_tokens,
                        completion_tokens, '[]', context
                 FROM turns WHERE session_id = ?1 ORDER BY id"
            })
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![session], |r| {
                Ok((
                    r.get::<_, u32>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, f64>(6)?,
                    r.get::<_, i64>(7)?,
                    r.get::<_, i64>(8)?,
                    r.get::<_, String>(9)?,
                    r.get::<_, String>(10)?,
                ))
            })
            .map_err(db_err)?;
        rows.map(|row| {
            let (turn, at, kind, message, answer, outcome, latency_ms, pt, ct, models, context) =
                row.map_err(db_err)?;
            Ok(StoredTurn {
                turn,
                at,
                kind,
                message,
                answer,
                outcome,
                latency_ms,
                prompt_tokens: pt.max(0) as u64,
                completion_tokens: ct.max(0) as u64,
                models: serde_json::from_str(&models)
                    .map_err(|e| corrupt("a turn's model figures", e))?,
                context: serde_json::from_str(&context)
                    .map_err(|e| corrupt("a turn's memory context", e))?,
            })
        })
        .collect()
    }

    /// Appends one audit entry.
    fn audit(&self, e: &AuditEntry) -> Result<(), AgentError> {
        self.conn()?
            .execute(
                "INSERT INTO audit(session_id, merchant_id, turn, call_id, tool, args, result,
                   status, latency_ms, at, model)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
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
                    e.at,
                    e.model
                ],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// The audit log of `session`, in order.
    fn audit_log(&self, session: &str) -> Result<Vec<AuditEntry>, AgentError> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare(if self.newer {
                "SELECT session_id, merchant_id, turn, call_id, tool, args, result, status,
                        latency_ms, at, model FROM audit WHERE session_id = ?1 ORDER BY id"
            } else {
                "SELECT session_id, merchant_id, turn, call_id, tool, args, result, status,
                        latency_ms, at, NULL FROM audit WHERE session_id = ?1 ORDER BY id"
            })
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
                    r.get::<_, Option<String>>(10)?,
                ))
            })
            .map_err(db_err)?;
        rows.map(|row| {
            let (
                session,
                merchant,
                turn,
                call_id,
                tool,
                args,
                result,
                status,
                latency_ms,
                at,
                model,
            ) = row.map_err(db_err)?;
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
                model,
            })
        })
        .collect()
    }

    /// Stores a new pending action and returns its id.
    fn create_action(
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
    fn action(&self, session: &str, id: &str) -> Result<Option<PendingAction>, AgentError> {
        self.action_where("id = ?1 AND session_id = ?2", id, session)
    }

    /// The action of `session` created for tool call `call_id`, if any (the planner uses it
    /// so that a step asks for at most one approval, even across a crash).
    fn action_by_call(
        &self,
        session: &str,
        call_id: &str,
    ) -> Result<Option<PendingAction>, AgentError> {
        self.action_where("call_id = ?1 AND session_id = ?2", call_id, session)
    }

    /// The action `id`, whatever its session (action ids are unique), if any.
    fn action_by_id(&self, id: &str) -> Result<Option<PendingAction>, AgentError> {
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
    fn claim_execution(
        &self,
        id: &str,
        runner: &str,
        alive: &dyn Fn(&str) -> bool,
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
    fn transition(
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

    /// Marks the session ended with the episode that summarises it (as of its current turn
    /// count).
    fn end_session(&self, session: &str, episode_id: &str) -> Result<(), AgentError> {
        self.conn()?
            .execute(
                "UPDATE sessions SET ended_at = ?1, episode_id = ?2, ended_turns = turns
                 WHERE id = ?3",
                params![now(), episode_id, session],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// The episode that already summarises `session` as it stands: set when the session was
    /// ended and has had no turn since.
    fn ended_episode(&self, session: &str) -> Result<Option<String>, AgentError> {
        let row: Option<Option<String>> = self
            .conn()?
            .query_row(
                "SELECT episode_id FROM sessions WHERE id = ?1 AND ended_turns = turns",
                params![session],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        Ok(row.flatten())
    }

    /// Takes `session` for `holder` (`PID:TOKEN`) so that its turns run one at a time: true
    /// when it was free, already `holder`'s, or held by a holder that is no longer `alive`
    /// (a crashed process); false while another live holder has it.
    fn lock_session(
        &self,
        session: &str,
        holder: &str,
        alive: &dyn Fn(&str) -> bool,
    ) -> Result<bool, AgentError> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let current: Option<String> = tx
            .query_row(
                "SELECT holder FROM session_locks WHERE session_id = ?1",
                params![session],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        let free = current.is_none_or(|h| h == holder || !alive(&h));
        if free {
            tx.execute(
                "INSERT INTO session_locks(session_id, holder, since) VALUES (?1, ?2, ?3)
                 ON CONFLICT(session_id) DO UPDATE SET holder = ?2, since = ?3",
                params![session, holder, now()],
            )
            .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(free)
    }

    /// Gives `session` back if `holder` has it.
    fn unlock_session(&self, session: &str, holder: &str) -> Result<(), AgentError> {
        self.conn()?
            .execute(
                "DELETE FROM session_locks WHERE session_id = ?1 AND holder = ?2",
                params![session, holder],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// Aggregates over every session.
    fn stats(&self) -> Result<Stats, AgentError> {
        let conn = self.conn()?;
        let one = |sql: &str| -> Result<u64, AgentError> {
            conn.query_row(sql, [], |r| r.get::<_, i64>(0))
                .map(|v| v.max(0) as u64)
                .map_err(db_err)
        };
        let sessions = one("SELECT COUNT(*) FROM sessions")?;
        let turns = one("SELECT COUNT(*) FROM turns")?;
        let ok_turns =
            one("SELECT COUNT(*) FROM turns WHERE outcome IN ('answer','pending_action','clarification')")?;
        let escalations = one("SELECT COUNT(*) FROM turns WHERE outcome = 'escalation'")?;
        let clarifications = one("SELECT COUNT(*) FROM turns WHERE outcome = 'clarification'")?;
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
        // Per model and role, summed in SQLite over each turn's `models` array (a value that
        // is not an array of objects counts as none).
        let mut stmt = conn
            .prepare(if self.newer {
                "SELECT json_extract(m.value, '$.model'), json_extract(m.value, '$.role'),
                        COUNT(*), SUM(json_extract(m.value, '$.calls')),
                        SUM(json_extract(m.value, '$.prompt_tokens')),
                        SUM(json_extract(m.value, '$.completion_tokens')),
                        SUM(json_extract(m.value, '$.latency_ms'))
                 FROM turns,
                      json_each(CASE WHEN json_valid(turns.models)
                                     THEN CASE WHEN json_type(turns.models) = 'array'
                                               THEN turns.models ELSE '[]' END
                                     ELSE '[]' END) AS m
                 WHERE json_type(m.value) = 'object'
                 GROUP BY 1, 2"
            } else {
                "SELECT NULL, NULL, 0, 0, 0, 0, 0 WHERE 0"
            })
            .map_err(db_err)?;
        let models: Vec<ModelStats> = stmt
            .query_map([], |r| {
                let n = |i: usize| -> rusqlite::Result<u64> {
                    Ok(r.get::<_, Option<i64>>(i)?.unwrap_or(0).max(0) as u64)
                };
                let calls = n(3)?;
                let latency_ms = r.get::<_, Option<f64>>(6)?.unwrap_or(0.0);
                Ok(ModelStats {
                    model: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                    role: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    turns: n(2)?,
                    calls,
                    prompt_tokens: n(4)?,
                    completion_tokens: n(5)?,
                    latency_ms,
                    mean_call_ms: if calls == 0 {
                        0.0
                    } else {
                        latency_ms / calls as f64
                    },
                })
            })
            .map_err(db_err)?
            .collect::<Result<_, _>>()
            .map_err(db_err)?;
        Ok(Stats {
            models: super::types::sorted_models(models),
            sessions,
            turns,
            success_rate: ratio(ok_turns, turns),
            tool_calls,
            tool_failure_rate: ratio(failures, tool_calls),
            loop_detections: loops,
            blocked_irreversible: blocked,
            escalations,
            clarifications,
            clarification_rate: ratio(clarifications, turns),
            llm_tokens: tokens,
            latency_ms: Percentiles {
                p50: pct(0.50),
                p95: pct(0.95),
                p99: pct(0.99),
            },
        })
    }

    /// The actions whose status is `status` (every action when `None`), oldest first, at most
    /// `limit`.
    fn actions_with_status(
        &self,
        status: Option<ActionStatus>,
        limit: usize,
    ) -> Result<Vec<PendingAction>, AgentError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let ids: Vec<String> = {
            let conn = self.conn()?;
            let mut stmt = conn
                .prepare(
                    "SELECT id FROM actions WHERE (?1 IS NULL OR status = ?1)
                     ORDER BY created_at, rowid LIMIT ?2",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![status.map(ActionStatus::as_str), limit], |r| {
                    r.get::<_, String>(0)
                })
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)?
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(a) = self.action_by_id(&id)? {
                out.push(a);
            }
        }
        Ok(out)
    }
}

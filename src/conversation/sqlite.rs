//! [`SqliteConversationStore`]: conversation buffers in one SQLite file in the data directory.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::llm::Message;

use super::store::{validate_session_id, ConversationStore, PruneReport, StoredSession};
use super::ConversationError;

/// File name of the store inside the data directory.
pub const SQLITE_FILE_NAME: &str = "conversations.sqlite3";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS conversation_sessions (
    session_id   TEXT PRIMARY KEY,
    summary      TEXT NOT NULL DEFAULT '',
    watermark    INTEGER NOT NULL DEFAULT 0,
    compressions INTEGER NOT NULL DEFAULT 0,
    updated_at   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS conversation_messages (
    session_id TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    message    TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
";

/// Conversation buffers in SQLite. Messages are stored as JSON in the OpenAI wire format, one
/// row per message; a session row holds the summary and its watermark. Work runs on tokio's
/// blocking pool.
#[derive(Clone)]
pub struct SqliteConversationStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteConversationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteConversationStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteConversationStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ConversationError> {
        let path = path.as_ref().to_path_buf();
        let action = || format!("open {}", path.display());
        // The process's one writer connection on the file (WAL, 5 s busy timeout): the
        // agent's store and the retention loop share it.
        let conn = crate::sqlite::shared_wal(&path)
            .map_err(|e| ConversationError::store(action(), e.cause_text()))?;
        crate::sqlite::lock(&conn)
            .execute_batch(SCHEMA)
            .map_err(|e| ConversationError::store(action(), e))?;
        Ok(SqliteConversationStore { conn, path })
    }

    /// Opens the store in `data_dir` ([`SQLITE_FILE_NAME`]).
    pub fn open_in(data_dir: impl AsRef<Path>) -> Result<Self, ConversationError> {
        Self::open(data_dir.as_ref().join(SQLITE_FILE_NAME))
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn run<T: Send + 'static>(
        &self,
        action: String,
        work: impl FnOnce(&mut Connection) -> Result<T, ConversationError> + Send + 'static,
    ) -> Result<T, ConversationError> {
        let conn = Arc::clone(&self.conn);
        let failed = action.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = crate::sqlite::lock(&conn);
            work(&mut guard)
        })
        .await
        .map_err(|e| ConversationError::store(failed, e))?
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

#[async_trait]
impl ConversationStore for SqliteConversationStore {
    async fn load(&self, session: &str) -> Result<StoredSession, ConversationError> {
        validate_session_id(session)?;
        let session = session.to_string();
        let action = format!("load session `{session}`");
        let err_action = action.clone();
        self.run(action, move |conn| {
            let e = |err: rusqlite::Error| ConversationError::store(err_action.clone(), err);
            let tx = conn.transaction().map_err(e)?;
            let head: Option<(String, i64, i64)> = tx
                .query_row(
                    "SELECT summary, watermark, compressions FROM conversation_sessions WHERE session_id = ?1",
                    params![session],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(e)?;
            let (summary, watermark, compressions) = head.unwrap_or_default();
            let watermark = watermark.max(0) as u64;
            let mut stmt = tx
                .prepare(
                    "SELECT seq, message FROM conversation_messages
                     WHERE session_id = ?1 AND seq > ?2 ORDER BY seq",
                )
                .map_err(e)?;
            let rows = stmt
                .query_map(params![session, watermark as i64], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                })
                .map_err(e)?;
            let mut messages = Vec::new();
            for row in rows {
                let (seq, json) = row.map_err(e)?;
                let seq = seq.max(0) as u64;
                let message: Message = serde_json::from_str(&json).map_err(|err| {
                    ConversationError::Corrupt {
                        session: session.clone(),
                        seq,
                        reason: err.to_string(),
                    }
                })?;
                messages.push((seq, message));
            }
            Ok(StoredSession {
                summary,
                watermark,
                compressions: compressions.max(0) as u64,
                messages,
            })
        })
        .await
    }

    async fn append(
        &self,
        session: &str,
        seq: u64,
        message: &Message,
    ) -> Result<(), ConversationError> {
        validate_session_id(session)?;
        let action = format!("append message #{seq} to session `{session}`");
        let json = serde_json::to_string(message)
            .map_err(|e| ConversationError::store(action.clone(), e))?;
        let session = session.to_string();
        let err_action = action.clone();
        self.run(action, move |conn| {
            conn.execute(
                "INSERT INTO conversation_messages (session_id, seq, message, created_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![session, seq as i64, json, now()],
            )
            .map_err(|e| ConversationError::store(err_action, e))?;
            Ok(())
        })
        .await
    }

    async fn commit_summary(
        &self,
        session: &str,
        summary: &str,
        watermark: u64,
    ) -> Result<(), ConversationError> {
        validate_session_id(session)?;
        let action = format!("commit the summary of session `{session}`");
        let (session, summary) = (session.to_string(), summary.to_string());
        let err_action = action.clone();
        self.run(action, move |conn| {
            let e = |err: rusqlite::Error| ConversationError::store(err_action.clone(), err);
            // IMMEDIATE: take the write lock before reading the watermark we compare against.
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(e)?;
            let stored: Option<i64> = tx
                .query_row(
                    "SELECT watermark FROM conversation_sessions WHERE session_id = ?1",
                    params![session],
                    |r| r.get(0),
                )
                .optional()
                .map_err(e)?;
            let stored = stored.unwrap_or(0).max(0) as u64;
            if stored >= watermark {
                return Err(ConversationError::Conflict {
                    session,
                    stored,
                    ours: watermark,
                });
            }
            tx.execute(
                "INSERT INTO conversation_sessions (session_id, summary, watermark, compressions, updated_at)
                 VALUES (?1, ?2, ?3, 1, ?4)
                 ON CONFLICT(session_id) DO UPDATE SET
                     summary = excluded.summary,
                     watermark = excluded.watermark,
                     compressions = compressions + 1,
                     updated_at = excluded.updated_at",
                params![session, summary, watermark as i64, now()],
            )
            .map_err(e)?;
            tx.execute(
                "DELETE FROM conversation_messages WHERE session_id = ?1 AND seq <= ?2",
                params![session, watermark as i64],
            )
            .map_err(e)?;
            // Dropping `tx` on any error above rolls everything back.
            tx.commit().map_err(e)?;
            Ok(())
        })
        .await
    }

    async fn delete(&self, session: &str) -> Result<(), ConversationError> {
        validate_session_id(session)?;
        let action = format!("delete session `{session}`");
        let session = session.to_string();
        let err_action = action.clone();
        self.run(action, move |conn| {
            let e = |err: rusqlite::Error| ConversationError::store(err_action.clone(), err);
            let tx = conn.transaction().map_err(e)?;
            tx.execute(
                "DELETE FROM conversation_messages WHERE session_id = ?1",
                params![session],
            )
            .map_err(e)?;
            tx.execute(
                "DELETE FROM conversation_sessions WHERE session_id = ?1",
                params![session],
            )
            .map_err(e)?;
            tx.commit().map_err(e)?;
            Ok(())
        })
        .await
    }

    async fn prune_before(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
    ) -> Result<PruneReport, ConversationError> {
        let action = "prune conversations".to_string();
        let err_action = action.clone();
        self.run(action, move |conn| {
            let e = |err: rusqlite::Error| ConversationError::store(err_action.clone(), err);
            // IMMEDIATE: no append can slip in between choosing a session and deleting it.
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(e)?;
            let mut report = PruneReport::default();
            let mut old: Vec<String> = Vec::new();
            {
                let mut stmt = tx
                    .prepare(
                        "SELECT session_id, MAX(t) FROM (
                             SELECT session_id, created_at AS t FROM conversation_messages
                             UNION ALL
                             SELECT session_id, updated_at AS t FROM conversation_sessions
                         ) GROUP BY session_id",
                    )
                    .map_err(e)?;
                let rows = stmt
                    .query_map([], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
                    })
                    .map_err(e)?;
                for row in rows {
                    let (session, last) = row.map_err(e)?;
                    // Every row carries an RFC 3339 time; MAX over mixed offsets would still
                    // be a valid time, and an unreadable one keeps the session.
                    match last
                        .as_deref()
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    {
                        Some(t) if t < cutoff => old.push(session),
                        Some(_) => {}
                        None => report.untimed += 1,
                    }
                }
            }
            for session in &old {
                report.messages += tx
                    .execute(
                        "DELETE FROM conversation_messages WHERE session_id = ?1",
                        params![session],
                    )
                    .map_err(e)? as u64;
                tx.execute(
                    "DELETE FROM conversation_sessions WHERE session_id = ?1",
                    params![session],
                )
                .map_err(e)?;
                report.sessions += 1;
            }
            tx.commit().map_err(e)?;
            Ok(report)
        })
        .await
    }
}

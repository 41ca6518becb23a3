//! [`SqliteEpisodicStore`]: episodic memory in one SQLite file.
//!
//! Layout: one table `episodes` with an index on `(merchant_id, created_at_us)`, which serves
//! `recent` (a backwards index range scan), `similar` (the merchant's rows only) and the
//! monotone-time lookup of `save`; a second index on `created_at_us` serves `prune`.
//!
//! Concurrency: one writer connection behind a mutex (every write is one `BEGIN IMMEDIATE`
//! transaction, so other processes wait up to the busy timeout instead of deadlocking) and a
//! small pool of reader connections, which WAL lets run beside the writer. Blocking SQLite
//! calls run on tokio's blocking pool. `synchronous = NORMAL`: a committed episode survives a
//! crash of the process; a power cut may lose the last few commits, never corrupt the file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};

use super::episode::{
    checked_unit_vector, micros_to_datetime, parse_id, parse_metadata, CheckedDraft,
};
use super::vector::{self, Candidate};
use super::{Episode, EpisodeDraft, EpisodeId, EpisodicError, EpisodicStore, ScoredEpisode};
use crate::merchant::MerchantId;

/// Tuning for [`SqliteEpisodicStore`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// How long a call waits for another connection's lock before failing with
    /// [`EpisodicError::Locked`] (default 5 s).
    pub busy_timeout: Duration,
    /// Most idle reader connections kept open (default 4).
    pub max_idle_readers: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            busy_timeout: Duration::from_secs(5),
            max_idle_readers: 4,
        }
    }
}

/// Episodic memory in a SQLite file. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct SqliteEpisodicStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    opts: SqliteOptions,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS episodes (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT    NOT NULL UNIQUE,
    merchant_id   TEXT    NOT NULL,
    summary       TEXT    NOT NULL,
    metadata      TEXT    NOT NULL,
    created_at_us INTEGER NOT NULL,
    embedding     BLOB
);
CREATE INDEX IF NOT EXISTS episodes_by_merchant ON episodes (merchant_id, created_at_us);
CREATE INDEX IF NOT EXISTS episodes_by_time ON episodes (created_at_us);
";

const SELECT_COLUMNS: &str = "id, summary, metadata, created_at_us, embedding";

impl std::fmt::Debug for SqliteEpisodicStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteEpisodicStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl SqliteEpisodicStore {
    /// Opens (creating if needed, with its parent directories) the store at `path`.
    ///
    /// Fails with [`EpisodicError::ReadOnly`] when the file is not writable — including a file
    /// whose permission bits deny writing even if the process could override them (root) — and
    /// with [`EpisodicError::Locked`] when another connection holds the file locked beyond the
    /// busy timeout.
    pub async fn open(path: &Path, opts: SqliteOptions) -> Result<Self, EpisodicError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(path, opts))
            .await
            .map_err(|e| EpisodicError::Task(e.to_string()))?
    }

    fn open_blocking(path: PathBuf, opts: SqliteOptions) -> Result<Self, EpisodicError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| EpisodicError::Open {
                path: path.clone(),
                message: format!("cannot create directory {}: {e}", dir.display()),
            })?;
        }
        if let Ok(meta) = std::fs::metadata(&path) {
            if !meta.is_file() {
                return Err(EpisodicError::Open {
                    path,
                    message: "it is not a regular file".into(),
                });
            }
            if meta.permissions().readonly() {
                return Err(EpisodicError::ReadOnly { path });
            }
        }
        let writer = Connection::open(&path).map_err(|e| map_err(&path, &opts, e))?;
        configure(&writer, &opts).map_err(|e| map_err(&path, &opts, e))?;
        if writer.is_readonly(rusqlite::MAIN_DB).unwrap_or(true) {
            return Err(EpisodicError::ReadOnly { path });
        }
        writer
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| map_err(&path, &opts, e))?;
        writer
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| map_err(&path, &opts, e))?;
        writer
            .execute_batch(&format!("BEGIN IMMEDIATE; {SCHEMA} COMMIT;"))
            .map_err(|e| {
                let _ = writer.execute_batch("ROLLBACK");
                map_err(&path, &opts, e)
            })?;
        Ok(SqliteEpisodicStore {
            inner: Arc::new(Inner {
                path,
                opts,
                writer: Mutex::new(writer),
                readers: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` with the writer connection on the blocking pool.
    async fn with_writer<T, F>(&self, f: F) -> Result<T, EpisodicError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut conn = lock(&inner.writer);
            f(&mut conn).map_err(|e| map_err(&inner.path, &inner.opts, e))
        })
        .await
        .map_err(|e| EpisodicError::Task(e.to_string()))?
    }

    /// Runs `f` with a pooled reader connection on the blocking pool.
    async fn with_reader<T, F>(&self, f: F) -> Result<T, EpisodicError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, EpisodicError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let pooled = lock(&inner.readers).pop();
            let mut conn = match pooled {
                Some(c) => c,
                None => open_reader(&inner.path, &inner.opts)
                    .map_err(|e| map_err(&inner.path, &inner.opts, e))?,
            };
            let out = f(&mut conn);
            let mut pool = lock(&inner.readers);
            if pool.len() < inner.opts.max_idle_readers {
                pool.push(conn);
            }
            out
        })
        .await
        .map_err(|e| EpisodicError::Task(e.to_string()))?
    }

    fn sqlite_err(&self, e: rusqlite::Error) -> EpisodicError {
        map_err(&self.inner.path, &self.inner.opts, e)
    }
}

#[async_trait]
impl EpisodicStore for SqliteEpisodicStore {
    async fn save(
        &self,
        merchant: &MerchantId,
        draft: EpisodeDraft,
    ) -> Result<Episode, EpisodicError> {
        let checked = CheckedDraft::check(draft)?;
        let mid = merchant.as_str().to_owned();
        let row = checked.clone();
        let created_us = self
            .with_writer(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let last: Option<i64> = tx
                    .prepare_cached(
                        "SELECT created_at_us FROM episodes WHERE merchant_id = ?1 \
                         ORDER BY created_at_us DESC LIMIT 1",
                    )?
                    .query_row([&mid], |r| r.get(0))
                    .optional()?;
                let now = Utc::now().timestamp_micros();
                let created = match last {
                    Some(l) if l >= now => l + 1,
                    _ => now,
                };
                tx.prepare_cached(
                    "INSERT INTO episodes (id, merchant_id, summary, metadata, created_at_us, embedding) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    row.id.to_string(),
                    mid,
                    row.summary,
                    row.metadata_json,
                    created,
                    row.embedding.as_deref().map(vector::to_bytes),
                ])?;
                tx.commit()?;
                Ok(created)
            })
            .await?;
        let id_str = checked.id.to_string();
        Ok(Episode {
            id: checked.id,
            merchant_id: merchant.clone(),
            summary: checked.summary,
            metadata: parse_metadata(&checked.metadata_json, &id_str)?,
            created_at: micros_to_datetime(created_us, &id_str)?,
            embedding: checked.embedding,
        })
    }

    async fn recent(&self, merchant: &MerchantId, n: usize) -> Result<Vec<Episode>, EpisodicError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let m = merchant.clone();
        let this = self.clone();
        let limit = i64::try_from(n).unwrap_or(i64::MAX);
        self.with_reader(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {SELECT_COLUMNS} FROM episodes WHERE merchant_id = ?1 \
                     ORDER BY created_at_us DESC, seq DESC LIMIT ?2"
                ))
                .map_err(|e| this.sqlite_err(e))?;
            let rows = stmt
                .query_map(params![m.as_str(), limit], RawRow::read)
                .map_err(|e| this.sqlite_err(e))?;
            let mut out = Vec::with_capacity(n.min(1024));
            for row in rows {
                out.push(row.map_err(|e| this.sqlite_err(e))?.into_episode(&m)?);
            }
            Ok(out)
        })
        .await
    }

    async fn similar(
        &self,
        merchant: &MerchantId,
        query: &[f32],
        k: usize,
    ) -> Result<Vec<ScoredEpisode>, EpisodicError> {
        let query = checked_unit_vector(query.to_vec(), "the query vector")?;
        if k == 0 {
            return Ok(Vec::new());
        }
        let m = merchant.clone();
        let this = self.clone();
        self.with_reader(move |conn| {
            let tx = conn.transaction().map_err(|e| this.sqlite_err(e))?;
            let mut candidates = Vec::new();
            {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT seq, id, created_at_us, embedding FROM episodes \
                         WHERE merchant_id = ?1 AND embedding IS NOT NULL",
                    )
                    .map_err(|e| this.sqlite_err(e))?;
                let mut rows = stmt.query([m.as_str()]).map_err(|e| this.sqlite_err(e))?;
                while let Some(r) = rows.next().map_err(|e| this.sqlite_err(e))? {
                    let read = || -> rusqlite::Result<Candidate<i64>> {
                        Ok(Candidate {
                            key: r.get(0)?,
                            id: r.get(1)?,
                            created_us: r.get(2)?,
                            embedding: r.get(3)?,
                        })
                    };
                    candidates.push(read().map_err(|e| this.sqlite_err(e))?);
                }
            }
            let best = vector::top_k(&query, candidates, k)?;
            let mut out = Vec::with_capacity(best.len());
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {SELECT_COLUMNS} FROM episodes WHERE seq = ?1 AND merchant_id = ?2"
                ))
                .map_err(|e| this.sqlite_err(e))?;
            for (seq, score) in best {
                let row = stmt
                    .query_row(params![seq, m.as_str()], RawRow::read)
                    .map_err(|e| this.sqlite_err(e))?;
                out.push(ScoredEpisode {
                    episode: row.into_episode(&m)?,
                    score,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn get(
        &self,
        merchant: &MerchantId,
        id: EpisodeId,
    ) -> Result<Option<Episode>, EpisodicError> {
        let m = merchant.clone();
        let this = self.clone();
        self.with_reader(move |conn| {
            let row = conn
                .prepare_cached(&format!(
                    "SELECT {SELECT_COLUMNS} FROM episodes WHERE id = ?1 AND merchant_id = ?2"
                ))
                .and_then(|mut s| {
                    s.query_row(params![id.to_string(), m.as_str()], RawRow::read)
                        .optional()
                })
                .map_err(|e| this.sqlite_err(e))?;
            row.map(|r| r.into_episode(&m)).transpose()
        })
        .await
    }

    async fn count(&self, merchant: &MerchantId) -> Result<u64, EpisodicError> {
        let m = merchant.clone();
        let this = self.clone();
        self.with_reader(move |conn| {
            conn.prepare_cached("SELECT COUNT(*) FROM episodes WHERE merchant_id = ?1")
                .and_then(|mut s| s.query_row([m.as_str()], |r| r.get::<_, i64>(0)))
                .map(|n| n.max(0) as u64)
                .map_err(|e| this.sqlite_err(e))
        })
        .await
    }

    async fn forget(&self, merchant: &MerchantId) -> Result<u64, EpisodicError> {
        let mid = merchant.as_str().to_owned();
        self.with_writer(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx.execute("DELETE FROM episodes WHERE merchant_id = ?1", [&mid])?;
            tx.commit()?;
            Ok(n as u64)
        })
        .await
    }

    async fn prune(&self, older_than: DateTime<Utc>) -> Result<u64, EpisodicError> {
        let cutoff = older_than.timestamp_micros();
        self.with_writer(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx.execute("DELETE FROM episodes WHERE created_at_us < ?1", [cutoff])?;
            tx.commit()?;
            Ok(n as u64)
        })
        .await
    }

    fn describe(&self) -> String {
        format!("sqlite://{}", self.inner.path.display())
    }
}

/// One row as stored, before decoding.
struct RawRow {
    id: String,
    summary: String,
    metadata: String,
    created_us: i64,
    embedding: Option<Vec<u8>>,
}

impl RawRow {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
        Ok(RawRow {
            id: r.get(0)?,
            summary: r.get(1)?,
            metadata: r.get(2)?,
            created_us: r.get(3)?,
            embedding: r.get(4)?,
        })
    }

    fn into_episode(self, merchant: &MerchantId) -> Result<Episode, EpisodicError> {
        Ok(Episode {
            id: parse_id(&self.id)?,
            merchant_id: merchant.clone(),
            summary: self.summary,
            metadata: parse_metadata(&self.metadata, &self.id)?,
            created_at: micros_to_datetime(self.created_us, &self.id)?,
            embedding: self
                .embedding
                .map(|b| vector::from_bytes(&b, &self.id))
                .transpose()?,
        })
    }
}

fn configure(conn: &Connection, opts: &SqliteOptions) -> rusqlite::Result<()> {
    conn.busy_timeout(opts.busy_timeout)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(())
}

fn open_reader(path: &Path, opts: &SqliteOptions) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    configure(&conn, opts)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

/// Locks a mutex, recovering from poisoning: a panic inside a closure cannot leave a SQLite
/// transaction open (rusqlite rolls back on drop), so the connection is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn map_err(path: &Path, opts: &SqliteOptions, e: rusqlite::Error) -> EpisodicError {
    let code = e.sqlite_error_code();
    match code {
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => EpisodicError::Locked {
            path: path.to_path_buf(),
            waited_ms: opts.busy_timeout.as_millis() as u64,
        },
        Some(ErrorCode::ReadOnly) => EpisodicError::ReadOnly {
            path: path.to_path_buf(),
        },
        Some(ErrorCode::CannotOpen) | Some(ErrorCode::PermissionDenied) => EpisodicError::Open {
            path: path.to_path_buf(),
            message: e.to_string(),
        },
        _ => EpisodicError::Sqlite {
            path: path.to_path_buf(),
            message: e.to_string(),
        },
    }
}

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
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::sqlite::SqliteError;

use super::episode::{
    checked_unit_vector, micros_to_datetime, opt_micros, parse_id, parse_metadata, CheckedDraft,
};
use super::hybrid::{IndexCache, IndexRow, MerchantIndex, CACHE_ENTRIES, DEFAULT_CACHE_BYTES};
use super::vector::{self, Candidate};
use super::{
    Episode, EpisodeDraft, EpisodeId, EpisodicError, EpisodicStore, ScoredEpisode, SearchQuery,
};
use crate::merchant::MerchantId;

/// Tuning for [`SqliteEpisodicStore`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// How long a call waits for another connection's lock before failing with
    /// [`EpisodicError::Locked`] (default 5 s).
    pub busy_timeout: Duration,
    /// Most idle reader connections kept open (default 4).
    pub max_idle_readers: usize,
    /// Byte budget of the in-process search-index cache (default 256 MiB).
    pub cache_bytes: u64,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            busy_timeout: Duration::from_secs(5),
            max_idle_readers: 4,
            cache_bytes: DEFAULT_CACHE_BYTES,
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
    cache: IndexCache<i64>,
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
CREATE TABLE IF NOT EXISTS episode_versions (
    merchant_id TEXT PRIMARY KEY,
    version     INTEGER NOT NULL
);
";

/// Added after the first release: applied when the column is missing.
const MIGRATE_OCCURRED: &str = "
ALTER TABLE episodes ADD COLUMN occurred_at_us INTEGER;
";

const SCHEMA_WHEN: &str = "
CREATE INDEX IF NOT EXISTS episodes_by_when
    ON episodes (merchant_id, COALESCE(occurred_at_us, created_at_us));
";

const SELECT_COLUMNS: &str = "id, summary, metadata, created_at_us, embedding, occurred_at_us";

/// Bumps a merchant's version counter; every write that changes its episodes runs it in the
/// same transaction, so the search cache never serves a stale index.
const BUMP_VERSION: &str = "INSERT INTO episode_versions (merchant_id, version) VALUES (?1, 1) \
    ON CONFLICT(merchant_id) DO UPDATE SET version = version + 1";

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
            .map_err(EpisodicError::Task)?
    }

    fn open_blocking(path: PathBuf, opts: SqliteOptions) -> Result<Self, EpisodicError> {
        let mut writer = writer_options(&opts).open(&path)?;
        crate::sqlite::apply_schema(&mut writer, SCHEMA).map_err(|e| map_err(&path, &opts, e))?;
        let has_occurred = crate::sqlite::has_column(&writer, "episodes", "occurred_at_us")
            .map_err(|e| map_err(&path, &opts, e))?;
        let migrate = if has_occurred { "" } else { MIGRATE_OCCURRED };
        crate::sqlite::apply_schema(&mut writer, &format!("{migrate} {SCHEMA_WHEN}"))
            .map_err(|e| map_err(&path, &opts, e))?;
        let cache = IndexCache::new(CACHE_ENTRIES, opts.cache_bytes);
        Ok(SqliteEpisodicStore {
            inner: Arc::new(Inner {
                path,
                opts,
                cache,
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
        .map_err(EpisodicError::Task)?
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
                None => open_reader(&inner.path, &inner.opts)?,
            };
            let out = f(&mut conn);
            let mut pool = lock(&inner.readers);
            if pool.len() < inner.opts.max_idle_readers {
                pool.push(conn);
            }
            out
        })
        .await
        .map_err(EpisodicError::Task)?
    }

    /// Inserts checked drafts in one transaction, skipping ids already stored; returns how many
    /// were new. `created_at` stays strictly increasing per merchant.
    async fn insert(
        &self,
        merchant: &MerchantId,
        rows: Vec<CheckedDraft>,
    ) -> Result<u64, EpisodicError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let mid = merchant.as_str().to_owned();
        self.with_writer(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut last: Option<i64> = tx
                .prepare_cached(
                    "SELECT created_at_us FROM episodes WHERE merchant_id = ?1 \
                     ORDER BY created_at_us DESC LIMIT 1",
                )?
                .query_row([&mid], |r| r.get(0))
                .optional()?;
            let mut new = 0u64;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT OR IGNORE INTO episodes \
                     (id, merchant_id, summary, metadata, created_at_us, embedding, occurred_at_us) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?;
                for row in rows {
                    let now = Utc::now().timestamp_micros();
                    let created = match last {
                        Some(l) if l >= now => l + 1,
                        _ => now,
                    };
                    let n = stmt.execute(params![
                        row.id.to_string(),
                        mid,
                        row.summary,
                        row.metadata_json,
                        created,
                        row.embedding.as_deref().map(vector::to_bytes),
                        row.occurred_us,
                    ])?;
                    if n > 0 {
                        last = Some(created);
                        new += 1;
                    }
                }
            }
            if new > 0 {
                tx.execute(BUMP_VERSION, [&mid])?;
            }
            tx.commit()?;
            Ok(new)
        })
        .await
    }

    fn sqlite_err(&self, e: rusqlite::Error) -> EpisodicError {
        map_err(&self.inner.path, &self.inner.opts, e)
    }

    /// The merchant's version counter, read in `tx`.
    fn version_in(
        &self,
        tx: &rusqlite::Transaction<'_>,
        m: &MerchantId,
    ) -> Result<i64, EpisodicError> {
        Ok(tx
            .prepare_cached("SELECT version FROM episode_versions WHERE merchant_id = ?1")
            .and_then(|mut s| s.query_row([m.as_str()], |r| r.get(0)).optional())
            .map_err(|e| self.sqlite_err(e))?
            .unwrap_or(0))
    }

    /// The merchant's hybrid index at `version`: the cached one, or one built from its rows
    /// read in `tx` (and cached).
    fn index_at(
        &self,
        tx: &rusqlite::Transaction<'_>,
        m: &MerchantId,
        version: i64,
    ) -> Result<Arc<MerchantIndex<i64>>, EpisodicError> {
        if let Some(i) = self.inner.cache.get(m.as_str(), version) {
            return Ok(i);
        }
        let mut rows = Vec::new();
        // `metadata.speaker` as text, only where it is a string (metadata is checked to be a
        // JSON object on save; `json_valid` keeps a damaged row from failing the query).
        let mut stmt = tx
            .prepare_cached(
                "SELECT seq, id, created_at_us, summary, embedding, \
                 COALESCE(occurred_at_us, created_at_us), \
                 CASE WHEN json_valid(metadata) AND json_type(metadata, '$.speaker') = 'text' \
                 THEN json_extract(metadata, '$.speaker') END \
                 FROM episodes WHERE merchant_id = ?1 ORDER BY created_at_us, seq",
            )
            .map_err(|e| self.sqlite_err(e))?;
        let mut it = stmt.query([m.as_str()]).map_err(|e| self.sqlite_err(e))?;
        while let Some(r) = it.next().map_err(|e| self.sqlite_err(e))? {
            let read = || -> rusqlite::Result<IndexRow<i64>> {
                Ok(IndexRow {
                    key: r.get(0)?,
                    id: r.get(1)?,
                    created_us: r.get(2)?,
                    summary: r.get(3)?,
                    embedding: r.get(4)?,
                    when_us: r.get(5)?,
                    speaker: r.get(6)?,
                })
            };
            rows.push(read().map_err(|e| self.sqlite_err(e))?);
        }
        let built = Arc::new(MerchantIndex::build(version, rows)?);
        self.inner.cache.put(m.as_str(), Arc::clone(&built));
        Ok(built)
    }
}

#[async_trait]
impl EpisodicStore for SqliteEpisodicStore {
    async fn save(
        &self,
        merchant: &MerchantId,
        draft: EpisodeDraft,
    ) -> Result<Episode, EpisodicError> {
        let checked = CheckedDraft::check(merchant, draft)?;
        let id = checked.id;
        self.insert(merchant, vec![checked]).await?;
        self.get(merchant, id)
            .await?
            .ok_or_else(|| EpisodicError::Corrupt {
                id: id.to_string(),
                message: "the episode vanished right after it was saved".into(),
            })
    }

    async fn save_many(
        &self,
        merchant: &MerchantId,
        drafts: Vec<EpisodeDraft>,
    ) -> Result<u64, EpisodicError> {
        let checked = drafts
            .into_iter()
            .map(|d| CheckedDraft::check(merchant, d))
            .collect::<Result<Vec<_>, _>>()?;
        self.insert(merchant, checked).await
    }

    async fn search(
        &self,
        merchant: &MerchantId,
        query: &SearchQuery,
    ) -> Result<Vec<ScoredEpisode>, EpisodicError> {
        let vector = query
            .vector
            .clone()
            .map(|v| checked_unit_vector(v, "the query vector"))
            .transpose()?;
        if query.k == 0 {
            return Ok(Vec::new());
        }
        let m = merchant.clone();
        let this = self.clone();
        let q = query.clone();
        self.with_reader(move |conn| {
            let tx = conn.transaction().map_err(|e| this.sqlite_err(e))?;
            let version = this.version_in(&tx, &m)?;
            let index = this.index_at(&tx, &m, version)?;
            let best = index.search(&q.text, vector.as_deref(), q.k, &q.fusion)?;
            let mut out = Vec::with_capacity(best.len());
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {SELECT_COLUMNS} FROM episodes WHERE seq = ?1 AND merchant_id = ?2"
                ))
                .map_err(|e| this.sqlite_err(e))?;
            for (seq, score) in best {
                // An episode removed since the index was built is skipped, never an error.
                let Some(row) = stmt
                    .query_row(params![seq, m.as_str()], RawRow::read)
                    .optional()
                    .map_err(|e| this.sqlite_err(e))?
                else {
                    continue;
                };
                out.push(ScoredEpisode {
                    episode: row.into_episode(&m)?,
                    score,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn speakers(&self, merchant: &MerchantId) -> Result<Vec<String>, EpisodicError> {
        let m = merchant.clone();
        let this = self.clone();
        self.with_reader(move |conn| {
            let tx = conn.transaction().map_err(|e| this.sqlite_err(e))?;
            let version = this.version_in(&tx, &m)?;
            Ok(this.index_at(&tx, &m, version)?.speakers().to_vec())
        })
        .await
    }

    async fn forget_before(
        &self,
        merchant: &MerchantId,
        before: DateTime<Utc>,
    ) -> Result<u64, EpisodicError> {
        let mid = merchant.as_str().to_owned();
        let cutoff = before.timestamp_micros();
        self.with_writer(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx.execute(
                "DELETE FROM episodes WHERE merchant_id = ?1 \
                 AND COALESCE(occurred_at_us, created_at_us) < ?2",
                params![mid, cutoff],
            )?;
            tx.execute(BUMP_VERSION, [&mid])?;
            tx.commit()?;
            Ok(n as u64)
        })
        .await
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
                     ORDER BY COALESCE(occurred_at_us, created_at_us) DESC, created_at_us DESC, \
                     seq DESC LIMIT ?2"
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
            tx.execute(BUMP_VERSION, [&mid])?;
            tx.commit()?;
            Ok(n as u64)
        })
        .await
    }

    async fn prune(&self, older_than: DateTime<Utc>) -> Result<u64, EpisodicError> {
        let cutoff = older_than.timestamp_micros();
        self.with_writer(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Every merchant that loses episodes gets a new version (including merchants whose
            // episodes predate the versions table), so no cached search index outlives them.
            tx.execute(
                "INSERT INTO episode_versions (merchant_id, version) \
                 SELECT DISTINCT merchant_id, 1 FROM episodes WHERE created_at_us < ?1 \
                 ON CONFLICT(merchant_id) DO UPDATE SET version = version + 1",
                [cutoff],
            )?;
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
    occurred_us: Option<i64>,
}

impl RawRow {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
        Ok(RawRow {
            id: r.get(0)?,
            summary: r.get(1)?,
            metadata: r.get(2)?,
            created_us: r.get(3)?,
            embedding: r.get(4)?,
            occurred_us: r.get(5)?,
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
            occurred_at: opt_micros(self.occurred_us, &self.id)?,
        })
    }
}

/// The writer: creates the file and its directory, WAL, refuses a file it cannot write.
fn writer_options(opts: &SqliteOptions) -> crate::sqlite::OpenOptions {
    crate::sqlite::OpenOptions::new()
        .busy_timeout(opts.busy_timeout)
        .statement_cache(32)
        .refuse_read_only(true)
}

/// A pooled reader: the existing file, query-only.
fn open_reader(path: &Path, opts: &SqliteOptions) -> Result<Connection, EpisodicError> {
    Ok(writer_options(opts).query_only().open(path)?)
}

/// Locks a mutex with the shared poisoned-lock policy ([`crate::sqlite::lock`]).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    crate::sqlite::lock(m)
}

fn map_err(path: &Path, opts: &SqliteOptions, e: rusqlite::Error) -> EpisodicError {
    SqliteError::from_rusqlite(path, opts.busy_timeout, e).into()
}

impl From<SqliteError> for EpisodicError {
    fn from(e: SqliteError) -> Self {
        match e {
            SqliteError::Busy {
                path, waited_ms, ..
            } => EpisodicError::Locked { path, waited_ms },
            SqliteError::ReadOnly { path, .. } => EpisodicError::ReadOnly { path },
            SqliteError::Missing { path } => EpisodicError::Missing { path },
            SqliteError::Sqlite { ref path, .. } => EpisodicError::Sqlite {
                path: path.clone(),
                source: Box::new(e),
            },
            SqliteError::CreateDir { ref path, .. }
            | SqliteError::NotAFile { ref path }
            | SqliteError::CannotOpen { ref path, .. } => EpisodicError::Open {
                path: path.clone(),
                source: Box::new(e),
            },
        }
    }
}

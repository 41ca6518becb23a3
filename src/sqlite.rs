//! The one SQLite opener of memex, and the policies every store shares.
//!
//! Every SQLite file memex writes (`kb.db`, the episodic store, `conversations.sqlite3`,
//! `payments.db`, `agent.db`) is opened here, so they agree on:
//!
//! * **journal and durability**: WAL (readers never block the writer, and WAL persists in the
//!   file) and `synchronous = NORMAL` (a committed transaction survives a crash of the process;
//!   a power cut may lose the last few commits, never corrupt the file);
//! * **waiting**: a busy timeout on every connection (memex's own busy handler: retries from
//!   50 µs up to every 2 ms, giving up at the timeout), and one mapping of SQLite's
//!   `SQLITE_BUSY`/`SQLITE_LOCKED` (what is left once that timeout has elapsed) to
//!   [`SqliteError::Busy`], which carries the time waited;
//! * **access**: a writer that creates the file (and its directory), a query-only reader of an
//!   existing file (a pooled WAL reader), and a read-only open that never creates anything;
//! * **poisoned locks**: [`lock`] recovers the connection — see there why that is safe.
//!
//! Each store keeps its own error enum (its messages are part of the CLI contract) and converts
//! [`SqliteError`] into it; the rusqlite error stays reachable as the source.
//!
//! ```no_run
//! # fn main() -> Result<(), memex::sqlite::SqliteError> {
//! use std::time::Duration;
//! use memex::sqlite::OpenOptions;
//!
//! // A store's writer: create the file and its directory, WAL, 5 s busy timeout.
//! let path = std::path::Path::new("/tmp/data/agent.db");
//! let mut conn = OpenOptions::new().busy_timeout(Duration::from_secs(5)).open(path)?;
//! memex::sqlite::apply_schema(&mut conn, "CREATE TABLE IF NOT EXISTS t(x)")
//!     .map_err(|e| memex::sqlite::SqliteError::from_rusqlite(path, Duration::from_secs(5), e))?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

/// How long the `attempt`-th wait for a locked file sleeps: 50 µs doubling to 1.6 ms, then 2 ms.
///
/// SQLite's own handler (`sqlite3_busy_timeout`) sleeps 1, 2, 5, 10, 15, 20, 25 … ms. When
/// two connections wrote `agent.db` from one process (a plan step's transition and another
/// step's audit row), they collided often, and each commit holds the lock for tens of
/// microseconds, so its first 1 ms sleep alone tripled the planner's overhead (BENCHMARKS.md
/// §7). The stores of one process now share one connection per file ([`shared_wal`]), but
/// processes still meet on a file (`memex approve` beside a `memex serve`, several workers on
/// one data directory): this schedule retries at the scale of a commit and still gives up at
/// the same timeout.
fn busy_delay(attempt: u32) -> Duration {
    Duration::from_micros((50u64 << attempt.min(6)).min(2_000))
}

/// Total slept by the waits before the `attempt`-th (the sum of [`busy_delay`] below it).
fn busy_slept(attempt: u32) -> Duration {
    let us = if attempt <= 6 {
        50 * ((1u64 << attempt) - 1)
    } else {
        3_150 + u64::from(attempt - 6) * 2_000
    };
    Duration::from_micros(us)
}

/// SQLite's busy callback: `budget_ms` is the timeout in milliseconds carried in the pointer
/// argument (never dereferenced). Returns 1 to retry after a sleep, 0 to give up (the statement
/// then fails with `SQLITE_BUSY`).
extern "C" fn busy_wait(
    budget_ms: *mut std::ffi::c_void,
    attempt: std::ffi::c_int,
) -> std::ffi::c_int {
    let budget = Duration::from_millis(budget_ms as usize as u64);
    let attempt = u32::try_from(attempt).unwrap_or(0);
    let slept = busy_slept(attempt);
    if slept >= budget {
        return 0;
    }
    std::thread::sleep(busy_delay(attempt).min(budget - slept));
    1
}

/// Installs [`busy_wait`] with `timeout` on `conn` (in place of `sqlite3_busy_timeout`).
fn set_busy_wait(conn: &Connection, timeout: Duration) -> Result<(), rusqlite::Error> {
    let ms = usize::try_from(timeout.as_millis()).unwrap_or(usize::MAX);
    // SAFETY: the handle is `conn`'s own open database; the callback is a plain function that
    // treats its argument as an integer (the timeout), so nothing it points to must outlive it.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_busy_handler(
            conn.handle(),
            Some(busy_wait),
            ms as *mut std::ffi::c_void,
        )
    };
    if rc == rusqlite::ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rc),
            Some("cannot install the busy handler".into()),
        ))
    }
}

/// The busy timeout of a store that names none (5 s).
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong opening or using a SQLite file. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    /// The file's directory could not be created.
    #[error("cannot create directory {}: {source}", .dir.display())]
    CreateDir {
        /// The database file.
        path: PathBuf,
        /// The directory that could not be created.
        dir: PathBuf,
        /// The file-system error.
        #[source]
        source: std::io::Error,
    },
    /// Something other than a regular file is at the path.
    #[error("{} is not a regular file", .path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// A read-only or query-only open found no file (nothing was created).
    #[error("{} does not exist", .path.display())]
    Missing {
        /// The database file.
        path: PathBuf,
    },
    /// Another connection held the file locked for longer than the busy timeout.
    #[error("{} is locked by another connection (gave up after {waited_ms} ms)", .path.display())]
    Busy {
        /// The database file.
        path: PathBuf,
        /// The busy timeout that elapsed.
        waited_ms: u64,
        /// SQLite's error (`SQLITE_BUSY` or `SQLITE_LOCKED`).
        #[source]
        source: rusqlite::Error,
    },
    /// The file (or its directory, where SQLite keeps the WAL) cannot be written.
    #[error("{} is read-only", .path.display())]
    ReadOnly {
        /// The database file.
        path: PathBuf,
        /// SQLite's error, when SQLite reported it (`None` when the file's permission bits
        /// already said so).
        #[source]
        source: Option<rusqlite::Error>,
    },
    /// SQLite could not open the file (missing directory, permissions, not a database).
    #[error("cannot open {}: {source}", .path.display())]
    CannotOpen {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// Any other SQLite failure.
    #[error("{}: {source}", .path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
}

impl SqliteError {
    /// Classifies a rusqlite error met on `path` by a connection with `busy_timeout`: busy and
    /// locked become [`SqliteError::Busy`], read-only [`SqliteError::ReadOnly`], cannot-open and
    /// permission-denied [`SqliteError::CannotOpen`], the rest [`SqliteError::Sqlite`].
    pub fn from_rusqlite(path: &Path, busy_timeout: Duration, source: rusqlite::Error) -> Self {
        let path = path.to_path_buf();
        match source.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => SqliteError::Busy {
                path,
                waited_ms: u64::try_from(busy_timeout.as_millis()).unwrap_or(u64::MAX),
                source,
            },
            Some(ErrorCode::ReadOnly) => SqliteError::ReadOnly {
                path,
                source: Some(source),
            },
            Some(ErrorCode::CannotOpen) | Some(ErrorCode::PermissionDenied) => {
                SqliteError::CannotOpen { path, source }
            }
            _ => SqliteError::Sqlite { path, source },
        }
    }

    /// The database file this error is about.
    pub fn path(&self) -> &Path {
        match self {
            SqliteError::CreateDir { path, .. }
            | SqliteError::NotAFile { path }
            | SqliteError::Missing { path }
            | SqliteError::Busy { path, .. }
            | SqliteError::ReadOnly { path, .. }
            | SqliteError::CannotOpen { path, .. }
            | SqliteError::Sqlite { path, .. } => path,
        }
    }

    /// SQLite's own description of the failure, without the path (for stores whose error
    /// messages already name the file); this error's message when SQLite reported nothing.
    pub fn cause_text(&self) -> String {
        match self {
            SqliteError::Busy { source, .. }
            | SqliteError::ReadOnly {
                source: Some(source),
                ..
            }
            | SqliteError::CannotOpen { source, .. }
            | SqliteError::Sqlite { source, .. } => source.to_string(),
            SqliteError::CreateDir { dir, source, .. } => {
                format!("cannot create directory {}: {source}", dir.display())
            }
            SqliteError::NotAFile { .. } => "it is not a regular file".into(),
            SqliteError::ReadOnly { .. } | SqliteError::Missing { .. } => self.to_string(),
        }
    }

    /// Whether waiting and retrying may succeed (another connection held the lock).
    pub fn is_busy(&self) -> bool {
        matches!(self, SqliteError::Busy { .. })
    }
}

/// How a connection may touch the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read and write, creating the file (and its directory); sets WAL and
    /// `synchronous = NORMAL`. A store's writer.
    Create,
    /// An existing file, opened read-write (so it takes part in WAL like any connection) but
    /// with `query_only` set: a pooled reader beside a writer. Creates nothing.
    QueryOnly,
    /// An existing file opened with `SQLITE_OPEN_READ_ONLY`. Creates nothing.
    ReadOnly,
}

/// How to open a SQLite file: access, busy timeout and the per-store pragmas. Build one with
/// [`OpenOptions::new`] and open with [`OpenOptions::open`].
#[derive(Debug, Clone)]
pub struct OpenOptions {
    access: Access,
    busy_timeout: Duration,
    foreign_keys: bool,
    refuse_read_only: bool,
    immutable: bool,
    statement_cache: Option<usize>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl OpenOptions {
    /// A writer ([`Access::Create`]) with the [`DEFAULT_BUSY_TIMEOUT`], foreign keys off (SQLite's
    /// default), a file SQLite can only read accepted as such.
    pub fn new() -> Self {
        OpenOptions {
            access: Access::Create,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            foreign_keys: false,
            refuse_read_only: false,
            immutable: false,
            statement_cache: None,
        }
    }

    /// How long a statement waits for another connection's lock before [`SqliteError::Busy`].
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// The busy timeout in force.
    pub fn timeout(&self) -> Duration {
        self.busy_timeout
    }

    /// Opens an existing file as a query-only reader ([`Access::QueryOnly`]).
    pub fn query_only(mut self) -> Self {
        self.access = Access::QueryOnly;
        self
    }

    /// Opens an existing file read-only ([`Access::ReadOnly`]).
    pub fn read_only(mut self) -> Self {
        self.access = Access::ReadOnly;
        self
    }

    /// Turns `PRAGMA foreign_keys` on (per connection in SQLite).
    pub fn foreign_keys(mut self, on: bool) -> Self {
        self.foreign_keys = on;
        self
    }

    /// For [`Access::Create`]: fail with [`SqliteError::ReadOnly`] instead of opening a file
    /// that cannot be written — one whose permission bits deny writing (even to a process that
    /// could override them, such as root), or that SQLite itself opened read-only.
    pub fn refuse_read_only(mut self, refuse: bool) -> Self {
        self.refuse_read_only = refuse;
        self
    }

    /// Opens an existing file read-only as `immutable` (a `file:…?immutable=1` URI): SQLite
    /// takes no locks and makes no `-shm`/`-wal` files, so this reads a database in a directory
    /// the process cannot write. Only correct while no one writes the file and its WAL holds no
    /// changes (the caller checks that; see `AgentStore::open_read_only`). Implies
    /// [`OpenOptions::read_only`].
    pub fn immutable(mut self) -> Self {
        self.access = Access::ReadOnly;
        self.immutable = true;
        self
    }

    /// The prepared-statement cache capacity (rusqlite's default when not set).
    pub fn statement_cache(mut self, capacity: usize) -> Self {
        self.statement_cache = Some(capacity);
        self
    }

    /// Opens `path` as configured.
    pub fn open(&self, path: &Path) -> Result<Connection, SqliteError> {
        let err = |e| SqliteError::from_rusqlite(path, self.busy_timeout, e);
        let meta = std::fs::metadata(path).ok();
        if meta.as_ref().is_some_and(|m| !m.is_file()) {
            return Err(SqliteError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let flags = match self.access {
            Access::Create => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| SqliteError::CreateDir {
                        path: path.to_path_buf(),
                        dir: dir.to_path_buf(),
                        source,
                    })?;
                }
                if self.refuse_read_only && meta.is_some_and(|m| m.permissions().readonly()) {
                    return Err(SqliteError::ReadOnly {
                        path: path.to_path_buf(),
                        source: None,
                    });
                }
                OpenFlags::default()
            }
            Access::QueryOnly | Access::ReadOnly => {
                if meta.is_none() {
                    return Err(SqliteError::Missing {
                        path: path.to_path_buf(),
                    });
                }
                let rw = if self.access == Access::QueryOnly {
                    OpenFlags::SQLITE_OPEN_READ_WRITE
                } else {
                    OpenFlags::SQLITE_OPEN_READ_ONLY
                };
                rw | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI
            }
        };
        let conn = if self.immutable {
            let uri = format!("file:{}?immutable=1", uri_path(path));
            Connection::open_with_flags(uri, flags).map_err(err)?
        } else {
            Connection::open_with_flags(path, flags).map_err(err)?
        };
        set_busy_wait(&conn, self.busy_timeout).map_err(err)?;
        if let Some(capacity) = self.statement_cache {
            conn.set_prepared_statement_cache_capacity(capacity);
        }
        match self.access {
            Access::Create => {
                if self.refuse_read_only && conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(true) {
                    return Err(SqliteError::ReadOnly {
                        path: path.to_path_buf(),
                        source: None,
                    });
                }
                // journal_mode answers with the mode in force; WAL persists in the file.
                let _mode: String = conn
                    .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
                    .map_err(err)?;
                conn.pragma_update(None, "synchronous", "NORMAL")
                    .map_err(err)?;
                // Deleted and overwritten text is zeroed in its page, and freed pages too, so
                // what `forget` removes leaves no copy in the file (checked by grepping it).
                conn.pragma_update(None, "secure_delete", true)
                    .map_err(err)?;
            }
            Access::QueryOnly => conn.pragma_update(None, "query_only", true).map_err(err)?,
            Access::ReadOnly => {}
        }
        if self.foreign_keys {
            conn.pragma_update(None, "foreign_keys", true)
                .map_err(err)?;
        }
        Ok(conn)
    }
}

/// `path` escaped for a SQLite `file:` URI.
fn uri_path(path: &Path) -> String {
    let raw = path.to_string_lossy();
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3f"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out
}

/// Opens (creating) `path` as a writer with WAL, `synchronous = NORMAL` and the
/// [`DEFAULT_BUSY_TIMEOUT`]: what `agent.db` and the plan tables expect.
pub fn open_wal(path: &Path) -> Result<Connection, SqliteError> {
    OpenOptions::new().open(path)
}

/// A writer connection shared by every store of this process on one file.
pub type SharedConn = Arc<Mutex<Connection>>;

type Registry = Mutex<HashMap<PathBuf, Weak<Mutex<Connection>>>>;

fn registry() -> &'static Registry {
    static OPEN: OnceLock<Registry> = OnceLock::new();
    OPEN.get_or_init(|| Mutex::new(HashMap::new()))
}

/// `path` as the registry knows it: its directory resolved (links, `..`), its file name kept.
fn registry_key(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            dir.canonicalize()
                .map(|d| d.join(name))
                .unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    }
}

/// The process's one writer connection on `path` (opened as [`open_wal`] does on first use):
/// every store of one file (`agent.db` holds the agent state and the plans) shares it, so they
/// never wait on each other's locks, and a file is opened once however many stores and
/// requests use it. Held weakly here: the connection closes when its last user drops it.
pub fn shared_wal(path: &Path) -> Result<SharedConn, SqliteError> {
    if let Some(conn) = lock(registry())
        .get(&registry_key(path))
        .and_then(Weak::upgrade)
    {
        return Ok(conn);
    }
    // Opened outside the registry's lock (an open may wait on a busy file), then registered
    // unless another thread registered the same file meanwhile: its connection wins.
    let fresh = Arc::new(Mutex::new(open_wal(path)?));
    let key = registry_key(path);
    let mut open = lock(registry());
    if let Some(conn) = open.get(&key).and_then(Weak::upgrade) {
        return Ok(conn);
    }
    open.retain(|_, w| w.strong_count() > 0);
    open.insert(key, Arc::downgrade(&fresh));
    Ok(fresh)
}

/// How many files this process holds a shared writer connection on (for diagnostics and the
/// test of [`shared_wal`]).
pub fn shared_files() -> usize {
    lock(registry())
        .values()
        .filter(|w| w.strong_count() > 0)
        .count()
}

/// What [`scrub`] did to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scrubbed {
    /// Whether the write-ahead log was emptied (false when a reader of another process held
    /// part of it; its frames are then overwritten by later checkpoints).
    pub wal_truncated: bool,
}

/// Leaves no recoverable copy of deleted rows in `path`: rebuilds the file (`VACUUM`, under
/// `secure_delete`, so no free page keeps old text) and truncates the write-ahead log after a
/// full checkpoint (the log holds old page images until then). A missing file is left alone.
pub fn scrub(path: &Path) -> Result<Scrubbed, SqliteError> {
    if !path.is_file() {
        return Ok(Scrubbed {
            wal_truncated: true,
        });
    }
    let opts = OpenOptions::new();
    let shared = shared_wal(path)?;
    let conn = lock(&shared);
    let err = |e| SqliteError::from_rusqlite(path, opts.timeout(), e);
    conn.execute_batch("VACUUM").map_err(err)?;
    // A reader of another process can hold the log for a moment: retry for up to 3 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let (busy, _log, _done): (i64, i64, i64) = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(err)?;
        if busy == 0 || std::time::Instant::now() >= deadline {
            return Ok(Scrubbed {
                wal_truncated: busy == 0,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `schema` (a batch of `CREATE … IF NOT EXISTS` and the like) in one `BEGIN IMMEDIATE`
/// transaction, so two processes opening a new file never interleave their DDL. Rolled back on
/// any error.
pub fn apply_schema(conn: &mut Connection, schema: &str) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(schema)?;
    tx.commit()
}

/// Whether `table` has a column named `column` (for additive migrations).
pub fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// Locks a mutex around a connection (or a pool of them), recovering from poisoning.
///
/// This is memex's one policy for poisoned locks around SQLite: a panic while the lock was held
/// cannot leave a transaction open, because rusqlite rolls an unfinished `Transaction` back when
/// it is dropped during the unwind, and a statement that was running has finished or failed
/// atomically. The connection is therefore as usable as after any failed call, and refusing
/// every later call of a long-lived process for one past panic would be worse.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn journal_mode(conn: &Connection) -> String {
        conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn the_busy_schedule_sums_to_what_it_slept() {
        let mut total = Duration::ZERO;
        for attempt in 0..40 {
            assert_eq!(busy_slept(attempt), total, "attempt {attempt}");
            total += busy_delay(attempt);
        }
        assert_eq!(busy_delay(0), Duration::from_micros(50));
        assert_eq!(busy_delay(30), Duration::from_millis(2));
    }

    #[test]
    fn a_writer_waits_for_the_lock_and_gives_up_at_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let opts = OpenOptions::new().busy_timeout(Duration::from_millis(300));
        let waiter = opts.open(&path).unwrap();
        waiter.execute_batch("CREATE TABLE t(x)").unwrap();
        let holder = opts.open(&path).unwrap();

        // Held for longer than the timeout: busy after about 300 ms, not before.
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        let started = std::time::Instant::now();
        let err = waiter.execute("INSERT INTO t VALUES (1)", []).unwrap_err();
        let waited = started.elapsed();
        assert_eq!(err.sqlite_error_code(), Some(ErrorCode::DatabaseBusy));
        assert!(
            waited >= Duration::from_millis(290),
            "gave up after {waited:?}"
        );
        assert!(waited < Duration::from_secs(3), "waited {waited:?}");
        holder.execute_batch("ROLLBACK").unwrap();

        // Released after 20 ms: the waiter gets the lock.
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            holder.execute_batch("COMMIT").unwrap();
        });
        waiter.execute("INSERT INTO t VALUES (2)", []).unwrap();
        release.join().unwrap();
    }

    #[test]
    fn writer_creates_dirs_and_turns_wal_and_pragmas_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/x.db");
        let conn = OpenOptions::new()
            .foreign_keys(true)
            .busy_timeout(Duration::from_millis(1234))
            .open(&path)
            .unwrap();
        assert!(path.is_file());
        assert_eq!(journal_mode(&conn), "wal");
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 1, "NORMAL");
        let fk: i64 = conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
        // A second connection sees WAL from the file itself.
        let reader = OpenOptions::new().read_only().open(&path).unwrap();
        assert_eq!(journal_mode(&reader), "wal");
    }

    #[test]
    fn busy_and_locked_map_to_busy_with_the_time_waited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let mut holder = open_wal(&path).unwrap();
        apply_schema(&mut holder, "CREATE TABLE t(x INTEGER)").unwrap();
        let tx = holder
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        let opts = OpenOptions::new().busy_timeout(Duration::from_millis(50));
        let other = opts.open(&path).unwrap();
        let e = other
            .execute("INSERT INTO t VALUES (1)", [])
            .map_err(|e| SqliteError::from_rusqlite(&path, opts.timeout(), e))
            .unwrap_err();
        match &e {
            SqliteError::Busy {
                path: p, waited_ms, ..
            } => {
                assert_eq!(p, &path);
                assert_eq!(*waited_ms, 50);
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        assert!(e.is_busy());
        assert!(
            std::error::Error::source(&e).is_some(),
            "rusqlite source kept"
        );
        assert!(e.to_string().contains("x.db"), "{e}");
        tx.commit().unwrap();
        other.execute("INSERT INTO t VALUES (1)", []).unwrap();
    }

    #[test]
    fn read_only_and_query_only_opens_of_a_missing_file_create_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none/x.db");
        for opts in [
            OpenOptions::new().read_only(),
            OpenOptions::new().query_only(),
        ] {
            match opts.open(&path) {
                Err(SqliteError::Missing { path: p }) => assert_eq!(p, path),
                other => panic!("expected Missing, got {other:?}"),
            }
        }
        assert!(!path.exists());
        assert!(!dir.path().join("none").exists());
    }

    #[test]
    fn read_only_and_query_only_connections_refuse_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let mut w = open_wal(&path).unwrap();
        apply_schema(
            &mut w,
            "CREATE TABLE t(x INTEGER); INSERT INTO t VALUES (7);",
        )
        .unwrap();
        for opts in [
            OpenOptions::new().read_only(),
            OpenOptions::new().query_only(),
        ] {
            let r = opts.open(&path).unwrap();
            let x: i64 = r.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
            assert_eq!(x, 7);
            let e = r.execute("INSERT INTO t VALUES (8)", []).unwrap_err();
            let mapped = SqliteError::from_rusqlite(&path, opts.timeout(), e);
            assert!(
                matches!(
                    mapped,
                    SqliteError::ReadOnly { .. } | SqliteError::Sqlite { .. }
                ),
                "{mapped:?}"
            );
        }
    }

    #[test]
    fn an_immutable_open_reads_odd_paths_and_creates_no_side_files() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a%b?c#d");
        std::fs::create_dir_all(&sub).unwrap();
        let path = sub.join("x.db");
        {
            let mut w = open_wal(&path).unwrap();
            apply_schema(&mut w, "CREATE TABLE t(x); INSERT INTO t VALUES (3);").unwrap();
            w.pragma_update(None, "journal_mode", "DELETE").unwrap();
        }
        let before: Vec<_> = std::fs::read_dir(&sub).unwrap().collect();
        let r = OpenOptions::new().immutable().open(&path).unwrap();
        let x: i64 = r.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(x, 3);
        assert_eq!(std::fs::read_dir(&sub).unwrap().count(), before.len());
        assert!(r.execute("INSERT INTO t VALUES (4)", []).is_err());
        match OpenOptions::new().immutable().open(&sub.join("none.db")) {
            Err(SqliteError::Missing { .. }) => {}
            other => panic!("expected Missing, got {other:?}"),
        }
    }

    #[test]
    fn a_directory_is_not_a_database() {
        let dir = tempfile::tempdir().unwrap();
        match open_wal(dir.path()) {
            Err(SqliteError::NotAFile { path }) => assert_eq!(path, dir.path()),
            other => panic!("expected NotAFile, got {other:?}"),
        }
    }

    #[cfg(unix)]
    #[test]
    fn refuse_read_only_refuses_a_file_whose_bits_deny_writing() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        drop(open_wal(&path).unwrap());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        let e = OpenOptions::new()
            .refuse_read_only(true)
            .open(&path)
            .unwrap_err();
        assert!(matches!(e, SqliteError::ReadOnly { .. }), "{e:?}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    #[test]
    fn schema_is_applied_in_one_transaction_and_rolled_back_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let mut conn = open_wal(&path).unwrap();
        assert!(apply_schema(&mut conn, "CREATE TABLE a(x); CREATE TABLE a(x);").is_err());
        assert!(conn.is_autocommit(), "no transaction left open");
        assert!(
            !has_column(&conn, "a", "x").unwrap(),
            "first CREATE rolled back"
        );
        apply_schema(&mut conn, "CREATE TABLE a(x)").unwrap();
        assert!(has_column(&conn, "a", "x").unwrap());
        assert!(!has_column(&conn, "a", "y").unwrap());
    }

    #[test]
    fn a_poisoned_lock_is_recovered_with_a_usable_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let conn = Arc::new(Mutex::new(open_wal(&path).unwrap()));
        let c = Arc::clone(&conn);
        let _ = std::thread::spawn(move || {
            let mut guard = c.lock().unwrap();
            let tx = guard.transaction().unwrap();
            tx.execute_batch("CREATE TABLE t(x)").unwrap();
            panic!("poison the lock with a transaction open");
        })
        .join();
        assert!(conn.is_poisoned());
        let guard = lock(&conn);
        assert!(
            guard.is_autocommit(),
            "the open transaction was rolled back"
        );
        assert!(!has_column(&guard, "t", "x").unwrap());
        guard.execute_batch("CREATE TABLE t(x)").unwrap();
    }

    #[test]
    fn one_writer_connection_per_file_while_it_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.db");
        let a = shared_wal(&path).unwrap();
        // The same file by another spelling is the same connection.
        let other = dir.path().join(".").join("agent.db");
        let b = shared_wal(&other).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        // What one store writes, the other sees at once (one connection, not two).
        lock(&a)
            .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (7);")
            .unwrap();
        let seen: i64 = lock(&b)
            .query_row("SELECT x FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(seen, 7);
        // Another file is another connection.
        let c = shared_wal(&dir.path().join("keys.db")).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        // Closed when the last user lets go; the next open makes a fresh one.
        let weak = Arc::downgrade(&a);
        drop((a, b));
        assert!(
            weak.upgrade().is_none(),
            "the registry keeps no connection alive"
        );
        let again = shared_wal(&path).unwrap();
        let still: i64 = lock(&again)
            .query_row("SELECT x FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(still, 7);
        drop(c);
    }
}

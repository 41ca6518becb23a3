//! Runner ownership: who is executing something right now (a plan, an approved action, a
//! session's turn). [`RunnerLocks`] is the seam; [`LockDir`] (OS file locks, one host) serves a
//! SQLite state and [`RedisLeases`] (expiring leases, many hosts) a Redis state.
//!
//! # File locks
//!
//! Every owned thing has a lock file in `<store>.locks/` beside the agent's SQLite file
//! (`agent.db` → `agent.locks/`), named `KIND-HASH.lock` (the SHA-256 of the name, so any
//! session id makes a safe file name). Ownership is an exclusive OS lock on that file
//! ([`std::fs::File::try_lock`]: `flock` on Unix, `LockFileEx` on Windows), taken without
//! waiting and held as long as the returned [`Ownership`] lives. The operating system drops the
//! lock when its process dies, however it dies (SIGKILL included), so a crashed holder is taken
//! over at once, a reused process id never blocks anyone, and two processes (or two tasks of
//! one process: each claim opens the file anew) never own one thing at the same time. No
//! process id is ever read or signalled.
//!
//! Lock files are never deleted (deleting one that another process has open would let two
//! owners hold two different files); they are empty and one per owned thing.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::redisdb::{RedisDbError, RedisStore};
use crate::state::redis::PREFIX;

/// How long a Redis lease lives without renewal: a SIGKILLed worker's plan or approval is
/// taken over within about this long.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(6);

/// Takes runner ownership of things, one owner at a time across every process sharing the
/// state.
pub trait RunnerLocks: Send + Sync + std::fmt::Debug {
    /// Takes `kind` (`plan`, `action`, `session`) `name` without waiting: `None` while another
    /// owner (any process, or another claim in this one) holds it. Ownership lasts as long as
    /// the returned [`Ownership`] lives.
    fn try_own(&self, kind: &str, name: &str) -> Result<Option<Ownership>, OwnershipError>;
}

/// Why ownership could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    /// The lock directory or file could not be created or opened.
    #[error("cannot open the lock file {path}")]
    Open {
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file system refused the lock itself (e.g. one without lock support).
    #[error("cannot lock {path} (does this file system support locks? `plan resume --force` proceeds without one)")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The Redis holding the leases failed.
    #[error("runner lease")]
    Redis(#[from] RedisDbError),
}

/// Where the lock files of one store live.
#[derive(Debug, Clone)]
pub struct LockDir {
    dir: PathBuf,
}

/// Held ownership of one thing; dropping it (even by cancellation or a panic) releases it.
#[derive(Debug)]
pub struct Ownership {
    held: Held,
    token: String,
}

/// What keeps an [`Ownership`] alive.
#[derive(Debug)]
enum Held {
    /// An OS-locked file (the lock goes with the file handle).
    File(LockFile),
    /// A Redis lease with its renewal thread.
    Lease(LeaseGuard),
}

impl Ownership {
    /// A fresh label of this ownership, recorded beside what it holds (for people reading
    /// the store; ownership itself is the lock).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Lets go the way a crashed holder does: a file lock is dropped by the OS at once, a
    /// Redis lease stops being renewed but is not deleted, so it expires within its ttl (tests
    /// use this to show takeover).
    pub fn abandon(self) {
        match self.held {
            Held::File(f) => f.crash(),
            Held::Lease(mut g) => {
                forget_live(&g.live, &g.key, &g.token);
                drop(g.stop.take());
                if let Some(h) = g.renewer.take() {
                    let _ = h.join();
                }
                g.released = true;
            }
        }
    }
}

impl LockDir {
    /// The lock directory of the store file `db` (`…/agent.db` → `…/agent.locks/`).
    pub fn beside(db: &Path) -> Self {
        let stem = db
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "store".into());
        let dir = db
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(format!("{stem}.locks"));
        LockDir { dir }
    }

    /// The lock file of `kind` (`plan`, `action`, `session`) `name`.
    pub fn path(&self, kind: &str, name: &str) -> PathBuf {
        let hash = Sha256::digest(name.as_bytes());
        let hex: String = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{kind}-{hex}.lock"))
    }

    /// Takes `kind` `name` without waiting: `None` while another owner (any process, or
    /// another claim in this one) holds it.
    pub fn try_own(&self, kind: &str, name: &str) -> Result<Option<Ownership>, OwnershipError> {
        self.try_own_file(kind, name)
    }

    fn try_own_file(&self, kind: &str, name: &str) -> Result<Option<Ownership>, OwnershipError> {
        let path = self.path(kind, name);
        std::fs::create_dir_all(&self.dir).map_err(|source| OwnershipError::Open {
            path: path.clone(),
            source,
        })?;
        // An owner deletes its file when it lets go, so a file opened just before that can be
        // locked after it and no longer be the one at `path`: such a lock guards nothing, and
        // the path's current file is tried again. A path that keeps changing is busy.
        for _ in 0..8 {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|source| OwnershipError::Open {
                    path: path.clone(),
                    source,
                })?;
            match file.try_lock() {
                Ok(()) if still_linked(&file, &path) => {
                    return Ok(Some(Ownership {
                        held: Held::File(LockFile {
                            file: Some(file),
                            path,
                        }),
                        token: format!("{}:{}", std::process::id(), uuid::Uuid::new_v4().simple()),
                    }))
                }
                Ok(()) => continue,
                Err(TryLockError::WouldBlock) => return Ok(None),
                Err(TryLockError::Error(source)) => {
                    return Err(OwnershipError::Lock { path, source })
                }
            }
        }
        Ok(None)
    }
}

/// A locked file that is deleted when its owner lets go, so the lock folder holds only the
/// files of live owners (and of crashed ones, reused by the next owner of the same name).
#[derive(Debug)]
struct LockFile {
    file: Option<File>,
    path: PathBuf,
}

impl LockFile {
    /// Lets go as a crash does: the OS drops the lock, the file stays.
    fn crash(mut self) {
        drop(self.file.take());
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            // Deleted while still locked, so whoever locks this file next sees that it is no
            // longer at the path (see `try_own_file`). Only on Unix: elsewhere an open file
            // cannot be deleted and the lock files stay.
            #[cfg(unix)]
            let _ = std::fs::remove_file(&self.path);
            drop(file);
        }
    }
}

/// Whether `file` is still the file at `path`.
#[cfg(unix)]
fn still_linked(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Lock files are never deleted off Unix, so an opened one is always the path's.
#[cfg(not(unix))]
fn still_linked(_file: &File, _path: &Path) -> bool {
    true
}

impl RunnerLocks for LockDir {
    fn try_own(&self, kind: &str, name: &str) -> Result<Option<Ownership>, OwnershipError> {
        self.try_own_file(kind, name)
    }
}

/// Runner ownership as Redis leases: `SET KEY TOKEN NX PX TTL` takes one, a thread renews it
/// (compare-and-extend) every ttl/3 while the [`Ownership`] lives, and dropping it deletes the
/// key if it still holds this token (compare-and-delete). A holder that dies stops renewing,
/// so its lease expires and is taken over within `ttl`. Keys: `memex:st:lease:KIND:NAME`.
#[derive(Debug, Clone)]
pub struct RedisLeases {
    pool: RedisStore,
    ttl: Duration,
    /// `(key, token)` of the leases this process holds and renews right now.
    live: Arc<std::sync::Mutex<std::collections::HashSet<(String, String)>>>,
}

/// Forgets a live lease in the shared set (whatever a panic elsewhere left in the lock).
fn forget_live(
    live: &std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    k: &str,
    t: &str,
) {
    let mut set = live
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    set.remove(&(k.to_string(), t.to_string()));
}

const EXTEND_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

impl RedisLeases {
    /// Leases on `pool` living `ttl` without renewal (at least 300 ms).
    pub fn new(pool: RedisStore, ttl: Duration) -> Self {
        RedisLeases {
            pool,
            ttl: ttl.max(Duration::from_millis(300)),
            live: Default::default(),
        }
    }

    /// Whether this process holds the lease on `kind` `name` with `token` and is renewing it
    /// (no round trip: the agent store uses it to skip a second lock on a leased session).
    pub fn holds(&self, kind: &str, name: &str, token: &str) -> bool {
        let set = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        set.contains(&(Self::key(kind, name), token.to_string()))
    }

    fn key(kind: &str, name: &str) -> String {
        format!("{PREFIX}lease:{kind}:{name}")
    }
}

impl RunnerLocks for RedisLeases {
    fn try_own(&self, kind: &str, name: &str) -> Result<Option<Ownership>, OwnershipError> {
        let key = Self::key(kind, name);
        let token = format!("{}:{}", std::process::id(), uuid::Uuid::new_v4().simple());
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let taken: Option<redis::Value> = self.pool.run(|c| {
            redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query(c)
        })?;
        if taken.is_none() {
            // Taken by us on an earlier attempt whose reply was lost? Only if it holds our token.
            let holder: Option<String> = self.pool.run(|c| redis::cmd("GET").arg(&key).query(c))?;
            if holder.as_deref() != Some(token.as_str()) {
                return Ok(None);
            }
        }
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((key.clone(), token.clone()));
        let (stop, stopped) = mpsc::channel::<()>();
        let pool = self.pool.clone();
        let live = self.live.clone();
        let (k, t, every) = (key.clone(), token.clone(), self.ttl / 3);
        let renewer = std::thread::Builder::new()
            .name("memex-lease".into())
            .spawn(move || {
                let script = redis::Script::new(EXTEND_LUA);
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    match pool.run(|c| script.key(&k).arg(&t).arg(ttl_ms).invoke::<i64>(c)) {
                        Ok(1) => {}
                        Ok(_) => {
                            forget_live(&live, &k, &t);
                            tracing::warn!(lease = %k, "a runner lease was lost (expired before renewal)");
                            return;
                        }
                        Err(e) => tracing::warn!(lease = %k, error = %e, "cannot renew a runner lease"),
                    }
                }
            })
            .ok();
        Ok(Some(Ownership {
            held: Held::Lease(LeaseGuard {
                live: self.live.clone(),
                pool: self.pool.clone(),
                key,
                token: token.clone(),
                stop: Some(stop),
                renewer,
                released: false,
            }),
            token,
        }))
    }
}

/// A held Redis lease: renewed by its thread, released on drop.
struct LeaseGuard {
    live: Arc<std::sync::Mutex<std::collections::HashSet<(String, String)>>>,
    pool: RedisStore,
    key: String,
    token: String,
    stop: Option<mpsc::Sender<()>>,
    renewer: Option<std::thread::JoinHandle<()>>,
    released: bool,
}

impl std::fmt::Debug for LeaseGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseGuard")
            .field("key", &self.key)
            .finish()
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        forget_live(&self.live, &self.key, &self.token);
        drop(self.stop.take());
        if let Some(h) = self.renewer.take() {
            let _ = h.join();
        }
        if self.released {
            return;
        }
        let script = redis::Script::new(RELEASE_LUA);
        if let Err(e) = self
            .pool
            .run(|c| script.key(&self.key).arg(&self.token).invoke::<i64>(c))
        {
            // The lease then expires on its own within its ttl.
            tracing::warn!(lease = %self.key, error = %e, "cannot release a runner lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_owner_at_a_time_and_release_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let locks = LockDir::beside(&dir.path().join("agent.db"));
        let a = locks.try_own("plan", "plan_1").unwrap().expect("free");
        assert!(locks.try_own("plan", "plan_1").unwrap().is_none());
        assert!(locks.try_own("plan", "plan_2").unwrap().is_some());
        drop(a);
        assert!(locks.try_own("plan", "plan_1").unwrap().is_some());
        assert!(locks.path("session", "../../etc").starts_with(dir.path()));
    }

    fn lock_files(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("agent.locks"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    #[cfg(unix)]
    #[test]
    fn released_lock_files_are_deleted_and_a_crashed_one_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let locks = LockDir::beside(&dir.path().join("agent.db"));
        for i in 0..100 {
            let owner = locks.try_own("session", &format!("s_{i}")).unwrap();
            assert!(owner.is_some());
        }
        assert_eq!(
            lock_files(dir.path()),
            0,
            "every released lock file is gone"
        );

        let held = locks.try_own("plan", "p").unwrap().expect("free");
        held.abandon();
        assert_eq!(lock_files(dir.path()), 1, "a crash leaves its file");
        let again = locks.try_own("plan", "p").unwrap().expect("taken over");
        assert!(locks.try_own("plan", "p").unwrap().is_none());
        drop(again);
        assert_eq!(lock_files(dir.path()), 0);
    }

    /// Many threads racing for one name while owners keep letting go (deleting the file):
    /// never two owners at once.
    #[test]
    fn racing_owners_never_overlap_while_files_come_and_go() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let locks = LockDir::beside(&dir.path().join("agent.db"));
        let inside = AtomicUsize::new(0);
        let owned = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..300 {
                        if let Some(o) = locks.try_own("plan", "contended").unwrap() {
                            assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two owners");
                            owned.fetch_add(1, Ordering::SeqCst);
                            std::thread::yield_now();
                            inside.fetch_sub(1, Ordering::SeqCst);
                            drop(o);
                        }
                    }
                });
            }
        });
        assert!(owned.load(Ordering::SeqCst) > 0);
    }
}

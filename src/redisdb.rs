//! The one Redis layer of memex: one client per server per process, one retry and timeout
//! policy, one error type.
//!
//! Every store memex keeps in Redis (episodes, conversations, agent state, plans, keys, runner
//! leases, the shared tool cache) and the `/readyz` probe (a fresh connection per probe,
//! [`RedisStore::ping_fresh`]) reach Redis through a [`RedisStore`]:
//! a named view (`"episodes"`, `"plans"`, …) over the process's one [`RedisDb`] for that URL.
//! [`RedisDb::open`] hands out that one `RedisDb` (it keeps a weak registry keyed by URL and
//! policy), so a `memex serve` on a Redis state holds one `redis::Client`, one small pool of
//! synchronous connections (for the stores whose calls already run on blocking threads) and one
//! multiplexed async connection per async runtime (for the episodic and conversation stores).
//!
//! * **policy**: [`Policy`] — attempts, exponential backoff, connect and reply timeouts — is the
//!   same for every store; [`RedisStore::run`] (sync) and [`RedisStore::retry`] (async) retry a
//!   transient failure ([`is_transient`]) and nothing else, and [`RedisStore::once`] (commands
//!   that must not run twice) only a refused connection, when nothing was sent;
//! * **errors**: [`RedisDbError`] says which store and which server (`HOST:PORT/DB`, never a
//!   password) and keeps the `redis` error as its source.
//!
//! ```no_run
//! # fn main() -> Result<(), memex::redisdb::RedisDbError> {
//! let db = memex::redisdb::RedisDb::open("redis://127.0.0.1:6379/0")?;
//! let keys = db.store("keys");
//! let pong: String = keys.run(|c| redis::cmd("PING").query(c))?;
//! assert_eq!(pong, "PONG");
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Connection, ConnectionLike, RedisError, RedisResult, RetryMethod, Value};

/// How many synchronous connections one [`RedisDb`] keeps.
const POOL: usize = 4;

/// How many runtimes' async connections one [`RedisDb`] keeps before starting afresh.
const MAX_RUNTIMES: usize = 8;

/// How every store waits for and retries Redis. One value for the whole process unless a caller
/// asks for another (tests that want quick failures do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Policy {
    /// Attempts per call before Redis counts as unreachable (at least 1).
    pub max_attempts: u32,
    /// Wait after the first failed attempt; doubles after each further failure.
    pub initial_backoff: Duration,
    /// Longest wait between two attempts.
    pub max_backoff: Duration,
    /// Longest wait for one TCP connection.
    pub connection_timeout: Duration,
    /// Longest wait for one reply.
    pub response_timeout: Duration,
}

impl Default for Policy {
    /// 5 attempts, 50 ms doubling to 1 s between them (0.75 s of waiting in all), 2 s to
    /// connect, 5 s for a reply.
    fn default() -> Self {
        Policy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            connection_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(5),
        }
    }
}

impl Policy {
    /// The wait after the `failures`-th failed attempt (1-based).
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// What went wrong talking to Redis: which store, which server, and the `redis` error.
#[derive(Debug, thiserror::Error)]
pub enum RedisDbError {
    /// The URL is not a usable Redis URL (the message never echoes a password).
    #[error("the {what} is not a usable Redis URL ({category}); expected redis://HOST:PORT/DB")]
    InvalidUrl {
        /// Which URL: `--state URL`, `--episodic URL`, or just `URL`.
        what: &'static str,
        /// What is wrong with it, as the `redis` crate classifies it.
        category: String,
    },
    /// The policy cannot be used.
    #[error("invalid Redis policy: {0}")]
    InvalidPolicy(String),
    /// Redis did not answer after the policy's attempts.
    #[error("{store}: Redis at {endpoint} is unreachable ({attempts} attempts)")]
    Unreachable {
        /// The store that called (`"episodes"`, `"plans"`, …).
        store: &'static str,
        /// `HOST:PORT/DB`.
        endpoint: String,
        /// Attempts made.
        attempts: u32,
        /// Time spent on all attempts and waits, in milliseconds.
        elapsed_ms: u64,
        /// The last failure.
        #[source]
        source: Box<RedisError>,
    },
    /// Redis answered with an error that retrying will not fix.
    #[error("{store}: Redis at {endpoint} refused the request: {source}")]
    Refused {
        /// The store that called.
        store: &'static str,
        /// `HOST:PORT/DB`.
        endpoint: String,
        /// Redis's answer.
        #[source]
        source: Box<RedisError>,
    },
    /// A stored value is not one memex wrote.
    #[error("{store}: Redis at {endpoint}: {what} is damaged")]
    Damaged {
        /// The store that read it.
        store: &'static str,
        /// `HOST:PORT/DB`.
        endpoint: String,
        /// What could not be read.
        what: String,
    },
}

impl RedisDbError {
    /// True when Redis could not be reached (as opposed to refusing or holding bad data).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, RedisDbError::Unreachable { .. })
    }

    /// The message with its cause, in one line (for errors that keep only text).
    pub fn detail(&self) -> String {
        match self {
            RedisDbError::Unreachable { source, .. } => format!("{self}: {source}"),
            _ => self.to_string(),
        }
    }

    /// The `redis` error underneath, when there is one.
    pub fn redis_error(&self) -> Option<&RedisError> {
        match self {
            RedisDbError::Unreachable { source, .. } | RedisDbError::Refused { source, .. } => {
                Some(source)
            }
            _ => None,
        }
    }
}

/// Whether `e` is a reply that could not be converted to the type asked for (a stored value
/// memex did not write, a script answer of another shape). redis-rs 1.x reports these as
/// `ErrorKind::Parse`, whose `retry_method` is `Reconnect`; 0.32 reported them as `TypeError`
/// (no retry), and memex keeps that: retrying does not change a stored value. A reply that
/// breaks the protocol itself (`Parse error at …`, 0.32's `ParseError`) stays transient.
pub fn is_reply_type_error(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::Parse
        && !e.detail().is_some_and(|d| d.starts_with("Parse error at"))
}

/// Whether retrying `e` after reconnecting may succeed: a refused, dropped or timed-out
/// connection, never a wrong password or a reply of the wrong type.
pub fn is_transient(e: &RedisError) -> bool {
    if e.kind() == redis::ErrorKind::AuthenticationFailed || is_reply_type_error(e) {
        return false;
    }
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.retry_method(),
            RetryMethod::Reconnect | RetryMethod::RetryImmediately | RetryMethod::WaitAndRetry
        )
}

type Registry = Mutex<HashMap<(String, Policy), Weak<RedisDb>>>;

fn registry() -> &'static Registry {
    static DBS: OnceLock<Registry> = OnceLock::new();
    DBS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The process's connection to one Redis database: one client, a few synchronous connections,
/// one multiplexed async connection per runtime. Get it with [`RedisDb::open`]; use it through
/// [`RedisDb::store`].
pub struct RedisDb {
    client: redis::Client,
    endpoint: String,
    policy: Policy,
    conns: Vec<Mutex<Option<Conn>>>,
    next: AtomicUsize,
    trips: Arc<AtomicU64>,
    managers: tokio::sync::Mutex<HashMap<tokio::runtime::Id, ConnectionManager>>,
}

impl std::fmt::Debug for RedisDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDb")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl RedisDb {
    /// The process's `RedisDb` for `url` (`redis://[:PASSWORD@]HOST:PORT/DB`) with the default
    /// [`Policy`]. Connects lazily: a wrong URL fails here, an unreachable server on first use.
    pub fn open(url: &str) -> Result<Arc<RedisDb>, RedisDbError> {
        Self::open_with(url, Policy::default())
    }

    /// [`RedisDb::open`] for the URL of a flag: a bad URL is reported as `the {what} is not a
    /// usable Redis URL …` (`what`: `--state URL`).
    pub fn open_for(url: &str, what: &'static str) -> Result<Arc<RedisDb>, RedisDbError> {
        Self::open_with(url, Policy::default()).map_err(|e| match e {
            RedisDbError::InvalidUrl { category, .. } => {
                RedisDbError::InvalidUrl { what, category }
            }
            other => other,
        })
    }

    /// [`RedisDb::open`] with another policy (a separate client from the default one's).
    pub fn open_with(url: &str, policy: Policy) -> Result<Arc<RedisDb>, RedisDbError> {
        if policy.max_attempts == 0 {
            return Err(RedisDbError::InvalidPolicy(
                "max_attempts must be at least 1".into(),
            ));
        }
        let mut dbs = registry()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (url.to_string(), policy);
        if let Some(db) = dbs.get(&key).and_then(Weak::upgrade) {
            return Ok(db);
        }
        let client = redis::Client::open(url).map_err(|e| RedisDbError::InvalidUrl {
            what: "URL",
            category: e.category().to_string(),
        })?;
        let info = client.get_connection_info();
        let endpoint = format!("{}/{}", info.addr(), info.redis_settings().db());
        let db = Arc::new(RedisDb {
            client,
            endpoint,
            policy,
            conns: (0..POOL).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            trips: Arc::new(AtomicU64::new(0)),
            managers: tokio::sync::Mutex::new(HashMap::new()),
        });
        dbs.retain(|_, w| w.strong_count() > 0);
        dbs.insert(key, Arc::downgrade(&db));
        Ok(db)
    }

    /// A view for the store named `store` (it appears in every error of the view).
    pub fn store(self: &Arc<Self>, store: &'static str) -> RedisStore {
        RedisStore {
            db: self.clone(),
            name: store,
        }
    }

    /// `HOST:PORT/DB` (never a password).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Round trips made through the synchronous connections so far (a command, or a whole
    /// pipeline, is one), for benchmarks and diagnostics.
    pub fn round_trips(&self) -> u64 {
        self.trips.load(Ordering::Relaxed)
    }

    fn slot(&self) -> MutexGuard<'_, Option<Conn>> {
        for m in &self.conns {
            if let Ok(g) = m.try_lock() {
                return g;
            }
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        match self.conns[i].lock() {
            Ok(g) => g,
            Err(poisoned) => {
                // A panic while holding a connection: drop that connection, keep going.
                let mut g = poisoned.into_inner();
                *g = None;
                g
            }
        }
    }

    fn connect_sync(&self) -> RedisResult<Conn> {
        let c = self
            .client
            .get_connection_with_timeout(self.policy.connection_timeout)?;
        c.set_read_timeout(Some(self.policy.response_timeout))?;
        c.set_write_timeout(Some(self.policy.response_timeout))?;
        Ok(Conn {
            inner: c,
            trips: self.trips.clone(),
        })
    }

    /// This runtime's multiplexed connection, made on first use. A connection belongs to the
    /// runtime that made it (its driver task runs there), so each runtime gets its own.
    async fn manager(&self) -> RedisResult<ConnectionManager> {
        let id = tokio::runtime::Handle::current().id();
        let mut managers = self.managers.lock().await;
        if let Some(m) = managers.get(&id) {
            return Ok(m.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(self.policy.connection_timeout))
            .set_response_timeout(Some(self.policy.response_timeout));
        let m = ConnectionManager::new_with_config(self.client.clone(), config).await?;
        // Runtimes come and go (a CLI command's, each test's); their connections die with
        // them. Keep the map small: past a handful, start it afresh (live runtimes reconnect).
        if managers.len() >= MAX_RUNTIMES {
            managers.clear();
        }
        managers.insert(id, m.clone());
        Ok(m)
    }

    /// A fresh connection for one `PING`, bounded by `timeout` for connecting and the reply:
    /// a health check must see the server as it is now, not a connection made before it
    /// restarted or one that hangs half-open.
    async fn ping_fresh(&self, timeout: Duration) -> bool {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let ping = async {
            let mut conn = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .ok()?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .ok()
        };
        matches!(tokio::time::timeout(timeout, ping).await, Ok(Some(ref p)) if p == "PONG")
    }
}

/// A pooled synchronous connection that counts its round trips.
pub struct Conn {
    inner: Connection,
    trips: Arc<AtomicU64>,
}

impl ConnectionLike for Conn {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        self.trips.fetch_add(1, Ordering::Relaxed);
        self.inner.req_packed_command(cmd)
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        self.trips.fetch_add(1, Ordering::Relaxed);
        self.inner.req_packed_commands(cmd, offset, count)
    }

    fn req_command(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        self.trips.fetch_add(1, Ordering::Relaxed);
        self.inner.req_command(cmd)
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }

    fn check_connection(&mut self) -> bool {
        self.inner.check_connection()
    }

    fn is_open(&self) -> bool {
        self.inner.is_open()
    }
}

/// One store's view of the process's [`RedisDb`]: the same connections, errors named after the
/// store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RedisStore {
    db: Arc<RedisDb>,
    name: &'static str,
}

impl RedisStore {
    /// The same connections under another store's name.
    pub fn named(&self, store: &'static str) -> RedisStore {
        RedisStore {
            db: self.db.clone(),
            name: store,
        }
    }

    /// The store's name, as errors give it.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The shared database.
    pub fn db(&self) -> &Arc<RedisDb> {
        &self.db
    }

    /// `HOST:PORT/DB` (never a password).
    pub fn endpoint(&self) -> &str {
        &self.db.endpoint
    }

    /// Round trips made through the synchronous connections (all stores together).
    pub fn round_trips(&self) -> u64 {
        self.db.round_trips()
    }

    /// Checks the server answers `PING` (with the policy's retries).
    pub fn ping(&self) -> Result<(), RedisDbError> {
        self.run(|c| redis::cmd("PING").query::<String>(c))
            .map(|_| ())
    }

    /// One `PING` on a fresh connection, no retry, bounded by `timeout`: for health checks
    /// (`/readyz`), which must see the server as it is now.
    pub async fn ping_fresh(&self, timeout: Duration) -> bool {
        self.db.ping_fresh(timeout).await
    }

    fn unreachable(&self, attempts: u32, start: Instant, source: RedisError) -> RedisDbError {
        RedisDbError::Unreachable {
            store: self.name,
            endpoint: self.db.endpoint.clone(),
            attempts,
            elapsed_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
            source: Box::new(source),
        }
    }

    fn refused(&self, source: RedisError) -> RedisDbError {
        RedisDbError::Refused {
            store: self.name,
            endpoint: self.db.endpoint.clone(),
            source: Box::new(source),
        }
    }

    /// A [`RedisDbError::Damaged`] for `what`.
    pub fn damaged(&self, what: impl Into<String>) -> RedisDbError {
        RedisDbError::Damaged {
            store: self.name,
            endpoint: self.db.endpoint.clone(),
            what: what.into(),
        }
    }

    /// Runs `f` on a pooled synchronous connection, reconnecting and retrying transient
    /// failures as the [`Policy`] says. `f` may run more than once: it must be safe to repeat
    /// (idempotent, or guarded by WATCH or a script). Blocks: call it from a blocking thread.
    pub fn run<T>(
        &self,
        mut f: impl FnMut(&mut Conn) -> RedisResult<T>,
    ) -> Result<T, RedisDbError> {
        let policy = self.db.policy;
        let start = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            // A slot is held for one attempt only, never across a wait, so one caller's
            // backoff does not hold up the others'.
            let mut slot = self.db.slot();
            let result = match slot.as_mut() {
                Some(c) => f(c),
                None => match self.db.connect_sync() {
                    Ok(mut c) => {
                        let r = f(&mut c);
                        *slot = Some(c);
                        r
                    }
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) => {
                    // The connection may hold a WATCH or half a reply: start afresh.
                    *slot = None;
                    drop(slot);
                    if !is_transient(&e) {
                        return Err(self.refused(e));
                    }
                    if attempt >= policy.max_attempts {
                        return Err(self.unreachable(attempt, start, e));
                    }
                    tracing::debug!(store = self.name, attempt, error = %e, "Redis call failed; retrying");
                    std::thread::sleep(policy.backoff(attempt));
                }
            }
        }
    }

    /// Runs `f` on this runtime's async connection until it succeeds, fails for good, or the
    /// [`Policy`]'s attempts are spent, waiting with exponential backoff between attempts. `f`
    /// may run more than once: it must be safe to repeat.
    pub async fn retry<T, F, Fut>(&self, mut f: F) -> Result<T, RedisDbError>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let policy = self.db.policy;
        let start = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = match self.db.manager().await {
                Ok(m) => f(m).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) if is_transient(&e) => {
                    if attempt >= policy.max_attempts {
                        return Err(self.unreachable(attempt, start, e));
                    }
                    tracing::debug!(store = self.name, attempt, error = %e, "Redis call failed; retrying");
                    tokio::time::sleep(policy.backoff(attempt)).await;
                }
                Err(e) => return Err(self.refused(e)),
            }
        }
    }

    /// Runs `f` on this runtime's async connection for commands that must not run twice,
    /// such as an append: it is run again only when the connection was refused (the server is
    /// down or restarting: nothing was sent), as the [`Policy`] says; any other failure is
    /// returned as it is, and the next call reconnects.
    pub async fn once<T, F, Fut>(&self, mut f: F) -> Result<T, RedisDbError>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let policy = self.db.policy;
        let start = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = match self.db.manager().await {
                Ok(m) => f(m).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) if e.is_connection_refusal() && attempt < policy.max_attempts => {
                    tracing::debug!(store = self.name, attempt, error = %e, "Redis refused the connection; retrying");
                    tokio::time::sleep(policy.backoff(attempt)).await;
                }
                Err(e) if is_transient(&e) => return Err(self.unreachable(attempt, start, e)),
                Err(e) => return Err(self.refused(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// redis-rs 1.x calls both a reply of another type and a broken reply `ErrorKind::Parse`;
    /// as with 0.32 (`TypeError` / `ParseError`), only the broken reply is worth a retry.
    #[test]
    fn a_reply_of_another_type_is_not_retried_but_a_broken_reply_is() {
        let typed: RedisError = redis::from_redis_value::<i64>(Value::BulkString(b"x".to_vec()))
            .unwrap_err()
            .into();
        assert!(is_reply_type_error(&typed), "{typed}");
        assert!(!is_transient(&typed), "{typed}");

        let broken = redis::parse_redis_value(b"?x\r\n").unwrap_err();
        assert_eq!(broken.kind(), redis::ErrorKind::Parse, "{broken}");
        assert!(!is_reply_type_error(&broken), "{broken}");
        assert!(is_transient(&broken), "{broken}");

        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(is_transient(&refused));
        let auth = RedisError::from((redis::ErrorKind::AuthenticationFailed, "wrong password"));
        assert!(!is_transient(&auth));
    }

    #[test]
    fn one_db_per_url_and_policy_while_it_is_held() {
        let url = "redis://127.0.0.1:1/7";
        let a = RedisDb::open(url).unwrap();
        let b = RedisDb::open(url).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let quick = Policy {
            max_attempts: 1,
            ..Policy::default()
        };
        let c = RedisDb::open_with(url, quick).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(a.endpoint(), "127.0.0.1:1/7");
        let weak = Arc::downgrade(&a);
        drop((a, b));
        assert!(
            weak.upgrade().is_none(),
            "the registry holds no strong reference"
        );
        assert!(RedisDb::open_with(
            url,
            Policy {
                max_attempts: 0,
                ..quick
            }
        )
        .is_err());
        let err = RedisDb::open("redis://:hunter2@[bad")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        let err = RedisDb::open_for("redis://:hunter2@[bad", "--state URL")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("the --state URL is not a usable Redis URL")
                && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn an_unreachable_server_names_the_store_and_the_host() {
        let quick = Policy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(1),
            connection_timeout: Duration::from_millis(200),
            ..Policy::default()
        };
        let db = RedisDb::open_with("redis://:hunter2@127.0.0.1:1/0", quick).unwrap();
        let err = db.store("plans").ping().unwrap_err();
        let msg = err.to_string();
        assert!(err.is_unreachable(), "{msg}");
        assert!(
            msg.contains("plans") && msg.contains("127.0.0.1:1/0") && !msg.contains("hunter2"),
            "{msg}"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = Policy::default();
        let waits: Vec<u128> = (1..=6).map(|n| p.backoff(n).as_millis()).collect();
        assert_eq!(waits, [50, 100, 200, 400, 800, 1000]);
    }
}

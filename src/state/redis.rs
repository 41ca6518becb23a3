//! A small synchronous Redis connection pool for the shared state stores (agent store, key
//! store, runner leases).
//!
//! The stores' methods are synchronous and already run on blocking threads, so they use the
//! sync `redis` API: a [`redis::Client`] and a few connections behind mutexes, each made on
//! first use and remade after an I/O error. A transient failure (connection refused, dropped,
//! timed out) is retried a bounded number of times with a short backoff; after that the call
//! fails with [`RedisStateError::Unreachable`], which names the server as `HOST:PORT/DB` and
//! never its password.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis::{Cmd, Connection, ConnectionLike, RedisError, RedisResult, RetryMethod, Value};

/// Key prefix of everything the state stores keep in Redis.
pub const PREFIX: &str = "memex:st:";

/// How many connections one store keeps.
const POOL: usize = 4;

/// Attempts per call before Redis counts as unreachable.
const ATTEMPTS: u32 = 4;

/// Errors of the Redis state backend.
#[derive(Debug, thiserror::Error)]
pub enum RedisStateError {
    /// The URL is not a usable Redis URL.
    #[error("the --state URL is not a usable Redis URL ({0}); expected redis://HOST:PORT/DB")]
    InvalidUrl(String),
    /// Redis did not answer after bounded retries.
    #[error("Redis at {endpoint} is unreachable ({attempts} attempts)")]
    Unreachable {
        /// `HOST:PORT/DB`.
        endpoint: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        #[source]
        source: RedisError,
    },
    /// Redis answered with an error that retrying will not fix.
    #[error("Redis at {endpoint} refused the request")]
    Refused {
        /// `HOST:PORT/DB`.
        endpoint: String,
        /// Redis's answer.
        #[source]
        source: RedisError,
    },
    /// A stored value is not one memex wrote.
    #[error("Redis at {endpoint}: {what} is damaged")]
    Damaged {
        /// `HOST:PORT/DB`.
        endpoint: String,
        /// What could not be read.
        what: String,
    },
}

/// A pool of synchronous connections to one Redis database.
pub struct RedisPool {
    client: redis::Client,
    endpoint: String,
    conns: Vec<Mutex<Option<Conn>>>,
    next: std::sync::atomic::AtomicUsize,
    trips: Arc<AtomicU64>,
}

/// A pooled connection that counts its round trips (a command, or a whole pipeline, is one).
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

impl std::fmt::Debug for RedisPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPool")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// Whether retrying `e` after reconnecting may succeed.
fn is_transient(e: &RedisError) -> bool {
    if e.kind() == redis::ErrorKind::AuthenticationFailed
        || crate::episodic::redis::is_reply_type_error(e)
    {
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

impl RedisPool {
    /// A pool for `url` (`redis://[:PASSWORD@]HOST:PORT/DB`); connects lazily, but checks the
    /// server answers (`PING`) so a wrong URL fails at start.
    pub fn connect(url: &str) -> Result<Self, RedisStateError> {
        let client = redis::Client::open(url)
            .map_err(|e| RedisStateError::InvalidUrl(e.category().to_string()))?;
        let info = client.get_connection_info();
        let endpoint = format!("{}/{}", info.addr(), info.redis_settings().db());
        let pool = RedisPool {
            client,
            endpoint,
            conns: (0..POOL).map(|_| Mutex::new(None)).collect(),
            next: std::sync::atomic::AtomicUsize::new(0),
            trips: Arc::new(AtomicU64::new(0)),
        };
        pool.run(|c| redis::cmd("PING").query::<String>(c))?;
        Ok(pool)
    }

    /// `HOST:PORT/DB` (never a password).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Round trips made to Redis through this pool so far (for benchmarks and diagnostics).
    pub fn round_trips(&self) -> u64 {
        self.trips.load(Ordering::Relaxed)
    }

    fn slot(&self) -> MutexGuard<'_, Option<Conn>> {
        for m in &self.conns {
            if let Ok(g) = m.try_lock() {
                return g;
            }
        }
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.conns.len();
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

    /// Runs `f` on a pooled connection, reconnecting and retrying transient failures a
    /// bounded number of times. `f` may run more than once: it must be safe to repeat (every
    /// caller's command is idempotent or guarded by WATCH/a script).
    pub fn run<T>(
        &self,
        mut f: impl FnMut(&mut Conn) -> redis::RedisResult<T>,
    ) -> Result<T, RedisStateError> {
        let mut slot = self.slot();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match slot.as_mut() {
                Some(c) => f(c),
                None => match self
                    .client
                    .get_connection_with_timeout(Duration::from_secs(2))
                {
                    Ok(c) => {
                        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                        let _ = c.set_write_timeout(Some(Duration::from_secs(5)));
                        let mut c = Conn {
                            inner: c,
                            trips: self.trips.clone(),
                        };
                        let r = f(&mut c);
                        *slot = Some(c);
                        r
                    }
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) if is_transient(&e) => {
                    *slot = None;
                    if attempt >= ATTEMPTS {
                        return Err(RedisStateError::Unreachable {
                            endpoint: self.endpoint.clone(),
                            attempts: attempt,
                            source: e,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(25 << attempt));
                }
                Err(e) => {
                    return Err(RedisStateError::Refused {
                        endpoint: self.endpoint.clone(),
                        source: e,
                    })
                }
            }
        }
    }

    /// A [`RedisStateError::Damaged`] for `what`.
    pub fn damaged(&self, what: impl Into<String>) -> RedisStateError {
        RedisStateError::Damaged {
            endpoint: self.endpoint.clone(),
            what: what.into(),
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
        assert!(
            crate::episodic::redis::is_reply_type_error(&typed),
            "{typed}"
        );
        assert!(!is_transient(&typed), "{typed}");

        let broken = redis::parse_redis_value(b"?x\r\n").unwrap_err();
        assert_eq!(broken.kind(), redis::ErrorKind::Parse, "{broken}");
        assert!(
            !crate::episodic::redis::is_reply_type_error(&broken),
            "{broken}"
        );
        assert!(is_transient(&broken), "{broken}");

        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(is_transient(&refused));
        let auth = RedisError::from((redis::ErrorKind::AuthenticationFailed, "wrong password"));
        assert!(!is_transient(&auth));
    }
}

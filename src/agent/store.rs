//! The agent's own state: sessions, turns (with the memory context used), the audit log of
//! every tool call, and pending irreversible actions with their decisions.
//!
//! [`AgentStore`] is a facade over an [`AgentStateBackend`], chosen by the [`StateUrl`]:
//! [`sqlite::SqliteAgentState`] (`agent.db`, one host) or [`redis::RedisAgentState`] (shared by
//! many `memex serve` workers). Both give the same guarantees: an action is claimed for
//! execution atomically (at most one executor across every process), a session's turn counter
//! is an atomic counter, and an audit row is durable once the call returns (on Redis, as far
//! as its `appendfsync` setting makes a write durable).

pub mod redis;
pub mod sqlite;
mod types;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::error::AgentError;
use super::runner::RunnerLocks;
use crate::merchant::MerchantId;
use crate::state::StateUrl;

pub use types::{
    ActionStatus, AgentStateBackend, AuditEntry, ModelStats, PendingAction, Percentiles, Redacted,
    SessionInfo, Stats, StoredTurn, TurnRecord,
};

/// The agent's store: a facade over the backend its [`StateUrl`] names.
pub struct AgentStore {
    backend: Box<dyn AgentStateBackend>,
    locks: Arc<dyn RunnerLocks>,
    redis: Option<crate::redisdb::RedisStore>,
    leases: Option<Arc<super::runner::RedisLeases>>,
    path: PathBuf,
    state: StateUrl,
}

impl std::fmt::Debug for AgentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentStore")
            .field("state", &self.state)
            .finish()
    }
}

impl AgentStore {
    /// Opens (creating) `agent.db` in `data_dir`.
    pub fn open_in(data_dir: &Path) -> Result<Self, AgentError> {
        std::fs::create_dir_all(data_dir).map_err(|source| AgentError::CreateDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        Self::open(&data_dir.join(crate::state::DEFAULT_SQLITE_FILE))
    }

    /// Opens `agent.db` in `data_dir` for reading only, creating nothing: `None` when there
    /// is no store yet. In a directory this process cannot write (where SQLite cannot make the
    /// WAL index beside the file), the file is read as immutable, unless its write-ahead log
    /// still holds changes, which is then a clear error saying the directory is read-only.
    pub fn open_read_only(data_dir: &Path) -> Result<Option<Self>, AgentError> {
        let path = data_dir.join(crate::state::DEFAULT_SQLITE_FILE);
        Ok(sqlite::SqliteAgentState::open_read_only(&path)?.map(Self::from_sqlite))
    }

    /// Opens (creating) the SQLite store at `path`.
    pub fn open(path: &Path) -> Result<Self, AgentError> {
        Ok(Self::from_sqlite(sqlite::SqliteAgentState::open(path)?))
    }

    fn from_sqlite(s: sqlite::SqliteAgentState) -> Self {
        let path = s.path().to_path_buf();
        AgentStore {
            locks: Arc::new(super::runner::LockDir::beside(&path)),
            backend: Box::new(s),
            redis: None,
            leases: None,
            state: StateUrl::Sqlite(path.clone()),
            path,
        }
    }

    /// Opens (creating) the store `state` names: the SQLite file (its directory created), or
    /// the Redis database (checked to answer).
    pub fn open_state(state: &StateUrl) -> Result<Self, AgentError> {
        match state {
            StateUrl::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| AgentError::CreateDir {
                        path: dir.to_path_buf(),
                        source,
                    })?;
                }
                Self::open(path)
            }
            StateUrl::Redis(url) => Self::open_redis(url, super::runner::DEFAULT_LEASE_TTL),
        }
    }

    /// Opens the store `state` names for reading: `None` for a SQLite file that does not
    /// exist yet (nothing is created); on Redis it just connects.
    pub fn open_state_read_only(state: &StateUrl) -> Result<Option<Self>, AgentError> {
        match state {
            StateUrl::Sqlite(path) => {
                Ok(sqlite::SqliteAgentState::open_read_only(path)?.map(Self::from_sqlite))
            }
            StateUrl::Redis(url) => {
                Self::open_redis(url, super::runner::DEFAULT_LEASE_TTL).map(Some)
            }
        }
    }

    /// Opens the Redis store at `url` whose runner leases live `lease_ttl` (tests shorten it).
    pub fn open_redis(url: &str, lease_ttl: std::time::Duration) -> Result<Self, AgentError> {
        let pool = crate::redisdb::RedisDb::open_for(url, "--state URL")?.store("agent state");
        pool.ping()?;
        let leases = Arc::new(super::runner::RedisLeases::new(
            pool.named("runner leases"),
            lease_ttl,
        ));
        Ok(AgentStore {
            locks: leases.clone(),
            leases: Some(leases),
            backend: Box::new(redis::RedisAgentState::new(pool.clone())),
            redis: Some(pool),
            state: StateUrl::Redis(url.to_string()),
            path: PathBuf::new(),
        })
    }

    /// The SQLite database file (the planner keeps its tables in the same file); an empty
    /// path for a Redis store (use [`AgentStore::state`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state backend this store lives on (the plan and key stores open the same one).
    pub fn state(&self) -> &StateUrl {
        &self.state
    }

    /// Round trips made to a Redis state through this process's synchronous connections since
    /// they were opened (`None` on SQLite): for benchmarks and diagnostics.
    pub fn state_round_trips(&self) -> Option<u64> {
        self.redis.as_ref().map(|p| p.round_trips())
    }

    /// The Redis connections of a Redis state (`None` on SQLite), shared with what sits
    /// beside the store (the shared tool cache).
    pub fn redis_pool(&self) -> Option<crate::redisdb::RedisStore> {
        self.redis.clone()
    }

    /// Runner ownership on this store's state (file locks for SQLite, leases for Redis).
    pub fn runner_locks(&self) -> Arc<dyn RunnerLocks> {
        self.locks.clone()
    }

    /// The ids of `merchant`'s sessions, oldest first; with `before`, only those created
    /// strictly before it.
    pub fn merchant_sessions(
        &self,
        merchant: &MerchantId,
        before: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<String>, AgentError> {
        self.backend.merchant_sessions(merchant, before)
    }

    /// Redacts, atomically, the text the agent store keeps about `sessions` of `merchant` (a
    /// session of another merchant is never touched): audit rows keep their tool, status,
    /// latency and time while their arguments and results become `"[forgotten]"`; turn records
    /// keep their counters while their memory context becomes `{"forgotten": true}`. Safe to
    /// repeat; returns what changed this time.
    pub fn redact_sessions(
        &self,
        merchant: &MerchantId,
        sessions: &[String],
    ) -> Result<Redacted, AgentError> {
        self.backend.redact_sessions(merchant, sessions)
    }

    /// Registers `session` for `merchant`, or checks that an existing one belongs to it.
    /// Returns the number of turns the session already has.
    pub fn begin_session(&self, session: &str, merchant: &MerchantId) -> Result<u32, AgentError> {
        self.backend.begin_session(session, merchant)
    }

    /// The merchant that owns `session`, if the session exists.
    pub fn session_merchant(&self, session: &str) -> Result<Option<MerchantId>, AgentError> {
        self.backend.session_merchant(session)
    }

    /// Counts a new turn for `session` and returns its number.
    pub fn next_turn(&self, session: &str) -> Result<u32, AgentError> {
        self.backend.next_turn(session)
    }

    /// Records a finished turn.
    pub fn record_turn(
        &self,
        session: &str,
        merchant: &MerchantId,
        turn: u32,
        rec: &TurnRecord,
    ) -> Result<(), AgentError> {
        self.backend.record_turn(session, merchant, turn, rec)
    }

    /// The memory context recorded for each turn of `session`, oldest first.
    pub fn turn_contexts(&self, session: &str) -> Result<Vec<Value>, AgentError> {
        self.backend.turn_contexts(session)
    }

    /// Every session (of `merchant` only, when given) created at or after `since`, oldest
    /// first (for `memex eval export`).
    pub fn sessions(
        &self,
        merchant: Option<&MerchantId>,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<SessionInfo>, AgentError> {
        self.backend.sessions(merchant, since)
    }

    /// The finished turns of `session` as stored, oldest first.
    pub fn turn_records(&self, session: &str) -> Result<Vec<StoredTurn>, AgentError> {
        self.backend.turn_records(session)
    }

    /// Appends one audit entry (durable once this returns).
    pub fn audit(&self, e: &AuditEntry) -> Result<(), AgentError> {
        self.backend.audit(e)
    }

    /// The audit log of `session`, in order.
    pub fn audit_log(&self, session: &str) -> Result<Vec<AuditEntry>, AgentError> {
        self.backend.audit_log(session)
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
        self.backend
            .create_action(session, merchant, turn, call_id, tool, args)
    }

    /// The action `id` of `session`, if any.
    pub fn action(&self, session: &str, id: &str) -> Result<Option<PendingAction>, AgentError> {
        self.backend.action(session, id)
    }

    /// The action of `session` created for tool call `call_id`, if any (the planner uses it
    /// so that a step asks for at most one approval, even across a crash).
    pub fn action_by_call(
        &self,
        session: &str,
        call_id: &str,
    ) -> Result<Option<PendingAction>, AgentError> {
        self.backend.action_by_call(session, call_id)
    }

    /// The action `id`, whatever its session (action ids are unique), if any.
    pub fn action_by_id(&self, id: &str) -> Result<Option<PendingAction>, AgentError> {
        self.backend.action_by_id(id)
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
        self.backend.claim_execution(id, runner, &alive)
    }

    /// Moves action `id` from `from` to `to` atomically; false when it was not in `from`.
    pub fn transition(
        &self,
        id: &str,
        from: &[ActionStatus],
        to: ActionStatus,
        result: Option<&Value>,
    ) -> Result<bool, AgentError> {
        self.backend.transition(id, from, to, result)
    }

    /// Marks the session ended with the episode that summarises it (as of its current turn
    /// count).
    pub fn end_session(&self, session: &str, episode_id: &str) -> Result<(), AgentError> {
        self.backend.end_session(session, episode_id)
    }

    /// The episode that already summarises `session` as it stands: set when the session was
    /// ended and has had no turn since.
    pub fn ended_episode(&self, session: &str) -> Result<Option<String>, AgentError> {
        self.backend.ended_episode(session)
    }

    /// Takes `session` for `holder` (`PID:TOKEN`) so that its turns run one at a time: true
    /// when it was free, already `holder`'s, or held by a holder that is no longer `alive`
    /// (a crashed process); false while another live holder has it.
    pub fn lock_session(
        &self,
        session: &str,
        holder: &str,
        alive: impl Fn(&str) -> bool,
    ) -> Result<bool, AgentError> {
        if self.holds_session_lease(session, holder) {
            return Ok(true);
        }
        self.backend.lock_session(session, holder, &alive)
    }

    /// Gives `session` back if `holder` has it.
    pub fn unlock_session(&self, session: &str, holder: &str) -> Result<(), AgentError> {
        if self.holds_session_lease(session, holder) {
            return Ok(());
        }
        self.backend.unlock_session(session, holder)
    }

    /// On Redis, a holder that is this process's live `session` lease (the agent takes one
    /// before locking a session) already excludes every other worker: locking again would be
    /// a second round trip for nothing, so it is skipped, and releasing is the lease's drop.
    fn holds_session_lease(&self, session: &str, holder: &str) -> bool {
        self.leases
            .as_ref()
            .is_some_and(|l| l.holds("session", session, holder))
    }

    /// Aggregates over every session.
    pub fn stats(&self) -> Result<Stats, AgentError> {
        self.backend.stats()
    }

    /// The actions whose status is `status` (every action when `None`), oldest first, at most
    /// `limit` (for `memex serve`'s `GET /v1/actions`).
    pub fn actions_with_status(
        &self,
        status: Option<ActionStatus>,
        limit: usize,
    ) -> Result<Vec<PendingAction>, AgentError> {
        self.backend.actions_with_status(status, limit)
    }
}

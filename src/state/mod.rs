//! Where the agent's shared state lives: sessions, turns, actions and approvals, the audit log,
//! stats, plans with their runner ownership, and the service's keys.
//!
//! `--state URL` / `MEMEX_STATE_URL` names it: `sqlite://PATH` (the embedded default,
//! `agent.db` in the data directory, with `keys.db` beside it) or `redis://HOST:PORT/DB`
//! (shared by many `memex serve` workers). The stores open themselves from a [`StateUrl`].

pub mod redis;

use std::path::{Path, PathBuf};

use crate::store_url::{Scheme, StoreUrl};

/// File name of the default SQLite state store in the data directory.
pub const DEFAULT_SQLITE_FILE: &str = "agent.db";

/// A state URL that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Neither `sqlite://PATH` nor `redis://…` (the message never echoes a password).
    #[error("invalid --state URL: {0}")]
    InvalidUrl(String),
}

/// The state backend named by `--state`.
#[derive(Clone, PartialEq, Eq)]
pub enum StateUrl {
    /// The SQLite file of the agent store (`agent.db`); plans share it, keys sit beside it in
    /// `keys.db`.
    Sqlite(PathBuf),
    /// A Redis URL (`redis://` or `rediss://`), shared by every worker that names it.
    Redis(String),
}

impl std::fmt::Debug for StateUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl StateUrl {
    /// Parses `raw`, or names the default `agent.db` in `data_dir` when `raw` is `None`.
    pub fn parse(raw: Option<&str>, data_dir: &Path) -> Result<Self, StateError> {
        let Some(raw) = raw.map(str::trim).filter(|r| !r.is_empty()) else {
            return Ok(StateUrl::Sqlite(data_dir.join(DEFAULT_SQLITE_FILE)));
        };
        match StoreUrl::parse(raw, &[Scheme::Sqlite, Scheme::Redis], DEFAULT_SQLITE_FILE) {
            Ok(StoreUrl::Sqlite(path)) => Ok(StateUrl::Sqlite(path)),
            Ok(StoreUrl::Redis(url)) => Ok(StateUrl::Redis(url)),
            Ok(StoreUrl::File(_)) => Err(StateError::InvalidUrl(
                "must be sqlite://PATH or redis://HOST:PORT/DB (got scheme \"file\")".into(),
            )),
            Err(why) => Err(StateError::InvalidUrl(why.0)),
        }
    }

    /// The URL for logs and errors: a Redis password is replaced by `***`.
    pub fn redacted(&self) -> String {
        match self {
            StateUrl::Sqlite(p) => format!("sqlite://{}", p.display()),
            StateUrl::Redis(u) => redact_url(u),
        }
    }

    /// True for a backend shared between processes on several machines (Redis).
    pub fn is_shared(&self) -> bool {
        matches!(self, StateUrl::Redis(_))
    }
}

/// `scheme://user:secret@host/…` → `scheme://user:***@host/…`; other URLs unchanged.
pub use crate::store_url::redact as redact_url;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_redacts() {
        let d = Path::new("/data");
        assert_eq!(
            StateUrl::parse(None, d).unwrap(),
            StateUrl::Sqlite("/data/agent.db".into())
        );
        assert_eq!(
            StateUrl::parse(Some("sqlite:///x/a.db"), d).unwrap(),
            StateUrl::Sqlite("/x/a.db".into())
        );
        let r = StateUrl::parse(Some("redis://:hunter2@127.0.0.1:6379/3"), d).unwrap();
        assert!(r.is_shared());
        assert_eq!(r.redacted(), "redis://:***@127.0.0.1:6379/3");
        assert!(!format!("{r:?}").contains("hunter2"));
        let e = StateUrl::parse(Some("postgres://u:hunter2@h/db"), d)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--state") && !e.contains("hunter2"), "{e}");
    }
}

//! The one error type of the episodic module.

use std::path::PathBuf;

use crate::sqlite::SqliteError;

/// Everything that can go wrong in episodic memory. Every message is one sentence that names
/// the store (never a password) and says what to do where that is not obvious.
#[derive(Debug, thiserror::Error)]
pub enum EpisodicError {
    /// The store URL is not `sqlite://PATH` or `redis://HOST:PORT/DB`.
    #[error("episodic store URL {0}")]
    InvalidUrl(String),

    /// The draft or query is not acceptable (empty summary, non-finite vector, ...).
    #[error("invalid episode: {0}")]
    InvalidInput(String),

    /// A stored embedding has a different dimension from the query vector.
    #[error(
        "episode {id} has a {found}-dimensional embedding but the query has {expected} dimensions; \
         episodes and queries must come from the same embedding model"
    )]
    DimensionMismatch {
        /// The episode whose embedding does not fit.
        id: String,
        /// Dimension of the query.
        expected: usize,
        /// Dimension of the stored embedding.
        found: usize,
    },

    /// The SQLite file is locked by another connection for longer than the busy timeout.
    #[error(
        "the episodic database {path} is locked by another process (gave up after {waited_ms} ms); retry later"
    )]
    Locked {
        /// The database file.
        path: PathBuf,
        /// The busy timeout that elapsed.
        waited_ms: u64,
    },

    /// The SQLite file (or its directory) cannot be written.
    #[error("the episodic database {path} is read-only; memex needs write access to it and its directory")]
    ReadOnly {
        /// The database file.
        path: PathBuf,
    },

    /// A read-only command named a SQLite database that does not exist (nothing was created).
    #[error("the episodic database {path} does not exist")]
    Missing {
        /// The database file.
        path: PathBuf,
    },

    /// The data directory or database file could not be created or opened.
    #[error("cannot open the episodic database {path}: {}", .source.cause_text())]
    Open {
        /// The database file.
        path: PathBuf,
        /// What went wrong (the directory, the file, or SQLite's error).
        #[source]
        source: Box<SqliteError>,
    },

    /// Any other SQLite failure.
    #[error("episodic database {path}: {}", .source.cause_text())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The failure, with SQLite's error inside.
        #[source]
        source: Box<SqliteError>,
    },

    /// Redis did not answer after bounded retries with backoff.
    #[error(
        "Redis at {endpoint} is unavailable: {attempts} attempts over {elapsed_ms} ms failed, the last with: {last}"
    )]
    Unavailable {
        /// `host:port/db` of the server, without credentials.
        endpoint: String,
        /// How many attempts were made.
        attempts: u32,
        /// Time spent on all attempts and backoff, in milliseconds.
        elapsed_ms: u64,
        /// The last error seen.
        #[source]
        last: Box<redis::RedisError>,
    },

    /// Redis answered with an error that retrying will not fix.
    #[error("Redis at {endpoint} refused the request: {source}")]
    Redis {
        /// `host:port/db` of the server, without credentials.
        endpoint: String,
        /// The server's or client's error.
        #[source]
        source: Box<redis::RedisError>,
    },

    /// A stored episode could not be decoded (the store was written by something else).
    #[error("stored episode {id} is corrupt: {message}")]
    Corrupt {
        /// The episode id or key.
        id: String,
        /// What could not be decoded.
        message: String,
    },

    /// A stored episode's metadata is not JSON.
    #[error("stored episode {id} is corrupt: metadata is not JSON ({source})")]
    CorruptMetadata {
        /// The episode id.
        id: String,
        /// The JSON parser's error.
        #[source]
        source: serde_json::Error,
    },

    /// A blocking task running a SQLite call failed (panicked or was cancelled).
    #[error("an episodic storage task stopped unexpectedly: {0}")]
    Task(#[source] tokio::task::JoinError),
}

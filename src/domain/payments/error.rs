//! The one error type of the payments domain, and how it reaches the model as a [`ToolError`].

use std::path::PathBuf;

use super::model::UnknownValue;
use super::seed::SeedError;
use crate::sqlite::SqliteError;
use crate::tools::ToolError;

/// Everything that can go wrong in the payments database. Messages are one sentence and never
/// reveal whether an object that is not the caller's exists.
#[derive(Debug, thiserror::Error)]
pub enum PaymentsError {
    /// The database file or its directory could not be created or opened.
    #[error("cannot open the payments database {path}: {}", .source.cause_text())]
    Open {
        /// The database file.
        path: PathBuf,
        /// What went wrong (the directory, the file, or SQLite's error).
        #[source]
        source: SqliteError,
    },

    /// Another connection held the database locked for longer than the busy timeout.
    #[error("the payments database {path} is busy (gave up after {waited_ms} ms); retry shortly")]
    Busy {
        /// The database file.
        path: PathBuf,
        /// The busy timeout that elapsed.
        waited_ms: u64,
    },

    /// Any other SQLite failure.
    #[error("payments database {path}: {}", .source.cause_text())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The failure, with SQLite's error inside.
        #[source]
        source: SqliteError,
    },

    /// The seed file could not be read or is not valid.
    #[error("payments seed {path}: {source}")]
    Seed {
        /// The seed file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: SeedError,
    },

    /// The object does not exist for this merchant (or belongs to another merchant).
    #[error("no {what} {id} was found for this merchant")]
    NotFound {
        /// What was looked up: `transaction`, `merchant account`, ...
        what: &'static str,
        /// The id that was looked up.
        id: String,
    },

    /// A business rule forbids the operation.
    #[error("{0}")]
    Refused(String),

    /// The request is malformed in a way only the domain can see.
    #[error("{0}")]
    InvalidInput(String),

    /// A stored row could not be decoded.
    #[error("the payments database holds an invalid record: {0}")]
    Corrupt(String),

    /// A stored row holds a value outside its enumeration.
    #[error("the payments database holds an invalid record: {what}: {source}")]
    CorruptValue {
        /// The record (`ticket TKT…`).
        what: String,
        /// The value's error.
        #[source]
        source: UnknownValue,
    },

    /// A blocking database task stopped unexpectedly (panicked or was cancelled).
    #[error("a payments database task stopped unexpectedly: {0}")]
    Task(#[source] tokio::task::JoinError),
}

impl From<PaymentsError> for ToolError {
    fn from(e: PaymentsError) -> Self {
        let message = e.to_string();
        match e {
            PaymentsError::NotFound { .. } => ToolError::NotFound(message),
            PaymentsError::Refused(_) => ToolError::Refused(message),
            PaymentsError::InvalidInput(_) => ToolError::InvalidArgs(message),
            PaymentsError::Busy { .. } => ToolError::Transient(message),
            PaymentsError::Open { .. }
            | PaymentsError::Sqlite { .. }
            | PaymentsError::Seed { .. }
            | PaymentsError::Corrupt(_)
            | PaymentsError::CorruptValue { .. }
            | PaymentsError::Task(_) => ToolError::Internal(message),
        }
    }
}

impl From<SqliteError> for PaymentsError {
    fn from(e: SqliteError) -> Self {
        use SqliteError as S;
        match e {
            S::Busy {
                path, waited_ms, ..
            } => PaymentsError::Busy { path, waited_ms },
            S::CreateDir { ref path, .. }
            | S::NotAFile { ref path }
            | S::Missing { ref path }
            | S::CannotOpen { ref path, .. } => PaymentsError::Open {
                path: path.clone(),
                source: e,
            },
            S::ReadOnly { ref path, .. } | S::Sqlite { ref path, .. } => PaymentsError::Sqlite {
                path: path.clone(),
                source: e,
            },
        }
    }
}

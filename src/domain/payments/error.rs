//! The one error type of the payments domain, and how it reaches the model as a [`ToolError`].

use std::path::PathBuf;

use crate::tools::ToolError;

/// Everything that can go wrong in the payments database. Messages are one sentence and never
/// reveal whether an object that is not the caller's exists.
#[derive(Debug, thiserror::Error)]
pub enum PaymentsError {
    /// The database file or its directory could not be created or opened.
    #[error("cannot open the payments database {path}: {message}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        message: String,
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
    #[error("payments database {path}: {message}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's description of the failure.
        message: String,
    },

    /// The seed file could not be read or is not valid.
    #[error("payments seed {path}: {message}")]
    Seed {
        /// The seed file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
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

    /// A blocking database task stopped unexpectedly (panicked or was cancelled).
    #[error("a payments database task stopped unexpectedly: {0}")]
    Task(String),
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
            | PaymentsError::Task(_) => ToolError::Internal(message),
        }
    }
}

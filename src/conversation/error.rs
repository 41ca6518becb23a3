//! Errors of the conversation buffer and its stores.

/// What can go wrong keeping a conversation.
///
/// A failed *summarisation* is not an error: the buffer keeps the raw turns and reports the
/// failure in [`AppendReport`](super::AppendReport); these are the failures that stop an
/// operation.
#[derive(Debug, thiserror::Error)]
pub enum ConversationError {
    /// The session id is unusable.
    #[error("invalid conversation session id: {0}")]
    InvalidSession(String),

    /// The store could not be opened, read or written.
    #[error("the conversation store failed while trying to {action}: {message}")]
    Store {
        /// What we were doing, e.g. "append a message to session `s1`".
        action: String,
        /// What went wrong.
        message: String,
    },

    /// A stored message cannot be decoded (the row is kept; nothing is deleted).
    #[error("message #{seq} of session `{session}` is corrupt and cannot be read: {reason}")]
    Corrupt {
        /// The session.
        session: String,
        /// The message's sequence number.
        seq: u64,
        /// Why it cannot be decoded.
        reason: String,
    },

    /// Another writer moved the session on (its summary watermark is already at or past ours).
    #[error("session `{session}` was compressed by another writer (stored watermark {stored}, ours {ours}); reopen the buffer")]
    Conflict {
        /// The session.
        session: String,
        /// Watermark in the store.
        stored: u64,
        /// Watermark we tried to write.
        ours: u64,
    },
}

impl ConversationError {
    /// A [`ConversationError::Store`] from any displayable error.
    pub(crate) fn store(action: impl Into<String>, err: impl std::fmt::Display) -> Self {
        ConversationError::Store {
            action: action.into(),
            message: err.to_string(),
        }
    }
}

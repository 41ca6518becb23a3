//! The persistence seam of the conversation buffer.

use async_trait::async_trait;

use crate::llm::Message;

use super::ConversationError;

/// Everything persisted about one session.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredSession {
    /// The rolling summary (empty before the first compression).
    pub summary: String,
    /// Sequence number of the last message folded into the summary (0 before any).
    pub watermark: u64,
    /// How many compressions the session went through.
    pub compressions: u64,
    /// Messages after the watermark, with their sequence numbers, oldest first.
    pub messages: Vec<(u64, Message)>,
}

/// Where conversation buffers live. Implementations must make
/// [`ConversationStore::commit_summary`] atomic: the new summary, its watermark and the removal
/// of the messages it covers are applied together or not at all.
#[async_trait]
pub trait ConversationStore: Send + Sync {
    /// The stored state of `session` (empty when it never existed).
    async fn load(&self, session: &str) -> Result<StoredSession, ConversationError>;

    /// Persists `message` as number `seq` of `session` (greater than every earlier number).
    async fn append(
        &self,
        session: &str,
        seq: u64,
        message: &Message,
    ) -> Result<(), ConversationError>;

    /// In one transaction: sets the summary to `summary` and the watermark to `watermark`,
    /// counts one more compression, and deletes the messages numbered `<= watermark`. Fails
    /// with [`ConversationError::Conflict`] when the stored watermark is already `>= watermark`.
    async fn commit_summary(
        &self,
        session: &str,
        summary: &str,
        watermark: u64,
    ) -> Result<(), ConversationError>;

    /// Deletes the session: summary and messages.
    async fn delete(&self, session: &str) -> Result<(), ConversationError>;

    /// Retention: deletes every session whose last activity (last message appended or summary
    /// committed) is strictly before `cutoff`, each session whole and atomically. Sessions with
    /// no recorded time (written before times were kept) are never deleted here: they are
    /// counted in [`PruneReport::untimed`] and, where the store can, stamped with the current
    /// time so that retention counts from now. Stores without retention refuse.
    async fn prune_before(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
    ) -> Result<PruneReport, ConversationError> {
        let _ = cutoff;
        Err(ConversationError::store(
            "prune conversations",
            "this conversation store keeps no append times",
        ))
    }
}

/// What [`ConversationStore::prune_before`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PruneReport {
    /// Sessions deleted (summary and messages).
    pub sessions: u64,
    /// Messages deleted with them.
    pub messages: u64,
    /// Sessions kept because no time was recorded for them.
    pub untimed: u64,
}

/// Checks a session id: 1 to 256 characters, no control characters.
pub fn validate_session_id(session: &str) -> Result<(), ConversationError> {
    if session.is_empty() || session.chars().count() > 256 {
        return Err(ConversationError::InvalidSession(
            "a session id must be 1 to 256 characters long".into(),
        ));
    }
    if session.chars().any(char::is_control) {
        return Err(ConversationError::InvalidSession(
            "a session id must not contain control characters".into(),
        ));
    }
    Ok(())
}

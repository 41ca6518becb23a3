//! Conversation memory: a token-budgeted buffer of the current session with a rolling summary.
//!
//! * [`ConversationBuffer`] — system prompt + rolling summary + recent turns; compresses its
//!   oldest turns through a [`ChatModel`](crate::llm::ChatModel) when over budget.
//! * [`ConversationStore`] — the persistence seam; [`SqliteConversationStore`] keeps sessions in
//!   `conversations.sqlite3` in the data directory; [`RedisConversationStore`] keeps them in
//!   Redis (commit = one atomic Lua script).
//! * [`TokenCounter`] / [`EstimatedTokens`] — how the budget is counted (a documented estimate).
//!
//! Invariants: a message is persisted before it counts; compression folds whole turns only (an
//! assistant `tool_calls` message and its tool results are never separated) and never the last
//! `keep_recent_turns`; the new summary, its watermark and the deletion of the folded messages
//! commit atomically, so a crash at any point loses nothing. The module knows nothing of
//! merchants, tools or retrieval: it stores messages and summarises them.

mod buffer;
mod error;
mod redis;
mod sqlite;
mod store;
mod summarise;
mod tokens;
mod turns;

pub use self::redis::RedisConversationStore;
pub use buffer::{
    AppendReport, Compression, ConversationBuffer, ConversationConfig, DEFAULT_TOKEN_BUDGET,
};
pub use error::ConversationError;
pub use sqlite::{SqliteConversationStore, SQLITE_FILE_NAME};
pub use store::{validate_session_id, ConversationStore, PruneReport, StoredSession};
pub use summarise::{
    identifiers, keep_identifiers, summary_request, SUMMARY_HEADING, SUMMARY_INSTRUCTIONS,
};
pub use tokens::{EstimatedTokens, TokenCounter, MESSAGE_OVERHEAD};
pub use turns::{render_transcript, turn_ranges};

/// Errors that stop a turn from running at all. Each keeps its cause as a typed source, so a
/// caller can tell "Redis is down" ([`AgentError::Episodic`]/[`AgentError::Conversation`]) from
/// "the model refused" ([`AgentError::Llm`]) by matching.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The language model could not be reached or answered unusably after retries.
    #[error("the language model failed")]
    Llm(#[from] crate::llm::LlmError),
    /// The agent's SQLite store failed.
    #[error("agent store")]
    Sqlite(#[from] rusqlite::Error),
    /// The agent's SQLite file could not be opened (busy, read-only, not a database).
    #[error(transparent)]
    Open(#[from] crate::sqlite::SqliteError),
    /// The data directory of the agent store could not be created.
    #[error("agent store: cannot create {path}")]
    CreateDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The data directory is read-only while `agent.db-wal` still holds changes.
    #[error("the data directory {dir} is read-only and agent.db has changes still in agent.db-wal; open it once with write access")]
    ReadOnlyWal {
        /// The data directory.
        dir: std::path::PathBuf,
    },
    /// The agent store file exists but cannot be read.
    #[error("agent store: cannot read {path}{}", if *read_only_dir { " (its directory is read-only)" } else { "" })]
    Unreadable {
        /// The file.
        path: std::path::PathBuf,
        /// Whether its directory is read-only (the file was tried as immutable).
        read_only_dir: bool,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The Redis state backend failed (unreachable, refused, damaged value).
    #[error(transparent)]
    Redis(#[from] crate::redisdb::RedisDbError),
    /// Something stored could not be read back (a damaged row).
    #[error("agent store: {what} is damaged")]
    Corrupt {
        /// What was being read.
        what: String,
        /// Why it does not parse.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Embedding a query or summary failed.
    #[error("memory: embedding failed")]
    Embed(#[from] crate::embed::EmbedError),
    /// The knowledge base failed.
    #[error("memory: the knowledge base failed")]
    Kb(#[from] crate::kb::KbError),
    /// The episodic store failed.
    #[error("memory: the episodic store failed")]
    Episodic(#[from] crate::episodic::EpisodicError),
    /// The conversation store failed.
    #[error("memory: the conversation store failed")]
    Conversation(#[from] crate::conversation::ConversationError),
    /// A blocking task of the agent was cancelled or panicked.
    #[error("a background task of the agent failed")]
    Join(#[from] tokio::task::JoinError),
    /// Runner ownership (the OS lock files) could not be decided.
    #[error(transparent)]
    Ownership(#[from] super::runner::OwnershipError),
    /// A caller's hook (e.g. the planner's step bookkeeping) failed during a call.
    #[error("a step of the caller failed")]
    Hook(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The session belongs to another merchant.
    #[error("session {session} belongs to another merchant")]
    SessionMerchant {
        /// The session id.
        session: String,
    },
    /// No such session.
    #[error("no session {0}")]
    UnknownSession(String),
    /// No such pending action in the session.
    #[error("no action {action} in session {session}")]
    UnknownAction {
        /// The session id.
        session: String,
        /// The action id.
        action: String,
    },
    /// The action was already decided the other way.
    #[error("action {action} was already {status}")]
    AlreadyDecided {
        /// The action id.
        action: String,
        /// Its status.
        status: String,
    },
    /// The action belongs to a plan step: it is decided through the planner.
    #[error(
        "action {0} belongs to a plan step; decide it through the planner (memex approve {0})"
    )]
    PlanAction(String),
    /// The turn had to escalate but the domain names no escalation, or its tool failed.
    #[error("escalation failed: {0}")]
    Escalation(String),
    /// Another turn of the session is running and did not finish within the wait.
    #[error(
        "session {0} is busy with another turn; retry when it has finished (nothing was recorded)"
    )]
    SessionBusy(String),
    /// Bad input to the agent (session id, message).
    #[error("{0}")]
    Invalid(String),
    /// An approved action's tool is not registered while some tool sources are down: it was
    /// neither run nor failed, and can be approved again once its source is back.
    #[error("tool {tool} of action {action} is not available now (unreachable tool sources: {sources}); the action was not run and stays as it was: approve it again when the source is back")]
    ToolUnavailable {
        /// The action.
        action: String,
        /// The tool (quoted).
        tool: String,
        /// The sources that were down.
        sources: String,
    },
}

/// Errors that stop a turn from running at all.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The language model could not be reached or answered unusably after retries.
    #[error("the language model failed: {0}")]
    Llm(crate::llm::LlmError),
    /// The agent's own store failed.
    #[error("agent store: {0}")]
    Store(String),
    /// A memory store failed.
    #[error("memory: {0}")]
    Memory(String),
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
    /// Bad input to the agent (session id, message).
    #[error("{0}")]
    Invalid(String),
}

impl From<crate::llm::LlmError> for AgentError {
    fn from(e: crate::llm::LlmError) -> Self {
        AgentError::Llm(e)
    }
}

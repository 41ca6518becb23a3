/// Why a plan could not be made, stored or continued. Failed *steps* are not errors: they are
/// recorded in the plan and reported.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The language model could not be reached or answered unusably after retries.
    #[error("the language model failed")]
    Llm(#[from] crate::llm::LlmError),
    /// The model's plan was invalid, and so was its corrected plan; nothing was executed.
    #[error("the model could not produce a valid plan (nothing was executed): {}", .errors.join("; "))]
    InvalidPlan {
        /// The problems with the second plan.
        errors: Vec<String>,
    },
    /// No plan with this id.
    #[error("no plan {0}")]
    UnknownPlan(String),
    /// No plan step holds this approval id.
    #[error("no plan step waits for action {0}")]
    UnknownAction(String),
    /// Another running process is executing the plan.
    #[error("plan {0} is being executed by another process; try again when it has finished")]
    Busy(String),
    /// The action was already decided the other way, or is not waiting for a decision.
    #[error("action {action} was already {status}")]
    AlreadyDecided {
        /// The action id.
        action: String,
        /// Its status.
        status: String,
    },
    /// The plan store's SQLite file could not be opened (busy, read-only, not a database).
    #[error(transparent)]
    Open(#[from] crate::sqlite::SqliteError),
    /// The plan store's SQLite file failed.
    #[error("plan store")]
    Sqlite(#[from] rusqlite::Error),
    /// The plan store's Redis could not be reached after bounded retries (the endpoint is
    /// `HOST:PORT`, never a password).
    #[error("plan store: Redis at {endpoint} is unreachable (while trying to {action})")]
    RedisUnreachable {
        /// `HOST:PORT/DB` of the Redis.
        endpoint: String,
        /// What the store was doing.
        action: String,
        /// The Redis layer's error (the last connection error underneath).
        #[source]
        source: Box<crate::redisdb::RedisDbError>,
    },
    /// The plan store's Redis answered with an error.
    #[error("plan store: Redis at {endpoint} refused to {action}")]
    Redis {
        /// `HOST:PORT/DB` of the Redis.
        endpoint: String,
        /// What the store was doing.
        action: String,
        /// Redis's answer, through the Redis layer.
        #[source]
        source: Box<crate::redisdb::RedisDbError>,
    },
    /// A different plan with this id is already stored.
    #[error("plan {0} already exists")]
    Exists(String),
    /// The plan store could not be used (with the reason).
    #[error("plan store: {0}")]
    Store(String),
    /// Something stored could not be read back (a damaged row).
    #[error("plan store: {what} is damaged")]
    Corrupt {
        /// What was being read.
        what: String,
        /// Why it does not parse.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The agent (its store, memories or an action) failed.
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    /// Bad input (an empty task).
    #[error("{0}")]
    Invalid(String),
}

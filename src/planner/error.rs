/// Why a plan could not be made, stored or continued. Failed *steps* are not errors: they are
/// recorded in the plan and reported.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The language model could not be reached or answered unusably after retries.
    #[error("the language model failed: {0}")]
    Llm(crate::llm::LlmError),
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
    /// The plan store failed.
    #[error("plan store: {0}")]
    Store(String),
    /// The agent (its store, memories or an action) failed.
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    /// Bad input (an empty task).
    #[error("{0}")]
    Invalid(String),
}

impl From<crate::llm::LlmError> for PlanError {
    fn from(e: crate::llm::LlmError) -> Self {
        PlanError::Llm(e)
    }
}

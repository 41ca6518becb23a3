//! [`SourceError`]: why a tool source cannot be used.

/// Why a tool source cannot be used. Every message names the source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The declaration is wrong (memex stops at start).
    #[error("tool source \"{source_name}\": {message}")]
    Config {
        /// The source.
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// A `${VAR}` in `headers` or `env` names an unset variable.
    #[error("tool source \"{source_name}\": `{key}` uses ${{{var}}}, which is not set")]
    UnsetVariable {
        /// The source.
        source_name: String,
        /// Where it is used.
        key: String,
        /// The variable.
        var: String,
    },
    /// The source could not be reached or did not answer usefully.
    #[error("the {kind} \"{source_name}\" is unavailable: {message}")]
    Unreachable {
        /// The source.
        source_name: String,
        /// `MCP server` or `OpenAPI service`.
        kind: &'static str,
        /// What happened.
        message: String,
    },
    /// Two tools share a name, or a fallback is not allowed.
    #[error("{0}")]
    Registry(String),
}

impl SourceError {
    /// Whether the source is down (as opposed to declared wrong): `ask`, `chat` and `plan`
    /// go on without its tools.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, SourceError::Unreachable { .. })
    }

    /// The source the error is about (empty for a registry-wide problem).
    pub fn source_name(&self) -> &str {
        match self {
            SourceError::Config { source_name, .. }
            | SourceError::UnsetVariable { source_name, .. }
            | SourceError::Unreachable { source_name, .. } => source_name,
            SourceError::Registry(_) => "",
        }
    }

    /// The message without the leading source name (for tool errors).
    pub fn detail(&self) -> String {
        match self {
            SourceError::Unreachable { message, .. } | SourceError::Config { message, .. } => {
                message.clone()
            }
            other => other.to_string(),
        }
    }
}

//! The errors of the tool layer: what a tool call can fail with ([`ToolError`]), why a model's
//! arguments were rejected before any call ([`ArgError`]) and why a tool cannot be registered
//! ([`RegistryError`]).
//!
//! [`ToolError`] and [`ArgError`] both render as a structured JSON object for the model
//! (`{"error": "not_found", "message": "..."}`), so a failed call is data the model can react
//! to, never a crash of the agent.

use serde_json::{json, Value};

/// Why a tool call failed. Every message is one sentence meant to be read by the model (and by
/// a human in the audit log); it never contains secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    /// The object asked for does not exist *for this merchant*. Another merchant's object is
    /// reported exactly like a missing one.
    #[error("{0}")]
    NotFound(String),
    /// The arguments passed the schema but make no sense (for example an unusable value that
    /// only the tool can judge).
    #[error("{0}")]
    InvalidArgs(String),
    /// A business rule forbids the call (refund above the refundable amount, a payment that
    /// cannot be refunded, an irreversible call without an approval). Retrying will not help.
    #[error("{0}")]
    Refused(String),
    /// A temporary failure (database busy, a dependency briefly unavailable); the same call
    /// may succeed if retried after a short backoff.
    #[error("{0}")]
    Transient(String),
    /// An unexpected failure inside the tool (corrupt data, an I/O error).
    #[error("{0}")]
    Internal(String),
    /// The service behind the tool failed (down, timed out, answered garbage or a server
    /// error) on a call that is not retried: a write, which may have reached the service, or
    /// a read that already used its retries. Retrying now is the caller's decision.
    #[error("{0}")]
    Unavailable(String),
}

impl ToolError {
    /// The machine-readable kind: `not_found`, `invalid_args`, `refused`, `transient`,
    /// `internal` or `unavailable`.
    pub fn kind(&self) -> &'static str {
        match self {
            ToolError::NotFound(_) => "not_found",
            ToolError::InvalidArgs(_) => "invalid_args",
            ToolError::Refused(_) => "refused",
            ToolError::Transient(_) => "transient",
            ToolError::Internal(_) => "internal",
            ToolError::Unavailable(_) => "unavailable",
        }
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        match self {
            ToolError::NotFound(m)
            | ToolError::InvalidArgs(m)
            | ToolError::Refused(m)
            | ToolError::Transient(m)
            | ToolError::Internal(m)
            | ToolError::Unavailable(m) => m,
        }
    }

    /// Whether the same call may succeed when retried (only [`ToolError::Transient`]).
    pub fn retryable(&self) -> bool {
        matches!(self, ToolError::Transient(_))
    }

    /// The structured error object handed to the model:
    /// `{"error": KIND, "message": MESSAGE, "retryable": BOOL}`.
    pub fn to_json(&self) -> Value {
        json!({
            "error": self.kind(),
            "message": self.message(),
            "retryable": self.retryable(),
        })
    }
}

/// Why the arguments a model produced for a tool call were rejected before the call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    /// The model named a tool that is not registered.
    #[error("unknown tool {name}; available tools: {}", available.join(", "))]
    UnknownTool {
        /// The requested name, quoted, escaped and truncated for safe display.
        name: String,
        /// Names of the registered tools.
        available: Vec<String>,
    },
    /// The arguments string is not valid JSON.
    #[error("the arguments for {tool} are not valid JSON: {message}")]
    InvalidJson {
        /// The tool the arguments were meant for.
        tool: String,
        /// The parser's description of the problem.
        message: String,
    },
    /// The arguments are JSON but do not satisfy the tool's parameter schema.
    #[error("invalid arguments for {tool}: {}", violations.join("; "))]
    Schema {
        /// The tool the arguments were meant for.
        tool: String,
        /// One precise message per violation, e.g. `amount: must be >= 1`.
        violations: Vec<String>,
    },
}

impl ArgError {
    /// The machine-readable kind: `unknown_tool`, `invalid_json` or `invalid_args`.
    pub fn kind(&self) -> &'static str {
        match self {
            ArgError::UnknownTool { .. } => "unknown_tool",
            ArgError::InvalidJson { .. } => "invalid_json",
            ArgError::Schema { .. } => "invalid_args",
        }
    }

    /// The structured error object handed to the model: `{"error": KIND, "message": ...}`
    /// plus `available_tools` for an unknown tool and `violations` for schema violations.
    pub fn to_json(&self) -> Value {
        let mut obj = json!({
            "error": self.kind(),
            "message": self.to_string(),
        });
        match self {
            ArgError::UnknownTool { available, .. } => {
                obj["available_tools"] = json!(available);
            }
            ArgError::Schema { violations, .. } => {
                obj["violations"] = json!(violations);
            }
            ArgError::InvalidJson { .. } => {}
        }
        obj
    }
}

/// Why a tool cannot be added to a [`ToolRegistry`](super::ToolRegistry).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// A tool with the same name is already registered.
    #[error("a tool named {0} is already registered")]
    Duplicate(String),
    /// The name is not 1 to 64 ASCII letters, digits, `_` or `-` (the OpenAI rule).
    #[error("tool name {0} is invalid; use 1 to 64 ASCII letters, digits, '_' or '-'")]
    InvalidName(String),
    /// The parameter schema uses something the validator does not support, or is malformed.
    #[error("the parameter schema of tool {tool} is not supported: {message}")]
    InvalidSchema {
        /// The tool's name.
        tool: String,
        /// What is wrong with the schema.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_error_json_has_kind_message_and_retryable() {
        let e = ToolError::NotFound("no transaction pay_X for this merchant".into());
        assert_eq!(
            e.to_json(),
            json!({"error": "not_found", "message": "no transaction pay_X for this merchant", "retryable": false})
        );
        assert!(ToolError::Transient("busy".into()).retryable());
        for e in [
            ToolError::NotFound(String::new()),
            ToolError::InvalidArgs(String::new()),
            ToolError::Refused(String::new()),
            ToolError::Internal(String::new()),
        ] {
            assert!(!e.retryable(), "{e:?}");
        }
        assert_eq!(ToolError::Refused("x".into()).kind(), "refused");
        assert_eq!(ToolError::Internal("x".into()).kind(), "internal");
        assert_eq!(ToolError::InvalidArgs("x".into()).kind(), "invalid_args");
    }

    #[test]
    fn arg_error_json_lists_details() {
        let e = ArgError::Schema {
            tool: "initiate_refund".into(),
            violations: vec!["amount: must be >= 1".into()],
        };
        let j = e.to_json();
        assert_eq!(j["error"], "invalid_args");
        assert_eq!(j["violations"], json!(["amount: must be >= 1"]));
        assert!(j["message"]
            .as_str()
            .unwrap()
            .contains("amount: must be >= 1"));
        let u = ArgError::UnknownTool {
            name: "\"refund_all\"".into(),
            available: vec!["a".into(), "b".into()],
        };
        assert_eq!(u.to_json()["available_tools"], json!(["a", "b"]));
        assert_eq!(u.kind(), "unknown_tool");
    }
}

//! [`ToolRegistry`]: the set of tools an agent may call, their OpenAI `tools` list, and the
//! validation of a model's raw arguments against each tool's schema before any call.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};

use super::error::{ArgError, RegistryError};
use super::schema::{quote, Schema};
use super::Tool;

/// Largest raw arguments string accepted, in bytes (64 KiB); longer ones are rejected unparsed.
pub const MAX_ARGUMENT_BYTES: usize = 64 * 1024;

#[derive(Clone)]
struct Entry {
    tool: Arc<dyn Tool>,
    schema: Schema,
}

/// Registered tools in registration order, each with its compiled parameter schema. Cloning
/// is cheap (tools are shared).
#[derive(Clone, Default)]
pub struct ToolRegistry {
    entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
}

impl std::fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolRegistry")
            .field("tools", &self.names())
            .finish()
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl ToolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a registry from `tools`, failing on the first tool that cannot be registered.
    pub fn with_tools(
        tools: impl IntoIterator<Item = Arc<dyn Tool>>,
    ) -> Result<Self, RegistryError> {
        let mut registry = Self::new();
        for tool in tools {
            registry.register(tool)?;
        }
        Ok(registry)
    }

    /// Adds `tool`. Fails when its name is taken or invalid, or when its parameter schema is
    /// not a supported object schema (see [`Schema`]).
    pub fn register(&mut self, tool: Arc<dyn Tool>) -> Result<(), RegistryError> {
        let name = tool.name().to_owned();
        if !valid_name(&name) {
            return Err(RegistryError::InvalidName(quote(&name)));
        }
        if self.by_name.contains_key(&name) {
            return Err(RegistryError::Duplicate(name));
        }
        let params = tool.parameters();
        if params.get("type").and_then(Value::as_str) != Some("object") {
            return Err(RegistryError::InvalidSchema {
                tool: name,
                message: "the top level must be {\"type\": \"object\", ...}".into(),
            });
        }
        let schema = Schema::compile(params).map_err(|e| RegistryError::InvalidSchema {
            tool: name.clone(),
            message: e.0,
        })?;
        self.by_name.insert(name, self.entries.len());
        self.entries.push(Entry { tool, schema });
        Ok(())
    }

    /// The tool called `name`, if registered.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Tool>> {
        self.by_name
            .get(name)
            .map(|&i| Arc::clone(&self.entries[i].tool))
    }

    /// Names of the registered tools, in registration order.
    pub fn names(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|e| e.tool.name().to_owned())
            .collect()
    }

    /// The registered tools, in registration order.
    pub fn tools(&self) -> impl Iterator<Item = &Arc<dyn Tool>> {
        self.entries.iter().map(|e| &e.tool)
    }

    /// Number of registered tools.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no tool is registered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The OpenAI chat-completions `tools` array:
    /// `[{"type": "function", "function": {"name", "description", "parameters"}}, ...]`.
    pub fn openai_tools(&self) -> Value {
        Value::Array(
            self.entries
                .iter()
                .map(|e| {
                    json!({
                        "type": "function",
                        "function": {
                            "name": e.tool.name(),
                            "description": e.tool.description(),
                            "parameters": e.tool.parameters(),
                        }
                    })
                })
                .collect(),
        )
    }

    /// Parses and validates the raw `arguments` string a model produced for tool `name`.
    ///
    /// Returns the arguments as JSON (whole floats normalised to integers where the schema
    /// wants an integer) or says precisely what is wrong: an unknown tool, text that is not
    /// JSON, or every schema violation. An empty or all-whitespace string counts as `{}`,
    /// which some models send for tools without parameters.
    pub fn validate(&self, name: &str, raw_arguments: &str) -> Result<Value, ArgError> {
        let entry = self
            .by_name
            .get(name)
            .map(|&i| &self.entries[i])
            .ok_or_else(|| ArgError::UnknownTool {
                name: quote(name),
                available: self.names(),
            })?;
        let tool = entry.tool.name().to_owned();
        if raw_arguments.len() > MAX_ARGUMENT_BYTES {
            return Err(ArgError::Schema {
                tool,
                violations: vec![format!(
                    "the arguments are {} bytes long; the limit is {MAX_ARGUMENT_BYTES}",
                    raw_arguments.len()
                )],
            });
        }
        let value: Value = if raw_arguments.trim().is_empty() {
            Value::Object(Default::default())
        } else {
            serde_json::from_str(raw_arguments).map_err(|e| ArgError::InvalidJson {
                tool: tool.clone(),
                message: e.to_string(),
            })?
        };
        entry
            .schema
            .validate(&value)
            .map_err(|violations| ArgError::Schema { tool, violations })
    }
}

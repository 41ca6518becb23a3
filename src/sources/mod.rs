//! Tools from outside memex: the MCP servers (`mcp.rs`) and OpenAPI services (`openapi.rs`)
//! a team declares under `[tools]` in `memex.toml` (`config.rs`), bound to the session's
//! merchant (`bind.rs`), and assembled with the built-in tools into one [`ToolRegistry`]
//! ([`assemble`]) that every surface uses. Every call still goes through the agent's
//! `CallGate`: these tools only know how to reach their source.

pub mod bind;
pub mod config;
mod error;
mod mcp;
mod openapi;
mod result;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::tools::{RegistryError, Tool, ToolOrigin, ToolRegistry};

pub use config::{McpSourceConfig, OpenApiSourceConfig, ToolsConfig};
pub use error::SourceError;

/// The `[tools]` table of a config file and the folder its relative paths start from.
#[derive(Debug, Clone, Default)]
pub struct Declared {
    /// What `[tools]` declares (empty without a file or table).
    pub config: ToolsConfig,
    /// The config file's folder.
    pub base: std::path::PathBuf,
}

/// How [`assemble`] treats a source that cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reachability {
    /// Fail (`memex tools list`).
    Required,
    /// Go on without its tools, reporting it in [`Assembled::unavailable`] (`ask`, `chat`,
    /// `plan`, `serve`, `mcp`, approvals).
    BestEffort,
}

/// The registry every surface uses and what could not be loaded.
pub struct Assembled {
    /// Built-in and outside tools, in that order.
    pub registry: ToolRegistry,
    /// Sources that were down, with why.
    pub unavailable: Vec<SourceError>,
}

impl std::fmt::Debug for Assembled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assembled")
            .field("registry", &self.registry)
            .field("unavailable", &self.unavailable)
            .finish()
    }
}

/// Builds the registry from the built-in `tools` and the sources of `config` (relative paths
/// against `base`, the config file's folder). A name defined twice is refused with one
/// sentence naming both places; so is a fallback that is not allowed (see
/// [`check_fallbacks`]).
pub async fn assemble(
    builtin: Vec<Arc<dyn Tool>>,
    config: &ToolsConfig,
    base: &Path,
    reach: Reachability,
) -> Result<Assembled, SourceError> {
    let mut names = std::collections::HashSet::new();
    for name in config
        .mcp
        .iter()
        .map(|s| &s.name)
        .chain(config.openapi.iter().map(|s| &s.name))
    {
        if name.trim().is_empty() {
            return Err(SourceError::Registry(
                "a tool source has an empty `name`".to_string(),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(SourceError::Registry(format!(
                "two tool sources are called \"{name}\"; give each its own name"
            )));
        }
    }
    // Open every source at once: a slow one does not hold the others up.
    let mcp = futures::future::join_all(config.mcp.iter().map(|s| mcp::open(s, base)));
    let api = futures::future::join_all(config.openapi.iter().map(|s| openapi::open(s, base)));
    let (mcp, api) = tokio::join!(mcp, api);
    let mut tools = builtin;
    let mut unavailable = Vec::new();
    for result in mcp.into_iter().chain(api) {
        match result {
            Ok(found) => tools.extend(found),
            Err(e) if e.is_unreachable() && reach == Reachability::BestEffort => {
                unavailable.push(e)
            }
            Err(e) => return Err(e),
        }
    }
    let mut seen: HashMap<String, ToolOrigin> = HashMap::new();
    let mut registry = ToolRegistry::new();
    for tool in tools {
        let origin = tool.origin();
        if let Some(first) = seen.get(tool.name()) {
            return Err(SourceError::Registry(format!(
                "the tool name {} is defined twice: by {} and by {}; remove one (MCP: `tools = [...]`, OpenAPI: `operations = [...]`)",
                tool.name(),
                first.describe(),
                origin.describe()
            )));
        }
        seen.insert(tool.name().to_string(), origin.clone());
        registry.register(tool).map_err(|e| match e {
            RegistryError::InvalidSchema { tool, message } => SourceError::Config {
                source_name: origin.source.clone(),
                message: format!("the schema of tool {tool} cannot be used: {message}"),
            },
            other => SourceError::Config {
                source_name: origin.source.clone(),
                message: other.to_string(),
            },
        })?;
    }
    check_fallbacks(&registry, &config.fallbacks, &unavailable)?;
    Ok(Assembled {
        registry,
        unavailable,
    })
}

/// Refuses a fallback table memex could not honour: a tool or fallback that does not exist
/// (unless its source is down now), a fallback for a write or irreversible tool, a fallback
/// that is itself not read-only, and a chain that comes back to where it started.
pub fn check_fallbacks(
    registry: &ToolRegistry,
    fallbacks: &BTreeMap<String, String>,
    unavailable: &[SourceError],
) -> Result<(), SourceError> {
    let refuse = |m: String| Err(SourceError::Registry(format!("[tools.fallbacks]: {m}")));
    let some_down = !unavailable.is_empty();
    for (from, to) in fallbacks {
        for name in [from, to] {
            if registry.get(name).is_none() && !some_down {
                return refuse(format!("{name} is not a tool memex has"));
            }
        }
        if let Some(t) = registry.get(from) {
            if !t.read_only() {
                return refuse(format!(
                    "{from} is {}; only read-only tools may fall back to another",
                    if t.irreversible() {
                        "irreversible"
                    } else {
                        "a write"
                    }
                ));
            }
        }
        if let Some(t) = registry.get(to) {
            if !t.read_only() {
                return refuse(format!(
                    "{to}, the fallback of {from}, is not read-only; memex calls a fallback without asking, so it must only read"
                ));
            }
        }
        let mut at = from;
        let mut steps = 0;
        while let Some(next) = fallbacks.get(at) {
            steps += 1;
            if next == from || steps > fallbacks.len() {
                return refuse(format!("the chain from {from} loops back to {from}"));
            }
            at = next;
        }
    }
    Ok(())
}

/// One line of `memex tools list --json`: name, source, kind, policy, parameters.
pub fn describe(tool: &dyn Tool) -> Value {
    let origin = tool.origin();
    json!({
        "name": tool.name(),
        "source": origin.source,
        "kind": origin.kind,
        "policy": policy(tool),
        "parameters": tool.parameters(),
        "merchant_arg": tool.merchant_arg(),
        "description": tool.description(),
    })
}

/// `read_only`, `write` or `irreversible`.
pub fn policy(tool: &dyn Tool) -> &'static str {
    if tool.irreversible() {
        "irreversible"
    } else if tool.read_only() {
        "read_only"
    } else {
        "write"
    }
}

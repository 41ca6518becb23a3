//! The `[tools]` table of `memex.toml`: the MCP servers and OpenAPI services a team declares,
//! and the fallbacks between tools. Parsed strictly (an unknown key is an error) by serde;
//! `${VAR}` is expanded in `headers` and `env` values only, when a source is opened.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::SourceError;

/// Everything under `[tools]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ToolsConfig {
    /// `[[tools.mcp]]`: MCP servers.
    #[serde(default)]
    pub mcp: Vec<McpSourceConfig>,
    /// `[[tools.openapi]]`: OpenAPI services.
    #[serde(default)]
    pub openapi: Vec<OpenApiSourceConfig>,
    /// `[tools.fallbacks]`: a read-only tool → the tool called with the same arguments when
    /// it still fails after its retries.
    #[serde(default)]
    pub fallbacks: BTreeMap<String, String>,
}

impl ToolsConfig {
    /// Whether the table declares nothing.
    pub fn is_empty(&self) -> bool {
        self.mcp.is_empty() && self.openapi.is_empty() && self.fallbacks.is_empty()
    }
}

/// One `[[tools.mcp]]` entry: a server memex starts (`command`) or connects to (`url`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct McpSourceConfig {
    /// The source's name (in messages, `tools list` and the audit).
    pub name: String,
    /// Program and arguments of a stdio server; run in the config file's folder.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Environment of a stdio server beyond `PATH` and `HOME` (values may use `${VAR}`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// URL of a streamable-HTTP server.
    #[serde(default)]
    pub url: Option<String>,
    /// Headers sent to an HTTP server (values may use `${VAR}`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The tool argument that carries the merchant: memex hides it and fills it.
    #[serde(default)]
    pub merchant_arg: Option<String>,
    /// Tools that are irreversible whatever their annotations say.
    #[serde(default)]
    pub irreversible: Vec<String>,
    /// Tools without `readOnlyHint` that are ordinary writes, not irreversible.
    #[serde(default)]
    pub reversible: Vec<String>,
    /// Only these tools (default: all the server lists).
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    /// Longest one call may take, in milliseconds (default 30000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// One `[[tools.openapi]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OpenApiSourceConfig {
    /// The source's name.
    pub name: String,
    /// The OpenAPI 3.x document: an `http(s)://` URL or a file path (relative to the config
    /// file's folder).
    pub spec: String,
    /// Where the operations are called (default: the document's first `servers` URL).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Only these operations, by `operationId` (default: all).
    #[serde(default)]
    pub operations: Option<Vec<String>>,
    /// The parameter or body field that carries the merchant: memex hides it and fills it.
    #[serde(default)]
    pub merchant_arg: Option<String>,
    /// Operations that are irreversible (held for approval).
    #[serde(default)]
    pub irreversible: Vec<String>,
    /// Headers sent with every call (values may use `${VAR}`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Longest one call may take, in milliseconds (default 30000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Default time limit of one call to an outside tool.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// `value` with each `${NAME}` replaced by the environment variable `NAME`; an unset one is
/// an error naming it and where it was used.
pub fn expand_env(source: &str, key: &str, value: &str) -> Result<String, SourceError> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(SourceError::Config {
                source_name: source.to_string(),
                message: format!("`{key}` has an unclosed ${{ in its value"),
            });
        };
        let var = &after[..end];
        let valid = !var.is_empty() && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(SourceError::Config {
                source_name: source.to_string(),
                message: format!("`{key}` names an invalid variable ${{{var}}}"),
            });
        }
        match std::env::var(var) {
            Ok(v) => out.push_str(&v),
            Err(_) => {
                return Err(SourceError::UnsetVariable {
                    source_name: source.to_string(),
                    key: key.to_string(),
                    var: var.to_string(),
                })
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `path` resolved against `base` (the config file's folder) when it is relative; always
/// absolute (a child process started in another folder must still find it).
pub fn resolve_path(base: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    std::path::absolute(&joined).unwrap_or(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_set_variables_and_names_unset_ones() {
        std::env::set_var("MEMEX_TEST_EXPAND_TOKEN", "s3cret");
        let v = expand_env(
            "orders",
            "headers.Authorization",
            "Bearer ${MEMEX_TEST_EXPAND_TOKEN}",
        )
        .unwrap();
        assert_eq!(v, "Bearer s3cret");
        let err = expand_env("orders", "env.X", "${MEMEX_TEST_SURELY_UNSET_VAR}").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("MEMEX_TEST_SURELY_UNSET_VAR"), "{text}");
        assert!(text.contains("orders"), "{text}");
        assert!(expand_env("o", "k", "${unclosed").is_err());
        assert!(expand_env("o", "k", "${bad-name}").is_err());
        assert_eq!(expand_env("o", "k", "plain").unwrap(), "plain");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let t: Result<ToolsConfig, _> =
            toml::from_str("[[mcp]]\nname = \"x\"\ncommand = [\"a\"]\nmerchant = \"m\"\n");
        let err = t.unwrap_err().to_string();
        assert!(err.contains("unknown field"), "{err}");
        assert!(err.contains("merchant"), "{err}");
    }
}

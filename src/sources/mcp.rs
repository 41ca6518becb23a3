//! Tools from an MCP server: memex as an MCP client (rmcp) over stdio (a child process it
//! starts in the config file's folder, with only `PATH`, `HOME` and the source's `env`) or
//! streamable HTTP (with the source's headers). One connection per source, shared by its
//! tools; a connection that breaks is opened again on the next call.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rmcp::model::CallToolRequestParams;
use rmcp::service::{RoleClient, RunningService, ServiceExt};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use serde_json::{Map, Value};
use tokio::io::AsyncBufReadExt;

use super::bind::{bind_schema, fill_merchant, names_property};
use super::config::{expand_env, resolve_path, McpSourceConfig, DEFAULT_TIMEOUT_MS};
use super::error::SourceError;
use super::result::{clip, result_object, shown_url};
use crate::tools::{Tool, ToolContext, ToolError, ToolOrigin};

/// Longest wait for a server to start and list its tools.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Stderr lines of a stdio server kept for error messages.
const STDERR_LINES: usize = 8;

type Client = RunningService<RoleClient, ()>;

/// How to reach the server, with every `${VAR}` expanded.
#[derive(Debug, Clone)]
enum Endpoint {
    Stdio {
        program: std::path::PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
        dir: std::path::PathBuf,
    },
    Http {
        url: String,
        headers: Vec<(String, String)>,
    },
}

/// One MCP server: where it is and the live connection, if any.
pub struct McpConnection {
    name: String,
    endpoint: Endpoint,
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl McpConnection {
    /// The connection described by `cfg` (not opened yet); `base` is the config file's folder.
    pub fn new(cfg: &McpSourceConfig, base: &Path) -> Result<Self, SourceError> {
        let config_err = |message: String| SourceError::Config {
            source_name: cfg.name.clone(),
            message,
        };
        let endpoint = match (&cfg.command, &cfg.url) {
            (Some(_), Some(_)) => {
                return Err(config_err(
                    "set either `command` (stdio) or `url` (HTTP), not both".into(),
                ))
            }
            (None, None) => {
                return Err(config_err(
                    "set `command` (a stdio server) or `url` (a streamable-HTTP server)".into(),
                ))
            }
            (Some(command), None) => {
                let Some((program, args)) = command.split_first() else {
                    return Err(config_err("`command` is empty".into()));
                };
                if !cfg.headers.is_empty() {
                    return Err(config_err("`headers` apply to `url` servers only".into()));
                }
                // A program named with a path is relative to the config file's folder; a bare
                // name is looked up on PATH.
                let program = if program.contains('/') {
                    resolve_path(base, program)
                } else {
                    std::path::PathBuf::from(program)
                };
                let mut env = Vec::new();
                for name in ["PATH", "HOME"] {
                    if let Ok(v) = std::env::var(name) {
                        env.push((name.to_string(), v));
                    }
                }
                for (k, v) in &cfg.env {
                    env.push((k.clone(), expand_env(&cfg.name, &format!("env.{k}"), v)?));
                }
                Endpoint::Stdio {
                    program,
                    args: args.to_vec(),
                    env,
                    dir: std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf()),
                }
            }
            (None, Some(url)) => {
                if !cfg.env.is_empty() {
                    return Err(config_err("`env` applies to `command` servers only".into()));
                }
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(config_err(format!(
                        "`url` must start with http:// or https://, found {}",
                        crate::tools::quote_for_display(url)
                    )));
                }
                let mut headers = Vec::new();
                for (k, v) in &cfg.headers {
                    let value = expand_env(&cfg.name, &format!("headers.{k}"), v)?;
                    if http::HeaderName::from_bytes(k.as_bytes()).is_err()
                        || http::HeaderValue::from_str(&value).is_err()
                    {
                        return Err(config_err(format!(
                            "header `{k}` is not a valid HTTP header"
                        )));
                    }
                    headers.push((k.clone(), value));
                }
                Endpoint::Http {
                    url: url.clone(),
                    headers,
                }
            }
        };
        Ok(McpConnection {
            name: cfg.name.clone(),
            endpoint,
            client: tokio::sync::Mutex::new(None),
            stderr: Arc::new(Mutex::new(Vec::new())),
        })
    }

    fn unreachable(&self, why: impl std::fmt::Display) -> SourceError {
        let mut message = why.to_string();
        if let Ok(lines) = self.stderr.lock() {
            if let Some(last) = lines.last() {
                message.push_str(&format!(" (its last stderr line: {})", clip(last, 300)));
            }
        }
        SourceError::Unreachable {
            source_name: self.name.clone(),
            kind: "MCP server",
            message,
        }
    }

    async fn open(&self) -> Result<Client, SourceError> {
        match &self.endpoint {
            Endpoint::Stdio {
                program,
                args,
                env,
                dir,
            } => {
                let mut cmd = tokio::process::Command::new(program);
                // Killed with memex, even when the runtime stops before rmcp's own cleanup runs.
                cmd.args(args)
                    .current_dir(dir)
                    .env_clear()
                    .kill_on_drop(true);
                cmd.envs(env.iter().map(|(k, v)| (k, v)));
                let (transport, stderr) = TokioChildProcess::builder(cmd)
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|e| {
                        self.unreachable(format!("cannot start {}: {e}", program.display()))
                    })?;
                if let Some(stderr) = stderr {
                    let keep = Arc::clone(&self.stderr);
                    let name = self.name.clone();
                    tokio::spawn(async move {
                        let mut lines = tokio::io::BufReader::new(stderr).lines();
                        while let Ok(Some(line)) = lines.next_line().await {
                            tracing::debug!(target: "memex::sources", source = %name, "{line}");
                            if let Ok(mut kept) = keep.lock() {
                                if kept.len() == STDERR_LINES {
                                    kept.remove(0);
                                }
                                kept.push(line);
                            }
                        }
                    });
                }
                let started = tokio::time::timeout(CONNECT_TIMEOUT, ().serve(transport)).await;
                match started {
                    Ok(Ok(client)) => Ok(client),
                    Ok(Err(e)) => {
                        // Give the child a moment to write why it stopped.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Err(self.unreachable(format!("it did not start an MCP session: {e}")))
                    }
                    Err(_) => Err(self.unreachable(format!(
                        "it did not answer within {} s",
                        CONNECT_TIMEOUT.as_secs()
                    ))),
                }
            }
            Endpoint::Http { url, headers } => {
                // rmcp's reqwest 0.13 client comes without a TLS provider: memex uses rustls'
                // ring (as its own reqwest 0.12 does). Installing twice is a no-op.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let mut map = HashMap::new();
                for (k, v) in headers {
                    if let (Ok(k), Ok(v)) = (
                        http::HeaderName::from_bytes(k.as_bytes()),
                        http::HeaderValue::from_str(v),
                    ) {
                        map.insert(k, v);
                    }
                }
                let config =
                    StreamableHttpClientTransportConfig::with_uri(url.as_str()).custom_headers(map);
                let transport = StreamableHttpClientTransport::from_config(config);
                match tokio::time::timeout(CONNECT_TIMEOUT, ().serve(transport)).await {
                    Ok(Ok(client)) => Ok(client),
                    Ok(Err(e)) => Err(self.unreachable(format!("{}: {e}", shown_url(url)))),
                    Err(_) => Err(self.unreachable(format!(
                        "{} did not answer within {} s",
                        shown_url(url),
                        CONNECT_TIMEOUT.as_secs()
                    ))),
                }
            }
        }
    }

    /// The live client, opening the connection when there is none.
    async fn client(&self) -> Result<Arc<Client>, SourceError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            // A child that exited or an HTTP session that ended closes the transport without
            // cancelling the service: check both.
            if !c.is_closed() && !c.peer().is_transport_closed() {
                return Ok(Arc::clone(c));
            }
        }
        let client = Arc::new(self.open().await?);
        *slot = Some(Arc::clone(&client));
        Ok(client)
    }

    /// Drops a broken connection so the next call opens a new one.
    async fn reset(&self) {
        *self.client.lock().await = None;
    }

    /// The server's tools.
    async fn list(&self) -> Result<Vec<rmcp::model::Tool>, SourceError> {
        let client = self.client().await?;
        match tokio::time::timeout(CONNECT_TIMEOUT, client.list_all_tools()).await {
            Ok(Ok(tools)) => Ok(tools),
            Ok(Err(e)) => Err(self.unreachable(format!("tools/list failed: {e}"))),
            Err(_) => Err(self.unreachable("tools/list did not answer in time")),
        }
    }
}

/// Connects to the server `cfg` declares and returns its tools (those `cfg.tools` selects),
/// each bound to the merchant and given its policy.
pub async fn open(cfg: &McpSourceConfig, base: &Path) -> Result<Vec<Arc<dyn Tool>>, SourceError> {
    let conn = Arc::new(McpConnection::new(cfg, base)?);
    let listed = conn.list().await?;
    let config_err = |message: String| SourceError::Config {
        source_name: cfg.name.clone(),
        message,
    };
    let names: Vec<&str> = listed.iter().map(|t| t.name.as_ref()).collect();
    for (key, wanted) in [
        ("tools", cfg.tools.clone().unwrap_or_default()),
        ("irreversible", cfg.irreversible.clone()),
        ("reversible", cfg.reversible.clone()),
    ] {
        if let Some(missing) = wanted.iter().find(|w| !names.contains(&w.as_str())) {
            return Err(config_err(format!(
                "`{key}` names {missing}, which the server does not list (it lists: {})",
                names.join(", ")
            )));
        }
    }
    let timeout = Duration::from_millis(cfg.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS).max(1));
    let mut tools: Vec<Arc<dyn Tool>> = Vec::new();
    for t in listed {
        let name = t.name.to_string();
        if let Some(only) = &cfg.tools {
            if !only.contains(&name) {
                continue;
            }
        }
        let annotations = t.annotations.clone().unwrap_or_default();
        let read_only = annotations.read_only_hint == Some(true)
            && !cfg.irreversible.contains(&name)
            && !cfg.reversible.contains(&name);
        // MCP's defaults: a tool that is not read-only is destructive unless it says it is not.
        let irreversible = cfg.irreversible.contains(&name)
            || (!read_only
                && annotations.destructive_hint != Some(false)
                && !cfg.reversible.contains(&name));
        let schema = Value::Object((*t.input_schema).clone());
        let (parameters, merchant_arg) = bind_schema(schema, cfg.merchant_arg.as_deref())
            .map_err(|m| config_err(format!("tool {name}: {m}")))?;
        if let (Some(arg), None) = (cfg.merchant_arg.as_deref(), &merchant_arg) {
            if names_property(&parameters, arg) {
                return Err(config_err(format!(
                    "tool {name} carries {arg} inside another argument; memex binds the merchant only as a top-level argument, so it cannot keep the model from choosing it"
                )));
            }
            tracing::warn!(target: "memex::sources", source = %cfg.name, "tool {name} has no {arg}: it is offered without a merchant binding");
        }
        let description = t
            .description
            .as_deref()
            .map(str::to_string)
            .or_else(|| annotations.title.clone())
            .unwrap_or_else(|| format!("{name} (from the MCP server {})", cfg.name));
        tools.push(Arc::new(McpTool {
            conn: Arc::clone(&conn),
            name,
            description,
            parameters,
            merchant_arg,
            read_only,
            irreversible,
            timeout,
        }));
    }
    Ok(tools)
}

/// One tool of an MCP server.
struct McpTool {
    conn: Arc<McpConnection>,
    name: String,
    description: String,
    parameters: Value,
    merchant_arg: Option<String>,
    read_only: bool,
    irreversible: bool,
    timeout: Duration,
}

impl McpTool {
    /// A failure reaching the server: retried by the gate for reads, final for writes.
    fn down(&self, why: impl std::fmt::Display) -> ToolError {
        let message = format!(
            "the MCP server \"{}\" failed on {}: {why}",
            self.conn.name, self.name
        );
        if self.read_only {
            ToolError::Transient(message)
        } else {
            ToolError::Unavailable(format!("{message}; the call was not retried"))
        }
    }
}

#[async_trait]
impl Tool for McpTool {
    fn name(&self) -> &str {
        &self.name
    }
    fn description(&self) -> &str {
        &self.description
    }
    fn parameters(&self) -> &Value {
        &self.parameters
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn irreversible(&self) -> bool {
        self.irreversible
    }
    fn origin(&self) -> ToolOrigin {
        ToolOrigin {
            kind: "mcp",
            source: self.conn.name.clone(),
        }
    }
    fn merchant_arg(&self) -> Option<&str> {
        self.merchant_arg.as_deref()
    }

    async fn call(&self, args: Value, ctx: &ToolContext) -> Result<Value, ToolError> {
        if self.irreversible && ctx.idempotency_key.is_none() {
            return Err(ToolError::Refused(format!(
                "{} is irreversible and runs only as an approved action",
                self.name
            )));
        }
        let mut args = match args {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            _ => {
                return Err(ToolError::InvalidArgs(
                    "the arguments must be an object".into(),
                ))
            }
        };
        fill_merchant(&mut args, self.merchant_arg.as_deref(), &ctx.merchant);
        let client = match self.conn.client().await {
            Ok(c) => c,
            Err(e) => {
                // The detail (the server's own stderr) stays in memex's log, away from the model.
                tracing::warn!(target: "memex::sources", "{e}");
                return Err(self.down("the server could not be started or reached"));
            }
        };
        let mut params = CallToolRequestParams::new(self.name.clone());
        params.arguments = Some(args);
        let outcome = tokio::time::timeout(self.timeout, client.call_tool(params)).await;
        let result = match outcome {
            Err(_) => {
                return Err(self.down(format!(
                    "no answer within {:.1} s",
                    self.timeout.as_secs_f64()
                )))
            }
            Ok(Err(e)) => {
                if matches!(
                    e,
                    rmcp::ServiceError::TransportClosed | rmcp::ServiceError::TransportSend(_)
                ) || client.is_closed()
                {
                    self.conn.reset().await;
                }
                return Err(self.down(e));
            }
            Ok(Ok(r)) => r,
        };
        let text: String = result
            .content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
            .collect::<Vec<_>>()
            .join("\n");
        if result.is_error == Some(true) {
            let why = if text.trim().is_empty() {
                "it reported an error".to_string()
            } else {
                clip(text.trim(), 2000)
            };
            return Err(ToolError::Refused(format!("{}: {why}", self.name)));
        }
        let value = match result.structured_content {
            Some(v) => v,
            None => match serde_json::from_str::<Value>(text.trim()) {
                Ok(v) => v,
                Err(_) => Value::String(text),
            },
        };
        result_object(value).map_err(|why| self.down(why))
    }
}

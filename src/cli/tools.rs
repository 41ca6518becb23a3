//! `memex tools list [--json]`: every tool the agent would get — built in (`--domain`) and
//! from the MCP servers and OpenAPI services under `[tools]` in memex.toml — with its source,
//! policy and the parameter schema the model sees. Every source must be reachable: a source
//! that is down is an error naming it.

use std::process::ExitCode;

use clap::Subcommand;
use memex::sources::Reachability;

use super::GlobalArgs;

/// `memex tools …`.
#[derive(Subcommand, Debug)]
pub enum ToolsCommand {
    /// Print every tool the agent would get: name, source, kind (builtin, mcp, openapi),
    /// policy (read_only, write, irreversible) and parameters. Fails, naming the source, when
    /// a declared source cannot be reached or is declared wrong.
    List,
}

/// Runs `memex tools …`.
pub fn run(g: &GlobalArgs, c: ToolsCommand) -> anyhow::Result<ExitCode> {
    match c {
        ToolsCommand::List => list(g),
    }
}

fn list(g: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let rt = super::compose::runtime()?;
    let assembled = rt.block_on(async {
        // Describing the tools needs no model or index: nothing is searched.
        super::compose::tools(g, None, Reachability::Required).await
    })?;
    let fallbacks = super::compose::fallbacks(g);
    let rows: Vec<serde_json::Value> = assembled
        .registry
        .tools()
        .map(|t| {
            let mut row = memex::sources::describe(t.as_ref());
            if let Some(fb) = fallbacks.get(t.name()) {
                row["fallback"] = serde_json::Value::String(fb.clone());
            }
            row
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if g.json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        std::io::Write::write_all(&mut out, b"\n")?;
    } else {
        for row in &rows {
            let params: Vec<String> = row["parameters"]["properties"]
                .as_object()
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default();
            let fallback = row
                .get("fallback")
                .and_then(|v| v.as_str())
                .map(|f| format!("  fallback: {f}"))
                .unwrap_or_default();
            std::io::Write::write_all(
                &mut out,
                format!(
                    "{:<28} {:<13} {:<8} {:<14} ({}){fallback}\n",
                    row["name"].as_str().unwrap_or(""),
                    row["policy"].as_str().unwrap_or(""),
                    row["kind"].as_str().unwrap_or(""),
                    row["source"].as_str().unwrap_or(""),
                    params.join(", "),
                )
                .as_bytes(),
            )?;
        }
    }
    std::io::Write::flush(&mut out)?;
    Ok(ExitCode::SUCCESS)
}

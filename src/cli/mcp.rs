//! `memex mcp --merchant MID [--http ADDR]`: memex's memory and the domain's tools as an MCP
//! server for one merchant, over stdio (stdout carries only JSON-RPC; logs go to stderr) or
//! over streamable HTTP on a loopback address.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use memex::mcp::McpDeps;

use super::GlobalArgs;

/// Arguments of `memex mcp`.
#[derive(Args, Debug)]
#[command(
    after_help = "Tools: search_knowledge_base, recall_episodes, save_episode and the payments \
tools, all scoped to --merchant. An irreversible tool (initiate_refund) never runs from MCP: it \
returns a pending action id for `memex approve ACTION_ID`."
)]
pub struct McpArgs {
    /// The merchant every tool acts for.
    #[arg(long)]
    pub merchant: String,
    /// Serve MCP over streamable HTTP at http://ADDR/mcp instead of stdio (loopback addresses
    /// only; port 0 picks a free port; `listening on ADDR` is printed to stderr).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
}

/// Builds the shared MCP dependencies from the composition root (src/cli/compose.rs): the same
/// embedder, knowledge base, episodic store, tools, agent store and guards (`--tool-rate`,
/// cache, timeouts, retries, audit, fallbacks) as `memex ask`.
async fn deps(g: &GlobalArgs) -> anyhow::Result<McpDeps> {
    let root = super::compose::Memex::open(g, super::compose::Given::default()).await?;
    root.mcp_deps(None)
}

/// `memex mcp`.
pub fn run(g: &GlobalArgs, a: McpArgs) -> anyhow::Result<ExitCode> {
    let merchant = super::compose::merchant(&a.merchant)?;
    if let Some(addr) = a.http {
        if !addr.ip().is_loopback() {
            anyhow::bail!(
                "--http {addr} is not a loopback address; memex mcp serves 127.0.0.1 or [::1] only"
            );
        }
    }
    let rt = super::compose::runtime()?;
    rt.block_on(async {
        let deps = Arc::new(deps(g).await?);
        match a.http {
            None => memex::mcp::serve_stdio(deps, merchant).await?,
            Some(addr) => {
                memex::mcp::http::serve_loopback(
                    deps,
                    merchant,
                    addr,
                    |bound| eprintln!("listening on {bound}"),
                    memex::serve::shutdown_signal(),
                )
                .await?
            }
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

//! The parser ([`Cli`], [`Command`]) and the dispatch of each subcommand to its file.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

#[cfg(feature = "bench")]
use super::kb_bench;
use super::{
    agent, config, embed, episodes, errors, eval, forget, kb, kb_read, keys, mcp, model, pipe,
    plan, serve, tools, GlobalArgs,
};

/// memex: local-first memory and retrieval for AI agents.
#[derive(Parser, Debug)]
#[command(name = "memex", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Fetch or verify the embedding model files.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Embed texts and print JSON lines {"text", "embedding", "n_tokens"}.
    Embed(embed::EmbedArgs),
    /// Ingest files or folders into the knowledge base.
    Ingest(kb::IngestArgs),
    /// Search the knowledge base.
    Search(kb::SearchArgs),
    /// Rebuild the vector index from the knowledge base's SQLite store.
    Reindex(kb::ReindexArgs),
    /// Benchmarks (built with `--features bench`).
    #[cfg(feature = "bench")]
    #[command(subcommand)]
    Bench(kb_bench::BenchCommand),
    /// Create the data directory; with --demo, load the payments demo.
    Init(agent::InitArgs),
    /// One user turn of the support agent.
    Ask(agent::AskArgs),
    /// Approve a pending irreversible action; its session or plan then continues.
    Approve(agent::DecideArgs),
    /// Reject a pending irreversible action; its session or plan then continues.
    Reject(agent::DecideArgs),
    /// An interactive support session on the terminal.
    Chat(agent::ChatArgs),
    /// Print a session's audit log of tool calls.
    Audit(agent::AuditArgs),
    /// Agent metrics over all sessions.
    Stats,
    /// Plan a task into tool-call steps, validate and execute them; `plan show|resume|list`.
    Plan(plan::PlanArgs),
    /// Session management.
    #[command(subcommand)]
    Session(agent::SessionCommand),
    /// Per-merchant episodic memory.
    #[command(subcommand)]
    Episodes(episodes::EpisodesCommand),
    /// Print a shell completion script, e.g. `memex completions bash > ~/.local/share/bash-completion/completions/memex`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Forget what memex remembers about a merchant (episodes; optionally only before a date).
    Forget(forget::ForgetArgs),
    /// Apply retention: remove episodes older than the retention period.
    Prune(forget::PruneArgs),
    /// API keys of `memex serve`: create (printed once), list, revoke.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Serve memory, search, embeddings and the agent over authenticated HTTP.
    Serve(serve::ServeArgs),
    /// Retrieval benchmarks (LoCoMo).
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Serve memory and the domain's tools to an MCP client for one merchant (stdio, or --http ADDR).
    Mcp(mcp::McpArgs),
    /// The tools the agent gets (built in, and from the MCP servers and OpenAPI services under
    /// [tools] in memex.toml): `tools list [--json]`.
    #[command(subcommand)]
    Tools(tools::ToolsCommand),
    /// The config file: `config show` prints every effective setting and its source.
    #[command(subcommand)]
    Config(config::ConfigCommand),
}

/// Entry point used by `main`.
pub fn main() -> ExitCode {
    // The config file's values become the flags' defaults: flag > env > file > default.
    let (mut cli, effective) = match config::parse::<Cli>() {
        Ok(parsed) => parsed,
        Err(code) => return code,
    };
    cli.global.tool_sources = effective.file.tools.clone();
    init_logging();
    let json = cli.global.json;
    let outcome = run(cli, &effective);
    kb_read::release();
    match outcome {
        Ok(code) => code,
        Err(err) if pipe::is_broken_pipe_error(&err) => pipe::exit_code(),
        Err(err) => errors::report(&err, json),
    }
}

fn run(cli: Cli, effective: &config::Effective) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    match &cli.command {
        Command::Ask(_) | Command::Chat(_) => errors::require_llm(g)?,
        Command::Plan(a) if a.command.is_none() => errors::require_llm(g)?,
        _ => {}
    }
    match cli.command {
        Command::Model(c) => model::run(g, c),
        Command::Embed(a) => embed::run(g, a),
        Command::Ingest(a) => kb::ingest(g, a),
        Command::Search(a) => kb::search(g, a),
        Command::Reindex(a) => kb::reindex(g, a),
        #[cfg(feature = "bench")]
        Command::Bench(c) => kb_bench::run(g, c),
        Command::Episodes(c) => episodes::run(g, c),
        Command::Eval(c) => eval::run(g, c),
        Command::Keys(c) => keys::run(g, c),
        Command::Serve(a) => serve::run(g, a),
        Command::Forget(a) => forget::forget(g, a),
        Command::Prune(a) => forget::prune(g, a),
        Command::Config(c) => config::run(g, c, effective),
        Command::Init(a) => agent::init(g, a),
        Command::Ask(a) => agent::ask(g, a),
        Command::Approve(a) => agent::decide(g, a, true),
        Command::Reject(a) => agent::decide(g, a, false),
        Command::Chat(a) => agent::chat(g, a),
        Command::Audit(a) => agent::audit(g, a),
        Command::Stats => agent::stats(g),
        Command::Plan(a) => plan::plan(g, a),
        Command::Session(c) => agent::session(g, c),
        Command::Mcp(a) => mcp::run(g, a),
        Command::Tools(c) => tools::run(g, c),
        Command::Completions { shell } => {
            // clap_complete panics on a failed write ("failed to write completion file"), which
            // is not the panic `pipe` silences: render into memory, then write with `?` so a
            // closed stdout (`memex completions bash | head -1`) is the quiet broken-pipe exit.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "memex", &mut script);
            let mut out = std::io::stdout().lock();
            std::io::Write::write_all(&mut out, &script)?;
            std::io::Write::flush(&mut out)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Whether stderr may carry ANSI colours: never when `NO_COLOR` is set (non-empty), always
/// when `CLICOLOR_FORCE` is, else only on a terminal.
pub fn stderr_colors() -> bool {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    if set("NO_COLOR") {
        return false;
    }
    set("CLICOLOR_FORCE") || std::io::IsTerminal::is_terminal(&std::io::stderr())
}

/// Structured logs on stderr; `MEMEX_LOG` (or `RUST_LOG`) sets the filter, default `warn` (and
/// `info` for `memex serve`'s access lines).
fn init_logging() {
    let filter = std::env::var("MEMEX_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "warn,memex::serve=info".to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(stderr_colors())
        .try_init();
}

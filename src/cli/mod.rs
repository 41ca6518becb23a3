//! Argument parsing and dispatch. Each subcommand group lives in its own file and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod agent;
mod embed;
mod episodes;
mod kb;
mod kb_bench;
mod model;
mod plan;

/// memex: local-first memory and retrieval for AI agents.
#[derive(Parser, Debug)]
#[command(name = "memex", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted before or after any subcommand, each with an environment variable.
#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Directory holding config.json, tokenizer.json and model.safetensors.
    #[arg(long, global = true, env = "MEMEX_MODEL_DIR", value_name = "DIR")]
    pub model_dir: Option<PathBuf>,
    /// Directory for memex's databases and indexes (default ./.memex).
    #[arg(long, global = true, env = "MEMEX_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Compute device for the embedder: cpu, cuda, metal or auto.
    #[arg(long, global = true, env = "MEMEX_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Number of CPU threads for the embedder (default: all cores).
    #[arg(long, global = true, env = "MEMEX_THREADS")]
    pub threads: Option<usize>,
    /// Print machine-readable JSON.
    #[arg(long, global = true, env = "MEMEX_JSON")]
    pub json: bool,
    /// Episodic store: sqlite://PATH or redis://HOST:PORT/DB (default: SQLite in the data dir).
    #[arg(long, global = true, env = "MEMEX_EPISODIC_URL", value_name = "URL")]
    pub episodic: Option<String>,
    /// OpenAI-compatible API base URL (env MEMEX_LLM_BASE_URL; default Groq's).
    #[arg(long, global = true, value_name = "URL")]
    pub llm_base_url: Option<String>,
    /// Model name (env MEMEX_LLM_MODEL; default llama-3.3-70b-versatile).
    #[arg(long, global = true)]
    pub llm_model: Option<String>,
    /// API key (env MEMEX_LLM_API_KEY, then GROQ_API_KEY, then OPENAI_API_KEY).
    #[arg(long, global = true, hide_env_values = true)]
    pub llm_api_key: Option<String>,
}

impl GlobalArgs {
    /// The data directory in force.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(memex::paths::default_data_dir)
    }

    /// The model directory in force.
    pub fn model_dir(&self) -> PathBuf {
        self.model_dir
            .clone()
            .unwrap_or_else(memex::paths::default_model_dir)
    }

    /// Embedder options from the global flags.
    pub fn embedder_options(&self) -> anyhow::Result<memex::embed::EmbedderOptions> {
        Ok(memex::embed::EmbedderOptions {
            device: self.device.parse()?,
            threads: self.threads,
            ..memex::embed::EmbedderOptions::default()
        })
    }

    /// Loads the embedder the global flags describe.
    pub fn load_embedder(&self) -> anyhow::Result<memex::embed::MiniLmEmbedder> {
        Ok(memex::embed::MiniLmEmbedder::load(
            &self.model_dir(),
            self.embedder_options()?,
        )?)
    }
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
    /// Benchmarks.
    #[command(subcommand)]
    Bench(kb::BenchCommand),
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
}

/// Entry point used by `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Model(c) => model::run(g, c),
        Command::Embed(a) => embed::run(g, a),
        Command::Ingest(a) => kb::ingest(g, a),
        Command::Search(a) => kb::search(g, a),
        Command::Reindex(a) => kb::reindex(g, a),
        Command::Bench(c) => kb::bench(g, c),
        Command::Episodes(c) => episodes::run(g, c),
        Command::Init(a) => agent::init(g, a),
        Command::Ask(a) => agent::ask(g, a),
        Command::Approve(a) => agent::decide(g, a, true),
        Command::Reject(a) => agent::decide(g, a, false),
        Command::Chat(a) => agent::chat(g, a),
        Command::Audit(a) => agent::audit(g, a),
        Command::Stats => agent::stats(g),
        Command::Plan(a) => plan::plan(g, a),
        Command::Session(c) => agent::session(g, c),
    }
}

/// Structured logs on stderr; `MEMEX_LOG` (or `RUST_LOG`) sets the filter, default `warn`.
fn init_logging() {
    let filter = std::env::var("MEMEX_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "warn".to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

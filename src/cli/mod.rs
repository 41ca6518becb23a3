//! The command line: the global flags ([`GlobalArgs`]) every subcommand file reads, and the
//! subcommand files themselves; `app.rs` holds the parser and the dispatch. Each subcommand
//! group lives in its own file and calls the library.

use std::path::PathBuf;

use clap::builder::{BoolishValueParser, PossibleValuesParser};
use clap::Args;

mod agent;
mod app;
mod compose;
mod config;
mod counts;
mod embed;
mod episodes;
mod errors;
mod eval;
mod eval_cases;
mod forget;
mod kb;
#[cfg(feature = "bench")]
mod kb_bench;
mod kb_read;
mod keys;
mod mcp;
mod model;
pub mod pipe;
mod plan;
mod serve;
mod tools;
mod tuning;

pub use app::main;

/// Flags accepted before or after any subcommand, each with an environment variable.
#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Config file (TOML; default memex.toml in the data dir): flag > env > file > default.
    #[arg(long, global = true, env = "MEMEX_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Directory holding config.json, tokenizer.json and model.safetensors.
    #[arg(long, global = true, env = "MEMEX_MODEL_DIR", value_name = "DIR")]
    pub model_dir: Option<PathBuf>,
    /// Directory for memex's databases and indexes (default ./.memex).
    #[arg(long, global = true, env = "MEMEX_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Compute device for the embedder.
    #[arg(
        long,
        global = true,
        env = "MEMEX_DEVICE",
        default_value = "cpu",
        value_parser = PossibleValuesParser::new(["cpu", "cuda", "metal", "auto"])
    )]
    pub device: String,
    /// Weight precision of the CPU embedder: f16 (default), f32 (the exact path) or int8.
    #[arg(
        long,
        global = true,
        env = "MEMEX_PRECISION",
        default_value = "f16",
        value_parser = PossibleValuesParser::new(["f16", "f32", "int8"])
    )]
    pub precision: String,
    /// CPU kernels of the embedder: auto (the fastest tier the CPU has: AVX-512 with VNNI, else
    /// AVX2+FMA+F16C), avx2 (never AVX-512), or scalar.
    #[arg(
        long,
        global = true,
        env = "MEMEX_KERNEL",
        default_value = "auto",
        value_parser = PossibleValuesParser::new(["auto", "avx2", "scalar"])
    )]
    pub kernel: String,
    /// Number of CPU threads for the embedder (default: all cores; at most 2 per core).
    #[arg(long, global = true, env = "MEMEX_THREADS", value_parser = counts::threads)]
    pub threads: Option<usize>,
    /// Print machine-readable JSON (errors too: {"error": {"code", "message"}} on stderr).
    #[arg(long, global = true, env = "MEMEX_JSON", value_parser = BoolishValueParser::new())]
    pub json: bool,
    /// Episodic store: sqlite://PATH or redis://HOST:PORT/DB (default: SQLite in the data dir).
    #[arg(long, global = true, env = "MEMEX_EPISODIC_URL", value_name = "URL")]
    pub episodic: Option<String>,
    /// Memory budget of the in-process episode search cache, in MiB (1 to 65536; default 256).
    #[arg(
        long,
        global = true,
        env = "MEMEX_EPISODIC_CACHE_MB",
        value_name = "MIB",
        default_value_t = 256,
        value_parser = counts::bounded(1, 65_536)
    )]
    pub episodic_cache_mb: usize,
    /// Agent state (sessions, actions, audit, plans, keys): sqlite://PATH or
    /// redis://HOST:PORT/DB, shared by every worker that names it (default: agent.db in the
    /// data dir).
    #[arg(long, global = true, env = "MEMEX_STATE_URL", value_name = "URL")]
    pub state: Option<String>,
    /// Where published generations of the knowledge base live, shared by every worker:
    /// file:///absolute/folder (standing in for object storage). Ingests publish there and
    /// `memex serve` follows it. Default: the data dir's own knowledge base.
    #[arg(long, global = true, env = "MEMEX_KB_URL", value_name = "URL")]
    pub kb_url: Option<String>,
    /// The payments demo's database (stands for the payment gateway's own API; workers on one
    /// host may share one file). Default: payments.db in the data dir.
    #[arg(long, global = true, env = "MEMEX_PAYMENTS_DB", value_name = "PATH")]
    pub payments_db: Option<PathBuf>,
    /// The built-in business domain: payments (the demo's tools, rules and escalation) or
    /// none (only the memory tools and the sources declared under [tools] in memex.toml).
    #[arg(
        long,
        global = true,
        env = "MEMEX_DOMAIN",
        default_value = "payments",
        value_parser = PossibleValuesParser::new(["payments", "none"])
    )]
    pub domain: String,
    /// OpenAI-compatible API base URL (default Groq's), e.g. http://127.0.0.1:11434/v1 for
    /// a local Ollama.
    #[arg(long, global = true, env = "MEMEX_LLM_BASE_URL", value_name = "URL")]
    pub llm_base_url: Option<String>,
    /// Model name (default llama-3.3-70b-versatile).
    #[arg(long, global = true, env = "MEMEX_LLM_MODEL")]
    pub llm_model: Option<String>,
    /// A second, stronger model that writes only each turn's final answer (streamed), while
    /// --llm-model chooses the tools; unset: --llm-model does both.
    #[arg(
        long,
        global = true,
        env = "MEMEX_LLM_ANSWER_MODEL",
        value_name = "MODEL"
    )]
    pub llm_answer_model: Option<String>,
    /// Base URL of the answer model's API (default: the same as --llm-base-url; same API key).
    #[arg(
        long,
        global = true,
        env = "MEMEX_LLM_ANSWER_BASE_URL",
        value_name = "URL"
    )]
    pub llm_answer_base_url: Option<String>,
    /// API key (else GROQ_API_KEY, else OPENAI_API_KEY).
    #[arg(long, global = true, env = "MEMEX_LLM_API_KEY", hide_env_values = true)]
    pub llm_api_key: Option<String>,
    /// Most tokens the model may write in one answer (sent as max_tokens; 0: no cap). An
    /// answer cut off there is used as it stands.
    #[arg(
        long,
        global = true,
        env = "MEMEX_LLM_MAX_TOKENS",
        value_name = "TOKENS",
        default_value_t = memex::llm::DEFAULT_MAX_TOKENS as usize,
        value_parser = counts::bounded(0, memex::llm::MAX_MAX_TOKENS as usize)
    )]
    pub llm_max_tokens: usize,
    /// Requests per second this process sends the model at most (bursts of three seconds'
    /// worth; 0: no limit). Each worker has its own.
    #[arg(
        long,
        global = true,
        env = "MEMEX_LLM_RATE",
        value_name = "PER_SEC",
        default_value_t = 10,
        value_parser = counts::bounded(0, 1_000_000)
    )]
    pub llm_rate: usize,
    /// Agent limits, rate limits, cache, conversation budget, chunking, HNSW, prompt k.
    #[command(flatten)]
    pub tuning: tuning::TuningArgs,
    /// The config file's `[tools]` table (set after parsing, not a flag).
    #[arg(skip)]
    pub tool_sources: memex::sources::Declared,
}

impl GlobalArgs {
    /// `--llm-rate` as the agent's LLM token bucket: (capacity, refill per second).
    pub fn llm_bucket(&self) -> (f64, f64) {
        match self.llm_rate {
            0 => (1e12, 1e12),
            n => {
                let rate = n as f64;
                ((3.0 * rate).max(1.0), rate)
            }
        }
    }

    /// `--llm-max-tokens` as the client's cap (`None`: no cap).
    pub fn llm_max_tokens(&self) -> Option<u32> {
        u32::try_from(self.llm_max_tokens).ok().filter(|&n| n > 0)
    }

    /// `--episodic-cache-mb` in bytes.
    pub fn episodic_cache_bytes(&self) -> u64 {
        u64::try_from(self.episodic_cache_mb)
            .unwrap_or(256)
            .saturating_mul(1024 * 1024)
    }

    /// The data directory in force.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(memex::paths::default_data_dir)
    }

    /// The `--episodic` URL when it names a Redis database (the conversations then live there
    /// too), parsed by the one URL parser.
    pub fn episodic_redis(&self) -> Option<&str> {
        let url = self.episodic.as_deref()?;
        matches!(
            memex::episodic::parse_url(url),
            Ok(memex::episodic::StoreUrl::Redis(_))
        )
        .then_some(url)
    }

    /// The state backend in force (`--state`, else `agent.db` in the data directory).
    pub fn state_url(&self) -> anyhow::Result<memex::state::StateUrl> {
        Ok(memex::state::StateUrl::parse(
            self.state.as_deref(),
            &self.data_dir(),
        )?)
    }

    /// The shared knowledge-base folder named by `--kb-url`, if any.
    pub fn shared_kb(&self) -> anyhow::Result<Option<memex::kb::publish::SharedKb>> {
        match self
            .kb_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            None => Ok(None),
            Some(url) => Ok(Some(memex::kb::publish::SharedKb::new(
                memex::kb::publish::KbUrl::parse(url)?,
            ))),
        }
    }

    /// The payments demo database in force (`--payments-db`, else `payments.db` in the data
    /// directory).
    pub fn payments_db(&self) -> PathBuf {
        self.payments_db.clone().unwrap_or_else(|| {
            self.data_dir()
                .join(memex::domain::payments::PaymentsDb::FILE_NAME)
        })
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
            precision: self.precision.parse()?,
            kernel: self.kernel.parse()?,
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

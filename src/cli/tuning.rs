//! The tuning flags: agent limits, rate limits, the tool cache, the conversation budget,
//! chunking, HNSW parameters and how much memory goes into a prompt. Each is a global flag with
//! an environment variable, so `memex.toml` reaches it too (`src/cli/config.rs` is generic over
//! flags). Defaults are the library's own defaults; a unit test keeps them equal.

use std::time::Duration;

use clap::Args;
use memex::agent::AgentConfig;
use memex::index::{HnswParams, IndexKind};
use memex::kb::{ChunkOptions, KbOptions};
use memex::planner::PlannerConfig;

use super::counts::bounded;

const HEADING: &str = "Tuning (also settable in memex.toml)";

/// Settings that shape the agent, the knowledge base and the prompt.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = HEADING)]
pub struct TuningArgs {
    /// Hard cap on tool calls in one user turn; the next one escalates (0 to 64).
    #[arg(long, global = true, env = "MEMEX_MAX_TOOL_CALLS", value_name = "N",
          default_value_t = 8, value_parser = bounded(0, 64))]
    pub max_tool_calls: usize,
    /// Most model calls in one user turn (1 to 256).
    #[arg(long, global = true, env = "MEMEX_MAX_LLM_ROUNDS", value_name = "N",
          default_value_t = 12, value_parser = bounded(1, 256))]
    pub max_llm_rounds: usize,
    /// Knowledge-base chunks the agent puts in each prompt (0 to 50).
    #[arg(long, global = true, env = "MEMEX_KB_K", value_name = "K",
          default_value_t = 4, value_parser = bounded(0, 50))]
    pub kb_k: usize,
    /// The merchant's most recent episodes the agent puts in each prompt (0 to 50).
    #[arg(long, global = true, env = "MEMEX_RECENT_EPISODES", value_name = "K",
          default_value_t = 3, value_parser = bounded(0, 50))]
    pub recent_episodes: usize,
    /// The merchant's episodes most similar to the message put in each prompt (0 to 50).
    #[arg(long, global = true, env = "MEMEX_SIMILAR_EPISODES", value_name = "K",
          default_value_t = 3, value_parser = bounded(0, 50))]
    pub similar_episodes: usize,
    /// Seconds a read-only tool result stays cached within a session (1 to 86400).
    #[arg(long, global = true, env = "MEMEX_CACHE_TTL", value_name = "SECS",
          default_value_t = 300, value_parser = bounded(1, 86_400))]
    pub cache_ttl: usize,
    /// Share read-only tool results across sessions, per merchant (never between merchants):
    /// in this process, or on the Redis of `--state redis://…` so every worker shares them.
    /// Any write or executed refund of the merchant clears its cached reads.
    #[arg(long, global = true, env = "MEMEX_SHARED_TOOL_CACHE", value_name = "BOOL",
          num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new(), default_value = "false")]
    pub shared_tool_cache: bool,
    /// Seconds each tool's results live in the shared cache, as TOOL=SECS pairs separated by
    /// commas (e.g. `get_transaction=60,get_merchant_account=30`); other tools: --cache-ttl.
    #[arg(long, global = true, env = "MEMEX_TOOL_CACHE_TTL", value_name = "TOOL=SECS,...",
          value_parser = tool_ttls)]
    pub tool_cache_ttl: Option<ToolTtls>,
    /// Calls per second each tool may take in one process (1 to 100000).
    #[arg(long, global = true, env = "MEMEX_TOOL_RATE", value_name = "PER_SEC",
          default_value_t = 5, value_parser = bounded(1, 100_000))]
    pub tool_rate: usize,
    /// Burst of calls a tool may take at once before --tool-rate paces it (1 to 100000).
    #[arg(long, global = true, env = "MEMEX_TOOL_BURST", value_name = "N",
          default_value_t = 10, value_parser = bounded(1, 100_000))]
    pub tool_burst: usize,
    /// Attempts of one tool call in a chat turn; transient failures are retried (1 to 10).
    #[arg(long, global = true, env = "MEMEX_TOOL_ATTEMPTS", value_name = "N",
          default_value_t = 2, value_parser = bounded(1, 10))]
    pub tool_attempts: usize,
    /// Seconds one attempt of a tool call may take (1 to 3600).
    #[arg(long, global = true, env = "MEMEX_TOOL_TIMEOUT", value_name = "SECS",
          default_value_t = 60, value_parser = bounded(1, 3_600))]
    pub tool_timeout: usize,
    /// Token budget of a conversation's prompt history; over it the oldest turns are
    /// summarised (256 to 1000000).
    #[arg(long, global = true, env = "MEMEX_CONVERSATION_BUDGET", value_name = "TOKENS",
          default_value_t = memex::conversation::DEFAULT_TOKEN_BUDGET,
          value_parser = bounded(256, 1_000_000))]
    pub conversation_budget: usize,
    /// Most recent turns a conversation always keeps verbatim (1 to 100).
    #[arg(long, global = true, env = "MEMEX_KEEP_RECENT_TURNS", value_name = "N",
          default_value_t = 2, value_parser = bounded(1, 100))]
    pub keep_recent_turns: usize,
    /// Largest knowledge-base chunk in model tokens, [CLS] and [SEP] included (32 to 256).
    /// A change re-chunks each document at its next ingest.
    #[arg(long, global = true, env = "MEMEX_CHUNK_TOKENS", value_name = "TOKENS",
          default_value_t = 256, value_parser = bounded(32, 256))]
    pub chunk_tokens: usize,
    /// Tokens of a split section repeated at the start of the next chunk (0 to 128; less than
    /// half of --chunk-tokens).
    #[arg(long, global = true, env = "MEMEX_CHUNK_OVERLAP", value_name = "TOKENS",
          default_value_t = 32, value_parser = bounded(0, 128))]
    pub chunk_overlap: usize,
    /// HNSW neighbours per node (2 to 128). Takes effect when the index is next built.
    #[arg(long, global = true, env = "MEMEX_HNSW_M", value_name = "M",
          default_value_t = 16, value_parser = bounded(2, 128))]
    pub hnsw_m: usize,
    /// HNSW candidate list while building (8 to 4096). Takes effect when the index is next
    /// built.
    #[arg(long, global = true, env = "MEMEX_HNSW_EF_CONSTRUCTION", value_name = "EF",
          default_value_t = 200, value_parser = bounded(8, 4_096))]
    pub hnsw_ef_construction: usize,
    /// HNSW candidate list while searching (1 to 4096; raised to k when smaller).
    #[arg(long, global = true, env = "MEMEX_HNSW_EF_SEARCH", value_name = "EF",
          default_value_t = 64, value_parser = bounded(1, 4_096))]
    pub hnsw_ef_search: usize,
    /// Most steps a plan may have, in `memex plan`, `approve`/`reject` and `memex serve`'s
    /// `/v1/agent/plan` alike (1 to 100; `memex plan --max-steps` overrides it there).
    #[arg(long, global = true, env = "MEMEX_PLAN_MAX_STEPS", value_name = "N",
          default_value_t = 12,
          value_parser = bounded(1, memex::planner::MAX_STEPS_LIMIT))]
    pub plan_max_steps: usize,
    /// Most plan steps running at the same time, on every surface (1 to 64; `memex plan
    /// --concurrency` overrides it there).
    #[arg(long, global = true, env = "MEMEX_PLAN_CONCURRENCY", value_name = "N",
          default_value_t = 4,
          value_parser = bounded(1, memex::planner::MAX_CONCURRENCY_LIMIT))]
    pub plan_concurrency: usize,
}

/// Per-tool TTLs of the shared tool cache (`--tool-cache-ttl`).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolTtls(pub std::collections::HashMap<String, Duration>);

/// Parses `TOOL=SECS,TOOL=SECS` (1 to 86400 seconds each).
fn tool_ttls(s: &str) -> Result<ToolTtls, String> {
    let mut out = std::collections::HashMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (tool, secs) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not TOOL=SECS"))?;
        let tool = tool.trim();
        if tool.is_empty()
            || tool.len() > 64
            || !tool
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!("{tool:?} is not a tool name"));
        }
        let secs: u64 = secs
            .trim()
            .parse()
            .ok()
            .filter(|n| (1..=86_400).contains(n))
            .ok_or_else(|| format!("the TTL of {tool} must be 1 to 86400 seconds"))?;
        out.insert(tool.to_string(), Duration::from_secs(secs));
    }
    Ok(ToolTtls(out))
}

impl TuningArgs {
    /// The agent's settings: the library's defaults with every tuning flag applied.
    pub fn agent_config(&self) -> AgentConfig {
        let mut c = AgentConfig {
            max_tool_calls: self.max_tool_calls,
            max_llm_rounds: self.max_llm_rounds,
            kb_k: self.kb_k,
            recent_episodes: self.recent_episodes,
            similar_episodes: self.similar_episodes,
            cache_ttl: Duration::from_secs(self.cache_ttl as u64),
            tool_rate: (self.tool_burst as f64, self.tool_rate as f64),
            tool_attempts: u32::try_from(self.tool_attempts).unwrap_or(10),
            tool_timeout: Duration::from_secs(self.tool_timeout as u64),
            shared_tool_cache: self.shared_tool_cache,
            tool_cache_ttls: self
                .tool_cache_ttl
                .as_ref()
                .map(|t| t.0.clone())
                .unwrap_or_default(),
            ..AgentConfig::default()
        };
        c.conversation.token_budget = self.conversation_budget;
        c.conversation.keep_recent_turns = self.keep_recent_turns;
        c
    }

    /// The planner's settings: the library's defaults with the plan flags applied.
    pub fn planner_config(&self) -> PlannerConfig {
        PlannerConfig {
            max_steps: self.plan_max_steps,
            max_concurrency: self.plan_concurrency.max(1),
            ..PlannerConfig::default()
        }
    }

    /// Knowledge-base options for `index` with the chunking and HNSW flags applied.
    pub fn kb_options(&self, index: IndexKind) -> anyhow::Result<KbOptions> {
        if self.chunk_overlap * 2 >= self.chunk_tokens {
            anyhow::bail!(
                "--chunk-overlap {} must be less than half of --chunk-tokens {}",
                self.chunk_overlap,
                self.chunk_tokens
            );
        }
        Ok(KbOptions {
            index,
            hnsw: HnswParams {
                m: self.hnsw_m,
                ef_construction: self.hnsw_ef_construction,
                ef_search: self.hnsw_ef_search,
                ..HnswParams::default()
            },
            chunking: ChunkOptions {
                max_tokens: self.chunk_tokens,
                overlap_tokens: self.chunk_overlap,
            },
            ..KbOptions::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Probe {
        #[command(flatten)]
        t: TuningArgs,
    }

    fn parse(args: &[&str]) -> TuningArgs {
        let mut argv = vec!["probe"];
        argv.extend_from_slice(args);
        Probe::try_parse_from(argv).expect("parses").t
    }

    #[test]
    fn the_flag_defaults_are_the_library_defaults() {
        let t = parse(&[]);
        let lib = AgentConfig::default();
        let ours = t.agent_config();
        assert_eq!(ours.max_tool_calls, lib.max_tool_calls);
        assert_eq!(ours.max_llm_rounds, lib.max_llm_rounds);
        assert_eq!(ours.kb_k, lib.kb_k);
        assert_eq!(ours.recent_episodes, lib.recent_episodes);
        assert_eq!(ours.similar_episodes, lib.similar_episodes);
        assert_eq!(ours.cache_ttl, lib.cache_ttl);
        assert_eq!(ours.tool_rate, lib.tool_rate);
        assert_eq!(ours.tool_attempts, lib.tool_attempts);
        assert_eq!(ours.tool_timeout, lib.tool_timeout);
        assert_eq!(
            ours.conversation.token_budget,
            lib.conversation.token_budget
        );
        assert_eq!(
            ours.conversation.keep_recent_turns,
            lib.conversation.keep_recent_turns
        );
        let kb = t.kb_options(IndexKind::Hnsw).expect("valid");
        let lib = KbOptions::default();
        assert_eq!(kb.hnsw.m, lib.hnsw.m);
        assert_eq!(kb.hnsw.ef_construction, lib.hnsw.ef_construction);
        assert_eq!(kb.hnsw.ef_search, lib.hnsw.ef_search);
        assert_eq!(kb.chunking.max_tokens, lib.chunking.max_tokens);
        assert_eq!(kb.chunking.overlap_tokens, lib.chunking.overlap_tokens);
        let plan = t.planner_config();
        let lib = PlannerConfig::default();
        assert_eq!(plan.max_steps, lib.max_steps);
        assert_eq!(plan.max_concurrency, lib.max_concurrency);
    }

    #[test]
    fn flags_reach_the_settings() {
        let t = parse(&[
            "--max-tool-calls",
            "3",
            "--cache-ttl",
            "7",
            "--tool-rate",
            "2",
            "--tool-burst",
            "4",
            "--conversation-budget",
            "900",
            "--chunk-tokens",
            "64",
            "--chunk-overlap",
            "8",
            "--hnsw-ef-search",
            "128",
            "--plan-max-steps",
            "5",
            "--plan-concurrency",
            "2",
        ]);
        let a = t.agent_config();
        assert_eq!(a.max_tool_calls, 3);
        assert_eq!(a.cache_ttl, Duration::from_secs(7));
        assert_eq!(a.tool_rate, (4.0, 2.0));
        assert_eq!(a.conversation.token_budget, 900);
        let kb = t.kb_options(IndexKind::Flat).expect("valid");
        assert_eq!(kb.index, IndexKind::Flat);
        assert_eq!(kb.chunking.max_tokens, 64);
        assert_eq!(kb.chunking.overlap_tokens, 8);
        assert_eq!(kb.hnsw.ef_search, 128);
        let plan = t.planner_config();
        assert_eq!((plan.max_steps, plan.max_concurrency), (5, 2));
    }

    #[test]
    fn an_overlap_of_half_a_chunk_is_refused() {
        let t = parse(&["--chunk-tokens", "64", "--chunk-overlap", "32"]);
        let err = t.kb_options(IndexKind::Hnsw).expect_err("refused");
        assert!(err.to_string().contains("--chunk-overlap 32"), "{err}");
        assert!(Probe::try_parse_from(["probe", "--hnsw-m", "1"]).is_err());
    }
}

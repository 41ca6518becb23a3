//! The composition root: where the binary builds what a command needs from the global flags —
//! the async runtime, the agent (real embedder, knowledge base, episodic and conversation
//! stores, the payments domain's tools, rules and escalation, the OpenAI-compatible model) and
//! the planner over it. `memex ask`, `chat`, `approve`, `plan` and `session end` all start here.

use std::sync::Arc;

use anyhow::Context;
use memex::agent::{Agent, AgentConfig, AgentParts, AgentStore, Progress};
use memex::conversation::{ConversationStore, RedisConversationStore, SqliteConversationStore};
use memex::domain::payments::{
    payments_tools, KbSearch, KnowledgeError, KnowledgeHit, KnowledgeSearch, PaymentsDb,
    PaymentsDomain,
};
use memex::embed::Embedder;
use memex::episodic::EpisodicStore;
use memex::kb::KnowledgeBase;
use memex::llm::{ChatModel, LlmConfig, OpenAiCompatible};
use memex::merchant::MerchantId;
use memex::planner::{Planner, PlannerConfig};
use memex::sources::{Assembled, Reachability};
use memex::tools::Tool;

use super::GlobalArgs;

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn llm_config(g: &GlobalArgs) -> anyhow::Result<LlmConfig> {
    let mut cfg = LlmConfig::try_from_env()?;
    if let Some(u) = &g.llm_base_url {
        cfg = cfg.with_base_url(u.clone());
    }
    if let Some(m) = &g.llm_model {
        cfg = cfg.with_model(m.clone());
    }
    if let Some(k) = &g.llm_api_key {
        cfg = cfg.with_api_key(k.clone());
    }
    Ok(cfg.with_max_tokens(g.llm_max_tokens()))
}

/// The conversation store the global flags name: Redis when `--episodic` is a Redis URL, else
/// SQLite in the data directory.
pub(super) async fn conversation_store(
    g: &GlobalArgs,
    data_dir: &std::path::Path,
) -> anyhow::Result<Arc<dyn ConversationStore>> {
    Ok(match g.episodic_redis() {
        Some(url) => Arc::new(
            RedisConversationStore::connect(url, "memex:conv")
                .await
                .context("cannot open the conversation store")?,
        ),
        None => Arc::new(
            SqliteConversationStore::open_in(data_dir)
                .context("cannot open the conversation store")?,
        ),
    })
}

/// The composition root: every part a surface is made of, built once from the resolved
/// configuration (flags, environment, memex.toml). `memex ask`/`chat`/`approve`/`plan`/`session
/// end`, `memex serve` and `memex mcp` all take their embedder, knowledge base, stores, tools and
/// guards from here, so a setting reaches every surface the same way; the domain (`--domain`)
/// is registered here and nowhere else ([`tools`], [`finish_agent`]).
pub(super) struct Memex<'g> {
    g: &'g GlobalArgs,
    /// The data directory (created).
    pub data_dir: std::path::PathBuf,
    /// The embedder: the model itself, or `memex serve`'s batching queue in front of it.
    pub embedder: Arc<dyn Embedder>,
    /// The knowledge base (the data directory's, or a published generation with `--kb-url`).
    pub kb: Arc<KnowledgeBase>,
    /// The episodic store of `--episodic`.
    pub episodes: Arc<dyn EpisodicStore>,
    /// The agent state of `--state` (sessions, audit log, approvals); the plan store sits on
    /// the same backend.
    pub store: Arc<AgentStore>,
    /// The tools of `--domain` and of the sources under `[tools]` in memex.toml.
    pub tools: memex::tools::ToolRegistry,
    /// The guards: the tuning flags, `--llm-rate`, the fallbacks and the sources found down.
    pub config: AgentConfig,
    /// The planner settings (`--plan-max-steps`, `--plan-concurrency`).
    pub planner: PlannerConfig,
}

/// What a caller already holds and the root should use instead of building its own.
#[derive(Default)]
pub(super) struct Given {
    /// An embedder (`memex serve`: its batching queue).
    pub embedder: Option<Arc<dyn Embedder>>,
    /// A knowledge base (`memex serve`: the one it follows and serves).
    pub kb: Option<Arc<KnowledgeBase>>,
}

impl<'g> Memex<'g> {
    /// Builds the root from the global flags, using what `given` holds.
    pub async fn open(g: &'g GlobalArgs, given: Given) -> anyhow::Result<Memex<'g>> {
        let data_dir = g.data_dir();
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
        let embedder: Arc<dyn Embedder> = match given.embedder {
            Some(e) => e,
            None => Arc::new(g.load_embedder()?),
        };
        let kb = match given.kb {
            Some(kb) => kb,
            None => super::kb_read::open(
                g,
                Arc::clone(&embedder),
                g.tuning.kb_options(memex::index::IndexKind::default())?,
                false,
            )?,
        };
        let episodes = memex::episodic::open_with_cache(
            g.episodic.as_deref(),
            &data_dir,
            g.episodic_cache_bytes(),
        )
        .await
        .context("cannot open the episodic store")?;
        let assembled = tools(g, Some(&kb), Reachability::BestEffort).await?;
        let config = guards(g, &assembled);
        let store = Arc::new(AgentStore::open_state(&g.state_url()?)?);
        Ok(Memex {
            g,
            data_dir,
            embedder,
            kb,
            episodes,
            store,
            tools: assembled.registry,
            config,
            planner: g.tuning.planner_config(),
        })
    }

    /// The agent over this root's parts: adds the conversation store, the chat models of
    /// `--llm-*` and the domain's rules and escalation.
    pub async fn agent(&self) -> anyhow::Result<Agent> {
        self.agent_with(models(self.g)?).await
    }

    /// [`Memex::agent`] with the chat models already made (commands check them before any
    /// store is opened).
    pub async fn agent_with(&self, models: Models) -> anyhow::Result<Agent> {
        let conversations = conversation_store(self.g, &self.data_dir).await?;
        let agent = Agent::new(AgentParts {
            model: Arc::clone(&models.main),
            tools: self.tools.clone(),
            embedder: Arc::clone(&self.embedder),
            kb: Some(Arc::clone(&self.kb)),
            episodes: Arc::clone(&self.episodes),
            conversations,
            store: Arc::clone(&self.store),
            config: self.config.clone(),
        });
        Ok(finish_agent(self.g, agent, models))
    }

    /// The planner over a new agent of this root (with `models`), with the root's planner
    /// settings.
    pub async fn planner_with(&self, models: Models) -> anyhow::Result<Planner> {
        let agent = Arc::new(self.agent_with(models).await?);
        Ok(Planner::new(agent, self.planner.clone())?)
    }

    /// The MCP tools' dependencies: the root's memories and tools, every call through one gate
    /// with the agent's guards (`gate`, when given, is an agent's gate to share).
    pub fn mcp_deps(
        &self,
        gate: Option<&memex::agent::CallGate>,
    ) -> anyhow::Result<memex::mcp::McpDeps> {
        let domain: Vec<Arc<dyn Tool>> = self.tools.tools().cloned().collect();
        let config = self.config.clone();
        let store = Arc::clone(&self.store);
        let policy = config.call_policy();
        Ok(memex::mcp::McpDeps::with_gate(
            Arc::clone(&self.embedder),
            Some(Arc::clone(&self.kb)),
            Arc::clone(&self.episodes),
            domain,
            move |tools| match gate {
                Some(g) => g.with_tools(tools),
                None => config.call_gate(tools, store),
            },
            policy,
        )?)
    }
}

/// The guards every surface runs its calls under: the tuning flags, `--llm-rate`, the
/// fallbacks of memex.toml and the tool sources that were down.
fn guards(g: &GlobalArgs, assembled: &Assembled) -> AgentConfig {
    let mut config = g.tuning.agent_config();
    config.llm_rate = g.llm_bucket();
    config.tool_fallbacks = fallbacks(g);
    config.unavailable_sources = unavailable_names(assembled);
    config
}

/// Builds the agent the global flags describe (the root's parts and the agent over them).
pub(super) async fn build(g: &GlobalArgs) -> anyhow::Result<Agent> {
    let models = models(g)?;
    Memex::open(g, Given::default())
        .await?
        .agent_with(models)
        .await
}

/// The chat models the global flags name: the main one and the optional answer model.
pub(super) struct Models {
    main: Arc<dyn ChatModel>,
    main_name: String,
    answer: Option<(Arc<dyn ChatModel>, String)>,
}

/// The main model (`--llm-*`) and the answer model (`--llm-answer-model`, on the same base
/// URL unless `--llm-answer-base-url` names another).
pub(super) fn models(g: &GlobalArgs) -> anyhow::Result<Models> {
    let llm = llm_config(g)?;
    let main_name = llm.model.clone();
    let answer = match g.llm_answer_model.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() => {
            let mut cfg = llm.clone().with_model(name.to_string());
            if let Some(u) = &g.llm_answer_base_url {
                cfg = cfg.with_base_url(u.clone());
            }
            let client = OpenAiCompatible::new(cfg).context("bad answer-model configuration")?;
            Some((Arc::new(client) as Arc<dyn ChatModel>, name.to_string()))
        }
        _ => None,
    };
    let main = Arc::new(OpenAiCompatible::new(llm).context("bad LLM configuration")?);
    Ok(Models {
        main,
        main_name,
        answer,
    })
}

/// `agent` with its models' names, the answer model and the domain of `--domain`.
fn finish_agent(g: &GlobalArgs, agent: Agent, models: Models) -> Agent {
    let agent = agent.with_model_name(models.main_name);
    let agent = match models.answer {
        Some((model, name)) => agent.with_answer_model(model, name),
        None => agent,
    };
    match g.domain.as_str() {
        "none" => agent,
        _ => agent.with_domain(Arc::new(PaymentsDomain)),
    }
}

/// The agent `memex eval agent` replays cases on: the configured models, rules, guards and tool
/// definitions, every tool answering from `recordings` (none runs), each turn's memory from
/// `memory`, and every store a scratch one in `scratch` (nothing is written to the real state).
pub(super) async fn replay_agent(
    g: &GlobalArgs,
    scratch: &std::path::Path,
    recordings: Arc<memex::eval::replay::Recordings>,
    memory: Arc<dyn memex::agent::RecordedMemory>,
) -> anyhow::Result<Agent> {
    let assembled = tools(g, None, Reachability::BestEffort).await?;
    let mut config = guards(g, &assembled);
    // A cache across sessions would hand one case another case's recorded result.
    config.shared_tool_cache = false;
    let mut registry = memex::tools::ToolRegistry::new();
    for tool in assembled.registry.tools() {
        registry
            .register(Arc::new(memex::eval::replay::RecordedTool::new(
                Arc::clone(tool),
                Arc::clone(&recordings),
            )))
            .context("cannot register a recorded tool")?;
    }
    let embedder: Arc<dyn Embedder> = Arc::new(g.load_embedder()?);
    let episodes = memex::episodic::open(None, scratch)
        .await
        .context("cannot open a scratch episodic store")?;
    let conversations: Arc<dyn ConversationStore> = Arc::new(
        SqliteConversationStore::open_in(scratch)
            .context("cannot open a scratch conversation store")?,
    );
    let store = Arc::new(AgentStore::open_in(scratch)?);
    let models = models(g)?;
    let agent = Agent::new(AgentParts {
        model: Arc::clone(&models.main),
        tools: registry,
        embedder,
        kb: None,
        episodes,
        conversations,
        store,
        config,
    })
    .with_recorded_memory(memory);
    Ok(finish_agent(g, agent, models))
}

/// The tool whose successful call opens a ticket in `--domain` (none for `none`).
pub(super) fn ticket_tools(g: &GlobalArgs) -> Vec<String> {
    match g.domain.as_str() {
        "none" => Vec::new(),
        _ => {
            let Ok(merchant) = MerchantId::parse("probe") else {
                return Vec::new();
            };
            let probe = memex::agent::EscalationCase {
                session: "",
                merchant: &merchant,
                reason: "",
                tools_tried: Vec::new(),
            };
            memex::agent::Domain::escalation(&PaymentsDomain, &probe)
                .map(|c| vec![c.tool])
                .unwrap_or_default()
        }
    }
}

/// The tools of every surface, registered in one place: the built-in ones of `--domain`
/// (`payments`: the demo's five; `none`: `search_knowledge_base` only) and the MCP servers
/// and OpenAPI services under `[tools]` in memex.toml. A name defined twice, a bad
/// declaration or a fallback memex cannot honour stops here; with
/// [`Reachability::BestEffort`] a source that is down is left out with a warning on stderr.
pub(super) async fn tools(
    g: &GlobalArgs,
    kb: Option<&Arc<KnowledgeBase>>,
    reach: Reachability,
) -> anyhow::Result<Assembled> {
    let builtin: Vec<Arc<dyn Tool>> = match g.domain.as_str() {
        "none" => vec![Arc::new(memex::mcp::memory_tools::KbSearchTool::new(
            kb.cloned(),
        ))],
        _ => {
            let search: Arc<dyn KnowledgeSearch> = match kb {
                Some(kb) => Arc::new(KbSearch(Arc::clone(kb))),
                None => Arc::new(NotSearched),
            };
            let payments = Arc::new(
                PaymentsDb::open(&g.payments_db()).context("cannot open the payments database")?,
            );
            payments_tools(payments, search)
        }
    };
    let declared = &g.tool_sources;
    let assembled =
        memex::sources::assemble(builtin, &declared.config, &declared.base, reach).await?;
    for down in &assembled.unavailable {
        tracing::warn!(target: "memex::sources", "{down}");
        eprintln!("warning: {down}; going on without its tools");
    }
    Ok(assembled)
}

/// The names of the sources [`tools`] found down.
pub(super) fn unavailable_names(assembled: &Assembled) -> Vec<String> {
    assembled
        .unavailable
        .iter()
        .map(|e| e.source_name().to_string())
        .collect()
}

/// `[tools.fallbacks]` of memex.toml.
pub(super) fn fallbacks(g: &GlobalArgs) -> std::collections::HashMap<String, String> {
    g.tool_sources
        .config
        .fallbacks
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Builds the planner over the agent the global flags describe; `config` overrides the
/// root's planner settings (`memex plan --max-steps`, `--concurrency`).
pub async fn planner(g: &GlobalArgs, config: Option<PlannerConfig>) -> anyhow::Result<Planner> {
    let models = models(g)?;
    let mut root = Memex::open(g, Given::default()).await?;
    if let Some(c) = config {
        root.planner = c;
    }
    root.planner_with(models).await
}

pub(super) fn merchant(raw: &str) -> anyhow::Result<MerchantId> {
    MerchantId::parse(raw).map_err(|e| anyhow::anyhow!("invalid --merchant: {e}"))
}

/// Progress lines on stderr ("Looking up transaction pay_ABC123…").
pub(super) struct StderrProgress;
impl Progress for StderrProgress {
    fn tool_started(&self, line: &str) {
        eprintln!("{line}");
    }
}

/// The knowledge search behind the payments domain's `search_knowledge_base` when no
/// knowledge base is opened (`memex tools list` only describes the tools, and runs none).
struct NotSearched;
impl KnowledgeSearch for NotSearched {
    fn search(&self, _query: &str, _k: usize) -> Result<Vec<KnowledgeHit>, KnowledgeError> {
        Err(KnowledgeError::from(
            "the knowledge base is not open in this command",
        ))
    }
}

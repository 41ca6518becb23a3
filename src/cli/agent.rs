//! The agent commands: `init`, `ask`, `approve`, `reject`, `chat`, `audit`, `stats`, `session end`.

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use memex::agent::kb_adapter::KbSearch;
use memex::agent::{Agent, AgentConfig, AgentStore, Progress, Silent, TurnReport};
use memex::conversation::{ConversationStore, RedisConversationStore, SqliteConversationStore};
use memex::domain::payments::{payments_registry, PaymentsDb};
use memex::embed::Embedder;
use memex::episodic::{EpisodeDraft, EpisodicStore};
use memex::kb::{IngestOptions, KnowledgeBase};
use memex::llm::{LlmConfig, OpenAiCompatible};
use memex::merchant::MerchantId;

use super::GlobalArgs;

/// Arguments of `memex init`.
#[derive(Args, Debug)]
pub struct InitArgs {
    /// Load the payments demo: seed database, knowledge base from data/kb, sample episodes.
    #[arg(long)]
    pub demo: bool,
}

/// Arguments of `memex ask`.
#[derive(Args, Debug)]
pub struct AskArgs {
    /// The merchant the session is for.
    #[arg(long)]
    pub merchant: String,
    /// Continue this session (default: a new one, whose id is printed).
    #[arg(long)]
    pub session: Option<String>,
    /// Hard cap on tool calls in this turn (default 8).
    #[arg(long)]
    pub max_tool_calls: Option<usize>,
    /// The user's message.
    pub message: String,
}

/// Arguments of `memex approve` and `memex reject`.
#[derive(Args, Debug)]
pub struct DecideArgs {
    /// The session holding the action (optional: action ids are unique).
    #[arg(long)]
    pub session: Option<String>,
    /// The action id (act_…) from the pending action or plan step; or a plan id (plan_…)
    /// whose single waiting step is meant.
    pub action_id: String,
}

/// Arguments of `memex chat`.
#[derive(Args, Debug)]
pub struct ChatArgs {
    /// The merchant the session is for.
    #[arg(long)]
    pub merchant: String,
    /// Continue this session.
    #[arg(long)]
    pub session: Option<String>,
}

/// Arguments of `memex audit`.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// The session whose tool calls to print.
    #[arg(long)]
    pub session: String,
}

/// `memex session …`.
#[derive(Subcommand, Debug)]
pub enum SessionCommand {
    /// Summarise a session into an episode for its merchant.
    End {
        /// The session id.
        id: String,
    },
}

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Finds a file shipped under `data/`: in the current directory, else beside the crate.
fn shipped(rel: &str) -> PathBuf {
    let local = PathBuf::from(rel);
    if local.exists() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn llm_config(g: &GlobalArgs) -> LlmConfig {
    let mut cfg = LlmConfig::from_env();
    if let Some(u) = &g.llm_base_url {
        cfg = cfg.with_base_url(u.clone());
    }
    if let Some(m) = &g.llm_model {
        cfg = cfg.with_model(m.clone());
    }
    if let Some(k) = &g.llm_api_key {
        cfg = cfg.with_api_key(k.clone());
    }
    cfg
}

/// Builds the agent the global flags describe: the real embedder, knowledge base, episodic and
/// conversation stores, payments tools and the OpenAI-compatible model.
pub(super) async fn build(g: &GlobalArgs, config: AgentConfig) -> anyhow::Result<Agent> {
    let data_dir = g.data_dir();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let embedder: Arc<dyn Embedder> = Arc::new(g.load_embedder()?);
    let kb = Arc::new(
        KnowledgeBase::open(&data_dir, Arc::clone(&embedder))
            .context("cannot open the knowledge base")?,
    );
    let episodes = memex::episodic::open(g.episodic.as_deref(), &data_dir)
        .await
        .context("cannot open the episodic store")?;
    let conversations: Arc<dyn ConversationStore> = match g.episodic.as_deref() {
        Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => Arc::new(
            RedisConversationStore::connect(url, "memex:conv")
                .await
                .context("cannot open the conversation store")?,
        ),
        _ => Arc::new(
            SqliteConversationStore::open_in(&data_dir)
                .context("cannot open the conversation store")?,
        ),
    };
    let payments =
        Arc::new(PaymentsDb::open_in_dir(&data_dir).context("cannot open the payments database")?);
    let tools = payments_registry(payments, Arc::new(KbSearch(Arc::clone(&kb))))
        .context("cannot register the tools")?;
    let model = Arc::new(OpenAiCompatible::new(llm_config(g)).context("bad LLM configuration")?);
    let store = Arc::new(AgentStore::open_in(&data_dir)?);
    Ok(Agent::new(
        model,
        tools,
        embedder,
        Some(kb),
        episodes,
        conversations,
        store,
        config,
    ))
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

/// `chat`: progress lines on stderr and the answer streamed to stdout as it arrives.
#[derive(Default)]
struct ChatProgress {
    streamed: std::sync::atomic::AtomicBool,
}

impl Progress for ChatProgress {
    fn tool_started(&self, line: &str) {
        eprintln!("{line}…");
    }
    fn wants_stream(&self) -> bool {
        true
    }
    fn text_delta(&self, delta: &str) {
        let mut out = io::stdout().lock();
        if !self
            .streamed
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let _ = write!(out, "agent> ");
        }
        let _ = write!(out, "{delta}");
        let _ = out.flush();
    }
}

impl ChatProgress {
    /// Ends a streamed answer; true when something was streamed since the last call.
    fn end(&self) -> bool {
        let streamed = self
            .streamed
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        if streamed {
            println!();
        }
        streamed
    }
}

fn print_report(g: &GlobalArgs, r: &TurnReport, new_session: bool) -> anyhow::Result<()> {
    if g.json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    if new_session {
        println!("session: {}", r.session);
    }
    println!("{}", r.answer);
    if let Some(p) = &r.pending_action {
        println!(
            "\npending approval: {} {} (action {})\n  approve: memex approve --session {} {}\n  reject:  memex reject --session {} {}",
            p.tool, p.args, p.id, r.session, p.id, r.session, p.id
        );
    }
    if let Some(e) = &r.escalation {
        println!("\nescalated: ticket {}", e.ticket_id);
    }
    Ok(())
}

/// `memex init [--demo]`.
pub fn init(g: &GlobalArgs, a: InitArgs) -> anyhow::Result<ExitCode> {
    let data_dir = g.data_dir();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    AgentStore::open_in(&data_dir)?;
    let mut summary = serde_json::json!({"data_dir": data_dir.display().to_string()});
    if a.demo {
        let payments = PaymentsDb::open_in_dir(&data_dir)?;
        let seed = payments.seed_from_file(&shipped("data/payments/seed.json"))?;
        summary["payments"] = serde_json::json!({
            "merchants_added": seed.merchants_added,
            "transactions_added": seed.transactions_added,
        });
        let embedder: Arc<dyn Embedder> = Arc::new(g.load_embedder()?);
        let kb = KnowledgeBase::open(&data_dir, Arc::clone(&embedder))?;
        let report = kb.ingest(&[shipped("data/kb")], &IngestOptions { prune: false })?;
        summary["kb"] = serde_json::json!({
            "files_new": report.files_new,
            "files_unchanged": report.files_unchanged,
            "chunks_added": report.chunks_added,
        });
        let added = runtime()?.block_on(seed_episodes(g, embedder.as_ref()))?;
        summary["episodes_added"] = added.into();
    }
    if g.json {
        println!("{summary}");
    } else {
        println!("memex initialised in {}", data_dir.display());
        if a.demo {
            println!("demo: {summary}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Adds the sample episodes that are not there yet (matched by summary), so init is idempotent.
async fn seed_episodes(g: &GlobalArgs, embedder: &dyn Embedder) -> anyhow::Result<usize> {
    let store: Arc<dyn EpisodicStore> = memex::episodic::open(g.episodic.as_deref(), &g.data_dir())
        .await
        .context("cannot open the episodic store")?;
    let path = shipped("data/payments/episodes.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let list = value
        .get("episodes")
        .cloned()
        .unwrap_or(value)
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut added = 0;
    for item in list {
        let (Some(mid), Some(summary)) = (item["merchant_id"].as_str(), item["summary"].as_str())
        else {
            continue;
        };
        let merchant = merchant(mid)?;
        let existing = store.recent(&merchant, 1000).await?;
        if existing.iter().any(|e| e.summary == summary) {
            continue;
        }
        let vector = embedder.embed_one(summary)?;
        let draft = EpisodeDraft::new(summary)
            .with_metadata(item.get("metadata").cloned().unwrap_or_default())
            .with_embedding(vector);
        store.save(&merchant, draft).await?;
        added += 1;
    }
    Ok(added)
}

/// `memex ask`.
pub fn ask(g: &GlobalArgs, a: AskArgs) -> anyhow::Result<ExitCode> {
    let merchant = merchant(&a.merchant)?;
    let mut config = AgentConfig::default();
    if let Some(n) = a.max_tool_calls {
        config.max_tool_calls = n;
    }
    let new_session = a.session.is_none();
    let session = a.session.unwrap_or_else(Agent::new_session_id);
    let rt = runtime()?;
    let report = rt.block_on(async {
        let agent = build(g, config).await?;
        let progress: &dyn Progress = if g.json { &Silent } else { &StderrProgress };
        anyhow::Ok(agent.ask(&merchant, &session, &a.message, progress).await?)
    })?;
    print_report(g, &report, new_session)?;
    Ok(ExitCode::SUCCESS)
}

/// `memex approve` / `memex reject`: an action of a plan step continues its plan; any other
/// action continues its agent session.
pub fn decide(g: &GlobalArgs, a: DecideArgs, approve: bool) -> anyhow::Result<ExitCode> {
    let store = AgentStore::open_in(&g.data_dir())?;
    let plans = memex::planner::store::PlanStore::open(store.path())?;
    let mut action_id = a.action_id.trim().to_string();
    if action_id.starts_with("plan_") {
        let report = memex::planner::load_report(&plans, &action_id)?;
        match report.pending_actions.as_slice() {
            [one] => action_id = one.action_id.clone(),
            [] => anyhow::bail!("plan {action_id} has no step waiting for approval"),
            many => anyhow::bail!(
                "plan {action_id} has {} steps waiting for approval; name one: {}",
                many.len(),
                many.iter()
                    .map(|p| format!("{} (step {})", p.action_id, p.step))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    if store.action_by_id(&action_id)?.is_none() {
        // `--session PLAN_ID STEP_ID`: the waiting step of a plan, named by its step id.
        if let Some(plan_id) = a.session.as_deref().filter(|s| s.starts_with("plan_")) {
            let report = memex::planner::load_report(&plans, plan_id)?;
            if let Some(p) = report.pending_actions.iter().find(|p| p.step == action_id) {
                action_id = p.action_id.clone();
            }
        }
    }
    let action = store
        .action_by_id(&action_id)?
        .ok_or_else(|| anyhow::anyhow!("no action {action_id}"))?;
    let plan_step = plans.step_for_action(&action_id)?;
    if let Some(s) = &a.session {
        // The session is the action's; for a plan step the plan id names it as well.
        let plan_matches = plan_step.as_ref().is_some_and(|(p, _)| p == s)
            || action.call_id.starts_with(&format!("{s}:"));
        if s != &action.session && !plan_matches {
            anyhow::bail!("no action {action_id} in session {s}");
        }
    }
    if plan_step.is_some() || memex::agent::is_plan_call(&action.call_id) {
        return super::plan::decide(g, &action_id, approve);
    }
    let a = DecideArgs {
        session: Some(action.session.clone()),
        action_id,
    };
    let session = action.session;
    let rt = runtime()?;
    let report = rt.block_on(async {
        let agent = build(g, AgentConfig::default()).await?;
        let progress: &dyn Progress = if g.json { &Silent } else { &StderrProgress };
        anyhow::Ok(if approve {
            agent.approve(&session, &a.action_id, progress).await?
        } else {
            agent.reject(&session, &a.action_id, progress).await?
        })
    })?;
    print_report(g, &report, false)?;
    Ok(ExitCode::SUCCESS)
}

/// `memex audit`.
pub fn audit(g: &GlobalArgs, a: AuditArgs) -> anyhow::Result<ExitCode> {
    let store = AgentStore::open_in(&g.data_dir())?;
    let log = store.audit_log(&a.session)?;
    if g.json {
        println!("{}", serde_json::to_string(&log)?);
    } else if log.is_empty() {
        println!("no tool calls recorded for session {}", a.session);
    } else {
        for e in log {
            println!(
                "{} turn {} {} {} {} ({:.1} ms) -> {}",
                e.at, e.turn, e.tool, e.args, e.status, e.latency_ms, e.result
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `memex stats`.
pub fn stats(g: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let store = AgentStore::open_in(&g.data_dir())?;
    let s = store.stats()?;
    if g.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!(
            "sessions {}  turns {}  success rate {:.1}%\ntool calls {}  tool failure rate {:.1}%  loop detections {}  blocked irreversible {}  escalations {}\nLLM tokens {}  turn latency p50 {:.0} ms  p95 {:.0} ms  p99 {:.0} ms",
            s.sessions,
            s.turns,
            s.success_rate * 100.0,
            s.tool_calls,
            s.tool_failure_rate * 100.0,
            s.loop_detections,
            s.blocked_irreversible,
            s.escalations,
            s.llm_tokens,
            s.latency_ms.p50,
            s.latency_ms.p95,
            s.latency_ms.p99
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `memex session end ID`.
pub fn session(g: &GlobalArgs, c: SessionCommand) -> anyhow::Result<ExitCode> {
    let SessionCommand::End { id } = c;
    let rt = runtime()?;
    let episode = rt.block_on(async {
        let agent = build(g, AgentConfig::default()).await?;
        anyhow::Ok(agent.end_session(&id).await?)
    })?;
    if g.json {
        println!(
            "{}",
            serde_json::json!({"session": id, "episode": {"id": episode.id.to_string(), "merchant_id": episode.merchant_id.as_str(), "summary": episode.summary}})
        );
    } else {
        println!(
            "session {id} saved as episode {}:\n{}",
            episode.id, episode.summary
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `memex chat`: an interactive session on the terminal.
pub fn chat(g: &GlobalArgs, a: ChatArgs) -> anyhow::Result<ExitCode> {
    let merchant = merchant(&a.merchant)?;
    let session = a.session.unwrap_or_else(Agent::new_session_id);
    let rt = runtime()?;
    let agent = rt.block_on(build(g, AgentConfig::default()))?;
    let stdin = io::stdin();
    let interactive = stdin.is_terminal();
    println!(
        "memex chat: merchant {merchant}, session {session}. Type /exit (or end input) to finish."
    );
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            print!("you> ");
            io::stdout().flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("cannot read the terminal")?;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        if text == "/exit" || text == "/quit" {
            break;
        }
        let progress = ChatProgress::default();
        let mut report = match rt.block_on(agent.ask(&merchant, &session, text, &progress)) {
            Ok(r) => r,
            Err(e) => {
                progress.end();
                eprintln!("error: {e}");
                continue;
            }
        };
        loop {
            // Streamed model text was shown as it came; text the agent wrote itself (a pending
            // action, an escalation) is printed here.
            let streamed = progress.end();
            if !streamed || report.pending_action.is_some() || report.escalation.is_some() {
                println!("agent> {}", report.answer);
            }
            let Some(p) = report.pending_action.clone() else {
                break;
            };
            print!("Approve {} {} (action {})? [y/N] ", p.tool, p.args, p.id);
            io::stdout().flush()?;
            let answer = lines.next().transpose()?.unwrap_or_default();
            let approve = matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes");
            let next = if approve {
                rt.block_on(agent.approve(&session, &p.id, &progress))
            } else {
                rt.block_on(agent.reject(&session, &p.id, &progress))
            };
            match next {
                Ok(r) => report = r,
                Err(e) => {
                    eprintln!("error: {e}");
                    break;
                }
            }
        }
        if let Some(e) = &report.escalation {
            println!("(escalated: ticket {})", e.ticket_id);
        }
    }
    match rt.block_on(agent.end_session(&session)) {
        Ok(ep) => println!("session saved as episode {}", ep.id),
        Err(e) => eprintln!("could not save the session as an episode: {e}"),
    }
    Ok(ExitCode::SUCCESS)
}

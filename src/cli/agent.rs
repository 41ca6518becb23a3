//! The agent commands: `init`, `ask`, `approve`, `reject`, `chat`, `audit`, `stats`, `session end`.

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use memex::agent::{Agent, AgentStore, Progress, Silent, TurnReport};
use memex::approvals::{ApprovalError, DecisionRequest, Verdict};
use memex::domain::payments::PaymentsDb;
use memex::embed::Embedder;
use memex::episodic::{EpisodeDraft, EpisodicStore};
use memex::kb::publish::Ensured;
use memex::kb::{IngestOptions, KnowledgeBase};

pub(super) use super::compose::conversation_store;
use super::compose::{build, merchant, runtime, StderrProgress};
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
    /// The user's message.
    pub message: String,
}

/// Arguments of `memex approve` and `memex reject`.
#[derive(Args, Debug)]
#[command(
    after_help = "Output: the action's real outcome first, read back from the store \
(`executed: …` with the refund id, `failed: …` with the reason, `rejected: …`, marked \
`already decided earlier` when nothing ran now), then the agent's next message.\n\
Exit status: 0 executed or rejected; 3 the approved action failed; 1 error (nothing decided)."
)]
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

/// Finds a file shipped under `data/`: in the current directory, else beside the crate.
fn shipped(rel: &str) -> PathBuf {
    let local = PathBuf::from(rel);
    if local.exists() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
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
    if r.clarification.is_some() {
        println!(
            "\n(a question for you: reply with --session {} to continue)",
            r.session
        );
    }
    Ok(())
}

/// `memex init [--demo]`.
pub fn init(g: &GlobalArgs, a: InitArgs) -> anyhow::Result<ExitCode> {
    let data_dir = g.data_dir();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    AgentStore::open_state(&g.state_url()?)?;
    let mut summary = serde_json::json!({"data_dir": data_dir.display().to_string()});
    if a.demo {
        let payments = PaymentsDb::open(&g.payments_db())?;
        let seed = payments.seed_from_file(&shipped("data/payments/seed.json"))?;
        summary["payments"] = serde_json::json!({
            "merchants_added": seed.merchants_added,
            "transactions_added": seed.transactions_added,
        });
        let embedder: Arc<dyn Embedder> = Arc::new(g.load_embedder()?);
        summary["kb"] = demo_kb(g, Arc::clone(&embedder))?;
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

/// The demo knowledge base: `data/kb` ingested into the data directory, or with `--kb-url`
/// published there unless a generation is already published (then adopted: many workers
/// running `init --demo` against one URL ingest it once).
fn demo_kb(g: &GlobalArgs, embedder: Arc<dyn Embedder>) -> anyhow::Result<serde_json::Value> {
    let report = match g.shared_kb()? {
        None => {
            let kb = KnowledgeBase::open_with(
                &g.data_dir(),
                embedder,
                g.tuning.kb_options(memex::index::IndexKind::default())?,
            )?;
            kb.ingest(&[shipped("data/kb")], &IngestOptions::default())?
        }
        Some(shared) => {
            let work = g.data_dir().join(memex::kb::follow::WORK_DIR);
            let ensured = shared.ensure_published(
                &work,
                embedder,
                g.tuning.kb_options(memex::index::IndexKind::default())?,
                &[shipped("data/kb")],
            )?;
            return Ok(match ensured {
                Ensured::Adopted(generation) => serde_json::json!({
                    "files_new": 0, "files_unchanged": 0, "chunks_added": 0,
                    "generation": generation, "adopted": true,
                }),
                Ensured::Published(generation, report) => serde_json::json!({
                    "files_new": report.files_new,
                    "files_unchanged": report.files_unchanged,
                    "chunks_added": report.chunks_added,
                    "generation": generation, "adopted": false,
                }),
            });
        }
    };
    Ok(serde_json::json!({
        "files_new": report.files_new,
        "files_unchanged": report.files_unchanged,
        "chunks_added": report.chunks_added,
    }))
}

/// Adds the sample episodes that are not there yet (matched by summary), so init is idempotent.
async fn seed_episodes(g: &GlobalArgs, embedder: &dyn Embedder) -> anyhow::Result<usize> {
    let store: Arc<dyn EpisodicStore> = memex::episodic::open_with_cache(
        g.episodic.as_deref(),
        &g.data_dir(),
        g.episodic_cache_bytes(),
    )
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
    let new_session = a.session.is_none();
    let session = a.session.unwrap_or_else(Agent::new_session_id);
    let rt = runtime()?;
    let report = rt.block_on(async {
        let agent = build(g).await?;
        let progress: &dyn Progress = if g.json { &Silent } else { &StderrProgress };
        anyhow::Ok(agent.ask(&merchant, &session, &a.message, progress).await?)
    })?;
    print_report(g, &report, new_session)?;
    Ok(ExitCode::SUCCESS)
}

/// `memex approve` / `memex reject`: the library finds whether the action belongs to a plan
/// step or a chat session and continues the right one; this prints its outcome.
pub fn decide(g: &GlobalArgs, a: DecideArgs, approve: bool) -> anyhow::Result<ExitCode> {
    let req = DecisionRequest {
        action: a.action_id,
        session: a.session,
    };
    let verdict = if approve {
        Verdict::Approve
    } else {
        Verdict::Reject
    };
    // Find the action first, from the stores alone: an unknown id is refused before the
    // model and the embedder are loaded.
    let store = AgentStore::open_state(&g.state_url()?)?;
    let plans = memex::planner::store::PlanStore::open_state(store.state())?;
    let action = memex::approvals::resolve(&store, &plans, &req).map_err(approval_error)?;
    let req = DecisionRequest {
        action: action.id,
        session: None,
    };
    let progress: &dyn Progress = if g.json { &Silent } else { &StderrProgress };
    let rt = runtime()?;
    let decided = rt.block_on(async {
        let planner = super::compose::planner(g, None).await?;
        memex::approvals::decide(&planner, &req, verdict, progress)
            .await
            .map_err(approval_error)
    })?;
    let code = if decided.failed() {
        ExitCode::from(EXIT_ACTION_FAILED)
    } else {
        ExitCode::SUCCESS
    };
    if g.json {
        println!("{}", decided.to_json());
        return Ok(code);
    }
    println!("{}", decided.outcome_line());
    match &decided.continuation {
        memex::approvals::Continuation::Chat(report) => print_report(g, report, false)?,
        memex::approvals::Continuation::Plan { report, .. } => {
            super::plan::print_report(g, report)?
        }
    }
    Ok(code)
}

/// The agent's and planner's errors keep their own codes (`agent`, `plan`).
fn approval_error(e: ApprovalError) -> anyhow::Error {
    match e {
        ApprovalError::Agent(e) => anyhow::Error::from(e),
        ApprovalError::Plan(e) => anyhow::Error::from(e),
        other => anyhow::Error::from(other),
    }
}

/// Exit status of `approve`/`reject` when the approved action ran and failed.
const EXIT_ACTION_FAILED: u8 = 3;

/// `memex audit`.
pub fn audit(g: &GlobalArgs, a: AuditArgs) -> anyhow::Result<ExitCode> {
    // Read-only: creates nothing, and no store yet means no calls.
    let log = match AgentStore::open_state_read_only(&g.state_url()?)? {
        Some(store) => store.audit_log(&a.session)?,
        None => Vec::new(),
    };
    if g.json {
        println!("{}", serde_json::to_string(&log)?);
    } else if log.is_empty() {
        println!("no tool calls recorded for session {}", a.session);
    } else {
        for e in log {
            let by = e
                .model
                .as_deref()
                .map(|m| format!(" [chosen by {m}]"))
                .unwrap_or_default();
            println!(
                "{} turn {} {} {} {} ({:.1} ms){by} -> {}",
                e.at, e.turn, e.tool, e.args, e.status, e.latency_ms, e.result
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `memex stats`.
pub fn stats(g: &GlobalArgs) -> anyhow::Result<ExitCode> {
    // Read-only: creates nothing, and no store yet means all zeros.
    let s = match AgentStore::open_state_read_only(&g.state_url()?)? {
        Some(store) => store.stats()?,
        None => memex::agent::Stats::default(),
    };
    if g.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!(
            "sessions {}  turns {}  success rate {:.1}%\ntool calls {}  tool failure rate {:.1}%  loop detections {}  blocked irreversible {}  escalations {}  clarifications {} ({:.1}%)\nLLM tokens {}  turn latency p50 {:.0} ms  p95 {:.0} ms  p99 {:.0} ms",
            s.sessions,
            s.turns,
            s.success_rate * 100.0,
            s.tool_calls,
            s.tool_failure_rate * 100.0,
            s.loop_detections,
            s.blocked_irreversible,
            s.escalations,
            s.clarifications,
            s.clarification_rate * 100.0,
            s.llm_tokens,
            s.latency_ms.p50,
            s.latency_ms.p95,
            s.latency_ms.p99
        );
        for m in &s.models {
            println!(
                "model {} ({})  turns {}  calls {}  tokens {} prompt + {} completion  {:.0} ms per call",
                m.model,
                m.role,
                m.turns,
                m.calls,
                m.prompt_tokens,
                m.completion_tokens,
                m.mean_call_ms
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `memex session end ID`.
pub fn session(g: &GlobalArgs, c: SessionCommand) -> anyhow::Result<ExitCode> {
    let SessionCommand::End { id } = c;
    let rt = runtime()?;
    let episode = rt.block_on(async {
        let agent = build(g).await?;
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
    let agent = rt.block_on(build(g))?;
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
                eprintln!("error: {:#}", anyhow::Error::from(e));
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

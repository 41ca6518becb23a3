//! `memex forget` and `memex prune`: removing what memex remembers.
//!
//! `forget` covers every store memex writes for a merchant: the conversation turns and
//! summaries of its sessions (SQLite or Redis, following `--episodic`), the text of its audit
//! rows and turn records in `agent.db` (rows kept, text redacted), and its episodes. Each step
//! is atomic per session or per store and idempotent, so re-running after a crash finishes the
//! job. Cached tool results live only in the memory of the process that made them. `prune`
//! applies episode and conversation retention.

use std::process::ExitCode;

use anyhow::Context;
use chrono::{Duration, SecondsFormat, Utc};
use clap::Args;
use memex::agent::{AgentStore, Redacted};
use memex::conversation::{PruneReport, SQLITE_FILE_NAME};
use memex::episodic;
use memex::merchant::MerchantId;
use serde_json::json;

use super::GlobalArgs;

/// Arguments of `memex forget`.
#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Merchant id whose memories are removed.
    #[arg(long)]
    merchant: String,
    /// Only what happened before this time (RFC 3339 or YYYY-MM-DD; episodes go by
    /// occurred_at, else created_at).
    #[arg(long)]
    before: Option<String>,
}

/// Arguments of `memex prune`.
#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Remove episodes stored more than this many days ago (setting
    /// `episodes.retention_days`).
    /// 1 to 36500.
    #[arg(
        long,
        env = "MEMEX_EPISODES_RETENTION_DAYS",
        value_name = "DAYS",
        value_parser = super::counts::bounded(1, 36_500)
    )]
    episodes_retention_days: Option<usize>,
    /// Remove conversations (turns and summary) whose last message is more than this many
    /// days old (setting `conversations.retention_days`); on SQLite and Redis. Conversations
    /// stored before append times were kept are reported as untimed and kept.
    /// 1 to 36500.
    #[arg(
        long,
        env = "MEMEX_CONVERSATIONS_RETENTION_DAYS",
        value_name = "DAYS",
        value_parser = super::counts::bounded(1, 36_500)
    )]
    conversations_retention_days: Option<usize>,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs `memex forget`.
pub fn forget(g: &GlobalArgs, a: ForgetArgs) -> anyhow::Result<ExitCode> {
    let merchant =
        MerchantId::parse(&a.merchant).map_err(|e| anyhow::anyhow!("invalid --merchant: {e}"))?;
    let before = a
        .before
        .as_deref()
        .map(episodic::parse_occurred_at)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--before: {e}"))?;
    let data_dir = g.data_dir();
    let (conversations, redacted, episodes) = runtime()?.block_on(async {
        // Sessions live in agent.db; without it there is no conversation to forget, and
        // nothing is created.
        let state = g.state_url()?;
        let (sessions, agent) = match AgentStore::open_state_read_only(&state)? {
            Some(_) => {
                let agent = AgentStore::open_state(&state)?;
                (agent.merchant_sessions(&merchant, before)?, Some(agent))
            }
            None => (Vec::new(), None),
        };
        // 1. Conversation turns and summaries, session by session (each delete is atomic, so
        //    a re-run after a crash deletes what is left).
        let mut conversations = 0usize;
        if !sessions.is_empty() {
            let conv = super::agent::conversation_store(g, &data_dir).await?;
            for s in &sessions {
                let held = conv
                    .load(s)
                    .await
                    .with_context(|| format!("reading the conversation of session {s}"))?;
                if held.messages.is_empty() && held.summary.is_empty() {
                    continue;
                }
                conv.delete(s)
                    .await
                    .with_context(|| format!("forgetting the conversation of session {s}"))?;
                conversations += 1;
            }
        }
        // 2. The audit log and turn records keep their rows; their text is redacted.
        let redacted = match &agent {
            Some(a) => a.redact_sessions(&merchant, &sessions)?,
            None => Redacted::default(),
        };
        // 3. Episodes.
        let store = episodic::open(g.episodic.as_deref(), &data_dir).await?;
        let n = match before {
            Some(t) => store.forget_before(&merchant, t).await?,
            None => store.forget(&merchant).await?,
        };
        anyhow::Ok((conversations, redacted, n))
    })?;
    let before_s = before.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true));
    if g.json {
        println!(
            "{}",
            json!({
                "merchant_id": merchant,
                "before": before_s,
                "removed": {"episodes": episodes, "conversations": conversations},
                "redacted": {"audit_rows": redacted.audit_rows, "turns": redacted.turns},
            })
        );
    } else {
        println!(
            "forgot {episodes} episode(s) and {conversations} conversation(s) of {merchant}; \
             redacted {} audit row(s) and {} turn record(s)",
            redacted.audit_rows, redacted.turns
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `days` ago; bounded by the parser (≤ 100 years), so the subtraction stays in chrono's range.
fn days_ago(days: usize) -> chrono::DateTime<Utc> {
    Utc::now() - Duration::days(i64::try_from(days).unwrap_or(36_500))
}

/// Runs `memex prune`.
pub fn prune(g: &GlobalArgs, a: PruneArgs) -> anyhow::Result<ExitCode> {
    if a.episodes_retention_days.is_none() && a.conversations_retention_days.is_none() {
        anyhow::bail!(
            "no retention set; pass --episodes-retention-days N or set MEMEX_EPISODES_RETENTION_DAYS \
             (and/or --conversations-retention-days N, MEMEX_CONVERSATIONS_RETENTION_DAYS)"
        );
    }
    let data_dir = g.data_dir();
    let ep_cutoff = a.episodes_retention_days.map(days_ago);
    let conv_cutoff = a.conversations_retention_days.map(days_ago);
    let (episodes, conversations) = runtime()?.block_on(async {
        let episodes = match ep_cutoff {
            Some(cutoff) => {
                let store = episodic::open(g.episodic.as_deref(), &data_dir).await?;
                Some(store.prune(cutoff).await?)
            }
            None => None,
        };
        let conversations = match conv_cutoff {
            Some(cutoff) => Some(prune_conversations(g, &data_dir, cutoff).await?),
            None => None,
        };
        anyhow::Ok((episodes, conversations))
    })?;
    let secs = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    if g.json {
        let mut removed = serde_json::Map::new();
        let mut out = serde_json::Map::new();
        if let (Some(n), Some(t)) = (episodes, ep_cutoff) {
            removed.insert("episodes".into(), json!(n));
            out.insert("before".into(), json!(secs(t)));
        }
        if let (Some(r), Some(t)) = (conversations, conv_cutoff) {
            removed.insert("conversations".into(), json!(r.sessions));
            removed.insert("messages".into(), json!(r.messages));
            out.insert("conversations_before".into(), json!(secs(t)));
            out.insert("kept_untimed".into(), json!({"conversations": r.untimed}));
        }
        out.insert("removed".into(), serde_json::Value::Object(removed));
        println!("{}", serde_json::Value::Object(out));
    } else {
        if let (Some(n), Some(days)) = (episodes, a.episodes_retention_days) {
            println!("pruned {n} episode(s) stored more than {days} day(s) ago");
        }
        if let (Some(r), Some(days)) = (conversations, a.conversations_retention_days) {
            println!(
                "pruned {} conversation(s) ({} message(s)) idle for more than {days} day(s); \
                 kept {} conversation(s) with no recorded time (retention counts from now)",
                r.sessions, r.messages, r.untimed
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Conversation retention on the store `--episodic` selects (Redis, else the SQLite file in
/// the data dir; a missing file means nothing to prune and is not created).
async fn prune_conversations(
    g: &GlobalArgs,
    data_dir: &std::path::Path,
    cutoff: chrono::DateTime<Utc>,
) -> anyhow::Result<PruneReport> {
    let redis = g
        .episodic
        .as_deref()
        .is_some_and(|u| u.starts_with("redis://") || u.starts_with("rediss://"));
    if !redis && !data_dir.join(SQLITE_FILE_NAME).exists() {
        return Ok(PruneReport::default());
    }
    let store = super::agent::conversation_store(g, data_dir).await?;
    store
        .prune_before(cutoff)
        .await
        .context("pruning conversations")
}

/// How often `memex serve` applies retention.
const RETENTION_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Retention inside `memex serve`: once at start, then every hour until `stop`, pruning
/// episodes older than `episode_days` and conversations idle for `conversation_days` (each
/// when set). Results and failures go to the log; a failure is retried at the next tick.
pub(super) async fn retention_loop(
    episodes: std::sync::Arc<dyn episodic::EpisodicStore>,
    conversations: Option<std::sync::Arc<dyn memex::conversation::ConversationStore>>,
    episode_days: Option<usize>,
    conversation_days: Option<usize>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(RETENTION_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(days) = episode_days {
            match episodes.prune(days_ago(days)).await {
                Ok(n) => {
                    tracing::info!(target: "memex::retention", removed = n, days, "pruned episodes")
                }
                Err(e) => {
                    tracing::warn!(target: "memex::retention", error = %e, "episode retention failed")
                }
            }
        }
        if let (Some(days), Some(store)) = (conversation_days, &conversations) {
            match store.prune_before(days_ago(days)).await {
                Ok(r) => tracing::info!(
                    target: "memex::retention",
                    sessions = r.sessions,
                    messages = r.messages,
                    untimed = r.untimed,
                    days,
                    "pruned conversations"
                ),
                Err(e) => {
                    tracing::warn!(target: "memex::retention", error = %e, "conversation retention failed")
                }
            }
        }
    }
}

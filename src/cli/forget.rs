//! `memex forget` and `memex prune`: removing what memex remembers.
//!
//! `forget` covers every store memex writes for a merchant: the conversation turns and
//! summaries of its sessions (SQLite or Redis, following `--episodic`), the text of its audit
//! rows, turn records, actions and plans in the agent state (rows kept, text redacted), and its
//! episodes; then the SQLite files are rebuilt so the text is not recoverable from them. Each step
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

/// A session `forget` could not fully clear, and why (the id shortened for display).
#[derive(Debug, serde::Serialize)]
struct Skipped {
    session: String,
    reason: String,
}

/// At most 64 characters of `id`, control characters escaped: a hostile id never floods the
/// report.
fn display_id(id: &str) -> String {
    let short: String = id.chars().take(64).flat_map(char::escape_debug).collect();
    if id.chars().count() > 64 {
        format!("{short}… ({} bytes)", id.len())
    } else {
        short
    }
}

/// The first line of an error and its causes, at most 200 characters.
fn short_reason(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    let line = text.lines().next().unwrap_or("");
    if line.chars().count() > 200 {
        let cut: String = line.chars().take(200).collect();
        format!("{cut}…")
    } else {
        line.to_string()
    }
}

/// What one `forget` run did.
#[derive(Debug, Default)]
struct Forgotten {
    conversations: usize,
    redacted: Redacted,
    plans: u64,
    episodes: u64,
    skipped: Vec<Skipped>,
    /// SQLite files rebuilt so no deleted text stays in them.
    scrubbed: Vec<String>,
    /// Files whose write-ahead log another process kept in use (old pages stay in it until
    /// that process lets a checkpoint finish).
    wal_kept: Vec<String>,
    /// Stores that failed (the rest were still cleared).
    failed: Vec<String>,
}

/// Runs `memex forget`.
///
/// Every store is visited; one session that cannot be cleared (an id from before ids were
/// checked, a row that does not parse) is reported in `skipped` and never stops the rest.
/// SQLite files that held the merchant's words are then rebuilt (`VACUUM` under
/// `secure_delete`) and their write-ahead logs truncated, so the text is gone from the files.
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
    let state = g.state_url()?;
    let mut done = runtime()?.block_on(async {
        let mut done = Forgotten::default();
        // Sessions live in the agent state; without it there is no conversation to forget,
        // and nothing is created.
        let (sessions, agent) = match AgentStore::open_state_read_only(&state)? {
            Some(_) => {
                let agent = AgentStore::open_state(&state)?;
                (agent.merchant_sessions(&merchant, before)?, Some(agent))
            }
            None => (Vec::new(), None),
        };
        // 1. Conversation turns and summaries, session by session (each delete is atomic, so
        //    a re-run after a crash deletes what is left). A session the store cannot hold
        //    (a bad id stored before ids were checked) has no conversation; one that fails is
        //    reported and the rest go on.
        if !sessions.is_empty() {
            let conv = super::agent::conversation_store(g, &data_dir).await?;
            for s in &sessions {
                if memex::conversation::validate_session_id(s).is_err() {
                    done.skipped.push(Skipped {
                        session: display_id(s),
                        reason: concat!(
                            "not a valid session id, so no conversation was stored for it; ",
                            "its audit rows, actions and plans were still redacted"
                        )
                        .into(),
                    });
                    continue;
                }
                let cleared: anyhow::Result<bool> = async {
                    let held = conv.load(s).await?;
                    if held.messages.is_empty() && held.summary.is_empty() {
                        return Ok(false);
                    }
                    conv.delete(s).await?;
                    Ok(true)
                }
                .await;
                match cleared {
                    Ok(true) => done.conversations += 1,
                    Ok(false) => {}
                    Err(e) => done.skipped.push(Skipped {
                        session: display_id(s),
                        reason: format!(
                            "its conversation could not be deleted: {}",
                            short_reason(&e)
                        ),
                    }),
                }
            }
        }
        // 2. The audit log, turn records and actions keep their rows; their text is redacted
        //    (a pending action is rejected). 3. Plans: task, steps and results redacted.
        //    A store that fails is reported and the others still run; the command then exits
        //    non-zero, and a re-run finishes the job.
        if let Some(agent) = &agent {
            match agent.redact_sessions(&merchant, &sessions) {
                Ok(r) => done.redacted = r,
                Err(e) => done
                    .failed
                    .push(format!("the agent state (audit, turns, actions): {e}")),
            }
            let plans = memex::planner::store::PlanStore::open_state(&state)
                .map_err(anyhow::Error::from)
                .and_then(|p| Ok(p.forget(merchant.as_str(), &sessions)?));
            match plans {
                Ok(n) => done.plans = n,
                Err(e) => done.failed.push(format!("the plans: {}", short_reason(&e))),
            }
        }
        // 4. Episodes.
        let episodes: anyhow::Result<u64> = async {
            let store = episodic::open(g.episodic.as_deref(), &data_dir).await?;
            Ok(match before {
                Some(t) => store.forget_before(&merchant, t).await?,
                None => store.forget(&merchant).await?,
            })
        }
        .await;
        match episodes {
            Ok(n) => done.episodes = n,
            Err(e) => done
                .failed
                .push(format!("the episodes: {}", short_reason(&e))),
        }
        anyhow::Ok(done)
    })?;
    // 5. No recoverable copy in the SQLite files (the Redis side: see the README on AOF).
    let mut files = Vec::new();
    if let memex::state::StateUrl::Sqlite(p) = &state {
        files.push(p.clone());
    }
    match g.episodic.as_deref() {
        Some(_) if g.episodic_redis().is_some() => {}
        Some(u) => {
            if let Ok(episodic::StoreUrl::Sqlite(p)) = episodic::parse_url(u) {
                files.push(p);
            }
            files.push(data_dir.join(SQLITE_FILE_NAME));
        }
        None => {
            files.push(data_dir.join(episodic::DEFAULT_SQLITE_FILE));
            files.push(data_dir.join(SQLITE_FILE_NAME));
        }
    }
    for f in files.into_iter().filter(|f| f.is_file()) {
        let name = f.display().to_string();
        match memex::sqlite::scrub(&f) {
            Ok(scrubbed) => {
                if !scrubbed.wal_truncated {
                    done.wal_kept.push(name.clone());
                }
                done.scrubbed.push(name);
            }
            Err(e) => done.failed.push(format!(
                "rebuilding {name} to erase the forgotten text (it needs free space about the \
                 file's size): {e}"
            )),
        }
    }
    let before_s = before.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true));
    if g.json {
        println!(
            "{}",
            json!({
                "merchant_id": merchant,
                "before": before_s,
                "removed": {"episodes": done.episodes, "conversations": done.conversations},
                "redacted": {
                    "audit_rows": done.redacted.audit_rows,
                    "turns": done.redacted.turns,
                },
                "redacted_actions": done.redacted.actions,
                "redacted_plans": done.plans,
                "skipped": done.skipped,
                "scrubbed_files": done.scrubbed,
                "wal_in_use": done.wal_kept,
                "failed": done.failed,
            })
        );
    } else {
        println!(
            "forgot {} episode(s) and {} conversation(s) of {merchant}; redacted {} audit row(s) \
             and {} turn record(s)",
            done.episodes, done.conversations, done.redacted.audit_rows, done.redacted.turns,
        );
        println!(
            "redacted {} action(s) and {} plan(s); rebuilt {} SQLite file(s) so nothing \
             forgotten stays in them",
            done.redacted.actions,
            done.plans,
            done.scrubbed.len()
        );
        for s in &done.skipped {
            println!("skipped session {}: {}", s.session, s.reason);
        }
        for f in &done.wal_kept {
            println!(
                "note: another process is reading {f}: old pages stay in its write-ahead log until \
                 that process lets a checkpoint finish; run forget again once it has stopped"
            );
        }
    }
    if !done.failed.is_empty() {
        anyhow::bail!(
            "forget did not finish: {} (everything else was cleared; run it again)",
            done.failed.join("; ")
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
    let redis = g.episodic_redis().is_some();
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
